//! Container networking end to end through the `berth` CLI: a private bridge and pod CIDR per
//! test, containers with distinct addresses that reach each other and their gateway, eth0 with
//! its address and default route, `/etc/hosts` and `/etc/resolv.conf`, the masquerade table,
//! the data-plane record, and address management across removal, failed runs and crashes.
//!
//! Traffic never leaves the test's subnet: only the containers' and the gateway's addresses
//! are pinged or connected to.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData};
use berth_common::ContainerRecord;
use berth_runtime::network::{DnsSettings, Ipam, etc_files};
use berth_tests::{
    agent::{AgentPaths, AgentProcess},
    netns::NetnsPair,
    network::{
        ClientCgroup, IMAGE, NetEnv, host_address, ifindex_of, link_exists, master_of, text,
        wait_for,
    },
    privileged::require_root,
};
use serde_json::Value;

fn map_entry(env: &NetEnv, cgroup_id: u64) -> Option<ContainerRecord> {
    let pin = env.pin_root.join("maps/CONTAINERS");
    let data = MapData::from_pin(&pin).ok()?;
    let map: HashMap<MapData, u64, ContainerRecord> = HashMap::try_from(Map::HashMap(data)).ok()?;
    map.get(&cgroup_id, 0).ok()
}

fn host_veth(id: &str) -> String {
    format!("bv{}", &id[..11])
}

fn in_subnet(ip: Ipv4Addr, subnet: &str) -> bool {
    let net: berth_runtime::network::Ipv4Net = subnet.parse().expect("subnet");
    net.contains(ip) && ip != net.network() && ip != net.broadcast()
}

/// `cmd` succeeds in `container`; returns its stdout.
fn exec_ok(env: &NetEnv, container: &str, cmd: &[&str]) -> String {
    let (code, out, err) = env.exec(container, cmd);
    assert_eq!(code, 0, "exec {container} {cmd:?}: {out}{err}");
    out
}

#[test]
fn containers_on_a_bridge_reach_each_other_and_their_gateway() {
    if !require_root("containers_on_a_bridge_reach_each_other_and_their_gateway") {
        return;
    }
    let env = NetEnv::new(11, 24).expect("env");
    let gateway = env.gateway();
    let a = env
        .run_detached(
            "a",
            &[],
            &[
                "/bin/sh",
                "-c",
                "while true; do echo hello-from-a | nc -l -p 7000; done",
            ],
        )
        .expect("run a");
    let b = env
        .run_detached("b", &["--hostname", "bee"], &["/bin/sleep", "300"])
        .expect("run b");
    let ip_a = env.ip_of("a").expect("ip a");
    let ip_b = env.ip_of("b").expect("ip b");
    assert_ne!(ip_a, ip_b, "distinct addresses");
    for ip in [ip_a, ip_b] {
        assert!(in_subnet(ip, &env.subnet), "{ip} in {}", env.subnet);
        assert_ne!(ip, gateway, "the gateway is the bridge's");
    }

    // inspect and ps show the network.
    let doc = env.inspect("a").expect("inspect");
    let net = &doc["NetworkSettings"];
    assert_eq!(net["Mode"], "bridge");
    assert_eq!(net["Bridge"], env.bridge.as_str());
    assert_eq!(net["Gateway"], gateway.to_string());
    assert_eq!(net["IPPrefixLen"], 24);
    assert_eq!(net["HostVeth"], host_veth(&a).as_str());
    let ps = text(&env.berth(&["ps"]).stdout);
    assert!(ps.lines().next().is_some_and(|h| h.contains("IP")), "{ps}");
    assert!(
        ps.contains(&ip_a.to_string()) && ps.contains(&ip_b.to_string()),
        "{ps}"
    );
    let list: Vec<Value> =
        serde_json::from_slice(&env.berth(&["ps", "--format", "json"]).stdout).expect("ps json");
    assert!(list.iter().any(|c| c["ip"] == ip_a.to_string()), "{list:?}");

    // Inside: eth0 with the address, lo up, the default route via the gateway.
    let addr = exec_ok(&env, "a", &["ip", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {ip_a}/24")), "{addr}");
    let links = exec_ok(&env, "a", &["ls", "/sys/class/net"]);
    let mut names: Vec<&str> = links.split_whitespace().collect();
    names.sort_unstable();
    assert_eq!(names, ["eth0", "lo"]);
    let routes = exec_ok(&env, "a", &["ip", "route"]);
    assert!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "{routes}"
    );
    let proc_route = exec_ok(&env, "b", &["cat", "/proc/net/route"]);
    let gw_hex = format!("{:08X}", u32::from_ne_bytes(gateway.octets()));
    assert!(
        proc_route
            .lines()
            .any(|l| l.starts_with("eth0\t00000000\t") && l.contains(&gw_hex)),
        "default route via {gw_hex}: {proc_route}"
    );
    exec_ok(&env, "a", &["ping", "-c", "1", "-W", "2", "127.0.0.1"]);

    // /etc/hosts names the container; /etc/resolv.conf has the host's usable resolvers.
    let hosts_a = exec_ok(&env, "a", &["cat", "/etc/hosts"]);
    assert!(hosts_a.starts_with("127.0.0.1\tlocalhost\n"), "{hosts_a}");
    assert!(hosts_a.contains("::1\tlocalhost"), "{hosts_a}");
    assert!(
        hosts_a.contains(&format!("{ip_a}\t{} a\n", &a[..12])),
        "{hosts_a}"
    );
    let hosts_b = exec_ok(&env, "b", &["cat", "/etc/hosts"]);
    assert!(hosts_b.contains(&format!("{ip_b}\tbee b\n")), "{hosts_b}");
    assert_eq!(exec_ok(&env, "b", &["hostname"]).trim(), "bee");
    let resolv = exec_ok(&env, "a", &["cat", "/etc/resolv.conf"]);
    assert_eq!(resolv, etc_files::resolv_conf(&DnsSettings::from_host()));
    assert!(!resolv.contains("nameserver 127."), "{resolv}");
    let (code, _, _) = env.exec("a", &["/bin/sh", "-c", "echo x >> /etc/hosts"]);
    assert_ne!(code, 0, "/etc/hosts is read-only");

    // Container to container (ICMP and TCP) and container to gateway.
    exec_ok(
        &env,
        "b",
        &["ping", "-c", "1", "-W", "2", &ip_a.to_string()],
    );
    exec_ok(
        &env,
        "a",
        &["ping", "-c", "1", "-W", "2", &ip_b.to_string()],
    );
    exec_ok(
        &env,
        "b",
        &["ping", "-c", "1", "-W", "2", &gateway.to_string()],
    );
    let reply = exec_ok(&env, "b", &["nc", "-w", "3", &ip_a.to_string(), "7000"]);
    assert_eq!(reply.trim(), "hello-from-a");

    // The host side: the veth on the bridge, the gateway address, forwarding, masquerade.
    let veth_a = host_veth(&a);
    assert!(link_exists(&veth_a), "{veth_a}");
    assert_eq!(master_of(&veth_a).as_deref(), Some(env.bridge.as_str()));
    let bridge_addr = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &env.bridge])
        .output()
        .expect("ip addr");
    assert!(
        text(&bridge_addr.stdout).contains(&format!("inet {gateway}/24")),
        "{}",
        text(&bridge_addr.stdout)
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .expect("ip_forward")
            .trim(),
        "1"
    );
    let table = std::process::Command::new("nft")
        .args(["list", "table", "ip", &format!("berth_nat_{}", env.bridge)])
        .output()
        .expect("nft");
    let table = text(&table.stdout);
    assert!(
        table.contains(&format!(
            "ip saddr {} oifname != \"{}\" masquerade",
            env.subnet, env.bridge
        )),
        "{table}"
    );

    // Egress leaves with the host's address. The namespace at the other end of this veth has
    // no route back to the pod CIDR: its reply arrives only if the request was masqueraded.
    let outside = NetnsPair::create("nat", 201).expect("netns fixture");
    exec_ok(&env, "b", &["ping", "-c", "1", "-W", "2", &outside.ns_addr]);
    // A pod CIDR the host already uses elsewhere is refused before any bridge is made.
    let overlapping = format!("{}x", env.bridge);
    let out = env.berth_with(
        &["run", "--rm", IMAGE, "/bin/true"],
        &[
            ("BERTH_BRIDGE", overlapping.as_str()),
            ("BERTH_POD_CIDR", "10.251.200.0/22"),
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("overlaps {}/30", outside.host_addr)),
        "{}",
        text(&out.stderr)
    );
    assert!(!link_exists(&overlapping));
    assert!(
        berth_runtime::network::nat::remove_masquerade(&env.bridge).expect("remove table"),
        "the masquerade table existed"
    );
    let (code, _, _) = env.exec("b", &["ping", "-c", "1", "-W", "1", &outside.ns_addr]);
    assert_ne!(code, 0, "without masquerade the reply has no way back");

    // The data plane's record carries the address (network byte order) and the veth.
    let cgroup_id = doc["CgroupId"].as_u64().expect("cgroup id");
    let record = map_entry(&env, cgroup_id).expect("CONTAINERS record");
    assert_eq!(record.ipv4, u32::from_ne_bytes(ip_a.octets()));
    assert_eq!(Some(record.host_ifindex), ifindex_of(&veth_a));
    assert_eq!(doc["DataPlaneRecord"]["ipv4"], ip_a.to_string(), "{doc}");

    // Removing a releases its address and deletes its veth; b keeps its own.
    let out = env.berth(&["rm", "-f", "a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_for(5, || !link_exists(&veth_a)), "{veth_a} deleted");
    let leases = env.leases().expect("leases");
    assert_eq!(leases, vec![(ip_b, b.clone())]);
    // The next container does not get a's address at once (the allocator walks on).
    let c = env
        .run_detached("c", &[], &["/bin/sleep", "300"])
        .expect("run c");
    let ip_c = env.ip_of("c").expect("ip c");
    assert!(ip_c != ip_a && ip_c != ip_b, "{ip_c}");
    exec_ok(
        &env,
        "c",
        &["ping", "-c", "1", "-W", "2", &ip_b.to_string()],
    );
    // Starting c put the masquerade rule back.
    exec_ok(&env, "c", &["ping", "-c", "1", "-W", "2", &outside.ns_addr]);
    assert_eq!(env.leases().expect("leases").len(), 2);
    assert!(link_exists(&host_veth(&c)));
}

#[test]
fn exited_containers_keep_their_address_and_failed_runs_leave_nothing() {
    if !require_root("exited_containers_keep_their_address_and_failed_runs_leave_nothing") {
        return;
    }
    let env = NetEnv::new(12, 24).expect("env");
    let out = env.berth(&[
        "run",
        "--name",
        "fg",
        IMAGE,
        "/bin/sh",
        "-c",
        "ip -4 addr show dev eth0; ping -c 1 -W 2 10.201.12.1; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let ip = env.ip_of("fg").expect("ip");
    assert!(stdout.contains(&format!("inet {ip}/24")), "{stdout}");
    assert!(
        stdout.contains("1 packets received"),
        "the gateway answered: {stdout}"
    );
    // Exited but not removed: the address stays leased (as with Podman); the veth pair died
    // with the container's network namespace.
    let id = env.inspect("fg").expect("inspect")["Id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(env.leases().expect("leases"), vec![(ip, id.clone())]);
    assert!(wait_for(5, || !link_exists(&host_veth(&id))));
    let ps = text(&env.berth(&["ps", "-a"]).stdout);
    assert!(ps.contains(&ip.to_string()), "{ps}");
    assert!(env.berth(&["rm", "fg"]).status.success());
    assert!(env.leases().expect("leases").is_empty());

    // --rm gives the address back when the container exits.
    let out = env.berth(&["run", "--rm", IMAGE, "/bin/true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(env.leases().expect("leases").is_empty());

    // A run that fails after its network was made undoes all of it.
    let out = env.berth(&["run", IMAGE, "/no/such/program"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(env.leases().expect("leases").is_empty());
    let ports = std::fs::read_dir(format!("/sys/class/net/{}/brif", env.bridge))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(ports, 0, "no veth left on the bridge");

    // Bad network input is berth's error (125), named, and makes nothing.
    for (args, env_over, needle) in [
        (
            vec![
                "run",
                "--network",
                "none",
                "-p",
                "8080:80",
                IMAGE,
                "/bin/true",
            ],
            vec![],
            "--network bridge",
        ),
        (vec!["run", "-p", "80", IMAGE, "/bin/true"], vec![], "-p"),
        (
            vec!["run", "-p", "8080:80", "-p", "8080:81", IMAGE, "/bin/true"],
            vec![],
            "already published",
        ),
        (
            vec!["run", IMAGE, "/bin/true"],
            vec![("BERTH_POD_CIDR", "10.201.12.1/24")],
            "--pod-cidr",
        ),
        (
            vec!["run", IMAGE, "/bin/true"],
            vec![("BERTH_POD_CIDR", "10.201.12.0/31")],
            "--pod-cidr",
        ),
        (
            vec!["run", IMAGE, "/bin/true"],
            vec![("BERTH_BRIDGE", "a-bridge-name-too-long")],
            "--bridge",
        ),
        // The bridge exists with 10.201.12.1/24: another pod CIDR on it is refused.
        (
            vec!["run", IMAGE, "/bin/true"],
            vec![("BERTH_POD_CIDR", "10.201.112.0/24")],
            "belongs to another network",
        ),
    ] {
        let out = env.berth_with(&args, &env_over);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?} {env_over:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?} {env_over:?}: {}",
            text(&out.stderr)
        );
    }
    let list: Vec<Value> =
        serde_json::from_slice(&env.berth(&["ps", "-a", "--format", "json"]).stdout)
            .expect("ps json");
    assert!(list.is_empty(), "{list:?}");
}

#[test]
fn network_none_has_only_loopback_and_host_shares_the_host_namespace() {
    if !require_root("network_none_has_only_loopback_and_host_shares_the_host_namespace") {
        return;
    }
    let env = NetEnv::new(13, 24).expect("env");
    let out = env.berth(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--hostname",
        "solo",
        IMAGE,
        "/bin/sh",
        "-c",
        "ls /sys/class/net; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---; ping -c 1 -W 2 127.0.0.1 >/dev/null && echo lo-ok",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let parts: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{stdout}");
    assert_eq!(parts[0].split_whitespace().collect::<Vec<_>>(), ["lo"]);
    assert!(
        parts[1].starts_with("127.0.0.1\tlocalhost\n"),
        "{}",
        parts[1]
    );
    assert!(parts[1].contains("127.0.1.1\tsolo"), "{}", parts[1]);
    assert!(!parts[2].contains("nameserver"), "{}", parts[2]);
    assert!(parts[2].contains("no network"), "{}", parts[2]);
    assert_eq!(parts[3].trim(), "lo-ok");
    assert!(env.leases().expect("leases").is_empty());
    assert!(
        !link_exists(&env.bridge),
        "no bridge made for --network none"
    );

    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("netns");
    let out = env.berth(&[
        "run",
        "--rm",
        "--network",
        "host",
        IMAGE,
        "/bin/readlink",
        "/proc/self/ns/net",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), host_ns.to_string_lossy());
}

#[test]
fn address_management_survives_crashes_and_reports_exhaustion() {
    if !require_root("address_management_survives_crashes_and_reports_exhaustion") {
        return;
    }
    let env = NetEnv::new(14, 28).expect("env");
    // A crashed `berth run` left a lease for a container that does not exist.
    let ghost = "f00d".repeat(16);
    let ipam = Ipam::at(
        &env.root().join("network"),
        &env.bridge,
        env.subnet.parse().expect("subnet"),
    );
    let ghost_ip = ipam.allocate(&ghost).expect("ghost lease");
    let x = env
        .run_detached("x", &[], &["/bin/sleep", "300"])
        .expect("run x");
    let ip_x = env.ip_of("x").expect("ip x");
    assert_ne!(ip_x, ghost_ip, "the allocator walks on from the last lease");
    assert_eq!(
        env.leases().expect("leases"),
        vec![(ip_x, x.clone())],
        "the ghost's lease was reclaimed"
    );

    // kill -9 of x's monitor: the container runs on and keeps its address.
    let pid = env.inspect("x").expect("inspect")["State"]["Pid"]
        .as_i64()
        .expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let monitor: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("ppid");
    let exe = std::fs::read_link(format!("/proc/{monitor}/exe")).expect("monitor exe");
    assert_eq!(
        exe.file_name().and_then(|n| n.to_str()),
        Some("berth"),
        "the init's parent is the monitor"
    );
    // SAFETY: kill with a pid just checked to be this test's berth monitor.
    assert_eq!(unsafe { libc::kill(monitor, libc::SIGKILL) }, 0);
    assert!(wait_for(5, || !std::path::Path::new(&format!(
        "/proc/{monitor}/exe"
    ))
    .exists()));
    let y = env
        .run_detached("y", &[], &["/bin/sleep", "300"])
        .expect("run y");
    let ip_y = env.ip_of("y").expect("ip y");
    assert_ne!(ip_y, ip_x);
    exec_ok(
        &env,
        "y",
        &["ping", "-c", "1", "-W", "2", &ip_x.to_string()],
    );
    let out = env.berth(&["rm", "-f", "x"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(wait_for(5, || !link_exists(&host_veth(&x))));
    assert_eq!(env.leases().expect("leases"), vec![(ip_y, y.clone())]);

    // Another state directory (another --root) must not hand out addresses on a bridge that
    // has containers of this one: its leases cannot see ours.
    let other = NetEnv::new(16, 24).expect("other env");
    let out = other.berth_with(
        &["run", IMAGE, "/bin/true"],
        &[
            ("BERTH_BRIDGE", env.bridge.as_str()),
            ("BERTH_POD_CIDR", env.subnet.as_str()),
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("another berth state directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(env.leases().expect("leases"), vec![(ip_y, y.clone())]);
    drop(other);

    // A full subnet is a clear error that leaves nothing behind: a /30 has one address.
    let small = NetEnv::new(15, 30).expect("small env");
    small
        .run_detached("only", &[], &["/bin/sleep", "300"])
        .expect("run only");
    let out = small.berth(&["run", "--name", "second", IMAGE, "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no free address left in 10.201.15.0/30"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(small.leases().expect("leases").len(), 1);
    let list: Vec<Value> =
        serde_json::from_slice(&small.berth(&["ps", "-a", "--format", "json"]).stdout)
            .expect("ps json");
    assert_eq!(list.len(), 1, "{list:?}");
}

/// Removes an agent's pins and directory on drop (after the agent itself is gone).
struct AgentCleanup(AgentPaths);

impl Drop for AgentCleanup {
    fn drop(&mut self) {
        self.0.cleanup();
    }
}

#[test]
fn published_ports_forward_to_the_container_through_the_data_plane() {
    if !require_root("published_ports_forward_to_the_container_through_the_data_plane") {
        return;
    }
    // Dropped in reverse: the engine's containers, the agent, its pins, the client cgroup.
    let clients = ClientCgroup::create().expect("cgroup");
    let paths = AgentCleanup(AgentPaths::new("netpub").expect("agent paths"));
    let mut env = NetEnv::new(17, 24).expect("env");
    let cgroup = clients.path.to_string_lossy().into_owned();
    let _agent = AgentProcess::start(&paths.0, &["--cgroup", &cgroup, "--pod-cidr", &env.subnet])
        .expect("agent");
    env.pin_root = paths.0.pin_root.clone();
    env.api_socket = paths.0.api_socket.clone();

    let srv = env
        .run_detached(
            "srv",
            &["-p", "18080:7000", "-p", "18081:7001/udp"],
            &[
                "/bin/sh",
                "-c",
                "while true; do echo hello-published | nc -l -p 7000; done",
            ],
        )
        .expect("run srv");
    let doc = env.inspect("srv").expect("inspect");
    assert_eq!(
        doc["NetworkSettings"]["Ports"],
        serde_json::json!([
            {"host_port": 18080, "container_port": 7000, "protocol": "tcp"},
            {"host_port": 18081, "container_port": 7001, "protocol": "udp"},
        ])
    );
    let link_pin = berth::dataplane::PinLayout::new(&env.pin_root)
        .link(berth_common::programs::TC_POD_INGRESS, &host_veth(&srv));
    assert!(link_pin.exists(), "the pod program is attached to the veth");

    // From the host, through the socket hook: node address, host port → container, its port.
    let node = host_address(&env.subnet).expect("host address");
    let (code, out, err) = clients.run(
        "/bin/busybox",
        &["nc", "-w", "3", &node.to_string(), "18080"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "hello-published");

    // A host port is published once.
    let out = env.berth(&["run", "-p", "18080:80", IMAGE, "/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("18080"), "{}", text(&out.stderr));
    assert_eq!(
        env.leases().expect("leases").len(),
        1,
        "the failed run gave its address back"
    );
    let (code, out, err) = clients.run(
        "/bin/busybox",
        &["nc", "-w", "3", &node.to_string(), "18080"],
    );
    assert_eq!(code, 0, "the failed run left srv's port alone: {out}{err}");
    assert_eq!(out.trim(), "hello-published");

    // Removing the container withdraws the port and the attachment.
    let out = env.berth(&["rm", "-f", "srv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!link_pin.exists(), "link pin removed");
    let (code, out, _) = clients.run(
        "/bin/busybox",
        &["nc", "-w", "2", &node.to_string(), "18080"],
    );
    assert_ne!(code, 0, "nothing answers on the unpublished port: {out}");
    assert!(env.leases().expect("leases").is_empty());
}
