//! Helpers for berth's privileged end-to-end tests.
//!
//! - [`privileged::require_root`]: a test that needs root fails with a clear message under
//!   `CI=true`, and says loudly that it skipped otherwise; it never passes silently.
//! - [`netns::NetnsPair`]: a network namespace with a veth pair to the host, removed on drop.
//! - [`packet`]: crafted Ethernet frames (valid and hostile) for packet-path tests.
//! - [`prog_test_run::TestRun`]: run a kernel program on a frame with `BPF_PROG_TEST_RUN` and
//!   check its verdict, output bytes and maps.
//! - [`bundle::TestBundle`]: a busybox OCI bundle with the static checker, run by `berth-runc`.
//! - [`agent::AgentProcess`]: a `berth agent` child on a private pin root, socket and port.
//! - [`network::NetEnv`]: a private engine on a private bridge and pod CIDR, torn down on drop.
//! - [`kube_cluster::KubeCluster`]: a real Kubernetes 1.20.2 control plane (etcd, API server,
//!   controller manager) in its own network namespace, torn down on drop.
//!
//! Tests using these run single-threaded (`--test-threads=1`): they share the kernel.

pub mod agent;
pub mod bundle;
pub mod cluster;
pub mod kube_cluster;
pub mod netns;
pub mod network;
pub mod packet;
pub mod privileged;
pub mod prog_test_run;

/// A unique suffix for names of kernel objects a test creates (netns, veth, pin roots).
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
