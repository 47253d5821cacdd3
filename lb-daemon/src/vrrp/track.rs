//! keepalived's `vrrp_script` + `track_script`, `track_interface` and `track_file`, the
//! decision apart from the I/O:
//! probes (a task per script, one poller for all interfaces) send results to a small pure
//! [`RiseFall`] state, only its confirmed changes leave the probe as [`TrackEvent`]s, and a pure
//! per-instance aggregate ([`InstanceTracking`]) turns them into the FSM's
//! [`Input::TrackWeight`] and [`Input::SetFault`].
//!
//! # Rise and fall (keepalived `vrrp_scheduler.c`, `vrrp_script_child_thread`)
//!
//! keepalived.conf(5): "rise: required number of successes for OK transition; fall: required
//! number of successes [sic: failures] for KO transition". A script starts in an *init* state
//! (`vrrp_init_script`: `result = rise - 1 /* one success is enough */`) in which the first
//! result decides either way: one success makes it OK, one failure makes it KO
//! (`update_script_priorities(vscript, false)` is called for a failure while
//! `init_state == SCRIPT_INIT_STATE_INIT`). After that it takes `fall` failures in a row to
//! go from OK to KO and `rise` successes in a row to go back; a result of the other kind
//! resets the run. `init_fail` ("assume script initially is in failed state") starts KO
//! instead ([`RiseFall::starting_down`]; the configuration has no such key yet).
//!
//! A run succeeds when it exits with status 0. A run that outlives `timeout` is killed
//! (SIGTERM, then SIGKILL, to its process group) and is a failure, as is one killed by a
//! signal or one that cannot be started (logged at a limited rate). keepalived runs a script
//! every `interval` and skips a tick while the previous run is still going; so do we. Output is
//! discarded.
//!
//! # Weights (keepalived.conf(5), `vrrp_instance`, and `vrrp_track.c`)
//!
//! * weight 0: "go to FAULT state if any of these go down if unweighted";
//! * weight > 0: "its priority will be increased by the weight when the interface is up (for
//!   positive weights)";
//! * weight < 0: "or decreased by the weight's absolute value when the interface is down (for
//!   negative weights)". `track_script`: "The same principle as track_interface can be
//!   applied to track_script entries, except that an unspecified weight means that the default
//!   weight declared in the script will be used (which itself defaults to 0)". So a script's
//!   weight comes from its `track_script` entry when given, else from its `vrrp_script`.
//! * While a script has not reported yet (init state), keepalived's
//!   `initialise_track_script_state` applies no weight, and an unweighted one holds the
//!   instance in INIT (`num_script_init`) rather than Fault: [`Aggregate::pending`]. The FSM
//!   has no such hold, so the runtime should delay [`Input::Startup`] while it is true; each
//!   run ends within `timeout` plus [`KILL_GRACE`](crate::script::KILL_GRACE), so it clears.
//! * The instance's own `interface` is tracked unweighted, as keepalived does unless
//!   `dont_track_primary` ("Ignore VRRP interface faults (default unset)"), which the
//!   configuration does not offer.
//! * Sync-group members: "any track scripts/files configured against member VRRP instances
//!   must have their tracking weights unset (i.e. equal to zero). Any trackers with a non-zero
//!   priority will be ignored" (keepalived.conf(5), `vrrp_sync_group`). [`InstanceTracking`]
//!   drops them (with a warning), which also keeps the FSM's `SyncGroup` from refusing a
//!   non-zero [`Input::TrackWeight`].
//!
//! # Interfaces
//!
//! "Up" is `IFF_UP && IFF_RUNNING` from `SIOCGIFFLAGS` on a socket created by
//! [`spawn_interfaces`], so in the network namespace of the thread that called it. A missing
//! interface is down. The flags are polled every [`LINK_POLL`]: N ioctls per 100 ms cost
//! nothing, a missed netlink notification (ENOBUFS on a busy link table) cannot leave a stale
//! state behind, and 100 ms is far below the 3 s a VRRPv2 backup waits (keepalived itself
//! offers `linkbeat_use_polling`). The first poll reports every interface; later ones only
//! changes (rise = fall = 1, keepalived's behaviour without `interface_up_down_delays`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt, io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tracing::{debug, info, warn};

use super::{
    fsm::Input,
    process::{spawn_processes, ProcessTask, PROCESS_POLL},
};
use crate::{
    config::{
        vrrp::{TrackFile, TrackProcess},
        Config, VrrpInstance, VrrpScript,
    },
    log_limit::{LogLimit, LOG_EVERY},
    script::{check_safety, run_command, RunOutcome, ScriptUser, UserError},
};

/// How often interface flags are read.
pub const LINK_POLL: Duration = Duration::from_millis(100);
/// Confirmed changes waiting for the consumer; a full channel only holds up the probe that
/// wants to send.
pub const EVENT_QUEUE_LEN: usize = 256;

// ---------------------------------------------------------------------------------------------
// Rise/fall: the pure decision
// ---------------------------------------------------------------------------------------------

/// What is known about a tracked script or interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Status {
    /// No result yet (keepalived's init state).
    #[default]
    Unknown,
    Up,
    Down,
    /// A tracked file's number (a missing or unreadable file is 0, as in keepalived).
    Value(i64),
}

impl From<bool> for Status {
    fn from(up: bool) -> Self {
        if up {
            Status::Up
        } else {
            Status::Down
        }
    }
}

/// Counts consecutive results and flips only after `rise` successes or `fall` failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    status: Status,
    /// Results in a row against the current status.
    streak: u32,
}

impl RiseFall {
    /// keepalived's default: the first result decides. `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            status: Status::Unknown,
            streak: 0,
        }
    }

    /// keepalived's `init_fail`: down until `rise` successes.
    pub fn starting_down(rise: u32, fall: u32) -> Self {
        RiseFall {
            status: Status::Down,
            ..RiseFall::new(rise, fall)
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Records one result; `Some(up)` when the status changed (including the first result).
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        let (threshold, flip) = match (self.status, ok) {
            (Status::Unknown | Status::Value(_), _) => (1, true),
            (Status::Up, true) | (Status::Down, false) => (0, false),
            (Status::Up, false) => (self.fall, true),
            (Status::Down, true) => (self.rise, true),
        };
        if !flip {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < threshold {
            return None;
        }
        self.streak = 0;
        self.status = if ok { Status::Up } else { Status::Down };
        Some(ok)
    }
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// A tracked thing. Scripts and interfaces have separate name spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrackKey {
    Script(String),
    Interface(String),
    /// A virtual server's quorum (up while it has it), by [`crate::config::VirtualServer::name`];
    /// the daemon's reconciler reports it, no probe here.
    Service(String),
    /// A `track_file`, by name: its number.
    File(String),
    /// A `vrrp_track_process`, by name: up while its quorum of processes runs.
    Process(String),
}

impl fmt::Display for TrackKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackKey::Script(n) => write!(f, "script {n}"),
            TrackKey::Interface(n) => write!(f, "interface {n}"),
            TrackKey::Service(n) => write!(f, "virtual_server {n}"),
            TrackKey::File(n) => write!(f, "track_file {n}"),
            TrackKey::Process(n) => write!(f, "track_process {n}"),
        }
    }
}

/// A confirmed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackEvent {
    pub key: TrackKey,
    pub status: Status,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("vrrp_script {script:?}: {source}")]
    User {
        script: String,
        #[source]
        source: UserError,
    },
    /// keepalived's `enable_script_security`.
    #[error("vrrp_script {script:?}: refusing to run as root: {reason}")]
    UnsafeScript { script: String, reason: String },
    #[error("vrrp_instance {instance:?}: track_script {script:?} has no vrrp_script")]
    UnknownScript { instance: String, script: String },
    #[error("vrrp_instance {instance:?}: track_file {file:?} has no track_file block")]
    UnknownFile { instance: String, file: String },
    #[error(
        "vrrp_instance {instance:?}: track_process {process:?} has no vrrp_track_process block"
    )]
    UnknownProcess { instance: String, process: String },
    #[error("interface tracking socket: {0}")]
    Socket(#[source] io::Error),
}

// ---------------------------------------------------------------------------------------------
// Script probes
// ---------------------------------------------------------------------------------------------

/// A running `vrrp_script` probe; dropping it stops the probe (and kills a run in progress).
#[derive(Debug)]
pub struct ScriptTask {
    script: VrrpScript,
    user: ScriptUser,
    status: watch::Receiver<Status>,
    handle: JoinHandle<()>,
}

impl ScriptTask {
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }
}

impl Drop for ScriptTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Runs `script` as `user` every `interval`, in its own task, and sends its confirmed
/// changes. The first run starts at once.
pub fn spawn_script(
    script: VrrpScript,
    user: ScriptUser,
    tx: mpsc::Sender<TrackEvent>,
) -> ScriptTask {
    let (status_tx, status) = watch::channel(Status::Unknown);
    let handle = tokio::spawn(script_loop(script.clone(), user.clone(), tx, status_tx));
    ScriptTask {
        script,
        user,
        status,
        handle,
    }
}

async fn script_loop(
    script: VrrpScript,
    user: ScriptUser,
    tx: mpsc::Sender<TrackEvent>,
    status: watch::Sender<Status>,
) {
    let key = TrackKey::Script(script.name.clone());
    let mut state = RiseFall::new(script.rise, script.fall);
    let mut ticker = tokio::time::interval(script.interval);
    // A run longer than the interval skips the ticks it covered (keepalived: "script still
    // running").
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut trouble = LogLimit::new(LOG_EVERY);
    loop {
        ticker.tick().await;
        let outcome = run_command(&script.command, &user, script.timeout).await;
        let ok = outcome.success();
        if !ok {
            // A script that cannot run, or hangs, is a problem of its own; a plain non-zero
            // exit is the script doing its job.
            if matches!(outcome, RunOutcome::SpawnFailed(_) | RunOutcome::TimedOut) {
                if let Some(suppressed) = trouble.allow() {
                    warn!(script = %script.name, suppressed, "vrrp_script {}: {outcome}", script.name);
                }
            } else {
                debug!(script = %script.name, "vrrp_script {}: {outcome}", script.name);
            }
        }
        if let Some(up) = state.record(ok) {
            if up {
                info!(script = %script.name, "vrrp_script {} succeeded", script.name);
            } else {
                warn!(script = %script.name, "vrrp_script {} failed ({outcome})", script.name);
            }
            status.send_replace(state.status());
            if tx
                .send(TrackEvent {
                    key: key.clone(),
                    status: up.into(),
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interface probes
// ---------------------------------------------------------------------------------------------

/// Reads interface flags with SIOCGIFFLAGS.
#[derive(Debug)]
pub struct LinkProbe {
    sock: OwnedFd,
}

impl LinkProbe {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        Ok(LinkProbe {
            sock: crate::os::ioctl_socket()?,
        })
    }

    /// Whether `name` is up and running; a missing interface is down.
    pub fn is_up(&self, name: &str) -> io::Result<bool> {
        let want = libc::IFF_UP | libc::IFF_RUNNING;
        Ok(crate::os::interface_flags(self.sock.as_fd(), name)?.is_some_and(|f| f & want == want))
    }
}

/// The interface poller; dropping it stops the polling.
#[derive(Debug)]
pub struct InterfaceTask {
    names: BTreeSet<String>,
    status: watch::Receiver<HashMap<String, Status>>,
    handle: JoinHandle<()>,
}

impl InterfaceTask {
    pub fn status(&self) -> HashMap<String, Status> {
        self.status.borrow().clone()
    }
}

impl Drop for InterfaceTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Polls `names` every `period` and sends confirmed changes (the first poll reports all).
pub fn spawn_interfaces(
    names: impl IntoIterator<Item = String>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
) -> io::Result<InterfaceTask> {
    let names: BTreeSet<String> = names.into_iter().collect();
    let probe = LinkProbe::new()?;
    let (status_tx, status) = watch::channel(HashMap::new());
    let handle = tokio::spawn(interface_loop(probe, names.clone(), period, tx, status_tx));
    Ok(InterfaceTask {
        names,
        status,
        handle,
    })
}

async fn interface_loop(
    probe: LinkProbe,
    names: BTreeSet<String>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
    status: watch::Sender<HashMap<String, Status>>,
) {
    let mut states: Vec<(String, RiseFall, LogLimit)> = names
        .into_iter()
        .map(|n| (n, RiseFall::new(1, 1), LogLimit::new(LOG_EVERY)))
        .collect();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut changes = Vec::new();
        for (name, state, log) in &mut states {
            let up = probe.is_up(name).unwrap_or_else(|e| {
                if let Some(suppressed) = log.allow() {
                    warn!(interface = %name, suppressed, "track_interface {name}: {e}; counted as down");
                }
                false
            });
            if let Some(up) = state.record(up) {
                if up {
                    info!(interface = %name, "track_interface {name} is up");
                } else {
                    warn!(interface = %name, "track_interface {name} is down");
                }
                changes.push(TrackEvent {
                    key: TrackKey::Interface(name.clone()),
                    status: up.into(),
                });
            }
        }
        if changes.is_empty() {
            continue;
        }
        status.send_replace(
            states
                .iter()
                .map(|(n, s, _)| (n.clone(), s.status()))
                .collect(),
        );
        for change in changes {
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// File probes
// ---------------------------------------------------------------------------------------------

/// The file poller; dropping it stops the polling.
#[derive(Debug)]
pub struct FileTask {
    files: BTreeMap<String, PathBuf>,
    status: watch::Receiver<HashMap<String, Status>>,
    handle: JoinHandle<()>,
}

impl Drop for FileTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Reads every tracked file every `period` (as the interfaces are polled: keepalived
/// follows them with inotify, but a poll of a few small files costs nothing and misses no
/// change that lasts a period, including a file replaced under another name); the first
/// round reports every file, later ones the numbers that changed. The first round is read
/// here, before it returns, so that [`TrackTasks::snapshot`] has every number at once (a
/// reload's new tracking is seeded with it: a weighted file never counts as 0 for a moment).
pub fn spawn_files(
    files: BTreeMap<String, PathBuf>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
) -> FileTask {
    let first: HashMap<String, Status> = files
        .iter()
        .filter_map(|(n, p)| Some((n.clone(), Status::Value(crate::os::read_number_file(p)?))))
        .collect();
    let (status_tx, status) = watch::channel(first);
    let handle = tokio::spawn(file_loop(files.clone(), period, tx, status_tx));
    FileTask {
        files,
        status,
        handle,
    }
}

async fn file_loop(
    files: BTreeMap<String, PathBuf>,
    period: Duration,
    tx: mpsc::Sender<TrackEvent>,
    status: watch::Sender<HashMap<String, Status>>,
) {
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut bad = LogLimit::new(LOG_EVERY);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut changes = Vec::new();
        for (name, path) in &files {
            let Some(value) = crate::os::read_number_file(path) else {
                if let Some(suppressed) = bad.allow() {
                    warn!(file = %path.display(), suppressed, "track_file {name}: a number out of the 32-bit range; ignored");
                }
                continue;
            };
            if last.get(name) != Some(&value) {
                info!(file = %path.display(), value, "track_file {name} reads {value}");
                last.insert(name.clone(), value);
                changes.push(TrackEvent {
                    key: TrackKey::File(name.clone()),
                    status: Status::Value(value),
                });
            }
        }
        if changes.is_empty() {
            continue;
        }
        status.send_replace(
            last.iter()
                .map(|(n, v)| (n.clone(), Status::Value(*v)))
                .collect(),
        );
        for change in changes {
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

/// keepalived's `init_file`: at start, a tracked file that does not exist (or any, with
/// `overwrite`) is written with its number. Only a regular file is written, never through
/// a symbolic link nor into a FIFO (opened without blocking). An error is logged: the file
/// then reads as it is (0 when missing).
pub fn init_track_files(files: &[TrackFile]) {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    for f in files {
        let Some((value, overwrite)) = f.init else {
            continue;
        };
        let existing = std::fs::symlink_metadata(&f.path).ok();
        match &existing {
            Some(_) if !overwrite => continue,
            Some(m) if !m.is_file() => {
                warn!(file = %f.path.display(), "track_file {}: init_file: not a regular file; left alone", f.name);
                continue;
            }
            _ => {}
        }
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&f.path)
            .and_then(|mut file| file.write_all(format!("{value}\n").as_bytes()));
        if let Err(e) = written {
            warn!(file = %f.path.display(), "track_file {}: init_file: {e}", f.name);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// All probes of a configuration
// ---------------------------------------------------------------------------------------------

/// What [`TrackTasks::start`] would refuse in `config` (an undefined script, an unknown user,
/// an unsafe script), for `lb-daemon check`: the same code, without starting anything.
pub fn validate(config: &Config) -> Result<(), TrackError> {
    Tracking::new(config)?;
    for script in &config.vrrp_scripts {
        script_spec(config, script)?;
    }
    Ok(())
}

/// The user a `vrrp_script` runs as: its own `user`, else `global_defs.script_user`, else root.
/// With `enable_script_security` (on unless false), a script run as root must not be
/// replaceable by anyone else ([`check_safety`]).
fn script_spec(config: &Config, script: &VrrpScript) -> Result<ScriptUser, TrackError> {
    let name = script
        .user
        .as_deref()
        .or(config.global_defs.script_user.as_deref());
    let user = ScriptUser::resolve(name).map_err(|source| TrackError::User {
        script: script.name.clone(),
        source,
    })?;
    if user.is_root() && config.global_defs.enable_script_security != Some(false) {
        if let Some(program) = script.command.first() {
            check_safety(Path::new(program)).map_err(|reason| TrackError::UnsafeScript {
                script: script.name.clone(),
                reason,
            })?;
        }
    }
    Ok(user)
}

/// Every probe a configuration needs: the `vrrp_script`s some instance tracks (keepalived runs
/// no others) and one poller for the tracked and primary interfaces. Dropping it stops them.
#[derive(Debug)]
pub struct TrackTasks {
    scripts: HashMap<String, ScriptTask>,
    interfaces: Option<InterfaceTask>,
    files: Option<FileTask>,
    processes: Option<ProcessTask>,
    tx: mpsc::Sender<TrackEvent>,
}

/// A reload's tracking, checked and not yet running (see [`TrackTasks::prepare`]).
pub struct PreparedTracks {
    wanted: HashMap<String, (VrrpScript, ScriptUser)>,
    no_interfaces: bool,
    /// A new interface poller, when the set of interfaces changed.
    fresh: Option<InterfaceTask>,
    no_files: bool,
    /// The files of a new poller, when the set of tracked files changed.
    fresh_files: Option<BTreeMap<String, PathBuf>>,
    /// The process trackers (the poller keeps the unchanged ones' counts and delays).
    processes: BTreeMap<String, TrackProcess>,
}

impl TrackTasks {
    /// Needs a Tokio runtime. Resolves every script user first, so an error starts nothing.
    pub fn start(config: &Config, tx: mpsc::Sender<TrackEvent>) -> Result<Self, TrackError> {
        let mut tasks = TrackTasks {
            scripts: HashMap::new(),
            interfaces: None,
            files: None,
            processes: None,
            tx,
        };
        tasks.reload(config)?;
        Ok(tasks)
    }

    /// Applies a new configuration ([`TrackTasks::prepare`], then [`TrackTasks::commit`]).
    /// An unchanged script (same definition and user) keeps running with its state; a
    /// changed one restarts from its init state. On error nothing changes. Events of
    /// stopped probes may still be queued; a new [`Tracking`] seeded with
    /// [`TrackTasks::snapshot`] gets them right again at the probes' next results.
    pub fn reload(&mut self, config: &Config) -> Result<(), TrackError> {
        let prepared = self.prepare(config)?;
        self.commit(prepared);
        Ok(())
    }

    /// What [`TrackTasks::commit`] will run for `config`: every check that can fail (a
    /// script's user, its safety, the interface socket) is done here, and nothing running
    /// changes. Dropped without a commit, it leaves nothing behind.
    pub fn prepare(&self, config: &Config) -> Result<PreparedTracks, TrackError> {
        let keys = Tracking::new(config)?.keys();
        let mut wanted = HashMap::new();
        for key in &keys {
            if let TrackKey::Script(name) = key {
                // Tracking::new has checked that it exists.
                if let Some(script) = config.vrrp_scripts.iter().find(|s| &s.name == name) {
                    wanted.insert(name.clone(), (script.clone(), script_spec(config, script)?));
                }
            }
        }
        let names: BTreeSet<String> = keys
            .iter()
            .filter_map(|k| match k {
                TrackKey::Interface(n) => Some(n.clone()),
                TrackKey::Script(_)
                | TrackKey::Service(_)
                | TrackKey::File(_)
                | TrackKey::Process(_) => None,
            })
            .collect();
        // The tracked files, each under its name, with what a new poller would read.
        let files: BTreeMap<String, PathBuf> = keys
            .iter()
            .filter_map(|k| match k {
                TrackKey::File(n) => config
                    .track_files
                    .iter()
                    .find(|f| &f.name == n)
                    .map(|f| (n.clone(), f.path.clone())),
                _ => None,
            })
            .collect();
        let processes: BTreeMap<String, TrackProcess> = keys
            .iter()
            .filter_map(|k| match k {
                TrackKey::Process(n) => config
                    .track_processes
                    .iter()
                    .find(|p| &p.name == n)
                    .map(|p| (n.clone(), p.clone())),
                _ => None,
            })
            .collect();
        // Started at commit, not here: a poller sends into the live channel, and a refused
        // reload must not have told the instances another file's number.
        let keep_files = matches!(&self.files, Some(task) if task.files == files);
        let fresh_files = (!files.is_empty() && !keep_files).then_some(files.clone());

        let keep = matches!(&self.interfaces, Some(task) if task.names == names);
        let fresh = if names.is_empty() || keep {
            None
        } else {
            Some(
                spawn_interfaces(names.clone(), LINK_POLL, self.tx.clone())
                    .map_err(TrackError::Socket)?,
            )
        };
        Ok(PreparedTracks {
            wanted,
            no_interfaces: names.is_empty(),
            fresh,
            no_files: files.is_empty(),
            fresh_files,
            processes,
        })
    }

    /// Puts a [`TrackTasks::prepare`]d set in place; nothing here can fail.
    pub fn commit(&mut self, p: PreparedTracks) {
        if p.no_interfaces {
            self.interfaces = None;
        } else if let Some(task) = p.fresh {
            self.interfaces = Some(task);
        }
        if p.no_files {
            self.files = None;
        } else if let Some(files) = p.fresh_files {
            self.files = Some(spawn_files(files, LINK_POLL, self.tx.clone()));
        }
        if p.processes.is_empty() {
            self.processes = None;
        } else if let Some(task) = &self.processes {
            task.reconfigure(&p.processes);
        } else {
            self.processes = Some(spawn_processes(&p.processes, PROCESS_POLL, self.tx.clone()));
        }
        let wanted = p.wanted;
        self.scripts.retain(|name, task| {
            wanted
                .get(name)
                .is_some_and(|(s, u)| *s == task.script && *u == task.user)
        });
        for (name, (script, user)) in wanted {
            if !self.scripts.contains_key(&name) {
                let task = spawn_script(script, user, self.tx.clone());
                self.scripts.insert(name, task);
            }
        }
    }

    /// The current status of every probe.
    pub fn snapshot(&self) -> HashMap<TrackKey, Status> {
        let mut out: HashMap<TrackKey, Status> = self
            .scripts
            .iter()
            .map(|(n, t)| (TrackKey::Script(n.clone()), t.status()))
            .collect();
        if let Some(task) = &self.interfaces {
            out.extend(
                task.status()
                    .into_iter()
                    .map(|(n, s)| (TrackKey::Interface(n), s)),
            );
        }
        if let Some(task) = &self.files {
            out.extend(
                task.status
                    .borrow()
                    .iter()
                    .map(|(n, s)| (TrackKey::File(n.clone()), *s)),
            );
        }
        if let Some(task) = &self.processes {
            out.extend(
                task.status()
                    .into_iter()
                    .map(|(n, s)| (TrackKey::Process(n), s)),
            );
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Aggregation: the pure per-instance decision
// ---------------------------------------------------------------------------------------------

/// One tracked thing of an instance and its effective weight (0 = Fault while down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackEntry {
    pub key: TrackKey,
    pub weight: i32,
    /// keepalived's `reverse`: the adjustment goes the other way (a weighted entry), or the
    /// fault comes while up (an unweighted one).
    pub reverse: bool,
}

/// keepalived's bounds of a tracked file's adjustment (`weight_range`): below -253 the
/// instance faults; above 253 it is 253.
const FILE_ADJUST: std::ops::RangeInclusive<i64> = -253..=253;

/// What an instance's tracked things add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// For [`Input::TrackWeight`].
    pub weight: i32,
    /// For [`Input::SetFault`]: an unweighted thing is down.
    pub fault: bool,
    /// An unweighted thing has not reported yet: hold [`Input::Startup`].
    pub pending: bool,
}

/// keepalived's sign rules over `entries`, with `status` giving each one's state.
///
/// * Up or down (scripts, interfaces, quorums): unweighted, Fault while down (`reverse`:
///   while up); a positive weight adds while up, a negative one while down; `reverse`
///   subtracts what would be added.
/// * A file's number `v` (`vrrp_track.c`, `process_update_vrrp_track_file_status`):
///   unweighted, Fault while `v != 0` (`reverse`: while `v == 0`); weighted, `v x weight`
///   (negated with `reverse`) is added, at most 253, and below -253 is Fault.
pub fn aggregate(entries: &[TrackEntry], status: impl Fn(&TrackKey) -> Status) -> Aggregate {
    let mut out = Aggregate::default();
    for entry in entries {
        let (w, r) = (entry.weight, entry.reverse);
        let sign = if r { -1 } else { 1 };
        match status(&entry.key) {
            Status::Unknown if w == 0 => out.pending = true,
            Status::Unknown => {}
            Status::Up | Status::Down => {
                let up = status(&entry.key) == Status::Up;
                if w == 0 {
                    out.fault |= up == r;
                } else if (w > 0) == up {
                    out.weight += w * sign;
                }
            }
            Status::Value(v) if w == 0 => out.fault |= (v != 0) != r,
            Status::Value(v) => {
                let adjust = v.saturating_mul(i64::from(w)).saturating_mul(sign.into());
                if adjust < *FILE_ADJUST.start() {
                    out.fault = true;
                } else {
                    out.weight += adjust.min(*FILE_ADJUST.end()) as i32;
                }
            }
        }
    }
    out
}

/// One instance's tracked things, their last known state, and what the FSM was last told.
#[derive(Debug, Clone)]
pub struct InstanceTracking {
    name: String,
    entries: Vec<TrackEntry>,
    status: HashMap<TrackKey, Status>,
    /// What the FSM holds: it starts with weight 0 and no fault.
    sent: (i32, bool),
}

impl InstanceTracking {
    pub fn new(name: impl Into<String>, entries: Vec<TrackEntry>) -> Self {
        InstanceTracking {
            name: name.into(),
            entries,
            status: HashMap::new(),
            sent: (0, false),
        }
    }

    /// The instance's primary interface (unweighted), its `track_interface`s (unweighted unless
    /// given a weight), its `track_script`s (the entry's weight, else the script's) and its
    /// `track_virtual_server`s (unweighted unless given a weight: Fault without quorum). In a
    /// sync group, weighted entries are ignored, as keepalived does.
    pub fn for_instance(
        instance: &VrrpInstance,
        scripts: &[VrrpScript],
        files: &[TrackFile],
        processes: &[TrackProcess],
        in_sync_group: bool,
    ) -> Result<Self, TrackError> {
        let mut entries = vec![TrackEntry {
            key: TrackKey::Interface(instance.interface.clone()),
            weight: 0,
            reverse: false,
        }];
        for t in &instance.track_interface {
            entries.push(TrackEntry {
                key: TrackKey::Interface(t.name.clone()),
                weight: t.weight.unwrap_or(0),
                reverse: t.reverse.unwrap_or(false),
            });
        }
        for t in &instance.track_script {
            let script = scripts.iter().find(|s| s.name == t.name).ok_or_else(|| {
                TrackError::UnknownScript {
                    instance: instance.name.clone(),
                    script: t.name.clone(),
                }
            })?;
            entries.push(TrackEntry {
                key: TrackKey::Script(t.name.clone()),
                weight: t.weight.unwrap_or(script.weight),
                reverse: t.reverse.unwrap_or(script.reverse),
            });
        }
        for t in &instance.track_file {
            let file =
                files
                    .iter()
                    .find(|f| f.name == t.name)
                    .ok_or_else(|| TrackError::UnknownFile {
                        instance: instance.name.clone(),
                        file: t.name.clone(),
                    })?;
            entries.push(TrackEntry {
                key: TrackKey::File(t.name.clone()),
                weight: t.weight.unwrap_or(file.weight),
                reverse: t.reverse.unwrap_or(file.reverse),
            });
        }
        for t in &instance.track_process {
            let p = processes.iter().find(|p| p.name == t.name).ok_or_else(|| {
                TrackError::UnknownProcess {
                    instance: instance.name.clone(),
                    process: t.name.clone(),
                }
            })?;
            entries.push(TrackEntry {
                key: TrackKey::Process(t.name.clone()),
                weight: t.weight.unwrap_or(p.weight),
                reverse: t.reverse.unwrap_or(p.reverse),
            });
        }
        for t in &instance.track_virtual_server {
            entries.push(TrackEntry {
                key: TrackKey::Service(t.name.clone()),
                weight: t.weight.unwrap_or(0),
                reverse: t.reverse.unwrap_or(false),
            });
        }
        if in_sync_group {
            entries.retain(|e| {
                if e.weight != 0 {
                    warn!(
                        instance = %instance.name,
                        "{}: weight {} ignored: vrrp_sync_group members track without weights",
                        e.key, e.weight
                    );
                }
                e.weight == 0
            });
        }
        Ok(InstanceTracking::new(instance.name.clone(), entries))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn entries(&self) -> &[TrackEntry] {
        &self.entries
    }

    pub fn tracks(&self, key: &TrackKey) -> bool {
        self.entries.iter().any(|e| &e.key == key)
    }

    pub fn status(&self, key: &TrackKey) -> Status {
        self.status.get(key).copied().unwrap_or_default()
    }

    pub fn aggregate(&self) -> Aggregate {
        aggregate(&self.entries, |k| self.status(k))
    }

    /// Whether [`Input::Startup`] should wait (see [`Aggregate::pending`]).
    pub fn pending(&self) -> bool {
        self.aggregate().pending
    }

    /// Takes the probes' current states (after a reload, say); returns nothing by itself:
    /// call [`InstanceTracking::inputs`].
    pub fn seed(&mut self, snapshot: &HashMap<TrackKey, Status>) {
        for entry in &self.entries {
            if let Some(s) = snapshot.get(&entry.key) {
                self.status.insert(entry.key.clone(), *s);
            }
        }
    }

    /// Records a confirmed change and returns the FSM inputs it calls for.
    pub fn set(&mut self, key: &TrackKey, up: bool) -> Vec<Input> {
        self.set_status(key, up.into())
    }

    /// [`InstanceTracking::set`] for any status (a file's number).
    pub fn set_status(&mut self, key: &TrackKey, status: Status) -> Vec<Input> {
        if !self.tracks(key) {
            return Vec::new();
        }
        self.status.insert(key.clone(), status);
        self.inputs()
    }

    /// The whole aggregate as inputs, whatever was sent before: for a state machine that
    /// may hold another (one just built, or one whose tracking list a reload changed). The
    /// weight first, so an instance leaving Fault does so with its final priority.
    pub fn state_inputs(&mut self) -> Vec<Input> {
        let now = self.aggregate();
        self.sent = (now.weight, now.fault);
        vec![Input::TrackWeight(now.weight), Input::SetFault(now.fault)]
    }

    /// The inputs that bring the FSM to the current aggregate: the weight first, so an
    /// instance leaving Fault does so with its final priority.
    pub fn inputs(&mut self) -> Vec<Input> {
        let now = self.aggregate();
        let mut out = Vec::new();
        if now.weight != self.sent.0 {
            out.push(Input::TrackWeight(now.weight));
        }
        if now.fault != self.sent.1 {
            out.push(Input::SetFault(now.fault));
        }
        self.sent = (now.weight, now.fault);
        out
    }
}

/// The [`InstanceTracking`] of every instance of a configuration.
#[derive(Debug, Clone)]
pub struct Tracking {
    instances: Vec<InstanceTracking>,
}

impl Tracking {
    pub fn new(config: &Config) -> Result<Self, TrackError> {
        let grouped: BTreeSet<&str> = config
            .sync_groups
            .iter()
            .flat_map(|g| g.members.iter().map(String::as_str))
            .collect();
        let instances = config
            .vrrp_instances
            .iter()
            .map(|i| {
                InstanceTracking::for_instance(
                    i,
                    &config.vrrp_scripts,
                    &config.track_files,
                    &config.track_processes,
                    grouped.contains(i.name.as_str()),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Tracking { instances })
    }

    /// Everything some instance tracks: what the probes must watch.
    pub fn keys(&self) -> BTreeSet<TrackKey> {
        self.instances
            .iter()
            .flat_map(|i| i.entries.iter().map(|e| e.key.clone()))
            .collect()
    }

    pub fn instance(&self, name: &str) -> Option<&InstanceTracking> {
        self.instances.iter().find(|i| i.name == name)
    }

    pub fn instances(&self) -> &[InstanceTracking] {
        &self.instances
    }

    pub fn seed(&mut self, snapshot: &HashMap<TrackKey, Status>) {
        for i in &mut self.instances {
            i.seed(snapshot);
        }
    }

    /// [`InstanceTracking::state_inputs`] of the instance named `name` (none if it tracks
    /// nothing known here).
    pub fn state_inputs(&mut self, name: &str) -> Vec<Input> {
        self.instances
            .iter_mut()
            .find(|i| i.name == name)
            .map(InstanceTracking::state_inputs)
            .unwrap_or_default()
    }

    /// The inputs every instance needs now, e.g. before start-up.
    pub fn inputs(&mut self) -> Vec<(String, Input)> {
        self.instances
            .iter_mut()
            .flat_map(|i| {
                let name = i.name.clone();
                i.inputs()
                    .into_iter()
                    .map(move |input| (name.clone(), input))
            })
            .collect()
    }

    /// Applies a confirmed change; returns `(instance name, input)` pairs in order.
    pub fn on_event(&mut self, event: &TrackEvent) -> Vec<(String, Input)> {
        self.instances
            .iter_mut()
            .flat_map(|i| {
                let name = i.name.clone();
                i.set_status(&event.key, event.status)
                    .into_iter()
                    .map(move |input| (name.clone(), input))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::vrrp::Tracked;
    use crate::testutil::{eventually, privileged, TempDir};

    const WAIT: Duration = Duration::from_secs(10);

    fn script(name: &str, weight: i32) -> VrrpScript {
        VrrpScript {
            name: name.into(),
            command: vec!["/bin/true".into()],
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
            weight,
            rise: 1,
            fall: 1,
            user: None,
            reverse: false,
        }
    }

    fn key_s(n: &str) -> TrackKey {
        TrackKey::Script(n.into())
    }
    fn key_i(n: &str) -> TrackKey {
        TrackKey::Interface(n.into())
    }

    #[test]
    fn first_result_decides() {
        let mut rf = RiseFall::new(3, 3);
        assert_eq!(rf.status(), Status::Unknown);
        assert_eq!(rf.record(true), Some(true));
        assert_eq!(rf.status(), Status::Up);
        let mut rf = RiseFall::new(3, 3);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.status(), Status::Down);
    }

    #[test]
    fn rise_and_fall_count_runs() {
        let mut rf = RiseFall::new(2, 3);
        rf.record(true);
        // fall = 3: two failures are not enough, and a success resets the run.
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(false));
        assert_eq!(rf.status(), Status::Down);
        assert_eq!(rf.record(false), None);
        // rise = 2, reset by a failure.
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));
        assert_eq!(rf.record(true), None);
        // rise = fall = 1 follows every result.
        let mut rf = RiseFall::new(0, 1);
        assert_eq!(
            [true, false, false, true].map(|ok| rf.record(ok)),
            [Some(true), Some(false), None, Some(true)]
        );
    }

    #[test]
    fn init_fail_needs_rise_successes() {
        let mut rf = RiseFall::starting_down(3, 1);
        assert_eq!(rf.status(), Status::Down);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), None);
        assert_eq!(rf.record(true), Some(true));
    }

    #[test]
    fn weight_signs() {
        let entries = vec![
            TrackEntry {
                key: key_s("plus"),
                weight: 10,
                reverse: false,
            },
            TrackEntry {
                key: key_s("minus"),
                weight: -20,
                reverse: false,
            },
            TrackEntry {
                key: key_i("eth1"),
                weight: 0,
                reverse: false,
            },
        ];
        let agg = |plus, minus, eth1| {
            aggregate(&entries, |k| match k {
                TrackKey::Script(n) if n == "plus" => plus,
                TrackKey::Script(_) => minus,
                TrackKey::Interface(_) => eth1,
                TrackKey::Service(_) | TrackKey::File(_) | TrackKey::Process(_) => Unknown,
            })
        };
        use Status::*;
        // Positive: added while it SUCCEEDS. Negative: added while it FAILS.
        assert_eq!(
            agg(Up, Up, Up),
            Aggregate {
                weight: 10,
                fault: false,
                pending: false
            }
        );
        assert_eq!(agg(Down, Up, Up).weight, 0);
        assert_eq!(agg(Up, Down, Up).weight, -10);
        assert_eq!(agg(Down, Down, Up).weight, -20);
        // Unweighted: Fault while down, nothing to the weight.
        assert_eq!(
            agg(Up, Up, Down),
            Aggregate {
                weight: 10,
                fault: true,
                pending: false
            }
        );
        // Not reported yet: no weight either way; unweighted holds start-up.
        assert_eq!(
            agg(Unknown, Unknown, Unknown),
            Aggregate {
                weight: 0,
                fault: false,
                pending: true
            }
        );
        assert_eq!(agg(Unknown, Unknown, Up), Aggregate::default());
    }

    fn instance(track_script: Vec<Tracked>, track_interface: Vec<Tracked>) -> VrrpInstance {
        let text = r#"
[dataplane]
interface = "eth0"

[[vrrp_script]]
name = "chk"
script = "/bin/true"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 1
priority = 100
virtual_ipaddress = ["192.0.2.1"]

[[virtual_server]]
ip = "192.0.2.1"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
"#;
        let mut c = Config::parse(Path::new("t.toml"), text).unwrap();
        let mut i = c.vrrp_instances.remove(0);
        i.track_script = track_script;
        i.track_interface = track_interface;
        i
    }

    fn tracked(name: &str, weight: Option<i32>) -> Tracked {
        Tracked {
            name: name.into(),
            weight,
            reverse: None,
        }
    }

    #[test]
    fn weight_precedence_and_primary_interface() {
        let scripts = [script("a", -30), script("b", 0), script("c", 5)];
        let inst = instance(
            vec![
                tracked("a", None),
                tracked("b", None),
                tracked("c", Some(-7)),
            ],
            vec![tracked("eth1", None), tracked("eth2", Some(15))],
        );
        let t = InstanceTracking::for_instance(&inst, &scripts, &[], &[], false).unwrap();
        assert_eq!(
            t.entries(),
            [
                TrackEntry {
                    key: key_i("eth0"),
                    weight: 0,
                    reverse: false
                },
                TrackEntry {
                    key: key_i("eth1"),
                    weight: 0,
                    reverse: false
                },
                TrackEntry {
                    key: key_i("eth2"),
                    weight: 15,
                    reverse: false
                },
                // The script's weight when the entry gives none...
                TrackEntry {
                    key: key_s("a"),
                    weight: -30,
                    reverse: false
                },
                TrackEntry {
                    key: key_s("b"),
                    weight: 0,
                    reverse: false
                },
                // ...the entry's when it does.
                TrackEntry {
                    key: key_s("c"),
                    weight: -7,
                    reverse: false
                },
            ]
        );
        // Sync-group members keep only unweighted entries.
        let g = InstanceTracking::for_instance(&inst, &scripts, &[], &[], true).unwrap();
        assert!(g.entries().iter().all(|e| e.weight == 0));
        assert_eq!(g.entries().len(), 3);
        // A track_virtual_server entry: Fault without a weight, the weight with one.
        let mut svc = instance(vec![], vec![]);
        svc.track_virtual_server = vec![
            tracked("192.0.2.1:80/TCP", None),
            tracked("192.0.2.1:443/TCP", Some(-40)),
        ];
        let mut t = InstanceTracking::for_instance(&svc, &scripts, &[], &[], false).unwrap();
        assert_eq!(
            t.entries()[1..],
            [
                TrackEntry {
                    key: TrackKey::Service("192.0.2.1:80/TCP".into()),
                    weight: 0,
                    reverse: false
                },
                TrackEntry {
                    key: TrackKey::Service("192.0.2.1:443/TCP".into()),
                    weight: -40,
                    reverse: false
                },
            ]
        );
        let https = TrackKey::Service("192.0.2.1:443/TCP".into());
        let http = TrackKey::Service("192.0.2.1:80/TCP".into());
        assert_eq!(t.set(&https, false), [Input::TrackWeight(-40)]);
        assert_eq!(t.set(&http, false), [Input::SetFault(true)]);
        assert_eq!(t.set(&http, true), [Input::SetFault(false)]);
        assert_eq!(t.set(&https, true), [Input::TrackWeight(0)]);
        // A track_script without a vrrp_script is an error.
        let bad = instance(vec![tracked("zz", None)], vec![]);
        assert!(matches!(
            InstanceTracking::for_instance(&bad, &scripts, &[], &[], false),
            Err(TrackError::UnknownScript { .. })
        ));
    }

    #[test]
    fn inputs_only_on_change_weight_first() {
        let mut t = InstanceTracking::new(
            "VI_1",
            vec![
                TrackEntry {
                    key: key_i("eth0"),
                    weight: 0,
                    reverse: false,
                },
                TrackEntry {
                    key: key_s("chk"),
                    weight: 0,
                    reverse: false,
                },
                TrackEntry {
                    key: key_s("w"),
                    weight: -20,
                    reverse: false,
                },
                TrackEntry {
                    key: key_s("p"),
                    weight: 5,
                    reverse: false,
                },
            ],
        );
        assert!(t.pending());
        assert_eq!(t.inputs(), []);
        assert_eq!(t.set(&key_i("eth0"), true), []);
        assert_eq!(t.set(&key_s("chk"), true), []);
        assert!(!t.pending());
        assert_eq!(t.set(&key_s("p"), true), [Input::TrackWeight(5)]);
        assert_eq!(t.set(&key_s("p"), true), []);
        assert_eq!(t.set(&key_s("w"), false), [Input::TrackWeight(-15)]);
        assert_eq!(t.set(&key_s("chk"), false), [Input::SetFault(true)]);
        assert_eq!(t.set(&key_i("eth0"), false), []);
        assert_eq!(t.set(&key_s("chk"), true), []);
        assert_eq!(t.set(&key_s("w"), true), [Input::TrackWeight(5)]);
        // Both change at once: the weight first, then leaving Fault.
        let mut snapshot = HashMap::new();
        snapshot.insert(key_i("eth0"), Status::Up);
        snapshot.insert(key_s("p"), Status::Down);
        t.seed(&snapshot);
        assert_eq!(t.inputs(), [Input::TrackWeight(0), Input::SetFault(false)]);
        // Not ours: nothing.
        assert_eq!(t.set(&key_s("other"), false), []);
    }

    #[test]
    fn tracking_routes_events_to_instances() {
        let text = r#"
[global_defs]
enable_script_security = false

[dataplane]
interface = "eth0"

[[vrrp_script]]
name = "chk"
script = "/bin/true"
weight = -10

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 1
priority = 100
virtual_ipaddress = ["192.0.2.1"]
track_script = ["chk"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 2
priority = 100
virtual_ipaddress = ["192.0.2.2"]
track_script = ["chk"]

[[vrrp_sync_group]]
name = "G"
group = ["VI_2"]

[[virtual_server]]
ip = "192.0.2.1"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"

[[virtual_server]]
ip = "192.0.2.2"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
"#;
        let c = Config::parse(Path::new("t.toml"), text).unwrap();
        let mut t = Tracking::new(&c).unwrap();
        assert_eq!(
            t.keys(),
            [key_i("eth0"), key_i("eth1"), key_s("chk")]
                .into_iter()
                .collect()
        );
        // VI_2 is in a sync group: its weighted script is ignored.
        assert_eq!(
            t.on_event(&TrackEvent {
                key: key_s("chk"),
                status: false.into(),
            }),
            [("VI_1".to_string(), Input::TrackWeight(-10))]
        );
        assert_eq!(
            t.on_event(&TrackEvent {
                key: key_i("eth1"),
                status: false.into(),
            }),
            [("VI_2".to_string(), Input::SetFault(true))]
        );
    }

    async fn next(rx: &mut mpsc::Receiver<TrackEvent>) -> TrackEvent {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no event in time")
            .expect("channel closed")
    }

    #[tokio::test]
    async fn script_probe_reports_confirmed_changes() {
        let dir = TempDir::new("track-script");
        let flag = dir.path().join("ok");
        let log = dir.path().join("runs");
        // Succeeds while the flag file exists, and logs each result before exiting.
        let path = dir.script(
            "chk.sh",
            &format!(
                "if test -e {flag}; then echo ok >> {log}; exit 0; fi\necho fail >> {log}; exit 1",
                flag = flag.display(),
                log = log.display()
            ),
        );
        std::fs::write(&flag, "").unwrap();
        let mut s = script("chk", 0);
        s.command = vec![path.display().to_string()];
        s.rise = 2;
        s.fall = 3;
        let (tx, mut rx) = mpsc::channel(8);
        let task = spawn_script(s, ScriptUser::current(), tx);
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("chk"),
                status: true.into(),
            }
        );
        assert_eq!(task.status(), Status::Up);
        // How many results of a kind the log ends with (runs go on after an event, but only
        // add to that run).
        let tail = |kind: &str| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines().rev().take_while(|l| *l == kind).count()
        };
        std::fs::remove_file(&flag).unwrap();
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("chk"),
                status: false.into(),
            }
        );
        assert!(tail("fail") >= 3, "fell after {} failures", tail("fail"));
        std::fs::write(&flag, "").unwrap();
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("chk"),
                status: true.into(),
            }
        );
        assert!(tail("ok") >= 2, "rose after {} successes", tail("ok"));
        assert_eq!(task.status(), Status::Up);
    }

    #[tokio::test]
    async fn unstartable_or_hung_script_fails() {
        let dir = TempDir::new("track-fail");
        let (tx, mut rx) = mpsc::channel(8);
        let mut missing = script("missing", 0);
        missing.command = vec![dir.path().join("nope.sh").display().to_string()];
        let _a = spawn_script(missing, ScriptUser::current(), tx.clone());
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("missing"),
                status: false.into(),
            }
        );

        let hang = dir.script("hang.sh", "exec sleep 1000");
        let mut hung = script("hung", 0);
        hung.command = vec![hang.display().to_string()];
        hung.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let _b = spawn_script(hung, ScriptUser::current(), tx);
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("hung"),
                status: false.into(),
            }
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn script_runs_as_its_user() {
        if !privileged("vrrp::track::script_runs_as_its_user") {
            return;
        }
        let nobody = ScriptUser::lookup("nobody").unwrap();
        let dir = TempDir::new("track-user");
        let path = dir.script("me.sh", &format!("test \"$(id -u)\" = {}", nobody.uid()));
        let mut s = script("me", 0);
        s.command = vec![path.display().to_string()];
        let (tx, mut rx) = mpsc::channel(8);
        let _t = spawn_script(s.clone(), nobody, tx.clone());
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("me"),
                status: true.into(),
            }
        );
        // The same script as root fails its test.
        s.name = "root".into();
        let _r = spawn_script(s, ScriptUser::root(), tx);
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: key_s("root"),
                status: false.into(),
            }
        );
    }

    #[tokio::test]
    async fn interfaces_are_polled() {
        let probe = LinkProbe::new().unwrap();
        assert!(!probe.is_up("lbnosuch0").unwrap());
        assert!(probe.is_up("").is_err());
        assert!(probe.is_up("a-name-far-too-long-for-linux").is_err());
        let (tx, mut rx) = mpsc::channel(8);
        let task = spawn_interfaces(
            ["lo".to_string(), "lbnosuch0".to_string()],
            Duration::from_millis(20),
            tx,
        )
        .unwrap();
        let mut got = vec![next(&mut rx).await, next(&mut rx).await];
        got.sort_by(|a, b| a.key.cmp(&b.key));
        // lo is up and running wherever the tests run; a missing interface is down.
        assert_eq!(
            got,
            [
                TrackEvent {
                    key: key_i("lbnosuch0"),
                    status: false.into(),
                },
                TrackEvent {
                    key: key_i("lo"),
                    status: probe.is_up("lo").unwrap().into(),
                },
            ]
        );
        assert!(eventually(WAIT, || task.status().len() == 2).await);
        // Nothing more while nothing changes.
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn tasks_follow_the_configuration() {
        let dir = TempDir::new("track-tasks");
        let ok = dir.script("ok.sh", "exit 0");
        let text = format!(
            r#"
[global_defs]
enable_script_security = false

[dataplane]
interface = "lo"

[[vrrp_script]]
name = "chk"
script = "{}"
interval = 0.05

[[vrrp_script]]
name = "unused"
script = "/nonexistent"

[[vrrp_instance]]
name = "VI_1"
interface = "lo"
virtual_router_id = 1
priority = 100
virtual_ipaddress = ["192.0.2.1"]
track_script = ["chk"]

[[virtual_server]]
ip = "192.0.2.1"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
"#,
            ok.display()
        );
        // Scripts default to root, which only root can switch to.
        if !privileged("vrrp::track::tasks_follow_the_configuration") {
            return;
        }
        let mut c = Config::parse(Path::new("t.toml"), &text).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut tasks = TrackTasks::start(&c, tx).unwrap();
        let mut tracking = Tracking::new(&c).unwrap();
        // Only the tracked script runs; lo is polled.
        let mut seen = BTreeSet::new();
        while seen.len() < 2 {
            let ev = next(&mut rx).await;
            tracking.on_event(&ev);
            seen.insert(ev.key);
        }
        assert_eq!(seen, [key_s("chk"), key_i("lo")].into_iter().collect());
        assert!(!tracking.instances()[0].pending());
        // An unchanged reload keeps the probe and its state.
        tasks.reload(&c).unwrap();
        assert_eq!(tasks.snapshot().get(&key_s("chk")), Some(&Status::Up));
        let mut fresh = Tracking::new(&c).unwrap();
        fresh.seed(&tasks.snapshot());
        assert!(!fresh.instances()[0].pending());
        // An unknown script user is refused and changes nothing.
        c.global_defs.script_user = Some("lb-no-such-user-xyzzy".into());
        assert!(matches!(tasks.reload(&c), Err(TrackError::User { .. })));
        assert_eq!(tasks.snapshot().get(&key_s("chk")), Some(&Status::Up));
    }

    #[test]
    fn reverse_turns_each_rule_around() {
        let entry = |weight, reverse| {
            vec![TrackEntry {
                key: key_s("s"),
                weight,
                reverse,
            }]
        };
        let agg = |e: &[TrackEntry], st| aggregate(e, |_| st);
        use Status::*;
        // Unweighted: Fault while down; reversed, while up.
        assert!(agg(&entry(0, false), Down).fault && !agg(&entry(0, false), Up).fault);
        assert!(agg(&entry(0, true), Up).fault && !agg(&entry(0, true), Down).fault);
        // Positive: +w while up; reversed, -w while up.
        assert_eq!(agg(&entry(10, false), Up).weight, 10);
        assert_eq!(agg(&entry(10, true), Up).weight, -10);
        assert_eq!(agg(&entry(10, true), Down).weight, 0);
        // Negative: -w while down; reversed, +|w| while down.
        assert_eq!(agg(&entry(-10, false), Down).weight, -10);
        assert_eq!(agg(&entry(-10, true), Down).weight, 10);
        assert_eq!(agg(&entry(-10, true), Up).weight, 0);
        // Not known yet: an unweighted entry holds the start either way.
        assert!(agg(&entry(0, true), Unknown).pending);
    }

    #[test]
    fn track_file_numbers_as_keepalived_counts_them() {
        let file = |weight, reverse| {
            vec![TrackEntry {
                key: TrackKey::File("f".into()),
                weight,
                reverse,
            }]
        };
        let agg = |e: &[TrackEntry], v| aggregate(e, |_| Status::Value(v));
        // Unweighted: Fault while not 0; reversed, while 0.
        assert!(agg(&file(0, false), 3).fault && !agg(&file(0, false), 0).fault);
        assert!(agg(&file(0, true), 0).fault && !agg(&file(0, true), -1).fault);
        // Weighted: number x weight, negated when reversed, at most 253, Fault below -253.
        assert_eq!(agg(&file(1, false), 20).weight, 20);
        assert_eq!(agg(&file(-2, false), 20).weight, -40);
        assert_eq!(agg(&file(2, true), 20).weight, -40);
        assert_eq!(agg(&file(10, false), 100).weight, 253);
        assert_eq!(
            agg(&file(1, false), -253),
            Aggregate {
                weight: -253,
                ..Default::default()
            }
        );
        assert!(agg(&file(1, false), -254).fault);
        assert!(
            agg(&file(254, false), i64::from(i32::MIN)).fault,
            "no overflow"
        );
        // Not read yet: nothing, and no hold (keepalived's weighted files start at 0).
        let weighted = file(5, false);
        assert_eq!(
            aggregate(&weighted, |_| Status::Unknown),
            Aggregate::default()
        );
    }

    #[test]
    fn track_file_contents_read_as_strtol() {
        use crate::os::parse_number_file as parse_track_file;
        assert_eq!(parse_track_file(b"42\n"), Some(42));
        assert_eq!(parse_track_file(b"  -7 apples"), Some(-7));
        assert_eq!(parse_track_file(b"+0x1F"), Some(31));
        assert_eq!(parse_track_file(b"010"), Some(8), "octal, as strtol base 0");
        assert_eq!(parse_track_file(b"0x"), Some(0), "a lone 0 before an x");
        assert_eq!(parse_track_file(b""), Some(0));
        assert_eq!(parse_track_file(b"garbage"), Some(0));
        assert_eq!(
            parse_track_file(b"2147483648"),
            Some(2147483648),
            "INT32_MAX + 1 accepted"
        );
        assert_eq!(parse_track_file(b"2147483649"), None);
        assert_eq!(parse_track_file(b"-2147483649"), None);
        assert_eq!(parse_track_file(&[b'9'; 127]), None);
    }

    #[tokio::test]
    async fn file_poller_reports_numbers_and_their_changes() {
        let dir = crate::testutil::TempDir::new("track-file");
        let path = dir.path().join("prio");
        std::fs::write(&path, "5\n").unwrap();
        let missing = dir.path().join("absent");
        let (tx, mut rx) = mpsc::channel(16);
        let files: BTreeMap<String, PathBuf> = [
            ("a".to_string(), path.clone()),
            ("b".to_string(), missing.clone()),
        ]
        .into();
        let task = spawn_files(files, Duration::from_millis(20), tx);
        let mut first = vec![next(&mut rx).await, next(&mut rx).await];
        first.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(
            first,
            [
                TrackEvent {
                    key: TrackKey::File("a".into()),
                    status: Status::Value(5)
                },
                TrackEvent {
                    key: TrackKey::File("b".into()),
                    status: Status::Value(0)
                },
            ]
        );
        std::fs::write(&missing, "-3").unwrap();
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: TrackKey::File("b".into()),
                status: Status::Value(-3)
            }
        );
        // Out of range: ignored, the last number stands; then a good one.
        std::fs::write(&path, "99999999999").unwrap();
        // Five poll periods without an event: the only evidence of an ignored number.
        assert!(tokio::time::timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err());
        std::fs::write(&path, "6").unwrap();
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: TrackKey::File("a".into()),
                status: Status::Value(6)
            }
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            next(&mut rx).await,
            TrackEvent {
                key: TrackKey::File("a".into()),
                status: Status::Value(0)
            }
        );
        assert_eq!(task.status.borrow().get("b"), Some(&Status::Value(-3)));
    }
}
