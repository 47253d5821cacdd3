//! Day-to-day operation on the seed's LVS pair (`lb_tests::e2e_lab`): what an operator does to
//! a running load balancer, and what must not happen to the traffic meanwhile.
//!
//! - Every real server of a service drained (weights 0 by a reload): the established
//!   connections keep their servers, as IPVS keeps them; only new ones find no server.
//! - A service below its `quorum` without a `sorry_server` keeps serving with the servers
//!   that are alive, as keepalived does (its quorum only drives `quorum_down` and tracking).
//!
//! One at a time (a lock): each runs a pair of daemons and three nginx on a small machine.
use std::{sync::Mutex, time::Duration};

use lb_tests::{
    e2e_lab::{http_get, lvs_toml, status_json, LongLived, LvsLab, LvsParams, HTTP},
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

/// The HTTP service's backends on LB `i` as (address, effective weight).
fn effective_weights(lab: &LvsLab, i: usize) -> Vec<(String, u64)> {
    let Ok(s) = status_json(lab.lb(i)) else {
        return Vec::new();
    };
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["port"] == HTTP)
        .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["addr"].as_str().unwrap_or("").to_string(),
                b["effective_weight"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn wait(lab: &LvsLab, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    lb_tests::e2e_lab::wait(what, timeout, f).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
}

/// Draining every real server of a service (weight 0 by a reload) stops new flows only: the
/// established connections go on to their servers. Before, the service lost its quorum and
/// went inactive, and its connections fell to the master's stack, which reset them.
#[test]
fn draining_every_real_server_keeps_established_connections() {
    let test = "draining_every_real_server_keeps_established_connections";
    if !require_lab(test) {
        return;
    }
    let _one = serial();
    let params = LvsParams::new("rr", "skb");
    let lab = started("opd", params.clone());
    let mut conns = LongLived::open(lab.client(), lab.target(), 12).unwrap();
    assert_eq!(conns.round().ok, 12);
    let drained = lvs_toml(&params, 1).replace("weight = 1\n", "weight = 0\n");
    lab.set_config(1, &drained).unwrap();
    lab.reload_lb(1).unwrap();
    wait(
        &lab,
        "lb1 to drain every server",
        Duration::from_secs(5),
        || {
            let w = effective_weights(&lab, 1);
            w.len() == 3 && w.iter().all(|(_, w)| *w == 0)
        },
    );
    for _ in 0..3 {
        let r = conns.round();
        assert_eq!(
            (r.ok, r.resets, r.moved),
            (12, 0, 0),
            "{r:?}\n{}",
            lab.logs()
        );
    }
    // A new connection finds no server.
    let target = lab.target();
    let fresh = lab
        .client()
        .run_in(|| http_get(target, Duration::from_secs(1)))
        .unwrap();
    assert!(fresh.is_err(), "a drained service took a new connection");
    // Weights back: new connections are served again, and the old ones never noticed.
    lab.set_config(1, &lvs_toml(&params, 1)).unwrap();
    lab.reload_lb(1).unwrap();
    wait(
        &lab,
        "lb1 to serve new connections",
        Duration::from_secs(5),
        || {
            lab.client()
                .run_in(|| http_get(target, Duration::from_secs(1)))
                .is_ok_and(|r| r.is_ok())
        },
    );
    assert_eq!(conns.round().ok, 12);
    lab.teardown().unwrap();
}

/// Below its quorum, without a sorry server, a service keeps serving with what is alive
/// (keepalived's behaviour; before, the whole service stopped).
#[test]
fn quorum_lost_without_a_sorry_server_keeps_serving() {
    let test = "quorum_lost_without_a_sorry_server_keeps_serving";
    if !require_lab(test) {
        return;
    }
    let _one = serial();
    let params = LvsParams::new("rr", "skb");
    let mut lab = LvsLab::new(&unique_prefix("opq"), params.clone()).unwrap();
    let text =
        lvs_toml(&params, 1).replacen("lb_kind = \"DR\"\n", "lb_kind = \"DR\"\nquorum = 3\n", 1);
    assert!(text.contains("quorum = 3\n"));
    lab.set_config(1, &text).unwrap();
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    let mut conns = LongLived::open(lab.client(), lab.target(), 6).unwrap();
    lab.stop_nginx(1).unwrap();
    lab.wait_health(1, 1, "down", Duration::from_secs(10))
        .unwrap();
    let target = lab.target();
    let served = lab
        .client()
        .run_in(|| {
            (0..12)
                .filter(|_| http_get(target, Duration::from_secs(1)).is_ok())
                .count()
        })
        .unwrap();
    assert_eq!(served, 12, "requests served below quorum\n{}", lab.logs());
    // The connections to the servers alive go on.
    let r = conns.round();
    let to_dead = conns.by_backend().get("rs1").copied().unwrap_or(0);
    assert_eq!(r.ok, 6 - to_dead, "{r:?}\n{}", lab.logs());
    lab.teardown().unwrap();
}
