//! The agent's desired state for syscall auditing and its one reconcile path into the kernel.
//!
//! Audit policies arrive as manifests (`berth audit apply`, through the API, see `berth-audit`
//! for the format). Targets are the engine's containers (from the moment the engine creates
//! them, before their process starts, until they exit) and cgroups registered by path (any
//! other workload, e.g. a Kubernetes pod's cgroup). Each target's labels select policies; the
//! merged rules are its profile, compiled into plans per syscall ([`DesiredAudit`]). Then the
//! tracepoints the plans need are attached and the ones nothing needs are detached.
//!
//! A bad manifest changes nothing: every document is validated first (unknown syscall, bad
//! pattern), and a reconcile that fails puts the previous policies back.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use berth_audit::{AuditPolicy, Profile};
use berth_common::{
    audit::{
        ACT_COUNT, ACT_KILL, ACT_RECORD, ARG_NONE, AUDIT_CLAUSES, AuditClause, AuditPathValue,
        AuditSyscall, AuditSyscallKey, AuditTarget, CAP_ADDR_AT_EXIT, CAP_FLAGS_IN_STRUCT,
        CAP_LIFECYCLE, CAP_NO_RETURN, SYS_EXECVE, SYS_EXECVEAT, SYS_EXIT, SYS_EXIT_GROUP,
        TARGET_COUNT_ALL, TARGET_LIFECYCLE,
    },
    programs,
};
use serde_json::{Value, json};

use crate::{
    dataplane::{
        PinLayout,
        audit::{Attachment, AuditChanges, AuditMapError, AuditMaps, DesiredAudit, Tracepoints},
    },
    state_file::{StateFile, StateFileError},
};

/// Who each audited cgroup is, shared by the store (writer), the event decoder and `/metrics`.
pub type Targets = Arc<std::sync::RwLock<HashMap<u64, TargetInfo>>>;

/// Kubernetes' CRI labels: a container's pod and namespace, when it has them.
pub const POD_LABEL: &str = "io.kubernetes.pod.name";
pub use crate::policy::NAMESPACE_LABEL;

#[derive(Debug, thiserror::Error)]
pub enum AuditStoreError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Dataplane(#[from] AuditMapError),
    #[error(transparent)]
    State(#[from] StateFileError),
    #[error("{0}")]
    Lookup(String),
}

/// A cgroup registered by path.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegisteredCgroup {
    /// Absolute path of the cgroup v2 directory.
    pub path: PathBuf,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Persisted {
    /// The policies as applied (JSON), by name.
    policies: BTreeMap<String, Value>,
    #[serde(default)]
    cgroups: Vec<RegisteredCgroup>,
}

/// The on-disk format of [`Persisted`].
const FORMAT: u32 = 1;

/// Who a cgroup is, for events, counts and metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TargetInfo {
    pub cgroup_id: u64,
    /// The engine's container id; for a registered cgroup, its path.
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `container` (started by berth) or `cgroup` (registered by path).
    pub kind: &'static str,
}

impl TargetInfo {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Prometheus instruments of the audit reconcile path.
#[derive(Clone)]
pub struct AuditMetrics {
    pub reconcile_seconds: prometheus::Histogram,
    pub policies: prometheus::IntGauge,
    pub targets: prometheus::IntGauge,
    pub tracepoints: prometheus::IntGauge,
}

/// What `apply`/`delete` did, as the API returns it.
#[derive(Debug, serde::Serialize)]
pub struct AuditOutcome {
    pub text: String,
    pub dataplane: AuditChanges,
    pub tracepoints_attached: usize,
    pub tracepoints_detached: usize,
    pub reconcile_seconds: f64,
}

pub struct AuditStore {
    file: StateFile,
    engine_root: PathBuf,
    cgroup_root: PathBuf,
    tracefs: PathBuf,
    state: Persisted,
    policies: BTreeMap<String, AuditPolicy>,
    maps: AuditMaps,
    tracepoints: Tracepoints,
    /// Profile → id; a profile's kernel entries never change, a changed rule set is a new
    /// profile.
    profile_ids: HashMap<Profile, u32>,
    next_profile: u32,
    /// The targets of the last reconcile, with their profile.
    targets: Vec<(TargetInfo, Option<Profile>)>,
    /// Shared with the event decoder and `/metrics`: who a cgroup is.
    attribution: Targets,
    metrics: AuditMetrics,
}

impl AuditStore {
    pub fn open(
        state_dir: &Path,
        engine_root: &Path,
        cgroup_root: &Path,
        layout: &PinLayout,
        tracepoints: Tracepoints,
        metrics: AuditMetrics,
        attribution: Targets,
    ) -> Result<Self, AuditStoreError> {
        let (file, state) = StateFile::open::<Persisted>(
            &state_dir.join("audit.json"),
            FORMAT,
            "reading the saved audit policies",
        )?;
        let state_err = |op, detail: String| {
            AuditStoreError::State(StateFileError {
                op,
                path: file.path().to_owned(),
                detail,
            })
        };
        let mut policies = BTreeMap::new();
        for (name, raw) in &state.policies {
            let bytes = serde_json::to_vec(raw).unwrap_or_default();
            let parsed = berth_audit::parse(&bytes).map_err(|e| {
                state_err(
                    "re-reading the saved audit policies",
                    format!("policy {name}: {e}"),
                )
            })?;
            for p in parsed {
                policies.insert(p.name.clone(), p);
            }
        }
        let maps = AuditMaps::open(layout)?;
        let next_profile = maps.max_profile() + 1;
        let mut store = Self {
            file,
            engine_root: engine_root.to_owned(),
            cgroup_root: cgroup_root.to_owned(),
            tracefs: tracefs_root(),
            state,
            policies,
            maps,
            tracepoints,
            profile_ids: HashMap::new(),
            next_profile,
            targets: Vec::new(),
            attribution,
            metrics,
        };
        let (changes, attached, detached, _) = store.reconcile()?;
        tracing::info!(
            policies = store.policies.len(),
            ?changes,
            attached,
            detached,
            "audit rules reconciled from the persisted state"
        );
        Ok(store)
    }

    /// The engine's live containers and the registered cgroups.
    fn current_targets(&self) -> Vec<TargetInfo> {
        let engine = crate::engine::Engine::new(crate::engine::EnginePaths {
            root: self.engine_root.clone(),
            runtime_root: PathBuf::new(),
            pin_root: PathBuf::new(),
            api_socket: PathBuf::new(),
        });
        let mut out = Vec::new();
        match engine.list() {
            Ok(list) => {
                for m in list {
                    if m.cgroup_id == 0 || m.finished_at.is_some() {
                        continue;
                    }
                    out.push(TargetInfo {
                        cgroup_id: m.cgroup_id,
                        id: m.id.clone(),
                        name: m.name.clone(),
                        pod: m.labels.get(POD_LABEL).cloned(),
                        namespace: m.labels.get(NAMESPACE_LABEL).cloned(),
                        labels: m.labels.clone(),
                        kind: "container",
                    });
                }
            }
            Err(e) => {
                tracing::warn!(root = %self.engine_root.display(), error = %e, "listing containers")
            }
        }
        for c in &self.state.cgroups {
            match cgroup_id(&c.path) {
                Ok(id) => out.push(TargetInfo {
                    cgroup_id: id,
                    id: c.path.display().to_string(),
                    name: c.name.clone(),
                    pod: c.labels.get(POD_LABEL).cloned(),
                    namespace: c.labels.get(NAMESPACE_LABEL).cloned(),
                    labels: c.labels.clone(),
                    kind: "cgroup",
                }),
                // A registered cgroup that is gone (its pod ended) is simply not audited; it
                // stays registered in case it comes back.
                Err(e) => {
                    tracing::debug!(path = %c.path.display(), error = %e, "registered cgroup absent")
                }
            }
        }
        out
    }

    fn profile_id(&mut self, p: &Profile) -> u32 {
        if let Some(id) = self.profile_ids.get(p) {
            return *id;
        }
        let id = self.next_profile;
        self.next_profile += 1;
        self.profile_ids.insert(p.clone(), id);
        id
    }

    /// Compiles every target's profile into map contents and attachments and applies both.
    fn reconcile(&mut self) -> Result<(AuditChanges, usize, usize, f64), AuditStoreError> {
        let started = Instant::now();
        let policies: Vec<AuditPolicy> = self.policies.values().cloned().collect();
        let targets = self.current_targets();
        let mut want = DesiredAudit::default();
        let mut attach: BTreeSet<Attachment> = BTreeSet::new();
        let mut compiled = Vec::new();
        let mut used_profiles = HashMap::new();
        for t in targets {
            let profile = berth_audit::profile(&policies, &t.labels)
                .map_err(|e| AuditStoreError::Invalid(format!("container {}: {e}", t.name)))?;
            if let Some(p) = &profile {
                let id = self.profile_id(p);
                used_profiles.insert(p.clone(), id);
                want.targets.insert(
                    t.cgroup_id,
                    AuditTarget {
                        profile: id,
                        flags: if p.count_all { TARGET_COUNT_ALL } else { 0 }
                            | if has_events(p) { TARGET_LIFECYCLE } else { 0 },
                    },
                );
            }
            compiled.push((t, profile));
        }
        for (p, id) in &used_profiles {
            plan_profile(*id, p, &mut want, &mut attach, &self.tracefs)?;
        }
        if want
            .targets
            .values()
            .any(|t| t.flags & TARGET_LIFECYCLE != 0)
        {
            for (program, name) in [
                (programs::SYS_PROC_EXEC, "sched_process_exec"),
                (programs::SYS_PROC_FORK, "sched_process_fork"),
                (programs::SYS_PROC_EXIT, "sched_process_exit"),
            ] {
                attach.insert(Attachment {
                    program,
                    category: "sched".into(),
                    name: name.into(),
                });
            }
        }
        // Attach before the maps name new syscalls (nothing is missed), detach after.
        let (attached, _) = self.tracepoints.set(
            &attach
                .union(&self.tracepoints.attached().cloned().collect())
                .cloned()
                .collect(),
        )?;
        let changes = self.maps.reconcile(&want)?;
        let (_, detached) = self.tracepoints.set(&attach)?;
        self.profile_ids
            .retain(|p, _| used_profiles.contains_key(p));
        {
            let mut a = self.attribution.write().unwrap_or_else(|p| p.into_inner());
            a.clear();
            for (t, _) in &compiled {
                a.insert(t.cgroup_id, t.clone());
            }
        }
        self.targets = compiled;
        self.save()?;
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.reconcile_seconds.observe(seconds);
        self.metrics.policies.set(self.policies.len() as i64);
        self.metrics.targets.set(want.targets.len() as i64);
        self.metrics
            .tracepoints
            .set(self.tracepoints.attached().count() as i64);
        if changes != AuditChanges::default() || attached + detached > 0 {
            tracing::info!(?changes, attached, detached, seconds, "audit reconciled");
        }
        Ok((changes, attached, detached, seconds))
    }

    fn save(&mut self) -> Result<(), AuditStoreError> {
        Ok(self.file.save(&self.state)?)
    }

    /// Runs `change` on the state, reconciles, and puts everything back if that fails.
    fn commit(
        &mut self,
        lines: Vec<String>,
        change: impl FnOnce(&mut Self),
    ) -> Result<AuditOutcome, AuditStoreError> {
        let before = (
            std::mem::take(&mut self.state.policies),
            self.state.cgroups.clone(),
            self.policies.clone(),
        );
        self.state.policies = before.0.clone();
        change(self);
        match self.reconcile() {
            Ok((dataplane, attached, detached, seconds)) => Ok(AuditOutcome {
                text: lines.join("\n"),
                dataplane,
                tracepoints_attached: attached,
                tracepoints_detached: detached,
                reconcile_seconds: seconds,
            }),
            Err(e) => {
                (self.state.policies, self.state.cgroups, self.policies) = before;
                let _ = self.reconcile();
                Err(e)
            }
        }
    }

    /// Applies audit policies: all documents are validated first (and every syscall a rule
    /// needs a tracepoint for must have one on this kernel); then they replace the policies of
    /// the same name.
    pub fn apply(&mut self, bytes: &[u8]) -> Result<AuditOutcome, AuditStoreError> {
        let parsed =
            berth_audit::parse(bytes).map_err(|e| AuditStoreError::Invalid(e.to_string()))?;
        let raws = raw_documents(bytes)?;
        for p in &parsed {
            check_tracepoints(p, &self.tracefs)?;
        }
        let mut lines = Vec::new();
        let mut updates = Vec::new();
        for p in parsed {
            let raw = raws.get(&p.name).cloned().unwrap_or(Value::Null);
            let verb = match self.state.policies.get(&p.name) {
                None => "created",
                Some(old) if *old == raw => "unchanged",
                Some(_) => "configured",
            };
            lines.push(format!("auditpolicy/{} {verb}", p.name));
            updates.push((p, raw));
        }
        self.commit(lines, |s| {
            for (p, raw) in updates {
                s.state.policies.insert(p.name.clone(), raw);
                s.policies.insert(p.name.clone(), p);
            }
        })
    }

    pub fn delete(&mut self, names: &[String]) -> Result<AuditOutcome, AuditStoreError> {
        let mut lines = Vec::new();
        for n in names {
            let verb = if self.policies.contains_key(n) {
                "deleted"
            } else {
                "not found"
            };
            lines.push(format!("auditpolicy/{n} {verb}"));
        }
        let names = names.to_vec();
        self.commit(lines, |s| {
            for n in &names {
                s.policies.remove(n);
                s.state.policies.remove(n);
            }
        })
    }

    /// Registers a cgroup by path (absolute, or relative to the cgroup v2 root).
    pub fn add_cgroup(&mut self, mut c: RegisteredCgroup) -> Result<AuditOutcome, AuditStoreError> {
        if c.path.is_relative() {
            c.path = self.cgroup_root.join(&c.path);
        }
        cgroup_id(&c.path).map_err(AuditStoreError::Lookup)?;
        if c.name.is_empty() {
            c.name = c
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        let line = format!("cgroup {} registered as {}", c.path.display(), c.name);
        self.commit(vec![line], |s| {
            s.state.cgroups.retain(|o| o.path != c.path);
            s.state.cgroups.push(c);
        })
    }

    pub fn remove_cgroup(&mut self, path: &Path) -> Result<AuditOutcome, AuditStoreError> {
        let path = if path.is_relative() {
            self.cgroup_root.join(path)
        } else {
            path.to_owned()
        };
        if !self.state.cgroups.iter().any(|c| c.path == path) {
            return Err(AuditStoreError::Lookup(format!(
                "cgroup {} is not registered",
                path.display()
            )));
        }
        let line = format!("cgroup {} unregistered", path.display());
        self.commit(vec![line], |s| s.state.cgroups.retain(|c| c.path != path))
    }

    /// Re-reads the engine's containers and reconciles when they changed.
    pub fn containers_changed(&mut self) -> Result<(), AuditStoreError> {
        let now = self.current_targets();
        let same = now.len() == self.targets.len()
            && now.iter().zip(&self.targets).all(|(a, (b, _))| a == b);
        if same {
            return Ok(());
        }
        self.reconcile().map(|_| ())
    }

    /// The deny rules (seccomp) for a container with `labels`.
    pub fn deny_for(&self, labels: &BTreeMap<String, String>) -> Result<Value, AuditStoreError> {
        let policies: Vec<AuditPolicy> = self.policies.values().cloned().collect();
        let profile = berth_audit::profile(&policies, labels)
            .map_err(|e| AuditStoreError::Invalid(e.to_string()))?;
        let deny: Vec<Value> = profile
            .map(|p| p.deny)
            .unwrap_or_default()
            .iter()
            .map(|d| {
                json!({
                    "syscall": berth_audit::syscall_name(d.nr).unwrap_or_else(|| d.nr.to_string()),
                    "nr": d.nr,
                    "flags_arg": d.flags_arg,
                    "flags_mask": d.flags_mask,
                })
            })
            .collect();
        Ok(json!({ "deny": deny }))
    }

    /// Per target and syscall, the calls counted so far.
    pub fn counts(&self) -> Value {
        let counts = self.maps.counts();
        let a = self.attribution.read().unwrap_or_else(|p| p.into_inner());
        let rows: Vec<Value> = counts
            .iter()
            .filter_map(|((cgroup, nr), n)| {
                let t = a.get(cgroup)?;
                Some(json!({
                    "container": t.name,
                    "id": t.id,
                    "cgroup_id": cgroup,
                    "syscall": berth_audit::syscall_name(*nr).unwrap_or_else(|| nr.to_string()),
                    "count": n,
                }))
            })
            .collect();
        json!({ "counts": rows })
    }

    /// (target name, syscall name) → count, for metrics.
    pub fn count_series(&self) -> Vec<(String, String, u64)> {
        let counts = self.maps.counts();
        let a = self.attribution.read().unwrap_or_else(|p| p.into_inner());
        counts
            .iter()
            .filter_map(|((cgroup, nr), n)| {
                let t = a.get(cgroup)?;
                Some((
                    t.name.clone(),
                    berth_audit::syscall_name(*nr).unwrap_or_else(|| nr.to_string()),
                    *n,
                ))
            })
            .collect()
    }

    /// Policies, targets with their profile, attached tracepoints.
    pub fn view(&self) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|(t, p)| {
                let mut v = t.to_json();
                v["audited"] = p.is_some().into();
                if let Some(p) = p {
                    v["policies"] = json!(p.policies);
                    v["profile"] = self.profile_ids.get(p).copied().into();
                    v["count_all"] = p.count_all.into();
                    v["syscalls"] = json!(
                        p.syscalls
                            .keys()
                            .map(|nr| berth_audit::syscall_name(*nr)
                                .unwrap_or_else(|| nr.to_string()))
                            .collect::<Vec<_>>()
                    );
                    v["deny"] = json!(
                        p.deny
                            .iter()
                            .map(|d| berth_audit::syscall_name(d.nr)
                                .unwrap_or_else(|| d.nr.to_string()))
                            .collect::<Vec<_>>()
                    );
                }
                v
            })
            .collect();
        json!({
            "policies": self.state.policies.keys().collect::<Vec<_>>(),
            "cgroups": self.state.cgroups,
            "targets": targets,
            "tracepoints": self.tracepoints.attached().map(|a| a.to_string()).collect::<Vec<_>>(),
        })
    }
}

/// Splits a manifest into its documents (as JSON), by `metadata.name`.
fn raw_documents(bytes: &[u8]) -> Result<BTreeMap<String, Value>, AuditStoreError> {
    use serde::Deserialize as _;
    let mut out = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_slice(bytes) {
        let v = Value::deserialize(doc).map_err(|e| AuditStoreError::Invalid(e.to_string()))?;
        if v.is_null() {
            continue;
        }
        if let Some(name) = v["metadata"]["name"].as_str() {
            out.insert(name.to_owned(), v.clone());
        }
    }
    Ok(out)
}

/// The tracefs mount (aya looks in the same two places).
fn tracefs_root() -> PathBuf {
    let modern = PathBuf::from("/sys/kernel/tracing");
    if modern.join("events").exists() {
        modern
    } else {
        PathBuf::from("/sys/kernel/debug/tracing")
    }
}

/// The `syscalls:` tracepoint name of a syscall's entry or exit (`sys_enter_openat`); some
/// syscalls' tracepoints carry a `new` prefix (`sys_enter_newfstatat`).
pub fn syscall_tracepoint(tracefs: &Path, nr: u32, side: &str) -> Option<String> {
    let name = berth_audit::syscall_name(nr)?;
    [
        format!("sys_{side}_{name}"),
        format!("sys_{side}_new{name}"),
    ]
    .into_iter()
    .find(|tp| tracefs.join("events/syscalls").join(tp).exists())
}

fn check_tracepoints(p: &AuditPolicy, tracefs: &Path) -> Result<(), AuditStoreError> {
    let mut missing = Vec::new();
    for r in &p.rules {
        if r.action == berth_audit::Action::Deny {
            continue;
        }
        if let berth_audit::Syscalls::Named(nrs) = &r.syscalls {
            for nr in nrs {
                if syscall_tracepoint(tracefs, *nr, "enter").is_none() {
                    missing.push(berth_audit::syscall_name(*nr).unwrap_or_else(|| nr.to_string()));
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(AuditStoreError::Invalid(format!(
        "AuditPolicy {}: this kernel has no tracepoint for {} (see {}/events/syscalls); \
         audit them with `count` on \"*\" or `deny`",
        p.name,
        missing.join(", "),
        tracefs.display()
    )))
}

fn clauses(list: &[berth_audit::Clause]) -> [AuditClause; AUDIT_CLAUSES] {
    let mut out = [AuditClause::default(); AUDIT_CLAUSES];
    for (slot, c) in out.iter_mut().zip(list) {
        *slot = AuditClause {
            flags_mask: c.flags_mask,
            actions: c.actions,
            _pad: 0,
        };
    }
    out
}

fn arg_index(a: Option<u8>) -> u8 {
    a.unwrap_or(ARG_NONE)
}

fn kernel_plan(capture: &berth_audit::Capture) -> AuditSyscall {
    let mut cap = 0;
    if capture.flags_in_struct {
        cap |= CAP_FLAGS_IN_STRUCT;
    }
    if capture.addr_at_exit {
        cap |= CAP_ADDR_AT_EXIT;
    }
    if capture.no_return {
        cap |= CAP_NO_RETURN;
    }
    AuditSyscall {
        path_arg: arg_index(capture.path_arg),
        argv_arg: arg_index(capture.argv_arg),
        addr_arg: arg_index(capture.addr_arg),
        flags_arg: arg_index(capture.flags_arg),
        capture: cap,
        ..AuditSyscall::default()
    }
}

/// Adds profile `id`'s plans to `want` and the tracepoints they need to `attach`. Every
/// profile also keeps the process lifecycle informed: execve/execveat (argv for exec events)
/// and exit/exit_group (exit status).
fn plan_profile(
    id: u32,
    p: &Profile,
    want: &mut DesiredAudit,
    attach: &mut BTreeSet<Attachment>,
    tracefs: &Path,
) -> Result<(), AuditStoreError> {
    let mut plans: BTreeMap<u32, AuditSyscall> = BTreeMap::new();
    let mut needs_exit: BTreeSet<u32> = BTreeSet::new();
    for (nr, plan) in &p.syscalls {
        let mut k = kernel_plan(&plan.capture);
        k.clauses = clauses(&plan.clauses);
        k.path_rules = u8::from(!plan.paths.is_empty());
        // A record waits for its return value; a kill is reported at entry.
        let waits = |cs: &[berth_audit::Clause]| {
            cs.iter()
                .any(|c| c.actions & ACT_RECORD != 0 && c.actions & ACT_KILL == 0)
        };
        let mut records = waits(&plan.clauses);
        for e in &plan.paths {
            want.paths.insert(
                (id, *nr, e.prefix.clone()),
                AuditPathValue {
                    clauses: clauses(&e.clauses),
                },
            );
            records |= waits(&e.clauses);
        }
        if records && !plan.capture.no_return {
            needs_exit.insert(*nr);
        }
        plans.insert(*nr, k);
    }
    // Counts-only profiles get no per-process work (no lifecycle captures, no exec/exit events).
    let lifecycle = if has_events(p) {
        &[SYS_EXECVE, SYS_EXECVEAT, SYS_EXIT, SYS_EXIT_GROUP][..]
    } else {
        &[]
    };
    for &nr in lifecycle {
        let k = plans
            .entry(nr)
            .or_insert_with(|| kernel_plan(&berth_audit::Capture::of(nr)));
        k.capture |= CAP_LIFECYCLE;
        if nr == SYS_EXECVE || nr == SYS_EXECVEAT {
            // The pending capture must be removed when the exec returns.
            needs_exit.insert(nr);
        }
    }
    for (nr, k) in plans {
        // Counting every syscall is `sys_enter_raw`'s; only named syscalls get a tracepoint.
        let tp = syscall_tracepoint(tracefs, nr, "enter").ok_or_else(|| {
            AuditStoreError::Invalid(format!(
                "this kernel has no tracepoint for syscall {}",
                berth_audit::syscall_name(nr).unwrap_or_else(|| nr.to_string())
            ))
        })?;
        attach.insert(Attachment {
            program: programs::SYS_ENTER,
            category: "syscalls".into(),
            name: tp,
        });
        if needs_exit.contains(&nr)
            && let Some(tp) = syscall_tracepoint(tracefs, nr, "exit")
        {
            attach.insert(Attachment {
                program: programs::SYS_EXIT,
                category: "syscalls".into(),
                name: tp,
            });
        }
        want.syscalls.insert(AuditSyscallKey { profile: id, nr }, k);
    }
    if p.count_all {
        attach.insert(Attachment {
            program: programs::SYS_ENTER_RAW,
            category: "raw_syscalls".into(),
            name: "sys_enter".into(),
        });
    }
    Ok(())
}

/// Whether a profile's rules produce events (record or kill): such targets also get their
/// process lifecycle reported.
fn has_events(p: &Profile) -> bool {
    let events = |cs: &[berth_audit::Clause]| cs.iter().any(|c| c.actions & !ACT_COUNT != 0);
    p.syscalls
        .values()
        .any(|plan| events(&plan.clauses) || plan.paths.iter().any(|e| events(&e.clauses)))
}

/// The cgroup v2 id of a cgroup directory: its inode number (what
/// `bpf_get_current_cgroup_id()` returns for tasks in it).
pub fn cgroup_id(path: &Path) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(path).map_err(|e| format!("cgroup {}: {e}", path.display()))?;
    if !md.is_dir() || !path.join("cgroup.procs").exists() {
        return Err(format!(
            "{} is not a cgroup v2 directory (no cgroup.procs)",
            path.display()
        ));
    }
    Ok(md.ino())
}
