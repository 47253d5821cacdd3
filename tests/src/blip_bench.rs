//! `lb-bench daemon`, entry `check_blip_resets`: what a short health-check outage costs the
//! connections of a real server that never stopped serving (issue 15, defect 1).
//!
//! The lab of the other `daemon` entries ([`DrLab`]): a client, the LB (`lb-daemon run`, XDP
//! in skb mode, `rr`) and three nginx real servers, each with keepalived's `TCP_CHECK` at
//! the settings (`delay_loop = 1`, `connect_timeout = 1`, `retry = 1`,
//! `delay_before_retry = 1`). Under the lab's traffic (200 new connections a second) the
//! client holds 10 keep-alive connections and sends a request on each every 200 ms. rs2's
//! replies to the LB then vanish (a blackhole route to the LB's address in rs2's namespace:
//! the checks time out, the client's traffic is untouched) for 4 s, or until the daemon has
//! declared rs2 down and 1 s more, whichever is longer, so that every trial contains a down
//! verdict. Then the route goes, the bench waits for rs2 to be up again and runs one more
//! round.
//!
//! Value: the keep-alive requests that ended in a reset over the whole trial, with the
//! default configuration (a down real server keeps its established flows). Baseline: the
//! same trial with `expire_nodest_conn = true` on the virtual server, the behaviour before
//! the fix (a down verdict reschedules the server's flows, and the other servers reset
//! them), measured in the same run. Target: 0.
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    e2e_lab::{HttpStream, LongLived, RoundReport},
    lab::{counts, lab_config, reload, start_daemon},
    netns::{unique_prefix, wait_until, DrLab, Proc, LB_V4, VIP_V4},
    report::{Entry, Target},
};

const CONNECTIONS: usize = 10;
const OUTAGE: Duration = Duration::from_secs(4);
const ROUND_EVERY: Duration = Duration::from_millis(200);

fn config(lab: &DrLab, expire: bool) -> String {
    let check =
        "  TCP_CHECK = { connect_timeout = 1, retry = 1, delay_before_retry = 1, warmup = 0 }\n";
    lab_config(lab, "skb", "rr", &[1, 1, 1])
        .replace(
            "lb_kind = \"DR\"\n",
            &format!("lb_kind = \"DR\"\ndelay_loop = 1\nexpire_nodest_conn = {expire}\n"),
        )
        .replace("  weight = 1\n", &format!("  weight = 1\n{check}"))
}

/// The sum of the rounds' outcomes.
fn add(total: &mut RoundReport, r: &RoundReport) {
    total.ok += r.ok;
    total.moved += r.moved;
    total.resets += r.resets;
    for (k, v) in &r.failures {
        *total.failures.entry(k.clone()).or_insert(0) += v;
    }
}

/// One outage of rs2's checks under traffic; the keep-alive requests' outcomes.
fn trial(lab: &DrLab, daemon: &Proc, expire: bool) -> Result<RoundReport> {
    let target = SocketAddr::new(VIP_V4.into(), 80);
    let stream = HttpStream::steady(lab.client(), target)?;
    let mut conns = LongLived::open(lab.client(), target, CONNECTIONS)?;
    let on_rs2 = conns.by_backend().get("rs2").copied().unwrap_or(0);
    ensure!(
        on_rs2 > 0,
        "no keep-alive connection on rs2: {:?}",
        conns.by_backend()
    );
    let down = "backend=192.0.2.12:80 up=false";
    let up = "backend=192.0.2.12:80 up=true";
    let (downs, ups) = {
        let log = daemon.read_stderr();
        (log.matches(down).count(), log.matches(up).count())
    };
    let blackhole = format!("{LB_V4}/32");
    let mut total = RoundReport::default();
    let start = Instant::now();
    lab.server(2)
        .ip(&["route", "add", "blackhole", &blackhole])?;
    let mut detected: Option<Instant> = None;
    let outcome = (|| -> Result<()> {
        loop {
            let now = Instant::now();
            if detected.is_none() && daemon.read_stderr().matches(down).count() > downs {
                detected = Some(now);
            }
            let over = match detected {
                Some(d) => now >= start + OUTAGE && now >= d + Duration::from_secs(1),
                None if now > start + Duration::from_secs(15) => {
                    bail!("rs2 not declared down within 15 s")
                }
                None => false,
            };
            if over {
                return Ok(());
            }
            add(&mut total, &conns.round());
            std::thread::sleep(ROUND_EVERY);
        }
    })();
    lab.server(2)
        .ip(&["route", "del", "blackhole", &blackhole])?;
    outcome?;
    wait_until("rs2 up again", Duration::from_secs(15), || {
        daemon.read_stderr().matches(up).count() > ups
    })?;
    add(&mut total, &conns.round());
    let samples = stream.stop();
    let failed = samples.iter().filter(|s| s.outcome.is_err()).count();
    eprintln!(
        "lb-bench: check_blip_resets, expire_nodest_conn = {expire}: {on_rs2} of {CONNECTIONS} \
         keep-alive connections on rs2, rs2 down after {:.2} s, keep-alive requests {total:?}; \
         lab traffic {} requests, {failed} failed",
        detected.map_or(0.0, |d| (d - start).as_secs_f64()),
        samples.len()
    );
    Ok(total)
}

/// The `check_blip_resets` entry (the caller checked that we are root).
pub fn check_blip_resets() -> Result<Entry> {
    let lab = DrLab::new(&unique_prefix("bb"), 3).context("lab")?;
    lab.add_vip_to_lb()?;
    let (daemon, cfg) = start_daemon(&lab, &config(&lab, false), "skb")?;
    wait_until("all three servers serving", Duration::from_secs(10), || {
        lab.curl_batch(&VIP_V4.to_string(), 9)
            .is_ok_and(|b| counts(&b).len() == 3)
    })?;
    let fixed = trial(&lab, &daemon, false)?;
    reload(&daemon, &cfg, &config(&lab, true))?;
    let before = trial(&lab, &daemon, true)?;
    Ok(Entry {
        name: "check_blip_resets",
        value: fixed.resets as f64,
        unit: "resets",
        baseline: Some(before.resets as f64),
        target: Target::ValueEquals(0.0),
    })
}
