//! `BPF_PROG_TEST_RUN` harness: load berth's kernel object with private maps (never the pinned
//! ones of a running agent), run a program on a crafted frame, and inspect the verdict, the bytes
//! the program left in the frame, and its maps.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
    programs::{SchedClassifier, TestRunOptions, Xdp},
};

/// XDP verdicts (`enum xdp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpVerdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl From<u32> for XdpVerdict {
    fn from(v: u32) -> Self {
        match v {
            0 => XdpVerdict::Aborted,
            1 => XdpVerdict::Drop,
            2 => XdpVerdict::Pass,
            3 => XdpVerdict::Tx,
            4 => XdpVerdict::Redirect,
            other => XdpVerdict::Other(other),
        }
    }
}

/// What one run produced.
#[derive(Debug)]
pub struct Outcome<V> {
    pub verdict: V,
    /// The frame as the program left it (rewrites, head/tail adjustments included).
    pub data: Vec<u8>,
}

/// One BPF_PROG_TEST_RUN of a loaded packet program: (return value, the frame as left).
fn run_once<P>(prog: &P, frame: &[u8]) -> anyhow::Result<(u32, Vec<u8>)>
where
    P: for<'o> aya::programs::TestRun<Opts<'o> = TestRunOptions<'o>, Result = aya::TestRunResult>,
{
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    let result = prog.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// Headroom for programs that grow the frame (encapsulation, `bpf_xdp_adjust_head`).
const OUT_SLACK: usize = 256;

/// berth's kernel object loaded for test runs.
pub struct TestRun {
    ebpf: Ebpf,
}

impl TestRun {
    /// Loads the object with fresh, unpinned maps.
    pub fn load() -> anyhow::Result<Self> {
        Ok(Self {
            ebpf: berth::dataplane::load_unpinned()?,
        })
    }

    /// Runs XDP program `name` once on `frame`.
    pub fn xdp(&mut self, name: &str, frame: &[u8]) -> anyhow::Result<Outcome<XdpVerdict>> {
        let prog: &mut Xdp = self.program(name)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let (verdict, data) = run_once(prog, frame)?;
        Ok(Outcome {
            verdict: XdpVerdict::from(verdict),
            data,
        })
    }

    /// Runs tc program `name` once on `frame`; returns the `TC_ACT_*` verdict.
    pub fn tc(&mut self, name: &str, frame: &[u8]) -> anyhow::Result<Outcome<i32>> {
        let prog: &mut SchedClassifier = self.program(name)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let (verdict, data) = run_once(prog, frame)?;
        Ok(Outcome {
            verdict: verdict as i32,
            data,
        })
    }

    fn program<'a, P>(&'a mut self, name: &str) -> anyhow::Result<&'a mut P>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("no program {name} in the object"))?
            .try_into()?)
    }

    /// Sum over CPUs of slot `index` of the per-CPU `u64` array `map`.
    pub fn per_cpu_sum(&self, map: &str, index: u32) -> anyhow::Result<u64> {
        let map = self
            .ebpf
            .map(map)
            .ok_or_else(|| anyhow::anyhow!("no map {map} in the object"))?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        Ok(array.get(&index, 0)?.iter().sum())
    }

    /// The loaded object, for tests that seed or read other maps.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
