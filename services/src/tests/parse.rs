//! Bytes to objects: formats, Lists, kinds, unknown fields, wrong types, syntax errors.

use serde_json::json;

use super::*;
use crate::{Error, Kind};

fn parse_yaml(yaml: &str) -> Result<Vec<Object>, Error> {
    Catalog::parse(yaml.as_bytes(), "svc.yaml")
}

fn yaml_error(yaml: &str) -> String {
    match parse_yaml(yaml) {
        Ok(o) => panic!("parse succeeded: {o:#?}"),
        Err(e) => e.to_string(),
    }
}

fn keys(objects: &[Object]) -> Vec<String> {
    objects.iter().map(|o| o.key().to_string()).collect()
}

const WEB: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

const WEB_SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [10.0.0.1]
  conditions: {ready: true}
  nodeName: node-a
";

#[test]
fn multi_document_yaml() {
    let yaml = format!("---\n# leading comment\n{WEB}---\n# only a comment\n---\n{WEB_SLICE}---\n");
    let objects = parse_yaml(&yaml).unwrap();
    assert_eq!(
        keys(&objects),
        ["Service default/web", "EndpointSlice default/web-abc"]
    );
    assert_eq!(objects[0].kind(), Kind::Service);
    assert_eq!(objects[0].namespace(), "default", "namespace defaults");
}

#[test]
fn empty_input_has_no_objects() {
    for input in ["", "\n", "# nothing\n", "---\n---\n"] {
        assert_eq!(parse_yaml(input).unwrap(), vec![], "{input:?}");
    }
}

#[test]
fn json_single_and_concatenated() {
    let one = serde_json::to_vec(&cluster_svc("a", "10.96.0.1")).unwrap();
    assert_eq!(
        keys(&Catalog::parse(&one, "a.json").unwrap()),
        ["Service default/a"]
    );
    let two = bytes(&[cluster_svc("a", "10.96.0.1"), cluster_svc("b", "10.96.0.2")]);
    assert_eq!(
        keys(&Catalog::parse(&two, "b.json").unwrap()),
        ["Service default/a", "Service default/b"]
    );
}

#[test]
fn yaml_flow_mapping_falls_back_from_json() {
    let yaml = "{apiVersion: v1, kind: Service, metadata: {name: a}, spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}}";
    assert_eq!(keys(&parse_yaml(yaml).unwrap()), ["Service default/a"]);
}

#[test]
fn lists() {
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": [cluster_svc("a", "10.96.0.1"), http_slice("a-1", "a", json!([]))],
    });
    assert_eq!(
        keys(&objects(&[list])),
        ["Service default/a", "EndpointSlice default/a-1"]
    );

    // What the API returns for a list call: items carry neither kind nor apiVersion.
    let mut item = cluster_svc("b", "10.96.0.2");
    item.as_object_mut().unwrap().remove("kind");
    item.as_object_mut().unwrap().remove("apiVersion");
    let typed = json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {}, "items": [item]});
    assert_eq!(keys(&objects(&[typed])), ["Service default/b"]);

    let mut item = http_slice("s", "b", json!([]));
    item.as_object_mut().unwrap().remove("kind");
    item.as_object_mut().unwrap().remove("apiVersion");
    let typed =
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "items": [item]});
    assert_eq!(keys(&objects(&[typed])), ["EndpointSlice default/s"]);

    let empty = json!({"apiVersion": "v1", "kind": "List", "items": []});
    assert_eq!(objects(&[empty]), vec![]);
}

#[test]
fn list_errors_name_the_item() {
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            cluster_svc("a", "10.96.0.1"),
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
            {"apiVersion": "v1", "kind": "List", "items": []},
        ],
    });
    let err = parse_error(&[list]);
    assert_contains(
        &err,
        &[
            "test.json: document 1, items[1]: unsupported kind \"Deployment\": Deployment default/d (apiVersion apps/v1)",
            "test.json: document 1, items[2]: a List inside a list is not supported",
        ],
    );
    let bad_items = json!({"apiVersion": "v1", "kind": "List", "items": {"a": 1}, "extra": 1});
    assert_contains(
        &parse_error(&[bad_items]),
        &[
            "items must be a list, found a mapping",
            "List: extra: unknown field",
        ],
    );
}

#[test]
fn unknown_kind_names_document_and_kind() {
    let yaml = format!(
        "{WEB}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: prod\n"
    );
    let err = yaml_error(&yaml);
    assert_eq!(
        err,
        "svc.yaml: document 2: unsupported kind \"Deployment\": Deployment prod/web (apiVersion apps/v1): \
         berth reads Service (v1) and EndpointSlice (discovery.k8s.io/v1), alone or in a List"
    );
}

#[test]
fn document_shape_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "apiVersion: v1\nmetadata: {name: a}\n",
            "svc.yaml: document 1: kind is missing",
        ),
        (
            "kind: 5\n",
            "svc.yaml: document 1: kind must be a string, found a number",
        ),
        (
            "- a\n- b\n",
            "svc.yaml: document 1: expected a mapping with apiVersion and kind, found a list",
        ),
        (
            "just text\n",
            "expected a mapping with apiVersion and kind, found a string",
        ),
        (
            "kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.1, ports: [{port: 1}]}\n",
            "svc.yaml: document 1: Service default/a: apiVersion: is missing (expected v1)",
        ),
        (
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\n",
            "EndpointSlice default/s: apiVersion: \"discovery.k8s.io/v1beta1\" is not supported for EndpointSlice: expected discovery.k8s.io/v1",
        ),
        (
            "apiVersion: [v1]\nkind: Service\n",
            "apiVersion must be a string, found a list",
        ),
    ];
    for (yaml, want) in cases {
        assert_contains(&yaml_error(yaml), &[want]);
    }
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let cases: &[(&str, &str)] = &[
        (
            "  - name: http\n    port: 80\n    nodeport: 30080\n",
            "svc.yaml: document 1: Service default/web: spec.ports[0].nodeport: unknown field (not in Service v1)",
        ),
        (
            "  - name: http\n    port: 80\n  clusterIp: 10.0.0.1\n",
            "Service default/web: spec.clusterIp: unknown field",
        ),
    ];
    for (ports, want) in cases {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n{ports}"
        );
        assert_contains(&yaml_error(&yaml), &[want]);
    }

    let mut s = cluster_svc("web", "10.96.0.1");
    s["metadata"]["lables"] = json!({"a": "b"});
    s["extra"] = json!(1);
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4", "mode": "VIP"}]}});
    let err = parse_error(&[s]);
    assert_contains(
        &err,
        &[
            "Service default/web: metadata.lables: unknown field",
            "Service default/web: extra: unknown field",
            "Service default/web: status.loadBalancer.ingress[0].mode: unknown field",
        ],
    );

    let mut sl = http_slice("s", "web", json!([ready("10.0.0.1", "n")]));
    sl["endpoints"][0]["conditions"]["healthy"] = json!(true);
    sl["ports"][0]["number"] = json!(8080);
    assert_contains(
        &parse_error(&[sl]),
        &[
            "EndpointSlice default/s: endpoints[0].conditions.healthy: unknown field (not in EndpointSlice discovery.k8s.io/v1)",
            "EndpointSlice default/s: ports[0].number: unknown field",
        ],
    );
}

#[test]
fn null_fields_are_absent_not_unknown() {
    let mut s = cluster_svc("web", "10.96.0.1");
    s["metadata"]["creationTimestamp"] = json!(null);
    s["spec"]["selector"] = json!(null);
    s["status"] = json!({"loadBalancer": {}});
    assert_eq!(objects(&[s]).len(), 1);
}

#[test]
fn wrong_types_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "  ports:\n  - port: abc\n",
            "svc.yaml: document 1: Service default/web: spec.ports[0].port: invalid type: string \"abc\", expected i32",
        ),
        (
            "  ports: 80\n",
            "Service default/web: spec.ports: invalid type: integer `80`, expected a sequence",
        ),
        (
            "  ports:\n  - port: 80.5\n",
            "spec.ports[0].port: invalid type: floating point `80.5`, expected i32",
        ),
        (
            "  ports:\n  - port: 99999999999\n",
            "spec.ports[0].port: invalid value: integer `99999999999`, expected i32",
        ),
        (
            "  externalIPs: 1.2.3.4\n",
            "spec.externalIPs: invalid type: string \"1.2.3.4\", expected a sequence",
        ),
        (
            "  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: ten\n",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: invalid type: string \"ten\"",
        ),
    ];
    for (spec, want) in cases {
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n{spec}"
        );
        assert_contains(&yaml_error(&yaml), &[want]);
    }
    // A YAML float where a label (string) belongs.
    let yaml =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels:\n    version: 1.0\n";
    assert_contains(
        &yaml_error(yaml),
        &[
            "Service default/web: metadata.labels.version: invalid type: floating point `1.0`, expected a string",
        ],
    );
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: web\n";
    assert_contains(
        &yaml_error(yaml),
        &["Service default/<no name>: metadata: invalid type: string \"web\""],
    );
}

#[test]
fn out_of_range_ports() {
    let s = svc(
        "web",
        json!({"clusterIP": "10.96.0.1", "ports": [
            {"name": "a", "port": 80},
            {"name": "b", "port": 70000},
            {"name": "c", "port": 0},
            {"name": "d", "port": -1},
        ]}),
    );
    let err = parse_error(&[s]);
    assert_contains(
        &err,
        &[
            "test.json: document 1: Service default/web: spec.ports[1].port: 70000 is out of range 1-65535",
            "Service default/web: spec.ports[2].port: 0 is out of range 1-65535",
            "Service default/web: spec.ports[3].port: -1 is out of range 1-65535",
        ],
    );
    assert_eq!(err.lines().count(), 3, "{err}");
}

#[test]
fn malformed_yaml_is_a_syntax_error() {
    let err = parse_yaml("apiVersion: v1\nkind: Service\nmetadata:\n  name: [web\n").unwrap_err();
    let Error::Syntax { origin, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(origin, "svc.yaml");
    assert_contains(message, &["document 1: invalid YAML", "line"]);
    assert!(err.problems().is_empty());

    let err = parse_yaml(&format!("{WEB}---\nkind: Service\n  bad: indent\n")).unwrap_err();
    assert_contains(&err.to_string(), &["svc.yaml: document 2: invalid YAML"]);

    let err = parse_yaml("a: 1\na: 2\n").unwrap_err();
    assert_contains(&err.to_string(), &["duplicate", "invalid YAML"]);
}

#[test]
fn malformed_json_is_a_syntax_error() {
    let err = Catalog::parse(b"{\"apiVersion\": \"v1\", \"kind\": ", "x.json").unwrap_err();
    assert_contains(
        &err.to_string(),
        &["x.json: invalid JSON: EOF while parsing", "line 1"],
    );
    let err = Catalog::parse(b"{\"a\": 1} {\"b\": ]}", "x.json").unwrap_err();
    assert!(matches!(err, Error::Syntax { .. }), "{err:?}");
}

#[test]
fn all_problems_are_reported_together() {
    let bad_port = svc(
        "a",
        json!({"clusterIP": "10.96.0.1", "ports": [{"port": 70000}]}),
    );
    let bad_kind = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    let good = cluster_svc("c", "10.96.0.3");
    let err = Catalog::parse(&bytes(&[bad_port, good, bad_kind]), "x.json").unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 2, "{err}");
    assert_eq!(problems[0].location.as_deref(), Some("x.json: document 1"));
    assert_eq!(problems[0].object.as_deref(), Some("Service default/a"));
    assert_eq!(problems[0].field.as_deref(), Some("spec.ports[0].port"));
    assert_eq!(problems[1].location.as_deref(), Some("x.json: document 3"));
}

#[test]
fn yaml_merge_keys_and_anchors() {
    let yaml = "\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 10.96.0.10
  ports:
  - &http
    name: http
    port: 80
  - <<: *http
    name: alt
    port: 8080
";
    let objects = parse_yaml(yaml).unwrap();
    let Object::Service(s) = &objects[0] else {
        panic!()
    };
    let ports = s.spec.as_ref().unwrap().ports.as_ref().unwrap();
    assert_eq!(ports[1].name.as_deref(), Some("alt"));
    assert_eq!(ports[1].port, 8080);
}

/// What `kubectl get -o yaml` prints must parse without false "unknown field"s.
#[test]
fn kubectl_output_parses() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service"}
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels:
    app: web
  name: web
  namespace: shop
  resourceVersion: "12345"
  uid: 6f1c6a4e-1111-2222-3333-444455556666
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:spec:
        f:ports: {}
    manager: kubectl
    operation: Update
    time: "2024-05-01T10:00:00Z"
spec:
  clusterIP: 10.96.7.7
  clusterIPs:
  - 10.96.7.7
  externalTrafficPolicy: Local
  healthCheckNodePort: 31999
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    nodePort: 31080
    port: 80
    protocol: TCP
    targetPort: http
    appProtocol: http
  selector:
    app: web
  sessionAffinity: None
  type: LoadBalancer
  allocateLoadBalancerNodePorts: true
status:
  loadBalancer:
    ingress:
    - ip: 203.0.113.7
      ipMode: VIP
      ports:
      - port: 80
        protocol: TCP
  conditions: []
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
endpoints:
- addresses:
  - 10.244.1.5
  conditions:
    ready: true
    serving: true
    terminating: false
  hints:
    forZones:
    - name: zone-a
  nodeName: node-a
  targetRef:
    kind: Pod
    name: web-7d9c-abcde
    namespace: shop
    uid: 0a0a0a0a-1111-2222-3333-444455556666
  zone: zone-a
kind: EndpointSlice
metadata:
  annotations:
    endpoints.kubernetes.io/last-change-trigger-time: "2024-05-01T10:00:00Z"
  generateName: web-
  generation: 3
  labels:
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
    kubernetes.io/service-name: web
  name: web-x1y2z
  namespace: shop
  ownerReferences:
  - apiVersion: v1
    blockOwnerDeletion: true
    controller: true
    kind: Service
    name: web
    uid: 6f1c6a4e-1111-2222-3333-444455556666
  resourceVersion: "12346"
ports:
- appProtocol: http
  name: http
  port: 8080
  protocol: TCP
"#;
    let objects = match parse_yaml(yaml) {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        keys(&objects),
        ["Service shop/web", "EndpointSlice shop/web-x1y2z"]
    );
    let mut c = Catalog::new();
    c.apply(objects, &ctx()).unwrap();
    let ref_ = crate::ServiceRef::new("shop", "web");
    assert_eq!(
        c.frontends_of(&ref_, &ctx())
            .iter()
            .map(render)
            .collect::<Vec<_>>(),
        [
            "web/http ClusterIP internal 10.96.7.7:80/TCP -> [10.244.1.5:8080]",
            "web/http NodePort internal *:31080/TCP -> [10.244.1.5:8080]",
            "web/http NodePort external *:31080/TCP -> [10.244.1.5:8080]",
            "web/http LoadBalancer internal 203.0.113.7:80/TCP -> [10.244.1.5:8080]",
            "web/http LoadBalancer external 203.0.113.7:80/TCP -> [10.244.1.5:8080]",
        ]
    );
    let entry = c.service(&ref_).unwrap();
    assert_eq!(entry.health_check_node_port, Some(31999));
    let f = &c.frontends_of(&ref_, &ctx())[0];
    assert_eq!(f.backends[0].target.as_deref(), Some("shop/web-7d9c-abcde"));
    assert_eq!(f.backends[0].node.as_deref(), Some("node-a"));
}

#[test]
fn semantic_errors_at_parse_carry_the_location() {
    let yaml =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    assert_eq!(
        yaml_error(yaml),
        "svc.yaml: document 1: Service default/web: spec.clusterIP: is required: berth does not allocate cluster IPs"
    );
}

#[test]
fn parse_does_not_check_known_networks() {
    // Known networks belong to the node: apply checks them, parse cannot.
    let s = http_slice("s", "web", json!([ready("192.0.2.1", "n")]));
    assert_eq!(objects(&[s]).len(), 1);
}

#[test]
fn duplicate_keys_are_rejected() {
    let err = yaml_error("apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n");
    assert_contains(
        &err,
        &["svc.yaml: document 1: invalid YAML: metadata: duplicate key \"name\" at line 4"],
    );
    // Also on the merge-key path (serde_yaml's own Value).
    let err = yaml_error("x: &x {a: 1}\ny:\n  <<: *x\n  b: 2\n  b: 3\n");
    assert_contains(&err, &["invalid YAML", "duplicate"]);
    let err = Catalog::parse(br#"{"kind": "Service", "kind": "Service"}"#, "d.json").unwrap_err();
    assert_contains(
        &err.to_string(),
        &["d.json: invalid JSON: duplicate key \"kind\"", "line 1"],
    );
}

#[test]
fn yaml_scalars_map_like_kubectl() {
    // Numeric keys become strings; a label value must still be a string.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels:\n    8: eight\n    yes: \"y\"\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80}]\n";
    let objects = parse_yaml(yaml).unwrap();
    let Object::Service(s) = &objects[0] else {
        panic!()
    };
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels.get("8").map(String::as_str), Some("eight"));
    assert_eq!(labels.get("yes").map(String::as_str), Some("y"));
    assert_contains(
        &yaml_error("a: .nan\n"),
        &["invalid YAML", "not a number JSON can hold"],
    );
    assert_contains(&yaml_error("a: !custom 5\n"), &["invalid YAML"]);
}
