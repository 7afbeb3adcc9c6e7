//! The socket-level load balancer: the four cgroup sock_addr programs, attached to one cgroup
//! (by default the root of the cgroup v2 hierarchy, so every process on the node is covered).
//!
//! Restart: the new program is attached next to the old one before the old link's pin is
//! removed, so no connect() ever runs without a translator (two translators in a row are
//! harmless: the second sees a backend address, which is no frontend).

use std::{collections::BTreeSet, fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use berth_common::programs;

use super::{DataplaneError, PinLayout, Result, detach_unlisted, loaded_program};

/// The link target name of a cgroup directory (pin names cannot contain '/').
pub fn cgroup_target(cgroup: &Path) -> String {
    format!("cgroup:{}", cgroup.display().to_string().replace('/', "%"))
}

pub fn attach_all(ebpf: &mut Ebpf, layout: &PinLayout, cgroup: &Path) -> Result<()> {
    let dir = File::open(cgroup).map_err(|e| DataplaneError::Link {
        op: "opening cgroup",
        path: cgroup.to_owned(),
        detail: e.to_string(),
    })?;
    let target = cgroup_target(cgroup);
    for name in programs::SOCK_PROGRAMS {
        let program = loaded_program(ebpf, name, CgroupSockAddr::load)?;
        let pin = layout.link(name, &target);
        let link_err = |op, detail: String| DataplaneError::Link {
            op,
            path: pin.clone(),
            detail,
        };
        // A bpf_link attachment takes no flags (the kernel refuses ALLOW_MULTI with EINVAL) and
        // is always one of many: several agents (a node's and a test's, each with its own pin
        // root) may serve the same cgroup, each with its own link.
        let id = program
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| DataplaneError::Program {
                op: "attaching",
                program: name,
                source,
            })?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|e| link_err("taking", e.to_string()))?
            .try_into()
            .map_err(|e| link_err("pinning", format!("not a bpf_link: {e}")))?;
        match std::fs::remove_file(&pin) {
            Ok(()) => {
                tracing::info!(program = name, cgroup = %cgroup.display(), "replaced the previous attachment")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(link_err("removing", e.to_string())),
        }
        link.pin(&pin)
            .map_err(|e| link_err("pinning", e.to_string()))?;
        let wanted = BTreeSet::from([target.as_str()]);
        detach_unlisted(layout, name, &wanted)?;
        tracing::info!(program = name, cgroup = %cgroup.display(), "attached");
    }
    Ok(())
}
