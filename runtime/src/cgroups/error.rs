//! The one error type of the cgroups module.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Result alias of the cgroups module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while managing a container's cgroups.
///
/// Each variant names what was being touched: the path, the controller or resource, the
/// interface file and the value, so a message alone is enough to find the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither a cgroup v2 mount nor any v1 controller was found under the root.
    #[error("no cgroup filesystem found at {root} (neither cgroup2 nor any v1 controller mount)")]
    NoCgroupFs { root: PathBuf },

    /// `statfs` on the cgroup root failed.
    #[error("statfs {path}")]
    Statfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    /// `linux.cgroupsPath` uses the systemd driver's `slice:prefix:name` syntax.
    #[error(
        "systemd cgroup driver not supported: cgroupsPath {path:?} looks like \"slice:prefix:name\"; \
         use a cgroupfs path such as \"/berth/<id>\""
    )]
    SystemdPath { path: String },

    /// `linux.cgroupsPath` cannot be used as a cgroupfs path.
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },

    /// The container id cannot be used as a cgroup directory name.
    #[error("invalid container id {id:?} for a cgroup name: {reason}")]
    InvalidId { id: String, reason: &'static str },

    /// A resource value is out of range or does not parse; nothing was written for it.
    #[error("invalid {resource} value {value:?} for {file}: {reason}")]
    InvalidValue {
        resource: &'static str,
        file: &'static str,
        value: String,
        reason: String,
    },

    /// A `linux.resources.unified` key that cannot be written.
    #[error("invalid unified resource key {key:?}: {reason}")]
    InvalidUnifiedKey { key: String, reason: String },

    /// A resource needs a v2 controller that the parent does not delegate to this cgroup.
    #[error(
        "{controller} controller is not available in {path} (not enabled in the parent's \
         cgroup.subtree_control); it is needed for the requested {controller} resources"
    )]
    ControllerNotAvailable {
        controller: &'static str,
        path: PathBuf,
    },

    /// A resource needs a v1 controller that is not mounted on this host.
    #[error(
        "{controller} controller is not mounted under the cgroup v1 root; it is needed for {resource}"
    )]
    ControllerNotMounted {
        controller: &'static str,
        resource: &'static str,
    },

    /// A resource or feature this cgroup version cannot express.
    #[error("{resource} is not supported on cgroup {version}: {reason}")]
    Unsupported {
        resource: &'static str,
        version: &'static str,
        reason: &'static str,
    },

    /// Reading an interface file failed.
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An interface file held something that does not parse.
    #[error("parse {path}: unexpected content {content:?}")]
    Parse { path: PathBuf, content: String },

    /// Writing a value to an interface file failed.
    #[error("{controller}: write {value:?} to {path}")]
    Write {
        controller: &'static str,
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },

    /// The kernel refused a memory limit (EBUSY): the cgroup already uses more than it.
    #[error(
        "memory: limit {value} written to {path} is below the current usage ({usage} bytes) \
         and the kernel could not reclaim enough (EBUSY)"
    )]
    LimitBelowUsage {
        path: PathBuf,
        value: String,
        usage: String,
    },

    /// Creating a cgroup directory failed.
    #[error("create cgroup directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Removing a cgroup directory failed for a reason other than it being busy.
    #[error("remove cgroup directory {path}")]
    Rmdir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A cgroup directory stayed busy (processes still in it) through every retry.
    #[error("remove cgroup directory {path}: still busy after {attempts} attempts")]
    RmdirBusy { path: PathBuf, attempts: u32 },

    /// Listing a cgroup directory's children failed.
    #[error("list cgroup directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Freezing or thawing did not complete in time (the previous state was restored).
    #[error("freezer: {path} did not become {target} within {waited:?}")]
    FreezeTimeout {
        path: PathBuf,
        target: &'static str,
        waited: Duration,
    },

    /// Processes were still in the cgroup after killing them.
    #[error("kill: {count} processes still in {path} after {waited:?}")]
    KillTimeout {
        path: PathBuf,
        count: usize,
        waited: Duration,
    },

    /// Sending a signal to a process of the cgroup failed.
    #[error("kill: send {signal} to pid {pid}")]
    Signal {
        pid: i32,
        signal: nix::sys::signal::Signal,
        #[source]
        source: nix::Error,
    },
}
