//! berth's Kubernetes source: the node agent's view of the cluster's API server.
//!
//! Kubernetes is the distributed engine: every node's agent lists and watches the API server
//! itself (as kube-proxy does) and programs only its own maps. This crate owns the API side of
//! that: the client configuration ([`ClientSource`]: a kubeconfig file, or the in-cluster
//! service-account mount), one `kube_runtime` watcher per kind, and the translation of watch
//! events into [`Update`]s the agent applies through the same reconcile path as `berth svc
//! apply` and `berth policy apply`.
//!
//! # What the agent receives
//!
//! * `Applied`/`Deleted` for single objects, as the watch reports them.
//! * `Relisted` with the complete set of a kind after every (re)list: at start, after a dropped
//!   watch, after the API server restarted or expired the resource version. The agent replaces
//!   everything it holds of that kind with the set, so objects deleted while the watch was down
//!   disappear and nothing is duplicated. Objects arriving during a relist are buffered until
//!   the list is complete: a half-listed kind is never applied.
//! * EndpointSlices always as `discovery.k8s.io/v1` objects: on API servers without v1 (before
//!   Kubernetes 1.21) the watcher reads `v1beta1` and converts ([`slices`]).
//!
//! Updates carry the instant they were received, so the agent can measure the programming
//! latency from an API event to its map write. [`batches`] coalesces what queued up while the
//! agent was busy into one batch: 10,000 Services created at once become a few large map
//! updates, not 10,000 small ones, and an idle agent applies a single change at once.
//!
//! # Health
//!
//! [`Health`] records, per kind, whether the first list completed, when the watch last failed
//! and with what error, and how many times it relisted; while the API server is unreachable
//! nothing is applied (the data plane keeps its last state) and [`Health::stale_seconds`] says
//! for how long the view has not been confirmed.

mod client;
mod health;
pub mod slices;
mod watch;

pub use client::{ClientError, ClientSource};
pub use health::{Health, KindHealth, KubeMetrics};
pub use k8s_openapi;
pub use kube::Client;
pub use watch::{Batch, Change, Kind, Received, Update, batches, spawn_watchers};
