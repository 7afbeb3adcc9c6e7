//! `berth agent`: the node daemon.
//!
//! Start-up order matters: the API socket is bound first (so a second agent refuses to start
//! before it touches the data plane), then the data plane is loaded and attached, then
//! `/metrics` and the API serve until SIGTERM or SIGINT. On exit the socket is removed and the
//! pinned data plane stays in place, still forwarding.

use std::{io, sync::Arc, time::Instant};

use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, net::TcpListener, signal::unix::SignalKind};

use crate::{
    api::{self, ApiState},
    audit::AuditStore,
    config::AgentConfig,
    dataplane::{
        self, Dataplane, PinLayout,
        lb::{ConntrackGc, CtTimeouts},
    },
    events::EventHub,
    metrics::Metrics,
    policy::PolicyStore,
    services::ServiceStore,
};

/// How often the agent re-reads node addresses and collects idle conntrack entries.
const HOUSEKEEPING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Periodic work: node addresses (NodePort addresses and the node identity follow interface
/// changes), the engine's containers (a container that died without telling the agent), and
/// conntrack GC.
async fn housekeeping(
    services: Arc<std::sync::Mutex<ServiceStore>>,
    policy: Arc<std::sync::Mutex<PolicyStore>>,
    audit: Arc<std::sync::Mutex<AuditStore>>,
    lb_conntrack: Arc<std::sync::Mutex<ConntrackGc>>,
    gc_removed: prometheus::IntCounter,
    policy_gc_removed: prometheus::IntCounter,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tick.tick().await;
        let services = services.clone();
        let policy = policy.clone();
        let audit = audit.clone();
        let lb_conntrack = lb_conntrack.clone();
        let gc_removed = gc_removed.clone();
        let policy_gc_removed = policy_gc_removed.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = monotonic_ns();
            let kube_cache = {
                let mut store = services.lock().unwrap_or_else(|p| p.into_inner());
                store.refresh_node();
                store.kube_snapshot()
            };
            save_kube_cache(kube_cache);
            let (_, removed) = lb_conntrack
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .run(now, &CtTimeouts::default());
            gc_removed.inc_by(removed as u64);
            if let Err(e) = audit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .containers_changed()
            {
                tracing::warn!(error = %e, "audit reconcile failed; the maps keep their last state");
            }
            let mut store = policy.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = store.containers_changed() {
                tracing::warn!(error = %e, "policy reconcile failed; the maps keep their last state");
            }
            policy_gc_removed.inc_by(store.gc_conntrack(now) as u64);
        })
        .await;
    }
}

/// Writes the API server's services (a snapshot taken under the store's lock) outside it.
fn save_kube_cache(snapshot: Option<(std::path::PathBuf, berth_services::Catalog)>) {
    if let Some((path, catalog)) = snapshot
        && let Err(e) = ServiceStore::write_kube_cache(&path, &catalog)
    {
        tracing::warn!(error = %e, "saving the cached Kubernetes services failed; a restart while the API server is unreachable starts from an older copy");
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Bind(#[from] api::BindError),
    #[error(transparent)]
    Dataplane(#[from] dataplane::DataplaneError),
    #[error("binding the metrics endpoint {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("setting up metrics: {0}")]
    Registry(#[from] prometheus::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Services(#[from] crate::services::StoreError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyStoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditStoreError),
    #[error(transparent)]
    Kubernetes(#[from] berth_kube::ClientError),
    #[error("refusing to clean up while an agent serves {0}: stop it first")]
    AgentRunning(std::path::PathBuf),
}

/// Runs the agent until SIGTERM/SIGINT.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let started = Instant::now();
    let api_listener = api::bind_api_socket(&config.api_socket).await?;
    // A bad kubeconfig fails the start before anything is loaded; an unreachable API server
    // does not (the watchers retry while the data plane keeps its last state).
    let kube_client = match &config.kubernetes {
        Some(source) => match source.client().await {
            Ok(client) => Some(client),
            Err(e) => {
                drop(api_listener);
                let _ = std::fs::remove_file(&config.api_socket);
                return Err(e.into());
            }
        },
        None => None,
    };
    let layout = PinLayout::new(&config.pin_root);

    let (dataplane, logger) = match Dataplane::load(
        layout.clone(),
        &config.xdp_ifaces,
        config.xdp_mode,
        &config.cgroup,
    ) {
        Ok(loaded) => loaded,
        Err(err) => {
            // Leave no socket behind that looks like a running agent.
            drop(api_listener);
            let _ = std::fs::remove_file(&config.api_socket);
            return Err(err.into());
        }
    };
    tracing::info!(pin_root = %layout.root.display(), xdp_ifaces = ?config.xdp_ifaces, "data plane loaded");
    let log_task = tokio::spawn(drain_kernel_logs(logger));

    let metrics = Arc::new(Metrics::new(layout.clone())?);
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| AgentError::Metrics {
            addr: config.metrics_addr,
            source,
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| AgentError::Io {
            what: "reading the metrics address",
            source,
        })?;
    let networks = std::iter::once(config.pod_cidr)
        .chain(config.backend_cidrs.iter().copied())
        .map(|n| (n.network(), n.prefix_len()))
        .collect();
    let hairpin = config
        .pod_cidr
        .hosts()
        .next()
        .unwrap_or(config.pod_cidr.network());
    let store = ServiceStore::open(
        &config.state_dir,
        &layout,
        &config.node_name,
        networks,
        config.maglev_table_size,
        hairpin,
        metrics.services.clone(),
    )?;
    let services = Arc::new(std::sync::Mutex::new(store));
    let events = EventHub::new(&config.node_name, metrics.events.clone());
    let policy_store = PolicyStore::open(
        &config.state_dir,
        &config.engine_root,
        &layout,
        config.policy_audit,
        metrics.policy.clone(),
        Some(events.clone()),
        config
            .kubernetes
            .is_some()
            .then_some(config.node_name.as_str()),
    )?;
    let policy = Arc::new(std::sync::Mutex::new(policy_store));
    let audit_store = AuditStore::open(
        &config.state_dir,
        &config.engine_root,
        &config.cgroup,
        &layout,
        dataplane.tracepoints,
        metrics.audit.clone(),
        metrics.audit_targets.clone(),
    )?;
    let audit = Arc::new(std::sync::Mutex::new(audit_store));
    let events_task = tokio::spawn(crate::events::run_reader(layout.clone(), events.clone()));
    let audit_events_task = tokio::spawn(crate::events::run_audit_reader(
        layout.clone(),
        events.clone(),
        metrics.audit_targets.clone(),
    ));
    if let Some(path) = &config.events_file {
        let sink = crate::events::file_sink(
            &events,
            path.clone(),
            config.events_file_max_bytes,
            config.events_file_keep,
        )
        .map_err(|source| AgentError::Io {
            what: "opening the events file",
            source,
        })?;
        let path = path.clone();
        std::thread::Builder::new()
            .name("events-file".into())
            .spawn(move || {
                if let Err(e) = sink() {
                    tracing::error!(path = %path.display(), error = %e, "writing the events file failed; events go only to the API stream now");
                }
            })
            .map_err(|source| AgentError::Io {
                what: "starting the events file writer",
                source,
            })?;
    }
    let kube = match (&config.kubernetes, kube_client) {
        (Some(source), Some(client)) => {
            let handle = crate::kube_source::KubeHandle::new(source.clone(), &config.node_name);
            let _ = metrics.kube_health.set(handle.health.clone());
            tokio::spawn(crate::kube_source::run(
                client,
                handle.clone(),
                services.clone(),
                policy.clone(),
                metrics.clone(),
            ));
            Some(handle)
        }
        _ => {
            metrics
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
            None
        }
    };
    let services_at_exit = services.clone();
    let lb_conntrack = Arc::new(std::sync::Mutex::new(
        ConntrackGc::open(&layout).map_err(crate::services::StoreError::from)?,
    ));
    let housekeeping = tokio::spawn(housekeeping(
        services.clone(),
        policy.clone(),
        audit.clone(),
        lb_conntrack,
        metrics.conntrack_gc.clone(),
        metrics.policy_conntrack_gc.clone(),
    ));
    let state = Arc::new(ApiState {
        layout,
        started,
        metrics_addr: metrics_addr.to_string(),
        api_socket: config.api_socket.clone(),
        container_events: metrics.container_events.clone(),
        services,
        policy,
        audit,
        events,
        kube,
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_server = axum::serve(api_listener, api::api_router(state))
        .with_graceful_shutdown(wait_stop(stop_rx.clone()));
    let metrics_server = axum::serve(metrics_listener, api::metrics_router(metrics))
        .with_graceful_shutdown(wait_stop(stop_rx));
    let api_task = tokio::spawn(async move { api_server.await });
    let metrics_task = tokio::spawn(async move { metrics_server.await });
    tracing::info!(
        api_socket = %config.api_socket.display(),
        metrics = %format!("http://{metrics_addr}/metrics"),
        version = crate::VERSION,
        "agent ready"
    );

    let signal = wait_for_signal().await.map_err(|source| AgentError::Io {
        what: "installing signal handlers",
        source,
    })?;
    tracing::info!(
        signal,
        "shutting down; the pinned data plane stays in place"
    );
    let _ = stop_tx.send(true);
    for (name, task) in [("api", api_task), ("metrics", metrics_task)] {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(server = name, error = %err, "server ended with an error")
            }
            Err(err) => tracing::warn!(server = name, error = %err, "server task failed"),
        }
    }
    log_task.abort();
    housekeeping.abort();
    let kube_cache = services_at_exit
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .kube_snapshot();
    save_kube_cache(kube_cache);
    events_task.abort();
    audit_events_task.abort();
    if let Err(err) = std::fs::remove_file(&config.api_socket) {
        tracing::warn!(path = %config.api_socket.display(), error = %err, "removing the API socket");
    }
    Ok(())
}

/// Removes every pin and attachment under the configured pin root (`berth agent --cleanup`).
pub async fn cleanup(config: &AgentConfig) -> Result<Vec<std::path::PathBuf>, AgentError> {
    if tokio::net::UnixStream::connect(&config.api_socket)
        .await
        .is_ok()
    {
        return Err(AgentError::AgentRunning(config.api_socket.clone()));
    }
    dataplane::cleanup(&PinLayout::new(&config.pin_root)).map_err(|source| AgentError::Io {
        what: "removing pins",
        source,
    })
}

async fn wait_for_signal() -> io::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Forwards the kernel programs' aya-log records into the agent's log as they arrive.
async fn drain_kernel_logs(logger: EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns the ring buffer's fd and neither closes nor replaces it while the
    // AsyncFd holds it; the fd is dropped together with the AsyncFd.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(err) => {
            tracing::error!(error = %err, "cannot poll the kernel log ring buffer; kernel logs are lost");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::error!(error = %err, "polling the kernel log ring buffer failed");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
