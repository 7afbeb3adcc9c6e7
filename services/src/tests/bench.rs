//! Scale check: 10,000 Services, each with one 10-endpoint EndpointSlice.
//!
//! `cargo test -p berth-services --release -- --ignored --nocapture scale`

use std::{fmt::Write as _, time::Instant};

use super::*;

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;

fn ip(base: u32, n: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(base + n)
}

fn yaml() -> String {
    let mut out = String::with_capacity(SERVICES as usize * 1_200);
    let cluster_base = u32::from(std::net::Ipv4Addr::new(10, 96, 0, 1));
    let pod_base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 1));
    for i in 0..SERVICES {
        let node_port = 20_000 + i;
        write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: ns-{ns}\n\
             spec:\n  type: NodePort\n  clusterIP: {cip}\n  ports:\n  - name: http\n    port: 80\n    \
             targetPort: http\n    nodePort: {node_port}\n---\napiVersion: discovery.k8s.io/v1\n\
             kind: EndpointSlice\nmetadata:\n  name: svc-{i}-abcde\n  namespace: ns-{ns}\n  labels:\n    \
             kubernetes.io/service-name: svc-{i}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  \
             protocol: TCP\nendpoints:\n",
            ns = i % 50,
            cip = ip(cluster_base, i),
        )
        .unwrap();
        for e in 0..ENDPOINTS {
            let node = (i + e) % 100;
            write!(
                out,
                "- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
                 nodeName: node-{node}\n  targetRef: {{kind: Pod, name: svc-{i}-{e}, namespace: ns-{ns}}}\n",
                ip(pod_base, i * ENDPOINTS + e),
                ns = i % 50,
            )
            .unwrap();
        }
    }
    out
}

#[test]
#[ignore = "scale measurement; run with --release -- --ignored --nocapture"]
fn scale_10k_services() {
    let input = yaml();
    let ctx = NodeContext::new("node-7").with_networks([("10.128.0.0".parse().unwrap(), 9)]);

    let t = Instant::now();
    let docs = crate::parse::documents(input.as_bytes(), "scale.yaml").unwrap();
    let read = t.elapsed();
    drop(docs);
    let t = Instant::now();
    let objects = Catalog::parse(input.as_bytes(), "scale.yaml").unwrap();
    let parse = t.elapsed();
    eprintln!("reading the YAML into values alone: {read:?}");
    assert_eq!(objects.len(), 2 * SERVICES as usize);

    let t = Instant::now();
    let mut c = Catalog::new();
    let summary = c.apply(objects, &ctx).unwrap();
    let apply = t.elapsed();
    assert!(summary.changed());

    let t = Instant::now();
    let frontends = c.frontends(&ctx);
    let compile = t.elapsed();
    assert_eq!(frontends.len(), 3 * SERVICES as usize);
    assert!(
        frontends
            .iter()
            .all(|f| f.backends.len() == ENDPOINTS as usize)
    );

    // The agent re-applies one changed object at a time (watcher) and persists the catalog.
    let one = Catalog::parse(
        b"apiVersion: v1\nkind: Service\nmetadata: {name: extra}\nspec: {clusterIP: 10.95.0.1, ports: [{port: 80}]}\n",
        "one.yaml",
    )
    .unwrap();
    let t = Instant::now();
    c.apply(one, &ctx).unwrap();
    let apply_one = t.elapsed();
    let t = Instant::now();
    let json = serde_json::to_vec(&c).unwrap();
    let save = t.elapsed();
    let t = Instant::now();
    let back: Catalog = serde_json::from_slice(&json).unwrap();
    let load = t.elapsed();
    assert_eq!(back, c);

    // The same objects as concatenated JSON (what a watcher or `kubectl get -o json` gives).
    let json_input: Vec<u8> = serde_yaml::Deserializer::from_str(&input)
        .flat_map(|d| {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    let t = Instant::now();
    let from_json = Catalog::parse(&json_input, "scale.json").unwrap();
    let parse_json = t.elapsed();
    assert_eq!(from_json.len(), 2 * SERVICES as usize);

    eprintln!(
        "{SERVICES} services x {ENDPOINTS} endpoints ({} KiB YAML): parse {parse:?}, apply {apply:?}, \
         frontends {compile:?} ({} frontends); apply 1 more {apply_one:?}; \
         catalog JSON {} KiB, save {save:?}, load {load:?}; \
         parse as JSON ({} KiB) {parse_json:?}",
        input.len() / 1024,
        frontends.len(),
        json.len() / 1024,
        json_input.len() / 1024,
    );
}
