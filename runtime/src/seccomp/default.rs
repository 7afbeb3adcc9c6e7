//! berth's default seccomp profile: the same allowlist and conditions as Docker's default
//! (moby/profiles `seccomp/default.json` v0.2.3, which Podman's default follows closely),
//! written here as Rust data.

use libc::{
    AF_ALG, AF_VSOCK, CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID,
    CLONE_NEWUSER, CLONE_NEWUTS, EPERM,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall,
};

use super::arch::{self, FilterArch};
use super::template::{ArchMapEntry, Environment, KernelVersion, Rule, Template, arg};

/// Syscalls every container may make, whatever its capabilities.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls that need `CAP_SYS_ADMIN`: mounts, namespaces, host names, quotas, tracing.
const SYS_ADMIN: &[&str] = &[
    "bpf",
    "clone",
    "clone3",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "lookup_dcookie",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "mount",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "perf_event_open",
    "quotactl",
    "quotactl_fd",
    "setdomainname",
    "sethostname",
    "setns",
    "syslog",
    "umount",
    "umount2",
    "unshare",
];

/// The clone flags that create namespaces: `clone` without `CAP_SYS_ADMIN` must have none.
pub(crate) const CLONE_NAMESPACE_FLAGS: u64 = (CLONE_NEWNS
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWCGROUP) as u64;

/// `personality(2)` values a container may set: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26 | PER_LINUX32, and 0xffffffff, which only queries the current persona.
pub(crate) const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `clone3` gets ENOSYS so that libc falls back to `clone`, whose flags a filter can inspect
/// (`clone3` passes them in memory).
const ENOSYS: u32 = libc::ENOSYS as u32;

fn allow(names: &[&str]) -> Rule {
    Rule::new(names, LinuxSeccompAction::ScmpActAllow)
}

impl Rule {
    fn with_arg(mut self, index: usize, op: LinuxSeccompOperator, value: u64) -> Self {
        self.args.push(arg(index, op, value, None));
        self
    }

    /// `(argument & mask) == datum`.
    fn with_masked_eq(mut self, index: usize, mask: u64, datum: u64) -> Self {
        self.args.push(arg(
            index,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            mask,
            Some(datum),
        ));
        self
    }

    fn with_errno(mut self, errno: u32) -> Self {
        self.errno_ret = Some(errno);
        self
    }

    fn only_with_cap(mut self, cap: &str) -> Self {
        self.includes.caps.push(cap.to_string());
        self
    }

    fn unless_cap(mut self, cap: &str) -> Self {
        self.excludes.caps.push(cap.to_string());
        self
    }

    fn only_on(mut self, arches: &[&str]) -> Self {
        self.includes.arches = arches.iter().map(|a| a.to_string()).collect();
        self
    }

    fn except_on(mut self, arches: &[&str]) -> Self {
        self.excludes.arches = arches.iter().map(|a| a.to_string()).collect();
        self
    }

    fn since_kernel(mut self, major: u32, minor: u32) -> Self {
        self.includes.min_kernel = Some(KernelVersion { major, minor });
        self
    }
}

fn arch_map(arch: Arch, sub_arches: &[Arch]) -> ArchMapEntry {
    ArchMapEntry {
        arch,
        sub_arches: sub_arches.to_vec(),
    }
}

/// The default profile with its conditions unresolved.
pub(crate) fn template() -> Template {
    use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpGt as Gt, ScmpCmpLt as Lt};

    let mut rules = vec![
        allow(ALLOWED),
        // Before 4.8, a tracer could change a syscall after seccomp had checked it.
        allow(&["process_vm_readv", "process_vm_writev", "ptrace"]).since_kernel(4, 8),
        // Every socket family but AF_ALG (38) and AF_VSOCK (40). On 32-bit x86, socket() also
        // goes through socketcall(2), allowed above, whose arguments a filter cannot see.
        allow(&["socket"]).with_arg(0, Lt, AF_ALG as u64),
        allow(&["socket"]).with_arg(0, Eq, AF_ALG as u64 + 1),
        allow(&["socket"]).with_arg(0, Gt, AF_VSOCK as u64),
    ];
    rules.extend(
        PERSONALITIES
            .iter()
            .map(|&persona| allow(&["personality"]).with_arg(0, Eq, persona)),
    );
    rules.extend([
        allow(&["sync_file_range2", "swapcontext"]).only_on(&["ppc64le"]),
        allow(&[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ])
        .only_on(&["arm", "arm64"]),
        allow(&["arch_prctl"]).only_on(&["amd64", "x32"]),
        allow(&["modify_ldt"]).only_on(&["amd64", "x32", "x86"]),
        allow(&[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ])
        .only_on(&["s390", "s390x"]),
        allow(&["riscv_flush_icache"]).only_on(&["riscv64"]),
        allow(&["open_by_handle_at"]).only_with_cap("CAP_DAC_READ_SEARCH"),
        allow(SYS_ADMIN).only_with_cap("CAP_SYS_ADMIN"),
        allow(&["clone"])
            .with_masked_eq(0, CLONE_NAMESPACE_FLAGS, 0)
            .unless_cap("CAP_SYS_ADMIN")
            .except_on(&["s390", "s390x"]),
        // s390 passes clone's flags as the second argument.
        allow(&["clone"])
            .with_masked_eq(1, CLONE_NAMESPACE_FLAGS, 0)
            .only_on(&["s390", "s390x"])
            .unless_cap("CAP_SYS_ADMIN"),
        Rule::new(&["clone3"], LinuxSeccompAction::ScmpActErrno)
            .with_errno(ENOSYS)
            .unless_cap("CAP_SYS_ADMIN"),
        allow(&["reboot"]).only_with_cap("CAP_SYS_BOOT"),
        allow(&["chroot"]).only_with_cap("CAP_SYS_CHROOT"),
        allow(&["delete_module", "init_module", "finit_module"]).only_with_cap("CAP_SYS_MODULE"),
        allow(&["acct"]).only_with_cap("CAP_SYS_PACCT"),
        allow(&[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ])
        .only_with_cap("CAP_SYS_PTRACE"),
        allow(&["iopl", "ioperm"]).only_with_cap("CAP_SYS_RAWIO"),
        allow(&["settimeofday", "stime", "clock_settime", "clock_settime64"])
            .only_with_cap("CAP_SYS_TIME"),
        allow(&["vhangup"]).only_with_cap("CAP_SYS_TTY_CONFIG"),
        allow(&[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ])
        .only_with_cap("CAP_SYS_NICE"),
        allow(&["syslog"]).only_with_cap("CAP_SYSLOG"),
        allow(&["bpf"]).only_with_cap("CAP_BPF"),
        allow(&["perf_event_open"]).only_with_cap("CAP_PERFMON"),
    ]);

    Template {
        default_action: LinuxSeccompAction::ScmpActErrno,
        default_errno_ret: Some(EPERM as u32),
        arch_map: vec![
            arch_map(
                Arch::ScmpArchX86_64,
                &[Arch::ScmpArchX86, Arch::ScmpArchX32],
            ),
            arch_map(Arch::ScmpArchAarch64, &[Arch::ScmpArchArm]),
            arch_map(
                Arch::ScmpArchMips64,
                &[Arch::ScmpArchMips, Arch::ScmpArchMips64n32],
            ),
            arch_map(
                Arch::ScmpArchMips64n32,
                &[Arch::ScmpArchMips, Arch::ScmpArchMips64],
            ),
            arch_map(
                Arch::ScmpArchMipsel64,
                &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64n32],
            ),
            arch_map(
                Arch::ScmpArchMipsel64n32,
                &[Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64],
            ),
            arch_map(Arch::ScmpArchS390x, &[Arch::ScmpArchS390]),
            arch_map(Arch::ScmpArchRiscv64, &[]),
        ],
        rules,
        ..Template::default()
    }
}

/// The default profile for a container whose bounding set holds `capabilities`
/// ("CAP_SYS_ADMIN"; the `CAP_` prefix and case are optional), on this host: Docker's default
/// profile, resolved the way Docker resolves it.
///
/// - Default action `SCMP_ACT_ERRNO` with EPERM; on x86_64 the filter also covers the x86 and
///   x32 ABIs, on aarch64 the arm ABI (Docker's `archMap`).
/// - About 360 syscalls allowed unconditionally; `socket` for every family but AF_ALG and
///   AF_VSOCK; `personality` only with PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32
///   or the query 0xffffffff; `clone` only without namespace flags and `clone3` failing with
///   ENOSYS, unless `CAP_SYS_ADMIN`;
///   `ptrace`/`process_vm_*` from kernel 4.8 on; `arch_prctl`/`modify_ldt` on x86,
///   `arm_fadvise64_64`, `cacheflush`, `set_tls`… on arm.
/// - Syscalls allowed only with a capability: `CAP_SYS_ADMIN` (mount, umount2, unshare,
///   setns, sethostname, bpf, perf_event_open, …), `CAP_SYS_PTRACE` (kcmp, pidfd_getfd,
///   process_madvise, ptrace, …), `CAP_SYS_MODULE`, `CAP_SYS_TIME`, `CAP_SYS_BOOT`,
///   `CAP_SYSLOG`, `CAP_SYS_NICE`, `CAP_SYS_PACCT`, `CAP_SYS_RAWIO`, `CAP_SYS_CHROOT`,
///   `CAP_SYS_TTY_CONFIG`, `CAP_DAC_READ_SEARCH`, `CAP_BPF`, `CAP_PERFMON`.
///
/// Names the linked libseccomp cannot resolve on any architecture of the filter (syscalls newer
/// than it, such as `mseal` with libseccomp 2.5) are left out, with a debug log: they fall to
/// the default action, as with runc, which skips names it cannot resolve. So the result always
/// passes [`validate`](super::validate).
pub fn default_profile(capabilities: &[&str]) -> LinuxSeccomp {
    resolve(&Environment::current(capabilities))
}

/// The default profile for `env`, with the names libseccomp cannot place left out.
pub(crate) fn resolve(env: &Environment) -> LinuxSeccomp {
    let mut seccomp = template().resolve(env);
    let arches = arch::filter_arches(&seccomp);
    let rules: Vec<LinuxSyscall> = seccomp
        .syscalls()
        .iter()
        .flatten()
        .filter_map(|rule| {
            let names: Vec<String> = rule
                .names()
                .iter()
                .filter(|name| placeable(name, &arches))
                .cloned()
                .collect();
            let mut rule = rule.clone();
            rule.set_names(names);
            (!rule.names().is_empty()).then_some(rule)
        })
        .collect();
    seccomp.set_syscalls(Some(rules));
    seccomp
}

fn placeable(name: &str, arches: &[FilterArch]) -> bool {
    let known = arches.iter().any(|a| arch::known_on(name, a.scmp));
    if !known {
        tracing::debug!(
            syscall = name,
            libseccomp = %arch::libseccomp_version(),
            "default seccomp profile: syscall unknown to libseccomp, left to the default action"
        );
    }
    known
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use oci_spec::runtime::LinuxSeccompArg;

    use super::*;
    use crate::seccomp::{build_filter, validate};

    const KERNEL_6_1: Option<KernelVersion> = Some(KernelVersion { major: 6, minor: 1 });

    fn x86_64(caps: &[&str]) -> LinuxSeccomp {
        resolve(&Environment::new(Arch::ScmpArchX86_64, caps, KERNEL_6_1))
    }

    fn aarch64(caps: &[&str]) -> LinuxSeccomp {
        resolve(&Environment::new(Arch::ScmpArchAarch64, caps, KERNEL_6_1))
    }

    /// The rules that mention `name`.
    fn rules_for<'a>(seccomp: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.names().iter().any(|n| n == name))
            .collect()
    }

    /// Whether `name` has an ALLOW rule without argument conditions.
    fn allowed(seccomp: &LinuxSeccomp, name: &str) -> bool {
        rules_for(seccomp, name).iter().any(|rule| {
            rule.action() == LinuxSeccompAction::ScmpActAllow
                && rule.args().as_ref().is_none_or(Vec::is_empty)
        })
    }

    fn args(rule: &LinuxSyscall) -> Vec<(usize, LinuxSeccompOperator, u64, Option<u64>)> {
        rule.args()
            .iter()
            .flatten()
            .map(|a: &LinuxSeccompArg| (a.index(), a.op(), a.value(), a.value_two()))
            .collect()
    }

    /// Every capability the default profile has a condition on.
    const ALL_CAPS: &[&str] = &[
        "CAP_DAC_READ_SEARCH",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_CHROOT",
        "CAP_SYS_MODULE",
        "CAP_SYS_PACCT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_SYS_NICE",
        "CAP_SYSLOG",
        "CAP_BPF",
        "CAP_PERFMON",
    ];

    #[test]
    fn default_action_is_eperm_and_arches_follow_docker_arch_map() {
        let seccomp = x86_64(&[]);
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        assert_eq!(
            seccomp.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(
            aarch64(&[]).architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        assert_eq!(seccomp.flags(), &None);
        assert_eq!(seccomp.listener_path(), &None);
    }

    #[test]
    fn ordinary_syscalls_are_allowed_unconditionally() {
        let seccomp = x86_64(&[]);
        for name in [
            "read",
            "write",
            "openat",
            "close",
            "mmap",
            "mprotect",
            "futex",
            "execve",
            "getpid",
            "clock_gettime",
            "exit_group",
            "rt_sigaction",
            "epoll_pwait",
            "io_submit",
            "chown32",
            "socketcall",
            "arch_prctl",
            "modify_ldt",
            "ptrace",
            "process_vm_readv",
        ] {
            assert!(allowed(&seccomp, name), "{name} is not allowed");
        }
        // Docker dropped io_uring from its default profile.
        assert!(rules_for(&seccomp, "io_uring_setup").is_empty());
        let count: usize = seccomp
            .syscalls()
            .iter()
            .flatten()
            .map(|r| r.names().len())
            .sum();
        assert!(count > 350, "only {count} names in the default profile");
    }

    #[test]
    fn privileged_syscalls_need_their_capability() {
        let groups: &[(&str, &[&str])] = &[
            (
                "CAP_SYS_ADMIN",
                &[
                    "mount",
                    "umount2",
                    "unshare",
                    "setns",
                    "sethostname",
                    "setdomainname",
                    "fsopen",
                    "open_tree",
                    "move_mount",
                    "quotactl",
                    "bpf",
                    "perf_event_open",
                    "syslog",
                    "fanotify_init",
                ],
            ),
            (
                "CAP_SYS_PTRACE",
                &["kcmp", "pidfd_getfd", "process_madvise"],
            ),
            (
                "CAP_SYS_MODULE",
                &["init_module", "finit_module", "delete_module"],
            ),
            ("CAP_SYS_TIME", &["settimeofday", "clock_settime", "stime"]),
            ("CAP_SYS_BOOT", &["reboot"]),
            ("CAP_SYSLOG", &["syslog"]),
            ("CAP_SYS_NICE", &["mbind", "set_mempolicy", "get_mempolicy"]),
            ("CAP_SYS_PACCT", &["acct"]),
            ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
            ("CAP_SYS_CHROOT", &["chroot"]),
            ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
            ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
            ("CAP_BPF", &["bpf"]),
            ("CAP_PERFMON", &["perf_event_open"]),
        ];
        let without = x86_64(&[]);
        for &(cap, names) in groups {
            let with = x86_64(&[cap]);
            for &name in names {
                assert!(
                    rules_for(&without, name).is_empty(),
                    "{name} has a rule without {cap}"
                );
                assert!(allowed(&with, name), "{name} is not allowed with {cap}");
            }
        }
        // Capability names are normalised.
        assert!(allowed(&x86_64(&["sys_admin"]), "mount"));
    }

    #[test]
    fn clone_without_cap_sys_admin_is_limited_to_no_namespace_flags() {
        assert_eq!(CLONE_NAMESPACE_FLAGS, 2_114_060_288, "Docker's clone mask");
        let seccomp = x86_64(&[]);
        let clone = rules_for(&seccomp, "clone");
        assert_eq!(clone.len(), 1, "{clone:#?}");
        assert_eq!(clone[0].action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            args(clone[0]),
            [(
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
                CLONE_NAMESPACE_FLAGS,
                Some(0)
            )]
        );
        let clone3 = rules_for(&seccomp, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(libc::ENOSYS as u32));

        let admin = x86_64(&["CAP_SYS_ADMIN"]);
        assert!(allowed(&admin, "clone") && allowed(&admin, "clone3"));
        assert!(
            rules_for(&admin, "clone3")
                .iter()
                .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
        );
        assert!(
            rules_for(&admin, "clone")
                .iter()
                .all(|r| r.args().is_none())
        );
    }

    #[test]
    fn personality_and_socket_are_allowed_only_with_listed_arguments() {
        use LinuxSeccompOperator::{ScmpCmpEq as Eq, ScmpCmpGt as Gt, ScmpCmpLt as Lt};
        let seccomp = x86_64(&[]);
        let personality: Vec<_> = rules_for(&seccomp, "personality")
            .into_iter()
            .map(args)
            .collect();
        let expected: Vec<_> = [0, 8, 0x20000, 0x20008, 0xffff_ffff]
            .iter()
            .map(|&v| vec![(0, Eq, v, None)])
            .collect();
        assert_eq!(personality, expected);

        let socket: Vec<_> = rules_for(&seccomp, "socket")
            .into_iter()
            .map(args)
            .collect();
        assert_eq!(
            socket,
            [
                vec![(0, Lt, 38, None)],
                vec![(0, Eq, 39, None)],
                vec![(0, Gt, 40, None)]
            ]
        );
    }

    #[test]
    fn arch_specific_rules_follow_the_native_arch() {
        let x86 = x86_64(&[]);
        let arm = aarch64(&[]);
        for name in [
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "cacheflush",
            "set_tls",
        ] {
            assert!(rules_for(&x86, name).is_empty(), "{name} on x86_64");
            assert!(allowed(&arm, name), "{name} not on aarch64");
        }
        for name in ["arch_prctl", "modify_ldt"] {
            assert!(rules_for(&arm, name).is_empty(), "{name} on aarch64");
        }
        assert!(rules_for(&x86, "s390_runtime_instr").is_empty());
        assert!(rules_for(&x86, "riscv_flush_icache").is_empty());
    }

    #[test]
    fn ptrace_needs_cap_sys_ptrace_before_kernel_4_8() {
        let old = resolve(&Environment::new(
            Arch::ScmpArchX86_64,
            &[],
            Some(KernelVersion { major: 4, minor: 4 }),
        ));
        assert!(rules_for(&old, "ptrace").is_empty());
        let old_traced = resolve(&Environment::new(
            Arch::ScmpArchX86_64,
            &["CAP_SYS_PTRACE"],
            Some(KernelVersion { major: 4, minor: 4 }),
        ));
        assert!(allowed(&old_traced, "ptrace"));
    }

    #[test]
    fn names_libseccomp_cannot_resolve_are_left_out() {
        let seccomp = x86_64(&["CAP_SYS_ADMIN"]);
        let arches = arch::filter_arches(&seccomp);
        for name in [
            "mseal",
            "uretprobe",
            "lsm_list_modules",
            "fchmodat2",
            "futex_waitv",
        ] {
            let resolvable = arches.iter().any(|a| arch::known_on(name, a.scmp));
            assert_eq!(
                !rules_for(&seccomp, name).is_empty(),
                resolvable,
                "{name}: in the profile must mean libseccomp resolves it"
            );
        }
        // ...but names that exist only on a sub-architecture stay.
        assert!(allowed(&seccomp, "chown32") && allowed(&seccomp, "_llseek"));
    }

    #[test]
    fn every_variant_validates_and_builds_on_this_machine() {
        for seccomp in [
            default_profile(&[]),
            default_profile(ALL_CAPS),
            x86_64(&[]),
            x86_64(ALL_CAPS),
            aarch64(&[]),
            aarch64(ALL_CAPS),
        ] {
            validate(&seccomp).unwrap();
            let ctx = build_filter(&seccomp).unwrap();
            // Generate the BPF program too: libseccomp reports some conflicts only then.
            ctx.export_bpf(std::fs::File::create("/dev/null").unwrap())
                .unwrap();
        }
    }
}
