//! The sync socket: UDP on the sync interface, multicast (IPVS's way: a group, TTL 1 by
//! default, no loopback) or unicast to each peer.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, RawFd},
    time::Duration,
};

use crate::config::SyncConfig;

/// Socket buffers: room for a burst of messages while the engine installs a batch.
const BUFFER_BYTES: libc::c_int = 4 << 20;

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `v` is a valid value of the option's type, of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    check(rc, what)
}

/// Every address of every interface of this node (its own messages must not count as a
/// peer's).
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below; each node is read only while
    // the list lives, and each address by its family's type.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match i32::from((*a).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The bound, configured socket and where its messages go.
pub struct SyncSocket {
    pub socket: UdpSocket,
    pub destinations: Vec<SocketAddr>,
}

impl SyncSocket {
    pub fn open(c: &SyncConfig) -> io::Result<SyncSocket> {
        let v6 = c.multicast_group.is_none() && c.peers.iter().any(IpAddr::is_ipv6);
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket call; the fd is owned by the UdpSocket right after.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        check(fd, "socket")?;
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let socket = unsafe { UdpSocket::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one,
            "SO_REUSEADDR",
        )?;
        let dev = std::ffi::CString::new(c.interface.as_str())
            .map_err(|_| io::Error::other("interface name"))?;
        // SAFETY: the name is NUL-terminated; the length includes the NUL.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.as_bytes_with_nul().len() as libc::socklen_t,
            )
        };
        check(rc, &format!("SO_BINDTODEVICE {}", c.interface))?;
        setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &BUFFER_BYTES,
            "SO_RCVBUF",
        )?;
        setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &BUFFER_BYTES,
            "SO_SNDBUF",
        )?;
        let local: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, c.port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, c.port).into()
        };
        bind(fd, &local)?;
        if let Some(group) = c.multicast_group {
            let index = crate::os::ifindex(&c.interface)? as libc::c_int;
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from(group).to_be(),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: index,
            };
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_ADD_MEMBERSHIP,
                &mreq,
                "IP_ADD_MEMBERSHIP",
            )?;
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreq,
                "IP_MULTICAST_IF",
            )?;
            socket.set_multicast_ttl_v4(u32::from(c.ttl))?;
            socket.set_multicast_loop_v4(false)?;
        }
        Ok(SyncSocket {
            socket,
            destinations: c.destinations(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Waits until a datagram can be read, or `timeout`.
    pub fn wait_readable(&self, timeout: Duration) {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(1000) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}

fn bind(fd: RawFd, a: &SocketAddr) -> io::Result<()> {
    let rc = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid sockaddr_in of its size.
            unsafe {
                libc::bind(
                    fd,
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: a valid sockaddr_in6 of its size.
            unsafe {
                libc::bind(
                    fd,
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    check(rc, &format!("bind {a}"))
}
