//! Prometheus metrics. Data-plane figures are read from the pinned maps at scrape time (per-CPU
//! counters summed over CPUs), so `/metrics` always shows the kernel's current numbers and the
//! agent keeps no shadow copy that could drift.

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{Map, MapData, PerCpuArray};
use berth_common::{audit::AuditStat, lb::LbStat, maps, policy::PolicyStat, xdp::XdpStat};
use prometheus::{
    Encoder as _, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::dataplane::{PinLayout, inspect::inspect};

/// The agent's registry: build info, process metrics, and the data-plane collector.
pub struct Metrics {
    registry: Registry,
    /// Container lifecycle events reported by the daemonless runtime.
    pub container_events: IntCounterVec,
    /// The service reconcile path's instruments.
    pub services: crate::services::ServiceMetrics,
    /// Conntrack entries removed by garbage collection.
    pub conntrack_gc: prometheus::IntCounter,
    /// The policy reconcile path's instruments.
    pub policy: crate::policy::PolicyMetrics,
    /// Policy conntrack entries removed by garbage collection.
    pub policy_conntrack_gc: prometheus::IntCounter,
    /// The event stream's instruments.
    pub events: crate::events::EventMetrics,
    /// The audit reconcile path's instruments.
    pub audit: crate::audit::AuditMetrics,
    /// Who each audited cgroup is (the audit store fills it; the collector labels counts).
    pub audit_targets: crate::audit::Targets,
    /// The Kubernetes watches' instruments.
    pub kube: berth_kube::KubeMetrics,
    /// From receiving an API server event to its map write (kube-proxy's network programming
    /// latency, measured from the agent's side).
    pub kube_programming: prometheus::Histogram,
    /// From the change behind an EndpointSlice update (its last-change-trigger-time) to the map
    /// write: kube-proxy's `network_programming_duration_seconds`, end to end.
    pub kube_network_programming: prometheus::Histogram,
    /// The watches' health, once the Kubernetes source runs (staleness is computed at scrape).
    pub kube_health: std::sync::OnceLock<berth_kube::Health>,
    /// `/readyz`: the data plane is loaded and, with a Kubernetes source, every watched kind's
    /// first list is programmed.
    pub ready: std::sync::atomic::AtomicBool,
}

impl Metrics {
    pub fn new(layout: PinLayout) -> prometheus::Result<Self> {
        let registry = Registry::new();

        let build_info = IntGaugeVec::new(
            Opts::new("berth_build_info", "berth's version; the value is always 1"),
            &["version"],
        )?;
        build_info.with_label_values(&[crate::VERSION]).set(1);
        registry.register(Box::new(build_info))?;

        let start = GaugeVec::new(
            Opts::new(
                "berth_agent_start_time_seconds",
                "when the agent started, in seconds since the Unix epoch",
            ),
            &[],
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        start.with_label_values::<&str>(&[]).set(now);
        registry.register(Box::new(start))?;

        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(DataplaneCollector::new(layout.clone())?))?;
        let audit_targets = crate::audit::Targets::default();
        registry.register(Box::new(AuditCollector::new(
            layout,
            audit_targets.clone(),
        )?))?;
        let container_events = IntCounterVec::new(
            Opts::new(
                "berth_container_events_total",
                "container lifecycle events reported by berth run/rm (start, exit, remove)",
            ),
            &["event"],
        )?;
        registry.register(Box::new(container_events.clone()))?;
        let services = crate::services::ServiceMetrics {
            reconcile_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "berth_lb_reconcile_duration_seconds",
                    "time to write one service change into the load-balancing maps",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
            )?,
            services: IntGauge::new("berth_lb_services", "services in the desired state")?,
            frontends: IntGauge::new(
                "berth_lb_frontends",
                "frontends programmed by the agent (capacity: berth_bpf_map_capacity{map=\"LB_FRONTENDS\"})",
            )?,
            backends: IntGauge::new(
                "berth_lb_backends",
                "backend slots programmed by the agent (capacity: berth_bpf_map_capacity{map=\"LB_BACKENDS\"})",
            )?,
            conflicts: IntGauge::new(
                "berth_lb_frontend_conflicts",
                "frontends not programmed because another service (of the other source) holds them",
            )?,
        };
        registry.register(Box::new(services.conflicts.clone()))?;
        let kube = berth_kube::KubeMetrics::new()?;
        kube.register(&registry)?;
        let kube_programming = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "berth_kube_programming_latency_seconds",
                "time from receiving a Kubernetes API event to its write into the data-plane maps",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
        )?;
        registry.register(Box::new(kube_programming.clone()))?;
        let kube_network_programming = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "berth_kube_network_programming_duration_seconds",
                "time from the change behind an EndpointSlice update (its endpoints.kubernetes.io/last-change-trigger-time) to its map write, as kube-proxy's network_programming_duration_seconds",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(kube_network_programming.clone()))?;
        registry.register(Box::new(services.reconcile_seconds.clone()))?;
        registry.register(Box::new(services.services.clone()))?;
        registry.register(Box::new(services.frontends.clone()))?;
        registry.register(Box::new(services.backends.clone()))?;
        let conntrack_gc = prometheus::IntCounter::new(
            "berth_lb_conntrack_gc_removed_total",
            "idle conntrack entries removed by the agent's garbage collection",
        )?;
        registry.register(Box::new(conntrack_gc.clone()))?;
        let policy = crate::policy::PolicyMetrics {
            reconcile_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "berth_policy_reconcile_duration_seconds",
                    "time to compile the policies and write the difference into the policy maps",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
            )?,
            policies: IntGauge::new(
                "berth_policy_policies",
                "NetworkPolicies in the desired state",
            )?,
            endpoints: IntGauge::new(
                "berth_policy_endpoints",
                "pods of this node under policy control",
            )?,
            identities: IntGauge::new("berth_policy_identities", "numeric identities in use")?,
            tables: IntGauge::new(
                "berth_policy_tables",
                "distinct endpoint tables in the kernel (shared by equal endpoints)",
            )?,
            rules: IntGauge::new(
                "berth_policy_rules",
                "rules in all kernel tables (capacity: berth_bpf_map_capacity{map=\"POLICY_RULES\"})",
            )?,
        };
        registry.register(Box::new(policy.reconcile_seconds.clone()))?;
        registry.register(Box::new(policy.policies.clone()))?;
        registry.register(Box::new(policy.endpoints.clone()))?;
        registry.register(Box::new(policy.identities.clone()))?;
        registry.register(Box::new(policy.tables.clone()))?;
        registry.register(Box::new(policy.rules.clone()))?;
        let policy_conntrack_gc = prometheus::IntCounter::new(
            "berth_policy_conntrack_gc_removed_total",
            "idle policy conntrack entries removed by the agent's garbage collection",
        )?;
        registry.register(Box::new(policy_conntrack_gc.clone()))?;
        let events = crate::events::EventMetrics {
            events: IntCounterVec::new(
                Opts::new(
                    "berth_events_total",
                    "events put on the event stream, by type",
                ),
                &["type"],
            )?,
            lost: prometheus::IntCounter::new(
                "berth_events_lost_total",
                "kernel events lost because the ring buffer was full (each loss is also a gap record on the stream)",
            )?,
            suppressed: IntCounterVec::new(
                Opts::new(
                    "berth_events_suppressed_total",
                    "kernel events not emitted because of the per-CPU rate limit, by type (counted, never silent)",
                ),
                &["type"],
            )?,
            reader_dropped: IntCounterVec::new(
                Opts::new(
                    "berth_events_reader_dropped_total",
                    "event lines a reader that fell behind the stream missed, by reader (api: a \
                     following client, file: the events file); each is also a gap record to it",
                ),
                &["reader"],
            )?,
        };
        registry.register(Box::new(events.events.clone()))?;
        registry.register(Box::new(events.lost.clone()))?;
        registry.register(Box::new(events.suppressed.clone()))?;
        registry.register(Box::new(events.reader_dropped.clone()))?;
        let audit = crate::audit::AuditMetrics {
            reconcile_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "berth_audit_reconcile_duration_seconds",
                    "time to compile the audit rules and write the difference into the audit maps",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
            )?,
            policies: IntGauge::new("berth_audit_policies", "AuditPolicies in the desired state")?,
            targets: IntGauge::new(
                "berth_audit_targets",
                "containers and cgroups audited on this node",
            )?,
            tracepoints: IntGauge::new(
                "berth_audit_tracepoints_attached",
                "tracepoints the audit programs are attached to (each costs every caller of its syscall)",
            )?,
        };
        registry.register(Box::new(audit.reconcile_seconds.clone()))?;
        registry.register(Box::new(audit.policies.clone()))?;
        registry.register(Box::new(audit.targets.clone()))?;
        registry.register(Box::new(audit.tracepoints.clone()))?;
        Ok(Self {
            audit,
            audit_targets,
            registry,
            container_events,
            services,
            conntrack_gc,
            policy,
            policy_conntrack_gc,
            events,
            kube,
            kube_programming,
            kube_network_programming,
            kube_health: std::sync::OnceLock::new(),
            ready: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        if let Some(health) = self.kube_health.get() {
            self.kube.stale_seconds.set(health.stale_seconds());
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}

/// Reads maps and links from the pins on every scrape.
struct DataplaneCollector {
    layout: PinLayout,
    /// Serialises scrapes: each one resets and refills the vectors below.
    lock: Mutex<()>,
    xdp_packets: IntCounterVec,
    lb_packets: IntCounterVec,
    policy_verdicts: IntCounterVec,
    policy_drops: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    attached: IntGaugeVec,
    pin_errors: IntGauge,
}

impl DataplaneCollector {
    fn new(layout: PinLayout) -> prometheus::Result<Self> {
        Ok(Self {
            layout,
            lock: Mutex::new(()),
            xdp_packets: IntCounterVec::new(
                Opts::new(
                    "berth_xdp_packets_total",
                    "frames seen by xdp_lb_ingress, by verdict and reason",
                ),
                &["verdict", "reason"],
            )?,
            lb_packets: IntCounterVec::new(
                Opts::new(
                    "berth_lb_packets_total",
                    "load-balancing decisions (connections at the socket hooks, packets at tc and \
                     XDP) by path, verdict and reason",
                ),
                &["path", "verdict", "reason"],
            )?,
            policy_verdicts: IntCounterVec::new(
                Opts::new(
                    "berth_policy_verdicts_total",
                    "packets decided by NetworkPolicy on pod veths, by the pod's direction and the \
                     action (allowed, denied, audit: denied but passed in audit mode)",
                ),
                &["direction", "action"],
            )?,
            policy_drops: IntCounterVec::new(
                Opts::new(
                    "berth_policy_drops_total",
                    "packets dropped by the policy path, by reason",
                ),
                &["reason"],
            )?,
            map_entries: IntGaugeVec::new(
                Opts::new(
                    "berth_bpf_map_entries",
                    "entries in each pinned map (fixed size for arrays)",
                ),
                &["map"],
            )?,
            map_capacity: IntGaugeVec::new(
                Opts::new(
                    "berth_bpf_map_capacity",
                    "max_entries of each pinned map (bytes for ring buffers)",
                ),
                &["map"],
            )?,
            attached: IntGaugeVec::new(
                Opts::new(
                    "berth_bpf_program_attached",
                    "1 for each pinned attachment of a berth program",
                ),
                &["program", "target"],
            )?,
            pin_errors: IntGauge::new(
                "berth_bpf_pin_errors",
                "pins under the pin root that could not be read",
            )?,
        })
    }

    fn refresh(&self) {
        self.xdp_packets.reset();
        self.lb_packets.reset();
        self.policy_verdicts.reset();
        self.policy_drops.reset();
        self.map_entries.reset();
        self.map_capacity.reset();
        self.attached.reset();

        let report = inspect(&self.layout);
        for m in &report.maps {
            // A ring buffer has bytes, not entries: only its capacity is meaningful.
            if m.kind != "RingBuf" {
                self.map_entries
                    .with_label_values(&[m.name.as_str()])
                    .set(i64::from(m.entries));
            }
            self.map_capacity
                .with_label_values(&[m.name.as_str()])
                .set(i64::from(m.capacity));
        }
        for a in &report.attachments {
            self.attached
                .with_label_values(&[a.program.as_str(), a.target.as_str()])
                .set(1);
        }
        let mut errors = report.errors.len();
        match read_xdp_stats(&self.layout) {
            Ok(Some(totals)) => {
                for (stat, total) in XdpStat::ALL.iter().zip(totals) {
                    let (verdict, reason) = stat.labels();
                    self.xdp_packets
                        .with_label_values(&[verdict, reason])
                        .inc_by(total);
                }
            }
            Ok(None) => {}
            Err(err) => {
                errors += 1;
                tracing::warn!(error = %err, "reading XDP_STATS for /metrics");
            }
        }
        match read_per_cpu_totals(&self.layout, maps::LB_STATS, LbStat::COUNT) {
            Ok(Some(totals)) => {
                for (stat, total) in LbStat::ALL.iter().zip(totals) {
                    let (path, verdict, reason) = stat.labels();
                    self.lb_packets
                        .with_label_values(&[path, verdict, reason])
                        .inc_by(total);
                }
            }
            Ok(None) => {}
            Err(err) => {
                errors += 1;
                tracing::warn!(error = %err, "reading LB_STATS for /metrics");
            }
        }
        match read_per_cpu_totals(&self.layout, maps::POLICY_STATS, PolicyStat::COUNT) {
            Ok(Some(totals)) => {
                for (stat, total) in PolicyStat::ALL.iter().zip(totals) {
                    let (direction, action) = match stat {
                        PolicyStat::IngressAllowed => ("ingress", "allowed"),
                        PolicyStat::IngressDenied => ("ingress", "denied"),
                        PolicyStat::IngressAudit => ("ingress", "audit"),
                        PolicyStat::EgressAllowed => ("egress", "allowed"),
                        PolicyStat::EgressDenied => ("egress", "denied"),
                        PolicyStat::EgressAudit => ("egress", "audit"),
                        PolicyStat::Rechecked => {
                            continue;
                        }
                        PolicyStat::CtFull => {
                            self.policy_drops
                                .with_label_values(&["conntrack_full"])
                                .inc_by(total);
                            continue;
                        }
                    };
                    self.policy_verdicts
                        .with_label_values(&[direction, action])
                        .inc_by(total);
                    if action == "denied" {
                        self.policy_drops
                            .with_label_values(&["policy_denied"])
                            .inc_by(total);
                    }
                }
            }
            Ok(None) => {}
            Err(err) => {
                errors += 1;
                tracing::warn!(error = %err, "reading POLICY_STATS for /metrics");
            }
        }
        self.pin_errors.set(errors as i64);
    }
}

/// Sums each `XDP_STATS` counter over all CPUs; `None` when the map is not pinned.
fn read_xdp_stats(layout: &PinLayout) -> Result<Option<Vec<u64>>, aya::maps::MapError> {
    read_per_cpu_totals(layout, maps::XDP_STATS, XdpStat::COUNT)
}

/// Sums counters `0..count` of a per-CPU array over all CPUs; `None` when it is not pinned.
fn read_per_cpu_totals(
    layout: &PinLayout,
    name: &str,
    count: u32,
) -> Result<Option<Vec<u64>>, aya::maps::MapError> {
    let path = layout.map(name);
    if !path.exists() {
        return Ok(None);
    }
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(&path)?))?;
    let mut totals = Vec::with_capacity(count as usize);
    for index in 0..count {
        let per_cpu = stats.get(&index, 0)?;
        totals.push(per_cpu.iter().copied().fold(0u64, u64::wrapping_add));
    }
    Ok(Some(totals))
}

/// The audit programs' counters, read from the pins on every scrape.
struct AuditCollector {
    layout: PinLayout,
    targets: crate::audit::Targets,
    lock: Mutex<()>,
    syscalls: IntCounterVec,
    kernel: IntCounterVec,
    lost: IntCounterVec,
}

impl AuditCollector {
    fn new(layout: PinLayout, targets: crate::audit::Targets) -> prometheus::Result<Self> {
        Ok(Self {
            layout,
            targets,
            lock: Mutex::new(()),
            syscalls: IntCounterVec::new(
                Opts::new(
                    "berth_audit_syscalls_total",
                    "syscalls counted by `count` rules, by container and syscall (series exist \
                     only for audited containers and the syscalls their rules count; a removed \
                     container's series go with it)",
                ),
                &["container", "syscall"],
            )?,
            kernel: IntCounterVec::new(
                Opts::new(
                    "berth_audit_kernel_total",
                    "audit program outcomes: records (syscall records emitted), kills (SIGKILLs \
                     sent), inflight_full (records emitted at entry without a return value), \
                     counts_full (calls not counted: the counter map was full)",
                ),
                &["outcome"],
            )?,
            lost: IntCounterVec::new(
                Opts::new(
                    "berth_audit_lost_total",
                    "audit records lost because the AUDIT_EVENTS ring was full, by CPU (each \
                     loss is also a gap record on the stream)",
                ),
                &["cpu"],
            )?,
        })
    }

    fn refresh(&self) {
        self.syscalls.reset();
        self.kernel.reset();
        self.lost.reset();
        if let Ok(counts) = crate::dataplane::audit::read_counts(&self.layout) {
            let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
            for ((cgroup, nr), n) in counts {
                let Some(t) = targets.get(&cgroup) else {
                    continue;
                };
                let name = berth_audit::syscall_name(nr).unwrap_or_else(|| nr.to_string());
                self.syscalls
                    .with_label_values(&[t.name.as_str(), name.as_str()])
                    .inc_by(n);
            }
        }
        if let Ok(Some(totals)) =
            read_per_cpu_totals(&self.layout, maps::AUDIT_STATS, AuditStat::COUNT)
        {
            for (stat, total) in AuditStat::ALL.iter().zip(totals) {
                let name = match stat {
                    AuditStat::Events => "records",
                    other => other.name(),
                };
                self.kernel.with_label_values(&[name]).inc_by(total);
            }
        }
        let path = self.layout.map(maps::AUDIT_LOST);
        if let Ok(data) = MapData::from_pin(&path)
            && let Ok(lost) = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(data))
            && let Ok(per_cpu) = lost.get(&0, 0)
        {
            for (cpu, n) in per_cpu.iter().enumerate() {
                self.lost
                    .with_label_values(&[cpu.to_string().as_str()])
                    .inc_by(*n);
            }
        }
    }
}

impl Collector for AuditCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = Vec::new();
        descs.extend(self.syscalls.desc());
        descs.extend(self.kernel.desc());
        descs.extend(self.lost.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh();
        let mut families = Vec::new();
        families.extend(self.syscalls.collect());
        families.extend(self.kernel.collect());
        families.extend(self.lost.collect());
        families
    }
}

impl Collector for DataplaneCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = Vec::new();
        descs.extend(self.xdp_packets.desc());
        descs.extend(self.lb_packets.desc());
        descs.extend(self.policy_verdicts.desc());
        descs.extend(self.policy_drops.desc());
        descs.extend(self.map_entries.desc());
        descs.extend(self.map_capacity.desc());
        descs.extend(self.attached.desc());
        descs.extend(self.pin_errors.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.refresh();
        let mut families = Vec::new();
        families.extend(self.xdp_packets.collect());
        families.extend(self.lb_packets.collect());
        families.extend(self.policy_verdicts.collect());
        families.extend(self.policy_drops.collect());
        families.extend(self.map_entries.collect());
        families.extend(self.map_capacity.collect());
        families.extend(self.attached.collect());
        families.extend(self.pin_errors.collect());
        families
    }
}
