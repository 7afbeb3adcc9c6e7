//! A `berth agent` child process on its own pin root, API socket and metrics port, so tests never
//! touch a node's real data plane. Dropping it kills the agent and removes its pins.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use berth::status::Status;

/// Path of the `berth` binary built next to the test executable (`cargo xtask test` builds it
/// first), or `$BERTH_BIN`.
pub fn berth_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BERTH_BIN") {
        return Ok(bin.into());
    }
    target_bin("berth", "`cargo build -p berth`; `cargo xtask test` does")
}

/// Path of binary `name` in the target directory of the running test executable
/// (target/<profile>/deps/<test>-<hash> → target/<profile>/<name>); `how` says how to build it.
pub fn target_bin(name: &str, how: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .context("locating the target directory")?;
    if !bin.exists() {
        bail!("{} not found: build it first ({how})", bin.display());
    }
    Ok(bin)
}

/// Where one test agent keeps its state.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    pub pin_root: PathBuf,
    pub api_socket: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
}

impl AgentPaths {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let suffix = crate::unique_suffix();
        let dir = std::env::temp_dir().join(format!("berth-test-{tag}-{suffix}"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            pin_root: PathBuf::from(format!("/sys/fs/bpf/berth-test-{tag}-{suffix}")),
            api_socket: dir.join("api/berth.sock"),
            log: dir.join("agent.log"),
            dir,
        })
    }

    /// `berth <subcommand> --pin-root … --api-socket …` for these paths (`agent` or `status`).
    pub fn command(&self, subcommand: &str) -> anyhow::Result<Command> {
        let mut cmd = Command::new(berth_bin()?);
        cmd.arg(subcommand)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .env_remove("BERTH_CONFIG");
        Ok(cmd)
    }

    /// A private state directory for the agent (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Removes the pins (detaching programs) and the temp directory. Idempotent.
    pub fn cleanup(&self) {
        if let Err(err) =
            berth::dataplane::cleanup(&berth::dataplane::PinLayout::new(&self.pin_root))
        {
            eprintln!("cleaning up {}: {err}", self.pin_root.display());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running agent.
pub struct AgentProcess {
    child: Option<Child>,
    pub paths: AgentPaths,
}

impl AgentProcess {
    /// Starts `berth agent` with `extra` flags and waits (up to 20 s) until its API answers.
    pub fn start(paths: &AgentPaths, extra: &[&str]) -> anyhow::Result<Self> {
        let log = File::options().create(true).append(true).open(&paths.log)?;
        let child = paths
            .command("agent")?
            .args(["--metrics-addr", "127.0.0.1:0", "--log", "info,berth=debug"])
            // Never the node's own desired state under /var/lib/berth.
            .arg("--state-dir")
            .arg(paths.state_dir())
            // Nor the node's containers (a test with an engine passes --engine-root).
            .env("BERTH_ROOT", paths.state_dir().join("engine"))
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning berth agent")?;
        let mut agent = AgentProcess {
            child: Some(child),
            paths: paths.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = agent.status()
                && status.agent.is_some()
            {
                return Ok(agent);
            }
            if let Some(exit) = agent.try_wait()? {
                bail!("agent exited during start-up ({exit}):\n{}", agent.logs());
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 20 s:\n{}", agent.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `berth status --format json` against this agent (falls back to its pins when it is down).
    pub fn status(&self) -> anyhow::Result<Status> {
        status_of(&self.paths)
    }

    /// Scrapes `/metrics` from the address the agent reports.
    pub fn scrape(&self) -> anyhow::Result<String> {
        http_get(&self.metrics_addr()?, "/metrics")
    }

    /// The metrics endpoint's address, as the agent reports it.
    pub fn metrics_addr(&self) -> anyhow::Result<String> {
        let status = self.status()?;
        Ok(status.agent.context("agent not running")?.metrics_addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self.pid().context("agent not running")?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the agent to exit.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("agent still running after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("agent already reaped"),
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `berth status --format json` for `paths`.
pub fn status_of(paths: &AgentPaths) -> anyhow::Result<Status> {
    let out = paths
        .command("status")?
        .args(["--format", "json"])
        .output()?;
    if !out.status.success() {
        bail!(
            "berth status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A plain HTTP/1.0 GET on loopback (the server closes the connection after the body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_owned())
}

/// The value of the sample `series` (name with its labels exactly as exposed) in `exposition`.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Removes an agent's pins and state directory when dropped (after the agent itself).
pub struct AgentCleanup(pub AgentPaths);

impl Drop for AgentCleanup {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

/// A private engine (bridge, image, containers) with an agent of its own that the engine
/// notifies. Dropped in field order: the containers, then the agent, then its pins.
pub struct AgentEngine {
    pub env: crate::network::NetEnv,
    pub agent: AgentProcess,
    pub cleanup: AgentCleanup,
}

impl AgentEngine {
    /// A fresh engine on pod CIDR 10.201.`octet`.0/24 and an agent serving it.
    pub fn start(tag: &str, octet: u8) -> AgentEngine {
        let cleanup = AgentCleanup(AgentPaths::new(tag).expect("agent paths"));
        let mut env = crate::network::NetEnv::new(octet, 24).expect("env");
        let agent = AgentProcess::start(
            &cleanup.0,
            &Self::agent_args(&env).each_ref().map(String::as_str),
        )
        .expect("agent");
        env.pin_root = cleanup.0.pin_root.clone();
        env.api_socket = cleanup.0.api_socket.clone();
        AgentEngine {
            env,
            agent,
            cleanup,
        }
    }

    fn agent_args(env: &crate::network::NetEnv) -> [String; 4] {
        [
            "--pod-cidr".into(),
            env.subnet.clone(),
            "--engine-root".into(),
            env.root().to_string_lossy().into_owned(),
        ]
    }

    /// Starts the agent again (after it was killed or stopped) on the same state.
    pub fn restart_agent(&mut self) {
        self.agent = AgentProcess::start(
            &self.agent.paths,
            &Self::agent_args(&self.env).each_ref().map(String::as_str),
        )
        .expect("restart");
    }
}
