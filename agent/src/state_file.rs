//! The agent's persisted desired state: one JSON file per store under the state directory,
//! with a `format` version, written atomically and only when its bytes change.

use std::path::{Path, PathBuf};

/// What went wrong with a state file: the operation, the file and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {detail}")]
pub struct StateFileError {
    pub op: &'static str,
    pub path: PathBuf,
    pub detail: String,
}

/// A state file and the bytes last written to it.
pub struct StateFile {
    path: PathBuf,
    saved: Vec<u8>,
}

/// A persisted state with a format version.
pub trait Versioned: Default + serde::Serialize + serde::de::DeserializeOwned {
    /// The format this build writes and reads.
    const FORMAT: u32;
    fn format(&self) -> u32;
    /// A new, empty state of the current format.
    fn empty() -> Self;
}

impl StateFile {
    /// Reads the state at `path` (an empty one when there is no file yet). A file that does
    /// not parse or has another format is an error: the agent refuses to start rather than
    /// forget what was asked of it.
    pub fn open<T: Versioned>(
        path: &Path,
        what: &'static str,
    ) -> Result<(Self, T), StateFileError> {
        let err = |op, detail: String| StateFileError {
            op,
            path: path.to_owned(),
            detail,
        };
        let state: T = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(what, e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::empty(),
            Err(e) => return Err(err("reading", e.to_string())),
        };
        if state.format() != T::FORMAT {
            return Err(err(what, format!("unknown format {}", state.format())));
        }
        Ok((
            Self {
                path: path.to_owned(),
                saved: Vec::new(),
            },
            state,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `state` atomically when it differs from what was last written.
    pub fn save<T: serde::Serialize>(&mut self, state: &T) -> Result<(), StateFileError> {
        let err = |op, e: &dyn std::fmt::Display| StateFileError {
            op,
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let bytes = serde_json::to_vec(state).map_err(|e| err("serializing", &e))?;
        if bytes == self.saved {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", &e))?;
        }
        berth_runtime::state::write_atomic(&self.path, &bytes).map_err(|e| err("saving", &e))?;
        self.saved = bytes;
        Ok(())
    }
}
