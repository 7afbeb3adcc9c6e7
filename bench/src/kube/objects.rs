//! The API objects: N Services without selectors (ClusterIP set explicitly, so the probers know
//! every address before the first create) and one EndpointSlice per Service
//! (`discovery.k8s.io/v1beta1`, the only version 1.20 serves) with 10 ready endpoints on this
//! node. Nothing is derived by a controller: 100,000 Pods would swamp a 1.20 API server on two
//! cores, and the slices are what both contenders consume.
//!
//! Created through kube-rs with a bounded number of requests in flight (`--create-with
//! kube-rs`), or as List files through `kubectl create -f` (`--create-with kubectl`).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::Command,
    time::{Duration, SystemTime},
};

use ::kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use anyhow::{Context as _, Result, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};

use super::node::{ENDPOINTS, SERVICE_PORT, TARGET_PORT, backend_ip};

pub const NAMESPACE: &str = "default";
/// The annotation kube-proxy measures its network programming latency from.
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// ClusterIP of service `i`: 10.96.1.1 onwards, 250 per /24 (10.96.0.1 is `kubernetes`).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (1 + i / 250) as u8, (1 + i % 250) as u8)
}

pub fn service_name(i: usize) -> String {
    format!("svc{i}")
}

fn slice_name(i: usize) -> String {
    format!("svc{i}-bench")
}

fn service_json(i: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NAMESPACE},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip(i).to_string(),
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": TARGET_PORT}],
        },
    })
}

/// Endpoints of backend set `set` (0 = A, 1 = B).
fn endpoints_json(set: usize, node: &str) -> Value {
    (0..ENDPOINTS)
        .map(|k| {
            json!({
                "addresses": [backend_ip(set * ENDPOINTS + k).to_string()],
                "conditions": {"ready": true},
                "topology": {"kubernetes.io/hostname": node},
                "nodeName": node,
            })
        })
        .collect()
}

/// RFC 3339 with nanoseconds, UTC (what kube-proxy parses from the trigger-time annotation).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

fn slice_json(i: usize, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(i),
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": service_name(i),
                "endpointslice.kubernetes.io/managed-by": "berth-bench",
            },
            "annotations": {TRIGGER_TIME: rfc3339_nano(SystemTime::now())},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints_json(0, node),
    })
}

fn slice_resource() -> ApiResource {
    ApiResource {
        group: "discovery.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "discovery.k8s.io/v1beta1".into(),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    }
}

fn service_resource() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Service".into(),
        plural: "services".into(),
    }
}

/// A kube-rs client of the cluster and the runtime it runs on.
pub struct Objects {
    rt: tokio::runtime::Runtime,
    services: Api<DynamicObject>,
    slices: Api<DynamicObject>,
    node: String,
}

impl Objects {
    pub fn new(kubeconfig: &Path, node: &str) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = rt.block_on(async {
            let kc = Kubeconfig::read_from(kubeconfig)?;
            let mut config =
                ::kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
            config.connect_timeout = Some(Duration::from_secs(10));
            config.read_timeout = Some(Duration::from_secs(60));
            config.write_timeout = Some(Duration::from_secs(60));
            anyhow::Ok(Client::try_from(config)?)
        })?;
        Ok(Self {
            services: Api::namespaced_with(client.clone(), NAMESPACE, &service_resource()),
            slices: Api::namespaced_with(client, NAMESPACE, &slice_resource()),
            rt,
            node: node.to_owned(),
        })
    }

    /// Creates services `0..n` and their slices, `concurrency` services in flight (each: its
    /// Service, then its slice), in index order; bounded by `limit`.
    pub fn create_all(&self, n: usize, concurrency: usize, limit: Duration) -> Result<()> {
        let pp = PostParams::default();
        let work = futures_util::stream::iter(0..n)
            .map(|i| {
                let pp = &pp;
                async move {
                    let svc: DynamicObject = serde_json::from_value(service_json(i))?;
                    self.services
                        .create(pp, &svc)
                        .await
                        .with_context(|| format!("creating service {i}"))?;
                    let slice: DynamicObject = serde_json::from_value(slice_json(i, &self.node))?;
                    self.slices
                        .create(pp, &slice)
                        .await
                        .with_context(|| format!("creating the slice of service {i}"))?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>();
        self.rt.block_on(async {
            match tokio::time::timeout(limit, work).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => bail!("creating {n} services and slices took over {limit:?}"),
            }
        })
    }

    /// Moves service `i`'s slice to backend set `set` (its 10 endpoints replaced at once: one
    /// write, one watch event) and stamps the trigger-time annotation with the write's start.
    pub fn set_backends(&self, i: usize, set: usize) -> Result<()> {
        let patch = json!({
            "metadata": {"annotations": {TRIGGER_TIME: rfc3339_nano(SystemTime::now())}},
            "endpoints": endpoints_json(set, &self.node),
        });
        self.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                self.slices.patch(
                    &slice_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ),
            )
            .await
            .context("patching a slice took over 30 s")?
            .with_context(|| format!("patching the slice of service {i}"))
        })?;
        Ok(())
    }
}

/// The same objects as List files (services first, then slices, each in chunks of `chunk`) for
/// `kubectl create -f`; returns the files in the order to create them.
pub fn write_lists(
    dir: &Path,
    n: usize,
    node: &str,
    chunk: usize,
) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let chunk = chunk.max(1);
    for (kind, make) in [
        (
            "services",
            &(|i| service_json(i)) as &dyn Fn(usize) -> Value,
        ),
        ("slices", &|i| slice_json(i, node)),
    ] {
        for start in (0..n).step_by(chunk) {
            let items: Vec<Value> = (start..(start + chunk).min(n)).map(make).collect();
            let path = dir.join(format!("{kind}-{start}.json"));
            std::fs::write(
                &path,
                serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": items}))?,
            )?;
            files.push(path);
        }
    }
    Ok(files)
}

/// `kubectl create -f FILE` for each file in turn, bounded by `limit` in all.
pub fn kubectl_create(
    kubectl: &Path,
    kubeconfig: &Path,
    files: &[std::path::PathBuf],
    limit: Duration,
    log: &Path,
) -> Result<()> {
    let started = std::time::Instant::now();
    for f in files {
        let mut cmd = Command::new(kubectl);
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["create", "--validate=false", "-o", "name", "-f"])
            .arg(f);
        let left = limit.saturating_sub(started.elapsed());
        let done = crate::services::child::run(
            &mut cmd,
            crate::services::child::Spawn {
                netns: None,
                log,
                stdin: None,
                death_signal: libc::SIGKILL,
            },
            left,
        )?;
        if done.timed_out() {
            bail!("kubectl create took over {limit:?}");
        }
        if !done.success() {
            bail!(
                "kubectl create -f {} failed: {}",
                f.display(),
                done.stderr_tail()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_are_distinct_and_in_range() {
        let ips: std::collections::BTreeSet<Ipv4Addr> = (0..10_000).map(cluster_ip).collect();
        assert_eq!(ips.len(), 10_000);
        assert!(!ips.contains(&Ipv4Addr::new(10, 96, 0, 1)));
        assert!(
            ips.iter()
                .all(|ip| ip.octets()[..2] == [10, 96] && ip.octets()[3] != 0)
        );
    }

    #[test]
    fn rfc3339_nano_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(
            rfc3339_nano(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
