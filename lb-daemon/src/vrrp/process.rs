//! keepalived's `vrrp_track_process`: how many processes of a name run, as up or down.
//!
//! The matching rules and the delays are pure ([`ProcessMatcher`], [`ProcessWatch`], time
//! passed in); [`spawn_processes`] is the shell that reads `/proc`.
//!
//! keepalived follows processes through the kernel's process events (the proc connector).
//! Those reach only a listener in the first network namespace, and a daemon run in another
//! one (`ip netns exec`, a container) would hear nothing; so `/proc` is read every
//! [`PROCESS_POLL`] instead, wherever the daemon runs. Two consequences, both documented:
//! a process that lives less than a period may go unseen (keepalived counts it), and a
//! command line is read as it is now, so a process that rewrites its own (nginx's "nginx:
//! master process ...", PostgreSQL) is seen rewritten: match those by process name.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::track::{Status, TrackEvent, TrackKey};
use crate::{
    config::vrrp::{ParamMatch, TrackProcess},
    log_limit::{LogLimit, LOG_EVERY},
    os::ProcessInfo,
};

/// How often `/proc` is read. One pass reads a 64-byte head of each process's `stat` (and
/// its command line only when some tracker matches on it): about a millisecond for a few
/// hundred processes.
pub const PROCESS_POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------------------
// Matching: pure
// ---------------------------------------------------------------------------------------------

/// What a `vrrp_track_process` counts (keepalived's `check_process`, `check_params`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMatcher {
    name: Vec<u8>,
    full_command: bool,
    /// The parameters as the command line holds them, each followed by a NUL.
    params: Vec<u8>,
    param_match: Option<ParamMatch>,
}

impl ProcessMatcher {
    pub fn new(p: &TrackProcess) -> Self {
        let mut params = Vec::new();
        for w in &p.params {
            params.extend_from_slice(w.as_bytes());
            params.push(0);
        }
        ProcessMatcher {
            name: p.process.as_bytes().to_vec(),
            full_command: p.full_command,
            params,
            param_match: p.param_match,
        }
    }

    /// How much of a command line a decision needs: the program and the parameters, and one
    /// byte more (an exact match must see that nothing follows). 0: none is read.
    pub fn cmdline_len(&self) -> usize {
        if self.full_command {
            self.name.len() + 1 + self.params.len() + 1
        } else {
            0
        }
    }

    /// Whether `p` counts. Without `full_command`, its process name is compared whole
    /// (keepalived: `pgrep '^name$'`, never a pattern); with it, the command line's first
    /// word, and the parameters after it as `param_match` says.
    pub fn matches(&self, p: &ProcessInfo) -> bool {
        if !self.full_command {
            return p.comm == self.name;
        }
        let Some(line) = p.cmdline.as_deref() else {
            return false;
        };
        // No NUL: a rewritten command line without arguments, all of it the program.
        let (program, args) = match line.iter().position(|b| *b == 0) {
            Some(end) => (&line[..end], &line[end + 1..]),
            None => (line, &[][..]),
        };
        if program != self.name {
            return false;
        }
        match self.param_match {
            None => true,
            Some(ParamMatch::Exact) => args == self.params,
            Some(ParamMatch::Partial) => args.starts_with(&self.params),
            // The last configured parameter without its NUL: a prefix of the process's.
            Some(ParamMatch::Initial) => {
                args.starts_with(&self.params[..self.params.len().saturating_sub(1)])
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quorum and delays: pure, time passed in
// ---------------------------------------------------------------------------------------------

/// A tracker's count, its quorum, and the delays before a change counts.
///
/// keepalived delays a change caused by a fork by `fork_delay` and one caused by an exit by
/// `terminate_delay`, whichever way the quorum goes. Seen from `/proc`, a count that rose
/// is a fork and one that fell an exit. A change undone before its delay is over is never
/// reported (a restart within `terminate_delay`); the first count is reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessWatch {
    quorum: u32,
    quorum_max: u32,
    fork_delay: Duration,
    terminate_delay: Duration,
    count: Option<u32>,
    /// What was reported: `None` before the first count.
    reported: Option<bool>,
    /// When the pending change (the opposite of `reported`) counts.
    pending: Option<Instant>,
}

impl ProcessWatch {
    pub fn new(p: &TrackProcess) -> Self {
        ProcessWatch {
            quorum: p.quorum,
            quorum_max: p.quorum_max,
            fork_delay: p.fork_delay,
            terminate_delay: p.terminate_delay,
            count: None,
            reported: None,
            pending: None,
        }
    }

    fn in_quorum(&self, count: u32) -> bool {
        (self.quorum..=self.quorum_max).contains(&count)
    }

    pub fn count(&self) -> Option<u32> {
        self.count
    }

    /// The reported status.
    pub fn status(&self) -> Status {
        self.reported.map_or(Status::Unknown, Status::from)
    }

    /// When [`ProcessWatch::observe`] must be called again for a pending change, even if
    /// the count stays.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
    }

    /// Takes the count at `now`; returns the new status when it changes.
    pub fn observe(&mut self, now: Instant, count: u32) -> Option<bool> {
        let previous = self.count.replace(count);
        let want = self.in_quorum(count);
        let Some(reported) = self.reported else {
            self.reported = Some(want);
            return Some(want);
        };
        if want == reported {
            self.pending = None;
            return None;
        }
        let due = match self.pending {
            Some(due) => due,
            None => {
                let delay = if previous.is_some_and(|p| count > p) {
                    self.fork_delay
                } else {
                    self.terminate_delay
                };
                *self.pending.insert(now + delay)
            }
        };
        if now < due {
            return None;
        }
        self.pending = None;
        self.reported = Some(want);
        Some(want)
    }
}

// ---------------------------------------------------------------------------------------------
// The poller: I/O
// ---------------------------------------------------------------------------------------------

struct Tracker {
    matcher: ProcessMatcher,
    watch: ProcessWatch,
}

/// Counts every tracker's processes in one pass over `/proc`.
fn scan(trackers: &BTreeMap<String, Tracker>) -> std::io::Result<Vec<u32>> {
    let cmdline = trackers
        .values()
        .map(|t| t.matcher.cmdline_len())
        .max()
        .filter(|n| *n > 0);
    let all = crate::os::processes(cmdline)?;
    Ok(trackers
        .values()
        .map(|t| all.iter().filter(|p| t.matcher.matches(p)).count() as u32)
        .collect())
}

/// The process poller; dropping it stops the polling.
#[derive(Debug)]
pub struct ProcessTask {
    /// What it was started with, to tell whether a reload changes it.
    pub processes: BTreeMap<String, TrackProcess>,
    status: watch::Receiver<HashMap<String, Status>>,
    handle: JoinHandle<()>,
}

impl ProcessTask {
    pub fn status(&self) -> HashMap<String, Status> {
        self.status.borrow().clone()
    }
}

impl Drop for ProcessTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Polls `/proc` every `period` for `processes` (by tracker name) and sends each confirmed
/// change. The first pass runs here, before it returns, so that the statuses are known at
/// once (a reload's new tracking is seeded with them).
pub fn spawn_processes(
    processes: BTreeMap<String, TrackProcess>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
) -> ProcessTask {
    let mut trackers: BTreeMap<String, Tracker> = processes
        .iter()
        .map(|(n, p)| {
            (
                n.clone(),
                Tracker {
                    matcher: ProcessMatcher::new(p),
                    watch: ProcessWatch::new(p),
                },
            )
        })
        .collect();
    match scan(&trackers) {
        Ok(counts) => {
            let now = Instant::now();
            for ((name, t), count) in trackers.iter_mut().zip(counts) {
                if let Some(up) = t.watch.observe(now, count) {
                    info!("track_process {name}: {count} running, {}", word(up));
                }
            }
        }
        Err(e) => warn!("track_process: reading /proc: {e}"),
    }
    let (status_tx, status) = watch::channel(statuses(&trackers));
    let handle = tokio::spawn(process_loop(trackers, period, tx, status_tx));
    ProcessTask {
        processes,
        status,
        handle,
    }
}

fn word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

fn statuses(trackers: &BTreeMap<String, Tracker>) -> HashMap<String, Status> {
    trackers
        .iter()
        .map(|(n, t)| (n.clone(), t.watch.status()))
        .collect()
}

async fn process_loop(
    mut trackers: BTreeMap<String, Tracker>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
    status: watch::Sender<HashMap<String, Status>>,
) {
    let mut bad = LogLimit::new(LOG_EVERY);
    let mut next_scan = Instant::now() + period;
    loop {
        // Wake for the next pass, or earlier for a delay that ends before it.
        let wake = trackers
            .values()
            .filter_map(|t| t.watch.deadline())
            .fold(next_scan, Instant::min);
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if now >= next_scan {
            next_scan = now + period;
        }
        // Off the event loop: a pass over /proc is a few hundred small reads.
        let (back, counts) = match tokio::task::spawn_blocking(move || {
            let counts = scan(&trackers);
            (trackers, counts)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => return,
        };
        trackers = back;
        let counts = match counts {
            Ok(c) => c,
            Err(e) => {
                if let Some(suppressed) = bad.allow() {
                    warn!(suppressed, "track_process: reading /proc: {e}");
                }
                continue;
            }
        };
        let now = Instant::now();
        let mut changes = Vec::new();
        for ((name, t), count) in trackers.iter_mut().zip(counts) {
            if let Some(up) = t.watch.observe(now, count) {
                info!("track_process {name}: {count} running, {}", word(up));
                changes.push(TrackEvent {
                    key: TrackKey::Process(name.clone()),
                    status: up.into(),
                });
            }
        }
        if changes.is_empty() {
            continue;
        }
        status.send_replace(statuses(&trackers));
        for change in changes {
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(process: &[&str], param_match: Option<ParamMatch>, full: bool) -> TrackProcess {
        TrackProcess {
            name: "t".into(),
            process: process[0].into(),
            params: process[1..].iter().map(|s| s.to_string()).collect(),
            param_match,
            full_command: full || param_match.is_some(),
            weight: 0,
            reverse: false,
            quorum: 1,
            quorum_max: u32::MAX,
            fork_delay: Duration::ZERO,
            terminate_delay: Duration::ZERO,
        }
    }

    fn proc(comm: &str, argv: &[&str]) -> ProcessInfo {
        let mut line = Vec::new();
        for a in argv {
            line.extend_from_slice(a.as_bytes());
            line.push(0);
        }
        ProcessInfo {
            comm: comm.as_bytes().to_vec(),
            cmdline: Some(line),
        }
    }

    #[test]
    fn names_are_compared_whole() {
        let m = ProcessMatcher::new(&tracker(&["ssh"], None, false));
        assert!(m.matches(&proc("ssh", &["/usr/bin/ssh", "host"])));
        assert!(
            !m.matches(&proc("sshd", &["/usr/sbin/sshd"])),
            "not pgrep ssh"
        );
        assert!(!m.matches(&proc("ss", &["ss"])));
        assert_eq!(m.cmdline_len(), 0, "no command line read");
    }

    #[test]
    fn full_command_compares_the_program_as_started() {
        let m = ProcessMatcher::new(&tracker(&["/usr/sbin/nginx"], None, true));
        assert!(m.matches(&proc("nginx", &["/usr/sbin/nginx", "-g", "daemon off;"])));
        assert!(
            !m.matches(&proc("nginx", &["nginx"])),
            "the path as started"
        );
        // A rewritten command line (one word, no NUL) that is exactly the program.
        let rewritten = ProcessInfo {
            comm: b"nginx".to_vec(),
            cmdline: Some(b"/usr/sbin/nginx".to_vec()),
        };
        assert!(m.matches(&rewritten));
        let kernel_thread = ProcessInfo {
            comm: b"kworker/0:1".to_vec(),
            cmdline: Some(Vec::new()),
        };
        assert!(!m.matches(&kernel_thread));
        // The program, its NUL, nothing configured beyond: one byte to tell.
        assert_eq!(m.cmdline_len(), "/usr/sbin/nginx".len() + 2);
    }

    #[test]
    fn param_match_modes() {
        let p = |mode| ProcessMatcher::new(&tracker(&["/bin/app", "-c", "conf"], mode, true));
        let exact = p(Some(ParamMatch::Exact));
        let partial = p(Some(ParamMatch::Partial));
        let initial = p(Some(ParamMatch::Initial));
        let same = proc("app", &["/bin/app", "-c", "conf"]);
        let more = proc("app", &["/bin/app", "-c", "conf", "-v"]);
        let longer = proc("app", &["/bin/app", "-c", "config"]);
        let fewer = proc("app", &["/bin/app", "-c"]);
        let none = proc("app", &["/bin/app"]);
        for (m, expect) in [
            (&exact, [true, false, false, false, false]),
            (&partial, [true, true, false, false, false]),
            (&initial, [true, true, true, false, false]),
        ] {
            let got = [&same, &more, &longer, &fewer, &none].map(|p| m.matches(p));
            assert_eq!(got, expect, "{m:?}");
        }
        // param_match without parameters: exact means none; the others, any.
        let bare = |mode| ProcessMatcher::new(&tracker(&["/bin/app"], mode, true));
        assert!(bare(Some(ParamMatch::Exact)).matches(&none));
        assert!(!bare(Some(ParamMatch::Exact)).matches(&same));
        assert!(bare(Some(ParamMatch::Partial)).matches(&same));
        assert!(bare(Some(ParamMatch::Initial)).matches(&same));
        // Only the bytes a decision needs are read; a line cut there decides the same.
        let cut = |p: &ProcessInfo, m: &ProcessMatcher| ProcessInfo {
            comm: p.comm.clone(),
            cmdline: p
                .cmdline
                .as_ref()
                .map(|l| l[..l.len().min(m.cmdline_len())].to_vec()),
        };
        for m in [&exact, &partial, &initial] {
            for p in [&same, &more, &longer, &fewer, &none] {
                assert_eq!(m.matches(&cut(p, m)), m.matches(p), "{m:?} {p:?}");
            }
        }
    }

    fn watch(quorum: u32, quorum_max: u32, fork_ms: u64, term_ms: u64) -> ProcessWatch {
        ProcessWatch::new(&TrackProcess {
            quorum,
            quorum_max,
            fork_delay: Duration::from_millis(fork_ms),
            terminate_delay: Duration::from_millis(term_ms),
            ..tracker(&["x"], None, false)
        })
    }

    #[test]
    fn quorum_bounds() {
        let t0 = Instant::now();
        let mut w = watch(2, 3, 0, 0);
        assert_eq!(w.status(), Status::Unknown);
        assert_eq!(w.observe(t0, 1), Some(false), "the first count is reported");
        assert_eq!(w.observe(t0, 1), None);
        assert_eq!(w.observe(t0, 2), Some(true));
        assert_eq!(w.observe(t0, 3), None);
        assert_eq!(w.observe(t0, 4), Some(false), "above quorum_max");
        // quorum_max 0: up while none runs.
        let mut none = watch(0, 0, 0, 0);
        assert_eq!(none.observe(t0, 0), Some(true));
        assert_eq!(none.observe(t0, 1), Some(false));
    }

    #[test]
    fn delays_hold_changes_and_a_quick_return_cancels_them() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = watch(1, u32::MAX, 300, 2000);
        assert_eq!(w.observe(t0, 1), Some(true), "the first count: no delay");
        // The process exits: down only once terminate_delay is over.
        assert_eq!(w.observe(t0 + ms(100), 0), None);
        assert_eq!(w.deadline(), Some(t0 + ms(2100)));
        assert_eq!(w.observe(t0 + ms(2000), 0), None);
        assert_eq!(w.observe(t0 + ms(2100), 0), Some(false));
        assert_eq!(w.deadline(), None);
        // It starts again: up once fork_delay is over.
        assert_eq!(w.observe(t0 + ms(3000), 1), None);
        assert_eq!(w.deadline(), Some(t0 + ms(3300)));
        assert_eq!(w.observe(t0 + ms(3300), 1), Some(true));
        // A restart within terminate_delay is never seen.
        assert_eq!(w.observe(t0 + ms(4000), 0), None);
        assert_eq!(w.observe(t0 + ms(5000), 1), None);
        assert_eq!(w.deadline(), None, "cancelled");
        assert_eq!(w.observe(t0 + ms(9000), 1), None);
        assert_eq!(w.status(), Status::Up);
        // No delays: at once.
        let mut w = watch(1, u32::MAX, 0, 0);
        w.observe(t0, 1);
        assert_eq!(w.observe(t0, 0), Some(false));
        assert_eq!(w.count(), Some(0));
    }

    /// The poller over the real `/proc`: a child started and killed is counted, with
    /// `terminate_delay` holding the loss.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_poller_counts_a_real_child() {
        let arg = format!("{}.{}", std::process::id(), 424242);
        let mut p = tracker(&["sleep", "600", &arg], Some(ParamMatch::Exact), true);
        p.terminate_delay = Duration::from_millis(300);
        let absent = TrackProcess {
            name: "absent".into(),
            process: "no-such-proc-x".into(),
            ..tracker(&["x"], None, false)
        };
        let mut child = std::process::Command::new("sleep")
            .args(["600", &arg])
            .spawn()
            .unwrap();
        // Until the child has exec'd, its /proc entry may still show the test binary.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{}/comm", child.id())).unwrap_or_default() != b"sleep\n"
        {
            assert!(Instant::now() < deadline, "sleep did not start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (tx, mut rx) = mpsc::channel(16);
        let task = spawn_processes(
            BTreeMap::from([("t".to_string(), p), ("absent".to_string(), absent)]),
            Duration::from_millis(50),
            tx,
        );
        // The first pass is done before spawn_processes returns.
        let first = task.status();
        assert_eq!(first["t"], Status::Up);
        assert_eq!(first["absent"], Status::Down);
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no event")
            .unwrap();
        assert_eq!(
            ev,
            TrackEvent {
                key: TrackKey::Process("t".into()),
                status: Status::Down
            }
        );
        assert!(
            killed.elapsed() >= Duration::from_millis(300),
            "terminate_delay: {:?}",
            killed.elapsed()
        );
        assert_eq!(task.status()["t"], Status::Down);
    }
}
