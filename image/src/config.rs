//! The image configuration: what a container of this image runs by default.
//!
//! [`ImageConfig`] is the flattened view the runtime uses; [`ConfigFile`] is the JSON blob
//! (OCI `application/vnd.oci.image.config.v1+json`, which Docker's
//! `application/vnd.docker.container.image.v1+json` is a superset of). Parsing is tolerant of
//! the `null`s and extra fields Docker writes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Default `PATH` for generated configs, as Docker sets it.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container of this image runs by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group`, `uid:gid`, … as the image gives it.
    pub user: Option<String>,
    /// `port/proto` keys, e.g. `80/tcp`.
    pub exposed_ports: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
}

/// The `config` object inside the configuration blob (PascalCase keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RuntimeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The configuration blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RuntimeConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<serde_json::Value>>,
}

impl From<&RuntimeConfig> for ImageConfig {
    fn from(c: &RuntimeConfig) -> Self {
        Self {
            env: c.env.clone().unwrap_or_default(),
            entrypoint: c.entrypoint.clone().unwrap_or_default(),
            cmd: c.cmd.clone().unwrap_or_default(),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user: c.user.clone().filter(|u| !u.is_empty()),
            exposed_ports: c
                .exposed_ports
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            labels: c.labels.clone().unwrap_or_default(),
            volumes: c
                .volumes
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            stop_signal: c.stop_signal.clone().filter(|s| !s.is_empty()),
        }
    }
}

impl From<&ImageConfig> for RuntimeConfig {
    fn from(c: &ImageConfig) -> Self {
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let as_map = |s: &BTreeSet<String>| {
            (!s.is_empty()).then(|| {
                s.iter()
                    .map(|k| (k.clone(), serde_json::Value::Object(Default::default())))
                    .collect()
            })
        };
        Self {
            user: c.user.clone(),
            exposed_ports: as_map(&c.exposed_ports),
            env: non_empty(&c.env),
            entrypoint: non_empty(&c.entrypoint),
            cmd: non_empty(&c.cmd),
            volumes: as_map(&c.volumes),
            working_dir: c.working_dir.clone(),
            labels: (!c.labels.is_empty()).then(|| c.labels.clone()),
            stop_signal: c.stop_signal.clone(),
        }
    }
}

impl ConfigFile {
    /// The runtime view of this configuration.
    pub fn image_config(&self) -> ImageConfig {
        self.config
            .as_ref()
            .map(ImageConfig::from)
            .unwrap_or_default()
    }

    /// A config for a one-layer image imported from a rootfs tarball: linux/amd64, `PATH` set
    /// when the caller gave no `PATH`, and `Cmd ["/bin/sh"]` unless an entrypoint or command
    /// was given.
    pub fn for_rootfs(given: &ImageConfig, diff_id: &crate::digest::Digest) -> Self {
        let mut config = given.clone();
        if !config.env.iter().any(|e| e.starts_with("PATH=")) {
            config.env.insert(0, DEFAULT_PATH_ENV.to_owned());
        }
        if config.cmd.is_empty() && config.entrypoint.is_empty() {
            config.cmd = vec!["/bin/sh".to_owned()];
        }
        let created = rfc3339(SystemTime::now());
        Self {
            created: Some(created.clone()),
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            config: Some(RuntimeConfig::from(&config)),
            rootfs: RootFs {
                typ: "layers".into(),
                diff_ids: vec![diff_id.to_string()],
            },
            history: Some(vec![serde_json::json!({
                "created": created,
                "created_by": "berth image import",
            })]),
        }
    }
}

/// `2006-01-02T15:04:05Z` for `t` (UTC, whole seconds).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn parses_docker_config_with_nulls() {
        let json = r##"{
            "architecture": "amd64", "os": "linux", "docker_version": "20.10",
            "config": {"Hostname": "", "Env": ["PATH=/bin", "A=b"], "Cmd": ["sh"],
                       "Entrypoint": null, "Labels": null, "WorkingDir": "",
                       "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Volumes": null,
                       "User": "1000:1000"},
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop)"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}
        }"##;
        let f: ConfigFile = serde_json::from_str(json).expect("parse");
        let c = f.image_config();
        assert_eq!(c.env, vec!["PATH=/bin", "A=b"]);
        assert_eq!(c.cmd, vec!["sh"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.working_dir, None);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(
            c.exposed_ports.into_iter().collect::<Vec<_>>(),
            vec!["53/udp", "80/tcp"]
        );
    }

    #[test]
    fn rootfs_config_defaults_and_round_trip() {
        let diff = crate::digest::Digest::of_bytes(b"x");
        let f = ConfigFile::for_rootfs(&ImageConfig::default(), &diff);
        let c = f.image_config();
        assert_eq!(c.cmd, vec!["/bin/sh"]);
        assert_eq!(c.env, vec![DEFAULT_PATH_ENV]);
        assert_eq!((f.architecture.as_str(), f.os.as_str()), ("amd64", "linux"));

        let given = ImageConfig {
            entrypoint: vec!["/bin/busybox".into()],
            env: vec!["PATH=/bin".into()],
            exposed_ports: ["8080/tcp".to_owned()].into(),
            labels: [("a".to_owned(), "b".to_owned())].into(),
            working_dir: Some("/srv".into()),
            ..Default::default()
        };
        let f = ConfigFile::for_rootfs(&given, &diff);
        let bytes = serde_json::to_vec(&f).expect("serialize");
        let back: ConfigFile = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(back.image_config(), given);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            v["config"]["ExposedPorts"]["8080/tcp"],
            serde_json::json!({})
        );
        assert_eq!(v["rootfs"]["diff_ids"][0], diff.to_string());
    }
}
