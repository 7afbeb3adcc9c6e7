//! A private `berth` engine on a private bridge network, for the container networking tests:
//! its own state, runtime and pin roots, its own bridge name and pod CIDR (10.201.<octet>.0/N,
//! so tests never share addresses with each other or the host), a busybox image, and a drop
//! that removes every container, the bridge and its masquerade table even when the test fails.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::agent::berth_bin;

/// The busybox applets the network tests use inside containers.
const APPLETS: &[&str] = &[
    "sh", "true", "sleep", "echo", "cat", "env", "ping", "ip", "nc", "hostname", "readlink",
    "grep", "wc", "ls", "route", "httpd", "wget", "mkdir", "timeout", "chmod",
];

/// The image every network test runs.
pub const IMAGE: &str = "test/netbox:1";

pub struct NetEnv {
    pub dir: tempfile::TempDir,
    pub pin_root: PathBuf,
    /// The agent socket the engine notifies (none by default; a test with an agent sets it).
    pub api_socket: PathBuf,
    pub bridge: String,
    pub subnet: String,
}

impl NetEnv {
    /// A fresh engine on bridge `bt<unique>` with pod CIDR `10.201.<octet>.0/<prefix_len>`.
    pub fn new(octet: u8, prefix_len: u8) -> anyhow::Result<Self> {
        let suffix = crate::unique_suffix();
        let dir = tempfile::Builder::new()
            .prefix("berth-net-")
            .tempdir()
            .context("tempdir")?;
        let env = NetEnv {
            api_socket: dir.path().join("no-agent.sock"),
            dir,
            pin_root: PathBuf::from(format!("/sys/fs/bpf/berth-test-net-{suffix}")),
            // "bt" + at most 13 characters: within IFNAMSIZ.
            bridge: format!("bt{}", &suffix[..suffix.len().min(13)]),
            subnet: format!("10.201.{octet}.0/{prefix_len}"),
        };
        env.import_image()?;
        Ok(env)
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The gateway: the subnet's first address, held by the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        let net: Ipv4Addr = self
            .subnet
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ipv4Addr::from(u32::from(net) + 1)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(berth_bin().unwrap_or_else(|_| PathBuf::from("berth")));
        cmd.args(args)
            .env("BERTH_ROOT", self.root())
            .env("BERTH_RUNTIME_ROOT", self.dir.path().join("runtime"))
            .env("BERTH_PIN_ROOT", &self.pin_root)
            .env("BERTH_API_SOCKET", &self.api_socket)
            .env("BERTH_BRIDGE", &self.bridge)
            .env("BERTH_POD_CIDR", &self.subnet);
        cmd
    }

    /// `berth ARGS`, output captured.
    pub fn berth(&self, args: &[&str]) -> Output {
        self.berth_with(args, &[])
    }

    /// `berth ARGS` with extra environment (overriding the network's).
    pub fn berth_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("running berth: {e}").into_bytes(),
        })
    }

    /// For commands that leave a container running: stdio to files, since the monitor keeps
    /// inherited pipes open.
    pub fn berth_detached(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.dir.path().join("cmd.out");
        let err = self.dir.path().join("cmd.err");
        let status = self
            .command(args)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .status()?;
        Ok(Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        })
    }

    /// `berth run -d --name NAME [EXTRA...] IMAGE CMD...`; returns the container id.
    pub fn run_detached(&self, name: &str, extra: &[&str], cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        let out = self.berth_detached(&args)?;
        if !out.status.success() {
            bail!("berth {args:?}: {}", text(&out.stderr));
        }
        Ok(text(&out.stdout).trim().to_owned())
    }

    /// `berth exec CONTAINER CMD...`: (exit code, stdout, stderr).
    pub fn exec(&self, container: &str, cmd: &[&str]) -> (i32, String, String) {
        let mut args = vec!["exec", container];
        args.extend_from_slice(cmd);
        let out = self.berth(&args);
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    pub fn inspect(&self, container: &str) -> anyhow::Result<Value> {
        let out = self.berth(&["inspect", container]);
        if !out.status.success() {
            bail!("inspect {container}: {}", text(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The container's address, from `berth inspect`.
    pub fn ip_of(&self, container: &str) -> anyhow::Result<Ipv4Addr> {
        let doc = self.inspect(container)?;
        doc["NetworkSettings"]["IPAddress"]
            .as_str()
            .context("no IPAddress")?
            .parse()
            .context("IPAddress")
    }

    /// The address leases of this network's bridge, address → container id.
    pub fn leases(&self) -> anyhow::Result<Vec<(Ipv4Addr, String)>> {
        let ipam = berth_runtime::network::Ipam::at(
            &self.root().join("network"),
            &self.bridge,
            self.subnet.parse().map_err(anyhow::Error::msg)?,
        );
        Ok(ipam.leases()?.into_iter().collect())
    }

    /// A busybox image with the applets above.
    fn import_image(&self) -> anyhow::Result<()> {
        let rootfs = self.dir.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        let tar = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()?;
        if !status.success() {
            bail!("tar failed");
        }
        let out = self.berth(&["image", "import", &tar.to_string_lossy(), IMAGE]);
        if !out.status.success() {
            bail!("image import: {}", text(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for NetEnv {
    fn drop(&mut self) {
        let out = self.berth(&["ps", "-a", "--format", "json"]);
        if let Ok(list) = serde_json::from_slice::<Vec<Value>>(&out.stdout) {
            for c in list {
                if let Some(id) = c["id"].as_str() {
                    let _ = self.berth(&["rm", "-f", id]);
                }
            }
        }
        if let Err(e) = berth_runtime::network::teardown_host(&self.bridge) {
            eprintln!("removing bridge {}: {e}", self.bridge);
        }
        let _ = berth::dataplane::cleanup(&berth::dataplane::PinLayout::new(&self.pin_root));
    }
}

/// A cgroup v2 directory of its own, so that an agent's socket hooks translate the
/// connections of the test's clients only; emptied and removed on drop.
pub struct ClientCgroup {
    pub path: PathBuf,
}

impl ClientCgroup {
    pub fn create() -> anyhow::Result<Self> {
        let path = berth::config::default_cgroup_root()
            .join(format!("berth-test-net-{}", crate::unique_suffix()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Runs `program args` inside this cgroup: (exit code, stdout, stderr).
    pub fn run(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let procs = self.path.join("cgroup.procs");
        // The shell moves itself in, then becomes the program: the program starts inside.
        let script = format!("echo $$ > '{}' && exec \"$0\" \"$@\"", procs.display());
        match Command::new("/bin/sh")
            .args(["-c", &script, program])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
        {
            Ok(out) => (
                out.status.code().unwrap_or(-1),
                text(&out.stdout),
                text(&out.stderr),
            ),
            Err(e) => (-1, String::new(), e.to_string()),
        }
    }
}

impl Drop for ClientCgroup {
    fn drop(&mut self) {
        if let (Ok(procs), Some(parent)) = (
            std::fs::read_to_string(self.path.join("cgroup.procs")),
            self.path.parent(),
        ) {
            for pid in procs.lines() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// One of the host's own global IPv4 addresses outside `avoid` (connections to it never leave
/// the machine).
pub fn host_address(avoid: &str) -> anyhow::Result<Ipv4Addr> {
    let avoid: berth_runtime::network::Ipv4Net = avoid.parse().map_err(anyhow::Error::msg)?;
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .context("ip addr")?;
    let mut found = Vec::new();
    for line in text(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let iface = words.nth(1).unwrap_or_default().to_owned();
        let Some(addr) = words
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if !avoid.contains(addr) {
            found.push((iface, addr));
        }
    }
    found
        .iter()
        .find(|(iface, _)| iface == "eth0")
        .or(found.first())
        .map(|(_, addr)| *addr)
        .context("the host has no global IPv4 address")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// True when interface `name` exists in the test's (the host's) network namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The bridge an interface is attached to, from sysfs.
pub fn master_of(name: &str) -> Option<String> {
    std::fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// The ifindex of interface `name`, from sysfs.
pub fn ifindex_of(name: &str) -> Option<u32> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Waits up to `secs` seconds for `cond`.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
