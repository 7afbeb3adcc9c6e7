//! A network namespace joined to the host by a veth pair, torn down on drop (also when the test
//! panics). Addresses come from a /30 the caller picks inside 10.0.0.0/8 test ranges; traffic
//! stays between the host end and the namespace end.

use std::process::Command;

use anyhow::{Context as _, bail};

/// `ip netns add <ns>` + veth `<host_if>` (host) ↔ `<ns_if>` (in ns), both up and addressed.
pub struct NetnsPair {
    pub ns: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: String,
    pub ns_addr: String,
}

impl NetnsPair {
    /// Creates the pair. `subnet_octet` picks 10.251.<octet>.0/30 so concurrent fixtures differ.
    pub fn create(tag: &str, subnet_octet: u8) -> anyhow::Result<Self> {
        let suffix = crate::unique_suffix();
        let pair = NetnsPair {
            ns: format!("bt-{tag}-{suffix}"),
            host_if: format!("bth{suffix}"),
            ns_if: format!("btn{suffix}"),
            host_addr: format!("10.251.{subnet_octet}.1"),
            ns_addr: format!("10.251.{subnet_octet}.2"),
        };
        // From here on, drop cleans up whatever part was made.
        ip(&["netns", "add", &pair.ns])?;
        ip(&[
            "link",
            "add",
            &pair.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &pair.ns_if,
            "netns",
            &pair.ns,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", pair.host_addr),
            "dev",
            &pair.host_if,
        ])?;
        ip(&["link", "set", &pair.host_if, "up"])?;
        pair.exec_ip(&[
            "addr",
            "add",
            &format!("{}/30", pair.ns_addr),
            "dev",
            &pair.ns_if,
        ])?;
        pair.exec_ip(&["link", "set", &pair.ns_if, "up"])?;
        pair.exec_ip(&["link", "set", "lo", "up"])?;
        Ok(pair)
    }

    /// `ip -n <ns> ARGS`.
    pub fn exec_ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.ns.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a command inside the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.ns))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in {} failed: {}",
                self.ns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, which deletes the host end too.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
