//! The table compiler: unit tests of its parts, and an equivalence test against `evaluate`
//! on random clusters.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
};

use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};

use crate::{
    Decision, Direction, NamedPort, Namespace, Peer, Pod, Policy, Protocol, evaluate, parse,
    policy::PeerSelector,
    tables::{
        BlockRef, ClusterState, Compiled, Entry, FIRST_IDENTITY, IDENTITY_ANY, Identities,
        IdentityKey, Lookup, NODE_RULE, RuleRef, Table, compile, port_blocks,
    },
};

use Protocol::{Sctp, Tcp, Udp};

fn policies(text: &str) -> Vec<Policy> {
    match parse(text.as_bytes(), "t.yaml") {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{text}"),
    }
}

fn net(s: &str) -> Ipv4Net {
    match s.parse() {
        Ok(n) => n,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn ipnet(s: &str) -> IpNet {
    match s.parse() {
        Ok(n) => n,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn addr(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: Option<[u8; 4]>) -> Pod {
    Pod {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ip: ip.map(Ipv4Addr::from),
        ports: Vec::new(),
    }
}

fn with_port(mut p: Pod, name: &str, port: u16, protocol: Protocol) -> Pod {
    p.ports.push(NamedPort {
        name: name.to_owned(),
        port,
        protocol,
    });
    p
}

/// A cluster owned in one place, compiled with every pod as an endpoint.
struct Fixture {
    policies: Vec<Policy>,
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    nodes: Vec<Ipv4Addr>,
}

impl Fixture {
    fn new(yaml: &str, pods: Vec<Pod>, nodes: &[[u8; 4]]) -> Fixture {
        Fixture {
            policies: policies(yaml),
            pods,
            namespaces: Vec::new(),
            nodes: nodes.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        }
    }

    fn compile(&self, ids: &mut Identities) -> Compiled {
        let endpoints: Vec<String> = self.pods.iter().map(Pod::key).collect();
        compile(
            &ClusterState {
                policies: &self.policies,
                pods: &self.pods,
                namespaces: &self.namespaces,
                node_addrs: &self.nodes,
                endpoints: &endpoints,
            },
            ids,
        )
    }
}

fn world(blocks: &[&BlockRef]) -> IdentityKey {
    IdentityKey::World {
        blocks: blocks.iter().map(|b| (*b).clone()).collect(),
    }
}

fn block(cidr: &str, except: &[&str]) -> BlockRef {
    let except: Vec<IpNet> = except.iter().map(|e| ipnet(e)).collect();
    BlockRef::new(&ipnet(cidr), &except).unwrap_or_else(|| panic!("{cidr} is IPv6"))
}

// ---------------------------------------------------------------- ports

#[test]
fn port_ranges_split_into_aligned_blocks() {
    assert_eq!(port_blocks(0, 65535), [(0, 0)]);
    assert_eq!(port_blocks(80, 80), [(80, 16)]);
    assert_eq!(port_blocks(65535, 65535), [(65535, 16)]);
    assert_eq!(port_blocks(0, 1), [(0, 15)]);
    assert_eq!(port_blocks(32768, 65535), [(32768, 1)]);
    assert_eq!(
        port_blocks(1000, 2000),
        [
            (1000, 13),
            (1008, 12),
            (1024, 7),
            (1536, 8),
            (1792, 9),
            (1920, 10),
            (1984, 12),
            (2000, 16)
        ]
    );
    // 1..=65535: one block per bit, 1/16, 2/15, ..., 32768/1.
    let all: Vec<(u16, u8)> = (0..16).map(|b| (1u16 << b, 16 - b as u8)).collect();
    assert_eq!(port_blocks(1, 65535), all);
    assert!(port_blocks(2, 1).is_empty());

    // Any range: the blocks are aligned, in order, and cover exactly the range, with no two
    // that could merge into one (so the split is minimal).
    let mut rng = Rng::new(7);
    for _ in 0..300 {
        let a = rng.below(65536) as u16;
        let b = rng.below(65536) as u16;
        let (first, last) = (a.min(b), a.max(b));
        let blocks = port_blocks(first, last);
        let mut next = u32::from(first);
        for w in blocks.windows(2) {
            let ((p, l), (q, m)) = (w[0], w[1]);
            let mergeable = l == m && l > 0 && (p >> (16 - l)) % 2 == 0 && q == p + (1 << (16 - l));
            assert!(!mergeable, "{first}..={last}: {w:?}");
        }
        for (port, len) in blocks {
            let size = 1u32 << (16 - len);
            assert_eq!(u32::from(port), next, "{first}..={last}");
            assert_eq!(u32::from(port) % size, 0, "{first}..={last}: {port}/{len}");
            next += size;
        }
        assert_eq!(next, u32::from(last) + 1, "{first}..={last}");
    }
}

#[test]
fn entries_cover_their_port_block() {
    let e = |port, port_prefix_len| Entry {
        peer: IDENTITY_ANY,
        proto: Some(Tcp),
        port,
        port_prefix_len,
        rule: RuleRef {
            policy: "x".into(),
            rule: 0,
        },
    };
    assert!(e(0, 0).covers_port(0) && e(0, 0).covers_port(65535));
    assert!(e(80, 16).covers_port(80) && !e(80, 16).covers_port(81));
    assert!(e(1024, 7).covers_port(1024) && e(1024, 7).covers_port(1535));
    assert!(!e(1024, 7).covers_port(1023) && !e(1024, 7).covers_port(1536));
    assert!(e(32768, 1).covers_port(65535) && !e(32768, 1).covers_port(32767));
}

// ---------------------------------------------------------------- blocks and signatures

#[test]
fn blocks_are_canonical() {
    let a = block(
        "10.1.2.3/8",
        &["10.2.0.0/16", "10.1.0.0/16", "10.1.5.0/24", "10.1.0.0/16"],
    );
    assert_eq!(
        a,
        BlockRef {
            cidr: net("10.0.0.0/8"),
            except: vec![net("10.1.0.0/16"), net("10.2.0.0/16")],
        }
    );
    assert_eq!(a, block("10.0.0.0/8", &["10.2.0.0/16", "10.1.0.0/16"]));
    assert_eq!(BlockRef::new(&ipnet("fd00::/8"), &[]), None);
    assert!(a.contains(addr([10, 3, 0, 1])));
    assert!(!a.contains(addr([10, 1, 5, 1])));
    assert!(!a.contains(addr([11, 0, 0, 1])));
}

const OVERLAPPING: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24, 10.0.2.0/24]}
    - ipBlock: {cidr: 10.0.0.0/16}
    - ipBlock: {cidr: 10.0.1.128/25}
    - ipBlock: {cidr: '::/0'}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}
    # The same block as a's first, written differently.
    - ipBlock: {cidr: 10.9.9.9/8, except: [10.0.2.0/24, 10.0.1.0/24, 10.0.1.0/25]}
";

#[test]
fn signatures_of_overlapping_blocks_and_excepts() {
    let pods = vec![
        pod("default", "in-1", &[], Some([10, 0, 1, 200])),
        pod("default", "in-0", &[], Some([10, 0, 0, 5])),
        pod("default", "no-ip", &[], None),
    ];
    let f = Fixture::new(OVERLAPPING, pods, &[[10, 0, 2, 1]]);
    let mut ids = Identities::new();
    let c = f.compile(&mut ids);

    let a = block("10.0.0.0/8", &["10.0.1.0/24", "10.0.2.0/24"]);
    let b = block("10.0.0.0/16", &[]);
    let c25 = block("10.0.1.128/25", &[]);
    let out = block("0.0.0.0/0", &["10.0.0.0/8"]);
    let key_of = |a: [u8; 4]| c.identities.get(&c.identity_of(addr(a))).cloned();
    // Outside the cluster: the World identity of the blocks containing the address.
    let rows: &[([u8; 4], IdentityKey)] = &[
        ([8, 8, 8, 8], world(&[&out])),
        ([10, 200, 0, 1], world(&[&a])),
        ([10, 0, 0, 1], world(&[&a, &b])),
        ([10, 0, 1, 1], world(&[&b])), // in a's except
        ([10, 0, 1, 129], world(&[&b, &c25])),
        ([10, 0, 2, 2], world(&[&b])),
        ([10, 1, 0, 0], world(&[&a])),
        ([11, 0, 0, 0], world(&[&out])),
        ([9, 255, 255, 255], world(&[&out])),
    ];
    for (a, want) in rows {
        assert_eq!(key_of(*a).as_ref(), Some(want), "{a:?}");
    }
    // Pods and the node: their own kinds of identity, with their signatures.
    let pod_key = |blocks: Vec<BlockRef>| IdentityKey::Pod {
        namespace: "default".into(),
        labels: BTreeMap::new(),
        ports: Vec::new(),
        blocks,
    };
    assert_eq!(
        key_of([10, 0, 1, 200]),
        Some(pod_key(vec![b.clone(), c25.clone()]))
    );
    assert_eq!(
        key_of([10, 0, 0, 5]),
        Some(pod_key(vec![a.clone(), b.clone()]))
    );
    assert_eq!(
        key_of([10, 0, 2, 1]),
        Some(IdentityKey::Node {
            blocks: vec![b.clone()]
        })
    );
    // The pod without an address has an identity (selectors see it) but no prefix.
    let no_ip = pod_key(Vec::new());
    assert!(c.identities.values().any(|k| *k == no_ip));
    assert!(!c.endpoints.contains_key("default/no-ip"));

    let prefixes: Vec<String> = c.prefixes.keys().map(ToString::to_string).collect();
    assert_eq!(
        prefixes,
        [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.0.0.0/16",
            "10.0.0.5/32",
            "10.0.1.0/24",
            "10.0.1.128/25",
            "10.0.1.200/32",
            "10.0.2.0/24",
            "10.0.2.1/32",
        ]
    );
    // Every prefix's identity is live, and every live identity has a number >= FIRST.
    for id in c.prefixes.values() {
        assert!(c.identities.contains_key(id));
    }
    assert!(c.identities.keys().all(|&id| id >= FIRST_IDENTITY));
}

// ---------------------------------------------------------------- identities

fn stability_fixture() -> Fixture {
    let pods = vec![
        with_port(
            pod("default", "web", &[("app", "web")], Some([10, 0, 0, 1])),
            "http",
            80,
            Tcp,
        ),
        pod("default", "web-2", &[("app", "web")], Some([10, 0, 0, 2])),
        pod("default", "db", &[("app", "db")], Some([10, 0, 0, 3])),
    ];
    let mut f = Fixture::new(OVERLAPPING, pods, &[[10, 0, 2, 1]]);
    f.policies.extend(policies(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}, {port: 1000, endPort: 2000}]
",
    ));
    f
}

#[test]
fn identities_are_stable() {
    let mut f = stability_fixture();
    let mut ids = Identities::new();
    let first = f.compile(&mut ids);
    assert_eq!(f.compile(&mut ids), first, "same input, same output");

    // A fresh allocator numbers the same cluster the same way, whatever the pod order.
    f.pods.reverse();
    assert_eq!(f.compile(&mut Identities::new()), first);
    f.pods.reverse();

    // A new pod (with a new identity) renumbers nothing.
    f.pods.push(pod(
        "default",
        "cache",
        &[("app", "cache")],
        Some([10, 0, 0, 9]),
    ));
    let second = f.compile(&mut ids);
    for (id, key) in &first.identities {
        assert_eq!(second.identities.get(id), Some(key));
    }
    let added: Vec<_> = second
        .identities
        .iter()
        .filter(|(id, _)| !first.identities.contains_key(id))
        .collect();
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(*added[0].0 > *first.identities.keys().last().unwrap_or(&0));

    // Pods sharing a key share an identity: web-2 looks like web but for the named port.
    let id = |c: &Compiled, k: &str| c.endpoints.get(k).map(|e| e.identity);
    assert_ne!(id(&second, "default/web"), id(&second, "default/web-2"));
    f.pods[1].ports = f.pods[0].ports.clone();
    f.pods[1].ip = Some(addr([10, 0, 0, 4]));
    let third = f.compile(&mut ids);
    assert_eq!(id(&third, "default/web"), id(&third, "default/web-2"));
}

#[test]
fn retain_forgets_keys_and_never_reuses_numbers() {
    let mut f = stability_fixture();
    let mut ids = Identities::new();
    let before = f.compile(&mut ids);
    let removed = f.pods.remove(2); // db
    let after = f.compile(&mut ids);
    assert!(
        ids.len() > after.identities.len(),
        "not collected by compile"
    );
    ids.retain(&after.live_keys());
    assert_eq!(ids.len(), after.identities.len());
    let gone: BTreeSet<u32> = before
        .identities
        .keys()
        .filter(|id| ids.key(**id).is_none())
        .copied()
        .collect();
    assert!(!gone.is_empty());
    // The pod comes back: it gets a new number, not its old one.
    f.pods.push(removed);
    let again = f.compile(&mut ids);
    let max = before.identities.keys().max().copied().unwrap_or(0);
    for (id, key) in &again.identities {
        assert!(!gone.contains(id), "{id} reused for {key:?}");
        if !before.identities.contains_key(id) {
            assert!(*id > max);
        }
    }
    // Identities still live kept theirs.
    for (id, key) in &after.identities {
        assert_eq!(again.identities.get(id), Some(key));
    }
}

#[test]
fn identities_persist_with_serde() {
    let f = stability_fixture();
    let mut ids = Identities::new();
    let c = f.compile(&mut ids);
    let json = serde_json::to_string(&ids).unwrap_or_default();
    let mut back: Identities = match serde_json::from_str(&json) {
        Ok(ids) => ids,
        Err(e) => panic!("{e}: {json}"),
    };
    assert_eq!(back, ids);
    assert_eq!(f.compile(&mut back), c);
    // The compiled form round-trips too (the agent may keep it for diagnostics).
    let json = serde_json::to_string(&c).unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<Compiled>(&json).ok(),
        Some(c.clone())
    );
    // Keys keep their numbers, and the counter survives: a new key gets a number never
    // handed out before.
    for (id, key) in ids.iter() {
        assert_eq!(back.clone().intern(key.clone()), id);
    }
    let fresh = back.intern(IdentityKey::Node {
        blocks: vec![block("1.0.0.0/8", &[])],
    });
    assert!(ids.iter().all(|(id, _)| id < fresh));

    // Inconsistent state is refused rather than risking a reused number.
    let world =
        serde_json::to_value(IdentityKey::World { blocks: Vec::new() }).unwrap_or(Value::Null);
    let bad = [
        json!({"next": 300, "identities": {"300": world}}),
        json!({"next": 300, "identities": {"5": world}}),
        json!({"next": 100, "identities": {}}),
        json!({"next": 300, "identities": {"256": world, "257": world}}),
    ];
    for b in bad {
        assert!(
            serde_json::from_value::<Identities>(b.clone()).is_err(),
            "{b}"
        );
    }
}

// ---------------------------------------------------------------- tables

const SHARED: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 80}, {port: 80}, {protocol: UDP}]
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 80}, {port: 64, endPort: 127}]
  - {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: also, namespace: default}
spec:
  podSelector: {}
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 80}]
";

#[test]
fn tables_are_deduplicated_sorted_and_shared() {
    let pods = vec![
        pod("default", "web-1", &[("app", "web")], Some([10, 0, 0, 1])),
        pod("default", "web-2", &[("app", "web")], Some([10, 0, 0, 2])),
        pod("default", "db", &[("app", "db")], Some([10, 0, 0, 3])),
    ];
    let f = Fixture::new(SHARED, pods, &[]);
    let c = f.compile(&mut Identities::new());
    let tables = |k: &str| c.endpoints.get(k).cloned();
    let (Some(w1), Some(w2), Some(db)) = (
        tables("default/web-1"),
        tables("default/web-2"),
        tables("default/db"),
    ) else {
        panic!("missing endpoints: {c:?}");
    };
    // Equal tables for equal pods, so the agent can share one.
    assert_eq!(w1.ingress, w2.ingress);
    assert_eq!(w1.identity, w2.identity);
    assert_eq!(w1.egress, None);

    let db_id = db.identity;
    let r = |policy: &str, rule| RuleRef {
        policy: policy.into(),
        rule,
    };
    let e = |peer, proto, port, port_prefix_len, rule| Entry {
        peer,
        proto,
        port,
        port_prefix_len,
        rule,
    };
    assert_eq!(
        w1.ingress,
        Some(Table {
            entries: vec![
                // Rule 2 (`{}`): every peer, every port.
                e(IDENTITY_ANY, None, 0, 0, r("default/web", 2)),
                // 80 twice in rule 0, again in rule 1 and in `also`: one entry, rule 0's.
                e(db_id, Some(Tcp), 64, 10, r("default/web", 1)),
                e(db_id, Some(Tcp), 80, 16, r("default/web", 0)),
                e(db_id, Some(Udp), 0, 0, r("default/web", 0)),
            ]
        })
    );
    // Entries are sorted and unique by key.
    let entries = &w1
        .ingress
        .as_ref()
        .map(|t| t.entries.clone())
        .unwrap_or_default();
    let keys: Vec<_> = entries
        .iter()
        .map(|e| (e.peer, e.proto, e.port, e.port_prefix_len))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted);

    // The kernel's lookup: the specific peer first, then the protocol, then the longest
    // port prefix.
    let look = |peer, proto, port| c.lookup("default/web-1", Direction::Ingress, peer, proto, port);
    let rule_of = |l: Lookup<'_>| match l {
        Lookup::Allowed(e) => Some(e.rule.clone()),
        _ => None,
    };
    assert_eq!(rule_of(look(db_id, Tcp, 80)), Some(r("default/web", 0)));
    assert_eq!(rule_of(look(db_id, Tcp, 100)), Some(r("default/web", 1)));
    assert_eq!(rule_of(look(db_id, Tcp, 128)), Some(r("default/web", 2)));
    assert_eq!(rule_of(look(db_id, Sctp, 80)), Some(r("default/web", 2)));
    assert_eq!(
        rule_of(look(w1.identity, Tcp, 80)),
        Some(r("default/web", 2))
    );
    // db is selected by `also` only.
    let look_db = |peer, port| c.lookup("default/db", Direction::Ingress, peer, Tcp, port);
    assert!(matches!(look_db(db_id, 80), Lookup::Allowed(_)));
    assert_eq!(look_db(db_id, 81), Lookup::Denied);
    assert_eq!(look_db(w1.identity, 80), Lookup::Denied);
    assert_eq!(
        c.lookup("default/db", Direction::Egress, w1.identity, Tcp, 80),
        Lookup::NotSelected
    );
    assert_eq!(
        c.lookup("default/nope", Direction::Ingress, w1.identity, Tcp, 80),
        Lookup::NotSelected
    );
}

#[test]
fn ingress_tables_let_the_node_in() {
    let deny = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 192.168.0.0/16}}]
    ports: [{port: 22}]
";
    let pods = vec![pod("default", "a", &[], Some([10, 0, 0, 1]))];
    // Two node addresses with different signatures: two Node identities.
    let f = Fixture::new(deny, pods, &[[192, 168, 0, 1], [172, 16, 0, 1]]);
    let c = f.compile(&mut Identities::new());
    let n1 = c.identity_of(addr([192, 168, 0, 1]));
    let n2 = c.identity_of(addr([172, 16, 0, 1]));
    let w = c.identity_of(addr([192, 168, 5, 5]));
    assert_ne!(n1, n2);
    let node = RuleRef {
        policy: NODE_RULE.into(),
        rule: 0,
    };
    let Some(t) = c.endpoints.get("default/a") else {
        panic!("no endpoint: {c:?}");
    };
    // The ipBlock's entry for the node gives way to the node's own.
    let mut want = vec![
        Entry {
            peer: n1,
            proto: None,
            port: 0,
            port_prefix_len: 0,
            rule: node.clone(),
        },
        Entry {
            peer: n2,
            proto: None,
            port: 0,
            port_prefix_len: 0,
            rule: node,
        },
        Entry {
            peer: w,
            proto: Some(Tcp),
            port: 22,
            port_prefix_len: 16,
            rule: RuleRef {
                policy: "default/deny".into(),
                rule: 0,
            },
        },
    ];
    want.sort();
    assert_eq!(t.ingress, Some(Table { entries: want }));
    // Egress is denied entirely, to the node too: no node entries there.
    assert_eq!(t.egress, Some(Table::default()));
    assert_eq!(
        c.lookup("default/a", Direction::Egress, n1, Udp, 53),
        Lookup::Denied
    );
}

#[test]
fn egress_named_ports_are_per_destination_identity() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  egress:
  - ports: [{port: http}, {port: dns, protocol: UDP}]
  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]
    ports: [{port: metrics}]
";
    let pods = vec![
        pod(
            "default",
            "client",
            &[("app", "client")],
            Some([10, 0, 0, 1]),
        ),
        with_port(
            pod("default", "a", &[], Some([10, 0, 0, 2])),
            "http",
            80,
            Tcp,
        ),
        with_port(
            with_port(
                pod("other", "b", &[], Some([10, 1, 0, 2])),
                "http",
                8080,
                Tcp,
            ),
            "metrics",
            9090,
            Tcp,
        ),
        with_port(
            pod("other", "c", &[], Some([11, 0, 0, 2])),
            "metrics",
            9091,
            Tcp,
        ),
        with_port(pod("other", "no-ip", &[], None), "http", 81, Tcp),
    ];
    let f = Fixture::new(yaml, pods, &[[10, 0, 0, 254]]);
    let c = f.compile(&mut Identities::new());
    let id = |k: &str| c.endpoints.get(k).map(|e| e.identity).unwrap_or(0);
    let Some(egress) = c
        .endpoints
        .get("default/client")
        .and_then(|t| t.egress.clone())
    else {
        panic!("no egress table: {c:?}");
    };
    let mut got: Vec<(u32, Option<Protocol>, u16, u8, usize)> = egress
        .entries
        .iter()
        .map(|e| (e.peer, e.proto, e.port, e.port_prefix_len, e.rule.rule))
        .collect();
    got.sort();
    let no_ip = c
        .identities
        .iter()
        .find(
            |(_, k)| matches!(k, IdentityKey::Pod { ports, .. } if ports.iter().any(|p| p.1 == 81)),
        )
        .map(|(id, _)| *id)
        .unwrap_or(0);
    let mut want = vec![
        (id("default/a"), Some(Tcp), 80, 16, 0),
        (id("other/b"), Some(Tcp), 8080, 16, 0),
        (no_ip, Some(Tcp), 81, 16, 0),
        (id("other/b"), Some(Tcp), 9090, 16, 1), // c is outside 10.0.0.0/8
    ];
    want.sort();
    assert_eq!(got, want);
    // Nothing for the node or the world, which have no named ports.
    let world = c.identity_of(addr([10, 9, 9, 9]));
    assert_eq!(
        c.lookup("default/client", Direction::Egress, world, Tcp, 80),
        Lookup::Denied
    );
}

#[test]
fn endpoints_without_an_address_are_skipped() {
    let pods = vec![
        pod("default", "a", &[], None),
        pod("default", "b", &[], Some([10, 0, 0, 1])),
    ];
    let f = Fixture::new("", pods, &[]);
    let endpoints = vec![
        "default/a".to_owned(),
        "default/b".to_owned(),
        "x/y".to_owned(),
    ];
    let c = compile(
        &ClusterState {
            policies: &f.policies,
            pods: &f.pods,
            namespaces: &f.namespaces,
            node_addrs: &f.nodes,
            endpoints: &endpoints,
        },
        &mut Identities::new(),
    );
    let keys: Vec<&String> = c.endpoints.keys().collect();
    assert_eq!(keys, ["default/b"]);
    // Both pods have the same key (no blocks, same labels): one identity, and the world's.
    assert_eq!(c.identities.len(), 2);
    assert_eq!(c.prefixes.len(), 2);
}

// ---------------------------------------------------------------- equivalence with evaluate

/// xorshift64*: deterministic, good enough to spread test cases.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const NS_NAMES: [&str; 3] = ["alpha", "beta", "gamma"];
const LABEL_KEYS: [&str; 3] = ["app", "tier", "v"];
const LABEL_VALUES: [&str; 3] = ["x", "y", "z"];
const NS_LABEL_KEYS: [&str; 3] = ["env", "team", "kubernetes.io/metadata.name"];
const PORT_NAMES: [&str; 4] = ["http", "dns", "pg", "nope"];
const PORT_NUMBERS: [u16; 6] = [53, 80, 1000, 5432, 8080, 65535];
const PROTOS: [Protocol; 4] = [Tcp, Tcp, Udp, Sctp];

struct Case {
    policies: Vec<Policy>,
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
    nodes: Vec<Ipv4Addr>,
    externals: Vec<Ipv4Addr>,
    /// Addresses ipBlocks are built around, so they cut through pods, nodes and the rest.
    interesting: Vec<Ipv4Addr>,
    text: String,
}

fn random_labels(rng: &mut Rng, keys: &[&str], values: &[&str]) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for k in keys {
        if rng.chance(50) {
            labels.insert((*k).to_owned(), (*rng.pick(values)).to_owned());
        }
    }
    labels
}

fn random_selector(rng: &mut Rng, keys: &[&str], values: &[&str]) -> Value {
    let mut s = serde_json::Map::new();
    if rng.chance(50) {
        let labels: serde_json::Map<String, Value> = (0..rng.below(3))
            .map(|_| ((*rng.pick(keys)).to_owned(), json!(rng.pick(values))))
            .collect();
        s.insert("matchLabels".into(), Value::Object(labels));
    }
    if rng.chance(50) {
        let exprs: Vec<Value> = (0..1 + rng.below(2))
            .map(|_| {
                let key = rng.pick(keys);
                match rng.below(4) {
                    0 | 1 => {
                        let op = if rng.chance(50) { "In" } else { "NotIn" };
                        let vals: Vec<&str> =
                            (0..1 + rng.below(2)).map(|_| *rng.pick(values)).collect();
                        json!({"key": key, "operator": op, "values": vals})
                    }
                    2 => json!({"key": key, "operator": "Exists"}),
                    _ => json!({"key": key, "operator": "DoesNotExist"}),
                }
            })
            .collect();
        s.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Value::Object(s)
}

fn random_block(rng: &mut Rng, interesting: &[Ipv4Addr]) -> Value {
    if rng.chance(5) {
        return json!({"cidr": "fd00::/8", "except": ["fd00::/16"]});
    }
    let base = *rng.pick(interesting);
    let len = *rng.pick(&[0u8, 8, 16, 23, 24, 28, 29, 30, 31, 32]);
    let cidr = Ipv4Net::new(base, len).unwrap_or_default();
    // Host bits left in now and then: the block is the same as without them.
    let cidr_text = if rng.chance(30) {
        cidr.to_string()
    } else {
        cidr.trunc().to_string()
    };
    let inside: Vec<Ipv4Addr> = interesting
        .iter()
        .filter(|a| cidr.contains(*a))
        .copied()
        .collect();
    let mut except = Vec::new();
    if len < 32 {
        for _ in 0..rng.below(3) {
            let a = if inside.is_empty() {
                cidr.network()
            } else {
                *rng.pick(&inside)
            };
            let l = len + 1 + rng.below(usize::from(32 - len)) as u8;
            except.push(Ipv4Net::new(a, l).unwrap_or_default().trunc().to_string());
        }
    }
    json!({"cidr": cidr_text, "except": except})
}

fn random_rule(rng: &mut Rng, namespaces: &[String], interesting: &[Ipv4Addr]) -> Value {
    let mut rule = serde_json::Map::new();
    let peers_field = "peers"; // renamed to from/to by the caller
    match rng.below(10) {
        0 | 1 => {} // absent: every peer
        2 => {
            rule.insert(peers_field.into(), json!([]));
        }
        _ => {
            let peers: Vec<Value> = (0..1 + rng.below(3))
                .map(|_| match rng.below(4) {
                    0 => json!({"podSelector": random_selector(rng, &LABEL_KEYS, &LABEL_VALUES)}),
                    1 => {
                        let mut values: Vec<&str> = vec!["1", "2"];
                        values.extend(namespaces.iter().map(String::as_str));
                        json!({"namespaceSelector": random_selector(rng, &NS_LABEL_KEYS, &values)})
                    }
                    2 => {
                        let mut values: Vec<&str> = vec!["1", "2"];
                        values.extend(namespaces.iter().map(String::as_str));
                        json!({
                            "namespaceSelector": random_selector(rng, &NS_LABEL_KEYS, &values),
                            "podSelector": random_selector(rng, &LABEL_KEYS, &LABEL_VALUES),
                        })
                    }
                    _ => json!({"ipBlock": random_block(rng, interesting)}),
                })
                .collect();
            rule.insert(peers_field.into(), Value::Array(peers));
        }
    }
    match rng.below(10) {
        0..=2 => {} // absent: every port
        3 => {
            rule.insert("ports".into(), json!([]));
        }
        _ => {
            let ports: Vec<Value> = (0..1 + rng.below(3))
                .map(|_| {
                    let mut p = serde_json::Map::new();
                    if rng.chance(70) {
                        p.insert("protocol".into(), json!(rng.pick(&PROTOS).to_string()));
                    }
                    match rng.below(8) {
                        0 => {} // every port
                        1 | 2 => {
                            p.insert("port".into(), json!(rng.pick(&PORT_NAMES)));
                        }
                        3 | 4 => {
                            let first = *rng.pick(&PORT_NUMBERS);
                            let span = *rng.pick(&[0u32, 1, 7, 100, 1000, 70000]);
                            let last = (u32::from(first) + span).min(65535);
                            p.insert("port".into(), json!(first));
                            p.insert("endPort".into(), json!(last));
                        }
                        _ => {
                            p.insert("port".into(), json!(rng.pick(&PORT_NUMBERS)));
                        }
                    }
                    Value::Object(p)
                })
                .collect();
            rule.insert("ports".into(), Value::Array(ports));
        }
    }
    Value::Object(rule)
}

fn random_rules(
    rng: &mut Rng,
    peers: &str,
    namespaces: &[String],
    interesting: &[Ipv4Addr],
) -> Option<Value> {
    match rng.below(10) {
        0..=2 => None,
        3 => Some(json!([])),
        _ => Some(Value::Array(
            (0..1 + rng.below(3))
                .map(|_| {
                    let mut r = random_rule(rng, namespaces, interesting);
                    if let Some(p) = r.as_object_mut().and_then(|o| o.remove("peers")) {
                        r[peers] = p;
                    }
                    r
                })
                .collect(),
        )),
    }
}

fn random_case(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let ns_count = 2 + rng.below(2);
    let ns_names: Vec<String> = NS_NAMES[..ns_count]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    // Sometimes a namespace has no Namespace object: it still has its name label.
    let mut namespaces = Vec::new();
    for name in &ns_names {
        if rng.chance(85) {
            namespaces.push(Namespace {
                name: name.clone(),
                labels: random_labels(&mut rng, &NS_LABEL_KEYS[..2], &["1", "2"]),
            });
        }
    }
    let pods: Vec<Pod> = (0..3 + rng.below(6))
        .map(|i| {
            let ports = (0..rng.below(3))
                .map(|_| NamedPort {
                    name: (*rng.pick(&PORT_NAMES[..3])).to_owned(),
                    port: *rng.pick(&PORT_NUMBERS),
                    protocol: *rng.pick(&PROTOS),
                })
                .collect();
            Pod {
                namespace: rng.pick(&ns_names).clone(),
                name: format!("p{i}"),
                labels: random_labels(&mut rng, &LABEL_KEYS, &LABEL_VALUES),
                // Unique addresses in two /24s.
                ip: rng
                    .chance(90)
                    .then(|| addr([10, 0, (i % 2) as u8, 1 + i as u8])),
                ports,
            }
        })
        .collect();
    let node_pool = [
        addr([10, 0, 0, 200]),
        addr([10, 0, 1, 201]),
        addr([192, 168, 0, 1]),
    ];
    let nodes: Vec<Ipv4Addr> = node_pool
        .iter()
        .filter(|_| rng.chance(50))
        .copied()
        .collect();
    let external_pool = [
        addr([8, 8, 8, 8]),
        addr([10, 0, 0, 100]),
        addr([10, 0, 1, 7]),
        addr([10, 1, 2, 3]),
        addr([172, 16, 5, 4]),
        addr([192, 168, 0, 77]),
        addr([0, 0, 0, 1]),
        addr([255, 255, 255, 254]),
    ];
    let externals: Vec<Ipv4Addr> = external_pool
        .iter()
        .filter(|a| rng.chance(50) && !pods.iter().any(|p| p.ip == Some(**a)))
        .copied()
        .collect();
    let mut interesting: Vec<Ipv4Addr> = pods.iter().filter_map(|p| p.ip).collect();
    interesting.extend(&node_pool);
    interesting.extend(&external_pool);

    let mut text = String::new();
    for i in 0..1 + rng.below(4) {
        let mut spec = serde_json::Map::new();
        spec.insert(
            "podSelector".into(),
            if rng.chance(40) {
                json!({})
            } else {
                random_selector(&mut rng, &LABEL_KEYS, &LABEL_VALUES)
            },
        );
        match rng.below(6) {
            0 | 1 => {}
            2 => {
                spec.insert("policyTypes".into(), json!(["Ingress"]));
            }
            3 => {
                spec.insert("policyTypes".into(), json!(["Egress"]));
            }
            4 => {
                spec.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
            }
            _ => {
                spec.insert("policyTypes".into(), json!([]));
            }
        }
        if let Some(r) = random_rules(&mut rng, "from", &ns_names, &interesting) {
            spec.insert("ingress".into(), r);
        }
        if let Some(r) = random_rules(&mut rng, "to", &ns_names, &interesting) {
            spec.insert("egress".into(), r);
        }
        let policy = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": format!("np{i}"), "namespace": rng.pick(&ns_names)},
            "spec": spec,
        });
        text.push_str(&policy.to_string());
        text.push('\n');
    }
    Case {
        policies: policies(&text),
        pods,
        namespaces,
        nodes,
        externals,
        interesting,
        text,
    }
}

/// An end of a connection: how `evaluate` sees it, its address, and its endpoint.
struct End<'a> {
    peer: Peer<'a>,
    addr: Ipv4Addr,
    endpoint: Option<String>,
}

/// `policy` reduced to rule `rule` of direction `dir`: if the tables attribute a connection
/// to it, `evaluate` must allow the connection under it alone.
fn only_rule(policies: &[Policy], r: &RuleRef, dir: Direction) -> Vec<Policy> {
    let Some(p) = policies.iter().find(|p| p.key() == r.policy) else {
        panic!("attributed to unknown policy {r:?}");
    };
    let mut p = p.clone();
    let rules = match dir {
        Direction::Ingress => (&mut p.ingress, &mut p.egress),
        Direction::Egress => (&mut p.egress, &mut p.ingress),
    };
    *rules.0 = rules.0.as_ref().map(|rs| vec![rs[r.rule].clone()]);
    *rules.1 = None;
    vec![p]
}

/// Every ipBlock of every policy, canonical: the brute-force signature's alphabet.
fn all_blocks(policies: &[Policy]) -> BTreeSet<BlockRef> {
    policies
        .iter()
        .flat_map(|p| p.ingress.iter().chain(&p.egress).flatten())
        .flat_map(|r| r.peers.iter().flatten())
        .filter_map(|s| match s {
            PeerSelector::IpBlock { cidr, except } => BlockRef::new(cidr, except),
            PeerSelector::Pods { .. } => None,
        })
        .collect()
}

fn check_case(seed: u64) -> usize {
    let case = random_case(seed);
    let ctx = |msg: String| format!("seed {seed}: {msg}\npolicies:\n{}", case.text);
    let endpoints: Vec<String> = case.pods.iter().map(Pod::key).collect();
    let state = ClusterState {
        policies: &case.policies,
        pods: &case.pods,
        namespaces: &case.namespaces,
        node_addrs: &case.nodes,
        endpoints: &endpoints,
    };
    let mut ids = Identities::new();
    let c = compile(&state, &mut ids);
    assert_eq!(compile(&state, &mut ids), c, "{}", ctx("recompiled".into()));

    // Every address's identity describes it: its kind and its ipBlock signature.
    let blocks = all_blocks(&case.policies);
    let mut rng = Rng::new(seed ^ 0xABCD);
    let probes: Vec<Ipv4Addr> = (0..24)
        .map(|_| {
            let base = u32::from(*rng.pick(&case.interesting));
            let bits = *rng.pick(&[0u32, 1, 3, 8, 12, 20, 32]);
            let noise = if bits == 32 {
                rng.next() as u32
            } else {
                (rng.next() as u32) & ((1 << bits) - 1)
            };
            Ipv4Addr::from(base ^ noise)
        })
        .chain(case.interesting.iter().copied())
        .collect();
    for a in probes {
        let Some(key) = c.identities.get(&c.identity_of(a)) else {
            panic!("{}", ctx(format!("{a} has no live identity")));
        };
        let sig: Vec<BlockRef> = blocks.iter().filter(|b| b.contains(a)).cloned().collect();
        let pod = case.pods.iter().find(|p| p.ip == Some(a));
        let kind_ok = match key {
            IdentityKey::Node { .. } => case.nodes.contains(&a),
            IdentityKey::Pod {
                namespace, labels, ..
            } => {
                !case.nodes.contains(&a)
                    && pod.is_some_and(|p| p.namespace == *namespace && p.labels == *labels)
            }
            IdentityKey::World { .. } => !case.nodes.contains(&a) && pod.is_none(),
        };
        assert!(kind_ok, "{}", ctx(format!("{a}: {key:?}")));
        assert_eq!(key.blocks(), sig, "{}", ctx(format!("{a}: {key:?}")));
    }

    let mut ends: Vec<End<'_>> = Vec::new();
    for p in &case.pods {
        if let Some(ip) = p.ip {
            ends.push(End {
                peer: Peer::Pod(p),
                addr: ip,
                endpoint: Some(p.key()),
            });
        }
    }
    for &a in &case.nodes {
        ends.push(End {
            peer: Peer::Node(a),
            addr: a,
            endpoint: None,
        });
    }
    for &a in &case.externals {
        ends.push(End {
            peer: Peer::Ip(a),
            addr: a,
            endpoint: None,
        });
    }
    let mut checked = 0;
    for from in &ends {
        for to in &ends {
            let mut conns: Vec<(u16, Protocol)> = vec![
                (80, Tcp),
                (80, Udp),
                (53, Udp),
                (5432, Tcp),
                (8080, Sctp),
                (1007, Tcp),
                (1500, Udp),
                (65535, Tcp),
            ];
            if let Peer::Pod(p) = to.peer {
                conns.extend(p.ports.iter().map(|np| (np.port, np.protocol)));
            }
            let (from_id, to_id) = (c.identity_of(from.addr), c.identity_of(to.addr));
            for (port, proto) in conns {
                let want = evaluate(
                    &case.policies,
                    &case.pods,
                    &case.namespaces,
                    from.peer,
                    to.peer,
                    port,
                    proto,
                );
                let side = |end: &End<'_>, dir, remote| {
                    end.endpoint
                        .as_ref()
                        .map(|k| c.lookup(k, dir, remote, proto, port))
                };
                let egress = side(from, Direction::Egress, to_id);
                let ingress = side(to, Direction::Ingress, from_id);
                let got = egress.is_none_or(|l| l.allowed()) && ingress.is_none_or(|l| l.allowed());
                let what = || {
                    ctx(format!(
                        "{:?} -> {:?} {port}/{proto}: evaluate says {} ({}), tables {egress:?} {ingress:?}",
                        from.addr, to.addr, want.allowed, want.reason
                    ))
                };
                assert_eq!(got, want.allowed, "{}", what());
                // Side by side, too: the same decision, and NotSelected exactly when
                // evaluate says no policy selects the pod.
                for (l, d) in [
                    (egress, &want.reason.egress),
                    (ingress, &want.reason.ingress),
                ] {
                    let (Some(l), Some(d)) = (l, d) else {
                        assert!(l.is_none() && d.is_none(), "{}", what());
                        continue;
                    };
                    assert_eq!(l.allowed(), d.allowed(), "{}", what());
                    if !matches!(d, Decision::FromNode { .. }) {
                        assert_eq!(
                            l == Lookup::NotSelected,
                            matches!(d, Decision::NotSelected { .. }),
                            "{}",
                            what()
                        );
                    }
                }
                // The attributed rule allows the connection on its own.
                for (l, dir) in [(egress, Direction::Egress), (ingress, Direction::Ingress)] {
                    let Some(Lookup::Allowed(entry)) = l else {
                        continue;
                    };
                    if entry.rule.policy == NODE_RULE {
                        assert!(matches!(from.peer, Peer::Node(_)), "{}", what());
                        continue;
                    }
                    let alone = only_rule(&case.policies, &entry.rule, dir);
                    let v = evaluate(
                        &alone,
                        &case.pods,
                        &case.namespaces,
                        from.peer,
                        to.peer,
                        port,
                        proto,
                    );
                    let d = match dir {
                        Direction::Ingress => v.reason.ingress,
                        Direction::Egress => v.reason.egress,
                    };
                    assert!(
                        matches!(d, Some(Decision::AllowedBy { .. })),
                        "{}: {entry:?} alone gives {d:?}",
                        what()
                    );
                }
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn tables_agree_with_evaluate_on_random_clusters() {
    let mut checked = 0;
    for seed in 0..300 {
        checked += check_case(seed);
    }
    assert!(checked > 100_000, "only {checked} connections checked");
}

#[test]
fn identities_do_not_depend_on_unrelated_pods() {
    for seed in 1000..1040 {
        let case = random_case(seed);
        let mut ids = Identities::new();
        let mut state = ClusterState {
            policies: &case.policies,
            pods: &case.pods,
            namespaces: &case.namespaces,
            node_addrs: &case.nodes,
            endpoints: &[],
        };
        let before = compile(&state, &mut ids);
        let mut pods = case.pods.clone();
        pods.push(pod("omega", "new", &[("new", "1")], Some([10, 0, 3, 3])));
        state.pods = &pods;
        let after = compile(&state, &mut ids);
        for (id, key) in &before.identities {
            assert_eq!(after.identities.get(id), Some(key), "seed {seed}");
        }
        assert_eq!(
            after.identities.len(),
            before.identities.len() + 1,
            "seed {seed}"
        );
        let live: HashSet<IdentityKey> = after.live_keys();
        assert!(before.identities.values().all(|k| live.contains(k)));
    }
}
