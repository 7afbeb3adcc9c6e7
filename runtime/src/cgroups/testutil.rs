//! Fake cgroupfs trees for unit tests: directories and interface files laid out as the kernel
//! would, so managers run unchanged against a temp dir.

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

pub(crate) const MIB: i64 = 1 << 20;

/// Creates `dir` with each `(file, content)`.
pub(crate) fn files(dir: &Path, files: &[(&str, &str)]) {
    fs::create_dir_all(dir).unwrap();
    for (name, content) in files {
        fs::write(dir.join(name), content).unwrap();
    }
}

/// Reads a fake interface file.
pub(crate) fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

const V2_LEAF_FILES: &[(&str, &str)] = &[
    ("cgroup.procs", ""),
    ("cgroup.subtree_control", ""),
    ("cgroup.freeze", "0\n"),
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("cgroup.kill", ""),
    ("memory.max", "max\n"),
    ("memory.low", "0\n"),
    ("memory.swap.max", "max\n"),
    ("memory.current", "1228800\n"),
    ("cpu.weight", "100\n"),
    ("cpu.max", "max 100000\n"),
    (
        "cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    ),
    ("cpuset.cpus", ""),
    ("cpuset.mems", ""),
    ("pids.max", "max\n"),
    ("pids.current", "3\n"),
];

/// A fake v2 root with `berth/` and the leaf `berth/<id>` whose `cgroup.controllers` is
/// `leaf_controllers`. Returns the leaf.
pub(crate) fn fake_v2(root: &Path, id: &str, leaf_controllers: &str) -> PathBuf {
    let all = "cpuset cpu io memory hugetlb pids rdma misc\n";
    files(
        root,
        &[
            ("cgroup.controllers", all),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", "1\n"),
        ],
    );
    files(
        &root.join("berth"),
        &[
            ("cgroup.controllers", ""),
            ("cgroup.subtree_control", ""),
            ("cgroup.procs", ""),
        ],
    );
    let leaf = root.join("berth").join(id);
    files(&leaf, V2_LEAF_FILES);
    files(&leaf, &[("cgroup.controllers", leaf_controllers)]);
    leaf
}

/// Per-hierarchy files of a fake v1 cgroup directory.
fn v1_files(hierarchy: &str, root: bool) -> Vec<(&'static str, &'static str)> {
    let mut f = vec![("cgroup.procs", ""), ("tasks", "")];
    match hierarchy {
        "cpu,cpuacct" => f.extend([
            ("cpu.shares", "1024\n"),
            ("cpu.cfs_quota_us", "-1\n"),
            ("cpu.cfs_period_us", "100000\n"),
            ("cpuacct.usage", "123456789\n"),
        ]),
        "cpuset" if root => f.extend([("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n")]),
        "cpuset" => f.extend([("cpuset.cpus", "\n"), ("cpuset.mems", "\n")]),
        "memory" => f.extend([
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.memsw.limit_in_bytes", "9223372036854771712\n"),
            ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
            ("memory.usage_in_bytes", "4096000\n"),
            ("memory.swappiness", "60\n"),
        ]),
        "pids" if !root => f.extend([("pids.max", "max\n"), ("pids.current", "2\n")]),
        "devices" => f.extend([
            ("devices.allow", ""),
            ("devices.deny", ""),
            ("devices.list", "a *:* rwm\n"),
        ]),
        "freezer" if !root => f.push(("freezer.state", "THAWED\n")),
        "unified" => f.extend([
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 0\nfrozen 0\n"),
            ("cgroup.kill", ""),
            ("cpu.stat", "usage_usec 7\n"),
        ]),
        _ => {}
    }
    f
}

/// A fake hybrid tree: `cpu,cpuacct` co-mounted, `cpuset`, `memory`, `pids`, `devices`,
/// `freezer`, and `unified`. The container's directories exist when `with_leaf`, else only the
/// roots. Returns the hierarchy.
pub(crate) fn fake_v1(root: &Path, id: &str, with_leaf: bool) -> super::Hierarchy {
    let hierarchies = [
        "cpu,cpuacct",
        "cpuset",
        "memory",
        "pids",
        "devices",
        "freezer",
        "unified",
    ];
    for h in hierarchies {
        let mount = root.join(h);
        files(&mount, &v1_files(h, true));
        if with_leaf {
            files(&mount.join("berth"), &v1_files(h, false));
            files(&mount.join("berth").join(id), &v1_files(h, false));
        }
    }
    let mounts = [
        ("cpu", "cpu,cpuacct"),
        ("cpuacct", "cpu,cpuacct"),
        ("cpuset", "cpuset"),
        ("memory", "memory"),
        ("pids", "pids"),
        ("devices", "devices"),
        ("freezer", "freezer"),
    ]
    .into_iter()
    .map(|(c, d)| (c.to_owned(), root.join(d)))
    .collect();
    super::Hierarchy::V1 {
        mounts,
        unified: Some(root.join("unified")),
    }
}

/// The brief's full resource set: memory 64 MiB (+swap to 128 MiB, reservation 32 MiB), cpu
/// shares 512, quota 50000/100000, cpuset "0"/"0", pids 32, deny-all + /dev/null devices.
pub(crate) fn full_resources() -> LinuxResources {
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(64 * MIB)
                .swap(128 * MIB)
                .reservation(32 * MIB)
                .build()
                .unwrap(),
        )
        .cpu(
            LinuxCpuBuilder::default()
                .shares(512u64)
                .quota(50_000i64)
                .period(100_000u64)
                .cpus("0")
                .mems("0")
                .build()
                .unwrap(),
        )
        .pids(LinuxPidsBuilder::default().limit(32i64).build().unwrap())
        .devices(vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()
                .unwrap(),
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(1i64)
                .minor(3i64)
                .access("rwm")
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}
