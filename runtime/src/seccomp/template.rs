//! Profiles with conditions (Docker's format): `archMap`, and rules that apply only for some
//! architectures, capabilities or kernel versions. Both the default profile and profile files
//! are held in this form and resolved into an OCI `LinuxSeccomp` for one container.

use std::path::PathBuf;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall,
};

use super::arch;

/// A profile before its conditions are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Template {
    pub(crate) default_action: LinuxSeccompAction,
    pub(crate) default_errno_ret: Option<u32>,
    /// Used as-is; a template has either this or `arch_map`.
    pub(crate) architectures: Option<Vec<Arch>>,
    /// Docker's `archMap`: the entry of the native architecture gives the filter's
    /// architectures (that one and its sub-architectures).
    pub(crate) arch_map: Vec<ArchMapEntry>,
    pub(crate) flags: Option<Vec<LinuxSeccompFilterFlag>>,
    pub(crate) listener_path: Option<PathBuf>,
    pub(crate) listener_metadata: Option<String>,
    pub(crate) rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArchMapEntry {
    pub(crate) arch: Arch,
    pub(crate) sub_arches: Vec<Arch>,
}

/// One rule and the conditions under which it is part of the profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) names: Vec<String>,
    pub(crate) action: LinuxSeccompAction,
    pub(crate) errno_ret: Option<u32>,
    pub(crate) args: Vec<LinuxSeccompArg>,
    /// The rule applies only if all of these hold.
    pub(crate) includes: Conditions,
    /// The rule is left out if any of these holds.
    pub(crate) excludes: Conditions,
}

/// Docker's `includes`/`excludes` filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Conditions {
    /// Capability names, "CAP_SYS_ADMIN".
    pub(crate) caps: Vec<String>,
    /// Architecture names as Docker spells them: "amd64", "arm64", "x86", "s390x".
    pub(crate) arches: Vec<String>,
    pub(crate) min_kernel: Option<KernelVersion>,
}

/// `major.minor` of a kernel release, what Docker's `minKernel` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KernelVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl KernelVersion {
    /// Parses the leading `major.minor` of "6.1.0-18-amd64" or "4.8".
    pub(crate) fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// The running kernel's version; `None` if uname fails or its release does not parse.
    pub(crate) fn running() -> Option<Self> {
        let uname = nix::sys::utsname::uname().ok()?;
        Self::parse(uname.release().to_str()?)
    }
}

/// What the conditions of a template are resolved against: one container on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Environment {
    /// The native architecture.
    pub(crate) arch: Arch,
    /// Normalised capability names of the container's bounding set.
    pub(crate) capabilities: Vec<String>,
    /// `None` when unknown: `minKernel` conditions then count as not met.
    pub(crate) kernel: Option<KernelVersion>,
}

impl Environment {
    /// This host, for a container with `capabilities` ("CAP_SYS_ADMIN" or "SYS_ADMIN", any case).
    pub(crate) fn current(capabilities: &[&str]) -> Self {
        Self::new(arch::native().oci, capabilities, KernelVersion::running())
    }

    pub(crate) fn new(arch: Arch, capabilities: &[&str], kernel: Option<KernelVersion>) -> Self {
        let capabilities = capabilities
            .iter()
            .map(|c| normalize_capability(c))
            .collect();
        Self {
            arch,
            capabilities,
            kernel,
        }
    }

    fn has_capability(&self, cap: &str) -> bool {
        let cap = normalize_capability(cap);
        self.capabilities.contains(&cap)
    }

    fn kernel_at_least(&self, min: KernelVersion) -> bool {
        self.kernel.is_some_and(|k| k >= min)
    }
}

fn normalize_capability(cap: &str) -> String {
    let cap = cap.trim().to_ascii_uppercase();
    if cap.starts_with("CAP_") {
        cap
    } else {
        format!("CAP_{cap}")
    }
}

/// Docker's name of an architecture, what `includes.arches`/`excludes.arches` list.
pub(crate) fn docker_arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::ScmpArchNative => "native",
        Arch::ScmpArchX86 => "x86",
        Arch::ScmpArchX86_64 => "amd64",
        Arch::ScmpArchX32 => "x32",
        Arch::ScmpArchArm => "arm",
        Arch::ScmpArchAarch64 => "arm64",
        Arch::ScmpArchMips => "mips",
        Arch::ScmpArchMips64 => "mips64",
        Arch::ScmpArchMips64n32 => "mips64n32",
        Arch::ScmpArchMipsel => "mipsle",
        Arch::ScmpArchMipsel64 => "mipsel64",
        Arch::ScmpArchMipsel64n32 => "mipsel64n32",
        Arch::ScmpArchPpc => "ppc",
        Arch::ScmpArchPpc64 => "ppc64",
        Arch::ScmpArchPpc64le => "ppc64le",
        Arch::ScmpArchS390 => "s390",
        Arch::ScmpArchS390x => "s390x",
        Arch::ScmpArchParisc => "parisc",
        Arch::ScmpArchParisc64 => "parisc64",
        Arch::ScmpArchRiscv64 => "riscv64",
        Arch::ScmpArchLoongarch64 => "loongarch64",
        Arch::ScmpArchM68k => "m68k",
        Arch::ScmpArchSh => "sh",
        Arch::ScmpArchSheb => "sheb",
    }
}

impl Rule {
    pub(crate) fn new(names: &[&str], action: LinuxSeccompAction) -> Self {
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            action,
            errno_ret: None,
            args: Vec::new(),
            includes: Conditions::default(),
            excludes: Conditions::default(),
        }
    }

    /// Whether the rule is part of the profile in `env`, by Docker's rules: every include
    /// condition holds and no exclude condition does.
    fn applies(&self, env: &Environment) -> bool {
        let arch = docker_arch_name(env.arch);
        let excluded = self.excludes.arches.iter().any(|a| a == arch)
            || self.excludes.caps.iter().any(|c| env.has_capability(c))
            || self
                .excludes
                .min_kernel
                .is_some_and(|k| env.kernel_at_least(k));
        let included = (self.includes.arches.is_empty()
            || self.includes.arches.iter().any(|a| a == arch))
            && self.includes.caps.iter().all(|c| env.has_capability(c))
            && self
                .includes
                .min_kernel
                .is_none_or(|k| env.kernel_at_least(k));
        included && !excluded
    }

    fn to_oci(&self) -> LinuxSyscall {
        let mut syscall = LinuxSyscall::default();
        syscall
            .set_names(self.names.clone())
            .set_action(self.action)
            .set_errno_ret(self.errno_ret);
        if !self.args.is_empty() {
            syscall.set_args(Some(self.args.clone()));
        }
        syscall
    }
}

/// One argument comparison; `value_two` is the datum of `SCMP_CMP_MASKED_EQ`.
pub(crate) fn arg(
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSeccompArg {
    let builder = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    let builder = match value_two {
        Some(value_two) => builder.value_two(value_two),
        None => builder,
    };
    builder
        .build()
        .expect("every field of LinuxSeccompArg has a default, so its builder cannot fail")
}

impl Template {
    /// The OCI profile for `env`: the architectures of the native `archMap` entry (or
    /// `architectures` as written) and the rules whose conditions hold, in order.
    pub(crate) fn resolve(&self, env: &Environment) -> LinuxSeccomp {
        let architectures = if self.arch_map.is_empty() {
            self.architectures.clone()
        } else {
            self.arch_map
                .iter()
                .find(|entry| entry.arch == env.arch)
                .map(|entry| {
                    std::iter::once(entry.arch)
                        .chain(entry.sub_arches.iter().copied())
                        .collect()
                })
        };
        let syscalls: Vec<LinuxSyscall> = self
            .rules
            .iter()
            .filter(|rule| rule.applies(env))
            .map(Rule::to_oci)
            .collect();

        let mut seccomp = LinuxSeccomp::default();
        seccomp
            .set_default_action(self.default_action)
            .set_default_errno_ret(self.default_errno_ret)
            .set_architectures(architectures)
            .set_flags(self.flags.clone())
            .set_listener_path(self.listener_path.clone())
            .set_listener_metadata(self.listener_metadata.clone())
            .set_syscalls((!syscalls.is_empty()).then_some(syscalls));
        seccomp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(includes: Conditions, excludes: Conditions) -> Rule {
        let mut rule = Rule::new(&["getpid"], LinuxSeccompAction::ScmpActAllow);
        rule.includes = includes;
        rule.excludes = excludes;
        rule
    }

    fn caps(caps: &[&str]) -> Conditions {
        Conditions {
            caps: caps.iter().map(|c| c.to_string()).collect(),
            ..Conditions::default()
        }
    }

    #[test]
    fn kernel_versions_parse_from_uname_releases() {
        let v = |major, minor| Some(KernelVersion { major, minor });
        assert_eq!(KernelVersion::parse("6.1.0-18-amd64"), v(6, 1));
        assert_eq!(KernelVersion::parse("4.8"), v(4, 8));
        assert_eq!(KernelVersion::parse("5.15.0+"), v(5, 15));
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse("x.y"), None);
        assert!(
            KernelVersion::running().is_some(),
            "uname release should parse"
        );
        assert!(v(4, 10) > v(4, 8) && v(5, 0) > v(4, 20));
    }

    #[test]
    fn conditions_follow_docker_semantics() {
        let env = Environment::new(
            Arch::ScmpArchX86_64,
            &["cap_sys_admin", "NET_RAW"],
            Some(KernelVersion { major: 6, minor: 1 }),
        );
        let none = Conditions::default();
        // includes.caps: all must be held; names are normalised.
        assert!(rule(caps(&["CAP_SYS_ADMIN"]), none.clone()).applies(&env));
        assert!(rule(caps(&["CAP_NET_RAW", "CAP_SYS_ADMIN"]), none.clone()).applies(&env));
        assert!(!rule(caps(&["CAP_SYS_ADMIN", "CAP_BPF"]), none.clone()).applies(&env));
        // excludes.caps: any held capability excludes.
        assert!(!rule(none.clone(), caps(&["CAP_BPF", "CAP_SYS_ADMIN"])).applies(&env));
        assert!(rule(none.clone(), caps(&["CAP_BPF"])).applies(&env));
        // arches use Docker's names of the native architecture.
        let arches = |a: &[&str]| Conditions {
            arches: a.iter().map(|s| s.to_string()).collect(),
            ..Conditions::default()
        };
        assert!(rule(arches(&["amd64", "x32"]), none.clone()).applies(&env));
        assert!(!rule(arches(&["arm64"]), none.clone()).applies(&env));
        assert!(!rule(none.clone(), arches(&["amd64"])).applies(&env));
        // minKernel: includes need at least that kernel, excludes drop the rule from it on.
        let kernel = |major, minor| Conditions {
            min_kernel: Some(KernelVersion { major, minor }),
            ..Conditions::default()
        };
        assert!(rule(kernel(4, 8), none.clone()).applies(&env));
        assert!(!rule(kernel(6, 2), none.clone()).applies(&env));
        assert!(!rule(none.clone(), kernel(4, 8)).applies(&env));
        let unknown_kernel = Environment::new(Arch::ScmpArchX86_64, &[], None);
        assert!(!rule(kernel(4, 8), none.clone()).applies(&unknown_kernel));
        assert!(rule(none, kernel(4, 8)).applies(&unknown_kernel));
    }

    #[test]
    fn arch_map_entry_of_the_native_arch_gives_the_architectures() {
        let template = Template {
            arch_map: vec![
                ArchMapEntry {
                    arch: Arch::ScmpArchX86_64,
                    sub_arches: vec![Arch::ScmpArchX86, Arch::ScmpArchX32],
                },
                ArchMapEntry {
                    arch: Arch::ScmpArchAarch64,
                    sub_arches: vec![Arch::ScmpArchArm],
                },
            ],
            ..Template::default()
        };
        let arm = template.resolve(&Environment::new(Arch::ScmpArchAarch64, &[], None));
        assert_eq!(
            arm.architectures().as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
        let riscv = template.resolve(&Environment::new(Arch::ScmpArchRiscv64, &[], None));
        assert_eq!(riscv.architectures(), &None);
        assert_eq!(riscv.syscalls(), &None);
    }
}
