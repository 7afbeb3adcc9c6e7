//! A container's cgroups: cgroup v2 in full, cgroup v1 as a fallback, detected at run time.
//!
//! ```no_run
//! use berth_runtime::cgroups::{self, CgroupManager, Manager};
//! use nix::unistd::Pid;
//! # fn main() -> Result<(), cgroups::Error> {
//! # let resources = oci_spec::runtime::LinuxResources::default();
//! let hierarchy = cgroups::detect(std::path::Path::new(cgroups::DEFAULT_ROOT))?;
//! let manager = Manager::new(hierarchy, "", "my-container")?; // → berth/my-container
//! manager.create()?;
//! manager.apply(&resources)?;
//! manager.add_task(Pid::from_raw(1234))?;
//! let cgroup_id = manager.cgroup_id(); // what bpf_get_current_cgroup_id() returns in the container
//! # let _ = cgroup_id;
//! manager.destroy()?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`detect`] tells [`Hierarchy::V2`] (pure v2, `/sys/fs/cgroup` is cgroup2) from
//!   [`Hierarchy::V1`] (v1 controller mounts, plus the unified v2 mount of a hybrid host).
//! - [`Manager`] implements [`CgroupManager`] for either; inside, one struct per controller
//!   (`v2::memory::Memory`, `v1::cpu::Cpu`, …) turns `LinuxResources` into interface-file writes.
//! - Everything takes the hierarchy root as data, so unit tests run on a temp dir of fake
//!   cgroupfs files.
//!
//! # cgroup v1 vs v2
//! | | v2 | v1 (hybrid hosts) |
//! |---|---|---|
//! | directories | `<root>/<path>`; `cpu cpuset memory pids` enabled in every ancestor's `cgroup.subtree_control` | `<mount>/<path>` in every mounted controller, and `<unified>/<path>` |
//! | cgroup id ([`CgroupManager::cgroup_id`]) | inode of `<root>/<path>` | inode of `<unified>/<path>`; `None` without a unified mount |
//! | memory | `memory.max`, `memory.low`, `memory.swap.max` = swap − limit | `memory.limit_in_bytes`, `memory.soft_limit_in_bytes`, `memory.memsw.limit_in_bytes` (written in the order the kernel accepts), `memory.swappiness`, `memory.oom_control` |
//! | cpu | `cpu.weight` from shares (runc's conversion), `cpu.max`, `cpu.max.burst`, `cpu.idle` | `cpu.shares`, `cpu.cfs_period_us`/`cpu.cfs_quota_us`, `cpu.cfs_burst_us`, `cpu.idle`, `cpu.rt_*` |
//! | devices | **not enforced** (needs a `BPF_PROG_TYPE_CGROUP_DEVICE` program; logged as a warning) | `devices.allow` / `devices.deny` |
//! | freeze | `cgroup.freeze`, waits for `frozen 1` in `cgroup.events` | `freezer.state` FROZEN/THAWED (falls back to the unified `cgroup.freeze` when no freezer mount) |
//! | kill | `cgroup.kill` for SIGKILL, else freeze, signal each pid, thaw | same, with the unified `cgroup.kill` on hybrid hosts |
//! | `unified` map | written as-is after checks | rejected |
//!
//! Not applied (a warning is logged when set): `blockIO`, `hugepageLimits`, `network`, `rdma`,
//! kernel memory limits, and on v2 `swappiness`/`disableOOMKiller`.

mod common;
mod detect;
mod error;
mod fs;
mod path;
mod pids;
mod v1;
mod v2;

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

pub use detect::{DEFAULT_ROOT, Hierarchy, V1_CONTROLLERS, detect};
pub use error::{Error, Result};
pub use path::{DEFAULT_PARENT, resolve};

use v1::V1Manager;
use v2::V2Manager;

/// How long [`CgroupManager::freeze`] waits for every task to stop.
pub const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long [`CgroupManager::destroy`] waits for killed processes to leave the cgroup.
pub const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A cgroup's freezer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezerState {
    /// Every task is stopped.
    Frozen,
    /// A freeze was requested and some tasks are not stopped yet.
    Freezing,
    /// Tasks run.
    Thawed,
}

/// Usage figures for `berth ps` / `berth inspect`; `None` when the controller is absent or the
/// value is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub memory_usage_bytes: Option<u64>,
    /// v2 `memory.max`, v1 `memory.limit_in_bytes`; `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// `pids.current`.
    pub pids_current: Option<u64>,
    /// `pids.max`; `None` when unlimited.
    pub pids_limit: Option<u64>,
    /// v2 `cpu.stat` `usage_usec` × 1000, v1 `cpuacct.usage`.
    pub cpu_usage_ns: Option<u64>,
}

/// What the runtime does with a container's cgroups. [`Manager`] implements it for the host's
/// hierarchy; a test double can implement it too.
pub trait CgroupManager {
    /// Creates the container's cgroup (`mkdir -p`) in every relevant hierarchy; idempotent.
    fn create(&self) -> Result<()>;
    /// Moves `pid` (a whole process) into the cgroup in every hierarchy.
    fn add_task(&self, pid: Pid) -> Result<()>;
    /// Writes `linux.resources`. A value that does not validate is refused before anything of
    /// its controller is written.
    fn apply(&self, resources: &LinuxResources) -> Result<()>;
    /// Every process in the cgroup and its descendants, sorted.
    fn pids(&self) -> Result<Vec<Pid>>;
    /// Stops every task and waits (at most [`FREEZE_TIMEOUT`]) until the kernel reports the cgroup
    /// frozen; on timeout the cgroup is thawed again and an error returned.
    fn freeze(&self) -> Result<()>;
    /// Lets the tasks run again.
    fn thaw(&self) -> Result<()>;
    /// The freezer state.
    fn state(&self) -> Result<FreezerState>;
    /// Sends `signal` to every process in the cgroup (SIGKILL through `cgroup.kill` when the kernel
    /// has it; otherwise the cgroup is frozen while signalling so nothing forks away).
    fn kill_all(&self, signal: Signal) -> Result<()>;
    /// SIGKILLs anything left, waits (at most [`KILL_TIMEOUT`]) for it to leave, and removes the
    /// container's cgroup directories (child cgroups included) in every hierarchy. Parents such as
    /// `berth/` are left in place: other containers may be creating children in them.
    fn destroy(&self) -> Result<()>;
    /// Memory, pids and cpu usage.
    fn stats(&self) -> Result<Stats>;
    /// The container's cgroup v2 id (inode of its v2 directory), as `bpf_get_current_cgroup_id()`
    /// returns it for the container's tasks; `None` without a v2 hierarchy or before `create`.
    fn cgroup_id(&self) -> Option<u64>;
}

/// The container's cgroups on the host's hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manager {
    inner: Inner,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Inner {
    V2(V2Manager),
    V1(V1Manager),
}

impl Manager {
    /// A manager for `container_id` with OCI `linux.cgroupsPath` `cgroups_path` (empty when the
    /// spec has none); see [`resolve`] for the path rules. Touches nothing on disk.
    pub fn new(hierarchy: Hierarchy, cgroups_path: &str, container_id: &str) -> Result<Self> {
        let rel = resolve(cgroups_path, container_id)?;
        let inner = match hierarchy {
            Hierarchy::V2 { mount } => Inner::V2(V2Manager::new(mount, rel)),
            Hierarchy::V1 { mounts, unified } => Inner::V1(V1Manager::new(mounts, unified, rel)),
        };
        Ok(Self { inner })
    }

    /// The container's path relative to each hierarchy root, e.g. `berth/<id>`.
    pub fn relative_path(&self) -> &Path {
        match &self.inner {
            Inner::V2(m) => m.rel(),
            Inner::V1(m) => m.rel(),
        }
    }

    /// Every directory this manager creates, in creation order (the unified one last on v1).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.inner {
            Inner::V2(m) => vec![m.dir().to_path_buf()],
            Inner::V1(m) => m.all_dirs(),
        }
    }

    /// The container's cgroup v2 directory: the only one on a pure v2 host, the unified one on a
    /// hybrid host, `None` on a v1 host without a unified mount. This is the directory
    /// `clone3(CLONE_INTO_CGROUP)` can start a process in (see [`Manager::join_self`]).
    pub fn v2_dir(&self) -> Option<PathBuf> {
        match &self.inner {
            Inner::V2(m) => Some(m.dir().to_path_buf()),
            Inner::V1(m) => m.unified_dir(),
        }
    }

    /// Moves the calling process into the container's cgroup in every hierarchy, from inside;
    /// `in_v2` says the process already sits in [`Manager::v2_dir`] (it was cloned into it).
    ///
    /// Why from inside: a write of a pid to `cgroup.procs` (what [`CgroupManager::add_task`]
    /// does) takes the kernel's global `cgroup_threadgroup_rwsem` for writing, which waits for an
    /// RCU grace period: 6-30 ms on a 2-vCPU VM, more than the rest of a container start. A thread
    /// that moves *itself* through a v1 `tasks` file ("0" names the caller) skips that lock,
    /// because it cannot exit or exec while it migrates; a process created by
    /// `clone3(CLONE_INTO_CGROUP)` only takes it for reading, as every fork does. The v2 fallback
    /// (`in_v2` false: no clone3) writes "0" to `cgroup.procs` and pays the grace period.
    ///
    /// The caller must be single-threaded: a v1 `tasks` write moves one thread, which is the whole
    /// process only when it has no other.
    pub fn join_self(&self, in_v2: bool) -> Result<()> {
        let (v1_dirs, v2_dir) = match &self.inner {
            Inner::V2(m) => (Vec::new(), Some(m.dir().to_path_buf())),
            Inner::V1(m) => (m.v1_dirs(), m.unified_dir()),
        };
        for dir in v1_dirs {
            fs::write("cgroup", &dir, "tasks", "0")?;
        }
        if let Some(dir) = v2_dir.filter(|_| !in_v2) {
            fs::write("cgroup", &dir, "cgroup.procs", "0")?;
        }
        Ok(())
    }

    /// Whether `linux.resources.devices` rules are enforced (v1 only; see the module docs).
    pub fn devices_enforced(&self) -> bool {
        matches!(&self.inner, Inner::V1(m) if m.has_controller("devices"))
    }

    fn as_dyn(&self) -> &dyn CgroupManager {
        match &self.inner {
            Inner::V2(m) => m,
            Inner::V1(m) => m,
        }
    }
}

impl CgroupManager for Manager {
    fn create(&self) -> Result<()> {
        self.as_dyn().create()
    }
    fn add_task(&self, pid: Pid) -> Result<()> {
        self.as_dyn().add_task(pid)
    }
    fn apply(&self, resources: &LinuxResources) -> Result<()> {
        self.as_dyn().apply(resources)
    }
    fn pids(&self) -> Result<Vec<Pid>> {
        self.as_dyn().pids()
    }
    fn freeze(&self) -> Result<()> {
        self.as_dyn().freeze()
    }
    fn thaw(&self) -> Result<()> {
        self.as_dyn().thaw()
    }
    fn state(&self) -> Result<FreezerState> {
        self.as_dyn().state()
    }
    fn kill_all(&self, signal: Signal) -> Result<()> {
        self.as_dyn().kill_all(signal)
    }
    fn destroy(&self) -> Result<()> {
        self.as_dyn().destroy()
    }
    fn stats(&self) -> Result<Stats> {
        self.as_dyn().stats()
    }
    fn cgroup_id(&self) -> Option<u64> {
        self.as_dyn().cgroup_id()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod testutil;
