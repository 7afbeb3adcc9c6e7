//! v1 `cpu`: `cpu.shares`, `cpu.cfs_period_us` / `cpu.cfs_quota_us`, `cpu.cfs_burst_us`,
//! `cpu.idle`, `cpu.rt_period_us` / `cpu.rt_runtime_us`.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use crate::cgroups::common::{Controller, cpu_quota};
use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

pub(crate) struct Cpu;

const QUOTA: &str = "cpu.cfs_quota_us";
const PERIOD: &str = "cpu.cfs_period_us";

impl Controller for Cpu {
    const NAME: &'static str = "cpu";

    fn needed(r: &LinuxResources) -> bool {
        crate::cgroups::common::cpu_needed(r)
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(c) = r.cpu() else { return Ok(()) };
        // Validate before the first write.
        let quota = cpu_quota(c.quota(), QUOTA)?;
        let period = c.period().filter(|&p| p != 0);
        let w = |file: &str, value: String| fs::write(Self::NAME, dir, file, &value);

        if let Some(shares) = c.shares().filter(|&s| s != 0) {
            w("cpu.shares", shares.to_string())?;
        }
        // The kernel checks quota/period against the parent's bandwidth after each write, so a
        // new period can be refused (EINVAL) until the new quota is in: then write quota first.
        let mut quota_written = false;
        if let Some(p) = period {
            match w(PERIOD, p.to_string()) {
                Err(Error::Write { source, .. })
                    if source.raw_os_error() == Some(libc::EINVAL) && quota.is_some() =>
                {
                    w(QUOTA, quota.unwrap_or(-1).to_string())?;
                    quota_written = true;
                    w(PERIOD, p.to_string())?;
                }
                other => other?,
            }
        }
        if let Some(q) = quota.filter(|_| !quota_written) {
            w(QUOTA, q.to_string())?;
        }
        if let Some(burst) = c.burst() {
            w("cpu.cfs_burst_us", burst.to_string())?;
        }
        if let Some(idle) = c.idle() {
            w("cpu.idle", idle.to_string())?;
        }
        if let Some(p) = c.realtime_period().filter(|&p| p != 0) {
            w("cpu.rt_period_us", p.to_string())?;
        }
        if let Some(rt) = c.realtime_runtime().filter(|&rt| rt != 0) {
            w("cpu.rt_runtime_us", rt.to_string())?;
        }
        Ok(())
    }
}
