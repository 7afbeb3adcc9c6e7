//! Names and capacities of every map berth's kernel programs declare.
//!
//! The agent pins each of these under `<pin root>/maps/<NAME>` and re-opens the pin on the next
//! start, so the contents outlive the agent process.

/// Per-CPU packet counters of `xdp_lb_ingress`, indexed by [`crate::xdp::XdpStat`].
pub const XDP_STATS: &str = "XDP_STATS";

/// Containers known to the data plane, keyed by cgroup v2 id ([`crate::ContainerRecord`]).
pub const CONTAINERS: &str = "CONTAINERS";
/// Capacity of [`CONTAINERS`]: one entry per container on the node, with ample headroom.
pub const CONTAINERS_MAX_ENTRIES: u32 = 16_384;

/// Per-CPU timestamp (ns) of the last rate-limited log line each CPU emitted.
pub const LOG_RATELIMIT: &str = "LOG_RATELIMIT";

/// The ring buffer aya-log-ebpf writes log records to (its name is fixed by aya-log).
pub const AYA_LOGS: &str = "AYA_LOGS";

/// Service frontends ([`crate::lb::FrontendKey`] → [`crate::lb::Frontend`]).
pub const LB_FRONTENDS: &str = "LB_FRONTENDS";
pub const LB_FRONTENDS_MAX_ENTRIES: u32 = 65_536;
/// Backend slots ([`crate::lb::BackendKey`] → [`crate::lb::Backend`]); room for every frontend's
/// set twice (old and new during an update).
pub const LB_BACKENDS: &str = "LB_BACKENDS";
pub const LB_BACKENDS_MAX_ENTRIES: u32 = 524_288;
/// Maglev tables of sets served on the uplink (set id → [`crate::lb::MaglevTable`]).
pub const LB_MAGLEV: &str = "LB_MAGLEV";
pub const LB_MAGLEV_MAX_ENTRIES: u32 = 8_192;
/// Session affinity (LRU).
pub const LB_AFFINITY: &str = "LB_AFFINITY";
pub const LB_AFFINITY_MAX_ENTRIES: u32 = 65_536;
/// Connection tracking of translated packet flows (LRU).
pub const LB_CONNTRACK: &str = "LB_CONNTRACK";
pub const LB_CONNTRACK_MAX_ENTRIES: u32 = 262_144;
/// Socket → frontend for replies to translated UDP sockets and getpeername (LRU).
pub const LB_SOCK_REVNAT: &str = "LB_SOCK_REVNAT";
pub const LB_SOCK_REVNAT_MAX_ENTRIES: u32 = 65_536;
/// Addresses of this node on which NodePorts and published ports are served (addr → ifindex).
pub const LB_NODE_ADDRS: &str = "LB_NODE_ADDRS";
pub const LB_NODE_ADDRS_MAX_ENTRIES: u32 = 256;
/// One [`crate::lb::LbConfig`].
pub const LB_CONFIG: &str = "LB_CONFIG";
/// Per-CPU load-balancing counters, indexed by [`crate::lb::LbStat`].
pub const LB_STATS: &str = "LB_STATS";

/// Endpoints under NetworkPolicy: host veth ifindex → [`crate::policy::PolicyEndpoint`].
pub const POLICY_ENDPTS: &str = "POLICY_ENDPTS";
pub const POLICY_ENDPTS_MAX_ENTRIES: u32 = 16_384;
/// Address prefix → identity (LPM trie: pod /32s, node addresses, ipBlock prefixes).
pub const POLICY_IPCACHE: &str = "POLICY_IPCACHE";
pub const POLICY_IPCACHE_MAX_ENTRIES: u32 = 262_144;
/// Policy tables ([`crate::policy::PolicyRuleKey`] LPM trie → [`crate::policy::PolicyRuleValue`]).
pub const POLICY_RULES: &str = "POLICY_RULES";
pub const POLICY_RULES_MAX_ENTRIES: u32 = 1_048_576;
/// Flows policy has allowed (LRU): 5-tuple → [`crate::policy::PolicyCtValue`].
pub const POLICY_CT: &str = "POLICY_CT";
pub const POLICY_CT_MAX_ENTRIES: u32 = 262_144;
/// Per-CPU policy counters, indexed by [`crate::policy::PolicyStat`].
pub const POLICY_STATS: &str = "POLICY_STATS";

/// Event ring buffer ([`crate::events`]).
pub const EVENTS: &str = "EVENTS";
/// Per-CPU count of events lost because the ring was full.
pub const EVENTS_LOST: &str = "EVENTS_LOST";
/// Per-CPU rate limiter state per event kind ([`crate::events::RateState`]).
pub const EVENT_RATE: &str = "EVENT_RATE";
/// Event kinds `EVENT_RATE` has room for.
pub const EVENT_KINDS: u32 = 8;

/// Audited cgroups: cgroup id → [`crate::audit::AuditTarget`].
pub const AUDIT_TARGETS: &str = "AUDIT_TARGETS";
pub const AUDIT_TARGETS_MAX_ENTRIES: u32 = 16_384;
/// (profile, syscall) → [`crate::audit::AuditSyscall`].
pub const AUDIT_SYSCALLS: &str = "AUDIT_SYSCALLS";
pub const AUDIT_SYSCALLS_MAX_ENTRIES: u32 = 65_536;
/// Path-prefix clauses (LPM trie of [`crate::audit::AuditPathKey`]).
pub const AUDIT_PATHS: &str = "AUDIT_PATHS";
pub const AUDIT_PATHS_MAX_ENTRIES: u32 = 65_536;
/// Per-CPU syscall counters ([`crate::audit::AuditCountKey`] → u64).
pub const AUDIT_COUNTS: &str = "AUDIT_COUNTS";
pub const AUDIT_COUNTS_MAX_ENTRIES: u32 = 65_536;
/// Syscall records waiting for their sys_exit (thread id → [`crate::audit::AuditEvent`]).
pub const AUDIT_INFLIGHT: &str = "AUDIT_INFLIGHT";
pub const AUDIT_INFLIGHT_MAX_ENTRIES: u32 = 4_096;
/// Exit status a process passed to exit/exit_group (tgid → status; LRU).
pub const AUDIT_EXITS: &str = "AUDIT_EXITS";
pub const AUDIT_EXITS_MAX_ENTRIES: u32 = 16_384;
/// Per-CPU scratch record (too big for the BPF stack).
pub const AUDIT_SCRATCH: &str = "AUDIT_SCRATCH";
/// Syscall and process records ([`crate::audit::AuditEvent`]).
pub const AUDIT_EVENTS: &str = "AUDIT_EVENTS";
/// Size of the `AUDIT_EVENTS` ring in bytes (a power of two): about 7,000 full records.
pub const AUDIT_EVENTS_RING_BYTES: u32 = 8 << 20;
/// Per-CPU count of audit records lost because `AUDIT_EVENTS` was full.
pub const AUDIT_LOST: &str = "AUDIT_LOST";
/// Per-CPU audit counters, indexed by [`crate::audit::AuditStat`].
pub const AUDIT_STATS: &str = "AUDIT_STATS";

/// Every map the kernel object declares, in the order `berth status` lists them.
pub const ALL: &[&str] = &[
    XDP_STATS,
    CONTAINERS,
    LOG_RATELIMIT,
    AYA_LOGS,
    LB_FRONTENDS,
    LB_BACKENDS,
    LB_MAGLEV,
    LB_AFFINITY,
    LB_CONNTRACK,
    LB_SOCK_REVNAT,
    LB_NODE_ADDRS,
    LB_CONFIG,
    LB_STATS,
    POLICY_ENDPTS,
    POLICY_IPCACHE,
    POLICY_RULES,
    POLICY_CT,
    POLICY_STATS,
    EVENTS,
    EVENTS_LOST,
    EVENT_RATE,
    AUDIT_TARGETS,
    AUDIT_SYSCALLS,
    AUDIT_PATHS,
    AUDIT_COUNTS,
    AUDIT_INFLIGHT,
    AUDIT_EXITS,
    AUDIT_SCRATCH,
    AUDIT_EVENTS,
    AUDIT_LOST,
    AUDIT_STATS,
];
