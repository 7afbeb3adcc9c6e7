//! One `kube_runtime` watcher per kind, turned into [`Update`]s, and their batching.

use std::{collections::HashSet, fmt, time::Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{Api, Client, Resource, ResourceExt as _, core::DynamicObject, runtime::watcher};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    Health, KubeMetrics,
    slices::{self, SliceVersion},
};

/// The kinds the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Namespace,
        Kind::NetworkPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to objects of one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// Created or modified.
    Applied(T),
    Deleted(T),
    /// The complete set after a (re)list: everything else of this kind is gone.
    Relisted(Vec<T>),
}

impl<T> Change<T> {
    fn event(&self) -> &'static str {
        match self {
            Change::Applied(_) => "applied",
            Change::Deleted(_) => "deleted",
            Change::Relisted(_) => "relisted",
        }
    }
}

/// A change of one kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Service(Change<Box<Service>>),
    EndpointSlice(Change<Box<EndpointSlice>>),
    Pod(Change<Box<Pod>>),
    Namespace(Change<Box<Namespace>>),
    NetworkPolicy(Change<Box<NetworkPolicy>>),
}

impl Update {
    /// A complete (re)list of its kind.
    pub fn is_relist(&self) -> bool {
        match self {
            Update::Service(c) => matches!(c, Change::Relisted(_)),
            Update::EndpointSlice(c) => matches!(c, Change::Relisted(_)),
            Update::Pod(c) => matches!(c, Change::Relisted(_)),
            Update::Namespace(c) => matches!(c, Change::Relisted(_)),
            Update::NetworkPolicy(c) => matches!(c, Change::Relisted(_)),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Update::Service(_) => Kind::Service,
            Update::EndpointSlice(_) => Kind::EndpointSlice,
            Update::Pod(_) => Kind::Pod,
            Update::Namespace(_) => Kind::Namespace,
            Update::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }
}

/// An update and when the agent received it (the start of its programming latency).
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub update: Update,
}

/// Updates that queued up together, in arrival order.
pub type Batch = Vec<Received>;

/// Waits for the next update, then takes everything else already queued (at most `max`): while
/// the agent writes one batch, the next one gathers. None when every watcher has ended.
pub async fn batches(rx: &mut mpsc::Receiver<Received>, max: usize) -> Option<Batch> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Starts a watcher for each of `kinds` on `client`, sending updates to `tx`. EndpointSlices are
/// watched in the version the API server serves (v1beta1 ones arrive converted to v1). The
/// watchers retry with backoff forever; each ends when `tx` is closed.
pub fn spawn_watchers(
    client: &Client,
    slice_version: SliceVersion,
    kinds: &[Kind],
    health: &Health,
    metrics: &KubeMetrics,
    tx: &mpsc::Sender<Received>,
) -> Vec<JoinHandle<()>> {
    let ctx = |kind| WatchCtx {
        kind,
        health: health.clone(),
        metrics: metrics.clone(),
        tx: tx.clone(),
    };
    kinds
        .iter()
        .map(|&kind| match kind {
            Kind::Service => tokio::spawn(watch(
                Api::<Service>::all(client.clone()),
                boxed,
                Update::Service,
                ctx(kind),
            )),
            Kind::EndpointSlice => match slice_version {
                SliceVersion::V1 => tokio::spawn(watch(
                    Api::<EndpointSlice>::all(client.clone()),
                    boxed,
                    Update::EndpointSlice,
                    ctx(kind),
                )),
                SliceVersion::V1beta1 => {
                    let c = ctx(kind);
                    let errors = c.metrics.api_errors.with_label_values(&[kind.as_str()]);
                    tokio::spawn(watch(
                        Api::<DynamicObject>::all_with(
                            client.clone(),
                            &SliceVersion::v1beta1_resource(),
                        ),
                        move |object: DynamicObject| {
                            let name = format!(
                                "{}/{}",
                                object.namespace().unwrap_or_default(),
                                object.name_any()
                            );
                            slices::from_v1beta1(object)
                                .map(Box::new)
                                .inspect_err(|e| {
                                    errors.inc();
                                    tracing::warn!(slice = %name, error = %e, "EndpointSlice v1beta1 does not convert to v1; ignored");
                                })
                                .ok()
                        },
                        Update::EndpointSlice,
                        c,
                    ))
                }
            },
            Kind::Pod => tokio::spawn(watch(
                Api::<Pod>::all(client.clone()),
                boxed,
                Update::Pod,
                ctx(kind),
            )),
            Kind::Namespace => tokio::spawn(watch(
                Api::<Namespace>::all(client.clone()),
                boxed,
                Update::Namespace,
                ctx(kind),
            )),
            Kind::NetworkPolicy => tokio::spawn(watch(
                Api::<NetworkPolicy>::all(client.clone()),
                boxed,
                Update::NetworkPolicy,
                ctx(kind),
            )),
        })
        .collect()
}

fn boxed<K>(object: K) -> Option<Box<K>> {
    Some(Box::new(object))
}

/// An object's namespace and name.
type ObjectId = (String, String);

struct WatchCtx {
    kind: Kind,
    health: Health,
    metrics: KubeMetrics,
    tx: mpsc::Sender<Received>,
}

/// The first retry after a failed list or watch, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Identity of an object within its kind (for the object count).
fn object_key<K: Resource>(o: &K) -> ObjectId {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// Runs one kind's watcher until the agent stops listening.
async fn watch<K, T>(
    api: Api<K>,
    convert: impl Fn(K) -> Option<T> + Send + 'static,
    wrap: fn(Change<T>) -> Update,
    ctx: WatchCtx,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    let kind = ctx.kind;
    let label = [kind.as_str()];
    let objects_gauge = ctx.metrics.objects.with_label_values(&label);
    let restarts = ctx.metrics.watch_restarts.with_label_values(&label);
    let errors = ctx.metrics.api_errors.with_label_values(&label);
    let synced_gauge = ctx.metrics.synced.with_label_values(&label);
    // Objects known to the watch, to keep the gauge exact across applies, deletes and relists.
    let mut known: HashSet<ObjectId> = HashSet::new();
    // A relist in progress: buffered until complete (a half-listed kind is never applied).
    let mut listing: Option<(Vec<T>, HashSet<ObjectId>)> = None;
    let mut lists = 0u64;
    let mut delay = RETRY_FIRST;
    // Each failure starts a new watcher, which lists again: kube_runtime resumes a broken watch
    // from its resource version silently, with no event to show it works again, so the health
    // would stay "failing" until the next change. A relist confirms the view at once, and the
    // agent's writer makes an unchanged relist cost no map writes (and no flow disturbance).
    'restart: loop {
        let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(e) => {
                    errors.inc();
                    ctx.health.record_error(kind, e.to_string());
                    tracing::warn!(kind = %kind, error = %e, retry_in = ?delay, "watch failed; the data plane keeps its last state");
                    drop(stream);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    continue 'restart;
                }
            };
            let change = match event {
                // Emitted before the list request: nothing is confirmed yet.
                watcher::Event::Init => {
                    listing = Some((Vec::new(), HashSet::new()));
                    continue;
                }
                watcher::Event::InitApply(object) => {
                    if let Some((items, keys)) = &mut listing {
                        keys.insert(object_key(&object));
                        items.extend(convert(object));
                    }
                    continue;
                }
                watcher::Event::InitDone => {
                    let Some((items, keys)) = listing.take() else {
                        continue;
                    };
                    lists += 1;
                    if lists > 1 {
                        restarts.inc();
                        ctx.health.update(kind, |h| h.relists += 1);
                        tracing::info!(kind = %kind, objects = keys.len(), "relisted");
                    }
                    known = keys;
                    Change::Relisted(items)
                }
                watcher::Event::Apply(object) => {
                    known.insert(object_key(&object));
                    match convert(object) {
                        Some(o) => Change::Applied(o),
                        None => continue,
                    }
                }
                watcher::Event::Delete(object) => {
                    known.remove(&object_key(&object));
                    match convert(object) {
                        Some(o) => Change::Deleted(o),
                        None => continue,
                    }
                }
            };
            let relisted = matches!(change, Change::Relisted(_));
            ctx.metrics
                .events
                .with_label_values(&[kind.as_str(), change.event()])
                .inc();
            objects_gauge.set(known.len() as i64);
            delay = RETRY_FIRST;
            mark_ok(&ctx.health, kind);
            let count = known.len();
            ctx.health.update(kind, |h| h.objects = count);
            let received = Received {
                at: Instant::now(),
                update: wrap(change),
            };
            if ctx.tx.send(received).await.is_err() {
                return;
            }
            if relisted {
                // Counted as synced once the list is queued for the agent; the agent's readiness
                // additionally waits for it to be applied.
                synced_gauge.set(1);
                ctx.health.update(kind, |h| h.synced = true);
            }
        }
        // The stream ended without an error (it does not, in practice): start over.
        tokio::time::sleep(delay).await;
    }
}

fn mark_ok(health: &Health, kind: Kind) {
    let now = std::time::SystemTime::now();
    health.update(kind, |h| {
        if h.failing_since.take().is_some() {
            tracing::info!(kind = %kind, "watch works again");
        }
        h.last_event = Some(now);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(n: usize) -> Received {
        Received {
            at: Instant::now(),
            update: Update::Namespace(Change::Relisted(vec![Box::default(); n])),
        }
    }

    /// A scripted API server: the first list has services a and b; the watch then adds c,
    /// deletes a, and expires (410); the relist has b and c; later watches stay open.
    fn scripted_api() -> (Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        };
        let lists = Arc::new(AtomicUsize::new(0));
        let watches = Arc::new(AtomicUsize::new(0));
        let list_count = lists.clone();
        let svc = |name: &str, rv: u32| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}
            })
        };
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let query = req.uri().query().unwrap_or_default().to_owned();
            let lists = lists.clone();
            let watches = watches.clone();
            async move {
                let body = if query.contains("watch=true") {
                    if watches.fetch_add(1, Ordering::SeqCst) == 0 {
                        [
                            serde_json::json!({"type": "ADDED", "object": svc("c", 12)}),
                            serde_json::json!({"type": "DELETED", "object": svc("a", 13)}),
                            serde_json::json!({"type": "ERROR", "object": {
                                "apiVersion": "v1", "kind": "Status", "metadata": {},
                                "status": "Failure", "reason": "Expired", "code": 410,
                                "message": "too old resource version"
                            }}),
                        ]
                        .iter()
                        .map(|e| format!("{e}\n"))
                        .collect::<String>()
                    } else {
                        // Later watches stay open, as a quiet API server's do.
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        String::new()
                    }
                } else {
                    let items = if lists.fetch_add(1, Ordering::SeqCst) == 0 {
                        vec![svc("a", 5), svc("b", 6)]
                    } else {
                        vec![svc("b", 6), svc("c", 12)]
                    };
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "ServiceList",
                        "metadata": {"resourceVersion": "10"}, "items": items
                    })
                    .to_string()
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body),
                )))
            }
        });
        (Client::new(service, "default"), list_count)
    }

    fn names(update: &Update) -> (String, Vec<String>) {
        let Update::Service(change) = update else {
            panic!("not a Service update: {update:?}")
        };
        let name = |s: &Service| s.metadata.name.clone().unwrap_or_default();
        match change {
            Change::Applied(s) => ("applied".into(), vec![name(s)]),
            Change::Deleted(s) => ("deleted".into(), vec![name(s)]),
            Change::Relisted(all) => ("relisted".into(), all.iter().map(|s| name(s)).collect()),
        }
    }

    #[tokio::test]
    async fn the_watch_relists_after_an_expired_watch_and_reports_its_health() {
        let (client, lists) = scripted_api();
        let health = Health::new(&[Kind::Service]);
        let metrics = KubeMetrics::new().expect("metrics");
        let (tx, mut rx) = mpsc::channel(16);
        let watchers = spawn_watchers(
            &client,
            SliceVersion::V1,
            &[Kind::Service],
            &health,
            &metrics,
            &tx,
        );
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let received = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                .await
                .expect("an update within 10 s")
                .expect("watcher alive");
            seen.push(names(&received.update));
        }
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                ("relisted".to_owned(), s(&["a", "b"])),
                ("applied".to_owned(), s(&["c"])),
                ("deleted".to_owned(), s(&["a"])),
                // After the 410 the watcher lists again: the complete set, nothing stale.
                ("relisted".to_owned(), s(&["b", "c"])),
            ]
        );
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 2);
        let h = health.snapshot()[&Kind::Service].clone();
        assert!(h.synced);
        assert_eq!((h.relists, h.errors, h.objects), (1, 1, 2));
        assert!(
            h.failing_since.is_none(),
            "the relist confirmed the view: {h:?}"
        );
        assert!(h.last_error.is_some_and(|e| e.contains("too old")));
        assert_eq!(
            metrics.watch_restarts.with_label_values(&["Service"]).get(),
            1
        );
        assert_eq!(metrics.objects.with_label_values(&["Service"]).get(), 2);
        assert_eq!(health.stale_seconds(), 0.0);
        for w in watchers {
            w.abort();
        }
    }

    #[tokio::test]
    async fn batches_take_what_queued_up_and_no_more_than_max() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.send(update(i)).await.expect("send");
        }
        let first = batches(&mut rx, 3).await.expect("batch");
        assert_eq!(first.len(), 3);
        let second = batches(&mut rx, 3).await.expect("batch");
        assert_eq!(second.len(), 2);
        drop(tx);
        assert!(batches(&mut rx, 3).await.is_none());
    }
}
