//! The eBPF data plane: load the kernel object embedded in this binary, re-open or create its
//! pinned maps, attach its programs through pinned links, and undo all of it on `--cleanup`.
//!
//! Restart semantics: maps are re-opened from their pins (contents survive a restart or a
//! `kill -9`), and an existing pinned link is switched to the newly loaded program with
//! `BPF_LINK_UPDATE`, an atomic swap, so traffic never sees the interface without a program.

pub mod audit;
pub mod containers;
pub mod inspect;
pub mod lb;
pub mod pins;
pub mod pods;
pub mod policy;
mod sock;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use aya_log::EbpfLogger;
use berth_common::{maps, programs};

pub use self::pins::PinLayout;
use crate::config::XdpAttachMode;

/// The kernel object, built from `ebpf/` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/berth"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("preparing pin directory {path}: {source}")]
    Pins {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the embedded kernel object: {0}")]
    Object(#[from] aya_obj::ParseError),
    #[error(
        "pinned map {path} does not match this berth's layout ({detail}); it was made by another \
         version: run `berth agent --cleanup` to remove the old data plane"
    )]
    IncompatiblePin { path: PathBuf, detail: String },
    #[error("loading the kernel object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} missing from the kernel object")]
    MissingProgram(&'static str),
    #[error("{op} program {program}: {source}")]
    Program {
        op: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("{op} link {path}: {detail}")]
    Link {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("starting the kernel log reader: {0}")]
    Logger(#[from] aya_log::Error),
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// A loaded data plane. Dropping it closes our file descriptors only: pinned maps and links (and
/// so the attached programs) stay in the kernel.
pub struct Dataplane {
    pub layout: PinLayout,
    /// The loaded kernel object (kept alive so the programs stay loaded while the agent runs
    /// and their maps stay open), with the audit programs the agent attaches as rules need.
    pub tracepoints: audit::Tracepoints,
}

impl Dataplane {
    /// Loads the kernel object with every map pinned under `layout`, attaches `xdp_lb_ingress` to
    /// `xdp_ifaces`, and detaches it from pinned interfaces no longer listed. Returns the data
    /// plane and the reader of the programs' log records.
    pub fn load(
        layout: PinLayout,
        xdp_ifaces: &[String],
        xdp_mode: XdpAttachMode,
        sock_cgroup: &Path,
    ) -> Result<(Self, EbpfLogger<&'static dyn log::Log>)> {
        layout.prepare().map_err(|source| DataplaneError::Pins {
            path: layout.root.clone(),
            source,
        })?;
        check_pinned_layouts(&layout, EBPF_OBJECT)?;

        let mut loader = EbpfLoader::new();
        let map_pins: Vec<(&'static str, PathBuf)> = maps::ALL
            .iter()
            .map(|name| (*name, layout.map(name)))
            .collect();
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        // The logger takes the (pinned) AYA_LOGS ring buffer; records an old program wrote
        // while no agent ran are drained too.
        let logger = EbpfLogger::init(&mut ebpf)?;

        let xdp = xdp_program(&mut ebpf)?;
        xdp.load().map_err(|source| DataplaneError::Program {
            op: "loading",
            program: programs::XDP_LB_INGRESS,
            source,
        })?;
        let wanted: BTreeSet<&str> = xdp_ifaces.iter().map(String::as_str).collect();
        for iface in &wanted {
            attach_xdp(xdp, &layout, iface, xdp_mode)?;
        }
        detach_unlisted(&layout, programs::XDP_LB_INGRESS, &wanted)?;

        sock::attach_all(&mut ebpf, &layout, sock_cgroup)?;
        pods::load_and_pin(&mut ebpf, &layout)?;
        let tracepoints = audit::Tracepoints::load(ebpf, &layout)?;

        Ok((
            Self {
                layout,
                tracepoints,
            },
            logger,
        ))
    }
}

/// Loads the kernel object with private (unpinned) maps and nothing attached: for
/// `BPF_PROG_TEST_RUN` tests and benchmarks, which must not touch a running data plane.
/// One IPv4 address of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    pub addr: std::net::Ipv4Addr,
    /// The interface holding it (0 if it vanished while being read).
    pub ifindex: u32,
    pub prefix_len: u8,
}

/// This node's IPv4 addresses, loopback included (NodePort addresses for the load balancer,
/// the node identity for policy).
pub fn node_addresses() -> Vec<NodeAddr> {
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    ifaddrs
        .filter_map(|ifa| {
            let addr = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
            let mask = ifa.netmask.as_ref()?.as_sockaddr_in()?.ip();
            Some(NodeAddr {
                addr,
                ifindex: nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).unwrap_or(0),
                prefix_len: u32::from(mask).count_ones() as u8,
            })
        })
        .collect()
}

pub fn load_unpinned() -> Result<Ebpf> {
    Ok(EbpfLoader::new().load(EBPF_OBJECT)?)
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    typed_program(ebpf, programs::XDP_LB_INGRESS)
}

/// Program `name` of the object as its concrete type `P`.
fn typed_program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::Program {
            op: "typing",
            program: name,
            source,
        })
}

/// Program `name` as `P`, loaded into the kernel with `load` (each program type has its own
/// `load`, aya has no trait for it).
fn loaded_program<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = typed_program::<P>(ebpf, name)?;
    load(program).map_err(|source| DataplaneError::Program {
        op: "loading",
        program: name,
        source,
    })?;
    Ok(program)
}

fn attach_xdp(xdp: &mut Xdp, layout: &PinLayout, iface: &str, mode: XdpAttachMode) -> Result<()> {
    let pin = layout.link(programs::XDP_LB_INGRESS, iface);
    let link_err = |op, detail: String| DataplaneError::Link {
        op,
        path: pin.clone(),
        detail,
    };
    if pin.exists() {
        match swap_program(xdp, &pin) {
            Ok(()) => {
                tracing::info!(
                    program = programs::XDP_LB_INGRESS,
                    iface,
                    "re-attached (atomic program swap)"
                );
                return Ok(());
            }
            // A link whose interface disappeared (and came back) is defunct: it can no longer
            // be updated. Replace it with a fresh attachment.
            Err(err) => {
                tracing::warn!(
                    program = programs::XDP_LB_INGRESS,
                    iface,
                    error = %err,
                    "pinned link unusable; attaching anew"
                );
                std::fs::remove_file(&pin).map_err(|e| link_err("removing", e.to_string()))?;
            }
        }
    }
    let aya_mode = match mode {
        XdpAttachMode::Auto => XdpMode::Default,
        XdpAttachMode::Native => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
    };
    let id = xdp
        .attach(iface, aya_mode)
        .map_err(|source| DataplaneError::Program {
            op: "attaching",
            program: programs::XDP_LB_INGRESS,
            source,
        })?;
    let link = xdp
        .take_link(id)
        .map_err(|e| link_err("taking", e.to_string()))?;
    let fd_link = FdLink::try_from(link).map_err(|e| {
        link_err(
            "pinning",
            format!("the kernel attached without a bpf_link ({e}); cannot pin it"),
        )
    })?;
    fd_link
        .pin(&pin)
        .map_err(|e| link_err("pinning", e.to_string()))?;
    tracing::info!(
        program = programs::XDP_LB_INGRESS,
        iface,
        mode = mode.as_str(),
        "attached"
    );
    Ok(())
}

/// Switches the pinned link at `pin` to `xdp` (already loaded) with BPF_LINK_UPDATE.
fn swap_program(xdp: &mut Xdp, pin: &Path) -> Result<(), String> {
    let fd_link: FdLink = PinnedLink::from_pin(pin)
        .map_err(|e| format!("opening: {e}"))?
        .into();
    let link = XdpLink::try_from(fd_link).map_err(|e| format!("typing: {e}"))?;
    let id = xdp
        .attach_to_link(link)
        .map_err(|e| format!("updating: {e}"))?;
    // Dropping our handle only closes the fd: the pin keeps the link and the program attached.
    drop(xdp.take_link(id).map_err(|e| format!("releasing: {e}"))?);
    Ok(())
}

/// Removes pinned attachments of `program` to targets not in `wanted` (the configuration is the
/// desired state: an interface dropped from it is detached).
fn detach_unlisted(layout: &PinLayout, program: &str, wanted: &BTreeSet<&str>) -> Result<()> {
    let links = layout.links().map_err(|source| DataplaneError::Pins {
        path: layout.links_dir(),
        source,
    })?;
    for (prog, target, path) in links {
        if prog == program && !wanted.contains(target.as_str()) {
            std::fs::remove_file(&path).map_err(|e| DataplaneError::Link {
                op: "removing",
                path: path.clone(),
                detail: e.to_string(),
            })?;
            tracing::info!(program, iface = %target, "detached (no longer configured)");
        }
    }
    Ok(())
}

/// Refuses to reuse a pinned map whose type, key, value or size differs from what the embedded
/// object declares: a program reading a map of another layout would misread every entry.
fn check_pinned_layouts(layout: &PinLayout, object: &[u8]) -> Result<()> {
    let obj = aya_obj::Object::parse(object)?;
    for name in maps::ALL {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = obj.maps.get(*name) else {
            continue;
        };
        let pinned = MapInfo::from_pin(&path).map_err(|e| DataplaneError::IncompatiblePin {
            path: path.clone(),
            detail: format!("cannot open it: {e}"),
        })?;
        let pinned_type = pinned.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let want = (
            def.map_type(),
            def.key_size(),
            def.value_size(),
            def.max_entries(),
        );
        let have = (
            pinned_type,
            pinned.key_size(),
            pinned.value_size(),
            pinned.max_entries(),
        );
        if want != have {
            return Err(DataplaneError::IncompatiblePin {
                path,
                detail: format!("(type, key, value, max_entries) is {have:?}, expected {want:?}"),
            });
        }
    }
    Ok(())
}

/// Removes every link pin (detaching the programs) and map pin under `layout`, then the pin
/// directories. Returns what was removed.
pub fn cleanup(layout: &PinLayout) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    // Links first, so no program runs against a map we are about to unpin.
    for dir in [layout.links_dir(), layout.progs_dir(), layout.maps_dir()] {
        remove_dir_pins(&dir, &mut removed)?;
    }
    for dir in [
        layout.links_dir(),
        layout.maps_dir(),
        layout.progs_dir(),
        layout.root.clone(),
    ] {
        match std::fs::remove_dir(&dir) {
            Ok(()) => removed.push(dir),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("removing {}: {err}", dir.display()),
                ));
            }
        }
    }
    Ok(removed)
}

fn remove_dir_pins(dir: &Path, removed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    for entry in entries {
        let path = entry?.path();
        std::fs::remove_file(&path).map_err(|err| {
            std::io::Error::new(err.kind(), format!("removing {}: {err}", path.display()))
        })?;
        removed.push(path);
    }
    Ok(())
}
