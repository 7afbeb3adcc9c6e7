//! Egress masquerade for a pod CIDR: one nftables table per bridge.
//!
//! This is the one place the network module runs a command: there is no maintained nftables
//! netlink crate, and `nft -f -` applies a whole table atomically (one transaction). Links,
//! addresses and routes never go through a command (see `netlink.rs`).

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use super::{NetworkConfig, NetworkError};

/// The table of `bridge`'s masquerade rule (bridge names are valid nftables identifiers:
/// see `validate_bridge_name`).
pub fn table_name(bridge: &str) -> String {
    format!("berth_nat_{bridge}")
}

/// The ruleset [`ensure_masquerade`] applies. Declaring the table first makes the `delete`
/// valid when it does not exist yet; the transaction then recreates it, so applying it twice,
/// or after a pod CIDR change, leaves exactly one current rule.
pub fn masquerade_ruleset(config: &NetworkConfig) -> String {
    let table = table_name(&config.bridge);
    format!(
        "table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {subnet} oifname != \"{bridge}\" masquerade\n\
         \t}}\n\
         }}\n",
        subnet = config.subnet,
        bridge = config.bridge,
    )
}

/// Makes traffic from the pod CIDR leaving through any interface but the bridge carry the
/// host's address. Idempotent.
pub fn ensure_masquerade(config: &NetworkConfig) -> Result<(), NetworkError> {
    nft(&masquerade_ruleset(config))
}

/// Removes `bridge`'s table; Ok(false) if there was none.
pub fn remove_masquerade(bridge: &str) -> Result<bool, NetworkError> {
    let table = table_name(bridge);
    let exists = Command::new(nft_path())
        .args(["list", "table", "ip", &table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| nft_missing(&e))?
        .success();
    if !exists {
        return Ok(false);
    }
    nft(&format!("delete table ip {table}\n"))?;
    Ok(true)
}

fn nft_path() -> PathBuf {
    // `nft` lives in sbin, which a non-login root shell's PATH may lack.
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

fn nft_missing(e: &std::io::Error) -> NetworkError {
    NetworkError::Nft(format!(
        "running nft: {e} (install nftables: `cargo xtask setup` does, or apt-get install nftables)"
    ))
}

fn nft(script: &str) -> Result<(), NetworkError> {
    let mut child = Command::new(nft_path())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| nft_missing(&e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| NetworkError::Nft(format!("writing the ruleset to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(NetworkError::Nft(format!(
            "nft -f - failed ({}): {}\nruleset:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_the_pod_cidr_off_the_bridge() {
        let config = NetworkConfig::new("br-t.1", "10.201.9.0/24", std::path::Path::new("/x"))
            .expect("config");
        let rules = masquerade_ruleset(&config);
        assert!(rules.starts_with("table ip berth_nat_br-t.1\ndelete table ip berth_nat_br-t.1\n"));
        assert!(
            rules.contains("ip saddr 10.201.9.0/24 oifname != \"br-t.1\" masquerade"),
            "{rules}"
        );
        assert!(rules.contains("type nat hook postrouting priority srcnat;"));
    }
}
