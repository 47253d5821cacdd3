//! keepalived's other checkers in TOML form: `DNS_CHECK`, `UDP_CHECK`, `PING_CHECK` and
//! `SMTP_CHECK` (`SSL_GET` is `HTTP_GET` with TLS, in the parent module). Keys and defaults
//! are keepalived 2.3's (`check_dns.c`, `check_udp.c`, `check_ping.c`, `check_smtp.c`):
//!
//! | block | keys | defaults |
//! |---|---|---|
//! | `DNS_CHECK` | `type`, `name` | `SOA`, `"."`; `retry` 3, `delay_before_retry` = `delay_loop` |
//! | `UDP_CHECK` | `payload`, `require_reply`, `min_reply_length`, `max_reply_length` | an empty datagram; no reply needed; 0, 255 |
//! | `PING_CHECK` | (`connect_ip`, `bindto`, `connect_timeout`) | |
//! | `SMTP_CHECK` | `helo_name` | `"smtpchecker.keepalived.org"` |
//!
//! Each also takes the connecting keys (`connect_ip`, `connect_port`, `bindto`,
//! `connect_timeout`; `PING_CHECK` has no port) and the timing keys of every check.
//!
//! Hex strings (`payload`, `require_reply`) are keepalived's: groups of hexadecimal digits
//! separated by spaces, two digits a byte, a group's odd last digit a byte of its own
//! (`"Ab12f 3"` is AB 12 0F 03); in `require_reply` an `x` is a digit that matches anything.
use std::time::Duration;

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};

use super::{
    connect, endpoints, integer, seconds, string, timing, wrong_type, Check, CheckKind, Connect,
    Inherited, RawConnect, RawTiming, Timing, Value, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DELAY_BEFORE_RETRY, DEFAULT_RETRY, TIMEOUT,
};
use crate::config::{ConfigError, Ctx};

/// keepalived's `DNS_CHECK` retry default (`DNS_DEFAULT_RETRY`).
pub const DEFAULT_DNS_RETRY: u32 = 3;
/// keepalived's `helo_name` default (`SMTP_DEFAULT_HELO`).
pub const DEFAULT_HELO: &str = "smtpchecker.keepalived.org";
/// keepalived's `max_reply_length` default.
pub const DEFAULT_MAX_REPLY: u16 = 255;
/// The longest `payload`: one datagram.
pub const MAX_PAYLOAD: usize = 1400;
/// The longest `helo_name`: an SMTP command line is at most 512 bytes (RFC 5321, 4.5.3.1.4).
pub const MAX_HELO: usize = 255;
/// The query types keepalived's `DNS_CHECK` knows.
const DNS_TYPES: &[&str] = &[
    "A", "NS", "CNAME", "SOA", "MX", "TXT", "AAAA", "RRSIG", "DNSKEY",
];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawDns {
    #[serde(rename = "type")]
    qtype: Option<Value>,
    name: Option<Value>,
    connect_ip: Option<Value>,
    connect_port: Option<Value>,
    bindto: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawUdp {
    payload: Option<Value>,
    /// `true`, or a hex pattern the reply must start with.
    require_reply: Option<Value>,
    min_reply_length: Option<Value>,
    max_reply_length: Option<Value>,
    connect_ip: Option<Value>,
    connect_port: Option<Value>,
    bindto: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawPing {
    connect_ip: Option<Value>,
    /// Refused with a reason (an echo has no port), not as an unknown key.
    connect_port: Option<Value>,
    bindto: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawSmtp {
    helo_name: Option<Value>,
    connect_ip: Option<Value>,
    connect_port: Option<Value>,
    bindto: Option<Value>,
    connect_timeout: Option<Value>,
    retry: Option<Value>,
    delay_before_retry: Option<Value>,
    warmup: Option<Value>,
    delay_loop: Option<Value>,
    alpha: Option<Value>,
}

impl super::Block for RawDns {
    const KEY: &'static str = "DNS_CHECK";
}
impl super::Block for RawUdp {
    const KEY: &'static str = "UDP_CHECK";
}
impl super::Block for RawPing {
    const KEY: &'static str = "PING_CHECK";
}
impl super::Block for RawSmtp {
    const KEY: &'static str = "SMTP_CHECK";
}
impl super::Block for RawFile {
    const KEY: &'static str = "FILE_CHECK";
}

/// keepalived's `FILE_CHECK { track_file NAME; weight N [reverse] }`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawFile {
    track_file: Value,
    weight: Option<Value>,
    reverse: Option<Value>,
}

/// `FILE_CHECK`: a `track_file`'s number, read every [`FILE_CHECK_PERIOD`]. Unweighted, the
/// real server is down while the number is not 0 (`reverse`: while it is 0); weighted, its
/// weight is its own plus number x weight (negated by `reverse`), at least 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileCheck {
    /// The `track_file` (its path is in [`crate::config::Config::track_files`]).
    pub track_file: String,
    /// `None`: the track_file's own weight.
    pub weight: Option<i32>,
    /// `None`: the track_file's own.
    pub reverse: Option<bool>,
}

/// keepalived follows a tracked file with inotify; the check reads it this often.
pub const FILE_CHECK_PERIOD: Duration = Duration::from_millis(200);

pub(super) fn file(cx: &Ctx, raw: &RawFile) -> Result<Check, ConfigError> {
    let k = |key: &str| format!("real_server.FILE_CHECK.{key}");
    let name = string(cx, &raw.track_file, &k("track_file"))?;
    // Checked against the file's track_file blocks once it is assembled (a service block
    // is parsed apart from them).
    cx.track_file_named(name, raw.track_file.span(), &k("track_file"));
    let weight = raw
        .weight
        .as_ref()
        .map(|w| integer(cx, w, &k("weight"), -254..=254).map(|w| w as i32))
        .transpose()?;
    let reverse = match &raw.reverse {
        None => None,
        Some(v) => Some(
            v.get_ref()
                .as_bool()
                .ok_or_else(|| wrong_type(cx, v, &k("reverse"), "true or false"))?,
        ),
    };
    Ok(Check {
        kind: CheckKind::File(FileCheck {
            track_file: name.to_string(),
            weight,
            reverse,
        }),
        timing: Timing {
            delay_loop: FILE_CHECK_PERIOD,
            retry: 0,
            delay_before_retry: Duration::ZERO,
            warmup: Duration::ZERO,
            alpha: false,
        },
    })
}

/// `DNS_CHECK`: a query over UDP; up when the answer with the query's ID says NOERROR.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsCheck {
    pub connect: Connect,
    /// `type`, upper case.
    pub qtype: String,
    /// `name`, as given.
    pub name: String,
    /// The query in wire format with ID 0: RD set, one question of class IN. The probe
    /// writes a random ID into its first two bytes.
    pub query: Vec<u8>,
}

/// `UDP_CHECK`: a datagram; down on an ICMP error (port or host unreachable), and, with
/// `require_reply`, without an answer that fits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UdpCheck {
    pub connect: Connect,
    pub payload: Vec<u8>,
    /// `require_reply`: `None` when silence passes.
    pub reply: Option<ReplyRule>,
}

/// What a `UDP_CHECK` reply must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplyRule {
    /// The reply's first bytes against these (value, mask) pairs, as far as both go.
    pub pattern: Vec<(u8, u8)>,
    pub min_len: u16,
    pub max_len: u16,
}

impl ReplyRule {
    /// Why `reply` does not fit, or `None`.
    pub fn judge(&self, reply: &[u8]) -> Option<String> {
        let n = reply.len();
        if n < usize::from(self.min_len) || n > usize::from(self.max_len) {
            return Some(format!(
                "a reply of {n} bytes, expected {}..={}",
                self.min_len, self.max_len
            ));
        }
        for (i, (&b, &(want, mask))) in reply.iter().zip(&self.pattern).enumerate() {
            if b & mask != want & mask {
                return Some(format!(
                    "reply byte {i} is {b:02x}, expected {}",
                    masked_hex(want, mask)
                ));
            }
        }
        None
    }
}

fn masked_hex(v: u8, mask: u8) -> String {
    let nib = |v: u8, m: u8| {
        if m == 0 {
            'x'
        } else {
            char::from_digit(u32::from(v), 16).unwrap_or('?')
        }
    };
    format!("{}{}", nib(v >> 4, mask >> 4), nib(v & 15, mask & 15))
}

/// `PING_CHECK`: an ICMP (ICMPv6) echo answered within `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PingCheck {
    pub dest: std::net::IpAddr,
    pub bindto: Option<std::net::IpAddr>,
    pub timeout: Duration,
}

/// `SMTP_CHECK`: greeting 220, `HELO helo_name` answered 250, then `QUIT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SmtpCheck {
    pub connect: Connect,
    pub helo_name: String,
}

/// keepalived's hex string; `wildcards` lets `x` stand for any digit (mask 0).
pub fn parse_hex(s: &str, wildcards: bool) -> Result<Vec<(u8, u8)>, String> {
    let mut out = Vec::new();
    for group in s.split_whitespace() {
        let digits: Vec<(u8, u8)> = group
            .chars()
            .map(|c| match c {
                'x' | 'X' if wildcards => Ok((0, 0)),
                c => c
                    .to_digit(16)
                    .map(|d| (d as u8, 0xf))
                    .ok_or_else(|| format!("{c:?} is not a hexadecimal digit")),
            })
            .collect::<Result<_, _>>()?;
        for pair in digits.chunks(2) {
            out.push(match *pair {
                [(hi, hm), (lo, lm)] => (hi << 4 | lo, hm << 4 | lm),
                [(lo, lm)] => (lo, lm),
                _ => unreachable!("chunks of at most 2"),
            });
        }
    }
    Ok(out)
}

/// The connecting and timing keys, which every block here has under the same names.
struct Common<'a> {
    connect_ip: &'a Option<Value>,
    connect_port: &'a Option<Value>,
    bindto: &'a Option<Value>,
    connect_timeout: &'a Option<Value>,
    retry: &'a Option<Value>,
    delay_before_retry: &'a Option<Value>,
    warmup: &'a Option<Value>,
    delay_loop: &'a Option<Value>,
    alpha: &'a Option<Value>,
}

macro_rules! common {
    ($raw:expr) => {
        Common {
            connect_ip: &$raw.connect_ip,
            connect_port: &$raw.connect_port,
            bindto: &$raw.bindto,
            connect_timeout: &$raw.connect_timeout,
            retry: &$raw.retry,
            delay_before_retry: &$raw.delay_before_retry,
            warmup: &$raw.warmup,
            delay_loop: &$raw.delay_loop,
            alpha: &$raw.alpha,
        }
    };
}

impl<'a> Common<'a> {
    fn connect(&self, cx: &Ctx, block: &str, up: &Inherited) -> Result<Connect, ConfigError> {
        connect(
            cx,
            RawConnect {
                connect_ip: self.connect_ip,
                connect_port: self.connect_port,
                bindto: self.bindto,
                connect_timeout: self.connect_timeout,
            },
            block,
            up,
        )
    }

    fn timing(
        &self,
        cx: &Ctx,
        block: &str,
        up: &Inherited,
        default_retry: u32,
        default_delay_before_retry: Duration,
    ) -> Result<Timing, ConfigError> {
        timing(
            cx,
            RawTiming {
                retry: self.retry,
                nb_get_retry: None,
                delay_before_retry: self.delay_before_retry,
                warmup: self.warmup,
                delay_loop: self.delay_loop,
                alpha: self.alpha,
            },
            block,
            up,
            default_retry,
            default_delay_before_retry,
        )
    }
}

pub(super) fn dns(cx: &Ctx, raw: &RawDns, up: &Inherited) -> Result<Check, ConfigError> {
    let block = "real_server.DNS_CHECK";
    let k = |key: &str| format!("{block}.{key}");
    let common = common!(raw);
    let connect = common.connect(cx, block, up)?;
    // keepalived: "Defaults to delay_loop for DNS_CHECK".
    let delay_loop =
        seconds(cx, &raw.delay_loop, &k("delay_loop"), super::DELAY_LOOP)?.unwrap_or(up.delay_loop);
    let timing = common.timing(cx, block, up, DEFAULT_DNS_RETRY, delay_loop)?;
    let qtype = match &raw.qtype {
        None => "SOA".to_string(),
        Some(v) => {
            let t = string(cx, v, &k("type"))?.to_ascii_uppercase();
            if !DNS_TYPES.contains(&t.as_str()) {
                return Err(cx.invalid(
                    v.span(),
                    &k("type"),
                    format!("{t:?}: expected one of {}", DNS_TYPES.join(", ")),
                ));
            }
            t
        }
    };
    let (name, name_span) = match &raw.name {
        None => (".".to_string(), up.span.clone()),
        Some(v) => (string(cx, v, &k("name"))?.to_string(), v.span()),
    };
    let query = dns_query(&qtype, &name)
        .map_err(|e| cx.invalid(name_span, &k("name"), format!("{name:?}: {e}")))?;
    Ok(Check {
        kind: CheckKind::Dns(DnsCheck {
            connect,
            qtype,
            name,
            query,
        }),
        timing,
    })
}

/// The query keepalived's `DNS_CHECK` sends (`dns_make_query`): ID 0 here, RD, one
/// question of class IN.
fn dns_query(qtype: &str, name: &str) -> Result<Vec<u8>, String> {
    let rtype: RecordType = qtype.parse().map_err(|e| format!("{e}"))?;
    let mut fqdn = Name::from_ascii(name).map_err(|e| format!("not a domain name: {e}"))?;
    fqdn.set_fqdn(true);
    if fqdn.iter().any(|l| l.is_empty()) {
        return Err("a label is empty".into());
    }
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(fqdn, rtype));
    m.to_vec().map_err(|e| e.to_string())
}

pub(super) fn udp(cx: &Ctx, raw: &RawUdp, up: &Inherited) -> Result<Check, ConfigError> {
    let block = "real_server.UDP_CHECK";
    let k = |key: &str| format!("{block}.{key}");
    let common = common!(raw);
    let connect = common.connect(cx, block, up)?;
    let timing = common.timing(cx, block, up, DEFAULT_RETRY, DEFAULT_DELAY_BEFORE_RETRY)?;
    let payload = match &raw.payload {
        None => Vec::new(),
        Some(v) => {
            let s = string(cx, v, &k("payload"))?;
            let bytes = parse_hex(s, false).map_err(|e| cx.invalid(v.span(), &k("payload"), e))?;
            if bytes.len() > MAX_PAYLOAD {
                return Err(cx.invalid(
                    v.span(),
                    &k("payload"),
                    format!("{} bytes, at most {MAX_PAYLOAD}", bytes.len()),
                ));
            }
            bytes.into_iter().map(|(b, _)| b).collect()
        }
    };
    let length = |v: &Option<Value>, key: &str| {
        v.as_ref()
            .map(|v| integer(cx, v, &k(key), 0..=65535).map(|n| (n as u16, v.span())))
            .transpose()
    };
    let min = length(&raw.min_reply_length, "min_reply_length")?;
    let max = length(&raw.max_reply_length, "max_reply_length")?;
    let pattern = match &raw.require_reply {
        None => None,
        Some(v) => match v.get_ref() {
            toml::Value::Boolean(true) => Some(Vec::new()),
            toml::Value::Boolean(false) => None,
            toml::Value::String(s) => {
                Some(parse_hex(s, true).map_err(|e| cx.invalid(v.span(), &k("require_reply"), e))?)
            }
            _ => {
                return Err(wrong_type(
                    cx,
                    v,
                    &k("require_reply"),
                    "true, false or a hex string",
                ))
            }
        },
    };
    let reply = match pattern {
        None => {
            for (given, key) in [(&min, "min_reply_length"), (&max, "max_reply_length")] {
                if let Some((_, span)) = given {
                    return Err(cx.invalid(span.clone(), &k(key), "needs require_reply"));
                }
            }
            None
        }
        Some(pattern) => {
            // keepalived judges lengths only with a pattern (`check_udp_reply`): a bare
            // `require_reply` takes any reply, unless a length is given here.
            let max_default = if pattern.is_empty() {
                u16::MAX
            } else {
                DEFAULT_MAX_REPLY
            };
            let min_len = min.as_ref().map_or(0, |m| m.0);
            let max_len = max.as_ref().map_or(max_default, |m| m.0);
            if min_len > max_len {
                let span = max.or(min).map(|m| m.1).unwrap_or(up.span.clone());
                return Err(cx.invalid(
                    span,
                    &k("max_reply_length"),
                    format!("{max_len} is below min_reply_length {min_len}"),
                ));
            }
            Some(ReplyRule {
                pattern,
                min_len,
                max_len,
            })
        }
    };
    Ok(Check {
        kind: CheckKind::Udp(UdpCheck {
            connect,
            payload,
            reply,
        }),
        timing,
    })
}

pub(super) fn ping(cx: &Ctx, raw: &RawPing, up: &Inherited) -> Result<Check, ConfigError> {
    let block = "real_server.PING_CHECK";
    let k = |key: &str| format!("{block}.{key}");
    if let Some(v) = &raw.connect_port {
        return Err(cx.invalid(v.span(), &k("connect_port"), "an ICMP echo has no port"));
    }
    let common = common!(raw);
    let (dest, bindto) = endpoints(cx, &raw.connect_ip, &raw.bindto, block, up)?;
    let timing = common.timing(cx, block, up, DEFAULT_RETRY, DEFAULT_DELAY_BEFORE_RETRY)?;
    Ok(Check {
        kind: CheckKind::Ping(PingCheck {
            dest,
            bindto,
            timeout: seconds(cx, &raw.connect_timeout, &k("connect_timeout"), TIMEOUT)?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        }),
        timing,
    })
}

pub(super) fn smtp(cx: &Ctx, raw: &RawSmtp, up: &Inherited) -> Result<Check, ConfigError> {
    let block = "real_server.SMTP_CHECK";
    let k = |key: &str| format!("{block}.{key}");
    let common = common!(raw);
    let connect = common.connect(cx, block, up)?;
    let timing = common.timing(cx, block, up, DEFAULT_RETRY, DEFAULT_DELAY_BEFORE_RETRY)?;
    let helo_name = match &raw.helo_name {
        None => DEFAULT_HELO.to_string(),
        Some(v) => {
            let s = string(cx, v, &k("helo_name"))?;
            if s.is_empty() || s.len() > MAX_HELO || !super::printable(s) {
                return Err(cx.invalid(
                    v.span(),
                    &k("helo_name"),
                    format!("must be 1..={MAX_HELO} printable ASCII characters without spaces"),
                ));
            }
            s.to_string()
        }
    };
    Ok(Check {
        kind: CheckKind::Smtp(SmtpCheck { connect, helo_name }),
        timing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_strings_are_keepalived_s() {
        let v = |s| {
            parse_hex(s, false)
                .unwrap()
                .into_iter()
                .map(|(b, _)| b)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            v("Ab12f 3 456"),
            [0xab, 0x12, 0x0f, 0x03, 0x45, 0x06],
            "keepalived.conf(5)'s example"
        );
        assert_eq!(v(""), Vec::<u8>::new());
        assert!(parse_hex("12x4", false).is_err());
        assert!(parse_hex("zz", true).is_err());
        assert_eq!(
            parse_hex("1x x2", true).unwrap(),
            [(0x10, 0xf0), (0x02, 0x0f)]
        );
    }

    #[test]
    fn reply_rule_checks_length_and_masked_prefix() {
        let rule = ReplyRule {
            pattern: parse_hex("ab x1", true).unwrap(),
            min_len: 2,
            max_len: 4,
        };
        assert_eq!(rule.judge(&[0xab, 0x71]), None);
        assert_eq!(rule.judge(&[0xab, 0x01, 0, 0]), None);
        assert!(rule.judge(&[0xab]).unwrap().contains("1 bytes"));
        assert!(rule.judge(&[0xab, 1, 2, 3, 4]).unwrap().contains("5 bytes"));
        let e = rule.judge(&[0xab, 0x72]).unwrap();
        assert!(e.contains("byte 1 is 72, expected x1"), "{e}");
        // A pattern longer than the reply checks what there is (keepalived's rule).
        let long = ReplyRule {
            pattern: parse_hex("01 02 03", true).unwrap(),
            min_len: 0,
            max_len: 255,
        };
        assert_eq!(long.judge(&[1]), None);
    }

    #[test]
    fn dns_query_bytes() {
        // ID 0, RD, one question; "." SOA IN.
        assert_eq!(
            dns_query("SOA", ".").unwrap(),
            [0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1]
        );
        let q = dns_query("A", "www.example.test").unwrap();
        assert_eq!(&q[12..], b"\x03www\x07example\x04test\x00\x00\x01\x00\x01");
        assert!(dns_query("A", "a..b").is_err());
    }
}
