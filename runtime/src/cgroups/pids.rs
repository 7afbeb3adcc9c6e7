//! `pids`: `pids.max`, the same file and format on cgroup v1 and v2.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::common::{Controller, pids_max};
use crate::cgroups::error::Result;
use crate::cgroups::fs;

pub(crate) struct Pids;

impl Controller for Pids {
    const NAME: &'static str = "pids";

    fn needed(r: &LinuxResources) -> bool {
        r.pids().is_some()
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        match r.pids() {
            Some(p) => fs::write(Self::NAME, dir, "pids.max", &pids_max(p.limit())?),
            None => Ok(()),
        }
    }
}
