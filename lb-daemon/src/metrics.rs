//! `/metrics` for Prometheus: a deliberately tiny HTTP/1.1 server on Tokio's `TcpListener`.
//!
//! It answers `GET /metrics` (and `HEAD`) with [`render_prometheus_with`] of the latest
//! [`Exposition`] on a `watch` channel, 404 for any other path, 405 for another method on
//! `/metrics`, 400 for what is not an HTTP request, 431 for a request head over
//! [`Options::max_request`]. One request per connection (`Connection: close`).
//!
//! Each client has [`Options::read_timeout`] to send its request head and
//! [`Options::write_timeout`] to take the answer; at most [`Options::max_clients`] are served
//! at once, one more gets a 503 and is closed, so file descriptors stay bounded.
//!
//! The metrics say which backends and VIPs exist: by default only a loopback address is
//! accepted; listening anywhere else has to be asked for.
//!
//! # Wiring
//!
//! ```ignore
//! let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(Default::default());
//! let metrics = metrics::MetricsServer::bind(addr, allow_non_loopback).await?; // fail early
//! tokio::spawn(metrics.run(snapshot_rx));
//! // every second (or when something changes):
//! snapshot_tx.send_replace(Arc::new(Exposition::new(build_snapshot(), per_backend)));
//! ```
use std::{net::SocketAddr, sync::Arc, time::Duration};

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

/// Limits of the server; [`Options::default`] is what the daemon uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Listen on an address that is not loopback.
    pub allow_non_loopback: bool,
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
            allow_non_loopback: false,
            max_request: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_clients: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "metrics address {0} is not a loopback address: the metrics name every VIP and backend; \
         allow it explicitly to listen there"
    )]
    NotLoopback(SocketAddr),
    #[error("metrics: binding {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// Whether `addr` may be listened on (`::ffff:127.0.0.1` counts as loopback).
pub fn check_addr(addr: SocketAddr, allow_non_loopback: bool) -> Result<(), MetricsError> {
    if allow_non_loopback || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(MetricsError::NotLoopback(addr))
    }
}

/// A bound metrics listener, not serving yet.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
    options: Options,
}

impl MetricsServer {
    /// Binds `addr` with the default [`Options`]; a non-loopback address only with
    /// `allow_non_loopback`.
    pub async fn bind(addr: SocketAddr, allow_non_loopback: bool) -> Result<Self, MetricsError> {
        Self::bind_with(
            addr,
            Options {
                allow_non_loopback,
                ..Options::default()
            },
        )
        .await
    }

    pub async fn bind_with(addr: SocketAddr, options: Options) -> Result<Self, MetricsError> {
        check_addr(addr, options.allow_non_loopback)?;
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

    /// Serves `/metrics` from the latest value of `snapshot`, until its sender is dropped.
    pub async fn run(self, snapshot: Latest) {
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
                            let options = self.options.clone();
                            clients.spawn(async move {
                                client(stream, &snapshot, &options).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            debug!("metrics: too many clients, one refused");
                            let _ = stream.try_write(&response(
                                "503 Service Unavailable",
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

/// Binds `addr` and serves `/metrics` until the sender of `snapshot` is dropped. Prefer
/// [`MetricsServer::bind`] then [`MetricsServer::run`] to see a bind error before spawning.
pub async fn serve(
    addr: SocketAddr,
    snapshot: Latest,
    allow_non_loopback: bool,
) -> Result<(), MetricsError> {
    MetricsServer::bind(addr, allow_non_loopback)
        .await?
        .run(snapshot)
        .await;
    Ok(())
}

fn response(status: &str, content_type: &str, body: &[u8], with_body: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    if status.starts_with("405") {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
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
async fn route(head: &[u8], snapshot: &Latest) -> Vec<u8> {
    let bad = || response("400 Bad Request", "text/plain", b"bad request\n", true);
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return bad();
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return response(
            "404 Not Found",
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
                        "text/plain",
                        b"rendering failed\n",
                        true,
                    );
                }
            };
            response("200 OK", CONTENT_TYPE, body.as_bytes(), method == "GET")
        }
        _ => response(
            "405 Method Not Allowed",
            "text/plain",
            b"method not allowed\n",
            true,
        ),
    }
}

async fn client(mut stream: TcpStream, snapshot: &Latest, options: &Options) {
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
            "text/plain",
            b"request too large\n",
            true,
        ),
        Ok(Head::Complete(head)) => route(&head, snapshot).await,
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
        let server = MetricsServer::bind_with("127.0.0.1:0".parse().unwrap(), options)
            .await
            .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = watch::channel(published(sample(), true));
        (addr, tx, tokio::spawn(server.run(rx)))
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

    #[tokio::test]
    async fn only_loopback_unless_allowed() {
        let any: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        assert!(matches!(
            MetricsServer::bind(any, false).await,
            Err(MetricsError::NotLoopback(_))
        ));
        assert!(matches!(
            serve(
                "[2001:db8::1]:9100".parse().unwrap(),
                watch::channel(Arc::default()).1,
                false
            )
            .await,
            Err(MetricsError::NotLoopback(_))
        ));
        assert!(check_addr(any, true).is_ok());
        for ok in [
            "127.0.0.1:9100",
            "127.1.2.3:1",
            "[::1]:9100",
            "[::ffff:127.0.0.1]:9100",
        ] {
            assert!(check_addr(ok.parse().unwrap(), false).is_ok(), "{ok}");
        }
        let e = check_addr(any, false).unwrap_err().to_string();
        assert!(
            e.contains("0.0.0.0:9100") && e.contains("not a loopback"),
            "{e}"
        );
    }
}
