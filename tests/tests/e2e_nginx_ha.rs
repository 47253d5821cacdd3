//! End to end, the seed's "Nginx + Keepalived" deployment under a steady stream of HTTP
//! requests to the VIP (`lb_tests::e2e_lab`): two nginx nodes running `lb-daemon` for VRRP
//! only, `state BACKUP` and priority 100 on both, `nopreempt`, and a `vrrp_script` that checks
//! the node's nginx the way the seed's `check_nginx.sh` does.
//!
//! * nginx stopped on the master: the VIP moves; requests fail only inside the window.
//! * nginx back: `nopreempt`, the VIP stays.
//! * The master's link cut, then restored; the master's daemon killed (SIGKILL), then
//!   restarted: requests fail only inside the failover windows; nobody preempts.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    e2e_lab::{holds_for, nginx_demo, NginxHaLab, Summary, Timers, MARGIN, PHASE_REQUESTS},
    netns::{require_lab, unique_prefix},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The lab's demo: nginx stopped on the master moves the VIP, nginx back does not take it.
#[test]
fn seed_nginx_ha_nginx_stopped_moves_the_vip_nopreempt_keeps_it() {
    if !require_lab("seed_nginx_ha_nginx_stopped_moves_the_vip_nopreempt_keeps_it") {
        return;
    }
    let _one = serial();
    let mut s = Summary::default();
    let r = nginx_demo(Timers::lab(), PHASE_REQUESTS, &mut s);
    s.print("nginx HA demo");
    r.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(s.failed.is_empty(), "{:?}", s.failed);
}

#[test]
fn nginx_ha_link_cut_and_daemon_killed() {
    if !require_lab("nginx_ha_link_cut_and_daemon_killed") {
        return;
    }
    let _one = serial();
    let t = Timers::lab();
    let mdi = t.master_down(100);
    let mut lab = NginxHaLab::new(&unique_prefix("e2h"), t).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    let stream = lab.stream().unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    assert!(stream
        .phase(Instant::now() - Duration::from_secs(1), Instant::now())
        .by_backend
        .keys()
        .eq(["n1"]));

    // n1's link cut: its instance faults (no carrier), n2 takes over after its
    // Master_Down_Interval.
    let t0 = Instant::now();
    lab.set_link(1, false).unwrap();
    let took = lab
        .wait_state(2, "MASTER", mdi + MARGIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = Instant::now();
    stream
        .wait_successes(after, 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "n1's link cut: n2 MASTER after {took:?} (Master_Down_Interval {mdi:?}); window {:?}; \
         failed {}",
        p.longest_gap,
        p.failures_line()
    );
    assert_eq!(
        p.failures_later_than(t0, mdi + MARGIN),
        0,
        "{}",
        p.failures_line()
    );
    assert!(stream
        .phase(after, Instant::now())
        .by_backend
        .keys()
        .eq(["n2"]));

    // The link back: n1 returns as backup and, nopreempt and equal priorities, stays so.
    let t1 = Instant::now();
    lab.set_link(1, true).unwrap();
    lab.wait_state(1, "BACKUP", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    holds_for("n2 keeps the VIP after the heal", mdi * 2, || {
        lab.holder() == Some(2)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    let p = stream.phase(t1, Instant::now());
    eprintln!(
        "n1's link back: n1 BACKUP, n2 keeps the VIP; {} requests, failed {}",
        p.requests,
        p.failures_line()
    );
    assert_eq!(p.failed(), 0, "{}", p.failures_line());

    // n2's daemon killed: its nginx still answers on the VIP it left configured until n1
    // takes over (and announces itself with gratuitous ARP).
    let t2 = Instant::now();
    lab.kill_daemon(2).unwrap();
    let took = lab
        .wait_state(1, "MASTER", mdi + MARGIN + Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let after = Instant::now();
    stream
        .wait_successes(after, 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t2 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "n2's daemon killed: n1 MASTER after {took:?}; longest gap {:?}; failed {}; answered \
         by {}",
        p.longest_gap,
        p.failures_line(),
        p.backends_line()
    );
    assert_eq!(
        p.failures_later_than(t2, mdi + MARGIN),
        0,
        "{}",
        p.failures_line()
    );
    let tail = stream.phase(after + Duration::from_millis(500), Instant::now());
    assert!(
        tail.by_backend.keys().eq(["n1"]),
        "after the takeover: {}",
        tail.backends_line()
    );

    // n2's daemon back: it removes the VIP its killed run left, and stays backup.
    let t3 = Instant::now();
    lab.start_daemon(2).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_state(2, "BACKUP", Duration::from_secs(5)).unwrap();
    holds_for("n1 keeps the VIP after n2's restart", mdi * 2, || {
        lab.holder() == Some(1)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    let p = stream.phase(t3, Instant::now());
    eprintln!(
        "n2's daemon back: BACKUP, n1 keeps the VIP; failed {}",
        p.failures_line()
    );
    assert_eq!(p.failed(), 0, "{}", p.failures_line());
}
