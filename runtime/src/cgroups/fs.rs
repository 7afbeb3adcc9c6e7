//! cgroupfs file access: every read, write, mkdir and rmdir of the module goes through here,
//! so errors always carry the path and value.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::error::{Error, Result};

/// Writes `value` to the interface file `dir/file` in one `write(2)`, as the kernel expects.
///
/// The file is opened without `O_CREAT`: a missing interface file means the controller is not
/// there, which must be an error rather than a new regular file.
pub(crate) fn write(controller: &'static str, dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    write_path(controller, &path, value)
}

/// [`write`] with the file's full path.
pub(crate) fn write_path(controller: &'static str, path: &Path, value: &str) -> Result<()> {
    tracing::debug!(path = %path.display(), value, "cgroup write");
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| Error::Write {
            controller,
            path: path.to_path_buf(),
            value: value.to_owned(),
            source,
        })
}

/// Reads an interface file, trimmed of its trailing newline.
pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim_end().to_owned())
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reads an interface file, `None` when it does not exist (controller absent or cgroup gone).
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim_end().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses a single-number interface file; "max" (v2) is `None`.
pub(crate) fn parse_u64_or_max(path: &Path, content: &str) -> Result<Option<u64>> {
    if content == "max" {
        return Ok(None);
    }
    content.parse().map(Some).map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        content: content.to_owned(),
    })
}

/// Reads a single-number interface file: `None` when absent or "max".
pub(crate) fn read_u64_optional(path: &Path) -> Result<Option<u64>> {
    match read_optional(path)? {
        Some(content) => parse_u64_or_max(path, &content),
        None => Ok(None),
    }
}

/// Looks a key up in a flat-keyed file such as `cpu.stat` or `cgroup.events` ("key value" lines).
pub(crate) fn flat_keyed(path: &Path, content: &str, key: &str) -> Result<Option<u64>> {
    for line in content.lines() {
        let mut it = line.split_whitespace();
        if it.next() == Some(key) {
            return match it.next().map(str::parse) {
                Some(Ok(v)) => Ok(Some(v)),
                _ => Err(Error::Parse {
                    path: path.to_path_buf(),
                    content: line.to_owned(),
                }),
            };
        }
    }
    Ok(None)
}

/// `mkdir -p root/rel`; existing directories are fine. Returns `root/rel`.
pub(crate) fn mkdir_all(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for comp in rel.components() {
        dir.push(comp);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(Error::Mkdir { path: dir, source }),
        }
    }
    Ok(dir)
}

/// `root`, `root/a`, `root/a/b`, … `root/rel`: the chain from a hierarchy root to a cgroup.
pub(crate) fn chain(root: &Path, rel: &Path) -> Vec<PathBuf> {
    let mut dir = root.to_path_buf();
    let mut out = vec![dir.clone()];
    for comp in rel.components() {
        dir.push(comp);
        out.push(dir.clone());
    }
    out
}

/// How often and how long [`rmdir_all`] retries a busy cgroup.
const RMDIR_ATTEMPTS: u32 = 40;

/// Removes a cgroup directory and every child cgroup below it (depth first).
///
/// Interface files are not real files: `rmdir` on a cgroup succeeds with them present, and fails
/// with EBUSY while a process (or a dying one) is still inside, so EBUSY is retried with a growing
/// pause, about 3 s in total. A directory that is already gone is not an error.
pub(crate) fn rmdir_all(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            rmdir_all(&entry.path())?;
        }
    }
    let mut pause = Duration::from_millis(5);
    for _ in 0..RMDIR_ATTEMPTS {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(Error::Rmdir {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
    Err(Error::RmdirBusy {
        path: dir.to_path_buf(),
        attempts: RMDIR_ATTEMPTS,
    })
}

/// Collects the pids in `dir/cgroup.procs` and in every child cgroup's, into `out`.
/// A directory that does not exist contributes nothing.
pub(crate) fn collect_procs(dir: &Path, out: &mut BTreeSet<i32>) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let Some(content) = read_optional(&procs)? else {
        return Ok(());
    };
    for line in content.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse().map_err(|_| Error::Parse {
            path: procs.clone(),
            content: line.to_owned(),
        })?;
        out.insert(pid);
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::ReadDir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_procs(&entry.path(), out)?;
        }
    }
    Ok(())
}

/// Writes `pid` to `dir/cgroup.procs`.
pub(crate) fn add_proc(dir: &Path, pid: Pid) -> Result<()> {
    write("cgroup", dir, "cgroup.procs", &pid.as_raw().to_string())
}

/// Polls `done` until it returns true or `timeout` passes; the pause grows from 1 ms to 20 ms.
pub(crate) fn wait_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
