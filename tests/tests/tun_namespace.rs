//! TUN forwarding end to end, in namespaces, with real peers: a client, `lb-daemon` wrapping
//! packets in XDP, a router (a namespace forwarding between two LANs), and three nginx real
//! servers on the router's other side, set up by `lb-daemon realserver start --tunnel`. Once
//! each with IPIP, GUE and GRE: replies come straight from the real servers (seen on the
//! router's back leg, never at the load balancer), rr shares hold over IPv4 and IPv6, a real
//! server that stops is taken out and comes back, and a path whose MTU is too small for the
//! wrapped packet yields ICMP "fragmentation needed" from the VIP, after which the client's
//! requests fit. A real server that stops answering for the VIP (its nginx still up on its
//! own address) is taken out by the check through the tunnel alone.
use std::time::Duration;

use lb_tests::{
    lab::{counts, daemon_bin, start_daemon_in, status_json_in},
    netns::{require_lab, unique_prefix, wait_until, Netns, TunLab},
};

const GUE_PORT: &str = "6080";

fn assert_shares(what: &str, got: &std::collections::BTreeMap<String, usize>, n: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    for i in 1..=3 {
        let name = format!("rs{i}");
        let have = got.get(&name).copied().unwrap_or(0);
        assert!(
            have.abs_diff(n / 3) <= cpus,
            "{what}: {name} served {have} of {n} (counts {got:?})"
        );
    }
}

fn realserver(rs: &Netns, args: &[&str]) -> String {
    let bin = daemon_bin().unwrap();
    let dir = rs.dir().join("realserver");
    let mut all = vec![bin.to_str().unwrap(), "realserver"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--state-dir", dir.to_str().unwrap()]);
    rs.exec(&all)
        .unwrap_or_else(|e| panic!("realserver {}: {e:#}", args.join(" ")))
}

fn config(kind: &str) -> String {
    let tunnel = match kind {
        "gue" => format!("tunnel_type = \"gue\"\ntunnel_port = {GUE_PORT}\n"),
        k => format!("tunnel_type = \"{k}\"\n"),
    };
    // Checked every 200 ms, no retry: a dead server is out within about half a second. Two
    // checks: the server listens on its own address, and it answers for the VIP through the
    // tunnel.
    let timing = "connect_timeout = 0.3, retry = 0, delay_before_retry = 0.1, warmup = 0";
    let check = format!("  TCP_CHECK = [{{ {timing} }}, {{ via_tunnel = true, {timing} }}]\n");
    let mut c = "[global_defs]\nrouter_id = \"tun\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"skb\"\nmax_flows = 65536\n".to_string();
    for (vip, servers) in [
        (
            "192.0.2.100",
            ["203.0.113.11", "203.0.113.12", "203.0.113.13"],
        ),
        (
            "2001:db8::100",
            ["2001:db8:3::11", "2001:db8:3::12", "2001:db8:3::13"],
        ),
    ] {
        c += &format!(
            "\n[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\nlb_algo = \"rr\"\nlb_kind = \"TUN\"\n{tunnel}delay_loop = 0.2\nstatic = true\n"
        );
        for s in servers {
            c += &format!("  [[virtual_server.real_server]]\n  ip = \"{s}\"\n  port = 80\n{check}");
        }
    }
    c
}

fn reason(lb: &Netns, name: &str) -> u64 {
    let status = status_json_in(lb);
    status["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or_else(|| panic!("reason {name} in {status}"))
}

fn tun_end_to_end(kind: &str) {
    let test = format!("tun_end_to_end_{kind}");
    if !require_lab(&test) {
        return;
    }
    let lab = TunLab::new(&unique_prefix("tun"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    // The client's segments leave its veth as they would leave a NIC: one per frame. With
    // segmentation offload a veth hands on 64 KB super-packets, which skb-mode XDP sees
    // whole (and no wrapped copy of which fits any MTU).
    lab.client()
        .exec(&[
            "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
        ])
        .unwrap();
    let mut start = vec!["start", "--tunnel", kind, "--interface", "eth0"];
    if kind == "gue" {
        start.extend_from_slice(&["--port", GUE_PORT]);
    }
    start.extend_from_slice(&["--vip", "192.0.2.100", "--vip", "2001:db8::100"]);
    for rs in lab.servers() {
        let out = realserver(rs, &start);
        assert!(out.contains("decapsulator on eth0"), "{out}");
    }
    let status = realserver(lab.server(1), &["status"]);
    assert!(
        status.contains(&format!("{kind} decapsulator")) && status.contains("192.0.2.100/32"),
        "{status}"
    );

    let (daemon, _) =
        start_daemon_in(lab.lb(), &config(kind), "skb", 0).unwrap_or_else(|e| panic!("{e:#}"));
    // Every real server of both services up by both checks (a probe answered: a server
    // without a verdict counts as up too) before the first request.
    wait_until(
        "six real servers checked up",
        Duration::from_secs(10),
        || {
            lab.lb().dir().join("ctl.sock").exists()
                && status_json_in(lab.lb())["services"]
                    .as_array()
                    .is_some_and(|services| {
                        services.len() == 2
                            && services.iter().all(|s| {
                                s["backends"].as_array().is_some_and(|backends| {
                                    backends.iter().all(|b| {
                                        b["health"] == "up" && b["check_latency_ms"].is_number()
                                    })
                                })
                            })
                    })
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\n{}\n{}",
            status_json_in(lab.lb()),
            daemon.read_stderr()
        )
    });

    // Replies come straight from the real servers: through the router's back leg, never
    // through the load balancer.
    let at_router = lab.router().capture("eth1", "tcp src port 80").unwrap();
    let at_lb = lab.lb().capture("eth0", "tcp src port 80").unwrap();
    let bodies = lab
        .curl_batch("192.0.2.100", 30)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    assert_shares(&format!("{kind} rr over IPv4"), &counts(&bodies), 30);
    let bodies6 = lab
        .curl_batch("2001:db8::100", 30)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    assert_shares(&format!("{kind} rr over IPv6"), &counts(&bodies6), 30);
    let routed = at_router.stop().unwrap();
    let direct = at_lb.stop().unwrap();
    let from_vip = routed
        .iter()
        .filter(|l| l.contains("192.0.2.100.80 >") || l.contains("2001:db8::100.80 >"))
        .count();
    assert!(
        from_vip >= 60,
        "{from_vip} replies from the VIP at the router: {routed:?}"
    );
    // (The health checks' replies do come here: the plain checks' from the real servers' own
    // addresses, the checks through the tunnel's from the VIP to the load balancer.)
    let via_lb: Vec<&String> = direct
        .iter()
        .filter(|l| {
            (l.contains("192.0.2.100.80 >") && !l.contains("> 192.0.2.2."))
                || (l.contains("2001:db8::100.80 >") && !l.contains("> 2001:db8::2."))
        })
        .collect();
    assert!(
        via_lb.is_empty(),
        "replies through the load balancer: {via_lb:?}"
    );
    let status = status_json_in(lab.lb());
    let svc = &status["services"][0];
    assert_eq!(svc["new_flows"], 30, "{svc}");
    let via = match kind {
        "gue" => format!("gue port {GUE_PORT} from 192.0.2.2"),
        k => format!("{k} from 192.0.2.2"),
    };
    assert_eq!(svc["backends"][0]["tunnel"], via.as_str(), "{svc}");
    assert_eq!(svc["backends"][0]["effective_weight"], 1, "{svc}");

    // rs2 stops: taken out within the check's bound, no request fails; it comes back.
    lab.nginx(2).signal(libc::SIGKILL).unwrap();
    wait_until("rs2 down", Duration::from_secs(5), || {
        daemon
            .read_stderr()
            .contains("backend=203.0.113.12:80 up=false")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let bodies = lab.curl_batch("192.0.2.100", 20).unwrap();
    let c = counts(&bodies);
    assert_eq!(c.get("rs2"), None, "{c:?}");
    let ups = daemon
        .read_stderr()
        .matches("backend=203.0.113.12:80 up=true")
        .count();
    let _nginx = lb_tests::netns::spawn_nginx(lab.server(2), "rs2").unwrap();
    wait_until("rs2 up again", Duration::from_secs(5), || {
        daemon
            .read_stderr()
            .matches("backend=203.0.113.12:80 up=true")
            .count()
            > ups
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let bodies = lab.curl_batch("192.0.2.100", 30).unwrap();
    assert_shares(&format!("{kind}: rs2 back"), &counts(&bodies), 30);

    // rs3 loses the VIPs from its loopback: its nginx still answers on its own addresses, so
    // only the checks through the tunnel see that it would drop every client's packet.
    let rs3 = [
        ("192.0.2.100/32", "203.0.113.13:80", 0),
        ("2001:db8::100/128", "[2001:db8:3::13]:80", 1),
    ];
    let ups = |backend: &str| {
        daemon
            .read_stderr()
            .matches(&format!("backend={backend} up=true"))
            .count()
    };
    let ups_before: Vec<usize> = rs3.iter().map(|(_, b, _)| ups(b)).collect();
    for (vip, _, _) in rs3 {
        lab.server(3)
            .ip(&["addr", "del", vip, "dev", "lo"])
            .unwrap();
    }
    for (vip, backend, service) in rs3 {
        wait_until(&format!("{backend} down"), Duration::from_secs(5), || {
            daemon
                .read_stderr()
                .contains(&format!("backend={backend} up=false"))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
        let status = status_json_in(lab.lb());
        let b = &status["services"][service]["backends"][2];
        assert_eq!(b["addr"], backend, "{status}");
        let vip = vip.split('/').next().unwrap();
        let vip_port = if service == 0 {
            format!("{vip}:80")
        } else {
            format!("[{vip}]:80")
        };
        let rs = backend.rsplit_once(':').unwrap().0.trim_matches(['[', ']']);
        let want = format!("{vip_port} through the tunnel to {rs}: no answer from the VIP");
        let why = b["last_error"].as_str().unwrap_or_default();
        assert!(why.contains(&want), "want {want:?}: {b}");
    }
    let c = counts(&lab.curl_batch("192.0.2.100", 20).unwrap());
    assert_eq!(c.get("rs3"), None, "{c:?}");
    for (vip, _, _) in rs3 {
        lab.server(3)
            .ip(&["addr", "add", vip, "dev", "lo"])
            .unwrap();
    }
    for ((_, backend, _), before) in rs3.iter().zip(ups_before) {
        wait_until(
            &format!("{backend} up again"),
            Duration::from_secs(5),
            || ups(backend) > before,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    }

    // A path of MTU 1400 to the real servers: the client's full-size segments (1500 bytes)
    // do not fit once wrapped. The program answers with "fragmentation needed" from the VIP,
    // the client lowers its path MTU, and the request goes through; the next one fits.
    lab.lb()
        .ip(&[
            "route",
            "change",
            "203.0.113.0/24",
            "via",
            "192.0.2.254",
            "mtu",
            "lock",
            "1400",
        ])
        .unwrap();
    // The outer IPv4 header, and GUE's UDP and GUE headers or GRE's header.
    let overhead = match kind {
        "gue" => 32,
        "gre" => 24,
        _ => 20,
    };
    let icmp = lab
        .client()
        .capture("eth0", "icmp and src host 192.0.2.100")
        .unwrap();
    let body = "x".repeat(4000);
    let post = |n: usize| {
        let out = lab
            .client()
            .exec(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-H",
                "Expect:",
                "--data-binary",
                &body,
                "http://192.0.2.100/",
            ])
            .unwrap_or_else(|e| panic!("POST {n}: {e:#}\n{}", daemon.read_stderr()));
        assert!(out.starts_with("rs"), "POST {n}: {out}");
    };
    // The program asks the FIB again within a second: until then a request may still be
    // answered with the interface's MTU (1500 less the tunnel).
    let want = format!("need to frag (mtu {})", 1400 - overhead);
    let mut n = 0;
    wait_until(
        &format!("the client to see `{want}`"),
        Duration::from_secs(10),
        || {
            n += 1;
            post(n);
            icmp.lines().iter().any(|l| l.contains(&want))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", icmp.lines()));
    icmp.stop().unwrap();
    let after_first = reason(lab.lb(), "tx_too_big");
    assert!(after_first > 0);
    post(n + 1);
    assert_eq!(
        reason(lab.lb(), "tx_too_big"),
        after_first,
        "the second request did not fit"
    );

    // stop takes the decapsulator off again.
    for rs in lab.servers() {
        let out = realserver(rs, &["stop"]);
        assert!(out.contains("decapsulator taken off eth0"), "{out}");
        let link = rs.ip(&["link", "show", "eth0"]).unwrap();
        assert!(!link.contains("xdp"), "{link}");
    }
}

#[test]
fn tun_end_to_end_ipip() {
    tun_end_to_end("ipip");
}

#[test]
fn tun_end_to_end_gue() {
    tun_end_to_end("gue");
}

#[test]
fn tun_end_to_end_gre() {
    tun_end_to_end("gre");
}
