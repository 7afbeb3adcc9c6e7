//! `linux.cgroupsPath` → the container's path relative to each hierarchy's root.

use std::path::{Component, Path, PathBuf};

use super::error::{Error, Result};

/// The parent of every cgroup berth creates for a relative or empty `cgroupsPath`.
pub const DEFAULT_PARENT: &str = "berth";

/// Resolves OCI `linux.cgroupsPath` for `container_id` to a path relative to a hierarchy root.
///
/// - empty → `berth/<id>`;
/// - absolute (`/a/b`) → `a/b`, i.e. relative to the root of every hierarchy;
/// - relative (`a/b`) → `berth/a/b`, under the runtime's default parent;
/// - `slice:prefix:name` (systemd driver syntax) → [`Error::SystemdPath`].
///
/// `..` is refused so a path can never leave the cgroup root; `.` and repeated slashes are
/// dropped.
pub fn resolve(cgroups_path: &str, container_id: &str) -> Result<PathBuf> {
    validate_id(container_id)?;
    if cgroups_path.is_empty() {
        return Ok(Path::new(DEFAULT_PARENT).join(container_id));
    }
    if !cgroups_path.starts_with('/') && cgroups_path.split(':').count() == 3 {
        return Err(Error::SystemdPath {
            path: cgroups_path.to_owned(),
        });
    }
    let invalid = |reason| Error::InvalidPath {
        path: cgroups_path.to_owned(),
        reason,
    };
    let mut rel = PathBuf::new();
    for comp in Path::new(cgroups_path).components() {
        match comp {
            Component::Normal(name) => rel.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(invalid("\"..\" would leave the cgroup root")),
            Component::Prefix(_) => return Err(invalid("not a unix path")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(invalid(
            "it names the root cgroup, which a container cannot own",
        ));
    }
    if cgroups_path.starts_with('/') {
        Ok(rel)
    } else {
        Ok(Path::new(DEFAULT_PARENT).join(rel))
    }
}

fn validate_id(id: &str) -> Result<()> {
    let invalid = |reason| Error::InvalidId {
        id: id.to_owned(),
        reason,
    };
    if id.is_empty() {
        return Err(invalid("it is empty"));
    }
    if id == "." || id == ".." {
        return Err(invalid("it is a relative path component"));
    }
    if id.contains('/') || id.contains('\0') {
        return Err(invalid("it contains '/' or NUL"));
    }
    Ok(())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    #[test]
    fn empty_path_goes_under_the_default_parent() {
        assert_eq!(resolve("", "c1").unwrap(), Path::new("berth/c1"));
    }

    #[test]
    fn absolute_path_is_relative_to_each_root() {
        assert_eq!(
            resolve("/kubepods/pod1/c1", "c1").unwrap(),
            Path::new("kubepods/pod1/c1")
        );
        assert_eq!(resolve("//a/./b/", "c1").unwrap(), Path::new("a/b"));
    }

    #[test]
    fn relative_path_goes_under_the_default_parent() {
        assert_eq!(
            resolve("tenant/c1", "c1").unwrap(),
            Path::new("berth/tenant/c1")
        );
        assert_eq!(resolve("x", "c1").unwrap(), Path::new("berth/x"));
    }

    #[test]
    fn systemd_paths_are_rejected_clearly() {
        let err = resolve("system.slice:docker:abc", "abc").unwrap_err();
        assert!(matches!(err, Error::SystemdPath { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("systemd cgroup driver not supported"),
            "{err}"
        );
        // An absolute path with colons is a plain (if odd) cgroupfs path.
        assert_eq!(resolve("/a:b:c", "c1").unwrap(), Path::new("a:b:c"));
    }

    #[test]
    fn paths_that_escape_or_name_the_root_are_rejected() {
        for bad in ["/", "/../etc", "a/../../b", "."] {
            let err = resolve(bad, "c1").unwrap_err();
            assert!(matches!(err, Error::InvalidPath { .. }), "{bad}: {err:?}");
        }
    }

    #[test]
    fn container_ids_must_be_one_path_component() {
        for bad in ["", ".", "..", "a/b"] {
            let err = resolve("", bad).unwrap_err();
            assert!(matches!(err, Error::InvalidId { .. }), "{bad:?}: {err:?}");
        }
    }
}
