//! Syscall auditing: the maps the `sys_*` tracepoint programs consult and the records they put
//! on the `AUDIT_EVENTS` ring.
//!
//! Decision path of a syscall entry (`sys_enter`, attached to `syscalls:sys_enter_<name>` for
//! every syscall some rule names):
//! 1. `AUDIT_TARGETS[bpf_get_current_cgroup_id()]` → [`AuditTarget`]. No entry: the caller is
//!    not in an audited container; nothing more happens.
//! 2. `AUDIT_SYSCALLS[{profile, nr}]` → [`AuditSyscall`]: the container's profile's plan for
//!    this syscall. No entry: not audited for this container.
//! 3. The plan's clauses whose flag mask matches the call's flags argument give the actions
//!    ([`ACT_COUNT`], [`ACT_RECORD`], [`ACT_KILL`]); with `path_rules`, the captured path is
//!    looked up (longest prefix) in `AUDIT_PATHS` for more clauses.
//! 4. Count: `AUDIT_COUNTS[{cgroup, nr}] += 1` (per CPU). Kill: SIGKILL to the caller and an
//!    event at once. Record: the capture waits in `AUDIT_INFLIGHT` for `sys_exit`, which adds
//!    the return value and emits it.
//!
//! `sys_enter_raw` (on `raw_syscalls:sys_enter`, attached only while some container counts
//! every syscall) does step 1 and counts for targets with [`TARGET_COUNT_ALL`].
//!
//! Process lifecycle (`sched:sched_process_{fork,exec,exit}`) is reported for targets with
//! [`TARGET_LIFECYCLE`] (those whose rules record or kill).
//!
//! Loss is never silent: a record that finds the ring full is counted in the per-CPU
//! `AUDIT_LOST`; a record that finds `AUDIT_INFLIGHT` full is emitted at entry without its
//! return value ([`EV_NO_RET`]).

/// Syscall numbers the kernel programs treat specially (x86_64: the only architecture berth's
/// data plane is built and tested for).
pub const SYS_EXECVE: u32 = 59;
pub const SYS_EXIT: u32 = 60;
pub const SYS_EXIT_GROUP: u32 = 231;
pub const SYS_EXECVEAT: u32 = 322;

/// Actions (bits of [`AuditClause::actions`] and [`AuditEvent::actions`]).
pub const ACT_COUNT: u32 = 1 << 0;
pub const ACT_RECORD: u32 = 1 << 1;
pub const ACT_KILL: u32 = 1 << 2;

/// [`AuditTarget::flags`]: count every syscall (through `sys_enter_raw`); the per-syscall
/// program then leaves counting to it.
pub const TARGET_COUNT_ALL: u32 = 1 << 0;
/// [`AuditTarget::flags`]: report the process lifecycle (fork, exec, exit) of this target: set
/// when its rules record or kill (events mode); a counts-only target gets no per-process work.
pub const TARGET_LIFECYCLE: u32 = 1 << 1;

/// Clauses per plan or path entry; unused ones have `actions == 0`.
pub const AUDIT_CLAUSES: usize = 4;
/// Bytes of a path prefix the `AUDIT_PATHS` trie can match on.
pub const AUDIT_PATH_MATCH_LEN: usize = 64;
/// Bytes of a captured path (with its NUL).
pub const AUDIT_PATH_LEN: usize = 256;
/// Bytes of argv a record carries (NUL-separated strings).
pub const AUDIT_ARGV_LEN: usize = 512;
/// Room for the last string read into the argv buffer (the verifier needs a constant bound).
pub const AUDIT_ARGV_SLACK: usize = 256;
/// Arguments of argv read at most.
pub const AUDIT_ARGV_MAX: u32 = 20;
/// Bytes of a captured socket address (`sockaddr_in6` is the largest berth decodes).
pub const AUDIT_ADDR_LEN: usize = 28;

/// "No argument" in the `*_arg` fields of [`AuditSyscall`].
pub const ARG_NONE: u8 = 0xff;

/// [`AuditSyscall::capture`] bits.
/// The flags argument is a pointer to a struct whose first u64 is the flags (openat2, clone3).
pub const CAP_FLAGS_IN_STRUCT: u8 = 1 << 0;
/// The address argument is filled by the kernel (accept, accept4, getpeername): read it at
/// exit, with its length from the `*socklen_t` argument after it.
pub const CAP_ADDR_AT_EXIT: u8 = 1 << 1;
/// The syscall never returns to its caller (exit, exit_group): emit at entry.
pub const CAP_NO_RETURN: u8 = 1 << 2;
/// Keep the process lifecycle informed (execve/execveat argv for the exec event, the exit
/// status of exit_group) even when no rule names the syscall.
pub const CAP_LIFECYCLE: u8 = 1 << 3;

/// Value of `AUDIT_TARGETS`, keyed by cgroup v2 id (`u64`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AuditTarget {
    /// The container's profile (its merged rules; containers with equal rules share one).
    pub profile: u32,
    /// `TARGET_*`.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<AuditTarget>() == 8);

/// Key of `AUDIT_SYSCALLS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditSyscallKey {
    pub profile: u32,
    /// Syscall number.
    pub nr: u32,
}
const _: () = assert!(core::mem::size_of::<AuditSyscallKey>() == 8);

/// One condition → actions pair: the clause applies when `flags_mask == 0` or the call's flags
/// argument has any bit of `flags_mask` set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AuditClause {
    pub flags_mask: u64,
    /// `ACT_*`; 0: unused slot.
    pub actions: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AuditClause>() == 16);

/// Value of `AUDIT_SYSCALLS`: a profile's plan for one syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AuditSyscall {
    /// Clauses that need no path match.
    pub clauses: [AuditClause; AUDIT_CLAUSES],
    /// Argument index (0-5) of the path to capture, or [`ARG_NONE`].
    pub path_arg: u8,
    /// Argument index of argv (`char *const *`), or [`ARG_NONE`].
    pub argv_arg: u8,
    /// Argument index of a `struct sockaddr *`, or [`ARG_NONE`].
    pub addr_arg: u8,
    /// Argument index of the flags the clauses test, or [`ARG_NONE`].
    pub flags_arg: u8,
    /// `CAP_*`.
    pub capture: u8,
    /// 1: `AUDIT_PATHS` holds clauses for this (profile, syscall): the path is always read.
    pub path_rules: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<AuditSyscall>() == 72);

/// Key data of the `AUDIT_PATHS` LPM trie (the trie's key is `{ prefix_len: u32, data }`):
/// `profile` and `nr` are always matched whole, so an entry's prefix length is
/// [`PATH_FIXED_BITS`] plus 8 × the bytes of its path prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AuditPathKey {
    pub profile: u32,
    pub nr: u32,
    pub path: [u8; AUDIT_PATH_MATCH_LEN],
}
const _: () = assert!(core::mem::size_of::<AuditPathKey>() == 72);

impl Default for AuditPathKey {
    fn default() -> Self {
        Self {
            profile: 0,
            nr: 0,
            path: [0; AUDIT_PATH_MATCH_LEN],
        }
    }
}

/// Bits of [`AuditPathKey`] before the path.
pub const PATH_FIXED_BITS: u32 = 64;

/// Value of `AUDIT_PATHS`: the clauses of every rule whose path prefix is a prefix of this
/// entry's (the agent folds shorter prefixes into longer ones, so the longest match is
/// complete).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AuditPathValue {
    pub clauses: [AuditClause; AUDIT_CLAUSES],
}
const _: () = assert!(core::mem::size_of::<AuditPathValue>() == 64);

/// Key of the per-CPU `AUDIT_COUNTS` hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuditCountKey {
    pub cgroup_id: u64,
    pub nr: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AuditCountKey>() == 16);

/// Record kinds on `AUDIT_EVENTS` ([`crate::events::EventHeader::kind`]).
pub const EVENT_SYSCALL: u16 = 2;
pub const EVENT_EXEC: u16 = 3;
pub const EVENT_EXIT: u16 = 4;
pub const EVENT_FORK: u16 = 5;

/// [`AuditEvent::flags`].
/// `ret` holds the syscall's return value.
pub const EV_HAS_RET: u32 = 1 << 0;
/// The path did not fit [`AUDIT_PATH_LEN`] and was cut.
pub const EV_PATH_TRUNCATED: u32 = 1 << 1;
/// argv did not fit (more bytes than [`AUDIT_ARGV_LEN`], an argument longer than
/// [`AUDIT_ARGV_SLACK`], or more than [`AUDIT_ARGV_MAX`] arguments).
pub const EV_ARGV_TRUNCATED: u32 = 1 << 2;
/// `path` holds a captured path.
pub const EV_PATH: u32 = 1 << 3;
/// `argv` holds captured arguments.
pub const EV_ARGV: u32 = 1 << 4;
/// `addr` holds a captured socket address (`addr_len` bytes).
pub const EV_ADDR: u32 = 1 << 5;
/// `AUDIT_INFLIGHT` was full: the record was emitted at entry, without the return value.
pub const EV_NO_RET: u32 = 1 << 6;
/// Exit: `code` holds the status the process passed to exit/exit_group.
pub const EV_EXIT_CODE: u32 = 1 << 7;
/// A path or argv string could not be read from the caller's memory.
pub const EV_READ_FAULT: u32 = 1 << 8;

/// Bytes of an [`AuditEvent`] up to `path`: records without strings (fork, exit, and syscalls
/// that capture none) are emitted this short.
pub const AUDIT_EVENT_FIXED: usize = core::mem::offset_of!(AuditEvent, path);
/// Bytes of an [`AuditEvent`] up to `argv`: records with a path and no argv are this long.
pub const AUDIT_EVENT_WITH_PATH: usize = core::mem::offset_of!(AuditEvent, argv);

/// A record on `AUDIT_EVENTS`. One layout for every kind, so that a syscall's capture can wait
/// in `AUDIT_INFLIGHT` as the record it becomes:
/// - `EVENT_SYSCALL`: `nr`, `args`, `ret` (with [`EV_HAS_RET`]), `actions` that fired, and the
///   captures its plan asked for;
/// - `EVENT_EXEC`: `path` = the executed file, `argv` from the execve that led to it, `args[0]`
///   = the pid before exec (a thread's exec takes the leader's);
/// - `EVENT_EXIT`: the whole process is gone; `code` with [`EV_EXIT_CODE`];
/// - `EVENT_FORK`: `args[0]` = the new task's id (`pid` is the parent).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AuditEvent {
    pub header: crate::events::EventHeader,
    pub cgroup_id: u64,
    /// `pid_tgid >> 32` (the process) and its low half (the thread).
    pub pid: u32,
    pub tid: u32,
    pub nr: u32,
    /// `ACT_*` that applied.
    pub actions: u32,
    pub args: [u64; 6],
    pub ret: i64,
    /// `EV_*`.
    pub flags: u32,
    /// Exit status (exit events).
    pub code: i32,
    /// Bytes of `argv` used (NULs included) and the arguments in it.
    pub argv_len: u16,
    pub argc: u16,
    pub addr_len: u16,
    /// Argument index of a `struct sockaddr *` the kernel fills (read at exit), or
    /// [`ARG_NONE`].
    pub exit_addr_arg: u8,
    pub _pad: u8,
    pub comm: [u8; 16],
    pub addr: [u8; 32],
    pub path: [u8; AUDIT_PATH_LEN],
    pub argv: [u8; AUDIT_ARGV_LEN + AUDIT_ARGV_SLACK],
}
const _: () = assert!(core::mem::size_of::<AuditEvent>() == 1192);

/// Per-CPU audit counters (`AUDIT_STATS`, indexed by this).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditStat {
    /// Syscall records emitted.
    Events = 0,
    /// SIGKILLs sent.
    Kills = 1,
    /// Records emitted at entry because `AUDIT_INFLIGHT` was full.
    InflightFull = 2,
    /// Counter updates that found `AUDIT_COUNTS` full (the call went uncounted).
    CountsFull = 3,
}

impl AuditStat {
    pub const COUNT: u32 = 4;
    pub const ALL: [AuditStat; 4] = [
        AuditStat::Events,
        AuditStat::Kills,
        AuditStat::InflightFull,
        AuditStat::CountsFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            AuditStat::Events => "events",
            AuditStat::Kills => "kills",
            AuditStat::InflightFull => "inflight_full",
            AuditStat::CountsFull => "counts_full",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, `Copy`, integers and integer arrays only, no implicit padding
    // (sizes asserted above): every bit pattern is a valid value. The same holds below.
    unsafe impl aya::Pod for super::AuditTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AuditSyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AuditSyscall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AuditPathKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AuditPathValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AuditCountKey {}
}
