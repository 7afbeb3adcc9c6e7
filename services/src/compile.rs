//! Validation and normalization of one object into what the catalog stores.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, Serialize};

use crate::{
    DEFAULT_AFFINITY_TIMEOUT, Kind, LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME,
    MAX_AFFINITY_TIMEOUT, NodeContext, ObjectKey, Problem, Protocol, ServiceRef,
};

/// `spec.type` of a served service (ExternalName services are skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        })
    }
}

/// `spec.externalTrafficPolicy` / `spec.internalTrafficPolicy`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

impl std::fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        })
    }
}

/// A served Service, normalized: what `berth svc ls/show` displays and frontends are built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub service: ServiceRef,
    pub service_type: ServiceType,
    /// IPv4 addresses of `spec.clusterIPs` (or `spec.clusterIP`), in order.
    pub cluster_ips: Vec<Ipv4Addr>,
    /// IPv4 addresses of `spec.externalIPs`, in order, without duplicates.
    pub external_ips: Vec<Ipv4Addr>,
    /// IPv4 VIP-mode addresses of `status.loadBalancer.ingress[].ip`, without duplicates.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.ports`, in order.
    pub ports: Vec<ServicePortEntry>,
    /// ClientIP session affinity timeout in seconds; None = no affinity.
    pub affinity_timeout: Option<u32>,
    pub external_traffic_policy: TrafficPolicy,
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort` of a LoadBalancer service with `externalTrafficPolicy: Local`.
    pub health_check_node_port: Option<u16>,
}

impl ServiceEntry {
    /// Whether the service takes traffic from outside the cluster (node ports, external or
    /// load-balancer IPs), i.e. has frontends in both scopes.
    pub fn externally_accessible(&self) -> bool {
        self.ports.iter().any(|p| p.node_port.is_some())
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }
}

/// One `spec.ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortEntry {
    /// "" when unnamed.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Set for NodePort and LoadBalancer services (unless a LoadBalancer service has
    /// `allocateLoadBalancerNodePorts: false` and no node port).
    pub node_port: Option<u16>,
    /// `targetPort` as written (number or name), for display only: backends' ports come from
    /// the EndpointSlices.
    pub target_port: Option<String>,
}

/// A stored IPv4 EndpointSlice, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEntry {
    pub namespace: String,
    pub name: String,
    /// From the `kubernetes.io/service-name` label, in the slice's namespace.
    pub service: ServiceRef,
    /// Ports with a number (ports without one are dropped, as kube-proxy does).
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointEntry>,
}

/// One `ports[]` entry of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePort {
    /// "" when unnamed; matches the service port of the same name.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One `endpoints[]` entry of an EndpointSlice, conditions resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    /// The first of `addresses` (the others are validated, then ignored, as kube-proxy does).
    pub addr: Ipv4Addr,
    /// `conditions.ready`, nil = true.
    pub ready: bool,
    /// `conditions.serving`, nil = `ready`.
    pub serving: bool,
    /// `conditions.terminating`, nil = false.
    pub terminating: bool,
    pub node: Option<String>,
    /// `targetRef` as `namespace/name`.
    pub target: Option<String>,
}

/// The outcome of compiling a valid object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Compiled<T> {
    Entry(T),
    /// Valid, but not served by berth; the reason is for the summary.
    Skip(String),
}

/// Collects the problems of one object.
struct Checker {
    object: String,
    problems: Vec<Problem>,
}

impl Checker {
    fn new(key: &ObjectKey) -> Self {
        Checker {
            object: key.to_string(),
            problems: Vec::new(),
        }
    }

    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems
            .push(Problem::new(&self.object, Some(field.into()), message));
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<Problem>> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.problems)
        }
    }
}

fn port_number(c: &mut Checker, field: String, value: i32) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            c.err(field, format!("{value} is out of range 1-65535"));
            None
        }
    }
}

fn protocol(c: &mut Checker, field: String, value: Option<&str>) -> Protocol {
    match value {
        None => Protocol::Tcp,
        Some(p) => Protocol::from_k8s(p).unwrap_or_else(|| {
            c.err(
                field,
                format!("unsupported value {p:?}: expected TCP, UDP or SCTP"),
            );
            Protocol::Tcp
        }),
    }
}

/// Parses a frontend address: Some(Some(v4)), Some(None) for a valid IPv6 address (ignored),
/// None after reporting an invalid one.
fn frontend_ip(c: &mut Checker, field: String, value: &str) -> Option<Option<Ipv4Addr>> {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => Some(None),
        Ok(IpAddr::V4(ip)) => match special(ip) {
            Some(what) => {
                c.err(
                    field,
                    format!("{ip} is {what}: not usable as a service address"),
                );
                None
            }
            None => Some(Some(ip)),
        },
        Err(_) => {
            c.err(field, format!("{value:?} is not a valid IP address"));
            None
        }
    }
}

/// Addresses no frontend or backend may have.
fn special(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

fn skipped_by_label(labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    let proxy = labels?.get(LABEL_SERVICE_PROXY_NAME)?;
    Some(format!(
        "labelled {LABEL_SERVICE_PROXY_NAME}={proxy}: handled by another proxy"
    ))
}

fn traffic_policy(c: &mut Checker, field: &str, value: Option<&str>) -> TrafficPolicy {
    match value {
        None | Some("Cluster") => TrafficPolicy::Cluster,
        Some("Local") => TrafficPolicy::Local,
        Some(v) => {
            c.err(
                field,
                format!("unsupported value {v:?}: expected Cluster or Local"),
            );
            TrafficPolicy::Cluster
        }
    }
}

/// Validates and normalizes a Service.
pub(crate) fn compile_service(svc: &Service) -> Result<Compiled<ServiceEntry>, Vec<Problem>> {
    let namespace = match svc.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    };
    let name = svc.metadata.name.as_deref().unwrap_or("");
    let key = ObjectKey {
        kind: Kind::Service,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut c = Checker::new(&key);
    if name.is_empty() {
        c.err("metadata.name", "is required");
        return Err(c.problems);
    }
    if let Some(reason) = skipped_by_label(svc.metadata.labels.as_ref()) {
        return Ok(Compiled::Skip(reason));
    }
    let default_spec = Default::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => {
            return Ok(Compiled::Skip(
                "type ExternalName: resolved by DNS, not proxied".into(),
            ));
        }
        Some(t) => {
            c.err(
                "spec.type",
                format!(
                    "unsupported value {t:?}: expected ClusterIP, NodePort, LoadBalancer or ExternalName"
                ),
            );
            return Err(c.problems);
        }
    };

    // Cluster IPs: spec.clusterIPs, whose first entry must be spec.clusterIP when both are set.
    let primary = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    let list: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => primary
            .map(|ip| ("spec.clusterIP".to_owned(), ip))
            .into_iter()
            .collect(),
    };
    if let (Some(primary), Some((_, first))) = (primary, list.first())
        && primary != *first
    {
        c.err(
            "spec.clusterIPs[0]",
            format!("{first:?} must be the same as spec.clusterIP {primary:?}"),
        );
        return Err(c.problems);
    }
    if list.iter().any(|(_, ip)| *ip == "None") {
        if list.len() > 1 {
            c.err(
                "spec.clusterIPs",
                "\"None\" (headless) must be the only entry",
            );
        } else if service_type != ServiceType::ClusterIp {
            c.err(
                "spec.clusterIP",
                format!(
                    "\"None\" (headless) is only valid with type ClusterIP, not {service_type}"
                ),
            );
        } else {
            return Ok(Compiled::Skip(
                "headless (clusterIP None): resolved by DNS, not proxied".into(),
            ));
        }
        return Err(c.problems);
    }
    if list.is_empty() {
        c.err(
            "spec.clusterIP",
            "is required: berth does not allocate cluster IPs",
        );
    }
    let mut cluster_ips = Vec::new();
    let mut saw_v6 = false;
    for (field, ip) in &list {
        match frontend_ip(&mut c, field.clone(), ip) {
            Some(Some(ip)) => {
                if cluster_ips.contains(&ip) {
                    c.err(field.clone(), format!("duplicate address {ip}"));
                }
                cluster_ips.push(ip);
            }
            Some(None) => saw_v6 = true,
            None => {}
        }
    }

    let mut external_ips = Vec::new();
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if let Some(Some(ip)) = frontend_ip(&mut c, format!("spec.externalIPs[{i}]"), ip)
            && !external_ips.contains(&ip)
        {
            external_ips.push(ip);
        }
    }

    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue; // hostname-only ingress: nothing to program
        };
        let vip = match ing.ip_mode.as_deref() {
            None | Some("VIP") => true,
            Some("Proxy") => false,
            Some(m) => {
                c.err(
                    format!("status.loadBalancer.ingress[{i}].ipMode"),
                    format!("unsupported value {m:?}: expected VIP or Proxy"),
                );
                false
            }
        };
        if let Some(Some(ip)) =
            frontend_ip(&mut c, format!("status.loadBalancer.ingress[{i}].ip"), ip)
            && vip
            && !load_balancer_ips.contains(&ip)
        {
            load_balancer_ips.push(ip);
        }
    }

    let external_traffic_policy = traffic_policy(
        &mut c,
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    );
    let internal_traffic_policy = traffic_policy(
        &mut c,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    );

    let affinity_timeout = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => Some(t),
                    _ => {
                        c.err(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{t} is out of range 1-{MAX_AFFINITY_TIMEOUT}"),
                        );
                        None
                    }
                },
            }
        }
        Some(a) => {
            c.err(
                "spec.sessionAffinity",
                format!("unsupported value {a:?}: expected None or ClientIP"),
            );
            None
        }
    };

    let health_check_node_port = match spec.health_check_node_port {
        None | Some(0) => None,
        Some(p) => port_number(&mut c, "spec.healthCheckNodePort".into(), p).filter(|_| {
            service_type == ServiceType::LoadBalancer
                && external_traffic_policy == TrafficPolicy::Local
        }),
    };

    let ports_in = spec.ports.as_deref().unwrap_or(&[]);
    if ports_in.is_empty() {
        c.err("spec.ports", "at least one port is required");
    }
    let allocate_node_ports = spec.allocate_load_balancer_node_ports != Some(false);
    let mut ports = Vec::with_capacity(ports_in.len());
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, p) in ports_in.iter().enumerate() {
        let at = |field: &str| format!("spec.ports[{i}].{field}");
        let name = p.name.clone().unwrap_or_default();
        if name.is_empty() {
            if ports_in.len() > 1 {
                c.err(
                    at("name"),
                    "is required when a service has more than one port",
                );
            }
        } else if !names.insert(name.clone()) {
            c.err(at("name"), format!("duplicate port name {name:?}"));
        }
        let protocol = protocol(&mut c, at("protocol"), p.protocol.as_deref());
        let port = port_number(&mut c, at("port"), p.port);
        if let Some(port) = port
            && !numbers.insert((port, protocol))
        {
            c.err(
                format!("spec.ports[{i}]"),
                format!("duplicate port {port}/{protocol}"),
            );
        }
        let node_port = match (p.node_port.filter(|&n| n != 0), service_type) {
            (Some(_), ServiceType::ClusterIp) => {
                c.err(
                    at("nodePort"),
                    "may only be set when spec.type is NodePort or LoadBalancer",
                );
                None
            }
            (Some(n), _) => {
                let n = port_number(&mut c, at("nodePort"), n);
                if let Some(n) = n
                    && !node_ports.insert((n, protocol))
                {
                    c.err(
                        at("nodePort"),
                        format!("duplicate node port {n}/{protocol}"),
                    );
                }
                n
            }
            (None, ServiceType::ClusterIp) => None,
            (None, ServiceType::NodePort) => {
                c.err(
                    at("nodePort"),
                    "is required for type NodePort: berth does not allocate node ports",
                );
                None
            }
            (None, ServiceType::LoadBalancer) => {
                if allocate_node_ports {
                    c.err(
                        at("nodePort"),
                        "is required for type LoadBalancer unless spec.allocateLoadBalancerNodePorts is false: berth does not allocate node ports",
                    );
                }
                None
            }
        };
        let target_port = match &p.target_port {
            None | Some(IntOrString::Int(0)) => None,
            Some(IntOrString::Int(n)) => {
                port_number(&mut c, at("targetPort"), *n).map(|n| n.to_string())
            }
            Some(IntOrString::String(s)) if s.is_empty() => None,
            Some(IntOrString::String(s)) => Some(s.clone()),
        };
        if let Some(port) = port {
            ports.push(ServicePortEntry {
                name,
                protocol,
                port,
                node_port,
                target_port,
            });
        }
    }

    if c.problems.is_empty() && cluster_ips.is_empty() && saw_v6 {
        return Ok(Compiled::Skip(
            "IPv6-only service: berth serves IPv4 only".into(),
        ));
    }
    c.finish(Compiled::Entry(ServiceEntry {
        service: ServiceRef::new(namespace, name),
        service_type,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        affinity_timeout,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
    }))
}

/// Validates and normalizes an EndpointSlice. With a context, backend addresses must also be in
/// its known networks.
pub(crate) fn compile_slice(
    slice: &EndpointSlice,
    ctx: Option<&NodeContext>,
) -> Result<Compiled<SliceEntry>, Vec<Problem>> {
    let namespace = match slice.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => "default",
    };
    let name = slice.metadata.name.as_deref().unwrap_or("");
    let key = ObjectKey {
        kind: Kind::EndpointSlice,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut c = Checker::new(&key);
    if name.is_empty() {
        c.err("metadata.name", "is required");
        return Err(c.problems);
    }
    let labels = slice.metadata.labels.as_ref();
    if let Some(reason) = skipped_by_label(labels) {
        return Ok(Compiled::Skip(reason));
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Ok(Compiled::Skip(format!(
            "labelled {LABEL_HEADLESS}: slice of a headless service"
        )));
    }
    match slice.address_type.as_str() {
        "IPv4" => {}
        "" => {
            c.err("addressType", "is required");
            return Err(c.problems);
        }
        t => {
            return Ok(Compiled::Skip(format!(
                "addressType {t}: berth serves IPv4 only"
            )));
        }
    }
    let service = match labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) {
        Some(s) if !s.is_empty() => ServiceRef::new(namespace, s.as_str()),
        _ => {
            c.err(
                format!("metadata.labels[\"{LABEL_SERVICE_NAME}\"]"),
                "is required: it names the Service this slice belongs to",
            );
            return Err(c.problems);
        }
    };

    let mut ports = Vec::new();
    let mut names = HashSet::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let name = p.name.clone().unwrap_or_default();
        let protocol = protocol(
            &mut c,
            format!("ports[{i}].protocol"),
            p.protocol.as_deref(),
        );
        if !names.insert((name.clone(), protocol)) {
            c.err(
                format!("ports[{i}].name"),
                format!("duplicate port name {name:?} for {protocol}"),
            );
        }
        let Some(port) = p.port else { continue };
        if let Some(port) = port_number(&mut c, format!("ports[{i}].port"), port) {
            ports.push(SlicePort {
                name,
                protocol,
                port,
            });
        }
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        if ep.addresses.is_empty() {
            c.err(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            );
            continue;
        }
        let mut first = None;
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = || format!("endpoints[{i}].addresses[{j}]");
            let Ok(addr) = a.parse::<Ipv4Addr>() else {
                c.err(field(), format!("{a:?} is not a valid IPv4 address"));
                continue;
            };
            if let Some(what) = special(addr).or(addr.is_link_local().then_some("link-local")) {
                c.err(
                    field(),
                    format!("{addr} is {what}: not usable as a backend address"),
                );
                continue;
            }
            if let Some(ctx) = ctx
                && !ctx.accepts(addr)
            {
                c.err(
                    field(),
                    format!(
                        "{addr} is outside the node's known networks ({})",
                        ctx.networks_display()
                    ),
                );
                continue;
            }
            if j == 0 {
                first = Some(addr);
            }
        }
        let Some(addr) = first else { continue };
        let cond = ep.conditions.clone().unwrap_or_default();
        let ready = cond.ready.unwrap_or(true);
        endpoints.push(EndpointEntry {
            addr,
            ready,
            serving: cond.serving.unwrap_or(ready),
            terminating: cond.terminating.unwrap_or(false),
            node: ep.node_name.clone().filter(|n| !n.is_empty()),
            target: ep.target_ref.as_ref().and_then(|t| {
                let name = t.name.as_deref().filter(|n| !n.is_empty())?;
                let ns = t
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .unwrap_or(namespace);
                Some(format!("{ns}/{name}"))
            }),
        });
    }

    c.finish(Compiled::Entry(SliceEntry {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        service,
        ports,
        endpoints,
    }))
}
