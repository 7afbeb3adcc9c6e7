//! The agent's desired state for services and the one reconcile path into the data plane.
//!
//! Two sources feed it Service and EndpointSlice objects: files (`berth svc apply`, through the
//! API socket) and the Kubernetes API server (the agent's watchers, [`berth_kube`]). Each source
//! has its own [`Catalog`], validated and persisted on its own, so neither clobbers the other:
//!
//! * **Files win.** A Service defined by a file is served from the file's objects (its Service
//!   and its EndpointSlices); the API server's Service of the same namespace and name is kept
//!   but shadowed, and served again when the file's Service is deleted. A file is a node-local,
//!   deliberate override (debugging a node, or serving something the cluster does not know); the
//!   API server is the default. `berth svc ls` shows each service's source.
//! * A data-plane frontend (`address:port/protocol`) claimed by two services of different
//!   sources is programmed for the one that claimed it first; the other is reported as a
//!   conflict and gets it when the first releases it. (Within a source, the catalog refuses such
//!   conflicts outright.)
//!
//! Every change is compiled into frontends for this node and written to the maps by
//! [`LbWriter`], which refuses a change that would not fit before it writes anything. Only the
//! services a change touches are recompiled and rewritten, so one change costs the same with 10
//! or 10,000 services. Both catalogs are persisted under the state directory, so a restarted
//! agent reconciles from what was asked, also while the API server is unreachable; the API
//! server's set replaces the persisted one at every (re)list.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use berth_common::lb::{Backend, FrontendKey, SCOPE_EXTERNAL, SCOPE_INTERNAL};
use berth_services::{Catalog, Kind, NodeContext, Object, ObjectKey, Scope, ServiceRef};

use crate::dataplane::{
    PinLayout,
    lb::{DesiredFrontend, LbError, LbWriter, ReconcileReport},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] berth_services::Error),
    #[error(transparent)]
    Dataplane(#[from] LbError),
    #[error("{op} {path}: {detail}")]
    State {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "service/{0} comes from the Kubernetes API server; delete it there (berth only deletes what files applied)"
    )]
    NotFromFiles(ServiceRef),
}

/// Where a service's objects come from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `berth svc apply`.
    File,
    /// The Kubernetes API server's watch.
    Kubernetes,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::File => "file",
            Source::Kubernetes => "kubernetes",
        })
    }
}

/// What `apply`/`delete` did, as the API returns it.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    /// kubectl-style lines: "service/default/web created".
    pub text: String,
    pub summary: serde_json::Value,
    pub dataplane: ReconcileReport,
    /// Reading and validating the manifests.
    pub parse_seconds: f64,
    /// Writing the change into the maps.
    pub reconcile_seconds: f64,
    /// Saving the desired state.
    pub persist_seconds: f64,
}

/// Prometheus instruments of the service reconcile path.
#[derive(Clone)]
pub struct ServiceMetrics {
    pub reconcile_seconds: prometheus::Histogram,
    pub services: prometheus::IntGauge,
    pub frontends: prometheus::IntGauge,
    pub backends: prometheus::IntGauge,
    /// Frontends not programmed because another service holds them.
    pub conflicts: prometheus::IntGauge,
}

/// A change from the API server's watch, in the catalog's terms.
#[derive(Debug, Clone)]
pub enum KubeChange {
    Applied(Object),
    Deleted(Object),
    /// Everything of `kind` the API server has (after a list).
    Relisted(Kind, Vec<Object>),
}

/// What one batch of API changes did.
#[derive(Debug, Default)]
pub struct KubeOutcome {
    pub dataplane: ReconcileReport,
    /// Objects the catalog refused (the rest of the batch was applied).
    pub rejected: Vec<String>,
    pub services_touched: usize,
}

pub struct ServiceStore {
    files: Catalog,
    kube: Catalog,
    ctx: NodeContext,
    /// `ctx` without backend networks: the API server's endpoints are the cluster's pod
    /// addresses, which berth does not second-guess (neither does kube-proxy); the network
    /// check guards against files pointing traffic anywhere.
    kube_ctx: NodeContext,
    extra_networks: Vec<(Ipv4Addr, u8)>,
    path: PathBuf,
    kube_path: PathBuf,
    /// The API server's catalog changed since it was last written.
    kube_dirty: bool,
    writer: LbWriter,
    metrics: ServiceMetrics,
    /// The frontend keys programmed for each service, so a change rewrites only its service.
    by_service: BTreeMap<ServiceRef, BTreeSet<FrontendKey>>,
    /// Which service holds each programmed frontend key.
    owner: HashMap<FrontendKey, ServiceRef>,
    /// Services refused a key another service holds, retried when keys are released.
    refused: BTreeMap<ServiceRef, Vec<String>>,
}

fn read_catalog(path: &Path, what: &str) -> Result<Catalog, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::State {
            op: "reading the persisted services from",
            path: path.to_owned(),
            detail: format!("{e} (move the file away to start with no {what})"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
        Err(e) => Err(StoreError::State {
            op: "reading",
            path: path.to_owned(),
            detail: e.to_string(),
        }),
    }
}

impl ServiceStore {
    /// Opens the persisted catalogs (a corrupt file is an error: the agent refuses to start
    /// rather than forget every service) and reconciles the maps with them.
    pub fn open(
        state_dir: &Path,
        layout: &PinLayout,
        node_name: &str,
        extra_networks: Vec<(Ipv4Addr, u8)>,
        maglev_size: u32,
        hairpin: Ipv4Addr,
        metrics: ServiceMetrics,
    ) -> Result<Self, StoreError> {
        let path = state_dir.join("services.json");
        let kube_path = state_dir.join("kube-services.json");
        let files = read_catalog(&path, "file services")?;
        let kube = read_catalog(
            &kube_path,
            "cached Kubernetes services (the next list brings them back)",
        )?;
        let mut writer = LbWriter::open(layout, maglev_size)?;
        writer.set_hairpin_addr(hairpin)?;
        let mut store = Self {
            files,
            kube,
            ctx: NodeContext::new(node_name),
            kube_ctx: NodeContext::new(node_name),
            extra_networks,
            path,
            kube_path,
            kube_dirty: false,
            writer,
            metrics,
            by_service: BTreeMap::new(),
            owner: HashMap::new(),
            refused: BTreeMap::new(),
        };
        store.refresh_node();
        let report = store.reconcile_all()?;
        tracing::info!(
            file_services = store.files.services().count(),
            kubernetes_services = store.kube.services().count(),
            added = report.frontends_added,
            updated = report.frontends_updated,
            removed = report.frontends_removed,
            unchanged = report.frontends_unchanged,
            "services reconciled from the persisted state"
        );
        Ok(store)
    }

    /// Re-reads this node's addresses: they are the NodePort addresses and, with the
    /// configured networks, where backends from files may live.
    pub fn refresh_node(&mut self) {
        let mut addrs = BTreeMap::new();
        let mut networks = self.extra_networks.clone();
        for a in crate::dataplane::node_addresses() {
            addrs.insert(a.addr, a.ifindex);
            if !a.addr.is_loopback() {
                networks.push((a.addr, a.prefix_len));
            }
        }
        self.writer.maps().set_node_addrs(&addrs);
        networks.sort();
        networks.dedup();
        self.ctx.known_networks = networks;
    }

    /// Validates and applies manifests (YAML or JSON, one or many documents).
    pub fn apply(&mut self, text: &[u8], origin: &str) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let objects = Catalog::parse(text, origin)?;
        let mut next = self.files.clone();
        let summary = next.apply(objects, &self.ctx)?;
        let parsed = started.elapsed().as_secs_f64();
        let mut outcome = self.commit_files(
            next,
            summary.to_string(),
            serde_json::to_value(&summary).unwrap_or_default(),
        )?;
        outcome.parse_seconds = parsed;
        Ok(outcome)
    }

    /// Deletes the objects named in manifests (from the file source).
    pub fn delete(&mut self, text: &[u8], origin: &str) -> Result<Outcome, StoreError> {
        let objects = Catalog::parse(text, origin)?;
        let mut next = self.files.clone();
        let summary = next.delete(&objects);
        self.commit_files(
            next,
            summary.to_string(),
            serde_json::to_value(&summary).unwrap_or_default(),
        )
    }

    /// Deletes one file service and its slices. A service that only the API server defines is
    /// refused (the watch would bring it back).
    pub fn delete_service(&mut self, svc: &ServiceRef) -> Result<Option<Outcome>, StoreError> {
        let mut next = self.files.clone();
        if !next.delete_service(svc) {
            if self.kube.service(svc).is_some() {
                return Err(StoreError::NotFromFiles(svc.clone()));
            }
            return Ok(None);
        }
        self.commit_files(
            next,
            format!("service/{svc} deleted\n"),
            serde_json::json!({ "deleted": svc.to_string() }),
        )
        .map(Some)
    }

    fn commit_files(
        &mut self,
        next: Catalog,
        text: String,
        summary: serde_json::Value,
    ) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let touched: BTreeSet<ServiceRef> = self
            .files
            .services()
            .chain(next.services())
            .map(|e| e.service.clone())
            .filter(|svc| {
                self.files.service(svc) != next.service(svc)
                    || !self.files.slices_of(svc).eq(next.slices_of(svc))
            })
            .collect();
        let previous = std::mem::replace(&mut self.files, next);
        let dataplane = match self.reconcile_services(touched) {
            Ok(report) => report,
            Err(e) => {
                self.files = previous;
                return Err(e);
            }
        };
        let reconciled = started.elapsed().as_secs_f64();
        let started = Instant::now();
        persist(&self.path, &self.files)?;
        Ok(Outcome {
            text,
            summary,
            dataplane,
            parse_seconds: 0.0,
            reconcile_seconds: reconciled,
            persist_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Applies a batch of changes from the API server's watch. The API server has validated
    /// its objects, so one the catalog refuses (say, a frontend another service of the cluster
    /// claims while the watch catches up) is skipped and reported, and the rest of the batch is
    /// applied. Relists replace every object of their kind.
    pub fn apply_kube(&mut self, changes: Vec<KubeChange>) -> Result<KubeOutcome, StoreError> {
        let mut touched: BTreeSet<ServiceRef> = BTreeSet::new();
        let mut rejected = Vec::new();
        // Consecutive applies are validated together (one catalog pass for a burst); deletes
        // and relists flush them so the order of the watch is kept.
        let mut pending: Vec<Object> = Vec::new();
        for change in changes {
            match change {
                KubeChange::Applied(object) => {
                    touched.insert(service_of(&object));
                    pending.push(object);
                }
                KubeChange::Deleted(object) => {
                    self.kube_apply(std::mem::take(&mut pending), &mut rejected);
                    touched.insert(service_of(&object));
                    self.kube.delete(std::slice::from_ref(&object));
                }
                KubeChange::Relisted(kind, objects) => {
                    self.kube_apply(std::mem::take(&mut pending), &mut rejected);
                    let listed: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
                    let stale: Vec<Object> = self
                        .kube_objects(kind)
                        .filter(|(key, _)| !listed.contains(key))
                        .map(|(_, object)| object)
                        .collect();
                    for object in stale.iter().chain(&objects) {
                        touched.insert(service_of(object));
                    }
                    self.kube.delete(&stale);
                    self.kube_apply(objects, &mut rejected);
                }
            }
        }
        self.kube_apply(pending, &mut rejected);
        let services_touched = touched.len();
        let dataplane = self.reconcile_services(touched)?;
        // Written later, off this path (see `kube_snapshot`): at 10,000 services the file is
        // megabytes, and a change must not wait for it.
        self.kube_dirty = true;
        Ok(KubeOutcome {
            dataplane,
            rejected,
            services_touched,
        })
    }

    /// Every stored object of `kind` from the API server, as deletable stubs.
    fn kube_objects(&self, kind: Kind) -> impl Iterator<Item = (ObjectKey, Object)> + '_ {
        let services = self
            .kube
            .services()
            .filter(move |_| kind == Kind::Service)
            .map(|e| stub(Kind::Service, &e.service.namespace, &e.service.name));
        let slices = self
            .kube
            .slices()
            .filter(move |_| kind == Kind::EndpointSlice)
            .map(|s| stub(Kind::EndpointSlice, &s.namespace, &s.name));
        services.chain(slices).map(|o| (o.key(), o))
    }

    /// Applies API objects: all at once when all are valid, else one by one, skipping those
    /// the catalog refuses.
    fn kube_apply(&mut self, objects: Vec<Object>, rejected: &mut Vec<String>) {
        if objects.is_empty() {
            return;
        }
        let Err(_) = self.kube.apply(objects.clone(), &self.kube_ctx) else {
            return;
        };
        for object in objects {
            if let Err(e) = self.kube.apply(vec![object], &self.kube_ctx) {
                tracing::warn!(error = %e, "object from the Kubernetes API not served");
                rejected.push(e.to_string());
            }
        }
    }

    /// A copy of the API server's catalog to write, if it changed since the last one. The
    /// caller writes it with [`ServiceStore::write_kube_cache`] without holding the store: the
    /// file is only a cache for a restart while the API server is unreachable (every relist
    /// replaces it), so it may lag the maps by the housekeeping interval.
    pub fn kube_snapshot(&mut self) -> Option<(PathBuf, Catalog)> {
        if !std::mem::take(&mut self.kube_dirty) {
            return None;
        }
        Some((self.kube_path.clone(), self.kube.clone()))
    }

    /// Writes a snapshot from [`ServiceStore::kube_snapshot`].
    pub fn write_kube_cache(path: &Path, catalog: &Catalog) -> Result<(), StoreError> {
        persist(path, catalog)
    }

    /// Where `svc` is served from, and the catalog holding its objects.
    fn effective(&self, svc: &ServiceRef) -> Option<(Source, &Catalog)> {
        if self.files.service(svc).is_some() {
            Some((Source::File, &self.files))
        } else if self.kube.service(svc).is_some() {
            Some((Source::Kubernetes, &self.kube))
        } else {
            None
        }
    }

    fn ctx_of(&self, source: Source) -> &NodeContext {
        match source {
            Source::File => &self.ctx,
            Source::Kubernetes => &self.kube_ctx,
        }
    }

    /// The frontends `svc` should have now, from its effective source.
    fn frontends_of(&self, svc: &ServiceRef) -> Vec<berth_services::Frontend> {
        match self.effective(svc) {
            Some((source, catalog)) => catalog.frontends_of(svc, self.ctx_of(source)),
            None => Vec::new(),
        }
    }

    /// Recompiles `touched` services (and any waiting for a key one of them releases) and
    /// writes the difference into the maps.
    fn reconcile_services(
        &mut self,
        mut touched: BTreeSet<ServiceRef>,
    ) -> Result<ReconcileReport, StoreError> {
        let timer = self.metrics.reconcile_seconds.start_timer();
        if !self.refused.is_empty() && !touched.is_empty() {
            touched.extend(self.refused.keys().cloned());
        }
        // Release the touched services' keys first, so a key moving between two services of
        // one batch goes to its new owner.
        for svc in &touched {
            for key in self.by_service.get(svc).into_iter().flatten() {
                if self.owner.get(key) == Some(svc) {
                    self.owner.remove(key);
                }
            }
        }
        let mut upsert = Vec::new();
        let mut index = Vec::with_capacity(touched.len());
        // File services claim first: they win a key contested within one batch.
        let mut order: Vec<&ServiceRef> = touched.iter().collect();
        order.sort_by_key(|svc| self.effective(svc).map(|(s, _)| s));
        for svc in order {
            let mut keys = BTreeSet::new();
            let mut refused = Vec::new();
            let frontends = self.frontends_of(svc);
            for (fe, desired) in frontends.iter().zip(desired_frontends(&frontends)) {
                match self.owner.get(&desired.key) {
                    Some(holder) if holder != svc => {
                        refused.push(format!(
                            "{} {} {}: held by service/{holder}",
                            fe.service,
                            fe.kind,
                            fe.address()
                        ));
                    }
                    _ => {
                        self.owner.insert(desired.key, svc.clone());
                        keys.insert(desired.key);
                        upsert.push(desired);
                    }
                }
            }
            if refused.is_empty() {
                self.refused.remove(svc);
            } else {
                for conflict in &refused {
                    tracing::warn!(%conflict, "frontend not programmed");
                }
                self.refused.insert(svc.clone(), refused);
            }
            index.push((svc.clone(), keys));
        }
        let mut remove = Vec::new();
        for (svc, keys) in &index {
            if let Some(old) = self.by_service.get(svc) {
                remove.extend(
                    old.iter()
                        .filter(|k| !keys.contains(k) && !self.owner.contains_key(k))
                        .copied(),
                );
            }
        }
        let report = self.writer.apply_changes(&remove, &upsert)?;
        for (svc, keys) in index {
            if keys.is_empty() {
                self.by_service.remove(&svc);
            } else {
                self.by_service.insert(svc, keys);
            }
        }
        timer.observe_duration();
        self.record(&report);
        Ok(report)
    }

    /// Makes the maps hold exactly the effective services' frontends (start-up).
    fn reconcile_all(&mut self) -> Result<ReconcileReport, StoreError> {
        let timer = self.metrics.reconcile_seconds.start_timer();
        self.by_service.clear();
        self.owner.clear();
        self.refused.clear();
        let all: BTreeSet<ServiceRef> = self
            .files
            .services()
            .chain(self.kube.services())
            .map(|e| e.service.clone())
            .collect();
        let mut desired = Vec::new();
        for svc in &all {
            let frontends = self.frontends_of(svc);
            for (fe, d) in frontends.iter().zip(desired_frontends(&frontends)) {
                if let Some(holder) = self.owner.get(&d.key) {
                    let conflict = format!(
                        "{} {} {}: held by service/{holder}",
                        fe.service,
                        fe.kind,
                        fe.address()
                    );
                    tracing::warn!(%conflict, "frontend not programmed");
                    self.refused.entry(svc.clone()).or_default().push(conflict);
                    continue;
                }
                self.owner.insert(d.key, svc.clone());
                self.by_service
                    .entry(svc.clone())
                    .or_default()
                    .insert(d.key);
                desired.push(d);
            }
        }
        let report = self.writer.reconcile(&desired)?;
        timer.observe_duration();
        self.record(&report);
        Ok(report)
    }

    fn record(&self, report: &ReconcileReport) {
        let (frontends, backends) = self.writer.counts();
        // Both sources, a service both define counted once (files are few: look those up).
        let shadowed = self
            .files
            .services()
            .filter(|e| self.kube.service(&e.service).is_some())
            .count();
        let services = self.files.services().count() + self.kube.services().count() - shadowed;
        self.metrics.services.set(services as i64);
        self.metrics.frontends.set(frontends as i64);
        self.metrics.backends.set(backends as i64);
        self.metrics
            .conflicts
            .set(self.refused.values().map(Vec::len).sum::<usize>() as i64);
        for conflict in &report.conflicts {
            tracing::warn!(%conflict, "frontend not programmed");
        }
    }

    /// Every service with its source, frontends and their backends, for `berth svc ls/show`.
    pub fn view(&self) -> Vec<ServiceView> {
        let mut views: BTreeMap<ServiceRef, ServiceView> = BTreeMap::new();
        for (source, catalog) in [
            (Source::Kubernetes, &self.kube),
            (Source::File, &self.files),
        ] {
            for entry in catalog.services() {
                let svc = &entry.service;
                let shadowed = (source == Source::File && self.kube.service(svc).is_some())
                    .then_some(Source::Kubernetes);
                let frontends = catalog.frontends_of(svc, self.ctx_of(source));
                // Files come second: a file's service replaces the API server's in the list.
                views.insert(
                    svc.clone(),
                    ServiceView {
                        service: svc.to_string(),
                        source,
                        shadows: shadowed,
                        conflicts: self.refused.get(svc).cloned().unwrap_or_default(),
                        detail: serde_json::to_value(entry).unwrap_or_default(),
                        frontends,
                    },
                );
            }
        }
        views.into_values().collect()
    }

    pub fn maps(&mut self) -> &mut crate::dataplane::lb::LbMaps {
        self.writer.maps()
    }
}

/// The service an object belongs to (a slice's, by its label).
fn service_of(object: &Object) -> ServiceRef {
    match object {
        Object::Service(_) => ServiceRef::new(object.namespace(), object.name()),
        Object::EndpointSlice(slice) => ServiceRef::new(
            object.namespace(),
            slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(berth_services::LABEL_SERVICE_NAME))
                .map(String::as_str)
                .unwrap_or(""),
        ),
    }
}

/// An object with only its kind, namespace and name (what [`Catalog::delete`] reads).
fn stub(kind: Kind, namespace: &str, name: &str) -> Object {
    let metadata = berth_services::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    };
    match kind {
        Kind::Service => berth_services::k8s_openapi::api::core::v1::Service {
            metadata,
            ..Default::default()
        }
        .into(),
        Kind::EndpointSlice => berth_services::k8s_openapi::api::discovery::v1::EndpointSlice {
            metadata,
            ..Default::default()
        }
        .into(),
    }
}

/// Writes a catalog atomically (temporary file, fsync, rename).
fn persist(path: &Path, catalog: &Catalog) -> Result<(), StoreError> {
    let err = |op, detail: String| StoreError::State {
        op,
        path: path.to_owned(),
        detail,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err("creating the directory of", e.to_string()))?;
    }
    let bytes = serde_json::to_vec(catalog).map_err(|e| err("encoding", e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| err("writing", e.to_string()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| err("syncing", e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err("replacing", e.to_string()))
}

/// One service as `berth svc ls/show` print it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ServiceView {
    pub service: String,
    /// Where its objects come from.
    pub source: Source,
    /// The other source also defines it (files win: the API server's version waits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadows: Option<Source>,
    /// Frontends not programmed because another service holds them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// The compiled service (type, ports, policies, slices) as the catalog holds it.
    pub detail: serde_json::Value,
    pub frontends: Vec<berth_services::Frontend>,
}

/// Compiles the catalog's frontends into map entries.
pub fn desired_frontends(frontends: &[berth_services::Frontend]) -> Vec<DesiredFrontend> {
    frontends
        .iter()
        .map(|fe| {
            let proto = fe.protocol.number();
            let mut backends: Vec<Backend> = fe
                .backends
                .iter()
                .map(|b| Backend {
                    addr: u32::from_ne_bytes(b.addr.octets()),
                    port: b.port.to_be(),
                    proto,
                    _pad: 0,
                })
                .collect();
            backends.sort();
            backends.dedup();
            let scope = match fe.scope {
                Scope::Internal => SCOPE_INTERNAL,
                Scope::External => SCOPE_EXTERNAL,
            };
            DesiredFrontend {
                key: FrontendKey {
                    addr: fe.addr.map(|a| u32::from_ne_bytes(a.octets())).unwrap_or(0),
                    port: fe.port.to_be(),
                    proto,
                    scope,
                },
                backends,
                affinity_timeout_s: fe.affinity_timeout,
                // Maglev where flows arrive from outside: every node picks the same backend for
                // a flow, and a backend change moves few flows.
                maglev: scope == SCOPE_EXTERNAL,
                label: format!("{} {} {} ({})", fe.service, fe.kind, fe.address(), fe.scope),
            }
        })
        .collect()
}
