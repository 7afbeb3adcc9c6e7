//! Frames for packet-path tests, built with etherparse (checksums included), plus the hostile
//! variants a parser must survive.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Ethernet + IPv4 + TCP SYN.
pub fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64_240)
        .syn();
    let mut out = Vec::with_capacity(builder.size(0));
    builder
        .write(&mut out, &[])
        .expect("writing to a Vec cannot fail");
    out
}

/// Ethernet + IPv4 + UDP with `payload`.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder
        .write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// Ethernet + IPv4 + ICMP echo request.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(1, 1);
    let mut out = Vec::with_capacity(builder.size(8));
    builder
        .write(&mut out, &[0u8; 8])
        .expect("writing to a Vec cannot fail");
    out
}

/// An ARP request (not IPv4).
pub fn arp_request() -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&[0x08, 0x06]); // ETH_P_ARP
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&[10, 0, 0, 1]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 0, 0, 2]);
    frame
}

/// Byte offset of the IPv4 header in frames built here.
pub const IPV4_OFFSET: usize = 14;

/// Rewrites the IPv4 header's IHL field (and nothing else) of a frame built here.
pub fn with_ihl(mut frame: Vec<u8>, ihl_words: u8) -> Vec<u8> {
    frame[IPV4_OFFSET] = 0x40 | (ihl_words & 0x0f);
    frame
}

/// Rewrites the IPv4 total length of a frame built here.
pub fn with_total_length(mut frame: Vec<u8>, len: u16) -> Vec<u8> {
    frame[IPV4_OFFSET + 2..IPV4_OFFSET + 4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// Marks a frame built here as a non-first fragment (offset in 8-byte units).
pub fn with_fragment_offset(mut frame: Vec<u8>, offset_units: u16) -> Vec<u8> {
    frame[IPV4_OFFSET + 6..IPV4_OFFSET + 8].copy_from_slice(&(offset_units & 0x1fff).to_be_bytes());
    frame
}
