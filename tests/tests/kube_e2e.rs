//! The Kubernetes node agent end to end: a real kube-apiserver 1.20.2 and its EndpointSlice
//! controller (in a namespace playing the control plane), a berth agent started with
//! `--kubeconfig`, netns "pods" serving on their real addresses whose Pod objects carry those
//! addresses, and a client pod inside the agent's cgroup connecting to the Service's ClusterIP.
//! No mock stands in for the API server; the slices are made by its controller from Pod status,
//! as on a real cluster (the test plays the kubelet by writing that status).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use berth_tests::{
    agent::{AgentPaths, AgentProcess, sample},
    cluster::{Forwarding, Pod, TestCgroup, client, svc, tally},
    kube_cluster::{KubeCluster, endpoint_for, require_binaries},
    privileged::require_root,
};

const NODE: &str = "node1";
const PORT: u16 = 8080;
/// Inside the API server's service range (10.96.0.0/16).
const VIP: &str = "10.96.77.20";
const VIP2: &str = "10.96.77.21";

struct Fixture {
    // Dropped in order: the agent (and its pins) before the cluster it watches.
    agent: AgentProcess,
    agent_args: Vec<String>,
    cgroup: TestCgroup,
    client: Pod,
    backends: Vec<Pod>,
    cluster: KubeCluster,
    _forwarding: Forwarding,
}

impl Fixture {
    fn new(tag: &str, n: u8) -> Self {
        let forwarding = Forwarding::enable().expect("enable forwarding");
        let cluster = KubeCluster::start(tag, 70, NODE).expect("Kubernetes control plane");
        let cgroup = TestCgroup::create(tag).expect("cgroup");
        let client = Pod::create("kcli", 71).expect("client pod");
        // Safety: a connection to a service address berth does not translate (a deleted
        // Service) fails here instead of following the default route towards the uplink.
        client
            .net
            .exec_ip(&["route", "add", "unreachable", "10.96.0.0/16"])
            .expect("unreachable route for the service range");
        let mut backends = Vec::new();
        for i in 0..n {
            let mut pod = Pod::create(&format!("kb{i}"), 72 + i).expect("backend pod");
            pod.serve(PORT).expect("server");
            backends.push(pod);
        }
        let paths = AgentPaths::new(tag).expect("paths");
        let args: Vec<String> = [
            "--cgroup",
            &cgroup.path.display().to_string(),
            "--kubeconfig",
            &cluster.kubeconfig.display().to_string(),
            "--node-name",
            NODE,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = match AgentProcess::start(&paths, &argv) {
            Ok(agent) => agent,
            Err(err) => {
                paths.cleanup();
                panic!("agent: {err:#}");
            }
        };
        Self {
            agent,
            agent_args: args,
            cgroup,
            client,
            backends,
            cluster,
            _forwarding: forwarding,
        }
    }

    fn restart_agent(&mut self) {
        let argv: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let paths = self.agent.paths.clone();
        self.agent = AgentProcess::start(&paths, &argv).expect("agent restarts");
    }

    fn service(&self, name: &str, vip: &str) {
        self.cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 80\n    targetPort: {PORT}\n"
            ))
            .expect("kubectl apply service");
    }

    /// The Pod object of backend `i`, serving Service `app`.
    fn pod(&self, i: usize, app: &str, ready: bool) {
        self.cluster
            .create_pod(
                "default",
                &format!("kb{i}"),
                &[("app", app)],
                self.backends[i].ip(),
                NODE,
                ready,
            )
            .expect("create pod");
    }

    fn connect_many(&self, addr: &str, n: usize) -> Vec<String> {
        client(
            Some(&self.cgroup.path),
            Some(&self.client.net.ns),
            &["tcp-count", addr, &n.to_string()],
        )
        .expect("client")
    }

    /// Connects until `n` fresh connections to `addr` answer exactly from `want` (each at
    /// least once, nothing else), at most 20 s; returns the last tally.
    fn wait_serving(&self, addr: &str, want: &[&str], n: usize) -> BTreeMap<String, usize> {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let counts = tally(&self.connect_many(addr, n));
            let seen: BTreeSet<String> = counts.keys().cloned().collect();
            if seen == want {
                return counts;
            }
            if Instant::now() > deadline {
                panic!(
                    "{addr}: wanted answers from {want:?}, got {counts:?}\nagent log:\n{}",
                    self.agent.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn scrape(&self) -> String {
        self.agent.scrape().expect("scrape")
    }

    /// Polls the metrics until `series` satisfies `pred` (at most 20 s).
    fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = sample(&self.scrape(), series);
            if let Some(v) = value
                && pred(v)
            {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{series} = {value:?}\nagent log:\n{}", self.agent.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls `pred` (at most 20 s).
    fn wait_until(&self, pred: impl Fn() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pred() {
            assert!(
                Instant::now() < deadline,
                "{what}: not after 20 s\nagent log:\n{}",
                self.agent.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn svc_ls(&self) -> String {
        let (ok, out, err) = svc(&self.agent.paths.api_socket, &["ls"], "").expect("svc ls");
        assert!(ok, "svc ls: {err}");
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.agent.paths.cleanup();
    }
}

fn prerequisites(test: &str) -> bool {
    require_root(test) && require_binaries(test)
}

#[test]
fn api_server_services_follow_endpoints_terminating_and_deletion() {
    if !prerequisites("api_server_services_follow_endpoints_terminating_and_deletion") {
        return;
    }
    let fx = Fixture::new("kube", 3);
    let vip = format!("{VIP}:80");
    fx.service("web", VIP);
    fx.pod(0, "web", true);
    fx.pod(1, "web", true);

    // The EndpointSlice controller makes the slice; berth programs it: both pods answer.
    let counts = fx.wait_serving(&vip, &["kb0", "kb1"], 40);
    assert!(
        counts.values().all(|&c| c >= 5),
        "40 connections spread over both pods: {counts:?}"
    );
    let ls = fx.svc_ls();
    assert!(
        ls.lines()
            .any(|l| l.contains("default/web") && l.contains(&vip) && l.ends_with("kubernetes")),
        "svc ls shows the Service and its source:\n{ls}"
    );

    // Scale up, then down.
    fx.pod(2, "web", true);
    fx.wait_serving(&vip, &["kb0", "kb1", "kb2"], 60);
    fx.cluster
        .delete_pod_now("default", "kb0")
        .expect("delete pod");
    fx.wait_serving(&vip, &["kb1", "kb2"], 30);

    // A file's Service of the same name wins over the API server's (a node-local override),
    // and the API server's comes back when the file's is deleted.
    let file = berth_tests::cluster::service_yaml(
        "web",
        VIP,
        "",
        &[(fx.backends[0].ip(), true, true, false)],
        PORT,
    );
    let (ok, out, err) =
        svc(&fx.agent.paths.api_socket, &["apply", "-f", "-"], &file).expect("svc apply");
    assert!(ok, "{out}{err}");
    fx.wait_serving(&vip, &["kb0"], 10);
    let ls = fx.svc_ls();
    assert!(
        ls.lines()
            .any(|l| l.contains("default/web") && l.ends_with("file (shadows kubernetes)")),
        "{ls}"
    );
    let (ok, out, err) =
        svc(&fx.agent.paths.api_socket, &["delete", "default/web"], "").expect("svc delete");
    assert!(ok, "{out}{err}");
    fx.wait_serving(&vip, &["kb1", "kb2"], 30);
    // A Service only the API server defines is not deleted from the node.
    let (ok, _, err) =
        svc(&fx.agent.paths.api_socket, &["delete", "default/web"], "").expect("svc delete");
    assert!(
        !ok && err.contains("comes from the Kubernetes API server"),
        "{err}"
    );
    fx.wait_serving(&vip, &["kb1", "kb2"], 10);

    // A Pod deleted gracefully stays Terminating (no kubelet confirms); its endpoint turns
    // terminating, still serving. As kube-proxy does, it takes no new connections while a
    // ready endpoint exists...
    fx.cluster
        .delete_pod_graceful("default", "kb1")
        .expect("graceful delete");
    fx.cluster
        .wait_slices("default", "web", Duration::from_secs(20), |s| {
            endpoint_for(s, fx.backends[1].ip())
                .is_some_and(|ep| ep["conditions"]["terminating"] == true)
        })
        .expect("terminating endpoint");
    fx.wait_serving(&vip, &["kb2"], 20);
    // ...and serves again when it is the only one left that does (the terminating fallback).
    fx.cluster
        .set_pod_ready("default", "kb2", false)
        .expect("kb2 not ready");
    fx.wait_serving(&vip, &["kb1"], 10);

    let metrics = fx.scrape();
    for series in [
        r#"berth_kube_objects{kind="Service"}"#,
        r#"berth_kube_objects{kind="EndpointSlice"}"#,
        r#"berth_kube_synced{kind="EndpointSlice"}"#,
    ] {
        let value = sample(&metrics, series).unwrap_or_default();
        assert!(value >= 1.0, "{series} = {value}");
    }
    let programmed = sample(&metrics, "berth_kube_programming_latency_seconds_count")
        .expect("programming latency histogram");
    assert!(programmed >= 5.0, "{programmed} changes measured");
    // Pod changes reach berth through the slice controller: measured from the change itself.
    let network = sample(
        &metrics,
        "berth_kube_network_programming_duration_seconds_count",
    )
    .expect("network programming histogram");
    // (The controller sets the trigger time only when a Pod condition carries its transition
    // time, which the test's status writes do not always.)
    assert!(
        network >= 1.0,
        "{network} slice changes measured from their trigger"
    );
    assert_eq!(sample(&metrics, "berth_kube_stale_seconds"), Some(0.0));
    let ready = berth_tests::agent::http_get(
        &fx.agent.metrics_addr().expect("metrics address"),
        "/readyz",
    )
    .expect("readyz");
    assert!(ready.contains("ok"), "{ready}");
    let status = fx.agent.status().expect("status");
    let kube = status
        .kubernetes
        .expect("status shows the Kubernetes source");
    assert!(kube.synced, "{kube:?}");
    assert_eq!(
        kube.endpoint_slices.as_deref(),
        Some("discovery.k8s.io/v1beta1"),
        "1.20 serves v1beta1 only"
    );

    // Deleting the Service removes its frontend (the API server's own `kubernetes` Service,
    // without endpoints here, keeps its one): the VIP no longer reaches any pod.
    assert_eq!(sample(&metrics, "berth_lb_frontends"), Some(2.0));
    fx.cluster
        .kubectl(&["delete", "service", "web"])
        .expect("delete service");
    fx.wait_metric("berth_lb_frontends", |v| v == 1.0);
    let lines = fx.connect_many(&vip, 3);
    assert!(
        lines.iter().all(|l| l.starts_with("ERR")),
        "no pod answers a deleted Service: {lines:?}"
    );
    assert!(!fx.svc_ls().contains("default/web"));
}

#[test]
fn api_server_restart_and_agent_sigkill_converge_without_stale_entries() {
    if !prerequisites("api_server_restart_and_agent_sigkill_converge_without_stale_entries") {
        return;
    }
    let mut fx = Fixture::new("kuberst", 3);
    let vip = format!("{VIP}:80");
    let vip2 = format!("{VIP2}:80");
    fx.service("web", VIP);
    fx.service("old", VIP2);
    fx.pod(0, "web", true);
    fx.pod(1, "web", true);
    fx.pod(2, "old", true);
    fx.wait_serving(&vip, &["kb0", "kb1"], 30);
    fx.wait_serving(&vip2, &["kb2"], 5);

    // The API server goes away: traffic keeps flowing on the last state, and the agent says
    // how stale its view is.
    fx.cluster.stop_apiserver().expect("stop apiserver");
    fx.wait_metric("berth_kube_stale_seconds", |v| v > 0.0);
    fx.wait_serving(&vip, &["kb0", "kb1"], 20);
    let status = fx.agent.status().expect("status");
    let kube = status.kubernetes.as_ref().expect("kubernetes status");
    assert!(kube.stale_seconds > 0.0, "{kube:?}");
    let table = status.render_table();
    assert!(table.contains("STALE for"), "{table}");

    // It comes back: the watches relist and the agent follows changes again.
    fx.cluster.start_apiserver().expect("start apiserver");
    fx.wait_metric("berth_kube_stale_seconds", |v| v == 0.0);
    fx.wait_metric(r#"berth_kube_watch_restarts_total{kind="Service"}"#, |v| {
        v >= 1.0
    });
    fx.cluster
        .delete_pod_now("default", "kb1")
        .expect("delete pod");
    fx.wait_serving(&vip, &["kb0"], 10);
    let frontends = sample(&fx.scrape(), "berth_lb_frontends").expect("frontends");
    assert_eq!(
        frontends, 3.0,
        "one ClusterIP frontend per Service (web, old, kubernetes), no duplicates"
    );

    // SIGKILL the agent under load: connections keep flowing through the pinned data plane.
    let load = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut lines = Vec::new();
            for _ in 0..10 {
                lines.extend(fx.connect_many(&vip, 20));
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(100));
        fx.agent.signal(libc::SIGKILL).expect("kill agent");
        load.join().expect("load")
    });
    assert_eq!(load.len(), 200);
    assert!(
        load.iter().all(|l| l == "kb0"),
        "every connection answered during the kill: {:?}",
        tally(&load)
    );
    fx.agent.wait(Duration::from_secs(10)).expect("agent exits");

    // While the agent is down the cluster changes: a Service is deleted, a pod is added.
    fx.cluster
        .kubectl(&["delete", "service", "old"])
        .expect("delete service");
    fx.pod(1, "web", true);
    fx.cluster
        .wait_slices("default", "web", Duration::from_secs(20), |s| {
            endpoint_for(s, fx.backends[1].ip()).is_some()
        })
        .expect("slice has kb1 again");

    // The restarted agent starts from its cache, then its first lists replace it: the deleted
    // Service's frontend goes, the new pod is served, nothing is duplicated.
    fx.restart_agent();
    fx.wait_serving(&vip, &["kb0", "kb1"], 40);
    fx.wait_metric("berth_lb_frontends", |v| v == 2.0);
    assert_eq!(sample(&fx.scrape(), "berth_lb_services"), Some(2.0));
    let lines = fx.connect_many(&vip2, 3);
    assert!(
        lines.iter().all(|l| l.starts_with("ERR")),
        "the Service deleted while the agent was down is gone: {lines:?}"
    );
    let ls = fx.svc_ls();
    assert!(!ls.contains("default/old"), "{ls}");
}

/// The DaemonSet, its ServiceAccount and read-only RBAC are accepted by a real API server, and
/// the role grants exactly the reads the agent needs.
#[test]
fn deploy_manifests_are_accepted_and_grant_only_reads() {
    if !prerequisites("deploy_manifests_are_accepted_and_grant_only_reads") {
        return;
    }
    let cluster = KubeCluster::start("kdeploy", 70, NODE).expect("Kubernetes control plane");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/berth.yaml");
    let out = cluster
        .kubectl(&["apply", "--dry-run=server", "-f", manifest])
        .expect("the API server accepts deploy/berth.yaml");
    for object in [
        "serviceaccount/berth",
        "clusterrole.rbac.authorization.k8s.io/berth-agent",
        "clusterrolebinding.rbac.authorization.k8s.io/berth-agent",
        "daemonset.apps/berth",
    ] {
        assert!(out.contains(object), "{object} not in:\n{out}");
    }
    // Applied for real, the binding gives the agent's service account every read it needs
    // and no write, no Secret.
    cluster
        .kubectl(&["apply", "-f", manifest])
        .expect("apply deploy/berth.yaml");
    // `auth can-i` exits 0 for yes, 1 for no (the yes checks show the API server answers).
    let can = |verb: &str, resource: &str| {
        cluster
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                resource,
                "--as=system:serviceaccount:kube-system:berth",
            ])
            .is_ok()
    };
    for resource in [
        "services",
        "endpointslices.discovery.k8s.io",
        "pods",
        "namespaces",
        "networkpolicies.networking.k8s.io",
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(can(verb, resource), "may {verb} {resource}");
        }
        for verb in ["create", "update", "patch", "delete"] {
            assert!(!can(verb, resource), "may not {verb} {resource}");
        }
    }
    assert!(!can("get", "secrets"), "no Secrets");
    assert!(!can("list", "nodes"), "no Nodes (not read)");
}

/// A NetworkPolicy created through the API server is enforced on this node's API pods: the
/// client whose Pod object carries the allowed label gets through, another is denied (the
/// connection fails and the kernel counts the denial); deleting the policy opens it again.
#[test]
fn network_policy_from_the_api_server_is_enforced() {
    if !prerequisites("network_policy_from_the_api_server_is_enforced") {
        return;
    }
    let fx = Fixture::new("kubepol", 1);
    let other = Pod::create("kcli2", 76).expect("second client pod");
    fx.pod(0, "web", true);
    for (pod, role) in [(&fx.client, "frontend"), (&other, "other")] {
        fx.cluster
            .create_pod(
                "default",
                &pod.name,
                &[("role", role)],
                pod.ip(),
                NODE,
                true,
            )
            .expect("client Pod object");
    }
    let server = format!("{}:{PORT}", fx.backends[0].ip());
    let from =
        |pod: &Pod| client(None, Some(&pod.net.ns), &["tcp-count", &server, "1"]).expect("client");
    assert_eq!(from(&fx.client), vec!["kb0"], "no policy yet");
    assert_eq!(from(&other), vec!["kb0"], "no policy yet");

    fx.cluster
        .apply(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web-from-frontend\n  namespace: default\nspec:\n  podSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          role: frontend\n    ports:\n    - port: {PORT}\n"
        ))
        .expect("kubectl apply networkpolicy");
    let denied = r#"berth_policy_verdicts_total{action="denied",direction="ingress"}"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if from(&other) != vec!["kb0"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy is not enforced after 20 s:\n{}",
            fx.agent.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(from(&fx.client), vec!["kb0"], "the frontend pod is allowed");
    let before = sample(&fx.scrape(), denied).unwrap_or_default();
    let lines = from(&other);
    assert!(lines[0].starts_with("ERR"), "{lines:?}");
    let after = sample(&fx.scrape(), denied).unwrap_or_default();
    assert!(
        after > before,
        "the kernel counted the denial: {before} -> {after}"
    );
    let (ok, out, err) = berth_tests::cluster::policy(
        &fx.agent.paths.api_socket,
        &[
            "explain",
            "--from",
            &other.ip().to_string(),
            "--to",
            "default/kb0",
            "--port",
            &format!("{PORT}/TCP"),
        ],
    )
    .expect("policy explain");
    assert!(
        !ok && out.contains("default/web-from-frontend"),
        "explain names the policy from the API server: {out}{err}"
    );

    let (ok, out, err) =
        berth_tests::cluster::policy(&fx.agent.paths.api_socket, &["ls"]).expect("policy ls");
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("default/web-from-frontend")
                && l.contains("kubernetes")
                && l.contains("kb0")),
        "policy ls shows the API server's policy and the pod it selects: {out}{err}"
    );

    // Relabel the second client's Pod: it is allowed now.
    fx.cluster
        .kubectl(&["label", "pod", &other.name, "role=frontend", "--overwrite"])
        .expect("relabel");
    fx.wait_until(|| from(&other) == vec!["kb0"], "relabelled pod allowed");

    // Deleting the policy through the API lifts it.
    fx.cluster
        .kubectl(&["label", "pod", &other.name, "role=other", "--overwrite"])
        .expect("relabel back");
    fx.wait_until(|| from(&other) != vec!["kb0"], "denied again");
    fx.cluster
        .kubectl(&["delete", "networkpolicy", "web-from-frontend"])
        .expect("delete networkpolicy");
    fx.wait_until(|| from(&other) == vec!["kb0"], "policy deleted");
}

/// A kubeconfig the agent cannot read fails its start with an error naming the file, before
/// anything is loaded: no pins, no socket left behind.
#[test]
fn a_bad_kubeconfig_fails_the_start_and_loads_nothing() {
    if !require_root("a_bad_kubeconfig_fails_the_start_and_loads_nothing") {
        return;
    }
    let paths = AgentPaths::new("kubebad").expect("paths");
    let _cleanup = berth_tests::agent::AgentCleanup(paths.clone());
    let out = paths
        .command("agent")
        .expect("command")
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "--state-dir"])
        .arg(paths.state_dir())
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("reading the kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
    assert!(!paths.pin_root.exists(), "nothing was pinned");
    assert!(!paths.api_socket.exists(), "no socket left behind");
}
