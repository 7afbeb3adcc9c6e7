//! The container's first processes, forked by `create`.
//!
//! Stage 1 (a fork of the runtime, created in the container's cgroup v2 directory when there is
//! one): joins the container's cgroups itself (see `Manager::join_self`) and the namespaces
//! given by path while it still has the host's privileges, unshares a user namespace and waits
//! for the parent to write its id maps, unshares the other new namespaces, and forks stage 2,
//! which is pid 1 of a new pid namespace. Stage 1 reports stage 2's pid and exits.
//!
//! Stage 2 (the container's init): unshares the cgroup namespace (now that it sits in its own
//! cgroup), builds the root filesystem, lets the parent run the prestart/createRuntime hooks,
//! runs createContainer hooks, pivots, finalises mounts and sysctls, sets up the console,
//! rlimits, user and capabilities, reports `Created`, and blocks in `accept()` on the exec socket
//! until `start` connects; then it runs startContainer hooks, loads seccomp (when late loading
//! is allowed) and execs the user's program.
//!
//! Both stages run in a fork of a single-threaded runtime process, so Rust code (including the
//! allocator) is safe to use. Any failure is sent to the parent as `Msg::Error` and the process
//! exits.

use std::{
    os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::Path,
};

use nix::{
    fcntl::{OFlag, open},
    sched::{CloneFlags, setns, unshare},
    sys::{socket::accept, stat::Mode},
    unistd::{ForkResult, Gid, Uid, fork, setresgid, setresuid},
};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::{
    hooks,
    process::{self, ProcessError},
    rootfs::{self, RootfsContext},
    sync::{Channel, Msg},
};

/// What the init stages need from `create`.
pub struct InitConfig<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// The container's cgroup, which stage 1 joins first thing.
    pub cgroup: &'a crate::cgroups::Manager,
    pub cgroups_path: &'a str,
    /// Connected console socket (when process.terminal).
    pub console: Option<RawFd>,
    /// Listening socket `start` connects to.
    pub exec_listener: RawFd,
    pub preserve_fds: u32,
    /// The state JSON for createContainer/startContainer hooks.
    pub hook_state: &'a [u8],
}

fn fail(chan: &Channel, message: String) -> ! {
    let _ = chan.send(&Msg::Error(message));
    // SAFETY: _exit ends this forked child without running the parent's atexit handlers or
    // flushing buffers it shares with the parent.
    unsafe { libc::_exit(1) }
}

/// Stage 1. Never returns. `in_cgroup`: it was created in the container's cgroup v2 directory
/// (see [`crate::cgroups::Manager::join_self`]).
pub fn stage1(chan: &Channel, cfg: &InitConfig<'_>, in_cgroup: bool) -> ! {
    if let Err(message) = stage1_inner(chan, cfg, in_cgroup) {
        fail(chan, message);
    }
    // SAFETY: see `fail`.
    unsafe { libc::_exit(0) }
}

fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<std::path::PathBuf>)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .map(|nss| nss.iter().map(|ns| (ns.typ(), ns.path().clone())).collect())
        .unwrap_or_default()
}

fn clone_flag(typ: LinuxNamespaceType) -> CloneFlags {
    CloneFlags::from_bits_truncate(typ as i32)
}

/// setns into the namespace file at `path`.
fn join(path: &Path, typ: LinuxNamespaceType) -> Result<(), String> {
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| format!("opening {} namespace {}: {e}", typ, path.display()))?;
    setns(&fd, clone_flag(typ))
        .map_err(|e| format!("joining {} namespace {}: {e}", typ, path.display()))
}

fn stage1_inner(chan: &Channel, cfg: &InitConfig<'_>, in_cgroup: bool) -> Result<(), String> {
    // Join the container's cgroup before anything else: everything stage 1 forks inherits it,
    // and it still has the host's privileges over cgroupfs (no user namespace joined yet). The
    // process moves itself, single-threaded as a fork of the runtime: that spares the kernel's
    // RCU grace period a move by pid costs (see `Manager::join_self`).
    cfg.cgroup
        .join_self(in_cgroup)
        .map_err(|e| format!("joining the cgroup: {e}"))?;
    let nss = namespaces(cfg.spec);
    // Join by path: the user namespace first (it decides what the others may do).
    for (typ, path) in nss.iter().filter(|(t, _)| *t == LinuxNamespaceType::User) {
        if let Some(path) = path {
            join(path, *typ)?;
        }
    }
    for (typ, path) in nss.iter().filter(|(t, _)| *t != LinuxNamespaceType::User) {
        if let Some(path) = path {
            join(path, *typ)?;
        }
    }
    let new_userns = nss
        .iter()
        .any(|(t, p)| *t == LinuxNamespaceType::User && p.is_none());
    if new_userns {
        unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare(user): {e}"))?;
        chan.send(&Msg::MapIds).map_err(|e| e.to_string())?;
        chan.expect(&Msg::Continue)?;
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(|e| format!("becoming root in the user namespace (gid): {e}"))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(|e| format!("becoming root in the user namespace (uid): {e}"))?;
    }
    // The cgroup namespace is unshared by stage 2, once it sits in its own cgroup.
    let mut flags = CloneFlags::empty();
    for (typ, path) in &nss {
        if path.is_none() && !matches!(typ, LinuxNamespaceType::User | LinuxNamespaceType::Cgroup) {
            flags |= clone_flag(*typ);
        }
    }
    unshare(flags).map_err(|e| format!("unshare({flags:?}): {e}"))?;
    // SAFETY: this process is a fork of a single-threaded runtime; the child only runs Rust
    // code of this crate before exec or _exit.
    match unsafe { fork() }.map_err(|e| format!("fork of the container init: {e}"))? {
        ForkResult::Child => stage2(chan, cfg, new_userns),
        ForkResult::Parent { child } => {
            chan.send(&Msg::InitPid(child.as_raw()))
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    }
}

/// Stage 2, the container's init. Never returns.
fn stage2(chan: &Channel, cfg: &InitConfig<'_>, userns: bool) -> ! {
    match stage2_inner(chan, cfg, userns) {
        Ok(never) => match never {},
        Err(message) => fail(chan, message),
    }
}

enum Never {}

fn stage2_inner(chan: &Channel, cfg: &InitConfig<'_>, userns: bool) -> Result<Never, String> {
    let spec = cfg.spec;
    let nss = namespaces(spec);
    // No PR_SET_PDEATHSIG here: our parent is stage 1, which exits right away. If the runtime
    // dies during set-up, the sync channel closes and the next `expect` fails, ending us.
    let cgroupns = nss
        .iter()
        .any(|(t, p)| *t == LinuxNamespaceType::Cgroup && p.is_none());
    if cgroupns {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| format!("unshare(cgroup): {e}"))?;
    }
    // Device nodes get exactly the modes the spec asks for.
    nix::sys::stat::umask(Mode::empty());
    if let Some(hostname) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname({hostname}): {e}"))?;
    }
    if let Some(domain) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: the pointer and length describe `domain`'s bytes for the call's duration.
        if unsafe { libc::setdomainname(domain.as_ptr().cast(), domain.len()) } != 0 {
            return Err(format!(
                "setdomainname({domain}): {}",
                nix::errno::Errno::last()
            ));
        }
    }

    let ctx = RootfsContext {
        rootfs: cfg.rootfs,
        userns,
        cgroupns,
        cgroups_path: cfg.cgroups_path,
    };
    rootfs::prepare(spec, &ctx).map_err(|e| e.to_string())?;

    chan.send(&Msg::RunCreateHooks).map_err(|e| e.to_string())?;
    chan.expect(&Msg::Continue)?;
    let spec_hooks = spec.hooks().as_ref();
    hooks::run(
        "createContainer",
        spec_hooks.and_then(|h| h.create_container().as_ref()),
        cfg.hook_state,
    )
    .map_err(|e| e.to_string())?;

    // The working directory is created before the root can become read-only, as runc does.
    if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd().clone()) {
        let inside = crate::fsutil::secure_join(cfg.rootfs, &cwd)
            .map_err(|e| format!("resolving cwd {}: {e}", cwd.display()))?;
        std::fs::create_dir_all(&inside)
            .map_err(|e| format!("creating cwd {}: {e}", cwd.display()))?;
    }
    rootfs::pivot(cfg.rootfs).map_err(|e| e.to_string())?;
    rootfs::finalize(spec).map_err(|e| e.to_string())?;

    let proc_spec = spec
        .process()
        .as_ref()
        .ok_or_else(|| "config.json: process missing".to_owned())?;
    let process::Prepared {
        exe,
        args,
        env,
        cwd,
    } = process::prepare(proc_spec, cfg.console)?;

    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref());
    let loader = |profile: &oci_spec::runtime::LinuxSeccomp| {
        crate::seccomp::load(profile).map_err(|e| e.to_string())
    };
    process::finalize_identity(proc_spec, seccomp, &loader).map_err(|e| e.to_string())?;
    nix::unistd::chdir(&cwd).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;

    chan.send(&Msg::Created).map_err(|e| e.to_string())?;

    // Wait for `start`.
    let conn = loop {
        match accept(cfg.exec_listener) {
            Ok(fd) => break fd,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waiting for start: {e}")),
        }
    };
    // SAFETY: `accept` returned a new descriptor that nothing else owns.
    let conn: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(conn) };
    // From here on errors go to `start` over the connection: the parent is gone.
    let report = |message: String| -> ! {
        // SAFETY: the fd is open for the call's duration.
        let borrowed = unsafe { BorrowedFd::borrow_raw(conn.as_raw_fd()) };
        let _ = nix::unistd::write(borrowed, message.as_bytes());
        // SAFETY: see `fail`.
        unsafe { libc::_exit(127) }
    };
    if let Err(e) = hooks::run(
        "startContainer",
        spec_hooks.and_then(|h| h.start_container().as_ref()),
        cfg.hook_state,
    ) {
        report(e.to_string());
    }
    if let Err(e) = process::late_seccomp(proc_spec, seccomp, &loader) {
        report(e.to_string());
    }
    if let Err(e) = process::close_extra_fds(cfg.preserve_fds) {
        report(e.to_string());
    }
    // The connection is close-on-exec: `start` sees EOF when execve succeeds.
    let err: ProcessError = process::exec(&exe, &args, &env);
    report(err.to_string())
}
