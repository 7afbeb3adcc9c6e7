//! Validation and translation checks, and filters loaded for real into forked children.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::borrow::Cow;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;

use libseccomp::{ScmpAction, ScmpArch, ScmpVersion};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe2};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};

use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers

pub(super) fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(action)
        .build()
        .unwrap()
}

fn errno_rule(names: &[&str], errno: i32) -> LinuxSyscall {
    let mut rule = rule(names, LinuxSeccompAction::ScmpActErrno);
    rule.set_errno_ret(Some(errno as u32));
    rule
}

fn with_args(mut rule: LinuxSyscall, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
    rule.set_args(Some(args));
    rule
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value)
        .build()
        .unwrap()
}

fn masked(index: usize, mask: u64, datum: u64) -> LinuxSeccompArg {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .value(mask)
        .value_two(datum)
        .build()
        .unwrap()
}

fn profile(default: LinuxSeccompAction, rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(default)
        .syscalls(rules)
        .build()
        .unwrap()
}

fn allow_all_but(rules: Vec<LinuxSyscall>) -> LinuxSeccomp {
    profile(LinuxSeccompAction::ScmpActAllow, rules)
}

fn err(seccomp: &LinuxSeccomp) -> SeccompError {
    match validate(seccomp) {
        Ok(()) => panic!("validate accepted {seccomp:#?}"),
        Err(e) => e,
    }
}

/// How a forked child ended, and what it wrote to the report pipe.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32, String),
    Signaled(Signal),
}

/// Runs `check` in a forked child and reports how the child ended.
///
/// `check` returns a failure message; after a restrictive filter is loaded it must not
/// allocate, so messages are `&'static str` there (`Cow::Borrowed`). The report pipe is
/// close-on-exec, so a child that execs successfully reports the new program's exit status.
fn in_child(check: impl FnOnce() -> Result<(), Cow<'static, str>>) -> Outcome {
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).unwrap();
    // SAFETY: the child runs only `check` (syscalls, and allocation before any filter that
    // forbids it; glibc keeps malloc usable in the child of a multi-threaded fork) and ends with
    // `_exit`, never returning into the test harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(read_end);
            let code = match check() {
                Ok(()) => 0,
                Err(message) => {
                    let _ = nix::unistd::write(&write_end, message.as_bytes());
                    1
                }
            };
            // SAFETY: `_exit` ends the child without running the parent's destructors or
            // atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            let mut report = String::new();
            File::from(read_end).read_to_string(&mut report).unwrap();
            match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => Outcome::Exited(code, report),
                WaitStatus::Signaled(_, signal, _) => Outcome::Signaled(signal),
                other => panic!("unexpected child status {other:?}"),
            }
        }
    }
}

fn set_no_new_privs() -> Result<(), Cow<'static, str>> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err("prctl(PR_SET_NO_NEW_PRIVS) failed".into());
    }
    Ok(())
}

fn load_in_child(seccomp: &LinuxSeccomp) -> Result<(), Cow<'static, str>> {
    set_no_new_privs()?;
    load(seccomp).map_err(|e| Cow::Owned(format!("load failed: {e}: {e:?}")))
}

/// A raw syscall's result: `Ok(return value)` or `Err(errno)`.
fn raw(result: libc::c_long) -> Result<libc::c_long, i32> {
    if result == -1 {
        Err(nix::errno::Errno::last_raw())
    } else {
        Ok(result)
    }
}

fn expect_ok(
    result: Result<libc::c_long, i32>,
    what: &'static str,
) -> Result<(), Cow<'static, str>> {
    result.map(drop).map_err(|_| Cow::Borrowed(what))
}

fn expect_errno(
    result: Result<libc::c_long, i32>,
    errno: i32,
    what: &'static str,
) -> Result<(), Cow<'static, str>> {
    match result {
        Err(e) if e == errno => Ok(()),
        _ => Err(Cow::Borrowed(what)),
    }
}

fn personality(persona: u64) -> Result<libc::c_long, i32> {
    // SAFETY: personality takes an integer; 0xffffffff only queries.
    raw(unsafe { libc::syscall(libc::SYS_personality, persona) })
}

fn getpriority(which: u64, who: u64) -> Result<libc::c_long, i32> {
    // SAFETY: getpriority takes two integers and changes nothing.
    raw(unsafe { libc::syscall(libc::SYS_getpriority, which, who) })
}

fn getpid() -> Result<libc::c_long, i32> {
    // SAFETY: getpid takes no arguments.
    raw(unsafe { libc::syscall(libc::SYS_getpid) })
}

// ---------------------------------------------------------------------------------------------
// Validation

#[test]
fn unknown_syscall_name_is_an_error_naming_rule_and_name() {
    let seccomp = allow_all_but(vec![errno_rule(
        &["getpid", "no_such_syscall"],
        libc::EPERM,
    )]);
    let e = err(&seccomp);
    assert!(
        matches!(&e, SeccompError::UnknownSyscall { field, name, .. }
            if field == "syscalls[0].names[1]" && name == "no_such_syscall"),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("syscalls[0].names[1]") && message.contains("\"no_such_syscall\""),
        "{message}"
    );
}

#[test]
fn names_of_other_architectures_are_skipped_not_rejected() {
    // chown32 exists on 32-bit x86 and arm, not on x86_64 or aarch64. Shared profiles
    // (Podman's, containerd's) list such names; runc and crun skip them, and so do we.
    let only_native = allow_all_but(vec![errno_rule(&["chown32"], libc::EPERM)]);
    validate(&only_native).unwrap();
    build_filter(&only_native).unwrap();
    let arm_only = allow_all_but(vec![errno_rule(&["arm_fadvise64_64"], libc::EPERM)]);
    validate(&arm_only).unwrap();
    let mut with_x86 = only_native.clone();
    with_x86.set_architectures(Some(vec![Arch::ScmpArchX86]));
    validate(&with_x86).unwrap();
    build_filter(&with_x86).unwrap();
}

#[test]
fn notify_is_rejected_as_unsupported_naming_the_field() {
    let seccomp = allow_all_but(vec![rule(&["getpid"], LinuxSeccompAction::ScmpActNotify)]);
    let e = err(&seccomp);
    assert!(
        matches!(&e, SeccompError::Unsupported { field, .. } if field == "syscalls[0].action"),
        "{e:?}"
    );
    assert!(e.to_string().contains("SCMP_ACT_NOTIFY"), "{e}");

    let default_notify = profile(LinuxSeccompAction::ScmpActNotify, vec![]);
    let e = err(&default_notify);
    assert!(
        matches!(&e, SeccompError::Unsupported { field, .. } if field == "defaultAction"),
        "{e:?}"
    );

    let mut listener = allow_all_but(vec![]);
    listener.set_listener_path(Some("/run/agent.sock".into()));
    let e = err(&listener);
    assert!(
        matches!(&e, SeccompError::Unsupported { field, .. } if field == "listenerPath"),
        "{e:?}"
    );
    // build_filter validates too.
    assert!(build_filter(&seccomp).is_err());
}

#[test]
fn errno_ret_only_on_errno_and_trace_and_in_range() {
    let mut allow_with_errno = rule(&["getpid"], LinuxSeccompAction::ScmpActAllow);
    allow_with_errno.set_errno_ret(Some(1));
    let e = err(&profile(
        LinuxSeccompAction::ScmpActErrno,
        vec![allow_with_errno],
    ));
    assert!(
        matches!(&e, SeccompError::ErrnoNotAllowed { field, action }
            if field == "syscalls[0].errnoRet" && action == "SCMP_ACT_ALLOW"),
        "{e:?}"
    );

    let mut kill_default = profile(LinuxSeccompAction::ScmpActKillProcess, vec![]);
    kill_default.set_default_errno_ret(Some(1));
    let e = err(&kill_default);
    assert!(
        matches!(&e, SeccompError::ErrnoNotAllowed { field, .. } if field == "defaultErrnoRet"),
        "{e:?}"
    );

    let e = err(&allow_all_but(vec![errno_rule(&["getpid"], 4096)]));
    assert!(
        matches!(
            &e,
            SeccompError::ErrnoOutOfRange {
                value: 4096,
                max: 4095,
                ..
            }
        ),
        "{e:?}"
    );
    let mut trace = rule(&["getpid"], LinuxSeccompAction::ScmpActTrace);
    trace.set_errno_ret(Some(0x1_0000));
    assert!(matches!(
        err(&allow_all_but(vec![trace.clone()])),
        SeccompError::ErrnoOutOfRange { max: 0xffff, .. }
    ));
    trace.set_errno_ret(Some(0xffff));
    validate(&allow_all_but(vec![trace])).unwrap();
    validate(&allow_all_but(vec![errno_rule(&["getpid"], 4095)])).unwrap();
}

#[test]
fn argument_index_count_and_duplicates_are_checked() {
    use LinuxSeccompOperator::ScmpCmpEq as Eq;
    let getpid = || rule(&["getpid"], LinuxSeccompAction::ScmpActErrno);

    let e = err(&allow_all_but(vec![with_args(
        getpid(),
        vec![arg(6, Eq, 0)],
    )]));
    assert!(
        matches!(&e, SeccompError::ArgIndex { field, index: 6 }
            if field == "syscalls[0].args[0].index"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("syscalls[0].args[0].index is 6"),
        "{e}"
    );

    let seven = (0..7).map(|i| arg(i % 6, Eq, 0)).collect();
    assert!(matches!(
        err(&allow_all_but(vec![with_args(getpid(), seven)])),
        SeccompError::TooManyArgs { count: 7, .. }
    ));

    let twice = vec![arg(1, Eq, 0), arg(1, Eq, 2)];
    let e = err(&allow_all_but(vec![with_args(getpid(), twice)]));
    assert!(
        matches!(&e, SeccompError::DuplicateArgIndex { field, index: 1 }
            if field == "syscalls[0].args[1]"),
        "{e:?}"
    );

    let six = (0..6).map(|i| arg(i, Eq, 0)).collect();
    validate(&allow_all_but(vec![with_args(getpid(), six)])).unwrap();
}

#[test]
fn masked_eq_datum_must_fit_the_mask_and_value_two_needs_masked_eq() {
    let getpid = || rule(&["getpid"], LinuxSeccompAction::ScmpActErrno);

    let e = err(&allow_all_but(vec![with_args(
        getpid(),
        vec![masked(0, 0xff00, 0x0012)],
    )]));
    assert!(
        matches!(&e, SeccompError::MaskedEqNeverMatches { field, mask: 0xff00, datum: 0x12 }
            if field == "syscalls[0].args[0]"),
        "{e:?}"
    );

    let eq_with_two = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .op(LinuxSeccompOperator::ScmpCmpEq)
        .value(1u64)
        .value_two(5u64)
        .build()
        .unwrap();
    let e = err(&allow_all_but(vec![with_args(getpid(), vec![eq_with_two])]));
    assert!(
        matches!(&e, SeccompError::ValueTwoIgnored { op, .. } if op == "SCMP_CMP_EQ"),
        "{e:?}"
    );

    // A MASKED_EQ without valueTwo compares with 0, as runc does: Docker's clone rule comes
    // that way, because the runtime-spec Go type omits a zero valueTwo.
    let no_two = arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, 0x7e02_0000);
    validate(&allow_all_but(vec![with_args(getpid(), vec![no_two])])).unwrap();
}

#[test]
fn architectures_must_be_known_to_libseccomp() {
    let mut seccomp = allow_all_but(vec![]);
    seccomp.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchLoongarch64]));
    // LoongArch arrived in libseccomp 2.6.0.
    let has_loongarch = libseccomp::check_version(ScmpVersion::from((2, 6, 0))).unwrap();
    match validate(&seccomp) {
        Ok(()) => assert!(has_loongarch, "libseccomp < 2.6 cannot know loongarch64"),
        Err(e) => {
            assert!(!has_loongarch, "{e}");
            assert!(
                matches!(&e, SeccompError::UnknownArch { field, arch, .. }
                    if field == "architectures[1]" && arch == "SCMP_ARCH_LOONGARCH64"),
                "{e:?}"
            );
        }
    }
}

#[test]
fn flags_are_checked_against_libseccomp() {
    let mut seccomp = allow_all_but(vec![]);
    seccomp.set_flags(Some(vec![
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
        LinuxSeccompFilterFlag::SeccompFilterFlagLog,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
    ]));
    let ctx = build_filter(&seccomp).unwrap();
    assert!(ctx.get_ctl_tsync().unwrap());
    assert!(ctx.get_ctl_log().unwrap());
    assert!(ctx.get_ctl_ssb().unwrap());

    let mut wait_killable = seccomp.clone();
    wait_killable.set_flags(Some(vec![
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
    ]));
    if libseccomp::check_api(7, ScmpVersion::from((2, 6, 0))).unwrap() {
        assert!(
            build_filter(&wait_killable)
                .unwrap()
                .get_ctl_waitkill()
                .unwrap()
        );
    } else {
        let e = err(&wait_killable);
        assert!(
            matches!(&e, SeccompError::Unsupported { field, what, .. }
                if field == "flags[1]" && what == "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"),
            "{e:?}"
        );
    }
}

#[test]
fn empty_names_are_rejected() {
    let e = err(&allow_all_but(vec![rule(
        &[],
        LinuxSeccompAction::ScmpActErrno,
    )]));
    assert!(
        matches!(&e, SeccompError::EmptyNames { field } if field == "syscalls[0].names"),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Translation

#[test]
fn filter_has_the_default_action_arches_and_no_automatic_no_new_privs() {
    let mut seccomp = profile(
        LinuxSeccompAction::ScmpActErrno,
        vec![rule(&["getpid"], LinuxSeccompAction::ScmpActAllow)],
    );
    seccomp.set_default_errno_ret(Some(libc::ENOSYS as u32));
    seccomp.set_architectures(Some(vec![
        Arch::ScmpArchNative,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    let ctx = build_filter(&seccomp).unwrap();
    assert_eq!(
        ctx.get_act_default().unwrap(),
        ScmpAction::Errno(libc::ENOSYS)
    );
    assert!(ctx.is_arch_present(ScmpArch::X86).unwrap());
    assert!(ctx.is_arch_present(ScmpArch::X32).unwrap());
    assert!(!ctx.is_arch_present(ScmpArch::Arm).unwrap());
    assert!(
        !ctx.get_ctl_nnp().unwrap(),
        "no_new_privs is the caller's decision"
    );

    // ERRNO without errnoRet means EPERM.
    let plain = profile(LinuxSeccompAction::ScmpActErrno, vec![]);
    let ctx = build_filter(&plain).unwrap();
    assert_eq!(
        ctx.get_act_default().unwrap(),
        ScmpAction::Errno(libc::EPERM)
    );
}

#[test]
fn rule_with_the_default_action_is_skipped_not_refused() {
    // libseccomp refuses a rule whose action is the filter's default action.
    let seccomp = profile(
        LinuxSeccompAction::ScmpActErrno,
        vec![
            errno_rule(&["getpid"], libc::EPERM),
            rule(&["getppid"], LinuxSeccompAction::ScmpActErrno),
            rule(&["gettid"], LinuxSeccompAction::ScmpActAllow),
        ],
    );
    build_filter(&seccomp).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Behaviour: filters loaded into forked children

#[test]
fn errno_rule_fails_mkdir_with_its_errno_while_getpid_works() {
    let dir = tempfile::tempdir().unwrap();
    let target = CString::new(
        dir.path()
            .join("denied")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let seccomp = allow_all_but(vec![errno_rule(&["mkdir", "mkdirat"], libc::EACCES)]);

    let outcome = in_child(|| {
        load_in_child(&seccomp)?;
        // SAFETY: a valid NUL-terminated path.
        let mkdir = raw(unsafe { libc::mkdir(target.as_ptr(), 0o755) }.into());
        expect_errno(mkdir, libc::EACCES, "mkdir did not fail with EACCES")?;
        // SAFETY: same path, through mkdirat.
        let mkdirat = raw(unsafe { libc::mkdirat(libc::AT_FDCWD, target.as_ptr(), 0o755) }.into());
        expect_errno(mkdirat, libc::EACCES, "mkdirat did not fail with EACCES")?;
        expect_ok(getpid(), "getpid failed")
    });
    assert_eq!(outcome, Outcome::Exited(0, String::new()));
    assert!(!dir.path().join("denied").exists());
}

#[test]
fn argument_filter_allows_exactly_the_listed_value() {
    // Everything is denied except what the child needs to report and exit, and personality
    // with the query value only.
    let mut personality_rule = rule(&["personality"], LinuxSeccompAction::ScmpActAllow);
    personality_rule.set_args(Some(vec![arg(
        0,
        LinuxSeccompOperator::ScmpCmpEq,
        0xffff_ffff,
    )]));
    let seccomp = profile(
        LinuxSeccompAction::ScmpActErrno,
        vec![
            rule(
                &["write", "exit", "exit_group"],
                LinuxSeccompAction::ScmpActAllow,
            ),
            personality_rule,
        ],
    );

    let outcome = in_child(|| {
        load_in_child(&seccomp)?;
        expect_ok(
            personality(0xffff_ffff),
            "personality(0xffffffff) was denied",
        )?;
        expect_errno(personality(0), libc::EPERM, "personality(0) was allowed")?;
        expect_errno(personality(8), libc::EPERM, "personality(8) was allowed")?;
        expect_errno(getpid(), libc::EPERM, "getpid escaped the default action")
    });
    assert_eq!(outcome, Outcome::Exited(0, String::new()));
}

#[test]
fn comparisons_of_one_rule_are_anded_and_masked_eq_masks_with_value() {
    use LinuxSeccompOperator::ScmpCmpEq as Eq;
    const PRIO_PROCESS: u64 = 0;
    const PRIO_PGRP: u64 = 1;
    const PID: u64 = 0x7f_1234; // no such process: getpriority itself fails with ESRCH
    let seccomp = allow_all_but(vec![
        // EXDEV only when which == PRIO_PROCESS AND who == PID.
        with_args(
            errno_rule(&["getpriority"], libc::EXDEV),
            vec![arg(0, Eq, PRIO_PROCESS), arg(1, Eq, PID)],
        ),
        // ENOTTY when (who & 0xff00) == 0x5600, with which == PRIO_PGRP.
        with_args(
            errno_rule(&["getpriority"], libc::ENOTTY),
            vec![arg(0, Eq, PRIO_PGRP), masked(1, 0xff00, 0x5600)],
        ),
    ]);

    let outcome = in_child(|| {
        load_in_child(&seccomp)?;
        expect_errno(
            getpriority(PRIO_PROCESS, PID),
            libc::EXDEV,
            "both comparisons held but the rule did not match",
        )?;
        expect_errno(
            getpriority(PRIO_PGRP, PID),
            libc::ESRCH,
            "arg0 differed but the rule matched (comparisons were ORed?)",
        )?;
        expect_ok(
            getpriority(PRIO_PROCESS, 0),
            "arg1 differed but the rule matched (comparisons were ORed?)",
        )?;
        expect_errno(
            getpriority(PRIO_PGRP, 0x7f_56ab),
            libc::ENOTTY,
            "masked argument equal to valueTwo did not match",
        )?;
        // 0x7e00 holds every bit of 0x5600 plus others inside the mask: equal to the datum
        // only if mask and datum were swapped.
        expect_errno(
            getpriority(PRIO_PGRP, 0x7f_7e00),
            libc::ESRCH,
            "masked argument different from valueTwo matched (mask and datum swapped?)",
        )
    });
    assert_eq!(outcome, Outcome::Exited(0, String::new()));
}

#[test]
fn kill_actions_kill_the_child_with_sigsys() {
    for action in [
        LinuxSeccompAction::ScmpActKillProcess,
        LinuxSeccompAction::ScmpActKill,
    ] {
        let seccomp = allow_all_but(vec![rule(&["getppid"], action)]);
        let outcome = in_child(|| {
            // Not dumpable: the SIGSYS leaves no core file behind.
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
            load_in_child(&seccomp)?;
            // SAFETY: getppid takes no arguments.
            unsafe { libc::syscall(libc::SYS_getppid) };
            Err("getppid returned".into())
        });
        assert_eq!(outcome, Outcome::Signaled(Signal::SIGSYS), "{action}");
    }
}

#[test]
fn load_without_no_new_privs_or_cap_sys_admin_fails_with_a_hint() {
    /// `struct __user_cap_header_struct` and `__user_cap_data_struct` of capset(2).
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

    let seccomp = allow_all_but(vec![errno_rule(&["getppid"], libc::EPERM)]);
    let outcome = in_child(|| {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        // SAFETY: header and data have capset's layout and live across the call.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
            return Err("capset failed".into());
        }
        match load(&seccomp) {
            Ok(()) => Err("the filter loaded without no_new_privs or CAP_SYS_ADMIN".into()),
            Err(e) => {
                let message = e.to_string();
                if !matches!(e, SeccompError::Load { .. }) || !message.contains("no_new_privs") {
                    return Err(format!("unexpected error: {message}").into());
                }
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 0 {
                    return Err("load set no_new_privs by itself".into());
                }
                Ok(())
            }
        }
    });
    assert_eq!(outcome, Outcome::Exited(0, String::new()));
}

/// Docker's default capabilities, which do not include CAP_SYS_ADMIN.
const DOCKER_CAPS: &[&str] = &crate::process::DEFAULT_CAPABILITIES;

#[test]
fn default_profile_blocks_namespaces_and_mounts_but_runs_ordinary_programs() {
    let seccomp = default_profile(DOCKER_CAPS);
    let true_path = CString::new("/bin/true").unwrap();
    let file = CString::new("/proc/self/stat").unwrap();

    let outcome = in_child(|| {
        load_in_child(&seccomp)?;

        // SAFETY: raw syscalls with integer arguments, or pointers to the CStrings above.
        unsafe {
            let unshare = raw(libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER));
            expect_errno(
                unshare,
                libc::EPERM,
                "unshare(CLONE_NEWUSER) was not blocked",
            )?;
            // A NULL target: were the call not blocked, the kernel would fail with EFAULT
            // before mounting anything.
            let mount = raw(libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0));
            expect_errno(mount, libc::EPERM, "mount was not blocked")?;
            let clone3 = raw(libc::syscall(libc::SYS_clone3, 0, 0));
            expect_errno(clone3, libc::ENOSYS, "clone3 did not fail with ENOSYS")?;
            let vsock = raw(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0).into());
            expect_errno(vsock, libc::EPERM, "socket(AF_VSOCK) was not blocked")?;
            let unix = raw(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0).into());
            expect_ok(unix, "socket(AF_UNIX) failed")?;
            expect_ok(personality(0xffff_ffff), "personality query failed")?;
            expect_errno(
                personality(0x0040_0000),
                libc::EPERM,
                "personality(ADDR_NO_RANDOMIZE) was allowed",
            )?;

            expect_ok(getpid(), "getpid failed")?;
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let gettime = raw(libc::syscall(
                libc::SYS_clock_gettime,
                libc::CLOCK_MONOTONIC,
                &mut ts,
            ));
            expect_ok(gettime, "clock_gettime failed")?;
            let futex_word = 0u32;
            let futex = raw(libc::syscall(
                libc::SYS_futex,
                &futex_word,
                libc::FUTEX_WAKE,
                1,
            ));
            expect_ok(futex, "futex failed")?;
            let map = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if map == libc::MAP_FAILED {
                return Err("mmap failed".into());
            }
            let fd = libc::open(file.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            expect_ok(raw(fd.into()), "open failed")?;
            let mut buf = [0u8; 64];
            let read = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            expect_ok(raw(read as libc::c_long), "read failed")?;
            let write = libc::write(fd, buf.as_ptr().cast(), 0);
            expect_errno(raw(write as libc::c_long), libc::EBADF, "write was blocked")?;
            libc::close(fd);

            // fork: glibc's clone without namespace flags passes the masked clone rule.
            match fork() {
                Ok(ForkResult::Child) => libc::_exit(7),
                Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, 7)) => {}
                    _ => return Err("forked grandchild did not exit 7".into()),
                },
                Err(_) => return Err("fork (clone without namespace flags) failed".into()),
            }

            let argv = [true_path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            libc::execve(true_path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        }
        Err("execve /bin/true failed".into())
    });
    // The report pipe closed on exec: exit 0 comes from /bin/true under the default profile.
    assert_eq!(outcome, Outcome::Exited(0, String::new()));
}

#[test]
fn default_profile_with_cap_sys_admin_lets_namespace_syscalls_through() {
    let mut caps = DOCKER_CAPS.to_vec();
    caps.push("CAP_SYS_ADMIN");
    let seccomp = default_profile(&caps);

    let outcome = in_child(|| {
        load_in_child(&seccomp)?;
        // SAFETY: an invalid flag (a CSIGNAL bit): the kernel refuses it before doing anything.
        let unshare = raw(unsafe { libc::syscall(libc::SYS_unshare, 0x1) });
        expect_errno(unshare, libc::EINVAL, "unshare did not reach the kernel")?;
        // SAFETY: a NULL target: the kernel fails before mounting anything.
        let mount = raw(unsafe { libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0) });
        if mount == Err(libc::EPERM) {
            return Err("mount was blocked".into());
        }
        // clone3 reaches the kernel, which rejects a NULL, zero-sized argument.
        // SAFETY: NULL args with size 0: the kernel fails with EINVAL before cloning.
        let clone3 = raw(unsafe { libc::syscall(libc::SYS_clone3, 0, 0) });
        expect_errno(clone3, libc::EINVAL, "clone3 did not reach the kernel")
    });
    assert_eq!(outcome, Outcome::Exited(0, String::new()));
}
