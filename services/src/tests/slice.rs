//! EndpointSlice validation and skipping.

use serde_json::{Value, json};

use super::*;
use crate::{Action, ServiceRef};

#[track_caller]
fn rejects(cases: &[(Value, &str)]) {
    for (doc, want) in cases {
        assert_contains(&parse_error(std::slice::from_ref(doc)), &[want]);
    }
}

#[test]
fn service_name_label_is_required() {
    let mut s = http_slice("s", "web", json!([]));
    s["metadata"]["labels"] = json!({"app": "web"});
    let mut empty = http_slice("s", "web", json!([]));
    empty["metadata"]["labels"] = json!({"kubernetes.io/service-name": ""});
    let mut none = http_slice("s", "web", json!([]));
    none["metadata"].as_object_mut().unwrap().remove("labels");
    for doc in [s, empty, none] {
        assert_contains(
            &parse_error(&[doc]),
            &[
                "EndpointSlice default/s: metadata.labels[\"kubernetes.io/service-name\"]: is required: it names the Service this slice belongs to",
            ],
        );
    }
}

#[test]
fn invalid_slices() {
    let mut no_name = http_slice("s", "web", json!([]));
    no_name["metadata"].as_object_mut().unwrap().remove("name");
    let mut no_type = http_slice("s", "web", json!([]));
    no_type.as_object_mut().unwrap().remove("addressType");
    rejects(&[
        (
            no_name,
            "EndpointSlice default/<no name>: metadata.name: is required",
        ),
        (no_type, "EndpointSlice default/s: addressType: is required"),
        (
            http_slice("s", "web", json!([ready("10.0.0.300", "n")])),
            "EndpointSlice default/s: endpoints[0].addresses[0]: \"10.0.0.300\" is not a valid IPv4 address",
        ),
        (
            http_slice(
                "s",
                "web",
                json!([ready("10.0.0.1", "n"), ready("fd00::1", "n")]),
            ),
            "EndpointSlice default/s: endpoints[1].addresses[0]: \"fd00::1\" is not a valid IPv4 address",
        ),
        (
            http_slice("s", "web", json!([{"addresses": ["10.0.0.1", "x"]}])),
            "endpoints[0].addresses[1]: \"x\" is not a valid IPv4 address",
        ),
        (
            http_slice("s", "web", json!([{"addresses": []}])),
            "EndpointSlice default/s: endpoints[0].addresses: at least one address is required",
        ),
        (
            http_slice("s", "web", json!([ready("127.0.0.1", "n")])),
            "endpoints[0].addresses[0]: 127.0.0.1 is a loopback address: not usable as a backend address",
        ),
        (
            http_slice("s", "web", json!([ready("0.0.0.0", "n")])),
            "endpoints[0].addresses[0]: 0.0.0.0 is unspecified",
        ),
        (
            http_slice("s", "web", json!([ready("169.254.1.1", "n")])),
            "endpoints[0].addresses[0]: 169.254.1.1 is link-local",
        ),
        (
            slice(
                "s",
                "web",
                json!([{"name": "http", "port": 70000}]),
                json!([]),
            ),
            "EndpointSlice default/s: ports[0].port: 70000 is out of range 1-65535",
        ),
        (
            slice("s", "web", json!([{"name": "http", "port": 0}]), json!([])),
            "ports[0].port: 0 is out of range 1-65535",
        ),
        (
            slice(
                "s",
                "web",
                json!([{"name": "http", "port": 80, "protocol": "tcp"}]),
                json!([]),
            ),
            "ports[0].protocol: unsupported value \"tcp\"",
        ),
        (
            slice(
                "s",
                "web",
                json!([{"name": "http", "port": 80}, {"name": "http", "port": 81}]),
                json!([]),
            ),
            "ports[1].name: duplicate port name \"http\" for TCP",
        ),
        (
            slice("s", "web", json!([{"port": 80}, {"port": 81}]), json!([])),
            "ports[1].name: duplicate port name \"\" for TCP",
        ),
    ]);
}

#[test]
fn skipped_slices() {
    let mut v6 = http_slice("s", "web", json!([ready("fd00::1", "n")]));
    v6["addressType"] = json!("IPv6");
    let mut fqdn = http_slice("s", "web", json!([{"addresses": ["example.com"]}]));
    fqdn["addressType"] = json!("FQDN");
    let mut proxied = http_slice("s", "web", json!([]));
    proxied["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!("other");
    let mut headless = http_slice("s", "web", json!([]));
    headless["metadata"]["labels"]["service.kubernetes.io/headless"] = json!("");
    for (doc, want) in [
        (v6, "addressType IPv6: berth serves IPv4 only"),
        (fqdn, "addressType FQDN: berth serves IPv4 only"),
        (
            proxied,
            "labelled service.kubernetes.io/service-proxy-name=other",
        ),
        (headless, "labelled service.kubernetes.io/headless"),
    ] {
        let mut c = Catalog::new();
        let s = c.apply(objects(&[doc]), &ctx()).unwrap();
        match &s.results[0].action {
            Action::Skipped {
                reason,
                removed: false,
            } => {
                assert!(reason.contains(want), "{reason:?} lacks {want:?}")
            }
            a => panic!("{a:?}"),
        }
        assert!(c.is_empty());
    }
}

#[test]
fn normalization() {
    let mut s = slice(
        "s",
        "web",
        json!([
            {"name": "http", "port": 8080},
            {"name": "portless"},
            {"port": 9090, "protocol": "UDP"},
        ]),
        json!([
            {"addresses": ["10.0.0.1", "10.0.0.9"]},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true},
             "nodeName": "", "targetRef": {"kind": "Pod", "name": "p3"}},
            {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "p4", "namespace": "other"}, "nodeName": "n4"},
        ]),
    );
    s["metadata"]["namespace"] = json!("prod");
    let c = catalog(&[s]);
    let e = c.slices().next().unwrap();
    assert_eq!(e.service, ServiceRef::new("prod", "web"));
    let ports: Vec<_> = e
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.protocol.as_str()))
        .collect();
    assert_eq!(
        ports,
        [("http", 8080, "TCP"), ("", 9090, "UDP")],
        "portless ports are dropped"
    );
    let eps: Vec<_> = e
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addr.to_string(),
                e.ready,
                e.serving,
                e.terminating,
                e.node.clone(),
                e.target.clone(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("10.0.0.1".into(), true, true, false, None, None),
            ("10.0.0.2".into(), false, false, false, None, None),
            (
                "10.0.0.3".into(),
                false,
                true,
                true,
                None,
                Some("prod/p3".into())
            ),
            (
                "10.0.0.4".into(),
                true,
                true,
                false,
                Some("n4".into()),
                Some("other/p4".into())
            ),
        ]
    );
}

#[test]
fn known_networks_are_checked_at_apply() {
    let doc = http_slice(
        "s",
        "web",
        json!([ready("10.0.0.1", "n"), ready("10.1.0.1", "n"), {"addresses": ["10.0.0.2", "192.168.0.1"]}]),
    );
    let ctx = ctx().with_networks([
        ("10.0.0.0".parse().unwrap(), 16),
        ("172.16.0.0".parse().unwrap(), 12),
    ]);
    let mut c = Catalog::new();
    let err = apply_error(&mut c, std::slice::from_ref(&doc), &ctx);
    assert_eq!(
        err.to_string(),
        "EndpointSlice default/s: endpoints[1].addresses[0]: 10.1.0.1 is outside the node's known networks (10.0.0.0/16, 172.16.0.0/12)\n\
         EndpointSlice default/s: endpoints[2].addresses[1]: 192.168.0.1 is outside the node's known networks (10.0.0.0/16, 172.16.0.0/12)"
    );
    assert!(c.is_empty());

    let wide = ctx.clone().with_networks([("0.0.0.0".parse().unwrap(), 0)]);
    c.apply(objects(&[doc]), &wide).unwrap();
    assert_eq!(c.slices().count(), 1);
}

#[test]
fn node_context_accepts() {
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
    let cases = [
        (vec![], "1.2.3.4", true),
        (vec![("10.0.0.0", 8)], "10.255.0.1", true),
        (vec![("10.0.0.0", 8)], "11.0.0.1", false),
        (vec![("10.1.2.3", 32)], "10.1.2.3", true),
        (vec![("10.1.2.3", 32)], "10.1.2.4", false),
        (vec![("10.1.2.3", 40)], "10.1.2.3", true),
        (vec![("10.1.2.3", 0)], "200.1.1.1", true),
        (vec![("10.0.0.0", 24), ("10.0.1.0", 24)], "10.0.1.7", true),
        (vec![("10.0.0.7", 24)], "10.0.0.200", true),
    ];
    for (nets, addr, want) in cases {
        let ctx = NodeContext::new("n").with_networks(nets.iter().map(|(a, l)| (ip(a), *l)));
        assert_eq!(ctx.accepts(ip(addr)), want, "{nets:?} {addr}");
    }
    assert!(
        !NodeContext::new("").is_local(Some("")),
        "an unnamed node has no local endpoints"
    );
    assert!(!NodeContext::new("").is_local(None));
    assert!(NodeContext::new("a").is_local(Some("a")));
    assert!(!NodeContext::new("a").is_local(None));
}
