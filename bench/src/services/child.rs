//! Child processes with a time limit: every tool the bench runs (iptables-restore, nft, berth,
//! the load generator) is bounded, killed when its parent dies, and interruptible with Ctrl-C
//! so the namespace guards still run.

use std::{
    fs::File,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag that every wait loop checks, instead of killing the bench before
/// its guards delete the namespaces, the cgroup and the agent's pins. No SA_RESTART: a blocked
/// poll returns EINTR and sees the flag at once.
pub fn install_interrupt_handler() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic, which is async-signal-safe.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}

/// Fails once Ctrl-C (or SIGTERM) has been received.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// How a bounded child ended.
pub struct Finished {
    /// None: killed at the time limit.
    pub status: Option<ExitStatus>,
    /// Wall time from just before the spawn to the child's exit (or to the time limit).
    pub elapsed: Duration,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Finished {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The last lines of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_path, 15)
    }
}

/// The last `lines` lines of a file, trimmed.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Options for [`spawn`].
pub struct Spawn<'a> {
    /// Run in this network namespace (a `/run/netns/NAME` path), entered between fork and exec.
    pub netns: Option<&'a Path>,
    /// Stdout and stderr go to `<log>.out` / `<log>.err`: files never fill up and block the
    /// child the way an unread pipe would.
    pub log: &'a Path,
    pub stdin: Option<File>,
    /// Signal the child gets when the bench dies (SIGKILL for tools, SIGTERM for the agent so
    /// it shuts down cleanly).
    pub death_signal: libc::c_int,
}

/// Spawns `cmd` as [`Spawn`] says. The caller waits with [`wait`].
pub fn spawn(cmd: &mut Command, opts: Spawn<'_>) -> Result<(Child, Instant, PathBuf, PathBuf)> {
    let out_path = opts.log.with_extension("out");
    let err_path = opts.log.with_extension("err");
    cmd.stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .stdin(match opts.stdin {
            Some(f) => Stdio::from(f),
            None => Stdio::null(),
        });
    let netns = match opts.netns {
        Some(path) => {
            Some(File::open(path).with_context(|| format!("opening netns {}", path.display()))?)
        }
        None => None,
    };
    let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
    let death_signal = opts.death_signal;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe syscalls
    // (prctl, setns) on values computed before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    drop(netns);
    Ok((child, started, out_path, err_path))
}

/// Waits for `child` up to `limit` after `started`; kills it at the limit. Fails (after killing
/// it) when the bench is interrupted.
pub fn wait(child: &mut Child, started: Instant, limit: Duration) -> Result<Option<ExitStatus>> {
    // A pidfd turns "has the child exited" into a poll with a timeout: the exit is seen at once
    // (a sleep-and-retry loop would add its period to every measured program time).
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    let pidfd = (raw >= 0).then(|| {
        // SAFETY: raw is a fresh fd returned by pidfd_open, owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) }
    });
    let deadline = started + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        let slice = (deadline - now).min(Duration::from_millis(200));
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for at most `slice`; EINTR is handled by looping.
                unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as libc::c_int) };
            }
            None => std::thread::sleep(slice.min(Duration::from_millis(1))),
        }
    }
}

/// Runs `cmd` to completion or to `limit`, timing it.
pub fn run(cmd: &mut Command, opts: Spawn<'_>, limit: Duration) -> Result<Finished> {
    let (mut child, started, stdout_path, stderr_path) = spawn(cmd, opts)?;
    let status = wait(&mut child, started, limit)?;
    let elapsed = started.elapsed().min(limit);
    Ok(Finished {
        status,
        elapsed,
        stdout_path,
        stderr_path,
    })
}

/// Runs a short setup command (`ip`, `sysctl`), failing with its stderr.
pub fn run_quiet(program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write as _;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().with_context(|| format!("running {program}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
