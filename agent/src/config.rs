//! Agent configuration: command-line flags, `BERTH_*` environment variables and an optional TOML
//! file, merged with that precedence (flag or environment > file > built-in default).
//!
//! clap reads a flag and its environment variable together, so a bad value in either is reported
//! by clap with the flag's name; the file is parsed with `deny_unknown_fields`, so a typo or a bad
//! value is reported with the key and its line. [`AgentConfig::resolve`] then checks what types
//! alone cannot (absolute paths, interface names) and names the field in every error.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Default address of the Prometheus endpoint: loopback only, scrape it through a node-local
/// agent or change it deliberately.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9977";
/// Default path of the agent's JSON API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/berth/berth.sock";
/// Default root of berth's bpffs pins.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/berth";

/// Errors in the configuration; each names the field it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// How `xdp_lb_ingress` attaches to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) mode when the driver supports it, generic otherwise: the kernel chooses.
    #[default]
    Auto,
    /// Native XDP in the driver; attaching fails on drivers without XDP support.
    Native,
    /// Generic XDP in the kernel stack: works on every interface, slower.
    Skb,
}

impl XdpAttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpAttachMode::Auto => "auto",
            XdpAttachMode::Native => "native",
            XdpAttachMode::Skb => "skb",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `berth agent` flags. Every setting can also come from the environment variable shown in
/// `--help`, or from the config file under the same name with `_` for `-`.
#[derive(Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// TOML config file; flags and environment variables override its values.
    #[arg(long, env = "BERTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the Prometheus /metrics endpoint [default: 127.0.0.1:9977].
    #[arg(long, env = "BERTH_METRICS_ADDR", value_name = "ADDR:PORT")]
    pub metrics_addr: Option<SocketAddr>,

    /// Unix socket of the JSON API, created with mode 0600 [default: /run/berth/berth.sock].
    #[arg(long, env = "BERTH_API_SOCKET", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,

    /// bpffs directory holding berth's pinned maps and links [default: /sys/fs/bpf/berth].
    #[arg(long, env = "BERTH_PIN_ROOT", value_name = "DIR")]
    pub pin_root: Option<PathBuf>,

    /// Interface to attach xdp_lb_ingress to (the node's uplink); repeat or comma-separate for
    /// several. Pinned attachments to interfaces no longer listed are removed.
    #[arg(
        long = "xdp-iface",
        env = "BERTH_XDP_IFACES",
        value_name = "IFACE",
        value_delimiter = ','
    )]
    pub xdp_ifaces: Option<Vec<String>>,

    /// XDP attach mode [default: auto].
    #[arg(long, env = "BERTH_XDP_MODE", value_enum)]
    pub xdp_mode: Option<XdpAttachMode>,

    /// Log format [default: text].
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `berth=debug`) [default: info].
    #[arg(long, env = "BERTH_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// cgroup v2 directory the socket-level load balancer attaches to; every process below it
    /// has its connections to services translated [default: the root of the cgroup v2
    /// hierarchy: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host].
    #[arg(long, env = "BERTH_CGROUP", value_name = "DIR")]
    pub cgroup: Option<PathBuf>,

    /// Take Services and EndpointSlices from this cluster's API server (a kubeconfig file, its
    /// current context). In a pod (KUBERNETES_SERVICE_HOST set) the service account's
    /// in-cluster configuration is used without this flag, as kube-proxy does.
    #[arg(long, env = "BERTH_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Do not watch a Kubernetes API server even in a pod (files only).
    #[arg(long, conflicts_with = "kubeconfig")]
    pub no_kubernetes: bool,

    /// This node's name: endpoints on this node are the local ones for
    /// internalTrafficPolicy/externalTrafficPolicy Local [default: $NODE_NAME, then the hostname].
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// Where the agent keeps its desired state (services) across restarts
    /// [default: /var/lib/berth].
    #[arg(long, env = "BERTH_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Maglev table size for NodePort/ExternalIP/LoadBalancer frontends: a prime; larger means
    /// more even spreading and fewer flows moved on a backend change [default: 16381].
    #[arg(long, env = "BERTH_MAGLEV_TABLE_SIZE", value_name = "PRIME")]
    pub maglev_table_size: Option<u32>,

    /// Pod network (the bridge's subnet; its first address is the hairpin source)
    /// [default: 10.88.0.0/16].
    #[arg(long, env = "BERTH_POD_CIDR", value_name = "CIDR")]
    pub pod_cidr: Option<ipnet::Ipv4Net>,

    /// Extra networks service backends may live in, besides the pod network and the networks
    /// attached to this node; repeat or comma-separate.
    #[arg(
        long = "backend-cidr",
        env = "BERTH_BACKEND_CIDRS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub backend_cidrs: Option<Vec<ipnet::Ipv4Net>>,

    /// The container engine's root (`berth run --root`): its containers on the bridge are the
    /// endpoints NetworkPolicy applies to [default: $BERTH_ROOT, then /var/lib/berth].
    #[arg(long, env = "BERTH_ROOT", value_name = "DIR")]
    pub engine_root: Option<PathBuf>,

    /// Audit mode for every endpoint: policy denials are reported and counted but not
    /// enforced (per namespace: the label policy.berth.io/audit=true).
    #[arg(long)]
    pub policy_audit: bool,

    /// Also write every event (syscall audit, policy verdicts, gaps) as JSON lines to this
    /// file, rotated by size (FILE.1 is the newest rotated one) [default: no file].
    #[arg(long, env = "BERTH_EVENTS_FILE", value_name = "FILE")]
    pub events_file: Option<PathBuf>,

    /// Rotate the events file when it reaches this many bytes [default: 67108864 (64 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub events_file_max_bytes: Option<u64>,

    /// Rotated event files kept (FILE.1 … FILE.N) [default: 5].
    #[arg(long, value_name = "N")]
    pub events_file_keep: Option<u32>,

    /// Remove every pin and attachment berth made under the pin root, then exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    metrics_addr: Option<SocketAddr>,
    api_socket: Option<PathBuf>,
    pin_root: Option<PathBuf>,
    xdp_ifaces: Option<Vec<String>>,
    xdp_mode: Option<XdpAttachMode>,
    log_format: Option<LogFormat>,
    log: Option<String>,
    cgroup: Option<PathBuf>,
    node_name: Option<String>,
    kubeconfig: Option<PathBuf>,
    no_kubernetes: Option<bool>,
    state_dir: Option<PathBuf>,
    maglev_table_size: Option<u32>,
    pod_cidr: Option<ipnet::Ipv4Net>,
    backend_cidrs: Option<Vec<ipnet::Ipv4Net>>,
    engine_root: Option<PathBuf>,
    policy_audit: Option<bool>,
    events_file: Option<PathBuf>,
    events_file_max_bytes: Option<u64>,
    events_file_keep: Option<u32>,
}

/// The agent's resolved configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub metrics_addr: SocketAddr,
    pub api_socket: PathBuf,
    pub pin_root: PathBuf,
    pub xdp_ifaces: Vec<String>,
    pub xdp_mode: XdpAttachMode,
    pub log_format: LogFormat,
    pub log: String,
    pub cgroup: PathBuf,
    pub node_name: String,
    /// Where the API server is, if the agent watches one.
    pub kubernetes: Option<berth_kube::ClientSource>,
    pub state_dir: PathBuf,
    pub maglev_table_size: u32,
    pub pod_cidr: ipnet::Ipv4Net,
    pub backend_cidrs: Vec<ipnet::Ipv4Net>,
    pub engine_root: PathBuf,
    pub policy_audit: bool,
    pub events_file: Option<PathBuf>,
    pub events_file_max_bytes: u64,
    pub events_file_keep: u32,
}

/// Default Maglev table size (as Cilium's): a prime, ~1,600 buckets per backend at 10 backends.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;
/// Default pod network (the runtime's bridge subnet).
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

/// The root of the cgroup v2 hierarchy: /sys/fs/cgroup on a pure v2 host, the `unified` mount
/// of a hybrid one.
pub fn default_cgroup_root() -> PathBuf {
    let root = Path::new("/sys/fs/cgroup");
    match nix::sys::statfs::statfs(root) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => root.into(),
        _ => root.join("unified"),
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

impl AgentConfig {
    /// Merges flags/environment over the config file (if any) over the defaults, and validates.
    pub fn resolve(args: &AgentArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let config = AgentConfig {
            metrics_addr: args.metrics_addr.or(file.metrics_addr).unwrap_or_else(|| {
                DEFAULT_METRICS_ADDR
                    .parse()
                    .expect("the default metrics address parses")
            }),
            api_socket: args
                .api_socket
                .clone()
                .or(file.api_socket)
                .unwrap_or_else(|| DEFAULT_API_SOCKET.into()),
            pin_root: args
                .pin_root
                .clone()
                .or(file.pin_root)
                .unwrap_or_else(|| DEFAULT_PIN_ROOT.into()),
            xdp_ifaces: args
                .xdp_ifaces
                .clone()
                .or(file.xdp_ifaces)
                .unwrap_or_default(),
            xdp_mode: args.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log: args
                .log
                .clone()
                .or(file.log)
                .unwrap_or_else(|| "info".into()),
            cgroup: args
                .cgroup
                .clone()
                .or(file.cgroup)
                .unwrap_or_else(default_cgroup_root),
            node_name: args
                .node_name
                .clone()
                .or(file.node_name)
                .unwrap_or_else(hostname),
            kubernetes: if args.no_kubernetes || file.no_kubernetes.unwrap_or(false) {
                None
            } else {
                berth_kube::ClientSource::detect(
                    args.kubeconfig.as_deref().or(file.kubeconfig.as_deref()),
                )
            },
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            maglev_table_size: args
                .maglev_table_size
                .or(file.maglev_table_size)
                .unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE),
            pod_cidr: args.pod_cidr.or(file.pod_cidr).unwrap_or_else(|| {
                DEFAULT_POD_CIDR
                    .parse()
                    .expect("the default pod CIDR parses")
            }),
            backend_cidrs: args
                .backend_cidrs
                .clone()
                .or(file.backend_cidrs)
                .unwrap_or_default(),
            engine_root: args
                .engine_root
                .clone()
                .or(file.engine_root)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            policy_audit: args.policy_audit || file.policy_audit.unwrap_or(false),
            events_file: args.events_file.clone().or(file.events_file),
            events_file_max_bytes: args
                .events_file_max_bytes
                .or(file.events_file_max_bytes)
                .unwrap_or(64 << 20),
            events_file_keep: args.events_file_keep.or(file.events_file_keep).unwrap_or(5),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        require_absolute("api_socket", &self.api_socket)?;
        require_absolute("pin_root", &self.pin_root)?;
        if self.pin_root.parent().is_none() {
            return Err(invalid(
                "pin_root",
                "must be a directory below a bpffs mount, not /",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for iface in &self.xdp_ifaces {
            validate_ifname(iface).map_err(|reason| invalid("xdp_ifaces", reason))?;
            if !seen.insert(iface) {
                return Err(invalid(
                    "xdp_ifaces",
                    format!("interface {iface:?} listed twice"),
                ));
            }
        }
        require_absolute("cgroup", &self.cgroup)?;
        require_absolute("state_dir", &self.state_dir)?;
        require_absolute("engine_root", &self.engine_root)?;
        if let Some(f) = &self.events_file {
            require_absolute("events_file", f)?;
        }
        if self.events_file_max_bytes < 4096 {
            return Err(invalid("events_file_max_bytes", "must be at least 4096"));
        }
        if self.node_name.is_empty() {
            return Err(invalid("node_name", "must not be empty"));
        }
        let m = self.maglev_table_size;
        if m < 3
            || !crate::dataplane::lb::is_prime(m)
            || m as usize > berth_common::lb::MAGLEV_MAX_SIZE
        {
            return Err(invalid(
                "maglev_table_size",
                format!(
                    "{m} is not a prime between 3 and {}",
                    berth_common::lb::MAGLEV_MAX_SIZE
                ),
            ));
        }
        if self.pod_cidr.prefix_len() > 30 || self.pod_cidr.network() != self.pod_cidr.addr() {
            return Err(invalid(
                "pod_cidr",
                format!(
                    "{} must be a network address with a prefix of at most /30",
                    self.pod_cidr
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .map_err(|err| invalid("log", format!("{:?}: {err}", self.log)))?;
        Ok(())
    }
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.to_owned(),
        message: err.to_string(),
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn require_absolute(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} is not an absolute path", path.display()),
        ))
    }
}

/// Linux interface names: 1..=15 bytes (IFNAMSIZ - 1), no '/', no whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name {name:?} must be 1 to 15 bytes long"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(contents.as_bytes()).expect("write config");
        f
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let config = AgentConfig::resolve(&AgentArgs::default()).expect("defaults are valid");
        assert_eq!(config.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(config.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(config.pin_root, PathBuf::from(DEFAULT_PIN_ROOT));
        assert!(config.xdp_ifaces.is_empty());
        assert_eq!(config.xdp_mode, XdpAttachMode::Auto);
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let f = file(
            "metrics_addr = \"127.0.0.1:1234\"\npin_root = \"/sys/fs/bpf/x\"\nxdp_mode = \"skb\"\n",
        );
        let args = AgentArgs {
            config: Some(f.path().to_owned()),
            metrics_addr: Some("127.0.0.1:4321".parse().expect("addr")),
            ..Default::default()
        };
        let config = AgentConfig::resolve(&args).expect("valid");
        assert_eq!(config.metrics_addr.port(), 4321, "flag wins over file");
        assert_eq!(
            config.pin_root,
            PathBuf::from("/sys/fs/bpf/x"),
            "file wins over default"
        );
        assert_eq!(config.xdp_mode, XdpAttachMode::Skb);
    }

    #[test]
    fn unknown_key_names_the_key() {
        let f = file("metrics_adr = \"127.0.0.1:1\"\n");
        let args = AgentArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args)
            .expect_err("typo must be rejected")
            .to_string();
        assert!(err.contains("metrics_adr"), "{err}");
    }

    #[test]
    fn bad_value_in_file_names_the_field() {
        let f = file("metrics_addr = \"not-an-address\"\n");
        let args = AgentArgs {
            config: Some(f.path().to_owned()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args)
            .expect_err("bad address")
            .to_string();
        assert!(err.contains("metrics_addr"), "{err}");
    }

    #[test]
    fn relative_paths_and_bad_interfaces_are_rejected_by_field() {
        let args = AgentArgs {
            api_socket: Some("relative.sock".into()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args)
            .expect_err("relative")
            .to_string();
        assert!(err.contains("api_socket"), "{err}");

        let args = AgentArgs {
            xdp_ifaces: Some(vec!["this-name-is-far-too-long".into()]),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args)
            .expect_err("long name")
            .to_string();
        assert!(err.contains("xdp_ifaces"), "{err}");

        let args = AgentArgs {
            xdp_ifaces: Some(vec!["eth0".into(), "eth0".into()]),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args)
            .expect_err("duplicate")
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn bad_log_filter_is_rejected() {
        let args = AgentArgs {
            log: Some("berth=notalevel".into()),
            ..Default::default()
        };
        let err = AgentConfig::resolve(&args)
            .expect_err("bad filter")
            .to_string();
        assert!(err.contains("log"), "{err}");
    }
}
