//! The load balancer's maps from userspace: programs service frontends and their backend sets
//! (see `berth_common::lb` for the layout and the atomic-update scheme), computes Maglev
//! tables, publishes containers' ports, and garbage-collects conntrack.
//!
//! One writer per entry: the agent's [`LbWriter`] owns every frontend except those flagged
//! `FRONTEND_F_PUBLISHED`, which belong to the runtime that published them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData};
use berth_common::{
    lb::{
        AffinityKey, AffinityValue, Backend, BackendKey, CT_F_CLOSING, CtKey, CtValue,
        FRONTEND_F_AFFINITY, FRONTEND_F_MAGLEV, FRONTEND_F_PUBLISHED, Frontend, FrontendKey,
        LbConfig, MAGLEV_MAX_SIZE, MaglevTable, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL,
        SCOPE_INTERNAL,
    },
    maps,
};

use super::{
    PinLayout,
    pods::{PortProtocol, PublishedPort},
};

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("opening pinned map {name}: {detail}")]
    Open { name: &'static str, detail: String },
    #[error(
        "map {map} is full: this change needs {needed} entries and it holds at most {capacity}; \
         nothing was changed"
    )]
    Full {
        map: &'static str,
        needed: usize,
        capacity: u32,
    },
    #[error("writing {map} for {frontend}: {detail}")]
    Write {
        map: &'static str,
        frontend: String,
        detail: String,
    },
    #[error("Maglev table size {0} must be a prime between 3 and {MAGLEV_MAX_SIZE}")]
    MaglevSize(u32),
}

fn open<K: aya::Pod, V: aya::Pod>(
    layout: &PinLayout,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LbError> {
    let data = MapData::from_pin(layout.map(name)).map_err(|e| LbError::Open {
        name,
        detail: e.to_string(),
    })?;
    let map = if name == maps::LB_AFFINITY || name == maps::LB_CONNTRACK {
        Map::LruHashMap(data)
    } else {
        Map::HashMap(data)
    };
    HashMap::try_from(map).map_err(|e| LbError::Open {
        name,
        detail: e.to_string(),
    })
}

/// The pinned load-balancing maps.
pub struct LbMaps {
    pub frontends: HashMap<MapData, FrontendKey, Frontend>,
    pub backends: HashMap<MapData, BackendKey, Backend>,
    pub maglev: HashMap<MapData, u32, MaglevTable>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub node_addrs: HashMap<MapData, u32, u32>,
    pub config: Array<MapData, LbConfig>,
}

impl LbMaps {
    pub fn open(layout: &PinLayout) -> Result<Self, LbError> {
        let config = MapData::from_pin(layout.map(maps::LB_CONFIG))
            .map_err(|e| e.to_string())
            .and_then(|d| Array::try_from(Map::Array(d)).map_err(|e| e.to_string()))
            .map_err(|detail| LbError::Open {
                name: maps::LB_CONFIG,
                detail,
            })?;
        Ok(Self {
            frontends: open(layout, maps::LB_FRONTENDS)?,
            backends: open(layout, maps::LB_BACKENDS)?,
            maglev: open(layout, maps::LB_MAGLEV)?,
            affinity: open(layout, maps::LB_AFFINITY)?,
            conntrack: open(layout, maps::LB_CONNTRACK)?,
            node_addrs: open(layout, maps::LB_NODE_ADDRS)?,
            config,
        })
    }

    /// Writes one published port (see `pods::publish_ports`).
    pub fn publish(&mut self, ip: Ipv4Addr, port: &PublishedPort) -> Result<(), String> {
        let proto = match port.protocol {
            PortProtocol::Tcp => PROTO_TCP,
            PortProtocol::Udp => PROTO_UDP,
        };
        let id = published_set_id(port.host_port, proto);
        let backend = Backend {
            addr: u32::from_ne_bytes(ip.octets()),
            port: port.container_port.to_be(),
            proto,
            _pad: 0,
        };
        for scope in [SCOPE_EXTERNAL, SCOPE_INTERNAL] {
            let key = published_key(port.host_port, proto, scope);
            if let Ok(existing) = self.frontends.get(&key, 0) {
                let owner = if existing.flags & FRONTEND_F_PUBLISHED != 0 {
                    "another container"
                } else {
                    "a service's NodePort"
                };
                return Err(format!(
                    "host port {} is already used by {owner}",
                    port.host_port
                ));
            }
        }
        self.backends
            .insert(
                BackendKey {
                    set_id: id,
                    slot: 0,
                },
                backend,
                0,
            )
            .map_err(|e| format!("writing {}: {e}", maps::LB_BACKENDS))?;
        for scope in [SCOPE_EXTERNAL, SCOPE_INTERNAL] {
            let fe = Frontend {
                set_id: id,
                count: 1,
                flags: FRONTEND_F_PUBLISHED,
                frontend_id: id,
                affinity_timeout_s: 0,
            };
            self.frontends
                .insert(published_key(port.host_port, proto, scope), fe, 0)
                .map_err(|e| format!("writing {}: {e}", maps::LB_FRONTENDS))?;
        }
        Ok(())
    }

    /// Removes a published port, only if it still points at `ip` (the container's address).
    pub fn unpublish(&mut self, ip: Ipv4Addr, port: &PublishedPort) {
        let proto = match port.protocol {
            PortProtocol::Tcp => PROTO_TCP,
            PortProtocol::Udp => PROTO_UDP,
        };
        let slot = BackendKey {
            set_id: published_set_id(port.host_port, proto),
            slot: 0,
        };
        match self.backends.get(&slot, 0) {
            Ok(b) if b.addr == u32::from_ne_bytes(ip.octets()) => {}
            _ => return,
        }
        for scope in [SCOPE_EXTERNAL, SCOPE_INTERNAL] {
            let key = published_key(port.host_port, proto, scope);
            if matches!(self.frontends.get(&key, 0), Ok(fe) if fe.flags & FRONTEND_F_PUBLISHED != 0)
            {
                let _ = self.frontends.remove(&key);
            }
        }
        let _ = self.backends.remove(&BackendKey {
            set_id: published_set_id(port.host_port, proto),
            slot: 0,
        });
    }

    /// Replaces the set of node addresses (NodePorts and published ports are served on these).
    pub fn set_node_addrs(&mut self, addrs: &BTreeMap<Ipv4Addr, u32>) {
        let have: Vec<u32> = self.node_addrs.keys().filter_map(Result::ok).collect();
        for (addr, ifindex) in addrs {
            let _ = self
                .node_addrs
                .insert(u32::from_ne_bytes(addr.octets()), ifindex, 0);
        }
        for raw in have {
            if !addrs.contains_key(&Ipv4Addr::from(raw.to_ne_bytes())) {
                let _ = self.node_addrs.remove(&raw);
            }
        }
    }
}

/// The translated-flow conntrack map on its own handle, so garbage collection walks it without
/// holding the service store: a walk is one bpf() call per entry (hundreds of milliseconds at
/// 100,000 flows), and a service change must not wait for it.
pub struct ConntrackGc {
    map: HashMap<MapData, CtKey, CtValue>,
}

impl ConntrackGc {
    pub fn open(layout: &PinLayout) -> Result<Self, LbError> {
        Ok(Self {
            map: open(layout, maps::LB_CONNTRACK)?,
        })
    }

    /// Deletes entries idle for longer than their timeout. Returns (kept, removed).
    pub fn run(&mut self, now_ns: u64, timeouts: &CtTimeouts) -> (usize, usize) {
        gc_idle(&mut self.map, now_ns, timeouts, |v| {
            (v.last_seen_ns, v.flags & CT_F_CLOSING != 0)
        })
    }
}

/// Removes the entries of a conntrack-like map (5-tuple keys) idle for longer than their
/// timeout; `seen` gives an entry's last-seen time and whether its flow is closing. Returns
/// (kept, removed).
pub(super) fn gc_idle<V: aya::Pod>(
    map: &mut HashMap<MapData, CtKey, V>,
    now_ns: u64,
    timeouts: &CtTimeouts,
    seen: impl Fn(&V) -> (u64, bool),
) -> (usize, usize) {
    let entries: Vec<(CtKey, V)> = map.iter().filter_map(Result::ok).collect();
    let mut removed = 0;
    for (key, value) in &entries {
        let (last_seen_ns, closing) = seen(value);
        let limit = if closing {
            timeouts.closing
        } else if key.proto == PROTO_TCP {
            timeouts.tcp
        } else {
            timeouts.udp
        };
        if now_ns.saturating_sub(last_seen_ns) > limit.as_nanos() as u64 {
            let _ = map.remove(key);
            removed += 1;
        }
    }
    (entries.len() - removed, removed)
}

/// Idle timeouts of translated flows (conntrack-like defaults).
#[derive(Clone, Copy, Debug)]
pub struct CtTimeouts {
    pub tcp: Duration,
    pub udp: Duration,
    pub closing: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(6 * 3600),
            udp: Duration::from_secs(120),
            closing: Duration::from_secs(10),
        }
    }
}

/// Set ids at or above this belong to published ports; the agent allocates below it.
const PUBLISHED_SET_BASE: u32 = 0x8000_0000;

fn published_set_id(host_port: u16, proto: u8) -> u32 {
    PUBLISHED_SET_BASE | (u32::from(proto) << 16) | u32::from(host_port)
}

fn published_key(host_port: u16, proto: u8, scope: u8) -> FrontendKey {
    FrontendKey {
        addr: 0,
        port: host_port.to_be(),
        proto,
        scope,
    }
}

/// One frontend as the agent wants it programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredFrontend {
    pub key: FrontendKey,
    /// Sorted, deduplicated.
    pub backends: Vec<Backend>,
    pub affinity_timeout_s: Option<u32>,
    pub maglev: bool,
    /// For messages: "ns/name:port (ClusterIP 10.96.0.10:80/TCP)".
    pub label: String,
}

/// What one frontend looks like in the maps.
#[derive(Clone, Debug)]
struct Programmed {
    frontend: Frontend,
    backends: Vec<Backend>,
}

/// What a reconcile changed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReconcileReport {
    pub frontends_added: usize,
    pub frontends_updated: usize,
    pub frontends_removed: usize,
    pub frontends_unchanged: usize,
    /// Frontends not written because a published port holds their key.
    pub conflicts: Vec<String>,
}

/// The agent's writer: diffs desired frontends against what it programmed.
pub struct LbWriter {
    maps: LbMaps,
    programmed: BTreeMap<FrontendKey, Programmed>,
    next_set_id: u32,
    next_frontend_id: u32,
    maglev_size: u32,
}

impl LbWriter {
    /// Opens the maps and reads back what a previous agent programmed, so the first reconcile
    /// after a restart only writes the difference (and established flows never notice).
    pub fn open(layout: &PinLayout, maglev_size: u32) -> Result<Self, LbError> {
        if !is_prime(maglev_size) || maglev_size < 3 || maglev_size as usize > MAGLEV_MAX_SIZE {
            return Err(LbError::MaglevSize(maglev_size));
        }
        let mut maps = LbMaps::open(layout)?;
        let mut programmed = BTreeMap::new();
        let (mut max_set, mut max_fe) = (0u32, 0u32);
        let frontends: Vec<(FrontendKey, Frontend)> =
            maps.frontends.iter().filter_map(Result::ok).collect();
        for (key, fe) in frontends {
            if fe.flags & FRONTEND_F_PUBLISHED != 0 {
                continue;
            }
            let backends = (0..u32::from(fe.count))
                .filter_map(|slot| {
                    maps.backends
                        .get(
                            &BackendKey {
                                set_id: fe.set_id,
                                slot,
                            },
                            0,
                        )
                        .ok()
                })
                .collect();
            max_set = max_set.max(fe.set_id);
            max_fe = max_fe.max(fe.frontend_id);
            programmed.insert(
                key,
                Programmed {
                    frontend: fe,
                    backends,
                },
            );
        }
        let config = LbConfig {
            maglev_size,
            ..maps.config.get(&0, 0).unwrap_or_default()
        };
        maps.config.set(0, config, 0).map_err(|e| LbError::Write {
            map: maps::LB_CONFIG,
            frontend: "-".into(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            maps,
            programmed,
            next_set_id: max_set + 1,
            next_frontend_id: max_fe + 1,
            maglev_size,
        })
    }

    pub fn maps(&mut self) -> &mut LbMaps {
        &mut self.maps
    }

    /// Number of frontends and backend slots programmed.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.programmed.len(),
            self.programmed.values().map(|p| p.backends.len()).sum(),
        )
    }

    /// Sets the hairpin source address written into `LB_CONFIG`.
    pub fn set_hairpin_addr(&mut self, addr: Ipv4Addr) -> Result<(), LbError> {
        let mut config = self.maps.config.get(&0, 0).unwrap_or_default();
        config.hairpin_addr = u32::from_ne_bytes(addr.octets());
        config.maglev_size = self.maglev_size;
        self.maps
            .config
            .set(0, config, 0)
            .map_err(|e| LbError::Write {
                map: maps::LB_CONFIG,
                frontend: "-".into(),
                detail: e.to_string(),
            })
    }

    /// Makes the maps hold exactly `desired` (besides published ports). Capacity is checked
    /// first: a change that does not fit is refused before anything is written.
    pub fn reconcile(&mut self, desired: &[DesiredFrontend]) -> Result<ReconcileReport, LbError> {
        let wanted: BTreeSet<FrontendKey> = desired.iter().map(|d| d.key).collect();
        let stale: Vec<FrontendKey> = self
            .programmed
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        self.apply_changes(&stale, desired)
    }

    /// Removes the frontends `remove` and writes `upsert` (each only if it differs from what is
    /// programmed): the incremental form of [`LbWriter::reconcile`], for one service's change.
    pub fn apply_changes(
        &mut self,
        remove: &[FrontendKey],
        upsert: &[DesiredFrontend],
    ) -> Result<ReconcileReport, LbError> {
        self.check_capacity(remove, upsert)?;
        let mut report = ReconcileReport::default();
        for want in upsert {
            let key = &want.key;
            if self.is_programmed(want) {
                report.frontends_unchanged += 1;
                continue;
            }
            if !self.programmed.contains_key(key)
                && let Ok(existing) = self.maps.frontends.get(key, 0)
                && existing.flags & FRONTEND_F_PUBLISHED != 0
            {
                report.conflicts.push(format!(
                    "{}: the port is published by a container; not programmed",
                    want.label
                ));
                continue;
            }
            let existed = self.programmed.contains_key(key);
            self.program(want)?;
            if existed {
                report.frontends_updated += 1;
            } else {
                report.frontends_added += 1;
            }
        }
        for key in remove {
            if let Some(old) = self.programmed.remove(key) {
                let _ = self.maps.frontends.remove(key);
                self.delete_set(&old);
                report.frontends_removed += 1;
            }
        }
        Ok(report)
    }

    /// Whether `want` is exactly what the maps hold for its key.
    fn is_programmed(&self, want: &DesiredFrontend) -> bool {
        self.programmed.get(&want.key).is_some_and(|p| {
            p.backends == want.backends
                && affinity_of(&p.frontend) == want.affinity_timeout_s
                && (p.frontend.flags & FRONTEND_F_MAGLEV != 0)
                    == (want.maglev && !want.backends.is_empty())
        })
    }

    fn check_capacity(
        &self,
        remove: &[FrontendKey],
        upsert: &[DesiredFrontend],
    ) -> Result<(), LbError> {
        let removed: BTreeSet<&FrontendKey> = remove.iter().collect();
        let upserted: BTreeSet<&FrontendKey> = upsert.iter().map(|d| &d.key).collect();
        let kept = self
            .programmed
            .keys()
            .filter(|k| !removed.contains(k) && !upserted.contains(k))
            .count();
        let frontends = kept + upserted.len();
        if frontends > maps::LB_FRONTENDS_MAX_ENTRIES as usize {
            return Err(LbError::Full {
                map: maps::LB_FRONTENDS,
                needed: frontends,
                capacity: maps::LB_FRONTENDS_MAX_ENTRIES,
            });
        }
        // Worst moment: every current set still present plus every new set written next to it
        // (old sets are deleted only after their frontend switched).
        let current: usize = self.programmed.values().map(|p| p.backends.len()).sum();
        let written: usize = upsert
            .iter()
            .filter(|d| !self.is_programmed(d))
            .map(|d| d.backends.len())
            .sum();
        let needed = current + written;
        if needed > maps::LB_BACKENDS_MAX_ENTRIES as usize {
            return Err(LbError::Full {
                map: maps::LB_BACKENDS,
                needed,
                capacity: maps::LB_BACKENDS_MAX_ENTRIES,
            });
        }
        let maglev = self
            .programmed
            .values()
            .filter(|p| p.frontend.flags & FRONTEND_F_MAGLEV != 0)
            .count()
            + upsert
                .iter()
                .filter(|d| d.maglev && !d.backends.is_empty())
                .count();
        if maglev > maps::LB_MAGLEV_MAX_ENTRIES as usize {
            return Err(LbError::Full {
                map: maps::LB_MAGLEV,
                needed: maglev,
                capacity: maps::LB_MAGLEV_MAX_ENTRIES,
            });
        }
        Ok(())
    }

    /// Writes `want` under a fresh set id, switches the frontend to it, then deletes the old set.
    fn program(&mut self, want: &DesiredFrontend) -> Result<(), LbError> {
        let werr = |map: &'static str, e: aya::maps::MapError| LbError::Write {
            map,
            frontend: want.label.clone(),
            detail: e.to_string(),
        };
        let set_id = self.next_set_id;
        self.next_set_id += 1;
        for (slot, backend) in want.backends.iter().enumerate() {
            self.maps
                .backends
                .insert(
                    BackendKey {
                        set_id,
                        slot: slot as u32,
                    },
                    *backend,
                    0,
                )
                .map_err(|e| werr(maps::LB_BACKENDS, e))?;
        }
        let maglev = want.maglev && !want.backends.is_empty();
        if maglev {
            let table = maglev_table(&want.backends, self.maglev_size);
            self.maps
                .maglev
                .insert(set_id, table, 0)
                .map_err(|e| werr(maps::LB_MAGLEV, e))?;
        }
        let old = self.programmed.get(&want.key).cloned();
        let frontend_id = match &old {
            Some(p) => p.frontend.frontend_id,
            None => {
                self.next_frontend_id += 1;
                self.next_frontend_id - 1
            }
        };
        let mut flags = 0;
        if want.affinity_timeout_s.is_some() {
            flags |= FRONTEND_F_AFFINITY;
        }
        if maglev {
            flags |= FRONTEND_F_MAGLEV;
        }
        let frontend = Frontend {
            set_id,
            count: want.backends.len() as u16,
            flags,
            frontend_id,
            affinity_timeout_s: want.affinity_timeout_s.unwrap_or(0),
        };
        self.maps
            .frontends
            .insert(want.key, frontend, 0)
            .map_err(|e| werr(maps::LB_FRONTENDS, e))?;
        if let Some(old) = old {
            self.delete_set(&old);
            if old.frontend.flags & FRONTEND_F_AFFINITY != 0 {
                self.purge_affinity(frontend_id, &want.backends);
            }
        }
        self.programmed.insert(
            want.key,
            Programmed {
                frontend,
                backends: want.backends.clone(),
            },
        );
        Ok(())
    }

    fn delete_set(&mut self, old: &Programmed) {
        for slot in 0..u32::from(old.frontend.count) {
            let _ = self.maps.backends.remove(&BackendKey {
                set_id: old.frontend.set_id,
                slot,
            });
        }
        if old.frontend.flags & FRONTEND_F_MAGLEV != 0 {
            let _ = self.maps.maglev.remove(&old.frontend.set_id);
        }
    }

    /// Forgets affinities of `frontend_id` to backends that left it, so those clients are
    /// balanced anew instead of being sent to a removed backend.
    fn purge_affinity(&mut self, frontend_id: u32, keep: &[Backend]) {
        let keep: BTreeSet<&Backend> = keep.iter().collect();
        let stale: Vec<AffinityKey> = self
            .maps
            .affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.frontend_id == frontend_id && !keep.contains(&v.backend))
            .map(|(k, _)| k)
            .collect();
        for key in stale {
            let _ = self.maps.affinity.remove(&key);
        }
    }
}

fn affinity_of(fe: &Frontend) -> Option<u32> {
    (fe.flags & FRONTEND_F_AFFINITY != 0).then_some(fe.affinity_timeout_s)
}

/// Whether `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// 64-bit FNV-1a with a seed: a stable hash (the same on every node and every version), which
/// Maglev needs so all nodes build the same table from the same backends.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Maglev lookup table (Eisenbud et al., NSDI 2016, "Maglev: A Fast and Reliable Software
/// Network Load Balancer", section 3.4): each backend walks its own permutation of the `size`
/// buckets and claims the next free one in turn. Buckets hold slot indices into `backends`
/// (sorted), but the permutations depend only on each backend's address and port, so a backend
/// change moves few buckets between the backends that remain.
pub fn maglev_table(backends: &[Backend], size: u32) -> MaglevTable {
    let mut table = MaglevTable {
        slots: [0; MAGLEV_MAX_SIZE],
        _pad: 0,
    };
    let n = backends.len();
    if n == 0 {
        return table;
    }
    let m = size as u64;
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let mut id = [0u8; 6];
            id[..4].copy_from_slice(&b.addr.to_ne_bytes());
            id[4..].copy_from_slice(&b.port.to_ne_bytes());
            let offset = fnv1a(0x5eed_0001, &id) % m;
            let skip = fnv1a(0x5eed_0002, &id) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut filled = vec![false; size as usize];
    let mut placed = 0usize;
    'outer: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut bucket = (offset + next[i] * skip) % m;
            while filled[bucket as usize] {
                next[i] += 1;
                bucket = (offset + next[i] * skip) % m;
            }
            filled[bucket as usize] = true;
            table.slots[bucket as usize] = i as u16;
            next[i] += 1;
            placed += 1;
            if placed == size as usize {
                break 'outer;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(i: u32) -> Backend {
        Backend {
            addr: u32::from_ne_bytes([10, 0, (i >> 8) as u8, i as u8]),
            port: 8080u16.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        }
    }

    #[test]
    fn primes() {
        assert!(is_prime(16_381) && is_prime(4093) && is_prime(251) && is_prime(3));
        assert!(!is_prime(1) && !is_prime(4095) && !is_prime(16_383));
    }

    #[test]
    fn maglev_spreads_evenly() {
        let backends: Vec<_> = (0..10).map(backend).collect();
        let table = maglev_table(&backends, 4093);
        let mut per = [0usize; 10];
        for slot in &table.slots[..4093] {
            per[*slot as usize] += 1;
        }
        for count in per {
            // Maglev guarantees near-perfect balance: within one bucket of the mean... plus the
            // round-robin remainder.
            assert!((408..=411).contains(&count), "{per:?}");
        }
    }

    #[test]
    fn maglev_moves_few_buckets_when_a_backend_leaves() {
        let before: Vec<_> = (0..10).map(backend).collect();
        let after: Vec<_> = before
            .iter()
            .copied()
            .filter(|b| *b != backend(3))
            .collect();
        let (t1, t2) = (maglev_table(&before, 4093), maglev_table(&after, 4093));
        let moved = (0..4093)
            .filter(|&i| {
                let b1 = before[t1.slots[i] as usize];
                let b2 = after[t2.slots[i] as usize];
                b1 != backend(3) && b1 != b2
            })
            .count();
        // Buckets of the removed backend must move; of the others only a few percent may.
        assert!(
            moved < 4093 * 5 / 100,
            "{moved} buckets of remaining backends moved"
        );
    }
}
