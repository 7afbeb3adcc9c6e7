//! The image store: an OCI image layout plus unpacked layers.
//!
//! ```text
//! <root>/                      default /var/lib/berth/images
//!   oci-layout                 {"imageLayoutVersion": "1.0.0"}
//!   index.json                 one manifest descriptor per image name (annotations
//!                              io.containerd.image.name and org.opencontainers.image.ref.name
//!                              hold the normalised reference)
//!   blobs/sha256/<hex>         manifests, configs, layer blobs (verified on write and read)
//!   layers/<diff-id hex>/      each layer unpacked once, shared by every image that has it
//!   index.lock                 flock: serialises index.json read-modify-write
//!   gc.lock                    flock: imports/pulls/unpacks hold it shared, GC exclusive
//! ```
//!
//! Every change to `index.json` is a write to a temporary file and a rename, under an
//! exclusive `index.lock`, so concurrent `berth` processes never lose each other's updates.
//! Imports hold `gc.lock` shared from their first blob to their index update, and garbage
//! collection holds it exclusive, so GC never deletes the blobs or layers of an import in flight.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use crate::blobs::{self, BlobError, BlobStore};
use crate::config::{ConfigFile, ImageConfig};
use crate::digest::Digest;
use crate::layout::LayoutError;
use crate::lock::{FileLock, LockError};
use crate::reference::{ImageRef, ReferenceError};
use crate::registry::{PullOptions, RegistryError};
use crate::unpack::{self, Compression, UnpackError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("image {reference:?} not found")]
    NotFound { reference: String },
    #[error("{prefix:?} matches several images: {}", candidates.join(", "))]
    Ambiguous {
        prefix: String,
        candidates: Vec<String>,
    },
    #[error("image {reference}: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("image {reference}: no manifest for platform {wanted}; available: {available}")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("image {reference}: layer {digest}: {source}")]
    Layer {
        reference: String,
        digest: Digest,
        #[source]
        source: Box<UnpackError>,
    },
    #[error("rootfs tarball {path}: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: Box<UnpackError>,
    },
    #[error("{what} {digest}: invalid json: {source}")]
    Json {
        what: &'static str,
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Blob(Box<BlobError>),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error(transparent)]
    Layout(Box<LayoutError>),
}

impl From<BlobError> for StoreError {
    fn from(e: BlobError) -> Self {
        Self::Blob(Box::new(e))
    }
}

impl From<RegistryError> for StoreError {
    fn from(e: RegistryError) -> Self {
        Self::Registry(Box::new(e))
    }
}

impl From<LayoutError> for StoreError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(Box::new(e))
    }
}

/// Result alias of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Default store location.
pub const DEFAULT_ROOT: &str = "/var/lib/berth/images";

pub(crate) const MAX_MANIFEST_SIZE: u64 = 4 << 20;
pub(crate) const MAX_CONFIG_SIZE: u64 = 16 << 20;

pub(crate) const ANNOTATION_NAME: &str = "io.containerd.image.name";
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Media types this store understands.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// Every manifest and index type, for registry `Accept` headers.
    pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

    pub(crate) fn is_index(t: &str) -> bool {
        t == OCI_INDEX || t == DOCKER_LIST
    }
    pub(crate) fn is_manifest(t: &str) -> bool {
        t == OCI_MANIFEST || t == DOCKER_MANIFEST
    }
    pub(crate) fn is_config(t: &str) -> bool {
        t == OCI_CONFIG || t == DOCKER_CONFIG
    }
    pub(crate) fn is_layer(t: &str) -> bool {
        matches!(
            t,
            OCI_LAYER
                | OCI_LAYER_GZIP
                | DOCKER_LAYER_GZIP
                | "application/vnd.oci.image.layer.nondistributable.v1.tar"
                | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        )
    }
}

/// The platform to pick from a multi-platform index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Preferred CPU variant; any variant is accepted when none matches.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One layer of an image, bottom to top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    /// Digest of the uncompressed tar: the key of the unpacked layer directory.
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

impl Layer {
    /// The key naming this layer's unpacked directory (`sha256:<diff id hex>`); what callers
    /// put in the `in_use` set of [`ImageStore::remove`] and [`ImageStore::gc`].
    pub fn key(&self) -> String {
        self.diff_id.to_string()
    }
}

/// A named image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Image id: the config digest (what `docker images` shows).
    pub id: Digest,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
    /// Bottom to top.
    pub layers: Vec<Layer>,
    /// Config plus layer blob sizes, in bytes.
    pub size: u64,
}

/// What garbage collection removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_blobs: Vec<Digest>,
    pub removed_layers: Vec<Digest>,
    /// Unreferenced layers kept because the caller listed them as in use.
    pub kept_in_use: Vec<Digest>,
    /// Set when collection was skipped because an image could not be read (its references
    /// are unknown, so nothing was deleted).
    pub skipped: Option<String>,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Names removed from the index.
    pub untagged: Vec<String>,
    pub gc: GcReport,
}

/// A descriptor as the import pipeline uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Desc {
    pub(crate) fn from_oci(d: &oci_spec::image::Descriptor, reference: &str) -> Result<Self> {
        let digest = Digest::try_from(d.digest()).map_err(|e| StoreError::Invalid {
            reference: reference.to_owned(),
            reason: format!("descriptor digest: {e}"),
        })?;
        Ok(Self {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
        })
    }
}

/// Where an import gets manifests and blobs from (a registry, an OCI layout).
pub(crate) trait Source {
    /// The bytes of the manifest or index `desc` (the store checks them against the digest).
    fn manifest(&mut self, desc: &Desc) -> Result<Vec<u8>>;
    /// Makes sure blob `desc` is in `blobs`, fetching it (verified) when missing.
    fn blob(&mut self, desc: &Desc, blobs: &BlobStore) -> Result<()>;
}

/// `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexFile {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
}

impl Default for IndexFile {
    fn default() -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: Vec::new(),
        }
    }
}

/// One descriptor in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl IndexEntry {
    fn name(&self) -> Option<&str> {
        self.annotations
            .get(ANNOTATION_NAME)
            .or_else(|| self.annotations.get(ANNOTATION_REF_NAME))
            .map(String::as_str)
    }
}

/// The image store. Cheap to open; every method works on the disk state, so several
/// `ImageStore`s (in one or many processes) can share a root.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    blobs: BlobStore,
    layers: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

impl ImageStore {
    /// Opens the store at `root`, creating its layout when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let layers = root.join("layers");
        fs::create_dir_all(&layers).map_err(io_err("creating", &layers))?;
        let blobs = BlobStore::new(root.join("blobs").join("sha256"))?;
        let store = Self {
            root,
            blobs,
            layers,
        };
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !store.index_path().exists() {
            let _lock = FileLock::exclusive(&store.root.join("index.lock"))?;
            if !store.index_path().exists() {
                store.write_index(&IndexFile::default())?;
            }
        }
        Ok(store)
    }

    /// Opens the store at [`DEFAULT_ROOT`].
    pub fn open_default() -> Result<Self> {
        Self::open(DEFAULT_ROOT)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob store (`blobs/sha256`).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The directory a layer is (or will be) unpacked into: `layers/<diff id hex>`.
    pub fn layer_dir(&self, layer: &Layer) -> PathBuf {
        self.layers.join(layer.diff_id.hex())
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn gc_shared(&self) -> Result<FileLock> {
        Ok(FileLock::shared(&self.root.join("gc.lock"))?)
    }

    fn gc_exclusive(&self) -> Result<FileLock> {
        Ok(FileLock::exclusive(&self.root.join("gc.lock"))?)
    }

    pub(crate) fn read_index(&self) -> Result<IndexFile> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(IndexFile::default()),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "index",
            digest: path.display().to_string(),
            source,
        })
    }

    fn write_index(&self, index: &IndexFile) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| StoreError::Json {
            what: "index",
            digest: self.index_path().display().to_string(),
            source,
        })?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Read-modify-write of `index.json` under the exclusive index lock.
    fn update_index<T>(&self, f: impl FnOnce(&mut IndexFile) -> Result<T>) -> Result<T> {
        let _lock = FileLock::exclusive(&self.root.join("index.lock"))?;
        let mut index = self.read_index()?;
        let out = f(&mut index)?;
        self.write_index(&index)?;
        Ok(out)
    }

    /// Points `name` at the manifest `manifest` (replacing what it pointed at).
    fn set_name(&self, name: &str, manifest: &Desc) -> Result<()> {
        self.update_index(|index| {
            index.manifests.retain(|e| e.name() != Some(name));
            index.manifests.push(IndexEntry {
                media_type: manifest.media_type.clone(),
                digest: manifest.digest.clone(),
                size: manifest.size,
                annotations: [
                    (ANNOTATION_NAME.to_owned(), name.to_owned()),
                    (ANNOTATION_REF_NAME.to_owned(), name.to_owned()),
                ]
                .into(),
            });
            index.manifests.sort_by(|a, b| a.name().cmp(&b.name()));
            Ok(())
        })
    }

    fn read_manifest(&self, digest: &Digest, reference: &str) -> Result<ImageManifest> {
        let bytes = self.blobs.read(digest, MAX_MANIFEST_SIZE)?;
        parse_manifest(&bytes, digest, reference)
    }

    fn read_config(&self, digest: &Digest) -> Result<ConfigFile> {
        let bytes = self.blobs.read(digest, MAX_CONFIG_SIZE)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            what: "image config",
            digest: digest.to_string(),
            source,
        })
    }

    fn load_image(&self, entry: &IndexEntry, name: &str) -> Result<Image> {
        let manifest = self.read_manifest(&entry.digest, name)?;
        let config_desc = Desc::from_oci(manifest.config(), name)?;
        let config = self.read_config(&config_desc.digest)?;
        let layers = manifest_layers(&manifest, &config, name)?;
        let size = config_desc.size + layers.iter().map(|l| l.size).sum::<u64>();
        Ok(Image {
            name: name.to_owned(),
            id: config_desc.digest,
            manifest_digest: entry.digest.clone(),
            manifest_media_type: entry.media_type.clone(),
            architecture: config.architecture,
            os: config.os,
            created: config.created,
            layers,
            size,
        })
    }

    /// Every named image, sorted by name. An image whose manifest or config cannot be read
    /// is an error naming it (remove it with [`ImageStore::remove`]).
    pub fn list(&self) -> Result<Vec<Image>> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for entry in &index.manifests {
            let Some(name) = entry.name() else { continue };
            out.push(self.load_image(entry, name)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Finds an image by reference (`busybox`, `busybox:1.36`, `repo@sha256:…`) or by a
    /// prefix of its id (`3f57d9401f8d`, `sha256:3f57…`).
    pub fn resolve(&self, reference_or_id: &str) -> Result<Image> {
        let index = self.read_index()?;
        let parsed = ImageRef::parse(reference_or_id);
        if let Ok(r) = &parsed {
            let name = r.name();
            if let Some(e) = index
                .manifests
                .iter()
                .find(|e| e.name() == Some(name.as_str()))
            {
                return self.load_image(e, &name);
            }
            // `repo@sha256:<manifest>`: any name of that repository with that manifest.
            if let Some(d) = r.digest() {
                for e in &index.manifests {
                    let Some(n) = e.name() else { continue };
                    if e.digest == d
                        && let Ok(other) = ImageRef::parse(n)
                        && other.registry() == r.registry()
                        && other.repository() == r.repository()
                    {
                        return self.load_image(e, n);
                    }
                }
            }
        }
        let prefix = reference_or_id
            .strip_prefix("sha256:")
            .unwrap_or(reference_or_id);
        if !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            let prefix = prefix.to_ascii_lowercase();
            let mut found: BTreeMap<Digest, Image> = BTreeMap::new();
            for e in &index.manifests {
                let Some(n) = e.name() else { continue };
                let image = match self.load_image(e, n) {
                    Ok(i) => i,
                    Err(err) => {
                        tracing::warn!(image = n, error = %err, "skipping unreadable image");
                        continue;
                    }
                };
                if image.id.hex().starts_with(&prefix) {
                    found.entry(image.id.clone()).or_insert(image);
                }
            }
            if found.len() > 1 {
                return Err(StoreError::Ambiguous {
                    prefix: reference_or_id.to_owned(),
                    candidates: found.keys().map(|d| d.short().to_owned()).collect(),
                });
            }
            if let Some((_, image)) = found.into_iter().next() {
                return Ok(image);
            }
        }
        match parsed {
            Err(e) => Err(e.into()),
            Ok(_) => Err(StoreError::NotFound {
                reference: reference_or_id.to_owned(),
            }),
        }
    }

    /// The runtime configuration of `image` (Env, Entrypoint, Cmd, WorkingDir, User,
    /// ExposedPorts, Labels, …), read from its verified config blob.
    pub fn config(&self, image: &Image) -> Result<ImageConfig> {
        Ok(self.read_config(&image.id)?.image_config())
    }

    /// The unpacked layer directories of `image`, bottom to top, unpacking any that are
    /// missing (from their verified blobs).
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(image.layers.len());
        let mut lock = None;
        for layer in &image.layers {
            let dir = self.layer_dir(layer);
            if !dir.is_dir() {
                if lock.is_none() {
                    lock = Some(self.gc_shared()?);
                }
                self.unpack(layer, &image.name)?;
            }
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Unpacks one layer from its blob unless already unpacked. Caller holds `gc.lock` shared.
    fn unpack(&self, layer: &Layer, reference: &str) -> Result<PathBuf> {
        let dir = self.layer_dir(layer);
        if dir.is_dir() {
            return Ok(dir);
        }
        let file = self.blobs.open(&layer.digest)?;
        tracing::debug!(layer = %layer.diff_id, blob = %layer.digest, "unpacking layer");
        let unpacked = unpack::unpack_layer(
            file,
            Some((&layer.digest, layer.size)),
            Some(&layer.diff_id),
            &self.layers,
        )
        .map_err(|source| StoreError::Layer {
            reference: reference.to_owned(),
            digest: layer.digest.clone(),
            source: Box::new(source),
        })?;
        Ok(unpacked.dir)
    }

    /// Imports a plain root filesystem tarball (optionally gzip-compressed) as a one-layer
    /// image named `reference`, with a generated config (linux/amd64; `config` gives Env,
    /// Cmd, …; `Cmd ["/bin/sh"]` when neither Cmd nor Entrypoint is given).
    pub fn import_rootfs_tar(
        &self,
        path: &Path,
        reference: &str,
        config: &ImageConfig,
    ) -> Result<Image> {
        let name = ImageRef::parse(reference)?.name();
        let _gc = self.gc_shared()?;
        let file = File::open(path).map_err(io_err("opening", path))?;
        // Unpack first: a hostile or broken tarball is rejected before anything is stored.
        let unpacked = unpack::unpack_layer(file, None, None, &self.layers).map_err(|source| {
            StoreError::Rootfs {
                path: path.to_owned(),
                source: Box::new(source),
            }
        })?;
        if !self.blobs.contains(&unpacked.blob_digest) {
            let file = File::open(path).map_err(io_err("opening", path))?;
            // Verified against the first pass: the file must not have changed meanwhile.
            self.blobs
                .write(file, Some(&unpacked.blob_digest), Some(unpacked.blob_size))?;
        }
        let layer_type = match unpacked.compression {
            Some(Compression::Gzip) => media::OCI_LAYER_GZIP,
            _ => media::OCI_LAYER,
        };
        let config_file = ConfigFile::for_rootfs(config, &unpacked.diff_id);
        let config_bytes = to_json(&config_file, "image config")?;
        let config_digest = self.blobs.write_bytes(&config_bytes)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {
                "mediaType": media::OCI_CONFIG,
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": [{
                "mediaType": layer_type,
                "digest": unpacked.blob_digest,
                "size": unpacked.blob_size,
            }],
        });
        let manifest_bytes = to_json(&manifest, "manifest")?;
        let manifest_digest = self.blobs.write_bytes(&manifest_bytes)?;
        let desc = Desc {
            media_type: media::OCI_MANIFEST.into(),
            digest: manifest_digest,
            size: manifest_bytes.len() as u64,
        };
        self.set_name(&name, &desc)?;
        tracing::info!(image = %name, layer = %unpacked.diff_id, "imported rootfs tarball");
        self.resolve(&name)
    }

    /// Imports the image `top` (a manifest or an index, whose bytes the caller fetched) from
    /// `source` as `name`: blobs verified into the store, layers unpacked, then the name
    /// recorded. The caller holds `gc.lock` shared from before its first blob write.
    pub(crate) fn import_from(
        &self,
        name: &str,
        source: &mut dyn Source,
        top: &Desc,
        top_bytes: Vec<u8>,
        platform: &Platform,
    ) -> Result<Image> {
        let (desc, bytes) =
            self.resolve_platform(name, source, top.clone(), top_bytes, platform, 0)?;
        let manifest = parse_manifest(&bytes, &desc.digest, name)?;
        let config_desc = Desc::from_oci(manifest.config(), name)?;
        if !media::is_config(&config_desc.media_type) {
            return Err(StoreError::Invalid {
                reference: name.to_owned(),
                reason: format!(
                    "config media type {:?} is not a container image config",
                    config_desc.media_type
                ),
            });
        }
        source.blob(&config_desc, &self.blobs)?;
        let config = self.read_config(&config_desc.digest)?;
        if !config.architecture.is_empty() && config.architecture != platform.architecture
            || !config.os.is_empty() && config.os != platform.os
        {
            return Err(StoreError::NoPlatform {
                reference: name.to_owned(),
                wanted: platform.to_string(),
                available: format!("{}/{}", config.os, config.architecture),
            });
        }
        let layers = manifest_layers(&manifest, &config, name)?;
        for layer in &layers {
            source.blob(
                &Desc {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: layer.size,
                },
                &self.blobs,
            )?;
        }
        let stored = self.blobs.write_bytes(&bytes)?;
        debug_assert_eq!(stored, desc.digest);
        for layer in &layers {
            self.unpack(layer, name)?;
        }
        self.set_name(name, &desc)?;
        tracing::info!(image = %name, manifest = %desc.digest, layers = layers.len(), "imported image");
        self.resolve(name)
    }

    /// Follows an index down to the manifest for `platform`; returns the manifest's
    /// descriptor and verified bytes.
    fn resolve_platform(
        &self,
        name: &str,
        source: &mut dyn Source,
        desc: Desc,
        bytes: Vec<u8>,
        platform: &Platform,
        depth: usize,
    ) -> Result<(Desc, Vec<u8>)> {
        let actual = Digest::of_bytes(&bytes);
        if actual != desc.digest {
            return Err(StoreError::Invalid {
                reference: name.to_owned(),
                reason: format!("manifest {} hashes to {actual}", desc.digest),
            });
        }
        let kind = manifest_kind(&desc.media_type, &bytes);
        if media::is_manifest(&kind) {
            let desc = Desc {
                media_type: kind,
                ..desc
            };
            return Ok((desc, bytes));
        }
        if !media::is_index(&kind) {
            return Err(StoreError::Invalid {
                reference: name.to_owned(),
                reason: format!("unsupported manifest media type {kind:?}"),
            });
        }
        if depth >= 4 {
            return Err(StoreError::Invalid {
                reference: name.to_owned(),
                reason: "image indexes nested too deeply".into(),
            });
        }
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
                what: "image index",
                digest: desc.digest.to_string(),
                source,
            })?;
        let chosen = select_platform(&index, platform, name)?;
        let child_bytes = source.manifest(&chosen)?;
        self.resolve_platform(name, source, chosen, child_bytes, platform, depth + 1)
    }

    /// Imports an OCI image layout (a directory, or a tar of one as `skopeo copy …
    /// oci-archive:` writes) as `reference`. Every blob is verified; an index is resolved to
    /// linux/amd64. A layout holding several images is disambiguated by the
    /// `org.opencontainers.image.ref.name` annotation matching `reference`'s tag or name.
    pub fn import_oci_layout(&self, path: &Path, reference: &str) -> Result<Image> {
        let r = ImageRef::parse(reference)?;
        let name = r.name();
        let _gc = self.gc_shared()?;
        let mut source = crate::layout::LayoutSource::open(path, &self.blobs)?;
        let top = source.select(&r)?;
        let bytes = source.manifest(&top)?;
        self.import_from(&name, &mut source, &top, bytes, &Platform::default())
    }

    /// Writes `image` as a standalone OCI image layout directory at `dest` (created; must be
    /// empty when it exists), its manifest annotated `org.opencontainers.image.ref.name=tag`.
    /// Blobs are verified as they are copied.
    pub fn export_oci_layout(&self, image: &Image, dest: &Path, tag: &str) -> Result<()> {
        let manifest = self.read_manifest(&image.manifest_digest, &image.name)?;
        let mut blobs = vec![Desc::from_oci(manifest.config(), &image.name)?];
        for l in &image.layers {
            blobs.push(Desc {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
            });
        }
        let manifest_size = fs::metadata(self.blobs.path(&image.manifest_digest))
            .map_err(io_err("reading", &self.blobs.path(&image.manifest_digest)))?
            .len();
        blobs.push(Desc {
            media_type: image.manifest_media_type.clone(),
            digest: image.manifest_digest.clone(),
            size: manifest_size,
        });
        crate::layout::export(&self.blobs, &blobs, &blobs[blobs.len() - 1], dest, tag)?;
        Ok(())
    }

    /// Pulls `reference` from its registry (distribution API v2) and stores it under its
    /// normalised name. Blobs already present are not fetched again.
    pub fn pull(&self, reference: &str, options: &PullOptions) -> Result<Image> {
        let r = ImageRef::parse(reference)?;
        let name = r.name();
        let mut client = crate::registry::RegistryClient::new(&r, options)?;
        let _gc = self.gc_shared()?;
        let (top, bytes) = client.fetch_top_manifest()?;
        let image = self.import_from(&name, &mut client, &top, bytes, &options.platform)?;
        client.finish();
        Ok(image)
    }

    /// Adds `new_reference` as another name of `image`.
    pub fn tag(&self, image: &Image, new_reference: &str) -> Result<Image> {
        let name = ImageRef::parse(new_reference)?.name();
        // Shared GC lock: the image's blobs cannot be collected while the name is added.
        let _gc = self.gc_shared()?;
        self.blobs.verify(&image.manifest_digest, None)?;
        let size = fs::metadata(self.blobs.path(&image.manifest_digest))
            .map_err(io_err("reading", &self.blobs.path(&image.manifest_digest)))?
            .len();
        self.set_name(
            &name,
            &Desc {
                media_type: image.manifest_media_type.clone(),
                digest: image.manifest_digest.clone(),
                size,
            },
        )?;
        self.resolve(&name)
    }

    /// Removes the name `reference` (or, given an id prefix, every name of that image), then
    /// garbage-collects blobs and unpacked layers no image references any more, except the
    /// layers in `in_use` (layer keys `sha256:<diff id hex>` as [`Layer::key`] gives, or layer
    /// directory paths as [`ImageStore::layer_dirs`] returns).
    pub fn remove(&self, reference: &str, in_use: &HashSet<String>) -> Result<RemoveReport> {
        let _gc = self.gc_exclusive()?;
        let by_name = ImageRef::parse(reference).ok().map(|r| r.name());
        let index = self.read_index()?;
        let names: Vec<String> = match by_name
            .as_deref()
            .filter(|n| index.manifests.iter().any(|e| e.name() == Some(*n)))
        {
            Some(n) => vec![n.to_owned()],
            None => {
                let image = self.resolve(reference)?;
                let mut names = Vec::new();
                for e in &index.manifests {
                    let Some(n) = e.name() else { continue };
                    if let Ok(other) = self.load_image(e, n)
                        && other.id == image.id
                    {
                        names.push(n.to_owned());
                    }
                }
                names
            }
        };
        self.update_index(|index| {
            index
                .manifests
                .retain(|e| !e.name().is_some_and(|n| names.iter().any(|x| x == n)));
            Ok(())
        })?;
        for n in &names {
            tracing::info!(image = %n, "removed image name");
        }
        let gc = self.gc_locked(in_use)?;
        Ok(RemoveReport {
            untagged: names,
            gc,
        })
    }

    /// Garbage-collects blobs and unpacked layers no image references, keeping `in_use`
    /// layers (see [`ImageStore::remove`]); also clears temporaries of interrupted imports.
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport> {
        let _gc = self.gc_exclusive()?;
        self.gc_locked(in_use)
    }

    fn gc_locked(&self, in_use: &HashSet<String>) -> Result<GcReport> {
        let mut report = GcReport::default();
        let index = self.read_index()?;
        let mut blobs_kept: BTreeSet<Digest> = BTreeSet::new();
        let mut layers_kept: BTreeSet<Digest> = BTreeSet::new();
        for e in &index.manifests {
            let name = e.name().unwrap_or("(unnamed)");
            let image = match self.load_image(e, name) {
                Ok(i) => i,
                Err(err) => {
                    let why = format!("image {name} is unreadable ({err}); nothing collected");
                    tracing::warn!("{why}");
                    report.skipped = Some(why);
                    return Ok(report);
                }
            };
            blobs_kept.insert(image.manifest_digest.clone());
            blobs_kept.insert(image.id.clone());
            for l in &image.layers {
                blobs_kept.insert(l.digest.clone());
                layers_kept.insert(l.diff_id.clone());
            }
        }
        for d in self.blobs.list()? {
            if !blobs_kept.contains(&d) && self.blobs.remove(&d)? {
                report.removed_blobs.push(d);
            }
        }
        self.blobs.remove_temporaries()?;
        let entries = fs::read_dir(&self.layers).map_err(io_err("listing", &self.layers))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.layers))?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            let path = entry.path();
            if file_name.starts_with(unpack::TEMP_PREFIX) {
                unpack::remove_tree(&path).map_err(io_err("removing", &path))?;
                continue;
            }
            let Ok(diff_id) = Digest::from_hex(&file_name) else {
                continue;
            };
            if layers_kept.contains(&diff_id) {
                continue;
            }
            let used = in_use.contains(diff_id.as_str())
                || in_use.contains(diff_id.hex())
                || in_use.contains(path.to_string_lossy().as_ref());
            if used {
                report.kept_in_use.push(diff_id);
                continue;
            }
            unpack::remove_tree(&path).map_err(io_err("removing layer", &path))?;
            report.removed_layers.push(diff_id);
        }
        // Temporaries of interrupted index.json writes (index writers hold the index lock).
        {
            let _index = FileLock::exclusive(&self.root.join("index.lock"))?;
            let entries = fs::read_dir(&self.root).map_err(io_err("listing", &self.root))?;
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(blobs::TEMP_PREFIX)
                {
                    let path = entry.path();
                    fs::remove_file(&path).map_err(io_err("removing", &path))?;
                }
            }
        }
        if !report.removed_blobs.is_empty() || !report.removed_layers.is_empty() {
            tracing::info!(
                blobs = report.removed_blobs.len(),
                layers = report.removed_layers.len(),
                "garbage-collected image store"
            );
        }
        Ok(report)
    }
}

fn to_json(value: &impl Serialize, what: &'static str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| StoreError::Json {
        what,
        digest: "(new)".into(),
        source,
    })
}

/// Writes `path` atomically: temporary file in the same directory, fsync, rename, fsync dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(blobs::TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("creating temporary file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("writing", tmp.path()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(io_err("setting mode of", tmp.path()))?;
    }
    tmp.persist(path)
        .map_err(|e| io_err("renaming into place", path)(e.error))?;
    blobs::sync_dir(dir).map_err(io_err("syncing", dir))?;
    Ok(())
}

/// The manifest or index type of `bytes`: the declared media type when it is one we know,
/// else the document's own `mediaType`, else guessed from its shape.
pub(crate) fn manifest_kind(declared: &str, bytes: &[u8]) -> String {
    if media::is_manifest(declared)
        || media::is_index(declared)
        || declared == media::DOCKER_SCHEMA1
        || declared == media::DOCKER_SCHEMA1_SIGNED
    {
        return declared.to_owned();
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
        schema_version: Option<u32>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(p) => match (p.media_type, p.manifests, p.layers, p.schema_version) {
            (Some(t), _, _, _) => t,
            (None, Some(_), _, _) => media::OCI_INDEX.into(),
            (None, None, Some(_), Some(2)) => media::OCI_MANIFEST.into(),
            _ => declared.to_owned(),
        },
        Err(_) => declared.to_owned(),
    }
}

fn parse_manifest(bytes: &[u8], digest: &Digest, reference: &str) -> Result<ImageManifest> {
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|source| StoreError::Json {
            what: "manifest",
            digest: digest.to_string(),
            source,
        })?;
    if manifest.schema_version() != 2 {
        return Err(StoreError::Invalid {
            reference: reference.to_owned(),
            reason: format!(
                "manifest {digest} has schemaVersion {} (only 2 is supported)",
                manifest.schema_version()
            ),
        });
    }
    Ok(manifest)
}

/// The layers of a manifest paired with the config's diff ids, with media types checked.
fn manifest_layers(
    manifest: &ImageManifest,
    config: &ConfigFile,
    reference: &str,
) -> Result<Vec<Layer>> {
    let invalid = |reason: String| StoreError::Invalid {
        reference: reference.to_owned(),
        reason,
    };
    if manifest.layers().len() != config.rootfs.diff_ids.len() {
        return Err(invalid(format!(
            "manifest has {} layers but config lists {} diff ids",
            manifest.layers().len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (d, diff) in manifest.layers().iter().zip(&config.rootfs.diff_ids) {
        let desc = Desc::from_oci(d, reference)?;
        if !media::is_layer(&desc.media_type) {
            return Err(invalid(format!(
                "layer {} has unsupported media type {:?} (supported: tar, tar+gzip)",
                desc.digest, desc.media_type
            )));
        }
        let diff_id = Digest::parse(diff).map_err(|e| invalid(format!("config diff id: {e}")))?;
        layers.push(Layer {
            digest: desc.digest,
            diff_id,
            media_type: desc.media_type,
            size: desc.size,
        });
    }
    Ok(layers)
}

/// Picks the manifest for `platform` from an index.
fn select_platform(index: &ImageIndex, platform: &Platform, reference: &str) -> Result<Desc> {
    let mut candidates = Vec::new();
    let mut available = Vec::new();
    for d in index.manifests() {
        let Some(p) = d.platform() else {
            continue;
        };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        available.push(match p.variant() {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        if os == platform.os && arch == platform.architecture {
            let variant_matches = platform.variant.is_some() && p.variant() == &platform.variant;
            candidates.push((variant_matches, d));
        }
    }
    // An exact variant match first, then the first listed.
    candidates.sort_by_key(|(exact, _)| !*exact);
    if let Some((_, d)) = candidates.first() {
        return Desc::from_oci(d, reference);
    }
    // An index without platform data and a single entry (e.g. a nested single image).
    if available.is_empty() && index.manifests().len() == 1 {
        return Desc::from_oci(&index.manifests()[0], reference);
    }
    Err(StoreError::NoPlatform {
        reference: reference.to_owned(),
        wanted: platform.to_string(),
        available: if available.is_empty() {
            "none declared".into()
        } else {
            available.join(", ")
        },
    })
}
