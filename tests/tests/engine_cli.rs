//! The daemonless CLI end to end: `berth image import`, `run` (foreground and detached), `ps`,
//! `logs`, `exec`, `inspect`, `stop`, `rm`, with the static checker reporting from inside, and
//! the CONTAINERS map recording each container by cgroup id.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use aya::maps::{HashMap, Map, MapData};
use berth_common::ContainerRecord;
use berth_tests::{
    agent::berth_bin,
    bundle::{cgroup_limit, checker_bin},
    privileged::require_root,
};
use serde_json::Value;

/// A private engine: state, runtime root and pin root of its own, removed on drop.
struct Env {
    dir: tempfile::TempDir,
    pin_root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-engine-")
            .tempdir()
            .expect("tempdir");
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/berth-test-engine-{}",
            berth_tests::unique_suffix()
        ));
        Env { dir, pin_root }
    }

    fn berth(&self, args: &[&str]) -> Output {
        Command::new(berth_bin().expect("berth"))
            .args(args)
            .env("BERTH_ROOT", self.dir.path().join("root"))
            .env("BERTH_RUNTIME_ROOT", self.dir.path().join("runtime"))
            .env("BERTH_PIN_ROOT", &self.pin_root)
            .env("BERTH_API_SOCKET", self.dir.path().join("no-agent.sock"))
            .output()
            .expect("berth")
    }

    /// For commands that leave a container behind: stdio to files (the monitor keeps pipes open).
    fn berth_detached(&self, args: &[&str]) -> Output {
        let out = self.dir.path().join("cmd.out");
        let err = self.dir.path().join("cmd.err");
        let status = Command::new(berth_bin().expect("berth"))
            .args(args)
            .env("BERTH_ROOT", self.dir.path().join("root"))
            .env("BERTH_RUNTIME_ROOT", self.dir.path().join("runtime"))
            .env("BERTH_PIN_ROOT", &self.pin_root)
            .env("BERTH_API_SOCKET", self.dir.path().join("no-agent.sock"))
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err"))
            .status()
            .expect("berth");
        Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        }
    }

    /// A busybox + /checker image named `test/busybox:1`.
    fn import_image(&self) {
        let rootfs = self.dir.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox");
        for applet in ["sh", "true", "sleep", "echo", "cat", "env"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet");
        }
        std::fs::copy(checker_bin().expect("checker"), rootfs.join("checker")).expect("checker");
        let tar = self.dir.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success());
        let out = self.berth(&[
            "image",
            "import",
            tar.to_str().expect("utf-8"),
            "test/busybox:1",
        ]);
        assert!(out.status.success(), "import: {}", text(&out.stderr));
    }

    fn map_entry(&self, cgroup_id: u64) -> Option<ContainerRecord> {
        let pin = self.pin_root.join("maps/CONTAINERS");
        let data = MapData::from_pin(&pin).ok()?;
        let map: HashMap<MapData, u64, ContainerRecord> =
            HashMap::try_from(Map::HashMap(data)).ok()?;
        map.get(&cgroup_id, 0).ok()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let out = self.berth(&["ps", "-a", "--format", "json"]);
        if let Ok(list) = serde_json::from_slice::<Vec<Value>>(&out.stdout) {
            for c in list {
                if let Some(id) = c["id"].as_str() {
                    let _ = self.berth(&["rm", "-f", id]);
                }
            }
        }
        let _ = berth::dataplane::cleanup(&berth::dataplane::PinLayout::new(&self.pin_root));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mounts_under(dir: &Path) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap_or("//")))
        .count()
}

#[test]
fn foreground_run_returns_the_exit_code_and_keeps_the_output() {
    if !require_root("foreground_run_returns_the_exit_code_and_keeps_the_output") {
        return;
    }
    let env = Env::new();
    env.import_image();
    let out = env.berth(&[
        "run",
        "--name",
        "fg",
        "-e",
        "GREETING=hello",
        "test/busybox:1",
        "/bin/sh",
        "-c",
        "echo $GREETING; echo oops >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\n");
    assert!(text(&out.stderr).contains("oops"));
    let logs = env.berth(&["logs", "fg"]);
    assert!(text(&logs.stdout).contains("hello") && text(&logs.stdout).contains("oops"));
    let ps = env.berth(&["ps", "-a", "--format", "json"]);
    let list: Vec<Value> = serde_json::from_slice(&ps.stdout).expect("ps json");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "Exited (7)");
    assert_eq!(list[0]["exit_code"], 7);

    // --rm leaves nothing.
    let out = env.berth(&["run", "--rm", "test/busybox:1", "/bin/true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps = env.berth(&["ps", "-a", "--format", "json"]);
    let list: Vec<Value> = serde_json::from_slice(&ps.stdout).expect("ps json");
    assert_eq!(list.len(), 1, "the --rm container is gone: {list:?}");
}

#[test]
fn detached_container_is_limited_recorded_and_removed() {
    if !require_root("detached_container_is_limited_recorded_and_removed") {
        return;
    }
    let env = Env::new();
    env.import_image();
    let out = env.berth_detached(&[
        "run",
        "-d",
        "--name",
        "web",
        "--label",
        "app=web",
        "--label",
        "tier=front",
        "--memory",
        "64m",
        "--pids",
        "40",
        "--cpus",
        "0.5",
        "test/busybox:1",
        "/bin/sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 64, "run -d prints the id: {id:?}");

    // What the container sees, through exec.
    let out = env.berth(&["exec", "web", "/checker", "--probe-denied", "unshare"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let cg = &report["cgroup"];
    let memory = cgroup_limit(&report, "memory.max", "memory/memory.limit_in_bytes");
    assert_eq!(memory, Some("67108864"), "{cg}");
    let pids = cgroup_limit(&report, "pids.max", "pids/pids.max");
    assert_eq!(pids, Some("40"));
    assert_eq!(report["seccomp"], "2", "Docker's default profile is on");
    assert_eq!(
        report["probe"]["errno"],
        libc::EPERM,
        "unshare denied without CAP_SYS_ADMIN"
    );
    // Docker's 14 default capabilities: 0xa80425fb.
    assert_eq!(report["cap_bnd"], "00000000a80425fb");
    assert_eq!(report["masked"]["/proc/keys"], "empty");

    // ps, inspect, and the data-plane record keyed by cgroup id.
    let ps = env.berth(&["ps", "--format", "json"]);
    let list: Vec<Value> = serde_json::from_slice(&ps.stdout).expect("ps json");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["status"], "Up");
    assert_eq!(list[0]["labels"]["app"], "web");
    let inspect: Value =
        serde_json::from_slice(&env.berth(&["inspect", "web"]).stdout).expect("inspect");
    assert_eq!(inspect["Id"], id.as_str());
    assert_eq!(inspect["Labels"]["tier"], "front");
    assert_eq!(inspect["State"]["Status"], "running");
    let cgroup_id = inspect["CgroupId"].as_u64().expect("cgroup id");
    assert!(cgroup_id > 0);
    assert!(
        env.map_entry(cgroup_id).is_some(),
        "CONTAINERS map records the container"
    );
    // The cgroup id is the one the kernel gives the container's processes.
    let pid = inspect["State"]["Pid"].as_i64().expect("pid");
    let cgroup_line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let v2_path = cgroup_line
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("v2 entry");
    let v2_root = if Path::new("/sys/fs/cgroup/unified").exists() {
        "/sys/fs/cgroup/unified"
    } else {
        "/sys/fs/cgroup"
    };
    let ino = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("{v2_root}{v2_path}")).expect("cgroup dir"),
    );
    assert_eq!(ino, cgroup_id);

    // stop: sleep ignores SIGTERM as pid 1, so SIGKILL after the timeout.
    let out = env.berth(&["stop", "-t", "1", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps = env.berth(&["ps", "-a", "--format", "json"]);
    let list: Vec<Value> = serde_json::from_slice(&ps.stdout).expect("ps json");
    assert_eq!(list[0]["status"], "Exited (137)");

    let root = env.dir.path().join("root");
    // One unknown name does not stop the others (docker's behaviour), but fails the command.
    let out = env.berth(&["rm", "no-such-container", "web"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such container: no-such-container"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout).trim(), "web");
    assert!(
        env.map_entry(cgroup_id).is_none(),
        "record removed with the container"
    );
    assert_eq!(mounts_under(&root), 0, "rootfs unmounted");
    assert!(!root.join("containers").join(&id).exists());
}

#[test]
fn seccomp_profile_choice_is_honoured() {
    if !require_root("seccomp_profile_choice_is_honoured") {
        return;
    }
    let env = Env::new();
    env.import_image();
    let out = env.berth(&[
        "run",
        "--rm",
        "--seccomp-profile",
        "unconfined",
        "test/busybox:1",
        "/checker",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["seccomp"], "0");

    let profile = env.dir.path().join("deny-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .expect("profile");
    let out = env.berth(&[
        "run",
        "--rm",
        "--seccomp-profile",
        profile.to_str().expect("utf-8"),
        "test/busybox:1",
        "/checker",
        "--probe-denied",
        "mkdirat",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(report["probe"]["errno"], libc::EPERM);
}

#[test]
fn bad_input_fails_with_125_and_leaves_nothing_behind() {
    if !require_root("bad_input_fails_with_125_and_leaves_nothing_behind") {
        return;
    }
    let env = Env::new();
    env.import_image();
    let root = env.dir.path().join("root");
    for (args, needle) in [
        (vec!["run", "no/such:image"], "no/such"),
        (
            vec!["run", "--memory", "lots", "test/busybox:1"],
            "--memory",
        ),
        (vec!["run", "--cpus", "0", "test/busybox:1"], "--cpus"),
        (
            vec!["run", "--name", "bad name", "test/busybox:1"],
            "invalid container name",
        ),
        (vec!["run", "-e", "=x", "test/busybox:1"], "--env"),
        (
            vec!["run", "test/busybox:1", "/no/such/program"],
            "/no/such/program",
        ),
    ] {
        let out = env.berth(&args);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let ps = env.berth(&["ps", "-a", "--format", "json"]);
    let list: Vec<Value> = serde_json::from_slice(&ps.stdout).expect("ps json");
    assert!(list.is_empty(), "{list:?}");
    assert_eq!(mounts_under(&root), 0);

    // Names are unique.
    assert!(
        env.berth(&["run", "--name", "once", "test/busybox:1", "/bin/true"])
            .status
            .success()
    );
    let out = env.berth(&["run", "--name", "once", "test/busybox:1", "/bin/true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("already in use"),
        "{}",
        text(&out.stderr)
    );
}
