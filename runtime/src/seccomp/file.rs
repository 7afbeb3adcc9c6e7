//! Seccomp profile files: the OCI `linux.seccomp` object, or Docker's profile format.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompArg};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::{Result, SeccompError};
use super::template::{ArchMapEntry, Conditions, Environment, KernelVersion, Rule, Template};
use super::validate::validate;

/// Reads a seccomp profile and resolves it for a container whose bounding set holds
/// `capabilities` ("CAP_SYS_ADMIN"), then [`validate`]s it.
///
/// The file is either the OCI `linux.seccomp` object (`defaultAction`, `defaultErrnoRet`,
/// `architectures`, `flags`, `listenerPath`, `listenerMetadata`, `syscalls` with `names`,
/// `action`, `errnoRet`, `args`), or Docker's profile format, a superset of it: `archMap`
/// (the entry of the native architecture gives `architectures`), per-rule `includes`/`excludes`
/// with `caps`, `arches` (Docker's names: amd64, arm64, x86, …) and `minKernel`, the
/// deprecated single `name`, and `comment`s. `capabilities` only matter for the `caps`
/// conditions. containers/common's errno names (`defaultErrno`, `errno`) are not accepted.
///
/// Unknown fields are errors, so a misspelt field does not silently drop a restriction. Every
/// error names the file and the field (`syscalls[2].args[0].op`).
pub fn profile_from_file(path: &Path, capabilities: &[&str]) -> Result<LinuxSeccomp> {
    let text = std::fs::read_to_string(path).map_err(|source| SeccompError::ReadProfile {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value =
        serde_json::from_str(&text).map_err(|source| SeccompError::ParseProfile {
            path: path.to_path_buf(),
            source,
        })?;
    let template =
        template(&value).map_err(|FieldError { field, reason }| SeccompError::ProfileField {
            path: path.to_path_buf(),
            field,
            reason,
        })?;
    let seccomp = template.resolve(&Environment::current(capabilities));
    validate(&seccomp).map_err(|error| SeccompError::InvalidProfile {
        path: path.to_path_buf(),
        error: Box::new(error),
    })?;
    Ok(seccomp)
}

/// A field of the file and what is wrong with it.
#[derive(Debug)]
struct FieldError {
    field: String,
    reason: String,
}

type Parsed<T> = std::result::Result<T, FieldError>;

fn error<T>(field: &str, reason: impl Into<String>) -> Parsed<T> {
    Err(FieldError {
        field: field.to_string(),
        reason: reason.into(),
    })
}

/// The root field's name in messages.
const ROOT: &str = "(top level)";

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn object<'a>(value: &'a Value, field: &str, allowed: &[&str]) -> Parsed<&'a Map<String, Value>> {
    let Some(object) = value.as_object() else {
        return error(field, format!("expected an object, found {}", kind(value)));
    };
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            let prefix = if field == ROOT { "" } else { field };
            let reason = match key.as_str() {
                "defaultErrno" | "errno" => format!(
                    "errno names are not supported, use {} with a number",
                    if key == "errno" {
                        "errnoRet"
                    } else {
                        "defaultErrnoRet"
                    }
                ),
                _ => format!("unknown field, expected one of: {}", allowed.join(", ")),
            };
            return error(&join(prefix, key), reason);
        }
    }
    Ok(object)
}

/// The value of `key`, with JSON `null` treated as absent (as Go's decoder does).
fn get<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|v| !v.is_null())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value one of oci-spec's enums or structs deserialises from.
fn typed<T: DeserializeOwned>(value: &Value, field: &str) -> Parsed<T> {
    serde_json::from_value(value.clone()).or_else(|e| error(field, e.to_string()))
}

fn array<'a>(value: &'a Value, field: &str) -> Parsed<&'a Vec<Value>> {
    match value.as_array() {
        Some(items) => Ok(items),
        None => error(field, format!("expected an array, found {}", kind(value))),
    }
}

fn list<T>(
    value: &Value,
    field: &str,
    mut item: impl FnMut(&Value, &str) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    array(value, field)?
        .iter()
        .enumerate()
        .map(|(i, v)| item(v, &format!("{field}[{i}]")))
        .collect()
}

fn string(value: &Value, field: &str) -> Parsed<String> {
    match value.as_str() {
        Some(s) => Ok(s.to_string()),
        None => error(field, format!("expected a string, found {}", kind(value))),
    }
}

fn u32_value(value: &Value, field: &str) -> Parsed<u32> {
    match value.as_u64().map(u32::try_from) {
        Some(Ok(n)) => Ok(n),
        _ => error(field, format!("expected an integer from 0 to {}", u32::MAX)),
    }
}

fn template(value: &Value) -> Parsed<Template> {
    let root = object(
        value,
        ROOT,
        &[
            "defaultAction",
            "defaultErrnoRet",
            "architectures",
            "archMap",
            "flags",
            "listenerPath",
            "listenerMetadata",
            "syscalls",
        ],
    )?;
    let Some(default_action) = get(root, "defaultAction") else {
        return error("defaultAction", "missing");
    };
    let architectures = get(root, "architectures")
        .map(|v| list(v, "architectures", typed::<Arch>))
        .transpose()?;
    let arch_map = get(root, "archMap")
        .map(|v| list(v, "archMap", arch_map_entry))
        .transpose()?
        .unwrap_or_default();
    if architectures.as_ref().is_some_and(|a| !a.is_empty()) && !arch_map.is_empty() {
        return error("archMap", "architectures and archMap are both set, use one");
    }
    Ok(Template {
        default_action: typed(default_action, "defaultAction")?,
        default_errno_ret: get(root, "defaultErrnoRet")
            .map(|v| u32_value(v, "defaultErrnoRet"))
            .transpose()?,
        architectures,
        arch_map,
        flags: get(root, "flags")
            .map(|v| list(v, "flags", typed))
            .transpose()?,
        listener_path: get(root, "listenerPath")
            .map(|v| string(v, "listenerPath").map(PathBuf::from))
            .transpose()?,
        listener_metadata: get(root, "listenerMetadata")
            .map(|v| string(v, "listenerMetadata"))
            .transpose()?,
        rules: get(root, "syscalls")
            .map(|v| list(v, "syscalls", rule))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn arch_map_entry(value: &Value, field: &str) -> Parsed<ArchMapEntry> {
    let entry = object(value, field, &["architecture", "subArchitectures"])?;
    let arch_field = join(field, "architecture");
    let Some(arch) = get(entry, "architecture") else {
        return error(&arch_field, "missing");
    };
    let sub_field = join(field, "subArchitectures");
    Ok(ArchMapEntry {
        arch: typed(arch, &arch_field)?,
        sub_arches: get(entry, "subArchitectures")
            .map(|v| list(v, &sub_field, typed::<Arch>))
            .transpose()?
            .unwrap_or_default(),
    })
}

fn rule(value: &Value, field: &str) -> Parsed<Rule> {
    let object = object(
        value,
        field,
        &[
            "names", "name", "action", "errnoRet", "args", "comment", "includes", "excludes",
        ],
    )?;
    let names_field = join(field, "names");
    let mut names = get(object, "names")
        .map(|v| list(v, &names_field, string))
        .transpose()?
        .unwrap_or_default();
    if let Some(name) = get(object, "name") {
        let name_field = join(field, "name");
        if !names.is_empty() {
            return error(&name_field, "name and names are both set, use names");
        }
        names.push(string(name, &name_field)?);
    }
    let action_field = join(field, "action");
    let Some(action) = get(object, "action") else {
        return error(&action_field, "missing");
    };
    let errno_field = join(field, "errnoRet");
    let args_field = join(field, "args");
    Ok(Rule {
        names,
        action: typed(action, &action_field)?,
        errno_ret: get(object, "errnoRet")
            .map(|v| u32_value(v, &errno_field))
            .transpose()?,
        args: get(object, "args")
            .map(|v| list(v, &args_field, seccomp_arg))
            .transpose()?
            .unwrap_or_default(),
        includes: conditions(object, &join(field, "includes"), "includes")?,
        excludes: conditions(object, &join(field, "excludes"), "excludes")?,
    })
}

fn seccomp_arg(value: &Value, field: &str) -> Parsed<LinuxSeccompArg> {
    let object = object(value, field, &["index", "value", "valueTwo", "op"])?;
    for key in ["index", "value", "op"] {
        if get(object, key).is_none() {
            return error(&join(field, key), "missing");
        }
    }
    for key in ["index", "value", "valueTwo"] {
        if let Some(v) = get(object, key)
            && v.as_u64().is_none()
        {
            return error(
                &join(field, key),
                format!("expected an integer from 0 to {}", u64::MAX),
            );
        }
    }
    typed(value, field)
}

fn conditions(rule: &Map<String, Value>, field: &str, key: &str) -> Parsed<Conditions> {
    let Some(value) = get(rule, key) else {
        return Ok(Conditions::default());
    };
    let object = object(value, field, &["caps", "arches", "minKernel"])?;
    let strings = |key: &str| -> Parsed<Vec<String>> {
        get(object, key)
            .map(|v| list(v, &join(field, key), string))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let min_field = join(field, "minKernel");
    let min_kernel = match get(object, "minKernel") {
        None => None,
        Some(v) => {
            let text = string(v, &min_field)?;
            match KernelVersion::parse(&text) {
                Some(version) if !text.contains('-') => Some(version),
                _ => {
                    return error(
                        &min_field,
                        format!("{text:?} is not a \"major.minor\" version"),
                    );
                }
            }
        }
    };
    Ok(Conditions {
        caps: strings("caps")?,
        arches: strings("arches")?,
        min_kernel,
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use std::path::PathBuf;

    use oci_spec::runtime::{Arch, LinuxSeccompAction};
    use tempfile::TempDir;

    use super::*;
    use crate::seccomp::arch;
    use crate::seccomp::template::docker_arch_name;

    fn write(json: &str) -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    fn field_error(json: &str) -> (String, String) {
        let (_dir, path) = write(json);
        match profile_from_file(&path, &[]) {
            Err(SeccompError::ProfileField {
                path: p,
                field,
                reason,
            }) => {
                assert_eq!(p, path);
                (field, reason)
            }
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    fn names(seccomp: &LinuxSeccomp) -> Vec<Vec<String>> {
        seccomp
            .syscalls()
            .iter()
            .flatten()
            .map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn oci_shaped_file_reads_as_oci_spec_parses_it() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_AARCH64"],
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
            "syscalls": [
                {"names": ["getpid", "read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]
        }"#;
        let (_dir, path) = write(json);
        let parsed = profile_from_file(&path, &[]).unwrap();
        let expected: LinuxSeccomp = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, expected);
    }

    #[test]
    fn docker_format_is_resolved_for_this_host_and_capabilities() {
        let native = docker_arch_name(arch::native().oci);
        let json = format!(
            r#"{{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "archMap": [
                {{"architecture": "SCMP_ARCH_X86_64",
                  "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}},
                {{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}},
                {{"architecture": "SCMP_ARCH_RISCV64", "subArchitectures": null}}
            ],
            "syscalls": [
                {{"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "comment": "always"}},
                {{"name": "getppid", "action": "SCMP_ACT_ALLOW"}},
                {{"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                  "includes": {{"caps": ["CAP_SYS_ADMIN"]}}}},
                {{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                  "excludes": {{"caps": ["CAP_SYS_ADMIN"]}}}},
                {{"names": ["gettid"], "action": "SCMP_ACT_ALLOW",
                  "includes": {{"arches": ["{native}"], "minKernel": "4.8"}}}},
                {{"names": ["uname"], "action": "SCMP_ACT_ALLOW",
                  "includes": {{"arches": ["not-this-arch"]}}}},
                {{"names": ["sysinfo"], "action": "SCMP_ACT_ALLOW",
                  "includes": {{"minKernel": "99.0"}}}},
                {{"names": ["times"], "action": "SCMP_ACT_ALLOW",
                  "excludes": {{"arches": ["{native}"]}}}}
            ]
        }}"#
        );
        let (_dir, path) = write(&json);

        let plain = profile_from_file(&path, &["CAP_CHOWN"]).unwrap();
        let expected_arches = match arch::native().oci {
            Arch::ScmpArchX86_64 => Some(vec![
                Arch::ScmpArchX86_64,
                Arch::ScmpArchX86,
                Arch::ScmpArchX32,
            ]),
            Arch::ScmpArchAarch64 => Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]),
            Arch::ScmpArchRiscv64 => Some(vec![Arch::ScmpArchRiscv64]),
            _ => None,
        };
        assert_eq!(plain.architectures(), &expected_arches);
        assert_eq!(
            names(&plain),
            [["getpid"], ["getppid"], ["clone3"], ["gettid"]]
        );
        let clone3 = &plain.syscalls().as_ref().unwrap()[2];
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(38));

        let admin = profile_from_file(&path, &["CAP_SYS_ADMIN"]).unwrap();
        assert_eq!(
            names(&admin),
            [["getpid"], ["getppid"], ["mount"], ["gettid"]]
        );
    }

    #[test]
    fn read_and_json_errors_name_the_file() {
        let missing = Path::new("/nonexistent/berth-seccomp.json");
        let e = profile_from_file(missing, &[]).unwrap_err();
        assert!(matches!(e, SeccompError::ReadProfile { .. }), "{e:?}");
        assert!(
            e.to_string().contains("/nonexistent/berth-seccomp.json"),
            "{e}"
        );

        let (_dir, path) = write("{\"defaultAction\": ");
        let e = profile_from_file(&path, &[]).unwrap_err();
        assert!(matches!(e, SeccompError::ParseProfile { .. }), "{e:?}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn bad_values_are_errors_naming_the_field() {
        let (field, reason) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["getppid"], "action": "SCMP_ACT_FOO"}]}"#,
        );
        assert_eq!(field, "syscalls[1].action");
        assert!(reason.contains("SCMP_ACT_FOO"), "{reason}");

        let (field, reason) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_FOO"]}"#,
        );
        assert_eq!(field, "architectures[1]");
        assert!(reason.contains("SCMP_ARCH_FOO"), "{reason}");

        let (field, _) = field_error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["TSYNC"]}"#);
        assert_eq!(field, "flags[0]");

        let (field, reason) = field_error(r#"{"syscalls": []}"#);
        assert_eq!(
            (field.as_str(), reason.as_str()),
            ("defaultAction", "missing")
        );

        let (field, reason) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
                "action": "SCMP_ACT_ERRNO", "args": [{"index": "1", "value": 0,
                "op": "SCMP_CMP_EQ"}]}]}"#,
        );
        assert_eq!(field, "syscalls[0].args[0].index");
        assert!(reason.contains("integer"), "{reason}");

        let (field, _) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
                "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 0}]}]}"#,
        );
        assert_eq!(field, "syscalls[0].args[0].op");

        let (field, _) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
                "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]}"#,
        );
        assert_eq!(field, "syscalls[0].errnoRet");
    }

    #[test]
    fn unknown_and_conflicting_fields_are_errors() {
        let (field, reason) =
            field_error(r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoret": 1}"#);
        assert_eq!(field, "defaultErrnoret");
        assert!(reason.contains("defaultErrnoRet"), "{reason}");

        let (field, reason) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errno": "EPERM"}]}"#,
        );
        assert_eq!(field, "syscalls[0].errno");
        assert!(reason.contains("errnoRet"), "{reason}");

        let (field, _) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"name": "getpid", "names": ["getppid"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        assert_eq!(field, "syscalls[0].name");

        let (field, _) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
        );
        assert_eq!(field, "archMap");

        let (field, _) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
                "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "4.x"}}]}"#,
        );
        assert_eq!(field, "syscalls[0].includes.minKernel");

        let (field, _) = field_error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"],
                "action": "SCMP_ACT_ERRNO", "excludes": {"kernel": "4.8"}}]}"#,
        );
        assert_eq!(field, "syscalls[0].excludes.kernel");
    }

    #[test]
    fn invalid_profiles_are_errors_naming_file_and_field() {
        let (_dir, path) = write(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        let e = profile_from_file(&path, &[]).unwrap_err();
        let message = e.to_string();
        assert!(
            matches!(&e, SeccompError::InvalidProfile { error, .. }
                if matches!(**error, SeccompError::UnknownSyscall { .. })),
            "{e:?}"
        );
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("syscalls[0].names[0]")
                && message.contains("no_such_syscall"),
            "{message}"
        );
    }
}
