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

/// Syscall entry (`syscalls:sys_enter_<name>`, attached per syscall a rule names): the audit
/// decision, counters, captures, kills.
pub const SYS_ENTER: &str = "sys_enter";
/// Syscall exit (`syscalls:sys_exit_<name>`, for recorded syscalls): adds the return value and
/// emits the record.
pub const SYS_EXIT: &str = "sys_exit";
/// `raw_syscalls:sys_enter`, attached only while some container counts every syscall.
pub const SYS_ENTER_RAW: &str = "sys_enter_raw";
/// `sched:sched_process_exec`: exec events of audited containers.
pub const SYS_PROC_EXEC: &str = "sys_proc_exec";
/// `sched:sched_process_fork`: fork events (the process tree).
pub const SYS_PROC_FORK: &str = "sys_proc_fork";
/// `sched:sched_process_exit`: exit events, and cleanup of a dying thread's pending record.
pub const SYS_PROC_EXIT: &str = "sys_proc_exit";

/// The audit programs (tracepoints; attached and detached by the agent as rules change).
pub const AUDIT_PROGRAMS: &[&str] = &[
    SYS_ENTER,
    SYS_EXIT,
    SYS_ENTER_RAW,
    SYS_PROC_EXEC,
    SYS_PROC_FORK,
    SYS_PROC_EXIT,
];

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
    SYS_ENTER,
    SYS_EXIT,
    SYS_ENTER_RAW,
    SYS_PROC_EXEC,
    SYS_PROC_FORK,
    SYS_PROC_EXIT,
];
