//! berth's orchestration: `cargo xtask setup | test | demo`.
//!
//! Everything a fresh machine of this kind lacks is installed by `setup`, which every other
//! command runs first; it is idempotent and takes seconds once everything is there.

mod demo;
mod setup;
mod sh;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "berth's build, test and demo orchestration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain and tools berth's build and tests need (idempotent).
    Setup,
    /// The whole test suite: setup, fmt, clippy, unit tests, privileged end-to-end tests.
    Test {
        /// Skip `cargo fmt --check` and clippy (faster local iterations).
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this filter.
        filter: Option<String>,
    },
    /// Benchmarks (release builds): `runtime` = container start latency vs crun and runc;
    /// `services` = service load balancing vs kube-proxy's iptables and nftables layouts;
    /// `policy` = NetworkPolicy enforcement vs iptables policy chains; `audit` = syscall
    /// auditing vs bpftrace, strace -f and auditd; `kube` = the Kubernetes node agent vs the
    /// real kube-proxy 1.20.2 against one API server.
    Bench {
        /// Which benchmark.
        #[arg(default_value = "runtime")]
        name: String,
        /// Rounds (`runtime`: each runs every contender once).
        #[arg(long, default_value_t = 60)]
        rounds: usize,
        /// Further arguments for the benchmark (`services`: see `berth-bench services --help`).
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Run the demo: agent, status, traffic through the XDP program, metrics, restart, cleanup.
    Demo {
        /// Leave the agent running and the demo namespace in place at the end.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => {
            setup::run()?;
            setup::kubernetes()
        }
        Command::Test { no_lint, filter } => {
            setup::run()?;
            setup::kubernetes()?;
            test(!no_lint, filter.as_deref())
        }
        Command::Bench {
            name,
            rounds,
            extra,
        } => {
            setup::run()?;
            if name == "audit" {
                setup::install(setup::BENCH_PACKAGES)?;
            }
            if name == "kube" {
                setup::kubernetes()?;
            }
            sh::run(
                "cargo",
                &[
                    "build",
                    "--release",
                    "--package",
                    "berth",
                    "--package",
                    "berth-bench",
                ],
            )?;
            let rounds = rounds.to_string();
            let mut args: Vec<&str> = match name.as_str() {
                "services" => vec!["services", "--berth", "target/release/berth"],
                "policy" => vec!["policy", "--berth", "target/release/berth"],
                "audit" => vec!["audit", "--berth", "target/release/berth"],
                "kube" => vec!["kube", "--berth", "target/release/berth"],
                _ => vec![
                    &name,
                    "--berth-runc",
                    "target/release/berth-runc",
                    "--rounds",
                    &rounds,
                ],
            };
            args.extend(extra.iter().map(String::as_str));
            sh::run("target/release/berth-bench", &args)
        }
        Command::Demo { keep } => {
            setup::run()?;
            demo::run(keep)
        }
    }
}

/// The checker runs inside test containers, so it must need nothing from their root
/// filesystem: a statically linked (glibc, crt-static) build into target/checker.
fn build_checker() -> Result<()> {
    sh::run_cmd(
        std::process::Command::new("cargo")
            .args([
                "build",
                "--release",
                "--package",
                "berth-checker",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                "target/checker",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )
}

fn test(lint: bool, filter: Option<&str>) -> Result<()> {
    let started = std::time::Instant::now();
    if lint {
        sh::run("cargo", &["fmt", "--all", "--", "--check"])?;
        sh::run(
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        )?;
    }
    // The privileged tests drive the `berth` and `berth-runc` binaries and put the static
    // checker into containers; build them first.
    sh::run("cargo", &["build", "--package", "berth"])?;
    build_checker()?;
    let filter: Vec<&str> = filter.into_iter().collect();
    let mut counts = sh::TestCounts::default();
    // Host-only tests of the default members (no root needed).
    let mut unit = vec![
        "--workspace",
        "--exclude",
        "berth-tests",
        "--exclude",
        "berth-ebpf",
        "--",
    ];
    unit.extend(&filter);
    let unit_result = sh::cargo_test(&unit, &mut counts);
    // Privileged end-to-end tests share the kernel: one at a time.
    let mut e2e = vec!["--package", "berth-tests", "--", "--test-threads=1"];
    e2e.extend(&filter);
    let e2e_result = sh::cargo_test(&e2e, &mut counts);
    eprintln!("xtask test: finished in {:.0?}", started.elapsed());
    // The closing line CI reads.
    println!(
        "summary: {} passed, {} failed",
        counts.passed, counts.failed
    );
    unit_result?;
    e2e_result?;
    Ok(())
}
