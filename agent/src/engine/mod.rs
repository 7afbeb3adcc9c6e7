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
//!
//! Networking (`--network bridge`, the default): the address is leased while the container is
//! created (its `/etc/hosts` names it), the veth pair is made once the runtime has created the
//! container's namespaces and before its process starts, and everything is undone in reverse by
//! `berth rm` (or a failed run). A container that exits keeps its address until it is removed,
//! as with Podman. Leases of containers that vanished without `berth rm` are reclaimed at the
//! next allocation.

pub mod cli;
pub mod spec;

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use berth_common::ContainerRecord;
use berth_image::{ImageStore, Rootfs};
use berth_runtime::{
    container::{CreateOptions, ExecOptions, Runtime, SignalForwarder, parse_signal},
    network::{self, DnsSettings, Ipam, Ipv4Net, NetworkConfig, NetworkError, etc_files},
    state::{Status, now_rfc3339, write_atomic},
};
use nix::unistd::{ForkResult, fork};
use serde::{Deserialize, Serialize};

use crate::dataplane::{
    containers,
    pods::{self, PublishedPort},
};

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

/// The network a new container joins (`berth run` flags and `BERTH_BRIDGE`/`BERTH_POD_CIDR`).
#[derive(Debug, Clone)]
pub struct NetworkDefaults {
    pub bridge: String,
    pub pod_cidr: String,
}

impl Default for NetworkDefaults {
    fn default() -> Self {
        Self {
            bridge: network::DEFAULT_BRIDGE.to_owned(),
            pod_cidr: network::DEFAULT_SUBNET.to_owned(),
        }
    }
}

/// `berth run --network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A veth pair to the bridge, an address from the pod CIDR, a default route, masquerade.
    Bridge,
    /// Loopback only.
    // The default for records without a mode: containers made before networking had only lo.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
        })
    }
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
    // Networking; every field defaults so records written before networking still load.
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// The bridge and pod CIDR the address was leased from (the engine's settings may have
    /// changed by the time the container is removed).
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Host side of the veth pair.
    #[serde(default)]
    pub host_veth: Option<String>,
    #[serde(default)]
    pub host_ifindex: u32,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// Set once `ports` are published: a run that failed to publish (the host port is taken)
    /// must not withdraw the frontends of the container that holds them.
    #[serde(default)]
    pub ports_published: bool,
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
    pub network: NetworkMode,
    /// `-p HOST:CTR[/udp]` (bridge network only).
    pub publish: Vec<PublishedPort>,
}

pub struct Engine {
    pub paths: EnginePaths,
    pub runtime: Runtime,
    pub network: NetworkDefaults,
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
        Self {
            paths,
            runtime,
            network: NetworkDefaults::default(),
        }
    }

    pub fn with_network(mut self, network: NetworkDefaults) -> Self {
        self.network = network;
        self
    }

    /// Where address leases and network locks live (`<root>/network`).
    fn network_state_dir(&self) -> PathBuf {
        self.paths.root.join("network")
    }

    /// The network new containers join, validated; errors name the flag and variable.
    pub fn bridge_config(&self) -> Result<NetworkConfig> {
        NetworkConfig::new(
            &self.network.bridge,
            &self.network.pod_cidr,
            &self.network_state_dir(),
        )
        .map_err(|e| match &e {
            NetworkError::Config {
                field: "bridge", ..
            } => anyhow!("--bridge (BERTH_BRIDGE): {e}"),
            NetworkError::Config {
                field: "subnet", ..
            } => {
                anyhow!("--pod-cidr (BERTH_POD_CIDR): {e}")
            }
            _ => anyhow!(e),
        })
    }

    /// The network an existing container was attached to, from its record.
    fn container_network(&self, meta: &ContainerMeta) -> Option<NetworkConfig> {
        Some(NetworkConfig {
            bridge: meta.bridge.clone()?,
            subnet: meta.subnet?,
            state_dir: self.network_state_dir(),
            dns: DnsSettings::default(),
        })
    }

    /// Containers that exist for address management: those with a record, plus the one being
    /// created. Called with the container-list lock held, so no other container is half-made.
    fn live_container_ids(&self, creating: &str) -> Result<HashSet<String>> {
        let mut ids = HashSet::from([creating.to_owned()]);
        for entry in std::fs::read_dir(self.containers_dir())?.flatten() {
            if entry.path().join("container.json").exists() {
                ids.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(ids)
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
        let net_config = match opts.network {
            NetworkMode::Bridge => Some(self.bridge_config()?),
            NetworkMode::None | NetworkMode::Host => None,
        };
        if !opts.publish.is_empty() && net_config.is_none() {
            bail!(
                "-p/--publish needs --network bridge (this container's network is {})",
                opts.network
            );
        }
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
        // The address is leased now, under the container-list lock, because /etc/hosts names
        // it; the veth pair comes once the namespace exists (`connect_network`).
        let lease = match &net_config {
            Some(config) => {
                let ipam = Ipam::new(config);
                for (ip, holder) in ipam.reconcile(&self.live_container_ids(&id)?)? {
                    tracing::info!(%ip, container = %holder, bridge = %config.bridge,
                        "released the address of a container that no longer exists");
                }
                let ip = ipam.allocate(&id)?;
                Some((ipam, ip))
            }
            None => None,
        };
        let release_ip = Guard::new(|| {
            if let Some((ipam, _)) = &lease {
                let _ = ipam.release(&id);
            }
        });
        let ip = lease.as_ref().map(|(_, ip)| *ip);
        let hostname = run.hostname.clone();
        write_etc_files(
            &dir,
            opts.network,
            net_config.as_ref(),
            ip,
            &[&hostname, &name],
            &mut run,
        )?;
        let mut oci = spec::build(&image_config, &run, &rootfs.path()).map_err(|e| anyhow!(e))?;
        let deny = self.audit_deny(&opts.labels)?;
        if !deny.is_empty()
            && let Some(mut linux) = oci.linux().clone()
        {
            let merged = spec::merge_deny(linux.seccomp().clone(), &deny)
                .map_err(|e| anyhow!("applying the audit policies' deny rules: {e}"))?;
            linux.set_seccomp(Some(merged));
            oci.set_linux(Some(linux));
        }
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
            network_mode: opts.network,
            bridge: net_config.as_ref().map(|c| c.bridge.clone()),
            subnet: net_config.as_ref().map(|c| c.subnet),
            ip,
            gateway: net_config.as_ref().map(NetworkConfig::gateway),
            host_veth: net_config.as_ref().map(|_| network::host_ifname(&id)),
            host_ifindex: 0,
            ports: opts.publish.clone(),
            ports_published: false,
        };
        self.save(&meta)?;
        release_ip.disarm();
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
        Ok(record.pid)
    }

    /// Between the runtime's create and start: the container's network namespace exists and
    /// its process waits, so it starts with its network complete. Returns a warning for the
    /// user, if any (the caller knows where the user's terminal is: a detached container's
    /// monitor writes its own stderr to the container's log).
    fn connect_network(&self, meta: &mut ContainerMeta, pid: i32) -> Result<Option<String>> {
        // The cgroup exists now: recorded (and the agent told, below) before the process
        // starts, so syscall auditing sees the container from its first instruction.
        meta.cgroup_id = self.runtime.state(&meta.id)?.cgroup_id;
        self.save(meta)?;
        match meta.network_mode {
            NetworkMode::Host => {
                self.notify("create", meta);
                Ok(None)
            }
            NetworkMode::None => {
                network::loopback_up(pid)
                    .map_err(|e| anyhow!("setting up the container's loopback: {e}"))?;
                self.notify("create", meta);
                Ok(None)
            }
            NetworkMode::Bridge => {
                let config = self
                    .container_network(meta)
                    .context("the container record has no bridge network")?;
                let ip = meta.ip.context("the container record has no address")?;
                network::setup_host(&config)
                    .map_err(|e| anyhow!("setting up bridge {}: {e}", config.bridge))?;
                let attachment = network::attach(&config, &meta.id, pid, ip)
                    .map_err(|e| anyhow!("connecting the container to {}: {e}", config.bridge))?;
                meta.host_veth = Some(attachment.host_ifname.clone());
                meta.host_ifindex = attachment.host_ifindex;
                self.save(meta)?;
                let warning =
                    match pods::attach_pod_veth(&self.paths.pin_root, &attachment.host_ifname) {
                        Ok(true) => None,
                        Ok(false) => no_dataplane_warning(&self.paths.pin_root, &meta.ports),
                        Err(e) => bail!(
                            "attaching the data plane to {}: {e}",
                            attachment.host_ifname
                        ),
                    };
                if !meta.ports.is_empty() {
                    pods::publish_ports(&self.paths.pin_root, &meta.id, ip, &meta.ports)
                        .map_err(|e| anyhow!("publishing ports: {e}"))?;
                    meta.ports_published = true;
                    self.save(meta)?;
                }
                // The agent makes the new endpoint's policy entries before the process starts.
                self.notify("network", meta);
                Ok(warning)
            }
        }
    }

    /// Undoes `create`'s lease and `connect_network` in reverse; every step tolerates what is
    /// already gone, so it also cleans up after a run that failed half-way.
    fn disconnect_network(&self, meta: &ContainerMeta) {
        if meta.network_mode != NetworkMode::Bridge {
            return;
        }
        if meta.ports_published
            && let Some(ip) = meta.ip
        {
            pods::unpublish_ports(&self.paths.pin_root, &meta.id, ip, &meta.ports);
        }
        let host_veth = meta
            .host_veth
            .clone()
            .unwrap_or_else(|| network::host_ifname(&meta.id));
        pods::detach_pod_veth(&self.paths.pin_root, &host_veth);
        // Usually gone already: the pair dies with the container's network namespace.
        if let Err(e) = network::detach(&host_veth) {
            tracing::warn!(id = %meta.id, veth = %host_veth, error = %e, "deleting the veth pair");
        }
        if let Some(config) = self.container_network(meta) {
            // A failure leaves a lease without a container: the next allocation reclaims it.
            if let Err(e) = Ipam::new(&config).release(&meta.id) {
                tracing::warn!(id = %meta.id, error = %e, "releasing the container's address");
            }
        }
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
                ContainerRecord {
                    // Network byte order: the octets as they are in memory.
                    ipv4: meta.ip.map_or(0, |ip| u32::from_ne_bytes(ip.octets())),
                    host_ifindex: meta.host_ifindex,
                    ..ContainerRecord::default()
                },
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
        if let Some(warning) = self.connect_network(&mut meta, pid)? {
            tracing::warn!("{warning}");
        }
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
                for line in answer.lines().skip(1) {
                    if let Some(warning) = line.strip_prefix("warning: ") {
                        tracing::warn!("{warning}");
                    }
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
        let warning = self.connect_network(&mut meta, pid)?;
        let forwarder = SignalForwarder::install()?;
        self.runtime.start(&meta.id)?;
        self.started(&mut meta, pid)?;
        if let Some(mut f) = ready.take() {
            let mut message = String::from("started");
            if let Some(warning) = warning {
                message.push_str(&format!("\nwarning: {warning}"));
            }
            f.write_all(message.as_bytes())?;
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
        self.disconnect_network(&meta);
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
            "NetworkSettings": {
                "Mode": meta.network_mode,
                "Bridge": meta.bridge,
                "Subnet": meta.subnet,
                "IPAddress": meta.ip,
                "IPPrefixLen": meta.subnet.map(|s| s.prefix_len()),
                "Gateway": meta.gateway,
                "HostVeth": meta.host_veth,
                "HostIfindex": meta.host_ifindex,
                "Ports": meta.ports,
            },
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

    /// The `deny` rules of the audit policies that select a container with `labels`, from the
    /// agent (which owns the rules). No agent listening: none (nothing is audited either; a
    /// warning says so). An agent that answers with an error fails the run: a container is
    /// never started without a deny rule it should have.
    fn audit_deny(&self, labels: &BTreeMap<String, String>) -> Result<Vec<spec::DenyRule>> {
        if !self.paths.api_socket.exists() {
            return Ok(Vec::new());
        }
        let socket = self.paths.api_socket.clone();
        let body = serde_json::to_vec(&serde_json::json!({ "labels": labels }))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let answer = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                crate::client::request(&socket, "POST", crate::api::paths::AUDIT_DENY, Some(body)),
            )
            .await
        });
        match answer {
            Ok(Ok(bytes)) => {
                #[derive(serde::Deserialize)]
                struct Answer {
                    deny: Vec<spec::DenyRule>,
                }
                let a: Answer = serde_json::from_slice(&bytes)
                    .context("decoding the agent's audit deny rules")?;
                Ok(a.deny)
            }
            Ok(Err(crate::client::ClientError::NotRunning { .. })) => {
                tracing::warn!(socket = %socket.display(),
                    "no berth agent answers: the container runs without audit (and its deny rules)");
                Ok(Vec::new())
            }
            Ok(Err(e)) => Err(anyhow!("asking the agent for audit deny rules: {e}")),
            Err(_) => bail!("asking the agent for audit deny rules: no answer within 5 s"),
        }
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
            "ipv4": meta.ip,
            "exit_code": meta.exit_code,
        });
        let socket = self.paths.api_socket.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            let result = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(2),
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

/// Writes the container's `/etc/hosts` and `/etc/resolv.conf` into its directory and mounts
/// them read-only over the image's; with `--network host` the container shares the host's
/// namespace and so the host's files, plus its own names.
fn write_etc_files(
    dir: &Path,
    mode: NetworkMode,
    config: Option<&NetworkConfig>,
    ip: Option<Ipv4Addr>,
    names: &[&str],
    run: &mut spec::RunSpec,
) -> Result<()> {
    let (hosts, resolv) = match (mode, config) {
        (NetworkMode::Bridge, Some(config)) => (
            etc_files::hosts(ip, names),
            etc_files::resolv_conf(&config.dns),
        ),
        (NetworkMode::Host, _) => (
            etc_files::hosts_for_host_network(
                &std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
                names,
            ),
            std::fs::read_to_string(network::HOST_RESOLV_CONF).unwrap_or_default(),
        ),
        _ => (
            etc_files::hosts(None, names),
            etc_files::resolv_conf_no_network(),
        ),
    };
    for (file, content, destination) in [
        ("hosts", hosts, "/etc/hosts"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ] {
        let source = dir.join(file);
        etc_files::write(&source, &content)?;
        run.bind_files.push((source, destination.to_owned()));
    }
    run.host_network = mode == NetworkMode::Host;
    Ok(())
}

/// With no data plane loaded the container is connected, but nothing is published or enforced
/// in eBPF until an agent runs. Said once per process (a foreground run and a monitor each start
/// one container, so once per container at most).
fn no_dataplane_warning(pin_root: &Path, ports: &[PublishedPort]) -> Option<String> {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    Some(format!(
        "no berth data plane is loaded under {}{}: start `berth agent`",
        pin_root.display(),
        if ports.is_empty() {
            ""
        } else {
            ", so published ports do not forward yet"
        }
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_networking_still_load() {
        let old = serde_json::json!({
            "id": "abc", "name": "web", "image": "busybox", "image_id": "sha256:00",
            "command": ["sh"], "labels": {}, "created": "2026-01-01T00:00:00Z",
            "started_at": null, "finished_at": null, "exit_code": null, "pid": 0,
            "cgroup_id": 0, "stop_signal": "SIGTERM", "auto_remove": false, "layers": [],
        });
        let meta: ContainerMeta = serde_json::from_value(old).expect("old record");
        assert_eq!(meta.network_mode, NetworkMode::None, "they had only lo");
        assert!(meta.ip.is_none() && meta.ports.is_empty() && !meta.ports_published);

        let mut current = meta.clone();
        current.network_mode = NetworkMode::Bridge;
        current.ip = Some(Ipv4Addr::new(10, 88, 0, 2));
        current.subnet = Some("10.88.0.0/16".parse().expect("subnet"));
        current.ports = vec!["8080:80/udp".parse().expect("port")];
        let json = serde_json::to_value(&current).expect("json");
        assert_eq!(json["network_mode"], "bridge");
        assert_eq!(json["ip"], "10.88.0.2");
        assert_eq!(json["subnet"], "10.88.0.0/16");
        let back: ContainerMeta = serde_json::from_value(json).expect("round trip");
        assert_eq!(back.ip, current.ip);
        assert_eq!(back.ports, current.ports);
    }
}
