//! The agent's desired state for NetworkPolicy and its one reconcile path into the data plane.
//!
//! Policies and Namespaces arrive from two sources: manifests (`berth policy apply`, through the
//! API socket) and the Kubernetes API server's watches. A file's object wins over the API
//! server's of the same kind, namespace and name (as for services). Pods are the
//! bridge-networked containers of the engine on this node (their labels, address, and
//! `port.berth.io/NAME` labels for named ports; the namespace is the
//! `io.kubernetes.pod.namespace` label, as the CRI sets it, else `default`) and, with the API
//! server, its Pods: those on this node reached through a veth are endpoints (the agent attaches
//! the pod programs to that veth), all of them are peers with an identity. Every change is
//! validated as a whole first (a bad object changes nothing), compiled by `berth-netpolicy` into
//! identities and per-endpoint tables, and written by [`PolicyWriter`], which writes only what
//! differs. The manifests, the identity numbers and the rule ids are persisted under the state
//! directory, so a restarted agent recompiles to the same tables and rewrites nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use berth_common::lb::{PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use berth_netpolicy::{
    ClusterState, Compiled, Identities, NamedPort, Namespace, Peer, Pod, Policy, Protocol, RuleRef,
};

use berth_kube::{
    Change,
    k8s_openapi::api::{
        core::v1::{Namespace as KubeNamespace, Pod as KubePod},
        networking::v1::NetworkPolicy,
    },
};

use crate::{
    dataplane::{
        PinLayout,
        policy::{
            DesiredEndpoint, KernelRule, KernelTable, PolicyChanges, PolicyMapError, PolicyWriter,
        },
    },
    engine::{ContainerMeta, NetworkMode},
    state_file::{StateFile, StateFileError},
};

/// Label holding a container's Kubernetes namespace (the CRI's own label).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label prefix of named container ports: `port.berth.io/http=8080` or `=53/UDP`.
pub const PORT_LABEL_PREFIX: &str = "port.berth.io/";
/// Namespace label that puts every pod of the namespace in audit mode: denials are reported
/// and counted but not enforced.
pub const AUDIT_LABEL: &str = "policy.berth.io/audit";

#[derive(Debug, thiserror::Error)]
pub enum PolicyStoreError {
    #[error(transparent)]
    Invalid(#[from] berth_netpolicy::Error),
    #[error(transparent)]
    Dataplane(#[from] PolicyMapError),
    #[error(transparent)]
    State(#[from] StateFileError),
    #[error("{0}")]
    Lookup(String),
}

/// What is persisted.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    /// The objects as applied (JSON), by `Kind namespace/name`.
    objects: BTreeMap<String, serde_json::Value>,
    identities: Identities,
    /// `namespace/name#rule` (and the node marker) → rule id in kernel tables.
    rule_ids: BTreeMap<String, u32>,
    /// The next rule id to hand out (ids are never reused).
    #[serde(default)]
    next_rule_id: u32,
}

/// The on-disk format of [`Persisted`].
const FORMAT: u32 = 1;

/// What `apply`/`delete` did, as the API returns it.
#[derive(Debug, serde::Serialize)]
pub struct PolicyOutcome {
    /// kubectl-style lines: "networkpolicy/default/deny created".
    pub text: String,
    pub dataplane: PolicyChanges,
    pub compile_seconds: f64,
    pub reconcile_seconds: f64,
}

/// Prometheus instruments of the policy reconcile path.
#[derive(Clone)]
pub struct PolicyMetrics {
    pub reconcile_seconds: prometheus::Histogram,
    pub policies: prometheus::IntGauge,
    pub endpoints: prometheus::IntGauge,
    pub identities: prometheus::IntGauge,
    pub tables: prometheus::IntGauge,
    pub rules: prometheus::IntGauge,
}

pub struct PolicyStore {
    file: StateFile,
    engine_root: PathBuf,
    state: Persisted,
    /// `state.objects` parsed, by the same keys (parsed once, when they arrive).
    policies: BTreeMap<String, Policy>,
    namespaces: BTreeMap<String, Namespace>,
    global_audit: bool,
    writer: PolicyWriter,
    metrics: PolicyMetrics,
    node_addrs: Vec<Ipv4Addr>,
    /// The last compiled state and the pods it was compiled from (explain and events use them).
    compiled: Option<Compiled>,
    pods: Vec<LocalPod>,
    /// Told who endpoints and rule ids are after every reconcile.
    events: Option<Arc<crate::events::EventHub>>,
    /// Rule ids the reconcile in progress has put in tables.
    used_rules: std::collections::HashSet<u32>,
    /// The Kubernetes API server's objects; None without a Kubernetes source.
    api: Option<FromApi>,
    /// This node's name (its API Pods are endpoints); empty without a Kubernetes source.
    node_name: String,
    pin_root: PathBuf,
    /// Host veths of API pods the agent attached the pod programs to.
    attached: BTreeSet<String>,
    /// Every pod of the last reconcile (endpoints and peers), for explain.
    cluster_pods: Vec<Pod>,
    /// The policies and namespaces in force (files over the API server), from the last
    /// reconcile.
    effective_policies: BTreeMap<String, Policy>,
    effective_namespaces: BTreeMap<String, Namespace>,
}

/// A change from the API server's watches, for the policy store.
#[derive(Debug, Clone)]
pub enum PolicyKubeChange {
    NetworkPolicy(Change<Box<NetworkPolicy>>),
    Namespace(Change<Box<KubeNamespace>>),
    Pod(Change<Box<KubePod>>),
}

/// What the API server says, as the store keeps it (not persisted: the pinned maps keep their
/// last state until the first lists after a start arrive, see [`PolicyStore::open`]).
#[derive(Debug, Default)]
struct FromApi {
    policies: BTreeMap<String, Policy>,
    namespaces: BTreeMap<String, Namespace>,
    /// By `namespace/name`: the pod and its node.
    pods: BTreeMap<String, (Pod, Option<String>)>,
    /// Kinds listed at least once.
    listed: BTreeSet<&'static str>,
}

/// Sets (Some) or removes (None) `key`; whether that changed anything.
fn set<V: PartialEq>(map: &mut BTreeMap<String, V>, key: String, value: Option<V>) -> bool {
    match value {
        Some(v) => {
            map.get(&key) != Some(&v) && {
                map.insert(key, v);
                true
            }
        }
        None => map.remove(&key).is_some(),
    }
}

/// Replaces `map` with `listed`; whether that changed anything.
fn replace<V: PartialEq>(map: &mut BTreeMap<String, V>, listed: BTreeMap<String, V>) -> bool {
    let changed = *map != listed;
    *map = listed;
    changed
}

/// The kinds the policy store takes from the API server.
const API_KINDS: [&str; 3] = ["NetworkPolicy", "Namespace", "Pod"];

/// A Pod object as a policy pod: None while it has no address, has finished, or uses the
/// host's network (policies do not apply to it; as a peer it is its node's address).
fn api_pod(pod: &KubePod) -> Option<(Pod, Option<String>)> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                port: u16::try_from(p.container_port).ok()?,
                protocol: Protocol::from_api(p.protocol.as_deref().unwrap_or("TCP"))?,
            })
        })
        .collect();
    Some((
        Pod {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: Some(ip),
            ports,
        },
        spec.node_name.clone(),
    ))
}

/// A pod on this node, from the engine's records.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalPod {
    pub pod: Pod,
    pub container_id: String,
    /// Host-side veth ifindex.
    pub ifindex: u32,
}

fn protocol_number(p: Option<Protocol>) -> u8 {
    match p {
        None => berth_common::policy::PROTO_ANY,
        Some(Protocol::Tcp) => PROTO_TCP,
        Some(Protocol::Udp) => PROTO_UDP,
        Some(Protocol::Sctp) => PROTO_SCTP,
    }
}

/// The pod a container is, if it is connected to the bridge (from the moment the engine
/// connects its veth, before its process starts, until it exits).
pub fn pod_of(meta: &ContainerMeta) -> Option<LocalPod> {
    if meta.network_mode != NetworkMode::Bridge {
        return None;
    }
    let ip = meta.ip?;
    // An endpoint while its veth exists under the recorded name and index (from the moment
    // the engine connects it, before the container's process starts, until it exits).
    let running = meta.finished_at.is_none()
        && meta.host_ifindex != 0
        && meta
            .host_veth
            .as_deref()
            .and_then(|n| nix::net::if_::if_nametoindex(n).ok())
            == Some(meta.host_ifindex);
    if !running {
        // An exited container sends nothing; its address may already be another's.
        return None;
    }
    let mut ports = Vec::new();
    for (k, v) in &meta.labels {
        let Some(name) = k.strip_prefix(PORT_LABEL_PREFIX) else {
            continue;
        };
        let (num, proto) = match v.split_once('/') {
            Some((n, p)) => (n, Protocol::from_api(&p.to_ascii_uppercase())),
            None => (v.as_str(), Some(Protocol::Tcp)),
        };
        match (num.parse::<u16>(), proto) {
            (Ok(port), Some(protocol)) if port > 0 => ports.push(NamedPort {
                name: name.to_owned(),
                port,
                protocol,
            }),
            _ => tracing::warn!(container = %meta.name, label = %k, value = %v,
                "ignoring a named-port label that is not PORT or PORT/PROTOCOL"),
        }
    }
    Some(LocalPod {
        pod: Pod {
            namespace: meta
                .labels
                .get(NAMESPACE_LABEL)
                .cloned()
                .unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone(),
            labels: meta.labels.clone(),
            ip: Some(ip),
            ports,
        },
        container_id: meta.id.clone(),
        ifindex: meta.host_ifindex,
    })
}

impl PolicyStore {
    /// Opens the persisted state (a corrupt file is an error: the agent refuses to start rather
    /// than drop every policy) and reconciles the maps with it.
    pub fn open(
        state_dir: &Path,
        engine_root: &Path,
        layout: &PinLayout,
        global_audit: bool,
        metrics: PolicyMetrics,
        events: Option<Arc<crate::events::EventHub>>,
        // With a Kubernetes source: this node's name (its API Pods are the endpoints).
        kubernetes_node: Option<&str>,
    ) -> Result<Self, PolicyStoreError> {
        let (file, state) = StateFile::open::<Persisted>(
            &state_dir.join("policies.json"),
            FORMAT,
            "reading the saved policies",
        )?;
        let mut store = Self {
            file,
            engine_root: engine_root.to_owned(),
            state,
            policies: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            global_audit,
            writer: PolicyWriter::open(layout)?,
            metrics,
            node_addrs: Vec::new(),
            compiled: None,
            pods: Vec::new(),
            events,
            used_rules: Default::default(),
            api: kubernetes_node.map(|_| FromApi::default()),
            node_name: kubernetes_node.unwrap_or_default().to_owned(),
            pin_root: layout.root.clone(),
            attached: BTreeSet::new(),
            cluster_pods: Vec::new(),
            effective_policies: BTreeMap::new(),
            effective_namespaces: BTreeMap::new(),
        };
        // The saved objects, parsed once (they were valid when applied; a file edited since
        // that no longer parses is an error, as a corrupt file is).
        let docs: Vec<&serde_json::Value> = store.state.objects.values().collect();
        let bytes = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": docs,
        }))
        .map_err(|e| {
            PolicyStoreError::State(StateFileError {
                op: "re-reading the saved policies",
                path: store.file.path().to_owned(),
                detail: e.to_string(),
            })
        })?;
        let objects =
            berth_netpolicy::parse_objects(&bytes, &store.file.path().display().to_string())?;
        store.insert_parsed(objects);
        store.refresh_node();
        if store.api.is_some() {
            // The API server's objects are not persisted: reconciling now would drop the
            // tables of its pods and policies. The pinned maps keep enforcing their last state
            // until the first lists arrive.
            tracing::info!(
                policies = store.policies.len(),
                "policies from files loaded; the maps keep their last state until the Kubernetes API server's first lists"
            );
            return Ok(store);
        }
        let (changes, _, _) = store.reconcile()?;
        tracing::info!(
            policies = store.policies.len(),
            ?changes,
            "policies reconciled from the persisted state"
        );
        Ok(store)
    }

    /// Takes in parsed objects, replacing those of the same kind and name.
    fn insert_parsed(&mut self, objects: berth_netpolicy::Objects) {
        for p in objects.policies {
            self.policies.insert(policy_key(&p.namespace, &p.name), p);
        }
        for n in objects.namespaces {
            self.namespaces.insert(namespace_key(&n.name), n);
        }
    }

    /// This node's addresses (ingress from them is always allowed).
    pub fn refresh_node(&mut self) {
        let addrs: BTreeSet<Ipv4Addr> = crate::dataplane::node_addresses()
            .into_iter()
            .map(|a| a.addr)
            .collect();
        self.node_addrs = addrs.into_iter().collect();
    }

    fn local_pods(&self) -> Vec<LocalPod> {
        let engine = crate::engine::Engine::new(crate::engine::EnginePaths {
            root: self.engine_root.clone(),
            runtime_root: PathBuf::new(),
            pin_root: PathBuf::new(),
            api_socket: PathBuf::new(),
        });
        match engine.list() {
            Ok(list) => list.iter().filter_map(pod_of).collect(),
            Err(e) => {
                tracing::warn!(root = %self.engine_root.display(), error = %e, "listing containers");
                Vec::new()
            }
        }
    }

    fn rule_id(&mut self, rule: &RuleRef) -> u32 {
        let key = format!("{}#{}", rule.policy, rule.rule);
        if let Some(id) = self.state.rule_ids.get(&key) {
            self.used_rules.insert(*id);
            return *id;
        }
        if self.state.next_rule_id == 0 {
            self.state.next_rule_id = self.state.rule_ids.values().max().map_or(1, |m| m + 1);
        }
        let id = self.state.next_rule_id;
        self.state.next_rule_id += 1;
        self.state.rule_ids.insert(key, id);
        self.used_rules.insert(id);
        id
    }

    /// Compiles the desired state for the node's current pods and writes the difference into
    /// the maps.
    fn reconcile(&mut self) -> Result<(PolicyChanges, f64, f64), PolicyStoreError> {
        if self.waiting_for_api() {
            return Ok((PolicyChanges::default(), 0.0, 0.0));
        }
        let pods = self.endpoints();
        self.reconcile_pods(pods)
    }

    /// A Kubernetes source that has not listed every kind yet: the maps keep their last state.
    fn waiting_for_api(&self) -> bool {
        self.api
            .as_ref()
            .is_some_and(|api| API_KINDS.iter().any(|k| !api.listed.contains(k)))
    }

    /// The endpoints on this node: the engine's containers and, with the API server, its Pods
    /// bound to this node that the host reaches through a veth (attached on the way).
    fn endpoints(&mut self) -> Vec<LocalPod> {
        let mut pods = self.local_pods();
        let Some(api) = &self.api else {
            return pods;
        };
        let engine_keys: BTreeSet<String> = pods.iter().map(|p| p.pod.key()).collect();
        let mine: Vec<&Pod> = api
            .pods
            .iter()
            .filter(|(key, (_, node))| {
                node.as_deref() == Some(self.node_name.as_str()) && !engine_keys.contains(*key)
            })
            .map(|(_, (pod, _))| pod)
            .collect();
        let routes = if mine.is_empty() {
            Vec::new()
        } else {
            berth_runtime::network::veth_routes().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "listing veth routes; this node's API pods are not enforced");
                Vec::new()
            })
        };
        let mut veths = BTreeSet::new();
        for pod in mine {
            let Some(ip) = pod.ip else { continue };
            // The longest prefix through a veth that covers the pod's address.
            let route = routes
                .iter()
                .filter(|r| {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(r.prefix_len.min(32)))
                        .unwrap_or(0);
                    u32::from(r.dst) & mask == u32::from(ip) & mask
                })
                .max_by_key(|r| r.prefix_len);
            let Some(route) = route else {
                tracing::debug!(pod = %pod.key(), %ip, "no veth route to this node's pod: not an endpoint berth can enforce");
                continue;
            };
            if !self.attached.contains(&route.ifname) {
                match crate::dataplane::pods::attach_pod_veth(&self.pin_root, &route.ifname) {
                    Ok(_) => {
                        tracing::info!(pod = %pod.key(), veth = %route.ifname, "pod programs attached");
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod.key(), veth = %route.ifname, error = %e, "attaching the pod programs failed; the pod is not enforced");
                        continue;
                    }
                }
            }
            veths.insert(route.ifname.clone());
            pods.push(LocalPod {
                pod: pod.clone(),
                container_id: String::new(),
                ifindex: route.ifindex,
            });
        }
        for gone in self.attached.difference(&veths) {
            crate::dataplane::pods::detach_pod_veth(&self.pin_root, gone);
        }
        self.attached = veths;
        pods
    }

    /// The policies and namespaces in force: files over the API server's.
    fn effective(&self) -> (BTreeMap<String, Policy>, BTreeMap<String, Namespace>) {
        let mut policies = self.policies.clone();
        let mut namespaces = self.namespaces.clone();
        if let Some(api) = &self.api {
            for (k, p) in &api.policies {
                policies.entry(k.clone()).or_insert_with(|| p.clone());
            }
            for (k, n) in &api.namespaces {
                namespaces.entry(k.clone()).or_insert_with(|| n.clone());
            }
        }
        (policies, namespaces)
    }

    /// Applies a batch of changes from the API server's watches. A policy that does not
    /// compile is skipped and reported (the API server accepted it; berth cannot enforce it),
    /// the rest is applied.
    pub fn apply_kube(
        &mut self,
        changes: Vec<PolicyKubeChange>,
    ) -> Result<(PolicyChanges, Vec<String>), PolicyStoreError> {
        let api = self.api.get_or_insert_with(FromApi::default);
        let mut rejected = Vec::new();
        // Most Pod updates (status, annotations) change nothing policies read: compile only
        // when what the store keeps changed.
        let mut changed = false;
        for change in changes {
            match change {
                PolicyKubeChange::NetworkPolicy(change) => {
                    let mut compiled = |np: &NetworkPolicy| {
                        let key = policy_key(
                            np.metadata.namespace.as_deref().unwrap_or("default"),
                            np.metadata.name.as_deref().unwrap_or_default(),
                        );
                        match berth_netpolicy::compile(np) {
                            Ok(p) => (key, Some(p)),
                            Err(problems) => {
                                let text = berth_netpolicy::Error::Invalid { problems }.to_string();
                                tracing::warn!(error = %text, "NetworkPolicy from the Kubernetes API not enforced");
                                rejected.push(text);
                                (key, None)
                            }
                        }
                    };
                    match change {
                        Change::Applied(np) => {
                            let (key, policy) = compiled(&np);
                            changed |= set(&mut api.policies, key, policy);
                        }
                        Change::Deleted(np) => {
                            changed |= set(&mut api.policies, compiled(&np).0, None);
                        }
                        Change::Relisted(all) => {
                            let listed: BTreeMap<String, Policy> = all
                                .iter()
                                .filter_map(|np| match compiled(np) {
                                    (key, Some(p)) => Some((key, p)),
                                    (_, None) => None,
                                })
                                .collect();
                            changed |= replace(&mut api.policies, listed);
                            changed |= api.listed.insert("NetworkPolicy");
                        }
                    }
                }
                PolicyKubeChange::Namespace(change) => {
                    let of = |ns: &KubeNamespace| {
                        let name = ns.metadata.name.clone().unwrap_or_default();
                        (
                            namespace_key(&name),
                            Namespace {
                                name,
                                labels: ns.metadata.labels.clone().unwrap_or_default(),
                            },
                        )
                    };
                    match change {
                        Change::Applied(ns) => {
                            let (k, n) = of(&ns);
                            changed |= set(&mut api.namespaces, k, Some(n));
                        }
                        Change::Deleted(ns) => {
                            changed |= set(&mut api.namespaces, of(&ns).0, None);
                        }
                        Change::Relisted(all) => {
                            changed |=
                                replace(&mut api.namespaces, all.iter().map(|ns| of(ns)).collect());
                            changed |= api.listed.insert("Namespace");
                        }
                    }
                }
                PolicyKubeChange::Pod(change) => {
                    let key = |p: &KubePod| {
                        format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or("default"),
                            p.metadata.name.as_deref().unwrap_or_default()
                        )
                    };
                    match change {
                        Change::Applied(p) => {
                            changed |= set(&mut api.pods, key(&p), api_pod(&p));
                        }
                        Change::Deleted(p) => {
                            changed |= set(&mut api.pods, key(&p), None);
                        }
                        Change::Relisted(all) => {
                            let listed = all
                                .iter()
                                .filter_map(|p| api_pod(p).map(|pod| (key(p), pod)))
                                .collect();
                            changed |= replace(&mut api.pods, listed);
                            changed |= api.listed.insert("Pod");
                        }
                    }
                }
            }
        }
        if !changed {
            return Ok((PolicyChanges::default(), rejected));
        }
        let (changes, _, _) = self.reconcile()?;
        Ok((changes, rejected))
    }

    fn reconcile_pods(
        &mut self,
        pods: Vec<LocalPod>,
    ) -> Result<(PolicyChanges, f64, f64), PolicyStoreError> {
        let started = Instant::now();
        self.used_rules.clear();
        let mut all: Vec<Pod> = pods.iter().map(|p| p.pod.clone()).collect();
        let endpoint_keys: Vec<String> = pods.iter().map(|p| p.pod.key()).collect();
        if let Some(api) = &self.api {
            // Every other pod of the cluster is a peer with an identity.
            let known: BTreeSet<&String> = endpoint_keys.iter().collect();
            all.extend(
                api.pods
                    .iter()
                    .filter(|(key, _)| !known.contains(key))
                    .map(|(_, (pod, _))| pod.clone()),
            );
        }
        let (effective_policies, effective_namespaces) = self.effective();
        let policies: Vec<Policy> = effective_policies.values().cloned().collect();
        let namespaces: Vec<Namespace> = effective_namespaces.values().cloned().collect();
        let compiled = berth_netpolicy::compile_tables(
            &ClusterState {
                policies: &policies,
                pods: &all,
                namespaces: &namespaces,
                node_addrs: &self.node_addrs,
                endpoints: &endpoint_keys,
            },
            &mut self.state.identities,
        );
        // Kernel tables, shared by content.
        let mut interned: BTreeMap<KernelTable, Arc<KernelTable>> = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        for lp in &pods {
            let Some(tables) = compiled.endpoints.get(&lp.pod.key()) else {
                continue;
            };
            let mut kernel = |t: &Option<berth_netpolicy::Table>, store: &mut Self| {
                t.as_ref().map(|t| {
                    let mut rules: KernelTable = t
                        .entries
                        .iter()
                        .map(|e| KernelRule {
                            peer: e.peer,
                            proto: protocol_number(e.proto),
                            port: e.port,
                            port_prefix_len: e.port_prefix_len,
                            rule_id: store.rule_id(&e.rule),
                        })
                        .collect();
                    rules.sort();
                    rules.dedup_by(|a, b| {
                        (a.peer, a.proto, a.port, a.port_prefix_len)
                            == (b.peer, b.proto, b.port, b.port_prefix_len)
                    });
                    interned
                        .entry(rules.clone())
                        .or_insert_with(|| Arc::new(rules))
                        .clone()
                })
            };
            let ingress = kernel(&tables.ingress, self);
            let egress = kernel(&tables.egress, self);
            let audit = self.global_audit
                || effective_namespaces
                    .get(&namespace_key(&lp.pod.namespace))
                    .and_then(|n| n.labels.get(AUDIT_LABEL))
                    .is_some_and(|v| v == "true");
            endpoints.insert(
                lp.ifindex,
                DesiredEndpoint {
                    identity: tables.identity,
                    ingress,
                    egress,
                    audit,
                },
            );
        }
        let compile_seconds = started.elapsed().as_secs_f64();
        let written = Instant::now();
        let changes = self.writer.reconcile(&compiled.prefixes, &endpoints)?;
        let reconcile_seconds = written.elapsed().as_secs_f64();
        // The maps no longer refer to identities nothing has: forget them (their numbers are
        // never handed out again).
        self.state.identities.retain(&compiled.live_keys());
        // Likewise the ids of rules no table holds any more (deleted or changed policies).
        let used = std::mem::take(&mut self.used_rules);
        self.state.rule_ids.retain(|_, id| used.contains(id));
        self.metrics
            .reconcile_seconds
            .observe(compile_seconds + reconcile_seconds);
        self.metrics.policies.set(policies.len() as i64);
        self.metrics.endpoints.set(endpoints.len() as i64);
        self.metrics
            .identities
            .set(compiled.identities.len() as i64);
        let (tables, rules) = self.writer.sizes();
        self.metrics.tables.set(tables as i64);
        self.metrics.rules.set(rules as i64);
        self.compiled = Some(compiled);
        self.pods = pods;
        self.cluster_pods = all;
        self.effective_policies = effective_policies;
        self.effective_namespaces = effective_namespaces;
        if let Some(hub) = &self.events {
            self.publish_attribution(hub);
        }
        self.save()?;
        if changes != PolicyChanges::default() {
            tracing::info!(
                ?changes,
                compile_seconds,
                reconcile_seconds,
                "policy reconciled"
            );
        }
        Ok((changes, compile_seconds, reconcile_seconds))
    }

    fn save(&mut self) -> Result<(), PolicyStoreError> {
        Ok(self.file.save(&self.state)?)
    }

    /// Applies manifests: every object is validated first; then they replace the objects of the
    /// same kind and name, the maps are reconciled, and the state is saved.
    pub fn apply(&mut self, bytes: &[u8], origin: &str) -> Result<PolicyOutcome, PolicyStoreError> {
        let mut objects = berth_netpolicy::parse_objects(bytes, origin)?;
        let before = self.snapshot();
        let mut lines = Vec::new();
        for (key, raw) in std::mem::take(&mut objects.raw) {
            let verb = match self.state.objects.get(&key) {
                None => "created",
                Some(old) if *old == raw => "unchanged",
                Some(_) => "configured",
            };
            lines.push(format!("{} {verb}", display_key(&key)));
            self.state.objects.insert(key, raw);
        }
        self.insert_parsed(objects);
        self.commit(before, lines)
    }

    /// Deletes the objects named in manifests (absent ones are reported, not errors).
    pub fn delete(
        &mut self,
        bytes: &[u8],
        origin: &str,
    ) -> Result<PolicyOutcome, PolicyStoreError> {
        let objects = berth_netpolicy::parse_objects(bytes, origin)?;
        let keys: Vec<String> = objects.raw.into_keys().collect();
        self.delete_keys(&keys)
    }

    /// Deletes one NetworkPolicy by namespace and name.
    pub fn delete_policy(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<PolicyOutcome, PolicyStoreError> {
        let key = policy_key(namespace, name);
        if !self.state.objects.contains_key(&key) {
            return Err(PolicyStoreError::Lookup(format!(
                "networkpolicy {namespace}/{name} not found"
            )));
        }
        self.delete_keys(&[key])
    }

    fn delete_keys(&mut self, keys: &[String]) -> Result<PolicyOutcome, PolicyStoreError> {
        let before = self.snapshot();
        let mut lines = Vec::new();
        for key in keys {
            self.policies.remove(key);
            self.namespaces.remove(key);
            let verb = if self.state.objects.remove(key).is_some() {
                "deleted"
            } else {
                "not found"
            };
            lines.push(format!("{} {verb}", display_key(key)));
        }
        self.commit(before, lines)
    }

    /// The objects as they are, to put back if a change fails.
    fn snapshot(&self) -> Snapshot {
        (
            self.state.objects.clone(),
            self.policies.clone(),
            self.namespaces.clone(),
        )
    }

    /// Reconciles (which saves) the changed object set; on failure the previous objects are
    /// put back (and reconciled again) so a failed change changes nothing.
    fn commit(
        &mut self,
        before: Snapshot,
        lines: Vec<String>,
    ) -> Result<PolicyOutcome, PolicyStoreError> {
        match self.reconcile() {
            Ok((dataplane, compile_seconds, reconcile_seconds)) => Ok(PolicyOutcome {
                text: lines.join("\n"),
                dataplane,
                compile_seconds,
                reconcile_seconds,
            }),
            Err(e) => {
                (self.state.objects, self.policies, self.namespaces) = before;
                let _ = self.reconcile();
                Err(e)
            }
        }
    }

    /// Re-reads the node's addresses and the engine's containers and reconciles (a container
    /// started or stopped).
    /// Nothing is compiled when neither changed (the periodic call usually finds nothing).
    pub fn containers_changed(&mut self) -> Result<PolicyChanges, PolicyStoreError> {
        // The first container on a bridge brings the bridge's address (a node address) up.
        let node_before = std::mem::take(&mut self.node_addrs);
        self.refresh_node();
        if self.waiting_for_api() {
            return Ok(PolicyChanges::default());
        }
        let pods = self.endpoints();
        if self.compiled.is_some() && pods == self.pods && self.node_addrs == node_before {
            return Ok(PolicyChanges::default());
        }
        self.reconcile_pods(pods).map(|(c, _, _)| c)
    }

    /// Every policy and namespace, and the endpoints with their identities.
    pub fn view(&self) -> serde_json::Value {
        let compiled = self.compiled.as_ref();
        let policies: Vec<serde_json::Value> = self
            .effective_policies
            .iter()
            .map(|(key, p)| {
                let from_api = self
                    .api
                    .as_ref()
                    .is_some_and(|api| api.policies.contains_key(key));
                let source = match (self.policies.contains_key(key), from_api) {
                    (true, true) => "file (shadows kubernetes)",
                    (true, false) => "file",
                    _ => "kubernetes",
                };
                let selected: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|lp| p.selects(&lp.pod))
                    .map(|lp| lp.pod.name.clone())
                    .collect();
                let mut types = Vec::new();
                if p.ingress.is_some() {
                    types.push("Ingress");
                }
                if p.egress.is_some() {
                    types.push("Egress");
                }
                serde_json::json!({
                    "namespace": p.namespace,
                    "name": p.name,
                    "policy_types": types,
                    "source": source,
                    "ingress_rules": p.ingress.as_ref().map(Vec::len),
                    "egress_rules": p.egress.as_ref().map(Vec::len),
                    "selects": selected,
                })
            })
            .collect();
        let endpoints: Vec<serde_json::Value> = self
            .pods
            .iter()
            .map(|lp| {
                let tables = compiled.and_then(|c| c.endpoints.get(&lp.pod.key()));
                serde_json::json!({
                    "pod": lp.pod.key(),
                    "container": lp.container_id,
                    "ip": lp.pod.ip,
                    "ifindex": lp.ifindex,
                    "identity": tables.map(|t| t.identity),
                    "ingress_enforced": tables.map(|t| t.ingress.is_some()),
                    "egress_enforced": tables.map(|t| t.egress.is_some()),
                })
            })
            .collect();
        let namespaces: Vec<serde_json::Value> = self
            .effective_namespaces
            .values()
            .map(|n| serde_json::json!({ "name": n.name, "labels": n.labels }))
            .collect();
        serde_json::json!({
            "policies": policies,
            "namespaces": namespaces,
            "endpoints": endpoints,
            "identities": compiled.map_or(0, |c| c.identities.len()),
        })
    }

    /// The verdict for a connection and the policy and rule that decide it, from the reference
    /// semantics, with what the compiled kernel tables say beside it.
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: &str,
    ) -> Result<serde_json::Value, PolicyStoreError> {
        let proto = Protocol::from_api(&proto.to_ascii_uppercase()).ok_or_else(|| {
            PolicyStoreError::Lookup(format!("unknown protocol {proto:?}: TCP, UDP or SCTP"))
        })?;
        let pods = &self.cluster_pods;
        let policies: Vec<Policy> = self.effective_policies.values().cloned().collect();
        let namespaces: Vec<Namespace> = self.effective_namespaces.values().cloned().collect();
        let from = self.resolve(pods, from)?;
        let to = self.resolve(pods, to)?;
        let verdict =
            berth_netpolicy::evaluate(&policies, pods, &namespaces, from, to, port, proto);
        Ok(serde_json::json!({
            "allowed": verdict.allowed,
            "explanation": verdict.reason.to_string(),
            "egress": verdict.reason.egress.as_ref().map(|d| d.to_string()),
            "ingress": verdict.reason.ingress.as_ref().map(|d| d.to_string()),
        }))
    }

    fn resolve<'a>(&self, pods: &'a [Pod], what: &str) -> Result<Peer<'a>, PolicyStoreError> {
        if let Ok(ip) = what.parse::<Ipv4Addr>() {
            if let Some(p) = pods.iter().find(|p| p.ip == Some(ip)) {
                return Ok(Peer::Pod(p));
            }
            if self.node_addrs.contains(&ip) {
                return Ok(Peer::Node(ip));
            }
            return Ok(Peer::Ip(ip));
        }
        let (ns, name) = match what.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, what),
        };
        let found: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.name == name && ns.is_none_or(|ns| p.namespace == ns))
            .collect();
        match found.as_slice() {
            [p] => Ok(Peer::Pod(p)),
            [] => Err(PolicyStoreError::Lookup(format!(
                "no pod {what:?} on this node (give NAMESPACE/NAME, a container name, or an IPv4 address)"
            ))),
            _ => Err(PolicyStoreError::Lookup(format!(
                "{what:?} names several pods: give NAMESPACE/NAME"
            ))),
        }
    }

    /// Hands the event decoder who each endpoint and rule id is.
    fn publish_attribution(&self, hub: &crate::events::EventHub) {
        let mut a = hub.attribution.write().unwrap_or_else(|p| p.into_inner());
        a.endpoints = self.pods.iter().map(|p| (p.ifindex, p.pod.key())).collect();
        a.rules = self
            .state
            .rule_ids
            .iter()
            .map(|(r, id)| (*id, r.clone()))
            .collect();
        a.selecting.clear();
        for lp in &self.pods {
            for (dir, ingress) in [
                (berth_common::policy::DIR_INGRESS, true),
                (berth_common::policy::DIR_EGRESS, false),
            ] {
                let selecting: Vec<String> = self
                    .effective_policies
                    .values()
                    .filter(|p| {
                        let rules = if ingress { &p.ingress } else { &p.egress };
                        rules.is_some() && p.selects(&lp.pod)
                    })
                    .map(Policy::key)
                    .collect();
                if !selecting.is_empty() {
                    a.selecting.insert((lp.ifindex, dir), selecting);
                }
            }
        }
    }

    pub fn gc_conntrack(&mut self, now_ns: u64) -> usize {
        self.writer
            .gc_conntrack(now_ns, &crate::dataplane::lb::CtTimeouts::default())
            .1
    }
}

/// Saved objects and their parsed forms (see [`PolicyStore::snapshot`]).
type Snapshot = (
    BTreeMap<String, serde_json::Value>,
    BTreeMap<String, Policy>,
    BTreeMap<String, Namespace>,
);

/// The key of a NetworkPolicy in the store (as `berth_netpolicy::Objects::raw` spells it).
fn policy_key(namespace: &str, name: &str) -> String {
    format!("NetworkPolicy {namespace}/{name}")
}

/// The key of a Namespace in the store.
fn namespace_key(name: &str) -> String {
    format!("Namespace {name}")
}

/// `NetworkPolicy default/web` → `networkpolicy/default/web`.
fn display_key(key: &str) -> String {
    match key.split_once(' ') {
        Some((kind, name)) => format!("{}/{name}", kind.to_ascii_lowercase()),
        None => key.to_owned(),
    }
}
