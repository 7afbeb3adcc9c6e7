//! Building the container's root filesystem inside its new mount namespace: propagation, the
//! rootfs bind mount, the spec's mounts, device nodes, pivot_root, then masked and read-only
//! paths. Runs in the container's init process before it execs the user's program.

use std::{
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{OFlag, open},
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::{
        stat::{Mode, SFlag, makedev, mknod},
        statvfs::{FsFlags, statvfs},
    },
    unistd::{chdir, chown, fchdir, pivot_root},
};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::fsutil::{parse_mount_options, rootfs_propagation, secure_join};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{op} {path}: {errno}")]
    Sys {
        op: String,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config.json: {0}")]
    Spec(String),
}

type Result<T> = std::result::Result<T, RootfsError>;

fn sys(op: impl Into<String>, path: &Path) -> impl FnOnce(nix::errno::Errno) -> RootfsError {
    let (op, path) = (op.into(), path.to_owned());
    move |errno| RootfsError::Sys { op, path, errno }
}

fn io(op: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let (op, path) = (op.into(), path.to_owned());
    move |source| RootfsError::Io { op, path, source }
}

/// What the rootfs set-up needs besides the spec.
pub struct RootfsContext<'a> {
    pub rootfs: &'a Path,
    /// The container has its own user namespace (device nodes are bind-mounted, not created).
    pub userns: bool,
    /// The container has its own cgroup namespace (cgroup filesystems are mounted fresh).
    pub cgroupns: bool,
    /// The container's cgroups path relative to each hierarchy root, for bind mounts.
    pub cgroups_path: &'a str,
}

/// Everything before pivot_root: propagation, the rootfs bind mount, mounts and devices.
pub fn prepare(spec: &Spec, ctx: &RootfsContext<'_>) -> Result<()> {
    let linux = spec.linux().as_ref();
    let propagation = rootfs_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))
        .map_err(RootfsError::Spec)?;
    // Never let our mounts propagate back to the host: make everything a slave (or private)
    // first, recursively.
    let base = if propagation.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_PRIVATE | MsFlags::MS_REC
    } else {
        propagation | MsFlags::MS_REC
    };
    mount(None::<&str>, "/", None::<&str>, base, None::<&str>)
        .map_err(sys("setting propagation of", Path::new("/")))?;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(ctx.rootfs),
        ctx.rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("bind-mounting rootfs", ctx.rootfs))?;

    let mut dev_is_mounted = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") {
            dev_is_mounted = true;
        }
        mount_one(m, ctx)?;
    }
    create_devices(spec, ctx, dev_is_mounted)?;
    Ok(())
}

fn mount_one(m: &Mount, ctx: &RootfsContext<'_>) -> Result<()> {
    let options = parse_mount_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = secure_join(ctx.rootfs, m.destination())
        .map_err(io("resolving mount destination", m.destination()))?;
    let source = m.source().clone();

    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(&dest, &options.flags, ctx);
    }
    let is_bind = options.is_bind() || typ == "bind";
    let source_is_file = is_bind
        && source
            .as_deref()
            .and_then(|s| std::fs::metadata(s).ok())
            .is_some_and(|meta| !meta.is_dir());
    create_mount_point(&dest, source_is_file)?;

    let data = (!options.data.is_empty()).then_some(options.data.as_str());
    if is_bind {
        let source = source.ok_or_else(|| {
            RootfsError::Spec(format!(
                "mounts: bind mount to {} has no source",
                m.destination().display()
            ))
        })?;
        let flags = MsFlags::MS_BIND | (options.flags & MsFlags::MS_REC);
        mount(Some(&source), &dest, None::<&str>, flags, None::<&str>)
            .map_err(sys(format!("bind-mounting {}", source.display()), &dest))?;
        if options.needs_bind_remount() {
            remount_bind(&dest, options.flags)?;
        }
    } else {
        let fstype = if typ.is_empty() { "none" } else { typ };
        let source = source.unwrap_or_else(|| PathBuf::from(fstype));
        let flags = options.flags & !MsFlags::MS_REMOUNT;
        let result = mount(Some(&source), &dest, Some(fstype), flags, data);
        match result {
            Ok(()) => {}
            // sysfs cannot be mounted without a network namespace of our own (or inside a user
            // namespace): fall back to a read-only recursive bind of the host's, as runc does.
            Err(nix::errno::Errno::EPERM) if fstype == "sysfs" => {
                mount(
                    Some("/sys"),
                    &dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(sys("bind-mounting /sys", &dest))?;
                remount_bind(&dest, flags | MsFlags::MS_RDONLY)?;
            }
            Err(errno) => {
                return Err(RootfsError::Sys {
                    op: format!("mounting {fstype} ({}) on", options.data),
                    path: dest,
                    errno,
                });
            }
        }
    }
    if !options.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            options.propagation,
            None::<&str>,
        )
        .map_err(sys("setting mount propagation of", &dest))?;
    }
    Ok(())
}

/// The cgroup filesystem inside the container: fresh mounts when it has its own cgroup
/// namespace, otherwise bind mounts of its own cgroup directories.
fn mount_cgroup(dest: &Path, flags: &MsFlags, ctx: &RootfsContext<'_>) -> Result<()> {
    create_mount_point(dest, false)?;
    let ro = flags.contains(MsFlags::MS_RDONLY);
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let host = Path::new("/sys/fs/cgroup");
    let is_v2 = nix::sys::statfs::statfs(host)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    let rel = ctx.cgroups_path.trim_start_matches('/');
    if is_v2 {
        if ctx.cgroupns {
            let f = base
                | if ro {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
            return mount(Some("cgroup2"), dest, Some("cgroup2"), f, None::<&str>)
                .map_err(sys("mounting cgroup2 on", dest));
        }
        let src = host.join(rel);
        mount(
            Some(&src),
            dest,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("bind-mounting {}", src.display()), dest))?;
        if ro {
            remount_bind(dest, base | MsFlags::MS_RDONLY)?;
        }
        return Ok(());
    }
    // v1 (or hybrid): a tmpfs holding one directory per hierarchy, each a bind mount of the
    // container's own cgroup in that hierarchy.
    mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755"))
        .map_err(sys("mounting tmpfs for cgroups on", dest))?;
    let entries = std::fs::read_dir(host).map_err(io("listing", host))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let target = dest.join(&name);
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => meta,
            Err(_) => continue,
        };
        if meta.file_type().is_symlink() {
            if let Ok(link) = std::fs::read_link(entry.path()) {
                let _ = symlink(link, &target);
            }
            continue;
        }
        let src = entry.path().join(rel);
        if !src.is_dir() {
            continue;
        }
        std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
        mount(
            Some(&src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(format!("bind-mounting {}", src.display()), &target))?;
        if ro {
            remount_bind(&target, base | MsFlags::MS_RDONLY)?;
        }
    }
    if ro {
        mount(
            None::<&str>,
            dest,
            None::<&str>,
            MsFlags::MS_REMOUNT | base | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
        .map_err(sys("remounting read-only", dest))?;
    }
    Ok(())
}

/// Re-applies `flags` to a bind mount, keeping the lock flags the kernel requires to be kept
/// (nosuid/nodev/noexec/atime set on the source mount cannot be cleared in a user namespace).
fn remount_bind(path: &Path, flags: MsFlags) -> Result<()> {
    let locked = statvfs(path)
        .map(|vfs| {
            let f = vfs.flags();
            let mut locked = MsFlags::empty();
            for (fs_flag, ms_flag) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(fs_flag) {
                    locked.insert(ms_flag);
                }
            }
            locked
        })
        .unwrap_or_else(|_| MsFlags::empty());
    let keep = MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOATIME
        | MsFlags::MS_NODIRATIME
        | MsFlags::MS_RELATIME
        | MsFlags::MS_STRICTATIME;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | (flags & keep) | locked,
        None::<&str>,
    )
    .map_err(sys("remounting", path))
}

fn create_mount_point(dest: &Path, file: bool) -> Result<()> {
    if file {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        if std::fs::symlink_metadata(dest).is_err() {
            std::fs::File::create(dest).map_err(io("creating mount point", dest))?;
        }
        Ok(())
    } else {
        std::fs::create_dir_all(dest).map_err(io("creating mount point", dest))
    }
}

/// The devices every container gets (the OCI runtime spec's default device set).
fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
}

fn create_devices(spec: &Spec, ctx: &RootfsContext<'_>, dev_is_mounted: bool) -> Result<()> {
    let dev =
        secure_join(ctx.rootfs, Path::new("/dev")).map_err(io("resolving", Path::new("/dev")))?;
    std::fs::create_dir_all(&dev).map_err(io("creating", &dev))?;
    let mut wanted: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> = default_devices()
        .into_iter()
        .map(|(path, major, minor)| {
            (
                PathBuf::from(path),
                SFlag::S_IFCHR,
                major,
                minor,
                0o666,
                0,
                0,
            )
        })
        .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        wanted.retain(|w| w.0 != *d.path());
        wanted.push(device_entry(d)?);
    }
    for (path, kind, major, minor, mode, uid, gid) in wanted {
        let target = secure_join(ctx.rootfs, &path).map_err(io("resolving", &path))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        if ctx.userns {
            // mknod is not allowed in a user namespace: bind the host's node instead.
            create_mount_point(&target, true)?;
            mount(
                Some(&path),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind-mounting device", &target))?;
            continue;
        }
        let _ = std::fs::remove_file(&target);
        mknod(
            &target,
            kind,
            Mode::from_bits_truncate(mode & 0o7777),
            makedev(major, minor),
        )
        .map_err(sys("creating device", &target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io("chmod", &target))?;
        chown(&target, Some(uid.into()), Some(gid.into())).map_err(sys("chown", &target))?;
    }
    if dev_is_mounted {
        for (link, target) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
            ("/dev/ptmx", "pts/ptmx"),
        ] {
            let path = ctx.rootfs.join(link.trim_start_matches('/'));
            if std::fs::symlink_metadata(&path).is_err() {
                symlink(target, &path).map_err(io("creating symlink", &path))?;
            }
        }
    }
    Ok(())
}

fn device_entry(d: &LinuxDevice) -> Result<(PathBuf, SFlag, u64, u64, u32, u32, u32)> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(RootfsError::Spec(format!(
                "linux.devices: {} has type 'a', which only cgroup rules may use",
                d.path().display()
            )));
        }
    };
    if !d.path().starts_with("/dev") {
        return Err(RootfsError::Spec(format!(
            "linux.devices: {} is not under /dev",
            d.path().display()
        )));
    }
    Ok((
        d.path().clone(),
        kind,
        d.major() as u64,
        d.minor() as u64,
        d.file_mode().unwrap_or(0o666),
        d.uid().unwrap_or(0),
        d.gid().unwrap_or(0),
    ))
}

/// Makes `rootfs` the root: pivot_root with the old root stacked underneath, then detached.
pub fn pivot(rootfs: &Path) -> Result<()> {
    let old = open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", Path::new("/")))?;
    let new = open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", rootfs))?;
    fchdir(&new).map_err(sys("chdir", rootfs))?;
    pivot_root(".", ".").map_err(sys("pivot_root", rootfs))?;
    // The old root is now mounted on top of "/": make sure unmounting it cannot propagate to
    // the host, then detach it.
    fchdir(&old).map_err(sys("chdir", Path::new("old root")))?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("making the old root a slave", Path::new(".")))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root", Path::new(".")))?;
    chdir("/").map_err(sys("chdir", Path::new("/")))?;
    Ok(())
}

/// After pivot_root: root propagation, masked and read-only paths, a read-only root, sysctls.
pub fn finalize(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    let propagation = rootfs_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))
        .map_err(RootfsError::Spec)?;
    if propagation.intersects(MsFlags::MS_SHARED | MsFlags::MS_UNBINDABLE) {
        mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
            .map_err(sys("setting rootfs propagation of", Path::new("/")))?;
    }
    // Sysctls first: /proc/sys is usually among the read-only paths.
    for (key, value) in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        let file = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&file, value).map_err(io(format!("setting sysctl {key}={value}"), &file))?;
    }
    for path in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        mask_path(Path::new(path))?;
    }
    for path in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        readonly_path(Path::new(path))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

fn mask_path(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("inspecting masked path", path)(e)),
    };
    if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0,mode=555"),
        )
        .map_err(sys("masking", path))
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys("masking", path))
    }
}

fn readonly_path(path: &Path) -> Result<()> {
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(sys("bind-mounting read-only path", path)(errno)),
    }
    remount_bind(path, MsFlags::MS_RDONLY)
}
