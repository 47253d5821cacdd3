//! `PING_CHECK`: one ICMP (ICMPv6) echo request, passed by its echo reply within
//! `connect_timeout`.
//!
//! keepalived sends from a "ping socket" (`SOCK_DGRAM`, `IPPROTO_ICMP`), which the kernel
//! only allows to the groups of `net.ipv4.ping_group_range`: keepalived rewrites that
//! system-wide setting at start. This probe sends from a raw socket instead, which needs only
//! the CAP_NET_RAW the daemon already holds for VRRP, and changes nothing in the system.
//! The socket is connected, so the kernel hands it only ICMP from the address probed; the
//! reply must carry the request's random identifier and sequence number.
use std::{io, mem::MaybeUninit, net::SocketAddr};

use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type};
use tokio::{
    io::unix::AsyncFd,
    time::{timeout_at, Instant},
};

use super::probe::ProbeError;
use crate::config::check::PingCheck;

/// The echo's payload, as long as ping(8)'s default.
const PAYLOAD: [u8; 56] = *b"lb-daemon PING_CHECK ..................................\n";
/// Read room: an IPv4 header with options, the ICMP header and the payload, with margin.
const BUF: usize = 1024;

/// What a received ICMP message (from its ICMP header on) is to the echo `(id, seq)`.
#[derive(Debug, PartialEq, Eq)]
pub enum Echo {
    Reply,
    /// Something else: another echo, an error about another packet.
    Other,
}

/// The echo request `(id, seq)` from its ICMP header on. For ICMPv6 the checksum is left
/// zero: the kernel computes it for a raw ICMPv6 socket (RFC 3542, 3.1).
pub fn request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let echo = IcmpEchoHeader { id, seq };
    let mut out = Vec::with_capacity(8 + PAYLOAD.len());
    if v6 {
        out.extend_from_slice(&Icmpv6Header::new(Icmpv6Type::EchoRequest(echo)).to_bytes());
    } else {
        out.extend_from_slice(
            &Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), &PAYLOAD).to_bytes(),
        );
    }
    out.extend_from_slice(&PAYLOAD);
    out
}

/// Judges a datagram as a raw socket returns it: IPv4 with its IP header, ICMPv6 without.
pub fn judge(v6: bool, datagram: &[u8], id: u16, seq: u16) -> Echo {
    let want = IcmpEchoHeader { id, seq };
    if v6 {
        match etherparse::Icmpv6Slice::from_slice(datagram).map(|s| s.icmp_type()) {
            Ok(Icmpv6Type::EchoReply(h)) if h == want => Echo::Reply,
            _ => Echo::Other,
        }
    } else {
        let Ok(ip) = etherparse::Ipv4Slice::from_slice(datagram) else {
            return Echo::Other;
        };
        match etherparse::Icmpv4Slice::from_slice(ip.payload().payload).map(|s| s.icmp_type()) {
            Ok(Icmpv4Type::EchoReply(h)) if h == want => Echo::Reply,
            _ => Echo::Other,
        }
    }
}

/// `PING_CHECK`.
pub async fn ping(p: &PingCheck) -> Result<(), ProbeError> {
    let deadline = Instant::now() + p.timeout;
    let dest = SocketAddr::new(p.dest, 0);
    let v6 = p.dest.is_ipv6();
    let err = |source: io::Error| ProbeError::Datagram {
        check: "PING_CHECK",
        dest,
        source,
    };
    let (domain, proto) = if v6 {
        (socket2::Domain::IPV6, socket2::Protocol::ICMPV6)
    } else {
        (socket2::Domain::IPV4, socket2::Protocol::ICMPV4)
    };
    let s = socket2::Socket::new(domain, socket2::Type::RAW, Some(proto)).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    if let Some(ip) = p.bindto {
        let addr = SocketAddr::new(ip, 0);
        s.bind(&addr.into())
            .map_err(|source| ProbeError::Bind { addr, source })?;
    }
    s.connect(&dest.into()).map_err(err)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor lives as long as the
    // registration.
    let fd = unsafe { AsyncFd::register(s) }.map_err(|e| err(e.into_parts().1))?;
    let r = super::probe::random_u32();
    let (id, seq) = ((r >> 16) as u16, r as u16);
    let req = request(v6, id, seq);
    let mut others = 0u32;
    let exchange = async {
        loop {
            let mut ready = fd.writable().await?;
            match ready.try_io(|s| s.get_ref().send(&req)) {
                Ok(sent) => {
                    sent?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        let mut buf = [MaybeUninit::<u8>::uninit(); BUF];
        loop {
            let mut ready = fd.readable().await?;
            let n = match ready.try_io(|s| s.get_ref().recv(&mut buf)) {
                Ok(n) => n?,
                Err(_would_block) => continue,
            };
            // SAFETY: recv initialised the first `n` bytes.
            let got: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            match judge(v6, &got, id, seq) {
                Echo::Reply => return Ok::<(), io::Error>(()),
                Echo::Other => others += 1,
            }
        }
    };
    match timeout_at(deadline, exchange).await {
        Ok(r) => r.map_err(err),
        Err(_) => Err(ProbeError::Silent {
            check: "PING_CHECK",
            dest,
            timeout: p.timeout,
            ignored: others,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_bytes_and_replies() {
        let req = request(false, 0x1234, 0x0007);
        assert_eq!((req[0], req[1]), (8, 0), "echo request");
        assert_eq!(&req[4..8], &[0x12, 0x34, 0x00, 0x07]);
        assert_eq!(&req[8..], &PAYLOAD);
        // The checksum makes the ICMP message sum to 0xffff.
        let sum = req
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!((folded & 0xffff) + (folded >> 16), 0xffff);
        let v6 = request(true, 1, 2);
        assert_eq!(&v6[..8], &[128, 0, 0, 0, 0, 1, 0, 2]);

        // An IPv4 reply as a raw socket reads it: a 20-byte header, then the ICMP message.
        let reply = |id: u16, seq: u16, ty: u8| {
            let mut icmp = request(false, id, seq);
            icmp[0] = ty;
            let mut ip = vec![
                0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 11, 192, 0, 2, 1,
            ];
            let len = (20 + icmp.len()) as u16;
            ip[2..4].copy_from_slice(&len.to_be_bytes());
            ip.extend_from_slice(&icmp);
            ip
        };
        assert_eq!(judge(false, &reply(0x1234, 7, 0), 0x1234, 7), Echo::Reply);
        assert_eq!(judge(false, &reply(0x1234, 8, 0), 0x1234, 7), Echo::Other);
        assert_eq!(judge(false, &reply(0x1235, 7, 0), 0x1234, 7), Echo::Other);
        assert_eq!(
            judge(false, &reply(0x1234, 7, 8), 0x1234, 7),
            Echo::Other,
            "a request"
        );
        assert_eq!(judge(false, &[0x45, 0], 0x1234, 7), Echo::Other, "short");
        let mut r6 = request(true, 1, 2);
        r6[0] = 129;
        assert_eq!(judge(true, &r6, 1, 2), Echo::Reply);
        assert_eq!(judge(true, &r6, 1, 3), Echo::Other);
        assert_eq!(judge(true, &r6[..3], 1, 2), Echo::Other);
    }

    #[tokio::test]
    async fn pings_loopback() {
        if !crate::testutil::privileged("PING_CHECK's raw socket") {
            return;
        }
        for dest in ["127.0.0.1", "::1"] {
            let p = PingCheck {
                dest: dest.parse().unwrap(),
                bindto: None,
                timeout: std::time::Duration::from_secs(2),
            };
            ping(&p).await.unwrap_or_else(|e| panic!("{dest}: {e}"));
        }
        // A source address this host does not have cannot be bound.
        let p = PingCheck {
            dest: "127.0.0.1".parse().unwrap(),
            bindto: Some("192.0.2.99".parse().unwrap()),
            timeout: std::time::Duration::from_secs(1),
        };
        let e = ping(&p).await.unwrap_err().to_string();
        assert!(e.contains("bind to 192.0.2.99"), "{e}");
    }
}
