//! The XDP program an interface runs, read and set over rtnetlink (`IFLA_XDP`).
//!
//! The daemon normally attaches through a bpf_link, which the kernel drops with the
//! daemon's last file descriptor: a stop leaves nothing behind. `keep_xdp_on_exit` asks for
//! the opposite, the program forwarding on while the daemon is down (a restart or an
//! upgrade); that is the netlink attachment, which belongs to the interface, not to a
//! process. Setting a program over netlink also replaces the one a previous run left, in
//! one step, so a restart has no window where frames reach the stack unbalanced.
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{DefaultNla, Emitable, Parseable, ParseableParametrized, NLA_F_NESTED};
use netlink_packet_route::{
    link::{
        InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkHeader, LinkInfo,
        LinkMessage, LinkXdp, MacVlanMode, XdpAttached,
    },
    AddressFamily, RouteNetlinkMessage,
};

use super::{
    attr_string, attributes, encode, NetlinkError, RouteSocket, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};

const RTM_NEWLINK: u16 = 16;
#[cfg(test)]
const RTM_SETLINK: u16 = 19;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_XDP: u16 = 43;
// `XDP_FLAGS_*`, include/uapi/linux/if_link.h.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Where a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Native,
    Skb,
    /// Offloaded, or several modes at once: not ours to touch.
    Other,
}

impl Mode {
    /// The `XDP_FLAGS_*` of the mode, for netlink and for `BPF_LINK_CREATE`.
    pub fn flags(self) -> u32 {
        match self {
            Mode::Native => XDP_FLAGS_DRV_MODE,
            Mode::Skb => XDP_FLAGS_SKB_MODE,
            Mode::Other => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Native => "native",
            Mode::Skb => "skb",
            Mode::Other => "other",
        }
    }
}

/// The program attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    pub prog_id: u32,
    pub mode: Mode,
}

/// A link message about interface `ifindex` (0: a dump of every interface).
fn link_message(ifindex: u32) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Unspec;
    msg.header.index = ifindex;
    msg
}

/// `RTM_SETLINK` giving `ifindex` the program `fd` (-1: none) in `mode`.
pub fn encode_set(seq: u32, ifindex: u32, fd: i32, mode: Mode) -> Vec<u8> {
    let xdp = [LinkXdp::Fd(fd), LinkXdp::Flags(mode.flags())];
    let mut nested = vec![0; xdp.as_slice().buffer_len()];
    xdp.as_slice().emit(&mut nested);
    let mut msg = link_message(ifindex);
    // `LinkAttribute::Xdp` is sent without NLA_F_NESTED; iproute2 and libbpf set it, and so
    // did this daemon before, so the request stays byte for byte what it was.
    msg.attributes.push(LinkAttribute::Other(DefaultNla::new(
        IFLA_XDP | NLA_F_NESTED,
        nested,
    )));
    encode(
        RouteNetlinkMessage::SetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `RTM_NEWLINK` creating `name`, a macvlan on `parent` in private mode (keepalived's VRRP
/// virtual MAC interface: frames between two macvlans of one parent are not delivered), with
/// hardware address `mac`, down (its settings come before it sends anything).
pub fn encode_new_macvlan(seq: u32, name: &str, parent: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut msg = link_message(0);
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Link(parent));
    msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
            MacVlanMode::Private,
        )])),
    ]));
    encode(
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
}

/// `RTM_DELLINK` of `ifindex`.
fn encode_delete(seq: u32, ifindex: u32) -> Vec<u8> {
    encode(
        RouteNetlinkMessage::DelLink(link_message(ifindex)),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `RTM_SETLINK` bringing `ifindex` up.
fn encode_up(seq: u32, ifindex: u32) -> Vec<u8> {
    let mut msg = link_message(ifindex);
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    encode(
        RouteNetlinkMessage::SetLink(msg),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// What an interface is, as far as a VRRP virtual MAC interface is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkKind {
    /// `IFLA_INFO_KIND` (`macvlan`, `veth`...), empty when the kernel gives none.
    pub kind: String,
    /// Private mode, for a macvlan.
    pub private: bool,
    /// `IFLA_LINK`: the interface it sits on.
    pub parent: Option<u32>,
    pub address: Vec<u8>,
}

/// [`LinkKind`] of `ifindex` from an `RTM_NEWLINK` message; `Ok(None)` for another interface.
pub fn decode_kind(
    msg_type: u16,
    payload: &[u8],
    ifindex: u32,
) -> Result<Option<LinkKind>, NetlinkError> {
    if msg_type != RTM_NEWLINK {
        return Ok(None);
    }
    let (header, attrs) = split_link(payload)?;
    if header.index != ifindex {
        return Ok(None);
    }
    let mut out = LinkKind::default();
    for attr in attributes(attrs) {
        let attr = attr?;
        // Only the attributes read are decoded (see decode_link()).
        if ![IFLA_ADDRESS, IFLA_LINK, IFLA_LINKINFO].contains(&attr.kind()) {
            continue;
        }
        match LinkAttribute::parse_with_param(&attr, header.interface_family) {
            Ok(LinkAttribute::Address(a)) => out.address = a,
            Ok(LinkAttribute::Link(p)) => out.parent = Some(p),
            Ok(LinkAttribute::LinkInfo(infos)) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => out.kind = k.to_string(),
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            out.private |= d
                                .iter()
                                .any(|m| matches!(m, InfoMacVlan::Mode(MacVlanMode::Private)));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(out))
}

/// What `ifindex` is; `None` if no such interface is in the calling thread's namespace.
pub async fn kind(ifindex: u32) -> Result<Option<LinkKind>, NetlinkError> {
    let found = RouteSocket::open()?
        .dump(encode_dump, |h, payload| {
            decode_kind(h.message_type, payload, ifindex)
        })
        .await?;
    Ok(found.into_iter().next())
}

/// Creates `name`, a private macvlan on `parent` with hardware address `mac`, down.
pub async fn create_macvlan(name: &str, parent: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
    RouteSocket::open()?
        .request(|seq| encode_new_macvlan(seq, name, parent, mac))
        .await
}

/// Deletes interface `ifindex`.
pub async fn delete(ifindex: u32) -> Result<(), NetlinkError> {
    RouteSocket::open()?
        .request(|seq| encode_delete(seq, ifindex))
        .await
}

/// Brings interface `ifindex` up.
pub async fn set_up(ifindex: u32) -> Result<(), NetlinkError> {
    RouteSocket::open()?
        .request(|seq| encode_up(seq, ifindex))
        .await
}

/// `RTM_GETLINK` dump request for every interface.
fn encode_dump(seq: u32) -> Vec<u8> {
    encode(
        RouteNetlinkMessage::GetLink(link_message(0)),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// The `ifinfomsg` of a link message and its attributes.
fn split_link(payload: &[u8]) -> Result<(LinkHeader, &[u8]), NetlinkError> {
    let header = LinkHeader::parse(payload).map_err(NetlinkError::malformed("ifinfomsg"))?;
    let attrs = payload.get(header.buffer_len()..).unwrap_or_default();
    Ok((header, attrs))
}

/// The program in an `RTM_NEWLINK` message about `ifindex`; `Ok(None)` for another
/// interface, `Ok(Some(None))` for this one without a program. The attributes are decoded
/// one by one with `netlink-packet-route` (a whole `LinkMessage` would fail on any of the
/// dozens of attributes the daemon does not read).
pub fn decode_link(
    msg_type: u16,
    payload: &[u8],
    ifindex: u32,
) -> Result<Option<Option<Attached>>, NetlinkError> {
    if msg_type != RTM_NEWLINK {
        return Ok(None);
    }
    let (header, attrs) = split_link(payload)?;
    if header.index != ifindex {
        return Ok(None);
    }
    let mut found = None;
    for attr in attributes(attrs) {
        let attr = attr?;
        if attr.kind() != IFLA_XDP {
            continue;
        }
        let (mut mode, mut prog_id) = (None, None);
        for inner in attributes(attr.value()) {
            match LinkXdp::parse(&inner?) {
                Ok(LinkXdp::Attached(m)) => mode = Some(m),
                Ok(LinkXdp::ProgId(id)) => prog_id = Some(id),
                _ => {}
            }
        }
        found = match (mode, prog_id) {
            (None | Some(XdpAttached::None), _) | (_, None) => None,
            (Some(m), Some(prog_id)) => Some(Attached {
                prog_id,
                mode: match m {
                    XdpAttached::Driver => Mode::Native,
                    XdpAttached::SocketBuffer => Mode::Skb,
                    _ => Mode::Other,
                },
            }),
        };
    }
    Ok(Some(found))
}

/// The name of the interface an `RTM_NEWLINK` message is about, if `master` is its master
/// (it is a port of that bond or bridge).
pub fn decode_port(
    msg_type: u16,
    payload: &[u8],
    master: u32,
) -> Result<Option<String>, NetlinkError> {
    if msg_type != RTM_NEWLINK {
        return Ok(None);
    }
    let (header, attrs) = split_link(payload)?;
    let (mut name, mut is_port) = (None, false);
    for attr in attributes(attrs) {
        let attr = attr?;
        // Only the two attributes read are decoded (see decode_link()).
        if attr.kind() != IFLA_IFNAME && attr.kind() != IFLA_MASTER {
            continue;
        }
        match LinkAttribute::parse_with_param(&attr, header.interface_family) {
            Ok(LinkAttribute::IfName(_)) => name = attr_string(attr.value()),
            Ok(LinkAttribute::Controller(m)) => is_port = m == master,
            _ => {}
        }
    }
    Ok(name.filter(|_| is_port))
}

/// The hardware address (`IFLA_ADDRESS`) in an `RTM_NEWLINK` message about `ifindex`;
/// `Ok(None)` for another interface, an empty address for this one without any.
pub fn decode_address(
    msg_type: u16,
    payload: &[u8],
    ifindex: u32,
) -> Result<Option<Vec<u8>>, NetlinkError> {
    if msg_type != RTM_NEWLINK {
        return Ok(None);
    }
    let (header, attrs) = split_link(payload)?;
    if header.index != ifindex {
        return Ok(None);
    }
    let mut address = Vec::new();
    for attr in attributes(attrs) {
        let attr = attr?;
        // Only the attribute read is decoded (see decode_link()).
        if attr.kind() != IFLA_ADDRESS {
            continue;
        }
        if let Ok(LinkAttribute::Address(a)) =
            LinkAttribute::parse_with_param(&attr, header.interface_family)
        {
            address = a;
        }
    }
    Ok(Some(address))
}

/// The interfaces whose master is `ifindex`: a bond's ports, whose drivers are the ones that
/// receive its frames.
pub async fn ports(ifindex: u32) -> Result<Vec<String>, NetlinkError> {
    RouteSocket::open()?
        .dump(encode_dump, |h, payload| {
            decode_port(h.message_type, payload, ifindex)
        })
        .await
}

/// The hardware address of `ifindex` (empty if it has none), from a link dump of the calling
/// thread's network namespace; `None` if no such interface is in it.
pub async fn address(ifindex: u32) -> Result<Option<Vec<u8>>, NetlinkError> {
    let found = RouteSocket::open()?
        .dump(encode_dump, |h, payload| {
            decode_address(h.message_type, payload, ifindex)
        })
        .await?;
    Ok(found.into_iter().next())
}

/// The program `ifindex` runs, if any.
pub async fn attached(ifindex: u32) -> Result<Option<Attached>, NetlinkError> {
    let mut sock = RouteSocket::open()?;
    let found = sock
        .dump(encode_dump, |h, payload| {
            decode_link(h.message_type, payload, ifindex)
        })
        .await?;
    Ok(found.into_iter().flatten().next())
}

/// Gives `ifindex` the program `prog` in `mode`, replacing the one it runs in that mode.
pub async fn set(ifindex: u32, prog: BorrowedFd<'_>, mode: Mode) -> Result<(), NetlinkError> {
    let fd = prog.as_raw_fd();
    RouteSocket::open()?
        .request(|seq| encode_set(seq, ifindex, fd, mode))
        .await
}

/// Takes the program `ifindex` runs in `mode` away.
pub async fn clear(ifindex: u32, mode: Mode) -> Result<(), NetlinkError> {
    RouteSocket::open()?
        .request(|seq| encode_set(seq, ifindex, -1, mode))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_wire::attr;

    const NLA_F_NESTED: u16 = 0x8000;
    const XDP_ATTACHED_SKB: u8 = 2;

    /// `struct ifinfomsg` for interface `ifindex`.
    fn ifinfomsg(ifindex: u32) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        h
    }

    #[test]
    fn set_request_bytes() {
        let m = encode_set(7, 3, 9, Mode::Skb);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &52u32.to_ne_bytes()[..], &RTM_SETLINK.to_ne_bytes(), &5u16.to_ne_bytes(),
            &7u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            // ifinfomsg: AF_UNSPEC, index 3
            &[0, 0, 0, 0], &3u32.to_ne_bytes(), &[0; 8],
            // IFLA_XDP (nested): FD 9, FLAGS SKB
            &20u16.to_ne_bytes(), &(43u16 | 0x8000).to_ne_bytes(),
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &9i32.to_ne_bytes(),
            &8u16.to_ne_bytes(), &3u16.to_ne_bytes(), &2u32.to_ne_bytes(),
        ]
        .concat();
        assert_eq!(m, want);
    }

    fn newlink(ifindex: u32, xdp: &[u8]) -> Vec<u8> {
        let mut p = ifinfomsg(ifindex).to_vec();
        // IFLA_MTU first, then IFLA_XDP.
        p.extend_from_slice(&[8, 0, 4, 0, 0xdc, 5, 0, 0]);
        p.extend_from_slice(&((4 + xdp.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&(IFLA_XDP | NLA_F_NESTED).to_ne_bytes());
        p.extend_from_slice(xdp);
        p
    }

    #[test]
    fn decodes_ports() {
        let link = |master: Option<u32>| {
            let mut p = ifinfomsg(5).to_vec();
            p.extend(attr(IFLA_IFNAME, b"eth1\0"));
            if let Some(m) = master {
                p.extend(attr(IFLA_MASTER, &m.to_ne_bytes()));
            }
            p
        };
        assert_eq!(
            decode_port(RTM_NEWLINK, &link(Some(3)), 3).unwrap(),
            Some("eth1".to_string())
        );
        assert_eq!(decode_port(RTM_NEWLINK, &link(Some(4)), 3).unwrap(), None);
        assert_eq!(decode_port(RTM_NEWLINK, &link(None), 3).unwrap(), None);
        assert_eq!(decode_port(RTM_SETLINK, &link(Some(3)), 3).unwrap(), None);
        // Hostile: truncated header or attribute is an error, not a panic.
        assert!(decode_port(RTM_NEWLINK, &link(Some(3))[..10], 3).is_err());
        let p = link(Some(3));
        assert!(decode_port(RTM_NEWLINK, &p[..p.len() - 2], 3).is_err());
    }

    #[test]
    fn decodes_the_hardware_address() {
        let link = |address: Option<&[u8]>| {
            let mut p = ifinfomsg(5).to_vec();
            p.extend(attr(IFLA_IFNAME, b"eth1\0"));
            if let Some(a) = address {
                p.extend(attr(IFLA_ADDRESS, a));
            }
            p
        };
        let mac = [0x02, 0, 0x5e, 0, 0x53, 0x01];
        assert_eq!(
            decode_address(RTM_NEWLINK, &link(Some(&mac)), 5).unwrap(),
            Some(mac.to_vec())
        );
        // Another interface, another message, or no address.
        assert_eq!(
            decode_address(RTM_NEWLINK, &link(Some(&mac)), 4).unwrap(),
            None
        );
        assert_eq!(
            decode_address(RTM_SETLINK, &link(Some(&mac)), 5).unwrap(),
            None
        );
        assert_eq!(
            decode_address(RTM_NEWLINK, &link(None), 5).unwrap(),
            Some(vec![])
        );
        // Hostile: truncated header or attribute is an error, not a panic.
        let p = link(Some(&mac));
        assert!(decode_address(RTM_NEWLINK, &p[..10], 5).is_err());
        // (The last 2 bytes are the attribute's padding: cut into its value.)
        assert!(decode_address(RTM_NEWLINK, &p[..p.len() - 3], 5).is_err());
    }

    #[test]
    fn decodes_the_attached_program() {
        let skb = [
            &[5u8, 0, 2, 0, XDP_ATTACHED_SKB, 0, 0, 0][..],
            &[8, 0, 4, 0],
            &42u32.to_ne_bytes(),
        ]
        .concat();
        let p = newlink(3, &skb);
        assert_eq!(
            decode_link(RTM_NEWLINK, &p, 3).unwrap(),
            Some(Some(Attached {
                prog_id: 42,
                mode: Mode::Skb
            }))
        );
        // Another interface, or none attached.
        assert_eq!(decode_link(RTM_NEWLINK, &p, 4).unwrap(), None);
        let none = newlink(3, &[5, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(decode_link(RTM_NEWLINK, &none, 3).unwrap(), Some(None));
        // Hostile: truncated header or attribute is an error, not a panic.
        assert!(decode_link(RTM_NEWLINK, &p[..10], 3).is_err());
        let mut bad = p.clone();
        bad.truncate(p.len() - 2);
        assert!(decode_link(RTM_NEWLINK, &bad, 3).is_err());
    }
}

/// Root-only test in a throw-away network namespace: link dumps decoded from the kernel.
/// Nothing is configured outside the namespace.
#[cfg(test)]
mod netns_tests {
    use super::*;
    use crate::netlink::test_netns::{ifindex, in_netns, ip, privileged, Netns};

    #[test]
    fn ports_and_attachment_in_netns() {
        if !privileged("xdp_link::ports_and_attachment_in_netns") {
            return;
        }
        let ns = Netns::create("xdpl");
        ip(&[
            "-n", &ns.0, "link", "add", "lxl0", "type", "veth", "peer", "name", "lxl1",
        ]);
        ip(&["-n", &ns.0, "link", "add", "lxlbr", "type", "bridge"]);
        ip(&["-n", &ns.0, "link", "set", "lxl0", "master", "lxlbr"]);
        in_netns(&ns.0, || async {
            let bridge = ifindex("lxlbr");
            assert_eq!(ports(bridge).await.expect("ports"), ["lxl0"]);
            assert!(ports(ifindex("lxl1")).await.expect("ports").is_empty());
            assert_eq!(attached(ifindex("lxl0")).await.expect("attached"), None);
            // Clearing what is not there is accepted by the kernel.
            clear(ifindex("lxl0"), Mode::Skb).await.expect("clear");
        });
    }
}
