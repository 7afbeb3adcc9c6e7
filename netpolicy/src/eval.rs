//! Evaluation: is one connection allowed, and which policy and rule decided it.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use crate::{
    Direction, Namespace, Peer, Pod, Protocol,
    policy::{PeerSelector, Policy, PortMatch, Rule},
};

/// The answer for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: Explanation,
}

/// Why: one decision per side that is a pod. A side that is an address outside the cluster
/// has none (no policy governs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The source pod's egress decision.
    pub egress: Option<Decision>,
    /// The destination pod's ingress decision.
    pub ingress: Option<Decision>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects `pod` for `direction`: everything is allowed.
    NotSelected { pod: String, direction: Direction },
    /// The first rule (in policy order, then rule order) that allows the connection.
    AllowedBy {
        policy: String,
        direction: Direction,
        rule: usize,
    },
    /// `policies` select `pod` for `direction` and none of their rules allows the connection.
    Denied {
        pod: String,
        direction: Direction,
        policies: Vec<String>,
    },
    /// Ingress into `pod` from its node ([`Peer::Node`]): always allowed, whatever the
    /// policies say, because Kubernetes documents that pods cannot block their node.
    FromNode { pod: String },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::NotSelected { pod, direction } => {
                write!(f, "no policy selects {pod} for {direction}")
            }
            Decision::AllowedBy {
                policy,
                direction,
                rule,
            } => write!(f, "allowed by {policy} {direction} rule {rule}"),
            Decision::Denied {
                pod,
                direction,
                policies,
            } => write!(
                f,
                "denied: {pod} is selected by {} ({direction}) and no rule allows it",
                policies.join(", ")
            ),
            Decision::FromNode { .. } => {
                f.write_str("traffic from the pod's node is always allowed")
            }
        }
    }
}

impl fmt::Display for Explanation {
    /// A denial alone when there is one (it decides), else both sides, egress first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sides = [&self.egress, &self.ingress];
        if let Some(denied) = sides.iter().copied().flatten().find(|d| !d.allowed()) {
            return denied.fmt(f);
        }
        let parts: Vec<String> = sides
            .iter()
            .copied()
            .flatten()
            .map(Decision::to_string)
            .collect();
        if parts.is_empty() {
            f.write_str("no pod involved: no policy applies")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Decides a connection from `from` to `to` on `port`/`proto` under `policies`, exactly as
/// Kubernetes defines it: allowed iff the source pod's egress allows it and the destination
/// pod's ingress allows it. `pods` resolves [`Peer::Ip`] addresses that belong to pods;
/// `namespaces` gives the labels namespace selectors see. Ingress from a [`Peer::Node`] is
/// always allowed ([`Decision::FromNode`]).
pub fn evaluate<'a>(
    policies: &[Policy],
    pods: &'a [Pod],
    namespaces: &[Namespace],
    from: Peer<'a>,
    to: Peer<'a>,
    port: u16,
    proto: Protocol,
) -> Verdict {
    let resolve = |peer: Peer<'a>| -> Remote<'a> {
        match peer {
            Peer::Pod(p) => Remote::Pod(p),
            Peer::Ip(ip) => match pods.iter().find(|p| p.ip == Some(ip)) {
                Some(p) => Remote::Pod(p),
                None => Remote::Ip(ip.into()),
            },
            Peer::Node(ip) => Remote::Node(ip.into()),
        }
    };
    let ctx = Context { namespaces };
    let (from, to) = (resolve(from), resolve(to));
    let conn = Connection {
        port,
        proto,
        dest: match to {
            Remote::Pod(p) => Some(p),
            Remote::Ip(_) | Remote::Node(_) => None,
        },
    };
    let egress = match from {
        Remote::Pod(p) => Some(ctx.decide(policies, p, Direction::Egress, to, &conn)),
        Remote::Ip(_) | Remote::Node(_) => None,
    };
    let ingress = match (from, to) {
        (Remote::Node(_), Remote::Pod(p)) => Some(Decision::FromNode { pod: p.key() }),
        (_, Remote::Pod(p)) => Some(ctx.decide(policies, p, Direction::Ingress, from, &conn)),
        (_, Remote::Ip(_) | Remote::Node(_)) => None,
    };
    let reason = Explanation { egress, ingress };
    let allowed = [&reason.egress, &reason.ingress]
        .into_iter()
        .flatten()
        .all(Decision::allowed);
    Verdict { allowed, reason }
}

#[derive(Clone, Copy)]
enum Remote<'a> {
    Pod(&'a Pod),
    /// Outside the cluster.
    Ip(IpAddr),
    /// The pods' node: outside the cluster, except that it may always connect in.
    Node(IpAddr),
}

struct Connection<'a> {
    port: u16,
    proto: Protocol,
    /// The destination pod, against whose container ports named ports resolve (for ingress
    /// and egress rules alike).
    dest: Option<&'a Pod>,
}

struct Context<'a> {
    namespaces: &'a [Namespace],
}

impl Context<'_> {
    fn decide(
        &self,
        policies: &[Policy],
        pod: &Pod,
        direction: Direction,
        remote: Remote<'_>,
        conn: &Connection<'_>,
    ) -> Decision {
        let mut selecting = Vec::new();
        for policy in policies {
            let rules = match direction {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            let Some(rules) = rules else { continue };
            if !policy.selects(pod) {
                continue;
            }
            // Policies are additive: any rule of any selecting policy allowing it is enough.
            if let Some(i) = rules
                .iter()
                .position(|r| self.rule_allows(policy, r, remote, conn))
            {
                return Decision::AllowedBy {
                    policy: policy.key(),
                    direction,
                    rule: i,
                };
            }
            selecting.push(policy.key());
        }
        if selecting.is_empty() {
            Decision::NotSelected {
                pod: pod.key(),
                direction,
            }
        } else {
            Decision::Denied {
                pod: pod.key(),
                direction,
                policies: selecting,
            }
        }
    }

    fn rule_allows(
        &self,
        policy: &Policy,
        rule: &Rule,
        remote: Remote<'_>,
        conn: &Connection<'_>,
    ) -> bool {
        let peer_ok = rule.peers.as_ref().is_none_or(|peers| {
            peers
                .iter()
                .any(|p| self.peer_matches(&policy.namespace, p, remote))
        });
        let port_ok = rule.ports.as_ref().is_none_or(|ports| {
            ports.iter().any(|p| {
                p.protocol == conn.proto
                    && match &p.port {
                        PortMatch::Any => true,
                        PortMatch::Range { first, last } => (*first..=*last).contains(&conn.port),
                        PortMatch::Named(name) => conn.dest.is_some_and(|d| {
                            d.ports.iter().any(|np| {
                                np.name == *name
                                    && np.protocol == conn.proto
                                    && np.port == conn.port
                            })
                        }),
                    }
            })
        });
        peer_ok && port_ok
    }

    fn peer_matches(&self, policy_ns: &str, sel: &PeerSelector, remote: Remote<'_>) -> bool {
        match sel {
            PeerSelector::Pods { namespaces, pods } => {
                let Remote::Pod(pod) = remote else {
                    return false; // selectors only ever match pods
                };
                let ns_ok = match namespaces {
                    None => pod.namespace == policy_ns,
                    Some(s) => s.matches(&self.namespace_labels(&pod.namespace)),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
            }
            PeerSelector::IpBlock { cidr, except } => {
                // ipBlocks match pod IPs too (the conformance tests rely on it).
                let ip = match remote {
                    Remote::Pod(p) => match p.ip {
                        Some(ip) => IpAddr::V4(ip),
                        None => return false,
                    },
                    Remote::Ip(ip) | Remote::Node(ip) => ip,
                };
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
        }
    }

    fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        namespace_labels(self.namespaces, name)
    }
}

/// The labels namespace selectors see for namespace `name`: its own (none when it is not in
/// `namespaces`) plus `kubernetes.io/metadata.name`, which the apiserver sets on every one.
pub(crate) fn namespace_labels(namespaces: &[Namespace], name: &str) -> BTreeMap<String, String> {
    let mut labels = namespaces
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
    labels
}
