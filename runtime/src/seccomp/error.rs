//! The one error type of the seccomp module.

use std::io;
use std::path::PathBuf;

/// Result alias of the seccomp module.
pub type Result<T, E = SeccompError> = std::result::Result<T, E>;

/// Everything that can go wrong while checking, translating, loading or reading a seccomp
/// profile.
///
/// `field` is the place in the OCI `linux.seccomp` object, written the way the JSON spells it
/// (`syscalls[3].args[0].index`, `defaultErrnoRet`, `flags[1]`), so a message alone is enough
/// to find the cause in a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A syscall name that libseccomp cannot resolve on any architecture of the filter.
    #[error(
        "{field}: syscall {name:?} is unknown to libseccomp {libseccomp} on every architecture \
         of the filter ({arches})"
    )]
    UnknownSyscall {
        field: String,
        name: String,
        arches: String,
        libseccomp: String,
    },

    /// An architecture that the linked libseccomp does not support.
    #[error("{field}: architecture {arch} is not supported by libseccomp {libseccomp}")]
    UnknownArch {
        field: String,
        arch: String,
        libseccomp: String,
    },

    /// A rule with an empty `names` list.
    #[error("{field}: names must contain at least one syscall")]
    EmptyNames { field: String },

    /// `errnoRet`/`defaultErrnoRet` on an action that returns no errno; the OCI spec requires
    /// the runtime to fail.
    #[error(
        "{field} is set, but {action} takes no errno (only SCMP_ACT_ERRNO and SCMP_ACT_TRACE do)"
    )]
    ErrnoNotAllowed { field: String, action: String },

    /// An errno or trace message value that does not fit the action's return data.
    #[error("{field} is {value}, at most {max} is allowed for {action}")]
    ErrnoOutOfRange {
        field: String,
        value: u32,
        max: u32,
        action: String,
    },

    /// More argument comparisons than a syscall has arguments.
    #[error("{field} has {count} comparisons, at most 6 are allowed")]
    TooManyArgs { field: String, count: usize },

    /// An argument index outside 0..=5.
    #[error("{field} is {index}, syscall arguments are numbered 0 to 5")]
    ArgIndex { field: String, index: usize },

    /// Two comparisons on one argument in one rule: libseccomp can compare each argument once
    /// per rule, and splitting them into separate rules would turn the spec's AND into an OR.
    #[error(
        "{field}: argument {index} is compared more than once in one rule; libseccomp cannot \
         AND two comparisons of the same argument (write them as separate rules if OR is meant)"
    )]
    DuplicateArgIndex { field: String, index: usize },

    /// `SCMP_CMP_MASKED_EQ` whose datum has bits outside the mask, so it can never match.
    #[error(
        "{field}: SCMP_CMP_MASKED_EQ with mask (value) {mask:#x} and datum (valueTwo) {datum:#x} \
         can never match: the datum has bits outside the mask"
    )]
    MaskedEqNeverMatches {
        field: String,
        mask: u64,
        datum: u64,
    },

    /// `valueTwo` on an operator that ignores it.
    #[error("{field}: valueTwo {value_two:#x} is only used by SCMP_CMP_MASKED_EQ, not by {op}")]
    ValueTwoIgnored {
        field: String,
        value_two: u64,
        op: String,
    },

    /// Something valid in the OCI spec that berth or the linked libseccomp does not implement.
    #[error("{field}: {what} is not supported: {reason}")]
    Unsupported {
        field: String,
        what: String,
        reason: String,
    },

    /// `seccomp_init` failed.
    #[error("create the seccomp filter (default action {action})")]
    NewFilter {
        action: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// Adding an architecture to the filter failed.
    #[error("{field}: add architecture {arch} to the seccomp filter")]
    AddArch {
        field: String,
        arch: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// Setting a filter attribute (a flag, no_new_privs handling) failed.
    #[error("{field}: set seccomp filter attribute {attribute}")]
    SetAttribute {
        field: String,
        attribute: &'static str,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// libseccomp refused a rule.
    #[error("{field}: add the seccomp rule for syscall {name:?}")]
    AddRule {
        field: String,
        name: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// Turning the rules into BPF or installing it failed.
    #[error("load the seccomp filter into the kernel{hint}")]
    Load {
        hint: &'static str,
        #[source]
        source: libseccomp::error::SeccompError,
    },

    /// The profile file cannot be read.
    #[error("read seccomp profile {path}")]
    ReadProfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The profile file is not JSON.
    #[error("seccomp profile {path} is not valid json")]
    ParseProfile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The profile file parsed, but the profile it describes is not valid.
    #[error("seccomp profile {path}: {error}")]
    InvalidProfile {
        path: PathBuf,
        error: Box<SeccompError>,
    },

    /// A field of the profile file has the wrong shape or value.
    #[error("seccomp profile {path}: {field}: {reason}")]
    ProfileField {
        path: PathBuf,
        field: String,
        reason: String,
    },
}
