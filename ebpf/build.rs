//! Rebuild the kernel object when `bpf-linker` changes: the crate has an undeclared dependency
//! on that binary (cargo has no artifact dependencies on stable yet).
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!(
            "cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup` to install it"
        ),
    }
}
