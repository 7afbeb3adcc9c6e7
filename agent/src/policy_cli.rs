//! `berth policy`: apply, delete, list and explain Kubernetes NetworkPolicies through the agent,
//! which owns the policy maps (one writer).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::{
    api::paths,
    client, config,
    engine::cli::Format,
    svc_cli::{explain, post, read_manifests},
};

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// The agent's API socket.
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Apply NetworkPolicy (networking.k8s.io/v1) and Namespace (v1, for namespace selectors)
    /// manifests: YAML or JSON, several documents per file, `kind: List` too. All files are
    /// one change: if any object is invalid, nothing is applied.
    Apply {
        /// A file, a directory (its *.yaml, *.yml and *.json files, sorted), or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the objects named in manifests, or one NetworkPolicy by name.
    Delete {
        #[arg(short = 'f', long = "filename", conflicts_with = "policy")]
        files: Vec<PathBuf>,
        /// NAMESPACE/NAME (or NAME in "default").
        policy: Option<String>,
    },
    /// List policies with the pods of this node they select, and the endpoints.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Whether a connection is allowed, and the exact policy and rule that decide it.
    Explain {
        /// Source: NAMESPACE/NAME or NAME of a container on this node, or an IPv4 address.
        #[arg(long)]
        from: String,
        /// Destination, as --from.
        #[arg(long)]
        to: String,
        /// PORT/PROTOCOL (TCP, UDP or SCTP; PORT alone is TCP).
        #[arg(long)]
        port: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

pub fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let socket = args.api_socket.as_path();
    match args.command {
        PolicyCommand::Apply { files } => {
            let (body, origin) = read_manifests(&files)?;
            let out = rt.block_on(post(socket, paths::POLICIES_APPLY, &origin, body))?;
            print_outcome(&out);
        }
        PolicyCommand::Delete { files, policy } => {
            let out = if let Some(policy) = policy {
                let (ns, name) = policy.split_once('/').unwrap_or(("default", &policy));
                let uri = format!("/v1/policies/{ns}/{name}");
                let body = rt
                    .block_on(client::request(socket, "DELETE", &uri, None))
                    .map_err(explain)?;
                serde_json::from_slice(&body)?
            } else if files.is_empty() {
                bail!("name a policy or give -f FILE");
            } else {
                let (body, origin) = read_manifests(&files)?;
                rt.block_on(post(socket, paths::POLICIES_DELETE, &origin, body))?
            };
            print_outcome(&out);
        }
        PolicyCommand::Ls { format } => {
            let view: serde_json::Value = rt
                .block_on(client::get_json(socket, paths::POLICIES))
                .map_err(explain)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Format::Table => print!("{}", render_list(&view)),
            }
        }
        PolicyCommand::Explain {
            from,
            to,
            port,
            format,
        } => {
            let (number, proto) = port.split_once('/').unwrap_or((&port, "TCP"));
            let number: u16 = match number.parse() {
                Ok(n) if n > 0 => n,
                _ => bail!("--port {port:?}: expected PORT/PROTOCOL with PORT in 1-65535"),
            };
            let uri = format!(
                "{}?from={}&to={}&port={number}&protocol={}",
                paths::POLICIES_EXPLAIN,
                client::query_value(&from),
                client::query_value(&to),
                client::query_value(proto)
            );
            let out: serde_json::Value = rt
                .block_on(client::get_json(socket, &uri))
                .map_err(explain)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&out)?),
                Format::Table => {
                    let allowed = out["allowed"].as_bool().unwrap_or(false);
                    println!(
                        "{} {from} -> {to} {number}/{}",
                        if allowed { "ALLOWED" } else { "DENIED" },
                        proto.to_ascii_uppercase()
                    );
                    for side in ["egress", "ingress"] {
                        if let Some(text) = out[side].as_str() {
                            println!("  {side}: {text}");
                        }
                    }
                }
            }
            if !out["allowed"].as_bool().unwrap_or(false) {
                // Scripts can test the verdict by the exit code.
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

fn print_outcome(out: &serde_json::Value) {
    if let Some(text) = out.get("text").and_then(|t| t.as_str()) {
        println!("{text}");
    }
    let d = &out["dataplane"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let ms = |k: &str| out[k].as_f64().unwrap_or(0.0) * 1000.0;
    eprintln!(
        "tables: {} written, {} removed ({} rules); endpoints: {} written, {} removed; prefixes: {} written, {} removed; compile {:.1} ms, maps {:.1} ms",
        n("tables_written"),
        n("tables_removed"),
        n("rules_written"),
        n("endpoints_written"),
        n("endpoints_removed"),
        n("prefixes_written"),
        n("prefixes_removed"),
        ms("compile_seconds"),
        ms("reconcile_seconds"),
    );
}

fn render_list(view: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<40} {:<16} {:>8} {:>8}  {:<12} SELECTS\n",
        "POLICY", "TYPES", "INGRESS", "EGRESS", "SOURCE"
    );
    let rules = |v: &serde_json::Value| v.as_u64().map_or("-".to_owned(), |n| n.to_string());
    for p in view["policies"].as_array().into_iter().flatten() {
        let types: Vec<&str> = p["policy_types"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        let selects: Vec<&str> = p["selects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        out.push_str(&format!(
            "{:<40} {:<16} {:>8} {:>8}  {:<12} {}\n",
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            ),
            types.join(","),
            rules(&p["ingress_rules"]),
            rules(&p["egress_rules"]),
            p["source"].as_str().unwrap_or("file"),
            if selects.is_empty() {
                "(no pod on this node)".to_owned()
            } else {
                selects.join(",")
            }
        ));
    }
    out.push_str(&format!(
        "\n{:<32} {:<15} {:>9} {:<8} {:<8}\n",
        "ENDPOINT", "IP", "IDENTITY", "INGRESS", "EGRESS"
    ));
    let enforced = |v: &serde_json::Value| match v.as_bool() {
        Some(true) => "enforced",
        Some(false) => "open",
        None => "-",
    };
    for e in view["endpoints"].as_array().into_iter().flatten() {
        if e["ifindex"].as_u64().unwrap_or(0) == 0 {
            continue; // not running
        }
        out.push_str(&format!(
            "{:<32} {:<15} {:>9} {:<8} {:<8}\n",
            e["pod"].as_str().unwrap_or(""),
            e["ip"].as_str().unwrap_or(""),
            e["identity"].as_u64().map_or("-".into(), |i| i.to_string()),
            enforced(&e["ingress_enforced"]),
            enforced(&e["egress_enforced"]),
        ));
    }
    out
}
