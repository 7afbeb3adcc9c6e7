//! The `berth` command line.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent: load and pin the eBPF data plane, serve /metrics and the JSON API.
    Agent(AgentArgs),
    /// Show loaded programs, their attachments and every map's fill, from the agent or the pins.
    Status(StatusArgs),
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
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Status(args) => run_status(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth: {}", berth::error_chain(&err));
            ExitCode::FAILURE
        }
    }
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
        Format::Table => print!("{}", status.render_table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}
