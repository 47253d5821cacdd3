//! The control socket: `lb-daemon status`, `reload`, `stop`, `real-server`, `zero`,
//! `connections`, `which` and `diff` talk to the running daemon through it.
//!
//! # Protocol
//!
//! A Unix stream socket (default [`crate::config::DEFAULT_CONTROL_SOCKET`]): one JSON request
//! per line, one JSON response per line, as many as the client likes on one connection. Mode
//! 0600, answering root (or the daemon's own user); with `global_defs.control_socket_group`
//! 0660, and that group's members may send what only reads ([`Request::reads_only`]).
//!
//! | request | response |
//! | --- | --- |
//! | `{"cmd":"status"}` | `{"ok":true,"status":<Snapshot>}` (see [`crate::status`]) |
//! | `{"cmd":"reload"}` | `{"ok":true}`, or `{"ok":false,"error":"file:line: key: message"}` |
//! | `{"cmd":"stop","release":bool}` | `{"ok":true}`, then the daemon stops |
//! | `{"cmd":"real-server",...}`, `{"cmd":"zero"}`, `{"cmd":"diff","config":PATH}` | `{"ok":true,"message":...}` |
//! | `{"cmd":"connections",...}` | `{"ok":true,"connections":<Connections>}` |
//! | `{"cmd":"which","client":...,"service":...}` | `{"ok":true,"which":<Which>}` |
//! | anything else | `{"ok":false,"error":"..."}` |
//!
//! # Wiring: a channel the daemon's main loop answers
//!
//! The daemon owns its configuration and state inside one `tokio::select!` loop, so the
//! server does not call into the daemon: it hands each request over as a [`Call`] on an
//! `mpsc` channel, and the loop answers it with [`Call::reply`]:
//!
//! ```ignore
//! let server = control::Server::bind(config::DEFAULT_CONTROL_SOCKET).await?; // fails if a daemon runs
//! let (calls_tx, mut calls) = tokio::sync::mpsc::channel(control::CALL_QUEUE_LEN);
//! tokio::spawn(server.serve(calls_tx));
//! loop {
//!     tokio::select! {
//!         Some(call) = calls.recv() => match call.request {
//!             control::Request::Status => { let s = snapshot(); call.reply(control::Response::status(s)) }
//!             control::Request::Reload => call.reply(match reload() {
//!                 Ok(()) => control::Response::ok(),
//!                 Err(e) => control::Response::error(e.to_string()),
//!             }),
//!         },
//!         // ...
//!     }
//! }
//! ```
//!
//! [`Call::reply`] never blocks (a oneshot send), and a call dropped unanswered is answered
//! with an error for the client. [`Server::serve`] returns when the daemon drops its receiver,
//! and the socket file is removed when the [`Server`] is dropped (if it is still ours).
//!
//! # Hostile or broken clients
//!
//! Every client gets its own task, and at most [`Options::max_clients`] are served at once; one
//! more is told it is busy and closed at once, so the daemon's file descriptors stay bounded.
//! A request line longer than [`MAX_LINE`] is answered with an error and the connection
//! closed; a client has [`Options::idle_timeout`] to send each line (so one that never sends,
//! or sends a byte at a time, is closed) and [`Options::write_timeout`] to read each answer;
//! one that disconnects mid-line is simply closed. None of them ever holds up the daemon,
//! which only sees whole, parsed requests.
use std::{
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, watch, Semaphore},
    task::JoinSet,
    time::timeout,
};
use tracing::{debug, warn};

use crate::{
    model::RealServerAction,
    status::{rates, render_connections, render_table, with_rates, Connections, Snapshot, Which},
};

/// The longest request line (without its newline).
pub const MAX_LINE: usize = 64 * 1024;
/// A good capacity for the channel of [`Call`]s.
pub const CALL_QUEUE_LEN: usize = 16;
/// The longest response line a client accepts (a status of many thousand backends).
const MAX_RESPONSE: usize = 256 * 1024 * 1024;
/// How long a client waits for the daemon to accept its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for its answer: a bit more than the server gives the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(75);

/// A request, as `{"cmd":"status"}`, `{"cmd":"reload"}`, `{"cmd":"stop"}` (with
/// `"release":true` or `false` to override `global_defs.on_stop`), `{"cmd":"zero"}` or
/// `{"cmd":"real-server","service":"VIP:PORT[/PROTO]","real":"IP[:PORT]","action":"drain"}`
/// (`"action":{"weight":N}`, `"disable"`, `"enable"`, `"reset"`; a reset may say
/// `"all":true` instead of naming a real server).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Reload,
    Stop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<bool>,
    },
    /// `ipvsadm -Z`: the traffic counters that status shows start again from 0.
    Zero,
    /// What a reload of the file at `config` (an absolute path) would change; changes
    /// nothing (root only: the daemon reads the file).
    Diff {
        config: String,
    },
    /// The real server that serves `client` (`IP:PORT`) for `service`.
    Which {
        client: String,
        service: String,
    },
    /// `ipvsadm -Lnc`: the flows of the connection table, filtered, at most `limit`.
    Connections {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        real: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    RealServer {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        real: Option<String>,
        action: RealServerAction,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
}

/// How many connections `lb-daemon connections` shows unless told otherwise.
pub const DEFAULT_CONNECTIONS_LIMIT: usize = 1000;
/// The most it shows at once: an answer stays some tens of MB.
pub const MAX_CONNECTIONS_LIMIT: usize = 100_000;

fn default_limit() -> usize {
    DEFAULT_CONNECTIONS_LIMIT
}

impl Request {
    /// Whether the request only reads: members of `global_defs.control_socket_group` may
    /// send it.
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Request::Status | Request::Connections { .. } | Request::Which { .. }
        )
    }
}

/// A response: `ok`, with `status` for a status request, what a change did in `message`, or
/// `error` when not `ok`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Snapshot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Connections>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub which: Option<Which>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            status: None,
            message: None,
            connections: None,
            which: None,
            error: None,
        }
    }

    /// `{"ok":true,"message":...}`.
    pub fn done(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            ..Self::ok()
        }
    }

    /// `{"ok":true,"which":...}`.
    pub fn which(w: Which) -> Self {
        Self {
            which: Some(w),
            ..Self::ok()
        }
    }

    /// `{"ok":true,"connections":...}`.
    pub fn connections(c: Connections) -> Self {
        Self {
            connections: Some(c),
            ..Self::ok()
        }
    }

    /// `{"ok":true,"status":...}`.
    pub fn status(snapshot: Snapshot) -> Self {
        Self {
            status: Some(snapshot),
            ..Self::ok()
        }
    }

    /// `{"ok":false,"error":...}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::ok()
        }
    }
}

/// A request on its way to the daemon, with the way back to its client.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    reply: oneshot::Sender<Response>,
}

impl Call {
    /// Answers the client (never blocks; a client that went away is not an error).
    pub fn reply(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// Limits of the server; [`Options::default`] is what the daemon uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Longest request line, without its newline.
    pub max_line: usize,
    /// Time a client has to send each request line, from the end of the previous answer.
    pub idle_timeout: Duration,
    /// Time a client has to take each answer.
    pub write_timeout: Duration,
    /// Time the daemon has to answer a call (a reload runs check scripts).
    pub reply_timeout: Duration,
    /// Clients served at once.
    pub max_clients: usize,
    /// `global_defs.control_socket_group`: its members may send what only reads. A reload
    /// changes it (see [`set_group`]).
    pub group: watch::Receiver<Option<libc::gid_t>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_line: MAX_LINE,
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(60),
            max_clients: 16,
            group: watch::channel(None).1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another lb-daemon answers on {}: refusing to start a second one", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket: refusing to replace it", .0.display())]
    NotSocket(PathBuf),
    #[error("{what} {}: {error}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    /// The client could not reach the daemon (with a hint why).
    #[error("{0}")]
    Connect(String),
    #[error("timed out {0}")]
    Timeout(String),
    /// Not the protocol: a response that does not parse, a connection closed early.
    #[error("control socket: {0}")]
    Protocol(String),
    /// The daemon answered `{"ok":false,"error":...}`.
    #[error("{0}")]
    Daemon(String),
}

pub type Result<T, E = ControlError> = std::result::Result<T, E>;

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ControlError + 'a {
    move |error| ControlError::Io {
        what,
        path: path.to_path_buf(),
        error,
    }
}

/// The request a line holds, or what to tell the client.
pub fn parse_request(line: &[u8]) -> std::result::Result<Request, String> {
    const EXPECTED: &str = r#"expected {"cmd":"status"}, {"cmd":"reload"}, {"cmd":"stop"}, {"cmd":"zero"} or {"cmd":"real-server",...}"#;
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON ({e}): {EXPECTED}"))?;
    let cmd = v
        .get("cmd")
        .and_then(|c| c.as_str())
        .ok_or_else(|| EXPECTED.to_string())?;
    match cmd {
        "status" => Ok(Request::Status),
        "reload" => Ok(Request::Reload),
        "zero" => Ok(Request::Zero),
        "diff" => serde_json::from_value(v.clone()).map_err(|e| format!("diff: {e}")),
        "which" => serde_json::from_value(v.clone()).map_err(|e| format!("which: {e}")),
        "connections" => {
            let r: Request =
                serde_json::from_value(v.clone()).map_err(|e| format!("connections: {e}"))?;
            match r {
                Request::Connections { limit, .. } if limit > MAX_CONNECTIONS_LIMIT => Err(
                    format!("connections: limit {limit} is above {MAX_CONNECTIONS_LIMIT}"),
                ),
                r => Ok(r),
            }
        }

        "real-server" => {
            let r: Request =
                serde_json::from_value(v.clone()).map_err(|e| format!("real-server: {e}"))?;
            match &r {
                Request::RealServer {
                    service: None,
                    all: false,
                    ..
                } => Err("real-server: name the service (or \"all\":true with reset)".into()),
                Request::RealServer {
                    real: None,
                    all: false,
                    ..
                } => Err("real-server: name the real server (or \"all\":true with reset)".into()),
                Request::RealServer {
                    action, all: true, ..
                } if *action != RealServerAction::Reset => {
                    Err("real-server: \"all\" goes with reset only".into())
                }
                Request::RealServer {
                    action: RealServerAction::Weight(w),
                    ..
                } if *w > crate::config::MAX_WEIGHT => Err(format!(
                    "real-server: weight {w} is out of range 0..={}",
                    crate::config::MAX_WEIGHT
                )),
                _ => Ok(r),
            }
        }
        "stop" => match v.get("release") {
            None | Some(serde_json::Value::Null) => Ok(Request::Stop { release: None }),
            Some(serde_json::Value::Bool(b)) => Ok(Request::Stop { release: Some(*b) }),
            Some(_) => Err(r#""release" must be true or false"#.to_string()),
        },
        other => {
            let shown: String = other.chars().take(64).collect();
            Err(format!(
                "unknown command {shown:?} (expected status, reload, stop, zero, real-server, connections, which or diff)"
            ))
        }
    }
}

/// A bound control socket, not serving yet.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created: removed on drop only if still ours.
    id: Option<(u64, u64)>,
    options: Options,
}

impl Server {
    /// [`Server::bind_with`] the default [`Options`].
    pub async fn bind(path: impl AsRef<Path>) -> Result<Self> {
        Self::bind_with(path, Options::default()).await
    }

    /// Creates the socket at `path`, mode 0600. A socket file nothing answers on (left by a
    /// daemon that died) is replaced; if something answers, or `path` is not a socket, this
    /// fails and leaves it alone.
    pub async fn bind_with(path: impl AsRef<Path>, options: Options) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ControlError::NotSocket(path.to_path_buf()))
            }
            Ok(_) => match timeout(Duration::from_secs(1), UnixStream::connect(path)).await {
                // A listener with a full backlog does not answer at once but is alive.
                Ok(Ok(_)) | Err(_) => return Err(ControlError::InUse(path.to_path_buf())),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    debug!(path = %path.display(), "removing a stale control socket");
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_error("removing the stale socket", path)(e)),
                    }
                }
                Ok(Err(e)) => return Err(io_error("probing", path)(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("inspecting", path)(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_error("binding", path))?;
        // Between bind and chmod the file has the umask's mode; connections made in that
        // window are still refused by the peer-credential check in `serve`. With a control
        // group its members may connect (0660); what they may send is checked per request.
        let group = *options.group.borrow();
        if let Err(e) = set_group(path, group) {
            let _ = std::fs::remove_file(path);
            return Err(io_error("setting the owner and mode of", path)(e));
        }
        let id = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id,
            options,
        })
    }

    /// Serves clients, handing their requests to `calls`, until the receiver of `calls` is
    /// dropped. Then the socket file is removed; clients still connected are cut off.
    pub async fn serve(self, calls: mpsc::Sender<Call>) {
        let slots = Arc::new(Semaphore::new(self.options.max_clients.max(1)));
        // The control group's members have slots of their own: however many they hold,
        // root can still reload, stop and change.
        let reader_slots = Arc::new(Semaphore::new(self.options.max_clients.max(1)));
        let mut clients = JoinSet::new();
        loop {
            tokio::select! {
                _ = calls.closed() => break,
                Some(_) = clients.join_next(), if !clients.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let group = *self.options.group.borrow();
                        let access = match authorize(&stream, group) {
                            Ok(a) => a,
                            Err(why) => {
                                warn!("control socket: {why}");
                                refuse(&stream, &why);
                                continue;
                            }
                        };
                        let pool = match access {
                            Access::All => &slots,
                            Access::ReadOnly => &reader_slots,
                        };
                        match pool.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let calls = calls.clone();
                                let options = self.options.clone();
                                clients.spawn(async move {
                                    client(stream, calls, &options, access).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => {
                                debug!("control socket: too many clients, one refused");
                                refuse(&stream, "too many control clients at once, try again");
                            }
                        }
                    }
                    Err(e) => {
                        warn!("control socket: accept: {e}");
                        // Out of file descriptors: let some close rather than spin.
                        if out_of_resources(&e) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
        clients.shutdown().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.id {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An accept error that persists until some descriptors or memory are freed.
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The socket file's group and mode for `group`: the group's, 0660, or without one the
/// daemon's own group, 0600. (The server learns the group from [`Options::group`].)
pub fn set_group(path: &Path, group: Option<libc::gid_t>) -> io::Result<()> {
    // SAFETY: getegid cannot fail.
    let gid = group.unwrap_or_else(|| unsafe { libc::getegid() });
    std::os::unix::fs::chown(path, None, Some(gid))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// What a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Root, or the daemon's own user: everything.
    All,
    /// A member of `global_defs.control_socket_group`: what only reads.
    ReadOnly,
}

/// Root and the daemon's own user may send anything, the control group's members what only
/// reads, nobody else anything (the socket's mode says the same; this also covers the
/// moment between bind and chmod).
fn authorize(
    stream: &UnixStream,
    group: Option<libc::gid_t>,
) -> std::result::Result<Access, String> {
    use std::os::fd::AsFd;
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        return Ok(Access::All);
    }
    if let Some(gid) = group {
        let groups = crate::os::peer_groups(stream.as_fd())
            .map_err(|e| format!("uid {}: no peer groups: {e}", cred.uid()))?;
        if groups.contains(&gid) {
            return Ok(Access::ReadOnly);
        }
    }
    Err(format!("uid {} is not allowed", cred.uid()))
}

/// Tells a client why it is turned away, without ever waiting for it, and closes.
fn refuse(stream: &UnixStream, why: &str) {
    let _ = stream.try_write(&response_line(&Response::error(why)));
}

fn response_line(r: &Response) -> Vec<u8> {
    // Sized up front: a status of 100,000 real servers is some 25 MB, and growing to it by
    // doubling copied it all about once more.
    let backends: usize = r.status.as_ref().map_or(0, |s| {
        s.services
            .iter()
            .map(|v| ENCODED_SERVICE + ENCODED_BACKEND * v.backends.len())
            .sum()
    });
    let mut line = Vec::with_capacity(4096 + backends);
    let encoded = match &r.status {
        Some(snap) if r.ok && r.error.is_none() && snap.services.len() >= PARALLEL_FROM => {
            encode_status(snap, &mut line)
        }
        _ => serde_json::to_writer(&mut line, r),
    };
    if let Err(e) = encoded {
        line = serde_json::to_vec(&Response::error(format!("encoding the answer: {e}")))
            .unwrap_or_default();
    }
    line.push(b'\n');
    line
}

/// From this many services on, a status answer's services are encoded on every core.
const PARALLEL_FROM: usize = 1000;

/// `Response::status(snap)` as `serde_json::to_writer` writes it, byte for byte, with the
/// services encoded on every core (each one's JSON then written in place, verbatim): 10,000
/// services of 10 real servers are 25 MB, 60 ms on one core.
fn encode_status(snap: &Snapshot, out: &mut Vec<u8>) -> serde_json::Result<()> {
    use serde_json::value::RawValue;
    // `Response` and `Snapshot` field for field, in their order; the services encoded.
    // (A field added to `Snapshot` and not here fails `a_parallel_status_is_the_same_bytes`.)
    #[derive(Serialize)]
    struct Answer<'a> {
        ok: bool,
        status: Status<'a>,
    }
    #[derive(Serialize)]
    struct Status<'a> {
        time: f64,
        router_id: &'a Option<String>,
        services: Vec<Box<RawValue>>,
        vrrp: &'a [crate::status::VrrpStatus],
        reasons: &'a [crate::status::ReasonStatus],
        notify: &'a Option<crate::status::NotifyStatus>,
        map_writes: u64,
        sync: &'a Option<crate::status::SyncStatus>,
        syn_guard: &'a Option<crate::status::SynGuardStatus>,
        vmac_mld: &'a Option<crate::status::VmacMldStatus>,
        announce: &'a Option<crate::status::AnnounceStatus>,
    }
    let mut services = Vec::with_capacity(snap.services.len());
    for part in crate::par::ranges(snap.services.len(), 0, |part| {
        snap.services[part]
            .iter()
            .map(serde_json::value::to_raw_value)
            .collect::<serde_json::Result<Vec<_>>>()
    }) {
        services.extend(part?);
    }
    let Snapshot {
        time,
        router_id,
        services: _,
        vrrp,
        reasons,
        notify,
        map_writes,
        sync,
        syn_guard,
        vmac_mld,
        announce,
    } = snap;
    serde_json::to_writer(
        out,
        &Answer {
            ok: true,
            status: Status {
                time: *time,
                router_id,
                services,
                vrrp,
                reasons,
                notify,
                map_writes: *map_writes,
                sync,
                syn_guard,
                vmac_mld,
                announce,
            },
        },
    )
}

/// About how many bytes a service, and a real server of it, take in a status answer (a
/// guess that only sizes a buffer).
const ENCODED_SERVICE: usize = 256;
const ENCODED_BACKEND: usize = 256;

/// Reads one line of at most `max` bytes (without its `\n`, and without a `\r` before it).
/// `Ok(None)`: the peer closed between lines. `Err(Some(msg))`: tell the client and close;
/// `Err(None)`: just close.
pub async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::result::Result<Option<()>, Option<String>> {
    buf.clear();
    let n = reader
        .take(max as u64 + 1)
        .read_until(b'\n', buf)
        .await
        .map_err(|_| None)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        if buf.len() > max {
            return Err(Some(format!("request line longer than {max} bytes")));
        }
        // The peer closed in the middle of a line.
        return Err(None);
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(()))
}

async fn write_line<W: AsyncWrite + Unpin>(w: &mut W, r: &Response, t: Duration) -> bool {
    matches!(timeout(t, w.write_all(&response_line(r))).await, Ok(Ok(())))
}

/// One client, until it closes, misbehaves or times out.
async fn client(stream: UnixStream, calls: mpsc::Sender<Call>, options: &Options, access: Access) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        let read = timeout(
            options.idle_timeout,
            read_line(&mut rd, &mut line, options.max_line),
        )
        .await;
        let response = match read {
            Err(_) => {
                debug!("control client idle for {:?}: closed", options.idle_timeout);
                return;
            }
            Ok(Ok(None)) | Ok(Err(None)) => return,
            Ok(Err(Some(why))) => {
                debug!("control client: {why}");
                write_line(&mut wr, &Response::error(why), options.write_timeout).await;
                return;
            }
            Ok(Ok(Some(()))) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match parse_request(&line) {
                    Ok(r) if access == Access::ReadOnly && !r.reads_only() => Response::error(
                        "only root may change the daemon or have it read files: the control \
                         group may read status, connections and which",
                    ),
                    Ok(request) => dispatch(request, &calls, options.reply_timeout).await,
                    Err(why) => Response::error(why),
                }
            }
        };
        if !write_line(&mut wr, &response, options.write_timeout).await {
            debug!("control client did not take its answer: closed");
            return;
        }
    }
}

/// Hands a request to the daemon and waits for its answer, at most `t` in all.
async fn dispatch(request: Request, calls: &mpsc::Sender<Call>, t: Duration) -> Response {
    let (tx, rx) = oneshot::channel();
    let call = Call { request, reply: tx };
    let answered = timeout(t, async move {
        if calls.send(call).await.is_err() {
            return Response::error("the daemon is shutting down");
        }
        rx.await
            .unwrap_or_else(|_| Response::error("the daemon dropped the request"))
    })
    .await;
    answered.unwrap_or_else(|_| Response::error(format!("no answer from the daemon in {t:?}")))
}

fn connect_error(path: &Path, e: io::Error) -> ControlError {
    let p = path.display();
    ControlError::Connect(match e.kind() {
        io::ErrorKind::NotFound => format!("no control socket at {p}: is lb-daemon running?"),
        io::ErrorKind::ConnectionRefused => {
            format!("nothing answers on {p}: lb-daemon is not running")
        }
        io::ErrorKind::PermissionDenied => {
            format!("{p}: permission denied (the control socket is for root only)")
        }
        _ => format!("connecting to {p}: {e}"),
    })
}

/// Sends one request to the daemon at `path` and returns its answer (which may say
/// `ok: false`).
pub async fn request(path: impl AsRef<Path>, request: Request) -> Result<Response> {
    request_within(path.as_ref(), request, CLIENT_TIMEOUT).await
}

async fn request_within(path: &Path, request: Request, t: Duration) -> Result<Response> {
    parse_response(&request_line(path, request, t).await?)
}

/// [`request`]'s answer as the daemon sent it: one line of JSON, without its newline.
async fn request_line(path: &Path, request: Request, t: Duration) -> Result<Vec<u8>> {
    let stream = timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
        .await
        .map_err(|_| ControlError::Timeout(format!("connecting to {}", path.display())))?
        .map_err(|e| connect_error(path, e))?;
    exchange_raw(stream, &request, t).await
}

fn parse_response(line: &[u8]) -> Result<Response> {
    serde_json::from_slice::<Response>(line)
        .map_err(|e| ControlError::Protocol(format!("a response that does not parse: {e}")))
}

/// One request and its answer on a connected stream.
#[cfg(test)]
async fn exchange_on(stream: UnixStream, request: &Request, t: Duration) -> Result<Response> {
    parse_response(&exchange_raw(stream, request, t).await?)
}

/// One request and its answer's line on a connected stream.
async fn exchange_raw(stream: UnixStream, request: &Request, t: Duration) -> Result<Vec<u8>> {
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(request).expect("a request always encodes");
    line.push(b'\n');
    let exchange = async {
        // A daemon that refuses this client answers and closes without reading, and may do
        // so before the request is written: the write then fails (EPIPE), but the answer
        // is already queued. Read it before reporting the write.
        let sent = wr.write_all(&line).await;
        // A status of many thousand backends is tens of MB: read it in large pieces.
        let mut rd = BufReader::with_capacity(1 << 20, rd);
        let mut buf = Vec::new();
        match (read_line(&mut rd, &mut buf, MAX_RESPONSE).await, sent) {
            (Ok(Some(())), _) => Ok(buf),
            (_, Err(e)) => Err(ControlError::Protocol(format!("sending the request: {e}"))),
            (Ok(None) | Err(None), Ok(())) => Err(ControlError::Protocol(
                "the daemon closed the connection without an answer".into(),
            )),
            (Err(Some(why)), Ok(())) => Err(ControlError::Protocol(why)),
        }
    };
    timeout(t, exchange)
        .await
        .map_err(|_| ControlError::Timeout(format!("waiting for the daemon's answer ({t:?})")))?
}

/// Runs `f` on a runtime of its own: for the CLI, which has none. Must not be called from
/// inside a Tokio runtime.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ControlError::Io {
            what: "starting a runtime for",
            path: PathBuf::from("the control client"),
            error,
        })?;
    Ok(rt.block_on(f))
}

async fn status(path: &Path) -> Result<Snapshot> {
    status_of(request(path, Request::Status).await?)
}

fn status_of(r: Response) -> Result<Snapshot> {
    match (r.ok, r.status, r.error) {
        (true, Some(s), _) => Ok(s),
        (true, None, _) => Err(ControlError::Protocol(
            "a status answer without status".into(),
        )),
        (false, _, e) => Err(ControlError::Daemon(e.unwrap_or_else(|| "failed".into()))),
    }
}

/// `lb-daemon status`: the daemon's status as a table ([`render_table`]), or with `json` its
/// [`Snapshot`] as pretty JSON. The text ends with a newline (print it with `print!`).
/// Blocking; not for use inside a Tokio runtime.
///
/// The JSON is the daemon's answer, laid out again: what `serde_json` would
/// print for the same [`Snapshot`], without decoding it into one and encoding it again
/// (0.2 s of the client's time for 100,000 backends).
pub fn cli_status(path: impl AsRef<Path>, json: Option<Json>) -> Result<String> {
    let path = path.as_ref();
    if let Some(layout) = json {
        let line = block_on(request_line(path, Request::Status, CLIENT_TIMEOUT))??;
        return status_json(&line, layout);
    }
    let s = block_on(status(path))??;
    Ok(render_table(&s, None))
}

/// How a status answer starts: [`Response`]'s fields in order, as `serde_json` writes them
/// (no spaces); it ends with the `}` that closes it.
const STATUS_ANSWER_HEAD: &[u8] = br#"{"ok":true,"status":"#;

/// The pretty JSON of the status in the daemon's answer `line`, with a newline. The status
/// part of an answer as this daemon writes it is checked to be one JSON object and laid out
/// with [`pretty_json`]; anything else (an error, another encoding) goes through
/// [`Response`].
/// How `lb-daemon status --json` prints the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Json {
    /// One line, as `ip -j` and `bpftool -j` print: for programs (and 40% smaller).
    Compact,
    /// Laid out for people (`--pretty`, as `ip -j -p` and `bpftool -p`).
    Pretty,
}

fn status_json(line: &[u8], layout: Json) -> Result<String> {
    let status = line
        .strip_prefix(STATUS_ANSWER_HEAD)
        .and_then(|rest| rest.strip_suffix(b"}"))
        .filter(|s| s.first() == Some(&b'{'))
        .and_then(|s| std::str::from_utf8(s).ok());
    let valid = |s: &str| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok();
    let laid_out = status.and_then(|s| match layout {
        Json::Compact => valid(s).then(|| s.to_string()),
        // The check that it is JSON and the layout side by side: each is tens of ms at
        // 100,000 backends.
        Json::Pretty => std::thread::scope(|scope| {
            let valid = scope.spawn(|| valid(s));
            let out = pretty_json(s);
            valid.join().unwrap_or(false).then_some(out)
        }),
    });
    let mut out = match laid_out {
        Some(out) => out,
        None => {
            let s = status_of(parse_response(line)?)?;
            match layout {
                Json::Compact => serde_json::to_string(&s),
                Json::Pretty => serde_json::to_string_pretty(&s),
            }
            .map_err(|e| ControlError::Protocol(format!("encoding the status: {e}")))?
        }
    };
    out.push('\n');
    Ok(out)
}

/// `compact`, JSON as `serde_json` writes it (no whitespace), laid out as its pretty
/// printer does: two spaces an indent, `": "` after a key, `{}` and `[]` when empty.
/// Works on the bytes: every byte it acts on (`{}[],:"` and `\`) is ASCII, so neither a
/// multi-byte character nor anything inside a string is touched.
fn pretty_json(compact: &str) -> String {
    const SPACES: &str = "                                                                ";
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        let mut n = 2 * depth;
        while n > 0 {
            let k = n.min(SPACES.len());
            out.push_str(&SPACES[..k]);
            n -= k;
        }
    }
    let bytes = compact.as_bytes();
    let mut out = String::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    // `compact[copied..i]` is still to be copied.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            open @ (b'{' | b'[') => {
                out.push_str(&compact[copied..=i]);
                let close = if open == b'{' { b'}' } else { b']' };
                if bytes.get(i + 1) == Some(&close) {
                    out.push(char::from(close));
                    i += 1;
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            close @ (b'}' | b']') => {
                out.push_str(&compact[copied..i]);
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(char::from(close));
            }
            b',' => {
                out.push_str(&compact[copied..=i]);
                newline(&mut out, depth);
            }
            b':' => {
                out.push_str(&compact[copied..i]);
                out.push_str(": ");
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 1;
        copied = i;
    }
    out.push_str(&compact[copied.min(compact.len())..]);
    out
}

/// `lb-daemon status --rate`: the table with per-second rates, from two status requests
/// `interval` apart; with `json`, the second status with each service's and real server's
/// `rate`. Blocking; not for use inside a Tokio runtime.
pub fn cli_status_rate(
    path: impl AsRef<Path>,
    interval: Duration,
    json: Option<Json>,
) -> Result<String> {
    let path = path.as_ref();
    let (first, second) = block_on(async {
        let first = status(path).await?;
        tokio::time::sleep(interval).await;
        Ok::<_, ControlError>((first, status(path).await?))
    })??;
    let encoded = match json {
        None => return Ok(render_table(&second, Some(&rates(&first, &second)))),
        Some(Json::Compact) => serde_json::to_string(&with_rates(&first, second)),
        Some(Json::Pretty) => serde_json::to_string_pretty(&with_rates(&first, second)),
    };
    let mut out =
        encoded.map_err(|e| ControlError::Protocol(format!("encoding the status: {e}")))?;
    out.push('\n');
    Ok(out)
}

/// `lb-daemon connections`: the table, or with `json` the answer's connections as JSON.
/// Blocking; not for use inside a Tokio runtime.
pub fn cli_connections(path: impl AsRef<Path>, request: Request, json: bool) -> Result<String> {
    let r = block_on(request_within(path.as_ref(), request, CLIENT_TIMEOUT))??;
    let c = match (r.ok, r.connections, r.error) {
        (true, Some(c), _) => c,
        (true, None, _) => {
            return Err(ControlError::Protocol(
                "a connections answer without connections".into(),
            ))
        }
        (false, _, e) => return Err(ControlError::Daemon(e.unwrap_or_else(|| "failed".into()))),
    };
    if json {
        let mut out = serde_json::to_string(&c)
            .map_err(|e| ControlError::Protocol(format!("encoding: {e}")))?;
        out.push('\n');
        Ok(out)
    } else {
        Ok(render_connections(&c))
    }
}

/// `lb-daemon which`: one line, or with `json` the answer as JSON. Blocking; not for use
/// inside a Tokio runtime.
pub fn cli_which(path: impl AsRef<Path>, request: Request, json: bool) -> Result<String> {
    let r = block_on(request_within(path.as_ref(), request, CLIENT_TIMEOUT))??;
    let w = match (r.ok, r.which, r.error) {
        (true, Some(w), _) => w,
        (true, None, _) => {
            return Err(ControlError::Protocol(
                "a which answer without which".into(),
            ))
        }
        (false, _, e) => return Err(ControlError::Daemon(e.unwrap_or_else(|| "failed".into()))),
    };
    if json {
        let mut out = serde_json::to_string(&w)
            .map_err(|e| ControlError::Protocol(format!("encoding: {e}")))?;
        out.push('\n');
        Ok(out)
    } else {
        Ok(w.line())
    }
}

/// A change request (`lb-daemon real-server`, `lb-daemon zero`): what the daemon says it
/// did. Blocking; not for use inside a Tokio runtime.
pub fn cli_change(path: impl AsRef<Path>, request: Request) -> Result<String> {
    let r = block_on(request_within(path.as_ref(), request, CLIENT_TIMEOUT))??;
    match (r.ok, r.message, r.error) {
        (true, m, _) => Ok(m.unwrap_or_default()),
        (false, _, e) => Err(ControlError::Daemon(e.unwrap_or_else(|| "refused".into()))),
    }
}

/// `lb-daemon stop`: asks the daemon to stop, releasing (`Some(true)`), keeping
/// (`Some(false)`) or as `global_defs.on_stop` says (`None`). Returns once the daemon has
/// taken the request; it stops after answering. Blocking; not for use inside a Tokio
/// runtime.
pub fn cli_stop(path: impl AsRef<Path>, release: Option<bool>) -> Result<()> {
    let r = block_on(request(path.as_ref(), Request::Stop { release }))??;
    if r.ok {
        Ok(())
    } else {
        Err(ControlError::Daemon(
            r.error.unwrap_or_else(|| "stop refused".into()),
        ))
    }
}

/// `lb-daemon reload`: asks the daemon to reload its configuration; its error (`file:line:
/// key: message`) when it refused. Blocking; not for use inside a Tokio runtime.
pub fn cli_reload(path: impl AsRef<Path>) -> Result<()> {
    let r = block_on(request(path.as_ref(), Request::Reload))??;
    if r.ok {
        Ok(())
    } else {
        Err(ControlError::Daemon(
            r.error.unwrap_or_else(|| "reload failed".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::test_support::{eventually, sample, unix_server_fds, TempDir};
    use tokio::task::JoinHandle;

    const RELOAD_ERROR: &str = "lb.toml:3: port: expected an integer";

    fn quick() -> Options {
        Options {
            idle_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(300),
            reply_timeout: Duration::from_secs(5),
            max_clients: 4,
            ..Options::default()
        }
    }

    /// A daemon that answers status with [`sample`] and refuses reloads.
    async fn fake_daemon(mut calls: mpsc::Receiver<Call>) {
        while let Some(call) = calls.recv().await {
            let r = match call.request {
                Request::Status => Response::status(sample()),
                Request::Reload => Response::error(RELOAD_ERROR),
                Request::Stop { .. } => Response::ok(),
                Request::Zero => Response::done("zeroed"),
                Request::RealServer { action, .. } => Response::done(format!("{action:?}")),
                Request::Connections { .. } => Response::connections(Connections::default()),
                Request::Which { .. } => Response::which(Which::default()),
                Request::Diff { .. } => Response::done("no change"),
            };
            call.reply(r);
        }
    }

    struct Running {
        path: PathBuf,
        server: JoinHandle<()>,
        daemon: JoinHandle<()>,
    }

    impl Running {
        async fn stop(self) {
            self.daemon.abort();
            let _ = self.daemon.await;
            self.server.await.unwrap();
        }
    }

    async fn start(dir: &TempDir, options: Options) -> Running {
        let path = dir.path().join("ctl.sock");
        let server = Server::bind_with(&path, options).await.unwrap();
        let (tx, rx) = mpsc::channel(CALL_QUEUE_LEN);
        Running {
            path,
            server: tokio::spawn(server.serve(tx)),
            daemon: tokio::spawn(fake_daemon(rx)),
        }
    }

    /// Everything the server sends until it closes (a reset counts as a close).
    async fn read_all(s: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server should close the connection");
        out
    }

    async fn exchange(s: &mut UnixStream, line: &[u8]) -> Response {
        s.write_all(line).await.unwrap();
        let mut rd = BufReader::new(s);
        let mut buf = Vec::new();
        timeout(Duration::from_secs(10), rd.read_until(b'\n', &mut buf))
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice(&buf).unwrap()
    }

    /// A user other than root and the daemon's own is turned away even when the socket's
    /// mode would let it connect (the moment between bind and chmod, or a mode changed by
    /// hand): the peer-credential check answers with an error and closes.
    #[tokio::test]
    async fn other_users_are_refused_by_their_credentials() {
        if !crate::testutil::privileged("control::other_users_are_refused") {
            return;
        }
        // Not under $TMPDIR: nobody must be able to reach the socket through the path.
        let dir = TempDir::world_reachable("ctl-cred");
        let run = start(&dir, quick()).await;
        std::fs::set_permissions(&run.path, std::fs::Permissions::from_mode(0o666)).unwrap();
        // A client as nobody (uid 65534). Linux keeps credentials per thread and the raw
        // syscalls (unlike glibc's setuid) change only the calling one, so a thread of its
        // own connects as nobody; the socket keeps those credentials (SO_PEERCRED is taken
        // at connect), and the real client code runs the exchange on it.
        let path = run.path.clone();
        let stream = std::thread::spawn(move || {
            // SAFETY: plain syscalls on this thread's credentials; the thread ends here.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                    0
                );
                assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
            }
            let s = std::os::unix::net::UnixStream::connect(&path);
            s.and_then(|s| s.set_nonblocking(true).map(|()| s))
        })
        .join()
        .unwrap()
        .expect("nobody reaches the socket (mode 0666, directory 0755 under /run)");
        // Let the server accept, answer and close before the request is written: the
        // client must still report the daemon's answer, not the broken pipe.
        let stream = UnixStream::from_std(stream).unwrap();
        timeout(Duration::from_secs(10), stream.readable())
            .await
            .unwrap()
            .unwrap();
        let answer = exchange_on(stream, &Request::Status, Duration::from_secs(10)).await;
        match answer {
            Ok(r) => assert!(
                !r.ok && r.error.as_deref() == Some("uid 65534 is not allowed"),
                "{r:?}"
            ),
            Err(e) => panic!("no answer: {e}"),
        }
        // Root still gets its answer.
        let r = request(&run.path, Request::Status).await.unwrap();
        assert_eq!(r, Response::status(sample()));
        run.stop().await;
    }

    #[tokio::test]
    async fn status_and_reload_round_trip() {
        let dir = TempDir::new("ctl");
        let run = start(&dir, quick()).await;
        let mode = std::fs::metadata(&run.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");

        let r = request(&run.path, Request::Status).await.unwrap();
        assert_eq!(r, Response::status(sample()));
        let r = request(&run.path, Request::Reload).await.unwrap();
        assert_eq!(r, Response::error(RELOAD_ERROR));
        // The wire format.
        assert_eq!(
            serde_json::to_string(&Response::error(RELOAD_ERROR)).unwrap(),
            r#"{"ok":false,"error":"lb.toml:3: port: expected an integer"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );

        // Several requests, bad ones among them, on one connection.
        let mut s = UnixStream::connect(&run.path).await.unwrap();
        let r = exchange(&mut s, b"{\"cmd\":\"nope\"}\n").await;
        assert!(!r.ok && r.error.unwrap().contains("unknown command \"nope\""));
        let r = exchange(&mut s, b"\xff\xfe garbage\r\n").await;
        assert!(!r.ok && r.error.unwrap().contains("not JSON"));
        let r = exchange(&mut s, b"[1,2]\n").await;
        assert!(!r.ok && r.error.unwrap().contains("expected {\"cmd\""));
        let r = exchange(&mut s, b"\n  \n{\"cmd\":\"status\",\"extra\":1}\r\n").await;
        assert_eq!(r, Response::status(sample()));
        drop(s);

        let path = run.path.clone();
        run.stop().await;
        assert!(
            !path.exists(),
            "the socket file is removed when serving stops"
        );
        assert!(matches!(
            request(&path, Request::Status).await,
            Err(ControlError::Connect(m)) if m.contains("is lb-daemon running?")
        ));
    }

    #[tokio::test]
    async fn stale_socket_replaced_live_one_and_other_files_left_alone() {
        let dir = TempDir::new("ctl");
        let path = dir.path().join("ctl.sock");
        // A daemon that died: the file is there, nothing listens.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let run = start(&dir, quick()).await;
        assert_eq!(
            request(&run.path, Request::Status).await.unwrap(),
            Response::status(sample())
        );
        // A second daemon refuses to start and leaves the first one working.
        assert!(matches!(
            Server::bind_with(&path, quick()).await,
            Err(ControlError::InUse(_))
        ));
        assert!(request(&run.path, Request::Status).await.unwrap().ok);
        run.stop().await;

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        assert!(matches!(
            Server::bind_with(&file, quick()).await,
            Err(ControlError::NotSocket(_))
        ));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn long_lines_are_refused_and_closed() {
        let dir = TempDir::new("ctl");
        let run = start(&dir, quick()).await;

        // Exactly the limit is fine.
        let mut line = br#"{"cmd":"status"}"#.to_vec();
        line.resize(MAX_LINE, b' ');
        line.push(b'\n');
        let mut s = UnixStream::connect(&run.path).await.unwrap();
        assert_eq!(exchange(&mut s, &line).await, Response::status(sample()));
        drop(s);

        // One byte more is not.
        let mut s = UnixStream::connect(&run.path).await.unwrap();
        s.write_all(&vec![b'a'; MAX_LINE + 1]).await.unwrap();
        let got = read_all(&mut s).await;
        let r: Response = serde_json::from_slice(&got).unwrap();
        assert_eq!(
            r.error.as_deref(),
            Some("request line longer than 65536 bytes")
        );

        // A flood without newline: cut off, and the others still served.
        let mut s = UnixStream::connect(&run.path).await.unwrap();
        let (mut rd, mut wr) = s.split();
        let flood = async {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        };
        let drain = async {
            let mut out = Vec::new();
            let _ = timeout(Duration::from_secs(10), rd.read_to_end(&mut out))
                .await
                .expect("closed");
        };
        tokio::join!(flood, drain);
        assert!(request(&run.path, Request::Status).await.unwrap().ok);
        run.stop().await;
    }

    #[tokio::test]
    async fn silent_and_half_done_clients_are_closed_without_blocking_others() {
        let dir = TempDir::new("ctl");
        let run = start(&dir, quick()).await;

        // Never sends: closed after the idle timeout, with no answer.
        let mut silent = UnixStream::connect(&run.path).await.unwrap();
        // Half a line, then a byte at a time: the timeout is for the whole line.
        let mut slow = UnixStream::connect(&run.path).await.unwrap();
        slow.write_all(b"{\"cmd\":").await.unwrap();
        // Half a line, then gone.
        let mut gone = UnixStream::connect(&run.path).await.unwrap();
        gone.write_all(b"{\"cmd\":\"sta").await.unwrap();
        gone.shutdown().await.unwrap();

        // Meanwhile, another client is served at once.
        let r = timeout(Duration::from_secs(5), request(&run.path, Request::Status))
            .await
            .expect("served while the others hang")
            .unwrap();
        assert!(r.ok);

        let slow_writer = async {
            let mut n = 0;
            while slow.write_all(b" ").await.is_ok() && n < 1000 {
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (silent_got, (), gone_got) =
            tokio::join!(read_all(&mut silent), slow_writer, read_all(&mut gone));
        assert!(silent_got.is_empty(), "{silent_got:?}");
        assert!(gone_got.is_empty(), "{gone_got:?}");
        run.stop().await;
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_is_dropped() {
        let dir = TempDir::new("ctl");
        let path = dir.path().join("ctl.sock");
        let server = Server::bind_with(&path, quick()).await.unwrap();
        let (tx, mut rx) = mpsc::channel::<Call>(CALL_QUEUE_LEN);
        let server = tokio::spawn(server.serve(tx));
        // A status far bigger than the socket buffers.
        let mut big = sample();
        for i in 0..20_000u32 {
            let mut svc = big.services[0].clone();
            svc.port = (i % 60_000) as u16 + 1;
            big.services.push(svc);
        }
        let daemon = tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                call.reply(Response::status(big.clone()));
            }
        });
        assert_eq!(unix_server_fds(&path), 1, "the listener");
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"cmd\":\"status\"}\n{\"cmd\":\"status\"}\n")
            .await
            .unwrap();
        // The server accepts, gives up writing, and closes its end.
        eventually("accepted", || unix_server_fds(&path) == 2).await;
        eventually("closed", || unix_server_fds(&path) == 1).await;
        let got = read_all(&mut s).await;
        assert!(
            !got.is_empty() && !got.ends_with(b"\n"),
            "a truncated answer, not {} bytes",
            got.len()
        );
        // Others are still served.
        let r = request(&path, Request::Reload).await.unwrap();
        assert!(r.ok && r.status.is_some());
        daemon.abort();
        let _ = daemon.await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn file_descriptors_stay_bounded() {
        let dir = TempDir::new("ctl");
        // Long enough that no slot frees up while the others are turned away.
        let options = Options {
            idle_timeout: Duration::from_secs(2),
            ..quick()
        };
        let run = start(&dir, options).await;
        const N: usize = 100;
        let max = quick().max_clients;
        let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
        let mut tasks = Vec::new();
        for _ in 0..N {
            let mut s = UnixStream::connect(&run.path).await.unwrap();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut rd = BufReader::new(&mut s);
                let mut line = Vec::new();
                let n = timeout(Duration::from_secs(10), rd.read_until(b'\n', &mut line))
                    .await
                    .expect("answered or closed")
                    .unwrap_or(0);
                let what = if n > 0 { "refused" } else { "closed" };
                if n > 0 {
                    let r: Response = serde_json::from_slice(&line).unwrap();
                    assert!(r.error.unwrap().contains("too many"));
                }
                let _ = tx.send(what);
                // Hold the connection until the server closes it.
                let mut rest = Vec::new();
                let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
            }));
        }
        drop(tx);
        // All but `max_clients` are turned away at once.
        let mut refused = 0;
        while refused < N - max {
            match rx.recv().await {
                Some("refused") => refused += 1,
                Some(_) => {}
                None => break,
            }
        }
        assert_eq!(refused, N - max);
        // The listener and at most max_clients connections, while N clients are connected.
        let held = unix_server_fds(&run.path);
        assert!(held <= 1 + max, "{held}");
        for t in tasks {
            t.await.unwrap();
        }
        eventually("all closed", || unix_server_fds(&run.path) == 1).await;
        // And the server still answers.
        assert!(request(&run.path, Request::Status).await.unwrap().ok);
        run.stop().await;
    }

    #[test]
    fn blocking_cli_helpers() {
        let dir = TempDir::new("ctl");
        let path = dir.path().join("ctl.sock");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let p = path.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind_with(&p, quick()).await.unwrap();
                let (tx, rx) = mpsc::channel(CALL_QUEUE_LEN);
                let server = tokio::spawn(server.serve(tx));
                ready_tx.send(()).unwrap();
                tokio::select! {
                    _ = fake_daemon(rx) => {}
                    _ = stop_rx => {}
                }
                server.await.unwrap();
            });
        });
        ready_rx.recv().unwrap();

        let table = cli_status(&path, None).unwrap();
        assert_eq!(table, render_table(&sample(), None));
        let json = cli_status(&path, Some(Json::Compact)).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), sample());
        assert_eq!(json, serde_json::to_string(&sample()).unwrap() + "\n");
        let json = cli_status(&path, Some(Json::Pretty)).unwrap();
        assert_eq!(
            json,
            serde_json::to_string_pretty(&sample()).unwrap() + "\n"
        );
        let rated = cli_status_rate(&path, Duration::from_millis(10), None).unwrap();
        assert!(rated.contains("CPS  InPPS  InBPS"), "{rated}");
        // With --json, the status (the fake's clock stands still: no rates; see
        // `status::tests::json_rates`).
        let rated = cli_status_rate(&path, Duration::from_millis(10), Some(Json::Compact));
        let rated: Snapshot = serde_json::from_str(&rated.unwrap()).unwrap();
        assert_eq!(rated, sample());
        let drain = Request::RealServer {
            service: Some("192.0.2.100:80".into()),
            real: Some("192.0.2.11".into()),
            action: RealServerAction::Drain,
            all: false,
        };
        assert_eq!(cli_change(&path, drain).unwrap(), "Drain");
        match cli_reload(&path) {
            Err(ControlError::Daemon(e)) => assert_eq!(e, RELOAD_ERROR),
            other => panic!("{other:?}"),
        }

        stop_tx.send(()).unwrap();
        thread.join().unwrap();
        assert!(!path.exists());
        let e = cli_reload(&path).unwrap_err().to_string();
        assert!(e.contains("no control socket at"), "{e}");
    }

    /// A snapshot whose strings hold every byte [`pretty_json`] acts on, escapes, and
    /// characters of several bytes; empty objects and arrays; nested ones.
    fn awkward() -> Snapshot {
        let mut s = sample();
        s.router_id = Some(r#"{[lb]},: "1"\ \" é 🦀 \u0041"#.into());
        s.services[0].backends[1].last_error = Some("a\nb\t\"c\":{}[],\\".into());
        s.services[1].backends.clear();
        s.vrrp[0].discards.insert("\"}".into(), 1);
        s.notify = Some(Default::default());
        s.sync = Some(Default::default());
        s
    }

    /// The services encoded on every core make the same answer, byte for byte, as the
    /// plain encoding (and the destructuring in `encode_status` names every field).
    #[test]
    fn a_parallel_status_is_the_same_bytes() {
        use crate::status::ServiceStatus;
        let mut s = sample();
        let one = s.services[0].clone();
        s.services = (0..PARALLEL_FROM + 3)
            .map(|i| ServiceStatus {
                port: i as u16,
                ..one.clone()
            })
            .collect();
        let mut parallel = Vec::new();
        encode_status(&s, &mut parallel).unwrap();
        let r = Response::status(s);
        assert_eq!(parallel, serde_json::to_vec(&r).unwrap());
        assert_eq!(response_line(&r), [parallel, b"\n".to_vec()].concat());
    }

    #[test]
    fn pretty_json_is_what_serde_json_prints() {
        for s in [sample(), awkward(), Snapshot::default()] {
            let compact = serde_json::to_string(&s).unwrap();
            assert_eq!(
                pretty_json(&compact),
                serde_json::to_string_pretty(&s).unwrap()
            );
            let answer = serde_json::to_vec(&Response::status(s.clone())).unwrap();
            assert!(answer.starts_with(STATUS_ANSWER_HEAD));
            assert_eq!(
                status_json(&answer, Json::Pretty).unwrap(),
                serde_json::to_string_pretty(&s).unwrap() + "\n"
            );
            assert_eq!(
                status_json(&answer, Json::Compact).unwrap(),
                serde_json::to_string(&s).unwrap() + "\n"
            );
        }
        for v in [
            r#"[]"#,
            r#"{}"#,
            r#"[[],{},[1,[2]]]"#,
            r#""x""#,
            "1.5",
            "null",
        ] {
            let value: serde_json::Value = serde_json::from_str(v).unwrap();
            assert_eq!(
                pretty_json(v),
                serde_json::to_string_pretty(&value).unwrap(),
                "{v}"
            );
        }
    }

    #[test]
    fn status_answers_that_are_not_laid_out_as_they_come() {
        // An error, and what does not parse: as before.
        for layout in [Json::Compact, Json::Pretty] {
            let error = serde_json::to_vec(&Response::error("boom")).unwrap();
            assert!(
                matches!(status_json(&error, layout), Err(ControlError::Daemon(e)) if e == "boom")
            );
            for bad in [
                &br#"{"ok":true,"status":{"time":1"#[..],
                br#"{"ok":true,"status":{"time":1}}junk"#,
                br#"{"ok":true,"status":{"time":1},"x":}"#,
                b"\xff",
            ] {
                assert!(
                    matches!(status_json(bad, layout), Err(ControlError::Protocol(_))),
                    "{bad:?}"
                );
            }
        }
        // Another writer's spacing: through the types, with the same result.
        let spaced = serde_json::to_string_pretty(&Response::status(sample())).unwrap();
        assert_eq!(
            status_json(spaced.as_bytes(), Json::Pretty).unwrap(),
            serde_json::to_string_pretty(&sample()).unwrap() + "\n"
        );
        assert_eq!(
            status_json(spaced.as_bytes(), Json::Compact).unwrap(),
            serde_json::to_string(&sample()).unwrap() + "\n"
        );
    }

    #[test]
    fn request_parsing() {
        assert_eq!(parse_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(br#" {"cmd" : "reload"} "#),
            Ok(Request::Reload)
        );
        for bad in [
            &b""[..],
            b"{}",
            b"{\"cmd\":1}",
            b"null",
            b"\"status\"",
            b"{\"cmd\":\"status\"",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        let long = format!(r#"{{"cmd":"{}"}}"#, "x".repeat(1000));
        assert!(parse_request(long.as_bytes()).unwrap_err().len() < 200);
        assert_eq!(parse_request(br#"{"cmd":"zero"}"#), Ok(Request::Zero));
        let weight = br#"{"cmd":"real-server","service":"192.0.2.100:80","real":"192.0.2.11","action":{"weight":5}}"#;
        assert_eq!(
            parse_request(weight),
            Ok(Request::RealServer {
                service: Some("192.0.2.100:80".into()),
                real: Some("192.0.2.11".into()),
                action: RealServerAction::Weight(5),
                all: false
            })
        );
        assert!(parse_request(br#"{"cmd":"real-server","action":"reset","all":true}"#).is_ok());
        for (bad, why) in [
            (
                &br#"{"cmd":"real-server","action":"drain","all":true}"#[..],
                "reset only",
            ),
            (
                br#"{"cmd":"real-server","real":"192.0.2.11","action":"drain"}"#,
                "name the service",
            ),
            (
                br#"{"cmd":"real-server","service":"192.0.2.100:80","action":"drain"}"#,
                "name the real server",
            ),
            (
                br#"{"cmd":"real-server","service":"a","real":"b","action":"explode"}"#,
                "explode",
            ),
            (
                br#"{"cmd":"real-server","service":"a","real":"b","action":{"weight":-1}}"#,
                "real-server",
            ),
            (
                br#"{"cmd":"real-server","service":"a","real":"b","action":"drain","x":1}"#,
                "real-server",
            ),
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(bad));
        }
        // Only status, connections and which read; diff reads a file as root, so it is root's.
        assert!(Request::Status.reads_only());
        assert!(!Request::Zero.reads_only() && !Request::Reload.reads_only());
        assert!(!Request::Diff {
            config: "/etc/shadow".into()
        }
        .reads_only());
        let e = parse_request(
            br#"{"cmd":"real-server","service":"a","real":"b","action":{"weight":4294967295}}"#,
        )
        .unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = parse_request(br#"{"cmd":"connections","limit":100000000}"#).unwrap_err();
        assert!(e.contains("above"), "{e}");
    }
}
