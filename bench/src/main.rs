//! `berth-bench`: benchmarks that measure berth side by side with the baseline a user would
//! otherwise run, interleaved in one run, reported as medians and ratios.
//!
//! - `runtime`: container create+start+wait+delete of a busybox `/bin/true` bundle, berth-runc
//!   vs crun vs runc (Debian's packages).
//! - `services`: kube-proxy's job (a pod connecting to a ClusterIP, and programming the
//!   services) at 1 to 10,000 services, berth vs kube-proxy's iptables and nftables layouts.
//! - `policy`: NetworkPolicy enforcement (new connections, established flows, applying a change)
//!   at 10 to 10,000 rules, berth vs the same rules as iptables chains, against no policy.
//! - `audit`: syscall auditing's overhead on syscall-heavy work in a cgroup (a tight openat
//!   loop, extracting an archive, a fork+exec storm), berth's counts and events modes vs a
//!   bpftrace counter, bpftrace printf, `strace -f` and auditd, and berth's event delivery.

mod audit;
mod kube;
mod policy;
mod runtime;
mod services;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Container start latency: berth-runc vs crun vs runc.
    Runtime(runtime::Args),
    /// Service load balancing: berth vs kube-proxy's iptables and nftables layouts.
    Services(services::Args),
    /// NetworkPolicy enforcement: berth vs the same rules as iptables chains.
    Policy(policy::Args),
    /// Syscall auditing: berth vs bpftrace, strace and auditd.
    Audit(audit::Args),
    /// Kubernetes node agent: berth vs the real kube-proxy 1.20.2 against one API server.
    Kube(crate::kube::Args),
    /// The prober `kube` runs in each node namespace (internal).
    #[command(hide = true)]
    KubeProbe(crate::kube::ProbeArgs),
    /// The workload `audit` runs inside the audited cgroup (internal).
    #[command(hide = true)]
    AuditWorker(audit::WorkerArgs),
    /// The load generator `services` runs in the client pod (internal).
    #[command(hide = true)]
    ServicesLoad(services::WorkerArgs),
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Runtime(args) => runtime::run(&args),
        Bench::Services(args) => services::run(&args),
        Bench::ServicesLoad(args) => services::worker(&args),
        Bench::Policy(args) => policy::run(&args),
        Bench::Audit(args) => audit::run(&args),
        Bench::AuditWorker(args) => audit::worker(&args),
        Bench::Kube(args) => crate::kube::run(&args),
        Bench::KubeProbe(args) => crate::kube::worker(&args),
    }
}

/// What one measurement slot of a side-by-side benchmark gave.
pub enum Outcome<S> {
    Done(S, Vec<String>),
    Timeout(String),
    Failed(String),
}

/// One (size, mode) cell of a side-by-side benchmark's results.
pub struct Cell<S> {
    pub samples: Vec<S>,
    /// Why there are no (more) samples: timeout, error, unavailable, skipped.
    pub status: Option<String>,
    pub notes: std::collections::BTreeSet<String>,
}

impl<S> Default for Cell<S> {
    fn default() -> Self {
        Self {
            samples: Vec::new(),
            status: None,
            notes: Default::default(),
        }
    }
}

/// Appends a footnote per note (its first line; tool errors can run to pages) labelled
/// `label`, and returns the row's marks (` [1,2]`, or empty).
pub fn footnote_marks<'a>(
    footnotes: &mut Vec<String>,
    label: &str,
    notes: impl Iterator<Item = &'a String>,
) -> String {
    let mut marks = Vec::new();
    for note in notes {
        let mut lines = note.lines();
        let mut short = lines.next().unwrap_or("").to_owned();
        let more = lines.count();
        if more > 0 {
            short.push_str(&format!(" (+{more} lines)"));
        }
        footnotes.push(format!("{label}: {short}"));
        marks.push(footnotes.len().to_string());
    }
    if marks.is_empty() {
        String::new()
    } else {
        format!(" [{}]", marks.join(","))
    }
}

/// Median and percentile of a sorted sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::{percentile, thousands};

    #[test]
    fn percentiles_of_a_sorted_sample() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&s, 50.0), 3.0);
        assert_eq!(percentile(&s, 0.0), 1.0);
        assert_eq!(percentile(&s, 100.0), 5.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(-0.2), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(26_658.4), "26,658");
        assert_eq!(thousands(-1234.0), "-1,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}

/// `v` rounded, with thousands separators: `26,658`, `-1,234`.
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

/// Finding what a killed run left behind: pins, cgroups, interfaces and directories are named
/// `<prefix><pid>…`; a name whose pid no longer runs is a leftover to remove.
pub mod leftovers {
    use std::path::Path;

    /// The pid in `name` after `prefix`, if the name is one of ours.
    pub fn owner(name: &str, prefix: &str) -> Option<u32> {
        let digits: String = name
            .strip_prefix(prefix)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// Whether `pid` is gone (and is not this process).
    pub fn dead(pid: u32) -> bool {
        pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
    }

    /// The names in `dir` (none when it cannot be read).
    pub fn entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|e| {
                e.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
