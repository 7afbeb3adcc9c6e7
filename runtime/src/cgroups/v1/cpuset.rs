//! v1 `cpuset`: `cpuset.cpus`, `cpuset.mems`. A new v1 cpuset starts with both empty, and a task
//! cannot join an empty cpuset, so each new level copies its parent's first.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::common::{Controller, cpuset_needed, cpuset_plan, write_all};
use crate::cgroups::error::Result;
use crate::cgroups::fs;

pub(crate) struct Cpuset;

impl Controller for Cpuset {
    const NAME: &'static str = "cpuset";

    fn needed(r: &LinuxResources) -> bool {
        cpuset_needed(r)
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        write_all(Self::NAME, dir, &cpuset_plan(r)?)
    }
}

/// Fills `dir`'s empty `cpuset.cpus` / `cpuset.mems` from its parent's.
pub(crate) fn inherit_from_parent(dir: &Path) -> Result<()> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if fs::read(&dir.join(file))?.is_empty() {
            let value = fs::read(&parent.join(file))?;
            fs::write(Cpuset::NAME, dir, file, &value)?;
        }
    }
    Ok(())
}
