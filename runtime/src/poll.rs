//! Blocking on one descriptor with a timeout (`poll(2)`), for the waits that used to sleep in
//! steps: a pidfd (readable once its process exits) and a cgroup v2 `cgroup.events` (POLLPRI
//! once `populated` or `frozen` changes).

use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::time::Duration;

/// Waits until `fd` reports one of `events` (or an error/hangup), at most `wait`. Returns
/// whether it did; `EINTR` is returned as an error, for the caller to re-check and retry.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    wait: Duration,
) -> nix::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // Rounded up: a sub-millisecond remainder must not turn into a busy 0 ms poll.
    let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the call's duration, count 1.
    let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if n < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(n > 0)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn reports_readiness_and_times_out() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        assert!(!poll_one(reader.as_fd(), libc::POLLIN, Duration::from_micros(100)).unwrap());
        nix::unistd::write(&writer, b"x").unwrap();
        assert!(poll_one(reader.as_fd(), libc::POLLIN, Duration::from_secs(600)).unwrap());
        // A closed write end is a hangup: reported whatever was asked.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(writer);
        assert!(poll_one(reader.as_fd(), libc::POLLPRI, Duration::from_secs(600)).unwrap());
    }
}
