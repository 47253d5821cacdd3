//! From the daemon's state to the dataplane's view: a pure function of the configuration,
//! the neighbour table's MACs, the health verdicts, each service's quorum and the VRRP roles.
//! Nothing here touches a map or a socket, so every rule is a unit test.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use crate::{
    config::{Config, RealServer, VirtualServer},
    dataplane::{plan, BackendSpec, ServiceSpec},
    model::{Limits, ServiceKey},
    vrrp::track::{TrackEvent, TrackKey},
};

/// A real server's verdict (up, dynamic weight) by its checks; `None`: none yet.
pub(super) type HealthOf<'a> =
    dyn Fn(&VirtualServer, &RealServer) -> Option<(bool, Option<u32>)> + 'a;

/// The dataplane's view: every service with its backends' MACs from `mac_of`, active
/// where the VIP is static or held by a VRRP instance that is master (`master_vips`),
/// and each real server as its health checks say (`health_of`: up, dynamic weight; no
/// verdict yet counts as up). A failing real server keeps its place in the list and
/// takes no new flow; its established flows keep going to it (IPVS keeps them too, with
/// `expire_nodest_conn` at its default 0), so a false verdict resets nothing. With the
/// service's `expire_nodest_conn` (and without `inhibit_on_failure`, which in IPVS
/// keeps the server in the table) it becomes unusable instead: its flows are
/// rescheduled. The real servers a sorry_server stands in for follow the same rule.
pub fn service_specs(
    config: &Config,
    mac_of: impl Fn(IpAddr) -> Option<[u8; 6]>,
    master_vips: &HashSet<IpAddr>,
    health_of: impl Fn(&VirtualServer, &RealServer) -> Option<(bool, Option<u32>)>,
    has_quorum: impl Fn(&VirtualServer) -> bool,
) -> Vec<ServiceSpec> {
    config
        .virtual_servers
        .iter()
        .map(|vs| {
            service_spec(
                vs,
                &config.global_defs.lvs_timeouts(),
                &mac_of,
                master_vips,
                &health_of,
                has_quorum(vs),
            )
        })
        .collect()
}

/// One service of [`service_specs`], its quorum given.
pub fn service_spec(
    vs: &VirtualServer,
    lvs: &crate::model::LvsTimeouts,
    mac_of: impl Fn(IpAddr) -> Option<[u8; 6]>,
    master_vips: &HashSet<IpAddr>,
    health_of: impl Fn(&VirtualServer, &RealServer) -> Option<(bool, Option<u32>)>,
    has_quorum: bool,
) -> ServiceSpec {
    let mut backends: Vec<BackendSpec> = vs
        .real_servers
        .iter()
        .map(|rs| {
            // A TUN or NAT real server is reached through the FIB's next hop: no MAC of its
            // own.
            let forward = rs.forward;
            let mac = if forward.is_dr() {
                mac_of(rs.addr.ip())
            } else {
                Some(crate::dataplane::TUNNEL_MAC)
            };
            match (
                rs.healthy_weight(health_of(vs, rs)),
                rs.checks.inhibit_on_failure,
            ) {
                (Some(weight), _) => BackendSpec {
                    thresholds: rs.thresholds,
                    addr: rs.addr,
                    weight,
                    mac,
                    forward,
                },
                (None, true) => BackendSpec {
                    thresholds: rs.thresholds,
                    addr: rs.addr,
                    weight: 0,
                    mac,
                    forward,
                },
                (None, false) => BackendSpec {
                    thresholds: rs.thresholds,
                    addr: rs.addr,
                    weight: 0,
                    mac: if vs.expire_nodest_conn { None } else { mac },
                    forward,
                },
            }
        })
        .collect();
    // A service without a usable real server stays active: its established flows keep
    // their servers (IPVS keeps a virtual service and its connections whatever its
    // destinations' weights), and only a new flow finds no ring and goes to the stack.
    let active = vs.is_static || master_vips.contains(&vs.vip);
    // Quorum lost: keepalived swaps the pool for the sorry server, or, without one, keeps
    // serving with the servers that are alive (its quorum then only drives `quorum_down`
    // and tracking: `track_virtual_server` is how the VIP moves).
    if let (false, Some(sorry)) = (has_quorum, vs.sorry_server) {
        // The real servers (kept in the list, so their ids and order stay) take no new
        // flow, and keep their established ones unless `expire_nodest_conn`.
        for b in &mut backends {
            b.weight = 0;
            if vs.expire_nodest_conn {
                b.mac = None;
            }
        }
        let forward = vs.sorry_forward;
        backends.push(BackendSpec {
            thresholds: Default::default(),
            addr: sorry,
            weight: 1,
            mac: if forward.is_dr() {
                mac_of(sorry.ip())
            } else {
                Some(crate::dataplane::TUNNEL_MAC)
            },
            forward,
        });
    }
    ServiceSpec {
        vip: vs.vip,
        port: vs.port,
        proto: vs.proto,
        sched: vs.sched,
        hash_port: vs.hash_port,
        persistence_timeout: vs.persistence_timeout,
        persistence_prefix: vs.persistence_prefix,
        idle_timeout: vs.idle_timeout(lvs),
        sloppy_tcp: vs.sloppy_tcp,
        mh_table_size: vs.mh_table_size,
        active,
        aliases: vs.aliases.clone(),
        backends,
    }
}

/// The sizes the program's maps are loaded with: what every service needs with every
/// real server up (its sorry_server too), half as much again for growth, and at least
/// `[dataplane]`'s reserve. The daemon starts with these, and `lb-daemon check` refuses
/// what they refuse: the two run this same plan.
pub fn dataplane_limits(config: &Config) -> Result<Limits, plan::PlanError> {
    let all = HashSet::new();
    let mut specs = service_specs(
        config,
        |_| Some([2, 0, 0, 0, 0, 1]),
        &all,
        |_, _| None,
        |_| true,
    );
    for (spec, vs) in specs.iter_mut().zip(&config.virtual_servers) {
        if let Some(sorry) = vs.sorry_server {
            spec.backends.push(BackendSpec {
                thresholds: Default::default(),
                addr: sorry,
                weight: 1,
                mac: Some([2, 0, 0, 0, 0, 1]),
                forward: vs.sorry_forward,
            });
        }
    }
    let needs = plan::needs(&specs)?;
    let reserve = config
        .dataplane
        .as_ref()
        .map(|d| d.reserve)
        .unwrap_or_default();
    Ok(Limits::with_headroom(needs).max(reserve))
}

/// The quorum changes to report, and what will then have been reported (by service name),
/// from each service's current quorum and what was reported before. A service's first
/// verdict waits until its real servers' MACs are known, or until `settled`: before that, a
/// healthy pool looks empty and would fault its instance at every start.
pub(super) fn quorum_changes(
    config: &Config,
    quorum: impl Fn(&ServiceKey) -> Option<bool>,
    has_mac: impl Fn(IpAddr) -> bool,
    before: &HashMap<String, bool>,
    settled: bool,
) -> (Vec<TrackEvent>, HashMap<String, bool>) {
    let mut events = Vec::new();
    let mut reported = HashMap::new();
    for vs in &config.virtual_servers {
        let name = vs.name();
        let Some(has) = quorum(&vs.key()) else {
            continue;
        };
        let was = before.get(&name).copied();
        let known = settled
            || vs
                .real_servers
                .iter()
                .all(|rs| !rs.forward.is_dr() || has_mac(rs.addr.ip()));
        if was.is_none() && !known {
            continue;
        }
        if was != Some(has) {
            events.push(TrackEvent {
                key: TrackKey::Service(name.clone()),
                status: has.into(),
            });
        }
        reported.insert(name, has);
    }
    (events, reported)
}

#[cfg(test)]
mod quorum_report_tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
[dataplane]
interface = "eth0"

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true
quorum = 2

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80

  [[virtual_server.real_server]]
  ip = "192.0.2.12"
  port = 80
"#;

    #[test]
    fn quorum_changes_are_reported_once_settled() {
        let config = Config::parse(Path::new("t.toml"), TEXT).unwrap();
        let key = config.virtual_servers[0].key();
        let name = "192.0.2.100:80/TCP".to_string();
        let event = |up: bool| TrackEvent {
            key: TrackKey::Service(name.clone()),
            status: up.into(),
        };
        let lost = |k: &ServiceKey| (*k == key).then_some(false);
        let kept = |k: &ServiceKey| (*k == key).then_some(true);
        let one_mac = |ip: IpAddr| ip.to_string() == "192.0.2.11";
        // At start the pool looks empty while MACs resolve: not reported...
        let (events, reported) = quorum_changes(&config, lost, one_mac, &HashMap::new(), false);
        assert!(events.is_empty() && reported.is_empty());
        // ...until every MAC is known, or the settling time is over.
        let (events, reported) = quorum_changes(&config, kept, |_| true, &HashMap::new(), false);
        assert_eq!(events, [event(true)]);
        let (events, _) = quorum_changes(&config, lost, one_mac, &HashMap::new(), true);
        assert_eq!(events, [event(false)]);
        // Once reported, every change is news at once, and only a change.
        let (events, reported) = quorum_changes(&config, kept, one_mac, &reported, false);
        assert!(events.is_empty());
        let (events, reported) = quorum_changes(&config, lost, one_mac, &reported, false);
        assert_eq!(events, [event(false)]);
        let (events, _) = quorum_changes(&config, kept, one_mac, &reported, false);
        assert_eq!(events, [event(true)]);
    }
}

#[cfg(test)]
mod limit_tests {
    use std::path::Path;

    use super::*;
    use crate::config::{tests::GOOD, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("lb.toml"), text)
    }

    /// The maps' sizes follow the configuration: what it needs with every real server up,
    /// and half again, at least the compiled-in sizes and `[dataplane]`'s reserve; 65
    /// services (once refused at start) are fine, and what no node holds is refused by
    /// the same plan `run` makes, naming the limit.
    #[test]
    fn dataplane_limits_follow_the_configuration() {
        let c = parse(GOOD).unwrap();
        assert_eq!(dataplane_limits(&c).unwrap(), Limits::default());
        let mut text = GOOD.to_string();
        for port in 1..=65 {
            text += &format!(
                "\n[[virtual_server]]\nip = \"192.0.2.101\"\nport = {port}\nprotocol = \"TCP\"\n\
                 lb_algo = \"mh\"\nmh_table_size = 1021\nlb_kind = \"DR\"\nstatic = true\n\
                 sorry_server = {{ ip = \"192.0.2.13\", port = {port} }}\n\
                 [[virtual_server.real_server]]\nip = \"192.0.2.11\"\nport = {port}\n"
            );
        }
        let c = parse(&text).unwrap();
        let l = dataplane_limits(&c).unwrap();
        // 66 services; 2 + 65 x 2 (sorry servers count) real servers; rr 2 + 65 x 1021;
        // half again, at least the compiled-in sizes.
        assert_eq!(
            l,
            Limits {
                services: 99,
                backends: 4096,
                ring_slots: (2 + 65 * 1021) * 3 / 2
            }
        );
        let reserved = text.replacen(
            "xdp_mode = \"skb\"",
            "xdp_mode = \"skb\"\nmax_services = 5000\nmax_real_servers = 5000",
            1,
        );
        let l = dataplane_limits(&parse(&reserved).unwrap()).unwrap();
        assert_eq!((l.services, l.backends), (5000, 5000));
        // Beyond any node: ring slots, through Maglev tables of the largest M.
        let mut huge = GOOD.to_string();
        for port in 1..=17 {
            huge += &format!(
                "\n[[virtual_server]]\nip = \"192.0.2.101\"\nport = {port}\nprotocol = \"TCP\"\n\
                 lb_algo = \"mh\"\nmh_table_size = 16777213\nlb_kind = \"DR\"\nstatic = true\n\
                 [[virtual_server.real_server]]\nip = \"192.0.2.11\"\nport = {port}\n"
            );
        }
        let e = dataplane_limits(&parse(&huge).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ring slots: no node holds more than 268435456 (lower mh_table_size"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod quorum_tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
[dataplane]
interface = "eth0"

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true
quorum = 3
hysteresis = 1
sorry_server = { ip = "192.0.2.50", port = 80 }

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80
  weight = 2

  [[virtual_server.real_server]]
  ip = "192.0.2.12"
  port = 80
  weight = 2
"#;

    /// Each real server as its checks say: up with its (dynamic) weight; failing, drained
    /// with `inhibit_on_failure` (weight 0, MAC kept: its flows stay) or unusable (no MAC:
    /// its flows move); no verdict yet, up unless `alpha`. The VIP of a backup instance is
    /// inactive; a static one is always active.
    #[test]
    fn service_specs_follow_health_inhibit_alpha_and_vrrp_roles() {
        let text = format!(
            "{TEXT}
  [[virtual_server.real_server]]
  ip = \"192.0.2.13\"
  port = 80
  weight = 2
  inhibit_on_failure = true
    [[virtual_server.real_server.TCP_CHECK]]

  [[virtual_server.real_server]]
  ip = \"192.0.2.14\"
  port = 80
  weight = 2
    [[virtual_server.real_server.TCP_CHECK]]
    alpha = true

[[vrrp_instance]]
name = \"VI_1\"
interface = \"eth0\"
virtual_router_id = 1
priority = 100
virtual_ipaddress = [\"192.0.2.200\"]

[[virtual_server]]
ip = \"192.0.2.200\"
port = 80
protocol = \"TCP\"
lb_algo = \"rr\"
lb_kind = \"DR\"

  [[virtual_server.real_server]]
  ip = \"192.0.2.21\"
  port = 80
"
        )
        .replace("quorum = 3\nhysteresis = 1\n", "");
        let c = Config::parse(Path::new("lb.toml"), &text).unwrap();
        let mac = [2, 0, 0, 0, 0, 1];
        let ip = |b: &BackendSpec| b.addr.ip().to_string();
        // .11 up with a dynamic weight, .12 failing, .13 failing but inhibited, .14 alpha
        // without a verdict yet.
        let verdicts = |_: &VirtualServer, rs: &RealServer| match rs.addr.ip().to_string().as_str()
        {
            "192.0.2.11" => Some((true, Some(7))),
            "192.0.2.12" | "192.0.2.13" => Some((false, None)),
            _ => None,
        };
        let none = Default::default();
        let specs = service_specs(&c, |_| Some(mac), &none, verdicts, |_| true);
        let b = &specs[0].backends;
        assert_eq!(
            b.iter()
                .map(|b| (ip(b), b.weight, b.mac.is_some()))
                .collect::<Vec<_>>(),
            [
                ("192.0.2.11".to_string(), 7, true),
                // Failing: no new flows, established ones stay (expire_nodest_conn off).
                ("192.0.2.12".to_string(), 0, true),
                ("192.0.2.13".to_string(), 0, true),
                // No verdict yet: takes no flow (and has none to keep).
                ("192.0.2.14".to_string(), 0, true),
            ]
        );
        // With expire_nodest_conn the failing server's flows are rescheduled (no MAC);
        // the inhibited one keeps its place and its flows, as in IPVS.
        let expiring = Config::parse(
            Path::new("lb.toml"),
            &text.replacen(
                "lb_kind = \"DR\"\n",
                "lb_kind = \"DR\"\nexpire_nodest_conn = true\n",
                1,
            ),
        )
        .unwrap();
        assert!(expiring.virtual_servers[0].expire_nodest_conn);
        let specs = service_specs(&expiring, |_| Some(mac), &none, verdicts, |_| true);
        assert_eq!(
            specs[0]
                .backends
                .iter()
                .map(|b| (ip(b), b.weight, b.mac.is_some()))
                .collect::<Vec<_>>()[1..3],
            [
                ("192.0.2.12".to_string(), 0, false),
                ("192.0.2.13".to_string(), 0, true),
            ]
        );
        assert!(specs[0].active, "static");
        assert!(!specs[1].active, "its instance is not master here");
        let master: HashSet<IpAddr> = ["192.0.2.200".parse().unwrap()].into();
        let specs = service_specs(&c, |_| Some(mac), &master, verdicts, |_| true);
        assert!(specs[1].active, "its instance is master");
        assert_eq!(specs[1].backends[0].weight, 1, "no checks: up, its weight");
        // The alpha server's first success brings it in.
        let up = |_: &VirtualServer, _: &RealServer| Some((true, None));
        let specs = service_specs(&c, |_| Some(mac), &none, up, |_| true);
        assert_eq!(
            (specs[0].backends[3].weight, specs[0].backends[3].mac),
            (2, Some(mac))
        );
    }

    #[test]
    fn quorum_with_hysteresis() {
        let c = Config::parse(Path::new("lb.toml"), TEXT).unwrap();
        let vs = &c.virtual_servers[0];
        assert_eq!((vs.quorum, vs.hysteresis), (3, 1));
        // Has it: kept down to quorum - hysteresis = 2.
        assert!(vs.quorum_next(true, 2));
        assert!(!vs.quorum_next(true, 1));
        // Lost it: regained only at quorum + hysteresis = 4.
        assert!(!vs.quorum_next(false, 3));
        assert!(vs.quorum_next(false, 4));
    }

    #[test]
    fn lost_quorum_swaps_in_the_sorry_server_or_keeps_serving() {
        let c = Config::parse(Path::new("lb.toml"), TEXT).unwrap();
        let mac = |_| Some([2, 0, 0, 0, 0, 1]);
        let specs = service_specs(&c, mac, &Default::default(), |_, _| None, |_| false);
        let s = &specs[0];
        assert!(s.active);
        assert_eq!(s.backends.len(), 3);
        // No new flows for the pool; its established flows stay (expire_nodest_conn off).
        assert!(s.backends[..2]
            .iter()
            .all(|b| b.weight == 0 && b.mac.is_some()));
        assert_eq!(s.backends[2].addr, "192.0.2.50:80".parse().unwrap());
        assert_eq!(s.backends[2].weight, 1);
        let without = Config::parse(
            Path::new("lb.toml"),
            &TEXT.replace("sorry_server = { ip = \"192.0.2.50\", port = 80 }\n", ""),
        )
        .unwrap();
        // No sorry server: the service goes on with what is alive, as keepalived does.
        let up = |_: &VirtualServer, rs: &RealServer| Some((rs.addr.port() == 80, None));
        let specs = service_specs(&without, mac, &Default::default(), up, |_| false);
        assert!(
            specs[0].active,
            "no sorry server: the service keeps serving"
        );
        assert_eq!(
            specs[0]
                .backends
                .iter()
                .map(|b| b.weight)
                .collect::<Vec<_>>(),
            [2, 2]
        );
        let e = Config::parse(
            Path::new("lb.toml"),
            &TEXT.replace("quorum = 3", "quorum = 0"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`virtual_server.quorum`"), "{e}");
    }
}
