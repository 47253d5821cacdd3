//! keepalived's other checkers against real peers from Debian, across a bridge: our daemon in
//! one namespace, the peers in another.
//!
//! - `SSL_GET` against nginx serving HTTPS with a certificate of the test's own CA (made by
//!   openssl): verified with `ca_file` (and SNI: nginx logs the name it received), refused
//!   with another CA's file (the error says why), and unverified without one, as keepalived
//!   does; the body's MD5 is keepalived's `digest`. A reload after the CA file is rewritten
//!   in place verifies against the new one.
//! - `DNS_CHECK` against dnsmasq: a name it holds is up, one it does not is down with
//!   NXDOMAIN.
//! - `UDP_CHECK` against dnsmasq's port with a DNS query as payload and the answer's ID and
//!   QR bit as `require_reply`; a port nothing listens on is down (port unreachable).
//! - `PING_CHECK` over IPv4 and IPv6, and to an address nobody holds (down).
//! - `SMTP_CHECK` against aiosmtpd.
//! - Then each peer stops and its checks go down, with the reason in `status`.
//! - `lb-daemon check` names the file, line and key of a CA file that is not there.
//!
//! Needs root, nginx, openssl, dnsmasq and aiosmtpd (Debian's python3-aiosmtpd); skips with
//! a printed reason otherwise, fails under `LB_REQUIRE_PRIVILEGED=1`. Needs
//! `cargo build --release -p lb-daemon`.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use lb_tests::{
    lab::{daemon_bin, with_control_socket},
    netns::{require_root, require_tools, unique_prefix, wait_until, Lan, Netns, Proc},
};

const PYTHON: &str = "/usr/bin/python3";

/// nginx with TLS on 443: `www.example.test` answers `ok`, the default server 421 (so a
/// request without the right SNI or Host shows). The log line carries the SNI received.
fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 64; }}
http {{
    log_format sni '$remote_addr sni=$ssl_server_name host=$host $status';
    access_log {d}/access.log sni;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    ssl_certificate {d}/srv.pem;
    ssl_certificate_key {d}/srv.key;
    server {{
        listen 192.0.2.11:443 ssl default_server;
        return 421;
    }}
    server {{
        listen 192.0.2.11:443 ssl;
        server_name www.example.test;
        location /health {{
            default_type text/plain;
            return 200 "ok\n";
        }}
    }}
}}
"#
    )
}

/// The test's CA, the server's certificate for www.example.test and 192.0.2.11 signed by
/// it, and another CA that signed nothing.
fn make_certs(dir: &Path) {
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other"] {
        let (key, pem, subj) = (
            d(&format!("{ca}.key")),
            d(&format!("{ca}.pem")),
            format!("/CN=lb-daemon test {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        run(&args);
    }
    let (key, csr) = (d("srv.key"), d("srv.csr"));
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=www.example.test",
        "-addext",
        "subjectAltName=DNS:www.example.test,IP:192.0.2.11",
    ]);
    run(&args);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-out",
        &d("srv.pem"),
        "-days",
        "2",
        "-copy_extensions",
        "copy",
    ]);
}

/// A DNS query for www.example.test A with ID 0xabcd, RD, as keepalived's hex string.
const QUERY_HEX: &str =
    "abcd 0100 0001 0000 0000 0000 03777777 076578616d706c65 0474657374 00 0001 0001";

fn config(peer: &Path, body_md5: &str) -> String {
    let ca = peer.join("ca.pem");
    let other = peer.join("other.pem");
    let (ca, other) = (ca.display(), other.display());
    let timing = "delay_loop = 0.5\nretry = 0\nwarmup = 0\nconnect_timeout = 1\n";
    // Direct routing keeps the port: a real server listens on its service's, and a check
    // that probes another says `connect_port`.
    let service = |ip: &str, port: u16, proto: &str, rs_ip: &str, check: &str| {
        format!(
            "[[virtual_server]]\nip = \"{ip}\"\nport = {port}\nprotocol = \"{proto}\"\n\
             lb_algo = \"rr\"\nlb_kind = \"DR\"\nstatic = true\n\n\
             [[virtual_server.real_server]]\nip = \"{rs_ip}\"\nport = {port}\n\
             [virtual_server.real_server.{check}\n{timing}\n"
        )
    };
    let url = format!("url = {{ path = \"/health\", digest = \"{body_md5}\" }}");
    let https = |extra: &str| {
        format!("SSL_GET]\nconnect_port = 443\nvirtualhost = \"www.example.test\"\n{extra}{url}")
    };
    [
        "[global_defs]\nrouter_id = \"checkers\"\n\n[dataplane]\ninterface = \"eth0\"\n\
         xdp_mode = \"skb\"\n\n"
            .to_string(),
        service("192.0.2.100", 443, "TCP", "192.0.2.11",
            &https(&format!("enable_sni = true\nca_file = \"{ca}\"\n"))),
        service("192.0.2.100", 444, "TCP", "192.0.2.11",
            &https(&format!("enable_sni = true\nca_file = \"{other}\"\n"))),
        // keepalived's SSL_GET: no SNI, no verification; the Host header picks the vhost.
        service("192.0.2.100", 445, "TCP", "192.0.2.11", &https("")),
        // status_code: a missing page is what this one wants (nginx's 404); the other
        // wants a 404 where the page is (200).
        service("192.0.2.100", 446, "TCP", "192.0.2.11",
            "SSL_GET]\nconnect_port = 443\nvirtualhost = \"www.example.test\"\n\
             url = { path = \"/missing\", status_code = 404 }"),
        service("192.0.2.100", 447, "TCP", "192.0.2.11",
            "SSL_GET]\nconnect_port = 443\nvirtualhost = \"www.example.test\"\n\
             url = { path = \"/health\", status_code = [404, \"500-599\"] }"),
        service("192.0.2.100", 53, "UDP", "192.0.2.11",
            "DNS_CHECK]\ntype = \"A\"\nname = \"www.example.test\""),
        service("192.0.2.100", 54, "UDP", "192.0.2.11",
            "DNS_CHECK]\nconnect_port = 53\ntype = \"A\"\nname = \"missing.example.test\""),
        service("192.0.2.100", 55, "UDP", "192.0.2.11", &format!(
            "UDP_CHECK]\nconnect_port = 53\npayload = \"{QUERY_HEX}\"\nrequire_reply = \"abcd 8x\"\nmin_reply_length = 12"
        )),
        service("192.0.2.100", 5353, "UDP", "192.0.2.11", "UDP_CHECK]"),
        service("192.0.2.100", 80, "TCP", "192.0.2.11", "PING_CHECK]"),
        service("2001:db8::100", 80, "TCP", "2001:db8::11", "PING_CHECK]"),
        service("192.0.2.100", 81, "TCP", "192.0.2.77", "PING_CHECK]"),
        service("192.0.2.100", 25, "TCP", "192.0.2.11",
            "SMTP_CHECK]\nhelo_name = \"lb.example.test\""),
        // FILE_CHECK: unweighted (down while the number is not 0) and weighted (the real
        // server's weight 10 moves by number x -1).
        service("192.0.2.100", 84, "TCP", "192.0.2.11", "FILE_CHECK]\ntrack_file = \"drain\"")
            .replace(&format!("\n{timing}"), "\n")
            .replace("port = 84\n[virtual_server.real_server", "port = 84\nweight = 10\n[virtual_server.real_server"),
        service("192.0.2.100", 85, "TCP", "192.0.2.11", "FILE_CHECK]\ntrack_file = \"load\"")
            .replace(&format!("\n{timing}"), "\n")
            .replace("port = 85\n[virtual_server.real_server", "port = 85\nweight = 10\n[virtual_server.real_server"),
        format!(
            "[[track_file]]\nname = \"drain\"\nfile = \"{}\"\nweight = 0\ninit_file = 0\n\n\
             [[track_file]]\nname = \"load\"\nfile = \"{}\"\nweight = -1\ninit_file = 0\n",
            peer.join("drain").display(),
            peer.join("load").display()
        ),
    ]
    .concat()
}

/// The effective weight of the one real server of the service on `port`.
fn effective_weight(node: &Netns, port: u16) -> Option<u64> {
    let out = std::process::Command::new(daemon_bin().unwrap())
        .args(["status", "--json", "--socket"])
        .arg(node.dir().join("ctl.sock"))
        .output()
        .ok()?;
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    s["services"]
        .as_array()?
        .iter()
        .find(|svc| svc["port"] == port)?["backends"][0]["effective_weight"]
        .as_u64()
}

/// Each service's only real server: (VIP port or address family, health, last error).
fn health(node: &Netns) -> Vec<(String, u16, String, String)> {
    // Nothing until the daemon serves its control socket.
    let out = std::process::Command::new(daemon_bin().unwrap())
        .args(["status", "--json", "--socket"])
        .arg(node.dir().join("ctl.sock"))
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut out = Vec::new();
    for svc in s["services"].as_array().into_iter().flatten() {
        let b = &svc["backends"][0];
        out.push((
            svc["vip"].as_str().unwrap_or("").to_string(),
            svc["port"].as_u64().unwrap_or(0) as u16,
            b["health"].as_str().unwrap_or("").to_string(),
            b["last_error"].as_str().unwrap_or("").to_string(),
        ));
    }
    out
}

fn of<'a>(
    h: &'a [(String, u16, String, String)],
    ip: &str,
    port: u16,
) -> &'a (String, u16, String, String) {
    h.iter()
        .find(|(i, p, _, _)| i == ip && *p == port)
        .unwrap_or_else(|| panic!("no service {ip}:{port} in {h:?}"))
}

/// Waits until every `(ip, port)` is `health` (and its error contains `why` when down).
fn wait_health(node: &Netns, daemon: &Proc, want: &[(&str, u16, &str, &str)]) {
    let mut last = Vec::new();
    let r = wait_until("the checks' verdicts", Duration::from_secs(20), || {
        last = health(node);
        want.iter().all(|(ip, port, health, why)| {
            last.iter()
                .any(|(i, p, h, e)| i == ip && p == port && h == health && e.contains(why))
        })
    });
    if let Err(e) = r {
        panic!(
            "{e:#}\nwanted {want:?}\nlast {last:#?}\n{}",
            daemon.read_stderr()
        );
    }
}

struct Peers {
    nginx: Proc,
    dnsmasq: Proc,
    smtp: Proc,
}

fn start_peers(peer: &Netns) -> Peers {
    let dir = peer.dir();
    let d = dir.to_string_lossy().into_owned();
    std::fs::write(dir.join("nginx.conf"), nginx_conf(dir)).unwrap();
    let nginx = peer
        .spawn(&[
            "nginx",
            "-p",
            &d,
            "-e",
            &format!("{d}/error.log"),
            "-c",
            &format!("{d}/nginx.conf"),
        ])
        .unwrap();
    let dnsmasq = peer
        .spawn(&[
            "dnsmasq",
            "-k",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=192.0.2.11",
            "--port=53",
            "--user=root",
            "--local=/example.test/",
            "--address=/www.example.test/192.0.2.11",
            &format!("--pid-file={d}/dnsmasq.pid"),
            &format!("--log-facility={d}/dnsmasq.log"),
            "--log-queries",
        ])
        .unwrap();
    let smtp = peer
        .spawn(&[PYTHON, "-m", "aiosmtpd", "-n", "-l", "192.0.2.11:25"])
        .unwrap();
    Peers {
        nginx,
        dnsmasq,
        smtp,
    }
}

#[test]
fn checkers_against_real_peers() {
    if !require_root("checkers against real peers")
        || !require_tools(
            "checkers",
            &["ip", "nginx", "openssl", "dnsmasq", "md5sum", PYTHON],
        )
    {
        return;
    }
    let lan = Lan::new(&unique_prefix("chk")).unwrap();
    let node = lan
        .host(
            "n",
            2,
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        )
        .unwrap();
    let peer = lan
        .host(
            "p",
            11,
            Ipv4Addr::new(192, 0, 2, 11),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11),
        )
        .unwrap();
    let probe = peer
        .command(&[PYTHON, "-c", "import aiosmtpd"])
        .output()
        .unwrap();
    if !probe.status.success() {
        if std::env::var("LB_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("checkers: needs python3-aiosmtpd (scripts/setup.sh test installs it)");
        }
        eprintln!("SKIP checkers: needs python3-aiosmtpd");
        return;
    }
    make_certs(peer.dir());
    let peers = start_peers(&peer);
    let md5 = std::process::Command::new("sh")
        .args(["-c", "printf 'ok\\n' | md5sum"])
        .output()
        .unwrap();
    let md5 = String::from_utf8_lossy(&md5.stdout)[..32].to_string();

    // A CA file that is not there: `check` names the file, the line and the key.
    let cfg = node.dir().join("lb.toml");
    let text = config(peer.dir(), &md5);
    let missing = text.replacen(
        &peer.dir().join("ca.pem").display().to_string(),
        "/nonexistent/ca.pem",
        1,
    );
    std::fs::write(&cfg, with_control_socket(&missing, node.dir())).unwrap();
    let bin = daemon_bin().unwrap();
    let out = node
        .command(&[
            bin.to_str().unwrap(),
            "check",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let written = std::fs::read_to_string(&cfg).unwrap();
    let line = written[..written.find("/nonexistent/ca.pem").unwrap()]
        .matches('\n')
        .count()
        + 1;
    assert!(!out.status.success(), "check accepted a missing CA file");
    let want = format!(
        "{}:{line}: `real_server.SSL_GET.ca_file`: /nonexistent/ca.pem",
        cfg.display()
    );
    assert!(
        err.lines()
            .any(|l| l.trim_start_matches("Error: ").starts_with(&want)),
        "{err}"
    );

    std::fs::write(&cfg, with_control_socket(&text, node.dir())).unwrap();
    let daemon = node
        .spawn(&[
            bin.to_str().unwrap(),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .unwrap();
    wait_health(
        &node,
        &daemon,
        &[
            ("192.0.2.100", 443, "up", ""),
            ("192.0.2.100", 444, "down", "UnknownIssuer"),
            ("192.0.2.100", 445, "up", ""),
            ("192.0.2.100", 446, "up", ""),
            (
                "192.0.2.100",
                447,
                "down",
                "status 200, expected 404 500-599",
            ),
            ("192.0.2.100", 53, "up", ""),
            ("192.0.2.100", 54, "down", "NXDOMAIN"),
            ("192.0.2.100", 55, "up", ""),
            ("192.0.2.100", 5353, "down", "refused"),
            ("192.0.2.100", 80, "up", ""),
            ("2001:db8::100", 80, "up", ""),
            ("192.0.2.100", 81, "down", "192.0.2.77"),
            ("192.0.2.100", 25, "up", ""),
            ("192.0.2.100", 84, "up", ""),
            ("192.0.2.100", 85, "up", ""),
        ],
    );
    assert_eq!(effective_weight(&node, 85), Some(10));
    // The track_files are written: one drains, the other moves the weight.
    std::fs::write(peer.dir().join("drain"), "1\n").unwrap();
    std::fs::write(peer.dir().join("load"), "4\n").unwrap();
    wait_health(
        &node,
        &daemon,
        &[("192.0.2.100", 84, "down", "track_file drain reads 1")],
    );
    wait_until("the weight 10 - 4", Duration::from_secs(5), || {
        effective_weight(&node, 85) == Some(6)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", effective_weight(&node, 85)));
    std::fs::write(peer.dir().join("drain"), "0\n").unwrap();
    wait_health(&node, &daemon, &[("192.0.2.100", 84, "up", "")]);
    // nginx saw the SNI of the verified check, and none from keepalived's default.
    let log = std::fs::read_to_string(peer.dir().join("access.log")).unwrap();
    assert!(
        log.contains("sni=www.example.test host=www.example.test 200"),
        "{log}"
    );
    assert!(log.contains("sni=- host=www.example.test 200"), "{log}");
    assert!(
        !log.contains(" 421"),
        "a check reached the default server:\n{log}"
    );
    let dns_log = std::fs::read_to_string(peer.dir().join("dnsmasq.log")).unwrap_or_default();
    assert!(
        dns_log.contains("query[A] missing.example.test from 192.0.2.2"),
        "{dns_log}"
    );

    // A CA rotation: the file is rewritten in place, the configuration is not. A reload
    // reads it again, and the check verifies against the new CA.
    std::fs::copy(peer.dir().join("ca.pem"), peer.dir().join("other.pem")).unwrap();
    daemon.signal(libc::SIGHUP).unwrap();
    wait_health(&node, &daemon, &[("192.0.2.100", 444, "up", "")]);

    // Every peer stops: its checks go down, saying why.
    for p in [&peers.nginx, &peers.dnsmasq, &peers.smtp] {
        p.kill().unwrap();
    }
    wait_health(
        &node,
        &daemon,
        &[
            ("192.0.2.100", 443, "down", "192.0.2.11:443"),
            ("192.0.2.100", 445, "down", "192.0.2.11:443"),
            ("192.0.2.100", 53, "down", "refused"),
            ("192.0.2.100", 55, "down", "refused"),
            ("192.0.2.100", 25, "down", "192.0.2.11:25"),
            ("192.0.2.100", 80, "up", ""),
        ],
    );
    let h = health(&node);
    assert_eq!(of(&h, "2001:db8::100", 80).2, "up");
    for (ip, port, health, error) in &h {
        eprintln!("{ip}:{port} {health} {error}");
    }
    daemon.stop(Duration::from_secs(5)).unwrap();
}
