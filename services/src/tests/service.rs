//! Service validation and skipping, one table per rule.

use serde_json::{Value, json};

use super::*;
use crate::{Action, ServiceRef, ServiceType, TrafficPolicy};

fn http() -> Value {
    json!([{"name": "http", "port": 80}])
}

/// Each spec must be rejected with a message containing the text.
#[track_caller]
fn rejects(cases: &[(Value, &str)]) {
    for (spec, want) in cases {
        let err = parse_error(&[svc("web", spec.clone())]);
        assert_contains(&err, &[&format!("Service default/web: {want}")]);
    }
}

/// Each spec must be accepted.
#[track_caller]
fn accepts(specs: &[Value]) {
    for spec in specs {
        let c = catalog(&[svc("web", spec.clone())]);
        assert_eq!(c.services().count(), 1, "{spec}");
    }
}

#[test]
fn name_and_namespace() {
    let s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {}, "spec": {"clusterIP": "10.0.0.1", "ports": http()}});
    assert_contains(
        &parse_error(&[s]),
        &["Service default/<no name>: metadata.name: is required"],
    );
    let s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": ""}, "spec": {"clusterIP": "10.0.0.1", "ports": http()}});
    let c = catalog(&[s]);
    assert!(c.service(&ServiceRef::new("default", "x")).is_some());
}

#[test]
fn cluster_ip_is_required_and_valid() {
    rejects(&[
        (
            json!({"ports": http()}),
            "spec.clusterIP: is required: berth does not allocate cluster IPs",
        ),
        (
            json!({"clusterIP": "", "ports": http()}),
            "spec.clusterIP: is required",
        ),
        (
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            "spec.clusterIP: is required",
        ),
        (
            json!({"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}]}),
            "spec.clusterIP: is required",
        ),
        (
            json!({"clusterIP": "10.0.0.300", "ports": http()}),
            "spec.clusterIP: \"10.0.0.300\" is not a valid IP address",
        ),
        (
            json!({"clusterIP": "0.0.0.0", "ports": http()}),
            "spec.clusterIP: 0.0.0.0 is unspecified",
        ),
        (
            json!({"clusterIP": "127.0.0.1", "ports": http()}),
            "spec.clusterIP: 127.0.0.1 is a loopback address",
        ),
        (
            json!({"clusterIP": "224.0.0.1", "ports": http()}),
            "spec.clusterIP: 224.0.0.1 is a multicast address",
        ),
        (
            json!({"clusterIP": "255.255.255.255", "ports": http()}),
            "spec.clusterIP: 255.255.255.255 is the broadcast address",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.2"], "ports": http()}),
            "spec.clusterIPs[0]: \"10.0.0.2\" must be the same as spec.clusterIP \"10.0.0.1\"",
        ),
        (
            json!({"clusterIPs": ["10.0.0.1", "bogus"], "ports": http()}),
            "spec.clusterIPs[1]: \"bogus\" is not a valid IP address",
        ),
        (
            json!({"clusterIPs": ["10.0.0.1", "10.0.0.1"], "ports": http()}),
            "spec.clusterIPs[1]: duplicate address 10.0.0.1",
        ),
        (
            json!({"clusterIP": "None", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            "spec.clusterIP: \"None\" (headless) is only valid with type ClusterIP, not NodePort",
        ),
        (
            json!({"clusterIPs": ["None", "10.0.0.1"], "ports": http()}),
            "spec.clusterIPs: \"None\" (headless) must be the only entry",
        ),
    ]);
    accepts(&[
        json!({"clusterIP": "10.0.0.1", "ports": http()}),
        json!({"clusterIPs": ["10.0.0.1"], "ports": http()}),
        json!({"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00::1"], "ports": http()}),
    ]);
}

#[test]
fn dual_stack_keeps_ipv4_only() {
    let c = catalog(&[svc(
        "web",
        json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.0.0.10"], "ports": http(),
               "externalIPs": ["2001:db8::1", "192.0.2.1"]}),
    )]);
    let e = c.services().next().unwrap();
    assert_eq!(
        e.cluster_ips,
        ["10.0.0.10".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!(
        e.external_ips,
        ["192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );
}

#[test]
fn skipped_services() {
    let labelled = {
        let mut s = cluster_svc("web", "10.0.0.1");
        s["metadata"]["labels"] = json!({"service.kubernetes.io/service-proxy-name": "other"});
        s
    };
    let cases: &[(Value, &str)] = &[
        (
            svc(
                "web",
                json!({"type": "ExternalName", "externalName": "example.com"}),
            ),
            "type ExternalName: resolved by DNS, not proxied",
        ),
        (
            svc("web", json!({"clusterIP": "None", "ports": http()})),
            "headless (clusterIP None): resolved by DNS, not proxied",
        ),
        (
            svc("web", json!({"clusterIPs": ["None"]})),
            "headless (clusterIP None)",
        ),
        (
            labelled,
            "labelled service.kubernetes.io/service-proxy-name=other: handled by another proxy",
        ),
        (
            svc("web", json!({"clusterIP": "fd00::1", "ports": http()})),
            "IPv6-only service: berth serves IPv4 only",
        ),
        (
            svc(
                "web",
                json!({"clusterIPs": ["fd00::1"], "type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}),
            ),
            "IPv6-only service",
        ),
    ];
    for (doc, reason) in cases {
        let mut c = Catalog::new();
        let summary = c.apply(objects(std::slice::from_ref(doc)), &ctx()).unwrap();
        assert_eq!(summary.results.len(), 1);
        match &summary.results[0].action {
            Action::Skipped { reason: r, removed } => {
                assert!(r.contains(reason), "{r:?} lacks {reason:?}");
                assert!(!removed);
            }
            a => panic!("{doc}: {a:?}"),
        }
        assert_eq!(summary.skipped().count(), 1);
        assert!(c.is_empty());
        assert!(c.frontends(&ctx()).is_empty());
        assert!(!summary.changed());
    }
}

#[test]
fn service_type() {
    rejects(&[
        (
            json!({"type": "Ingress", "clusterIP": "10.0.0.1", "ports": http()}),
            "spec.type: unsupported value \"Ingress\": expected ClusterIP, NodePort, LoadBalancer or ExternalName",
        ),
        (
            json!({"type": "nodeport", "clusterIP": "10.0.0.1", "ports": http()}),
            "spec.type: unsupported value \"nodeport\"",
        ),
    ]);
    for (t, want) in [
        (None, ServiceType::ClusterIp),
        (Some("ClusterIP"), ServiceType::ClusterIp),
        (Some("NodePort"), ServiceType::NodePort),
        (Some("LoadBalancer"), ServiceType::LoadBalancer),
    ] {
        let mut spec = json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}]});
        if let Some(t) = t {
            spec["type"] = json!(t);
        }
        if want == ServiceType::ClusterIp {
            spec["ports"][0].as_object_mut().unwrap().remove("nodePort");
        }
        let c = catalog(&[svc("web", spec)]);
        assert_eq!(c.services().next().unwrap().service_type, want);
    }
}

#[test]
fn ports() {
    rejects(&[
        (
            json!({"clusterIP": "10.0.0.1"}),
            "spec.ports: at least one port is required",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": []}),
            "spec.ports: at least one port is required",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 70000}]}),
            "spec.ports[0].port: 70000 is out of range 1-65535",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 0}]}),
            "spec.ports[0].port: 0 is out of range 1-65535",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"name": "x"}]}),
            "spec.ports[0].port: 0 is out of range",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 53, "protocol": "udp"}]}),
            "spec.ports[0].protocol: unsupported value \"udp\": expected TCP, UDP or SCTP",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 53, "protocol": "ICMP"}]}),
            "spec.ports[0].protocol: unsupported value \"ICMP\"",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}),
            "spec.ports[1].name: duplicate port name \"a\"",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80}, {"port": 81}]}),
            "spec.ports[1].name: is required when a service has more than one port",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "TCP"}]}),
            "spec.ports[1]: duplicate port 80/TCP",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80, "targetPort": 70000}]}),
            "spec.ports[0].targetPort: 70000 is out of range 1-65535",
        ),
    ]);
    accepts(&[
        json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}),
        json!({"clusterIP": "10.0.0.1", "ports": [{"port": 65535, "targetPort": "http"}]}),
        // The same number on two protocols is two ports (DNS).
        json!({"clusterIP": "10.0.0.1", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "sctp", "port": 53, "protocol": "SCTP"},
        ]}),
    ]);
    let c = catalog(&[svc(
        "web",
        json!({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80, "targetPort": 8080}, {"name": "b", "port": 81, "targetPort": "metrics"}, {"name": "c", "port": 82, "targetPort": 0}]}),
    )]);
    let ports = &c.services().next().unwrap().ports;
    assert_eq!(ports[0].target_port.as_deref(), Some("8080"));
    assert_eq!(ports[1].target_port.as_deref(), Some("metrics"));
    assert_eq!(ports[2].target_port, None);
    assert!(
        ports.iter().all(|p| p.protocol == crate::Protocol::Tcp),
        "TCP is the default"
    );
}

#[test]
fn node_ports() {
    rejects(&[
        (
            json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80}]}),
            "spec.ports[0].nodePort: is required for type NodePort: berth does not allocate node ports",
        ),
        (
            json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 0}]}),
            "spec.ports[0].nodePort: is required for type NodePort",
        ),
        (
            json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1", "ports": [{"port": 80}]}),
            "spec.ports[0].nodePort: is required for type LoadBalancer unless spec.allocateLoadBalancerNodePorts is false",
        ),
        (
            json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": true, "clusterIP": "10.0.0.1", "ports": [{"port": 80}]}),
            "spec.ports[0].nodePort: is required for type LoadBalancer",
        ),
        (
            json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 70000}]}),
            "spec.ports[0].nodePort: 70000 is out of range 1-65535",
        ),
        (
            json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": -5}]}),
            "spec.ports[0].nodePort: -5 is out of range 1-65535",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}]}),
            "spec.ports[0].nodePort: may only be set when spec.type is NodePort or LoadBalancer",
        ),
        (
            json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [
                {"name": "a", "port": 80, "nodePort": 30080},
                {"name": "b", "port": 81, "nodePort": 30080},
            ]}),
            "spec.ports[1].nodePort: duplicate node port 30080/TCP",
        ),
    ]);
    accepts(&[
        // Any port: the apiserver's 30000-32767 range is not berth's business.
        json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 80}]}),
        json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 65535}]}),
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false, "clusterIP": "10.0.0.1", "ports": [{"port": 80}]}),
        json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [
            {"name": "a", "port": 53, "protocol": "UDP", "nodePort": 30053},
            {"name": "b", "port": 53, "protocol": "TCP", "nodePort": 30053},
        ]}),
    ]);
}

#[test]
fn session_affinity() {
    rejects(&[
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range 1-86400",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is out of range 1-86400",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "sessionAffinity": "ClientIP",
                   "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": -1}}}),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: -1 is out of range",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "sessionAffinity": "Cookie"}),
            "spec.sessionAffinity: unsupported value \"Cookie\": expected None or ClientIP",
        ),
    ]);
    for (extra, want) in [
        (json!({}), None),
        (json!({"sessionAffinity": "None"}), None),
        (json!({"sessionAffinity": "ClientIP"}), Some(10_800)),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {}}),
            Some(10_800),
        ),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {}}}),
            Some(10_800),
        ),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}}),
            Some(1),
        ),
        (
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86400}}}),
            Some(86_400),
        ),
        // A config without ClientIP affinity is ignored.
        (
            json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
            None,
        ),
    ] {
        let mut spec = json!({"clusterIP": "10.0.0.1", "ports": http()});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let c = catalog(&[svc("web", spec)]);
        assert_eq!(
            c.services().next().unwrap().affinity_timeout,
            want,
            "{extra}"
        );
    }
}

#[test]
fn traffic_policies() {
    rejects(&[
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "externalTrafficPolicy": "OnlyLocal"}),
            "spec.externalTrafficPolicy: unsupported value \"OnlyLocal\": expected Cluster or Local",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "internalTrafficPolicy": "local"}),
            "spec.internalTrafficPolicy: unsupported value \"local\"",
        ),
    ]);
    for (etp, itp, want_e, want_i) in [
        (None, None, TrafficPolicy::Cluster, TrafficPolicy::Cluster),
        (
            Some("Cluster"),
            Some("Cluster"),
            TrafficPolicy::Cluster,
            TrafficPolicy::Cluster,
        ),
        (
            Some("Local"),
            Some("Local"),
            TrafficPolicy::Local,
            TrafficPolicy::Local,
        ),
        (
            Some("Local"),
            None,
            TrafficPolicy::Local,
            TrafficPolicy::Cluster,
        ),
    ] {
        let mut spec = json!({"type": "NodePort", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}]});
        if let Some(e) = etp {
            spec["externalTrafficPolicy"] = json!(e);
        }
        if let Some(i) = itp {
            spec["internalTrafficPolicy"] = json!(i);
        }
        let c = catalog(&[svc("web", spec)]);
        let e = c.services().next().unwrap();
        assert_eq!(
            (e.external_traffic_policy, e.internal_traffic_policy),
            (want_e, want_i)
        );
    }
}

#[test]
fn external_and_load_balancer_ips() {
    rejects(&[
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "externalIPs": ["192.0.2.1", "nope"]}),
            "spec.externalIPs[1]: \"nope\" is not a valid IP address",
        ),
        (
            json!({"clusterIP": "10.0.0.1", "ports": http(), "externalIPs": ["0.0.0.0"]}),
            "spec.externalIPs[0]: 0.0.0.0 is unspecified",
        ),
    ]);
    let mut s = svc(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}],
               "externalIPs": ["192.0.2.1", "192.0.2.1"]}),
    );
    s["status"] = json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.1"},
        {"ip": "203.0.113.2", "ipMode": "VIP"},
        {"ip": "203.0.113.3", "ipMode": "Proxy"},
        {"hostname": "lb.example.com"},
        {"ip": "2001:db8::1"},
        {"ip": "203.0.113.1"},
    ]}});
    let c = catalog(&[s.clone()]);
    let e = c.services().next().unwrap();
    let ips =
        |v: &[&str]| -> Vec<std::net::Ipv4Addr> { v.iter().map(|s| s.parse().unwrap()).collect() };
    assert_eq!(e.external_ips, ips(&["192.0.2.1"]), "deduplicated");
    assert_eq!(
        e.load_balancer_ips,
        ips(&["203.0.113.1", "203.0.113.2"]),
        "VIP mode only, IPv4 only, deduplicated"
    );

    s["status"]["loadBalancer"]["ingress"] = json!([{"ip": "203.0.113.300"}]);
    assert_contains(
        &parse_error(&[s.clone()]),
        &[
            "Service default/web: status.loadBalancer.ingress[0].ip: \"203.0.113.300\" is not a valid IP address",
        ],
    );
    s["status"]["loadBalancer"]["ingress"] = json!([{"ip": "203.0.113.3", "ipMode": "DSR"}]);
    assert_contains(
        &parse_error(&[s]),
        &[
            "status.loadBalancer.ingress[0].ipMode: unsupported value \"DSR\": expected VIP or Proxy",
        ],
    );
}

#[test]
fn health_check_node_port() {
    let base = json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}], "healthCheckNodePort": 32000});
    let mut local = base.clone();
    local["externalTrafficPolicy"] = json!("Local");
    assert_eq!(
        catalog(&[svc("a", local)])
            .services()
            .next()
            .unwrap()
            .health_check_node_port,
        Some(32000)
    );
    assert_eq!(
        catalog(&[svc("a", base)])
            .services()
            .next()
            .unwrap()
            .health_check_node_port,
        None
    );
    rejects(&[(
        json!({"type": "LoadBalancer", "clusterIP": "10.0.0.1", "ports": [{"port": 80, "nodePort": 30080}], "healthCheckNodePort": 70000}),
        "spec.healthCheckNodePort: 70000 is out of range 1-65535",
    )]);
}

#[test]
fn every_problem_of_an_object_is_reported() {
    let err = parse_error(&[svc(
        "web",
        json!({"type": "NodePort", "ports": [{"name": "a", "port": 0}, {"name": "a", "port": 80}],
               "sessionAffinity": "Sticky", "externalTrafficPolicy": "Everywhere"}),
    )]);
    assert_contains(
        &err,
        &[
            "spec.clusterIP: is required",
            "spec.ports[0].port: 0 is out of range",
            "spec.ports[1].name: duplicate port name",
            "spec.ports[0].nodePort: is required for type NodePort",
            "spec.sessionAffinity: unsupported value",
            "spec.externalTrafficPolicy: unsupported value",
        ],
    );
}
