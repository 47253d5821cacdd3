//! The few operating-system calls the daemon makes that no crate of ours wraps: the
//! monotonic clock, interface names, and the socket options `socket2` has no setter for.
//! `std::time::Instant` reads the same clock but does not expose its value, which the XDP
//! program's `CLOCK` map and VRRP's packet timestamps need as a number.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    time::Duration,
};

/// CLOCK_MONOTONIC, the clock of every protocol timer and of the XDP program's `CLOCK`.
pub fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The index of interface `name` in the daemon's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is too long"),
        ));
    }
    let c = std::ffi::CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} holds a NUL"),
        )
    })?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("no interface {name:?}: {e}"),
        ));
    }
    Ok(i)
}

/// `setsockopt(fd, level, name, value)`, for the options `socket2` (and `netlink-sys`) have
/// no setter for: `SO_TIMESTAMPNS`, `IPV6_RECVPKTINFO`, `SO_RCVBUFFORCE`, and
/// `IP_MULTICAST_IF` by interface index (a `struct ip_mreqn`; socket2 only takes an
/// address). Everything else goes through `socket2::Socket` / `socket2::SockRef`. `T` is the
/// option's C type (`c_int` or a plain C struct); an error names the option (`what`).
pub fn set_option<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed, which the kernel only reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert_eq!(ifindex("lo").unwrap(), 1);
        assert_eq!(
            ifindex("lb-no-such-if").unwrap_err().to_string(),
            "no interface \"lb-no-such-if\": No such device (os error 19)"
        );
        assert_eq!(
            ifindex("a-name-longer-than-15").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(monotonic() > Duration::ZERO);
    }

    #[test]
    fn socket_options() {
        use std::os::fd::AsFd;
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_option(
            s.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &(1 as libc::c_int),
            "SO_TIMESTAMPNS",
        )
        .unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int out-parameter of the length passed.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!((rc, v), (0, 1));
        // An option the socket's level does not know: the error names it.
        let e = set_option(s.as_fd(), libc::SOL_SOCKET, -1, &1, "BOGUS").unwrap_err();
        assert!(e.to_string().starts_with("BOGUS: "), "{e}");
    }
}
