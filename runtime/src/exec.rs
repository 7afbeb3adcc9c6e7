//! `exec`: a new process inside a running container. The runtime forks a helper (into the
//! container's cgroup v2 directory when there is one) that joins the container's cgroups, then
//! its namespaces (user first, mount last), and forks again so the process lands in the
//! container's pid namespace; the process then gets the same treatment as the container's init
//! (capabilities, user, the container's seccomp profile).

use std::{
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
    path::Path,
};

use nix::{
    fcntl::{OFlag, open},
    sched::{CloneFlags, setns},
    sys::{stat::Mode, wait::waitpid},
    unistd::{ForkResult, Pid, fork},
};
use oci_spec::runtime::Process;

use crate::{
    cgroup_adapter::Cgroup,
    clone::{self, Forked},
    container::{ExecOptions, Result, Runtime, RuntimeError, SignalForwarder},
    process,
    state::{self, Status},
    sync::{self, Channel, Msg},
};

/// Namespace files in the order they are joined: user first (it grants the rights to join the
/// rest), mount last (it changes our root).
const NAMESPACES: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

pub fn exec(rt: &Runtime, id: &str, proc_spec: &Process, opts: &ExecOptions) -> Result<i32> {
    crate::spec::validate_process(proc_spec, "process")?;
    let record = rt.root.load(id)?;
    let status = rt.status(&record);
    if !matches!(status, Status::Running | Status::Created) {
        return Err(RuntimeError::WrongState {
            id: id.to_owned(),
            status,
            action: "exec needs a running container".into(),
        });
    }
    let spec = rt.root.load_spec(id)?;
    let cgroup = Cgroup::open(&record.cgroups_path, id).map_err(RuntimeError::Cgroup)?;

    // Open the container's namespaces now, so they stay valid even if its init exits.
    let mut joins: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = format!("/proc/{}/ns/{name}", record.pid);
        let ours = format!("/proc/self/ns/{name}");
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            continue;
        }
        let fd = open(
            Path::new(&theirs),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| RuntimeError::Sys {
            op: format!("opening {theirs}"),
            errno,
        })?;
        joins.push((fd, flag));
    }
    // Re-check the init is the one we recorded now that its namespaces are pinned.
    if !state::init_alive(&record) {
        return Err(RuntimeError::WrongState {
            id: id.to_owned(),
            status: Status::Stopped,
            action: "exec needs a running container".into(),
        });
    }
    let console = match &opts.console_socket {
        Some(path) => Some(
            UnixStream::connect(path).map_err(|source| RuntimeError::Io {
                op: "connecting to console socket".into(),
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let (parent_chan, child_chan) = sync::pair().map_err(|e| RuntimeError::Start {
        id: id.to_owned(),
        message: e.to_string(),
    })?;
    let forwarder = if opts.detach {
        None
    } else {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        Some(
            SignalForwarder::install().map_err(|errno| RuntimeError::Sys {
                op: "blocking signals".into(),
                errno,
            })?,
        )
    };
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());

    // The helper starts in the container's v2 cgroup and joins the v1 ones itself, as stage 1
    // of `create` does (see `clone::fork_into`).
    let cgroup_dir = cgroup.open_v2_dir().map_err(RuntimeError::Cgroup)?;
    // SAFETY: the runtime is single-threaded; see `Runtime::create`.
    let helper = match unsafe { clone::fork_into(cgroup_dir.as_ref().map(AsFd::as_fd)) }.map_err(
        |errno| RuntimeError::Sys {
            op: "fork".into(),
            errno,
        },
    )? {
        Forked::Child { in_cgroup } => {
            // A host cgroup directory has no business in the container's processes.
            drop(cgroup_dir);
            drop(parent_chan);
            // The signal mask is inherited across fork and exec: give the process a clean one.
            if let Some(f) = &forwarder {
                f.restore_mask();
            }
            helper_main(
                &child_chan,
                (cgroup.manager(), in_cgroup),
                &joins,
                proc_spec,
                seccomp.as_ref(),
                console.as_ref(),
                opts.preserve_fds,
            )
        }
        Forked::Parent { child } => child,
    };
    drop(cgroup_dir);
    drop(child_chan);
    let exec_err = |message: String| RuntimeError::Start {
        id: id.to_owned(),
        message: format!("exec: {message}"),
    };
    let outcome = (|| -> std::result::Result<Pid, String> {
        match parent_chan.recv().map_err(|e| e.to_string())? {
            Msg::InitPid(pid) => Ok(Pid::from_raw(pid)),
            Msg::Error(e) => Err(e),
            other => Err(format!("unexpected message {other:?}")),
        }
    })();
    let _ = waitpid(helper, None);
    let pid = outcome.map_err(exec_err)?;
    // The process closes the channel when execve succeeds, or sends why it failed.
    match parent_chan.recv() {
        Ok(Msg::Error(e)) => return Err(exec_err(e)),
        Ok(other) => return Err(exec_err(format!("unexpected message {other:?}"))),
        Err(sync::SyncError::Closed) => {}
        Err(e) => return Err(exec_err(e.to_string())),
    }
    if let Some(pid_file) = &opts.pid_file {
        state::write_atomic(pid_file, pid.as_raw().to_string().as_bytes())?;
    }
    match forwarder {
        None => Ok(0),
        Some(forwarder) => Ok(forwarder.wait_for(pid)),
    }
}

fn helper_main(
    chan: &Channel,
    (cgroup, in_cgroup): (&crate::cgroups::Manager, bool),
    joins: &[(OwnedFd, CloneFlags)],
    proc_spec: &Process,
    seccomp: Option<&oci_spec::runtime::LinuxSeccomp>,
    console: Option<&UnixStream>,
    preserve_fds: u32,
) -> ! {
    let fail = |message: String| -> ! {
        let _ = chan.send(&Msg::Error(message));
        // SAFETY: _exit in a forked child, without the parent's atexit handlers.
        unsafe { libc::_exit(1) }
    };
    // The cgroup first, while the helper still has the host's privileges over cgroupfs (no user
    // namespace joined yet); everything it forks inherits it.
    if let Err(e) = cgroup.join_self(in_cgroup) {
        fail(format!("joining the cgroup: {e}"));
    }
    for (fd, flag) in joins {
        if let Err(e) = setns(fd, *flag) {
            fail(format!("joining namespace {flag:?}: {e}"));
        }
    }
    // SAFETY: single-threaded fork child; see `Runtime::create`.
    match unsafe { fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => {
            let _ = chan.send(&Msg::InitPid(child.as_raw()));
            // SAFETY: see above.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Child) => {}
    }
    let result = (|| -> std::result::Result<std::convert::Infallible, String> {
        let process::Prepared {
            exe,
            args,
            env,
            cwd,
        } = process::prepare(proc_spec, console.map(|c| c.as_raw_fd()))?;
        let loader = |p: &oci_spec::runtime::LinuxSeccomp| {
            crate::seccomp::load(p).map_err(|e| e.to_string())
        };
        process::finalize_identity(proc_spec, seccomp, &loader).map_err(|e| e.to_string())?;
        nix::unistd::chdir(&cwd).map_err(|e| format!("chdir {}: {e}", cwd.display()))?;
        process::late_seccomp(proc_spec, seccomp, &loader).map_err(|e| e.to_string())?;
        process::close_extra_fds(preserve_fds).map_err(|e| e.to_string())?;
        Err(process::exec(&exe, &args, &env).to_string())
    })();
    match result {
        Ok(never) => match never {},
        Err(e) => fail(e),
    }
}
