//! `berth-runc`: berth's OCI runtime behind runc's command line, so Podman (`--runtime`),
//! conmon and containerd drive it unchanged.
//!
//! Errors go to stderr and, with `--log`, to the log file in the format conmon and containerd
//! read (`--log-format json`: one `{"level":"error","msg":...,"time":...}` object per line).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use berth_runtime::{
    container::{CreateOptions, ExecOptions, Runtime, parse_signal},
    state::DEFAULT_ROOT,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use oci_spec::runtime::Process;

/// berth's OCI runtime (runc-compatible command line).
#[derive(Parser, Debug)]
#[command(name = "berth-runc", version, about, long_about = None)]
pub struct RuncCli {
    /// Directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Append errors (and, with --debug, debug lines) to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Use systemd to manage cgroups (not supported: berth manages cgroupfs directly).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Verbose logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Rootless mode ("auto", "true", "false"); berth runs as root only.
    #[arg(long, global = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: RuncCommand,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum RuncCommand {
    /// Create a container from a bundle; it waits for `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to a container's init, or to all its processes.
    Kill {
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container (--force: kill it first).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, and (without --detach) wait for it and delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once the container has started.
        #[arg(short, long)]
        detach: bool,
    },
    /// Run a new process inside a running container.
    Exec(ExecArgs),
    /// List the processes of a container.
    Ps {
        #[arg(short, long, value_enum, default_value_t = PsFormat::Table)]
        format: PsFormat,
        id: String,
        /// Options passed to ps(1) for the table format.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, value_enum, default_value_t = PsFormat::Table)]
        format: PsFormat,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the features this runtime supports (JSON).
    Features,
    /// Write a default config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Bundle directory (holding config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    /// Write the container init's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket to send the pty master to (process.terminal).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass N extra file descriptors (3..3+N) to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    /// Accepted for compatibility; berth always uses pivot_root.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for compatibility; berth creates no session keyring.
    #[arg(long)]
    no_new_keyring: bool,
    id: String,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// process.json describing the process (OCI `process` object).
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(short, long)]
    tty: bool,
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID].
    #[arg(short, long)]
    user: Option<String>,
    /// Additional capability, repeatable (e.g. CAP_NET_ADMIN).
    #[arg(long)]
    cap: Vec<String>,
    #[arg(long)]
    no_new_privs: bool,
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PsFormat {
    Table,
    Json,
}

/// Entry point of the `berth-runc` binary.
pub fn main() -> ExitCode {
    let cli = RuncCli::parse();
    let log = cli.log.clone();
    let format = cli.log_format;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let msg = crate::error_chain(&err);
            eprintln!("berth-runc: {msg}");
            if let Some(log) = log {
                write_log(&log, format, "error", &msg);
            }
            ExitCode::FAILURE
        }
    }
}

fn write_log(path: &Path, format: LogFormat, level: &str, msg: &str) {
    let line = match format {
        LogFormat::Json => {
            serde_json::json!({"level": level, "msg": msg, "time": berth_runtime::state::now_rfc3339()})
                .to_string()
        }
        LogFormat::Text => format!(
            "time=\"{}\" level={level} msg={msg:?}",
            berth_runtime::state::now_rfc3339()
        ),
    };
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

fn run(cli: RuncCli) -> anyhow::Result<u8> {
    if cli.systemd_cgroup {
        anyhow::bail!(
            "--systemd-cgroup is not supported: berth manages cgroupfs directly; configure the \
             caller for the cgroupfs driver (podman: --cgroup-manager=cgroupfs)"
        );
    }
    if cli.rootless.as_deref() == Some("true") {
        anyhow::bail!("--rootless=true is not supported: berth-runc runs as root");
    }
    let rt = Runtime::new(&cli.root);
    match cli.command {
        RuncCommand::Create(args) => {
            rt.create(&create_options(&args))?;
        }
        RuncCommand::Start { id } => rt.start(&id)?,
        RuncCommand::State { id } => {
            let record = rt.state(&id)?;
            println!("{}", serde_json::to_string_pretty(&state_doc(&record))?);
        }
        RuncCommand::Kill { all, id, signal } => rt.kill(&id, parse_signal(&signal)?, all)?,
        RuncCommand::Delete { force, id } => rt.delete(&id, force)?,
        RuncCommand::Run { create, detach } => {
            let code = rt.run(&create_options(&create), detach)?;
            return Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
        }
        RuncCommand::Exec(args) => {
            let process = exec_process(&rt, &args)?;
            let opts = ExecOptions {
                detach: args.detach,
                pid_file: args.pid_file.clone(),
                console_socket: args.console_socket.clone(),
                preserve_fds: args.preserve_fds,
            };
            let code = rt.exec(&args.id, &process, &opts)?;
            return Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(255));
        }
        RuncCommand::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = rt.ps(&id)?;
            match format {
                PsFormat::Json => println!("{}", serde_json::to_string(&pids)?),
                PsFormat::Table => print_ps_table(&pids, &ps_args)?,
            }
        }
        RuncCommand::Pause { id } => rt.pause(&id, true)?,
        RuncCommand::Resume { id } => rt.pause(&id, false)?,
        RuncCommand::List { format, quiet } => {
            let records = rt.list()?;
            if quiet {
                for r in &records {
                    println!("{}", r.id);
                }
            } else {
                match format {
                    PsFormat::Json => {
                        let docs: Vec<_> = records.iter().map(state_doc).collect();
                        println!("{}", serde_json::to_string(&docs)?);
                    }
                    PsFormat::Table => {
                        println!(
                            "{:<24} {:<8} {:<10} {:<48} CREATED",
                            "ID", "PID", "STATUS", "BUNDLE"
                        );
                        for r in &records {
                            println!(
                                "{:<24} {:<8} {:<10} {:<48} {}",
                                r.id,
                                r.pid,
                                r.status.to_string(),
                                r.bundle.display(),
                                r.created
                            );
                        }
                    }
                }
            }
        }
        RuncCommand::Features => println!("{}", serde_json::to_string_pretty(&features())?),
        RuncCommand::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                anyhow::bail!("{} already exists", path.display());
            }
            let spec = berth_runtime::spec::default_spec();
            std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        }
    }
    Ok(0)
}

fn create_options(args: &CreateArgs) -> CreateOptions {
    CreateOptions {
        id: args.id.clone(),
        bundle: args.bundle.clone(),
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        preserve_fds: args.preserve_fds,
    }
}

/// The OCI state document `runc state` prints (plus `created`, as runc does).
fn state_doc(record: &berth_runtime::state::Record) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": record.oci_version,
        "id": record.id,
        "pid": record.pid,
        "status": record.status,
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": record.created,
        "annotations": record.annotations,
        "owner": "",
    })
}

/// The process for `exec`: from --process, or from the command line over the container's own
/// process (env, user, capabilities), as runc builds it.
fn exec_process(rt: &Runtime, args: &ExecArgs) -> anyhow::Result<Process> {
    if let Some(path) = &args.process {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let process: Process = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid {}: {e}", path.display()))?;
        return Ok(process);
    }
    if args.command.is_empty() {
        anyhow::bail!("exec needs a command (or --process FILE)");
    }
    let spec = rt.root.load_spec(&args.id)?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.clone());
    }
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(args.env.iter().cloned());
    process.set_env(Some(env));
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u.parse()?, g.parse()?),
            None => (user.parse()?, 0),
        };
        process.user_mut().set_uid(uid);
        process.user_mut().set_gid(gid);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        let mut caps = process.capabilities().clone().unwrap_or_default();
        let extra: Vec<oci_spec::runtime::Capability> = args
            .cap
            .iter()
            .map(|c| {
                serde_json::from_value(serde_json::Value::String(c.to_ascii_uppercase()))
                    .map_err(|_| anyhow::anyhow!("unknown capability {c}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let add = |set: &Option<oci_spec::runtime::Capabilities>| {
            let mut s = set.clone().unwrap_or_default();
            s.extend(extra.iter().copied());
            Some(s)
        };
        caps.set_bounding(add(caps.bounding()));
        caps.set_effective(add(caps.effective()));
        caps.set_permitted(add(caps.permitted()));
        process.set_capabilities(Some(caps));
    }
    Ok(process)
}

fn print_ps_table(pids: &[i32], ps_args: &[String]) -> anyhow::Result<()> {
    let args: Vec<String> = if ps_args.is_empty() {
        vec!["-ef".into()]
    } else {
        ps_args.to_vec()
    };
    let out = std::process::Command::new("ps").args(&args).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Ok(());
    };
    let pid_col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow::anyhow!("ps output has no PID column"))?;
    println!("{header}");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(pid_col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `features`: what this runtime implements (OCI runtime features document).
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime",
            "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared",
            "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync",
            "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {"io.github.berth.runtime": "berth-runc"}
    })
}
