//! The metrics from another host: our daemon (VRRP only) serves its metrics on a
//! documentation address of its namespace, and curl scrapes them from another namespace
//! across a bridge, as a Prometheus on another host would.
//!
//! - Without `metrics_bearer_token_file` (over IPv4): 200 with the metrics, whatever the
//!   request's `Authorization` says.
//! - With it (over IPv6): 401 with `WWW-Authenticate: Bearer` and nothing of the metrics
//!   without a token, with a wrong one or another scheme; 200 with the right one. A reload
//!   reads the file again (the old token is refused from then on); a reload with an empty
//!   file is refused, naming the file, the line and the key, and the token in use stays.
//!
//! Needs root and curl; skips with a printed reason otherwise, fails under
//! `LB_REQUIRE_PRIVILEGED=1`. Needs `cargo build --release -p lb-daemon`.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_tests::{
    lab::{daemon_bin, with_control_socket},
    netns::{require_root, require_tools, unique_prefix, wait_until, Lan, Netns, Proc},
};

/// The client (the scraper) and the node running the daemon, on one bridge.
struct Hosts {
    _lan: Lan,
    client: Netns,
    node: Netns,
}

fn hosts(tag: &str) -> Hosts {
    let lan = Lan::new(&unique_prefix(tag)).unwrap();
    let client = lan
        .host(
            "c",
            1,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        )
        .unwrap();
    let node = lan
        .host(
            "n",
            2,
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        )
        .unwrap();
    Hosts {
        _lan: lan,
        client,
        node,
    }
}

/// One VRRP instance (so the metrics have something to say), the metrics on `address`,
/// behind `token_file` if given.
fn config(address: &str, token_file: Option<&Path>) -> String {
    let token = token_file
        .map(|f| format!("metrics_bearer_token_file = \"{}\"\n", f.display()))
        .unwrap_or_default();
    format!(
        r#"[global_defs]
router_id = "metrics"
metrics_address = "{address}"
{token}
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 100
advert_int = 1
virtual_ipaddress = ["192.0.2.100/24"]
"#
    )
}

fn write_config(node: &Netns, config: &str) -> PathBuf {
    let path = node.dir().join("lb.toml");
    std::fs::write(&path, with_control_socket(config, node.dir())).unwrap();
    path
}

fn start(node: &Netns, config: &str) -> Proc {
    let path = write_config(node, config);
    let bin = daemon_bin().unwrap();
    node.spawn(&[
        bin.to_str().unwrap(),
        "run",
        "--config",
        path.to_str().unwrap(),
    ])
    .unwrap()
}

/// `lb-daemon reload` on the node's control socket: `Err` with its stderr when refused.
fn reload(node: &Netns) -> Result<(), String> {
    let bin = daemon_bin().unwrap();
    let socket = node.dir().join("ctl.sock");
    let out = node
        .command(&[
            bin.to_str().unwrap(),
            "reload",
            "--socket",
            socket.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn write_token(path: &Path, token: &str) {
    std::fs::write(path, token).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A scrape's answer: the status, the head and the body.
#[derive(Debug)]
struct Scrape {
    status: u16,
    head: String,
    body: String,
}

/// `curl` from the client to `url`, with `Authorization: {auth}` if given; `None` when no
/// HTTP answer came (not listening yet).
fn scrape(client: &Netns, url: &str, auth: Option<&str>) -> Option<Scrape> {
    let header = auth.map(|a| format!("Authorization: {a}"));
    let mut args = vec!["curl", "-sS", "-g", "-i", "--max-time", "5"];
    if let Some(h) = &header {
        args.extend(["-H", h.as_str()]);
    }
    args.push(url);
    let out = client.exec(&args).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Scrape {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// Waits until the daemon serves its first metrics at `url` to a request with `auth` (it
/// binds after VRRP has started, and publishes at its first tick).
fn wait_serving(client: &Netns, url: &str, auth: Option<&str>, daemon: &Proc) {
    wait_until("the metrics to be served", Duration::from_secs(20), || {
        scrape(client, url, auth)
            .is_some_and(|s| s.status == 200 && s.body.contains("lb_vrrp_state{"))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
}

fn assert_metrics(s: &Scrape, daemon: &Proc) {
    assert_eq!(s.status, 200, "{s:?}\n{}", daemon.read_stderr());
    assert!(
        s.body.contains("lb_vrrp_state{") && s.body.contains("instance=\"VI_1\""),
        "{s:?}"
    );
}

fn assert_refused(s: &Scrape, challenge: &str) {
    assert_eq!(s.status, 401, "{s:?}");
    assert!(
        s.head
            .lines()
            .any(|l| l.trim_end() == format!("WWW-Authenticate: {challenge}")),
        "{s:?}"
    );
    assert!(
        !s.body.contains("lb_"),
        "a refusal shows the metrics: {s:?}"
    );
}

#[test]
fn metrics_without_a_token_are_scraped_from_another_namespace() {
    if !require_root("metrics without a token") || !require_tools("metrics", &["ip", "curl"]) {
        return;
    }
    let h = hosts("mopn");
    let daemon = start(&h.node, &config("192.0.2.2:9100", None));
    let url = "http://192.0.2.2:9100/metrics";
    wait_serving(&h.client, url, None, &daemon);
    for auth in [None, Some("Bearer anything")] {
        assert_metrics(&scrape(&h.client, url, auth).unwrap(), &daemon);
    }
}

#[test]
fn metrics_behind_a_bearer_token_are_scraped_from_another_namespace() {
    if !require_root("metrics behind a token") || !require_tools("metrics", &["ip", "curl"]) {
        return;
    }
    let h = hosts("mtok");
    let token = h.node.dir().join("metrics.token");
    write_token(&token, "Zm9yIHRoZSB0ZXN0IG9ubHk=\n");
    let address = "[2001:db8::2]:9100";
    let daemon = start(&h.node, &config(address, Some(&token)));
    let url = format!("http://{address}/metrics");
    let url = url.as_str();
    let right = Some("Bearer Zm9yIHRoZSB0ZXN0IG9ubHk=");
    wait_serving(&h.client, url, right, &daemon);

    assert_refused(&scrape(&h.client, url, None).unwrap(), "Bearer");
    assert_refused(
        &scrape(&h.client, url, Some("Bearer Zm9yIHRoZSB0ZXN0IG9ubHk")).unwrap(),
        "Bearer error=\"invalid_token\"",
    );
    assert_refused(
        &scrape(&h.client, url, Some("Basic Zm9yIHRoZSB0ZXN0IG9ubHk=")).unwrap(),
        "Bearer",
    );
    assert_metrics(&scrape(&h.client, url, right).unwrap(), &daemon);

    // A reload reads the file again.
    write_token(&token, "next-token\n");
    reload(&h.node).unwrap_or_else(|e| panic!("reload: {e}\n{}", daemon.read_stderr()));
    assert_refused(
        &scrape(&h.client, url, right).unwrap(),
        "Bearer error=\"invalid_token\"",
    );
    let next = Some("Bearer next-token");
    assert_metrics(&scrape(&h.client, url, next).unwrap(), &daemon);

    // An empty file: the reload is refused, and the token in use stays.
    write_token(&token, "");
    let e = reload(&h.node).expect_err("a reload with an empty token file");
    let cfg = h.node.dir().join("lb.toml");
    // The line in the file as written (with_control_socket adds lines under [global_defs]).
    let line = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("metrics_bearer_token_file"))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!(
            "{}:{line}: `global_defs.metrics_bearer_token_file`: {} is empty",
            cfg.display(),
            token.display()
        )),
        "{e}"
    );
    assert_metrics(&scrape(&h.client, url, next).unwrap(), &daemon);
    assert_refused(&scrape(&h.client, url, None).unwrap(), "Bearer");
}
