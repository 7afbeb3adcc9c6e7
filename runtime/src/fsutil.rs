//! Path and mount-option helpers for building a container's root filesystem.

use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;

/// Resolves `unsafe_path` as if `root` were `/`: symlinks are followed component by component
/// and can never lead outside `root` (an absolute link target restarts at `root`, `..` stops at
/// `root`). Components that do not exist yet are appended as they are. The same contract as
/// filepath-securejoin, so a hostile image cannot redirect a mount onto the host.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> std::io::Result<PathBuf> {
    const MAX_LINKS: u32 = 255;
    let mut pending: Vec<std::ffi::OsString> = unsafe_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut resolved = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(std::io::Error::other(format!(
                        "too many symlinks resolving {}",
                        unsafe_path.display()
                    )));
                }
                let target = std::fs::read_link(&full)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(name) => pending.push(name.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// A mount's `options` split into flags, propagation changes and filesystem data.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself.
    pub flags: MsFlags,
    /// Flags cleared by options such as `rw`, `suid`, `dev`.
    pub cleared: MsFlags,
    /// Propagation changes applied after the mount (`rprivate`, `shared`, ...).
    pub propagation: MsFlags,
    /// Everything else, comma-joined for the filesystem (`mode=755`, `size=65536k`).
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Flags that a bind mount only honours through a remount.
    pub fn needs_bind_remount(&self) -> bool {
        let remountable = MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME
            | MsFlags::MS_NODIRATIME
            | MsFlags::MS_RELATIME
            | MsFlags::MS_STRICTATIME;
        self.is_bind() && self.flags.intersects(remountable)
    }
}

/// Parses OCI mount options (mount(8) names).
pub fn parse_mount_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear, prop) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            // Options the kernel's mount flags cannot express but runtimes accept silently.
            "tmpcopyup" | "notmpcopyup" | "idmap" | "ridmap" | "copy-symlink" => {
                (MsFlags::empty(), MsFlags::empty(), MsFlags::empty())
            }
            other => {
                data.push(other.to_owned());
                (MsFlags::empty(), MsFlags::empty(), MsFlags::empty())
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
        out.cleared.insert(clear);
        out.propagation.insert(prop);
    }
    out.data = data.join(",");
    out
}

/// Propagation flags for `linux.rootfsPropagation`.
pub fn rootfs_propagation(value: Option<&str>) -> Result<MsFlags, String> {
    Ok(match value.unwrap_or("") {
        // runc's default: the container sees host mount events but never sends its own back.
        "" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(format!("unknown rootfsPropagation {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn secure_join_never_escapes_the_root() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc")).expect("etc");
        symlink("/etc", root.join("abs")).expect("symlink");
        symlink("../../../../etc", root.join("rel")).expect("symlink");
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("loop1", root.join("loop2")).expect("symlink");

        assert_eq!(
            secure_join(root, Path::new("/abs/passwd")).expect("abs"),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/rel/passwd")).expect("rel"),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../x")).expect("dots"),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("a/b/c")).expect("missing"),
            root.join("a/b/c")
        );
        assert!(
            secure_join(root, Path::new("/loop1")).is_err(),
            "symlink loops are errors"
        );
    }

    #[test]
    fn mount_options_split_into_flags_propagation_and_data() {
        let opts: Vec<String> = [
            "nosuid", "noexec", "nodev", "ro", "rbind", "rprivate", "mode=755", "size=64k",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = parse_mount_options(&opts);
        assert!(parsed.flags.contains(
            MsFlags::MS_NOSUID
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NODEV
                | MsFlags::MS_RDONLY
                | MsFlags::MS_BIND
                | MsFlags::MS_REC
        ));
        assert_eq!(parsed.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(parsed.data, "mode=755,size=64k");
        assert!(parsed.needs_bind_remount());

        let rw = parse_mount_options(&["ro".to_string(), "rw".to_string()]);
        assert!(!rw.flags.contains(MsFlags::MS_RDONLY), "later options win");
    }

    #[test]
    fn rootfs_propagation_values() {
        assert_eq!(
            rootfs_propagation(None).expect("default"),
            MsFlags::MS_SLAVE | MsFlags::MS_REC
        );
        assert_eq!(
            rootfs_propagation(Some("shared")).expect("shared"),
            MsFlags::MS_SHARED
        );
        assert!(rootfs_propagation(Some("bogus")).is_err());
    }
}
