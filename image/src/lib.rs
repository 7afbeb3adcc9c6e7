//! berth's image store: an OCI image layout on disk, layers unpacked once and shared,
//! registry pulls, and overlayfs root filesystems for containers.
//!
//! ```no_run
//! use std::collections::HashSet;
//! use berth_image::{ImageStore, PullOptions, Rootfs};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = ImageStore::open("/var/lib/berth/images")?;
//! let image = store.pull("127.0.0.1:5000/library/busybox:1.36", &PullOptions::default())?;
//! let config = store.config(&image)?; // Env, Entrypoint, Cmd, WorkingDir, User, …
//! let rootfs = Rootfs::mount(&store.layer_dirs(&image)?, "/run/berth/c1".as_ref())?;
//! // … run the container in rootfs.path() …
//! rootfs.remove()?;
//! store.remove("127.0.0.1:5000/library/busybox:1.36", &HashSet::new())?;
//! # let _ = config;
//! # Ok(())
//! # }
//! ```

pub mod blobs;
pub mod config;
pub mod digest;
pub mod layout;
pub mod lock;
pub mod overlay;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

pub use config::ImageConfig;
pub use digest::Digest;
pub use overlay::Rootfs;
pub use reference::ImageRef;
pub use registry::PullOptions;
pub use store::{
    DEFAULT_ROOT, GcReport, Image, ImageStore, Layer, Platform, RemoveReport, StoreError,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
