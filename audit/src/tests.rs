use std::collections::{BTreeMap, HashSet};

use berth_netpolicy::{Requirement, Selector};

use crate::syscalls::{self, TABLE};
use crate::*;

const REC: u32 = ACTION_RECORD;
const CNT: u32 = ACTION_COUNT;
const KILL: u32 = ACTION_KILL | ACTION_RECORD;

const EXAMPLE: &str = r#"
apiVersion: berth.io/v1alpha1
kind: AuditPolicy
metadata:
  name: web-baseline
spec:
  selector:
    matchLabels: {app: web}
  rules:
  - name: all-syscalls
    syscalls: ["*"]
    action: count
  - syscalls: [execve, execveat]
    action: record
  - syscalls: [openat, openat2]
    action: record
    match:
      pathPrefix: [/etc/, /root/]
      flags: [O_WRONLY, O_RDWR, O_CREAT]
  - syscalls: [unshare]
    match: {flags: [CLONE_NEWUSER]}
    action: kill
  - syscalls: [ptrace, bpf]
    action: deny
"#;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn nr(name: &str) -> u32 {
    syscall_number(name).unwrap_or_else(|| panic!("{name} unknown to libseccomp"))
}

/// A policy document named `name` selecting `app: <name>`, with `rules` (YAML, indented
/// for the `rules:` key).
fn policy(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata:\n  name: {name}\n\
         spec:\n  selector:\n    matchLabels: {{app: {name}}}\n  rules:\n{rules}"
    )
}

/// The error text for `yaml`, which must be invalid.
fn error(yaml: &str) -> String {
    match parse(yaml.as_bytes()) {
        Ok(p) => panic!("expected an error, got {p:#?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(yaml: &str, expected: &str) {
    let e = error(yaml);
    assert!(e.contains(expected), "error {e:?} lacks {expected:?}");
}

fn rule_error(rules: &str, expected: &str) {
    assert_error(&policy("p", rules), expected);
}

fn parse_ok(yaml: &str) -> Vec<AuditPolicy> {
    parse(yaml.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn profile_of(policies: &[AuditPolicy], l: &[(&str, &str)]) -> Profile {
    profile(policies, &labels(l))
        .expect("profile")
        .expect("selected")
}

// ------------------------------------------------------------------ syscalls and flags

#[test]
fn syscall_numbers_are_x86_64() {
    assert_eq!(syscall_number("openat"), Some(257));
    assert_eq!(syscall_number("execve"), Some(59));
    assert_eq!(syscall_number("exit_group"), Some(231));
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("clone3"), Some(435));
    assert_eq!(syscall_name(257).as_deref(), Some("openat"));
    assert_eq!(syscall_name(59).as_deref(), Some("execve"));
    assert_eq!(syscall_number("opena"), None);
    // Known to libseccomp from other architectures, but no x86_64 syscall.
    assert_eq!(syscall_number("socketcall"), None);
    assert_eq!(syscall_name(100_000), None);
    assert_eq!(syscall_name(u32::MAX), None);
}

#[test]
fn table_names_are_known_to_libseccomp() {
    for spec in TABLE {
        // fchmodat2 (Linux 6.6) needs libseccomp >= 2.5.5; older ones refuse it, as they
        // would in the runtime.
        if spec.name != "fchmodat2" {
            assert!(syscall_number(spec.name).is_some(), "{}", spec.name);
        }
        let arg = |a: Option<u8>| a.is_none_or(|a| a <= 5);
        assert!(
            arg(spec.path) && arg(spec.argv) && arg(spec.addr),
            "{}",
            spec.name
        );
        assert!(arg(spec.flags.map(|f| f.arg)), "{}", spec.name);
    }
    let mut names: Vec<_> = TABLE.iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), TABLE.len(), "duplicate table entries");
}

#[test]
fn captures() {
    let c = Capture::of(nr("execveat"));
    assert_eq!((c.path_arg, c.argv_arg), (Some(1), Some(2)));
    let c = Capture::of(nr("openat2"));
    assert_eq!(
        c,
        Capture {
            path_arg: Some(1),
            flags_arg: Some(2),
            flags_in_struct: true,
            flags_family: Some(FlagFamily::Open),
            ..Capture::default()
        }
    );
    let c = Capture::of(nr("clone3"));
    assert_eq!((c.flags_arg, c.flags_in_struct), (Some(0), true));
    let c = Capture::of(nr("accept4"));
    assert_eq!(
        (c.addr_arg, c.addr_at_exit, c.flags_arg, c.flags_family),
        (Some(1), true, Some(3), Some(FlagFamily::Sock))
    );
    let c = Capture::of(nr("connect"));
    assert_eq!((c.addr_arg, c.addr_at_exit), (Some(1), false));
    let c = Capture::of(nr("mount"));
    assert_eq!((c.path_arg, c.flags_arg), (Some(1), Some(3)));
    assert_eq!(Capture::of(nr("linkat")).path_arg, Some(3));
    assert_eq!(Capture::of(nr("symlinkat")).path_arg, Some(2));
    assert!(Capture::of(nr("exit_group")).no_return);
    assert!(Capture::of(nr("exit")).no_return);
    assert_eq!(Capture::of(nr("getpid")), Capture::default());
}

/// Values as in this machine's /usr/include (asm-generic/fcntl.h, linux/sched.h,
/// linux/mount.h, sys/mount.h, bits/socket_type.h, linux/module.h, linux/memfd.h).
#[test]
fn flag_values_match_the_headers() {
    use FlagFamily::*;
    let cases: &[(FlagFamily, &str, u64)] = &[
        (Open, "O_RDONLY", 0),
        (Open, "O_WRONLY", 0o1),
        (Open, "O_RDWR", 0o2),
        (Open, "O_CREAT", 0o100),
        (Open, "O_EXCL", 0o200),
        (Open, "O_TRUNC", 0o1000),
        (Open, "O_APPEND", 0o2000),
        (Open, "O_NONBLOCK", 0o4000),
        (Open, "O_DSYNC", 0o10000),
        (Open, "O_DIRECT", 0o40000),
        (Open, "O_LARGEFILE", 0o100000),
        (Open, "O_DIRECTORY", 0o200000),
        (Open, "O_NOFOLLOW", 0o400000),
        (Open, "O_NOATIME", 0o1000000),
        (Open, "O_CLOEXEC", 0o2000000),
        (Open, "O_SYNC", 0o4010000),
        (Open, "O_PATH", 0o10000000),
        (Open, "O_TMPFILE", 0o20200000),
        (Clone, "CLONE_NEWTIME", 0x80),
        (Clone, "CLONE_VM", 0x100),
        (Clone, "CLONE_VFORK", 0x4000),
        (Clone, "CLONE_THREAD", 0x10000),
        (Clone, "CLONE_NEWNS", 0x20000),
        (Clone, "CLONE_CHILD_CLEARTID", 0x200000),
        (Clone, "CLONE_NEWCGROUP", 0x2000000),
        (Clone, "CLONE_NEWUSER", 0x10000000),
        (Clone, "CLONE_NEWPID", 0x20000000),
        (Clone, "CLONE_NEWNET", 0x40000000),
        (Clone, "CLONE_IO", 0x80000000),
        (Clone, "CLONE_CLEAR_SIGHAND", 0x100000000),
        (Clone, "CLONE_INTO_CGROUP", 0x200000000),
        (Mount, "MS_RDONLY", 1),
        (Mount, "MS_REMOUNT", 32),
        (Mount, "MS_BIND", 4096),
        (Mount, "MS_REC", 16384),
        (Mount, "MS_SILENT", 32768),
        (Mount, "MS_PRIVATE", 1 << 18),
        (Mount, "MS_SHARED", 1 << 20),
        (Mount, "MS_STRICTATIME", 1 << 24),
        (Mount, "MS_LAZYTIME", 1 << 25),
        (Umount, "MNT_FORCE", 1),
        (Umount, "MNT_DETACH", 2),
        (Umount, "MNT_EXPIRE", 4),
        (Umount, "UMOUNT_NOFOLLOW", 8),
        (Sock, "SOCK_NONBLOCK", 0o4000),
        (Sock, "SOCK_CLOEXEC", 0o2000000),
        (ModuleInit, "MODULE_INIT_IGNORE_MODVERSIONS", 1),
        (ModuleInit, "MODULE_INIT_IGNORE_VERMAGIC", 2),
        (ModuleInit, "MODULE_INIT_COMPRESSED_FILE", 4),
        (Memfd, "MFD_CLOEXEC", 1),
        (Memfd, "MFD_ALLOW_SEALING", 2),
        (Memfd, "MFD_HUGETLB", 4),
    ];
    for (family, name, value) in cases {
        assert_eq!(flag_value(*family, name), Some(*value), "{name}");
    }
    assert_eq!(flag_value(Open, "CLONE_NEWUSER"), None);
}

#[test]
fn flag_names_round_trip() {
    use FlagFamily::*;
    assert_eq!(flag_names(Open, 0), ["O_RDONLY"]);
    assert_eq!(flag_names(Open, 0o101), ["O_WRONLY", "O_CREAT"]);
    assert_eq!(
        flag_names(Open, 0o20200002 | 0o2000000),
        ["O_TMPFILE", "O_RDWR", "O_CLOEXEC"]
    );
    assert_eq!(flag_names(Open, 0o4010001), ["O_SYNC", "O_WRONLY"]);
    assert_eq!(flag_names(Open, 0o10001), ["O_WRONLY", "O_DSYNC"]);
    assert_eq!(
        flag_names(Clone, 0x10000000 | 0x40000000),
        ["CLONE_NEWUSER", "CLONE_NEWNET"]
    );
    // Unknown bits are left to the caller.
    assert_eq!(flag_names(Umount, 0x13), ["MNT_FORCE", "MNT_DETACH"]);
    assert_eq!(unknown_flag_bits(Umount, 0x13), 0x10);

    for family in FlagFamily::ALL {
        let all = (0..64).map(|name| 1u64 << name).fold(0, |a, b| a | b)
            & !unknown_flag_bits(family, u64::MAX);
        // Every single known bit, every pair of known bits, and everything at once.
        let mut values = vec![all];
        let bits: Vec<u64> = (0..64)
            .map(|b| 1u64 << b)
            .filter(|b| all & b != 0)
            .collect();
        for a in &bits {
            for b in &bits {
                values.push(a | b);
            }
        }
        for value in values {
            let names = flag_names(family, value);
            let back = names.iter().fold(0, |acc, n| {
                let v = flag_value(family, n).unwrap_or_else(|| panic!("{n}"));
                assert_eq!(acc & v, 0, "{names:?} overlap");
                acc | v
            });
            let rest = unknown_flag_bits(family, value);
            assert_eq!(back | rest, value, "{family:?} {value:#x} -> {names:?}");
            assert_eq!(back & rest, 0, "{family:?} {value:#x}");
        }
    }
    // Part of a multi-bit flag alone is not that flag.
    assert_eq!(flag_names(FlagFamily::Open, 0o4000001), ["O_WRONLY"]);
    assert_eq!(unknown_flag_bits(FlagFamily::Open, 0o4000001), 0o4000000);
}

#[test]
fn edit_distance() {
    assert_eq!(syscalls::edit_distance("opena", "openat"), 1);
    assert_eq!(syscalls::edit_distance("exceve", "execve"), 1);
    assert_eq!(syscalls::edit_distance("", "abc"), 3);
    assert_eq!(syscalls::edit_distance("kitten", "sitting"), 3);
}

// ------------------------------------------------------------------ parsing

#[test]
fn parses_the_example() {
    let policies = parse_ok(EXAMPLE);
    let expected = AuditPolicy {
        name: "web-baseline".into(),
        selector: Selector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![],
        },
        rules: vec![
            Rule {
                name: Some("all-syscalls".into()),
                syscalls: Syscalls::All,
                action: Action::Count,
                path_prefixes: vec![],
                flags_mask: 0,
            },
            Rule {
                name: None,
                syscalls: Syscalls::Named(vec![59, 322]),
                action: Action::Record,
                path_prefixes: vec![],
                flags_mask: 0,
            },
            Rule {
                name: None,
                syscalls: Syscalls::Named(vec![257, 437]),
                action: Action::Record,
                path_prefixes: vec!["/etc/".into(), "/root/".into()],
                flags_mask: 0o1 | 0o2 | 0o100,
            },
            Rule {
                name: None,
                syscalls: Syscalls::Named(vec![272]),
                action: Action::Kill,
                path_prefixes: vec![],
                flags_mask: 0x10000000,
            },
            Rule {
                name: None,
                syscalls: Syscalls::Named(vec![101, 321]),
                action: Action::Deny,
                path_prefixes: vec![],
                flags_mask: 0,
            },
        ],
    };
    assert_eq!(policies, vec![expected]);
}

#[test]
fn profile_of_the_example() {
    let policies = parse_ok(EXAMPLE);
    assert_eq!(profile(&policies, &labels(&[("app", "db")])), Ok(None));
    let p = profile_of(&policies, &[("app", "web"), ("tier", "front")]);
    let record_all = vec![Clause {
        flags_mask: 0,
        actions: REC,
    }];
    let open_paths = |capture| SyscallPlan {
        clauses: vec![],
        paths: ["/etc/", "/root/"]
            .iter()
            .map(|prefix| PathEntry {
                prefix: prefix.as_bytes().to_vec(),
                clauses: vec![Clause {
                    flags_mask: 0o103,
                    actions: REC,
                }],
            })
            .collect(),
        capture,
    };
    let expected = Profile {
        count_all: true,
        syscalls: BTreeMap::from([
            (
                59,
                SyscallPlan {
                    clauses: record_all.clone(),
                    paths: vec![],
                    capture: Capture::of(59),
                },
            ),
            (
                322,
                SyscallPlan {
                    clauses: record_all,
                    paths: vec![],
                    capture: Capture::of(322),
                },
            ),
            (257, open_paths(Capture::of(257))),
            (437, open_paths(Capture::of(437))),
            (
                272,
                SyscallPlan {
                    clauses: vec![Clause {
                        flags_mask: 0x10000000,
                        actions: KILL,
                    }],
                    paths: vec![],
                    capture: Capture::of(272),
                },
            ),
        ]),
        deny: vec![
            Deny {
                nr: 101,
                flags_arg: None,
                flags_mask: 0,
            },
            Deny {
                nr: 321,
                flags_arg: None,
                flags_mask: 0,
            },
        ],
        policies: vec!["web-baseline".into()],
    };
    assert_eq!(p, expected);
    assert_eq!(p.syscalls[&272].clauses[0].actions, 0b110);
}

#[test]
fn star_gives_count_all() {
    let policies = parse_ok(&policy("p", "  - syscalls: [\"*\"]\n    action: count\n"));
    let p = profile_of(&policies, &[("app", "p")]);
    assert!(p.count_all);
    assert!(p.syscalls.is_empty() && p.deny.is_empty());
    assert_eq!(p.policies, ["p"]);
}

#[test]
fn json_and_multiple_documents() {
    let json = r#"{"apiVersion": "berth.io/v1alpha1", "kind": "AuditPolicy",
	"metadata": {"name": "j"},
	"spec": {"rules": [{"syscalls": ["ptrace"], "action": "record"}]}}
      {"apiVersion": "berth.io/v1alpha1", "kind": "AuditPolicy", "metadata": {"name": "k"},
       "spec": {"selector": {}, "rules": [{"syscalls": ["bpf"], "action": "deny"}]}}"#;
    let policies = parse_ok(json);
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[0].selector, Selector::default());
    assert_eq!(policies[1].rules[0].action, Action::Deny);

    let yaml = format!(
        "---\n# nothing\n---\n{}\n---\n{}",
        policy("a", "  - {syscalls: [kill], action: record}\n"),
        policy("b", "  - {syscalls: [tkill], action: record}\n")
    );
    let names: Vec<_> = parse_ok(&yaml).into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(parse_ok(""), vec![]);
}

#[test]
fn flags_as_integers() {
    let policies = parse_ok(&policy(
        "p",
        "  - syscalls: [openat]\n    action: record\n    match: {flags: [0x40, \"0x200\", \"1\", 1024, O_WRONLY]}\n",
    ));
    assert_eq!(policies[0].rules[0].flags_mask, 0x40 | 0x200 | 1 | 1024);
}

#[test]
fn multi_bit_flags_test_their_own_bit() {
    let policies = parse_ok(&policy(
        "p",
        "  - syscalls: [openat]\n    action: record\n    match: {flags: [O_TMPFILE, O_SYNC]}\n",
    ));
    assert_eq!(policies[0].rules[0].flags_mask, 0o20000000 | 0o4000000);
}

#[test]
fn duplicates_within_a_rule_are_dropped() {
    let policies = parse_ok(&policy(
        "p",
        "  - syscalls: [openat, open, openat]\n    action: record\n    match: {pathPrefix: [/a/, /b/, /a/]}\n",
    ));
    let rule = &policies[0].rules[0];
    assert_eq!(rule.syscalls, Syscalls::Named(vec![257, 2]));
    assert_eq!(rule.path_prefixes, ["/a/", "/b/"]);
}

#[test]
fn deny_with_flags_on_a_register() {
    let policies = parse_ok(&policy(
        "p",
        "  - syscalls: [unshare, clone]\n    action: deny\n    match: {flags: [CLONE_NEWUSER]}\n",
    ));
    let p = profile_of(&policies, &[("app", "p")]);
    assert_eq!(
        p.deny,
        [
            Deny {
                nr: nr("clone"),
                flags_arg: Some(0),
                flags_mask: 0x10000000
            },
            Deny {
                nr: nr("unshare"),
                flags_arg: Some(0),
                flags_mask: 0x10000000
            },
        ]
    );
    assert!(p.syscalls.is_empty(), "deny-only syscalls have no plan");
}

// ------------------------------------------------------------------ errors

#[test]
fn error_unknown_syscall_with_suggestion() {
    let yaml = EXAMPLE.replace("[openat, openat2]", "[openat, opena]");
    let e = error(&yaml);
    assert_eq!(
        e,
        "doc 0 (AuditPolicy web-baseline): spec.rules[2].syscalls[1]: unknown syscall \"opena\" (did you mean \"openat\"?)"
    );
    rule_error(
        "  - {syscalls: [exceve], action: record}\n",
        "unknown syscall \"exceve\" (did you mean \"execve\"?)",
    );
    rule_error(
        "  - {syscalls: [getpidd], action: record}\n",
        "(did you mean \"getpid\"?)",
    );
    let e = error(&policy("p", "  - {syscalls: [zzzzzzzz], action: record}\n"));
    assert!(e.ends_with("unknown syscall \"zzzzzzzz\""), "{e}");
    rule_error(
        "  - {syscalls: [socketcall], action: record}\n",
        "spec.rules[0].syscalls[0]: \"socketcall\" is not a syscall on x86_64",
    );
}

#[test]
fn error_star_needs_count() {
    rule_error(
        "  - {syscalls: [\"*\"], action: record}\n",
        "spec.rules[0].action: \"*\" (every syscall) is only allowed with action: count, not record",
    );
    rule_error(
        "  - {syscalls: [\"*\"], action: deny}\n",
        "only allowed with action: count, not deny",
    );
    rule_error(
        "  - {syscalls: [openat, \"*\"], action: count}\n",
        "spec.rules[0].syscalls[1]: \"*\" (every syscall) must be the only entry",
    );
    rule_error(
        "  - {syscalls: [\"*\"], action: count, match: {flags: [1]}}\n",
        "spec.rules[0].match: not allowed with \"*\"",
    );
}

#[test]
fn error_path_prefix_without_path_argument() {
    rule_error(
        "  - {syscalls: [openat, connect], action: record, match: {pathPrefix: [/etc/]}}\n",
        "spec.rules[0].match.pathPrefix: connect has no path argument",
    );
}

#[test]
fn error_flags_without_flags_argument() {
    rule_error(
        "  - {syscalls: [ptrace], action: record, match: {flags: [1]}}\n",
        "spec.rules[0].match.flags: ptrace has no flags argument",
    );
}

#[test]
fn error_unknown_flag() {
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [O_WRONLY, O_CREATE]}}\n",
        "spec.rules[0].match.flags[1]: unknown O_* flag \"O_CREATE\" (did you mean \"O_CREAT\"?)",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [CLONE_NEWUSER]}}\n",
        "spec.rules[0].match.flags[0]: \"CLONE_NEWUSER\" is a CLONE_* flag, not one of O_*",
    );
    // A rule mixing families needs each name in each family.
    rule_error(
        "  - {syscalls: [openat, unshare], action: record, match: {flags: [O_CREAT]}}\n",
        "\"O_CREAT\" is an O_* flag, not one of CLONE_* (flags of unshare)",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [O_RDONLY]}}\n",
        "O_RDONLY is 0 and cannot be tested as a bit",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [0]}}\n",
        "spec.rules[0].match.flags[0]: 0 sets no bit",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [-1]}}\n",
        "-1 is negative",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [\"0xzz\"]}}\n",
        "\"0xzz\" is not a valid integer",
    );
}

#[test]
fn error_flags_outside_the_argument() {
    rule_error(
        "  - {syscalls: [clone], action: record, match: {flags: [CLONE_NEWTIME]}}\n",
        "spec.rules[0].match.flags[0]: CLONE_NEWTIME (0x80) cannot be set in clone's flags argument, which carries only bits 0xffffff00 (bits 0-7 are the exit signal",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: [0x100000000]}}\n",
        "4294967296 (0x100000000) cannot be set in openat's flags argument, which carries only bits 0xffffffff",
    );
    // clone3 and unshare carry every bit.
    parse_ok(&policy(
        "p",
        "  - {syscalls: [clone3, unshare], action: record, match: {flags: [CLONE_NEWTIME, CLONE_INTO_CGROUP]}}\n",
    ));
}

#[test]
fn error_bad_path_prefixes() {
    let rules = "  - syscalls: [openat]\n    action: record\n    match:\n      pathPrefix: [\"\", etc/, \"/a\\0b\", \"/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"/ok/\"]\n";
    let e = error(&policy("p", rules));
    for expected in [
        "spec.rules[0].match.pathPrefix[0]: must not be empty",
        "spec.rules[0].match.pathPrefix[1]: \"etc/\" must be absolute (start with /)",
        "spec.rules[0].match.pathPrefix[2]: \"/a\\0b\" must not contain NUL",
        "spec.rules[0].match.pathPrefix[3]: \"/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" is 67 bytes long: at most 64 bytes",
    ] {
        assert!(e.contains(expected), "{e} lacks {expected}");
    }
    assert_eq!(e.lines().count(), 4, "{e}");
    // Exactly 64 bytes is fine.
    let ok = format!("/{}", "a".repeat(63));
    parse_ok(&policy(
        "p",
        &format!("  - {{syscalls: [openat], action: record, match: {{pathPrefix: [{ok}]}}}}\n"),
    ));
    rule_error(
        "  - {syscalls: [openat], action: record, match: {pathPrefix: []}}\n",
        "spec.rules[0].match.pathPrefix: must not be empty (omit it to match every path)",
    );
}

#[test]
fn error_deny_cannot_read_memory() {
    rule_error(
        "  - {syscalls: [openat], action: deny, match: {pathPrefix: [/etc/]}}\n",
        "spec.rules[0].match.pathPrefix: deny cannot match paths: it is enforced by seccomp, which sees only the raw syscall arguments and cannot read the memory a path points to",
    );
    rule_error(
        "  - {syscalls: [openat2], action: deny, match: {flags: [O_CREAT]}}\n",
        "spec.rules[0].match.flags: deny cannot match openat2 flags: they are inside struct open_how in the caller's memory, which seccomp cannot read",
    );
    rule_error(
        "  - {syscalls: [clone3], action: deny, match: {flags: [CLONE_NEWUSER]}}\n",
        "deny cannot match clone3 flags: they are inside struct clone_args",
    );
}

#[test]
fn error_empty_lists() {
    rule_error(
        "  - {syscalls: [], action: record}\n",
        "spec.rules[0].syscalls: must list at least one syscall",
    );
    rule_error(
        "  - {action: record}\n",
        "spec.rules[0].syscalls: must list at least one syscall",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {flags: []}}\n",
        "spec.rules[0].match.flags: must not be empty",
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p}\nspec: {rules: []}\n",
        "doc 0 (AuditPolicy p): spec.rules: must have at least one rule",
    );
}

#[test]
fn error_duplicate_names() {
    let yaml = format!(
        "{}\n---\n{}\n---\n{}",
        policy("a", "  - {syscalls: [kill], action: record}\n"),
        policy("b", "  - {syscalls: [kill], action: record}\n"),
        policy("a", "  - {syscalls: [kill], action: record}\n"),
    );
    assert_eq!(
        error(&yaml),
        "doc 2 (AuditPolicy a): metadata.name: duplicate policy name \"a\" (also doc 0)"
    );
}

#[test]
fn error_api_version_and_kind() {
    let e = error(
        "apiVersion: berth.io/v1\nkind: AuditPolicy\nmetadata: {name: p}\nspec: {rules: []}\n",
    );
    assert_eq!(
        e,
        "doc 0 (AuditPolicy p): apiVersion: must be berth.io/v1alpha1, got \"berth.io/v1\""
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: NetworkPolicy\nmetadata: {name: p}\n",
        "kind: must be AuditPolicy, got \"NetworkPolicy\"",
    );
    assert_error(
        "kind: AuditPolicy\n",
        "apiVersion: must be berth.io/v1alpha1, got missing",
    );
    assert_error(
        "[1, 2]\n",
        "doc 0: expected an AuditPolicy object (a mapping)",
    );
}

#[test]
fn error_names() {
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nspec: {rules: [{syscalls: [kill], action: record}]}\n",
        "doc 0 (AuditPolicy): metadata.name: is required",
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: \"\"}\nspec: {rules: [{syscalls: [kill], action: record}]}\n",
        "metadata.name: is required",
    );
    assert_error(
        &policy("Web_1", "  - {syscalls: [kill], action: record}\n"),
        "doc 0 (AuditPolicy Web_1): metadata.name: \"Web_1\" is not a valid name",
    );
    assert_error(
        &policy(&"a".repeat(64), "  - {syscalls: [kill], action: record}\n"),
        "is not a valid name",
    );
}

#[test]
fn error_unknown_fields_and_types() {
    rule_error(
        "  - {syscalls: [openat], action: record, mach: {flags: [1]}}\n",
        "doc 0 (AuditPolicy p): spec.rules[0].mach: unknown field `mach`, expected one of `name`, `syscalls`, `action`, `match`",
    );
    rule_error(
        "  - {syscalls: [openat], action: record, match: {path: [/x]}}\n",
        "spec.rules[0].match.path: unknown field `path`",
    );
    rule_error(
        "  - {syscalls: [openat], action: audit}\n",
        "spec.rules[0].action: unknown variant `audit`",
    );
    rule_error(
        "  - {syscalls: [openat]}\n",
        "spec.rules[0]: missing field `action`",
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p, labels: {}}\nspec: {rules: []}\n",
        "metadata.labels: unknown field `labels`",
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p}\nspec: {selector: {matchLabel: {}}, rules: []}\n",
        "spec.selector.matchLabel: unknown field `matchLabel`",
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p}\n",
        "doc 0 (AuditPolicy p): missing field `spec`",
    );
}

#[test]
fn error_selector_operator() {
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p}\nspec:\n  selector:\n    matchExpressions: [{key: a, operator: Is}, {key: b, operator: In}]\n  rules: [{syscalls: [kill], action: record}]\n",
        "spec.selector.matchExpressions[0].operator: unsupported operator \"Is\"",
    );
    assert_error(
        "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p}\nspec:\n  selector:\n    matchExpressions: [{key: b, operator: In}]\n  rules: [{syscalls: [kill], action: record}]\n",
        "spec.selector.matchExpressions[0].values: must be non-empty for operator In",
    );
}

#[test]
fn errors_are_all_collected() {
    let yaml = format!(
        "{}\n---\nkind: Foo\n---\n{}",
        policy(
            "a",
            "  - {syscalls: [opena, ptrace], action: record, match: {flags: [1]}}\n  - {syscalls: [\"*\"], action: kill}\n"
        ),
        policy(
            "b",
            "  - {syscalls: [connect], action: record, match: {pathPrefix: [x]}}\n"
        ),
    );
    let e = error(&yaml);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(
        lines,
        [
            "doc 0 (AuditPolicy a): spec.rules[0].syscalls[0]: unknown syscall \"opena\" (did you mean \"openat\"?)",
            "doc 0 (AuditPolicy a): spec.rules[0].match.flags: ptrace has no flags argument",
            "doc 0 (AuditPolicy a): spec.rules[1].action: \"*\" (every syscall) is only allowed with action: count, not kill",
            "doc 1: apiVersion: must be berth.io/v1alpha1, got missing",
            "doc 1: kind: must be AuditPolicy, got \"Foo\"",
            "doc 2 (AuditPolicy b): spec.rules[0].match.pathPrefix: connect has no path argument",
            "doc 2 (AuditPolicy b): spec.rules[0].match.pathPrefix[0]: \"x\" must be absolute (start with /)",
        ],
        "{e}"
    );
    let Err(Error::Invalid(problems)) = parse(yaml.as_bytes()) else {
        panic!("invalid expected");
    };
    assert_eq!(problems[0].doc, Some(0));
    assert_eq!(problems[0].object.as_deref(), Some("AuditPolicy a"));
    assert_eq!(
        problems[0].field.as_deref(),
        Some("spec.rules[0].syscalls[0]")
    );
}

#[test]
fn error_syntax() {
    let yaml = format!(
        "{}\n---\nkey: [unclosed\n",
        policy("a", "  - {syscalls: [opena], action: record}\n")
    );
    let e = error(&yaml);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].contains("unknown syscall"), "{e}");
    assert!(lines[1].starts_with("doc 1: invalid YAML"), "{e}");
    assert_error("{\"a\": ", "doc 0: invalid JSON");
}

// ------------------------------------------------------------------ selectors

#[test]
fn selectors() {
    let yaml = "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {name: p}\nspec:\n  selector:\n    matchLabels: {app: web}\n    matchExpressions:\n    - {key: tier, operator: In, values: [front, back]}\n    - {key: env, operator: NotIn, values: [dev]}\n    - {key: team, operator: Exists}\n    - {key: debug, operator: DoesNotExist}\n  rules: [{syscalls: [kill], action: record}]\n";
    let policies = parse_ok(yaml);
    assert_eq!(
        policies[0].selector.match_expressions,
        [
            Requirement::In("tier".into(), vec!["front".into(), "back".into()]),
            Requirement::NotIn("env".into(), vec!["dev".into()]),
            Requirement::Exists("team".into()),
            Requirement::DoesNotExist("debug".into()),
        ]
    );
    let selected = |l: &[(&str, &str)]| profile(&policies, &labels(l)).expect("ok").is_some();
    assert!(selected(&[
        ("app", "web"),
        ("tier", "front"),
        ("team", "x")
    ]));
    assert!(selected(&[
        ("app", "web"),
        ("tier", "back"),
        ("team", "x"),
        ("env", "prod")
    ]));
    assert!(!selected(&[
        ("app", "db"),
        ("tier", "front"),
        ("team", "x")
    ]));
    assert!(!selected(&[("app", "web"), ("tier", "mid"), ("team", "x")]));
    assert!(!selected(&[
        ("app", "web"),
        ("tier", "front"),
        ("team", "x"),
        ("env", "dev")
    ]));
    assert!(!selected(&[("app", "web"), ("tier", "front")]));
    assert!(!selected(&[
        ("app", "web"),
        ("tier", "front"),
        ("team", "x"),
        ("debug", "1")
    ]));

    // Empty and absent selectors select every container, even one without labels.
    for selector in ["  selector: {}\n", ""] {
        let yaml = format!(
            "apiVersion: berth.io/v1alpha1\nkind: AuditPolicy\nmetadata: {{name: p}}\nspec:\n{selector}  rules: [{{syscalls: [kill], action: record}}]\n"
        );
        let policies = parse_ok(&yaml);
        assert_eq!(policies[0].selector, Selector::default());
        assert!(profile(&policies, &labels(&[])).expect("ok").is_some());
        assert!(
            profile(&policies, &labels(&[("a", "b")]))
                .expect("ok")
                .is_some()
        );
    }
}

// ------------------------------------------------------------------ merging

#[test]
fn merging_two_policies() {
    let a = policy(
        "a",
        "  - syscalls: [openat]\n    action: record\n    match: {pathPrefix: [/etc/]}\n\
         \x20 - syscalls: [openat]\n    action: record\n    match: {flags: [O_WRONLY]}\n\
         \x20 - syscalls: [unshare]\n    action: deny\n    match: {flags: [CLONE_NEWNET]}\n",
    )
    .replace("matchLabels: {app: a}", "matchLabels: {team: x}");
    let b = policy(
        "b",
        "  - syscalls: [openat]\n    action: kill\n    match: {pathPrefix: [/etc/ssh/]}\n\
         \x20 - syscalls: [openat]\n    action: count\n    match: {flags: [O_WRONLY]}\n\
         \x20 - syscalls: [openat]\n    action: count\n    match: {flags: [O_CREAT]}\n\
         \x20 - syscalls: [unshare]\n    action: deny\n    match: {flags: [CLONE_NEWUSER]}\n\
         \x20 - syscalls: [setns]\n    action: deny\n",
    )
    .replace("matchLabels: {app: b}", "matchLabels: {team: x}");
    let policies = parse_ok(&format!("{b}\n---\n{a}"));
    let p = profile_of(&policies, &[("team", "x")]);
    assert_eq!(p.policies, ["a", "b"]);
    assert!(!p.count_all);

    let openat = &p.syscalls[&257];
    // O_WRONLY: record (a) and count (b) merged by mask; O_CREAT: count only.
    assert_eq!(
        openat.clauses,
        [
            Clause {
                flags_mask: 0o1,
                actions: CNT | REC
            },
            Clause {
                flags_mask: 0o100,
                actions: CNT
            },
        ]
    );
    assert_eq!(
        openat.paths,
        [
            PathEntry {
                prefix: b"/etc/".to_vec(),
                clauses: vec![Clause {
                    flags_mask: 0,
                    actions: REC
                }],
            },
            PathEntry {
                prefix: b"/etc/ssh/".to_vec(),
                clauses: vec![Clause {
                    flags_mask: 0,
                    actions: REC | KILL
                }],
            },
        ]
    );
    assert_eq!(openat.capture, Capture::of(257));
    assert_eq!(
        p.deny,
        [
            Deny {
                nr: nr("unshare"),
                flags_arg: Some(0),
                flags_mask: 0x40000000 | 0x10000000
            },
            Deny {
                nr: nr("setns"),
                flags_arg: None,
                flags_mask: 0
            },
        ]
    );
    // Order of the input does not matter.
    let reversed = parse_ok(&format!("{a}\n---\n{b}"));
    assert_eq!(profile_of(&reversed, &[("team", "x")]), p);
}

#[test]
fn unconditional_deny_wins() {
    let policies = parse_ok(&format!(
        "{}\n---\n{}",
        policy(
            "a",
            "  - {syscalls: [unshare], action: deny, match: {flags: [CLONE_NEWNET]}}\n"
        ),
        policy("b", "  - {syscalls: [unshare], action: deny}\n")
            .replace("matchLabels: {app: b}", "matchLabels: {app: a}"),
    ));
    let p = profile_of(&policies, &[("app", "a")]);
    assert_eq!(
        p.deny,
        [Deny {
            nr: nr("unshare"),
            flags_arg: None,
            flags_mask: 0
        }]
    );
}

fn clauses(list: &[(u64, u32)]) -> Vec<Clause> {
    list.iter()
        .map(|&(flags_mask, actions)| Clause {
            flags_mask,
            actions,
        })
        .collect()
}

#[test]
fn clause_merging() {
    use crate::profile::merge_clauses;
    // Same mask: actions OR-ed.
    assert_eq!(
        merge_clauses(clauses(&[(1, REC), (1, CNT)])),
        Some(clauses(&[(1, CNT | REC)]))
    );
    // Same actions: masks OR-ed; with mask 0, every call.
    assert_eq!(
        merge_clauses(clauses(&[(1, REC), (4, REC), (2, KILL)])),
        Some(clauses(&[(2, KILL), (5, REC)]))
    );
    assert_eq!(
        merge_clauses(clauses(&[(1, REC), (0, REC)])),
        Some(clauses(&[(0, REC)]))
    );
    // Covered by mask 0 with a superset of actions: dropped; a kill is never dropped for a
    // record.
    assert_eq!(
        merge_clauses(clauses(&[(0, CNT | REC), (8, REC), (16, KILL)])),
        Some(clauses(&[(0, CNT | REC), (16, KILL)]))
    );
    // Covered by a wider mask with a superset of actions.
    assert_eq!(
        merge_clauses(clauses(&[(0o3, KILL), (0o1, REC)])),
        Some(clauses(&[(0o3, KILL)]))
    );
    // Merges cascade: same actions, then same mask.
    assert_eq!(
        merge_clauses(clauses(&[(1, REC), (2, REC), (3, KILL)])),
        Some(clauses(&[(3, KILL)]))
    );
    assert_eq!(merge_clauses(vec![]), Some(vec![]));
    // Five action sets on unrelated masks: more than MAX_CLAUSES.
    assert_eq!(
        merge_clauses(clauses(&[
            (1, CNT),
            (2, REC),
            (4, CNT | REC),
            (8, KILL),
            (16, CNT | KILL)
        ])),
        None
    );
}

#[test]
fn too_many_clauses_is_an_error() {
    let rules = [
        ("O_WRONLY", "count"),
        ("O_RDWR", "record"),
        ("O_CREAT", "count"),
        ("O_CREAT", "record"),
        ("O_EXCL", "kill"),
        ("O_TRUNC", "count"),
        ("O_TRUNC", "kill"),
    ]
    .iter()
    .map(|(flag, action)| {
        format!("  - {{syscalls: [openat], action: {action}, match: {{flags: [{flag}]}}}}\n")
    })
    .collect::<String>();
    let policies = parse_ok(&policy("p", &rules));
    let e = profile(&policies, &labels(&[("app", "p")])).expect_err("too many");
    assert_eq!(
        e.to_string(),
        "container needs more than 4 distinct flag matches for openat: selected by policy p; merge rules with the same action, or use fewer distinct flag sets"
    );
    // The same under a path prefix names the prefix.
    let with_path = rules.replace("match: {", "match: {pathPrefix: [/x/], ");
    let policies = parse_ok(&policy("p", &with_path));
    let e = profile(&policies, &labels(&[("app", "p")])).expect_err("too many");
    assert!(
        e.to_string()
            .contains("distinct flag matches for openat (path prefix \"/x/\")"),
        "{e}"
    );
}

#[test]
fn path_entries_fold_shorter_prefixes() {
    let policies = parse_ok(&policy(
        "p",
        "  - {syscalls: [openat], action: count, match: {pathPrefix: [/]}}\n\
         \x20 - {syscalls: [openat], action: record, match: {pathPrefix: [/etc/], flags: [O_WRONLY]}}\n\
         \x20 - {syscalls: [openat], action: kill, match: {pathPrefix: [/etc/shadow]}}\n\
         \x20 - {syscalls: [openat], action: record, match: {pathPrefix: [/etcd/]}}\n",
    ));
    let p = profile_of(&policies, &[("app", "p")]);
    let entries: Vec<(&[u8], Vec<Clause>)> = p.syscalls[&257]
        .paths
        .iter()
        .map(|e| (e.prefix.as_slice(), e.clauses.clone()))
        .collect();
    assert_eq!(
        entries,
        [
            (&b"/"[..], clauses(&[(0, CNT)])),
            (&b"/etc/"[..], clauses(&[(0, CNT), (1, REC)])),
            (&b"/etc/shadow"[..], clauses(&[(0, CNT | KILL)])),
            (&b"/etcd/"[..], clauses(&[(0, CNT | REC)])),
        ]
    );
    assert!(p.syscalls[&257].clauses.is_empty());
}

#[test]
fn profiles_deduplicate_by_value() {
    let policies = parse_ok(&format!(
        "{EXAMPLE}\n---\n{}",
        policy("other", "  - {syscalls: [kill], action: record}\n")
    ));
    let web1 = profile_of(&policies, &[("app", "web"), ("pod", "web-1")]);
    let web2 = profile_of(&policies, &[("app", "web"), ("pod", "web-2")]);
    let other = profile_of(&policies, &[("app", "other")]);
    assert_eq!(web1, web2);
    assert_ne!(web1, other);
    let distinct: HashSet<Profile> = [web1, web2, other].into_iter().collect();
    assert_eq!(distinct.len(), 2);
}

#[test]
fn kill_sets_record() {
    assert_eq!(Action::Kill.bits(), ACTION_KILL | ACTION_RECORD);
    assert_eq!(Action::Count.bits(), 1);
    assert_eq!(Action::Record.bits(), 2);
    assert_eq!(Action::Deny.bits(), 0);
}
