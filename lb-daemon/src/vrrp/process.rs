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
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, Notify},
    task::JoinHandle,
};
use tracing::{info, warn};

use super::track::{Status, TrackEvent, TrackKey};
use crate::{
    config::vrrp::{ParamMatch, TrackProcess},
    log_limit::{LogLimit, LOG_EVERY},
    os::{parse_proc_stat, proc_pids, read_proc_file, STAT_HEAD},
};

/// How often `/proc` is read. A pass reads each process's `comm` (its `stat` only when the
/// name matches, to leave zombies out) and, when a tracker matches on command lines, each
/// new process's command line once: about a millisecond for a few hundred processes.
pub const PROCESS_POLL: Duration = Duration::from_millis(250);

/// A pass still running after this long is logged: reading a process's command line waits
/// for its memory map, which a process stuck in the kernel (a hung NFS mount) can hold.
const SLOW_SCAN: Duration = Duration::from_secs(5);

/// A running process as a tracker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo<'a> {
    /// The kernel's process name (`/proc/PID/comm`, at most 15 bytes).
    pub comm: &'a [u8],
    /// The start of `/proc/PID/cmdline` (a NUL after each word), when some tracker needs it.
    pub cmdline: Option<&'a [u8]>,
}

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

    /// Whether a process named `comm` may count (the whole answer without `full_command`).
    pub fn may_match_comm(&self, comm: &[u8]) -> bool {
        self.full_command || comm == self.name
    }

    /// Whether `p` counts. Without `full_command`, its process name is compared whole
    /// (keepalived: `pgrep '^name$'`, never a pattern); with it, the command line's first
    /// word, and the parameters after it as `param_match` says.
    pub fn matches(&self, p: &ProcessInfo) -> bool {
        if !self.full_command {
            return p.comm == self.name;
        }
        let Some(line) = p.cmdline else {
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
/// `terminate_delay`, whichever way the quorum goes (gained, or lost above `quorum_max`).
/// Seen from `/proc`, a count that rose is a fork and one that fell an exit; a pending
/// change whose cause turns around (a fork, then more exits) waits the other delay from
/// then, as keepalived cancels one timer and starts the other. A change undone before its
/// delay is over is never reported (a restart within `terminate_delay`); the first count
/// is reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessWatch {
    quorum: u32,
    quorum_max: u32,
    fork_delay: Duration,
    terminate_delay: Duration,
    count: Option<u32>,
    /// What was reported: `None` before the first count.
    reported: Option<bool>,
    /// When the pending change (the opposite of `reported`) counts, and whether a rise
    /// (a fork) caused it.
    pending: Option<(Instant, bool)>,
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

    /// Whether `other` follows the same rules (its state aside).
    pub fn same_rules(&self, other: &ProcessWatch) -> bool {
        (
            self.quorum,
            self.quorum_max,
            self.fork_delay,
            self.terminate_delay,
        ) == (
            other.quorum,
            other.quorum_max,
            other.fork_delay,
            other.terminate_delay,
        )
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
        self.pending.map(|(due, _)| due)
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
        // The cause of this count: a rise, a fall, or none (the same count again).
        let rose = previous.and_then(|p| (count != p).then_some(count > p));
        let due = match (self.pending, rose) {
            (Some((due, was)), r) if r.is_none_or(|r| r == was) => due,
            _ => {
                let rose = rose.unwrap_or(false);
                let delay = if rose {
                    self.fork_delay
                } else {
                    self.terminate_delay
                };
                self.pending = Some((now + delay, rose));
                now + delay
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

/// Counts processes over `/proc`, keeping each command line it read (by PID, start time and
/// name: a PID reused by a later process, or a process that exec'd another program, is read
/// again), so that a command line is read once per process, not once per pass.
#[derive(Default)]
struct Scanner {
    cmdlines: HashMap<u32, CachedLine>,
    path: String,
}

struct CachedLine {
    start_time: u64,
    comm: Vec<u8>,
    /// How much was asked for (a tracker needing more reads it again).
    limit: usize,
    line: Vec<u8>,
}

impl Scanner {
    /// How many processes each of `matchers` counts now. Any failure other than a process
    /// that went away fails the whole pass: a short count would look like stopped processes.
    fn count(&mut self, matchers: &[ProcessMatcher]) -> std::io::Result<Vec<u32>> {
        let limit = matchers.iter().map(|m| m.cmdline_len()).max().unwrap_or(0);
        let mut counts = vec![0u32; matchers.len()];
        let mut stat = [0u8; STAT_HEAD];
        let mut comm = [0u8; 64];
        let mut kept: HashMap<u32, CachedLine> = HashMap::new();
        for pid in proc_pids()? {
            // By name alone, `comm` decides whether the rest is worth reading (`stat` walks
            // the process's threads).
            if limit == 0 {
                let Some(n) = read_proc_file(pid, "comm", &mut self.path, &mut comm)? else {
                    continue;
                };
                let name = comm[..n].strip_suffix(b"\n").unwrap_or(&comm[..n]);
                if !matchers.iter().any(|m| m.may_match_comm(name)) {
                    continue;
                }
            }
            let Some(n) = read_proc_file(pid, "stat", &mut self.path, &mut stat)? else {
                continue;
            };
            let Some(st) = parse_proc_stat(&stat[..n]) else {
                continue;
            };
            // Zombies and dead processes do not run (keepalived leaves them out too).
            if matches!(st.state, b'Z' | b'X' | b'x') {
                continue;
            }
            let line = if limit == 0 {
                None
            } else {
                let cached = self.cmdlines.remove(&pid).filter(|c| {
                    c.start_time == st.start_time && c.comm == st.comm && c.limit >= limit
                });
                let entry = match cached {
                    Some(c) => c,
                    None => {
                        let mut line = vec![0u8; limit];
                        let Some(n) = read_proc_file(pid, "cmdline", &mut self.path, &mut line)?
                        else {
                            continue;
                        };
                        line.truncate(n);
                        CachedLine {
                            start_time: st.start_time,
                            comm: st.comm.to_vec(),
                            limit,
                            line,
                        }
                    }
                };
                Some(kept.entry(pid).insert_entry(entry).into_mut())
            };
            let info = ProcessInfo {
                comm: st.comm,
                cmdline: line.as_ref().map(|c| &c.line[..]),
            };
            for (count, m) in counts.iter_mut().zip(matchers) {
                *count += u32::from(m.matches(&info));
            }
        }
        // Processes that went away are forgotten.
        self.cmdlines = kept;
        Ok(counts)
    }
}

struct Tracker {
    matcher: ProcessMatcher,
    watch: ProcessWatch,
}

type Trackers = Arc<Mutex<BTreeMap<String, Tracker>>>;

fn lock(t: &Trackers) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracker>> {
    // A poisoned lock means a panic while it was held, which nothing here can leave halfway.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process poller; dropping it stops the polling. A reload changes its trackers in
/// place ([`ProcessTask::reconfigure`]): one whose matching and quorum rules stay keeps its
/// count, its status and a delay in progress.
#[derive(Debug)]
pub struct ProcessTask {
    trackers: Trackers,
    wake: Arc<Notify>,
    handle: JoinHandle<()>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("watch", &self.watch)
            .finish()
    }
}

impl ProcessTask {
    /// Every tracker's reported status (`Unknown` until its first pass).
    pub fn status(&self) -> HashMap<String, Status> {
        lock(&self.trackers)
            .iter()
            .map(|(n, t)| (n.clone(), t.watch.status()))
            .collect()
    }

    /// Takes a reload's trackers: unchanged ones go on, changed and new ones start over
    /// (their first pass, at once, reports them), gone ones stop.
    pub fn reconfigure(&self, processes: &BTreeMap<String, TrackProcess>) {
        let mut trackers = lock(&self.trackers);
        trackers.retain(|name, t| {
            processes.get(name).is_some_and(|p| {
                t.matcher == ProcessMatcher::new(p) && t.watch.same_rules(&ProcessWatch::new(p))
            })
        });
        for (name, p) in processes {
            trackers.entry(name.clone()).or_insert_with(|| Tracker {
                matcher: ProcessMatcher::new(p),
                watch: ProcessWatch::new(p),
            });
        }
        drop(trackers);
        self.wake.notify_one();
    }
}

impl Drop for ProcessTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Polls `/proc` every `period` for `processes` (by tracker name) and sends each confirmed
/// change, the first pass's statuses included; the first pass starts at once.
pub fn spawn_processes(
    processes: &BTreeMap<String, TrackProcess>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
) -> ProcessTask {
    let trackers: Trackers = Arc::default();
    let wake = Arc::new(Notify::new());
    let handle = tokio::spawn(process_loop(trackers.clone(), wake.clone(), period, tx));
    let task = ProcessTask {
        trackers,
        wake,
        handle,
    };
    task.reconfigure(processes);
    task
}

fn word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

async fn process_loop(
    trackers: Trackers,
    wake: Arc<Notify>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
) {
    let mut scanner = Some(Scanner::default());
    let mut bad = LogLimit::new(LOG_EVERY);
    let mut next_scan = Instant::now();
    // After a failed pass, the next one waits its period (no spinning on a pending delay).
    let mut failing = false;
    loop {
        let due = if failing {
            next_scan
        } else {
            lock(&trackers)
                .values()
                .filter_map(|t| t.watch.deadline())
                .fold(next_scan, Instant::min)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = wake.notified() => {}
        }
        let now = Instant::now();
        if now >= next_scan {
            next_scan = now + period;
        }
        let matchers: Vec<(String, ProcessMatcher)> = lock(&trackers)
            .iter()
            .map(|(n, t)| (n.clone(), t.matcher.clone()))
            .collect();
        if matchers.is_empty() {
            continue;
        }
        // Off the event loop: a pass is a few hundred small reads.
        let Some(mut sc) = scanner.take() else { return };
        let mut pass = tokio::task::spawn_blocking(move || {
            let only: Vec<ProcessMatcher> = matchers.iter().map(|(_, m)| m.clone()).collect();
            let counts = sc.count(&only);
            (sc, matchers, counts)
        });
        let started = Instant::now();
        let (sc, matchers, counts) = loop {
            tokio::select! {
                r = &mut pass => match r {
                    Ok(r) => break r,
                    Err(_) => return,
                },
                _ = tokio::time::sleep(SLOW_SCAN) => warn!(
                    "track_process: reading /proc has taken {:?} so far (a process stuck in the kernel?); the tracked processes keep their last status meanwhile",
                    started.elapsed()
                ),
            }
        };
        scanner = Some(sc);
        let counts = match counts {
            Ok(c) => c,
            Err(e) => {
                failing = true;
                if let Some(suppressed) = bad.allow() {
                    warn!(suppressed, "track_process: reading /proc: {e}; the tracked processes keep their last status");
                }
                continue;
            }
        };
        failing = false;
        let now = Instant::now();
        let mut changes = Vec::new();
        {
            let mut trackers = lock(&trackers);
            for ((name, m), count) in matchers.into_iter().zip(counts) {
                // A reload may have changed the tracker meanwhile: its own pass comes next.
                let Some(t) = trackers.get_mut(&name).filter(|t| t.matcher == m) else {
                    continue;
                };
                if let Some(up) = t.watch.observe(now, count) {
                    info!("track_process {name}: {count} running, {}", word(up));
                    changes.push(TrackEvent {
                        key: TrackKey::Process(name),
                        status: up.into(),
                    });
                }
            }
        }
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

    /// A process as `/proc` would show it.
    #[derive(Debug)]
    struct Proc {
        comm: Vec<u8>,
        line: Vec<u8>,
    }

    impl Proc {
        fn info(&self) -> ProcessInfo<'_> {
            ProcessInfo {
                comm: &self.comm,
                cmdline: Some(&self.line),
            }
        }
    }

    fn proc(comm: &str, argv: &[&str]) -> Proc {
        let mut line = Vec::new();
        for a in argv {
            line.extend_from_slice(a.as_bytes());
            line.push(0);
        }
        Proc {
            comm: comm.as_bytes().to_vec(),
            line,
        }
    }

    #[test]
    fn names_are_compared_whole() {
        let m = ProcessMatcher::new(&tracker(&["ssh"], None, false));
        assert!(m.matches(&proc("ssh", &["/usr/bin/ssh", "host"]).info()));
        assert!(
            !m.matches(&proc("sshd", &["/usr/sbin/sshd"]).info()),
            "not pgrep ssh"
        );
        assert!(!m.matches(&proc("ss", &["ss"]).info()));
        assert_eq!(m.cmdline_len(), 0, "no command line read");
    }

    #[test]
    fn full_command_compares_the_program_as_started() {
        let m = ProcessMatcher::new(&tracker(&["/usr/sbin/nginx"], None, true));
        assert!(m.matches(&proc("nginx", &["/usr/sbin/nginx", "-g", "daemon off;"]).info()));
        assert!(
            !m.matches(&proc("nginx", &["nginx"]).info()),
            "the path as started"
        );
        // A rewritten command line (one word, no NUL) that is exactly the program.
        let rewritten = ProcessInfo {
            comm: b"nginx",
            cmdline: Some(b"/usr/sbin/nginx"),
        };
        assert!(m.matches(&rewritten));
        let kernel_thread = ProcessInfo {
            comm: b"kworker/0:1",
            cmdline: Some(b""),
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
            let got = [&same, &more, &longer, &fewer, &none].map(|p| m.matches(&p.info()));
            assert_eq!(got, expect, "{m:?}");
        }
        // param_match without parameters: exact means none; the others, any.
        let bare = |mode| ProcessMatcher::new(&tracker(&["/bin/app"], mode, true));
        assert!(bare(Some(ParamMatch::Exact)).matches(&none.info()));
        assert!(!bare(Some(ParamMatch::Exact)).matches(&same.info()));
        assert!(bare(Some(ParamMatch::Partial)).matches(&same.info()));
        assert!(bare(Some(ParamMatch::Initial)).matches(&same.info()));
        // Only the bytes a decision needs are read; a line cut there decides the same.
        for m in [&exact, &partial, &initial] {
            for p in [&same, &more, &longer, &fewer, &none] {
                let cut = ProcessInfo {
                    comm: &p.comm,
                    cmdline: Some(&p.line[..p.line.len().min(m.cmdline_len())]),
                };
                assert_eq!(m.matches(&cut), m.matches(&p.info()), "{m:?} {p:?}");
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

    /// The poller over the real `/proc`: its first pass reports at once, a child killed is
    /// counted out after `terminate_delay`, and a reload that keeps a tracker keeps its
    /// status (nothing reported again) while a new tracker reports.
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
        let mut set = BTreeMap::from([("t".to_string(), p), ("absent".to_string(), absent)]);
        let task = spawn_processes(&set, Duration::from_millis(50), tx);
        async fn next(rx: &mut mpsc::Receiver<TrackEvent>) -> TrackEvent {
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("no event")
                .unwrap()
        }
        let ev = |name: &str, status| TrackEvent {
            key: TrackKey::Process(name.into()),
            status,
        };
        let mut first = vec![next(&mut rx).await, next(&mut rx).await];
        first.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(first, vec![ev("absent", Status::Down), ev("t", Status::Up)]);
        assert_eq!(task.status()["t"], Status::Up);
        // A reload adding a tracker: the new one reports, "t" and "absent" stay as they are.
        let mut again = set["absent"].clone();
        again.name = "again".into();
        set.insert("again".into(), again);
        task.reconfigure(&set);
        assert_eq!(next(&mut rx).await, ev("again", Status::Down));
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Instant::now();
        assert_eq!(next(&mut rx).await, ev("t", Status::Down));
        assert!(
            killed.elapsed() >= Duration::from_millis(300),
            "terminate_delay: {:?}",
            killed.elapsed()
        );
        assert_eq!(task.status()["t"], Status::Down);
        assert!(rx.try_recv().is_err(), "nothing else was reported");
    }

    /// A pending change whose cause turns around waits the other delay, from then.
    #[test]
    fn a_fork_then_exits_wait_the_terminate_delay() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // quorum 1..=1, fork_delay 1 s, terminate_delay 10 s.
        let mut w = watch(1, 1, 1000, 10_000);
        assert_eq!(w.observe(t0, 1), Some(true));
        assert_eq!(w.observe(t0 + ms(100), 2), None, "above quorum_max: a fork");
        assert_eq!(w.deadline(), Some(t0 + ms(1100)));
        // Both exit: out of quorum by exits now, so terminate_delay from here.
        assert_eq!(w.observe(t0 + ms(200), 0), None);
        assert_eq!(w.deadline(), Some(t0 + ms(10_200)));
        assert_eq!(
            w.observe(t0 + ms(1500), 0),
            None,
            "not at the fork's deadline"
        );
        assert_eq!(w.observe(t0 + ms(10_200), 0), Some(false));
    }
}
