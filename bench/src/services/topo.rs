//! The test cluster: a "node" network namespace routing between one client pod and 10 backend
//! pods, each pod its own namespace joined to the node by a veth pair with a /30. No interface
//! is ever created in the host's namespace, so no traffic can leave the machine: the node has no
//! default route, only its 11 pod links.
//!
//! Every name starts with `bb-<pid>`; a run that crashed leaves names whose pid is gone, and the
//! next run deletes them ([`clean_leftovers`]).

use std::{
    fs::File,
    io::Write as _,
    net::{Ipv4Addr, TcpListener},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{child::run_quiet, model::TARGET_PORT};

/// Names of everything this bench creates start with this.
pub const PREFIX: &str = "bb-";
pub const BACKENDS: usize = 10;
/// The run's temporary directory is `bb-<pid>-services-XXXXXX` (rulesets, manifests, logs).
pub const TMP_SUFFIX: &str = "-services-";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Backend pod `i`'s address: 10.244.<i+1>.2 (the node side of its link is .1).
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8 + 1, 2)
}

/// The node's address on the client's link.
pub fn node_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 1)
}

/// The pod and node namespaces; deleted on drop.
pub struct Topology {
    pub node: String,
    pub client: String,
    pub backends: Vec<String>,
    /// Namespaces that exist now and must be deleted on drop.
    created: Vec<String>,
}

impl Topology {
    /// Creates the client and backend namespaces (loopback up) and starts one TCP server per
    /// backend. The node is wired by [`Topology::rewire_node`].
    pub fn create(prefix: &str) -> Result<Self> {
        let mut topo = Topology {
            node: format!("{prefix}-node"),
            client: format!("{prefix}-client"),
            backends: (0..BACKENDS).map(|i| format!("{prefix}-be{i}")).collect(),
            created: Vec::new(),
        };
        let pods: Vec<String> = std::iter::once(topo.client.clone())
            .chain(topo.backends.iter().cloned())
            .collect();
        for ns in pods {
            run_quiet("ip", &["netns", "add", &ns], None)?;
            topo.created.push(ns.clone());
            run_quiet("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
        }
        topo.start_servers()?;
        Ok(topo)
    }

    /// One thread per backend namespace: accept, write one byte (the backend's index, so the
    /// client can see which backend answered), close. The threads live as long as the process;
    /// their sockets keep working while the node namespace is rebuilt around them.
    fn start_servers(&self) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        for (i, ns) in self.backends.iter().enumerate() {
            let path = netns_path(ns);
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("backend-{i}"))
                .spawn(move || serve(&path, i as u8, &tx))?;
        }
        drop(tx);
        for _ in 0..self.backends.len() {
            rx.recv_timeout(Duration::from_secs(10))
                .context("a backend server did not start")??;
        }
        Ok(())
    }

    /// Replaces the node namespace by a fresh one wired to every pod: each measurement starts
    /// with no netfilter hooks, conntrack or rules left by the mode before it.
    pub fn rewire_node(&mut self) -> Result<()> {
        self.remove_node();
        run_quiet("ip", &["netns", "add", &self.node], None)?;
        self.created.push(self.node.clone());

        let mut node_batch = String::from("link set lo up\n");
        let links = std::iter::once((&self.client, "c0".to_owned(), 0usize)).chain(
            self.backends
                .iter()
                .enumerate()
                .map(|(i, ns)| (ns, format!("b{i}"), i + 1)),
        );
        let mut pod_batches = Vec::new();
        for (ns, node_if, subnet) in links {
            node_batch.push_str(&format!(
                "link add {node_if} type veth peer name eth0 netns {ns}\n\
                 addr add 10.244.{subnet}.1/30 dev {node_if}\n\
                 link set {node_if} up\n"
            ));
            pod_batches.push((
                ns.clone(),
                format!(
                    "addr add 10.244.{subnet}.2/30 dev eth0\n\
                     link set eth0 up\n\
                     route add default via 10.244.{subnet}.1\n"
                ),
            ));
        }
        run_quiet("ip", &["-n", &self.node, "-batch", "-"], Some(&node_batch))?;
        for (ns, batch) in pod_batches {
            run_quiet("ip", &["-n", &ns, "-batch", "-"], Some(&batch))?;
        }
        run_quiet(
            "ip",
            &[
                "netns",
                "exec",
                &self.node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            None,
        )?;
        Ok(())
    }

    /// Deletes the node namespace. Its veths are deleted first, explicitly: a namespace is torn
    /// down asynchronously, and the pods' `eth0` must be gone before the next node creates new
    /// ones. A short pause lets the kernel finish freeing the old namespace's rules and
    /// conntrack entries before the next measurement.
    fn remove_node(&mut self) {
        let Some(pos) = self.created.iter().position(|n| *n == self.node) else {
            return;
        };
        let mut batch = String::from("link del c0\n");
        for i in 0..self.backends.len() {
            batch.push_str(&format!("link del b{i}\n"));
        }
        let _ = run_quiet(
            "ip",
            &["-force", "-n", &self.node, "-batch", "-"],
            Some(&batch),
        );
        let _ = run_quiet("ip", &["netns", "del", &self.node], None);
        self.created.remove(pos);
        std::thread::sleep(Duration::from_millis(300));
    }

    pub fn node_path(&self) -> PathBuf {
        netns_path(&self.node)
    }

    pub fn client_path(&self) -> PathBuf {
        netns_path(&self.client)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove_node();
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn serve(netns: &Path, index: u8, ready: &mpsc::Sender<Result<()>>) {
    let listener = (|| -> Result<TcpListener> {
        let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        // SAFETY: setns on a valid namespace fd moves only this thread, which serves in that
        // namespace for the rest of the process's life.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("entering {}", netns.display()));
        }
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, TARGET_PORT))
            .with_context(|| format!("listening on :{TARGET_PORT} in {}", netns.display()))
    })();
    let listener = match listener {
        Ok(l) => {
            let _ = ready.send(Ok(()));
            l
        }
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.write(&[index]);
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// A cgroup v2 directory for the load generator. On a hybrid host the v2 hierarchy is at
/// /sys/fs/cgroup/unified, on a pure v2 host at /sys/fs/cgroup; removed on drop.
pub struct BenchCgroup {
    pub dir: PathBuf,
}

impl BenchCgroup {
    pub fn create(prefix: &str) -> Result<Self> {
        let dir = cgroup2_root()?.join(prefix);
        std::fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Self { dir })
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        // The load generators have exited by now, but a cgroup empties asynchronously.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

/// The cgroup v2 mount: the one of /sys/fs/cgroup and /sys/fs/cgroup/unified whose filesystem
/// is cgroup2.
pub fn cgroup2_root() -> Result<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let Ok(path) = std::ffi::CString::new(candidate) else {
            continue;
        };
        // SAFETY: a zeroed statfs is a valid output buffer; path is NUL-terminated.
        let magic = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::statfs(path.as_ptr(), &mut st) != 0 {
                continue;
            }
            st.f_type as i64
        };
        if magic == CGROUP2_SUPER_MAGIC {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!("no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
}

/// Whether the bench run that created `name` (`bb-<pid>...`) is still running.
fn owner_alive(name: &str) -> bool {
    let digits: String = name
        .strip_prefix(PREFIX)
        .unwrap_or("")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<u32>() {
        Ok(pid) => Path::new("/proc").join(pid.to_string()).exists(),
        // Not ours (no pid after the prefix): leave it alone.
        Err(_) => true,
    }
}

/// Removes what a crashed earlier run left behind: its namespaces, its pins (through
/// `berth agent --cleanup` when a berth binary is known) and its cgroup.
pub fn clean_leftovers(berth: Option<&Path>) {
    let leftovers = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(PREFIX) && !owner_alive(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in leftovers(Path::new("/run/netns")) {
        eprintln!("removing leftover network namespace {ns}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    for pins in leftovers(Path::new("/sys/fs/bpf")) {
        let path = Path::new("/sys/fs/bpf").join(&pins);
        eprintln!("removing leftover pins {}", path.display());
        if let Some(berth) = berth {
            let _ = Command::new(berth)
                .args(["agent", "--cleanup", "--pin-root"])
                .arg(&path)
                .arg("--api-socket")
                .arg(std::env::temp_dir().join(format!("{pins}-gone.sock")))
                .stdout(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&path);
    }
    // Only directories named exactly as this bench names them: /tmp is everyone's.
    let tmp = std::env::temp_dir();
    for dir in leftovers(&tmp) {
        let rest = dir
            .trim_start_matches(PREFIX)
            .trim_start_matches(|c: char| c.is_ascii_digit());
        if rest.starts_with(TMP_SUFFIX) {
            eprintln!("removing leftover directory {}", tmp.join(&dir).display());
            let _ = std::fs::remove_dir_all(tmp.join(dir));
        }
    }
    if let Ok(root) = cgroup2_root() {
        for cg in leftovers(&root) {
            eprintln!("removing leftover cgroup {}", root.join(&cg).display());
            let _ = std::fs::remove_dir(root.join(cg));
        }
    }
}
