//! The load balancer's packet programs on crafted frames (BPF_PROG_TEST_RUN, private maps):
//! XDP DNAT of NodePort traffic from outside, tc reverse NAT of the backend's replies, tc DNAT of
//! pod traffic that bypassed the socket hooks, hairpin SNAT, rejects, and Maglev consistency;
//! every rewritten frame's IPv4, TCP and UDP checksums are verified.

use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData};
use berth_common::{
    lb::{
        Backend, BackendKey, CT_F_REPLY, CtKey, CtValue, FRONTEND_F_MAGLEV, Frontend, FrontendKey,
        LbConfig, LbStat, MAGLEV_MAX_SIZE, MaglevTable, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
        SCOPE_INTERNAL,
    },
    programs::{TC_POD_INGRESS, XDP_LB_INGRESS},
};
use berth_tests::{
    packet,
    privileged::require_root,
    prog_test_run::{TestRun, XdpVerdict},
};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 6);
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 7);
const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 9);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

fn raw(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn backend(ip: Ipv4Addr, port: u16, proto: u8) -> Backend {
    Backend {
        addr: raw(ip),
        port: port.to_be(),
        proto,
        _pad: 0,
    }
}

/// Seeds one frontend with backend set `set_id`.
fn frontend(run: &mut TestRun, key: FrontendKey, set_id: u32, backends: &[Backend], flags: u16) {
    let ebpf = run.ebpf_mut();
    let mut slots: HashMap<&mut MapData, BackendKey, Backend> =
        HashMap::try_from(ebpf.map_mut("LB_BACKENDS").expect("LB_BACKENDS")).expect("typed");
    for (slot, b) in backends.iter().enumerate() {
        slots
            .insert(
                BackendKey {
                    set_id,
                    slot: slot as u32,
                },
                *b,
                0,
            )
            .expect("seed slot");
    }
    let mut fronts: HashMap<&mut MapData, FrontendKey, Frontend> =
        HashMap::try_from(ebpf.map_mut("LB_FRONTENDS").expect("LB_FRONTENDS")).expect("typed");
    fronts
        .insert(
            key,
            Frontend {
                set_id,
                count: backends.len() as u16,
                flags,
                frontend_id: set_id,
                affinity_timeout_s: 0,
            },
            0,
        )
        .expect("seed frontend");
}

fn node_addr(run: &mut TestRun, ip: Ipv4Addr) {
    let mut addrs: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(run.ebpf_mut().map_mut("LB_NODE_ADDRS").expect("map")).expect("typed");
    addrs.insert(raw(ip), 1, 0).expect("seed node addr");
}

fn config(run: &mut TestRun, maglev_size: u32, hairpin: Ipv4Addr) {
    let mut cfg: Array<&mut MapData, LbConfig> =
        Array::try_from(run.ebpf_mut().map_mut("LB_CONFIG").expect("map")).expect("typed");
    cfg.set(
        0,
        LbConfig {
            maglev_size,
            hairpin_addr: raw(hairpin),
        },
        0,
    )
    .expect("seed config");
}

fn ct_entries(run: &mut TestRun) -> Vec<(CtKey, CtValue)> {
    let ct: HashMap<&mut MapData, CtKey, CtValue> =
        HashMap::try_from(run.ebpf_mut().map_mut("LB_CONNTRACK").expect("map")).expect("typed");
    ct.iter().filter_map(Result::ok).collect()
}

fn clear_ct(run: &mut TestRun) {
    let keys: Vec<CtKey> = ct_entries(run).into_iter().map(|(k, _)| k).collect();
    let mut ct: HashMap<&mut MapData, CtKey, CtValue> =
        HashMap::try_from(run.ebpf_mut().map_mut("LB_CONNTRACK").expect("map")).expect("typed");
    for k in keys {
        ct.remove(&k).expect("remove ct entry");
    }
}

/// (src, sport, dst, dport) of a frame, after checking that every checksum in it is valid.
fn addresses_checked(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("the frame still parses");
    let Some(NetSlice::Ipv4(ip)) = sliced.net else {
        panic!("not IPv4")
    };
    let header = ip.header().to_header();
    assert_eq!(
        header.header_checksum,
        header.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let (src, dst) = (header.source.into(), header.destination.into());
    match sliced.transport.expect("has L4") {
        TransportSlice::Tcp(tcp) => {
            let want = tcp
                .to_header()
                .calc_checksum_ipv4(&header, tcp.payload())
                .expect("checksum");
            assert_eq!(tcp.checksum(), want, "TCP checksum");
            (src, tcp.source_port(), dst, tcp.destination_port())
        }
        TransportSlice::Udp(udp) => {
            if udp.checksum() != 0 {
                let want = udp
                    .to_header()
                    .calc_checksum_ipv4(&header, udp.payload())
                    .expect("checksum");
                assert_eq!(udp.checksum(), want, "UDP checksum");
            }
            (src, udp.source_port(), dst, udp.destination_port())
        }
        other => panic!("unexpected transport {other:?}"),
    }
}

fn tcp_reply(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(packet::SRC_MAC, packet::DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 7, 64_240)
        .syn()
        .ack(2);
    let mut out = Vec::new();
    builder.write(&mut out, b"hello").expect("build");
    out
}

#[test]
fn nodeport_tcp_is_dnated_at_xdp_and_replies_reverse_natted_at_tc() {
    if !require_root("nodeport_tcp_is_dnated_at_xdp_and_replies_reverse_natted_at_tc") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    node_addr(&mut run, NODE);
    let key = FrontendKey {
        addr: 0,
        port: 30080u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    frontend(&mut run, key, 1, &[backend(POD_A, 8080, PROTO_TCP)], 0);

    let syn = packet::tcp_syn(CLIENT, NODE, 40000, 30080);
    let out = run.xdp(XDP_LB_INGRESS, &syn).expect("run");
    assert_eq!(out.verdict, XdpVerdict::Pass);
    assert_eq!(
        addresses_checked(&out.data),
        (CLIENT, 40000, POD_A, 8080),
        "client preserved, destination is the backend"
    );
    let ct = ct_entries(&mut run);
    assert_eq!(ct.len(), 2, "forward and reply entries: {ct:?}");
    assert_eq!(
        ct.iter().filter(|(_, v)| v.flags & CT_F_REPLY != 0).count(),
        1,
        "exactly one of them reverse-NATs replies: {ct:?}"
    );
    assert_eq!(
        run.per_cpu_sum("LB_STATS", LbStat::XdpForwarded as u32)
            .expect("stats"),
        1
    );

    // The next packet of the flow follows the conntrack entry.
    let again = run.xdp(XDP_LB_INGRESS, &syn).expect("run");
    assert_eq!(addresses_checked(&again.data).2, POD_A);

    // The backend's reply, leaving the pod through its veth, gets the NodePort back as source.
    let reply = tcp_reply(POD_A, 8080, CLIENT, 40000);
    let out = run.tc(TC_POD_INGRESS, &reply).expect("run");
    // Its source is now a node address: the program routes it out itself (redirect) when the
    // host has a route to the client, or leaves it to the stack.
    assert!(
        out.verdict == TC_ACT_OK || out.verdict == TC_ACT_REDIRECT,
        "verdict {}",
        out.verdict
    );
    assert_eq!(addresses_checked(&out.data), (NODE, 30080, CLIENT, 40000));
    assert_eq!(
        run.per_cpu_sum("LB_STATS", LbStat::TcRevnat as u32)
            .expect("stats"),
        1
    );
}

#[test]
fn udp_is_translated_both_ways_with_checksums_and_zero_checksum_kept() {
    if !require_root("udp_is_translated_both_ways_with_checksums_and_zero_checksum_kept") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    // A ClusterIP reached by a pod whose packets bypassed the socket hooks: tc DNAT.
    let key = FrontendKey {
        addr: raw(VIP),
        port: 53u16.to_be(),
        proto: PROTO_UDP,
        scope: SCOPE_INTERNAL,
    };
    frontend(&mut run, key, 7, &[backend(POD_B, 5353, PROTO_UDP)], 0);
    let query = packet::udp(CLIENT_POD, VIP, 41000, 53, b"query");
    let out = run.tc(TC_POD_INGRESS, &query).expect("run");
    assert_eq!(out.verdict, TC_ACT_OK);
    assert_eq!(
        addresses_checked(&out.data),
        (CLIENT_POD, 41000, POD_B, 5353)
    );

    let answer = packet::udp(POD_B, CLIENT_POD, 5353, 41000, b"answer");
    let out = run.tc(TC_POD_INGRESS, &answer).expect("run");
    assert_eq!(addresses_checked(&out.data), (VIP, 53, CLIENT_POD, 41000));

    // A UDP datagram without a checksum (0) must keep "no checksum" after the rewrite.
    let mut nocsum = packet::udp(CLIENT_POD, VIP, 41001, 53, b"query");
    let csum_at = 14 + 20 + 6;
    nocsum[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let out = run.tc(TC_POD_INGRESS, &nocsum).expect("run");
    assert_eq!(&out.data[csum_at..csum_at + 2], &[0, 0]);
    assert_eq!(addresses_checked(&out.data).2, POD_B);

    // The same through XDP from outside (ExternalIP frontend), checksum 0 kept there too.
    let ext = FrontendKey {
        addr: raw(NODE),
        port: 53u16.to_be(),
        proto: PROTO_UDP,
        scope: SCOPE_EXTERNAL,
    };
    frontend(&mut run, ext, 8, &[backend(POD_B, 5353, PROTO_UDP)], 0);
    let dgram = packet::udp(CLIENT, NODE, 42000, 53, b"q");
    let out = run.xdp(XDP_LB_INGRESS, &dgram).expect("run");
    assert_eq!(addresses_checked(&out.data), (CLIENT, 42000, POD_B, 5353));
    let mut dgram0 = packet::udp(CLIENT, NODE, 42001, 53, b"q");
    dgram0[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
    let out = run.xdp(XDP_LB_INGRESS, &dgram0).expect("run");
    assert_eq!(&out.data[csum_at..csum_at + 2], &[0, 0]);
}

#[test]
fn hairpin_is_source_natted_and_restored() {
    if !require_root("hairpin_is_source_natted_and_restored") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    config(&mut run, 0, GATEWAY);
    let key = FrontendKey {
        addr: raw(VIP),
        port: 80u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_INTERNAL,
    };
    frontend(&mut run, key, 3, &[backend(POD_A, 8080, PROTO_TCP)], 0);
    // POD_A reaches itself through the service.
    let syn = packet::tcp_syn(POD_A, VIP, 45000, 80);
    let out = run.tc(TC_POD_INGRESS, &syn).expect("run");
    assert_eq!(
        addresses_checked(&out.data),
        (GATEWAY, 45000, POD_A, 8080),
        "the source becomes the gateway so the reply leaves the pod"
    );
    let reply = tcp_reply(POD_A, 8080, GATEWAY, 45000);
    let out = run.tc(TC_POD_INGRESS, &reply).expect("run");
    assert_eq!(addresses_checked(&out.data), (VIP, 80, POD_A, 45000));
}

#[test]
fn frontends_without_backends_reject_instead_of_black_holing() {
    if !require_root("frontends_without_backends_reject_instead_of_black_holing") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    node_addr(&mut run, NODE);
    for scope in [SCOPE_EXTERNAL, SCOPE_INTERNAL] {
        let key = FrontendKey {
            addr: raw(VIP),
            port: 80u16.to_be(),
            proto: PROTO_TCP,
            scope,
        };
        frontend(&mut run, key, 9, &[], 0);
    }
    // From outside: passed untouched, so the node's stack (where nothing listens) answers RST.
    let syn = packet::tcp_syn(CLIENT, VIP, 40000, 80);
    let out = run.xdp(XDP_LB_INGRESS, &syn).expect("run");
    assert_eq!(out.verdict, XdpVerdict::Pass);
    assert_eq!(out.data, syn);
    assert_eq!(
        run.per_cpu_sum("LB_STATS", LbStat::XdpNoBackend as u32)
            .expect("stats"),
        1
    );
    // From a pod on the packet path: dropped and counted (the socket path answers ECONNREFUSED).
    let out = run
        .tc(TC_POD_INGRESS, &packet::tcp_syn(CLIENT_POD, VIP, 40001, 80))
        .expect("run");
    assert_eq!(out.verdict, TC_ACT_SHOT);
    assert!(
        ct_entries(&mut run).is_empty(),
        "no conntrack for rejected flows"
    );
}

#[test]
fn maglev_sends_a_flow_to_the_same_backend_and_spreads_flows() {
    if !require_root("maglev_sends_a_flow_to_the_same_backend_and_spreads_flows") {
        return;
    }
    let mut run = TestRun::load().expect("load kernel object");
    node_addr(&mut run, NODE);
    let size = 251u32;
    config(&mut run, size, GATEWAY);
    let backends = [
        backend(POD_A, 8080, PROTO_TCP),
        backend(POD_B, 8080, PROTO_TCP),
        backend(POD_C, 8080, PROTO_TCP),
    ];
    let key = FrontendKey {
        addr: 0,
        port: 30080u16.to_be(),
        proto: PROTO_TCP,
        scope: SCOPE_EXTERNAL,
    };
    frontend(&mut run, key, 4, &backends, FRONTEND_F_MAGLEV);
    let table = berth::dataplane::lb::maglev_table(&backends, size);
    {
        let mut maglev: HashMap<&mut MapData, u32, MaglevTable> =
            HashMap::try_from(run.ebpf_mut().map_mut("LB_MAGLEV").expect("map")).expect("typed");
        maglev.insert(4, table, 0).expect("seed table");
    }
    assert!(table.slots[..size as usize].iter().all(|s| *s < 3));
    assert!(
        table.slots[size as usize..MAGLEV_MAX_SIZE]
            .iter()
            .all(|s| *s == 0)
    );

    let mut seen = std::collections::BTreeMap::new();
    for sport in 40000..40060u16 {
        let syn = packet::tcp_syn(CLIENT, NODE, sport, 30080);
        let first = addresses_checked(&run.xdp(XDP_LB_INGRESS, &syn).expect("run").data).2;
        // Without conntrack state (another node, or after a restart), the table alone picks the
        // same backend again.
        clear_ct(&mut run);
        let second = addresses_checked(&run.xdp(XDP_LB_INGRESS, &syn).expect("run").data).2;
        assert_eq!(first, second, "flow from port {sport}");
        clear_ct(&mut run);
        *seen.entry(first).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "60 flows reach all three backends: {seen:?}");
}
