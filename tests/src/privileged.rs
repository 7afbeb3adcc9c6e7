//! Privilege checks that never let a test pass by skipping in CI.

/// True when running under CI (`CI=true`), where every prerequisite must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns true when the test may proceed as root. Under CI a non-root run panics with a clear
/// message; elsewhere it prints that the test is skipped and returns false.
#[must_use]
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let msg = format!(
        "{test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to load eBPF and create network namespaces; run `sudo cargo xtask test`"
    );
    if in_ci() {
        panic!("{msg} (CI=true: privileged tests must not skip)");
    }
    eprintln!("SKIPPED (not root): {msg}");
    false
}
