//! The daemonless container engine behind `berth run`, `ps`, `stop`, `rm`, `logs`, `exec`,
//! `inspect` and the image commands.
//!
//! No daemon: each container's record lives in `<root>/containers/<id>/container.json` next to
//! its bundle (`config.json`, the overlayfs `rootfs`) and its log. A detached container gets a
//! small monitor process (like Podman's conmon): it is the container init's parent (a child
//! subreaper), waits for it and records the exit code. A foreground `berth run` is its own
//! monitor and relays the container's output to the terminal and the log.
//!
//! Every lifecycle change is recorded where the data plane can find it: the `CONTAINERS` map
//! (keyed by cgroup id, created and pinned if no agent did so yet) and, when an agent runs, an
//! event on its API socket.

pub mod cli;
pub mod spec;

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use berth_common::ContainerRecord;
use berth_image::{ImageStore, Rootfs};
use berth_runtime::{
    container::{CreateOptions, ExecOptions, Runtime, SignalForwarder, parse_signal},
    state::{Status, now_rfc3339, write_atomic},
};
use nix::unistd::{ForkResult, fork};
use serde::{Deserialize, Serialize};

use crate::dataplane::containers;

/// Where the engine keeps its state.
#[derive(Debug, Clone)]
pub struct EnginePaths {
    /// `/var/lib/berth`: containers/ and images/.
    pub root: PathBuf,
    /// The OCI runtime's state root (shared with `berth-runc`).
    pub runtime_root: PathBuf,
    /// bpffs pin root of the data plane (for the CONTAINERS map).
    pub pin_root: PathBuf,
    /// The agent's API socket (notified when present).
    pub api_socket: PathBuf,
}

/// What berth knows of a container beyond the OCI state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub command: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i32>,
    pub pid: i32,
    pub cgroup_id: u64,
    pub stop_signal: String,
    pub auto_remove: bool,
    /// Keys of the image layers the rootfs uses (kept from image garbage collection).
    pub layers: Vec<String>,
}

/// `berth run` options.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub detach: bool,
    pub auto_remove: bool,
    pub image: String,
    pub spec: spec::RunSpec,
}

pub struct Engine {
    pub paths: EnginePaths,
    pub runtime: Runtime,
}

fn random_id() -> Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Container names: what Docker accepts.
fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        bail!("invalid container name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    }
}

impl Engine {
    pub fn new(paths: EnginePaths) -> Self {
        let runtime = Runtime::new(&paths.runtime_root);
        Self { paths, runtime }
    }

    pub fn images(&self) -> Result<ImageStore> {
        Ok(ImageStore::open(self.paths.root.join("images"))?)
    }

    fn containers_dir(&self) -> PathBuf {
        self.paths.root.join("containers")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    pub fn list(&self) -> Result<Vec<ContainerMeta>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(self.containers_dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for entry in entries.flatten() {
            let path = entry.path().join("container.json");
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(meta) = serde_json::from_slice::<ContainerMeta>(&bytes)
            {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Finds a container by name, full id or unique id prefix.
    pub fn find(&self, key: &str) -> Result<ContainerMeta> {
        let all = self.list()?;
        if let Some(m) = all.iter().find(|m| m.name == key || m.id == key) {
            return Ok(m.clone());
        }
        let matches: Vec<&ContainerMeta> = all.iter().filter(|m| m.id.starts_with(key)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!("no such container: {key}"),
            _ => bail!("{key} matches several containers; use more of the id or the name"),
        }
    }

    fn save(&self, meta: &ContainerMeta) -> Result<()> {
        write_atomic(
            &self.dir(&meta.id).join("container.json"),
            &serde_json::to_vec_pretty(meta)?,
        )?;
        Ok(())
    }

    /// The live status: the OCI runtime's view, or "exited" once its state is gone.
    pub fn status(&self, meta: &ContainerMeta) -> Status {
        match self.runtime.state(&meta.id) {
            Ok(record) => record.status,
            Err(_) => Status::Stopped,
        }
    }

    /// Creates the container (rootfs, bundle, runtime create) without starting it.
    fn create(&self, opts: &RunOptions) -> Result<ContainerMeta> {
        let store = self.images()?;
        let image = store.resolve(&opts.image)?;
        let image_config = store.config(&image)?;
        let id = random_id()?;
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| format!("berth-{}", &id[..12]));
        validate_name(&name)?;
        std::fs::create_dir_all(self.containers_dir())?;
        let _lock = berth_image::lock::FileLock::exclusive(&self.containers_dir().join(".lock"))
            .map_err(|e| anyhow!("locking the container list: {e}"))?;
        if self.list()?.iter().any(|m| m.name == name) {
            bail!("the container name {name:?} is already in use");
        }
        let dir = self.dir(&id);
        std::fs::create_dir_all(&dir)?;
        let cleanup_dir = Guard::new(|| {
            let _ = Rootfs::at(&dir).remove();
            let _ = std::fs::remove_dir_all(&dir);
        });
        let rootfs = Rootfs::mount(&store.layer_dirs(&image)?, &dir)?;
        let mut run = opts.spec.clone();
        run.hostname = if run.hostname.is_empty() {
            id[..12].to_owned()
        } else {
            run.hostname
        };
        run.cgroups_path = format!("/berth/{id}");
        run.annotations.insert("io.berth.name".into(), name.clone());
        run.annotations
            .insert("io.berth.image".into(), image.name.clone());
        for (k, v) in &opts.labels {
            run.annotations
                .insert(format!("io.berth.label.{k}"), v.clone());
        }
        let oci = spec::build(&image_config, &run, &rootfs.path()).map_err(|e| anyhow!(e))?;
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&oci)?)?;
        let meta = ContainerMeta {
            id: id.clone(),
            name,
            image: image.name.clone(),
            image_id: image.id.to_string(),
            command: oci
                .process()
                .as_ref()
                .and_then(|p| p.args().clone())
                .unwrap_or_default(),
            labels: opts.labels.clone(),
            created: now_rfc3339(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            pid: 0,
            cgroup_id: 0,
            stop_signal: image_config
                .stop_signal
                .clone()
                .unwrap_or_else(|| "SIGTERM".into()),
            auto_remove: opts.auto_remove,
            layers: image.layers.iter().map(|l| l.key()).collect(),
        };
        self.save(&meta)?;
        cleanup_dir.disarm();
        Ok(meta)
    }

    /// `berth run`: returns the exit code to exit with (the container's, or 0 with `-d`).
    pub fn run(&self, opts: &RunOptions) -> Result<i32> {
        let meta = self.create(opts)?;
        let result = if opts.detach {
            self.run_detached(meta.clone())
        } else {
            self.run_foreground(meta.clone())
        };
        if result.is_err() {
            // Nothing half-made stays behind.
            let _ = self.remove(&meta.id, true);
        }
        result
    }

    fn runtime_create(&self, meta: &ContainerMeta) -> Result<i32> {
        let record = self.runtime.create(&CreateOptions {
            id: meta.id.clone(),
            bundle: self.dir(&meta.id),
            ..Default::default()
        })?;
        bring_up_loopback(record.pid)?;
        Ok(record.pid)
    }

    /// Records the started container in the data plane and tells the agent.
    fn started(&self, meta: &mut ContainerMeta, pid: i32) -> Result<()> {
        let record = self.runtime.state(&meta.id)?;
        meta.pid = pid;
        meta.cgroup_id = record.cgroup_id;
        meta.started_at = Some(now_rfc3339());
        self.save(meta)?;
        if meta.cgroup_id != 0 {
            containers::register(
                &self.paths.pin_root,
                meta.cgroup_id,
                ContainerRecord::default(),
            )
            .map_err(|e| anyhow!("recording the container for the data plane: {e}"))?;
        }
        self.notify("start", meta);
        Ok(())
    }

    fn exited(&self, id: &str, code: i32) {
        if let Ok(mut meta) = self.find(id) {
            meta.exit_code = Some(code);
            meta.finished_at = Some(now_rfc3339());
            let _ = self.save(&meta);
            self.notify("exit", &meta);
            if meta.auto_remove {
                let _ = self.remove(id, true);
            }
        }
    }

    fn run_foreground(&self, mut meta: ContainerMeta) -> Result<i32> {
        let log = open_log(&self.dir(&meta.id))?;
        // The init is our grandchild: adopt it so we can wait for it.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        // The container's stdout/stderr are pipes we relay to our own and to the log.
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let pid = with_stdio(&out_w, &err_w, || self.runtime_create(&meta))?;
        drop((out_w, err_w));
        let forwarder = SignalForwarder::install()?;
        let relays = [relay(out_r, 1, log.try_clone()?), relay(err_r, 2, log)];
        self.runtime.start(&meta.id)?;
        self.started(&mut meta, pid)?;
        let code = forwarder.wait_for(nix::unistd::Pid::from_raw(pid));
        drop(forwarder);
        for r in relays {
            let _ = r.join();
        }
        self.exited(&meta.id, code);
        Ok(code)
    }

    fn run_detached(&self, meta: ContainerMeta) -> Result<i32> {
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: the CLI is single-threaded here; the child runs the monitor and exits.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(ready_r);
                let mut ready = Some(File::from(ready_w));
                let code = match self.monitor(meta, &mut ready) {
                    Ok(()) => 0,
                    Err(e) => {
                        if let Some(mut f) = ready.take() {
                            let _ = write!(f, "error: {}", crate::error_chain(&e));
                        }
                        1
                    }
                };
                // SAFETY: ends the monitor without running the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { .. } => {
                drop(ready_w);
                // One message ("started" or "error: ..."), or EOF if the monitor died.
                let mut buf = vec![0u8; 64 * 1024];
                let n = File::from(ready_r).read(&mut buf)?;
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Some(err) = answer.strip_prefix("error: ") {
                    bail!("{err}");
                }
                if !answer.starts_with("started") {
                    bail!("the container monitor exited before the container started");
                }
                println!("{}", meta.id);
                Ok(0)
            }
        }
    }

    /// The monitor of a detached container: its own session, the container's log as stdio, the
    /// init's (sub)reaper, and the recorder of its exit code.
    fn monitor(&self, mut meta: ContainerMeta, ready: &mut Option<File>) -> Result<()> {
        nix::unistd::setsid()?;
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let log = open_log(&self.dir(&meta.id))?;
        let devnull = File::open("/dev/null")?;
        nix::unistd::dup2_stdin(&devnull)?;
        nix::unistd::dup2_stdout(&log)?;
        nix::unistd::dup2_stderr(&log)?;
        let pid = self.runtime_create(&meta)?;
        let forwarder = SignalForwarder::install()?;
        self.runtime.start(&meta.id)?;
        self.started(&mut meta, pid)?;
        if let Some(mut f) = ready.take() {
            f.write_all(b"started")?;
        }
        let code = forwarder.wait_for(nix::unistd::Pid::from_raw(pid));
        self.exited(&meta.id, code);
        Ok(())
    }

    /// `berth stop`: the image's stop signal, then SIGKILL after `timeout`.
    pub fn stop(&self, key: &str, timeout: Duration) -> Result<ContainerMeta> {
        let meta = self.find(key)?;
        let status = self.status(&meta);
        if matches!(status, Status::Stopped) {
            return Ok(meta);
        }
        if status == Status::Paused {
            self.runtime.pause(&meta.id, false)?;
        }
        let signal = parse_signal(&meta.stop_signal)?;
        self.runtime.kill(&meta.id, signal, false)?;
        if !wait_exit(meta.pid, timeout) {
            self.runtime
                .kill(&meta.id, nix::sys::signal::Signal::SIGKILL, true)?;
            wait_exit(meta.pid, Duration::from_secs(10));
        }
        // Give the monitor a moment to record the exit code.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let current = self.find(&meta.id)?;
            if current.exit_code.is_some() || Instant::now() > deadline {
                return Ok(current);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `berth rm`: removes a stopped container (`force`: stops it first).
    pub fn remove(&self, key: &str, force: bool) -> Result<ContainerMeta> {
        let meta = self.find(key)?;
        let status = self.status(&meta);
        if !matches!(status, Status::Stopped) {
            if !force {
                bail!(
                    "container {} is {status}: stop it first or use --force",
                    meta.name
                );
            }
            self.runtime
                .kill(&meta.id, nix::sys::signal::Signal::SIGKILL, true)
                .ok();
            wait_exit(meta.pid, Duration::from_secs(10));
        }
        match self.runtime.delete(&meta.id, true) {
            Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
        if meta.cgroup_id != 0
            && let Err(e) = containers::unregister(&self.paths.pin_root, meta.cgroup_id)
        {
            tracing::warn!(id = %meta.id, error = %e, "removing the data plane record");
        }
        let dir = self.dir(&meta.id);
        Rootfs::at(&dir)
            .remove()
            .map_err(|e| anyhow!("unmounting the rootfs: {e}"))?;
        std::fs::remove_dir_all(&dir)?;
        self.notify("remove", &meta);
        Ok(meta)
    }

    /// `berth exec`.
    pub fn exec(
        &self,
        key: &str,
        command: Vec<String>,
        env: Vec<String>,
        detach: bool,
    ) -> Result<i32> {
        let meta = self.find(key)?;
        let spec = self.runtime.root.load_spec(&meta.id)?;
        let mut process = spec.process().clone().context("container has no process")?;
        process.set_args(Some(command));
        process.set_terminal(Some(false));
        let mut all_env = process.env().clone().unwrap_or_default();
        all_env.extend(env);
        process.set_env(Some(all_env));
        Ok(self.runtime.exec(
            &meta.id,
            &process,
            &ExecOptions {
                detach,
                ..Default::default()
            },
        )?)
    }

    pub fn log_path(&self, meta: &ContainerMeta) -> PathBuf {
        self.dir(&meta.id).join("container.log")
    }

    /// Everything about a container, for `berth inspect`.
    pub fn inspect(&self, key: &str) -> Result<serde_json::Value> {
        let meta = self.find(key)?;
        let state = self.runtime.state(&meta.id).ok();
        let spec: Option<serde_json::Value> = std::fs::read(self.dir(&meta.id).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let record = containers::lookup(&self.paths.pin_root, meta.cgroup_id)
            .ok()
            .flatten();
        Ok(serde_json::json!({
            "Id": meta.id,
            "Name": meta.name,
            "Image": meta.image,
            "ImageId": meta.image_id,
            "Command": meta.command,
            "Labels": meta.labels,
            "Created": meta.created,
            "State": {
                "Status": state.as_ref().map(|s| s.status.to_string()).unwrap_or_else(|| "stopped".into()),
                "Pid": state.as_ref().map(|s| s.pid).unwrap_or(0),
                "StartedAt": meta.started_at,
                "FinishedAt": meta.finished_at,
                "ExitCode": meta.exit_code,
            },
            "CgroupId": meta.cgroup_id,
            "CgroupsPath": state.as_ref().map(|s| s.cgroups_path.clone()),
            "NetNs": state.as_ref().filter(|s| s.pid > 0).map(|s| format!("/proc/{}/ns/net", s.pid)),
            "DataPlaneRecord": record.map(|r| serde_json::json!({
                "ipv4": std::net::Ipv4Addr::from(u32::from_be(r.ipv4)).to_string(),
                "host_ifindex": r.host_ifindex, "identity": r.identity, "flags": r.flags,
            })),
            "LogPath": self.log_path(&meta),
            "Config": spec,
        }))
    }

    /// Layer keys used by any container (kept from image garbage collection).
    pub fn layers_in_use(&self) -> Result<HashSet<String>> {
        Ok(self.list()?.into_iter().flat_map(|m| m.layers).collect())
    }

    /// Best-effort event to a running agent (it never blocks a container for long).
    fn notify(&self, event: &str, meta: &ContainerMeta) {
        if !self.paths.api_socket.exists() {
            return;
        }
        let body = serde_json::json!({
            "event": event,
            "id": meta.id,
            "name": meta.name,
            "labels": meta.labels,
            "cgroup_id": meta.cgroup_id,
            "pid": meta.pid,
            "netns": (meta.pid > 0 && event == "start").then(|| format!("/proc/{}/ns/net", meta.pid)),
            "exit_code": meta.exit_code,
        });
        let socket = self.paths.api_socket.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            let result = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_millis(500),
                    crate::client::post_json(&socket, crate::api::paths::CONTAINER_EVENTS, &body),
                )
                .await
            });
            if let Ok(Err(e)) = result {
                tracing::debug!(error = %e, "notifying the agent");
            }
        }
    }
}

/// Runs `f` with fds 1 and 2 pointing at `out` and `err` (the container inherits them), then
/// restores ours.
fn with_stdio<T>(out: &OwnedFd, err: &OwnedFd, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let saved_out = nix::unistd::dup(std::io::stdout())?;
    let saved_err = nix::unistd::dup(std::io::stderr())?;
    nix::unistd::dup2_stdout(out)?;
    nix::unistd::dup2_stderr(err)?;
    let result = f();
    nix::unistd::dup2_stdout(&saved_out)?;
    nix::unistd::dup2_stderr(&saved_err)?;
    result
}

/// Copies a container output pipe to our fd `to` and to the log until EOF.
fn relay(from: OwnedFd, to: i32, mut log: File) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut from = File::from(from);
        // SAFETY: fds 1/2 live for the whole process; ManuallyDrop keeps us from closing them.
        let mut to = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(to) });
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = to.write_all(&buf[..n]);
                    let _ = log.write_all(&buf[..n]);
                }
            }
        }
    })
}

fn open_log(dir: &Path) -> Result<File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("container.log"))?)
}

/// Waits up to `timeout` for process `pid` to exit (it is not our child: pidfd + poll).
fn wait_exit(pid: i32, timeout: Duration) -> bool {
    if pid <= 0 {
        return true;
    }
    // SAFETY: pidfd_open with a pid and no flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return true; // gone already
    }
    // SAFETY: the syscall returned a fresh descriptor we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    ready > 0
}

/// A new network namespace starts with `lo` down; containers expect 127.0.0.1 to work.
fn bring_up_loopback(pid: i32) -> Result<()> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: single-threaded CLI; the child only makes a few syscalls and _exits.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let ok =
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).is_ok() && set_lo_up();
            // SAFETY: ends the helper child without atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
            other => bail!("bringing up lo in the container's network namespace: {other:?}"),
        },
    }
}

fn set_lo_up() -> bool {
    // SAFETY: plain socket/ioctl calls on a struct ifreq we own.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return false;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let ok = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) == 0
        };
        libc::close(sock);
        ok
    }
}

/// Runs a clean-up closure on drop unless disarmed.
struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Guard<F> {
    fn new(f: F) -> Self {
        Self(Some(f))
    }
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}
