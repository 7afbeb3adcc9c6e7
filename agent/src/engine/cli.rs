//! The daemonless commands: `berth run|ps|stop|rm|logs|exec|inspect|image|pull`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use berth_image::PullOptions;
use clap::{Args, Subcommand, ValueEnum};

use super::{ContainerMeta, Engine, EnginePaths, NetworkDefaults, NetworkMode, RunOptions, spec};
use crate::{config, dataplane::pods::PublishedPort};

/// Where the engine keeps state (shared by every daemonless command).
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// berth's state directory (containers and images).
    #[arg(long, env = "BERTH_ROOT", default_value = "/var/lib/berth")]
    pub root: PathBuf,
    /// The OCI runtime's state directory (shared with berth-runc).
    #[arg(long, env = "BERTH_RUNTIME_ROOT", default_value = berth_runtime::state::DEFAULT_ROOT)]
    pub runtime_root: PathBuf,
    /// bpffs pin root of the data plane.
    #[arg(long, env = "BERTH_PIN_ROOT", default_value = config::DEFAULT_PIN_ROOT)]
    pub pin_root: PathBuf,
    /// The agent's API socket (notified of container events when an agent runs).
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// The bridge `berth run --network bridge` connects containers to (created when missing).
    #[arg(long, env = "BERTH_BRIDGE", default_value = berth_runtime::network::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// The bridge's pod CIDR: containers get addresses from it, the bridge holds the first
    /// (their gateway), and their traffic leaving the host is masqueraded.
    #[arg(
        long,
        env = "BERTH_POD_CIDR",
        default_value = berth_runtime::network::DEFAULT_SUBNET,
        value_name = "CIDR"
    )]
    pub pod_cidr: String,
}

impl EngineArgs {
    pub fn engine(&self) -> Engine {
        Engine::new(EnginePaths {
            root: self.root.clone(),
            runtime_root: self.runtime_root.clone(),
            pin_root: self.pin_root.clone(),
            api_socket: self.api_socket.clone(),
        })
        .with_network(NetworkDefaults {
            bridge: self.bridge.clone(),
            pod_cidr: self.pod_cidr.clone(),
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Container name (default: berth-<short id>).
    #[arg(long)]
    name: Option<String>,
    /// Label KEY=VALUE, repeatable.
    #[arg(long = "label", short = 'l')]
    labels: Vec<String>,
    /// Memory limit, e.g. 64m or 1g (swap limited to the same).
    #[arg(long, short = 'm')]
    memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Maximum number of processes.
    #[arg(long)]
    pids: Option<i64>,
    /// Environment KEY=VALUE, repeatable.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// default (Docker's profile), unconfined, or a profile file.
    #[arg(long, default_value = "default")]
    seccomp_profile: spec::SeccompChoice,
    /// Run in the background and print the container id.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// User (name, uid, user:group or uid:gid).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Hostname (default: the short id).
    #[arg(long)]
    hostname: Option<String>,
    /// bridge: an address on the --bridge network; none: loopback only; host: the host's
    /// network namespace.
    #[arg(long, value_enum, default_value_t = NetworkMode::Bridge)]
    network: NetworkMode,
    /// Publish a container port on the host: HOST:CONTAINER[/tcp|/udp], repeatable.
    #[arg(long = "publish", short = 'p', value_name = "HOST:CTR[/udp]")]
    publish: Vec<String>,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a root filesystem tarball (optionally gzip) or an OCI image layout (dir or tar).
    Import {
        /// The tarball or layout.
        path: PathBuf,
        /// Name for the image, e.g. busybox:latest.
        reference: String,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove an image (layers still used by containers are kept).
    Rm { reference: String },
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                bail!("invalid label {l:?}: expected KEY=VALUE");
            }
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

pub fn run(engine: &Engine, args: RunArgs) -> Result<i32> {
    for e in &args.env {
        if !e.contains('=') || e.starts_with('=') {
            bail!("invalid --env {e:?}: expected KEY=VALUE");
        }
    }
    let memory_bytes = args
        .memory
        .as_deref()
        .map(spec::parse_memory)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(cpus) = args.cpus {
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        if cpus.is_nan() || cpus <= 0.0 || cpus > online {
            bail!("--cpus {cpus}: must be above 0 and at most {online} (this machine's CPUs)");
        }
    }
    if let Some(pids) = args.pids
        && pids < 1
    {
        bail!("--pids {pids}: must be at least 1");
    }
    let publish = parse_publish(&args.publish)?;
    if !publish.is_empty() && args.network != NetworkMode::Bridge {
        bail!(
            "-p/--publish needs --network bridge (not --network {})",
            args.network
        );
    }
    if args.network == NetworkMode::Bridge {
        // A bad --bridge or --pod-cidr is reported before anything is made.
        engine.bridge_config()?;
    }
    let opts = RunOptions {
        network: args.network,
        publish,
        name: args.name,
        labels: parse_labels(&args.labels)?,
        detach: args.detach,
        auto_remove: args.rm,
        image: args.image,
        spec: spec::RunSpec {
            hostname: args.hostname.unwrap_or_default(),
            command: args.command,
            entrypoint: args.entrypoint.map(|e| vec![e]),
            env: args.env,
            workdir: args.workdir,
            user: args.user,
            memory_bytes,
            cpus: args.cpus,
            pids: args.pids,
            seccomp: Some(args.seccomp_profile),
            ..Default::default()
        },
    };
    engine.run(&opts)
}

/// `-p` values; one host port and protocol can be published once only.
fn parse_publish(specs: &[String]) -> Result<Vec<PublishedPort>> {
    let mut ports: Vec<PublishedPort> = Vec::new();
    for spec in specs {
        let port: PublishedPort = spec.parse().map_err(|e| anyhow::anyhow!("-p: {e}"))?;
        if let Some(prev) = ports
            .iter()
            .find(|p| p.host_port == port.host_port && p.protocol == port.protocol)
        {
            bail!(
                "-p {spec}: host port {} ({:?}) is already published to container port {}",
                port.host_port,
                port.protocol,
                prev.container_port
            );
        }
        ports.push(port);
    }
    Ok(ports)
}

fn human_status(engine: &Engine, m: &ContainerMeta) -> String {
    match engine.status(m) {
        berth_runtime::state::Status::Stopped => match m.exit_code {
            Some(code) => format!("Exited ({code})"),
            None => "Created".to_owned(),
        },
        berth_runtime::state::Status::Running => "Up".to_owned(),
        other => other.to_string(),
    }
}

pub fn ps(engine: &Engine, all: bool, format: Format) -> Result<()> {
    let rows: Vec<(ContainerMeta, String)> = engine
        .list()?
        .into_iter()
        .map(|m| {
            let status = human_status(engine, &m);
            (m, status)
        })
        .filter(|(_, status)| all || status == "Up" || status == "paused")
        .collect();
    match format {
        Format::Json => {
            let docs: Vec<_> = rows
                .iter()
                .map(|(m, status)| {
                    serde_json::json!({
                        "id": m.id, "name": m.name, "image": m.image, "command": m.command,
                        "created": m.created, "status": status, "exit_code": m.exit_code,
                        "labels": m.labels, "pid": m.pid, "cgroup_id": m.cgroup_id,
                        "network": m.network_mode, "ip": m.ip, "ports": m.ports,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
        Format::Table => {
            println!(
                "{:<12}  {:<20}  {:<28}  {:<24}  {:<20}  {:<12}  {:<15}  LABELS",
                "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "IP"
            );
            for (m, status) in rows {
                let labels: Vec<String> =
                    m.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let ip = match (m.ip, m.network_mode) {
                    (Some(ip), _) => ip.to_string(),
                    (None, NetworkMode::Host) => "host".to_owned(),
                    (None, _) => "-".to_owned(),
                };
                println!(
                    "{:<12}  {:<20}  {:<28}  {:<24}  {:<20}  {:<12}  {:<15}  {}",
                    &m.id[..12],
                    m.name,
                    m.image,
                    truncate(&m.command.join(" "), 24),
                    m.created,
                    status,
                    ip,
                    labels.join(",")
                );
            }
        }
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub fn logs(engine: &Engine, key: &str, follow: bool) -> Result<()> {
    let meta = engine.find(key)?;
    let path = engine.log_path(&meta);
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        file.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        if !follow {
            return Ok(());
        }
        if matches!(engine.status(&meta), berth_runtime::state::Status::Stopped) {
            // One last read for what was written just before the exit.
            buf.clear();
            file.read_to_end(&mut buf)?;
            out.write_all(&buf)?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn image(engine: &Engine, cmd: ImageCommand) -> Result<()> {
    let store = engine.images()?;
    match cmd {
        ImageCommand::Import { path, reference } => {
            let is_layout = path.join("index.json").exists()
                || path.join("oci-layout").exists()
                || tar_has_index(&path);
            let image = if is_layout {
                store.import_oci_layout(&path, &reference)?
            } else {
                store.import_rootfs_tar(&path, &reference, &Default::default())?
            };
            println!("{} {}", image.name, image.id);
        }
        ImageCommand::Ls { format } => {
            let images = store.list()?;
            match format {
                Format::Json => {
                    let docs: Vec<_> = images
                        .iter()
                        .map(|i| {
                            serde_json::json!({
                                "name": i.name, "id": i.id.to_string(), "size": i.size,
                                "layers": i.layers.len(), "created": i.created,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&docs)?);
                }
                Format::Table => {
                    println!("{:<48}  {:<19}  {:>10}  LAYERS", "NAME", "ID", "SIZE");
                    for i in images {
                        let id = i.id.to_string();
                        let short = id.strip_prefix("sha256:").unwrap_or(&id);
                        println!(
                            "{:<48}  {:<19}  {:>10}  {}",
                            i.name,
                            &short[..12.min(short.len())],
                            human_size(i.size),
                            i.layers.len()
                        );
                    }
                }
            }
        }
        ImageCommand::Rm { reference } => {
            let report = store.remove(&reference, &engine.layers_in_use()?)?;
            println!("{report:?}");
        }
    }
    Ok(())
}

fn tar_has_index(path: &std::path::Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(file);
    archive.entries().is_ok_and(|mut entries| {
        entries.any(|e| {
            e.ok()
                .and_then(|e| e.path().ok().map(|p| p.ends_with("index.json")))
                .unwrap_or(false)
        })
    })
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub fn pull(engine: &Engine, reference: &str, insecure: bool) -> Result<()> {
    let store = engine.images()?;
    let image = store.pull(
        reference,
        &PullOptions {
            insecure,
            progress: true,
            ..Default::default()
        },
    )?;
    println!("{} {}", image.name, image.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ports_parse_and_a_host_port_is_published_once() {
        let ports = parse_publish(&["8080:80".into(), "8080:53/udp".into()]).expect("ports");
        assert_eq!(ports.len(), 2);
        let err = parse_publish(&["8080:80".into(), "8080:81/tcp".into()]).expect_err("twice");
        assert!(err.to_string().contains("already published"), "{err}");
        let err = parse_publish(&["80".into()]).expect_err("no colon");
        assert!(err.to_string().starts_with("-p: "), "{err}");
    }
}
