//! The sync socket: UDP on the sync interface, multicast (IPVS's way: a group, TTL 1 by
//! default, no loopback) or unicast to each peer.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsFd, AsRawFd, RawFd},
    time::Duration,
};

use socket2::{Domain, InterfaceIndexOrAddress, Socket, Type};

use crate::config::SyncConfig;

/// Socket buffers: room for a burst of messages while the engine installs a batch.
const BUFFER_BYTES: usize = 4 << 20;

/// `e` with what failed in front.
fn failed(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
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
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        // Close-on-exec (socket2's default) and non-blocking from the start.
        let socket =
            Socket::new(domain, Type::DGRAM.nonblocking(), None).map_err(failed("socket"))?;
        socket
            .set_reuse_address(true)
            .map_err(failed("SO_REUSEADDR"))?;
        let dev = std::ffi::CString::new(c.interface.as_str())
            .map_err(|_| io::Error::other("interface name"))?;
        socket
            .bind_device(Some(dev.as_bytes_with_nul()))
            .map_err(failed(&format!("SO_BINDTODEVICE {}", c.interface)))?;
        socket
            .set_recv_buffer_size(BUFFER_BYTES)
            .map_err(failed("SO_RCVBUF"))?;
        socket
            .set_send_buffer_size(BUFFER_BYTES)
            .map_err(failed("SO_SNDBUF"))?;
        let local: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, c.port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, c.port).into()
        };
        socket
            .bind(&local.into())
            .map_err(failed(&format!("bind {local}")))?;
        if let Some(group) = c.multicast_group {
            let index = crate::os::ifindex(&c.interface)?;
            socket
                .join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(index))
                .map_err(failed("IP_ADD_MEMBERSHIP"))?;
            // By index (`ip_mreqn`), which socket2's setter cannot give.
            let mreq = libc::ip_mreqn {
                imr_multiaddr: libc::in_addr {
                    s_addr: u32::from(group).to_be(),
                },
                imr_address: libc::in_addr { s_addr: 0 },
                imr_ifindex: index as libc::c_int,
            };
            crate::os::set_option(
                socket.as_fd(),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreq,
                "IP_MULTICAST_IF",
            )?;
            socket.set_multicast_ttl_v4(u32::from(c.ttl))?;
            socket.set_multicast_loop_v4(false)?;
        }
        Ok(SyncSocket {
            socket: socket.into(),
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
