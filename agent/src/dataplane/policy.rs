//! The NetworkPolicy maps from userspace: the address → identity cache, the endpoint tables and
//! the endpoints (see `berth_common::policy` for the layout and the atomic-update scheme), and
//! garbage collection of the policy conntrack.
//!
//! Tables are content-addressed: endpoints whose rules are equal (the pods of one deployment)
//! share one kernel table, and a table is never modified in place. A reconcile writes new
//! prefixes, then new tables, then switches endpoints, then deletes what nothing references.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    sync::Arc,
};

use aya::maps::{
    HashMap, Map, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use berth_common::{
    lb::CtKey,
    maps,
    policy::{
        EP_F_AUDIT, PCT_F_CLOSING, PolicyCtValue, PolicyEndpoint, PolicyRuleKey, PolicyRuleValue,
        RULE_FIXED_BITS, TABLE_NONE,
    },
};
use ipnet::Ipv4Net;

use super::{PinLayout, lb::CtTimeouts};

#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
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
    #[error("writing {map}: {detail}")]
    Write { map: &'static str, detail: String },
}

/// One rule of a kernel table: allows `peer` (an identity or `IDENTITY_ANY`) on `proto`
/// (`PROTO_ANY`: every protocol) to ports `port`/`port_prefix_len` (a power-of-two block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelRule {
    pub peer: u32,
    pub proto: u8,
    pub port: u16,
    pub port_prefix_len: u8,
    pub rule_id: u32,
}

impl KernelRule {
    fn key(&self, table: u32) -> Key<PolicyRuleKey> {
        Key::new(
            RULE_FIXED_BITS + u32::from(self.port_prefix_len),
            PolicyRuleKey {
                table,
                peer: self.peer,
                proto: self.proto,
                _pad: 0,
                port: self.port.to_be(),
            },
        )
    }
}

/// A kernel table: its rules, sorted.
pub type KernelTable = Vec<KernelRule>;

/// What one endpoint should look like in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredEndpoint {
    pub identity: u32,
    /// None: no policy selects the endpoint for ingress.
    pub ingress: Option<Arc<KernelTable>>,
    pub egress: Option<Arc<KernelTable>>,
    pub audit: bool,
}

/// What a reconcile changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyChanges {
    pub prefixes_written: usize,
    pub prefixes_removed: usize,
    pub tables_written: usize,
    pub tables_removed: usize,
    pub rules_written: usize,
    pub endpoints_written: usize,
    pub endpoints_removed: usize,
}

/// The pinned policy maps and what the agent knows they hold.
pub struct PolicyWriter {
    endpoints: HashMap<MapData, u32, PolicyEndpoint>,
    ipcache: LpmTrie<MapData, u32, u32>,
    rules: LpmTrie<MapData, PolicyRuleKey, PolicyRuleValue>,
    conntrack: HashMap<MapData, CtKey, PolicyCtValue>,
    /// Table contents → id, for every table in `POLICY_RULES`.
    tables: StdHashMap<Arc<KernelTable>, u32>,
    next_table: u32,
    prefixes: BTreeMap<Ipv4Net, u32>,
    current: BTreeMap<u32, PolicyEndpoint>,
}

fn open_data(layout: &PinLayout, name: &'static str) -> Result<MapData, PolicyMapError> {
    MapData::from_pin(layout.map(name)).map_err(|e| PolicyMapError::Open {
        name,
        detail: e.to_string(),
    })
}

fn open_err(name: &'static str) -> impl Fn(MapError) -> PolicyMapError {
    move |e| PolicyMapError::Open {
        name,
        detail: e.to_string(),
    }
}

fn write_err(map: &'static str) -> impl Fn(MapError) -> PolicyMapError {
    move |e| PolicyMapError::Write {
        map,
        detail: e.to_string(),
    }
}

impl PolicyWriter {
    /// Opens the pinned maps and reads back what they hold (after an agent restart the tables
    /// are reused as they are).
    pub fn open(layout: &PinLayout) -> Result<Self, PolicyMapError> {
        let endpoints = HashMap::try_from(Map::HashMap(open_data(layout, maps::POLICY_ENDPTS)?))
            .map_err(open_err(maps::POLICY_ENDPTS))?;
        let ipcache = LpmTrie::try_from(Map::LpmTrie(open_data(layout, maps::POLICY_IPCACHE)?))
            .map_err(open_err(maps::POLICY_IPCACHE))?;
        let rules: LpmTrie<MapData, PolicyRuleKey, PolicyRuleValue> =
            LpmTrie::try_from(Map::LpmTrie(open_data(layout, maps::POLICY_RULES)?))
                .map_err(open_err(maps::POLICY_RULES))?;
        let conntrack = HashMap::try_from(Map::LruHashMap(open_data(layout, maps::POLICY_CT)?))
            .map_err(open_err(maps::POLICY_CT))?;

        let current: BTreeMap<u32, PolicyEndpoint> =
            endpoints.iter().filter_map(Result::ok).collect();
        let prefixes = ipcache
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, id)| {
                let addr = std::net::Ipv4Addr::from(u32::from_be(k.data()));
                Ipv4Net::new(addr, k.prefix_len() as u8)
                    .ok()
                    .map(|n| (n, id))
            })
            .collect();
        let mut by_id: BTreeMap<u32, KernelTable> = BTreeMap::new();
        for (k, v) in rules.iter().filter_map(Result::ok) {
            let d: PolicyRuleKey = k.data();
            by_id.entry(d.table).or_default().push(KernelRule {
                peer: d.peer,
                proto: d.proto,
                port: u16::from_be(d.port),
                port_prefix_len: (k.prefix_len() - RULE_FIXED_BITS) as u8,
                rule_id: v.rule_id,
            });
        }
        let next_table = by_id.keys().max().map_or(1, |m| m + 1);
        let tables = by_id
            .into_iter()
            .map(|(id, mut rules)| {
                rules.sort();
                (Arc::new(rules), id)
            })
            .collect();
        Ok(Self {
            endpoints,
            ipcache,
            rules,
            conntrack,
            tables,
            next_table,
            prefixes,
            current,
        })
    }

    /// Makes the maps hold exactly `prefixes` and `endpoints` (keyed by host veth ifindex),
    /// writing only differences. Refuses, changing nothing, a change that does not fit.
    pub fn reconcile(
        &mut self,
        prefixes: &BTreeMap<Ipv4Net, u32>,
        endpoints: &BTreeMap<u32, DesiredEndpoint>,
    ) -> Result<PolicyChanges, PolicyMapError> {
        let mut changes = PolicyChanges::default();
        // Tables needed, and which of them are new.
        let needed: BTreeSet<&Arc<KernelTable>> = endpoints
            .values()
            .flat_map(|e| [e.ingress.as_ref(), e.egress.as_ref()])
            .flatten()
            .collect();
        let new_tables: Vec<&Arc<KernelTable>> = needed
            .iter()
            .copied()
            .filter(|t| !self.tables.contains_key(*t))
            .collect();
        self.check_capacity(prefixes, endpoints, &new_tables)?;

        // 1. Prefixes first: new identities resolve before any table refers to them.
        for (net, id) in prefixes {
            if self.prefixes.get(net) != Some(id) {
                self.ipcache
                    .insert(&prefix_key(net), id, 0)
                    .map_err(write_err(maps::POLICY_IPCACHE))?;
                tracing::debug!(prefix = %net, identity = id, was = ?self.prefixes.get(net), "identity of prefix");
                self.prefixes.insert(*net, *id);
                changes.prefixes_written += 1;
            }
        }
        // 2. New tables, under new ids.
        for table in new_tables {
            let id = self.next_table;
            self.next_table += 1;
            for rule in table.iter() {
                self.rules
                    .insert(
                        &rule.key(id),
                        PolicyRuleValue {
                            rule_id: rule.rule_id,
                        },
                        0,
                    )
                    .map_err(write_err(maps::POLICY_RULES))?;
                changes.rules_written += 1;
            }
            self.tables.insert(table.clone(), id);
            changes.tables_written += 1;
        }
        // 3. Endpoints switch in one update each.
        let table_id = |t: &Option<Arc<KernelTable>>, tables: &StdHashMap<_, u32>| {
            t.as_ref().map_or(TABLE_NONE, |t| tables[t])
        };
        for (ifindex, want) in endpoints {
            let value = PolicyEndpoint {
                identity: want.identity,
                ingress_table: table_id(&want.ingress, &self.tables),
                egress_table: table_id(&want.egress, &self.tables),
                flags: if want.audit { EP_F_AUDIT } else { 0 },
            };
            if self.current.get(ifindex) != Some(&value) {
                self.endpoints
                    .insert(ifindex, value, 0)
                    .map_err(write_err(maps::POLICY_ENDPTS))?;
                self.current.insert(*ifindex, value);
                changes.endpoints_written += 1;
            }
        }
        let gone: Vec<u32> = self
            .current
            .keys()
            .filter(|i| !endpoints.contains_key(i))
            .copied()
            .collect();
        for ifindex in gone {
            match self.endpoints.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(write_err(maps::POLICY_ENDPTS)(e)),
            }
            self.current.remove(&ifindex);
            changes.endpoints_removed += 1;
        }
        // 4. Tables nothing references any more.
        let unused: Vec<(Arc<KernelTable>, u32)> = self
            .tables
            .iter()
            .filter(|(t, _)| !needed.contains(t))
            .map(|(t, id)| (t.clone(), *id))
            .collect();
        for (table, id) in unused {
            for rule in table.iter() {
                let _ = self.rules.remove(&rule.key(id));
            }
            self.tables.remove(&table);
            changes.tables_removed += 1;
        }
        // 5. Prefixes nothing is known by any more.
        let stale: Vec<Ipv4Net> = self
            .prefixes
            .keys()
            .filter(|n| !prefixes.contains_key(n))
            .copied()
            .collect();
        for net in stale {
            let _ = self.ipcache.remove(&prefix_key(&net));
            self.prefixes.remove(&net);
            changes.prefixes_removed += 1;
        }
        Ok(changes)
    }

    fn check_capacity(
        &self,
        prefixes: &BTreeMap<Ipv4Net, u32>,
        endpoints: &BTreeMap<u32, DesiredEndpoint>,
        new_tables: &[&Arc<KernelTable>],
    ) -> Result<(), PolicyMapError> {
        // During a reconcile old and new entries coexist until step 4/5.
        let prefix_peak = self.prefixes.len()
            + prefixes
                .keys()
                .filter(|n| !self.prefixes.contains_key(n))
                .count();
        let rules_peak = self.tables.keys().map(|t| t.len()).sum::<usize>()
            + new_tables.iter().map(|t| t.len()).sum::<usize>();
        for (map, needed, capacity) in [
            (
                maps::POLICY_IPCACHE,
                prefix_peak,
                maps::POLICY_IPCACHE_MAX_ENTRIES,
            ),
            (
                maps::POLICY_RULES,
                rules_peak,
                maps::POLICY_RULES_MAX_ENTRIES,
            ),
            (
                maps::POLICY_ENDPTS,
                endpoints.len(),
                maps::POLICY_ENDPTS_MAX_ENTRIES,
            ),
        ] {
            if needed > capacity as usize {
                return Err(PolicyMapError::Full {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// Number of kernel tables and rules held.
    pub fn sizes(&self) -> (usize, usize) {
        (self.tables.len(), self.tables.keys().map(|t| t.len()).sum())
    }

    /// Removes policy conntrack entries idle for longer than their timeout; returns (kept,
    /// removed).
    pub fn gc_conntrack(&mut self, now_ns: u64, timeouts: &CtTimeouts) -> (usize, usize) {
        super::lb::gc_idle(&mut self.conntrack, now_ns, timeouts, |v| {
            (v.last_seen_ns, v.flags & PCT_F_CLOSING != 0)
        })
    }
}

fn prefix_key(net: &Ipv4Net) -> Key<u32> {
    Key::new(
        u32::from(net.prefix_len()),
        u32::from(net.network()).to_be(),
    )
}
