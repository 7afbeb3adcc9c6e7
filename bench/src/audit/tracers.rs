//! The baselines: bpftrace one-liners (a counter, and printf per event), `strace -f` attached to
//! the worker, and auditd with rules for the same syscalls. Each is a guard that stops what it
//! started (and removes the audit rules) on drop, also on error.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::services::{self, child};

/// The audit rules' key: every rule the bench adds carries it, and only those are deleted.
pub const AUDIT_KEY: &str = "berthbench";
/// The syscalls the event contenders trace (berth's record rule names the same ones).
pub const TRACED: [&str; 3] = ["openat", "execve", "connect"];

fn with_death_signal(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl between fork and exec is async-signal-safe and allocates nothing.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// utime + stime of a process, in seconds (0 when it is gone).
pub fn cpu_of(pid: u32) -> f64 {
    super::agent::process_cpu_s(pid)
}

/// The state letter of a process (`Z` for a zombie), if it exists.
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until `path` has not grown for `quiet` (bounded by `limit`); false at the limit.
pub fn settle(path: &Path, quiet: Duration, limit: Duration) -> Result<bool> {
    let started = Instant::now();
    let mut last = file_len(path);
    let mut since = Instant::now();
    while started.elapsed() < limit {
        child::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50));
        let now = file_len(path);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The bpftrace programs.
pub fn bpftrace_counter(cgroup: &Path) -> String {
    format!(
        "tracepoint:raw_syscalls:sys_enter /cgroup == cgroupid(\"{}\")/ {{ @[args->id] = count(); }}",
        cgroup.display()
    )
}

pub fn bpftrace_printf(cgroup: &Path) -> String {
    let filter = format!("/cgroup == cgroupid(\"{}\")/", cgroup.display());
    format!(
        "tracepoint:syscalls:sys_enter_openat {filter} {{ printf(\"%d %s openat %s\\n\", pid, comm, str(args->filename)); }}\n\
         tracepoint:syscalls:sys_enter_execve {filter} {{ printf(\"%d %s execve %s\\n\", pid, comm, str(args->filename)); }}\n\
         tracepoint:syscalls:sys_enter_connect {filter} {{ printf(\"%d %s connect %d\\n\", pid, comm, args->fd); }}"
    )
}

/// A running bpftrace; SIGINT, then SIGKILL, on drop.
pub struct Bpftrace {
    child: Option<Child>,
    /// Its `-c` child (a sleep), started once every probe is attached.
    sentinel: Option<u32>,
    /// Its `-o` file (printf lines, and the counter's map at exit).
    out: PathBuf,
    err: PathBuf,
    stdout: PathBuf,
}

/// The children of `parent` whose command is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if name == comm && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// What a bpftrace run printed, read after it exited.
#[derive(Debug, Default)]
pub struct BpftraceOutput {
    /// printf lines of the traced syscalls.
    pub lines: u64,
    /// Its own "Lost N events" notices, summed.
    pub lost: u64,
    /// The counter's map as printed at exit: syscall number → count.
    pub map: BTreeMap<u64, u64>,
}

impl Bpftrace {
    /// Starts `bpftrace -e PROGRAM -o OUT -c 'sleep …'` and waits until its probes are
    /// attached: bpftrace lets its `-c` child exec only after attaching every probe ("Attaching
    /// N probes..." is printed before), so the child turning into `sleep` is the signal.
    pub fn start(program: &str, log: &Path) -> Result<Self> {
        let out = log.with_extension("out");
        let err = log.with_extension("err");
        let stdout = log.with_extension("stdout");
        let mut cmd = Command::new("bpftrace");
        cmd.arg("-e")
            .arg(program)
            .arg("-o")
            .arg(&out)
            .arg("-c")
            .arg("/bin/sleep 100000")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&err)?);
        with_death_signal(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().context("starting bpftrace")?;
        let pid = child.id();
        let mut bt = Bpftrace {
            child: Some(child),
            sentinel: None,
            out,
            err,
            stdout,
        };
        let started = Instant::now();
        loop {
            child::check_interrupted()?;
            if let Some(&sleep) = children_named(pid, "sleep").first() {
                bt.sentinel = Some(sleep);
                return Ok(bt);
            }
            if let Some(c) = &mut bt.child
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "bpftrace exited ({status}) before attaching: {}",
                    child::tail(&bt.err, 5)
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("bpftrace had not attached after 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time bpftrace has used so far.
    pub fn cpu_s(&self) -> f64 {
        self.child.as_ref().map_or(0.0, |c| cpu_of(c.id()))
    }

    /// Waits until its output has not grown for 300 ms (it has written what it had).
    pub fn settle(&self) -> Result<()> {
        settle(
            &self.out,
            Duration::from_millis(300),
            Duration::from_secs(60),
        )?;
        Ok(())
    }

    /// Stops it (SIGINT: it prints its maps and exits) and reads what it printed.
    pub fn stop(&mut self) -> BpftraceOutput {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            // Ending the `-c` child ends bpftrace as exit() would (maps printed). The sleep is
            // still bpftrace's unreaped child here, so the pid is the one bpftrace started.
            let sentinel = self.sentinel.take();
            let ended = sentinel.is_some_and(|sleep| {
                children_named(pid, "sleep").contains(&sleep)
                    // SAFETY: kill of a live child of our bpftrace, by its pid.
                    && unsafe { libc::kill(sleep as libc::pid_t, libc::SIGTERM) } == 0
            });
            let waited = |c: &mut Child, secs| {
                child::wait(c, Instant::now(), Duration::from_secs(secs))
                    .ok()
                    .flatten()
                    .is_some()
            };
            if !(ended && waited(&mut c, 15)) {
                // SAFETY: kill on the pid of our own child, not reaped yet.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
                if !waited(&mut c, 10) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let mut o = BpftraceOutput::default();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        for line in text.lines() {
            if TRACED.iter().any(|s| line.split(' ').nth(2) == Some(s)) {
                o.lines += 1;
            } else if let Some(rest) = line.strip_prefix("@[")
                // @[257]: 200004
                && let Some((id, n)) = rest.split_once("]: ")
                && let (Ok(id), Ok(n)) = (id.parse(), n.trim().parse())
            {
                o.map.insert(id, n);
            }
        }
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        let stdout = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        for line in text.lines().chain(err.lines()).chain(stdout.lines()) {
            if let Some(rest) = line.trim().strip_prefix("Lost ") {
                o.lost += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        o
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `strace -f -e trace=openat,execve,connect -o OUT -p PID`, attached (waits for strace to say
/// so).
pub struct Strace {
    child: Option<Child>,
    out: PathBuf,
}

impl Strace {
    pub fn attach(pid: u32, log: &Path) -> Result<Self> {
        let out = log.with_extension("out");
        let err = log.with_extension("err");
        let mut cmd = Command::new("strace");
        cmd.arg("-f")
            .arg("-e")
            .arg(format!("trace={}", TRACED.join(",")))
            .arg("-o")
            .arg(&out)
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?);
        with_death_signal(&mut cmd, libc::SIGKILL);
        let mut s = Strace {
            child: Some(cmd.spawn().context("starting strace")?),
            out,
        };
        let started = Instant::now();
        loop {
            child::check_interrupted()?;
            if std::fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("attached")
            {
                return Ok(s);
            }
            if let Some(c) = &mut s.child
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "strace exited ({status}) before attaching: {}",
                    child::tail(&err, 5)
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("strace had not attached after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for strace to end (its tracee has exited); the calls it printed and the CPU time
    /// it used (read from the zombie, before it is reaped).
    pub fn finish(mut self) -> Result<(u64, f64)> {
        let mut cpu = f64::NAN;
        if let Some(mut c) = self.child.take() {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                child::check_interrupted()?;
                match state_of(c.id()) {
                    Some('Z') | None => break,
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            cpu = cpu_of(c.id());
            let status = child::wait(&mut c, Instant::now(), Duration::from_secs(5))?;
            if status.is_none() {
                bail!("strace did not exit within 60 s of its tracee");
            }
        }
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let calls = text
            .lines()
            .filter(|l| !l.contains("resumed>"))
            .filter(|l| {
                let call = l.split_whitespace().nth(1).unwrap_or("");
                TRACED.iter().any(|s| {
                    call.strip_prefix(s)
                        .is_some_and(|rest| rest.starts_with('('))
                })
            })
            .count() as u64;
        Ok((calls, cpu))
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pid of a kernel thread by name (a child of kthreadd, pid 2).
fn kernel_thread(name: &str) -> Option<u32> {
    children_named(2, name).first().copied()
}

/// `auditctl -s`, as key → value.
fn audit_status() -> Result<BTreeMap<String, String>> {
    let out = Command::new("auditctl")
        .arg("-s")
        .output()
        .context("running auditctl -s")?;
    if !out.status.success() {
        bail!(
            "auditctl -s failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().to_owned()))
        })
        .collect())
}

fn status_u64(s: &BTreeMap<String, String>, key: &str) -> u64 {
    s.get(key)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn auditctl(args: &[&str]) -> Result<()> {
    let out = Command::new("auditctl")
        .args(args)
        .output()
        .context("running auditctl")?;
    if !out.status.success() {
        bail!(
            "auditctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes every rule with the bench's key (a crashed run's too).
pub fn remove_audit_rules() -> Result<()> {
    let listed = Command::new("auditctl").arg("-l").output();
    let has = listed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(AUDIT_KEY));
    if has {
        auditctl(&["-D", "-k", AUDIT_KEY])?;
    }
    Ok(())
}

/// auditd with rules for the traced syscalls. If no auditd runs, one of the bench's own is
/// started (`auditd -n` with a configuration in the run's directory: Debian's defaults, its
/// log in that directory); the kernel's audit settings the bench changes (enabled, backlog
/// limit) are put back on drop, and the rules removed.
pub struct Auditd {
    child: Option<Child>,
    dir: PathBuf,
    restore_enabled: Option<String>,
    restore_backlog: Option<String>,
    rules: bool,
    pub note: String,
}

/// Why auditd cannot be measured here, if it cannot.
pub fn auditd_unavailable() -> Option<String> {
    if services::which("auditd").is_none() || services::which("auditctl").is_none() {
        return Some("auditd/auditctl not installed (apt-get install auditd)".to_owned());
    }
    match audit_status() {
        Err(e) => Some(format!(
            "the kernel's audit subsystem does not answer: {e:#}"
        )),
        Ok(s) if s.get("enabled").map(String::as_str) == Some("2") => {
            Some("the audit configuration is locked (enabled 2): rules cannot be removed".into())
        }
        Ok(_) => None,
    }
}

const AUDITD_CONF: &str = "\
local_events = yes
write_logs = yes
log_file = {DIR}/audit.log
log_group = adm
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 8
num_logs = 5
priority_boost = 4
name_format = NONE
max_log_file_action = ROTATE
space_left = 75
space_left_action = SYSLOG
admin_space_left = 50
admin_space_left_action = SYSLOG
disk_full_action = SYSLOG
disk_error_action = SYSLOG
plugin_dir = {DIR}/plugins
q_depth = 2000
overflow_action = SYSLOG
end_of_event_timeout = 2
";

impl Auditd {
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("plugins"))?;
        let before = audit_status()?;
        let mut a = Auditd {
            child: None,
            dir: dir.to_owned(),
            restore_enabled: None,
            restore_backlog: None,
            rules: false,
            note: String::new(),
        };
        // Whatever happens next, put the kernel's switches back as they were.
        a.restore_enabled = before.get("enabled").cloned();
        a.restore_backlog = before
            .get("backlog_limit")
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_owned);
        let running = status_u64(&before, "pid");
        if running != 0 {
            a.note = format!("the auditd already running (pid {running}) was used");
        } else {
            let conf = dir.join("auditd.conf");
            std::fs::write(&conf, AUDITD_CONF.replace("{DIR}", &dir.to_string_lossy()))?;
            std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let mut cmd = Command::new("auditd");
            cmd.arg("-n")
                .arg("-c")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("auditd.out"))?)
                .stderr(std::fs::File::create(dir.join("auditd.err"))?);
            with_death_signal(&mut cmd, libc::SIGTERM);
            let child = cmd.spawn().context("starting auditd")?;
            let pid = child.id() as u64;
            a.child = Some(child);
            let started = Instant::now();
            loop {
                child::check_interrupted()?;
                if let Some(c) = &mut a.child
                    && let Some(status) = c.try_wait()?
                {
                    bail!(
                        "auditd exited ({status}): {}",
                        child::tail(&dir.join("auditd.err"), 5)
                    );
                }
                if status_u64(&audit_status()?, "pid") == pid {
                    break;
                }
                if started.elapsed() > Duration::from_secs(15) {
                    bail!(
                        "auditd did not register with the kernel within 15 s: {}",
                        child::tail(&dir.join("auditd.err"), 5)
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            a.note = "auditd started by the bench (Debian's auditd.conf defaults, log in the run's directory)".to_owned();
        }
        // As Debian's /etc/audit/rules.d/audit.rules does: the kernel default (64) drops or
        // throttles at once under any load.
        auditctl(&["-b", "8192"])?;
        auditctl(&["-e", "1"])?;
        let mut rule = vec!["-a", "always,exit", "-F", "arch=b64"];
        for s in TRACED {
            rule.extend(["-S", s]);
        }
        rule.extend(["-k", AUDIT_KEY]);
        a.rules = true;
        auditctl(&rule)?;
        Ok(a)
    }

    /// Waits until the kernel's audit backlog is empty (bounded).
    pub fn settle(&self) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            child::check_interrupted()?;
            if status_u64(&audit_status()?, "backlog") == 0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Records the kernel dropped, and time callers spent throttled, so far (cumulative).
    pub fn loss(&self) -> (u64, u64) {
        let s = audit_status().unwrap_or_default();
        (
            status_u64(&s, "lost"),
            status_u64(&s, "backlog_wait_time_actual"),
        )
    }

    fn stop(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if self.rules {
            match remove_audit_rules() {
                Ok(()) => self.rules = false,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on the pid of our own child, not reaped yet.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            if child::wait(&mut c, Instant::now(), Duration::from_secs(10))
                .ok()
                .flatten()
                .is_none()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(b) = self.restore_backlog.take()
            && let Err(e) = auditctl(&["-b", &b])
        {
            errors.push(format!("{e:#}"));
        }
        if let Some(en) = self.restore_enabled.take()
            && let Err(e) = auditctl(&["-e", &en])
        {
            errors.push(format!("{e:#}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    /// Stops it now, failing if the rules could not be removed.
    pub fn finish(mut self) -> Result<()> {
        self.stop()
    }

    /// CPU time auditd and the kernel's `kauditd` thread have used so far.
    pub fn cpu_s(&self) -> f64 {
        let auditd = match &self.child {
            Some(c) => Some(c.id()),
            None => audit_status()
                .ok()
                .map(|s| status_u64(&s, "pid") as u32)
                .filter(|&p| p != 0),
        };
        let kauditd = kernel_thread("kauditd");
        auditd.map_or(0.0, cpu_of) + kauditd.map_or(0.0, cpu_of)
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: cleaning up auditd: {e}");
        }
    }
}
