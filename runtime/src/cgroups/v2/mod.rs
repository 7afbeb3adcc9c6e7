//! cgroup v2: one hierarchy, controllers delegated top-down through `cgroup.subtree_control`.

pub(crate) mod cpu;
pub(crate) mod cpuset;
pub(crate) mod freezer;
pub(crate) mod memory;
pub(crate) mod unified;

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::common::{self, Controller};
use super::error::{Error, Result};
use super::{CgroupManager, FREEZE_TIMEOUT, FreezerState, Stats, fs};

/// The controllers berth enables for its cgroups (in every ancestor's `cgroup.subtree_control`).
pub(crate) const MANAGED: &[&str] = &["cpu", "cpuset", "memory", "pids"];

/// A container's cgroup on a pure v2 host: `root/rel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct V2Manager {
    root: PathBuf,
    rel: PathBuf,
    dir: PathBuf,
}

/// The names listed in a space-separated controller file.
fn controller_list(path: &Path) -> Result<Vec<String>> {
    Ok(fs::read(path)?
        .split_whitespace()
        .map(|c| c.trim_start_matches('+').to_owned())
        .collect())
}

/// Enables every [`MANAGED`] controller that `dir` has but does not yet pass to its children.
/// A controller the kernel refuses (e.g. EBUSY: `dir` has processes of its own) is logged and
/// left out; `apply` then names it if a resource needs it.
pub(crate) fn enable_controllers(dir: &Path) -> Result<()> {
    let available = controller_list(&dir.join("cgroup.controllers"))?;
    let enabled = controller_list(&dir.join("cgroup.subtree_control"))?;
    let missing: Vec<&str> = MANAGED
        .iter()
        .copied()
        .filter(|c| available.iter().any(|a| a == c) && !enabled.iter().any(|e| e == c))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    if fs::write("cgroup", dir, "cgroup.subtree_control", &all).is_ok() {
        return Ok(());
    }
    // The kernel applies a multi-controller write all or nothing: retry one by one.
    for c in missing {
        if let Err(e) = fs::write("cgroup", dir, "cgroup.subtree_control", &format!("+{c}")) {
            tracing::warn!(error = %e, controller = c, "could not delegate cgroup controller");
        }
    }
    Ok(())
}

/// Checks that `C`'s controller is delegated, then applies it (when `resources` needs it).
fn apply_controller<C: Controller>(
    dir: &Path,
    available: &[String],
    r: &LinuxResources,
) -> Result<()> {
    if !C::needed(r) {
        return Ok(());
    }
    if !available.iter().any(|a| a == C::NAME) {
        return Err(Error::ControllerNotAvailable {
            controller: C::NAME,
            path: dir.to_path_buf(),
        });
    }
    C::apply(dir, r)
}

impl V2Manager {
    pub(crate) fn new(root: PathBuf, rel: PathBuf) -> Self {
        let dir = root.join(&rel);
        Self { root, rel, dir }
    }

    pub(crate) fn rel(&self) -> &Path {
        &self.rel
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl CgroupManager for V2Manager {
    fn create(&self) -> Result<()> {
        fs::mkdir_all(&self.root, &self.rel)?;
        let chain = fs::chain(&self.root, &self.rel);
        for ancestor in &chain[..chain.len() - 1] {
            enable_controllers(ancestor)?;
        }
        Ok(())
    }

    fn add_task(&self, pid: Pid) -> Result<()> {
        fs::add_proc(&self.dir, pid)
    }

    fn apply(&self, r: &LinuxResources) -> Result<()> {
        common::warn_ignored(r, "v2");
        let available = controller_list(&self.dir.join("cgroup.controllers"))?;
        apply_controller::<cpuset::Cpuset>(&self.dir, &available, r)?;
        apply_controller::<cpu::Cpu>(&self.dir, &available, r)?;
        apply_controller::<memory::Memory>(&self.dir, &available, r)?;
        apply_controller::<crate::cgroups::pids::Pids>(&self.dir, &available, r)?;
        if let Some(map) = r.unified() {
            unified::apply(&self.dir, &available, map)?;
        }
        Ok(())
    }

    fn pids(&self) -> Result<Vec<Pid>> {
        common::pids_in(std::slice::from_ref(&self.dir))
    }

    fn freeze(&self) -> Result<()> {
        freezer::set(&self.dir, FreezerState::Frozen, FREEZE_TIMEOUT)
    }

    fn thaw(&self) -> Result<()> {
        freezer::set(&self.dir, FreezerState::Thawed, FREEZE_TIMEOUT)
    }

    fn state(&self) -> Result<FreezerState> {
        freezer::state(&self.dir)
    }

    fn kill_all(&self, signal: Signal) -> Result<()> {
        common::kill_all(self, Some(self.dir.join("cgroup.kill")), signal)
    }

    fn destroy(&self) -> Result<()> {
        common::destroy(
            self,
            std::slice::from_ref(&self.dir),
            Some(&self.dir.join("cgroup.events")),
        )
    }

    fn stats(&self) -> Result<Stats> {
        let d = &self.dir;
        let cpu_stat = d.join("cpu.stat");
        let cpu_usage_ns = match fs::read_optional(&cpu_stat)? {
            Some(content) => fs::flat_keyed(&cpu_stat, &content, "usage_usec")?.map(|us| us * 1000),
            None => None,
        };
        Ok(Stats {
            memory_usage_bytes: fs::read_u64_optional(&d.join("memory.current"))?,
            memory_limit_bytes: fs::read_u64_optional(&d.join("memory.max"))?,
            pids_current: fs::read_u64_optional(&d.join("pids.current"))?,
            pids_limit: fs::read_u64_optional(&d.join("pids.max"))?,
            cpu_usage_ns,
        })
    }

    fn cgroup_id(&self) -> Option<u64> {
        common::inode(&self.dir)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;

    use oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};

    use super::*;
    use crate::cgroups::testutil::{MIB, fake_v2, files, full_resources, read};
    use crate::cgroups::{Hierarchy, Manager};

    fn manager(root: &Path, id: &str) -> Manager {
        Manager::new(
            Hierarchy::V2 {
                mount: root.to_path_buf(),
            },
            "",
            id,
        )
        .unwrap()
    }

    #[test]
    fn full_resources_write_exact_v2_strings() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = fake_v2(tmp.path(), "c1", "cpuset cpu memory pids\n");
        let m = manager(tmp.path(), "c1");
        m.apply(&full_resources()).unwrap();
        assert_eq!(read(leaf.join("memory.max")), "67108864");
        assert_eq!(read(leaf.join("memory.swap.max")), "67108864");
        assert_eq!(read(leaf.join("memory.low")), "33554432");
        assert_eq!(read(leaf.join("cpu.weight")), "20");
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("cpuset.cpus")), "0");
        assert_eq!(read(leaf.join("cpuset.mems")), "0");
        assert_eq!(read(leaf.join("pids.max")), "32");
    }

    #[test]
    fn join_self_writes_procs_only_when_not_cloned_into_the_cgroup() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = fake_v2(tmp.path(), "c1", "cpu pids\n");
        let m = manager(tmp.path(), "c1");
        assert_eq!(m.v2_dir(), Some(leaf.clone()));
        m.join_self(true).unwrap();
        assert_eq!(read(leaf.join("cgroup.procs")), "");
        m.join_self(false).unwrap();
        assert_eq!(read(leaf.join("cgroup.procs")), "0");
    }

    #[test]
    fn create_makes_dirs_and_delegates_controllers() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        files(
            root,
            &[
                ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                ("cgroup.subtree_control", "cpu\n"),
            ],
        );
        // The kernel creates berth/'s interface files on mkdir; the fake has them ready.
        files(
            &root.join("berth"),
            &[
                ("cgroup.controllers", "cpu memory\n"),
                ("cgroup.subtree_control", ""),
            ],
        );
        let m = manager(root, "c1");
        m.create().unwrap();
        assert!(root.join("berth/c1").is_dir());
        // Root: cpu was already enabled, io is not berth's business.
        assert_eq!(
            read(root.join("cgroup.subtree_control")),
            "+cpuset +memory +pids"
        );
        // berth/: only what it has.
        assert_eq!(
            read(root.join("berth/cgroup.subtree_control")),
            "+cpu +memory"
        );
        // Idempotent.
        m.create().unwrap();
    }

    #[test]
    fn missing_controller_is_a_clear_error_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = fake_v2(tmp.path(), "c1", "cpu pids\n");
        let m = manager(tmp.path(), "c1");
        let err = m.apply(&full_resources()).unwrap_err();
        // cpuset is applied first and is the first missing one.
        assert!(
            matches!(
                err,
                Error::ControllerNotAvailable {
                    controller: "cpuset",
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("cgroup.subtree_control") && msg.contains("berth/c1"),
            "{msg}"
        );
        assert_eq!(read(leaf.join("cpuset.cpus")), "");

        let only_memory = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 * MIB)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let err = m.apply(&only_memory).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ControllerNotAvailable {
                    controller: "memory",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(read(leaf.join("memory.max")), "max\n");
    }

    #[test]
    fn unified_map_is_written_after_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = fake_v2(tmp.path(), "c1", "cpu memory\n");
        let m = manager(tmp.path(), "c1");
        let with = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            LinuxResourcesBuilder::default()
                .unified(map)
                .build()
                .unwrap()
        };
        m.apply(&with(&[("cpu.weight", "250"), ("memory.low", "4096")]))
            .unwrap();
        assert_eq!(read(leaf.join("cpu.weight")), "250");
        assert_eq!(read(leaf.join("memory.low")), "4096");
        for bad in ["../escape.max", "pids.max", "noperiod"] {
            let err = m.apply(&with(&[(bad, "1")])).unwrap_err();
            assert!(
                matches!(err, Error::InvalidUnifiedKey { .. }),
                "{bad}: {err:?}"
            );
        }
        // Available controller, file the kernel does not have.
        let err = m.apply(&with(&[("memory.nonexistent", "1")])).unwrap_err();
        assert!(err.to_string().contains("memory.nonexistent"), "{err}");
    }

    #[test]
    fn pids_stats_freeze_and_id_from_fake_files() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = fake_v2(tmp.path(), "c1", "cpu memory pids\n");
        files(&leaf, &[("cgroup.procs", "10\n30\n")]);
        files(&leaf.join("sub"), &[("cgroup.procs", "20\n10\n")]);
        let m = manager(tmp.path(), "c1");
        let pids: Vec<i32> = m.pids().unwrap().into_iter().map(Pid::as_raw).collect();
        assert_eq!(pids, [10, 20, 30]);

        let stats = m.stats().unwrap();
        assert_eq!(
            stats,
            Stats {
                memory_usage_bytes: Some(1_228_800),
                memory_limit_bytes: None,
                pids_current: Some(3),
                pids_limit: None,
                cpu_usage_ns: Some(1_500_000),
            }
        );

        assert_eq!(m.cgroup_id(), Some(std::fs::metadata(&leaf).unwrap().ino()));
        assert_eq!(m.state().unwrap(), FreezerState::Thawed);
        files(&leaf, &[("cgroup.events", "populated 1\nfrozen 1\n")]);
        m.freeze().unwrap();
        assert_eq!(read(leaf.join("cgroup.freeze")), "1");
        assert_eq!(m.state().unwrap(), FreezerState::Frozen);
        assert_eq!(m.dirs(), [leaf]);
        assert!(!m.devices_enforced());
    }

    #[test]
    fn a_missing_cgroup_has_no_pids_and_no_id() {
        let tmp = tempfile::tempdir().unwrap();
        let m = manager(tmp.path(), "gone");
        assert!(m.pids().unwrap().is_empty());
        assert_eq!(m.cgroup_id(), None);
        m.destroy().unwrap();
    }
}
