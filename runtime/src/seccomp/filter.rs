//! `linux.seccomp` → libseccomp filter, and loading it.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use super::arch;
use super::error::{Result, SeccompError};
use super::validate::validate;

/// Builds the libseccomp filter for a `linux.seccomp` section, after [`validate`] accepted it.
///
/// - `defaultAction`/`defaultErrnoRet` become the filter's default action (`SCMP_ACT_ERRNO`
///   and `SCMP_ACT_TRACE` without a value use EPERM, as runc does).
/// - Each of `architectures` is added; the native architecture is always in the filter. A
///   syscall made through an ABI that is not in the filter kills the thread (libseccomp's
///   default bad-architecture action).
/// - `flags` become filter attributes: TSYNC → `SCMP_FLTATR_CTL_TSYNC`, LOG →
///   `SCMP_FLTATR_CTL_LOG`, SPEC_ALLOW → `SCMP_FLTATR_CTL_SSB`, WAIT_KILLABLE_RECV →
///   `SCMP_FLTATR_CTL_WAITKILL` (libseccomp ≥ 2.6 only).
/// - Each rule adds one libseccomp rule per name, with all of its argument comparisons in
///   that one rule, so they AND together as the spec says. A rule whose action equals the
///   default action changes nothing and is skipped (libseccomp would refuse it).
///
/// libseccomp's automatic `no_new_privs` is switched off: whether the container gets
/// no_new_privs is `process.noNewPrivileges`' decision, not seccomp's.
pub fn build_filter(seccomp: &LinuxSeccomp) -> Result<ScmpFilterContext> {
    validate(seccomp)?;

    let default = action(
        "defaultAction",
        seccomp.default_action(),
        seccomp.default_errno_ret(),
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(|source| SeccompError::NewFilter {
        action: seccomp.default_action().to_string(),
        source,
    })?;
    ctx.set_ctl_nnp(false)
        .map_err(|source| SeccompError::SetAttribute {
            field: "linux.seccomp".to_string(),
            attribute: "SCMP_FLTATR_CTL_NNP",
            source,
        })?;
    // Report the kernel's own errno when loading fails, not libseccomp's generic ECANCELED.
    ctx.set_api_sysrawrc(true)
        .map_err(|source| SeccompError::SetAttribute {
            field: "linux.seccomp".to_string(),
            attribute: "SCMP_FLTATR_API_SYSRAWRC",
            source,
        })?;

    for (i, &oci) in seccomp.architectures().iter().flatten().enumerate() {
        let scmp = arch::scmp_arch(oci);
        if scmp == ScmpArch::Native {
            continue;
        }
        ctx.add_arch(scmp).map_err(|source| SeccompError::AddArch {
            field: format!("architectures[{i}]"),
            arch: oci.to_string(),
            source,
        })?;
    }

    for (i, &flag) in seccomp.flags().iter().flatten().enumerate() {
        let (attribute, set) = match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {
                ("SCMP_FLTATR_CTL_TSYNC", ctx.set_ctl_tsync(true).map(drop))
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                ("SCMP_FLTATR_CTL_LOG", ctx.set_ctl_log(true).map(drop))
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                ("SCMP_FLTATR_CTL_SSB", ctx.set_ctl_ssb(true).map(drop))
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => (
                "SCMP_FLTATR_CTL_WAITKILL",
                ctx.set_ctl_waitkill(true).map(drop),
            ),
        };
        set.map_err(|source| SeccompError::SetAttribute {
            field: format!("flags[{i}]"),
            attribute,
            source,
        })?;
    }

    for (i, rule) in seccomp.syscalls().iter().flatten().enumerate() {
        let field = format!("syscalls[{i}]");
        let rule_action = action(&format!("{field}.action"), rule.action(), rule.errno_ret())?;
        if rule_action == default {
            tracing::debug!(
                field,
                names = ?rule.names(),
                "seccomp rule skipped: its action is the default action"
            );
            continue;
        }
        let comparators: Vec<ScmpArgCompare> =
            rule.args().iter().flatten().map(comparator).collect();
        for (j, name) in rule.names().iter().enumerate() {
            let field = format!("{field}.names[{j}]");
            // Resolved for the native architecture: a name that exists only on another
            // architecture of the filter gets libseccomp's negative pseudo number here, and
            // libseccomp translates it by name for each architecture of the filter.
            if arch::filter_arches(seccomp)
                .iter()
                .all(|a| !arch::known_on(name, a.scmp))
            {
                // Exists only on architectures this filter does not cover (validated above).
                continue;
            }
            let syscall =
                ScmpSyscall::from_name(name).map_err(|_| SeccompError::UnknownSyscall {
                    field: field.clone(),
                    name: name.clone(),
                    arches: arch::names(&arch::filter_arches(seccomp)),
                    libseccomp: arch::libseccomp_version(),
                })?;
            ctx.add_rule_conditional(rule_action, syscall, &comparators)
                .map_err(|source| SeccompError::AddRule {
                    field,
                    name: name.clone(),
                    source,
                })?;
        }
    }
    Ok(ctx)
}

/// Validates `seccomp`, builds its filter and installs it in the calling thread (in every
/// thread of the process with `SECCOMP_FILTER_FLAG_TSYNC`), for good: call it in the container
/// init right before `execve`, because every syscall made after it, `execve` included, must
/// be allowed by the profile.
///
/// The kernel accepts a filter only from a thread that has `no_new_privs` set
/// (`prctl(PR_SET_NO_NEW_PRIVS, 1)`, what `process.noNewPrivileges: true` asks for) or that
/// holds `CAP_SYS_ADMIN` in its user namespace. This function never sets `no_new_privs`
/// itself, so with `noNewPrivileges: false` load it while the process still has
/// `CAP_SYS_ADMIN`, before the capabilities are dropped (as runc does); otherwise the load fails
/// with EACCES.
pub fn load(seccomp: &LinuxSeccomp) -> Result<()> {
    let ctx = build_filter(seccomp)?;
    ctx.load().map_err(|source| SeccompError::Load {
        hint: if source.sysrawrc() == Some(-libc::EACCES) {
            " (the thread needs no_new_privs set or CAP_SYS_ADMIN)"
        } else {
            ""
        },
        source,
    })
}

/// The libseccomp action of an OCI action. `errno_ret` defaults to EPERM.
fn action(field: &str, action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction> {
    // `validate` bounded it to 4095 (errno) or 0xffff (trace message).
    let data = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(i32::try_from(data).unwrap_or(i32::MAX))
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(u16::try_from(data).unwrap_or(u16::MAX))
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Unsupported {
                field: field.to_string(),
                what: "SCMP_ACT_NOTIFY".to_string(),
                reason: "berth has no seccomp agent to hand the notification fd to".to_string(),
            });
        }
    })
}

/// The libseccomp comparison of an OCI argument rule. For `SCMP_CMP_MASKED_EQ`, `value` is the
/// mask and `valueTwo` (0 when absent) the datum the masked argument must equal, as in runc.
fn comparator(arg: &LinuxSeccompArg) -> ScmpArgCompare {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                index(arg),
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            );
        }
    };
    ScmpArgCompare::new(index(arg), op, arg.value())
}

/// `validate` bounded the index to 0..=5.
fn index(arg: &LinuxSeccompArg) -> u32 {
    u32::try_from(arg.index()).unwrap_or(u32::MAX)
}
