//! Syscall auditing on tracepoints (kprobes, fentry and BPF LSM are unavailable on the kernels
//! berth targets). See `berth_common::audit` for the maps and the decision path.
//!
//! Cost model: a program on `syscalls:sys_enter_<name>` runs only for that syscall, so the
//! agent attaches `sys_enter` just to the syscalls some rule names; every caller outside an
//! audited container pays one tracepoint dispatch and one hash lookup (`AUDIT_TARGETS`).
//! `sys_enter_raw` (every syscall on the machine) is attached only while a container counts all.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, bpf_probe_read_user_buf, bpf_send_signal, generated,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::TracePointContext,
};
use berth_common::{
    audit::{
        ACT_COUNT, ACT_KILL, ACT_RECORD, ARG_NONE, AUDIT_ADDR_LEN, AUDIT_ARGV_LEN, AUDIT_ARGV_MAX,
        AUDIT_ARGV_SLACK, AUDIT_CLAUSES, AUDIT_EVENT_FIXED, AUDIT_EVENT_WITH_PATH, AUDIT_PATH_LEN,
        AUDIT_PATH_MATCH_LEN, AuditClause, AuditCountKey, AuditEvent, AuditPathKey, AuditPathValue,
        AuditStat, AuditSyscall, AuditSyscallKey, AuditTarget, CAP_ADDR_AT_EXIT,
        CAP_FLAGS_IN_STRUCT, CAP_LIFECYCLE, CAP_NO_RETURN, EV_ADDR, EV_ARGV, EV_ARGV_TRUNCATED,
        EV_EXIT_CODE, EV_HAS_RET, EV_NO_RET, EV_PATH, EV_PATH_TRUNCATED, EV_READ_FAULT, EVENT_EXEC,
        EVENT_EXIT, EVENT_FORK, EVENT_SYSCALL, PATH_FIXED_BITS, SYS_EXECVE, SYS_EXECVEAT, SYS_EXIT,
        SYS_EXIT_GROUP, TARGET_COUNT_ALL, TARGET_LIFECYCLE,
    },
    events::EVENT_ABI_VERSION,
    maps,
};

#[map(name = "AUDIT_TARGETS")]
static AUDIT_TARGETS: HashMap<u64, AuditTarget> =
    HashMap::with_max_entries(maps::AUDIT_TARGETS_MAX_ENTRIES, 0);

#[map(name = "AUDIT_SYSCALLS")]
static AUDIT_SYSCALLS: HashMap<AuditSyscallKey, AuditSyscall> =
    HashMap::with_max_entries(maps::AUDIT_SYSCALLS_MAX_ENTRIES, 0);

#[map(name = "AUDIT_PATHS")]
static AUDIT_PATHS: LpmTrie<AuditPathKey, AuditPathValue> =
    LpmTrie::with_max_entries(maps::AUDIT_PATHS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "AUDIT_COUNTS")]
static AUDIT_COUNTS: PerCpuHashMap<AuditCountKey, u64> =
    PerCpuHashMap::with_max_entries(maps::AUDIT_COUNTS_MAX_ENTRIES, 0);

/// Not LRU: evicting a waiting record would lose it silently. A full map is counted and the
/// record goes out at entry instead; `sys_proc_exit` removes what a dying thread leaves.
#[map(name = "AUDIT_INFLIGHT")]
static AUDIT_INFLIGHT: HashMap<u64, AuditEvent> =
    HashMap::with_max_entries(maps::AUDIT_INFLIGHT_MAX_ENTRIES, 0);

#[map(name = "AUDIT_EXITS")]
static AUDIT_EXITS: LruHashMap<u32, i32> =
    LruHashMap::with_max_entries(maps::AUDIT_EXITS_MAX_ENTRIES, 0);

#[map(name = "AUDIT_SCRATCH")]
static AUDIT_SCRATCH: PerCpuArray<AuditEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "AUDIT_EVENTS")]
static AUDIT_EVENTS: RingBuf = RingBuf::with_byte_size(maps::AUDIT_EVENTS_RING_BYTES, 0);

#[map(name = "AUDIT_LOST")]
static AUDIT_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "AUDIT_STATS")]
static AUDIT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(AuditStat::COUNT, 0);

const SIGKILL: u32 = 9;
/// Offsets in the syscall tracepoints' records (see `/sys/kernel/tracing/events/syscalls/*/
/// format`): `__syscall_nr` (an `int`; raw_syscalls' `long id` starts at the same offset),
/// then `args[6]` at entry or `long ret` at exit.
const TP_NR: usize = 8;
const TP_ARGS: usize = 16;
const TP_RET: usize = 16;
/// `sched_process_exec`: `__data_loc char[] filename`, `pid`, `old_pid`.
const EXEC_FILENAME: usize = 8;
const EXEC_OLD_PID: usize = 16;
/// `sched_process_fork`: `child_pid`.
const FORK_CHILD_PID: usize = 20;
/// `sched_process_exit`: `group_dead` (the last thread of the process).
const EXIT_GROUP_DEAD: usize = 32;

#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let _ = enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let _ = exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_raw(ctx: TracePointContext) -> u32 {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: copied out at once.
    if let Some(target) = unsafe { AUDIT_TARGETS.get(&cgroup) }
        && target.flags & TARGET_COUNT_ALL != 0
    {
        count(cgroup, read_ctx::<i64>(&ctx, TP_NR) as u32);
    }
    0
}

#[tracepoint]
pub fn sys_proc_exec(ctx: TracePointContext) -> u32 {
    let _ = proc_exec(&ctx);
    0
}

#[tracepoint]
pub fn sys_proc_fork(ctx: TracePointContext) -> u32 {
    let _ = proc_fork(&ctx);
    0
}

#[tracepoint]
pub fn sys_proc_exit(ctx: TracePointContext) -> u32 {
    let _ = proc_exit(&ctx);
    0
}

/// Reads a field of the tracepoint record. Tracepoint programs may load from their context
/// directly (no helper call: this runs on every audited syscall).
#[inline(always)]
fn read_ctx<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is a naturally aligned field offset of the tracepoint's record
    // (constants above); the verifier checks the access against the context's bounds.
    unsafe { ctx.as_ptr().cast::<u8>().add(offset).cast::<T>().read() }
}

#[inline(always)]
fn stat(stat: AuditStat) {
    if let Some(slot) = AUDIT_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a valid per-CPU slot only this CPU writes.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count(cgroup: u64, nr: u32) {
    let key = AuditCountKey {
        cgroup_id: cgroup,
        nr,
        _pad: 0,
    };
    if let Some(slot) = AUDIT_COUNTS.get_ptr_mut(&key) {
        // SAFETY: this CPU's slot of a per-CPU value; no other context writes it.
        unsafe { *slot += 1 };
        return;
    }
    // BPF_NOEXIST: another CPU may have created the key in between; then count into it.
    if AUDIT_COUNTS.insert(&key, &1, 1).is_ok() {
        return;
    }
    match AUDIT_COUNTS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(slot) => unsafe { *slot += 1 },
        None => stat(AuditStat::CountsFull),
    }
}

/// The actions of the clauses that match `flags`.
#[inline(always)]
fn eval(clauses: &[AuditClause; AUDIT_CLAUSES], flags: u64) -> u32 {
    let mut actions = 0;
    for c in clauses {
        if c.actions != 0 && (c.flags_mask == 0 || flags & c.flags_mask != 0) {
            actions |= c.actions;
        }
    }
    actions
}

#[inline(always)]
fn arg(args: &[u64; 6], index: u8) -> u64 {
    // `& 7` then a bounds check: an index the agent wrote wrong reads 0, never out of bounds.
    let i = (index & 7) as usize;
    if i < 6 { args[i] } else { 0 }
}

fn enter(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: copied out at once.
    let target = *unsafe { AUDIT_TARGETS.get(&cgroup) }?;
    let nr = read_ctx::<i32>(ctx, TP_NR) as u32;
    let key = AuditSyscallKey {
        profile: target.profile,
        nr,
    };
    // SAFETY: the agent replaces plans whole and only deletes plans of profiles no target
    // uses any more; a concurrent update at worst mixes two valid plans for one call.
    let plan = unsafe { AUDIT_SYSCALLS.get(&key) }?;
    // One helper copy: the verifier refuses loads through a ctx pointer LLVM has offset.
    // SAFETY: reads the record's args[6] (past a short record's end lies the rest of the
    // per-CPU trace buffer; the args a syscall does not have are never interpreted).
    let args = unsafe { ctx.read_at::<[u64; 6]>(TP_ARGS) }.ok()?;

    let flags = if plan.flags_arg == ARG_NONE {
        0
    } else if plan.capture & CAP_FLAGS_IN_STRUCT != 0 {
        // SAFETY: a user pointer read with the fault-tolerant helper.
        unsafe { bpf_probe_read_user(arg(&args, plan.flags_arg) as *const u64) }.unwrap_or(0)
    } else {
        arg(&args, plan.flags_arg)
    };
    let mut actions = eval(&plan.clauses, flags);
    let lifecycle = plan.capture & CAP_LIFECYCLE != 0;

    if lifecycle && (nr == SYS_EXIT_GROUP || nr == SYS_EXIT) {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = AUDIT_EXITS.insert(&tgid, &(args[0] as i32), 0);
    }

    let ev_ptr = AUDIT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record; a tracepoint program runs to completion on its CPU.
    let ev = unsafe { &mut *ev_ptr };
    ev.flags = 0;
    let needs_path = plan.path_rules != 0 || actions & (ACT_RECORD | ACT_KILL) != 0 || lifecycle;
    if plan.path_arg != ARG_NONE && needs_path {
        read_path(ev, arg(&args, plan.path_arg));
        if plan.path_rules != 0 {
            actions |= path_actions(target.profile, nr, ev, flags);
        }
    }

    if actions & ACT_COUNT != 0 && target.flags & TARGET_COUNT_ALL == 0 {
        count(cgroup, nr);
    }
    let is_exec = nr == SYS_EXECVE || nr == SYS_EXECVEAT;
    if actions & (ACT_RECORD | ACT_KILL) == 0 && !(lifecycle && is_exec) {
        return Some(());
    }

    let pid_tgid = bpf_get_current_pid_tgid();
    fill_header(ev, EVENT_SYSCALL, cgroup, pid_tgid);
    ev.nr = nr;
    ev.actions = actions & (ACT_RECORD | ACT_KILL);
    ev.args = args;
    ev.ret = 0;
    ev.code = 0;
    ev.addr_len = 0;
    ev.argv_len = 0;
    ev.argc = 0;
    ev.exit_addr_arg = ARG_NONE;
    if plan.argv_arg != ARG_NONE {
        read_argv(ev, arg(&args, plan.argv_arg));
    }
    if plan.addr_arg != ARG_NONE {
        if plan.capture & CAP_ADDR_AT_EXIT != 0 {
            ev.exit_addr_arg = plan.addr_arg;
        } else {
            // connect/bind(fd, addr, addrlen): the length follows the pointer.
            let len = arg(&args, plan.addr_arg.wrapping_add(1)) as usize;
            read_addr(ev, arg(&args, plan.addr_arg), len);
        }
    }

    if actions & ACT_KILL != 0 {
        // SIGKILL is queued now and acted on before the caller runs another instruction of its
        // own; the syscall itself may still run (see the README on what a kill at entry does
        // not prevent).
        // SAFETY: no preconditions; signals the current task.
        unsafe { bpf_send_signal(SIGKILL) };
        stat(AuditStat::Kills);
        emit(ev);
        return Some(());
    }
    if plan.capture & CAP_NO_RETURN != 0 {
        if actions & ACT_RECORD != 0 {
            emit(ev);
        }
        return Some(());
    }
    if AUDIT_INFLIGHT.insert(&pid_tgid, &*ev, 0).is_err() && actions & ACT_RECORD != 0 {
        ev.flags |= EV_NO_RET;
        stat(AuditStat::InflightFull);
        emit(ev);
    }
    Some(())
}

fn exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let ev_ptr = AUDIT_INFLIGHT.get_ptr_mut(&pid_tgid)?;
    // SAFETY: the entry of this thread, which is here, in its syscall's exit: nothing else
    // writes it (only this thread inserts or removes its key, or `sys_proc_exit` once it died).
    let ev = unsafe { &mut *ev_ptr };
    let nr = read_ctx::<i32>(ctx, TP_NR) as u32;
    if ev.actions & ACT_RECORD != 0 && ev.nr == nr {
        ev.ret = read_ctx::<i64>(ctx, TP_RET);
        ev.flags |= EV_HAS_RET;
        if ev.exit_addr_arg != ARG_NONE && ev.ret >= 0 {
            let addr = arg(&ev.args, ev.exit_addr_arg);
            let len_ptr = arg(&ev.args, ev.exit_addr_arg.wrapping_add(1));
            // SAFETY: user pointers read with the fault-tolerant helper.
            let len = unsafe { bpf_probe_read_user(len_ptr as *const u32) }.unwrap_or(0);
            if len > 0 {
                read_addr(ev, addr, (len as usize).min(AUDIT_ADDR_LEN));
            }
        }
        emit(ev);
    }
    let _ = AUDIT_INFLIGHT.remove(&pid_tgid);
    Some(())
}

fn proc_exec(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a flag copied out at once.
    let target = unsafe { AUDIT_TARGETS.get(&cgroup) }?;
    if target.flags & TARGET_LIFECYCLE == 0 {
        return None;
    }
    let ev_ptr = AUDIT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record.
    let ev = unsafe { &mut *ev_ptr };
    let pid_tgid = bpf_get_current_pid_tgid();
    fill_header(ev, EVENT_EXEC, cgroup, pid_tgid);
    let old_pid = read_ctx::<i32>(ctx, EXEC_OLD_PID);
    ev.flags = 0;
    ev.nr = 0;
    ev.actions = 0;
    ev.args = [old_pid as u64, 0, 0, 0, 0, 0];
    ev.ret = 0;
    ev.code = 0;
    ev.addr_len = 0;
    ev.exit_addr_arg = ARG_NONE;
    let loc = read_ctx::<u32>(ctx, EXEC_FILENAME);
    // SAFETY: `__data_loc` gives the string's offset in this record; the helper tolerates a
    // bad one.
    let name = unsafe {
        bpf_probe_read_kernel_str_bytes(
            ctx.as_ptr().cast::<u8>().add((loc & 0xffff) as usize),
            &mut ev.path,
        )
    };
    match name {
        Ok(s) => {
            ev.flags |= EV_PATH;
            if s.len() >= AUDIT_PATH_LEN - 1 {
                ev.flags |= EV_PATH_TRUNCATED;
            }
        }
        Err(_) => ev.flags |= EV_READ_FAULT,
    }
    // argv comes from the execve that is completing (a thread that execs takes the leader's
    // pid, so look under its old id too).
    let old_key = (pid_tgid & 0xffff_ffff_0000_0000) | u64::from(old_pid as u32);
    // SAFETY: the entry of this thread, which is inside its execve.
    let pending = unsafe { AUDIT_INFLIGHT.get(&pid_tgid) }
        .or_else(|| unsafe { AUDIT_INFLIGHT.get(&old_key) });
    match pending {
        Some(p) if p.flags & EV_ARGV != 0 => {
            ev.argv = p.argv;
            ev.argv_len = p.argv_len;
            ev.argc = p.argc;
            ev.flags |= p.flags & (EV_ARGV | EV_ARGV_TRUNCATED);
        }
        _ => {
            ev.argv_len = 0;
            ev.argc = 0;
        }
    }
    emit(ev);
    Some(())
}

fn proc_fork(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a flag copied out at once.
    let target = unsafe { AUDIT_TARGETS.get(&cgroup) }?;
    if target.flags & TARGET_LIFECYCLE == 0 {
        return None;
    }
    let ev_ptr = AUDIT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record.
    let ev = unsafe { &mut *ev_ptr };
    fill_header(ev, EVENT_FORK, cgroup, bpf_get_current_pid_tgid());
    ev.flags = 0;
    ev.nr = 0;
    ev.actions = 0;
    ev.args = [read_ctx::<i32>(ctx, FORK_CHILD_PID) as u64, 0, 0, 0, 0, 0];
    emit(ev);
    Some(())
}

fn proc_exit(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: a flag copied out at once.
    let target = unsafe { AUDIT_TARGETS.get(&cgroup) }?;
    if target.flags & TARGET_LIFECYCLE == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // A thread that dies inside a syscall (killed) never reaches its sys_exit.
    let _ = AUDIT_INFLIGHT.remove(&pid_tgid);
    if read_ctx::<u8>(ctx, EXIT_GROUP_DEAD) == 0 {
        return Some(());
    }
    let ev_ptr = AUDIT_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record.
    let ev = unsafe { &mut *ev_ptr };
    fill_header(ev, EVENT_EXIT, cgroup, pid_tgid);
    ev.flags = 0;
    ev.nr = 0;
    ev.actions = 0;
    ev.args = [0; 6];
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: copied out at once.
    if let Some(code) = unsafe { AUDIT_EXITS.get(&tgid) } {
        ev.code = *code;
        ev.flags |= EV_EXIT_CODE;
        let _ = AUDIT_EXITS.remove(&tgid);
    } else {
        ev.code = 0;
    }
    emit(ev);
    Some(())
}

#[inline(always)]
fn fill_header(ev: &mut AuditEvent, kind: u16, cgroup: u64, pid_tgid: u64) {
    ev.header.kind = kind;
    ev.header.version = EVENT_ABI_VERSION;
    // SAFETY: no preconditions.
    ev.header.cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: no preconditions.
    ev.header.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.header.suppressed = 0;
    ev.cgroup_id = cgroup;
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Puts `ev` on the ring, as short as its content allows: the fixed part, then the path, then
/// argv only when captured (a record with a path and no argv is 424 of the 1,192 bytes, so
/// the ring holds 2.8 times as many). A full ring is counted in `AUDIT_LOST` (the agent
/// turns it into a gap record).
#[inline(always)]
fn emit(ev: &AuditEvent) {
    let res = if ev.flags & EV_ARGV != 0 {
        AUDIT_EVENTS.output::<AuditEvent>(ev, 0)
    } else if ev.flags & EV_PATH != 0 {
        // SAFETY: the first AUDIT_EVENT_WITH_PATH bytes of a live record.
        let head = unsafe {
            &*(core::ptr::from_ref(ev)
                .cast::<u8>()
                .cast::<[u8; AUDIT_EVENT_WITH_PATH]>())
        };
        AUDIT_EVENTS.output::<[u8; AUDIT_EVENT_WITH_PATH]>(head, 0)
    } else {
        // SAFETY: the first AUDIT_EVENT_FIXED bytes of a live record.
        let fixed = unsafe {
            &*(core::ptr::from_ref(ev)
                .cast::<u8>()
                .cast::<[u8; AUDIT_EVENT_FIXED]>())
        };
        AUDIT_EVENTS.output::<[u8; AUDIT_EVENT_FIXED]>(fixed, 0)
    };
    match res {
        Ok(()) => {
            if ev.header.kind == EVENT_SYSCALL {
                stat(AuditStat::Events);
            }
        }
        Err(_) => {
            if let Some(lost) = AUDIT_LOST.get_ptr_mut(0) {
                // SAFETY: a valid per-CPU slot only this CPU writes.
                unsafe { *lost += 1 };
            }
        }
    }
}

/// Captures the NUL-terminated path at user address `ptr` into `ev.path`.
#[inline(always)]
fn read_path(ev: &mut AuditEvent, ptr: u64) {
    // SAFETY: the helper tolerates any user address.
    let len = unsafe {
        generated::bpf_probe_read_user_str(
            ev.path.as_mut_ptr().cast(),
            AUDIT_PATH_LEN as u32,
            ptr as *const _,
        )
    };
    if len <= 0 {
        ev.path[0] = 0;
        ev.flags |= EV_READ_FAULT;
        return;
    }
    ev.flags |= EV_PATH;
    if len as usize >= AUDIT_PATH_LEN {
        // Full buffer: the string had at least AUDIT_PATH_LEN - 1 bytes. It was cut unless
        // its terminator is exactly the last byte copied.
        // SAFETY: a user address read with the fault-tolerant helper.
        let next = unsafe { bpf_probe_read_user((ptr + AUDIT_PATH_LEN as u64 - 1) as *const u8) };
        if next.unwrap_or(1) != 0 {
            ev.flags |= EV_PATH_TRUNCATED;
        }
    }
}

/// The clauses of the longest path prefix in `AUDIT_PATHS` that the captured path starts with.
#[inline(always)]
fn path_actions(profile: u32, nr: u32, ev: &AuditEvent, flags: u64) -> u32 {
    if ev.flags & EV_PATH == 0 {
        return 0;
    }
    let mut data = AuditPathKey {
        profile,
        nr,
        path: [0; AUDIT_PATH_MATCH_LEN],
    };
    // Bytes after the path's NUL may be left from an earlier capture; no stored prefix holds a
    // NUL, so a match never extends past it.
    let mut head = [0u8; AUDIT_PATH_MATCH_LEN];
    head.copy_from_slice(&ev.path[..AUDIT_PATH_MATCH_LEN]);
    data.path = head;
    let key = Key::new(PATH_FIXED_BITS + 8 * AUDIT_PATH_MATCH_LEN as u32, data);
    match AUDIT_PATHS.get(&key) {
        Some(v) => eval(&v.clauses, flags),
        None => 0,
    }
}

/// Captures argv (an array of string pointers at user address `argv`) into `ev.argv` as
/// NUL-separated strings.
#[inline(always)]
fn read_argv(ev: &mut AuditEvent, argv: u64) {
    let mut off: usize = 0;
    let mut argc: u16 = 0;
    let base = ev.argv.as_mut_ptr();
    for i in 0..AUDIT_ARGV_MAX {
        // SAFETY: a user address read with the fault-tolerant helper.
        let Ok(p) = (unsafe { bpf_probe_read_user((argv + u64::from(i) * 8) as *const u64) })
        else {
            ev.flags |= EV_READ_FAULT;
            break;
        };
        if p == 0 {
            break;
        }
        if off >= AUDIT_ARGV_LEN {
            ev.flags |= EV_ARGV_TRUNCATED;
            break;
        }
        // `off < AUDIT_ARGV_LEN` and each read is at most AUDIT_ARGV_SLACK bytes, so the write
        // stays inside the buffer; the mask makes that evident to the verifier.
        let at = off & (AUDIT_ARGV_LEN - 1);
        // SAFETY: `base + at .. + AUDIT_ARGV_SLACK` lies inside `ev.argv`; the helper tolerates
        // any user address.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                base.add(at).cast(),
                AUDIT_ARGV_SLACK as u32,
                p as *const _,
            )
        };
        if n <= 0 {
            ev.flags |= EV_READ_FAULT;
            break;
        }
        if n as usize >= AUDIT_ARGV_SLACK {
            ev.flags |= EV_ARGV_TRUNCATED;
        }
        off = at + n as usize;
        argc += 1;
        if i == AUDIT_ARGV_MAX - 1 {
            // More arguments may follow.
            // SAFETY: as above.
            let more = unsafe { bpf_probe_read_user((argv + u64::from(i + 1) * 8) as *const u64) };
            if more.unwrap_or(0) != 0 {
                ev.flags |= EV_ARGV_TRUNCATED;
            }
        }
    }
    if off > AUDIT_ARGV_LEN {
        // The last string ran into the slack: report only what fits the budget.
        off = AUDIT_ARGV_LEN;
        ev.flags |= EV_ARGV_TRUNCATED;
    }
    ev.argv_len = off as u16;
    ev.argc = argc;
    ev.flags |= EV_ARGV;
}

/// Captures up to `len` bytes of a `struct sockaddr` at user address `ptr`.
#[inline(always)]
fn read_addr(ev: &mut AuditEvent, ptr: u64, len: usize) {
    let len = len.min(AUDIT_ADDR_LEN);
    // SAFETY: the helper tolerates any user address.
    let ok = unsafe { bpf_probe_read_user_buf(ptr as *const u8, &mut ev.addr[..len]) }.is_ok();
    if ok {
        ev.addr_len = len as u16;
        ev.flags |= EV_ADDR;
    }
}
