//! `xdp_lb_ingress`: XDP on the node's uplink.
//!
//! Parses each frame (Ethernet, IPv4, the L4 protocol) and counts what it saw in `XDP_STATS`.
//! TCP and UDP packets to an external frontend (NodePort on a node address, an ExternalIP, a
//! LoadBalancer ingress IP) are DNATed to a backend chosen by the frontend's Maglev table, with
//! conntrack entries so the rest of the flow follows the first packet and the pod veth program
//! can reverse-NAT the replies; the client's address is preserved. Everything else passes.
//!
//! A frame that lies about its own headers is counted as malformed, logged (rate-limited) and
//! passed: the kernel stack drops it with its own accounting, and berth never drops traffic it
//! does not own. A frontend with no usable backend passes too: nothing listens on it, so the
//! stack itself answers with a TCP RST or an ICMP port unreachable (reject, not black hole).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use berth_common::{
    lb::{AFFINITY_CLIENT_IP, CT_F_NODE, CT_F_REPLY, CtKey, CtValue, LbStat, SCOPE_EXTERNAL},
    xdp::XdpStat,
};

use crate::{
    lb::{
        Client, csum_replace, ct_create, ct_lookup, flow_hash, lookup_frontend, now_ns,
        select_backend, words,
    },
    maps::{count, count_lb},
    net::{
        ETH_HDR_LEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK,
        IPV4_MIN_HDR_LEN, ptr_at, read_at,
    },
    ratelimit::allow_log,
};

const TCP_FIN_RST: u8 = 0x01 | 0x04;

#[xdp]
pub fn xdp_lb_ingress(ctx: XdpContext) -> u32 {
    let (stat, l4) = classify(&ctx);
    count(stat);
    if matches!(stat, XdpStat::PassIpv4Tcp | XdpStat::PassIpv4Udp) {
        external(&ctx, l4);
    }
    if stat == XdpStat::Malformed && allow_log() {
        warn!(
            &ctx,
            "malformed frame on ifindex {}: {} bytes",
            ctx.ingress_ifindex() as u32,
            (ctx.data_end() - ctx.data()) as u32
        );
    }
    xdp_action::XDP_PASS
}

/// Decides which counter a frame belongs to; also returns the L4 header's offset.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (XdpStat, usize) {
    let stat = classify_at(ctx);
    (stat.0, stat.1)
}

#[inline(always)]
fn classify_at(ctx: &XdpContext) -> (XdpStat, usize) {
    let (data, end) = (ctx.data(), ctx.data_end());

    let Some(ethertype) = read_at::<u16>(data, end, 12) else {
        return (XdpStat::Malformed, 0);
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return (XdpStat::PassNonIpv4, 0);
    }

    // The fixed 20-byte IPv4 header in one bounds check; fields by their RFC 791 offsets.
    let Some(ip) = read_at::<[u8; IPV4_MIN_HDR_LEN]>(data, end, ETH_HDR_LEN) else {
        return (XdpStat::Malformed, 0);
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN || tot_len < ihl {
        return (XdpStat::Malformed, 0);
    }
    // Options, when present, must be in the frame too.
    if ihl > IPV4_MIN_HDR_LEN && ptr_at::<u8>(data, end, ETH_HDR_LEN + ihl - 1).is_none() {
        return (XdpStat::Malformed, 0);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAG_OFFSET_MASK != 0 {
        return (XdpStat::PassIpv4Fragment, 0);
    }
    let proto = ip[9];

    // TCP and UDP frames must carry the ports the load balancer will key on.
    let l4 = ETH_HDR_LEN + ihl;
    let stat = match proto {
        IPPROTO_TCP => match ptr_at::<[u8; 20]>(data, end, l4) {
            Some(_) => XdpStat::PassIpv4Tcp,
            None => XdpStat::Malformed,
        },
        IPPROTO_UDP => match ptr_at::<[u8; 8]>(data, end, l4) {
            Some(_) => XdpStat::PassIpv4Udp,
            None => XdpStat::Malformed,
        },
        IPPROTO_ICMP => XdpStat::PassIpv4Icmp,
        _ => XdpStat::PassIpv4Other,
    };
    (stat, l4)
}

/// NodePort / ExternalIP / LoadBalancer translation of one TCP or UDP packet whose L4 header
/// starts at `l4` (its first 8 bytes, 20 for TCP, were bounds-checked by `classify`).
#[inline(always)]
fn external(ctx: &XdpContext, l4: usize) -> Option<()> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let ip =
        ptr_at::<[u8; IPV4_MIN_HDR_LEN]>(data, end, ETH_HDR_LEN)? as *mut [u8; IPV4_MIN_HDR_LEN];
    // SAFETY: bounds-checked by ptr_at; packet memory is writable in XDP.
    let hdr = unsafe { core::ptr::read_unaligned(ip) };
    let proto = hdr[9];
    let saddr = u32::from_ne_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let daddr = u32::from_ne_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    let ports = ptr_at::<[u16; 2]>(data, end, l4)? as *mut [u16; 2];
    // SAFETY: bounds-checked by ptr_at.
    let [sport, dport] = unsafe { core::ptr::read_unaligned(ports) };
    let csum_at = if proto == IPPROTO_TCP {
        l4 + 16
    } else {
        l4 + 6
    };
    let l4_csum = ptr_at::<u16>(data, end, csum_at)? as *mut u16;
    let closing = proto == IPPROTO_TCP && read_at::<u8>(data, end, l4 + 13)? & TCP_FIN_RST != 0;

    let key = CtKey {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    };
    let (to_addr, to_port) = match ct_lookup(&key, closing) {
        Some(ct) if ct.flags & CT_F_REPLY == 0 => (ct.addr, ct.port),
        _ => {
            let (fkey, fe) = lookup_frontend(daddr, dport, proto, SCOPE_EXTERNAL)?;
            let client = Client {
                kind: AFFINITY_CLIENT_IP,
                id: u64::from(saddr),
            };
            let hash = flow_hash(saddr, daddr, sport, dport, proto);
            let Some(backend) = select_backend(&fkey, &fe, hash, client) else {
                count_lb(LbStat::XdpNoBackend);
                return None;
            };
            let now = now_ns();
            let fwd = CtValue {
                addr: backend.addr,
                port: backend.port,
                last_seen_ns: now,
                ..CtValue::default()
            };
            let rev_key = CtKey {
                saddr: backend.addr,
                daddr: saddr,
                sport: backend.port,
                dport: sport,
                proto,
                _pad: [0; 3],
            };
            let rev = CtValue {
                addr: daddr,
                port: dport,
                flags: CT_F_REPLY | CT_F_NODE,
                last_seen_ns: now,
                ..CtValue::default()
            };
            if !ct_create(&key, &fwd, &rev_key, &rev) {
                return None;
            }
            (backend.addr, backend.port)
        }
    };

    // SAFETY (the block): every pointer was bounds-checked above; XDP packet data is writable.
    unsafe {
        let ip_csum = (ip as *mut u8).add(10) as *mut u16;
        let old_ip_csum = core::ptr::read_unaligned(ip_csum);
        core::ptr::write_unaligned(
            ip_csum,
            csum_replace(old_ip_csum, &words(daddr), &words(to_addr)),
        );
        let old_l4 = core::ptr::read_unaligned(l4_csum);
        // A UDP checksum of 0 means "none": leave it so.
        if !(proto == IPPROTO_UDP && old_l4 == 0) {
            let [d0, d1] = words(daddr);
            let [t0, t1] = words(to_addr);
            let mut new = csum_replace(old_l4, &[d0, d1, dport], &[t0, t1, to_port]);
            if proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            core::ptr::write_unaligned(l4_csum, new);
        }
        core::ptr::write_unaligned((ip as *mut u8).add(16) as *mut u32, to_addr);
        core::ptr::write_unaligned(ports, [sport, to_port]);
    }
    count_lb(LbStat::XdpForwarded);
    Some(())
}
