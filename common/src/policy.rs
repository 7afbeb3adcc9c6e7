//! NetworkPolicy enforcement: the maps `tc_pod_ingress` (traffic a pod sends: its egress) and
//! `tc_pod_egress` (traffic a pod receives: its ingress) consult on each pod's host-side veth.
//!
//! Decision path of a packet at endpoint `E` (its veth's ifindex) in direction `D`:
//! 1. `POLICY_ENDPTS[ifindex]` → [`PolicyEndpoint`]. No entry: the veth is not an endpoint
//!    berth manages; the packet passes.
//! 2. `POLICY_CT[5-tuple]` (original direction) or `POLICY_CT[reversed 5-tuple]` (a reply):
//!    a flow whose check for this side was made against the endpoint's *current* table passes
//!    with no further lookup. A flow checked against an older table is checked again, so a
//!    policy change keeps allowed connections and cuts the ones it now denies.
//! 3. A new flow: table 0 means no policy selects `E` for `D` (allowed). Otherwise the peer's
//!    identity comes from `POLICY_IPCACHE` (longest prefix: pod /32s, node addresses, ipBlock
//!    prefixes, 0.0.0.0/0), and `POLICY_RULES` is searched for (table, peer, proto, port) with
//!    peer ∈ {identity, [`IDENTITY_ANY`]} × proto ∈ {proto, [`PROTO_ANY`]}, longest match on
//!    the port. Any hit allows (NetworkPolicy has only allow rules); no hit denies.
//!
//! Atomic updates: tables are content-addressed and immutable. A changed table is written under a
//! NEW table id, then the endpoint entry switches to it in one map update, then the old table's
//! rules are deleted; endpoints with equal tables share one.

/// `PolicyRuleKey::peer`: every peer.
pub const IDENTITY_ANY: u32 = 0;
/// `PolicyRuleKey::proto`: every protocol (the port prefix is then always 0).
pub const PROTO_ANY: u8 = 0;
/// `PolicyEndpoint::ingress_table`/`egress_table`: no policy selects the endpoint for this
/// direction: everything is allowed.
pub const TABLE_NONE: u32 = 0;

/// `PolicyEndpoint::flags`: audit mode: would-be denials are reported and counted, not dropped.
pub const EP_F_AUDIT: u32 = 1 << 0;

/// Value of `POLICY_ENDPTS`, keyed by the ifindex (`u32`, host order) of the endpoint's
/// host-side veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyEndpoint {
    /// The endpoint's own identity (reported in events).
    pub identity: u32,
    /// Table of the endpoint's ingress rules; [`TABLE_NONE`]: not enforced.
    pub ingress_table: u32,
    /// Table of the endpoint's egress rules; [`TABLE_NONE`]: not enforced.
    pub egress_table: u32,
    /// `EP_F_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEndpoint>() == 16);

/// Key data of the `POLICY_RULES` LPM trie (the trie's key is `{ prefix_len: u32, data }`).
/// Every field but `port` is always matched in full: a rule's prefix length is
/// [`RULE_FIXED_BITS`] plus the number of leading port bits it fixes (0 to 16).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRuleKey {
    /// Table id (any byte order: it is always matched whole).
    pub table: u32,
    /// Peer identity or [`IDENTITY_ANY`].
    pub peer: u32,
    /// IP protocol number or [`PROTO_ANY`].
    pub proto: u8,
    pub _pad: u8,
    /// Destination port, network byte order (so that a prefix is a range of ports).
    pub port: u16,
}
const _: () = assert!(core::mem::size_of::<PolicyRuleKey>() == 12);

/// Bits of [`PolicyRuleKey`] before the port: table, peer, proto, pad.
pub const RULE_FIXED_BITS: u32 = 80;

/// Value of `POLICY_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyRuleValue {
    /// Which policy rule allowed it: an id the agent maps back to `namespace/name` and the
    /// rule's index (reported in verdict events).
    pub rule_id: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyRuleValue>() == 4);

/// `PolicyCtValue::flags`: the source endpoint's egress allowed the flow (against `egress_table`).
pub const PCT_F_EGRESS_OK: u32 = 1 << 0;
/// `PolicyCtValue::flags`: the destination endpoint's ingress allowed it (against `ingress_table`).
pub const PCT_F_INGRESS_OK: u32 = 1 << 1;
/// `PolicyCtValue::flags`: a TCP FIN or RST was seen: the short closing timeout applies.
pub const PCT_F_CLOSING: u32 = 1 << 2;
/// `PolicyCtValue::flags`: a reply was seen.
pub const PCT_F_SEEN_REPLY: u32 = 1 << 3;

/// Value of `POLICY_CT` (LRU), keyed by the flow's 5-tuple in its original direction
/// ([`crate::lb::CtKey`], addresses as seen on the pod veths: after service translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyCtValue {
    /// `bpf_ktime_get_ns()` of the last packet (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
    /// The destination endpoint's ingress table the flow was allowed by.
    pub ingress_table: u32,
    /// The source endpoint's egress table the flow was allowed by.
    pub egress_table: u32,
    /// `PCT_F_*`.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyCtValue>() == 24);

/// Directions in events and counters.
pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

/// `PolicyVerdictEvent::verdict`.
pub const VERDICT_ALLOWED: u8 = 1;
pub const VERDICT_DENIED: u8 = 2;
/// Denied by policy but passed: the endpoint is in audit mode.
pub const VERDICT_AUDIT: u8 = 3;

/// `EventHeader::kind` of a [`PolicyVerdictEvent`].
pub const EVENT_POLICY_VERDICT: u16 = 1;

/// Verdict on a new flow (or on an established one re-checked after a policy change), sampled
/// to the `EVENTS` ring buffer under a per-CPU rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyVerdictEvent {
    pub header: crate::events::EventHeader,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `DIR_*`: which side of the endpoint decided.
    pub direction: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad: u8,
    /// ifindex of the endpoint's host-side veth.
    pub ifindex: u32,
    /// Identity of the remote end.
    pub peer_identity: u32,
    /// `PolicyRuleValue::rule_id` of the allowing rule; 0 when denied or when no policy
    /// selects the endpoint.
    pub rule_id: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyVerdictEvent>() == 56);

/// Per-CPU counters of `POLICY_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyStat {
    IngressAllowed = 0,
    IngressDenied = 1,
    IngressAudit = 2,
    EgressAllowed = 3,
    EgressDenied = 4,
    EgressAudit = 5,
    /// A flow checked against an older table was checked again.
    Rechecked = 6,
    /// The conntrack entry of an allowed flow could not be written (the flow is dropped).
    CtFull = 7,
}

impl PolicyStat {
    pub const COUNT: u32 = 8;
    pub const ALL: [PolicyStat; Self::COUNT as usize] = [
        PolicyStat::IngressAllowed,
        PolicyStat::IngressDenied,
        PolicyStat::IngressAudit,
        PolicyStat::EgressAllowed,
        PolicyStat::EgressDenied,
        PolicyStat::EgressAudit,
        PolicyStat::Rechecked,
        PolicyStat::CtFull,
    ];

    /// The counter of `verdict` in `direction` (`DIR_*`, `VERDICT_*`).
    pub const fn verdict(direction: u8, verdict: u8) -> PolicyStat {
        match (direction, verdict) {
            (DIR_INGRESS, VERDICT_ALLOWED) => PolicyStat::IngressAllowed,
            (DIR_INGRESS, VERDICT_DENIED) => PolicyStat::IngressDenied,
            (DIR_INGRESS, _) => PolicyStat::IngressAudit,
            (_, VERDICT_ALLOWED) => PolicyStat::EgressAllowed,
            (_, VERDICT_DENIED) => PolicyStat::EgressDenied,
            _ => PolicyStat::EgressAudit,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::PolicyEndpoint {}
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::PolicyRuleKey {}
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::PolicyRuleValue {}
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::PolicyCtValue {}
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::PolicyVerdictEvent {}
}
