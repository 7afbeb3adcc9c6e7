//! v2 `memory`: `memory.max`, `memory.low`, `memory.swap.max`.

use std::path::Path;

use oci_spec::runtime::{LinuxMemory, LinuxResources};

use crate::cgroups::common::{Controller, memory_value};
use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

pub(crate) struct Memory;

impl Controller for Memory {
    const NAME: &'static str = "memory";

    fn needed(r: &LinuxResources) -> bool {
        r.memory()
            .as_ref()
            .is_some_and(|m| m.limit().is_some() || m.reservation().is_some() || m.swap().is_some())
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(m) = r.memory() else { return Ok(()) };
        for (file, value) in plan(m)? {
            match fs::write(Self::NAME, dir, file, &value) {
                Ok(()) => {}
                // Without swap accounting there is no memory.swap.max: fine when the request is
                // "no swap limit" or "no swap", as runc does.
                Err(Error::Write { source, .. })
                    if file == "memory.swap.max"
                        && source.kind() == std::io::ErrorKind::NotFound
                        && (value == "max" || value == "0") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn max_or(v: i64) -> String {
    if v == -1 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// The writes for `m`, in order. OCI `swap` is memory+swap (the v1 meaning), so
/// `memory.swap.max` = swap − limit; -1 means "max"; swap equal to the limit means no swap.
pub(crate) fn plan(m: &LinuxMemory) -> Result<Vec<(&'static str, String)>> {
    let limit = memory_value(m.limit(), "memory.max")?;
    let reservation = memory_value(m.reservation(), "memory.low")?;
    let swap = memory_value(m.swap(), "memory.swap.max")?;
    let invalid = |reason: &str| Error::InvalidValue {
        resource: "memory swap",
        file: "memory.swap.max",
        value: m.swap().unwrap_or_default().to_string(),
        reason: reason.to_owned(),
    };
    let swap_max = match (swap, limit) {
        // Unlimited memory and swap unset: both unlimited, as on v1.
        (None, Some(-1)) => Some("max".to_owned()),
        (None, _) => None,
        (Some(-1), _) => Some("max".to_owned()),
        (Some(_), None | Some(-1)) => {
            return Err(invalid("a swap limit needs a memory limit"));
        }
        (Some(s), Some(l)) if s < l => {
            return Err(invalid(&format!(
                "memory+swap ({s}) must be at least the memory limit ({l})"
            )));
        }
        (Some(s), Some(l)) => Some((s - l).to_string()),
    };
    let mut writes = Vec::new();
    if let Some(v) = swap_max {
        writes.push(("memory.swap.max", v));
    }
    if let Some(l) = limit {
        writes.push(("memory.max", max_or(l)));
    }
    if let Some(r) = reservation {
        writes.push(("memory.low", max_or(r)));
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

    fn get<'a>(plan: &'a [(&str, String)], file: &str) -> Option<&'a str> {
        plan.iter()
            .find(|(f, _)| *f == file)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn swap_is_memory_plus_swap_minus_limit() {
        let p = plan(&mem(Some(64 * MIB), Some(128 * MIB))).unwrap();
        assert_eq!(get(&p, "memory.swap.max"), Some("67108864"));
        assert_eq!(get(&p, "memory.max"), Some("67108864"));
        let p = plan(&mem(Some(64 * MIB), Some(64 * MIB))).unwrap();
        assert_eq!(get(&p, "memory.swap.max"), Some("0"));
    }

    #[test]
    fn minus_one_is_max() {
        let p = plan(&mem(Some(-1), None)).unwrap();
        assert_eq!(get(&p, "memory.max"), Some("max"));
        assert_eq!(get(&p, "memory.swap.max"), Some("max"));
        let p = plan(&mem(Some(64 * MIB), Some(-1))).unwrap();
        assert_eq!(get(&p, "memory.swap.max"), Some("max"));
        assert_eq!(get(&p, "memory.max"), Some("67108864"));
    }

    #[test]
    fn inconsistent_swap_is_refused() {
        for (limit, swap) in [
            (Some(64 * MIB), Some(32 * MIB)),
            (None, Some(MIB)),
            (Some(-1), Some(MIB)),
        ] {
            let err = plan(&mem(limit, swap)).unwrap_err().to_string();
            assert!(err.contains("memory.swap.max"), "{limit:?}/{swap:?}: {err}");
        }
        let err = plan(&mem(Some(-3), None)).unwrap_err().to_string();
        assert!(err.contains("memory.max") && err.contains("-3"), "{err}");
    }

    #[test]
    fn unset_and_zero_write_nothing() {
        assert!(plan(&mem(None, None)).unwrap().is_empty());
        assert!(plan(&mem(Some(0), Some(0))).unwrap().is_empty());
    }
}
