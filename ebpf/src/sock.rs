//! Socket-level load balancing (cgroup sock_addr hooks): a connect() or sendmsg() to a service
//! frontend is rewritten to a backend before the kernel routes anything, so the flow never needs
//! per-packet NAT or a conntrack entry. Replies to translated UDP sockets are shown as coming
//! from the frontend (recvmsg4), and so is a connected UDP socket's peer (getpeername4).
//!
//! TCP needs no reverse translation: the socket is connected to the backend and stays so, even
//! after the backend leaves the service (established connections keep their backend).
//! Like Cilium's socket LB, getpeername() of a translated TCP socket shows the backend.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use berth_common::lb::{
    AFFINITY_CLIENT_NETNS, Backend, LbStat, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SCOPE_INTERNAL,
    SockRevKey, SockRevValue,
};

use crate::{
    lb::{Client, lookup_frontend, select_backend},
    maps::{LB_SOCK_REVNAT, count_lb},
};

/// cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    translate(
        &ctx,
        LbStat::SockConnectForwarded,
        LbStat::SockConnectRejected,
    )
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate(
        &ctx,
        LbStat::SockSendmsgForwarded,
        LbStat::SockSendmsgRejected,
    )
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_peername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[inline(always)]
fn translate(ctx: &SockAddrContext, forwarded: LbStat, rejected: LbStat) -> i32 {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the kernel's context pointer; these fields are readable in connect4 and
    // sendmsg4 programs (the verifier checks each access).
    let (proto, addr, port) = unsafe { ((*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    let proto = proto as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_SCTP {
        return ALLOW;
    }
    // user_port holds the port in network byte order in its low 16 bits.
    let port = port as u16;
    let Some((key, fe)) = lookup_frontend(addr, port, proto, SCOPE_INTERNAL) else {
        return ALLOW;
    };
    // SAFETY: valid context pointer for these helpers in sock_addr programs.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let client = Client {
        kind: AFFINITY_CLIENT_NETNS,
        id: netns,
    };
    let Some(backend) = select_backend(&key, &fe, netns as u32, client) else {
        count_lb(rejected);
        // No usable backend: refuse the connection the way a closed port would, instead of
        // letting it go out towards an address nobody answers (black hole).
        // SAFETY: set_retval is allowed in connect4/sendmsg4; it sets the syscall's errno.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    if proto == PROTO_UDP {
        remember(ctx, &backend, addr, port);
    }
    // SAFETY: user_ip4/user_port are writable in connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = u32::from(backend.port);
    }
    count_lb(forwarded);
    ALLOW
}

/// Records (socket, backend) → frontend so replies can be shown as coming from the frontend.
#[inline(always)]
fn remember(ctx: &SockAddrContext, backend: &Backend, addr: u32, port: u16) {
    // SAFETY: valid context pointer for this helper in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        _pad: 0,
    };
    let value = SockRevValue {
        addr,
        port,
        _pad: 0,
    };
    let _ = LB_SOCK_REVNAT.insert(&key, &value, 0);
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: readable in recvmsg4/getpeername4.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    // SAFETY: valid context pointer for this helper in sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKey {
        cookie,
        addr,
        port: port as u16,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    if let Some(front) = unsafe { LB_SOCK_REVNAT.get(&key) }.copied() {
        // SAFETY: user_ip4/user_port are writable in recvmsg4/getpeername4.
        unsafe {
            (*sa).user_ip4 = front.addr;
            (*sa).user_port = u32::from(front.port);
        }
        count_lb(LbStat::SockRevnat);
    }
}
