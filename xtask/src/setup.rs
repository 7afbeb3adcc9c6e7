//! `cargo xtask setup`: the prerequisites of berth's build and tests on a fresh Debian 12 machine
//! of this kind (see shared/TOOLCHAIN.md for why each is needed). Every step checks first, so a
//! second run takes seconds.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::sh;

/// Debian packages and why berth needs each.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links against LLVM 22, the LLVM of this rustc",
    ),
    ("libpolly-22-dev", "bpf-linker's LLVM 22 link needs Polly"),
    (
        "iproute2",
        "tests and the demo create network namespaces and veths",
    ),
    (
        "iputils-ping",
        "tests and the demo send ICMP through the XDP program",
    ),
    (
        "iptables",
        "benchmark baselines (kube-proxy's iptables layout)",
    ),
    (
        "nftables",
        "benchmark baselines (kube-proxy's nftables layout)",
    ),
    (
        "busybox-static",
        "container root filesystems for runtime tests",
    ),
    (
        "prometheus",
        "promtool checks the /metrics exposition in tests",
    ),
    ("bpftool", "inspecting pinned maps and programs by hand"),
    ("curl", "the demo scrapes /metrics"),
    (
        "libseccomp-dev",
        "the runtime builds seccomp filters with libseccomp",
    ),
    ("pkg-config", "locating libseccomp at build time"),
    (
        "podman",
        "interop test: Podman drives berth-runc as its OCI runtime",
    ),
    ("conmon", "Podman's container monitor"),
    ("crun", "runtime benchmark baseline"),
    ("runc", "runtime benchmark baseline"),
    (
        "docker-registry",
        "image tests pull from a registry on loopback",
    ),
    ("skopeo", "image tests push to that registry"),
    (
        "strace",
        "the audit test checks syscall counts against strace -f -c; audit benchmark baseline",
    ),
];

/// What the Kubernetes tests and benchmark need besides the binaries built from source.
const KUBERNETES_PACKAGES: &[(&str, &str)] = &[
    (
        "etcd-server",
        "the Kubernetes tests run a real kube-apiserver, which stores in etcd",
    ),
    (
        "golang-1.19-go",
        "builds kube-apiserver, kube-controller-manager, kube-proxy and kubectl 1.20.2 from Debian's source package",
    ),
    (
        "golang-github-modern-go-reflect2-dev",
        "reflect2 1.0.2 replaces the vendored 1.0.1 that crashes the API server under Go 1.19",
    ),
    ("rsync", "the Kubernetes build (make) needs it"),
    (
        "dpkg-dev",
        "apt-get source unpacks Debian's kubernetes source package",
    ),
    (
        "conntrack",
        "kube-proxy (the Kubernetes benchmark baseline) flushes conntrack entries with it",
    ),
];

/// Where the Kubernetes 1.20.2 binaries are cached (keyed by version: a warm machine skips the
/// ten-minute build). The tests read the same path (`tests/src/kube_cluster.rs`).
pub const KUBERNETES_CACHE: &str = "/var/cache/berth/k8s-1.20.2";

/// Packages only the benchmarks need (`cargo xtask bench audit`): the tracers berth's syscall
/// auditing is compared with.
pub const BENCH_PACKAGES: &[(&str, &str)] = &[
    (
        "bpftrace",
        "audit benchmark baselines: the minimal in-kernel counter and printf per event",
    ),
    (
        "auditd",
        "audit benchmark baseline: auditd rules for the same syscalls",
    ),
];

/// The bpf-linker release this build is verified with.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// What building berth needs (every command runs this first).
pub fn run() -> Result<()> {
    let started = std::time::Instant::now();
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("xtask setup: ready in {:.1?}", started.elapsed());
    Ok(())
}

fn is_root() -> bool {
    sh::output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0")
}

fn apt_packages() -> Result<()> {
    install(APT_PACKAGES)
}

/// Installs those of `packages` that are missing (root only).
pub fn install(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| {
            sh::output("dpkg-query", &["-W", "-f=${Status}", name])
                .is_none_or(|status| status.trim() != "install ok installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (name, why) in packages.iter().filter(|(n, _)| missing.contains(n)) {
        eprintln!("setup: installing {name}: {why}");
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}; run as root (or `sudo apt-get install {}`)",
            missing.join(" ")
        );
    }
    sh::run_cmd(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    sh::run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = sh::output("rustup", &["toolchain", "list"]).context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        sh::run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )
        .context("the kernel programs build with nightly (-Z build-std=core)")?;
    }
    let installed = sh::output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh::run(
        "rustup",
        &["component", "add", "rust-src", "--toolchain", "nightly"],
    )
}

/// kube-apiserver, kube-controller-manager, kube-proxy and kubectl 1.20.2, built from Debian's
/// source package (no registry here ships them; see shared/KUBERNETES.md) and cached.
/// Only the test suite and the Kubernetes benchmark run them (the demo does not wait for the
/// build).
pub fn kubernetes() -> Result<()> {
    install(KUBERNETES_PACKAGES)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/build-kubernetes.sh");
    sh::run("bash", &[script, KUBERNETES_CACHE])
        .context("building the Kubernetes binaries the tests run against")
}

fn bpf_linker() -> Result<()> {
    let version = sh::output("bpf-linker", &["--version"]);
    let linked_to_22 = sh::output("sh", &["-c", "ldd \"$(command -v bpf-linker)\""])
        .is_some_and(|ldd| ldd.contains("libLLVM.so.22") || ldd.contains("libLLVM-22"));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
        && linked_to_22
    {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    sh::run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
            ])
            // Without it, cargo finds Debian's llvm-14 llvm-config and fails to link -lLLVM.
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}
