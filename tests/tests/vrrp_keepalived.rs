//! Interop with real keepalived (2.2.7 from Debian) in namespaces, both ways round: our daemon
//! as master with keepalived as backup, and the reverse, for VRRPv2 with the seed's PASS
//! authentication, VRRPv3 over IPv4 and VRRPv3 over IPv6. Each pair is generated from one
//! [`VrrpParams`] (same VRID, interval, authentication, VIP, preemption; priorities 150 for
//! node 0 and 100 for node 1, `state MASTER` on node 0 as in the seed) and goes through:
//!
//! 1. election: node 0 holds the VIP alone and the client's neighbour entry follows it;
//! 2. hard failure: node 0 is SIGKILLed (keepalived: its whole process group) right after one of
//!    its adverts; node 1 holds the VIP within Master_Down_Interval plus a margin, and its first
//!    advert reaches the client Master_Down_Interval (± a small tolerance) after node 0's last;
//! 3. preemption: node 0 is started again (its run removes the VIP the killed run left) and
//!    takes the VIP back;
//! 4. graceful stop: SIGTERM to node 0, whose priority-0 advert hands over to node 1 within
//!    Skew_Time plus a margin; node 0 exits cleanly without the VIP;
//! 5. zero discards on both sides: no "VRRP advert not used as is" in our log, no rejection line
//!    in keepalived's log (`-l -D`), and all receive error counters of keepalived's statistics
//!    dump (SIGUSR2, `$TMPDIR/keepalived.stats`) at zero, with adverts received; every advert
//!    the client saw well-formed for the pair, ours marked DSCP CS6 (IPv4 TOS or IPv6 traffic
//!    class 0xc0) as keepalived marks its own;
//! 6. our daemon's state changes are exactly the expected sequence.
//!
//! `wrong_password_is_seen_by_both_checks` shows that the discard checks of step 5 can fail: a
//! mismatched password is reported by our log, keepalived's log and keepalived's counters.
//!
//! Skips (with a printed reason) unless root with keepalived installed; `LB_REQUIRE_PRIVILEGED=1`
//! turns the skip into a failure. Needs `cargo build --release -p lb-daemon`.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    netns::{fmt_mac, require_root, unique_prefix, HOST_IF},
    vrrp_lab::{Advert, Peer, VrrpLab, VrrpParams},
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn gate(test: &str) -> bool {
    require_root(test) && lb_tests::vrrp_lab::require_keepalived(test)
}

/// keepalived's statistics on node `i`, if it runs keepalived: no receive error counted, adverts
/// received, and (`Became master`, `Released master`) of its current run as given.
fn check_keepalived_stats(lab: &VrrpLab, i: usize, when: &str, masterships: (u64, u64)) {
    if lab.peer(i) != Peer::Keepalived || !lab.is_running(i) {
        return;
    }
    let stats = lab.keepalived_stats(i).unwrap();
    eprintln!("keepalived node {i} stats {when}: {:?}", stats.0);
    assert!(
        stats.errors().is_empty(),
        "keepalived on node {i} counted receive errors {when}: {:?}\n{}",
        stats.errors(),
        lab.logs_for_error()
    );
    // Node 0 may not have heard node 1 (a silent backup) before its first failure.
    let heard_other = i == 1 || masterships != (1, 0) || when != "after the election";
    assert!(
        !heard_other || stats.received() > 0,
        "keepalived on node {i} received no advert {when}: {:?}",
        stats.0
    );
    assert_eq!(
        (stats.get("Became master"), stats.get("Released master")),
        masterships,
        "keepalived on node {i} {when}: {:?}\n{}",
        stats.0,
        lab.logs_for_error()
    );
}

fn advert_from(watch_adverts: &[Advert], src: IpAddr) -> Vec<&Advert> {
    watch_adverts.iter().filter(|a| a.src == src).collect()
}

/// The whole scenario of the module doc for one pair.
fn interop(test: &str, params: VrrpParams, peers: [Peer; 2]) {
    if !gate(test) {
        return;
    }
    let t_test = Instant::now();
    let mut lab = VrrpLab::new(&unique_prefix("vk"), &params, peers).unwrap();
    let watch = lab.advert_watch().unwrap();
    let src = [lab.advert_source(0).unwrap(), lab.advert_source(1).unwrap()];
    let adv = params.advert_int();
    let mdi = params.master_down_interval(1);
    let skew = params.skew(1);
    let start_margin = Duration::from_secs(3);
    eprintln!(
        "{test}: node 0 = {} (priority {}), node 1 = {} (priority {}), v{}, advert_int {:?}, \
         Master_Down_Interval(node 1) {:.1} ms, Skew_Time {:.1} ms",
        peers[0],
        params.priorities[0],
        peers[1],
        params.priorities[1],
        params.version,
        adv,
        ms(mdi),
        ms(skew)
    );

    // 1. Election.
    lab.start_both().unwrap();
    let took = lab
        .wait_holder(0, params.master_down_interval(0) + adv + start_margin)
        .unwrap();
    eprintln!(
        "{test}: node 0 holds the VIP {:.0} ms after both started",
        ms(took)
    );
    lab.wait_client_follows(0, Duration::from_secs(5)).unwrap();
    let a = watch
        .wait_for("node 0's advert", Instant::now(), adv * 3, |a| {
            a.src == src[0]
        })
        .unwrap();
    assert_eq!(
        (a.version, a.vrid, a.priority, a.interval_cs, a.ttl),
        (
            params.version,
            params.vrid,
            params.priorities[0],
            params.advert_int_cs,
            255
        ),
        "{a:?}"
    );
    check_keepalived_stats(&lab, 0, "after the election", (1, 0));
    check_keepalived_stats(&lab, 1, "after the election", (0, 0));

    // 2. Hard failure, right after one of node 0's adverts.
    let probe = lab.prober(Duration::from_millis(1)).unwrap();
    probe
        .wait_replies_after(Instant::now(), 20, Duration::from_secs(3))
        .unwrap();
    let a = watch
        .wait_for("node 0's advert", Instant::now(), adv * 3, |a| {
            a.src == src[0]
        })
        .unwrap();
    let t_kill = lab.kill(0).unwrap();
    let since_advert = t_kill - a.at;
    lab.wait_holder(1, mdi + Duration::from_secs(2)).unwrap();
    let took = t_kill.elapsed();
    let first = watch
        .wait_for("node 1's first advert as master", t_kill, adv * 3, |a| {
            a.src == src[1] && a.priority > 0
        })
        .unwrap();
    let last = watch.last_from_before(src[0], t_kill).unwrap();
    let takeover = first.at - last.at;
    eprintln!(
        "{test}: SIGKILL {:.2} ms after node 0's advert; node 1 advertises {:.1} ms after node \
         0's last advert (Master_Down_Interval {:.1} ms), holds the VIP within {:.0} ms of the kill",
        ms(since_advert),
        ms(takeover),
        ms(mdi),
        ms(took)
    );
    assert!(
        took <= mdi + Duration::from_millis(300),
        "takeover {took:?} after the kill, Master_Down_Interval {mdi:?}\n{}",
        lab.logs_for_error()
    );
    assert!(
        takeover + Duration::from_millis(10) >= mdi && takeover <= mdi + Duration::from_millis(100),
        "node 1's first advert {takeover:?} after node 0's last, Master_Down_Interval {mdi:?}\n{}",
        lab.logs_for_error()
    );
    assert_eq!(first.priority, params.priorities[1]);
    lab.wait_client_follows(1, Duration::from_secs(5)).unwrap();
    probe
        .wait_replies_after(Instant::now(), 20, Duration::from_secs(3))
        .unwrap();
    let report = probe.stop();
    // The killed node keeps the VIP configured and its kernel keeps answering until the
    // client's neighbour entry moves: this gap is no failover time (see vrrp_bench).
    eprintln!(
        "{test}: 1 ms echo stream across the SIGKILL: longest gap {:.1} ms, {} of {} lost",
        report.longest_gap().map_or(f64::NAN, |g| ms(g.len())),
        report.lost(),
        report.sent
    );
    assert!(lab.has_vip(0), "a SIGKILLed run leaves its VIP behind");
    check_keepalived_stats(&lab, 1, "after the hard failover", (1, 0));

    // 3. Preemption when node 0 comes back.
    lab.start(0).unwrap();
    let took = lab
        .wait_holder(0, params.master_down_interval(0) + adv + start_margin)
        .unwrap();
    eprintln!(
        "{test}: node 0 restarted and preempted in {:.0} ms",
        ms(took)
    );
    assert!(!lab.has_vip(1));
    lab.wait_client_follows(0, Duration::from_secs(5)).unwrap();
    check_keepalived_stats(&lab, 0, "after the preemption", (1, 0));
    check_keepalived_stats(&lab, 1, "after the preemption", (1, 1));

    // 4. Graceful stop.
    let t_term = lab.terminate(0).unwrap();
    let zero = watch
        .wait_for(
            "node 0's priority-0 advert",
            t_term,
            Duration::from_secs(3),
            |a| a.src == src[0] && a.priority == 0,
        )
        .unwrap();
    let first = watch
        .wait_for(
            "node 1's first advert after the release",
            zero.at,
            adv * 2 + skew,
            |a| a.src == src[1] && a.priority > 0,
        )
        .unwrap();
    let handover = first.at - zero.at;
    lab.wait_holder(1, skew + Duration::from_secs(2)).unwrap();
    let st = lab.wait_stopped(0).unwrap().expect("it was running");
    eprintln!(
        "{test}: SIGTERM: node 1 advertises {:.1} ms after node 0's priority-0 advert (Skew_Time \
         {:.1} ms)",
        ms(handover),
        ms(skew)
    );
    assert!(
        st.success(),
        "node 0 exit status {st}\n{}",
        lab.logs_for_error()
    );
    assert!(
        handover <= skew + Duration::from_millis(100),
        "handover {handover:?}, Skew_Time {skew:?}\n{}",
        lab.logs_for_error()
    );
    assert!(!lab.has_vip(0), "a stopped node releases its VIP");
    lab.wait_client_follows(1, Duration::from_secs(5)).unwrap();

    // 5. Nothing refused, either side.
    check_keepalived_stats(&lab, 1, "at the end", (2, 1));
    for i in 0..2 {
        let r = lab.rejections(i);
        assert!(
            r.is_empty(),
            "node {i} ({}) refused adverts:\n{}\n{}",
            lab.peer(i),
            r.join("\n"),
            lab.logs_for_error()
        );
    }
    // Every advert on the wire was well-formed for this pair.
    let adverts = watch.adverts();
    for (i, s) in src.iter().enumerate() {
        let mine = advert_from(&adverts, *s);
        assert!(!mine.is_empty(), "no advert from node {i}");
        for a in &mine {
            assert_eq!(
                (a.version, a.vrid, a.interval_cs, a.ttl),
                (params.version, params.vrid, params.advert_int_cs, 255),
                "node {i}: {a:?}"
            );
            assert!(
                a.priority == params.priorities[i] || a.priority == 0,
                "node {i}: {a:?}"
            );
            // Ours go out as network control (DSCP CS6), as keepalived's do.
            if lab.peer(i) == Peer::Ours {
                assert_eq!(a.tos, 0xc0, "node {i}'s TOS / traffic class: {a:?}");
            }
        }
        let marks: std::collections::BTreeSet<u8> = mine.iter().map(|a| a.tos).collect();
        eprintln!(
            "{test}: node {i} ({}) marks its adverts {marks:02x?}",
            lab.peer(i)
        );
    }

    // 6. Our daemon's state changes.
    let expected: &[(&str, &str)] = if peers[0] == Peer::Ours {
        // Run 1: elected, then killed; run 2: elected again, then stopped.
        &[
            ("INIT", "BACKUP"),
            ("BACKUP", "MASTER"),
            ("INIT", "BACKUP"),
            ("BACKUP", "MASTER"),
            ("MASTER", "INIT"),
        ]
    } else {
        &[
            ("INIT", "BACKUP"),
            ("BACKUP", "MASTER"),
            ("MASTER", "BACKUP"),
            ("BACKUP", "MASTER"),
        ]
    };
    let ours = usize::from(peers[0] != Peer::Ours);
    let got = lab.ours_transitions(ours);
    let got: Vec<(&str, &str)> = got.iter().map(|(f, t)| (f.as_str(), t.as_str())).collect();
    assert_eq!(got, expected, "{}", lab.log(ours));

    // 7. keepalived's FIFO lines, from keepalived and from ours, read by the same reader.
    if params.fifo {
        for i in 0..2 {
            let path = lab.node(i).dir().join(lb_tests::vrrp_lab::FIFO_LOG);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                let w: Vec<&str> = line.split(' ').collect();
                assert!(
                    w.len() == 4
                        && w[0] == "INSTANCE"
                        && w[1] == "\"VI_1\""
                        && ["MASTER", "BACKUP", "FAULT", "STOP"].contains(&w[2])
                        && w[3].parse::<u8>().is_ok(),
                    "node {i} ({}): {line:?} is not keepalived's FIFO line:\n{text}",
                    lab.peer(i)
                );
            }
            let master = format!("INSTANCE \"VI_1\" MASTER {}", params.priorities[i]);
            assert!(
                text.lines().any(|l| l == master),
                "node {i} ({}): no {master:?} in\n{text}",
                lab.peer(i)
            );
            eprintln!(
                "{test}: node {i} ({}) FIFO lines: {:?}",
                lab.peer(i),
                text.lines().collect::<Vec<_>>()
            );
        }
        // The same changes in the same bytes: the two nodes' lines differ in the priority only
        // (the STOP of the node stopped last is its own: the other was not stopped).
        let shape = |i: usize| -> Vec<String> {
            std::fs::read_to_string(lab.node(i).dir().join(lb_tests::vrrp_lab::FIFO_LOG))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.contains(" STOP "))
                .map(|l| l.replace(&params.priorities[i].to_string(), "P"))
                .collect()
        };
        assert_eq!(shape(0), shape(1), "keepalived's and ours");
        let backup = format!("INSTANCE \"VI_1\" BACKUP {}", params.priorities[1]);
        let text = std::fs::read_to_string(lab.node(1).dir().join(lb_tests::vrrp_lab::FIFO_LOG))
            .unwrap_or_default();
        assert!(
            text.lines().any(|l| l == backup),
            "node 1: no {backup:?} in\n{text}"
        );
    }
    drop(lab);
    eprintln!("{test}: done in {:.1} s", t_test.elapsed().as_secs_f64());
}

#[test]
fn v2_pass_ours_master_keepalived_backup() {
    interop(
        "v2_pass_ours_master_keepalived_backup",
        VrrpParams {
            fifo: true,
            ..VrrpParams::v2_seed()
        },
        [Peer::Ours, Peer::Keepalived],
    );
}

#[test]
fn v2_pass_keepalived_master_ours_backup() {
    interop(
        "v2_pass_keepalived_master_ours_backup",
        VrrpParams {
            fifo: true,
            ..VrrpParams::v2_seed()
        },
        [Peer::Keepalived, Peer::Ours],
    );
}

#[test]
fn v3_ours_master_keepalived_backup() {
    interop(
        "v3_ours_master_keepalived_backup",
        VrrpParams::v3(10),
        [Peer::Ours, Peer::Keepalived],
    );
}

#[test]
fn v3_keepalived_master_ours_backup() {
    interop(
        "v3_keepalived_master_ours_backup",
        VrrpParams::v3(10),
        [Peer::Keepalived, Peer::Ours],
    );
}

#[test]
fn v3_ipv6_ours_master_keepalived_backup() {
    interop(
        "v3_ipv6_ours_master_keepalived_backup",
        VrrpParams::v3_ipv6(10),
        [Peer::Ours, Peer::Keepalived],
    );
}

#[test]
fn v3_ipv6_keepalived_master_ours_backup() {
    interop(
        "v3_ipv6_keepalived_master_ours_backup",
        VrrpParams::v3_ipv6(10),
        [Peer::Keepalived, Peer::Ours],
    );
}

/// The checks of step 5 can fail: with a wrong password on keepalived's side, our daemon logs
/// the refusal, and so do keepalived's log and its authentication counter.
#[test]
fn wrong_password_is_seen_by_both_checks() {
    let test = "wrong_password_is_seen_by_both_checks";
    if !gate(test) {
        return;
    }
    let params = VrrpParams::v2_seed();
    let mut lab = VrrpLab::new(
        &unique_prefix("vk"),
        &params,
        [Peer::Ours, Peer::Keepalived],
    )
    .unwrap();
    lab.params_mut(1).auth_pass = Some("654321".into());
    lab.start_both().unwrap();
    // Our node (state MASTER) advertises after about a second and keepalived refuses it; after
    // its Master_Down_Interval keepalived advertises too and we refuse it.
    lb_tests::netns::wait_until(
        "both sides to report the wrong password",
        params.master_down_interval(1) + Duration::from_secs(4),
        || !lab.rejections(0).is_empty() && !lab.rejections(1).is_empty(),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs_for_error()));
    let ours = lab.rejections(0);
    let theirs = lab.rejections(1);
    eprintln!("{test}: ours: {ours:?}\nkeepalived: {theirs:?}");
    assert!(ours.iter().any(|l| l.contains("auth_mismatch")), "{ours:?}");
    assert!(
        theirs
            .iter()
            .any(|l| l.contains("received an invalid passwd")),
        "{theirs:?}"
    );
    let stats = lab.keepalived_stats(1).unwrap();
    assert!(
        stats.get("Authentication Errors/Failure") > 0,
        "{:?}",
        stats.0
    );
    assert!(!stats.errors().is_empty());
}

/// Unicast VRRP between peers on different subnets, through a router that decrements the TTL:
///
/// ```text
///  {p}a ours       eth0 198.51.100.2 ── {p}r to-a 198.51.100.1 | to-b 203.0.113.1 ── eth0 203.0.113.2 keepalived {p}b
/// ```
///
/// Adverts arrive with TTL 254. keepalived checks the TTL only without `unicast_peer`, and
/// so must we: our backup hears keepalived's adverts (it does not take the VIP), takes over
/// when keepalived dies, and keepalived, back, preempts it by our adverts.
#[test]
fn unicast_across_a_router_with_keepalived() {
    let test = "unicast_across_a_router_with_keepalived";
    if !gate(test) {
        return;
    }
    use lb_tests::{
        e2e_lab::status_json,
        lab::{daemon_bin, with_control_socket},
        netns::{wait_until, Netns},
    };
    let p = unique_prefix("vr");
    let a = Netns::new(&format!("{p}a")).unwrap();
    let r = Netns::new(&format!("{p}r")).unwrap();
    let b = Netns::new(&format!("{p}b")).unwrap();
    r.sysctl("net.ipv4.ip_forward", "1").unwrap();
    for (host, port, net) in [(&a, "to-a", "198.51.100"), (&b, "to-b", "203.0.113")] {
        r.ip(&[
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.name(),
        ])
        .unwrap();
        r.ip(&["addr", "add", &format!("{net}.1/24"), "dev", port])
            .unwrap();
        r.ip(&["link", "set", port, "up"]).unwrap();
        host.ip(&["addr", "add", &format!("{net}.2/24"), "dev", "eth0"])
            .unwrap();
        host.ip(&["link", "set", "eth0", "up"]).unwrap();
        host.ip(&["route", "add", "default", "via", &format!("{net}.1")])
            .unwrap();
    }
    let ours = with_control_socket(
        "[global_defs]\nrouter_id = \"a\"\n\n[[vrrp_instance]]\nname = \"VI_1\"\n\
         interface = \"eth0\"\nvirtual_router_id = 61\npriority = 100\nadvert_int = 1\n\
         unicast_src_ip = \"198.51.100.2\"\nunicast_peer = [\"203.0.113.2\"]\n\
         virtual_ipaddress = [\"192.0.2.100/32\"]\n",
        a.dir(),
    );
    let ours_cfg = a.dir().join("lb.toml");
    std::fs::write(&ours_cfg, ours).unwrap();
    let kconf = b.dir().join("keepalived.conf");
    std::fs::write(
        &kconf,
        "global_defs {\n    router_id b\n}\nvrrp_instance VI_1 {\n    state BACKUP\n    \
         interface eth0\n    virtual_router_id 61\n    priority 150\n    advert_int 1\n    \
         unicast_src_ip 203.0.113.2\n    unicast_peer {\n        198.51.100.2\n    }\n    \
         virtual_ipaddress {\n        192.0.2.100/32\n    }\n}\n",
    )
    .unwrap();
    let tmp = b.dir().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let run = std::cell::Cell::new(0);
    let start_keepalived = || {
        run.set(run.get() + 1);
        let d = b.dir();
        let n = run.get();
        let mut cmd = b.command(&[
            "keepalived".to_string(),
            "-n".into(),
            "-l".into(),
            "-D".into(),
            "-P".into(),
            "-f".into(),
            kconf.display().to_string(),
            "-p".into(),
            d.join(format!("k{n}.pid")).display().to_string(),
            "-r".into(),
            d.join(format!("k{n}-vrrp.pid")).display().to_string(),
        ]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("keepalived.log"))
            .unwrap();
        cmd.env("TMPDIR", &tmp)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        b.spawn_command(cmd).unwrap()
    };
    let ours_vi = || -> Option<(String, Option<String>, u64)> {
        let s = status_json(&a).ok()?;
        let v = s["vrrp"].as_array()?.iter().find(|v| v["name"] == "VI_1")?;
        Some((
            v["state"].as_str()?.to_string(),
            v["master"].as_str().map(str::to_string),
            v["discards"]["bad_ttl"].as_u64().unwrap_or(0),
        ))
    };
    let has_vip = |ns: &Netns| {
        ns.ip(&["-4", "addr", "show", "dev", "eth0"])
            .is_ok_and(|o| o.contains(" 192.0.2.100/32"))
    };
    let k = start_keepalived();
    let d = a
        .spawn(&[
            daemon_bin().unwrap().to_str().unwrap(),
            "run",
            "--config",
            ours_cfg.to_str().unwrap(),
        ])
        .unwrap();
    let logs = || {
        format!(
            "{}\n---- keepalived ----\n{}",
            d.read_stderr(),
            std::fs::read_to_string(b.dir().join("keepalived.log")).unwrap_or_default()
        )
    };
    // keepalived (150) becomes master; ours hears it through the router and stays backup.
    wait_until(
        "keepalived to be master and ours to follow it",
        Duration::from_secs(10),
        || {
            has_vip(&b)
                && ours_vi()
                    .is_some_and(|(s, m, _)| s == "BACKUP" && m.as_deref() == Some("203.0.113.2"))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}\n{}", ours_vi(), logs()));
    assert!(!has_vip(&a), "ours took the VIP while keepalived is master");
    k.stop(Duration::from_secs(5)).unwrap();
    wait_until("ours to take over", Duration::from_secs(6), || {
        has_vip(&a) && ours_vi().is_some_and(|(s, _, _)| s == "MASTER")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}\n{}", ours_vi(), logs()));
    // keepalived, back, hears our adverts (TTL 254) and preempts us with its priority.
    let k = start_keepalived();
    wait_until(
        "keepalived to preempt ours",
        Duration::from_secs(10),
        || has_vip(&b) && !has_vip(&a) && ours_vi().is_some_and(|(s, _, _)| s == "BACKUP"),
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{:?}\n{}", ours_vi(), logs()));
    assert_eq!(ours_vi().map(|v| v.2), Some(0), "{}", logs());
    d.stop(Duration::from_secs(5)).unwrap();
    k.stop(Duration::from_secs(5)).unwrap();
}

/// keepalived's `use_vmac` against ours: each node's VIP lives on `vrrp.51`, a macvlan with
/// the virtual MAC (00:00:5e:00:01:33 for IPv4, 00:00:5e:00:02:33 for IPv6, keepalived's and
/// ours made the same way), so the client's neighbour entry never changes: keepalived master,
/// then ours after a hard failure, then keepalived again when it comes back and preempts.
fn use_vmac_with_keepalived(test: &str, params: VrrpParams, mac: [u8; 6]) {
    if !gate(test) {
        return;
    }
    let mut lab = VrrpLab::new(
        &unique_prefix("vmk"),
        &params,
        [Peer::Keepalived, Peer::Ours],
    )
    .unwrap();
    let v6 = mac[4] == 2;
    // As backup, ours sends nothing from the virtual MAC: its MLD reports (the VRRP group
    // and the link-local address's group, joined on vrrp.51) leave from its eth0's MAC.
    // (IPv4's IGMP reports for 224.0.0.18 are off by sysctl.)
    let from_vmac = lab
        .node(1)
        .capture_sent(HOST_IF, &format!("ether src {}", fmt_mac(&mac)))
        .unwrap();
    lab.start_both().unwrap();
    lab.wait_holder(0, Duration::from_secs(10)).unwrap();
    // (With vmac_xmit_base a backup's vrrp.51 has no address and joins no group: nothing
    // to report.)
    if v6 && !params.vmac_xmit_base {
        lb_tests::netns::wait_until(
            "ours to send MLD reports of vrrp.51 from its eth0",
            Duration::from_secs(5),
            || {
                lab.status_ours(1)
                    .is_ok_and(|s| s["vmac_mld"]["moved"].as_u64().unwrap_or(0) >= 2)
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs_for_error()));
    }
    let sent = from_vmac.stop().unwrap();
    assert!(
        sent.is_empty(),
        "ours, a backup, sent from the virtual MAC: {sent:#?}"
    );
    for i in 0..2 {
        assert_eq!(
            lab.node(i).mac("vrrp.51").unwrap(),
            mac,
            "node {i} ({})",
            lab.peer(i)
        );
    }
    lab.wait_client_follows(0, Duration::from_secs(5)).unwrap();
    assert_eq!(lab.client_vip_mac(), Some(mac));
    // keepalived dies: ours takes over, and answers at the same MAC. Its adverts leave from
    // the virtual MAC, or with vmac_xmit_base from its interface's.
    // (Seen from the client: tcpdump on ours's interface would make it promiscuous.)
    let ours = lab.advert_source(1).unwrap();
    let adverts = lab
        .client()
        .capture(
            HOST_IF,
            &format!("(ip proto 112 or ip6 proto 112) and src host {ours}"),
        )
        .unwrap();
    lab.kill(0).unwrap();
    let took = lab.wait_holder(1, Duration::from_secs(5)).unwrap();
    eprintln!("{test}: ours master {took:?} after keepalived was killed");
    adverts
        .wait_for("ours's adverts", Duration::from_secs(3), |l| l.len() >= 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let want = if params.vmac_xmit_base {
        lab.node(1).mac(HOST_IF).unwrap()
    } else {
        mac
    };
    let lines = adverts.stop().unwrap();
    assert!(
        lines
            .iter()
            .all(|l| l.split_whitespace().nth(1) == Some(fmt_mac(&want).as_str())),
        "adverts from {}: {lines:#?}",
        fmt_mac(&want)
    );
    assert_eq!(lab.client_vip_mac(), Some(mac), "nothing to relearn");
    let vip = params.vip.to_string();
    lb_tests::netns::wait_until("ours to answer the client", Duration::from_secs(5), || {
        lab.client()
            .exec(&["ping", "-c", "1", "-W", "1", &vip])
            .is_ok()
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs_for_error()));
    assert_eq!(lab.client_vip_mac(), Some(mac));
    // keepalived again: it preempts (150 > 100), and ours keeps its vrrp.51, holding
    // nothing.
    lab.start(0).unwrap();
    lab.wait_holder(0, Duration::from_secs(10)).unwrap();
    lb_tests::netns::wait_until(
        "keepalived to answer the client again",
        Duration::from_secs(5),
        || {
            lab.client()
                .exec(&["ping", "-c", "1", "-W", "1", &vip])
                .is_ok()
        },
    )
    .unwrap();
    assert_eq!(lab.client_vip_mac(), Some(mac));
    assert!(
        lab.node(1).mac("vrrp.51").is_ok(),
        "ours keeps its virtual MAC interface as backup"
    );
}

#[test]
fn use_vmac_with_keepalived_v4() {
    use_vmac_with_keepalived(
        "use_vmac_with_keepalived_v4",
        VrrpParams {
            use_vmac: true,
            ..VrrpParams::v3(100)
        },
        [0, 0, 0x5e, 0, 1, 51],
    );
}

#[test]
fn use_vmac_xmit_base_with_keepalived_v4() {
    use_vmac_with_keepalived(
        "use_vmac_xmit_base_with_keepalived_v4",
        VrrpParams {
            use_vmac: true,
            vmac_xmit_base: true,
            ..VrrpParams::v3(100)
        },
        [0, 0, 0x5e, 0, 1, 51],
    );
}

#[test]
fn use_vmac_xmit_base_with_keepalived_v6() {
    use_vmac_with_keepalived(
        "use_vmac_xmit_base_with_keepalived_v6",
        VrrpParams {
            use_vmac: true,
            vmac_xmit_base: true,
            ..VrrpParams::v3_ipv6(100)
        },
        [0, 0, 0x5e, 0, 2, 51],
    );
}

#[test]
fn use_vmac_with_keepalived_v6() {
    use_vmac_with_keepalived(
        "use_vmac_with_keepalived_v6",
        VrrpParams {
            use_vmac: true,
            ..VrrpParams::v3_ipv6(100)
        },
        [0, 0, 0x5e, 0, 2, 51],
    );
}
