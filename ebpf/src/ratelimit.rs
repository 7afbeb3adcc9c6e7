//! Log rate limiting: any log line a packet can trigger goes through here, so a flood of hostile
//! frames costs one line per CPU per interval, not one per frame.

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::LOG_RATELIMIT;

/// At most one rate-limited line per CPU per this many nanoseconds.
const LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// Returns true when the caller may log now, and records that it did.
#[inline(always)]
pub fn allow_log() -> bool {
    let Some(last) = LOG_RATELIMIT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: no preconditions; reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: valid per-CPU slot from a successful lookup; only this CPU writes it.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < LOG_INTERVAL_NS {
            return false;
        }
        *last = now;
    }
    true
}
