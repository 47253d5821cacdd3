//! `lb-bench vrrp`: failover time of a pair of our daemons against a pair of keepalived 2.2.7,
//! measured in the same run, on the same topology ([`crate::vrrp_lab`]), with the same
//! configuration (one [`VrrpParams`]: priorities 150/100, the same VRID, interval,
//! authentication, VIP and `state MASTER` on the higher node).
//!
//! | entry                                      | failure of the master                   | bound              |
//! |--------------------------------------------|-----------------------------------------|--------------------|
//! | `failover_hard_v2_1s_vs_keepalived`        | VRRPv2, `advert_int 1`: crash           | Master_Down_Interval |
//! | `failover_hard_v3_10ms_vs_keepalived`      | VRRPv3, `advert_int 0.01`: crash        | Master_Down_Interval |
//! | `failover_graceful_v3_10ms_vs_keepalived`  | VRRPv3, `advert_int 0.01`: SIGTERM      | Skew_Time          |
//!
//! **Metric**: the longest interval between two consecutive echo replies in a 1 ms ICMP echo
//! stream from the client to the VIP ([`crate::vrrp_lab::Prober`]), in ms: from the last reply
//! of the old master to the first reply of the new one, so it includes detection, the new
//! master taking the VIP, and its gratuitous ARP moving the client. Each trial's gap is
//! counted in whole probe intervals ([`PROBE`], rounded to the nearest): that is the
//! stream's resolution, and what lies below it is the client's own scheduling noise (tens of
//! microseconds either way), which would otherwise decide `ratio <= 1.0` by a coin toss
//! whenever both pairs take the same number of probe intervals. `value` is the median over
//! the trials of our pair, `baseline` that of the keepalived pair; `ratio` is the median of
//! the per-trial ratios, ours / keepalived's trial with the same index (which met the same
//! probe grid, see **Phase**), target `ratio <= 1.0`. The progress lines show the raw gaps
//! and their means too; `bound` is the protocol's figure for the backup (priority 100) in
//! ms: Master_Down_Interval = 3 x interval + Skew_Time for a hard failure, Skew_Time =
//! (256 - 100) / 256 x interval (v2: of a second) for a graceful one.
//!
//! **Crash** = the master's bridge port set down (netlink, tens of microseconds) and right
//! after, SIGKILL of the master (for keepalived, of its whole process group: parent and VRRP
//! child at once); see [`VrrpLab::crash`] for why in that order. A SIGKILL alone is no failure for the client: the killed daemon leaves the
//! VIP on its interface, so that node's kernel keeps answering the probes until the new
//! master's gratuitous ARP moves the client, and the stream shows no gap at all (a few ms of
//! reordering; see `tests/tests/vrrp_keepalived.rs`, which prints it). A dead machine answers
//! nothing, which the port going down reproduces. **Graceful** = SIGTERM: priority-0 advert,
//! VIP removed.
//!
//! **Trial**: both pairs start with node 0 (priority 150) holding the VIP and the client's
//! neighbour entry on node 0. The probe stream starts. When one of the master's adverts
//! reaches the client (so the backup's Master_Down timer starts at a known time and the
//! figures do not spread over a whole interval), the probe grid restarts 2 ms + the trial's
//! phase after it, and the master fails half an interval after a probe of that grid. The
//! trial ends once node 1 holds the VIP and 50 more replies came. Node 0 is then started
//! again (port up first) and the trial waits for it to hold the VIP again and for the client
//! to follow. Trials of the two pairs alternate (ours, keepalived, ours...), so drift in load
//! hits both; 15 per pair (a 1 s trial takes about 8 s, dominated by Master_Down_Interval and
//! keepalived's restart). `LB_BENCH_VRRP_TRIALS=N` overrides the count;
//! `LB_BENCH_VRRP_ONLY=text` runs only the entries whose name contains `text`.
//!
//! **Phase**: a gap is a whole number of probe intervals, and which one depends on where the
//! takeover falls on the probe grid. With a grid of random phase, two pairs that took over
//! within a tenth of a millisecond of each other still scored 3610 or 3611 ms per trial by
//! chance, and their medians over 9 trials differed by that chance, in either direction from
//! one run to the next. So trial i of both pairs uses the same phase ([`phase`]), spread over
//! the interval from one trial to the next: each pair of trials meets the same grid, and a
//! pair that takes over earlier never scores a longer gap for it. The two trials of one
//! phase are compared with each other (their ratio), and the median is taken over those
//! ratios: the medians of the two pairs' own gaps still flip between neighbouring whole
//! intervals whenever about half the phases land on each (measured: 35 vs 34 ms in one run,
//! 34 vs 35 in the next, with equal takeover times on the wire), where the per-phase ratios
//! are mostly 1.0 and their median moves only when one pair is longer in most phases. What
//! this cannot see is a difference well below one probe interval; the mean raw gaps in the
//! progress lines show those.
//!
//! Each trial also records, as the client sees them: the protocol-level figure (first advert
//! of node 1 minus last advert of node 0 (hard) or minus node 0's priority-0 advert
//! (graceful)), the new master's first gratuitous ARP after its first advert (its own
//! takeover work: the address, the announcement), and the first echo reply after that ARP
//! (the probes' phase, and the client's turn-around). Progress lines on stderr show them,
//! with their medians per pair.
use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    netns::unique_prefix,
    report::median,
    vrrp_lab::{find_program, Peer, VrrpLab, VrrpParams},
};

/// How the master fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// SIGKILL (process group for keepalived) and the port down.
    Crash,
    /// SIGTERM.
    Graceful,
}

/// One benchmark entry.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub params: VrrpParams,
    pub failure: Failure,
    pub trials: usize,
}

/// The three entries of `lb-bench vrrp`.
pub fn cases() -> Vec<Case> {
    let trials = |default: usize| {
        std::env::var("LB_BENCH_VRRP_TRIALS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(default)
    };
    vec![
        Case {
            name: "failover_hard_v2_1s_vs_keepalived",
            params: VrrpParams::v2_seed(),
            failure: Failure::Crash,
            trials: trials(15),
        },
        Case {
            name: "failover_hard_v3_10ms_vs_keepalived",
            params: VrrpParams::v3(1),
            failure: Failure::Crash,
            trials: trials(15),
        },
        Case {
            name: "failover_graceful_v3_10ms_vs_keepalived",
            params: VrrpParams::v3(1),
            failure: Failure::Graceful,
            trials: trials(15),
        },
    ]
}

impl Case {
    /// The protocol bound for the backup (node 1), in ms.
    pub fn bound_ms(&self) -> f64 {
        let d = match self.failure {
            Failure::Crash => self.params.master_down_interval(1),
            Failure::Graceful => self.params.skew(1),
        };
        ms(d)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The echo stream's period: the resolution of every gap.
pub const PROBE: Duration = Duration::from_millis(1);

/// The probe grid of a trial restarts this long after the advert of node 0 that the trial
/// waits for (room for the sender to take the new grid: it wakes once per interval)...
const GRID_AFTER: Duration = Duration::from_millis(2);
/// ... shifted by the trial's phase, and the failure comes this long after a probe: mid-way
/// between two, so that whether the last reply before it arrives is never a race.
const FAIL_AFTER_PROBE: Duration = Duration::from_micros(500);
/// A failure later than this after its planned instant (the bench thread was not scheduled
/// in time) is a disturbed trial, run again: it must still come before the next probe
/// (planned half an interval after one), less that probe's round trip.
const MAX_LATE: Duration = Duration::from_micros(400);

/// The probe phase of trial `index`, in [0, 1) probe intervals: the golden-ratio sequence,
/// which covers the interval evenly for any number of trials. Both pairs' trial `index` get
/// the same phase, so the probes' phase, which moves a gap by up to one interval, is no
/// longer a coin toss between the pairs: each pair of trials meets the same grid, and a
/// pair that takes over earlier never shows a longer gap for it.
pub fn phase(index: usize) -> Duration {
    let golden = 0.618_033_988_749_895_f64;
    PROBE.mul_f64((index as f64 * golden).fract())
}

/// Sleeps until `at`, then spins the last stretch (a sleep alone wakes up to a few hundred
/// microseconds late here).
fn sleep_until(at: Instant) {
    let spin = Duration::from_micros(300);
    let now = Instant::now();
    if at > now + spin {
        std::thread::sleep(at - now - spin);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// A gap in whole probe intervals, as ms.
fn in_probes(gap_ms: f64) -> f64 {
    let probe = ms(PROBE);
    (gap_ms / probe).round() * probe
}

/// The start of the error of a trial whose pair was disturbed before the failure: the trial
/// is run again (at most [`RETRIES`] times per trial).
const UNSTABLE: &str = "disturbed before the failure";
const RETRIES: usize = 3;

/// What one trial measured.
#[derive(Debug, Clone, Copy)]
pub struct Trial {
    /// Longest gap in the echo stream, ms.
    pub gap_ms: f64,
    /// First advert of the new master minus the last (or priority-0) advert of the old one, ms.
    pub wire_ms: f64,
    /// The new master's first gratuitous ARP minus its first advert, ms (negative: before).
    pub garp_ms: f64,
    /// The first echo reply after the gap minus that gratuitous ARP, ms.
    pub resume_ms: f64,
    pub lost: u64,
}

/// A pair ready for trials: node 0 holds the VIP and the client follows it.
pub struct Pair {
    lab: VrrpLab,
    watch: crate::vrrp_lab::AdvertWatch,
    src: [std::net::IpAddr; 2],
    /// Node 0 was failed and not yet restored.
    failed: bool,
}

impl Pair {
    pub fn new(case: &Case, peer: Peer) -> Result<Self> {
        let mut lab = VrrpLab::new(&unique_prefix("vb"), &case.params, [peer, peer])?;
        let watch = lab.advert_watch()?;
        let src = [lab.advert_source(0)?, lab.advert_source(1)?];
        lab.start_both()?;
        let p = &case.params;
        lab.wait_holder(
            0,
            p.master_down_interval(0) + p.advert_int() + Duration::from_secs(3),
        )?;
        lab.wait_client_follows(0, Duration::from_secs(5))?;
        Ok(Pair {
            lab,
            watch,
            src,
            failed: false,
        })
    }

    /// One failure of node 0 and its return to the initial roles (also when the
    /// measurement failed).
    /// Trial `index` (from 0) of the pair: the same index gives both pairs the same probe
    /// phase ([`phase`]).
    pub fn trial(&mut self, case: &Case, index: usize) -> Result<Trial> {
        let measured = self.fail_and_measure(case, index);
        let restored = self.restore(case);
        let trial = measured?;
        restored.context("back to the initial roles")?;
        Ok(trial)
    }

    fn fail_and_measure(&mut self, case: &Case, index: usize) -> Result<Trial> {
        let p = &case.params;
        let lab = &mut self.lab;
        let probe = lab.prober(PROBE)?;
        probe.wait_replies_after(Instant::now(), 50, Duration::from_secs(3))?;
        let src = self.src;
        let advert = self.watch.wait_for(
            "node 0's advert",
            Instant::now(),
            p.advert_int() * 3 + Duration::from_millis(100),
            |a| a.src == src[0] && a.priority > 0,
        )?;
        // The probe grid and the failure, both at fixed offsets from that advert.
        let grid = advert.at + GRID_AFTER + phase(index);
        probe.align(grid);
        let planned = grid + FAIL_AFTER_PROBE;
        sleep_until(planned);
        self.failed = true;
        let t0 = match case.failure {
            Failure::Crash => lab.crash(0)?,
            Failure::Graceful => lab.terminate(0)?,
        };
        let late = t0.saturating_duration_since(planned);
        if late > MAX_LATE {
            bail!(
                "{UNSTABLE}: the failure came {:.2} ms after its planned instant",
                ms(late)
            );
        }
        lab.wait_holder(1, p.master_down_interval(1) + Duration::from_secs(3))?;
        let took_over = Instant::now();
        probe
            .wait_replies_after(took_over, 50, Duration::from_secs(3))
            .context("the echo stream did not resume after the failover")?;
        let report = probe.stop();
        let gap = report
            .longest_gap()
            .context("no two echo replies in the trial")?;
        // The longest gap is the failover's: it ends after the failure (a graceful stop opens
        // it a little after the signal, when the old master removes the VIP).
        if !(gap.to > t0 && gap.from + Duration::from_millis(100) > t0) {
            let offset = if gap.from >= t0 {
                ms(gap.from - t0)
            } else {
                -ms(t0 - gap.from)
            };
            bail!(
                "{UNSTABLE}: the longest gap ({:.1} ms, opening {offset:.1} ms after the failure) \
                 is not the failover's",
                ms(gap.len())
            );
        }
        let old = match case.failure {
            Failure::Crash => self.watch.last_from_before(src[0], t0),
            Failure::Graceful => Some(self.watch.wait_for(
                "node 0's priority-0 advert",
                t0,
                Duration::from_secs(2),
                |a| a.src == src[0] && a.priority == 0,
            )?),
        }
        .context("no advert of node 0 before the failure")?;
        let new = self
            .watch
            .first_from_after(src[1], old.at)
            .context("no advert of node 1 after the failure")?;
        let vip = p.vip;
        let garp = self
            .watch
            .first_garp_after(vip, old.at)
            .context("no gratuitous ARP for the VIP after the failure")?;
        let signed = |a: Instant, b: Instant| {
            if a >= b {
                ms(a - b)
            } else {
                -ms(b - a)
            }
        };
        Ok(Trial {
            gap_ms: ms(gap.len()),
            wire_ms: ms(new.at - old.at),
            garp_ms: signed(garp, new.at),
            resume_ms: signed(gap.to, garp),
            lost: report.lost(),
        })
    }

    /// Node 0 running again (port up, new run), holding the VIP, the client following it.
    fn restore(&mut self, case: &Case) -> Result<()> {
        let p = &case.params;
        let lab = &mut self.lab;
        if self.failed {
            match case.failure {
                Failure::Crash => lab.revive(0)?,
                Failure::Graceful => {
                    lab.wait_stopped(0)?;
                }
            }
            lab.start(0)?;
            self.failed = false;
        }
        lab.wait_holder(
            0,
            p.master_down_interval(0) + p.advert_int() + Duration::from_secs(3),
        )?;
        lab.wait_client_follows(0, Duration::from_secs(5))
    }
}

/// One result line: ours against keepalived.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: &'static str,
    /// Median of our trials, ms.
    pub value: f64,
    /// Median of keepalived's trials, ms.
    pub baseline: f64,
    /// The protocol bound, ms.
    pub bound: f64,
    pub target_ratio: f64,
    pub ours: Vec<Trial>,
    pub keepalived: Vec<Trial>,
}

impl Entry {
    /// The median over the trial index of ours / keepalived's gap, in whole probe intervals
    /// (module docs, **Phase**); `value / baseline` when there are no trials.
    pub fn ratio(&self) -> f64 {
        let paired: Vec<f64> = self
            .ours
            .iter()
            .zip(&self.keepalived)
            .map(|(o, k)| in_probes(o.gap_ms) / in_probes(k.gap_ms))
            .collect();
        if paired.is_empty() {
            self.value / self.baseline
        } else {
            median(&paired)
        }
    }

    pub fn pass(&self) -> bool {
        self.ratio() <= self.target_ratio
    }

    fn target(&self) -> String {
        format!("ratio <= {:?}", self.target_ratio)
    }

    /// The `lb-bench --json` line, with the bound.
    pub fn json(&self) -> String {
        format!(
            r#"{{"name":"{}","value":{:.4},"unit":"ms","baseline":{:.4},"ratio":{:.4},"target":"{}","pass":{},"bound":{:.4}}}"#,
            self.name,
            self.value,
            self.baseline,
            self.ratio(),
            self.target(),
            self.pass(),
            self.bound
        )
    }

    /// The table row.
    pub fn row(&self) -> String {
        format!(
            "{:<40} {:>9.2} {:<4} {:>9.2} {:>7.3} {:<13} {:>9.2} {}",
            self.name,
            self.value,
            "ms",
            self.baseline,
            self.ratio(),
            self.target(),
            self.bound,
            if self.pass() { "PASS" } else { "MISS" }
        )
    }
}

pub fn table_header() -> String {
    format!(
        "{:<40} {:>9} {:<4} {:>9} {:>7} {:<13} {:>9} {}",
        "name", "value", "unit", "baseline", "ratio", "target", "bound", "result"
    )
}

fn progress(msg: &str) {
    eprintln!("lb-bench: {msg}");
}

fn describe(t: &[Trial]) -> String {
    t.iter()
        .map(|t| format!("{:.1}", t.gap_ms))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one case: both pairs, alternating trials.
pub fn run_case(case: &Case) -> Result<Entry> {
    progress(&format!(
        "{}: {} trials per pair, bound {:.2} ms",
        case.name,
        case.trials,
        case.bound_ms()
    ));
    let mut ours = Pair::new(case, Peer::Ours).context("our pair")?;
    let mut theirs = Pair::new(case, Peer::Keepalived).context("keepalived pair")?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..case.trials {
        for (pair, out, who) in [
            (&mut ours, &mut a, "ours"),
            (&mut theirs, &mut b, "keepalived"),
        ] {
            let mut attempt = 0;
            let t = loop {
                match pair.trial(case, i) {
                    Ok(t) => break t,
                    Err(e) if attempt < RETRIES && format!("{e:#}").starts_with(UNSTABLE) => {
                        attempt += 1;
                        progress(&format!(
                            "{} trial {} of {who}: {e:#}; running it again",
                            case.name,
                            i + 1
                        ));
                    }
                    Err(e) => {
                        return Err(e
                            .context(format!("{} trial {} of {who}", case.name, i + 1))
                            .context(pair.lab.logs_for_error()));
                    }
                }
            };
            progress(&format!(
                "{} trial {}/{} {who:<10}: gap {:7.2} ms, on the wire {:7.2} ms, \
                 gratuitous ARP {:+.2} ms after the first advert, first reply {:+.2} ms after it, \
                 {} probes lost",
                case.name,
                i + 1,
                case.trials,
                t.gap_ms,
                t.wire_ms,
                t.garp_ms,
                t.resume_ms,
                t.lost
            ));
            out.push(t);
        }
    }
    drop(ours);
    drop(theirs);
    let gaps = |t: &[Trial]| t.iter().map(|t| in_probes(t.gap_ms)).collect::<Vec<_>>();
    let raw = |t: &[Trial]| t.iter().map(|t| t.gap_ms).collect::<Vec<_>>();
    let wire = |t: &[Trial]| t.iter().map(|t| t.wire_ms).collect::<Vec<_>>();
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let garp = |t: &[Trial]| t.iter().map(|t| t.garp_ms).collect::<Vec<_>>();
    let resume = |t: &[Trial]| t.iter().map(|t| t.resume_ms).collect::<Vec<_>>();
    progress(&format!(
        "{}: gaps ours [{}] keepalived [{}]; raw medians ours {:.3} ms keepalived {:.3} ms; \
         means ours {:.3} ms keepalived {:.3} ms; \
         medians ours / keepalived: on the wire {:.2} / {:.2} ms, first advert to gratuitous \
         ARP {:.3} / {:.3} ms, gratuitous ARP to first reply {:.3} / {:.3} ms",
        case.name,
        describe(&a),
        describe(&b),
        median(&raw(&a)),
        median(&raw(&b)),
        mean(raw(&a)),
        mean(raw(&b)),
        median(&wire(&a)),
        median(&wire(&b)),
        median(&garp(&a)),
        median(&garp(&b)),
        median(&resume(&a)),
        median(&resume(&b))
    ));
    Ok(Entry {
        name: case.name,
        value: median(&gaps(&a)),
        baseline: median(&gaps(&b)),
        bound: case.bound_ms(),
        target_ratio: 1.0,
        ours: a,
        keepalived: b,
    })
}

/// `lb-bench vrrp [--json]` (the caller checked that we are root): 0 when the benchmark ran
/// (a missed target is reported, not an error), 1 when it could not.
pub fn main(json: bool) -> ExitCode {
    if find_program("keepalived").is_none() {
        eprintln!(
            "lb-bench: vrrp needs keepalived (apt-get install keepalived, or scripts/setup.sh test)"
        );
        return ExitCode::from(1);
    }
    if let Err(e) = crate::lab::daemon_bin() {
        eprintln!("lb-bench: {e:#}");
        return ExitCode::from(1);
    }
    if !json {
        println!("{}", table_header());
    }
    let t = Instant::now();
    let mut missed = Vec::new();
    // LB_BENCH_VRRP_ONLY=substring runs only the matching entries (when looking into one).
    let only = std::env::var("LB_BENCH_VRRP_ONLY").unwrap_or_default();
    for case in cases().into_iter().filter(|c| c.name.contains(&only)) {
        match run_case(&case) {
            Ok(e) => {
                println!("{}", if json { e.json() } else { e.row() });
                if !e.pass() {
                    missed.push(e.name);
                }
            }
            Err(e) => {
                eprintln!("lb-bench: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    progress(&format!("vrrp: {:.0} s", t.elapsed().as_secs_f64()));
    if missed.is_empty() {
        eprintln!("lb-bench: every target met");
    } else {
        eprintln!("lb-bench: target missed by {}", missed.join(", "));
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_lines() {
        let c = cases();
        assert_eq!(c.len(), 3);
        assert!((c[0].bound_ms() - 3609.375).abs() < 1e-9);
        assert!((c[1].bound_ms() - 36.09375).abs() < 1e-9);
        assert!((c[2].bound_ms() - 6.09375).abs() < 1e-9);
        let e = Entry {
            name: "failover_hard_v3_10ms_vs_keepalived",
            value: 40.0,
            baseline: 50.0,
            bound: 36.09375,
            target_ratio: 1.0,
            ours: vec![],
            keepalived: vec![],
        };
        assert_eq!(
            e.json(),
            r#"{"name":"failover_hard_v3_10ms_vs_keepalived","value":40.0000,"unit":"ms","baseline":50.0000,"ratio":0.8000,"target":"ratio <= 1.0","pass":true,"bound":36.0938}"#
        );
        assert!(e.row().ends_with("PASS"));
    }

    fn trials(gaps: &[f64]) -> Vec<Trial> {
        gaps.iter()
            .map(|&gap_ms| Trial {
                gap_ms,
                wire_ms: 0.0,
                garp_ms: 0.0,
                resume_ms: 0.0,
                lost: 0,
            })
            .collect()
    }

    /// The ratio pairs trials by index: ties in most phases give 1.0 even where the two
    /// medians differ by an interval; a pair longer in most phases is over 1.0.
    #[test]
    fn ratio_pairs_trials_by_phase() {
        let entry = |ours: &[f64], theirs: &[f64]| Entry {
            name: "x",
            value: median(ours),
            baseline: median(theirs),
            bound: 0.0,
            target_ratio: 1.0,
            ours: trials(ours),
            keepalived: trials(theirs),
        };
        let e = entry(
            &[35.0, 34.1, 35.0, 34.0, 35.2],
            &[35.0, 34.0, 34.9, 34.0, 34.0],
        );
        assert_eq!((e.value, e.baseline), (35.0, 34.0));
        assert_eq!(e.ratio(), 1.0);
        assert!(e.pass());
        let e = entry(
            &[35.0, 35.0, 35.0, 34.0, 35.0],
            &[34.0, 34.0, 35.0, 34.0, 34.0],
        );
        assert!(e.ratio() > 1.0 && !e.pass(), "{}", e.ratio());
        let e = entry(
            &[34.0, 34.0, 35.0, 34.0, 34.0],
            &[35.0, 35.0, 35.0, 34.0, 35.0],
        );
        assert!(e.ratio() < 1.0 && e.pass(), "{}", e.ratio());
    }

    /// Both pairs' trial i share a phase; the phases spread over the whole interval.
    #[test]
    fn phases_cover_the_interval() {
        let mut p: Vec<Duration> = (0..15).map(phase).collect();
        assert!(p.iter().all(|d| *d < PROBE));
        assert_eq!(phase(3), phase(3));
        p.sort();
        let widest = p.windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(widest < PROBE / 5, "{p:?}");
    }

    /// Gaps count in whole probe intervals: jitter below one is not a difference.
    #[test]
    fn gaps_in_probe_intervals() {
        assert_eq!(in_probes(37.004), 37.0);
        assert_eq!(in_probes(36.996), 37.0);
        assert_eq!(in_probes(3610.04), 3610.0);
        assert_eq!(in_probes(7.6), 8.0);
        assert_eq!(in_probes(0.2), 0.0);
    }
}
