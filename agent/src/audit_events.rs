//! Decoding of the `AUDIT_EVENTS` ring into the event stream (`berth.event.v1`):
//!
//! - `syscall`: `container` (id, name, labels, pod, namespace, kind), `process` (pid, tid,
//!   comm, ppid, binary, ancestry), `syscall` (name) and `nr`, `action` (record or kill),
//!   `args` (named as the kernel's tracepoint format names them; flags also decoded),
//!   captures (`path`, `argv`, `address`) each with a `*_truncated` mark, and `ret` with
//!   `error` (the errno name) when negative; a killed call has no `ret` (it was stopped at
//!   entry). `ret_missing: true` when the pending-call table was full (counted).
//! - `exec`: `process` with `binary` (the file executed), `argv`, `ppid`, `ancestry`.
//! - `exit`: `process`, `code` (the status passed to exit/exit_group; null when the process
//!   was killed by a signal).
//!
//! Process ancestry comes from the kernel's fork/exec/exit records of audited containers: a
//! table of pid → (ppid, binary, argv) the decoder keeps (bounded; a process that started
//! before its container was audited is looked up in /proc).

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Instant,
};

use berth_common::audit::{
    ACT_KILL, AUDIT_EVENT_FIXED, AuditEvent, EV_ADDR, EV_ARGV, EV_ARGV_TRUNCATED, EV_EXIT_CODE,
    EV_HAS_RET, EV_NO_RET, EV_PATH, EV_PATH_TRUNCATED, EV_READ_FAULT, EVENT_EXEC, EVENT_EXIT,
    EVENT_FORK, EVENT_SYSCALL,
};
use serde_json::{Value, json, value::RawValue};

use crate::{
    audit::TargetInfo,
    events::{Event, EventHub, SCHEMA},
};

/// Processes the decoder remembers (oldest dropped first beyond this).
const MAX_PROCESSES: usize = 65_536;
/// How long a container's serialized object is reused.
const CONTAINER_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Ancestors listed in an event.
const MAX_ANCESTRY: usize = 8;

#[derive(Clone, Debug, Default)]
struct Proc {
    ppid: u32,
    binary: String,
    argv: Vec<String>,
    /// Insertion order, for bounded eviction.
    seq: u64,
}

pub struct AuditDecoder {
    hub: Arc<EventHub>,
    targets: Arc<RwLock<HashMap<u64, TargetInfo>>>,
    procs: HashMap<u32, Proc>,
    seq: u64,
    /// Syscall number → what the decoder knows of it (looked up once per syscall).
    syscalls: HashMap<u32, Arc<SyscallInfo>>,
    /// cgroup id → its container object, serialized, and the names filters match.
    containers: HashMap<u64, CachedContainer>,
    tracefs: PathBuf,
    offset_ns: u64,
}

impl AuditDecoder {
    pub fn new(
        hub: Arc<EventHub>,
        targets: Arc<RwLock<HashMap<u64, TargetInfo>>>,
        offset_ns: u64,
    ) -> Self {
        let tracefs = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("events").exists())
            .unwrap_or_else(|| PathBuf::from("/sys/kernel/tracing"));
        Self {
            hub,
            targets,
            procs: HashMap::new(),
            seq: 0,
            syscalls: HashMap::new(),
            containers: HashMap::new(),
            tracefs,
            offset_ns,
        }
    }

    pub fn decode(&mut self, bytes: &[u8]) {
        if bytes.len() < AUDIT_EVENT_FIXED {
            return;
        }
        // Short records are the fixed part; the rest reads as zeros.
        // SAFETY: all-zero is a valid `AuditEvent` (integers and arrays only).
        let mut ev: AuditEvent = unsafe { std::mem::zeroed() };
        let n = bytes.len().min(size_of::<AuditEvent>());
        // SAFETY: `AuditEvent` is plain integers and arrays (every bit pattern valid); `n`
        // bytes fit both buffers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                std::ptr::from_mut(&mut ev).cast::<u8>(),
                n,
            )
        };
        match ev.header.kind {
            EVENT_FORK => {
                let child = ev.args[0] as u32;
                let parent = self.procs.get(&ev.pid).cloned().unwrap_or_default();
                self.remember(
                    child,
                    Proc {
                        ppid: ev.pid,
                        binary: parent.binary,
                        argv: parent.argv,
                        seq: 0,
                    },
                );
            }
            EVENT_EXEC => self.exec(&ev),
            EVENT_EXIT => self.exit(&ev),
            EVENT_SYSCALL => self.syscall(&ev),
            other => tracing::debug!(kind = other, "unknown audit record"),
        }
    }

    fn remember(&mut self, pid: u32, mut p: Proc) {
        self.seq += 1;
        p.seq = self.seq;
        if self.procs.len() >= MAX_PROCESSES && !self.procs.contains_key(&pid) {
            // Drop the oldest eighth at once (amortized).
            let mut seqs: Vec<u64> = self.procs.values().map(|p| p.seq).collect();
            seqs.sort_unstable();
            let cut = seqs[MAX_PROCESSES / 8];
            self.procs.retain(|_, p| p.seq > cut);
        }
        self.procs.insert(pid, p);
    }

    fn time(&self, ev: &AuditEvent) -> String {
        berth_runtime::state::rfc3339_micros(ev.header.ts_ns.saturating_add(self.offset_ns))
    }

    fn container(&self, ev: &AuditEvent) -> Value {
        let t = self.targets.read().unwrap_or_else(|p| p.into_inner());
        match t.get(&ev.cgroup_id) {
            Some(info) => info.to_json(),
            None => json!({ "cgroup_id": ev.cgroup_id }),
        }
    }

    /// Makes sure `pid` is in the table: a process the decoder has not seen start (there
    /// before its container was audited, or an ancestor outside it such as the runtime) is
    /// looked up in /proc once, then remembered.
    fn known(&mut self, pid: u32) {
        if pid == 0 || self.procs.contains_key(&pid) {
            return;
        }
        let p = Proc {
            ppid: proc_ppid(pid).unwrap_or(0),
            binary: proc_exe(pid).unwrap_or_default(),
            argv: Vec::new(),
            seq: 0,
        };
        self.remember(pid, p);
    }

    /// Makes sure the process and its ancestors (up to [`MAX_ANCESTRY`]) are in the table and
    /// returns the ancestors' pids, nearest first.
    fn lineage(&mut self, pid: u32) -> Vec<u32> {
        self.known(pid);
        let mut chain = Vec::new();
        let mut cur = self.procs.get(&pid).map_or(0, |p| p.ppid);
        while cur != 0 && chain.len() < MAX_ANCESTRY && !chain.contains(&cur) {
            self.known(cur);
            chain.push(cur);
            cur = self.procs.get(&cur).map_or(0, |p| p.ppid);
        }
        chain
    }

    /// The process object (pid, tid, comm, ppid, binary, ancestry) of `ev`'s caller, for
    /// serialization; `chain` from [`Self::lineage`].
    fn process_out<'a>(&'a self, ev: &AuditEvent, chain: &[u32]) -> ProcessOut<'a> {
        let me = self.procs.get(&ev.pid);
        ProcessOut {
            pid: ev.pid,
            tid: ev.tid,
            comm: cstr(&ev.comm),
            ppid: me.map(|p| p.ppid).filter(|p| *p != 0),
            binary: me.map(|p| p.binary.as_str()),
            ancestry: chain
                .iter()
                .map(|pid| Ancestor {
                    pid: *pid,
                    binary: self.procs.get(pid).map(|p| p.binary.as_str()),
                })
                .collect(),
        }
    }

    /// The process object as a `Value` (exec and exit events, which are rare).
    fn process(&mut self, ev: &AuditEvent) -> Value {
        let chain = self.lineage(ev.pid);
        serde_json::to_value(self.process_out(ev, &chain)).unwrap_or(Value::Null)
    }

    /// The container object of a cgroup, serialized once per cgroup.
    fn container_raw(&mut self, cgroup: u64) -> (Arc<RawValue>, Arc<[String]>) {
        // Re-read at most once a second: a cgroup's labels can change (registered again).
        if let Some((raw, names, at)) = self.containers.get(&cgroup)
            && at.elapsed() < CONTAINER_CACHE_TTL
        {
            return (raw.clone(), names.clone());
        }
        let t = self.targets.read().unwrap_or_else(|p| p.into_inner());
        match t.get(&cgroup) {
            Some(info) => {
                let raw = raw_json(info);
                let names: Arc<[String]> = [info.name.clone(), info.id.clone()].into();
                drop(t);
                if self.containers.len() >= MAX_PROCESSES {
                    self.containers.clear();
                }
                self.containers
                    .insert(cgroup, (raw.clone(), names.clone(), Instant::now()));
                (raw, names)
            }
            // Not attributed yet (or any more): the cgroup id alone, not cached.
            None => (raw_json(&json!({ "cgroup_id": cgroup })), Arc::from([])),
        }
    }

    fn exec(&mut self, ev: &AuditEvent) {
        let binary = if ev.flags & EV_PATH != 0 {
            cstr(&ev.path)
        } else {
            String::new()
        };
        let argv = argv_of(ev);
        let ppid = self
            .procs
            .get(&ev.pid)
            .map(|p| p.ppid)
            .or_else(|| proc_ppid(ev.pid))
            .unwrap_or(0);
        self.remember(
            ev.pid,
            Proc {
                ppid,
                binary: binary.clone(),
                argv: argv.clone(),
                seq: 0,
            },
        );
        let mut process = self.process(ev);
        process["argv"] = argv.into();
        process["argv_truncated"] = (ev.flags & EV_ARGV_TRUNCATED != 0).into();
        process["binary_truncated"] = (ev.flags & EV_PATH_TRUNCATED != 0).into();
        self.hub.publish(
            "exec",
            json!({
                "time": self.time(ev),
                "container": self.container(ev),
                "process": process,
                "old_pid": ev.args[0] as u32,
            }),
        );
    }

    fn exit(&mut self, ev: &AuditEvent) {
        let mut process = self.process(ev);
        if let Some(p) = self.procs.get(&ev.pid) {
            process["argv"] = p.argv.clone().into();
        }
        self.hub.publish(
            "exit",
            json!({
                "time": self.time(ev),
                "container": self.container(ev),
                "process": process,
                "code": (ev.flags & EV_EXIT_CODE != 0).then_some(ev.code),
            }),
        );
        self.procs.remove(&ev.pid);
    }

    fn syscall(&mut self, ev: &AuditEvent) {
        let info = self.syscall_info(ev.nr);
        let (container, names) = self.container_raw(ev.cgroup_id);
        let chain = self.lineage(ev.pid);
        let capture = &info.capture;
        let flags = match (capture.flags_arg, capture.flags_family) {
            (Some(i), Some(family)) if !capture.flags_in_struct && i < 6 => Some((
                usize::from(i),
                berth_audit::flag_names(family, ev.args[usize::from(i)]),
            )),
            _ => None,
        };
        let has = |f: u32| ev.flags & f != 0;
        let ret = has(EV_HAS_RET).then_some(ev.ret);
        let line = SyscallLine {
            schema: SCHEMA,
            kind: "syscall",
            node: &self.hub.node,
            time: self.time(ev),
            container: &container,
            process: self.process_out(ev, &chain),
            syscall: &info.name,
            nr: ev.nr,
            action: if ev.actions & ACT_KILL != 0 {
                "kill"
            } else {
                "record"
            },
            args: ArgsOut {
                names: &info.args,
                values: &ev.args,
                flags,
            },
            path: has(EV_PATH).then(|| cstr(&ev.path)),
            path_truncated: has(EV_PATH).then(|| has(EV_PATH_TRUNCATED)),
            argv: has(EV_ARGV).then(|| argv_of(ev)),
            argv_truncated: has(EV_ARGV).then(|| has(EV_ARGV_TRUNCATED)),
            address: has(EV_ADDR)
                .then(|| sockaddr(&ev.addr[..usize::from(ev.addr_len).min(ev.addr.len())])),
            read_fault: has(EV_READ_FAULT).then_some(true),
            ret,
            error: ret.filter(|r| *r < 0 && *r > -4096).map(errno_name),
            ret_missing: has(EV_NO_RET).then_some(true),
        };
        let text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "serializing a syscall event");
                return;
            }
        };
        self.hub.publish_event(Event {
            kind: "syscall".into(),
            names,
            syscall: Some(info.name.clone()),
            line: text,
        });
    }

    /// What the decoder knows of syscall `nr`: its name (libseccomp), what berth captures of
    /// it, and its arguments' names from `syscalls/sys_enter_<name>/format`. Looked up on the
    /// first record of the syscall, then cached.
    fn syscall_info(&mut self, nr: u32) -> Arc<SyscallInfo> {
        let tracefs = &self.tracefs;
        self.syscalls
            .entry(nr)
            .or_insert_with(|| {
                let args = crate::audit::syscall_tracepoint(tracefs, nr, "enter")
                    .and_then(|tp| {
                        std::fs::read_to_string(
                            tracefs.join("events/syscalls").join(tp).join("format"),
                        )
                        .ok()
                    })
                    .map(|f| f.lines().filter_map(format_field).collect())
                    .unwrap_or_default();
                Arc::new(SyscallInfo {
                    name: berth_audit::syscall_name(nr).unwrap_or_else(|| format!("syscall_{nr}")),
                    capture: berth_audit::Capture::of(nr),
                    args,
                })
            })
            .clone()
    }
}

/// A container's serialized object, the names filters match, and when they were read.
type CachedContainer = (Arc<RawValue>, Arc<[String]>, Instant);

/// What the decoder knows of one syscall.
struct SyscallInfo {
    name: String,
    capture: berth_audit::Capture,
    /// Argument names and how they read as numbers.
    args: Vec<(String, Signed)>,
}

/// How an argument reads as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    No,
    Int,
    Long,
}

/// `field:int dfd;\toffset:16;\tsize:8;\tsigned:0;` → ("dfd", Int); None for the common
/// fields and `__syscall_nr`.
fn format_field(line: &str) -> Option<(String, Signed)> {
    let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
    let name = decl.rsplit([' ', '*']).next()?;
    if name.starts_with("common_") || name == "__syscall_nr" {
        return None;
    }
    let ty = decl[..decl.len() - name.len()].trim();
    let signed = match ty {
        "int" | "pid_t" | "key_serial_t" | "clockid_t" | "timer_t" => Signed::Int,
        "long" | "off_t" | "loff_t" => Signed::Long,
        _ => Signed::No,
    };
    Some((name.to_owned(), signed))
}

/// `v` serialized once, to be embedded in event lines as is.
fn raw_json<T: serde::Serialize + ?Sized>(v: &T) -> Arc<RawValue> {
    match serde_json::value::to_raw_value(v) {
        Ok(raw) => raw.into(),
        // Serializing a map of strings cannot fail; `null` keeps the line valid if it did.
        Err(_) => RawValue::NULL.to_owned().into(),
    }
}

/// The `errno` name of a negative return value (`ENOENT`).
fn errno_name(ret: i64) -> String {
    nix::errno::Errno::from_raw(-ret as i32)
        .to_string()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A `syscall` event as it is written (field order is the line's).
#[derive(serde::Serialize)]
struct SyscallLine<'a> {
    schema: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    node: &'a str,
    time: String,
    container: &'a RawValue,
    process: ProcessOut<'a>,
    syscall: &'a str,
    nr: u32,
    action: &'static str,
    args: ArgsOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    argv_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_fault: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ret: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ret_missing: Option<bool>,
}

#[derive(serde::Serialize)]
struct ProcessOut<'a> {
    pid: u32,
    tid: u32,
    comm: String,
    ppid: Option<u32>,
    binary: Option<&'a str>,
    ancestry: Vec<Ancestor<'a>>,
}

#[derive(serde::Serialize)]
struct Ancestor<'a> {
    pid: u32,
    binary: Option<&'a str>,
}

/// The syscall's arguments by their tracepoint names, signed ones as the caller passed them
/// (`-100`, not 4294967196), and the flags argument's bits by name (`flags_names`).
struct ArgsOut<'a> {
    names: &'a [(String, Signed)],
    values: &'a [u64; 6],
    flags: Option<(usize, Vec<&'static str>)>,
}

impl serde::Serialize for ArgsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(None)?;
        for (i, (name, signed)) in self.names.iter().enumerate().take(6) {
            let v = self.values[i];
            match signed {
                Signed::Int => m.serialize_entry(name, &(v as i32))?,
                Signed::Long => m.serialize_entry(name, &(v as i64))?,
                Signed::No => m.serialize_entry(name, &v)?,
            }
        }
        if let Some((i, bits)) = &self.flags
            && let Some((name, _)) = self.names.get(*i)
        {
            m.serialize_entry(&format!("{name}_names"), bits)?;
        }
        m.end()
    }
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn argv_of(ev: &AuditEvent) -> Vec<String> {
    if ev.flags & EV_ARGV == 0 {
        return Vec::new();
    }
    let used = usize::from(ev.argv_len).min(ev.argv.len());
    let mut out: Vec<String> = ev.argv[..used]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    // The buffer ends with the last string's NUL: drop the empty tail it splits into.
    if ev.argv[..used].last() == Some(&0) {
        out.pop();
    }
    out
}

/// A `struct sockaddr` as JSON: inet/inet6 with ip and port, unix with its path.
fn sockaddr(b: &[u8]) -> Value {
    if b.len() < 2 {
        return Value::Null;
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    match i32::from(family) {
        libc::AF_INET if b.len() >= 8 => json!({
            "family": "inet",
            "ip": Ipv4Addr::new(b[4], b[5], b[6], b[7]).to_string(),
            "port": u16::from_be_bytes([b[2], b[3]]),
        }),
        libc::AF_INET6 if b.len() >= 24 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            json!({
                "family": "inet6",
                "ip": Ipv6Addr::from(ip).to_string(),
                "port": u16::from_be_bytes([b[2], b[3]]),
            })
        }
        libc::AF_UNIX => json!({ "family": "unix", "path": cstr(&b[2..]) }),
        f => json!({ "family": f }),
    }
}

fn proc_ppid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn proc_exe(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_inet_and_unix_addresses() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(
            sockaddr(&v4),
            json!({"family": "inet", "ip": "10.1.2.3", "port": 8080})
        );
        let mut un = vec![0u8; 2];
        un[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        un.extend_from_slice(b"/run/x.sock\0");
        assert_eq!(
            sockaddr(&un),
            json!({"family": "unix", "path": "/run/x.sock"})
        );
    }

    #[test]
    fn reads_argument_names_and_signedness_from_the_format() {
        assert_eq!(
            format_field("\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;"),
            Some(("dfd".into(), Signed::Int))
        );
        assert_eq!(
            format_field("\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;"),
            Some(("filename".into(), Signed::No))
        );
        assert_eq!(
            format_field("\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;"),
            None
        );
        assert_eq!(
            format_field("\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;"),
            None
        );
    }

    #[test]
    fn splits_argv_and_keeps_empty_arguments() {
        // SAFETY: all-zero is a valid AuditEvent.
        let mut ev: AuditEvent = unsafe { std::mem::zeroed() };
        let raw = b"sh\0-c\0\0echo hi\0";
        ev.argv[..raw.len()].copy_from_slice(raw);
        ev.argv_len = raw.len() as u16;
        ev.argc = 4;
        ev.flags = EV_ARGV;
        assert_eq!(argv_of(&ev), vec!["sh", "-c", "", "echo hi"]);
    }
}
