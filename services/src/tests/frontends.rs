//! Frontend compilation: kinds, scopes, port matching, conditions, traffic policies.

use serde_json::{Value, json};

use super::*;
use crate::{BackendState, FrontendKind, Scope, ServiceRef};

fn web() -> ServiceRef {
    ServiceRef::new("default", "web")
}

fn frontends_of(docs: &[Value], ctx: &NodeContext) -> Vec<String> {
    catalog(docs)
        .frontends_of(&web(), ctx)
        .iter()
        .map(render)
        .collect()
}

#[test]
fn cluster_ip_basic() {
    let docs = [
        cluster_svc("web", "10.96.0.1"),
        http_slice(
            "web-1",
            "web",
            json!([ready("10.0.0.2", "n1"), ready("10.0.0.1", "n2")]),
        ),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        ["web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080 10.0.0.2:8080]"]
    );
    let f = &catalog(&docs).frontends(&ctx())[0];
    assert_eq!(f.kind, FrontendKind::ClusterIp);
    assert_eq!(f.scope, Scope::Internal);
    assert_eq!(f.addr, Some("10.96.0.1".parse().unwrap()));
    assert_eq!(f.port, 80);
    assert_eq!(f.affinity_timeout, None);
    assert_eq!(f.backends[0].state, BackendState::Ready);
    assert_eq!(f.backends[0].node.as_deref(), Some("n2"));
}

#[test]
fn no_slices_means_no_backends() {
    assert_eq!(
        frontends_of(&[cluster_svc("web", "10.96.0.1")], &ctx()),
        ["web/http ClusterIP internal 10.96.0.1:80/TCP -> []"]
    );
}

#[test]
fn several_slices_merge_and_deduplicate() {
    let docs = [
        cluster_svc("web", "10.96.0.1"),
        http_slice(
            "web-b",
            "web",
            json!([ready("10.0.0.3", "n"), ready("10.0.0.1", "n")]),
        ),
        http_slice(
            "web-a",
            "web",
            json!([
                ep("10.0.0.1", "n", Some(false), None, None),
                ready("10.0.0.2", "n")
            ]),
        ),
        // Another service's slice does not leak in.
        http_slice("other-1", "other", json!([ready("10.0.0.9", "n")])),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        [
            "web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080 10.0.0.2:8080 10.0.0.3:8080]"
        ]
    );
}

#[test]
fn duplicate_address_prefers_the_ready_copy() {
    // The not-ready copy comes first (slice "a" sorts before "b") and must lose.
    for (first, second) in [
        (
            ep("10.0.0.1", "n", Some(false), Some(false), Some(true)),
            ready("10.0.0.1", "n"),
        ),
        (
            ready("10.0.0.1", "n"),
            ep("10.0.0.1", "n", Some(false), Some(false), Some(true)),
        ),
    ] {
        let docs = [
            cluster_svc("web", "10.96.0.1"),
            http_slice("a", "web", json!([first])),
            http_slice("b", "web", json!([second])),
        ];
        assert_eq!(
            frontends_of(&docs, &ctx()),
            ["web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]"]
        );
    }
}

#[test]
fn same_address_on_different_ports_is_two_backends() {
    // During a targetPort change one slice may say 8080 and another 8081.
    let docs = [
        cluster_svc("web", "10.96.0.1"),
        http_slice("a", "web", json!([ready("10.0.0.1", "n")])),
        slice(
            "b",
            "web",
            json!([{"name": "http", "port": 8081}]),
            json!([ready("10.0.0.1", "n")]),
        ),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        ["web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080 10.0.0.1:8081]"]
    );
}

#[test]
fn backend_port_comes_from_the_slice_port_of_the_same_name_and_protocol() {
    let service = svc(
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9000, "targetPort": 9100},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "missing", "port": 81},
        ]}),
    );
    let endpoints = json!([ready("10.0.0.1", "n")]);
    let docs = [
        service,
        slice(
            "web-1",
            "web",
            json!([
                {"name": "metrics", "port": 9100},
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "TCP"},
                {"name": "missing"},
            ]),
            endpoints.clone(),
        ),
        slice(
            "web-2",
            "web",
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]),
            endpoints,
        ),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        [
            "web/dns ClusterIP internal 10.96.0.1:53/UDP -> [10.0.0.1:5353]",
            "web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]",
            "web/metrics ClusterIP internal 10.96.0.1:9000/TCP -> [10.0.0.1:9100]",
            "web/missing ClusterIP internal 10.96.0.1:81/TCP -> []",
        ]
    );
}

#[test]
fn unnamed_service_port_matches_unnamed_slice_port() {
    let docs = [
        svc(
            "web",
            json!({"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}),
        ),
        slice(
            "web-1",
            "web",
            json!([{"port": 8080}, {"name": "http", "port": 9999}]),
            json!([ready("10.0.0.1", "n")]),
        ),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        ["web/ ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]"]
    );
    // A named service port does not match an unnamed slice port.
    let docs = [
        cluster_svc("web", "10.96.0.1"),
        slice(
            "web-1",
            "web",
            json!([{"port": 8080}]),
            json!([ready("10.0.0.1", "n")]),
        ),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        ["web/http ClusterIP internal 10.96.0.1:80/TCP -> []"]
    );
}

/// (ready, serving, terminating) of each endpoint → the backends, `~` = terminating fallback.
#[test]
fn conditions_and_terminating_fallback() {
    type Cond = (Option<bool>, Option<bool>, Option<bool>);
    let t = Some(true);
    let f = Some(false);
    let cases: &[(&str, &[Cond], &str)] = &[
        ("all nil = ready", &[(None, None, None)], "[10.0.0.1:8080]"),
        ("ready", &[(t, t, f)], "[10.0.0.1:8080]"),
        ("not ready", &[(f, None, None)], "[]"),
        (
            "not ready, serving nil = not serving",
            &[(f, None, t)],
            "[]",
        ),
        (
            "ready wins over fallback",
            &[(t, t, f), (f, t, t)],
            "[10.0.0.1:8080]",
        ),
        (
            "fallback to serving terminating",
            &[(f, f, f), (f, t, t)],
            "[10.0.0.2:8080~]",
        ),
        (
            "serving but not terminating is no fallback",
            &[(f, t, f)],
            "[]",
        ),
        (
            "terminating but not serving is no fallback",
            &[(f, f, t)],
            "[]",
        ),
        (
            "all fallback candidates",
            &[(f, t, t), (f, t, t), (f, f, t)],
            "[10.0.0.1:8080~ 10.0.0.2:8080~]",
        ),
        (
            "ready and terminating counts as ready",
            &[(t, t, t), (f, t, t)],
            "[10.0.0.1:8080]",
        ),
        (
            "serving nil follows ready=true",
            &[(t, None, t)],
            "[10.0.0.1:8080]",
        ),
        ("no endpoints", &[], "[]"),
    ];
    for (what, conds, want) in cases {
        let eps: Vec<Value> = conds
            .iter()
            .enumerate()
            .map(|(i, (r, s, t))| ep(&format!("10.0.0.{}", i + 1), "n", *r, *s, *t))
            .collect();
        let docs = [
            cluster_svc("web", "10.96.0.1"),
            http_slice("web-1", "web", json!(eps)),
        ];
        assert_eq!(
            frontends_of(&docs, &ctx()),
            [format!(
                "web/http ClusterIP internal 10.96.0.1:80/TCP -> {want}"
            )],
            "{what}"
        );
    }
}

#[test]
fn frontend_kinds_and_scopes() {
    let mut s = svc(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"],
               "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}});
    let docs = [
        s,
        http_slice("web-1", "web", json!([ready("10.0.0.1", "n")])),
    ];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        [
            "web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]",
            "web/http NodePort internal *:30080/TCP -> [10.0.0.1:8080]",
            "web/http NodePort external *:30080/TCP -> [10.0.0.1:8080]",
            "web/http ExternalIP internal 192.0.2.1:80/TCP -> [10.0.0.1:8080]",
            "web/http ExternalIP external 192.0.2.1:80/TCP -> [10.0.0.1:8080]",
            "web/http LoadBalancer internal 203.0.113.1:80/TCP -> [10.0.0.1:8080]",
            "web/http LoadBalancer external 203.0.113.1:80/TCP -> [10.0.0.1:8080]",
        ]
    );
}

#[test]
fn frontends_per_service_type() {
    let eps = json!([ready("10.0.0.1", "n")]);
    let cases: &[(Value, &[&str])] = &[
        (
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}], "externalIPs": ["192.0.2.1"]}),
            &[
                "web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]",
                "web/http ExternalIP internal 192.0.2.1:80/TCP -> [10.0.0.1:8080]",
                "web/http ExternalIP external 192.0.2.1:80/TCP -> [10.0.0.1:8080]",
            ],
        ),
        (
            json!({"type": "NodePort", "clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80, "nodePort": 31000}]}),
            &[
                "web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]",
                "web/http NodePort internal *:31000/TCP -> [10.0.0.1:8080]",
                "web/http NodePort external *:31000/TCP -> [10.0.0.1:8080]",
            ],
        ),
        (
            // No node ports: only the cluster IP (no ingress in status yet).
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "clusterIP": "10.96.0.1",
                   "ports": [{"name": "http", "port": 80}]}),
            &["web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]"],
        ),
        (
            // allocateLoadBalancerNodePorts: false with a node port given: it is served.
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "clusterIP": "10.96.0.1",
                   "ports": [{"name": "http", "port": 80, "nodePort": 31000}]}),
            &[
                "web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]",
                "web/http NodePort internal *:31000/TCP -> [10.0.0.1:8080]",
                "web/http NodePort external *:31000/TCP -> [10.0.0.1:8080]",
            ],
        ),
        (
            json!({"clusterIPs": ["fd00::1", "10.96.0.1"], "ports": [{"name": "http", "port": 80}], "externalIPs": ["2001:db8::1"]}),
            &["web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]"],
        ),
    ];
    for (spec, want) in cases {
        let docs = [
            svc("web", spec.clone()),
            http_slice("web-1", "web", eps.clone()),
        ];
        assert_eq!(frontends_of(&docs, &ctx()), *want, "{spec}");
    }
}

#[test]
fn multiple_ports_and_protocols() {
    let docs = [
        svc(
            "dns",
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30053},
            ]}),
        ),
        slice(
            "dns-1",
            "dns",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
            json!([ready("10.0.0.5", "n")]),
        ),
    ];
    assert_eq!(
        rendered(&catalog(&docs), &ctx()),
        [
            "dns/dns ClusterIP internal 10.96.0.10:53/UDP -> [10.0.0.5:53]",
            "dns/dns NodePort internal *:30053/UDP -> [10.0.0.5:53]",
            "dns/dns NodePort external *:30053/UDP -> [10.0.0.5:53]",
            "dns/dns-tcp ClusterIP internal 10.96.0.10:53/TCP -> [10.0.0.5:53]",
            "dns/dns-tcp NodePort internal *:30053/TCP -> [10.0.0.5:53]",
            "dns/dns-tcp NodePort external *:30053/TCP -> [10.0.0.5:53]",
        ]
    );
}

/// Endpoints: .1 ready local, .2 ready remote, .3 draining local, .4 draining remote.
fn policy_service(etp: &str, itp: &str, endpoints: Value) -> Vec<String> {
    let docs = [
        svc(
            "web",
            json!({"type": "NodePort", "clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"],
                   "externalTrafficPolicy": etp, "internalTrafficPolicy": itp,
                   "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        ),
        http_slice("web-1", "web", endpoints),
    ];
    frontends_of(&docs, &ctx())
}

#[test]
fn traffic_policies() {
    let all = || {
        json!([
            ready("10.0.0.1", NODE),
            ready("10.0.0.2", "node-b"),
            draining("10.0.0.3", NODE),
            draining("10.0.0.4", "node-b"),
        ])
    };
    // (eTP, iTP, endpoints, expected [ClusterIP, NodePort int, NodePort ext, ExtIP int, ExtIP ext])
    let cases: &[(&str, &str, Value, [&str; 5])] = &[
        (
            "Cluster",
            "Cluster",
            all(),
            ["[10.0.0.1:8080 10.0.0.2:8080]"; 5],
        ),
        (
            "Cluster",
            "Local",
            all(),
            [
                "[10.0.0.1:8080]",
                "[10.0.0.1:8080 10.0.0.2:8080]",
                "[10.0.0.1:8080 10.0.0.2:8080]",
                "[10.0.0.1:8080 10.0.0.2:8080]",
                "[10.0.0.1:8080 10.0.0.2:8080]",
            ],
        ),
        (
            "Local",
            "Cluster",
            all(),
            [
                "[10.0.0.1:8080 10.0.0.2:8080]",
                "[10.0.0.1:8080 10.0.0.2:8080]",
                "[10.0.0.1:8080]",
                "[10.0.0.1:8080 10.0.0.2:8080]",
                "[10.0.0.1:8080]",
            ],
        ),
        (
            // Local with only remote ready endpoints and a local draining one: the local
            // terminating fallback (per policy, as kube-proxy does).
            "Local",
            "Local",
            json!([ready("10.0.0.2", "node-b"), draining("10.0.0.3", NODE)]),
            [
                "[10.0.0.3:8080~]",
                "[10.0.0.2:8080]",
                "[10.0.0.3:8080~]",
                "[10.0.0.2:8080]",
                "[10.0.0.3:8080~]",
            ],
        ),
        (
            // Nothing local at all: Local frontends have no backends (traffic is rejected).
            "Local",
            "Local",
            json!([ready("10.0.0.2", "node-b"), draining("10.0.0.4", "node-b")]),
            ["[]", "[10.0.0.2:8080]", "[]", "[10.0.0.2:8080]", "[]"],
        ),
        (
            // Nothing ready anywhere: everyone falls back to the draining endpoints.
            "Local",
            "Cluster",
            json!([draining("10.0.0.3", NODE), draining("10.0.0.4", "node-b")]),
            [
                "[10.0.0.3:8080~ 10.0.0.4:8080~]",
                "[10.0.0.3:8080~ 10.0.0.4:8080~]",
                "[10.0.0.3:8080~]",
                "[10.0.0.3:8080~ 10.0.0.4:8080~]",
                "[10.0.0.3:8080~]",
            ],
        ),
    ];
    for (etp, itp, eps, want) in cases {
        let got = policy_service(etp, itp, eps.clone());
        let want: Vec<String> = [
            format!(
                "web/http ClusterIP internal 10.96.0.1:80/TCP -> {}",
                want[0]
            ),
            format!("web/http NodePort internal *:30080/TCP -> {}", want[1]),
            format!("web/http NodePort external *:30080/TCP -> {}", want[2]),
            format!(
                "web/http ExternalIP internal 192.0.2.1:80/TCP -> {}",
                want[3]
            ),
            format!(
                "web/http ExternalIP external 192.0.2.1:80/TCP -> {}",
                want[4]
            ),
        ]
        .into();
        assert_eq!(got, want, "eTP={etp} iTP={itp}");
    }
}

#[test]
fn locality_depends_on_the_node_context() {
    let docs = [
        svc(
            "web",
            json!({"clusterIP": "10.96.0.1", "internalTrafficPolicy": "Local", "ports": [{"name": "http", "port": 80}]}),
        ),
        http_slice(
            "web-1",
            "web",
            json!([ready("10.0.0.1", "node-a"), ready("10.0.0.2", "node-b"), {"addresses": ["10.0.0.3"]}]),
        ),
    ];
    let c = catalog(&docs);
    let backends = |node: &str| -> Vec<String> {
        c.frontends(&NodeContext::new(node))[0]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    };
    assert_eq!(backends("node-a"), ["10.0.0.1"]);
    assert_eq!(backends("node-b"), ["10.0.0.2"]);
    assert_eq!(backends("node-c"), Vec::<String>::new());
    assert_eq!(
        backends(""),
        Vec::<String>::new(),
        "no node name: nothing is local"
    );
}

#[test]
fn session_affinity_applies_to_every_frontend() {
    let docs = [svc(
        "web",
        json!({"type": "NodePort", "clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
               "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    )];
    let c = catalog(&docs);
    let fs = c.frontends(&ctx());
    assert_eq!(fs.len(), 3);
    assert!(
        fs.iter().all(|f| f.affinity_timeout == Some(600)),
        "{fs:#?}"
    );
}

#[test]
fn same_address_as_external_and_load_balancer_ip_is_one_frontend() {
    let mut s = svc(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"],
               "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}]}});
    let got = frontends_of(&[s], &ctx());
    assert_eq!(
        got,
        [
            "web/http ClusterIP internal 10.96.0.1:80/TCP -> []",
            "web/http NodePort internal *:30080/TCP -> []",
            "web/http NodePort external *:30080/TCP -> []",
            "web/http ExternalIP internal 192.0.2.1:80/TCP -> []",
            "web/http ExternalIP external 192.0.2.1:80/TCP -> []",
            "web/http LoadBalancer internal 192.0.2.2:80/TCP -> []",
            "web/http LoadBalancer external 192.0.2.2:80/TCP -> []",
        ]
    );
}

#[test]
fn output_is_sorted_and_deterministic() {
    let docs = [
        cluster_svc("zeta", "10.96.0.3"),
        http_slice(
            "zeta-1",
            "zeta",
            json!([
                ready("10.0.0.9", "n"),
                ready("10.0.0.10", "n"),
                ready("10.0.0.1", "n")
            ]),
        ),
        cluster_svc("alpha", "10.96.0.2"),
        {
            let mut s = cluster_svc("alpha", "10.96.0.1");
            s["metadata"]["namespace"] = json!("a-ns");
            s
        },
    ];
    let c = catalog(&docs);
    let fs = c.frontends(&ctx());
    let names: Vec<String> = fs.iter().map(|f| f.service.to_string()).collect();
    assert_eq!(names, ["a-ns/alpha", "default/alpha", "default/zeta"]);
    let zeta: Vec<String> = fs[2].backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(
        zeta,
        ["10.0.0.1", "10.0.0.9", "10.0.0.10"],
        "numeric, not string order"
    );
    assert_eq!(c.frontends(&ctx()), fs);
    // Input order does not matter.
    let mut reversed = docs.to_vec();
    reversed.reverse();
    assert_eq!(catalog(&reversed).frontends(&ctx()), fs);
}

#[test]
fn slices_in_other_namespaces_do_not_match() {
    let mut other_ns = http_slice("web-1", "web", json!([ready("10.0.0.1", "n")]));
    other_ns["metadata"]["namespace"] = json!("prod");
    let docs = [cluster_svc("web", "10.96.0.1"), other_ns];
    assert_eq!(
        frontends_of(&docs, &ctx()),
        ["web/http ClusterIP internal 10.96.0.1:80/TCP -> []"]
    );
}
