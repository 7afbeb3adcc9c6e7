//! Names of berth's kernel programs (the function names in `ebpf/`).

/// XDP on the node's uplink: parses every frame, counts it, and (with the load-balancing work)
/// will translate NodePort / ExternalIP / LoadBalancer traffic. Today it passes every frame.
pub const XDP_LB_INGRESS: &str = "xdp_lb_ingress";

/// Every program the kernel object declares.
pub const ALL: &[&str] = &[XDP_LB_INGRESS];
