//! What a daemon that took over a previous run's dataplane believes until its own parts
//! have spoken (pure): the MACs, health verdicts and VRRP roles the pinned maps say were
//! in force. Without them the first apply would write a dataplane of unknown MACs, real
//! servers not yet checked and no master: every service inactive, every flow rescheduled.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use crate::{config::Config, dataplane::ServiceSpec, model::ServiceKey};

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Seeds {
    /// Real servers' MACs, until the neighbour resolver says otherwise.
    pub macs: HashMap<IpAddr, [u8; 6]>,
    /// Real servers with checks that were draining although configured with a weight:
    /// their checks start down (as under `alpha`) until their first success.
    pub down: HashSet<(ServiceKey, SocketAddr)>,
    /// VIPs of VRRP instances whose services were active: served until the instance says
    /// otherwise.
    pub master_vips: HashSet<IpAddr>,
}

/// The seeds of `adopted` (the planner's view of the pinned maps) for `config`.
pub(super) fn seeds(adopted: &[ServiceSpec], config: &Config) -> Seeds {
    let mut s = Seeds::default();
    // By every key: a group's service is read back under its least key, which need not
    // be the configuration's first.
    let by_key: HashMap<ServiceKey, &ServiceSpec> = adopted
        .iter()
        .flat_map(|a| {
            std::iter::once((a.vip, a.port))
                .chain(a.aliases.iter().copied())
                .map(move |(vip, port)| (ServiceKey::new(vip, port, a.proto), a))
        })
        .collect();
    for a in adopted {
        // A TUN backend has no MAC of its own to seed.
        for b in a.backends.iter().filter(|b| b.forward.is_dr()) {
            if let Some(mac) = b.mac {
                s.macs.insert(b.addr.ip(), mac);
            }
        }
    }
    let vrrp_vips: HashSet<IpAddr> = config
        .vrrp_instances
        .iter()
        .flat_map(|i| i.virtual_ipaddress.iter().map(|v| v.addr))
        .collect();
    for vs in &config.virtual_servers {
        let Some(a) = by_key.get(&vs.key()) else {
            continue;
        };
        if a.active && !vs.is_static && vrrp_vips.contains(&vs.vip) {
            s.master_vips.insert(vs.vip);
        }
        for rs in &vs.real_servers {
            let was = a.backends.iter().find(|b| b.addr == rs.addr);
            if rs.weight > 0 && !rs.checks.is_empty() && was.is_some_and(|b| b.weight == 0) {
                s.down.insert((vs.key(), rs.addr));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::BackendSpec;

    const TOML: &str = r#"
[dataplane]
interface = "eth0"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["192.0.2.10/24"]

[[virtual_server]]
ip = "192.0.2.10"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
[[virtual_server.real_server]]
ip = "198.51.100.1"
port = 80
weight = 1
[virtual_server.real_server.TCP_CHECK]
connect_timeout = 1
[[virtual_server.real_server]]
ip = "198.51.100.2"
port = 80
weight = 1
[virtual_server.real_server.TCP_CHECK]
connect_timeout = 1
[[virtual_server.real_server]]
ip = "198.51.100.3"
port = 80
weight = 0

[[virtual_server]]
ip = "192.0.2.20"
port = 80
protocol = "TCP"
static = true
lb_algo = "rr"
lb_kind = "DR"
[[virtual_server.real_server]]
ip = "198.51.100.4"
port = 80
weight = 1
"#;

    fn spec(vip: &str, active: bool, backends: &[(&str, u32, bool)]) -> ServiceSpec {
        ServiceSpec {
            vip: vip.parse().unwrap(),
            port: 80,
            proto: crate::model::Proto::Tcp,
            sched: crate::model::Scheduler::Rr,
            hash_port: false,
            persistence_timeout: 0,
            persistence_prefix: 32,
            idle_timeout: 900,
            sloppy_tcp: false,
            mh_table_size: 65537,
            active,
            aliases: Vec::new(),
            backends: backends
                .iter()
                .map(|(a, w, mac)| BackendSpec {
                    thresholds: Default::default(),
                    addr: a.parse().unwrap(),
                    weight: *w,
                    mac: mac.then_some([2, 0, 0, 0, 0, 1]),
                    forward: crate::model::Forward::Dr,
                })
                .collect(),
        }
    }

    #[test]
    fn what_the_maps_said_is_believed() {
        let config = Config::parse(std::path::Path::new("lb.toml"), TOML).unwrap();
        let adopted = [
            spec(
                "192.0.2.10",
                true,
                &[
                    ("198.51.100.1:80", 1, true),
                    ("198.51.100.2:80", 0, true),
                    ("198.51.100.3:80", 0, true),
                ],
            ),
            spec("192.0.2.20", true, &[("198.51.100.4:80", 0, false)]),
        ];
        let s = seeds(&adopted, &config);
        assert_eq!(s.macs.len(), 3, "{:?}", s.macs);
        assert!(!s.macs.contains_key(&"198.51.100.4".parse().unwrap()));
        // Only the checked server configured with a weight was down; the one of weight 0
        // drains by configuration, the unchecked one had no MAC.
        let key = config.virtual_servers[0].key();
        assert_eq!(
            s.down,
            HashSet::from([(key, "198.51.100.2:80".parse().unwrap())])
        );
        // The VRRP VIP was served; the other VIP is no instance's.
        assert_eq!(
            s.master_vips,
            HashSet::from(["192.0.2.10".parse().unwrap()])
        );
        let inactive = [spec("192.0.2.10", false, &[])];
        assert!(seeds(&inactive, &config).master_vips.is_empty());
    }
}
