//! The private node every mode is measured on: a `berth agent` of its own (pin root, API
//! socket, state directory, metrics port, and its socket hooks on a cgroup of its own that no
//! process is in) and a berth engine of its own (state and runtime roots in a temporary
//! directory, bridge `bbp<pid>`, pod CIDR [`POD_CIDR`]) running two busybox pods, `server` and
//! `client`. Only the two pods' addresses are ever connected to: no packet leaves the machine.
//!
//! Everything is removed on drop, in order: the bench's server sockets (they hold the server
//! pod's namespace), the containers, the agent, its pins (`berth agent --cleanup`), the bridge
//! and its masquerade table, the cgroup, the temporary directory. A run killed before its drop
//! leaves names carrying its pid; the next run removes them ([`clean_leftovers`]).

use crate::leftovers::{dead, entries, owner};
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::load;
use crate::services::{child, topo};

/// Names of everything this bench creates start with this (then the bench's pid).
pub const PREFIX: &str = "berth-bench-";
/// Bridge names: `bbp<pid>` (IFNAMSIZ allows 15 bytes).
const BRIDGE_PREFIX: &str = "bbp";
/// The temporary directory is `berth-bench-<pid>-policy-XXXXXX`.
const TMP_SUFFIX: &str = "-policy-";
/// The pods' network.
pub const POD_CIDR: &str = "10.202.0.0/24";
const IMAGE: &str = "bench/policybox:1";
/// Busybox applets the pods need.
const APPLETS: &[&str] = &["sh", "sleep"];

/// Where one run's engine and agent keep everything; derived from the directory and the
/// bench's pid alone, so a later run can clean up after a crashed one.
struct Paths {
    dir: PathBuf,
    pin_root: PathBuf,
    api_socket: PathBuf,
    bridge: String,
}

impl Paths {
    fn new(dir: &Path, pid: u32) -> Self {
        Self {
            dir: dir.to_owned(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/{PREFIX}{pid}")),
            api_socket: dir.join("api/berth.sock"),
            bridge: format!("{BRIDGE_PREFIX}{pid}"),
        }
    }

    /// `berth ARGS` against this run's engine and agent, and nothing of the host's: every
    /// inherited `BERTH_*` variable is replaced.
    fn command(&self, berth: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(berth);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BERTH_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(args)
            .env("BERTH_ROOT", self.dir.join("root"))
            .env("BERTH_RUNTIME_ROOT", self.dir.join("runtime"))
            .env("BERTH_PIN_ROOT", &self.pin_root)
            .env("BERTH_API_SOCKET", &self.api_socket)
            .env("BERTH_BRIDGE", &self.bridge)
            .env("BERTH_POD_CIDR", POD_CIDR);
        cmd
    }
}

/// A pod the bench connects from or to.
pub struct Pod {
    pub ip: Ipv4Addr,
    /// `/proc/<pid>/ns/net` of the container's first process.
    pub netns: PathBuf,
}

pub struct Cluster {
    berth: PathBuf,
    paths: Paths,
    tmp: Option<tempfile::TempDir>,
    cgroup: Option<topo::BenchCgroup>,
    agent: Option<Child>,
    agent_log: PathBuf,
    /// Containers started (or being started), removed on drop.
    containers: Vec<&'static str>,
    pub server: Pod,
    pub client: Pod,
    /// The bench's server in the server pod; stopped before the pods are removed.
    pub listener: Option<load::Server>,
}

impl Cluster {
    pub fn create(berth: &Path, server_threads: usize, cpu: Option<usize>) -> Result<Self> {
        let pid = std::process::id();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{pid}{TMP_SUFFIX}"))
            .tempdir()?;
        let paths = Paths::new(tmp.path(), pid);
        let unset = || Pod {
            ip: Ipv4Addr::UNSPECIFIED,
            netns: PathBuf::new(),
        };
        let mut c = Cluster {
            berth: berth.to_owned(),
            agent_log: tmp.path().join("logs/agent"),
            paths,
            tmp: Some(tmp),
            cgroup: None,
            agent: None,
            containers: Vec::new(),
            server: unset(),
            client: unset(),
            listener: None,
        };
        for sub in ["logs", "api", "state", "root", "runtime", "files"] {
            std::fs::create_dir_all(c.paths.dir.join(sub))?;
        }
        c.cgroup = Some(topo::BenchCgroup::create(&format!("{PREFIX}{pid}"))?);
        c.start_agent()?;
        c.import_image()?;
        c.server = c.run_pod("server")?;
        c.client = c.run_pod("client")?;
        c.listener = Some(load::Server::start(&c.server.netns, server_threads, cpu)?);
        Ok(c)
    }

    /// The run's scratch directory (rule files, logs).
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    pub fn bridge(&self) -> &str {
        &self.paths.bridge
    }

    pub fn agent_log_tail(&self) -> String {
        child::tail(&self.agent_log.with_extension("err"), 10)
    }

    /// `berth ARGS`, bounded by `limit`, output in `logs/<log>.{out,err}`.
    pub fn berth(&self, args: &[&str], log: &str, limit: Duration) -> Result<child::Finished> {
        let mut cmd = self.paths.command(&self.berth, args);
        child::check_interrupted()?;
        child::run(
            &mut cmd,
            child::Spawn {
                netns: None,
                log: &self.paths.dir.join("logs").join(log),
                stdin: None,
                death_signal: libc::SIGKILL,
            },
            limit,
        )
    }

    /// `berth ARGS` that must succeed within 60 s; its stdout.
    fn berth_ok(&self, args: &[&str], log: &str) -> Result<String> {
        let done = self.berth(args, log, Duration::from_secs(60))?;
        if !done.success() {
            bail!(
                "berth {} failed ({}): {}",
                args.join(" "),
                done.status
                    .map_or("timed out".to_owned(), |s| s.to_string()),
                done.stderr_tail()
            );
        }
        Ok(done.stdout())
    }

    fn start_agent(&mut self) -> Result<()> {
        let cgroup = self.cgroup.as_ref().context("no cgroup")?.dir.clone();
        let (state, root) = (self.paths.dir.join("state"), self.paths.dir.join("root"));
        let mut cmd = self.paths.command(&self.berth, &["agent"]);
        cmd.arg("--pin-root")
            .arg(&self.paths.pin_root)
            .arg("--api-socket")
            .arg(&self.paths.api_socket)
            .arg("--state-dir")
            .arg(&state)
            .arg("--engine-root")
            .arg(&root)
            .args(["--metrics-addr", "127.0.0.1:0", "--pod-cidr", POD_CIDR])
            .arg("--cgroup")
            .arg(&cgroup);
        let (child, _, _, _) = child::spawn(
            &mut cmd,
            child::Spawn {
                netns: None,
                log: &self.agent_log,
                stdin: None,
                death_signal: libc::SIGTERM,
            },
        )?;
        self.agent = Some(child);
        // Ready when `berth status` answers from the agent itself, not from the pins.
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(30) {
            child::check_interrupted()?;
            if let Some(agent) = &mut self.agent
                && let Some(status) = agent.try_wait()?
            {
                bail!(
                    "berth agent exited ({status}) before it was ready:\n{}",
                    self.agent_log_tail()
                );
            }
            let done = self.berth(
                &["status", "--format", "json"],
                "status",
                Duration::from_secs(10),
            )?;
            if done.success() {
                let v: serde_json::Value = serde_json::from_str(&done.stdout()).unwrap_or_default();
                if v["source"] == "agent" {
                    return Ok(());
                }
            } else {
                last = done.stderr_tail();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "berth agent not ready after 30 s (last status error: {last}); agent log:\n{}",
            self.agent_log_tail()
        )
    }

    /// A busybox image: the host's static /bin/busybox and the applets the pods run.
    fn import_image(&self) -> Result<()> {
        let rootfs = self.paths.dir.join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .context("copying /bin/busybox (a statically linked busybox is needed)")?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        let tar = self.paths.dir.join("rootfs.tar");
        let tar_arg = tar.to_string_lossy().into_owned();
        let rootfs_arg = rootfs.to_string_lossy().into_owned();
        child::run_quiet("tar", &["-C", &rootfs_arg, "-cf", &tar_arg, "."], None)?;
        self.berth_ok(&["image", "import", &tar_arg, IMAGE], "image-import")?;
        Ok(())
    }

    /// `berth run -d` of a pod labelled `app=<name>` in namespace `default`, sleeping.
    fn run_pod(&mut self, name: &'static str) -> Result<Pod> {
        self.containers.push(name);
        let app = format!("app={name}");
        self.berth_ok(
            &[
                "run",
                "-d",
                "--name",
                name,
                "--label",
                &app,
                "--label",
                "io.kubernetes.pod.namespace=default",
                IMAGE,
                "sleep",
                "100000",
            ],
            &format!("run-{name}"),
        )?;
        let doc: serde_json::Value =
            serde_json::from_str(&self.berth_ok(&["inspect", name], &format!("inspect-{name}"))?)
                .context("parsing berth inspect")?;
        let ip: Ipv4Addr = doc["NetworkSettings"]["IPAddress"]
            .as_str()
            .with_context(|| format!("berth inspect {name}: no NetworkSettings.IPAddress"))?
            .parse()
            .context("NetworkSettings.IPAddress")?;
        let pid = doc["State"]["Pid"].as_u64().unwrap_or(0);
        if pid == 0 {
            bail!("berth inspect {name}: no State.Pid (not running?)");
        }
        Ok(Pod {
            ip,
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
        })
    }

    fn stop_agent(&mut self) {
        let Some(mut agent) = self.agent.take() else {
            return;
        };
        // SAFETY: kill on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
        // Bounded, and not cut short by an interrupt (as child::wait is): a clean shutdown
        // is what the cleanup after an interrupt wants.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match agent.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: berth agent had not exited 10 s after SIGTERM; killed");
        let _ = agent.kill();
        let _ = agent.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            listener.stop();
        }
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().copied());
            let _ = self
                .paths
                .command(&self.berth, &args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            self.containers.clear();
        }
        self.stop_agent();
        remove_pins(&self.berth, &self.paths);
        remove_bridge(&self.paths.bridge);
        drop(self.cgroup.take());
        drop(self.tmp.take());
    }
}

/// `berth agent --cleanup` of the run's pin root (the agent stopped), then the directory.
fn remove_pins(berth: &Path, paths: &Paths) {
    if !paths.pin_root.exists() {
        return;
    }
    let pin_root = paths.pin_root.to_string_lossy().into_owned();
    let socket = paths.api_socket.to_string_lossy().into_owned();
    let out = paths
        .command(
            berth,
            &[
                "agent",
                "--cleanup",
                "--pin-root",
                &pin_root,
                "--api-socket",
                &socket,
            ],
        )
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: berth agent --cleanup --pin-root {pin_root}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("warning: berth agent --cleanup: {e}"),
    }
    let _ = std::fs::remove_dir_all(&paths.pin_root);
}

/// The engine's bridge and its masquerade table (`ip berth_nat_<bridge>`).
fn remove_bridge(bridge: &str) {
    let table = format!("berth_nat_{bridge}");
    let listed = Command::new("nft")
        .args(["list", "table", "ip", &table])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if listed && let Err(e) = child::run_quiet("nft", &["delete", "table", "ip", &table], None) {
        eprintln!("warning: {e:#}");
    }
    if Path::new("/sys/class/net").join(bridge).exists()
        && let Err(e) = child::run_quiet("ip", &["link", "del", bridge], None)
    {
        eprintln!("warning: {e:#}");
    }
}

/// Removes what a run killed before its cleanup left: its containers, pins, bridge, cgroup and
/// temporary directory (names carrying a pid that no longer runs).
pub fn clean_leftovers(berth: &Path) {
    let tmp = std::env::temp_dir();
    for name in entries(&tmp) {
        let Some(pid) = owner(&name, PREFIX) else {
            continue;
        };
        let rest = name[PREFIX.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        if !rest.starts_with(TMP_SUFFIX) || !dead(pid) {
            continue;
        }
        let dir = tmp.join(&name);
        eprintln!(
            "removing leftovers of policy bench run {pid} ({})",
            dir.display()
        );
        let paths = Paths::new(&dir, pid);
        let listed = paths
            .command(berth, &["ps", "-a", "--format", "json"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
            .unwrap_or_default();
        for c in listed {
            if let Some(id) = c["id"].as_str() {
                let _ = paths.command(berth, &["rm", "-f", id]).output();
            }
        }
        remove_pins(berth, &paths);
        remove_bridge(&paths.bridge);
        let _ = std::fs::remove_dir_all(&dir);
    }
    for name in entries(Path::new("/sys/fs/bpf")) {
        if let Some(pid) = owner(&name, PREFIX).filter(|&p| dead(p)) {
            eprintln!("removing leftover pins /sys/fs/bpf/{name}");
            remove_pins(berth, &Paths::new(&tmp.join(&name), pid));
        }
    }
    for name in entries(Path::new("/sys/class/net")) {
        let ours = name
            .strip_prefix(BRIDGE_PREFIX)
            .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
            .and_then(|rest| rest.parse().ok())
            .is_some_and(dead);
        if ours {
            eprintln!("removing leftover bridge {name}");
            remove_bridge(&name);
        }
    }
    if let Ok(root) = topo::cgroup2_root() {
        for name in entries(&root) {
            if owner(&name, PREFIX).is_some_and(dead) {
                eprintln!("removing leftover cgroup {}", root.join(&name).display());
                let _ = std::fs::remove_dir(root.join(name));
            }
        }
    }
}
