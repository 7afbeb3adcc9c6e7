//! The kernel programs and the agent must agree on every shared type byte for byte: these
//! assertions fail when a field moves.

use core::mem::{align_of, offset_of, size_of};

use berth_common::{ContainerRecord, xdp::XdpStat};

#[test]
fn container_record_layout() {
    assert_eq!(size_of::<ContainerRecord>(), 16);
    assert_eq!(align_of::<ContainerRecord>(), 4);
    assert_eq!(offset_of!(ContainerRecord, ipv4), 0);
    assert_eq!(offset_of!(ContainerRecord, host_ifindex), 4);
    assert_eq!(offset_of!(ContainerRecord, identity), 8);
    assert_eq!(offset_of!(ContainerRecord, flags), 12);
}

#[test]
fn xdp_stat_indices_are_dense_and_stable() {
    assert_eq!(size_of::<XdpStat>(), 4, "indices are u32 map keys");
    for (i, stat) in XdpStat::ALL.iter().enumerate() {
        assert_eq!(*stat as u32, i as u32, "{stat:?} must sit at index {i}");
    }
    assert_eq!(XdpStat::ALL.len() as u32, XdpStat::COUNT);
    let mut labels: Vec<_> = XdpStat::ALL.iter().map(|s| s.labels()).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(
        labels.len(),
        XdpStat::ALL.len(),
        "label pairs must be unique"
    );
}

#[test]
fn map_and_program_names_are_unique_and_fit_the_kernel() {
    for names in [berth_common::maps::ALL, berth_common::programs::ALL] {
        let mut sorted = names.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate name in {names:?}");
        for name in names {
            // BPF_OBJ_NAME_LEN is 16 including the NUL; longer names are truncated in the kernel
            // and would not match what `berth status` looks up.
            assert!(name.len() < 16, "{name} is longer than 15 bytes");
        }
    }
}
