//! The rule sets every mode programs, generated from one list of allowed sources: N − 1 filler
//! /32s in 172.16.0.0/12 (addresses no packet of the bench ever carries) followed by the client
//! pod's /32, so a first-match engine walks every rule before it accepts the client. Each
//! source is allowed to TCP port [`PORT`] only.
//!
//! - berth: one NetworkPolicy selecting `app=server`, one ingress rule per source (`ipBlock`
//!   + port), applied with `berth policy apply -f`.
//! - iptables: what iptables-based policy engines (kube-router, Calico) program for a pod:
//!   established flows accepted first, then new TCP flows jump to a per-pod chain that walks the
//!   rules in order and ends in DROP. Programmed in the server pod's network namespace with one
//!   `iptables-restore` of the whole filter table.

use std::{fmt::Write as _, net::Ipv4Addr};

/// The port every rule allows; the server listens on it.
pub const PORT: u16 = 8080;
/// A port the server also listens on and no rule allows: a policy in force must refuse it.
pub const DENIED_PORT: u16 = 8081;
/// The NetworkPolicy's name (namespace `default`).
pub const POLICY_NAME: &str = "bench-server";
/// The pod's firewall chain, named as kube-router names its per-pod chains.
pub const CHAIN: &str = "KUBE-POD-FW-BENCH";
/// The largest rule count: the fillers must fit in 172.16.0.0/12 (and stay readable).
pub const MAX_RULES: usize = 100_000;

/// Filler source `i` (0-based): 172.16.0.1 onwards.
pub fn filler(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i as u32)
}

/// The `n` allowed sources: `n − 1` fillers, then `client` last.
pub fn sources(n: usize, client: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = (0..n.saturating_sub(1)).map(filler).collect();
    v.push(client);
    v
}

/// The sources after "one more rule": a new filler inserted just before the client (which
/// stays last). Returns the new list, the added source and its 1-based position.
pub fn with_one_more(sources: &[Ipv4Addr]) -> (Vec<Ipv4Addr>, Ipv4Addr, usize) {
    let added = filler(sources.len() - 1);
    let mut v = sources.to_vec();
    let pos = v.len() - 1;
    v.insert(pos, added);
    (v, added, pos + 1)
}

/// The NetworkPolicy: `app=server` pods in `default` accept TCP [`PORT`] from each source.
pub fn policy_yaml(sources: &[Ipv4Addr]) -> String {
    let mut out = String::with_capacity(120 + sources.len() * 72);
    let _ = write!(
        out,
        "apiVersion: networking.k8s.io/v1\n\
         kind: NetworkPolicy\n\
         metadata: {{name: {POLICY_NAME}, namespace: default}}\n\
         spec:\n  \
           podSelector: {{matchLabels: {{app: server}}}}\n  \
           policyTypes: [Ingress]\n  \
           ingress:\n"
    );
    for s in sources {
        let _ = writeln!(
            out,
            "  - from: [{{ipBlock: {{cidr: {s}/32}}}}]\n    ports: [{{port: {PORT}}}]"
        );
    }
    out
}

fn rule(source: Ipv4Addr) -> String {
    format!("-s {source}/32 -p tcp -m tcp --dport {PORT} -j ACCEPT")
}

/// The whole filter table for `iptables-restore` (no `--noflush`: the table is replaced in
/// one transaction, as kube-router syncs it).
pub fn iptables_table(sources: &[Ipv4Addr]) -> String {
    let mut out = String::with_capacity(400 + sources.len() * 80);
    let _ = write!(
        out,
        "*filter\n\
         :INPUT ACCEPT [0:0]\n\
         :FORWARD ACCEPT [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n\
         :{CHAIN} - [0:0]\n\
         -A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A INPUT -p tcp -j {CHAIN}\n"
    );
    for &s in sources {
        let _ = writeln!(out, "-A {CHAIN} {}", rule(s));
    }
    let _ = write!(out, "-A {CHAIN} -j DROP\nCOMMIT\n");
    out
}

/// One rule inserted at `position` (1-based) of the chain, for `iptables-restore --noflush`.
pub fn iptables_insert(source: Ipv4Addr, position: usize) -> String {
    format!("*filter\n-I {CHAIN} {position} {}\nCOMMIT\n", rule(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_last_and_fillers_are_distinct() {
        let client = Ipv4Addr::new(10, 202, 0, 3);
        let s = sources(1000, client);
        assert_eq!(s.len(), 1000);
        assert_eq!(s[999], client);
        let set: std::collections::BTreeSet<_> = s.iter().collect();
        assert_eq!(set.len(), 1000);
        assert_eq!(sources(1, client), vec![client]);
        assert_eq!(filler(255), Ipv4Addr::new(172, 16, 1, 0));
        assert!(
            u32::from(filler(MAX_RULES)) < u32::from(Ipv4Addr::new(172, 32, 0, 0)),
            "fillers stay in 172.16.0.0/12"
        );
        let (more, added, pos) = with_one_more(&s);
        assert_eq!(more.len(), 1001);
        assert_eq!(more[1000], client);
        assert_eq!(more[pos - 1], added);
        assert!(!s.contains(&added));
    }

    #[test]
    fn the_rule_texts() {
        let client = Ipv4Addr::new(10, 202, 0, 3);
        let s = sources(3, client);
        let yaml = policy_yaml(&s);
        assert_eq!(yaml.matches("ipBlock").count(), 3);
        assert!(yaml.contains("cidr: 10.202.0.3/32"));
        let table = iptables_table(&s);
        assert_eq!(table.matches(&format!("-A {CHAIN} -s")).count(), 3);
        assert!(table.ends_with(&format!("-A {CHAIN} -j DROP\nCOMMIT\n")));
        let client_rule = table.find("-s 10.202.0.3/32").unwrap_or(0);
        assert!(client_rule > table.find("-s 172.16.0.2/32").unwrap_or(usize::MAX));
        assert!(iptables_insert(filler(2), 3).contains(&format!("-I {CHAIN} 3 -s 172.16.0.3/32")));
    }
}
