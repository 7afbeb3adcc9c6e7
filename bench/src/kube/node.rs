//! A contender's node: a network namespace of its own, joined to the control plane's namespace
//! by a veth pair (its only link: the route to the API server goes through it, and nothing else
//! leaves), with the backends on its loopback and a TCP server answering on them.
//!
//! - Backends: 20 addresses on the node's loopback (this kernel has no dummy interfaces): set
//!   A = 10.250.0.1-10 (index 0-9), set B = 10.250.1.1-10 (index 10-19). Every EndpointSlice
//!   points at one set; a change moves a slice to the other set, so one connection tells which
//!   version a contender has programmed. Every node has the
//!   same addresses: the slices are shared, the answers are local.
//! - Service range: `local 10.96.0.0/16 dev lo`. A connection to a ClusterIP nobody translated
//!   reaches the node's own stack and is refused at once (no server on port 80), for both
//!   contenders: berth rewrites the destination in connect() before the route lookup, and
//!   kube-proxy's OUTPUT DNAT needs a route to the ClusterIP in the first place (an
//!   `unreachable` route would fail every connect before netfilter sees it). Clients connect
//!   from 10.244.0.2 (the route's source), as a pod would. No packet can leave the machine: the
//!   node has no default route.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::services::child::run_quiet;

/// The port the backends listen on (the slices' port).
pub const TARGET_PORT: u16 = 8080;
/// The source address of the node's clients (a pod address would be one like it): without it,
/// a connection to a ClusterIP through the `local` route would come from the ClusterIP itself.
pub const CLIENT_IP: &str = "10.244.0.2";
/// The Services' port.
pub const SERVICE_PORT: u16 = 80;
/// Endpoints per EndpointSlice (and per backend set).
pub const ENDPOINTS: usize = 10;

/// Backend `i` (0..20): set A is 0..10, set B 10..20.
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (i / ENDPOINTS) as u8, (i % ENDPOINTS) as u8 + 1)
}

/// The index a backend address answers with.
fn backend_index(ip: Ipv4Addr) -> u8 {
    let o = ip.octets();
    (o[2] as usize * ENDPOINTS + (o[3] as usize).saturating_sub(1)) as u8
}

/// A node namespace; deleted on drop (after its servers stopped: a listening socket would keep
/// the namespace alive).
pub struct Node {
    pub name: String,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    created: bool,
}

impl Node {
    /// Creates namespace `name`, linked to the control plane's namespace `cluster_ns` by a veth
    /// pair on 10.252.`link`.0/30 (cluster end .1, node end .2), routes `api_ip` through it,
    /// and starts the backend server.
    pub fn create(name: &str, link: u8, cluster_ns: &str, api_ip: &str) -> Result<Self> {
        let mut node = Node {
            name: name.to_owned(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            created: false,
        };
        run_quiet("ip", &["netns", "add", name], None)?;
        node.created = true;
        let cluster_if = format!("bkc{link}");
        run_quiet(
            "ip",
            &["-n", cluster_ns, "-batch", "-"],
            Some(&format!(
                "link add {cluster_if} type veth peer name eth0 netns {name}\n\
                 addr add 10.252.{link}.1/30 dev {cluster_if}\n\
                 link set {cluster_if} up\n"
            )),
        )
        .context("linking the node to the control plane's namespace")?;
        let mut batch = format!(
            "link set lo up\n\
             addr add 10.252.{link}.2/30 dev eth0\n\
             link set eth0 up\n\
             route add {api_ip}/32 via 10.252.{link}.1\n\
             addr add {CLIENT_IP}/32 dev lo\n\
             route add local 10.96.0.0/16 dev lo src {CLIENT_IP}\n"
        );
        for i in 0..2 * ENDPOINTS {
            batch.push_str(&format!("addr add {}/32 dev lo\n", backend_ip(i)));
        }
        run_quiet("ip", &["-n", name, "-batch", "-"], Some(&batch))
            .context("setting up the node namespace")?;
        node.start_servers()?;
        Ok(node)
    }

    pub fn path(&self) -> PathBuf {
        crate::services::topo::netns_path(&self.name)
    }

    /// Two threads accepting on 0.0.0.0:8080 in the namespace: each connection gets one byte,
    /// the index of the backend address it reached, and is closed.
    fn start_servers(&mut self) -> Result<()> {
        let path = self.path();
        let (tx, rx) = mpsc::channel();
        let stop = self.stop.clone();
        let first = std::thread::Builder::new()
            .name(format!("{}-server", self.name))
            .spawn(move || {
                let listener = (|| -> Result<TcpListener> {
                    let ns = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    // SAFETY: setns on a valid namespace fd moves only this thread.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(std::io::Error::last_os_error())
                            .with_context(|| format!("entering {}", path.display()));
                    }
                    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, TARGET_PORT))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })();
                match listener {
                    Ok(l) => {
                        let second = l.try_clone();
                        let _ = tx.send(second.map_err(anyhow::Error::from));
                        serve(&l, &stop);
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err));
                    }
                }
            })?;
        self.servers.push(first);
        let second = rx
            .recv_timeout(Duration::from_secs(10))
            .context("the backend server did not start")??;
        let stop = self.stop.clone();
        self.servers.push(
            std::thread::Builder::new()
                .name(format!("{}-server2", self.name))
                .spawn(move || serve(&second, &stop))?,
        );
        Ok(())
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for at most 100 ms.
        unsafe { libc::poll(&mut pfd, 1, 100) };
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let index = match stream.local_addr() {
                        Ok(std::net::SocketAddr::V4(a)) => backend_index(*a.ip()),
                        _ => 255,
                    };
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write(&[index]);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                // EMFILE and friends: back off instead of spinning.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.servers.drain(..) {
            let _ = t.join();
        }
        if self.created {
            // Deleting the namespace deletes its veth end, and with it the control plane's.
            let _ = run_quiet("ip", &["netns", "del", &self.name], None);
        }
    }
}

/// The targets file of the direct ceiling: set A's backends.
pub fn direct_targets() -> Vec<SocketAddrV4> {
    (0..ENDPOINTS)
        .map(|i| SocketAddrV4::new(backend_ip(i), TARGET_PORT))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_and_indices_round_trip() {
        assert_eq!(backend_ip(0), Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(backend_ip(9), Ipv4Addr::new(10, 250, 0, 10));
        assert_eq!(backend_ip(10), Ipv4Addr::new(10, 250, 1, 1));
        for i in 0..2 * ENDPOINTS {
            assert_eq!(usize::from(backend_index(backend_ip(i))), i);
        }
    }
}
