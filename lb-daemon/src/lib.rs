//! lb-daemon: the control plane of an XDP direct-routing load balancer.
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod import;
pub mod log_limit;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod os;
pub mod par;
pub mod realserver;
pub mod script;
pub mod sdnotify;
pub mod status;
pub mod sync;
#[cfg(test)]
pub(crate) mod testutil;
pub mod vrrp;
