//! The OCI runtime end to end: `berth-runc` runs the static checker inside containers, and the
//! tests compare what it reports with the spec that launched it.

use std::{process::Command, time::Duration};

use berth_tests::{
    bundle::{TestBundle, cgroup_limit},
    privileged::require_root,
};
use serde_json::{Value, json};

fn cap_bits(names: &[u32]) -> String {
    let mask: u64 = names.iter().map(|b| 1u64 << b).sum();
    format!("{mask:016x}")
}

const CAP_KILL: u32 = 5;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_container_sees_what_its_spec_says() {
    if !require_root("the_container_sees_what_its_spec_says") {
        return;
    }
    let mut b = TestBundle::busybox().expect("bundle");
    let c = &mut b.config;
    c["hostname"] = json!("checker-host");
    c["domainname"] = json!("example.test");
    c["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 23});
    c["process"]["cwd"] = json!("/work/dir");
    c["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    c["process"]["noNewPrivileges"] = json!(true);
    c["process"]["oomScoreAdj"] = json!(100);
    c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}]);
    let caps = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    c["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"],
        "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps,
    });
    c["linux"]["resources"] = json!({
        "memory": {"limit": 67108864},
        "pids": {"limit": 32},
        "cpu": {"quota": 50000, "period": 100000},
    });
    c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    c["root"]["readonly"] = json!(true);
    let report = b.check("spec-check").expect("checker runs");

    assert_eq!(report["uid"], 1000);
    assert_eq!(report["gid"], 1000);
    assert_eq!(report["groups"], "10 20");
    assert_eq!(report["umask"], 23);
    assert_eq!(report["hostname"], "checker-host");
    assert_eq!(report["domainname"], "example.test");
    assert_eq!(report["cwd"], "/work/dir");
    let env: Vec<String> = serde_json::from_value(report["env"].clone()).expect("env");
    assert!(env.contains(&"FOO=bar".to_owned()), "{env:?}");
    assert!(
        env.contains(&"HOME=/home/tester".to_owned()),
        "HOME from /etc/passwd: {env:?}"
    );
    assert_eq!(report["no_new_privs"], "1");
    assert_eq!(report["oom_score_adj"], "100");
    assert_eq!(
        report["rlimits"]["RLIMIT_NOFILE"],
        json!({"soft": 512, "hard": 1024})
    );

    let want = cap_bits(&[CAP_KILL, CAP_NET_BIND_SERVICE]);
    for set in ["cap_eff", "cap_prm", "cap_inh", "cap_amb"] {
        assert_eq!(report[set], want.as_str(), "{set}");
    }
    assert_eq!(
        report["cap_bnd"],
        cap_bits(&[CAP_KILL, CAP_NET_BIND_SERVICE, CAP_NET_RAW]).as_str()
    );

    // New namespaces: every one differs from the test's own.
    for ns in ["ipc", "mnt", "net", "pid", "uts", "cgroup"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("own ns");
        assert_ne!(
            report["namespaces"][ns],
            ours.display().to_string().as_str(),
            "{ns} namespace must be new"
        );
    }
    assert_eq!(
        report["pid"], 1,
        "the process is pid 1 of its pid namespace"
    );

    // cgroup limits, read through the container's own /sys/fs/cgroup (v1 on this host, v2 on
    // pure v2 hosts).
    let cg = &report["cgroup"];
    let memory = cgroup_limit(&report, "memory.max", "memory/memory.limit_in_bytes");
    assert_eq!(memory, Some("67108864"), "{cg}");
    let pids = cgroup_limit(&report, "pids.max", "pids/pids.max");
    assert_eq!(pids, Some("32"), "{cg}");
    let quota = cg["/sys/fs/cgroup/cpu.max"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            Some(format!(
                "{} {}",
                cg["/sys/fs/cgroup/cpu/cpu.cfs_quota_us"].as_str()?,
                cg["/sys/fs/cgroup/cpu/cpu.cfs_period_us"].as_str()?
            ))
        });
    assert_eq!(quota.as_deref(), Some("50000 100000"), "{cg}");

    // Masked paths read empty, read-only paths refuse writes, the root is read-only.
    // (Each masked path the host kernel has; /proc/kcore, for one, is absent on some kernels.)
    let mut checked = 0;
    for path in ["/proc/kcore", "/proc/keys", "/sys/firmware", "/proc/acpi"] {
        if std::path::Path::new(path).exists() {
            assert_eq!(report["masked"][path], "empty", "{path} must be masked");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "too few masked paths exist on this host to check"
    );
    assert!(
        report["writable"]["/proc/sysrq-trigger"]
            .as_str()
            .is_some_and(|e| e.starts_with("error"))
    );
    assert!(
        report["writable"]["/checker-root-probe"]
            .as_str()
            .is_some_and(|e| e.contains("Read-only") || e.contains("Is a directory")),
        "{}",
        report["writable"]
    );
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/ptmx",
        "/dev/fd",
    ] {
        assert_eq!(report["devices"][dev], true, "{dev}");
    }
    let mounts = report["mounts"].as_array().expect("mounts");
    let mount = |target: &str| mounts.iter().find(|m| m["target"] == target);
    assert_eq!(
        mount("/proc").map(|m| m["fstype"].clone()),
        Some(json!("proc"))
    );
    assert_eq!(
        mount("/dev/pts").map(|m| m["fstype"].clone()),
        Some(json!("devpts"))
    );
    let root = mount("/").expect("root mount");
    assert!(
        root["options"]
            .as_str()
            .is_some_and(|o| o.starts_with("ro")),
        "{root}"
    );
}

#[test]
fn seccomp_denies_what_the_profile_denies() {
    if !require_root("seccomp_denies_what_the_profile_denies") {
        return;
    }
    let mut b = TestBundle::busybox().expect("bundle");
    b.config["process"]["args"] = json!(["/checker", "--probe-denied", "mkdirat"]);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    });
    let report = b.check("seccomp-errno").expect("checker runs");
    assert_eq!(report["seccomp"], "2", "filter mode");
    assert_eq!(
        report["probe"],
        json!({"syscall": "mkdirat", "errno": libc::EACCES})
    );

    // berth's default profile (Docker's): unshare is denied without CAP_SYS_ADMIN.
    let profile = berth_runtime::seccomp::default_profile(&["CAP_KILL"]);
    b.config["linux"]["seccomp"] = serde_json::to_value(&profile).expect("profile json");
    b.config["process"]["args"] = json!(["/checker", "--probe-denied", "unshare"]);
    let report = b.check("seccomp-default").expect("checker runs");
    assert_eq!(report["probe"]["errno"], libc::EPERM);
}

#[test]
fn lifecycle_create_start_state_kill_delete_and_exit_codes() {
    if !require_root("lifecycle_create_start_state_kill_delete_and_exit_codes") {
        return;
    }
    let mut b = TestBundle::busybox().expect("bundle");
    let bundle = b.path().to_str().expect("utf-8").to_owned();
    b.config["process"]["args"] = json!(["/bin/sleep", "300"]);
    b.save().expect("save");
    let pid_file = b.path().join("pid");
    let out = b
        .runc_detached(&[
            "create",
            "--bundle",
            &bundle,
            "--pid-file",
            pid_file.to_str().expect("utf-8"),
            "life",
        ])
        .expect("create");
    assert!(out.status.success(), "{}", stderr(&out));
    let state = |b: &TestBundle| -> Value {
        let out = b.runc(&["state", "life"]).expect("state");
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("state json")
    };
    let s = state(&b);
    assert_eq!(s["status"], "created");
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(s["pid"], pid);
    assert!(
        s["bundle"]
            .as_str()
            .is_some_and(|p| p.ends_with(bundle.rsplit('/').next().unwrap_or_default()))
    );

    let out = b.runc(&["start", "life"]).expect("start");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&b)["status"], "running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim(), "sleep", "the init exec'd the user's program");

    // ps lists the init; exec runs inside the same namespaces.
    let out = b.runc(&["ps", "--format", "json", "life"]).expect("ps");
    let pids: Vec<i64> = serde_json::from_slice(&out.stdout).expect("ps json");
    assert_eq!(pids, vec![pid]);
    let out = b.runc(&["exec", "life", "/checker"]).expect("exec");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("exec report");
    let init_pidns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("init ns");
    assert_eq!(
        report["namespaces"]["pid"],
        init_pidns.display().to_string().as_str()
    );
    let out = b
        .runc(&["exec", "life", "/bin/sh", "-c", "exit 3"])
        .expect("exec");
    assert_eq!(out.status.code(), Some(3), "exec propagates the exit code");

    // pause / resume through the freezer.
    assert!(b.runc(&["pause", "life"]).expect("pause").status.success());
    assert_eq!(state(&b)["status"], "paused");
    assert!(
        b.runc(&["resume", "life"])
            .expect("resume")
            .status
            .success()
    );
    assert_eq!(state(&b)["status"], "running");

    // delete refuses a running container; kill stops it; delete removes everything.
    let out = b.runc(&["delete", "life"]).expect("delete");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("running"), "{}", stderr(&out));
    assert!(
        b.runc(&["kill", "life", "KILL"])
            .expect("kill")
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while state(&b)["status"] != "stopped" {
        assert!(
            std::time::Instant::now() < deadline,
            "not stopped after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        b.runc(&["delete", "life"])
            .expect("delete")
            .status
            .success()
    );
    assert!(!b.root.join("life").exists(), "state directory removed");
    let out = b.runc(&["state", "life"]).expect("state");
    assert!(!out.status.success() && stderr(&out).contains("does not exist"));

    // `run` returns the container's exit code.
    b.config["process"]["args"] = json!(["/bin/sh", "-c", "exit 7"]);
    assert_eq!(b.run("exit7").expect("run").status.code(), Some(7));
}

#[test]
fn user_namespace_maps_ids() {
    if !require_root("user_namespace_maps_ids") {
        return;
    }
    let mut b = TestBundle::busybox().expect("bundle");
    let namespaces = b.config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.push(json!({"type": "user"}));
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // Container root is host uid 100000: give it the rootfs, as `podman --userns` does.
    let status = Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.path().join("rootfs"))
        .status()
        .expect("chown");
    assert!(status.success());
    let report = b.check("userns").expect("checker runs");
    assert_eq!(report["uid"], 0);
    let map = report["uid_map"].as_str().expect("uid_map");
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
}

#[test]
fn hooks_run_at_their_lifecycle_points() {
    if !require_root("hooks_run_at_their_lifecycle_points") {
        return;
    }
    let mut b = TestBundle::busybox().expect("bundle");
    let log = b.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read state; echo {name} \"$state\" >> {}", log.display())]});
    b.config["hooks"] = json!({
        "prestart": [hook("prestart")],
        "createRuntime": [hook("createRuntime")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    });
    b.config["process"]["args"] = json!(["/bin/true"]);
    let out = b.run("hooks").expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&log).expect("hooks ran");
    let order: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        order,
        ["prestart", "createRuntime", "poststart", "poststop"],
        "{text}"
    );
    for line in text.lines() {
        let state: Value =
            serde_json::from_str(line.split_once(' ').map(|x| x.1).unwrap_or_default())
                .expect("state JSON on stdin");
        assert_eq!(state["id"], "hooks");
    }

    // A failing createRuntime hook fails create and leaves nothing behind.
    b.config["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
    let out = b.run("hookfail").expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("createRuntime"), "{}", stderr(&out));
    assert!(!b.root.join("hookfail").exists());
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    if !require_root("bad_input_is_refused_and_leaves_nothing_behind") {
        return;
    }
    let cgroup_dirs = |id: &str| -> Vec<String> {
        [
            "/sys/fs/cgroup/memory/berth",
            "/sys/fs/cgroup/unified/berth",
            "/sys/fs/cgroup/berth",
        ]
        .iter()
        .map(|d| format!("{d}/{id}"))
        .filter(|d| std::path::Path::new(d).exists())
        .collect()
    };
    type Patch = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Patch, &str)> = vec![
        (
            "noargs",
            Box::new(|c: &mut Value| c["process"]["args"] = json!([])),
            "process.args",
        ),
        (
            "norootfs",
            Box::new(|c: &mut Value| c["root"]["path"] = json!("missing")),
            "root.path",
        ),
        (
            "badsyscall",
            Box::new(|c: &mut Value| {
                c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["not_a_syscall"], "action": "SCMP_ACT_ERRNO"}]})
            }),
            "not_a_syscall",
        ),
        (
            "noexe",
            Box::new(|c: &mut Value| c["process"]["args"] = json!(["/no/such/program"])),
            "/no/such/program",
        ),
        (
            "badmount",
            Box::new(|c: &mut Value| {
                c["mounts"]
                    .as_array_mut()
                    .expect("mounts")
                    .push(json!({"destination": "relative", "type": "tmpfs", "source": "tmpfs"}))
            }),
            "mounts[",
        ),
    ];
    for (id, patch, needle) in cases {
        let mut b = TestBundle::busybox().expect("bundle");
        patch(&mut b.config);
        let out = b.run(id).expect("run");
        assert!(!out.status.success(), "{id} must fail");
        assert!(
            stderr(&out).contains(needle),
            "{id}: error must mention {needle}: {}",
            stderr(&out)
        );
        assert!(
            !b.root.join(id).exists(),
            "{id}: state directory left behind"
        );
        assert!(
            cgroup_dirs(id).is_empty(),
            "{id}: cgroups left behind: {:?}",
            cgroup_dirs(id)
        );
    }

    // Malformed JSON.
    let b = TestBundle::busybox().expect("bundle");
    std::fs::write(b.path().join("config.json"), b"{\"ociVersion\": ").expect("write");
    let bundle = b.path().to_str().expect("utf-8").to_owned();
    let out = b
        .runc(&["run", "--bundle", &bundle, "badjson"])
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("config.json"), "{}", stderr(&out));
}

#[test]
fn podman_runs_containers_through_berth_runc() {
    if !require_root("podman_runs_containers_through_berth_runc") {
        return;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        assert!(
            !berth_tests::privileged::in_ci(),
            "podman missing: `cargo xtask setup` installs it"
        );
        eprintln!("SKIPPED: podman not installed");
        return;
    }
    let runc = berth_tests::bundle::runc_bin().expect("berth-runc");
    let tmp = tempfile::tempdir().expect("tempdir");
    // Podman's own state in a private root, so the test touches no host containers.
    let conf = tmp.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n[containers]\nlog_driver = \"k8s-file\"\nnetns = \"none\"\n",
    )
    .expect("containers.conf");
    let storage = tmp.path().join("storage");
    let run_root = tmp.path().join("run");
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", &conf)
            .arg("--root")
            .arg(&storage)
            .arg("--runroot")
            .arg(&run_root)
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--runtime")
            .arg(&runc)
            .args(args)
            .output()
            .expect("podman");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        )
    };
    // An image from a busybox rootfs tarball.
    let b = TestBundle::busybox().expect("bundle");
    let tar = tmp.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(b.path().join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    let (ok, _, err) = podman(&[
        "import",
        tar.to_str().expect("utf-8"),
        "localhost/berth-test:latest",
    ]);
    assert!(ok, "podman import: {err}");

    // This sandbox has no CAP_SYS_RESOURCE: keep rlimits at or below ours.
    let limits = [
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ];
    let mut args = vec!["run", "--rm"];
    args.extend(limits);
    args.extend(["localhost/berth-test:latest", "/checker"]);
    let (ok, out, err) = podman(&args);
    assert!(ok, "podman run: {err}");
    let report: Value = serde_json::from_str(&out).expect("checker report");
    assert_eq!(report["pid"], 1);
    assert_eq!(report["seccomp"], "2", "podman's seccomp profile is loaded");

    let mut args = vec!["run", "-d", "--name", "berth-podman-test"];
    args.extend(limits);
    args.extend(["localhost/berth-test:latest", "/bin/sleep", "300"]);
    let (ok, _, err) = podman(&args);
    assert!(ok, "podman run -d: {err}");
    let (ok, out, err) = podman(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ok, "podman ps: {err}");
    assert!(out.contains("berth-podman-test Up"), "{out}");
    let (ok, _, err) = podman(&["stop", "-t", "1", "berth-podman-test"]);
    assert!(ok, "podman stop: {err}");
    let (ok, out, _) = podman(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ok && out.contains("berth-podman-test Exited"), "{out}");
    let (ok, _, err) = podman(&["rm", "berth-podman-test"]);
    assert!(ok, "podman rm: {err}");
    let (_, out, _) = podman(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!out.contains("berth-podman-test"), "{out}");
    let _ = podman(&["rmi", "-f", "localhost/berth-test:latest"]);
}
