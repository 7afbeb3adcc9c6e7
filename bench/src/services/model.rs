//! The service set every mode programs, and its three renderings: Kubernetes objects for berth,
//! an `iptables-restore` input in kube-proxy's iptables layout and an `nft -f` input in
//! kube-proxy's nftables layout. All three are generated from one [`Service`] list, so every mode
//! is handed the identical services (same ClusterIPs, same endpoints, same order).

use std::{collections::HashSet, fmt::Write as _, net::Ipv4Addr};

use super::Rng;

/// The port every service exposes on its ClusterIP.
pub const SERVICE_PORT: u16 = 80;
/// The port the backends listen on (the services' targetPort).
pub const TARGET_PORT: u16 = 8080;
/// The pods' address range (kube-proxy's `--cluster-cidr`): traffic from inside it is not
/// masqueraded, exactly as in a cluster.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The service range ClusterIPs are drawn from (Kubernetes' default `--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
const NAMESPACE: &str = "default";
const PORT_NAME: &str = "http";

/// One ClusterIP service with one TCP port and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// The EndpointSlice's name: the service name and a random suffix, as the EndpointSlice
    /// controller names them.
    pub slice_name: String,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<Ipv4Addr>,
}

impl Service {
    /// kube-proxy's `ServicePortName` string (`namespace/name:port`), the input of its chain
    /// name hashes and its rule comments.
    fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:{PORT_NAME}", self.name)
    }
}

/// `n` services with distinct ClusterIPs drawn uniformly from 10.96.0.0/12 (deterministic for a
/// seed), each with every backend as an endpoint.
pub fn service_set(n: usize, backends: &[Ipv4Addr], seed: u64) -> Vec<Service> {
    let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
    let size: u64 = 1 << 20;
    // Skip the range's first 16 addresses (10.96.0.1 is the `kubernetes` service, .10 cluster
    // DNS) and its broadcast address; the range holds a million, so distinct draws end quickly.
    let mut rng = Rng::new(seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut used = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let offset = 16 + rng.below((size - 17) as usize) as u32;
        if !used.insert(offset) {
            continue;
        }
        let name = format!("svc-{:05}", out.len());
        let suffix: String = (0..5)
            .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.below(27)]))
            .collect();
        out.push(Service {
            slice_name: format!("{name}-{suffix}"),
            name,
            cluster_ip: Ipv4Addr::from(base + offset),
            endpoints: backends.to_vec(),
        });
    }
    out
}

/// The "update one service" change: the middle service loses its last endpoint (the endpoint
/// addresses stay inside the backends). Returns the new set, the index changed and the
/// endpoint removed.
pub fn with_one_endpoint_removed(services: &[Service]) -> (Vec<Service>, usize, Ipv4Addr) {
    let mut updated = services.to_vec();
    let k = services.len() / 2;
    let removed = updated[k].endpoints.pop().unwrap_or(Ipv4Addr::UNSPECIFIED);
    (updated, k, removed)
}

// ---- Kubernetes objects (berth) ----

/// Multi-document YAML: a `Service` and its `EndpointSlice` for each service, as the API server
/// would hand them to a watcher (only the fields a proxy reads).
pub fn kube_yaml(services: &[Service]) -> String {
    let mut out = String::with_capacity(services.len() * 1100);
    for svc in services {
        out.push_str(&service_yaml(svc));
        out.push_str(&endpoint_slice_yaml(svc));
    }
    out
}

/// One `v1/Service` document (type ClusterIP, port 80/TCP named http → targetPort 8080).
pub fn service_yaml(svc: &Service) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n\
         spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  ports:\n  - name: {PORT_NAME}\n    \
         port: {SERVICE_PORT}\n    protocol: TCP\n    targetPort: {TARGET_PORT}\n",
        name = svc.name,
        ip = svc.cluster_ip,
    )
}

/// One `discovery.k8s.io/v1/EndpointSlice` document with every endpoint ready.
pub fn endpoint_slice_yaml(svc: &Service) -> String {
    let mut out = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  \
         namespace: {NAMESPACE}\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: IPv4\nports:\n- name: {PORT_NAME}\n  port: {TARGET_PORT}\n  protocol: TCP\n\
         endpoints:\n",
        slice = svc.slice_name,
        name = svc.name,
    );
    for ep in &svc.endpoints {
        let _ = write!(
            out,
            "- addresses:\n  - \"{ep}\"\n  conditions:\n    ready: true\n"
        );
    }
    out
}

// ---- kube-proxy's iptables layout (as kube-proxy 1.20 writes it) ----

/// `KUBE-SVC-<hash>`: kube-proxy hashes the service port name and protocol (sha256, base32, 16
/// characters); any stable 16-character hash gives the same chain-name lengths.
pub fn svc_chain(svc: &Service) -> String {
    format!(
        "KUBE-SVC-{}",
        name_hash(&format!("{}tcp", svc.port_name()), 16)
    )
}

/// `KUBE-SEP-<hash>` of one endpoint of a service.
pub fn sep_chain(svc: &Service, ep: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        name_hash(&format!("{}tcp{ep}:{TARGET_PORT}", svc.port_name()), 16)
    )
}

/// The `iptables-restore --noflush` input kube-proxy 1.20 writes for these services: the whole
/// filter and nat tables it owns (each sync rewrites all of them). `initial` adds the jumps from
/// the built-in chains that kube-proxy installs once (`iptables -I`) before its first restore;
/// `stale_seps` are endpoint chains to delete (declared, which flushes them, then `-X`).
pub fn iptables_restore(services: &[Service], initial: bool, stale_seps: &[String]) -> String {
    let mut out = String::with_capacity(256 + services.len() * 3600);
    let masq_mark = "0x00004000/0x00004000";

    out.push_str("*filter\n");
    for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD"] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    if initial {
        out.push_str(
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n\
             -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        );
    }
    let _ = write!(
        out,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {masq_mark} -j ACCEPT\n\
         -A KUBE-FORWARD -s {CLUSTER_CIDR} -m comment --comment \"kubernetes forwarding conntrack pod source rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A KUBE-FORWARD -d {CLUSTER_CIDR} -m comment --comment \"kubernetes forwarding conntrack pod destination rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n"
    );

    out.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for svc in services {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(svc));
        for ep in &svc.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(svc, *ep));
        }
    }
    for chain in stale_seps {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    if initial {
        out.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        );
    }
    let _ = write!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {masq_mark} -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000\n"
    );
    for svc in services {
        let port_name = svc.port_name();
        let svc_chain = svc_chain(svc);
        // 1.20 keeps the "masquerade traffic from outside the cluster" rule in KUBE-SERVICES
        // next to the jump, so a packet crosses two rules per service it does not match.
        let matcher = format!(
            "-m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp -d {}/32 --dport {SERVICE_PORT}",
            svc.cluster_ip
        );
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES {matcher} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(out, "-A KUBE-SERVICES {matcher} -j {svc_chain}");
        let n = svc.endpoints.len();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            let sep = sep_chain(svc, *ep);
            if i + 1 < n {
                let _ = writeln!(
                    out,
                    "-A {svc_chain} -m comment --comment \"{port_name}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                );
            } else {
                let _ = writeln!(
                    out,
                    "-A {svc_chain} -m comment --comment \"{port_name}\" -j {sep}"
                );
            }
        }
        for ep in &svc.endpoints {
            let sep = sep_chain(svc, *ep);
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment \"{port_name}\" -s {ep}/32 -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                out,
                "-A {sep} -m comment --comment \"{port_name}\" -m tcp -p tcp -j DNAT --to-destination {ep}:{TARGET_PORT}"
            );
        }
    }
    out.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    for chain in stale_seps {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

// ---- kube-proxy's nftables layout (kube-proxy 1.31+ `--proxy-mode nftables`) ----

/// The service chain: `service-<hash>-<namespace>/<name>/tcp/<port name>`.
pub fn nft_service_chain(svc: &Service) -> String {
    let id = format!("{NAMESPACE}/{}/tcp/{PORT_NAME}", svc.name);
    format!("service-{}-{id}", name_hash(&id, 8))
}

/// An endpoint chain: `endpoint-<hash>-<service port>__<ip>/<port>`.
pub fn nft_endpoint_chain(svc: &Service, ep: Ipv4Addr) -> String {
    let id = format!(
        "{NAMESPACE}/{}/tcp/{PORT_NAME}__{ep}/{TARGET_PORT}",
        svc.name
    );
    format!("endpoint-{}-{id}", name_hash(&id, 8))
}

/// The table, sets, maps and base chains kube-proxy creates before any service.
pub fn nft_base(node_ip: Ipv4Addr) -> String {
    let t = "ip kube-proxy";
    let mut out = String::new();
    let _ = write!(
        out,
        "add table {t} {{ comment \"rules for kube-proxy\" ; }}\n\
         add set {t} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}\n\
         add set {t} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}\n\
         add map {t} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}\n\
         add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}\n\
         add map {t} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}\n\
         add map {t} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}\n\
         add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}\n\
         add chain {t} cluster-ips-check\n\
         add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}\n\
         add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}\n\
         add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}\n\
         add chain {t} filter-input {{ type filter hook input priority 0 ; }}\n\
         add chain {t} filter-output {{ type filter hook output priority 0 ; }}\n\
         add chain {t} firewall-check\n\
         add chain {t} mark-for-masquerade\n\
         add chain {t} masquerading\n\
         add chain {t} nat-output {{ type nat hook output priority -100 ; }}\n\
         add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}\n\
         add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}\n\
         add chain {t} nodeport-endpoints-check\n\
         add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}\n\
         add chain {t} services\n\
         add chain {t} service-endpoints-check\n\
         add rule {t} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"\n\
         add rule {t} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\"\n\
         add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check\n\
         add rule {t} filter-forward ct state new jump service-endpoints-check\n\
         add rule {t} filter-forward ct state new jump cluster-ips-check\n\
         add rule {t} filter-input ct state new jump nodeport-endpoints-check\n\
         add rule {t} filter-input ct state new jump service-endpoints-check\n\
         add rule {t} filter-output ct state new jump service-endpoints-check\n\
         add rule {t} filter-output-pre-dnat ct state new jump firewall-check\n\
         add rule {t} filter-output ct state new jump cluster-ips-check\n\
         add rule {t} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips\n\
         add rule {t} mark-for-masquerade mark set mark or 0x4000\n\
         add rule {t} masquerading mark and 0x4000 == 0 return\n\
         add rule {t} masquerading mark set mark xor 0x4000\n\
         add rule {t} masquerading masquerade fully-random\n\
         add rule {t} nat-output jump services\n\
         add rule {t} nat-postrouting jump masquerading\n\
         add rule {t} nat-prerouting jump services\n\
         add rule {t} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports\n\
         add rule {t} reject-chain reject\n\
         add rule {t} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {t} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
         add element {t} nodeport-ips {{ {node_ip} }}\n\
         add rule {t} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n"
    );
    out
}

/// The chains, rules and map elements of these services (all chains first, so every rule's
/// `goto` target exists when nft evaluates it).
pub fn nft_services(services: &[Service]) -> String {
    let t = "ip kube-proxy";
    let mut out = String::with_capacity(services.len() * 3000);
    for svc in services {
        let _ = writeln!(out, "add chain {t} {}", nft_service_chain(svc));
        for ep in &svc.endpoints {
            let _ = writeln!(out, "add chain {t} {}", nft_endpoint_chain(svc, *ep));
        }
    }
    for svc in services {
        write_nft_service_rules(&mut out, svc, false);
    }
    for svc in services {
        let _ = writeln!(out, "add element {t} cluster-ips {{ {} }}", svc.cluster_ip);
        let _ = writeln!(
            out,
            "add element {t} service-ips {{ {} . tcp . {SERVICE_PORT} : goto {} }}",
            svc.cluster_ip,
            nft_service_chain(svc)
        );
    }
    out
}

/// The transaction kube-proxy's nftables mode sends when one service's endpoints change: flush
/// and rewrite that service's chain and its endpoint chains, flush and delete the chain of the
/// endpoint that went away. The map elements do not change.
pub fn nft_update(svc: &Service, removed: Ipv4Addr) -> String {
    let mut out = String::new();
    write_nft_service_rules(&mut out, svc, true);
    let gone = nft_endpoint_chain(svc, removed);
    let _ = writeln!(out, "flush chain ip kube-proxy {gone}");
    let _ = writeln!(out, "delete chain ip kube-proxy {gone}");
    out
}

fn write_nft_service_rules(out: &mut String, svc: &Service, flush: bool) {
    let t = "ip kube-proxy";
    let chain = nft_service_chain(svc);
    if flush {
        let _ = writeln!(out, "add chain {t} {chain}");
        let _ = writeln!(out, "flush chain {t} {chain}");
    }
    let _ = writeln!(
        out,
        "add rule {t} {chain} ip daddr {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        svc.cluster_ip
    );
    let targets: Vec<String> = svc
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(svc, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {t} {chain} numgen random mod {} vmap {{ {} }}",
        svc.endpoints.len(),
        targets.join(" , ")
    );
    for ep in &svc.endpoints {
        let ep_chain = nft_endpoint_chain(svc, *ep);
        if flush {
            let _ = writeln!(out, "add chain {t} {ep_chain}");
            let _ = writeln!(out, "flush chain {t} {ep_chain}");
        }
        let _ = writeln!(
            out,
            "add rule {t} {ep_chain} ip saddr {ep} jump mark-for-masquerade"
        );
        let _ = writeln!(
            out,
            "add rule {t} {ep_chain} meta l4proto tcp dnat to {ep}:{TARGET_PORT}"
        );
    }
}

/// A stable base32 name hash of `len` (≤ 24) characters: two FNV-1a passes with different
/// offsets. kube-proxy uses sha256; the bench needs only distinct names of the same length.
fn name_hash(input: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |offset: u64| {
        input.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
        })
    };
    let bits =
        (u128::from(fnv(0xCBF2_9CE4_8422_2325)) << 64) | u128::from(fnv(0x84222325_CBF29CE4));
    (0..len.min(24))
        .map(|i| char::from(ALPHABET[((bits >> (5 * i)) & 31) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends() -> Vec<Ipv4Addr> {
        (1..=10).map(|i| Ipv4Addr::new(10, 244, i, 2)).collect()
    }

    #[test]
    fn cluster_ips_are_distinct_and_inside_the_service_range() {
        let set = service_set(10_000, &backends(), 1);
        let ips: HashSet<_> = set.iter().map(|s| s.cluster_ip).collect();
        assert_eq!(ips.len(), 10_000);
        for ip in ips {
            let o = ip.octets();
            assert!(o[0] == 10 && (96..112).contains(&o[1]), "{ip}");
        }
        assert_eq!(set, service_set(10_000, &backends(), 1), "deterministic");
    }

    #[test]
    fn chain_names_are_distinct() {
        let set = service_set(1000, &backends(), 7);
        let mut names = HashSet::new();
        for svc in &set {
            assert!(names.insert(svc_chain(svc)));
            assert!(names.insert(nft_service_chain(svc)));
            for ep in &svc.endpoints {
                assert!(names.insert(sep_chain(svc, *ep)));
                assert!(names.insert(nft_endpoint_chain(svc, *ep)));
            }
        }
        assert_eq!(svc_chain(&set[0]).len(), "KUBE-SVC-".len() + 16);
    }

    #[test]
    fn kube_yaml_has_a_service_and_a_slice_per_service() {
        let set = service_set(3, &backends(), 1);
        let yaml = kube_yaml(&set);
        assert_eq!(yaml.matches("kind: Service\n").count(), 3);
        assert_eq!(yaml.matches("kind: EndpointSlice\n").count(), 3);
        assert_eq!(yaml.matches("ready: true").count(), 30);
        assert!(yaml.contains(&format!("clusterIP: {}\n", set[2].cluster_ip)));
        assert!(yaml.contains(&format!("kubernetes.io/service-name: {}\n", set[1].name)));
    }

    #[test]
    fn iptables_layout_is_kube_proxys() {
        let set = service_set(2, &backends(), 1);
        let text = iptables_restore(&set, true, &[]);
        // Two KUBE-SERVICES rules per service plus the trailing nodeports jump.
        assert_eq!(text.matches("-A KUBE-SERVICES ").count(), 2 * 2 + 1);
        // Nine probabilities per service: 1/10, 1/9, ... 1/2, and a last unconditional jump.
        assert_eq!(text.matches("--mode random").count(), 18);
        assert!(text.contains("--probability 0.1000000000 "));
        assert!(text.contains("--probability 0.5000000000 "));
        assert_eq!(text.matches("-j DNAT").count(), 20);
        assert_eq!(text.matches("COMMIT\n").count(), 2);
        assert!(text.contains("-A PREROUTING"));
        assert!(!iptables_restore(&set, false, &[]).contains("-A PREROUTING"));

        let (updated, k, removed) = with_one_endpoint_removed(&set);
        let stale = sep_chain(&set[k], removed);
        let text = iptables_restore(&updated, false, std::slice::from_ref(&stale));
        assert!(text.contains(&format!(":{stale} - [0:0]\n")));
        assert!(text.contains(&format!("-X {stale}\n")));
        assert!(!text.contains(&format!("-j {stale}")));
    }

    #[test]
    fn nft_layout_is_kube_proxys() {
        let set = service_set(2, &backends(), 1);
        let text = nft_services(&set);
        assert_eq!(text.matches("numgen random mod 10 vmap").count(), 2);
        assert_eq!(text.matches(" dnat to ").count(), 20);
        assert_eq!(
            text.matches("add element ip kube-proxy service-ips")
                .count(),
            2
        );
        // Every chain is added before the first rule.
        let last_chain = text.rfind("add chain").unwrap_or(0);
        let first_rule = text.find("add rule").unwrap_or(0);
        assert!(last_chain < first_rule);

        let (updated, k, removed) = with_one_endpoint_removed(&set);
        let text = nft_update(&updated[k], removed);
        assert!(text.contains("numgen random mod 9 vmap"));
        assert!(text.contains(&format!(
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(&set[k], removed)
        )));
    }
}
