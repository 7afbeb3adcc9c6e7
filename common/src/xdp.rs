//! Counters of `xdp_lb_ingress`.

/// Index into the per-CPU `XDP_STATS` array: what the program decided about a frame.
///
/// Every frame increments exactly one counter, so the sum over all indices is the number of
/// frames the program saw.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpStat {
    /// IPv4 TCP, passed to the stack.
    PassIpv4Tcp = 0,
    /// IPv4 UDP, passed to the stack.
    PassIpv4Udp = 1,
    /// IPv4 ICMP, passed to the stack.
    PassIpv4Icmp = 2,
    /// IPv4 with another L4 protocol, passed to the stack.
    PassIpv4Other = 3,
    /// A non-first IPv4 fragment (carries no L4 header), passed to the stack.
    PassIpv4Fragment = 4,
    /// Not IPv4 (ARP, IPv6, ...), passed to the stack untouched.
    PassNonIpv4 = 5,
    /// A frame too short for the headers it claims, or an IPv4 header with IHL < 5 or a total
    /// length shorter than its header. Passed untouched: the kernel stack drops it and counts it
    /// in its own statistics; berth never drops traffic it does not own.
    Malformed = 6,
}

impl XdpStat {
    /// Number of counters (the `XDP_STATS` array's size).
    pub const COUNT: u32 = 7;

    /// All counters, in index order.
    pub const ALL: [XdpStat; Self::COUNT as usize] = [
        XdpStat::PassIpv4Tcp,
        XdpStat::PassIpv4Udp,
        XdpStat::PassIpv4Icmp,
        XdpStat::PassIpv4Other,
        XdpStat::PassIpv4Fragment,
        XdpStat::PassNonIpv4,
        XdpStat::Malformed,
    ];

    /// The verdict and reason label pair the agent exports for this counter.
    pub const fn labels(self) -> (&'static str, &'static str) {
        match self {
            XdpStat::PassIpv4Tcp => ("pass", "ipv4_tcp"),
            XdpStat::PassIpv4Udp => ("pass", "ipv4_udp"),
            XdpStat::PassIpv4Icmp => ("pass", "ipv4_icmp"),
            XdpStat::PassIpv4Other => ("pass", "ipv4_other"),
            XdpStat::PassIpv4Fragment => ("pass", "ipv4_fragment"),
            XdpStat::PassNonIpv4 => ("pass", "non_ipv4"),
            XdpStat::Malformed => ("pass", "malformed"),
        }
    }
}
