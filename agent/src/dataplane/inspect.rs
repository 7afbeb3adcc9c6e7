//! Read-only inspection of pinned maps and links, shared by the agent's API, `/metrics` and the
//! agent-less `berth status`: every report comes from the kernel objects themselves.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
};

use aya::{
    maps::{MapData, MapInfo, MapType},
    programs::{ProgramInfo, links::PinnedLink, loaded_programs},
};
use serde::Serialize;

use super::pins::PinLayout;

/// One pinned map as `berth status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct MapReport {
    pub name: String,
    /// Kernel map type, e.g. "Hash", "PerCpuArray".
    pub kind: String,
    /// Entries present: counted for hash-like maps, the fixed size for arrays, 0 for ring
    /// buffers (whose capacity is in bytes).
    pub entries: u32,
    /// max_entries: slots for hash/array maps, bytes for ring buffers.
    pub capacity: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub id: u32,
    pub pin: String,
}

/// One pinned attachment.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct AttachmentReport {
    pub program: String,
    /// Where the program is attached (an interface name).
    pub target: String,
    pub link_id: u32,
    pub program_id: u32,
    /// The attached program's kernel name (BPF names are truncated to 15 bytes).
    pub program_kernel_name: String,
    pub pin: String,
}

/// Everything pinned under a pin root.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct PinReport {
    pub maps: Vec<MapReport>,
    pub attachments: Vec<AttachmentReport>,
    /// Pins that exist but could not be opened (e.g. left by an incompatible version).
    pub errors: Vec<String>,
}

/// Reports every pin under `layout`, in the order of `berth_common::maps::ALL` then any other
/// pinned map.
pub fn inspect(layout: &PinLayout) -> PinReport {
    let mut report = PinReport::default();
    let mut names: Vec<String> = berth_common::maps::ALL
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    if let Ok(entries) = std::fs::read_dir(layout.maps_dir()) {
        let mut extra: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !names.contains(name))
            .collect();
        extra.sort();
        names.extend(extra);
    }
    for name in names {
        let path = layout.map(&name);
        if !path.exists() {
            continue;
        }
        match inspect_map(&name, &path) {
            Ok(map) => report.maps.push(map),
            Err(err) => report.errors.push(format!("map {}: {err}", path.display())),
        }
    }
    match layout.links() {
        Ok(links) => {
            for (program, target, path) in links {
                match inspect_link(&program, &target, &path) {
                    Ok(link) => report.attachments.push(link),
                    Err(err) => report
                        .errors
                        .push(format!("link {}: {err}", path.display())),
                }
            }
        }
        Err(err) => report
            .errors
            .push(format!("links {}: {err}", layout.links_dir().display())),
    }
    report
}

fn inspect_map(name: &str, path: &Path) -> Result<MapReport, String> {
    let info = MapInfo::from_pin(path).map_err(|e| e.to_string())?;
    let kind = info.map_type().map_err(|e| e.to_string())?;
    let data = MapData::from_pin(path).map_err(|e| e.to_string())?;
    let entries = match kind {
        MapType::Array | MapType::PerCpuArray | MapType::ProgramArray => info.max_entries(),
        MapType::RingBuf => 0,
        _ => count_entries(data.fd().as_fd(), info.key_size(), info.max_entries())
            .map_err(|e| format!("counting entries: {e}"))?,
    };
    Ok(MapReport {
        name: name.to_owned(),
        kind: format!("{kind:?}"),
        entries,
        capacity: info.max_entries(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        id: info.id(),
        pin: path.display().to_string(),
    })
}

fn inspect_link(program: &str, target: &str, path: &Path) -> Result<AttachmentReport, String> {
    let link = PinnedLink::from_pin(path).map_err(|e| e.to_string())?;
    let fd_link: aya::programs::links::FdLink = link.into();
    let info = fd_link.info().map_err(|e| e.to_string())?;
    let program_kernel_name = program_info(info.program_id())
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(AttachmentReport {
        program: program.to_owned(),
        target: target.to_owned(),
        link_id: info.id(),
        program_id: info.program_id(),
        program_kernel_name,
        pin: path.display().to_string(),
    })
}

fn program_info(id: u32) -> Option<ProgramInfo> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
}

/// Counts the keys of a hash-like map with BPF_MAP_GET_NEXT_KEY, whatever its key type.
/// Bounded by `max_entries` so a map that is being rewritten concurrently cannot loop us forever.
pub fn count_entries(fd: BorrowedFd<'_>, key_size: u32, max_entries: u32) -> io::Result<u32> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut count = 0u32;
    let mut first = true;
    while count <= max_entries {
        let ret = get_next_key(fd, if first { None } else { Some(&key) }, &mut next);
        match ret {
            Ok(()) => {
                count += 1;
                first = false;
                std::mem::swap(&mut key, &mut next);
            }
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
            Err(err) => return Err(err),
        }
    }
    Ok(count.min(max_entries))
}

/// `bpf(BPF_MAP_GET_NEXT_KEY)`: aya only offers it on typed maps, and status must count maps
/// whose key type it does not know.
fn get_next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
    // The kernel's `union bpf_attr` member for BPF_MAP_*_ELEM commands.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let attr = MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        next_key: next.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command; `key` (when given) and `next`
    // are live buffers of the map's key size for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
