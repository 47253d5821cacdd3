//! Day-to-day operation on the seed's LVS pair (`lb_tests::e2e_lab`): what an operator does to
//! a running load balancer, and what must not happen to the traffic meanwhile.
//!
//! - Every real server of a service drained (weights 0 by a reload): the established
//!   connections keep their servers, as IPVS keeps them; only new ones find no server.
//! - A service below its `quorum` without a `sorry_server` keeps serving with the servers
//!   that are alive, as keepalived does (its quorum only drives `quorum_down` and tracking).
//!
//! One at a time (a lock): each runs a pair of daemons and three nginx on a small machine.
use std::{sync::Mutex, time::Duration};

use lb_tests::{
    e2e_lab::{http_get, lvs_toml, status_json, LongLived, LvsLab, LvsParams, HTTP},
    netns::{require_lab, unique_prefix},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn started(tag: &str, params: LvsParams) -> LvsLab {
    let mut lab = LvsLab::new(&unique_prefix(tag), params).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    lab
}

/// The HTTP service's backends on LB `i` as (address, effective weight).
fn effective_weights(lab: &LvsLab, i: usize) -> Vec<(String, u64)> {
    let Ok(s) = status_json(lab.lb(i)) else {
        return Vec::new();
    };
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["port"] == HTTP)
        .flat_map(|v| v["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["addr"].as_str().unwrap_or("").to_string(),
                b["effective_weight"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn wait(lab: &LvsLab, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    lb_tests::e2e_lab::wait(what, timeout, f).unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
}

/// Draining every real server of a service (weight 0 by a reload) stops new flows only: the
/// established connections go on to their servers. Before, the service lost its quorum and
/// went inactive, and its connections fell to the master's stack, which reset them.
#[test]
fn draining_every_real_server_keeps_established_connections() {
    let test = "draining_every_real_server_keeps_established_connections";
    if !require_lab(test) {
        return;
    }
    let _one = serial();
    let params = LvsParams::new("rr", "skb");
    let lab = started("opd", params.clone());
    let mut conns = LongLived::open(lab.client(), lab.target(), 12).unwrap();
    assert_eq!(conns.round().ok, 12);
    let drained = lvs_toml(&params, 1).replace("weight = 1\n", "weight = 0\n");
    lab.set_config(1, &drained).unwrap();
    lab.reload_lb(1).unwrap();
    wait(
        &lab,
        "lb1 to drain every server",
        Duration::from_secs(5),
        || {
            let w = effective_weights(&lab, 1);
            w.len() == 3 && w.iter().all(|(_, w)| *w == 0)
        },
    );
    for _ in 0..3 {
        let r = conns.round();
        assert_eq!(
            (r.ok, r.resets, r.moved),
            (12, 0, 0),
            "{r:?}\n{}",
            lab.logs()
        );
    }
    // A new connection finds no server.
    let target = lab.target();
    let fresh = lab
        .client()
        .run_in(|| http_get(target, Duration::from_secs(1)))
        .unwrap();
    assert!(fresh.is_err(), "a drained service took a new connection");
    // Weights back: new connections are served again, and the old ones never noticed.
    lab.set_config(1, &lvs_toml(&params, 1)).unwrap();
    lab.reload_lb(1).unwrap();
    wait(
        &lab,
        "lb1 to serve new connections",
        Duration::from_secs(5),
        || {
            lab.client()
                .run_in(|| http_get(target, Duration::from_secs(1)))
                .is_ok_and(|r| r.is_ok())
        },
    );
    assert_eq!(conns.round().ok, 12);
    lab.teardown().unwrap();
}

/// Below its quorum, without a sorry server, a service keeps serving with what is alive
/// (keepalived's behaviour; before, the whole service stopped).
#[test]
fn quorum_lost_without_a_sorry_server_keeps_serving() {
    let test = "quorum_lost_without_a_sorry_server_keeps_serving";
    if !require_lab(test) {
        return;
    }
    let _one = serial();
    let params = LvsParams::new("rr", "skb");
    let mut lab = LvsLab::new(&unique_prefix("opq"), params.clone()).unwrap();
    let text =
        lvs_toml(&params, 1).replacen("lb_kind = \"DR\"\n", "lb_kind = \"DR\"\nquorum = 3\n", 1);
    assert!(text.contains("quorum = 3\n"));
    lab.set_config(1, &text).unwrap();
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    let mut conns = LongLived::open(lab.client(), lab.target(), 6).unwrap();
    lab.stop_nginx(1).unwrap();
    lab.wait_health(1, 1, "down", Duration::from_secs(10))
        .unwrap();
    // The premise: the service did lose its quorum (2 of 3 up, quorum 3).
    wait(
        &lab,
        "lb1 to log the quorum lost",
        Duration::from_secs(5),
        || lab.lb_log(1).contains("service quorum lost"),
    );
    let target = lab.target();
    let served = lab
        .client()
        .run_in(|| {
            (0..12)
                .filter(|_| http_get(target, Duration::from_secs(1)).is_ok())
                .count()
        })
        .unwrap();
    assert_eq!(served, 12, "requests served below quorum\n{}", lab.logs());
    // The connections to the servers alive go on.
    let r = conns.round();
    let to_dead = conns.by_backend().get("rs1").copied().unwrap_or(0);
    assert_eq!(r.ok, 6 - to_dead, "{r:?}\n{}", lab.logs());
    lab.teardown().unwrap();
}

/// `lb-daemon ARGS --socket <LB i's>`: its standard output, or its error.
fn ctl(lab: &LvsLab, i: usize, args: &[&str]) -> Result<String, String> {
    ctl_as(lab, i, None, args)
}

/// [`ctl`] as another user: `setpriv` to uid 65534 with the given primary group and
/// supplementary groups.
fn ctl_as(
    lab: &LvsLab,
    i: usize,
    user: Option<(&str, &str)>,
    args: &[&str],
) -> Result<String, String> {
    let bin = lb_tests::lab::daemon_bin().unwrap();
    let socket = lab.lb(i).dir().join("ctl.sock");
    let mut cmd = match user {
        None => std::process::Command::new(&bin),
        Some((gid, groups)) => {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", &format!("--regid={gid}")]);
            if groups.is_empty() {
                c.arg("--clear-groups");
            } else {
                c.arg(format!("--groups={groups}"));
            }
            c.arg(&bin);
            c
        }
    };
    let out = cmd
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Which real servers `n` new connections from the client reach.
fn new_connections(lab: &LvsLab, n: usize) -> std::collections::BTreeMap<String, usize> {
    let target = lab.target();
    lab.client()
        .run_in(|| {
            let mut m = std::collections::BTreeMap::new();
            for _ in 0..n {
                let who = http_get(target, Duration::from_secs(1))
                    .map(|b| b.trim().to_string())
                    .unwrap_or_else(|f| format!("failed: {f:?}"));
                *m.entry(who).or_insert(0) += 1;
            }
            m
        })
        .unwrap()
}

/// The HTTP service's real server `i` on LB `lb` in `status --json`.
fn backend_json(lab: &LvsLab, lb: usize, i: usize) -> serde_json::Value {
    let want = format!("{}:{HTTP}", lb_tests::e2e_lab::rs_v4(i));
    let s = status_json(lab.lb(lb)).unwrap_or_else(|e| panic!("{e:#}"));
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["port"] == HTTP)
        .and_then(|v| v["backends"].as_array())
        .and_then(|b| b.iter().find(|b| b["addr"] == want.as_str()))
        .cloned()
        .unwrap_or_default()
}

/// The runtime commands of `ipvsadm -e`, on the master of the pair, under 12 keep-alive
/// connections: drain keeps a server's connections and sends it no new one; the override
/// survives a reload and a restart (the state file), is marked in status, and goes with
/// reset; disable and enable; weight; an override whose server a reload removes is
/// dropped with a line. Then who may do what on the control socket: a member of
/// `control_socket_group` reads status and may not change anything; a non-member may not
/// connect.
#[test]
fn runtime_changes_to_real_servers() {
    let test = "runtime_changes_to_real_servers";
    if !require_lab(test) || !lb_tests::netns::require_tools(test, &["setpriv"]) {
        return;
    }
    let _one = serial();
    let params = LvsParams::new("rr", "skb");
    let mut lab = LvsLab::new(&unique_prefix("opr"), params.clone()).unwrap();
    let base = lvs_toml(&params, 1).replacen(
        "[global_defs]\n",
        "[global_defs]\ncontrol_socket_group = \"nogroup\"\n",
        1,
    );
    lab.set_config(1, &base).unwrap();
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    let rs = |i: usize| lb_tests::e2e_lab::rs_v4(i).to_string();
    let svc = format!("{}:{HTTP}", lb_tests::e2e_lab::VIP);
    let mut conns = LongLived::open(lab.client(), lab.target(), 12).unwrap();
    let on_rs1 = conns.by_backend().get("rs1").copied().unwrap_or(0);
    assert!(on_rs1 > 0, "{:?}", conns.by_backend());

    // The connection table, as ipvsadm -Lnc: every one of the 12, by real server, bounded.
    let conns_json = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["connections", "--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&ctl(&lab, 1, &a).unwrap()).unwrap()
    };
    let all = conns_json(&["--service", &svc]);
    assert_eq!(all["total"], 12, "{all}");
    let row = &all["connections"][0];
    assert_eq!(
        (row["protocol"].as_str(), row["virtual_server"].as_str()),
        (
            Some("TCP"),
            Some(format!("{}:{HTTP}", lb_tests::e2e_lab::VIP).as_str())
        ),
        "{row}"
    );
    assert!(
        row["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", lb_tests::e2e_lab::CLIENT)),
        "{row}"
    );
    assert!(row["idle_s"].as_u64().unwrap() < 10, "{row}");
    let to_rs1 = conns_json(&["--real", &rs(1)]);
    assert_eq!(to_rs1["total"].as_u64(), Some(on_rs1 as u64), "{to_rs1}");
    let client_port = row["client"].as_str().unwrap().to_string();
    assert_eq!(conns_json(&["--client", &client_port])["total"], 1);
    let limited = conns_json(&["--limit", "2"]);
    assert_eq!(
        (
            limited["total"].as_u64(),
            limited["connections"].as_array().map(Vec::len)
        ),
        (Some(12), Some(2))
    );
    let table = ctl(&lab, 1, &["connections", "--limit", "2"]).unwrap();
    assert!(
        table.contains("2 of 12 connections shown") && table.contains("Destination"),
        "{table}"
    );
    let e = ctl(&lab, 1, &["connections", "--client", "nonsense"]).unwrap_err();
    assert!(e.contains("is not IP or IP:PORT"), "{e}");
    // which: a flow the table has is its server's; a new one under rr, one of the ring's.
    let which: serde_json::Value =
        serde_json::from_str(&ctl(&lab, 1, &["which", &client_port, &svc, "--json"]).unwrap())
            .unwrap();
    assert_eq!(
        (which["by"].as_str(), &which["real_server"]),
        (Some("table"), &row["real_server"]),
        "{which}"
    );
    let fresh_client = format!("{}:9", lb_tests::e2e_lab::CLIENT);
    let which: serde_json::Value =
        serde_json::from_str(&ctl(&lab, 1, &["which", &fresh_client, &svc, "--json"]).unwrap())
            .unwrap();
    assert_eq!(which["by"], "scheduler", "{which}");
    assert_eq!(
        which["candidates"].as_array().map(Vec::len),
        Some(3),
        "{which}"
    );

    // diff: what a reload of another file would do, and nothing done.
    let writes = |lab: &LvsLab| {
        status_json(lab.lb(1)).unwrap()["map_writes"]
            .as_u64()
            .unwrap()
    };
    let before = writes(&lab);
    let same = lab.lb(1).dir().join("same.toml");
    std::fs::copy(lab.lb(1).dir().join("lb.toml"), &same).unwrap();
    let out = ctl(&lab, 1, &["diff", "--config", same.to_str().unwrap()]).unwrap();
    assert_eq!(out, "no change\nmap writes: 0\n");
    let other = lab.lb(1).dir().join("other.toml");
    let text = std::fs::read_to_string(lab.lb(1).dir().join("lb.toml"))
        .unwrap()
        .replacen("  weight = 1\n", "  weight = 0\n", 1);
    std::fs::write(&other, &text).unwrap();
    let out = ctl(&lab, 1, &["diff", "--config", other.to_str().unwrap()]).unwrap();
    assert!(
        out.contains(&format!("real server {}:{HTTP} weight 1 -> 0", rs(1))),
        "{out}"
    );
    let n: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("map writes: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(n > 0, "{out}");
    // A priority applies in place; how the program is attached does not.
    let refused = text.replace("priority = 100", "priority = 120").replacen(
        "max_flows = 65536\n",
        "max_flows = 65536\nkeep_xdp_on_exit = true\n",
        1,
    );
    std::fs::write(&other, &refused).unwrap();
    let out = ctl(&lab, 1, &["diff", "--config", other.to_str().unwrap()]).unwrap();
    assert!(
        out.contains("a reload would be refused")
            && out.contains("dataplane.keep_xdp_on_exit changed")
            && out.contains("priority: 100 -> 120"),
        "{out}"
    );
    std::fs::write(&other, "[[virtual_server]]\nip = 1\n").unwrap();
    let e = ctl(&lab, 1, &["diff", "--config", other.to_str().unwrap()]).unwrap_err();
    assert!(e.contains("other.toml:"), "{e}");
    assert_eq!(writes(&lab), before, "a diff wrote to the maps");
    assert_eq!(backend_json(&lab, 1, 1)["weight"].as_u64(), Some(1));

    // Drain rs1: its connections go on, new ones go elsewhere.
    let out = ctl(&lab, 1, &["real-server", "drain", &svc, &rs(1)]).unwrap();
    assert!(out.contains("drained"), "{out}");
    let r = conns.round();
    assert_eq!((r.ok, r.resets), (12, 0), "{r:?}");
    let fresh = new_connections(&lab, 30);
    assert_eq!(fresh.get("rs1"), None, "{fresh:?}");
    assert_eq!(fresh.values().sum::<usize>(), 30, "{fresh:?}");
    let b = backend_json(&lab, 1, 1);
    assert_eq!(
        (
            b["override_weight"].as_u64(),
            b["effective_weight"].as_u64()
        ),
        (Some(0), Some(0)),
        "{b}"
    );
    let table = ctl(&lab, 1, &["status"]).unwrap();
    assert!(table.contains("drained"), "{table}");
    let state_file = lab.lb(1).dir().join("state/overrides.json");
    assert!(std::fs::read_to_string(&state_file)
        .unwrap()
        .contains(&rs(1)));

    // A reload keeps it.
    lab.reload_lb(1).unwrap();
    assert_eq!(
        backend_json(&lab, 1, 1)["override_weight"].as_u64(),
        Some(0)
    );
    assert_eq!(new_connections(&lab, 12).get("rs1"), None);

    // Disable rs2, then enable it; weight 3 for rs3.
    ctl(&lab, 1, &["real-server", "disable", &svc, &rs(2)]).unwrap();
    let b = backend_json(&lab, 1, 2);
    assert_eq!(
        (b["disabled"].as_bool(), b["effective_weight"].as_u64()),
        (Some(true), Some(0)),
        "{b}"
    );
    let fresh = new_connections(&lab, 12);
    assert_eq!(fresh.keys().collect::<Vec<_>>(), ["rs3"], "{fresh:?}");
    ctl(&lab, 1, &["real-server", "enable", &svc, &rs(2)]).unwrap();
    ctl(
        &lab,
        1,
        &[
            "real-server",
            "weight",
            &svc,
            &format!("{}:{HTTP}", rs(3)),
            "3",
        ],
    )
    .unwrap();
    let b = backend_json(&lab, 1, 3);
    assert_eq!(
        (
            b["override_weight"].as_u64(),
            b["effective_weight"].as_u64()
        ),
        (Some(3), Some(3)),
        "{b}"
    );
    // Bad names are refused with what is wrong.
    let e = ctl(&lab, 1, &["real-server", "drain", &svc, "192.0.2.99"]).unwrap_err();
    assert!(e.contains("has no real server"), "{e}");
    let e = ctl(&lab, 1, &["real-server", "drain", "192.0.2.100:81", &rs(1)]).unwrap_err();
    assert!(e.contains("no virtual_server"), "{e}");

    // The control group: a member reads, and may not change; a non-member may not connect.
    let member = ctl_as(&lab, 1, Some(("100", "65534")), &["status", "--json"]);
    assert!(
        member.as_ref().is_ok_and(|s| s.contains("\"services\"")),
        "{member:?}"
    );
    let member = ctl_as(&lab, 1, Some(("100", "65534")), &["connections", "--json"]);
    assert!(
        member.as_ref().is_ok_and(|s| s.contains("\"total\"")),
        "{member:?}"
    );
    let e = ctl_as(
        &lab,
        1,
        Some(("100", "65534")),
        &["real-server", "reset", "--all"],
    )
    .unwrap_err();
    assert!(e.contains("only root may change"), "{e}");
    let e = ctl_as(
        &lab,
        1,
        Some(("100", "65534")),
        &["diff", "--config", "/etc/hostname"],
    )
    .unwrap_err();
    assert!(e.contains("only root may"), "{e}");
    let e = ctl_as(&lab, 1, Some(("100", "")), &["status"]).unwrap_err();
    assert!(e.contains("permission denied"), "{e}");

    // A restart reads the state file back.
    lab.stop_lb(1).unwrap();
    lab.start_lb(1).unwrap();
    lab.wait_state(1, "MASTER", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        backend_json(&lab, 1, 1)["override_weight"].as_u64(),
        Some(0)
    );
    assert_eq!(
        backend_json(&lab, 1, 3)["override_weight"].as_u64(),
        Some(3)
    );
    wait(&lab, "lb1 to serve", Duration::from_secs(10), || {
        new_connections(&lab, 1).keys().all(|k| k.starts_with("rs"))
    });
    assert_eq!(new_connections(&lab, 12).get("rs1"), None);

    // A reload that removes rs3 drops its override, with a line.
    let without_rs3 = base.replacen(
        &format!(
            "\n  [[virtual_server.real_server]]\n  ip = \"{}\"\n  port = {HTTP}\n",
            rs(3)
        ),
        &format!("\n  [[virtual_server.real_server]]\n  ip = \"192.0.2.99\"\n  port = {HTTP}\n"),
        1,
    );
    assert_ne!(without_rs3, base);
    lab.set_config(1, &without_rs3).unwrap();
    lab.reload_lb(1).unwrap();
    assert!(
        lab.lb_log(1).contains("runtime override dropped"),
        "{}",
        lab.lb_log(1)
    );
    let left = std::fs::read_to_string(&state_file).unwrap();
    assert!(!left.contains(&rs(3)) && left.contains(&rs(1)), "{left}");

    // Reset: rs1 takes new connections again; --all leaves no file.
    ctl(&lab, 1, &["real-server", "reset", &svc, &rs(1)]).unwrap();
    assert_eq!(
        backend_json(&lab, 1, 1)["override_weight"],
        serde_json::Value::Null
    );
    assert!(new_connections(&lab, 12).contains_key("rs1"));
    ctl(&lab, 1, &["real-server", "drain", &svc, &rs(2)]).unwrap();
    ctl(&lab, 1, &["real-server", "reset", "--all"]).unwrap();
    assert!(!state_file.exists());

    // zero: status counts from 0; the metrics would go on.
    ctl(&lab, 1, &["zero"]).unwrap();
    let s = status_json(lab.lb(1)).unwrap();
    let http = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["port"] == HTTP)
        .unwrap()
        .clone();
    assert!(http["new_flows"].as_u64().unwrap() <= 1, "{http}");
    new_connections(&lab, 6);
    let s = status_json(lab.lb(1)).unwrap();
    let http = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["port"] == HTTP)
        .unwrap()
        .clone();
    assert!(
        (6..=7).contains(&http["new_flows"].as_u64().unwrap()),
        "{http}"
    );
    // status --json --rate carries the rates.
    let rated = ctl(&lab, 1, &["status", "--json", "--rate"]).unwrap();
    assert!(rated.contains("\"rate\":{\"cps\":"), "{rated}");

    // global_defs in place: without the control group its former members are shut out;
    // on_stop = "keep" makes the next SIGTERM leave the VIP where it is.
    let plain = without_rs3.replacen(
        "control_socket_group = \"nogroup\"\n",
        "on_stop = \"keep\"\n",
        1,
    );
    assert_ne!(plain, without_rs3);
    lab.set_config(1, &plain).unwrap();
    lab.reload_lb(1).unwrap();
    let e = ctl_as(&lab, 1, Some(("100", "65534")), &["status"]).unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    lab.stop_lb(1).unwrap();
    assert!(
        lab.has_vip(1),
        "on_stop = \"keep\" by reload, yet the stop released the VIP"
    );
    lab.teardown().unwrap();
}

/// One HTTP request from the client's `port`: the real server that answered (`rsN`).
fn request_from(lab: &LvsLab, port: u16) -> String {
    use std::io::{Read, Write};
    let target = lab.target();
    lab.client()
        .run_in(move || {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_reuse_address(true).unwrap();
            let from = std::net::SocketAddr::from((lb_tests::e2e_lab::CLIENT, port));
            s.bind(&from.into()).unwrap();
            s.connect_timeout(&target.into(), Duration::from_secs(2))
                .unwrap();
            let mut s: std::net::TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text.lines().last().unwrap_or_default().trim().to_string()
        })
        .unwrap()
}

/// `which` for a flow that does not exist yet says what the program will do: under mh with
/// ports hashed, the daemon's source hash and ring agree with the program's, port by port.
#[test]
fn which_predicts_a_new_flow_under_mh() {
    let test = "which_predicts_a_new_flow_under_mh";
    if !require_lab(test) {
        return;
    }
    let _one = serial();
    let params = LvsParams {
        hash_port: true,
        ..LvsParams::new("mh", "skb")
    };
    let lab = started("opw", params);
    let svc = format!("{}:{HTTP}", lb_tests::e2e_lab::VIP);
    let mut seen = std::collections::BTreeSet::new();
    for port in 20000..20012u16 {
        let client = format!("{}:{port}", lb_tests::e2e_lab::CLIENT);
        let which: serde_json::Value =
            serde_json::from_str(&ctl(&lab, 1, &["which", &client, &svc, "--json"]).unwrap())
                .unwrap();
        assert_eq!(which["by"], "scheduler", "{which}");
        let predicted = which["real_server"].as_str().unwrap().to_string();
        let answered = request_from(&lab, port);
        let i: usize = answered.trim_start_matches("rs").parse().unwrap();
        assert_eq!(
            predicted,
            format!("{}:{HTTP}", lb_tests::e2e_lab::rs_v4(i)),
            "port {port}"
        );
        seen.insert(answered);
    }
    assert!(
        seen.len() >= 2,
        "12 ports all went to {seen:?}: the test proves little"
    );
    lab.teardown().unwrap();
}
