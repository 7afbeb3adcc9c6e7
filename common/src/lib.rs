//! berth's kernel/userspace ABI.
//!
//! Everything a kernel program and the agent both read lives here: `#[repr(C)]` map keys and
//! values, counter indices, and the names of maps and programs. Each type has a compile-time
//! size assertion beside it; the agent's tests also check field offsets, so a layout change is a
//! build or test failure rather than a silently misread map.
//!
//! Conventions: integers only (no `bool`), explicit `_pad` fields, byte order stated in each
//! field's comment. A layout change gets a new map name with a `_V2` suffix so that an agent
//! never re-opens a pinned map of the old layout by mistake.
#![no_std]

pub mod audit;
pub mod events;
pub mod lb;
pub mod maps;
pub mod policy;
pub mod programs;
pub mod xdp;

pub mod container;

pub use container::ContainerRecord;
