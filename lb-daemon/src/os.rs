//! The few operating-system calls the daemon makes that no crate of ours wraps: the
//! monotonic clock and interface names. `std::time::Instant` reads the same clock but does
//! not expose its value, which the XDP program's `CLOCK` map and VRRP's packet timestamps
//! need as a number.
use std::{io, time::Duration};

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
}
