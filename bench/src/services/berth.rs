//! berth's side: a `berth agent` of its own (own pin root, API socket, metrics port and state
//! directory, its connect() hook attached to the bench's cgroup), programmed with
//! `berth svc apply -f` of the same services the netfilter modes get.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{child, model};

/// The berth binary: `--berth`, or a `berth` built next to the bench (same target directory,
/// release preferred), or the workspace's `target/{release,debug}/berth`.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return path
            .canonicalize()
            .with_context(|| format!("--berth {}", path.display()));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("berth"));
        if let Some(target) = dir.parent() {
            candidates.push(target.join("release/berth"));
            candidates.push(target.join("debug/berth"));
        }
    }
    candidates.push(PathBuf::from("target/release/berth"));
    candidates.push(PathBuf::from("target/debug/berth"));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize()?);
        }
    }
    bail!(
        "no berth binary found (looked at {}); build it (cargo build --release -p berth) or pass --berth PATH",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Optional `berth agent` flags this binary has (read from its `--help`).
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentFeatures {
    /// `--state-dir`: where the agent persists desired state (default /var/lib/berth).
    state_dir: bool,
    /// `--backend-cidr`: networks besides the node's own where backends may live.
    backend_cidr: bool,
}

/// Fails with a clear message when this berth lacks what the bench needs: `berth agent
/// --cgroup` (where to attach the socket hooks) and `berth svc apply`.
pub fn check_contract(berth: &Path) -> Result<AgentFeatures> {
    let help = |args: &[&str]| -> Result<String> {
        let out = Command::new(berth)
            .args(args)
            .output()
            .with_context(|| format!("running {}", berth.display()))?;
        if !out.status.success() {
            bail!(
                "`berth {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let agent = help(&["agent", "--help"])?;
    if !agent.contains("--cgroup") {
        bail!(
            "{} has no `berth agent --cgroup DIR` (the cgroup to attach the connect() hooks to); \
             this berth predates the service data plane the bench measures",
            berth.display()
        );
    }
    help(&["svc", "apply", "--help"]).map_err(|err| {
        anyhow::anyhow!(
            "{} has no `berth svc apply -f FILE` ({err}); this berth predates the service API the \
             bench programs through",
            berth.display()
        )
    })?;
    Ok(AgentFeatures {
        state_dir: agent.contains("--state-dir"),
        backend_cidr: agent.contains("--backend-cidr"),
    })
}

/// Whether `berth svc apply` failed because the request was larger than the agent accepts.
/// The agent may answer 413 and close the connection while the client is still sending; the
/// client then either reads the refusal or dies of SIGPIPE, whichever comes first.
pub fn body_too_large(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}").to_ascii_lowercase();
    ["length limit", "too large", "413", "sigpipe"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// A running agent; stopped (SIGTERM) and its pins removed (`berth agent --cleanup`) on drop.
pub struct Agent {
    berth: PathBuf,
    child: Option<Child>,
    pub pin_root: PathBuf,
    pub api_socket: PathBuf,
    log: PathBuf,
    state: PathBuf,
}

impl Agent {
    /// Starts an agent whose everything lives under `dir` (socket, logs, state) and
    /// `pin_root`, and waits until it answers on its API socket.
    pub fn start(
        berth: &Path,
        features: AgentFeatures,
        pin_root: &Path,
        cgroup: &Path,
        dir: &Path,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let api_socket = dir.join("berth.sock");
        let state = dir.join("state");
        let log = dir.join("agent.log");
        // Let the kernel pick a free loopback port, then hand it to the agent (the agent binds
        // it again a moment later; nothing else on a bench machine races for it).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(berth);
        // The engine's state directories point into the bench's temporary directory, so no
        // agent state of this run lands in (or is read from) the host's /var/lib/berth.
        cmd.arg("--root")
            .arg(state.join("root"))
            .arg("--runtime-root")
            .arg(state.join("runc"))
            .arg("agent")
            .arg("--pin-root")
            .arg(pin_root)
            .arg("--api-socket")
            .arg(&api_socket)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--cgroup")
            .arg(cgroup);
        if features.state_dir {
            // The agent's desired state (every service applied) stays in this slot's
            // directory: the next agent starts empty, and the host's /var/lib/berth is untouched.
            cmd.arg("--state-dir").arg(state.join("services"));
        }
        if features.backend_cidr {
            // The backends sit behind the bench's node namespace, not on a network attached to
            // the host the agent runs in, so the agent is told where they are.
            cmd.arg("--backend-cidr").arg(model::CLUSTER_CIDR);
        }
        let (child, _, _, _) = child::spawn(
            &mut cmd,
            child::Spawn {
                netns: None,
                log: &log,
                stdin: None,
                death_signal: libc::SIGTERM,
            },
        )?;
        let mut agent = Agent {
            berth: berth.to_owned(),
            child: Some(child),
            pin_root: pin_root.to_owned(),
            api_socket,
            log,
            state,
        };
        agent.wait_ready(Duration::from_secs(30))?;
        Ok(agent)
    }

    /// Polls `berth status --format json` until the report comes from the agent itself
    /// (`"source": "agent"`): status also answers from the pins when no agent does.
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < limit {
            child::check_interrupted()?;
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "berth agent exited ({status}) before it was ready:\n{}",
                    child::tail(&self.log.with_extension("err"), 20)
                );
            }
            let out = Command::new(&self.berth)
                .arg("status")
                .arg("--api-socket")
                .arg(&self.api_socket)
                .arg("--pin-root")
                .arg(&self.pin_root)
                .args(["--format", "json"])
                .output()?;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if v["source"] == "agent" {
                    return Ok(());
                }
            } else {
                last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "berth agent not ready after {limit:?} (last status error: {last}); agent log:\n{}",
            child::tail(&self.log.with_extension("err"), 20)
        )
    }

    /// `berth svc apply -f FILE`, timed: it returns once the maps are written.
    pub fn apply(&self, file: &Path, limit: Duration, log: &Path) -> Result<Option<Duration>> {
        let mut cmd = Command::new(&self.berth);
        // The socket through the environment: `--api-socket` belongs to `berth svc`, before
        // the `apply`, and the variable reaches it wherever the flag sits.
        cmd.args(["svc", "apply", "-f"])
            .arg(file)
            .env("BERTH_API_SOCKET", &self.api_socket);
        let done = child::run(
            &mut cmd,
            child::Spawn {
                netns: None,
                log,
                stdin: None,
                death_signal: libc::SIGKILL,
            },
            limit,
        )?;
        if done.timed_out() {
            return Ok(None);
        }
        if !done.success() {
            let status = done.status.map_or("killed".to_owned(), |s| s.to_string());
            bail!(
                "berth svc apply failed ({status}): {}\nagent log (last lines):\n{}",
                done.stderr_tail(),
                child::tail(&self.log.with_extension("err"), 10)
            );
        }
        Ok(Some(done.elapsed))
    }

    /// SIGTERM, a bounded wait (SIGKILL after 10 s), then `berth agent --cleanup`.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on the pid of our own child, which has not been reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let started = Instant::now();
            // The wait is bounded even when interrupted: the agent already got SIGTERM.
            let status = child::wait(&mut child, started, Duration::from_secs(10))
                .ok()
                .flatten();
            if status.is_none() {
                eprintln!(
                    "warning: berth agent had not exited 10 s after SIGTERM (or the bench was \
                     interrupted); killed"
                );
            }
        }
        let out = Command::new(&self.berth)
            .args(["agent", "--cleanup", "--pin-root"])
            .arg(&self.pin_root)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .output()?;
        if !out.status.success() {
            bail!(
                "berth agent --cleanup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.state);
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Err(err) = self.stop()
        {
            eprintln!("warning: stopping berth agent: {err:#}");
        }
    }
}
