//! The Kubernetes fixture itself: a real 1.20.2 control plane comes up in its own namespace, the
//! EndpointSlice controller reacts to pods whose status the test writes (ready, not ready,
//! terminating, gone), the namespace controller finishes deletions, and the API server survives a
//! restart with its state (etcd keeps running). berth's Kubernetes tests build on all of this.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use berth_tests::{
    kube_cluster::{KubeCluster, endpoint_for, endpoints, require_binaries},
    privileged::require_root,
};
use serde_json::Value;

const NS: &str = "default";
const SVC: &str = "web";
const WAIT: Duration = Duration::from_secs(20);

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.50
  selector:
    app: web
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
"#;

/// The condition `cond` of the endpoint with address `ip`, if both exist.
fn condition(slices: &Value, ip: Ipv4Addr, cond: &str) -> Option<bool> {
    endpoint_for(slices, ip)?["conditions"][cond].as_bool()
}

#[test]
fn kube_cluster_smoke() {
    const TEST: &str = "kube_cluster_smoke";
    if !require_root(TEST) || !require_binaries(TEST) {
        return;
    }
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.2?}] {what}", started.elapsed());

    let mut kube = KubeCluster::start("kube", 150, "node1").expect("starting the cluster");
    step("control plane ready");
    assert!(
        kube.server.starts_with("https://10.251.150.2:"),
        "{}",
        kube.server
    );
    let nodes = kube
        .kubectl(&["get", "nodes", "-o", "name"])
        .expect("listing nodes");
    assert_eq!(nodes.trim(), "node/node1");

    kube.apply(SERVICE).expect("applying the Service");
    let (a, b) = (Ipv4Addr::new(10, 252, 1, 2), Ipv4Addr::new(10, 252, 1, 3));
    for (name, ip) in [("web-1", a), ("web-2", b)] {
        kube.create_pod(NS, name, &[("app", "web")], ip, "node1", true)
            .unwrap_or_else(|e| panic!("creating pod {name}: {e:#}"));
    }
    let slices = kube
        .wait_slices(NS, SVC, WAIT, |s| {
            [a, b]
                .iter()
                .all(|ip| condition(s, *ip, "ready") == Some(true))
        })
        .expect("both pods ready in the EndpointSlice");
    step("slice lists both pods ready");
    let items = slices["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{slices:#}");
    assert_eq!(
        items[0]["apiVersion"], "discovery.k8s.io/v1beta1",
        "1.20 serves EndpointSlice only as v1beta1"
    );
    assert_eq!(items[0]["addressType"], "IPv4");
    assert_eq!(items[0]["ports"][0]["port"], 8080, "{slices:#}");
    for ep in endpoints(&slices) {
        // Filled in only with the EndpointSliceNodeName gate on both components.
        assert_eq!(ep["nodeName"], "node1", "{ep:#}");
        assert_eq!(ep["topology"]["kubernetes.io/hostname"], "node1", "{ep:#}");
        assert_eq!(ep["conditions"]["serving"], true, "{ep:#}");
        assert_eq!(ep["conditions"]["terminating"], false, "{ep:#}");
    }

    // A pod on another node: the 1.20 slice controller stops updating a Service whose pods sit on
    // a Node that does not exist, so the node comes first; the pod's hostIP is its InternalIP.
    let c = Ipv4Addr::new(10, 252, 2, 2);
    kube.create_node("node2", Ipv4Addr::new(10, 99, 0, 2))
        .expect("creating node2");
    kube.create_pod(NS, "web-3", &[("app", "web")], c, "node2", true)
        .expect("creating web-3 on node2");
    let slices = kube
        .wait_slices(NS, SVC, WAIT, |s| condition(s, c, "ready") == Some(true))
        .expect("web-3 ready in the slice");
    assert_eq!(
        endpoint_for(&slices, c).expect("web-3's endpoint")["nodeName"],
        "node2"
    );
    let host_ips = kube
        .kubectl(&[
            "get",
            "pods",
            "-n",
            NS,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.hostIP} {end}",
        ])
        .expect("reading host IPs");
    assert_eq!(
        host_ips.trim(),
        "web-1=10.251.150.1 web-2=10.251.150.1 web-3=10.99.0.2"
    );
    step("pod on a second node");

    kube.set_pod_ready(NS, "web-2", false)
        .expect("web-2 not ready");
    kube.wait_slices(NS, SVC, WAIT, |s| {
        condition(s, b, "ready") == Some(false) && condition(s, a, "ready") == Some(true)
    })
    .expect("web-2 not ready in the slice");
    step("web-2 not ready");

    kube.delete_pod_graceful(NS, "web-1")
        .expect("deleting web-1");
    let slices = kube
        .wait_slices(NS, SVC, WAIT, |s| {
            condition(s, a, "terminating") == Some(true)
        })
        .expect("web-1 terminating in the slice");
    // Terminating is never ready, but still serving: its Ready condition stays true.
    assert_eq!(condition(&slices, a, "ready"), Some(false), "{slices:#}");
    assert_eq!(condition(&slices, a, "serving"), Some(true), "{slices:#}");
    step("web-1 terminating");

    kube.delete_pod_now(NS, "web-1")
        .expect("force-deleting web-1");
    kube.wait_slices(NS, SVC, WAIT, |s| {
        endpoint_for(s, a).is_none() && endpoint_for(s, b).is_some()
    })
    .expect("web-1 gone from the slice");
    step("web-1 gone");

    // The namespace controller runs: a deleted namespace goes away instead of staying Terminating.
    kube.kubectl(&["create", "namespace", "scratch"])
        .expect("creating a namespace");
    kube.kubectl(&["delete", "namespace", "scratch", "--timeout=30s"])
        .expect("namespace deletion finishes");
    step("namespace deleted");

    kube.stop_apiserver().expect("stopping the API server");
    assert!(
        kube.kubectl(&["get", "service", "-n", NS, SVC]).is_err(),
        "the API server still answers after being killed"
    );
    step("API server stopped");
    kube.start_apiserver().expect("restarting the API server");
    step("API server restarted");
    let svc: Value = serde_json::from_str(
        &kube
            .kubectl(&["get", "service", "-n", NS, SVC, "-o", "json"])
            .expect("reading the Service after the restart"),
    )
    .expect("Service JSON");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.50");
    // The slice controller reconnected and still sees the remaining pod.
    kube.set_pod_ready(NS, "web-2", true)
        .expect("web-2 ready again");
    kube.wait_slices(NS, SVC, WAIT, |s| condition(s, b, "ready") == Some(true))
        .expect("controller manager works after the API server restart");
    step("controller manager follows the restarted API server");

    let logs = kube.log_path("kube-apiserver");
    drop(kube);
    assert!(!logs.exists(), "{} left behind", logs.display());
    step("torn down");
}
