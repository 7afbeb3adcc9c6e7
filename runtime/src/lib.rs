//! berth's OCI runtime core.
//!
//! - [`cgroups`]: cgroup v2 (and v1 fallback) management for a container's resources.
//! - [`seccomp`]: OCI seccomp → libseccomp filter, and the default profile.

pub mod cgroups;
pub mod seccomp;
