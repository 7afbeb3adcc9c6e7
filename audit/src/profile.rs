//! Policies to the plan for one container: what the kernel side evaluates per syscall.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Error;
use crate::policy::{Action, AuditPolicy, Syscalls};
use crate::syscalls::{Capture, syscall_name};

/// How many clauses the kernel side evaluates per syscall plan and per path entry.
pub const MAX_CLAUSES: usize = 4;

/// The audit plan for one container: the merge of every policy selecting it. Containers with
/// equal profiles can share kernel state, hence the value semantics.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Profile {
    /// Count every syscall (a `"*"` rule). A call is counted once when `count_all` is set or
    /// any clause matching it has [`crate::ACTION_COUNT`].
    pub count_all: bool,
    /// Every syscall with a count, record or kill rule, by x86_64 number. Syscalls with only
    /// deny rules are not here: seccomp stops them before the tracepoint runs.
    pub syscalls: BTreeMap<u32, SyscallPlan>,
    /// Seccomp rules for the runtime: sorted by number, one per syscall.
    pub deny: Vec<Deny>,
    /// Names of the policies selecting the container, sorted.
    pub policies: Vec<String>,
}

/// What to do with calls of one syscall. A call's actions are the OR of the actions of every
/// matching clause of `clauses` and of the entry of `paths` with the longest prefix of the
/// call's path (that entry already includes its shorter prefixes' clauses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallPlan {
    /// Clauses of the rules without a path match; at most [`MAX_CLAUSES`], sorted.
    pub clauses: Vec<Clause>,
    /// One entry per distinct path prefix, sorted by prefix.
    pub paths: Vec<PathEntry>,
    pub capture: Capture,
}

/// Matches a call when `flags_mask` is 0 or any of its bits is set in the call's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Clause {
    pub flags_mask: u64,
    /// [`crate::ACTION_COUNT`] | [`crate::ACTION_RECORD`] | [`crate::ACTION_KILL`]; kill
    /// always comes with record.
    pub actions: u32,
}

/// The clauses for calls whose path starts with `prefix` (and with no longer prefix in the
/// plan).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathEntry {
    /// Bytes of the prefix, without NUL.
    pub prefix: Vec<u8>,
    /// The clauses of every path rule whose prefix is a prefix of this one (so that the
    /// kernel's longest-prefix match alone finds them all); at most [`MAX_CLAUSES`], sorted.
    pub clauses: Vec<Clause>,
}

/// A seccomp rule: the syscall fails with EPERM when `flags_mask` is 0, or when any of its
/// bits is set in argument `flags_arg` (one masked-equality comparison per bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deny {
    pub nr: u32,
    /// None exactly when `flags_mask` is 0.
    pub flags_arg: Option<u8>,
    pub flags_mask: u64,
}

/// The plan for one container with labels `labels`: every policy whose selector matches,
/// merged. `Ok(None)`: no policy selects the container, which is not audited at all.
///
/// Merging is exact (see the crate docs), so that equal sets of policies give equal profiles
/// whatever their order. When a syscall or path entry still needs more than
/// [`MAX_CLAUSES`] clauses, this fails with [`Error::TooManyClauses`] rather than folding
/// clauses together: folding widens masks, and a widened `kill` would kill calls no rule
/// names.
pub fn profile(
    policies: &[AuditPolicy],
    labels: &BTreeMap<String, String>,
) -> Result<Option<Profile>, Error> {
    let selected: Vec<&AuditPolicy> = policies
        .iter()
        .filter(|p| p.selector.matches(labels))
        .collect();
    if selected.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<String> = selected.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names.dedup();

    let mut count_all = false;
    // Per syscall: the path-less clauses, and (prefix, clause) of the path rules.
    let mut plain: BTreeMap<u32, Vec<Clause>> = BTreeMap::new();
    let mut by_path: BTreeMap<u32, Vec<(Vec<u8>, Clause)>> = BTreeMap::new();
    // Per syscall: the OR of the deny masks, 0 once any deny is unconditional. Exact: "any
    // bit of A set, or any bit of B set" is "any bit of A | B set".
    let mut deny: BTreeMap<u32, u64> = BTreeMap::new();
    for rule in selected.iter().flat_map(|p| &p.rules) {
        let nrs = match &rule.syscalls {
            // `parse` only accepts "*" with count.
            Syscalls::All => {
                count_all = true;
                continue;
            }
            Syscalls::Named(nrs) => nrs,
        };
        for &nr in nrs {
            if rule.action == Action::Deny {
                deny.entry(nr)
                    .and_modify(|m| {
                        if *m != 0 {
                            *m = if rule.flags_mask == 0 {
                                0
                            } else {
                                *m | rule.flags_mask
                            };
                        }
                    })
                    .or_insert(rule.flags_mask);
                continue;
            }
            let clause = Clause {
                flags_mask: rule.flags_mask,
                actions: rule.action.bits(),
            };
            let clauses = plain.entry(nr).or_default();
            if rule.path_prefixes.is_empty() {
                clauses.push(clause);
            } else {
                let entries = by_path.entry(nr).or_default();
                for p in &rule.path_prefixes {
                    entries.push((p.as_bytes().to_vec(), clause));
                }
            }
        }
    }

    let too_many = |nr: u32, prefix: Option<&[u8]>| Error::TooManyClauses {
        syscall: syscall_name(nr).unwrap_or_else(|| format!("syscall {nr}")),
        prefix: prefix.map(|p| String::from_utf8_lossy(p).into_owned()),
        policies: names.clone(),
    };
    let mut syscalls = BTreeMap::new();
    for (nr, clauses) in plain {
        let clauses = merge_clauses(clauses).ok_or_else(|| too_many(nr, None))?;
        let rules = by_path.remove(&nr).unwrap_or_default();
        let prefixes: BTreeSet<&[u8]> = rules.iter().map(|(p, _)| p.as_slice()).collect();
        let mut paths = Vec::with_capacity(prefixes.len());
        for prefix in prefixes {
            let covering = rules
                .iter()
                .filter(|(q, _)| prefix.starts_with(q))
                .map(|(_, c)| *c)
                .collect();
            let clauses = merge_clauses(covering).ok_or_else(|| too_many(nr, Some(prefix)))?;
            paths.push(PathEntry {
                prefix: prefix.to_vec(),
                clauses,
            });
        }
        let plan = SyscallPlan {
            clauses,
            paths,
            capture: Capture::of(nr),
        };
        syscalls.insert(nr, plan);
    }

    let deny = deny
        .into_iter()
        .map(|(nr, flags_mask)| Deny {
            nr,
            flags_arg: if flags_mask == 0 {
                None
            } else {
                Capture::of(nr).flags_arg
            },
            flags_mask,
        })
        .collect();
    Ok(Some(Profile {
        count_all,
        syscalls,
        deny,
        policies: names,
    }))
}

/// Normalizes a set of clauses without changing what any call gets (a call's actions are the
/// OR over the clauses matching it), then sorts them; None when more than [`MAX_CLAUSES`]
/// remain.
///
/// * Clauses with the same mask merge, actions OR-ed.
/// * Clauses with the same actions merge, masks OR-ed ("any bit of A" or "any bit of B" is
///   "any bit of A | B"; with mask 0, "every call", the result is mask 0).
/// * A clause is dropped when another matches every call it matches (mask 0, or a superset
///   of its bits) with a superset of its actions: e.g. non-zero masks whose actions are
///   covered by a mask-0 clause.
///
/// Masks end up distinct and so do action sets; with kill implying record there are only 5
/// action sets, so the limit is rarely reached.
pub(crate) fn merge_clauses(clauses: Vec<Clause>) -> Option<Vec<Clause>> {
    let mut set = clauses;
    loop {
        let before = set.len();
        set = merge_by(set, |c| c.flags_mask, |a, b| a.actions |= b.actions);
        set = merge_by(
            set,
            |c| u64::from(c.actions),
            |a, b| {
                a.flags_mask = if a.flags_mask == 0 || b.flags_mask == 0 {
                    0
                } else {
                    a.flags_mask | b.flags_mask
                };
            },
        );
        if set.len() == before {
            break;
        }
    }
    let covers = |d: &Clause, c: &Clause| {
        let mask = d.flags_mask == 0 || (c.flags_mask != 0 && c.flags_mask & !d.flags_mask == 0);
        mask && c.actions & !d.actions == 0
    };
    let mut kept: Vec<Clause> = set
        .iter()
        .filter(|c| !set.iter().any(|d| d != *c && covers(d, c)))
        .copied()
        .collect();
    kept.sort();
    (kept.len() <= MAX_CLAUSES).then_some(kept)
}

/// Merges clauses with equal `key` with `join`, keeping the first one's position.
fn merge_by(
    clauses: Vec<Clause>,
    key: impl Fn(&Clause) -> u64,
    join: impl Fn(&mut Clause, &Clause),
) -> Vec<Clause> {
    let mut out: Vec<Clause> = Vec::with_capacity(clauses.len());
    for c in clauses {
        match out.iter_mut().find(|o| key(o) == key(&c)) {
            Some(o) => join(o, &c),
            None => out.push(c),
        }
    }
    out
}
