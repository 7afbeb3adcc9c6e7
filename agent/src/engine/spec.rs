//! From an image's configuration and `berth run` flags to an OCI runtime spec, with the
//! defaults Docker and Podman apply: their capability set, masked and read-only paths, standard
//! mounts, new namespaces, and (unless told otherwise) the default seccomp profile.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use berth_image::ImageConfig;
use oci_spec::runtime::Spec;
use serde_json::json;

/// Docker's default capabilities.
pub use berth_runtime::process::DEFAULT_CAPABILITIES;

/// Paths Docker masks (bind /dev/null or an empty read-only tmpfs over them).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Which seccomp profile a container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    /// Docker's default profile, resolved for the container's capabilities.
    Default,
    /// No filter.
    Unconfined,
    /// A profile file (OCI `linux.seccomp` shape or Docker's format).
    File(PathBuf),
}

impl std::str::FromStr for SeccompChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "default" => SeccompChoice::Default,
            "unconfined" => SeccompChoice::Unconfined,
            "" => return Err("empty seccomp profile".into()),
            path => SeccompChoice::File(path.into()),
        })
    }
}

/// What `berth run` asks for, beyond the image.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub hostname: String,
    /// CMD override (after the image's entrypoint), empty for the image's CMD.
    pub command: Vec<String>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=VALUE`, after the image's environment (later wins).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub memory_bytes: Option<i64>,
    /// CPUs as a fraction (0.5 = half a CPU).
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub seccomp: Option<SeccompChoice>,
    pub terminal: bool,
    pub annotations: BTreeMap<String, String>,
    /// cgroupsPath (relative to each hierarchy root).
    pub cgroups_path: String,
    /// Host files bind-mounted read-only into the container (source, destination), after the
    /// standard mounts: the container's own `/etc/hosts` and `/etc/resolv.conf`.
    pub bind_files: Vec<(PathBuf, String)>,
    /// Share the host's network namespace (`--network host`) instead of getting a new one.
    pub host_network: bool,
}

/// Parses `64m`, `1g`, `512k`, `1048576` (binary multiples, as Docker does).
pub fn parse_memory(text: &str) -> Result<i64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("--memory {text:?}: expected a size such as 64m or 1g"))?;
    let bytes = (value * mult as f64) as i64;
    if bytes < 6 * (1 << 20) {
        return Err(format!("--memory {text:?}: the minimum is 6m"));
    }
    Ok(bytes)
}

/// Builds the spec. `rootfs` is the container's mounted root (for user lookups).
pub fn build(image: &ImageConfig, run: &RunSpec, rootfs: &Path) -> Result<Spec, String> {
    let mut args: Vec<String> = run
        .entrypoint
        .clone()
        .unwrap_or_else(|| image.entrypoint.clone());
    if run.command.is_empty() {
        if run.entrypoint.is_none() {
            args.extend(image.cmd.iter().cloned());
        }
    } else {
        args.extend(run.command.iter().cloned());
    }
    if args.is_empty() {
        return Err("the image has no entrypoint or command, and none was given".into());
    }
    let mut env: Vec<String> = Vec::new();
    for kv in image.env.iter().chain(run.env.iter()) {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e: &String| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, berth_image::config::DEFAULT_PATH_ENV.to_owned());
    }
    env.push(format!("HOSTNAME={}", run.hostname));
    let (uid, gid, additional) = resolve_user(
        run.user.as_deref().or(image.user.as_deref()).unwrap_or(""),
        rootfs,
    )?;
    let cwd = run
        .workdir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    if !cwd.starts_with('/') {
        return Err(format!("working directory {cwd:?} is not absolute"));
    }
    let caps = DEFAULT_CAPABILITIES;

    let mut resources = serde_json::Map::new();
    if let Some(bytes) = run.memory_bytes {
        resources.insert("memory".into(), json!({"limit": bytes, "swap": bytes}));
    }
    if let Some(cpus) = run.cpus {
        if cpus.is_nan() || cpus <= 0.0 {
            return Err(format!("--cpus {cpus}: must be positive"));
        }
        let period = 100_000u64;
        resources.insert(
            "cpu".into(),
            json!({"quota": (cpus * period as f64).round() as i64, "period": period}),
        );
    }
    if let Some(pids) = run.pids {
        resources.insert("pids".into(), json!({"limit": pids}));
    }
    let seccomp = match run.seccomp.clone().unwrap_or(SeccompChoice::Default) {
        SeccompChoice::Unconfined => None,
        SeccompChoice::Default => Some(berth_runtime::seccomp::default_profile(&caps)),
        SeccompChoice::File(path) => Some(
            berth_runtime::seccomp::profile_from_file(&path, &caps)
                .map_err(|e| format!("--seccomp-profile {}: {e}", path.display()))?,
        ),
    };

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for (source, destination) in &run.bind_files {
        if !destination.starts_with('/') {
            return Err(format!("mount destination {destination:?} is not absolute"));
        }
        mounts.push(json!({
            "destination": destination, "type": "bind", "source": source,
            "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
        }));
    }
    let mut namespaces = vec![json!({"type": "pid"})];
    if !run.host_network {
        namespaces.push(json!({"type": "network"}));
    }
    for ns in ["ipc", "uts", "mount", "cgroup"] {
        namespaces.push(json!({"type": ns}));
    }

    let config = json!({
        "ociVersion": "1.0.2",
        "hostname": run.hostname,
        "root": {"path": rootfs, "readonly": false},
        "process": {
            "terminal": run.terminal,
            "user": {"uid": uid, "gid": gid, "additionalGids": additional},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": [],
            },
            "noNewPrivileges": false,
        },
        "mounts": mounts,
        "annotations": run.annotations,
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "resources": resources,
            "cgroupsPath": run.cgroups_path,
            "seccomp": seccomp,
        },
    });
    serde_json::from_value(config).map_err(|e| format!("building config.json: {e}"))
}

/// `user`, `uid`, `user:group`, `uid:gid` → numeric ids, looked up in the container's
/// /etc/passwd and /etc/group; supplementary groups from /etc/group for named users.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32, Vec<u32>), String> {
    if user.is_empty() {
        return Ok((0, 0, Vec::new()));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let mut username = None;
    let (uid, default_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[2] == u)
                    .then(|| f[3].parse().ok())
                    .flatten()
            });
            (uid, gid.unwrap_or(0))
        }
        Err(_) => {
            let entry = passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && f[0] == u)
                .ok_or_else(|| format!("user {u:?} not found in the image's /etc/passwd"))?;
            username = Some(u.to_owned());
            (
                entry[2].parse().map_err(|_| format!("bad uid for {u}"))?,
                entry[3].parse().map_err(|_| format!("bad gid for {u}"))?,
            )
        }
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} not found in the image's /etc/group"))?,
        },
    };
    let additional = match &username {
        Some(name) => group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() > 3 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        None => Vec::new(),
    };
    Ok((uid, gid, additional))
}

/// A syscall the container's audit policies `deny` (from the agent): it fails with EPERM, or
/// only when its flags argument has any bit of `flags_mask`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct DenyRule {
    pub syscall: String,
    #[serde(default)]
    pub flags_arg: Option<u8>,
    #[serde(default)]
    pub flags_mask: u64,
}

/// Adds audit `deny` rules to a container's seccomp profile (none: a profile that allows
/// everything else). The syscall is taken out of every rule that named it, then:
/// - unconditional: an ERRNO(EPERM) rule;
/// - with flags: one ERRNO rule per flag bit (`arg & bit == bit`), and each rule that allowed
///   the syscall before keeps allowing it when none of the bits is set (`arg & mask == 0`), so
///   calls without those flags get exactly what they got before.
///
/// Errors when a rule that allowed the syscall already compares the flags argument (seccomp
/// cannot AND two comparisons of one argument in a rule).
pub fn merge_deny(
    profile: Option<oci_spec::runtime::LinuxSeccomp>,
    deny: &[DenyRule],
) -> Result<oci_spec::runtime::LinuxSeccomp, String> {
    if deny.is_empty()
        && let Some(p) = profile
    {
        return Ok(p);
    }
    let mut v = match profile {
        Some(p) => serde_json::to_value(p).map_err(|e| e.to_string())?,
        None => json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}),
    };
    let mut rules: Vec<serde_json::Value> = v["syscalls"].as_array().cloned().unwrap_or_default();
    for d in deny {
        let mut previous = Vec::new();
        for rule in &mut rules {
            let Some(names) = rule["names"].as_array_mut() else {
                continue;
            };
            let before = names.len();
            names.retain(|n| n.as_str() != Some(d.syscall.as_str()));
            if names.len() != before {
                let mut only = rule.clone();
                only["names"] = json!([d.syscall]);
                previous.push(only);
            }
        }
        rules.retain(|r| r["names"].as_array().is_some_and(|n| !n.is_empty()));
        let errno = |args: serde_json::Value| json!({"names": [d.syscall], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": args});
        match (d.flags_arg, d.flags_mask) {
            (Some(index), mask) if mask != 0 => {
                for bit in (0..64).map(|b| 1u64 << b).filter(|b| mask & b != 0) {
                    rules.push(errno(json!([
                        {"index": index, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}
                    ])));
                }
                for mut rule in previous {
                    let args = rule["args"].as_array().cloned().unwrap_or_default();
                    if args
                        .iter()
                        .any(|a| a["index"].as_u64() == Some(u64::from(index)))
                    {
                        return Err(format!(
                            "the container's seccomp profile already tests argument {index} of \
                             {} and an audit policy denies it by flags on that argument: seccomp \
                             cannot combine both; deny it without flags or change the profile",
                            d.syscall
                        ));
                    }
                    let mut args = args;
                    args.push(json!({"index": index, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}));
                    rule["args"] = args.into();
                    rules.push(rule);
                }
            }
            _ => rules.push(errno(json!([]))),
        }
    }
    v["syscalls"] = rules.into();
    let merged: oci_spec::runtime::LinuxSeccomp =
        serde_json::from_value(v).map_err(|e| format!("seccomp profile with deny rules: {e}"))?;
    berth_runtime::seccomp::validate(&merged).map_err(|e| e.to_string())?;
    berth_runtime::seccomp::build_filter(&merged).map_err(|e| e.to_string())?;
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nappgrp:x:1001:\nwheel:x:10:app\naudio:x:29:other,app\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn memory_sizes_parse_like_docker() {
        assert_eq!(parse_memory("64m").expect("64m"), 64 << 20);
        assert_eq!(parse_memory("1G").expect("1G"), 1 << 30);
        assert_eq!(parse_memory("10485760").expect("bytes"), 10 << 20);
        assert!(parse_memory("1k").is_err(), "below the 6m minimum");
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn users_resolve_through_the_images_files() {
        let dir = rootfs();
        assert_eq!(resolve_user("", dir.path()).expect("root"), (0, 0, vec![]));
        assert_eq!(
            resolve_user("app", dir.path()).expect("app"),
            (1000, 1001, vec![10, 29])
        );
        assert_eq!(
            resolve_user("1000", dir.path()).expect("uid"),
            (1000, 1001, vec![])
        );
        assert_eq!(
            resolve_user("app:wheel", dir.path()).expect("app:wheel"),
            (1000, 10, vec![29])
        );
        assert_eq!(
            resolve_user("5:6", dir.path()).expect("numeric"),
            (5, 6, vec![])
        );
        assert!(resolve_user("nobody", dir.path()).is_err());
    }

    #[test]
    fn command_entrypoint_env_and_limits_compose_like_docker() {
        let dir = rootfs();
        let image = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=1".into()],
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let run = RunSpec {
            hostname: "h".into(),
            command: vec!["override".into()],
            env: vec!["A=2".into()],
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: Some(32),
            seccomp: Some(SeccompChoice::Unconfined),
            cgroups_path: "/berth/x".into(),
            ..Default::default()
        };
        let spec = build(&image, &run, dir.path()).expect("spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(
            process.args().as_deref(),
            Some(&["/entry".to_owned(), "override".to_owned()][..])
        );
        let env = process.env().clone().unwrap_or_default();
        assert!(
            env.contains(&"A=2".to_owned()) && !env.contains(&"A=1".to_owned()),
            "{env:?}"
        );
        assert_eq!(process.cwd(), Path::new("/srv"));
        let v = serde_json::to_value(&spec).expect("json");
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 32);
        assert!(v["linux"]["seccomp"].is_null(), "unconfined");
        assert_eq!(
            v["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(14)
        );

        let defaulted = build(
            &image,
            &RunSpec {
                hostname: "h".into(),
                ..Default::default()
            },
            dir.path(),
        )
        .expect("spec");
        let v = serde_json::to_value(&defaulted).expect("json");
        assert_eq!(v["process"]["args"], json!(["/entry", "default"]));
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn network_files_are_mounted_read_only_and_host_network_shares_the_namespace() {
        let dir = rootfs();
        let image = ImageConfig {
            cmd: vec!["/bin/sh".into()],
            ..Default::default()
        };
        let run = RunSpec {
            bind_files: vec![(dir.path().join("hosts"), "/etc/hosts".into())],
            ..Default::default()
        };
        let v = serde_json::to_value(build(&image, &run, dir.path()).expect("spec")).expect("json");
        let mounts = v["mounts"].as_array().expect("mounts");
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .expect("hosts mount");
        assert_eq!(hosts["type"], "bind");
        assert!(
            hosts["options"]
                .as_array()
                .expect("options")
                .contains(&json!("ro"))
        );
        let types = |v: &serde_json::Value| -> Vec<String> {
            v["linux"]["namespaces"]
                .as_array()
                .expect("namespaces")
                .iter()
                .map(|n| n["type"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        assert!(types(&v).contains(&"network".to_owned()));
        let host = RunSpec {
            host_network: true,
            ..Default::default()
        };
        let v =
            serde_json::to_value(build(&image, &host, dir.path()).expect("spec")).expect("json");
        assert!(
            !types(&v).contains(&"network".to_owned()),
            "{:?}",
            types(&v)
        );
        assert!(types(&v).contains(&"uts".to_owned()));
    }

    #[test]
    fn no_command_anywhere_is_an_error() {
        let dir = rootfs();
        let err =
            build(&ImageConfig::default(), &RunSpec::default(), dir.path()).expect_err("no cmd");
        assert!(err.contains("no entrypoint or command"), "{err}");
    }

    #[test]
    fn deny_rules_merge_into_the_seccomp_profile() {
        let rule = |syscall: &str, flags_arg, flags_mask| DenyRule {
            syscall: syscall.into(),
            flags_arg,
            flags_mask,
        };
        // Unconfined: everything else stays allowed.
        let p = merge_deny(None, &[rule("ptrace", None, 0)]).expect("merge");
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(v["syscalls"][0]["names"], json!(["ptrace"]));
        assert_eq!(v["syscalls"][0]["action"], "SCMP_ACT_ERRNO");

        // The default profile: the syscall leaves the allow list, calls with the flag fail,
        // calls without it stay allowed.
        let default = berth_runtime::seccomp::default_profile(&["CAP_CHOWN"]);
        let p = merge_deny(Some(default), &[rule("openat", Some(2), 0o100)]).expect("merge");
        let v = serde_json::to_value(&p).expect("json");
        let rules: Vec<&serde_json::Value> = v["syscalls"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| {
                r["names"]
                    .as_array()
                    .expect("names")
                    .iter()
                    .any(|n| n == "openat")
            })
            .collect();
        assert_eq!(rules.len(), 2, "{rules:?}");
        assert_eq!(rules[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rules[0]["args"][0]["value"], 0o100);
        assert_eq!(rules[1]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(rules[1]["args"][0]["valueTwo"], 0);
        assert_eq!(rules[1]["names"], json!(["openat"]));

        // A profile rule already testing the flags argument cannot be combined.
        let default = berth_runtime::seccomp::default_profile(&[]);
        let err = merge_deny(Some(default), &[rule("clone", Some(0), 0x1000_0000)])
            .expect_err("clone's flags are already tested");
        assert!(err.contains("argument 0 of clone"), "{err}");
    }
}
