//! Every map the programs share. The agent pins each one by name (`berth_common::maps`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use berth_common::{
    ContainerRecord,
    events::{EVENTS_RING_BYTES, RateState},
    lb::{
        AffinityKey, AffinityValue, Backend, BackendKey, CtKey, CtValue, Frontend, FrontendKey,
        LbConfig, LbStat, MaglevTable, SockRevKey, SockRevValue,
    },
    maps::{self, CONTAINERS_MAX_ENTRIES},
    policy::{PolicyCtValue, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue, PolicyStat},
    xdp::XdpStat,
};

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

// ---- service load balancing (see `berth_common::lb`) ----

/// Service frontends.
#[map(name = "LB_FRONTENDS")]
pub static LB_FRONTENDS: HashMap<FrontendKey, Frontend> =
    HashMap::with_max_entries(maps::LB_FRONTENDS_MAX_ENTRIES, 0);

/// Backend slots of every backend set.
#[map(name = "LB_BACKENDS")]
pub static LB_BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(maps::LB_BACKENDS_MAX_ENTRIES, 0);

/// Maglev tables, allocated on use: each is 32 KiB and only uplink-facing sets have one.
#[map(name = "LB_MAGLEV")]
pub static LB_MAGLEV: HashMap<u32, MaglevTable> =
    HashMap::with_max_entries(maps::LB_MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Session affinity; LRU so a flood of clients evicts the oldest instead of failing.
#[map(name = "LB_AFFINITY")]
pub static LB_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(maps::LB_AFFINITY_MAX_ENTRIES, 0);

/// Connection tracking of translated packet flows; LRU, garbage-collected by the agent.
#[map(name = "LB_CONNTRACK")]
pub static LB_CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(maps::LB_CONNTRACK_MAX_ENTRIES, 0);

/// Translated UDP sockets: (cookie, backend) → frontend, for recvmsg/getpeername.
#[map(name = "LB_SOCK_REVNAT")]
pub static LB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue> =
    LruHashMap::with_max_entries(maps::LB_SOCK_REVNAT_MAX_ENTRIES, 0);

/// This node's addresses (NodePorts and published ports are served on these).
#[map(name = "LB_NODE_ADDRS")]
pub static LB_NODE_ADDRS: HashMap<u32, u32> =
    HashMap::with_max_entries(maps::LB_NODE_ADDRS_MAX_ENTRIES, 0);

#[map(name = "LB_CONFIG")]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Per-CPU load-balancing counters, indexed by `LbStat`.
#[map(name = "LB_STATS")]
pub static LB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LbStat::COUNT, 0);

/// Increments one load-balancing counter (per-CPU, see [`count`]).
#[inline(always)]
pub fn count_lb(stat: LbStat) {
    if let Some(slot) = LB_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: as in `count`: a valid per-CPU slot only this CPU writes.
        unsafe { *slot += 1 };
    }
}

// ---- NetworkPolicy (see `berth_common::policy`) ----

/// Endpoints under policy, by host-side veth ifindex.
#[map(name = "POLICY_ENDPTS")]
pub static POLICY_ENDPTS: HashMap<u32, PolicyEndpoint> =
    HashMap::with_max_entries(maps::POLICY_ENDPTS_MAX_ENTRIES, 0);

/// Address prefix → identity.
#[map(name = "POLICY_IPCACHE")]
pub static POLICY_IPCACHE: LpmTrie<u32, u32> =
    LpmTrie::with_max_entries(maps::POLICY_IPCACHE_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Every endpoint table's rules.
#[map(name = "POLICY_RULES")]
pub static POLICY_RULES: LpmTrie<PolicyRuleKey, PolicyRuleValue> =
    LpmTrie::with_max_entries(maps::POLICY_RULES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Flows policy allowed; LRU, garbage-collected by the agent.
#[map(name = "POLICY_CT")]
pub static POLICY_CT: LruHashMap<CtKey, PolicyCtValue> =
    LruHashMap::with_max_entries(maps::POLICY_CT_MAX_ENTRIES, 0);

/// Per-CPU policy counters, indexed by `PolicyStat`.
#[map(name = "POLICY_STATS")]
pub static POLICY_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PolicyStat::COUNT, 0);

/// Increments one policy counter (per-CPU, see [`count`]).
#[inline(always)]
pub fn count_policy(stat: PolicyStat) {
    if let Some(slot) = POLICY_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: as in `count`: a valid per-CPU slot only this CPU writes.
        unsafe { *slot += 1 };
    }
}

// ---- events (see `berth_common::events`) ----

/// Events for the agent's event stream.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per-CPU count of events lost to a full ring.
#[map(name = "EVENTS_LOST")]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU rate limiter per event kind.
#[map(name = "EVENT_RATE")]
pub static EVENT_RATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(maps::EVENT_KINDS, 0);
