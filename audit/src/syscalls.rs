//! What berth knows about individual syscalls on x86_64: their numbers (from libseccomp, the
//! table the runtime's seccomp filters use too, so audit rules and deny rules can never
//! disagree about what `openat` is), which arguments are worth capturing, and the flag
//! families rules may match on.
//!
//! Argument indexes are x86_64 syscall argument positions (`rdi, rsi, rdx, r10, r8, r9` =
//! 0..=5), which is what the `raw_syscalls:sys_enter` tracepoint and seccomp both see. They
//! are *not* always the libc wrapper's argument order (e.g. `clone`'s on x86_64 differs from
//! glibc's `clone()`; berth follows the kernel's).

use std::sync::OnceLock;

use libseccomp::{ScmpArch, ScmpSyscall};

/// The set of names a flags argument takes; every name resolves to a fixed Linux x86_64 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlagFamily {
    /// `O_*`: `open`, `openat`, `openat2` (`struct open_how.flags`).
    Open,
    /// `CLONE_*`: `clone`, `clone3` (`struct clone_args.flags`), `unshare`, `setns`.
    Clone,
    /// `MS_*`: `mount`.
    Mount,
    /// `MNT_FORCE`, `MNT_DETACH`, `MNT_EXPIRE`, `UMOUNT_NOFOLLOW`: `umount2`.
    Umount,
    /// `SOCK_NONBLOCK`, `SOCK_CLOEXEC`: `accept4`.
    Sock,
    /// `MODULE_INIT_*`: `finit_module`.
    ModuleInit,
    /// `MFD_*`: `memfd_create`.
    Memfd,
}

impl FlagFamily {
    /// Every family, for looking a name up in the wrong one (to say where it belongs).
    pub const ALL: [FlagFamily; 7] = [
        FlagFamily::Open,
        FlagFamily::Clone,
        FlagFamily::Mount,
        FlagFamily::Umount,
        FlagFamily::Sock,
        FlagFamily::ModuleInit,
        FlagFamily::Memfd,
    ];

    /// How messages and docs name the family: `O_*`.
    pub fn describe(self) -> &'static str {
        match self {
            FlagFamily::Open => "O_*",
            FlagFamily::Clone => "CLONE_*",
            FlagFamily::Mount => "MS_*",
            FlagFamily::Umount => "MNT_*/UMOUNT_NOFOLLOW",
            FlagFamily::Sock => "SOCK_*",
            FlagFamily::ModuleInit => "MODULE_INIT_*",
            FlagFamily::Memfd => "MFD_*",
        }
    }

    fn flags(self) -> &'static [Flag] {
        match self {
            FlagFamily::Open => OPEN,
            FlagFamily::Clone => CLONE,
            FlagFamily::Mount => MOUNT,
            FlagFamily::Umount => UMOUNT,
            FlagFamily::Sock => SOCK,
            FlagFamily::ModuleInit => MODULE_INIT,
            FlagFamily::Memfd => MEMFD,
        }
    }
}

/// One named flag.
struct Flag {
    name: &'static str,
    /// The value as the headers define it (what `flag_names` renders and `flag_value` returns).
    value: u64,
    /// The bits a rule tests for "this flag is set". Equal to `value` except for the two
    /// multi-bit `O_*` flags: `O_SYNC` is `__O_SYNC | O_DSYNC` and `O_TMPFILE` is
    /// `__O_TMPFILE | O_DIRECTORY`; rules match "any listed bit set", so testing every bit of
    /// `O_TMPFILE` would also match every `O_DIRECTORY` open. The distinguishing bit alone is
    /// exact: the kernel refuses `__O_TMPFILE` without `O_DIRECTORY` and treats `__O_SYNC`
    /// as implying `O_DSYNC`.
    test: u64,
}

const fn flag(name: &'static str, value: u64) -> Flag {
    Flag {
        name,
        value,
        test: value,
    }
}

/// `O_*`, from `asm-generic/fcntl.h` (x86_64 uses the generic values).
const OPEN: &[Flag] = &[
    // The access mode is a 2-bit number in bits 0-1, not a set of bits: read-only is 0.
    flag("O_RDONLY", 0),
    flag("O_WRONLY", 0o1),
    flag("O_RDWR", 0o2),
    flag("O_CREAT", 0o100),
    flag("O_EXCL", 0o200),
    flag("O_NOCTTY", 0o400),
    flag("O_TRUNC", 0o1000),
    flag("O_APPEND", 0o2000),
    flag("O_NONBLOCK", 0o4000),
    flag("O_DSYNC", 0o10000),
    flag("O_DIRECT", 0o40000),
    // The kernel's value; glibc defines O_LARGEFILE as 0 on 64-bit targets.
    flag("O_LARGEFILE", 0o100000),
    flag("O_DIRECTORY", 0o200000),
    flag("O_NOFOLLOW", 0o400000),
    flag("O_NOATIME", 0o1000000),
    flag("O_CLOEXEC", 0o2000000),
    Flag {
        name: "O_SYNC",
        value: 0o4010000,
        test: 0o4000000, // __O_SYNC
    },
    flag("O_PATH", 0o10000000),
    Flag {
        name: "O_TMPFILE",
        value: 0o20200000,
        test: 0o20000000, // __O_TMPFILE
    },
];

/// `CLONE_*`, from `linux/sched.h`.
const CLONE: &[Flag] = &[
    flag("CLONE_NEWTIME", 0x80),
    flag("CLONE_VM", 0x100),
    flag("CLONE_FS", 0x200),
    flag("CLONE_FILES", 0x400),
    flag("CLONE_SIGHAND", 0x800),
    flag("CLONE_PIDFD", 0x1000),
    flag("CLONE_PTRACE", 0x2000),
    flag("CLONE_VFORK", 0x4000),
    flag("CLONE_PARENT", 0x8000),
    flag("CLONE_THREAD", 0x10000),
    flag("CLONE_NEWNS", 0x20000),
    flag("CLONE_SYSVSEM", 0x40000),
    flag("CLONE_SETTLS", 0x80000),
    flag("CLONE_PARENT_SETTID", 0x100000),
    flag("CLONE_CHILD_CLEARTID", 0x200000),
    flag("CLONE_UNTRACED", 0x800000),
    flag("CLONE_CHILD_SETTID", 0x1000000),
    flag("CLONE_NEWCGROUP", 0x2000000),
    flag("CLONE_NEWUTS", 0x4000000),
    flag("CLONE_NEWIPC", 0x8000000),
    flag("CLONE_NEWUSER", 0x10000000),
    flag("CLONE_NEWPID", 0x20000000),
    flag("CLONE_NEWNET", 0x40000000),
    flag("CLONE_IO", 0x80000000),
    flag("CLONE_CLEAR_SIGHAND", 1 << 32),
    flag("CLONE_INTO_CGROUP", 1 << 33),
];

/// `MS_*`, from `linux/mount.h`.
const MOUNT: &[Flag] = &[
    flag("MS_RDONLY", 1),
    flag("MS_NOSUID", 2),
    flag("MS_NODEV", 4),
    flag("MS_NOEXEC", 8),
    flag("MS_SYNCHRONOUS", 16),
    flag("MS_REMOUNT", 32),
    flag("MS_MANDLOCK", 64),
    flag("MS_DIRSYNC", 128),
    flag("MS_NOSYMFOLLOW", 256),
    flag("MS_NOATIME", 1024),
    flag("MS_NODIRATIME", 2048),
    flag("MS_BIND", 4096),
    flag("MS_MOVE", 8192),
    flag("MS_REC", 16384),
    flag("MS_SILENT", 32768),
    flag("MS_UNBINDABLE", 1 << 17),
    flag("MS_PRIVATE", 1 << 18),
    flag("MS_SLAVE", 1 << 19),
    flag("MS_SHARED", 1 << 20),
    flag("MS_RELATIME", 1 << 21),
    flag("MS_STRICTATIME", 1 << 24),
    flag("MS_LAZYTIME", 1 << 25),
];

/// `umount2` flags, from `sys/mount.h`.
const UMOUNT: &[Flag] = &[
    flag("MNT_FORCE", 1),
    flag("MNT_DETACH", 2),
    flag("MNT_EXPIRE", 4),
    flag("UMOUNT_NOFOLLOW", 8),
];

/// `accept4` flags, from `bits/socket_type.h` (the same bits as `O_NONBLOCK`/`O_CLOEXEC`).
const SOCK: &[Flag] = &[
    flag("SOCK_NONBLOCK", 0o4000),
    flag("SOCK_CLOEXEC", 0o2000000),
];

/// `finit_module` flags, from `linux/module.h`.
const MODULE_INIT: &[Flag] = &[
    flag("MODULE_INIT_IGNORE_MODVERSIONS", 1),
    flag("MODULE_INIT_IGNORE_VERMAGIC", 2),
    flag("MODULE_INIT_COMPRESSED_FILE", 4),
];

/// `memfd_create` flags, from `linux/memfd.h` (`MFD_NOEXEC_SEAL` and `MFD_EXEC` are Linux
/// 6.3+; older headers lack them, the values are fixed ABI).
const MEMFD: &[Flag] = &[
    flag("MFD_CLOEXEC", 1),
    flag("MFD_ALLOW_SEALING", 2),
    flag("MFD_HUGETLB", 4),
    flag("MFD_NOEXEC_SEAL", 8),
    flag("MFD_EXEC", 0x10),
];

/// The value of a flag name in `family` as the headers define it (`O_RDONLY` is 0, `O_SYNC`
/// is `__O_SYNC | O_DSYNC`), or None when the family has no such name.
pub fn flag_value(family: FlagFamily, name: &str) -> Option<u64> {
    family
        .flags()
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value)
}

/// Names of the flags set in `value`, for rendering events: multi-bit flags (`O_SYNC`,
/// `O_TMPFILE`) when all their bits are set, then single bits in ascending order; for `O_*`,
/// `O_RDONLY` when the access mode (bits 0-1) is 0. OR-ing the [`flag_value`]s of the
/// result gives back `value` minus [`unknown_flag_bits`].
pub fn flag_names(family: FlagFamily, value: u64) -> Vec<&'static str> {
    render(family, value).0
}

/// The bits of `value` that [`flag_names`] does not name (rendered as a number next to
/// them): bits no flag has, and part of a multi-bit flag without the rest (`__O_SYNC`).
pub fn unknown_flag_bits(family: FlagFamily, value: u64) -> u64 {
    render(family, value).1
}

fn render(family: FlagFamily, value: u64) -> (Vec<&'static str>, u64) {
    let flags = family.flags();
    let mut names = Vec::new();
    if family == FlagFamily::Open && value & 0o3 == 0 {
        names.push("O_RDONLY");
    }
    let mut rest = value;
    let multi = flags.iter().filter(|f| f.value.count_ones() > 1);
    let single = flags.iter().filter(|f| f.value.count_ones() == 1);
    for f in multi.chain(single) {
        if rest & f.value == f.value {
            names.push(f.name);
            rest &= !f.value;
        }
    }
    (names, rest)
}

/// Resolves one flag of a rule to the bits it tests, or a message saying why it cannot be
/// tested. Integers are taken as bits as they are.
pub(crate) fn flag_test_bits(family: FlagFamily, name: &str) -> Result<u64, String> {
    if let Some(f) = family.flags().iter().find(|f| f.name == name) {
        if f.test == 0 {
            return Err(format!(
                "{name} is 0 and cannot be tested as a bit: flags match calls with any of the \
                 listed bits set"
            ));
        }
        return Ok(f.test);
    }
    if let Some(other) = FlagFamily::ALL
        .into_iter()
        .find(|other| flag_value(*other, name).is_some())
    {
        let article = if other == FlagFamily::Open { "an" } else { "a" };
        return Err(format!(
            "{name:?} is {article} {} flag, not one of {}",
            other.describe(),
            family.describe()
        ));
    }
    let names = family.flags().iter().map(|f| f.name);
    Err(format!(
        "unknown {} flag {name:?}{}",
        family.describe(),
        did_you_mean(name, names)
    ))
}

/// A syscall's flags argument.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlagsArg {
    pub(crate) arg: u8,
    pub(crate) family: FlagFamily,
    /// The argument points to this struct, whose first `u64` holds the flags: the kernel
    /// side must read user memory, and seccomp cannot match them at all.
    pub(crate) in_struct: Option<&'static str>,
    /// The bits the argument can carry as flags (an `int` argument only 32; see `note`).
    pub(crate) bits: u64,
    /// Why some bits cannot be flags, for messages.
    pub(crate) note: &'static str,
}

/// What berth captures for one syscall. Syscalls not in [`TABLE`] capture nothing beyond
/// their number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) path: Option<u8>,
    pub(crate) argv: Option<u8>,
    pub(crate) addr: Option<u8>,
    pub(crate) addr_at_exit: bool,
    pub(crate) flags: Option<FlagsArg>,
    pub(crate) no_return: bool,
}

const fn spec(name: &'static str) -> Spec {
    Spec {
        name,
        path: None,
        argv: None,
        addr: None,
        addr_at_exit: false,
        flags: None,
        no_return: false,
    }
}

const U32: u64 = u32::MAX as u64;

impl Spec {
    const fn path(mut self, arg: u8) -> Self {
        self.path = Some(arg);
        self
    }
    const fn argv(mut self, arg: u8) -> Self {
        self.argv = Some(arg);
        self
    }
    const fn addr(mut self, arg: u8) -> Self {
        self.addr = Some(arg);
        self
    }
    /// The sockaddr is an output: it is only filled when the call returns.
    const fn addr_out(mut self, arg: u8) -> Self {
        self.addr = Some(arg);
        self.addr_at_exit = true;
        self
    }
    const fn flags(mut self, arg: u8, family: FlagFamily, bits: u64) -> Self {
        self.flags = Some(FlagsArg {
            arg,
            family,
            in_struct: None,
            bits,
            note: "",
        });
        self
    }
    const fn flags_in(mut self, arg: u8, family: FlagFamily, strukt: &'static str) -> Self {
        self.flags = Some(FlagsArg {
            arg,
            family,
            in_struct: Some(strukt),
            bits: u64::MAX,
            note: "",
        });
        self
    }
    const fn no_return(mut self) -> Self {
        self.no_return = true;
        self
    }
}

/// The syscalls whose arguments matter to audit rules. x86_64 argument positions.
pub(crate) const TABLE: &[Spec] = &[
    // Programs run.
    spec("execve").path(0).argv(1),
    spec("execveat").path(1).argv(2),
    // Files opened (flags: `int`, so 32 bits; `open_how.flags` is a u64).
    spec("open").path(0).flags(1, FlagFamily::Open, U32),
    spec("openat").path(1).flags(2, FlagFamily::Open, U32),
    spec("openat2")
        .path(1)
        .flags_in(2, FlagFamily::Open, "struct open_how"),
    spec("creat").path(0),
    // Network.
    spec("connect").addr(1),
    spec("bind").addr(1),
    spec("sendto").addr(4),
    spec("recvfrom").addr_out(4),
    spec("accept").addr_out(1),
    spec("accept4").addr_out(1).flags(3, FlagFamily::Sock, U32),
    spec("getpeername").addr_out(1),
    spec("getsockname").addr_out(1),
    // Mounts (`mount` flags are an `unsigned long`; the path is the target).
    spec("mount").path(1).flags(3, FlagFamily::Mount, u64::MAX),
    spec("umount2").path(0).flags(1, FlagFamily::Umount, U32),
    spec("pivot_root").path(0),
    spec("chroot").path(0),
    // Namespaces and processes. `unshare` takes an `unsigned long`, `setns` an `int`.
    spec("unshare").flags(0, FlagFamily::Clone, u64::MAX),
    spec("setns").flags(1, FlagFamily::Clone, U32),
    Spec {
        flags: Some(FlagsArg {
            arg: 0,
            family: FlagFamily::Clone,
            in_struct: None,
            bits: 0xffff_ff00,
            note: " (bits 0-7 are the exit signal and the upper 32 bits are ignored: \
                   CLONE_NEWTIME, CLONE_CLEAR_SIGHAND and CLONE_INTO_CGROUP need clone3)",
        }),
        ..spec("clone")
    },
    spec("clone3").flags_in(0, FlagFamily::Clone, "struct clone_args"),
    spec("fork"),
    spec("vfork"),
    spec("ptrace"),
    spec("kill"),
    spec("tkill"),
    spec("tgkill"),
    spec("exit").no_return(),
    spec("exit_group").no_return(),
    // Kernel extension.
    spec("init_module"),
    spec("finit_module").flags(2, FlagFamily::ModuleInit, U32),
    spec("delete_module"),
    spec("bpf"),
    // Memory-backed files (a common way to run a binary that never touched the disk).
    spec("memfd_create").flags(1, FlagFamily::Memfd, U32),
    // Permissions and ownership.
    spec("chmod").path(0),
    spec("fchmod"),
    spec("fchmodat").path(1),
    spec("fchmodat2").path(1),
    spec("chown").path(0),
    spec("lchown").path(0),
    spec("fchown"),
    spec("fchownat").path(1),
    // Credentials.
    spec("setuid"),
    spec("setgid"),
    spec("setreuid"),
    spec("setregid"),
    spec("setresuid"),
    spec("setresgid"),
    spec("setfsuid"),
    spec("setfsgid"),
    // File system changes. Two-path calls capture the path that is created or removed
    // where there is one (the link's own path for link/symlink), else the source.
    spec("unlink").path(0),
    spec("unlinkat").path(1),
    spec("rename").path(0),
    spec("renameat").path(1),
    spec("renameat2").path(1),
    spec("mkdir").path(0),
    spec("mkdirat").path(1),
    spec("rmdir").path(0),
    spec("symlink").path(1),
    spec("symlinkat").path(2),
    spec("link").path(1),
    spec("linkat").path(3),
    spec("truncate").path(0),
    spec("chdir").path(0),
    spec("mknod").path(0),
    spec("mknodat").path(1),
];

/// The table entry for `name`, if berth knows the syscall's arguments.
pub(crate) fn spec_of(name: &str) -> Option<&'static Spec> {
    TABLE.iter().find(|s| s.name == name)
}

/// What to capture for a syscall, for the kernel side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Capture {
    /// Argument holding a NUL-terminated path (read at entry).
    pub path_arg: Option<u8>,
    /// Argument holding a NULL-terminated `char *argv[]` (read at entry).
    pub argv_arg: Option<u8>,
    /// Argument pointing to a `struct sockaddr`.
    pub addr_arg: Option<u8>,
    /// The sockaddr is an output, valid only at syscall exit (`accept`, `getpeername`...).
    pub addr_at_exit: bool,
    /// Argument holding the flags (or, with `flags_in_struct`, pointing to them).
    pub flags_arg: Option<u8>,
    /// The flags are the first `u64` of the struct `flags_arg` points to (`openat2`'s
    /// `struct open_how`, `clone3`'s `struct clone_args`).
    pub flags_in_struct: bool,
    /// The call does not return (`exit`, `exit_group`): there is no exit event to wait for.
    pub no_return: bool,
    /// How to name the flags' bits ([`flag_names`]).
    pub flags_family: Option<FlagFamily>,
}

impl Capture {
    /// The capture for syscall number `nr` on x86_64 (nothing for syscalls berth has no
    /// argument knowledge of).
    pub fn of(nr: u32) -> Capture {
        syscall_name(nr)
            .as_deref()
            .and_then(spec_of)
            .map(Capture::from)
            .unwrap_or_default()
    }
}

impl From<&Spec> for Capture {
    fn from(s: &Spec) -> Capture {
        Capture {
            path_arg: s.path,
            argv_arg: s.argv,
            addr_arg: s.addr,
            addr_at_exit: s.addr_at_exit,
            flags_arg: s.flags.map(|f| f.arg),
            flags_in_struct: s.flags.is_some_and(|f| f.in_struct.is_some()),
            no_return: s.no_return,
            flags_family: s.flags.map(|f| f.family),
        }
    }
}

/// How libseccomp resolves a name on x86_64.
pub(crate) enum Resolved {
    Nr(u32),
    /// A name libseccomp knows from other architectures (`socketcall`): a negative
    /// pseudo-number on x86_64, which no process can call.
    Pseudo,
    Unknown,
}

pub(crate) fn resolve(name: &str) -> Resolved {
    match ScmpSyscall::from_name_by_arch(name, ScmpArch::X8664) {
        Ok(s) => u32::try_from(s.as_raw_syscall()).map_or(Resolved::Pseudo, Resolved::Nr),
        Err(_) => Resolved::Unknown,
    }
}

/// The x86_64 number of syscall `name`; None for names libseccomp does not know and for
/// syscalls that do not exist on x86_64.
pub fn syscall_number(name: &str) -> Option<u32> {
    match resolve(name) {
        Resolved::Nr(nr) => Some(nr),
        Resolved::Pseudo | Resolved::Unknown => None,
    }
}

/// The name of x86_64 syscall number `nr`, if libseccomp knows it.
pub fn syscall_name(nr: u32) -> Option<String> {
    let raw = i32::try_from(nr).ok()?;
    ScmpSyscall::from_raw_syscall(raw)
        .get_name_by_arch(ScmpArch::X8664)
        .ok()
}

/// Every syscall name libseccomp knows on x86_64, for suggestions. Built on first use (only
/// when a rule names an unknown syscall).
fn known_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    // x86_64 numbers are below 1024 (the x32 ABI's start at 0x40000000 and are not wanted).
    NAMES.get_or_init(|| (0..1024).filter_map(syscall_name).collect())
}

/// ` (did you mean "openat"?)` for an unknown syscall name, or nothing.
pub(crate) fn suggest_syscall(name: &str) -> String {
    // Names berth has argument knowledge of first: they are what audit rules are about.
    let table = TABLE
        .iter()
        .map(|s| s.name)
        .filter(|n| syscall_number(n).is_some());
    let known = known_names().iter().map(String::as_str);
    did_you_mean(name, table.chain(known))
}

/// ` (did you mean "X"?)` with the closest candidate, if it is close enough to be a typo;
/// ties go to a candidate the input is a prefix of (a truncated name), then to the earliest.
fn did_you_mean<'a>(input: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = 1 + input.chars().count() / 4;
    candidates
        .map(|c| (edit_distance(input, c), !c.starts_with(input), c))
        .filter(|(d, _, _)| *d <= limit)
        .min_by_key(|(d, not_prefix, _)| (*d, *not_prefix))
        .map(|(_, _, c)| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default()
}

/// Optimal string alignment distance: Levenshtein plus adjacent transpositions (`exceve`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
