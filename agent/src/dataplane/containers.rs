//! The `CONTAINERS` map from the runtime's side: `berth run` records each container it starts
//! (keyed by its cgroup v2 id) and removes the record when the container is deleted. This works
//! with no agent running: when the map is not pinned yet, it is created from the kernel object's
//! own definition and pinned where the agent will re-open it.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use berth_common::{ContainerRecord, maps};

use super::{EBPF_OBJECT, PinLayout};

#[derive(Debug, thiserror::Error)]
pub enum ContainersMapError {
    #[error("CONTAINERS map at {path}: {detail}")]
    Map { path: String, detail: String },
}

fn err(path: &Path, detail: impl ToString) -> ContainersMapError {
    ContainersMapError::Map {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Opens the pinned map, creating and pinning it first if no agent has done so yet.
fn open(pin_root: &Path) -> Result<HashMap<MapData, u64, ContainerRecord>, ContainersMapError> {
    let layout = PinLayout::new(pin_root);
    let path = layout.map(maps::CONTAINERS);
    if !path.exists() {
        layout.prepare().map_err(|e| err(&path, e))?;
        let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| err(&path, e))?;
        let def = object
            .maps
            .get(maps::CONTAINERS)
            .cloned()
            .ok_or_else(|| err(&path, "missing from the kernel object"))?;
        let map = MapData::create(def, maps::CONTAINERS, None).map_err(|e| err(&path, e))?;
        match map.pin(&path) {
            Ok(()) => {}
            // Another process pinned it first: use theirs.
            Err(_) if path.exists() => {}
            Err(e) => return Err(err(&path, e)),
        }
    }
    let data = MapData::from_pin(&path).map_err(|e| err(&path, e))?;
    HashMap::try_from(Map::HashMap(data)).map_err(|e| err(&path, e))
}

/// Records `record` for the container whose cgroup id is `cgroup_id`.
pub fn register(
    pin_root: &Path,
    cgroup_id: u64,
    record: ContainerRecord,
) -> Result<(), ContainersMapError> {
    let mut map = open(pin_root)?;
    map.insert(cgroup_id, record, 0)
        .map_err(|e| err(&pin_root.join("maps").join(maps::CONTAINERS), e))
}

/// Removes the record of `cgroup_id` (absent is fine).
pub fn unregister(pin_root: &Path, cgroup_id: u64) -> Result<(), ContainersMapError> {
    let path = PinLayout::new(pin_root).map(maps::CONTAINERS);
    if !path.exists() {
        return Ok(());
    }
    let mut map = open(pin_root)?;
    match map.remove(&cgroup_id) {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(err(&path, e)),
    }
}

/// The record of `cgroup_id`, if any.
pub fn lookup(
    pin_root: &Path,
    cgroup_id: u64,
) -> Result<Option<ContainerRecord>, ContainersMapError> {
    let path = PinLayout::new(pin_root).map(maps::CONTAINERS);
    if !path.exists() {
        return Ok(None);
    }
    let map = open(pin_root)?;
    match map.get(&cgroup_id, 0) {
        Ok(record) => Ok(Some(record)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(err(&path, e)),
    }
}
