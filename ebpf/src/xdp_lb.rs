//! `xdp_lb_ingress`: XDP on the node's uplink.
//!
//! Today it parses each frame (Ethernet, IPv4, the L4 protocol), counts what it saw in
//! `XDP_STATS`, and passes every frame to the stack; the service load-balancing work adds the
//! NodePort / ExternalIP / LoadBalancer translation on top of this parser. A frame that lies
//! about its own headers is counted as malformed, logged (rate-limited) and passed: the kernel
//! stack drops it with its own accounting, and berth never drops traffic it does not own.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use berth_common::xdp::XdpStat;

use crate::{
    maps::count,
    net::{
        ETH_HDR_LEN, ETH_P_IP, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_FRAG_OFFSET_MASK,
        IPV4_MIN_HDR_LEN, ptr_at, read_at,
    },
    ratelimit::allow_log,
};

#[xdp]
pub fn xdp_lb_ingress(ctx: XdpContext) -> u32 {
    let stat = classify(&ctx);
    count(stat);
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

/// Decides which counter a frame belongs to.
#[inline(always)]
fn classify(ctx: &XdpContext) -> XdpStat {
    let (data, end) = (ctx.data(), ctx.data_end());

    let Some(ethertype) = read_at::<u16>(data, end, 12) else {
        return XdpStat::Malformed;
    };
    if u16::from_be(ethertype) != ETH_P_IP {
        return XdpStat::PassNonIpv4;
    }

    // The fixed 20-byte IPv4 header in one bounds check; fields by their RFC 791 offsets.
    let Some(ip) = read_at::<[u8; IPV4_MIN_HDR_LEN]>(data, end, ETH_HDR_LEN) else {
        return XdpStat::Malformed;
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN || tot_len < ihl {
        return XdpStat::Malformed;
    }
    // Options, when present, must be in the frame too.
    if ihl > IPV4_MIN_HDR_LEN && ptr_at::<u8>(data, end, ETH_HDR_LEN + ihl - 1).is_none() {
        return XdpStat::Malformed;
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & IPV4_FRAG_OFFSET_MASK != 0 {
        return XdpStat::PassIpv4Fragment;
    }
    let proto = ip[9];

    // TCP and UDP frames must carry the ports the load balancer will key on.
    let l4 = ETH_HDR_LEN + ihl;
    match proto {
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
    }
}
