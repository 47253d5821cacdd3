//! NAT (keepalived's `lb_kind NAT`) end to end, in keepalived's usual deployment: a VRRP pair
//! of load balancers with an outside interface (eth0: the client and the VIP) and an inside
//! one (eth1: the real servers' network), an outside and an inside vrrp_instance in one sync
//! group, and three nginx real servers on the inside network whose default gateway is the
//! inside VIP, listening on 8080 behind the service's port 80. Nothing is installed on the
//! real servers but that route.
//!
//! * curl through the VIP reaches all three; every reply the client sees comes from
//!   VIP:80, none from a real server's address (tcpdump on the client);
//! * a real server whose nginx stops goes down by its TCP_CHECK (on its own port 8080),
//!   new connections avoid it, and it comes back;
//! * lb1 is SIGKILLed: lb2 takes both VIPs (the sync group), and with connection sync every
//!   established connection goes on on its real server, its replies translated by lb2
//!   (which first has to resolve the client's address: `NEIGH_WANTED`).
use std::time::{Duration, Instant};

/// The tests take turns: three NAT labs at once (two load balancers, three nginx, a client
/// each) on a two-core machine slowed the failover enough that the first test's round ran
/// before the real servers followed lb2 (see `fail_over_with`), and saw resets.
static ONE_LAB: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_lab() -> std::sync::MutexGuard<'static, ()> {
    ONE_LAB.lock().unwrap_or_else(|e| e.into_inner())
}

use lb_tests::{
    e2e_lab::{
        wait, LongLived, LvsLab, LvsParams, SyncMode, INSIDE_VIP, MARGIN, NAT_PORT, VIP, VIP2,
    },
    netns::{require_lab, require_tools, unique_prefix, HOST_IF},
};

const CONNECTIONS: usize = 60;

/// `curl` from the client to the VIP: the body (`rsN`).
fn curl(lab: &LvsLab) -> String {
    lab.client()
        .exec(&["curl", "-sS", "--max-time", "3", &format!("http://{VIP}/")])
        .unwrap_or_else(|e| panic!("curl through the VIP: {e:#}\n{}", lab.logs()))
        .trim()
        .to_string()
}

#[test]
fn nat_pair_translates_both_ways_and_fails_over_with_sync() {
    let _turn = one_lab();
    if !require_lab("nat_pair_translates_both_ways_and_fails_over_with_sync")
        || !require_tools(
            "nat_pair_translates_both_ways_and_fails_over_with_sync",
            &["curl", "tcpdump"],
        )
    {
        return;
    }
    let params = LvsParams {
        nat: true,
        sync: Some(SyncMode::Unicast),
        ..LvsParams::new("rr", "skb")
    };
    let t = params.timers;
    let mut lab = LvsLab::new(&unique_prefix("nat"), params).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(lab
        .lb(1)
        .ip(&["-4", "addr", "show", "dev", "eth1"])
        .unwrap()
        .contains(&INSIDE_VIP.to_string()));
    for i in 1..=3 {
        lab.wait_health(1, i, "up", Duration::from_secs(10))
            .unwrap();
    }

    // curl through the VIP: rr over the three; every reply from the VIP's port 80.
    let from_vip = lab
        .client()
        .capture(HOST_IF, &format!("tcp and src host {VIP} and src port 80"))
        .unwrap();
    let from_inside = lab
        .client()
        .capture(HOST_IF, "src net 198.51.100.0/24 or src port 8080")
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..12 {
        *seen.entry(curl(&lab)).or_insert(0) += 1;
    }
    // rr keeps a position per CPU: each CPU's share goes round the three.
    assert_eq!(seen.len(), 3, "rr over the three real servers: {seen:?}");
    assert!(seen.values().all(|&n| n >= 2), "{seen:?}");
    from_vip
        .wait_for("replies from the VIP", Duration::from_secs(3), |l| {
            l.len() >= 12
        })
        .unwrap_or_else(|e| panic!("replies from the VIP: {e:#}"));
    let leaked = from_inside.stop().unwrap();
    assert!(
        leaked.is_empty(),
        "untranslated replies reached the client: {leaked:?}"
    );
    drop(from_vip);

    // A real server stops: down by its check on port 8080, skipped, back.
    lab.stop_nginx(3).unwrap();
    lab.wait_health(1, 3, "down", t.detection_refused() + MARGIN)
        .unwrap();
    for _ in 0..6 {
        assert_ne!(
            curl(&lab),
            "rs3",
            "a new connection went to the stopped real server"
        );
    }
    lab.start_nginx(3).unwrap();
    lab.wait_health(1, 3, "up", Duration::from_secs(10))
        .unwrap();

    // Established connections, synced to lb2.
    let mut conns = LongLived::open(lab.client(), lab.target(), CONNECTIONS).unwrap();
    let spread = conns.by_backend();
    assert_eq!(spread.len(), 3, "{spread:?}");
    let r = conns.round();
    assert_eq!(
        (r.ok, r.resets),
        (CONNECTIONS, 0),
        "before the failover: {r:?}"
    );
    let mine = conns.local_addrs();
    // lb1 killed: lb2 takes both VIPs and translates the connections' replies.
    let t0 = Instant::now();
    fail_over_with(&mut lab, &mine);
    let r = conns.round();
    eprintln!("after lb1's SIGKILL ({:?}): {r:?}", t0.elapsed());
    assert_eq!(
        (r.ok, r.resets, r.moved),
        (CONNECTIONS, 0, 0),
        "every connection on its real server after the failover: {r:?}\n{}",
        lab.logs()
    );
    for line in lab
        .lb_log(2)
        .lines()
        .filter(|l| l.contains("resolving the next hops"))
    {
        eprintln!("lb2: {line}");
    }
    // New connections through lb2, to all three.
    let more = LongLived::open(lab.client(), lab.target(), 9).unwrap();
    assert_eq!(more.by_backend().len(), 3, "{:?}", more.by_backend());
    assert!(
        lab.rs_addr(1).port() == NAT_PORT,
        "the real servers listen behind the service's port"
    );
}

/// Once lb2 holds the flow of every connection from `mine` (the client addresses in its
/// table: the sync counters count writes, a periodic refresh among them), lb1 is SIGKILLed;
/// returns when lb2 is master of both instances, holds the inside VIP and has the client's
/// traffic.
fn fail_over_with(lab: &mut LvsLab, mine: &[std::net::SocketAddr]) {
    wait(
        "lb2 to hold every connection's flow",
        Duration::from_secs(15),
        || {
            let held = lab.flow_clients(2);
            mine.iter().all(|a| held.contains(a))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    lab.kill_lb(1).unwrap();
    let t = lab.params().timers;
    lab.wait_state(
        2,
        "MASTER",
        t.master_down(99) + MARGIN + Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    wait("lb2 to hold the inside VIP", Duration::from_secs(5), || {
        lab.lb(2)
            .ip(&["-4", "addr", "show", "dev", "eth1"])
            .is_ok_and(|a| a.contains(&INSIDE_VIP.to_string()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    lab.wait_client_follows(2, Duration::from_secs(5)).unwrap();
    // And the real servers send their replies to lb2. Until their entry for the inside VIP
    // follows lb2's gratuitous ARP, the replies reach lb1, whose program died with its
    // daemon (no pins here) while its kernel still forwards: untranslated, they make the
    // client answer with resets that end the connections at the real servers.
    let lb2_inside = lab.lb(2).mac("eth1").unwrap();
    for i in 1..=3 {
        wait(
            &format!("rs{i} to send to lb2"),
            Duration::from_secs(5),
            || lab.rs(i).neigh_mac(&INSIDE_VIP.to_string()).ok().flatten() == Some(lb2_inside),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    }
}

/// Whether LB 1's `dev` runs an XDP program.
fn xdp_on(lab: &LvsLab, dev: &str) -> bool {
    lab.lb(1)
        .ip(&["link", "show", "dev", dev])
        .is_ok_and(|l| l.contains("xdp"))
}

/// A restart keeps NAT's connections: the dataplane pinned (as on a host with systemd's
/// /sys/fs/bpf), `lb-daemon stop --keep` leaves the program forwarding on both interfaces
/// (the inside one's link is pinned with the dataplane), the next run takes both over and
/// writes the NAT sources before its program runs; `stop --release` takes both off.
#[test]
fn nat_restart_takes_both_interfaces_over() {
    let _turn = one_lab();
    if !require_lab("nat_restart_takes_both_interfaces_over") {
        return;
    }
    let params = LvsParams {
        nat: true,
        pins: true,
        ..LvsParams::new("rr", "skb")
    };
    let t = params.timers;
    let mut lab = LvsLab::new(&unique_prefix("nar"), params).unwrap_or_else(|e| panic!("{e:#}"));
    // One node: no peer to take the VIPs while it is down.
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_state(1, "MASTER", t.master_down(100) + MARGIN)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut conns = LongLived::open(lab.client(), lab.target(), 30).unwrap();
    assert_eq!(conns.by_backend().len(), 3, "{:?}", conns.by_backend());

    lab.stop_lb_with(1, Some("--keep")).unwrap();
    assert!(
        xdp_on(&lab, HOST_IF) && xdp_on(&lab, "eth1"),
        "the program stays on both"
    );
    let r = conns.round();
    assert_eq!(
        (r.ok, r.resets),
        (30, 0),
        "while no daemon runs, both directions translated: {r:?}\n{}",
        lab.logs()
    );

    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    let log = lab.lb_log(1);
    assert!(
        log.lines().any(
            |l| l.contains("XDP program attached to an inside interface")
                && l.contains("taken_over=true")
        ),
        "the inside link taken over:\n{log}"
    );
    let r = conns.round();
    assert_eq!(
        (r.ok, r.resets),
        (30, 0),
        "after the restart: {r:?}\n{}",
        lab.logs()
    );

    lab.stop_lb_with(1, Some("--release")).unwrap();
    assert!(
        !xdp_on(&lab, HOST_IF) && !xdp_on(&lab, "eth1"),
        "a release takes both off"
    );
}

/// NAT inside a `virtual_server_group` (the lab's `nat_group`: VIP:80, VIP:443 and VIP2:80
/// as one persistent service, real servers without a port, so each packet keeps its own):
///
/// * five clients, each asking the three keys, stay on one real server, and the clients
///   spread over more than one;
/// * every reply reaches the client from the key its connection went to (tcpdump): the
///   real servers' port 80 answers for two VIPs, told apart per flow;
/// * lb1 is SIGKILLed: connections to VIP2:80 and VIP:443 go on through lb2, whose synced
///   flows carry their reverse entries.
#[test]
fn a_nat_group_answers_from_each_key_and_fails_over() {
    let _turn = one_lab();
    let name = "a_nat_group_answers_from_each_key_and_fails_over";
    if !require_lab(name) || !require_tools(name, &["curl", "tcpdump"]) {
        return;
    }
    let params = LvsParams {
        nat: true,
        nat_group: true,
        sync: Some(SyncMode::Unicast),
        ..LvsParams::new("rr", "skb")
    };
    let mut lab = LvsLab::new(&unique_prefix("nag"), params).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    for i in 1..=3 {
        lab.wait_health(1, i, "up", Duration::from_secs(10))
            .unwrap();
    }
    let clients: Vec<String> = (5..10).map(|i| format!("192.0.2.{i}")).collect();
    for c in &clients {
        lab.client()
            .ip(&["addr", "add", &format!("{c}/24"), "dev", HOST_IF])
            .unwrap();
    }
    let keys = [(VIP, 80u16), (VIP, 443), (VIP2, 80)];
    let captures: Vec<_> = keys
        .iter()
        .map(|(vip, port)| {
            lab.client()
                .capture(
                    HOST_IF,
                    &format!("tcp and src host {vip} and src port {port}"),
                )
                .unwrap()
        })
        .collect();
    let leaks = lab
        .client()
        .capture(
            HOST_IF,
            "src net 198.51.100.0/24 or src port 8080 or src port 8443",
        )
        .unwrap();
    let ask = |from: &str, vip: std::net::Ipv4Addr, port: u16| -> String {
        lab.client()
            .exec(&[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "--interface",
                from,
                &format!("http://{vip}:{port}/"),
            ])
            .unwrap_or_else(|e| panic!("{from} -> {vip}:{port}: {e:#}\n{}", lab.logs()))
            .trim()
            .to_string()
    };
    let mut chosen = std::collections::BTreeSet::new();
    for c in &clients {
        let answers: Vec<String> = keys.iter().map(|(v, p)| ask(c, *v, *p)).collect();
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "{c} stays on one real server across the group: {answers:?}"
        );
        chosen.insert(answers[0].clone());
    }
    assert!(chosen.len() > 1, "rr spread the clients: {chosen:?}");
    for (cap, (vip, port)) in captures.iter().zip(keys) {
        // Each curl's connection: at least the SYN-ACK, the answer and the FIN.
        cap.wait_for(
            &format!("replies from {vip}:{port}"),
            Duration::from_secs(3),
            |l| l.len() >= 3 * clients.len(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    drop(captures);
    let leaked = leaks.stop().unwrap();
    assert!(
        leaked.is_empty(),
        "untranslated replies reached the client: {leaked:?}"
    );

    // Connections to the shared port (VIP2:80) and to VIP:443, synced to lb2.
    const N: usize = 20;
    let mut shared = LongLived::open(lab.client(), (VIP2, 80).into(), N).unwrap();
    let mut https = LongLived::open(lab.client(), (VIP, 443).into(), N).unwrap();
    for conns in [&mut shared, &mut https] {
        let r = conns.round();
        assert_eq!((r.ok, r.resets), (N, 0), "before the failover: {r:?}");
    }
    let mine: Vec<std::net::SocketAddr> = [&shared, &https]
        .iter()
        .flat_map(|c| c.local_addrs())
        .collect();
    fail_over_with(&mut lab, &mine);
    let lb2_mac = lab.lb(2).mac(HOST_IF).unwrap();
    wait(
        "the client to send VIP2's traffic to lb2",
        Duration::from_secs(5),
        || lab.client().neigh_mac(&VIP2.to_string()).ok().flatten() == Some(lb2_mac),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for (what, conns) in [("VIP2:80", &mut shared), ("VIP:443", &mut https)] {
        let r = conns.round();
        assert_eq!(
            (r.ok, r.resets, r.moved),
            (N, 0, 0),
            "{what}: every connection on its real server after the failover: {r:?}\n{}",
            lab.logs()
        );
    }
}
