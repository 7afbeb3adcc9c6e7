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
    format: u32,
    saved: Vec<u8>,
}

/// The format version on disk, beside the store's own fields (which ignore it).
#[derive(serde::Deserialize)]
struct Format {
    format: u32,
}

impl StateFile {
    /// Reads the state at `path` (the default one when there is no file yet), written in
    /// format `format`. A file that does not parse or has another format is an error: the
    /// agent refuses to start rather than forget what was asked of it.
    pub fn open<T: Default + serde::de::DeserializeOwned>(
        path: &Path,
        format: u32,
        what: &'static str,
    ) -> Result<(Self, T), StateFileError> {
        let err = |op, detail: String| StateFileError {
            op,
            path: path.to_owned(),
            detail,
        };
        let state: T = match std::fs::read(path) {
            Ok(bytes) => {
                let found: Format =
                    serde_json::from_slice(&bytes).map_err(|e| err(what, e.to_string()))?;
                if found.format != format {
                    return Err(err(what, format!("unknown format {}", found.format)));
                }
                serde_json::from_slice(&bytes).map_err(|e| err(what, e.to_string()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
            Err(e) => return Err(err("reading", e.to_string())),
        };
        Ok((
            Self {
                path: path.to_owned(),
                format,
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
        let mut stored = serde_json::to_value(state).map_err(|e| err("serializing", &e))?;
        if let Some(fields) = stored.as_object_mut() {
            fields.insert("format".into(), self.format.into());
        }
        let bytes = serde_json::to_vec(&stored).map_err(|e| err("serializing", &e))?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        /// Integer map keys are strings in JSON: the round trip must keep them.
        ids: BTreeMap<u32, String>,
    }

    #[test]
    fn round_trips_with_its_format_and_refuses_another() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.json");
        let (mut file, empty) = StateFile::open::<State>(&path, 2, "reading").expect("open");
        assert_eq!(empty, State::default());
        let state = State {
            ids: BTreeMap::from([(256, "a".into())]),
        };
        file.save(&state).expect("save");
        let (_, back) = StateFile::open::<State>(&path, 2, "reading").expect("reopen");
        assert_eq!(back, state);
        let err = StateFile::open::<State>(&path, 3, "reading")
            .err()
            .expect("another format is refused");
        assert!(err.detail.contains("unknown format 2"), "{err}");
    }
}
