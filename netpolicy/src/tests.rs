//! Truth tables for every rule of the semantics, and for validation.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    Direction, NamedPort, Namespace, Peer, Pod, Policy, Protocol, Requirement, Selector, evaluate,
    parse,
};

use Protocol::{Sctp, Tcp, Udp};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(
    ns: &str,
    name: &str,
    l: &[(&str, &str)],
    ip: Option<[u8; 4]>,
    ports: &[(&str, u16, Protocol)],
) -> Pod {
    Pod {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        labels: labels(l),
        ip: ip.map(Ipv4Addr::from),
        ports: ports
            .iter()
            .map(|(n, p, proto)| NamedPort {
                name: (*n).to_owned(),
                port: *p,
                protocol: *proto,
            })
            .collect(),
    }
}

/// The cluster every table runs against.
struct Cluster {
    pods: Vec<Pod>,
    namespaces: Vec<Namespace>,
}

fn cluster() -> Cluster {
    Cluster {
        pods: vec![
            pod(
                "default",
                "web",
                &[("app", "web"), ("tier", "frontend")],
                Some([10, 0, 0, 1]),
                &[("http", 80, Tcp)],
            ),
            pod(
                "default",
                "db",
                &[("app", "db")],
                Some([10, 0, 0, 2]),
                &[("pg", 5432, Tcp), ("dns", 53, Udp)],
            ),
            pod(
                "prod",
                "api",
                &[("app", "api")],
                Some([10, 0, 1, 1]),
                &[("http", 8080, Tcp)],
            ),
            pod(
                "dev",
                "api",
                &[("app", "api")],
                Some([10, 0, 2, 1]),
                &[("http", 8081, Tcp)],
            ),
            pod("default", "pending", &[("app", "web")], None, &[]),
        ],
        namespaces: vec![
            Namespace {
                name: "default".into(),
                labels: BTreeMap::new(),
            },
            Namespace {
                name: "prod".into(),
                labels: labels(&[("env", "prod")]),
            },
            Namespace {
                name: "dev".into(),
                labels: labels(&[("env", "dev")]),
            },
        ],
    }
}

/// An end of a connection in the tables: a pod by `ns/name`, an address, or a node address.
#[derive(Clone, Copy)]
enum E {
    P(&'static str),
    Ip([u8; 4]),
    N([u8; 4]),
}
use E::{Ip, N, P};

impl Cluster {
    fn peer(&self, e: E) -> Peer<'_> {
        match e {
            P(key) => Peer::Pod(
                self.pods
                    .iter()
                    .find(|p| p.key() == key)
                    .unwrap_or_else(|| panic!("no pod {key}")),
            ),
            Ip(a) => Peer::Ip(Ipv4Addr::from(a)),
            N(a) => Peer::Node(Ipv4Addr::from(a)),
        }
    }

    fn eval(
        &self,
        policies: &[Policy],
        from: E,
        to: E,
        port: u16,
        proto: Protocol,
    ) -> crate::Verdict {
        evaluate(
            policies,
            &self.pods,
            &self.namespaces,
            self.peer(from),
            self.peer(to),
            port,
            proto,
        )
    }
}

fn policies(yaml: &str) -> Vec<Policy> {
    match parse(yaml.as_bytes(), "t.yaml") {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Runs a truth table: each row is (from, to, port, protocol, allowed).
fn table(yaml: &str, rows: &[(E, E, u16, Protocol, bool)]) {
    let c = cluster();
    let ps = policies(yaml);
    for (i, &(from, to, port, proto, want)) in rows.iter().enumerate() {
        let v = c.eval(&ps, from, to, port, proto);
        assert_eq!(v.allowed, want, "row {i}: {}", v.reason);
    }
}

fn reason(yaml: &str, from: E, to: E, port: u16, proto: Protocol) -> String {
    cluster()
        .eval(&policies(yaml), from, to, port, proto)
        .reason
        .to_string()
}

const WEB: E = P("default/web");
const DB: E = P("default/db");
const PROD_API: E = P("prod/api");
const DEV_API: E = P("dev/api");
const PENDING: E = P("default/pending");
const OUTSIDE: E = Ip([192, 168, 1, 10]);

// ---------------------------------------------------------------- selectors

#[test]
fn selector_truth_table() {
    let s = |labels: &[(&str, &str)], exprs: Vec<Requirement>| Selector {
        match_labels: self::labels(labels),
        match_expressions: exprs,
    };
    let v = |xs: &[&str]| xs.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let k = |x: &str| x.to_owned();
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let rows: Vec<(Selector, Labels, bool)> = vec![
        (s(&[], vec![]), &[], true),
        (s(&[], vec![]), &[("a", "1")], true),
        (s(&[("a", "1")], vec![]), &[("a", "1")], true),
        (s(&[("a", "1")], vec![]), &[("a", "2")], false),
        (s(&[("a", "1")], vec![]), &[], false),
        (s(&[("a", "1"), ("b", "2")], vec![]), &[("a", "1")], false),
        (
            s(&[("a", "1"), ("b", "2")], vec![]),
            &[("a", "1"), ("b", "2"), ("c", "3")],
            true,
        ),
        (
            s(&[], vec![Requirement::In(k("a"), v(&["1", "2"]))]),
            &[("a", "2")],
            true,
        ),
        (
            s(&[], vec![Requirement::In(k("a"), v(&["1", "2"]))]),
            &[("a", "3")],
            false,
        ),
        (s(&[], vec![Requirement::In(k("a"), v(&["1"]))]), &[], false),
        (
            s(&[], vec![Requirement::NotIn(k("a"), v(&["1"]))]),
            &[("a", "1")],
            false,
        ),
        (
            s(&[], vec![Requirement::NotIn(k("a"), v(&["1"]))]),
            &[("a", "2")],
            true,
        ),
        // A missing key satisfies NotIn.
        (
            s(&[], vec![Requirement::NotIn(k("a"), v(&["1"]))]),
            &[],
            true,
        ),
        (
            s(&[], vec![Requirement::Exists(k("a"))]),
            &[("a", "")],
            true,
        ),
        (
            s(&[], vec![Requirement::Exists(k("a"))]),
            &[("b", "1")],
            false,
        ),
        (
            s(&[], vec![Requirement::DoesNotExist(k("a"))]),
            &[("b", "1")],
            true,
        ),
        (
            s(&[], vec![Requirement::DoesNotExist(k("a"))]),
            &[("a", "1")],
            false,
        ),
        // Labels and expressions are ANDed.
        (
            s(&[("a", "1")], vec![Requirement::Exists(k("b"))]),
            &[("a", "1")],
            false,
        ),
        (
            s(&[("a", "1")], vec![Requirement::Exists(k("b"))]),
            &[("a", "1"), ("b", "x")],
            true,
        ),
    ];
    for (i, (sel, l, want)) in rows.iter().enumerate() {
        assert_eq!(sel.matches(&labels(l)), *want, "row {i}: {sel:?} on {l:?}");
    }
}

#[test]
fn match_expressions_in_policies() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: default}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [db, cache]}
  ingress:
  - from:
    - podSelector:
        matchExpressions:
        - {key: tier, operator: Exists}
        - {key: app, operator: NotIn, values: [db]}
";
    table(
        yaml,
        &[
            (WEB, DB, 5432, Tcp, true),       // web has tier, app=web
            (DB, DB, 5432, Tcp, false),       // db has no tier
            (PROD_API, DB, 5432, Tcp, false), // other namespace
            (DB, WEB, 80, Tcp, true),         // web is not selected
        ],
    );
}

// ---------------------------------------------------------------- default allow / deny

#[test]
fn no_policy_allows_everything() {
    table(
        "",
        &[
            (WEB, DB, 5432, Tcp, true),
            (OUTSIDE, DB, 1, Udp, true),
            (DB, OUTSIDE, 443, Sctp, true),
        ],
    );
    assert_eq!(
        reason("", OUTSIDE, DB, 1, Tcp),
        "no policy selects default/db for ingress"
    );
    assert_eq!(
        reason("", WEB, DB, 1, Tcp),
        "no policy selects default/web for egress; no policy selects default/db for ingress"
    );
}

const DENY_ALL: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: default}
spec:
  podSelector: {}
";

#[test]
fn empty_ingress_denies_all_ingress_only() {
    table(
        DENY_ALL,
        &[
            (WEB, DB, 5432, Tcp, false),
            (OUTSIDE, DB, 5432, Tcp, false),
            (PROD_API, WEB, 80, Tcp, false),
            // Egress is not governed: default pods can still connect out.
            (WEB, PROD_API, 8080, Tcp, true),
            (DB, OUTSIDE, 443, Tcp, true),
            // Other namespaces are untouched.
            (DEV_API, PROD_API, 8080, Tcp, true),
        ],
    );
    assert_eq!(
        reason(DENY_ALL, OUTSIDE, DB, 1, Tcp),
        "denied: default/db is selected by default/deny-all (ingress) and no rule allows it"
    );
}

#[test]
fn empty_egress_with_policy_types_denies_all_egress() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
";
    table(
        yaml,
        &[
            (WEB, DB, 5432, Tcp, false),
            (WEB, OUTSIDE, 443, Tcp, false),
            (DB, WEB, 80, Tcp, true), // ingress not governed
            (DB, OUTSIDE, 443, Tcp, true),
        ],
    );
    assert_eq!(
        reason(yaml, WEB, OUTSIDE, 443, Tcp),
        "denied: default/web is selected by default/no-egress (egress) and no rule allows it"
    );
}

// ---------------------------------------------------------------- policyTypes

fn with_types(types: &str, ingress: &str, egress: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
{types}{ingress}{egress}"
    )
}

#[test]
fn policy_types_defaults_and_explicit() {
    let allow_web_in = "  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n";
    let allow_prod_out = "  egress:\n  - to: [{namespaceSelector: {matchLabels: {env: prod}}}]\n";
    let empty_egress = "  egress: []\n";
    // (policyTypes, ingress, egress, [web->db, prod->db, db->prod, db->dev])
    let rows: &[(&str, &str, &str, [bool; 4])] = &[
        // Absent: Ingress always; Egress only with egress rules.
        ("", "", "", [false, false, true, true]),
        ("", allow_web_in, "", [true, false, true, true]),
        ("", "", allow_prod_out, [false, false, true, false]),
        ("", allow_web_in, allow_prod_out, [true, false, true, false]),
        // `egress: []` without policyTypes is no egress rules: egress stays open.
        ("", allow_web_in, empty_egress, [true, false, true, true]),
        // Explicit: exactly the listed directions; rules of others are ignored.
        (
            "  policyTypes: [Egress]\n",
            allow_web_in,
            "",
            [true, true, false, false],
        ),
        (
            "  policyTypes: [Egress]\n",
            "",
            allow_prod_out,
            [true, true, true, false],
        ),
        (
            "  policyTypes: [Ingress]\n",
            "",
            allow_prod_out,
            [false, false, true, true],
        ),
        (
            "  policyTypes: [Ingress, Egress]\n",
            "",
            "",
            [false, false, false, false],
        ),
        (
            "  policyTypes: [Ingress, Egress]\n",
            allow_web_in,
            empty_egress,
            [true, false, false, false],
        ),
        (
            "  policyTypes: []\n",
            allow_web_in,
            allow_prod_out,
            [true, true, true, true],
        ),
    ];
    let c = cluster();
    for (i, (types, ing, eg, want)) in rows.iter().enumerate() {
        let ps = policies(&with_types(types, ing, eg));
        let got = [
            c.eval(&ps, WEB, DB, 5432, Tcp).allowed,
            c.eval(&ps, PROD_API, DB, 5432, Tcp).allowed,
            c.eval(&ps, DB, PROD_API, 8080, Tcp).allowed,
            c.eval(&ps, DB, DEV_API, 8081, Tcp).allowed,
        ];
        assert_eq!(got, *want, "row {i}: {types:?} {ing:?} {eg:?}");
    }
}

// ---------------------------------------------------------------- peers

fn ingress_to_db(from: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: db}}}}
  ingress:
  - from: {from}
"
    )
}

#[test]
fn peer_truth_table() {
    let sources = [WEB, PENDING, PROD_API, DEV_API, OUTSIDE, Ip([10, 0, 9, 9])];
    // (from, allowed for [web, pending, prod/api, dev/api, outside, 10.0.9.9])
    let rows: &[(&str, [bool; 6])] = &[
        // Empty `from` or no `from`: every peer.
        ("[]", [true; 6]),
        ("null", [true; 6]),
        // podSelector alone: the policy's own namespace only.
        (
            "[{podSelector: {}}]",
            [true, true, false, false, false, false],
        ),
        ("[{podSelector: {matchLabels: {app: api}}}]", [false; 6]),
        (
            "[{podSelector: {matchLabels: {tier: frontend}}}]",
            [true, false, false, false, false, false],
        ),
        // namespaceSelector alone: every pod of the matching namespaces.
        (
            "[{namespaceSelector: {}}]",
            [true, true, true, true, false, false],
        ),
        (
            "[{namespaceSelector: {matchLabels: {env: prod}}}]",
            [false, false, true, false, false, false],
        ),
        (
            "[{namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}}]",
            [false, false, true, true, false, false],
        ),
        // The name label every namespace carries.
        (
            "[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}}]",
            [false, false, false, true, false, false],
        ),
        // Both in one peer: AND.
        (
            "[{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {app: api}}}]",
            [false, false, true, false, false, false],
        ),
        (
            "[{namespaceSelector: {matchLabels: {env: prod}}, podSelector: {matchLabels: {app: web}}}]",
            [false; 6],
        ),
        // Two peers: OR.
        (
            "[{namespaceSelector: {matchLabels: {env: prod}}}, {podSelector: {matchLabels: {app: web}}}]",
            [true, true, true, false, false, false],
        ),
        // ipBlock: addresses, pods' included; a pod without an IP never matches.
        (
            "[{ipBlock: {cidr: 0.0.0.0/0}}]",
            [true, false, true, true, true, true],
        ),
        (
            "[{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24, 10.0.9.9/32]}}]",
            [true, false, false, true, false, false],
        ),
        (
            "[{ipBlock: {cidr: 192.168.1.0/24}}]",
            [false, false, false, false, true, false],
        ),
        (
            "[{ipBlock: {cidr: 192.168.1.10/32}}]",
            [false, false, false, false, true, false],
        ),
        (
            "[{ipBlock: {cidr: 0.0.0.0/0, except: [192.168.0.0/16]}}]",
            [true, false, true, true, false, true],
        ),
        // IPv6 blocks are valid and match no IPv4 address.
        ("[{ipBlock: {cidr: '::/0'}}]", [false; 6]),
    ];
    let c = cluster();
    for (i, (from, want)) in rows.iter().enumerate() {
        let ps = policies(&ingress_to_db(from));
        let got = sources.map(|s| c.eval(&ps, s, DB, 5432, Tcp).allowed);
        assert_eq!(got, *want, "row {i}: from {from}");
    }
}

#[test]
fn egress_peers_and_external_destinations() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
  - to: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]
";
    table(
        yaml,
        &[
            (WEB, DB, 5432, Tcp, true),
            (WEB, PROD_API, 8080, Tcp, false),
            (WEB, Ip([192, 168, 2, 1]), 443, Tcp, true),
            (WEB, OUTSIDE, 443, Tcp, false), // in except
            // Without policyTypes the policy also governs ingress, with no rules: denied.
            (OUTSIDE, WEB, 80, Tcp, false),
        ],
    );
    assert_eq!(
        reason(yaml, WEB, Ip([192, 168, 2, 1]), 443, Tcp),
        "allowed by default/out egress rule 1"
    );
}

#[test]
fn ip_peer_that_is_a_pod_is_that_pod() {
    // 10.0.0.1 is default/web: it gets web's egress and is matched by pod selectors.
    let yaml = ingress_to_db("[{podSelector: {matchLabels: {app: web}}}]");
    table(
        &yaml,
        &[
            (Ip([10, 0, 0, 1]), DB, 5432, Tcp, true),
            (Ip([10, 0, 1, 1]), DB, 5432, Tcp, false),
            (WEB, Ip([10, 0, 0, 2]), 5432, Tcp, true),
        ],
    );
    let mut both = policies(&yaml);
    both.extend(policies(
        DENY_ALL
            .replace(
                "podSelector: {}",
                "podSelector: {}\n  policyTypes: [Egress]",
            )
            .as_str(),
    ));
    let c = cluster();
    // The source address is web's: web's egress (denied) applies.
    assert!(!c.eval(&both, Ip([10, 0, 0, 1]), DB, 5432, Tcp).allowed);
    // An outside address has no egress side.
    let v = c.eval(&both, OUTSIDE, Ip([10, 0, 0, 1]), 80, Tcp);
    assert!(v.allowed, "{}", v.reason);
    assert_eq!(v.reason.egress, None);
}

// ---------------------------------------------------------------- the node

const NODE: E = N([10, 0, 100, 1]);

#[test]
fn node_truth_table() {
    let egress = |to: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: out, namespace: default}}
spec:
  podSelector: {{}}
  policyTypes: [Egress]
  egress:
  - to: {to}
    ports: [{{port: 80}}, {{port: pg}}]
"
        )
    };
    let deny_both = DENY_ALL.replace(
        "podSelector: {}",
        "podSelector: {}\n  policyTypes: [Ingress, Egress]",
    );
    let only_web_in = ingress_to_db("[{podSelector: {matchLabels: {app: web}}}]");
    let node_excluded = ingress_to_db("[{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.100.0/24]}}]");
    // (policies, [node->db, node->web, web->node:80, web->node:5432, db->node:80, node->node,
    //  node->outside, outside->db])
    let rows: Vec<(String, [bool; 8])> = vec![
        (String::new(), [true; 8]),
        // Ingress from the node is always allowed, even under deny-all.
        (
            DENY_ALL.to_owned(),
            [true, true, true, true, true, true, true, false],
        ),
        (
            deny_both.clone(),
            [true, true, false, false, false, true, true, false],
        ),
        (
            only_web_in,
            [true, true, true, true, true, true, true, false],
        ),
        (
            node_excluded,
            [true, true, true, true, true, true, true, false],
        ),
        // Egress to the node: an address outside the cluster, matched by ipBlocks only, and
        // without named ports.
        (
            egress("[{ipBlock: {cidr: 10.0.100.0/24}}]"),
            [true, true, true, false, true, true, true, true],
        ),
        (
            egress("[{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.100.1/32]}}]"),
            [true, true, false, false, false, true, true, true],
        ),
        (
            egress("[{namespaceSelector: {}}]"),
            [true, true, false, false, false, true, true, true],
        ),
        (
            egress("[]"),
            [true, true, true, false, true, true, true, true],
        ),
    ];
    let c = cluster();
    for (i, (yaml, want)) in rows.iter().enumerate() {
        let ps = policies(yaml);
        let got = [
            c.eval(&ps, NODE, DB, 5432, Tcp).allowed,
            c.eval(&ps, NODE, WEB, 80, Tcp).allowed,
            c.eval(&ps, WEB, NODE, 80, Tcp).allowed,
            c.eval(&ps, WEB, NODE, 5432, Tcp).allowed,
            c.eval(&ps, DB, NODE, 80, Tcp).allowed,
            c.eval(&ps, NODE, N([10, 0, 100, 2]), 80, Tcp).allowed,
            c.eval(&ps, NODE, OUTSIDE, 80, Tcp).allowed,
            c.eval(&ps, OUTSIDE, DB, 5432, Tcp).allowed,
        ];
        assert_eq!(got, *want, "row {i}: {yaml}");
    }
}

#[test]
fn node_decisions_and_addresses() {
    let v = cluster().eval(&policies(DENY_ALL), NODE, DB, 5432, Tcp);
    assert_eq!(
        v.reason,
        crate::Explanation {
            egress: None,
            ingress: Some(crate::Decision::FromNode {
                pod: "default/db".into()
            }),
        }
    );
    assert_eq!(
        v.reason.to_string(),
        "traffic from the pod's node is always allowed"
    );
    // Not selected either: still the node's decision.
    assert_eq!(
        reason("", NODE, WEB, 80, Tcp),
        "traffic from the pod's node is always allowed"
    );
    assert_eq!(
        reason("", NODE, OUTSIDE, 80, Tcp),
        "no pod involved: no policy applies"
    );
    // A node address that is also a pod's (host networking) is the node's: it gets neither
    // the pod's egress nor its selectors.
    let yaml = format!(
        "{}---{}",
        ingress_to_db("[{podSelector: {matchLabels: {app: web}}}]"),
        DENY_ALL.replace(
            "podSelector: {}",
            "podSelector: {}\n  policyTypes: [Egress]"
        )
    );
    let c = cluster();
    let ps = policies(&yaml);
    assert!(c.eval(&ps, N([10, 0, 0, 1]), DB, 5432, Tcp).allowed);
    assert!(!c.eval(&ps, Ip([10, 0, 0, 1]), DB, 5432, Tcp).allowed);
    let v = c.eval(&ps, N([10, 0, 0, 1]), DB, 5432, Tcp);
    assert_eq!(v.reason.egress, None);
}

// ---------------------------------------------------------------- ports

fn ports(ports: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: allow, namespace: default}}
spec:
  podSelector: {{}}
  ingress:
  - ports: {ports}
"
    )
}

#[test]
fn port_truth_table() {
    let conns = [
        (DB, 5432, Tcp),
        (DB, 5433, Tcp),
        (DB, 5432, Udp),
        (DB, 53, Udp),
        (DB, 53, Tcp),
        (WEB, 80, Tcp),
        (WEB, 80, Sctp),
    ];
    let rows: &[(&str, [bool; 7])] = &[
        ("[]", [true; 7]),
        ("null", [true; 7]),
        // Protocol defaults to TCP.
        (
            "[{port: 5432}]",
            [true, false, false, false, false, false, false],
        ),
        (
            "[{port: 5432, protocol: UDP}]",
            [false, false, true, false, false, false, false],
        ),
        // No port: every port of the protocol.
        (
            "[{protocol: UDP}]",
            [false, false, true, true, false, false, false],
        ),
        ("[{}]", [true, true, false, false, true, true, false]),
        (
            "[{protocol: SCTP}]",
            [false, false, false, false, false, false, true],
        ),
        // endPort: inclusive at both ends.
        (
            "[{port: 5432, endPort: 5433}]",
            [true, true, false, false, false, false, false],
        ),
        (
            "[{port: 5433, endPort: 6000}]",
            [false, true, false, false, false, false, false],
        ),
        (
            "[{port: 53, endPort: 53}]",
            [false, false, false, false, true, false, false],
        ),
        (
            "[{port: 1, endPort: 65535}]",
            [true, true, false, false, true, true, false],
        ),
        // Several ports: OR.
        (
            "[{port: 80}, {port: 53, protocol: UDP}]",
            [false, false, false, true, false, true, false],
        ),
        // Named ports resolve against the destination pod, with their protocol.
        (
            "[{port: pg}]",
            [true, false, false, false, false, false, false],
        ),
        (
            "[{port: dns, protocol: UDP}]",
            [false, false, false, true, false, false, false],
        ),
        ("[{port: dns}]", [false; 7]), // dns is UDP, the rule TCP
        (
            "[{port: http}]",
            [false, false, false, false, false, true, false],
        ),
        ("[{port: nope}]", [false; 7]),
    ];
    let c = cluster();
    for (i, (p, want)) in rows.iter().enumerate() {
        let ps = policies(&ports(p));
        let got = conns.map(|(to, port, proto)| c.eval(&ps, PROD_API, to, port, proto).allowed);
        assert_eq!(got, *want, "row {i}: ports {p}");
    }
}

#[test]
fn named_ports_in_egress_use_the_destination_pod() {
    let yaml = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: prod}
spec:
  podSelector: {}
  egress:
  - ports: [{port: http}]
";
    table(
        yaml,
        &[
            // prod/api -> web: web's `http` is 80.
            (PROD_API, WEB, 80, Tcp, true),
            (PROD_API, WEB, 8080, Tcp, false), // the source's own `http` does not count
            (PROD_API, DEV_API, 8081, Tcp, true),
            (PROD_API, DB, 80, Tcp, false), // db has no `http`
            // An address outside the cluster has no named ports.
            (PROD_API, OUTSIDE, 80, Tcp, false),
            (PROD_API, OUTSIDE, 8080, Tcp, false),
        ],
    );
}

// ---------------------------------------------------------------- combining

const ALLOW_WEB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-prod, namespace: default}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: prod}}}]
    ports: [{port: 53, protocol: UDP}]
  - from: [{namespaceSelector: {matchLabels: {env: prod}}}]
    ports: [{port: pg}]
";

#[test]
fn several_policies_are_a_union() {
    let mut yaml = DENY_ALL.to_owned();
    yaml.push_str("---");
    yaml.push_str(ALLOW_WEB);
    table(
        &yaml,
        &[
            (WEB, DB, 5432, Tcp, true),
            (WEB, DB, 53, Udp, false),
            (PROD_API, DB, 53, Udp, true),
            (PROD_API, DB, 5432, Tcp, true),
            (DEV_API, DB, 5432, Tcp, false),
            (PROD_API, WEB, 80, Tcp, false), // deny-all still covers web
        ],
    );
    assert_eq!(
        reason(&yaml, WEB, DB, 5432, Tcp),
        "no policy selects default/web for egress; allowed by default/allow-web ingress rule 0"
    );
    assert_eq!(
        reason(&yaml, PROD_API, DB, 5432, Tcp),
        "no policy selects prod/api for egress; allowed by default/allow-prod ingress rule 1"
    );
    assert_eq!(
        reason(&yaml, DEV_API, DB, 5432, Tcp),
        "denied: default/db is selected by default/deny-all, default/allow-web, default/allow-prod (ingress) and no rule allows it"
    );
}

#[test]
fn both_egress_and_ingress_must_allow() {
    let yaml = format!(
        "{ALLOW_WEB}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-out, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: db}}}}}}]
    ports: [{{port: 5432}}, {{port: 5433}}]
"
    );
    table(
        &yaml,
        &[
            (WEB, DB, 5432, Tcp, true),        // egress rule 0 and ingress allow-web
            (WEB, DB, 5433, Tcp, false),       // egress allows, ingress does not
            (WEB, PROD_API, 8080, Tcp, false), // ingress open, egress denies
            (PROD_API, DB, 5432, Tcp, true),
        ],
    );
    assert_eq!(
        reason(&yaml, WEB, DB, 5433, Tcp),
        "denied: default/db is selected by default/allow-web, default/allow-prod (ingress) and no rule allows it"
    );
    assert_eq!(
        reason(&yaml, WEB, DB, 5432, Tcp),
        "allowed by default/web-out egress rule 0; allowed by default/allow-web ingress rule 0"
    );
    let v = cluster().eval(&policies(&yaml), WEB, PROD_API, 8080, Tcp);
    assert_eq!(
        v.reason.egress,
        Some(crate::Decision::Denied {
            pod: "default/web".into(),
            direction: Direction::Egress,
            policies: vec!["default/web-out".into()],
        })
    );
}

#[test]
fn policies_only_select_pods_of_their_namespace() {
    let yaml = DENY_ALL.replace("namespace: default", "namespace: prod");
    table(
        &yaml,
        &[
            (WEB, DB, 5432, Tcp, true),
            (WEB, PROD_API, 8080, Tcp, false),
            (WEB, DEV_API, 8081, Tcp, true),
        ],
    );
    // A policy without a namespace is in `default`.
    let yaml = DENY_ALL.replace(", namespace: default", "");
    table(
        &yaml,
        &[
            (PROD_API, DB, 5432, Tcp, false),
            (WEB, PROD_API, 8080, Tcp, true),
        ],
    );
}

// ---------------------------------------------------------------- parsing and validation

fn spec(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: bad, namespace: ns}}
spec:
{spec}"
    )
}

#[test]
fn validation_errors_name_policy_and_field() {
    let rows: &[(&str, &str)] = &[
        (
            "  podSelector: {matchExpressions: [{key: a, operator: Equals, values: [x]}]}\n",
            "t.yaml: document 1: NetworkPolicy ns/bad: spec.podSelector.matchExpressions[0].operator: unsupported operator \"Equals\": must be In, NotIn, Exists or DoesNotExist",
        ),
        (
            "  podSelector: {matchExpressions: [{key: a, operator: In, values: []}]}\n",
            "spec.podSelector.matchExpressions[0].values: must be non-empty for operator In",
        ),
        (
            "  podSelector: {matchExpressions: [{key: a, operator: NotIn}]}\n",
            "spec.podSelector.matchExpressions[0].values: must be non-empty for operator NotIn",
        ),
        (
            "  podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}\n",
            "spec.podSelector.matchExpressions[0].values: must be empty for operator Exists",
        ),
        (
            "  podSelector: {matchExpressions: [{key: a, operator: DoesNotExist, values: [x]}]}\n",
            "spec.podSelector.matchExpressions[0].values: must be empty for operator DoesNotExist",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: in, values: [x]}]}}]}]\n",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator: unsupported operator \"in\"",
        ),
        (
            "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
            "spec.egress[0].to[0].ipBlock.cidr: \"10.0.0.0/33\" is not a CIDR",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.1}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.1\" is not a CIDR",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/x]}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.except[0]: \"10.0.0.0/x\" is not a CIDR",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 11.0.0.0/16]}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.except[1]: \"11.0.0.0/16\" is not a strict subset of cidr \"10.0.0.0/8\"",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]\n",
            "except[0]: \"10.0.0.0/8\" is not a strict subset",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/7]}}]}]\n",
            "except[0]: \"10.0.0.0/7\" is not a strict subset",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
            "spec.ingress[0].from[0]: ipBlock may not be combined",
        ),
        (
            "  podSelector: {}\n  ingress: [{from: [{}]}]\n",
            "spec.ingress[0].from[0]: must specify one of podSelector, namespaceSelector or ipBlock",
        ),
        (
            "  podSelector: {}\n  ingress: [{ports: [{protocol: ICMP}]}]\n",
            "spec.ingress[0].ports[0].protocol: unsupported protocol \"ICMP\": must be TCP, UDP or SCTP",
        ),
        (
            "  podSelector: {}\n  ingress: [{ports: [{protocol: tcp}]}]\n",
            "spec.ingress[0].ports[0].protocol: unsupported protocol \"tcp\"",
        ),
        (
            "  podSelector: {}\n  ingress: [{}, {ports: [{port: 80}, {port: 70000}]}]\n",
            "spec.ingress[1].ports[1].port: 70000 is out of range 1-65535",
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{port: 0}]}]\n",
            "spec.egress[0].ports[0].port: 0 is out of range 1-65535",
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{port: 80, endPort: 65536}]}]\n",
            "spec.egress[0].ports[0].endPort: 65536 is out of range 1-65535",
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{port: 80, endPort: 79}]}]\n",
            "spec.egress[0].ports[0].endPort: 79 is less than port 80",
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{endPort: 80}]}]\n",
            "spec.egress[0].ports[0].endPort: may only be given with a numeric port",
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 80}]}]\n",
            "spec.egress[0].ports[0].endPort: may only be given with a numeric port",
        ),
        (
            "  podSelector: {}\n  egress: [{ports: [{port: Not_A_Name}]}]\n",
            "spec.egress[0].ports[0].port: \"Not_A_Name\" is not a valid port name",
        ),
        (
            "  podSelector: {}\n  policyTypes: [Ingress, Both]\n",
            "spec.policyTypes[1]: unsupported value \"Both\": must be Ingress or Egress",
        ),
        (
            "  podSelector: {}\n  policyTypes: [Egress, Egress]\n",
            "spec.policyTypes[1]: duplicate value \"Egress\"",
        ),
        // Rules in a direction policyTypes leaves out are still validated.
        (
            "  podSelector: {}\n  policyTypes: [Ingress]\n  egress: [{ports: [{port: 0}]}]\n",
            "spec.egress[0].ports[0].port: 0 is out of range",
        ),
        // Type errors from decoding name the field too.
        (
            "  podSelector: {}\n  ingress: [{ports: [{port: [1]}]}]\n",
            "NetworkPolicy ns/bad: spec.ingress[0].ports[0].port: ",
        ),
    ];
    for (i, (s, want)) in rows.iter().enumerate() {
        let err = match parse(spec(s).as_bytes(), "t.yaml") {
            Ok(p) => panic!("row {i}: accepted {p:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "row {i}: {err:?} lacks {want:?}");
        assert!(err.contains("NetworkPolicy ns/bad"), "row {i}: {err:?}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let yaml = format!(
        "{}---\n{}",
        spec("  podSelector: {}\n  ingress: [{ports: [{port: 0}, {protocol: X}]}]\n"),
        spec("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: nope}}]}]\n")
            .replace("name: bad", "name: worse"),
    );
    let err = parse(yaml.as_bytes(), "t.yaml").err();
    let problems: Vec<String> = err
        .iter()
        .flat_map(|e| e.problems())
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        [
            "t.yaml: document 1: NetworkPolicy ns/bad: spec.ingress[0].ports[0].port: 0 is out of range 1-65535",
            "t.yaml: document 1: NetworkPolicy ns/bad: spec.ingress[0].ports[1].protocol: unsupported protocol \"X\": must be TCP, UDP or SCTP",
            "t.yaml: document 2: NetworkPolicy ns/worse: spec.egress[0].to[0].ipBlock.cidr: \"nope\" is not a CIDR",
        ]
    );
}

#[test]
fn parse_formats() {
    let one = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"a","namespace":"x"},"spec":{"podSelector":{}}}"#;
    let rows: Vec<(String, Vec<&str>)> = vec![
        // Multi-document YAML with empty documents.
        (
            format!("---\n{DENY_ALL}---\n---{ALLOW_WEB}"),
            vec![
                "default/deny-all",
                "default/allow-web",
                "default/allow-prod",
            ],
        ),
        // Concatenated JSON.
        (
            format!("{one}\n{}", one.replace("\"a\"", "\"b\"")),
            vec!["x/a", "x/b"],
        ),
        // Lists.
        (
            format!(r#"{{"apiVersion":"v1","kind":"List","items":[{one}]}}"#),
            vec!["x/a"],
        ),
        (
            format!(
                r#"{{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicyList","items":[{one},{one}]}}"#
            ),
            vec!["x/a", "x/a"],
        ),
        ("# nothing\n".to_owned(), vec![]),
    ];
    for (i, (input, want)) in rows.iter().enumerate() {
        let got: Vec<String> = policies(input).iter().map(Policy::key).collect();
        assert_eq!(got, *want, "row {i}");
    }
}

#[test]
fn parse_rejects_other_objects_and_syntax() {
    let rows: &[(&str, &str)] = &[
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            "t.yaml: document 1: unsupported object apiVersion \"v1\" kind \"Service\"",
        ),
        (
            "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\n",
            "unsupported object",
        ),
        (
            "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: List, items: []}]\n",
            "t.yaml: document 1, items[0]: unsupported object",
        ),
        (
            "apiVersion: v1\nkind: List\n",
            "a List needs an items array",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n",
            "metadata.name: is required",
        ),
        ("a: [\n", "t.yaml: document 1: invalid YAML"),
        ("{\"a\": ", "t.yaml: invalid JSON"),
    ];
    for (i, (input, want)) in rows.iter().enumerate() {
        match parse(input.as_bytes(), "t.yaml") {
            Ok(p) => panic!("row {i}: accepted {p:?}"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "row {i}: {e:?} lacks {want:?}"
            ),
        }
    }
}

#[test]
fn compiled_form_applies_defaults() {
    let p = policies(&ports(
        "[{port: 80, endPort: 90}, {protocol: UDP}, {port: http}]",
    ));
    let rule = &p[0].ingress.as_ref().expect("ingress")[0];
    assert_eq!(rule.peers, None);
    assert_eq!(
        rule.ports,
        Some(vec![
            crate::PortSelector {
                protocol: Tcp,
                port: crate::PortMatch::Range {
                    first: 80,
                    last: 90
                }
            },
            crate::PortSelector {
                protocol: Udp,
                port: crate::PortMatch::Any
            },
            crate::PortSelector {
                protocol: Tcp,
                port: crate::PortMatch::Named("http".into())
            },
        ])
    );
    assert_eq!(p[0].egress, None);
}

// ---------------------------------------------------------------- namespaces in manifests

#[test]
fn parse_objects_reads_namespaces_and_policies() {
    let yaml = format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: prod, labels: {{env: prod, team: a}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: dev}}
---{DENY_ALL}---
apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: x1}}}}
- {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: a, namespace: x1}}, spec: {{podSelector: {{}}}}}}
---
apiVersion: v1
kind: NamespaceList
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: x2, labels: {{k: v}}}}}}
"
    );
    let objects = match crate::parse_objects(yaml.as_bytes(), "t.yaml") {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    let keys: Vec<String> = objects.policies.iter().map(Policy::key).collect();
    assert_eq!(keys, ["default/deny-all", "x1/a"]);
    assert_eq!(
        objects.namespaces,
        [
            Namespace {
                name: "prod".into(),
                labels: labels(&[("env", "prod"), ("team", "a")]),
            },
            Namespace {
                name: "dev".into(),
                labels: BTreeMap::new(),
            },
            Namespace {
                name: "x1".into(),
                labels: BTreeMap::new(),
            },
            Namespace {
                name: "x2".into(),
                labels: labels(&[("k", "v")]),
            },
        ]
    );
    // JSON too.
    let json = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"j"}}"#;
    let objects = crate::parse_objects(json.as_bytes(), "t.json").ok();
    assert_eq!(
        objects.map(|o| o.namespaces),
        Some(vec![Namespace {
            name: "j".into(),
            labels: BTreeMap::new(),
        }])
    );
}

#[test]
fn parse_objects_rejects_bad_namespaces() {
    let rows: &[(&str, &str)] = &[
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {labels: {a: b}}\n",
            "t.yaml: document 1: Namespace: metadata.name: is required",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: Prod}\n",
            "t.yaml: document 1: Namespace Prod: metadata.name: \"Prod\" is not a valid DNS label",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: -a}\n",
            "metadata.name: \"-a\" is not a valid DNS label",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
            "metadata.name: \"a.b\" is not a valid DNS label",
        ),
        (
            "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Namespace, metadata: {name: ''}}]\n",
            "t.yaml: document 1, items[0]: Namespace: metadata.name: is required",
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {k: [1]}}\n",
            "t.yaml: document 1: Namespace a: metadata.labels.k: ",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
            "unsupported object apiVersion \"v1\" kind \"Service\": expected networking.k8s.io/v1 NetworkPolicy or v1 Namespace",
        ),
    ];
    for (i, (input, want)) in rows.iter().enumerate() {
        match crate::parse_objects(input.as_bytes(), "t.yaml") {
            Ok(o) => panic!("row {i}: accepted {o:?}"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "row {i}: {e:?} lacks {want:?}"
            ),
        }
    }
    // A 63-character name is a valid label, 64 is not.
    let name = |n: usize| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
            "a".repeat(n)
        )
    };
    assert!(crate::parse_objects(name(63).as_bytes(), "t.yaml").is_ok());
    assert!(crate::parse_objects(name(64).as_bytes(), "t.yaml").is_err());
}

#[test]
fn parse_still_rejects_namespaces() {
    let yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n";
    let err = parse(yaml.as_bytes(), "t.yaml")
        .err()
        .map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some(
            "t.yaml: document 1: unsupported object apiVersion \"v1\" kind \"Namespace\": expected networking.k8s.io/v1 NetworkPolicy"
        )
    );
}
