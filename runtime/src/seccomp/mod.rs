//! Seccomp for containers: the OCI `linux.seccomp` section checked, translated into a libseccomp
//! filter and loaded; Docker's default profile; profile files.
//!
//! ```no_run
//! use berth_runtime::seccomp;
//! # fn main() -> Result<(), seccomp::SeccompError> {
//! // The container's bounding set decides the capability-gated parts of the default profile.
//! let profile = seccomp::default_profile(&["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]);
//! seccomp::validate(&profile)?; // early, when the container is created
//!
//! // In the container init, last thing before execve, with no_new_privs already set
//! // (process.noNewPrivileges) or CAP_SYS_ADMIN still held:
//! seccomp::load(&profile)?;
//! # Ok(()) }
//! ```
//!
//! # Decisions
//! - **Syscall names** are resolved by the linked libseccomp for every architecture of the
//!   filter (the native one plus `architectures`). Unknown on all of them: an error naming the
//!   rule and the name. Unknown on some: accepted, logged at debug level, and the rule applies
//!   on the architectures that have the syscall (`chown32` in an x86_64 + x86 profile). runc
//!   skips unresolvable names silently; berth fails, so that a typo cannot drop a rule. The
//!   default profile is the exception: names newer than the linked libseccomp are left out of
//!   it (see [`default_profile`]).
//! - **Arguments**: all comparisons of a rule go into one libseccomp rule, so they AND as the
//!   spec says. Comparing one argument twice in a rule is rejected (libseccomp cannot AND
//!   them; runc splits them into separate rules, which turns AND into OR). For
//!   `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the datum, 0 when absent, as in
//!   runc (the runtime-spec Go type omits a zero `valueTwo`).
//! - **Architectures** are added to the filter; syscalls through an ABI not in the filter kill
//!   the thread (libseccomp's default). **Flags** map to libseccomp filter attributes and are
//!   rejected when the linked libseccomp or the kernel cannot apply them
//!   (`SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` needs libseccomp ≥ 2.6).
//! - **`SCMP_ACT_NOTIFY`** and `listenerPath` are rejected as unsupported: berth has no seccomp
//!   agent to pass the notification fd to.
//! - **no_new_privs** is never set here (libseccomp would by default): it is
//!   `process.noNewPrivileges`' decision. See [`load`] for what the caller must provide.

mod arch;
mod default;
mod error;
mod file;
mod filter;
mod template;
mod validate;

#[cfg(test)]
mod tests;

pub use default::default_profile;
pub use error::{Result, SeccompError};
pub use file::profile_from_file;
pub use filter::{build_filter, load};
pub use validate::validate;
