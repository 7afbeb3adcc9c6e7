//! Container state on disk: one directory per container under the runtime root
//! (`--root`, default `/run/berth/runc`), holding `state.json`, a snapshot of the bundle's
//! `config.json`, and the `exec.fifo` a created container waits on until `start`.
//!
//! The status is derived, never trusted from disk: the init process must still exist with the
//! start time recorded at create (so a recycled pid is not mistaken for the container), the fifo
//! tells created from running, and the cgroup freezer tells paused.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "container id {0:?} is invalid: use letters, digits, '_', '-', '.' (not starting with '.')"
    )]
    InvalidId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt state file {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { op, path, source }
}

/// The lifecycle status, as `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The OCI state document (`runtime state` output), plus what berth needs to manage the
/// container later.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// Host pid of the container's init process (0 once stopped and reaped).
    pub pid: i32,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// berth's own fields (ignored by OCI consumers).
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 (UTC).
    pub created: String,
    /// Start time of the init process in clock ticks since boot (/proc/<pid>/stat field 22).
    pub init_start_time: u64,
    /// The resolved cgroups path (relative to each hierarchy's root).
    pub cgroups_path: String,
    /// cgroup v2 id of the container's cgroup, what eBPF programs see; 0 if unknown.
    #[serde(default)]
    pub cgroup_id: u64,
}

/// The runtime root directory.
#[derive(Debug, Clone)]
pub struct StateRoot {
    pub dir: PathBuf,
}

/// Default runtime root.
pub const DEFAULT_ROOT: &str = "/run/berth/runc";

impl StateRoot {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn container_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_id(id)?;
        Ok(self.dir.join(id))
    }

    /// Creates the container's directory; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.container_dir(id)?;
        std::fs::create_dir_all(&self.dir).map_err(io("creating", &self.dir))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_owned()))
            }
            Err(e) => Err(io("creating", &dir)(e)),
        }
    }

    pub fn load(&self, id: &str) -> Result<Record, StateError> {
        let dir = self.container_dir(id)?;
        let path = dir.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_owned()));
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// Writes `record` atomically (temp file + rename).
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let dir = self.container_dir(&record.id)?;
        let json = serde_json::to_vec_pretty(record).map_err(|e| StateError::Corrupt {
            path: dir.join("state.json"),
            message: e.to_string(),
        })?;
        replace_volatile(&dir.join("state.json"), &json)
    }

    /// The config.json snapshot taken at create.
    pub fn load_spec(&self, id: &str) -> Result<Spec, StateError> {
        let path = self.container_dir(id)?.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    pub fn save_spec(&self, id: &str, spec: &Spec) -> Result<(), StateError> {
        let path = self.container_dir(id)?.join("config.json");
        let json = serde_json::to_vec(spec).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        replace_volatile(&path, &json)
    }

    pub fn fifo_path(&self, id: &str) -> Result<PathBuf, StateError> {
        Ok(self.container_dir(id)?.join("exec.fifo"))
    }

    /// Ids of every container under the root, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let mut ids = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(io("listing", &self.dir)(e)),
        };
        for entry in entries.flatten() {
            if entry.path().join("state.json").exists() {
                ids.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.container_dir(id)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &dir)(e)),
        }
    }
}

/// Container ids become directory names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidId(id.to_owned()))
    }
}

/// Writes `data` to `path` through a temp file in the same directory and a rename, synced to
/// disk before the rename: for files that must survive a crash of the machine.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    write_via_rename(path, data, true)
}

/// Writes a container's own record (`state.json`, the `config.json` snapshot) like
/// [`write_atomic`], without the `fdatasync`.
///
/// The rename still makes every reader (another `berth-runc` command, a crashed and restarted
/// caller) see the old or the new content, never a mix. What the sync adds is only durability
/// across a crash of the machine, and a record describes live kernel objects (the init process,
/// its cgroups and namespaces) that such a crash destroys: the status is derived from the kernel,
/// so a record that survived says "stopped" either way. runc and crun do not sync their state
/// either. Measured: the three syncs of a `run` took 0.5-12 ms each on this machine kind's
/// ext4-backed `/run`, up to half of a container start.
fn replace_volatile(path: &Path, data: &[u8]) -> Result<(), StateError> {
    write_via_rename(path, data, false)
}

fn write_via_rename(path: &Path, data: &[u8], sync: bool) -> Result<(), StateError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    file.write_all(data).map_err(io("writing", &tmp))?;
    if sync {
        file.sync_data().map_err(io("syncing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))
}

/// Start time (clock ticks since boot) and state letter of `pid`, or `None` if it is gone.
pub fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is index 19 after the state (field 3).
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// Whether the recorded init process is still the live process it was at create.
pub fn init_alive(record: &Record) -> bool {
    if record.pid <= 0 {
        return false;
    }
    matches!(proc_stat(record.pid), Some((start, state)) if start == record.init_start_time && state != 'Z' && state != 'X')
}

/// Current time as RFC 3339 UTC, without a date-time dependency.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (date, time) = civil(secs);
    format!("{date}T{time}Z")
}

/// Nanoseconds since the Unix epoch as RFC 3339 UTC with microseconds.
pub fn rfc3339_micros(ns: u64) -> String {
    let (date, time) = civil(ns / 1_000_000_000);
    format!("{date}T{time}.{:06}Z", ns % 1_000_000_000 / 1_000)
}

/// Seconds since the epoch as (`YYYY-MM-DD`, `hh:mm:ss`): civil-from-days (Howard Hinnant's
/// algorithm), valid for the Unix era.
fn civil(secs: u64) -> (String, String) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (
        format!("{y:04}-{mo:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for good in ["abc", "a-b_c.d", "0123456789abcdef", "x+y"] {
            validate_id(good).expect(good);
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn create_dir_is_exclusive_and_records_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = StateRoot::new(tmp.path());
        root.create_dir("c1").expect("first");
        assert!(matches!(root.create_dir("c1"), Err(StateError::Exists(_))));
        let record = Record {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            status: Status::Created,
            pid: 42,
            bundle: "/b".into(),
            annotations: HashMap::new(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            init_start_time: 7,
            cgroups_path: "berth/c1".into(),
            cgroup_id: 0,
        };
        root.save(&record).expect("save");
        let back = root.load("c1").expect("load");
        assert_eq!(back.pid, 42);
        assert_eq!(back.status, Status::Created);
        assert_eq!(root.list().expect("list"), vec!["c1".to_owned()]);
        root.remove("c1").expect("remove");
        assert!(matches!(root.load("c1"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn own_process_is_alive_and_parsed() {
        let pid = std::process::id() as i32;
        let (start, state) = proc_stat(pid).expect("self");
        assert!(start > 0);
        assert!(state == 'R' || state == 'S');
        assert!(proc_stat(i32::MAX).is_none());
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn rfc3339_has_the_right_shape() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
        assert!(now.ends_with('Z'));
    }
}
