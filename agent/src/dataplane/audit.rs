//! The audit maps and tracepoint attachments from userspace (see `berth_common::audit` for the
//! layout).
//!
//! Plans are content-addressed by profile: containers whose merged rules are equal share one
//! profile id, and a profile's entries are never modified in place. A reconcile writes the new
//! profiles' entries, then switches targets, then deletes what no target references, so a
//! syscall never sees a half-written plan.
//!
//! Tracepoints are attached only where some rule needs them (a tracepoint costs every caller of
//! its syscall on the machine, audited or not) and detached when no rule does any more.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{
        HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{TracePoint, links::FdLink},
};
use berth_common::{
    audit::{
        AuditCountKey, AuditPathKey, AuditPathValue, AuditSyscall, AuditSyscallKey, AuditTarget,
        PATH_FIXED_BITS,
    },
    maps, programs,
};

use super::{DataplaneError, PinLayout};

#[derive(Debug, thiserror::Error)]
pub enum AuditMapError {
    #[error("opening pinned map {name}: {detail}")]
    Open { name: &'static str, detail: String },
    #[error("writing {map}: {detail}")]
    Write { map: &'static str, detail: String },
    #[error("attaching {program} to {category}:{name}: {detail}")]
    Attach {
        program: &'static str,
        category: String,
        name: String,
        detail: String,
    },
}

/// What the audit maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredAudit {
    pub targets: BTreeMap<u64, AuditTarget>,
    pub syscalls: BTreeMap<AuditSyscallKey, AuditSyscall>,
    /// (profile, nr, prefix bytes) → clauses.
    pub paths: BTreeMap<(u32, u32, Vec<u8>), AuditPathValue>,
}

/// What a reconcile changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditChanges {
    pub targets_written: usize,
    pub targets_removed: usize,
    pub plans_written: usize,
    pub plans_removed: usize,
    pub paths_written: usize,
    pub paths_removed: usize,
}

pub struct AuditMaps {
    targets: HashMap<MapData, u64, AuditTarget>,
    syscalls: HashMap<MapData, AuditSyscallKey, AuditSyscall>,
    paths: LpmTrie<MapData, AuditPathKey, AuditPathValue>,
    counts: PerCpuHashMap<MapData, AuditCountKey, u64>,
}

fn open_map(layout: &PinLayout, name: &'static str) -> Result<MapData, AuditMapError> {
    MapData::from_pin(layout.map(name)).map_err(|e| AuditMapError::Open {
        name,
        detail: e.to_string(),
    })
}

fn path_key(profile: u32, nr: u32, prefix: &[u8]) -> Key<AuditPathKey> {
    let mut data = AuditPathKey {
        profile,
        nr,
        ..AuditPathKey::default()
    };
    let n = prefix.len().min(data.path.len());
    data.path[..n].copy_from_slice(&prefix[..n]);
    Key::new(PATH_FIXED_BITS + 8 * n as u32, data)
}

impl AuditMaps {
    pub fn open(layout: &PinLayout) -> Result<Self, AuditMapError> {
        let typed = |name: &'static str, e: MapError| AuditMapError::Open {
            name,
            detail: e.to_string(),
        };
        Ok(Self {
            targets: HashMap::try_from(Map::HashMap(open_map(layout, maps::AUDIT_TARGETS)?))
                .map_err(|e| typed(maps::AUDIT_TARGETS, e))?,
            syscalls: HashMap::try_from(Map::HashMap(open_map(layout, maps::AUDIT_SYSCALLS)?))
                .map_err(|e| typed(maps::AUDIT_SYSCALLS, e))?,
            paths: LpmTrie::try_from(Map::LpmTrie(open_map(layout, maps::AUDIT_PATHS)?))
                .map_err(|e| typed(maps::AUDIT_PATHS, e))?,
            counts: PerCpuHashMap::try_from(Map::PerCpuHashMap(open_map(
                layout,
                maps::AUDIT_COUNTS,
            )?))
            .map_err(|e| typed(maps::AUDIT_COUNTS, e))?,
        })
    }

    /// The highest profile id the maps use (a restarted agent numbers new profiles above it,
    /// so its first reconcile is as atomic as any other).
    pub fn max_profile(&self) -> u32 {
        let t = self
            .targets
            .iter()
            .filter_map(Result::ok)
            .map(|(_, t)| t.profile);
        let s = self
            .syscalls
            .keys()
            .filter_map(Result::ok)
            .map(|k| k.profile);
        t.chain(s).max().unwrap_or(0)
    }

    /// Makes the maps hold exactly `want`: new plans and paths first, then targets, then
    /// deletions.
    pub fn reconcile(&mut self, want: &DesiredAudit) -> Result<AuditChanges, AuditMapError> {
        let mut changes = AuditChanges::default();
        let write = |map: &'static str, e: MapError| AuditMapError::Write {
            map,
            detail: e.to_string(),
        };
        let have_plans: StdHashMap<AuditSyscallKey, AuditSyscall> =
            self.syscalls.iter().filter_map(Result::ok).collect();
        for (k, v) in &want.syscalls {
            if have_plans.get(k) != Some(v) {
                self.syscalls
                    .insert(k, v, 0)
                    .map_err(|e| write(maps::AUDIT_SYSCALLS, e))?;
                changes.plans_written += 1;
            }
        }
        let have_paths: BTreeSet<(u32, u32, Vec<u8>)> = self
            .paths
            .keys()
            .filter_map(Result::ok)
            .map(|k| {
                let data = k.data();
                let n = ((k.prefix_len().saturating_sub(PATH_FIXED_BITS)) / 8) as usize;
                (
                    data.profile,
                    data.nr,
                    data.path[..n.min(data.path.len())].to_vec(),
                )
            })
            .collect();
        for ((profile, nr, prefix), v) in &want.paths {
            let key = path_key(*profile, *nr, prefix);
            let current = self.paths.get(&key, 0).ok();
            if current.as_ref() != Some(v) {
                self.paths
                    .insert(&key, v, 0)
                    .map_err(|e| write(maps::AUDIT_PATHS, e))?;
                changes.paths_written += 1;
            }
        }
        let have_targets: StdHashMap<u64, AuditTarget> =
            self.targets.iter().filter_map(Result::ok).collect();
        for (cgroup, t) in &want.targets {
            if have_targets.get(cgroup) != Some(t) {
                self.targets
                    .insert(cgroup, t, 0)
                    .map_err(|e| write(maps::AUDIT_TARGETS, e))?;
                changes.targets_written += 1;
            }
        }
        for cgroup in have_targets.keys() {
            if !want.targets.contains_key(cgroup) {
                let _ = self.targets.remove(cgroup);
                changes.targets_removed += 1;
                self.remove_counts(*cgroup);
            }
        }
        for k in have_plans.keys() {
            if !want.syscalls.contains_key(k) {
                let _ = self.syscalls.remove(k);
                changes.plans_removed += 1;
            }
        }
        for (profile, nr, prefix) in have_paths {
            if !want.paths.contains_key(&(profile, nr, prefix.clone())) {
                let _ = self.paths.remove(&path_key(profile, nr, &prefix));
                changes.paths_removed += 1;
            }
        }
        Ok(changes)
    }

    /// Every counter: (cgroup, syscall) → calls, summed over CPUs.
    pub fn counts(&self) -> BTreeMap<(u64, u32), u64> {
        sum_counts(&self.counts)
    }

    fn remove_counts(&mut self, cgroup: u64) {
        let keys: Vec<AuditCountKey> = self
            .counts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.cgroup_id == cgroup)
            .collect();
        for k in keys {
            let _ = self.counts.remove(&k);
        }
    }
}

fn sum_counts(map: &PerCpuHashMap<MapData, AuditCountKey, u64>) -> BTreeMap<(u64, u32), u64> {
    let mut out = BTreeMap::new();
    for (k, v) in map.iter().filter_map(Result::ok) {
        *out.entry((k.cgroup_id, k.nr)).or_default() += per_cpu_sum(&v);
    }
    out
}

/// The syscall counters from the pinned map (for `/metrics`, which holds no store lock).
pub fn read_counts(layout: &PinLayout) -> Result<BTreeMap<(u64, u32), u64>, AuditMapError> {
    let map = PerCpuHashMap::try_from(Map::PerCpuHashMap(open_map(layout, maps::AUDIT_COUNTS)?))
        .map_err(|e| AuditMapError::Open {
            name: maps::AUDIT_COUNTS,
            detail: e.to_string(),
        })?;
    Ok(sum_counts(&map))
}

fn per_cpu_sum(v: &PerCpuValues<u64>) -> u64 {
    v.iter().copied().fold(0, u64::wrapping_add)
}

/// One tracepoint attachment: a program on `category:name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub program: &'static str,
    pub category: String,
    pub name: String,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} ({})", self.category, self.name, self.program)
    }
}

/// The audit programs, loaded, and their attachments. Each attachment is a perf-event
/// bpf_link pinned at `<pin root>/links/<program>@<category>:<tracepoint>`, so auditing (and
/// its kills) goes on while the agent is stopped or restarting, like the rest of the data
/// plane. Owns the loaded kernel object (aya keeps programs inside it).
pub struct Tracepoints {
    ebpf: Ebpf,
    layout: PinLayout,
    /// Attachments made by this agent: pinned, and held open.
    attached: BTreeMap<Attachment, FdLink>,
    /// Pins of a previous agent's attachments (its programs, still running), replaced by this
    /// agent's on the first [`Tracepoints::set`].
    inherited: BTreeMap<Attachment, PathBuf>,
}

impl Tracepoints {
    /// Loads the audit programs of `ebpf` (attaching nothing yet) and notes the attachments a
    /// previous agent pinned.
    pub fn load(mut ebpf: Ebpf, layout: &PinLayout) -> Result<Self, DataplaneError> {
        for name in programs::AUDIT_PROGRAMS {
            super::loaded_program::<TracePoint>(&mut ebpf, name, TracePoint::load)?;
        }
        let mut inherited = BTreeMap::new();
        for (program, target, path) in layout.links().unwrap_or_default() {
            let Some(program) = programs::AUDIT_PROGRAMS.iter().find(|p| **p == program) else {
                continue;
            };
            if let Some((category, name)) = target.split_once(':') {
                inherited.insert(
                    Attachment {
                        program,
                        category: category.to_owned(),
                        name: name.to_owned(),
                    },
                    path,
                );
            }
        }
        Ok(Self {
            ebpf,
            layout: layout.clone(),
            attached: BTreeMap::new(),
            inherited,
        })
    }

    /// What is attached (by this agent, or still by the previous one).
    pub fn attached(&self) -> impl Iterator<Item = &Attachment> {
        self.attached.keys().chain(
            self.inherited
                .keys()
                .filter(|a| !self.attached.contains_key(*a)),
        )
    }

    fn pin_path(&self, a: &Attachment) -> PathBuf {
        self.layout
            .link(a.program, &format!("{}:{}", a.category, a.name))
    }

    /// Attaches `a` and pins the link. A previous agent's pin of the same attachment is
    /// replaced by a rename over it: the new program is attached before the old one is
    /// detached, so no call goes unaudited during a restart (one may be seen twice).
    fn attach(&mut self, a: &Attachment) -> Result<FdLink, AuditMapError> {
        let err = |detail: String| AuditMapError::Attach {
            program: a.program,
            category: a.category.clone(),
            name: a.name.clone(),
            detail,
        };
        let program: &mut TracePoint =
            super::typed_program(&mut self.ebpf, a.program).map_err(|e| err(e.to_string()))?;
        let id = program
            .attach(&a.category, &a.name)
            .map_err(|e| err(e.to_string()))?;
        let link = program.take_link(id).map_err(|e| err(e.to_string()))?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            err(format!(
                "the kernel attached without a bpf_link ({e}); cannot pin it"
            ))
        })?;
        let pin = self.pin_path(a);
        // bpffs refuses dots in names: the temporary pin is `<pin>_new`.
        let mut tmp = pin.clone().into_os_string();
        tmp.push("_new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let pinned = fd_link
            .pin(&tmp)
            .map_err(|e| err(format!("pinning {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &pin).map_err(|e| err(format!("pinning {}: {e}", pin.display())))?;
        self.inherited.remove(a);
        Ok(pinned.into())
    }

    /// Attaches what `want` adds and detaches what it drops (attaching first: a change never
    /// leaves a gap in what is audited). On an error the attachments made so far stay (the
    /// caller's next reconcile retries).
    pub fn set(&mut self, want: &BTreeSet<Attachment>) -> Result<(usize, usize), AuditMapError> {
        let mut added = 0;
        for a in want {
            if self.attached.contains_key(a) {
                continue;
            }
            let link = self.attach(a)?;
            self.attached.insert(a.clone(), link);
            added += 1;
        }
        let mut removed = 0;
        let drop: Vec<Attachment> = self
            .attached
            .keys()
            .filter(|a| !want.contains(*a))
            .cloned()
            .collect();
        for a in drop {
            let pin = self.pin_path(&a);
            if let Err(e) = std::fs::remove_file(&pin)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(attachment = %a, error = %e, "unpinning a tracepoint link");
            }
            // Closing our fd drops the last reference: the program is detached.
            self.attached.remove(&a);
            removed += 1;
        }
        // A previous agent's attachment that no rule needs any more.
        let stale: Vec<(Attachment, PathBuf)> = self
            .inherited
            .iter()
            .filter(|(a, _)| !want.contains(*a))
            .map(|(a, p)| (a.clone(), p.clone()))
            .collect();
        for (a, path) in stale {
            let _ = std::fs::remove_file(&path);
            self.inherited.remove(&a);
            removed += 1;
        }
        Ok((added, removed))
    }
}
