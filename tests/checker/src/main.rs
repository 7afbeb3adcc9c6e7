//! `berth-checker`: runs inside a test container (linked statically, so it needs nothing from
//! the image) and prints one JSON object describing what the container sees: ids, capabilities,
//! no_new_privs, seccomp mode and whether a probe syscall is denied, namespaces, hostname,
//! cgroup limits, mounts, masked paths, rlimits, environment and cwd. The end-to-end tests
//! compare it with the spec that launched the container.
//!
//! `berth-checker [--probe-denied SYSCALL]`: SYSCALL is one of `mkdirat`, `unshare`, `mount`,
//! `personality`; the report says what errno the call returned.

use std::{collections::BTreeMap, fs, path::Path};

use serde_json::{Value, json};

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Fields of /proc/self/status as a map.
fn proc_status() -> BTreeMap<String, String> {
    read("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn namespaces() -> Value {
    let mut out = serde_json::Map::new();
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        if let Ok(link) = fs::read_link(format!("/proc/self/ns/{ns}")) {
            out.insert(ns.to_owned(), json!(link.display().to_string()));
        }
    }
    Value::Object(out)
}

fn mounts() -> Value {
    let text = read("/proc/self/mountinfo").unwrap_or_default();
    let list: Vec<Value> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(json!({
                "target": fields.get(4)?,
                "options": fields.get(5)?,
                "fstype": fields.get(sep + 1)?,
                "source": fields.get(sep + 2)?,
                "super_options": fields.get(sep + 3).copied().unwrap_or(""),
            }))
        })
        .collect();
    Value::Array(list)
}

/// What reading a masked path yields: "empty" (tmpfs or /dev/null), "content", or an error.
fn masked(path: &str) -> Value {
    let p = Path::new(path);
    match fs::metadata(p) {
        Err(e) => json!(format!("error: {e}")),
        Ok(m) if m.is_dir() => match fs::read_dir(p) {
            Ok(mut entries) => json!(if entries.next().is_none() {
                "empty"
            } else {
                "content"
            }),
            Err(e) => json!(format!("error: {e}")),
        },
        Ok(_) => match fs::read(p) {
            Ok(bytes) if bytes.is_empty() => json!("empty"),
            Ok(_) => json!("content"),
            Err(e) => json!(format!("error: {e}")),
        },
    }
}

/// Whether `path` can be written (tests read-only paths and a read-only root).
fn writable(path: &str) -> Value {
    match fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => json!(true),
        Err(e) => json!(format!("error: {e}")),
    }
}

fn cgroup_files() -> Value {
    let mut out = serde_json::Map::new();
    for file in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/pids.max",
        "/sys/fs/cgroup/cpu.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
        "/sys/fs/cgroup/cpu/cpu.shares",
    ] {
        if let Some(v) = read(file) {
            out.insert(file.to_owned(), json!(v));
        }
    }
    out.insert("self".to_owned(), json!(read("/proc/self/cgroup")));
    Value::Object(out)
}

fn rlimits() -> Value {
    let mut out = serde_json::Map::new();
    for (name, res) in [
        ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
        ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
        ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ] {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid out-pointer for getrlimit.
        if unsafe { libc::getrlimit(res, &mut r) } == 0 {
            out.insert(
                name.to_owned(),
                json!({"soft": r.rlim_cur, "hard": r.rlim_max}),
            );
        }
    }
    Value::Object(out)
}

/// Calls a syscall the tests expect seccomp (or missing capabilities) to deny, and reports the
/// errno (0 when it succeeded).
fn probe(syscall: &str) -> Value {
    let ret = match syscall {
        // SAFETY: mkdirat with a NUL-terminated literal path; creates /tmp-probe or fails.
        "mkdirat" => unsafe { libc::mkdirat(libc::AT_FDCWD, c"/probe-dir".as_ptr(), 0o755) },
        // SAFETY: unshare with a flag constant.
        "unshare" => unsafe { libc::unshare(libc::CLONE_NEWUTS) },
        // SAFETY: mount of a tmpfs with NUL-terminated literals.
        "mount" => unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/mnt".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        },
        // SAFETY: personality query (0xffffffff reads the current persona).
        "personality" => unsafe { libc::personality(0x0008) },
        other => return json!({"syscall": other, "error": "unknown probe"}),
    };
    let errno = if ret == -1 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    json!({"syscall": syscall, "errno": errno})
}

fn devices() -> Value {
    let devices = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/fd",
    ];
    Value::Object(
        devices
            .iter()
            .map(|d| ((*d).to_owned(), json!(Path::new(d).exists())))
            .collect(),
    )
}

fn umask() -> u32 {
    // SAFETY: umask always succeeds; the old value is put back immediately.
    let old = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    old
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let status = proc_status();
    let hostname = read("/proc/sys/kernel/hostname");
    let mut report = json!({
        "pid": std::process::id(),
        // SAFETY: the id getters cannot fail.
        "uid": unsafe { libc::getuid() },
        // SAFETY: as above.
        "gid": unsafe { libc::getgid() },
        "groups": status.get("Groups"),
        "cap_eff": status.get("CapEff"),
        "cap_prm": status.get("CapPrm"),
        "cap_inh": status.get("CapInh"),
        "cap_bnd": status.get("CapBnd"),
        "cap_amb": status.get("CapAmb"),
        "no_new_privs": status.get("NoNewPrivs"),
        "seccomp": status.get("Seccomp"),
        "hostname": hostname,
        "domainname": read("/proc/sys/kernel/domainname"),
        "namespaces": namespaces(),
        "uid_map": read("/proc/self/uid_map"),
        "cwd": std::env::current_dir().ok().map(|p| p.display().to_string()),
        "env": std::env::vars().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "umask": umask(),
        "oom_score_adj": read("/proc/self/oom_score_adj"),
        "rlimits": rlimits(),
        "cgroup": cgroup_files(),
        "mounts": mounts(),
        "masked": {
            "/proc/kcore": masked("/proc/kcore"),
            "/proc/keys": masked("/proc/keys"),
            "/sys/firmware": masked("/sys/firmware"),
            "/proc/acpi": masked("/proc/acpi"),
        },
        "writable": {
            "/proc/sys/kernel/hostname": writable("/proc/sys/kernel/hostname"),
            "/proc/sysrq-trigger": writable("/proc/sysrq-trigger"),
            "/checker-root-probe": writable("/"),
        },
        "devices": devices(),
    });
    if let Some(pos) = args.iter().position(|a| a == "--probe-denied")
        && let Some(syscall) = args.get(pos + 1)
    {
        report["probe"] = probe(syscall);
    }
    println!("{report}");
}
