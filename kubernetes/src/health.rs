//! How current the agent's view of the API server is, per kind, and its metrics.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::Kind;

/// One kind's watch, as `berth status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KindHealth {
    /// The first complete list has been received (and handed to the agent).
    pub synced: bool,
    /// Objects of this kind the watch currently knows.
    pub objects: usize,
    /// Relists after the first: a dropped watch, an expired resource version, a restarted API
    /// server.
    pub relists: u64,
    /// Failed list or watch requests.
    pub errors: u64,
    /// Since when the watch has been failing (None while it works).
    #[serde(with = "unix_seconds")]
    pub failing_since: Option<SystemTime>,
    pub last_error: Option<String>,
    /// When the watch last delivered something (a list or an event).
    #[serde(with = "unix_seconds")]
    pub last_event: Option<SystemTime>,
}

mod unix_seconds {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// The shared health of all watches (cheap to clone).
#[derive(Clone, Default)]
pub struct Health {
    kinds: Arc<Mutex<BTreeMap<Kind, KindHealth>>>,
}

impl Health {
    pub fn new(kinds: &[Kind]) -> Self {
        let health = Health::default();
        {
            let mut map = health.lock();
            for kind in kinds {
                map.insert(*kind, KindHealth::default());
            }
        }
        health
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Kind, KindHealth>> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn update(&self, kind: Kind, f: impl FnOnce(&mut KindHealth)) {
        f(self.lock().entry(kind).or_default());
    }

    /// A failed request for `kind`: counts it, keeps the error and starts the staleness clock
    /// (if it is not running already).
    pub fn record_error(&self, kind: Kind, error: String) {
        let now = SystemTime::now();
        self.update(kind, |h| {
            h.errors += 1;
            h.failing_since.get_or_insert(now);
            h.last_error = Some(error);
        });
    }

    /// A snapshot of every kind.
    pub fn snapshot(&self) -> BTreeMap<Kind, KindHealth> {
        self.lock().clone()
    }

    /// Whether every watched kind has completed its first list.
    pub fn synced(&self) -> bool {
        self.lock().values().all(|k| k.synced)
    }

    /// How long the view has gone unconfirmed: the longest time any watch has been failing
    /// (zero while all work). The data plane keeps its last state meanwhile.
    pub fn stale_for(&self, now: SystemTime) -> Duration {
        self.lock()
            .values()
            .filter_map(|k| k.failing_since)
            .filter_map(|since| now.duration_since(since).ok())
            .max()
            .unwrap_or_default()
    }

    pub fn stale_seconds(&self) -> f64 {
        self.stale_for(SystemTime::now()).as_secs_f64()
    }
}

/// Prometheus instruments of the watches (registered by the agent on its registry).
#[derive(Clone)]
pub struct KubeMetrics {
    pub objects: IntGaugeVec,
    pub events: IntCounterVec,
    pub watch_restarts: IntCounterVec,
    pub api_errors: IntCounterVec,
    pub synced: IntGaugeVec,
    pub stale_seconds: prometheus::Gauge,
}

impl KubeMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(KubeMetrics {
            objects: IntGaugeVec::new(
                Opts::new(
                    "berth_kube_objects",
                    "Objects of each kind the agent's watches of the Kubernetes API know",
                ),
                &["kind"],
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "berth_kube_events_total",
                    "Watch events received from the Kubernetes API (relisted = one complete list)",
                ),
                &["kind", "event"],
            )?,
            watch_restarts: IntCounterVec::new(
                Opts::new(
                    "berth_kube_watch_restarts_total",
                    "Relists after the first: dropped watches, expired resource versions, API server restarts",
                ),
                &["kind"],
            )?,
            api_errors: IntCounterVec::new(
                Opts::new(
                    "berth_kube_api_errors_total",
                    "Failed list or watch requests, and objects that could not be decoded",
                ),
                &["kind"],
            )?,
            synced: IntGaugeVec::new(
                Opts::new(
                    "berth_kube_synced",
                    "1 once the kind's first complete list has been applied",
                ),
                &["kind"],
            )?,
            stale_seconds: prometheus::Gauge::new(
                "berth_kube_stale_seconds",
                "How long the agent's view of the Kubernetes API has gone unconfirmed (0 while every watch works); the data plane keeps its last state meanwhile",
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.objects.clone()))?;
        registry.register(Box::new(self.events.clone()))?;
        registry.register(Box::new(self.watch_restarts.clone()))?;
        registry.register(Box::new(self.api_errors.clone()))?;
        registry.register(Box::new(self.synced.clone()))?;
        registry.register(Box::new(self.stale_seconds.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_the_longest_failing_watch() {
        let health = Health::new(&[Kind::Service, Kind::EndpointSlice]);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(health.stale_for(t0), Duration::ZERO);
        assert!(!health.synced());
        health.update(Kind::Service, |h| {
            h.synced = true;
            h.failing_since = Some(t0);
        });
        health.update(Kind::EndpointSlice, |h| {
            h.synced = true;
            h.failing_since = Some(t0 + Duration::from_secs(5));
        });
        assert!(health.synced());
        assert_eq!(
            health.stale_for(t0 + Duration::from_secs(12)),
            Duration::from_secs(12)
        );
        health.update(Kind::Service, |h| h.failing_since = None);
        assert_eq!(
            health.stale_for(t0 + Duration::from_secs(12)),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn metrics_register_once() {
        let registry = Registry::new();
        let metrics = KubeMetrics::new().expect("metrics");
        metrics.register(&registry).expect("register");
        metrics.objects.with_label_values(&["Service"]).set(3);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.contains(&"berth_kube_objects".to_owned()),
            "{names:?}"
        );
    }
}
