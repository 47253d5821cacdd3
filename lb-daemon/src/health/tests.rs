//! [`Checkers`] end to end: configurations parsed from TOML, backends on 127.0.0.1.
use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{net::TcpListener, sync::mpsc};

use super::{
    probe::test_server::{serve, Behaviour},
    *,
};
use crate::{
    model::Proto,
    testutil::{eventually, privileged, TempDir},
};

const WAIT: Duration = Duration::from_secs(10);

fn service() -> ServiceKey {
    // Port 0 (every port): the real servers listen on ports of their own.
    ServiceKey::new("192.0.2.100".parse().unwrap(), 0, Proto::Tcp)
}

/// A static virtual service with `real_servers`; script security as given.
fn config(security: bool, real_servers: &str) -> Config {
    let text = format!(
        r#"
[global_defs]
enable_script_security = {security}

[dataplane]
interface = "lo"

[[virtual_server]]
ip = "192.0.2.100"
port = 0
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true
{real_servers}
"#
    );
    Config::parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A real server at `addr`: its own keys, then its check tables.
fn real_server(addr: SocketAddr, body: &str) -> String {
    format!(
        "\n[[virtual_server.real_server]]\nip = \"{}\"\nport = {}\n{body}\n",
        addr.ip(),
        addr.port()
    )
}

const FAST_TCP: &str = "[virtual_server.real_server.TCP_CHECK]
delay_loop = 0.05
warmup = 0
retry = 0
connect_timeout = 0.5";

async fn next(rx: &mut mpsc::Receiver<HealthEvent>) -> HealthEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no health event in time")
        .expect("event channel closed")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test]
async fn follows_a_backend_down_and_up_with_hooks() {
    let dir = TempDir::new("health-hooks");
    let log = dir.path().join("hooks.log");
    let up = dir.script("up.sh", &format!("echo \"up $*\" >> {}", log.display()));
    let down = dir.script("down.sh", &format!("echo \"down $*\" >> {}", log.display()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = config(
        false,
        &real_server(
            addr,
            &format!(
                "notify_up = \"{} a1\"\nnotify_down = \"{} a2\"\n{FAST_TCP}",
                up.display(),
                down.display()
            ),
        ),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let checkers = Checkers::start(&c, tx).unwrap();
    let initial = next(&mut rx).await;
    assert_eq!(
        initial,
        HealthEvent {
            service: service(),
            backend: addr,
            up: true,
            weight: None
        }
    );
    // The backend goes away: one failure (retry = 0) takes it down.
    drop(listener);
    let e = next(&mut rx).await;
    assert_eq!((e.backend, e.up), (addr, false));
    assert!(
        eventually(WAIT, || read(&log) == "down a2\n").await,
        "{:?}",
        read(&log)
    );
    let snap = checkers.snapshot();
    let h = &snap[&(service(), addr)];
    assert!(!h.up);
    assert!(h.failures >= 1);
    // Refused, or reset when the listener closed in the middle of a handshake.
    let err = h.last_error.as_deref().unwrap();
    assert!(err.starts_with(&format!("connect to {addr}: ")), "{h:?}");
    assert_eq!(h.checks[0].kind, "TCP_CHECK");
    // And comes back.
    let listener = TcpListener::bind(addr).await.unwrap();
    let e = next(&mut rx).await;
    assert_eq!((e.backend, e.up), (addr, true));
    assert!(
        eventually(WAIT, || read(&log) == "down a2\nup a1\n").await,
        "{:?}",
        read(&log)
    );
    let snap = checkers.snapshot();
    let h = &snap[&(service(), addr)];
    assert!(h.up && h.last_error.is_none() && h.last_latency.is_some());
    drop(listener);
}

#[tokio::test]
async fn http_and_misc_end_to_end() {
    let good = serve(Behaviour::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nhealthy".to_vec(),
    ))
    .await;
    let bad = serve(Behaviour::Respond(b"HTTP/1.1 503 Busy\r\n\r\n".to_vec())).await;
    let dir = TempDir::new("health-e2e");
    let weight = dir.script("weight.sh", "exit 12");
    // A third real server, checked by a dynamic MISC_CHECK only.
    let misc_addr: SocketAddr = "127.0.0.3:80".parse().unwrap();
    let http = "[virtual_server.real_server.HTTP_GET]
delay_loop = 0.05
warmup = 0
retry = 0
connect_timeout = 1
url = { path = \"/health\", body_contains = \"health\" }";
    let c = config(
        false,
        &[
            real_server(good.addr, http),
            real_server(bad.addr, http),
            real_server(
                misc_addr,
                &format!(
                    "[virtual_server.real_server.MISC_CHECK]\nmisc_path = \"{}\"\nmisc_dynamic = true\ndelay_loop = 0.05\nwarmup = 0",
                    weight.display()
                ),
            ),
        ]
        .concat(),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let checkers = Checkers::start(&c, tx).unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(next(&mut rx).await);
    }
    // Initial states (all up), then the bad one down, the MISC one its weight.
    let of = |addr: SocketAddr| -> Vec<(bool, Option<u32>)> {
        got.iter()
            .filter(|e| e.backend == addr)
            .map(|e| (e.up, e.weight))
            .collect()
    };
    assert_eq!(of(good.addr), [(true, None)]);
    assert_eq!(of(bad.addr), [(true, None), (false, None)]);
    assert_eq!(of(misc_addr), [(true, None), (true, Some(10))]);
    assert!(
        eventually(WAIT, || checkers.snapshot()[&(service(), good.addr)].checks
            [0]
        .probes
            >= 3)
        .await
    );
    let snap = checkers.snapshot();
    assert!(snap[&(service(), good.addr)].up);
    let err = snap[&(service(), bad.addr)].last_error.clone().unwrap();
    assert!(err.contains("status 503, expected 200-299"), "{err}");
    assert_eq!(snap[&(service(), misc_addr)].weight, Some(10));
    assert!(good.requests.lock().unwrap()[0].starts_with(b"GET /health HTTP/1.1\r\n"));
}

#[tokio::test]
async fn reload_keeps_unchanged_checks() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let slow = "[virtual_server.real_server.TCP_CHECK]\ndelay_loop = 60\nwarmup = 0\nretry = 0\nconnect_timeout = 1";
    let c1 = config(false, &real_server(closed, slow));
    let (tx, mut rx) = mpsc::channel(16);
    let mut checkers = Checkers::start(&c1, tx).unwrap();
    assert!(next(&mut rx).await.up);
    assert!(!next(&mut rx).await.up);
    let before = checkers.snapshot();
    assert_eq!(before[&(service(), closed)].checks[0].probes, 1);
    // Same configuration: same state; with a 60 s delay_loop a restarted check would have
    // run again at once (warmup 0) and be up until it did.
    checkers
        .reload(&c1, Scope::All, &mut HashMap::new())
        .unwrap();
    assert_eq!(checkers.snapshot(), before);
    // A new real server next to it: announced; the old one untouched.
    let other: SocketAddr = "127.0.0.2:9".parse().unwrap();
    let c2 = config(
        false,
        &[real_server(closed, slow), real_server(other, slow)].concat(),
    );
    // Reloaded as the daemon does, for the one service that changed: the health view it
    // keeps is updated in place to what a whole snapshot says.
    let mut health = checkers.snapshot();
    let changed: std::collections::HashSet<_, foldhash::fast::RandomState> =
        [service()].into_iter().collect();
    checkers
        .reload(&c2, Scope::Services(&changed), &mut health)
        .unwrap();
    let e = next(&mut rx).await;
    assert_eq!((e.backend, e.up), (other, true));
    assert_eq!(
        checkers.snapshot()[&(service(), closed)],
        before[&(service(), closed)]
    );
    // (The new server's probe may have run since: its entry is compared by presence.)
    let mut keys: Vec<_> = health.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, [(service(), closed), (service(), other)]);
    assert_eq!(health[&(service(), closed)], before[&(service(), closed)]);
    // In the configuration's order, as status reads it.
    let in_order = checkers.in_order(&c2);
    assert_eq!(in_order.len(), 2);
    assert_eq!(in_order[0].as_ref(), Some(&before[&(service(), closed)]));
    assert!(in_order[1].is_some());
    // A changed check starts over (up until its first run says otherwise).
    let changed = slow.replace("connect_timeout = 1", "connect_timeout = 2");
    let c3 = config(false, &real_server(closed, &changed));
    checkers
        .reload(&c3, Scope::All, &mut HashMap::new())
        .unwrap();
    let snap = checkers.snapshot();
    assert_eq!(snap.len(), 1, "the removed server is gone");
    let e = next(&mut rx).await;
    assert_eq!((e.backend, e.up), (closed, true));
    let e = next(&mut rx).await;
    assert_eq!((e.backend, e.up), (closed, false));
    // No checks at all: always up.
    checkers
        .reload(
            &config(false, &real_server(closed, "")),
            Scope::All,
            &mut HashMap::new(),
        )
        .unwrap();
    let e = next(&mut rx).await;
    assert_eq!((e.backend, e.up), (closed, true));
    let snap = checkers.snapshot();
    let h = &snap[&(service(), closed)];
    assert!(h.up && h.checks.is_empty());
}

#[tokio::test]
async fn real_servers_without_checks_are_up() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let checkers = Checkers::start(&config(true, &real_server(addr, "")), tx).unwrap();
    let snap = checkers.snapshot();
    assert!(snap[&(service(), addr)].up && snap[&(service(), addr)].checks.is_empty());
    // Up from the start, and nothing to announce: no event (100,000 such servers would
    // otherwise mean as many events at every start).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "an event for a real server without checks"
    );
}

#[tokio::test]
async fn bad_users_and_unsafe_scripts_are_refused() {
    let (tx, _rx) = mpsc::channel(16);
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let misc = |path: &Path, extra: &str| {
        real_server(
            addr,
            &format!(
                "[virtual_server.real_server.MISC_CHECK]\nmisc_path = \"{}\"\n{extra}",
                path.display()
            ),
        )
    };
    let e = Checkers::start(
        &config(
            false,
            &misc(Path::new("/bin/true"), "user = \"lb-no-such-user-xyzzy\""),
        ),
        tx.clone(),
    )
    .unwrap_err();
    assert!(matches!(e, HealthError::MiscUser { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    // Under /tmp (world-writable): refused when run as root with the check on.
    let dir = TempDir::new("health-unsafe");
    let script = dir.script("check.sh", "exit 0");
    let e = Checkers::start(&config(true, &misc(&script, "")), tx.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            HealthError::UnsafeScript {
                what: "MISC_CHECK",
                ..
            }
        ),
        "{e}"
    );
    let hook = real_server(
        addr,
        &format!("notify_down = \"{}\"\n{FAST_TCP}", script.display()),
    );
    let e = Checkers::start(&config(true, &hook), tx.clone()).unwrap_err();
    assert!(
        matches!(
            e,
            HealthError::UnsafeScript {
                what: "notify_down",
                ..
            }
        ),
        "{e}"
    );
    // The same with the check off starts.
    Checkers::start(&config(false, &misc(&script, "")), tx.clone()).unwrap();
    // A failed reload changes nothing.
    let mut ok = Checkers::start(&config(false, &misc(&script, "")), tx).unwrap();
    let before = ok.snapshot();
    assert!(ok
        .reload(
            &config(true, &misc(&script, "")),
            Scope::All,
            &mut HashMap::new()
        )
        .is_err());
    assert_eq!(
        ok.snapshot().keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
}

/// A root-owned directory others cannot write: what the script-safety check wants.
struct RunDir(PathBuf);

impl RunDir {
    fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!("/run/lbtest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        RunDir(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn safe_misc_script_runs_as_root_with_the_check_on() {
    if !privileged("health::tests::safe_misc_script_runs_as_root_with_the_check_on") {
        return;
    }
    let dir = RunDir::new("health");
    let script = dir.0.join("check.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$(id -u)\" = 0 ] && exit 7\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let c = config(
        true,
        &real_server(
            addr,
            &format!(
                "[virtual_server.real_server.MISC_CHECK]\nmisc_path = \"{}\"\nmisc_dynamic = true\nwarmup = 0",
                script.display()
            ),
        ),
    );
    crate::daemon::check_scripts(&c).unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let _checkers = Checkers::start(&c, tx).unwrap();
    assert!(next(&mut rx).await.up);
    let e = next(&mut rx).await;
    assert_eq!((e.up, e.weight), (true, Some(5)));
}

#[tokio::test]
async fn misc_check_runs_as_its_user() {
    if !privileged("health::tests::misc_check_runs_as_its_user") {
        return;
    }
    let nobody = ScriptUser::lookup("nobody").unwrap();
    let dir = RunDir::new("health-user");
    let script = dir.0.join("check.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n[ \"$(id -u)\" = {} ] || exit 1\n", nobody.uid()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let c = config(
        true,
        &real_server(
            addr,
            &format!(
                "[virtual_server.real_server.MISC_CHECK]\nmisc_path = \"{}\"\nuser = \"nobody\"\nwarmup = 0\nalpha = true",
                script.display()
            ),
        ),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let _checkers = Checkers::start(&c, tx).unwrap();
    assert!(!next(&mut rx).await.up, "alpha: down at first");
    assert!(
        next(&mut rx).await.up,
        "the script ran as nobody and passed"
    );
}

#[tokio::test]
async fn dropping_stops_the_probes() {
    let server = serve(Behaviour::Respond(b"HTTP/1.1 200 OK\r\n\r\n".to_vec())).await;
    let c = config(
        false,
        &real_server(
            server.addr,
            "[virtual_server.real_server.HTTP_GET]\ndelay_loop = 0.02\nwarmup = 0\nurl = { path = \"/\" }",
        ),
    );
    let (tx, mut rx) = mpsc::channel(16);
    let checkers = Checkers::start(&c, tx).unwrap();
    next(&mut rx).await;
    assert!(eventually(WAIT, || server.requests.lock().unwrap().len() >= 3).await);
    drop(checkers);
    // The task is gone: the channel closes.
    let end = tokio::time::timeout(WAIT, async { while rx.recv().await.is_some() {} }).await;
    assert!(end.is_ok(), "the event channel stayed open");
}

/// Two checks that would each set the weight are refused (they would take turns); a
/// FILE_CHECK weight of 0 is keepalived's "none": the track_file's weight and reverse.
#[test]
fn one_check_sets_the_weight() {
    let addr: SocketAddr = "192.0.2.11:80".parse().unwrap();
    let files = "\n[[track_file]]\nname = \"a\"\nfile = \"/run/lb-test-a\"\nweight = -2\n\
                 reverse = true\n\n[[track_file]]\nname = \"b\"\nfile = \"/run/lb-test-b\"\n\
                 weight = 0\n";
    let checks = |b: &str| {
        config(
            false,
            &(real_server(
                addr,
                &format!(
                    "[[virtual_server.real_server.FILE_CHECK]]\ntrack_file = \"a\"\nweight = 0\n\
                     [[virtual_server.real_server.FILE_CHECK]]\ntrack_file = \"b\"\n{b}"
                ),
            ) + files),
        )
    };
    // a: weight 0 is none, so a's -2 with its reverse; b: unweighted.
    let one = checks("");
    let (specs, _) = specs(&one, Scope::All).unwrap();
    let got: Vec<(i32, bool)> = specs[0]
        .checks
        .iter()
        .filter_map(|c| match &c.probe {
            ProbeSpec::File(f) => Some((f.weight, f.reverse)),
            _ => None,
        })
        .collect();
    assert_eq!(got, [(-2, true), (0, false)]);
    // b weighted too: two checks would set the weight.
    let e = validate(&checks("weight = 3")).unwrap_err();
    assert!(matches!(e, HealthError::ManyWeights { .. }), "{e}");
}
