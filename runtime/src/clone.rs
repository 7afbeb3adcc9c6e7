//! Forking straight into the container's cgroup.
//!
//! Moving a process by writing its pid to `cgroup.procs` takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing, and that waits for an RCU grace period: measured at
//! 6-37 ms per container start on a 2-vCPU VM (`perf trace` of `berth-runc run`), more than all
//! the rest of the start. `clone3(CLONE_INTO_CGROUP)` (Linux 5.7) creates the child directly in
//! a cgroup v2 directory and takes that lock only for reading, as every fork does. The v1
//! hierarchies of a hybrid host are joined by the child itself, see
//! [`crate::cgroups::Manager::join_self`].

use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::{
    errno::Errno,
    unistd::{ForkResult, Pid, fork},
};

/// `CLONE_INTO_CGROUP` from `<linux/sched.h>` (not in the libc crate).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of `<linux/sched.h>` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`, 88 bytes);
/// the same layout on every architecture.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Which side of the fork this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forked {
    /// The child; `in_cgroup` when it was created in the cgroup v2 directory asked for.
    Child {
        in_cgroup: bool,
    },
    Parent {
        child: Pid,
    },
}

/// Forks, with the child created in the cgroup v2 directory `cgroup` when one is given and the
/// kernel allows it. On any clone3 failure (no clone3 or no `CLONE_INTO_CGROUP` on an older
/// kernel, clone3 filtered by a seccomp profile, a cgroup the kernel refuses) this falls back to
/// a plain fork and reports `in_cgroup: false`: the child then joins through `cgroup.procs`,
/// which gives a refused cgroup its proper error message.
///
/// # Safety
/// As for `fork`: the calling process must be single-threaded, since the child runs ordinary
/// Rust code. The child is a raw clone3 child: glibc's cached thread id in it still holds the
/// parent's, which glibc only uses for the owner of error-checking and recursive pthread mutexes
/// (the runtime uses none; `raise` asks the kernel); any `fork` the child makes sets it right in
/// the grandchild.
pub(crate) unsafe fn fork_into(cgroup: Option<BorrowedFd<'_>>) -> nix::Result<Forked> {
    if let Some(fd) = cgroup {
        let mut args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `args` is a valid `struct clone_args` of the size passed, alive for the call;
        // without CLONE_VM the child gets a copy of this address space and returns here like a
        // fork child (the caller guarantees a single-threaded process).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw mut args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            0 => return Ok(Forked::Child { in_cgroup: true }),
            pid if pid > 0 => {
                let child = i32::try_from(pid).map_err(|_| Errno::EOVERFLOW)?;
                return Ok(Forked::Parent {
                    child: Pid::from_raw(child),
                });
            }
            _ => {
                let errno = Errno::last();
                tracing::debug!(%errno, "clone3(CLONE_INTO_CGROUP) failed; forking instead");
            }
        }
    }
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { fork() }? {
        ForkResult::Child => Ok(Forked::Child { in_cgroup: false }),
        ForkResult::Parent { child } => Ok(Forked::Parent { child }),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::os::fd::AsFd as _;

    use nix::sys::wait::{WaitStatus, waitpid};

    use super::*;

    /// Forks with `fork_into`; the child only calls async-signal-safe functions (the test
    /// harness is multi-threaded): it exits with `in_cgroup` as its code, or waits for SIGKILL
    /// when `park`.
    fn fork_child(cgroup: Option<BorrowedFd<'_>>, park: bool) -> Pid {
        // SAFETY: the child makes no allocation and takes no lock before it exits.
        match unsafe { fork_into(cgroup) }.unwrap() {
            Forked::Child { in_cgroup } => {
                if park {
                    loop {
                        // SAFETY: pause has no arguments; the parent SIGKILLs us.
                        unsafe { libc::pause() };
                    }
                }
                // SAFETY: _exit in a fork child.
                unsafe { libc::_exit(i32::from(in_cgroup)) }
            }
            Forked::Parent { child } => child,
        }
    }

    #[test]
    fn clone_args_match_the_kernel_abi() {
        // CLONE_ARGS_SIZE_VER2: the first size that carries `cgroup`.
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
        assert_eq!(std::mem::offset_of!(CloneArgs, cgroup), 80);
    }

    #[test]
    fn a_directory_that_is_no_cgroup_falls_back_to_fork() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let child = fork_child(Some(dir.as_fd()), false);
        assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
        let child = fork_child(None, false);
        assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
    }

    #[test]
    fn the_child_starts_in_the_cgroup() {
        // Needs root and a cgroup v2 mount (pure v2, or the unified one of a hybrid host).
        let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|m| {
                nix::sys::statfs::statfs(*m)
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            });
        let Some(mount) = mount.filter(|_| nix::unistd::geteuid().is_root()) else {
            eprintln!("SKIPPED the_child_starts_in_the_cgroup: needs root and cgroup v2");
            return;
        };
        let dir = mount.join(format!("berth-clone-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let fd = std::fs::File::open(&dir).unwrap();
        let child = fork_child(Some(fd.as_fd()), true);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
        waitpid(child, None).unwrap();
        // The kernel may report the cgroup busy for a moment after the reap.
        for _ in 0..100 {
            if std::fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(procs.trim(), child.to_string());
    }
}
