//! The container's terminal: a pty created inside the container (on its devpts), whose master
//! end is sent over the `--console-socket` to whoever drives the container (conmon, containerd,
//! `berth run -t`), and whose slave becomes the process's controlling terminal and stdio.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::{
    fcntl::{OFlag, open},
    pty::{grantpt, posix_openpt, ptsname_r, unlockpt},
    sys::{
        socket::{ControlMessage, MsgFlags, sendmsg},
        stat::Mode,
    },
    unistd::{dup2_stderr, dup2_stdin, dup2_stdout, setsid},
};

#[derive(Debug, thiserror::Error)]
#[error("console: {op}: {errno}")]
pub struct TtyError {
    op: &'static str,
    errno: nix::errno::Errno,
}

fn err(op: &'static str) -> impl FnOnce(nix::errno::Errno) -> TtyError {
    move |errno| TtyError { op, errno }
}

/// Creates the pty, sends its master over `console_socket`, and makes the slave this process's
/// controlling terminal and stdin/stdout/stderr.
pub fn setup_console(console_socket: RawFd) -> Result<(), TtyError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("opening /dev/ptmx"))?;
    grantpt(&master).map_err(err("grantpt"))?;
    unlockpt(&master).map_err(err("unlockpt"))?;
    let name = ptsname_r(&master).map_err(err("ptsname"))?;
    let slave: OwnedFd = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(err("opening the pty slave"))?;

    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    sendmsg::<()>(console_socket, &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(err("sending the pty master over the console socket"))?;
    drop(master);

    setsid().map_err(err("setsid"))?;
    // SAFETY: TIOCSCTTY on a tty fd we own, with an integer argument.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(TtyError {
            op: "TIOCSCTTY",
            errno: nix::errno::Errno::last(),
        });
    }
    dup2_stdin(&slave).map_err(err("dup2 stdin"))?;
    dup2_stdout(&slave).map_err(err("dup2 stdout"))?;
    dup2_stderr(&slave).map_err(err("dup2 stderr"))?;
    Ok(())
}
