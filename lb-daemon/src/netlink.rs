//! rtnetlink framing and the `NETLINK_ROUTE` socket, shared by the neighbour code
//! ([`crate::dataplane::neigh`]), the XDP attachment ([`crate::dataplane::xdp_link`]) and
//! the virtual-address code ([`crate::vrrp::vip`]).
//!
//! Two layers:
//!
//! 1. **Wire code** (pure, no I/O): [`MessageBuilder`] encodes requests; [`messages`]
//!    frames a receive buffer into `(header, payload)` pairs, [`parse_control`] decodes
//!    the control messages every protocol shares (`NLMSG_DONE`, `NLMSG_ERROR` with
//!    extended-ACK text, ...), and [`attributes`] walks the TLVs of one payload.
//!    Kernel input is treated as hostile: every length is checked and malformed data
//!    yields a [`NetlinkError`], never a panic. Family-specific structures
//!    (`struct ndmsg`, `struct ifaddrmsg`) are decoded by their modules.
//! 2. **[`RouteSocket`]**: a non-blocking `NETLINK_ROUTE` socket driven by
//!    [`tokio::io::unix::AsyncFd`]: request/ACK exchanges and dumps matched by sequence
//!    number, or, after [`RouteSocket::subscribe`], multicast notifications.

use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tracing::{debug, trace};

// ---------------------------------------------------------------------------------
// Constants from the kernel UAPI headers. They are spelled out here (instead of
// taken from `libc`) so the wire code has one self-contained set of correctly typed
// values; unit tests cross-check them against `libc`.
// ---------------------------------------------------------------------------------

/// `sizeof(struct nlmsghdr)`, include/uapi/linux/netlink.h.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlmsgerr)` without extended-ACK TLVs: `int error` + `struct nlmsghdr`.
const NLMSGERR_LEN: usize = 4 + NLMSG_HDRLEN;
/// `sizeof(struct nlattr)` / `struct rtattr`.
pub const NLA_HDRLEN: usize = 4;

// Control message types, include/uapi/linux/netlink.h.
pub const NLMSG_NOOP: u16 = 0x1;
pub const NLMSG_ERROR: u16 = 0x2;
pub const NLMSG_DONE: u16 = 0x3;
pub const NLMSG_OVERRUN: u16 = 0x4;

// nlmsg_flags, include/uapi/linux/netlink.h.
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
/// Set on dump messages when the table changed while it was being dumped.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// GET modifiers: `NLM_F_ROOT | NLM_F_MATCH`.
pub const NLM_F_DUMP: u16 = 0x100 | 0x200;
/// NEW modifiers.
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// ACK flags: the echoed request was cut to its header / extended-ACK TLVs follow.
pub const NLM_F_CAPPED: u16 = 0x100;
pub const NLM_F_ACK_TLVS: u16 = 0x200;
/// `enum nlmsgerr_attrs`: human-readable error message (NUL-terminated string).
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` live in the top bits of `nla_type`.
pub const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

// Socket options, include/uapi/linux/netlink.h.
pub const SOL_NETLINK: libc::c_int = 270;
pub const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
pub const NETLINK_CAP_ACK: libc::c_int = 10;
pub const NETLINK_EXT_ACK: libc::c_int = 11;

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

/// A decoded `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlHeader {
    /// `nlmsg_len`: header plus payload, excluding trailing alignment padding.
    pub len: u32,
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`: copied from the request for replies, 0 for notifications.
    pub seq: u32,
    /// `nlmsg_pid`: port id of the requesting socket for replies.
    pub pid: u32,
}

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
    /// A structure extends past the end of the data that contains it.
    #[error("truncated netlink data: {what} needs {need} bytes, only {have} available")]
    Truncated {
        /// Which structure was cut short.
        what: &'static str,
        /// Bytes the structure needs.
        need: usize,
        /// Bytes that were available.
        have: usize,
    },
    /// `nlmsg_len` is smaller than the header or larger than the remaining buffer.
    #[error("invalid nlmsg_len {len} ({have} bytes left in the buffer)")]
    BadMessageLength {
        /// The claimed length.
        len: usize,
        /// Bytes left in the buffer from the start of this message.
        have: usize,
    },
    /// `nla_len` is smaller than the attribute header or larger than the remaining payload.
    #[error("invalid netlink attribute length {len} ({have} bytes left in the message)")]
    BadAttributeLength {
        /// The claimed length.
        len: usize,
        /// Bytes left in the attribute area.
        have: usize,
    },
    /// Bytes after the last attribute that cannot hold an attribute header.
    #[error("{have} stray bytes after the last netlink attribute")]
    TrailingBytes {
        /// Number of stray bytes.
        have: usize,
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
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// Round up to the 4-byte netlink alignment (`NLMSG_ALIGN` / `NLA_ALIGN` / `RTA_ALIGN`).
/// Saturates instead of overflowing; callers clamp the result to their buffer.
pub fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Builds one request: `struct nlmsghdr`, a family header (`ndmsg`, `ifaddrmsg`, ...)
/// and attributes. `nlmsg_pid` is 0: the kernel identifies the sender by its socket.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    buf: Vec<u8>,
}

impl MessageBuilder {
    /// Start a message with a placeholder length (written by [`finish`](Self::finish)).
    pub fn new(msg_type: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        MessageBuilder { buf }
    }

    /// Append raw bytes (the family header), padded to 4 bytes. The rtnetlink family
    /// headers used here (`ndmsg` 12, `ifaddrmsg` 8 bytes) need no padding.
    pub fn push_bytes(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Append one attribute, padded to 4 bytes (the padding is not counted in
    /// `nla_len`). Payloads longer than an attribute can describe are cut to fit,
    /// so the message stays well-formed; callers only pass addresses and names.
    pub fn push_attr(&mut self, attr_type: u16, data: &[u8]) -> &mut Self {
        put_attr(&mut self.buf, attr_type, data);
        self
    }

    /// Write the final `nlmsg_len` and return the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        if let Some(field) = self.buf.get_mut(..4) {
            field.copy_from_slice(&len.to_ne_bytes());
        }
        self.buf
    }
}

/// Appends one attribute to `buf` (a message, or the payload of a nested attribute), padded
/// to 4 bytes (the padding is not counted in `nla_len`). A payload longer than an attribute
/// can describe is cut to fit, so the message stays well-formed.
pub fn put_attr(buf: &mut Vec<u8>, attr_type: u16, data: &[u8]) {
    let max = usize::from(u16::MAX) - NLA_HDRLEN;
    let data = data.get(..max).unwrap_or(data);
    let len = u16::try_from(NLA_HDRLEN + data.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&attr_type.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(align4(buf.len()), 0);
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

impl NlHeader {
    fn from_bytes(b: &[u8; NLMSG_HDRLEN]) -> Self {
        // Destructuring a fixed-size array: no index can be out of bounds.
        let [l0, l1, l2, l3, t0, t1, f0, f1, s0, s1, s2, s3, p0, p1, p2, p3] = *b;
        NlHeader {
            len: u32::from_ne_bytes([l0, l1, l2, l3]),
            msg_type: u16::from_ne_bytes([t0, t1]),
            flags: u16::from_ne_bytes([f0, f1]),
            seq: u32::from_ne_bytes([s0, s1, s2, s3]),
            pid: u32::from_ne_bytes([p0, p1, p2, p3]),
        }
    }
}

/// Iterator over the messages in one receive buffer; see [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

/// Split a buffer of (possibly several, multipart) netlink messages into
/// `(header, payload)` pairs.
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

/// Frame the first message of `buf`: header, payload and what follows it.
pub fn split_message(buf: &[u8]) -> Result<(NlHeader, &[u8], &[u8]), NetlinkError> {
    let have = buf.len();
    let (raw_header, _) =
        buf.split_first_chunk::<NLMSG_HDRLEN>()
            .ok_or(NetlinkError::Truncated {
                what: "nlmsghdr",
                need: NLMSG_HDRLEN,
                have,
            })?;
    let header = NlHeader::from_bytes(raw_header);
    let len = usize::try_from(header.len).unwrap_or(usize::MAX);
    if len < NLMSG_HDRLEN || len > have {
        return Err(NetlinkError::BadMessageLength { len, have });
    }
    let payload = buf
        .get(NLMSG_HDRLEN..len)
        .ok_or(NetlinkError::BadMessageLength { len, have })?;
    // Messages are NLMSG_ALIGNed; the padding of the last one may be missing.
    let next = align4(len).min(have);
    let rest = buf.get(next..).unwrap_or_default();
    Ok((header, payload, rest))
}

/// Decode a control message. `Ok(None)`: not a control message (a protocol
/// message type, or a reserved low type nobody sends), for the caller to decode.
/// `NLMSG_OVERRUN` is [`NetlinkError::Overrun`].
pub fn parse_control(header: &NlHeader, payload: &[u8]) -> Result<Option<Control>, NetlinkError> {
    match header.msg_type {
        NLMSG_NOOP => Ok(Some(Control::Noop)),
        NLMSG_ERROR => decode_error(header, payload).map(Some),
        NLMSG_DONE => {
            // Since Linux 4.x rtnetlink puts the dump's final status (an int, 0 or
            // -errno) into NLMSG_DONE (netlink_dump_done()). Older/other senders may
            // send an empty payload, which means success.
            match payload.first_chunk::<4>() {
                Some(raw) if i32::from_ne_bytes(*raw) != 0 => Ok(Some(Control::Error {
                    errno: errno_from_wire(i32::from_ne_bytes(*raw)),
                    message: None,
                })),
                _ => Ok(Some(Control::Done)),
            }
        }
        NLMSG_OVERRUN => Err(NetlinkError::Overrun),
        _ => Ok(None),
    }
}

/// The kernel sends `-errno`; tolerate (hostile) positive values and `i32::MIN`.
fn errno_from_wire(error: i32) -> i32 {
    i32::try_from(error.unsigned_abs()).unwrap_or(i32::MAX)
}

/// `struct nlmsgerr { int error; struct nlmsghdr msg; }` followed by the echoed
/// request payload (unless `NLM_F_CAPPED`) and extended-ACK TLVs (if `NLM_F_ACK_TLVS`).
fn decode_error(header: &NlHeader, payload: &[u8]) -> Result<Control, NetlinkError> {
    let raw_error = payload
        .first_chunk::<4>()
        .filter(|_| payload.len() >= NLMSGERR_LEN)
        .ok_or(NetlinkError::Truncated {
            what: "nlmsgerr",
            need: NLMSGERR_LEN,
            have: payload.len(),
        })?;
    let error = i32::from_ne_bytes(*raw_error);
    if error == 0 {
        return Ok(Control::Ack);
    }
    Ok(Control::Error {
        errno: errno_from_wire(error),
        message: ext_ack_message(header.flags, payload),
    })
}

/// Best-effort extraction of `NLMSGERR_ATTR_MSG` (e.g. "Device not specified").
/// The message only decorates an error we already have, so malformed TLVs are
/// ignored rather than turned into a second error.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        // Full echo: the embedded nlmsghdr's nlmsg_len covers the original request.
        let raw = payload.get(4..8)?.first_chunk::<4>()?;
        usize::try_from(u32::from_ne_bytes(*raw)).ok()?
    };
    let tlvs = payload.get(align4(4usize.checked_add(echoed)?)..)?;
    for attr in attributes(tlvs) {
        let (attr_type, value) = attr.ok()?;
        if attr_type == NLMSGERR_ATTR_MSG {
            return attr_string(value).filter(|s| !s.is_empty());
        }
    }
    None
}

/// A NUL-terminated string attribute (`IFA_LABEL`, extended-ACK text), trimmed;
/// invalid UTF-8 is replaced rather than rejected. `None` for an empty value.
pub fn attr_string(value: &[u8]) -> Option<String> {
    let text = value.split(|&b| b == 0).next().unwrap_or_default();
    let text = String::from_utf8_lossy(text).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Split a protocol message's payload into its fixed-size family header (`what`:
/// `struct ndmsg`, `struct ifaddrmsg`, ...) and the attributes that follow it.
pub fn split_family_header<'a, const N: usize>(
    payload: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8; N], &'a [u8]), NetlinkError> {
    payload
        .split_first_chunk::<N>()
        .ok_or(NetlinkError::Truncated {
            what,
            need: N,
            have: payload.len(),
        })
}

/// An address attribute (`NDA_DST`, `IFA_LOCAL`, ...) of an `AF_INET` (4 bytes) or
/// `AF_INET6` (16 bytes) message. `None` when the length does not match the family,
/// or for other families; callers turn that into their own error.
pub fn decode_ip(family: u8, value: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(value).ok().map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(value).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Iterator over netlink attributes (`struct nlattr` / `struct rtattr` TLVs).
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

/// Walk the attributes in `buf`. Each item is `(type without NLA_F_* bits, payload)`;
/// a malformed attribute is returned as an error and ends the iteration.
pub fn attributes(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NetlinkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let have = self.rest.len();
        let Some((&[l0, l1, t0, t1], _)) = self.rest.split_first_chunk::<NLA_HDRLEN>() else {
            self.rest = &[];
            return Some(Err(NetlinkError::TrailingBytes { have }));
        };
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let attr_type = u16::from_ne_bytes([t0, t1]) & NLA_TYPE_MASK;
        let Some(value) = self.rest.get(NLA_HDRLEN..len).filter(|_| len >= NLA_HDRLEN) else {
            self.rest = &[];
            return Some(Err(NetlinkError::BadAttributeLength { len, have }));
        };
        // Attributes are NLA_ALIGNed; padding after the last one may be absent.
        self.rest = self.rest.get(align4(len).min(have)..).unwrap_or_default();
        Some(Ok((attr_type, value)))
    }
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
    fd: AsyncFd<OwnedFd>,
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
        let fd = open_route_socket(groups)?;
        // SAFETY: an OwnedFd is a valid open descriptor that always returns itself from
        // as_raw_fd() and is closed only when dropped, i.e. together with the AsyncFd.
        let fd = unsafe { AsyncFd::register(fd) }
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
            match recv_from(fd, &mut self.buf) {
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
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| NetlinkError::io("poll", e))?;
            match guard.try_io(|fd| send_to_kernel(fd.get_ref().as_raw_fd(), msg)) {
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
            match guard.try_io(|fd| recv_from(fd.get_ref().as_raw_fd(), buf)) {
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
        Ok((header, _)) if header.seq != seq => {
            trace!(
                seq = header.seq,
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

fn last_os_error(op: &'static str) -> NetlinkError {
    NetlinkError::io(op, io::Error::last_os_error())
}

/// `setsockopt()` with an `int` value; `true` on success.
pub(crate) fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: `value` is a live c_int and the length passed matches its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

fn open_route_socket(groups: &[u32]) -> Result<OwnedFd, NetlinkError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(last_os_error("socket"));
    }
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: sockaddr_nl is plain data; all-zero is valid (and required for padding).
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // nl_pid 0: let the kernel pick a unique port id.
    // SAFETY: `addr` is a valid sockaddr_nl and the length matches.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_os_error("bind"));
    }

    if groups.is_empty() {
        // Best effort: extended ACKs give readable error messages, capped ACKs keep
        // error replies from echoing our whole request. Both exist since Linux 4.12.
        let _ = set_int_option(fd.as_raw_fd(), SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let _ = set_int_option(fd.as_raw_fd(), SOL_NETLINK, NETLINK_CAP_ACK, 1);
        return Ok(fd);
    }
    for &group in groups {
        // NETLINK_ADD_MEMBERSHIP takes the group number (not the legacy bitmask),
        // which also works for groups above 32.
        let group = libc::c_int::try_from(group)
            .map_err(|_| NetlinkError::Misuse("netlink group number out of range"))?;
        if !set_int_option(fd.as_raw_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group) {
            return Err(last_os_error("join multicast group"));
        }
    }
    // A larger queue makes ENOBUFS (and the re-dump it forces) rarer.
    // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; fall back.
    if !set_int_option(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        EVENT_SOCKET_RCVBUF,
    ) && !set_int_option(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        EVENT_SOCKET_RCVBUF,
    ) {
        debug!("could not enlarge the netlink event socket receive buffer");
    }
    Ok(fd)
}

fn send_to_kernel(fd: RawFd, msg: &[u8]) -> io::Result<usize> {
    // SAFETY: see open_route_socket(); destination port 0 is the kernel.
    let mut dest: libc::sockaddr_nl = unsafe { mem::zeroed() };
    dest.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `msg` is valid for `msg.len()` bytes and `dest` matches the length passed.
    let rc = unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_DONTWAIT,
            (&dest as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// `recvfrom()` with `MSG_TRUNC`, which makes netlink return the real datagram length
/// even when it did not fit, so truncation is detected instead of silently parsing
/// half a message. Returns `(length, sender port id)`.
fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u32)> {
    // SAFETY: see open_route_socket().
    let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
    let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; `from`/`from_len`
    // describe a writable sockaddr_nl.
    let rc = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
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
/// families built on it ([`crate::dataplane::neigh`], [`crate::vrrp::vip`]).
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
    use super::test_wire::{msg, XorShift};
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
        assert_eq!(SOL_NETLINK, libc::SOL_NETLINK);
        assert_eq!(NETLINK_ADD_MEMBERSHIP, libc::NETLINK_ADD_MEMBERSHIP);
        assert_eq!(NETLINK_CAP_ACK, libc::NETLINK_CAP_ACK);
        assert_eq!(NETLINK_EXT_ACK, libc::NETLINK_EXT_ACK);
        assert_eq!(mem::size_of::<libc::nlmsghdr>(), NLMSG_HDRLEN);
    }

    #[test]
    fn builder_frames_and_pads() {
        let mut b = MessageBuilder::new(0x1234, 0x0405, 7);
        b.push_bytes(&[1, 2, 3, 4, 5, 6, 7, 8]);
        b.push_attr(3, b"ab\0"); // 7 bytes -> padded to 8
        b.push_attr(1, &[]);
        let got = b.finish();
        let mut want = Vec::new();
        want.extend_from_slice(&36u32.to_ne_bytes());
        want.extend_from_slice(&0x1234u16.to_ne_bytes());
        want.extend_from_slice(&0x0405u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(b"ab\0\0");
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        assert_eq!(got, want);

        // Our own framing reads it back.
        let (header, payload, rest) = split_message(&got).unwrap();
        assert_eq!((header.len, header.msg_type, header.seq), (36, 0x1234, 7));
        assert!(rest.is_empty());
        let attrs: Vec<_> = attributes(&payload[8..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs, vec![(3, &b"ab\0"[..]), (1, &[][..])]);
    }

    #[test]
    fn oversized_attribute_is_cut_not_corrupted() {
        let mut b = MessageBuilder::new(1, 0, 0);
        b.push_attr(1, &vec![0xaa; 70_000]);
        let got = b.finish();
        let (_, payload, _) = split_message(&got).unwrap();
        let attrs: Vec<_> = attributes(payload).collect::<Result<_, _>>().unwrap();
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].1.len(), usize::from(u16::MAX) - NLA_HDRLEN);
    }

    #[test]
    fn control_messages() {
        let h = |t| NlHeader {
            len: 0,
            msg_type: t,
            flags: 0,
            seq: 0,
            pid: 0,
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
        let mut b = MessageBuilder::new(0, 0, 0);
        b.push_attr(NLMSGERR_ATTR_MSG, b"ipv4: Address already assigned\0");
        p.extend_from_slice(&b.finish()[16..]);
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
    fn address_attributes() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        assert_eq!(
            decode_ip(AF_INET, &[192, 0, 2, 1]),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(decode_ip(AF_INET6, &v6.octets()), Some(IpAddr::V6(v6)));
        // Length not matching the family, and families without IP addresses.
        assert_eq!(decode_ip(AF_INET6, &[192, 0, 2, 1]), None);
        assert_eq!(decode_ip(AF_INET, &v6.octets()), None);
        assert_eq!(decode_ip(AF_INET, &[]), None);
        assert_eq!(decode_ip(AF_UNSPEC, &[192, 0, 2, 1]), None);
        assert_eq!(decode_ip(7, &[0; 6]), None);
    }

    #[test]
    fn framing_errors_are_typed() {
        assert!(matches!(
            split_message(&[0; 10]),
            Err(NetlinkError::Truncated {
                what: "nlmsghdr",
                need: 16,
                have: 10
            })
        ));
        let mut m = msg(30, 0, 0, &[0; 4]);
        m[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(
            split_message(&m),
            Err(NetlinkError::BadMessageLength { len: 3, .. })
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
            Some(Err(NetlinkError::TrailingBytes { have: 2 }))
        ));
        for bad in [2u16, 9] {
            let mut a = bad.to_ne_bytes().to_vec();
            a.extend_from_slice(&[1, 0, 0xaa, 0xbb]);
            assert!(matches!(
                attributes(&a).next(),
                Some(Err(NetlinkError::BadAttributeLength { .. }))
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

    /// ifindex of `iface` in the calling thread's namespace.
    pub(crate) fn ifindex(iface: &str) -> u32 {
        let c = std::ffi::CString::new(iface).expect("interface name");
        // SAFETY: `c` is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(idx, 0, "no interface {iface} in this namespace");
        idx
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
