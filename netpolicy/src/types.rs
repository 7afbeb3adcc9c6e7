//! The cluster as the evaluator sees it: pods, namespaces, protocols, peers.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

/// Transport protocol of a connection or a policy port (NetworkPolicy allows exactly these).
/// Serialized in the API spelling, as it appears in persisted identities.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; case-sensitive, as the apiserver is).
    pub fn from_api(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// Which side of a pod a policy governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// A container port with a name, the target of named ports in policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// None for a pod without an address yet: ipBlocks never match it.
    pub ip: Option<Ipv4Addr>,
    pub ports: Vec<NamedPort>,
}

impl Pod {
    /// `namespace/name`, as explanations spell it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Labels as stored; `kubernetes.io/metadata.name` is added on evaluation (the apiserver
    /// sets it on every namespace, and policies select namespaces by name with it).
    pub labels: BTreeMap<String, String>,
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    Pod(&'a Pod),
    /// An address. If it is the IP of one of the pods given to [`crate::evaluate`], it is
    /// that pod; otherwise it is outside the cluster and no policy applies to it.
    Ip(Ipv4Addr),
    /// An address of the node the pods run on. Kubernetes lets a node always reach its pods
    /// (kubelet probes), so ingress from it is allowed whatever the policies say; otherwise
    /// it is an address outside the cluster, like [`Peer::Ip`] of a non-pod address, even if
    /// a pod (with host networking) has the same address.
    Node(Ipv4Addr),
}
