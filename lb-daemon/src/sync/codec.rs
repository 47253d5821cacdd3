//! The connection-sync messages on the wire: a pure codec, no I/O. Decoding never panics
//! (the fuzz test throws random and mutated bytes at it); every rejection is a named
//! [`DecodeError`] the receiver counts.
//!
//! A message is one UDP datagram, integers in network byte order:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         magic 0x4c53          |version| type  |     flags     |
//! +---------------+---------------+-------+-------+---------------+
//! |    sync_id    |   ref_count   |          entry_count          |
//! +---------------+---------------+-------------------------------+
//! |                            boot_id                            |
//! +---------------------------------------------------------------+
//! |                              seq                              |
//! +---------------------------------------------------------------+
//! |                            send_ms                            |
//! +---------------------------------------------------------------+
//! |  DATA: ref_count references, then entry_count entries         |
//! |  ACK:  acked_boot, acked_seq, echo_ms, held_ms (4 x u32)      |
//! +---------------------------------------------------------------+
//! |   tag: the first 16 bytes of HMAC-SHA256(key, all of the      |
//! |   above)                                                      |
//! +---------------------------------------------------------------+
//! ```
//!
//! * `version` 1 (high nibble of byte 2), `type` 1 = DATA (flows, from the master), 2 = ACK
//!   (from a backup: what it installed, and whether it wants the whole table).
//! * `sync_id`: IPVS's syncid; a receiver drops other ids. `boot_id`, `seq`: the sender's
//!   run (a new run has a larger boot_id) and message number, for the replay window.
//!   `send_ms`: the sender's monotonic clock in ms, echoed back in ACKs to measure the lag.
//! * A reference names a service and one of its real servers, as IPVS's sync does (ids are
//!   per node): `flags` (bit 0: IPv6), `proto`, `vport`, `rport`, then the VIP and the
//!   real server's address, 4 or 16 bytes each: 14 bytes (IPv4), 38 (IPv6).
//! * An entry: `kind` (1 flow, 2 persistence template; bit 7: a refresh), the index of its
//!   reference, `age_s` (seconds since the flow's last packet on the sender), the client's
//!   port and the destination port (0 and 0 for a template), then the client's address
//!   (a template: its masked network): 12 bytes (IPv4), 24 (IPv6).
//!
//! An IPv4 message of 1472 bytes (a 1500-byte MTU) with three references holds 116 flows:
//! 1514 bytes on the wire with the Ethernet, IPv4 and UDP headers: 13.1 bytes per flow.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const MAGIC: u16 = 0x4c53;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 20;
pub const TAG_LEN: usize = 16;
pub const ACK_BODY_LEN: usize = 16;
pub const REF_LEN_V4: usize = 14;
pub const REF_LEN_V6: usize = 38;
pub const ENTRY_LEN_V4: usize = 12;
pub const ENTRY_LEN_V6: usize = 24;
/// Ethernet, IPv4 and UDP headers: what a message costs on the wire beyond its bytes.
pub const WIRE_OVERHEAD_V4: usize = 14 + 20 + 8;
pub const WIRE_OVERHEAD_V6: usize = 14 + 40 + 8;

// The limits the `[sync]` keys are checked against live on the ground floor, where the
// configuration can read them; they must agree with this layout.
pub use crate::model::sync_wire::{
    DEFAULT_GROUP, DEFAULT_MAX_MESSAGE, DEFAULT_PORT, MAX_MESSAGE, MIN_KEY_LEN, MIN_MESSAGE,
};
const _: () = assert!(MIN_MESSAGE == HEADER_LEN + REF_LEN_V6 + ENTRY_LEN_V6 + TAG_LEN);

pub const TYPE_DATA: u8 = 1;
pub const TYPE_ACK: u8 = 2;
/// DATA: the last message of a whole-table sync (asked for by [`F_REQUEST_FULL`]).
pub const F_FULL_DONE: u8 = 1 << 0;
/// ACK: the backup wants the whole table (it started, or has not had it yet).
pub const F_REQUEST_FULL: u8 = 1 << 0;

pub const ENTRY_FLOW: u8 = 1;
pub const ENTRY_TEMPLATE: u8 = 2;
/// The entry refreshes one sent before (informational: it is installed the same way).
pub const ENTRY_F_REFRESH: u8 = 0x80;

const REF_F_V6: u8 = 1;

/// The shared key, with HMAC's keyed state computed once.
#[derive(Clone)]
pub struct Key(Hmac<Sha256>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// `None` for a key shorter than [`MIN_KEY_LEN`].
    pub fn new(bytes: &[u8]) -> Option<Key> {
        if bytes.len() < MIN_KEY_LEN {
            return None;
        }
        Hmac::<Sha256>::new_from_slice(bytes).ok().map(Key)
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut tag = [0; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Constant-time comparison of `tag` with the tag of `data`.
    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(data);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// The fixed header's fields (the counts are the body's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: u8,
    pub flags: u8,
    pub sync_id: u8,
    pub boot_id: u32,
    pub seq: u32,
    pub send_ms: u32,
}

/// A service and one of its real servers, as the wire names them. VIP and real server are
/// of one family (the encoder refuses a mix, the decoder cannot produce one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WireRef {
    pub proto: u8,
    pub vip: IpAddr,
    pub vport: u16,
    pub rip: IpAddr,
    pub rport: u16,
}

impl WireRef {
    pub fn v6(&self) -> bool {
        self.vip.is_ipv6()
    }

    fn encoded_len(&self) -> usize {
        if self.v6() {
            REF_LEN_V6
        } else {
            REF_LEN_V4
        }
    }
}

/// One flow or persistence template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireEntry {
    /// [`ENTRY_FLOW`] or [`ENTRY_TEMPLATE`].
    pub kind: u8,
    pub refresh: bool,
    /// Seconds since the entry's last packet, on the sender.
    pub age_s: u16,
    /// The client's port (0 for a template or a fragment flow).
    pub cport: u16,
    /// The destination port (the service's, or any for an all-ports service; 0 for a
    /// template or a fragment flow).
    pub dport: u16,
    /// The client's address, or its masked network for a template; the reference's family.
    pub caddr: IpAddr,
}

/// The body of a DATA message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Data {
    pub refs: Vec<WireRef>,
    /// Each entry with the index of its reference in `refs`.
    pub entries: Vec<(u8, WireEntry)>,
}

/// The body of an ACK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ack {
    /// The DATA message last installed: its sender's boot_id and seq, and its `send_ms`.
    pub acked_boot: u32,
    pub acked_seq: u32,
    pub echo_ms: u32,
    /// Milliseconds between installing that message and sending this ACK: the sender
    /// subtracts them from the round trip.
    pub held_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Data(Data),
    Ack(Ack),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub body: Body,
}

/// Why a datagram was not accepted. [`DecodeError::name`] is the counter's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("shorter than its header and tag, or than its counts say")]
    Truncated,
    #[error("not a sync message (magic)")]
    Magic,
    #[error("unknown version {0}")]
    Version(u8),
    #[error("sync id {0} is not ours")]
    SyncId(u8),
    #[error("bad HMAC tag")]
    Tag,
    #[error("unknown message type {0}")]
    Type(u8),
    #[error("entry names reference {0}, beyond the message's references")]
    Ref(u8),
    #[error("unknown reference flags {0:#x}")]
    RefFlags(u8),
    #[error("unknown entry kind {0:#x}")]
    EntryKind(u8),
    #[error("bytes after the last entry")]
    Trailing,
}

impl DecodeError {
    pub fn name(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::Magic => "magic",
            DecodeError::Version(_) => "version",
            DecodeError::SyncId(_) => "sync_id",
            DecodeError::Tag => "bad_hmac",
            DecodeError::Type(_) => "type",
            DecodeError::Ref(_) => "bad_ref",
            DecodeError::RefFlags(_) => "bad_ref",
            DecodeError::EntryKind(_) => "bad_entry",
            DecodeError::Trailing => "trailing",
        }
    }
}

/// A bounds-checked reader: every read is a `Result`, so hostile input can only end the
/// decode with an error.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let b = self.buf.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn addr(&mut self, v6: bool) -> Result<IpAddr, DecodeError> {
        Ok(if v6 {
            let mut o = [0u8; 16];
            o.copy_from_slice(self.bytes(16)?);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let b = self.bytes(4)?;
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        })
    }
    fn done(&self) -> bool {
        self.at == self.buf.len()
    }
}

fn put_addr(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn put_header(out: &mut Vec<u8>, h: &Header, refs: u8, entries: u16) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION << 4 | (h.msg_type & 0x0f));
    out.push(h.flags);
    out.push(h.sync_id);
    out.push(refs);
    out.extend_from_slice(&entries.to_be_bytes());
    out.extend_from_slice(&h.boot_id.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.send_ms.to_be_bytes());
}

fn put_ref(out: &mut Vec<u8>, r: &WireRef) {
    out.push(if r.v6() { REF_F_V6 } else { 0 });
    out.push(r.proto);
    out.extend_from_slice(&r.vport.to_be_bytes());
    out.extend_from_slice(&r.rport.to_be_bytes());
    put_addr(out, &r.vip);
    put_addr(out, &r.rip);
}

/// Decodes and authenticates one datagram. Checks run cheapest first: size, magic,
/// version, sync id, then the tag, and only then is the body parsed.
pub fn decode(buf: &[u8], key: &Key, sync_id: u8) -> Result<Message, DecodeError> {
    if buf.len() < HEADER_LEN + TAG_LEN {
        return Err(DecodeError::Truncated);
    }
    let (signed, tag) = buf.split_at(buf.len() - TAG_LEN);
    let mut r = Reader { buf: signed, at: 0 };
    if r.u16()? != MAGIC {
        return Err(DecodeError::Magic);
    }
    let vt = r.u8()?;
    if vt >> 4 != VERSION {
        return Err(DecodeError::Version(vt >> 4));
    }
    let msg_type = vt & 0x0f;
    let flags = r.u8()?;
    let id = r.u8()?;
    if id != sync_id {
        return Err(DecodeError::SyncId(id));
    }
    if !key.verify(signed, tag) {
        return Err(DecodeError::Tag);
    }
    let ref_count = r.u8()?;
    let entry_count = r.u16()?;
    let header = Header {
        msg_type,
        flags,
        sync_id: id,
        boot_id: r.u32()?,
        seq: r.u32()?,
        send_ms: r.u32()?,
    };
    let body = match msg_type {
        TYPE_DATA => {
            // Each reference and entry takes at least its IPv4 size: counts the datagram
            // cannot hold are refused before anything is allocated for them.
            let rest = signed.len() - HEADER_LEN;
            if usize::from(ref_count) * REF_LEN_V4 + usize::from(entry_count) * ENTRY_LEN_V4 > rest
            {
                return Err(DecodeError::Truncated);
            }
            let mut refs = Vec::with_capacity(ref_count.into());
            for _ in 0..ref_count {
                let f = r.u8()?;
                if f & !REF_F_V6 != 0 {
                    return Err(DecodeError::RefFlags(f));
                }
                let v6 = f & REF_F_V6 != 0;
                let proto = r.u8()?;
                let vport = r.u16()?;
                let rport = r.u16()?;
                let vip = r.addr(v6)?;
                let rip = r.addr(v6)?;
                refs.push(WireRef {
                    proto,
                    vip,
                    vport,
                    rip,
                    rport,
                });
            }
            let mut entries = Vec::with_capacity(entry_count.into());
            for _ in 0..entry_count {
                let k = r.u8()?;
                let kind = k & !ENTRY_F_REFRESH;
                if kind != ENTRY_FLOW && kind != ENTRY_TEMPLATE {
                    return Err(DecodeError::EntryKind(k));
                }
                let idx = r.u8()?;
                let v6 = refs
                    .get(usize::from(idx))
                    .ok_or(DecodeError::Ref(idx))?
                    .v6();
                let age_s = r.u16()?;
                let cport = r.u16()?;
                let dport = r.u16()?;
                let caddr = r.addr(v6)?;
                entries.push((
                    idx,
                    WireEntry {
                        kind,
                        refresh: k & ENTRY_F_REFRESH != 0,
                        age_s,
                        cport,
                        dport,
                        caddr,
                    },
                ));
            }
            Body::Data(Data { refs, entries })
        }
        TYPE_ACK => {
            if ref_count != 0 || entry_count != 0 {
                return Err(DecodeError::Trailing);
            }
            Body::Ack(Ack {
                acked_boot: r.u32()?,
                acked_seq: r.u32()?,
                echo_ms: r.u32()?,
                held_ms: r.u32()?,
            })
        }
        t => return Err(DecodeError::Type(t)),
    };
    if !r.done() {
        return Err(DecodeError::Trailing);
    }
    Ok(Message { header, body })
}

/// An ACK, tagged.
pub fn encode_ack(h: &Header, ack: &Ack, key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + ACK_BODY_LEN + TAG_LEN);
    let h = Header {
        msg_type: TYPE_ACK,
        ..*h
    };
    put_header(&mut out, &h, 0, 0);
    for w in [ack.acked_boot, ack.acked_seq, ack.echo_ms, ack.held_ms] {
        out.extend_from_slice(&w.to_be_bytes());
    }
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    out
}

/// What [`DataBuilder::push`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    Added,
    /// No room left: seal the message and push again into the next one.
    Full,
    /// The entry's address family differs from its reference's, or the reference mixes
    /// families: it cannot be encoded.
    Invalid,
}

/// Builds one DATA message at a time, up to `max_len` bytes, tag included.
#[derive(Debug)]
pub struct DataBuilder {
    max_len: usize,
    /// The references in the message, by position: the caller's number and the reference
    /// itself (a group's
    /// backend is named under each of the group's VIPs its flows went to).
    ref_ids: Vec<(u32, WireRef)>,
    refs: Vec<u8>,
    entries: Vec<u8>,
    count: u16,
}

impl DataBuilder {
    /// `max_len` is clamped to [`MIN_MESSAGE`]..=[`MAX_MESSAGE`].
    pub fn new(max_len: usize) -> Self {
        let max_len = max_len.clamp(MIN_MESSAGE, MAX_MESSAGE);
        Self {
            max_len,
            ref_ids: Vec::new(),
            refs: Vec::new(),
            entries: Vec::with_capacity(max_len),
            count: 0,
        }
    }

    /// The sealed size of the message so far.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.refs.len() + self.entries.len() + TAG_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries so far.
    pub fn entries(&self) -> usize {
        self.count.into()
    }

    /// Adds `e` under reference `r`, which the caller numbers `id` (the same id must always
    /// name the same reference while this message is built).
    pub fn push(&mut self, id: u32, r: &WireRef, e: &WireEntry) -> Push {
        if r.vip.is_ipv6() != r.rip.is_ipv6() || r.vip.is_ipv6() != e.caddr.is_ipv6() {
            return Push::Invalid;
        }
        let known = self.ref_ids.iter().position(|x| x.0 == id && x.1 == *r);
        let entry_len = if r.v6() { ENTRY_LEN_V6 } else { ENTRY_LEN_V4 };
        let need = entry_len + if known.is_none() { r.encoded_len() } else { 0 };
        if self.len() + need > self.max_len
            || self.count == u16::MAX
            || (known.is_none() && self.ref_ids.len() == usize::from(u8::MAX))
        {
            return Push::Full;
        }
        let idx = match known {
            Some(i) => i,
            None => {
                put_ref(&mut self.refs, r);
                self.ref_ids.push((id, *r));
                self.ref_ids.len() - 1
            }
        };
        let kind = e.kind | if e.refresh { ENTRY_F_REFRESH } else { 0 };
        self.entries.push(kind);
        self.entries.push(idx as u8);
        self.entries.extend_from_slice(&e.age_s.to_be_bytes());
        self.entries.extend_from_slice(&e.cport.to_be_bytes());
        self.entries.extend_from_slice(&e.dport.to_be_bytes());
        put_addr(&mut self.entries, &e.caddr);
        self.count += 1;
        Push::Added
    }

    /// The message, tagged; the builder is empty again afterwards.
    pub fn seal(&mut self, h: &Header, key: &Key) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        let h = Header {
            msg_type: TYPE_DATA,
            ..*h
        };
        put_header(&mut out, &h, self.ref_ids.len() as u8, self.count);
        out.extend_from_slice(&self.refs);
        out.extend_from_slice(&self.entries);
        let tag = key.tag(&out);
        out.extend_from_slice(&tag);
        self.clear();
        out
    }

    /// Forgets what was pushed.
    pub fn clear(&mut self) {
        self.ref_ids.clear();
        self.refs.clear();
        self.entries.clear();
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn header() -> Header {
        Header {
            msg_type: TYPE_DATA,
            flags: 0,
            sync_id: 38,
            boot_id: 0x0102_0304,
            seq: 7,
            send_ms: 0x0a0b_0c0d,
        }
    }

    fn ref4(rs: u8) -> WireRef {
        WireRef {
            proto: 6,
            vip: "192.0.2.100".parse().unwrap(),
            vport: 80,
            rip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, rs)),
            rport: 80,
        }
    }

    fn flow4(last: u8, cport: u16) -> WireEntry {
        WireEntry {
            kind: ENTRY_FLOW,
            refresh: false,
            age_s: 3,
            cport,
            dport: 80,
            caddr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)),
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Two IPv4 flows under one reference and a template under another: the exact bytes.
    /// The tag was computed independently (Python's `hmac.new(key, msg, sha256)`).
    #[test]
    fn golden_data_message() {
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        assert_eq!(b.push(11, &ref4(11), &flow4(7, 40000)), Push::Added);
        assert_eq!(
            b.push(
                11,
                &ref4(11),
                &WireEntry {
                    refresh: true,
                    ..flow4(8, 40001)
                }
            ),
            Push::Added
        );
        let tmpl = WireEntry {
            kind: ENTRY_TEMPLATE,
            refresh: false,
            age_s: 0,
            cport: 0,
            dport: 0,
            caddr: "198.51.100.0".parse().unwrap(),
        };
        assert_eq!(b.push(12, &ref4(12), &tmpl), Push::Added);
        assert_eq!(
            b.len(),
            HEADER_LEN + 2 * REF_LEN_V4 + 3 * ENTRY_LEN_V4 + TAG_LEN
        );
        let msg = b.seal(&header(), &key());
        // Header, the two references in order of first use, the three entries.
        let want = unhex(
            "4c53 11 00 26 02 0003 01020304 00000007 0a0b0c0d
             00 06 0050 0050 c0000264 c000020b
             00 06 0050 0050 c0000264 c000020c
             01 00 0003 9c40 0050 c6336407
             81 00 0003 9c41 0050 c6336408
             02 01 0000 0000 0000 c6336400",
        );
        assert_eq!(hex(&msg[..msg.len() - TAG_LEN]), hex(&want));
        assert_eq!(
            hex(&msg[msg.len() - TAG_LEN..]),
            "7679914a257967b266b0ee5581c49dc0",
            "tag"
        );
        let m = decode(&msg, &key(), 38).unwrap();
        assert_eq!(m.header, header());
        let Body::Data(d) = m.body else {
            panic!("{m:?}")
        };
        assert_eq!(d.refs, [ref4(11), ref4(12)]);
        assert_eq!(d.entries.len(), 3);
        assert_eq!(d.entries[0], (0, flow4(7, 40000)));
        assert!(d.entries[1].1.refresh);
        assert_eq!(d.entries[2], (1, tmpl));
    }

    #[test]
    fn golden_ack_and_ipv6_round_trip() {
        let ack = Ack {
            acked_boot: 0x0102_0304,
            acked_seq: 7,
            echo_ms: 0x0a0b_0c0d,
            held_ms: 250,
        };
        let h = Header {
            msg_type: TYPE_ACK,
            flags: F_REQUEST_FULL,
            boot_id: 0x1111_2222,
            seq: 1,
            ..header()
        };
        let msg = encode_ack(&h, &ack, &key());
        assert_eq!(
            hex(&msg[..msg.len() - TAG_LEN]),
            hex(&unhex(
                "4c53 12 01 26 00 0000 11112222 00000001 0a0b0c0d
                 01020304 00000007 0a0b0c0d 000000fa"
            ))
        );
        assert_eq!(
            hex(&msg[msg.len() - TAG_LEN..]),
            "8a65e67fffdfbebf6549eac8cf08e5bf"
        );
        let m = decode(&msg, &key(), 38).unwrap();
        assert_eq!(m.header, h);
        assert_eq!(m.body, Body::Ack(ack));

        let r6 = WireRef {
            proto: 17,
            vip: "2001:db8::100".parse().unwrap(),
            vport: 0,
            rip: "2001:db8::11".parse().unwrap(),
            rport: 0,
        };
        let e6 = WireEntry {
            kind: ENTRY_FLOW,
            refresh: false,
            age_s: 65535,
            cport: 5353,
            dport: 53,
            caddr: "2001:db8:1::7".parse().unwrap(),
        };
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        assert_eq!(b.push(1, &r6, &e6), Push::Added);
        assert_eq!(b.push(2, &ref4(11), &flow4(1, 1)), Push::Added);
        assert_eq!(
            b.len(),
            HEADER_LEN + REF_LEN_V6 + ENTRY_LEN_V6 + REF_LEN_V4 + ENTRY_LEN_V4 + TAG_LEN
        );
        let msg = b.seal(&header(), &key());
        let Body::Data(d) = decode(&msg, &key(), 38).unwrap().body else {
            panic!()
        };
        assert_eq!(d.refs, [r6, ref4(11)]);
        assert_eq!(d.entries, [(0, e6), (1, flow4(1, 1))]);
    }

    #[test]
    fn families_must_agree() {
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        let mut mixed = ref4(11);
        mixed.rip = "2001:db8::11".parse().unwrap();
        assert_eq!(b.push(1, &mixed, &flow4(1, 1)), Push::Invalid);
        let mut e = flow4(1, 1);
        e.caddr = "2001:db8::7".parse().unwrap();
        assert_eq!(b.push(1, &ref4(11), &e), Push::Invalid);
        assert!(b.is_empty());
    }

    /// A full message: as many IPv4 flows as fit 1472 bytes with three references, and the
    /// bytes per flow on the wire.
    #[test]
    fn a_full_message_and_its_bytes_per_flow() {
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        let mut n = 0u16;
        loop {
            let rs = 11 + (n % 3) as u8;
            match b.push(u32::from(rs), &ref4(rs), &flow4(7, n)) {
                Push::Added => n += 1,
                Push::Full => break,
                Push::Invalid => panic!(),
            }
        }
        assert_eq!(n, 116);
        assert!(b.len() <= DEFAULT_MAX_MESSAGE);
        let msg = b.seal(&header(), &key());
        assert!(b.is_empty());
        let per_flow = (msg.len() + WIRE_OVERHEAD_V4) as f64 / f64::from(n);
        assert!(per_flow < 13.5, "{per_flow}");
        let Body::Data(d) = decode(&msg, &key(), 38).unwrap().body else {
            panic!()
        };
        assert_eq!(d.entries.len(), 116);
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        b.push(1, &ref4(11), &flow4(7, 1));
        b.push(2, &ref4(12), &flow4(8, 2));
        let msg = b.seal(&header(), &key());
        for len in 0..msg.len() {
            assert!(decode(&msg[..len], &key(), 38).is_err(), "{len}");
        }
        // Cut short and re-tagged (as a peer with the key could): the counts do not fit.
        for len in HEADER_LEN..msg.len() - TAG_LEN {
            let mut cut = msg[..len].to_vec();
            let tag = key().tag(&cut);
            cut.extend_from_slice(&tag);
            assert_eq!(
                decode(&cut, &key(), 38),
                Err(DecodeError::Truncated),
                "{len}"
            );
        }
    }

    #[test]
    fn bad_hmac_wrong_key_sync_id_and_garbage() {
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        b.push(1, &ref4(11), &flow4(7, 1));
        let msg = b.seal(&header(), &key());
        // Any flipped bit after the sync id breaks the tag.
        for i in 5..msg.len() {
            let mut m = msg.clone();
            m[i] ^= 0x10;
            assert_eq!(decode(&m, &key(), 38), Err(DecodeError::Tag), "byte {i}");
        }
        let other = Key::new(b"another key of 32 bytes, or so!!").unwrap();
        assert_eq!(decode(&msg, &other, 38), Err(DecodeError::Tag));
        assert_eq!(decode(&msg, &key(), 39), Err(DecodeError::SyncId(38)));
        let mut m = msg.clone();
        m[0] = 0;
        assert_eq!(decode(&m, &key(), 38), Err(DecodeError::Magic));
        let mut m = msg.clone();
        m[2] = 0x21;
        assert_eq!(decode(&m, &key(), 38), Err(DecodeError::Version(2)));
        assert!(Key::new(b"short").is_none());
    }

    /// Well-tagged but inconsistent bodies (a peer with the key is trusted with flows, not
    /// with the daemon's memory safety).
    #[test]
    fn tagged_but_inconsistent_bodies() {
        let sign = |mut v: Vec<u8>| {
            let tag = key().tag(&v);
            v.extend_from_slice(&tag);
            v
        };
        let mut b = DataBuilder::new(DEFAULT_MAX_MESSAGE);
        b.push(1, &ref4(11), &flow4(7, 1));
        let msg = b.seal(&header(), &key());
        let body = msg[..msg.len() - TAG_LEN].to_vec();
        // The entry names reference 1 of 1.
        let mut m = body.clone();
        m[HEADER_LEN + REF_LEN_V4 + 1] = 1;
        assert_eq!(decode(&sign(m), &key(), 38), Err(DecodeError::Ref(1)));
        let mut m = body.clone();
        m[HEADER_LEN + REF_LEN_V4] = 9;
        assert_eq!(decode(&sign(m), &key(), 38), Err(DecodeError::EntryKind(9)));
        let mut m = body.clone();
        m[HEADER_LEN] = 0x80;
        assert_eq!(
            decode(&sign(m), &key(), 38),
            Err(DecodeError::RefFlags(0x80))
        );
        let mut m = body.clone();
        m.push(0);
        assert_eq!(decode(&sign(m), &key(), 38), Err(DecodeError::Trailing));
        let mut m = body.clone();
        m[2] = 0x17;
        assert_eq!(decode(&sign(m), &key(), 38), Err(DecodeError::Type(7)));
        // Counts far beyond the datagram.
        let mut m = body.clone();
        m[6] = 0xff;
        m[7] = 0xff;
        assert_eq!(decode(&sign(m), &key(), 38), Err(DecodeError::Truncated));
    }

    /// Random datagrams, and valid ones with random damage, some re-tagged: decode never
    /// panics, and whatever it accepts encodes back to itself.
    #[test]
    fn fuzz_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let k = key();
        let mut b = DataBuilder::new(600);
        for i in 0..30u16 {
            b.push(
                u32::from(i % 4),
                &ref4(11 + (i % 4) as u8),
                &flow4(i as u8, i),
            );
        }
        let valid = b.seal(&header(), &k);
        let mut accepted = 0;
        for round in 0..20_000 {
            let mut m = if round % 3 == 0 {
                let len = (next() % 700) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                valid.clone()
            };
            for _ in 0..(next() % 4) {
                if m.is_empty() {
                    break;
                }
                let at = (next() as usize) % m.len();
                match next() % 3 {
                    0 => m[at] = next() as u8,
                    1 => m.truncate(at),
                    _ => m.insert(at, next() as u8),
                }
            }
            if round % 2 == 0 && m.len() >= TAG_LEN {
                let n = m.len() - TAG_LEN;
                m.truncate(n);
                if m.len() >= 5 {
                    m[0..2].copy_from_slice(&MAGIC.to_be_bytes());
                    m[2] = m[2] & 0x0f | VERSION << 4;
                    m[4] = 38;
                }
                let tag = k.tag(&m);
                m.extend_from_slice(&tag);
            }
            if let Ok(msg) = decode(&m, &k, 38) {
                accepted += 1;
                if let Body::Data(d) = &msg.body {
                    let mut b = DataBuilder::new(MAX_MESSAGE);
                    for (i, e) in &d.entries {
                        assert_eq!(
                            b.push(u32::from(*i), &d.refs[usize::from(*i)], e),
                            Push::Added
                        );
                    }
                    // Unused references are dropped by the builder, so compare entries.
                    let again = b.seal(&msg.header, &k);
                    let Body::Data(d2) = decode(&again, &k, 38).unwrap().body else {
                        panic!()
                    };
                    let resolve = |d: &Data| -> Vec<(WireRef, WireEntry)> {
                        d.entries
                            .iter()
                            .map(|(i, e)| (d.refs[usize::from(*i)], *e))
                            .collect()
                    };
                    assert_eq!(resolve(d), resolve(&d2));
                }
            }
        }
        assert!(accepted > 100, "{accepted}");
    }
}
