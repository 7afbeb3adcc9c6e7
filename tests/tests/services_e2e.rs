//! Services end to end: a test agent with the socket-level load balancer on a private cgroup,
//! netns "pods" running servers that answer with their name, and clients (the `lbclient`
//! binary) in a client pod inside that cgroup, or in an "outside" namespace behind the uplink.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    process::Stdio,
    time::Duration,
};

use berth_tests::{
    agent::{AgentPaths, AgentProcess, sample},
    cluster::{Forwarding, Pod, TestCgroup, client, client_command, service_yaml, svc, tally},
    privileged::require_root,
};

const VIP: &str = "10.96.77.10";
const PORT: u16 = 8080;

/// The agent, its cgroup, a client pod and `n` backend pods serving on PORT.
struct Fixture {
    agent: AgentProcess,
    agent_args: Vec<String>,
    cgroup: TestCgroup,
    client: Pod,
    backends: Vec<Pod>,
    _forwarding: Forwarding,
}

impl Fixture {
    fn new(tag: &str, n: u8, extra: &[&str]) -> Self {
        let forwarding = Forwarding::enable().expect("enable forwarding");
        let cgroup = TestCgroup::create(tag).expect("cgroup");
        let client = Pod::create("cli", 40).expect("client pod");
        let mut backends = Vec::new();
        for i in 0..n {
            let mut pod = Pod::create(&format!("be{i}"), 41 + i).expect("backend pod");
            pod.serve(PORT).expect("server");
            backends.push(pod);
        }
        let paths = AgentPaths::new(tag).expect("paths");
        let cg = cgroup.path.display().to_string();
        let mut args = vec!["--cgroup", cg.as_str()];
        args.extend_from_slice(extra);
        let agent = match AgentProcess::start(&paths, &args) {
            Ok(agent) => agent,
            Err(err) => {
                // No Fixture exists yet to clean up on drop: remove the pins here.
                paths.cleanup();
                panic!("agent: {err:#}");
            }
        };
        Self {
            agent,
            agent_args: args.iter().map(|a| a.to_string()).collect(),
            cgroup,
            client,
            backends,
            _forwarding: forwarding,
        }
    }

    /// Kills the agent with SIGKILL and starts a new one on the same pins and state.
    fn restart_after_sigkill(&mut self) {
        self.agent.signal(libc::SIGKILL).expect("kill");
        self.agent
            .wait(Duration::from_secs(10))
            .expect("agent exits");
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let paths = self.agent.paths.clone();
        self.agent = AgentProcess::start(&paths, &args).expect("agent restarts");
    }

    fn apply(&self, yaml: &str) {
        let (ok, out, err) = svc(&self.agent.paths.api_socket, &["apply", "-f", "-"], yaml)
            .expect("berth svc apply");
        assert!(ok, "svc apply failed: {out}{err}\n{}", self.agent.logs());
    }

    fn endpoints(&self, which: &[usize]) -> Vec<(Ipv4Addr, bool, bool, bool)> {
        which
            .iter()
            .map(|&i| (self.backends[i].ip(), true, true, false))
            .collect()
    }

    /// Greeting lines of `n` fresh connections from the client pod to `addr`.
    fn connect_many(&self, addr: &str, n: usize) -> Vec<String> {
        client(
            Some(&self.cgroup.path),
            Some(&self.client.net.ns),
            &["tcp-count", addr, &n.to_string()],
        )
        .expect("client")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.agent.paths.cleanup();
    }
}

#[test]
fn cluster_ip_spreads_connections_over_ready_backends_only() {
    if !require_root("cluster_ip_spreads_connections_over_ready_backends_only") {
        return;
    }
    let fx = Fixture::new("spread", 4, &[]);
    let mut eps = fx.endpoints(&[0, 1, 2]);
    // A terminating (still serving) endpoint takes no traffic while ready ones exist.
    eps.push((fx.backends[3].ip(), false, true, true));
    fx.apply(&service_yaml("web", VIP, "", &eps, PORT));

    let lines = fx.connect_many(&format!("{VIP}:80"), 60);
    let counts = tally(&lines);
    assert_eq!(
        counts.keys().cloned().collect::<Vec<_>>(),
        vec!["be0", "be1", "be2"],
        "60 connections reach exactly the three ready backends: {counts:?}"
    );

    // UDP to the same service (port 53 → named target port), replies appear to come from the VIP.
    let replies = client(
        Some(&fx.cgroup.path),
        Some(&fx.client.net.ns),
        &["udp-count", &format!("{VIP}:53"), "12"],
    )
    .expect("udp client");
    for r in &replies {
        assert!(
            r.ends_with(&format!("from {VIP}:53")),
            "reply shown from the service address: {r}"
        );
    }
    // getpeername() of a connected UDP socket shows the service too.
    let peer = client(
        Some(&fx.cgroup.path),
        Some(&fx.client.net.ns),
        &["peer", &format!("{VIP}:53")],
    )
    .expect("peer");
    assert_eq!(peer[0], format!("peer {VIP}:53"));

    // When no ready endpoint is left, the terminating one serves (kube-proxy's fallback).
    let only_terminating = vec![(fx.backends[3].ip(), false, true, true)];
    fx.apply(&service_yaml("web", VIP, "", &only_terminating, PORT));
    let lines = fx.connect_many(&format!("{VIP}:80"), 5);
    assert!(lines.iter().all(|l| l == "be3"), "{lines:?}");

    let metrics = fx.agent.scrape().expect("scrape");
    let forwarded = sample(
        &metrics,
        r#"berth_lb_packets_total{path="sock_connect",reason="backend",verdict="forwarded"}"#,
    )
    .expect("forwarded counter");
    assert!(forwarded >= 65.0, "{forwarded}");
    assert_eq!(sample(&metrics, "berth_lb_services"), Some(1.0));
}

#[test]
fn session_affinity_sticks_then_expires() {
    if !require_root("session_affinity_sticks_then_expires") {
        return;
    }
    let fx = Fixture::new("affinity", 3, &[]);
    let spec = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 1\n";
    fx.apply(&service_yaml(
        "sticky",
        VIP,
        spec,
        &fx.endpoints(&[0, 1, 2]),
        PORT,
    ));
    let lines = fx.connect_many(&format!("{VIP}:80"), 30);
    assert_eq!(tally(&lines).len(), 1, "one client, one backend: {lines:?}");

    // After the timeout each new choice is free again: over 8 expiries, at least two backends.
    let mut seen = BTreeMap::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1100));
        let l = fx.connect_many(&format!("{VIP}:80"), 1);
        *seen.entry(l[0].clone()).or_insert(0) += 1;
    }
    assert!(seen.len() >= 2, "affinity never expired: {seen:?}");
}

#[test]
fn removed_backend_keeps_established_connection_new_ones_avoid_it() {
    if !require_root("removed_backend_keeps_established_connection_new_ones_avoid_it") {
        return;
    }
    let fx = Fixture::new("drain", 3, &[]);
    fx.apply(&service_yaml(
        "drain",
        VIP,
        "",
        &fx.endpoints(&[0, 1, 2]),
        PORT,
    ));

    let mut held = client_command(
        Some(&fx.cgroup.path),
        Some(&fx.client.net.ns),
        &["tcp-hold", &format!("{VIP}:80")],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("client");
    let mut stdin = held.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(held.stdout.take().expect("stdout"));
    let mut greeting = String::new();
    stdout.read_line(&mut greeting).expect("greeting");
    let pinned = greeting.trim().to_owned();
    let index: usize = pinned
        .trim_start_matches("be")
        .parse()
        .expect("backend name");

    // Remove that backend from the service.
    let rest: Vec<usize> = (0..3).filter(|i| *i != index).collect();
    fx.apply(&service_yaml("drain", VIP, "", &fx.endpoints(&rest), PORT));

    writeln!(stdin, "still-there").expect("send");
    let mut answer = String::new();
    stdout.read_line(&mut answer).expect("answer");
    assert_eq!(answer.trim(), format!("{pinned} still-there"));

    let lines = fx.connect_many(&format!("{VIP}:80"), 30);
    assert!(
        !lines.contains(&pinned),
        "new connections avoid the removed backend {pinned}: {lines:?}"
    );
    drop(stdin);
    let _ = held.wait();
}

#[test]
fn service_without_backends_rejects_and_bad_manifests_change_nothing() {
    if !require_root("service_without_backends_rejects_and_bad_manifests_change_nothing") {
        return;
    }
    let fx = Fixture::new("reject", 1, &[]);
    fx.apply(&service_yaml("empty", VIP, "", &[], PORT));
    let started = std::time::Instant::now();
    let lines = fx.connect_many(&format!("{VIP}:80"), 3);
    assert!(
        lines.iter().all(|l| l == "ERR ConnectionRefused"),
        "{lines:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "rejected at once, not timed out"
    );
    let udp = client(
        Some(&fx.cgroup.path),
        Some(&fx.client.net.ns),
        &["udp-count", &format!("{VIP}:53"), "1"],
    )
    .expect("udp");
    assert_eq!(udp, vec!["ERR ConnectionRefused"]);

    // A bad manifest: an out-of-range port. Nothing changes (the service stays as it was).
    let good = service_yaml("empty", VIP, "", &fx.endpoints(&[0]), PORT);
    let bad = good.replace("port: 80", "port: 70000");
    let (ok, out, err) = svc(&fx.agent.paths.api_socket, &["apply", "-f", "-"], &bad).expect("svc");
    assert!(!ok, "an invalid manifest is refused: {out}");
    assert!(
        err.contains("spec.ports[0].port"),
        "the error names the field: {err}"
    );
    let lines = fx.connect_many(&format!("{VIP}:80"), 1);
    assert_eq!(lines, vec!["ERR ConnectionRefused"], "still the old state");

    // Then the good one applies and `svc ls/show` report it.
    fx.apply(&good);
    assert_eq!(fx.connect_many(&format!("{VIP}:80"), 1), vec!["be0"]);
    let (ok, out, _) = svc(&fx.agent.paths.api_socket, &["ls"], "").expect("ls");
    assert!(
        ok && out.contains("default/empty") && out.contains(&format!("{VIP}:80/TCP")),
        "{out}"
    );
    let (ok, out, _) =
        svc(&fx.agent.paths.api_socket, &["show", "default/empty"], "").expect("show");
    assert!(
        ok && out.contains(&fx.backends[0].ip().to_string()),
        "{out}"
    );

    // Deleting the service makes its VIP a plain address again (nothing answers there).
    let (ok, _, err) =
        svc(&fx.agent.paths.api_socket, &["delete", "default/empty"], "").expect("delete");
    assert!(ok, "{err}");
    let (_, out, _) = svc(&fx.agent.paths.api_socket, &["ls"], "").expect("ls");
    assert!(!out.contains("default/empty"), "{out}");
}

#[test]
fn nodeport_from_outside_through_the_uplink() {
    if !require_root("nodeport_from_outside_through_the_uplink") {
        return;
    }
    let outside = Pod::create("out", 60).expect("outside namespace");
    let uplink = outside.net.host_if.clone();
    let node_ip = outside.net.host_addr.clone();
    let fx = Fixture::new("nodeport", 2, &["--xdp-iface", &uplink]);
    for pod in &fx.backends {
        assert!(
            berth::dataplane::pods::attach_pod_veth(&fx.agent.paths.pin_root, &pod.net.host_if)
                .expect("attach tc to the pod's veth"),
            "the agent pinned the pod program"
        );
    }
    let spec = "  type: NodePort\n";
    let yaml = service_yaml("np", VIP, spec, &fx.endpoints(&[0, 1]), PORT)
        .replace(
            "    targetPort: web\n",
            "    targetPort: web\n    nodePort: 30080\n",
        )
        .replace(
            "    targetPort: web-udp\n",
            "    targetPort: web-udp\n    nodePort: 30053\n",
        );
    fx.apply(&yaml);

    // The outside client is in no berth cgroup: only XDP on the uplink can translate for it.
    let lines = client(
        None,
        Some(&outside.net.ns),
        &["tcp-count", &format!("{node_ip}:30080"), "20"],
    )
    .expect("outside client");
    let counts = tally(&lines);
    assert!(
        counts.keys().all(|k| k == "be0" || k == "be1") && counts.len() == 2,
        "NodePort from outside reaches both backends: {counts:?}\n{}",
        fx.agent
            .scrape()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("berth_lb_packets") || l.starts_with("berth_xdp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let udp = client(
        None,
        Some(&outside.net.ns),
        &["udp-count", &format!("{node_ip}:30053"), "4"],
    )
    .expect("outside udp");
    for r in &udp {
        assert!(r.ends_with(&format!("from {node_ip}:30053")), "{r}");
    }
    let metrics = fx.agent.scrape().expect("scrape");
    let xdp = sample(
        &metrics,
        r#"berth_lb_packets_total{path="xdp",reason="backend",verdict="forwarded"}"#,
    )
    .unwrap_or(0.0);
    assert!(xdp >= 20.0, "XDP translated the flows: {xdp}");
    let revnat = sample(
        &metrics,
        r#"berth_lb_packets_total{path="tc_pod",reason="reverse_nat",verdict="forwarded"}"#,
    )
    .unwrap_or(0.0);
    assert!(revnat >= 20.0, "tc reverse-NATed the replies: {revnat}");
}

#[test]
fn services_keep_working_through_agent_sigkill_and_restart() {
    if !require_root("services_keep_working_through_agent_sigkill_and_restart") {
        return;
    }
    let mut fx = Fixture::new("restart", 2, &[]);
    fx.apply(&service_yaml("keep", VIP, "", &fx.endpoints(&[0, 1]), PORT));
    let before = fx.agent.scrape().expect("scrape");
    let frontends = sample(&before, "berth_lb_frontends").expect("frontends gauge");
    assert!(frontends >= 2.0, "{frontends}");

    fx.agent.signal(libc::SIGKILL).expect("kill");
    fx.agent.wait(Duration::from_secs(10)).expect("agent exits");
    // No agent: the pinned programs and maps keep serving.
    let lines = fx.connect_many(&format!("{VIP}:80"), 10);
    assert!(lines.iter().all(|l| l == "be0" || l == "be1"), "{lines:?}");

    let args: Vec<&str> = fx.agent_args.iter().map(String::as_str).collect();
    let paths = fx.agent.paths.clone();
    fx.agent = AgentProcess::start(&paths, &args).expect("agent restarts");
    let after = fx.agent.scrape().expect("scrape");
    assert_eq!(
        sample(&after, "berth_lb_frontends"),
        Some(frontends),
        "no duplicates"
    );
    assert_eq!(
        sample(&after, "berth_lb_services"),
        Some(1.0),
        "state persisted"
    );
    assert!(
        fx.agent
            .logs()
            .contains("added=0 updated=0 removed=0 unchanged="),
        "the restart reconciled without rewriting anything:\n{}",
        fx.agent.logs()
    );
    let lines = fx.connect_many(&format!("{VIP}:80"), 10);
    assert!(lines.iter().all(|l| l == "be0" || l == "be1"), "{lines:?}");

    // And it still takes changes.
    fx.apply(&service_yaml("keep", VIP, "", &fx.endpoints(&[1]), PORT));
    let lines = fx.connect_many(&format!("{VIP}:80"), 10);
    assert!(lines.iter().all(|l| l == "be1"), "{lines:?}");
    fx.restart_after_sigkill();
    let lines = fx.connect_many(&format!("{VIP}:80"), 5);
    assert!(lines.iter().all(|l| l == "be1"), "{lines:?}");
}
