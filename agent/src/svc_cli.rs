//! `berth svc`: apply, delete and list Kubernetes Services and EndpointSlices through the agent,
//! which owns the load-balancing maps (one writer).

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::{
    api::paths,
    client::{self, ClientError},
    config,
    engine::cli::Format,
    services::ServiceView,
};

#[derive(Args, Debug)]
pub struct SvcArgs {
    /// The agent's API socket.
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: SvcCommand,
}

#[derive(Subcommand, Debug)]
enum SvcCommand {
    /// Apply Service and EndpointSlice manifests (YAML or JSON; several documents per file,
    /// `kind: List` too). All files are applied as one change: if any object is invalid,
    /// nothing is.
    Apply {
        /// A file, a directory (its *.yaml, *.yml and *.json files, sorted), or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in manifests, or one service (and its EndpointSlices) by name.
    Delete {
        #[arg(short = 'f', long = "filename", conflicts_with = "service")]
        files: Vec<PathBuf>,
        /// NAMESPACE/NAME (or NAME in "default").
        service: Option<String>,
    },
    /// List services with their frontends and backend counts.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one service's frontends and every backend with its state.
    Show {
        /// NAMESPACE/NAME (or NAME in "default").
        service: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn run(args: SvcArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let socket = args.api_socket.as_path();
    match args.command {
        SvcCommand::Apply { files } => {
            let (body, origin) = read_manifests(&files)?;
            let out = rt.block_on(post(socket, paths::SERVICES_APPLY, &origin, body))?;
            print_outcome(&out);
        }
        SvcCommand::Delete { files, service } => {
            let out = if let Some(service) = service {
                let svc: berth_services::ServiceRef = service
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{service:?}: {e}"))?;
                let uri = format!("/v1/services/{}/{}", svc.namespace, svc.name);
                let body = rt
                    .block_on(client::request(socket, "DELETE", &uri, None))
                    .map_err(explain)?;
                let out: serde_json::Value = serde_json::from_slice(&body)?;
                if out.is_null() {
                    bail!("service {svc} not found");
                }
                out
            } else if files.is_empty() {
                bail!("name a service or give -f FILE");
            } else {
                let (body, origin) = read_manifests(&files)?;
                rt.block_on(post(socket, paths::SERVICES_DELETE, &origin, body))?
            };
            print_outcome(&out);
        }
        SvcCommand::Ls { format } => {
            let views: Vec<ServiceView> = rt
                .block_on(client::get_json(socket, paths::SERVICES))
                .map_err(explain)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
                Format::Table => print!("{}", render_list(&views)),
            }
        }
        SvcCommand::Show { service, format } => {
            let svc: berth_services::ServiceRef = service
                .parse()
                .map_err(|e| anyhow::anyhow!("{service:?}: {e}"))?;
            let views: Vec<ServiceView> = rt
                .block_on(client::get_json(socket, paths::SERVICES))
                .map_err(explain)?;
            let Some(view) = views.into_iter().find(|v| v.service == svc.to_string()) else {
                bail!("service {svc} not found");
            };
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Format::Table => print!("{}", render_show(&view)),
            }
        }
    }
    Ok(())
}

pub(crate) fn explain(err: ClientError) -> anyhow::Error {
    match err {
        ClientError::NotRunning { path, .. } => anyhow::anyhow!(
            "no berth agent answers on {}: services and policies are programmed by the agent (start `berth agent`)",
            path.display()
        ),
        ClientError::Status { body, .. } => {
            // The agent's error body is {"error": "..."}: show the message itself.
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            anyhow::anyhow!("{msg}")
        }
        other => other.into(),
    }
}

pub(crate) async fn post(
    socket: &Path,
    path: &str,
    origin: &str,
    body: Vec<u8>,
) -> anyhow::Result<serde_json::Value> {
    let uri = format!("{path}?origin={}", client::query_value(origin));
    let bytes = client::request(socket, "POST", &uri, Some(body))
        .await
        .map_err(explain)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Reads every manifest into one multi-document body, so the agent applies them as one change.
pub(crate) fn read_manifests(files: &[PathBuf]) -> anyhow::Result<(Vec<u8>, String)> {
    let mut paths = Vec::new();
    for file in files {
        if file.as_os_str() == "-" {
            paths.push(file.clone());
        } else if file.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(file)
                .with_context(|| format!("reading directory {}", file.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{} holds no .yaml, .yml or .json file", file.display());
            }
            paths.extend(found);
        } else {
            paths.push(file.clone());
        }
    }
    let mut body = Vec::new();
    for path in &paths {
        let text = if path.as_os_str() == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading stdin")?;
            buf
        } else {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        };
        // YAML is a superset of JSON: JSON documents join the stream as they are.
        if !body.is_empty() {
            body.extend_from_slice(b"\n---\n");
        }
        body.extend_from_slice(&text);
    }
    let origin = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    if body.len() > crate::api::MAX_REQUEST_BYTES {
        bail!(
            "{origin}: {} bytes of manifests is more than the agent accepts in one change ({} bytes); \
             apply them in parts",
            body.len(),
            crate::api::MAX_REQUEST_BYTES
        );
    }
    Ok((body, origin))
}

fn print_outcome(out: &serde_json::Value) {
    if let Some(text) = out.get("text").and_then(|t| t.as_str()) {
        print!("{text}");
    }
    let secs = |k: &str| out.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0) * 1000.0;
    let d = out.get("dataplane");
    let n = |k: &str| {
        d.and_then(|d| d.get(k))
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
    };
    // On stderr: a summary for people, not for scripts parsing the object lines.
    eprintln!(
        "frontends: {} added, {} updated, {} removed, {} unchanged; read {:.1} ms, maps {:.1} ms, saved {:.1} ms",
        n("frontends_added"),
        n("frontends_updated"),
        n("frontends_removed"),
        n("frontends_unchanged"),
        secs("parse_seconds"),
        secs("reconcile_seconds"),
        secs("persist_seconds"),
    );
    if let Some(conflicts) = out
        .get("dataplane")
        .and_then(|d| d.get("conflicts"))
        .and_then(|c| c.as_array())
    {
        for c in conflicts {
            eprintln!("warning: {}", c.as_str().unwrap_or_default());
        }
    }
}

fn render_list(views: &[ServiceView]) -> String {
    let mut out = format!(
        "{:<32} {:<13} {:<44} {:>8} {}\n",
        "SERVICE", "TYPE", "FRONTENDS", "BACKENDS", "SOURCE"
    );
    for v in views {
        let kind = v
            .detail
            .get("service_type")
            .and_then(|t| t.as_str())
            .unwrap_or("-");
        let mut fronts: Vec<String> = v
            .frontends
            .iter()
            .filter(|f| f.scope == berth_services::Scope::Internal)
            .map(|f| f.address())
            .collect();
        fronts.dedup();
        let backends: std::collections::BTreeSet<_> = v
            .frontends
            .iter()
            .flat_map(|f| f.backends.iter().map(|b| (b.addr, b.port)))
            .collect();
        let source = match v.shadows {
            Some(other) => format!("{} (shadows {other})", v.source),
            None => v.source.to_string(),
        };
        out.push_str(&format!(
            "{:<32} {:<13} {:<44} {:>8} {}\n",
            v.service,
            kind,
            if fronts.is_empty() {
                "-".into()
            } else {
                fronts.join(",")
            },
            backends.len(),
            source,
        ));
    }
    out
}

fn render_show(v: &ServiceView) -> String {
    let mut out = format!("Service: {}\nSource:  {}\n", v.service, v.source);
    if let Some(other) = v.shadows {
        out.push_str(&format!(
            "         (the {other} source also defines it; files win until deleted)\n"
        ));
    }
    for conflict in &v.conflicts {
        out.push_str(&format!("Conflict: {conflict}\n"));
    }
    if let Some(kind) = v.detail.get("service_type").and_then(|t| t.as_str()) {
        out.push_str(&format!("Type:    {kind}\n"));
    }
    out.push_str("Frontends:\n");
    for f in &v.frontends {
        let affinity = f
            .affinity_timeout
            .map(|t| format!(" affinity=ClientIP/{t}s"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<12} {:<26} scope={} port={}{}\n",
            f.kind.to_string(),
            f.address(),
            f.scope,
            if f.port_name.is_empty() {
                "-"
            } else {
                &f.port_name
            },
            affinity
        ));
        if f.backends.is_empty() {
            out.push_str("    (no usable backend: connections are rejected)\n");
        }
        for b in &f.backends {
            out.push_str(&format!(
                "    {}:{:<6} {:<12} node={} target={}\n",
                b.addr,
                b.port,
                format!("{:?}", b.state),
                b.node.as_deref().unwrap_or("-"),
                b.target.as_deref().unwrap_or("-"),
            ));
        }
    }
    out
}
