//! Neighbour table messages (`RTM_NEWNEIGH`, `RTM_GETNEIGH` dumps, `RTNLGRP_NEIGH` events)
//! and their socket, on `netlink-packet-route`. The resolver that keeps the real servers'
//! MACs current is [`crate::dataplane::neigh`].
//!
//! 1. **Wire code** (pure, no I/O): [`encode_dump_request`], [`encode_resolve_request`],
//!    [`parse_messages`] / [`parse_neigh_messages`] and [`usable_mac`], on
//!    `netlink-packet-route`'s `NeighbourMessage`, `NeighbourHeader` and
//!    `NeighbourAttribute`. Kernel input is treated as hostile: every length is checked
//!    and malformed data yields a [`NeighError`], never a panic.
//! 2. **[`NeighSocket`]**: a non-blocking `NETLINK_ROUTE` socket driven by
//!    [`tokio::io::unix::AsyncFd`], used either for requests (dump, resolve) or,
//!    after [`NeighSocket::subscribe`], for `RTNLGRP_NEIGH` event notifications.
use std::net::IpAddr;

use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourHeader, NeighbourMessage,
        NeighbourState,
    },
    AddressFamily, RouteNetlinkMessage,
};

pub use super::NlHeader;
use super::{
    attributes, encode, parse_control, Control, NetlinkError, RouteSocket, AF_INET, AF_INET6,
    AF_UNSPEC, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REPLACE, NLM_F_REQUEST,
};

// ---------------------------------------------------------------------------------
// Constants from the kernel UAPI headers (the generic netlink ones live in
// the parent module). A unit test cross-checks them against `libc`.
// ---------------------------------------------------------------------------------

// rtnetlink, include/uapi/linux/rtnetlink.h.
pub(crate) const RTM_NEWNEIGH: u16 = 28;
pub(crate) const RTM_DELNEIGH: u16 = 29;
#[cfg(test)]
pub(crate) const RTM_GETNEIGH: u16 = 30;
/// `enum rtnetlink_groups`: neighbour table notifications.
pub(crate) const RTNLGRP_NEIGH: libc::c_int = 3;

// Neighbour attributes and flags, include/uapi/linux/neighbour.h.
pub(crate) const NDA_DST: u16 = 1;
pub(crate) const NDA_LLADDR: u16 = 2;
/// "Use this entry": `neigh_add()` calls `neigh_event_send()` (starts resolution).
pub(crate) const NTF_USE: u8 = 0x01;
/// Proxy ARP/NDP entries (`pneigh`); they carry no link-layer address.
pub(crate) const NTF_PROXY: u8 = 0x08;

/// Neighbour Unreachability Detection states (`ndm_state`), include/uapi/linux/neighbour.h.
pub const NUD_NONE: u16 = 0x00;
/// Resolution in progress; no link-layer address yet.
pub const NUD_INCOMPLETE: u16 = 0x01;
/// Confirmed recently.
pub const NUD_REACHABLE: u16 = 0x02;
/// Address known but not confirmed recently.
pub const NUD_STALE: u16 = 0x04;
/// Waiting before probing a stale entry.
pub const NUD_DELAY: u16 = 0x08;
/// Being re-verified with unicast probes.
pub const NUD_PROBE: u16 = 0x10;
/// Resolution failed.
pub const NUD_FAILED: u16 = 0x20;
/// No resolution needed (e.g. multicast, or `IFF_NOARP` device).
pub const NUD_NOARP: u16 = 0x40;
/// Static entry configured by the administrator.
pub const NUD_PERMANENT: u16 = 0x80;
/// States with a valid link-layer address: `NUD_VALID` in include/net/neighbour.h.
pub(crate) const NUD_VALID: u16 =
    NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;

// ---------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------

/// One neighbour table entry as reported by the kernel (dump reply or notification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NeighEvent {
    /// Interface the entry belongs to (`ndm_ifindex`).
    pub ifindex: u32,
    /// Protocol address (`NDA_DST`).
    pub addr: IpAddr,
    /// Link-layer address (`NDA_LLADDR`) when present and 6 bytes long (Ethernet).
    /// The kernel only includes it for states in `NUD_VALID`.
    pub mac: Option<[u8; 6]>,
    /// `ndm_state`, one of the `NUD_*` constants.
    pub state: u16,
    /// `true` for `RTM_DELNEIGH`: the entry was removed from the table.
    pub deleted: bool,
}

/// One decoded netlink message, as far as this module cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlMessage {
    /// `RTM_NEWNEIGH` / `RTM_DELNEIGH` for an IPv4/IPv6 neighbour entry.
    Neigh(NeighEvent),
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
    /// `NLMSG_NOOP`.
    Noop,
    /// A well-formed message we do not use: other message types (including
    /// `RTM_GETNEIGH` application-probe notifications), bridge FDB entries (family
    /// `AF_BRIDGE`, sent to the same multicast group) and proxy (`NTF_PROXY`) entries.
    Ignored {
        /// `nlmsg_type` of the skipped message.
        msg_type: u16,
    },
}

/// Everything [`parse_neigh_messages`] found in one receive buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeighBatch {
    /// Neighbour entries/events, in buffer order.
    pub events: Vec<NeighEvent>,
    /// An `NLMSG_DONE` was seen (the dump is complete).
    pub done: bool,
    /// An ACK (`NLMSG_ERROR` with error 0) was seen.
    pub acked: bool,
    /// Some message carried `NLM_F_DUMP_INTR`: the dump may be inconsistent.
    pub interrupted: bool,
}

/// Errors of this module: malformed neighbour messages, plus everything the shared
/// framing layer and socket report (malformed kernel data, kernel-reported errors and
/// I/O) as [`NeighError::Netlink`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NeighError {
    /// `NDA_DST` length does not match the address family.
    #[error("NDA_DST of {len} bytes does not match address family {family}")]
    BadAddressLength {
        /// `ndm_family`.
        family: u8,
        /// Attribute payload length.
        len: usize,
    },
    /// A neighbour message without the mandatory `NDA_DST` attribute.
    #[error("neighbour message for ifindex {ifindex} has no NDA_DST attribute")]
    MissingDestination {
        /// `ndm_ifindex` of the offending message.
        ifindex: u32,
    },
    /// Framing, kernel errors, lost events, misuse of the socket, or I/O.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl NeighError {
    /// The errno for [`NetlinkError::Kernel`] and [`NetlinkError::Io`] errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NeighError::Netlink(e) => e.errno(),
            _ => None,
        }
    }

    /// Whether the error means that the view built from events may be incomplete or
    /// wrong, so the table must be re-dumped (events lost, or kernel data we
    /// could not decode). Kernel-reported errors, I/O failures and misuse give `false`.
    pub fn needs_resync(&self) -> bool {
        !matches!(
            self,
            NeighError::Netlink(
                NetlinkError::Io { .. } | NetlinkError::Misuse(_) | NetlinkError::Kernel { .. }
            )
        )
    }
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// A neighbour message with `struct ndmsg` set (`ndm_type` RTN_UNSPEC).
pub(crate) fn neighbour_message(
    family: u8,
    ifindex: u32,
    state: u16,
    flags: u8,
) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::from(family);
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::from(state);
    msg.header.flags = NeighbourFlags::from_bits_retain(flags);
    msg
}

/// `RTM_GETNEIGH` dump request (`NLM_F_REQUEST | NLM_F_DUMP`) for `family`
/// (`AF_UNSPEC` = 0 for both IPv4 and IPv6 tables, or `AF_INET` / `AF_INET6`).
///
/// A full `struct ndmsg` is sent, as iproute2 does, so the request is also valid
/// when strict checking (`NETLINK_GET_STRICT_CHK`) is enabled.
pub fn encode_dump_request(seq: u32, family: u8) -> Vec<u8> {
    encode(
        RouteNetlinkMessage::GetNeighbour(neighbour_message(family, 0, NUD_NONE, 0)),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// `RTM_NEWNEIGH` request asking the kernel to resolve `addr` on `ifindex`:
/// `ndm_flags = NTF_USE`, `ndm_state = NUD_NONE`, one `NDA_DST` attribute, flags
/// `NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK`.
///
/// `NLM_F_CREATE` lets `neigh_add()` create a missing entry; with `NTF_USE` the kernel
/// then calls `neigh_event_send()` instead of applying `ndm_state`. Verified on 6.18:
/// every `ndm_state` value (NONE, INCOMPLETE, REACHABLE, STALE, FAILED, NOARP,
/// PERMANENT) is acked and resolves the same way; `NUD_NONE` is used because
/// `NUD_PERMANENT` would additionally exempt a newly created entry from GC.
/// `NLM_F_ACK` makes the kernel confirm, so errors such as `ENODEV` are reported.
///
/// Do not send this for `NUD_PERMANENT` entries: the kernel clears the flag.
pub fn encode_resolve_request(seq: u32, ifindex: u32, addr: IpAddr) -> Vec<u8> {
    let family = match addr {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    let mut msg = neighbour_message(family, ifindex, NUD_NONE, NTF_USE);
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            addr,
        )));
    encode(
        RouteNetlinkMessage::NewNeighbour(msg),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | NLM_F_ACK,
        seq,
    )
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

/// Iterator over the messages in one receive buffer; see [`parse_messages`].
#[derive(Debug, Clone)]
pub struct NlMessages<'a> {
    inner: super::Messages<'a>,
}

/// Split a buffer of (possibly several, multipart) netlink messages into decoded
/// messages. Each item is the header plus the decoded message, or an error.
///
/// A framing error (bad `nlmsg_len`, truncated header) ends the iteration because
/// the next message boundary is unknown; an error inside one message's payload is
/// returned for that message and iteration continues with the next one.
pub fn parse_messages(buf: &[u8]) -> NlMessages<'_> {
    NlMessages {
        inner: super::messages(buf),
    }
}

impl Iterator for NlMessages<'_> {
    type Item = Result<(NlHeader, NlMessage), NeighError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.inner.next()? {
            Ok((header, payload)) => decode_message(&header, payload).map(|msg| (header, msg)),
            Err(e) => Err(e.into()),
        })
    }
}

pub(crate) fn decode_message(header: &NlHeader, payload: &[u8]) -> Result<NlMessage, NeighError> {
    Ok(match parse_control(header, payload)? {
        Some(Control::Noop) => NlMessage::Noop,
        Some(Control::Done) => NlMessage::Done,
        Some(Control::Ack) => NlMessage::Ack,
        Some(Control::Error { errno, message }) => NlMessage::Error { errno, message },
        None => match header.message_type {
            RTM_NEWNEIGH | RTM_DELNEIGH => decode_neigh(header, payload)?,
            other => NlMessage::Ignored { msg_type: other },
        },
    })
}

/// Decode `RTM_NEWNEIGH` / `RTM_DELNEIGH`: `struct ndmsg` followed by attributes, with
/// `netlink-packet-route`'s `NeighbourHeader` and `NeighbourAttribute`. Only `NDA_DST` and
/// `NDA_LLADDR` are decoded: a whole `NeighbourMessage` would fail on a malformed
/// attribute the resolver does not read.
pub(crate) fn decode_neigh(header: &NlHeader, payload: &[u8]) -> Result<NlMessage, NeighError> {
    let ndm = NeighbourHeader::parse(payload).map_err(NetlinkError::malformed("ndmsg"))?;
    let attrs = payload.get(ndm.buffer_len()..).unwrap_or_default();
    let family = u8::from(ndm.family);
    let ifindex = ndm.ifindex;
    let state = u16::from(ndm.state);

    // RTNLGRP_NEIGH also carries bridge FDB entries (AF_BRIDGE, rtnl_fdb_notify());
    // proxy entries have no link-layer address. Neither describes a neighbour we
    // could forward to.
    if (family != AF_INET && family != AF_INET6) || ndm.flags.bits() & NTF_PROXY != 0 {
        return Ok(NlMessage::Ignored {
            msg_type: header.message_type,
        });
    }

    let mut addr = None;
    let mut mac = None;
    for attr in attributes(attrs) {
        let attr = attr?;
        match attr.kind() {
            NDA_DST => {
                let ip = match NeighbourAttribute::parse_with_param(&attr, ndm.family) {
                    Ok(NeighbourAttribute::Destination(NeighbourAddress::Inet(a))) => IpAddr::V4(a),
                    Ok(NeighbourAttribute::Destination(NeighbourAddress::Inet6(a))) => {
                        IpAddr::V6(a)
                    }
                    _ => {
                        return Err(NeighError::BadAddressLength {
                            family,
                            len: attr.value().len(),
                        })
                    }
                };
                addr = Some(ip);
            }
            // Non-Ethernet devices have other lengths (0 for loopback, 4 for IPIP,
            // 20 for IPoIB); those are not MACs the XDP program could use.
            NDA_LLADDR => {
                if let Ok(NeighbourAttribute::LinkLayerAddress(lladdr)) =
                    NeighbourAttribute::parse_with_param(&attr, ndm.family)
                {
                    mac = <[u8; 6]>::try_from(lladdr.as_slice()).ok();
                }
            }
            _ => {} // NDA_CACHEINFO, NDA_PROBES, NDA_PROTOCOL, future attributes...
        }
    }
    let addr = addr.ok_or(NeighError::MissingDestination { ifindex })?;
    Ok(NlMessage::Neigh(NeighEvent {
        ifindex,
        addr,
        mac,
        state,
        deleted: header.message_type == RTM_DELNEIGH,
    }))
}

/// Parse a whole receive buffer. Kernel errors (`NLMSG_ERROR` with a non-zero error,
/// or a failed dump's `NLMSG_DONE`) become [`NetlinkError::Kernel`]; an ACK sets
/// [`NeighBatch::acked`]. This ignores sequence numbers; [`NeighSocket`] matches them
/// itself.
pub fn parse_neigh_messages(buf: &[u8]) -> Result<NeighBatch, NeighError> {
    let mut batch = NeighBatch::default();
    for item in parse_messages(buf) {
        let (header, msg) = item?;
        if header.flags & NLM_F_DUMP_INTR != 0 {
            batch.interrupted = true;
        }
        match msg {
            NlMessage::Neigh(ev) => batch.events.push(ev),
            NlMessage::Done => batch.done = true,
            NlMessage::Ack => batch.acked = true,
            NlMessage::Error { errno, message } => {
                return Err(NetlinkError::Kernel { errno, message }.into());
            }
            NlMessage::Noop | NlMessage::Ignored { .. } => {}
        }
    }
    Ok(batch)
}

/// The MAC to forward to, if the entry has a usable one: the state has one of
/// `REACHABLE`, `STALE`, `DELAY`, `PROBE`, `PERMANENT`, `NOARP` set (the kernel's
/// `NUD_VALID`; `STALE`/`DELAY`/`PROBE` still hold the last known address), and the
/// MAC is neither all-zero nor a group address (I/G bit set: multicast/broadcast, as
/// in `NOARP` entries for multicast or broadcast IPs, never a backend).
/// `INCOMPLETE`, `FAILED`, `NONE` and deleted entries give `None`.
pub fn usable_mac(ev: &NeighEvent) -> Option<[u8; 6]> {
    let valid = ev.state != 0 && ev.state & !NUD_VALID == 0;
    if ev.deleted || !valid {
        return None;
    }
    ev.mac
        .filter(|mac| *mac != [0; 6] && mac.first().is_some_and(|b| b & 1 == 0))
}

// ---------------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------------

/// A `NETLINK_ROUTE` socket for neighbour requests or neighbour events: a
/// [`RouteSocket`] that speaks `ndmsg`.
///
/// Two kinds exist because replies and multicast notifications would otherwise
/// interleave on one socket: [`NeighSocket::open`] gives a request socket
/// ([`dump`](Self::dump), [`request_resolution`](Self::request_resolution)),
/// [`NeighSocket::subscribe`] an event socket ([`next_events`](Self::next_events)).
/// Datagrams not sent by the kernel are dropped and replies are matched to requests
/// by sequence number (see [`RouteSocket`]).
#[derive(Debug)]
pub struct NeighSocket {
    pub(crate) sock: RouteSocket,
}

impl NeighSocket {
    /// Open a request socket.
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O enabled (the socket is
    /// registered with its reactor).
    pub fn open() -> Result<Self, NeighError> {
        Ok(NeighSocket {
            sock: RouteSocket::open()?,
        })
    }

    /// Open an event socket subscribed to `RTNLGRP_NEIGH` (neighbour notifications
    /// of the calling thread's network namespace).
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O enabled.
    pub fn subscribe() -> Result<Self, NeighError> {
        Ok(NeighSocket {
            sock: RouteSocket::subscribe(&[RTNLGRP_NEIGH as u32])?,
        })
    }

    /// Dump the IPv4 and IPv6 neighbour tables. A dump flagged `NLM_F_DUMP_INTR` (the
    /// table changed underneath) is retried a few times before
    /// [`NetlinkError::DumpInterrupted`] is returned.
    pub async fn dump(&mut self) -> Result<Vec<NeighEvent>, NeighError> {
        if self.sock.is_subscribed() {
            return Err(NetlinkError::Misuse(
                "dump() needs a request socket, not a subscribed one",
            )
            .into());
        }
        self.sock
            .dump(
                |seq| encode_dump_request(seq, AF_UNSPEC),
                |header, payload| match decode_message(header, payload)? {
                    NlMessage::Neigh(ev) => Ok(Some(ev)),
                    _ => Ok(None),
                },
            )
            .await
    }

    /// Ask the kernel to resolve `addr` on interface `ifindex` (see
    /// [`encode_resolve_request`]) and wait for its acknowledgement. The MAC itself
    /// arrives later as an event (or is visible in the next dump).
    ///
    /// Errors are typically [`NetlinkError::Kernel`] with `ENODEV` (no such interface)
    /// or `EINVAL` (ifindex 0, or the interface does not do ARP/ND).
    pub async fn request_resolution(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<(), NeighError> {
        if self.sock.is_subscribed() {
            return Err(NetlinkError::Misuse("request_resolution() needs a request socket").into());
        }
        self.sock
            .request(|seq| encode_resolve_request(seq, ifindex, addr))
            .await?;
        Ok(())
    }

    /// Wait for the next datagram of neighbour notifications and return its IPv4/IPv6
    /// neighbour events (never empty). Cancel-safe: a datagram is only consumed in
    /// the poll that returns it, so dropping the future (e.g. in `select!`) loses
    /// nothing.
    ///
    /// [`NetlinkError::EventsLost`] (ENOBUFS) and [`NetlinkError::DatagramTooLarge`] mean
    /// notifications were dropped; the socket remains usable, but the caller must
    /// re-dump the table to learn the current state. Queued, now outdated
    /// notifications are discarded first (see [`RouteSocket::recv_events`]).
    pub async fn next_events(&mut self) -> Result<Vec<NeighEvent>, NeighError> {
        if !self.sock.is_subscribed() {
            return Err(NetlinkError::Misuse(
                "next_events() needs a socket from NeighSocket::subscribe()",
            )
            .into());
        }
        loop {
            let buf = self.sock.recv_events().await?;
            let mut events = Vec::new();
            for item in parse_messages(buf) {
                if let (_, NlMessage::Neigh(ev)) = item? {
                    events.push(ev);
                }
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}
