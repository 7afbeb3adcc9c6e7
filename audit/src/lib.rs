//! berth's syscall audit rules: `AuditPolicy` documents in, per-container audit profiles out.
//!
//! The crate is pure: no kernel, no files. [`parse`] validates rule files; [`profile`]
//! merges the policies selecting one container into the [`Profile`] the agent loads into the
//! kernel (count, record and kill at the `sys_enter` tracepoint) and hands to the runtime
//! (deny, as seccomp rules at container start).
//!
//! ```text
//!  bytes ──parse──▶ Vec<AuditPolicy> ──profile(policies, container labels)──▶ Option<Profile>
//! ```
//!
//! # Rule files
//!
//! YAML, one or more documents separated by `---` (JSON works too: one object, or several
//! concatenated). Each document is one policy:
//!
//! ```yaml
//! apiVersion: berth.io/v1alpha1
//! kind: AuditPolicy
//! metadata:
//!   name: web-baseline          # required: 1-63 of [a-z0-9-], starting and ending with [a-z0-9]
//! spec:
//!   selector:                   # Kubernetes LabelSelector over container labels;
//!     matchLabels: {app: web}   # {} or absent = every container
//!   rules:
//!   - name: all-syscalls        # optional, for humans
//!     syscalls: ["*"]           # "*" = every syscall; only with action: count, alone, no match
//!     action: count
//!   - syscalls: [execve, execveat]
//!     action: record
//!   - syscalls: [openat, openat2]
//!     action: record
//!     match:
//!       pathPrefix: [/etc/, /root/]        # any of; absolute, no NUL, at most 64 bytes
//!       flags: [O_WRONLY, O_RDWR, O_CREAT] # any of these bits set; names or integers
//!   - syscalls: [unshare]
//!     match: {flags: [CLONE_NEWUSER]}
//!     action: kill
//!   - syscalls: [ptrace, bpf]
//!     action: deny
//! ```
//!
//! Unknown fields are errors everywhere (a misspelt `mach:` would otherwise silently widen a
//! rule to every call). `metadata` only has `name`; names are unique within one input.
//!
//! ## Syscalls
//!
//! Names as libseccomp knows them for x86_64 (the table the runtime's seccomp filters use);
//! names of other architectures' syscalls (`socketcall`) are refused. Every syscall may be
//! named; those berth knows the arguments of also get them in events (see
//! [`syscalls::Capture`]): paths (`execve`, `open*`, `creat`, `mount`, `unlink*`,
//! `rename*`, `chmod`...), `argv` (`execve`, `execveat`), socket addresses (`connect`,
//! `bind`, `sendto`; at exit for `accept`, `accept4`, `recvfrom`, `getpeername`,
//! `getsockname`) and flags.
//!
//! ## Actions
//!
//! * `count`: per-syscall counters; no event.
//! * `record`: one event per matching call.
//! * `kill`: SIGKILL at syscall entry, before the call runs, and an event.
//! * `deny`: the runtime adds a seccomp rule making the call fail with EPERM, at container
//!   start: policies applied later reach only new containers. Seccomp runs before the
//!   tracepoint, so denied calls are neither counted nor recorded.
//!
//! ## Matching arguments
//!
//! A rule without `match` matches every call of its syscalls. With `match`, a call must
//! match every key given:
//!
//! * `pathPrefix`: the path argument starts with one of the prefixes, compared byte by byte
//!   (`/etc` also matches `/etcd/x`: end directories with `/`). Only for syscalls with a path
//!   argument, and not with `deny`: seccomp sees only the raw syscall arguments and cannot
//!   read the string a path pointer points to.
//! * `flags`: any of the listed bits is set in the flags argument. Names belong to the
//!   syscall's family: `O_*` (`open`, `openat`, `openat2`), `CLONE_*` (`clone`, `clone3`,
//!   `unshare`, `setns`), `MS_*` (`mount`), `MNT_*`/`UMOUNT_NOFOLLOW` (`umount2`), `SOCK_*`
//!   (`accept4`), `MODULE_INIT_*` (`finit_module`), `MFD_*` (`memfd_create`); integers
//!   (`0x80000`, `"0x80000"`, `524288`) are taken as bits for any of these. Because the test
//!   is "any bit", `O_RDONLY` (0) cannot be used, and the two multi-bit flags test their own
//!   bit only: `O_SYNC` matches `__O_SYNC` (not every `O_DSYNC` open) and `O_TMPFILE`
//!   matches `__O_TMPFILE` (not every `O_DIRECTORY` open). Bits an argument cannot carry are
//!   refused: `clone`'s low byte is the exit signal and its upper 32 bits are ignored
//!   (`CLONE_NEWTIME` needs `clone3` or `unshare`), `int` arguments have 32 bits. `deny`
//!   cannot match the flags of `openat2` and `clone3`: they are inside a struct in the
//!   caller's memory.
//!
//! ## Errors
//!
//! Every problem of every document is reported at once, one per line, naming the document
//! (0-based), the policy and the field:
//!
//! ```text
//! doc 0 (AuditPolicy web-baseline): spec.rules[2].syscalls[1]: unknown syscall "opena" (did you mean "openat"?)
//! ```
//!
//! Field problems serde finds while decoding (unknown fields, wrong types) stop the decoding
//! of their document, so only the first of those per document is reported.
//!
//! # Profiles
//!
//! A container selected by no policy is not audited ([`profile`] returns `None`). Otherwise
//! its policies are merged per syscall into clauses — (flags mask, actions) pairs; a call's
//! actions are the OR over the clauses it matches — without changing what any call gets:
//!
//! * path-less rules go to [`SyscallPlan::clauses`]; rules with `pathPrefix` go to one
//!   [`PathEntry`] per distinct prefix, which also holds the clauses of every shorter prefix
//!   of it, so the kernel's longest-prefix lookup alone finds every path rule that applies;
//! * clauses with the same mask merge (actions OR-ed); clauses with the same actions merge
//!   (masks OR-ed: "any bit of A, or any bit of B" is "any bit of A|B"); a clause matched
//!   wherever another one with a superset of its actions matches (mask 0 matches every call)
//!   is dropped;
//! * `kill` sets the record bit too: a killed call is reported;
//! * deny rules become one [`Deny`] per syscall, unconditional if any rule is, else with the
//!   OR of the masks.
//!
//! The kernel side evaluates at most [`MAX_CLAUSES`] clauses per syscall and per path entry.
//! A container needing more gets [`Error::TooManyClauses`] instead of a profile: folding
//! clauses into one would widen masks, and widening a `kill` kills calls no rule names.
//! Profiles are values: containers whose labels select the same policies get equal profiles
//! and can share kernel state.

mod error;
mod policy;
mod profile;
pub mod syscalls;

#[cfg(test)]
mod tests;

pub use error::{Error, Problem};
pub use policy::{
    ACTION_COUNT, ACTION_KILL, ACTION_RECORD, API_VERSION, Action, AuditPolicy, KIND,
    MAX_PATH_PREFIX, Rule, Syscalls, parse,
};
pub use profile::{Clause, Deny, MAX_CLAUSES, PathEntry, Profile, SyscallPlan, profile};
pub use syscalls::{
    Capture, FlagFamily, flag_names, flag_value, syscall_name, syscall_number, unknown_flag_bits,
};
