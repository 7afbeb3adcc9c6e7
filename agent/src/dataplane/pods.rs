//! The data plane from a container's side, used by the daemonless engine (`berth run`): attach
//! the pinned pod programs to the container's host-side veth, and publish its ports
//! (`-p HOST:CTR[/udp]`) as frontends of the service maps.
//!
//! The agent loads and pins the programs; the engine only attaches pinned programs and writes
//! its own container's entries, so two processes never read-modify-write the same entry.

use std::{net::Ipv4Addr, path::Path, str::FromStr};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
};
use berth_common::programs;

use super::{DataplaneError, PinLayout};

/// Transport protocol of a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

/// One `-p HOST:CTR[/udp]` mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PublishedPort {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: PortProtocol,
}

#[derive(Debug, thiserror::Error)]
pub enum PodDataplaneError {
    #[error("invalid published port {spec:?}: {reason} (expected HOST:CONTAINER[/tcp|/udp])")]
    PortSpec { spec: String, reason: String },
    #[error("{op}: {detail}")]
    Op { op: String, detail: String },
}

impl FromStr for PublishedPort {
    type Err = PodDataplaneError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| PodDataplaneError::PortSpec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let (ports, protocol) = match spec.rsplit_once('/') {
            Some((p, "tcp")) => (p, PortProtocol::Tcp),
            Some((p, "udp")) => (p, PortProtocol::Udp),
            Some((_, other)) => return Err(bad(&format!("unknown protocol {other:?}"))),
            None => (spec, PortProtocol::Tcp),
        };
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| bad("missing ':' between host and container port"))?;
        let port = |s: &str, which: &str| -> Result<u16, PodDataplaneError> {
            match s.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!("{which} port {s:?} is not in 1-65535"))),
                Ok(p) => Ok(p),
            }
        };
        Ok(Self {
            host_port: port(host, "host")?,
            container_port: port(container, "container")?,
            protocol,
        })
    }
}

/// The programs on each pod's host-side veth and where they hook: tc ingress sees what the pod
/// sends (service translation, the pod's egress policy), tc egress what it receives (its
/// ingress policy).
const POD_PROGRAMS: [(&str, TcAttachType); 2] = [
    (programs::TC_POD_INGRESS, TcAttachType::Ingress),
    (programs::TC_POD_EGRESS, TcAttachType::Egress),
];

/// Attaches the pinned pod programs to `host_ifname` (the host side of a container's veth) and
/// pins the links. Returns Ok(false), having changed nothing, when no agent has loaded the data
/// plane under `pin_root` yet.
pub fn attach_pod_veth(pin_root: &Path, host_ifname: &str) -> Result<bool, PodDataplaneError> {
    let layout = PinLayout::new(pin_root);
    if POD_PROGRAMS
        .iter()
        .any(|(name, _)| !layout.prog(name).exists())
    {
        return Ok(false);
    }
    for (name, hook) in POD_PROGRAMS {
        let op = |what: &str| format!("{what} {name} on {host_ifname}");
        let mut program =
            SchedClassifier::from_pin(layout.prog(name)).map_err(|e| PodDataplaneError::Op {
                op: op("opening"),
                detail: e.to_string(),
            })?;
        let link_pin = layout.link(name, host_ifname);
        // A pin left by a deleted veth of the same name points at a dead link: replace it.
        let _ = std::fs::remove_file(&link_pin);
        let id = program
            .attach(host_ifname, hook)
            .map_err(|e| PodDataplaneError::Op {
                op: op("attaching"),
                detail: e.to_string(),
            })?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| PodDataplaneError::Op {
                op: op("taking the link of"),
                detail: e.to_string(),
            })?
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| PodDataplaneError::Op {
                op: op("pinning"),
                detail: format!("not a bpf_link (TCX needs Linux 6.6): {e}"),
            })?;
        link.pin(&link_pin).map_err(|e| PodDataplaneError::Op {
            op: op("pinning"),
            detail: e.to_string(),
        })?;
    }
    Ok(true)
}

/// Removes the link pins of `host_ifname` (the links themselves die with the veth).
pub fn detach_pod_veth(pin_root: &Path, host_ifname: &str) {
    let layout = PinLayout::new(pin_root);
    for (name, _) in POD_PROGRAMS {
        let _ = std::fs::remove_file(layout.link(name, host_ifname));
    }
}

/// Agent side: loads the pod programs, pins them for the engine, and switches every pod veth
/// already attached to the new programs (BPF_LINK_UPDATE: atomic). Pins of veths that are gone
/// are removed.
pub(super) fn load_and_pin(ebpf: &mut aya::Ebpf, layout: &PinLayout) -> super::Result<()> {
    for (name, _) in POD_PROGRAMS {
        load_and_pin_one(ebpf, layout, name)?;
    }
    Ok(())
}

fn load_and_pin_one(
    ebpf: &mut aya::Ebpf,
    layout: &PinLayout,
    name: &'static str,
) -> super::Result<()> {
    let program = super::loaded_program(ebpf, name, SchedClassifier::load)?;
    let pin = layout.prog(name);
    let _ = std::fs::remove_file(&pin);
    program.pin(&pin).map_err(|e| DataplaneError::Link {
        op: "pinning program",
        path: pin.clone(),
        detail: e.to_string(),
    })?;
    let links = layout.links().map_err(|source| DataplaneError::Pins {
        path: layout.links_dir(),
        source,
    })?;
    for (prog, iface, path) in links {
        if prog != name {
            continue;
        }
        let swapped = PinnedLink::from_pin(&path)
            .map_err(|e| e.to_string())
            .and_then(|l| SchedClassifierLink::try_from(FdLink::from(l)).map_err(|e| e.to_string()))
            .and_then(|l| program.attach_to_link(l).map_err(|e| e.to_string()))
            .and_then(|id| program.take_link(id).map(drop).map_err(|e| e.to_string()));
        match swapped {
            Ok(()) if nix::net::if_::if_nametoindex(iface.as_str()).is_ok() => {
                tracing::info!(program = name, iface, "re-attached (atomic program swap)");
            }
            outcome => {
                tracing::info!(
                    program = name,
                    iface,
                    ?outcome,
                    "veth gone; removing its link pin"
                );
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

/// Publishes `ports` of the container `container_id` at `ip` on every node address: each becomes
/// a one-backend frontend (`FRONTEND_F_PUBLISHED`) for traffic from outside (XDP on the uplink)
/// and from the node and its pods (socket hooks). The set id is derived from the port, which is
/// unique as a frontend key, so runtimes never collide with each other or with the agent.
pub fn publish_ports(
    pin_root: &Path,
    container_id: &str,
    ip: Ipv4Addr,
    ports: &[PublishedPort],
) -> Result<(), PodDataplaneError> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut maps =
        super::lb::LbMaps::open(&PinLayout::new(pin_root)).map_err(|e| PodDataplaneError::Op {
            op: format!("publishing ports of {container_id}"),
            detail: format!("{e} (start `berth agent` once to load the data plane)"),
        })?;
    let mut done: Vec<PublishedPort> = Vec::new();
    for port in ports {
        if let Err(detail) = maps.publish(ip, port) {
            for p in &done {
                maps.unpublish(ip, p);
            }
            return Err(PodDataplaneError::Op {
                op: format!(
                    "publishing {}:{}/{:?} of {container_id}",
                    port.host_port, port.container_port, port.protocol
                ),
                detail,
            });
        }
        done.push(*port);
    }
    Ok(())
}

/// Withdraws what [`publish_ports`] published for `container_id` at `ip`; a port now published
/// by another container (another backend address) is left alone.
pub fn unpublish_ports(
    pin_root: &Path,
    _container_id: &str,
    ip: Ipv4Addr,
    ports: &[PublishedPort],
) {
    if ports.is_empty() {
        return;
    }
    if let Ok(mut maps) = super::lb::LbMaps::open(&PinLayout::new(pin_root)) {
        for port in ports {
            maps.unpublish(ip, port);
        }
    }
}
