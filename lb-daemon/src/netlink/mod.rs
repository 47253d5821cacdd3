//! Netlink on the rust-netlink crates, on the ground floor: interface addresses ([`addr`]:
//! VRRP's virtual addresses, real-server mode's VIP on `lo`), links and their XDP program
//! ([`link`]), and the socket and framing the neighbour code ([`crate::dataplane::neigh`])
//! and the netdev family query ([`crate::dataplane::devbound`]) build on.
//!
//! `netlink-packet-core` frames and checks every message (`NetlinkBuffer`, `NetlinkHeader`,
//! `ErrorMessage`, `DoneMessage`, `NlasIterator`); `netlink-packet-route` and
//! `netlink-packet-generic` encode the requests and decode the family headers and
//! attributes; `netlink-sys` owns the socket. This module adds what the daemon needs on top:
//!
//! 1. [`messages`] walks a receive buffer with the crate's checked buffers, and
//!    [`parse_control`] turns `NLMSG_DONE` / `NLMSG_ERROR` into [`Control`], with the
//!    extended-ACK text. Kernel input is treated as hostile: malformed data yields a
//!    [`NetlinkError`], never a panic.
//! 2. **[`RouteSocket`]**: a non-blocking `NETLINK_ROUTE` [`netlink_sys::Socket`] driven by
//!    [`tokio::io::unix::AsyncFd`]: request/ACK exchanges and dumps matched by sequence
//!    number, or, after [`RouteSocket::subscribe`], multicast notifications.
//!
//! Why not `rtnetlink`'s connection task (`netlink-proto` 0.14): it logs and drops a
//! message it cannot decode as a whole `RouteNetlinkMessage` (and a whole datagram on a
//! framing error), so the neighbour resolver would never learn that its view needs a
//! re-dump ([`neigh::NeighError::needs_resync`]); it leaves the stale
//! queue after `ENOBUFS` to be applied on top of the re-dump; and it neither restarts a
//! dump flagged `NLM_F_DUMP_INTR` nor detects a datagram cut by a short buffer. This
//! socket does all four, and an abandoned request cannot poison the next one.

pub mod addr;
pub mod link;
pub mod neigh;
pub mod route;

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, RawFd};

pub use netlink_packet_core::{
    DecodeError, NetlinkHeader, NetlinkMessage, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_core::{
    DoneBuffer, DoneMessage, ErrorBuffer, ErrorMessage, NetlinkBuffer, NetlinkPayload,
    NetlinkSerializable, NlaBuffer, NlasIterator, Parseable,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;
use tracing::{debug, trace};

/// The netlink message header, as `netlink-packet-core` decodes it.
pub type NlHeader = NetlinkHeader;

/// `sizeof(struct nlmsghdr)`, include/uapi/linux/netlink.h.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlmsgerr)` without extended-ACK TLVs: `int error` + `struct nlmsghdr`.
/// The kernel always sends at least this much; `netlink-packet-core` only checks the
/// error code, so a shorter one is rejected here.
const NLMSGERR_LEN: usize = 4 + NLMSG_HDRLEN;
/// `enum nlmsgerr_attrs`: human-readable error message (NUL-terminated string). Not
/// among `netlink-packet-core`'s constants.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

pub const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
pub const AF_INET: u8 = libc::AF_INET as u8;
pub const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Receive buffer size. The kernel caps a dump skb at 32 KiB
/// (`netlink_recvmsg()` bounds `max_recvmsg_len`), notifications are tiny.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Socket receive buffer requested for event sockets: storms (link flap with
/// thousands of neighbour entries) should not overflow it under normal load.
const EVENT_SOCKET_RCVBUF: libc::c_int = 4 * 1024 * 1024;
/// How often [`RouteSocket::dump`] restarts a dump flagged `NLM_F_DUMP_INTR`.
pub const DUMP_ATTEMPTS: u32 = 3;

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

/// The control messages every netlink protocol shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `NLMSG_NOOP`.
    Noop,
    /// `NLMSG_DONE` (end of a dump) without error.
    Done,
    /// `NLMSG_ERROR` with error 0: positive acknowledgement.
    Ack,
    /// `NLMSG_ERROR` with an error, or `NLMSG_DONE` carrying a dump error.
    Error {
        /// Positive errno value (the kernel sends it negated).
        errno: i32,
        /// Extended-ACK message (`NLMSGERR_ATTR_MSG`), if the kernel sent one.
        message: Option<String>,
    },
}

/// Errors of the framing layer and of [`RouteSocket`]: malformed kernel data,
/// kernel-reported errors and I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// Kernel data that does not decode: `what` names the structure (`nlmsghdr`,
    /// `ndmsg`, `attribute`, ...), `source` is the crate's account of it.
    #[error("malformed netlink data ({what}): {source}")]
    Malformed {
        /// Which structure failed to decode.
        what: &'static str,
        /// What the decoder said.
        #[source]
        source: DecodeError,
    },
    /// `NLMSG_OVERRUN`: the kernel says data was lost.
    #[error("kernel reported NLMSG_OVERRUN (data lost)")]
    Overrun,
    /// The kernel answered a request with an error.
    #[error("{}", kernel_error_text(.errno, .message))]
    Kernel {
        /// Positive errno value.
        errno: i32,
        /// Extended-ACK message, if any.
        message: Option<String>,
    },
    /// Every attempt at a dump was flagged `NLM_F_DUMP_INTR`.
    #[error("netlink dump interrupted by concurrent changes {attempts} times in a row")]
    DumpInterrupted {
        /// Number of attempts made.
        attempts: u32,
    },
    /// `ENOBUFS` on an event socket: the receive queue overflowed and notifications
    /// were dropped. The socket stays usable; the caller must re-dump.
    #[error("netlink receive queue overflowed (ENOBUFS): events were lost, re-dump")]
    EventsLost,
    /// A datagram did not fit the receive buffer (it was cut and its tail lost).
    #[error("netlink datagram of {len} bytes exceeds the {cap}-byte receive buffer")]
    DatagramTooLarge {
        /// Real datagram length.
        len: usize,
        /// Receive buffer capacity.
        cap: usize,
    },
    /// An operation was called on the wrong kind of socket.
    #[error("invalid use of a netlink socket: {0}")]
    Misuse(&'static str),
    /// A system call failed.
    #[error("netlink {op} failed: {source}")]
    Io {
        /// The failing operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Display text of a kernel error: strerror plus the extended-ACK message.
fn kernel_error_text(errno: &i32, message: &Option<String>) -> String {
    let base = format!(
        "kernel returned error: {}",
        io::Error::from_raw_os_error(*errno)
    );
    match message {
        Some(m) => format!("{base} ({m})"),
        None => base,
    }
}

impl NetlinkError {
    /// The errno for [`NetlinkError::Kernel`] and [`NetlinkError::Io`] errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        NetlinkError::Io { op, source }
    }

    /// A [`DecodeError`] about structure `what`, for `map_err`.
    pub fn malformed(what: &'static str) -> impl FnOnce(DecodeError) -> Self {
        move |source| NetlinkError::Malformed { what, source }
    }
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// One request as bytes: `inner` (a `RouteNetlinkMessage`, a `GenlMessage`, ...) behind a
/// header with `flags` and `seq`, serialized by `netlink-packet-core`. `nlmsg_pid` is 0:
/// the kernel identifies the sender by its socket.
pub fn encode<T: NetlinkSerializable>(inner: T, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

/// Iterator over the messages in one receive buffer; see [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

/// Split a buffer of (possibly several, multipart) netlink messages into
/// `(header, payload)` pairs, each checked by `netlink-packet-core`'s `NetlinkBuffer`.
///
/// A framing error (bad `nlmsg_len`, truncated header) is returned once and ends the
/// iteration, because the next message boundary is unknown.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(NlHeader, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match split_message(self.rest) {
            Ok((header, payload, rest)) => {
                self.rest = rest;
                Some(Ok((header, payload)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// The first message of `buf`: header, payload and what follows it.
pub fn split_message(buf: &[u8]) -> Result<(NlHeader, &[u8], &[u8]), NetlinkError> {
    let checked = NetlinkBuffer::new_checked(buf).map_err(NetlinkError::malformed("nlmsghdr"))?;
    let header = NetlinkHeader::parse(&checked).map_err(NetlinkError::malformed("nlmsghdr"))?;
    // new_checked() guarantees NLMSG_HDRLEN <= nlmsg_len <= buf.len().
    let payload = checked.payload();
    // Messages are NLMSG_ALIGNed; the padding of the last one may be missing.
    let next = (header.length as usize)
        .next_multiple_of(usize::from(netlink_packet_core::NLMSG_ALIGNTO))
        .min(buf.len());
    Ok((header, payload, buf.get(next..).unwrap_or_default()))
}

/// Decode a control message with `netlink-packet-core`. `Ok(None)`: not a control
/// message (a protocol message type, or a reserved low type nobody sends), for the
/// caller to decode. `NLMSG_OVERRUN` is [`NetlinkError::Overrun`].
pub fn parse_control(header: &NlHeader, payload: &[u8]) -> Result<Option<Control>, NetlinkError> {
    match header.message_type {
        NLMSG_NOOP => Ok(Some(Control::Noop)),
        NLMSG_ERROR => {
            if payload.len() < NLMSGERR_LEN {
                return Err(NetlinkError::Malformed {
                    what: "nlmsgerr",
                    source: DecodeError::buffer_too_small(payload.len(), NLMSGERR_LEN),
                });
            }
            let error = ErrorBuffer::new_checked(&payload)
                .and_then(|b| ErrorMessage::parse(&b))
                .map_err(NetlinkError::malformed("nlmsgerr"))?;
            Ok(Some(match error.code {
                None => Control::Ack,
                Some(code) => Control::Error {
                    errno: errno_from_wire(code.get()),
                    message: ext_ack_message(header.flags, &error.header),
                },
            }))
        }
        NLMSG_DONE => {
            // Since Linux 4.x rtnetlink puts the dump's final status (an int, 0 or
            // -errno) into NLMSG_DONE (netlink_dump_done()). Older/other senders may
            // send an empty payload, which means success.
            let code = match DoneBuffer::new_checked(&payload) {
                Ok(done) => {
                    DoneMessage::parse(&done)
                        .map_err(NetlinkError::malformed("NLMSG_DONE"))?
                        .code
                }
                Err(_) => 0,
            };
            Ok(Some(match code {
                0 => Control::Done,
                code => Control::Error {
                    errno: errno_from_wire(code),
                    message: None,
                },
            }))
        }
        NLMSG_OVERRUN => Err(NetlinkError::Overrun),
        _ => Ok(None),
    }
}

/// The kernel sends `-errno`; tolerate (hostile) positive values and `i32::MIN`.
fn errno_from_wire(error: i32) -> i32 {
    i32::try_from(error.unsigned_abs()).unwrap_or(i32::MAX)
}

/// Best-effort extraction of `NLMSGERR_ATTR_MSG` (e.g. "Device not specified") from what
/// follows the error code: the echoed request (cut to its header if `NLM_F_CAPPED`),
/// then extended-ACK TLVs (if `NLM_F_ACK_TLVS`). `netlink-packet-core` leaves these bytes
/// undecoded. The message only decorates an error we already have, so malformed TLVs
/// are ignored rather than turned into a second error.
fn ext_ack_message(flags: u16, echoed_and_tlvs: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        // Full echo: the embedded nlmsghdr's nlmsg_len covers the original request.
        NetlinkBuffer::new_checked(echoed_and_tlvs).ok()?.length() as usize
    };
    let tlvs = echoed_and_tlvs.get(echoed.next_multiple_of(4)..)?;
    for attr in NlasIterator::new(tlvs) {
        let attr = attr.ok()?;
        if attr.kind() == NLMSGERR_ATTR_MSG {
            return attr_string(attr.value()).filter(|s| !s.is_empty());
        }
    }
    None
}

/// A NUL-terminated string (`IFA_LABEL`, extended-ACK text, an ethtool driver name),
/// trimmed; invalid UTF-8 is replaced rather than rejected. `None` for an empty value.
pub fn attr_string(value: &[u8]) -> Option<String> {
    let text = value.split(|&b| b == 0).next().unwrap_or_default();
    let text = String::from_utf8_lossy(text).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// The attributes in `buf`, each checked by `netlink-packet-core`'s `NlaBuffer`; a
/// malformed one is an error (`what`: "attribute") and ends the iteration.
pub fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<NlaBuffer<&[u8]>, NetlinkError>> + '_ {
    NlasIterator::new(buf).map(|a| a.map_err(NetlinkError::malformed("attribute")))
}

// ---------------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------------

/// A `NETLINK_ROUTE` socket for requests or for multicast notifications.
///
/// Two kinds exist because replies and notifications would otherwise interleave on
/// one socket: [`RouteSocket::open`] gives a request socket ([`request`](Self::request),
/// [`dump`](Self::dump)), [`RouteSocket::subscribe`] an event socket
/// ([`recv_events`](Self::recv_events)). Datagrams not sent by the kernel
/// (`nl_pid != 0`) are dropped, and replies are matched to requests by sequence
/// number, so a late reply to an abandoned request cannot be mistaken for the
/// current one.
#[derive(Debug)]
pub struct RouteSocket {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
    seq: u32,
    subscribed: bool,
    /// A request was started but not completed (its future was dropped, it timed out,
    /// or it failed mid-way): unread replies, possibly a dump still running in the
    /// kernel (which would make the next dump fail with `EBUSY`). The next request
    /// replaces the socket instead of trying to drain it.
    in_flight: bool,
}

impl RouteSocket {
    /// Open a request socket, in the network namespace of the calling thread.
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O enabled (the socket is
    /// registered with its reactor).
    pub fn open() -> Result<Self, NetlinkError> {
        Self::new(&[])
    }

    /// Open an event socket that joined the given `RTNLGRP_*` multicast groups.
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O enabled.
    pub fn subscribe(groups: &[u32]) -> Result<Self, NetlinkError> {
        if groups.is_empty() {
            return Err(NetlinkError::Misuse("subscribe() needs at least one group"));
        }
        Self::new(groups)
    }

    fn new(groups: &[u32]) -> Result<Self, NetlinkError> {
        let socket = open_route_socket(groups)?;
        // SAFETY: a netlink_sys::Socket owns its descriptor, always returns it from
        // as_raw_fd() and closes it only when dropped, i.e. together with the AsyncFd.
        let fd = unsafe { AsyncFd::register(socket) }
            .map_err(|e| NetlinkError::io("register with tokio", e.into_parts().1))?;
        Ok(RouteSocket {
            fd,
            buf: vec![0; RECV_BUF_LEN],
            seq: 0,
            subscribed: !groups.is_empty(),
            in_flight: false,
        })
    }

    /// Whether this is an event socket from [`RouteSocket::subscribe`].
    pub fn is_subscribed(&self) -> bool {
        self.subscribed
    }

    /// The `netlink-sys` socket, for socket options.
    pub fn socket(&self) -> &Socket {
        self.fd.get_ref()
    }

    /// Whether a request was abandoned half-way (see the field's comment).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Send the request built by `build(seq)` (which must set `NLM_F_ACK`) and wait
    /// for the kernel's acknowledgement. A negative acknowledgement is
    /// [`NetlinkError::Kernel`]; which errnos mean "already done" is for the caller.
    pub async fn request(
        &mut self,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<(), NetlinkError> {
        self.begin_request()?;
        let seq = self.next_seq();
        self.send(&build(seq)).await?;
        loop {
            let len = self.recv().await?;
            for item in replies(self.buf.get(..len).unwrap_or_default(), seq) {
                let (header, payload) = item?;
                match parse_control(&header, payload)? {
                    Some(Control::Ack) => {
                        self.in_flight = false;
                        return Ok(());
                    }
                    Some(Control::Error { errno, message }) => {
                        self.in_flight = false;
                        return Err(NetlinkError::Kernel { errno, message });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Run the dump request built by `build(seq)` and collect what `decode` makes of
    /// each non-control reply message (`Ok(None)`: skip it). A dump flagged
    /// `NLM_F_DUMP_INTR` (the table changed underneath) is restarted, up to
    /// [`DUMP_ATTEMPTS`] times, then [`NetlinkError::DumpInterrupted`] is returned.
    /// An error from `decode` ends the dump.
    pub async fn dump<T, E>(
        &mut self,
        build: impl Fn(u32) -> Vec<u8>,
        mut decode: impl FnMut(&NlHeader, &[u8]) -> Result<Option<T>, E>,
    ) -> Result<Vec<T>, E>
    where
        E: From<NetlinkError>,
    {
        self.begin_request()?;
        for _ in 0..DUMP_ATTEMPTS {
            let seq = self.next_seq();
            self.send(&build(seq)).await?;
            let mut items = Vec::new();
            let mut interrupted = false;
            'receive: loop {
                let len = self.recv().await?;
                for item in replies(self.buf.get(..len).unwrap_or_default(), seq) {
                    let (header, payload) = item?;
                    interrupted |= header.flags & NLM_F_DUMP_INTR != 0;
                    match parse_control(&header, payload)? {
                        Some(Control::Done) => break 'receive,
                        Some(Control::Error { errno, message }) => {
                            self.in_flight = false;
                            return Err(NetlinkError::Kernel { errno, message }.into());
                        }
                        Some(Control::Ack | Control::Noop) => {}
                        None => items.extend(decode(&header, payload)?),
                    }
                }
            }
            if !interrupted {
                self.in_flight = false;
                return Ok(items);
            }
            debug!("netlink dump interrupted by concurrent changes, retrying");
        }
        self.in_flight = false;
        Err(NetlinkError::DumpInterrupted {
            attempts: DUMP_ATTEMPTS,
        }
        .into())
    }

    /// Wait for the next datagram of notifications and return its bytes (to be split
    /// with [`messages`]). Cancel-safe: a datagram is only consumed in the poll that
    /// returns it, so dropping the future (e.g. in `select!`) loses nothing.
    ///
    /// [`NetlinkError::EventsLost`] (ENOBUFS) and [`NetlinkError::DatagramTooLarge`]
    /// mean notifications were dropped; the socket remains usable, but the caller must
    /// re-dump to learn the current state.
    ///
    /// Before returning `EventsLost` the queued (now outdated) notifications are
    /// discarded. This matters: after an overrun the kernel marks the socket congested
    /// and silently drops every further notification until the queue has been emptied
    /// (`netlink_overrun()` reports ENOBUFS only once, `netlink_rcv_wake()` clears the
    /// state). A dump taken while still congested could miss later changes for good,
    /// and stale queued events would be applied on top of the fresh dump.
    pub async fn recv_events(&mut self) -> Result<&[u8], NetlinkError> {
        if !self.subscribed {
            return Err(NetlinkError::Misuse(
                "recv_events() needs a socket from RouteSocket::subscribe()",
            ));
        }
        match self.recv().await {
            Ok(len) => Ok(self.buf.get(..len).unwrap_or_default()),
            Err(NetlinkError::EventsLost) => {
                self.drain_queue()?;
                Err(NetlinkError::EventsLost)
            }
            Err(e) => Err(e),
        }
    }

    /// Read and discard everything queued on the socket (see [`Self::recv_events`]).
    /// Bounded, so a continuous flood cannot keep us here forever.
    fn drain_queue(&mut self) -> Result<(), NetlinkError> {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut discarded = 0u32;
        for _ in 0..65_536 {
            match recv_datagram(fd, &mut self.buf, true) {
                Ok(_) => discarded += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(e) => return Err(NetlinkError::io("recvfrom", e)),
            }
        }
        debug!(
            discarded,
            "discarded queued netlink events after an overrun"
        );
        Ok(())
    }

    /// Common start of a request: check the socket kind and replace the socket if a
    /// previous request was abandoned.
    fn begin_request(&mut self) -> Result<(), NetlinkError> {
        if self.subscribed {
            return Err(NetlinkError::Misuse(
                "requests need a socket from RouteSocket::open(), not a subscribed one",
            ));
        }
        if self.in_flight {
            debug!("previous netlink request was abandoned; reopening the request socket");
            *self = Self::new(&[])?;
        }
        self.in_flight = true;
        Ok(())
    }

    /// Sequence numbers start at 1 and skip 0 on wrap-around: notifications use 0.
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    async fn send(&self, msg: &[u8]) -> Result<(), NetlinkError> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| NetlinkError::io("poll", e))?;
            match guard.try_io(|fd| fd.get_ref().send_to(msg, &kernel, libc::MSG_DONTWAIT)) {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(NetlinkError::io("sendto", e)),
                Ok(Ok(sent)) if sent != msg.len() => {
                    return Err(NetlinkError::io(
                        "sendto",
                        io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
                    ));
                }
                Ok(Ok(_)) => return Ok(()),
            }
        }
    }

    /// Receive one datagram from the kernel into `self.buf`; returns its length.
    async fn recv(&mut self) -> Result<usize, NetlinkError> {
        let cap = self.buf.len();
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| NetlinkError::io("poll", e))?;
            let buf = &mut self.buf;
            match guard.try_io(|fd| recv_datagram(fd.get_ref().as_raw_fd(), buf, true)) {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(NetlinkError::EventsLost);
                }
                Ok(Err(e)) => return Err(NetlinkError::io("recvfrom", e)),
                Ok(Ok((_, sender))) if sender != 0 => {
                    // Only the kernel (port id 0) may talk to us; another process
                    // with CAP_NET_ADMIN could otherwise inject fake messages.
                    debug!(sender, "ignoring netlink datagram not sent by the kernel");
                }
                Ok(Ok((len, _))) if len > cap => {
                    return Err(NetlinkError::DatagramTooLarge { len, cap });
                }
                Ok(Ok((len, _))) => return Ok(len),
            }
        }
    }
}

/// The messages of one received datagram that answer request `seq` (framing errors
/// included); replies to an earlier, abandoned request are dropped.
fn replies(
    buf: &[u8],
    seq: u32,
) -> impl Iterator<Item = Result<(NlHeader, &[u8]), NetlinkError>> + '_ {
    messages(buf).filter(move |item| match item {
        Ok((header, _)) if header.sequence_number != seq => {
            trace!(
                seq = header.sequence_number,
                expected = seq,
                "dropping stale netlink reply"
            );
            false
        }
        _ => true,
    })
}

impl AsRawFd for RouteSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

fn open_route_socket(groups: &[u32]) -> Result<Socket, NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| NetlinkError::io("socket", e))?;
    socket
        .set_non_blocking(true)
        .map_err(|e| NetlinkError::io("set non-blocking", e))?;
    // Port id 0: the kernel picks a unique one.
    socket
        .bind_auto()
        .map_err(|e| NetlinkError::io("bind", e))?;

    if groups.is_empty() {
        // Best effort: extended ACKs give readable error messages, capped ACKs keep
        // error replies from echoing our whole request. Both exist since Linux 4.12.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        return Ok(socket);
    }
    for &group in groups {
        // NETLINK_ADD_MEMBERSHIP takes the group number (not the legacy bitmask),
        // which also works for groups above 32.
        socket
            .add_membership(group)
            .map_err(|e| NetlinkError::io("join multicast group", e))?;
    }
    // A larger queue makes ENOBUFS (and the re-dump it forces) rarer.
    // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; fall back.
    // Neither netlink-sys nor socket2 has a setter for SO_RCVBUFFORCE.
    if crate::os::set_option(
        socket.as_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &EVENT_SOCKET_RCVBUF,
        "SO_RCVBUFFORCE",
    )
    .is_err()
        && socket.set_rx_buf_sz(EVENT_SOCKET_RCVBUF).is_err()
    {
        debug!("could not enlarge the netlink event socket receive buffer");
    }
    Ok(socket)
}

/// `recvfrom()` with `MSG_TRUNC`, which makes netlink return the real datagram length
/// even when it did not fit, so truncation is detected instead of silently parsing
/// half a message. Returns `(length, sender port id)`. `dontwait`: `MSG_DONTWAIT`, for
/// a blocking socket that must not block here.
///
/// Kept by hand: `netlink_sys::Socket::recv_from` advances its `BufMut` by the length
/// the kernel returns, which with `MSG_TRUNC` can exceed the buffer (a panic), and
/// without it a cut datagram cannot be told from a whole one.
pub(crate) fn recv_datagram(fd: RawFd, buf: &mut [u8], dontwait: bool) -> io::Result<(usize, u32)> {
    let flags = if dontwait { libc::MSG_DONTWAIT } else { 0 } | libc::MSG_TRUNC;
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
    let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `from`/`from_len`
    // describe a writable sockaddr_nl.
    let rc = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            (&mut from as *mut libc::sockaddr_nl).cast(),
            &mut from_len,
        )
    };
    let len = usize::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    Ok((len, from.nl_pid))
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

/// Hand-built wire data for the unit tests of this module and of the rtnetlink
/// families built on it ([`crate::dataplane::neigh`], [`addr`]).
/// Deliberately independent of [`MessageBuilder`], so the encoder is checked against
/// a second implementation.
#[cfg(test)]
pub(crate) mod test_wire {
    /// One netlink message (header + payload), padded to 4 bytes. `nlmsg_pid` is an
    /// arbitrary non-zero value: decoders must not depend on it.
    pub(crate) fn msg(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&msg_type.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    /// One attribute (TLV), padded to 4 bytes.
    pub(crate) fn attr(attr_type: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&attr_type.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    /// xorshift64*: a tiny deterministic PRNG for the fuzz-style tests.
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// A value in `0..n` (`n` > 0).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_wire::{attr, msg, XorShift};
    use super::*;

    #[test]
    fn constants_match_libc() {
        assert_eq!(NLMSG_NOOP as libc::c_int, libc::NLMSG_NOOP);
        assert_eq!(NLMSG_ERROR as libc::c_int, libc::NLMSG_ERROR);
        assert_eq!(NLMSG_DONE as libc::c_int, libc::NLMSG_DONE);
        assert_eq!(NLMSG_OVERRUN as libc::c_int, libc::NLMSG_OVERRUN);
        assert_eq!(NLM_F_REQUEST as libc::c_int, libc::NLM_F_REQUEST);
        assert_eq!(NLM_F_ACK as libc::c_int, libc::NLM_F_ACK);
        assert_eq!(NLM_F_DUMP as libc::c_int, libc::NLM_F_DUMP);
        assert_eq!(NLM_F_DUMP_INTR as libc::c_int, libc::NLM_F_DUMP_INTR);
        assert_eq!(NLM_F_REPLACE as libc::c_int, libc::NLM_F_REPLACE);
        assert_eq!(NLM_F_EXCL as libc::c_int, libc::NLM_F_EXCL);
        assert_eq!(NLM_F_CREATE as libc::c_int, libc::NLM_F_CREATE);
        assert_eq!(NLM_F_CAPPED as libc::c_int, libc::NLM_F_CAPPED);
        assert_eq!(NLM_F_ACK_TLVS as libc::c_int, libc::NLM_F_ACK_TLVS);
        assert_eq!(mem::size_of::<libc::nlmsghdr>(), NLMSG_HDRLEN);
    }

    #[test]
    fn encode_frames_and_pads() {
        use netlink_packet_route::{
            address::{AddressAttribute, AddressMessage},
            RouteNetlinkMessage,
        };
        let mut m = AddressMessage::default();
        m.header.index = 0x0807_0605;
        m.attributes.push(AddressAttribute::Label("ab".into())); // 7 bytes -> padded to 8
        let got = encode(RouteNetlinkMessage::NewAddress(m), 0x0405, 7);
        let mut want = Vec::new();
        want.extend_from_slice(&32u32.to_ne_bytes());
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&0x0405u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&0x0807_0605u32.to_ne_bytes());
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(b"ab\0\0");
        assert_eq!(got, want);

        // Our own framing reads it back.
        let (header, payload, rest) = split_message(&got).unwrap();
        assert_eq!(
            (header.length, header.message_type, header.sequence_number),
            (32, 20, 7)
        );
        assert!(rest.is_empty());
        let attrs: Vec<_> = attributes(&payload[8..])
            .map(|a| a.map(|a| (a.kind(), a.value().to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(attrs, vec![(3, b"ab\0".to_vec())]);
    }

    #[test]
    fn control_messages() {
        let h = |t| {
            let mut h = NlHeader::default();
            h.message_type = t;
            h
        };
        assert_eq!(
            parse_control(&h(NLMSG_NOOP), &[]).unwrap(),
            Some(Control::Noop)
        );
        assert_eq!(
            parse_control(&h(NLMSG_DONE), &[]).unwrap(),
            Some(Control::Done)
        );
        assert_eq!(
            parse_control(&h(NLMSG_DONE), &0i32.to_ne_bytes()).unwrap(),
            Some(Control::Done)
        );
        assert_eq!(
            parse_control(&h(NLMSG_DONE), &(-libc::EBUSY).to_ne_bytes()).unwrap(),
            Some(Control::Error {
                errno: libc::EBUSY,
                message: None
            })
        );
        assert_eq!(
            parse_control(&h(NLMSG_ERROR), &[0; 20]).unwrap(),
            Some(Control::Ack)
        );
        assert!(matches!(
            parse_control(&h(NLMSG_OVERRUN), &[]),
            Err(NetlinkError::Overrun)
        ));
        // Protocol types and reserved low types are for the caller.
        for t in [5, 15, 20, 28, 0xffff] {
            assert_eq!(parse_control(&h(t), &[1, 2, 3]).unwrap(), None);
        }
        // Hostile error values: positive and i32::MIN.
        let mut p = i32::MIN.to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse_control(&h(NLMSG_ERROR), &p).unwrap(),
            Some(Control::Error {
                errno: i32::MAX,
                message: None
            })
        );
    }

    #[test]
    fn ext_ack_text() {
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; 16]); // capped echo
        p.extend(attr(NLMSGERR_ATTR_MSG, b"ipv4: Address already assigned\0"));
        let m = msg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 1, &p);
        let (header, payload) = messages(&m).next().unwrap().unwrap();
        let ctl = parse_control(&header, payload).unwrap();
        assert_eq!(
            ctl,
            Some(Control::Error {
                errno: libc::EINVAL,
                message: Some("ipv4: Address already assigned".into())
            })
        );
        let Some(Control::Error { errno, message }) = ctl else {
            unreachable!()
        };
        let e = NetlinkError::Kernel { errno, message };
        assert!(e.to_string().contains("Address already assigned"), "{e}");
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }

    #[test]
    fn attr_strings() {
        assert_eq!(attr_string(b"eth0:vip\0").as_deref(), Some("eth0:vip"));
        assert_eq!(attr_string(b"eth0").as_deref(), Some("eth0"));
        assert_eq!(attr_string(b"\0junk"), None);
        assert_eq!(attr_string(b""), None);
        assert_eq!(attr_string(&[0xff, 0x41, 0]).as_deref(), Some("\u{fffd}A"));
    }

    #[test]
    fn framing_errors_are_typed() {
        assert!(matches!(
            split_message(&[0; 10]),
            Err(NetlinkError::Malformed {
                what: "nlmsghdr",
                ..
            })
        ));
        let mut m = msg(30, 0, 0, &[0; 4]);
        m[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(
            split_message(&m),
            Err(NetlinkError::Malformed {
                what: "nlmsghdr",
                ..
            })
        ));
        // A framing error is reported once and ends the iteration.
        let mut buf = msg(30, 0, 0, &[]);
        buf.extend_from_slice(&[1, 2, 3]);
        let items: Vec<_> = messages(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok() && items[1].is_err());
        // Attributes: short header, bad lengths.
        assert!(matches!(
            attributes(&[1, 2]).next(),
            Some(Err(NetlinkError::Malformed {
                what: "attribute",
                ..
            }))
        ));
        for bad in [2u16, 9] {
            let mut a = bad.to_ne_bytes().to_vec();
            a.extend_from_slice(&[1, 0, 0xaa, 0xbb]);
            assert!(matches!(
                attributes(&a).next(),
                Some(Err(NetlinkError::Malformed {
                    what: "attribute",
                    ..
                }))
            ));
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x1234_5678_9abc_def0);
        for _ in 0..20_000 {
            let len = rng.below(200);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if len >= 16 && rng.next() & 1 == 0 {
                buf[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                let t = [NLMSG_ERROR, NLMSG_DONE, NLMSG_NOOP][rng.below(3)];
                buf[4..6].copy_from_slice(&t.to_ne_bytes());
            }
            let mut n = 0;
            for (header, payload) in messages(&buf).flatten() {
                n += 1;
                let _ = parse_control(&header, payload);
                for _ in attributes(payload) {}
            }
            assert!(n <= buf.len() / NLMSG_HDRLEN + 1);
        }
    }

    #[tokio::test]
    async fn socket_kinds_are_enforced() {
        let mut events = RouteSocket::subscribe(&[libc::RTNLGRP_LINK]).expect("subscribe");
        assert!(events.is_subscribed());
        let err = events.request(|_| Vec::new()).await.unwrap_err();
        assert!(matches!(err, NetlinkError::Misuse(_)), "{err}");
        let mut control = RouteSocket::open().expect("open");
        assert!(matches!(
            control.recv_events().await,
            Err(NetlinkError::Misuse(_))
        ));
        assert!(matches!(
            RouteSocket::subscribe(&[]),
            Err(NetlinkError::Misuse(_))
        ));
    }
}

/// Helpers for root-only tests in throw-away network namespaces, shared by the tests
/// of the `vrrp` modules and of [`crate::dataplane::neigh`]. Every namespace carries a
/// per-process prefix and is deleted by a drop guard; nothing is configured in the
/// namespace the test runs in.
#[cfg(test)]
pub(crate) mod test_netns {
    use std::fs::File;
    use std::future::Future;
    use std::os::fd::AsRawFd;
    use std::process::Command;

    /// Whether a root-only test may run; prints why not, or panics when
    /// `LB_REQUIRE_PRIVILEGED=1` says the run must not skip it.
    pub(crate) fn privileged(what: &str) -> bool {
        // SAFETY: geteuid() has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var("LB_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("LB_REQUIRE_PRIVILEGED=1 but not running as root ({what})");
        }
        eprintln!("skipping {what}: needs root to create network namespaces");
        false
    }

    /// Whether `tool` can be run; same skip-or-panic rule as [`privileged`].
    pub(crate) fn have_tool(tool: &str, what: &str) -> bool {
        let found = Command::new(tool).arg("--version").output().is_ok();
        if found {
            return true;
        }
        if std::env::var("LB_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("LB_REQUIRE_PRIVILEGED=1 but {tool} is not installed ({what})");
        }
        eprintln!("skipping {what}: {tool} is not installed");
        false
    }

    /// Run `ip ARGS`, panicking with its stderr on failure; returns stdout.
    pub(crate) fn ip(args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
        assert!(
            out.status.success(),
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sysctl -w KEY=VALUE` inside namespace `ns`.
    pub(crate) fn sysctl(ns: &str, setting: &str) {
        ip(&["netns", "exec", ns, "sysctl", "-q", "-w", setting]);
    }

    /// A network namespace this test created; deleted on drop (also when a test
    /// panics). Only constructed after `ip netns add` succeeded, so a name that
    /// already existed is never deleted.
    pub(crate) struct Netns(pub(crate) String);

    impl Netns {
        /// `ip netns add lb<tag><pid>`.
        pub(crate) fn create(tag: &str) -> Self {
            let name = format!("lb{tag}{}", std::process::id());
            ip(&["netns", "add", &name]);
            Netns(name)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// MAC address of `iface` in namespace `ns`.
    pub(crate) fn link_mac(ns: &str, iface: &str) -> [u8; 6] {
        let out = ip(&["-n", ns, "-o", "link", "show", "dev", iface]);
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == "link/ether")
            .and_then(|_| words.next())
            .and_then(parse_mac)
            .unwrap_or_else(|| panic!("no MAC in {out:?}"))
    }

    /// Parse `aa:bb:cc:dd:ee:ff`.
    pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
        let bytes: Vec<u8> = s
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).ok())
            .collect::<Option<_>>()?;
        bytes.try_into().ok()
    }

    /// ifindex of `iface` in the calling thread's namespace ([`crate::os::ifindex`], which
    /// answers for the calling thread's namespace too), panicking when there is none.
    pub(crate) fn ifindex(iface: &str) -> u32 {
        crate::os::ifindex(iface).unwrap_or_else(|e| panic!("{e} in this namespace"))
    }

    /// Run the future made by `body` on a fresh thread inside namespace `ns`, with a
    /// current-thread runtime, and return its output (re-raising its panic).
    /// setns() only affects the calling thread, so the test harness and its other
    /// threads stay where they are; the thread ends with the body.
    pub(crate) fn in_netns<F, Fut, T>(ns: &str, body: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        unwind(spawn_in_netns(ns, body).join())
    }

    /// [`in_netns`] for async tests: joins the thread without blocking the test's
    /// own runtime.
    pub(crate) async fn in_netns_async<F, Fut, T>(ns: &str, body: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let thread = spawn_in_netns(ns, body);
        unwind(
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join task"),
        )
    }

    fn spawn_in_netns<F, Fut, T>(ns: &str, body: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(body())
        })
    }

    /// The thread's value, or its panic raised again in the caller.
    fn unwind<T>(joined: std::thread::Result<T>) -> T {
        match joined {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}
