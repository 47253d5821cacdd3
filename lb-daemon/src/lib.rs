//! lb-daemon: the control plane of an XDP direct-routing load balancer.
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod netlink;
pub mod vrrp;
