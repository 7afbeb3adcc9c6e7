//! `xdp_lb_ingress` on crafted frames through BPF_PROG_TEST_RUN: every frame passes, exactly one
//! counter moves, the bytes are untouched, and hostile frames are counted as malformed.

use std::net::Ipv4Addr;

use berth_common::{programs::XDP_LB_INGRESS, xdp::XdpStat};
use berth_tests::{
    packet,
    privileged::require_root,
    prog_test_run::{TestRun, XdpVerdict},
};

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// Runs `frame` and asserts: XDP_PASS, frame unchanged, and only counter `expect` moved by one.
fn assert_counted(run: &mut TestRun, frame: &[u8], expect: XdpStat) {
    let before: Vec<u64> = XdpStat::ALL
        .iter()
        .map(|s| {
            run.per_cpu_sum("XDP_STATS", *s as u32)
                .expect("read XDP_STATS")
        })
        .collect();
    let outcome = run.xdp(XDP_LB_INGRESS, frame).expect("test run");
    assert_eq!(outcome.verdict, XdpVerdict::Pass, "{expect:?}: verdict");
    assert_eq!(
        outcome.data, frame,
        "{expect:?}: the program must not rewrite the frame"
    );
    for (stat, before) in XdpStat::ALL.iter().zip(before) {
        let after = run
            .per_cpu_sum("XDP_STATS", *stat as u32)
            .expect("read XDP_STATS");
        let want = if *stat == expect { before + 1 } else { before };
        assert_eq!(after, want, "counter {stat:?} after a {expect:?} frame");
    }
}

#[test]
fn well_formed_frames_pass_and_are_counted_by_protocol() {
    if !require_root("well_formed_frames_pass_and_are_counted_by_protocol") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    assert_counted(
        &mut run,
        &packet::tcp_syn(A, B, 40000, 80),
        XdpStat::PassIpv4Tcp,
    );
    assert_counted(
        &mut run,
        &packet::udp(A, B, 40000, 53, b"query"),
        XdpStat::PassIpv4Udp,
    );
    assert_counted(&mut run, &packet::icmp_echo(A, B), XdpStat::PassIpv4Icmp);
    assert_counted(&mut run, &packet::arp_request(), XdpStat::PassNonIpv4);
    // A GRE packet (protocol 47): IPv4 with a protocol the parser does not look into.
    let mut gre = packet::udp(A, B, 1, 2, b"x");
    gre[packet::IPV4_OFFSET + 9] = 47;
    assert_counted(&mut run, &gre, XdpStat::PassIpv4Other);
    let frag = packet::with_fragment_offset(packet::udp(A, B, 1, 2, b"tail"), 185);
    assert_counted(&mut run, &frag, XdpStat::PassIpv4Fragment);
}

#[test]
fn hostile_frames_pass_untouched_and_are_counted_as_malformed() {
    if !require_root("hostile_frames_pass_untouched_and_are_counted_as_malformed") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    let syn = packet::tcp_syn(A, B, 40000, 80);

    // Shorter than an Ethernet header (the kernel's test run needs at least 14 bytes, so cut
    // into the IPv4 header instead to reach the parser's first IPv4 bounds check).
    assert_counted(&mut run, &syn[..20], XdpStat::Malformed);
    // IHL below the minimum of 5 words.
    assert_counted(
        &mut run,
        &packet::with_ihl(syn.clone(), 3),
        XdpStat::Malformed,
    );
    // IHL claims options that are not in the frame (15 words = 60 bytes of header).
    assert_counted(
        &mut run,
        &packet::with_total_length(packet::with_ihl(syn[..14 + 24].to_vec(), 15), 100),
        XdpStat::Malformed,
    );
    // Total length shorter than the header itself.
    assert_counted(
        &mut run,
        &packet::with_total_length(syn.clone(), 8),
        XdpStat::Malformed,
    );
    // TCP header cut short: the ports the load balancer keys on are missing.
    assert_counted(&mut run, &syn[..14 + 20 + 10], XdpStat::Malformed);
    // Not IPv4 despite the EtherType (version nibble 6).
    let mut v6 = syn.clone();
    v6[packet::IPV4_OFFSET] = 0x65;
    assert_counted(&mut run, &v6, XdpStat::Malformed);
}
