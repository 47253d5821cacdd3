//! The bytes of `HTTP_GET`: the request, and a strict reading of the response (RFC 9112),
//! with no I/O so that every malformed answer is a unit test.
//!
//! A backend under test is not trusted: anything that is not a well-formed response is a
//! failure with a reason, never a panic, and nothing here reads past the bytes it is given.
use std::net::SocketAddr;

/// The most of a response the probe reads: the head and, for `body_contains` and `regex`,
/// the start of the body.
pub const MAX_RESPONSE: usize = 8192;
/// The most it reads for a `digest`, which is over the whole body: health pages are small,
/// and a probe's memory stays bounded.
pub const MAX_DIGEST_RESPONSE: usize = 64 * 1024;

/// How the body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

/// A parsed status line and header section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Where the body starts.
    pub len: usize,
    pub framing: Framing,
}

/// `GET <path> HTTP/1.1` with `Host` and `Connection: close`. `path` and `host` are
/// printable ASCII without spaces (the configuration checks it).
pub fn request(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-daemon-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// The `Host` for a check without `virtualhost`: the address probed (RFC 9110 §7.2: an IPv6
/// literal in brackets, the port unless it is 80).
pub fn default_host(dest: SocketAddr) -> String {
    let ip = match dest {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    if dest.port() == 80 {
        ip
    } else {
        format!("{ip}:{}", dest.port())
    }
}

/// Up to 32 bytes of `b`, escaped, for error messages.
fn shown(b: &[u8]) -> String {
    let end = b.len().min(32);
    let mut s: String = b[..end].escape_ascii().to_string();
    if b.len() > end {
        s.push_str("...");
    }
    s
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `HTTP/1.x SP 3DIGIT [SP reason-phrase]` (RFC 9112 §4; a missing space before an empty
/// reason is tolerated, as most clients do).
fn status_line(line: &[u8]) -> Result<u16, String> {
    let bad = || format!("bad status line \"{}\"", shown(line));
    let rest = line.strip_prefix(b"HTTP/").ok_or_else(bad)?;
    match rest {
        [b'1', b'.', minor, b' ', d1, d2, d3, tail @ ..] if minor.is_ascii_digit() => {
            if ![d1, d2, d3].iter().all(|d| d.is_ascii_digit()) {
                return Err(bad());
            }
            let code =
                u16::from(d1 - b'0') * 100 + u16::from(d2 - b'0') * 10 + u16::from(d3 - b'0');
            if !(100..=599).contains(&code) {
                return Err(bad());
            }
            let reason_ok = match tail {
                [] => true,
                [b' ', reason @ ..] => reason
                    .iter()
                    .all(|&c| c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80),
                _ => false,
            };
            if !reason_ok {
                return Err(bad());
            }
            Ok(code)
        }
        [d, ..] if d.is_ascii_digit() && *d != b'1' => {
            Err(format!("unsupported HTTP version in \"{}\"", shown(line)))
        }
        _ => Err(bad()),
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// What the headers say about the body.
#[derive(Default)]
struct Fields {
    content_length: Option<usize>,
    /// Transfer-Encoding given; `true` when its last coding is chunked.
    transfer_encoding: Option<bool>,
}

/// One `name: value` line (RFC 9112 §5).
fn field(line: &[u8], fields: &mut Fields) -> Result<(), String> {
    let bad = |why: &str| format!("{why} in header line \"{}\"", shown(line));
    if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
        return Err(bad("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|c| *c == b':')
        .ok_or_else(|| bad("no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|c| is_tchar(*c)) {
        return Err(bad("bad field name"));
    }
    if !value
        .iter()
        .all(|&c| c == b'\t' || c == b' ' || (0x21..=0x7e).contains(&c) || c >= 0x80)
    {
        return Err(bad("control character"));
    }
    let value = value.trim_ascii();
    if name.eq_ignore_ascii_case(b"content-length") {
        let n = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.len() <= 18 && v.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| bad("bad Content-Length"))?;
        if fields.content_length.is_some_and(|m| m != n) {
            return Err(bad("conflicting Content-Length"));
        }
        fields.content_length = Some(n);
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        let last = value
            .rsplit(|c| *c == b',')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        fields.transfer_encoding = Some(last.eq_ignore_ascii_case(b"chunked"));
    }
    Ok(())
}

/// Reads the status line and headers at the start of `buf`: `Ok(None)` while they are
/// incomplete, an error as soon as the bytes cannot be a response.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    const PREFIX: &[u8] = b"HTTP/";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(format!("not an HTTP response: \"{}\"", shown(buf)));
    }
    let Some(eol) = buf.iter().position(|c| *c == b'\n') else {
        return Ok(None);
    };
    let status = status_line(strip_cr(&buf[..eol]))?;
    let mut fields = Fields::default();
    let mut pos = eol + 1;
    loop {
        let Some(rel) = buf[pos..].iter().position(|c| *c == b'\n') else {
            return Ok(None);
        };
        let line = strip_cr(&buf[pos..pos + rel]);
        pos += rel + 1;
        if line.is_empty() {
            break;
        }
        field(line, &mut fields)?;
    }
    // RFC 9112 §6.3: no body after 1xx, 204 and 304; Transfer-Encoding overrides
    // Content-Length; a Transfer-Encoding other than chunked runs until the close.
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        match (fields.transfer_encoding, fields.content_length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    Ok(Some(Head {
        status,
        len: pos,
        framing,
    }))
}

/// The body in `raw` (the bytes after the head) as far as it has arrived, and whether it is
/// complete. `eof`: the connection has closed.
pub fn decode_body(raw: &[u8], framing: Framing, eof: bool) -> Result<(Vec<u8>, bool), String> {
    match framing {
        Framing::Length(n) => Ok((raw[..n.min(raw.len())].to_vec(), raw.len() >= n)),
        Framing::Close => Ok((raw.to_vec(), eof)),
        Framing::Chunked => dechunk(raw),
    }
}

/// RFC 9112 §7.1: `size[;ext] CRLF data CRLF ... 0 CRLF [trailers] CRLF`. Complete at the
/// last chunk (trailers are not needed).
fn dechunk(raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(rel) = raw[pos..].iter().position(|c| *c == b'\n') else {
            return Ok((out, false));
        };
        let line = strip_cr(&raw[pos..pos + rel]);
        let size = line
            .split(|c| *c == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(size)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 15 && s.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("bad chunk size line \"{}\"", shown(line)))?;
        pos += rel + 1;
        if size == 0 {
            return Ok((out, true));
        }
        let data = &raw[pos..];
        if data.len() < size {
            out.extend_from_slice(data);
            return Ok((out, false));
        }
        out.extend_from_slice(&data[..size]);
        pos += size;
        match &raw[pos..] {
            [] | [b'\r'] => return Ok((out, false)),
            [b'\r', b'\n', ..] => pos += 2,
            [b'\n', ..] => pos += 1,
            _ => return Err("chunk data not followed by CRLF".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<Head>, String> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn request_bytes() {
        assert_eq!(
            request("/health?x=1", "www.example.com"),
            b"GET /health?x=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: lb-daemon-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(default_host("192.0.2.1:80".parse().unwrap()), "192.0.2.1");
        assert_eq!(
            default_host("192.0.2.1:8080".parse().unwrap()),
            "192.0.2.1:8080"
        );
        assert_eq!(
            default_host("[2001:db8::1]:80".parse().unwrap()),
            "[2001:db8::1]"
        );
        assert_eq!(
            default_host("[2001:db8::1]:443".parse().unwrap()),
            "[2001:db8::1]:443"
        );
    }

    #[test]
    fn good_heads() {
        let cases: &[(&str, u16, Framing)] = &[
            ("HTTP/1.1 200 OK\r\n\r\n", 200, Framing::Close),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                200,
                Framing::Length(5),
            ),
            (
                "HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Length:0\r\n\r\n",
                404,
                Framing::Length(0),
            ),
            ("HTTP/1.1 200\r\n\r\n", 200, Framing::Close),
            ("HTTP/1.1 200 \r\n\r\n", 200, Framing::Close),
            ("HTTP/1.1 200 OK\n\n", 200, Framing::Close),
            (
                "HTTP/1.1 503 Service\tUnavailable \u{e9}\r\n\r\n",
                503,
                Framing::Close,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                200,
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
                200,
                Framing::Chunked,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                200,
                Framing::Close,
            ),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
                204,
                Framing::Length(0),
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", 304, Framing::Length(0)),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                200,
                Framing::Length(5),
            ),
            ("HTTP/1.1 599 x\r\nX-Empty:\r\n\r\n", 599, Framing::Close),
        ];
        for (text, status, framing) in cases {
            let h = head(text)
                .unwrap_or_else(|e| panic!("{text:?}: {e}"))
                .unwrap();
            assert_eq!((h.status, h.framing), (*status, *framing), "{text:?}");
            let body_at = text
                .find("\r\n\r\n")
                .map(|i| i + 4)
                .or_else(|| text.find("\n\n").map(|i| i + 2));
            assert_eq!(Some(h.len), body_at, "{text:?}");
        }
    }

    #[test]
    fn incomplete_heads_wait() {
        for text in [
            "",
            "H",
            "HTTP/",
            "HTTP/1.1 2",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK\r",
            "HTTP/1.1 200 OK\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r",
        ] {
            assert_eq!(head(text), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn garbage_fails_early() {
        for text in [
            "SSH-2.0-OpenSSH_9.2\r\n",
            "\x16\x03\x01\x02\x00",
            "http/1.1 200 OK\r\n\r\n",
            "HTTX",
            " HTTP/1.1 200 OK\r\n\r\n",
            "\0\0\0\0",
        ] {
            assert!(head(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn malformed_heads_fail() {
        for text in [
            "HTTP/1.1 20 OK\r\n",
            "HTTP/1.1 2000 OK\r\n",
            "HTTP/1.1 abc OK\r\n",
            "HTTP/1.1 099 Low\r\n",
            "HTTP/1.1 600 High\r\n",
            "HTTP/1.1  200 OK\r\n",
            "HTTP/1.1\t200 OK\r\n",
            "HTTP/1.1 200OK\r\n",
            "HTTP/2 200\r\n",
            "HTTP/2.0 200 OK\r\n",
            "HTTP/0.9 200 OK\r\n",
            "HTTP/1.x 200 OK\r\n",
            "HTTP/1.1 200 O\x01K\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        ] {
            assert!(head(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn never_panics_on_any_prefix() {
        let text =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n";
        for end in 0..=text.len() {
            let _ = parse_head(&text[..end]);
            for start in 0..=end {
                let _ = decode_body(&text[start..end], Framing::Chunked, false);
            }
        }
        // And on every single byte value at every position of a short response.
        let base = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n".to_vec();
        for i in 0..base.len() {
            for b in 0..=255u8 {
                let mut t = base.clone();
                t[i] = b;
                let _ = parse_head(&t);
                let _ = decode_body(&t, Framing::Chunked, true);
            }
        }
    }

    #[test]
    fn bodies() {
        assert_eq!(
            decode_body(b"hello world", Framing::Length(5), false),
            Ok((b"hello".to_vec(), true))
        );
        assert_eq!(
            decode_body(b"hel", Framing::Length(5), false),
            Ok((b"hel".to_vec(), false))
        );
        assert_eq!(
            decode_body(b"abc", Framing::Close, false),
            Ok((b"abc".to_vec(), false))
        );
        assert_eq!(
            decode_body(b"abc", Framing::Close, true),
            Ok((b"abc".to_vec(), true))
        );
        let chunked = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        assert_eq!(
            decode_body(chunked, Framing::Chunked, false),
            Ok((b"hello world".to_vec(), true))
        );
        // A needle split across chunks is whole again.
        let split = b"3\r\nOK-\r\n3\r\nGOO\r\n1\nD\n0\r\n\r\n";
        assert_eq!(
            decode_body(split, Framing::Chunked, false),
            Ok((b"OK-GOOD".to_vec(), true))
        );
        // Partial input: what has arrived, not complete.
        for end in 0..chunked.len() - 14 {
            let (body, complete) = decode_body(&chunked[..end], Framing::Chunked, false).unwrap();
            assert!(!complete, "{end}");
            assert!(b"hello world".starts_with(&body), "{end}: {body:?}");
        }
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            assert!(
                decode_body(bad, Framing::Chunked, false).is_err(),
                "{bad:?}"
            );
        }
    }
}
