//! The contenders: a `berth agent --kubeconfig` and the real kube-proxy 1.20.2 in iptables mode
//! (iptables-legacy, and Debian's default iptables-nft), each started inside its own node
//! namespace (entered with setns between fork and exec, so the process keeps the host's mounts:
//! `ip netns exec` would remount /sys and hide bpffs and the cgroup tree from berth), against
//! the same API server.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::stats;
use crate::services::child;

/// Which contender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Berth,
    /// kube-proxy with iptables-legacy: the fastest iptables kube-proxy can drive here.
    KubeProxyLegacy,
    /// kube-proxy with Debian's default iptables (iptables-nft).
    KubeProxyNft,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Berth => "berth",
            Kind::KubeProxyLegacy => "kube-proxy/legacy",
            Kind::KubeProxyNft => "kube-proxy/nft",
        }
    }

    /// Short tag for names of namespaces and files.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Berth => "berth",
            Kind::KubeProxyLegacy => "kpl",
            Kind::KubeProxyNft => "kpn",
        }
    }

    pub fn is_kube_proxy(self) -> bool {
        self != Kind::Berth
    }

    /// The contender's own programming-latency histogram, the same definition for both: from
    /// the EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time` to the change
    /// being written (rules or maps).
    pub fn latency_metric(self) -> &'static str {
        match self {
            Kind::Berth => "berth_kube_network_programming_duration_seconds",
            _ => "kubeproxy_network_programming_duration_seconds",
        }
    }
}

/// berth's other latency histogram: from the watch event received to the maps written.
pub const BERTH_EVENT_METRIC: &str = "berth_kube_programming_latency_seconds";

/// Where a contender serves metrics, inside its node namespace.
pub const BERTH_METRICS: &str = "127.0.0.1:9977";
pub const KUBE_PROXY_METRICS: &str = "127.0.0.1:10249";

/// Everything needed to start one contender again and again (each start is a new instance).
pub struct Spec {
    pub kind: Kind,
    pub netns: PathBuf,
    pub kubeconfig: PathBuf,
    pub node_name: String,
    /// Logs and private state.
    pub dir: PathBuf,
    /// berth: the binary; its pin root; the cgroup its hooks attach to.
    pub berth: Option<PathBuf>,
    pub pin_root: PathBuf,
    pub cgroup: PathBuf,
    /// kube-proxy: the binary, and a directory whose `iptables*` point at the backend.
    pub kube_proxy: PathBuf,
    pub iptables_dir: PathBuf,
}

/// A running instance.
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "exited ({status}); last lines of its log:\n{}",
                child::tail(&self.log.with_extension("err"), 15)
            );
        }
        Ok(())
    }
}

impl Spec {
    /// Prepares the contender's directory (and kube-proxy's iptables wrappers).
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        if self.kind.is_kube_proxy() {
            std::fs::create_dir_all(&self.iptables_dir)?;
            let variant = if self.kind == Kind::KubeProxyLegacy {
                "legacy"
            } else {
                "nft"
            };
            for family in ["iptables", "ip6tables"] {
                for suffix in ["", "-save", "-restore"] {
                    let link = self.iptables_dir.join(format!("{family}{suffix}"));
                    let target = crate::services::which(&format!("{family}-{variant}{suffix}"))
                        .with_context(|| format!("{family}-{variant}{suffix} not installed"))?;
                    let _ = std::fs::remove_file(&link);
                    symlink(&target, &link)?;
                }
            }
        }
        Ok(())
    }

    /// Starts instance `instance` (logs `<tag>-<instance>.{out,err}`); does not wait.
    pub fn start(&self, instance: usize) -> Result<Running> {
        let log = self.dir.join(format!("{}-{instance}", self.kind.tag()));
        let mut cmd;
        let death_signal;
        match self.kind {
            Kind::Berth => {
                let berth = self.berth.as_ref().context("no berth binary")?;
                cmd = Command::new(berth);
                let state = self.dir.join("state");
                cmd.arg("--root")
                    .arg(state.join("root"))
                    .arg("--runtime-root")
                    .arg(state.join("runc"))
                    .arg("agent")
                    .arg("--pin-root")
                    .arg(&self.pin_root)
                    .arg("--api-socket")
                    .arg(self.api_socket())
                    .arg("--metrics-addr")
                    .arg(BERTH_METRICS)
                    .arg("--cgroup")
                    .arg(&self.cgroup)
                    .arg("--state-dir")
                    .arg(state.join("services"))
                    .arg("--engine-root")
                    .arg(state.join("engine"))
                    .arg("--kubeconfig")
                    .arg(&self.kubeconfig)
                    .arg("--node-name")
                    .arg(&self.node_name)
                    .args(["--log", "info"])
                    .env_remove("BERTH_CONFIG");
                // Not SIGTERM: an agent paused (SIGSTOP) when the bench dies would keep it
                // pending. Its pins stay either way; the next run removes them.
                death_signal = libc::SIGKILL;
            }
            Kind::KubeProxyLegacy | Kind::KubeProxyNft => {
                cmd = Command::new(&self.kube_proxy);
                cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                    .args([
                        "--proxy-mode=iptables",
                        &format!("--hostname-override={}", self.node_name),
                        "--healthz-bind-address=127.0.0.1:10256",
                        &format!("--metrics-bind-address={KUBE_PROXY_METRICS}"),
                        "--conntrack-max-per-core=0",
                        "--feature-gates=EndpointSliceProxying=true",
                        "--v=2",
                    ])
                    .env(
                        "PATH",
                        format!(
                            "{}:/usr/sbin:/usr/bin:/sbin:/bin",
                            self.iptables_dir.display()
                        ),
                    );
                death_signal = libc::SIGKILL;
            }
        }
        let (child, _, _, _) = child::spawn(
            &mut cmd,
            child::Spawn {
                netns: Some(&self.netns),
                log: &log,
                stdin: None,
                death_signal,
            },
        )?;
        Ok(Running { child, log })
    }

    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("berth.sock")
    }

    fn metrics_addr(&self) -> &'static str {
        if self.kind == Kind::Berth {
            BERTH_METRICS
        } else {
            KUBE_PROXY_METRICS
        }
    }

    pub fn scrape(&self) -> Result<String> {
        stats::http_get_in(&self.netns, self.metrics_addr(), "/metrics")
    }

    /// Waits until the instance has its view of the API server: berth reports both kinds
    /// synced; kube-proxy has written its rules at least once.
    pub fn wait_ready(&self, running: &mut Running, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            child::check_interrupted()?;
            running.check_alive()?;
            let last = match self.scrape() {
                Ok(m) => {
                    let ready = match self.kind {
                        Kind::Berth => [
                            r#"berth_kube_synced{kind="Service"}"#,
                            r#"berth_kube_synced{kind="EndpointSlice"}"#,
                        ]
                        .iter()
                        .all(|s| stats::sample(&m, s) == Some(1.0)),
                        _ => stats::sample(&m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
                            .is_some_and(|t| t > 0.0),
                    };
                    if ready {
                        return Ok(());
                    }
                    "metrics up, not synced yet".to_owned()
                }
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {limit:?} ({last}); last lines of its log:\n{}",
                    self.kind.name(),
                    child::tail(&running.log.with_extension("err"), 15)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the instance and removes what it programmed, so the next instance starts cold:
    /// berth's pins and cached state; kube-proxy's rules in the node namespace.
    pub fn stop_and_clean(&self, mut running: Running) -> Result<()> {
        running.signal(libc::SIGCONT);
        running.signal(libc::SIGTERM);
        let status = child::wait(&mut running.child, Instant::now(), Duration::from_secs(10))
            .ok()
            .flatten();
        if status.is_none() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
        self.clean()
    }

    /// Removes what any instance left (idempotent).
    pub fn clean(&self) -> Result<()> {
        match self.kind {
            Kind::Berth => {
                if let Some(berth) = &self.berth {
                    let out = Command::new(berth)
                        .args(["agent", "--cleanup", "--pin-root"])
                        .arg(&self.pin_root)
                        .arg("--api-socket")
                        .arg(self.api_socket())
                        .output()?;
                    if !out.status.success() {
                        bail!(
                            "berth agent --cleanup failed: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
                let _ = std::fs::remove_dir_all(&self.pin_root);
                let _ = std::fs::remove_dir_all(self.dir.join("state"));
            }
            Kind::KubeProxyLegacy | Kind::KubeProxyNft => {
                // Through the same wrappers kube-proxy used, so the same backend.
                let mut commands: Vec<(PathBuf, Vec<&str>)> = Vec::new();
                for family in ["iptables", "ip6tables"] {
                    for table in ["nat", "filter", "mangle"] {
                        for op in ["-F", "-X"] {
                            commands.push((
                                self.iptables_dir.join(family),
                                vec!["-w", "5", "-t", table, op],
                            ));
                        }
                    }
                }
                for (program, args) in commands {
                    let mut cmd = Command::new(&program);
                    cmd.args(&args);
                    let done = child::run(
                        &mut cmd,
                        child::Spawn {
                            netns: Some(&self.netns),
                            log: &self.dir.join("flush"),
                            stdin: None,
                            death_signal: libc::SIGKILL,
                        },
                        Duration::from_secs(300),
                    )?;
                    if !done.success() {
                        bail!(
                            "{} {} in the node namespace failed: {}",
                            program.display(),
                            args.join(" "),
                            done.stderr_tail()
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Memory and CPU of an instance at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu: stats::Cpu,
    pub rss_mb: f64,
    pub hwm_mb: f64,
}

pub fn usage(pid: u32) -> Usage {
    let (rss_mb, hwm_mb) = stats::rss_mb(pid).unwrap_or_default();
    Usage {
        cpu: stats::cpu(pid).unwrap_or_default(),
        rss_mb,
        hwm_mb,
    }
}

/// Whether `path` exists and is executable.
pub fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
