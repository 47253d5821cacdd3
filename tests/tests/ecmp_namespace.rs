//! Active-active load balancers behind ECMP (`[announce]`, VIPs announced over BGP by BIRD),
//! in the namespace lab of `lb_tests::ecmp_lab`: a router, three lb-daemon nodes, three DR
//! real servers, a client with 64 addresses.
//!
//! 0. The routing plumbing, without the daemon (its route simulated): the router's route to
//!    the VIP goes through every node that routes it to itself, the flows of the 64 client
//!    addresses hash over all three, and a node leaves the route, each way measured: its
//!    TUN device gone (the daemon's death), its route deleted (quorum lost), its BIRD
//!    killed, its link cut (BFD).
//! 1. Traffic from 64 client addresses: every node gets a share, every request succeeds.
//! 2. A node killed (lb-daemon and BIRD, SIGKILL) under 100 long-lived connections: none is
//!    reset, and new connections from every address succeed again within 1 s. The same
//!    when the daemon alone is killed (its TUN device and route go, BIRD withdraws), and
//!    when the node is cut off (BFD).
//! 3. One node's checks fail on every real server: that node alone leaves the route.
//!
//! 1 to 3 need a daemon with `[announce]`: before it, they skip with the reason printed
//! (`LB_REQUIRE_PRIVILEGED=1` makes that a failure, as it does a missing root or tool).
//! The tests take turns (a lock): each measures timing on a small machine.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    e2e_lab::{holds_for, wait, RoundReport},
    ecmp_lab::{
        client_addrs, lb_v4, node_of, require_announce, require_ecmp_lab, Death, EcmpLab,
        ANNOUNCE_DEVICE, BFD_DETECTION, CI_MARGIN, CLIENT_ADDRS, LBS, RECOVERY_BOUND, VIP,
    },
    netns::unique_prefix,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// How long the router's route takes to lose (or get back) a node after each event, without
/// lb-daemon.
#[test]
fn bird_plumbing_without_the_daemon() {
    if !require_ecmp_lab("bird_plumbing_without_the_daemon") {
        return;
    }
    let _one = serial();
    let t0 = Instant::now();
    let mut lab = EcmpLab::new(&unique_prefix("ecp")).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "lab up, three BGP sessions established: {}",
        secs(t0.elapsed())
    );
    assert!(lab.router_next_hops().is_empty());
    let fail = |e: anyhow::Error, lab: &EcmpLab| -> ! { panic!("{e:#}\n{}", lab.logs()) };

    // Announced one node after the other.
    let mut up = Vec::new();
    for i in 1..=LBS {
        lab.simulate_announce(i).unwrap_or_else(|e| fail(e, &lab));
        up.push(i);
        let took = lab
            .wait_next_hops(&up, Duration::from_secs(5))
            .unwrap_or_else(|e| fail(e, &lab));
        eprintln!(
            "lb{i} routes the VIP: in the router's route after {}",
            secs(took)
        );
    }
    let routes = lab
        .router_birdc(&["show", "route", &format!("{VIP}/32")])
        .unwrap();
    for i in 1..=LBS {
        assert!(routes.contains(&format!("via {}", lb_v4(i))), "{routes}");
    }
    let kernel = lab
        .router()
        .ip(&["route", "show", &VIP.to_string()])
        .unwrap();
    eprintln!("router: {}", kernel.trim());

    // The router hashes on ports too: 64 addresses, a few source ports each, over all three.
    let mut by_node: BTreeMap<usize, usize> = BTreeMap::new();
    let mut ports_matter = false;
    for (k, src) in client_addrs().into_iter().enumerate() {
        let hops: BTreeSet<usize> = [40000u16, 40001, 50000]
            .iter()
            .map(|&p| {
                let hop = lab
                    .router_next_hop_for(src, p + k as u16)
                    .unwrap_or_else(|e| fail(e, &lab));
                node_of(hop).unwrap_or_else(|| panic!("next hop {hop}"))
            })
            .collect();
        ports_matter |= hops.len() > 1;
        for n in hops {
            *by_node.entry(n).or_insert(0) += 1;
        }
    }
    eprintln!("the router's choices for the client addresses, by node: {by_node:?}");
    assert_eq!(by_node.len(), LBS, "{by_node:?}");
    assert!(ports_matter, "the router hashes on addresses only");

    let bound = RECOVERY_BOUND + CI_MARGIN;
    // The daemon's death: its TUN device goes, and the kernel removes the route silently
    // (no netlink message for IPv4); BIRD rescans its table as the interface goes down.
    lab.simulate_death(1).unwrap();
    let gone = lab
        .wait_next_hops(&[2, 3], bound)
        .unwrap_or_else(|e| fail(e, &lab));
    eprintln!(
        "lb1's TUN device deleted: out of the route after {}",
        secs(gone)
    );
    lab.simulate_announce(1).unwrap();
    let back = lab
        .wait_next_hops(&[1, 2, 3], Duration::from_secs(5))
        .unwrap_or_else(|e| fail(e, &lab));
    eprintln!("lb1 routes the VIP again: back after {}", secs(back));

    // Quorum lost: the daemon deletes the route (a netlink notification).
    lab.simulate_route(2, false).unwrap();
    let gone2 = lab
        .wait_next_hops(&[1, 3], bound)
        .unwrap_or_else(|e| fail(e, &lab));
    eprintln!("lb2's route deleted: out after {}", secs(gone2));
    lab.simulate_route(2, true).unwrap();
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(5))
        .unwrap_or_else(|e| fail(e, &lab));

    // BIRD killed: the kernel closes its BGP connection (FIN).
    lab.kill_bird(3).unwrap();
    let gone3 = lab
        .wait_next_hops(&[1, 2], bound)
        .unwrap_or_else(|e| fail(e, &lab));
    eprintln!("lb3's BIRD killed: out after {}", secs(gone3));
    let t = Instant::now();
    lab.start_bird(3).unwrap_or_else(|e| fail(e, &lab));
    let answering = t.elapsed();
    lab.wait_next_hops(&[1, 2, 3], Duration::from_secs(30))
        .unwrap_or_else(|e| fail(e, &lab));
    eprintln!(
        "lb3's BIRD started again: answering after {}, back in the route after {}",
        secs(answering),
        secs(t.elapsed())
    );

    // The node cut off: nothing closes, BFD notices.
    let bfd_bound = BFD_DETECTION + CI_MARGIN;
    lab.set_link(2, false).unwrap();
    let cut = lab
        .wait_next_hops(&[1, 3], bfd_bound)
        .unwrap_or_else(|e| fail(e, &lab));
    eprintln!(
        "lb2's link cut: out after {} (BFD 3 x 100 ms; bound {})",
        secs(cut),
        secs(bfd_bound)
    );
    eprintln!(
        "router's session with lb2: {:?} (BIRD takes it up again only after its error wait \
         time, 60 s at first: not waited for here)",
        lab.session(2)
    );
    for (what, took) in [
        ("TUN device deleted", gone),
        ("route deleted", gone2),
        ("BIRD killed", gone3),
    ] {
        assert!(took <= bound, "{what}: {took:?}");
    }
    assert!(cut <= bfd_bound, "link cut: {cut:?}");
}

/// Every node starts; 64 client addresses, one request each: all succeed, every node
/// schedules a share.
#[test]
fn traffic_spreads_over_every_node() {
    if !require_announce("traffic_spreads_over_every_node") {
        return;
    }
    let _one = serial();
    let mut lab = EcmpLab::new(&unique_prefix("ec1")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_all()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    for i in 1..=LBS {
        eprintln!("lb{i} announce: {:?}", lab.announce_status(i));
        assert_eq!(lab.announced(i), Some(true), "lb{i}");
    }
    let before: Vec<u64> = (1..=LBS).map(|i| lab.new_flows(i).unwrap()).collect();
    let probes = lab
        .probe_every_address(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let failed: Vec<_> = probes.iter().filter(|p| p.outcome.is_err()).collect();
    assert!(
        failed.is_empty(),
        "failed requests: {failed:?}\n{}",
        lab.logs()
    );
    let mut by_rs: BTreeMap<String, usize> = BTreeMap::new();
    // Per node, the connections the router sent there (its hash of each one's 5-tuple).
    let mut routed = vec![0u64; LBS];
    for p in &probes {
        *by_rs
            .entry(p.outcome.clone().unwrap_or_default())
            .or_insert(0) += 1;
        let local = p.local.expect("a connection that answered was made");
        let hop = lab
            .router_next_hop_for(p.src, local.port())
            .unwrap_or_else(|e| panic!("{e:#}"));
        routed[node_of(hop).expect("a node") - 1] += 1;
    }
    let flows: Vec<u64> = (1..=LBS)
        .map(|i| lab.new_flows(i).unwrap() - before[i - 1])
        .collect();
    eprintln!("{CLIENT_ADDRS} requests: by real server {by_rs:?}");
    eprintln!(
        "new flows per node (lb1, lb2, lb3): {flows:?}; routed there by the router: {routed:?}"
    );
    for (i, n) in flows.iter().enumerate() {
        assert!(*n > 0, "lb{} scheduled none: {flows:?}", i + 1);
    }
    // Each connection was scheduled once, by the node the router sent it to (the flows
    // sync installs on the other nodes are no new flows).
    assert_eq!(flows, routed);
    assert_eq!(by_rs.len(), 3, "{by_rs:?}");
}

const CONNECTIONS: usize = 100;
/// The node that fails in [`node_failure`].
const VICTIM: usize = 2;

/// Whether the nodes agree on the real servers when one fails.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Views {
    Same,
    /// lb1 sees rs1 down, lb2 and lb3 up.
    Differ,
}

/// What node `i`'s checks say of rs1.
fn rs1_health(lab: &EcmpLab, i: usize) -> Option<String> {
    let s = lab.lb_status(i).ok()?;
    let rs1 = format!("{}:80", lb_tests::ecmp_lab::rs_v4(1));
    s["services"][0]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["addr"].as_str() == Some(rs1.as_str()))?["health"]
        .as_str()
        .map(String::from)
}

/// 100 keep-alive connections over the three nodes (from the 64 client addresses, some
/// through each node); lb2 fails `how`: no connection is reset, and new connections from
/// every address succeed again within [`RECOVERY_BOUND`] (with [`CI_MARGIN`]).
fn node_failure(tag: &str, how: Death, views: Views) {
    let mut lab = EcmpLab::new(&unique_prefix(tag)).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_all()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    if views == Views::Differ {
        // lb1 alone sees rs1 fail: its Maglev table leaves rs1 out (a drained server keeps
        // its established flows), lb2's and lb3's keep it. A connection lb2 sent to rs1
        // that the router moves to lb1 must stay on rs1: only the synced entry says so.
        let f = lab.rs(1).dir().join("health/lb1");
        std::fs::remove_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        wait("lb1 to see rs1 down", Duration::from_secs(10), || {
            rs1_health(&lab, 1).as_deref() == Some("down")
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // Each node's new flows are the router's choices, every node has some, no reset on a
    // second request, and every node holds every connection's flow (its own, and the
    // others' through sync) before one fails.
    let mut spread = lab
        .open_spread(CONNECTIONS)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    eprintln!(
        "{CONNECTIONS} connections: by real server {:?}; new flows per node {:?}; through \
         each node {:?}",
        spread.conns.by_backend(),
        spread.flows,
        spread.through
    );
    if views == Views::Differ {
        let seen: Vec<_> = (1..=LBS).map(|i| rs1_health(&lab, i)).collect();
        assert_eq!(
            seen,
            [Some("down".into()), Some("up".into()), Some("up".into())],
            "the nodes' views of rs1 when lb{VICTIM} fails"
        );
    }
    let loss = lab
        .fail_node(&mut spread.conns, VICTIM, how)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    eprintln!("{loss}");
    if how == Death::DaemonKilled {
        assert!(
            lab.lb(VICTIM)
                .ip(&["link", "show", ANNOUNCE_DEVICE])
                .is_err(),
            "{ANNOUNCE_DEVICE} outlived lb{VICTIM}'s daemon"
        );
    }
    eprintln!("the {CONNECTIONS} connections after: {:?}", loss.after);
    assert_eq!(
        loss.after,
        RoundReport {
            ok: CONNECTIONS,
            ..Default::default()
        },
        "every connection on its real server after lb{VICTIM} {how:?}\n{}",
        lab.logs()
    );
    let route_bound = match how {
        Death::CutOff => BFD_DETECTION,
        Death::Killed | Death::DaemonKilled => RECOVERY_BOUND,
    } + CI_MARGIN;
    assert!(
        loss.route_out <= route_bound,
        "lb{VICTIM} left the route after {} (bound {})",
        secs(loss.route_out),
        secs(route_bound)
    );
    let bound = RECOVERY_BOUND + CI_MARGIN;
    assert!(
        loss.recovery.after <= bound,
        "new connections from every address took {} (bound {} + margin {})",
        secs(loss.recovery.after),
        secs(RECOVERY_BOUND),
        secs(CI_MARGIN)
    );
}

#[test]
fn a_dead_node_resets_nothing_and_new_connections_resume() {
    if !require_announce("a_dead_node_resets_nothing_and_new_connections_resume") {
        return;
    }
    let _one = serial();
    node_failure("ec2", Death::Killed, Views::Same);
}

/// The same while the nodes' views of the real servers differ (lb1 sees rs1 down): the
/// connections the router moves keep their real servers through the synced entries.
#[test]
fn a_dead_node_resets_nothing_while_the_nodes_disagree_on_a_real_server() {
    if !require_announce("a_dead_node_resets_nothing_while_the_nodes_disagree_on_a_real_server") {
        return;
    }
    let _one = serial();
    node_failure("ec6", Death::Killed, Views::Differ);
}

/// The daemon alone dies: its device, and the route with it, go; BIRD withdraws.
#[test]
fn a_dead_daemon_withdraws_through_its_vanished_device() {
    if !require_announce("a_dead_daemon_withdraws_through_its_vanished_device") {
        return;
    }
    let _one = serial();
    node_failure("ec4", Death::DaemonKilled, Views::Same);
}

/// The node is cut off (its link down, nothing closes): BFD takes it out of the route.
#[test]
fn a_node_cut_off_leaves_the_route_after_bfd() {
    if !require_announce("a_node_cut_off_leaves_the_route_after_bfd") {
        return;
    }
    let _one = serial();
    node_failure("ec5", Death::CutOff, Views::Same);
}

/// lb3's checks fail on every real server (its own health path gone): lb3 leaves the route,
/// lb1 and lb2 stay, and every client address is still served; back when the checks pass.
#[test]
fn quorum_loss_withdraws_that_node_only() {
    if !require_announce("quorum_loss_withdraws_that_node_only") {
        return;
    }
    let _one = serial();
    let mut lab = EcmpLab::new(&unique_prefix("ec3")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_all()
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    let t = lb_tests::e2e_lab::Timers::lab();
    let detection = t.detection_refused();

    let t0 = Instant::now();
    lab.set_checks(3, false).unwrap();
    lab.wait_next_hops(&[1, 2], detection + CI_MARGIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let status = lab.announce_status(3);
    eprintln!(
        "lb3's checks fail: out of the router's route after {} (check bound {}); lb3 says \
         {status:?}",
        secs(t0.elapsed()),
        secs(detection)
    );
    assert_eq!(lab.announced(3), Some(false), "{status:?}");
    assert!(
        status
            .as_ref()
            .and_then(|s| s["reason"].as_str())
            .is_some_and(|r| !r.is_empty()),
        "a reason: {status:?}"
    );
    holds_for(
        "lb1 and lb2 stay in the route, announcing",
        Duration::from_secs(2),
        || {
            lab.router_nodes() == [1, 2]
                && lab.announced(1) == Some(true)
                && lab.announced(2) == Some(true)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: next hops {:?}", lab.router_next_hops()));
    let probes = lab.probe_every_address(Duration::from_secs(3)).unwrap();
    let failed: Vec<_> = probes.iter().filter(|p| p.outcome.is_err()).collect();
    assert!(failed.is_empty(), "with lb3 out: {failed:?}");

    let t1 = Instant::now();
    lab.set_checks(3, true).unwrap();
    lab.wait_next_hops(&[1, 2, 3], detection + CI_MARGIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "lb3's checks pass again: back in the route after {}",
        secs(t1.elapsed())
    );
    assert_eq!(lab.announced(3), Some(true));
}
