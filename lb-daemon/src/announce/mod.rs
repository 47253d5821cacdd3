//! `[announce]`: the VIPs this node serves, told to a routing daemon (BIRD, FRR) that
//! announces them over BGP, so that the router spreads the flows over every node (ECMP).
//!
//! * The pure part ([`plan`]): a VIP is announced while every service on it has its
//!   quorum. A node that cannot serve all of what the route draws steps aside, as a VRRP
//!   instance that tracks its services (`track_virtual_server`) gives its VIPs away.
//! * The shell ([`routes`]): a task that holds a TUN device (`lbvip0`) and keeps one host
//!   route through it in a table of its own (`table 100`) for each announced VIP. The
//!   routing daemon learns that table (BIRD's `kernel` protocol with `learn`, FRR's
//!   `ip import-table`). The device is not persistent: when the daemon dies, however it
//!   dies, the kernel removes the device and its routes, and the routing daemon withdraws
//!   them. `dist/bird/` has the configuration that goes with it.
//!
//! Why a kernel table rather than the routing daemon's control socket: a route is one
//! atomic netlink message (no configuration reload, no program to run), and only a route
//! through a device the daemon holds dies with the daemon; a static route written into
//! BIRD's or FRR's configuration would outlive it and keep drawing traffic to a dead node.
pub mod routes;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{AnnounceConfig, VirtualServer};

/// What one VIP is told, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct VipPlan {
    pub vip: Option<IpAddr>,
    /// Whether it should be announced.
    pub wanted: bool,
    /// Why, for status: "every service has its quorum", or the first service without.
    pub reason: String,
}

/// Which of `a`'s VIPs are announced, from each service's quorum (`quorum_of`: `None` when
/// the service has not been planned yet, which announces nothing: a node draws traffic
/// only once it knows it can serve it).
pub fn plan(
    a: &AnnounceConfig,
    services: &[std::sync::Arc<VirtualServer>],
    quorum_of: impl Fn(&VirtualServer) -> Option<bool>,
) -> Vec<VipPlan> {
    a.vips
        .iter()
        .map(|&vip| {
            let mut on_it = services
                .iter()
                .filter(|vs| vs.addresses().any(|(ip, _)| ip == vip))
                .peekable();
            if on_it.peek().is_none() {
                return VipPlan {
                    vip: Some(vip),
                    wanted: false,
                    reason: "no virtual_server".into(),
                };
            }
            for vs in on_it {
                match quorum_of(vs) {
                    Some(true) => {}
                    Some(false) => {
                        return VipPlan {
                            vip: Some(vip),
                            wanted: false,
                            reason: format!("{} lost its quorum", vs.name()),
                        }
                    }
                    None => {
                        return VipPlan {
                            vip: Some(vip),
                            wanted: false,
                            reason: format!("{} is not served yet", vs.name()),
                        }
                    }
                }
            }
            VipPlan {
                vip: Some(vip),
                wanted: true,
                reason: "every service has its quorum".into(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
[dataplane]
interface = "eth0"

[announce]
vips = ["203.0.113.10", "203.0.113.11"]
{extra}

[[virtual_server]]
ip = "203.0.113.10"
port = 80
protocol = "TCP"
lb_algo = "mh"
lb_kind = "DR"
  [[virtual_server.real_server]]
  ip = "192.0.2.21"
  port = 80

[[virtual_server]]
ip = "203.0.113.10"
port = 443
protocol = "TCP"
lb_algo = "mh"
lb_kind = "DR"
  [[virtual_server.real_server]]
  ip = "192.0.2.21"
  port = 443

[[virtual_server]]
ip = "203.0.113.11"
port = 80
protocol = "TCP"
lb_algo = "mh"
lb_kind = "DR"
  [[virtual_server.real_server]]
  ip = "192.0.2.22"
  port = 80
"#
        );
        Config::parse(std::path::Path::new("lb.toml"), &text).unwrap()
    }

    #[test]
    fn a_vip_is_announced_while_every_service_on_it_has_its_quorum() {
        let c = config("");
        let a = c.announce.as_ref().unwrap();
        let all = plan(a, &c.virtual_servers, |_| Some(true));
        assert!(all.iter().all(|p| p.wanted), "{all:?}");
        // :443 loses its quorum: the VIP goes, the other VIP stays.
        let some = plan(a, &c.virtual_servers, |vs| Some(vs.port != 443));
        assert!(!some[0].wanted);
        assert!(some[0].reason.contains("443"), "{}", some[0].reason);
        assert!(some[1].wanted);
        // Not planned yet: nothing is drawn here.
        let none = plan(a, &c.virtual_servers, |_| None);
        assert!(none
            .iter()
            .all(|p| !p.wanted && p.reason.contains("not served yet")));
    }

    #[test]
    fn the_section_is_checked() {
        let c = config("table = 7\ndevice = \"vips\"");
        let a = c.announce.unwrap();
        assert_eq!((a.table, a.device.as_str()), (7, "vips"));
        let bad = |extra: &str, vips: &str, want: &str| {
            let text = format!(
                "[dataplane]\ninterface = \"eth0\"\n\n[announce]\nvips = {vips}\n{extra}\n\n\
                 [[virtual_server]]\nip = \"203.0.113.10\"\nport = 80\nprotocol = \"TCP\"\nlb_kind = \"DR\"\n  \
                 [[virtual_server.real_server]]\n  ip = \"192.0.2.21\"\n  port = 80\n"
            );
            let e = Config::parse(std::path::Path::new("lb.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(e.starts_with("lb.toml:"), "{e}");
        };
        bad("table = 254", "[\"203.0.113.10\"]", "announce.table");
        bad("table = 0", "[\"203.0.113.10\"]", "announce.table");
        bad("table = 252", "[\"203.0.113.10\"]", "announce.table");
        bad(
            "device = \"vip%d\"",
            "[\"203.0.113.10\"]",
            "announce.device",
        );
        bad("", "[\"169.254.0.10\"]", "cannot be a VIP");
        bad("", "[\"fe80::10\"]", "cannot be a VIP");
        bad("", "[\"255.255.255.255\"]", "cannot be a VIP");
        bad("device = \"a/b\"", "[\"203.0.113.10\"]", "announce.device");
        bad(
            "device = \"sixteen_chars_xx\"",
            "[\"203.0.113.10\"]",
            "announce.device",
        );
        bad("", "[]", "announce.vips");
        bad("", "[\"203.0.113.10\", \"203.0.113.10\"]", "listed twice");
        bad("", "[\"nope\"]", "not an IP address");
        bad(
            "",
            "[\"203.0.113.10\", \"203.0.113.99\"]",
            "203.0.113.99 has no virtual_server",
        );
        bad("bogus = 1", "[\"203.0.113.10\"]", "bogus");
    }
}
