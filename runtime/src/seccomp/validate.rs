//! Checking a `linux.seccomp` section before anything is translated.

use libseccomp::ScmpVersion;
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use super::arch::{self, FilterArch};
use super::error::{Result, SeccompError};

/// Largest errno the kernel returns for `SECCOMP_RET_ERRNO` (larger values are clamped to it).
const MAX_ERRNO: u32 = 4095;
/// `SECCOMP_RET_DATA` is 16 bits: the most a `SECCOMP_RET_TRACE` message can carry.
const MAX_TRACE_MSG: u32 = 0xffff;
/// Syscalls take at most six arguments.
const MAX_ARGS: usize = 6;

/// Checks a `linux.seccomp` section against the OCI spec and the linked libseccomp, so that
/// [`build_filter`](super::build_filter) can only fail on libseccomp itself.
///
/// Rejected, with the offending field named:
/// - a syscall name that libseccomp cannot resolve on *any* architecture of the filter (the
///   native one plus `architectures`); a name missing on only *some* of them is accepted and
///   logged at debug level, and its rule applies where the syscall exists (this is how
///   `chown32` sits in an x86_64 + x86 profile);
/// - an architecture the linked libseccomp does not know;
/// - `SCMP_ACT_NOTIFY` and `listenerPath` (berth has no seccomp agent support), and filter flags
///   the linked libseccomp or kernel cannot apply;
/// - `errnoRet`/`defaultErrnoRet` on an action without return data, or out of range;
/// - more than 6 argument comparisons, an index above 5, the same index twice in one rule;
/// - `SCMP_CMP_MASKED_EQ` whose datum (`valueTwo`) has bits outside the mask (`value`): it
///   can never match, and libseccomp would silently AND the datum with the mask, matching
///   something else; and `valueTwo` on any other operator. A missing `valueTwo` means 0, as
///   in runc: the runtime-spec Go type omits a zero `valueTwo`, so Docker's and containerd's
///   `clone` rule arrives without one;
/// - a rule with no names.
pub fn validate(seccomp: &LinuxSeccomp) -> Result<()> {
    check_arches(seccomp)?;
    check_action(
        "defaultAction",
        "defaultErrnoRet",
        seccomp.default_action(),
        seccomp.default_errno_ret(),
    )?;
    check_flags(seccomp)?;
    if let Some(path) = seccomp.listener_path()
        && !path.as_os_str().is_empty()
    {
        return Err(SeccompError::Unsupported {
            field: "listenerPath".to_string(),
            what: format!("seccomp agent listener {}", path.display()),
            reason: "berth does not implement SCMP_ACT_NOTIFY".to_string(),
        });
    }

    let arches = arch::filter_arches(seccomp);
    for (i, rule) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("syscalls[{i}]");
        if rule.names().is_empty() {
            return Err(SeccompError::EmptyNames {
                field: format!("{field}.names"),
            });
        }
        check_action(
            &format!("{field}.action"),
            &format!("{field}.errnoRet"),
            rule.action(),
            rule.errno_ret(),
        )?;
        check_args(&field, rule.args().as_deref().unwrap_or_default())?;
        for (j, name) in rule.names().iter().enumerate() {
            check_name(&format!("{field}.names[{j}]"), name, &arches)?;
        }
    }
    Ok(())
}

fn check_arches(seccomp: &LinuxSeccomp) -> Result<()> {
    for (i, &oci) in seccomp.architectures().iter().flatten().enumerate() {
        let scmp = arch::scmp_arch(oci);
        if scmp != libseccomp::ScmpArch::Native && !arch::supported(scmp) {
            return Err(SeccompError::UnknownArch {
                field: format!("architectures[{i}]"),
                arch: oci.to_string(),
                libseccomp: arch::libseccomp_version(),
            });
        }
    }
    Ok(())
}

fn check_action(
    field: &str,
    errno_field: &str,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
) -> Result<()> {
    let max = match action {
        LinuxSeccompAction::ScmpActErrno => Some(MAX_ERRNO),
        LinuxSeccompAction::ScmpActTrace => Some(MAX_TRACE_MSG),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported {
                field: field.to_string(),
                what: "SCMP_ACT_NOTIFY".to_string(),
                reason: "berth has no seccomp agent to hand the notification fd to".to_string(),
            });
        }
        LinuxSeccompAction::ScmpActKill
        | LinuxSeccompAction::ScmpActKillThread
        | LinuxSeccompAction::ScmpActKillProcess
        | LinuxSeccompAction::ScmpActTrap
        | LinuxSeccompAction::ScmpActLog
        | LinuxSeccompAction::ScmpActAllow => None,
    };
    match (errno_ret, max) {
        (Some(_), None) => Err(SeccompError::ErrnoNotAllowed {
            field: errno_field.to_string(),
            action: action.to_string(),
        }),
        (Some(value), Some(max)) if value > max => Err(SeccompError::ErrnoOutOfRange {
            field: errno_field.to_string(),
            value,
            max,
            action: action.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The libseccomp API level and version each flag's filter attribute needs.
pub(crate) fn flag_requirement(flag: LinuxSeccompFilterFlag) -> (u32, (u32, u32, u32)) {
    match flag {
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => (2, (2, 2, 0)),
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => (3, (2, 4, 0)),
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => (4, (2, 5, 0)),
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => (7, (2, 6, 0)),
    }
}

fn check_flags(seccomp: &LinuxSeccomp) -> Result<()> {
    for (i, &flag) in seccomp.flags().iter().flatten().enumerate() {
        let (level, version) = flag_requirement(flag);
        let (major, minor, micro) = version;
        if !libseccomp::check_api(level, ScmpVersion::from(version)).unwrap_or(false) {
            return Err(SeccompError::Unsupported {
                field: format!("flags[{i}]"),
                what: flag.to_string(),
                reason: format!(
                    "needs libseccomp >= {major}.{minor}.{micro} at API level >= {level} \
                     (linked: libseccomp {}, API level {} on this kernel)",
                    arch::libseccomp_version(),
                    libseccomp::get_api(),
                ),
            });
        }
    }
    Ok(())
}

fn check_args(field: &str, args: &[LinuxSeccompArg]) -> Result<()> {
    if args.len() > MAX_ARGS {
        return Err(SeccompError::TooManyArgs {
            field: format!("{field}.args"),
            count: args.len(),
        });
    }
    let mut seen = [false; MAX_ARGS];
    for (k, arg) in args.iter().enumerate() {
        let field = format!("{field}.args[{k}]");
        let index = arg.index();
        let Some(slot) = seen.get_mut(index) else {
            return Err(SeccompError::ArgIndex {
                field: format!("{field}.index"),
                index,
            });
        };
        if std::mem::replace(slot, true) {
            return Err(SeccompError::DuplicateArgIndex { field, index });
        }
        match arg.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => {
                let (mask, datum) = (arg.value(), arg.value_two().unwrap_or(0));
                if datum & !mask != 0 {
                    return Err(SeccompError::MaskedEqNeverMatches { field, mask, datum });
                }
            }
            op => {
                if let Some(value_two) = arg.value_two()
                    && value_two != 0
                {
                    return Err(SeccompError::ValueTwoIgnored {
                        field,
                        value_two,
                        op: op.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn check_name(field: &str, name: &str, arches: &[FilterArch]) -> Result<()> {
    let missing: Vec<FilterArch> = arches
        .iter()
        .copied()
        .filter(|a| !arch::known_on(name, a.scmp))
        .collect();
    if missing.len() == arches.len() && !arch::known_anywhere(name) {
        return Err(SeccompError::UnknownSyscall {
            field: field.to_string(),
            name: name.to_string(),
            arches: arch::names(arches),
            libseccomp: arch::libseccomp_version(),
        });
    }
    if !missing.is_empty() {
        tracing::debug!(
            field,
            syscall = name,
            missing_on = %arch::names(&missing),
            "seccomp rule skipped on architectures without this syscall"
        );
    }
    Ok(())
}
