//! berth: the node agent and its command line.
//!
//! - [`dataplane`]: loads the kernel programs, pins their maps and links under the pin root, and
//!   reports what is loaded (the same report from a live agent or from the pins alone).
//! - [`agent`]: the daemon: data plane + `/metrics` + the JSON API, until SIGTERM/SIGINT.
//! - [`config`]: flags, environment and config file, merged and validated.
//! - [`api`] / [`client`]: the JSON API on a unix socket and its client.
//! - [`metrics`]: the Prometheus exposition, read from the maps at scrape time.
//! - [`audit`] / [`audit_events`]: syscall audit rules into the kernel, its records into events.
//! - [`services`]: the desired services from files and the Kubernetes API server
//!   ([`kube_source`]), reconciled into the load-balancing maps.

pub mod agent;
pub mod api;
pub mod audit;
pub mod audit_cli;
pub mod audit_events;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod engine;
pub mod events;
pub mod kube_source;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod policy_cli;
pub mod runc_cli;
pub mod services;
pub mod state_file;
pub mod status;
pub mod svc_cli;

/// berth's version, as reported by `berth status` and the `berth_build_info` metric.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and its causes on one line, skipping a cause whose text the message before it
/// already shows (several of berth's errors quote their source).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
