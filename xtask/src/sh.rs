//! Running commands loudly: each is echoed before it runs, and a failure names the command.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Runs `program args…` with inherited stdio; fails if it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs `cmd` (already configured) loudly; fails if it exits non-zero.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("`{cmd:?}` failed: {status}");
    }
    Ok(())
}

/// Runs `program args…` quietly and returns its stdout if it succeeded, `None` if it failed or
/// does not exist.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counts of one or more `cargo test` runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Runs `cargo test args…`, passing its output through, and adds up its `test result:` lines.
/// Fails if cargo fails.
pub fn cargo_test(args: &[&str], counts: &mut TestCounts) -> Result<()> {
    use std::io::{BufRead as _, BufReader};

    eprintln!("+ cargo test {}", args.join(" "));
    let mut child = Command::new("cargo")
        .arg("test")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            counts.passed += count_of(result, "passed");
            counts.failed += count_of(result, "failed");
            counts.ignored += count_of(result, "ignored");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`cargo test {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

/// `N` from "… N <word>; …" in a libtest summary.
fn count_of(summary: &str, word: &str) -> u64 {
    summary
        .split(';')
        .filter_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_of;

    #[test]
    fn reads_libtest_summaries() {
        let ok = "ok. 8 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(count_of(ok, "passed"), 8);
        assert_eq!(count_of(ok, "ignored"), 1);
        let bad = "FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_of(bad, "passed"), 2);
        assert_eq!(count_of(bad, "failed"), 3);
    }
}
