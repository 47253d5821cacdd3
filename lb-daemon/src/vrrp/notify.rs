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
//! killed (SIGTERM to the group, then SIGKILL after [`KILL_GRACE`]) when it outlives its timeout
//! (default [`DEFAULT_HOOK_TIMEOUT`]). A hook that fails, cannot be started or times out is
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
//! router_id, and cannot be broken by odd names). The reader owns the path and creates it; the
//! daemon never creates or removes it. Everything is non-blocking: if nobody reads (ENXIO,
//! ECONNREFUSED, a missing path) or the reader's buffer is full (EAGAIN), the event is dropped
//! and counted ([`NotifyCounters::sink_dropped`]); the next event tries to (re)open the path, so
//! a reader that comes back gets the events from then on. A line the kernel took only partly is
//! finished before the next one, so the reader never sees a torn line. Writing to a FIFO whose
//! reader went away raises SIGPIPE, which the Rust runtime ignores in every binary (and sockets
//! are written with MSG_NOSIGNAL).
//!
//! # Shared with `track`
//!
//! [`ScriptUser`], [`run_command`] and [`LogLimit`] also serve [`super::track`]'s
//! `vrrp_script` runner.
use std::{
    collections::HashMap,
    ffi::CString,
    fmt,
    fs::OpenOptions,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{FileTypeExt, OpenOptionsExt},
            process::{CommandExt, ExitStatusExt},
        },
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};
use tracing::{debug, warn};

use super::fsm::State;
use crate::config::{
    vrrp::{check_script_safety, Notify},
    Config, GlobalDefs,
};

/// How long a hook may run (the default of keepalived's `startup_script_timeout`). keepalived
/// gives `notify_stop` hooks 1 s (`system_call_script(.., TIMER_HZ, ..)` in `vrrp_notify.c`);
/// here [`Notifier::shutdown`]'s limit bounds them.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Between SIGTERM and SIGKILL for a script that outlived its timeout. keepalived.conf(5):
/// "scripts will be sent SIGTERM if ... it has run for too long"; it then sends SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(1);
/// Events waiting for the worker; beyond this they are dropped and counted.
pub const QUEUE_LEN: usize = 1024;
/// At most one log line per this interval for each repeating failure.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// The script user
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("script user {user:?} does not exist")]
    Unknown { user: String },
    #[error("looking up script user {user:?}: {source}")]
    Lookup {
        user: String,
        #[source]
        source: io::Error,
    },
}

/// Who scripts run as. An unknown name is an error at start-up ([`ScriptUser::lookup`]),
/// never a silent fallback to root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptUser {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl ScriptUser {
    pub fn root() -> Self {
        ScriptUser {
            name: "root".into(),
            uid: 0,
            gid: 0,
        }
    }

    /// The daemon's own effective user: scripts then run without a uid/gid change (tests, or a
    /// daemon that already runs unprivileged).
    pub fn current() -> Self {
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        ScriptUser {
            name: format!("uid {uid}"),
            uid,
            gid,
        }
    }

    /// Resolves `name` with getpwnam_r (so NSS sources count, as for keepalived). The group is
    /// the user's primary group; supplementary groups are dropped when the uid changes (std's
    /// `Command::uid` calls `setgroups(0, NULL)`).
    pub fn lookup(name: &str) -> Result<Self, UserError> {
        let unknown = || UserError::Unknown {
            user: name.to_string(),
        };
        let cname = CString::new(name).map_err(|_| unknown())?;
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: passwd is plain old data; all-zero is a valid (empty) value.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call; buf outlives the use of pwd's
            // string fields (we only read the numeric ones).
            let rc = unsafe {
                libc::getpwnam_r(
                    cname.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            match rc {
                libc::ERANGE if buf.len() < 1 << 20 => {
                    let len = buf.len() * 2;
                    buf.resize(len, 0);
                }
                // getpwnam_r(3): "0 or ENOENT or ESRCH or EBADF or EPERM or ..." mean "not
                // found" depending on the libc and NSS module.
                0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM if result.is_null() => {
                    return Err(unknown())
                }
                0 => {
                    return Ok(ScriptUser {
                        name: name.to_string(),
                        uid: pwd.pw_uid,
                        gid: pwd.pw_gid,
                    })
                }
                rc => {
                    return Err(UserError::Lookup {
                        user: name.to_string(),
                        source: io::Error::from_raw_os_error(rc),
                    })
                }
            }
        }
    }

    /// `name`, or root when there is none.
    pub fn resolve(name: Option<&str>) -> Result<Self, UserError> {
        name.map_or_else(|| Ok(ScriptUser::root()), ScriptUser::lookup)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn uid(&self) -> libc::uid_t {
        self.uid
    }
    pub fn gid(&self) -> libc::gid_t {
        self.gid
    }
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Running a script
// ---------------------------------------------------------------------------------------------

/// How a script run ended. Only `Exited(0)` is a success.
#[derive(Debug)]
pub enum RunOutcome {
    Exited(i32),
    Signaled(i32),
    /// Outlived its timeout and was killed.
    TimedOut,
    /// Could not be started (missing program, not executable, setuid refused...).
    SpawnFailed(io::Error),
    /// It ended but its status was lost (someone else reaped it).
    Lost(io::Error),
}

impl RunOutcome {
    pub fn success(&self) -> bool {
        matches!(self, RunOutcome::Exited(0))
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOutcome::Exited(c) => write!(f, "exited with status {c}"),
            RunOutcome::Signaled(s) => write!(f, "killed by signal {s}"),
            RunOutcome::TimedOut => f.write_str("timed out"),
            RunOutcome::SpawnFailed(e) => write!(f, "could not be started: {e}"),
            RunOutcome::Lost(e) => write!(f, "exit status lost: {e}"),
        }
    }
}

/// Runs `argv` as `user` and waits at most `timeout` (then kills its process group). Never
/// blocks the runtime: the fork/exec happens on the blocking pool, the wait on a pidfd.
pub async fn run_command(argv: &[String], user: &ScriptUser, timeout: Duration) -> RunOutcome {
    match spawn(argv.to_vec(), user.clone()).await {
        Ok(running) => running.wait(timeout).await,
        Err(e) => RunOutcome::SpawnFailed(e),
    }
}

fn command(argv: &[String], user: &ScriptUser) -> io::Result<Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    // Output is not trusted and nobody reads it: /dev/null, so a chatty script never blocks
    // on a full pipe. Its own process group lets a timeout kill what it started too.
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0);
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if user.uid != euid || user.gid != egid {
        cmd.uid(user.uid).gid(user.gid);
    }
    Ok(cmd)
}

/// Starts `argv` as `user` on the blocking pool (fork and exec can take milliseconds).
pub(crate) async fn spawn(argv: Vec<String>, user: ScriptUser) -> io::Result<Running> {
    let child = tokio::task::spawn_blocking(move || {
        let mut cmd = command(&argv, &user)?;
        // ETXTBSY: the script is open for writing somewhere, typically for an instant while
        // a deployment tool rewrites it, or while another thread's fork still holds the
        // descriptor it was written through. A short retry rides that out.
        let mut tries = 0;
        loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(io::Error::other)??;
    Ok(Running::new(child))
}

/// Whether child `pid` has exited, leaving it reapable (`waitid(WNOWAIT)`); an error (no
/// such child any more) counts as exited.
fn exited_nowait(pid: libc::id_t) -> bool {
    // SAFETY: siginfo_t is plain old data; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is valid for writes; WNOWAIT leaves the child reapable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after waitid returned.
    rc != 0 || unsafe { info.si_pid() } != 0
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor (close-on-exec)
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A started script. The leader is reaped only after the last signal to its process group,
/// so its pid (the group id) cannot have been reused by then. Dropped before the end (a
/// cancelled task), it kills the group and reaps the leader on a plain thread.
pub(crate) struct Running {
    child: Option<Child>,
    /// Readable when the leader exits (Linux 5.3+); without it, `waitid(WNOWAIT)` polling.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl Running {
    fn new(child: Child) -> Self {
        let pidfd = pidfd_open(child.id()).ok().and_then(|fd| {
            // SAFETY: the OwnedFd is a valid open descriptor, owned by the AsyncFd from here
            // on, and OwnedFd always returns that same descriptor.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
        });
        Running {
            child: Some(child),
            pidfd,
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: killpg has no memory preconditions. The group id is the unreaped
            // leader's pid, so it still names our group.
            unsafe { libc::killpg(child.id() as libc::pid_t, signal) };
        }
    }

    /// Whether the leader exited within `limit`, without reaping it.
    async fn exited_within(&self, limit: Duration) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        if let Some(fd) = &self.pidfd {
            match tokio::time::timeout(limit, fd.readable()).await {
                Ok(Ok(_)) => return true,
                Err(_) => return false,
                // The reactor is going away; fall back to polling.
                Ok(Err(_)) => {}
            }
        }
        let pid = child.id() as libc::id_t;
        let deadline = Instant::now() + limit;
        while !exited_nowait(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn reap(&mut self) -> io::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("already reaped"));
        };
        match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                self.child = Some(child);
                Err(io::Error::other("still running"))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the script, killing its process group after `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> RunOutcome {
        if self.exited_within(timeout).await {
            return match self.reap() {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => RunOutcome::Exited(code),
                    (None, Some(signal)) => RunOutcome::Signaled(signal),
                    (None, None) => RunOutcome::Lost(io::Error::other(format!("{status}"))),
                },
                Err(e) => RunOutcome::Lost(e),
            };
        }
        self.signal_group(libc::SIGTERM);
        self.exited_within(KILL_GRACE).await;
        // Also reaches whatever the script left behind in its group.
        self.signal_group(libc::SIGKILL);
        if self.exited_within(KILL_GRACE).await {
            let _ = self.reap();
        }
        // Otherwise (stuck in the kernel): Drop reaps it on a thread.
        RunOutcome::TimedOut
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in signal_group: the leader is unreaped, the group id is ours.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

/// One log line per interval for a repeating condition, with the count of those suppressed.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(every: Duration) -> Self {
        LogLimit {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when a line may be logged now.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events and hooks
// ---------------------------------------------------------------------------------------------

/// Whose state changed: the first argument keepalived passes to `notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Instance,
    Group,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "INSTANCE",
            Kind::Group => "GROUP",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states keepalived notifies (it never notifies INIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyState {
    Master,
    Backup,
    Fault,
    /// The daemon is stopping (`Output::Stopped`); `notify_stop` runs.
    Stop,
}

impl NotifyState {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyState::Master => "MASTER",
            NotifyState::Backup => "BACKUP",
            NotifyState::Fault => "FAULT",
            NotifyState::Stop => "STOP",
        }
    }

    /// The notify state for an FSM state; `None` for Initialize.
    pub fn from_fsm(state: State) -> Option<Self> {
        match state {
            State::Initialize => None,
            State::Backup => Some(NotifyState::Backup),
            State::Master => Some(NotifyState::Master),
            State::Fault => Some(NotifyState::Fault),
        }
    }
}

impl fmt::Display for NotifyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub name: String,
    pub state: NotifyState,
    /// The instance's effective priority; 0 for a group (keepalived).
    pub priority: u8,
}

impl Event {
    pub fn instance(name: impl Into<String>, state: NotifyState, priority: u8) -> Self {
        Event {
            kind: Kind::Instance,
            name: name.into(),
            state,
            priority,
        }
    }

    pub fn group(name: impl Into<String>, state: NotifyState) -> Self {
        Event {
            kind: Kind::Group,
            name: name.into(),
            state,
            priority: 0,
        }
    }
}

/// An instance's or group's hooks, each split into words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub master: Option<Vec<String>>,
    pub backup: Option<Vec<String>>,
    pub fault: Option<Vec<String>>,
    pub stop: Option<Vec<String>>,
    pub generic: Option<Vec<String>>,
}

fn words(line: &Option<String>) -> Option<Vec<String>> {
    line.as_deref()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
}

impl Hooks {
    pub fn from_config(notify: &Notify) -> Self {
        Hooks {
            master: words(&notify.master),
            backup: words(&notify.backup),
            fault: words(&notify.fault),
            stop: words(&notify.stop),
            generic: words(&notify.generic),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// `(hook name, words)` of every configured hook.
    fn iter(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        [
            ("notify_master", &self.master),
            ("notify_backup", &self.backup),
            ("notify_fault", &self.fault),
            ("notify_stop", &self.stop),
            ("notify", &self.generic),
        ]
        .into_iter()
        .filter_map(|(name, words)| words.as_ref().map(|w| (name, w)))
    }

    pub fn specific(&self, state: NotifyState) -> Option<&[String]> {
        match state {
            NotifyState::Master => self.master.as_deref(),
            NotifyState::Backup => self.backup.as_deref(),
            NotifyState::Fault => self.fault.as_deref(),
            NotifyState::Stop => self.stop.as_deref(),
        }
    }

    /// The command lines to run for `event`, in keepalived's order: the specific hook as
    /// configured, then the generic one with its four arguments.
    pub fn commands(&self, event: &Event) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        if let Some(specific) = self.specific(event.state) {
            out.push(specific.to_vec());
        }
        if let Some(generic) = &self.generic {
            out.push(generic_argv(generic, event));
        }
        out
    }
}

/// `<command words...> INSTANCE|GROUP <name> <STATE> <priority>` (keepalived.conf(5),
/// `notify`; keepalived's `notify_script_exec`).
pub fn generic_argv(command: &[String], event: &Event) -> Vec<String> {
    let mut argv = command.to_vec();
    argv.extend([
        event.kind.as_str().to_string(),
        event.name.clone(),
        event.state.as_str().to_string(),
        event.priority.to_string(),
    ]);
    argv
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    time: f64,
    kind: &'static str,
    name: &'a str,
    state: &'static str,
    priority: u8,
    router_id: &'a str,
}

/// One event as a JSON line, newline included.
pub fn event_json(event: &Event, time: SystemTime, router_id: &str) -> String {
    let time = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line = serde_json::to_string(&JsonEvent {
        time,
        kind: event.kind.as_str(),
        name: &event.name,
        state: event.state.as_str(),
        priority: event.priority,
        router_id,
    })
    // Serializing a struct of strings and numbers cannot fail; a NaN time would be null.
    .unwrap_or_default();
    line.push('\n');
    line
}

// ---------------------------------------------------------------------------------------------
// The event sink: FIFO or Unix socket, never blocking
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnKind {
    Fifo,
    Stream,
    Datagram,
}

#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    kind: ConnKind,
}

impl Conn {
    fn open(path: &Path) -> io::Result<Conn> {
        let file_type = std::fs::metadata(path)?.file_type();
        if file_type.is_fifo() {
            // ENXIO here means no reader: exactly "nobody is listening".
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            return Ok(Conn {
                fd: file.into(),
                kind: ConnKind::Fifo,
            });
        }
        if file_type.is_socket() {
            return match connect_unix(path, libc::SOCK_DGRAM) {
                Ok(fd) => Ok(Conn {
                    fd,
                    kind: ConnKind::Datagram,
                }),
                Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(Conn {
                    fd: connect_unix(path, libc::SOCK_STREAM)?,
                    kind: ConnKind::Stream,
                }),
                Err(e) => Err(e),
            };
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither a FIFO nor a Unix socket",
        ))
    }

    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: buf is valid for reads of buf.len() bytes; fd is open and ours.
        let n = unsafe {
            match self.kind {
                ConnKind::Fifo => libc::write(fd, buf.as_ptr().cast(), buf.len()),
                ConnKind::Stream | ConnKind::Datagram => libc::send(
                    fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                ),
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// A non-blocking connect: an AF_UNIX stream connect to a full backlog fails with EAGAIN
/// instead of waiting.
fn connect_unix(path: &Path, ty: libc::c_int) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un of at least len bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Errors that mean "nobody is reading": not worth a log line, the event is just dropped.
fn nobody_reading(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENXIO
                | libc::ENOENT
                | libc::ECONNREFUSED
                | libc::EAGAIN
                | libc::EPIPE
                | libc::ECONNRESET
                | libc::ENOTCONN
        )
    )
}

/// The reader went away: close and reopen.
fn disconnected(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ECONNREFUSED | libc::ENOTCONN)
    )
}

/// Writes lines to a FIFO or Unix socket without ever blocking.
#[derive(Debug)]
pub(crate) struct EventSink {
    path: PathBuf,
    conn: Option<Conn>,
    /// The unwritten tail of a line a stream or FIFO took only partly.
    pending: Vec<u8>,
    log: LogLimit,
}

impl EventSink {
    pub(crate) fn new(path: PathBuf) -> Self {
        EventSink {
            path,
            conn: None,
            pending: Vec::new(),
            log: LogLimit::new(LOG_EVERY),
        }
    }

    fn complain(&mut self, what: &str, e: &io::Error) {
        if nobody_reading(e) {
            return;
        }
        if let Some(suppressed) = self.log.allow() {
            warn!(path = %self.path.display(), suppressed, "notify_fifo: {what}: {e}; events are dropped");
        }
    }

    /// True when the line was handed to the kernel (or its tail is queued behind it).
    pub(crate) fn send(&mut self, line: &[u8]) -> bool {
        // A reader that went away makes the first attempt fail; a new reader may already
        // be waiting, so reopen once.
        for _ in 0..2 {
            let conn = match self.conn.take() {
                Some(conn) => conn,
                None => match Conn::open(&self.path) {
                    Ok(conn) => {
                        self.pending.clear();
                        conn
                    }
                    Err(e) => {
                        self.complain("open", &e);
                        return false;
                    }
                },
            };
            if !self.pending.is_empty() {
                match conn.write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if disconnected(&e) => {
                        self.pending.clear();
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        self.pending.clear();
                        self.complain("write", &e);
                        return false;
                    }
                }
                if !self.pending.is_empty() {
                    // Still full: keep the connection, drop this line.
                    self.conn = Some(conn);
                    return false;
                }
            }
            match conn.write(line) {
                Ok(n) => {
                    if n < line.len() && conn.kind != ConnKind::Datagram {
                        self.pending.extend_from_slice(&line[n..]);
                    }
                    self.conn = Some(conn);
                    return true;
                }
                Err(e) if disconnected(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.conn = Some(conn);
                    return false;
                }
                Err(e) => {
                    // ENOBUFS and friends: keep the connection, drop the line.
                    self.complain("write", &e);
                    self.conn = Some(conn);
                    return false;
                }
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// The notifier
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    User(#[from] UserError),
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
            router_id: global.router_id.clone().unwrap_or_else(hostname),
            queue_len: QUEUE_LEN,
        })
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
        let hooks: HashMap<(Kind, String), Hooks> = hooks
            .into_iter()
            .filter(|(_, _, h)| !h.is_empty())
            .map(|(kind, name, h)| ((kind, name), h))
            .collect();
        if options.check_safety && options.user.is_root() {
            for ((kind, name), h) in &hooks {
                for (hook, words) in h.iter() {
                    check_script_safety(Path::new(&words[0])).map_err(|reason| {
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
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(options.queue_len.max(1));
        let worker = Worker {
            hooks,
            sink: options.sink.map(EventSink::new),
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
        Notifier::start(NotifyOptions::from_global(&config.global_defs)?, hooks)
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
        while let Some(Queued { event, time }) = rx.recv().await {
            while running.try_join_next().is_some() {}
            // keepalived's order: the hooks, then the FIFO line.
            self.start_hooks(&event, &mut running).await;
            if let Some(sink) = &mut self.sink {
                let line = event_json(&event, time, &self.router_id);
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
            match spawn(argv, self.user.clone()).await {
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

// ---------------------------------------------------------------------------------------------
// Test helpers, shared with `track`'s tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod test_util {
    use std::{
        os::unix::fs::PermissionsExt,
        path::{Path, PathBuf},
        sync::atomic::{AtomicU32, Ordering},
        time::{Duration, Instant},
    };

    /// Whether a root-only test may run: prints why not, or panics when
    /// `LB_REQUIRE_PRIVILEGED=1` says the run must not skip.
    pub(crate) fn privileged(what: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            return true;
        }
        if std::env::var("LB_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!(
                "{what}: needs root (euid {euid}), and LB_REQUIRE_PRIVILEGED=1 forbids skipping"
            );
        }
        eprintln!(
            "SKIP {what}: needs root (euid is {euid}); set LB_REQUIRE_PRIVILEGED=1 to fail instead"
        );
        false
    }

    /// A scratch directory (mode 0755), removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "lb-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(path)
        }

        /// A scratch directory under /run, whose ancestors every user may search:
        /// for tests where another user must reach a file in it. `$TMPDIR` may sit
        /// inside a private (0700) directory, as it does on some CI machines.
        pub(crate) fn world_reachable(tag: &str) -> Self {
            let path = PathBuf::from(format!("/run/lbtest-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(path)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }

        /// Writes an executable (0755) shell script and returns its path.
        pub(crate) fn script(&self, name: &str, body: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Polls `cond` every 10 ms until it holds or `limit` passes.
    pub(crate) async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if cond() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether `pid` is a live process (a zombie counts as dead).
    pub(crate) fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            // "pid (comm) S ...": the state follows the last ')'.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X'),
        }
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

    use super::test_util::{alive, eventually, privileged, TempDir};
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn options(sink: Option<PathBuf>) -> NotifyOptions {
        NotifyOptions {
            user: ScriptUser::current(),
            timeout: Duration::from_secs(5),
            check_safety: false,
            sink,
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
    fn log_limit() {
        let mut l = LogLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(l.allow_at(t0), Some(0));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(l.allow_at(t0 + Duration::from_secs(61)), None);
    }

    #[test]
    fn users() {
        assert!(matches!(
            ScriptUser::lookup("lb-no-such-user-xyzzy"),
            Err(UserError::Unknown { .. })
        ));
        assert!(matches!(
            ScriptUser::lookup("bad\0name"),
            Err(UserError::Unknown { .. })
        ));
        let root = ScriptUser::lookup("root").unwrap();
        assert_eq!((root.uid(), root.gid()), (0, 0));
        assert_eq!(ScriptUser::resolve(None).unwrap(), ScriptUser::root());
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
