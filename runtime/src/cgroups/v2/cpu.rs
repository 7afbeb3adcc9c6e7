//! v2 `cpu`: `cpu.weight`, `cpu.max`, `cpu.max.burst`, `cpu.idle`.

use std::path::Path;

use oci_spec::runtime::{LinuxCpu, LinuxResources};

use crate::cgroups::common::{Controller, cpu_quota, shares_to_weight, write_all};
use crate::cgroups::error::{Error, Result};

pub(crate) struct Cpu;

impl Controller for Cpu {
    const NAME: &'static str = "cpu";

    fn needed(r: &LinuxResources) -> bool {
        crate::cgroups::common::cpu_needed(r)
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(c) = r.cpu() else { return Ok(()) };
        write_all(Self::NAME, dir, &plan(c)?)
    }
}

/// The writes for `c`, in order.
pub(crate) fn plan(c: &LinuxCpu) -> Result<Vec<(&'static str, String)>> {
    if c.realtime_runtime().is_some_and(|v| v != 0) || c.realtime_period().is_some_and(|v| v != 0) {
        return Err(Error::Unsupported {
            resource: "cpu realtimeRuntime/realtimePeriod",
            version: "v2",
            reason: "the v2 cpu controller has no realtime bandwidth settings",
        });
    }
    let mut writes = Vec::new();
    if let Some(shares) = c.shares().filter(|&s| s != 0) {
        writes.push(("cpu.weight", shares_to_weight(shares).to_string()));
    }
    let quota = cpu_quota(c.quota(), "cpu.max")?;
    let period = c.period().filter(|&p| p != 0);
    if quota.is_some() || period.is_some() {
        let mut max = match quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".to_owned(),
        };
        if let Some(p) = period {
            max = format!("{max} {p}");
        }
        writes.push(("cpu.max", max));
    }
    if let Some(burst) = c.burst() {
        writes.push(("cpu.max.burst", burst.to_string()));
    }
    if let Some(idle) = c.idle() {
        writes.push(("cpu.idle", idle.to_string()));
    }
    Ok(writes)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use oci_spec::runtime::LinuxCpuBuilder;

    use super::*;

    #[test]
    fn quota_and_period_make_cpu_max() {
        let c = LinuxCpuBuilder::default()
            .quota(50_000i64)
            .period(100_000u64)
            .build()
            .unwrap();
        assert_eq!(plan(&c).unwrap(), [("cpu.max", "50000 100000".to_owned())]);
        let c = LinuxCpuBuilder::default()
            .quota(-1i64)
            .period(100_000u64)
            .build()
            .unwrap();
        assert_eq!(plan(&c).unwrap(), [("cpu.max", "max 100000".to_owned())]);
        let c = LinuxCpuBuilder::default().quota(20_000i64).build().unwrap();
        assert_eq!(plan(&c).unwrap(), [("cpu.max", "20000".to_owned())]);
    }

    #[test]
    fn negative_quota_names_resource_and_file() {
        let c = LinuxCpuBuilder::default().quota(-2i64).build().unwrap();
        let err = plan(&c).unwrap_err().to_string();
        assert!(
            err.contains("cpu quota") && err.contains("cpu.max") && err.contains("-2"),
            "{err}"
        );
    }

    #[test]
    fn shares_become_weight_and_realtime_is_refused() {
        let c = LinuxCpuBuilder::default().shares(512u64).build().unwrap();
        assert_eq!(plan(&c).unwrap(), [("cpu.weight", "20".to_owned())]);
        let c = LinuxCpuBuilder::default()
            .realtime_runtime(1000i64)
            .build()
            .unwrap();
        assert!(matches!(
            plan(&c),
            Err(Error::Unsupported { version: "v2", .. })
        ));
    }
}
