//! v1 `devices`: one `devices.allow` / `devices.deny` line per `linux.resources.devices` rule,
//! in spec order (the usual spec starts with a deny-all and then allows).

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use crate::cgroups::common::Controller;
use crate::cgroups::error::{Error, Result};
use crate::cgroups::fs;

pub(crate) struct Devices;

impl Controller for Devices {
    const NAME: &'static str = "devices";

    fn needed(r: &LinuxResources) -> bool {
        r.devices().as_ref().is_some_and(|d| !d.is_empty())
    }

    fn apply(dir: &Path, r: &LinuxResources) -> Result<()> {
        let Some(rules) = r.devices() else {
            return Ok(());
        };
        let lines = rules.iter().map(rule).collect::<Result<Vec<_>>>()?;
        for (file, line) in lines {
            // One rule per write(2): the kernel parses a single rule per write.
            fs::write(Self::NAME, dir, file, &line)?;
        }
        Ok(())
    }
}

/// The file and line for one rule: `("devices.allow", "c 1:3 rwm")`.
pub(crate) fn rule(d: &LinuxDeviceCgroup) -> Result<(&'static str, String)> {
    let file = if d.allow() {
        "devices.allow"
    } else {
        "devices.deny"
    };
    let invalid = |reason: String| Error::InvalidValue {
        resource: "devices",
        file,
        value: d.to_string(),
        reason,
    };
    let typ = match d.typ().unwrap_or_default() {
        LinuxDeviceType::A => "a",
        LinuxDeviceType::B => "b",
        LinuxDeviceType::C | LinuxDeviceType::U => "c",
        LinuxDeviceType::P => {
            return Err(invalid(
                "the devices controller has no FIFO (p) type".to_owned(),
            ));
        }
    };
    let number = |n: Option<i64>| match n {
        None | Some(-1) => Ok("*".to_owned()),
        Some(n) if n >= 0 => Ok(n.to_string()),
        Some(n) => Err(invalid(format!("device number {n} is negative"))),
    };
    let (major, minor) = (number(d.major())?, number(d.minor())?);
    let access = match d.access().as_deref() {
        None | Some("") => "rwm",
        Some(a) => a,
    };
    let mut seen = [false; 3];
    for ch in access.chars() {
        let i = match ch {
            'r' => 0,
            'w' => 1,
            'm' => 2,
            _ => {
                return Err(invalid(format!(
                    "access {access:?} is not a subset of \"rwm\""
                )));
            }
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(invalid(format!("access {access:?} repeats {ch:?}")));
        }
    }
    Ok((file, format!("{typ} {major}:{minor} {access}")))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    use super::*;

    #[test]
    fn rules_become_kernel_lines() {
        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap();
        assert_eq!(
            rule(&deny_all).unwrap(),
            ("devices.deny", "a *:* rwm".to_owned())
        );
        let null = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1i64)
            .minor(3i64)
            .access("rw")
            .build()
            .unwrap();
        assert_eq!(
            rule(&null).unwrap(),
            ("devices.allow", "c 1:3 rw".to_owned())
        );
        let any_block = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::B)
            .major(8i64)
            .build()
            .unwrap();
        assert_eq!(
            rule(&any_block).unwrap(),
            ("devices.allow", "b 8:* rwm".to_owned())
        );
    }

    #[test]
    fn bad_rules_name_the_file() {
        let bad_access = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rx")
            .build()
            .unwrap();
        let fifo = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .typ(LinuxDeviceType::P)
            .build()
            .unwrap();
        for (d, file) in [(bad_access, "devices.allow"), (fifo, "devices.deny")] {
            let err = rule(&d).unwrap_err().to_string();
            assert!(err.contains("devices") && err.contains(file), "{err}");
        }
    }
}
