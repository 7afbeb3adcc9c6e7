//! A small "cluster" for load-balancing tests: network namespaces as pods (each joined to the
//! host by a veth, with a default route through it, so pods reach each other through the host's
//! routing), servers inside them that answer with the pod's name, a private cgroup for the
//! socket-level load balancer, and `berth svc` against a test agent. Everything is removed on
//! drop, also when a test fails; traffic stays between namespaces the test made.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{agent::berth_bin, netns::NetnsPair};

/// A pod: a netns with a veth to the host and a default route via the host end.
pub struct Pod {
    pub name: String,
    pub net: NetnsPair,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Pod {
    pub fn create(name: &str, subnet_octet: u8) -> anyhow::Result<Self> {
        let net = NetnsPair::create(name, subnet_octet)?;
        net.exec_ip(&["route", "add", "default", "via", &net.host_addr])?;
        Ok(Self {
            name: name.to_owned(),
            net,
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
        })
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.net.ns_addr.parse().expect("pod address")
    }

    /// Starts a TCP server on `port` (greets with the pod name, then answers each line with
    /// "<name> <line>") and a UDP server on the same port (answers each datagram with the name).
    pub fn serve(&mut self, port: u16) -> anyhow::Result<()> {
        let ns = self.net.ns.clone();
        let (tcp, udp) = in_netns(&ns, move || -> std::io::Result<_> {
            Ok((
                TcpListener::bind(("0.0.0.0", port))?,
                UdpSocket::bind(("0.0.0.0", port))?,
            ))
        })??;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (name, stop) = (self.name.clone(), self.stop.clone());
        self.servers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut writer = match conn.try_clone() {
                                Ok(w) => w,
                                Err(_) => return,
                            };
                            if writeln!(writer, "{name}").is_err() {
                                return;
                            }
                            for line in BufReader::new(conn).lines() {
                                let Ok(line) = line else { break };
                                if writeln!(writer, "{name} {line}").is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let (name, stop) = (self.name.clone(), self.stop.clone());
        self.servers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(name.as_bytes(), from);
                }
            }
        }));
        Ok(())
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.servers.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs `f` on a thread that has joined netns `ns` (a thread's netns is its own; sockets keep
/// the netns they were made in).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    in_netns_path(&format!("/run/netns/{ns}"), f)
}

/// [`in_netns`] for a namespace given by path (`/proc/PID/ns/net` of a container).
pub fn in_netns_path<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = path.to_owned();
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

/// A cgroup v2 directory for one test; processes left in it are moved out before removal.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let root = berth::config::default_cgroup_root();
        let path = root.join(format!("berth-test-{tag}-{}", crate::unique_suffix()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TestCgroup {
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

/// Turns on IPv4 forwarding (pods reach each other through the host) and restores it on drop.
pub struct Forwarding {
    before: String,
}

impl Forwarding {
    pub fn enable() -> anyhow::Result<Self> {
        let path = "/proc/sys/net/ipv4/ip_forward";
        let before = std::fs::read_to_string(path)?.trim().to_owned();
        std::fs::write(path, "1")?;
        Ok(Self { before })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", &self.before);
    }
}

/// `lbclient` (this crate's client binary) in `cgroup` and `netns`; returns its output lines.
pub fn client(
    cgroup: Option<&Path>,
    netns: Option<&str>,
    args: &[&str],
) -> anyhow::Result<Vec<String>> {
    let out = client_command(cgroup, netns, args).output()?;
    if !out.status.success() {
        bail!(
            "lbclient {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

pub fn client_command(cgroup: Option<&Path>, netns: Option<&str>, args: &[&str]) -> Command {
    // Cargo builds a test crate's binaries before its integration tests; a missing one is
    // reported by the spawn that follows, naming the path.
    let bin = crate::agent::target_bin("lbclient", "`cargo test -p berth-tests` builds it")
        .unwrap_or_else(|_| PathBuf::from("lbclient"));
    let mut cmd = Command::new(bin);
    if let Some(cg) = cgroup {
        cmd.arg("--cgroup").arg(cg);
    }
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// `berth svc <args>` against the agent at `api_socket`, with `stdin` as input; returns
/// (success, stdout, stderr).
pub fn svc(
    api_socket: &Path,
    args: &[&str],
    stdin: &str,
) -> anyhow::Result<(bool, String, String)> {
    berth_subcommand("svc", api_socket, args, stdin)
}

/// `berth policy --api-socket SOCK ARGS`: (success, stdout, stderr).
pub fn policy(api_socket: &Path, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    berth_subcommand("policy", api_socket, args, "")
}

fn berth_subcommand(
    subcommand: &str,
    api_socket: &Path,
    args: &[&str],
    stdin: &str,
) -> anyhow::Result<(bool, String, String)> {
    let mut child = Command::new(berth_bin()?)
        .arg(subcommand)
        .arg("--api-socket")
        .arg(api_socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A ClusterIP Service (one TCP and one UDP port, both named, target port named) and one
/// EndpointSlice with `endpoints` as (address, ready, serving, terminating).
pub fn service_yaml(
    name: &str,
    cluster_ip: &str,
    extra_spec: &str,
    endpoints: &[(Ipv4Addr, bool, bool, bool)],
    port: u16,
) -> String {
    let mut eps = String::new();
    for (addr, ready, serving, terminating) in endpoints {
        eps.push_str(&format!(
            "  - addresses: [\"{addr}\"]\n    conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n    nodeName: test-node\n"
        ));
    }
    if endpoints.is_empty() {
        eps.push_str("  []\n");
    }
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {cluster_ip}
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: web
  - name: dns
    port: 53
    protocol: UDP
    targetPort: web-udp
{extra_spec}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
- name: dns
  port: {port}
  protocol: UDP
endpoints:
{eps}"
    )
}

/// How often each line occurs (answers from `tcp-count` → connections per pod).
pub fn tally(lines: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for l in lines {
        *counts.entry(l.clone()).or_insert(0) += 1;
    }
    counts
}
