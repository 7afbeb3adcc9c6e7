//! `tc_pod_ingress`: tc ingress on a pod's host-side veth, i.e. every packet the pod sends.
//!
//! - Replies of translated flows (a backend answering through NodePort on the uplink, or a pod
//!   answering a client that reached it through `tc` DNAT) get their source restored to the
//!   frontend: reverse NAT from the conntrack entry the translating program recorded.
//! - Packets to a service frontend that did not pass a socket hook (a pod outside the cgroup
//!   the socket programs are attached to, raw sockets) are DNATed here with a conntrack entry.
//!   A pod reaching itself through its service (hairpin) is also source-NATed to the node's
//!   bridge address, or its own reply would never leave its namespace to be reverse-NATed.
//! - Every packet is then subject to the pod's egress NetworkPolicy (`crate::policy`), on its
//!   tuple as the pod's peer sees it: after DNAT, before reverse NAT.
//!
//! `tc_pod_egress` (tc egress on the same veth: every packet delivered to the pod) enforces the
//! pod's ingress NetworkPolicy.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use berth_common::lb::{
    AFFINITY_CLIENT_IP, CT_F_NODE, CT_F_REPLY, CT_F_SNAT, CtKey, CtValue, LbStat, PROTO_TCP,
    PROTO_UDP, SCOPE_INTERNAL,
};

use crate::{
    lb::{Client, ct_create, ct_lookup, flow_hash, lookup_frontend, now_ns, select_backend},
    maps::{LB_CONFIG, count_lb},
    net::ETH_HDR_LEN,
    policy::{self, Tuple},
};

const IP_CSUM_OFF: usize = ETH_HDR_LEN + 10;
const IP_SRC_OFF: usize = ETH_HDR_LEN + 12;
const IP_DST_OFF: usize = ETH_HDR_LEN + 16;

#[classifier]
pub fn tc_pod_ingress(ctx: TcContext) -> i32 {
    // Not IPv4, or a non-first fragment: neither translated nor policed (see `policy::parse`).
    let Some(flow) = policy::parse(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if flow.key.proto == PROTO_TCP || flow.key.proto == PROTO_UDP {
        return handle(&ctx, &flow).unwrap_or(TC_ACT_OK as i32);
    }
    // No service translation for other protocols: policy only.
    if policy::egress_ok(&ctx, &flow) {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

#[classifier]
pub fn tc_pod_egress(ctx: TcContext) -> i32 {
    if policy::tc_egress(&ctx) {
        TC_ACT_OK as i32
    } else {
        TC_ACT_SHOT as i32
    }
}

/// The pod's egress policy for `flow` with its destination replaced by `daddr:dport` (the
/// backend a service translation chose, or the original destination).
#[inline(always)]
fn egress_ok(ctx: &TcContext, flow: &Tuple, daddr: u32, dport: u16) -> bool {
    let mut to = *flow;
    to.key.daddr = daddr;
    to.key.dport = dport;
    policy::egress_ok(ctx, &to)
}

#[inline(always)]
fn handle(ctx: &TcContext, flow: &Tuple) -> Option<i32> {
    let k = flow.key;
    if let Some(ct) = ct_lookup(&k, flow.closing) {
        let (pdaddr, pdport) = if ct.flags & CT_F_REPLY != 0 {
            (k.daddr, k.dport)
        } else {
            (ct.addr, ct.port)
        };
        if !egress_ok(ctx, flow, pdaddr, pdport) {
            return Some(TC_ACT_SHOT as i32);
        }
        if ct.flags & CT_F_REPLY != 0 {
            // Backend → client: the source becomes the frontend again (and with hairpin SNAT,
            // the destination becomes the client again).
            rewrite(ctx, flow, IP_SRC_OFF, k.saddr, ct.addr, 0, k.sport, ct.port)?;
            if ct.flags & CT_F_SNAT != 0 {
                rewrite(
                    ctx,
                    flow,
                    IP_DST_OFF,
                    k.daddr,
                    ct.snat_addr,
                    2,
                    k.dport,
                    ct.snat_port,
                )?;
            }
            count_lb(LbStat::TcRevnat);
            if ct.flags & CT_F_NODE != 0 {
                return Some(route_out(ctx, ct.addr, k.daddr));
            }
        } else {
            rewrite(ctx, flow, IP_DST_OFF, k.daddr, ct.addr, 2, k.dport, ct.port)?;
            if ct.flags & CT_F_SNAT != 0 {
                rewrite(
                    ctx,
                    flow,
                    IP_SRC_OFF,
                    k.saddr,
                    ct.snat_addr,
                    0,
                    k.sport,
                    ct.snat_port,
                )?;
            }
            count_lb(LbStat::TcForwarded);
        }
        return Some(TC_ACT_OK as i32);
    }

    let Some((fkey, fe)) = lookup_frontend(k.daddr, k.dport, k.proto, SCOPE_INTERNAL) else {
        return Some(if egress_ok(ctx, flow, k.daddr, k.dport) {
            TC_ACT_OK as i32
        } else {
            TC_ACT_SHOT as i32
        });
    };
    let client = Client {
        kind: AFFINITY_CLIENT_IP,
        id: u64::from(k.saddr),
    };
    let hash = flow_hash(k.saddr, k.daddr, k.sport, k.dport, k.proto);
    let Some(backend) = select_backend(&fkey, &fe, hash, client) else {
        count_lb(LbStat::TcNoBackend);
        return Some(TC_ACT_SHOT as i32);
    };

    if !egress_ok(ctx, flow, backend.addr, backend.port) {
        return Some(TC_ACT_SHOT as i32);
    }
    // Hairpin: the pod is its own backend.
    let hairpin = LB_CONFIG.get(0).map(|c| c.hairpin_addr).unwrap_or(0);
    let snat = backend.addr == k.saddr && hairpin != 0;
    let new_src = if snat { hairpin } else { k.saddr };
    let now = now_ns();
    let fwd = CtValue {
        addr: backend.addr,
        port: backend.port,
        snat_addr: new_src,
        snat_port: k.sport,
        flags: if snat { CT_F_SNAT } else { 0 },
        _pad: [0; 3],
        last_seen_ns: now,
    };
    let rev_key = CtKey {
        saddr: backend.addr,
        daddr: new_src,
        sport: backend.port,
        dport: k.sport,
        proto: k.proto,
        _pad: [0; 3],
    };
    let rev = CtValue {
        addr: k.daddr,
        port: k.dport,
        snat_addr: k.saddr,
        snat_port: k.sport,
        flags: CT_F_REPLY | if snat { CT_F_SNAT } else { 0 },
        _pad: [0; 3],
        last_seen_ns: now,
    };
    if !ct_create(&k, &fwd, &rev_key, &rev) {
        return Some(TC_ACT_SHOT as i32);
    }
    rewrite(
        ctx,
        flow,
        IP_DST_OFF,
        k.daddr,
        backend.addr,
        2,
        k.dport,
        backend.port,
    )?;
    if snat {
        rewrite(ctx, flow, IP_SRC_OFF, k.saddr, new_src, 0, k.sport, k.sport)?;
    }
    count_lb(LbStat::TcForwarded);
    Some(TC_ACT_OK as i32)
}

/// Replaces one address (at `addr_off`) and its port (at `l4 + port_off`), fixing the IPv4
/// header checksum and the L4 checksum (which covers the address through the pseudo-header).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    flow: &Tuple,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Option<()> {
    let csum_off = flow.l4 + if flow.key.proto == PROTO_TCP { 16 } else { 6 };
    // A UDP checksum of 0 means "none" and must stay 0; the kernel skips it with this flag.
    let mangled = if flow.key.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_addr != new_addr {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_addr),
            u64::from(new_addr),
            u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
        )
        .ok()?;
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4)
            .ok()?;
        ctx.store(addr_off, &new_addr, 0).ok()?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_port),
            u64::from(new_port),
            mangled | 2,
        )
        .ok()?;
        ctx.store(flow.l4 + port_off, &new_port, 0).ok()?;
    }
    Some(())
}

/// `BPF_FIB_LKUP_RET_SUCCESS` / `BPF_FIB_LKUP_RET_NO_NEIGH`: a route exists (the neighbour may
/// still need resolving, which `bpf_redirect_neigh` does).
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
const AF_INET: u8 = 2;

/// Sends a reverse-NATed reply whose source is a node address straight out of the interface the
/// FIB routes its destination through. Left to the stack, a packet arriving on a pod's veth with
/// a local source address is dropped as a martian. Falls back to the stack when there is no
/// route (it then drops, as it would have anyway).
#[inline(always)]
fn route_out(ctx: &TcContext, src: u32, dst: u32) -> i32 {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    // SAFETY: the skb pointer is the program's context; ifindex is readable.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: valid context and a params struct of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != FIB_SUCCESS && rc != FIB_NO_NEIGH {
        return TC_ACT_OK as i32;
    }
    // SAFETY: no neighbour parameters: the kernel resolves the next hop itself.
    unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}
