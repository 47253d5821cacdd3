//! End to end, the seed's "LVS + Nginx + Keepalived" deployment under a steady stream of HTTP
//! requests through the VIP (`lb_tests::e2e_lab`): a client, two LBs running `lb-daemon`
//! (XDP + VRRP, MASTER 100 / BACKUP 99), three nginx real servers set up by
//! `lb-daemon realserver start`.
//!
//! 1. All three backends serve.
//! 2. A real server stopped: after the detection bound, no request fails.
//! 3. The master killed (SIGKILL) or its link cut: requests fail only inside the failover
//!    window, which is measured and printed.
//! 4. With `mh` on both LBs, 100 long-lived connections opened before the failover keep
//!    working after it, with zero resets.
//! 5. The old master back: it preempts, or with `nopreempt` does not.
//!
//! The tests run one at a time (a lock): each is a timing measurement on a small machine.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    e2e_lab::{holds_for, lvs_demo, LongLived, LvsLab, LvsParams, Summary, MARGIN, PHASE_REQUESTS},
    netns::{require_lab, unique_prefix},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn started(tag: &str, params: LvsParams) -> LvsLab {
    let mut lab = LvsLab::new(&unique_prefix(tag), params).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    lab
}

fn demo(params: LvsParams) {
    let mut s = Summary::default();
    let r = lvs_demo(&params, PHASE_REQUESTS, &mut s);
    s.print(&format!("lvs demo {} {}", params.sched, params.xdp_mode));
    r.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.failed.is_empty(), "{:?}", s.failed);
}

/// Tests 1, 2, 3 (SIGKILL) and 5 (preemption) in the order of the lab's demo, with the seed's
/// rr in skb mode: every step's checks are the demo's own (`lvs_demo`).
#[test]
fn seed_lvs_rr_skb_backend_loss_master_kill_and_preempt() {
    if !require_lab("seed_lvs_rr_skb_backend_loss_master_kill_and_preempt") {
        return;
    }
    let _one = serial();
    demo(LvsParams::new("rr", "skb"));
}

/// The same with wrr (weights 1, 2, 3) and native XDP on both LBs.
#[test]
fn seed_lvs_wrr_native_backend_loss_master_kill_and_preempt() {
    if !require_lab("seed_lvs_wrr_native_backend_loss_master_kill_and_preempt") {
        return;
    }
    let _one = serial();
    demo(LvsParams::new("wrr", "native"));
}

/// Test 3 with the master's link cut (its bridge port down: lb1's daemon keeps running, its
/// interface has no carrier), then test 5 when the link comes back: lb1 preempts.
#[test]
fn master_link_cut_then_restored() {
    if !require_lab("master_link_cut_then_restored") {
        return;
    }
    let _one = serial();
    let params = LvsParams::new("rr", "skb");
    let t = params.timers;
    let lab = started("e2c", params);
    let stream = lab.stream().unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();

    let t0 = Instant::now();
    lab.set_link(1, false).unwrap();
    let bound = t.master_down(99);
    let took = lab
        .wait_state(2, "MASTER", bound + MARGIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_client_follows(2, Duration::from_secs(5)).unwrap();
    let after = Instant::now();
    stream
        .wait_successes(after, 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "link cut: lb2 MASTER after {took:?} (Master_Down_Interval {bound:?}); window {:?}; \
         failed {}",
        p.longest_gap,
        p.failures_line()
    );
    assert_eq!(
        p.failures_later_than(t0, bound + MARGIN),
        0,
        "{}",
        p.failures_line()
    );
    assert_eq!(stream.phase(after, Instant::now()).failed(), 0);
    // As keepalived does, an instance whose interface lost its carrier goes to FAULT (and
    // holds no VIP).
    assert_eq!(lab.state(1).as_deref(), Some("FAULT"), "lb1 cut off");
    assert!(!lab.has_vip(1));

    // The link back: lb1 leaves FAULT for BACKUP, hears lb2's lower priority and preempts
    // one Master_Down_Interval later.
    let t1 = Instant::now();
    lab.set_link(1, true).unwrap();
    let bound = t.master_down(100);
    let took = lab
        .wait_state(1, "MASTER", bound + MARGIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_state(2, "BACKUP", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_client_follows(1, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = Instant::now();
    stream
        .wait_successes(after, 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t1, Instant::now());
    eprintln!(
        "link restored: lb1 MASTER again after {took:?} (Master_Down_Interval {bound:?}); \
         longest gap {:?}; failed {}",
        p.longest_gap,
        p.failures_line()
    );
    assert_eq!(stream.phase(after, Instant::now()).failed(), 0);
    assert_eq!(
        p.failures_later_than(t1, bound + MARGIN),
        0,
        "{}",
        p.failures_line()
    );
}

/// Test 5 with `nopreempt` (both LBs `state BACKUP`): the old master, restarted after a
/// SIGKILL, stays backup; nothing fails while it comes back.
#[test]
fn nopreempt_old_master_stays_backup() {
    if !require_lab("nopreempt_old_master_stays_backup") {
        return;
    }
    let _one = serial();
    let params = LvsParams {
        preempt: false,
        ..LvsParams::new("rr", "skb")
    };
    let t = params.timers;
    let mut lab = started("e2n", params);
    let stream = lab.stream().unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let t0 = Instant::now();
    lab.kill_lb(1).unwrap();
    lab.wait_state(
        2,
        "MASTER",
        t.master_down(99) + MARGIN + Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_client_follows(2, Duration::from_secs(5)).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "nopreempt, SIGKILL of lb1: window {:?}, failed {}",
        p.longest_gap,
        p.failures_line()
    );
    assert_eq!(p.failures_later_than(t0, t.master_down(99) + MARGIN), 0);

    let t1 = Instant::now();
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_state(1, "BACKUP", Duration::from_secs(5)).unwrap();
    // lb1 would have preempted one Master_Down_Interval after it heard lb2: watch for twice
    // that.
    holds_for(
        "nopreempt: lb2 stays master, lb1 backup",
        t.master_down(100) * 2,
        || lab.state(2).as_deref() == Some("MASTER") && lab.state(1).as_deref() == Some("BACKUP"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    let p = stream.phase(t1, Instant::now());
    eprintln!(
        "nopreempt, lb1 back: {} requests, failed {}",
        p.requests,
        p.failures_line()
    );
    assert_eq!(p.failed(), 0, "{}", p.failures_line());
    assert_eq!(p.by_backend.len(), 3, "{}", p.backends_line());
}

/// Test 4: with mh (and hash_port, so the connections spread over the real servers) on both
/// LBs, 100 keep-alive connections opened through lb1 keep working through lb2 after lb1 is
/// killed, and through lb1 again after it preempts: both LBs compute the same Maglev table,
/// and a packet of a flow an LB has never seen (the first ACK after a failover) is scheduled
/// like a new flow, so it reaches the real server that holds the connection.
#[test]
fn mh_long_lived_connections_survive_failover() {
    if !require_lab("mh_long_lived_connections_survive_failover") {
        return;
    }
    let _one = serial();
    let params = LvsParams {
        hash_port: true,
        ..LvsParams::new("mh", "skb")
    };
    let t = params.timers;
    let mut lab = started("e2m", params);
    let mut conns = LongLived::open(lab.client(), lab.target(), 100).unwrap();
    let spread = conns.by_backend();
    eprintln!("100 connections through lb1: {spread:?}");
    assert_eq!(spread.len(), 3, "{spread:?}");
    let r = conns.round();
    assert_eq!((r.ok, r.resets), (100, 0), "before the failover: {r:?}");

    // The short-request stream runs meanwhile: the failover is measured as in the others.
    let stream = lab.stream().unwrap();
    stream
        .wait_successes(Instant::now(), 100, Duration::from_secs(30))
        .unwrap();
    let t0 = Instant::now();
    lab.kill_lb(1).unwrap();
    lab.wait_state(
        2,
        "MASTER",
        t.master_down(99) + MARGIN + Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_client_follows(2, Duration::from_secs(5)).unwrap();
    stream
        .wait_successes(Instant::now(), 100, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    let r = conns.round();
    eprintln!(
        "after lb1's SIGKILL (window {:?}, {} short requests failed): long-lived {r:?}",
        p.longest_gap,
        p.failures_line()
    );
    assert_eq!(
        r,
        lb_tests::e2e_lab::RoundReport {
            ok: 100,
            ..Default::default()
        },
        "after the failover to lb2"
    );

    // lb1 back: it preempts, and its fresh flow table sends every connection where lb2 did.
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_state(
        1,
        "MASTER",
        t.master_down(100) + MARGIN + Duration::from_secs(3),
    )
    .unwrap();
    lab.wait_state(2, "BACKUP", Duration::from_secs(5)).unwrap();
    lab.wait_client_follows(1, Duration::from_secs(5)).unwrap();
    let r = conns.round();
    eprintln!("after lb1 preempted: long-lived {r:?}");
    assert_eq!(r.ok, 100, "after the return to lb1: {r:?}");
    assert_eq!(r.resets, 0);
}
