//! Syscall auditing end to end: a real agent, real containers started by `berth run`, an
//! AuditPolicy applied with `berth audit apply`, and the events read back with `berth events`.
//!
//! - A labelled container runs a known workload (opens a file under /etc, execs a program,
//!   connects to a closed port, calls a syscall a `kill` rule forbids, one a `deny` rule denies);
//!   every expected event is checked field by field, the forbidden call's process dies with
//!   SIGKILL, the denied one fails with EPERM, and an unlabelled container (and the test
//!   process on the host) running the same workload produce no event.
//! - `count` on every syscall agrees exactly with `strace -f -c` on the same workload.

use std::{
    collections::BTreeMap,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use berth_tests::{
    agent::{AgentEngine, berth_bin, sample},
    network::text,
    privileged::{in_ci, require_root},
};
use serde_json::Value;

/// An engine with its agent, and the audit-specific ways of talking to them.
struct Setup {
    e: AgentEngine,
}

impl Setup {
    fn start(tag: &str, octet: u8) -> Setup {
        Setup {
            e: AgentEngine::start(tag, octet),
        }
    }

    fn apply(&self, yaml: &str) {
        let file = self.e.env.dir.path().join("audit.yaml");
        std::fs::write(&file, yaml).expect("write");
        let out = self
            .e
            .env
            .berth(&["audit", "apply", "-f", &file.to_string_lossy()]);
        assert!(
            out.status.success(),
            "audit apply: {}\n{}",
            text(&out.stderr),
            self.e.agent.logs()
        );
    }

    /// The recent events of `kind` (JSON lines from `berth events`).
    fn events(&self, kind: &str) -> Vec<Value> {
        let out = self.e.env.berth(&["events", "--type", kind]);
        assert!(out.status.success(), "berth events: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event line is JSON"))
            .collect()
    }

    /// Waits (up to 10 s) for an event of `kind` matching `pred`.
    fn wait_event(&self, kind: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events(kind).into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {kind} event {what}; the {kind} events are:\n{}\nagent log:\n{}",
                    self.events(kind)
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.e.agent.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

const POLICY: &str = r#"
apiVersion: berth.io/v1alpha1
kind: AuditPolicy
metadata:
  name: e2e
spec:
  selector:
    matchLabels: {audit: "yes"}
  rules:
  - syscalls: [execve]
    action: record
  - syscalls: [openat]
    action: record
    match:
      pathPrefix: [/etc/]
  - syscalls: [connect]
    action: record
  - syscalls: [chmod, fchmodat]
    action: kill
  - syscalls: [mkdir, mkdirat]
    action: deny
"#;

/// The workload: busybox's shell runs each applet in a child (cat and nc through execve of
/// /proc/self/exe, chmod and mkdir forked without exec). The last cat names a file whose path
/// is longer than the capture buffers (path 256 bytes, one argv string 256 bytes).
fn workload() -> String {
    format!(
        "cat /etc/hosts; nc 127.0.0.1 7001; echo nc=$?; \
         echo x > /victim; chmod 600 /victim; echo chmod=$?; \
         mkdir /denied; echo mkdir=$?; cat /etc/{} 2>/dev/null; exit 0",
        LONG_NAME
    )
}

/// 300 bytes: more than any capture buffer holds.
const LONG_NAME: &str = "llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll";

fn run_workload(s: &Setup, name: &str, labels: &[&str]) -> String {
    let mut args = vec!["run", "--name", name, "--network", "none"];
    for l in labels {
        args.extend(["--label", l]);
    }
    let script = workload();
    args.extend([berth_tests::network::IMAGE, "/bin/sh", "-c", &script]);
    let out = s.e.env.berth(&args);
    assert!(
        out.status.success(),
        "berth run {name}: {}\n{}",
        text(&out.stderr),
        s.e.agent.logs()
    );
    text(&out.stdout) + &text(&out.stderr)
}

fn str_of<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn audited_container_events_kill_and_deny_and_nothing_from_others() {
    if !require_root("audited_container_events_kill_and_deny_and_nothing_from_others") {
        return;
    }
    let s = Setup::start("audit", 61);
    s.apply(POLICY);

    let output = run_workload(&s, "audited", &["audit=yes", "team=blue"]);
    // The kill rule killed chmod's process at the call; deny made mkdir fail with EPERM.
    assert!(
        output.contains("chmod=137"),
        "chmod was not killed: {output}"
    );
    assert!(output.contains("mkdir=1"), "mkdir was not denied: {output}");
    assert!(
        output.contains("Operation not permitted"),
        "mkdir's error is not EPERM: {output}"
    );
    assert!(output.contains("nc=1"), "{output}");
    let other = run_workload(&s, "unaudited", &["team=blue"]);
    assert!(
        other.contains("chmod=0") && other.contains("mkdir=0"),
        "rules applied to a container no policy selects: {other}"
    );
    // The host too: the test process's own cat, outside every audited cgroup.
    let host = Command::new("/bin/busybox")
        .args(["cat", "/etc/hostname"])
        .output()
        .expect("host cat");
    assert!(host.status.success());

    // The shell: the container's first exec.
    let sh = s.wait_event("exec", "of the container's shell", |e| {
        str_of(e, "/container/name") == "audited" && str_of(e, "/process/binary") == "/bin/sh"
    });
    // The script is longer than one argv string's buffer: cut and marked.
    let argv = sh["process"]["argv"].as_array().expect("argv");
    assert_eq!(
        argv[..2],
        [serde_json::json!("/bin/sh"), serde_json::json!("-c")]
    );
    let captured = argv[2].as_str().expect("script");
    assert!(
        workload().starts_with(captured) && captured.len() == 255,
        "{captured}"
    );
    assert_eq!(sh["process"]["argv_truncated"], true);
    assert_eq!(sh["container"]["labels"]["audit"], "yes");
    assert_eq!(sh["container"]["kind"], "container");
    assert_eq!(sh["schema"], "berth.event.v1");
    let sh_pid = sh["process"]["pid"].as_u64().expect("pid");

    // cat: exec event with argv and ancestry, execve syscall with its return value.
    let cat = s.wait_event("exec", "of cat", |e| {
        str_of(e, "/container/name") == "audited" && e["process"]["argv"][0] == "cat"
    });
    assert_eq!(
        cat["process"]["argv"],
        serde_json::json!(["cat", "/etc/hosts"])
    );
    assert_eq!(cat["process"]["binary"], "/proc/self/exe");
    assert_eq!(cat["process"]["ppid"].as_u64(), Some(sh_pid));
    assert_eq!(cat["process"]["ancestry"][0]["pid"].as_u64(), Some(sh_pid));
    assert_eq!(cat["process"]["ancestry"][0]["binary"], "/bin/sh");
    assert_eq!(cat["process"]["argv_truncated"], false);
    let cat_pid = cat["process"]["pid"].as_u64().expect("pid");
    let execve = s.wait_event("syscall", "execve of cat", |e| {
        e["syscall"] == "execve" && e["process"]["pid"].as_u64() == Some(cat_pid)
    });
    assert_eq!(execve["action"], "record");
    assert_eq!(execve["ret"], 0);
    assert_eq!(execve["path"], "/proc/self/exe");
    assert_eq!(execve["argv"], serde_json::json!(["cat", "/etc/hosts"]));
    assert_eq!(execve["nr"], 59);

    // openat of /etc/hosts by cat: path, flags, a file descriptor back.
    let open = s.wait_event("syscall", "openat /etc/hosts", |e| {
        e["syscall"] == "openat" && e["path"] == "/etc/hosts"
    });
    assert_eq!(open["container"]["name"], "audited");
    assert_eq!(open["process"]["pid"].as_u64(), Some(cat_pid));
    assert_eq!(open["process"]["comm"], "cat");
    assert_eq!(
        open["args"]["dfd"], -100,
        "AT_FDCWD, as the caller passed it"
    );
    assert!(
        open["args"]["flags_names"]
            .as_array()
            .is_some_and(|f| f.iter().any(|n| n == "O_RDONLY")),
        "{open}"
    );
    assert!(open["ret"].as_i64().is_some_and(|fd| fd >= 0), "{open}");
    assert_eq!(open["path_truncated"], false);
    // The path prefix filters in the kernel: nothing outside /etc/ was recorded.
    for e in s.events("syscall") {
        if e["syscall"] == "openat" {
            let p = e["path"].as_str().unwrap_or("");
            assert!(p.starts_with("/etc/"), "openat outside /etc/ recorded: {e}");
        }
    }

    // A path longer than the capture buffer: cut to 255 bytes and marked; so is the argv
    // string naming it.
    let long = s.wait_event("syscall", "openat of the long path", |e| {
        e["syscall"] == "openat" && e["path"].as_str().is_some_and(|p| p.contains("lllll"))
    });
    let path = long["path"].as_str().expect("path");
    assert_eq!(path.len(), 255, "{path}");
    assert!(format!("/etc/{LONG_NAME}").starts_with(path));
    assert_eq!(long["path_truncated"], true);
    assert_eq!(
        long["error"], "ENAMETOOLONG",
        "one component over 255 bytes"
    );
    let long_exec = s.wait_event("exec", "of the cat with the long argument", |e| {
        e["process"]["argv"][1]
            .as_str()
            .is_some_and(|a| a.contains("lllll"))
    });
    assert_eq!(long_exec["process"]["argv_truncated"], true);

    // connect to a closed port: the address, and the error.
    let connect = s.wait_event("syscall", "connect", |e| e["syscall"] == "connect");
    assert_eq!(
        connect["address"],
        serde_json::json!({"family": "inet", "ip": "127.0.0.1", "port": 7001})
    );
    assert_eq!(connect["ret"], -111);
    assert_eq!(connect["error"], "ECONNREFUSED");
    assert_eq!(connect["process"]["comm"], "nc");

    // The kill: reported at the call (no return value: it never returned), then the exit.
    let kill = s.wait_event("syscall", "the killed chmod", |e| e["action"] == "kill");
    assert!(
        kill["syscall"] == "chmod" || kill["syscall"] == "fchmodat",
        "{kill}"
    );
    assert_eq!(kill["path"], "/victim");
    assert!(
        kill.get("ret").is_none(),
        "a killed call has no return value: {kill}"
    );
    assert_eq!(kill["container"]["name"], "audited");
    let killed_pid = kill["process"]["pid"].as_u64();
    let exit = s.wait_event("exit", "of the killed process", |e| {
        e["process"]["pid"].as_u64() == killed_pid
    });
    assert!(
        exit["code"].is_null(),
        "killed by a signal, not exit(): {exit}"
    );
    // cat's exit carries its status.
    let cat_exit = s.wait_event("exit", "of cat", |e| {
        e["process"]["pid"].as_u64() == Some(cat_pid)
    });
    assert_eq!(cat_exit["code"], 0);

    // Nothing from the unaudited container or the host.
    for kind in ["syscall", "exec", "exit"] {
        for e in s.events(kind) {
            assert_eq!(
                e["container"]["name"], "audited",
                "an event from outside the audited container: {e}"
            );
        }
    }
    // Denied calls never reach the tracepoint (seccomp stops them first): no mkdir event.
    assert!(
        !s.events("syscall")
            .iter()
            .any(|e| e["syscall"] == "mkdir" || e["syscall"] == "mkdirat")
    );

    // Metrics: kills and records counted, nothing lost.
    let m = s.e.agent.scrape().expect("scrape");
    assert_eq!(
        sample(&m, "berth_audit_kernel_total{outcome=\"kills\"}"),
        Some(1.0),
        "{m}"
    );
    assert!(sample(&m, "berth_audit_kernel_total{outcome=\"records\"}").unwrap_or(0.0) >= 4.0);
    assert_eq!(sample(&m, "berth_events_lost_total"), Some(0.0));
    assert!(sample(&m, "berth_events_total{type=\"syscall\"}").unwrap_or(0.0) >= 5.0);

    // Bad input changes nothing: an unknown syscall is refused with a clear error and the
    // rules in force stay.
    let bad = POLICY.replace("[connect]", "[conect]");
    let file = s.e.env.dir.path().join("bad.yaml");
    std::fs::write(&file, bad).expect("write");
    let out =
        s.e.env
            .berth(&["audit", "apply", "-f", &file.to_string_lossy()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown syscall \"conect\""), "{err}");
    let ls = s.e.env.berth(&["audit", "ls", "--format", "json"]);
    let view: Value = serde_json::from_slice(&ls.stdout).expect("ls json");
    assert_eq!(view["policies"], serde_json::json!(["e2e"]));
    // Enforced as before: the next audited container's chmod is killed too.
    let again = run_workload(&s, "audited-again", &["audit=yes"]);
    assert!(
        again.contains("chmod=137"),
        "the previous rules were lost: {again}"
    );
    // With no audited container left, no tracepoint stays attached (each costs every caller
    // of its syscall on the machine).
    let ls = s.e.env.berth(&["audit", "ls", "--format", "json"]);
    let view: Value = serde_json::from_slice(&ls.stdout).expect("ls json");
    assert_eq!(view["tracepoints"], serde_json::json!([]), "{view}");
}

/// Syscall counts of `strace -f -c -o FILE`: name → calls.
fn strace_counts(file: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(file).expect("strace output");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // "% time seconds usecs/call calls [errors] syscall"
        if cols.len() < 5 || cols[0].parse::<f64>().is_err() {
            continue;
        }
        let name = cols[cols.len() - 1];
        if name == "total" {
            continue;
        }
        out.insert(name.to_owned(), cols[3].parse().expect("calls"));
    }
    out
}

/// A cgroup of the test's own, removed on drop.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn counts_agree_with_strace_per_syscall() {
    if !require_root("counts_agree_with_strace_per_syscall") {
        return;
    }
    let strace = Path::new("/usr/bin/strace");
    if !strace.exists() {
        let msg = "counts_agree_with_strace_per_syscall: strace is not installed (`cargo xtask setup` installs it)";
        assert!(!in_ci(), "{msg} (CI=true: privileged tests must not skip)");
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let s = Setup::start("auditcount", 62);
    let cgroup = TestCgroup(
        berth::config::default_cgroup_root()
            .join(format!("berth-test-audit-{}", berth_tests::unique_suffix())),
    );
    std::fs::create_dir(&cgroup.0).expect("create cgroup");
    let out = s.e.env.berth(&[
        "audit",
        "add-cgroup",
        &cgroup.0.to_string_lossy(),
        "--name",
        "counted",
        "--label",
        "count=all",
    ]);
    assert!(out.status.success(), "add-cgroup: {}", text(&out.stderr));
    s.apply(
        r#"
apiVersion: berth.io/v1alpha1
kind: AuditPolicy
metadata: {name: everything}
spec:
  selector: {matchLabels: {count: all}}
  rules:
  - {syscalls: ["*"], action: count}
"#,
    );
    // A deterministic workload of a static binary: find walks a directory and forks and
    // execs two programs per file, waiting for each (no signal handler runs, so there is no
    // timing-dependent rt_sigreturn: two runs make exactly the same calls).
    let files = s.e.env.dir.path().join("workload");
    std::fs::create_dir(&files).expect("workload dir");
    for i in 0..5 {
        std::fs::write(files.join(format!("f{i}")), format!("file {i}\n")).expect("file");
    }
    let dir = files.to_string_lossy().into_owned();
    let workload = [
        "/bin/busybox",
        "find",
        &dir,
        "-type",
        "f",
        "-exec",
        "/bin/busybox",
        "cat",
        "{}",
        ";",
        "-exec",
        "/bin/busybox",
        "wc",
        "-c",
        "{}",
        ";",
    ];

    // Counted by berth: the child moves itself into the cgroup just before exec (the write
    // enters before the move, so the first syscall counted is the execve).
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))
        .expect("cgroup.procs");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    let mut cmd = Command::new(workload[0]);
    cmd.args(&workload[1..]);
    // SAFETY: only async-signal-safe calls (write) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let pid = b"0\n";
            if libc::write(fd, pid.as_ptr().cast(), pid.len()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .expect("workload");
    assert!(status.success());
    drop(procs);

    // The same workload under strace -f -c.
    let strace_out = s.e.env.dir.path().join("strace.txt");
    let st = Command::new(strace)
        .args(["-f", "-c", "-o"])
        .arg(&strace_out)
        .args(workload)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("strace");
    assert!(st.success());
    let expected = strace_counts(&strace_out);
    assert!(
        expected.len() > 5,
        "strace counted too little: {expected:?}"
    );

    // berth's counts, per syscall (the counters are read from the kernel's maps).
    let counts = || -> BTreeMap<String, u64> {
        let out = Command::new(berth_bin().expect("berth"))
            .args(["stats", "--once", "--top", "0", "--format", "json"])
            .arg("--container")
            .arg("counted")
            .env("BERTH_API_SOCKET", &s.e.env.api_socket)
            .output()
            .expect("berth stats");
        assert!(out.status.success(), "berth stats: {}", text(&out.stderr));
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("stats json");
        rows.iter()
            .map(|r| {
                (
                    r["syscall"].as_str().unwrap_or("").to_owned(),
                    r["total"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let mut got = counts();
    // strace counts a call when it returns; exit_group never does. berth counts at entry:
    // one per process.
    let exits = got.remove("exit_group").unwrap_or(0);
    assert!(exits >= 1, "{got:?}");
    assert_eq!(
        got, expected,
        "berth's per-syscall counts differ from strace -f -c's (left: berth, right: strace)"
    );

    // The metrics show the same numbers, labelled by container and syscall.
    let m = s.e.agent.scrape().expect("scrape");
    for (name, n) in &expected {
        assert_eq!(
            sample(
                &m,
                &format!("berth_audit_syscalls_total{{container=\"counted\",syscall=\"{name}\"}}")
            ),
            Some(*n as f64),
            "{name}"
        );
    }
    let out =
        s.e.env
            .berth(&["audit", "remove-cgroup", &cgroup.0.to_string_lossy()]);
    assert!(out.status.success(), "remove-cgroup: {}", text(&out.stderr));
}

#[test]
fn enforcement_goes_on_while_the_agent_is_down_and_after_a_restart() {
    if !require_root("enforcement_goes_on_while_the_agent_is_down_and_after_a_restart") {
        return;
    }
    let mut s = Setup::start("auditrestart", 63);
    s.apply(POLICY);
    s.e.env
        .run_detached(
            "long",
            &["--network", "none", "--label", "audit=yes"],
            &["/bin/sh", "-c", "exec sleep 100000"],
        )
        .expect("run");
    let chmod = |s: &Setup| -> String {
        let (_, out, err) = s.e.env.exec(
            "long",
            &["/bin/sh", "-c", "echo x > /v; chmod 600 /v; echo chmod=$?"],
        );
        out + &err
    };
    assert!(
        chmod(&s).contains("chmod=137"),
        "not killed with the agent up"
    );
    // The attachments are pinned bpf_links, like the rest of the data plane.
    let links: Vec<String> = std::fs::read_dir(s.e.agent.paths.pin_root.join("links"))
        .expect("links dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        links
            .iter()
            .any(|l| l == "sys_enter@syscalls:sys_enter_chmod"),
        "{links:?}"
    );

    s.e.agent.signal(libc::SIGKILL).expect("kill -9");
    let _ = s.e.agent.wait(Duration::from_secs(5));
    assert!(
        chmod(&s).contains("chmod=137"),
        "the kill rule stopped with the agent"
    );

    s.e.restart_agent();
    assert!(
        chmod(&s).contains("chmod=137"),
        "not killed after the restart"
    );
    // The kill made while the agent was down waited in the pinned ring: the restarted agent
    // reports it, and the one after the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let kills = s
            .events("syscall")
            .iter()
            .filter(|e| e["action"] == "kill")
            .count();
        if kills >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kills} kill events after the restart, expected 2:\n{}",
            s.e.agent.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // One pin per attachment still (the restart replaced the links, it did not add any).
    let after: Vec<String> = std::fs::read_dir(s.e.agent.paths.pin_root.join("links"))
        .expect("links dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sys_"))
        .collect();
    let before: Vec<&String> = links.iter().filter(|n| n.starts_with("sys_")).collect();
    assert_eq!(after.len(), before.len(), "{after:?} vs {before:?}");

    // Removing the container detaches everything.
    let out = s.e.env.berth(&["rm", "-f", "long"]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_dir(s.e.agent.paths.pin_root.join("links"))
        .expect("links dir")
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("sys_"))
    {
        assert!(
            Instant::now() < deadline,
            "tracepoints stayed attached after the last audited container left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
