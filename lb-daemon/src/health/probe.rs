//! The probes: one async function per check kind, each bounded by its timeout, sharing
//! nothing, holding nothing after it returns (a socket or a script dies with the future, so a
//! cancelled probe leaves nothing behind either).
//!
//! * `TCP_CHECK`: a connection to `connect_ip:connect_port`, from `bindto` when set, within
//!   `connect_timeout`; then closed (keepalived's `tcp_check_thread` does the same).
//! * `HTTP_GET`: for each url, within `connect_timeout` for the whole exchange: connect, send
//!   [`http::request`], read at most [`http::MAX_RESPONSE`] bytes until the head is complete
//!   (and, when the body is checked, until the body ends: [`http::MAX_DIGEST_RESPONSE`] with a
//!   `digest`; `body_contains` alone stops at its substring). A reset, a close before the
//!   head, a head that is not HTTP/1.x, a status outside `status_code`, a body that fails
//!   `body_contains`, `regex` or `digest`, or silence until the deadline are failures.
//! * `TCP_CHECK` with `via_tunnel`: a SYN to the VIP, wrapped as the dataplane wraps the real
//!   server's traffic (see [`super::tunnel_wire`]), within `connect_timeout`: up when the
//!   VIP's SYN-ACK comes back (read from a packet socket), which is then reset; a RST from the
//!   VIP or silence are failures. Needs CAP_NET_RAW, as the dataplane does.
//! * `MISC_CHECK`: [`run_command`] as the check's user with `misc_timeout` (the process group
//!   is killed after it). Exit 0 passes; with `misc_dynamic`, 2..=255 passes with weight
//!   status - 2 (keepalived's `check_misc.c`); anything else fails.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::{timeout_at, Instant},
};

use super::{
    datagram,
    engine::ProbeResult,
    http, ping, smtp,
    tls::{self, TlsClient},
    tunnel_wire::{self, Answer, Carrier},
};
use crate::{
    config::check::{
        Connect, DnsCheck, HttpGet, MiscCheck, PingCheck, SmtpCheck, Tls, TunnelTcp, UdpCheck, Url,
    },
    script::{run_command, RunOutcome, ScriptUser},
};

/// A check as a probe runs it: the configuration, with a MISC_CHECK's user resolved and an
/// SSL_GET's TLS client built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    Tcp(Connect),
    TcpTunnel(TunnelTcp),
    Http(HttpGet),
    Ssl { check: HttpGet, client: TlsClient },
    Misc { check: MiscCheck, user: ScriptUser },
    Dns(DnsCheck),
    Udp(UdpCheck),
    Ping(PingCheck),
    Smtp(SmtpCheck),
    File(FileProbe),
}

/// A `FILE_CHECK` as its probe runs it: the `track_file` resolved, the real server's own
/// weight known.
#[derive(Debug, Clone)]
pub struct FileProbe {
    pub name: String,
    pub path: std::path::PathBuf,
    pub weight: i32,
    pub reverse: bool,
    /// The real server's configured weight, which a weighted check moves.
    pub base: u32,
    /// The last number read: one out of the 32-bit range is ignored and this stands, as in
    /// keepalived (shared by the probes of one check; not part of its identity).
    last: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl PartialEq for FileProbe {
    fn eq(&self, o: &Self) -> bool {
        (&self.name, &self.path, self.weight, self.reverse, self.base)
            == (&o.name, &o.path, o.weight, o.reverse, o.base)
    }
}

impl Eq for FileProbe {}

impl FileProbe {
    pub fn new(
        name: String,
        path: std::path::PathBuf,
        weight: i32,
        reverse: bool,
        base: u32,
    ) -> Self {
        FileProbe {
            name,
            path,
            weight,
            reverse,
            base,
            last: Default::default(),
        }
    }

    /// The number now: the file's, else (out of range) the last one read.
    pub fn number(&self) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        match crate::os::read_number_file(&self.path) {
            Some(n) => {
                self.last.store(n, Relaxed);
                n
            }
            None => self.last.load(Relaxed),
        }
    }

    /// Unweighted: up while the number is 0 (`reverse`: not 0). Weighted: up, with the real
    /// server's weight plus number x weight (negated by `reverse`), in IPVS's 0..=65535.
    pub fn judge(&self, number: i64) -> Result<Option<u32>, String> {
        if self.weight == 0 {
            return if (number != 0) != self.reverse {
                Err(format!("track_file {} reads {number}", self.name))
            } else {
                Ok(None)
            };
        }
        let sign = if self.reverse { -1 } else { 1 };
        let w = i64::from(self.base) + number * i64::from(self.weight) * sign;
        Ok(Some(w.clamp(0, i64::from(crate::config::MAX_WEIGHT)) as u32))
    }
}

impl ProbeSpec {
    /// keepalived's block name.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeSpec::Tcp(_) | ProbeSpec::TcpTunnel(_) => "TCP_CHECK",
            ProbeSpec::Http(_) => "HTTP_GET",
            ProbeSpec::Ssl { .. } => "SSL_GET",
            ProbeSpec::Misc { .. } => "MISC_CHECK",
            ProbeSpec::Dns(_) => "DNS_CHECK",
            ProbeSpec::Udp(_) => "UDP_CHECK",
            ProbeSpec::Ping(_) => "PING_CHECK",
            ProbeSpec::Smtp(_) => "SMTP_CHECK",
            ProbeSpec::File(_) => "FILE_CHECK",
        }
    }

    /// The port probed (0 for a script or an echo).
    pub fn port(&self) -> u16 {
        match self {
            ProbeSpec::Tcp(c) => c.dest.port(),
            ProbeSpec::TcpTunnel(t) => t.connect.dest.port(),
            ProbeSpec::Http(h) | ProbeSpec::Ssl { check: h, .. } => h.connect.dest.port(),
            ProbeSpec::Dns(d) => d.connect.dest.port(),
            ProbeSpec::Udp(u) => u.connect.dest.port(),
            ProbeSpec::Smtp(m) => m.connect.dest.port(),
            ProbeSpec::Misc { .. } | ProbeSpec::Ping(_) | ProbeSpec::File(_) => 0,
        }
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("bind to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect to {dest}: {source}")]
    Connect {
        dest: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect to {dest}: no answer within {timeout:?}")]
    ConnectTimeout { dest: SocketAddr, timeout: Duration },
    #[error("GET {path} from {dest}: {source}")]
    Io {
        dest: SocketAddr,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("GET {path} from {dest}: no complete response within {timeout:?} ({got} bytes)")]
    Timeout {
        dest: SocketAddr,
        path: String,
        timeout: Duration,
        got: usize,
    },
    #[error("GET {path} from {dest}: connection closed after {got} bytes, before the end of the response head")]
    Closed {
        dest: SocketAddr,
        path: String,
        got: usize,
    },
    #[error("GET {path} from {dest}: {reason}")]
    Malformed {
        dest: SocketAddr,
        path: String,
        reason: String,
    },
    #[error("GET {path} from {dest}: status {status}, expected {expected}")]
    Status {
        dest: SocketAddr,
        path: String,
        status: u16,
        expected: String,
    },
    #[error("GET {path} from {dest}: no {needle:?} in the first {read} bytes of the body")]
    Body {
        dest: SocketAddr,
        path: String,
        needle: String,
        read: usize,
    },
    #[error("GET {path} from {dest}: the body {} /{pattern}/ (first {read} bytes)", if *matched { "matches" } else { "does not match" })]
    Regex {
        dest: SocketAddr,
        path: String,
        pattern: String,
        matched: bool,
        read: usize,
    },
    #[error("GET {path} from {dest}: body digest {got}, expected {expected}")]
    Digest {
        dest: SocketAddr,
        path: String,
        got: String,
        expected: String,
    },
    #[error("GET {path} from {dest}: the body is longer than the {limit} bytes a digest is computed over")]
    TooLongToDigest {
        dest: SocketAddr,
        path: String,
        limit: usize,
    },
    #[error("{program}: {outcome}")]
    Script { program: String, outcome: String },
    #[error("{vip} through the tunnel to {dest}: {what}: {source}")]
    Tunnel {
        vip: SocketAddr,
        dest: IpAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{vip} through the tunnel to {dest}: refused (RST)")]
    TunnelRefused { vip: SocketAddr, dest: IpAddr },
    #[error("{vip} through the tunnel to {dest}: no answer from the VIP within {timeout:?}")]
    TunnelTimeout {
        vip: SocketAddr,
        dest: IpAddr,
        timeout: Duration,
    },
    #[error("GET {path} from {dest}: TLS: {source}")]
    Tls {
        dest: SocketAddr,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A datagram probe's send or receive failed: an ICMP error (refused: port unreachable)
    /// or a local one.
    #[error("{check} to {dest}: {source}")]
    Datagram {
        check: &'static str,
        dest: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{check} to {dest}: no answer within {timeout:?}{}", ignored_note(*ignored))]
    Silent {
        check: &'static str,
        dest: SocketAddr,
        timeout: Duration,
        /// Datagrams that came but were not the answer.
        ignored: u32,
    },
    #[error("FILE_CHECK: {reason}")]
    File { reason: String },
    /// An answer that fails the check.
    #[error("{check} to {dest}: {reason}")]
    Answer {
        check: &'static str,
        dest: SocketAddr,
        reason: String,
    },
}

fn ignored_note(n: u32) -> String {
    match n {
        0 => String::new(),
        1 => " (1 other datagram ignored)".into(),
        n => format!(" ({n} other datagrams ignored)"),
    }
}

/// Runs one probe to the end; never panics, never outlives its timeouts.
pub async fn run(spec: &ProbeSpec) -> ProbeResult {
    let start = Instant::now();
    let outcome = match spec {
        ProbeSpec::Tcp(c) => tcp(c).await.map(|()| None),
        ProbeSpec::TcpTunnel(t) => tcp_via_tunnel(t).await.map(|()| None),
        ProbeSpec::Http(h) => http_get(h, None).await.map(|()| None),
        ProbeSpec::Ssl { check, client } => http_get(check, Some(client)).await.map(|()| None),
        ProbeSpec::Misc { check, user } => misc(check, user).await,
        ProbeSpec::Dns(d) => datagram::dns(d).await.map(|()| None),
        ProbeSpec::Udp(u) => datagram::udp(u).await.map(|()| None),
        ProbeSpec::Ping(p) => ping::ping(p).await.map(|()| None),
        ProbeSpec::Smtp(m) => smtp::smtp(m).await.map(|()| None),
        ProbeSpec::File(f) => f
            .judge(f.number())
            .map_err(|reason| ProbeError::File { reason }),
    };
    ProbeResult {
        latency: start.elapsed(),
        outcome: outcome.map_err(|e| e.to_string()),
    }
}

pub(super) async fn connect(c: &Connect, deadline: Instant) -> Result<TcpStream, ProbeError> {
    let dest = c.dest;
    let sock = if dest.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| ProbeError::Connect { dest, source })?;
    if let Some(ip) = c.bindto {
        let addr = SocketAddr::new(ip, 0);
        sock.bind(addr)
            .map_err(|source| ProbeError::Bind { addr, source })?;
    }
    match timeout_at(deadline, sock.connect(dest)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ProbeError::Connect { dest, source }),
        Err(_) => Err(ProbeError::ConnectTimeout {
            dest,
            timeout: c.timeout,
        }),
    }
}

/// `TCP_CHECK`.
pub async fn tcp(c: &Connect) -> Result<(), ProbeError> {
    connect(c, Instant::now() + c.timeout).await.map(drop)
}

/// `TCP_CHECK` with `via_tunnel`.
pub async fn tcp_via_tunnel(t: &TunnelTcp) -> Result<(), ProbeError> {
    let deadline = Instant::now() + t.connect.timeout;
    let dest = t.connect.dest.ip();
    let vip = SocketAddr::new(t.vip, t.connect.dest.port());
    let fail = |what| {
        move |source| ProbeError::Tunnel {
            vip,
            dest,
            what,
            source,
        }
    };
    let src = match t.connect.bindto.or(t.tunnel.source) {
        Some(a) => a,
        None => route_source(dest).map_err(fail("no route"))?,
    };
    if src == t.vip {
        // The real server holds the VIP too: it would answer itself.
        return Err(fail("source")(io::Error::other(
            "the SYN would come from the VIP itself: set bindto or tunnel_source",
        )));
    }
    // The port is held by a bound TCP socket for as long as the probe runs, so no connection
    // of this host uses it meanwhile.
    let reserved = socket2::Socket::new(
        socket2::Domain::for_address(vip),
        socket2::Type::STREAM,
        None,
    )
    .and_then(|s| s.bind(&SocketAddr::new(src, 0).into()).map(|()| s))
    .map_err(fail("reserve a port"))?;
    let sport = reserved
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .filter(|p| *p != 0)
        .ok_or_else(|| fail("reserve a port")(io::Error::other("no port bound")))?;
    let probe = tunnel_wire::Probe {
        src,
        sport,
        vip: t.vip,
        vport: vip.port(),
        isn: random_u32(),
    };
    let v6 = t.vip.is_ipv6();
    let capture = Capture::open(v6, vip.port(), sport).map_err(fail("packet socket"))?;
    let send = |inner: &[u8]| -> io::Result<()> {
        let payload = tunnel_wire::wrap(t.tunnel.kind, v6, inner);
        let domain = socket2::Domain::for_address(vip);
        let (sock, to) = match tunnel_wire::carrier(t.tunnel.kind, t.tunnel.port, v6) {
            Carrier::Raw(proto) => (
                socket2::Socket::new(domain, socket2::Type::RAW, Some(proto.into()))?,
                SocketAddr::new(dest, 0),
            ),
            Carrier::Udp(port) => (
                socket2::Socket::new(domain, socket2::Type::DGRAM, None)?,
                SocketAddr::new(dest, port),
            ),
        };
        sock.bind(&SocketAddr::new(src, 0).into())?;
        if v6 {
            sock.set_unicast_hops_v6(t.tunnel.ttl.into())?;
        } else {
            sock.set_ttl_v4(t.tunnel.ttl.into())?;
        }
        sock.send_to(&payload, &to.into()).map(drop)
    };
    send(&probe.syn()).map_err(fail("send"))?;
    loop {
        let packet = match timeout_at(deadline, capture.next()).await {
            Err(_) => {
                return Err(ProbeError::TunnelTimeout {
                    vip,
                    dest,
                    timeout: t.connect.timeout,
                })
            }
            Ok(p) => p.map_err(fail("packet socket"))?,
        };
        match probe.answer(&packet) {
            Some(Answer::Accepted) => {
                // The real server holds a half-open connection: close it now rather than
                // let it retransmit its SYN-ACK. If this RST is lost, its own timeout does.
                let _ = send(&probe.rst());
                drop(reserved);
                return Ok(());
            }
            Some(Answer::Refused) => return Err(ProbeError::TunnelRefused { vip, dest }),
            None => continue,
        }
    }
}

/// The source address the kernel would pick towards `dest` (a connected UDP socket sends
/// nothing).
fn route_source(dest: IpAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if dest.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    s.connect(SocketAddr::new(dest, 9))?;
    Ok(s.local_addr()?.ip())
}

pub(super) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 4 {
        // Without the kernel's randomness the clock's nanoseconds still vary per probe; the
        // number only has to be unlikely to match a stray segment.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ t.as_secs() as u32;
    }
    u32::from_ne_bytes(b)
}

/// A packet socket (`SOCK_DGRAM`: from the IP header on) of one IP version, filtered in the
/// kernel to TCP from `vport` to `sport` (see [`tunnel_wire::reply_filter`]). One per probe,
/// open for the probe's round trip (its timeout when nothing answers): while it is, every
/// packet this host's stack receives runs its eight-instruction filter (packets the XDP
/// program forwards never reach it).
struct Capture(tokio::io::unix::AsyncFd<socket2::Socket>);

impl Capture {
    fn open(v6: bool, vport: u16, sport: u16) -> io::Result<Self> {
        let ethertype = if v6 { libc::ETH_P_IPV6 } else { libc::ETH_P_IP } as u16;
        let sock = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::DGRAM,
            Some(i32::from(ethertype.to_be()).into()),
        )?;
        // Frames queued before the filter is attached are read and judged like the rest.
        let filter: Vec<socket2::SockFilter> = tunnel_wire::reply_filter(v6, vport, sport)
            .into_iter()
            .map(|(code, jt, jf, k)| socket2::SockFilter::new(code, jt, jf, k))
            .collect();
        sock.attach_filter(&filter)?;
        sock.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the socket, so its descriptor lives as long as the
        // registration.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(sock) };
        Ok(Capture(fd.map_err(|e| e.into_parts().1)?))
    }

    /// The next packet the filter passed, at most [`tunnel_wire::SNAP`] bytes of it.
    async fn next(&self) -> io::Result<Vec<u8>> {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); tunnel_wire::SNAP as usize];
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|s| s.get_ref().recv(&mut buf)) {
                Ok(n) => {
                    let n = n?;
                    // SAFETY: recv initialised the first `n` bytes.
                    return Ok(buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect());
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// `HTTP_GET` (and `SSL_GET` with `tls`): every url, one after the other, each on its own
/// connection.
pub async fn http_get(h: &HttpGet, tls: Option<&TlsClient>) -> Result<(), ProbeError> {
    for url in &h.urls {
        fetch(&h.connect, url, tls.zip(h.tls.as_ref())).await?;
    }
    Ok(())
}

/// One url over plain HTTP.
pub async fn get(c: &Connect, url: &Url) -> Result<(), ProbeError> {
    fetch(c, url, None).await
}

/// One url within `connect_timeout` (the TLS handshake included).
async fn fetch(c: &Connect, url: &Url, tls: Option<(&TlsClient, &Tls)>) -> Result<(), ProbeError> {
    let deadline = Instant::now() + c.timeout;
    let stream = connect(c, deadline).await?;
    let host = url
        .virtualhost
        .clone()
        .unwrap_or_else(|| http::default_host(c.dest));
    let request = http::request(&url.path, &host);
    let mut buf = Vec::new();
    let timed_out = |got| ProbeError::Timeout {
        dest: c.dest,
        path: url.path.clone(),
        timeout: c.timeout,
        got,
    };
    let Some((client, spec)) = tls else {
        let mut stream = stream;
        return match timeout_at(
            deadline,
            exchange(&mut stream, c.dest, url, &request, &mut buf),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(timed_out(buf.len())),
        };
    };
    let tls_err = |source| ProbeError::Tls {
        dest: c.dest,
        path: url.path.clone(),
        source,
    };
    let name = tls::server_name(spec.server_name(url), c.dest.ip()).map_err(tls_err)?;
    let connector = tokio_rustls::TlsConnector::from(client.config.clone());
    let mut stream = match timeout_at(deadline, connector.connect(name, stream)).await {
        Ok(s) => s.map_err(tls_err)?,
        Err(_) => {
            return Err(tls_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete handshake within {:?}", c.timeout),
            )))
        }
    };
    match timeout_at(
        deadline,
        exchange(&mut stream, c.dest, url, &request, &mut buf),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(timed_out(buf.len())),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dest: SocketAddr,
    url: &Url,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(), ProbeError> {
    let path = || url.path.clone();
    let io_err = |source| ProbeError::Io {
        dest,
        path: path(),
        source,
    };
    let malformed = |reason| ProbeError::Malformed {
        dest,
        path: path(),
        reason,
    };
    stream.write_all(request).await.map_err(io_err)?;
    let mut head: Option<http::Head> = None;
    const CHUNK: usize = 2048;
    let mut chunk = [0u8; CHUNK];
    // A digest is over the whole body, so it may read further.
    let limit = if url.digest.is_some() {
        http::MAX_DIGEST_RESPONSE
    } else {
        http::MAX_RESPONSE
    };
    loop {
        let room = limit - buf.len();
        if room == 0 {
            return Err(match head {
                None => malformed(format!(
                    "no end of the response head in the first {limit} bytes"
                )),
                // Unreachable: a full buffer is judged below, after the read that filled it.
                Some(_) => malformed("response too long".into()),
            });
        }
        let n = match stream.read(&mut chunk[..room.min(CHUNK)]).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify (many do after a response framed
            // by its close): the end of the response, as keepalived reads it.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io_err(e)),
        };
        let eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        let h = match head {
            Some(h) => h,
            None => match http::parse_head(buf).map_err(malformed)? {
                None if eof => {
                    return Err(ProbeError::Closed {
                        dest,
                        path: path(),
                        got: buf.len(),
                    })
                }
                None => continue,
                Some(h) => {
                    if !url.status_code.contains(h.status) {
                        return Err(ProbeError::Status {
                            dest,
                            path: path(),
                            status: h.status,
                            expected: url.status_code.to_string(),
                        });
                    }
                    head = Some(h);
                    h
                }
            },
        };
        if !url.checks_body() {
            return Ok(());
        }
        let (body, complete) =
            http::decode_body(&buf[h.len..], h.framing, eof).map_err(malformed)?;
        let found = |needle: &String| contains(&body, needle.as_bytes());
        let only_contains = url.digest.is_none() && url.regex.is_none();
        if only_contains && url.body_contains.as_ref().is_some_and(found) {
            return Ok(());
        }
        let ended = complete || eof;
        if !ended && buf.len() < limit {
            continue;
        }
        return judge_body(dest, url, &body, ended, limit);
    }
}

/// The body as read (all of it when `ended`, else the first bytes up to the read limit)
/// against the url's `body_contains`, `regex` and `digest`.
fn judge_body(
    dest: SocketAddr,
    url: &Url,
    body: &[u8],
    ended: bool,
    limit: usize,
) -> Result<(), ProbeError> {
    let path = || url.path.clone();
    if let Some(needle) = &url.body_contains {
        if !contains(body, needle.as_bytes()) {
            return Err(ProbeError::Body {
                dest,
                path: path(),
                needle: needle.clone(),
                read: body.len(),
            });
        }
    }
    if let Some(r) = &url.regex {
        let matched = r.compiled.is_match(body);
        if matched == r.no_match {
            return Err(ProbeError::Regex {
                dest,
                path: path(),
                pattern: r.source.clone(),
                matched,
                read: body.len(),
            });
        }
    }
    if let Some(want) = &url.digest {
        if !ended {
            return Err(ProbeError::TooLongToDigest {
                dest,
                path: path(),
                limit,
            });
        }
        use md5::Digest;
        let got: [u8; 16] = md5::Md5::digest(body).into();
        if &got != want {
            let hex = |d: &[u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
            return Err(ProbeError::Digest {
                dest,
                path: path(),
                got: hex(&got),
                expected: hex(want),
            });
        }
    }
    Ok(())
}

/// `MISC_CHECK`: `Ok(Some(weight))` for a dynamic exit status 2..=255.
pub async fn misc(m: &MiscCheck, user: &ScriptUser) -> Result<Option<u32>, ProbeError> {
    match run_command(&m.command, user, m.timeout).await {
        RunOutcome::Exited(0) => Ok(None),
        RunOutcome::Exited(code) if m.dynamic && (2..=255).contains(&code) => {
            Ok(Some(code as u32 - 2))
        }
        outcome => Err(ProbeError::Script {
            program: m.command.first().cloned().unwrap_or_default(),
            outcome: outcome.to_string(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! Backends on 127.0.0.1 that answer well, badly, or not at all.
    use std::{
        net::SocketAddr,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        task::JoinHandle,
    };

    #[derive(Debug, Clone)]
    pub(crate) enum Behaviour {
        /// Read the request, send these bytes, close.
        Respond(Vec<u8>),
        /// Read the request, send these bytes, then say nothing more until the client goes.
        RespondAndHang(Vec<u8>),
        /// Accept and never answer (until the client closes).
        Hang,
        /// Accept and close at once.
        Close,
        /// Read the request, then reset the connection.
        Reset,
    }

    pub(crate) struct Server {
        pub(crate) addr: SocketAddr,
        pub(crate) requests: Arc<Mutex<Vec<Vec<u8>>>>,
        task: JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// SO_LINGER 0: close sends RST.
    pub(crate) fn reset(stream: TcpStream) {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    }

    async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        req
    }

    async fn until_eof(mut stream: TcpStream) {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }

    pub(crate) async fn serve(behaviour: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let behaviour = behaviour.clone();
                let seen = seen.clone();
                conns.spawn(async move {
                    match behaviour {
                        Behaviour::Respond(bytes) => {
                            let req = read_request(&mut stream).await;
                            seen.lock().unwrap().push(req);
                            let _ = stream.write_all(&bytes).await;
                        }
                        Behaviour::RespondAndHang(bytes) => {
                            let req = read_request(&mut stream).await;
                            seen.lock().unwrap().push(req);
                            let _ = stream.write_all(&bytes).await;
                            until_eof(stream).await;
                        }
                        Behaviour::Hang => until_eof(stream).await,
                        Behaviour::Close => drop(stream),
                        Behaviour::Reset => {
                            read_request(&mut stream).await;
                            reset(stream);
                        }
                    }
                });
            }
        });
        Server {
            addr,
            requests,
            task,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{
        test_server::{serve, Behaviour},
        *,
    };
    use crate::{
        config::check::StatusCodes,
        testutil::{alive, eventually, TempDir},
    };

    fn conn(dest: SocketAddr, timeout_ms: u64) -> Connect {
        Connect {
            dest,
            bindto: None,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn url(path: &str) -> Url {
        Url {
            path: path.into(),
            status_code: StatusCodes::default(),
            virtualhost: None,
            body_contains: None,
            digest: None,
            regex: None,
        }
    }

    /// A port nothing listens on.
    async fn closed_port() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn tcp_connects_refuses_and_binds() {
        let server = serve(Behaviour::Hang).await;
        tcp(&conn(server.addr, 1000)).await.unwrap();
        let e = tcp(&conn(closed_port().await, 1000)).await.unwrap_err();
        assert!(
            matches!(&e, ProbeError::Connect { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused),
            "{e}"
        );
        let mut bound = conn(server.addr, 1000);
        bound.bindto = Some([127, 0, 0, 1].into());
        tcp(&bound).await.unwrap();
        // Not an address of this host.
        bound.bindto = Some([192, 0, 2, 1].into());
        let e = tcp(&bound).await.unwrap_err();
        assert!(matches!(e, ProbeError::Bind { .. }), "{e}");
        assert!(e.to_string().starts_with("bind to 192.0.2.1:0: "), "{e}");
    }

    #[tokio::test]
    async fn tcp_over_ipv6_loopback() {
        let Ok(l) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("SKIP health::probe::tcp_over_ipv6_loopback: no ::1 here");
            return;
        };
        let c = conn(l.local_addr().unwrap(), 1000);
        tcp(&c).await.unwrap();
    }

    /// (what the backend does, status_code, body_contains, Ok or a part of the error).
    #[tokio::test]
    async fn http_answers() {
        let ok200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        type Case = (
            Behaviour,
            Option<&'static str>,
            Option<&'static str>,
            Result<(), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (Behaviour::Respond(ok200.clone()), None, None, Ok(())),
            (
                Behaviour::Respond(b"HTTP/1.0 204 No Content\r\n\r\n".to_vec()),
                None,
                None,
                Ok(()),
            ),
            (
                Behaviour::Respond(b"HTTP/1.1 500 Internal Server Error\r\n\r\n".to_vec()),
                None,
                None,
                Err("status 500, expected 200-299"),
            ),
            (
                Behaviour::Respond(b"HTTP/1.1 500 Internal Server Error\r\n\r\n".to_vec()),
                Some("500"),
                None,
                Ok(()),
            ),
            (
                Behaviour::Respond(b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n".to_vec()),
                Some("200 300-399"),
                None,
                Ok(()),
            ),
            (
                Behaviour::Respond(b"SSH-2.0-OpenSSH_9.2p1\r\n".to_vec()),
                None,
                None,
                Err("not an HTTP response"),
            ),
            (
                Behaviour::Respond(b"HTTP/1.1 2OO OK\r\n\r\n".to_vec()),
                None,
                None,
                Err("bad status line"),
            ),
            (
                Behaviour::Respond(vec![0xff; 100]),
                None,
                None,
                Err("not an HTTP response"),
            ),
            (
                Behaviour::Respond(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()),
                None,
                None,
                Err("connection closed after 27 bytes"),
            ),
            (Behaviour::Close, None, None, Err("")),
            (Behaviour::Reset, None, None, Err("")),
            (
                Behaviour::Respond(
                    [b"HTTP/1.1 200 OK\r\nX: ".to_vec(), vec![b'a'; 9000]].concat(),
                ),
                None,
                None,
                Err("no end of the response head in the first 8192 bytes"),
            ),
            (
                Behaviour::Respond(ok200.clone()),
                None,
                Some("ok"),
                Ok(()),
            ),
            (
                Behaviour::Respond(ok200.clone()),
                None,
                Some("OK"),
                Err("no \"OK\" in the first 2 bytes of the body"),
            ),
            (
                Behaviour::Respond(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nall \r\n4\r\ngood\r\n0\r\n\r\n"
                        .to_vec(),
                ),
                None,
                Some("l go"),
                Ok(()),
            ),
            (
                Behaviour::Respond(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                ),
                None,
                Some("x"),
                Err("bad chunk size line"),
            ),
            (
                // Close-delimited body: the end of the connection ends it.
                Behaviour::Respond(b"HTTP/1.0 200 OK\r\n\r\nstatus: fine".to_vec()),
                None,
                Some("fine"),
                Ok(()),
            ),
            (
                // The substring beyond what is read does not count.
                Behaviour::Respond(
                    [
                        b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
                        vec![b'.'; 9000],
                        b"MARK".to_vec(),
                    ]
                    .concat(),
                ),
                None,
                Some("MARK"),
                Err("no \"MARK\" in the first 8173 bytes"),
            ),
            (
                // Found before the body ends: no need to wait for the rest.
                Behaviour::RespondAndHang(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nready".to_vec(),
                ),
                None,
                Some("ready"),
                Ok(()),
            ),
            (
                // Status only: the head is enough, the body may never come.
                Behaviour::RespondAndHang(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec()),
                None,
                None,
                Ok(()),
            ),
        ];
        for (behaviour, status, needle, want) in cases {
            let what = format!("{behaviour:?} {status:?} {needle:?}")
                .chars()
                .take(120)
                .collect::<String>();
            let server = serve(behaviour).await;
            let mut u = url("/health");
            if let Some(s) = status {
                u.status_code = StatusCodes::new(
                    s.split_whitespace()
                        .map(|w| match w.split_once('-') {
                            Some((a, b)) => a.parse().unwrap()..=b.parse().unwrap(),
                            None => w.parse().unwrap()..=w.parse().unwrap(),
                        })
                        .collect(),
                );
            }
            u.body_contains = needle.map(str::to_string);
            let got = get(&conn(server.addr, 2000), &u).await;
            match (want, got) {
                (Ok(()), Ok(())) => {}
                (Err(part), Err(e)) => {
                    assert!(!matches!(e, ProbeError::Timeout { .. }), "{what}: {e}");
                    assert!(e.to_string().contains(part), "{what}: {e}");
                }
                (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
    }

    /// keepalived's `digest` (MD5 of the whole body) and `regex` / `regex_no_match`.
    #[tokio::test]
    async fn http_digest_and_regex() {
        use crate::config::check::BodyRegex;
        let regex = |src: &str, no_match| BodyRegex {
            source: src.into(),
            no_match,
            compiled: regex::bytes::Regex::new(src).unwrap(),
        };
        // md5("ok") and md5("") (`printf ok | md5sum`; RFC 1321's test suite), as genhash
        // prints them.
        let md5_ok = [
            0x44, 0x4b, 0xcb, 0x3a, 0x3f, 0xcf, 0x83, 0x89, 0x29, 0x6c, 0x49, 0x46, 0x7f, 0x27,
            0xe1, 0xd6,
        ];
        let md5_empty = [
            0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
            0x42, 0x7e,
        ];
        let ok200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n"
                .to_vec();
        let big = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n".to_vec(),
            vec![b'x'; 70000],
        ]
        .concat();
        type Case = (
            Vec<u8>,
            Option<[u8; 16]>,
            Option<BodyRegex>,
            Result<(), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (ok200.clone(), Some(md5_ok), None, Ok(())),
            (chunked.clone(), Some(md5_ok), None, Ok(())),
            (
                ok200.clone(),
                Some(md5_empty),
                None,
                Err("body digest 444bcb3a3fcf8389296c49467f27e1d6, expected d41d8cd98f00b204e9800998ecf8427e"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
                Some(md5_empty),
                None,
                Ok(()),
            ),
            (big, Some(md5_ok), None, Err("longer than the 65536 bytes")),
            (ok200.clone(), None, Some(regex("^o.$", false)), Ok(())),
            (chunked, None, Some(regex("^ok$", false)), Ok(())),
            (ok200.clone(), None, Some(regex("^up$", false)), Err("does not match /^up$/")),
            (ok200.clone(), None, Some(regex("error", true)), Ok(())),
            (ok200.clone(), None, Some(regex("o+k", true)), Err("matches /o+k/")),
            // Both must hold.
            (ok200.clone(), Some(md5_ok), Some(regex("nope", false)), Err("does not match")),
        ];
        for (reply, digest, re, want) in cases {
            let what = format!(
                "{:?} {digest:?} {re:?}",
                String::from_utf8_lossy(&reply[..reply.len().min(60)])
            );
            let server = serve(Behaviour::Respond(reply)).await;
            let mut u = url("/");
            u.digest = digest;
            u.regex = re;
            match (want, get(&conn(server.addr, 2000), &u).await) {
                (Ok(()), Ok(())) => {}
                (Err(part), Err(e)) => assert!(e.to_string().contains(part), "{what}: {e}"),
                (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
        // A digest waits for the whole body; a server that never finishes it times out.
        let server = serve(Behaviour::RespondAndHang(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok".to_vec(),
        ))
        .await;
        let mut u = url("/");
        u.digest = Some(md5_ok);
        let e = get(&conn(server.addr, 300), &u).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn http_request_and_host() {
        let server = serve(Behaviour::Respond(b"HTTP/1.1 200 OK\r\n\r\n".to_vec())).await;
        get(&conn(server.addr, 2000), &url("/a?b=c")).await.unwrap();
        let mut vhost = url("/");
        vhost.virtualhost = Some("www.example.com".into());
        get(&conn(server.addr, 2000), &vhost).await.unwrap();
        let reqs = server.requests.lock().unwrap().clone();
        assert_eq!(
            String::from_utf8_lossy(&reqs[0]),
            format!(
                "GET /a?b=c HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: lb-daemon-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
                server.addr.port()
            )
        );
        assert!(String::from_utf8_lossy(&reqs[1]).contains("\r\nHost: www.example.com\r\n"));
    }

    #[tokio::test]
    async fn http_every_url_must_pass() {
        let good = serve(Behaviour::Respond(b"HTTP/1.1 200 OK\r\n\r\n".to_vec())).await;
        let h = HttpGet {
            connect: conn(good.addr, 2000),
            urls: vec![url("/a"), url("/b")],
            tls: None,
        };
        http_get(&h, None).await.unwrap();
        assert_eq!(good.requests.lock().unwrap().len(), 2);
        let mut strict = h.clone();
        strict.urls[1].status_code = StatusCodes::new(vec![404..=404]);
        let e = http_get(&strict, None).await.unwrap_err();
        assert!(e.to_string().starts_with("GET /b from "), "{e}");
    }

    #[tokio::test]
    async fn http_hang_times_out() {
        for behaviour in [
            Behaviour::Hang,
            Behaviour::RespondAndHang(b"HTTP/1.1 200 O".to_vec()),
            Behaviour::RespondAndHang(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab".to_vec()),
        ] {
            let server = serve(behaviour.clone()).await;
            let mut u = url("/");
            u.body_contains = Some("zz".into());
            let start = Instant::now();
            let e = get(&conn(server.addr, 300), &u).await.unwrap_err();
            let took = start.elapsed();
            assert!(
                matches!(e, ProbeError::Timeout { .. }),
                "{behaviour:?}: {e}"
            );
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(3),
                "{took:?}"
            );
        }
        let e = get(&conn(closed_port().await, 300), &url("/"))
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn run_reports_latency_and_errors() {
        let server = serve(Behaviour::Hang).await;
        let r = run(&ProbeSpec::Tcp(conn(server.addr, 1000))).await;
        assert_eq!(r.outcome, Ok(None));
        assert!(r.latency < Duration::from_secs(1));
        let r = run(&ProbeSpec::Http(HttpGet {
            connect: conn(server.addr, 100),
            urls: vec![url("/")],
            tls: None,
        }))
        .await;
        assert!(r.latency >= Duration::from_millis(100));
        assert!(
            r.outcome
                .as_ref()
                .unwrap_err()
                .contains("no complete response within 100ms (0 bytes)"),
            "{r:?}"
        );
    }

    fn misc_check(command: &std::path::Path, timeout_ms: u64, dynamic: bool) -> MiscCheck {
        MiscCheck {
            command: vec![command.to_str().unwrap().to_string()],
            timeout: Duration::from_millis(timeout_ms),
            dynamic,
            user: None,
        }
    }

    #[tokio::test]
    async fn misc_exit_codes() {
        let dir = TempDir::new("health-misc");
        let me = ScriptUser::current();
        let ok = dir.script("ok.sh", "exit 0");
        let one = dir.script("one.sh", "exit 1");
        let twelve = dir.script("twelve.sh", "exit 12");
        let two = dir.script("two.sh", "exit 2");
        let max = dir.script("max.sh", "exit 255");
        assert_eq!(
            misc(&misc_check(&ok, 5000, false), &me).await.unwrap(),
            None
        );
        assert_eq!(misc(&misc_check(&ok, 5000, true), &me).await.unwrap(), None);
        let e = misc(&misc_check(&one, 5000, true), &me).await.unwrap_err();
        assert!(
            e.to_string().ends_with("one.sh: exited with status 1"),
            "{e}"
        );
        assert!(misc(&misc_check(&twelve, 5000, false), &me).await.is_err());
        assert_eq!(
            misc(&misc_check(&twelve, 5000, true), &me).await.unwrap(),
            Some(10)
        );
        assert_eq!(
            misc(&misc_check(&two, 5000, true), &me).await.unwrap(),
            Some(0)
        );
        assert_eq!(
            misc(&misc_check(&max, 5000, true), &me).await.unwrap(),
            Some(253)
        );
        let e = misc(
            &misc_check(&dir.path().join("missing.sh"), 5000, false),
            &me,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("could not be started"), "{e}");
        // Arguments are passed.
        let args = dir.script("args.sh", "[ \"$1\" = port ] && [ \"$2\" = 80 ]");
        let mut m = misc_check(&args, 5000, false);
        m.command.extend(["port".into(), "80".into()]);
        assert_eq!(misc(&m, &me).await.unwrap(), None);
    }

    #[tokio::test]
    async fn misc_timeout_kills_the_group() {
        let dir = TempDir::new("health-misc-hang");
        let pids = dir.path().join("pids");
        let hang = dir.script(
            "hang.sh",
            &format!("sleep 1000 &\necho \"$$ $!\" > {}\nwait", pids.display()),
        );
        let start = Instant::now();
        let e = misc(&misc_check(&hang, 300, false), &ScriptUser::current())
            .await
            .unwrap_err();
        assert!(e.to_string().ends_with("timed out"), "{e}");
        assert!(start.elapsed() >= Duration::from_millis(300));
        let pids: Vec<i32> = std::fs::read_to_string(&pids)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2);
        assert!(
            eventually(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p))).await,
            "{pids:?}"
        );
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// Hostile backends must not make descriptors pile up: hundreds of probes against a
    /// backend that accepts and never answers, and one that resets, leave the count where it
    /// was (other tests of this process open some meanwhile: hence the slack).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn descriptors_stay_bounded_under_hostile_backends() {
        const PROBES: usize = 400;
        const SLACK: usize = 100;
        let hang = serve(Behaviour::Hang).await;
        let reset = serve(Behaviour::Reset).await;
        let close = serve(Behaviour::Close).await;
        // Answers garbage, then keeps the connection open.
        let garbage = serve(Behaviour::RespondAndHang(vec![0xff; 300])).await;
        let before = open_fds();
        for server in [&hang, &reset, &close, &garbage] {
            for _ in 0..PROBES / 100 {
                let mut batch = tokio::task::JoinSet::new();
                for i in 0..100 {
                    let spec = if i % 2 == 0 {
                        ProbeSpec::Http(HttpGet {
                            connect: conn(server.addr, 100),
                            urls: vec![url("/")],
                            tls: None,
                        })
                    } else {
                        ProbeSpec::Tcp(conn(server.addr, 100))
                    };
                    batch.spawn(async move { run(&spec).await });
                }
                while let Some(r) = batch.join_next().await {
                    let r = r.unwrap();
                    // TCP probes connect; HTTP probes all fail.
                    if let Err(e) = r.outcome {
                        assert!(!e.is_empty());
                    }
                }
            }
        }
        // The backends' ends close once they see ours close.
        let mut now = open_fds();
        let settled = eventually(Duration::from_secs(10), || {
            now = open_fds();
            now <= before + SLACK
        })
        .await;
        assert!(
            settled,
            "{before} descriptors before, {now} after {} probes",
            4 * PROBES
        );
    }

    #[test]
    fn file_check_judges_numbers_as_keepalived() {
        let probe = |weight, reverse| {
            FileProbe::new("drain".into(), "/run/drain".into(), weight, reverse, 10)
        };
        // The number: a missing file is 0; one out of range leaves the last number standing.
        let dir = crate::testutil::TempDir::new("file-check");
        let path = dir.path().join("n");
        let p = FileProbe::new("n".into(), path.clone(), 0, false, 1);
        assert_eq!(p.number(), 0);
        std::fs::write(&path, "7").unwrap();
        assert_eq!(p.number(), 7);
        std::fs::write(&path, "99999999999").unwrap();
        assert_eq!(p.number(), 7, "out of range: the last number stands");
        assert_eq!(probe(0, false).judge(0), Ok(None));
        assert_eq!(
            probe(0, false).judge(2),
            Err("track_file drain reads 2".into())
        );
        assert_eq!(probe(0, true).judge(2), Ok(None));
        assert!(probe(0, true).judge(0).is_err());
        assert_eq!(probe(-1, false).judge(4), Ok(Some(6)));
        assert_eq!(probe(-1, true).judge(4), Ok(Some(14)));
        assert_eq!(probe(-5, false).judge(4), Ok(Some(0)), "at least 0");
        assert_eq!(
            probe(254, false).judge(1 << 31),
            Ok(Some(65535)),
            "at most IPVS's"
        );
    }
}
