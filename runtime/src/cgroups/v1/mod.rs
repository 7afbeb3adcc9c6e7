//! cgroup v1: one hierarchy per controller (or group of co-mounted controllers), plus the
//! unified v2 hierarchy of a hybrid host, where the container also gets a cgroup so that
//! `bpf_get_current_cgroup_id()` identifies it.

pub(crate) mod cpu;
pub(crate) mod cpuset;
pub(crate) mod devices;
pub(crate) mod freezer;
pub(crate) mod memory;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::common::{self, Controller};
use super::error::{Error, Result};
use super::{CgroupManager, FREEZE_TIMEOUT, FreezerState, Stats, fs, v2};

/// v1 `memory.limit_in_bytes` reads as PAGE_COUNTER_MAX pages when unlimited; anything this
/// large is "no limit".
const V1_UNLIMITED: u64 = 1 << 62;

/// A container's cgroups on a v1 (or hybrid) host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct V1Manager {
    /// controller → its hierarchy's mount point.
    mounts: BTreeMap<String, PathBuf>,
    /// The unified (v2) mount point of a hybrid host.
    unified: Option<PathBuf>,
    rel: PathBuf,
}

/// Where the freezer lives: the v1 controller, or the unified hierarchy's core freezer.
enum Freezer {
    V1(PathBuf),
    V2(PathBuf),
}

impl V1Manager {
    pub(crate) fn new(
        mounts: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
        rel: PathBuf,
    ) -> Self {
        Self {
            mounts,
            unified,
            rel,
        }
    }

    pub(crate) fn rel(&self) -> &Path {
        &self.rel
    }

    pub(crate) fn has_controller(&self, controller: &str) -> bool {
        self.mounts.contains_key(controller)
    }

    /// The container's directory in `controller`'s hierarchy.
    fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.mounts.get(controller).map(|m| m.join(&self.rel))
    }

    /// The container's directory in the unified hierarchy.
    pub(crate) fn unified_dir(&self) -> Option<PathBuf> {
        self.unified.as_ref().map(|u| u.join(&self.rel))
    }

    /// Distinct hierarchy mount points (co-mounted controllers share one).
    fn mount_points(&self) -> BTreeSet<&PathBuf> {
        self.mounts.values().collect()
    }

    /// The container's directory in every v1 hierarchy (one per mount point).
    pub(crate) fn v1_dirs(&self) -> Vec<PathBuf> {
        self.mount_points()
            .into_iter()
            .map(|m| m.join(&self.rel))
            .collect()
    }

    /// The container's directory in every v1 hierarchy, then in the unified one.
    pub(crate) fn all_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.v1_dirs();
        dirs.extend(self.unified_dir());
        dirs
    }

    fn freezer(&self) -> Result<Freezer> {
        if let Some(dir) = self.dir("freezer") {
            return Ok(Freezer::V1(dir));
        }
        if let Some(dir) = self.unified_dir() {
            return Ok(Freezer::V2(dir));
        }
        Err(Error::ControllerNotMounted {
            controller: "freezer",
            resource: "freeze/thaw",
        })
    }

    fn set_freezer(&self, target: FreezerState) -> Result<()> {
        match self.freezer()? {
            Freezer::V1(dir) => freezer::set(&dir, target, FREEZE_TIMEOUT),
            Freezer::V2(dir) => v2::freezer::set(&dir, target, FREEZE_TIMEOUT),
        }
    }

    /// Applies `C` in its hierarchy when `r` needs it; an unmounted controller is an error then.
    fn apply_controller<C: Controller>(&self, r: &LinuxResources) -> Result<()> {
        if !C::needed(r) {
            return Ok(());
        }
        let dir = self.dir(C::NAME).ok_or(Error::ControllerNotMounted {
            controller: C::NAME,
            resource: "linux.resources",
        })?;
        C::apply(&dir, r)
    }
}

impl CgroupManager for V1Manager {
    fn create(&self) -> Result<()> {
        for mount in self.mount_points() {
            fs::mkdir_all(mount, &self.rel)?;
        }
        if let Some(mount) = self.mounts.get("cpuset") {
            for dir in fs::chain(mount, &self.rel).iter().skip(1) {
                cpuset::inherit_from_parent(dir)?;
            }
        }
        if let Some(unified) = &self.unified {
            fs::mkdir_all(unified, &self.rel)?;
        }
        Ok(())
    }

    fn add_task(&self, pid: Pid) -> Result<()> {
        for dir in self.all_dirs() {
            fs::add_proc(&dir, pid)?;
        }
        Ok(())
    }

    fn apply(&self, r: &LinuxResources) -> Result<()> {
        common::warn_ignored(r, "v1");
        if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(Error::Unsupported {
                resource: "linux.resources.unified",
                version: "v1",
                reason: "it holds cgroup v2 interface files",
            });
        }
        self.apply_controller::<cpuset::Cpuset>(r)?;
        self.apply_controller::<cpu::Cpu>(r)?;
        self.apply_controller::<memory::Memory>(r)?;
        self.apply_controller::<crate::cgroups::pids::Pids>(r)?;
        self.apply_controller::<devices::Devices>(r)?;
        Ok(())
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        common::pids_in(&self.all_dirs())
    }

    fn freeze(&self) -> Result<()> {
        self.set_freezer(FreezerState::Frozen)
    }

    fn thaw(&self) -> Result<()> {
        self.set_freezer(FreezerState::Thawed)
    }

    fn state(&self) -> Result<FreezerState> {
        match self.freezer()? {
            Freezer::V1(dir) => freezer::state(&dir),
            Freezer::V2(dir) => v2::freezer::state(&dir),
        }
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        common::kill_all(
            self,
            self.unified_dir().map(|d| d.join("cgroup.kill")),
            signal,
        )
    }

    fn destroy(&self) -> Result<()> {
        let events = self.unified_dir().map(|d| d.join("cgroup.events"));
        common::destroy(self, &self.all_dirs(), events.as_deref())
    }

    fn stats(&self) -> Result<Stats> {
        let read = |controller: &str, file: &str| match self.dir(controller) {
            Some(dir) => fs::read_u64_optional(&dir.join(file)),
            None => Ok(None),
        };
        let mut cpu_usage_ns = read("cpuacct", "cpuacct.usage")?;
        if cpu_usage_ns.is_none()
            && let Some(dir) = self.unified_dir()
        {
            let cpu_stat = dir.join("cpu.stat");
            if let Some(content) = fs::read_optional(&cpu_stat)? {
                cpu_usage_ns =
                    fs::flat_keyed(&cpu_stat, &content, "usage_usec")?.map(|us| us * 1000);
            }
        }
        Ok(Stats {
            memory_usage_bytes: read("memory", "memory.usage_in_bytes")?,
            memory_limit_bytes: read("memory", "memory.limit_in_bytes")?
                .filter(|&l| l < V1_UNLIMITED),
            pids_current: read("pids", "pids.current")?,
            pids_limit: read("pids", "pids.max")?,
            cpu_usage_ns,
        })
    }

    fn cgroup_id(&self) -> Option<u64> {
        common::inode(&self.unified_dir()?)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;

    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxResourcesBuilder};

    use super::*;
    use crate::cgroups::testutil::{fake_v1, files, full_resources, read};
    use crate::cgroups::{Hierarchy, Manager};

    #[test]
    fn full_resources_write_exact_v1_strings() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let m = Manager::new(fake_v1(root, "c1", true), "", "c1").unwrap();
        m.apply(&full_resources()).unwrap();
        let leaf = |h: &str, f: &str| read(root.join(h).join("berth/c1").join(f));
        assert_eq!(leaf("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(leaf("memory", "memory.memsw.limit_in_bytes"), "134217728");
        assert_eq!(leaf("memory", "memory.soft_limit_in_bytes"), "33554432");
        assert_eq!(leaf("cpu,cpuacct", "cpu.shares"), "512");
        assert_eq!(leaf("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
        assert_eq!(leaf("cpu,cpuacct", "cpu.cfs_period_us"), "100000");
        assert_eq!(leaf("cpuset", "cpuset.cpus"), "0");
        assert_eq!(leaf("cpuset", "cpuset.mems"), "0");
        assert_eq!(leaf("pids", "pids.max"), "32");
        assert_eq!(leaf("devices", "devices.deny"), "a *:* rwm");
        assert_eq!(leaf("devices", "devices.allow"), "c 1:3 rwm");
        assert!(m.devices_enforced());
    }

    #[test]
    fn create_makes_every_hierarchy_and_seeds_cpuset() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let h = fake_v1(root, "c1", false);
        // The kernel gives a new v1 cpuset empty cpus/mems; the fake pre-creates them the same
        // way for berth/ and berth/c1 (a plain mkdir cannot make interface files).
        for d in ["cpuset/berth", "cpuset/berth/c1"] {
            files(
                &root.join(d),
                &[("cpuset.cpus", "\n"), ("cpuset.mems", "\n")],
            );
        }
        let m = Manager::new(h, "/tenant/../berth/c1", "c1");
        assert!(m.is_err(), "'..' must be refused");
        let m = Manager::new(fake_v1(root, "c1", false), "/berth/c1", "c1").unwrap();
        m.create().unwrap();
        let expected: Vec<PathBuf> = [
            "cpu,cpuacct",
            "cpuset",
            "devices",
            "freezer",
            "memory",
            "pids",
            "unified",
        ]
        .iter()
        .map(|h| root.join(h).join("berth/c1"))
        .collect();
        assert_eq!(m.dirs(), expected);
        for d in &expected {
            assert!(d.is_dir(), "{}", d.display());
        }
        assert_eq!(read(root.join("cpuset/berth/cpuset.cpus")), "0-1");
        assert_eq!(read(root.join("cpuset/berth/c1/cpuset.cpus")), "0-1");
        assert_eq!(read(root.join("cpuset/berth/c1/cpuset.mems")), "0");
    }

    #[test]
    fn add_task_joins_every_hierarchy_including_unified() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let m = Manager::new(fake_v1(root, "c1", true), "", "c1").unwrap();
        m.add_task(Pid::from_raw(4242)).unwrap();
        for d in m.dirs() {
            assert_eq!(read(d.join("cgroup.procs")), "4242", "{}", d.display());
        }
        let pids: Vec<i32> = m.pids().unwrap().into_iter().map(Pid::as_raw).collect();
        assert_eq!(pids, [4242]);
        let unified = root.join("unified/berth/c1");
        assert_eq!(
            m.cgroup_id(),
            Some(std::fs::metadata(unified).unwrap().ino())
        );
    }

    #[test]
    fn join_self_moves_the_caller_through_tasks_and_unified_procs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let m = Manager::new(fake_v1(root, "c1", true), "", "c1").unwrap();
        let unified = root.join("unified/berth/c1");
        assert_eq!(m.v2_dir(), Some(unified.clone()));
        // Cloned into the unified cgroup already: only the v1 `tasks` files are written, with
        // "0" (the calling thread), never a pid to `cgroup.procs`.
        m.join_self(true).unwrap();
        for d in m.dirs() {
            let (tasks, procs) = (read(d.join("tasks")), read(d.join("cgroup.procs")));
            if d == unified {
                assert_eq!((tasks.as_str(), procs.as_str()), ("", ""));
            } else {
                assert_eq!(
                    (tasks.as_str(), procs.as_str()),
                    ("0", ""),
                    "{}",
                    d.display()
                );
            }
        }
        // Not cloned into it (no clone3): the unified cgroup is joined through cgroup.procs.
        m.join_self(false).unwrap();
        assert_eq!(read(unified.join("cgroup.procs")), "0");
        assert_eq!(read(unified.join("tasks")), "");
    }

    #[test]
    fn stats_freeze_and_v1_only_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let m = Manager::new(fake_v1(root, "c1", true), "", "c1").unwrap();
        assert_eq!(
            m.stats().unwrap(),
            Stats {
                memory_usage_bytes: Some(4_096_000),
                memory_limit_bytes: None,
                pids_current: Some(2),
                pids_limit: None,
                cpu_usage_ns: Some(123_456_789),
            }
        );
        m.freeze().unwrap();
        assert_eq!(read(root.join("freezer/berth/c1/freezer.state")), "FROZEN");
        // The v1 freezer is used, not the unified one.
        assert_eq!(read(root.join("unified/berth/c1/cgroup.freeze")), "0\n");
        assert_eq!(m.state().unwrap(), FreezerState::Frozen);
        m.thaw().unwrap();
        assert_eq!(m.state().unwrap(), FreezerState::Thawed);

        let unified = LinuxResourcesBuilder::default()
            .unified(HashMap::from([("cpu.weight".to_owned(), "100".to_owned())]))
            .build()
            .unwrap();
        assert!(matches!(
            m.apply(&unified),
            Err(Error::Unsupported { version: "v1", .. })
        ));
    }

    #[test]
    fn unmounted_controllers_error_and_unified_freezer_is_the_fallback() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let Hierarchy::V1 {
            mut mounts,
            unified,
        } = fake_v1(root, "c1", true)
        else {
            unreachable!()
        };
        mounts.remove("devices");
        mounts.remove("freezer");
        let m = Manager::new(Hierarchy::V1 { mounts, unified }, "", "c1").unwrap();
        let devices = LinuxResourcesBuilder::default()
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let err = m.apply(&devices).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ControllerNotMounted {
                    controller: "devices",
                    ..
                }
            ),
            "{err:?}"
        );
        files(
            &root.join("unified/berth/c1"),
            &[("cgroup.events", "frozen 1\n")],
        );
        m.freeze().unwrap();
        assert_eq!(read(root.join("unified/berth/c1/cgroup.freeze")), "1");
    }
}
