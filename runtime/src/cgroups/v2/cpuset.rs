//! v2 `cpuset`: `cpuset.cpus`, `cpuset.mems`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::common::{Controller, cpuset_needed, cpuset_plan, write_all};
use crate::cgroups::error::Result;

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
