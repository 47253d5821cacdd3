//! `cargo xtask bench daemon`'s hitless entries, on the seed's LVS pair (`e2e_lab`) under the
//! lab's traffic (200 new connections a second):
//!
//! - `crash_failed_requests`: the master's daemon SIGKILLed and not restarted, its dataplane
//!   pinned: requests that fail from the kill until the peer has taken over and 200 more have
//!   succeeded. Baseline: the same without pins (the program went with the daemon, the
//!   node's own stack refused the clients until the peer took over).
//! - `restart_failed_requests`: SIGKILL and a restart at once, pinned: requests that fail,
//!   and the peer's VRRP transitions (printed; both must be 0).
//! - `restart_to_adopted_ms`: from exec of `lb-daemon run` to the program running over the
//!   adopted maps (the log line "XDP program attached" of a run that took the dataplane
//!   over), median of five `stop --keep` + start, with its parts from the daemon's log.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::{
    daemon_bench::log_time_us,
    e2e_lab::{HttpStream, LvsLab, LvsParams, MARGIN},
    netns::unique_prefix,
    report::{Entry, Target},
};

fn progress(msg: &str) {
    eprintln!("bench daemon: {msg}");
}

fn pinned(pins: bool) -> LvsParams {
    LvsParams {
        pins,
        ..LvsParams::new("rr", "skb")
    }
}

fn transitions(lab: &LvsLab, i: usize) -> Result<u64> {
    crate::e2e_lab::vrrp_transitions(lab.lb(i))
}

/// Failed requests from a SIGKILL of lb1's daemon until lb2 serves (and 200 more requests
/// succeeded), with or without pins.
fn crash(pins: bool) -> Result<(usize, usize, Duration)> {
    let params = pinned(pins);
    let t = params.timers;
    let mut lab = LvsLab::new(&unique_prefix("bhc"), params)?;
    lab.start_pair()?;
    let stream = HttpStream::steady(lab.client(), lab.target())?;
    stream.wait_successes(Instant::now(), 200, Duration::from_secs(30))?;
    let t0 = Instant::now();
    lab.kill_lb(1)?;
    let window = lab.wait_state(
        2,
        "MASTER",
        t.master_down(99) + MARGIN + Duration::from_secs(3),
    )?;
    lab.wait_client_follows(2, Duration::from_secs(5))?;
    stream.wait_successes(Instant::now(), 200, Duration::from_secs(30))?;
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    progress(&format!(
        "crash, {}: lb2 master after {window:?}; {} requests, failed {}",
        if pins { "pinned" } else { "not pinned" },
        p.requests,
        p.failures_line()
    ));
    Ok((p.failed(), p.requests, window))
}

pub fn crash_failed_requests() -> Result<Entry> {
    let (base, _, _) = crash(false)?;
    let (failed, requests, _) = crash(true)?;
    ensure!(requests > 500, "only {requests} requests ran");
    Ok(Entry {
        name: "crash_failed_requests",
        value: failed as f64,
        unit: "requests",
        baseline: Some(base as f64),
        target: Target::ValueEquals(0.0),
    })
}

/// The restart entries, on one lab: SIGKILL and a restart at once (failed requests, the
/// peer's transitions), then five `stop --keep` + start (exec to adopted).
pub fn restart() -> Result<(Entry, Entry)> {
    let params = pinned(true);
    let t = params.timers;
    let mut lab = LvsLab::new(&unique_prefix("bhr"), params)?;
    lab.start_pair()?;
    let stream = HttpStream::steady(lab.client(), lab.target())?;
    stream.wait_successes(Instant::now(), 200, Duration::from_secs(30))?;
    let peer = transitions(&lab, 2)?;
    let t0 = Instant::now();
    lab.kill_lb(1)?;
    lab.start_lb(1)?;
    lab.wait_state(1, "MASTER", Duration::from_secs(2))?;
    std::thread::sleep(t.master_down(99) + MARGIN);
    stream.wait_successes(Instant::now(), 200, Duration::from_secs(30))?;
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    let moved = transitions(&lab, 2)? - peer;
    progress(&format!(
        "restart: {} requests, failed {}; the peer's transitions: {moved}",
        p.requests,
        p.failures_line()
    ));
    ensure!(moved == 0, "the peer made {moved} VRRP transitions");
    let failed = Entry {
        name: "restart_failed_requests",
        value: p.failed() as f64,
        unit: "requests",
        baseline: None,
        target: Target::ValueEquals(0.0),
    };
    let mut values = Vec::new();
    for round in 0..5 {
        lab.stop_lb_with(1, Some("--keep"))?;
        let exec = crate::daemon_bench::now_us();
        lab.start_lb(1)?;
        let log = lab.lb_log(1);
        let line = log
            .lines()
            .find(|l| l.contains("took over the previous run's dataplane"))
            .context("no take-over line")?
            .to_string();
        let attached = log
            .lines()
            .find(|l| l.contains("XDP program attached"))
            .context("no attach line")?;
        let at = log_time_us(attached).context("attach line's time")?;
        let ms = (at - exec) as f64 / 1000.0;
        let parts: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.contains("_ms="))
            .collect();
        progress(&format!(
            "restart_to_adopted_ms #{round}: {ms:.1} ms ({})",
            parts.join(" ")
        ));
        values.push(ms);
    }
    values.sort_by(f64::total_cmp);
    let adopted = Entry {
        name: "restart_to_adopted_ms",
        value: values[values.len() / 2],
        unit: "ms",
        baseline: None,
        target: Target::ValueAtMost(200.0),
    };
    drop(stream);
    Ok((failed, adopted))
}
