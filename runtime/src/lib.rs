//! berth's OCI runtime core: a bundle's `config.json` in, a running isolated container out.
//!
//! - [`container::Runtime`]: the OCI lifecycle (create, start, state, kill, delete, run, exec,
//!   ps, pause, resume) over a state directory; no daemon.
//! - [`spec`]: loading and validating `config.json`.
//! - [`init`]: the container's first processes (namespaces, rootfs, identity, exec).
//! - [`rootfs`], [`process`], [`hooks`], [`tty`]: the pieces init uses.
//! - [`cgroups`]: cgroup v2 (and v1 fallback) management for a container's resources.
//! - [`seccomp`]: OCI seccomp → libseccomp filter, and the default profile.
//! - [`state`]: the on-disk record of each container.
//! - [`network`]: container networking (bridge, veth pairs, address management, masquerade).

pub mod cgroups;
pub mod seccomp;

mod cgroup_adapter;
mod clone;
pub mod container;
mod exec;
pub mod fsutil;
pub mod hooks;
pub mod init;
pub mod network;
mod poll;
pub mod process;
pub mod rootfs;
pub mod spec;
pub mod state;
mod sync;
pub mod tty;
