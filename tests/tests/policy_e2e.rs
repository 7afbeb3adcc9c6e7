//! NetworkPolicy end to end: real containers on a private bridge, in several "namespaces" (the
//! `io.kubernetes.pod.namespace` label), a real agent enforcing policies applied with
//! `berth policy apply`, and real HTTP connections (busybox httpd and wget) checked after every
//! change. A denial is checked three ways: the connection fails, the agent's denial counter
//! rises, and a `denied` verdict event names the endpoint.
//!
//! Traffic stays on the test's bridge: only the containers' addresses are connected to.

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use berth_tests::{
    agent::{AgentCleanup, AgentEngine, AgentProcess, sample},
    cluster::in_netns_path,
    network::{NetEnv, text},
    privileged::require_root,
};
use serde_json::Value;

/// The containers every scenario uses.
struct Cluster {
    // Dropped first: the containers, then the agent and its pins.
    env: NetEnv,
    agent: AgentProcess,
    _cleanup: AgentCleanup,
}

const SERVER: &str = "mkdir -p /www && echo ok > /www/index.html && \
     httpd -p 8080 -h /www && httpd -p 9090 -h /www && httpd -p 7070 -h /www && \
     httpd -p 53 -h /www && exec sleep 100000";

impl Cluster {
    fn start(tag: &str, octet: u8) -> Cluster {
        let AgentEngine {
            env,
            agent,
            cleanup,
        } = AgentEngine::start(tag, octet);
        Cluster {
            env,
            agent,
            _cleanup: cleanup,
        }
    }

    /// A container in namespace `ns` with `labels` (KEY=VALUE) serving HTTP on 8080, 9090, 7070
    /// and 53 (TCP).
    fn pod(&self, name: &str, ns: &str, labels: &[&str]) -> String {
        let mut extra = vec![
            "--label".to_owned(),
            format!("io.kubernetes.pod.namespace={ns}"),
        ];
        for l in labels {
            extra.push("--label".into());
            extra.push((*l).to_owned());
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.env
            .run_detached(name, &extra, &["/bin/sh", "-c", SERVER])
            .expect("run pod");
        let ip = self.env.ip_of(name).expect("ip").to_string();
        // Up when its own server answers.
        let mut last = (0, String::new(), String::new());
        for _ in 0..50 {
            last = self.env.exec(
                name,
                &[
                    "timeout",
                    "1",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    "http://127.0.0.1:8080/",
                ],
            );
            if last.1.trim() == "ok" {
                return ip;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs = text(&self.env.berth(&["logs", name]).stdout);
        panic!("{name}'s servers did not start: {last:?}; logs: {logs}");
    }

    /// Whether `from` gets an answer from `to_ip:port` (one attempt; a denied SYN times out; busybox's own wget -T crashes here, hence timeout).
    fn connects(&self, from: &str, to_ip: &str, port: u16) -> bool {
        let url = format!("http://{to_ip}:{port}/");
        let (code, out, _) = self
            .env
            .exec(from, &["timeout", "2", "wget", "-q", "-O", "-", &url]);
        code == 0 && out.trim() == "ok"
    }

    fn apply(&self, yaml: &str) -> String {
        let file = self.env.dir.path().join("policy.yaml");
        std::fs::write(&file, yaml).expect("write");
        let out = self
            .env
            .berth(&["policy", "apply", "-f", &file.to_string_lossy()]);
        assert!(out.status.success(), "policy apply: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn denied(&self, direction: &str) -> f64 {
        let metrics = self.agent.scrape().expect("scrape");
        sample(
            &metrics,
            &format!("berth_policy_verdicts_total{{action=\"denied\",direction=\"{direction}\"}}"),
        )
        .unwrap_or(0.0)
    }

    fn events(&self) -> Vec<Value> {
        let out = self.env.berth(&["events", "--type", "policy_verdict"]);
        assert!(out.status.success(), "events: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect()
    }

    /// Asserts `from` cannot reach `to_ip:port`, that the kernel counted the denial in
    /// `direction`, and that a denied event for the flow was streamed, naming the policies
    /// that decided it.
    fn assert_denied(&self, from: &str, to_ip: &str, port: u16, direction: &str) {
        let before = self.denied(direction);
        assert!(
            !self.connects(from, to_ip, port),
            "{from} -> {to_ip}:{port} should be denied"
        );
        assert!(
            self.denied(direction) > before,
            "the {direction} denial of {from} -> {to_ip}:{port} was not counted:\n{}\n{}\n{}",
            self.agent
                .scrape()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("berth_policy"))
                .collect::<Vec<_>>()
                .join("\n"),
            text(&self.env.berth(&["policy", "ls"]).stdout),
            self.agent.logs()
        );
        let events = self.events();
        assert!(
            events.iter().any(|e| e["verdict"] == "denied"
                && e["direction"] == direction
                && e["selected_by"].as_array().is_some_and(|p| !p.is_empty())
                && e["dst"]["ip"] == to_ip
                && e["dst"]["port"] == port),
            "no denied event for {from} -> {to_ip}:{port}: {events:#?}"
        );
    }

    /// The network namespace of a running container.
    fn netns(&self, container: &str) -> String {
        let doc = self.env.inspect(container).expect("inspect");
        format!(
            "/proc/{}/ns/net",
            doc["State"]["Pid"].as_u64().expect("pid")
        )
    }

    /// A UDP socket bound to `port` in `container`'s namespace, answering every datagram with
    /// "ok" until the returned flag is set (busybox's nc has no UDP here, so the test serves
    /// from its own thread).
    fn udp_server(
        &self,
        container: &str,
        port: u16,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let sock = in_netns_path(&self.netns(container), move || {
            UdpSocket::bind(("0.0.0.0", port))
        })
        .expect("netns")
        .expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(b"ok", from);
                }
            }
        });
        (stop, thread)
    }

    /// Whether a datagram from `from` to `to_ip:port` gets its answer within a second.
    fn udp_answers(&self, from: &str, to_ip: &str, port: u16) -> bool {
        let to = format!("{to_ip}:{port}");
        in_netns_path(&self.netns(from), move || -> std::io::Result<bool> {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            sock.set_read_timeout(Some(Duration::from_secs(1)))?;
            sock.send_to(b"query", &to)?;
            let mut buf = [0u8; 8];
            Ok(matches!(sock.recv_from(&mut buf), Ok((2, _))) && &buf[..2] == b"ok")
        })
        .expect("netns")
        .unwrap_or(false)
    }

    /// The connection fails (with no agent to ask for counters or events).
    fn assert_denied_quietly(&self, from: &str, to_ip: &str, port: u16) {
        assert!(
            !self.connects(from, to_ip, port),
            "{from} -> {to_ip}:{port} should be denied"
        );
    }

    fn explain(&self, from: &str, to: &str, port: &str) -> (bool, String) {
        let out = self.env.berth(&[
            "policy", "explain", "--from", from, "--to", to, "--port", port,
        ]);
        (out.status.success(), text(&out.stdout))
    }
}

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops, labels: {team: ops}}
";

#[test]
fn ingress_policies_are_enforced_on_real_connections() {
    if !require_root("ingress_policies_are_enforced_on_real_connections") {
        return;
    }
    let c = Cluster::start("polin", 31);
    let web = c.pod("web", "shop", &["app=web", "port.berth.io/http=8080"]);
    c.pod("api", "shop", &["app=api"]);
    c.pod("other", "shop", &["app=other"]);
    let monitor = c.pod("monitor", "ops", &["app=monitor"]);

    // Selected by no policy: everything is allowed.
    assert!(c.connects("api", &web, 8080));
    assert!(c.connects("monitor", &web, 9090));
    c.apply(NAMESPACES);

    // Deny all ingress in shop.
    let out = c.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress]}
",
    );
    assert!(out.contains("networkpolicy/shop/deny-all created"), "{out}");
    c.assert_denied("api", &web, 8080, "ingress");
    let (ok, said) = c.explain("shop/api", "shop/web", "8080/TCP");
    assert!(!ok, "explain exits 1 on a denial");
    assert!(
        said.contains("DENIED") && said.contains("shop/deny-all"),
        "{said}"
    );
    // Egress is not governed: web still reaches a pod of another namespace, and the replies
    // pass web's deny-all ingress (enforcement is stateful).
    assert!(c.connects("web", &monitor, 8080));

    // Two overlapping policies are a union: allow app=api to the named port "http" of web.
    c.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: http}]
",
    );
    assert!(c.connects("api", &web, 8080), "allowed by the named port");
    c.assert_denied("api", &web, 9090, "ingress");
    c.assert_denied("other", &web, 8080, "ingress");
    let (ok, said) = c.explain("api", "web", "8080");
    assert!(
        ok && said.contains("allowed by shop/web-from-api ingress rule 0"),
        "{said}"
    );
    let events = c.events();
    assert!(
        events.iter().any(|e| e["verdict"] == "allowed"
            && e["policy"] == "shop/web-from-api"
            && e["endpoint"] == "shop/web"),
        "an allowed event names the deciding policy: {events:#?}"
    );

    // From a namespace (by its labels), to a port range.
    c.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-ops, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: ops}}}]
    ports: [{port: 9000, endPort: 9100}]
",
    );
    assert!(
        c.connects("monitor", &web, 9090),
        "ops is allowed 9000-9100"
    );
    c.assert_denied("monitor", &web, 8080, "ingress");
    c.assert_denied("other", &web, 9090, "ingress");

    // ipBlock with except: the pod network but not api.
    let api = c.env.ip_of("api").expect("ip").to_string();
    c.apply(&format!(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-block, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - from: [{{ipBlock: {{cidr: {}, except: [{api}/32]}}}}]
    ports: [{{port: 7070}}]
",
        c.env.subnet
    ));
    assert!(c.connects("other", &web, 7070), "in the block");
    c.assert_denied("api", &web, 7070, "ingress");

    // The node may always reach its pods.
    let node = c.env.gateway().to_string();
    let (ok, said) = c.explain(&node, "shop/web", "8080");
    assert!(ok && said.contains("node"), "{said}");

    // Audit mode for the namespace: denials pass and are reported as audit.
    c.apply(
        "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop, policy.berth.io/audit: \"true\"}}
",
    );
    assert!(c.connects("other", &web, 8080), "audit mode does not drop");
    let events = c.events();
    assert!(
        events.iter().any(|e| e["verdict"] == "audit"
            && e["endpoint"] == "shop/web"
            && e["dst"]["port"] == 8080),
        "the would-be denial is reported: {events:#?}"
    );

    // `policy ls` shows what selects what; deleting the deny-all and the allow rules opens web.
    let ls = text(&c.env.berth(&["policy", "ls"]).stdout);
    assert!(ls.contains("shop/deny-all") && ls.contains("web"), "{ls}");
    for name in ["deny-all", "web-from-api", "web-from-ops", "web-from-block"] {
        let out = c.env.berth(&["policy", "delete", &format!("shop/{name}")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert!(
        c.connects("other", &web, 9090),
        "no policy selects web any more"
    );
}

#[test]
fn egress_policies_allow_dns_and_replies_and_bad_input_changes_nothing() {
    if !require_root("egress_policies_allow_dns_and_replies_and_bad_input_changes_nothing") {
        return;
    }
    let c = Cluster::start("poleg", 32);
    let server = c.pod("server", "default", &["app=server"]);
    let client = c.pod("client", "default", &["app=client"]);
    assert!(c.connects("client", &server, 8080));

    // Egress deny except DNS (UDP and TCP 53).
    c.apply(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-only}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
",
    );
    assert!(
        c.connects("client", &server, 53),
        "DNS is allowed (its replies too)"
    );
    c.assert_denied("client", &server, 8080, "egress");
    let (stop_dns, dns) = c.udp_server("server", 53);
    let (stop_other, other) = c.udp_server("server", 5353);
    assert!(
        c.udp_answers("client", &server, 53),
        "DNS over UDP and its answer pass"
    );
    let before = c.denied("egress");
    assert!(
        !c.udp_answers("client", &server, 5353),
        "other UDP is denied"
    );
    assert!(c.denied("egress") > before, "the UDP denial was counted");
    // The server's sockets keep its namespace alive: close them before the pods go.
    for (stop, thread) in [(stop_dns, dns), (stop_other, other)] {
        stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
    // Ingress to the client is not governed; its replies to the server's connections pass.
    assert!(c.connects("server", &client, 8080));

    // Bad input: a clear error naming the policy and field, and nothing changes.
    let bad = c.env.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]
",
    )
    .expect("write");
    let out = c
        .env
        .berth(&["policy", "apply", "-f", &bad.to_string_lossy()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("NetworkPolicy default/bad") && err.contains("except"),
        "{err}"
    );
    assert!(
        c.connects("server", &client, 8080),
        "the bad policy was not applied"
    );
    c.assert_denied("client", &server, 8080, "egress");

    // SIGKILL the agent: the pinned maps keep enforcing; the restarted agent recompiles the
    // persisted policies to the same identities and tables and rewrites no table and no
    // endpoint (prefixes are not asserted: the node's addresses are the host's, which other
    // activity on the machine may change meanwhile).
    let mut c = c;
    c.agent.signal(libc::SIGKILL).expect("kill");
    let _ = c.agent.wait(Duration::from_secs(5));
    c.assert_denied_quietly("client", &server, 8080);
    assert!(c.connects("client", &server, 53));
    let root = c.env.root().to_string_lossy().into_owned();
    c.agent = AgentProcess::start(
        &c.agent.paths,
        &["--pod-cidr", &c.env.subnet, "--engine-root", &root],
    )
    .expect("restart");
    let logs = c.agent.logs();
    let restart = logs
        .rsplit("agent ready")
        .nth(1)
        .unwrap_or_default()
        .rsplit("data plane loaded")
        .next()
        .unwrap_or_default();
    assert!(
        restart.contains("policies reconciled from the persisted state")
            && restart.contains("tables_written: 0")
            && restart.contains("endpoints_written: 0"),
        "the restart rewrote policy state:\n{restart}"
    );
    c.assert_denied("client", &server, 8080, "egress");
    assert!(c.connects("client", &server, 53));
}
