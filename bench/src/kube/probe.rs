//! The prober: a long-lived process in one contender's node namespace (and, for berth, in the
//! cgroup its connect() hook is attached to: cgroup membership is per process, so the probes
//! cannot be threads of the bench) that answers "is this ClusterIP reachable yet, and by which
//! backend" with real TCP connections.
//!
//! The bench drives it with one command per stdin line and reads one JSON line per command:
//!
//! - `converge FILE TIMEOUT_MS`: the `ip:port` targets of FILE in creation order, walked with a
//!   cursor: the target under the cursor is retried every millisecond until a backend answers,
//!   then the cursor moves on. Answers when every target has answered once: the monotonic time
//!   of the last first answer, which is when the last service became reachable (to within a
//!   millisecond, plus the few microseconds per target checked after a blocked one).
//! - `verify FILE`: one connection per target; how many answered.
//! - `wait IP:PORT LO HI TIMEOUT_MS`: connects every half millisecond until the backend that
//!   answers has an index in LO..=HI (the change under test is visible); the monotonic time of
//!   that answer.
//!
//! Every backend answers a connection with one byte, its index (see `node.rs`). Times are
//! CLOCK_MONOTONIC nanoseconds, the clock the bench reads too ([`mono_ns`]).

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

/// Arguments of the hidden `kube-probe` subcommand (the bench passes them; not for users).
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Network namespace to run in (`/run/netns/NAME`).
    #[arg(long)]
    netns: PathBuf,
    /// cgroup v2 directory to join first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Child side: the `kube-probe` subcommand.
pub fn worker(args: &ProbeArgs) -> Result<()> {
    // Join the cgroup and the namespace while single-threaded.
    if let Some(cg) = &args.cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cg.display()))?;
    }
    let ns =
        File::open(&args.netns).with_context(|| format!("opening {}", args.netns.display()))?;
    // SAFETY: setns with a valid namespace fd, before any other thread exists.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("entering the node namespace");
    }
    drop(ns);
    let stdout = std::io::stdout();
    // SAFETY: fd 0 is this process's stdin, open for its whole life; ManuallyDrop never
    // closes it. A BufReader of our own lets `converge` see whether a command is waiting.
    let stdin = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    let mut input = BufReader::new(&*stdin);
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["converge", file, timeout_ms] => converge(
                Path::new(file),
                Duration::from_millis(timeout_ms.parse()?),
                &mut input,
            ),
            ["verify", file] => verify(Path::new(file)),
            ["wait", target, lo, hi, timeout_ms] => wait(
                target.parse()?,
                lo.parse()?,
                hi.parse()?,
                Duration::from_millis(timeout_ms.parse()?),
            ),
            ["quit"] => return Ok(()),
            // An abort that arrived after its converge finished: nothing to stop.
            ["abort"] => continue,
            _ => Err(anyhow!("unknown command {line:?}")),
        };
        let reply = reply.unwrap_or_else(|err| json!({"ok": false, "error": format!("{err:#}")}));
        let mut out = stdout.lock();
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
}

fn read_targets(file: &Path) -> Result<Vec<SocketAddrV4>> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim()
                .parse()
                .with_context(|| format!("bad target {l:?}"))
        })
        .collect()
}

/// Whether a line waits on stdin (the bench gave up waiting and sent `abort`); consumes it.
fn aborted(input: &mut BufReader<&File>) -> bool {
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let ready = !input.buffer().is_empty() || unsafe { libc::poll(&mut pfd, 1, 0) } > 0;
    if ready {
        let mut line = String::new();
        let _ = input.read_line(&mut line);
    }
    ready
}

fn converge(file: &Path, timeout: Duration, input: &mut BufReader<&File>) -> Result<Value> {
    let targets = read_targets(file)?;
    let addrs: Vec<libc::sockaddr_in> = targets.iter().map(sockaddr).collect();
    let deadline = Instant::now() + timeout;
    let mut cursor = 0;
    let mut attempts = 0u64;
    let mut last_ns = mono_ns();
    while cursor < addrs.len() {
        attempts += 1;
        if connect_once(&addrs[cursor]).is_ok() {
            last_ns = mono_ns();
            cursor += 1;
            continue;
        }
        let abort = aborted(input);
        if abort || Instant::now() >= deadline {
            return Ok(json!({
                "ok": false, "reached": cursor, "total": addrs.len(), "attempts": attempts,
                "blocked_at": targets[cursor].to_string(), "aborted": abort,
            }));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(json!({"ok": true, "t_ns": last_ns, "total": addrs.len(), "attempts": attempts}))
}

fn verify(file: &Path) -> Result<Value> {
    let targets = read_targets(file)?;
    let mut answered = 0usize;
    let mut first_failure = None;
    for t in &targets {
        match connect_once(&sockaddr(t)) {
            Ok(_) => answered += 1,
            Err(err) => {
                if first_failure.is_none() {
                    first_failure = Some(format!("{t}: {err}"));
                }
            }
        }
    }
    Ok(
        json!({"ok": true, "answered": answered, "total": targets.len(), "first_failure": first_failure}),
    )
}

fn wait(target: SocketAddrV4, lo: u8, hi: u8, timeout: Duration) -> Result<Value> {
    let addr = sockaddr(&target);
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let last = match connect_once(&addr) {
            Ok(b) if (lo..=hi).contains(&b) => {
                return Ok(json!({"ok": true, "t_ns": mono_ns(), "attempts": attempts}));
            }
            Ok(b) => format!("backend {b}"),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            return Ok(json!({"ok": false, "attempts": attempts, "last": last}));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn sockaddr(a: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// One connection: the byte the backend sent (its index). Closed with RST (no TIME_WAIT);
/// bounded by 1 s send and receive timeouts.
fn connect_once(addr: &libc::sockaddr_in) -> std::io::Result<u8> {
    // SAFETY: plain socket syscalls on an fd this function owns and always closes; every
    // pointer passed points to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let result = (|| {
            let tv = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            if libc::connect(
                fd,
                (addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut byte = 0u8;
            match libc::read(fd, (&raw mut byte).cast(), 1) {
                1 => Ok(byte),
                0 => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the first byte",
                )),
                _ => Err(std::io::Error::last_os_error()),
            }
        })();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
        libc::close(fd);
        result
    }
}

/// Parent side: a running prober.
pub struct Prober {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    stderr: PathBuf,
}

impl Prober {
    /// Starts `berth-bench kube-probe` in `netns` (and `cgroup`); killed when the bench dies.
    pub fn start(netns: &Path, cgroup: Option<&Path>, log: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the bench binary")?;
        let mut cmd = Command::new(exe);
        cmd.arg("kube-probe").arg("--netns").arg(netns);
        if let Some(cg) = cgroup {
            cmd.arg("--cgroup").arg(cg);
        }
        let stderr = log.with_extension("err");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr)?);
        // SAFETY: the closure runs between fork and exec and only calls prctl(2).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the prober")?;
        let stdin = child.stdin.take().context("prober stdin")?;
        let stdout = child.stdout.take().context("prober stdout")?;
        let (tx, replies) = mpsc::channel();
        std::thread::Builder::new()
            .name("prober-reader".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            child,
            stdin,
            replies,
            stderr,
        })
    }

    /// Sends one command (the reply is read with [`Prober::reply`]).
    pub fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}").context("writing to the prober")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The reply to the last command, waiting at most `limit`.
    pub fn reply(&mut self, limit: Duration) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            crate::services::child::check_interrupted()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the prober did not answer within {limit:?}");
            }
            match self
                .replies
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .with_context(|| format!("prober reply {line:?}"))?;
                    if let Some(err) = v["error"].as_str() {
                        bail!("prober: {err}");
                    }
                    return Ok(v);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                    "the prober exited: {}",
                    crate::services::child::tail(&self.stderr, 5)
                ),
            }
        }
    }

    /// Non-blocking: a reply if one is there.
    pub fn try_reply(&mut self) -> Result<Option<Value>> {
        match self.replies.try_recv() {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line)
                    .with_context(|| format!("prober reply {line:?}"))?;
                if let Some(err) = v["error"].as_str() {
                    bail!("prober: {err}");
                }
                Ok(Some(v))
            }
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => bail!(
                "the prober exited: {}",
                crate::services::child::tail(&self.stderr, 5)
            ),
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
