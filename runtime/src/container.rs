//! The OCI lifecycle: create, start, state, kill, delete, run, exec, ps, pause, resume.
//!
//! `create` forks the container's init (see [`crate::init`]) and returns once it waits for
//! `start`; `start` connects to the container's exec socket, which releases the init to execve
//! the user's program. No daemon stays behind: the state directory and the kernel (pids,
//! cgroups, namespaces) are the only record.

use std::{
    collections::HashMap,
    io::Read as _,
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::Pid,
};
use oci_spec::runtime::{LinuxIdMapping, Process, Spec};

use crate::{
    cgroup_adapter::Cgroup,
    clone::{self, Forked},
    hooks,
    init::{self, InitConfig},
    spec::{self, Bundle},
    state::{self, Record, StateRoot, Status},
    sync::{self, Msg},
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("creating container {id}: {message}")]
    Create { id: String, message: String },
    #[error("container {id} is {status}: {action}")]
    WrongState {
        id: String,
        status: Status,
        action: String,
    },
    #[error("{op}: {errno}")]
    Sys {
        op: String,
        errno: nix::errno::Errno,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting container {id}: {message}")]
    Start { id: String, message: String },
    #[error("invalid signal {0:?}")]
    Signal(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

fn sys(op: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> RuntimeError {
    let op = op.into();
    move |errno| RuntimeError::Sys { op, errno }
}

fn io(op: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let (op, path) = (op.into(), path.to_owned());
    move |source| RuntimeError::Io { op, path, source }
}

/// Options of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// The OCI runtime, rooted at a state directory.
pub struct Runtime {
    pub root: StateRoot,
}

/// Removes what a failed `create` made, in reverse order.
struct CreateGuard<'a> {
    root: &'a StateRoot,
    id: String,
    cgroup: Option<Cgroup>,
    init_pid: Option<Pid>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.init_pid {
            let _ = kill(pid, Signal::SIGKILL);
        }
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup.kill_all(Signal::SIGKILL);
            if let Err(e) = cgroup.destroy() {
                tracing::warn!(id = %self.id, error = %e, "removing the cgroup of a failed create");
            }
        }
        let _ = self.root.remove(&self.id);
    }
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: StateRoot::new(root),
        }
    }

    /// `create`: the container exists, its init waits for `start`. Returns its record.
    pub fn create(&self, opts: &CreateOptions) -> Result<Record> {
        self.create_inner(opts, false)
    }

    fn create_inner(&self, opts: &CreateOptions, subreaper: bool) -> Result<Record> {
        let id = opts.id.as_str();
        state::validate_id(id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let create_err = |message: String| RuntimeError::Create {
            id: id.to_owned(),
            message,
        };
        let dir = self.root.create_dir(id)?;
        let mut guard = CreateGuard {
            root: &self.root,
            id: id.to_owned(),
            cgroup: None,
            init_pid: None,
            armed: true,
        };
        self.root.save_spec(id, &bundle.spec)?;
        let annotations: HashMap<String, String> =
            bundle.spec.annotations().clone().unwrap_or_default();

        let linux = bundle.spec.linux().as_ref();
        let cgroups_path = linux
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cgroup = Cgroup::open(&cgroups_path, id).map_err(RuntimeError::Cgroup)?;
        cgroup.create().map_err(RuntimeError::Cgroup)?;
        guard.cgroup = Some(cgroup);
        let cgroup = guard
            .cgroup
            .as_ref()
            .ok_or_else(|| create_err("cgroup lost".into()))?;

        let listener = bind_exec_socket(&dir)?;
        let console = match &opts.console_socket {
            Some(path) => {
                Some(UnixStream::connect(path).map_err(io("connecting to console socket", path))?)
            }
            None => None,
        };
        let mut record = Record {
            oci_version: bundle.spec.version().clone(),
            id: id.to_owned(),
            status: Status::Creating,
            pid: 0,
            bundle: bundle.dir.clone(),
            annotations,
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            init_start_time: 0,
            cgroups_path: cgroup.relative_path(),
            cgroup_id: cgroup.id().unwrap_or(0),
        };
        let (parent_chan, child_chan) = sync::pair().map_err(|e| create_err(e.to_string()))?;

        if subreaper {
            // `run` waits for the init itself: the init is our grandchild, so adopt it.
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
                return Err(sys("prctl(PR_SET_CHILD_SUBREAPER)")(
                    nix::errno::Errno::last(),
                ));
            }
        }
        let hook_state_creating = oci_state_json(&record);
        let cfg = InitConfig {
            spec: &bundle.spec,
            rootfs: &bundle.rootfs,
            cgroup: cgroup.manager(),
            cgroups_path: &record.cgroups_path,
            console: console.as_ref().map(|c| c.as_raw_fd()),
            exec_listener: listener.as_raw_fd(),
            preserve_fds: opts.preserve_fds,
            hook_state: &hook_state_creating,
        };
        // Stage 1 starts in the container's v2 cgroup and joins the v1 ones itself: no move by
        // pid from here, which would cost an RCU grace period (see `clone::fork_into`).
        let cgroup_dir = cgroup.open_v2_dir().map_err(RuntimeError::Cgroup)?;
        // SAFETY: the runtime process is single-threaded here (the CLI runs no threads before
        // create), so the child may run ordinary Rust code.
        let stage1 = match unsafe { clone::fork_into(cgroup_dir.as_ref().map(AsFd::as_fd)) }
            .map_err(sys("fork"))?
        {
            Forked::Child { in_cgroup } => {
                // A host cgroup directory has no business in the container's processes.
                drop(cgroup_dir);
                drop(parent_chan);
                init::stage1(&child_chan, &cfg, in_cgroup)
            }
            Forked::Parent { child } => child,
        };
        drop(cgroup_dir);
        drop(child_chan);
        let outcome = await_init_pid(
            || parent_chan.recv().map_err(|e| e.to_string()),
            || {
                write_id_maps(stage1, &bundle.spec)?;
                parent_chan.send(&Msg::Continue).map_err(|e| e.to_string())
            },
        );
        // Stage 1 exits right after reporting (or failing): reap it.
        let _ = waitpid(stage1, None);
        let (init_pid, hooks_requested) = outcome.map_err(create_err)?;
        guard.init_pid = Some(init_pid);
        record.pid = init_pid.as_raw();

        if !hooks_requested {
            parent_chan
                .expect(&Msg::RunCreateHooks)
                .map_err(create_err)?;
        }
        // Limits apply once the init has built its rootfs, as runc does: a v1 devices cgroup
        // would otherwise forbid the mknod of the container's device nodes.
        if let Some(linux) = linux {
            cgroup
                .apply(&effective_resources(linux))
                .map_err(RuntimeError::Cgroup)?;
        }
        let hooks_spec = bundle.spec.hooks().as_ref();
        let state_json = oci_state_json(&record);
        hooks::run(
            "prestart",
            hooks_spec.and_then(|h| h.prestart().as_ref()),
            &state_json,
        )?;
        hooks::run(
            "createRuntime",
            hooks_spec.and_then(|h| h.create_runtime().as_ref()),
            &state_json,
        )?;
        parent_chan
            .send(&Msg::Continue)
            .map_err(|e| create_err(e.to_string()))?;
        parent_chan.expect(&Msg::Created).map_err(create_err)?;

        record.status = Status::Created;
        record.init_start_time = state::proc_stat(record.pid)
            .map(|(start, _)| start)
            .ok_or_else(|| create_err("the container init exited before start".into()))?;
        self.root.save(&record)?;
        if let Some(pid_file) = &opts.pid_file {
            state::write_atomic(pid_file, record.pid.to_string().as_bytes())?;
        }
        drop(listener);
        guard.armed = false;
        Ok(record)
    }

    /// `start`: releases a created container's init to exec the user's program.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut record = self.root.load(id)?;
        let status = self.status(&record);
        if status != Status::Created {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                status,
                action: "only a created container can be started".into(),
            });
        }
        let dir = self.root.container_dir(id)?;
        let start_err = |message: String| RuntimeError::Start {
            id: id.to_owned(),
            message,
        };
        let mut conn = connect_exec_socket(&dir).map_err(|e| start_err(e.to_string()))?;
        // The init writes an error and exits if anything fails; on success execve closes the
        // connection (close-on-exec) and we read EOF.
        let mut message = String::new();
        let _ = conn.read_to_string(&mut message);
        let _ = std::fs::remove_file(dir.join("exec.sock"));
        if !message.is_empty() {
            return Err(start_err(message));
        }
        record.status = Status::Running;
        self.root.save(&record)?;
        let spec = self.root.load_spec(id)?;
        let state_json = oci_state_json(&record);
        if let Err(e) = hooks::run(
            "poststart",
            spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()),
            &state_json,
        ) {
            // The spec: a failing poststart hook is logged; the container keeps running.
            tracing::warn!(id, error = %e, "poststart hook failed");
        }
        Ok(())
    }

    /// The current status, derived from the kernel (see [`crate::state`]).
    pub fn status(&self, record: &Record) -> Status {
        if record.status == Status::Creating {
            return Status::Creating;
        }
        if !state::init_alive(record) {
            return Status::Stopped;
        }
        let created = self
            .root
            .container_dir(&record.id)
            .map(|d| d.join("exec.sock").exists())
            .unwrap_or(false);
        if created {
            return Status::Created;
        }
        if Cgroup::open(&record.cgroups_path, &record.id)
            .ok()
            .is_some_and(|cg| cg.is_frozen())
        {
            return Status::Paused;
        }
        Status::Running
    }

    /// `state`: the OCI state document with the live status.
    pub fn state(&self, id: &str) -> Result<Record> {
        let mut record = self.root.load(id)?;
        record.status = self.status(&record);
        if record.status == Status::Stopped {
            record.pid = 0;
        }
        Ok(record)
    }

    /// `kill`: sends `signal` to the init, or to every process of the container with `all`.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let record = self.root.load(id)?;
        let status = self.status(&record);
        if all {
            let cgroup = Cgroup::open(&record.cgroups_path, id).map_err(RuntimeError::Cgroup)?;
            return cgroup.kill_all(signal).map_err(RuntimeError::Cgroup);
        }
        if status == Status::Stopped {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                status,
                action: "there is no process to signal".into(),
            });
        }
        kill(Pid::from_raw(record.pid), signal)
            .map_err(sys(format!("kill({}, {signal})", record.pid)))
    }

    /// `delete`: removes a stopped container (with `force`, kills it first).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let record = match self.root.load(id) {
            Ok(record) => record,
            // runc: `delete --force` of a container that does not exist succeeds.
            Err(state::StateError::NotFound(_)) if force => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let status = self.status(&record);
        let cgroup = Cgroup::open(&record.cgroups_path, id).map_err(RuntimeError::Cgroup)?;
        if status != Status::Stopped {
            if !force {
                return Err(RuntimeError::WrongState {
                    id: id.to_owned(),
                    status,
                    action: "stop it first or use --force".into(),
                });
            }
            if status == Status::Paused {
                let _ = cgroup.thaw();
            }
            let _ = cgroup.kill_all(Signal::SIGKILL);
            let _ = kill(Pid::from_raw(record.pid), Signal::SIGKILL);
            wait_gone(&record, Duration::from_secs(10));
        }
        cgroup.destroy().map_err(RuntimeError::Cgroup)?;
        let spec = self.root.load_spec(id).ok();
        let mut stopped = record.clone();
        stopped.status = Status::Stopped;
        stopped.pid = 0;
        if let Some(spec) = spec
            && let Err(e) = hooks::run(
                "poststop",
                spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()),
                &oci_state_json(&stopped),
            )
        {
            tracing::warn!(id, error = %e, "poststop hook failed");
        }
        self.root.remove(id)?;
        Ok(())
    }

    /// `run`: create + start, then (unless `detach`) wait for the init, forwarding signals, and
    /// delete. Returns the exit code the way a shell reports it (128 + signal when killed).
    pub fn run(&self, opts: &CreateOptions, detach: bool) -> Result<i32> {
        let record = self.create_inner(opts, !detach)?;
        if detach {
            self.start(&opts.id)?;
            return Ok(0);
        }
        let init = Pid::from_raw(record.pid);
        let forwarder = SignalForwarder::install().map_err(sys("blocking signals"))?;
        if let Err(e) = self.start(&opts.id) {
            let _ = self.delete(&opts.id, true);
            return Err(e);
        }
        let code = forwarder.wait_for(init);
        drop(forwarder);
        self.delete(&opts.id, true)?;
        Ok(code)
    }

    /// `ps`: host pids of every process in the container.
    pub fn ps(&self, id: &str) -> Result<Vec<i32>> {
        let record = self.root.load(id)?;
        let cgroup = Cgroup::open(&record.cgroups_path, id).map_err(RuntimeError::Cgroup)?;
        cgroup.pids().map_err(RuntimeError::Cgroup)
    }

    /// `pause` (freeze every process) and `resume`.
    pub fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let record = self.root.load(id)?;
        let status = self.status(&record);
        let (want, action) = if pause {
            (Status::Running, "only a running container can be paused")
        } else {
            (Status::Paused, "only a paused container can be resumed")
        };
        if status != want {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                status,
                action: action.into(),
            });
        }
        let cgroup = Cgroup::open(&record.cgroups_path, id).map_err(RuntimeError::Cgroup)?;
        if pause {
            cgroup.freeze()
        } else {
            cgroup.thaw()
        }
        .map_err(RuntimeError::Cgroup)
    }

    /// Every container under the root with its live status.
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for id in self.root.list()? {
            if let Ok(record) = self.state(&id) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// `exec`: runs `process` inside a running container. Returns the exit code (foreground) or
    /// 0 once the process has exec'd (`detach`).
    pub fn exec(&self, id: &str, process: &Process, opts: &ExecOptions) -> Result<i32> {
        crate::exec::exec(self, id, process, opts)
    }
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// The spec's resources with the device rules every container needs appended, as runc does:
/// mknod of any node (creating is harmless, opening is what the rules guard), the default
/// device set, the pty devices, and every device `linux.devices` lists.
pub fn effective_resources(linux: &oci_spec::runtime::Linux) -> oci_spec::runtime::LinuxResources {
    use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};
    let mut resources = linux.resources().clone().unwrap_or_default();
    let Some(spec_rules) = resources.devices().clone() else {
        // No device rules at all: the container's cgroup keeps its parent's (allow-all).
        return resources;
    };
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_owned()));
        r
    };
    let mut rules = spec_rules;
    rules.push(rule(LinuxDeviceType::C, None, None, "m"));
    rules.push(rule(LinuxDeviceType::B, None, None, "m"));
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
    ] {
        rules.push(rule(LinuxDeviceType::C, Some(major), Some(minor), "rwm"));
    }
    // /dev/pts/*: Unix98 pty slaves.
    rules.push(rule(LinuxDeviceType::C, Some(136), None, "rwm"));
    for dev in linux.devices().iter().flatten() {
        let typ = match dev.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            _ => LinuxDeviceType::C,
        };
        rules.push(rule(typ, Some(dev.major()), Some(dev.minor()), "rwm"));
    }
    resources.set_devices(Some(rules));
    resources
}

/// The OCI state JSON handed to hooks on stdin.
pub fn oci_state_json(record: &Record) -> Vec<u8> {
    let doc = serde_json::json!({
        "ociVersion": record.oci_version,
        "id": record.id,
        "status": record.status,
        "pid": record.pid,
        "bundle": record.bundle,
        "annotations": record.annotations,
    });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Waits (bounded) for the container's init to exit, and reaps it if it is our child
/// (foreground `run`); otherwise its parent reaps it.
///
/// The wait blocks on a pidfd, which becomes readable when the process exits, rather than
/// checking in 5 ms steps: a SIGKILLed init is rarely gone at the first check, so the steps added
/// up to 5 ms to every `delete --force` (measured 6 vs 11 ms). Kernels without pidfd_open (before
/// 5.3) keep the steps.
fn wait_gone(record: &Record, timeout: Duration) {
    let pid = Pid::from_raw(record.pid);
    match pidfd_open(pid) {
        // Opened first, checked second: if the recorded init is alive now, the pidfd is its own
        // and not that of a later process that reused the pid.
        Ok(pidfd) if state::init_alive(record) => wait_readable(&pidfd, timeout),
        Ok(_) | Err(nix::errno::Errno::ESRCH) => {}
        Err(_) => {
            let deadline = Instant::now() + timeout;
            while state::init_alive(record) && Instant::now() < deadline {
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
}

/// `pidfd_open(2)`: a descriptor for `pid` that polls readable once it has exited.
fn pidfd_open(pid: Pid) -> nix::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| nix::errno::Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Blocks until `fd` polls readable or `timeout` passes (signals do not cut the wait short).
fn wait_readable(fd: &std::os::fd::OwnedFd, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::poll::poll_one(fd.as_fd(), libc::POLLIN, left) {
            Err(nix::errno::Errno::EINTR) if !left.is_zero() => {}
            _ => return,
        }
    }
}

/// Reads stage 1's messages until it reports the init's pid, writing the id maps when asked
/// (`map_ids`). Returns the pid and whether the init's `RunCreateHooks` already came: stage 2
/// runs as soon as stage 1 has forked it and both write to the one channel, so its first message
/// can overtake stage 1's `InitPid` (seen on a loaded 2-vCPU machine).
fn await_init_pid(
    mut recv: impl FnMut() -> std::result::Result<Msg, String>,
    mut map_ids: impl FnMut() -> std::result::Result<(), String>,
) -> std::result::Result<(Pid, bool), String> {
    let mut hooks_requested = false;
    loop {
        match recv()? {
            Msg::MapIds => map_ids()?,
            Msg::InitPid(pid) => return Ok((Pid::from_raw(pid), hooks_requested)),
            Msg::RunCreateHooks if !hooks_requested => hooks_requested = true,
            Msg::Error(e) => return Err(e),
            other => return Err(format!("unexpected message {other:?}")),
        }
    }
}

/// Writes the user namespace id maps of `pid` from the spec.
fn write_id_maps(pid: Pid, spec: &Spec) -> std::result::Result<(), String> {
    let linux = spec.linux().as_ref().ok_or("linux section missing")?;
    let render = |maps: &Option<Vec<LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, maps) in [
        ("uid_map", linux.uid_mappings()),
        ("gid_map", linux.gid_mappings()),
    ] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, render(maps)).map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(())
}

/// The exec socket lives in the container's state dir; bind by relative path so long ids do not
/// hit the 108-byte sun_path limit.
fn bind_exec_socket(dir: &Path) -> Result<UnixListener> {
    with_cwd(dir, || UnixListener::bind("exec.sock")).map_err(io("binding exec socket in", dir))
}

fn connect_exec_socket(dir: &Path) -> std::io::Result<UnixStream> {
    with_cwd(dir, || UnixStream::connect("exec.sock"))
}

fn with_cwd<T>(dir: &Path, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let old = std::env::current_dir()?;
    std::env::set_current_dir(dir)?;
    let result = f();
    std::env::set_current_dir(old)?;
    result
}

/// Blocks the signals a foreground runtime forwards (and SIGCHLD) and reads them from a
/// signalfd: no polling, no lost wake-ups.
pub struct SignalForwarder {
    fd: nix::sys::signalfd::SignalFd,
    old: nix::sys::signal::SigSet,
}

const FORWARDED: [Signal; 8] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

impl SignalForwarder {
    pub fn install() -> nix::Result<Self> {
        use nix::sys::{
            signal::{SigSet, SigmaskHow, sigprocmask},
            signalfd::{SfdFlags, SignalFd},
        };
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        for s in FORWARDED {
            set.add(s);
        }
        let mut old = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)?;
        Ok(Self { fd, old })
    }

    /// Restores the signal mask from before `install` (in a forked child about to exec).
    pub fn restore_mask(&self) {
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&self.old),
            None,
        );
    }

    /// Forwards signals to `pid` until it exits; returns its exit code.
    pub fn wait_for(&self, pid: Pid) -> i32 {
        loop {
            // Reap whatever has exited (we are a subreaper; stage-1 leftovers included).
            loop {
                match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
                    Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            match self.fd.read_signal() {
                Ok(Some(info)) => {
                    let signo = info.ssi_signo as i32;
                    if signo != Signal::SIGCHLD as i32
                        && let Ok(sig) = Signal::try_from(signo)
                    {
                        let _ = kill(pid, sig);
                    }
                }
                Ok(None) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return 255,
            }
        }
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        self.restore_mask();
    }
}

/// Parses `KILL`, `SIGKILL` or `9`.
pub fn parse_signal(text: &str) -> Result<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::Signal(text.to_owned()));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| RuntimeError::Signal(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `await_init_pid` over `msgs`; returns its result and how often it mapped ids.
    fn await_over(msgs: Vec<Msg>) -> (std::result::Result<(Pid, bool), String>, usize) {
        let mut msgs = msgs.into_iter();
        let mut mapped = 0;
        let result = await_init_pid(
            || msgs.next().ok_or_else(|| "closed".to_owned()),
            || {
                mapped += 1;
                Ok(())
            },
        );
        (result, mapped)
    }

    #[test]
    fn init_pid_is_awaited_whatever_the_order_of_the_two_stages() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            await_over(vec![Msg::MapIds, Msg::InitPid(42)]),
            (Ok((pid, false)), 1)
        );
        // Stage 2's request overtook stage 1's report.
        assert_eq!(
            await_over(vec![Msg::RunCreateHooks, Msg::InitPid(42)]),
            (Ok((pid, true)), 0)
        );
        assert_eq!(
            await_over(vec![Msg::Error("boom".into())]),
            (Err("boom".into()), 0)
        );
        let (twice, _) = await_over(vec![Msg::RunCreateHooks, Msg::RunCreateHooks]);
        assert!(twice.is_err_and(|e| e.contains("unexpected")));
        let (created, _) = await_over(vec![Msg::Created]);
        assert!(created.is_err_and(|e| e.contains("unexpected")));
        assert_eq!(await_over(vec![]).0, Err("closed".into()));
    }

    /// A record for a process this test spawned.
    fn record_of(child: &std::process::Child) -> Record {
        let pid = i32::try_from(child.id()).expect("pid");
        Record {
            oci_version: "1.0.2".into(),
            id: "t".into(),
            status: Status::Running,
            pid,
            bundle: "/b".into(),
            annotations: HashMap::new(),
            rootfs: "/b/rootfs".into(),
            created: state::now_rfc3339(),
            init_start_time: state::proc_stat(pid).expect("alive").0,
            cgroups_path: String::new(),
            cgroup_id: 0,
        }
    }

    #[test]
    #[expect(
        clippy::zombie_processes,
        reason = "wait_gone reaps the child: that is what the test checks"
    )]
    fn wait_gone_returns_once_the_init_exits_and_reaps_our_child() {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let record = record_of(&child);
        // Still running: the wait is bounded and leaves it alone.
        wait_gone(&record, Duration::from_millis(20));
        assert!(state::init_alive(&record));
        kill(Pid::from_raw(record.pid), Signal::SIGKILL).expect("kill");
        wait_gone(&record, Duration::from_secs(600));
        assert!(!state::init_alive(&record));
        // Reaped by wait_gone: no zombie is left behind.
        assert!(state::proc_stat(record.pid).is_none());
        // Already gone: returns at once.
        wait_gone(&record, Duration::from_secs(600));
    }

    #[test]
    fn signals_parse_in_every_spelling() {
        assert_eq!(parse_signal("KILL").expect("name"), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").expect("sig name"), Signal::SIGTERM);
        assert_eq!(parse_signal("9").expect("number"), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
