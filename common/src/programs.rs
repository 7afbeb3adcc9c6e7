//! Names of berth's kernel programs (the function names in `ebpf/`).

/// XDP on the node's uplink: parses every frame, counts it, and (with the load-balancing work)
/// will translate NodePort / ExternalIP / LoadBalancer traffic. Today it passes every frame.
pub const XDP_LB_INGRESS: &str = "xdp_lb_ingress";

/// cgroup connect4: translates a connect() to a service frontend into a backend.
pub const SOCK_CONNECT4: &str = "sock_connect4";
/// cgroup sendmsg4: the same for unconnected UDP sends.
pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
/// cgroup recvmsg4: shows replies from a backend as coming from the frontend.
pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
/// cgroup getpeername4: shows a translated socket's peer as the frontend.
pub const SOCK_PEERNAME4: &str = "sock_peername4";
/// tc ingress on a pod's host-side veth (traffic from the pod): service DNAT for traffic that
/// did not pass a socket hook, and reverse NAT of replies to translated flows.
pub const TC_POD_INGRESS: &str = "tc_pod_ingress";
/// tc egress on a pod's host-side veth (traffic to the pod): the pod's ingress NetworkPolicy.
pub const TC_POD_EGRESS: &str = "tc_pod_egress";

/// The socket-level load-balancing programs, attached to the cgroup given by `--cgroup`.
pub const SOCK_PROGRAMS: &[&str] = &[SOCK_CONNECT4, SOCK_SENDMSG4, SOCK_RECVMSG4, SOCK_PEERNAME4];

/// Every program the kernel object declares.
pub const ALL: &[&str] = &[
    XDP_LB_INGRESS,
    SOCK_CONNECT4,
    SOCK_SENDMSG4,
    SOCK_RECVMSG4,
    SOCK_PEERNAME4,
    TC_POD_INGRESS,
    TC_POD_EGRESS,
];
