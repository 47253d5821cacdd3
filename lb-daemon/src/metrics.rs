//! `/metrics` for Prometheus: a deliberately tiny HTTP/1.1 server on Tokio's `TcpListener`.
//!
//! It answers `GET /metrics` (and `HEAD`) with [`render_prometheus_with`] of the latest
//! [`Exposition`] on a `watch` channel, 404 for any other path, 405 for another method on
//! `/metrics`, 400 for what is not an HTTP request, 431 for a request head over
//! [`Options::max_request`]. One request per connection (`Connection: close`). It only
//! reads: nothing a request says changes the daemon.
//!
//! With a [`BearerToken`] (`global_defs.metrics_bearer_token_file`, on a second `watch`
//! channel: a reload changes it) every request must carry `Authorization: Bearer <token>`,
//! or gets a 401 with `WWW-Authenticate: Bearer` and nothing else; without one the metrics,
//! which name every VIP and backend, go to anyone who reaches the address.
//!
//! Each client has [`Options::read_timeout`] to send its request head and
//! [`Options::write_timeout`] to take the answer; at most [`Options::max_clients`] are served
//! at once, one more gets a 503 and is closed, so file descriptors stay bounded.
//!
//! # Wiring
//!
//! ```ignore
//! let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(Default::default());
//! let (token_tx, token_rx) = tokio::sync::watch::channel(token.map(|t| BearerToken::new(&t)));
//! let metrics = metrics::MetricsServer::bind(addr).await?; // fail early
//! tokio::spawn(metrics.run(snapshot_rx, token_rx));
//! // every second (or when something changes):
//! snapshot_tx.send_replace(Arc::new(Exposition::new(build_snapshot(), per_backend)));
//! ```
use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{watch, Semaphore},
    task::JoinSet,
    time::timeout,
};
use tracing::{debug, info, warn};

use crate::{
    control::out_of_resources,
    status::{render_prometheus_with, PromOptions, Snapshot},
};

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/metrics` serves: a snapshot, and how to render it.
///
/// The channel holds it behind an `Arc`: a scrape takes its own reference and renders
/// without holding the channel's lock, which the daemon's next `send_replace` would wait on
/// (rendering 100,000 backends takes a while).
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    pub snapshot: Snapshot,
    pub options: PromOptions,
}

impl Exposition {
    /// `per_backend`: `global_defs.metrics_per_backend` ([`PromOptions::per_backend`]).
    pub fn new(snapshot: Snapshot, per_backend: bool) -> Self {
        Self {
            snapshot,
            options: PromOptions { per_backend },
        }
    }

    fn render(&self) -> String {
        render_prometheus_with(&self.snapshot, self.options)
    }
}

/// The receiving side of what the daemon publishes.
pub type Latest = watch::Receiver<Arc<Exposition>>;

/// The token every request must present, if any; the daemon replaces it at a reload.
pub type Token = watch::Receiver<Option<BearerToken>>;

/// The token of `Authorization: Bearer <token>`, kept as its SHA-256: comparing two digests
/// takes the same time whatever the presented token shares with the right one and however
/// long either is, so that timing the answers tells nothing of the token.
#[derive(Clone)]
pub struct BearerToken([u8; 32]);

impl BearerToken {
    pub fn new(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Whether `presented` is the token, in a time that does not depend on either.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let theirs: [u8; 32] = Sha256::digest(presented).into();
        let diff = self
            .0
            .iter()
            .zip(&theirs)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // Kept from being turned into an early exit.
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// What a request head says of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// No token asked, or the right one.
    Granted,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token, not the one.
    Wrong,
}

/// Checks the request's `Authorization` header (its name and the scheme in any case, RFC
/// 9110 §11.1) against `token`; `headers` are the head's lines after the request line.
fn authorize<'a>(headers: impl Iterator<Item = &'a str>, token: Option<&BearerToken>) -> Auth {
    let Some(token) = token else {
        return Auth::Granted;
    };
    let credentials = headers
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| {
            let (scheme, credentials) = value.trim().split_once([' ', '\t'])?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credentials.trim())
        });
    match credentials {
        None => Auth::Missing,
        Some(c) if token.accepts(c.as_bytes()) => Auth::Granted,
        Some(_) => Auth::Wrong,
    }
}

/// Limits of the server; [`Options::default`] is what the daemon uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Longest request head (request line and headers).
    pub max_request: usize,
    /// Time a client has to send its request head.
    pub read_timeout: Duration,
    /// Time a client has to take the answer.
    pub write_timeout: Duration,
    /// Clients served at once.
    pub max_clients: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_request: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_clients: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: binding {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// A bound metrics listener, not serving yet.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    options: Options,
}

impl MetricsServer {
    /// Binds `addr` with the default [`Options`].
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        Self::bind_with(addr, Options::default()).await
    }

    pub async fn bind_with(addr: SocketAddr, options: Options) -> Result<Self, MetricsError> {
        let bind_error = |error| MetricsError::Bind { addr, error };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            addr,
            options,
        })
    }

    /// The address it listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `/metrics` from the latest value of `snapshot` to requests that carry the
    /// latest value of `token` (all of them while it is `None`), until the sender of
    /// `snapshot` is dropped.
    pub async fn run(self, snapshot: Latest, token: Token) {
        info!(addr = %self.addr, "serving Prometheus metrics on /metrics");
        let slots = Arc::new(Semaphore::new(self.options.max_clients.max(1)));
        let mut clients = JoinSet::new();
        let mut closed = snapshot.clone();
        loop {
            tokio::select! {
                changed = closed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(_) = clients.join_next(), if !clients.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let snapshot = snapshot.clone();
                            let token = token.clone();
                            let options = self.options.clone();
                            clients.spawn(async move {
                                client(stream, &snapshot, &token, &options).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            debug!("metrics: too many clients, one refused");
                            let _ = stream.try_write(&response(
                                "503 Service Unavailable",
                                &[],
                                "text/plain",
                                b"too many clients\n",
                                true,
                            ));
                        }
                    },
                    Err(e) => {
                        warn!("metrics: accept: {e}");
                        if out_of_resources(&e) {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                },
            }
        }
        clients.shutdown().await;
    }
}

/// An answer; `headers` are whole header lines without their CRLF.
fn response(
    status: &str,
    headers: &[&str],
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if with_body {
        out.extend_from_slice(body);
    }
    out
}

enum Head {
    /// The request head, up to its blank line.
    Complete(Vec<u8>),
    TooLarge,
    /// Closed or failed before a whole head.
    Gone,
}

/// Reads up to the blank line that ends the request head, at most `max` bytes.
async fn read_head(stream: &mut TcpStream, max: usize) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Head::Gone,
            Ok(n) => n,
        };
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        let tail = &buf[searched_from..];
        let end = find(tail, b"\r\n\r\n")
            .map(|i| i + 4)
            .or_else(|| find(tail, b"\n\n").map(|i| i + 2));
        if let Some(end) = end {
            buf.truncate(searched_from + end);
            if buf.len() > max {
                return Head::TooLarge;
            }
            return Head::Complete(buf);
        }
        if buf.len() > max {
            return Head::TooLarge;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The answer to a request head.
async fn route(head: &[u8], snapshot: &Latest, token: Option<&BearerToken>) -> Vec<u8> {
    let bad = || response("400 Bad Request", &[], "text/plain", b"bad request\n", true);
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let mut lines = head.lines();
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return bad();
    }
    // Before anything else: without the token a request learns nothing, not even which
    // paths exist.
    let challenge = match authorize(lines, token) {
        Auth::Granted => None,
        Auth::Missing => Some("WWW-Authenticate: Bearer"),
        Auth::Wrong => Some("WWW-Authenticate: Bearer error=\"invalid_token\""),
    };
    if let Some(challenge) = challenge {
        debug!("metrics: a request without the right bearer token refused");
        return response(
            "401 Unauthorized",
            &[challenge],
            "text/plain",
            b"unauthorized\n",
            method != "HEAD",
        );
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return response(
            "404 Not Found",
            &[],
            "text/plain",
            b"not found: try /metrics\n",
            true,
        );
    }
    match method {
        "GET" | "HEAD" => {
            let latest = Arc::clone(&snapshot.borrow());
            // Off the async workers: a big snapshot takes a while to render.
            let body = match tokio::task::spawn_blocking(move || latest.render()).await {
                Ok(body) => body,
                Err(e) => {
                    warn!("metrics: rendering failed: {e}");
                    return response(
                        "500 Internal Server Error",
                        &[],
                        "text/plain",
                        b"rendering failed\n",
                        true,
                    );
                }
            };
            response(
                "200 OK",
                &[],
                CONTENT_TYPE,
                body.as_bytes(),
                method == "GET",
            )
        }
        _ => response(
            "405 Method Not Allowed",
            &["Allow: GET, HEAD"],
            "text/plain",
            b"method not allowed\n",
            true,
        ),
    }
}

async fn client(mut stream: TcpStream, snapshot: &Latest, token: &Token, options: &Options) {
    let answer = match timeout(
        options.read_timeout,
        read_head(&mut stream, options.max_request),
    )
    .await
    {
        Err(_) => {
            debug!(
                "metrics client sent no request in {:?}",
                options.read_timeout
            );
            return;
        }
        Ok(Head::Gone) => return,
        Ok(Head::TooLarge) => response(
            "431 Request Header Fields Too Large",
            &[],
            "text/plain",
            b"request too large\n",
            true,
        ),
        Ok(Head::Complete(head)) => {
            // Cloned out of the channel: its lock is not held across the render.
            let token = token.borrow().clone();
            route(&head, snapshot, token.as_ref()).await
        }
    };
    let sent = timeout(options.write_timeout, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        debug!("metrics client did not take its answer");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        render_prometheus,
        test_support::{eventually, sample, tcp_server_fds},
    };

    fn published(snapshot: Snapshot, per_backend: bool) -> Arc<Exposition> {
        Arc::new(Exposition::new(snapshot, per_backend))
    }

    fn quick() -> Options {
        Options {
            read_timeout: Duration::from_millis(300),
            write_timeout: Duration::from_millis(300),
            max_clients: 4,
            ..Options::default()
        }
    }

    async fn start(
        options: Options,
    ) -> (
        SocketAddr,
        watch::Sender<Arc<Exposition>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (addr, tx, _token, server) = start_with_token(options, None).await;
        (addr, tx, server)
    }

    async fn start_with_token(
        options: Options,
        token: Option<&[u8]>,
    ) -> (
        SocketAddr,
        watch::Sender<Arc<Exposition>>,
        watch::Sender<Option<BearerToken>>,
        tokio::task::JoinHandle<()>,
    ) {
        let server = MetricsServer::bind_with("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = watch::channel(published(sample(), true));
        let (token_tx, token_rx) = watch::channel(token.map(BearerToken::new));
        (addr, tx, token_tx, tokio::spawn(server.run(rx, token_rx)))
    }

    /// Sends `raw`, returns everything the server sends until it closes.
    async fn raw(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(raw).await;
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server should close the connection");
        out
    }

    fn split(resp: &[u8]) -> (String, String) {
        let text = String::from_utf8_lossy(resp).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn serves_the_latest_snapshot() {
        let (addr, tx, server) = start(quick()).await;
        let (head, body) = split(&raw(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}")));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, render_prometheus(&sample()));

        let mut next = sample();
        next.services[0].packets = 999_999;
        tx.send_replace(published(next.clone(), true));
        let (_, body) = split(&raw(addr, b"GET /metrics?x=1 HTTP/1.0\n\n").await);
        assert_eq!(body, render_prometheus(&next));
        assert!(body.contains("} 999999\n"));

        // metrics_per_backend = false: the per-service series only.
        tx.send_replace(published(next.clone(), false));
        let (_, body) = split(&raw(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await);
        assert_eq!(
            body,
            render_prometheus_with(&next, PromOptions { per_backend: false })
        );
        assert!(body.contains("lb_service_packets_total{"));
        assert!(!body.contains("lb_backend_"), "{body}");

        let (head, body) = split(&raw(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(body.is_empty());

        // Serving stops with the sender.
        drop(tx);
        timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn everything_else_is_refused_without_harm() {
        let (addr, _tx, _server) = start(quick()).await;
        let status = |resp: Vec<u8>| {
            String::from_utf8_lossy(&resp)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            status(raw(addr, b"GET / HTTP/1.1\r\n\r\n").await),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(raw(addr, b"GET /metricsx HTTP/1.1\r\n\r\n").await),
            "HTTP/1.1 404 Not Found"
        );
        let r = raw(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status(r.clone()), "HTTP/1.1 405 Method Not Allowed");
        assert!(String::from_utf8_lossy(&r).contains("Allow: GET, HEAD\r\n"));
        for garbage in [
            &b"\x00\xff\xfe\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"GET /metrics SMTP/1.0\r\n\r\n",
        ] {
            assert_eq!(
                status(raw(addr, garbage).await),
                "HTTP/1.1 400 Bad Request",
                "{garbage:?}"
            );
        }
        // A head too large, sent at once or never finished.
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(64 * 1024, b'a');
        let r = raw(addr, &big).await;
        assert!(
            r.is_empty() || status(r.clone()).starts_with("HTTP/1.1 431"),
            "{:?}",
            status(r)
        );
        // Nothing at all, and half a request: closed after the timeout.
        assert!(raw(addr, b"").await.is_empty());
        assert!(raw(addr, b"GET /metrics HTTP/1.1\r\n").await.is_empty());
        // Still serving.
        let (head, _) = split(&raw(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 200 OK"));
    }

    #[tokio::test]
    async fn file_descriptors_stay_bounded() {
        let options = Options {
            read_timeout: Duration::from_secs(2),
            ..quick()
        };
        let (addr, _tx, _server) = start(options).await;
        assert_eq!(tcp_server_fds(addr.port()), 1, "the listener");
        const N: usize = 60;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        let mut tasks = Vec::new();
        for _ in 0..N {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut first = [0u8; 12];
                let got = timeout(Duration::from_secs(10), c.read_exact(&mut first))
                    .await
                    .expect("answered or closed");
                let refused = got.is_ok();
                if refused {
                    assert_eq!(&first, b"HTTP/1.1 503");
                }
                let _ = tx.send(refused);
                // Hold the connection until the server closes it.
                let mut rest = Vec::new();
                let _ = timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await;
            }));
        }
        drop(tx);
        // All but max_clients get a 503 at once.
        let mut refused = 0;
        while refused < N - quick().max_clients {
            match rx.recv().await {
                Some(true) => refused += 1,
                Some(false) => {}
                None => break,
            }
        }
        assert_eq!(refused, N - quick().max_clients);
        // The listener and at most max_clients connections, while N clients are connected.
        let held = tcp_server_fds(addr.port());
        assert!(held <= 1 + quick().max_clients, "{held}");
        for t in tasks {
            t.await.unwrap();
        }
        eventually("all closed", || tcp_server_fds(addr.port()) == 1).await;
        let (head, _) = split(&raw(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 200 OK"));
    }

    /// Any address, not only loopback: a Prometheus on another host scrapes it (the
    /// namespace test `metrics_namespace` does, from another namespace). Here a documentation
    /// address on a throw-away namespace's loopback, and the wildcard.
    #[test]
    fn listens_on_any_address_in_netns() {
        use crate::netlink::test_netns::{in_netns, ip, privileged, Netns};
        if !privileged("metrics::listens_on_any_address_in_netns") {
            return;
        }
        let ns = Netns::create("metrics");
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.0, "addr", "add", "192.0.2.1/32", "dev", "lo"]);
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            "2001:db8::1/128",
            "dev",
            "lo",
            "nodad",
        ]);
        in_netns(&ns.0, || async {
            for (listen, connect) in [
                ("192.0.2.1:0", "192.0.2.1"),
                ("[2001:db8::1]:0", "2001:db8::1"),
                ("0.0.0.0:0", "192.0.2.1"),
            ] {
                let server = MetricsServer::bind(listen.parse().unwrap())
                    .await
                    .unwrap_or_else(|e| panic!("{listen}: {e}"));
                let at = SocketAddr::new(connect.parse().unwrap(), server.local_addr().port());
                let (tx, rx) = watch::channel(published(sample(), true));
                let (_token_tx, token_rx) = watch::channel(None);
                let running = tokio::spawn(server.run(rx, token_rx));
                let (head, _) = split(&raw(at, b"GET /metrics HTTP/1.1\r\n\r\n").await);
                assert!(head.starts_with("HTTP/1.1 200 OK"), "{listen}: {head}");
                drop(tx);
                running.await.unwrap();
            }
        });
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let t = BearerToken::new(b"s3cret-token");
        assert!(t.accepts(b"s3cret-token"));
        for wrong in [
            &b""[..],
            b"s3cret-toke",
            b"s3cret-token ",
            b"s3cret-tokenX",
            b"S3cret-token",
            b"s3cret-token\0",
        ] {
            assert!(!t.accepts(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{t:?}"), "BearerToken(..)", "no secret in logs");
    }

    #[test]
    fn the_authorization_header_is_read_as_rfc_9110_says() {
        let token = BearerToken::new(b"tok_3n.~+/=");
        let auth = |head: &str| authorize(head.lines(), Some(&token));
        assert_eq!(auth(""), Auth::Missing);
        assert_eq!(auth("Host: x\r\n"), Auth::Missing);
        for ok in [
            "Authorization: Bearer tok_3n.~+/=",
            "authorization: bearer tok_3n.~+/=",
            "AUTHORIZATION:BEARER tok_3n.~+/=",
            "Host: x\r\nAuthorization:   Bearer \t tok_3n.~+/=  \r\nAccept: */*\r\n",
        ] {
            assert_eq!(auth(ok), Auth::Granted, "{ok:?}");
        }
        for missing in [
            "Authorization: Basic dG9rOnRvaw==",
            "Authorization: Bearer",
            "Authorization: Bearertok_3n.~+/=",
            "Authorization tok_3n.~+/=",
            "X-Authorization: Bearer tok_3n.~+/=",
            "Bearer: tok_3n.~+/=",
        ] {
            assert_eq!(auth(missing), Auth::Missing, "{missing:?}");
        }
        for wrong in [
            "Authorization: Bearer tok",
            "Authorization: Bearer tok_3n.~+/=x",
            "Authorization: Bearer TOK_3N.~+/=",
            "Authorization: Bearer tok_3n.~+/= extra",
        ] {
            assert_eq!(auth(wrong), Auth::Wrong, "{wrong:?}");
        }
        // The first Authorization header is the one.
        assert_eq!(
            auth("Authorization: Bearer nope\r\nAuthorization: Bearer tok_3n.~+/=\r\n"),
            Auth::Wrong
        );
        // No token asked: anything goes.
        assert_eq!(authorize("".lines(), None), Auth::Granted);
        assert_eq!(
            authorize("Authorization: Bearer whatever".lines(), None),
            Auth::Granted
        );
    }

    /// With a token every request needs it, whatever its path or method, and a refusal
    /// shows nothing of the metrics; the daemon's reload replaces or removes the token.
    #[tokio::test]
    async fn a_bearer_token_guards_every_request_and_follows_the_reload() {
        let (addr, _tx, token_tx, _server) = start_with_token(quick(), Some(b"right")).await;
        let get = |path: &str, auth: Option<&str>| {
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
            if let Some(a) = auth {
                req += &format!("Authorization: {a}\r\n");
            }
            req += "\r\n";
            req
        };
        let refused = |resp: Vec<u8>, challenge: &str| {
            let (head, body) = split(&resp);
            assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
            assert!(
                head.contains(&format!("\r\nWWW-Authenticate: {challenge}\r\n"))
                    || head.ends_with(&format!("\r\nWWW-Authenticate: {challenge}")),
                "{head}"
            );
            assert_eq!(body, "unauthorized\n");
        };
        for path in ["/metrics", "/", "/nope"] {
            refused(raw(addr, get(path, None).as_bytes()).await, "Bearer");
            refused(
                raw(addr, get(path, Some("Bearer wrong")).as_bytes()).await,
                "Bearer error=\"invalid_token\"",
            );
            refused(
                raw(addr, get(path, Some("Basic cmlnaHQ=")).as_bytes()).await,
                "Bearer",
            );
        }
        refused(
            raw(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await,
            "Bearer",
        );
        let (head, body) = split(&raw(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert!(body.is_empty(), "{body}");
        // Not a request at all is still a 400: there is nothing to authorize.
        let (head, _) = split(&raw(addr, b"GET\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");

        let (head, body) =
            split(&raw(addr, get("/metrics", Some("Bearer right")).as_bytes()).await);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, render_prometheus(&sample()));
        let (head, _) = split(&raw(addr, get("/nope", Some("bearer right")).as_bytes()).await);
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");

        // A reload with another token: the old one is refused from then on.
        token_tx.send_replace(Some(BearerToken::new(b"next")));
        refused(
            raw(addr, get("/metrics", Some("Bearer right")).as_bytes()).await,
            "Bearer error=\"invalid_token\"",
        );
        let (head, _) = split(&raw(addr, get("/metrics", Some("Bearer next")).as_bytes()).await);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        // A reload without the key: open again.
        token_tx.send_replace(None);
        let (head, _) = split(&raw(addr, get("/metrics", None).as_bytes()).await);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    }
}
