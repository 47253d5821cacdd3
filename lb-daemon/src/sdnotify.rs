//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`. Without
//! the variable (not started by systemd) it does nothing.
use std::{io, os::unix::net::UnixDatagram, path::Path};

/// Sends `state` (e.g. `READY=1`) to the socket named by `$NOTIFY_SOCKET`, if any.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(Path::new(&path), state),
        None => Ok(()),
    }
}

fn notify_to(path: &Path, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    // An abstract socket is written `@name`; the kernel wants a leading NUL instead.
    let bytes = path.as_os_str().as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("lbsdnotify{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        notify_to(&path, "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
