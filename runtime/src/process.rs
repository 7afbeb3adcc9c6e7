//! The last steps before the user's program runs, in the container's process: rlimits, OOM
//! score, user and groups, capabilities, no_new_privs, seccomp, and execve. Order matters and
//! follows runc: drop the bounding set while we still have CAP_SETPCAP, switch user keeping
//! capabilities, then set the five capability sets; seccomp is loaded as late as possible when
//! no_new_privs allows it, otherwise before capabilities are dropped.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    str::FromStr as _,
};

use caps::{CapSet, CapsHashSet};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use oci_spec::runtime::{Capabilities, LinuxSeccomp, PosixRlimitType, Process};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{op}: {errno}")]
    Sys {
        op: String,
        errno: nix::errno::Errno,
    },
    #[error("capabilities ({set}): {message}")]
    Caps { set: &'static str, message: String },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("{0}")]
    Exec(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ProcessError>;

/// The capabilities Docker and Podman's Docker-compatible defaults give a container (moby
/// `oci/caps/defaults.go`); CAP_SYS_ADMIN is not among them.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// What execve needs, prepared in the container: the resolved program, argv, environment
/// (HOME added from the container's /etc/passwd) and working directory.
pub struct Prepared {
    pub exe: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
}

/// The steps the container's init and an `exec`'d process share before their identity is set:
/// the console (when `process.terminal`), rlimits, the OOM score, and the program lookup in the
/// container's PATH. Runs inside the container (after pivot_root / setns).
pub fn prepare(
    process: &Process,
    console: Option<std::os::fd::RawFd>,
) -> std::result::Result<Prepared, String> {
    if process.terminal().unwrap_or(false) {
        let console = console.ok_or("process.terminal is set but no --console-socket was given")?;
        crate::tty::setup_console(console).map_err(|e| e.to_string())?;
    }
    set_rlimits(process).map_err(|e| e.to_string())?;
    set_oom_score_adj(process).map_err(|e| e.to_string())?;
    let env = environment(process, Path::new("/etc/passwd"));
    let args = process.args().clone().unwrap_or_default();
    let cwd = process.cwd().clone();
    let program = args.first().cloned().unwrap_or_default();
    let exe =
        resolve_executable(&program, &env, Path::new("/"), &cwd).map_err(|e| e.to_string())?;
    Ok(Prepared {
        exe,
        args,
        env,
        cwd,
    })
}

fn sys(op: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> ProcessError {
    let op = op.into();
    move |errno| ProcessError::Sys { op, errno }
}

/// Applies `process.rlimits` (before dropping CAP_SYS_RESOURCE).
pub fn set_rlimits(process: &Process) -> Result<()> {
    for limit in process.rlimits().iter().flatten() {
        let resource = match limit.typ() {
            PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
        };
        let rlim = libc::rlimit {
            rlim_cur: limit.soft(),
            rlim_max: limit.hard(),
        };
        // SAFETY: `rlim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(resource, &rlim) } != 0 {
            return Err(ProcessError::Sys {
                op: format!("setrlimit {:?}", limit.typ()),
                errno: nix::errno::Errno::last(),
            });
        }
    }
    Ok(())
}

/// Writes `process.oomScoreAdj` for the calling process.
pub fn set_oom_score_adj(process: &Process) -> Result<()> {
    if let Some(adj) = process.oom_score_adj() {
        let path = Path::new("/proc/self/oom_score_adj");
        std::fs::write(path, adj.to_string()).map_err(|source| ProcessError::Io {
            op: "writing",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}

fn to_caps(set: Option<&Capabilities>, name: &'static str) -> Result<CapsHashSet> {
    let supported = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
    let mut out = CapsHashSet::new();
    for cap in set.into_iter().flatten() {
        let text = format!("CAP_{cap}");
        let parsed = caps::Capability::from_str(&text).map_err(|e| ProcessError::Caps {
            set: name,
            message: format!("{text}: {e}"),
        })?;
        // Capabilities this kernel does not know are ignored, as runc does.
        if supported.contains(&parsed) {
            out.insert(parsed);
        } else {
            tracing::debug!(capability = %text, "not supported by this kernel; ignored");
        }
    }
    Ok(out)
}

/// Everything from the bounding-set drop to the last capability set, then no_new_privs and
/// (when it is safe to load late) seccomp. `seccomp_loader` is the runtime's seccomp loader.
pub fn finalize_identity(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    seccomp_loader: &dyn Fn(&LinuxSeccomp) -> std::result::Result<(), String>,
) -> Result<()> {
    let caps_spec = process.capabilities().as_ref();
    let bounding = to_caps(caps_spec.and_then(|c| c.bounding().as_ref()), "bounding")?;
    let effective = to_caps(caps_spec.and_then(|c| c.effective().as_ref()), "effective")?;
    let permitted = to_caps(caps_spec.and_then(|c| c.permitted().as_ref()), "permitted")?;
    let inheritable = to_caps(
        caps_spec.and_then(|c| c.inheritable().as_ref()),
        "inheritable",
    )?;
    let ambient = to_caps(caps_spec.and_then(|c| c.ambient().as_ref()), "ambient")?;
    let nnp = process.no_new_privileges().unwrap_or(false);

    if let Some(profile) = seccomp
        && !nnp
    {
        // Without no_new_privs the filter must be installed while we still hold
        // CAP_SYS_ADMIN.
        seccomp_loader(profile).map_err(ProcessError::Seccomp)?;
    }

    // The bounding set can only shrink: drop every capability not listed.
    let current = caps::read(None, CapSet::Bounding).map_err(|e| ProcessError::Caps {
        set: "bounding",
        message: e.to_string(),
    })?;
    for cap in current.difference(&bounding) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(|e| ProcessError::Caps {
            set: "bounding",
            message: format!("dropping {cap}: {e}"),
        })?;
    }

    // Switch user but keep the permitted set across setuid.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(sys("prctl(PR_SET_KEEPCAPS)")(nix::errno::Errno::last()));
    }
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match setgroups(&groups) {
        Ok(()) => {}
        // In a user namespace whose setgroups is denied, only an empty list would work anyway.
        Err(nix::errno::Errno::EPERM) if groups.is_empty() => {}
        Err(errno) => return Err(sys("setgroups")(errno)),
    }
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    setresgid(gid, gid, gid).map_err(sys(format!("setresgid({gid})")))?;
    setresuid(uid, uid, uid).map_err(sys(format!("setresuid({uid})")))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) } != 0 {
        return Err(sys("prctl(PR_SET_KEEPCAPS)")(nix::errno::Errno::last()));
    }

    let caps_err = |set: &'static str| {
        move |e: caps::errors::CapsError| ProcessError::Caps {
            set,
            message: e.to_string(),
        }
    };
    // Each capset must keep effective ⊆ permitted: shrink effective first, then permitted,
    // then inheritable (which may only hold permitted or bounding capabilities).
    caps::set(None, CapSet::Effective, &effective).map_err(caps_err("effective"))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(caps_err("permitted"))?;
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(caps_err("inheritable"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    for cap in ambient {
        // Ambient capabilities must be both permitted and inheritable; runc skips the rest.
        if permitted.contains(&cap) && inheritable.contains(&cap) {
            caps::raise(None, CapSet::Ambient, cap).map_err(caps_err("ambient"))?;
        }
    }

    if nnp {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(sys("prctl(PR_SET_NO_NEW_PRIVS)")(nix::errno::Errno::last()));
        }
    }
    if let Some(umask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    } else {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    }
    Ok(())
}

/// Loads seccomp when it was deferred until just before execve (no_new_privs set).
pub fn late_seccomp(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    seccomp_loader: &dyn Fn(&LinuxSeccomp) -> std::result::Result<(), String>,
) -> Result<()> {
    if let Some(profile) = seccomp
        && process.no_new_privileges().unwrap_or(false)
    {
        seccomp_loader(profile).map_err(ProcessError::Seccomp)?;
    }
    Ok(())
}

/// The environment for execve: the spec's, plus HOME from the container's /etc/passwd when the
/// spec does not set it (as runc does).
pub fn environment(process: &Process, passwd: &Path) -> Vec<String> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let uid = process.user().uid();
        let home = std::fs::read_to_string(passwd)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 6 && fields[2].parse::<u32>().ok() == Some(uid))
                        .then(|| fields[5].to_owned())
                })
            })
            .unwrap_or_else(|| "/".to_owned());
        env.push(format!("HOME={home}"));
    }
    env
}

/// Finds `program` the way execvp would, but in `env`'s PATH (the container's), relative to
/// `root` (use "/" after pivot_root).
pub fn resolve_executable(
    program: &str,
    env: &[String],
    root: &Path,
    cwd: &Path,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let inside = |p: &Path| -> PathBuf {
        crate::fsutil::secure_join(root, p)
            .unwrap_or_else(|_| root.join(p.strip_prefix("/").unwrap_or(p)))
    };
    if program.contains('/') {
        let path = if Path::new(program).is_absolute() {
            PathBuf::from(program)
        } else {
            cwd.join(program)
        };
        if is_exec(&inside(&path)) {
            return Ok(path);
        }
        return Err(ProcessError::Exec(format!(
            "exec: {program}: no such executable file"
        )));
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if is_exec(&inside(&candidate)) {
            return Ok(candidate);
        }
    }
    Err(ProcessError::Exec(format!(
        "exec: {program:?}: executable file not found in $PATH"
    )))
}

/// execve(2); returns only on failure.
pub fn exec(path: &Path, args: &[String], env: &[String]) -> ProcessError {
    let c =
        |s: &str| CString::new(s).map_err(|_| ProcessError::Exec(format!("{s:?} contains NUL")));
    let prepared = (|| -> Result<(CString, Vec<CString>, Vec<CString>)> {
        let path = c(&path.to_string_lossy())?;
        let args = args.iter().map(|a| c(a)).collect::<Result<Vec<_>>>()?;
        let env = env.iter().map(|e| c(e)).collect::<Result<Vec<_>>>()?;
        Ok((path, args, env))
    })();
    match prepared {
        Ok((p, a, e)) => match nix::unistd::execve(&p, &a, &e) {
            Err(errno) => ProcessError::Exec(format!("exec {}: {errno}", path.display())),
        },
        Err(err) => err,
    }
}

/// Marks every fd above 2 close-on-exec, except the first `preserve` extra ones (LISTEN_FDS
/// style `--preserve-fds`).
pub fn close_extra_fds(preserve: u32) -> Result<()> {
    let first = 3 + preserve;
    // SAFETY: close_range with valid bounds and a flag; affects only our own descriptor table.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret != 0 {
        return Err(sys("close_range")(nix::errno::Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executables_are_found_in_the_containers_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        let sh = bin.join("sh");
        std::fs::write(&sh, b"#!/bin/true\n").expect("write");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let env = vec!["PATH=/usr/bin:/bin".to_owned()];
        let found = resolve_executable("sh", &env, root.path(), Path::new("/")).expect("found");
        assert_eq!(found, PathBuf::from("/bin/sh"));
        assert!(resolve_executable("nope", &env, root.path(), Path::new("/")).is_err());
        assert_eq!(
            resolve_executable("/bin/sh", &env, root.path(), Path::new("/")).expect("abs"),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn home_comes_from_the_containers_passwd() {
        let dir = tempfile::tempdir().expect("tempdir");
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("write");
        let mut process = Process::default();
        process.set_env(Some(vec!["PATH=/bin".into()]));
        process.user_mut().set_uid(1000);
        let env = environment(&process, &passwd);
        assert!(env.contains(&"HOME=/home/app".to_owned()), "{env:?}");
        process.set_env(Some(vec!["HOME=/custom".into()]));
        let env = environment(&process, &passwd);
        assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
    }
}
