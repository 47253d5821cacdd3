//! VRRP advertisement codec: VRRPv3 (RFC 9568) for IPv4 and IPv6, VRRPv2 (RFC 3768) for IPv4.
//!
//! Pure and I/O free, in smoltcp's wire-layer shape: [`Packet`] is a zero-copy view over the
//! VRRP message (the IP payload) with its offsets in `mod field` and one length/layout check in
//! [`Packet::new_checked`]; [`Repr`] is the plain representation with [`Repr::parse`],
//! [`Repr::emit`] and [`Repr::buffer_len`].
//!
//! The caller hands over the IP source and destination ([`IpPair`]) because the address family
//! decides the layout and the VRRPv3 checksum covers a pseudo-header made of them.
//!
//! # Checksums
//!
//! * VRRPv2 (RFC 3768 §5.3.8): over the VRRP message only.
//! * VRRPv3 over IPv6 (RFC 9568 §5.2.8): over an RFC 8200 §8.1 pseudo-header (source,
//!   destination, upper-layer length, next header 112) followed by the message.
//! * VRRPv3 over IPv4: the two RFCs disagree.
//!   - RFC 5798 §5.2.8 said "the entire VRRP message starting with the version field and a
//!     'pseudo-header' as defined in Section 8.1 of RFC 2460" without naming a family;
//!     keepalived reads that as including the IPv4 pseudo-header (src, dst, zero, protocol
//!     112, length), while others (Cisco, per keepalived's own documentation) apply it to IPv6
//!     only. FRR has a per-router `checksum-with-ipv4-pseudoheader` switch for this.
//!   - RFC 9568 §5.2.8 (April 2024, obsoletes RFC 5798) changed it: "For the IPv4 address
//!     family, the checksum calculation only includes the VRRP message starting with the
//!     Version field and ending after the last IPv4 address (refer to Section 5.2)"; only the
//!     IPv6 family "also includes a prepended 'pseudo-header'". Its §1.2 lists this among the
//!     changes from RFC 5798.
//!   - keepalived 2.2.7 (Debian 12) sends the pseudo-header form and rejects the RFC 9568 form
//!     ("Invalid VRRPv3 checksum"); it has no option to change that (`v3_checksum_as_v2`
//!     arrived in a later release: 2.2.7 answers "Unknown keyword"). See the captured
//!     vectors in the tests.
//!
//!   So [`Repr::emit`] sends the pseudo-header form ([`V3Ipv4Checksum::PseudoHeader`], the
//!   default; [`Repr::emit_with`] can send the RFC 9568 form), and [`Repr::parse`] accepts
//!   both, reporting which one matched as a [`ChecksumForm`] so the caller can count them.
//!
//! # What parse checks, and what it leaves to the receiver
//!
//! Parse rejects, each with its own [`ParseError`] variant: a message shorter than the fixed
//! header, a version other than 2 or 3, VRRPv2 over IPv6 (RFC 3768 is IPv4 only), a length
//! that disagrees with the address count for the family (plus the 8 bytes of authentication
//! data for v2), a bad checksum, a type other than 1 (ADVERTISEMENT, RFC 9568 §5.2.2), VRID 0
//! (§5.2.3: 1-255), an unsupported v2 authentication type (2 = IP AH gets its own variant), and
//! an advertisement interval of 0 (no timer can run on it).
//!
//! Left to the receiver and the state machine (RFC 9568 §7.1): TTL / hop limit 255
//! ([`REQUIRED_TTL`], checked by `vrrp::check`), whether the VRID is configured on the interface, whether
//! the local router owns the address (priority 255), comparing the password and the address
//! list with the configuration, and RFC 9568 §5.2.9's rule that an IPv6 list starts with the
//! link-local address (keepalived 2.2.7 only warns "the first IPv6 VIP address should be link
//! local" and sends the list as configured, so dropping such adverts would break interop).
//!
//! Tolerated on receive, as the RFCs ask: the v3 Reserve nibble (RFC 9568 §5.2.6: zero on
//! transmission, ignored on reception; emit writes zero) and the authentication data of a v2
//! advert with authentication type 0 (RFC 3768 §5.3.10: ignored on reception). An address
//! count of 0 is also accepted although RFC 9568 §5.2.5 gives 1 as the minimum: the frame is
//! still well formed, and RFC 9568 §7.1 makes a list that differs from the configured one a
//! thing to log, not a discard, so the receiver that compares the lists decides.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::model::VrrpVersion;

/// IP protocol number of VRRP (IPv4 protocol / IPv6 next header), RFC 9568 §5.1.1.4.
pub const IP_PROTO_VRRP: u8 = 112;
/// IPv4 multicast group VRRP advertisements go to (RFC 9568 §5.1.1.2).
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group VRRP advertisements go to (RFC 9568 §5.1.2.2).
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit every VRRP packet is sent with and must arrive with (RFC 9568 §5.1.1.3).
pub const REQUIRED_TTL: u8 = 255;
/// Length of the fixed header shared by v2 and v3.
pub const HEADER_LEN: usize = 8;
/// Length of the v2 authentication data that follows the addresses.
pub const AUTH_DATA_LEN: usize = 8;
/// The only message type VRRP defines (RFC 9568 §5.2.2, RFC 3768 §5.3.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;

/// Field offsets of the VRRP header.
pub mod field {
    pub type Field = core::ops::Range<usize>;

    /// Version (high nibble) and type (low nibble).
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    /// v2 only: authentication type.
    pub const AUTH_TYPE: usize = 4;
    /// v2 only: advertisement interval in seconds.
    pub const ADVER_INT_V2: usize = 5;
    /// v3 only: 4-bit Reserve then 12-bit Max Advertise Interval in centiseconds.
    pub const MAX_ADVER_INT: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    /// First address; the address list runs to `ADDRESSES + count * address length`.
    pub const ADDRESSES: usize = 8;
}

/// Address family of the packet carrying the advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// Size of one address in the address list.
    pub const fn addr_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }

    /// The multicast group advertisements of this family are sent to.
    pub const fn multicast_group(self) -> IpAddr {
        match self {
            Family::Ipv4 => IpAddr::V4(MULTICAST_V4),
            Family::Ipv6 => IpAddr::V6(MULTICAST_V6),
        }
    }
}

/// Virtual router MAC address (RFC 9568 §7.3): 00-00-5E-00-01-{VRID} for IPv4,
/// 00-00-5E-00-02-{VRID} for IPv6.
pub const fn virtual_mac(family: Family, vrid: u8) -> [u8; 6] {
    let kind = match family {
        Family::Ipv4 => 0x01,
        Family::Ipv6 => 0x02,
    };
    [0x00, 0x00, 0x5e, 0x00, kind, vrid]
}

/// Source and destination of the IP packet an advertisement travelled (or will travel) in:
/// the family decides the layout, and the VRRPv3 checksum covers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpPair {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl IpPair {
    /// Pairs two addresses of the same family; `None` when the families differ.
    pub fn new(src: IpAddr, dst: IpAddr) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(IpPair::V4 { src, dst }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(IpPair::V6 { src, dst }),
            _ => None,
        }
    }

    pub fn family(&self) -> Family {
        match self {
            IpPair::V4 { .. } => Family::Ipv4,
            IpPair::V6 { .. } => Family::Ipv6,
        }
    }
}

/// The (maximum) advertisement interval, always held in centiseconds.
///
/// VRRPv3 carries it as 12-bit centiseconds (1..=4095); VRRPv2 as 8-bit seconds (1..=255),
/// which parse converts exactly (`secs * 100`). Any value can be held; [`Repr::emit`] refuses
/// one the version cannot carry (v3: 0 or above 4095 cs; v2: 0, not a whole second, or above
/// 255 s), so a v2 interval of 1.5 s is an error, never a silent rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdverInt(u16);

impl AdverInt {
    /// The RFC default, 1 s.
    pub const DEFAULT: AdverInt = AdverInt(100);
    /// Largest value the v3 12-bit field holds (40.95 s).
    pub const V3_MAX_CENTIS: u16 = 0x0fff;

    pub const fn from_centis(centis: u16) -> Self {
        AdverInt(centis)
    }

    /// A v2-style interval in whole seconds (255 s = 25 500 cs fits a `u16`).
    pub const fn from_secs(secs: u8) -> Self {
        AdverInt(secs as u16 * 100)
    }

    pub const fn centis(self) -> u16 {
        self.0
    }

    /// The interval in whole seconds if it is one (what v2 can carry), else `None`.
    pub fn whole_secs(self) -> Option<u8> {
        if self.0.is_multiple_of(100) {
            u8::try_from(self.0 / 100).ok()
        } else {
            None
        }
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_millis(u64::from(self.0) * 10)
    }
}

/// VRRPv2 authentication (RFC 2338 §5.3.6; RFC 3768 keeps the field and values for
/// compatibility). VRRPv3 has none; [`Repr::emit`] refuses anything but `None` for it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Auth {
    /// Type 0.
    None,
    /// Type 1, keepalived's `auth_type PASS`: up to 8 bytes of clear text, zero padded.
    Simple([u8; AUTH_DATA_LEN]),
}

impl Auth {
    /// Authentication type 2, IP Authentication Header: not supported (parse reports
    /// [`ParseError::AhAuthUnsupported`]).
    pub const TYPE_AH: u8 = 2;

    /// A simple-text password, zero padded; `None` if it is longer than 8 bytes (keepalived
    /// truncates longer ones with a warning: truncate before calling to match it).
    pub fn simple(password: &[u8]) -> Option<Auth> {
        let mut key = [0u8; AUTH_DATA_LEN];
        key.get_mut(..password.len())?.copy_from_slice(password);
        Some(Auth::Simple(key))
    }

    /// The authentication type code on the wire.
    pub const fn type_code(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Simple(_) => 1,
        }
    }
}

// The password travels in clear on the wire, but it still has no business in logs.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Simple(_) => f.write_str("Simple(<redacted>)"),
        }
    }
}

/// The virtual addresses of an advertisement: one family, by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Addresses {
    V4(Vec<Ipv4Addr>),
    V6(Vec<Ipv6Addr>),
}

impl Addresses {
    pub fn family(&self) -> Family {
        match self {
            Addresses::V4(_) => Family::Ipv4,
            Addresses::V6(_) => Family::Ipv6,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Addresses::V4(a) => a.len(),
            Addresses::V6(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let (v4, v6) = match self {
            Addresses::V4(a) => (a.as_slice(), &[][..]),
            Addresses::V6(a) => (&[][..], a.as_slice()),
        };
        v4.iter()
            .map(|a| IpAddr::V4(*a))
            .chain(v6.iter().map(|a| IpAddr::V6(*a)))
    }
}

/// Which checksum computation a received advertisement matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumForm {
    /// Over the VRRP message only: every VRRPv2 advert, and VRRPv3 over IPv4 as RFC 9568
    /// specifies it (Cisco, FRR without `checksum-with-ipv4-pseudoheader`, keepalived after
    /// 2.2.7 with `v3_checksum_as_v2`).
    MessageOnly,
    /// VRRPv3 over IPv4 with the IPv4 pseudo-header, RFC 5798 as keepalived reads it.
    Ipv4PseudoHeader,
    /// VRRPv3 over IPv6 with the RFC 8200 pseudo-header (the only form for IPv6).
    Ipv6PseudoHeader,
}

impl ChecksumForm {
    /// Stable snake_case name for counters.
    pub const fn name(&self) -> &'static str {
        match self {
            ChecksumForm::MessageOnly => "message_only",
            ChecksumForm::Ipv4PseudoHeader => "ipv4_pseudo_header",
            ChecksumForm::Ipv6PseudoHeader => "ipv6_pseudo_header",
        }
    }
}

/// How to compute the checksum of a VRRPv3 advertisement sent over IPv4 (the one case the
/// RFCs disagree on; v2 and IPv6 each have a single form).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum V3Ipv4Checksum {
    /// With the IPv4 pseudo-header: RFC 5798 as keepalived reads it. keepalived 2.2.7 accepts
    /// only this one.
    #[default]
    PseudoHeader,
    /// The VRRP message only, RFC 9568 §5.2.8.
    MessageOnly,
}

/// Why a received advertisement was discarded. [`ParseError::name`] gives a stable name to
/// count it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("VRRP message of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("VRRP version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u8),
    #[error("VRRPv2 advertisement over IPv6 (VRRPv2 is IPv4 only)")]
    V2OverIpv6,
    #[error("VRRP message is {actual} bytes, but {count} addresses make it {expected}")]
    BadLength {
        count: u8,
        expected: usize,
        actual: usize,
    },
    #[error("bad VRRP checksum {found:#06x} (expected {expected:#06x})")]
    BadChecksum { found: u16, expected: u16 },
    #[error("VRRP message type {0} is not ADVERTISEMENT (1)")]
    UnknownType(u8),
    #[error("VRID 0 is not valid (1-255)")]
    ZeroVrid,
    #[error("VRRPv2 authentication type 2 (IP Authentication Header) is not supported")]
    AhAuthUnsupported,
    #[error("unknown VRRPv2 authentication type {0}")]
    UnknownAuthType(u8),
    #[error("advertisement interval 0")]
    ZeroAdverInt,
}

impl ParseError {
    /// Every name [`ParseError::name`] can return, to register counters up front.
    pub const NAMES: &'static [&'static str] = &[
        "too_short",
        "unsupported_version",
        "v2_over_ipv6",
        "bad_length",
        "bad_checksum",
        "unknown_type",
        "zero_vrid",
        "ah_auth_unsupported",
        "unknown_auth_type",
        "zero_adver_int",
    ];

    /// Stable snake_case name of the discard reason, for counters.
    pub const fn name(&self) -> &'static str {
        match self {
            ParseError::TooShort { .. } => "too_short",
            ParseError::UnsupportedVersion(_) => "unsupported_version",
            ParseError::V2OverIpv6 => "v2_over_ipv6",
            ParseError::BadLength { .. } => "bad_length",
            ParseError::BadChecksum { .. } => "bad_checksum",
            ParseError::UnknownType(_) => "unknown_type",
            ParseError::ZeroVrid => "zero_vrid",
            ParseError::AhAuthUnsupported => "ah_auth_unsupported",
            ParseError::UnknownAuthType(_) => "unknown_auth_type",
            ParseError::ZeroAdverInt => "zero_adver_int",
        }
    }
}

/// Why a [`Repr`] cannot be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("buffer of {have} bytes is too small for a {need}-byte VRRP message")]
    BufferTooSmall { need: usize, have: usize },
    #[error("VRID 0 is not valid (1-255)")]
    ZeroVrid,
    #[error("{0} addresses do not fit the 8-bit count")]
    TooManyAddresses(usize),
    #[error("address list, IP pair and packet view are not all of one family")]
    FamilyMismatch,
    #[error("VRRPv2 cannot be sent over IPv6")]
    V2OverIpv6,
    #[error("VRRPv3 has no authentication")]
    AuthOnV3,
    #[error("advertisement interval of {centis} cs cannot be carried by VRRPv{}", version.number())]
    AdverIntOutOfRange { version: VrrpVersion, centis: u16 },
}

/// A read/write view of a VRRP message (the IP payload), for one address family.
///
/// ```text
/// VRRPv3 (RFC 9568 §5.1)
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |(rsvd) |     Max Adver Int     |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                                                               +
/// |                       IPvX Address(es)                        |
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// +                                                               +
/// |                                                               |
/// +                                                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///
/// VRRPv2 (RFC 3768 §5.1)
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version| Type  | Virtual Rtr ID|   Priority    | Count IP Addrs|
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Auth Type   |   Adver Int   |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         IP Address (1)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                            .                                  |
/// |                            .                                  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                         IP Address (n)                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Authentication Data (1)                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                     Authentication Data (2)                   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// As in smoltcp, the accessors of a view made with [`Packet::new_unchecked`] panic on a
/// buffer too short for the field; [`Packet::new_checked`] (or [`Packet::check_len`]) makes
/// every accessor infallible.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    family: Family,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub const fn new_unchecked(buffer: T, family: Family) -> Self {
        Packet { buffer, family }
    }

    /// Wraps `buffer` and runs [`Packet::check_len`].
    pub fn new_checked(buffer: T, family: Family) -> Result<Self, ParseError> {
        let packet = Self::new_unchecked(buffer, family);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds exactly one VRRP message of a layout this codec knows:
    /// the fixed header, a version of 2 or 3 (the layout depends on it), v2 only over IPv4,
    /// and a length equal to header + count x address length (+ 8 bytes of authentication
    /// data for v2). Trailing bytes are an error: the IP payload length is the message length.
    pub fn check_len(&self) -> Result<(), ParseError> {
        let data = self.buffer.as_ref();
        let len = data.len();
        if len < HEADER_LEN {
            return Err(ParseError::TooShort { len });
        }
        let version = self.version();
        if version != 2 && version != 3 {
            return Err(ParseError::UnsupportedVersion(version));
        }
        if version == 2 && self.family == Family::Ipv6 {
            return Err(ParseError::V2OverIpv6);
        }
        let expected = self.message_len();
        if len != expected {
            return Err(ParseError::BadLength {
                count: self.addr_count(),
                expected,
                actual: len,
            });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Length of the message the header describes (not the buffer's length).
    pub fn message_len(&self) -> usize {
        let auth = if self.version() == 2 {
            AUTH_DATA_LEN
        } else {
            0
        };
        HEADER_LEN + usize::from(self.addr_count()) * self.family.addr_len() + auth
    }

    /// Raw version nibble.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] >> 4
    }

    /// Raw type nibble.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] & 0x0f
    }

    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }

    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }

    pub fn addr_count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }

    /// v2: authentication type.
    pub fn auth_type(&self) -> u8 {
        self.buffer.as_ref()[field::AUTH_TYPE]
    }

    /// v2: advertisement interval in seconds.
    pub fn adver_int_secs(&self) -> u8 {
        self.buffer.as_ref()[field::ADVER_INT_V2]
    }

    /// v3: the 4-bit Reserve field.
    pub fn reserved(&self) -> u8 {
        self.buffer.as_ref()[field::MAX_ADVER_INT.start] >> 4
    }

    /// v3: Max Advertise Interval in centiseconds (12 bits).
    pub fn max_adver_int(&self) -> u16 {
        self.read_u16(field::MAX_ADVER_INT.start) & 0x0fff
    }

    pub fn checksum(&self) -> u16 {
        self.read_u16(field::CHECKSUM.start)
    }

    /// The address list, `addr_count()` addresses of the view's family, back to back.
    pub fn addr_bytes(&self) -> &[u8] {
        let end = field::ADDRESSES + usize::from(self.addr_count()) * self.family.addr_len();
        &self.buffer.as_ref()[field::ADDRESSES..end]
    }

    /// v2: the authentication data after the address list; `None` for other versions.
    pub fn auth_data(&self) -> Option<[u8; AUTH_DATA_LEN]> {
        if self.version() != 2 {
            return None;
        }
        let start = field::ADDRESSES + usize::from(self.addr_count()) * self.family.addr_len();
        let mut out = [0u8; AUTH_DATA_LEN];
        out.copy_from_slice(&self.buffer.as_ref()[start..start + AUTH_DATA_LEN]);
        Some(out)
    }

    /// Which checksum form the message's checksum field satisfies, if any. For VRRPv3 over
    /// IPv4 the pseudo-header form (the one we send) is tried first.
    pub fn verify_checksum(&self, ip: &IpPair) -> Option<ChecksumForm> {
        let found = self.checksum();
        let candidates: &[ChecksumForm] = match (self.version(), ip) {
            (3, IpPair::V4 { .. }) => &[ChecksumForm::Ipv4PseudoHeader, ChecksumForm::MessageOnly],
            (3, IpPair::V6 { .. }) => &[ChecksumForm::Ipv6PseudoHeader],
            _ => &[ChecksumForm::MessageOnly],
        };
        candidates
            .iter()
            .copied()
            .find(|form| self.compute_checksum(ip, *form) == Some(found))
    }

    /// The checksum of the message (with its checksum field taken as zero) in `form`, or
    /// `None` when `form` needs a pseudo-header of the other family than `ip`.
    pub fn compute_checksum(&self, ip: &IpPair, form: ChecksumForm) -> Option<u16> {
        let data = self.buffer.as_ref();
        let msg = &data[..self.message_len().min(data.len())];
        let mut sum = 0u32;
        match (form, ip) {
            (ChecksumForm::MessageOnly, _) => {}
            (ChecksumForm::Ipv4PseudoHeader, IpPair::V4 { src, dst }) => {
                // RFC 768/793 layout: src, dst, zero, protocol, 16-bit length.
                sum = sum_words(sum, &src.octets());
                sum = sum_words(sum, &dst.octets());
                sum = sum_words(sum, &[0, IP_PROTO_VRRP]);
                sum = sum_words(sum, &(msg.len() as u16).to_be_bytes());
            }
            (ChecksumForm::Ipv6PseudoHeader, IpPair::V6 { src, dst }) => {
                // RFC 8200 §8.1: src, dst, 32-bit upper-layer length, 3 zero bytes, next header.
                sum = sum_words(sum, &src.octets());
                sum = sum_words(sum, &dst.octets());
                sum = sum_words(sum, &(msg.len() as u32).to_be_bytes());
                sum = sum_words(sum, &[0, 0, 0, IP_PROTO_VRRP]);
            }
            _ => return None,
        }
        // Skip the checksum field itself; it starts on an even offset, so word alignment holds.
        sum = sum_words(sum, msg.get(..field::CHECKSUM.start).unwrap_or(msg));
        sum = sum_words(sum, msg.get(field::CHECKSUM.end..).unwrap_or(&[]));
        Some(!fold(sum))
    }

    fn read_u16(&self, at: usize) -> u16 {
        let data = self.buffer.as_ref();
        u16::from_be_bytes([data[at], data[at + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_version_type(&mut self, version: u8, msg_type: u8) {
        self.buffer.as_mut()[field::VER_TYPE] = (version << 4) | (msg_type & 0x0f);
    }

    pub fn set_vrid(&mut self, vrid: u8) {
        self.buffer.as_mut()[field::VRID] = vrid;
    }

    pub fn set_priority(&mut self, priority: u8) {
        self.buffer.as_mut()[field::PRIORITY] = priority;
    }

    pub fn set_addr_count(&mut self, count: u8) {
        self.buffer.as_mut()[field::COUNT] = count;
    }

    /// v2.
    pub fn set_auth_type(&mut self, auth_type: u8) {
        self.buffer.as_mut()[field::AUTH_TYPE] = auth_type;
    }

    /// v2.
    pub fn set_adver_int_secs(&mut self, secs: u8) {
        self.buffer.as_mut()[field::ADVER_INT_V2] = secs;
    }

    /// v3: writes the 12-bit interval and a zero Reserve nibble (RFC 9568 §5.2.6).
    pub fn set_max_adver_int(&mut self, centis: u16) {
        self.buffer.as_mut()[field::MAX_ADVER_INT]
            .copy_from_slice(&(centis & 0x0fff).to_be_bytes());
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&checksum.to_be_bytes());
    }

    /// The address list, sized by the count already written.
    pub fn addr_bytes_mut(&mut self) -> &mut [u8] {
        let end = field::ADDRESSES + usize::from(self.addr_count()) * self.family.addr_len();
        &mut self.buffer.as_mut()[field::ADDRESSES..end]
    }

    /// v2: writes the authentication data after the address list (count already written).
    pub fn set_auth_data(&mut self, data: &[u8; AUTH_DATA_LEN]) {
        let start = field::ADDRESSES + usize::from(self.addr_count()) * self.family.addr_len();
        self.buffer.as_mut()[start..start + AUTH_DATA_LEN].copy_from_slice(data);
    }

    /// Computes and writes the checksum: message only for v2, the IPv6 pseudo-header for v3
    /// over IPv6, and `v3_ipv4` for v3 over IPv4. A family mismatch between the view and `ip`
    /// writes the message-only sum (emit refuses it before getting here).
    pub fn fill_checksum(&mut self, ip: &IpPair, v3_ipv4: V3Ipv4Checksum) {
        let form = match (self.version(), ip) {
            (3, IpPair::V4 { .. }) => match v3_ipv4 {
                V3Ipv4Checksum::PseudoHeader => ChecksumForm::Ipv4PseudoHeader,
                V3Ipv4Checksum::MessageOnly => ChecksumForm::MessageOnly,
            },
            (3, IpPair::V6 { .. }) => ChecksumForm::Ipv6PseudoHeader,
            _ => ChecksumForm::MessageOnly,
        };
        let sum = self
            .compute_checksum(ip, form)
            .or_else(|| self.compute_checksum(ip, ChecksumForm::MessageOnly))
            .unwrap_or(0);
        self.set_checksum(sum);
    }
}

/// Adds `data` as big-endian 16-bit words (an odd last byte is padded with zero) to `acc`.
/// At most a few thousand words reach one sum, far from overflowing 32 bits.
fn sum_words(acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut acc = acc;
    for w in &mut chunks {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds the carries of a one's complement sum into 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A VRRP advertisement, independent of its encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repr {
    pub version: VrrpVersion,
    /// 1..=255.
    pub vrid: u8,
    /// 0 = the master is leaving, 255 = the address owner, 1..=254 = backups.
    pub priority: u8,
    /// Max Advertise Interval (v3) / Adver Int (v2), in centiseconds either way.
    pub max_adver_int: AdverInt,
    pub addresses: Addresses,
    /// Always [`Auth::None`] for v3.
    pub auth: Auth,
}

impl Repr {
    /// Parses a view made by [`Packet::new_checked`] (or one whose [`Packet::check_len`]
    /// passed: this re-runs it, so an unchecked view cannot panic here). `ip` is the IP source
    /// and destination it arrived with; returns the advertisement and the checksum form it
    /// matched.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        ip: &IpPair,
    ) -> Result<(Repr, ChecksumForm), ParseError> {
        // A view of the other family than the IP header would read the addresses wrongly.
        let packet = Packet::new_unchecked(packet.buffer.as_ref(), ip.family());
        packet.check_len()?;

        let form = packet
            .verify_checksum(ip)
            .ok_or_else(|| ParseError::BadChecksum {
                found: packet.checksum(),
                expected: packet
                    .compute_checksum(ip, default_form(packet.version(), ip))
                    .unwrap_or(0),
            })?;

        if packet.msg_type() != TYPE_ADVERTISEMENT {
            return Err(ParseError::UnknownType(packet.msg_type()));
        }
        if packet.vrid() == 0 {
            return Err(ParseError::ZeroVrid);
        }

        let (version, max_adver_int, auth) = if packet.version() == 2 {
            let auth = match packet.auth_type() {
                0 => Auth::None,
                1 => Auth::Simple(packet.auth_data().unwrap_or_default()),
                Auth::TYPE_AH => return Err(ParseError::AhAuthUnsupported),
                other => return Err(ParseError::UnknownAuthType(other)),
            };
            let interval = AdverInt::from_secs(packet.adver_int_secs());
            (VrrpVersion::V2, interval, auth)
        } else {
            let interval = AdverInt::from_centis(packet.max_adver_int());
            (VrrpVersion::V3, interval, Auth::None)
        };
        if max_adver_int.centis() == 0 {
            return Err(ParseError::ZeroAdverInt);
        }

        let bytes = packet.addr_bytes();
        let addresses = match ip.family() {
            Family::Ipv4 => Addresses::V4(
                bytes
                    .chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect(),
            ),
            Family::Ipv6 => Addresses::V6(
                bytes
                    .chunks_exact(16)
                    .map(|c| {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(c);
                        Ipv6Addr::from(octets)
                    })
                    .collect(),
            ),
        };

        Ok((
            Repr {
                version,
                vrid: packet.vrid(),
                priority: packet.priority(),
                max_adver_int,
                addresses,
                auth,
            },
            form,
        ))
    }

    /// Length of the message this advertisement encodes to.
    pub fn buffer_len(&self) -> usize {
        let auth = match self.version {
            VrrpVersion::V2 => AUTH_DATA_LEN,
            VrrpVersion::V3 => 0,
        };
        HEADER_LEN + self.addresses.len() * self.addresses.family().addr_len() + auth
    }

    /// Checks that the advertisement can be sent in a packet from/to `ip`.
    pub fn validate(&self, ip: &IpPair) -> Result<(), EmitError> {
        if self.vrid == 0 {
            return Err(EmitError::ZeroVrid);
        }
        if self.addresses.len() > usize::from(u8::MAX) {
            return Err(EmitError::TooManyAddresses(self.addresses.len()));
        }
        if self.addresses.family() != ip.family() {
            return Err(EmitError::FamilyMismatch);
        }
        let centis = self.max_adver_int.centis();
        match self.version {
            VrrpVersion::V2 => {
                if ip.family() == Family::Ipv6 {
                    return Err(EmitError::V2OverIpv6);
                }
                if centis == 0 || self.max_adver_int.whole_secs().is_none() {
                    return Err(EmitError::AdverIntOutOfRange {
                        version: self.version,
                        centis,
                    });
                }
            }
            VrrpVersion::V3 => {
                if self.auth != Auth::None {
                    return Err(EmitError::AuthOnV3);
                }
                if centis == 0 || centis > AdverInt::V3_MAX_CENTIS {
                    return Err(EmitError::AdverIntOutOfRange {
                        version: self.version,
                        centis,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the advertisement into the first [`Repr::buffer_len`] bytes of `packet`, with
    /// the checksum keepalived accepts (for v3 over IPv4, the pseudo-header form).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        ip: &IpPair,
    ) -> Result<(), EmitError> {
        self.emit_with(packet, ip, V3Ipv4Checksum::default())
    }

    /// [`Repr::emit`] choosing the VRRPv3-over-IPv4 checksum form (ignored for v2 and IPv6).
    pub fn emit_with<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        ip: &IpPair,
        v3_ipv4: V3Ipv4Checksum,
    ) -> Result<(), EmitError> {
        self.validate(ip)?;
        if packet.family() != ip.family() {
            return Err(EmitError::FamilyMismatch);
        }
        let need = self.buffer_len();
        let have = packet.buffer.as_ref().len();
        if have < need {
            return Err(EmitError::BufferTooSmall { need, have });
        }

        packet.set_version_type(self.version.number(), TYPE_ADVERTISEMENT);
        packet.set_vrid(self.vrid);
        packet.set_priority(self.priority);
        // validate() bounded the count to 255.
        packet.set_addr_count(self.addresses.len() as u8);
        match self.version {
            VrrpVersion::V2 => {
                packet.set_auth_type(self.auth.type_code());
                // validate() made it a whole number of seconds in 1..=255.
                packet.set_adver_int_secs(self.max_adver_int.whole_secs().unwrap_or(0));
            }
            VrrpVersion::V3 => packet.set_max_adver_int(self.max_adver_int.centis()),
        }
        packet.set_checksum(0);
        let out = packet.addr_bytes_mut();
        match &self.addresses {
            Addresses::V4(list) => {
                for (slot, addr) in out.chunks_exact_mut(4).zip(list) {
                    slot.copy_from_slice(&addr.octets());
                }
            }
            Addresses::V6(list) => {
                for (slot, addr) in out.chunks_exact_mut(16).zip(list) {
                    slot.copy_from_slice(&addr.octets());
                }
            }
        }
        if self.version == VrrpVersion::V2 {
            let data = match self.auth {
                Auth::None => [0u8; AUTH_DATA_LEN],
                Auth::Simple(key) => key,
            };
            packet.set_auth_data(&data);
        }
        packet.fill_checksum(ip, v3_ipv4);
        Ok(())
    }

    /// Encodes to a fresh buffer of exactly [`Repr::buffer_len`] bytes (keepalived's checksum
    /// form).
    pub fn to_bytes(&self, ip: &IpPair) -> Result<Vec<u8>, EmitError> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut buf[..], ip.family()), ip)?;
        Ok(buf)
    }
}

/// Parses a VRRP message (the IP payload) that arrived from/to `ip`.
pub fn parse(bytes: &[u8], ip: &IpPair) -> Result<(Repr, ChecksumForm), ParseError> {
    Repr::parse(&Packet::new_checked(bytes, ip.family())?, ip)
}

/// The form we send, named in a checksum error.
fn default_form(version: u8, ip: &IpPair) -> ChecksumForm {
    match (version, ip) {
        (3, IpPair::V4 { .. }) => ChecksumForm::Ipv4PseudoHeader,
        (3, IpPair::V6 { .. }) => ChecksumForm::Ipv6PseudoHeader,
        _ => ChecksumForm::MessageOnly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    type Parsed = Result<(Repr, ChecksumForm), ParseError>;

    fn v4(a: &str) -> Ipv4Addr {
        a.parse().unwrap()
    }

    fn v6(a: &str) -> Ipv6Addr {
        a.parse().unwrap()
    }

    // ---------------------------------------------------------------------------------------
    // Hand-computed vectors. Each checksum is worked out below as a one's complement sum of
    // big-endian 16-bit words, then cross-checked with an independent script.
    // ---------------------------------------------------------------------------------------

    /// VRRPv2, VRID 7, priority 100, 3 s, two addresses, PASS "pw".
    /// Words: 2107 6402 0103 [0000] c000 020a c000 020b 7077 0000 0000 0000
    /// Sum 0x27a98 -> fold 0x7a98 + 2 = 0x7a9a -> complement 0x8565.
    const HAND_V2: &str =
        "21 07 64 02 01 03 85 65  c0 00 02 0a  c0 00 02 0b  70 77 00 00 00 00 00 00";

    fn hand_v2_ip() -> IpPair {
        IpPair::V4 {
            src: v4("192.0.2.3"),
            dst: MULTICAST_V4,
        }
    }

    fn hand_v2_repr() -> Repr {
        Repr {
            version: VrrpVersion::V2,
            vrid: 7,
            priority: 100,
            max_adver_int: AdverInt::from_secs(3),
            addresses: Addresses::V4(vec![v4("192.0.2.10"), v4("192.0.2.11")]),
            auth: Auth::simple(b"pw").unwrap(),
        }
    }

    /// VRRPv3 over IPv4, 192.0.2.3 -> 224.0.0.18, VRID 200, priority 255, 50 cs,
    /// 198.51.100.7.
    /// Pseudo-header words: c000 0203 e000 0012 0070 000c -> 0x1a291.
    /// Message words: 31c8 ff01 0032 [0000] c633 6407 -> 0x25b35.
    /// With pseudo-header: 0x3fdc6 -> 0xfdc6 + 3 = 0xfdc9 -> complement 0x0236.
    /// Message only (RFC 9568): 0x25b35 -> 0x5b37 -> complement 0xa4c8.
    const HAND_V3_V4: &str = "31 c8 ff 01 00 32 02 36  c6 33 64 07";
    const HAND_V3_V4_RFC9568_CHECKSUM: u16 = 0xa4c8;

    fn hand_v3_v4_ip() -> IpPair {
        IpPair::V4 {
            src: v4("192.0.2.3"),
            dst: MULTICAST_V4,
        }
    }

    fn hand_v3_v4_repr() -> Repr {
        Repr {
            version: VrrpVersion::V3,
            vrid: 200,
            priority: 255,
            max_adver_int: AdverInt::from_centis(50),
            addresses: Addresses::V4(vec![v4("198.51.100.7")]),
            auth: Auth::None,
        }
    }

    /// VRRPv3 over IPv6, fe80::2 -> ff02::12, VRID 1, priority 0, 4095 cs (the 12-bit
    /// maximum), fe80::1 then 2001:db8::1.
    /// Pseudo-header words (src, dst, length 0x00000028, next header 0x70): sum 0x1fe2e.
    /// Message words: 3101 0002 0fff [0000] fe80 0 0 0 0 0 0 0001 2001 0db8 0 0 0 0 0 0001
    /// -> 0x16d3d. Total 0x36b6b -> 0x6b6b + 3 = 0x6b6e -> complement 0x9491.
    const HAND_V3_V6: &str = "31 01 00 02 0f ff 94 91
        fe 80 00 00 00 00 00 00 00 00 00 00 00 00 00 01
        20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01";

    fn hand_v3_v6_ip() -> IpPair {
        IpPair::V6 {
            src: v6("fe80::2"),
            dst: MULTICAST_V6,
        }
    }

    fn hand_v3_v6_repr() -> Repr {
        Repr {
            version: VrrpVersion::V3,
            vrid: 1,
            priority: 0,
            max_adver_int: AdverInt::from_centis(4095),
            addresses: Addresses::V6(vec![v6("fe80::1"), v6("2001:db8::1")]),
            auth: Auth::None,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Captured from a real keepalived: Keepalived v2.2.7 (01/16,2022), Debian 12, kernel 6.18.
    // Two fresh network namespaces joined by a veth pair (vA 192.0.2.1/24, 2001:db8::1/64 and
    // its fe80::ec02:84ff:fe7c:e349 link-local; vB 192.0.2.2/24), keepalived in the first:
    //   ip netns exec NSa keepalived -n -l -D -P -f CONF -p PID -r VRRPPID
    // captured on the peer:
    //   ip netns exec NSb tcpdump -i vB -U -w FILE 'ip proto 112 or ip6 proto 112'
    //   tcpdump -r FILE -vvv -x        (hex from the IP header on)
    // Config (v2 run; the v3 runs add `vrrp_version 3` to global_defs and drop the
    // authentication block, which VRRPv3 does not have):
    //   global_defs { router_id vrcap_v2 }
    //   vrrp_instance VI_4 { state MASTER  interface vA  virtual_router_id 51  priority 150
    //     advert_int 1  authentication { auth_type PASS  auth_pass secret12 }
    //     virtual_ipaddress { 192.0.2.100/24 } }
    // The v3 run also had VI_6, the same with `virtual_ipaddress { 2001:db8::100/64 }`
    // (keepalived warned "the first IPv6 VIP address should be link local" and sent it
    // anyway). A third run (v3) had VI_4 with 192.0.2.100/24 and 192.0.2.101/24 and was
    // stopped with SIGTERM to record the priority-0 advert. Adding `v3_checksum_as_v2` to
    // global_defs gives "Unknown keyword" in 2.2.7: it cannot send the RFC 9568 form.
    // ---------------------------------------------------------------------------------------

    /// VRRPv2, IPv4 header then 20-byte VRRP message: vrid 51 (0x33), prio 150 (0x96),
    /// count 1, auth type 1, adver 1 s, checksum 0x17e7 (message only), 192.0.2.100,
    /// "secret12". IP: TOS 0xc0, TTL 255, proto 112, 192.0.2.1 -> 224.0.0.18.
    const KA_V2: &str = "45c0 0028 0001 0000 ff70 1891 c000 0201
                         e000 0012 2133 9601 0101 17e7 c000 0264
                         7365 6372 6574 3132";
    /// VRRPv3 over IPv4: vrid 51, prio 150, count 1, rsvd 0, 100 cs, checksum 0xd371 = the
    /// IPv4 pseudo-header form (the RFC 9568 message-only form would be 0x7602).
    const KA_V3_V4: &str = "45c0 0020 0001 0000 ff70 1899 c000 0201
                            e000 0012 3133 9601 0064 d371 c000 0264";
    const KA_V3_V4_RFC9568_CHECKSUM: u16 = 0x7602;
    /// VRRPv3 over IPv6: traffic class 0xc0, hop limit 255, next header 112,
    /// fe80::ec02:84ff:fe7c:e349 -> ff02::12; vrid 51, prio 150, count 1, 100 cs,
    /// checksum 0xb8c6 (IPv6 pseudo-header), 2001:db8::100.
    const KA_V3_V6: &str = "6c0e 3eb9 0018 70ff fe80 0000 0000 0000
                            ec02 84ff fe7c e349 ff02 0000 0000 0000
                            0000 0000 0000 0012 3133 9601 0064 b8c6
                            2001 0db8 0000 0000 0000 0000 0000 0100";
    /// VRRPv3 over IPv4, two addresses, priority 150, checksum 0x1107 (pseudo-header).
    const KA_V3_V4_TWO: &str = "45c0 0024 0003 0000 ff70 1893 c000 0201
                                e000 0012 3133 9602 0064 1107 c000 0264
                                c000 0265";
    /// The same instance on SIGTERM: priority 0, checksum 0xa707 (pseudo-header).
    const KA_V3_V4_TWO_PRIO0: &str = "45c0 0024 0004 0000 ff70 1892 c000 0201
                                      e000 0012 3133 0002 0064 a707 c000 0264
                                      c000 0265";

    /// Splits a captured IP packet into (TTL or hop limit, addresses, VRRP payload),
    /// checking that it is VRRP.
    fn split_ip(packet: &[u8]) -> (u8, IpPair, Vec<u8>) {
        match packet[0] >> 4 {
            4 => {
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                assert_eq!(packet[9], IP_PROTO_VRRP);
                let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
                assert_eq!(total, packet.len());
                let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
                let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                (packet[8], IpPair::V4 { src, dst }, packet[ihl..].to_vec())
            }
            6 => {
                assert_eq!(packet[6], IP_PROTO_VRRP);
                let plen = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
                assert_eq!(plen + 40, packet.len());
                let src: [u8; 16] = packet[8..24].try_into().unwrap();
                let dst: [u8; 16] = packet[24..40].try_into().unwrap();
                let ip = IpPair::V6 {
                    src: src.into(),
                    dst: dst.into(),
                };
                (packet[7], ip, packet[40..].to_vec())
            }
            v => panic!("IP version {v}"),
        }
    }

    fn assert_golden(
        bytes: &[u8],
        ip: &IpPair,
        repr: &Repr,
        form: ChecksumForm,
        v3_ipv4: V3Ipv4Checksum,
    ) {
        assert_eq!(parse(bytes, ip), Ok((repr.clone(), form)));
        assert_eq!(repr.buffer_len(), bytes.len());
        let mut out = vec![0xa5u8; repr.buffer_len()];
        repr.emit_with(
            &mut Packet::new_unchecked(&mut out[..], ip.family()),
            ip,
            v3_ipv4,
        )
        .unwrap();
        assert_eq!(out, bytes, "emit differs from the golden bytes");
    }

    #[test]
    fn hand_v2_pass_auth() {
        let bytes = hex(HAND_V2);
        let repr = hand_v2_repr();
        assert_golden(
            &bytes,
            &hand_v2_ip(),
            &repr,
            ChecksumForm::MessageOnly,
            V3Ipv4Checksum::PseudoHeader,
        );
        assert_eq!(repr.auth, Auth::Simple(*b"pw\0\0\0\0\0\0"));
        assert_eq!(repr.max_adver_int.as_duration(), Duration::from_secs(3));
        // v2 does not cover the IP addresses: any pair of the family verifies.
        let other = IpPair::V4 {
            src: v4("203.0.113.9"),
            dst: v4("203.0.113.10"),
        };
        assert_eq!(parse(&bytes, &other).unwrap().1, ChecksumForm::MessageOnly);
    }

    #[test]
    fn hand_v3_ipv4_both_checksum_forms() {
        let mut bytes = hex(HAND_V3_V4);
        let ip = hand_v3_v4_ip();
        let repr = hand_v3_v4_repr();
        assert_golden(
            &bytes,
            &ip,
            &repr,
            ChecksumForm::Ipv4PseudoHeader,
            V3Ipv4Checksum::PseudoHeader,
        );
        assert_eq!(repr.to_bytes(&ip).unwrap(), bytes);

        bytes[6..8].copy_from_slice(&HAND_V3_V4_RFC9568_CHECKSUM.to_be_bytes());
        assert_golden(
            &bytes,
            &ip,
            &repr,
            ChecksumForm::MessageOnly,
            V3Ipv4Checksum::MessageOnly,
        );
    }

    #[test]
    fn hand_v3_ipv6() {
        let bytes = hex(HAND_V3_V6);
        assert_golden(
            &bytes,
            &hand_v3_v6_ip(),
            &hand_v3_v6_repr(),
            ChecksumForm::Ipv6PseudoHeader,
            V3Ipv4Checksum::PseudoHeader,
        );
        // The IPv6 checksum covers the source: another sender's address must not verify.
        let other = IpPair::V6 {
            src: v6("fe80::3"),
            dst: MULTICAST_V6,
        };
        assert_eq!(
            parse(&bytes, &other),
            Err(ParseError::BadChecksum {
                found: 0x9491,
                expected: 0x9490
            })
        );
    }

    #[test]
    fn keepalived_v2_pass() {
        let (ttl, ip, vrrp) = split_ip(&hex(KA_V2));
        assert_eq!(ttl, REQUIRED_TTL);
        assert_eq!(
            ip,
            IpPair::V4 {
                src: v4("192.0.2.1"),
                dst: MULTICAST_V4
            }
        );
        let repr = Repr {
            version: VrrpVersion::V2,
            vrid: 51,
            priority: 150,
            max_adver_int: AdverInt::DEFAULT,
            addresses: Addresses::V4(vec![v4("192.0.2.100")]),
            auth: Auth::simple(b"secret12").unwrap(),
        };
        assert_golden(
            &vrrp,
            &ip,
            &repr,
            ChecksumForm::MessageOnly,
            V3Ipv4Checksum::PseudoHeader,
        );
    }

    #[test]
    fn keepalived_v3_ipv4_uses_pseudo_header() {
        let (ttl, ip, vrrp) = split_ip(&hex(KA_V3_V4));
        assert_eq!(ttl, REQUIRED_TTL);
        let repr = Repr {
            version: VrrpVersion::V3,
            vrid: 51,
            priority: 150,
            max_adver_int: AdverInt::DEFAULT,
            addresses: Addresses::V4(vec![v4("192.0.2.100")]),
            auth: Auth::None,
        };
        assert_golden(
            &vrrp,
            &ip,
            &repr,
            ChecksumForm::Ipv4PseudoHeader,
            V3Ipv4Checksum::PseudoHeader,
        );
        // What an RFC 9568 sender would have put there; we accept it too, and say so.
        let packet = Packet::new_checked(&vrrp[..], Family::Ipv4).unwrap();
        assert_eq!(
            packet.compute_checksum(&ip, ChecksumForm::MessageOnly),
            Some(KA_V3_V4_RFC9568_CHECKSUM)
        );
        let mut rfc9568 = vrrp.clone();
        rfc9568[6..8].copy_from_slice(&KA_V3_V4_RFC9568_CHECKSUM.to_be_bytes());
        assert_eq!(
            parse(&rfc9568, &ip),
            Ok((repr.clone(), ChecksumForm::MessageOnly))
        );
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit_with(
            &mut Packet::new_unchecked(&mut out[..], Family::Ipv4),
            &ip,
            V3Ipv4Checksum::MessageOnly,
        )
        .unwrap();
        assert_eq!(out, rfc9568);
    }

    #[test]
    fn keepalived_v3_ipv6() {
        let (hop_limit, ip, vrrp) = split_ip(&hex(KA_V3_V6));
        assert_eq!(hop_limit, REQUIRED_TTL);
        assert_eq!(
            ip,
            IpPair::V6 {
                src: v6("fe80::ec02:84ff:fe7c:e349"),
                dst: MULTICAST_V6
            }
        );
        let repr = Repr {
            version: VrrpVersion::V3,
            vrid: 51,
            priority: 150,
            max_adver_int: AdverInt::DEFAULT,
            addresses: Addresses::V6(vec![v6("2001:db8::100")]),
            auth: Auth::None,
        };
        assert_golden(
            &vrrp,
            &ip,
            &repr,
            ChecksumForm::Ipv6PseudoHeader,
            V3Ipv4Checksum::PseudoHeader,
        );
    }

    #[test]
    fn keepalived_v3_two_addresses_and_priority_zero() {
        for (captured, priority) in [(KA_V3_V4_TWO, 150), (KA_V3_V4_TWO_PRIO0, 0)] {
            let (_, ip, vrrp) = split_ip(&hex(captured));
            let repr = Repr {
                version: VrrpVersion::V3,
                vrid: 51,
                priority,
                max_adver_int: AdverInt::DEFAULT,
                addresses: Addresses::V4(vec![v4("192.0.2.100"), v4("192.0.2.101")]),
                auth: Auth::None,
            };
            assert_golden(
                &vrrp,
                &ip,
                &repr,
                ChecksumForm::Ipv4PseudoHeader,
                V3Ipv4Checksum::PseudoHeader,
            );
        }
    }

    #[test]
    fn v2_auth_none_ignores_auth_data() {
        let ip = hand_v2_ip();
        let mut repr = hand_v2_repr();
        repr.auth = Auth::None;
        let mut bytes = repr.to_bytes(&ip).unwrap();
        assert_eq!(&bytes[16..], &[0u8; 8]);
        bytes[16..].copy_from_slice(b"garbage!");
        let mut packet = Packet::new_checked(&mut bytes[..], Family::Ipv4).unwrap();
        packet.fill_checksum(&ip, V3Ipv4Checksum::default());
        assert_eq!(parse(&bytes, &ip).unwrap().0, repr);
    }

    #[test]
    fn v3_reserved_bits_are_ignored() {
        let ip = hand_v3_v4_ip();
        let mut bytes = hex(HAND_V3_V4);
        bytes[4] |= 0xf0;
        let mut packet = Packet::new_checked(&mut bytes[..], Family::Ipv4).unwrap();
        assert_eq!(packet.reserved(), 0xf);
        packet.fill_checksum(&ip, V3Ipv4Checksum::default());
        assert_eq!(
            parse(&bytes, &ip),
            Ok((hand_v3_v4_repr(), ChecksumForm::Ipv4PseudoHeader))
        );
        // and emit writes them as zero again
        let mut out = vec![0xffu8; 12];
        hand_v3_v4_repr()
            .emit(&mut Packet::new_unchecked(&mut out[..], Family::Ipv4), &ip)
            .unwrap();
        assert_eq!(out, hex(HAND_V3_V4));
    }

    /// Rewrites a valid message with `edit`, refreshes the checksum and parses it.
    fn parse_edited(hexstr: &str, ip: &IpPair, edit: impl FnOnce(&mut Vec<u8>)) -> Parsed {
        let mut bytes = hex(hexstr);
        edit(&mut bytes);
        if let Ok(mut p) = Packet::new_checked(&mut bytes[..], ip.family()) {
            p.fill_checksum(ip, V3Ipv4Checksum::default());
        }
        parse(&bytes, ip)
    }

    #[test]
    fn every_discard_reason() {
        let ip4 = hand_v3_v4_ip();
        let ip6 = hand_v3_v6_ip();
        let cases: Vec<(ParseError, Parsed)> = vec![
            (
                ParseError::TooShort { len: 7 },
                parse(&hex(HAND_V3_V4)[..7], &ip4),
            ),
            (ParseError::TooShort { len: 0 }, parse(&[], &ip6)),
            (
                ParseError::UnsupportedVersion(4),
                parse_edited(HAND_V3_V4, &ip4, |b| b[0] = 0x41),
            ),
            (
                ParseError::UnsupportedVersion(0),
                parse_edited(HAND_V3_V4, &ip4, |b| b[0] = 0x01),
            ),
            (
                ParseError::V2OverIpv6,
                parse_edited(HAND_V3_V6, &ip6, |b| b[0] = 0x21),
            ),
            (
                ParseError::BadLength {
                    count: 2,
                    expected: 16,
                    actual: 12,
                },
                parse_edited(HAND_V3_V4, &ip4, |b| b[3] = 2),
            ),
            (
                ParseError::BadLength {
                    count: 1,
                    expected: 12,
                    actual: 13,
                },
                parse_edited(HAND_V3_V4, &ip4, |b| b.push(0)),
            ),
            (
                // v3 message read as v2: the 8 bytes of auth data are missing
                ParseError::BadLength {
                    count: 1,
                    expected: 20,
                    actual: 12,
                },
                parse_edited(HAND_V3_V4, &ip4, |b| b[0] = 0x21),
            ),
            (
                // an IPv4 v3 message under an IPv6 header: 1 address is 16 bytes there
                ParseError::BadLength {
                    count: 1,
                    expected: 24,
                    actual: 12,
                },
                parse(&hex(HAND_V3_V4), &ip6),
            ),
            (
                ParseError::BadChecksum {
                    found: 0x0237,
                    expected: 0x0236,
                },
                {
                    let mut b = hex(HAND_V3_V4);
                    b[7] = 0x37;
                    parse(&b, &ip4)
                },
            ),
            (
                ParseError::UnknownType(2),
                parse_edited(HAND_V3_V4, &ip4, |b| b[0] = 0x32),
            ),
            (
                ParseError::ZeroVrid,
                parse_edited(HAND_V3_V6, &ip6, |b| b[1] = 0),
            ),
            (
                ParseError::AhAuthUnsupported,
                parse_edited(HAND_V2, &ip4, |b| b[4] = 2),
            ),
            (
                ParseError::UnknownAuthType(3),
                parse_edited(HAND_V2, &ip4, |b| b[4] = 3),
            ),
            (
                ParseError::ZeroAdverInt,
                parse_edited(HAND_V3_V4, &ip4, |b| b[4..6].copy_from_slice(&[0xf0, 0])),
            ),
            (
                ParseError::ZeroAdverInt,
                parse_edited(HAND_V2, &ip4, |b| b[5] = 0),
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (want, got) in cases {
            assert_eq!(got, Err(want), "expected {}", want.name());
            seen.insert(want.name());
        }
        let all: std::collections::BTreeSet<_> = ParseError::NAMES.iter().copied().collect();
        assert_eq!(seen, all, "every discard reason has a case");
    }

    #[test]
    fn discard_reason_names_are_stable_snake_case() {
        let names = ParseError::NAMES;
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for n in names {
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_eq!(ParseError::V2OverIpv6.name(), "v2_over_ipv6");
        assert_eq!(
            ParseError::BadChecksum {
                found: 0,
                expected: 0
            }
            .name(),
            "bad_checksum"
        );
        assert_eq!(ChecksumForm::Ipv4PseudoHeader.name(), "ipv4_pseudo_header");
    }

    #[test]
    fn emit_refuses_what_the_wire_cannot_carry() {
        let ip4 = hand_v3_v4_ip();
        let ip6 = hand_v3_v6_ip();
        let base = hand_v3_v4_repr();
        let with = |f: &dyn Fn(&mut Repr)| {
            let mut r = base.clone();
            f(&mut r);
            r
        };
        let v3 = |c| AdverInt::from_centis(c);
        let cases = [
            (with(&|r| r.vrid = 0), ip4, EmitError::ZeroVrid),
            (
                with(&|r| r.addresses = Addresses::V4(vec![v4("192.0.2.1"); 256])),
                ip4,
                EmitError::TooManyAddresses(256),
            ),
            (base.clone(), ip6, EmitError::FamilyMismatch),
            (
                with(&|r| r.auth = Auth::simple(b"x").unwrap()),
                ip4,
                EmitError::AuthOnV3,
            ),
            (
                with(&|r| r.max_adver_int = v3(0)),
                ip4,
                EmitError::AdverIntOutOfRange {
                    version: VrrpVersion::V3,
                    centis: 0,
                },
            ),
            (
                with(&|r| r.max_adver_int = v3(4096)),
                ip4,
                EmitError::AdverIntOutOfRange {
                    version: VrrpVersion::V3,
                    centis: 4096,
                },
            ),
            (
                with(&|r| {
                    r.version = VrrpVersion::V2;
                    r.max_adver_int = v3(150);
                }),
                ip4,
                EmitError::AdverIntOutOfRange {
                    version: VrrpVersion::V2,
                    centis: 150,
                },
            ),
            (
                with(&|r| {
                    r.version = VrrpVersion::V2;
                    r.max_adver_int = v3(25600);
                }),
                ip4,
                EmitError::AdverIntOutOfRange {
                    version: VrrpVersion::V2,
                    centis: 25600,
                },
            ),
            (
                with(&|r| {
                    r.version = VrrpVersion::V2;
                    r.addresses = Addresses::V6(vec![v6("fe80::1")]);
                }),
                ip6,
                EmitError::V2OverIpv6,
            ),
        ];
        for (repr, ip, want) in cases {
            assert_eq!(repr.to_bytes(&ip), Err(want));
        }
        // 255 addresses is the most the count holds: fine.
        let max = with(&|r| r.addresses = Addresses::V4(vec![v4("192.0.2.1"); 255]));
        let bytes = max.to_bytes(&ip4).unwrap();
        assert_eq!(parse(&bytes, &ip4).unwrap().0, max);

        let mut small = [0u8; 11];
        assert_eq!(
            base.emit(
                &mut Packet::new_unchecked(&mut small[..], Family::Ipv4),
                &ip4
            ),
            Err(EmitError::BufferTooSmall { need: 12, have: 11 })
        );
        let mut buf = [0u8; 12];
        assert_eq!(
            base.emit(&mut Packet::new_unchecked(&mut buf[..], Family::Ipv6), &ip4),
            Err(EmitError::FamilyMismatch)
        );
    }

    #[test]
    fn emit_into_a_larger_buffer_checksums_only_the_message() {
        let ip = hand_v3_v6_ip();
        let mut buf = [0x5au8; 100];
        hand_v3_v6_repr()
            .emit(&mut Packet::new_unchecked(&mut buf[..], Family::Ipv6), &ip)
            .unwrap();
        assert_eq!(buf[..40], hex(HAND_V3_V6)[..]);
        assert!(buf[40..].iter().all(|b| *b == 0x5a));
    }

    #[test]
    fn helpers() {
        assert_eq!(IP_PROTO_VRRP, 112);
        assert_eq!(MULTICAST_V4.to_string(), "224.0.0.18");
        assert_eq!(MULTICAST_V6.to_string(), "ff02::12");
        assert_eq!(Family::Ipv6.multicast_group(), IpAddr::V6(MULTICAST_V6));
        assert_eq!(
            virtual_mac(Family::Ipv4, 51),
            [0x00, 0x00, 0x5e, 0x00, 0x01, 51]
        );
        assert_eq!(
            virtual_mac(Family::Ipv6, 255),
            [0x00, 0x00, 0x5e, 0x00, 0x02, 0xff]
        );
        assert_eq!(Auth::simple(b"123456789"), None);
        assert_eq!(
            format!("{:?}", Auth::simple(b"secret12").unwrap()),
            "Simple(<redacted>)"
        );
        assert_eq!(AdverInt::from_centis(250).whole_secs(), None);
        assert_eq!(AdverInt::from_secs(255).centis(), 25500);
        assert_eq!(AdverInt::from_secs(255).whole_secs(), Some(255));
        assert_eq!(
            AdverInt::from_centis(1).as_duration(),
            Duration::from_millis(10)
        );
        assert_eq!(
            IpPair::new(IpAddr::V4(MULTICAST_V4), IpAddr::V6(MULTICAST_V6)),
            None
        );
        let a = Addresses::V6(vec![v6("fe80::1")]);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![IpAddr::V6(v6("fe80::1"))]
        );
    }

    // ---------------------------------------------------------------------------------------
    // Robustness: nothing off the wire may panic.
    // ---------------------------------------------------------------------------------------

    /// xorshift64*: fixed seed, reproducible, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    fn ip_pairs() -> [IpPair; 4] {
        [
            hand_v3_v4_ip(),
            hand_v3_v6_ip(),
            IpPair::V4 {
                src: v4("192.0.2.1"),
                dst: MULTICAST_V4,
            },
            IpPair::V6 {
                src: v6("fe80::ec02:84ff:fe7c:e349"),
                dst: MULTICAST_V6,
            },
        ]
    }

    /// Parses `bytes` under every IP pair, also through a raw unchecked view; whenever it
    /// parses, the result must emit and parse back to itself.
    fn exercise(bytes: &[u8]) -> usize {
        let mut accepted = 0;
        for ip in ip_pairs() {
            let got = parse(bytes, &ip);
            let unchecked = Repr::parse(&Packet::new_unchecked(bytes, ip.family()), &ip);
            assert_eq!(got, unchecked);
            let via_wrong_view = Repr::parse(
                &Packet::new_unchecked(
                    bytes,
                    match ip.family() {
                        Family::Ipv4 => Family::Ipv6,
                        Family::Ipv6 => Family::Ipv4,
                    },
                ),
                &ip,
            );
            assert_eq!(got, via_wrong_view, "parse follows the IP pair's family");
            match got {
                Ok((repr, _)) => {
                    accepted += 1;
                    let out = repr.to_bytes(&ip).expect("a parsed advert re-emits");
                    assert_eq!(parse(&out, &ip).map(|r| r.0), Ok(repr));
                }
                Err(e) => assert!(ParseError::NAMES.contains(&e.name())),
            }
        }
        accepted
    }

    fn valid_messages() -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = [HAND_V2, HAND_V3_V4, HAND_V3_V6]
            .iter()
            .map(|h| hex(h))
            .collect();
        for captured in [KA_V2, KA_V3_V4, KA_V3_V6, KA_V3_V4_TWO, KA_V3_V4_TWO_PRIO0] {
            all.push(split_ip(&hex(captured)).2);
        }
        all
    }

    #[test]
    fn every_prefix_of_valid_packets() {
        for msg in valid_messages() {
            for end in 0..=msg.len() {
                exercise(&msg[..end]);
            }
            // whole message parses under at least its own pair
            assert!(exercise(&msg) >= 1);
        }
    }

    #[test]
    fn random_buffers_never_panic() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for _ in 0..4000 {
            let len = rng.below(80);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Aim a share of them at the layouts that get past the length check.
            if len > 0 && rng.below(2) == 0 {
                buf[0] = [0x21, 0x31, 0x20, 0x3f][rng.below(4)];
            }
            exercise(&buf);
        }
    }

    #[test]
    fn mutated_valid_packets_never_panic() {
        let mut rng = Rng(0xdead_beef_0bad_f00d);
        let valid = valid_messages();
        let mut accepted = 0;
        for i in 0..6000 {
            let mut buf = valid[i % valid.len()].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(4) {
                    0 if !buf.is_empty() => {
                        let at = rng.below(buf.len());
                        buf[at] ^= 1 << rng.below(8);
                    }
                    1 if !buf.is_empty() => {
                        let at = rng.below(buf.len().min(8));
                        buf[at] = rng.byte();
                    }
                    2 => buf.truncate(rng.below(buf.len() + 1)),
                    _ => buf.extend((0..rng.below(20)).map(|_| rng.byte())),
                }
            }
            // Half of them get a fresh checksum so the checks behind it run too.
            if i % 2 == 0 {
                for ip in ip_pairs() {
                    let mut fixed = buf.clone();
                    if let Ok(mut p) = Packet::new_checked(&mut fixed[..], ip.family()) {
                        p.fill_checksum(&ip, V3Ipv4Checksum::default());
                    }
                    accepted += exercise(&fixed);
                }
            } else {
                accepted += exercise(&buf);
            }
        }
        // Sanity: the mutations are not so violent that nothing ever parses.
        assert!(accepted > 100, "only {accepted} mutated packets parsed");
    }
}
