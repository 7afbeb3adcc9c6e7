//! The lifecycle code's view of a container's cgroup: the host hierarchy detected once per
//! call, errors flattened to text for the lifecycle errors.

use nix::{sys::signal::Signal, unistd::Pid};
use oci_spec::runtime::LinuxResources;

use crate::cgroups::{self, CgroupManager as _, FreezerState, Manager};

pub struct Cgroup(Manager);

impl Cgroup {
    /// The cgroup for OCI `cgroupsPath` `path` (empty: berth's default) of container `id`.
    /// A path recorded in the state file is relative to each hierarchy root: pass it with a
    /// leading '/' (absolute) so it is not nested under the default parent again.
    pub fn open(path: &str, id: &str) -> Result<Self, String> {
        let hierarchy = cgroups::detect(std::path::Path::new(cgroups::DEFAULT_ROOT))
            .map_err(|e| e.to_string())?;
        Manager::new(hierarchy, path, id)
            .map(Cgroup)
            .map_err(|e| e.to_string())
    }

    /// The recorded (relative) path as an absolute cgroupsPath.
    pub fn relative_path(&self) -> String {
        format!("/{}", self.0.relative_path().display())
    }

    pub fn create(&self) -> Result<(), String> {
        self.0.create().map_err(|e| e.to_string())
    }

    pub fn apply(&self, resources: &LinuxResources) -> Result<(), String> {
        self.0.apply(resources).map_err(|e| e.to_string())
    }

    /// The manager itself, for the container's init to join the cgroup from inside
    /// ([`cgroups::Manager::join_self`]).
    pub fn manager(&self) -> &Manager {
        &self.0
    }

    /// The container's cgroup v2 directory, opened for `clone3(CLONE_INTO_CGROUP)`; `None` when
    /// the host has no v2 hierarchy.
    pub fn open_v2_dir(&self) -> Result<Option<std::os::fd::OwnedFd>, String> {
        use nix::{fcntl::OFlag, sys::stat::Mode};
        let Some(dir) = self.0.v2_dir() else {
            return Ok(None);
        };
        nix::fcntl::open(
            &dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(Some)
        .map_err(|e| format!("opening {}: {e}", dir.display()))
    }

    pub fn pids(&self) -> Result<Vec<i32>, String> {
        self.0
            .pids()
            .map(|pids| pids.into_iter().map(Pid::as_raw).collect())
            .map_err(|e| e.to_string())
    }

    pub fn freeze(&self) -> Result<(), String> {
        self.0.freeze().map_err(|e| e.to_string())
    }

    pub fn thaw(&self) -> Result<(), String> {
        self.0.thaw().map_err(|e| e.to_string())
    }

    pub fn is_frozen(&self) -> bool {
        matches!(self.0.state(), Ok(FreezerState::Frozen))
    }

    pub fn kill_all(&self, signal: Signal) -> Result<(), String> {
        self.0.kill_all(signal).map_err(|e| e.to_string())
    }

    pub fn destroy(&self) -> Result<(), String> {
        self.0.destroy().map_err(|e| e.to_string())
    }

    pub fn id(&self) -> Option<u64> {
        self.0.cgroup_id()
    }
}
