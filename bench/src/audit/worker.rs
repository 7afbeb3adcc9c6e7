//! The workloads, run by a worker process of the bench itself (`berth-bench audit-worker`,
//! hidden) inside the cgroup under test, and the parent's side of starting one.
//!
//! The worker prepares everything it needs (paths, argv, the destination directory, the open
//! `cgroup.procs`) outside the cgroup, then moves itself into the cgroup by writing `0` to
//! `cgroup.procs`, says `ready <pid>` on stdout and waits for `go` on stdin. Between `ready`
//! and `go` the parent attaches what needs a pid (`strace -p`). The worker times the work
//! itself (monotonic clock, read through the vDSO: no syscall) and prints one JSON line. So
//! the audited cgroup sees exactly the workload's syscalls between `go` and the result (plus the
//! result's own write): nothing of the bench's start-up.

use std::{
    ffi::CString,
    io::{BufRead as _, Write as _},
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::{ffi::OsStrExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// What a worker does between `go` and its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Work {
    /// N × (openat(PATH, O_RDONLY) + close).
    Loop,
    /// fork + exec `TAR -xf PATH -C DEST` and wait for it.
    Tar,
    /// N × (fork + exec PATH + wait).
    Exec,
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    work: Work,
    /// The cgroup to move into before `ready` (its `cgroup.procs`).
    #[arg(long)]
    cgroup_procs: PathBuf,
    /// Loop iterations or executions.
    #[arg(long, default_value_t = 0)]
    n: u64,
    /// loop: the file opened; tar: the archive; exec: the program.
    #[arg(long)]
    path: PathBuf,
    /// tar: the (new, empty) directory extracted into.
    #[arg(long)]
    dest: Option<PathBuf>,
    /// tar: the tar program.
    #[arg(long, default_value = "/usr/bin/tar")]
    tar: PathBuf,
    /// Pin the worker (and what it starts) to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// The worker's answer (one JSON line on stdout).
#[derive(Clone, Debug, Default)]
pub struct WorkerResult {
    pub elapsed_s: f64,
    /// The worker's and its children's CPU time over the same span.
    pub cpu_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL", p.display()))
}

/// The hidden `audit-worker` subcommand.
pub fn worker(args: &WorkerArgs) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to(cpu)?;
    }
    let path = cstring(&args.path)?;
    // Everything the timed part needs is built here, outside the cgroup.
    let tar_argv: Vec<CString>;
    let mut argv_ptrs: Vec<*const libc::c_char> = Vec::new();
    let envp_strings = [c"PATH=/usr/bin:/bin", c"LC_ALL=C"];
    let envp: Vec<*const libc::c_char> = envp_strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let program: CString;
    match args.work {
        Work::Loop => {
            if !args.path.is_file() {
                bail!("{} is not a file", args.path.display());
            }
            program = path.clone();
        }
        Work::Tar => {
            let dest = args.dest.as_ref().context("--dest is needed for tar")?;
            std::fs::create_dir_all(dest)
                .with_context(|| format!("creating {}", dest.display()))?;
            program = cstring(&args.tar)?;
            tar_argv = vec![
                program.clone(),
                c"-xf".to_owned(),
                path.clone(),
                c"-C".to_owned(),
                cstring(dest)?,
            ];
            argv_ptrs = tar_argv.iter().map(|s| s.as_ptr()).collect();
            argv_ptrs.push(std::ptr::null());
        }
        Work::Exec => {
            program = path.clone();
            argv_ptrs = vec![program.as_ptr(), std::ptr::null()];
        }
    }
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&args.cgroup_procs)
        .with_context(|| format!("opening {}", args.cgroup_procs.display()))?;
    // "0": the writing process itself.
    // SAFETY: write of a 1-byte buffer to an fd we own.
    if unsafe { libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) } != 1 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("moving into {}", args.cgroup_procs.display()));
    }
    drop(procs);
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", std::process::id())?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("expected `go` on stdin, got {line:?}");
    }

    let cpu_before = cpu_s();
    let started = Instant::now();
    let (errors, first_error) = match args.work {
        Work::Loop => open_close_loop(&path, args.n),
        Work::Tar => spawn_and_wait(&program, &argv_ptrs, &envp, 1),
        Work::Exec => spawn_and_wait(&program, &argv_ptrs, &envp, args.n),
    };
    let elapsed = started.elapsed();
    let cpu = cpu_s() - cpu_before;

    let result = serde_json::json!({
        "elapsed_s": elapsed.as_secs_f64(),
        "cpu_s": cpu,
        "errors": errors,
        "first_error": first_error,
    });
    writeln!(out, "{result}")?;
    out.flush()?;
    Ok(())
}

/// User + system time of this process and its waited-for children, in seconds.
fn cpu_s() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: a zeroed rusage is a valid output buffer.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage into a buffer we own.
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            total += tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    total
}

fn open_close_loop(path: &CString, n: u64) -> (u64, Option<String>) {
    let mut errors = 0;
    let mut first = None;
    for _ in 0..n {
        // SAFETY: a NUL-terminated path; the fd returned is ours and closed at once.
        let fd = unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            errors += 1;
            first.get_or_insert_with(|| format!("openat: {}", std::io::Error::last_os_error()));
        } else {
            // SAFETY: closing the fd just opened.
            unsafe { libc::close(fd) };
        }
    }
    (errors, first)
}

/// `n` × (fork, execve in the child, waitpid): a failed exec or a non-zero exit is an error.
fn spawn_and_wait(
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    n: u64,
) -> (u64, Option<String>) {
    let mut errors = 0;
    let mut first = None;
    for _ in 0..n {
        // SAFETY: the worker is single-threaded; the child calls only execve and _exit
        // (async-signal-safe) on values built before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            errors += 1;
            first.get_or_insert_with(|| format!("fork: {}", std::io::Error::last_os_error()));
            continue;
        }
        if pid == 0 {
            // SAFETY: NULL-terminated argv and envp of NUL-terminated strings.
            unsafe {
                libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            errors += 1;
            first.get_or_insert_with(|| {
                format!("{program:?} ended with wait status {status:#x} (waitpid {rc})")
            });
        }
    }
    (errors, first)
}

/// Pins the calling process to one CPU.
pub fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET with an index below CPU_SETSIZE.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// The parent's side: a worker started, ready in its cgroup, waiting for `go`.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    pub pid: u32,
    deadline: Instant,
    log: PathBuf,
}

/// What the parent asks of a worker.
pub struct Spec<'a> {
    pub work: Work,
    pub cgroup: &'a Path,
    pub n: u64,
    pub path: &'a Path,
    pub dest: Option<&'a Path>,
    pub tar: &'a Path,
    pub cpu: Option<usize>,
    /// Stderr goes to `<log>.err`.
    pub log: &'a Path,
    /// From the start to the result.
    pub limit: Duration,
}

impl Running {
    /// Starts a worker and waits until it is in its cgroup and ready.
    pub fn start(spec: &Spec<'_>) -> Result<Self> {
        let exe = std::env::current_exe().context("locating berth-bench")?;
        let mut cmd = Command::new(exe);
        cmd.arg("audit-worker")
            .arg("--work")
            .arg(match spec.work {
                Work::Loop => "loop",
                Work::Tar => "tar",
                Work::Exec => "exec",
            })
            .arg("--cgroup-procs")
            .arg(spec.cgroup.join("cgroup.procs"))
            .arg("--n")
            .arg(spec.n.to_string())
            .arg("--path")
            .arg(spec.path)
            .arg("--tar")
            .arg(spec.tar);
        if let Some(dest) = spec.dest {
            cmd.arg("--dest").arg(dest);
        }
        if let Some(cpu) = spec.cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        let log = spec.log.with_extension("err");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        // SAFETY: prctl between fork and exec is async-signal-safe and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let deadline = Instant::now() + spec.limit;
        let mut child = cmd.spawn().context("starting the audit worker")?;
        let stdin = child.stdin.take();
        let stdout = LineReader::new(child.stdout.take().context("no stdout")?);
        let mut running = Running {
            child,
            stdin,
            stdout,
            pid: 0,
            deadline,
            log,
        };
        let ready_by = (Instant::now() + Duration::from_secs(30)).min(deadline);
        let line = running
            .line(ready_by)
            .context("waiting for the worker's `ready`")?;
        running.pid = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .with_context(|| format!("the worker said {line:?}, not `ready <pid>`"))?;
        Ok(running)
    }

    fn line(&mut self, by: Instant) -> Result<String> {
        match self.stdout.read_line(by)? {
            Some(line) => Ok(line),
            None => {
                let status = self.child.try_wait().ok().flatten();
                bail!(
                    "no answer from the worker ({}); its stderr: {}",
                    status.map_or("still running".to_owned(), |s| s.to_string()),
                    crate::services::child::tail(&self.log, 5)
                )
            }
        }
    }

    /// Tells the worker to start, waits for its result. `Ok(None)`: the time limit passed (the
    /// worker is killed).
    pub fn go(mut self) -> Result<Option<WorkerResult>> {
        let mut stdin = self.stdin.take().context("worker stdin already used")?;
        stdin.write_all(b"go\n")?;
        drop(stdin);
        let line = match self.stdout.read_line(self.deadline)? {
            Some(line) => line,
            None if Instant::now() >= self.deadline => return Ok(None),
            None => {
                let status = crate::services::child::wait(
                    &mut self.child,
                    Instant::now(),
                    Duration::from_secs(5),
                )?;
                bail!(
                    "the worker ended without a result ({}): {}",
                    status.map_or("killed".to_owned(), |s| s.to_string()),
                    crate::services::child::tail(&self.log, 5)
                )
            }
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("the worker's result {line:?}"))?;
        let status =
            crate::services::child::wait(&mut self.child, Instant::now(), Duration::from_secs(10))?;
        if !status.is_some_and(|s| s.success()) {
            bail!(
                "the worker exited with {status:?}: {}",
                crate::services::child::tail(&self.log, 5)
            );
        }
        Ok(Some(WorkerResult {
            elapsed_s: v["elapsed_s"].as_f64().context("no elapsed_s")?,
            cpu_s: v["cpu_s"].as_f64().unwrap_or(f64::NAN),
            errors: v["errors"].as_u64().unwrap_or(0),
            first_error: v["first_error"].as_str().map(str::to_owned),
        }))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines from a pipe, with a deadline (poll, then read what is there).
struct LineReader {
    pipe: ChildStdout,
    buf: Vec<u8>,
    eof: bool,
}

impl LineReader {
    fn new(pipe: ChildStdout) -> Self {
        Self {
            pipe,
            buf: Vec::new(),
            eof: false,
        }
    }

    fn fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    /// The next line (without its newline); `None` at EOF or at the deadline.
    fn read_line(&mut self, deadline: Instant) -> Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            if self.eof {
                return Ok(None);
            }
            crate::services::child::check_interrupted()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let slice = (deadline - now).min(Duration::from_millis(200));
            let mut pfd = libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; EINTR just loops.
            let rc = unsafe { libc::poll(&mut pfd, 1, slice.as_millis().max(1) as libc::c_int) };
            if rc <= 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            // SAFETY: reading into a local buffer of that length from our pipe.
            let n = unsafe { libc::read(self.fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
            match n {
                0 => self.eof = true,
                n if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(err).context("reading the worker's stdout");
                    }
                }
            }
        }
    }
}
