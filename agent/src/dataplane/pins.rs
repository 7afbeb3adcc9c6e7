//! Where berth keeps its pins, and the bpffs mount they live on.
//!
//! ```text
//! <pin root>/maps/<MAP_NAME>                 every map of the kernel object
//! <pin root>/links/<program>@<interface>     every attachment (a pinned bpf_link)
//! ```
//! A pinned link keeps its program attached after the agent exits; removing the pin detaches it.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// The directories under one pin root.
#[derive(Debug, Clone)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Programs pinned so the daemonless engine can attach them to new pods' veths.
    pub fn progs_dir(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs_dir().join(name)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// Pin path of `program`'s attachment to `target` (an interface name).
    pub fn link(&self, program: &str, target: &str) -> PathBuf {
        self.links_dir().join(format!("{program}@{target}"))
    }

    /// Every pinned link as (program, target, path), sorted by name.
    pub fn links(&self) -> io::Result<Vec<(String, String, PathBuf)>> {
        let mut links = Vec::new();
        let entries = match std::fs::read_dir(self.links_dir()) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(links),
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((program, target)) = name.split_once('@') {
                links.push((program.to_owned(), target.to_owned(), entry.path()));
            }
        }
        links.sort();
        Ok(links)
    }

    /// Creates the pin directories, mounting bpffs on the pin root's parent first when it is
    /// `/sys/fs/bpf` and nothing is mounted there yet (a fresh machine).
    pub fn prepare(&self) -> io::Result<()> {
        ensure_bpffs(&self.root)?;
        for dir in [
            self.root.clone(),
            self.maps_dir(),
            self.links_dir(),
            self.progs_dir(),
        ] {
            std::fs::create_dir_all(&dir)?;
        }
        Ok(())
    }
}

/// Whether `path` lies on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `pin_root` will be created on bpffs.
fn ensure_bpffs(pin_root: &Path) -> io::Result<()> {
    // The nearest existing ancestor decides which filesystem the pin root lands on.
    let mut existing = pin_root;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(existing) {
        return Ok(());
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(default_mount) {
        std::fs::create_dir_all(default_mount)?;
        if !is_bpffs(default_mount) {
            tracing::info!(path = %default_mount.display(), "mounting bpffs");
            mount(
                Some("bpf"),
                default_mount,
                Some("bpf"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|errno| {
                io::Error::other(format!(
                    "mount -t bpf bpf {}: {errno}",
                    default_mount.display()
                ))
            })?;
        }
        return Ok(());
    }
    Err(io::Error::other(format!(
        "pin root {} is not on a bpffs mount; mount one (mount -t bpf bpf DIR) or use a path under /sys/fs/bpf",
        pin_root.display()
    )))
}
