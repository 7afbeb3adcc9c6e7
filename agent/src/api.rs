//! The agent's JSON API, served over HTTP/1.1 on a unix socket (mode 0600: only root, or whoever
//! owns the socket, may talk to the agent), and the `/metrics` endpoint on TCP.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::UnixListener;

use crate::{
    audit::{AuditStore, AuditStoreError, RegisteredCgroup},
    dataplane::PinLayout,
    events::{EventHub, Filter},
    metrics::Metrics,
    policy::PolicyStore,
    services::ServiceStore,
    status::{AgentInfo, Status},
};

/// Paths of the API.
pub mod paths {
    pub const STATUS: &str = "/v1/status";
    /// POST: a container lifecycle event from the daemonless runtime (`berth run` & co).
    pub const CONTAINER_EVENTS: &str = "/v1/containers/events";
    pub const HEALTHZ: &str = "/healthz";
    /// Readiness (metrics port): 200 once the data plane is programmed from every source.
    pub const READYZ: &str = "/readyz";
    /// POST manifests (YAML or JSON; `?origin=` names them in errors): apply / delete them.
    pub const SERVICES_APPLY: &str = "/v1/services/apply";
    pub const SERVICES_DELETE: &str = "/v1/services/delete";
    /// GET: every service with its frontends and backends.
    pub const SERVICES: &str = "/v1/services";
    pub const METRICS: &str = "/metrics";
    /// POST NetworkPolicy/Namespace manifests: apply / delete them.
    pub const POLICIES_APPLY: &str = "/v1/policies/apply";
    pub const POLICIES_DELETE: &str = "/v1/policies/delete";
    /// GET: policies, namespaces and this node's endpoints.
    pub const POLICIES: &str = "/v1/policies";
    /// GET `?from=&to=&port=&protocol=`: the verdict and the deciding policy and rule.
    pub const POLICIES_EXPLAIN: &str = "/v1/policies/explain";
    /// GET `?follow=&type=&container=&syscall=`: the event stream as JSON lines.
    pub const EVENTS: &str = "/v1/events";
    /// GET: audit policies, targets (with their profile) and attached tracepoints.
    pub const AUDIT: &str = "/v1/audit";
    /// POST AuditPolicy manifests: apply them.
    pub const AUDIT_APPLY: &str = "/v1/audit/apply";
    /// POST `{"names": [...]}`: delete audit policies.
    pub const AUDIT_DELETE: &str = "/v1/audit/delete";
    /// POST `{"path", "name", "labels"}`: audit a cgroup by path.
    pub const AUDIT_CGROUPS: &str = "/v1/audit/cgroups";
    /// POST `{"path"}`: stop auditing a registered cgroup.
    pub const AUDIT_CGROUPS_DELETE: &str = "/v1/audit/cgroups/delete";
    /// GET: syscall counts per target and syscall.
    pub const AUDIT_COUNTS: &str = "/v1/audit/counts";
    /// POST `{"labels": {...}}`: the deny rules (seccomp) for a container with these labels.
    pub const AUDIT_DENY: &str = "/v1/audit/deny";
}

/// Largest request body the API accepts.
pub const MAX_REQUEST_BYTES: usize = 256 << 20;

/// What the handlers share.
pub struct ApiState {
    pub layout: PinLayout,
    pub started: Instant,
    pub metrics_addr: String,
    pub api_socket: PathBuf,
    /// `berth_container_events_total{event}`.
    pub container_events: prometheus::IntCounterVec,
    /// The desired services and their writer (map writes are blocking syscalls: handlers use
    /// it from `spawn_blocking`).
    pub services: Arc<std::sync::Mutex<ServiceStore>>,
    /// The desired policies and their writer (same discipline as `services`).
    pub policy: Arc<std::sync::Mutex<PolicyStore>>,
    /// The audit rules, targets and tracepoints (same discipline as `services`).
    pub audit: Arc<std::sync::Mutex<AuditStore>>,
    pub events: Arc<EventHub>,
    /// The Kubernetes source, when the agent watches an API server.
    pub kube: Option<crate::kube_source::KubeHandle>,
}

impl ApiState {
    pub fn status(&self) -> Status {
        let mut status = Status::from_pins(
            &self.layout,
            Some(AgentInfo {
                version: crate::VERSION.to_owned(),
                pid: std::process::id(),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
                metrics_addr: self.metrics_addr.clone(),
                api_socket: self.api_socket.display().to_string(),
            }),
        );
        status.kubernetes = self.kube.as_ref().map(|k| k.status());
        status
    }
}

/// The router of the unix-socket API.
pub fn api_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::HEALTHZ, get(healthz))
        .route(
            paths::CONTAINER_EVENTS,
            axum::routing::post(container_event),
        )
        .route(paths::SERVICES, get(list_services))
        .route(paths::SERVICES_APPLY, axum::routing::post(apply_services))
        .route(paths::SERVICES_DELETE, axum::routing::post(delete_services))
        .route(
            "/v1/services/{namespace}/{name}",
            axum::routing::delete(delete_service),
        )
        .route(paths::POLICIES, get(list_policies))
        .route(paths::POLICIES_APPLY, axum::routing::post(apply_policies))
        .route(paths::POLICIES_DELETE, axum::routing::post(delete_policies))
        .route(paths::POLICIES_EXPLAIN, get(explain_policy))
        .route(
            "/v1/policies/{namespace}/{name}",
            axum::routing::delete(delete_policy),
        )
        .route(paths::EVENTS, get(events))
        .route(paths::AUDIT, get(audit_view))
        .route(paths::AUDIT_APPLY, axum::routing::post(audit_apply))
        .route(paths::AUDIT_DELETE, axum::routing::post(audit_delete))
        .route(paths::AUDIT_CGROUPS, axum::routing::post(audit_add_cgroup))
        .route(
            paths::AUDIT_CGROUPS_DELETE,
            axum::routing::post(audit_remove_cgroup),
        )
        .route(paths::AUDIT_COUNTS, get(audit_counts))
        .route(paths::AUDIT_DENY, axum::routing::post(audit_deny))
        // A node's whole service set arrives in one apply (10,000 services with their slices
        // are about 21 MiB of YAML); axum's default limit is 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

#[derive(Debug, serde::Deserialize)]
struct Origin {
    #[serde(default)]
    origin: Option<String>,
}

/// Runs `f` on the service store off the async workers; errors become 400 with the message (bad
/// input: nothing was changed) and panics 500.
async fn with_store<T: serde::Serialize + Send + 'static>(
    state: Arc<ApiState>,
    f: impl FnOnce(&mut ServiceStore) -> Result<T, crate::services::StoreError> + Send + 'static,
) -> axum::response::Response {
    with_locked(state.services.clone(), f).await
}

/// [`with_store`] for the policy store.
async fn with_policy<T: serde::Serialize + Send + 'static>(
    state: Arc<ApiState>,
    f: impl FnOnce(&mut PolicyStore) -> Result<T, crate::policy::PolicyStoreError> + Send + 'static,
) -> axum::response::Response {
    with_locked(state.policy.clone(), f).await
}

/// [`with_store`] for the audit store.
async fn with_audit<T: serde::Serialize + Send + 'static>(
    state: Arc<ApiState>,
    f: impl FnOnce(&mut AuditStore) -> Result<T, AuditStoreError> + Send + 'static,
) -> axum::response::Response {
    with_locked(state.audit.clone(), f).await
}

async fn audit_view(State(state): State<Arc<ApiState>>) -> axum::response::Response {
    with_audit(state, |store| Ok(store.view())).await
}

async fn audit_apply(
    State(state): State<Arc<ApiState>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    with_audit(state, move |store| store.apply(&body)).await
}

#[derive(Debug, serde::Deserialize)]
struct Names {
    names: Vec<String>,
}

async fn audit_delete(
    State(state): State<Arc<ApiState>>,
    Json(names): Json<Names>,
) -> axum::response::Response {
    with_audit(state, move |store| store.delete(&names.names)).await
}

async fn audit_add_cgroup(
    State(state): State<Arc<ApiState>>,
    Json(cgroup): Json<RegisteredCgroup>,
) -> axum::response::Response {
    with_audit(state, move |store| store.add_cgroup(cgroup)).await
}

#[derive(Debug, serde::Deserialize)]
struct CgroupPath {
    path: PathBuf,
}

async fn audit_remove_cgroup(
    State(state): State<Arc<ApiState>>,
    Json(c): Json<CgroupPath>,
) -> axum::response::Response {
    with_audit(state, move |store| store.remove_cgroup(&c.path)).await
}

async fn audit_counts(State(state): State<Arc<ApiState>>) -> axum::response::Response {
    with_audit(state, |store| Ok(store.counts())).await
}

#[derive(Debug, serde::Deserialize)]
struct Labels {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

async fn audit_deny(
    State(state): State<Arc<ApiState>>,
    Json(l): Json<Labels>,
) -> axum::response::Response {
    with_audit(state, move |store| store.deny_for(&l.labels)).await
}

async fn with_locked<S: Send + 'static, T, E>(
    store: Arc<std::sync::Mutex<S>>,
    f: impl FnOnce(&mut S) -> Result<T, E> + Send + 'static,
) -> axum::response::Response
where
    T: serde::Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let result = tokio::task::spawn_blocking(move || {
        let mut store = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut store)
    })
    .await;
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(err)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": err.to_string() })),
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn apply_services(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(origin): axum::extract::Query<Origin>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let origin = origin.origin.unwrap_or_else(|| "request".into());
    with_store(state, move |store| store.apply(&body, &origin)).await
}

async fn delete_services(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(origin): axum::extract::Query<Origin>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let origin = origin.origin.unwrap_or_else(|| "request".into());
    with_store(state, move |store| store.delete(&body, &origin)).await
}

async fn delete_service(
    State(state): State<Arc<ApiState>>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    let svc = berth_services::ServiceRef::new(namespace, name);
    with_store(state, move |store| store.delete_service(&svc)).await
}

async fn list_services(State(state): State<Arc<ApiState>>) -> axum::response::Response {
    with_store(state, |store| Ok(store.view())).await
}

async fn apply_policies(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(origin): axum::extract::Query<Origin>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let origin = origin.origin.unwrap_or_else(|| "request".into());
    with_policy(state, move |store| store.apply(&body, &origin)).await
}

async fn delete_policies(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(origin): axum::extract::Query<Origin>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let origin = origin.origin.unwrap_or_else(|| "request".into());
    with_policy(state, move |store| store.delete(&body, &origin)).await
}

async fn delete_policy(
    State(state): State<Arc<ApiState>>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    with_policy(state, move |store| store.delete_policy(&namespace, &name)).await
}

async fn list_policies(State(state): State<Arc<ApiState>>) -> axum::response::Response {
    with_policy(state, |store| {
        Ok::<_, crate::policy::PolicyStoreError>(store.view())
    })
    .await
}

#[derive(Debug, serde::Deserialize)]
struct ExplainQuery {
    from: String,
    to: String,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

async fn explain_policy(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(q): axum::extract::Query<ExplainQuery>,
) -> axum::response::Response {
    with_policy(state, move |store| {
        store.explain(
            &q.from,
            &q.to,
            q.port,
            q.protocol.as_deref().unwrap_or("TCP"),
        )
    })
    .await
}

/// The event stream: the recent events that match, then (with `follow=true`) new ones as they
/// come, one JSON object per line.
async fn events(
    State(state): State<Arc<ApiState>>,
    axum::extract::Query(filter): axum::extract::Query<Filter>,
) -> axum::response::Response {
    let line = |e: &crate::events::Event| {
        let mut s = String::with_capacity(e.line.len() + 1);
        s.push_str(&e.line);
        s.push('\n');
        bytes::Bytes::from(s)
    };
    // Subscribe before reading the history, so nothing falls between the two.
    let rx = state.events.subscribe();
    let recent: Vec<bytes::Bytes> = state
        .events
        .recent()
        .iter()
        .filter(|e| filter.matches(e))
        .map(|e| line(e))
        .collect();
    let follow = filter.follow.unwrap_or(false);
    let dropped = state
        .events
        .metrics
        .reader_dropped
        .with_label_values(&["api"]);
    let history =
        futures_util::stream::iter(recent.into_iter().map(Ok::<_, std::convert::Infallible>));
    let body = if follow {
        let live = futures_util::stream::unfold((rx, filter), move |(mut rx, filter)| {
            let dropped = dropped.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(e) if filter.matches(&e) => {
                            return Some((Ok(line(&e)), (rx, filter)));
                        }
                        Ok(_) => continue,
                        // A follower too slow for the broadcast buffer is told how much it missed.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            dropped.inc_by(n);
                            let gap = serde_json::json!({
                                "schema": crate::events::SCHEMA, "type": "gap",
                                "time": berth_runtime::state::now_rfc3339(),
                                "lost": n, "reason": "this reader fell behind",
                            });
                            let mut text = gap.to_string();
                            text.push('\n');
                            return Some((Ok(bytes::Bytes::from(text)), (rx, filter)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        axum::body::Body::from_stream(futures_util::StreamExt::chain(history, live))
    } else {
        axum::body::Body::from_stream(history)
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// A lifecycle event from `berth run`/`rm`: logged with its fields and counted. The container
/// records themselves live in the pinned CONTAINERS map and the runtime's state directory.
async fn container_event(
    State(state): State<Arc<ApiState>>,
    Json(event): Json<ContainerEvent>,
) -> impl IntoResponse {
    tracing::info!(
        event = %event.event,
        id = %event.id,
        name = %event.name,
        cgroup_id = event.cgroup_id,
        pid = event.pid,
        netns = ?event.netns,
        exit_code = ?event.exit_code,
        labels = ?event.labels,
        "container event"
    );
    state
        .container_events
        .with_label_values(&[event.event.as_str()])
        .inc();
    // A container joined or left the bridge: its endpoint and identity change. The answer waits
    // for the maps, so `berth run` starts the container's process under its policy.
    let policy = state.policy.clone();
    let audit = state.audit.clone();
    let done = tokio::task::spawn_blocking(move || {
        // Audit first: a created container is audited before its process starts.
        let audited = audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .containers_changed();
        if let Err(e) = &audited {
            tracing::warn!(error = %e, "audit reconcile after a container event failed");
        }
        let mut store = policy.lock().unwrap_or_else(|p| p.into_inner());
        store.containers_changed()
    })
    .await;
    match done {
        Ok(Ok(_)) => StatusCode::NO_CONTENT,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "policy reconcile after a container event failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Debug, serde::Deserialize)]
struct ContainerEvent {
    event: String,
    id: String,
    name: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    cgroup_id: u64,
    #[serde(default)]
    pid: i32,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    exit_code: Option<i32>,
}

/// The router of the TCP metrics endpoint (also answers liveness probes).
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(paths::METRICS, get(render_metrics))
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::READYZ, get(readyz))
        .with_state(metrics)
}

async fn status(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    // Reading pins is a handful of bpf() syscalls; keep it off the async workers anyway.
    match tokio::task::spawn_blocking(move || state.status()).await {
        Ok(status) => Json(status).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 once the agent serves its desired state: with a Kubernetes source, after every watched
/// kind's first list is in the maps (a DaemonSet rollout waits for it); 503 before.
async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first lists from the Kubernetes API server are not programmed yet\n",
        )
    }
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(err)) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another berth agent is already serving {0}")]
    InUse(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the API socket with mode 0600, replacing a stale socket file left by a killed agent but
/// refusing to steal the socket of a live one.
pub async fn bind_api_socket(path: &Path) -> Result<UnixListener, BindError> {
    let io = |op, source| BindError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("restricting the directory of", e))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|e| io("removing stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600 on", e))?;
    Ok(listener)
}
