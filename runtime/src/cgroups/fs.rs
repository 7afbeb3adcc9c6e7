//! cgroupfs file access: every read, write, mkdir and rmdir of the module goes through here,
//! so errors always carry the path and value.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt as _;
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
    // A container's cgroup rarely has children: try the rmdir alone first and list the
    // directory only when it fails (EBUSY for children or tasks; any other error comes back
    // below with its path).
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let Some(entries) = read_dir_if_present(dir)? else {
        return Ok(());
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
    let Some(entries) = read_dir_if_present(dir)? else {
        return Ok(());
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
pub(crate) fn wait_until(timeout: Duration, done: impl FnMut() -> Result<bool>) -> Result<bool> {
    wait_until_woken(timeout, None, done)
}

/// [`wait_until`], where each pause also ends as soon as the kernel reports a change in `events`,
/// a cgroup v2 `cgroup.events` (`populated` and `frozen` live there): the wait for a cgroup to
/// empty or freeze then ends when it happens instead of at the next multiple of the pause. The
/// pauses stay as a bound for what the file does not announce (a v1 hierarchy's tasks). A file
/// that cannot be opened or read leaves the plain pauses.
pub(crate) fn wait_until_woken(
    timeout: Duration,
    events: Option<&Path>,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let mut events = events.and_then(|path| fs::File::open(path).ok());
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        // kernfs flags POLLPRI for a change made after this file's last read: reading before
        // `done` means a change between `done` and the poll still ends the poll at once.
        if let Some(file) = &events
            && file.read_at(&mut [0u8; 256], 0).is_err()
        {
            events = None;
        }
        if done()? {
            return Ok(true);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Ok(false);
        }
        let wait = pause.min(timeout - elapsed);
        match &events {
            Some(file) => wait_for_priority_event(file, wait),
            None => thread::sleep(wait),
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Blocks until `file` reports POLLPRI (or POLLERR), at most `wait`; an interrupted poll just
/// returns early, the caller re-checks.
fn wait_for_priority_event(file: &fs::File, wait: Duration) {
    use std::os::fd::AsFd as _;
    let _ = crate::poll::poll_one(file.as_fd(), libc::POLLPRI, wait);
}

/// `read_dir`, with a directory that is already gone as `None` (cgroups vanish concurrently).
fn read_dir_if_present(dir: &Path) -> Result<Option<fs::ReadDir>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Some(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::ReadDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn rmdir_all_removes_nested_cgroups_and_accepts_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("c1");
        fs::create_dir_all(leaf.join("sub/deeper")).unwrap();
        fs::create_dir_all(leaf.join("other")).unwrap();
        rmdir_all(&leaf).unwrap();
        assert!(!leaf.exists());
        rmdir_all(&leaf).unwrap();
        // A directory that cannot be removed is an error naming it.
        let busy = tmp.path().join("c2");
        fs::create_dir(&busy).unwrap();
        fs::write(busy.join("not-an-interface-file"), "").unwrap();
        let err = rmdir_all(&busy).unwrap_err();
        assert!(matches!(err, Error::Rmdir { .. }), "{err:?}");
    }

    #[test]
    fn woken_wait_checks_until_done_or_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let events = tmp.path().join("cgroup.events");
        fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
        // A regular file never reports POLLPRI: the pauses alone pace the checks.
        let mut checks = 0;
        let done = wait_until_woken(Duration::from_secs(60), Some(&events), || {
            checks += 1;
            Ok(checks == 3)
        })
        .unwrap();
        assert!(done);
        assert_eq!(checks, 3);
        // Never done: false once the timeout passes, after at least one check.
        checks = 0;
        let done = wait_until_woken(Duration::from_millis(5), Some(&events), || {
            checks += 1;
            Ok(false)
        })
        .unwrap();
        assert!(!done);
        assert!(checks >= 1);
        // No events file (a cgroup already gone): plain pauses, same answers.
        let missing = tmp.path().join("gone/cgroup.events");
        assert!(wait_until_woken(Duration::from_secs(60), Some(&missing), || Ok(true)).unwrap());
        // An error from the check is returned as is.
        let err = wait_until(Duration::from_secs(60), || {
            Err(Error::Parse {
                path: events.clone(),
                content: "x".into(),
            })
        })
        .unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{err:?}");
    }
}
