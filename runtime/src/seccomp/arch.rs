//! Architectures and syscall names as the linked libseccomp sees them.

use libseccomp::{ScmpArch, ScmpSyscall, ScmpVersion};
use oci_spec::runtime::{Arch, LinuxSeccomp};

/// One architecture of a filter, under its OCI name (for messages) and its libseccomp token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilterArch {
    pub(crate) oci: Arch,
    pub(crate) scmp: ScmpArch,
}

/// The libseccomp token of an OCI architecture.
pub(crate) fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

/// The architecture this process runs as.
pub(crate) fn native() -> FilterArch {
    let scmp = ScmpArch::native();
    let oci = match scmp {
        ScmpArch::X86 => Arch::ScmpArchX86,
        ScmpArch::X8664 => Arch::ScmpArchX86_64,
        ScmpArch::X32 => Arch::ScmpArchX32,
        ScmpArch::Arm => Arch::ScmpArchArm,
        ScmpArch::Aarch64 => Arch::ScmpArchAarch64,
        ScmpArch::Mips => Arch::ScmpArchMips,
        ScmpArch::Mips64 => Arch::ScmpArchMips64,
        ScmpArch::Mips64N32 => Arch::ScmpArchMips64n32,
        ScmpArch::Mipsel => Arch::ScmpArchMipsel,
        ScmpArch::Mipsel64 => Arch::ScmpArchMipsel64,
        ScmpArch::Mipsel64N32 => Arch::ScmpArchMipsel64n32,
        ScmpArch::Ppc => Arch::ScmpArchPpc,
        ScmpArch::Ppc64 => Arch::ScmpArchPpc64,
        ScmpArch::Ppc64Le => Arch::ScmpArchPpc64le,
        ScmpArch::S390 => Arch::ScmpArchS390,
        ScmpArch::S390X => Arch::ScmpArchS390x,
        ScmpArch::Parisc => Arch::ScmpArchParisc,
        ScmpArch::Parisc64 => Arch::ScmpArchParisc64,
        ScmpArch::Riscv64 => Arch::ScmpArchRiscv64,
        ScmpArch::Loongarch64 => Arch::ScmpArchLoongarch64,
        ScmpArch::M68k => Arch::ScmpArchM68k,
        ScmpArch::Sh => Arch::ScmpArchSh,
        ScmpArch::Sheb => Arch::ScmpArchSheb,
        // `ScmpArch` is non-exhaustive; a token newer than this list still filters correctly,
        // it is only named "native" in messages.
        _ => Arch::ScmpArchNative,
    };
    FilterArch { oci, scmp }
}

/// The architectures a filter built from `seccomp` contains: the native one (libseccomp always
/// includes it), then each listed one, without duplicates.
pub(crate) fn filter_arches(seccomp: &LinuxSeccomp) -> Vec<FilterArch> {
    let mut arches = vec![native()];
    for &oci in seccomp.architectures().iter().flatten() {
        let scmp = match scmp_arch(oci) {
            ScmpArch::Native => continue,
            scmp => scmp,
        };
        if !arches.iter().any(|a| a.scmp == scmp) {
            arches.push(FilterArch { oci, scmp });
        }
    }
    arches
}

/// Whether the linked libseccomp has a syscall table for `arch` (every architecture has `read`).
pub(crate) fn supported(arch: ScmpArch) -> bool {
    ScmpSyscall::from_name_by_arch("read", arch).is_ok()
}

/// Whether `name` is a real syscall on `arch`, or one libseccomp rewrites into a real one (the
/// socketcall/ipc multiplexers of 32-bit x86). libseccomp also knows names that do not exist on
/// an architecture and resolves them to a negative pseudo number: those count as unknown there.
pub(crate) fn known_on(name: &str, arch: ScmpArch) -> bool {
    ScmpSyscall::from_name_by_arch_rewrite(name, arch)
        .map(|nr| nr.as_raw_syscall() >= 0)
        .unwrap_or(false)
}

/// Whether libseccomp knows `name` as a syscall of any architecture it supports. Profiles
/// shared across architectures (Podman's, containerd's) list syscalls that exist only
/// elsewhere (`pciconfig_iobase`, `arm_fadvise64_64`, ...): runc and crun skip those, and so do
/// we; a name no architecture has (a typo) stays an error.
pub(crate) fn known_anywhere(name: &str) -> bool {
    ScmpSyscall::from_name(name).is_ok()
}

/// "2.5.4", for messages.
pub(crate) fn libseccomp_version() -> String {
    match ScmpVersion::current() {
        Ok(v) => format!("{}.{}.{}", v.major, v.minor, v.micro),
        Err(_) => "(unknown version)".to_string(),
    }
}

/// "SCMP_ARCH_X86_64, SCMP_ARCH_X86", for messages.
pub(crate) fn names(arches: &[FilterArch]) -> String {
    arches
        .iter()
        .map(|a| a.oci.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxSeccompBuilder;

    #[test]
    fn native_is_first_and_listed_arches_are_deduplicated() {
        let seccomp = LinuxSeccompBuilder::default()
            .architectures(vec![
                Arch::ScmpArchNative,
                native().oci,
                Arch::ScmpArchX86,
                Arch::ScmpArchArm,
                Arch::ScmpArchX86,
            ])
            .build()
            .unwrap();
        let arches = filter_arches(&seccomp);
        assert_eq!(arches[0], native());
        let scmp: Vec<_> = arches.iter().map(|a| a.scmp).collect();
        assert_eq!(scmp.len(), 3, "{scmp:?}");
        assert!(scmp.contains(&ScmpArch::X86) && scmp.contains(&ScmpArch::Arm));
        assert_eq!(names(&arches[1..]), "SCMP_ARCH_X86, SCMP_ARCH_ARM");
    }

    #[test]
    fn names_resolve_per_architecture() {
        // chown32 exists only on 32-bit ABIs; arch_prctl only on x86; socket is multiplexed
        // through socketcall on 32-bit x86.
        assert!(known_on("chown32", ScmpArch::X86));
        assert!(!known_on("chown32", ScmpArch::X8664));
        assert!(known_on("arch_prctl", ScmpArch::X8664));
        assert!(!known_on("arch_prctl", ScmpArch::Aarch64));
        assert!(known_on("socket", ScmpArch::X86));
        assert!(!known_on("no_such_syscall", ScmpArch::X8664));
        assert!(supported(ScmpArch::X8664) && supported(ScmpArch::Aarch64));
    }
}
