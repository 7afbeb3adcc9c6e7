//! Policies compiled for the kernel data plane: numeric identities for addresses, and per
//! endpoint allow tables keyed by (peer identity, protocol, port prefix).
//!
//! The kernel cannot evaluate selectors per packet, so everything that depends on who the
//! remote end is gets folded into one number, its identity: pods that every selector, ipBlock
//! and named port treats alike share one, and so do addresses outside the cluster. A packet
//! then costs two lookups: address → identity (longest prefix match over
//! [`Compiled::prefixes`]), and (identity, protocol, port) → allowed, in the endpoint's
//! [`Table`] for the direction ([`Table::lookup`] is the kernel's algorithm).
//!
//! [`crate::evaluate`] is the reference: for every connection, the tables allow exactly what
//! it allows (the tests check this on random clusters).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    rc::Rc,
};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::{
    Direction, Namespace, Pod, Protocol,
    eval::namespace_labels,
    policy::{PeerSelector, Policy, PortMatch, Rule},
};

/// Wildcard peer in a table entry: every peer.
pub const IDENTITY_ANY: u32 = 0;
/// Numeric identities start here; the numbers below are reserved for the data plane.
pub const FIRST_IDENTITY: u32 = 256;
/// [`RuleRef::policy`] of the entries that let the endpoint's node in: no policy allows
/// that, Kubernetes does (see [`crate::Decision::FromNode`]).
pub const NODE_RULE: &str = "<node>";

/// An IPv4 ipBlock in canonical form, so that equal blocks written differently (host bits
/// set, excepts reordered, repeated or nested) are one block, and a block's name does not
/// depend on where it appears among the policies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockRef {
    /// Network address (host bits cleared).
    pub cidr: Ipv4Net,
    /// Sorted, without duplicates and without prefixes inside other excepts.
    pub except: Vec<Ipv4Net>,
}

impl BlockRef {
    /// The canonical form of an ipBlock; None for an IPv6 block, which matches no address
    /// here (berth only serves IPv4).
    pub fn new(cidr: &IpNet, except: &[IpNet]) -> Option<BlockRef> {
        let IpNet::V4(cidr) = cidr else { return None };
        let mut nets: Vec<Ipv4Net> = except
            .iter()
            .filter_map(|e| match e {
                IpNet::V4(e) => Some(e.trunc()),
                IpNet::V6(_) => None, // cannot contain an IPv4 address
            })
            .collect();
        nets.sort();
        nets.dedup();
        let except = nets
            .iter()
            .filter(|e| !nets.iter().any(|o| o != *e && o.contains(*e)))
            .copied()
            .collect();
        Some(BlockRef {
            cidr: cidr.trunc(),
            except,
        })
    }

    /// Whether the block matches `addr`: in `cidr` and in no except.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.cidr.contains(&addr) && !self.except.iter().any(|e| e.contains(&addr))
    }

    /// Whether the block matches the addresses of `net` that no longer boundary prefix
    /// covers. Exact when `net` is one of the boundaries (cidrs and excepts of all blocks):
    /// every boundary then either contains `net` or lies inside it.
    fn matches_region(&self, net: &Ipv4Net) -> bool {
        self.cidr.contains(net) && !self.except.iter().any(|e| e.contains(net))
    }
}

/// What one numeric identity stands for. Two addresses get the same identity iff every
/// selector and ipBlock of every policy, and every named-port lookup, treats them alike
/// (the key holds everything they look at).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IdentityKey {
    /// Pods: namespace, labels, named container ports (sorted), and `blocks`.
    Pod {
        namespace: String,
        labels: BTreeMap<String, String>,
        ports: Vec<(String, u16, Protocol)>,
        blocks: Vec<BlockRef>,
    },
    /// Addresses of this node.
    Node { blocks: Vec<BlockRef> },
    /// Everything else (outside the cluster).
    World { blocks: Vec<BlockRef> },
}

impl IdentityKey {
    /// The ipBlock signature: the distinct blocks that match the addresses, sorted.
    pub fn blocks(&self) -> &[BlockRef] {
        match self {
            IdentityKey::Pod { blocks, .. }
            | IdentityKey::Node { blocks }
            | IdentityKey::World { blocks } => blocks,
        }
    }
}

/// A stable allocator of identity numbers. Kernel tables hold the numbers, so a key keeps its
/// number for as long as it is allocated (across compilations, and across agent restarts
/// when persisted with serde), and a number is never given to another key by the same
/// allocator, even after [`Identities::retain`] dropped it: a table still in the kernel
/// cannot then grant a stale number's rights to a new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Persisted", into = "Persisted")]
pub struct Identities {
    by_id: BTreeMap<u32, IdentityKey>,
    by_key: HashMap<IdentityKey, u32>,
    /// The next number to hand out; only grows.
    next: u32,
}

/// The serialized form: JSON maps need scalar keys, so keys are values here.
#[derive(Serialize, Deserialize)]
struct Persisted {
    next: u32,
    identities: BTreeMap<u32, IdentityKey>,
}

impl From<Identities> for Persisted {
    fn from(ids: Identities) -> Persisted {
        Persisted {
            next: ids.next,
            identities: ids.by_id,
        }
    }
}

impl TryFrom<Persisted> for Identities {
    type Error = String;

    fn try_from(p: Persisted) -> Result<Identities, String> {
        if p.next < FIRST_IDENTITY {
            return Err(format!(
                "next identity {} is below {FIRST_IDENTITY}",
                p.next
            ));
        }
        let mut by_key = HashMap::new();
        for (&id, key) in &p.identities {
            if !(FIRST_IDENTITY..p.next).contains(&id) {
                return Err(format!(
                    "identity {id} is outside the allocated range {FIRST_IDENTITY}..{}",
                    p.next
                ));
            }
            if let Some(other) = by_key.insert(key.clone(), id) {
                return Err(format!("identities {other} and {id} have the same key"));
            }
        }
        Ok(Identities {
            by_id: p.identities,
            by_key,
            next: p.next,
        })
    }
}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            by_id: BTreeMap::new(),
            by_key: HashMap::new(),
            next: FIRST_IDENTITY,
        }
    }
}

impl Identities {
    pub fn new() -> Identities {
        Identities::default()
    }

    pub fn get(&self, key: &IdentityKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    pub fn key(&self, id: u32) -> Option<&IdentityKey> {
        self.by_id.get(&id)
    }

    /// The number of `key`, allocating the next unused one if it has none.
    ///
    /// # Panics
    ///
    /// When all 2³² − 256 numbers have been handed out by this allocator.
    pub fn intern(&mut self, key: IdentityKey) -> u32 {
        if let Some(&id) = self.by_key.get(&key) {
            return id;
        }
        let id = self.next;
        self.next = id
            .checked_add(1)
            .expect("identity numbers exhausted: they are never reused");
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key);
        id
    }

    /// Forgets every key not in `live` (typically [`Compiled::live_keys`], once the kernel
    /// no longer uses older tables). Their numbers are not handed out again.
    pub fn retain(&mut self, live: &HashSet<IdentityKey>) {
        self.by_key.retain(|k, _| live.contains(k));
        self.by_id.retain(|_, k| live.contains(k));
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Allocated identities, by number.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &IdentityKey)> {
        self.by_id.iter().map(|(id, k)| (*id, k))
    }
}

/// Everything the tables depend on.
#[derive(Debug, Clone, Copy)]
pub struct ClusterState<'a> {
    pub policies: &'a [Policy],
    pub pods: &'a [Pod],
    pub namespaces: &'a [Namespace],
    /// Addresses of this node. Where a pod has the same address (host networking), the
    /// address is the node's, as [`crate::Peer::Node`] is.
    pub node_addrs: &'a [Ipv4Addr],
    /// Pods (by [`Pod::key`]) that are endpoints on this node: tables are built for these
    /// only. Endpoints without an address (or not in `pods`) are skipped: no packet can be
    /// theirs.
    pub endpoints: &'a [String],
}

/// The compiler's output, for one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Compiled {
    /// Longest-prefix-match table: address prefix → identity. Holds 0.0.0.0/0 (World, with
    /// the signature of the addresses no longer prefix covers), every distinct ipBlock cidr
    /// and except prefix (the World identity of the addresses they cover beyond longer
    /// prefixes), every pod IP as /32 (the pod's identity; the first pod when several have
    /// one address, as [`crate::evaluate`] resolves it) and every node address as /32 (Node
    /// identity). For any address, the result is the identity whose key describes it.
    pub prefixes: BTreeMap<Ipv4Net, u32>,
    /// The live identities: those of pods (with or without an address) and of prefixes.
    pub identities: BTreeMap<u32, IdentityKey>,
    /// Per endpoint pod key.
    pub endpoints: BTreeMap<String, EndpointTables>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTables {
    /// The endpoint pod's own identity.
    pub identity: u32,
    /// None: no policy selects the pod for ingress (everything allowed). `Some(empty)`:
    /// deny all (but every `Some` ingress table lets the node in: one entry per Node
    /// identity, any protocol and port, attributed to [`NODE_RULE`] rule 0).
    pub ingress: Option<Table>,
    /// As `ingress`, for connections the pod opens; the node gets no special entry here.
    pub egress: Option<Table>,
}

/// An endpoint's allow list for one direction. Entries are sorted and unique by key (all
/// fields but `rule`), so equal tables compare equal and the agent can share one kernel
/// table between endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    /// [`IDENTITY_ANY`] or an identity.
    pub peer: u32,
    /// None: any protocol (then the port prefix is always any).
    pub proto: Option<Protocol>,
    /// First port of an aligned power-of-two block.
    pub port: u16,
    /// 0..=16; 0 = any port, 16 = exactly `port`.
    pub port_prefix_len: u8,
    /// Attribution: the first (policy order, rule order) rule producing this key.
    pub rule: RuleRef,
}

impl Entry {
    /// Whether the entry's port block holds `port`.
    pub fn covers_port(&self, port: u16) -> bool {
        let len = u32::from(self.port_prefix_len.min(16));
        let mask = (0xffff_u32 << (16 - len)) & 0xffff;
        (u32::from(port) & mask) == (u32::from(self.port) & mask)
    }
}

/// A rule by its policy (`namespace/name`, or [`NODE_RULE`]) and index in the policy's
/// rules of the table's direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleRef {
    pub policy: String,
    pub rule: usize,
}

/// The kernel's answer for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The endpoint has no table for the direction: everything is allowed.
    NotSelected,
    Allowed(&'a Entry),
    Denied,
}

impl Lookup<'_> {
    pub fn allowed(&self) -> bool {
        !matches!(self, Lookup::Denied)
    }
}

impl Table {
    /// The kernel's algorithm: for the peer `peer` then [`IDENTITY_ANY`], for the protocol
    /// `Some(proto)` then None, the entry with the longest port prefix holding `port`; the
    /// first hit wins. All entries allow, so the order only decides the attribution.
    pub fn lookup(&self, peer: u32, proto: Protocol, port: u16) -> Option<&Entry> {
        for peer in [peer, IDENTITY_ANY] {
            for proto in [Some(proto), None] {
                let hit = self
                    .entries
                    .iter()
                    .filter(|e| e.peer == peer && e.proto == proto && e.covers_port(port))
                    .max_by_key(|e| e.port_prefix_len);
                if hit.is_some() {
                    return hit;
                }
            }
        }
        None
    }
}

impl Compiled {
    /// What the kernel decides for `endpoint`'s side of a connection in `dir` with the remote
    /// end `peer`. An unknown endpoint has no tables attached, hence [`Lookup::NotSelected`].
    pub fn lookup(
        &self,
        endpoint: &str,
        dir: Direction,
        peer: u32,
        proto: Protocol,
        port: u16,
    ) -> Lookup<'_> {
        let Some(tables) = self.endpoints.get(endpoint) else {
            return Lookup::NotSelected;
        };
        let table = match dir {
            Direction::Ingress => &tables.ingress,
            Direction::Egress => &tables.egress,
        };
        match table {
            None => Lookup::NotSelected,
            Some(t) => t
                .lookup(peer, proto, port)
                .map_or(Lookup::Denied, Lookup::Allowed),
        }
    }

    /// The identity of `addr`: longest prefix match over [`Compiled::prefixes`]
    /// ([`IDENTITY_ANY`] only for an empty map, which [`compile`] never returns).
    pub fn identity_of(&self, addr: Ipv4Addr) -> u32 {
        (0..=32u8)
            .rev()
            .filter_map(|len| Ipv4Net::new(addr, len).ok())
            .find_map(|net| self.prefixes.get(&net.trunc()).copied())
            .unwrap_or(IDENTITY_ANY)
    }

    /// The keys of the live identities, for [`Identities::retain`].
    pub fn live_keys(&self) -> HashSet<IdentityKey> {
        self.identities.values().cloned().collect()
    }
}

/// Compiles `input` into identities (allocated in `ids`, which keeps numbers stable across
/// calls; it is not garbage-collected here, see [`Identities::retain`]) and tables for the
/// endpoints.
///
/// # Panics
///
/// When `ids` runs out of numbers (see [`Identities::intern`]).
pub fn compile(input: &ClusterState<'_>, ids: &mut Identities) -> Compiled {
    let blocks: Vec<BlockRef> = input
        .policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress).flatten())
        .flat_map(|r: &Rule| r.peers.iter().flatten())
        .filter_map(|s| match s {
            PeerSelector::IpBlock { cidr, except } => BlockRef::new(cidr, except),
            PeerSelector::Pods { .. } => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Blocks by their cidr: the blocks whose cidr holds a prefix are found among its at most
    // 33 supernets, not by scanning every block (10,000 ipBlocks would make that quadratic).
    let mut by_cidr: HashMap<Ipv4Net, Vec<&BlockRef>> = HashMap::new();
    for b in &blocks {
        by_cidr.entry(b.cidr).or_default().push(b);
    }
    let region_signature = |net: &Ipv4Net| -> Vec<BlockRef> {
        let mut sig: Vec<BlockRef> = (0..=net.prefix_len())
            .filter_map(|len| Ipv4Net::new(net.network(), len).ok().map(|n| n.trunc()))
            .filter_map(|n| by_cidr.get(&n))
            .flatten()
            .filter(|b| b.matches_region(net))
            .map(|b| (*b).clone())
            .collect();
        sig.sort();
        sig.dedup();
        sig
    };
    let signature = |addr: Ipv4Addr| -> Vec<BlockRef> { region_signature(&Ipv4Net::from(addr)) };

    // Outside the cluster, the signature only changes at block boundaries: the region of a
    // boundary prefix (its addresses that no longer boundary covers) has one signature.
    let mut by_prefix: BTreeMap<Ipv4Net, IdentityKey> = std::iter::once(Ipv4Net::default())
        .chain(
            blocks
                .iter()
                .flat_map(|b| std::iter::once(b.cidr).chain(b.except.iter().copied())),
        )
        .map(|net| {
            let sig = region_signature(&net);
            (net, IdentityKey::World { blocks: sig })
        })
        .collect();
    let pod_keys: Vec<IdentityKey> = input
        .pods
        .iter()
        .map(|pod| {
            let mut ports: Vec<(String, u16, Protocol)> = pod
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.port, p.protocol))
                .collect();
            ports.sort();
            ports.dedup();
            IdentityKey::Pod {
                namespace: pod.namespace.clone(),
                labels: pod.labels.clone(),
                ports,
                blocks: pod.ip.map(signature).unwrap_or_default(),
            }
        })
        .collect();
    // In reverse, so the first pod with an address keeps it; node addresses override pods.
    for (pod, key) in input.pods.iter().zip(&pod_keys).rev() {
        if let Some(ip) = pod.ip {
            by_prefix.insert(Ipv4Net::from(ip), key.clone());
        }
    }
    for &addr in input.node_addrs {
        let key = IdentityKey::Node {
            blocks: signature(addr),
        };
        by_prefix.insert(Ipv4Net::from(addr), key);
    }

    // Allocated in key order, so a fresh allocator numbers the same cluster the same way
    // whatever order the pods come in.
    let live: BTreeSet<&IdentityKey> = pod_keys.iter().chain(by_prefix.values()).collect();
    let identities: BTreeMap<u32, IdentityKey> = live
        .into_iter()
        .map(|k| (ids.intern(k.clone()), k.clone()))
        .collect();
    let id_of = |k: &IdentityKey| ids.get(k).unwrap_or(IDENTITY_ANY); // interned above
    let prefixes = by_prefix.iter().map(|(n, k)| (*n, id_of(k))).collect();
    let pod_ids: Vec<u32> = pod_keys.iter().map(id_of).collect();

    let mut ctx = Tables::new(input, &identities);
    let mut pod_index: HashMap<String, usize> = HashMap::new();
    for (i, pod) in input.pods.iter().enumerate() {
        pod_index.entry(pod.key()).or_insert(i);
    }
    let mut endpoints = BTreeMap::new();
    for key in input.endpoints {
        let Some(&i) = pod_index.get(key) else {
            continue;
        };
        let pod = &input.pods[i];
        if pod.ip.is_none() || endpoints.contains_key(key) {
            continue;
        }
        let tables = EndpointTables {
            identity: pod_ids[i],
            ingress: ctx.table(pod, Direction::Ingress),
            egress: ctx.table(pod, Direction::Egress),
        };
        endpoints.insert(key.clone(), tables);
    }
    Compiled {
        prefixes,
        identities,
        endpoints,
    }
}

/// What building tables needs, with what does not depend on the endpoint worked out once.
struct Tables<'a> {
    policies: &'a [Policy],
    identities: &'a BTreeMap<u32, IdentityKey>,
    /// The labels namespace selectors see, per namespace of a pod identity.
    ns_labels: HashMap<&'a str, BTreeMap<String, String>>,
    /// Pod identities with a container port of that name and protocol, and its number.
    named: HashMap<(&'a str, Protocol), Vec<(u32, u16)>>,
    node_ids: Vec<u32>,
    /// Identities by each ipBlock their addresses fall in.
    in_block: HashMap<&'a BlockRef, Vec<u32>>,
    /// Rules' expanded peers (None: every peer), by (policy index, direction, rule index):
    /// they are the same for every endpoint.
    peers: HashMap<(usize, Direction, usize), Peers>,
}

/// A rule's peer identities; None: every peer. Shared between the endpoints' tables.
type Peers = Rc<Option<BTreeSet<u32>>>;

/// An entry's key: what the kernel matches on.
type Key = (u32, Option<Protocol>, u16, u8);

impl<'a> Tables<'a> {
    fn new(input: &ClusterState<'a>, identities: &'a BTreeMap<u32, IdentityKey>) -> Self {
        let mut ns_labels = HashMap::new();
        let mut named: HashMap<_, Vec<_>> = HashMap::new();
        let mut node_ids = Vec::new();
        let mut in_block: HashMap<&BlockRef, Vec<u32>> = HashMap::new();
        for (&id, key) in identities {
            for b in key.blocks() {
                in_block.entry(b).or_default().push(id);
            }
            match key {
                IdentityKey::Pod {
                    namespace, ports, ..
                } => {
                    ns_labels
                        .entry(namespace.as_str())
                        .or_insert_with(|| namespace_labels(input.namespaces, namespace));
                    for (name, port, proto) in ports {
                        named
                            .entry((name.as_str(), *proto))
                            .or_default()
                            .push((id, *port));
                    }
                }
                IdentityKey::Node { .. } => node_ids.push(id),
                IdentityKey::World { .. } => {}
            }
        }
        Tables {
            policies: input.policies,
            identities,
            ns_labels,
            named,
            node_ids,
            in_block,
            peers: HashMap::new(),
        }
    }

    /// `pod`'s table for `dir`; None when no policy selects it for `dir`.
    fn table(&mut self, pod: &Pod, dir: Direction) -> Option<Table> {
        let mut entries: BTreeMap<Key, RuleRef> = BTreeMap::new();
        let mut selected = false;
        let policies = self.policies;
        for (pi, policy) in policies.iter().enumerate() {
            let rules = match dir {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            };
            let Some(rules) = rules else { continue };
            if !policy.selects(pod) {
                continue;
            }
            selected = true;
            for (ri, rule) in rules.iter().enumerate() {
                let rule_ref = RuleRef {
                    policy: policy.key(),
                    rule: ri,
                };
                let peers = match self.peers.get(&(pi, dir, ri)) {
                    Some(peers) => Rc::clone(peers),
                    None => {
                        let peers = Rc::new(self.rule_peers(policy, rule));
                        self.peers.insert((pi, dir, ri), Rc::clone(&peers));
                        peers
                    }
                };
                for key in self.rule_keys(&peers, rule, pod, dir) {
                    // The first rule producing a key keeps it: evaluate's attribution order.
                    entries.entry(key).or_insert_with(|| rule_ref.clone());
                }
            }
        }
        if !selected {
            return None;
        }
        if dir == Direction::Ingress {
            // The node may always connect in: one entry per Node identity, and no other
            // entry for it, so its connections are attributed to the node.
            entries.retain(|k, _| !self.node_ids.contains(&k.0));
            for &id in &self.node_ids {
                let node = RuleRef {
                    policy: NODE_RULE.to_owned(),
                    rule: 0,
                };
                entries.insert((id, None, 0, 0), node);
            }
        }
        let entries = entries
            .into_iter()
            .map(|((peer, proto, port, port_prefix_len), rule)| Entry {
                peer,
                proto,
                port,
                port_prefix_len,
                rule,
            })
            .collect();
        Some(Table { entries })
    }

    /// The identities `rule` of `policy` allows as peers; None: every peer.
    fn rule_peers(&self, policy: &Policy, rule: &Rule) -> Option<BTreeSet<u32>> {
        rule.peers.as_ref().map(|sels| {
            sels.iter()
                .flat_map(|s| self.peer_ids(&policy.namespace, s))
                .collect()
        })
    }

    /// The entry keys of `rule`, whose peers are `peers`, in `pod`'s `dir` table.
    fn rule_keys(
        &self,
        peers: &Option<BTreeSet<u32>>,
        rule: &Rule,
        pod: &Pod,
        dir: Direction,
    ) -> Vec<Key> {
        let any_or_peers: Vec<u32> = match peers {
            None => vec![IDENTITY_ANY],
            Some(ids) => ids.iter().copied().collect(),
        };
        let Some(ports) = &rule.ports else {
            return any_or_peers.iter().map(|&p| (p, None, 0, 0)).collect();
        };
        let mut keys = Vec::new();
        for sel in ports {
            let proto = Some(sel.protocol);
            match &sel.port {
                PortMatch::Any => keys.extend(any_or_peers.iter().map(|&p| (p, proto, 0, 0))),
                PortMatch::Range { first, last } => {
                    for (port, len) in port_blocks(*first, *last) {
                        keys.extend(any_or_peers.iter().map(|&p| (p, proto, port, len)));
                    }
                }
                // A named port resolves against the destination: in ingress, the endpoint
                // itself, whatever the peer.
                PortMatch::Named(name) if dir == Direction::Ingress => {
                    for np in &pod.ports {
                        if np.name == *name && np.protocol == sel.protocol {
                            keys.extend(any_or_peers.iter().map(|&p| (p, proto, np.port, 16)));
                        }
                    }
                }
                // In egress, each destination pod: the port is per pod identity (the ports are
                // in its key). Other destinations have no named ports.
                PortMatch::Named(name) => {
                    let targets = self.named.get(&(name.as_str(), sel.protocol));
                    for &(id, port) in targets.into_iter().flatten() {
                        if peers.as_ref().is_none_or(|s| s.contains(&id)) {
                            keys.push((id, proto, port, 16));
                        }
                    }
                }
            }
        }
        keys
    }

    /// The live identities a peer selector of a policy in `policy_ns` matches.
    fn peer_ids(&self, policy_ns: &str, sel: &PeerSelector) -> Vec<u32> {
        match sel {
            PeerSelector::Pods { namespaces, pods } => self
                .identities
                .iter()
                .filter(|(_, key)| {
                    let IdentityKey::Pod {
                        namespace, labels, ..
                    } = key
                    else {
                        return false; // selectors only ever match pods
                    };
                    let ns_ok = match namespaces {
                        None => namespace == policy_ns,
                        Some(s) => self
                            .ns_labels
                            .get(namespace.as_str())
                            .is_some_and(|l| s.matches(l)),
                    };
                    ns_ok && pods.as_ref().is_none_or(|s| s.matches(labels))
                })
                .map(|(id, _)| *id)
                .collect(),
            PeerSelector::IpBlock { cidr, except } => {
                let Some(block) = BlockRef::new(cidr, except) else {
                    return Vec::new();
                };
                self.in_block.get(&block).cloned().unwrap_or_default()
            }
        }
    }
}

/// Splits the inclusive port range `first..=last` into the fewest aligned power-of-two
/// blocks, as (first port, prefix length), the way an address range splits into CIDRs: the
/// kernel matches ports by prefix.
pub(crate) fn port_blocks(first: u16, last: u16) -> Vec<(u16, u8)> {
    let (mut start, end) = (u32::from(first), u32::from(last) + 1);
    let mut out = Vec::new();
    while start < end {
        // The largest block aligned at `start` that fits.
        let mut size = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros()
        };
        while start + size > end {
            size >>= 1;
        }
        // Both fit: start < 2^16, and size <= 2^16 so 16 - log2(size) is in 0..=16.
        out.push((start as u16, (16 - size.trailing_zeros()) as u8));
        start += size;
    }
    out
}
