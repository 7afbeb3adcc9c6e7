//! `berth audit` (apply, delete and list syscall audit policies; register cgroups by path) and
//! `berth stats` (per-container syscall rates from the kernel's counters), through the agent,
//! which owns the audit maps and tracepoints (one writer).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::{
    api::paths,
    client, config,
    engine::cli::Format,
    svc_cli::{explain, post, read_manifests},
};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The agent's API socket.
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Apply AuditPolicy manifests (berth.io/v1alpha1; YAML or JSON, several documents per
    /// file). All files are one change: if any document is invalid, nothing is applied and the
    /// rules in force stay.
    Apply {
        /// A file, a directory (its *.yaml, *.yml and *.json files, sorted), or - for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete audit policies by name.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Policies, audited containers and cgroups (with the syscalls they are audited for) and
    /// the tracepoints attached.
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Audit a cgroup that berth did not start (e.g. a Kubernetes pod's), by path: absolute,
    /// or relative to the cgroup v2 root. Its labels select policies as a container's do.
    AddCgroup {
        path: PathBuf,
        /// The name events and metrics show [default: the directory's name].
        #[arg(long, default_value = "")]
        name: String,
        /// KEY=VALUE labels (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
    },
    /// Stop auditing a cgroup registered with add-cgroup.
    RemoveCgroup { path: PathBuf },
}

pub fn run(args: AuditArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let socket = args.api_socket.as_path();
    let post_json = |path: &str, body: Value| -> anyhow::Result<Value> {
        let bytes = rt
            .block_on(client::request(
                socket,
                "POST",
                path,
                Some(serde_json::to_vec(&body)?),
            ))
            .map_err(explain)?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    match args.command {
        AuditCommand::Apply { files } => {
            let (body, origin) = read_manifests(&files)?;
            print_outcome(&rt.block_on(post(socket, paths::AUDIT_APPLY, &origin, body))?);
        }
        AuditCommand::Delete { names } => {
            print_outcome(&post_json(paths::AUDIT_DELETE, json!({ "names": names }))?);
        }
        AuditCommand::Ls { format } => {
            let view: Value = rt
                .block_on(client::get_json(socket, paths::AUDIT))
                .map_err(explain)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&view)?),
                Format::Table => print!("{}", render_list(&view)),
            }
        }
        AuditCommand::AddCgroup { path, name, labels } => {
            let labels = parse_labels(&labels)?;
            let path = if path.is_relative() && path.exists() {
                std::fs::canonicalize(&path)?
            } else {
                path
            };
            print_outcome(&post_json(
                paths::AUDIT_CGROUPS,
                json!({ "path": path, "name": name, "labels": labels }),
            )?);
        }
        AuditCommand::RemoveCgroup { path } => {
            print_outcome(&post_json(
                paths::AUDIT_CGROUPS_DELETE,
                json!({ "path": path }),
            )?);
        }
    }
    Ok(())
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("--label {l:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn print_outcome(out: &Value) {
    if let Some(text) = out["text"].as_str() {
        println!("{text}");
    }
    let d = &out["dataplane"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    eprintln!(
        "targets: {} written, {} removed; plans: {} written, {} removed; paths: {} written, {} removed; tracepoints: {} attached, {} detached; {:.1} ms",
        n("targets_written"),
        n("targets_removed"),
        n("plans_written"),
        n("plans_removed"),
        n("paths_written"),
        n("paths_removed"),
        out["tracepoints_attached"].as_u64().unwrap_or(0),
        out["tracepoints_detached"].as_u64().unwrap_or(0),
        out["reconcile_seconds"].as_f64().unwrap_or(0.0) * 1000.0,
    );
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn render_list(view: &Value) -> String {
    let mut out = format!("POLICIES: {}\n\n", strings(&view["policies"]).join(", "));
    out.push_str(&format!(
        "{:<24} {:<9} {:<20} {:<5} {}\n",
        "TARGET", "KIND", "POLICIES", "ALL", "SYSCALLS (deny: …)"
    ));
    for t in view["targets"].as_array().into_iter().flatten() {
        if !t["audited"].as_bool().unwrap_or(false) {
            continue;
        }
        let deny = strings(&t["deny"]);
        let mut syscalls = strings(&t["syscalls"]).join(",");
        if !deny.is_empty() {
            syscalls.push_str(&format!(" (deny: {})", deny.join(",")));
        }
        out.push_str(&format!(
            "{:<24} {:<9} {:<20} {:<5} {}\n",
            t["name"].as_str().unwrap_or(""),
            t["kind"].as_str().unwrap_or(""),
            strings(&t["policies"]).join(","),
            if t["count_all"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            syscalls,
        ));
    }
    let tps = strings(&view["tracepoints"]);
    out.push_str(&format!("\nTRACEPOINTS ({}):\n", tps.len()));
    for tp in tps {
        out.push_str(&format!("  {tp}\n"));
    }
    out
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// The agent's API socket.
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Seconds between the two samples a rate is computed from.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Only this container (name or id).
    #[arg(long)]
    container: Option<String>,
    /// Rows shown (the busiest first); 0 for all.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Print the totals once, without sampling a rate.
    #[arg(long)]
    once: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One row of `berth stats`.
#[derive(Debug, serde::Serialize)]
struct StatRow {
    container: String,
    syscall: String,
    total: u64,
    per_second: f64,
}

/// `berth stats`: per container and syscall, the calls counted so far and their rate over
/// `--interval` (two samples of the kernel's per-CPU counters).
pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    if !(args.interval > 0.0 && args.interval <= 3600.0) {
        bail!("--interval must be between 0 and 3600 seconds");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sample = || -> anyhow::Result<BTreeMap<(String, String), u64>> {
        let v: Value = rt
            .block_on(client::get_json(&args.api_socket, paths::AUDIT_COUNTS))
            .map_err(explain)?;
        let mut out = BTreeMap::new();
        for r in v["counts"].as_array().into_iter().flatten() {
            let name = r["container"].as_str().unwrap_or("").to_owned();
            let id = r["id"].as_str().unwrap_or("");
            if let Some(c) = &args.container
                && name != *c
                && !id.starts_with(c.as_str())
            {
                continue;
            }
            let syscall = r["syscall"].as_str().unwrap_or("").to_owned();
            *out.entry((name, syscall)).or_default() += r["count"].as_u64().unwrap_or(0);
        }
        Ok(out)
    };
    let first = sample()?;
    let (last, secs) = if args.once {
        (first.clone(), 0.0)
    } else {
        std::thread::sleep(Duration::from_secs_f64(args.interval));
        (sample()?, args.interval)
    };
    let mut rows: Vec<StatRow> = last
        .iter()
        .map(|((container, syscall), total)| StatRow {
            container: container.clone(),
            syscall: syscall.clone(),
            total: *total,
            per_second: if secs > 0.0 {
                total.saturating_sub(
                    first
                        .get(&(container.clone(), syscall.clone()))
                        .copied()
                        .unwrap_or(0),
                ) as f64
                    / secs
            } else {
                0.0
            },
        })
        .collect();
    rows.sort_by(|a, b| {
        b.per_second
            .total_cmp(&a.per_second)
            .then(b.total.cmp(&a.total))
            .then(a.container.cmp(&b.container))
            .then(a.syscall.cmp(&b.syscall))
    });
    if args.top > 0 {
        rows.truncate(args.top);
    }
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => {
            println!(
                "{:<24} {:<20} {:>14} {:>12}",
                "CONTAINER", "SYSCALL", "TOTAL", "PER SEC"
            );
            for r in &rows {
                println!(
                    "{:<24} {:<20} {:>14} {:>12.1}",
                    r.container, r.syscall, r.total, r.per_second
                );
            }
            if rows.is_empty() {
                eprintln!("no counts: no audited container has a `count` rule (berth audit ls)");
            }
        }
    }
    Ok(())
}
