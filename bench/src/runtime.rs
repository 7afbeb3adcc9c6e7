//! Container start latency: `RUNTIME --root R run --bundle B ID` of the same busybox bundle
//! running `/bin/true` (create + start + wait + delete in one command), for berth-runc, crun
//! and runc, interleaved (each round runs every runtime once, in rotating order) so drift in the
//! machine's state hits all of them alike.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::percentile;

#[derive(clap::Args)]
pub struct Args {
    /// Path of berth-runc (a release build: `cargo build --release -p berth`).
    #[arg(long, default_value = "target/release/berth-runc")]
    berth_runc: PathBuf,
    /// Rounds (each runs every runtime once).
    #[arg(long, default_value_t = 60)]
    rounds: usize,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Idle this long before each timed run, to measure isolated starts. Back to back, a runtime
    /// inherits kernel state from the run before it: a move into a cgroup by pid (a write to
    /// `cgroup.procs`) waits for an RCU grace period unless another such move happened within
    /// about one grace period, so the runtimes that move by pid get cheaper when they follow
    /// each other. 0 (the default) runs back to back.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

struct Runtime {
    name: &'static str,
    path: PathBuf,
    samples_ms: Vec<f64>,
}

pub fn run(args: &Args) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing: install busybox-static (`cargo xtask setup` does)");
    }
    let berth = args.berth_runc.canonicalize().with_context(|| {
        format!(
            "{} (build it: cargo build --release -p berth)",
            args.berth_runc.display()
        )
    })?;
    let tmp = tempfile::tempdir()?;
    let bundle = tmp.path().join("bundle");
    make_bundle(&bundle, &berth, busybox)?;
    let _hugetlb = CrunFixture::apply()?;

    let mut runtimes = vec![Runtime {
        name: "berth-runc",
        path: berth,
        samples_ms: Vec::new(),
    }];
    for (name, path) in [("crun", "/usr/bin/crun"), ("runc", "/usr/bin/runc")] {
        if Path::new(path).exists() {
            runtimes.push(Runtime {
                name,
                path: path.into(),
                samples_ms: Vec::new(),
            });
        } else {
            eprintln!("{name} not installed ({path}); it is left out (`apt-get install {name}`)");
        }
    }

    // One warm-up run each (page cache, first cgroup creation), not counted.
    for rt in &runtimes {
        time_run(rt, tmp.path(), &bundle, "warmup")?;
    }
    for round in 0..args.rounds {
        let n = runtimes.len();
        for k in 0..n {
            let rt = &mut runtimes[(round + k) % n];
            std::thread::sleep(std::time::Duration::from_millis(args.pause_ms));
            let ms = time_run(rt, tmp.path(), &bundle, &format!("b{round}"))?;
            rt.samples_ms.push(ms);
        }
    }

    let crun_median = runtimes
        .iter()
        .find(|r| r.name == "crun")
        .map(|r| median(&r.samples_ms));
    println!(
        "\ncontainer run (create+start+wait+delete) of busybox /bin/true, {} interleaved rounds{}\n",
        args.rounds,
        if args.pause_ms > 0 {
            format!(", {} ms idle before each run", args.pause_ms)
        } else {
            String::new()
        }
    );
    println!("| runtime | median | p90 | min | vs crun (median) |");
    println!("|---|---|---|---|---|");
    let mut json = Vec::new();
    for rt in &runtimes {
        let mut s = rt.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        let med = percentile(&s, 50.0);
        let ratio = crun_median.map(|c| med / c);
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            rt.name,
            med,
            percentile(&s, 90.0),
            s.first().copied().unwrap_or(f64::NAN),
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
        json.push(serde_json::json!({
            "runtime": rt.name, "median_ms": med, "p90_ms": percentile(&s, 90.0),
            "min_ms": s.first(), "ratio_vs_crun": ratio, "samples_ms": rt.samples_ms,
        }));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}

fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

/// Times one `RUNTIME run`; fails loudly if the container does not exit 0.
fn time_run(rt: &Runtime, tmp: &Path, bundle: &Path, tag: &str) -> Result<f64> {
    let root = tmp.join(format!("root-{}", rt.name));
    let id = format!("bench-{}-{tag}", rt.name);
    let started = Instant::now();
    let out = Command::new(&rt.path)
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", rt.path.display()))?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "{} run failed ({}): {}",
            rt.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

/// A busybox bundle running /bin/true, from berth-runc's default spec (the same file for every
/// runtime).
fn make_bundle(bundle: &Path, berth: &Path, busybox: &Path) -> Result<()> {
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    for applet in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    let status = Command::new(berth)
        .args(["spec", "--bundle"])
        .arg(bundle)
        .status()?;
    if !status.success() {
        bail!("berth-runc spec failed");
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// Debian's crun 1.8.1 refuses to run on a hybrid cgroup host while the v2 hierarchy lists a
/// controller; moving hugetlb to a v1 mount makes v2 controller-free (see shared/TOOLCHAIN.md).
/// A benchmark fixture for crun only; removed again on drop if this run mounted it.
struct CrunFixture {
    mounted: Option<PathBuf>,
}

impl CrunFixture {
    fn apply() -> Result<Self> {
        let controllers = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "hugetlb") {
            return Ok(Self { mounted: None });
        }
        let dir = PathBuf::from("/sys/fs/cgroup/hugetlb");
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("mount")
            .args(["-t", "cgroup", "-o", "hugetlb", "cgroup"])
            .arg(&dir)
            .status()?;
        if !status.success() {
            bail!("mounting the hugetlb v1 hierarchy for crun failed");
        }
        eprintln!("fixture: hugetlb moved to a v1 mount so crun accepts this hybrid host");
        Ok(Self { mounted: Some(dir) })
    }
}

impl Drop for CrunFixture {
    fn drop(&mut self) {
        if let Some(dir) = &self.mounted {
            let _ = Command::new("umount").arg(dir).status();
            let _ = std::fs::remove_dir(dir);
        }
    }
}
