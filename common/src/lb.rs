//! Service load balancing: the maps that turn a service frontend (VIP, port, protocol) into a
//! backend, for the socket hooks (`sock_*`), the pod veth programs (`tc_pod_*`) and the uplink
//! XDP program.
//!
//! Lookup path of a new flow:
//! 1. `LB_FRONTENDS[FrontendKey]` → [`Frontend`]: which backend set, how many slots, affinity.
//!    A NodePort frontend has `addr == 0` and matches any address in `LB_NODE_ADDRS`.
//! 2. `LB_BACKENDS[BackendKey { set_id, slot }]` → [`Backend`], with `slot` chosen at random, by
//!    session affinity, or (on the uplink) from the set's Maglev table `LB_MAGLEV[set_id]`.
//!
//! Atomic updates: a changed backend list is written under a NEW `set_id`, then the frontend is
//! switched to it in one map update, then the old set's slots are deleted. A packet therefore
//! sees either the old or the new list, never a half-written one; a program that read the old
//! `set_id` just before its slots were deleted misses once and re-reads the frontend.

/// IP protocol numbers as they appear in the IPv4 header and in `FrontendKey::proto`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// `FrontendKey::scope`: traffic from pods and from the host (socket hooks, pod veths).
pub const SCOPE_INTERNAL: u8 = 0;
/// `FrontendKey::scope`: traffic arriving on the node's uplink (XDP).
pub const SCOPE_EXTERNAL: u8 = 1;

/// Key of `LB_FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// Frontend IPv4 address, network byte order; 0 = any node address (NodePort, published port).
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// `PROTO_*`.
    pub proto: u8,
    /// `SCOPE_*`.
    pub scope: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);

/// `Frontend::flags`: session affinity by client (netns cookie at the socket hooks, client IP on
/// the wire) for `affinity_timeout_s` seconds.
pub const FRONTEND_F_AFFINITY: u16 = 1 << 0;
/// `Frontend::flags`: `LB_MAGLEV[set_id]` holds this set's Maglev table.
pub const FRONTEND_F_MAGLEV: u16 = 1 << 1;
/// `Frontend::flags`: written by the daemonless runtime for a published port (`berth run -p`),
/// not by the agent's reconcile loop, which leaves such entries alone.
pub const FRONTEND_F_PUBLISHED: u16 = 1 << 2;

/// Value of `LB_FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// The backend set currently serving this frontend (see the module docs).
    pub set_id: u32,
    /// Number of slots in the set; 0 = no usable backend: reject (never black-hole).
    pub count: u16,
    /// `FRONTEND_F_*`.
    pub flags: u16,
    /// Stable id of this frontend across backend changes (affinity key, counters).
    pub frontend_id: u32,
    /// Session affinity timeout in seconds (with `FRONTEND_F_AFFINITY`).
    pub affinity_timeout_s: u32,
}
const _: () = assert!(core::mem::size_of::<Frontend>() == 16);

/// Key of `LB_BACKENDS`: slot `slot` (0..count) of backend set `set_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub set_id: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<BackendKey>() == 8);

/// Value of `LB_BACKENDS`, also stored in affinity and conntrack entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Backend IPv4 address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    /// `PROTO_*` (equal to the frontend's).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// Largest Maglev table (a prime). The table size in use, `LbConfig::maglev_size`, is a prime up
/// to this; the map value always has room for the largest.
pub const MAGLEV_MAX_SIZE: usize = 16_381;

/// Value of `LB_MAGLEV`, keyed by `set_id` (u32): entry `i` is the slot (in that set) of the
/// backend that owns hash bucket `i`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MaglevTable {
    pub slots: [u16; MAGLEV_MAX_SIZE],
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 2 * MAGLEV_MAX_SIZE + 2);

/// Key of `LB_AFFINITY` (LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `Frontend::frontend_id`.
    pub frontend_id: u32,
    /// `AFFINITY_CLIENT_*`: what `client` holds.
    pub client_kind: u32,
    /// The client: a network namespace cookie, or an IPv4 address (network byte order) in the
    /// low 32 bits.
    pub client: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);

/// `AffinityKey::client_kind`: a socket hook identifies the client by its netns cookie (its
/// source address is not chosen yet at connect time; each pod has its own netns).
pub const AFFINITY_CLIENT_NETNS: u32 = 0;
/// `AffinityKey::client_kind`: a packet program identifies the client by its source address.
pub const AFFINITY_CLIENT_IP: u32 = 1;

/// Value of `LB_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: Backend,
    /// `bpf_ktime_get_ns()` of the last use.
    pub last_used_ns: u64,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Key of `LB_CONNTRACK` (LRU): a flow as seen on the wire, both directions of a translated flow
/// have an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

/// `CtValue::flags`: this entry matches replies (backend → client); apply reverse NAT.
pub const CT_F_REPLY: u8 = 1 << 0;
/// `CtValue::flags`: a FIN or RST was seen; the short closing timeout applies.
pub const CT_F_CLOSING: u8 = 1 << 1;
/// `CtValue::flags`: the original direction was also source-NATed (hairpin: the backend is the
/// client itself), so replies get their destination restored too.
pub const CT_F_SNAT: u8 = 1 << 2;
/// `CtValue::flags`: a reply has been seen (the flow is established).
pub const CT_F_SEEN_REPLY: u8 = 1 << 3;

/// `CtValue::flags` of a reply entry made at the uplink: the restored source is one of this
/// node's own addresses, which the kernel would drop as a martian source on a pod's veth, so
/// the reply is routed out by the program itself (FIB lookup + redirect).
pub const CT_F_NODE: u8 = 1 << 4;

/// Value of `LB_CONNTRACK`.
///
/// Original direction (client → frontend): `addr:port` is the backend to send to (and with
/// `CT_F_SNAT`, `snat_addr:snat_port` the source to use). Reply direction (backend → client):
/// `addr:port` is the frontend to restore as the source (and with `CT_F_SNAT`,
/// `snat_addr:snat_port` the client to restore as the destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub addr: u32,
    pub snat_addr: u32,
    pub port: u16,
    pub snat_port: u16,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// `bpf_ktime_get_ns()` of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 24);

/// Key of `LB_SOCK_REVNAT` (LRU): a socket (by cookie) and the backend it was sent to, so
/// `recvmsg`/`getpeername` can show the service address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 16);

/// Value of `LB_SOCK_REVNAT`: the frontend address and port (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 8);

/// The single entry of `LB_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Maglev table size in use (a prime ≤ `MAGLEV_MAX_SIZE`); 0 until the agent writes it.
    pub maglev_size: u32,
    /// Source address for hairpin flows on pod veths (the bridge's address), network order.
    pub hairpin_addr: u32,
}
const _: () = assert!(core::mem::size_of::<LbConfig>() == 8);

/// Index into the per-CPU `LB_STATS` array. Labels: `(path, verdict, reason)`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbStat {
    SockConnectForwarded = 0,
    SockConnectRejected = 1,
    SockSendmsgForwarded = 2,
    SockSendmsgRejected = 3,
    SockRevnat = 4,
    TcForwarded = 5,
    TcRevnat = 6,
    TcNoBackend = 7,
    XdpForwarded = 8,
    XdpNoBackend = 9,
    CtFull = 10,
    SlotMiss = 11,
}

impl LbStat {
    pub const COUNT: u32 = 12;
    pub const ALL: [LbStat; Self::COUNT as usize] = [
        LbStat::SockConnectForwarded,
        LbStat::SockConnectRejected,
        LbStat::SockSendmsgForwarded,
        LbStat::SockSendmsgRejected,
        LbStat::SockRevnat,
        LbStat::TcForwarded,
        LbStat::TcRevnat,
        LbStat::TcNoBackend,
        LbStat::XdpForwarded,
        LbStat::XdpNoBackend,
        LbStat::CtFull,
        LbStat::SlotMiss,
    ];

    /// `(path, verdict, reason)` labels of `berth_lb_packets_total`.
    pub const fn labels(self) -> (&'static str, &'static str, &'static str) {
        match self {
            LbStat::SockConnectForwarded => ("sock_connect", "forwarded", "backend"),
            LbStat::SockConnectRejected => ("sock_connect", "rejected", "no_backend"),
            LbStat::SockSendmsgForwarded => ("sock_sendmsg", "forwarded", "backend"),
            LbStat::SockSendmsgRejected => ("sock_sendmsg", "rejected", "no_backend"),
            LbStat::SockRevnat => ("sock_recv", "forwarded", "reverse_nat"),
            LbStat::TcForwarded => ("tc_pod", "forwarded", "backend"),
            LbStat::TcRevnat => ("tc_pod", "forwarded", "reverse_nat"),
            LbStat::TcNoBackend => ("tc_pod", "dropped", "no_backend"),
            LbStat::XdpForwarded => ("xdp", "forwarded", "backend"),
            LbStat::XdpNoBackend => ("xdp", "rejected", "no_backend"),
            LbStat::CtFull => ("conntrack", "dropped", "conntrack_full"),
            LbStat::SlotMiss => ("lookup", "retried", "backend_set_changed"),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    //! Each type below is `repr(C)`, `Copy`, made only of integers and integer arrays, with
    //! explicit padding fields so no byte is uninitialized (sizes asserted beside each
    //! definition): every bit pattern is a valid value, which is what `aya::Pod` requires.
    use super::*;
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for FrontendKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for Frontend {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for BackendKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for MaglevTable {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for AffinityValue {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for CtKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for CtValue {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for SockRevKey {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for SockRevValue {}
    // SAFETY: see the module comment.
    unsafe impl aya::Pod for LbConfig {}
}
