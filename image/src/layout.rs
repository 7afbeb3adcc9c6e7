//! OCI image layouts on disk: importing one (a directory, or a tar of one as
//! `skopeo copy … oci-archive:` writes) and exporting an image as one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use crate::blobs::{BlobError, BlobStore};
use crate::digest::{Digest, FinishError, HashingReader};
use crate::reference::ImageRef;
use crate::store::{
    self, ANNOTATION_NAME, ANNOTATION_REF_NAME, Desc, IndexEntry, IndexFile, MAX_MANIFEST_SIZE,
    Source, StoreError,
};
use crate::unpack::Compression;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("oci layout {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("oci layout {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("oci layout {path}: blob {digest}: {source}")]
    Blob {
        path: PathBuf,
        digest: Digest,
        #[source]
        source: Box<BlobError>,
    },
    #[error("oci layout {path}: no image named {wanted:?}; it holds: {available}")]
    NoSuchImage {
        path: PathBuf,
        wanted: String,
        available: String,
    },
}

/// Result alias of this module.
pub type Result<T, E = LayoutError> = std::result::Result<T, E>;

enum Kind {
    /// A layout directory: blobs are read (and verified) from it on demand.
    Dir(PathBuf),
    /// A layout tarball: every blob was streamed (and verified) into the store at open.
    Tar,
}

/// A layout being imported.
pub(crate) struct LayoutSource {
    path: PathBuf,
    blobs: BlobStore,
    kind: Kind,
    index: IndexFile,
}

fn invalid(path: &Path, reason: impl Into<String>) -> LayoutError {
    LayoutError::Invalid {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn check_layout_file(path: &Path, bytes: &[u8]) -> Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OciLayoutFile {
        image_layout_version: String,
    }
    let f: OciLayoutFile = serde_json::from_slice(bytes)
        .map_err(|e| invalid(path, format!("oci-layout is not valid: {e}")))?;
    if !f.image_layout_version.starts_with("1.") {
        return Err(invalid(
            path,
            format!(
                "unsupported imageLayoutVersion {:?}",
                f.image_layout_version
            ),
        ));
    }
    Ok(())
}

fn parse_index(path: &Path, bytes: &[u8]) -> Result<IndexFile> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid(path, format!("index.json is not valid: {e}")))
}

impl LayoutSource {
    /// Opens the layout at `path`. For a tarball, its blobs are streamed into `blobs` now
    /// (each verified against its file name); the caller holds the store's GC lock shared.
    pub(crate) fn open(path: &Path, blobs: &BlobStore) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|source| LayoutError::Io {
            path: path.to_owned(),
            op: "reading",
            source,
        })?;
        if meta.is_dir() {
            let read = |name: &str| {
                fs::read(path.join(name)).map_err(|source| LayoutError::Io {
                    path: path.to_owned(),
                    op: if name == "index.json" {
                        "reading index.json"
                    } else {
                        "reading oci-layout"
                    },
                    source,
                })
            };
            check_layout_file(path, &read("oci-layout")?)?;
            let index = parse_index(path, &read("index.json")?)?;
            return Ok(Self {
                path: path.to_owned(),
                blobs: blobs.clone(),
                kind: Kind::Dir(path.to_owned()),
                index,
            });
        }
        let (layout, index) = read_archive(path, blobs)?;
        check_layout_file(
            path,
            &layout.ok_or_else(|| invalid(path, "archive has no oci-layout file"))?,
        )?;
        let index = parse_index(
            path,
            &index.ok_or_else(|| invalid(path, "archive has no index.json"))?,
        )?;
        Ok(Self {
            path: path.to_owned(),
            blobs: blobs.clone(),
            kind: Kind::Tar,
            index,
        })
    }

    /// The top-level descriptor for `wanted`: the only one, or the one whose ref name
    /// annotation is `wanted`'s tag or full name.
    pub(crate) fn select(&self, wanted: &ImageRef) -> Result<Desc, StoreError> {
        let manifests = &self.index.manifests;
        let chosen: Vec<&IndexEntry> = if manifests.len() == 1 {
            manifests.iter().collect()
        } else {
            let name = wanted.name();
            manifests
                .iter()
                .filter(|e| {
                    [ANNOTATION_REF_NAME, ANNOTATION_NAME].iter().any(|k| {
                        e.annotations
                            .get(*k)
                            .is_some_and(|v| Some(v.as_str()) == wanted.tag() || *v == name)
                    })
                })
                .collect()
        };
        match chosen.as_slice() {
            [one] => Ok(Desc {
                media_type: one.media_type.clone(),
                digest: one.digest.clone(),
                size: one.size,
            }),
            _ => Err(LayoutError::NoSuchImage {
                path: self.path.clone(),
                wanted: wanted.tag().unwrap_or_default().to_owned(),
                available: if manifests.is_empty() {
                    "no images".to_owned()
                } else {
                    manifests
                        .iter()
                        .map(|e| {
                            e.annotations
                                .get(ANNOTATION_REF_NAME)
                                .cloned()
                                .unwrap_or_else(|| e.digest.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }
            .into()),
        }
    }

    fn blob_path(&self, dir: &Path, digest: &Digest) -> PathBuf {
        dir.join("blobs").join("sha256").join(digest.hex())
    }
}

impl Source for LayoutSource {
    fn manifest(&mut self, desc: &Desc) -> Result<Vec<u8>, StoreError> {
        if desc.size > MAX_MANIFEST_SIZE {
            return Err(invalid(
                &self.path,
                format!(
                    "manifest {} is larger than {MAX_MANIFEST_SIZE} bytes",
                    desc.digest
                ),
            )
            .into());
        }
        match &self.kind {
            Kind::Dir(dir) => {
                let path = self.blob_path(dir, &desc.digest);
                let file = File::open(&path).map_err(|source| LayoutError::Io {
                    path: self.path.clone(),
                    op: "opening manifest blob",
                    source,
                })?;
                let mut bytes = Vec::new();
                let mut r = HashingReader::verifying(file, desc.digest.clone(), Some(desc.size));
                r.read_to_end(&mut bytes)
                    .map_err(|source| LayoutError::Io {
                        path: self.path.clone(),
                        op: "reading manifest blob",
                        source,
                    })?;
                r.finish()
                    .map_err(|e| verify_error(&self.path, &desc.digest, e))?;
                Ok(bytes)
            }
            // Archived blobs were streamed (verified) into the store at open.
            Kind::Tar => self
                .blobs
                .read(&desc.digest, MAX_MANIFEST_SIZE)
                .map_err(|source| {
                    LayoutError::Blob {
                        path: self.path.clone(),
                        digest: desc.digest.clone(),
                        source: Box::new(source),
                    }
                    .into()
                }),
        }
    }

    fn blob(&mut self, desc: &Desc, blobs: &BlobStore) -> Result<(), StoreError> {
        if blobs.contains(&desc.digest) {
            return check_size(blobs, desc, &self.path);
        }
        match &self.kind {
            Kind::Dir(dir) => {
                let path = self.blob_path(dir, &desc.digest);
                let file = File::open(&path).map_err(|source| LayoutError::Io {
                    path: self.path.clone(),
                    op: "opening blob",
                    source,
                })?;
                blobs
                    .write(file, Some(&desc.digest), Some(desc.size))
                    .map_err(|source| LayoutError::Blob {
                        path: self.path.clone(),
                        digest: desc.digest.clone(),
                        source: Box::new(source),
                    })?;
                Ok(())
            }
            Kind::Tar => Err(invalid(
                &self.path,
                format!("blob {} is not in the archive", desc.digest),
            )
            .into()),
        }
    }
}

fn check_size(blobs: &BlobStore, desc: &Desc, layout: &Path) -> Result<(), StoreError> {
    let len = fs::metadata(blobs.path(&desc.digest))
        .map_err(|source| LayoutError::Io {
            path: layout.to_owned(),
            op: "reading stored blob size",
            source,
        })?
        .len();
    if len != desc.size {
        return Err(invalid(
            layout,
            format!(
                "blob {} is {len} bytes but its descriptor says {}",
                desc.digest, desc.size
            ),
        )
        .into());
    }
    Ok(())
}

fn verify_error(path: &Path, digest: &Digest, e: FinishError) -> LayoutError {
    match e {
        FinishError::Digest(source) => LayoutError::Blob {
            path: path.to_owned(),
            digest: digest.clone(),
            source: Box::new(BlobError::Verify {
                expected: digest.clone(),
                source,
            }),
        },
        FinishError::Io(source) => LayoutError::Io {
            path: path.to_owned(),
            op: "reading blob",
            source,
        },
    }
}

type LayoutFiles = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Streams a layout tarball: blobs into the store (verified by name), `oci-layout` and
/// `index.json` returned. Other entries are ignored; nothing is written by path.
fn read_archive(path: &Path, blobs: &BlobStore) -> Result<LayoutFiles> {
    let file = File::open(path).map_err(|source| LayoutError::Io {
        path: path.to_owned(),
        op: "opening",
        source,
    })?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(|source| LayoutError::Io {
        path: path.to_owned(),
        op: "reading",
        source,
    })?;
    let reader: Box<dyn Read> = match Compression::sniff(head) {
        Ok(Compression::Gzip) => Box::new(MultiGzDecoder::new(buffered)),
        Ok(Compression::None) => Box::new(buffered),
        Err(e) => return Err(invalid(path, e.to_string())),
    };
    let mut archive = tar::Archive::new(reader);
    let mut layout = None;
    let mut index = None;
    let entries = archive.entries().map_err(|source| LayoutError::Io {
        path: path.to_owned(),
        op: "reading archive",
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| LayoutError::Io {
            path: path.to_owned(),
            op: "reading archive",
            source,
        })?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let name: Vec<String> =
            Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&raw))
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
        let small = |entry: &mut tar::Entry<'_, Box<dyn Read>>, what: &str| {
            let mut bytes = Vec::new();
            entry
                .take(MAX_MANIFEST_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| LayoutError::Io {
                    path: path.to_owned(),
                    op: "reading archive",
                    source,
                })?;
            if bytes.len() as u64 > MAX_MANIFEST_SIZE {
                return Err(invalid(path, format!("{what} is too large")));
            }
            Ok(bytes)
        };
        match name
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["oci-layout"] => layout = Some(small(&mut entry, "oci-layout")?),
            ["index.json"] => index = Some(small(&mut entry, "index.json")?),
            ["blobs", "sha256", hex] => {
                let Ok(digest) = Digest::from_hex(hex) else {
                    return Err(invalid(
                        path,
                        format!("blob file name {hex:?} is not a digest"),
                    ));
                };
                let size = entry.size();
                if blobs.contains(&digest) {
                    continue;
                }
                blobs
                    .write(&mut entry, Some(&digest), Some(size))
                    .map_err(|source| LayoutError::Blob {
                        path: path.to_owned(),
                        digest,
                        source: Box::new(source),
                    })?;
            }
            _ => {}
        }
    }
    Ok((layout, index))
}

/// Writes a standalone layout at `dest` holding `blobs` (verified while copied from `store`)
/// and an index.json naming `manifest` as `tag`. On error, what was written is removed.
pub(crate) fn export(
    store: &BlobStore,
    blobs: &[Desc],
    manifest: &Desc,
    dest: &Path,
    tag: &str,
) -> Result<()> {
    let io = |op: &'static str| {
        move |source: io::Error| LayoutError::Io {
            path: dest.to_owned(),
            op,
            source,
        }
    };
    if dest.exists() {
        let mut entries = fs::read_dir(dest).map_err(io("listing"))?;
        if entries.next().is_some() {
            return Err(invalid(dest, "destination is not empty"));
        }
    }
    fs::create_dir_all(dest).map_err(io("creating"))?;
    let result = (|| {
        let blob_dir = dest.join("blobs").join("sha256");
        fs::create_dir_all(&blob_dir).map_err(io("creating blobs directory"))?;
        for d in blobs {
            let src = store.open(&d.digest).map_err(|source| LayoutError::Blob {
                path: dest.to_owned(),
                digest: d.digest.clone(),
                source: Box::new(source),
            })?;
            let mut reader = HashingReader::verifying(src, d.digest.clone(), Some(d.size));
            let mut out =
                File::create(blob_dir.join(d.digest.hex())).map_err(io("creating blob"))?;
            io::copy(&mut reader, &mut out).map_err(io("copying blob"))?;
            reader
                .finish()
                .map_err(|e| verify_error(dest, &d.digest, e))?;
        }
        store::write_atomic(
            &dest.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(|e| invalid(dest, e.to_string()))?;
        let index = IndexFile {
            schema_version: 2,
            media_type: Some(store::media::OCI_INDEX.into()),
            manifests: vec![IndexEntry {
                media_type: manifest.media_type.clone(),
                digest: manifest.digest.clone(),
                size: manifest.size,
                annotations: BTreeMap::from([(ANNOTATION_REF_NAME.to_owned(), tag.to_owned())]),
            }],
        };
        let bytes = serde_json::to_vec_pretty(&index)
            .map_err(|e| invalid(dest, format!("serialising index.json: {e}")))?;
        store::write_atomic(&dest.join("index.json"), &bytes)
            .map_err(|e| invalid(dest, e.to_string()))?;
        Ok(())
    })();
    if result.is_err() {
        for name in ["blobs", "oci-layout", "index.json"] {
            let p = dest.join(name);
            let _ = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
    result
}
