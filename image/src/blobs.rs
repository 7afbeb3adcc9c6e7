//! Content-addressed blobs under `blobs/sha256/<hex>`.
//!
//! Writes stream into a temporary file in the same directory while hashing, are checked against
//! the expected digest and size, synced, then renamed into place: a blob file that exists is
//! complete. Reads are never trusted blindly: [`BlobStore::read`] re-hashes, and layer unpacking
//! hashes the blob as it streams it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, DigestError, FinishError, HashingReader};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {digest} is missing ({path})")]
    Missing { digest: Digest, path: PathBuf },
    #[error("blob {digest} is corrupted ({path}): {source}")]
    Corrupted {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: DigestError,
    },
    #[error("blob {digest} is larger than the {limit} bytes allowed for its kind")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("content for blob {expected} failed verification, nothing stored: {source}")]
    Verify {
        expected: Digest,
        #[source]
        source: DigestError,
    },
    #[error("{op} blob {what} in {path}: {source}")]
    Io {
        op: &'static str,
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = BlobError> = std::result::Result<T, E>;

/// Prefix of in-flight temporary files; never a valid digest, so listings skip them.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// The blob directory of one store (`<root>/blobs/sha256`).
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens (creating when missing) the blob directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| BlobError::Io {
            op: "creating",
            what: "directory".into(),
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// Where the blob `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether a blob file exists for `digest` (its content is checked when it is read).
    pub fn contains(&self, digest: &Digest) -> bool {
        fs::symlink_metadata(self.path(digest)).is_ok_and(|m| m.is_file())
    }

    /// Streams `reader` into the store, hashing as it goes. With `expected`, the content must
    /// hash to that digest (and have `size` bytes, when given), else nothing is stored.
    /// Returns the digest and size of what was stored.
    pub fn write(
        &self,
        reader: impl Read,
        expected: Option<&Digest>,
        size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        let what = expected.map_or_else(|| "(new)".to_owned(), Digest::to_string);
        let io_err = |op: &'static str, path: &Path, source: io::Error| BlobError::Io {
            op,
            what: what.clone(),
            path: path.to_owned(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|e| io_err("creating temporary file for", &self.dir, e))?;
        let mut hashing = match expected {
            Some(d) => HashingReader::verifying(reader, d.clone(), size),
            None => HashingReader::new(reader),
        };
        if let Err(e) = io::copy(&mut hashing, tmp.as_file_mut()) {
            // A size overrun surfaces as an io error carrying a DigestError.
            if let Some(expected) = expected
                && let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<DigestError>())
            {
                return Err(BlobError::Verify {
                    expected: expected.clone(),
                    source: inner.clone(),
                });
            }
            return Err(io_err("writing", tmp.path(), e));
        }
        let (digest, size, _) = hashing.finish().map_err(|e| match (e, expected) {
            (FinishError::Digest(source), Some(expected)) => BlobError::Verify {
                expected: expected.clone(),
                source,
            },
            (FinishError::Digest(source), None) => {
                io_err("verifying", &self.dir, io::Error::other(source))
            }
            (FinishError::Io(source), _) => io_err("reading content for", &self.dir, source),
        })?;
        tmp.as_file_mut()
            .flush()
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| io_err("syncing", tmp.path(), e))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(|e| io_err("setting mode of", tmp.path(), e))?;
        let dest = self.path(&digest);
        tmp.persist(&dest)
            .map_err(|e| io_err("renaming into place", &dest, e.error))?;
        sync_dir(&self.dir).map_err(|e| io_err("syncing directory of", &self.dir, e))?;
        Ok((digest, size))
    }

    /// Stores `bytes` and returns their digest.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        if !self.contains(&digest) {
            self.write(bytes, Some(&digest), Some(bytes.len() as u64))?;
        }
        Ok(digest)
    }

    /// Opens the raw blob file. Callers that consume it must verify it (e.g. through
    /// [`HashingReader::verifying`]).
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let path = self.path(digest);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                BlobError::Missing {
                    digest: digest.clone(),
                    path,
                }
            } else {
                BlobError::Io {
                    op: "opening",
                    what: digest.to_string(),
                    path,
                    source,
                }
            }
        })
    }

    /// Reads a whole blob of at most `limit` bytes and checks its digest.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let file = self.open(digest)?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| BlobError::Io {
                op: "reading",
                what: digest.to_string(),
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > limit {
            return Err(BlobError::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        let actual = Digest::of_bytes(&bytes);
        if &actual != digest {
            return Err(BlobError::Corrupted {
                digest: digest.clone(),
                path,
                source: DigestError::Mismatch {
                    expected: digest.clone(),
                    actual,
                },
            });
        }
        Ok(bytes)
    }

    /// Re-hashes a stored blob (and checks its size when given).
    pub fn verify(&self, digest: &Digest, size: Option<u64>) -> Result<()> {
        let path = self.path(digest);
        let file = self.open(digest)?;
        HashingReader::verifying(file, digest.clone(), size)
            .finish()
            .map(|_| ())
            .map_err(|e| match e {
                FinishError::Digest(source) => BlobError::Corrupted {
                    digest: digest.clone(),
                    path,
                    source,
                },
                FinishError::Io(source) => BlobError::Io {
                    op: "reading",
                    what: digest.to_string(),
                    path,
                    source,
                },
            })
    }

    /// Every stored blob (temporary files excluded).
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|source| BlobError::Io {
            op: "listing",
            what: "directory".into(),
            path: self.dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| BlobError::Io {
                op: "listing",
                what: "directory".into(),
                path: self.dir.clone(),
                source,
            })?;
            if let Some(name) = entry.file_name().to_str()
                && let Ok(d) = Digest::from_hex(name)
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a blob; true when it existed.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BlobError::Io {
                op: "removing",
                what: digest.to_string(),
                path,
                source,
            }),
        }
    }

    /// Deletes temporary files left by interrupted writes. Only safe while no write is in
    /// flight (the store calls it under its exclusive GC lock).
    pub(crate) fn remove_temporaries(&self) -> Result<usize> {
        let mut removed = 0;
        let entries = fs::read_dir(&self.dir).map_err(|source| BlobError::Io {
            op: "listing",
            what: "directory".into(),
            path: self.dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| BlobError::Io {
                    op: "removing temporary",
                    what: path.display().to_string(),
                    path: path.clone(),
                    source,
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// fsync a directory so a rename inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_verifies_and_stores() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(tmp.path().join("sha256")).expect("open");
        let data = b"layer bytes";
        let d = Digest::of_bytes(data);
        let (got, n) = store.write(&data[..], Some(&d), Some(11)).expect("write");
        assert_eq!((got.clone(), n), (d.clone(), 11));
        assert!(store.contains(&d));
        assert_eq!(store.read(&d, 1024).expect("read"), data);
        assert_eq!(store.list().expect("list"), vec![d.clone()]);
        store.verify(&d, Some(11)).expect("verify");
        assert!(matches!(
            store.verify(&d, Some(12)),
            Err(BlobError::Corrupted { .. })
        ));
    }

    #[test]
    fn bad_digest_stores_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("sha256");
        let store = BlobStore::new(&dir).expect("open");
        let claimed = Digest::of_bytes(b"what the manifest says");
        let err = store
            .write(&b"what the server sent"[..], Some(&claimed), None)
            .expect_err("mismatch must fail");
        assert!(matches!(err, BlobError::Verify { .. }), "{err}");
        assert!(err.to_string().contains(claimed.as_str()), "{err}");
        assert!(entries(&dir).is_empty(), "left behind: {:?}", entries(&dir));

        // A size overrun is cut off while streaming, and also leaves nothing.
        let err = store
            .write(&[0u8; 4096][..], Some(&claimed), Some(10))
            .expect_err("overrun must fail");
        assert!(
            err.to_string().contains("exceeds its declared size"),
            "{err}"
        );
        assert!(entries(&dir).is_empty());
    }

    #[test]
    fn corrupted_blob_is_an_error_naming_the_digest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(tmp.path()).expect("open");
        let d = store.write_bytes(b"{\"a\":1}").expect("write");
        fs::write(store.path(&d), b"{\"a\":2}").expect("corrupt");
        let err = store.read(&d, 1024).expect_err("corrupted");
        assert!(matches!(err, BlobError::Corrupted { .. }));
        assert!(err.to_string().contains(d.as_str()), "{err}");
        let missing = Digest::of_bytes(b"nope");
        let err = store.read(&missing, 1024).expect_err("missing");
        assert!(matches!(err, BlobError::Missing { .. }));
        assert!(err.to_string().contains(missing.as_str()), "{err}");
    }
}
