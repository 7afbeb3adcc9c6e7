//! `berth-bench services`: kube-proxy's job, a pod connecting to a ClusterIP, done by berth's
//! data plane, by kube-proxy's iptables layout (Debian's default iptables-nft, and
//! iptables-legacy) and by kube-proxy's nftables layout, side by side in one run, at 1 to
//! 10,000 services × 10 endpoints.
//!
//! For each service count, repetitions run every mode once, in rotating order (interleaved, so
//! drift in the machine's state hits all modes alike); each mode's numbers are the medians over
//! repetitions. One measurement ("slot") is: a fresh node namespace, programming all services
//! (timed), changing one service's endpoints (timed), then the connection load from the client
//! pod. Everything happens inside network namespaces the run creates (`bb-<pid>-*`) and removes;
//! the host's namespace gets no rules and no interfaces, and no packet leaves the machine.

pub(crate) mod berth;
pub(crate) mod child;
mod load;
mod model;
pub(crate) mod report;
pub(crate) mod topo;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use load::{WorkerArgs, worker};
use model::Service;

use report::{Report, fmt_secs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Service counts to measure (each service has 10 endpoints).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
    services: Vec<usize>,
    /// Modes to compare. `iptables` is Debian's default iptables (iptables-nft); modes whose
    /// tools are missing are reported as unavailable.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,iptables,iptables-legacy,nftables,berth"
    )]
    modes: Vec<Mode>,
    /// Repetitions (each measures every mode once); medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Length of each connection-rate measurement.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Client threads, each connecting in a loop.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Limit for programming all services (and for the one-service update); a mode that takes
    /// longer is reported as "timeout" and skipped at larger service counts.
    #[arg(long, default_value_t = 120)]
    program_timeout_s: u64,
    /// The berth binary [default: `berth` next to this binary, else target/{release,debug}].
    #[arg(long)]
    berth: Option<PathBuf>,
    /// Print the results as JSON on stdout (progress and the table go to stderr).
    #[arg(long)]
    json: bool,
    /// Seed of the ClusterIPs and of the clients' target choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// When one nft transaction of all services exceeds the time limit, program them as this
    /// many transactions instead (as kube-proxy's first sync cannot, but an operator could).
    #[arg(long, default_value_t = 20)]
    nft_chunks: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Mode {
    /// Connect straight to backend IPs: the ceiling.
    Direct,
    /// kube-proxy's iptables layout through `iptables-restore` (Debian: iptables-nft).
    Iptables,
    /// The same rules through `iptables-legacy-restore`.
    IptablesLegacy,
    /// kube-proxy's nftables layout through `nft -f`.
    Nftables,
    /// berth's data plane through `berth svc apply`.
    Berth,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Iptables => "iptables",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Nftables => "nftables",
            Mode::Berth => "berth",
        }
    }
}

/// A small deterministic PRNG (splitmix64): ClusterIPs and target choices repeat across runs
/// for a seed, and the load loop pays a few nanoseconds per pick.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// One measurement of one mode.
#[derive(Clone, Debug)]
struct Sample {
    load: load::LoadResult,
    program_all_s: Option<f64>,
    update_one_s: Option<f64>,
}

type Outcome = crate::Outcome<Sample>;
/// One (count, mode) cell of the results.
type Cell = crate::Cell<Sample>;

/// The services of one service count and the files each mode programs them from (written on
/// first use, identical for every repetition).
struct Workload {
    n: usize,
    services: Vec<Service>,
    updated: Vec<Service>,
    changed: usize,
    removed: Ipv4Addr,
    dir: PathBuf,
    targets: PathBuf,
}

impl Workload {
    fn new(n: usize, seed: u64, tmp: &Path) -> Result<Self> {
        let backends: Vec<Ipv4Addr> = (0..topo::BACKENDS).map(topo::backend_ip).collect();
        let services = model::service_set(n, &backends, seed);
        let (updated, changed, removed) = model::with_one_endpoint_removed(&services);
        let dir = tmp.join(format!("n{n}"));
        std::fs::create_dir_all(&dir)?;
        let targets = dir.join("vips.txt");
        let mut text = String::with_capacity(n * 20);
        for s in &services {
            let _ = writeln!(text, "{}:{}", s.cluster_ip, model::SERVICE_PORT);
        }
        std::fs::write(&targets, text)?;
        Ok(Self {
            n,
            services,
            updated,
            changed,
            removed,
            dir,
            targets,
        })
    }

    fn file(&self, name: &str, generate: impl FnOnce() -> String) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if !path.exists() {
            std::fs::write(&path, generate())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(path)
    }

    fn log(&self, mode: Mode, rep: usize, step: &str) -> PathBuf {
        self.dir.join(format!("{}-r{rep}-{step}", mode.name()))
    }
}

/// Size of each file when berth's API refuses all services in one request: well under the
/// 2 MiB an HTTP server framework commonly accepts by default.
const BERTH_APPLY_BYTES: u64 = 1 << 20;

struct Bench<'a> {
    args: &'a Args,
    tmp: PathBuf,
    topo: topo::Topology,
    cgroup: topo::BenchCgroup,
    berth: Option<PathBuf>,
    features: berth::AgentFeatures,
    pin_root: PathBuf,
    direct_targets: PathBuf,
    /// Debian's `iptables` may point at iptables-legacy; then its rules need legacy flushing.
    iptables_is_legacy: bool,
    /// Set once one nft transaction of all services timed out: larger counts go chunked.
    nft_chunked: bool,
}

pub fn run(args: &Args) -> Result<()> {
    validate(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("berth-bench services needs root (network namespaces, netfilter, cgroups, bpffs)");
    }
    child::install_interrupt_handler()?;
    let mut counts = args.services.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut modes: Vec<Mode> = Vec::new();
    for m in &args.modes {
        if !modes.contains(m) {
            modes.push(*m);
        }
    }

    // Which modes can run at all.
    let mut unavailable: BTreeMap<Mode, String> = BTreeMap::new();
    let mut berth_path = None;
    let mut features = berth::AgentFeatures::default();
    if modes.contains(&Mode::Berth) {
        match berth::resolve(args.berth.as_deref())
            .and_then(|p| Ok((berth::check_contract(&p)?, p)))
        {
            Ok((f, p)) => {
                features = f;
                berth_path = Some(p);
            }
            Err(err) => {
                eprintln!("berth mode unavailable: {err:#}");
                unavailable.insert(Mode::Berth, format!("unavailable: {err:#}"));
            }
        }
    }
    for (mode, tool) in [
        (Mode::Iptables, "iptables-restore"),
        (Mode::IptablesLegacy, "iptables-legacy-restore"),
        (Mode::Nftables, "nft"),
    ] {
        if modes.contains(&mode) && which(tool).is_none() {
            eprintln!(
                "{} mode unavailable: {tool} not installed (`cargo xtask setup` installs it)",
                mode.name()
            );
            unavailable.insert(mode, format!("unavailable: {tool} not installed"));
        }
    }
    let berth_for_cleanup = berth_path
        .clone()
        .or_else(|| berth::resolve(args.berth.as_deref()).ok());
    topo::clean_leftovers(berth_for_cleanup.as_deref());

    let prefix = format!("{}{}", topo::PREFIX, std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{prefix}{}", topo::TMP_SUFFIX))
        .tempdir()?;
    let cgroup = topo::BenchCgroup::create(&prefix)?;
    let topology = topo::Topology::create(&prefix)?;
    let direct_targets = tmp.path().join("backends.txt");
    let mut text = String::new();
    for i in 0..topo::BACKENDS {
        let _ = writeln!(text, "{}:{}", topo::backend_ip(i), model::TARGET_PORT);
    }
    std::fs::write(&direct_targets, text)?;
    let environment = environment(berth_path.as_deref());
    warn_if_busy("start");
    let mut bench = Bench {
        args,
        tmp: tmp.path().to_owned(),
        topo: topology,
        cgroup,
        berth: berth_path,
        features,
        pin_root: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
        direct_targets,
        iptables_is_legacy: environment["iptables"]
            .as_str()
            .is_some_and(|v| v.contains("legacy")),
        nft_chunked: false,
    };

    let mut cells: BTreeMap<(usize, Mode), Cell> = BTreeMap::new();
    let mut disabled = unavailable.clone();
    for &n in &counts {
        let started = Instant::now();
        let workload = Workload::new(n, args.seed, &bench.tmp)?;
        eprintln!(
            "== {n} services × {} endpoints (set generated in {:.2} s)",
            topo::BACKENDS,
            started.elapsed().as_secs_f64()
        );
        for rep in 0..args.reps {
            for j in 0..modes.len() {
                let mode = modes[(rep + j) % modes.len()];
                let cell = cells.entry((n, mode)).or_default();
                if let Some(reason) = disabled.get(&mode) {
                    cell.status.get_or_insert_with(|| reason.clone());
                    continue;
                }
                if cell.status.is_some() {
                    continue;
                }
                let outcome = match bench.slot(mode, &workload, rep) {
                    Ok(outcome) => outcome,
                    Err(err) => {
                        child::check_interrupted()?;
                        Outcome::Failed(format!("{err:#}"))
                    }
                };
                match outcome {
                    Outcome::Done(sample, notes) => {
                        eprintln!(
                            "   rep {}/{} {:<16} {:>8.0} conn/s  p50 {:>6.1} us  p99 {:>7.1} us  program all {}  update one {}",
                            rep + 1,
                            args.reps,
                            mode.name(),
                            sample.load.conn_per_s,
                            sample.load.p50_us,
                            sample.load.p99_us,
                            fmt_secs(sample.program_all_s),
                            fmt_secs(sample.update_one_s),
                        );
                        for note in &notes {
                            eprintln!("      note: {note}");
                        }
                        cell.samples.push(sample);
                        cell.notes.extend(notes);
                    }
                    Outcome::Timeout(msg) => {
                        eprintln!(
                            "   rep {}/{} {:<16} timeout: {msg}",
                            rep + 1,
                            args.reps,
                            mode.name()
                        );
                        cell.status = Some(format!("timeout: {msg}"));
                        disabled.insert(mode, format!("skipped: timed out at {n} services"));
                    }
                    Outcome::Failed(msg) => {
                        eprintln!(
                            "   rep {}/{} {:<16} FAILED: {msg}",
                            rep + 1,
                            args.reps,
                            mode.name()
                        );
                        cell.status = Some(format!("error: {msg}"));
                        disabled.insert(mode, format!("skipped: failed at {n} services"));
                    }
                }
            }
        }
    }
    drop(bench);
    warn_if_busy("end");

    let report = Report::new(&counts, &modes, &cells);
    if args.json {
        let json = serde_json::json!({
            "benchmark": "services",
            "environment": environment,
            "config": {
                "services": counts, "modes": modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
                "reps": args.reps, "duration_ms": args.duration_ms, "threads": args.threads,
                "program_timeout_s": args.program_timeout_s, "seed": args.seed,
                "endpoints_per_service": topo::BACKENDS,
            },
            "results": report.rows_json(),
            "comparisons": report.comparisons_json(),
            "goals": report.goals_json(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        // The table too, on stderr, for the person watching a run whose stdout goes to a file.
        eprint!("{}", report.render(args));
    } else {
        print!("{}", report.render(args));
    }
    if let Some(reason) = unavailable.get(&Mode::Berth) {
        bail!("berth mode could not run: {reason}");
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.services.is_empty() || args.services.iter().any(|&n| !(1..=50_000).contains(&n)) {
        bail!("--services: each count must be 1..=50000");
    }
    if !(1..=20).contains(&args.reps) {
        bail!("--reps must be 1..=20");
    }
    if !(100..=60_000).contains(&args.duration_ms) {
        bail!("--duration-ms must be 100..=60000");
    }
    if !(1..=64).contains(&args.threads) {
        bail!("--threads must be 1..=64");
    }
    if !(1..=7200).contains(&args.program_timeout_s) {
        bail!("--program-timeout-s must be 1..=7200");
    }
    if !(1..=1000).contains(&args.nft_chunks) {
        bail!("--nft-chunks must be 1..=1000");
    }
    Ok(())
}

impl Bench<'_> {
    /// One measurement of `mode` at `w.n` services. Errors are the mode's failures; the caller
    /// separates them from an interrupt.
    fn slot(&mut self, mode: Mode, w: &Workload, rep: usize) -> Result<Outcome> {
        self.topo.rewire_node()?;
        let limit = Duration::from_secs(self.args.program_timeout_s);
        let mut notes = Vec::new();
        let mut agent = None;
        let (program_all, update_one) = match mode {
            Mode::Direct => (None, None),
            Mode::Iptables | Mode::IptablesLegacy => {
                let tool = if mode == Mode::Iptables {
                    "iptables-restore"
                } else {
                    "iptables-legacy-restore"
                };
                let all = w.file("iptables-all.rules", || {
                    model::iptables_restore(&w.services, true, &[])
                })?;
                let Some(t_all) = self.restore(tool, &all, limit, &w.log(mode, rep, "all"))? else {
                    self.flush_node(mode);
                    return Ok(Outcome::Timeout(format!(
                        "{tool} of all {} services took over {} s",
                        w.n,
                        limit.as_secs()
                    )));
                };
                // As kube-proxy 1.20 syncs: the whole ruleset again with the one change, and
                // the endpoint chain that went away declared and deleted.
                let update = w.file("iptables-update.rules", || {
                    let stale = model::sep_chain(&w.services[w.changed], w.removed);
                    model::iptables_restore(&w.updated, false, &[stale])
                })?;
                let t_update = self.restore(tool, &update, limit, &w.log(mode, rep, "update"))?;
                if t_update.is_none() {
                    notes.push(format!("update one timed out (> {} s)", limit.as_secs()));
                }
                (Some(t_all), t_update)
            }
            Mode::Nftables => {
                let mut t_all = None;
                if !self.nft_chunked {
                    let all = w.file("nft-all.nft", || {
                        model::nft_base(topo::node_ip()) + &model::nft_services(&w.services)
                    })?;
                    t_all = self.nft(&all, limit, &w.log(mode, rep, "all"))?;
                    if t_all.is_none() {
                        eprintln!(
                            "   nftables: one transaction of all {} services took over {} s; \
                             programming in {} transactions from here on",
                            w.n,
                            limit.as_secs(),
                            self.args.nft_chunks
                        );
                        notes.push(format!(
                            "one nft transaction of all {} services took over {} s",
                            w.n,
                            limit.as_secs()
                        ));
                        self.nft_chunked = true;
                        self.topo.rewire_node()?;
                    }
                }
                if t_all.is_none() {
                    let chunks = self.args.nft_chunks.min(w.n);
                    let per = w.n.div_ceil(chunks);
                    let started = Instant::now();
                    for (k, part) in w.services.chunks(per).enumerate() {
                        let file = w.file(&format!("nft-chunk{k}-of-{chunks}.nft"), || {
                            let base = if k == 0 {
                                model::nft_base(topo::node_ip())
                            } else {
                                String::new()
                            };
                            base + &model::nft_services(part)
                        })?;
                        let left = limit.saturating_sub(started.elapsed());
                        let log = w.log(mode, rep, &format!("chunk{k}"));
                        if self.nft(&file, left, &log)?.is_none() {
                            self.flush_node(mode);
                            return Ok(Outcome::Timeout(format!(
                                "nft -f of all {} services in {chunks} transactions took over {} s",
                                w.n,
                                limit.as_secs()
                            )));
                        }
                    }
                    t_all = Some(started.elapsed());
                    notes.push(format!("programmed in {chunks} nft transactions"));
                }
                let update = w.file("nft-update.nft", || {
                    model::nft_update(&w.updated[w.changed], w.removed)
                })?;
                let t_update = self.nft(&update, limit, &w.log(mode, rep, "update"))?;
                if t_update.is_none() {
                    notes.push(format!("update one timed out (> {} s)", limit.as_secs()));
                }
                (t_all, t_update)
            }
            Mode::Berth => {
                let berth = self.berth.clone().context("no berth binary")?;
                let dir = self.tmp.join(format!("agent-n{}-r{rep}", w.n));
                let a = berth::Agent::start(
                    &berth,
                    self.features,
                    &self.pin_root,
                    &self.cgroup.dir,
                    &dir,
                )?;
                let all = w.file("services.yaml", || model::kube_yaml(&w.services))?;
                let timeout = || {
                    Outcome::Timeout(format!(
                        "berth svc apply of all {} services took over {} s",
                        w.n,
                        limit.as_secs()
                    ))
                };
                let t_all = match a.apply(&all, limit, &w.log(mode, rep, "all")) {
                    Ok(Some(t)) => t,
                    Ok(None) => return Ok(timeout()),
                    // The agent's API caps a request's size: measure the data plane anyway,
                    // programmed through several applies, and say so.
                    Err(err) if berth::body_too_large(&err) => {
                        let bytes = std::fs::metadata(&all)?.len();
                        let per_service = (bytes / w.n as u64).max(1);
                        let per = usize::try_from(BERTH_APPLY_BYTES / per_service)
                            .unwrap_or(1)
                            .clamp(1, w.n);
                        let parts = w.n.div_ceil(per);
                        let msg = format!(
                            "one `berth svc apply` of all {} services ({:.1} MB) was refused \
                             ({}); applied as {parts} files of up to {per} services",
                            w.n,
                            bytes as f64 / 1e6,
                            err.to_string().lines().next().unwrap_or("").trim()
                        );
                        eprintln!("   berth: {msg}");
                        notes.push(msg);
                        let started = Instant::now();
                        for (k, part) in w.services.chunks(per).enumerate() {
                            let file = w
                                .file(&format!("services-part{k}-of-{parts}.yaml"), || {
                                    model::kube_yaml(part)
                                })?;
                            let left = limit.saturating_sub(started.elapsed());
                            let log = w.log(mode, rep, &format!("part{k}"));
                            if a.apply(&file, left, &log)?.is_none() {
                                return Ok(timeout());
                            }
                        }
                        started.elapsed()
                    }
                    Err(err) => return Err(err),
                };
                let update = w.file("services-update.yaml", || {
                    model::endpoint_slice_yaml(&w.updated[w.changed])
                })?;
                let t_update = a.apply(&update, limit, &w.log(mode, rep, "update"))?;
                if t_update.is_none() {
                    notes.push(format!("update one timed out (> {} s)", limit.as_secs()));
                }
                agent = Some(a);
                (Some(t_all), t_update)
            }
        };

        let targets = if mode == Mode::Direct {
            &self.direct_targets
        } else {
            &w.targets
        };
        let measured = load::measure(&load::LoadSpec {
            netns: &self.topo.client_path(),
            cgroup: &self.cgroup.dir,
            targets,
            threads: self.args.threads,
            duration_ms: self.args.duration_ms,
            seed: self.args.seed.wrapping_add(rep as u64),
            log: &w.log(mode, rep, "load"),
        });
        if let Some(mut a) = agent.take()
            && let Err(err) = a.stop()
        {
            notes.push(format!("stopping the agent: {err:#}"));
        }
        self.flush_node(mode);
        let load = measured?;
        if load.conns == 0 {
            bail!(
                "no connection succeeded ({} attempts; first error: {})",
                load.errors,
                load.first_error.as_deref().unwrap_or("none")
            );
        }
        if load.errors > 0 {
            notes.push(format!(
                "{} of {} connections failed (first: {})",
                load.errors,
                load.errors + load.conns,
                load.first_error.as_deref().unwrap_or("?")
            ));
        }
        // Every backend that is an endpoint after the update should have answered (with one
        // service, the update leaves 9 of the 10).
        let expected: BTreeSet<Ipv4Addr> = if mode == Mode::Direct {
            (0..topo::BACKENDS).map(topo::backend_ip).collect()
        } else {
            w.updated
                .iter()
                .flat_map(|s| s.endpoints.iter().copied())
                .collect()
        };
        let answering = load.backend_hits.iter().filter(|&&h| h > 0).count();
        if load.conns >= 1000 && answering < expected.len() {
            notes.push(format!(
                "only {answering} of {} backends answered",
                expected.len()
            ));
        }
        Ok(Outcome::Done(
            Sample {
                load,
                program_all_s: program_all.map(|d| d.as_secs_f64()),
                update_one_s: update_one.map(|d| d.as_secs_f64()),
            },
            notes,
        ))
    }

    /// `iptables-restore --noflush --counters` (kube-proxy's flags) in the node namespace.
    fn restore(
        &self,
        tool: &str,
        file: &Path,
        limit: Duration,
        log: &Path,
    ) -> Result<Option<Duration>> {
        let mut cmd = Command::new(tool);
        cmd.args(["--noflush", "--counters", "-w", "5"]);
        let done = child::run(
            &mut cmd,
            child::Spawn {
                netns: Some(&self.topo.node_path()),
                log,
                stdin: Some(File::open(file)?),
                death_signal: libc::SIGKILL,
            },
            limit,
        )?;
        if done.timed_out() {
            return Ok(None);
        }
        if !done.success() {
            bail!("{tool} failed: {}", done.stderr_tail());
        }
        Ok(Some(done.elapsed))
    }

    /// `nft -f FILE` (one transaction) in the node namespace.
    fn nft(&self, file: &Path, limit: Duration, log: &Path) -> Result<Option<Duration>> {
        let mut cmd = Command::new("nft");
        cmd.arg("-f").arg(file);
        let done = child::run(
            &mut cmd,
            child::Spawn {
                netns: Some(&self.topo.node_path()),
                log,
                stdin: None,
                death_signal: libc::SIGKILL,
            },
            limit,
        )?;
        if done.timed_out() {
            return Ok(None);
        }
        if !done.success() {
            bail!("nft -f {} failed: {}", file.display(), done.stderr_tail());
        }
        Ok(Some(done.elapsed))
    }

    /// Removes the mode's rules from the node namespace before it is deleted: a namespace is
    /// torn down asynchronously, and freeing 100,000 chains in a kernel worker would overlap
    /// the next measurement. Best effort; unmeasured.
    fn flush_node(&self, mode: Mode) {
        let mut commands: Vec<(&str, Vec<&str>)> = Vec::new();
        if matches!(mode, Mode::Iptables | Mode::Nftables) {
            commands.push(("nft", vec!["flush", "ruleset"]));
        }
        if mode == Mode::IptablesLegacy || (mode == Mode::Iptables && self.iptables_is_legacy) {
            for table in ["nat", "filter"] {
                for op in ["-F", "-X"] {
                    commands.push(("iptables-legacy", vec!["-w", "5", "-t", table, op]));
                }
            }
        }
        let node = self.topo.node_path();
        for (program, args) in commands {
            let mut cmd = Command::new(program);
            cmd.args(&args);
            let _ = child::run(
                &mut cmd,
                child::Spawn {
                    netns: Some(&node),
                    log: &self.tmp.join("flush"),
                    stdin: None,
                    death_signal: libc::SIGKILL,
                },
                Duration::from_secs(self.args.program_timeout_s.max(60)),
            );
        }
    }
}

/// Other work on the machine (a build on the same cores) shows up as noise in every mode; say
/// so rather than let it pass for a result.
pub(crate) fn warn_if_busy(when: &str) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let one_minute: f64 = load
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The bench itself keeps about 2 threads busy; more than cores + 1 means competition.
    if one_minute > cpus as f64 + 1.0 {
        eprintln!(
            "warning: load average {one_minute:.1} on {cpus} CPUs at the {when} of the run: \
             other work competes with the measurements; expect noise"
        );
    }
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

pub(crate) fn version_of(program: &str, args: &[&str]) -> serde_json::Value {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let text = if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            };
            String::from_utf8_lossy(text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .map_or(serde_json::Value::Null, Into::into)
}

fn environment(berth: Option<&Path>) -> serde_json::Value {
    serde_json::json!({
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "iptables": version_of("iptables", &["--version"]),
        "iptables_legacy": version_of("iptables-legacy", &["--version"]),
        "nft": version_of("nft", &["--version"]),
        "berth": berth.map(|p| p.display().to_string()),
        "berth_version": berth.map_or(serde_json::Value::Null, |p| version_of(&p.display().to_string(), &["--version"])),
    })
}
