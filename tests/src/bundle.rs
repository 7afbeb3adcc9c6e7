//! OCI bundles for runtime tests: a busybox root filesystem with the static `berth-checker`
//! binary at `/checker`, and a config.json from `berth-runc spec` that tests then edit as JSON.
//! Runs go through the `berth-runc` binary, exactly as Podman or containerd would drive it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::agent::berth_bin;

/// `berth-runc` next to `berth`.
pub fn runc_bin() -> anyhow::Result<PathBuf> {
    let berth = berth_bin()?;
    let runc = berth.with_file_name("berth-runc");
    if !runc.exists() {
        bail!(
            "{} not found: build it first (`cargo xtask test` does)",
            runc.display()
        );
    }
    Ok(runc)
}

/// The static checker binary (`cargo xtask test` builds it; `$BERTH_CHECKER` overrides).
pub fn checker_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BERTH_CHECKER") {
        return Ok(path.into());
    }
    let berth = berth_bin()?;
    // target/<profile>/berth → target/checker/x86_64-unknown-linux-gnu/release/berth-checker
    let target = berth
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?;
    let path = target.join("checker/x86_64-unknown-linux-gnu/release/berth-checker");
    if !path.exists() {
        bail!(
            "{} not found: `cargo xtask test` builds it statically (cargo build -p berth-checker --release --target x86_64-unknown-linux-gnu with -C target-feature=+crt-static)",
            path.display()
        );
    }
    Ok(path)
}

/// A bundle and a private runtime root, both removed on drop (after deleting any container the
/// test left behind).
pub struct TestBundle {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub config: Value,
    ids: std::cell::RefCell<Vec<String>>,
}

impl TestBundle {
    /// busybox (sh and a few applets) + /checker, config.json from `berth-runc spec` with the
    /// terminal off and `/checker` as the process.
    pub fn busybox() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("berth-bundle-").tempdir()?;
        let rootfs = dir.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .context("copying /bin/busybox (install busybox-static)")?;
        for applet in [
            "sh", "true", "false", "sleep", "cat", "echo", "ls", "id", "mkdir", "touch", "ps",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        std::fs::copy(checker_bin()?, rootfs.join("checker"))?;
        std::fs::create_dir_all(rootfs.join("etc"))?;
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000:tester:/home/tester:/bin/sh\n",
        )?;
        let out = Command::new(runc_bin()?)
            .args(["spec", "--bundle"])
            .arg(dir.path())
            .output()?;
        if !out.status.success() {
            bail!("berth-runc spec: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(["/checker"]);
        let root = dir.path().join("state");
        Ok(Self {
            dir,
            root,
            config,
            ids: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the (edited) config.json.
    pub fn save(&self) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config)?,
        )?;
        Ok(())
    }

    /// `berth-runc --root <root> ARGS`, remembering container ids for clean-up.
    pub fn runc(&self, args: &[&str]) -> anyhow::Result<Output> {
        if let Some(id) = args.last() {
            self.ids.borrow_mut().push((*id).to_owned());
        }
        Ok(Command::new(runc_bin()?)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .output()?)
    }

    /// `berth-runc` for commands that leave a container process behind (`create`, `run -d`,
    /// `exec -d`): the container inherits the command's stdout/stderr, so they go to files
    /// rather than pipes (a pipe would stay open, and reading it to EOF would block).
    pub fn runc_detached(&self, args: &[&str]) -> anyhow::Result<Output> {
        if let Some(id) = args.last() {
            self.ids.borrow_mut().push((*id).to_owned());
        }
        let out_path = self.dir.path().join("detached.out");
        let err_path = self.dir.path().join("detached.err");
        let status = Command::new(runc_bin()?)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?)
            .status()?;
        Ok(Output {
            status,
            stdout: std::fs::read(&out_path)?,
            stderr: std::fs::read(&err_path)?,
        })
    }

    /// Saves the config and `run`s it in the foreground; returns the output.
    pub fn run(&self, id: &str) -> anyhow::Result<Output> {
        self.save()?;
        let bundle = self.path().to_str().context("utf-8 path")?.to_owned();
        self.runc(&["run", "--bundle", &bundle, id])
    }

    /// Runs the checker and parses its report.
    pub fn check(&self, id: &str) -> anyhow::Result<Value> {
        let out = self.run(id)?;
        if !out.status.success() {
            bail!(
                "container {id} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("checker output: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

impl Drop for TestBundle {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = Command::new(runc_bin().unwrap_or_default())
                .arg("--root")
                .arg(&self.root)
                .args(["delete", "--force", id])
                .output();
        }
    }
}

/// A cgroup limit from a checker report, whichever hierarchy the host has: the v2 file
/// (`memory.max`) or the v1 one (`memory/memory.limit_in_bytes`).
pub fn cgroup_limit<'a>(report: &'a Value, v2_file: &str, v1_file: &str) -> Option<&'a str> {
    let cg = &report["cgroup"];
    cg[format!("/sys/fs/cgroup/{v2_file}").as_str()]
        .as_str()
        .or(cg[format!("/sys/fs/cgroup/{v1_file}").as_str()].as_str())
}
