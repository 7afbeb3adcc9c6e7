//! v1 `memory`: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (memory+swap),
//! `memory.soft_limit_in_bytes`, `memory.swappiness`, `memory.oom_control`.

use std::path::Path;

use oci_spec::runtime::{LinuxMemory, LinuxResources};

use crate::cgroups::common::{Controller, memory_value};
use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

const LIMIT: &str = "memory.limit_in_bytes";
const MEMSW: &str = "memory.memsw.limit_in_bytes";

pub(crate) struct Memory;

impl Controller for Memory {
    const NAME: &'static str = "memory";

    fn needed(r: &LinuxResources) -> bool {
        r.memory().as_ref().is_some_and(|m| {
            m.limit().is_some()
                || m.reservation().is_some()
                || m.swap().is_some()
                || m.swappiness().is_some()
                || m.disable_oom_killer() == Some(true)
        })
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(m) = r.memory() else { return Ok(()) };
        let memsw_available = dir.join(MEMSW).exists();
        let current_limit = if m.limit().is_some() && m.swap().is_some() {
            let path = dir.join(LIMIT);
            fs::parse_u64_or_max(&path, &fs::read(&path)?)?
        } else {
            None
        };
        for (file, value) in plan(m, current_limit, memsw_available)? {
            match fs::write(Self::NAME, dir, file, &value) {
                Err(Error::Write {
                    source,
                    path,
                    value,
                    ..
                }) if source.raw_os_error() == Some(libc::EBUSY) => {
                    let usage = fs::read(&dir.join("memory.usage_in_bytes"))
                        .unwrap_or_else(|_| "unknown".to_owned());
                    return Err(Error::LimitBelowUsage { path, value, usage });
                }
                other => other?,
            }
        }
        Ok(())
    }
}

/// The writes for `m`, in an order the kernel accepts. v1 requires memsw ≥ limit at every
/// moment, so when memsw grows past the current limit (or becomes unlimited) it is written
/// first; otherwise the limit is. `current_limit` is `memory.limit_in_bytes` now.
pub(crate) fn plan(
    m: &LinuxMemory,
    current_limit: Option<u64>,
    memsw_available: bool,
) -> Result<Vec<(&'static str, String)>> {
    let limit = memory_value(m.limit(), LIMIT)?;
    let mut swap = memory_value(m.swap(), MEMSW)?;
    let reservation = memory_value(m.reservation(), "memory.soft_limit_in_bytes")?;
    if let (Some(l), Some(s)) = (limit, swap)
        && l > 0
        && s > 0
        && s < l
    {
        return Err(Error::InvalidValue {
            resource: "memory swap",
            file: MEMSW,
            value: s.to_string(),
            reason: format!("memory+swap must be at least the memory limit ({l})"),
        });
    }
    // Unlimited memory with swap unset means unlimited memory+swap too (else the kernel refuses
    // a limit above the old memsw).
    if limit == Some(-1) && swap.is_none() && memsw_available {
        swap = Some(-1);
    }
    if swap.is_some_and(|s| s != -1) && !memsw_available {
        return Err(Error::Unsupported {
            resource: "memory swap",
            version: "v1",
            reason: "memory.memsw.limit_in_bytes is missing: swap accounting is off (swapaccount=0)",
        });
    }
    let swap = swap.filter(|_| memsw_available);
    let mut writes = Vec::new();
    match (limit, swap) {
        (Some(l), Some(s)) => {
            // An unknown (unlimited) current limit never makes memsw-first valid unless s is -1.
            let memsw_first = s == -1 || current_limit.is_some_and(|cur| (s as u64) > cur);
            if memsw_first {
                writes.push((MEMSW, s.to_string()));
                writes.push((LIMIT, l.to_string()));
            } else {
                writes.push((LIMIT, l.to_string()));
                writes.push((MEMSW, s.to_string()));
            }
        }
        (Some(l), None) => writes.push((LIMIT, l.to_string())),
        (None, Some(s)) => writes.push((MEMSW, s.to_string())),
        (None, None) => {}
    }
    if let Some(r) = reservation {
        writes.push(("memory.soft_limit_in_bytes", r.to_string()));
    }
    if let Some(sw) = m.swappiness() {
        if sw > 100 {
            return Err(Error::InvalidValue {
                resource: "memory swappiness",
                file: "memory.swappiness",
                value: sw.to_string(),
                reason: "must be 0..=100".to_owned(),
            });
        }
        writes.push(("memory.swappiness", sw.to_string()));
    }
    if m.disable_oom_killer() == Some(true) {
        writes.push(("memory.oom_control", "1".to_owned()));
    }
    Ok(writes)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use oci_spec::runtime::LinuxMemoryBuilder;

    use super::*;

    const MIB: i64 = 1 << 20;

    fn mem(limit: Option<i64>, swap: Option<i64>) -> LinuxMemory {
        let mut m = LinuxMemoryBuilder::default().build().unwrap();
        m.set_limit(limit);
        m.set_swap(swap);
        m
    }

    fn files(p: &[(&'static str, String)]) -> Vec<&'static str> {
        p.iter().map(|(f, _)| *f).collect()
    }

    #[test]
    fn growing_writes_memsw_first_shrinking_writes_limit_first() {
        // Current limit 64 MiB; new memsw 256 MiB is above it: memsw first.
        let p = plan(
            &mem(Some(128 * MIB), Some(256 * MIB)),
            Some(64 * MIB as u64),
            true,
        )
        .unwrap();
        assert_eq!(files(&p), [MEMSW, LIMIT]);
        assert_eq!(p[0].1, "268435456");
        assert_eq!(p[1].1, "134217728");
        // Current limit 512 MiB; new memsw 256 MiB is below it: limit first.
        let p = plan(
            &mem(Some(128 * MIB), Some(256 * MIB)),
            Some(512 * MIB as u64),
            true,
        )
        .unwrap();
        assert_eq!(files(&p), [LIMIT, MEMSW]);
        // Currently unlimited: limit first.
        let p = plan(&mem(Some(128 * MIB), Some(256 * MIB)), None, true).unwrap();
        assert_eq!(files(&p), [LIMIT, MEMSW]);
        // Unlimited memsw always first.
        let p = plan(
            &mem(Some(128 * MIB), Some(-1)),
            Some(512 * MIB as u64),
            true,
        )
        .unwrap();
        assert_eq!(files(&p), [MEMSW, LIMIT]);
        assert_eq!(p[0].1, "-1");
    }

    #[test]
    fn unlimited_memory_lifts_memsw_when_accounted() {
        let p = plan(&mem(Some(-1), None), None, true).unwrap();
        assert_eq!(p, [(MEMSW, "-1".to_owned()), (LIMIT, "-1".to_owned())]);
        let p = plan(&mem(Some(-1), None), None, false).unwrap();
        assert_eq!(p, [(LIMIT, "-1".to_owned())]);
    }

    #[test]
    fn bad_swap_is_refused_naming_the_file() {
        let err = plan(&mem(Some(64 * MIB), Some(MIB)), None, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(MEMSW) && err.contains("memory swap"), "{err}");
        let err = plan(&mem(Some(64 * MIB), Some(128 * MIB)), None, false).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
        let mut m = mem(None, None);
        m.set_swappiness(Some(101));
        assert!(
            plan(&m, None, true)
                .unwrap_err()
                .to_string()
                .contains("memory.swappiness")
        );
    }
}
