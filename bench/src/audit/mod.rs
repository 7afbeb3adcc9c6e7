//! `berth-bench audit`: syscall auditing's cost to the audited work, berth (counting in the
//! kernel; recording every call with its arguments and delivering it on the event stream) vs
//! what a user would otherwise run (a bpftrace counter, bpftrace printf per event, `strace -f`,
//! auditd), against nothing attached, interleaved in one run.
//!
//! The work runs in a cgroup of the bench's (the audited "container"), in a worker process of
//! the bench itself ([`worker`]) that moves into the cgroup before it starts and times itself:
//! - `loop`: N × (openat + close) of one file: openat is a syscall the record rule names, so
//!   events mode records every iteration;
//! - `tar`: GNU tar extracting an archive of small files into tmpfs;
//! - `exec`: N × (fork + exec /bin/true + wait);
//! - `unaudited`: the `loop` again, in another cgroup nothing selects, while the contender is
//!   attached for the audited one: what the rest of the machine pays.
//!
//! Per round, every contender in rotating order is set up once, measured on every workload,
//! and torn down; medians over rounds. berth's delivery is checked on the `loop` in events
//! mode: every openat is on the stream or counted as lost.

mod agent;
mod report;
mod tracers;
mod worker;

use crate::leftovers::{dead, entries, owner};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::services::{self, child, topo};
use agent::{Agent, Cursor, Reader, Tally};
use tracers::{Auditd, Bpftrace, Strace};
pub use worker::{WorkerArgs, worker};

/// Names of what this bench creates start with this, then its pid.
pub const PREFIX: &str = "berth-bench-audit-";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rounds: each measures every contender on every workload once (rotating the order);
    /// medians are reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Contenders. `off` is nothing attached; tools that are missing (or cannot run here) are
    /// reported as unavailable.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "off,berth-counts,berth-events,bpftrace-counter,bpftrace-printf,strace,auditd"
    )]
    contenders: Vec<Contender>,
    /// Workloads.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "loop,tar,exec,unaudited"
    )]
    workloads: Vec<Workload>,
    /// openat+close iterations of `loop` (and `unaudited`). 50,000 keeps a whole run to a few
    /// minutes on a 2-CPU VM, where strace and auditd take 60 to 120 µs per event (200,000
    /// takes them 15 to 50 s per run).
    #[arg(long, default_value_t = 50_000)]
    loop_calls: u64,
    /// Files in the archive `tar` extracts (512 bytes each, 100 per directory).
    #[arg(long, default_value_t = 2000)]
    archive_files: usize,
    /// fork+exec+wait of `exec`.
    #[arg(long, default_value_t = 300)]
    execs: u64,
    /// The program `exec` runs.
    #[arg(long, default_value = "/bin/true")]
    exec_program: PathBuf,
    /// The CPU the worker (and what it starts) runs on: `last` = the highest CPU this process
    /// may use, `all` = unpinned, or a number. Tracers' and the agent's own threads are not
    /// pinned: their work shows in the tool CPU column.
    #[arg(long, default_value = "last")]
    worker_cpu: String,
    /// Limit for one workload run (a contender slower than this is reported as timeout).
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
    /// Who reads berth's event stream in events mode: the agent's own `--events-file`, or a
    /// `berth events --follow` client.
    #[arg(long, value_enum, default_value_t = Reader::File)]
    reader: Reader,
    /// The berth binary [default: `berth` next to this binary, else target/{release,debug}].
    #[arg(long)]
    berth: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Contender {
    /// Nothing attached.
    Off,
    /// berth with the cgroup selected by a `count` rule for `*`.
    BerthCounts,
    /// berth with the cgroup selected by a `record` rule for execve, openat, connect.
    BerthEvents,
    /// `bpftrace` counting every syscall of the cgroup on `raw_syscalls:sys_enter`.
    BpftraceCounter,
    /// `bpftrace` printing one line per openat/execve/connect of the cgroup.
    BpftracePrintf,
    /// `strace -f -e trace=openat,execve,connect` attached to the worker.
    Strace,
    /// auditd with an exit rule for openat, execve, connect.
    Auditd,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Off => "off",
            Contender::BerthCounts => "berth counts",
            Contender::BerthEvents => "berth events",
            Contender::BpftraceCounter => "bpftrace counter",
            Contender::BpftracePrintf => "bpftrace printf",
            Contender::Strace => "strace -f",
            Contender::Auditd => "auditd",
        }
    }

    /// Counting contenders' cost is per syscall made; recording ones' per event recorded.
    pub fn counts(self) -> bool {
        matches!(self, Contender::BerthCounts | Contender::BpftraceCounter)
    }

    fn label(self) -> Option<&'static str> {
        match self {
            Contender::BerthCounts => Some(agent::COUNTS),
            Contender::BerthEvents => Some(agent::EVENTS),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Workload {
    /// N × (openat + close) of one file, in the audited cgroup.
    Loop,
    /// GNU tar extracting the archive into tmpfs, in the audited cgroup.
    Tar,
    /// N × (fork + exec + wait), in the audited cgroup.
    Exec,
    /// The loop in a cgroup nothing audits, while the contender is attached for the other.
    Unaudited,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Loop => "loop",
            Workload::Tar => "tar",
            Workload::Exec => "exec",
            Workload::Unaudited => "unaudited",
        }
    }
}

/// What berth's stream said about one events-mode measurement.
#[derive(Clone, Debug, Default)]
pub struct Account {
    /// The calls the worker made that the rules record, when known exactly (`loop`: N).
    pub produced: Option<u64>,
    /// `syscall` records of the audited cgroup on the stream (every syscall).
    pub delivered_all: u64,
    /// Of those, the ones that are the workload's known calls (`loop`: openat of its file).
    pub delivered: u64,
    /// `lost` of gap records.
    pub gap_lost: u64,
    /// `berth_audit_lost_total` delta (ring full).
    pub ring_lost: u64,
    /// `berth_events_lost_total` delta (ring full, and readers that fell behind).
    pub events_lost: u64,
    /// `berth_audit_kernel_total{outcome="records"}` delta.
    pub records: u64,
    /// From `go` to the last line written.
    pub stream_s: Option<f64>,
    pub by_syscall: BTreeMap<String, u64>,
}

impl Account {
    pub fn unaccounted(&self) -> Option<i64> {
        self.produced
            .map(|p| p as i64 - self.delivered as i64 - self.gap_lost as i64)
    }
}

/// One measurement.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The workload's time, measured inside the worker.
    pub secs: f64,
    /// CPU time of the worker and its children over the same span (in-kernel tracing work done
    /// in the caller's context included), measured inside the worker.
    pub worker_cpu_s: f64,
    /// Events the contender showed for the run (berth: syscall records on the stream;
    /// bpftrace printf: lines; strace: calls printed).
    pub seen: Option<u64>,
    /// Syscalls counted (berth counts, the bpftrace counter).
    pub counted: Option<u64>,
    /// Events the contender said it lost (bpftrace's "Lost N events").
    pub lost: Option<u64>,
    /// CPU time the contender's own processes used from `go` until they had dealt with the
    /// run's events: berth's agent (and follower), bpftrace, strace, auditd and kauditd.
    pub tool_cpu_s: Option<f64>,
    pub account: Option<Account>,
}

type Outcome = crate::Outcome<Sample>;
type Cell = crate::Cell<Sample>;

/// A contender's state for one round (bpftrace is started for each run: what it printed is
/// complete only once it has exited).
enum Attached {
    Nothing,
    Auditd(Auditd),
}

/// Everything the run created; dropped in field order (the agent before its cgroups, the
/// cgroups before the directories).
struct Bench<'a> {
    args: &'a Args,
    agent: Agent,
    cursor: Cursor,
    cpu: Option<usize>,
    audited: topo::BenchCgroup,
    other: topo::BenchCgroup,
    _hooks: topo::BenchCgroup,
    loop_file: PathBuf,
    archive: PathBuf,
    tar: PathBuf,
    data: tempfile::TempDir,
    tmp: tempfile::TempDir,
    seq: u64,
    /// What berth attached in each mode (for the report).
    attached: BTreeMap<Contender, Vec<String>>,
    /// Round notes (bpftrace's own counts, ...).
    notes: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    validate(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("berth-bench audit needs root (cgroups, bpffs, tracepoints, audit rules)");
    }
    child::install_interrupt_handler()?;
    let run_started = Instant::now();
    let berth = services::berth::resolve(args.berth.as_deref())?;
    check_contract(&berth)?;
    let mut contenders: Vec<Contender> = Vec::new();
    for c in &args.contenders {
        if !contenders.contains(c) {
            contenders.push(*c);
        }
    }
    let mut workloads: Vec<Workload> = Vec::new();
    for w in &args.workloads {
        if !workloads.contains(w) {
            workloads.push(*w);
        }
    }
    let tar = match services::which("tar") {
        Some(tar) => tar,
        None if !workloads.contains(&Workload::Tar) => PathBuf::from("tar"),
        None => bail!("tar is not installed (the `tar` workload extracts with it)"),
    };
    if workloads.contains(&Workload::Exec) && !args.exec_program.is_file() {
        bail!(
            "--exec-program {}: no such file",
            args.exec_program.display()
        );
    }

    let mut unavailable: BTreeMap<Contender, String> = BTreeMap::new();
    for (c, tool) in [
        (Contender::BpftraceCounter, "bpftrace"),
        (Contender::BpftracePrintf, "bpftrace"),
        (Contender::Strace, "strace"),
    ] {
        if contenders.contains(&c) && services::which(tool).is_none() {
            unavailable.insert(
                c,
                format!(
                    "unavailable: {tool} not installed (`cargo xtask bench audit` installs it)"
                ),
            );
        }
    }
    if contenders.contains(&Contender::Auditd)
        && let Some(why) = tracers::auditd_unavailable()
    {
        unavailable.insert(Contender::Auditd, format!("unavailable: {why}"));
    }
    for (c, why) in &unavailable {
        eprintln!("{} {why}", c.name());
    }

    clean_leftovers(&berth);
    services::warn_if_busy("start");
    let environment = environment(&berth, &tar);
    let cpu = worker_cpu(&args.worker_cpu)?;

    eprintln!("setting up: cgroups, the archive, the berth agent");
    let pid = std::process::id();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{pid}-"))
        .tempdir()?;
    // The loop's file and the extraction on tmpfs: the disk does not take part.
    let shm = Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{pid}-"))
            .tempdir_in(shm)?
    } else {
        tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{pid}-data-"))
            .tempdir()?
    };
    let loop_file = data.path().join("loop-target");
    std::fs::write(&loop_file, b"berth-bench audit\n")?;
    let archive = if workloads.contains(&Workload::Tar) {
        make_archive(&tar, data.path(), args.archive_files)?
    } else {
        PathBuf::new()
    };
    let hooks = topo::BenchCgroup::create(&format!("{PREFIX}{pid}-hooks"))?;
    let audited = topo::BenchCgroup::create(&format!("{PREFIX}{pid}-audited"))?;
    let other = topo::BenchCgroup::create(&format!("{PREFIX}{pid}-other"))?;
    std::fs::create_dir_all(tmp.path().join("logs"))?;
    let agent = Agent::start(&berth, &tmp.path().join("berth"), &hooks.dir, args.reader)?;
    let mut bench = Bench {
        args,
        cursor: Cursor::new(&agent.stream),
        agent,
        cpu,
        audited,
        other,
        _hooks: hooks,
        loop_file,
        archive,
        tar,
        data,
        tmp,
        seq: 0,
        attached: BTreeMap::new(),
        notes: Vec::new(),
    };

    // One untimed pass: page cache, the archive's first extraction, the binaries' first exec.
    eprintln!("warm-up (untimed)");
    bench.agent.select(&bench.audited.dir, None)?;
    for &w in &workloads {
        match bench.measure(Contender::Off, w, &mut Attached::Nothing)? {
            Outcome::Done(..) => {}
            Outcome::Timeout(msg) | Outcome::Failed(msg) => {
                bail!(
                    "the {} workload fails with nothing attached: {msg}",
                    w.name()
                )
            }
        }
    }

    let mut cells: BTreeMap<(Workload, Contender), Cell> = BTreeMap::new();
    let mut disabled: BTreeMap<(Workload, Contender), String> = BTreeMap::new();
    for (c, why) in &unavailable {
        for &w in &workloads {
            disabled.insert((w, *c), why.clone());
        }
    }
    for round in 0..args.rounds {
        eprintln!("== round {}/{}", round + 1, args.rounds);
        for j in 0..contenders.len() {
            let c = contenders[(round + j) % contenders.len()];
            let todo: Vec<Workload> = workloads
                .iter()
                .copied()
                .filter(|&w| !(c == Contender::Strace && w == Workload::Unaudited))
                .filter(|&w| !disabled.contains_key(&(w, c)))
                .collect();
            for &w in &workloads {
                if let Some(why) = disabled.get(&(w, c)) {
                    cells
                        .entry((w, c))
                        .or_default()
                        .status
                        .get_or_insert_with(|| why.clone());
                }
            }
            if todo.is_empty() {
                continue;
            }
            bench.round(c, round, &todo, &mut cells, &mut disabled)?;
        }
    }
    services::warn_if_busy("end");
    let attached = std::mem::take(&mut bench.attached);
    let mut notes = std::mem::take(&mut bench.notes);
    notes.push(format!(
        "load average at the end: {} (other work on the machine shows up as noise in every contender)",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    drop(bench);

    let report = report::Report {
        args,
        workloads: &workloads,
        contenders: &contenders,
        cells: &cells,
        attached: &attached,
        notes: &notes,
        environment: &environment,
    };
    let text = report.render(run_started.elapsed());
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    Ok(())
}

impl Bench<'_> {
    /// One contender's turn in a round: set up, every workload once, torn down.
    fn round(
        &mut self,
        c: Contender,
        round: usize,
        todo: &[Workload],
        cells: &mut BTreeMap<(Workload, Contender), Cell>,
        disabled: &mut BTreeMap<(Workload, Contender), String>,
    ) -> Result<()> {
        child::check_interrupted()?;
        self.agent.check_alive()?;
        // berth's mode; every other contender runs with berth attaching nothing.
        let tracepoints = self
            .agent
            .select(&self.audited.dir, c.label())
            .with_context(|| format!("switching berth to {}", c.name()))?;
        if c.label().is_none() && !tracepoints.is_empty() {
            bail!(
                "berth still has tracepoints attached with nothing selected ({}): every \
                 baseline would pay for them",
                tracepoints.join(", ")
            );
        }
        if c.label().is_some() {
            self.attached.entry(c).or_insert(tracepoints);
        }
        let attached = match c {
            Contender::Auditd => Auditd::start(&self.tmp.path().join(format!("auditd-r{round}")))
                .map(Attached::Auditd),
            _ => Ok(Attached::Nothing),
        };
        let mut attached = match attached {
            Ok(a) => a,
            Err(err) => {
                child::check_interrupted()?;
                let msg = format!("{err:#}");
                eprintln!("   {:<17} setup FAILED: {msg}", c.name());
                for &w in todo {
                    cells
                        .entry((w, c))
                        .or_default()
                        .status
                        .get_or_insert_with(|| format!("error: {msg}"));
                    disabled.insert((w, c), format!("skipped: setup failed in round {round}"));
                }
                return Ok(());
            }
        };
        if let Attached::Auditd(a) = &attached {
            let note = a.note.clone();
            if !self.notes.contains(&note) {
                self.notes.push(note);
            }
        }
        for &w in todo {
            let head = format!("   {:<17} {:<9}", c.name(), w.name());
            let outcome = match self.measure(c, w, &mut attached) {
                Ok(o) => o,
                Err(err) => {
                    child::check_interrupted()?;
                    self.agent.check_alive()?;
                    Outcome::Failed(format!("{err:#}"))
                }
            };
            let cell = cells.entry((w, c)).or_default();
            match outcome {
                Outcome::Done(sample, notes) => {
                    eprintln!("{head} {}", progress(&sample));
                    for n in &notes {
                        eprintln!("      note: {n}");
                    }
                    cell.samples.push(sample);
                    cell.notes.extend(notes);
                }
                Outcome::Timeout(msg) => {
                    eprintln!("{head} timeout: {msg}");
                    cell.status = Some(format!("timeout: {msg}"));
                    disabled.insert((w, c), format!("skipped: timed out in round {round}"));
                }
                Outcome::Failed(msg) => {
                    eprintln!("{head} FAILED: {msg}");
                    cell.status = Some(format!("error: {msg}"));
                    disabled.insert((w, c), format!("skipped: failed in round {round}"));
                }
            }
        }
        match attached {
            Attached::Nothing => {}
            // Removing the rules must work: every later measurement would run under them.
            Attached::Auditd(a) => a.finish().context("removing the audit rules")?,
        }
        Ok(())
    }

    /// One workload run under contender `c` (already attached).
    fn measure(&mut self, c: Contender, w: Workload, attached: &mut Attached) -> Result<Outcome> {
        let args = self.args;
        self.seq += 1;
        let seq = self.seq;
        let cgroup = if w == Workload::Unaudited {
            self.other.dir.clone()
        } else {
            self.audited.dir.clone()
        };
        let (work, n, path) = match w {
            Workload::Loop | Workload::Unaudited => {
                (worker::Work::Loop, args.loop_calls, self.loop_file.clone())
            }
            Workload::Tar => (worker::Work::Tar, 1, self.archive.clone()),
            Workload::Exec => (worker::Work::Exec, args.execs, args.exec_program.clone()),
        };
        let dest = (w == Workload::Tar).then(|| self.data.path().join(format!("x{seq}")));
        let audited_run = w != Workload::Unaudited;
        let events_mode = c == Contender::BerthEvents && audited_run;
        let counts_mode = c == Contender::BerthCounts && audited_run;
        let mut notes = Vec::new();

        let counts_before = if counts_mode {
            Some(self.agent.counts()?)
        } else {
            None
        };
        let metrics_before = if events_mode {
            // Nothing is in flight: the previous measurement waited for its stream to settle.
            self.cursor.reset()?;
            Some(self.agent.metrics()?)
        } else {
            None
        };
        let log = self.tmp.path().join("logs").join(format!("w{seq}"));
        let mut bpftrace = match c {
            Contender::BpftraceCounter => Some(Bpftrace::start(
                &tracers::bpftrace_counter(&self.audited.dir),
                &log.with_extension("bpftrace"),
            )?),
            Contender::BpftracePrintf => Some(Bpftrace::start(
                &tracers::bpftrace_printf(&self.audited.dir),
                &log.with_extension("bpftrace"),
            )?),
            _ => None,
        };
        let running = worker::Running::start(&worker::Spec {
            work,
            cgroup: &cgroup,
            n,
            path: &path,
            dest: dest.as_deref(),
            tar: &self.tar,
            cpu: self.cpu,
            log: &log,
            limit: Duration::from_secs(args.timeout_s),
        })?;
        let strace = if c == Contender::Strace && audited_run {
            Some(Strace::attach(running.pid, &log.with_extension("strace"))?)
        } else {
            None
        };
        let audit_before = match attached {
            Attached::Auditd(a) => a.loss(),
            Attached::Nothing => (0, 0),
        };
        let tool_before = match (c, &attached, &bpftrace) {
            (_, _, Some(bt)) => Some(bt.cpu_s()),
            (_, Attached::Auditd(a), _) => Some(a.cpu_s()),
            (Contender::BerthCounts | Contender::BerthEvents, ..) => Some(self.agent.cpu_s()),
            (Contender::Strace, ..) if audited_run => Some(0.0),
            _ => None,
        };
        let go_at = SystemTime::now();
        let Some(result) = running.go()? else {
            return Ok(Outcome::Timeout(format!(
                "{} did not finish within {} s",
                w.name(),
                args.timeout_s
            )));
        };
        if result.errors > 0 {
            return Ok(Outcome::Failed(format!(
                "{} of the workload's operations failed (first: {})",
                result.errors,
                result.first_error.as_deref().unwrap_or("?")
            )));
        }
        let mut s = Sample {
            secs: result.elapsed_s,
            worker_cpu_s: result.cpu_s,
            ..Default::default()
        };
        let mut tool_after = None;
        if let Some(st) = strace {
            let (calls, cpu) = st.finish()?;
            s.seen = Some(calls);
            tool_after = Some(cpu);
        }
        let mut bpftrace_out = None;
        if let Some(bt) = &mut bpftrace {
            // It has written what it had; its exit (printing the maps) is not the work's cost.
            bt.settle()?;
            tool_after = Some(bt.cpu_s());
            bpftrace_out = Some(bt.stop());
        }
        if let Some(o) = bpftrace_out {
            if audited_run && c == Contender::BpftracePrintf {
                s.seen = Some(o.lines);
            }
            if audited_run && c == Contender::BpftraceCounter {
                s.counted = Some(o.map.values().sum());
                if o.map.is_empty() {
                    notes.push(
                        "bpftrace's counter map was empty at exit: its cgroup filter matched nothing"
                            .to_owned(),
                    );
                }
            }
            if o.lost > 0 {
                notes.push("bpftrace reported lost events (\"Lost N events\")".to_owned());
                s.lost = Some(o.lost);
            }
        }
        if let Attached::Auditd(a) = attached {
            a.settle()?;
            tool_after = Some(a.cpu_s());
            let (lost, waited) = a.loss();
            let (lost0, waited0) = audit_before;
            if lost > lost0 {
                s.lost = Some(lost - lost0);
                notes.push("the kernel dropped audit records (auditctl -s: lost)".to_owned());
            }
            if waited > waited0 {
                notes.push(
                    "callers were throttled waiting for audit backlog space (auditctl -s: \
                     backlog_wait_time_actual grew)"
                        .to_owned(),
                );
            }
        }
        if let Some(before) = metrics_before {
            let known = (w == Workload::Loop).then_some(n);
            let account = self.drain(known, go_at, before)?;
            s.seen = Some(account.delivered_all);
            if let Some(u) = account.unaccounted()
                && u != 0
            {
                notes.push(format!(
                    "{u} openat calls neither delivered nor counted as lost (produced {}, delivered {}, lost {})",
                    n, account.delivered, account.gap_lost
                ));
            }
            if account.gap_lost != account.events_lost {
                notes.push(format!(
                    "gap records say {} lost, berth_events_lost_total says {}",
                    account.gap_lost, account.events_lost
                ));
            }
            s.account = Some(account);
        }
        if c.label().is_some() {
            tool_after = Some(self.agent.cpu_s());
        }
        s.tool_cpu_s = tool_before.zip(tool_after).map(|(b, a)| a - b);
        if let Some(before) = counts_before {
            let after = self.agent.counts()?;
            let delta = |name: &str| {
                after
                    .get(name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(before.get(name).copied().unwrap_or(0))
            };
            let total: u64 = after.keys().map(|k| delta(k)).sum();
            s.counted = Some(total);
            if w == Workload::Loop && (delta("openat") < n || delta("close") < n) {
                notes.push(format!(
                    "berth counted {} openat and {} close, fewer than the {n} made",
                    delta("openat"),
                    delta("close")
                ));
            }
        }
        if let Some(dest) = dest {
            std::fs::remove_dir_all(&dest)
                .with_context(|| format!("removing {}", dest.display()))?;
        }
        Ok(Outcome::Done(s, notes))
    }

    /// Reads the stream until it has been quiet for 1.5 s (the agent turns ring losses into
    /// gap records once a second), bounded by 120 s.
    fn drain(
        &mut self,
        known: Option<u64>,
        go_at: SystemTime,
        before: agent::Metrics,
    ) -> Result<Account> {
        let path = known.map(|_| self.loop_file.to_string_lossy().into_owned());
        let mut tally = Tally::default();
        let started = Instant::now();
        let mut last_growth = Instant::now();
        loop {
            child::check_interrupted()?;
            if self
                .cursor
                .read(&self.agent.name, path.as_deref(), &mut tally)?
                > 0
            {
                last_growth = Instant::now();
            }
            if last_growth.elapsed() >= Duration::from_millis(1500) {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                self.notes.push(
                    "berth's event stream was still growing 120 s after a run; counted so far"
                        .to_owned(),
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let m = self.agent.metrics()?.since(before);
        let stream_s = self
            .cursor
            .modified()
            .and_then(|t| t.duration_since(go_at).ok())
            .map(|d| d.as_secs_f64());
        Ok(Account {
            produced: known,
            delivered_all: tally.syscalls(),
            delivered: if known.is_some() {
                tally.on_path
            } else {
                tally.syscalls()
            },
            gap_lost: tally.gap_lost,
            ring_lost: m.audit_lost,
            events_lost: m.events_lost,
            records: m.records,
            stream_s,
            by_syscall: tally.by_syscall,
        })
    }
}

fn progress(s: &Sample) -> String {
    let mut line = format!("{:>9.1} ms", s.secs * 1000.0);
    line.push_str(&format!("  worker cpu {:>6.3} s", s.worker_cpu_s));
    if let Some(n) = s.seen {
        line.push_str(&format!("  events seen {n}"));
    }
    if let Some(n) = s.counted {
        line.push_str(&format!("  syscalls counted {n}"));
    }
    if let Some(n) = s.lost {
        line.push_str(&format!("  lost {n}"));
    }
    if let Some(c) = s.tool_cpu_s {
        line.push_str(&format!("  tool cpu {c:.3} s"));
    }
    if let Some(a) = &s.account {
        line.push_str(&format!(
            "  (delivered {} + lost {}{})",
            a.delivered,
            a.gap_lost,
            a.unaccounted()
                .map_or(String::new(), |u| format!(", unaccounted {u}"))
        ));
    }
    line
}

fn validate(args: &Args) -> Result<()> {
    if !(1..=50).contains(&args.rounds) {
        bail!("--rounds must be 1..=50");
    }
    if args.contenders.is_empty() || args.workloads.is_empty() {
        bail!("--contenders and --workloads: name at least one");
    }
    if !(1..=100_000_000).contains(&args.loop_calls) {
        bail!("--loop-calls must be 1..=100000000");
    }
    if !(1..=1_000_000).contains(&args.archive_files) {
        bail!("--archive-files must be 1..=1000000");
    }
    if !(1..=1_000_000).contains(&args.execs) {
        bail!("--execs must be 1..=1000000");
    }
    if !(1..=7200).contains(&args.timeout_s) {
        bail!("--timeout-s must be 1..=7200");
    }
    Ok(())
}

/// Fails with a clear message when this berth lacks what the bench drives.
fn check_contract(berth: &Path) -> Result<()> {
    let help = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new(berth)
            .args(args)
            .output()
            .with_context(|| format!("running {}", berth.display()))?;
        if !out.status.success() {
            bail!(
                "`{} {}` failed: {}; this berth predates the syscall auditing the bench measures",
                berth.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    help(&["audit", "add-cgroup", "--help"])?;
    help(&["stats", "--help"])?;
    help(&["events", "--help"])?;
    let agent = help(&["agent", "--help"])?;
    for flag in ["--events-file", "--state-dir", "--engine-root", "--cgroup"] {
        if !agent.contains(flag) {
            bail!("{} has no `berth agent {flag}`", berth.display());
        }
    }
    Ok(())
}

/// `--worker-cpu`: `last`, `all` or a CPU number.
fn worker_cpu(arg: &str) -> Result<Option<usize>> {
    match arg {
        "all" => Ok(None),
        "last" => {
            // SAFETY: a zeroed cpu_set_t is a valid output buffer.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: our own affinity into a buffer of the size passed.
            if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
                return Ok(None);
            }
            // SAFETY: CPU_ISSET reads the set with an index below CPU_SETSIZE.
            Ok((0..libc::CPU_SETSIZE as usize)
                .rev()
                .find(|&c| unsafe { libc::CPU_ISSET(c, &set) }))
        }
        n => {
            let cpu: usize = n
                .parse()
                .with_context(|| format!("--worker-cpu {n:?}: expected last, all or a number"))?;
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!("--worker-cpu {cpu}: no such CPU");
            }
            Ok(Some(cpu))
        }
    }
}

/// The archive: `files` files of 512 bytes, 100 per directory, as GNU tar writes it.
fn make_archive(tar: &Path, dir: &Path, files: usize) -> Result<PathBuf> {
    let src = dir.join("archive-src");
    for i in 0..files {
        let sub = src.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let line = format!("file {i:06} of the berth-bench audit archive\n");
        let body: String = line.repeat(512 / line.len() + 1);
        std::fs::write(sub.join(format!("f{i:06}.txt")), &body.as_bytes()[..512])?;
    }
    let archive = dir.join("archive.tar");
    let out = std::process::Command::new(tar)
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .context("running tar -cf")?;
    if !out.status.success() {
        bail!(
            "tar -cf {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::remove_dir_all(&src)?;
    Ok(archive)
}

fn environment(berth: &Path, tar: &Path) -> Vec<(&'static str, String)> {
    let v = |program: &str, args: &[&str]| {
        services::version_of(program, args)
            .as_str()
            .unwrap_or("not installed")
            .to_owned()
    };
    vec![
        (
            "load average at start",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "kernel",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        (
            "cpus",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
                .to_string(),
        ),
        (
            "berth",
            format!(
                "{} ({})",
                v(&berth.to_string_lossy(), &["--version"]),
                berth.display()
            ),
        ),
        ("bpftrace", v("bpftrace", &["--version"])),
        ("strace", v("strace", &["-V"])),
        ("auditd", v("auditctl", &["-v"])),
        ("tar", v(&tar.to_string_lossy(), &["--version"])),
    ]
}

/// Removes what a run killed before its cleanup left: pins, cgroups, directories (names
/// carrying a pid that no longer runs) and audit rules with the bench's key.
fn clean_leftovers(berth: &Path) {
    for name in entries(Path::new("/sys/fs/bpf")) {
        if owner(&name, PREFIX).is_some_and(dead) {
            eprintln!("removing leftover pins /sys/fs/bpf/{name}");
            let gone = std::env::temp_dir().join(format!("{name}-gone"));
            agent::cleanup_pins(
                berth,
                &gone,
                &gone.join("api.sock"),
                &Path::new("/sys/fs/bpf").join(&name),
            );
        }
    }
    if let Ok(root) = topo::cgroup2_root() {
        for name in entries(&root) {
            if owner(&name, PREFIX).is_some_and(dead) {
                eprintln!("removing leftover cgroup {}", root.join(&name).display());
                let _ = std::fs::remove_dir(root.join(name));
            }
        }
    }
    for dir in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
        for name in entries(&dir) {
            if owner(&name, PREFIX).is_some_and(dead) {
                eprintln!("removing leftover directory {}", dir.join(&name).display());
                let _ = std::fs::remove_dir_all(dir.join(name));
            }
        }
    }
    if services::which("auditctl").is_some()
        && let Err(e) = tracers::remove_audit_rules()
    {
        eprintln!("warning: removing leftover audit rules: {e:#}");
    }
}
