//! Issue 16 in namespaces: a daemon with 1,000 static services forwards through them with
//! the lab's nginx real servers, and a reload to 1,600 services, beyond the room the maps
//! were loaded with, grows the maps under live traffic: the new services forward, and
//! keep-alive connections open through old services carry on, during the growth and after
//! it, on the real server that first took them.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lb_tests::{
    e2e_lab::{status_json, LongLived, RoundReport},
    lab::{counts, daemon_bin, start_daemon, with_control_socket},
    netns::{require_lab, server_v4, server_v6, unique_prefix, wait_until, DrLab, LB_V4, LB_V6},
};

/// Real servers of every service: the lab's three nginx.
const SERVERS: usize = 3;
/// Services the daemon starts with: its maps get room for 1.5 times as many.
const INITIAL: usize = 1000;
/// Services the reload adds, beyond that room.
const ADDED: usize = 600;
/// The IPv4 VIPs' share of the initial services, and of the added ones (the rest is IPv6),
/// so that both families' maps grow under traffic.
const INITIAL_V4: usize = 450;
const ADDED_V4: usize = 50;

/// The VIP ranges: one address per service, each on port 80, where nginx already listens on
/// every address. Two /24s hold 500 IPv4 VIPs; IPv6 gives the rest.
const V4_RANGES: [[u8; 3]; 2] = [[198, 51, 100], [203, 0, 113]];
const V6_RANGE: [u16; 3] = [0x2001, 0xdb8, 5];

fn v4_vips() -> Vec<IpAddr> {
    V4_RANGES
        .iter()
        .flat_map(|[a, b, c]| (1..=250).map(move |d| IpAddr::V4(Ipv4Addr::new(*a, *b, *c, d))))
        .collect()
}

fn v6_vip(i: usize) -> IpAddr {
    let [a, b, c] = V6_RANGE;
    IpAddr::V6(Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 1 + i as u16))
}

/// (the initial services' VIPs, the added services' VIPs).
fn vip_sets() -> (Vec<IpAddr>, Vec<IpAddr>) {
    let v4 = v4_vips();
    assert_eq!(v4.len(), INITIAL_V4 + ADDED_V4);
    let v6_initial = INITIAL - INITIAL_V4;
    let v6_added = ADDED - ADDED_V4;
    let initial: Vec<IpAddr> = v4[..INITIAL_V4]
        .iter()
        .copied()
        .chain((0..v6_initial).map(v6_vip))
        .collect();
    let added: Vec<IpAddr> = v4[INITIAL_V4..]
        .iter()
        .copied()
        .chain((v6_initial..v6_initial + v6_added).map(v6_vip))
        .collect();
    (initial, added)
}

/// A static rr service on port 80 of each VIP, over the lab's real servers of its family;
/// on the VIPs in `drain`, rs1 has weight 0.
fn config(lab: &DrLab, vips: &[IpAddr], drain: &[IpAddr]) -> String {
    let mut c = format!(
        "[global_defs]\nrouter_id = \"{}\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"skb\"\nmax_flows = 65536\n",
        lab.prefix()
    );
    for vip in vips {
        c += &format!(
            "\n[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\nlb_algo = \"rr\"\nlb_kind = \"DR\"\nstatic = true\n"
        );
        for i in 1..=SERVERS {
            let ip = match vip {
                IpAddr::V4(_) => server_v4(i).to_string(),
                IpAddr::V6(_) => server_v6(i).to_string(),
            };
            let weight = u32::from(!(i == 1 && drain.contains(vip)));
            c += &format!(
                "  [[virtual_server.real_server]]\n  ip = \"{ip}\"\n  port = 80\n  weight = {weight}\n"
            );
        }
    }
    c
}

/// The VIP ranges routed to the LB: with 1,600 VIPs the client reaches them the way a
/// router in front of an LVS node would, through the node's own address, instead of the
/// node answering ARP and neighbour solicitations for every VIP. The real servers accept the
/// whole ranges as local (a `local` route on `lo`, where DrLab puts its one VIP), and, with
/// the lab's arp_ignore/arp_announce, never answer ARP for them.
fn route_vips_through_the_lb(lab: &DrLab) -> anyhow::Result<()> {
    let v6 = format!("{:x}:{:x}:{:x}::/64", V6_RANGE[0], V6_RANGE[1], V6_RANGE[2]);
    for [a, b, c] in V4_RANGES {
        let net = format!("{a}.{b}.{c}.0/24");
        lab.client()
            .ip(&["route", "add", &net, "via", &LB_V4.to_string()])?;
        for s in lab.servers() {
            s.ip(&["route", "add", "local", &net, "dev", "lo"])?;
        }
    }
    lab.client()
        .ip(&["-6", "route", "add", &v6, "via", &LB_V6.to_string()])?;
    for s in lab.servers() {
        s.ip(&["-6", "route", "add", "local", &v6, "dev", "lo"])?;
    }
    Ok(())
}

fn url(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    }
}

/// `n` requests through `vip`, each a new connection; every one must be answered by one of
/// the lab's real servers. Returns the replies per server.
fn forward(
    lab: &DrLab,
    vip: IpAddr,
    n: usize,
    log: impl Fn() -> String,
) -> BTreeMap<String, usize> {
    let bodies = lab
        .curl_batch(&url(vip), n)
        .unwrap_or_else(|e| panic!("through {vip}: {e:#}\n{}", log()));
    let by_server = counts(&bodies);
    let names: BTreeSet<String> = (1..=SERVERS).map(|i| format!("rs{i}")).collect();
    assert!(
        by_server.keys().all(|k| names.contains(k)),
        "through {vip}, replies not from a real server: {by_server:?}"
    );
    by_server
}

/// The first number after `key` in `line` (`limits=1500 services, ...`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start_matches('"')
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
fn a_reload_beyond_the_maps_grows_them_without_dropping_flows() {
    let test = "a_reload_beyond_the_maps_grows_them_without_dropping_flows";
    if !require_lab(test) {
        return;
    }
    let t0 = Instant::now();
    let lab = DrLab::new(&unique_prefix("sc"), SERVERS).expect("lab");
    route_vips_through_the_lb(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    let lab_up = t0.elapsed();
    let (initial, added) = vip_sets();
    let all: Vec<IpAddr> = initial.iter().chain(&added).copied().collect();
    let old_v4 = initial[7];
    let old_v6 = initial[INITIAL_V4 + 7];
    let (new_v4, new_v6) = (added[ADDED_V4 - 1], *added.last().unwrap());

    // Nothing but the LB's program forwards to the VIPs: without it, a new service's
    // request dies in the LB's stack (no IP forwarding there).
    let before = lab
        .curl_batch_raw(&url(new_v4), 1, Duration::from_millis(500))
        .unwrap();
    assert_eq!(
        before[0].status, 0,
        "{new_v4} answered with no LB: {before:?}"
    );

    let started = Instant::now();
    let (daemon, cfg) =
        start_daemon(&lab, &config(&lab, &initial, &[]), "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let start_took = started.elapsed();
    let log = || daemon.read_stderr();
    let sized = log()
        .lines()
        .find(|l| l.contains("sizing the XDP program's maps"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no sizing line:\n{}", log()));
    assert_eq!(
        number_after(&sized, "limits="),
        Some(INITIAL as u64 * 3 / 2),
        "room for 1.5 times the services: {sized}"
    );

    // Several services of both families, from both ends of the configuration.
    let mut seen = BTreeMap::new();
    for vip in [
        initial[0],
        old_v4,
        initial[300],
        initial[INITIAL_V4 - 1],
        old_v6,
        initial[INITIAL - 1],
    ] {
        for (server, n) in forward(&lab, vip, 6, log) {
            *seen.entry(server).or_insert(0) += n;
        }
    }
    assert_eq!(seen.len(), SERVERS, "rr over every real server: {seen:?}");
    // The new services do not exist yet.
    let before = lab
        .curl_batch_raw(&url(new_v6), 1, Duration::from_millis(500))
        .unwrap();
    assert_eq!(
        before[0].status, 0,
        "{new_v6} answered before the reload: {before:?}"
    );

    // Keep-alive connections through two old services. The reload drains rs1 on both
    // (weight 0): were their flows lost in the growth, rs1's connections could only be
    // rescheduled to another server, which would reset them.
    let open = |vip: IpAddr, n: usize| {
        let conns = LongLived::open(lab.client(), SocketAddr::new(vip, 80), n)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
        assert!(
            conns.by_backend().get("rs1").is_some_and(|&n| n >= 1),
            "rr gives rs1 some of the connections through {vip}: {:?}",
            conns.by_backend()
        );
        conns
    };
    let mut conns = [open(old_v4, 12), open(old_v6, 6)];

    // Requests on every connection all through the reload (from before it to after it),
    // paced so that no connection reaches nginx's 1,000 requests a connection
    // (keepalive_requests).
    let reloading = AtomicBool::new(true);
    let done = AtomicUsize::new(0);
    let new_config = config(&lab, &all, &[old_v4, old_v6]);
    let (rounds, reload_took) = std::thread::scope(|s| {
        let traffic = s.spawn(|| {
            let mut rounds: Vec<RoundReport> = Vec::new();
            while reloading.load(Ordering::Relaxed) && rounds.len() < 2 * 600 {
                for c in &mut conns {
                    rounds.push(c.round());
                }
                done.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
            rounds
        });
        let traffic_runs = |n: usize| {
            wait_until("a round of requests", Duration::from_secs(10), || {
                done.load(Ordering::Relaxed) >= n || traffic.is_finished()
            })
            .unwrap();
        };
        traffic_runs(1);
        std::fs::write(&cfg, with_control_socket(&new_config, lab.lb().dir())).unwrap();
        let asked = Instant::now();
        let out = std::process::Command::new(daemon_bin().unwrap())
            .args(["reload", "--socket"])
            .arg(lab.lb().dir().join("ctl.sock"))
            .output()
            .unwrap();
        let took = asked.elapsed();
        // One whole round after the switch too.
        traffic_runs(done.load(Ordering::Relaxed) + 2);
        reloading.store(false, Ordering::Relaxed);
        let rounds = traffic.join().expect("traffic thread");
        assert!(
            out.status.success(),
            "reload refused: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            log()
        );
        (rounds, took)
    });
    wait_until("the grown maps in the log", Duration::from_secs(10), || {
        log().contains("XDP maps grown")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    let l = log();
    let grown: Vec<&str> = l.lines().filter(|l| l.contains("XDP maps grown")).collect();
    assert_eq!(grown.len(), 1, "one growth: {grown:?}");
    let grown = grown[0];
    assert_eq!(
        number_after(grown, "from="),
        Some(INITIAL as u64 * 3 / 2),
        "{grown}"
    );
    let to = number_after(grown, "to=").unwrap_or_else(|| panic!("{grown}"));
    assert!(to >= (INITIAL + ADDED) as u64, "{grown}");
    let grow_ms = number_after(grown, "ms=");
    let errors: Vec<&str> = l.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "errors in the daemon's log: {errors:#?}");

    // The connections: not one failed during the reload, and each still reaches its server.
    let sum = |rs: &[RoundReport]| {
        rs.iter().fold(RoundReport::default(), |mut t, r| {
            t.ok += r.ok;
            t.moved += r.moved;
            t.resets += r.resets;
            for (k, n) in &r.failures {
                *t.failures.entry(k.clone()).or_insert(0) += n;
            }
            t
        })
    };
    let during = sum(&rounds);
    assert!(rounds.len() >= 2, "no traffic during the reload");
    assert_eq!(
        during.ok,
        rounds.len() / 2 * (12 + 6),
        "connections during the reload: {during:?}\n{l}"
    );
    let after = sum(&conns.iter_mut().map(LongLived::round).collect::<Vec<_>>());
    assert_eq!(
        after.ok,
        12 + 6,
        "connections after the growth: {after:?}\n{l}"
    );

    // The new services forward, of both families, and the drained rs1 takes no new
    // connection through the old ones (the reload reached them too).
    for vip in [new_v4, added[0], new_v6, added[ADDED / 2]] {
        forward(&lab, vip, 6, log);
    }
    for vip in [old_v4, old_v6] {
        let by_server = forward(&lab, vip, 6, log);
        assert!(
            !by_server.contains_key("rs1"),
            "{vip} drains rs1: {by_server:?}"
        );
    }

    // Status lists every service, the new ones and the old ones.
    let asked = Instant::now();
    let status = status_json(lab.lb()).unwrap_or_else(|e| panic!("{e:#}"));
    let status_took = asked.elapsed();
    let listed: BTreeSet<(String, u64)> = status["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services in the status"))
        .iter()
        .map(|s| {
            (
                s["vip"].as_str().unwrap_or_default().to_string(),
                s["port"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let want: BTreeSet<(String, u64)> = all.iter().map(|v| (v.to_string(), 80)).collect();
    assert_eq!(
        status["services"].as_array().unwrap().len(),
        INITIAL + ADDED
    );
    assert_eq!(listed, want, "services in status --json");
    // The counters and the flow table came through the growth: each old service counts the
    // 6 requests before it, its keep-alive connections and the 6 after, every one still in
    // the table (well inside TCP's idle timeout); a new one counts its own requests.
    for (vip, flows) in [
        (old_v4, 6 + 12 + 6),
        (old_v6, 6 + 6 + 6),
        (new_v4, 6),
        (new_v6, 6),
    ] {
        let svc = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vip"] == vip.to_string().as_str())
            .unwrap_or_else(|| panic!("{vip} in the status"));
        assert_eq!(svc["new_flows"], flows, "{vip}: {svc}");
        assert_eq!(svc["active_flows"], flows, "{vip}: {svc}");
    }

    // A reload that only raises `[dataplane]`'s reserve grows the maps to it, in place.
    let reserved = new_config.replacen(
        "max_flows = 65536\n",
        "max_flows = 65536\nmax_services = 5000\n",
        1,
    );
    std::fs::write(&cfg, with_control_socket(&reserved, lab.lb().dir())).unwrap();
    let out = std::process::Command::new(daemon_bin().unwrap())
        .args(["reload", "--socket"])
        .arg(lab.lb().dir().join("ctl.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reload of the reserve refused: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    wait_until(
        "the maps grown to the reserve",
        Duration::from_secs(10),
        || {
            log()
                .lines()
                .filter(|l| l.contains("XDP maps grown"))
                .any(|l| number_after(l, "to=") == Some(5000))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
    let after = sum(&conns.iter_mut().map(LongLived::round).collect::<Vec<_>>());
    assert_eq!(
        after.ok,
        12 + 6,
        "connections after the second growth: {after:?}"
    );

    eprintln!(
        "lab up {lab_up:.2?}; daemon with {INITIAL} services up in {start_took:.2?}; reload to {} \
         services {reload_took:.2?} (growth {} ms: {grown}); {} rounds on {} connections during it: \
         {during:?}; status --json with {} services {status_took:.2?}; total {:.2?}",
        INITIAL + ADDED,
        grow_ms.map_or("?".into(), |m| m.to_string()),
        rounds.len() / 2,
        12 + 6,
        INITIAL + ADDED,
        t0.elapsed()
    );
}
