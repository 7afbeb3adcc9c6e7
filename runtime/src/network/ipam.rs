//! Address management for one bridge network: which container holds which address.
//!
//! The leases live in `<state_dir>/ipam/<bridge>.json` and change only under an exclusive
//! `flock` of `<bridge>.lock` next to it, so concurrent `berth run`s (separate processes, or
//! threads) never hand out one address twice. Every change is written to a temporary file,
//! synced, renamed over the old one and the directory synced: after a crash (of berth or of the
//! machine) the file holds either the old or the new leases, never a mix. Leases of containers
//! that died without `berth rm` are reclaimed by [`Ipam::reconcile`].
//!
//! Like CNI's host-local plugin, allocation walks on from the last address handed out rather
//! than taking the lowest free one, so an address just released is not given to the next
//! container at once (peers and ARP caches may still think it belongs to the old one).

use std::{
    collections::{BTreeMap, HashSet, btree_map::Entry},
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Ipv4Net, NetworkConfig, NetworkError, lock::FileLock};

/// The leases of one bridge network.
#[derive(Debug, Clone)]
pub struct Ipam {
    bridge: String,
    subnet: Ipv4Net,
    file: PathBuf,
    lock: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The subnet the leases were made from (a change of pod CIDR must not strand them).
    subnet: Option<Ipv4Net>,
    /// The last address handed out: the next search starts after it.
    last: Option<Ipv4Addr>,
    /// Address → container id. Keyed by address, so one address cannot have two holders.
    leases: BTreeMap<Ipv4Addr, String>,
}

impl State {
    fn lease_of(&self, id: &str) -> Option<Ipv4Addr> {
        self.leases
            .iter()
            .find(|(_, holder)| holder.as_str() == id)
            .map(|(ip, _)| *ip)
    }
}

impl Ipam {
    pub fn new(config: &NetworkConfig) -> Self {
        Self::at(&config.state_dir, &config.bridge, config.subnet)
    }

    /// The leases of `bridge` kept under `state_dir`.
    pub fn at(state_dir: &Path, bridge: &str, subnet: Ipv4Net) -> Self {
        let dir = state_dir.join("ipam");
        Self {
            bridge: bridge.to_owned(),
            subnet,
            file: dir.join(format!("{bridge}.json")),
            lock: dir.join(format!("{bridge}.lock")),
        }
    }

    /// The file holding the leases.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The address of `container_id`: the one it already holds, or the next free one after the
    /// last handed out (never the network, gateway or broadcast address).
    pub fn allocate(&self, container_id: &str) -> Result<Ipv4Addr, NetworkError> {
        self.transact(|state| {
            self.adopt_subnet(state)?;
            if let Some(ip) = state.lease_of(container_id) {
                return Ok((ip, false));
            }
            // Hosts are network+2 ..= broadcast-1: network+1 is the gateway (the bridge).
            let first = u32::from(self.subnet.network()) + 2;
            let last = u32::from(self.subnet.broadcast()) - 1;
            let count = last - first + 1;
            let start = match state.last.map(u32::from) {
                Some(prev) if (first..=last).contains(&prev) => {
                    if prev == last {
                        first
                    } else {
                        prev + 1
                    }
                }
                _ => first,
            };
            for step in 0..count {
                let candidate = Ipv4Addr::from(first + (start - first + step) % count);
                if let Entry::Vacant(slot) = state.leases.entry(candidate) {
                    slot.insert(container_id.to_owned());
                    state.last = Some(candidate);
                    return Ok((candidate, true));
                }
            }
            Err(NetworkError::Exhausted {
                bridge: self.bridge.clone(),
                subnet: self.subnet,
                leases: state.leases.len(),
            })
        })
    }

    /// Gives back the address of `container_id`; returns it, or None if it held none.
    pub fn release(&self, container_id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        if !self.file.exists() {
            return Ok(None);
        }
        self.transact(|state| {
            let ip = state.lease_of(container_id);
            if let Some(ip) = ip {
                state.leases.remove(&ip);
            }
            Ok((ip, ip.is_some()))
        })
    }

    /// Releases every lease whose container is not in `live_ids` (it was removed by a crashed
    /// or killed berth, or its directory was deleted by hand); returns what was released.
    ///
    /// The caller must make sure no container outside `live_ids` is being created meanwhile
    /// (the engine holds its container-list lock while it computes the set and allocates).
    pub fn reconcile(
        &self,
        live_ids: &HashSet<String>,
    ) -> Result<Vec<(Ipv4Addr, String)>, NetworkError> {
        if !self.file.exists() {
            return Ok(Vec::new());
        }
        self.transact(|state| {
            let stale: Vec<(Ipv4Addr, String)> = state
                .leases
                .iter()
                .filter(|(_, id)| !live_ids.contains(id.as_str()))
                .map(|(ip, id)| (*ip, id.clone()))
                .collect();
            for (ip, _) in &stale {
                state.leases.remove(ip);
            }
            let changed = !stale.is_empty();
            Ok((stale, changed))
        })
    }

    /// Every lease, address → container id.
    pub fn leases(&self) -> Result<BTreeMap<Ipv4Addr, String>, NetworkError> {
        if !self.file.exists() {
            return Ok(BTreeMap::new());
        }
        self.transact(|state| Ok((state.leases.clone(), false)))
    }

    /// The address `container_id` holds, if any.
    pub fn lease_of(&self, container_id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        Ok(self
            .leases()?
            .into_iter()
            .find(|(_, id)| id == container_id)
            .map(|(ip, _)| ip))
    }

    /// Leases made from another subnet would be outside the bridge's: refuse while any is
    /// held, start afresh when none is.
    fn adopt_subnet(&self, state: &mut State) -> Result<(), NetworkError> {
        match state.subnet {
            Some(subnet) if subnet == self.subnet => {}
            Some(subnet) if !state.leases.is_empty() => {
                return Err(NetworkError::Conflict(format!(
                    "bridge {} has {} address(es) leased from {subnet} ({}), not {}: remove those containers before changing the pod CIDR",
                    self.bridge,
                    state.leases.len(),
                    self.file.display(),
                    self.subnet
                )));
            }
            _ => {
                state.subnet = Some(self.subnet);
                state.last = None;
                state.leases.clear();
            }
        }
        Ok(())
    }

    /// Runs `f` on the current state under the lock; `f` says whether it changed the state,
    /// and a changed state is written before the lock is released.
    fn transact<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(T, bool), NetworkError>,
    ) -> Result<T, NetworkError> {
        let _lock = FileLock::exclusive(&self.lock)
            .map_err(|e| NetworkError::io("locking", &self.lock, e))?;
        let mut state = self.load()?;
        let (value, changed) = f(&mut state)?;
        if changed {
            self.store(&state)?;
        }
        Ok(value)
    }

    fn load(&self) -> Result<State, NetworkError> {
        let bytes = match std::fs::read(&self.file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(NetworkError::io("reading", &self.file, e)),
        };
        // A damaged file is an error, never "no leases": guessing would hand out addresses
        // that running containers hold.
        serde_json::from_slice(&bytes).map_err(|e| NetworkError::State {
            path: self.file.clone(),
            detail: format!(
                "{e}; it lists which container holds which address of bridge {}: repair it, or remove it only once no container uses the bridge",
                self.bridge
            ),
        })
    }

    fn store(&self, state: &State) -> Result<(), NetworkError> {
        let data = serde_json::to_vec_pretty(state).map_err(|e| NetworkError::State {
            path: self.file.clone(),
            detail: e.to_string(),
        })?;
        write_durably(&self.file, &data)
    }
}

/// Temporary file, fsync, rename, fsync of the directory: the file has the old or the new
/// content after any crash, and the new one once this returns.
pub(crate) fn write_durably(path: &Path, data: &[u8]) -> Result<(), NetworkError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| NetworkError::io("creating", dir, e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        NetworkError::io("writing", path, e)
    })
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        sync::{Arc, Barrier},
    };

    use super::*;

    fn ipam(dir: &Path, subnet: &str) -> Ipam {
        Ipam::at(dir, "brtest0", subnet.parse().expect("subnet"))
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn allocation_is_idempotent_and_skips_reserved_addresses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(dir.path(), "10.201.0.0/29");
        let a = ipam.allocate("a").expect("a");
        assert_eq!(a, ip("10.201.0.2"), "network .0 and gateway .1 are skipped");
        assert_eq!(
            ipam.allocate("a").expect("again"),
            a,
            "same id, same address"
        );
        let mut seen = BTreeSet::from([a]);
        for id in ["b", "c", "d", "e"] {
            assert!(
                seen.insert(ipam.allocate(id).expect(id)),
                "{id}: a fresh address"
            );
        }
        assert_eq!(
            seen.last().copied(),
            Some(ip("10.201.0.6")),
            "broadcast .7 is never handed out"
        );
        assert_eq!(ipam.lease_of("c").expect("lease"), Some(ip("10.201.0.4")));
        assert_eq!(ipam.leases().expect("leases").len(), 5);
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_release_frees_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(dir.path(), "10.201.1.0/30");
        assert_eq!(ipam.allocate("only").expect("only"), ip("10.201.1.2"));
        let err = ipam.allocate("second").expect_err("full");
        assert!(matches!(err, NetworkError::Exhausted { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("10.201.1.0/30") && text.contains("brtest0"),
            "{text}"
        );
        assert_eq!(
            ipam.release("only").expect("release"),
            Some(ip("10.201.1.2"))
        );
        assert_eq!(ipam.release("only").expect("twice"), None, "idempotent");
        assert_eq!(ipam.allocate("second").expect("second"), ip("10.201.1.2"));
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(dir.path(), "10.201.2.0/28");
        let a = ipam.allocate("a").expect("a");
        let b = ipam.allocate("b").expect("b");
        ipam.release("a").expect("release");
        let c = ipam.allocate("c").expect("c");
        assert_ne!(c, a, "the walk goes on after the last address handed out");
        assert!(u32::from(c) > u32::from(b));
        // The walk wraps around to the freed address once the top is reached.
        let mut last = c;
        for n in 0..20 {
            match ipam.allocate(&format!("x{n}")) {
                Ok(ip) => last = ip,
                Err(NetworkError::Exhausted { .. }) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ipam.lease_of("x10").expect("lease"), Some(a), "{last}");
    }

    #[test]
    fn leases_persist_across_instances_and_reconcile_reclaims_the_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ipam(dir.path(), "10.201.3.0/24");
        let a = first.allocate("alive").expect("alive");
        let d = first.allocate("dead").expect("dead");
        // A new process (a new instance) sees the same leases.
        let second = ipam(dir.path(), "10.201.3.0/24");
        assert_eq!(second.allocate("alive").expect("alive"), a);
        let live = HashSet::from(["alive".to_owned()]);
        assert_eq!(
            second.reconcile(&live).expect("reconcile"),
            vec![(d, "dead".to_owned())]
        );
        assert_eq!(second.reconcile(&live).expect("again"), Vec::new());
        assert_eq!(
            first.leases().expect("leases"),
            BTreeMap::from([(a, "alive".to_owned())])
        );
        // No temporary file stays behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("ipam"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = ipam(dir.path(), "10.201.4.0/24");
        ipam.allocate("a").expect("a");
        std::fs::write(ipam.path(), b"{\"leases\": {\"10.201.4.2\": ").expect("damage");
        let err = ipam.allocate("b").expect_err("damaged");
        assert!(matches!(err, NetworkError::State { .. }), "{err}");
        assert!(err.to_string().contains("brtest0.json"), "{err}");
    }

    #[test]
    fn a_new_pod_cidr_is_refused_while_old_leases_are_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = ipam(dir.path(), "10.201.5.0/24");
        old.allocate("a").expect("a");
        let new = ipam(dir.path(), "10.201.6.0/24");
        let err = new.allocate("b").expect_err("conflict");
        assert!(err.to_string().contains("10.201.5.0/24"), "{err}");
        old.release("a").expect("release");
        assert_eq!(new.allocate("b").expect("b"), ip("10.201.6.2"));
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let threads = 8;
        let per_thread = 25;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let dir = dir.path().to_owned();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    // Each thread has its own instance and lock descriptor, as separate
                    // processes would.
                    let ipam = ipam(&dir, "10.201.7.0/24");
                    barrier.wait();
                    (0..per_thread)
                        .map(|n| {
                            let id = format!("t{t}-{n}");
                            (ipam.allocate(&id).expect("allocate"), id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = BTreeMap::new();
        for h in handles {
            for (ip, id) in h.join().expect("thread") {
                assert!(all.insert(ip, id).is_none(), "{ip} handed out twice");
            }
        }
        assert_eq!(all.len(), threads * per_thread);
        assert_eq!(
            ipam(dir.path(), "10.201.7.0/24").leases().expect("leases"),
            all
        );
    }

    #[test]
    fn concurrent_processes_never_share_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let children: Vec<nix::unistd::Pid> = (0..4)
            .map(|p| {
                // SAFETY: the child only allocates (file I/O and flock) and _exits.
                match unsafe { nix::unistd::fork() }.expect("fork") {
                    nix::unistd::ForkResult::Child => {
                        let ipam = ipam(dir.path(), "10.201.8.0/24");
                        let ok = (0..20).all(|n| ipam.allocate(&format!("p{p}-{n}")).is_ok());
                        // SAFETY: ends the child without running the test harness's handlers.
                        unsafe { libc::_exit(if ok { 0 } else { 1 }) }
                    }
                    nix::unistd::ForkResult::Parent { child } => child,
                }
            })
            .collect();
        for child in children {
            let status = nix::sys::wait::waitpid(child, None).expect("wait");
            assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
        let leases = ipam(dir.path(), "10.201.8.0/24").leases().expect("leases");
        assert_eq!(leases.len(), 80, "every allocation kept, none shared");
        let holders: HashSet<&String> = leases.values().collect();
        assert_eq!(holders.len(), 80);
    }
}
