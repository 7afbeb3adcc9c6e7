//! berth's service compiler: Kubernetes `Service` (v1) and `EndpointSlice`
//! (discovery.k8s.io/v1) objects in, the load balancer's desired frontends and backends out.
//!
//! The crate is pure: no kernel, no files, no network. The agent owns a [`Catalog`], persists it
//! (it is `Serialize`/`Deserialize`, as JSON), feeds it objects (`berth svc apply -f`, later a
//! Kubernetes watcher) and writes [`Catalog::frontends`] into the BPF maps described in
//! `berth_common::lb`.
//!
//! # Model
//!
//! ```text
//!  bytes ──Catalog::parse──▶ Vec<Object> ──Catalog::apply(ctx)──▶ Catalog ──frontends(ctx)──▶ Vec<Frontend>
//!  (YAML/JSON, List)        (typed k8s objects,   (validated,           (normalized         (sorted, backends
//!                            fully validated)      all-or-nothing)       ServiceEntry,       already chosen)
//!                                                                        SliceEntry)
//! ```
//!
//! * [`Catalog::parse`] reads multi-document YAML (`---`, anchors, merge keys), JSON (one or
//!   several concatenated objects) and `kind: List` / `ServiceList` / `EndpointSliceList`. It
//!   rejects other kinds, duplicate keys, unknown fields (k8s-openapi ignores them, so each
//!   object is round-tripped through its type and every input key must survive), values of the
//!   wrong type, and everything [`Catalog::apply`] would reject on its own; every message names
//!   the file, the document (1-based), the object and the field path, and all problems are
//!   reported at once.
//! * [`Catalog::apply`] validates every object first (including conflicts between services over
//!   the same frontend, and backend addresses against [`NodeContext::known_networks`]) and
//!   changes nothing unless all of them are valid. The catalog keeps a normalized form of each
//!   object ([`ServiceEntry`], [`SliceEntry`]), so "unchanged" means "nothing berth uses
//!   changed".
//! * [`Catalog::frontends`] compiles the stored objects for one node. It is a pure function of
//!   the catalog and the [`NodeContext`]: the node name decides which endpoints are local.
//!
//! # Semantics (kube-proxy 1.30)
//!
//! * Skipped, not errors (reported in [`ApplySummary`]): `type: ExternalName`, headless services
//!   (`clusterIP: None`), objects labelled `service.kubernetes.io/service-proxy-name` (another
//!   proxy owns them), EndpointSlices labelled `service.kubernetes.io/headless`, EndpointSlices
//!   whose `addressType` is not `IPv4`, IPv6-only services. Applying a skipped object removes an
//!   earlier stored version of it. IPv6 addresses in `clusterIPs`, `externalIPs` and
//!   load-balancer ingress are ignored: only IPv4 is served.
//! * berth allocates nothing: `spec.clusterIP` and, for NodePort/LoadBalancer services,
//!   `nodePort` must be given (any port 1-65535; the apiserver's 30000-32767 range is not
//!   enforced).
//! * An EndpointSlice belongs to the service named by its `kubernetes.io/service-name` label in
//!   its own namespace; it may arrive before the service. The backend port of a service port is
//!   the port of the slice port with the same name and protocol. Only an endpoint's first
//!   address is used (as kube-proxy does); the same `address:port` in several slices counts
//!   once, preferring a ready copy.
//! * Conditions: `ready` nil = true, `serving` nil = `ready` (as the API documents it;
//!   kube-proxy's code reads nil as true, which only differs for a not-ready terminating
//!   endpoint without `serving`), `terminating` nil = false. A frontend's backends are the
//!   ready candidates or, if none is ready, the serving terminating ones (kube-proxy's
//!   fallback, applied after the locality filter of a Local policy); if none, the frontend has
//!   no backends and the data plane rejects its traffic.
//! * Two services may not claim the same data-plane frontend (`address:port/protocol`, or
//!   `*:nodePort/protocol`); the apiserver prevents this in a cluster, berth checks it for
//!   files. Within one service, an address that is both an external and a load-balancer IP
//!   yields one frontend.
//! * Frontends per service port: [`FrontendKind::ClusterIp`] (internal scope; local endpoints
//!   only with `internalTrafficPolicy: Local`) per IPv4 cluster IP; [`FrontendKind::NodePort`],
//!   [`FrontendKind::ExternalIp`] and [`FrontendKind::LoadBalancer`] each twice: external scope
//!   (local endpoints only with `externalTrafficPolicy: Local`) and internal scope (always all
//!   cluster endpoints: in-cluster traffic to a node port or an external/LB IP short-circuits to
//!   the service, as kube-proxy does).

mod catalog;
mod compile;
mod error;
mod parse;
mod types;

#[cfg(test)]
mod tests;

pub use catalog::{Action, ApplySummary, Catalog, ObjectResult};
pub use compile::{
    EndpointEntry, ServiceEntry, ServicePortEntry, ServiceType, SliceEntry, SlicePort,
    TrafficPolicy,
};
pub use error::{Error, Problem};
pub use types::{
    Backend, BackendState, Frontend, FrontendKind, Kind, NodeContext, Object, ObjectKey, Protocol,
    Scope, ServiceRef,
};

/// The Kubernetes API types this crate reads (so callers build objects with the same version).
pub use k8s_openapi;

/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label handing a Service (or EndpointSlice) to another proxy: berth skips it.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on the slices of headless services: berth skips them.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Session affinity timeout when `sessionAffinityConfig.clientIP.timeoutSeconds` is absent.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Largest accepted session affinity timeout (one day), as the apiserver enforces.
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;
