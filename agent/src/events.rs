//! The event stream: kernel records from the `EVENTS` ring buffer, decoded into JSON lines with
//! a versioned schema, kept in a bounded recent-history buffer and broadcast to followers
//! (`GET /v1/events`, `berth events`).
//!
//! Schema `berth.event.v1`: every line is one object with `schema`, `type`, `time` (RFC 3339,
//! UTC) and `node`, then the fields of its type:
//! - `policy_verdict`: `verdict` (allowed, denied, audit), `direction` (ingress, egress: the
//!   endpoint's side), `proto`, `src`/`dst` (`ip`, `port`), `endpoint` (namespace/pod),
//!   `peer_identity`, `policy` and `rule` (the allowing rule, when one did), `selected_by`
//!   (the policies selecting the endpoint in that direction: for a denial, the deciding ones,
//!   none of whose rules allowed the flow; empty when no policy selects it), and
//!   `suppressed_before` (verdicts the per-CPU rate limit dropped on that CPU since the previous
//!   record: counted, never silent).
//! - `syscall`, `exec`, `exit`: syscall auditing (see `audit_events` for their fields).
//! - `gap`: `lost` events the kernel could not put on a full ring, `reason`, `ring`; or
//!   lines a slow reader missed (`reason`: the reader fell behind).

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};
use berth_common::{
    events::EventHeader,
    maps,
    policy::{
        DIR_INGRESS, EVENT_POLICY_VERDICT, PolicyVerdictEvent, VERDICT_ALLOWED, VERDICT_DENIED,
    },
};
use clap::Args;
use serde_json::{Value, json};
use tokio::{io::unix::AsyncFd, sync::broadcast};

use crate::{client, config, dataplane::PinLayout};

pub const SCHEMA: &str = "berth.event.v1";
/// How long the events file writer waits after catching up before it blocks for the next line.
const FILE_SINK_PACE: Duration = Duration::from_millis(5);
/// Events kept for `berth events` without `--follow`.
const RECENT: usize = 4096;

/// Prometheus instruments of the event stream.
#[derive(Clone)]
pub struct EventMetrics {
    pub events: prometheus::IntCounterVec,
    pub lost: prometheus::IntCounter,
    pub suppressed: prometheus::IntCounterVec,
    /// Lines a reader that fell behind the stream missed (`reader`: `api` for a `--follow`
    /// client, `file` for the events file), each also a gap record to that reader.
    pub reader_dropped: prometheus::IntCounterVec,
}

/// Who an event is about, as of the last policy reconcile (kept apart from the policy store so
/// that decoding never waits for a reconcile).
#[derive(Default)]
pub struct Attribution {
    /// Host veth ifindex → `namespace/pod`.
    pub endpoints: HashMap<u32, String>,
    /// Rule id → `namespace/policy#rule`.
    pub rules: HashMap<u32, String>,
    /// (ifindex, `DIR_*`) → the policies selecting that endpoint in that direction: what a
    /// denial is "decided" by (none of their rules allowed it).
    pub selecting: HashMap<(u32, u8), Vec<String>>,
}

/// One event on the stream: its JSON line (serialized once, whoever reads it) and what the
/// readers' filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    /// What `--container` matches: pod and container names and ids (shared by a container's
    /// events).
    pub names: Arc<[String]>,
    /// What `--syscall` matches.
    pub syscall: Option<String>,
    /// The event as one JSON object, without the newline.
    pub line: String,
}

impl Event {
    /// The event `fields` (an object already stamped with schema, type, node and time) as
    /// readers get it.
    fn from_value(kind: &str, fields: &Value) -> Event {
        let mut names = Vec::new();
        if let Some(endpoint) = fields["endpoint"].as_str() {
            names.push(endpoint.to_owned());
            if let Some(pod) = endpoint.rsplit('/').next() {
                names.push(pod.to_owned());
            }
        }
        for k in ["name", "id"] {
            if let Some(v) = fields["container"][k].as_str() {
                names.push(v.to_owned());
            }
        }
        Event {
            kind: kind.to_owned(),
            names: names.into(),
            syscall: fields["syscall"].as_str().map(str::to_owned),
            line: fields.to_string(),
        }
    }
}

pub struct EventHub {
    tx: broadcast::Sender<Arc<Event>>,
    recent: Mutex<VecDeque<Arc<Event>>>,
    pub attribution: RwLock<Attribution>,
    pub node: String,
    pub metrics: EventMetrics,
}

impl EventHub {
    pub fn new(node: &str, metrics: EventMetrics) -> Arc<Self> {
        Arc::new(Self {
            tx: broadcast::channel(RECENT).0,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            attribution: RwLock::new(Attribution::default()),
            node: node.to_owned(),
            metrics,
        })
    }

    /// Stamps and publishes one event of `kind` with `fields`.
    pub fn publish(&self, kind: &str, mut fields: Value) {
        if let Value::Object(map) = &mut fields {
            map.insert("schema".into(), SCHEMA.into());
            map.insert("type".into(), kind.into());
            map.insert("node".into(), self.node.clone().into());
            map.entry("time")
                .or_insert_with(|| berth_runtime::state::now_rfc3339().into());
        }
        self.publish_event(Event::from_value(kind, &fields));
    }

    /// Publishes an event already serialized (with schema, type, node and time in its line):
    /// the path of high-rate events, which skip building a `Value`.
    pub fn publish_event(&self, event: Event) {
        self.metrics
            .events
            .with_label_values(&[event.kind.as_str()])
            .inc();
        let event = Arc::new(event);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    pub fn recent(&self) -> Vec<Arc<Event>> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// Which events a reader wants.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Filter {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// A pod (`namespace/name` or `name`) or container (name or id) the event is about.
    #[serde(default)]
    pub container: Option<String>,
    /// Only syscall events of this syscall (by name).
    #[serde(default)]
    pub syscall: Option<String>,
    #[serde(default)]
    pub follow: Option<bool>,
}

impl Filter {
    /// Whether a reader with this filter gets `event`. Gap records always pass: a loss is never
    /// hidden from a reader by its own filter (the lost events might have been the ones it
    /// asked for).
    pub fn matches(&self, event: &Event) -> bool {
        if event.kind == "gap" {
            return true;
        }
        if let Some(kind) = &self.kind
            && event.kind != *kind
        {
            return false;
        }
        if let Some(c) = &self.container {
            // A name or id, or a container id's unambiguous prefix (12 characters or more).
            let hit = event
                .names
                .iter()
                .any(|n| n == c || (c.len() >= 12 && n.len() == 64 && n.starts_with(c.as_str())));
            if !hit {
                return false;
            }
        }
        if let Some(s) = &self.syscall
            && event.syscall.as_deref() != Some(s.as_str())
        {
            return false;
        }
        true
    }
}

/// Reads the kernel's policy event ring (`EVENTS`) until the task is aborted.
pub async fn run_reader(layout: PinLayout, hub: Arc<EventHub>) {
    let decode_hub = hub.clone();
    read_ring(
        layout,
        hub,
        maps::EVENTS,
        maps::EVENTS_LOST,
        move |bytes, offset_ns| decode(&decode_hub, bytes, offset_ns),
    )
    .await
}

/// Reads the kernel's audit ring (`AUDIT_EVENTS`) until the task is aborted.
pub async fn run_audit_reader(
    layout: PinLayout,
    hub: Arc<EventHub>,
    targets: Arc<RwLock<HashMap<u64, crate::audit::TargetInfo>>>,
) {
    let offset_ns = wall_ns().saturating_sub(crate::agent::monotonic_ns());
    let mut decoder = crate::audit_events::AuditDecoder::new(hub.clone(), targets, offset_ns);
    read_ring(
        layout,
        hub,
        maps::AUDIT_EVENTS,
        maps::AUDIT_LOST,
        move |bytes, _| decoder.decode(bytes),
    )
    .await
}

/// Reads ring `ring` into `decode` until the task is aborted, and turns growth of the per-CPU
/// loss counter `lost_map` into gap records (loss is never silent).
async fn read_ring(
    layout: PinLayout,
    hub: Arc<EventHub>,
    ring: &'static str,
    lost_map: &'static str,
    mut decode: impl FnMut(&[u8], u64),
) {
    let open = || -> Result<RingBuf<MapData>, String> {
        let data = MapData::from_pin(layout.map(ring)).map_err(|e| e.to_string())?;
        RingBuf::try_from(Map::RingBuf(data)).map_err(|e| e.to_string())
    };
    let ring_buf = match open() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(ring, error = %e, "cannot open the ring buffer; no kernel events");
            return;
        }
    };
    // SAFETY: the ring owns its fd and neither closes nor replaces it while the AsyncFd holds
    // it; both are dropped together.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring_buf, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(ring, error = %e, "cannot poll the ring buffer; no kernel events");
            return;
        }
    };
    // Monotonic → wall clock for event times.
    let offset_ns = wall_ns().saturating_sub(crate::agent::monotonic_ns());
    let mut lost_seen = read_lost(&layout, lost_map).unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(ring, error = %e, "polling the ring buffer failed");
                        return;
                    }
                };
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    decode(&item, offset_ns);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if let Some(lost) = read_lost(&layout, lost_map) && lost > lost_seen {
                    let n = lost - lost_seen;
                    lost_seen = lost;
                    hub.metrics.lost.inc_by(n);
                    hub.publish("gap", json!({
                        "lost": n,
                        "reason": "ring buffer full",
                        "ring": ring,
                    }));
                }
            }
        }
    }
}

/// Opens `path` and subscribes to the stream; the returned function appends every event to it
/// as JSON lines until the hub is dropped (blocking: run it on a thread of its own).
///
/// Rotation is by size: when the file would grow past `max_bytes`, FILE.N-1 → FILE.N …
/// FILE → FILE.1 and a new FILE starts (`keep` rotated files; the oldest is dropped). A writer
/// that falls behind the stream writes a gap record saying how many lines it missed.
pub fn file_sink(
    hub: &EventHub,
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
) -> std::io::Result<impl FnOnce() -> std::io::Result<()> + Send + 'static> {
    use std::io::Write as _;
    let mut rx = hub.subscribe();
    let node = hub.node.clone();
    let dropped = hub.metrics.reader_dropped.with_label_values(&["file"]);
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let first = open(&path)?;
    let mut size = first.metadata()?.len();
    Ok(move || {
        let mut file = std::io::BufWriter::new(first);
        loop {
            let line = match rx.blocking_recv() {
                Ok(event) => event.line.clone(),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    dropped.inc_by(n);
                    json!({
                        "schema": SCHEMA, "type": "gap", "node": node,
                        "time": berth_runtime::state::now_rfc3339(),
                        "lost": n, "reason": "the events file writer fell behind",
                    })
                    .to_string()
                }
                Err(broadcast::error::RecvError::Closed) => return file.flush(),
            };
            let len = line.len() as u64 + 1;
            if size > 0 && size + len > max_bytes {
                file.flush()?;
                rotate(&path, keep)?;
                file = std::io::BufWriter::new(open(&path)?);
                size = 0;
            }
            file.write_all(line.as_bytes())?;
            file.write_all(b"\n")?;
            size += len;
            // When the stream is idle: flush, then wait a moment before blocking again, so a
            // burst is written in batches instead of one wake-up and one write per line (lines
            // reach the file within a few milliseconds).
            if rx.is_empty() {
                file.flush()?;
                std::thread::sleep(FILE_SINK_PACE);
            }
        }
    })
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let from = rotated(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

fn read_lost(layout: &PinLayout, name: &str) -> Option<u64> {
    let data = MapData::from_pin(layout.map(name)).ok()?;
    let lost: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data)).ok()?;
    lost.get(&0, 0)
        .ok()
        .map(|v| v.iter().copied().fold(0, u64::wrapping_add))
}

fn decode(hub: &EventHub, bytes: &[u8], offset_ns: u64) {
    if bytes.len() < size_of::<EventHeader>() {
        return;
    }
    // SAFETY: length checked; the record is plain integers written by the kernel program.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match header.kind {
        EVENT_POLICY_VERDICT if bytes.len() >= size_of::<PolicyVerdictEvent>() => {
            // SAFETY: as above, for the verdict record's length.
            let ev: PolicyVerdictEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            policy_verdict(hub, &ev, offset_ns);
        }
        other => tracing::debug!(kind = other, len = bytes.len(), "unknown event record"),
    }
}

fn policy_verdict(hub: &EventHub, ev: &PolicyVerdictEvent, offset_ns: u64) {
    if ev.header.suppressed > 0 {
        hub.metrics
            .suppressed
            .with_label_values(&["policy_verdict"])
            .inc_by(u64::from(ev.header.suppressed));
    }
    let (endpoint, rule, selected_by) = {
        let a = hub.attribution.read().unwrap_or_else(|p| p.into_inner());
        (
            a.endpoints.get(&ev.ifindex).cloned(),
            a.rules.get(&ev.rule_id).cloned(),
            a.selecting
                .get(&(ev.ifindex, ev.direction))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let (policy, rule_index) = match rule.as_deref().and_then(|r| r.rsplit_once('#')) {
        Some((p, i)) => (Some(p.to_owned()), i.parse::<u64>().ok()),
        None => (None, None),
    };
    let addr = |a: u32| Ipv4Addr::from(u32::from_be(a)).to_string();
    let time_ns = ev.header.ts_ns.saturating_add(offset_ns);
    hub.publish(
        "policy_verdict",
        json!({
            "time": berth_runtime::state::rfc3339_micros(time_ns),
            "verdict": match ev.verdict {
                VERDICT_ALLOWED => "allowed",
                VERDICT_DENIED => "denied",
                _ => "audit",
            },
            "direction": if ev.direction == DIR_INGRESS { "ingress" } else { "egress" },
            "proto": match ev.proto {
                6 => "TCP".to_owned(),
                17 => "UDP".to_owned(),
                132 => "SCTP".to_owned(),
                1 => "ICMP".to_owned(),
                n => n.to_string(),
            },
            "src": { "ip": addr(ev.saddr), "port": u16::from_be(ev.sport) },
            "dst": { "ip": addr(ev.daddr), "port": u16::from_be(ev.dport) },
            "endpoint": endpoint,
            "ifindex": ev.ifindex,
            "peer_identity": ev.peer_identity,
            "policy": policy,
            "rule": rule_index,
            "selected_by": selected_by,
            "suppressed_before": ev.header.suppressed,
        }),
    );
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// The agent's API socket.
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Keep printing events as they come (after the recent ones).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only events about this pod (NAMESPACE/NAME or NAME) or container (name or id).
    #[arg(long)]
    container: Option<String>,
    /// Only syscall events of this syscall (e.g. openat).
    #[arg(long)]
    syscall: Option<String>,
    /// Only events of this type (policy_verdict, syscall, exec, exit, gap).
    #[arg(long = "type")]
    kind: Option<String>,
}

pub fn run(args: EventsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut uri = format!("/v1/events?follow={}", args.follow);
    if let Some(c) = &args.container {
        uri.push_str(&format!("&container={}", client::query_value(c)));
    }
    if let Some(t) = &args.kind {
        uri.push_str(&format!("&type={}", client::query_value(t)));
    }
    if let Some(s) = &args.syscall {
        uri.push_str(&format!("&syscall={}", client::query_value(s)));
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    rt.block_on(client::stream(&args.api_socket, &uri, |chunk| {
        out.write_all(chunk).and_then(|()| out.flush()).is_ok()
    }))
    .map_err(crate::svc_cli::explain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let metrics = EventMetrics {
            events: prometheus::IntCounterVec::new(prometheus::Opts::new("e", "e"), &["type"])
                .expect("metric"),
            lost: prometheus::IntCounter::new("l", "l").expect("metric"),
            suppressed: prometheus::IntCounterVec::new(prometheus::Opts::new("s", "s"), &["type"])
                .expect("metric"),
            reader_dropped: prometheus::IntCounterVec::new(
                prometheus::Opts::new("r", "r"),
                &["reader"],
            )
            .expect("metric"),
        };
        let hub = EventHub::new("node", metrics);
        let run = file_sink(&hub, path.clone(), 4096, 2).expect("open sink");
        let sink = std::thread::spawn(run);
        for i in 0..100 {
            hub.publish("syscall", json!({ "i": i, "pad": "x".repeat(100) }));
        }
        // Dropping the last sender closes the stream: the sink flushes and returns.
        drop(hub);
        sink.join().expect("sink thread").expect("sink");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let current = read(&path);
        let first = read(&rotated(&path, 1));
        let second = read(&rotated(&path, 2));
        assert!(!rotated(&path, 3).exists(), "only 2 rotated files are kept");
        for f in [&current, &first, &second] {
            assert!(
                f.len() <= 4096,
                "a file exceeds the size limit: {}",
                f.len()
            );
            for line in f.lines() {
                let v: Value = serde_json::from_str(line).expect("each line is JSON");
                assert_eq!(v["schema"], SCHEMA);
            }
        }
        // The newest events are in the current file, in order, after the rotated ones.
        let last: Value =
            serde_json::from_str(current.lines().last().expect("a line")).expect("json");
        assert_eq!(last["i"], 99);
        let first_of_current: Value =
            serde_json::from_str(current.lines().next().expect("a line")).expect("json");
        let last_of_1: Value =
            serde_json::from_str(first.lines().last().expect("a line")).expect("json");
        assert_eq!(
            last_of_1["i"].as_u64().expect("i") + 1,
            first_of_current["i"].as_u64().expect("i")
        );
    }

    #[test]
    fn filters_by_type_and_pod() {
        let stamp = |v: Value| {
            let kind = v["type"].as_str().unwrap_or("").to_owned();
            Event::from_value(&kind, &v)
        };
        let ev = stamp(json!({"type": "policy_verdict", "endpoint": "shop/web"}));
        let f = |kind: Option<&str>, c: Option<&str>| Filter {
            kind: kind.map(str::to_owned),
            container: c.map(str::to_owned),
            syscall: None,
            follow: None,
        };
        assert!(f(None, None).matches(&ev));
        assert!(f(Some("policy_verdict"), Some("web")).matches(&ev));
        assert!(f(None, Some("shop/web")).matches(&ev));
        assert!(!f(Some("gap"), None).matches(&ev));
        assert!(!f(None, Some("db")).matches(&ev));
        // A loss reaches every reader, whatever it filters on.
        let gap = stamp(json!({"type": "gap", "lost": 3}));
        assert!(f(Some("syscall"), Some("web")).matches(&gap));
        // Containers by name, id, or id prefix; syscalls by name.
        let id = "a".repeat(64);
        let sc = stamp(json!({"type": "syscall", "syscall": "openat",
            "container": {"name": "audited", "id": id}}));
        assert!(f(Some("syscall"), Some("audited")).matches(&sc));
        assert!(f(None, Some(&id[..12])).matches(&sc));
        assert!(!f(None, Some(&id[..4])).matches(&sc));
        let mut by_syscall = f(None, None);
        by_syscall.syscall = Some("openat".into());
        assert!(by_syscall.matches(&sc));
        by_syscall.syscall = Some("execve".into());
        assert!(!by_syscall.matches(&sc));
    }
}
