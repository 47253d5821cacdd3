//! `SMTP_CHECK`: keepalived's dialogue (`check_smtp.c`): the greeting must be 220, `HELO
//! helo_name` must be answered 250, then `QUIT` must be answered by a line, whatever it says
//! (a close without one fails, as in keepalived's `smtp_get_line_cb`). All of it within
//! `connect_timeout`.
//!
//! Replies are read as RFC 5321 (4.2) writes them: a multi-line reply (`220-...` lines, then
//! `220 ...`) is one reply, where keepalived reads only the first line and fails a
//! multi-line greeting. A line is at most [`MAX_LINE`] bytes and a reply [`MAX_REPLY`]:
//! a peer sending more fails the check, as does anything that is not a reply line.
use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{timeout_at, Instant},
};

use super::probe::{connect, ProbeError};
use crate::config::check::SmtpCheck;

/// RFC 5321, 4.5.3.1.5: a reply line is at most 512 bytes with its CRLF.
pub const MAX_LINE: usize = 512;
/// The most a reply (all its lines) may take.
pub const MAX_REPLY: usize = 8192;

/// A complete reply at the start of `buf`: its code and its length; `None` while a line is
/// still incomplete.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let mut at = 0;
    let mut code = None;
    loop {
        let rest = &buf[at..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() >= MAX_LINE {
                return Err(format!("a reply line longer than {MAX_LINE} bytes"));
            }
            return Ok(None);
        };
        if nl >= MAX_LINE {
            return Err(format!("a reply line longer than {MAX_LINE} bytes"));
        }
        let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
        let shown = || String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
        let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let Some(d) = digits else {
            return Err(format!("{:?} is not a reply line", shown()));
        };
        let c = u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0');
        if code.is_some_and(|first| first != c) {
            return Err(format!(
                "{:?}: a reply's lines disagree on the code",
                shown()
            ));
        }
        code = Some(c);
        at += nl + 1;
        match line.get(3) {
            None | Some(b' ') => return Ok(Some((c, at))),
            Some(b'-') => {}
            Some(_) => return Err(format!("{:?} is not a reply line", shown())),
        }
        if at > MAX_REPLY {
            return Err(format!("a reply longer than {MAX_REPLY} bytes"));
        }
    }
}

/// Reads one reply; `None` if the peer closed before any byte of it.
async fn reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    step: &'static str,
    dest: SocketAddr,
) -> Result<Option<u16>, ProbeError> {
    let fail = |reason: String| ProbeError::Answer {
        check: "SMTP_CHECK",
        dest,
        reason: format!("{step}: {reason}"),
    };
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((code, used)) = parse_reply(buf).map_err(fail)? {
            buf.drain(..used);
            return Ok(Some(code));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(fail("closed in the middle of a reply".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `SMTP_CHECK`.
pub async fn smtp(s: &SmtpCheck) -> Result<(), ProbeError> {
    let c = &s.connect;
    let dest = c.dest;
    let deadline = Instant::now() + c.timeout;
    let mut stream = connect(c, deadline).await?;
    let fail = |reason: String| ProbeError::Answer {
        check: "SMTP_CHECK",
        dest,
        reason,
    };
    let dialogue = async {
        let mut buf = Vec::new();
        match reply(&mut stream, &mut buf, "greeting", dest).await? {
            Some(220) => {}
            Some(code) => return Err(fail(format!("greeting {code}, expected 220"))),
            None => return Err(fail("closed without a greeting".into())),
        }
        let helo = format!("HELO {}\r\n", s.helo_name);
        stream
            .write_all(helo.as_bytes())
            .await
            .map_err(|e| fail(format!("HELO: {e}")))?;
        match reply(&mut stream, &mut buf, "HELO", dest).await? {
            Some(250) => {}
            Some(code) => return Err(fail(format!("HELO answered {code}, expected 250"))),
            None => return Err(fail("closed after HELO".into())),
        }
        stream
            .write_all(b"QUIT\r\n")
            .await
            .map_err(|e| fail(format!("QUIT: {e}")))?;
        // keepalived reads one line of any content.
        let mut chunk = [0u8; 512];
        while !buf.contains(&b'\n') {
            if buf.len() >= MAX_LINE {
                return Err(fail(format!("QUIT: a line longer than {MAX_LINE} bytes")));
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| fail(format!("QUIT: {e}")))?;
            if n == 0 {
                return Err(fail("closed without answering QUIT".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    match timeout_at(deadline, dialogue).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Silent {
            check: "SMTP_CHECK",
            dest,
            timeout: c.timeout,
            ignored: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"220 mx ESMTP\r\n"), Ok(Some((220, 14))));
        assert_eq!(parse_reply(b"220 mx"), Ok(None));
        assert_eq!(parse_reply(b"250\n"), Ok(Some((250, 4))));
        let multi = b"220-mx.example.test\r\n220-more\r\n220 ready\r\nEXTRA";
        assert_eq!(parse_reply(multi), Ok(Some((220, 42))));
        assert_eq!(parse_reply(b"220-first\r\n"), Ok(None));
        assert!(parse_reply(b"220-a\r\n250 b\r\n")
            .unwrap_err()
            .contains("disagree"));
        assert!(parse_reply(b"HTTP/1.1 400\r\n")
            .unwrap_err()
            .contains("not a reply"));
        assert!(parse_reply(b"22x ok\r\n").is_err());
        assert!(parse_reply(b"220x\r\n").is_err());
        assert!(parse_reply(&[b'2'; MAX_LINE])
            .unwrap_err()
            .contains("longer"));
        let many = b"220-x\r\n".repeat(MAX_REPLY / 7 + 1);
        assert!(parse_reply(&many).unwrap_err().contains("reply longer"));
    }

    /// A scripted SMTP peer on loopback: sends `greeting`, answers HELO with `helo` and
    /// QUIT with `quit`.
    async fn peer(greeting: &'static [u8], helo: &'static [u8], quit: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(greeting).await.unwrap();
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, b"HELO probe.example.test\r\n");
            let _ = s.write_all(helo).await;
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(quit).await;
        });
        addr
    }

    fn check(dest: SocketAddr) -> SmtpCheck {
        SmtpCheck {
            connect: crate::config::check::Connect {
                dest,
                bindto: None,
                timeout: std::time::Duration::from_millis(500),
            },
            helo_name: "probe.example.test".into(),
        }
    }

    #[tokio::test]
    async fn dialogue() {
        let ok = peer(b"220-mx\r\n220 ready\r\n", b"250 hello\r\n", b"221 bye\r\n").await;
        smtp(&check(ok)).await.unwrap();
        // Any line answers QUIT (keepalived reads one line, whatever it says).
        let odd = peer(b"220 ready\r\n", b"250 hello\r\n", b"bye now\n").await;
        smtp(&check(odd)).await.unwrap();
        let gone = peer(b"220 ready\r\n", b"250 hello\r\n", b"").await;
        let e = smtp(&check(gone)).await.unwrap_err().to_string();
        assert!(e.contains("closed without answering QUIT"), "{e}");
        let busy = peer(b"421 busy\r\n", b"", b"").await;
        let e = smtp(&check(busy)).await.unwrap_err().to_string();
        assert!(e.contains("greeting 421, expected 220"), "{e}");
        let refused = peer(b"220 ready\r\n", b"550 no\r\n", b"").await;
        let e = smtp(&check(refused)).await.unwrap_err().to_string();
        assert!(e.contains("HELO answered 550"), "{e}");
        let quiet = peer(b"", b"", b"").await;
        let e = smtp(&check(quiet)).await.unwrap_err().to_string();
        assert!(e.contains("no answer within"), "{e}");
    }
}
