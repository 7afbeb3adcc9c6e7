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

/// Every map the kernel object declares, in the order `berth status` lists them.
pub const ALL: &[&str] = &[XDP_STATS, CONTAINERS, LOG_RATELIMIT, AYA_LOGS];
