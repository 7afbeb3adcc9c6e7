//! Records on the `EVENTS` ring buffer: every kernel-side event starts with an [`EventHeader`],
//! whose `kind` says which record follows.
//!
//! Loss is never silent: a program that cannot reserve ring space counts it in the per-CPU
//! `EVENTS_LOST` array, and a rate limiter that suppresses events counts them in the next
//! record's `suppressed`; the agent turns both into gap records on the event stream and into
//! metrics.

/// Version of the record layouts below; bumped on any change.
pub const EVENT_ABI_VERSION: u16 = 1;

/// Size of the `EVENTS` ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// Which record this is (`EVENT_*` constants of the feature modules).
    pub kind: u16,
    /// [`EVENT_ABI_VERSION`].
    pub version: u16,
    /// The CPU the event was produced on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Events of this kind the per-CPU rate limiter suppressed on this CPU since the previous
    /// record of this kind from this CPU.
    pub suppressed: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);

/// Per-CPU rate limiter state (`EVENT_RATE`, indexed by event kind): a token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Last refill, `bpf_ktime_get_ns()`.
    pub last_ns: u64,
    /// Tokens left (one per event).
    pub tokens: u32,
    /// Suppressed since the last emitted record.
    pub suppressed: u32,
}
const _: () = assert!(core::mem::size_of::<RateState>() == 16);

/// Policy verdict events each CPU may emit per second (and its burst).
pub const POLICY_EVENTS_PER_SEC: u32 = 1_000;

#[cfg(feature = "user")]
mod user {
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: `repr(C)`, `Copy`, integers only, no padding (size asserted above): every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::RateState {}
}
