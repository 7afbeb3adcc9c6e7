//! The catalog: stored services and slices, apply/delete, and frontend compilation.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, btree_map::Entry},
    fmt,
    net::Ipv4Addr,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    Backend, BackendState, Error, Frontend, FrontendKind, Kind, NodeContext, Object, ObjectKey,
    Problem, Protocol, Scope, ServiceEntry, ServicePortEntry, ServiceRef, SliceEntry,
    TrafficPolicy,
    compile::{Compiled, compile_service, compile_slice},
};

/// What apply or delete did to one object (kubectl's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
    /// Delete of an object the catalog does not have.
    NotFound,
    /// Valid but not served; `removed` = an earlier stored version was removed.
    Skipped {
        reason: String,
        removed: bool,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Created => f.write_str("created"),
            Action::Configured => f.write_str("configured"),
            Action::Unchanged => f.write_str("unchanged"),
            Action::Deleted => f.write_str("deleted"),
            Action::NotFound => f.write_str("not found"),
            Action::Skipped {
                reason,
                removed: false,
            } => write!(f, "skipped ({reason})"),
            Action::Skipped {
                reason,
                removed: true,
            } => write!(f, "skipped ({reason}); the stored version was removed"),
        }
    }
}

/// The outcome for one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectResult {
    pub object: ObjectKey,
    pub action: Action,
}

impl fmt::Display for ObjectResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.object, self.action)
    }
}

/// Per-object outcomes of [`Catalog::apply`] or [`Catalog::delete`], in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplySummary {
    pub results: Vec<ObjectResult>,
}

impl ApplySummary {
    /// Whether the catalog changed (anything created, configured, deleted or removed).
    pub fn changed(&self) -> bool {
        self.results.iter().any(|r| match &r.action {
            Action::Created | Action::Configured | Action::Deleted => true,
            Action::Skipped { removed, .. } => *removed,
            Action::Unchanged | Action::NotFound => false,
        })
    }

    /// The results that were skipped, with their reasons.
    pub fn skipped(&self) -> impl Iterator<Item = &ObjectResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.action, Action::Skipped { .. }))
    }
}

impl fmt::Display for ApplySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Key of a stored slice: namespace, slice name.
type SliceKey = (String, String);

/// The services and EndpointSlices berth serves. Persisted as JSON:
/// `{"format":1,"services":[ServiceEntry…],"slices":[SliceEntry…]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    services: BTreeMap<ServiceRef, ServiceEntry>,
    slices: BTreeMap<SliceKey, SliceEntry>,
    /// Derived: the slice names of each service (same namespace).
    by_service: BTreeMap<ServiceRef, BTreeSet<String>>,
    /// Derived: which service owns each data-plane frontend key (conflict checks).
    owners: HashMap<FrontendKey, ServiceRef>,
}

const FORMAT: u32 = 1;

#[derive(Serialize)]
struct CatalogOut<'a> {
    format: u32,
    services: Vec<&'a ServiceEntry>,
    slices: Vec<&'a SliceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogIn {
    format: u32,
    services: Vec<ServiceEntry>,
    slices: Vec<SliceEntry>,
}

impl Serialize for Catalog {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        CatalogOut {
            format: FORMAT,
            services: self.services.values().collect(),
            slices: self.slices.values().collect(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Catalog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let c = CatalogIn::deserialize(deserializer)?;
        if c.format != FORMAT {
            return Err(serde::de::Error::custom(format!(
                "unsupported catalog format {} (expected {FORMAT})",
                c.format
            )));
        }
        let mut catalog = Catalog::default();
        for s in c.services {
            let sref = s.service.clone();
            catalog.set_service(&sref, Some(s));
        }
        for s in c.slices {
            catalog.insert_slice(s);
        }
        Ok(catalog)
    }
}

/// A validated object waiting to be committed.
enum Staged {
    Service(ObjectKey, Compiled<ServiceEntry>),
    Slice(ObjectKey, Compiled<SliceEntry>),
}

/// Identity of a frontend in the data plane (`berth_common::lb::FrontendKey` minus the scope,
/// which every kind but ClusterIP uses both of).
type FrontendKey = (Option<Ipv4Addr>, u16, Protocol);

impl Catalog {
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Parses YAML (multi-document) or JSON bytes, including `kind: List`, into objects.
    /// `origin` (a file name, or `-`) prefixes messages. Every object is fully validated
    /// (unknown fields, types, and everything [`Catalog::apply`] checks except the known
    /// networks and conflicts with other services); all problems are reported together.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Vec<Object>, Error> {
        crate::parse::parse(bytes, origin)
    }

    /// Validates all `objects` (each one, duplicates, backend addresses against
    /// `ctx.known_networks`, frontends claimed by two services), and only if all are valid
    /// stores them. Returns what happened to each object, in input order.
    pub fn apply(
        &mut self,
        objects: Vec<Object>,
        ctx: &NodeContext,
    ) -> Result<ApplySummary, Error> {
        let mut problems = Vec::new();
        let mut staged = Vec::with_capacity(objects.len());
        let mut seen = HashSet::with_capacity(objects.len());
        for object in &objects {
            let key = object.key();
            if !key.name.is_empty() && !seen.insert(key.clone()) {
                problems.push(Problem::new(
                    key.to_string(),
                    None,
                    "appears more than once in the input",
                ));
                continue;
            }
            let compiled = match object {
                Object::Service(s) => compile_service(s).map(|c| Staged::Service(key, c)),
                Object::EndpointSlice(s) => {
                    compile_slice(s, Some(ctx)).map(|c| Staged::Slice(key, c))
                }
            };
            match compiled {
                Ok(s) => staged.push(s),
                Err(p) => problems.extend(p),
            }
        }
        if problems.is_empty() {
            problems = self.conflicts(&staged);
        }
        if !problems.is_empty() {
            return Err(Error::Invalid { problems });
        }
        let results = staged
            .into_iter()
            .map(|s| match s {
                Staged::Service(object, c) => {
                    let action = self.commit_service(&object, c);
                    ObjectResult { object, action }
                }
                Staged::Slice(object, c) => {
                    let action = self.commit_slice(&object, c);
                    ObjectResult { object, action }
                }
            })
            .collect();
        Ok(ApplySummary { results })
    }

    /// Removes objects by kind, namespace and name (their content is not looked at). Slices of
    /// a deleted service stay (they are kept for when it comes back); see
    /// [`Catalog::delete_service`].
    pub fn delete(&mut self, objects: &[Object]) -> ApplySummary {
        let results = objects
            .iter()
            .map(|o| {
                let object = o.key();
                let found = match object.kind {
                    Kind::Service => self
                        .set_service(&ServiceRef::new(&object.namespace, &object.name), None)
                        .is_some(),
                    Kind::EndpointSlice => self
                        .remove_slice(&(object.namespace.clone(), object.name.clone()))
                        .is_some(),
                };
                let action = if found {
                    Action::Deleted
                } else {
                    Action::NotFound
                };
                ObjectResult { object, action }
            })
            .collect();
        ApplySummary { results }
    }

    /// Removes a service and all its slices. Returns whether anything was removed.
    pub fn delete_service(&mut self, svc: &ServiceRef) -> bool {
        let mut removed = self.set_service(svc, None).is_some();
        for name in self.by_service.remove(svc).unwrap_or_default() {
            removed |= self.slices.remove(&(svc.namespace.clone(), name)).is_some();
        }
        removed
    }

    /// The stored services, ordered by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values()
    }

    pub fn service(&self, svc: &ServiceRef) -> Option<&ServiceEntry> {
        self.services.get(svc)
    }

    /// All stored slices, ordered by namespace and name (including slices whose service is
    /// not, or not yet, stored).
    pub fn slices(&self) -> impl Iterator<Item = &SliceEntry> {
        self.slices.values()
    }

    /// The stored slices of `svc`, ordered by name.
    pub fn slices_of<'a>(&'a self, svc: &'a ServiceRef) -> impl Iterator<Item = &'a SliceEntry> {
        self.by_service
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(svc.namespace.clone(), name.clone())))
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// The frontends of every stored service for the node `ctx`, with their backends chosen,
    /// sorted (by service, port name, kind, scope, address, port, protocol).
    pub fn frontends(&self, ctx: &NodeContext) -> Vec<Frontend> {
        let mut out = Vec::new();
        for svc in self.services.values() {
            self.service_frontends(svc, ctx, &mut out);
        }
        out.sort();
        out
    }

    /// The frontends of one service (sorted), as [`Catalog::frontends`] would produce them.
    pub fn frontends_of(&self, svc: &ServiceRef, ctx: &NodeContext) -> Vec<Frontend> {
        let mut out = Vec::new();
        if let Some(entry) = self.services.get(svc) {
            self.service_frontends(entry, ctx, &mut out);
        }
        out.sort();
        out
    }

    fn service_frontends(&self, svc: &ServiceEntry, ctx: &NodeContext, out: &mut Vec<Frontend>) {
        let slices: Vec<&SliceEntry> = self.slices_of(&svc.service).collect();
        // An address can be both an external IP and a load-balancer IP (or a cluster IP): one
        // frontend per data-plane key, the first kind pushed wins.
        let mut seen: HashSet<(FrontendKey, Scope)> = HashSet::new();
        for port in &svc.ports {
            let candidates = candidates(&slices, port, ctx);
            let cluster = select(&candidates, |_| true);
            let local = select(&candidates, |c| c.local);
            let policy = |p: TrafficPolicy| match p {
                TrafficPolicy::Cluster => &cluster,
                TrafficPolicy::Local => &local,
            };
            let mut push = |kind, scope, addr, port_no, backends: &Vec<Backend>| {
                if seen.insert(((addr, port_no, port.protocol), scope)) {
                    out.push(Frontend {
                        service: svc.service.clone(),
                        port_name: port.name.clone(),
                        kind,
                        scope,
                        addr,
                        port: port_no,
                        protocol: port.protocol,
                        affinity_timeout: svc.affinity_timeout,
                        backends: backends.clone(),
                    });
                }
            };
            let internal = policy(svc.internal_traffic_policy);
            let external = policy(svc.external_traffic_policy);
            for &ip in &svc.cluster_ips {
                push(
                    FrontendKind::ClusterIp,
                    Scope::Internal,
                    Some(ip),
                    port.port,
                    internal,
                );
            }
            if let Some(node_port) = port.node_port {
                push(
                    FrontendKind::NodePort,
                    Scope::External,
                    None,
                    node_port,
                    external,
                );
                push(
                    FrontendKind::NodePort,
                    Scope::Internal,
                    None,
                    node_port,
                    &cluster,
                );
            }
            for (kind, ips) in [
                (FrontendKind::ExternalIp, &svc.external_ips),
                (FrontendKind::LoadBalancer, &svc.load_balancer_ips),
            ] {
                for &ip in ips {
                    push(kind, Scope::External, Some(ip), port.port, external);
                    push(kind, Scope::Internal, Some(ip), port.port, &cluster);
                }
            }
        }
    }

    /// Frontends two different services would both own after applying `staged`, in input
    /// order (the later service is the one reported).
    fn conflicts(&self, staged: &[Staged]) -> Vec<Problem> {
        let replaced: HashSet<ServiceRef> = staged
            .iter()
            .filter_map(|s| match s {
                Staged::Service(key, _) => Some(ServiceRef::new(&key.namespace, &key.name)),
                Staged::Slice(..) => None,
            })
            .collect();
        let mut batch: HashMap<FrontendKey, &ServiceRef> = HashMap::new();
        let mut problems = Vec::new();
        for s in staged {
            let Staged::Service(_, Compiled::Entry(svc)) = s else {
                continue;
            };
            for (kind, key) in frontend_keys(svc) {
                let owner = match batch.get(&key) {
                    Some(&o) => Some(o),
                    // A stored owner that this apply replaces or skips gives its keys up.
                    None => self.owners.get(&key).filter(|o| !replaced.contains(*o)),
                };
                match owner {
                    Some(o) if *o != svc.service => {
                        let (addr, port, proto) = key;
                        let addr = addr.map_or("*".to_owned(), |a| a.to_string());
                        problems.push(Problem::new(
                            format!("{} {}", Kind::Service, svc.service),
                            None,
                            format!(
                                "{kind} frontend {addr}:{port}/{proto} is already used by Service {o}"
                            ),
                        ));
                    }
                    _ => {
                        batch.insert(key, &svc.service);
                    }
                }
            }
        }
        problems
    }

    /// Stores (or with None removes) a service, keeping the frontend-owner index in step.
    /// Returns the previous entry.
    fn set_service(
        &mut self,
        sref: &ServiceRef,
        entry: Option<ServiceEntry>,
    ) -> Option<ServiceEntry> {
        let old = match entry {
            Some(e) => {
                for (_, key) in frontend_keys(&e) {
                    self.owners.insert(key, sref.clone());
                }
                self.services.insert(sref.clone(), e)
            }
            None => self.services.remove(sref),
        };
        if let Some(old) = &old {
            let new = self.services.get(sref);
            for (_, key) in frontend_keys(old) {
                let still_used =
                    new.is_some_and(|n| frontend_keys(n).iter().any(|(_, k)| *k == key));
                if !still_used && self.owners.get(&key) == Some(sref) {
                    self.owners.remove(&key);
                }
            }
        }
        old
    }

    fn commit_service(&mut self, key: &ObjectKey, c: Compiled<ServiceEntry>) -> Action {
        let sref = ServiceRef::new(&key.namespace, &key.name);
        match c {
            Compiled::Entry(entry) => match self.services.get(&sref) {
                None => {
                    self.set_service(&sref, Some(entry));
                    Action::Created
                }
                Some(old) if *old == entry => Action::Unchanged,
                Some(_) => {
                    self.set_service(&sref, Some(entry));
                    Action::Configured
                }
            },
            Compiled::Skip(reason) => Action::Skipped {
                reason,
                removed: self.set_service(&sref, None).is_some(),
            },
        }
    }

    fn commit_slice(&mut self, key: &ObjectKey, c: Compiled<SliceEntry>) -> Action {
        let skey = (key.namespace.clone(), key.name.clone());
        match c {
            Compiled::Entry(entry) => match self.slices.get(&skey) {
                None => {
                    self.insert_slice(entry);
                    Action::Created
                }
                Some(old) if *old == entry => Action::Unchanged,
                Some(_) => {
                    self.remove_slice(&skey);
                    self.insert_slice(entry);
                    Action::Configured
                }
            },
            Compiled::Skip(reason) => Action::Skipped {
                reason,
                removed: self.remove_slice(&skey).is_some(),
            },
        }
    }

    fn insert_slice(&mut self, entry: SliceEntry) {
        let key = (entry.namespace.clone(), entry.name.clone());
        self.remove_slice(&key);
        self.by_service
            .entry(entry.service.clone())
            .or_default()
            .insert(entry.name.clone());
        self.slices.insert(key, entry);
    }

    fn remove_slice(&mut self, key: &SliceKey) -> Option<SliceEntry> {
        let old = self.slices.remove(key)?;
        if let Some(names) = self.by_service.get_mut(&old.service) {
            names.remove(&old.name);
            if names.is_empty() {
                self.by_service.remove(&old.service);
            }
        }
        Some(old)
    }
}

/// The data-plane keys a service's frontends use, with their kind for messages.
fn frontend_keys(svc: &ServiceEntry) -> Vec<(FrontendKind, FrontendKey)> {
    let mut keys = Vec::new();
    for p in &svc.ports {
        for &ip in &svc.cluster_ips {
            keys.push((FrontendKind::ClusterIp, (Some(ip), p.port, p.protocol)));
        }
        if let Some(np) = p.node_port {
            keys.push((FrontendKind::NodePort, (None, np, p.protocol)));
        }
        for &ip in &svc.external_ips {
            keys.push((FrontendKind::ExternalIp, (Some(ip), p.port, p.protocol)));
        }
        for &ip in &svc.load_balancer_ips {
            keys.push((FrontendKind::LoadBalancer, (Some(ip), p.port, p.protocol)));
        }
    }
    keys
}

/// One endpoint of one service port, merged over the service's slices.
struct Candidate<'a> {
    addr: Ipv4Addr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    node: Option<&'a String>,
    target: Option<&'a String>,
}

impl Candidate<'_> {
    /// Preference when the same address:port is in several slices.
    fn rank(&self) -> (bool, bool, bool) {
        (self.ready, self.serving, self.local)
    }
}

/// The endpoints serving `port`: from each slice port with the same name and protocol,
/// deduplicated by address:port (a ready copy wins), sorted by address:port.
fn candidates<'a>(
    slices: &[&'a SliceEntry],
    port: &ServicePortEntry,
    ctx: &NodeContext,
) -> Vec<Candidate<'a>> {
    let mut by_addr: BTreeMap<(Ipv4Addr, u16), Candidate<'a>> = BTreeMap::new();
    for slice in slices {
        let Some(sp) = slice
            .ports
            .iter()
            .find(|sp| sp.name == port.name && sp.protocol == port.protocol)
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let c = Candidate {
                addr: ep.addr,
                port: sp.port,
                ready: ep.ready,
                serving: ep.serving,
                terminating: ep.terminating,
                local: ctx.is_local(ep.node.as_deref()),
                node: ep.node.as_ref(),
                target: ep.target.as_ref(),
            };
            match by_addr.entry((c.addr, c.port)) {
                Entry::Vacant(v) => {
                    v.insert(c);
                }
                Entry::Occupied(mut o) => {
                    if c.rank() > o.get().rank() {
                        o.insert(c);
                    }
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// kube-proxy's endpoint choice among the candidates `filter` keeps: the ready ones, or if
/// none is ready, the serving terminating ones.
fn select(candidates: &[Candidate<'_>], filter: impl Fn(&Candidate<'_>) -> bool) -> Vec<Backend> {
    let pick = |state: BackendState, keep: &dyn Fn(&Candidate<'_>) -> bool| -> Vec<Backend> {
        candidates
            .iter()
            .filter(|c| filter(c) && keep(c))
            .map(|c| Backend {
                addr: c.addr,
                port: c.port,
                state,
                node: c.node.cloned(),
                target: c.target.cloned(),
            })
            .collect()
    };
    let ready = pick(BackendState::Ready, &|c| c.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(BackendState::Terminating, &|c| c.serving && c.terminating)
}
