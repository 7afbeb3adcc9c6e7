//! berth's NetworkPolicy semantics: Kubernetes `NetworkPolicy` (networking.k8s.io/v1) objects
//! in, allow/deny verdicts with explanations out.
//!
//! The crate is pure: no kernel, no files, no network. It is the reference the data plane's
//! compiled tables will be checked against, so it follows the API's definition literally:
//!
//! ```text
//!  bytes ──parse──▶ Vec<Policy> ──evaluate(policies, pods, namespaces, from, to, port, proto)──▶ Verdict
//!  (YAML/JSON,      (validated,                                                                  (allowed +
//!   List)            defaults applied)                                                            Explanation)
//! ```
//!
//! # Semantics
//!
//! * A policy selects the pods of its namespace matching `podSelector` (empty: all of them),
//!   for the directions in `policyTypes`; absent `policyTypes` means Ingress, plus Egress when
//!   `egress` has rules.
//! * A pod selected by no policy for a direction is unrestricted in it. Otherwise a connection
//!   is allowed in that direction iff some rule of some selecting policy allows it (policies
//!   are additive); an empty rule list denies everything.
//! * A rule allows a connection when the remote end matches one of its peers (`from`/`to`
//!   empty or absent: every peer) and the port matches one of its ports (empty or absent: every
//!   port). A peer with only `podSelector` looks in the policy's namespace; with
//!   `namespaceSelector`, in the matching namespaces (every namespace carries
//!   `kubernetes.io/metadata.name`); with both, both must match. `ipBlock` matches addresses
//!   (pods' included) in `cidr` and in no `except`.
//! * Ports: `protocol` defaults to TCP; no `port` means every port of the protocol; `endPort`
//!   makes an inclusive range; a named port matches when the destination pod has a container
//!   port of that name and protocol with the connection's number, for ingress and egress rules.
//! * A connection is allowed iff the source pod's egress and the destination pod's ingress
//!   both allow it; an end that is an address outside the cluster has no side to check.
//! * A pod's node ([`Peer::Node`]) may always connect to it, whatever the policies; otherwise
//!   it is an address outside the cluster.
//!
//! # Data plane
//!
//! [`tables::compile`] turns policies and the cluster into what the kernel looks up: numeric
//! identities for addresses (a longest-prefix-match map) and, per endpoint and direction, a
//! table of allowed (peer identity, protocol, port prefix). It allows exactly what
//! [`evaluate`] allows.

mod error;
mod eval;
mod parse;
mod policy;
pub mod tables;
mod types;

#[cfg(test)]
mod tables_tests;
#[cfg(test)]
mod tests;

pub use error::{Error, Problem};
pub use eval::{Decision, Explanation, Verdict, evaluate};
pub use parse::{Objects, parse, parse_objects};
pub use policy::{
    PeerSelector, Policy, PortMatch, PortSelector, Requirement, Rule, Selector, compile,
    parse_selector,
};
// `compile` at the root is NetworkPolicy → Policy; the table compiler is `tables::compile`.
pub use tables::{
    BlockRef, ClusterState, Compiled, EndpointTables, Entry, FIRST_IDENTITY, IDENTITY_ANY,
    Identities, IdentityKey, Lookup, NODE_RULE, RuleRef, Table, compile as compile_tables,
};
pub use types::{Direction, NamedPort, Namespace, Peer, Pod, Protocol};
