//! The event stream's sink: a FIFO or a Unix socket, never blocking. An event nobody can
//! take now is dropped and counted; the next one tries the path again.
use std::{
    fs::OpenOptions,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{FileTypeExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use tracing::warn;

use crate::log_limit::{LogLimit, LOG_EVERY};

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
    fn open(path: &Path, hold_open: bool) -> io::Result<Conn> {
        let file_type = std::fs::metadata(path)?.file_type();
        if file_type.is_fifo() {
            // ENXIO here means no reader: exactly "nobody is listening". Held open (read and
            // write, as keepalived opens its FIFO), the pipe keeps what nobody read yet.
            let file = OpenOptions::new()
                .read(hold_open)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            return Ok(Conn {
                fd: file.into(),
                kind: ConnKind::Fifo,
            });
        }
        if file_type.is_socket() {
            return match connect_unix(path, socket2::Type::DGRAM) {
                Ok(fd) => Ok(Conn {
                    fd,
                    kind: ConnKind::Datagram,
                }),
                Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(Conn {
                    fd: connect_unix(path, socket2::Type::STREAM)?,
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
fn connect_unix(path: &Path, ty: socket2::Type) -> io::Result<OwnedFd> {
    let addr = socket2::SockAddr::unix(path)?;
    let sock = socket2::Socket::new(socket2::Domain::UNIX, ty.nonblocking(), None)?;
    sock.connect(&addr)?;
    Ok(sock.into())
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
    /// keepalived's way with its FIFO: opened for reading too, so lines written while no
    /// reader is there (before its `notify_fifo_script` has opened it) wait in the pipe, up
    /// to its capacity, instead of being dropped.
    hold_open: bool,
}

impl EventSink {
    pub(crate) fn new(path: PathBuf, hold_open: bool) -> Self {
        EventSink {
            path,
            hold_open,
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
                None => match Conn::open(&self.path, self.hold_open) {
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
