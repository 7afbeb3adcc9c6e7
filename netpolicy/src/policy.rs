//! A NetworkPolicy validated and normalized: what evaluation needs, with the API's defaults
//! applied, so evaluation never has to reinterpret optional fields.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use crate::{Problem, Protocol};

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// Pods (in `namespace`) the policy applies to.
    pub pod_selector: Selector,
    /// None: the policy does not govern ingress. `Some(empty)`: it denies all ingress.
    pub ingress: Option<Vec<Rule>>,
    /// None: the policy does not govern egress. `Some(empty)`: it denies all egress.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `namespace/name`, as explanations spell it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy applies to `pod` (in its namespace and matched by `podSelector`),
    /// whatever the direction.
    pub fn selects(&self, pod: &crate::Pod) -> bool {
        self.namespace == pod.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// One ingress or egress rule: it allows a connection whose remote end matches one of
/// `peers` and whose port matches one of `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// None: `from`/`to` absent or empty, which matches every peer.
    pub peers: Option<Vec<PeerSelector>>,
    /// None: `ports` absent or empty, which matches every port and protocol.
    pub ports: Option<Vec<PortSelector>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSelector {
    /// Pods selected by labels. `namespaces` None: the policy's own namespace; `pods` None: all
    /// pods of the selected namespaces (a peer with both selectors needs both to match).
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    /// Addresses in `cidr` but in none of `except`. IPv6 blocks are valid but match nothing
    /// here: berth only serves IPv4.
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSelector {
    pub protocol: Protocol,
    pub port: PortMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// No `port`: every port of the protocol.
    Any,
    /// `port` (and `endPort`), inclusive; a single port has `first == last`.
    Range { first: u16, last: u16 },
    /// A container port name, resolved against the destination pod.
    Named(String),
}

/// A label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            // As in apimachinery: a missing key satisfies NotIn.
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// Validates and normalizes `np`; all problems at once.
pub fn compile(np: &NetworkPolicy) -> Result<Policy, Vec<Problem>> {
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let name = np.metadata.name.clone().unwrap_or_default();
    let object = format!("NetworkPolicy {namespace}/{name}");
    let mut c = Compiler {
        object: &object,
        problems: Vec::new(),
    };
    if name.is_empty() {
        c.problem("metadata.name", "is required");
    }
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = c.selector(spec.pod_selector.as_ref(), "spec.podSelector");

    // policyTypes absent: Ingress always, Egress when there are egress rules (the apiserver's
    // defaulting). Present: exactly what it lists; rules of an unlisted direction are ignored.
    let (mut has_ingress, mut has_egress) = (false, false);
    match &spec.policy_types {
        None => {
            has_ingress = true;
            has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                let path = format!("spec.policyTypes[{i}]");
                let flag = match t.as_str() {
                    "Ingress" => &mut has_ingress,
                    "Egress" => &mut has_egress,
                    _ => {
                        c.problem(
                            &path,
                            format!("unsupported value {t:?}: must be Ingress or Egress"),
                        );
                        continue;
                    }
                };
                if *flag {
                    c.problem(&path, format!("duplicate value {t:?}"));
                }
                *flag = true;
            }
        }
    }

    // Rules are validated even in an ignored direction: the apiserver rejects them too.
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            c.rule(
                r.from.as_deref(),
                r.ports.as_deref(),
                &format!("spec.ingress[{i}]"),
                "from",
            )
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            c.rule(
                r.to.as_deref(),
                r.ports.as_deref(),
                &format!("spec.egress[{i}]"),
                "to",
            )
        })
        .collect();

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress: has_ingress.then_some(ingress),
        egress: has_egress.then_some(egress),
    })
}

struct Compiler<'a> {
    object: &'a str,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::new(self.object, field, message));
    }

    fn rule(
        &mut self,
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        path: &str,
        peers_field: &str,
    ) -> Rule {
        let peers = peers.filter(|p| !p.is_empty()).map(|peers| {
            peers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| self.peer(p, &format!("{path}.{peers_field}[{i}]")))
                .collect()
        });
        let ports = ports.filter(|p| !p.is_empty()).map(|ports| {
            ports
                .iter()
                .enumerate()
                .filter_map(|(i, p)| self.port(p, &format!("{path}.ports[{i}]")))
                .collect()
        });
        Rule { peers, ports }
    }

    fn peer(&mut self, p: &NetworkPolicyPeer, path: &str) -> Option<PeerSelector> {
        if let Some(block) = &p.ip_block {
            if p.pod_selector.is_some() || p.namespace_selector.is_some() {
                self.problem(
                    path,
                    "ipBlock may not be combined with podSelector or namespaceSelector",
                );
                return None;
            }
            return self.ip_block(block, &format!("{path}.ipBlock"));
        }
        if p.pod_selector.is_none() && p.namespace_selector.is_none() {
            self.problem(
                path,
                "must specify one of podSelector, namespaceSelector or ipBlock",
            );
            return None;
        }
        let pods = p
            .pod_selector
            .as_ref()
            .map(|s| self.selector(Some(s), &format!("{path}.podSelector")));
        let namespaces = p
            .namespace_selector
            .as_ref()
            .map(|s| self.selector(Some(s), &format!("{path}.namespaceSelector")));
        Some(PeerSelector::Pods { namespaces, pods })
    }

    fn ip_block(&mut self, block: &IPBlock, path: &str) -> Option<PeerSelector> {
        let Ok(cidr) = block.cidr.parse::<IpNet>() else {
            self.problem(
                &format!("{path}.cidr"),
                format!("{:?} is not a CIDR", block.cidr),
            );
            return None;
        };
        let mut except = Vec::new();
        let mut ok = true;
        for (i, e) in block.except.iter().flatten().enumerate() {
            let field = format!("{path}.except[{i}]");
            match e.parse::<IpNet>() {
                Err(_) => {
                    self.problem(&field, format!("{e:?} is not a CIDR"));
                    ok = false;
                }
                // The apiserver demands a strict subset: a longer prefix inside `cidr`.
                Ok(net) if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) => {
                    self.problem(
                        &field,
                        format!("{e:?} is not a strict subset of cidr {:?}", block.cidr),
                    );
                    ok = false;
                }
                Ok(net) => except.push(net),
            }
        }
        ok.then_some(PeerSelector::IpBlock { cidr, except })
    }

    fn port(&mut self, p: &NetworkPolicyPort, path: &str) -> Option<PortSelector> {
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => match Protocol::from_api(s) {
                Some(proto) => proto,
                None => {
                    self.problem(
                        &format!("{path}.protocol"),
                        format!("unsupported protocol {s:?}: must be TCP, UDP or SCTP"),
                    );
                    return None;
                }
            },
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortMatch::Any,
            (Some(IntOrString::Int(n)), end) => {
                let first = self.port_number(*n, &format!("{path}.port"))?;
                let last = match end {
                    None => first,
                    Some(e) => {
                        let last = self.port_number(e, &format!("{path}.endPort"))?;
                        if last < first {
                            self.problem(
                                &format!("{path}.endPort"),
                                format!("{last} is less than port {first}"),
                            );
                            return None;
                        }
                        last
                    }
                };
                PortMatch::Range { first, last }
            }
            (Some(IntOrString::String(name)), None) => {
                if !valid_port_name(name) {
                    self.problem(
                        &format!("{path}.port"),
                        format!("{name:?} is not a valid port name (1-15 lowercase letters, digits and '-', with a letter)"),
                    );
                    return None;
                }
                PortMatch::Named(name.clone())
            }
            (_, Some(_)) => {
                self.problem(
                    &format!("{path}.endPort"),
                    "may only be given with a numeric port",
                );
                return None;
            }
        };
        Some(PortSelector { protocol, port })
    }

    fn port_number(&mut self, n: i32, field: &str) -> Option<u16> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.problem(field, format!("{n} is out of range 1-65535"));
                None
            }
        }
    }

    fn selector(&mut self, s: Option<&LabelSelector>, path: &str) -> Selector {
        parse_selector(s, path).unwrap_or_else(|problems| {
            for (field, message) in problems {
                self.problem(&field, message);
            }
            // Never used: a policy with problems is not returned.
            Selector::default()
        })
    }
}

/// Validates a Kubernetes `LabelSelector` found at field `path` (e.g. `spec.podSelector`);
/// absent is the empty selector, which matches everything. Every problem is reported, as
/// `(field path, message)`, so that callers with their own error types (other policy kinds
/// select by labels too) can place them.
pub fn parse_selector(
    s: Option<&LabelSelector>,
    path: &str,
) -> Result<Selector, Vec<(String, String)>> {
    let Some(s) = s else {
        return Ok(Selector::default());
    };
    let mut problems = Vec::new();
    let mut out = Selector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let field = format!("{path}.matchExpressions[{i}]");
        let values = r.values.clone().unwrap_or_default();
        let req = match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                problems.push((
                    format!("{field}.values"),
                    format!("must be non-empty for operator {}", r.operator),
                ));
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                problems.push((
                    format!("{field}.values"),
                    format!("must be empty for operator {}", r.operator),
                ));
                continue;
            }
            "In" => Requirement::In(r.key.clone(), values),
            "NotIn" => Requirement::NotIn(r.key.clone(), values),
            "Exists" => Requirement::Exists(r.key.clone()),
            "DoesNotExist" => Requirement::DoesNotExist(r.key.clone()),
            op => {
                problems.push((
                    format!("{field}.operator"),
                    format!(
                        "unsupported operator {op:?}: must be In, NotIn, Exists or DoesNotExist"
                    ),
                ));
                continue;
            }
        };
        out.match_expressions.push(req);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// An IANA service name, as the apiserver requires for named ports.
fn valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}
