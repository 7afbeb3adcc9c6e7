//! What v1 and v2 share: the controller trait, value validation and conversion, and the
//! kill/destroy sequences.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

use super::error::{Error, Result};
use super::{CgroupManager, FreezerState, KILL_TIMEOUT, fs};

/// One cgroup controller of one cgroup version: which resources it owns and how they are
/// written to the container's directory in that controller's hierarchy.
pub(crate) trait Controller {
    /// The controller's name (v2 `cgroup.controllers` entry, v1 subsystem).
    const NAME: &'static str;

    /// Whether `resources` asks anything of this controller.
    fn needed(resources: &LinuxResources) -> bool;

    /// Validates and writes the controller's part of `resources` into `dir`.
    fn apply(dir: &Path, resources: &LinuxResources) -> Result<()>;
}

/// Writes `(file, value)` pairs in order.
pub(crate) fn write_all(
    controller: &'static str,
    dir: &Path,
    writes: &[(&str, String)],
) -> Result<()> {
    for (file, value) in writes {
        fs::write(controller, dir, file, value)?;
    }
    Ok(())
}

/// A memory value from the spec: `None` for 0 (unset, as runc treats it), `Some(-1)` for
/// unlimited, an error below -1.
pub(crate) fn memory_value(value: Option<i64>, file: &'static str) -> Result<Option<i64>> {
    match value {
        None | Some(0) => Ok(None),
        Some(v) if v < -1 => Err(Error::InvalidValue {
            resource: "memory",
            file,
            value: v.to_string(),
            reason: "must be positive or -1 (unlimited)".to_owned(),
        }),
        Some(v) => Ok(Some(v)),
    }
}

/// A cpu quota from the spec: `None` for unset or 0, `Some(-1)` for unlimited, an error for
/// other negative values.
pub(crate) fn cpu_quota(quota: Option<i64>, file: &'static str) -> Result<Option<i64>> {
    match quota {
        None | Some(0) => Ok(None),
        Some(q) if q < -1 => Err(Error::InvalidValue {
            resource: "cpu quota",
            file,
            value: q.to_string(),
            reason: "a negative quota other than -1 (unlimited)".to_owned(),
        }),
        Some(q) => Ok(Some(q)),
    }
}

/// runc's cgroup v1 shares (2..=262144) → v2 weight (1..=10000) conversion:
/// `1 + ((shares - 2) * 9999) / 262142`, with shares clamped to the v1 range first.
/// Whether `linux.resources.cpu` asks for anything (the same rule on v1 and v2).
pub(crate) fn cpu_needed(r: &LinuxResources) -> bool {
    r.cpu().as_ref().is_some_and(|c| {
        c.shares().is_some_and(|s| s != 0)
            || c.quota().is_some_and(|q| q != 0)
            || c.period().is_some_and(|p| p != 0)
            || c.burst().is_some()
            || c.idle().is_some()
            || c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0)
    })
}

pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// `pids.max` content for a spec limit: 0 and -1 are "max" (no limit).
pub(crate) fn pids_max(limit: i64) -> Result<String> {
    match limit {
        0 | -1 => Ok("max".to_owned()),
        l if l < -1 => Err(Error::InvalidValue {
            resource: "pids",
            file: "pids.max",
            value: l.to_string(),
            reason: "must be positive, or 0 / -1 for no limit".to_owned(),
        }),
        l => Ok(l.to_string()),
    }
}

/// Checks a cpuset list ("0-3,5,7-8"): comma-separated numbers or ascending ranges.
pub(crate) fn validate_cpu_list(value: &str, file: &'static str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidValue {
        resource: "cpuset",
        file,
        value: value.to_owned(),
        reason,
    };
    let number = |s: &str| -> Result<u32> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!("{s:?} is not a cpu or node number")));
        }
        s.parse()
            .map_err(|_| invalid(format!("{s:?} is out of range")))
    };
    for part in value.trim().split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (number(lo)?, number(hi)?);
                if lo > hi {
                    return Err(invalid(format!("range {part:?} is descending")));
                }
            }
            None => {
                number(part)?;
            }
        }
    }
    Ok(())
}

/// The cpuset writes of `r`, validated; v1 and v2 files have the same names.
pub(crate) fn cpuset_plan(r: &LinuxResources) -> Result<Vec<(&'static str, String)>> {
    let mut writes = Vec::new();
    if let Some(c) = r.cpu() {
        for (file, value) in [("cpuset.cpus", c.cpus()), ("cpuset.mems", c.mems())] {
            if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                validate_cpu_list(v, file)?;
                writes.push((file, v.to_owned()));
            }
        }
    }
    Ok(writes)
}

/// Whether `r` sets cpus or mems.
pub(crate) fn cpuset_needed(r: &LinuxResources) -> bool {
    r.cpu().as_ref().is_some_and(|c| {
        [c.cpus(), c.mems()]
            .iter()
            .any(|v| v.as_deref().is_some_and(|v| !v.trim().is_empty()))
    })
}

/// Logs the parts of `resources` berth does not apply on this cgroup version. Called once per
/// `apply`, i.e. once per container create or update.
pub(crate) fn warn_ignored(resources: &LinuxResources, version: &'static str) {
    let mut ignored = Vec::new();
    if resources.block_io().is_some() {
        ignored.push("blockIO");
    }
    if resources
        .hugepage_limits()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        ignored.push("hugepageLimits");
    }
    if resources.network().is_some() {
        ignored.push("network");
    }
    if resources.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        ignored.push("rdma");
    }
    if let Some(m) = resources.memory() {
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            ignored.push("memory.kernel/kernelTCP");
        }
        if version == "v2" && m.swappiness().is_some() {
            ignored.push("memory.swappiness");
        }
        if version == "v2" && m.disable_oom_killer().is_some() {
            ignored.push("memory.disableOOMKiller");
        }
    }
    if version == "v2" && resources.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        ignored.push("devices (cgroup v2 device control needs a BPF program; not enforced)");
    }
    if !ignored.is_empty() {
        tracing::warn!(cgroup_version = version, ignored = ?ignored, "linux.resources fields not applied");
    }
}

/// The freezer state, or `None` when this hierarchy has no freezer at all.
fn freezer_state(m: &dyn CgroupManager) -> Result<Option<FreezerState>> {
    match m.state() {
        Ok(s) => Ok(Some(s)),
        Err(Error::ControllerNotMounted { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The shared `kill_all`: `kill_file` is a v2 `cgroup.kill` (the container's own on v2, the
/// unified one on hybrid v1), used for SIGKILL when it exists.
pub(crate) fn kill_all(
    m: &dyn CgroupManager,
    kill_file: Option<PathBuf>,
    signal: Signal,
) -> Result<()> {
    let mut killed_by_file = false;
    if signal == Signal::SIGKILL
        && let Some(file) = kill_file.filter(|f| f.exists())
    {
        fs::write_path("cgroup", &file, "1")?;
        killed_by_file = true;
    }
    let prior = freezer_state(m)?;
    // Freezing first means nothing forks while we walk the list (runc does the same); not
    // needed after cgroup.kill, which the kernel applies to new children too.
    let froze_here = !killed_by_file
        && prior == Some(FreezerState::Thawed)
        && match m.freeze() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "kill_all: could not freeze first; signalling anyway");
                false
            }
        };
    let mut first_err = None;
    // On a pids() error, still thaw below before returning it.
    let pids = m
        .pids()
        .map_err(|e| first_err = Some(e))
        .unwrap_or_default();
    for pid in pids {
        match kill(pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(source) => {
                first_err.get_or_insert(Error::Signal {
                    pid: pid.as_raw(),
                    signal,
                    source,
                });
            }
        }
    }
    // Frozen tasks only act on SIGKILL once thawed (v1 freezer); other signals wait for resume.
    let was_paused = matches!(prior, Some(FreezerState::Frozen | FreezerState::Freezing));
    if froze_here || (signal == Signal::SIGKILL && was_paused) {
        m.thaw()?;
    }
    first_err.map_or(Ok(()), Err)
}

/// The shared `destroy`: kill what is left, wait for it to go, remove `dirs` (leaf cgroups).
/// `events` is the cgroup's v2 `cgroup.events`, whose `populated 0` ends the wait at once.
pub(crate) fn destroy(
    m: &dyn CgroupManager,
    dirs: &[PathBuf],
    events: Option<&Path>,
) -> Result<()> {
    if !m.pids()?.is_empty() {
        m.kill_all(Signal::SIGKILL)?;
        let mut left = Vec::new();
        let gone = fs::wait_until_woken(KILL_TIMEOUT, events, || {
            left = m.pids()?;
            Ok(left.is_empty())
        })?;
        if !gone {
            return Err(Error::KillTimeout {
                path: dirs.first().cloned().unwrap_or_default(),
                count: left.len(),
                waited: KILL_TIMEOUT,
            });
        }
    }
    for dir in dirs {
        fs::rmdir_all(dir)?;
    }
    Ok(())
}

/// Pids from the `cgroup.procs` of `dirs` and their children, deduplicated and sorted.
pub(crate) fn pids_in(dirs: &[PathBuf]) -> Result<Vec<Pid>> {
    let mut set = BTreeSet::new();
    for dir in dirs {
        fs::collect_procs(dir, &mut set)?;
    }
    Ok(set.into_iter().map(Pid::from_raw).collect())
}

/// The inode number of a cgroup v2 directory, which is its cgroup id.
pub(crate) fn inode(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(512), 20);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        // Out of the v1 range: clamped, never an underflow.
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
    }

    #[test]
    fn cpu_lists_parse_or_name_the_file() {
        for ok in ["0", "0-3", "0-3,5,7-8", "1\n"] {
            validate_cpu_list(ok, "cpuset.cpus").unwrap();
        }
        for bad in ["", "a", "3-1", "0,,1", "-1", "1-", "0 1", "99999999999"] {
            let err = validate_cpu_list(bad, "cpuset.mems").unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("cpuset") && msg.contains("cpuset.mems"),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn pids_and_quota_values() {
        assert_eq!(pids_max(32).unwrap(), "32");
        assert_eq!(pids_max(0).unwrap(), "max");
        assert_eq!(pids_max(-1).unwrap(), "max");
        assert!(pids_max(-2).unwrap_err().to_string().contains("pids.max"));
        assert_eq!(cpu_quota(Some(-1), "cpu.max").unwrap(), Some(-1));
        assert_eq!(cpu_quota(Some(0), "cpu.max").unwrap(), None);
        let err = cpu_quota(Some(-5), "cpu.cfs_quota_us")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cpu quota") && err.contains("cpu.cfs_quota_us"),
            "{err}"
        );
        assert!(memory_value(Some(-7), "memory.max").is_err());
        assert_eq!(memory_value(Some(0), "memory.max").unwrap(), None);
    }
}
