//! Health-check configuration: keepalived's `TCP_CHECK`, `HTTP_GET`, `SSL_GET` and
//! `MISC_CHECK` blocks of a `real_server` (and in [`probes`], `DNS_CHECK`, `UDP_CHECK`,
//! `PING_CHECK`, `SMTP_CHECK`), with keepalived's key names and defaults, in TOML form.
//! [`crate::health`] runs them.
//!
//! ```toml
//! [[virtual_server.real_server]]
//! ip = "192.0.2.11"
//! port = 80
//! notify_down = "/etc/lb/rs-down.sh"
//!
//!   [virtual_server.real_server.HTTP_GET]
//!   connect_timeout = 3
//!   retry = 3
//!   url = [{ path = "/health", status_code = [200, "300-399"] }, { path = "/" }]
//!
//!   [[virtual_server.real_server.TCP_CHECK]]   # a table, or an array of them
//!   connect_port = 8080
//! ```
//!
//! Each block may be one table or an array of tables (keepalived: "healthcheckers. Can be
//! multiple of each type"); so may `url`. A real server is up while *all* its checks pass.
//!
//! # Defaults (keepalived.conf(5), "Virtual server(s)", keepalived 2.x)
//!
//! "Where an option can be configured for a virtual server, real server, and possibly checker,
//! the virtual server setting is the default for real servers, and the real server setting is
//! the default for checkers." Here that holds for `delay_loop` and `alpha`; the other timing
//! keys are set per check.
//!
//! | key | default | keepalived.conf(5) says |
//! |---|---|---|
//! | `delay_loop` | 60 s | "delay timer for checker polling (60 seconds if not specified)" |
//! | `alpha` | off | "On daemon startup assume that all RSs are down and healthchecks failed ... Alpha mode is disabled by default." |
//! | `connect_ip`, `connect_port` | the real server's | "The default is the realserver IP" / "... port" |
//! | `connect_timeout` | 5 s | "Optional connection timeout in seconds. The default is 5 seconds" |
//! | `retry` | 1; `MISC_CHECK` 0; `DNS_CHECK` 3 | "Retry count to make additional checks if check of an alive server fails. Default: 1 unless specified below"; `MISC_CHECK`: "The retry default is 0."; `check_dns.h`: `DNS_DEFAULT_RETRY 3`. `nb_get_retry` is its deprecated alias (`check_http.c`: "nb_get_retry is deprecated - please use 'retry'"), taken in `TCP_CHECK`, `HTTP_GET` and `SSL_GET`. |
//! | `delay_before_retry` | `HTTP_GET`, `SSL_GET` 3 s; `DNS_CHECK` `delay_loop`; else 1 s | "Defaults to delay_loop for DNS_CHECK, 3 seconds for HTTP_GET and SSL_GET, and 1 second otherwise." |
//! | `warmup` | `delay_loop` | "Optional random delay to start the initial check for maximum N seconds ... Enabled by default, with the maximum at delay_loop. Specify 0 to disable" (`check_parser.c`: `checker->warmup = ... : checker->delay_loop`) |
//! | `status_code` | 200-299 | "eg status_code 200 or status_code 200-299 400-499 503 505 / Default is 200-299" |
//! | `misc_timeout` | `delay_loop` | not in the man page; `check_misc.c` runs the script with `misck_checker->timeout ? misck_checker->timeout : checker->vs->delay_loop` |
//! | `misc_dynamic` | off | exit status 0: up, weight unchanged; 1: down; 2..=255: up with weight status - 2 |
//!
//! Times are seconds and may be fractional (keepalived's `<TIMER>`).
//!
//! # What differs from keepalived
//!
//! * The body is checked, as far as the probe reads it (the first
//!   [`crate::health::http::MAX_RESPONSE`] bytes of the response, de-chunked), by any of:
//!   `digest` (keepalived's: the MD5 of the whole body, as `genhash` prints it; the probe then
//!   reads up to [`crate::health::http::MAX_DIGEST_RESPONSE`] bytes, and a longer body fails
//!   the check rather than being digested in part), `regex` (keepalived's, with
//!   `regex_no_match = true` to fail on a match; Rust `regex` syntax, which for the usual
//!   health-page patterns is PCRE's; at most [`MAX_REGEX`] bytes, compiled with a size
//!   limit), and `body_contains` (ours: a plain substring, at most [`MAX_BODY_CONTAINS`]
//!   bytes). keepalived's other `regex_*` options are refused, never ignored.
//! * `connect_timeout` bounds an `HTTP_GET` url's whole exchange (connect, request, response),
//!   not each step.
//! * The request is `GET <path> HTTP/1.1` with `Host` and `Connection: close` (keepalived's
//!   `http_protocol 1.1`); `Host` is `virtualhost` when set, else the address and port probed.
//!   `virtualhost` can be set on the `HTTP_GET` block or on a `url`; the virtual and real
//!   server levels of keepalived have no such key here.
//! * All `url`s of a check are fetched in one run (keepalived's `fast_recovery`).
//! * `TCP_CHECK.via_tunnel = true` (ours, off by default; only for a TUN real server): the
//!   SYN goes to the VIP through the real server's tunnel, as clients' packets do, so the
//!   check fails when the real server listens on its own address but does not answer for the
//!   VIP (no VIP on its loopback, no decapsulation). See [`TunnelTcp`].
//! * Command lines (`misc_path`, `notify_up`, `notify_down`) are split on whitespace, without
//!   quoting, as for `vrrp_script`; the program must be an absolute path.
use std::{
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};
use toml::Spanned;

use super::{ConfigError, Ctx, RawRealServer, RawVirtualServer};
use crate::model::Tunnel;

mod probes;
pub use probes::{
    parse_hex, DnsCheck, FileCheck, PingCheck, ReplyRule, SmtpCheck, UdpCheck, DEFAULT_DNS_RETRY,
    DEFAULT_HELO, DEFAULT_MAX_REPLY, FILE_CHECK_PERIOD,
};

/// keepalived's `delay_loop` default.
pub const DEFAULT_DELAY_LOOP: Duration = Duration::from_secs(60);
/// keepalived's `connect_timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// keepalived's `retry` default for `TCP_CHECK` and `HTTP_GET`.
pub const DEFAULT_RETRY: u32 = 1;
/// keepalived's `retry` default for `MISC_CHECK`.
pub const DEFAULT_MISC_RETRY: u32 = 0;
/// keepalived's `delay_before_retry` default for `HTTP_GET`.
pub const DEFAULT_HTTP_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(3);
/// keepalived's `delay_before_retry` default for the other checks.
pub const DEFAULT_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(1);
/// keepalived's `status_code` default.
pub const DEFAULT_STATUS: RangeInclusive<u16> = 200..=299;
/// The longest `body_contains`: it has to fit in what the probe reads of a response.
pub const MAX_BODY_CONTAINS: usize = 1024;
/// The longest `regex` pattern.
pub const MAX_REGEX: usize = 1024;
/// What a compiled `regex` may take (regex's own `size_limit`): a pattern that would need
/// more is a configuration error, not a slow probe.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The longest `url.path`.
pub const MAX_PATH: usize = 2048;
/// The most `retry` accepted.
pub const MAX_RETRY: i64 = 1000;

// ---------------------------------------------------------------------------------------------
// The TOML form
// ---------------------------------------------------------------------------------------------

/// One table, or an array of tables (`[x]` or `[[x]]`, `x = {..}` or `x = [{..}, ..]`).
#[derive(Debug)]
pub(super) struct OneOrMany<T>(Vec<T>);

/// A block's key, for serde's type errors (which cannot name the key themselves).
pub(super) trait Block {
    const KEY: &'static str;
}

impl<'de, T: Deserialize<'de> + Block> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Block> de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a `{}` table or an array of them", T::KEY)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(t) = seq.next_element()? {
                    all.push(t);
                }
                Ok(OneOrMany(all))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

impl Block for RawTcp {
    const KEY: &'static str = "TCP_CHECK";
}
impl Block for RawHttp {
    const KEY: &'static str = "HTTP_GET (or SSL_GET)";
}
impl Block for RawUrl {
    const KEY: &'static str = "url";
}
impl Block for RawMisc {
    const KEY: &'static str = "MISC_CHECK";
}

/// `DNS_CHECK`, `UDP_CHECK`, `PING_CHECK`, `SMTP_CHECK`: one block or several each.
pub(super) type RawDnsCheck = OneOrMany<probes::RawDns>;
pub(super) type RawUdpCheck = OneOrMany<probes::RawUdp>;
pub(super) type RawPingCheck = OneOrMany<probes::RawPing>;
pub(super) type RawSmtpCheck = OneOrMany<probes::RawSmtp>;
pub(super) type RawFileCheck = OneOrMany<probes::RawFile>;

/// `TCP_CHECK`: one block or several.
pub(super) type RawTcpCheck = OneOrMany<RawTcp>;
/// `HTTP_GET`: one block or several.
pub(super) type RawHttpGet = OneOrMany<RawHttp>;
/// `MISC_CHECK`: one block or several.
pub(super) type RawMiscCheck = OneOrMany<RawMisc>;

/// A scalar, read as a plain value so that a value of the wrong type is reported with its key
/// (serde's own message names only the type).
type Value = Spanned<toml::Value>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcp {
    /// Ours: the SYN goes through the real server's tunnel to the VIP (see [`TunnelTcp`]).
    via_tunnel: Option<Value>,
    connect_ip: Option<Value>,
    connect_port: Option<Value>,
    bindto: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    nb_get_retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    url: Spanned<OneOrMany<RawUrl>>,
    /// The `Host` of the urls that set none.
    virtualhost: Option<Value>,
    /// `SSL_GET` only: keepalived's SNI switch and name, and our CA to verify against.
    enable_sni: Option<Value>,
    sni_name: Option<Value>,
    ca_file: Option<Value>,
    connect_ip: Option<Value>,
    connect_port: Option<Value>,
    bindto: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    nb_get_retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUrl {
    path: Value,
    /// An integer, a string of `N` and `N-M` words, or an array of either.
    status_code: Option<Value>,
    virtualhost: Option<Value>,
    body_contains: Option<Value>,
    digest: Option<Value>,
    regex: Option<Value>,
    regex_no_match: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMisc {
    misc_path: Value,
    misc_timeout: Option<Value>,
    misc_dynamic: Option<Value>,
    user: Option<Value>,
    retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

// ---------------------------------------------------------------------------------------------
// The checked form
// ---------------------------------------------------------------------------------------------

/// Everything about a real server's health checking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checks {
    /// None: always healthy (keepalived without a checker).
    pub checks: Vec<Check>,
    /// keepalived's `inhibit_on_failure`: a failed server keeps its place with weight 0
    /// (existing flows stay) instead of being removed.
    pub inhibit_on_failure: bool,
    /// Command line run when the server goes up (keepalived's `notify_up`).
    pub notify_up: Option<String>,
    /// Command line run when the server goes down (keepalived's `notify_down`).
    pub notify_down: Option<String>,
}

impl Checks {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Whether a check is built from more than its service's block: an SSL_GET's `ca_file`
    /// (read when the check is built), a FILE_CHECK's `track_file` (a block of its own). A
    /// reload must build it again even when the service's text did not change.
    pub fn reads_files(&self) -> bool {
        self.checks.iter().any(|c| {
            matches!(
                &c.kind,
                CheckKind::Http(HttpGet {
                    tls: Some(Tls {
                        ca_file: Some(_),
                        ..
                    }),
                    ..
                }) | CheckKind::File(_)
            )
        })
    }
}

/// One health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    pub kind: CheckKind,
    pub timing: Timing,
}

/// When a check runs and how its results count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timing {
    /// Between the end of one run and the start of the next.
    pub delay_loop: Duration,
    /// Further failed runs, `delay_before_retry` apart, before an up check counts as failed.
    pub retry: u32,
    pub delay_before_retry: Duration,
    /// The first run starts after a random delay of at most this.
    pub warmup: Duration,
    /// Down until the first success (else up until the first failure).
    pub alpha: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// `TCP_CHECK`: a connection is accepted.
    Tcp(Connect),
    /// `TCP_CHECK` with `via_tunnel`: the VIP answers a SYN sent through the tunnel.
    TcpTunnel(TunnelTcp),
    /// `HTTP_GET`: every url answers with an accepted status (and body).
    Http(HttpGet),
    /// `MISC_CHECK`: a program exits with 0 (or 2..=255 when dynamic).
    Misc(MiscCheck),
    /// `DNS_CHECK`: the query is answered NOERROR.
    Dns(DnsCheck),
    /// `UDP_CHECK`: no ICMP error comes back (and, if required, a reply that fits).
    Udp(UdpCheck),
    /// `PING_CHECK`: an echo is answered.
    Ping(PingCheck),
    /// `SMTP_CHECK`: the server greets, takes HELO and QUIT.
    Smtp(SmtpCheck),
    /// `FILE_CHECK`: a tracked file's number.
    File(FileCheck),
}

impl CheckKind {
    /// keepalived's block name.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp(_) | CheckKind::TcpTunnel(_) => "TCP_CHECK",
            CheckKind::Http(h) => h.name(),
            CheckKind::Misc(_) => "MISC_CHECK",
            CheckKind::Dns(_) => "DNS_CHECK",
            CheckKind::Udp(_) => "UDP_CHECK",
            CheckKind::Ping(_) => "PING_CHECK",
            CheckKind::Smtp(_) => "SMTP_CHECK",
            CheckKind::File(_) => "FILE_CHECK",
        }
    }
}

/// Where and how a check connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connect {
    /// `connect_ip`:`connect_port`, by default the real server's address.
    pub dest: SocketAddr,
    /// `bindto`: the source address.
    pub bindto: Option<IpAddr>,
    /// `connect_timeout`: for a TCP check the connection, for an HTTP check each url's whole
    /// exchange (connect, request, response).
    pub timeout: Duration,
}

/// A `TCP_CHECK` with `via_tunnel = true`: a SYN to `vip`:`connect.dest`'s port, wrapped as
/// the dataplane wraps the real server's traffic and sent to `connect.dest`'s address; up
/// when the SYN-ACK comes back from the VIP (the real server answers for the VIP, not only on
/// its own address), then reset. A plain `TCP_CHECK` proves the server listens; this one
/// proves the tunnel, the decapsulation and the VIP on the real server too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelTcp {
    /// The outer destination (`connect_ip`, by default the real server) and the port probed
    /// on the VIP (`connect_port`); the source is `bindto`, else the tunnel's `source`, else
    /// the address the kernel picks towards the real server.
    pub connect: Connect,
    pub vip: IpAddr,
    pub tunnel: Tunnel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpGet {
    pub connect: Connect,
    pub urls: Vec<Url>,
    /// `SSL_GET`: the exchange goes over TLS.
    pub tls: Option<Tls>,
}

impl HttpGet {
    /// keepalived's block name.
    pub fn name(&self) -> &'static str {
        if self.tls.is_some() {
            "SSL_GET"
        } else {
            "HTTP_GET"
        }
    }
}

/// `SSL_GET`'s TLS. keepalived never verifies the server's certificate (its `SSL_CTX` keeps
/// OpenSSL's `SSL_VERIFY_NONE`, even with a `ca`): neither does this without `ca_file`; the
/// handshake's signatures are still checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tls {
    /// The name sent as SNI: `sni_name`, else with `enable_sni` each url's `virtualhost`
    /// (without a port); none by default, as in keepalived.
    pub sni: Sni,
    /// Ours: verify the server's chain against these CAs and its name (the SNI name, else
    /// the url's `virtualhost`, else the address probed).
    pub ca_file: Option<CaFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sni {
    Off,
    /// keepalived's `enable_sni`.
    Virtualhost,
    /// keepalived's `sni_name`.
    Name(String),
}

/// A PEM file of CA certificates, read when the checks start (and by `lb-daemon check`);
/// its line is in [`crate::config::Config::scripts`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaFile {
    pub path: std::path::PathBuf,
}

impl Tls {
    /// The name a url's exchange verifies (and sends as SNI when it is on): the SNI name,
    /// else the url's `virtualhost` without its port; `None`: the address probed.
    pub fn server_name<'a>(&'a self, url: &'a Url) -> Option<&'a str> {
        match &self.sni {
            Sni::Name(n) => Some(n),
            Sni::Off | Sni::Virtualhost => url.virtualhost.as_deref().map(host_part),
        }
    }
}

/// `host` of `host:port` (and of `[v6]:port`).
fn host_part(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => h,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    /// The request target, `/` and printable ASCII.
    pub path: String,
    pub status_code: StatusCodes,
    /// The `Host` header; the probed address when absent.
    pub virtualhost: Option<String>,
    /// A substring the body must contain.
    pub body_contains: Option<String>,
    /// keepalived's `digest`: the MD5 of the whole body.
    pub digest: Option<[u8; 16]>,
    /// keepalived's `regex` (and `regex_no_match`).
    pub regex: Option<BodyRegex>,
}

impl Url {
    /// Whether the probe has to read the body at all.
    pub fn checks_body(&self) -> bool {
        self.body_contains.is_some() || self.digest.is_some() || self.regex.is_some()
    }
}

/// A compiled `regex`, compared (for reloads) by its source.
#[derive(Debug, Clone)]
pub struct BodyRegex {
    pub source: String,
    /// keepalived's `regex_no_match`: the check fails when the body matches.
    pub no_match: bool,
    pub compiled: regex::bytes::Regex,
}

impl PartialEq for BodyRegex {
    fn eq(&self, other: &Self) -> bool {
        (&self.source, self.no_match) == (&other.source, other.no_match)
    }
}

impl Eq for BodyRegex {}

impl std::hash::Hash for BodyRegex {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.source, self.no_match).hash(state)
    }
}

/// Accepted status codes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusCodes(Vec<RangeInclusive<u16>>);

impl Default for StatusCodes {
    fn default() -> Self {
        StatusCodes(vec![DEFAULT_STATUS])
    }
}

impl StatusCodes {
    pub fn new(ranges: Vec<RangeInclusive<u16>>) -> Self {
        StatusCodes(ranges)
    }

    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|r| r.contains(&code))
    }
}

impl std::fmt::Display for StatusCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            if r.start() == r.end() {
                write!(f, "{sep}{}", r.start())?;
            } else {
                write!(f, "{sep}{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MiscCheck {
    /// `misc_path` split on whitespace; the first word is the program (absolute).
    pub command: Vec<String>,
    /// `misc_timeout`; the script's process group is killed after it.
    pub timeout: Duration,
    /// `misc_dynamic`: exit status 2..=255 means up with weight status - 2.
    pub dynamic: bool,
    /// Run as this user; default `global_defs.script_user`, else root.
    pub user: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------------

fn wrong_type(cx: &Ctx, v: &Value, key: &str, want: &str) -> ConfigError {
    cx.invalid(
        v.span(),
        key,
        format!(
            "expected {want}, not {} {}",
            article(v.get_ref()),
            v.get_ref().type_str()
        ),
    )
}

fn article(v: &toml::Value) -> &'static str {
    if matches!(v, toml::Value::Integer(_) | toml::Value::Array(_)) {
        "an"
    } else {
        "a"
    }
}

fn string<'a>(cx: &Ctx, v: &'a Value, key: &str) -> Result<&'a str, ConfigError> {
    v.get_ref()
        .as_str()
        .ok_or_else(|| wrong_type(cx, v, key, "a string"))
}

fn boolean(cx: &Ctx, v: &Option<Value>, key: &str) -> Result<Option<bool>, ConfigError> {
    v.as_ref()
        .map(|v| {
            v.get_ref()
                .as_bool()
                .ok_or_else(|| wrong_type(cx, v, key, "true or false"))
        })
        .transpose()
}

fn integer(cx: &Ctx, v: &Value, key: &str, range: RangeInclusive<i64>) -> Result<i64, ConfigError> {
    let n = v
        .get_ref()
        .as_integer()
        .ok_or_else(|| wrong_type(cx, v, key, "an integer"))?;
    if !range.contains(&n) {
        return Err(cx.invalid(
            v.span(),
            key,
            format!("{n} is out of range {}..={}", range.start(), range.end()),
        ));
    }
    Ok(n)
}

fn in_range(
    cx: &Ctx,
    span: std::ops::Range<usize>,
    s: f64,
    key: &str,
    range: &RangeInclusive<f64>,
) -> Result<Duration, ConfigError> {
    if !range.contains(&s) {
        return Err(cx.invalid(
            span,
            key,
            format!(
                "{s} is out of range {}..={} seconds",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Seconds, integer or fractional (keepalived's `<TIMER>`).
fn seconds(
    cx: &Ctx,
    v: &Option<Value>,
    key: &str,
    range: RangeInclusive<f64>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let s = match v.get_ref() {
        toml::Value::Integer(n) => *n as f64,
        toml::Value::Float(f) => *f,
        _ => return Err(wrong_type(cx, v, key, "seconds (a number)")),
    };
    in_range(cx, v.span(), s, key, &range).map(Some)
}

/// The virtual and real servers' `delay_loop` (typed by the parent module).
fn server_seconds(
    cx: &Ctx,
    v: &Option<Spanned<f64>>,
    key: &str,
) -> Result<Option<Duration>, ConfigError> {
    v.as_ref()
        .map(|v| in_range(cx, v.span(), *v.get_ref(), key, &DELAY_LOOP))
        .transpose()
}

const DELAY_LOOP: RangeInclusive<f64> = 0.01..=86_400.0;
const TIMEOUT: RangeInclusive<f64> = 0.01..=3_600.0;
const DELAY: RangeInclusive<f64> = 0.0..=86_400.0;

/// An absolute program, registered for the script-safety check (see `Ctx::command`).
fn command(cx: &Ctx, v: &Value, key: &str) -> Result<String, ConfigError> {
    cx.command(string(cx, v, key)?, v.span(), key)
}

fn ip(cx: &Ctx, v: &Value, key: &str) -> Result<IpAddr, ConfigError> {
    let s = string(cx, v, key)?;
    s.parse()
        .map_err(|_| cx.invalid(v.span(), key, format!("{s:?} is not an IP address")))
}

/// Printable ASCII without spaces: what fits in a request line or a header value unchanged.
fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The keys every connecting check has, borrowed from either block.
struct RawConnect<'a> {
    connect_ip: &'a Option<Value>,
    connect_port: &'a Option<Value>,
    bindto: &'a Option<Value>,
    connect_timeout: &'a Option<Value>,
}

/// The timing keys of a check block.
struct RawTiming<'a> {
    retry: &'a Option<Value>,
    nb_get_retry: Option<&'a Option<Value>>,
    delay_before_retry: &'a Option<Value>,
    warmup: &'a Option<Value>,
    delay_loop: &'a Option<Value>,
    alpha: &'a Option<Value>,
}

/// What a check inherits from its real and virtual server.
struct Inherited {
    delay_loop: Duration,
    alpha: bool,
    /// The real server's `ip` line, for errors about keys that are absent.
    span: std::ops::Range<usize>,
    addr: SocketAddr,
    /// The service's address, and the real server's tunnel when it is forwarded by TUN.
    vip: IpAddr,
    tunnel: Option<Tunnel>,
}

/// `connect_ip` (by default the real server's) and `bindto`, of one address family.
fn endpoints(
    cx: &Ctx,
    connect_ip: &Option<Value>,
    bindto: &Option<Value>,
    block: &str,
    up: &Inherited,
) -> Result<(IpAddr, Option<IpAddr>), ConfigError> {
    let k = |key: &str| format!("{block}.{key}");
    let dest_ip = match connect_ip {
        Some(v) => ip(cx, v, &k("connect_ip"))?,
        None => up.addr.ip(),
    };
    let bindto = match bindto {
        None => None,
        Some(v) => {
            let a = ip(cx, v, &k("bindto"))?;
            if a.is_ipv4() != dest_ip.is_ipv4() {
                return Err(cx.invalid(
                    v.span(),
                    &k("bindto"),
                    format!("{a} is not in the address family of {dest_ip}"),
                ));
            }
            Some(a)
        }
    };
    Ok((dest_ip, bindto))
}

fn connect(cx: &Ctx, raw: RawConnect, block: &str, up: &Inherited) -> Result<Connect, ConfigError> {
    let k = |key: &str| format!("{block}.{key}");
    let (dest_ip, bindto) = endpoints(cx, raw.connect_ip, raw.bindto, block, up)?;
    let port = match raw.connect_port {
        Some(p) => integer(cx, p, &k("connect_port"), 1..=65535)? as u16,
        None if up.addr.port() == 0 => {
            return Err(cx.invalid(
                up.span.clone(),
                &k("connect_port"),
                "the real server has port 0: give the port to check",
            ))
        }
        None => up.addr.port(),
    };
    Ok(Connect {
        dest: SocketAddr::new(dest_ip, port),
        bindto,
        timeout: seconds(cx, raw.connect_timeout, &k("connect_timeout"), TIMEOUT)?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
    })
}

fn timing(
    cx: &Ctx,
    raw: RawTiming,
    block: &str,
    up: &Inherited,
    default_retry: u32,
    default_delay_before_retry: Duration,
) -> Result<Timing, ConfigError> {
    let k = |key: &str| format!("{block}.{key}");
    let retry = match (raw.retry, raw.nb_get_retry.unwrap_or(&None)) {
        (Some(_), Some(old)) => {
            return Err(cx.invalid(
                old.span(),
                &k("nb_get_retry"),
                "give retry or its old name nb_get_retry, not both",
            ))
        }
        (Some(r), None) => integer(cx, r, &k("retry"), 0..=MAX_RETRY)? as u32,
        (None, Some(r)) => integer(cx, r, &k("nb_get_retry"), 0..=MAX_RETRY)? as u32,
        (None, None) => default_retry,
    };
    let delay_loop =
        seconds(cx, raw.delay_loop, &k("delay_loop"), DELAY_LOOP)?.unwrap_or(up.delay_loop);
    Ok(Timing {
        delay_loop,
        retry,
        delay_before_retry: seconds(cx, raw.delay_before_retry, &k("delay_before_retry"), DELAY)?
            .unwrap_or(default_delay_before_retry),
        warmup: seconds(cx, raw.warmup, &k("warmup"), DELAY)?.unwrap_or(delay_loop),
        alpha: boolean(cx, raw.alpha, &k("alpha"))?.unwrap_or(up.alpha),
    })
}

fn tcp(cx: &Ctx, raw: &RawTcp, up: &Inherited) -> Result<Check, ConfigError> {
    let block = "real_server.TCP_CHECK";
    let conn = connect(
        cx,
        RawConnect {
            connect_ip: &raw.connect_ip,
            connect_port: &raw.connect_port,
            bindto: &raw.bindto,
            connect_timeout: &raw.connect_timeout,
        },
        block,
        up,
    )?;
    let timing = timing(
        cx,
        RawTiming {
            retry: &raw.retry,
            nb_get_retry: Some(&raw.nb_get_retry),
            delay_before_retry: &raw.delay_before_retry,
            warmup: &raw.warmup,
            delay_loop: &raw.delay_loop,
            alpha: &raw.alpha,
        },
        block,
        up,
        DEFAULT_RETRY,
        DEFAULT_DELAY_BEFORE_RETRY,
    )?;
    let key = format!("{block}.via_tunnel");
    let kind = match (boolean(cx, &raw.via_tunnel, &key)?, up.tunnel) {
        (Some(true), Some(_)) if conn.dest.is_ipv4() != up.vip.is_ipv4() => {
            return Err(cx.invalid(
                raw.connect_ip
                    .as_ref()
                    .map_or(up.span.clone(), |v| v.span()),
                &format!("{block}.connect_ip"),
                format!(
                    "{} is not in the address family of the VIP {}: the tunnel's outer header \
                     takes the inner packet's",
                    conn.dest.ip(),
                    up.vip
                ),
            ))
        }
        (Some(true), Some(tunnel)) => CheckKind::TcpTunnel(TunnelTcp {
            connect: conn,
            vip: up.vip,
            tunnel,
        }),
        (Some(true), None) => {
            return Err(cx.invalid(
                raw.via_tunnel
                    .as_ref()
                    .map_or(up.span.clone(), |v| v.span()),
                &key,
                "only a TUN real server has a tunnel to check through",
            ))
        }
        _ => CheckKind::Tcp(conn),
    };
    Ok(Check { kind, timing })
}

fn virtualhost(cx: &Ctx, v: &Value, key: &str) -> Result<String, ConfigError> {
    let s = string(cx, v, key)?;
    if s.is_empty() || !printable(s) {
        return Err(cx.invalid(
            v.span(),
            key,
            "must be a non-empty host name of printable ASCII without spaces",
        ));
    }
    Ok(s.to_string())
}

/// `200`, `"200-299 404"`, `[200, "300-399"]`.
fn status_codes(cx: &Ctx, v: &Value, key: &str) -> Result<StatusCodes, ConfigError> {
    let bad = |m: String| cx.invalid(v.span(), key, m);
    let code = |n: i64| -> Result<u16, ConfigError> {
        u16::try_from(n)
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| bad(format!("{n} is not an HTTP status code (100..=599)")))
    };
    let word = |w: &str| -> Result<RangeInclusive<u16>, ConfigError> {
        let num = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| bad(format!("{w:?}: expected a code (200) or a range (200-299)")))
                .and_then(code)
        };
        let (lo, hi) = match w.split_once('-') {
            Some((lo, hi)) => (num(lo)?, num(hi)?),
            None => (num(w)?, num(w)?),
        };
        if lo > hi {
            return Err(bad(format!("{w:?}: the range is empty")));
        }
        Ok(lo..=hi)
    };
    let mut ranges = Vec::new();
    let mut add = |item: &toml::Value| -> Result<(), ConfigError> {
        match item {
            toml::Value::Integer(n) => {
                let c = code(*n)?;
                ranges.push(c..=c);
            }
            toml::Value::String(s) => {
                for w in s.split_whitespace() {
                    ranges.push(word(w)?);
                }
            }
            _ => {
                return Err(bad(
                    "expected a code (200), a string of codes and ranges (\"200-299 404\") or an array of them"
                        .into(),
                ))
            }
        }
        Ok(())
    };
    match v.get_ref() {
        toml::Value::Array(items) => items.iter().try_for_each(&mut add)?,
        single => add(single)?,
    }
    if ranges.is_empty() {
        return Err(bad("no status code given".into()));
    }
    Ok(StatusCodes(ranges))
}

fn url(
    cx: &Ctx,
    raw: &RawUrl,
    default_host: &Option<String>,
    block: &str,
) -> Result<Url, ConfigError> {
    let k = |key: &str| format!("{block}.url.{key}");
    let digest = match &raw.digest {
        None => None,
        Some(v) => {
            let d = string(cx, v, &k("digest"))?;
            Some(md5_hex(d).ok_or_else(|| {
                cx.invalid(
                    v.span(),
                    &k("digest"),
                    format!("{d:?}: expected an MD5 digest, 32 hexadecimal digits (what genhash prints)"),
                )
            })?)
        }
    };
    let regex = match &raw.regex {
        None => {
            if let Some(v) = &raw.regex_no_match {
                return Err(cx.invalid(v.span(), &k("regex_no_match"), "needs a `regex`"));
            }
            None
        }
        Some(v) => {
            let source = string(cx, v, &k("regex"))?;
            if source.is_empty() || source.len() > MAX_REGEX {
                return Err(cx.invalid(
                    v.span(),
                    &k("regex"),
                    format!("must be 1..={MAX_REGEX} bytes"),
                ));
            }
            let compiled = regex::bytes::RegexBuilder::new(source)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| cx.invalid(v.span(), &k("regex"), format!("{source:?}: {e}")))?;
            let no_match = match &raw.regex_no_match {
                None => false,
                Some(n) => match n.get_ref() {
                    toml::Value::Boolean(b) => *b,
                    _ => {
                        return Err(cx.invalid(
                            n.span(),
                            &k("regex_no_match"),
                            "expected true or false",
                        ))
                    }
                },
            };
            Some(BodyRegex {
                source: source.to_string(),
                no_match,
                compiled,
            })
        }
    };
    let path = string(cx, &raw.path, &k("path"))?;
    if !path.starts_with('/') || path.len() > MAX_PATH || !printable(path) {
        return Err(cx.invalid(
            raw.path.span(),
            &k("path"),
            format!(
                "{path:?}: must start with / and be at most {MAX_PATH} printable ASCII characters without spaces (percent-encode the others)"
            ),
        ));
    }
    let body_contains = match &raw.body_contains {
        None => None,
        Some(v) => {
            let b = string(cx, v, &k("body_contains"))?;
            if b.is_empty() || b.len() > MAX_BODY_CONTAINS {
                return Err(cx.invalid(
                    v.span(),
                    &k("body_contains"),
                    format!("must be 1..={MAX_BODY_CONTAINS} bytes"),
                ));
            }
            Some(b.to_string())
        }
    };
    Ok(Url {
        path: path.to_string(),
        status_code: match &raw.status_code {
            None => StatusCodes::default(),
            Some(v) => status_codes(cx, v, &k("status_code"))?,
        },
        virtualhost: match &raw.virtualhost {
            Some(v) => Some(virtualhost(cx, v, &k("virtualhost"))?),
            None => default_host.clone(),
        },
        body_contains,
        digest,
        regex,
    })
}

/// 32 hexadecimal digits, either case, as 16 bytes.
fn md5_hex(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 16];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn http(cx: &Ctx, raw: &RawHttp, up: &Inherited, ssl: bool) -> Result<Check, ConfigError> {
    let block = if ssl {
        "real_server.SSL_GET"
    } else {
        "real_server.HTTP_GET"
    };
    let k = |key: &str| format!("{block}.{key}");
    let conn = connect(
        cx,
        RawConnect {
            connect_ip: &raw.connect_ip,
            connect_port: &raw.connect_port,
            bindto: &raw.bindto,
            connect_timeout: &raw.connect_timeout,
        },
        block,
        up,
    )?;
    let timing = timing(
        cx,
        RawTiming {
            retry: &raw.retry,
            nb_get_retry: Some(&raw.nb_get_retry),
            delay_before_retry: &raw.delay_before_retry,
            warmup: &raw.warmup,
            delay_loop: &raw.delay_loop,
            alpha: &raw.alpha,
        },
        block,
        up,
        DEFAULT_RETRY,
        DEFAULT_HTTP_DELAY_BEFORE_RETRY,
    )?;
    let host = raw
        .virtualhost
        .as_ref()
        .map(|v| virtualhost(cx, v, &k("virtualhost")))
        .transpose()?;
    let tls = if ssl {
        let enable_sni = boolean(cx, &raw.enable_sni, &k("enable_sni"))?.unwrap_or(false);
        let sni = match &raw.sni_name {
            Some(v) => Sni::Name(host_part(&virtualhost(cx, v, &k("sni_name"))?).to_string()),
            None if enable_sni => Sni::Virtualhost,
            None => Sni::Off,
        };
        let ca_file = match &raw.ca_file {
            None => None,
            Some(v) => {
                let p = string(cx, v, &k("ca_file"))?;
                if !p.starts_with('/') {
                    return Err(cx.invalid(v.span(), &k("ca_file"), "must be an absolute path"));
                }
                cx.file_read(p, v.span(), &k("ca_file"));
                Some(CaFile { path: p.into() })
            }
        };
        Some(Tls { sni, ca_file })
    } else {
        for (v, key) in [
            (&raw.enable_sni, "enable_sni"),
            (&raw.sni_name, "sni_name"),
            (&raw.ca_file, "ca_file"),
        ] {
            if let Some(v) = v {
                return Err(cx.invalid(
                    v.span(),
                    &k(key),
                    "an SSL_GET key: write SSL_GET for a check over TLS",
                ));
            }
        }
        None
    };
    let urls = raw
        .url
        .get_ref()
        .0
        .iter()
        .map(|u| url(cx, u, &host, block))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(cx.invalid(raw.url.span(), &k("url"), "needs at least one url"));
    }
    Ok(Check {
        kind: CheckKind::Http(HttpGet {
            connect: conn,
            urls,
            tls,
        }),
        timing,
    })
}

fn misc(cx: &Ctx, raw: &RawMisc, up: &Inherited) -> Result<Check, ConfigError> {
    let block = "real_server.MISC_CHECK";
    let k = |key: &str| format!("{block}.{key}");
    let line = command(cx, &raw.misc_path, &k("misc_path"))?;
    let timing = timing(
        cx,
        RawTiming {
            retry: &raw.retry,
            nb_get_retry: None,
            delay_before_retry: &raw.delay_before_retry,
            warmup: &raw.warmup,
            delay_loop: &raw.delay_loop,
            alpha: &raw.alpha,
        },
        block,
        up,
        DEFAULT_MISC_RETRY,
        DEFAULT_DELAY_BEFORE_RETRY,
    )?;
    let user = match &raw.user {
        None => None,
        Some(v) => {
            let u = string(cx, v, &k("user"))?.trim();
            if u.is_empty() {
                return Err(cx.invalid(v.span(), &k("user"), "empty user name"));
            }
            Some(u.to_string())
        }
    };
    Ok(Check {
        kind: CheckKind::Misc(MiscCheck {
            command: line.split_whitespace().map(str::to_string).collect(),
            timeout: seconds(cx, &raw.misc_timeout, &k("misc_timeout"), TIMEOUT)?
                .unwrap_or(timing.delay_loop),
            dynamic: boolean(cx, &raw.misc_dynamic, &k("misc_dynamic"))?.unwrap_or(false),
            user,
        }),
        timing,
    })
}

/// The checks of real server `rs` (at `addr`) of `vs`.
pub(super) fn checks(
    cx: &Ctx,
    vs: &RawVirtualServer,
    rs: &RawRealServer,
    addr: SocketAddr,
    vip: IpAddr,
    tunnel: Option<Tunnel>,
) -> Result<Checks, ConfigError> {
    let vs_delay = server_seconds(cx, &vs.delay_loop, "virtual_server.delay_loop")?;
    let rs_delay = server_seconds(cx, &rs.delay_loop, "real_server.delay_loop")?;
    let up = Inherited {
        delay_loop: rs_delay.or(vs_delay).unwrap_or(DEFAULT_DELAY_LOOP),
        alpha: rs.alpha.unwrap_or(vs.alpha),
        span: rs.ip.span(),
        addr,
        vip,
        tunnel,
    };
    let mut checks = Vec::new();
    for t in rs.tcp_check.iter().flat_map(|b| &b.0) {
        checks.push(tcp(cx, t, &up)?);
    }
    for h in rs.http_get.iter().flat_map(|b| &b.0) {
        checks.push(http(cx, h, &up, false)?);
    }
    for h in rs.ssl_get.iter().flat_map(|b| &b.0) {
        checks.push(http(cx, h, &up, true)?);
    }
    for d in rs.dns_check.iter().flat_map(|b| &b.0) {
        checks.push(probes::dns(cx, d, &up)?);
    }
    for u in rs.udp_check.iter().flat_map(|b| &b.0) {
        checks.push(probes::udp(cx, u, &up)?);
    }
    for p in rs.ping_check.iter().flat_map(|b| &b.0) {
        checks.push(probes::ping(cx, p, &up)?);
    }
    for m in rs.smtp_check.iter().flat_map(|b| &b.0) {
        checks.push(probes::smtp(cx, m, &up)?);
    }
    for f in rs.file_check.iter().flat_map(|b| &b.0) {
        checks.push(probes::file(cx, f)?);
    }
    let mut dynamic = false;
    for m in rs.misc_check.iter().flat_map(|b| &b.0) {
        let check = misc(cx, m, &up)?;
        if matches!(
            &check.kind,
            CheckKind::Misc(MiscCheck { dynamic: true, .. })
        ) {
            // keepalived: "more than one dynamic misc checker per real server will cause
            // problems": whose weight would win?
            if dynamic {
                return Err(cx.invalid(
                    m.misc_path.span(),
                    "real_server.MISC_CHECK.misc_dynamic",
                    "only one MISC_CHECK of a real server can set its weight",
                ));
            }
            dynamic = true;
        }
        checks.push(check);
    }
    let hook = |v: &Option<Spanned<String>>, key: &str| {
        v.as_ref()
            .map(|v| cx.command(v.get_ref(), v.span(), key))
            .transpose()
    };
    Ok(Checks {
        checks,
        inhibit_on_failure: rs.inhibit_on_failure,
        notify_up: hook(&rs.notify_up, "real_server.notify_up")?,
        notify_down: hook(&rs.notify_down, "real_server.notify_down")?,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
[dataplane]
interface = "eth0"

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true
#VS

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80
#RS
"#;

    /// BASE with `vs` after the virtual server's keys and `rs` after the real server's.
    fn text(vs: &str, rs: &str) -> String {
        // A virtual server's own lb_kind replaces BASE's.
        let base = if vs.contains("lb_kind") {
            BASE.replace("lb_kind = \"DR\"\n", "")
        } else {
            BASE.to_string()
        };
        base.replace("#VS", vs).replace("#RS", rs)
    }

    fn parse(vs: &str, rs: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("lb.toml"), &text(vs, rs))
    }

    fn checks_of(vs: &str, rs: &str) -> Checks {
        let c = parse(vs, rs).unwrap_or_else(|e| panic!("{e}"));
        c.virtual_servers[0].real_servers[0].checks.clone()
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// The line of the first occurrence of `needle` in the text, 1-based.
    fn line_of(t: &str, needle: &str) -> usize {
        let at = t
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in text"));
        t[..at].matches('\n').count() + 1
    }

    #[test]
    fn no_checks() {
        let c = checks_of("", "");
        assert!(c.is_empty());
        assert_eq!(c, Checks::default());
    }

    #[test]
    fn tcp_defaults() {
        let c = checks_of("", "[virtual_server.real_server.TCP_CHECK]");
        assert_eq!(
            c.checks,
            [Check {
                kind: CheckKind::Tcp(Connect {
                    dest: "192.0.2.11:80".parse().unwrap(),
                    bindto: None,
                    timeout: secs(5.0),
                }),
                timing: Timing {
                    delay_loop: secs(60.0),
                    retry: 1,
                    delay_before_retry: secs(1.0),
                    warmup: secs(60.0),
                    alpha: false,
                },
            }]
        );
    }

    #[test]
    fn tcp_every_key() {
        let c = checks_of(
            "",
            r#"[virtual_server.real_server.TCP_CHECK]
connect_ip = "192.0.2.12"
connect_port = 8080
bindto = "192.0.2.1"
connect_timeout = 2.5
nb_get_retry = 3
delay_before_retry = 0.5
warmup = 0
delay_loop = 6
alpha = true"#,
        );
        assert_eq!(
            c.checks[0],
            Check {
                kind: CheckKind::Tcp(Connect {
                    dest: "192.0.2.12:8080".parse().unwrap(),
                    bindto: Some("192.0.2.1".parse().unwrap()),
                    timeout: secs(2.5),
                }),
                timing: Timing {
                    delay_loop: secs(6.0),
                    retry: 3,
                    delay_before_retry: secs(0.5),
                    warmup: Duration::ZERO,
                    alpha: true,
                },
            }
        );
    }

    #[test]
    fn delay_loop_and_alpha_inherit_vs_then_rs_then_check() {
        let vs = "delay_loop = 10\nalpha = true";
        let c = checks_of(vs, "[virtual_server.real_server.TCP_CHECK]");
        let t = c.checks[0].timing;
        assert_eq!(
            (t.delay_loop, t.warmup, t.alpha),
            (secs(10.0), secs(10.0), true)
        );
        let c = checks_of(
            vs,
            "delay_loop = 5\nalpha = false\n[virtual_server.real_server.TCP_CHECK]",
        );
        let t = c.checks[0].timing;
        assert_eq!(
            (t.delay_loop, t.warmup, t.alpha),
            (secs(5.0), secs(5.0), false)
        );
        let c = checks_of(
            vs,
            "delay_loop = 5\n[virtual_server.real_server.TCP_CHECK]\ndelay_loop = 2\nalpha = false",
        );
        let t = c.checks[0].timing;
        assert_eq!(
            (t.delay_loop, t.warmup, t.alpha),
            (secs(2.0), secs(2.0), false)
        );
    }

    #[test]
    fn http_defaults_and_forms() {
        let c = checks_of(
            "",
            r#"[virtual_server.real_server.HTTP_GET]
url = { path = "/" }"#,
        );
        let Check {
            kind: CheckKind::Http(h),
            timing,
        } = &c.checks[0]
        else {
            panic!("{c:?}")
        };
        assert_eq!(timing.retry, 1);
        assert_eq!(
            timing.delay_before_retry,
            secs(3.0),
            "keepalived's HTTP_GET default"
        );
        assert_eq!(h.connect.dest, "192.0.2.11:80".parse().unwrap());
        assert_eq!(
            h.urls,
            [Url {
                path: "/".into(),
                status_code: StatusCodes(vec![200..=299]),
                virtualhost: None,
                body_contains: None,
                digest: None,
                regex: None,
            }]
        );
        assert!(h.urls[0].status_code.contains(204));
        assert!(!h.urls[0].status_code.contains(301));

        let c = checks_of(
            "",
            r#"[virtual_server.real_server.HTTP_GET]
virtualhost = "www.example.com"
retry = 0
[[virtual_server.real_server.HTTP_GET.url]]
path = "/a"
status_code = 200
[[virtual_server.real_server.HTTP_GET.url]]
path = "/b?x=1"
status_code = [204, "300-399 404"]
virtualhost = "b.example.com:8080"
body_contains = "OK""#,
        );
        let CheckKind::Http(h) = &c.checks[0].kind else {
            panic!()
        };
        assert_eq!(c.checks[0].timing.retry, 0);
        assert_eq!(h.urls.len(), 2);
        assert_eq!(h.urls[0].status_code, StatusCodes(vec![200..=200]));
        assert_eq!(h.urls[0].virtualhost.as_deref(), Some("www.example.com"));
        assert_eq!(
            h.urls[1].status_code,
            StatusCodes(vec![204..=204, 300..=399, 404..=404])
        );
        assert_eq!(h.urls[1].status_code.to_string(), "204 300-399 404");
        assert_eq!(h.urls[1].virtualhost.as_deref(), Some("b.example.com:8080"));
        assert_eq!(h.urls[1].body_contains.as_deref(), Some("OK"));

        // keepalived's digest and regex.
        let c = checks_of(
            "",
            r#"[virtual_server.real_server.HTTP_GET]
[[virtual_server.real_server.HTTP_GET.url]]
path = "/"
digest = "9B3A0C85A887A256D6939DA88AABD8CD"
[[virtual_server.real_server.HTTP_GET.url]]
path = "/status"
regex = "^(ok|up)$"
regex_no_match = true"#,
        );
        let CheckKind::Http(h) = &c.checks[0].kind else {
            panic!()
        };
        assert_eq!(
            h.urls[0].digest,
            Some([
                0x9b, 0x3a, 0x0c, 0x85, 0xa8, 0x87, 0xa2, 0x56, 0xd6, 0x93, 0x9d, 0xa8, 0x8a, 0xab,
                0xd8, 0xcd
            ])
        );
        let r = h.urls[1].regex.as_ref().unwrap();
        assert!(r.no_match && r.compiled.is_match(b"up") && !r.compiled.is_match(b"down"));
        assert!(h.urls.iter().all(Url::checks_body));
    }

    #[test]
    fn misc_defaults_and_keys() {
        let c = parse(
            "delay_loop = 7",
            r#"notify_up = "/usr/local/bin/up.sh  a b"
notify_down = "/usr/local/bin/down.sh"
inhibit_on_failure = true
[virtual_server.real_server.MISC_CHECK]
misc_path = "/usr/local/bin/check.sh --port 80""#,
        )
        .unwrap();
        let rs = &c.virtual_servers[0].real_servers[0];
        assert_eq!(
            rs.checks.checks[0],
            Check {
                kind: CheckKind::Misc(MiscCheck {
                    command: vec![
                        "/usr/local/bin/check.sh".into(),
                        "--port".into(),
                        "80".into()
                    ],
                    timeout: secs(7.0),
                    dynamic: false,
                    user: None,
                }),
                timing: Timing {
                    delay_loop: secs(7.0),
                    retry: 0,
                    delay_before_retry: secs(1.0),
                    warmup: secs(7.0),
                    alpha: false,
                },
            }
        );
        assert!(rs.checks.inhibit_on_failure);
        assert_eq!(
            rs.checks.notify_up.as_deref(),
            Some("/usr/local/bin/up.sh  a b")
        );
        assert_eq!(
            rs.checks.notify_down.as_deref(),
            Some("/usr/local/bin/down.sh")
        );
        // Every script is registered for the safety check, with its line.
        let t = text(
            "delay_loop = 7",
            r#"notify_up = "/usr/local/bin/up.sh  a b"
notify_down = "/usr/local/bin/down.sh"
inhibit_on_failure = true
[virtual_server.real_server.MISC_CHECK]
misc_path = "/usr/local/bin/check.sh --port 80""#,
        );
        let mut scripts: Vec<(usize, &str, &str)> = c
            .scripts
            .iter()
            .map(|s| (s.line, s.key.as_str(), s.program.to_str().unwrap()))
            .collect();
        scripts.sort();
        assert_eq!(
            scripts,
            [
                (
                    line_of(&t, "notify_up"),
                    "real_server.notify_up",
                    "/usr/local/bin/up.sh"
                ),
                (
                    line_of(&t, "notify_down"),
                    "real_server.notify_down",
                    "/usr/local/bin/down.sh"
                ),
                (
                    line_of(&t, "misc_path"),
                    "real_server.MISC_CHECK.misc_path",
                    "/usr/local/bin/check.sh"
                ),
            ]
        );

        let c = checks_of(
            "",
            r#"[virtual_server.real_server.MISC_CHECK]
misc_path = "/bin/true"
misc_timeout = 3
misc_dynamic = true
user = "nobody"
retry = 2
delay_before_retry = 2"#,
        );
        let CheckKind::Misc(m) = &c.checks[0].kind else {
            panic!()
        };
        assert_eq!((m.timeout, m.dynamic), (secs(3.0), true));
        assert_eq!(m.user.as_deref(), Some("nobody"));
        assert_eq!(c.checks[0].timing.retry, 2);
    }

    #[test]
    fn several_checks_of_each_kind() {
        let c = checks_of(
            "",
            r#"[[virtual_server.real_server.TCP_CHECK]]
connect_port = 81
[[virtual_server.real_server.TCP_CHECK]]
connect_port = 82
[[virtual_server.real_server.MISC_CHECK]]
misc_path = "/bin/true"
[[virtual_server.real_server.MISC_CHECK]]
misc_path = "/bin/false"
[virtual_server.real_server.HTTP_GET]
url = [{ path = "/" }]"#,
        );
        let kinds: Vec<&str> = c.checks.iter().map(|c| c.kind.name()).collect();
        assert_eq!(
            kinds,
            [
                "TCP_CHECK",
                "TCP_CHECK",
                "HTTP_GET",
                "MISC_CHECK",
                "MISC_CHECK"
            ]
        );
    }

    #[test]
    fn ipv6_real_server() {
        let t = BASE
            .replace("192.0.2.100", "2001:db8::100")
            .replace("192.0.2.11", "2001:db8::11")
            .replace(
                "#RS",
                "[virtual_server.real_server.TCP_CHECK]\nbindto = \"2001:db8::1\"",
            );
        let c = Config::parse(Path::new("lb.toml"), &t).unwrap();
        let CheckKind::Tcp(conn) = &c.virtual_servers[0].real_servers[0].checks.checks[0].kind
        else {
            panic!()
        };
        assert_eq!(conn.dest, "[2001:db8::11]:80".parse().unwrap());
        assert_eq!(conn.bindto, Some("2001:db8::1".parse().unwrap()));
    }

    /// Every bad value names the file, its line and the key.
    /// `via_tunnel`: through the real server's tunnel (its own type over the service's), to
    /// the VIP and the checked port; off, or false, a plain TCP_CHECK.
    #[test]
    fn tcp_via_tunnel() {
        let c = checks_of(
            "lb_kind = \"TUN\"\ntunnel_type = \"gue\"\ntunnel_port = 6080\ntunnel_source = \"192.0.2.2\"",
            "[virtual_server.real_server.TCP_CHECK]\nvia_tunnel = true\nconnect_port = 8080",
        );
        assert_eq!(
            c.checks[0].kind,
            CheckKind::TcpTunnel(TunnelTcp {
                connect: Connect {
                    dest: "192.0.2.11:8080".parse().unwrap(),
                    bindto: None,
                    timeout: secs(5.0),
                },
                vip: "192.0.2.100".parse().unwrap(),
                tunnel: Tunnel {
                    kind: crate::model::TunnelKind::Gue,
                    port: 6080,
                    ttl: crate::model::DEFAULT_TUNNEL_TTL,
                    source: Some("192.0.2.2".parse().unwrap()),
                },
            })
        );
        assert_eq!(c.checks[0].kind.name(), "TCP_CHECK");
        let c = checks_of(
            "lb_kind = \"TUN\"",
            "[virtual_server.real_server.TCP_CHECK]\nvia_tunnel = false",
        );
        assert!(matches!(c.checks[0].kind, CheckKind::Tcp(_)), "{c:?}");
        // A TUN real server of a DR service.
        let c = checks_of(
            "",
            "lvs_method = \"TUN\"\n[virtual_server.real_server.TCP_CHECK]\nvia_tunnel = true",
        );
        assert!(
            matches!(&c.checks[0].kind, CheckKind::TcpTunnel(t) if t.tunnel.kind == crate::model::TunnelKind::Ipip),
            "{c:?}"
        );
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let tcp = "[virtual_server.real_server.TCP_CHECK]\n";
        let http = "[virtual_server.real_server.HTTP_GET]\n";
        let url = "[virtual_server.real_server.HTTP_GET]\n[[virtual_server.real_server.HTTP_GET.url]]\npath = \"/\"\n";
        let misc = "[virtual_server.real_server.MISC_CHECK]\n";
        let ssl = "[virtual_server.real_server.SSL_GET]\nurl = { path = \"/\" }\n";
        let dns = "[virtual_server.real_server.DNS_CHECK]\n";
        let udp = "[virtual_server.real_server.UDP_CHECK]\n";
        let ping = "[virtual_server.real_server.PING_CHECK]\n";
        let smtp = "[virtual_server.real_server.SMTP_CHECK]\n";
        // (virtual_server keys, real_server keys, the bad line, the key in the message)
        let cases: &[(&str, String, &str, &str)] = &[
            ("delay_loop = 0", String::new(), "delay_loop = 0", "virtual_server.delay_loop"),
            ("", "delay_loop = -1".into(), "delay_loop = -1", "real_server.delay_loop"),
            ("", "delay_loop = nan".into(), "delay_loop = nan", "real_server.delay_loop"),
            ("", "notify_up = \"up.sh\"".into(), "notify_up", "real_server.notify_up"),
            ("", "notify_down = \" \"".into(), "notify_down", "real_server.notify_down"),
            ("", format!("{tcp}connect_port = 0"), "connect_port", "real_server.TCP_CHECK.connect_port"),
            // Direct routing has no tunnel to check through.
            ("", format!("{tcp}via_tunnel = true"), "via_tunnel", "real_server.TCP_CHECK.via_tunnel"),
            ("lb_kind = \"TUN\"", format!("{tcp}via_tunnel = 1"), "via_tunnel", "real_server.TCP_CHECK.via_tunnel"),
            ("lb_kind = \"TUN\"", format!("{tcp}via_tunnel = true\nconnect_ip = \"2001:db8::11\""), "connect_ip", "real_server.TCP_CHECK.connect_ip"),
            ("", format!("{tcp}connect_port = 65536"), "connect_port", "real_server.TCP_CHECK.connect_port"),
            ("", format!("{tcp}connect_ip = \"10.0.0\""), "connect_ip", "real_server.TCP_CHECK.connect_ip"),
            ("", format!("{tcp}bindto = \"fe80::1\""), "bindto", "real_server.TCP_CHECK.bindto"),
            ("", format!("{tcp}bindto = \"x\""), "bindto", "real_server.TCP_CHECK.bindto"),
            ("", format!("{tcp}connect_timeout = 0"), "connect_timeout", "real_server.TCP_CHECK.connect_timeout"),
            ("", format!("{tcp}connect_timeout = 4000"), "connect_timeout", "real_server.TCP_CHECK.connect_timeout"),
            ("", format!("{tcp}retry = -1"), "retry", "real_server.TCP_CHECK.retry"),
            ("", format!("{tcp}retry = 1001"), "retry", "real_server.TCP_CHECK.retry"),
            ("", format!("{tcp}nb_get_retry = -2"), "nb_get_retry", "real_server.TCP_CHECK.nb_get_retry"),
            ("", format!("{tcp}retry = 1\nnb_get_retry = 2"), "nb_get_retry", "real_server.TCP_CHECK.nb_get_retry"),
            ("", format!("{tcp}delay_before_retry = -0.5"), "delay_before_retry", "real_server.TCP_CHECK.delay_before_retry"),
            ("", format!("{tcp}warmup = -1"), "warmup", "real_server.TCP_CHECK.warmup"),
            ("", format!("{tcp}delay_loop = 0.001"), "delay_loop = 0.001", "real_server.TCP_CHECK.delay_loop"),
            ("", format!("{tcp}connect_prot = 1"), "connect_prot", "connect_prot"),
            // Values of the wrong type name their key too.
            ("", format!("{tcp}retry = \"x\""), "retry", "real_server.TCP_CHECK.retry"),
            ("", format!("{tcp}connect_timeout = \"5s\""), "connect_timeout", "real_server.TCP_CHECK.connect_timeout"),
            ("", format!("{tcp}alpha = 1"), "alpha = 1", "real_server.TCP_CHECK.alpha"),
            ("", format!("{tcp}connect_ip = 1"), "connect_ip", "real_server.TCP_CHECK.connect_ip"),
            ("", format!("{tcp}connect_port = \"80\""), "connect_port", "real_server.TCP_CHECK.connect_port"),
            ("", format!("{url}virtualhost = 1"), "virtualhost = 1", "real_server.HTTP_GET.url.virtualhost"),
            ("", format!("{http}url = {{ path = 1 }}"), "path = 1", "real_server.HTTP_GET.url.path"),
            ("", format!("{misc}misc_path = [\"/bin/true\"]"), "misc_path", "real_server.MISC_CHECK.misc_path"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nmisc_dynamic = \"yes\""), "misc_dynamic", "real_server.MISC_CHECK.misc_dynamic"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nuser = 0"), "user = 0", "real_server.MISC_CHECK.user"),
            ("", format!("{http}url = 3"), "url = 3", "`url` table"),
            ("", "TCP_CHECK = 1".into(), "TCP_CHECK = 1", "`TCP_CHECK` table"),
            ("", http.to_string(), "HTTP_GET", "url"),
            ("", format!("{http}url = []"), "url = []", "real_server.HTTP_GET.url"),
            ("", format!("{http}virtualhost = \"a b\"\nurl = {{ path = \"/\" }}"), "virtualhost", "real_server.HTTP_GET.virtualhost"),
            ("", format!("{http}connect_port = 99999\nurl = {{ path = \"/\" }}"), "connect_port", "real_server.HTTP_GET.connect_port"),
            ("", format!("{http}delay_before_retry = 1e9\nurl = {{ path = \"/\" }}"), "delay_before_retry", "real_server.HTTP_GET.delay_before_retry"),
            ("", format!("{http}url = {{ path = \"health\" }}"), "health", "real_server.HTTP_GET.url.path"),
            ("", format!("{http}url = {{ path = \"/a b\" }}"), "/a b", "real_server.HTTP_GET.url.path"),
            ("", format!("{url}digest = \"9b3a0c85a887a256d6939da88aabd8c\""), "digest", "real_server.HTTP_GET.url.digest"),
            ("", format!("{url}digest = \"9b3a0c85a887a256d6939da88aabd8cg\""), "digest", "real_server.HTTP_GET.url.digest"),
            ("", format!("{url}digest = 1"), "digest", "real_server.HTTP_GET.url.digest"),
            ("", format!("{url}regex = \"(unclosed\""), "regex", "real_server.HTTP_GET.url.regex"),
            ("", format!("{url}regex = \"\""), "regex", "real_server.HTTP_GET.url.regex"),
            ("", format!("{url}regex = \"a{{1000}}{{1000}}\""), "regex", "real_server.HTTP_GET.url.regex"),
            ("", format!("{url}regex_no_match = true"), "regex_no_match", "real_server.HTTP_GET.url.regex_no_match"),
            ("", format!("{url}regex = \"ok\"\nregex_no_match = 1"), "regex_no_match", "real_server.HTTP_GET.url.regex_no_match"),
            ("", format!("{url}status_code = 99"), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = 600"), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = \"299-200\""), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = \"2xx\""), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = \"\""), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = []"), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = [200, 1.5]"), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}status_code = true"), "status_code", "real_server.HTTP_GET.url.status_code"),
            ("", format!("{url}virtualhost = \"\""), "virtualhost", "real_server.HTTP_GET.url.virtualhost"),
            ("", format!("{url}body_contains = \"\""), "body_contains", "real_server.HTTP_GET.url.body_contains"),
            ("", format!("{url}body_contains = \"{}\"", "x".repeat(1025)), "body_contains", "real_server.HTTP_GET.url.body_contains"),
            ("", format!("{misc}misc_path = \"check.sh\""), "misc_path", "real_server.MISC_CHECK.misc_path"),
            ("", format!("{misc}misc_path = \"\""), "misc_path", "real_server.MISC_CHECK.misc_path"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nmisc_timeout = 0"), "misc_timeout", "real_server.MISC_CHECK.misc_timeout"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nuser = \" \""), "user", "real_server.MISC_CHECK.user"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nretry = 2000"), "retry", "real_server.MISC_CHECK.retry"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nnb_get_retry = 1"), "nb_get_retry", "nb_get_retry"),
            ("", format!("{misc}misc_path = \"/bin/true\"\nconnect_timeout = 1"), "connect_timeout", "connect_timeout"),
            ("", "[[virtual_server.real_server.MISC_CHECK]]\nmisc_path = \"/bin/true\"\nmisc_dynamic = true\n[[virtual_server.real_server.MISC_CHECK]]\nmisc_path = \"/bin/false\"\nmisc_dynamic = true".into(), "misc_path = \"/bin/false\"", "real_server.MISC_CHECK.misc_dynamic"),
            ("", format!("{ssl}enable_sni = 1"), "enable_sni", "real_server.SSL_GET.enable_sni"),
            ("", format!("{ssl}ca_file = \"ca.pem\""), "ca_file", "real_server.SSL_GET.ca_file"),
            ("", format!("{ssl}sni_name = \"a b\""), "sni_name", "real_server.SSL_GET.sni_name"),
            ("", format!("{url}ca_file = \"/ca.pem\""), "ca_file", "ca_file"),
            ("", format!("{http}enable_sni = true\nurl = {{ path = \"/\" }}"), "enable_sni", "real_server.HTTP_GET.enable_sni"),
            ("", format!("{http}ca_file = \"/ca.pem\"\nurl = {{ path = \"/\" }}"), "ca_file", "real_server.HTTP_GET.ca_file"),
            ("", format!("{dns}type = \"SRV\""), "type", "real_server.DNS_CHECK.type"),
            ("", format!("{dns}type = 1"), "type", "real_server.DNS_CHECK.type"),
            ("", format!("{dns}name = \"a..b\""), "name", "real_server.DNS_CHECK.name"),
            ("", format!("{dns}name = \"{}\"", "x".repeat(64)), "name", "real_server.DNS_CHECK.name"),
            ("", format!("{dns}nb_get_retry = 1"), "nb_get_retry", "nb_get_retry"),
            ("", format!("{udp}payload = \"0g\""), "payload", "real_server.UDP_CHECK.payload"),
            ("", format!("{udp}payload = \"0x\""), "payload", "real_server.UDP_CHECK.payload"),
            ("", format!("{udp}payload = \"{}\"", "00".repeat(1401)), "payload", "real_server.UDP_CHECK.payload"),
            ("", format!("{udp}require_reply = 1"), "require_reply", "real_server.UDP_CHECK.require_reply"),
            ("", format!("{udp}require_reply = \"zz\""), "require_reply", "real_server.UDP_CHECK.require_reply"),
            ("", format!("{udp}min_reply_length = 4"), "min_reply_length", "real_server.UDP_CHECK.min_reply_length"),
            ("", format!("{udp}max_reply_length = 4"), "max_reply_length", "real_server.UDP_CHECK.max_reply_length"),
            ("", format!("{ping}connect_port = 7"), "connect_port", "real_server.PING_CHECK.connect_port"),
            ("", format!("{udp}require_reply = true\nmin_reply_length = 9\nmax_reply_length = 8"), "max_reply_length", "real_server.UDP_CHECK.max_reply_length"),
            ("", format!("{udp}require_reply = true\nmax_reply_length = 65536"), "max_reply_length", "real_server.UDP_CHECK.max_reply_length"),
            ("", format!("{ping}connect_port = 1"), "connect_port", "connect_port"),
            ("", format!("{ping}bindto = \"2001:db8::1\""), "bindto", "real_server.PING_CHECK.bindto"),
            ("", format!("{smtp}helo_name = \"a b\""), "helo_name", "real_server.SMTP_CHECK.helo_name"),
            ("", format!("{smtp}helo_name = \"\""), "helo_name", "real_server.SMTP_CHECK.helo_name"),
        ];
        for (vs, rs, bad_line, key) in cases {
            let t = text(vs, rs);
            let e = Config::parse(Path::new("lb.toml"), &t)
                .map(|_| ())
                .expect_err(&format!("accepted: {rs}"))
                .to_string();
            let line = line_of(&t, bad_line);
            assert!(
                e.starts_with(&format!("lb.toml:{line}:")),
                "{rs:?}: want line {line}: {e}"
            );
            assert!(e.contains(key), "{rs:?}: want {key}: {e}");
        }
        // Real server on port 0 (every port) and no connect_port: the real server's line.
        let t = text("", tcp).replacen("  port = 80", "  port = 0", 1);
        let e = Config::parse(Path::new("lb.toml"), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "lb.toml:{}: `real_server.TCP_CHECK.connect_port`",
                line_of(&t, "192.0.2.11")
            )),
            "{e}"
        );
    }

    #[test]
    fn ssl_get_is_http_get_over_tls() {
        let c = checks_of(
            "",
            r#"[virtual_server.real_server.SSL_GET]
url = { path = "/health", digest = "9b3a0c85a887a256d6939da88aabd8cd" }"#,
        );
        let Check {
            kind: CheckKind::Http(h),
            timing,
        } = &c.checks[0]
        else {
            panic!("{c:?}")
        };
        assert_eq!(c.checks[0].kind.name(), "SSL_GET");
        assert_eq!(
            timing.delay_before_retry,
            secs(3.0),
            "keepalived's SSL_GET default"
        );
        assert_eq!(
            h.tls,
            Some(Tls {
                sni: Sni::Off,
                ca_file: None
            }),
            "keepalived: no SNI, no verification"
        );
        assert!(h.urls[0].digest.is_some());

        let rs = r#"[virtual_server.real_server.SSL_GET]
virtualhost = "www.example.test:8443"
enable_sni = true
ca_file = "/etc/lb/ca.pem"
url = [{ path = "/" }, { path = "/b", virtualhost = "b.example.test" }]"#;
        let c = checks_of("", rs);
        let CheckKind::Http(h) = &c.checks[0].kind else {
            panic!("{c:?}")
        };
        let tls = h.tls.as_ref().unwrap();
        assert_eq!(tls.sni, Sni::Virtualhost);
        assert_eq!(
            tls.ca_file.as_ref().and_then(|c| c.path.to_str()),
            Some("/etc/lb/ca.pem")
        );
        let c = parse("", rs).unwrap();
        let r = &c.scripts[0];
        assert_eq!(
            (r.line, r.key.as_str(), r.kind),
            (
                line_of(&text("", rs), "ca_file"),
                "real_server.SSL_GET.ca_file",
                crate::config::RefKind::Read
            )
        );
        // The SNI and verified name is the url's virtualhost without its port.
        assert_eq!(tls.server_name(&h.urls[0]), Some("www.example.test"));
        assert_eq!(tls.server_name(&h.urls[1]), Some("b.example.test"));
        let named = Tls {
            sni: Sni::Name("sni.example.test".into()),
            ca_file: None,
        };
        assert_eq!(named.server_name(&h.urls[1]), Some("sni.example.test"));
        assert_eq!(host_part("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(host_part("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn dns_udp_ping_smtp_defaults_and_keys() {
        let c = checks_of(
            "",
            "[virtual_server.real_server.DNS_CHECK]
[virtual_server.real_server.UDP_CHECK]
\
             [virtual_server.real_server.PING_CHECK]
[virtual_server.real_server.SMTP_CHECK]",
        );
        let names: Vec<_> = c.checks.iter().map(|c| c.kind.name()).collect();
        assert_eq!(
            names,
            ["DNS_CHECK", "UDP_CHECK", "PING_CHECK", "SMTP_CHECK"]
        );
        let CheckKind::Dns(d) = &c.checks[0].kind else {
            panic!()
        };
        assert_eq!((d.qtype.as_str(), d.name.as_str()), ("SOA", "."));
        assert_eq!(d.connect.dest, "192.0.2.11:80".parse().unwrap());
        let t = c.checks[0].timing;
        assert_eq!(
            (t.retry, t.delay_before_retry),
            (3, secs(60.0)),
            "keepalived: retry 3, delay_before_retry delay_loop"
        );
        let CheckKind::Udp(u) = &c.checks[1].kind else {
            panic!()
        };
        assert_eq!((u.payload.as_slice(), &u.reply), (&[][..], &None));
        assert_eq!(
            c.checks[2].kind,
            CheckKind::Ping(PingCheck {
                dest: "192.0.2.11".parse().unwrap(),
                bindto: None,
                timeout: secs(5.0)
            })
        );
        let CheckKind::Smtp(m) = &c.checks[3].kind else {
            panic!()
        };
        assert_eq!(m.helo_name, "smtpchecker.keepalived.org");

        let c = checks_of(
            "",
            r#"[virtual_server.real_server.DNS_CHECK]
type = "aaaa"
name = "www.example.test"
connect_port = 53
delay_loop = 4
[virtual_server.real_server.UDP_CHECK]
connect_port = 53
payload = "0001 0100"
require_reply = "00x1"
min_reply_length = 2
max_reply_length = 512
[virtual_server.real_server.PING_CHECK]
connect_ip = "192.0.2.12"
bindto = "192.0.2.1"
connect_timeout = 1
[virtual_server.real_server.SMTP_CHECK]
connect_port = 25
helo_name = "lb.example.test""#,
        );
        let CheckKind::Dns(d) = &c.checks[0].kind else {
            panic!()
        };
        assert_eq!((d.qtype.as_str(), d.connect.dest.port()), ("AAAA", 53));
        assert_eq!(&d.query[d.query.len() - 4..], &[0, 28, 0, 1], "AAAA IN");
        assert_eq!(c.checks[0].timing.delay_before_retry, secs(4.0));
        let CheckKind::Udp(u) = &c.checks[1].kind else {
            panic!()
        };
        assert_eq!(u.payload, [0, 1, 1, 0]);
        assert_eq!(
            u.reply,
            Some(ReplyRule {
                pattern: vec![(0, 0xff), (0x01, 0x0f)],
                min_len: 2,
                max_len: 512
            })
        );
        assert_eq!(
            c.checks[2].kind,
            CheckKind::Ping(PingCheck {
                dest: "192.0.2.12".parse().unwrap(),
                bindto: Some("192.0.2.1".parse().unwrap()),
                timeout: secs(1.0)
            })
        );
        let CheckKind::Smtp(m) = &c.checks[3].kind else {
            panic!()
        };
        assert_eq!(
            (m.helo_name.as_str(), m.connect.dest.port()),
            ("lb.example.test", 25)
        );
    }

    #[test]
    fn status_codes_display_and_contains() {
        let s = StatusCodes::new(vec![200..=200, 300..=399]);
        assert!(s.contains(200) && s.contains(399) && !s.contains(201) && !s.contains(400));
        assert_eq!(s.to_string(), "200 300-399");
        assert_eq!(StatusCodes::default().to_string(), "200-299");
    }
}
