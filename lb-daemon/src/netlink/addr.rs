//! Virtual addresses over rtnetlink: what keepalived does with
//! `virtual_ipaddress { 192.0.2.100/24 dev eth0 label eth0:vip }`.
//!
//! The VRRP master holds its VIPs as ordinary interface addresses, so the kernel
//! answers ARP/ND for them and accepts their traffic; a backup holds none. This
//! module adds and removes them (`RTM_NEWADDR` / `RTM_DELADDR`) and lists what an
//! interface has (`RTM_GETADDR`), over the shared [`RouteSocket`]. The messages are
//! `netlink-packet-route`'s `AddressMessage`s.
//!
//! Both operations are idempotent, because the daemon must be able to repeat them
//! after a crash or a lost reply: adding an address that is already there
//! (`EEXIST`) and deleting one that is not (`EADDRNOTAVAIL`) count as success.
//! At start-up, before it advertises, the daemon calls
//! [`AddressSocket::remove_leftovers`] to remove VIPs a previous instance left
//! behind (keepalived does the same in `vrrp_restore_interfaces_startup()`).
//!
//! # IPv4 primaries and secondaries
//!
//! An IPv4 VIP inside a subnet the interface already has (e.g. `192.0.2.100/24` on
//! an interface with `192.0.2.1/24`) becomes a *secondary* address. Deleting a
//! *primary* deletes all its secondaries with it unless
//! `net.ipv4.conf.IF.promote_secondaries=1`; VIPs with a prefix of their own (the
//! default /32) are not affected. (Checked on 6.18: with the sysctl at its default 0,
//! deleting the first of two /24 addresses removed the second as well.)
//!
//! Encoders and parsers are pure and unit-tested with byte vectors; kernel input is
//! treated as hostile (typed errors, no panics).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use tracing::{debug, info, warn};

use netlink_packet_core::{Emitable, NetlinkBuffer, Parseable};
use netlink_packet_route::{
    address::{
        AddressAttribute, AddressHeader, AddressHeaderFlags, AddressMessage, AddressScope,
        CacheInfo,
    },
    AddressFamily, RouteNetlinkMessage,
};

use super::{
    attr_string, attributes, encode, parse_control, Control, NetlinkError, NlHeader, RouteSocket,
    AF_INET, AF_INET6, AF_UNSPEC, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};

// ---------------------------------------------------------------------------------
// Constants, include/uapi/linux/rtnetlink.h and if_addr.h (checked against libc).
// ---------------------------------------------------------------------------------

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
#[cfg(test)]
const RTM_GETADDR: u16 = 22;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
/// `u32` flags; supersedes the 8-bit `ifa_flags` when present.
#[cfg(test)]
const IFA_FLAGS: u16 = 8;

/// `IFA_F_*` address flags (`InterfaceAddress::flags`).
pub const IFA_F_SECONDARY: u32 = 0x01;
/// Skip duplicate address detection (IPv6): the address is usable at once.
pub const IFA_F_NODAD: u32 = 0x02;
/// Duplicate address detection failed (IPv6).
pub const IFA_F_DADFAILED: u32 = 0x08;
/// Duplicate address detection still running (IPv6): not usable yet.
pub const IFA_F_TENTATIVE: u32 = 0x40;
/// Configured, not autoconfigured.
pub const IFA_F_PERMANENT: u32 = 0x80;

/// `RT_SCOPE_UNIVERSE`: global scope, what keepalived uses by default.
pub const RT_SCOPE_UNIVERSE: u8 = 0;
/// `RT_SCOPE_LINK`: link-local addresses.
pub const RT_SCOPE_LINK: u8 = 253;

/// `IFNAMSIZ - 1`: the longest label the kernel stores.
const MAX_LABEL_LEN: usize = 15;

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

/// One virtual address: keepalived's `ADDR[/PREFIX] dev IF [label LABEL]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VirtualAddress {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length; [`VirtualAddress::new`] uses /32 or /128, like keepalived when
    /// no prefix is given.
    pub prefix_len: u8,
    /// Interface it is added to.
    pub ifindex: u32,
    /// IPv4 only: the interface label (`ip addr ... label eth0:vip`, at most 15
    /// bytes). Shown by `ip addr` and by legacy tools as an alias interface.
    /// The kernel (6.18) accepts any label; iproute2 insists on the interface name
    /// or `NAME:suffix`, a rule for the configuration layer, which knows the name.
    pub label: Option<String>,
}

impl VirtualAddress {
    /// A host address (/32 or /128) on `ifindex`, without label.
    pub fn new(addr: IpAddr, ifindex: u32) -> Self {
        VirtualAddress {
            addr,
            prefix_len: host_prefix(addr),
            ifindex,
            label: None,
        }
    }

    /// The same address with another prefix length.
    pub fn with_prefix(mut self, prefix_len: u8) -> Self {
        self.prefix_len = prefix_len;
        self
    }

    /// The same address with a label (IPv4 only).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Check what the kernel would reject (or silently ignore) before asking it.
    pub fn validate(&self) -> Result<(), VipError> {
        self.validate_address()?;
        if let Some(label) = &self.label {
            let reason = if self.addr.is_ipv6() {
                Some("labels exist for IPv4 addresses only")
            } else if label.is_empty() {
                Some("empty label")
            } else if label.len() > MAX_LABEL_LEN {
                Some("label longer than 15 bytes")
            } else if label.contains('\0') {
                Some("label contains a NUL byte")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(self.invalid(reason));
            }
        }
        Ok(())
    }

    /// The checks that also apply to deletion (where the label plays no part).
    fn validate_address(&self) -> Result<(), VipError> {
        let reason = if self.ifindex == 0 {
            Some("ifindex 0")
        } else if self.prefix_len > host_prefix(self.addr) {
            Some("prefix length too long for the address family")
        } else if self.addr.is_unspecified() {
            Some("unspecified address")
        } else if self.addr.is_multicast() || self.addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
            Some("multicast or broadcast address")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(self.invalid(reason)),
            None => Ok(()),
        }
    }

    fn invalid(&self, reason: &'static str) -> VipError {
        VipError::Invalid {
            vip: self.clone(),
            reason,
        }
    }
}

impl fmt::Display for VirtualAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} on ifindex {}",
            self.addr, self.prefix_len, self.ifindex
        )?;
        if let Some(label) = &self.label {
            write!(f, " label {label}")?;
        }
        Ok(())
    }
}

/// 32 for IPv4, 128 for IPv6.
pub fn host_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// An address the kernel reports for an interface (`RTM_NEWADDR` dump reply or
/// notification, `RTM_DELADDR` notification).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterfaceAddress {
    /// `ifa_index`.
    pub ifindex: u32,
    /// The local address: `IFA_LOCAL` if present (it differs from `IFA_ADDRESS` on
    /// point-to-point links, where `IFA_ADDRESS` is the peer), else `IFA_ADDRESS`.
    pub addr: IpAddr,
    /// `ifa_prefixlen`.
    pub prefix_len: u8,
    /// `IFA_LABEL` (IPv4).
    pub label: Option<String>,
    /// `IFA_FLAGS` if present, else the 8-bit `ifa_flags`: `IFA_F_*`.
    pub flags: u32,
    /// `ifa_scope`: [`RT_SCOPE_UNIVERSE`], [`RT_SCOPE_LINK`], ...
    pub scope: u8,
    /// `true` for `RTM_DELADDR`.
    pub deleted: bool,
}

impl InterfaceAddress {
    /// Whether this is the address of `vip` (same interface and address; the prefix
    /// may differ, e.g. after a configuration change).
    pub fn is_address_of(&self, vip: &VirtualAddress) -> bool {
        self.ifindex == vip.ifindex && self.addr == vip.addr
    }

    /// IPv6 duplicate address detection has not finished, or failed: the address
    /// cannot be used as a source yet.
    pub fn is_tentative(&self) -> bool {
        self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VipError {
    /// Rejected before anything was sent to the kernel.
    #[error("invalid virtual address {vip}: {reason}")]
    Invalid {
        /// The offending address.
        vip: VirtualAddress,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The kernel refused an add or delete, or the exchange failed.
    #[error("{op} {vip} failed: {source}")]
    Request {
        /// "adding" or "deleting".
        op: &'static str,
        /// The address concerned.
        vip: VirtualAddress,
        /// What went wrong.
        #[source]
        source: NetlinkError,
    },
    /// An address attribute whose length does not match the family.
    #[error("address attribute of {len} bytes does not match address family {family}")]
    BadAddressLength {
        /// `ifa_family`.
        family: u8,
        /// Attribute payload length.
        len: usize,
    },
    /// An address message without `IFA_LOCAL` and `IFA_ADDRESS`.
    #[error("address message for ifindex {ifindex} has neither IFA_LOCAL nor IFA_ADDRESS")]
    MissingAddress {
        /// `ifa_index` of the offending message.
        ifindex: u32,
    },
    /// `ifa_prefixlen` larger than the address.
    #[error("prefix length {prefix_len} invalid for address family {family}")]
    BadPrefixLength {
        /// `ifa_family`.
        family: u8,
        /// The claimed prefix length.
        prefix_len: u8,
    },
    /// Framing, kernel error on a dump, or I/O.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl VipError {
    /// The errno behind a kernel-refused request or a failed system call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            VipError::Request { source, .. } | VipError::Netlink(source) => source.errno(),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// `struct ifaddrmsg` and the attributes `IFA_LOCAL` and `IFA_ADDRESS`, both `vip`'s
/// address (equal values mean "no peer").
fn address_message(
    vip: &VirtualAddress,
    flags: AddressHeaderFlags,
    scope: AddressScope,
) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header = AddressHeader {
        family: match vip.addr {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        },
        prefix_len: vip.prefix_len,
        flags,
        scope,
        index: vip.ifindex,
    };
    msg.attributes = vec![
        AddressAttribute::Local(vip.addr),
        AddressAttribute::Address(vip.addr),
    ];
    msg
}

/// `RTM_NEWADDR` with `NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL` (what
/// `ip addr add` sends): scope global, `IFA_LOCAL` and `IFA_ADDRESS` both the VIP
/// (equal values mean "no peer"), `IFA_LABEL` when given. IPv6 addresses carry
/// `IFA_F_NODAD`, so they are usable at once instead of after ~1 s of duplicate
/// address detection: another VRRP router holding the same VIP is exactly what the
/// protocol rules out, and DAD would only delay the takeover. They are also added
/// deprecated (`IFA_CACHEINFO`: preferred lifetime 0, valid forever, `ip addr add ...
/// preferred_lft 0`): still the node's address for everything sent to it, but not the
/// source the kernel picks for a connection of its own while the interface has a preferred
/// address of the family (RFC 6724 rule 3; an address already there, which `EEXIST`
/// leaves as it is, keeps its lifetimes). Otherwise RFC 6724's rules can
/// prefer the VIP (on a tie the newest address wins): the health checks would come from the
/// VIP, and a real server that holds the VIP on its loopback (DR, TUN) answers them to
/// itself; any other connection the node opens would break at the next failover. IPv4 picks
/// the route's preferred source, the interface's primary address, so needs no such flag.
///
/// With `NLM_F_EXCL` an existing address gives `EEXIST` (which
/// [`AddressSocket::add`] treats as success) rather than a silent update.
pub fn encode_add_request(seq: u32, vip: &VirtualAddress) -> Result<Vec<u8>, VipError> {
    vip.validate()?;
    let flags = if vip.addr.is_ipv6() {
        AddressHeaderFlags::Nodad
    } else {
        AddressHeaderFlags::empty()
    };
    let mut msg = address_message(vip, flags, AddressScope::Universe);
    if vip.addr.is_ipv6() {
        let mut lifetimes = CacheInfo::default(); // preferred 0
        lifetimes.ifa_valid = u32::MAX; // INFINITY_LIFE_TIME
        msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
    }
    if let Some(label) = &vip.label {
        msg.attributes.push(AddressAttribute::Label(label.clone()));
    }
    Ok(encode(
        RouteNetlinkMessage::NewAddress(msg),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    ))
}

/// `RTM_DELADDR` with `NLM_F_REQUEST | NLM_F_ACK` for exactly this address and
/// prefix length (the kernel matches both; the label is not sent, so it does not
/// have to match). A missing address gives `EADDRNOTAVAIL`.
pub fn encode_delete_request(seq: u32, vip: &VirtualAddress) -> Result<Vec<u8>, VipError> {
    vip.validate_address()?;
    let msg = address_message(vip, AddressHeaderFlags::empty(), AddressScope::Universe);
    Ok(encode(
        RouteNetlinkMessage::DelAddress(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    ))
}

/// `RTM_GETADDR` dump request for `family` (`AF_UNSPEC` for IPv4 and IPv6). Every
/// interface is dumped (filtering by `ifa_index` needs `NETLINK_GET_STRICT_CHK`);
/// callers filter the result.
pub fn encode_dump_request(seq: u32, family: u8) -> Vec<u8> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::from(family);
    encode(
        RouteNetlinkMessage::GetAddress(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

/// Decode one `RTM_NEWADDR` / `RTM_DELADDR` message (header and payload as framed by
/// [`crate::netlink::messages`]) with `netlink-packet-route`'s `AddressHeader` and
/// `AddressAttribute`. `Ok(None)` for other message types and for families other than
/// IPv4/IPv6.
///
/// Attributes are decoded one by one rather than as a whole `AddressMessage`, so that
/// one the daemon does not need (`IFA_CACHEINFO`, a short `IFA_FLAGS`, a label that is
/// not UTF-8) does not cost it the address.
pub fn parse_address_message(
    header: &NlHeader,
    payload: &[u8],
) -> Result<Option<InterfaceAddress>, VipError> {
    if header.message_type != RTM_NEWADDR && header.message_type != RTM_DELADDR {
        return Ok(None);
    }
    let ifa = AddressHeader::parse(payload).map_err(NetlinkError::malformed("ifaddrmsg"))?;
    let attrs = payload.get(ifa.buffer_len()..).unwrap_or_default();
    let family = u8::from(ifa.family);
    let ifindex = ifa.index;
    let prefix_len = ifa.prefix_len;
    let max_prefix = match family {
        AF_INET => 32,
        AF_INET6 => 128,
        _ => return Ok(None),
    };
    if prefix_len > max_prefix {
        return Err(VipError::BadPrefixLength { family, prefix_len });
    }

    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut flags = u32::from(ifa.flags.bits());
    for attr in attributes(attrs) {
        let attr = attr?;
        let bad_length = || VipError::BadAddressLength {
            family,
            len: attr.value().len(),
        };
        // The crate takes 4 or 16 bytes for either family; the family decides here.
        let of_family = |ip: IpAddr| {
            if ip.is_ipv4() == (family == AF_INET) {
                Ok(ip)
            } else {
                Err(bad_length())
            }
        };
        match (attr.kind(), AddressAttribute::parse(&attr)) {
            (_, Ok(AddressAttribute::Local(ip))) => local = Some(of_family(ip)?),
            (_, Ok(AddressAttribute::Address(ip))) => address = Some(of_family(ip)?),
            (IFA_LOCAL | IFA_ADDRESS, Err(_)) => return Err(bad_length()),
            (IFA_LABEL, _) => label = attr_string(attr.value()),
            (_, Ok(AddressAttribute::Flags(f))) => flags = f.bits(),
            _ => {} // IFA_CACHEINFO, IFA_BROADCAST, IFA_PROTO, future attributes...
        }
    }
    let addr = local
        .or(address)
        .ok_or(VipError::MissingAddress { ifindex })?;
    Ok(Some(InterfaceAddress {
        ifindex,
        addr,
        prefix_len,
        label,
        flags,
        scope: u8::from(ifa.scope),
        deleted: header.message_type == RTM_DELADDR,
    }))
}

/// Decode a whole receive buffer of address messages, ignoring sequence numbers
/// (the socket matches them itself). A kernel error becomes
/// [`VipError::Netlink`] with [`NetlinkError::Kernel`].
pub fn parse_address_messages(buf: &[u8]) -> Result<Vec<InterfaceAddress>, VipError> {
    let mut out = Vec::new();
    for item in super::messages(buf) {
        let (header, payload) = item?;
        match parse_control(&header, payload)? {
            Some(Control::Error { errno, message }) => {
                return Err(NetlinkError::Kernel { errno, message }.into());
            }
            Some(_) => {}
            None => out.extend(parse_address_message(&header, payload)?),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------------

/// Adds, deletes and lists interface addresses, in the network namespace of the
/// thread that opened it.
#[derive(Debug)]
pub struct AddressSocket {
    sock: RouteSocket,
}

impl AddressSocket {
    /// Open a `NETLINK_ROUTE` request socket.
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O enabled.
    pub fn open() -> Result<Self, VipError> {
        Ok(AddressSocket {
            sock: RouteSocket::open()?,
        })
    }

    /// Add `vip`. `Ok(true)`: added; `Ok(false)`: it was already there (`EEXIST`).
    ///
    /// For IPv6 the kernel allows an address once per interface whatever the
    /// prefix, so `Ok(false)` can also mean "there with another prefix length";
    /// [`remove_leftovers`](Self::remove_leftovers) at start-up rules that out.
    pub async fn add(&mut self, vip: &VirtualAddress) -> Result<bool, VipError> {
        let request_error = |source| VipError::Request {
            op: "adding",
            vip: vip.clone(),
            source,
        };
        // Encode once up front so validation errors surface before any I/O.
        let msg = encode_add_request(0, vip)?;
        match self.sock.request(|seq| with_seq(msg, seq)).await {
            Ok(()) => {
                debug!(%vip, "virtual address added");
                Ok(true)
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                debug!(%vip, "virtual address already present");
                Ok(false)
            }
            Err(e) => Err(request_error(e)),
        }
    }

    /// Delete `vip` (this address with this prefix length). `Ok(true)`: deleted;
    /// `Ok(false)`: it was not there (`EADDRNOTAVAIL`, or `ENOENT`).
    pub async fn delete(&mut self, vip: &VirtualAddress) -> Result<bool, VipError> {
        let msg = encode_delete_request(0, vip)?;
        match self.sock.request(|seq| with_seq(msg, seq)).await {
            Ok(()) => {
                info!(%vip, "virtual address deleted");
                Ok(true)
            }
            Err(e) if matches!(e.errno(), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {
                debug!(%vip, "virtual address already absent");
                Ok(false)
            }
            Err(source) => Err(VipError::Request {
                op: "deleting",
                vip: vip.clone(),
                source,
            }),
        }
    }

    /// The IPv4 and IPv6 addresses of interface `ifindex`, or of all interfaces.
    pub async fn list(&mut self, ifindex: Option<u32>) -> Result<Vec<InterfaceAddress>, VipError> {
        let all = self
            .sock
            .dump(
                |seq| encode_dump_request(seq, AF_UNSPEC),
                parse_address_message,
            )
            .await?;
        Ok(all
            .into_iter()
            .filter(|a| ifindex.is_none_or(|i| a.ifindex == i))
            .collect())
    }

    /// Remove every address that is one of `wanted` (same interface and address,
    /// whatever its prefix length or label), as left behind by a previous run that
    /// died while master. Returns what was removed. Addresses that vanish meanwhile
    /// are not an error; the first real failure is returned after all deletions
    /// were attempted.
    pub async fn remove_leftovers(
        &mut self,
        wanted: &[VirtualAddress],
    ) -> Result<Vec<InterfaceAddress>, VipError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let present = self.list(None).await?;
        let mut removed = Vec::new();
        let mut first_error = None;
        for entry in present
            .into_iter()
            .filter(|a| wanted.iter().any(|vip| a.is_address_of(vip)))
        {
            let vip = VirtualAddress {
                addr: entry.addr,
                prefix_len: entry.prefix_len,
                ifindex: entry.ifindex,
                label: None,
            };
            match self.delete(&vip).await {
                // The caller logs what was removed.
                Ok(true) => removed.push(entry),
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "could not remove a leftover virtual address");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }
}

/// Set the sequence number of an encoded request (`nlmsg_seq`); bytes that are not a
/// whole message are left as they are.
fn with_seq(mut msg: Vec<u8>, seq: u32) -> Vec<u8> {
    if let Ok(mut header) = NetlinkBuffer::new_checked(&mut msg[..]) {
        header.set_sequence_number(seq);
    }
    msg
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_wire::{attr, msg, XorShift};
    use crate::netlink::{
        split_message, NLMSGERR_ATTR_MSG, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    };
    use std::net::Ipv6Addr;

    const IFINDEX: u32 = 3;

    pub(super) fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    pub(super) fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    fn header(buf: &[u8]) -> NlHeader {
        split_message(buf).unwrap().0
    }

    #[test]
    fn constants_match_libc() {
        assert_eq!(RTM_NEWADDR, libc::RTM_NEWADDR);
        assert_eq!(RTM_DELADDR, libc::RTM_DELADDR);
        assert_eq!(RTM_GETADDR, libc::RTM_GETADDR);
        assert_eq!(IFA_ADDRESS, libc::IFA_ADDRESS);
        assert_eq!(IFA_LOCAL, libc::IFA_LOCAL);
        assert_eq!(IFA_LABEL, libc::IFA_LABEL);
        assert_eq!(IFA_FLAGS, libc::IFA_FLAGS);
        assert_eq!(IFA_F_SECONDARY, libc::IFA_F_SECONDARY);
        assert_eq!(IFA_F_NODAD, libc::IFA_F_NODAD);
        assert_eq!(IFA_F_DADFAILED, libc::IFA_F_DADFAILED);
        assert_eq!(IFA_F_TENTATIVE, libc::IFA_F_TENTATIVE);
        assert_eq!(IFA_F_PERMANENT, libc::IFA_F_PERMANENT);
        assert_eq!(RT_SCOPE_UNIVERSE, libc::RT_SCOPE_UNIVERSE);
        assert_eq!(RT_SCOPE_LINK, libc::RT_SCOPE_LINK);
        assert_eq!(MAX_LABEL_LEN, libc::IFNAMSIZ - 1);
    }

    #[test]
    fn defaults_to_host_prefix() {
        let a = VirtualAddress::new(v4("192.0.2.100"), IFINDEX);
        assert_eq!(a.prefix_len, 32);
        assert_eq!(a.label, None);
        assert_eq!(VirtualAddress::new(v6("2001:db8::100"), 1).prefix_len, 128);
        let b = a.with_prefix(24).with_label("eth0:vip");
        assert_eq!(b.to_string(), "192.0.2.100/24 on ifindex 3 label eth0:vip");
    }

    #[test]
    fn add_request_bytes_v4_with_label() {
        let vip = VirtualAddress::new(v4("192.0.2.100"), IFINDEX)
            .with_prefix(24)
            .with_label("eth0:vip");
        let got = encode_add_request(0x0a0b_0c0d, &vip).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&56u32.to_ne_bytes()); // 16 + 8 + 8 + 8 + 16
        want.extend_from_slice(&20u16.to_ne_bytes()); // RTM_NEWADDR
        want.extend_from_slice(&0x0605u16.to_ne_bytes()); // REQUEST|ACK|EXCL|CREATE
        want.extend_from_slice(&0x0a0b_0c0du32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        // ifaddrmsg: AF_INET, /24, no flags, scope universe, ifindex 3
        want.extend_from_slice(&[2, 24, 0, 0]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        // IFA_LOCAL, IFA_ADDRESS
        for t in [2u16, 1] {
            want.extend_from_slice(&8u16.to_ne_bytes());
            want.extend_from_slice(&t.to_ne_bytes());
            want.extend_from_slice(&[192, 0, 2, 100]);
        }
        // IFA_LABEL "eth0:vip\0": nla_len 13, padded to 16
        want.extend_from_slice(&13u16.to_ne_bytes());
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(b"eth0:vip\0\0\0\0");
        assert_eq!(got, want);
    }

    #[test]
    fn add_request_bytes_v6_nodad_deprecated() {
        let addr: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let vip = VirtualAddress::new(IpAddr::V6(addr), 7).with_prefix(64);
        let got = encode_add_request(1, &vip).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&84u32.to_ne_bytes()); // 16 + 8 + 20 + 20 + 20
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&0x0605u16.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        // AF_INET6, /64, IFA_F_NODAD, scope universe, ifindex 7
        want.extend_from_slice(&[10, 64, 0x02, 0]);
        want.extend_from_slice(&7u32.to_ne_bytes());
        for t in [2u16, 1] {
            want.extend_from_slice(&20u16.to_ne_bytes());
            want.extend_from_slice(&t.to_ne_bytes());
            want.extend_from_slice(&addr.octets());
        }
        // IFA_CACHEINFO (6): preferred 0, valid forever, no timestamps.
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&6u16.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&u32::MAX.to_ne_bytes());
        want.extend_from_slice(&[0; 8]);
        assert_eq!(got, want);
    }

    #[test]
    fn delete_request_bytes() {
        // The label is not sent on delete.
        let vip = VirtualAddress::new(v4("198.51.100.7"), 9).with_label("x");
        let got = encode_delete_request(5, &vip).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&40u32.to_ne_bytes());
        want.extend_from_slice(&21u16.to_ne_bytes()); // RTM_DELADDR
        want.extend_from_slice(&0x0005u16.to_ne_bytes()); // REQUEST|ACK
        want.extend_from_slice(&5u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 32, 0, 0]);
        want.extend_from_slice(&9u32.to_ne_bytes());
        for t in [2u16, 1] {
            want.extend_from_slice(&8u16.to_ne_bytes());
            want.extend_from_slice(&t.to_ne_bytes());
            want.extend_from_slice(&[198, 51, 100, 7]);
        }
        assert_eq!(got, want);
        // A label invalid for adding does not block deleting.
        let v6_with_label = VirtualAddress::new(v6("2001:db8::7"), 9).with_label("x");
        assert!(encode_add_request(1, &v6_with_label).is_err());
        assert!(encode_delete_request(1, &v6_with_label).is_ok());
    }

    #[test]
    fn dump_request_bytes() {
        let got = encode_dump_request(9, AF_UNSPEC);
        let mut want = Vec::new();
        want.extend_from_slice(&24u32.to_ne_bytes());
        want.extend_from_slice(&22u16.to_ne_bytes()); // RTM_GETADDR
        want.extend_from_slice(&0x0301u16.to_ne_bytes()); // REQUEST|DUMP
        want.extend_from_slice(&9u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[0; 8]);
        assert_eq!(got, want);
    }

    #[test]
    fn with_seq_patches_sequence() {
        let vip = VirtualAddress::new(v4("192.0.2.1"), 1);
        assert_eq!(
            with_seq(encode_add_request(0, &vip).unwrap(), 77),
            encode_add_request(77, &vip).unwrap()
        );
        assert_eq!(with_seq(vec![1, 2], 77), vec![1, 2]);
    }

    #[test]
    fn validation() {
        let ok = VirtualAddress::new(v4("192.0.2.100"), 1);
        ok.validate().unwrap();
        VirtualAddress::new(v6("fe80::1"), 1).validate().unwrap();
        ok.clone().with_label("a23456789012345").validate().unwrap();
        let cases = [
            (ok.clone().with_prefix(33), "prefix length"),
            (
                VirtualAddress::new(v6("2001:db8::1"), 1).with_prefix(129),
                "prefix length",
            ),
            (VirtualAddress::new(v4("192.0.2.1"), 0), "ifindex 0"),
            (VirtualAddress::new(v4("0.0.0.0"), 1), "unspecified"),
            (VirtualAddress::new(v6("::"), 1), "unspecified"),
            (VirtualAddress::new(v4("224.0.0.18"), 1), "multicast"),
            (VirtualAddress::new(v4("255.255.255.255"), 1), "broadcast"),
            (VirtualAddress::new(v6("ff02::1"), 1), "multicast"),
            (
                VirtualAddress::new(v6("2001:db8::1"), 1).with_label("eth0:v6"),
                "IPv4 addresses only",
            ),
            (ok.clone().with_label(""), "empty label"),
            (ok.clone().with_label("a234567890123456"), "15 bytes"),
            (ok.clone().with_label("a\0b"), "NUL"),
        ];
        for (vip, want) in cases {
            let err = encode_add_request(1, &vip).unwrap_err();
            assert!(
                matches!(err, VipError::Invalid { .. }) && err.to_string().contains(want),
                "{vip:?}: {err}"
            );
        }
    }

    /// A kernel-like IPv4 RTM_NEWADDR as inet_fill_ifaddr() emits it: IFA_ADDRESS,
    /// IFA_LOCAL, IFA_LABEL, IFA_FLAGS, IFA_CACHEINFO (16 bytes), IFA_PROTO-like extra.
    fn newaddr_v4(local: [u8; 4], address: [u8; 4], label: &[u8]) -> Vec<u8> {
        let mut p = vec![AF_INET, 24, 0x80, 0];
        p.extend_from_slice(&IFINDEX.to_ne_bytes());
        p.extend(attr(IFA_ADDRESS, &address));
        p.extend(attr(IFA_LOCAL, &local));
        p.extend(attr(IFA_LABEL, label));
        p.extend(attr(IFA_FLAGS, &(IFA_F_PERMANENT | 0x400).to_ne_bytes()));
        p.extend(attr(6, &[0; 16])); // IFA_CACHEINFO
        p.extend(attr(11, &[4])); // IFA_PROTO
        msg(RTM_NEWADDR, 0x2, 1, &p)
    }

    fn newaddr_v6(addr: Ipv6Addr, flags8: u8, ifa_flags: Option<u32>, scope: u8) -> Vec<u8> {
        let mut p = vec![AF_INET6, 64, flags8, scope];
        p.extend_from_slice(&IFINDEX.to_ne_bytes());
        p.extend(attr(IFA_ADDRESS, &addr.octets()));
        p.extend(attr(6, &[0; 16]));
        if let Some(f) = ifa_flags {
            p.extend(attr(IFA_FLAGS, &f.to_ne_bytes()));
        }
        msg(RTM_NEWADDR, 0x2, 1, &p)
    }

    #[test]
    fn parses_kernel_messages() {
        let m = newaddr_v4([192, 0, 2, 100], [192, 0, 2, 100], b"eth0:vip\0");
        let got = parse_address_message(&header(&m), &m[16..]).unwrap();
        assert_eq!(
            got,
            Some(InterfaceAddress {
                ifindex: IFINDEX,
                addr: v4("192.0.2.100"),
                prefix_len: 24,
                label: Some("eth0:vip".into()),
                flags: IFA_F_PERMANENT | 0x400,
                scope: 0,
                deleted: false,
            })
        );
        let vip = VirtualAddress::new(v4("192.0.2.100"), IFINDEX);
        assert!(got.unwrap().is_address_of(&vip));

        // Point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer.
        let m = newaddr_v4([192, 0, 2, 1], [192, 0, 2, 9], b"eth0\0");
        let got = parse_address_message(&header(&m), &m[16..])
            .unwrap()
            .unwrap();
        assert_eq!(got.addr, v4("192.0.2.1"));

        // IPv6: only IFA_ADDRESS; 8-bit flags unless IFA_FLAGS is present.
        let a: Ipv6Addr = "fe80::1".parse().unwrap();
        let m = newaddr_v6(a, IFA_F_TENTATIVE as u8, None, RT_SCOPE_LINK);
        let got = parse_address_message(&header(&m), &m[16..])
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.addr, got.scope, got.label.clone()),
            (IpAddr::V6(a), 253, None)
        );
        assert!(got.is_tentative());
        let m = newaddr_v6(a, 0xff, Some(IFA_F_NODAD | IFA_F_PERMANENT), 0);
        let got = parse_address_message(&header(&m), &m[16..])
            .unwrap()
            .unwrap();
        assert_eq!(got.flags, IFA_F_NODAD | IFA_F_PERMANENT);
        assert!(!got.is_tentative());

        // RTM_DELADDR notification.
        let mut m = newaddr_v6(a, 0, None, 0);
        m[4..6].copy_from_slice(&RTM_DELADDR.to_ne_bytes());
        assert!(
            parse_address_message(&header(&m), &m[16..])
                .unwrap()
                .unwrap()
                .deleted
        );
    }

    #[test]
    fn dump_buffer_and_errors() {
        let mut buf = newaddr_v4([192, 0, 2, 100], [192, 0, 2, 100], b"lv0\0");
        // Other families and message types are skipped.
        let mut other = vec![17u8, 0, 0, 0]; // AF_PACKET
        other.extend_from_slice(&1u32.to_ne_bytes());
        buf.extend(msg(RTM_NEWADDR, 0x2, 1, &other));
        buf.extend(msg(16, 0x2, 1, &[0; 16])); // RTM_NEWLINK
        buf.extend(newaddr_v6("2001:db8::1".parse().unwrap(), 0, None, 0));
        buf.extend(msg(NLMSG_DONE, 0x2, 1, &0i32.to_ne_bytes()));
        let got = parse_address_messages(&buf).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].addr, v6("2001:db8::1"));

        // A kernel error with extended ACK text.
        let mut p = (-libc::EEXIST).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0; 16]);
        p.extend(attr(NLMSGERR_ATTR_MSG, b"ipv4: Address already assigned\0"));
        let m = msg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 1, &p);
        let err = parse_address_messages(&m).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("already assigned"), "{err}");
    }

    #[test]
    fn malformed_messages_give_typed_errors() {
        let parse = |m: &[u8]| parse_address_message(&header(m), &m[16..]);
        // ifaddrmsg cut short.
        assert!(matches!(
            parse(&msg(RTM_NEWADDR, 0, 0, &[2, 24, 0])),
            Err(VipError::Netlink(NetlinkError::Malformed {
                what: "ifaddrmsg",
                ..
            }))
        ));
        // Prefix too long for the family.
        let mut p = vec![AF_INET, 33, 0, 0, 1, 0, 0, 0];
        p.extend(attr(IFA_LOCAL, &[192, 0, 2, 1]));
        assert!(matches!(
            parse(&msg(RTM_NEWADDR, 0, 0, &p)),
            Err(VipError::BadPrefixLength {
                family: 2,
                prefix_len: 33
            })
        ));
        // Address of the wrong size.
        let mut p = vec![AF_INET6, 64, 0, 0, 1, 0, 0, 0];
        p.extend(attr(IFA_ADDRESS, &[192, 0, 2, 1]));
        assert!(matches!(
            parse(&msg(RTM_NEWADDR, 0, 0, &p)),
            Err(VipError::BadAddressLength { family: 10, len: 4 })
        ));
        // No address at all.
        let mut p = vec![AF_INET, 24, 0, 0, 4, 0, 0, 0];
        p.extend(attr(IFA_LABEL, b"eth0\0"));
        assert!(matches!(
            parse(&msg(RTM_NEWADDR, 0, 0, &p)),
            Err(VipError::MissingAddress { ifindex: 4 })
        ));
        // Bad attribute length.
        let mut p = vec![AF_INET, 24, 0, 0, 4, 0, 0, 0];
        p.extend_from_slice(&200u16.to_ne_bytes());
        p.extend_from_slice(&IFA_LOCAL.to_ne_bytes());
        assert!(matches!(
            parse(&msg(RTM_NEWADDR, 0, 0, &p)),
            Err(VipError::Netlink(NetlinkError::Malformed {
                what: "attribute",
                ..
            }))
        ));
        // A short IFA_FLAGS is ignored (8-bit flags stay), not an error.
        let mut p = vec![AF_INET, 24, 0x80, 0, 4, 0, 0, 0];
        p.extend(attr(IFA_LOCAL, &[192, 0, 2, 1]));
        p.extend(attr(IFA_FLAGS, &[1, 2]));
        assert_eq!(
            parse(&msg(RTM_NEWADDR, 0, 0, &p)).unwrap().unwrap().flags,
            0x80
        );
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let valid = newaddr_v4([192, 0, 2, 100], [192, 0, 2, 100], b"eth0:vip\0");
        for _ in 0..30_000 {
            let mut buf = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(buf.len());
                buf[i] = rng.next() as u8;
            }
            let cut = rng.below(buf.len() + 1);
            let _ = parse_address_messages(&buf[..cut]);
            let _ = parse_address_messages(&buf);
        }
    }
}

/// Root-only test in a throw-away network namespace: a veth pair, documentation
/// prefixes only, nothing configured in the namespace the test runs in.
#[cfg(test)]
mod netns_tests {
    use super::tests::{v4, v6};
    use super::*;
    use crate::netlink::test_netns::{ifindex, in_netns, ip, privileged, Netns};

    const IFACE: &str = "lv0";

    /// `ip -j addr show dev IFACE` as (address, prefixlen, label, nodad, tentative).
    fn shown(ns: &str) -> Vec<(IpAddr, u8, Option<String>, bool, bool)> {
        let out = ip(&["-n", ns, "-j", "addr", "show", "dev", IFACE]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        let mut found = Vec::new();
        for link in json.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                let flag = |k: &str| a[k].as_bool().unwrap_or(false);
                found.push((
                    a["local"].as_str().unwrap().parse().unwrap(),
                    a["prefixlen"].as_u64().unwrap() as u8,
                    a["label"].as_str().map(str::to_owned),
                    flag("nodad"),
                    flag("tentative"),
                ));
            }
        }
        found
    }

    #[test]
    fn add_list_delete_in_netns() {
        if !privileged("vip::add_list_delete_in_netns") {
            return;
        }
        let ns = Netns::create("vip");
        ip(&[
            "-n", &ns.0, "link", "add", IFACE, "type", "veth", "peer", "name", "lv1",
        ]);
        for dev in ["lo", IFACE, "lv1"] {
            ip(&["-n", &ns.0, "link", "set", dev, "up"]);
        }
        // A base address that must survive everything below.
        ip(&["-n", &ns.0, "addr", "add", "192.0.2.1/24", "dev", IFACE]);

        let name = ns.0.clone();
        in_netns(&ns.0, move || async move {
            let idx = ifindex(IFACE);
            let vips = [
                VirtualAddress::new(v4("192.0.2.100"), idx)
                    .with_prefix(24)
                    .with_label("lv0:vip"),
                VirtualAddress::new(v4("198.51.100.7"), idx),
                VirtualAddress::new(v6("2001:db8::100"), idx).with_prefix(64),
                VirtualAddress::new(v6("2001:db8::7"), idx),
            ];
            let mut sock = AddressSocket::open().expect("open");

            for vip in &vips {
                assert!(sock.add(vip).await.expect("add"), "{vip}");
            }
            // IPv6 VIPs are usable at once: binding fails while an address is tentative.
            for a in ["[2001:db8::100]:0", "[2001:db8::7]:0"] {
                std::net::UdpSocket::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
            }
            let seen = shown(&name);
            for vip in &vips {
                let entry = seen
                    .iter()
                    .find(|(a, ..)| *a == vip.addr)
                    .unwrap_or_else(|| panic!("{vip} not in {seen:?}"));
                assert_eq!(entry.1, vip.prefix_len, "{entry:?}");
                if vip.addr.is_ipv6() {
                    assert!(
                        entry.3 && !entry.4,
                        "IPv6 VIP not nodad / tentative: {entry:?}"
                    );
                }
            }
            let labelled = seen.iter().find(|e| e.0 == v4("192.0.2.100")).unwrap();
            assert_eq!(labelled.2.as_deref(), Some("lv0:vip"));

            // Our own dump agrees with iproute2.
            let listed = sock.list(Some(idx)).await.expect("list");
            for vip in &vips {
                let e = listed
                    .iter()
                    .find(|e| e.is_address_of(vip))
                    .unwrap_or_else(|| panic!("{vip} not listed: {listed:?}"));
                assert_eq!(e.prefix_len, vip.prefix_len);
                assert_eq!(
                    e.label,
                    vip.label
                        .clone()
                        .or(Some(IFACE.into()))
                        .filter(|_| vip.addr.is_ipv4())
                );
                assert!(!e.is_tentative(), "{e:?}");
            }
            assert!(listed.iter().all(|e| e.ifindex == idx));

            // Idempotent add, then delete, then delete again.
            for vip in &vips {
                assert!(!sock.add(vip).await.expect("second add"), "{vip}");
            }
            for vip in &vips {
                assert!(sock.delete(vip).await.expect("delete"), "{vip}");
            }
            let seen = shown(&name);
            assert!(
                vips.iter().all(|v| seen.iter().all(|e| e.0 != v.addr)),
                "VIPs left: {seen:?}"
            );
            for vip in &vips {
                assert!(!sock.delete(vip).await.expect("second delete"), "{vip}");
            }

            // Leftovers after a "crash": one VIP with the configured prefix, one with
            // a different prefix (configuration changed meanwhile).
            sock.add(&vips[1]).await.unwrap();
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                "2001:db8::100/128",
                "dev",
                IFACE,
                "nodad",
            ]);
            let removed = sock
                .remove_leftovers(&vips)
                .await
                .expect("remove leftovers");
            let mut removed: Vec<_> = removed.iter().map(|e| (e.addr, e.prefix_len)).collect();
            removed.sort();
            assert_eq!(
                removed,
                vec![(v4("198.51.100.7"), 32), (v6("2001:db8::100"), 128)]
            );
            let seen = shown(&name);
            assert!(
                seen.iter().any(|e| e.0 == v4("192.0.2.1")),
                "base address gone: {seen:?}"
            );
            assert!(
                vips.iter().all(|v| seen.iter().all(|e| e.0 != v.addr)),
                "VIPs left: {seen:?}"
            );
            assert!(sock.remove_leftovers(&vips).await.unwrap().is_empty());

            // Kernel errors are typed and carry the address.
            let missing = VirtualAddress::new(v4("203.0.113.9"), 999_999);
            let err = sock.add(&missing).await.unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
            assert!(err.to_string().contains("203.0.113.9"), "{err}");
            // And the socket still works afterwards.
            assert!(sock.list(Some(idx)).await.is_ok());
        });
    }
}
