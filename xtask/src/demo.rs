//! `cargo xtask demo`: berth's main job on an embedded default, end to end on this machine.
//!
//! 1. a "pod" network namespace joined to the host by a veth (10.199.0.1 ↔ 10.199.0.2);
//! 2. `berth agent` with the default pin root, API socket and metrics address, XDP on the
//!    veth's host end;
//! 3. `berth status`, traffic from the pod, the counters in `/metrics`;
//!    containers (`berth run`, foreground and detached, with limits, on the berth0 bridge);
//!    a Service (ClusterIP + NodePort) over two web containers, reached from the host, from a
//!    container, and from the "outside" namespace through XDP;
//! 4. the agent killed with SIGKILL: the data plane keeps counting; a restarted agent re-opens
//!    the same maps;
//! 5. SIGTERM, `berth agent --cleanup`, and the namespace removed (unless `--keep`).
//!
//! All traffic stays between the two ends of the veth.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::sh;

const NETNS: &str = "berth-demo";
const HOST_IF: &str = "berth-demo0";
const POD_IF: &str = "eth0";
const HOST_ADDR: &str = "10.199.0.1";
const POD_ADDR: &str = "10.199.0.2";
const METRICS: &str = "http://127.0.0.1:9977/metrics";

pub fn run(keep: bool) -> Result<()> {
    sh::run("cargo", &["build", "--package", "berth"])?;
    let berth = workspace_root()?.join("target/debug/berth");
    let berth = berth.to_str().context("non-UTF-8 target path")?.to_owned();

    step("a pod network namespace joined to the host by a veth");
    remove_netns();
    let _netns = NetnsGuard { keep };
    sh::run("ip", &["netns", "add", NETNS])?;
    sh::run(
        "ip",
        &[
            "link", "add", HOST_IF, "type", "veth", "peer", "name", POD_IF, "netns", NETNS,
        ],
    )?;
    sh::run(
        "ip",
        &["addr", "add", &format!("{HOST_ADDR}/30"), "dev", HOST_IF],
    )?;
    sh::run("ip", &["link", "set", HOST_IF, "up"])?;
    sh::run(
        "ip",
        &[
            "-n",
            NETNS,
            "addr",
            "add",
            &format!("{POD_ADDR}/30"),
            "dev",
            POD_IF,
        ],
    )?;
    sh::run("ip", &["-n", NETNS, "link", "set", POD_IF, "up"])?;
    // Its traffic to the pod network goes through the host (services demo).
    sh::run(
        "ip",
        &["-n", NETNS, "route", "add", "default", "via", HOST_ADDR],
    )?;

    step("berth agent: load the kernel programs, pin the maps, attach XDP to the veth");
    let mut agent = Agent::start(&berth)?;
    sh::run(&berth, &["status"])?;

    step("traffic from the pod: 5 pings through xdp_lb_ingress");
    sh::run(
        "ip",
        &[
            "netns", "exec", NETNS, "ping", "-c", "5", "-i", "0.2", HOST_ADDR,
        ],
    )?;
    show_metrics()?;

    containers(&berth)?;
    services(&berth)?;
    audit(&berth)?;

    step("kill -9 the agent: the pinned data plane keeps running without it");
    agent.kill()?;
    sh::run(
        "ip",
        &[
            "netns", "exec", NETNS, "ping", "-c", "3", "-i", "0.2", HOST_ADDR,
        ],
    )?;
    sh::run(&berth, &["status"])?;

    step("restart: the agent re-opens the pinned maps; the counters include the pings above");
    let mut agent = Agent::start(&berth)?;
    show_metrics()?;

    if keep {
        step("leaving the agent running (--keep)");
        println!(
            "agent pid {}; try `{berth} status`, `curl -s {METRICS}`; stop it with `kill {}` \
             then `{berth} agent --cleanup` and `ip netns del {NETNS}`",
            agent.pid(),
            agent.pid()
        );
        std::mem::forget(agent);
        return Ok(());
    }
    step("SIGTERM: the agent exits cleanly and leaves the data plane pinned");
    agent.terminate()?;
    sh::run(&berth, &["status"])?;

    step("berth agent --cleanup: remove every pin and attachment");
    sh::run(&berth, &["agent", "--cleanup"])?;
    sh::run(&berth, &["status"])?;
    println!("\ndemo complete");
    Ok(())
}

/// The runtime: a busybox image imported from a rootfs tarball, a foreground container, a
/// detached one with limits and labels, exec into it, and its record in the data plane.
fn containers(berth: &str) -> Result<()> {
    step("containers: import a busybox image (rootfs tarball) into berth's image store");
    let tmp = std::env::temp_dir().join(format!("berth-demo-{}", std::process::id()));
    let bin = tmp.join("rootfs/bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox")?;
    for applet in [
        "sh", "echo", "id", "hostname", "cat", "sleep", "ps", "httpd", "wget", "mkdir", "ip",
        "timeout", "chmod", "nc",
    ] {
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    let tar = tmp.join("rootfs.tar");
    sh::run(
        "tar",
        &[
            "-C",
            &tmp.join("rootfs").display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ],
    )?;
    sh::run(
        berth,
        &[
            "image",
            "import",
            &tar.display().to_string(),
            "demo/busybox:latest",
        ],
    )?;
    sh::run(berth, &["image", "ls"])?;
    let _ = std::fs::remove_dir_all(&tmp);

    step("berth run: a foreground container (its exit code is berth's)");
    sh::run(
        berth,
        &[
            "run",
            "--rm",
            "demo/busybox",
            "/bin/sh",
            "-c",
            "echo hello from a berth container: $(hostname), $(id)",
        ],
    )?;

    step(
        "berth run -d: a detached container with a label and limits (Docker's default seccomp profile and capabilities)",
    );
    let _ = Command::new(berth)
        .args(["rm", "-f", "demo-web"])
        .stderr(Stdio::null())
        .output();
    sh::run(
        berth,
        &[
            "run",
            "-d",
            "--name",
            "demo-web",
            "--label",
            "app=web",
            "--memory",
            "64m",
            "--pids",
            "64",
            "demo/busybox",
            "/bin/sh",
            "-c",
            "while true; do sleep 1; done",
        ],
    )?;
    sh::run(berth, &["ps"])?;
    sh::run(
        berth,
        &[
            "exec",
            "demo-web",
            "/bin/sh",
            "-c",
            "echo memory limit: $(cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes); grep -E 'Seccomp:|CapBnd' /proc/self/status",
        ],
    )?;
    step("the container's record in the data plane (CONTAINERS, keyed by its cgroup id)");
    sh::run(berth, &["status"])?;
    sh::run(berth, &["rm", "-f", "demo-web"])?;
    Ok(())
}

const CLUSTER_IP: &str = "10.96.0.80";
const NODE_PORT: &str = "30080";

/// Services: two web containers on the berth0 bridge behind a ClusterIP and a NodePort,
/// programmed into the eBPF load balancer with `berth svc apply`, reached from the host (socket
/// hook), from another container, and from the "outside" namespace through XDP on the uplink.
fn services(berth: &str) -> Result<()> {
    step("services: two web containers on the berth0 bridge (veth, IPAM, /etc/hosts)");
    let mut ips = Vec::new();
    for name in ["demo-web1", "demo-web2"] {
        let _ = Command::new(berth)
            .args(["rm", "-f", name])
            .stderr(Stdio::null())
            .output();
        sh::run(
            berth,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--label",
                "app=web",
                "demo/busybox",
                "/bin/sh",
                "-c",
                &format!(
                    "mkdir -p /www && echo hello from {name} > /www/index.html && exec httpd -f -p 8080 -h /www"
                ),
            ],
        )?;
        let inspect = sh::output(berth, &["inspect", name]).context("berth inspect")?;
        let json: serde_json::Value = serde_json::from_str(&inspect)?;
        let ip = json["NetworkSettings"]["IPAddress"]
            .as_str()
            .context("the container has no IP address")?
            .to_owned();
        ips.push(ip);
    }
    let _cleanup = ServicesGuard {
        berth: berth.to_owned(),
    };
    sh::run(berth, &["ps"])?;

    step(
        "berth svc apply: a Service (ClusterIP + NodePort) and its EndpointSlice, Kubernetes' own schema",
    );
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n"))
        .collect();
    let manifest = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  type: NodePort
  clusterIP: {CLUSTER_IP}
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: http, nodePort: {NODE_PORT}, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
{endpoints}"
    );
    println!("{manifest}");
    apply_stdin(berth, "svc", &manifest)?;
    sh::run(berth, &["svc", "ls"])?;
    sh::run(berth, &["svc", "show", "demo/web"])?;

    step("the ClusterIP from the host: connect() is translated to a backend by the socket hook");
    for _ in 0..4 {
        sh::run(
            "busybox",
            &["wget", "-qO-", &format!("http://{CLUSTER_IP}/")],
        )?;
    }
    step("the ClusterIP from another container");
    sh::run(
        berth,
        &[
            "run",
            "--rm",
            "demo/busybox",
            "/bin/sh",
            "-c",
            &format!("for i in 1 2 3; do wget -qO- http://{CLUSTER_IP}/; done"),
        ],
    )?;
    step(
        "the NodePort from the demo namespace: processes on this machine, in any namespace, are \
         translated at connect() (the socket hooks sit on the root cgroup); clients on other \
         machines arrive through XDP on the uplink (the test suite checks that path from a \
         client outside the agent's cgroup)",
    );
    for _ in 0..4 {
        sh::run(
            "ip",
            &[
                "netns",
                "exec",
                NETNS,
                "busybox",
                "wget",
                "-qO-",
                &format!("http://{HOST_ADDR}:{NODE_PORT}/"),
            ],
        )?;
    }
    let text = sh::output("curl", &["-sf", METRICS]).context("scraping /metrics")?;
    println!("$ curl -s {METRICS} | grep berth_lb_");
    for line in text
        .lines()
        .filter(|l| l.starts_with("berth_lb_") && !l.ends_with(" 0") && !l.contains("_bucket"))
    {
        println!("{line}");
    }
    policies(berth, &ips)
}

const POLICIES: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 8080}]
";

/// NetworkPolicy: a default-deny and an allow rule, enforced by tc programs on the containers'
/// veths, shown with real connections, `policy explain`, verdict events and counters.
fn policies(berth: &str, ips: &[String]) -> Result<()> {
    let _cleanup = PolicyGuard {
        berth: berth.to_owned(),
    };
    step("berth policy apply: default-deny ingress, and allow role=client to the web pods on 8080");
    println!("{POLICIES}");
    apply_stdin(berth, "policy", POLICIES)?;
    sh::run(berth, &["policy", "ls"])?;
    let url = format!("http://{}:8080/", ips[0]);
    step("a container labelled role=client reaches a web pod");
    sh::run(
        berth,
        &[
            "run",
            "--rm",
            "--label",
            "role=client",
            "demo/busybox",
            "timeout",
            "3",
            "wget",
            "-qO-",
            &url,
        ],
    )?;
    step("a container without the label is dropped by the web pod's ingress policy");
    let out = Command::new(berth)
        .args([
            "run",
            "--rm",
            "demo/busybox",
            "timeout",
            "2",
            "wget",
            "-qO-",
            &url,
        ])
        .output()?;
    if out.status.success() {
        bail!("the unlabelled container reached {url}: the policy was not enforced");
    }
    println!(
        "wget {url}: {} (denied, as expected)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    step("berth policy explain: the verdict and the policy and rule that decide it");
    for (from, to) in [("demo-web2", "demo-web1"), ("10.88.0.1", "demo-web1")] {
        let args = [
            "policy", "explain", "--from", from, "--to", to, "--port", "8080/TCP",
        ];
        eprintln!("+ {berth} {}", args.join(" "));
        // Exit code 1 means "denied": the answer, not a failure of the demo.
        let _ = Command::new(berth).args(args).status()?;
    }
    step("verdict events (JSON lines, schema berth.event.v1)");
    let events =
        sh::output(berth, &["events", "--type", "policy_verdict"]).context("berth events")?;
    for line in events
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!("{line}");
    }
    let text = sh::output("curl", &["-sf", METRICS]).context("scraping /metrics")?;
    println!("$ curl -s {METRICS} | grep berth_policy_");
    for line in text
        .lines()
        .filter(|l| l.starts_with("berth_policy_") && !l.ends_with(" 0") && !l.contains("_bucket"))
    {
        println!("{line}");
    }
    Ok(())
}

const AUDIT_POLICY: &str = "apiVersion: berth.io/v1alpha1
kind: AuditPolicy
metadata: {name: demo}
spec:
  selector: {matchLabels: {audit: demo}}
  rules:
  - {syscalls: [\"*\"], action: count}
  - {syscalls: [execve, connect], action: record}
  - {syscalls: [openat], action: record, match: {pathPrefix: [/etc/]}}
  - {syscalls: [chmod, fchmodat], action: kill}
  - {syscalls: [mkdir, mkdirat], action: deny}
";

/// Syscall auditing: a policy selecting containers labelled audit=demo, a container doing
/// what it records, kills and denies, its events, its counters and the metrics.
fn audit(berth: &str) -> Result<()> {
    let _cleanup = AuditGuard {
        berth: berth.to_owned(),
    };
    step(
        "berth audit apply: record execve, connect and opens under /etc/, count every syscall, kill chmod, deny mkdir",
    );
    println!("{AUDIT_POLICY}");
    apply_stdin(berth, "audit", AUDIT_POLICY)?;
    step(
        "an audited container: cat, a refused connection, chmod (killed at the call), mkdir (EPERM by seccomp)",
    );
    let script = "cat /etc/hosts > /dev/null; nc 127.0.0.1 9 < /dev/null; \
                  echo x > /victim; chmod 600 /victim; echo chmod exit code $?; \
                  mkdir /denied; echo mkdir exit code $?; exec sleep 1000";
    sh::run(
        berth,
        &[
            "run",
            "-d",
            "--name",
            "audit-demo",
            "--network",
            "none",
            "--label",
            "audit=demo",
            "demo/busybox",
            "/bin/sh",
            "-c",
            script,
        ],
    )?;
    let mut said = String::new();
    for _ in 0..50 {
        said = sh::output(berth, &["logs", "audit-demo"]).unwrap_or_default();
        if said.contains("mkdir exit code") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    print!("{said}");
    if !said.contains("chmod exit code 137") || !said.contains("mkdir exit code 1") {
        bail!("the audit policy's kill or deny was not enforced");
    }
    sh::run(berth, &["audit", "ls"])?;
    step(
        "its events (JSON lines, schema berth.event.v1): exec, syscall (with the return value), exit",
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let events =
        sh::output(berth, &["events", "--container", "audit-demo"]).context("berth events")?;
    let mut shown = 0;
    for line in events.lines() {
        let interesting = [
            "\"type\":\"syscall\"",
            "\"type\":\"exec\"",
            "\"type\":\"exit\"",
        ]
        .iter()
        .any(|t| line.contains(t));
        if interesting && shown < 8 {
            println!("{line}");
            shown += 1;
        }
    }
    if shown == 0 {
        bail!("no syscall events from the audited container");
    }
    step("berth stats: per-container syscall counts (from the kernel's per-CPU counters)");
    sh::run(berth, &["stats", "--once", "--top", "8"])?;
    let text = sh::output("curl", &["-sf", METRICS]).context("scraping /metrics")?;
    println!("$ curl -s {METRICS} | grep berth_audit_ (top lines)");
    for line in text
        .lines()
        .filter(|l| l.starts_with("berth_audit_") && !l.ends_with(" 0") && !l.contains("_bucket"))
        .take(12)
    {
        println!("{line}");
    }
    Ok(())
}

/// Removes the demo's audit policy, also when a step fails.
struct AuditGuard {
    berth: String,
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.berth)
            .args(["rm", "-f", "audit-demo"])
            .stdout(Stdio::null())
            .status();
        let _ = Command::new(&self.berth)
            .args(["audit", "delete", "demo"])
            .stdout(Stdio::null())
            .status();
    }
}

/// Removes the demo's policies, also when a step fails.
struct PolicyGuard {
    berth: String,
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        for name in ["default/default-deny", "default/web-from-clients"] {
            let _ = Command::new(&self.berth)
                .args(["policy", "delete", name])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// Removes the demo's service and web containers, also when a step fails.
struct ServicesGuard {
    berth: String,
}

impl Drop for ServicesGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.berth)
            .args(["svc", "delete", "demo/web"])
            .status();
        let _ = Command::new(&self.berth)
            .args(["rm", "-f", "demo-web1", "demo-web2"])
            .status();
    }
}

/// `berth KIND apply -f -` with `manifest` on its standard input.
fn apply_stdin(berth: &str, kind: &str, manifest: &str) -> Result<()> {
    eprintln!("+ {berth} {kind} apply -f -");
    let mut child = Command::new(berth)
        .args([kind, "apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        manifest.as_bytes(),
    )?;
    if !child.wait()?.success() {
        bail!("berth {kind} apply failed");
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has no parent directory")?
        .to_owned())
}

fn show_metrics() -> Result<()> {
    let text = sh::output("curl", &["-sf", METRICS]).context("scraping /metrics")?;
    println!("$ curl -s {METRICS} | grep '^berth_'");
    for line in text.lines().filter(|l| l.starts_with("berth_")) {
        println!("{line}");
    }
    Ok(())
}

fn remove_netns() {
    let _ = Command::new("ip")
        .args(["netns", "del", NETNS])
        .stderr(Stdio::null())
        .status();
}

/// Removes the demo namespace (and with it the veth) on the way out, also on failure.
struct NetnsGuard {
    keep: bool,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if !self.keep {
            remove_netns();
        }
    }
}

struct Agent {
    child: Option<Child>,
}

impl Agent {
    fn start(berth: &str) -> Result<Self> {
        eprintln!("+ {berth} agent --xdp-iface {HOST_IF} &");
        let child = Command::new(berth)
            .args(["agent", "--xdp-iface", HOST_IF])
            .spawn()
            .context("starting berth agent")?;
        let mut agent = Agent { child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while sh::output("curl", &["-sf", "http://127.0.0.1:9977/healthz"]).is_none() {
            if let Some(child) = agent.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                agent.child = None;
                bail!("berth agent exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("berth agent not ready after 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            sh::run("kill", &["-9", &child.id().to_string()])?;
            child.wait()?;
        }
        Ok(())
    }

    fn terminate(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            sh::run("kill", &["-TERM", &child.id().to_string()])?;
            let status = child.wait()?;
            if !status.success() {
                bail!("berth agent exited with {status} on SIGTERM");
            }
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
