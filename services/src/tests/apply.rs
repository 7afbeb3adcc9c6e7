//! apply (summary, all-or-nothing, conflicts), delete, persistence.

use serde_json::json;

use super::*;
use crate::{Action, ApplySummary, Kind, ObjectKey, ServiceRef};

fn actions(s: &ApplySummary) -> Vec<String> {
    s.results.iter().map(ToString::to_string).collect()
}

fn apply(c: &mut Catalog, docs: &[serde_json::Value]) -> Vec<String> {
    match c.apply(objects(docs), &ctx()) {
        Ok(s) => actions(&s),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn created_configured_unchanged() {
    let mut c = Catalog::new();
    let s = cluster_svc("web", "10.96.0.1");
    let sl = http_slice("web-1", "web", json!([ready("10.0.0.1", "n")]));
    assert_eq!(
        apply(&mut c, &[s.clone(), sl.clone()]),
        [
            "Service default/web created",
            "EndpointSlice default/web-1 created"
        ]
    );
    assert_eq!(
        apply(&mut c, &[s.clone(), sl.clone()]),
        [
            "Service default/web unchanged",
            "EndpointSlice default/web-1 unchanged"
        ]
    );

    // Fields berth does not use do not make a change.
    let mut relabelled = s.clone();
    relabelled["metadata"]["labels"] = json!({"team": "a"});
    relabelled["spec"]["selector"] = json!({"app": "web"});
    assert_eq!(
        apply(&mut c, &[relabelled]),
        ["Service default/web unchanged"]
    );

    let mut moved = s.clone();
    moved["spec"]["clusterIP"] = json!("10.96.0.2");
    let sl2 = http_slice("web-1", "web", json!([ready("10.0.0.2", "n")]));
    let summary = c.apply(objects(&[moved, sl2]), &ctx()).unwrap();
    assert_eq!(
        actions(&summary),
        [
            "Service default/web configured",
            "EndpointSlice default/web-1 configured"
        ]
    );
    assert!(summary.changed());
    assert_eq!(
        summary.to_string(),
        "Service default/web configured\nEndpointSlice default/web-1 configured\n"
    );
    assert_eq!(
        rendered(&c, &ctx()),
        ["web/http ClusterIP internal 10.96.0.2:80/TCP -> [10.0.0.2:8080]"]
    );
}

#[test]
fn apply_is_all_or_nothing() {
    let mut c = catalog(&[cluster_svc("web", "10.96.0.1")]);
    let before = c.clone();
    let ctx = ctx().with_networks([("10.0.0.0".parse().unwrap(), 16)]);
    let good_change = cluster_svc("web", "10.96.0.9");
    let new = cluster_svc("api", "10.96.0.5");
    let bad_slice = http_slice("web-1", "web", json!([ready("192.168.1.1", "n")]));
    let err = apply_error(&mut c, &[good_change, new, bad_slice], &ctx);
    assert_eq!(
        err.to_string(),
        "EndpointSlice default/web-1: endpoints[0].addresses[0]: 192.168.1.1 is outside the node's known networks (10.0.0.0/16)"
    );
    assert_eq!(c, before, "nothing applied");

    // Objects built by hand (not parsed) are validated by apply too.
    let mut svc = k8s_openapi::api::core::v1::Service::default();
    svc.metadata.name = Some("handmade".into());
    let err = c.apply(vec![svc.into()], &ctx).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Service default/handmade: spec.clusterIP: is required: berth does not allocate cluster IPs\n\
         Service default/handmade: spec.ports: at least one port is required"
    );
    assert_eq!(c, before);
}

#[test]
fn duplicate_objects_in_one_apply() {
    let mut c = Catalog::new();
    let err = apply_error(
        &mut c,
        &[
            cluster_svc("web", "10.96.0.1"),
            cluster_svc("web", "10.96.0.2"),
            http_slice("s", "web", json!([])),
            http_slice("s", "web", json!([])),
        ],
        &ctx(),
    );
    assert_eq!(
        err.to_string(),
        "Service default/web: appears more than once in the input\n\
         EndpointSlice default/s: appears more than once in the input"
    );
    assert!(c.is_empty());
    // The same name in two namespaces, or as two kinds, is fine.
    let mut other = cluster_svc("web", "10.96.0.2");
    other["metadata"]["namespace"] = json!("prod");
    let named_like = http_slice("web", "web", json!([]));
    assert_eq!(
        apply(
            &mut c,
            &[cluster_svc("web", "10.96.0.1"), other, named_like]
        ),
        [
            "Service default/web created",
            "Service prod/web created",
            "EndpointSlice default/web created"
        ]
    );
}

#[test]
fn frontend_conflicts_between_services() {
    let np = |name: &str, ip: &str, node_port: u16| {
        svc(
            name,
            json!({"type": "NodePort", "clusterIP": ip,
                   "ports": [{"name": "http", "port": 80, "nodePort": node_port}]}),
        )
    };
    let with_external_ip = |name: &str, ip: &str| {
        svc(
            name,
            json!({"clusterIP": ip, "externalIPs": ["192.0.2.1"], "ports": [{"name": "http", "port": 80}]}),
        )
    };
    let mut c = catalog(&[
        np("a", "10.96.0.1", 30080),
        with_external_ip("e", "10.96.0.100"),
    ]);
    let before = c.clone();

    let err = apply_error(&mut c, &[np("b", "10.96.0.1", 30081)], &ctx());
    assert_eq!(
        err.to_string(),
        "Service default/b: ClusterIP frontend 10.96.0.1:80/TCP is already used by Service default/a"
    );
    let err = apply_error(&mut c, &[with_external_ip("f", "10.96.0.101")], &ctx());
    assert_eq!(
        err.to_string(),
        "Service default/f: ExternalIP frontend 192.0.2.1:80/TCP is already used by Service default/e"
    );
    let err = apply_error(&mut c, &[np("b", "10.96.0.2", 30080)], &ctx());
    assert_contains(
        &err.to_string(),
        &["Service default/b: NodePort frontend *:30080/TCP is already used by Service default/a"],
    );
    // Conflicts inside one apply.
    let mut empty = Catalog::new();
    let err = apply_error(
        &mut empty,
        &[cluster_svc("x", "10.96.1.1"), cluster_svc("y", "10.96.1.1")],
        &ctx(),
    );
    assert_contains(
        &err.to_string(),
        &[
            "Service default/y: ClusterIP frontend 10.96.1.1:80/TCP is already used by Service default/x",
        ],
    );
    assert!(empty.is_empty());
    assert_eq!(c, before);

    // Re-applying a service over itself, moving it, or taking a freed key is fine.
    assert_eq!(
        apply(&mut c, &[np("a", "10.96.0.1", 30080)]),
        ["Service default/a unchanged"]
    );
    let mut other_port = svc(
        "b",
        json!({"clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"], "ports": [{"name": "https", "port": 443}]}),
    );
    assert_eq!(
        apply(&mut c, &[other_port.clone()]),
        ["Service default/b created"]
    );
    other_port["spec"]["ports"][0]["protocol"] = json!("UDP");
    other_port["spec"]["ports"][0]["port"] = json!(80);
    assert_eq!(
        apply(&mut c, &[other_port]),
        ["Service default/b configured"],
        "80/UDP differs from 80/TCP"
    );
    assert_eq!(
        apply(
            &mut c,
            &[np("a", "10.96.0.7", 30090), np("c", "10.96.0.8", 30080)]
        )[1],
        "Service default/c created",
        "a gave up 30080 in the same apply"
    );
    // The same, with the taker before the giver in the input.
    assert_eq!(
        apply(
            &mut c,
            &[np("g", "10.96.0.9", 30090), np("a", "10.96.0.7", 30091)]
        ),
        ["Service default/g created", "Service default/a configured"]
    );
    assert_eq!(
        apply_error(&mut c, &[np("h", "10.96.0.10", 30090)], &ctx()).to_string(),
        "Service default/h: NodePort frontend *:30090/TCP is already used by Service default/g",
        "the owner index follows"
    );
    assert_eq!(
        apply(&mut c, &[np("h", "10.96.0.10", 30092)]),
        ["Service default/h created"]
    );
    // A skipped (here: ExternalName) service frees its frontends too.
    let external_name = svc(
        "c",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    );
    apply(&mut c, &[external_name]);
    assert_eq!(
        apply(&mut c, &[np("d", "10.96.0.8", 30080)]),
        ["Service default/d created"]
    );
}

#[test]
fn slice_before_service() {
    let mut c = Catalog::new();
    apply(
        &mut c,
        &[http_slice("web-1", "web", json!([ready("10.0.0.1", "n")]))],
    );
    assert!(c.frontends(&ctx()).is_empty(), "no service yet");
    assert_eq!(c.slices().count(), 1);
    apply(&mut c, &[cluster_svc("web", "10.96.0.1")]);
    assert_eq!(
        rendered(&c, &ctx()),
        ["web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080]"]
    );
    assert_eq!(c.slices_of(&ServiceRef::new("default", "web")).count(), 1);
}

#[test]
fn slice_moving_to_another_service() {
    let mut c = catalog(&[
        cluster_svc("a", "10.96.0.1"),
        cluster_svc("b", "10.96.0.2"),
        http_slice("s", "a", json!([ready("10.0.0.1", "n")])),
    ]);
    assert_eq!(
        apply(
            &mut c,
            &[http_slice("s", "b", json!([ready("10.0.0.1", "n")]))]
        ),
        ["EndpointSlice default/s configured"]
    );
    assert_eq!(
        rendered(&c, &ctx()),
        [
            "a/http ClusterIP internal 10.96.0.1:80/TCP -> []",
            "b/http ClusterIP internal 10.96.0.2:80/TCP -> [10.0.0.1:8080]",
        ]
    );
    assert_eq!(c.slices_of(&ServiceRef::new("default", "a")).count(), 0);
}

#[test]
fn skipped_object_replaces_stored_version() {
    let mut c = catalog(&[
        cluster_svc("web", "10.96.0.1"),
        http_slice("web-1", "web", json!([ready("10.0.0.1", "n")])),
    ]);
    let headless = svc("web", json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    let mut v6 = http_slice("web-1", "web", json!([]));
    v6["addressType"] = json!("IPv6");
    let summary = c.apply(objects(&[headless, v6]), &ctx()).unwrap();
    assert_eq!(
        summary.results[0].action,
        Action::Skipped {
            reason: "headless (clusterIP None): resolved by DNS, not proxied".into(),
            removed: true
        }
    );
    assert!(matches!(
        summary.results[1].action,
        Action::Skipped { removed: true, .. }
    ));
    assert!(summary.changed());
    assert_contains(
        &summary.to_string(),
        &[
            "Service default/web skipped (headless (clusterIP None): resolved by DNS, not proxied); the stored version was removed",
        ],
    );
    assert!(c.is_empty());
}

#[test]
fn delete_by_kind_namespace_and_name() {
    let docs = [
        cluster_svc("web", "10.96.0.1"),
        http_slice("web-1", "web", json!([ready("10.0.0.1", "n")])),
        cluster_svc("api", "10.96.0.2"),
    ];
    let mut c = catalog(&docs);
    // Only identity matters: a changed spec still deletes.
    let mut changed = cluster_svc("web", "10.96.9.9");
    changed["spec"]["ports"] = json!([{"port": 1}]);
    let summary = c.delete(&objects(&[changed, http_slice("nope", "web", json!([]))]));
    assert_eq!(
        actions(&summary),
        [
            "Service default/web deleted",
            "EndpointSlice default/nope not found"
        ]
    );
    assert!(summary.changed());
    assert_eq!(c.services().count(), 1);
    assert_eq!(
        c.slices().count(),
        1,
        "delete leaves the slices of a deleted service"
    );
    let again = c.delete(&objects(&[cluster_svc("web", "10.96.0.1")]));
    assert_eq!(again.results[0].action, Action::NotFound);
    assert!(!again.changed());

    let summary = c.delete(&objects(&[http_slice("web-1", "web", json!([]))]));
    assert_eq!(
        summary.results[0],
        crate::ObjectResult {
            object: ObjectKey {
                kind: Kind::EndpointSlice,
                namespace: "default".into(),
                name: "web-1".into()
            },
            action: Action::Deleted
        }
    );
    assert_eq!(c.slices().count(), 0);
    assert_eq!(
        rendered(&c, &ctx()),
        ["api/http ClusterIP internal 10.96.0.2:80/TCP -> []"]
    );
}

#[test]
fn delete_service_takes_its_slices() {
    let mut other_ns = http_slice("web-3", "web", json!([]));
    other_ns["metadata"]["namespace"] = json!("prod");
    let mut c = catalog(&[
        cluster_svc("web", "10.96.0.1"),
        http_slice("web-1", "web", json!([])),
        http_slice("web-2", "web", json!([])),
        http_slice("api-1", "api", json!([])),
        other_ns,
    ]);
    let web = ServiceRef::new("default", "web");
    assert!(c.delete_service(&web));
    assert!(c.service(&web).is_none());
    let left: Vec<String> = c
        .slices()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(left, ["default/api-1", "prod/web-3"]);
    assert!(!c.delete_service(&web), "nothing left to delete");
    // Slices alone (service never applied) are removed too.
    assert!(c.delete_service(&ServiceRef::new("default", "api")));
    assert_eq!(c.slices().count(), 1);
}

#[test]
fn catalog_persists_as_json() {
    let mut s = svc(
        "web",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.0.1", "externalIPs": ["192.0.2.1"],
               "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
               "ports": [{"name": "http", "port": 80, "nodePort": 30080, "targetPort": "web"}]}),
    );
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}});
    let c = catalog(&[
        s,
        http_slice(
            "web-1",
            "web",
            json!([ready("10.0.0.1", NODE), draining("10.0.0.2", "b")]),
        ),
        http_slice("orphan-1", "orphan", json!([ready("10.0.0.3", "b")])),
    ]);
    let text = serde_json::to_string_pretty(&c).unwrap();
    assert!(text.contains("\"format\": 1"), "{text}");
    let back: Catalog = serde_json::from_str(&text).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.frontends(&ctx()), c.frontends(&ctx()));
    assert_eq!(
        back.slices_of(&ServiceRef::new("default", "web")).count(),
        1,
        "the derived index is rebuilt"
    );

    let empty: Catalog = serde_json::from_str(r#"{"format":1,"services":[],"slices":[]}"#).unwrap();
    assert!(empty.is_empty());
    let err =
        serde_json::from_str::<Catalog>(r#"{"format":2,"services":[],"slices":[]}"#).unwrap_err();
    assert!(
        err.to_string().contains("unsupported catalog format 2"),
        "{err}"
    );
}

#[test]
fn service_ref_parsing_and_display() {
    assert_eq!(
        "web".parse::<ServiceRef>().unwrap(),
        ServiceRef::new("default", "web")
    );
    assert_eq!(
        "prod/web".parse::<ServiceRef>().unwrap().to_string(),
        "prod/web"
    );
    for bad in ["", "/web", "prod/", "a/b/c"] {
        assert!(bad.parse::<ServiceRef>().is_err(), "{bad:?}");
    }
    let mut refs = [
        ServiceRef::new("b", "a"),
        ServiceRef::new("a", "z"),
        ServiceRef::new("a", "b"),
    ];
    refs.sort();
    assert_eq!(
        refs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["a/b", "a/z", "b/a"]
    );
}

#[test]
fn services_listing() {
    let c = catalog(&[
        cluster_svc("b", "10.96.0.2"),
        cluster_svc("a", "10.96.0.1"),
        svc(
            "x",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
    ]);
    let names: Vec<String> = c.services().map(|s| s.service.to_string()).collect();
    assert_eq!(names, ["default/a", "default/b"]);
    assert!(!c.services().next().unwrap().externally_accessible());
}
