//! The count-based schedulers end to end, in namespaces, with nginx real servers: what
//! IPVS's wlc does with long-lived connections, seen by real clients.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lb_tests::{
    lab::{counts, lab_config, reload, start_daemon, status_json},
    netns::{require_lab, unique_prefix, wait_until, DrLab, Proc},
};

/// `n` connections to the VIP that each send one request, print the server that answered,
/// and stay open (HTTP keep-alive) until `flag` exists: long-lived connections.
fn hold_connections(lab: &DrLab, n: usize, name: &str) -> (Proc, PathBuf) {
    let dir = lab.client().dir();
    let flag = dir.join(format!("{name}.release"));
    let script = format!(
        r#"
import os, socket, sys, time
held = []
for _ in range({n}):
    s = socket.create_connection(("192.0.2.100", 80), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        data += chunk
    print(data.split(b"\r\n\r\n", 1)[1].decode().strip(), flush=True)
    held.append(s)
deadline = time.time() + 60
while not os.path.exists("{flag}"):
    if time.time() > deadline:
        sys.exit("never released")
    time.sleep(0.02)
"#,
        flag = flag.display()
    );
    let py = dir.join(format!("{name}.py"));
    std::fs::write(&py, script).unwrap();
    let p = lab
        .client()
        .spawn(&["python3", py.to_str().unwrap()])
        .unwrap();
    wait_until(
        &format!("{n} connections held"),
        Duration::from_secs(20),
        || p.read_stdout().lines().count() >= n,
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", p.read_stderr()));
    (p, flag)
}

fn release(p: &Proc, flag: &Path) {
    std::fs::write(flag, "").unwrap();
    let status = p.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{}", p.read_stderr());
}

fn served(p: &Proc) -> BTreeMap<String, usize> {
    let lines: Vec<String> = p.read_stdout().lines().map(str::to_string).collect();
    counts(&lines)
}

/// (ActiveConn, InActConn) of each real server of the IPv4 service, as `status` shows them.
fn conns(lab: &DrLab) -> Vec<(u64, u64)> {
    let s = status_json(lab);
    let svc = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["vip"] == "192.0.2.100")
        .unwrap_or_else(|| panic!("the service in {s}"))
        .clone();
    svc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["active_conns"].as_u64().unwrap(),
                b["inactive_conns"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// One real server holds 50 long-lived connections and two hold none: under wlc the next 30
/// new connections all go to the two idle ones, as IPVS does (and within the 20 ms the
/// daemon takes to rank them after the reload that makes the first one share). Then, with
/// weights 1:3 and equal long-lived load, new long-lived connections bring the load to 1:3.
#[test]
fn wlc_follows_the_connections_real_servers_hold() {
    let test = "wlc_follows_the_connections_real_servers_hold";
    if !require_lab(test) {
        return;
    }
    let lab = DrLab::new(&unique_prefix("wlc"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    // Only rs1 takes connections: 50 long-lived ones land there.
    let (daemon, cfg) = start_daemon(&lab, &lab_config(&lab, "skb", "wlc", &[1, 0, 0]), "skb")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (long, flag) = hold_connections(&lab, 50, "long");
    assert_eq!(served(&long).get("rs1"), Some(&50), "{:?}", served(&long));
    wait_until(
        "rs1's 50 established connections in status",
        Duration::from_secs(5),
        || conns(&lab)[0].0 == 50,
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", conns(&lab)));

    // All three share now; the next 30 connections go to the idle two.
    reload(&daemon, &cfg, &lab_config(&lab, "skb", "wlc", &[1, 1, 1])).unwrap();
    let started = Instant::now();
    let bodies = lab
        .curl_batch("192.0.2.100", 30)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    eprintln!("30 connections in {:?} after the reload", started.elapsed());
    let by = counts(&bodies);
    assert_eq!(
        by.get("rs1"),
        None,
        "wlc sent a new connection to the busy server: {by:?}"
    );
    let (rs2, rs3) = (by["rs2"], by["rs3"]);
    assert_eq!(rs2 + rs3, 30);
    assert!(rs2.abs_diff(rs3) <= 2, "the idle two take turns: {by:?}");
    // The closed ones count as inactive (FIN_WAIT), the held ones active.
    let c = conns(&lab);
    assert_eq!(c[0], (50, 0), "{c:?}");
    assert_eq!(c[1].1 + c[2].1, 30, "{c:?}");
    release(&long, &flag);

    // Weights 1:3, each server holding 10 long-lived connections: 40 more long-lived ones
    // bring the load to 10 + 5 : 10 + 35, that is 1:3.
    reload(&daemon, &cfg, &lab_config(&lab, "skb", "wlc", &[1, 0, 0])).unwrap();
    let (a, flag_a) = hold_connections(&lab, 10, "a");
    reload(&daemon, &cfg, &lab_config(&lab, "skb", "wlc", &[0, 1, 0])).unwrap();
    let (b, flag_b) = hold_connections(&lab, 10, "b");
    assert_eq!(served(&a).get("rs1"), Some(&10));
    assert_eq!(served(&b).get("rs2"), Some(&10));
    reload(&daemon, &cfg, &lab_config(&lab, "skb", "wlc", &[1, 3, 0])).unwrap();
    let (more, flag_more) = hold_connections(&lab, 40, "more");
    let by = served(&more);
    let (rs1, rs2) = (
        10 + by.get("rs1").copied().unwrap_or(0),
        10 + by.get("rs2").copied().unwrap_or(0),
    );
    assert_eq!(rs1 + rs2, 60, "{by:?}");
    assert!(
        (14..=16).contains(&rs1) && (44..=46).contains(&rs2),
        "load {rs1}:{rs2}, not 1:3 ({by:?})"
    );
    let c = conns(&lab);
    assert_eq!((c[0].0, c[1].0), (rs1 as u64, rs2 as u64), "{c:?}");
    for (p, f) in [(&a, &flag_a), (&b, &flag_b), (&more, &flag_more)] {
        release(p, f);
    }
    daemon.signal(libc::SIGTERM).unwrap();
    daemon.wait_timeout(Duration::from_secs(10)).unwrap();
}
