//! Bounds-checked packet access and the header constants the programs need.

/// Length of an Ethernet II header.
pub const ETH_HDR_LEN: usize = 14;
/// EtherType of IPv4 (network byte order in the frame).
pub const ETH_P_IP: u16 = 0x0800;
/// Minimum IPv4 header length.
pub const IPV4_MIN_HDR_LEN: usize = 20;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `frag_off` bits: the fragment offset (the flags are the top three bits).
pub const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is too
/// short. Every packet read goes through here so the verifier sees one bounds check per access.
#[inline(always)]
pub fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*const T> {
    let start = data.checked_add(offset)?;
    let end = start.checked_add(core::mem::size_of::<T>())?;
    if end > data_end {
        return None;
    }
    Some(start as *const T)
}

/// Reads a `T` (unaligned) at `offset`, or `None` when the packet is too short.
#[inline(always)]
pub fn read_at<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    let ptr = ptr_at::<T>(data, data_end, offset)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `ptr` lie inside the packet;
    // packet data has no alignment guarantee, hence the unaligned read.
    Some(unsafe { core::ptr::read_unaligned(ptr) })
}
