//! Which cgroup hierarchy the host has: pure v2, or v1 controllers (plus, on hybrid hosts, the
//! unified v2 mount that eBPF cgroup ids come from).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// The default cgroup root on Linux.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// v1 controllers berth knows. Any of them mounted gets a directory for the container, so the
/// container's processes are accounted for in every hierarchy, as runc does.
pub const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

/// The cgroup layout of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hierarchy {
    /// Pure cgroup v2: one hierarchy mounted at `mount`.
    V2 { mount: PathBuf },
    /// cgroup v1: each controller's mount point (co-mounted controllers share one path), and the
    /// unified v2 mount of a hybrid host, which carries no controllers but gives the cgroup id.
    V1 {
        mounts: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// "v1" or "v2", for messages.
    pub fn version(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "v2",
            Hierarchy::V1 { .. } => "v1",
        }
    }
}

/// Detects the hierarchy under `root` (normally [`DEFAULT_ROOT`]).
///
/// `root` itself on cgroup2 (statfs magic `CGROUP2_SUPER_MAGIC`) → [`Hierarchy::V2`]. Otherwise
/// the v1 controller mounts below `root` are read from `/proc/self/mountinfo`; when it lists
/// none below `root` (a test's temp dir), `root/<controller>` directories are probed instead,
/// and `root/unified` is taken as the unified mount when it exists.
pub fn detect(root: &Path) -> Result<Hierarchy> {
    let fs = statfs(root).map_err(|source| Error::Statfs {
        path: root.to_path_buf(),
        source,
    })?;
    if fs.filesystem_type() == CGROUP2_SUPER_MAGIC {
        return Ok(Hierarchy::V2 {
            mount: root.to_path_buf(),
        });
    }
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo = fs::read_to_string(mountinfo_path).map_err(|source| Error::Read {
        path: mountinfo_path.to_path_buf(),
        source,
    })?;
    let (mut mounts, mut unified) = parse_mountinfo(&mountinfo, root);
    if mounts.is_empty() {
        (mounts, unified) = probe(root);
    }
    if mounts.is_empty() {
        return Err(Error::NoCgroupFs {
            root: root.to_path_buf(),
        });
    }
    Ok(Hierarchy::V1 { mounts, unified })
}

/// The cgroup mounts below `root` in a `/proc/<pid>/mountinfo` text: v1 controller → mount
/// point, and the first cgroup2 mount.
pub(crate) fn parse_mountinfo(
    text: &str,
    root: &Path,
) -> (BTreeMap<String, PathBuf>, Option<PathBuf>) {
    let mut mounts = BTreeMap::new();
    let mut unified = None;
    for line in text.lines() {
        // "36 35 98:0 / /mnt1 rw,noatime master:1 - cgroup cgroup rw,cpu,cpuacct"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = unescape_octal(mount_point);
        if !mount_point.starts_with(root) {
            continue;
        }
        let mut right = right.split_whitespace();
        let fstype = right.next();
        let super_opts = right.nth(1).unwrap_or("");
        match fstype {
            Some("cgroup2") if unified.is_none() => unified = Some(mount_point),
            Some("cgroup") => {
                for opt in super_opts.split(',') {
                    if V1_CONTROLLERS.contains(&opt) {
                        mounts
                            .entry(opt.to_owned())
                            .or_insert_with(|| mount_point.clone());
                    }
                }
            }
            _ => {}
        }
    }
    (mounts, unified)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> PathBuf {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && oct.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = oct
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(b) = u8::try_from(value) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

fn probe(root: &Path) -> (BTreeMap<String, PathBuf>, Option<PathBuf>) {
    let mounts = V1_CONTROLLERS
        .iter()
        .map(|c| (c.to_string(), root.join(c)))
        .filter(|(_, p)| p.is_dir())
        .collect();
    let unified = Some(root.join("unified")).filter(|p| p.is_dir());
    (mounts, unified)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /other/cg\\040dir rw - cgroup cgroup rw,pids
";

    #[test]
    fn mountinfo_gives_controllers_comounts_and_unified() {
        let (mounts, unified) = parse_mountinfo(HYBRID, Path::new("/sys/fs/cgroup"));
        let cpu = Path::new("/sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(mounts.get("cpu").map(PathBuf::as_path), Some(cpu));
        assert_eq!(mounts.get("cpuacct").map(PathBuf::as_path), Some(cpu));
        assert_eq!(
            mounts.get("memory").map(PathBuf::as_path),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        // name=systemd is not a controller; pids is mounted outside the root.
        assert_eq!(
            mounts.keys().collect::<Vec<_>>(),
            ["cpu", "cpuacct", "cpuset", "memory"]
        );
        assert_eq!(
            unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn mountinfo_unescapes_mount_points() {
        let (mounts, _) = parse_mountinfo(HYBRID, Path::new("/other"));
        assert_eq!(
            mounts.get("pids").map(PathBuf::as_path),
            Some(Path::new("/other/cg dir"))
        );
    }

    #[test]
    fn detect_probes_a_fake_v1_tree() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["memory", "pids", "unified", "not-a-controller"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
        }
        let h = detect(tmp.path()).unwrap();
        let Hierarchy::V1 { mounts, unified } = h else {
            panic!("expected v1, got {h:?}");
        };
        assert_eq!(mounts.keys().collect::<Vec<_>>(), ["memory", "pids"]);
        assert_eq!(mounts["pids"], tmp.path().join("pids"));
        assert_eq!(unified, Some(tmp.path().join("unified")));
    }

    #[test]
    fn detect_fails_without_any_cgroup_fs() {
        let tmp = tempfile::tempdir().unwrap();
        let err = detect(tmp.path()).unwrap_err();
        assert!(matches!(err, Error::NoCgroupFs { .. }), "{err:?}");
    }

    #[test]
    fn detect_matches_the_real_host() {
        // On this machine kind (hybrid) and on pure-v2 hosts alike, the answer must agree with
        // what the kernel reports for /sys/fs/cgroup.
        let root = Path::new(DEFAULT_ROOT);
        let Ok(st) = statfs(root) else { return };
        let h = detect(root).unwrap();
        if st.filesystem_type() == CGROUP2_SUPER_MAGIC {
            assert_eq!(
                h,
                Hierarchy::V2 {
                    mount: root.to_path_buf()
                }
            );
        } else if let Hierarchy::V1 { mounts, .. } = h {
            for p in mounts.values() {
                assert!(p.starts_with(root) && p.is_dir(), "{}", p.display());
            }
        } else {
            panic!("v1 host detected as v2");
        }
    }
}
