//! Raw IP protocol-112 sockets: sending adverts with TTL/hop limit 255 and DSCP CS6 from a
//! chosen source address, and receiving them with the TTL and addresses the checks need.
//!
//! One socket per instance, bound to its interface. Multicast (224.0.0.18, ff02::12) is
//! joined only for a multicast instance; a unicast instance never sends to or joins the group,
//! so it cannot fall back to multicast.
//!
//! The kernel gives every protocol-112 socket bound to an interface its own copy of each
//! datagram, and drops a copy when that socket's receive queue is full. So the drops of a
//! socket ([`VrrpSocket::drops`]) are exactly the adverts its instance never saw, whatever
//! VRID they carried: they are counted per instance, with no sharing to apportion.
use std::{
    io,
    mem::{size_of, size_of_val, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{IP_PROTO_VRRP, MULTICAST_V4, MULTICAST_V6};
use crate::os;

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

/// The IPv4 TOS byte and IPv6 traffic class of every advert: DSCP CS6, network control
/// (RFC 4594), as keepalived marks them (`IPTOS_PREC_INTERNETCONTROL`), so that a switch
/// that queues by DSCP does not drop adverts behind bulk traffic and flap the VIPs.
pub const ADVERT_TOS: u8 = 0xc0;

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

/// `e` with the operation that failed in front, as [`check`] reports it.
fn failed(op: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{op}: {e}"))
}

impl VrrpSocket {
    /// A protocol-112 socket on `ifname` (index `ifindex`); joins the VRRP group when
    /// `multicast`.
    pub fn open(ifname: &str, ifindex: u32, v6: bool, multicast: bool) -> io::Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // Close-on-exec (socket2's default) and non-blocking from the start.
        let socket = Socket::new(
            domain,
            Type::RAW.nonblocking(),
            Some(Protocol::from(libc::c_int::from(IP_PROTO_VRRP))),
        )
        .map_err(failed("socket(IPPROTO_VRRP)"))?;
        socket
            .bind_device(Some(ifname.as_bytes()))
            .map_err(failed("SO_BINDTODEVICE"))?;
        let ttl = 255;
        let on: libc::c_int = 1;
        // The kernel's receive time of each advert: the Master_Down timer restarts from the
        // advert's arrival, not from when this thread got to it (see `runtime::arrival`).
        os::set_option(
            socket.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on,
            "SO_TIMESTAMPNS",
        )?;
        if v6 {
            socket
                .set_multicast_hops_v6(ttl)
                .map_err(failed("IPV6_MULTICAST_HOPS"))?;
            socket
                .set_unicast_hops_v6(ttl)
                .map_err(failed("IPV6_UNICAST_HOPS"))?;
            // Our own adverts must not come back to us.
            socket
                .set_multicast_loop_v6(false)
                .map_err(failed("IPV6_MULTICAST_LOOP"))?;
            socket
                .set_multicast_if_v6(ifindex)
                .map_err(failed("IPV6_MULTICAST_IF"))?;
            socket
                .set_tclass_v6(ADVERT_TOS.into())
                .map_err(failed("IPV6_TCLASS"))?;
            socket
                .set_recv_hoplimit_v6(true)
                .map_err(failed("IPV6_RECVHOPLIMIT"))?;
            os::set_option(
                socket.as_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_RECVPKTINFO,
                &on,
                "IPV6_RECVPKTINFO",
            )?;
            if multicast {
                socket
                    .join_multicast_v6(&MULTICAST_V6, ifindex)
                    .map_err(failed("IPV6_ADD_MEMBERSHIP"))?;
            }
        } else {
            socket
                .set_multicast_ttl_v4(ttl)
                .map_err(failed("IP_MULTICAST_TTL"))?;
            socket.set_ttl_v4(ttl).map_err(failed("IP_TTL"))?;
            socket
                .set_tos_v4(ADVERT_TOS.into())
                .map_err(failed("IP_TOS"))?;
            socket
                .set_multicast_loop_v4(false)
                .map_err(failed("IP_MULTICAST_LOOP"))?;
            // Only the groups joined on this socket, not every group any socket joined.
            socket
                .set_multicast_all_v4(false)
                .map_err(failed("IP_MULTICAST_ALL"))?;
            // By index (`ip_mreqn`), which socket2's setter cannot give.
            let mreqn = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(MULTICAST_V4.octets()),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: ifindex as libc::c_int,
            };
            os::set_option(
                socket.as_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreqn,
                "IP_MULTICAST_IF",
            )?;
            if multicast {
                socket
                    .join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))
                    .map_err(failed("IP_ADD_MEMBERSHIP"))?;
            }
        }
        // SAFETY: the OwnedFd stays inside the AsyncFd for the socket's whole life.
        let fd = unsafe {
            AsyncFd::register_with_interest(OwnedFd::from(socket), tokio::io::Interest::READABLE)
        }
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

    /// The socket's cumulative count of datagrams the kernel dropped for it (its receive
    /// queue was full), `sk_drops`, as SO_MEMINFO reports it. A u32 that wraps: accumulate
    /// it with [`DropCounter`].
    ///
    /// SO_MEMINFO rather than SO_RXQ_OVFL: the latter only hands the count over with the
    /// next datagram read, so the drops at the end of a flood would stay unseen until another
    /// advert arrives, which may be never for a master alone on its LAN.
    pub fn drops(&self) -> io::Result<u32> {
        let mut info = [0u32; MEMINFO_VARS];
        let mut len = size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info` and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        check(rc, "SO_MEMINFO")?;
        let at = libc::SK_MEMINFO_DROPS as usize;
        if (len as usize) < (at + 1) * size_of::<u32>() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("SO_MEMINFO returned {len} bytes, without the drop count"),
            ));
        }
        Ok(info[at])
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

/// `SK_MEMINFO_VARS` of the kernel's `sock_diag.h` (libc does not export it): the drop
/// count is the last of them.
const MEMINFO_VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;

/// A socket's drop count (a u32 that wraps) accumulated into a total that does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounter {
    /// The kernel's count at the last reading (it starts at 0 with the socket).
    last: u32,
    total: u64,
}

impl DropCounter {
    /// Takes a new reading of the kernel's count; returns how many drops it adds.
    pub fn update(&mut self, cumulative: u32) -> u64 {
        // The kernel's counter only grows, so any difference is growth, across a wrap too
        // (readings come from one thread, in order).
        let added = u64::from(cumulative.wrapping_sub(self.last));
        self.last = cumulative;
        self.total += added;
        added
    }

    /// Every drop since the socket was opened.
    pub fn total(&self) -> u64 {
        self.total
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
    /// where the raw socket delivers the IP header and no other ancillary data is read;
    /// that header's TOS byte says the advert left marked CS6.
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
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv(&mut buf))
                .await
                .expect("no advert in 10 s")
                .expect("recv")
                .expect("an IPv4 datagram");
            (got, buf[1])
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().expect("sender");
        let (got, tos) = got;
        assert_eq!(tos, 0xc0, "the advert's TOS byte: CS6");
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

    /// Both families' sockets mark what they send CS6 (the IPv4 wire is checked above; the
    /// namespace tests check both against keepalived).
    #[test]
    fn sockets_of_both_families_mark_adverts_cs6_in_netns() {
        if !privileged("socket::sockets_of_both_families_mark_adverts_cs6_in_netns") {
            return;
        }
        let ns = Netns::create("vsockt");
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        let (v4, v6) = in_netns(&ns.0, || async {
            let marks = |v6: bool| {
                let s = VrrpSocket::open("lo", ifindex("lo"), v6, false).expect("open");
                let s = socket2::SockRef::from(s.fd.get_ref());
                if v6 {
                    s.tclass_v6().expect("IPV6_TCLASS")
                } else {
                    s.tos_v4().expect("IP_TOS")
                }
            };
            (marks(false), marks(true))
        });
        assert_eq!((v4, v6), (0xc0, 0xc0));
    }

    #[test]
    fn drop_counts_accumulate_across_the_wrap() {
        let mut c = DropCounter::default();
        assert_eq!(c.update(0), 0);
        assert_eq!(c.update(5), 5);
        assert_eq!(c.update(5), 0);
        assert_eq!(c.update(u32::MAX - 1), u64::from(u32::MAX) - 6);
        assert_eq!(c.update(3), 5, "wrapped: MAX-1 -> MAX -> 0 -> 1 -> 2 -> 3");
        assert_eq!(c.total(), u64::from(u32::MAX) + 4);
    }

    /// A socket that is not read fills up; what the kernel drops then shows in
    /// [`VrrpSocket::drops`] (SO_MEMINFO), without reading a datagram.
    #[test]
    fn drops_of_a_full_receive_queue_are_counted_in_netns() {
        if !privileged("socket::drops_of_a_full_receive_queue_are_counted_in_netns") {
            return;
        }
        let (na, nb) = (Netns::create("vsdra"), Netns::create("vsdrb"));
        ip(&[
            "-n", &na.0, "link", "add", "vd0", "type", "veth", "peer", "name", "vd1", "netns",
            &nb.0,
        ]);
        for (ns, iface, v4) in [(&na, "vd0", "192.0.2.1/24"), (&nb, "vd1", "192.0.2.2/24")] {
            ip(&["-n", &ns.0, "addr", "add", v4, "dev", iface]);
            ip(&["-n", &ns.0, "link", "set", iface, "up"]);
        }
        let src = IpAddr::from([192, 0, 2, 1]);
        let sender_ns = na.0.clone();
        let (drops, queued) = in_netns(&nb.0, move || async move {
            let rx = VrrpSocket::open("vd1", ifindex("vd1"), false, true).expect("open");
            // The kernel rounds this up to its minimum (a few KiB): a handful of datagrams.
            socket2::SockRef::from(rx.fd.get_ref())
                .set_recv_buffer_size(1)
                .expect("SO_RCVBUF");
            assert_eq!(rx.drops().expect("SO_MEMINFO"), 0);
            let (ns, stop) = (
                sender_ns,
                std::time::Instant::now() + Duration::from_secs(10),
            );
            std::thread::spawn(move || {
                in_netns(&ns, move || async move {
                    let tx = VrrpSocket::open("vd0", ifindex("vd0"), false, true).expect("open");
                    let advert = [0x31, 51, 100, 1, 0, 100, 0, 0, 192, 0, 2, 100];
                    // 2000 datagrams: far more than the queue holds.
                    for _ in 0..2000 {
                        if std::time::Instant::now() > stop {
                            break;
                        }
                        let _ = tx.send(&advert, src, MULTICAST_V4.into());
                    }
                })
            })
            .join()
            .expect("sender");
            let mut drops = 0;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while drops == 0 && std::time::Instant::now() < deadline {
                drops = rx.drops().expect("SO_MEMINFO");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut buf = [0u8; 256];
            let mut queued = 0u32;
            while rx.try_recv(&mut buf).is_ok() {
                queued += 1;
            }
            (drops, queued)
        });
        assert!(drops > 0, "no drops counted ({queued} datagrams queued)");
        assert!(
            drops + queued <= 2000,
            "{drops} dropped + {queued} queued > 2000 sent"
        );
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
