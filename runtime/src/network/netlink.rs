//! Links, addresses and routes over rtnetlink: the bridge, each container's veth pair, and the
//! container side of it (eth0, its address, lo, the default route).
//!
//! The engine is synchronous, so each operation runs on a small current-thread tokio runtime
//! of its own. Work inside a container's network namespace happens on a dedicated thread that
//! joins the namespace (`setns` changes only the calling thread's) and opens its own netlink
//! socket there: a socket talks to the namespace it was created in. The caller's thread never
//! changes namespace.

use std::{
    fs::File,
    future::Future,
    io::Read as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressMessage},
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    },
};

use super::{Ipv4Net, NetworkConfig, NetworkError, VethAttachment};

/// The container-side interface name.
pub const CONTAINER_IFNAME: &str = "eth0";

fn runtime() -> Result<tokio::runtime::Runtime, NetworkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| NetworkError::Netlink {
            op: "starting the netlink runtime".into(),
            detail: e.to_string(),
        })
}

fn block_on<T>(f: impl Future<Output = Result<T, NetworkError>>) -> Result<T, NetworkError> {
    runtime()?.block_on(f)
}

async fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::Netlink {
            op: "opening a netlink socket".into(),
            detail: e.to_string(),
        })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let op = op.into();
    move |e| NetworkError::Netlink {
        op,
        detail: match &e {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io().to_string(),
            other => other.to_string(),
        },
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetworkError> {
    match h
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_collect::<Vec<_>>()
        .await
    {
        Ok(links) => Ok(links.into_iter().next()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_err(format!("looking up link {name}"))(e)),
    }
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, NetworkError> {
    link_by_name(h, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Netlink {
            op: format!("looking up link {name}"),
            detail: "no such interface".into(),
        })
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// IPv4 addresses as (address, prefix length, interface index, label).
fn ipv4_of(msg: &AddressMessage) -> Option<(Ipv4Addr, u8, u32, Option<String>)> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut local = None;
    let mut address = None;
    let mut label = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            AddressAttribute::Label(l) => label = Some(l.clone()),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS differs only on point-to-point
    // links, where it is the peer's.
    local
        .or(address)
        .map(|ip| (ip, msg.header.prefix_len, msg.header.index, label))
}

async fn ipv4_addresses(
    h: &Handle,
) -> Result<Vec<(Ipv4Addr, u8, u32, Option<String>)>, NetworkError> {
    let all = h
        .address()
        .get()
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(nl_err("listing addresses"))?;
    Ok(all.iter().filter_map(ipv4_of).collect())
}

async fn set_up(h: &Handle, index: u32, what: &str) -> Result<(), NetworkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("setting {what} up")))
}

async fn delete_link(h: &Handle, name: &str) -> Result<bool, NetworkError> {
    let Some(link) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting link {name}"))(e)),
    }
}

/// A locally administered unicast MAC. The bridge gets a fixed one: otherwise it takes the
/// lowest MAC of its ports and changes it as containers come and go, and the containers' ARP
/// entries for the gateway go stale each time.
fn random_mac() -> Result<Vec<u8>, NetworkError> {
    let mut mac = [0u8; 6];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(|e| NetworkError::io("reading", std::path::Path::new("/dev/urandom"), e))?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac.to_vec())
}

/// The bridge's alias names the state directory whose leases its containers' addresses come
/// from: two berth state directories (two `--root`s) handing out addresses on one bridge would
/// give two containers one address.
fn owner_alias(config: &NetworkConfig) -> String {
    let dir = std::fs::canonicalize(&config.state_dir).unwrap_or_else(|_| config.state_dir.clone());
    format!("berth:{}", dir.display())
}

fn link_alias(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
        _ => None,
    })
}

/// Names of the interfaces attached to bridge `index`.
async fn bridge_ports(h: &Handle, index: u32) -> Result<Vec<String>, NetworkError> {
    let links = h
        .link()
        .get()
        .execute()
        .try_collect::<Vec<_>>()
        .await
        .map_err(nl_err("listing links"))?;
    Ok(links
        .iter()
        .filter(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(c) if *c == index))
        })
        .filter_map(|l| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })
        })
        .collect())
}

/// Creates the bridge if missing, checks it holds the gateway address (adding it when it holds
/// none) and belongs to this state directory (taking it over when no container is attached),
/// refuses a pod CIDR that overlaps another interface's network, and sets it up. Returns the
/// bridge's ifindex.
pub(crate) fn ensure_bridge(config: &NetworkConfig) -> Result<u32, NetworkError> {
    block_on(async {
        let h = connect().await?;
        let bridge = &config.bridge;
        let owner = owner_alias(config);
        let gateway = config.gateway();
        let prefix = config.subnet.prefix_len();
        let found = link_by_name(&h, bridge).await?;
        // Checked before anything is made, so a refused pod CIDR leaves no bridge behind.
        let existing = found.as_ref().map(|l| l.header.index);
        let addresses = ipv4_addresses(&h).await?;
        for (ip, len, ifindex, label) in &addresses {
            if Some(*ifindex) == existing {
                continue;
            }
            let Ok(net) = Ipv4Net::new(Ipv4Addr::from(u32::from(*ip) & prefix_mask(*len)), *len)
            else {
                continue;
            };
            if net.overlaps(&config.subnet) {
                return Err(NetworkError::Conflict(format!(
                    "pod CIDR {} overlaps {ip}/{len} on {}: choose a pod CIDR the host does not use",
                    config.subnet,
                    label
                        .clone()
                        .unwrap_or_else(|| format!("interface {ifindex}")),
                )));
            }
        }
        let link = match found {
            Some(link) => link,
            None => {
                let msg = LinkBridge::new(bridge).address(random_mac()?).build();
                match h.link().add(msg).execute().await {
                    Ok(()) => {}
                    // Another berth created it meanwhile.
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(nl_err(format!("creating bridge {bridge}"))(e)),
                }
                link_by_name(&h, bridge)
                    .await?
                    .ok_or_else(|| NetworkError::Netlink {
                        op: format!("creating bridge {bridge}"),
                        detail: "it vanished right after creation".into(),
                    })?
            }
        };
        match link_kind(&link) {
            Some(InfoKind::Bridge) => {}
            other => {
                return Err(NetworkError::Conflict(format!(
                    "interface {bridge} exists but is not a bridge ({}): choose another bridge name",
                    other.map_or_else(|| "no link kind".to_owned(), |k| format!("{k:?}"))
                )));
            }
        }
        let index = link.header.index;
        let take_over = match link_alias(&link) {
            Some(alias) if alias == owner => false,
            Some(other) if other.starts_with("berth:") => {
                let ports = bridge_ports(&h, index).await?;
                if !ports.is_empty() {
                    return Err(NetworkError::Conflict(format!(
                        "bridge {bridge} is used by containers of another berth state directory ({}; attached: {}): use another bridge for this one",
                        other.trim_start_matches("berth:"),
                        ports.join(", ")
                    )));
                }
                true
            }
            // A bridge set up by someone else keeps its description.
            Some(other) if !other.is_empty() => false,
            _ => true,
        };
        if take_over {
            h.link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .alias(owner.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("marking bridge {bridge} as berth's")))?;
        }
        // A bridge made just now (or by a racing berth, which adds the same gateway) has none
        // in the list taken above.
        let own: Vec<(Ipv4Addr, u8)> = addresses
            .iter()
            .filter(|a| a.2 == index)
            .map(|a| (a.0, a.1))
            .collect();
        if !own.contains(&(gateway, prefix)) {
            if !own.is_empty() {
                let list: Vec<String> = own.iter().map(|(ip, len)| format!("{ip}/{len}")).collect();
                return Err(NetworkError::Conflict(format!(
                    "bridge {bridge} has address {} but this network's gateway is {gateway}/{prefix} (pod CIDR {}): it belongs to another network; use another bridge name or that network's pod CIDR",
                    list.join(", "),
                    config.subnet
                )));
            }
            match h
                .address()
                .add(index, IpAddr::V4(gateway), prefix)
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(nl_err(format!(
                        "adding {gateway}/{prefix} to bridge {bridge}"
                    ))(e));
                }
            }
        }
        set_up(&h, index, &format!("bridge {bridge}")).await?;
        Ok(index)
    })
}

fn prefix_mask(len: u8) -> u32 {
    match len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - u32::from(n)),
    }
}

/// Runs `f` with a netlink handle inside the network namespace `ns`, on a thread of its own.
fn in_netns<T, F, Fut>(ns: &File, what: &str, f: F) -> Result<T, NetworkError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetworkError::Netlink {
                        op: format!("{what}: joining the container's network namespace"),
                        detail: e.to_string(),
                    }
                })?;
                block_on(async { f(connect().await?).await })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetworkError::Netlink {
                    op: what.to_owned(),
                    detail: "the network namespace thread panicked".into(),
                })
            })
    })
}

fn open_netns(pid: i32) -> Result<File, NetworkError> {
    let path = format!("/proc/{pid}/ns/net");
    File::open(&path).map_err(|e| NetworkError::io("opening", std::path::Path::new(&path), e))
}

async fn lo_up(h: &Handle) -> Result<(), NetworkError> {
    let lo = index_of(h, "lo").await?;
    set_up(h, lo, "lo").await
}

/// Sets `lo` up in the network namespace of process `pid` (a new namespace starts with it
/// down, and containers expect 127.0.0.1 to work).
pub(crate) fn loopback_up(pid: i32) -> Result<(), NetworkError> {
    let ns = open_netns(pid)?;
    in_netns(&ns, "setting lo up", |h| async move { lo_up(&h).await })
}

/// The veth pair of `container_id`: the host side joins the bridge, the other side becomes
/// `eth0` in the network namespace of `pid` with `ip`, and the container routes by default
/// through the gateway. Anything half-made is deleted on failure.
pub(crate) fn attach_veth(
    config: &NetworkConfig,
    container_id: &str,
    pid: i32,
    ip: Ipv4Addr,
) -> Result<VethAttachment, NetworkError> {
    if !config.subnet.contains(ip) {
        return Err(NetworkError::Conflict(format!(
            "address {ip} is not in the pod CIDR {}",
            config.subnet
        )));
    }
    let ns = open_netns(pid)?;
    let host = super::host_ifname(container_id);
    let peer = super::peer_ifname(container_id);
    let bridge = config.bridge.clone();
    let host_ifindex = block_on(async {
        let h = connect().await?;
        let bridge_index = index_of(&h, &bridge).await?;
        // Left over by a crash between creating the pair and moving its peer: a retry must
        // not fail on the names.
        delete_link(&h, &host).await?;
        delete_link(&h, &peer).await?;
        h.link()
            .add(LinkVeth::new(&host, &peer).build())
            .execute()
            .await
            .map_err(nl_err(format!("creating veth pair {host}/{peer}")))?;
        let wire = async {
            let host_index = index_of(&h, &host).await?;
            let peer_index = index_of(&h, &peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host_index)
                        .controller(bridge_index)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("attaching {host} to bridge {bridge}")))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer_index)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!(
                    "moving {peer} into the container's network namespace"
                )))?;
            Ok(host_index)
        };
        match wire.await {
            Ok(index) => Ok(index),
            Err(e) => {
                let _ = delete_link(&h, &host).await;
                let _ = delete_link(&h, &peer).await;
                Err(e)
            }
        }
    })?;
    let gateway = config.gateway();
    let prefix_len = config.subnet.prefix_len();
    let inside = in_netns(&ns, "configuring the container's eth0", |h| {
        let peer = peer.clone();
        async move {
            let index = index_of(&h, &peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .name(CONTAINER_IFNAME.to_owned())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("renaming {peer} to {CONTAINER_IFNAME}")))?;
            h.address()
                .add(index, IpAddr::V4(ip), prefix_len)
                .execute()
                .await
                .map_err(nl_err(format!(
                    "adding {ip}/{prefix_len} to {CONTAINER_IFNAME}"
                )))?;
            set_up(&h, index, CONTAINER_IFNAME).await?;
            lo_up(&h).await?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gateway)
                        .output_interface(index)
                        .build(),
                )
                .execute()
                .await
                .map_err(nl_err(format!("adding the default route via {gateway}")))?;
            Ok(())
        }
    });
    if let Err(e) = inside {
        let _ = delete_link_by_name(&host);
        return Err(e);
    }
    Ok(VethAttachment {
        host_ifname: host,
        host_ifindex,
        container_ifname: CONTAINER_IFNAME.to_owned(),
        ip,
        prefix_len,
        gateway,
    })
}

/// Deletes the interface `name` in the caller's namespace; Ok(false) if it does not exist.
pub(crate) fn delete_link_by_name(name: &str) -> Result<bool, NetworkError> {
    block_on(async {
        let h = connect().await?;
        delete_link(&h, name).await
    })
}

/// The ifindex of `name` in the caller's namespace, if it exists.
pub(crate) fn ifindex(name: &str) -> Result<Option<u32>, NetworkError> {
    block_on(async {
        let h = connect().await?;
        Ok(link_by_name(&h, name).await?.map(|l| l.header.index))
    })
}

/// A route of the main IPv4 table whose output interface is a veth: how the host reaches a pod
/// that another CNI (or a test) wired to it with a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethRoute {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub ifindex: u32,
    pub ifname: String,
}

/// The main table's IPv4 routes through veth interfaces (connected routes of per-pod /30s and
/// per-pod /32 routes alike), in the caller's namespace.
pub fn veth_routes() -> Result<Vec<VethRoute>, NetworkError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
    block_on(async {
        let h = connect().await?;
        let links: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing links"))?;
        let veths: std::collections::HashMap<u32, String> = links
            .iter()
            .filter(|l| link_kind(l) == Some(&InfoKind::Veth))
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect();
        let routes: Vec<_> = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing routes"))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.header.table == RouteHeader::RT_TABLE_MAIN)
            .filter_map(|r| {
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut oif = None;
                for a in &r.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let ifindex = oif?;
                Some(VethRoute {
                    dst,
                    prefix_len: r.header.destination_prefix_length,
                    ifindex,
                    ifname: veths.get(&ifindex)?.clone(),
                })
            })
            .collect())
    })
}
