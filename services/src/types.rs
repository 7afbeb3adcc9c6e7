//! The vocabulary shared by the parser, the catalog and the agent.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use k8s_openapi::{api::core::v1::Service, api::discovery::v1::EndpointSlice};
use serde::{Deserialize, Serialize};

/// A service's identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `ns/name`, or `name` in namespace `default` (as `berth svc show` takes it).
impl FromStr for ServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (namespace, name) = s.split_once('/').unwrap_or(("default", s));
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(format!(
                "{s:?} is not a service name: use NAME or NAMESPACE/NAME"
            ));
        }
        Ok(ServiceRef::new(namespace, name))
    }
}

/// A frontend's or backend's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The Kubernetes spelling: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The IP protocol number (`berth_common::lb::PROTO_*`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// Parses the Kubernetes spelling (case-sensitive, as the apiserver is).
    pub fn from_k8s(s: &str) -> Option<Protocol> {
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
        f.write_str(self.as_str())
    }
}

/// Which part of a Service a frontend comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    /// `spec.clusterIP(s)`: port `spec.ports[].port`.
    ClusterIp,
    /// Any node address, port `spec.ports[].nodePort`.
    NodePort,
    /// `spec.externalIPs[]`: port `spec.ports[].port`.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip`: port `spec.ports[].port`.
    LoadBalancer,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        })
    }
}

/// Where traffic enters: Internal = from pods and the host (socket hooks, pod veths); External =
/// arriving on the node's uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    Internal,
    External,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Internal => "internal",
            Scope::External => "external",
        })
    }
}

/// One load-balancer frontend with the backends chosen for it on this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    pub service: ServiceRef,
    /// Service port name ("" when unnamed).
    pub port_name: String,
    pub kind: FrontendKind,
    pub scope: Scope,
    /// None = any node address (NodePort).
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub protocol: Protocol,
    /// ClientIP session affinity, seconds.
    pub affinity_timeout: Option<u32>,
    /// Already selected for this frontend, sorted by (addr, port); empty = reject.
    pub backends: Vec<Backend>,
}

impl Frontend {
    /// `10.96.0.10:53/UDP`, `*:30080/TCP` for a node port.
    pub fn address(&self) -> String {
        match self.addr {
            Some(addr) => format!("{addr}:{}/{}", self.port, self.protocol),
            None => format!("*:{}/{}", self.port, self.protocol),
        }
    }
}

/// Why a backend was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BackendState {
    /// The endpoint is ready.
    Ready,
    /// No candidate was ready: this endpoint is terminating but still serving (fallback).
    Terminating,
}

/// One backend of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub state: BackendState,
    /// The endpoint's `nodeName`.
    pub node: Option<String>,
    /// The endpoint's `targetRef` as `namespace/name` (usually the pod).
    pub target: Option<String>,
}

/// What the compiler needs to know about the node it compiles for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeContext {
    /// This node's name, compared with endpoints' `nodeName` (Local traffic policies). Empty =
    /// no endpoint is local.
    pub node_name: String,
    /// CIDRs (address, prefix length) backend addresses must be inside; empty = accept any.
    pub known_networks: Vec<(Ipv4Addr, u8)>,
}

impl NodeContext {
    pub fn new(node_name: impl Into<String>) -> Self {
        NodeContext {
            node_name: node_name.into(),
            known_networks: Vec::new(),
        }
    }

    pub fn with_networks(mut self, networks: impl IntoIterator<Item = (Ipv4Addr, u8)>) -> Self {
        self.known_networks.extend(networks);
        self
    }

    /// Whether `addr` is acceptable as a backend address (inside a known network, or no
    /// networks configured). A prefix length over 32 counts as 32.
    pub fn accepts(&self, addr: Ipv4Addr) -> bool {
        self.known_networks.is_empty()
            || self.known_networks.iter().any(|&(net, len)| {
                let len = u32::from(len.min(32));
                let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            })
    }

    /// Whether an endpoint on `node` is local to this node.
    pub fn is_local(&self, node: Option<&str>) -> bool {
        !self.node_name.is_empty() && node == Some(self.node_name.as_str())
    }

    pub(crate) fn networks_display(&self) -> String {
        let nets: Vec<String> = self
            .known_networks
            .iter()
            .map(|(net, len)| format!("{net}/{len}"))
            .collect();
        nets.join(", ")
    }
}

/// The kinds of object berth reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    Service,
    EndpointSlice,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        })
    }
}

/// An object's identity: kind, namespace, name. Displays as `Service default/web`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{} {}/<no name>", self.kind, self.namespace)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A typed object as parsed, or as a watcher would hand it over.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
        }
    }

    /// `metadata.namespace`, `default` when absent or empty.
    pub fn namespace(&self) -> &str {
        let ns = match self {
            Object::Service(s) => s.metadata.namespace.as_deref(),
            Object::EndpointSlice(s) => s.metadata.namespace.as_deref(),
        };
        match ns {
            Some(ns) if !ns.is_empty() => ns,
            _ => "default",
        }
    }

    /// `metadata.name`, "" when absent.
    pub fn name(&self) -> &str {
        match self {
            Object::Service(s) => s.metadata.name.as_deref(),
            Object::EndpointSlice(s) => s.metadata.name.as_deref(),
        }
        .unwrap_or("")
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.kind(),
            namespace: self.namespace().to_owned(),
            name: self.name().to_owned(),
        }
    }
}

impl From<Service> for Object {
    fn from(s: Service) -> Self {
        Object::Service(Box::new(s))
    }
}

impl From<Box<Service>> for Object {
    fn from(s: Box<Service>) -> Self {
        Object::Service(s)
    }
}

impl From<Box<EndpointSlice>> for Object {
    fn from(s: Box<EndpointSlice>) -> Self {
        Object::EndpointSlice(s)
    }
}

impl From<EndpointSlice> for Object {
    fn from(s: EndpointSlice) -> Self {
        Object::EndpointSlice(Box::new(s))
    }
}
