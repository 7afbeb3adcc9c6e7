//! The agent's desired state for services and the one reconcile path into the data plane.
//!
//! `berth svc apply` (through the API) and, later, the Kubernetes watchers feed Service and
//! EndpointSlice objects into one [`Catalog`]; every change is validated as a whole by the
//! catalog first (a bad object changes nothing), compiled into frontends for this node, and
//! written to the maps by [`LbWriter`], which refuses a change that would not fit before it
//! writes anything. The catalog is persisted under the state directory after each successful
//! change, so a restarted agent reconciles from what was asked, not from what the maps hold.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

use berth_common::lb::{Backend, FrontendKey, SCOPE_EXTERNAL, SCOPE_INTERNAL};
use berth_services::{Catalog, NodeContext, Scope, ServiceRef};

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
}

pub struct ServiceStore {
    catalog: Catalog,
    ctx: NodeContext,
    extra_networks: Vec<(Ipv4Addr, u8)>,
    path: PathBuf,
    writer: LbWriter,
    metrics: ServiceMetrics,
    /// The frontend keys programmed for each service, so a change rewrites only its service.
    by_service: BTreeMap<ServiceRef, BTreeSet<FrontendKey>>,
}

impl ServiceStore {
    /// Opens the persisted catalog (a corrupt file is an error: the agent refuses to start rather
    /// than forget every service) and reconciles the maps with it.
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
        let catalog = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::State {
                op: "reading the persisted services from",
                path: path.clone(),
                detail: format!("{e} (move the file away to start with no services)"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Catalog::default(),
            Err(e) => {
                return Err(StoreError::State {
                    op: "reading",
                    path,
                    detail: e.to_string(),
                });
            }
        };
        let mut writer = LbWriter::open(layout, maglev_size)?;
        writer.set_hairpin_addr(hairpin)?;
        let mut store = Self {
            catalog,
            ctx: NodeContext::new(node_name),
            extra_networks,
            path,
            writer,
            metrics,
            by_service: BTreeMap::new(),
        };
        store.refresh_node();
        let report = store.reconcile(&store.catalog.clone())?;
        tracing::info!(
            services = store.catalog.services().count(),
            added = report.frontends_added,
            updated = report.frontends_updated,
            removed = report.frontends_removed,
            unchanged = report.frontends_unchanged,
            "services reconciled from the persisted state"
        );
        Ok(store)
    }

    /// Re-reads this node's addresses: they are the NodePort addresses and, with the
    /// configured networks, where backends may live.
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
        let mut next = self.catalog.clone();
        let summary = next.apply(objects, &self.ctx)?;
        let parsed = started.elapsed().as_secs_f64();
        let mut outcome = self.commit(
            next,
            summary.to_string(),
            serde_json::to_value(&summary).unwrap_or_default(),
        )?;
        outcome.parse_seconds = parsed;
        Ok(outcome)
    }

    /// Deletes the objects named in manifests.
    pub fn delete(&mut self, text: &[u8], origin: &str) -> Result<Outcome, StoreError> {
        let objects = Catalog::parse(text, origin)?;
        let mut next = self.catalog.clone();
        let summary = next.delete(&objects);
        self.commit(
            next,
            summary.to_string(),
            serde_json::to_value(&summary).unwrap_or_default(),
        )
    }

    /// Deletes one service and its slices.
    pub fn delete_service(&mut self, svc: &ServiceRef) -> Result<Option<Outcome>, StoreError> {
        let mut next = self.catalog.clone();
        if !next.delete_service(svc) {
            return Ok(None);
        }
        self.commit(
            next,
            format!("service/{svc} deleted\n"),
            serde_json::json!({ "deleted": svc.to_string() }),
        )
        .map(Some)
    }

    fn commit(
        &mut self,
        next: Catalog,
        text: String,
        summary: serde_json::Value,
    ) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let dataplane = self.reconcile_changed(&next)?;
        let reconciled = started.elapsed().as_secs_f64();
        self.catalog = next;
        let started = Instant::now();
        self.persist()?;
        Ok(Outcome {
            text,
            summary,
            dataplane,
            parse_seconds: 0.0,
            reconcile_seconds: reconciled,
            persist_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Writes only the services that differ between the current catalog and `next`: one
    /// service's change costs the same with 10 or 10,000 services.
    fn reconcile_changed(&mut self, next: &Catalog) -> Result<ReconcileReport, StoreError> {
        let timer = self.metrics.reconcile_seconds.start_timer();
        let mut affected: BTreeSet<&ServiceRef> = BTreeSet::new();
        for entry in self.catalog.services().chain(next.services()) {
            let svc = &entry.service;
            if affected.contains(svc) {
                continue;
            }
            let same = self.catalog.service(svc) == next.service(svc)
                && self.catalog.slices_of(svc).eq(next.slices_of(svc));
            if !same {
                affected.insert(svc);
            }
        }
        let mut remove = Vec::new();
        let mut upsert = Vec::new();
        let mut index = Vec::new();
        for svc in affected {
            let desired = desired_frontends(&next.frontends_of(svc, &self.ctx));
            let keys: BTreeSet<FrontendKey> = desired.iter().map(|d| d.key).collect();
            if let Some(old) = self.by_service.get(svc) {
                remove.extend(old.iter().filter(|k| !keys.contains(k)).copied());
            }
            upsert.extend(desired);
            index.push((svc.clone(), keys));
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
        self.record(next, &report);
        Ok(report)
    }

    /// Makes the maps hold exactly `catalog`'s frontends (start-up).
    fn reconcile(&mut self, catalog: &Catalog) -> Result<ReconcileReport, StoreError> {
        let timer = self.metrics.reconcile_seconds.start_timer();
        let frontends = catalog.frontends(&self.ctx);
        let desired = desired_frontends(&frontends);
        let report = self.writer.reconcile(&desired)?;
        self.by_service.clear();
        for (fe, d) in frontends.iter().zip(&desired) {
            self.by_service
                .entry(fe.service.clone())
                .or_default()
                .insert(d.key);
        }
        timer.observe_duration();
        self.record(catalog, &report);
        Ok(report)
    }

    fn record(&self, catalog: &Catalog, report: &ReconcileReport) {
        let (frontends, backends) = self.writer.counts();
        self.metrics.services.set(catalog.services().count() as i64);
        self.metrics.frontends.set(frontends as i64);
        self.metrics.backends.set(backends as i64);
        for conflict in &report.conflicts {
            tracing::warn!(%conflict, "frontend not programmed");
        }
    }

    fn persist(&self) -> Result<(), StoreError> {
        let err = |op, detail: String| StoreError::State {
            op,
            path: self.path.clone(),
            detail,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err("creating the directory of", e.to_string()))?;
        }
        let bytes =
            serde_json::to_vec(&self.catalog).map_err(|e| err("encoding", e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| err("writing", e.to_string()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| err("syncing", e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err("replacing", e.to_string()))
    }

    /// Every service with its frontends and their backends, for `berth svc ls/show`.
    pub fn view(&self) -> Vec<ServiceView> {
        let mut by_service: BTreeMap<String, ServiceView> = BTreeMap::new();
        for entry in self.catalog.services() {
            let key = entry.service.to_string();
            by_service.insert(
                key.clone(),
                ServiceView {
                    service: key,
                    detail: serde_json::to_value(entry).unwrap_or_default(),
                    frontends: Vec::new(),
                },
            );
        }
        for fe in self.catalog.frontends(&self.ctx) {
            if let Some(view) = by_service.get_mut(&fe.service.to_string()) {
                view.frontends.push(fe);
            }
        }
        by_service.into_values().collect()
    }

    pub fn maps(&mut self) -> &mut crate::dataplane::lb::LbMaps {
        self.writer.maps()
    }
}

/// One service as `berth svc ls/show` print it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ServiceView {
    pub service: String,
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
