//! An exclusive `flock(2)` on a file, released when dropped (or when the holder dies, so a
//! crashed `berth run` never leaves the lease file locked).

use std::{
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

pub(crate) struct FileLock {
    // Closing the descriptor releases the lock.
    _file: File,
}

impl FileLock {
    /// Blocks until this process holds the lock on `path` (created if missing). Each call opens
    /// its own descriptor, so two threads of one process exclude each other too.
    pub(crate) fn exclusive(path: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}
