//! OCI lifecycle hooks: each runs with the container's state JSON on stdin, its own args and
//! env, and an optional timeout after which it is killed and the operation fails.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use oci_spec::runtime::Hook;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: {message}")]
    Failed {
        kind: &'static str,
        path: String,
        message: String,
    },
}

/// Runs `hooks` of lifecycle point `kind` in order; the first failure stops the rest.
pub fn run(
    kind: &'static str,
    hooks: Option<&Vec<Hook>>,
    state_json: &[u8],
) -> Result<(), HookError> {
    for hook in hooks.into_iter().flatten() {
        run_one(kind, hook, state_json)?;
    }
    Ok(())
}

fn run_one(kind: &'static str, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let fail = |message: String| HookError::Failed {
        kind,
        path: path.clone(),
        message,
    };
    let args = hook.args().clone().unwrap_or_else(|| vec![path.clone()]);
    let mut cmd = Command::new(hook.path());
    if let Some((argv0, rest)) = args.split_first() {
        use std::os::unix::process::CommandExt as _;
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|kv| kv.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state_json);
    }
    let deadline = hook
        .timeout()
        .map(|secs| Instant::now() + Duration::from_secs(secs.max(1) as u64));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    return Ok(());
                }
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    use std::io::Read as _;
                    let _ = err.read_to_string(&mut stderr);
                }
                return Err(fail(format!("{status}: {}", stderr.trim())));
            }
            Ok(None) => {}
            Err(e) => return Err(fail(format!("waiting: {e}"))),
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {}s",
                hook.timeout().unwrap_or(0)
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: serde_json::Value) -> Hook {
        serde_json::from_value(json).expect("hook")
    }

    #[test]
    fn hooks_get_state_on_stdin_and_failures_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("state");
        let ok = hook(serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}", out.display())],
        }));
        run("prestart", Some(&vec![ok]), br#"{"id":"x"}"#).expect("runs");
        assert_eq!(
            std::fs::read_to_string(&out).expect("written"),
            r#"{"id":"x"}"#
        );

        let bad = hook(
            serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo boom >&2; exit 3"]}),
        );
        let err = run("poststart", Some(&vec![bad]), b"{}")
            .expect_err("fails")
            .to_string();
        assert!(err.contains("poststart") && err.contains("boom"), "{err}");

        let slow =
            hook(serde_json::json!({"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}));
        let started = Instant::now();
        let err = run("createRuntime", Some(&vec![slow]), b"{}")
            .expect_err("times out")
            .to_string();
        assert!(err.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
}
