//! Messages between the runtime process and the container's init processes during create,
//! over a SOCK_SEQPACKET socketpair (one message per datagram, never merged or split).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use serde::{Deserialize, Serialize};

/// What the parent and the children tell each other.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Msg {
    /// Parent → child: go on (id maps written, hooks run...).
    Continue,
    /// Stage-1 child → parent: write my uid/gid maps (I just unshared a user namespace).
    MapIds,
    /// Stage-1 child → parent: the container's init process (host pid).
    InitPid(i32),
    /// Init → parent: namespaces and mounts are ready; run prestart/createRuntime hooks.
    RunCreateHooks,
    /// Init → parent: the container is created and waiting for `start`.
    Created,
    /// Any child → parent: set-up failed.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync socket {op}: {errno}")]
    Sys {
        op: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("sync socket: malformed message: {0}")]
    Decode(String),
    #[error("the container process exited during set-up")]
    Closed,
}

/// One end of the channel.
pub struct Channel(pub OwnedFd);

/// A connected pair (parent end, child end).
pub fn pair() -> Result<(Channel, Channel), SyncError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|errno| SyncError::Sys {
        op: "socketpair",
        errno,
    })?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    pub fn send(&self, msg: &Msg) -> Result<(), SyncError> {
        let bytes = serde_json::to_vec(msg).map_err(|e| SyncError::Decode(e.to_string()))?;
        send(self.0.as_fd().as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
            .map_err(|errno| SyncError::Sys { op: "send", errno })?;
        Ok(())
    }

    pub fn recv(&self) -> Result<Msg, SyncError> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match recv(self.0.as_fd().as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(SyncError::Sys { op: "recv", errno }),
            }
        };
        if n == 0 {
            return Err(SyncError::Closed);
        }
        serde_json::from_slice(&buf[..n]).map_err(|e| SyncError::Decode(e.to_string()))
    }

    /// Receives and turns a child's `Error` into `Err`.
    pub fn expect(&self, want: &Msg) -> Result<(), String> {
        match self.recv() {
            Ok(msg) if &msg == want => Ok(()),
            Ok(Msg::Error(err)) => Err(err),
            Ok(other) => Err(format!("unexpected message {other:?} (wanted {want:?})")),
            Err(err) => Err(err.to_string()),
        }
    }
}
