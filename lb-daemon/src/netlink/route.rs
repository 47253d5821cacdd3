//! Host routes in a routing table of their own: how `[announce]` tells a routing daemon
//! (BIRD's `kernel` protocol with `learn`, FRR's `ip import-table`) which VIPs this node
//! serves. A route is `VIP/32` (`/128`) through one device, in one table, with one
//! `rtm_protocol` that marks it as ours: a dump finds our routes by table and protocol,
//! and never touches another's.
use std::net::IpAddr;

use netlink_packet_route::{
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};

use super::{
    encode, NetlinkError, NlHeader, RouteSocket, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};

/// `RTM_NEWROUTE`, `RTM_DELROUTE` (include/uapi/linux/rtnetlink.h).
const RTM_NEWROUTE: u16 = 24;

/// `RT_TABLE_COMPAT`: what `rtm_table` says of a table whose id does not fit in a byte
/// (the id is then in `RTA_TABLE` alone).
const RT_TABLE_COMPAT: u8 = 252;

/// `sizeof(struct rtmsg)`: where the attributes start.
const RTMSG_LEN: usize = 12;

/// One of our host routes: `addr` through `ifindex` in `table`, marked `protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub table: u32,
    pub protocol: u8,
}

fn route_message(r: &HostRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = match r.addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.destination_prefix_length = crate::netlink::addr::host_prefix(r.addr);
    msg.header.table = u8::try_from(r.table).unwrap_or(RT_TABLE_COMPAT);
    msg.header.protocol = RouteProtocol::from(r.protocol);
    msg.header.scope = RouteScope::Link;
    msg.header.kind = RouteType::Unicast;
    msg.attributes
        .push(RouteAttribute::Destination(match r.addr {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
    msg.attributes.push(RouteAttribute::Oif(r.ifindex));
    msg.attributes.push(RouteAttribute::Table(r.table));
    msg
}

/// `RTM_NEWROUTE` adding `r` (an existing one gives `EEXIST`).
pub fn encode_add(seq: u32, r: &HostRoute) -> Vec<u8> {
    encode(
        RouteNetlinkMessage::NewRoute(route_message(r)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
}

/// `RTM_DELROUTE` of `r` (a missing one gives `ESRCH`).
pub fn encode_delete(seq: u32, r: &HostRoute) -> Vec<u8> {
    encode(
        RouteNetlinkMessage::DelRoute(route_message(r)),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `RTM_GETROUTE` dump of one family (`AF_INET` or `AF_INET6`) asking for `table` and
/// `protocol` only: with `NETLINK_GET_STRICT_CHK` the kernel filters (a host with a full
/// BGP table in its main table is not walked every resync); without it, it dumps every
/// table and [`decode`] filters.
fn encode_dump(seq: u32, family: AddressFamily, table: u32, protocol: u8) -> Vec<u8> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.table = u8::try_from(table).unwrap_or(RT_TABLE_COMPAT);
    msg.header.protocol = RouteProtocol::from(protocol);
    msg.attributes.push(RouteAttribute::Table(table));
    encode(
        RouteNetlinkMessage::GetRoute(msg),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// The host route an `RTM_NEWROUTE` message describes, if it is one in `table` marked
/// `protocol`; `Ok(None)` for anything else (another table, protocol, prefix length, a
/// route without one output device). Attributes are read one by one: one we do not need
/// that the crate cannot decode does not cost us the route.
pub fn decode(
    h: &NlHeader,
    payload: &[u8],
    table: u32,
    protocol: u8,
) -> Result<Option<HostRoute>, NetlinkError> {
    use netlink_packet_core::ParseableParametrized;
    if h.message_type != RTM_NEWROUTE {
        return Ok(None);
    }
    let header = RouteHeader::parse(payload).map_err(NetlinkError::malformed("rtmsg"))?;
    if u8::from(header.protocol) != protocol {
        return Ok(None);
    }
    let attrs = payload.get(RTMSG_LEN..).unwrap_or_default();
    let (mut dst, mut oif, mut tbl) = (None, None, u32::from(header.table));
    for attr in super::attributes(attrs) {
        let attr = attr?;
        let param = (
            header.address_family,
            header.kind,
            netlink_packet_route::route::RouteLwEnCapType::None,
        );
        match RouteAttribute::parse_with_param(&attr, param) {
            Ok(RouteAttribute::Destination(RouteAddress::Inet(a))) => dst = Some(IpAddr::V4(a)),
            Ok(RouteAttribute::Destination(RouteAddress::Inet6(a))) => dst = Some(IpAddr::V6(a)),
            Ok(RouteAttribute::Oif(i)) => oif = Some(i),
            Ok(RouteAttribute::Table(t)) => tbl = t,
            _ => {}
        }
    }
    let (Some(addr), Some(ifindex)) = (dst, oif) else {
        return Ok(None);
    };
    if tbl != table || header.destination_prefix_length != crate::netlink::addr::host_prefix(addr) {
        return Ok(None);
    }
    Ok(Some(HostRoute {
        addr,
        ifindex,
        table,
        protocol,
    }))
}

/// Adds `r`. `Ok(false)`: it was there already.
pub async fn add(sock: &mut RouteSocket, r: &HostRoute) -> Result<bool, NetlinkError> {
    match sock.request(|seq| encode_add(seq, r)).await {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `r`. `Ok(false)`: it was not there.
pub async fn delete(sock: &mut RouteSocket, r: &HostRoute) -> Result<bool, NetlinkError> {
    match sock.request(|seq| encode_delete(seq, r)).await {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Every host route in `table` marked `protocol`, IPv4 and IPv6.
pub async fn list(
    sock: &mut RouteSocket,
    table: u32,
    protocol: u8,
) -> Result<Vec<HostRoute>, NetlinkError> {
    // The kernel filters the dump by table and protocol (Linux 4.20+; an older one ignores
    // the option and dumps everything, which `decode` filters).
    let _ = sock.socket().set_netlink_get_strict_chk(true);
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        match sock
            .dump(
                |seq| encode_dump(seq, family, table, protocol),
                |h, p| decode(h, p, table, protocol),
            )
            .await
        {
            Ok(routes) => out.extend(routes),
            // A filtered dump of a table that does not exist (none of its routes yet).
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{messages, split_message};

    fn decoded(bytes: &[u8], table: u32, protocol: u8) -> Option<HostRoute> {
        let (mut h, payload, _) = split_message(bytes).unwrap();
        // A request is framed like the kernel's answer: the same rtmsg and attributes.
        h.message_type = RTM_NEWROUTE;
        decode(&h, payload, table, protocol).unwrap()
    }

    #[test]
    fn a_route_reads_back_as_written_in_both_families_and_big_tables() {
        for (addr, table) in [
            ("192.0.2.10".parse().unwrap(), 100),
            ("2001:db8::10".parse().unwrap(), 100),
            ("203.0.113.7".parse().unwrap(), 70_000),
        ] {
            let r = HostRoute {
                addr,
                ifindex: 7,
                table,
                protocol: 250,
            };
            let bytes = encode_add(1, &r);
            assert_eq!(messages(&bytes).count(), 1);
            assert_eq!(decoded(&bytes, table, 250), Some(r));
            assert_eq!(decoded(&bytes, table + 1, 250), None, "another table");
            assert_eq!(decoded(&bytes, table, 12), None, "another protocol");
        }
    }

    #[test]
    fn garbage_is_an_error_or_nothing_never_a_panic() {
        let r = HostRoute {
            addr: "192.0.2.10".parse().unwrap(),
            ifindex: 7,
            table: 100,
            protocol: 250,
        };
        let bytes = encode_add(1, &r);
        let (mut h, payload, _) = split_message(&bytes).unwrap();
        h.message_type = RTM_NEWROUTE;
        for cut in 0..payload.len() {
            let _ = decode(&h, &payload[..cut], 100, 250);
        }
        let mut bad = payload.to_vec();
        for i in 12..bad.len() {
            let keep = bad[i];
            bad[i] = 0xff;
            let _ = decode(&h, &bad, 100, 250);
            bad[i] = keep;
        }
    }
}
