//! v1 `freezer`: `freezer.state` FROZEN / FREEZING / THAWED.

use std::path::Path;
use std::time::Duration;

use crate::cgroups::FreezerState;
use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

const STATE: &str = "freezer.state";

fn parse(dir: &Path, content: &str) -> Result<FreezerState> {
    match content {
        "FROZEN" => Ok(FreezerState::Frozen),
        "FREEZING" => Ok(FreezerState::Freezing),
        "THAWED" => Ok(FreezerState::Thawed),
        _ => Err(Error::Parse {
            path: dir.join(STATE),
            content: content.to_owned(),
        }),
    }
}

pub(crate) fn state(dir: &Path) -> Result<FreezerState> {
    parse(dir, &fs::read(&dir.join(STATE))?)
}

/// Writes FROZEN (re-writing it while the kernel reports FREEZING, which nudges tasks that were
/// busy when the first request came) or THAWED, until the state matches or `timeout` passes.
/// A freeze that times out is undone before the error is returned.
pub(crate) fn set(dir: &Path, target: FreezerState, timeout: Duration) -> Result<()> {
    let (value, want, name) = match target {
        FreezerState::Frozen | FreezerState::Freezing => ("FROZEN", FreezerState::Frozen, "frozen"),
        FreezerState::Thawed => ("THAWED", FreezerState::Thawed, "thawed"),
    };
    let done = fs::wait_until(timeout, || {
        fs::write("freezer", dir, STATE, value)?;
        Ok(state(dir)? == want)
    })?;
    if done {
        return Ok(());
    }
    if want == FreezerState::Frozen {
        fs::write("freezer", dir, STATE, "THAWED")?;
    }
    Err(Error::FreezeTimeout {
        path: dir.to_path_buf(),
        target: name,
        waited: timeout,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::fs as stdfs;

    use super::*;

    #[test]
    fn freezer_state_round_trip_on_fake_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        stdfs::write(dir.join(STATE), "THAWED\n").unwrap();
        assert_eq!(state(dir).unwrap(), FreezerState::Thawed);
        set(dir, FreezerState::Frozen, Duration::from_millis(50)).unwrap();
        assert_eq!(stdfs::read_to_string(dir.join(STATE)).unwrap(), "FROZEN");
        assert_eq!(state(dir).unwrap(), FreezerState::Frozen);
        set(dir, FreezerState::Thawed, Duration::from_millis(50)).unwrap();
        assert_eq!(stdfs::read_to_string(dir.join(STATE)).unwrap(), "THAWED");

        stdfs::write(dir.join(STATE), "SOMETHING\n").unwrap();
        let err = state(dir).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    }
}
