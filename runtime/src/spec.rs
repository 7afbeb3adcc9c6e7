//! Loading and validating a bundle's `config.json`.
//!
//! Parsing is oci-spec's; validation here catches what the types allow but a runtime cannot
//! run, before anything is created: every error names the field.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {bundle}: {source}")]
    Bundle {
        bundle: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config.json: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The config.json `berth-runc spec` writes: oci-spec's default (runc's `spec` template:
/// `sh` on a terminal, new pid/net/ipc/uts/mount/cgroup namespaces, the standard mounts, masked
/// and read-only paths, and the three default capabilities).
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some("berth".into()));
    spec
}

/// A validated bundle: its canonical directory, the spec, and the canonical rootfs path.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads `<bundle>/config.json` and validates it.
    pub fn load(bundle: &Path) -> Result<Self, SpecError> {
        let dir = bundle.canonicalize().map_err(|source| SpecError::Bundle {
            bundle: bundle.to_owned(),
            source,
        })?;
        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).map_err(|source| SpecError::Bundle {
            bundle: config.clone(),
            source,
        })?;
        let spec: Spec = serde_json::from_str(&text).map_err(|e| SpecError::Parse {
            path: config.clone(),
            message: e.to_string(),
        })?;
        let rootfs = validate(&spec, &dir)?;
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// Checks `spec` for a bundle at `dir`; returns the canonical rootfs path.
pub fn validate(spec: &Spec, dir: &Path) -> Result<PathBuf, SpecError> {
    if !spec.version().starts_with("1.") {
        return Err(invalid(
            "ociVersion",
            format!("{:?} is not a 1.x version", spec.version()),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing"))?;
    let rootfs = dir.join(root.path());
    let rootfs = rootfs
        .canonicalize()
        .map_err(|e| invalid("root.path", format!("{}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing"))?;
    validate_process(process, "process")?;

    for (i, mount) in spec.mounts().iter().flatten().enumerate() {
        if !mount.destination().is_absolute() {
            return Err(invalid(
                format!("mounts[{i}].destination"),
                format!("{} is not absolute", mount.destination().display()),
            ));
        }
    }

    let Some(linux) = spec.linux() else {
        return Err(invalid("linux", "missing: berth runs Linux containers"));
    };
    let mut seen = HashSet::new();
    let mut has_userns = false;
    let mut new_uts = false;
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(
                format!("linux.namespaces[{i}]"),
                format!("namespace {} listed twice", ns.typ()),
            ));
        }
        if let Some(path) = ns.path() {
            if !path.exists() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    format!("{} does not exist", path.display()),
                ));
            }
        } else if ns.typ() == LinuxNamespaceType::Uts {
            new_uts = true;
        }
        if ns.typ() == LinuxNamespaceType::User {
            has_userns = true;
        }
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(invalid(
                format!("linux.namespaces[{i}]"),
                "time namespaces are not supported",
            ));
        }
    }
    if !seen.contains(&LinuxNamespaceType::Mount) {
        return Err(invalid(
            "linux.namespaces",
            "a mount namespace is required (berth never pivots the host's root)",
        ));
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !new_uts {
        return Err(invalid(
            "hostname",
            "setting a hostname needs a new uts namespace",
        ));
    }
    let mappings = linux.uid_mappings().iter().flatten().count()
        + linux.gid_mappings().iter().flatten().count();
    if has_userns {
        let joins = linux
            .namespaces()
            .iter()
            .flatten()
            .any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_some());
        if !joins
            && (linux.uid_mappings().as_ref().is_none_or(Vec::is_empty)
                || linux.gid_mappings().as_ref().is_none_or(Vec::is_empty))
        {
            return Err(invalid(
                "linux.uidMappings",
                "a new user namespace needs uidMappings and gidMappings",
            ));
        }
    } else if mappings > 0 {
        return Err(invalid(
            "linux.uidMappings",
            "mappings given without a user namespace",
        ));
    }
    for (key, _) in linux.sysctl().iter().flatten() {
        if key.is_empty() || key.contains("..") || key.starts_with('/') {
            return Err(invalid(format!("linux.sysctl.{key}"), "not a sysctl name"));
        }
    }
    if let Some(path) = linux.cgroups_path()
        && path.to_string_lossy().contains(':')
        && !path.is_absolute()
    {
        return Err(invalid(
            "linux.cgroupsPath",
            format!(
                "{} looks like a systemd slice path; the systemd cgroup driver is not supported",
                path.display()
            ),
        ));
    }
    if let Some(hooks) = spec.hooks() {
        for (kind, list) in [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
            ("poststart", hooks.poststart()),
            ("poststop", hooks.poststop()),
        ] {
            for (i, hook) in list.iter().flatten().enumerate() {
                if !hook.path().is_absolute() {
                    return Err(invalid(
                        format!("hooks.{kind}[{i}].path"),
                        format!("{} is not absolute", hook.path().display()),
                    ));
                }
                if hook.timeout().is_some_and(|t| t <= 0) {
                    return Err(invalid(
                        format!("hooks.{kind}[{i}].timeout"),
                        "must be positive",
                    ));
                }
            }
        }
    }
    Ok(rootfs)
}

/// Checks a process definition (the container's or one given to `exec`).
pub fn validate_process(
    process: &oci_spec::runtime::Process,
    field: &str,
) -> Result<(), SpecError> {
    let args = process.args().as_ref().map_or(&[][..], Vec::as_slice);
    if args.is_empty() || args[0].is_empty() {
        return Err(invalid(format!("{field}.args"), "must name a program"));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            format!("{field}.cwd"),
            format!("{} is not absolute", process.cwd().display()),
        ));
    }
    for (i, var) in process.env().iter().flatten().enumerate() {
        if !var.contains('=') {
            return Err(invalid(
                format!("{field}.env[{i}]"),
                format!("{var:?} is not KEY=VALUE"),
            ));
        }
    }
    for (i, rlimit) in process.rlimits().iter().flatten().enumerate() {
        if rlimit.soft() > rlimit.hard() {
            return Err(invalid(
                format!("{field}.rlimits[{i}]"),
                "soft limit above hard limit",
            ));
        }
    }
    if let Some(adj) = process.oom_score_adj()
        && !(-1000..=1000).contains(&adj)
    {
        return Err(invalid(
            format!("{field}.oomScoreAdj"),
            format!("{adj} is outside -1000..=1000"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("rootfs")).expect("rootfs");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&config).expect("json"),
        )
        .expect("write config");
        dir
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "uts"}]},
            "hostname": "box"
        })
    }

    #[test]
    fn a_minimal_bundle_loads() {
        let dir = bundle_with(base());
        let bundle = Bundle::load(dir.path()).expect("valid");
        assert!(bundle.rootfs.ends_with("rootfs"));
    }

    fn error_for(patch: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut config = base();
        patch(&mut config);
        let dir = bundle_with(config);
        Bundle::load(dir.path()).expect_err("invalid").to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let err = error_for(|c| c["process"]["args"] = serde_json::json!([]));
        assert!(err.contains("process.args"), "{err}");
        let err = error_for(|c| c["process"]["cwd"] = serde_json::json!("relative"));
        assert!(err.contains("process.cwd"), "{err}");
        let err = error_for(|c| c["root"]["path"] = serde_json::json!("missing"));
        assert!(err.contains("root.path"), "{err}");
        let err = error_for(|c| c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]));
        assert!(err.contains("mount namespace"), "{err}");
        let err = error_for(|c| {
            c["linux"]["namespaces"] =
                serde_json::json!([{"type": "mount"}, {"type": "mount"}, {"type": "uts"}])
        });
        assert!(err.contains("listed twice"), "{err}");
        let err = error_for(|c| {
            c["linux"]["namespaces"] =
                serde_json::json!([{"type": "mount"}, {"type": "uts"}, {"type": "user"}])
        });
        assert!(err.contains("uidMappings"), "{err}");
        let err = error_for(|c| c["process"]["env"] = serde_json::json!(["NOEQUALS"]));
        assert!(err.contains("process.env[0]"), "{err}");
        let err = error_for(|c| c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]));
        assert!(err.contains("hostname"), "{err}");
        let err = error_for(|c| c["ociVersion"] = serde_json::json!("0.9"));
        assert!(err.contains("ociVersion"), "{err}");
    }

    #[test]
    fn malformed_json_is_reported_with_its_path() {
        let dir = bundle_with(base());
        std::fs::write(dir.path().join("config.json"), b"{ not json").expect("write");
        let err = Bundle::load(dir.path()).expect_err("invalid").to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
