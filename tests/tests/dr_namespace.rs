//! Direct routing end to end, in namespaces, with real peers: a client, `lb-daemon` with its
//! XDP program on the LB's veth, and three nginx real servers that hold the VIP on `lo`
//! (the seed's arp_ignore/arp_announce set-up). Runs in skb and in native XDP mode.
use std::{collections::BTreeMap, time::Duration};

use lb_tests::{
    lab::{counts, lab_config, prepare_native, reload, start_daemon, status_json},
    netns::{fmt_mac, require_lab, unique_prefix, DrLab},
};

/// Each backend's count is its weight's share of `n`, give or take one per CPU: the rr
/// position is per CPU, and the veth may hand flows to either CPU.
fn assert_shares(what: &str, got: &BTreeMap<String, usize>, weights: [u32; 3], n: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let total: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let name = format!("rs{}", i + 1);
        let want = n * *w as usize / total as usize;
        let have = got.get(&name).copied().unwrap_or(0);
        assert!(
            have.abs_diff(want) <= cpus,
            "{what}: {name} served {have}, its share is {want} (counts {got:?})"
        );
    }
}

fn dr_end_to_end(mode: &str) {
    let test = format!("dr_end_to_end_{mode}");
    if !require_lab(&test) {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dr"), 3).expect("lab");
    // What VRRP will do: the master holds the VIP, so it answers ARP/ND for it.
    lab.add_vip_to_lb().unwrap();

    let _native_peer = (mode == "native").then(|| prepare_native(&lab).unwrap());
    let (daemon, cfg) = start_daemon(&lab, &lab_config(&lab, mode, "rr", &[1, 1, 1]), mode)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Replies must come straight from the real servers: capture them at the client.
    let capture = lab
        .capture(lab.client(), "eth0", "tcp src port 80")
        .unwrap();
    let bodies = lab
        .curl_batch("192.0.2.100", 300)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    assert_eq!(bodies.len(), 300);
    assert_shares("rr over IPv4", &counts(&bodies), [1, 1, 1], 300);
    let bodies6 = lab.curl_batch("2001:db8::100", 60).unwrap();
    assert_shares("rr over IPv6", &counts(&bodies6), [1, 1, 1], 60);
    let lines = capture.stop().unwrap();

    // `lb-daemon status --json` agrees with the traffic: one new flow per request, spread
    // as the replies say, and at least the SYN, the ACK and the request per connection.
    let status = status_json(&lab);
    for (vip, n, bodies) in [
        ("192.0.2.100", 300u64, &bodies),
        ("2001:db8::100", 60, &bodies6),
    ] {
        let svc = status["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vip"] == vip)
            .unwrap_or_else(|| panic!("{vip} in {status}"));
        assert_eq!(svc["new_flows"], n, "{vip}: {svc}");
        // Every flow is still in the table (well inside TCP's 900 s idle timeout).
        assert_eq!(svc["active_flows"], n, "{vip}: {svc}");
        assert!(svc["packets"].as_u64().unwrap() >= 3 * n, "{vip}: {svc}");
        let by_backend = counts(bodies);
        for (i, b) in svc["backends"].as_array().unwrap().iter().enumerate() {
            let served = by_backend
                .get(&format!("rs{}", i + 1))
                .copied()
                .unwrap_or(0) as u64;
            assert_eq!(b["new_flows"], served, "{vip} backend {i}: {b}");
            assert_eq!(b["active_flows"], served, "{vip} backend {i}: {b}");
        }
    }

    let lb_mac = fmt_mac(&lab.lb_mac().unwrap());
    let server_macs: Vec<String> = lab.server_macs().unwrap().iter().map(fmt_mac).collect();
    let replies: Vec<&String> = lines.iter().filter(|l| l.contains(" > ")).collect();
    assert!(
        replies.len() >= 360,
        "captured {} reply frames",
        replies.len()
    );
    for l in &replies {
        let src = l.split_whitespace().nth(1).unwrap_or("");
        assert!(
            server_macs.iter().any(|m| m == src),
            "reply not from a real server: {l}"
        );
        assert_ne!(src, lb_mac, "reply through the LB: {l}");
    }

    // wrr after a SIGHUP reload: shares follow weights 1:2:3.
    reload(&daemon, &cfg, &lab_config(&lab, mode, "wrr", &[1, 2, 3])).unwrap();
    let bodies = lab.curl_batch("192.0.2.100", 300).unwrap();
    assert_shares("wrr 1:2:3 over IPv4", &counts(&bodies), [1, 2, 3], 300);

    // SIGTERM detaches the program: the LB's own stack answers for the VIP again.
    daemon.signal(libc::SIGTERM).unwrap();
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("daemon exits");
    assert!(
        status.success(),
        "lb-daemon exit: {status}\n{}",
        daemon.read_stderr()
    );
    let out = lab.lb().ip(&["link", "show", "dev", "eth0"]).unwrap();
    assert!(!out.contains("xdp"), "XDP still attached after exit: {out}");
}

#[test]
fn dr_end_to_end_skb() {
    dr_end_to_end("skb");
}

#[test]
fn dr_end_to_end_native() {
    dr_end_to_end("native");
}

/// The VIP belongs to a VRRP instance instead of being static: the service forwards only
/// once the instance is master and holds the address; stopping the daemon releases it.
#[test]
fn dr_service_on_a_vrrp_owned_vip() {
    if !require_lab("dr_service_on_a_vrrp_owned_vip") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dv"), 3).expect("lab");
    let config = lab_config(&lab, "skb", "rr", &[1, 1, 1]).replace("static = true\n", "")
        + r#"
[[vrrp_instance]]
name = "VI_4"
interface = "eth0"
virtual_router_id = 51
priority = 150
advert_int = 0.1
version = 3
virtual_ipaddress = ["192.0.2.100/24"]

[[vrrp_instance]]
name = "VI_6"
interface = "eth0"
virtual_router_id = 52
priority = 150
advert_int = 0.1
version = 3
virtual_ipaddress = ["2001:db8::100/64"]
"#;
    // No add_vip_to_lb(): VRRP adds the VIPs when it becomes master.
    let (daemon, _) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    lb_tests::netns::wait_until("the VIP on the LB", Duration::from_secs(5), || {
        lab.lb()
            .ip(&["addr", "show", "dev", "eth0"])
            .is_ok_and(|o| o.contains("192.0.2.100/24") && o.contains("2001:db8::100/64"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let bodies = lab
        .curl_batch("192.0.2.100", 30)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    assert_shares("rr once master", &counts(&bodies), [1, 1, 1], 30);
    let bodies = lab.curl_batch("2001:db8::100", 30).unwrap();
    assert_shares("rr over IPv6 once master", &counts(&bodies), [1, 1, 1], 30);
    // The gratuitous ARP / NA that moves clients went out once the services were active
    // (before, a client could reach the VIP's stack, which refuses the connection).
    let log = daemon.read_stderr();
    for instance in ["VI_4", "VI_6"] {
        let line = log
            .lines()
            .find(|l| l.contains("announced the virtual addresses") && l.contains(instance))
            .unwrap_or_else(|| panic!("{instance} never announced its VIP:\n{log}"));
        assert!(line.contains("services_active=true"), "{line}");
    }
    assert!(
        lab.lb().dir().join("ctl.sock").exists(),
        "no control socket"
    );
    daemon.signal(libc::SIGTERM).unwrap();
    daemon
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("daemon exits");
    // Nothing left behind: both VIPs, the XDP program, the control socket.
    let out = lab.lb().ip(&["addr", "show", "dev", "eth0"]).unwrap();
    assert!(
        !out.contains("192.0.2.100/24") && !out.contains("2001:db8::100/64"),
        "VIPs released on stop: {out}"
    );
    let link = lab.lb().ip(&["link", "show", "dev", "eth0"]).unwrap();
    assert!(!link.contains("xdp"), "XDP detached on stop: {link}");
    let socket = lab.lb().dir().join("ctl.sock");
    assert!(!socket.exists(), "{} left behind", socket.display());
}

/// keepalived's TCP_CHECK: a real server whose nginx stops is taken out within the check's
/// bound, after which no request through the VIP fails; when nginx comes back, so does the
/// server.
#[test]
fn tcp_check_removes_and_restores_a_real_server() {
    if !require_lab("tcp_check_removes_and_restores_a_real_server") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dh"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    // Checked every 200 ms, no retry, 300 ms connect timeout, no warm-up delay: a dead
    // server is out within about half a second.
    let check = "  TCP_CHECK = { connect_timeout = 0.3, retry = 0, delay_before_retry = 0.1, warmup = 0 }\n";
    let config = lab_config(&lab, "skb", "rr", &[1, 1, 1])
        .replace("lb_kind = \"DR\"\n", "lb_kind = \"DR\"\ndelay_loop = 0.2\n")
        .replace("  weight = 1\n", &format!("  weight = 1\n{check}"));
    let (daemon, _) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let bodies = lab.curl_batch("192.0.2.100", 30).unwrap();
    assert_shares("all three up", &counts(&bodies), [1, 1, 1], 30);
    // Status follows every probe (its latency), not only the up/down changes.
    let latency = || status_json(&lab)["services"][0]["backends"][0]["check_latency_ms"].as_f64();
    let first = latency();
    assert!(first.is_some(), "{}", status_json(&lab));
    lb_tests::netns::wait_until(
        "a later probe's latency in status",
        Duration::from_secs(5),
        || latency() != first,
    )
    .unwrap_or_else(|e| panic!("{e:#}: {}", status_json(&lab)));

    // Stop rs2's nginx: the check notices within keepalived's bound for these settings,
    // delay_loop + (retry + 1) x connect_timeout + retry x delay_before_retry = 0.5 s (the
    // margin is for the log being polled on a loaded 2-core machine), and the server leaves
    // the rotation.
    let killed = std::time::Instant::now();
    lab.nginx(2).signal(libc::SIGKILL).unwrap();
    lb_tests::netns::wait_until(
        "rs2 down in the daemon's log",
        Duration::from_secs(5),
        || {
            daemon
                .read_stderr()
                .contains("backend=192.0.2.12:80 up=false")
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let detected = killed.elapsed();
    eprintln!("rs2 detected down after {detected:?} (bound 500 ms)");
    assert!(
        detected <= Duration::from_millis(500 + 500),
        "rs2 detected down after {detected:?}, bound 500 ms"
    );
    let bodies = lab
        .curl_batch("192.0.2.100", 60)
        .unwrap_or_else(|e| panic!("a request failed after removal: {e:#}"));
    let c = counts(&bodies);
    assert_eq!(c.get("rs2"), None, "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 60);

    // Start it again (the lab's own command line): it comes back.
    let ups = daemon
        .read_stderr()
        .matches("backend=192.0.2.12:80 up=true")
        .count();
    let _nginx = lb_tests::lab::restart_nginx(&lab, 2).unwrap();
    lb_tests::netns::wait_until("rs2 up again", Duration::from_secs(5), || {
        daemon
            .read_stderr()
            .matches("backend=192.0.2.12:80 up=true")
            .count()
            > ups
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let bodies = lab.curl_batch("192.0.2.100", 30).unwrap();
    assert_shares("all three up again", &counts(&bodies), [1, 1, 1], 30);
}

/// A check outage on a real server that keeps serving (issue 15, defect 1): its checks fail
/// (its replies to the LB vanish into a blackhole route, the client's traffic is untouched),
/// the daemon marks it down, and its established keep-alive connections carry on through
/// the outage and after it, with no reset: a down verdict takes a real server out of the
/// scheduling, not out of its flows (IPVS with `expire_nodest_conn = 0`). New connections
/// avoid it meanwhile. Then the same outage with `expire_nodest_conn = true`: its
/// connections are rescheduled, so the other servers answer them with RST (the test can
/// fail: that is what happened to every connection before the fix).
#[test]
fn a_check_outage_resets_no_established_connection() {
    if !require_lab("a_check_outage_resets_no_established_connection") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("db"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let check = "  TCP_CHECK = { connect_timeout = 0.3, retry = 0, delay_before_retry = 0.1, warmup = 0 }\n";
    let config = |expire: bool| {
        lab_config(&lab, "skb", "rr", &[1, 1, 1])
            .replace(
                "lb_kind = \"DR\"\n",
                &format!("lb_kind = \"DR\"\ndelay_loop = 0.2\nexpire_nodest_conn = {expire}\n"),
            )
            .replace("  weight = 1\n", &format!("  weight = 1\n{check}"))
    };
    let (daemon, cfg) =
        start_daemon(&lab, &config(false), "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let target: std::net::SocketAddr = "192.0.2.100:80".parse().unwrap();
    let log = || daemon.read_stderr();

    // One check outage of rs2; returns the round run while rs2 is down and the one after.
    let outage = |conns: &mut lb_tests::e2e_lab::LongLived| {
        let downs = log().matches("backend=192.0.2.12:80 up=false").count();
        let ups = log().matches("backend=192.0.2.12:80 up=true").count();
        lab.server(2)
            .ip(&["route", "add", "blackhole", "192.0.2.2/32"])
            .unwrap();
        lb_tests::netns::wait_until("rs2 down", Duration::from_secs(5), || {
            log().matches("backend=192.0.2.12:80 up=false").count() > downs
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
        let during = conns.round();
        // New connections avoid the down server.
        let bodies = lab
            .curl_batch("192.0.2.100", 30)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
        assert_eq!(counts(&bodies).get("rs2"), None, "{:?}", counts(&bodies));
        lab.server(2)
            .ip(&["route", "del", "blackhole", "192.0.2.2/32"])
            .unwrap();
        lb_tests::netns::wait_until("rs2 up again", Duration::from_secs(5), || {
            log().matches("backend=192.0.2.12:80 up=true").count() > ups
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));
        (during, conns.round())
    };

    // 12 keep-alive connections, and how many rr gave rs2.
    let open = || {
        let conns = lb_tests::e2e_lab::LongLived::open(lab.client(), target, 12)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let on_rs2 = conns.by_backend().get("rs2").copied().unwrap_or(0);
        assert!(
            on_rs2 >= 2,
            "rr spreads 12 connections: {:?}",
            conns.by_backend()
        );
        (conns, on_rs2)
    };
    let (mut conns, _) = open();
    let (during, after) = outage(&mut conns);
    eprintln!("expire_nodest_conn = false: during the outage {during:?}, after {after:?}");
    assert_eq!(during.ok, 12, "during the outage: {during:?}\n{}", log());
    assert_eq!(after.ok, 12, "after the outage: {after:?}");

    // IPVS's other choice: the down server's connections are rescheduled, and reset.
    reload(&daemon, &cfg, &config(true)).unwrap();
    let (mut conns, on_rs2) = open();
    let (during, _) = outage(&mut conns);
    eprintln!("expire_nodest_conn = true: {on_rs2} on rs2, during the outage {during:?}");
    assert_eq!(during.resets, on_rs2, "{during:?}");
    assert_eq!(during.ok, 12 - on_rs2, "{during:?}");
}

/// A reload that changes weights keeps an open connection on its real server: no flow-table
/// flush. A keep-alive HTTP connection sends one request, the daemon reloads with new weights
/// (and a new scheduler), the same connection sends another and gets the same server.
#[test]
fn reload_keeps_an_open_connection() {
    open_connection_across_a_reload("reload_keeps_an_open_connection", "skb", false, 0, None);
}

/// A reload that changes `max_flows` moves the flows into new tables (a program instance
/// over them, swapped in one step, the flows of the copy's window copied after): the open
/// connection, whose server the same reload drains, stays on it; larger and smaller.
#[test]
fn a_reload_that_resizes_the_flow_table_keeps_an_open_connection() {
    let test = "a_reload_that_resizes_the_flow_table_keeps_an_open_connection";
    open_connection_across_a_reload(test, "skb", false, 0, Some(262_144));
    open_connection_across_a_reload(test, "skb", false, 0, Some(4096));
}

#[test]
fn a_reload_that_resizes_the_flow_table_keeps_an_open_connection_native() {
    open_connection_across_a_reload(
        "a_reload_that_resizes_the_flow_table_keeps_an_open_connection_native",
        "native",
        false,
        0,
        Some(131_072),
    );
}

/// A reload that needs more room than the maps have grows them (a second program instance
/// over larger maps, sharing the flow table, swapped in one step): in native mode, where
/// the program is the device-bound `lb_native`, and under `keep_xdp_on_exit`, where the
/// interface holds the program (a netlink replace, not a bpf_link update). The open
/// connection stays on its server.
#[test]
fn a_reload_that_grows_the_maps_keeps_an_open_connection_native() {
    open_connection_across_a_reload(
        "a_reload_that_grows_the_maps_keeps_an_open_connection_native",
        "native",
        false,
        100,
        None,
    );
}

#[test]
fn a_reload_that_grows_the_maps_keeps_an_open_connection_keep_xdp_on_exit() {
    open_connection_across_a_reload(
        "a_reload_that_grows_the_maps_keeps_an_open_connection_keep_xdp_on_exit",
        "skb",
        true,
        100,
        None,
    );
}

/// An open connection through the VIP, a reload that drains its server (and adds `extra`
/// services beyond the 64 the maps start with: they grow), the connection's next request:
/// it must reach the same server. With `max_flows`, the reload also resizes the tables.
fn open_connection_across_a_reload(
    test: &str,
    mode: &str,
    keep: bool,
    extra: u16,
    max_flows: Option<u32>,
) {
    if !require_lab(test) {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dk"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let _native_peer = (mode == "native").then(|| prepare_native(&lab).unwrap());
    let config = |algo: &str, weights: &[u32]| {
        let mut c = lab_config(&lab, mode, algo, weights);
        if keep {
            c = c.replacen(
                "max_flows = 65536\n",
                "max_flows = 65536\nkeep_xdp_on_exit = true\n",
                1,
            );
        }
        c
    };
    let (daemon, cfg) =
        start_daemon(&lab, &config("rr", &[1, 1, 1]), mode).unwrap_or_else(|e| panic!("{e:#}"));
    let (client, flag) = keepalive_client(&lab);
    // The serving real server drains (weight 0): were the flow table flushed, the second
    // request could only go to another server.
    let first = client.read_stdout().trim().to_string();
    let mut weights = [5, 1, 3];
    let serving: usize = first.trim_start_matches("rs").parse().expect("rsN");
    weights[serving - 1] = 0;
    let mut next = config("wrr", &weights);
    if let Some(n) = max_flows {
        next = next.replacen("max_flows = 65536\n", &format!("max_flows = {n}\n"), 1);
        assert!(next.contains(&format!("max_flows = {n}\n")), "{next}");
    }
    for port in 1000..1000 + extra {
        next += &format!(
            "\n[[virtual_server]]\nip = \"192.0.2.100\"\nport = {port}\nprotocol = \"TCP\"\n\
             lb_algo = \"rr\"\nlb_kind = \"DR\"\nstatic = true\n\
             [[virtual_server.real_server]]\nip = \"192.0.2.11\"\nport = {port}\n"
        );
    }
    reload(&daemon, &cfg, &next).unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let log = daemon.read_stderr();
    assert_eq!(
        log.matches("XDP maps grown").count(),
        usize::from(extra > 0),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    if let Some(n) = max_flows {
        let line = log
            .lines()
            .find(|l| l.contains("connection tables resized"))
            .unwrap_or_else(|| panic!("no resize in the log:\n{log}"));
        eprintln!("{test}: {line}");
        assert!(line.contains(&format!("max_flows={n}")), "{line}");
        assert!(
            !line.contains("copied=0"),
            "the open connection's flow was not copied: {line}"
        );
    }
    if let Some(line) = log.lines().find(|l| l.contains("XDP program attached")) {
        eprintln!("{test}: {line}");
    }
    second_reply_from_the_same_server(&client, &flag);
}

/// keepalived's quorum and sorry_server: when every checked real server is down, the sorry
/// server takes the traffic; when one comes back, the pool does.
#[test]
fn sorry_server_while_the_quorum_is_lost() {
    if !require_lab("sorry_server_while_the_quorum_is_lost") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("ds"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let check = "  TCP_CHECK = { connect_timeout = 0.3, retry = 0, delay_before_retry = 0.1, warmup = 0 }\n";
    let mut config = String::from(
        "[global_defs]\nrouter_id = \"sorry\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"skb\"\nmax_flows = 65536\n\n\
         [[virtual_server]]\nip = \"192.0.2.100\"\nport = 80\nprotocol = \"TCP\"\nlb_algo = \"rr\"\nlb_kind = \"DR\"\nstatic = true\n\
         delay_loop = 0.2\nsorry_server = { ip = \"192.0.2.13\", port = 80 }\n",
    );
    for ip in ["192.0.2.11", "192.0.2.12"] {
        config += &format!(
            "  [[virtual_server.real_server]]\n  ip = \"{ip}\"\n  port = 80\n  weight = 1\n{check}"
        );
    }
    // Three MACs to resolve: two real servers and the sorry server.
    let (daemon, _) = lb_tests::lab::start_daemon_resolving(&lab, &config, "skb", 3)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lb_tests::netns::wait_until("rs1 and rs2 serving", Duration::from_secs(5), || {
        lab.curl_batch("192.0.2.100", 10).is_ok_and(|b| {
            let c = counts(&b);
            c.contains_key("rs1") && c.contains_key("rs2") && !c.contains_key("rs3")
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));

    let lost = daemon.read_stderr().matches("service quorum lost").count();
    lab.nginx(1).signal(libc::SIGKILL).unwrap();
    lab.nginx(2).signal(libc::SIGKILL).unwrap();
    lb_tests::netns::wait_until("the quorum lost", Duration::from_secs(5), || {
        daemon.read_stderr().matches("service quorum lost").count() > lost
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let bodies = lab
        .curl_batch("192.0.2.100", 20)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    assert_eq!(
        counts(&bodies).get("rs3"),
        Some(&20),
        "{:?}",
        counts(&bodies)
    );
    // Status finds each backend by its address: the sorry server has its own row (weight
    // 1, its flows), after the two real servers, which are down and take nothing.
    let status = status_json(&lab);
    let backends = status["services"][0]["backends"].as_array().unwrap();
    let row = |addr: &str| backends.iter().find(|b| b["addr"] == addr);
    let sorry = row("192.0.2.13:80").unwrap_or_else(|| panic!("no sorry server row: {status}"));
    assert_eq!(sorry["weight"], 1, "{status}");
    assert!(sorry["new_flows"].as_u64() >= Some(20), "{status}");
    for rs in ["192.0.2.11:80", "192.0.2.12:80"] {
        let rs = row(rs).unwrap_or_else(|| panic!("no row for {rs}: {status}"));
        assert_eq!(rs["health"], "down", "{status}");
        assert_eq!(rs["effective_weight"], 0, "{status}");
    }

    let regained = daemon
        .read_stderr()
        .matches("service quorum regained")
        .count();
    let _nginx = lb_tests::lab::restart_nginx(&lab, 1).unwrap();
    lb_tests::netns::wait_until("the quorum regained", Duration::from_secs(5), || {
        daemon
            .read_stderr()
            .matches("service quorum regained")
            .count()
            > regained
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let bodies = lab.curl_batch("192.0.2.100", 20).unwrap();
    assert_eq!(
        counts(&bodies).get("rs1"),
        Some(&20),
        "{:?}",
        counts(&bodies)
    );
}

/// A VRRP instance's (state, effective priority) in `status --json`.
fn vrrp_state(lab: &DrLab, name: &str) -> (String, u64) {
    let status = status_json(lab);
    let i = status["vrrp"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("{name} in {status}"))
        .clone();
    (
        i["state"].as_str().unwrap_or_default().to_string(),
        i["effective_priority"].as_u64().unwrap_or_default(),
    )
}

/// `track_virtual_server`: a service's quorum lowers its VRRP instance's priority (with a
/// weight) or faults it (without), and undoes it when the quorum is back; no script involved.
#[test]
fn quorum_tracked_by_vrrp_instances() {
    if !require_lab("quorum_tracked_by_vrrp_instances") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dq"), 3).expect("lab");
    let check = "  TCP_CHECK = { connect_timeout = 0.3, retry = 0, delay_before_retry = 0.1, warmup = 0 }\n";
    let config = lab_config(&lab, "skb", "rr", &[1, 1, 1])
        .replacen("static = true\n", "delay_loop = 0.2\nquorum = 2\n", 1)
        .replace("  weight = 1\n", &format!("  weight = 1\n{check}"))
        + r#"
[[vrrp_instance]]
name = "VI_W"
interface = "eth0"
virtual_router_id = 51
priority = 100
advert_int = 0.1
version = 3
virtual_ipaddress = ["192.0.2.100/24"]
track_virtual_server = [{ name = "192.0.2.100:80", weight = -50 }]

[[vrrp_instance]]
name = "VI_F"
interface = "eth0"
virtual_router_id = 52
priority = 100
advert_int = 0.1
version = 3
virtual_ipaddress = ["192.0.2.101/24"]
track_virtual_server = ["192.0.2.100:80/TCP"]
"#;
    let (daemon, _) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let wait = |what: &str, name: &str, want: (&str, u64)| {
        lb_tests::netns::wait_until(what, Duration::from_secs(10), || {
            let (state, prio) = vrrp_state(&lab, name);
            state == want.0 && prio == want.1
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}: {name} is {:?}\n{}",
                vrrp_state(&lab, name),
                daemon.read_stderr()
            )
        });
    };
    wait("VI_W master at 100", "VI_W", ("MASTER", 100));
    wait("VI_F master at 100", "VI_F", ("MASTER", 100));

    // Two of three real servers down: one healthy weight is below the quorum of 2.
    lab.nginx(1).signal(libc::SIGKILL).unwrap();
    lab.nginx(2).signal(libc::SIGKILL).unwrap();
    wait("VI_W lowered to 50", "VI_W", ("MASTER", 50));
    wait("VI_F in FAULT", "VI_F", ("FAULT", 100));
    let addrs = lab.lb().ip(&["addr", "show", "dev", "eth0"]).unwrap();
    assert!(
        addrs.contains("192.0.2.100/24") && !addrs.contains("192.0.2.101/24"),
        "the faulted instance releases its VIP, the lowered one keeps its own: {addrs}"
    );

    // One back: the quorum is met again.
    let _nginx = lb_tests::lab::restart_nginx(&lab, 1).unwrap();
    wait("VI_W back at 100", "VI_W", ("MASTER", 100));
    wait("VI_F master again", "VI_F", ("MASTER", 100));
}

/// `keep_xdp_on_exit`: a stopped daemon leaves its program forwarding (a restart or an
/// upgrade does not interrupt the service); the next run replaces it, and a run without the
/// option detaches on stop, leaving nothing behind.
#[test]
fn keep_xdp_on_exit_leaves_the_program_forwarding() {
    if !require_lab("keep_xdp_on_exit_leaves_the_program_forwarding") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dx"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let plain = lab_config(&lab, "skb", "rr", &[1, 1, 1]);
    let keep = plain.replace("[dataplane]\n", "[dataplane]\nkeep_xdp_on_exit = true\n");
    let xdp_on_lb = || {
        lab.lb()
            .ip(&["link", "show", "dev", "eth0"])
            .unwrap()
            .contains("xdpgeneric")
    };
    let stop = |daemon: &lb_tests::netns::Proc| {
        daemon.signal(libc::SIGTERM).unwrap();
        let status = daemon
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("daemon exits");
        assert!(status.success(), "{}", daemon.read_stderr());
    };

    let (daemon, _) = start_daemon(&lab, &keep, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    assert_shares(
        "first run",
        &counts(&lab.curl_batch("192.0.2.100", 30).unwrap()),
        [1, 1, 1],
        30,
    );
    stop(&daemon);
    assert!(daemon
        .read_stderr()
        .contains("leaving the XDP program attached"));
    assert!(xdp_on_lb(), "the program stays attached");
    // No daemon: the program alone still balances (the replies name the real servers).
    let bodies = lab
        .curl_batch("192.0.2.100", 30)
        .unwrap_or_else(|e| panic!("with the daemon stopped: {e:#}"));
    assert_shares("daemon stopped", &counts(&bodies), [1, 1, 1], 30);

    // The next run, without the option, takes the program over, and detaches on stop.
    let (daemon, _) = start_daemon(&lab, &plain, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(daemon
        .read_stderr()
        .contains("replacing the XDP program a previous run left attached"));
    assert_shares(
        "second run",
        &counts(&lab.curl_batch("192.0.2.100", 30).unwrap()),
        [1, 1, 1],
        30,
    );
    stop(&daemon);
    assert!(!xdp_on_lb(), "nothing left attached");
}

/// An invalid file sent by `lb-daemon reload` is refused with its error (file, line, key),
/// and the running configuration keeps serving exactly as before.
#[test]
fn invalid_reload_changes_nothing() {
    if !require_lab("invalid_reload_changes_nothing") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("di"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let good = lab_config(&lab, "skb", "wrr", &[3, 1, 1]);
    let (daemon, cfg) = start_daemon(&lab, &good, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let before = status_json(&lab);
    assert_shares(
        "before",
        &counts(&lab.curl_batch("192.0.2.100", 50).unwrap()),
        [3, 1, 1],
        50,
    );
    let writes = status_json(&lab)["map_writes"].as_u64().unwrap();

    // Each refused as a whole, with what is wrong and where: a weight out of range, TOML
    // that does not parse, and a file that is gone.
    let reload_cli = || {
        std::process::Command::new(lb_tests::lab::daemon_bin().unwrap())
            .args(["reload", "--socket"])
            .arg(lab.lb().dir().join("ctl.sock"))
            .output()
            .unwrap()
    };
    let bad_weight = good.replacen("weight = 3", "weight = 70000", 1);
    let bad_toml = good.replacen("[[virtual_server]]", "[[virtual_server]", 1);
    for (content, expect) in [
        (
            Some(bad_weight.as_str()),
            &["lb.toml:", "`real_server.weight`"][..],
        ),
        (
            Some(bad_toml.as_str()),
            &["lb.toml:", "invalid table header"][..],
        ),
        (
            None,
            &["lb.toml: cannot read: No such file or directory"][..],
        ),
    ] {
        match content {
            Some(text) => std::fs::write(
                &cfg,
                lb_tests::lab::with_control_socket(text, lab.lb().dir()),
            )
            .unwrap(),
            None => std::fs::remove_file(&cfg).unwrap(),
        }
        let out = reload_cli();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the reload was accepted: {err}");
        for e in expect {
            assert!(err.contains(e), "expected {e:?} in: {err}");
        }
        assert_eq!(
            status_json(&lab)["map_writes"].as_u64().unwrap(),
            writes,
            "maps written by a refused reload ({err})"
        );
    }

    let after = status_json(&lab);
    assert_eq!(
        after["map_writes"].as_u64().unwrap(),
        writes,
        "maps written"
    );
    assert_eq!(
        after["services"].as_array().unwrap().len(),
        before["services"].as_array().unwrap().len()
    );
    for (a, b) in after["services"]
        .as_array()
        .unwrap()
        .iter()
        .zip(before["services"].as_array().unwrap())
    {
        let weights = |s: &serde_json::Value| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| (b["addr"].clone(), b["effective_weight"].clone()))
                .collect::<Vec<_>>()
        };
        assert!(
            weights(a).iter().all(|(a, w)| a.is_string() && w.is_u64()),
            "{a}"
        );
        assert_eq!(weights(a), weights(b), "{a}");
    }
    assert_shares(
        "after",
        &counts(&lab.curl_batch("192.0.2.100", 50).unwrap()),
        [3, 1, 1],
        50,
    );
    assert!(daemon.read_stderr().contains("reload refused"));
}

/// Reloading an unchanged file (SIGHUP or `lb-daemon reload`) touches nothing: no VIP is
/// removed and added again (watched with `ip monitor address`), no VRRP transition, no map
/// write, and traffic goes on.
#[test]
fn identical_reloads_touch_no_vip_no_vrrp_state_no_map() {
    if !require_lab("identical_reloads_touch_no_vip_no_vrrp_state_no_map") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dz"), 3).expect("lab");
    let config = lab_config(&lab, "skb", "rr", &[1, 1, 1]).replace("static = true\n", "")
        + r#"
[[vrrp_instance]]
name = "VI_4"
interface = "eth0"
virtual_router_id = 51
priority = 150
advert_int = 0.1
version = 3
virtual_ipaddress = ["192.0.2.100/24"]

[[vrrp_instance]]
name = "VI_6"
interface = "eth0"
virtual_router_id = 52
priority = 150
advert_int = 0.1
version = 3
virtual_ipaddress = ["2001:db8::100/64"]
"#;
    let (daemon, _) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    lb_tests::netns::wait_until("VI_4 master", Duration::from_secs(5), || {
        let s = status_json(&lab);
        s["vrrp"][0]["state"] == "MASTER" && s["vrrp"][1]["state"] == "MASTER"
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let monitor = lab.lb().spawn(&["ip", "-o", "monitor", "address"]).unwrap();
    // A marker address, added and removed, fences the watched stretch on both sides (and
    // shows that the monitor is listening: it may not have subscribed yet when it is first
    // added, so the marker is repeated until the monitor has seen it).
    let marker = || {
        let seen = monitor.read_stdout().matches("203.0.113.250").count();
        lb_tests::netns::wait_until(
            "the monitor to see the marker",
            Duration::from_secs(5),
            || {
                if monitor.read_stdout().matches("203.0.113.250").count() >= seen + 2 {
                    return true;
                }
                lab.lb()
                    .ip(&["addr", "add", "203.0.113.250/32", "dev", "lo"])
                    .unwrap();
                lab.lb()
                    .ip(&["addr", "del", "203.0.113.250/32", "dev", "lo"])
                    .unwrap();
                false
            },
        )
        .unwrap();
    };
    marker();
    let before = status_json(&lab);
    let seen = monitor.read_stdout().lines().count();
    for i in 0..10 {
        if i % 2 == 0 {
            let out = std::process::Command::new(lb_tests::lab::daemon_bin().unwrap())
                .args(["reload", "--socket"])
                .arg(lab.lb().dir().join("ctl.sock"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let reloads = daemon
                .read_stderr()
                .matches("configuration reloaded")
                .count();
            daemon.signal(libc::SIGHUP).unwrap();
            lb_tests::netns::wait_until("the SIGHUP reload", Duration::from_secs(5), || {
                daemon
                    .read_stderr()
                    .matches("configuration reloaded")
                    .count()
                    > reloads
            })
            .unwrap();
        }
    }
    marker();
    let events: Vec<String> = monitor
        .read_stdout()
        .lines()
        .skip(seen)
        .filter(|l| !l.contains("203.0.113.250"))
        .map(str::to_string)
        .collect();
    assert!(
        events.is_empty(),
        "addresses changed during the reloads: {events:?}"
    );
    let after = status_json(&lab);
    assert_eq!(
        after["vrrp"][0]["transitions"],
        before["vrrp"][0]["transitions"]
    );
    assert_eq!(after["vrrp"][0]["state"], "MASTER");
    assert_eq!(after["map_writes"], before["map_writes"], "maps written");
    assert_eq!(
        daemon
            .read_stderr()
            .matches("configuration reloaded")
            .count(),
        10,
        "{}",
        daemon.read_stderr()
    );
    let bodies = lab.curl_batch("192.0.2.100", 30).unwrap();
    assert_shares("after the reloads", &counts(&bodies), [1, 1, 1], 30);
}

/// A real server that no host answers ARP for (a typo, a machine that is off): the others
/// serve every request, status shows it without a MAC and with effective weight 0, and the
/// daemon says so once, after 5 s, naming it.
#[test]
fn unresolved_backend_mac_is_reported_and_skipped() {
    if !require_lab("unresolved_backend_mac_is_reported_and_skipped") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("du"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let base = lab_config(&lab, "skb", "rr", &[1, 1, 1]);
    // A fourth real server for the IPv4 service, on the segment but with no host.
    let at = base
        .match_indices("\n[[virtual_server]]")
        .nth(1)
        .expect("the IPv6 service")
        .0;
    let config = format!(
        "{}  [[virtual_server.real_server]]\n  ip = \"192.0.2.90\"\n  port = 80\n  weight = 1\n{}",
        &base[..at],
        &base[at..]
    );
    let (daemon, _) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let bodies = lab
        .curl_batch("192.0.2.100", 30)
        .unwrap_or_else(|e| panic!("a request failed: {e:#}"));
    assert_shares("three of four resolved", &counts(&bodies), [1, 1, 1], 30);
    let status = status_json(&lab);
    let ghost = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["addr"] == "192.0.2.90:80")
        .unwrap_or_else(|| panic!("{status}"))
        .clone();
    assert!(ghost["mac"].is_null(), "{ghost}");
    assert_eq!(ghost["effective_weight"], 0, "{ghost}");
    let warning = "backend MAC not resolved after 5s";
    lb_tests::netns::wait_until(
        "the unresolved MAC warning",
        Duration::from_secs(15),
        || daemon.read_stderr().contains(warning),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let log = daemon.read_stderr();
    let line = log.lines().find(|l| l.contains(warning)).unwrap();
    assert!(line.contains("192.0.2.90"), "{line}");
    // Once, not every second.
    let ticks = log.matches(warning).count();
    std::thread::sleep(Duration::from_secs(2)); // two ticks of the daemon's 1 s timer
    assert_eq!(daemon.read_stderr().matches(warning).count(), ticks);
    assert_eq!(ticks, 1, "{log}");
}

/// A reload that names another `[dataplane] interface` moves the program there (attached on
/// the new one while the old one still runs, every map shared, the pins renamed, the old
/// attachment removed): an open connection whose packets then come in on the new
/// interface stays on its real server, new connections are served there, and the old
/// interface runs no program any more.
#[test]
fn a_reload_moves_the_dataplane_to_another_interface() {
    let test = "a_reload_moves_the_dataplane_to_another_interface";
    if !require_lab(test) {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dm"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    // Without sloppy_tcp a flow the move lost goes to the stack (a reset) rather than to
    // whichever server rr picks next, which could be the same one.
    let config = lab_config(&lab, "skb", "rr", &[1, 1, 1]).replace(
        "lb_kind = \"DR\"\n",
        "lb_kind = \"DR\"\nsloppy_tcp = false\n",
    );
    assert!(config.contains("sloppy_tcp = false"), "{config}");
    let (daemon, cfg) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let (client, flag) = keepalive_client(&lab);

    // A second port into the LAN: eth1 (192.0.2.6), the VIP moved onto it.
    let lb = lab.lb().name().to_string();
    lab.bridge()
        .ip(&[
            "link", "add", "to-lb2", "type", "veth", "peer", "name", "eth1", "netns", &lb,
        ])
        .unwrap();
    lab.bridge()
        .ip(&["link", "set", "to-lb2", "master", "br0", "up"])
        .unwrap();
    lab.lb()
        .ip(&["addr", "add", "192.0.2.6/24", "dev", "eth1"])
        .unwrap();
    lab.lb().ip(&["link", "set", "eth1", "up"]).unwrap();

    let moved = config.replacen("interface = \"eth0\"", "interface = \"eth1\"", 1);
    assert_ne!(moved, config);
    reload(&daemon, &cfg, &moved).unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let log = daemon.read_stderr();
    assert!(
        log.contains("XDP program moved to another interface"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    let xdp_on = |dev: &str| {
        lab.lb()
            .ip(&["-d", "link", "show", "dev", dev])
            .unwrap_or_default()
            .contains("xdp")
    };
    // eth0 keeps the old attachment for RETIRE_AFTER, serving what still arrives there.
    assert!(xdp_on("eth1") && xdp_on("eth0"));

    // The client's packets now come in on eth1 only.
    lab.lb()
        .ip(&["addr", "del", "192.0.2.100/32", "dev", "eth0"])
        .unwrap();
    lab.lb()
        .ip(&["addr", "add", "192.0.2.100/32", "dev", "eth1"])
        .unwrap();
    lab.lb().ip(&["link", "set", "eth0", "down"]).unwrap();
    lab.client()
        .ip(&["neigh", "flush", "to", "192.0.2.100"])
        .unwrap();
    second_reply_from_the_same_server(&client, &flag);
    // New connections through eth1, spread as before.
    let got = lab.curl("192.0.2.100", 30).unwrap();
    let spread = counts(&got);
    assert_eq!(spread.values().sum::<usize>(), 30, "{spread:?}");
    assert_eq!(spread.len(), 3, "{spread:?}");
    // The real servers' MACs stood through the move (the resolver withdraws them from
    // the old interface before it resolves them on the new one).
    let log = daemon.read_stderr();
    assert!(!log.contains("backend MAC unknown"), "{log}");
}

/// A client holding one keep-alive HTTP connection through the VIP: it has sent its first
/// request and printed the reply (waited for here); it sends the second once the returned
/// flag file exists, prints that reply and exits (a closed connection is an error).
fn keepalive_client(lab: &DrLab) -> (lb_tests::netns::Proc, std::path::PathBuf) {
    let flag = lab.client().dir().join("go");
    let script = format!(
        r#"
import os, socket, sys, time
s = socket.create_connection(("192.0.2.100", 80), timeout=5)
def get():
    s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
    data = b""
    while not data.endswith(b"\n") or b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode().strip()
print(get(), flush=True)
deadline = time.time() + 20
while not os.path.exists("{flag}"):
    if time.time() > deadline:
        sys.exit("no go")
    time.sleep(0.02)
print(get(), flush=True)
"#,
        flag = flag.display()
    );
    let py = lab.client().dir().join("keepalive.py");
    std::fs::write(&py, script).unwrap();
    let client = lab
        .client()
        .spawn(&["python3", py.to_str().unwrap()])
        .unwrap();
    lb_tests::netns::wait_until("the first reply", Duration::from_secs(5), || {
        !client.read_stdout().is_empty()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", client.read_stderr()));
    (client, flag)
}

/// Lets [`keepalive_client`] send its second request: it must exit cleanly, the reply
/// from the server that gave the first.
fn second_reply_from_the_same_server(client: &lb_tests::netns::Proc, flag: &std::path::Path) {
    std::fs::write(flag, "").unwrap();
    let status = client
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("client exits");
    assert!(status.success(), "{}", client.read_stderr());
    let replies: Vec<String> = client.read_stdout().lines().map(str::to_string).collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(
        replies[0], replies[1],
        "the connection moved to another server"
    );
}

/// keepalived's `virtual_server_group`: two VIPs as one service. With persistence, each
/// client sticks to one real server whichever VIP it asks (one persistence table for the
/// group, what keepalived users build fwmark services for), and `status` counts one service.
/// Five client addresses ask the first VIP, then the second in the reverse order: two
/// services with their own persistence would hand the second VIP's clients out afresh, by
/// rr in that other order, and all but the middle client would move.
#[test]
fn a_virtual_server_group_is_one_service() {
    if !require_lab("a_virtual_server_group_is_one_service") {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dg"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    // The second VIP, on the LB (it answers ARP for it) and on each real server's lo.
    const VIP2: &str = "192.0.2.101";
    lab.lb()
        .ip(&["addr", "add", &format!("{VIP2}/32"), "dev", "eth0"])
        .unwrap();
    for s in lab.servers() {
        s.ip(&["addr", "add", &format!("{VIP2}/32"), "dev", "lo"])
            .unwrap();
    }
    let clients: Vec<String> = (5..10).map(|i| format!("192.0.2.{i}")).collect();
    for c in &clients {
        lab.client()
            .ip(&["addr", "add", &format!("{c}/24"), "dev", "eth0"])
            .unwrap();
    }
    let config = lab_config(&lab, "skb", "rr", &[1, 1, 1]).replacen(
        "ip = \"192.0.2.100\"\nport = 80\n",
        &format!(
            "virtual_server_group = [\"192.0.2.100 80\", \"{VIP2} 80\"]\npersistence_timeout = 300\n"
        ),
        1,
    );
    let (daemon, _cfg) = start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let ask = |from: &str, vip: &str| -> String {
        lab.client()
            .exec(&[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "--interface",
                from,
                &format!("http://{vip}/"),
            ])
            .unwrap_or_else(|e| panic!("{from} -> {vip}: {e:#}\n{}", daemon.read_stderr()))
            .trim_end()
            .to_string()
    };
    let first: Vec<String> = clients.iter().map(|c| ask(c, "192.0.2.100")).collect();
    let mut distinct = first.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 1, "rr spread the clients: {first:?}");
    for (c, rs) in clients.iter().zip(&first).rev() {
        assert_eq!(&ask(c, VIP2), rs, "{c} on the group's other VIP");
        assert_eq!(&ask(c, "192.0.2.100"), rs, "{c} back on the first VIP");
    }
    // One service: the group's flows counted together, under its first address.
    let status = status_json(&lab);
    let services = status["services"].as_array().unwrap();
    let group: Vec<&serde_json::Value> = services
        .iter()
        .filter(|s| s["vip"] == "192.0.2.100" || s["vip"] == VIP2)
        .collect();
    assert_eq!(group.len(), 1, "{status}");
    assert_eq!(group[0]["new_flows"], 15, "{}", group[0]);
    assert_eq!(
        group[0]["group"],
        serde_json::json!(["192.0.2.100:80", "192.0.2.101:80"]),
        "{}",
        group[0]
    );
}
