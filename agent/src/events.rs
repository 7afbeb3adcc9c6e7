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
//! - `gap`: `lost` events the kernel could not put on a full ring, `reason`.

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    path::PathBuf,
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
/// Events kept for `berth events` without `--follow`.
const RECENT: usize = 4096;

/// Prometheus instruments of the event stream.
#[derive(Clone)]
pub struct EventMetrics {
    pub events: prometheus::IntCounterVec,
    pub lost: prometheus::IntCounter,
    pub suppressed: prometheus::IntCounterVec,
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

pub struct EventHub {
    tx: broadcast::Sender<Arc<Value>>,
    recent: Mutex<VecDeque<Arc<Value>>>,
    pub attribution: RwLock<Attribution>,
    node: String,
    metrics: EventMetrics,
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
        self.metrics.events.with_label_values(&[kind]).inc();
        let event = Arc::new(fields);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        let _ = self.tx.send(event);
    }

    pub fn recent(&self) -> Vec<Arc<Value>> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.tx.subscribe()
    }
}

/// Which events a reader wants.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Filter {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// A pod (`namespace/name` or `name`) the event is about.
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub follow: Option<bool>,
}

impl Filter {
    pub fn matches(&self, event: &Value) -> bool {
        if let Some(kind) = &self.kind
            && event["type"].as_str() != Some(kind.as_str())
        {
            return false;
        }
        if let Some(c) = &self.container {
            let endpoint = event["endpoint"].as_str().unwrap_or("");
            let name = endpoint.rsplit('/').next().unwrap_or("");
            if endpoint != c && name != c {
                return false;
            }
        }
        true
    }
}

/// Reads the kernel's event ring until the task is aborted, and polls the loss counters.
pub async fn run_reader(layout: PinLayout, hub: Arc<EventHub>) {
    let open = || -> Result<RingBuf<MapData>, String> {
        let data = MapData::from_pin(layout.map(maps::EVENTS)).map_err(|e| e.to_string())?;
        RingBuf::try_from(Map::RingBuf(data)).map_err(|e| e.to_string())
    };
    let ring = match open() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the EVENTS ring buffer; no kernel events");
            return;
        }
    };
    // SAFETY: the ring owns its fd and neither closes nor replaces it while the AsyncFd holds
    // it; both are dropped together.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot poll the EVENTS ring buffer; no kernel events");
            return;
        }
    };
    // Monotonic → wall clock for event times.
    let offset_ns = wall_ns().saturating_sub(monotonic_ns());
    let mut lost_seen = read_lost(&layout).unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "polling the EVENTS ring buffer failed");
                        return;
                    }
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    decode(&hub, &item, offset_ns);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                if let Some(lost) = read_lost(&layout) && lost > lost_seen {
                    let n = lost - lost_seen;
                    lost_seen = lost;
                    hub.metrics.lost.inc_by(n);
                    hub.publish("gap", json!({ "lost": n, "reason": "ring buffer full" }));
                }
            }
        }
    }
}

fn read_lost(layout: &PinLayout) -> Option<u64> {
    let data = MapData::from_pin(layout.map(maps::EVENTS_LOST)).ok()?;
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

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
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
    /// Only events about this pod (NAMESPACE/NAME or NAME).
    #[arg(long)]
    container: Option<String>,
    /// Only events of this type (policy_verdict, gap).
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
    fn filters_by_type_and_pod() {
        let ev = json!({"type": "policy_verdict", "endpoint": "shop/web"});
        let f = |kind: Option<&str>, c: Option<&str>| Filter {
            kind: kind.map(str::to_owned),
            container: c.map(str::to_owned),
            follow: None,
        };
        assert!(f(None, None).matches(&ev));
        assert!(f(Some("policy_verdict"), Some("web")).matches(&ev));
        assert!(f(None, Some("shop/web")).matches(&ev));
        assert!(!f(Some("gap"), None).matches(&ev));
        assert!(!f(None, Some("db")).matches(&ev));
    }
}
