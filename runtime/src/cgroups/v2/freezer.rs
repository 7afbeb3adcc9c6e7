//! v2 freezer: `cgroup.freeze`, with the effective state in `cgroup.events` (`frozen 0|1`).
//! Core to every non-root v2 cgroup, so it also works in a hybrid host's unified hierarchy.

use std::path::Path;
use std::time::Duration;

use crate::cgroups::FreezerState;
use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

/// Whether the kernel reports every task of `dir` frozen.
fn frozen(dir: &Path) -> Result<bool> {
    let events = dir.join("cgroup.events");
    let content = fs::read(&events)?;
    Ok(fs::flat_keyed(&events, &content, "frozen")? == Some(1))
}

/// Requests `target` and waits up to `timeout` for `cgroup.events` to agree. A freeze that does
/// not complete in time is undone before the error is returned.
pub(crate) fn set(dir: &Path, target: FreezerState, timeout: Duration) -> Result<()> {
    let (value, want_frozen, name) = match target {
        FreezerState::Frozen | FreezerState::Freezing => ("1", true, "frozen"),
        FreezerState::Thawed => ("0", false, "thawed"),
    };
    fs::write("freezer", dir, "cgroup.freeze", value)?;
    let events = dir.join("cgroup.events");
    if fs::wait_until_woken(timeout, Some(&events), || Ok(frozen(dir)? == want_frozen))? {
        return Ok(());
    }
    if want_frozen {
        fs::write("freezer", dir, "cgroup.freeze", "0")?;
    }
    Err(Error::FreezeTimeout {
        path: dir.to_path_buf(),
        target: name,
        waited: timeout,
    })
}

/// Frozen when `cgroup.events` says so, Freezing when requested but not complete, else Thawed.
pub(crate) fn state(dir: &Path) -> Result<FreezerState> {
    if frozen(dir)? {
        return Ok(FreezerState::Frozen);
    }
    let requested = fs::read(&dir.join("cgroup.freeze"))?;
    Ok(if requested == "1" {
        FreezerState::Freezing
    } else {
        FreezerState::Thawed
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::fs as stdfs;

    use super::*;

    #[test]
    fn freeze_waits_for_events_and_undoes_on_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        stdfs::write(dir.join("cgroup.freeze"), "0\n").unwrap();
        stdfs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();

        // The fake kernel never reports frozen: bounded wait, error names the path, undone.
        let err = set(dir, FreezerState::Frozen, Duration::from_millis(30)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::FreezeTimeout {
                    target: "frozen",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(&dir.display().to_string()));
        assert_eq!(
            stdfs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "0"
        );
        assert_eq!(state(dir).unwrap(), FreezerState::Thawed);

        // Once the kernel reports frozen 1, freeze completes and state is Frozen.
        stdfs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        set(dir, FreezerState::Frozen, Duration::from_millis(30)).unwrap();
        assert_eq!(
            stdfs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
            "1"
        );
        assert_eq!(state(dir).unwrap(), FreezerState::Frozen);

        // Requested but not yet effective.
        stdfs::write(dir.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(state(dir).unwrap(), FreezerState::Freezing);
    }
}
