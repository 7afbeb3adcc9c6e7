//! What a container network is: its bridge, its pod CIDR (and so its gateway), where its
//! address leases live, and the resolvers its containers use.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

use super::NetworkError;

/// The bridge `berth run` attaches containers to unless told otherwise.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// The pod CIDR unless told otherwise (Podman's default network is 10.88.0.0/16 too).
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// Where the host's resolvers are read from.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// An IPv4 prefix such as `10.88.0.0/16`. Its address is always the network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// `addr/prefix_len`; `addr` must be the network address (no host bits set), so that a
    /// typo such as `10.88.1.0/16` is reported rather than silently widened.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, String> {
        if prefix_len > 32 {
            return Err(format!("prefix length /{prefix_len} is above 32"));
        }
        let net = Self { addr, prefix_len };
        if net.network() != addr {
            return Err(format!(
                "{addr}/{prefix_len} is not a network address (did you mean {}/{prefix_len}?)",
                net.network()
            ));
        }
        Ok(net)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    fn mask(&self) -> u32 {
        match self.prefix_len {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n)),
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// True when the two prefixes share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not in CIDR form (e.g. 10.88.0.0/16)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{len:?} is not a prefix length"))?;
        Self::new(addr, len)
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Resolver settings written into a container's `/etc/resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsSettings {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    /// Why the host's resolvers were not all kept (written as a comment, so that a container
    /// without a nameserver line explains itself).
    pub notes: Vec<String>,
}

impl DnsSettings {
    /// The host's resolvers as a container on the bridge can use them: loopback resolvers
    /// (systemd-resolved's 127.0.0.53, a local dnsmasq) listen in the host's network namespace
    /// only, and IPv6 ones are unreachable since containers get no IPv6 address, so both are
    /// dropped. Search domains and options are kept.
    pub fn from_host_resolv_conf(text: &str) -> Self {
        let mut dns = DnsSettings::default();
        let mut dropped = Vec::new();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let Some(word) = words.next() else { continue };
                    // A scoped IPv6 address ("fe80::1%eth0") does not parse: it is link-local
                    // on a host interface, unusable from a container either way.
                    match word.parse::<IpAddr>() {
                        Ok(ip @ IpAddr::V4(v4)) if !v4.is_loopback() && !v4.is_unspecified() => {
                            if !dns.nameservers.contains(&ip) {
                                dns.nameservers.push(ip);
                            }
                        }
                        _ => dropped.push(word.to_owned()),
                    }
                }
                Some("search") | Some("domain") => {
                    // The last search/domain line wins (resolv.conf(5)).
                    dns.search = words.map(str::to_owned).collect();
                }
                Some("options") => dns.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        if !dropped.is_empty() {
            dns.notes.push(format!(
                "host nameservers not usable from a container network namespace (loopback or IPv6): {}",
                dropped.join(" ")
            ));
        }
        if dns.nameservers.is_empty() {
            dns.notes.push(
                "no nameserver: the host has no resolver a container can reach (set one with the network's dns setting)"
                    .to_owned(),
            );
        }
        dns
    }

    /// The host's `/etc/resolv.conf`, filtered as [`Self::from_host_resolv_conf`] does; an
    /// unreadable or missing file means no resolvers.
    pub fn from_host() -> Self {
        let text = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
        Self::from_host_resolv_conf(&text)
    }
}

/// One bridge network: the bridge, its pod CIDR, where its address leases are kept, and the
/// resolvers its containers get.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The bridge's interface name (default `berth0`).
    pub bridge: String,
    /// The pod CIDR (default 10.88.0.0/16); the bridge holds its first host address.
    pub subnet: Ipv4Net,
    /// Where the address leases of this network live (`<state_dir>/ipam/<bridge>.json`).
    pub state_dir: PathBuf,
    pub dns: DnsSettings,
}

impl NetworkConfig {
    /// A validated configuration with the host's resolvers.
    pub fn new(bridge: &str, subnet: &str, state_dir: &Path) -> Result<Self, NetworkError> {
        let subnet = subnet.parse().map_err(|reason| NetworkError::Config {
            field: "subnet",
            value: subnet.to_owned(),
            reason,
        })?;
        let config = Self {
            bridge: bridge.to_owned(),
            subnet,
            state_dir: state_dir.to_owned(),
            dns: DnsSettings::from_host(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what [`Self::new`] checks, for a configuration built field by field.
    pub fn validate(&self) -> Result<(), NetworkError> {
        validate_bridge_name(&self.bridge)?;
        let bad = |reason: String| NetworkError::Config {
            field: "subnet",
            value: self.subnet.to_string(),
            reason,
        };
        if !(8..=30).contains(&self.subnet.prefix_len()) {
            return Err(bad(format!(
                "prefix length /{} is outside /8../30 (a /31 or /32 has no room for a gateway and a container)",
                self.subnet.prefix_len()
            )));
        }
        Ipv4Net::new(self.subnet.addr(), self.subnet.prefix_len()).map_err(bad)?;
        let first = self.subnet.addr().octets()[0];
        if self.subnet.addr().is_loopback()
            || self.subnet.addr().is_multicast()
            || first >= 224
            || first == 0
        {
            return Err(bad("not a unicast range usable for containers".to_owned()));
        }
        Ok(())
    }

    /// The bridge's own address, the containers' default route: the subnet's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet.network()) + 1)
    }
}

/// Interface names: at most 15 bytes (IFNAMSIZ - 1), and only characters that are safe in an
/// nftables identifier and a file name, since the bridge names both.
pub fn validate_bridge_name(name: &str) -> Result<(), NetworkError> {
    let bad = |reason: &str| NetworkError::Config {
        field: "bridge",
        value: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 15 {
        return Err(bad("an interface name has 1 to 15 characters"));
    }
    if name == "." || name == ".." {
        return Err(bad("not a valid interface name"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(bad("use only letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_must_be_network_addresses() {
        let net: Ipv4Net = "10.88.0.0/16".parse().expect("parse");
        assert_eq!(net.network(), Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 88, 255, 255));
        assert!(net.contains(Ipv4Addr::new(10, 88, 3, 4)));
        assert!(!net.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(net.to_string(), "10.88.0.0/16");
        let err = "10.88.1.0/16".parse::<Ipv4Net>().expect_err("host bits");
        assert!(err.contains("10.88.0.0/16"), "{err}");
        assert!("10.88.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.88.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("ten/8".parse::<Ipv4Net>().is_err());
        let a: Ipv4Net = "10.0.0.0/8".parse().expect("a");
        let b: Ipv4Net = "10.201.3.0/24".parse().expect("b");
        let c: Ipv4Net = "192.168.0.0/16".parse().expect("c");
        assert!(a.overlaps(&b) && b.overlaps(&a) && !a.overlaps(&c));
        let json = serde_json::to_string(&b).expect("json");
        assert_eq!(json, "\"10.201.3.0/24\"");
        assert_eq!(serde_json::from_str::<Ipv4Net>(&json).expect("back"), b);
    }

    #[test]
    fn config_validation_names_the_field() {
        let dir = Path::new("/nonexistent");
        let config = NetworkConfig::new("berth0", "10.88.0.0/16", dir).expect("default");
        assert_eq!(config.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        for (bridge, subnet, field, needle) in [
            ("berth0", "10.88.0.0/31", "subnet", "/8../30"),
            ("berth0", "10.0.0.0/7", "subnet", "/8../30"),
            ("berth0", "10.88.0.1/16", "subnet", "not a network address"),
            ("berth0", "nonsense", "subnet", "CIDR"),
            ("berth0", "127.0.0.0/8", "subnet", "unicast"),
            ("", "10.88.0.0/16", "bridge", "1 to 15"),
            ("a-very-long-bridge", "10.88.0.0/16", "bridge", "1 to 15"),
            ("br 0", "10.88.0.0/16", "bridge", "letters"),
            ("br/0", "10.88.0.0/16", "bridge", "letters"),
        ] {
            let err = NetworkConfig::new(bridge, subnet, dir).expect_err(subnet);
            let text = err.to_string();
            match &err {
                NetworkError::Config { field: f, .. } => assert_eq!(*f, field, "{text}"),
                other => panic!("{bridge} {subnet}: unexpected {other}"),
            }
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn host_resolvers_drop_loopback_and_ipv6() {
        let dns = DnsSettings::from_host_resolv_conf(
            "# generated\nnameserver 127.0.0.53\nnameserver 10.255.255.53 # corp\nnameserver ::1\n\
             nameserver fe80::1%eth0\nnameserver 2001:db8::1\nnameserver 10.255.255.53\n\
             search example.com corp.example\noptions edns0 trust-ad\n",
        );
        assert_eq!(
            dns.nameservers,
            vec!["10.255.255.53".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(dns.search, vec!["example.com", "corp.example"]);
        assert_eq!(dns.options, vec!["edns0", "trust-ad"]);
        assert_eq!(dns.notes.len(), 1);
        assert!(dns.notes[0].contains("127.0.0.53"), "{:?}", dns.notes);

        let only_local = DnsSettings::from_host_resolv_conf("nameserver 127.0.0.53\n");
        assert!(only_local.nameservers.is_empty());
        assert!(
            only_local.notes.iter().any(|n| n.contains("no nameserver")),
            "{:?}",
            only_local.notes
        );
    }
}
