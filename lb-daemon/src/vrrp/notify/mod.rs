//! keepalived's notify hooks and a JSON-lines event stream.
//!
//! # Hooks (keepalived.conf(5), `vrrp_instance` and `vrrp_sync_group`)
//!
//! On a state change the specific hook for the new state runs with no extra arguments:
//! `notify_master`, `notify_backup`, `notify_fault`, `notify_stop` (instances only). Then the
//! generic `notify` hook runs with four arguments after its configured ones:
//!
//! ```text
//! <command words...> INSTANCE|GROUP <name> MASTER|BACKUP|FAULT|STOP <priority>
//! ```
//!
//! ("`notify` script is called AFTER the notify_* script(s) and is executed with 4 additional
//! arguments after the configured arguments provided by Keepalived: $(n-3) = "GROUP"|"INSTANCE",
//! $(n-2) = name of the group or instance, $(n-1) = target state of transition, $(n) = priority
//! value".) A group's priority is always 0, as keepalived's `send_group_notifies` passes it.
//! keepalived launches both without waiting for either (`notify_exec`); so do we, but from one
//! queue, so hooks are *started* in the order the events happened. Command lines are split on
//! whitespace (the configuration loader does the same for `vrrp_script`); there is no quoting.
//!
//! Every hook runs as the script user (`global_defs.script_user`, root when unset), in its own
//! process group, with stdin/stdout/stderr on `/dev/null` and `/` as working directory, and is
//! killed (SIGTERM to the group, then SIGKILL after [`script::KILL_GRACE`]) when it outlives its timeout
//! (default [`script::DEFAULT_HOOK_TIMEOUT`]). A hook that fails, cannot be started or times out is
//! counted and logged at a limited rate; nothing a hook does can stop or delay the caller.
//!
//! # Event stream (`global_defs.notify_fifo`)
//!
//! Every event is also written as one JSON line:
//!
//! ```text
//! {"time":1718000000.25,"kind":"INSTANCE","name":"VI_1","state":"MASTER","priority":100,"router_id":"lb1"}
//! ```
//!
//! to a FIFO, or a Unix datagram or stream socket, at the configured path (keepalived writes
//! `INSTANCE "VI_1" MASTER 100` lines to its FIFO; JSON is the same four fields plus time and
//! router_id, and cannot be broken by odd names). The reader owns the path and creates it; in
//! JSON the daemon never creates or removes it.
//!
//! With `notify_fifo_format = "keepalived"` the lines are keepalived's own
//! ([`event_keepalived`]), for the readers written for keepalived, and the daemon makes the
//! FIFO (mode 0644) when the path does not exist and holds it open for reading too, as
//! keepalived does (`notify.c`, `fifo_open`): lines written before a reader comes wait in
//! the pipe (up to its 64 KiB) instead of being dropped. keepalived also removes the FIFO
//! at exit, which here would pull it from under a reload's new notifier, so it stays. `notify_fifo_script` (keepalived's) is started once with
//! the FIFO's path as its last argument, as the script user, without a timeout; it is killed
//! when the notifier stops (the daemon stops, or a reload changes `global_defs`' hook
//! options). Everything is non-blocking: if nobody reads (ENXIO,
//! ECONNREFUSED, a missing path) or the reader's buffer is full (EAGAIN), the event is dropped
//! and counted ([`NotifyCounters::sink_dropped`]); the next event tries to (re)open the path, so
//! a reader that comes back gets the events from then on. A line the kernel took only partly is
//! finished before the next one, so the reader never sees a torn line. Writing to a FIFO whose
//! reader went away raises SIGPIPE, which the Rust runtime ignores in every binary (and sockets
//! are written with MSG_NOSIGNAL).
//!
//! Hooks start through [`crate::script`], as health checks' and tracking scripts do.
mod event;
mod hooks;
mod sink;

pub use event::{event_json, event_keepalived, Event, Kind, NotifyState};
pub use hooks::{generic_argv, Hooks};
use sink::EventSink;

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use tokio::{
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, warn};

use crate::{
    config::{Config, FifoFormat, GlobalDefs},
    log_limit::{LogLimit, LOG_EVERY},
    script::{self, RunOutcome, ScriptUser, UserError, DEFAULT_HOOK_TIMEOUT},
};

/// Events waiting for the worker; beyond this they are dropped and counted.
pub const QUEUE_LEN: usize = 1024;
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    User(#[from] UserError),
    #[error("global_defs.notify_fifo_script: refusing to run as root: {reason}")]
    UnsafeFifoScript { reason: String },
    /// keepalived's `enable_script_security`: a hook run as root that others could replace.
    #[error("{kind} {name:?}: {hook}: refusing to run as root: {reason}")]
    UnsafeScript {
        kind: Kind,
        name: String,
        hook: &'static str,
        reason: String,
    },
}

/// How hooks run and where events go.
#[derive(Debug, Clone)]
pub struct NotifyOptions {
    pub user: ScriptUser,
    pub timeout: Duration,
    /// Refuse hooks run as root whose file or directories others can write
    /// ([`check_script_safety`]).
    pub check_safety: bool,
    /// `global_defs.notify_fifo`: a FIFO or Unix socket.
    pub sink: Option<PathBuf>,
    /// `global_defs.notify_fifo_format`.
    pub format: FifoFormat,
    /// `global_defs.notify_fifo_script`, split on whitespace.
    pub fifo_script: Option<Vec<String>>,
    /// `global_defs.router_id`, else the host name (keepalived's default).
    pub router_id: String,
    pub queue_len: usize,
}

impl NotifyOptions {
    pub fn from_global(global: &GlobalDefs) -> Result<Self, NotifyError> {
        Ok(NotifyOptions {
            user: ScriptUser::resolve(global.script_user.as_deref())?,
            timeout: DEFAULT_HOOK_TIMEOUT,
            check_safety: global.enable_script_security != Some(false),
            sink: global.notify_fifo.clone(),
            format: global.notify_fifo_format.unwrap_or_default(),
            fifo_script: global
                .notify_fifo_script
                .as_ref()
                .map(|s| s.get_ref().split_whitespace().map(str::to_string).collect()),
            router_id: global.router_id.clone().unwrap_or_else(hostname),
            queue_len: QUEUE_LEN,
        })
    }
}

/// Makes a FIFO at `path` (mode 0644, as keepalived) when nothing is there. Something
/// already there (the reader's own FIFO or socket) is left alone; a FIFO that cannot be made
/// is logged, and the events are then dropped and counted as with no reader. The FIFO is
/// left in place when the daemon stops: a reload's new notifier goes on writing to it.
fn make_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    if std::fs::symlink_metadata(path).is_ok() {
        return;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        warn!(path = %path.display(), "notify_fifo: a path with a NUL byte");
        return;
    };
    // SAFETY: `c` is a NUL-terminated path; mkfifo only reads it.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } != 0 {
        let e = std::io::Error::last_os_error();
        warn!(path = %path.display(), "notify_fifo: mkfifo: {e}");
    }
}

/// The host name, as keepalived's default `router_id`.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for writes of buf.len() bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// What happened to events and hooks so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyCounters {
    pub events: u64,
    /// Dropped because the queue to the worker was full.
    pub queue_dropped: u64,
    pub sink_written: u64,
    /// Not written to the FIFO/socket: nobody reading, or its buffer full.
    pub sink_dropped: u64,
    pub hooks_started: u64,
    /// Exited non-zero, killed by a signal, or could not be started.
    pub hooks_failed: u64,
    pub hooks_timed_out: u64,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    queue_dropped: AtomicU64,
    sink_written: AtomicU64,
    sink_dropped: AtomicU64,
    hooks_started: AtomicU64,
    hooks_failed: AtomicU64,
    hooks_timed_out: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> NotifyCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NotifyCounters {
            events: get(&self.events),
            queue_dropped: get(&self.queue_dropped),
            sink_written: get(&self.sink_written),
            sink_dropped: get(&self.sink_dropped),
            hooks_started: get(&self.hooks_started),
            hooks_failed: get(&self.hooks_failed),
            hooks_timed_out: get(&self.hooks_timed_out),
        }
    }
}

struct Queued {
    event: Event,
    time: SystemTime,
}

/// Runs hooks and feeds the event stream from one worker task. [`Notifier::notify`] only
/// queues, so it never blocks and never fails.
#[derive(Debug)]
pub struct Notifier {
    tx: mpsc::Sender<Queued>,
    counters: Arc<Counters>,
    worker: JoinHandle<()>,
}

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.event.fmt(f)
    }
}

impl Notifier {
    /// Starts the worker (needs a Tokio runtime). With `check_safety`, a hook that would run
    /// as root from a file or directory others can write is an error, as is an unknown user.
    pub fn start(
        options: NotifyOptions,
        hooks: impl IntoIterator<Item = (Kind, String, Hooks)>,
    ) -> Result<Self, NotifyError> {
        Self::start_counting(options, hooks, Arc::default())
    }

    /// [`Notifier::start`], counting into `counters` (a notifier that replaces another
    /// goes on with its counts).
    fn start_counting(
        options: NotifyOptions,
        hooks: impl IntoIterator<Item = (Kind, String, Hooks)>,
        counters: Arc<Counters>,
    ) -> Result<Self, NotifyError> {
        let hooks: HashMap<(Kind, String), Hooks> = hooks
            .into_iter()
            .filter(|(_, _, h)| !h.is_empty())
            .map(|(kind, name, h)| ((kind, name), h))
            .collect();
        if options.check_safety && options.user.is_root() {
            for ((kind, name), h) in &hooks {
                for (hook, words) in h.iter() {
                    script::check_safety(Path::new(&words[0])).map_err(|reason| {
                        NotifyError::UnsafeScript {
                            kind: *kind,
                            name: name.clone(),
                            hook,
                            reason,
                        }
                    })?;
                }
            }
        }
        if let (true, Some(words)) = (
            options.check_safety && options.user.is_root(),
            &options.fifo_script,
        ) {
            if let Some(program) = words.first() {
                script::check_safety(Path::new(program))
                    .map_err(|reason| NotifyError::UnsafeFifoScript { reason })?;
            }
        }
        let (tx, rx) = mpsc::channel(options.queue_len.max(1));
        // keepalived's format: the FIFO is made here when it is not there, as keepalived
        // does.
        if let (Some(path), FifoFormat::Keepalived) = (&options.sink, options.format) {
            make_fifo(path);
        }
        let fifo_script = match (&options.sink, &options.fifo_script) {
            (Some(path), Some(words)) => {
                let mut argv = words.clone();
                argv.push(path.display().to_string());
                Some(argv)
            }
            _ => None,
        };
        let worker = Worker {
            hooks,
            format: options.format,
            fifo_script,
            sink: options
                .sink
                .map(|p| EventSink::new(p, options.format == FifoFormat::Keepalived)),
            user: options.user,
            timeout: options.timeout,
            router_id: options.router_id,
            counters: counters.clone(),
            log: Arc::new(Mutex::new(LogLimit::new(LOG_EVERY))),
        };
        Ok(Notifier {
            tx,
            counters,
            worker: tokio::spawn(worker.run(rx)),
        })
    }

    /// The hooks of every instance and sync group in `config`, with `global_defs`' options.
    pub fn from_config(config: &Config) -> Result<Self, NotifyError> {
        Self::from_config_counting(config, Arc::default())
    }

    /// [`Notifier::from_config`] for a reload that changed `global_defs`: the new notifier
    /// goes on with `previous`'s counts (the caller then shuts `previous` down, which
    /// runs what it has queued).
    pub fn from_config_after(config: &Config, previous: &Notifier) -> Result<Self, NotifyError> {
        Self::from_config_counting(config, previous.counters.clone())
    }

    fn from_config_counting(config: &Config, counters: Arc<Counters>) -> Result<Self, NotifyError> {
        let hooks = config
            .vrrp_instances
            .iter()
            .map(|i| {
                (
                    Kind::Instance,
                    i.name.clone(),
                    Hooks::from_config(&i.notify),
                )
            })
            .chain(
                config
                    .sync_groups
                    .iter()
                    .map(|g| (Kind::Group, g.name.clone(), Hooks::from_config(&g.notify))),
            );
        Notifier::start_counting(
            NotifyOptions::from_global(&config.global_defs)?,
            hooks,
            counters,
        )
    }

    /// Queues `event`: its hooks start, and its line is written, in the order of the calls.
    pub fn notify(&self, event: Event) {
        bump(&self.counters.events);
        let queued = Queued {
            event,
            time: SystemTime::now(),
        };
        if let Err(e) = self.tx.try_send(queued) {
            bump(&self.counters.queue_dropped);
            warn!(event = ?e, "notify queue full or closed; event dropped");
        }
    }

    pub fn counters(&self) -> NotifyCounters {
        self.counters.snapshot()
    }

    /// Stops taking events, then waits up to `limit` for the queued ones and their hooks
    /// (each bounded by its timeout). True when everything finished in time; hooks still
    /// running then are killed.
    pub async fn shutdown(self, limit: Duration) -> bool {
        let Notifier { tx, mut worker, .. } = self;
        drop(tx);
        match tokio::time::timeout(limit, &mut worker).await {
            Ok(_) => true,
            Err(_) => {
                // Aborting drops the running hooks' guards, which kill their groups.
                worker.abort();
                false
            }
        }
    }
}

struct Worker {
    hooks: HashMap<(Kind, String), Hooks>,
    format: FifoFormat,
    /// `notify_fifo_script`'s command line, the FIFO's path last.
    fifo_script: Option<Vec<String>>,
    sink: Option<EventSink>,
    user: ScriptUser,
    timeout: Duration,
    router_id: String,
    counters: Arc<Counters>,
    log: Arc<Mutex<LogLimit>>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let mut running = JoinSet::new();
        // Killed (with its process group) when this task ends: a dropped `Running` does.
        let _reader = match self.fifo_script.take() {
            None => None,
            Some(argv) => match script::spawn(argv.clone(), self.user.clone()).await {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(script = %argv[0], "notify_fifo_script {}: {e}", argv[0]);
                    None
                }
            },
        };
        while let Some(Queued { event, time }) = rx.recv().await {
            while running.try_join_next().is_some() {}
            // keepalived's order: the hooks, then the FIFO line.
            self.start_hooks(&event, &mut running).await;
            if let Some(sink) = &mut self.sink {
                let line = match self.format {
                    FifoFormat::Json => event_json(&event, time, &self.router_id),
                    FifoFormat::Keepalived => event_keepalived(&event),
                };
                if sink.send(line.as_bytes()) {
                    bump(&self.counters.sink_written);
                } else {
                    bump(&self.counters.sink_dropped);
                    debug!(kind = %event.kind, name = %event.name, state = %event.state,
                        "notify_fifo: nobody reading; event dropped");
                }
            }
        }
        while running.join_next().await.is_some() {}
    }

    async fn start_hooks(&self, event: &Event, running: &mut JoinSet<()>) {
        let Some(hooks) = self.hooks.get(&(event.kind, event.name.clone())) else {
            return;
        };
        for argv in hooks.commands(event) {
            let what = format!("{} {} {}: {}", event.kind, event.name, event.state, argv[0]);
            match script::spawn(argv, self.user.clone()).await {
                Ok(child) => {
                    bump(&self.counters.hooks_started);
                    let counters = self.counters.clone();
                    let log = self.log.clone();
                    let timeout = self.timeout;
                    running.spawn(async move {
                        let outcome = child.wait(timeout).await;
                        report(&what, &outcome, &counters, &log);
                    });
                }
                Err(e) => report(
                    &what,
                    &RunOutcome::SpawnFailed(e),
                    &self.counters,
                    &self.log,
                ),
            }
        }
    }
}

fn report(what: &str, outcome: &RunOutcome, counters: &Counters, log: &Mutex<LogLimit>) {
    if outcome.success() {
        debug!("notify hook {what}: {outcome}");
        return;
    }
    bump(if matches!(outcome, RunOutcome::TimedOut) {
        &counters.hooks_timed_out
    } else {
        &counters.hooks_failed
    });
    let allowed = log.lock().map(|mut l| l.allow()).unwrap_or(Some(0));
    match allowed {
        Some(0) => warn!("notify hook {what}: {outcome}"),
        Some(suppressed) => {
            warn!("notify hook {what}: {outcome} ({suppressed} hook failures not logged)")
        }
        None => debug!("notify hook {what}: {outcome}"),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        ffi::CString,
        io::{BufRead, BufReader},
        os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
        sync::mpsc as std_mpsc,
        time::UNIX_EPOCH,
    };

    use std::{fs::OpenOptions, time::Instant};

    use super::*;
    use crate::{
        config::vrrp::Notify,
        testutil::{alive, eventually, privileged, TempDir},
        vrrp::fsm::State,
    };

    const WAIT: Duration = Duration::from_secs(10);

    fn options(sink: Option<PathBuf>) -> NotifyOptions {
        NotifyOptions {
            user: ScriptUser::current(),
            timeout: Duration::from_secs(5),
            check_safety: false,
            sink,
            format: FifoFormat::Json,
            fifo_script: None,
            router_id: "lb-test".into(),
            queue_len: 16,
        }
    }

    fn hooks_of(generic: Option<&Path>, master: Option<&Path>) -> Hooks {
        Hooks::from_config(&Notify {
            master: master.map(|p| p.display().to_string()),
            generic: generic.map(|p| format!("{} extra-arg", p.display())),
            ..Notify::default()
        })
    }

    #[test]
    fn generic_arguments_follow_keepalived() {
        let ev = Event::instance("VI_1", NotifyState::Master, 100);
        let cmd = vec!["/etc/lb/notify.sh".to_string(), "--site".into(), "a".into()];
        assert_eq!(
            generic_argv(&cmd, &ev),
            [
                "/etc/lb/notify.sh",
                "--site",
                "a",
                "INSTANCE",
                "VI_1",
                "MASTER",
                "100"
            ]
        );
        // A group's priority is always 0; STOP is its own state.
        let ev = Event::group("VSG_1", NotifyState::Stop);
        assert_eq!(
            generic_argv(&cmd[..1], &ev),
            ["/etc/lb/notify.sh", "GROUP", "VSG_1", "STOP", "0"]
        );
    }

    #[test]
    fn specific_hook_then_generic() {
        let hooks = Hooks::from_config(&Notify {
            master: Some("/bin/m  arg1".into()),
            backup: Some("/bin/b".into()),
            fault: None,
            stop: Some("/bin/s".into()),
            generic: Some("/bin/g".into()),
        });
        assert_eq!(
            hooks.commands(&Event::instance("VI_1", NotifyState::Master, 101)),
            vec![
                vec!["/bin/m".to_string(), "arg1".into()],
                vec![
                    "/bin/g".into(),
                    "INSTANCE".into(),
                    "VI_1".into(),
                    "MASTER".into(),
                    "101".into()
                ],
            ]
        );
        // No notify_fault: only the generic hook.
        assert_eq!(
            hooks
                .commands(&Event::instance("VI_1", NotifyState::Fault, 90))
                .len(),
            1
        );
        assert_eq!(
            hooks.commands(&Event::instance("VI_1", NotifyState::Stop, 90))[0],
            ["/bin/s"]
        );
        assert!(Hooks::default().is_empty());
        assert_eq!(NotifyState::from_fsm(State::Initialize), None);
        assert_eq!(
            NotifyState::from_fsm(State::Fault),
            Some(NotifyState::Fault)
        );
    }

    #[test]
    fn keepalived_line() {
        assert_eq!(
            event_keepalived(&Event::instance("VI_1", NotifyState::Fault, 90)),
            "INSTANCE \"VI_1\" FAULT 90\n"
        );
        assert_eq!(
            event_keepalived(&Event::group("G", NotifyState::Stop)),
            "GROUP \"G\" STOP 0\n"
        );
    }

    #[test]
    fn json_line() {
        let t = UNIX_EPOCH + Duration::from_millis(1_718_000_000_250);
        let line = event_json(&Event::instance("VI_1", NotifyState::Master, 100), t, "lb1");
        assert_eq!(
            line,
            "{\"time\":1718000000.25,\"kind\":\"INSTANCE\",\"name\":\"VI_1\",\"state\":\"MASTER\",\
             \"priority\":100,\"router_id\":\"lb1\"}\n"
        );
        // Odd names stay on one line and round-trip.
        let line = event_json(
            &Event::group("a\"b\nc", NotifyState::Backup),
            UNIX_EPOCH,
            "r\\1",
        );
        assert_eq!(line.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["name"], "a\"b\nc");
        assert_eq!(v["kind"], "GROUP");
        assert_eq!(v["state"], "BACKUP");
        assert_eq!(v["priority"], 0);
        assert_eq!(v["router_id"], "r\\1");
        assert_eq!(v["time"], 0.0);
    }

    #[test]
    fn an_unknown_script_user_is_refused() {
        let e = NotifyOptions::from_global(&GlobalDefs {
            script_user: Some("lb-no-such-user-xyzzy".into()),
            ..GlobalDefs::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[tokio::test]
    async fn unsafe_root_hook_refused() {
        // Under /tmp (world-writable): refused when hooks run as root with the check on.
        let dir = TempDir::new("notify-unsafe");
        let hook = dir.script("hook.sh", "exit 0");
        let mut opts = options(None);
        opts.user = ScriptUser::root();
        opts.check_safety = true;
        let e = Notifier::start(
            opts,
            [(Kind::Instance, "VI_1".into(), hooks_of(None, Some(&hook)))],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                NotifyError::UnsafeScript {
                    hook: "notify_master",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn hooks_receive_keepalived_arguments() {
        let dir = TempDir::new("notify-args");
        let out = dir.path().join("generic.out");
        let mout = dir.path().join("master.out");
        let generic = dir.script("generic.sh", &format!("echo \"$@\" >> {}", out.display()));
        let master = dir.script(
            "master.sh",
            &format!("echo \"master:$#\" >> {}", mout.display()),
        );
        let n = Notifier::start(
            options(None),
            [
                (
                    Kind::Instance,
                    "VI_1".into(),
                    hooks_of(Some(&generic), Some(&master)),
                ),
                (Kind::Group, "VSG_1".into(), hooks_of(Some(&generic), None)),
            ],
        )
        .unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Master, 100));
        n.notify(Event::group("VSG_1", NotifyState::Master));
        n.notify(Event::instance("VI_2", NotifyState::Master, 100)); // no hooks
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert!(
            eventually(WAIT, || read(&out).lines().count() == 2
                && read(&mout).lines().count() == 1)
            .await,
            "generic: {:?}, master: {:?}",
            read(&out),
            read(&mout)
        );
        let mut lines: Vec<String> = read(&out).lines().map(str::to_string).collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "extra-arg GROUP VSG_1 MASTER 0",
                "extra-arg INSTANCE VI_1 MASTER 100"
            ]
        );
        // The specific hook gets no extra arguments.
        assert_eq!(read(&mout), "master:0\n");
        assert!(n.shutdown(WAIT).await);
    }

    #[tokio::test]
    async fn hung_hook_is_killed_after_its_timeout() {
        let dir = TempDir::new("notify-hang");
        let pids = dir.path().join("pids");
        // The shell and the sleep it waits for are both in the hook's process group.
        let hook = dir.script(
            "hang.sh",
            &format!("sleep 1000 &\necho \"$$ $!\" > {}\nwait", pids.display()),
        );
        let mut opts = options(None);
        opts.timeout = Duration::from_millis(300);
        let n = Notifier::start(
            opts,
            [(Kind::Instance, "VI_1".into(), hooks_of(None, Some(&hook)))],
        )
        .unwrap();
        let started = Instant::now();
        n.notify(Event::instance("VI_1", NotifyState::Master, 100));
        let read = || std::fs::read_to_string(&pids).unwrap_or_default();
        assert!(eventually(WAIT, || read().split_whitespace().count() == 2).await);
        let pids: Vec<i32> = read()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(eventually(WAIT, || n.counters().hooks_timed_out == 1).await);
        let elapsed = started.elapsed();
        assert!(
            eventually(WAIT, || pids.iter().all(|p| !alive(*p))).await,
            "still alive: {pids:?}"
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(n.counters().hooks_failed, 0);
        assert!(n.shutdown(WAIT).await);
    }

    #[tokio::test]
    async fn failing_and_missing_hooks_are_counted() {
        let dir = TempDir::new("notify-fail");
        let fails = dir.script("fails.sh", "exit 3");
        let missing = dir.path().join("missing.sh");
        let n = Notifier::start(
            options(None),
            [(
                Kind::Instance,
                "VI_1".into(),
                hooks_of(Some(&missing), Some(&fails)),
            )],
        )
        .unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Master, 100));
        assert!(eventually(WAIT, || n.counters().hooks_failed == 2).await);
        let c = n.counters();
        assert_eq!((c.events, c.hooks_started, c.hooks_timed_out), (1, 1, 0));
        assert!(n.shutdown(WAIT).await);
    }

    #[tokio::test]
    async fn hook_runs_as_script_user() {
        if !privileged("vrrp::notify::hook_runs_as_script_user") {
            return;
        }
        let nobody = ScriptUser::lookup("nobody").unwrap();
        let dir = TempDir::new("notify-user");
        let out = dir.path().join("out");
        // The output file must be writable by nobody; the directory stays 0755.
        std::fs::write(&out, "").unwrap();
        std::fs::set_permissions(
            &out,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
        )
        .unwrap();
        let hook = dir.script(
            "id.sh",
            &format!("echo \"$(id -u) $(id -G)\" >> {}", out.display()),
        );
        let mut opts = options(None);
        opts.user = nobody.clone();
        let n = Notifier::start(
            opts,
            [(Kind::Instance, "VI_1".into(), hooks_of(None, Some(&hook)))],
        )
        .unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Master, 100));
        let read = || std::fs::read_to_string(&out).unwrap_or_default();
        assert!(eventually(WAIT, || !read().is_empty()).await);
        // uid and only the primary group: root's supplementary groups are gone.
        assert_eq!(read().trim(), format!("{} {}", nobody.uid(), nobody.gid()));
        assert!(n.shutdown(WAIT).await);
    }

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// Opens the FIFO for reading (without waiting for a writer), tells `ready`, passes lines
    /// on to `lines` until one contains `until`, then closes it.
    fn reader(
        path: PathBuf,
        until: &'static str,
        ready: std_mpsc::Sender<()>,
        lines: std_mpsc::Sender<String>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let file = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .unwrap();
            ready.send(()).unwrap();
            let mut reader = BufReader::new(file);
            let deadline = Instant::now() + WAIT;
            let mut line = String::new();
            while Instant::now() < deadline {
                match reader.read_line(&mut line) {
                    Ok(_) if line.ends_with('\n') => {
                        let done = line.contains(until);
                        lines.send(std::mem::take(&mut line)).unwrap();
                        if done {
                            return;
                        }
                    }
                    // EOF (no writer yet) or EAGAIN: poll again shortly.
                    Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }

    #[tokio::test]
    async fn keepalived_lines_to_the_fifo_it_makes_read_by_the_fifo_script() {
        let dir = TempDir::new("notify-kfifo");
        let fifo = dir.path().join("events");
        let out = dir.path().join("read");
        // keepalived's FIFO readers are started with the FIFO's path as their last argument.
        // This one never ends by itself (it polls past an end of file), so only the
        // notifier's stop can end it.
        let script = dir.script(
            "reader.sh",
            &format!(
                "exec 3<\"$2\"\nwhile true; do\n  if read -r line <&3; then echo \"$1 $line\" >> {}; \
                 else sleep 0.05; fi\ndone",
                out.display()
            ),
        );
        let mut o = options(Some(fifo.clone()));
        o.format = FifoFormat::Keepalived;
        o.fifo_script = Some(vec![script.display().to_string(), "got".into()]);
        let n = Notifier::start(o, []).unwrap();
        assert!(
            std::fs::symlink_metadata(&fifo).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_fifo()
            }),
            "the FIFO is made at start"
        );
        // Sent at once, before the reader has opened the FIFO: held in the pipe, as
        // keepalived's are, not dropped.
        n.notify(Event::instance("VI_1", NotifyState::Master, 100));
        n.notify(Event::group("VSG_1", NotifyState::Backup));
        let read = || std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            eventually(WAIT, || read().contains("got GROUP \"VSG_1\" BACKUP 0\n")).await,
            "{}",
            read()
        );
        assert_eq!(
            read(),
            "got INSTANCE \"VI_1\" MASTER 100\ngot GROUP \"VSG_1\" BACKUP 0\n"
        );
        assert_eq!(n.counters().sink_dropped, 0);
        // Stopping the notifier kills the reader.
        let running = || {
            std::process::Command::new("pgrep")
                .args(["-f", &script.display().to_string()])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty())
        };
        assert!(running(), "the reader runs while the notifier does");
        assert!(n.shutdown(WAIT).await);
        assert!(
            eventually(WAIT, || !running()).await,
            "the FIFO script outlived its notifier"
        );
    }

    // The test thread blocks on the reader side; the notifier's worker needs another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fifo_stream_drops_without_reader_and_reconnects() {
        let dir = TempDir::new("notify-fifo");
        let fifo = dir.path().join("events");
        mkfifo(&fifo);
        let n = Notifier::start(options(Some(fifo.clone())), []).unwrap();

        // Nobody reading: dropped and counted, never blocking.
        n.notify(Event::instance("VI_1", NotifyState::Backup, 100));
        assert!(eventually(WAIT, || n.counters().sink_dropped == 1).await);

        let (ready_tx, ready) = std_mpsc::channel();
        let (lines_tx, lines) = std_mpsc::channel();
        let first = reader(fifo.clone(), "VSG_1", ready_tx.clone(), lines_tx.clone());
        ready.recv_timeout(WAIT).unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Master, 101));
        n.notify(Event::group("VSG_1", NotifyState::Master));
        let got: Vec<serde_json::Value> = (0..2)
            .map(|_| serde_json::from_str(&lines.recv_timeout(WAIT).unwrap()).unwrap())
            .collect();
        assert_eq!(
            (
                got[0]["name"].as_str(),
                got[0]["state"].as_str(),
                got[0]["priority"].as_u64()
            ),
            (Some("VI_1"), Some("MASTER"), Some(101))
        );
        assert_eq!(got[0]["router_id"], "lb-test");
        assert!(got[0]["time"].as_f64().unwrap() > 1.0e9);
        assert_eq!(
            (got[1]["kind"].as_str(), got[1]["name"].as_str()),
            (Some("GROUP"), Some("VSG_1"))
        );
        first.join().unwrap();

        // The reader left: events are dropped (EPIPE, then ENXIO on reopen). Another test's
        // fork can hold the read end for an instant before its exec closes it, so an event
        // may still get through: keep sending until one is dropped.
        assert!(
            eventually(WAIT, || {
                n.notify(Event::instance("VI_1", NotifyState::Fault, 101));
                n.counters().sink_dropped >= 2
            })
            .await
        );
        // A new reader gets the events from then on (after any that slipped through above).
        let second = reader(fifo.clone(), "\"priority\":90", ready_tx, lines_tx);
        ready.recv_timeout(WAIT).unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Backup, 90));
        let last = loop {
            let line = lines.recv_timeout(WAIT).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["priority"] == 90 {
                break v;
            }
            assert_eq!(v["state"], "FAULT", "{line}");
        };
        assert_eq!(last["state"], "BACKUP");
        second.join().unwrap();
        assert!(n.shutdown(WAIT).await);
    }

    // The test thread blocks on the reader side; the notifier's worker needs another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn datagram_socket_sink() {
        let dir = TempDir::new("notify-dgram");
        let path = dir.path().join("events.sock");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(WAIT)).unwrap();
        let n = Notifier::start(options(Some(path.clone())), []).unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Master, 100));
        let mut buf = [0u8; 1024];
        let len = rx.recv(&mut buf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap();
        assert_eq!(v["state"], "MASTER");
        // Receiver gone: dropped, counted.
        // (Another test's fork may hold the socket for an instant: keep sending.)
        drop(rx);
        assert!(
            eventually(WAIT, || {
                n.notify(Event::instance("VI_1", NotifyState::Backup, 100));
                n.counters().sink_dropped >= 1
            })
            .await,
            "{:?}",
            n.counters()
        );
        assert!(n.shutdown(WAIT).await);
    }

    // The test thread blocks on the reader side; the notifier's worker needs another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_socket_sink() {
        let dir = TempDir::new("notify-stream");
        let path = dir.path().join("events.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let n = Notifier::start(options(Some(path.clone())), []).unwrap();
        n.notify(Event::instance("VI_1", NotifyState::Fault, 100));
        listener.set_nonblocking(true).unwrap();
        let mut conn = None;
        assert!(
            eventually(WAIT, || {
                conn = listener.accept().ok().map(|(c, _)| c);
                conn.is_some()
            })
            .await
        );
        let conn = conn.unwrap();
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["state"], "FAULT");
        assert!(n.shutdown(WAIT).await);
    }
}
