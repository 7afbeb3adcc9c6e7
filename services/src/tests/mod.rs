//! Unit tests. Objects are mostly built as JSON values (no indentation mistakes) and go through
//! `Catalog::parse` like a file would; `parse.rs` covers YAML itself.

#![allow(clippy::unwrap_used)]

mod apply;
mod bench;
mod frontends;
mod parse;
mod service;
mod slice;

use serde_json::{Value, json};

use crate::{BackendState, Catalog, Error, Frontend, NodeContext, Object};

pub(super) const NODE: &str = "node-a";

pub(super) fn ctx() -> NodeContext {
    NodeContext::new(NODE)
}

/// A Service in namespace `default` with the given spec.
pub(super) fn svc(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    })
}

/// The common case: ClusterIP `ip`, one port `80/TCP` named `http`.
pub(super) fn cluster_svc(name: &str, ip: &str) -> Value {
    svc(
        name,
        json!({"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
    )
}

/// An EndpointSlice of `service` in namespace `default`.
pub(super) fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// A slice with one port `http` = 8080/TCP.
pub(super) fn http_slice(name: &str, service: &str, endpoints: Value) -> Value {
    slice(
        name,
        service,
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        endpoints,
    )
}

/// An endpoint on `node` with the given conditions (None = field absent).
pub(super) fn ep(
    addr: &str,
    node: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Value {
    let mut conditions = serde_json::Map::new();
    for (k, v) in [
        ("ready", ready),
        ("serving", serving),
        ("terminating", terminating),
    ] {
        if let Some(v) = v {
            conditions.insert(k.into(), v.into());
        }
    }
    json!({"addresses": [addr], "nodeName": node, "conditions": conditions})
}

/// A ready endpoint on `node`.
pub(super) fn ready(addr: &str, node: &str) -> Value {
    ep(addr, node, Some(true), Some(true), Some(false))
}

/// A terminating endpoint that still serves.
pub(super) fn draining(addr: &str, node: &str) -> Value {
    ep(addr, node, Some(false), Some(true), Some(true))
}

/// Concatenated JSON documents, as a file would hold them.
pub(super) fn bytes(docs: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in docs {
        out.extend(serde_json::to_vec_pretty(d).unwrap());
        out.push(b'\n');
    }
    out
}

pub(super) fn objects(docs: &[Value]) -> Vec<Object> {
    match Catalog::parse(&bytes(docs), "test.json") {
        Ok(o) => o,
        Err(e) => panic!("parse failed:\n{e}"),
    }
}

/// The error of parsing `docs`, displayed.
pub(super) fn parse_error(docs: &[Value]) -> String {
    match Catalog::parse(&bytes(docs), "test.json") {
        Ok(o) => panic!("parse succeeded: {o:#?}"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn catalog(docs: &[Value]) -> Catalog {
    let mut c = Catalog::new();
    if let Err(e) = c.apply(objects(docs), &ctx()) {
        panic!("apply failed:\n{e}");
    }
    c
}

pub(super) fn apply_error(c: &mut Catalog, docs: &[Value], ctx: &NodeContext) -> Error {
    match c.apply(objects(docs), ctx) {
        Ok(s) => panic!("apply succeeded: {s}"),
        Err(e) => e,
    }
}

/// `web/http ClusterIP internal 10.96.0.1:80/TCP -> [10.0.0.1:8080 10.0.0.2:8080~]`
/// (`~` = terminating), plus ` affinity=N` when set.
pub(super) fn render(f: &Frontend) -> String {
    let backends: Vec<String> = f
        .backends
        .iter()
        .map(|b| match b.state {
            BackendState::Ready => format!("{}:{}", b.addr, b.port),
            BackendState::Terminating => format!("{}:{}~", b.addr, b.port),
        })
        .collect();
    let affinity = f
        .affinity_timeout
        .map(|t| format!(" affinity={t}"))
        .unwrap_or_default();
    format!(
        "{}/{} {} {} {} -> [{}]{affinity}",
        f.service.name,
        f.port_name,
        f.kind,
        f.scope,
        f.address(),
        backends.join(" ")
    )
}

pub(super) fn rendered(c: &Catalog, ctx: &NodeContext) -> Vec<String> {
    c.frontends(ctx).iter().map(render).collect()
}

/// Asserts `haystack` contains every needle, with a readable failure.
#[track_caller]
pub(super) fn assert_contains(haystack: &str, needles: &[&str]) {
    for n in needles {
        assert!(haystack.contains(n), "expected {n:?} in:\n{haystack}");
    }
}
