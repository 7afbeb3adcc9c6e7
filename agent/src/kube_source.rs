//! The agent's second source of desired state: the Kubernetes API server.
//!
//! [`berth_kube`] watches the API server and hands over batches of changes; this module feeds
//! them into the same [`ServiceStore`] that `berth svc apply` feeds (one reconcile path, two
//! sources: see the store for which wins), measures the programming latency of each change, and
//! reports the watches' health for `berth status`, `/readyz` and the metrics.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, atomic::Ordering},
    time::SystemTime,
};

use berth_kube::{
    Change, ClientSource, Health, Kind, Received, Update, batches,
    slices::{SliceVersion, discover_version},
};
use berth_services::Object;
use serde::{Deserialize, Serialize};

use crate::{
    metrics::Metrics,
    policy::{PolicyKubeChange, PolicyStore},
    services::{KubeChange, ServiceStore},
};

/// The kinds the agent watches: Services and EndpointSlices for the service store;
/// NetworkPolicies, Namespaces and Pods for the policy store.
pub const WATCHED: [Kind; 5] = Kind::ALL;

/// Most updates applied as one batch (a relist of a kind counts as one).
const MAX_BATCH: usize = 20_000;

/// The Kubernetes source as `berth status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KubeStatus {
    /// `kubeconfig PATH` or `in-cluster service account`.
    pub source: String,
    pub node_name: String,
    /// The EndpointSlice version the API server serves (none until discovery answered).
    pub endpoint_slices: Option<String>,
    /// Every watched kind has been listed and applied.
    pub synced: bool,
    /// How long the view has gone unconfirmed (0 while every watch works).
    pub stale_seconds: f64,
    pub kinds: BTreeMap<String, KindStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KindStatus {
    pub synced: bool,
    pub objects: usize,
    pub relists: u64,
    pub errors: u64,
    pub failing_for_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub last_event_seconds_ago: Option<f64>,
}

/// What the API handler needs to describe the source.
#[derive(Clone)]
pub struct KubeHandle {
    pub source: ClientSource,
    pub node_name: String,
    pub health: Health,
    pub slice_version: Arc<Mutex<Option<SliceVersion>>>,
    /// Kinds whose first list has been written into the maps.
    pub applied: Arc<Mutex<BTreeSet<Kind>>>,
}

impl KubeHandle {
    pub fn new(source: ClientSource, node_name: &str) -> Self {
        KubeHandle {
            source,
            node_name: node_name.to_owned(),
            health: Health::new(&WATCHED),
            slice_version: Arc::default(),
            applied: Arc::default(),
        }
    }

    /// Every watched kind's first list is in the maps.
    pub fn synced(&self) -> bool {
        let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        WATCHED.iter().all(|k| applied.contains(k))
    }

    pub fn status(&self) -> KubeStatus {
        let now = SystemTime::now();
        let ago = |t: Option<SystemTime>| {
            t.and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs_f64())
        };
        KubeStatus {
            source: self.source.describe(),
            node_name: self.node_name.clone(),
            endpoint_slices: self
                .slice_version
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|v| v.api_version().to_owned()),
            synced: self.synced(),
            stale_seconds: self.health.stale_for(now).as_secs_f64(),
            kinds: self
                .health
                .snapshot()
                .into_iter()
                .map(|(kind, h)| {
                    (
                        kind.to_string(),
                        KindStatus {
                            synced: h.synced,
                            objects: h.objects,
                            relists: h.relists,
                            errors: h.errors,
                            failing_for_seconds: ago(h.failing_since),
                            last_error: h.last_error,
                            last_event_seconds_ago: ago(h.last_event),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// Runs the source until the agent stops: discovers the EndpointSlice version (retrying while
/// the API server is unreachable), starts the watchers, and applies their batches.
pub async fn run(
    client: berth_kube::Client,
    handle: KubeHandle,
    services: Arc<Mutex<ServiceStore>>,
    policy: Arc<Mutex<PolicyStore>>,
    metrics: Arc<Metrics>,
) {
    let version = discover_version(&client, &handle.health).await;
    *handle
        .slice_version
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(version);
    tracing::info!(
        source = %handle.source.describe(),
        endpoint_slices = version.api_version(),
        "watching the Kubernetes API server"
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let watchers = berth_kube::spawn_watchers(
        &client,
        version,
        &WATCHED,
        &handle.health,
        &metrics.kube,
        &tx,
    );
    drop(tx);
    while let Some(batch) = batches(&mut rx, MAX_BATCH).await {
        let services = services.clone();
        let policy = policy.clone();
        let metrics = metrics.clone();
        let handle = handle.clone();
        let applied = tokio::task::spawn_blocking(move || {
            apply_batch(batch, &services, &policy, &metrics, &handle)
        })
        .await;
        if let Err(e) = applied {
            tracing::error!(error = %e, "applying Kubernetes changes panicked");
        }
    }
    for w in watchers {
        w.abort();
    }
}

/// Writes one batch into the stores, then records each change's programming latency.
fn apply_batch(
    batch: Vec<Received>,
    services: &Mutex<ServiceStore>,
    policy: &Mutex<PolicyStore>,
    metrics: &Metrics,
    handle: &KubeHandle,
) {
    let received: Vec<std::time::Instant> = batch.iter().map(|r| r.at).collect();
    let triggers: Vec<SystemTime> = batch.iter().filter_map(trigger_time).collect();
    let mut service_changes = Vec::new();
    let mut policy_changes = Vec::new();
    let mut relisted = Vec::new();
    for update in batch.into_iter().map(|r| r.update) {
        if update.is_relist() {
            relisted.push(update.kind());
        }
        match update {
            Update::Service(change) => {
                service_changes.push(convert(change, berth_services::Kind::Service))
            }
            Update::EndpointSlice(change) => {
                service_changes.push(convert(change, berth_services::Kind::EndpointSlice))
            }
            Update::Pod(change) => policy_changes.push(PolicyKubeChange::Pod(change)),
            Update::Namespace(change) => policy_changes.push(PolicyKubeChange::Namespace(change)),
            Update::NetworkPolicy(change) => {
                policy_changes.push(PolicyKubeChange::NetworkPolicy(change))
            }
        }
    }
    let mut ok = true;
    let has_relist = !relisted.is_empty();
    let started = std::time::Instant::now();
    if !service_changes.is_empty() {
        let result = services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply_kube(service_changes);
        match result {
            Ok(outcome) if has_relist => tracing::info!(
                updates = received.len(),
                services = outcome.services_touched,
                added = outcome.dataplane.frontends_added,
                updated = outcome.dataplane.frontends_updated,
                removed = outcome.dataplane.frontends_removed,
                rejected = outcome.rejected.len(),
                seconds = started.elapsed().as_secs_f64(),
                "Kubernetes services listed and programmed"
            ),
            Ok(outcome) => tracing::debug!(
                services = outcome.services_touched,
                added = outcome.dataplane.frontends_added,
                updated = outcome.dataplane.frontends_updated,
                removed = outcome.dataplane.frontends_removed,
                rejected = outcome.rejected.len(),
                "Kubernetes service changes programmed"
            ),
            Err(e) => {
                ok = false;
                tracing::error!(error = %e, "Kubernetes service changes not programmed; the maps keep their last state");
            }
        }
    }
    if !policy_changes.is_empty() {
        let result = policy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply_kube(policy_changes);
        match result {
            Ok((changes, rejected)) => tracing::debug!(
                ?changes,
                rejected = rejected.len(),
                "Kubernetes policy changes programmed"
            ),
            Err(e) => {
                ok = false;
                tracing::error!(error = %e, "Kubernetes policy changes not programmed; the maps keep their last state");
            }
        }
    }
    if !ok {
        return;
    }
    for at in &received {
        metrics.kube_programming.observe(at.elapsed().as_secs_f64());
    }
    let now = SystemTime::now();
    for t in triggers {
        if let Ok(d) = now.duration_since(t) {
            metrics.kube_network_programming.observe(d.as_secs_f64());
        }
    }
    handle
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(relisted);
    if handle.synced() {
        metrics.ready.store(true, Ordering::Relaxed);
    }
}

/// The annotation the EndpointSlice controller sets to when the change that triggered the
/// slice's update happened (a Pod or Service change).
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// When the change behind an EndpointSlice update happened, as kube-proxy measures its
/// network programming duration (changes after the first list only).
fn trigger_time(received: &Received) -> Option<SystemTime> {
    let Update::EndpointSlice(Change::Applied(slice)) = &received.update else {
        return None;
    };
    let text = slice.metadata.annotations.as_ref()?.get(TRIGGER_TIME)?;
    let ts: berth_kube::k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    let nanos = u64::try_from(ts.as_nanosecond()).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos))
}

fn convert<T: Into<Object>>(change: Change<T>, kind: berth_services::Kind) -> KubeChange {
    match change {
        Change::Applied(o) => KubeChange::Applied(o.into()),
        Change::Deleted(o) => KubeChange::Deleted(o.into()),
        Change::Relisted(all) => {
            KubeChange::Relisted(kind, all.into_iter().map(Into::into).collect())
        }
    }
}
