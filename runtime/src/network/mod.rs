//! Container networking on one host: a bridge per network, a veth pair per container, address
//! management, and egress masquerade.
//!
//! - [`NetworkConfig`]: the bridge (default `berth0`), its pod CIDR (default 10.88.0.0/16; the
//!   bridge holds the first host address, the containers' gateway), where leases live, and the
//!   resolvers containers get.
//! - [`Ipam`]: which container holds which address; persisted, locked, crash-consistent.
//! - [`setup_host`]: the bridge with its gateway address, IPv4 forwarding, and the masquerade
//!   rule ([`nat`]); idempotent, run before each attach.
//! - [`attach`] / [`detach`]: a container's veth pair and everything inside its namespace
//!   (eth0, address, lo, default route); [`loopback_up`] for a container with no network.
//! - [`etc_files`]: the container's `/etc/hosts` and `/etc/resolv.conf`.
//!
//! Links, addresses and routes go through rtnetlink only; nftables is the one command run
//! (see [`nat`] for why).

mod config;
pub mod etc_files;
mod ipam;
mod lock;
pub mod nat;
mod netlink;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

pub use config::{
    DEFAULT_BRIDGE, DEFAULT_SUBNET, DnsSettings, HOST_RESOLV_CONF, Ipv4Net, NetworkConfig,
    validate_bridge_name,
};
pub use ipam::Ipam;
pub use netlink::{CONTAINER_IFNAME, VethRoute, veth_routes};

/// Where IPv4 forwarding is switched on: containers' traffic to anything beyond the bridge is
/// routed by the host.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid {field} {value:?}: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "no free address left in {subnet} on bridge {bridge} ({leases} leased): remove containers or use a larger pod CIDR"
    )]
    Exhausted {
        bridge: String,
        subnet: Ipv4Net,
        leases: usize,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("address leases {}: {detail}", path.display())]
    State { path: PathBuf, detail: String },
    #[error("{op}: {detail}")]
    Netlink { op: String, detail: String },
    #[error("masquerade: {0}")]
    Nft(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl NetworkError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// A container's link to its bridge, as [`attach`] made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethAttachment {
    /// The host side, on the bridge (see [`host_ifname`]).
    pub host_ifname: String,
    pub host_ifindex: u32,
    /// The container side: always [`CONTAINER_IFNAME`].
    pub container_ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

fn id_part(container_id: &str) -> String {
    container_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(11)
        .collect()
}

/// The host-side veth name of a container: `bv` and the first 11 characters of its id (15
/// bytes, the kernel's limit). Deterministic, so a crashed run's leftovers can be found.
pub fn host_ifname(container_id: &str) -> String {
    format!("bv{}", id_part(container_id))
}

/// The container side's name while it is still in the host namespace, before it is moved and
/// renamed to eth0.
fn peer_ifname(container_id: &str) -> String {
    format!("bp{}", id_part(container_id))
}

/// Everything on the host a network needs before a container joins it: the bridge, up, with
/// the gateway address; IPv4 forwarding; the masquerade rule. Idempotent and safe to run
/// concurrently. Returns the bridge's ifindex.
pub fn setup_host(config: &NetworkConfig) -> Result<u32, NetworkError> {
    config.validate()?;
    let lock_path = config
        .state_dir
        .join("bridges")
        .join(format!("{}.lock", config.bridge));
    let _lock = lock::FileLock::exclusive(&lock_path)
        .map_err(|e| NetworkError::io("locking", &lock_path, e))?;
    let index = netlink::ensure_bridge(config)?;
    enable_ip_forward()?;
    nat::ensure_masquerade(config)?;
    Ok(index)
}

fn enable_ip_forward() -> Result<(), NetworkError> {
    let path = Path::new(IP_FORWARD);
    let current =
        std::fs::read_to_string(path).map_err(|e| NetworkError::io("reading", path, e))?;
    if current.trim() != "1" {
        std::fs::write(path, "1\n").map_err(|e| NetworkError::io("writing", path, e))?;
    }
    Ok(())
}

/// Connects the container whose init is `pid` (its network namespace exists; it has not
/// started) to `config`'s bridge with address `ip`. Call [`setup_host`] first.
pub fn attach(
    config: &NetworkConfig,
    container_id: &str,
    pid: i32,
    ip: Ipv4Addr,
) -> Result<VethAttachment, NetworkError> {
    netlink::attach_veth(config, container_id, pid, ip)
}

/// Deletes a container's veth pair by its host side (the container side goes with it).
/// Ok(false) when it is already gone, e.g. because the container's namespace died with it.
pub fn detach(host_ifname: &str) -> Result<bool, NetworkError> {
    netlink::delete_link_by_name(host_ifname)
}

/// Sets `lo` up in the network namespace of process `pid`.
pub fn loopback_up(pid: i32) -> Result<(), NetworkError> {
    netlink::loopback_up(pid)
}

/// The ifindex of interface `name` in the caller's network namespace, if it exists.
pub fn ifindex(name: &str) -> Result<Option<u32>, NetworkError> {
    netlink::ifindex(name)
}

/// Removes a network's host side: its masquerade table and its bridge (containers still on it
/// lose their connectivity). Leases are kept: they belong to containers, not to the bridge.
/// Returns whether the bridge existed.
pub fn teardown_host(bridge: &str) -> Result<bool, NetworkError> {
    validate_bridge_name(bridge)?;
    nat::remove_masquerade(bridge)?;
    netlink::delete_link_by_name(bridge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_deterministic_and_fit_ifnamsiz() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(host_ifname(id), "bv0123456789a");
        assert_eq!(peer_ifname(id), "bp0123456789a");
        assert!(host_ifname(id).len() <= 15);
        assert_eq!(
            host_ifname("../x"),
            "bvx",
            "only alphanumerics reach a name"
        );
    }
}
