//! The probes over UDP: `DNS_CHECK` and `UDP_CHECK`. Each opens a connected socket (so the
//! kernel hands it only datagrams from the address probed) with `IP_RECVERR`, so that every
//! ICMP error about it, not only the "hard" ones, fails the read. keepalived's
//! `udp_socket_error` fails only on destination unreachable; here a time exceeded (a
//! routing loop) or a parameter problem fails too: the datagram did not arrive.
//!
//! * `DNS_CHECK` (keepalived's `dns_recv_thread`): the query with a random ID; a datagram
//!   that is too short, has another ID or is not a response is ignored and the probe waits
//!   on until its deadline; a response with RCODE 0 passes, any other RCODE fails.
//! * `UDP_CHECK` (keepalived's `udp_check_thread`): the payload; an ICMP error fails. Without
//!   `require_reply` a reply or silence until `connect_timeout` passes; with it, a reply must
//!   come and fit ([`ReplyRule::judge`]).
use std::{io, net::SocketAddr, os::fd::AsFd};

use tokio::{
    net::UdpSocket,
    time::{timeout_at, Instant},
};

use super::probe::ProbeError;
use crate::config::check::{Connect, DnsCheck, UdpCheck};

/// A DNS message over UDP without EDNS is at most 512 bytes; a longer reply is read in
/// part, and only its header is judged.
const DNS_BUF: usize = 4096;

/// A connected UDP socket to `c.dest`, from `c.bindto` if set, reporting ICMP errors.
fn socket(c: &Connect) -> Result<UdpSocket, ProbeError> {
    let dest = c.dest;
    let err = |source| ProbeError::Connect { dest, source };
    let domain = socket2::Domain::for_address(dest);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(err)?;
    let (level, name) = if dest.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    };
    crate::os::set_option(s.as_fd(), level, name, &1i32, "IP_RECVERR").map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    if let Some(ip) = c.bindto {
        let addr = SocketAddr::new(ip, 0);
        s.bind(&addr.into())
            .map_err(|source| ProbeError::Bind { addr, source })?;
    }
    s.connect(&dest.into()).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// A datagram socket's error, saying what the kernel read from the ICMP error behind it.
fn icmp_said(e: io::Error) -> io::Error {
    let what = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ICMP port unreachable",
        Some(libc::EHOSTUNREACH) => {
            "an ICMP error (host unreachable, time exceeded), or no ARP/ND answer"
        }
        Some(libc::ENETUNREACH) => "ICMP network unreachable, or no route",
        _ => return e,
    };
    io::Error::new(e.kind(), format!("{e} ({what})"))
}

/// What a datagram says to a `DNS_CHECK` that sent ID `id`.
#[derive(Debug, PartialEq, Eq)]
pub enum DnsAnswer {
    /// Not the answer: wait on.
    Ignore,
    Up,
    /// The answer, with this RCODE.
    Refused(u8),
}

pub fn judge_dns(id: u16, reply: &[u8]) -> DnsAnswer {
    if reply.len() < 12 || u16::from_be_bytes([reply[0], reply[1]]) != id || reply[2] & 0x80 == 0 {
        return DnsAnswer::Ignore;
    }
    match reply[3] & 0x0f {
        0 => DnsAnswer::Up,
        rcode => DnsAnswer::Refused(rcode),
    }
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an error",
    }
}

/// `DNS_CHECK`.
pub async fn dns(d: &DnsCheck) -> Result<(), ProbeError> {
    let c = &d.connect;
    let dest = c.dest;
    let deadline = Instant::now() + c.timeout;
    let sock = socket(c)?;
    let id = (super::probe::random_u32() & 0xffff) as u16;
    let mut query = d.query.clone();
    if let Some(head) = query.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    let what = |source: io::Error| ProbeError::Datagram {
        check: "DNS_CHECK",
        dest,
        source: icmp_said(source),
    };
    sock.send(&query).await.map_err(what)?;
    let mut buf = vec![0u8; DNS_BUF];
    let mut ignored = 0u32;
    loop {
        let n = match timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => {
                return Err(ProbeError::Silent {
                    check: "DNS_CHECK",
                    dest,
                    timeout: c.timeout,
                    ignored,
                })
            }
            Ok(r) => r.map_err(what)?,
        };
        match judge_dns(id, &buf[..n]) {
            DnsAnswer::Ignore => ignored += 1,
            DnsAnswer::Up => return Ok(()),
            DnsAnswer::Refused(rcode) => {
                return Err(ProbeError::Answer {
                    check: "DNS_CHECK",
                    dest,
                    reason: format!(
                        "{} {} answered {} (RCODE {rcode})",
                        d.qtype,
                        d.name,
                        rcode_name(rcode)
                    ),
                })
            }
        }
    }
}

/// `UDP_CHECK`.
pub async fn udp(u: &UdpCheck) -> Result<(), ProbeError> {
    let c = &u.connect;
    let dest = c.dest;
    let deadline = Instant::now() + c.timeout;
    let sock = socket(c)?;
    let what = |source: io::Error| ProbeError::Datagram {
        check: "UDP_CHECK",
        dest,
        source: icmp_said(source),
    };
    sock.send(&u.payload).await.map_err(what)?;
    // Room for any datagram, so that a reply's length is its own, not the buffer's.
    let room = if u.reply.is_some() { 65536 } else { 1 };
    let mut buf = vec![0u8; room];
    match timeout_at(deadline, sock.recv(&mut buf)).await {
        Err(_) if u.reply.is_none() => Ok(()),
        Err(_) => Err(ProbeError::Silent {
            check: "UDP_CHECK",
            dest,
            timeout: c.timeout,
            ignored: 0,
        }),
        Ok(Err(e)) => Err(what(e)),
        Ok(Ok(n)) => match u.reply.as_ref().and_then(|r| r.judge(&buf[..n])) {
            None => Ok(()),
            Some(reason) => Err(ProbeError::Answer {
                check: "UDP_CHECK",
                dest,
                reason,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::check::{parse_hex, ReplyRule};

    #[test]
    fn dns_answers() {
        let mut r = [0u8; 12];
        r[..2].copy_from_slice(&0x1234u16.to_be_bytes());
        assert_eq!(
            judge_dns(0x1234, &r),
            DnsAnswer::Ignore,
            "QR clear: a query"
        );
        r[2] = 0x81;
        assert_eq!(judge_dns(0x1234, &r), DnsAnswer::Up);
        assert_eq!(judge_dns(0x1235, &r), DnsAnswer::Ignore, "another ID");
        assert_eq!(judge_dns(0x1234, &r[..11]), DnsAnswer::Ignore, "short");
        r[3] = 0x83;
        assert_eq!(judge_dns(0x1234, &r), DnsAnswer::Refused(3));
    }

    fn conn(dest: SocketAddr, ms: u64) -> Connect {
        Connect {
            dest,
            bindto: None,
            timeout: Duration::from_millis(ms),
        }
    }

    /// A UDP server on loopback answering each datagram with the datagrams of
    /// `answer(datagram)`, in order.
    async fn server(
        answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                for a in answer(&buf[..n]) {
                    let _ = s.send_to(&a, from).await;
                }
            }
        });
        (addr, task)
    }

    /// A loopback port nothing listens on: the kernel answers port unreachable.
    async fn closed_port() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    }

    #[tokio::test]
    async fn udp_without_reply_fails_only_on_icmp() {
        let (addr, _t) = server(|_| vec![]).await;
        let u = UdpCheck {
            connect: conn(addr, 200),
            payload: vec![1, 2],
            reply: None,
        };
        udp(&u).await.expect("silence passes without require_reply");
        let closed = UdpCheck {
            connect: conn(closed_port().await, 2000),
            ..u.clone()
        };
        let e = udp(&closed).await.unwrap_err().to_string();
        assert!(e.contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn udp_require_reply() {
        let (addr, _t) = server(|d| vec![[b"OK ", d].concat()]).await;
        let rule = |p: &str, min, max| ReplyRule {
            pattern: parse_hex(p, true).unwrap(),
            min_len: min,
            max_len: max,
        };
        let mut u = UdpCheck {
            connect: conn(addr, 1000),
            payload: b"ping".to_vec(),
            reply: Some(rule("4f 4b", 0, 255)),
        };
        udp(&u).await.unwrap();
        u.reply = Some(rule("4f 4c", 0, 255));
        let e = udp(&u).await.unwrap_err().to_string();
        assert!(e.contains("reply byte 1 is 4b, expected 4c"), "{e}");
        u.reply = Some(rule("", 0, 5));
        let e = udp(&u).await.unwrap_err().to_string();
        assert!(e.contains("a reply of 7 bytes, expected 0..=5"), "{e}");
        let (quiet, _q) = server(|_| vec![]).await;
        u.connect = conn(quiet, 200);
        u.reply = Some(rule("", 0, 255));
        let e = udp(&u).await.unwrap_err().to_string();
        assert!(e.contains("no answer within"), "{e}");
    }

    fn dns_check(addr: SocketAddr, ms: u64) -> DnsCheck {
        DnsCheck {
            connect: conn(addr, ms),
            qtype: "SOA".into(),
            name: ".".into(),
            query: vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1],
        }
    }

    #[tokio::test]
    async fn dns_waits_past_strays_and_judges_rcode() {
        // First strays (another ID, a query, a short datagram), then the answer.
        let (addr, _t) = server(|q| {
            let mut a = q.to_vec();
            a[2] |= 0x80;
            // Each stray says REFUSED: taken for the answer, it would fail the check.
            let mut other = a.clone();
            other[1] ^= 1;
            other[3] = 0x85;
            let mut query = q.to_vec();
            query[3] = 0x85;
            let mut short = a[..11].to_vec();
            short[3] = 0x85;
            vec![other, query, short, a]
        })
        .await;
        dns(&dns_check(addr, 1000)).await.unwrap();
        let (nx, _n) = server(|q| {
            let mut a = q.to_vec();
            a[2] |= 0x80;
            a[3] = 0x83;
            vec![a]
        })
        .await;
        let e = dns(&dns_check(nx, 1000)).await.unwrap_err().to_string();
        assert!(e.contains("SOA . answered NXDOMAIN (RCODE 3)"), "{e}");
        let (wrong, _w) = server(|q| {
            let mut a = q.to_vec();
            a[0] ^= 0xff;
            a[2] |= 0x80;
            vec![a]
        })
        .await;
        let e = dns(&dns_check(wrong, 300)).await.unwrap_err().to_string();
        assert!(
            e.contains("no answer within") && e.contains("1 other datagram"),
            "{e}"
        );
        let e = dns(&dns_check(closed_port().await, 2000))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused"), "{e}");
    }
}
