//! EndpointSlices from API servers of either generation.
//!
//! `discovery.k8s.io/v1` came with Kubernetes 1.21; 1.16-1.20 serve only `v1beta1` (and 1.25
//! removed it). berth compiles v1 objects, so a v1beta1 slice is converted on arrival. The
//! versions differ in little that berth reads:
//! * v1beta1 `endpoints[].topology` became v1 `deprecatedTopology` (plus `zone`);
//! * the node of an endpoint is v1beta1 `nodeName` (1.20 with the `EndpointSliceNodeName` gate)
//!   or, before it, `topology["kubernetes.io/hostname"]`, which the EndpointSlice controller
//!   always sets; v1 has only `nodeName`.
//!
//! Everything else (addresses, conditions, ports, targetRef, hostname, labels) has the same
//! shape and is carried over unchanged.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    Client,
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::Value;

/// Which EndpointSlice version the API server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceVersion {
    V1,
    V1beta1,
}

impl SliceVersion {
    pub fn api_version(self) -> &'static str {
        match self {
            SliceVersion::V1 => "discovery.k8s.io/v1",
            SliceVersion::V1beta1 => "discovery.k8s.io/v1beta1",
        }
    }

    /// The dynamic resource for v1beta1 (k8s-openapi no longer has its types).
    pub fn v1beta1_resource() -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice"),
            "endpointslices",
        )
    }
}

/// Asks the API server's discovery which version to watch: v1 when it lists `endpointslices`
/// under `discovery.k8s.io/v1`, v1beta1 when that group version is absent (404).
pub async fn detect_version(client: &Client) -> Result<SliceVersion, kube::Error> {
    match client
        .list_api_group_resources(SliceVersion::V1.api_version())
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
            Ok(SliceVersion::V1)
        }
        Ok(_) => Ok(SliceVersion::V1beta1),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(SliceVersion::V1beta1),
        Err(e) => Err(e),
    }
}

/// [`detect_version`] until the API server answers, with backoff (0.5 s doubling to 30 s). The
/// failures show in `health` as EndpointSlice errors: the data plane keeps its last state
/// meanwhile.
pub async fn discover_version(client: &Client, health: &crate::Health) -> SliceVersion {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        match detect_version(client).await {
            Ok(v) => return v,
            Err(e) => {
                health.record_error(crate::Kind::EndpointSlice, format!("discovery: {e}"));
                tracing::warn!(error = %e, retry_in = ?delay, "Kubernetes API discovery failed; the data plane keeps its last state");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

/// Converts a v1beta1 EndpointSlice (as the dynamic client decoded it) to v1.
pub fn from_v1beta1(object: DynamicObject) -> Result<EndpointSlice, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    convert_v1beta1(&mut value);
    serde_json::from_value(value)
}

/// The field-level conversion on the JSON form (see the module comment).
pub fn convert_v1beta1(value: &mut Value) {
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "apiVersion".into(),
            Value::String(SliceVersion::V1.api_version().into()),
        );
        obj.insert("kind".into(), Value::String("EndpointSlice".into()));
    }
    let Some(endpoints) = value.get_mut("endpoints").and_then(Value::as_array_mut) else {
        return;
    };
    for endpoint in endpoints.iter_mut().filter_map(Value::as_object_mut) {
        let Some(topology) = endpoint.remove("topology") else {
            continue;
        };
        if !endpoint.contains_key("nodeName")
            && let Some(node) = topology
                .get("kubernetes.io/hostname")
                .and_then(Value::as_str)
        {
            endpoint.insert("nodeName".into(), Value::String(node.to_owned()));
        }
        if !endpoint.contains_key("zone")
            && let Some(zone) = topology
                .get("topology.kubernetes.io/zone")
                .and_then(Value::as_str)
        {
            endpoint.insert("zone".into(), Value::String(zone.to_owned()));
        }
        endpoint.insert("deprecatedTopology".into(), topology);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What a 1.20 API server sends (EndpointSliceNodeName and EndpointSliceTerminatingCondition
    /// on), for one endpoint with nodeName and one with only the topology label.
    fn v1beta1() -> Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "web-abcde",
                "namespace": "shop",
                "labels": {"kubernetes.io/service-name": "web"},
                "resourceVersion": "42"
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": ["10.0.0.1"],
                    "conditions": {"ready": false, "serving": true, "terminating": true},
                    "nodeName": "node1",
                    "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-1"},
                    "topology": {"kubernetes.io/hostname": "node1", "topology.kubernetes.io/zone": "z1"}
                },
                {
                    "addresses": ["10.0.0.2"],
                    "conditions": {"ready": true},
                    "topology": {"kubernetes.io/hostname": "node2"}
                },
                {"addresses": ["10.0.0.3"]}
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        })
    }

    #[test]
    fn v1beta1_converts_to_v1_keeping_what_berth_reads() {
        let object: DynamicObject = serde_json::from_value(v1beta1()).expect("dynamic");
        let slice = from_v1beta1(object).expect("converts");
        assert_eq!(slice.metadata.name.as_deref(), Some("web-abcde"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(slice.address_type, "IPv4");
        let ports = slice.ports.expect("ports");
        assert_eq!(ports[0].port, Some(8080));
        let endpoints = slice.endpoints.unwrap_or_default();
        let [a, b, c] = &endpoints[..] else {
            panic!("three endpoints: {endpoints:?}")
        };
        assert_eq!(a.node_name.as_deref(), Some("node1"));
        assert_eq!(a.zone.as_deref(), Some("z1"));
        let cond = a.conditions.as_ref().expect("conditions");
        assert_eq!(
            (cond.ready, cond.serving, cond.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(
            a.target_ref.as_ref().and_then(|t| t.name.as_deref()),
            Some("web-1")
        );
        assert_eq!(
            a.deprecated_topology
                .as_ref()
                .and_then(|t| t.get("kubernetes.io/hostname"))
                .map(String::as_str),
            Some("node1")
        );
        // Only the topology label names the node: it becomes nodeName.
        assert_eq!(b.node_name.as_deref(), Some("node2"));
        assert_eq!(c.node_name, None);
        assert_eq!(c.addresses, vec!["10.0.0.3".to_owned()]);
    }

    #[test]
    fn an_explicit_node_name_is_not_overridden_by_topology() {
        let mut value = v1beta1();
        value["endpoints"][0]["topology"]["kubernetes.io/hostname"] = json!("elsewhere");
        convert_v1beta1(&mut value);
        assert_eq!(value["endpoints"][0]["nodeName"], "node1");
        assert_eq!(value["apiVersion"], "discovery.k8s.io/v1");
    }

    /// An API server that answers discovery of `discovery.k8s.io/v1` with `status` (404 on
    /// 1.20, the resource list on 1.21+).
    fn discovery(status: u16) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let path = req.uri().path().to_owned();
            async move {
                let body = if status == 404 {
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("the server could not find the requested resource {path}")})
                } else {
                    json!({"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": "discovery.k8s.io/v1",
                        "resources": [{"name": "endpointslices", "singularName": "endpointslice",
                            "namespaced": true, "kind": "EndpointSlice",
                            "verbs": ["get", "list", "watch"]}]})
                };
                let mut response = http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from(body.to_string()),
                ));
                *response.status_mut() = http::StatusCode::from_u16(status).expect("status");
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn discovery_picks_v1beta1_on_old_servers_and_v1_on_new_ones() {
        assert_eq!(
            detect_version(&discovery(404))
                .await
                .expect("404 is an answer"),
            SliceVersion::V1beta1
        );
        assert_eq!(
            detect_version(&discovery(200)).await.expect("v1"),
            SliceVersion::V1
        );
        assert!(
            detect_version(&discovery(503)).await.is_err(),
            "an unavailable server is retried, not taken for an old one"
        );
    }

    #[test]
    fn a_slice_without_endpoints_converts() {
        let mut value = v1beta1();
        value.as_object_mut().expect("object").remove("endpoints");
        let object: DynamicObject = serde_json::from_value(value).expect("dynamic");
        // A slice of a service with no endpoints yet has no `endpoints` at all.
        let slice = from_v1beta1(object).expect("converts");
        assert!(slice.endpoints.unwrap_or_default().is_empty());
    }
}
