//! The OCI `linux.resources.unified` map: v2 interface files written as given, after runc's
//! checks (a plain file name whose controller is available here).

use std::collections::HashMap;
use std::path::Path;

use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

/// Writes `map` into `dir` in key order. `available` is the cgroup's `cgroup.controllers`.
pub(crate) fn apply(dir: &Path, available: &[String], map: &HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let invalid = |reason: String| Error::InvalidUnifiedKey {
            key: key.clone(),
            reason,
        };
        if key.contains('/') || key.starts_with('.') {
            return Err(invalid(
                "must be an interface file name, without '/'".to_owned(),
            ));
        }
        let Some((controller, _)) = key.split_once('.') else {
            return Err(invalid("must be <controller>.<file>".to_owned()));
        };
        if controller != "cgroup" && !available.iter().any(|c| c == controller) {
            return Err(invalid(format!(
                "controller {controller} is not available in {}",
                dir.display()
            )));
        }
        fs::write("unified", dir, key, &map[key])?;
    }
    Ok(())
}
