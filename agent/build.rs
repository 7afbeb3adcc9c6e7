//! Builds the kernel programs (`ebpf/`) from source with the nightly toolchain and
//! `bpf-linker`, and leaves the object in OUT_DIR for `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // Also rebuild when the shared ABI changes.
    println!("cargo:rerun-if-changed={manifest_dir}/../common/src");
    aya_build::build_ebpf(
        [Package {
            name: "berth-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the kernel programs failed; `cargo xtask setup` installs the nightly rust-src \
         and bpf-linker they need",
    )
}
