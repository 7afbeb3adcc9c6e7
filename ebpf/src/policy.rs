//! NetworkPolicy enforcement shared by `tc_pod_ingress` (the pod's egress) and `tc_pod_egress`
//! (the pod's ingress). The decision path and the map layouts are described in
//! `berth_common::policy`.
//!
//! Everything here runs in one BPF subprogram ([`enforce`], never inlined): both tc programs
//! call it, several times in `tc_pod_ingress`, and inlining it would multiply the instruction
//! count the verifier walks.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use berth_common::{
    events::{EVENT_ABI_VERSION, POLICY_EVENTS_PER_SEC},
    lb::{CT_F_REPLY, CtKey, PROTO_SCTP, PROTO_TCP, PROTO_UDP},
    policy::{
        DIR_EGRESS, DIR_INGRESS, EP_F_AUDIT, EVENT_POLICY_VERDICT, IDENTITY_ANY, PCT_F_CLOSING,
        PCT_F_EGRESS_OK, PCT_F_INGRESS_OK, PCT_F_SEEN_REPLY, PROTO_ANY, PolicyCtValue,
        PolicyEndpoint, PolicyRuleKey, PolicyStat, PolicyVerdictEvent, RULE_FIXED_BITS, TABLE_NONE,
        VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED,
    },
};

use crate::{
    maps::{
        EVENT_RATE, EVENTS, EVENTS_LOST, LB_CONNTRACK, POLICY_CT, POLICY_ENDPTS, POLICY_IPCACHE,
        POLICY_RULES, count_policy,
    },
    net::{ETH_HDR_LEN, ETH_P_IP, IPV4_FRAG_OFFSET_MASK, IPV4_MIN_HDR_LEN},
};

/// Refresh a conntrack timestamp at most this often (as the load balancer does).
const REFRESH_NS: u64 = 1_000_000_000;
const TCP_FIN_RST: u8 = 0x01 | 0x04;

/// What policy and the service translation need of a packet: its 5-tuple (ports 0 for
/// protocols without ports), where its L4 header starts, and whether it closes a TCP
/// connection.
#[derive(Clone, Copy)]
pub struct Tuple {
    pub key: CtKey,
    pub l4: usize,
    pub closing: bool,
}

/// Reads the tuple of an IPv4 packet; None for anything else (ARP, IPv6: not policed) and for
/// non-first fragments, which carry no ports: without their first fragment (which is checked)
/// they cannot be reassembled, so letting them pass grants nothing.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Tuple> {
    let ethertype: u16 = ctx.load(12).ok()?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let ip: [u8; IPV4_MIN_HDR_LEN] = ctx.load(ETH_HDR_LEN).ok()?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN {
        return None;
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAG_OFFSET_MASK != 0 {
        return None;
    }
    let proto = ip[9];
    let l4 = ETH_HDR_LEN + ihl;
    let (ports, closing) = if proto == PROTO_TCP || proto == PROTO_UDP || proto == PROTO_SCTP {
        let ports: [u16; 2] = ctx.load(l4).ok()?;
        let closing = proto == PROTO_TCP && ctx.load::<u8>(l4 + 13).ok()? & TCP_FIN_RST != 0;
        (ports, closing)
    } else {
        ([0, 0], false)
    };
    Some(Tuple {
        key: CtKey {
            saddr: u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
            daddr: u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
            sport: ports[0],
            dport: ports[1],
            proto,
            _pad: [0; 3],
        },
        l4,
        closing,
    })
}

/// The ifindex of the device the program runs on: the endpoint's host-side veth.
#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the skb pointer is the program's context; ifindex is readable.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The policy entry of the endpoint whose host veth is `ifindex`; None for a veth berth does
/// not manage (its packets pass).
#[inline(always)]
fn endpoint(ifindex: u32) -> Option<PolicyEndpoint> {
    // SAFETY: copied out at once; the agent replaces whole elements.
    unsafe { POLICY_ENDPTS.get(&ifindex) }.copied()
}

/// Decides a packet at endpoint `ep` (host veth `ifindex`) in `direction` (`DIR_*`): true lets
/// it pass.
#[inline(never)]
fn enforce(ifindex: u32, direction: u8, t: &Tuple, ep: &PolicyEndpoint) -> bool {
    let ep = *ep;
    let table = if direction == DIR_INGRESS {
        ep.ingress_table
    } else {
        ep.egress_table
    };
    let ok_flag = if direction == DIR_INGRESS {
        PCT_F_INGRESS_OK
    } else {
        PCT_F_EGRESS_OK
    };
    let now = now_ns();
    let k = t.key;

    // 1. A packet of a flow in its original direction.
    if let Some(ct) = POLICY_CT.get_ptr_mut(&k) {
        // SAFETY: a valid element pointer from a successful lookup; racing writers only set
        // flags and timestamps, and a lost update costs one extra check.
        let ct = unsafe { &mut *ct };
        let stored = if direction == DIR_INGRESS {
            ct.ingress_table
        } else {
            ct.egress_table
        };
        if ct.flags & ok_flag != 0 && stored == table {
            touch(ct, now, t.closing, 0);
            return true;
        }
        // This side was not checked yet (the other endpoint made the entry), or was checked
        // against an older table.
        let recheck = ct.flags & ok_flag != 0;
        let peer = if direction == DIR_INGRESS {
            k.saddr
        } else {
            k.daddr
        };
        let passes = decide(ifindex, ep.flags, direction, table, peer, &k, recheck);
        if passes {
            if direction == DIR_INGRESS {
                ct.ingress_table = table;
            } else {
                ct.egress_table = table;
            }
            ct.flags |= ok_flag;
            touch(ct, now, t.closing, 0);
        } else {
            ct.flags &= !ok_flag;
        }
        return passes;
    }

    // 2. A reply: the flow's original direction is the reverse tuple. At this endpoint the
    //    original was decided by the opposite side (a pod replying was the destination).
    let rk = CtKey {
        saddr: k.daddr,
        daddr: k.saddr,
        sport: k.dport,
        dport: k.sport,
        proto: k.proto,
        _pad: [0; 3],
    };
    if let Some(ct) = POLICY_CT.get_ptr_mut(&rk) {
        // SAFETY: as above.
        let ct = unsafe { &mut *ct };
        let (orig_dir, orig_table, orig_flag, stored) = if direction == DIR_INGRESS {
            (
                DIR_EGRESS,
                ep.egress_table,
                PCT_F_EGRESS_OK,
                ct.egress_table,
            )
        } else {
            (
                DIR_INGRESS,
                ep.ingress_table,
                PCT_F_INGRESS_OK,
                ct.ingress_table,
            )
        };
        if ct.flags & orig_flag != 0 && stored == orig_table {
            touch(ct, now, t.closing, PCT_F_SEEN_REPLY);
            return true;
        }
        // The original direction is re-decided against the current table: the peer is the
        // reply's destination when this pod is the original destination, and vice versa.
        let peer = if direction == DIR_INGRESS {
            k.saddr
        } else {
            k.daddr
        };
        let passes = decide(
            ifindex,
            ep.flags,
            orig_dir,
            orig_table,
            peer,
            &rk,
            ct.flags & orig_flag != 0,
        );
        if passes {
            if orig_dir == DIR_INGRESS {
                ct.ingress_table = orig_table;
            } else {
                ct.egress_table = orig_table;
            }
            ct.flags |= orig_flag;
            touch(ct, now, t.closing, PCT_F_SEEN_REPLY);
        } else {
            ct.flags &= !orig_flag;
        }
        return passes;
    }

    // 3. A new flow.
    let peer = if direction == DIR_INGRESS {
        k.saddr
    } else {
        k.daddr
    };
    if !decide(ifindex, ep.flags, direction, table, peer, &k, false) {
        return false;
    }
    let value = PolicyCtValue {
        last_seen_ns: now,
        ingress_table: if direction == DIR_INGRESS { table } else { 0 },
        egress_table: if direction == DIR_EGRESS { table } else { 0 },
        flags: ok_flag | if t.closing { PCT_F_CLOSING } else { 0 },
        _pad: 0,
    };
    if POLICY_CT.insert(&k, &value, 0).is_err() {
        count_policy(PolicyStat::CtFull);
        return false;
    }
    true
}

#[inline(always)]
fn touch(ct: &mut PolicyCtValue, now: u64, closing: bool, extra: u32) {
    let flags = ct.flags | extra | if closing { PCT_F_CLOSING } else { 0 };
    if flags != ct.flags || now.wrapping_sub(ct.last_seen_ns) > REFRESH_NS {
        ct.flags = flags;
        ct.last_seen_ns = now;
    }
}

/// The policy decision for one direction of a flow (`k` in its original direction, `peer` the
/// remote address): counts it, reports it, and returns whether the packet passes (audit mode
/// passes denials).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decide(
    ifindex: u32,
    ep_flags: u32,
    direction: u8,
    table: u32,
    peer: u32,
    k: &CtKey,
    recheck: bool,
) -> bool {
    if recheck {
        count_policy(PolicyStat::Rechecked);
    }
    if table == TABLE_NONE {
        count_policy(PolicyStat::verdict(direction, VERDICT_ALLOWED));
        return true;
    }
    let peer_identity = POLICY_IPCACHE
        .get(Key::new(32, peer))
        .copied()
        .unwrap_or(IDENTITY_ANY);
    let rule_id = lookup_rule(table, peer_identity, k.proto, k.dport);
    let verdict = match rule_id {
        Some(_) => VERDICT_ALLOWED,
        None if ep_flags & EP_F_AUDIT != 0 => VERDICT_AUDIT,
        None => VERDICT_DENIED,
    };
    count_policy(PolicyStat::verdict(direction, verdict));
    report(
        k,
        direction,
        verdict,
        ifindex,
        peer_identity,
        rule_id.unwrap_or(0),
    );
    verdict != VERDICT_DENIED
}

/// Searches `table` for (peer, proto, port): the exact identity before any peer, the protocol
/// before any protocol; the port by longest prefix. The id of the allowing rule, if any.
#[inline(always)]
fn lookup_rule(table: u32, peer: u32, proto: u8, port: u16) -> Option<u32> {
    let peers = [peer, IDENTITY_ANY];
    let protos = [proto, PROTO_ANY];
    for p in peers {
        for pr in protos {
            let key = Key::new(
                RULE_FIXED_BITS + 16,
                PolicyRuleKey {
                    table,
                    peer: p,
                    proto: pr,
                    _pad: 0,
                    port: if pr == PROTO_ANY { 0 } else { port },
                },
            );
            if let Some(v) = POLICY_RULES.get(&key) {
                return Some(v.rule_id);
            }
        }
    }
    None
}

/// Puts a verdict on the event ring, at most `POLICY_EVENTS_PER_SEC` per CPU (suppressed ones
/// are counted into the next record); a full ring is counted in `EVENTS_LOST`.
#[inline(always)]
fn report(k: &CtKey, direction: u8, verdict: u8, ifindex: u32, peer_identity: u32, rule_id: u32) {
    let Some(rate) = EVENT_RATE.get_ptr_mut(u32::from(EVENT_POLICY_VERDICT)) else {
        return;
    };
    // SAFETY: a valid per-CPU slot only this CPU writes.
    let rate = unsafe { &mut *rate };
    let now = now_ns();
    let elapsed = now.wrapping_sub(rate.last_ns);
    if elapsed >= 1_000_000_000 {
        rate.tokens = POLICY_EVENTS_PER_SEC;
        rate.last_ns = now;
    }
    if rate.tokens == 0 {
        rate.suppressed = rate.suppressed.wrapping_add(1);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<PolicyVerdictEvent>(0) else {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: a valid per-CPU slot only this CPU writes.
            unsafe { *lost += 1 };
        }
        return;
    };
    rate.tokens -= 1;
    let mut ev = PolicyVerdictEvent::default();
    ev.header.kind = EVENT_POLICY_VERDICT;
    ev.header.version = EVENT_ABI_VERSION;
    // SAFETY: no preconditions.
    ev.header.cpu = unsafe { bpf_get_smp_processor_id() };
    ev.header.ts_ns = now;
    ev.header.suppressed = rate.suppressed;
    rate.suppressed = 0;
    ev.saddr = k.saddr;
    ev.daddr = k.daddr;
    ev.sport = k.sport;
    ev.dport = k.dport;
    ev.proto = k.proto;
    ev.direction = direction;
    ev.verdict = verdict;
    ev.ifindex = ifindex;
    ev.peer_identity = peer_identity;
    ev.rule_id = rule_id;
    entry.write(ev);
    entry.submit(0);
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: no preconditions; reads the monotonic clock.
    unsafe { bpf_ktime_get_ns() }
}

/// `tc_pod_egress`'s body: the pod's ingress policy on every packet delivered to it.
#[inline(always)]
pub fn tc_egress(ctx: &TcContext) -> bool {
    let Some(mut t) = parse(ctx) else {
        return true;
    };
    let ifindex = ifindex(ctx);
    let Some(ep) = endpoint(ifindex) else {
        return true;
    };
    // A reply to a flow `tc_pod_ingress` translated (this pod → a service frontend) arrives
    // from the frontend; policy decided the flow on the backend's address, so it is looked up
    // as the backend's reply.
    let orig = CtKey {
        saddr: t.key.daddr,
        daddr: t.key.saddr,
        sport: t.key.dport,
        dport: t.key.sport,
        proto: t.key.proto,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    if let Some(ct) = unsafe { LB_CONNTRACK.get(&orig) }
        && ct.flags & CT_F_REPLY == 0
    {
        t.key.saddr = ct.addr;
        t.key.sport = ct.port;
    }
    enforce(ifindex, DIR_INGRESS, &t, &ep)
}

/// The pod's egress policy on `t` (a packet the pod sent, as the service translation leaves
/// it: after DNAT, before reverse NAT).
#[inline(always)]
pub fn egress_ok(ctx: &TcContext, t: &Tuple) -> bool {
    let ifindex = ifindex(ctx);
    match endpoint(ifindex) {
        Some(ep) => enforce(ifindex, DIR_EGRESS, t, &ep),
        None => true,
    }
}
