//! lb-daemon: the control plane of an XDP direct-routing load balancer.
//!
//! The modules stand in layers; each uses only the layers below it (docs/architecture.md
//! draws them and follows one event through them).

// The daemon: one state, one handler per event, one transactional reload.
pub mod daemon;
// keepalived.conf to TOML (`lb-daemon import`).
pub mod import;

// Views of the state: the status model, the control socket, Prometheus metrics.
pub mod control;
pub mod metrics;
pub mod status;

// Protocol and policy cores (pure, time passed in), each with its I/O shell.
pub mod announce;
pub mod dataplane;
pub mod health;
pub mod realserver;
pub mod script;
pub mod sync;
pub mod vrrp;

// The configuration: the TOML model and its own rules, on the ground floor only.
pub mod config;

// The ground floor: the shared model and the operating system's plumbing.
pub mod log_limit;
pub mod model;
pub mod netlink;
pub mod os;
pub mod par;
pub mod sdnotify;
#[cfg(test)]
pub(crate) mod testutil;
