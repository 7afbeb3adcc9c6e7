//! `berth-bench policy`: NetworkPolicy enforcement, berth vs the same rules as iptables chains
//! (the way iptables-based policy engines program them: Debian's default iptables-nft, and
//! iptables-legacy), against the ceiling of no policy at all, side by side in one run, at 10 to
//! 10,000 rules.
//!
//! One private node per run ([`cluster`]): a berth agent and engine of its own with two pods,
//! `server` and `client`, on a bridge of its own. The policy selects the server and has N
//! ingress rules, each allowing one /32 to TCP 8080, the client's address last ([`rules`]).
//! Per mode and rule count, one measurement ("slot") is: program the N rules (timed), check that
//! they are enforced (a port no rule allows is refused, 8080 answers), the new-connection rate,
//! the request/response rate on established connections, then adding one rule (timed), and
//! removing everything again. For each rule count, repetitions run every mode once in rotating
//! order (interleaved, so drift in the machine's state hits all modes alike); each mode's
//! numbers are the medians over repetitions. The load (client and server threads of the bench
//! itself, in the pods' network namespaces) runs pinned to one CPU (`--load-cpu`), so the rates
//! measure CPU cost per connection and per transaction rather than where the scheduler put the
//! threads.

mod cluster;
mod load;
mod report;
mod rules;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::services::{self, child, report::fmt_secs};
use cluster::Cluster;
use report::Report;
use rules::{DENIED_PORT, POLICY_NAME, PORT};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rule counts to measure (each rule allows one /32 to TCP 8080; the client's is last).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    rules: Vec<usize>,
    /// Modes to compare. `off` is no policy at all (the ceiling); `iptables` is Debian's default
    /// iptables (iptables-nft); modes whose tools are missing are reported as unavailable.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "off,berth,iptables,iptables-legacy"
    )]
    modes: Vec<Mode>,
    /// Repetitions (each measures every mode once); medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Length of each measurement (new connections, then established flows).
    #[arg(long, default_value_t = 3000)]
    duration_ms: u64,
    /// Client threads: each connects in a loop, then each keeps one connection for ping-pong.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// The CPU the load runs on: client and server threads all pinned to one CPU, so a
    /// transaction or a connection costs CPU time on it alone and the scheduler's placement
    /// of the threads does not decide the result (unpinned, rates of the same mode vary by 2x
    /// on a 2-CPU machine). `last` = the highest CPU this process may use; `all` = unpinned.
    #[arg(long, default_value = "last")]
    load_cpu: String,
    /// Limit for programming the rules (and for each change); a mode that takes longer is
    /// reported as "timeout" and skipped at larger rule counts.
    #[arg(long, default_value_t = 120)]
    program_timeout_s: u64,
    /// The berth binary [default: `berth` next to this binary, else target/{release,debug}].
    #[arg(long)]
    berth: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Mode {
    /// No policy and no rules: the ceiling.
    Off,
    /// berth's tc programs, through `berth policy apply`.
    Berth,
    /// The rules as iptables chains through `iptables-restore` (Debian: iptables-nft).
    Iptables,
    /// The same rules through `iptables-legacy-restore`.
    IptablesLegacy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Berth => "berth",
            Mode::Iptables => "iptables",
            Mode::IptablesLegacy => "iptables-legacy",
        }
    }
}

/// One measurement of one mode.
#[derive(Clone, Debug, Default)]
struct Sample {
    conn: load::ConnResult,
    pp: load::PingPongResult,
    /// Programming the N rules.
    program_s: Option<f64>,
    /// Adding one rule with N in force: berth applies the policy with N + 1 rules; iptables
    /// inserts one rule (`iptables-restore --noflush`).
    change_s: Option<f64>,
    /// iptables: the whole table again with the rule added, as kube-router syncs.
    full_s: Option<f64>,
    /// berth: the agent's own split of the change (the CLI's summary line).
    compile_s: Option<f64>,
    maps_s: Option<f64>,
}

type Outcome = crate::Outcome<Sample>;
/// One (count, mode) cell of the results.
type Cell = crate::Cell<Sample>;

/// The rule files of one rule count (written once, identical for every repetition).
struct Workload {
    n: usize,
    policy: PathBuf,
    policy_plus_one: PathBuf,
    table: PathBuf,
    table_plus_one: PathBuf,
    insert: PathBuf,
}

impl Workload {
    fn new(n: usize, client: std::net::Ipv4Addr, dir: &Path) -> Result<Self> {
        let sources = rules::sources(n, client);
        let (more, added, position) = rules::with_one_more(&sources);
        let write = |name: String, text: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(Self {
            n,
            policy: write(format!("policy-{n}.yaml"), rules::policy_yaml(&sources))?,
            policy_plus_one: write(format!("policy-{n}+1.yaml"), rules::policy_yaml(&more))?,
            table: write(
                format!("iptables-{n}.rules"),
                rules::iptables_table(&sources),
            )?,
            table_plus_one: write(
                format!("iptables-{n}+1.rules"),
                rules::iptables_table(&more),
            )?,
            insert: write(
                format!("iptables-{n}-insert.rules"),
                rules::iptables_insert(added, position),
            )?,
        })
    }
}

struct Bench<'a> {
    args: &'a Args,
    cpu: Option<usize>,
    cluster: Cluster,
    /// Debian's `iptables` may be iptables-legacy; otherwise its rules live in nftables.
    iptables_is_legacy: bool,
    limit: Duration,
}

pub fn run(args: &Args) -> Result<()> {
    validate(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("berth-bench policy needs root (network namespaces, netfilter, cgroups, bpffs)");
    }
    child::install_interrupt_handler()?;
    let run_started = Instant::now();
    let mut counts = args.rules.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut modes: Vec<Mode> = Vec::new();
    for m in &args.modes {
        if !modes.contains(m) {
            modes.push(*m);
        }
    }

    // Every mode runs on berth's engine and pods, so berth must work even without berth mode.
    let berth = services::berth::resolve(args.berth.as_deref())?;
    check_contract(&berth)?;
    let mut unavailable: BTreeMap<Mode, String> = BTreeMap::new();
    for (mode, tool) in [
        (Mode::Iptables, "iptables-restore"),
        (Mode::IptablesLegacy, "iptables-legacy-restore"),
    ] {
        if modes.contains(&mode) && services::which(tool).is_none() {
            eprintln!(
                "{} mode unavailable: {tool} not installed (`cargo xtask setup` installs it)",
                mode.name()
            );
            unavailable.insert(mode, format!("unavailable: {tool} not installed"));
        }
    }
    let mut environment = environment(&berth);
    cluster::clean_leftovers(&berth);
    services::warn_if_busy("start");

    eprintln!("setting up: agent, engine, bridge and two pods");
    let setup_started = Instant::now();
    let cpu = load_cpu(&args.load_cpu)?;
    environment.push((
        "client and server threads on CPU",
        cpu.map_or("any (unpinned)".to_owned(), |c| c.to_string()),
    ));
    let cluster = Cluster::create(&berth, args.threads * 2 + 4, cpu)?;
    eprintln!(
        "   ready in {:.1} s: bridge {}, server {}, client {}",
        setup_started.elapsed().as_secs_f64(),
        cluster.bridge(),
        cluster.server.ip,
        cluster.client.ip
    );
    let bench = Bench {
        args,
        cpu,
        iptables_is_legacy: environment
            .iter()
            .any(|(k, v)| *k == "iptables" && v.contains("legacy")),
        limit: Duration::from_secs(args.program_timeout_s),
        cluster,
    };
    // With nothing programmed, both ports answer.
    bench.expect_open()?;
    load::wait_reachable(
        &bench.cluster.client.netns,
        bench.cluster.server.ip,
        PORT,
        true,
        Duration::from_secs(5),
    )?;

    let files = bench.cluster.dir().join("files");
    let mut cells: BTreeMap<(usize, Mode), Cell> = BTreeMap::new();
    let mut disabled = unavailable.clone();
    for &n in &counts {
        let workload = Workload::new(n, bench.cluster.client.ip, &files)?;
        eprintln!("== {n} rules");
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
                let head = format!("   rep {}/{} {:<16}", rep + 1, args.reps, mode.name());
                match bench.slot(mode, &workload, rep)? {
                    Outcome::Done(sample, notes) => {
                        eprintln!("{head} {}", progress(&sample));
                        for note in &notes {
                            eprintln!("      note: {note}");
                        }
                        cell.samples.push(sample);
                        cell.notes.extend(notes);
                    }
                    Outcome::Timeout(msg) => {
                        eprintln!("{head} timeout: {msg}");
                        cell.status = Some(format!("timeout: {msg}"));
                        disabled.insert(mode, format!("skipped: timed out at {n} rules"));
                    }
                    Outcome::Failed(msg) => {
                        eprintln!("{head} FAILED: {msg}");
                        cell.status = Some(format!("error: {msg}"));
                        disabled.insert(mode, format!("skipped: failed at {n} rules"));
                    }
                }
            }
        }
    }
    drop(bench);
    services::warn_if_busy("end");

    let report = Report::new(&counts, &modes, &cells);
    let text = report.render(args, &environment, run_started.elapsed());
    print!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if args.rules.is_empty()
        || args
            .rules
            .iter()
            .any(|&n| !(1..=rules::MAX_RULES).contains(&n))
    {
        bail!("--rules: each count must be 1..={}", rules::MAX_RULES);
    }
    if args.modes.is_empty() {
        bail!("--modes: name at least one mode");
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
    Ok(())
}

/// Fails with a clear message when this berth lacks what the bench needs: `berth policy` and
/// `berth agent --engine-root` (the engine whose containers are the pods).
fn check_contract(berth: &Path) -> Result<()> {
    let help = |args: &[&str]| -> Result<String> {
        let out = Command::new(berth)
            .args(args)
            .output()
            .with_context(|| format!("running {}", berth.display()))?;
        if !out.status.success() {
            bail!(
                "`{} {}` failed: {}; this berth predates the NetworkPolicy the bench measures",
                berth.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    help(&["policy", "apply", "--help"])?;
    let agent = help(&["agent", "--help"])?;
    for flag in ["--engine-root", "--cgroup", "--state-dir", "--pod-cidr"] {
        if !agent.contains(flag) {
            bail!("{} has no `berth agent {flag}`", berth.display());
        }
    }
    Ok(())
}

/// `--load-cpu`: `last`, `all` or a CPU number.
fn load_cpu(arg: &str) -> Result<Option<usize>> {
    match arg {
        "all" => Ok(None),
        "last" => Ok(load::last_allowed_cpu()),
        n => {
            let cpu: usize = n
                .parse()
                .with_context(|| format!("--load-cpu {n:?}: expected last, all or a CPU number"))?;
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!("--load-cpu {cpu}: no such CPU");
            }
            Ok(Some(cpu))
        }
    }
}

fn progress(s: &Sample) -> String {
    let mut line = format!(
        "{:>8.0} conn/s (p50 {:.1} us, p99 {:.1} us)  {:>8.0} trans/s ({:.1} us)",
        s.conn.conn_per_s, s.conn.p50_us, s.conn.p99_us, s.pp.trans_per_s, s.pp.us_per_trans
    );
    if s.program_s.is_some() {
        line.push_str(&format!(
            "  program {}  +1 rule {}",
            fmt_secs(s.program_s),
            fmt_secs(s.change_s)
        ));
    }
    if s.full_s.is_some() {
        line.push_str(&format!(" (full restore {})", fmt_secs(s.full_s)));
    }
    if s.compile_s.is_some() {
        line.push_str(&format!(
            " (agent: compile {}, maps {})",
            fmt_secs(s.compile_s),
            fmt_secs(s.maps_s)
        ));
    }
    line
}

impl Bench<'_> {
    fn spec(&self) -> load::LoadSpec {
        let duration = Duration::from_millis(self.args.duration_ms);
        load::LoadSpec {
            client_netns: self.cluster.client.netns.clone(),
            server: self.cluster.server.ip,
            threads: self.args.threads,
            duration,
            warmup: (duration / 5).clamp(Duration::from_millis(100), Duration::from_millis(500)),
            cpu: self.cpu,
        }
    }

    /// One measurement. A failure of the mode is an [`Outcome`]; an error is fatal to the run
    /// (interrupted, or the mode's rules could not be removed: every later measurement would
    /// run under them).
    fn slot(&self, mode: Mode, w: &Workload, rep: usize) -> Result<Outcome> {
        let outcome = match self.measure(mode, w, rep) {
            Ok(outcome) => outcome,
            Err(err) => {
                child::check_interrupted()?;
                Outcome::Failed(format!("{err:#}"))
            }
        };
        self.undo(mode, w, rep)
            .with_context(|| format!("removing the {} rules", mode.name()))?;
        Ok(outcome)
    }

    fn measure(&self, mode: Mode, w: &Workload, rep: usize) -> Result<Outcome> {
        let mut s = Sample::default();
        let mut notes = Vec::new();
        let log = |step: &str| format!("{}-{}-r{rep}-{step}", mode.name(), w.n);
        let timeout = |what: &str| {
            Outcome::Timeout(format!(
                "{what} of {} rules took over {} s",
                w.n,
                self.limit.as_secs()
            ))
        };
        match mode {
            Mode::Off => self.expect_open()?,
            Mode::Berth => {
                let Some((t, _)) = self.berth_apply(&w.policy, &log("program"))? else {
                    return Ok(timeout("berth policy apply"));
                };
                s.program_s = Some(t);
                self.expect_enforced()?;
            }
            Mode::Iptables | Mode::IptablesLegacy => {
                let tool = restore_tool(mode);
                let Some(t) = self.restore(tool, &w.table, false, &log("program"))? else {
                    return Ok(timeout(tool));
                };
                s.program_s = Some(t);
                self.expect_enforced()?;
            }
        }

        let spec = self.spec();
        let retrans = || -> Result<u64> {
            Ok(load::retransmitted(&self.cluster.client.netns)?
                + load::retransmitted(&self.cluster.server.netns)?)
        };
        let r0 = retrans()?;
        s.conn = load::connections(&spec)?;
        child::check_interrupted()?;
        let r1 = retrans()?;
        s.pp = load::ping_pong(&spec)?;
        child::check_interrupted()?;
        let r2 = retrans()?;
        // Lost packets are worth knowing about: a retransmission costs at least one RTO.
        for (what, n) in [
            ("new connections", r1.saturating_sub(r0)),
            ("established flows", r2.saturating_sub(r1)),
        ] {
            if n > 0 {
                notes.push(format!(
                    "{n} TCP segments retransmitted during the {what} measurement"
                ));
            }
        }
        if s.conn.conns == 0 {
            bail!(
                "no connection succeeded ({} attempts; first error: {})",
                s.conn.errors,
                s.conn.first_error.as_deref().unwrap_or("none")
            );
        }
        if s.pp.transactions == 0 {
            bail!(
                "no request/response on established connections succeeded (first error: {})",
                s.pp.first_error.as_deref().unwrap_or("none")
            );
        }
        if s.conn.errors > 0 {
            notes.push(format!(
                "{} of {} new connections failed (first: {})",
                s.conn.errors,
                s.conn.errors + s.conn.conns,
                s.conn.first_error.as_deref().unwrap_or("?")
            ));
        }
        if s.pp.errors > 0 {
            notes.push(format!(
                "{} ping-pong connection(s) failed (first: {})",
                s.pp.errors,
                s.pp.first_error.as_deref().unwrap_or("?")
            ));
        }

        // One more rule, with N in force.
        match mode {
            Mode::Off => {}
            Mode::Berth => match self.berth_apply(&w.policy_plus_one, &log("change"))? {
                Some((t, split)) => {
                    s.change_s = Some(t);
                    if let Some((compile, maps)) = split {
                        s.compile_s = Some(compile);
                        s.maps_s = Some(maps);
                    } else {
                        notes.push("the CLI printed no compile/maps times".to_owned());
                    }
                }
                None => notes.push(format!(
                    "adding one rule timed out (> {} s)",
                    self.limit.as_secs()
                )),
            },
            Mode::Iptables | Mode::IptablesLegacy => {
                let tool = restore_tool(mode);
                s.change_s = self.restore(tool, &w.insert, true, &log("insert"))?;
                s.full_s = self.restore(tool, &w.table_plus_one, false, &log("full"))?;
                if s.change_s.is_none() || s.full_s.is_none() {
                    notes.push(format!(
                        "adding one rule timed out (> {} s)",
                        self.limit.as_secs()
                    ));
                }
            }
        }
        // Still enforced after the change (and the client still allowed).
        if mode != Mode::Off {
            self.expect_enforced()
                .context("after adding one rule to the policy")?;
        }
        Ok(Outcome::Done(s, notes))
    }

    /// Removes the mode's rules and waits until the port no rule allows answers again.
    fn undo(&self, mode: Mode, w: &Workload, rep: usize) -> Result<()> {
        let log = format!("{}-{}-r{rep}-undo", mode.name(), w.n);
        match mode {
            Mode::Off => {}
            Mode::Berth => {
                let name = format!("default/{POLICY_NAME}");
                let done = self
                    .cluster
                    .berth(&["policy", "delete", &name], &log, self.limit)?;
                let err = child::tail(&done.stderr_path, 5);
                // Deleting what a failed apply never created is fine.
                if !done.success() && !err.to_ascii_lowercase().contains("not found") {
                    bail!("berth policy delete {name} failed: {err}");
                }
            }
            Mode::Iptables | Mode::IptablesLegacy => {
                let nft_based = mode == Mode::Iptables && !self.iptables_is_legacy;
                let mut commands: Vec<(&str, Vec<&str>)> = Vec::new();
                if nft_based && services::which("nft").is_some() {
                    // Also unregisters the hooks (and conntrack) iptables-nft added to the
                    // pod's namespace: the next mode starts from a clean namespace.
                    commands.push(("nft", vec!["flush", "ruleset"]));
                } else {
                    let tool = if mode == Mode::Iptables {
                        "iptables"
                    } else {
                        "iptables-legacy"
                    };
                    for op in ["-F", "-X"] {
                        commands.push((tool, vec!["-w", "5", "-t", "filter", op]));
                    }
                }
                for (program, args) in commands {
                    let mut cmd = Command::new(program);
                    cmd.args(&args);
                    let done = child::run(
                        &mut cmd,
                        child::Spawn {
                            netns: Some(&self.cluster.server.netns),
                            log: &self.cluster.dir().join("logs").join(&log),
                            stdin: None,
                            death_signal: libc::SIGKILL,
                        },
                        self.limit.max(Duration::from_secs(60)),
                    )?;
                    if !done.success() {
                        bail!(
                            "{program} {} in the server pod failed: {}",
                            args.join(" "),
                            done.stderr_tail()
                        );
                    }
                }
            }
        }
        self.expect_open()
    }

    /// No rule in force: the port no rule allows answers.
    fn expect_open(&self) -> Result<()> {
        load::wait_reachable(
            &self.cluster.client.netns,
            self.cluster.server.ip,
            DENIED_PORT,
            true,
            Duration::from_secs(10),
        )
        .context("the server should accept every connection with no policy in force")
    }

    /// The rules are in force: the port no rule allows is refused, and the client still
    /// reaches the allowed port (its rule is the last one).
    fn expect_enforced(&self) -> Result<()> {
        let c = &self.cluster;
        load::wait_reachable(
            &c.client.netns,
            c.server.ip,
            DENIED_PORT,
            false,
            Duration::from_secs(10),
        )
        .context("the rules are not enforced")?;
        if !load::reachable(&c.client.netns, c.server.ip, PORT, Duration::from_secs(1))? {
            bail!(
                "the client cannot reach {}:{PORT} although the last rule allows it",
                c.server.ip
            );
        }
        Ok(())
    }

    /// `berth policy apply -f FILE`, timed (it returns once the maps are written), with the
    /// agent's compile and map-writing times from the CLI's summary line.
    #[expect(
        clippy::type_complexity,
        reason = "a private helper's result, read twice"
    )]
    fn berth_apply(&self, file: &Path, log: &str) -> Result<Option<(f64, Option<(f64, f64)>)>> {
        let file = file.to_string_lossy();
        let done = self
            .cluster
            .berth(&["policy", "apply", "-f", &file], log, self.limit)?;
        if done.timed_out() {
            return Ok(None);
        }
        if !done.success() {
            bail!(
                "berth policy apply -f {file} failed: {}\nagent log (last lines):\n{}",
                done.stderr_tail(),
                self.cluster.agent_log_tail()
            );
        }
        let stderr = std::fs::read_to_string(&done.stderr_path).unwrap_or_default();
        Ok(Some((done.elapsed.as_secs_f64(), agent_split(&stderr))))
    }

    /// `TOOL [--noflush] < FILE` in the server pod's namespace, timed.
    fn restore(&self, tool: &str, file: &Path, noflush: bool, log: &str) -> Result<Option<f64>> {
        let mut cmd = Command::new(tool);
        cmd.args(["-w", "5"]);
        if noflush {
            cmd.arg("--noflush");
        }
        let done = child::run(
            &mut cmd,
            child::Spawn {
                netns: Some(&self.cluster.server.netns),
                log: &self.cluster.dir().join("logs").join(log),
                stdin: Some(File::open(file)?),
                death_signal: libc::SIGKILL,
            },
            self.limit,
        )?;
        if done.timed_out() {
            return Ok(None);
        }
        if !done.success() {
            bail!("{tool} < {} failed: {}", file.display(), done.stderr_tail());
        }
        Ok(Some(done.elapsed.as_secs_f64()))
    }
}

fn restore_tool(mode: Mode) -> &'static str {
    if mode == Mode::Iptables {
        "iptables-restore"
    } else {
        "iptables-legacy-restore"
    }
}

/// `compile 1.2 ms, maps 3.4 ms` from `berth policy apply`'s summary line, in seconds.
fn agent_split(stderr: &str) -> Option<(f64, f64)> {
    let line = stderr.lines().rev().find(|l| l.contains("compile "))?;
    let ms_after = |key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        rest[number.len()..]
            .trim_start()
            .starts_with("ms")
            .then(|| number.parse::<f64>().ok())
            .flatten()
            .map(|ms| ms / 1000.0)
    };
    Some((ms_after("compile ")?, ms_after("maps ")?))
}

/// What the report's header says about the machine and the tools.
fn environment(berth: &Path) -> Vec<(&'static str, String)> {
    let value = |v: serde_json::Value| v.as_str().unwrap_or("not installed").to_owned();
    vec![
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
            "iptables",
            value(services::version_of("iptables", &["--version"])),
        ),
        (
            "iptables-legacy",
            value(services::version_of("iptables-legacy", &["--version"])),
        ),
        (
            "berth",
            format!(
                "{} ({})",
                value(services::version_of(
                    &berth.display().to_string(),
                    &["--version"]
                )),
                berth.display()
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::agent_split;

    #[test]
    fn reads_the_agents_split_from_the_summary_line() {
        let stderr = "tables: 1 written, 0 removed (1001 rules); endpoints: 1 written, 0 removed; \
                      prefixes: 1 written, 0 removed; compile 12.5 ms, maps 0.4 ms\n";
        assert_eq!(agent_split(stderr), Some((0.0125, 0.0004)));
        assert_eq!(agent_split("something else\n"), None);
    }
}
