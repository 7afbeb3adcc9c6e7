//! The per-container record kernel programs look up by cgroup id.

/// Value of the `CONTAINERS` map, keyed by the container's cgroup v2 id (`u64`, host order: the
/// value `bpf_get_current_cgroup_id()` returns and `name_to_handle_at` on the cgroup directory
/// yields).
///
/// The runtime writes its own container's record when the container starts and removes it when
/// the container is deleted; the agent writes records for cgroups registered by path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerRecord {
    /// The container's IPv4 address, network byte order; 0 when it has no network.
    pub ipv4: u32,
    /// ifindex of the host side of the container's veth; 0 when it has none.
    pub host_ifindex: u32,
    /// Security identity of the container's label set (NetworkPolicy); 0 = not yet assigned.
    pub identity: u32,
    /// Feature bits (audit, policy), host order; defined by the issues that add those features,
    /// 0 until then.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ContainerRecord>() == 16);

#[cfg(feature = "user")]
// SAFETY: `ContainerRecord` is `repr(C)`, `Copy`, made only of integers, and has no padding
// (asserted above: 4 × u32 = 16 bytes), so every bit pattern is a valid value.
unsafe impl aya::Pod for ContainerRecord {}
