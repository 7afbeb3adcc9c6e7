//! Backend selection shared by every load-balancing program: frontend lookup (exact address,
//! then NodePort on a node address), session affinity, Maglev or random slot choice, and the
//! conntrack entries the packet programs keep.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use berth_common::lb::{
    AffinityKey, AffinityValue, Backend, BackendKey, CT_F_CLOSING, CtKey, CtValue,
    FRONTEND_F_AFFINITY, FRONTEND_F_MAGLEV, Frontend, FrontendKey, LbStat, MAGLEV_MAX_SIZE,
};

use crate::maps::{
    LB_AFFINITY, LB_BACKENDS, LB_CONFIG, LB_CONNTRACK, LB_FRONTENDS, LB_MAGLEV, LB_NODE_ADDRS,
    count_lb,
};

/// Refresh a conntrack or affinity timestamp at most this often: writing it on every packet
/// would bounce the entry's cache line between CPUs for nothing.
const REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no preconditions; reads the monotonic clock.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn random() -> u32 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_prandom_u32() }
}

/// The frontend serving `addr:port/proto` in `scope`, with the key it was found under: the exact
/// address first, then the NodePort wildcard when `addr` is one of this node's addresses.
#[inline(always)]
pub fn lookup_frontend(
    addr: u32,
    port: u16,
    proto: u8,
    scope: u8,
) -> Option<(FrontendKey, Frontend)> {
    let mut key = FrontendKey {
        addr,
        port,
        proto,
        scope,
    };
    // SAFETY: the value is copied out at once; a concurrent update replaces the whole element.
    if let Some(fe) = unsafe { LB_FRONTENDS.get(&key) } {
        return Some((key, *fe));
    }
    // SAFETY: as above.
    if unsafe { LB_NODE_ADDRS.get(&addr) }.is_none() {
        return None;
    }
    key.addr = 0;
    // SAFETY: as above.
    unsafe { LB_FRONTENDS.get(&key) }.map(|fe| (key, *fe))
}

/// Who the client is, for session affinity.
#[derive(Clone, Copy)]
pub struct Client {
    pub kind: u32,
    pub id: u64,
}

/// Picks the backend for a new flow to `fe`. `hash` is the flow's hash (Maglev); the slot is
/// random when the set has no Maglev table. None when the set is empty or vanished twice.
#[inline(always)]
pub fn select_backend(
    key: &FrontendKey,
    fe: &Frontend,
    hash: u32,
    client: Client,
) -> Option<Backend> {
    let affinity = fe.flags & FRONTEND_F_AFFINITY != 0;
    let akey = AffinityKey {
        frontend_id: fe.frontend_id,
        client_kind: client.kind,
        client: client.id,
    };
    let now = now_ns();
    if affinity && let Some(entry) = LB_AFFINITY.get_ptr_mut(&akey) {
        // SAFETY: valid element pointer from a successful lookup; a racing writer stores the
        // same kind of value, and a torn timestamp only shortens or lengthens one affinity.
        let (backend, last) = unsafe { ((*entry).backend, (*entry).last_used_ns) };
        if now.wrapping_sub(last) < u64::from(fe.affinity_timeout_s) * 1_000_000_000 {
            if now.wrapping_sub(last) > REFRESH_NS {
                // SAFETY: as above.
                unsafe { (*entry).last_used_ns = now };
            }
            return Some(backend);
        }
    }
    let backend = match pick(fe, hash) {
        Some(b) => b,
        None => {
            // The agent switched this frontend to a new set and deleted the old one between our
            // two lookups: read the frontend again, once.
            count_lb(LbStat::SlotMiss);
            // SAFETY: copied out at once.
            let fresh = unsafe { LB_FRONTENDS.get(key) }.copied()?;
            pick(&fresh, hash)?
        }
    };
    if affinity {
        let _ = LB_AFFINITY.insert(
            &akey,
            &AffinityValue {
                backend,
                last_used_ns: now,
            },
            0,
        );
    }
    Some(backend)
}

#[inline(always)]
fn pick(fe: &Frontend, hash: u32) -> Option<Backend> {
    let count = u32::from(fe.count);
    if count == 0 {
        return None;
    }
    let mut slot = random() % count;
    if fe.flags & FRONTEND_F_MAGLEV != 0
        && let Some(size) = LB_CONFIG.get(0).map(|c| c.maglev_size)
        && size != 0
        && let Some(table) = LB_MAGLEV.get_ptr(&fe.set_id)
    {
        let idx = (hash % size) as usize;
        if idx < MAGLEV_MAX_SIZE {
            // SAFETY: valid element pointer; idx is bounds-checked against the array length.
            slot = u32::from(unsafe { (*table).slots[idx] });
        }
    }
    // SAFETY: copied out at once.
    unsafe {
        LB_BACKENDS.get(&BackendKey {
            set_id: fe.set_id,
            slot,
        })
    }
    .copied()
}

/// A 32-bit hash of a flow's 5-tuple (for Maglev: every packet of a flow lands on the same
/// backend, on every node, even without conntrack state).
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ u32::from(proto);
    for word in [saddr, daddr, (u32::from(sport) << 16) | u32::from(dport)] {
        h ^= word;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
    }
    h
}

/// Looks up a conntrack entry and refreshes it: its timestamp (at most once a second) and, when
/// the packet carries FIN or RST, the closing flag. Returns a copy.
#[inline(always)]
pub fn ct_lookup(key: &CtKey, tcp_closing: bool) -> Option<CtValue> {
    let entry = LB_CONNTRACK.get_ptr_mut(key)?;
    let now = now_ns();
    // SAFETY: valid element pointer from a successful lookup; racing updates of the timestamp
    // or flags by another CPU only race with identical intentions.
    unsafe {
        if now.wrapping_sub((*entry).last_seen_ns) > REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
        if tcp_closing && (*entry).flags & CT_F_CLOSING == 0 {
            (*entry).flags |= CT_F_CLOSING;
        }
        Some(*entry)
    }
}

/// Records both directions of a new translated flow. False when the table refused (counted).
#[inline(always)]
pub fn ct_create(fwd: &CtKey, fwd_val: &CtValue, rev: &CtKey, rev_val: &CtValue) -> bool {
    if LB_CONNTRACK.insert(fwd, fwd_val, 0).is_err()
        || LB_CONNTRACK.insert(rev, rev_val, 0).is_err()
    {
        count_lb(LbStat::CtFull);
        return false;
    }
    true
}

/// Incremental Internet checksum update (RFC 1624, eqn. 3) for XDP, which has no checksum
/// helpers: `old` words replaced by `new` words. Words are raw 16-bit loads from the packet, so
/// no byte swapping is needed (the one's-complement sum is byte-order independent).
#[inline(always)]
pub fn csum_replace(csum: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = u32::from(!csum);
    for w in old {
        sum += u32::from(!*w);
    }
    for w in new {
        sum += u32::from(*w);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The two raw 16-bit words of a raw 32-bit value as stored in the packet.
#[inline(always)]
pub fn words(v: u32) -> [u16; 2] {
    [v as u16, (v >> 16) as u16]
}
