//! A container's root filesystem: overlayfs over an image's unpacked layers.
//!
//! ```text
//! <container_dir>/rootfs   the merged view (mount point)
//! <container_dir>/upper    the container's writes
//! <container_dir>/work     overlayfs scratch space
//! ```
//!
//! The legacy `mount(2)` data is limited to one page, so a long `lowerdir=` list (many layers
//! or long paths) is mounted through the new mount API instead (`fsopen("overlay")` and one
//! `lowerdir+` per layer, Linux 6.8+), which has no such limit. If that is unavailable too the
//! error says so.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay rootfs needs at least one lower directory")]
    NoLayers,
    #[error("lower directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("path {path} cannot be used in overlay options (contains ':', ',', '\\' or a newline)")]
    BadPath { path: PathBuf },
    #[error("{target} is already a mount point")]
    AlreadyMounted { target: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting overlay at {target}: {source}{detail}")]
    Mount {
        target: PathBuf,
        #[source]
        source: io::Error,
        detail: String,
    },
    #[error(
        "mounting overlay at {target}: lowerdir list is {len} bytes, over the {limit}-byte mount(2) limit, and the new mount API (lowerdir+, Linux 6.8+) failed at {step}: {source}{detail}"
    )]
    TooLong {
        target: PathBuf,
        len: usize,
        limit: usize,
        step: &'static str,
        #[source]
        source: io::Error,
        detail: String,
    },
    #[error("unmounting {target}: {source}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = OverlayError> = std::result::Result<T, E>;

/// `mount(2)` copies at most one page of option data; 4096 is the smallest page size.
pub const MOUNT_DATA_LIMIT: usize = 4095;

/// A container root filesystem under `container_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    container_dir: PathBuf,
}

fn check_option_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| OverlayError::BadPath { path: p.to_owned() })?;
    if s.contains([':', ',', '\\', '\n']) {
        return Err(OverlayError::BadPath { path: p.to_owned() });
    }
    Ok(s.to_owned())
}

fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| OverlayError::Io {
        op: "creating",
        path: path.to_owned(),
        source,
    })
}

impl Rootfs {
    /// A handle on the rootfs of `container_dir` (mounted or not), e.g. to unmount it from
    /// another process than the one that mounted it.
    pub fn at(container_dir: &Path) -> Self {
        Self {
            container_dir: container_dir.to_owned(),
        }
    }

    /// Mounts overlayfs at `container_dir/rootfs` over `lower_dirs` (bottom to top, as
    /// [`crate::ImageStore::layer_dirs`] returns them), creating `upper/` and `work/`.
    /// A single layer is mounted the same way (one lowerdir).
    pub fn mount(lower_dirs: &[PathBuf], container_dir: &Path) -> Result<Self> {
        if lower_dirs.is_empty() {
            return Err(OverlayError::NoLayers);
        }
        make_dir(container_dir)?;
        let container_dir = fs::canonicalize(container_dir).map_err(|source| OverlayError::Io {
            op: "resolving",
            path: container_dir.to_owned(),
            source,
        })?;
        let this = Self { container_dir };
        let (rootfs, upper, work) = (this.path(), this.upper_dir(), this.work_dir());
        if this.is_mounted()? {
            return Err(OverlayError::AlreadyMounted { target: rootfs });
        }
        // Top first, as overlayfs wants them.
        let mut lowers = Vec::with_capacity(lower_dirs.len());
        for dir in lower_dirs.iter().rev() {
            let abs = fs::canonicalize(dir).map_err(|source| OverlayError::Io {
                op: "resolving lower directory",
                path: dir.clone(),
                source,
            })?;
            if !abs.is_dir() {
                return Err(OverlayError::NotADirectory { path: abs });
            }
            lowers.push(check_option_path(&abs)?);
        }
        for d in [&rootfs, &upper, &work] {
            make_dir(d)?;
        }
        let upper_s = check_option_path(&upper)?;
        let work_s = check_option_path(&work)?;
        let lowerdir = lowers.join(":");
        let options = format!("lowerdir={lowerdir},upperdir={upper_s},workdir={work_s}");
        if options.len() <= MOUNT_DATA_LIMIT {
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
            .map_err(|e| OverlayError::Mount {
                target: rootfs.clone(),
                source: e.into(),
                detail: if e == nix::errno::Errno::EPERM {
                    " (mounting needs root / CAP_SYS_ADMIN)".into()
                } else {
                    String::new()
                },
            })?;
        } else {
            mount_with_fsconfig(&lowers, &upper_s, &work_s, &rootfs).map_err(
                |(step, source, detail)| OverlayError::TooLong {
                    target: rootfs.clone(),
                    len: options.len(),
                    limit: MOUNT_DATA_LIMIT,
                    step,
                    source,
                    detail,
                },
            )?;
        }
        tracing::debug!(rootfs = %rootfs.display(), layers = lowers.len(), "mounted overlay rootfs");
        Ok(this)
    }

    /// `container_dir`.
    pub fn container_dir(&self) -> &Path {
        &self.container_dir
    }

    /// The merged view: `container_dir/rootfs`.
    pub fn path(&self) -> PathBuf {
        self.container_dir.join("rootfs")
    }

    /// The container's writable layer: `container_dir/upper`.
    pub fn upper_dir(&self) -> PathBuf {
        self.container_dir.join("upper")
    }

    /// overlayfs scratch space: `container_dir/work`.
    pub fn work_dir(&self) -> PathBuf {
        self.container_dir.join("work")
    }

    /// Whether `rootfs` is a mount point in this process's mount namespace.
    pub fn is_mounted(&self) -> Result<bool> {
        let target = fs::canonicalize(self.path()).unwrap_or_else(|_| self.path());
        let info =
            fs::read_to_string("/proc/self/mountinfo").map_err(|source| OverlayError::Io {
                op: "reading",
                path: "/proc/self/mountinfo".into(),
                source,
            })?;
        Ok(info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mp| Path::new(&unescape_mountinfo(mp)) == target))
    }

    /// Unmounts the rootfs (lazily with `MNT_DETACH` when busy). Not being mounted is fine.
    pub fn unmount(&self) -> Result<()> {
        let target = self.path();
        if !self.is_mounted()? {
            return Ok(());
        }
        match nix::mount::umount2(&target, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                tracing::warn!(rootfs = %target.display(), "rootfs busy; detaching lazily");
                nix::mount::umount2(&target, MntFlags::MNT_DETACH).map_err(|e| {
                    OverlayError::Unmount {
                        target: target.clone(),
                        source: e.into(),
                    }
                })
            }
            Err(e) => Err(OverlayError::Unmount {
                target,
                source: e.into(),
            }),
        }
    }

    /// Unmounts, then deletes `upper/`, `work/` and the (empty) `rootfs/` mount point.
    /// `container_dir` itself is left to its owner.
    pub fn remove(self) -> Result<()> {
        self.unmount()?;
        if self.is_mounted()? {
            // Still mounted (e.g. stacked mounts): never delete through a mounted view.
            return Err(OverlayError::AlreadyMounted {
                target: self.path(),
            });
        }
        for dir in [self.upper_dir(), self.work_dir()] {
            crate::unpack::remove_tree(&dir).map_err(|source| OverlayError::Io {
                op: "removing",
                path: dir.clone(),
                source,
            })?;
        }
        match fs::remove_dir(self.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(OverlayError::Io {
                op: "removing mount point",
                path: self.path(),
                source,
            }),
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

type MountStepError = (&'static str, io::Error, String);

/// Mounts overlayfs with the new mount API, one `lowerdir+` per layer (top first).
pub(crate) fn mount_with_fsconfig(
    lowers_top_first: &[String],
    upper: &str,
    work: &str,
    target: &Path,
) -> std::result::Result<(), MountStepError> {
    let fs_fd = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| ("fsopen", io::Error::from(e), String::new()))?;
    let fail = |step: &'static str, e: Errno| (step, io::Error::from(e), kernel_log(&fs_fd));
    for l in lowers_top_first {
        rustix::mount::fsconfig_set_string(&fs_fd, "lowerdir+", l.as_str())
            .map_err(|e| fail("lowerdir+", e))?;
    }
    rustix::mount::fsconfig_set_string(&fs_fd, "upperdir", upper)
        .map_err(|e| fail("upperdir", e))?;
    rustix::mount::fsconfig_set_string(&fs_fd, "workdir", work).map_err(|e| fail("workdir", e))?;
    rustix::mount::fsconfig_create(&fs_fd).map_err(|e| fail("fsconfig create", e))?;
    let mnt = rustix::mount::fsmount(
        &fs_fd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::empty(),
    )
    .map_err(|e| fail("fsmount", e))?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| fail("move_mount", e))?;
    Ok(())
}

/// Messages the kernel queued on an fs context (`e overlay: …` lines), for error reports.
fn kernel_log(fs_fd: &std::os::fd::OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fs_fd, &mut buf) {
        if n == 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
        if lines.len() > 16 {
            break;
        }
    }
    if lines.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {})", lines.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn rejects_bad_paths_and_empty_layers() {
        assert!(matches!(
            Rootfs::mount(&[], Path::new("/nonexistent-berth")),
            Err(OverlayError::NoLayers)
        ));
        assert!(check_option_path(Path::new("/a:b")).is_err());
        assert!(check_option_path(Path::new("/a,b")).is_err());
        assert!(check_option_path(Path::new("/a/b")).is_ok());
    }
}
