//! berth's side: an agent of its own (pin root `/sys/fs/bpf/berth-bench-audit-<pid>`, API
//! socket, state, engine root and events file in the run's temporary directory, its socket
//! hooks on an empty cgroup of the run's, metrics on a loopback port), the two audit policies
//! applied once, and the audited cgroup switched between them by re-registering it with
//! another label (`bench=counts`, `bench=events`) or not at all (`off`).
//!
//! Delivery is read back from the event stream: the agent's `--events-file` (or a `berth events
//! --follow` reader's output), every line parsed; `gap` records and the metrics'
//! `berth_audit_lost_total` say what was lost.

use std::{
    collections::BTreeMap,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::services::child;

/// Label selecting the count-everything policy.
pub const COUNTS: &str = "counts";
/// Label selecting the record policy.
pub const EVENTS: &str = "events";

const POLICIES: &str = "\
apiVersion: berth.io/v1alpha1
kind: AuditPolicy
metadata: {name: bench-counts}
spec:
  selector: {matchLabels: {bench: counts}}
  rules:
  - {syscalls: [\"*\"], action: count}
---
apiVersion: berth.io/v1alpha1
kind: AuditPolicy
metadata: {name: bench-events}
spec:
  selector: {matchLabels: {bench: events}}
  rules:
  - {syscalls: [execve, openat, connect], action: record}
";

/// Who reads the event stream in events mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reader {
    /// The agent's own `--events-file` writer.
    File,
    /// A `berth events --follow` client writing to a file.
    Follow,
}

pub struct Agent {
    berth: PathBuf,
    dir: PathBuf,
    pub pin_root: PathBuf,
    pub api_socket: PathBuf,
    metrics_port: u16,
    child: Option<Child>,
    follower: Option<Child>,
    /// Where the events land (the agent's file or the follower's output).
    pub stream: PathBuf,
    /// The audited cgroup's registration: (path, label) while registered.
    registered: Option<(PathBuf, String)>,
    /// The name events and counts show for the audited cgroup.
    pub name: String,
}

impl Agent {
    /// `berth ARGS` against this agent only (every inherited `BERTH_*` replaced).
    fn command(&self, args: &[&str]) -> Command {
        command(
            &self.berth,
            &self.dir,
            &self.api_socket,
            &self.pin_root,
            args,
        )
    }

    pub fn start(berth: &Path, dir: &Path, hooks_cgroup: &Path, reader: Reader) -> Result<Self> {
        let pid = std::process::id();
        for sub in ["logs", "state", "engine", "root", "runtime"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut agent = Agent {
            berth: berth.to_owned(),
            dir: dir.to_owned(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{}{pid}", super::PREFIX)),
            api_socket: dir.join("api.sock"),
            metrics_port: port,
            child: None,
            follower: None,
            stream: dir.join("events.jsonl"),
            registered: None,
            name: format!("bench-audited-{pid}"),
        };
        let mut cmd = agent.command(&["agent"]);
        cmd.arg("--pin-root")
            .arg(&agent.pin_root)
            .arg("--api-socket")
            .arg(&agent.api_socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--engine-root")
            .arg(dir.join("engine"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cgroup")
            .arg(hooks_cgroup)
            .args(["--log", "warn"]);
        if reader == Reader::File {
            // One file, never rotated during the run: the bench reads it from offsets and
            // truncates it between measurements.
            cmd.arg("--events-file")
                .arg(&agent.stream)
                .args(["--events-file-max-bytes", &(1u64 << 40).to_string()]);
        }
        let (c, _, _, _) = child::spawn(
            &mut cmd,
            child::Spawn {
                netns: None,
                log: &dir.join("logs/agent"),
                stdin: None,
                death_signal: libc::SIGTERM,
            },
        )?;
        agent.child = Some(c);
        agent.wait_ready(Duration::from_secs(30))?;
        if reader == Reader::Follow {
            // Appending: the bench truncates the file between measurements.
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&agent.stream)?;
            let mut cmd = agent.command(&["events", "--follow"]);
            cmd.stdout(out)
                .stderr(std::fs::File::create(dir.join("logs/follow.err"))?)
                .stdin(Stdio::null());
            // SAFETY: prctl between fork and exec is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            agent.follower = Some(cmd.spawn().context("starting berth events --follow")?);
        }
        let file = dir.join("policies.yaml");
        std::fs::write(&file, POLICIES)?;
        agent.ok(
            &["audit", "apply", "-f", &file.to_string_lossy()],
            "apply-policies",
        )?;
        Ok(agent)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            child::check_interrupted()?;
            if let Some(c) = &mut self.child
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "berth agent exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            let done = self.run(&["status", "--format", "json"], "status")?;
            if done.success() {
                let v: serde_json::Value = serde_json::from_str(&done.stdout()).unwrap_or_default();
                if v["source"] == "agent" || !v["agent"].is_null() {
                    // The audit API answers too.
                    if self.run(&["audit", "ls"], "audit-ls")?.success() {
                        return Ok(());
                    }
                }
            } else {
                last = done.stderr_tail();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "berth agent not ready after {limit:?} (last status error: {last}); agent log:\n{}",
            self.log_tail()
        )
    }

    pub fn log_tail(&self) -> String {
        child::tail(&self.dir.join("logs/agent.err"), 10)
    }

    fn run(&self, args: &[&str], log: &str) -> Result<child::Finished> {
        let mut cmd = self.command(args);
        child::run(
            &mut cmd,
            child::Spawn {
                netns: None,
                log: &self.dir.join("logs").join(log),
                stdin: None,
                death_signal: libc::SIGKILL,
            },
            Duration::from_secs(60),
        )
    }

    /// `berth ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str], log: &str) -> Result<String> {
        let done = self.run(args, log)?;
        if !done.success() {
            bail!(
                "berth {} failed ({}): {}\nagent log:\n{}",
                args.join(" "),
                done.status
                    .map_or("timed out".to_owned(), |s| s.to_string()),
                done.stderr_tail(),
                self.log_tail()
            );
        }
        Ok(done.stdout())
    }

    /// Registers `cgroup` with `bench=<label>` (`None`: not audited at all), and returns the
    /// tracepoints attached afterwards.
    pub fn select(&mut self, cgroup: &Path, label: Option<&str>) -> Result<Vec<String>> {
        let want = label.map(|l| (cgroup.to_owned(), l.to_owned()));
        if self.registered != want {
            if let Some((path, _)) = self.registered.take() {
                self.ok(
                    &["audit", "remove-cgroup", &path.to_string_lossy()],
                    "remove-cgroup",
                )?;
            }
            if let Some(label) = label {
                let l = format!("bench={label}");
                self.ok(
                    &[
                        "audit",
                        "add-cgroup",
                        &cgroup.to_string_lossy(),
                        "--name",
                        &self.name,
                        "--label",
                        &l,
                    ],
                    "add-cgroup",
                )?;
                self.registered = want;
            }
        }
        self.tracepoints()
    }

    pub fn tracepoints(&self) -> Result<Vec<String>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["audit", "ls", "--format", "json"], "audit-ls")?)
                .context("parsing berth audit ls --format json")?;
        Ok(v["tracepoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect())
    }

    /// Per-syscall totals the kernel counted for the audited cgroup (`berth stats --once`).
    pub fn counts(&self) -> Result<BTreeMap<String, u64>> {
        let out = self.ok(
            &[
                "stats",
                "--once",
                "--top",
                "0",
                "--format",
                "json",
                "--container",
                &self.name,
            ],
            "stats",
        )?;
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&out).context("parsing berth stats --format json")?;
        let mut totals = BTreeMap::new();
        for r in rows {
            if r["container"].as_str() == Some(self.name.as_str()) {
                *totals
                    .entry(r["syscall"].as_str().unwrap_or("?").to_owned())
                    .or_default() += r["total"].as_u64().unwrap_or(0);
            }
        }
        Ok(totals)
    }

    /// The agent's metrics this bench reads.
    pub fn metrics(&self) -> Result<Metrics> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))
            .context("connecting to the agent's metrics port")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(Metrics::parse(&text))
    }

    /// CPU time the agent (all its threads) and the `berth events` follower have used, in
    /// seconds.
    pub fn cpu_s(&self) -> f64 {
        [&self.child, &self.follower]
            .iter()
            .filter_map(|c| c.as_ref())
            .map(|c| process_cpu_s(c.id()))
            .sum()
    }

    /// Whether the agent (and the follower) still run.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.child
            && let Some(status) = c.try_wait()?
        {
            bail!("berth agent exited ({status}):\n{}", self.log_tail());
        }
        if let Some(c) = &mut self.follower
            && let Some(status) = c.try_wait()?
        {
            bail!(
                "berth events --follow exited ({status}): {}",
                child::tail(&self.dir.join("logs/follow.err"), 5)
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut f) = self.follower.take() {
            let _ = f.kill();
            let _ = f.wait();
        }
        if let Some((path, _)) = self.registered.take() {
            let _ = self.run(
                &["audit", "remove-cgroup", &path.to_string_lossy()],
                "remove-cgroup",
            );
        }
        if let Some(mut agent) = self.child.take() {
            // SAFETY: kill on the pid of our own child, not reaped yet.
            unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match agent.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("warning: berth agent had not exited 10 s after SIGTERM; killed");
                        let _ = agent.kill();
                        let _ = agent.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        cleanup_pins(&self.berth, &self.dir, &self.api_socket, &self.pin_root);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time of a process (all its live threads), in seconds: the sum of its threads' time on
/// a CPU from `/proc/PID/task/*/schedstat` (nanoseconds; readable for a zombie too), else
/// utime + stime from `/proc/PID/stat` (clock ticks).
pub fn process_cpu_s(pid: u32) -> f64 {
    let mut ns: u64 = 0;
    let mut any = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(v) = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                ns += v;
                any = true;
            }
        }
    }
    if any {
        return ns as f64 / 1e9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After "pid (comm) ": state is field 0, utime 11, stime 12.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn command(berth: &Path, dir: &Path, socket: &Path, pin_root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(berth);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BERTH_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .env("BERTH_ROOT", dir.join("root"))
        .env("BERTH_RUNTIME_ROOT", dir.join("runtime"))
        .env("BERTH_PIN_ROOT", pin_root)
        .env("BERTH_API_SOCKET", socket);
    cmd
}

/// `berth agent --cleanup` of a pin root (its agent stopped), then the directory.
pub fn cleanup_pins(berth: &Path, dir: &Path, socket: &Path, pin_root: &Path) {
    if !pin_root.exists() {
        return;
    }
    let out = command(berth, dir, socket, pin_root, &["agent", "--cleanup"])
        .arg("--pin-root")
        .arg(pin_root)
        .arg("--api-socket")
        .arg(socket)
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: berth agent --cleanup --pin-root {}: {}",
            pin_root.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("warning: berth agent --cleanup: {e}"),
    }
    let _ = std::fs::remove_dir_all(pin_root);
}

/// The metrics the bench reads (sums over labels).
#[derive(Clone, Copy, Debug, Default)]
pub struct Metrics {
    /// `berth_audit_lost_total` (all CPUs).
    pub audit_lost: u64,
    /// `berth_events_lost_total`.
    pub events_lost: u64,
    /// `berth_audit_kernel_total{outcome="records"}`.
    pub records: u64,
}

impl Metrics {
    fn parse(text: &str) -> Self {
        let mut m = Metrics::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let value = value as u64;
            let base = name.split('{').next().unwrap_or("");
            match base {
                "berth_audit_lost_total" => m.audit_lost += value,
                "berth_events_lost_total" => m.events_lost += value,
                "berth_audit_kernel_total" if name.contains("outcome=\"records\"") => {
                    m.records += value;
                }
                _ => {}
            }
        }
        m
    }

    pub fn since(self, before: Metrics) -> Metrics {
        Metrics {
            audit_lost: self.audit_lost.saturating_sub(before.audit_lost),
            events_lost: self.events_lost.saturating_sub(before.events_lost),
            records: self.records.saturating_sub(before.records),
        }
    }
}

/// What the stream said about one measurement.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// `syscall` records of the audited cgroup, by syscall.
    pub by_syscall: BTreeMap<String, u64>,
    /// `syscall` records of the audited cgroup whose `path` is the one asked for.
    pub on_path: u64,
    /// `lost` of `gap` records.
    pub gap_lost: u64,
    /// Lines that were not JSON.
    pub garbled: u64,
    /// Records of other types (exec, exit, ...).
    pub other: u64,
}

impl Tally {
    pub fn syscalls(&self) -> u64 {
        self.by_syscall.values().sum()
    }
}

/// Reads the stream file from where the last read stopped.
pub struct Cursor {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Cursor {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// Empties the file (nothing is in flight: the caller waited for the stream to settle).
    pub fn reset(&mut self) -> Result<()> {
        if self.path.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)?
                .set_len(0)?;
        }
        self.offset = 0;
        self.partial.clear();
        Ok(())
    }

    /// Adds the complete lines written since the last call to `tally`; returns how many.
    pub fn read(&mut self, name: &str, path: Option<&str>, tally: &mut Tally) -> Result<u64> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Ok(0);
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            // Truncated behind our back: start over.
            self.offset = 0;
            self.partial.clear();
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        f.take(len - self.offset).read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(0);
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        let mut lines = 0;
        for line in complete.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                tally.garbled += 1;
                continue;
            };
            match v["type"].as_str() {
                Some("syscall") if v["container"]["name"].as_str() == Some(name) => {
                    let syscall = v["syscall"].as_str().unwrap_or("?");
                    *tally.by_syscall.entry(syscall.to_owned()).or_default() += 1;
                    if path.is_some() && v["path"].as_str() == path {
                        tally.on_path += 1;
                    }
                }
                Some("gap") => tally.gap_lost += v["lost"].as_u64().unwrap_or(0),
                _ => tally.other += 1,
            }
        }
        Ok(lines)
    }

    /// When the file was last written.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn reads_the_loss_and_record_counters() {
        let text = "# HELP x\nberth_audit_lost_total{cpu=\"0\"} 3\nberth_audit_lost_total{cpu=\"1\"} 4\n\
                    berth_events_lost_total 7\nberth_audit_kernel_total{outcome=\"records\"} 1000\n\
                    berth_audit_kernel_total{outcome=\"kills\"} 2\n";
        let m = Metrics::parse(text);
        assert_eq!((m.audit_lost, m.events_lost, m.records), (7, 7, 1000));
    }
}
