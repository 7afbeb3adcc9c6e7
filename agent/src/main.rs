//! The `berth` command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use berth::engine::cli::{self, EngineArgs, Format, ImageCommand, RunArgs};
use berth::{
    agent,
    api::paths,
    client::{self, ClientError},
    config::{self, AgentArgs, AgentConfig},
    dataplane::PinLayout,
    status::Status,
};
use clap::{Parser, Subcommand, ValueEnum};

/// berth: eBPF container networking and security agent.
#[derive(Parser, Debug)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: load and pin the eBPF data plane, serve /metrics and the JSON API.
    Agent(AgentArgs),
    /// Show loaded programs, their attachments and every map's fill, from the agent or the pins.
    Status(StatusArgs),
    /// Run a container from an image (daemonless); exits with the container's exit code.
    Run(RunArgs),
    /// List containers.
    Ps {
        /// Include stopped containers.
        #[arg(short, long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Stop containers: their stop signal, then SIGKILL after --time seconds.
    Stop {
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Stop running containers first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Print a container's output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Run a command in a running container.
    Exec {
        #[arg(short, long)]
        detach: bool,
        #[arg(short, long = "env")]
        env: Vec<String>,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Everything about a container, as JSON.
    Inspect { container: String },
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Kubernetes Services and EndpointSlices, load-balanced by the agent's data plane.
    Svc(berth::svc_cli::SvcArgs),
    /// Kubernetes NetworkPolicies, enforced by the agent's data plane; `explain` a verdict.
    Policy(berth::policy_cli::PolicyArgs),
    /// The event stream (syscall audit, policy verdicts): recent events, or follow them.
    Events(berth::events::EventsArgs),
    /// Syscall audit policies (record, count, kill, deny) and audited cgroups.
    Audit(berth::audit_cli::AuditArgs),
    /// Per-container syscall rates from the audit counters.
    Stats(berth::audit_cli::StatsArgs),
    /// Pull an image from an OCI/Docker registry.
    Pull {
        /// Plain HTTP for a non-loopback registry.
        #[arg(long)]
        insecure: bool,
        reference: String,
    },
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// The agent's API socket.
    #[arg(long, env = "BERTH_API_SOCKET", default_value = config::DEFAULT_API_SOCKET)]
    api_socket: PathBuf,
    /// Pin root to read when no agent answers.
    #[arg(long, env = "BERTH_PIN_ROOT", default_value = config::DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
    format: StatusFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Agent(_)) {
        // Short-lived commands die quietly when their output pipe closes (`berth ps | head`), as
        // Unix tools do; the agent keeps Rust's default (EPIPE as an error) for its sockets.
        // SAFETY: setting a signal disposition to SIG_DFL before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let engine = cli.engine.engine();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Status(args) => run_status(args),
        Command::Svc(args) => berth::svc_cli::run(args),
        Command::Policy(args) => berth::policy_cli::run(args),
        Command::Events(args) => berth::events::run(args),
        Command::Audit(args) => berth::audit_cli::run(args),
        Command::Stats(args) => berth::audit_cli::stats(args),
        Command::Run(args) => {
            berth::logging::init(berth::config::LogFormat::Text, "warn");
            // The container's exit code is ours (Docker's convention).
            return match cli::run(&engine, args) {
                Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
                Err(err) => {
                    eprintln!("berth: {}", berth::error_chain(&err));
                    // 125: the error is berth's, not the container's (as docker run does).
                    ExitCode::from(125)
                }
            };
        }
        Command::Ps { all, format } => cli::ps(&engine, all, format),
        Command::Stop { time, containers } => each(&containers, |c| {
            engine.stop(c, std::time::Duration::from_secs(time))
        }),
        Command::Rm { force, containers } => each(&containers, |c| engine.remove(c, force)),
        Command::Logs { follow, container } => cli::logs(&engine, &container, follow),
        Command::Exec {
            detach,
            env,
            container,
            command,
        } => {
            return match engine.exec(&container, command, env, detach) {
                Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255)),
                Err(err) => {
                    eprintln!("berth: {}", berth::error_chain(&err));
                    ExitCode::from(125)
                }
            };
        }
        Command::Inspect { container } => engine.inspect(&container).and_then(|v| {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }),
        Command::Image { command } => cli::image(&engine, command),
        Command::Pull {
            insecure,
            reference,
        } => cli::pull(&engine, &reference, insecure),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {}", berth::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Applies `op` to every container named (as docker does, one failure does not stop the rest),
/// printing each name done and each error; fails if any failed.
fn each(
    containers: &[String],
    op: impl Fn(&str) -> anyhow::Result<berth::engine::ContainerMeta>,
) -> anyhow::Result<()> {
    let mut failed = 0;
    for c in containers {
        match op(c) {
            Ok(meta) => println!("{}", meta.name),
            Err(err) => {
                eprintln!("berth: {c}: {}", berth::error_chain(&err));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} containers failed", containers.len());
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let config = AgentConfig::resolve(&args)?;
    berth::logging::init(config.log_format, &config.log);
    let rt = runtime()?;
    if args.cleanup {
        let removed = rt.block_on(agent::cleanup(&config))?;
        for path in &removed {
            println!("removed {}", path.display());
        }
        println!(
            "berth data plane under {} removed ({} pins and directories)",
            config.pin_root.display(),
            removed.len()
        );
        return Ok(());
    }
    rt.block_on(agent::run(config))?;
    Ok(())
}

fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let status = match rt.block_on(client::get_json::<Status>(&args.api_socket, paths::STATUS)) {
        Ok(status) => status,
        Err(ClientError::NotRunning { .. }) => {
            Status::from_pins(&PinLayout::new(&args.pin_root), None)
        }
        Err(err) => return Err(err.into()),
    };
    match args.format {
        StatusFormat::Table => print!("{}", status.render_table()),
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}
