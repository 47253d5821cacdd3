//! Raw IP protocol-112 sockets: sending adverts with TTL/hop limit 255 from a chosen source
//! address, and receiving them with the TTL and addresses the checks need.
//!
//! One socket per instance, bound to its interface. Multicast (224.0.0.18, ff02::12) is
//! joined only for a multicast instance; a unicast instance never sends to or joins the group,
//! so it cannot fall back to multicast.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

use super::packet::{IP_PROTO_VRRP, MULTICAST_V4, MULTICAST_V6};

/// What one datagram brought, the VRRP message being `buf[payload]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub payload: std::ops::Range<usize>,
    /// When the kernel received the datagram (SO_TIMESTAMPNS: CLOCK_REALTIME), if it said.
    pub arrived: Option<std::time::Duration>,
}

/// Why a datagram could not even be read as IP (counted like any other discard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("IPv4 header truncated or inconsistent")]
    BadIpv4Header,
    #[error("hop limit or destination missing from the IPv6 ancillary data")]
    MissingAncillary,
}

pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
    v6: bool,
    ifindex: u32,
}

fn check(rc: libc::c_int, op: &'static str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{op}: {e}")));
    }
    Ok(rc)
}

fn setsockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    op: &'static str,
) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, op).map(|_| ())
}

impl VrrpSocket {
    /// A protocol-112 socket on `ifname` (index `ifindex`); joins the VRRP group when
    /// `multicast`.
    pub fn open(ifname: &str, ifindex: u32, v6: bool, multicast: bool) -> io::Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2).
        let raw = check(
            unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    IP_PROTO_VRRP.into(),
                )
            },
            "socket(IPPROTO_VRRP)",
        )?;
        // SAFETY: a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let fd = owned.as_raw_fd();
        // SAFETY: the name bytes and their length.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                ifname.as_ptr().cast(),
                ifname.len() as libc::socklen_t,
            )
        };
        check(rc, "SO_BINDTODEVICE")?;
        let ttl: libc::c_int = 255;
        let off: libc::c_int = 0;
        let on: libc::c_int = 1;
        // The kernel's receive time of each advert: the Master_Down timer restarts from the
        // advert's arrival, not from when this thread got to it (see `runtime::arrival`).
        setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on,
            "SO_TIMESTAMPNS",
        )?;
        if v6 {
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_HOPS,
                &ttl,
                "IPV6_MULTICAST_HOPS",
            )?;
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                &ttl,
                "IPV6_UNICAST_HOPS",
            )?;
            // Our own adverts must not come back to us.
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_LOOP,
                &off,
                "IPV6_MULTICAST_LOOP",
            )?;
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_IF,
                &(ifindex as libc::c_int),
                "IPV6_MULTICAST_IF",
            )?;
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVHOPLIMIT,
                &on,
                "IPV6_RECVHOPLIMIT",
            )?;
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVPKTINFO,
                &on,
                "IPV6_RECVPKTINFO",
            )?;
            if multicast {
                let mreq = libc::ipv6_mreq {
                    ipv6mr_multiaddr: libc::in6_addr {
                        s6_addr: MULTICAST_V6.octets(),
                    },
                    ipv6mr_interface: ifindex,
                };
                setsockopt(
                    fd,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_ADD_MEMBERSHIP,
                    &mreq,
                    "IPV6_ADD_MEMBERSHIP",
                )?;
            }
        } else {
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_TTL,
                &ttl,
                "IP_MULTICAST_TTL",
            )?;
            setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &ttl, "IP_TTL")?;
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_LOOP,
                &off,
                "IP_MULTICAST_LOOP",
            )?;
            // Only the groups joined on this socket, not every group any socket joined.
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_ALL,
                &off,
                "IP_MULTICAST_ALL",
            )?;
            let mreqn = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(MULTICAST_V4.octets()),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreqn,
                "IP_MULTICAST_IF",
            )?;
            if multicast {
                setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_ADD_MEMBERSHIP,
                    &mreqn,
                    "IP_ADD_MEMBERSHIP",
                )?;
            }
        }
        // SAFETY: the OwnedFd stays inside the AsyncFd for the socket's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd, v6, ifindex })
    }

    /// Sends `payload` from `src` to `dst` (the VRRP group or a unicast peer). The source is
    /// set per datagram (IP_PKTINFO / IPV6_PKTINFO), so the advert always carries the
    /// instance's primary address whatever the routing table would pick.
    pub fn send(&self, payload: &[u8], src: IpAddr, dst: IpAddr) -> io::Result<()> {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        };
        // SAFETY: zeroed C structs filled below; every pointer stays valid across sendmsg.
        unsafe {
            let mut msg: libc::msghdr = zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            let mut cbuf = [0u64; 8];
            msg.msg_control = cbuf.as_mut_ptr().cast();
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    let mut sa: libc::sockaddr_in = zeroed();
                    sa.sin_family = libc::AF_INET as _;
                    sa.sin_addr.s_addr = u32::from_ne_bytes(d.octets());
                    msg.msg_name = (&mut sa as *mut libc::sockaddr_in).cast();
                    msg.msg_namelen = size_of::<libc::sockaddr_in>() as _;
                    msg.msg_controllen =
                        libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                    let info = libc::in_pktinfo {
                        ipi_ifindex: self.ifindex as _,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(s.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                    check(libc::sendmsg(fd, &msg, 0) as libc::c_int, "sendmsg").map(|_| ())
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    let mut sa: libc::sockaddr_in6 = zeroed();
                    sa.sin6_family = libc::AF_INET6 as _;
                    sa.sin6_addr.s6_addr = d.octets();
                    sa.sin6_scope_id = self.ifindex;
                    msg.msg_name = (&mut sa as *mut libc::sockaddr_in6).cast();
                    msg.msg_namelen = size_of::<libc::sockaddr_in6>() as _;
                    msg.msg_controllen =
                        libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as _;
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::IPPROTO_IPV6;
                    (*c).cmsg_type = libc::IPV6_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                    let info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: s.octets(),
                        },
                        ipi6_ifindex: self.ifindex,
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
                    check(libc::sendmsg(fd, &msg, 0) as libc::c_int, "sendmsg").map(|_| ())
                }
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "source and destination families differ",
                )),
            }
        }
    }

    /// Waits for the next datagram; returns its addresses, TTL and where the VRRP message lies
    /// in `buf`. A datagram whose IP framing is bad comes back as `Ok(Err(..))`.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Result<Received, RawError>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| self.recv_now(fd.get_ref().as_raw_fd(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// A datagram already queued on the socket, without waiting (`WouldBlock` when none is).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Result<Received, RawError>> {
        self.recv_now(self.fd.get_ref().as_raw_fd(), buf)
    }

    fn recv_now(&self, fd: libc::c_int, buf: &mut [u8]) -> io::Result<Result<Received, RawError>> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: zeroed C structs; the kernel writes at most the lengths given.
        unsafe {
            let mut msg: libc::msghdr = zeroed();
            let mut sa: libc::sockaddr_storage = zeroed();
            let mut cbuf = [0u64; 16];
            msg.msg_name = (&mut sa as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = size_of::<[u64; 16]>() as _;
            let n = libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = (n as usize).min(buf.len());
            let (mut ttl, mut dst, mut arrived) = (None, None, None);
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    arrived = timespec(ts);
                } else if self.v6 && (*c).cmsg_level == libc::IPPROTO_IPV6 {
                    if (*c).cmsg_type == libc::IPV6_HOPLIMIT {
                        let v: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        ttl = u8::try_from(v).ok();
                    } else if (*c).cmsg_type == libc::IPV6_PKTINFO {
                        let info: libc::in6_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            if !self.v6 {
                // Raw IPv4 sockets deliver the IP header: read TTL and addresses from it.
                return Ok(parse_ipv4(&buf[..n]).map(|r| Received { arrived, ..r }));
            }
            let sin6 = &*(&sa as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            let src = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(match (ttl, dst) {
                (Some(ttl), Some(dst)) => Ok(Received {
                    src: src.into(),
                    dst: dst.into(),
                    ttl,
                    payload: 0..n,
                    arrived,
                }),
                _ => Err(RawError::MissingAncillary),
            })
        }
    }
}

/// The IPv4 header a raw socket delivers: checked, never trusted.
pub fn parse_ipv4(d: &[u8]) -> Result<Received, RawError> {
    if d.len() < 20 || d[0] >> 4 != 4 {
        return Err(RawError::BadIpv4Header);
    }
    let ihl = usize::from(d[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([d[2], d[3]]));
    // Linux reports the total length of a delivered datagram as received; clamp to what we hold.
    if ihl < 20 || ihl > d.len() || total < ihl {
        return Err(RawError::BadIpv4Header);
    }
    let end = total.min(d.len());
    let src = Ipv4Addr::new(d[12], d[13], d[14], d[15]);
    let dst = Ipv4Addr::new(d[16], d[17], d[18], d[19]);
    Ok(Received {
        src: src.into(),
        dst: dst.into(),
        ttl: d[8],
        payload: ihl..end,
        arrived: None,
    })
}

/// A kernel timestamp as a duration since the epoch; `None` for one out of range.
fn timespec(ts: libc::timespec) -> Option<std::time::Duration> {
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    Some(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_netns::{ifindex, in_netns, ip, privileged, Netns};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// An advert comes with the kernel's receive time (SO_TIMESTAMPNS), also over IPv4,
    /// where the raw socket delivers the IP header and no other ancillary data is read.
    #[test]
    fn adverts_carry_the_kernel_receive_time_in_netns() {
        if !privileged("socket::adverts_carry_the_kernel_receive_time_in_netns") {
            return;
        }
        // Two namespaces: a datagram from an address of the receiving namespace itself
        // would be dropped as a martian.
        let (na, nb) = (Netns::create("vsocka"), Netns::create("vsockb"));
        ip(&[
            "-n", &na.0, "link", "add", "vs0", "type", "veth", "peer", "name", "vs1", "netns",
            &nb.0,
        ]);
        for (ns, iface, v4) in [(&na, "vs0", "192.0.2.1/24"), (&nb, "vs1", "192.0.2.2/24")] {
            ip(&["-n", &ns.0, "addr", "add", v4, "dev", iface]);
            ip(&["-n", &ns.0, "link", "set", iface, "up"]);
        }
        let src = IpAddr::from([192, 0, 2, 1]);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            let ns = na.0.clone();
            std::thread::spawn(move || {
                in_netns(&ns, move || async move {
                    let tx = VrrpSocket::open("vs0", ifindex("vs0"), false, true).expect("open");
                    let advert = [0x31, 51, 100, 1, 0, 100, 0, 0, 192, 0, 2, 100];
                    // Until the receiver has one (the veth may still be coming up).
                    for _ in 0..100 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        tx.send(&advert, src, MULTICAST_V4.into()).expect("send");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
        };
        let got = in_netns(&nb.0, || async {
            let rx = VrrpSocket::open("vs1", ifindex("vs1"), false, true).expect("open");
            let mut buf = [0u8; 256];
            tokio::time::timeout(Duration::from_secs(10), rx.recv(&mut buf))
                .await
                .expect("no advert in 10 s")
                .expect("recv")
                .expect("an IPv4 datagram")
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().expect("sender");
        {
            assert_eq!(got.src, src);
            let arrived = got.arrived.expect("SO_TIMESTAMPNS stamp");
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            assert!(
                arrived <= now && now - arrived < Duration::from_secs(1),
                "stamp {arrived:?}, now {now:?}"
            );
        }
    }

    #[test]
    fn ipv4_header_is_checked() {
        let mut h = vec![
            0x45, 0, 0, 28, 0, 1, 0, 0, 255, 112, 0, 0, 192, 0, 2, 1, 224, 0, 0, 18,
        ];
        h.extend_from_slice(&[0; 8]);
        let r = parse_ipv4(&h).unwrap();
        assert_eq!((r.ttl, r.payload.clone()), (255, 20..28));
        assert_eq!(r.src, IpAddr::from([192, 0, 2, 1]));
        assert_eq!(r.dst, IpAddr::from([224, 0, 0, 18]));
        for cut in 0..20 {
            assert_eq!(parse_ipv4(&h[..cut]), Err(RawError::BadIpv4Header));
        }
        let mut bad = h.clone();
        bad[0] = 0x44;
        assert_eq!(parse_ipv4(&bad), Err(RawError::BadIpv4Header));
        bad[0] = 0x4f;
        assert_eq!(
            parse_ipv4(&bad),
            Err(RawError::BadIpv4Header),
            "IHL beyond the datagram"
        );
        bad = h.clone();
        bad[3] = 10;
        assert_eq!(
            parse_ipv4(&bad),
            Err(RawError::BadIpv4Header),
            "total below IHL"
        );
    }
}
