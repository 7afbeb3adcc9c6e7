//! A real Kubernetes 1.20.2 control plane for end-to-end tests: etcd, kube-apiserver and
//! kube-controller-manager, all inside a network namespace the fixture creates (see
//! shared/KUBERNETES.md for how the binaries are built and why these flags).
//!
//! The API server listens on the namespace's veth address, so a berth agent in the root
//! namespace reaches it through the veth; etcd and the controller manager's own ports stay on the
//! namespace's loopback. Nothing leaves the machine and nothing touches the root namespace's
//! iptables. There is no kubelet: the test plays it by writing Pod status itself
//! ([`KubeCluster::create_pod`], [`KubeCluster::set_pod_ready`]).
//!
//! Dropping the fixture (also when a test panics) kills the processes, removes the namespace and
//! the temporary directory. If the test process itself dies without unwinding (SIGKILL, Ctrl-C,
//! an abort), the processes still die: they are spawned with `PR_SET_PDEATHSIG` from a thread that
//! lives as long as the process (see `spawn_tied`).

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::{fs::DirBuilderExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{cluster::in_netns, netns::NetnsPair, privileged::in_ci};

/// The Kubernetes version the binaries in [`bin_dir`] are built from.
pub const K8S_VERSION: &str = "1.20.2";

/// The API server's port on the namespace's veth address.
pub const APISERVER_PORT: u16 = 16443;
/// etcd's client and peer ports on the namespace's loopback (each cluster has its own namespace,
/// so fixed ports never collide).
const ETCD_CLIENT_PORT: u16 = 23790;
const ETCD_PEER_PORT: u16 = 23800;
/// The controller manager's (unused but mandatory) secure port on the namespace's loopback.
const CONTROLLER_MANAGER_PORT: u16 = 10257;

/// Alpha gates of 1.20 without which the API server drops `nodeName`, `serving` and
/// `terminating` from EndpointSlices and the slice controller never fills them in. Both the API
/// server and the controller manager need them.
const FEATURE_GATES: &str =
    "--feature-gates=EndpointSliceNodeName=true,EndpointSliceTerminatingCondition=true";

/// The namespace controller works without extra setup (checked by the smoke test: a deleted
/// namespace goes away), so deleting a test namespace behaves as on a real cluster.
const CONTROLLERS: &str = "--controllers=endpointslice,endpoint,namespace";

/// Bounds for the steps of bringing a cluster up. The API server is ready 5-7 s after it starts
/// on a 2-core machine; the bounds leave room for a loaded CI runner.
const ETCD_TIMEOUT: Duration = Duration::from_secs(20);
const READYZ_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for one kubectl or openssl run (kubectl's own `--request-timeout` is shorter).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of a component's log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

const ETCD: &str = "etcd";
const APISERVER: &str = "kube-apiserver";
const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// Where the Kubernetes binaries live: `$BERTH_K8S_BIN_DIR`, else the cache
/// `xtask/k8s/build-kubernetes.sh` fills.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("BERTH_K8S_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/cache/berth/k8s-{K8S_VERSION}")))
}

/// Returns true when everything [`KubeCluster`] runs is installed. Under CI a missing binary
/// panics with what to install; elsewhere the test says loudly that it skipped and returns false.
#[must_use]
pub fn require_binaries(test: &str) -> bool {
    let dir = bin_dir();
    let mut missing: Vec<String> = [APISERVER, CONTROLLER_MANAGER, "kubectl"]
        .iter()
        .map(|b| dir.join(b))
        .filter(|p| !is_executable(p))
        .map(|p| p.display().to_string())
        .collect();
    for tool in [ETCD, "openssl", "ip"] {
        if which(tool).is_none() {
            missing.push(format!("{tool} (in PATH)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: needs Kubernetes {K8S_VERSION} binaries, etcd and openssl; missing: {}. Build the \
         Kubernetes binaries with `bash xtask/k8s/build-kubernetes.sh {}` (about 10 minutes; or set \
         BERTH_K8S_BIN_DIR) and install etcd with `apt-get install etcd-server openssl`",
        missing.join(", "),
        dir.display()
    );
    if in_ci() {
        panic!("{msg} (CI=true: tests must not skip)");
    }
    eprintln!("SKIPPED (missing binaries): {msg}");
    false
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// A running control plane. Fields drop in order after [`Drop::drop`] killed the processes:
/// the namespace, then the temporary directory (logs, certificates, etcd data).
pub struct KubeCluster {
    /// A kubeconfig for the root namespace (and the cluster's own): CA data, bearer token of a
    /// `system:masters` user, `server`.
    pub kubeconfig: PathBuf,
    /// `https://<namespace veth address>:16443`.
    pub server: String,
    /// Bearer token of the admin user (for clients that do not read kubeconfigs).
    pub token: String,
    /// The Node object [`KubeCluster::start`] created (InternalIP = host end of the veth).
    pub node: String,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    apiserver_args: Vec<String>,
    net: NetnsPair,
    dir: TempDir,
}

impl KubeCluster {
    /// Creates the namespace (10.251.`subnet_octet`.0/30) and certificates, starts etcd, the API
    /// server (waiting for `/readyz`, at most 60 s) and the controller manager, and creates Node
    /// `node`. Whatever part was started is torn down again if a later step fails.
    pub fn start(tag: &str, subnet_octet: u8, node: &str) -> anyhow::Result<Self> {
        let started = Instant::now();
        let net = NetnsPair::create(tag, subnet_octet).context("creating the cluster's netns")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-kube-{tag}-"))
            .tempdir()
            .context("creating the cluster's temp dir")?;
        let d = dir.path();
        for sub in ["certs", "etcd", "kubectl-cache"] {
            // 0700: keys live here, and etcd warns about a data dir others can read.
            std::fs::DirBuilder::new().mode(0o700).create(d.join(sub))?;
        }
        make_certs(&d.join("certs"), &net.ns_addr)?;
        let token = random_hex(16)?;
        // A `system:masters` user: RBAC lets it do anything, as kubeadm's admin.conf does.
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )?;
        let server = format!("https://{}:{APISERVER_PORT}", net.ns_addr);
        let kubeconfig = d.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &token, &d.join("certs/ca.crt"))?;

        let certs = d.join("certs");
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let apiserver_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
            format!("--bind-address={}", net.ns_addr),
            format!("--advertise-address={}", net.ns_addr),
            format!("--secure-port={APISERVER_PORT}"),
            // Never used (the serving certificate is given) but keeps the API server from
            // writing into its default /var/run/kubernetes.
            format!("--cert-dir={}", path(&certs)),
            format!("--tls-cert-file={}", path(&certs.join("apiserver.crt"))),
            format!(
                "--tls-private-key-file={}",
                path(&certs.join("apiserver.key"))
            ),
            format!("--token-auth-file={}", path(&d.join("tokens.csv"))),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", path(&certs.join("sa.pub"))),
            format!(
                "--service-account-signing-key-file={}",
                path(&certs.join("sa.key"))
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            // No token controller runs, so admission could never mount a service-account token.
            "--disable-admission-plugins=ServiceAccount".into(),
            // The `kubernetes` Service gets no endpoints: its address (the veth) is no pod.
            "--endpoint-reconciler-type=none".into(),
            FEATURE_GATES.into(),
        ];

        // From here on, drop kills whatever was started and removes the namespace and directory.
        let mut cluster = KubeCluster {
            kubeconfig,
            server,
            token,
            node: node.to_owned(),
            etcd: None,
            apiserver: None,
            controller_manager: None,
            apiserver_args,
            net,
            dir,
        };
        let t_certs = started.elapsed();
        cluster.start_etcd()?;
        let t_etcd = started.elapsed();
        cluster.start_apiserver()?;
        let t_apiserver = started.elapsed();
        cluster.start_controller_manager()?;
        let host_ip: Ipv4Addr = cluster.net.host_addr.parse()?;
        cluster.create_node(node, host_ip)?;
        // Start-up dominates these tests' run time: say where it went.
        eprintln!(
            "kube cluster {} up in {:.1?} (certs {t_certs:.1?}, etcd {t_etcd:.1?}, API server ready \
             {t_apiserver:.1?}); logs in {}",
            cluster.server,
            started.elapsed(),
            cluster.dir.path().display()
        );
        Ok(cluster)
    }

    /// The cluster's network namespace (its veth addresses: `ns_addr` serves the API,
    /// `host_addr` is the root namespace's end).
    pub fn net(&self) -> &NetnsPair {
        &self.net
    }

    /// The log of `component` (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.path().join(format!("{component}.log"))
    }

    /// `kubectl --kubeconfig … ARGS`; returns stdout; the error carries stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with(args, None, "20s")
    }

    /// `kubectl apply -f -` with `manifest` (YAML or JSON) on stdin.
    pub fn apply(&self, manifest: &str) -> anyhow::Result<String> {
        // --validate=false: validation downloads the whole OpenAPI document (several MB) on
        // every call; the API server still rejects invalid objects.
        self.kubectl_with(
            &["apply", "--validate=false", "-f", "-"],
            Some(manifest.as_bytes()),
            "20s",
        )
    }

    /// Creates Node `name` (metadata and an InternalIP address only: no kubelet reports on it).
    /// A pod on another node needs this first: when a selected pod's Node does not exist, the
    /// 1.20 slice controller fails the whole Service's sync (`node "X" not found`, retried) and
    /// its EndpointSlices stay as they were.
    pub fn create_node(&self, name: &str, internal_ip: Ipv4Addr) -> anyhow::Result<()> {
        // Nodes, unlike pods, take their status on create.
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": internal_ip.to_string()},
                {"type": "Hostname", "address": name},
            ]},
        });
        self.kubectl_with(
            &["create", "--validate=false", "-f", "-"],
            Some(node.to_string().as_bytes()),
            "20s",
        )
        .with_context(|| format!("creating node {name}"))?;
        Ok(())
    }

    /// Creates a Pod (one `busybox` container, bound to `node`) and writes the status a kubelet
    /// would: phase Running, `podIP`/`podIPs` = `ip`, `hostIP` = the node's InternalIP, and
    /// conditions Ready and ContainersReady = `ready`. `ip` need not exist anywhere.
    pub fn create_pod(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        ip: Ipv4Addr,
        node: &str,
        ready: bool,
    ) -> anyhow::Result<()> {
        let host_ip = self.node_ip(node)?;
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "image": "busybox"}],
            },
        });
        let created = self
            .kubectl_with(
                &["create", "--validate=false", "-o", "json", "-f", "-"],
                Some(pod.to_string().as_bytes()),
                "20s",
            )
            .with_context(|| format!("creating pod {ns}/{name}"))?;
        let mut pod: Value = serde_json::from_str(&created)?;
        let ready = condition_status(ready);
        pod["status"] = json!({
            "phase": "Running",
            "hostIP": host_ip.to_string(),
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
        });
        self.put_pod_status(ns, name, &pod)
            .with_context(|| format!("writing the status of pod {ns}/{name}"))?;
        Ok(())
    }

    /// Sets conditions Ready and ContainersReady of pod `ns/name` (read, modify, PUT status;
    /// retried on a write conflict).
    pub fn set_pod_ready(&self, ns: &str, name: &str, ready: bool) -> anyhow::Result<()> {
        let mut last_err = None;
        for _ in 0..5 {
            let mut pod: Value = serde_json::from_str(
                &self.kubectl(&["get", "pod", "-n", ns, name, "-o", "json"])?,
            )?;
            for kind in ["ContainersReady", "Ready"] {
                set_condition(&mut pod, kind, ready);
            }
            match self.put_pod_status(ns, name, &pod) {
                Ok(()) => return Ok(()),
                // Someone else (another test step) wrote the pod between our read and write.
                Err(err) if format!("{err:#}").contains("the object has been modified") => {
                    last_err = Some(err);
                }
                Err(err) => return Err(err.context(format!("setting {ns}/{name} ready={ready}"))),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no attempt"))
            .context(format!("setting {ns}/{name} ready={ready}: conflicts")))
    }

    /// Deletes pod `ns/name` gracefully. Without a kubelet to confirm, it stays (Terminating,
    /// with a deletionTimestamp) until [`KubeCluster::delete_pod_now`]; the slice controller marks
    /// its endpoint terminating meanwhile.
    pub fn delete_pod_graceful(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        // --wait=false: waiting would block until the (absent) kubelet confirmed.
        self.kubectl(&["delete", "pod", "-n", ns, name, "--wait=false"])
            .with_context(|| format!("deleting pod {ns}/{name}"))?;
        Ok(())
    }

    /// Deletes pod `ns/name` at once (`--grace-period=0 --force`), also one already Terminating.
    pub fn delete_pod_now(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        self.kubectl(&[
            "delete",
            "pod",
            "-n",
            ns,
            name,
            "--grace-period=0",
            "--force",
        ])
        .with_context(|| format!("force-deleting pod {ns}/{name}"))?;
        Ok(())
    }

    /// Polls the EndpointSlices of Service `ns/svc` (the `kubectl get endpointslices -o json`
    /// List) until `pred` holds or `timeout` passes; returns the List, or an error showing the
    /// last one seen. [`endpoints`] flattens a List into its endpoints.
    pub fn wait_slices(
        &self,
        ns: &str,
        svc: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let selector = format!("kubernetes.io/service-name={svc}");
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self
                .kubectl(&[
                    "get",
                    "endpointslices",
                    "-n",
                    ns,
                    "-l",
                    &selector,
                    "-o",
                    "json",
                ])
                .and_then(|out| Ok(serde_json::from_str::<Value>(&out)?))
            {
                Ok(list) if pred(&list) => return Ok(list),
                Ok(list) => Ok(list),
                Err(err) => Err(format!("{err:#}")),
            };
            if Instant::now() >= deadline {
                let seen = match &last {
                    Ok(list) => serde_json::to_string_pretty(list).unwrap_or_default(),
                    Err(err) => format!("error: {err}"),
                };
                bail!(
                    "EndpointSlices of {ns}/{svc} did not match within {timeout:?}; last seen:\n{seen}\n\
                     last lines of {}:\n{}",
                    self.log_path(CONTROLLER_MANAGER).display(),
                    tail(&self.log_path(CONTROLLER_MANAGER), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the API server (SIGKILL) and reaps it; etcd and the controller manager keep running
    /// (the controller manager retries until [`KubeCluster::start_apiserver`]).
    pub fn stop_apiserver(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .apiserver
            .take()
            .context("kube-apiserver is not running")?;
        // Killing an already exited child is not an error worth failing on; wait() reaps it.
        let _ = child.kill();
        child.wait().context("reaping kube-apiserver")?;
        Ok(())
    }

    /// Starts the API server (again, with the same flags and state) and waits for `/readyz`.
    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_some() {
            bail!("kube-apiserver is already running");
        }
        let bin = bin_dir().join(APISERVER);
        let args: Vec<&str> = self.apiserver_args.iter().map(String::as_str).collect();
        self.apiserver = Some(self.spawn_in_netns(APISERVER, &bin, &args)?);
        self.wait_readyz(READYZ_TIMEOUT)
    }

    fn start_etcd(&mut self) -> anyhow::Result<()> {
        let data = self.dir.path().join("etcd");
        let client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let etcd = which(ETCD).context("etcd not in PATH (apt-get install etcd-server)")?;
        let child = self.spawn_in_netns(
            ETCD,
            &etcd,
            &[
                "--name",
                "t",
                "--data-dir",
                &data.to_string_lossy(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("t={peer}"),
            ],
        )?;
        self.etcd = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], ETCD_CLIENT_PORT));
        self.wait_port(ETCD, addr, ETCD_TIMEOUT)
    }

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let bin = bin_dir().join(CONTROLLER_MANAGER);
        let kubeconfig = format!("--kubeconfig={}", self.kubeconfig.display());
        let child = self.spawn_in_netns(
            CONTROLLER_MANAGER,
            &bin,
            &[
                &kubeconfig,
                CONTROLLERS,
                "--leader-elect=false",
                // No insecure port; the secure one stays on the namespace's loopback.
                "--port=0",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={CONTROLLER_MANAGER_PORT}"),
                FEATURE_GATES,
            ],
        )?;
        self.controller_manager = Some(child);
        // It listens once its configuration is loaded; the controllers start right after.
        let addr = SocketAddr::from(([127, 0, 0, 1], CONTROLLER_MANAGER_PORT));
        self.wait_port(CONTROLLER_MANAGER, addr, CONTROLLER_MANAGER_TIMEOUT)
    }

    /// `ip netns exec NS PROGRAM ARGS` with stdout and stderr appended to the component's log.
    /// `ip netns exec` execs the program, so the child's pid is the component's.
    fn spawn_in_netns(
        &self,
        component: &str,
        program: &Path,
        args: &[&str],
    ) -> anyhow::Result<Child> {
        let log_path = self.log_path(component);
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "==== berth test fixture: starting {component} ====")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        spawn_tied(cmd).with_context(|| format!("spawning {component} ({})", program.display()))
    }

    /// The running child of `component`, if any.
    fn child_mut(&mut self, component: &str) -> Option<&mut Child> {
        match component {
            ETCD => self.etcd.as_mut(),
            APISERVER => self.apiserver.as_mut(),
            CONTROLLER_MANAGER => self.controller_manager.as_mut(),
            _ => None,
        }
    }

    /// Fails with the log's tail if `component` has exited.
    fn check_alive(&mut self, component: &str) -> anyhow::Result<()> {
        let exited = match self.child_mut(component) {
            Some(child) => child.try_wait()?,
            None => bail!("{component} is not running"),
        };
        if let Some(status) = exited {
            bail!(
                "{component} exited ({status}); last lines of {}:\n{}",
                self.log_path(component).display(),
                tail(&self.log_path(component), LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// Waits until `addr` inside the namespace accepts TCP connections.
    fn wait_port(
        &mut self,
        component: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let open = in_netns(&self.net.ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if open {
                return Ok(());
            }
            self.check_alive(component)?;
            if Instant::now() >= deadline {
                bail!(
                    "{component} not listening on {addr} after {timeout:?}; last lines of {}:\n{}",
                    self.log_path(component).display(),
                    tail(&self.log_path(component), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the API server answers `/readyz` with `ok` (through the veth, as clients in
    /// the root namespace will reach it).
    fn wait_readyz(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.kubectl_with(&["get", "--raw", "/readyz"], None, "2s");
            if matches!(&answer, Ok(body) if body.trim() == "ok") {
                return Ok(());
            }
            self.check_alive(APISERVER)?;
            if Instant::now() >= deadline {
                bail!(
                    "kube-apiserver not ready after {timeout:?} (last /readyz: {}); last lines of {}:\n{}",
                    match answer {
                        Ok(body) => body,
                        Err(err) => format!("{err:#}"),
                    },
                    self.log_path(APISERVER).display(),
                    tail(&self.log_path(APISERVER), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// kubectl with this cluster's kubeconfig, a private discovery cache (so clusters reusing an
    /// address never share one) and a bound on each request.
    fn kubectl_with(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        request_timeout: &str,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new(bin_dir().join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .arg(format!("--request-timeout={request_timeout}"))
            .args(args);
        let out = run_bounded(cmd, stdin, COMMAND_TIMEOUT)
            .with_context(|| format!("kubectl {}", args.join(" ")))?;
        if !out.success {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// PUT `pod` to its status subresource (what a kubelet does).
    fn put_pod_status(&self, ns: &str, name: &str, pod: &Value) -> anyhow::Result<()> {
        let uri = format!("/api/v1/namespaces/{ns}/pods/{name}/status");
        self.kubectl_with(
            &["replace", "--raw", &uri, "-f", "-"],
            Some(pod.to_string().as_bytes()),
            "20s",
        )?;
        Ok(())
    }

    /// The InternalIP of Node `node` (the veth's host end for the fixture's own node).
    fn node_ip(&self, node: &str) -> anyhow::Result<Ipv4Addr> {
        if node == self.node {
            return Ok(self.net.host_addr.parse()?);
        }
        let out = self
            .kubectl(&[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
            ])
            .with_context(|| {
                format!(
                    "node {node} must exist, else the Service's slices stop updating: create_node first"
                )
            })?;
        out.trim()
            .parse()
            .with_context(|| format!("InternalIP of node {node}: {out:?}"))
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        // The temp dir (and the logs in it) goes away below: show what the components said when
        // the test failed.
        if std::thread::panicking() {
            for component in [ETCD, APISERVER, CONTROLLER_MANAGER] {
                eprintln!(
                    "---- last lines of {} ----\n{}",
                    self.log_path(component).display(),
                    tail(&self.log_path(component), LOG_TAIL_LINES)
                );
            }
        }
        // Clients first, etcd last, so nothing spends time retrying against a dead peer.
        for child in [
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        // Then `net` (the namespace) and `dir` (the temp dir) drop in field order.
    }
}

/// The endpoints of all slices in an EndpointSlice List (as [`KubeCluster::wait_slices`] returns).
pub fn endpoints(slices: &Value) -> Vec<&Value> {
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|slice| slice["endpoints"].as_array().into_iter().flatten())
        .collect()
}

/// The endpoint in `slices` whose addresses include `ip`.
pub fn endpoint_for(slices: &Value, ip: Ipv4Addr) -> Option<&Value> {
    let ip = ip.to_string();
    endpoints(slices).into_iter().find(|ep| {
        ep["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(&ip)))
    })
}

fn condition_status(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

/// Sets (or adds) condition `kind` of a Pod object to `value`.
fn set_condition(pod: &mut Value, kind: &str, value: bool) {
    let status = condition_status(value);
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"]
        .as_array_mut()
        .expect("conditions is an array: set above");
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(c) => {
            if c["status"] != status {
                c["status"] = status.into();
                // The old transition time would now be wrong; no time is better than that.
                if let Some(obj) = c.as_object_mut() {
                    obj.remove("lastTransitionTime");
                }
            }
        }
        None => conditions.push(json!({"type": kind, "status": status})),
    }
}

/// Runs `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG` =
/// SIGKILL: the kernel kills the child when the thread that forked it exits, so a component can
/// outlive neither the test process (killed, aborted, interrupted: no drop runs) nor be killed
/// early because the test thread that started it ended.
fn spawn_tied(mut cmd: Command) -> anyhow::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    let set_pdeathsig = || {
        // SAFETY: PR_SET_PDEATHSIG with a valid signal number; no memory is passed.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no locks.
    unsafe { cmd.pre_exec(set_pdeathsig) };
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("kube-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("starting the kube-spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| anyhow!("kube-spawner thread is gone"))?;
    Ok(reply_rx
        .recv()
        .map_err(|_| anyhow!("kube-spawner thread is gone"))??)
}

struct BoundedOutput {
    success: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `cmd` to completion with `stdin`, killing it after `timeout`.
fn run_bounded(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<BoundedOutput> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            // Dropping the pipe at the end of the thread closes stdin: the child sees EOF.
            Some(std::thread::spawn(move || pipe.write_all(&data)))
        }
        _ => None,
    };
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = stderr.join().unwrap_or_default();
            bail!(
                "{:?} still running after {timeout:?} (killed); stderr: {}",
                cmd.get_program(),
                String::from_utf8_lossy(&err).trim()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(writer) = writer {
        // A child that exits without reading all of stdin breaks the pipe; its exit status and
        // stderr say more than the write error would.
        let _ = writer.join();
    }
    Ok(BoundedOutput {
        success: status.success(),
        status: status.to_string(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    let out = run_bounded(cmd, None, COMMAND_TIMEOUT)?;
    if !out.success {
        bail!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes into `dir`: a CA (`ca.crt`/`ca.key`), the API server's serving certificate
/// (`apiserver.crt`/`apiserver.key`, valid for `addr`, loopback and the in-cluster names) and a
/// service-account key pair (`sa.key`/`sa.pub`). Our own config files keep the machine's
/// openssl.cnf out of it.
fn make_certs(dir: &Path, addr: &str) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = berth-test-ca\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )?;
    std::fs::write(
        dir.join("apiserver.cnf"),
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = kube-apiserver\n\
             [v3_srv]\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\n\
             authorityKeyIdentifier = keyid\n\
             subjectAltName = IP:{addr},IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes,\
             DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        ),
    )?;
    // Two days: a test never runs that long, and a fresh CA per cluster means nothing expires
    // under a running test.
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-config", "ca.cnf",
            "-keyout", "ca.key", "-out", "ca.crt",
        ],
    )
    .context("making the CA")?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-config",
            "apiserver.cnf",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
        ],
    )
    .context("making the API server's key")?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-extfile",
            "apiserver.cnf",
            "-extensions",
            "v3_srv",
            "-out",
            "apiserver.crt",
        ],
    )
    .context("signing the API server's certificate")?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"]).context("making the SA key")?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
        .context("extracting the SA public key")?;
    Ok(())
}

fn write_kubeconfig(path: &Path, server: &str, token: &str, ca: &Path) -> anyhow::Result<()> {
    let ca = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: berth-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
             users:\n- name: admin\n  user:\n    token: {token}\n\
             contexts:\n- name: berth-test\n  context:\n    cluster: berth-test\n    user: admin\n\
             current-context: berth-test\n",
            base64(&ca)
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Standard base64 with padding (kubeconfig `*-data` fields); too small a need for a dependency.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The last `lines` lines of the file at `path` (or why it could not be read).
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(data) => {
            let text = String::from_utf8_lossy(&data);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn set_condition_replaces_and_adds() {
        let mut pod = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "x"}
        ]}});
        set_condition(&mut pod, "Ready", false);
        set_condition(&mut pod, "ContainersReady", false);
        assert_eq!(
            pod["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "False"},
                {"type": "ContainersReady", "status": "False"},
            ])
        );
    }
}
