//! Unpacking layer tarballs safely, converting OCI whiteouts to overlayfs format.
//!
//! A layer comes from whoever built or served the image, so every entry is treated as hostile:
//! - paths are split into components; `..` and absolute paths are rejected;
//! - every parent directory is opened with `O_NOFOLLOW` from the layer root down (the
//!   `openat` walk), so a symlink placed by an earlier entry (`a -> /etc`) is never followed by
//!   a later one (`a/passwd`): that entry is rejected;
//! - files are created with `O_CREAT|O_EXCL|O_NOFOLLOW` after removing whatever was there;
//! - hard links may only point at something already unpacked in this layer, found by the same
//!   walk; symlinks are created as given (absolute targets are resolved inside the container at
//!   run time) and never resolved here.
//!
//! Whiteouts become what overlayfs expects: `.wh.NAME` a 0:0 character device `NAME`, and
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory (both need root).
//!
//! A layer is unpacked into a temporary directory beside its final place and renamed into
//! place only when complete and verified, so a crash or a rejected entry never leaves a
//! half-unpacked layer that looks complete.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::digest::{Digest, DigestError, FinishError, HashingReader};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?} rejected: {reason}")]
    Unsafe { entry: String, reason: String },
    #[error("layer entry {entry:?}: {op}: {source}")]
    Entry {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry:?}: {what} needs root (CAP_MKNOD/CAP_SYS_ADMIN): {source}")]
    NeedsRoot {
        entry: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading layer archive: {source}")]
    Archive {
        #[source]
        source: io::Error,
    },
    #[error("unsupported layer compression: {what}")]
    Compression { what: &'static str },
    #[error("layer content does not verify ({what}): {source}")]
    Verify {
        what: &'static str,
        #[source]
        source: DigestError,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = UnpackError> = std::result::Result<T, E>;

/// Prefix of temporary layer directories (never a digest, so GC and lookups skip them).
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// How a layer's bytes are compressed, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
}

impl Compression {
    /// Detects the compression from the first bytes of a stream.
    pub fn sniff(head: &[u8]) -> Result<Self> {
        match head {
            [0x1f, 0x8b, ..] => Ok(Self::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Err(UnpackError::Compression { what: "zstd" }),
            [b'B', b'Z', b'h', ..] => Err(UnpackError::Compression { what: "bzip2" }),
            [0xfd, b'7', b'z', b'X', b'Z', ..] => Err(UnpackError::Compression { what: "xz" }),
            _ => Ok(Self::None),
        }
    }
}

/// A layer unpacked into its final directory.
#[derive(Debug, Clone)]
pub struct UnpackedLayer {
    /// Digest of the uncompressed tar (the layer's diff id and its key in the store).
    pub diff_id: Digest,
    /// Digest and size of the (possibly compressed) bytes read.
    pub blob_digest: Digest,
    pub blob_size: u64,
    /// Compression detected in the blob (`None` when the layer was already unpacked).
    pub compression: Option<Compression>,
    /// `layers/<diff id hex>`.
    pub dir: PathBuf,
}

/// Unpacks a layer from `source` into `layers_dir/<diff id hex>`.
///
/// `blob` is the expected digest and size of `source`, `diff_id` the expected digest of the
/// uncompressed tar; either is checked when given. The layer is extracted into a temporary
/// directory in `layers_dir` and renamed into place with `RENAME_NOREPLACE`: when another
/// process finished the same layer first, its copy is kept and ours discarded. On any error
/// nothing is left behind.
pub fn unpack_layer(
    source: impl Read,
    blob: Option<(&Digest, u64)>,
    diff_id: Option<&Digest>,
    layers_dir: &Path,
) -> Result<UnpackedLayer> {
    if let Some(d) = diff_id {
        let dir = layers_dir.join(d.hex());
        if dir.is_dir() {
            let (blob_digest, blob_size) = match blob {
                Some((d, s)) => (d.clone(), s),
                None => (d.clone(), 0),
            };
            return Ok(UnpackedLayer {
                diff_id: d.clone(),
                blob_digest,
                blob_size,
                compression: None,
                dir,
            });
        }
    }
    let tmp = TempTree::new(layers_dir)?;
    let blob_reader = match blob {
        Some((d, size)) => HashingReader::verifying(source, d.clone(), Some(size)),
        None => HashingReader::new(source),
    };
    let mut buffered = BufReader::with_capacity(128 * 1024, blob_reader);
    let head = buffered
        .fill_buf()
        .map_err(|source| UnpackError::Archive { source })?;
    let compression = Compression::sniff(head)?;
    let (diff, buffered) = match compression {
        Compression::Gzip => {
            let mut decoder = MultiGzDecoder::new(buffered);
            let diff = extract_verified(&mut decoder, diff_id, &tmp.path)?;
            (diff, decoder.into_inner())
        }
        Compression::None => {
            let diff = extract_verified(&mut buffered, diff_id, &tmp.path)?;
            (diff, buffered)
        }
    };
    let (blob_digest, blob_size, _) = buffered.into_inner().finish().map_err(|e| match e {
        FinishError::Digest(source) => UnpackError::Verify {
            what: "compressed blob",
            source,
        },
        FinishError::Io(source) => UnpackError::Archive { source },
    })?;

    let dir = layers_dir.join(diff.hex());
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        &tmp.path,
        rustix::fs::CWD,
        &dir,
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => tmp.disarm(),
        // Another process (or thread) unpacked the same layer first: keep theirs.
        Err(Errno::EXIST | Errno::NOTEMPTY) => {
            tracing::debug!(layer = %diff, "layer already unpacked concurrently; discarding ours");
        }
        Err(e) => {
            return Err(UnpackError::Io {
                op: "renaming unpacked layer into place at",
                path: dir,
                source: e.into(),
            });
        }
    }
    if let Ok(parent) = File::open(layers_dir) {
        let _ = parent.sync_all();
    }
    Ok(UnpackedLayer {
        diff_id: diff,
        blob_digest,
        blob_size,
        compression: Some(compression),
        dir,
    })
}

/// Extracts the uncompressed tar from `reader` into `dest`, hashing it; returns its digest.
fn extract_verified(reader: impl Read, diff_id: Option<&Digest>, dest: &Path) -> Result<Digest> {
    let hashing = match diff_id {
        Some(d) => HashingReader::verifying(reader, d.clone(), None),
        None => HashingReader::new(reader),
    };
    let hashing = extract(hashing, dest)?;
    let (digest, _, _) = hashing.finish().map_err(|e| match e {
        FinishError::Digest(source) => UnpackError::Verify {
            what: "uncompressed tar (diff id)",
            source,
        },
        FinishError::Io(source) => UnpackError::Archive { source },
    })?;
    Ok(digest)
}

/// Extracts a tar stream into the existing directory `dest` with the protections described in
/// the module documentation, and returns the reader (positioned after the end-of-archive
/// marker) so the caller can drain and verify it.
pub fn extract<R: Read>(reader: R, dest: &Path) -> Result<R> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        op: "opening unpack destination",
        path: dest.to_owned(),
        source: e.into(),
    })?;
    let mut extractor = Extractor {
        root,
        privileged: rustix::process::geteuid().is_root(),
        dirs: BTreeMap::new(),
        root_meta: None,
        cache: None,
        skipped_devices: 0,
    };
    let mut archive = tar::Archive::new(reader);
    {
        let entries = archive
            .entries()
            .map_err(|source| UnpackError::Archive { source })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| UnpackError::Archive { source })?;
            extractor.entry(&mut entry)?;
        }
    }
    extractor.finish()?;
    Ok(archive.into_inner())
}

/// Ownership, permissions and mtime of an entry (pax overrides applied).
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

struct Extractor {
    root: OwnedFd,
    privileged: bool,
    /// Directories whose mode and mtime are applied at the end (writing children would
    /// change the mtime, and a read-only mode would block them).
    dirs: BTreeMap<Vec<OsString>, Meta>,
    root_meta: Option<Meta>,
    /// The last parent directory opened, reused while nothing has been removed.
    cache: Option<(Vec<OsString>, OwnedFd)>,
    skipped_devices: usize,
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

/// Splits an archive path into normal components, rejecting `..` and absolute paths.
fn clean_path(raw: &[u8]) -> Result<Vec<OsString>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let mut out = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains a '..' component".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path would escape the layer".into());
            }
        }
    }
    Ok(out)
}

fn display(comps: &[OsString]) -> String {
    let p: PathBuf = comps.iter().collect();
    p.display().to_string()
}

fn timestamps(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

impl Extractor {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_path(&raw).map_err(|reason| UnpackError::Unsafe {
            entry: name.clone(),
            reason,
        })?;
        let (meta, xattrs) = read_meta(entry).map_err(|source| UnpackError::Entry {
            entry: name.clone(),
            op: "reading header",
            source,
        })?;

        let Some((file_name, parent_comps)) = comps.split_last() else {
            // "./": the layer root itself.
            if kind != EntryType::Directory {
                return Err(UnpackError::Unsafe {
                    entry: name,
                    reason: "non-directory entry names the layer root".into(),
                });
            }
            self.root_meta = Some(meta);
            let root = self.root.try_clone().map_err(|source| UnpackError::Entry {
                entry: name.clone(),
                op: "duplicating root descriptor",
                source,
            })?;
            self.set_owner(&root, meta, &name)?;
            self.set_xattrs(&root, &xattrs, &name);
            return Ok(());
        };
        let file_name = file_name.clone();
        let parent_comps = parent_comps.to_vec();

        // Whiteouts.
        if let Some(hidden) = file_name
            .as_bytes()
            .strip_prefix(WHITEOUT_PREFIX.as_bytes())
        {
            let parent = self.open_parent(&parent_comps, &name)?;
            if file_name == WHITEOUT_OPAQUE {
                return rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(|e| self.privilege_error(name, "marking a directory opaque", e));
            }
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other `.wh..wh.*` names are aufs bookkeeping with no meaning here.
                return Ok(());
            }
            if hidden.is_empty() {
                return Err(UnpackError::Unsafe {
                    entry: name,
                    reason: "whiteout without a name".into(),
                });
            }
            let hidden = OsStr::from_bytes(hidden);
            self.remove_existing(&parent, hidden, false, &name)?;
            rustix::fs::mknodat(
                &parent,
                hidden,
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| self.privilege_error(name.clone(), "creating an overlayfs whiteout", e))?;
            return Ok(());
        }

        let parent = self.open_parent(&parent_comps, &name)?;
        let io_err = |op: &'static str| {
            let name = name.clone();
            move |e: Errno| UnpackError::Entry {
                entry: name,
                op,
                source: e.into(),
            }
        };
        match kind {
            EntryType::Directory => {
                let existing = stat_nofollow(&parent, &file_name).map_err(io_err("stat"))?;
                if !matches!(existing, Some(FileType::Directory)) {
                    if existing.is_some() {
                        self.remove_existing(&parent, &file_name, false, &name)?;
                    }
                    rustix::fs::mkdirat(&parent, &file_name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("creating directory"))?;
                }
                let dir =
                    open_dir_nofollow(&parent, &file_name).map_err(io_err("opening directory"))?;
                self.set_owner(&dir, meta, &name)?;
                self.set_xattrs(&dir, &xattrs, &name);
                let mut key = parent_comps;
                key.push(file_name);
                self.dirs.insert(key, meta);
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(&parent, &file_name, false, &name)?;
                let fd = rustix::fs::openat(
                    &parent,
                    &file_name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(io_err("creating file"))?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(|source| UnpackError::Entry {
                    entry: name.clone(),
                    op: "extracting file data",
                    source,
                })?;
                self.set_owner(&file, meta, &name)?;
                rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode))
                    .map_err(io_err("setting mode"))?;
                self.set_xattrs(&file, &xattrs, &name);
                rustix::fs::futimens(&file, &timestamps(meta.mtime))
                    .map_err(io_err("setting mtime"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() || target.contains(&0) {
                    return Err(UnpackError::Unsafe {
                        entry: name,
                        reason: "symbolic link with an empty or invalid target".into(),
                    });
                }
                self.remove_existing(&parent, &file_name, false, &name)?;
                rustix::fs::symlinkat(target.as_slice(), &parent, &file_name)
                    .map_err(io_err("creating symbolic link"))?;
                if self.privileged {
                    rustix::fs::chownat(
                        &parent,
                        &file_name,
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("setting owner"))?;
                }
                rustix::fs::utimensat(
                    &parent,
                    &file_name,
                    &timestamps(meta.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err("setting mtime"))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_comps = clean_path(&target).map_err(|reason| UnpackError::Unsafe {
                    entry: name.clone(),
                    reason: format!(
                        "hard link target {:?}: {reason}",
                        String::from_utf8_lossy(&target)
                    ),
                })?;
                let Some((target_name, target_parent)) = target_comps.split_last() else {
                    return Err(UnpackError::Unsafe {
                        entry: name,
                        reason: "hard link to the layer root".into(),
                    });
                };
                if target_comps.len() == parent_comps.len() + 1
                    && target_parent == parent_comps.as_slice()
                    && *target_name == file_name
                {
                    return Ok(());
                }
                let outside = || UnpackError::Unsafe {
                    entry: name.clone(),
                    reason: format!(
                        "hard link target {:?} is not a file unpacked earlier in this layer",
                        display(&target_comps)
                    ),
                };
                let target_dir = self
                    .walk(target_parent, false, &name)
                    .map_err(|e| match e {
                        UnpackError::Entry { .. } => outside(),
                        other => other,
                    })?;
                match stat_nofollow(&target_dir, target_name).map_err(io_err("stat"))? {
                    None | Some(FileType::Directory) => return Err(outside()),
                    Some(_) => {}
                }
                self.remove_existing(&parent, &file_name, false, &name)?;
                // Flags 0: a symlink target is linked itself, never followed.
                rustix::fs::linkat(
                    &target_dir,
                    target_name,
                    &parent,
                    &file_name,
                    AtFlags::empty(),
                )
                .map_err(io_err("creating hard link"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let file_type = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if file_type != FileType::Fifo && !self.privileged {
                    self.skipped_devices += 1;
                    tracing::warn!(entry = %name, "not root: skipping device node");
                    return Ok(());
                }
                let major = entry
                    .header()
                    .device_major()
                    .map_err(|source| UnpackError::Entry {
                        entry: name.clone(),
                        op: "reading device major",
                        source,
                    })?
                    .unwrap_or(0);
                let minor = entry
                    .header()
                    .device_minor()
                    .map_err(|source| UnpackError::Entry {
                        entry: name.clone(),
                        op: "reading device minor",
                        source,
                    })?
                    .unwrap_or(0);
                self.remove_existing(&parent, &file_name, false, &name)?;
                rustix::fs::mknodat(
                    &parent,
                    &file_name,
                    file_type,
                    Mode::from_raw_mode(meta.mode & 0o777),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| self.privilege_error(name.clone(), "creating a device node", e))?;
                if self.privileged {
                    rustix::fs::chownat(
                        &parent,
                        &file_name,
                        Some(rustix::fs::Uid::from_raw(meta.uid)),
                        Some(rustix::fs::Gid::from_raw(meta.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io_err("setting owner"))?;
                }
                // mknod applies the umask; nothing else writes this private directory, and
                // the node was just created (not a symlink), so chmodat cannot be redirected.
                rustix::fs::chmodat(
                    &parent,
                    &file_name,
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(io_err("setting mode"))?;
                rustix::fs::utimensat(
                    &parent,
                    &file_name,
                    &timestamps(meta.mtime),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err("setting mtime"))?;
            }
            other => {
                return Err(UnpackError::Unsafe {
                    entry: name,
                    reason: format!("unsupported tar entry type {other:?}"),
                });
            }
        }
        Ok(())
    }

    fn privilege_error(&self, entry: String, what: &'static str, e: Errno) -> UnpackError {
        if e == Errno::PERM && !self.privileged {
            UnpackError::NeedsRoot {
                entry,
                what,
                source: e.into(),
            }
        } else {
            UnpackError::Entry {
                entry,
                op: what,
                source: e.into(),
            }
        }
    }

    fn set_owner(&self, fd: impl AsFd, meta: Meta, entry: &str) -> Result<()> {
        if !self.privileged {
            return Ok(());
        }
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(|e| UnpackError::Entry {
            entry: entry.to_owned(),
            op: "setting owner",
            source: e.into(),
        })
    }

    fn set_xattrs(&self, fd: impl AsFd, xattrs: &[(String, Vec<u8>)], entry: &str) {
        for (key, value) in xattrs {
            if key.starts_with("trusted.overlay.") || key.starts_with("user.overlay.") {
                // Overlay metadata from an image could redirect lookups between layers.
                tracing::warn!(entry, xattr = %key, "ignoring overlayfs xattr from the archive");
                continue;
            }
            if let Err(e) = rustix::fs::fsetxattr(&fd, key.as_str(), value, XattrFlags::empty()) {
                tracing::warn!(entry, xattr = %key, error = %e, "could not set xattr");
            }
        }
    }

    /// Opens the parent directory of an entry, creating missing directories (0755).
    fn open_parent(&mut self, comps: &[OsString], entry: &str) -> Result<OwnedFd> {
        if let Some((cached, fd)) = &self.cache
            && cached.as_slice() == comps
        {
            return fd.try_clone().map_err(|source| UnpackError::Entry {
                entry: entry.to_owned(),
                op: "duplicating directory descriptor",
                source,
            });
        }
        let fd = self.walk(comps, true, entry)?;
        let keep = fd.try_clone().map_err(|source| UnpackError::Entry {
            entry: entry.to_owned(),
            op: "duplicating directory descriptor",
            source,
        })?;
        self.cache = Some((comps.to_vec(), keep));
        Ok(fd)
    }

    /// Walks `comps` from the layer root opening each directory with `O_NOFOLLOW`; a symlink
    /// or non-directory on the way is an error.
    fn walk(&self, comps: &[OsString], create: bool, entry: &str) -> Result<OwnedFd> {
        let mut cur = self.root.try_clone().map_err(|source| UnpackError::Entry {
            entry: entry.to_owned(),
            op: "duplicating root descriptor",
            source,
        })?;
        for (i, c) in comps.iter().enumerate() {
            let next = match open_dir_nofollow(&cur, c) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => {
                            return Err(UnpackError::Entry {
                                entry: entry.to_owned(),
                                op: "creating parent directory",
                                source: errno_io(e),
                            });
                        }
                    }
                    open_dir_nofollow(&cur, c)
                }
                other => other,
            };
            cur = match next {
                Ok(fd) => fd,
                Err(Errno::LOOP) => {
                    return Err(UnpackError::Unsafe {
                        entry: entry.to_owned(),
                        reason: format!(
                            "parent {:?} is a symbolic link; refusing to write through it",
                            display(&comps[..=i])
                        ),
                    });
                }
                Err(Errno::NOTDIR) => {
                    return Err(UnpackError::Unsafe {
                        entry: entry.to_owned(),
                        reason: format!("parent {:?} is not a directory", display(&comps[..=i])),
                    });
                }
                Err(e) => {
                    return Err(UnpackError::Entry {
                        entry: entry.to_owned(),
                        op: "opening parent directory",
                        source: errno_io(e),
                    });
                }
            };
        }
        Ok(cur)
    }

    /// Removes whatever exists at `name` in `parent` (recursively for a directory unless
    /// `keep_dir`), without following symlinks.
    fn remove_existing(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        keep_dir: bool,
        entry: &str,
    ) -> Result<()> {
        let err = |source: Errno| UnpackError::Entry {
            entry: entry.to_owned(),
            op: "removing existing entry",
            source: source.into(),
        };
        match stat_nofollow(parent, name).map_err(err)? {
            None => return Ok(()),
            Some(FileType::Directory) if keep_dir => return Ok(()),
            Some(FileType::Directory) => remove_all_at(parent, name).map_err(err)?,
            Some(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(err)?,
        }
        // A removed directory may have been (an ancestor of) the cached parent.
        self.cache = None;
        Ok(())
    }

    /// Applies deferred directory modes and mtimes, and the root's metadata.
    fn finish(self) -> Result<()> {
        for (comps, meta) in self.dirs.iter().rev() {
            let entry = display(comps);
            let dir = match self.walk(comps, false, &entry) {
                Ok(d) => d,
                // Replaced by a later entry: that entry's metadata already applies.
                Err(UnpackError::Unsafe { .. } | UnpackError::Entry { .. }) => continue,
                Err(e) => return Err(e),
            };
            let e = |op: &'static str| {
                let entry = entry.clone();
                move |source: Errno| UnpackError::Entry {
                    entry,
                    op,
                    source: source.into(),
                }
            };
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode)).map_err(e("setting mode"))?;
            rustix::fs::futimens(&dir, &timestamps(meta.mtime)).map_err(e("setting mtime"))?;
        }
        let (mode, mtime) = match self.root_meta {
            Some(m) => (m.mode, Some(m.mtime)),
            None => (0o755, None),
        };
        let e = |op: &'static str| {
            move |source: Errno| UnpackError::Entry {
                entry: "./".into(),
                op,
                source: source.into(),
            }
        };
        rustix::fs::fchmod(&self.root, Mode::from_raw_mode(mode)).map_err(e("setting mode"))?;
        if let Some(mtime) = mtime {
            rustix::fs::futimens(&self.root, &timestamps(mtime)).map_err(e("setting mtime"))?;
        }
        if self.skipped_devices > 0 {
            tracing::warn!(
                count = self.skipped_devices,
                "device nodes skipped (not root)"
            );
        }
        Ok(())
    }
}

fn open_dir_nofollow(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn stat_nofollow(dir: impl AsFd, name: &OsStr) -> rustix::io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the directory `name` in `parent` and everything below it, never following a
/// symlink (each level is opened with `O_NOFOLLOW` relative to its parent).
fn remove_all_at(parent: impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    let dir = open_dir_nofollow(&parent, name)?;
    let mut children = Vec::new();
    for item in rustix::fs::Dir::read_from(&dir)? {
        let item = item?;
        let child = item.file_name().to_bytes();
        if child == b"." || child == b".." {
            continue;
        }
        children.push(OsStr::from_bytes(child).to_owned());
    }
    for child in children {
        match stat_nofollow(&dir, &child)? {
            Some(FileType::Directory) => remove_all_at(&dir, &child)?,
            Some(_) => rustix::fs::unlinkat(&dir, &child, AtFlags::empty())?,
            None => {}
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

type Xattrs = Vec<(String, Vec<u8>)>;

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<(Meta, Xattrs)> {
    let header = entry.header();
    // Blank numeric fields read as 0, as Go's archive/tar (which built most images) does.
    let mut meta = Meta {
        mode: header.mode()? & 0o7777,
        uid: header
            .uid()
            .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        gid: header
            .gid()
            .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        mtime: header.mtime().map_or(0, |v| i64::try_from(v).unwrap_or(0)),
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            let number = || {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.split('.').next())
                    .and_then(|v| v.parse::<i64>().ok())
            };
            match key {
                "uid" => {
                    if let Some(v) = number().and_then(|v| u32::try_from(v).ok()) {
                        meta.uid = v;
                    }
                }
                "gid" => {
                    if let Some(v) = number().and_then(|v| u32::try_from(v).ok()) {
                        meta.gid = v;
                    }
                }
                "mtime" => {
                    if let Some(v) = number() {
                        meta.mtime = v;
                    }
                }
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_owned(), value.to_vec()));
                    }
                }
            }
        }
    }
    Ok((meta, xattrs))
}

/// A temporary directory that is removed (with [`remove_tree`]) unless disarmed.
struct TempTree {
    path: PathBuf,
    armed: bool,
}

impl TempTree {
    fn new(parent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(parent)
            .map_err(|source| UnpackError::Io {
                op: "creating temporary layer directory in",
                path: parent.to_owned(),
                source,
            })?;
        Ok(Self {
            path: dir.keep(),
            armed: true,
        })
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temporary layer directory");
        }
    }
}

/// Removes a directory tree without following symlinks; when not root, directories unpacked
/// read-only are made writable first.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    for child in fs::read_dir(path)? {
        make_dirs_writable(&child?.path())?;
    }
    Ok(())
}
