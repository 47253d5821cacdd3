//! lb-daemon: the control plane of an XDP direct-routing load balancer.
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod import;
pub mod metrics;
pub mod netlink;
pub mod par;
pub mod realserver;
pub mod sdnotify;
pub mod status;
pub mod sync;
pub mod vrrp;
