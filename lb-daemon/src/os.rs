//! The few operating-system calls the daemon makes that no crate of ours wraps: the
//! monotonic clock, interface names, and the socket options `socket2` has no setter for.
//! `std::time::Instant` reads the same clock but does not expose its value, which the XDP
//! program's `CLOCK` map and VRRP's packet timestamps need as a number.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
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

/// A socket for interface ioctls ([`interface_flags`]) in the calling thread's namespace.
pub fn ioctl_socket() -> io::Result<OwnedFd> {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).map(OwnedFd::from)
}

/// An `ifreq` with `name` in it (and nothing else), for the interface ioctls.
fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// The flags of interface `name` (`SIOCGIFFLAGS`: `IFF_UP`, `IFF_RUNNING`...), or `None`
/// when there is no such interface. Read by an ioctl on `sock` ([`ioctl_socket`]): the
/// cheapest way to poll one interface every 100 ms, which a netlink dump is not.
pub fn interface_flags(sock: BorrowedFd<'_>, name: &str) -> io::Result<Option<libc::c_int>> {
    let mut req = ifreq_named(name)?;
    // SAFETY: req is a valid ifreq that SIOCGIFFLAGS reads the name from and writes the flags
    // into.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV | libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(Some(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags })))
}

/// Opens (creates, or attaches to an existing persistent one) the TUN device `name`, with
/// `O_CLOEXEC` so no program the daemon starts holds it. Without `persist` the kernel
/// removes the device, and every route through it, when the last descriptor closes: at any
/// exit, SIGKILL included. That is what makes `[announce]`'s routes die with the daemon.
/// A plain ioctl: the TUN crates around it bring async packet I/O this never does.
pub fn open_tun(name: &str) -> io::Result<OwnedFd> {
    let mut req = ifreq_named(name)?;
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: a valid NUL-terminated path and flags.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req is a valid ifreq that TUNSETIFF reads the name and flags from.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Whether the TUN device behind `fd` outlives its last descriptor (`TUNSETPERSIST`): cleared
/// when the daemon takes a persistent device of its name over, so that it dies with it.
pub fn set_tun_persist(fd: BorrowedFd<'_>, persist: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(persist),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An identifier of the calling thread's network namespace that is never reused during a
/// boot: `SO_NETNS_COOKIE` (Linux 5.14+), else the namespace's device and inode numbers.
/// Names what belongs to one namespace in places every namespace shares (files under
/// /run, pins under bpffs).
pub fn netns_id() -> io::Result<String> {
    if let Ok(sock) = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None) {
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // socket2 has no getter for SO_NETNS_COOKIE.
        // SAFETY: a u64 buffer with its length, on our own socket.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if r == 0 && len as usize == std::mem::size_of::<u64>() {
            return Ok(cookie.to_string());
        }
    }
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok(format!("dev{}-ino{}", m.dev(), m.ino()))
}

/// `BPF_FS_MAGIC`, include/uapi/linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a bpf filesystem (where maps and links can be pinned).
pub fn is_bpffs(path: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL"))?;
    // SAFETY: statfs is plain old data; all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Takes an exclusive lock on `path` (created) for as long as the returned file is open,
/// or says that another process holds it (`WouldBlock`). The kernel drops the lock with the
/// process, however it ends.
pub fn lock_exclusive(path: &std::path::Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// `name` as one component of a file name, in a directory every network namespace shares:
/// letters, digits, '-' and '_' as they are, any other byte as `%XX`. No two names meet
/// (the '%' is escaped too), and '.' and '/' never appear, which bpffs also asks ('.' in
/// a name is refused there): `eth0.100` is `eth0%2e100`.
pub fn file_name_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Mounts a bpf filesystem at `path` (an existing directory).
pub fn mount_bpffs(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL"))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let r = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process shares the mount namespace of PID 1. A bpf filesystem mounted in a
/// private one (`ip netns exec` gives a process its own) dies with the process, and the
/// pins on it too. In a container PID 1's namespace may be out of reach even to root
/// (`PermissionDenied`): the caller cannot tell then.
pub fn in_init_mount_namespace() -> io::Result<bool> {
    let own = std::fs::read_link("/proc/self/ns/mnt")?;
    let init = std::fs::read_link("/proc/1/ns/mnt")?;
    Ok(own == init)
}

/// A user's ids, by name (getpwnam_r, so NSS sources count, as for keepalived); `None`: no
/// such user.
pub fn user_ids(name: &str) -> io::Result<Option<(libc::uid_t, libc::gid_t)>> {
    by_name(
        name,
        // SAFETY: `by_name` passes pointers valid for the call, `buf` of `len` bytes.
        |n, entry, buf, len, result| unsafe { libc::getpwnam_r(n, entry, buf, len, result) },
        |p: &libc::passwd| (p.pw_uid, p.pw_gid),
    )
}

/// A group's id, by name (getgrnam_r); `None`: no such group.
pub fn group_id(name: &str) -> io::Result<Option<libc::gid_t>> {
    by_name(
        name,
        // SAFETY: as for `user_ids`.
        |n, entry, buf, len, result| unsafe { libc::getgrnam_r(n, entry, buf, len, result) },
        |g: &libc::group| g.gr_gid,
    )
}

/// The `get*nam_r` pattern: the entry for `name`, the buffer grown while the call asks for
/// more (to 1 MiB); what `pick` reads of it (numbers only: its strings live in the buffer).
fn by_name<T, R>(
    name: &str,
    call: impl Fn(*const libc::c_char, *mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
    pick: impl FnOnce(&T) -> R,
) -> io::Result<Option<R>> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `passwd` and `group` are plain old data; all-zero is a valid (empty) value.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(
            cname.as_ptr(),
            &mut entry,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        match rc {
            libc::ERANGE if buf.len() < 1 << 20 => {
                let len = buf.len() * 2;
                buf.resize(len, 0);
            }
            // getpwnam_r(3): "0 or ENOENT or ESRCH or EBADF or EPERM or ..." mean "not
            // found" depending on the libc and NSS module.
            0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM if result.is_null() => {
                return Ok(None)
            }
            0 => return Ok(Some(pick(&entry))),
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// The groups of a Unix socket's peer, as they were when it connected: its primary group
/// (`SO_PEERCRED`) and its supplementary groups (`SO_PEERGROUPS`, which neither std nor
/// tokio nor socket2 reads).
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<libc::gid_t>> {
    let mut cred: libc::ucred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
        // SAFETY: `groups` is writable for `len` bytes; the kernel writes at most that and
        // says how much it needs when it is not enough (ERANGE).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / std::mem::size_of::<libc::gid_t>());
            groups.push(cred.gid);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        let need = len as usize / std::mem::size_of::<libc::gid_t>();
        if e.raw_os_error() == Some(libc::ERANGE) && need > groups.len() && need <= 1 << 16 {
            groups.resize(need, 0);
            continue;
        }
        return Err(e);
    }
}

/// keepalived reads at most this much of a tracked file (`process_track_file`).
const NUMBER_FILE_READ: usize = 127;

/// A tracked file's number as keepalived reads it: `strtol(buf, NULL, 0)` over its first
/// 127 bytes (leading white space, a sign, then decimal, `0x` hexadecimal or `0` octal
/// digits, up to the first other character); no digits is 0. `None`: out of the 32-bit
/// range keepalived accepts, which it ignores (the last number stands).
pub fn parse_number_file(buf: &[u8]) -> Option<i64> {
    let mut s = buf
        .iter()
        .copied()
        .skip_while(u8::is_ascii_whitespace)
        .peekable();
    let negative = match s.peek() {
        Some(b'-') => {
            s.next();
            true
        }
        Some(b'+') => {
            s.next();
            false
        }
        _ => false,
    };
    let rest: Vec<u8> = s.collect();
    let (radix, digits) = match rest.as_slice() {
        [b'0', b'x' | b'X', d, ..] if d.is_ascii_hexdigit() => (16, &rest[2..]),
        [b'0', ..] => (8, &rest[..]),
        _ => (10, &rest[..]),
    };
    let mut value: i64 = 0;
    for &c in digits {
        let Some(d) = (c as char).to_digit(radix) else {
            break;
        };
        value = value
            .checked_mul(i64::from(radix))?
            .checked_add(i64::from(d))?;
        if value > i64::from(i32::MAX) + 1 {
            return None;
        }
    }
    let value = if negative { -value } else { value };
    (i64::from(i32::MIN)..=i64::from(i32::MAX) + 1)
        .contains(&value)
        .then_some(value)
}

/// A tracked file's number now (see [`parse_number_file`]): a missing or unreadable file
/// is 0 (keepalived's), opened without blocking (a FIFO put there does not hang the caller).
pub fn read_number_file(path: &std::path::Path) -> Option<i64> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let mut buf = [0u8; NUMBER_FILE_READ];
    let n = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|mut f| f.read(&mut buf))
    {
        Ok(n) => n,
        Err(_) => return Some(0),
    };
    parse_number_file(&buf[..n])
}

/// Enough of `/proc/PID/stat` for the name, the state and the start time (field 22): the
/// PID, the name in parentheses (a kernel thread's up to 63 bytes), then 19 numbers.
pub const STAT_HEAD: usize = 512;

/// What `/proc/PID/stat` says of a process: its name, state letter and start time (in
/// clock ticks since boot; with the PID, what tells a process from a later one that reuses
/// the PID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat<'a> {
    pub comm: &'a [u8],
    pub state: u8,
    pub start_time: u64,
}

/// Parses the start of a `/proc/PID/stat` line. The name may hold any byte, `)` included,
/// so it ends at the last `)`: what follows it (the state and numbers) has none.
pub fn parse_proc_stat(head: &[u8]) -> Option<ProcStat<'_>> {
    let open = head.iter().position(|b| *b == b'(')?;
    let close = head.iter().rposition(|b| *b == b')')?;
    let comm = head.get(open + 1..close)?;
    let rest = std::str::from_utf8(head.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = match fields.next()?.as_bytes() {
        [s] => *s,
        _ => return None,
    };
    // Fields 4 to 21 come between the state (3) and the start time (22).
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat {
        comm,
        state,
        start_time,
    })
}

/// A process that went away while it was read (or is no longer there to read).
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

/// The PIDs of every process (`/proc` lists thread-group leaders only: threads are not
/// processes here). An error reading the directory is an error: a short list would look
/// like processes that stopped.
pub fn proc_pids() -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// Reads at most `buf.len()` bytes of `/proc/PID/FILE` into `buf`: `Ok(None)` when the
/// process is gone, any other failure (out of descriptors...) an error, never a process
/// that seems to have stopped. `path` is scratch space, reused between calls.
pub fn read_proc_file(
    pid: u32,
    file: &str,
    path: &mut String,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    use std::{fmt::Write, io::Read};
    path.clear();
    let _ = write!(path, "/proc/{pid}/{file}");
    let mut f = match std::fs::File::open(&*path) {
        Ok(f) => f,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if gone(&e) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn proc_stat_heads() {
        let line = b"1234 (nginx) S 1 1234 1234 0 -1 4194560 120 0 0 0 0 0 0 0 20 0 1 0 \
                     98765 10096640 300 18446744073709551615";
        assert_eq!(
            parse_proc_stat(line),
            Some(ProcStat {
                comm: b"nginx",
                state: b'S',
                start_time: 98765
            })
        );
        // A name may hold spaces and parentheses: it ends at the last `)`.
        let odd = b"77 (a) b (c)) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 555";
        let p = parse_proc_stat(odd).unwrap();
        assert_eq!(
            (p.comm, p.state, p.start_time),
            (&b"a) b (c)"[..], b'Z', 555)
        );
        assert_eq!(parse_proc_stat(b"77 (cut"), None);
        assert_eq!(
            parse_proc_stat(b"77 (x) S 1 2"),
            None,
            "cut before the start time"
        );
        assert_eq!(parse_proc_stat(b""), None);
        assert_eq!(parse_proc_stat(b")("), None);
    }

    #[test]
    fn this_process_is_read() {
        let me = std::process::id();
        assert!(proc_pids().unwrap().contains(&me));
        let (mut path, mut buf) = (String::new(), [0u8; STAT_HEAD]);
        let n = read_proc_file(me, "stat", &mut path, &mut buf)
            .unwrap()
            .unwrap();
        let stat = parse_proc_stat(&buf[..n]).unwrap();
        let comm = std::fs::read("/proc/self/comm").unwrap();
        assert_eq!(stat.comm, &comm[..comm.len() - 1]);
        assert!(stat.start_time > 0);
        // Bounded: only what fits.
        let mut two = [0u8; 2];
        assert_eq!(
            read_proc_file(me, "cmdline", &mut path, &mut two).unwrap(),
            Some(2)
        );
        // No such process: gone, not an error.
        assert_eq!(
            read_proc_file(u32::MAX, "stat", &mut path, &mut buf).unwrap(),
            None
        );
    }

    #[test]
    fn namespaces_and_filesystems() {
        let id = netns_id().unwrap();
        assert!(!id.is_empty());
        assert_eq!(netns_id().unwrap(), id, "the same namespace, the same id");
        assert!(!is_bpffs(std::path::Path::new("/proc")).unwrap());
        assert!(is_bpffs(std::path::Path::new("/no/such/path")).is_err());
        // An answer, or PID 1's namespace is out of reach: in a container, /proc/1/ns can
        // be refused even to root (EACCES here), so a caller must handle "cannot tell".
        match in_init_mount_namespace() {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        }
    }

    #[test]
    fn loopback_flags() {
        let sock = ioctl_socket().unwrap();
        let lo = interface_flags(sock.as_fd(), "lo").unwrap().unwrap();
        assert_ne!(lo & libc::IFF_LOOPBACK, 0);
        assert_eq!(
            interface_flags(sock.as_fd(), "lb-no-such-if").unwrap(),
            None
        );
        assert!(interface_flags(sock.as_fd(), "").is_err());
        assert!(interface_flags(sock.as_fd(), "a-name-longer-than-15").is_err());
    }

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
