//! Every map the programs share. The agent pins each one by name (`berth_common::maps`).

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use berth_common::{ContainerRecord, maps::CONTAINERS_MAX_ENTRIES, xdp::XdpStat};

/// Per-CPU frame counters of `xdp_lb_ingress`, indexed by `XdpStat`.
#[map(name = "XDP_STATS")]
pub static XDP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XdpStat::COUNT, 0);

/// cgroup id → container record; written by the runtime and the agent.
#[map(name = "CONTAINERS")]
pub static CONTAINERS: HashMap<u64, ContainerRecord> =
    HashMap::with_max_entries(CONTAINERS_MAX_ENTRIES, 0);

/// Per-CPU time of the last rate-limited log line (see `ratelimit`).
#[map(name = "LOG_RATELIMIT")]
pub static LOG_RATELIMIT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Increments one per-CPU counter. Per-CPU slots need no atomics: a program runs to completion
/// on one CPU without being preempted by another instance on the same CPU.
#[inline(always)]
pub fn count(stat: XdpStat) {
    if let Some(slot) = XDP_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from a successful per-CPU array lookup and is valid for the
        // program's lifetime; no other context writes this CPU's slot concurrently.
        unsafe { *slot += 1 };
    }
}
