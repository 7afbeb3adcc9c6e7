//! The agent end to end: start, status, /metrics (checked by promtool), real traffic counted by
//! the attached XDP program, a map entry that survives SIGKILL and restart, clean SIGTERM exit,
//! and `--cleanup` removing every pin and attachment.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData};
use berth_common::{ContainerRecord, maps, programs::XDP_LB_INGRESS};
use berth_tests::{
    agent::{AgentPaths, AgentProcess, sample},
    netns::NetnsPair,
    privileged::{in_ci, require_root},
};

const ICMP_SERIES: &str = r#"berth_xdp_packets_total{reason="ipv4_icmp",verdict="pass"}"#;
const MALFORMED_SERIES: &str = r#"berth_xdp_packets_total{reason="malformed",verdict="pass"}"#;

/// Removes the agent's pins and temp files even when an assertion fails.
struct Cleanup(AgentPaths);
impl Drop for Cleanup {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

fn promtool_check(exposition: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            let msg = format!("promtool not available ({err}); `cargo xtask setup` installs it");
            assert!(!in_ci(), "{msg}");
            eprintln!("SKIPPED promtool check: {msg}");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}\n{exposition}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool reported problems:\n{report}"
    );
}

fn ping(pair: &NetnsPair, count: u32) {
    pair.exec(
        "ping",
        &[
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &pair.host_addr,
        ],
    )
    .expect("ping from the namespace to the host end of the veth");
}

/// Sends one Ethernet frame whose IPv4 header claims IHL 3 (invalid) from the namespace end of
/// the veth, through an AF_PACKET socket (python3's socket module).
fn send_malformed_frame(pair: &NetnsPair) {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('{ifname}', 0))\n\
         eth = b'\\xff' * 6 + b'\\x02\\x00\\x00\\x00\\x00\\x09' + b'\\x08\\x00'\n\
         ip = bytes([0x43, 0, 0, 40]) + bytes(36)\n\
         s.send(eth + ip)\n",
        ifname = pair.ns_if
    );
    pair.exec("python3", &["-c", &script])
        .expect("send a raw frame with python3");
}

#[test]
fn agent_serves_metrics_and_keeps_map_entries_across_sigkill() {
    if !require_root("agent_serves_metrics_and_keeps_map_entries_across_sigkill") {
        return;
    }
    let pair = NetnsPair::create("agent", 1).expect("netns fixture");
    let paths = AgentPaths::new("lifecycle").expect("temp paths");
    let _cleanup = Cleanup(paths.clone());
    let iface_flag = ["--xdp-iface", pair.host_if.as_str()];

    // Start: the API reports the attachment and every map.
    let agent = AgentProcess::start(&paths, &iface_flag).expect("start agent");
    let status = agent.status().expect("status");
    assert!(status.agent.is_some(), "status must come from the agent");
    assert_eq!(xdp_links(&status).len(), 1, "{status:?}");
    assert_eq!(
        status.attachments.len(),
        1 + berth_common::programs::SOCK_PROGRAMS.len(),
        "XDP and the four socket-level load-balancing programs: {status:?}"
    );
    assert_eq!(xdp_links(&status)[0].target, pair.host_if);
    for name in maps::ALL {
        let map = status.maps.iter().find(|m| m.name == *name);
        let map = map.unwrap_or_else(|| panic!("map {name} missing from status: {status:?}"));
        assert!(map.capacity > 0, "{map:?}");
    }
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    let mode = std::fs::metadata(&paths.api_socket)
        .expect("API socket")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the API socket must be private to its owner"
    );

    // Traffic through the attached program shows in /metrics, and the exposition is valid.
    ping(&pair, 3);
    let metrics = agent.scrape().expect("scrape");
    promtool_check(&metrics);
    assert!(
        sample(&metrics, ICMP_SERIES).expect("icmp series") >= 3.0,
        "{metrics}"
    );
    let attached = format!(
        r#"berth_bpf_program_attached{{program="{XDP_LB_INGRESS}",target="{}"}}"#,
        pair.host_if
    );
    assert_eq!(sample(&metrics, &attached), Some(1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, r#"berth_bpf_map_capacity{map="CONTAINERS"}"#),
        Some(f64::from(maps::CONTAINERS_MAX_ENTRIES))
    );
    assert!(
        sample(&metrics, "process_resident_memory_bytes").is_some(),
        "{metrics}"
    );

    // A hostile frame is counted, and the program's rate-limited log line reaches the agent's log.
    send_malformed_frame(&pair);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !agent.logs().contains("malformed frame on ifindex") {
        assert!(
            std::time::Instant::now() < deadline,
            "kernel log record not drained into the agent log:\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = agent.scrape().expect("scrape");
    assert!(sample(&metrics, MALFORMED_SERIES).expect("malformed series") >= 1.0);

    // Write a container record through the pin, as the runtime will.
    let record = ContainerRecord {
        ipv4: u32::from_be_bytes([10, 251, 1, 2]).to_be(),
        host_ifindex: 7,
        identity: 1234,
        flags: 0,
    };
    let cgroup_id = 0xdead_beef_u64;
    {
        let pin = paths.pin_root.join("maps").join(maps::CONTAINERS);
        let mut containers: HashMap<MapData, u64, ContainerRecord> =
            HashMap::try_from(Map::HashMap(MapData::from_pin(&pin).expect("open pin")))
                .expect("typed map");
        containers.insert(cgroup_id, record, 0).expect("insert");
    }
    let entries = |status: &berth::status::Status| {
        status
            .maps
            .iter()
            .find(|m| m.name == maps::CONTAINERS)
            .map(|m| m.entries)
    };
    assert_eq!(entries(&agent.status().expect("status")), Some(1));

    // SIGKILL: the data plane keeps running without the agent.
    agent.signal(libc::SIGKILL).expect("kill -9");
    let mut agent = agent;
    agent.wait(Duration::from_secs(10)).expect("agent died");
    ping(&pair, 2);
    let offline = berth_tests::agent::status_of(&paths).expect("status from pins");
    assert!(offline.agent.is_none(), "no agent runs now");
    assert_eq!(
        xdp_links(&offline).len(),
        1,
        "the pinned link keeps the program attached"
    );
    assert_eq!(entries(&offline), Some(1));

    // Restart: the same maps are re-opened, the link gets the new program, counters persisted.
    let mut agent = AgentProcess::start(&paths, &iface_flag).expect("restart agent");
    let status = agent.status().expect("status");
    assert_eq!(
        entries(&status),
        Some(1),
        "the entry survived SIGKILL and restart"
    );
    assert_eq!(xdp_links(&status).len(), 1);
    {
        let pin = paths.pin_root.join("maps").join(maps::CONTAINERS);
        let containers: HashMap<MapData, u64, ContainerRecord> =
            HashMap::try_from(Map::HashMap(MapData::from_pin(&pin).expect("open pin")))
                .expect("typed map");
        assert_eq!(containers.get(&cgroup_id, 0).expect("entry"), record);
    }
    let metrics = agent.scrape().expect("scrape");
    assert!(
        sample(&metrics, ICMP_SERIES).expect("icmp series") >= 5.0,
        "counters persist across the restart, including packets seen while no agent ran:\n{metrics}"
    );
    assert!(agent.logs().contains("re-attached"), "{}", agent.logs());

    // SIGTERM: clean exit, socket removed, pins stay.
    agent.signal(libc::SIGTERM).expect("SIGTERM");
    let exit = agent.wait(Duration::from_secs(10)).expect("agent exits");
    assert!(exit.success(), "exit {exit}:\n{}", agent.logs());
    assert!(
        !paths.api_socket.exists(),
        "API socket must be removed on exit"
    );
    assert!(paths.pin_root.join("maps").join(maps::CONTAINERS).exists());

    // --cleanup removes every pin and detaches the program.
    let out = paths
        .command("agent")
        .expect("berth")
        .arg("--cleanup")
        .output()
        .expect("cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!paths.pin_root.exists());
    let link = Command::new("ip")
        .args(["link", "show", "dev", &pair.host_if])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "XDP still attached after cleanup"
    );
}

#[test]
fn a_second_agent_on_the_same_socket_refuses_to_start() {
    if !require_root("a_second_agent_on_the_same_socket_refuses_to_start") {
        return;
    }
    let paths = AgentPaths::new("second").expect("temp paths");
    let _cleanup = Cleanup(paths.clone());
    let _first = AgentProcess::start(&paths, &[]).expect("first agent");
    let out = paths
        .command("agent")
        .expect("berth")
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("second agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already serving"), "{stderr}");
}

#[test]
fn invalid_configuration_is_rejected_before_touching_the_kernel() {
    if !require_root("invalid_configuration_is_rejected_before_touching_the_kernel") {
        return;
    }
    let paths = AgentPaths::new("badcfg").expect("temp paths");
    let _cleanup = Cleanup(paths.clone());
    let config = std::env::temp_dir().join(format!("berth-bad-{}.toml", std::process::id()));
    std::fs::write(&config, "xdp_mode = \"turbo\"\n").expect("write config");
    let run = |extra: &[&str]| {
        paths
            .command("agent")
            .expect("berth")
            .args(extra)
            .output()
            .expect("run agent")
    };
    for (extra, field) in [
        (vec!["--metrics-addr", "nowhere"], "--metrics-addr"),
        (
            vec!["--xdp-iface", "an-interface-name-too-long"],
            "xdp_ifaces",
        ),
        (
            vec!["--config", config.to_str().expect("utf-8")],
            "xdp_mode",
        ),
    ] {
        let out = run(&extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} must be rejected");
        assert!(
            stderr.contains(field),
            "{extra:?}: error must name {field}: {stderr}"
        );
        assert!(!paths.pin_root.exists(), "{extra:?}: nothing may be pinned");
    }
    // The same through the environment: clap names the flag the variable stands for.
    let out = paths
        .command("agent")
        .expect("berth")
        .env("BERTH_METRICS_ADDR", "127.0.0.1:notaport")
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--metrics-addr"), "{stderr}");
    assert!(!paths.pin_root.exists());
    let _ = std::fs::remove_file(config);
}

#[test]
fn a_pinned_map_of_another_layout_is_refused_not_misread() {
    if !require_root("a_pinned_map_of_another_layout_is_refused_not_misread") {
        return;
    }
    let paths = AgentPaths::new("layout").expect("temp paths");
    let _cleanup = Cleanup(paths.clone());
    // What an older berth with a different CONTAINERS value layout would have left behind.
    let maps_dir = paths.pin_root.join("maps");
    std::fs::create_dir_all(&maps_dir).expect("pin dir on bpffs");
    let pin = maps_dir.join(maps::CONTAINERS);
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "hash",
            "key",
            "8",
            "value",
            "8",
            "entries",
            "64",
            "name",
            "CONTAINERS",
        ])
        .output()
        .expect("bpftool (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let err = AgentProcess::start(&paths, &[])
        .err()
        .expect("the agent must refuse to start");
    let msg = format!("{err:#}");
    assert!(msg.contains("does not match this berth's layout"), "{msg}");
    assert!(msg.contains("CONTAINERS"), "{msg}");
    assert!(
        pin.exists(),
        "the old map is left alone for the operator to inspect"
    );
    assert!(
        !paths.api_socket.exists(),
        "a failed start leaves no API socket"
    );
    assert!(
        !paths.pin_root.join("maps").join(maps::XDP_STATS).exists(),
        "nothing else may be created"
    );
}

/// Deletes a veth pair on drop.
struct Veth(String);
impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn add_veth(name: &str) {
    let status = Command::new("ip")
        .args([
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ])
        .status()
        .expect("ip link add");
    assert!(status.success());
    let status = Command::new("ip")
        .args(["link", "set", name, "up"])
        .status()
        .expect("ip link set up");
    assert!(status.success());
}

#[test]
fn an_interface_recreated_while_the_agent_was_down_gets_a_fresh_attachment() {
    if !require_root("an_interface_recreated_while_the_agent_was_down_gets_a_fresh_attachment") {
        return;
    }
    let paths = AgentPaths::new("flap").expect("temp paths");
    let _cleanup = Cleanup(paths.clone());
    let iface = format!("btf{}", berth_tests::unique_suffix());
    add_veth(&iface);
    let _veth = Veth(iface.clone());
    let flags = ["--xdp-iface", iface.as_str()];

    let mut agent = AgentProcess::start(&paths, &flags).expect("start agent");
    agent.signal(libc::SIGKILL).expect("kill -9");
    agent.wait(Duration::from_secs(10)).expect("agent died");

    // The interface goes away and comes back under the same name: the pinned link is defunct.
    let status = Command::new("ip")
        .args(["link", "del", &iface])
        .status()
        .expect("ip link del");
    assert!(status.success());
    add_veth(&iface);

    let agent = AgentProcess::start(&paths, &flags).expect("restart agent");
    assert!(agent.logs().contains("attaching anew"), "{}", agent.logs());
    let status = agent.status().expect("status");
    assert_eq!(xdp_links(&status).len(), 1, "{status:?}");
    let link = Command::new("ip")
        .args(["link", "show", "dev", &iface])
        .output()
        .expect("ip link");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "xdp_lb_ingress must be attached to the recreated interface"
    );
}

/// The XDP attachments of a status report (the agent also attaches its socket programs).
fn xdp_links(status: &berth::status::Status) -> Vec<&berth::dataplane::inspect::AttachmentReport> {
    status
        .attachments
        .iter()
        .filter(|a| a.program == XDP_LB_INGRESS)
        .collect()
}
