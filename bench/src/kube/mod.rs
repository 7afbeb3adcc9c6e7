//! `berth-bench kube`: berth's Kubernetes node agent against the real kube-proxy 1.20.2
//! (iptables mode; with iptables-legacy, and with Debian's default iptables-nft at the smaller
//! counts), against the same real API server, each in its own node namespace, side by side in
//! one run, at 1,000 and 10,000 Services × 10 endpoints.
//!
//! Per service count, on a fresh control plane (etcd, kube-apiserver, kube-controller-manager:
//! the end-to-end tests' [`KubeCluster`]):
//!
//! 1. Every contender starts on the empty cluster, in its node namespace.
//! 2. Convergence: N Services and N EndpointSlices are created; a prober in each node walks
//!    every ClusterIP until each answers: time from the first create (and from the last) to
//!    every service reachable, and the CPU each contender spent until then.
//! 3. Cold start: every contender is stopped and its programming removed (berth's pins and
//!    cached state, kube-proxy's rules); each then starts alone (the others paused) with all
//!    objects in the API server: time from the start to every service reachable.
//! 4. Programming latency, side by side: one EndpointSlice at a time moves to other backends
//!    (a merge patch of its endpoints); each prober connects to that ClusterIP until the new
//!    backends answer: time from the write returning to the change being visible. Also each
//!    contender's own histogram over the same changes.
//! 5. berth alone (kube-proxy paused): more changes, for a p99 worth the name.
//! 6. Connection rate through a ClusterIP (one, and spread over all), every control plane
//!    paused so a periodic resync does not land in a measurement; the ceiling is connecting
//!    straight to a backend.
//! 7. CPU time and memory over the whole run, the contenders' own metrics and berth's log.
//!
//! Everything is named `bk-<pid>…` (the control plane's namespace `bt-kb<pid>x…`), bounded in
//! count and time, and removed at the end, also on failure or Ctrl-C; a run killed outright is
//! cleaned up by the next.

mod contenders;
mod node;
mod objects;
mod probe;
mod report;
mod stats;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use berth_tests::kube_cluster::{self, KubeCluster};
use serde_json::{Value, json};

pub use probe::{ProbeArgs, worker};

use crate::services::{Rng, child};
use contenders::{Kind, Running, Spec, Usage};
use node::Node;
use probe::{Prober, mono_ns};
use stats::Cpu;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Service counts to measure (each Service has one EndpointSlice of 10 endpoints).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    services: Vec<usize>,
    /// The berth binary [default: `berth` next to this binary, else target/{release,debug}].
    #[arg(long)]
    berth: Option<PathBuf>,
    /// EndpointSlice changes measured side by side, per service count.
    #[arg(long, default_value_t = 30)]
    changes: usize,
    /// Further changes measured on berth alone (kube-proxy paused), per service count.
    #[arg(long, default_value_t = 200)]
    burst_changes: usize,
    /// Repetitions of each connection-rate measurement (interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Length of each connection-rate measurement.
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Client threads of the connection-rate measurement.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How the objects are created.
    #[arg(long, value_enum, default_value = "kube-rs")]
    create_with: CreateWith,
    /// Services being created at once (kube-rs: each its Service, then its slice).
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Limit for creating all objects.
    #[arg(long, default_value_t = 600)]
    create_timeout_s: u64,
    /// Limit for every service to become reachable (after the last create, or a cold start).
    #[arg(long, default_value_t = 600)]
    converge_timeout_s: u64,
    /// Limit for one change to become visible, per contender.
    #[arg(long, default_value_t = 60)]
    change_timeout_s: u64,
    /// Time limit of the side-by-side changes per service count (fewer changes when reached).
    #[arg(long, default_value_t = 420)]
    latency_budget_s: u64,
    /// kube-proxy with iptables-nft only up to this many services (one full sync of 10,000
    /// took over 45 minutes here; see shared/BASELINES.md). 0: never.
    #[arg(long, default_value_t = 1000)]
    nft_max_services: usize,
    /// Copy every component's log (berth, kube-proxy, API server, ...) into this directory.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Print the results as JSON on stdout (progress and the table go to stderr).
    #[arg(long)]
    json: bool,
    /// Also write the table and the JSON to FILE and FILE.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the changed services' choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CreateWith {
    /// kube-rs, `--create-concurrency` services in flight.
    KubeRs,
    /// `kubectl create -f` of List files of 500 objects (one request per object, in order).
    Kubectl,
}

/// The node name every contender runs as (the slices' `nodeName`).
const NODE: &str = "node1";
/// The control plane's namespace is 10.251.<this>.0/30 with the host (the tests use 70-203).
const CLUSTER_SUBNET: u8 = 240;
/// Names: namespaces, pins, cgroup, temp dir start with `bk-<pid>`.
const PREFIX: &str = "bk-";
const TMP_SUFFIX: &str = "-kube-";
/// The control plane fixture's namespace is `bt-<tag>-…` and temp dir `berth-kube-<tag>-…`;
/// our tag is `kb<pid>x<n>`.
const CLUSTER_TAG: &str = "kb";

/// One connection-rate measurement (the `services-load` generator's JSON).
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub conn_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub conns: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The machine's 1-minute load average right after (other work shows up here).
    pub loadavg: f64,
}

impl Load {
    fn to_json(&self) -> Value {
        json!({"conn_per_s": self.conn_per_s, "connect_p50_us": self.p50_us,
               "connect_p99_us": self.p99_us, "conns": self.conns, "errors": self.errors,
               "first_error": self.first_error, "loadavg_after": self.loadavg})
    }
}

/// What one contender showed at one service count.
#[derive(Debug)]
pub struct ContenderResult {
    pub kind: Kind,
    /// Why it stopped being measured (the cells after it are empty).
    pub status: Option<String>,
    pub notes: Vec<String>,
    pub converge_first_s: Option<f64>,
    pub converge_last_s: Option<f64>,
    pub converge_cpu: Option<Cpu>,
    pub converged_rss_mb: Option<f64>,
    pub verified: Option<(u64, u64)>,
    pub cold_s: Option<f64>,
    pub cold_cpu: Option<Cpu>,
    pub cold_rss_mb: Option<f64>,
    /// Side by side: ms from the write returning to the change visible.
    pub change_ms: Vec<f64>,
    pub change_timeouts: usize,
    /// Changes already visible at the first probe after the write returned.
    pub change_immediate: usize,
    /// The contender's own histogram over the side-by-side changes (trigger time → written).
    pub own_hist: Vec<(f64, f64)>,
    /// berth: event received → maps written, over the same changes.
    pub own_event_hist: Vec<(f64, f64)>,
    pub burst_ms: Vec<f64>,
    pub burst_timeouts: usize,
    pub burst_hist: Vec<(f64, f64)>,
    pub burst_event_hist: Vec<(f64, f64)>,
    /// When each berth-alone change was seen, from the phase's start (to line slow ones up
    /// with other events).
    pub burst_at_s: Vec<f64>,
    /// kube-proxy: time to catch up with the burst after being resumed.
    pub catch_up_s: Option<f64>,
    pub conn_one: Vec<Load>,
    pub conn_all: Vec<Load>,
    pub cpu_total: Option<Cpu>,
    pub rss_end_mb: Option<f64>,
    pub hwm_mb: Option<f64>,
    pub tree_peak_mb: Option<f64>,
    pub extra: BTreeMap<String, Value>,
}

impl ContenderResult {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            status: None,
            notes: Vec::new(),
            converge_first_s: None,
            converge_last_s: None,
            converge_cpu: None,
            converged_rss_mb: None,
            verified: None,
            cold_s: None,
            cold_cpu: None,
            cold_rss_mb: None,
            change_ms: Vec::new(),
            change_timeouts: 0,
            change_immediate: 0,
            own_hist: Vec::new(),
            own_event_hist: Vec::new(),
            burst_ms: Vec::new(),
            burst_timeouts: 0,
            burst_hist: Vec::new(),
            burst_event_hist: Vec::new(),
            burst_at_s: Vec::new(),
            catch_up_s: None,
            conn_one: Vec::new(),
            conn_all: Vec::new(),
            cpu_total: None,
            rss_end_mb: None,
            hwm_mb: None,
            tree_peak_mb: None,
            extra: BTreeMap::new(),
        }
    }
}

/// One service count.
#[derive(Debug)]
pub struct SizeResult {
    pub n: usize,
    pub status: Option<String>,
    pub notes: Vec<String>,
    pub create_s: Option<f64>,
    /// Round trips of the EndpointSlice patches (ms).
    pub write_ms: Vec<f64>,
    pub direct: Vec<Load>,
    pub contenders: Vec<ContenderResult>,
    pub wall_s: f64,
}

/// One contender's node, prober and running instance. Dropped: the instance stops and its
/// programming is removed, then the prober, then the namespace.
struct Slot {
    spec: Spec,
    running: Option<Running>,
    prober: Prober,
    node: Node,
    res: ContenderResult,
    /// CPU of the instances already stopped.
    cpu_done: Cpu,
    hwm_mb: f64,
    /// The instance number of the next start.
    next_instance: usize,
}

impl Slot {
    fn active(&self) -> bool {
        self.res.status.is_none()
    }

    fn fail(&mut self, what: &str, err: &anyhow::Error) {
        let msg = format!("{what}: {err:#}");
        eprintln!("   {}: FAILED {msg}", self.spec.kind.name());
        self.res.status = Some(msg);
        if let Some(r) = self.running.take() {
            let _ = self.spec.stop_and_clean(r);
        }
    }

    fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(Running::pid)
    }

    fn usage(&self) -> Option<Usage> {
        self.pid().map(contenders::usage)
    }

    /// Stops the running instance (accounting its CPU and peak memory) and cleans up.
    fn stop(&mut self) -> Result<()> {
        if let Some(r) = self.running.take() {
            let u = contenders::usage(r.pid());
            self.cpu_done.own_s += u.cpu.own_s;
            self.cpu_done.children_s += u.cpu.children_s;
            self.hwm_mb = self.hwm_mb.max(u.hwm_mb);
            self.spec.stop_and_clean(r)?;
        }
        Ok(())
    }

    fn start(&mut self, sampler: &stats::TreeSampler) -> Result<()> {
        let r = self.spec.start(self.next_instance)?;
        self.next_instance += 1;
        sampler.watch(self.spec.kind.name(), r.pid());
        self.running = Some(r);
        Ok(())
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(r) = &self.running {
            r.signal(sig);
        }
    }

    /// (own trigger-time histogram, berth's event histogram).
    fn scrape_hists(&self) -> Hists {
        let m = self.spec.scrape().unwrap_or_default();
        (
            stats::histogram(&m, self.spec.kind.latency_metric()),
            stats::histogram(&m, contenders::BERTH_EVENT_METRIC),
        )
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = self.spec.stop_and_clean(r);
        } else if self.spec.kind == Kind::Berth {
            let _ = self.spec.clean();
        }
    }
}

type Hists = (Vec<(f64, f64)>, Vec<(f64, f64)>);

struct Ctx<'a> {
    args: &'a Args,
    tmp: PathBuf,
    prefix: String,
    berth: PathBuf,
    kube_proxy: PathBuf,
    cgroup: PathBuf,
}

pub fn run(args: &Args) -> Result<()> {
    validate(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "berth-bench kube needs root (network namespaces, netfilter, cgroups, bpffs, and the \
             control plane's certificates)"
        );
    }
    let run_started = Instant::now();
    child::install_interrupt_handler()?;
    let berth = crate::services::berth::resolve(args.berth.as_deref())?;
    let help = Command::new(&berth).args(["agent", "--help"]).output()?;
    if !String::from_utf8_lossy(&help.stdout).contains("--kubeconfig") {
        bail!(
            "{} has no `berth agent --kubeconfig`: rebuild it (cargo build --release -p berth)",
            berth.display()
        );
    }
    let bins = kube_cluster::bin_dir();
    let kube_proxy = bins.join("kube-proxy");
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "kube-proxy",
    ] {
        if !contenders::executable(&bins.join(b)) {
            bail!(
                "{} missing: build the Kubernetes {} binaries as shared/KUBERNETES.md says \
                 (xtask/k8s/build-kubernetes.sh), or set BERTH_K8S_BIN_DIR",
                bins.join(b).display(),
                kube_cluster::K8S_VERSION
            );
        }
    }
    for tool in ["etcd", "openssl", "ip", "iptables-legacy", "iptables-nft"] {
        if crate::services::which(tool).is_none() {
            bail!("{tool} is not installed");
        }
    }
    clean_leftovers(&berth);

    let prefix = format!("{PREFIX}{}", std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{prefix}{TMP_SUFFIX}"))
        .tempdir()?;
    let cgroup = crate::services::topo::BenchCgroup::create(&prefix)?;
    let environment = environment(&berth, &kube_proxy);
    crate::services::warn_if_busy("start");
    let ctx = Ctx {
        args,
        tmp: tmp.path().to_owned(),
        prefix,
        berth,
        kube_proxy,
        cgroup: cgroup.dir.clone(),
    };
    let mut counts = args.services.clone();
    counts.dedup();
    let mut results = Vec::new();
    for &n in &counts {
        child::check_interrupted()?;
        let started = Instant::now();
        eprintln!(
            "== {n} Services × {} endpoints ({:.0} s into the run)",
            node::ENDPOINTS,
            run_started.elapsed().as_secs_f64()
        );
        let mut res = SizeResult {
            n,
            status: None,
            notes: Vec::new(),
            create_s: None,
            write_ms: Vec::new(),
            direct: Vec::new(),
            contenders: Vec::new(),
            wall_s: 0.0,
        };
        if let Err(err) = run_size(&ctx, n, &mut res) {
            child::check_interrupted()?;
            eprintln!("   FAILED at {n} services: {err:#}");
            res.status = Some(format!("{err:#}"));
        }
        res.wall_s = started.elapsed().as_secs_f64();
        eprintln!("   ({n} services took {:.0} s)", res.wall_s);
        results.push(res);
    }
    drop(cgroup);
    drop(tmp);
    crate::services::warn_if_busy("end");

    let wall = run_started.elapsed();
    let text = report::render(args, &results, &environment, wall);
    let json = report::json(args, &results, &environment, wall);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        let json_path = out.with_extension("json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
        eprintln!(
            "report written to {} and {}",
            out.display(),
            json_path.display()
        );
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.services.is_empty() || args.services.iter().any(|&n| !(1..=50_000).contains(&n)) {
        bail!("--services: each count must be 1..=50000 (ClusterIPs come from 10.96.1.1 on)");
    }
    if args.changes > 1000 || args.burst_changes > 5000 {
        bail!("--changes at most 1000, --burst-changes at most 5000");
    }
    if !(1..=20).contains(&args.reps) || !(100..=60_000).contains(&args.duration_ms) {
        bail!("--reps must be 1..=20 and --duration-ms 100..=60000");
    }
    if !(1..=64).contains(&args.threads) || !(1..=256).contains(&args.create_concurrency) {
        bail!("--threads must be 1..=64 and --create-concurrency 1..=256");
    }
    for (name, v) in [
        ("--create-timeout-s", args.create_timeout_s),
        ("--converge-timeout-s", args.converge_timeout_s),
        ("--change-timeout-s", args.change_timeout_s),
        ("--latency-budget-s", args.latency_budget_s),
    ] {
        if !(1..=7200).contains(&v) {
            bail!("{name} must be 1..=7200");
        }
    }
    Ok(())
}

fn write_targets(path: &Path, addrs: impl IntoIterator<Item = String>) -> Result<()> {
    let mut text = String::new();
    for a in addrs {
        let _ = writeln!(text, "{a}");
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn run_size(ctx: &Ctx<'_>, n: usize, res: &mut SizeResult) -> Result<()> {
    let args = ctx.args;
    let mut kinds = vec![Kind::Berth, Kind::KubeProxyLegacy];
    if n <= args.nft_max_services {
        kinds.push(Kind::KubeProxyNft);
    } else {
        res.notes.push(format!(
            "kube-proxy/nft not run above {} services: one full iptables-nft sync of 10,000 \
             services took over 45 minutes on this machine kind (shared/BASELINES.md)",
            args.nft_max_services
        ));
    }
    let dir = ctx.tmp.join(format!("n{n}"));
    std::fs::create_dir_all(&dir)?;

    // The control plane (dropped last: declared first).
    let t = Instant::now();
    let cluster = KubeCluster::start(
        &format!("{CLUSTER_TAG}{}x{n}", std::process::id()),
        CLUSTER_SUBNET,
        NODE,
    )
    .context("starting the Kubernetes control plane")?;
    eprintln!(
        "   control plane up in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        cluster.server
    );
    let api_ip = cluster.net().ns_addr.clone();
    let cluster_ns = cluster.net().ns.clone();
    let sampler = stats::TreeSampler::start();
    let mut slots: Vec<Slot> = Vec::new();
    for (k, &kind) in kinds.iter().enumerate() {
        let netns_name = format!("{}-{}", ctx.prefix, kind.tag());
        let node = Node::create(&netns_name, k as u8 + 1, &cluster_ns, &api_ip)
            .with_context(|| format!("creating {}'s node", kind.name()))?;
        let cgroup = (kind == Kind::Berth).then_some(ctx.cgroup.as_path());
        let prober = Prober::start(
            &node.path(),
            cgroup,
            &dir.join(format!("probe-{}", kind.tag())),
        )?;
        let spec = Spec {
            kind,
            netns: node.path(),
            kubeconfig: cluster.kubeconfig.clone(),
            node_name: NODE.to_owned(),
            dir: dir.join(kind.tag()),
            berth: Some(ctx.berth.clone()),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{}-berth", ctx.prefix)),
            cgroup: ctx.cgroup.clone(),
            kube_proxy: ctx.kube_proxy.clone(),
            iptables_dir: dir.join(format!("{}-bin", kind.tag())),
        };
        spec.prepare()?;
        slots.push(Slot {
            spec,
            running: None,
            prober,
            node,
            res: ContenderResult::new(kind),
            cpu_done: Cpu::default(),
            hwm_mb: 0.0,
            next_instance: 0,
        });
    }
    let outcome = measure(ctx, n, &dir, &cluster, &sampler, &mut slots, res);

    // Final accounting, then stop everything (also after a failure).
    for slot in &mut slots {
        if let Some(u) = slot.usage() {
            slot.res.rss_end_mb = Some(u.rss_mb);
            if slot.active() {
                slot.res.cpu_total = Some(Cpu {
                    own_s: slot.cpu_done.own_s + u.cpu.own_s,
                    children_s: slot.cpu_done.children_s + u.cpu.children_s,
                });
            }
        }
        if let Err(err) = slot.stop() {
            slot.res.notes.push(format!("stopping: {err:#}"));
        }
        if slot.hwm_mb > 0.0 {
            slot.res.hwm_mb = Some(slot.hwm_mb);
        }
        slot.res.tree_peak_mb = sampler.peak_mb(slot.spec.kind.name());
        if slot.spec.kind == Kind::Berth {
            summarize_berth_log(slot);
        } else {
            summarize_kube_proxy_log(slot);
        }
    }
    if let Some(keep) = &args.keep_logs {
        if let Err(err) = keep_logs(keep, n, &dir, &cluster) {
            eprintln!("warning: keeping the logs: {err:#}");
        } else {
            eprintln!("   logs copied to {}", keep.join(format!("n{n}")).display());
        }
    }
    res.contenders = slots
        .drain(..)
        .map(|mut s| std::mem::replace(&mut s.res, ContenderResult::new(s.spec.kind)))
        .collect();
    drop(sampler);
    drop(cluster);
    outcome
}

/// Phases 1-6 (see the module doc); partial results stay in the slots and `res`.
fn measure(
    ctx: &Ctx<'_>,
    n: usize,
    dir: &Path,
    cluster: &KubeCluster,
    sampler: &stats::TreeSampler,
    slots: &mut [Slot],
    res: &mut SizeResult,
) -> Result<()> {
    let args = ctx.args;
    let ready_limit = Duration::from_secs(120);

    // 1. Start on the empty cluster.
    for slot in slots.iter_mut() {
        if let Err(err) = slot.start(sampler).and_then(|()| {
            let spec = &slot.spec;
            let r = slot.running.as_mut().context("not running")?;
            spec.wait_ready(r, ready_limit)
        }) {
            slot.fail("starting on the empty cluster", &err);
        }
    }
    if !slots[0].active() {
        bail!(
            "berth did not start: {}",
            slots[0].res.status.clone().unwrap_or_default()
        );
    }
    eprintln!("   contenders up: {}", names(slots));

    // 2. Convergence.
    let vips = dir.join("vips.txt");
    write_targets(
        &vips,
        (0..n).map(|i| format!("{}:{}", objects::cluster_ip(i), node::SERVICE_PORT)),
    )?;
    let vip0 = dir.join("vip0.txt");
    write_targets(
        &vip0,
        [format!("{}:{}", objects::cluster_ip(0), node::SERVICE_PORT)],
    )?;
    let objects = objects::Objects::new(&cluster.kubeconfig, NODE)?;
    let mut before = BTreeMap::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        if slot.active() {
            before.insert(i, slot.usage().unwrap_or_default());
            // The prober's own limit is a backstop; the bench aborts it at its deadline.
            slot.prober
                .send(&format!("converge {} 7200000", vips.display()))?;
        }
    }
    let create_limit = Duration::from_secs(args.create_timeout_s);
    eprintln!(
        "   creating {n} Services and {n} EndpointSlices ({})",
        match args.create_with {
            CreateWith::KubeRs => format!("kube-rs, {} in flight", args.create_concurrency),
            CreateWith::Kubectl => "kubectl create -f".to_owned(),
        }
    );
    let lists = match args.create_with {
        CreateWith::Kubectl => objects::write_lists(dir, n, NODE, 500)?,
        CreateWith::KubeRs => Vec::new(),
    };
    let t_first = mono_ns();
    let created = match args.create_with {
        CreateWith::KubeRs => objects.create_all(n, args.create_concurrency, create_limit),
        CreateWith::Kubectl => objects::kubectl_create(
            &kube_cluster::bin_dir().join("kubectl"),
            &cluster.kubeconfig,
            &lists,
            create_limit,
            &dir.join("kubectl-create"),
        ),
    };
    let t_last = mono_ns();
    if let Err(err) = created {
        for slot in slots.iter_mut() {
            let _ = slot.prober.send("abort");
        }
        return Err(err.context("creating the objects"));
    }
    let create_s = (t_last - t_first) as f64 / 1e9;
    res.create_s = Some(create_s);
    eprintln!(
        "   created in {create_s:.2} s ({:.0} objects/s)",
        2.0 * n as f64 / create_s
    );
    let deadline = Instant::now() + Duration::from_secs(args.converge_timeout_s);
    let mut pending: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].active()).collect();
    let mut aborted = false;
    while !pending.is_empty() {
        child::check_interrupted()?;
        let mut still = Vec::new();
        for &i in &pending {
            let slot = &mut slots[i];
            match slot.prober.try_reply() {
                Ok(Some(v)) => {
                    let u = slot.usage().unwrap_or_default();
                    if v["ok"] == true {
                        let t = v["t_ns"].as_u64().unwrap_or(t_last);
                        slot.res.converge_first_s = Some((t as f64 - t_first as f64) / 1e9);
                        slot.res.converge_last_s = Some((t as f64 - t_last as f64) / 1e9);
                        slot.res.converge_cpu = before.get(&i).map(|b| u.cpu.since(&b.cpu));
                        slot.res.converged_rss_mb = Some(u.rss_mb);
                        eprintln!(
                            "   {:<18} all {n} reachable {:.2} s after the first create, {:.2} s after the last (CPU {:.2} s, RSS {:.0} MB)",
                            slot.spec.kind.name(),
                            slot.res.converge_first_s.unwrap_or_default(),
                            slot.res.converge_last_s.unwrap_or_default(),
                            slot.res.converge_cpu.map_or(0.0, |c| c.total()),
                            u.rss_mb
                        );
                    } else {
                        let err = anyhow::anyhow!(
                            "not every service reachable within {} s of the last create: {} of {} (blocked at {})",
                            args.converge_timeout_s,
                            v["reached"],
                            v["total"],
                            v["blocked_at"]
                        );
                        slot.fail("converging", &err);
                    }
                }
                Ok(None) => {
                    if let Some(r) = slot.running.as_mut()
                        && let Err(err) = r.check_alive()
                    {
                        let _ = slot.prober.send("abort");
                        let _ = slot.prober.reply(Duration::from_secs(10));
                        slot.fail("converging", &err);
                        continue;
                    }
                    still.push(i);
                }
                Err(err) => slot.fail("converging (prober)", &err),
            }
        }
        pending = still;
        if !pending.is_empty() && Instant::now() >= deadline && !aborted {
            aborted = true;
            for &i in &pending {
                let _ = slots[i].prober.send("abort");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for slot in slots.iter_mut().filter(|s| s.active()) {
        slot.prober.send(&format!("verify {}", vips.display()))?;
    }
    for slot in slots.iter_mut().filter(|s| s.active()) {
        match slot.prober.reply(Duration::from_secs(300)) {
            Ok(v) => {
                let (ok, total) = (
                    v["answered"].as_u64().unwrap_or(0),
                    v["total"].as_u64().unwrap_or(0),
                );
                slot.res.verified = Some((ok, total));
                if ok < total {
                    slot.res.notes.push(format!(
                        "after converging, {ok} of {total} services answered a second pass (first failure: {})",
                        v["first_failure"]
                    ));
                }
            }
            Err(err) => slot.fail("verifying", &err),
        }
        if let Ok(m) = slot.spec.scrape() {
            let h = stats::histogram(&m, slot.spec.kind.latency_metric());
            slot.res
                .extra
                .insert("own_latency_during_creation".into(), hist_json(&h));
            if slot.spec.kind.is_kube_proxy() {
                let s = stats::histogram(&m, "kubeproxy_sync_proxy_rules_duration_seconds");
                slot.res.extra.insert(
                    "sync_proxy_rules_duration_until_converged".into(),
                    hist_json(&s),
                );
            }
        }
    }

    // 3. Cold start, each contender alone.
    eprintln!("   cold starts (each contender alone, with all objects in the API server)");
    for slot in slots.iter_mut().filter(|s| s.active()) {
        if let Err(err) = slot.stop() {
            slot.fail("stopping for the cold start", &err);
        }
    }
    for slot in slots.iter_mut() {
        if !slot.active() {
            continue;
        }
        let result = (|| -> Result<()> {
            slot.prober.send(&format!("verify {}", vip0.display()))?;
            let v = slot.prober.reply(Duration::from_secs(30))?;
            if v["answered"].as_u64() != Some(0) {
                slot.res.notes.push(
                    "a ClusterIP still answered after the stop and clean-up: not a cold start"
                        .into(),
                );
            }
            let t0 = mono_ns();
            slot.start(sampler)?;
            slot.prober.send(&format!(
                "converge {} {}",
                vips.display(),
                args.converge_timeout_s * 1000
            ))?;
            let v = loop {
                match slot.prober.try_reply()? {
                    Some(v) => break v,
                    None => {
                        child::check_interrupted()?;
                        if let Some(r) = slot.running.as_mut()
                            && let Err(err) = r.check_alive()
                        {
                            let _ = slot.prober.send("abort");
                            let _ = slot.prober.reply(Duration::from_secs(10));
                            return Err(err);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            };
            let u = slot.usage().unwrap_or_default();
            if v["ok"] != true {
                bail!(
                    "not every service reachable within {} s of the start: {} of {}",
                    args.converge_timeout_s,
                    v["reached"],
                    v["total"]
                );
            }
            let t = v["t_ns"].as_u64().unwrap_or(t0);
            slot.res.cold_s = Some((t - t0) as f64 / 1e9);
            slot.res.cold_cpu = Some(u.cpu);
            slot.res.cold_rss_mb = Some(u.rss_mb);
            eprintln!(
                "   {:<18} cold start: all {n} reachable {:.2} s after the start (CPU {:.2} s, RSS {:.0} MB)",
                slot.spec.kind.name(),
                (t - t0) as f64 / 1e9,
                u.cpu.total(),
                u.rss_mb
            );
            // Paused while the next one starts alone.
            slot.signal(libc::SIGSTOP);
            Ok(())
        })();
        if let Err(err) = result {
            slot.fail("cold start", &err);
        }
    }
    for slot in slots.iter() {
        slot.signal(libc::SIGCONT);
    }
    std::thread::sleep(Duration::from_secs(1));

    // 4. Programming latency, side by side.
    let mut rng = Rng::new(args.seed.wrapping_add(n as u64));
    let mut sets = vec![0usize; n];
    let budget = Duration::from_secs(args.latency_budget_s);
    let change_limit = Duration::from_secs(args.change_timeout_s);
    let hist_before: Vec<Hists> = slots.iter().map(Slot::scrape_hists).collect();
    eprintln!("   {} EndpointSlice changes, side by side", args.changes);
    let started = Instant::now();
    let mut done = 0;
    // A kube-proxy whose waits add up to half the budget is measured no further (and paused, so
    // its syncs stop competing): the others still get their changes.
    let mut waited = vec![0.0f64; slots.len()];
    let mut hist_after: Vec<Option<Hists>> = vec![None; slots.len()];
    for j in 0..args.changes {
        child::check_interrupted()?;
        if started.elapsed() > budget {
            res.notes.push(format!(
                "side-by-side changes stopped after {j} of {} (the {} s budget)",
                args.changes, args.latency_budget_s
            ));
            break;
        }
        let i = rng.below(n);
        let set = 1 - sets[i];
        let t_start = mono_ns();
        objects.set_backends(i, set)?;
        let t_w = mono_ns();
        res.write_ms.push((t_w - t_start) as f64 / 1e6);
        sets[i] = set;
        let target = format!("{}:{}", objects::cluster_ip(i), node::SERVICE_PORT);
        let (lo, hi) = (
            set * node::ENDPOINTS,
            set * node::ENDPOINTS + node::ENDPOINTS - 1,
        );
        let waiting: Vec<usize> = (0..slots.len())
            .filter(|&k| slots[k].active() && hist_after[k].is_none())
            .collect();
        for &k in &waiting {
            slots[k].prober.send(&format!(
                "wait {target} {lo} {hi} {}",
                change_limit.as_millis()
            ))?;
        }
        let mut line = format!(
            "   change {:>3}: svc{i} →{}",
            j + 1,
            if set == 1 { "B" } else { "A" }
        );
        for &k in &waiting {
            let slot = &mut slots[k];
            match slot.prober.reply(change_limit + Duration::from_secs(10)) {
                Ok(v) if v["ok"] == true => {
                    let t = v["t_ns"].as_u64().unwrap_or(t_w);
                    let ms = t.saturating_sub(t_w) as f64 / 1e6;
                    if v["attempts"].as_u64() == Some(1) {
                        slot.res.change_immediate += 1;
                    }
                    slot.res.change_ms.push(ms);
                    waited[k] += ms / 1000.0;
                    let _ = write!(line, "  {} {}", slot.spec.kind.name(), fmt_ms(ms));
                }
                Ok(_) => {
                    slot.res.change_timeouts += 1;
                    waited[k] += args.change_timeout_s as f64;
                    let _ = write!(
                        line,
                        "  {} >{} s",
                        slot.spec.kind.name(),
                        args.change_timeout_s
                    );
                    if slot.res.change_timeouts >= 3 {
                        slot.fail(
                            "programming latency",
                            &anyhow::anyhow!(
                                "3 changes not visible within {} s",
                                args.change_timeout_s
                            ),
                        );
                    }
                }
                Err(err) => slot.fail("programming latency (prober)", &err),
            }
        }
        eprintln!("{line}");
        done = j + 1;
        for &k in &waiting {
            let slot = &mut slots[k];
            if slot.spec.kind.is_kube_proxy()
                && slot.active()
                && waited[k] > budget.as_secs_f64() / 2.0
                && j + 1 < args.changes
            {
                hist_after[k] = Some(slot.scrape_hists());
                slot.signal(libc::SIGSTOP);
                let msg = format!(
                    "measured on the first {} side-by-side changes: its waits reached half the {} s budget (paused for the rest)",
                    slot.res.change_ms.len() + slot.res.change_timeouts,
                    args.latency_budget_s
                );
                eprintln!("   {}: {msg}", slot.spec.kind.name());
                slot.res.notes.push(msg);
            }
        }
        std::thread::sleep(Duration::from_millis(1000 + rng.below(500) as u64));
    }
    for (k, slot) in slots.iter_mut().enumerate() {
        if slot.active() {
            let after = match hist_after[k].take() {
                Some(h) => {
                    slot.signal(libc::SIGCONT);
                    h
                }
                None => slot.scrape_hists(),
            };
            slot.res.own_hist = stats::histogram_delta(&hist_before[k].0, &after.0);
            slot.res.own_event_hist = stats::histogram_delta(&hist_before[k].1, &after.1);
        }
    }
    res.notes.push(format!("{done} side-by-side changes"));

    // 5. berth alone.
    if args.burst_changes > 0 && slots[0].active() {
        eprintln!(
            "   {} more changes on berth alone (kube-proxy paused)",
            args.burst_changes
        );
        for slot in slots.iter().skip(1) {
            slot.signal(libc::SIGSTOP);
        }
        let before = slots[0].scrape_hists();
        let started = Instant::now();
        let mut last = None;
        let burst_limit = Duration::from_secs(10);
        for j in 0..args.burst_changes {
            child::check_interrupted()?;
            if started.elapsed() > Duration::from_secs(180) {
                res.notes.push(format!(
                    "berth-alone changes stopped after {j} of {} (180 s)",
                    args.burst_changes
                ));
                break;
            }
            let i = rng.below(n);
            let set = 1 - sets[i];
            let t_start = mono_ns();
            objects.set_backends(i, set)?;
            let t_w = mono_ns();
            res.write_ms.push((t_w - t_start) as f64 / 1e6);
            sets[i] = set;
            last = Some((i, set));
            let target = format!("{}:{}", objects::cluster_ip(i), node::SERVICE_PORT);
            let (lo, hi) = (
                set * node::ENDPOINTS,
                set * node::ENDPOINTS + node::ENDPOINTS - 1,
            );
            let slot = &mut slots[0];
            slot.prober.send(&format!(
                "wait {target} {lo} {hi} {}",
                burst_limit.as_millis()
            ))?;
            let v = slot.prober.reply(burst_limit + Duration::from_secs(10))?;
            if v["ok"] == true {
                let t = v["t_ns"].as_u64().unwrap_or(t_w);
                slot.res.burst_ms.push(t.saturating_sub(t_w) as f64 / 1e6);
                slot.res.burst_at_s.push(started.elapsed().as_secs_f64());
            } else {
                slot.res.burst_timeouts += 1;
            }
            std::thread::sleep(Duration::from_millis(20 + rng.below(30) as u64));
        }
        let after = slots[0].scrape_hists();
        slots[0].res.burst_hist = stats::histogram_delta(&before.0, &after.0);
        slots[0].res.burst_event_hist = stats::histogram_delta(&before.1, &after.1);
        {
            let b = &mut slots[0].res;
            let mut v = b.burst_ms.clone();
            v.sort_by(f64::total_cmp);
            eprintln!(
                "   berth alone: {} changes, p50 {} p99 {} max {} ({} not visible within 10 s)",
                v.len(),
                fmt_ms(crate::percentile(&v, 50.0)),
                fmt_ms(crate::percentile(&v, 99.0)),
                fmt_ms(v.last().copied().unwrap_or(f64::NAN)),
                b.burst_timeouts
            );
        }
        // kube-proxy resumes and catches up before anything else is measured.
        for slot in slots.iter().skip(1) {
            slot.signal(libc::SIGCONT);
        }
        if let Some((i, set)) = last {
            let target = format!("{}:{}", objects::cluster_ip(i), node::SERVICE_PORT);
            let (lo, hi) = (
                set * node::ENDPOINTS,
                set * node::ENDPOINTS + node::ENDPOINTS - 1,
            );
            let t0 = mono_ns();
            let limit = Duration::from_secs(args.converge_timeout_s);
            for slot in slots.iter_mut().skip(1).filter(|s| s.active()) {
                slot.prober
                    .send(&format!("wait {target} {lo} {hi} {}", limit.as_millis()))?;
            }
            for slot in slots.iter_mut().skip(1).filter(|s| s.active()) {
                match slot.prober.reply(limit + Duration::from_secs(10)) {
                    Ok(v) if v["ok"] == true => {
                        let t = v["t_ns"].as_u64().unwrap_or(t0);
                        slot.res.catch_up_s = Some(t.saturating_sub(t0) as f64 / 1e9);
                    }
                    Ok(_) => slot.fail(
                        "catching up after the berth-alone changes",
                        &anyhow::anyhow!("not caught up within {limit:?}"),
                    ),
                    Err(err) => slot.fail("catching up (prober)", &err),
                }
            }
        }
    }

    // 6. Connection rate, control planes paused.
    eprintln!(
        "   connection rate: {} reps × {} ms, {} threads, control planes paused",
        args.reps, args.duration_ms, args.threads
    );
    let one = rng.below(n);
    let one_vip = dir.join("one-vip.txt");
    write_targets(
        &one_vip,
        [format!(
            "{}:{}",
            objects::cluster_ip(one),
            node::SERVICE_PORT
        )],
    )?;
    let direct = dir.join("direct.txt");
    write_targets(
        &direct,
        node::direct_targets().iter().map(ToString::to_string),
    )?;
    for slot in slots.iter() {
        slot.signal(libc::SIGSTOP);
    }
    // (slot index or None for direct, all VIPs?)
    let mut plan: Vec<(Option<usize>, bool)> = vec![(None, false)];
    for (k, slot) in slots.iter().enumerate() {
        if slot.active() {
            plan.push((Some(k), false));
            plan.push((Some(k), true));
        }
    }
    let measured = (|| -> Result<()> {
        for rep in 0..args.reps {
            for j in 0..plan.len() {
                let (slot, all) = plan[(rep + j) % plan.len()];
                let (netns, cgroup, targets) = match slot {
                    None => (slots[0].node.path(), None, &direct),
                    Some(k) => (
                        slots[k].node.path(),
                        (slots[k].spec.kind == Kind::Berth).then_some(ctx.cgroup.as_path()),
                        if all { &vips } else { &one_vip },
                    ),
                };
                let log = dir.join(format!(
                    "load-r{rep}-{}-{}",
                    slot.map_or("direct", |k| slots[k].spec.kind.tag()),
                    if all { "all" } else { "one" }
                ));
                let load = load(
                    &netns,
                    cgroup,
                    targets,
                    args,
                    args.seed.wrapping_add(rep as u64),
                    &log,
                )?;
                let label = slot.map_or("direct".to_owned(), |k| {
                    format!(
                        "{} {}",
                        slots[k].spec.kind.name(),
                        if all { "any VIP" } else { "one VIP" }
                    )
                });
                eprintln!(
                    "   rep {}/{} {label:<28} {:>8.0} conn/s  p50 {:>6.1} us  p99 {:>7.1} us  load {:.1}{}",
                    rep + 1,
                    args.reps,
                    load.conn_per_s,
                    load.p50_us,
                    load.p99_us,
                    load.loadavg,
                    if load.errors > 0 {
                        format!(
                            "  {} errors ({})",
                            load.errors,
                            load.first_error.clone().unwrap_or_default()
                        )
                    } else {
                        String::new()
                    }
                );
                match slot {
                    None => res.direct.push(load),
                    Some(k) if all => slots[k].res.conn_all.push(load),
                    Some(k) => slots[k].res.conn_one.push(load),
                }
            }
        }
        Ok(())
    })();
    for slot in slots.iter() {
        slot.signal(libc::SIGCONT);
    }
    measured?;

    // 7. What the contenders say about themselves.
    for slot in slots.iter_mut().filter(|s| s.active()) {
        if let Ok(m) = slot.spec.scrape() {
            let _ = std::fs::write(slot.spec.dir.join("metrics-final.txt"), &m);
            let h = stats::histogram(&m, slot.spec.kind.latency_metric());
            slot.res
                .extra
                .insert("own_latency_instance_total".into(), hist_json(&h));
            if slot.spec.kind == Kind::Berth {
                let h = stats::histogram(&m, contenders::BERTH_EVENT_METRIC);
                slot.res
                    .extra
                    .insert("event_to_maps_latency_instance_total".into(), hist_json(&h));
            }
            if slot.spec.kind.is_kube_proxy() {
                let s = stats::histogram(&m, "kubeproxy_sync_proxy_rules_duration_seconds");
                slot.res.extra.insert(
                    "sync_proxy_rules_duration_instance_total".into(),
                    hist_json(&s),
                );
            } else {
                for series in [
                    "berth_lb_services",
                    "berth_lb_frontends",
                    "berth_lb_backends",
                    r#"berth_kube_objects{kind="Service"}"#,
                    r#"berth_kube_objects{kind="EndpointSlice"}"#,
                    r#"berth_kube_watch_restarts_total{kind="Service"}"#,
                    r#"berth_kube_watch_restarts_total{kind="EndpointSlice"}"#,
                    "berth_lb_reconcile_duration_seconds_count",
                    "berth_lb_reconcile_duration_seconds_sum",
                    r#"berth_kube_api_errors_total{kind="Service"}"#,
                    r#"berth_kube_api_errors_total{kind="EndpointSlice"}"#,
                ] {
                    if let Some(v) = stats::sample(&m, series) {
                        slot.res.extra.insert(series.to_owned(), json!(v));
                    }
                }
            }
        }
        if slot.spec.kind == Kind::Berth
            && let Ok(out) = Command::new(&ctx.berth)
                .arg("status")
                .arg("--api-socket")
                .arg(slot.spec.api_socket())
                .arg("--pin-root")
                .arg(&slot.spec.pin_root)
                .args(["--format", "json"])
                .output()
            && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
        {
            slot.res
                .extra
                .insert("status_kubernetes".into(), v["kubernetes"].clone());
        }
    }
    Ok(())
}

fn names(slots: &[Slot]) -> String {
    slots
        .iter()
        .filter(|s| s.active())
        .map(|s| s.spec.kind.name())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn fmt_ms(ms: f64) -> String {
    if !ms.is_finite() {
        "-".to_owned()
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn hist_json(h: &[(f64, f64)]) -> Value {
    json!({
        "count": h.last().map(|x| x.1),
        "p50_s": stats::bucket_quantile(h, 0.5),
        "p99_s": stats::bucket_quantile(h, 0.99),
        "buckets": h.iter().map(|(le, c)| json!([if le.is_finite() { json!(le) } else { json!("+Inf") }, c])).collect::<Vec<_>>(),
    })
}

/// One connection-rate measurement through `berth-bench services-load`.
fn load(
    netns: &Path,
    cgroup: Option<&Path>,
    targets: &Path,
    args: &Args,
    seed: u64,
    log: &Path,
) -> Result<Load> {
    let exe = std::env::current_exe()?;
    let warmup_ms = (args.duration_ms / 5).clamp(100, 500);
    let mut cmd = Command::new(exe);
    cmd.arg("services-load").arg("--netns").arg(netns);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    cmd.arg("--targets")
        .arg(targets)
        .args(["--threads", &args.threads.to_string()])
        .args(["--duration-ms", &args.duration_ms.to_string()])
        .args(["--warmup-ms", &warmup_ms.to_string()])
        .args(["--seed", &seed.to_string()]);
    let limit = Duration::from_millis(warmup_ms + args.duration_ms + 15_000);
    let done = child::run(
        &mut cmd,
        child::Spawn {
            netns: None,
            log,
            stdin: None,
            death_signal: libc::SIGKILL,
        },
        limit,
    )?;
    if !done.success() {
        bail!("the load generator failed: {}", done.stderr_tail());
    }
    let v: Value = serde_json::from_str(done.stdout().trim())
        .with_context(|| format!("the load generator's output {:?}", done.stdout()))?;
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let load = Load {
        conn_per_s: f("conn_per_s"),
        p50_us: f("connect_p50_us"),
        p99_us: f("connect_p99_us"),
        conns: v["conns"].as_u64().unwrap_or(0),
        errors: v["errors"].as_u64().unwrap_or(0),
        first_error: v["first_error"].as_str().map(str::to_owned),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN),
    };
    if load.conns == 0 {
        bail!(
            "no connection succeeded ({} failed; first: {})",
            load.errors,
            load.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(load)
}

/// Counts berth's warnings and errors and keeps the first few for the report.
fn summarize_berth_log(slot: &mut Slot) {
    let mut warn = 0;
    let mut error = 0;
    let mut examples = Vec::new();
    for i in 0..slot.next_instance {
        for ext in ["out", "err"] {
            let path = slot
                .spec
                .dir
                .join(format!("{}-{i}.{ext}", slot.spec.kind.tag()));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                let is_warn = line.contains(" WARN ");
                let is_error = line.contains(" ERROR ");
                warn += usize::from(is_warn);
                error += usize::from(is_error);
                if (is_warn || is_error) && examples.len() < 5 {
                    examples.push(line.chars().take(300).collect::<String>());
                }
            }
        }
    }
    slot.res.extra.insert("log_warnings".into(), json!(warn));
    slot.res.extra.insert("log_errors".into(), json!(error));
    slot.res
        .extra
        .insert("log_examples".into(), json!(examples));
    if warn + error > 0 {
        slot.res.notes.push(format!(
            "agent log: {warn} warnings, {error} errors (first: {})",
            examples.first().map_or("", String::as_str)
        ));
    }
}

/// kube-proxy's error lines (klog `E…`).
fn summarize_kube_proxy_log(slot: &mut Slot) {
    let mut errors = 0;
    let mut examples = Vec::new();
    for i in 0..slot.next_instance {
        let path = slot
            .spec
            .dir
            .join(format!("{}-{i}.err", slot.spec.kind.tag()));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines().filter(|l| l.starts_with('E')) {
            errors += 1;
            if examples.len() < 5 {
                examples.push(line.chars().take(300).collect::<String>());
            }
        }
    }
    slot.res.extra.insert("log_errors".into(), json!(errors));
    slot.res
        .extra
        .insert("log_examples".into(), json!(examples));
}

fn keep_logs(keep: &Path, n: usize, dir: &Path, cluster: &KubeCluster) -> Result<()> {
    let out = keep.join(format!("n{n}"));
    std::fs::create_dir_all(&out)?;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                let name = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let keep = [".out", ".err", ".txt"].iter().any(|x| name.ends_with(x))
                    && !name.starts_with("vips");
                if keep {
                    let rel = p.strip_prefix(dir).unwrap_or(&p);
                    let dest = out.join(rel.to_string_lossy().replace('/', "_"));
                    std::fs::copy(&p, dest)?;
                }
            }
        }
    }
    for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        let _ = std::fs::copy(
            cluster.log_path(component),
            out.join(format!("{component}.log")),
        );
    }
    Ok(())
}

/// Removes what a killed earlier run left: namespaces, pins, cgroups, temp directories.
fn clean_leftovers(berth: &Path) {
    use crate::leftovers::{dead, entries, owner};
    for ns in entries(Path::new("/run/netns")) {
        let pid = owner(&ns, PREFIX).or_else(|| owner(&ns, &format!("bt-{CLUSTER_TAG}")));
        if pid.is_some_and(dead) {
            eprintln!("removing leftover network namespace {ns}");
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
    for pins in entries(Path::new("/sys/fs/bpf")) {
        if owner(&pins, PREFIX).is_some_and(dead) {
            let path = Path::new("/sys/fs/bpf").join(&pins);
            eprintln!("removing leftover pins {}", path.display());
            let _ = Command::new(berth)
                .args(["agent", "--cleanup", "--pin-root"])
                .arg(&path)
                .arg("--api-socket")
                .arg(std::env::temp_dir().join(format!("{pins}-gone.sock")))
                .stdout(std::process::Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    let tmp = std::env::temp_dir();
    for d in entries(&tmp) {
        let ours = owner(&d, PREFIX).filter(|_| d.contains(TMP_SUFFIX));
        let fixture = owner(&d, &format!("berth-kube-{CLUSTER_TAG}"));
        if ours.or(fixture).is_some_and(dead) {
            eprintln!("removing leftover directory {}", tmp.join(&d).display());
            let _ = std::fs::remove_dir_all(tmp.join(d));
        }
    }
    if let Ok(root) = crate::services::topo::cgroup2_root() {
        for cg in entries(&root) {
            if owner(&cg, PREFIX).is_some_and(dead) {
                eprintln!("removing leftover cgroup {}", root.join(&cg).display());
                let _ = std::fs::remove_dir(root.join(cg));
            }
        }
    }
}

fn environment(berth: &Path, kube_proxy: &Path) -> Value {
    use crate::services::version_of;
    json!({
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_mb": std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok())).map(|kb| (kb / 1024.0).round()),
        "berth": berth.display().to_string(),
        "berth_version": version_of(&berth.display().to_string(), &["--version"]),
        "kube_proxy": version_of(&kube_proxy.display().to_string(), &["--version"]),
        "kubernetes_bin_dir": kube_cluster::bin_dir().display().to_string(),
        "etcd": version_of("etcd", &["--version"]),
        "iptables_legacy": version_of("iptables-legacy", &["--version"]),
        "iptables_nft": version_of("iptables-nft", &["--version"]),
    })
}
