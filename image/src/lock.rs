//! Advisory file locks (`flock`) shared by every `berth` process using a store.
//!
//! Each lock opens its own file description, so two threads of one process exclude each other
//! exactly as two processes do. The lock is released when the guard drops (or the process dies).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{op} lock file {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

/// A held lock; dropping it unlocks.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until an exclusive lock on `path` is held.
    pub fn exclusive(path: &Path) -> Result<Self> {
        let file = open(path)?;
        file.lock().map_err(|source| LockError::Io {
            op: "locking (exclusive)",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { file })
    }

    /// Blocks until a shared lock on `path` is held.
    pub fn shared(path: &Path) -> Result<Self> {
        let file = open(path)?;
        file.lock_shared().map_err(|source| LockError::Io {
            op: "locking (shared)",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self { file })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Io {
            op: "opening",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn exclusive_excludes_other_descriptors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("x.lock");
        let held = FileLock::exclusive(&path).expect("lock");
        let acquired = Arc::new(AtomicBool::new(false));
        let t = {
            let acquired = acquired.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let _l = FileLock::shared(&path).expect("shared");
                acquired.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !acquired.load(Ordering::SeqCst),
            "shared lock granted while exclusive held"
        );
        drop(held);
        t.join().expect("thread");
        assert!(acquired.load(Ordering::SeqCst));
        // Two shared locks coexist.
        let _a = FileLock::shared(&path).expect("a");
        let _b = FileLock::shared(&path).expect("b");
    }
}
