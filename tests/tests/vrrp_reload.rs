//! VRRP changes applied by a reload, in place, with keepalived (2.2.7 from Debian) as the
//! peer that would notice an election, `ip monitor address` on our node recording every
//! address the reloads add and remove, and the client watching every advert.
//!
//! Our daemon on node 0 (priority 150, VRRPv3, 1 s) is master; keepalived on node 1
//! (priority 100) is backup. Then, each by `lb-daemon reload`:
//!
//! 1. priority 150 -> 200 and a second VIP: the adverts carry 200 from the next one, the
//!    new address is added (and answers the client), the first one is never touched;
//! 2. the second VIP removed (and only it) and the interval halved: adverts every 0.5 s
//!    at once;
//! 3. a second instance (VRID 52, a third VIP) added: it starts, and with no peer for it
//!    becomes master; then removed: it releases its address;
//! 4. the second instance again, then both in a `vrrp_sync_group`: the two masters hand
//!    over to the group's unit, which resumes as master (no priority 0, no address moved);
//!    then the group dissolved with the second instance removed: the first resumes alone,
//!    the second releases its address;
//! 5. priority 200 -> 50, below keepalived's: keepalived preempts, by the protocol.
//!
//! Through 1-4: VI_1 never leaves MASTER (our log and status), never sends priority 0,
//! keepalived never becomes master, and the monitor never sees the first VIP deleted.
//! Step 5 is the one transition each side should make, and makes.
//!
//! Skips (with a printed reason) unless root with keepalived installed; `LB_REQUIRE_PRIVILEGED=1`
//! turns the skip into a failure. Needs `cargo build --release -p lb-daemon`.
use std::time::{Duration, Instant};

use lb_tests::{
    netns::{require_root, unique_prefix, wait_until, HOST_IF},
    vrrp_lab::{Peer, VrrpLab, VrrpParams, INSTANCE},
};

const VIP2: &str = "192.0.2.101";
const VIP3: &str = "192.0.2.102";

/// The second instance (VI_2, VRID 52, VIP3), if any.
#[derive(Clone, Copy, PartialEq)]
enum Second {
    None,
    Alone,
    /// In a `vrrp_sync_group` with VI_1.
    Grouped,
}

/// Our node's configuration: VI_1's `priority`, `advert_int` (text) and VIPs, and the
/// second instance.
fn ours(
    params: &VrrpParams,
    priority: u8,
    advert_int: &str,
    vips: &[&str],
    second: Second,
) -> String {
    let vips: Vec<String> = vips.iter().map(|v| format!("\"{v}/24\"")).collect();
    let mut c = format!(
        "[global_defs]\nrouter_id = \"node0\"\nvrrp_version = 3\n\n[[vrrp_instance]]\n\
         name = \"{INSTANCE}\"\nstate = \"BACKUP\"\ninterface = \"{HOST_IF}\"\n\
         virtual_router_id = {}\npriority = {priority}\nadvert_int = {advert_int}\n\
         virtual_ipaddress = [{}]\n",
        params.vrid,
        vips.join(", ")
    );
    if second != Second::None {
        c += &format!(
            "\n[[vrrp_instance]]\nname = \"VI_2\"\ninterface = \"{HOST_IF}\"\n\
             virtual_router_id = {}\npriority = 100\nadvert_int = 1\n\
             virtual_ipaddress = [\"{VIP3}/24\"]\n",
            params.vrid + 1
        );
    }
    if second == Second::Grouped {
        c += "\n[[vrrp_sync_group]]\nname = \"G\"\ngroup = [\"VI_1\", \"VI_2\"]\n";
    }
    c
}

/// Our status's entry for `instance`: (state, effective priority, transitions).
fn instance(lab: &VrrpLab, name: &str) -> Option<(String, u64, u64)> {
    let s = lab.status_ours(0).ok()?;
    let i = s["vrrp"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)?
        .clone();
    Some((
        i["state"].as_str()?.to_string(),
        i["effective_priority"].as_u64()?,
        i["transitions"].as_u64()?,
    ))
}

fn is_master(lab: &VrrpLab, name: &str) -> bool {
    instance(lab, name).is_some_and(|(s, _, _)| s == "MASTER")
}

#[test]
fn vrrp_changes_apply_in_place_without_an_election() {
    let test = "vrrp_changes_apply_in_place_without_an_election";
    if !(require_root(test) && lb_tests::vrrp_lab::require_keepalived(test)) {
        return;
    }
    let params = VrrpParams {
        master_hint: false,
        ..VrrpParams::v3(100)
    };
    let mut lab = VrrpLab::new(
        &unique_prefix("vr"),
        &params,
        [Peer::Ours, Peer::Keepalived],
    )
    .unwrap();
    let watch = lab.advert_watch().unwrap();
    let src = lab.advert_source(0).unwrap();
    lab.start_both().unwrap();
    lab.wait_holder(0, Duration::from_secs(10)).unwrap();
    lab.wait_client_follows(0, Duration::from_secs(5)).unwrap();
    let monitor = lab
        .node(0)
        .spawn(&["ip", "-o", "monitor", "address"])
        .unwrap();
    let vip1 = params.vip.to_string();
    let vip1 = vip1.as_str();
    let (state, _, transitions) = instance(&lab, INSTANCE).unwrap();
    assert_eq!(state, "MASTER");
    let started = Instant::now();
    let keepalived_masterships = || lab.keepalived_stats(1).unwrap().get("Became master");
    assert_eq!(keepalived_masterships(), 0, "{}", lab.logs_for_error());
    let deleted = |a: &str| {
        monitor
            .read_stdout()
            .lines()
            .any(|l| l.starts_with("Deleted") && l.contains(&format!(" {a}/")))
    };
    let added = |a: &str| {
        monitor
            .read_stdout()
            .lines()
            .any(|l| !l.starts_with("Deleted") && l.contains(&format!(" {a}/")))
    };
    let has_addr = |a: &str| {
        lab.node(0)
            .ip(&["-o", "addr", "show", "dev", HOST_IF])
            .unwrap_or_default()
            .contains(&format!(" {a}/"))
    };
    let ping = |a: &str| {
        lab.client()
            .command(&["ping", "-c", "1", "-W", "1", a])
            .output()
            .is_ok_and(|o| o.status.success())
    };

    // 1. A higher priority and a second VIP: the next advert (one goes at once) says so.
    let t = Instant::now();
    lab.reload_ours(0, &ours(&params, 200, "1", &[vip1, VIP2], Second::None))
        .unwrap();
    let a = watch
        .wait_for(
            "an advert with the new priority",
            t,
            Duration::from_secs(3),
            |a| a.src == src && a.priority == 200,
        )
        .unwrap();
    assert!(
        a.at - t < Duration::from_millis(500),
        "the new priority went out {:?} after the reload",
        a.at - t
    );
    wait_until("the new VIP on node 0", Duration::from_secs(5), || {
        has_addr(VIP2)
    })
    .unwrap();
    wait_until("the monitor to see it", Duration::from_secs(5), || {
        added(VIP2)
    })
    .unwrap();
    assert!(ping(VIP2), "the new VIP does not answer");
    assert_eq!(
        instance(&lab, INSTANCE).unwrap(),
        ("MASTER".into(), 200, transitions)
    );
    // The log is written by a thread of its own: it may follow the reload's answer.
    let logged = |line: &str| {
        wait_until(line, Duration::from_secs(5), || lab.log(0).contains(line))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log(0)))
    };
    logged("VRRP settings reloaded in place");

    // 2. The second VIP goes, the interval halves.
    let t = Instant::now();
    lab.reload_ours(0, &ours(&params, 200, "0.5", &[vip1], Second::None))
        .unwrap();
    wait_until("the VIP removed", Duration::from_secs(5), || {
        !has_addr(VIP2)
    })
    .unwrap();
    wait_until("the monitor to see it go", Duration::from_secs(5), || {
        deleted(VIP2)
    })
    .unwrap();
    let a = watch
        .wait_for("an advert of 0.5 s", t, Duration::from_secs(3), |a| {
            a.src == src && a.interval_cs == 50
        })
        .unwrap();
    let next = watch
        .wait_for("the next one", a.at, Duration::from_secs(2), |b| {
            b.src == src && b.vrid == params.vrid
        })
        .unwrap();
    let gap = next.at - a.at;
    assert!(
        gap > Duration::from_millis(400) && gap < Duration::from_millis(700),
        "adverts {gap:?} apart"
    );

    // 3. A second instance: it starts, and with no peer becomes master; then it goes.
    lab.reload_ours(0, &ours(&params, 200, "0.5", &[vip1], Second::Alone))
        .unwrap();
    wait_until("VI_2 master", Duration::from_secs(10), || {
        is_master(&lab, "VI_2") && has_addr(VIP3)
    })
    .unwrap();
    lab.reload_ours(0, &ours(&params, 200, "0.5", &[vip1], Second::None))
        .unwrap();
    wait_until("VI_2 gone", Duration::from_secs(5), || !has_addr(VIP3)).unwrap();
    assert!(deleted(VIP3));
    logged("VRRP instances removed");
    assert_eq!(
        instance(&lab, INSTANCE).unwrap(),
        ("MASTER".into(), 200, transitions)
    );

    // 4. VI_2 again, then both in a sync group: handed over, resumed.
    lab.reload_ours(0, &ours(&params, 200, "0.5", &[vip1], Second::Alone))
        .unwrap();
    wait_until("VI_2 master again", Duration::from_secs(10), || {
        is_master(&lab, "VI_2") && has_addr(VIP3)
    })
    .unwrap();
    let resumed = || lab.log(0).matches("resuming as master").count();
    let before = resumed();
    lab.reload_ours(0, &ours(&params, 200, "0.5", &[vip1], Second::Grouped))
        .unwrap();
    wait_until("the group resumed", Duration::from_secs(5), || {
        resumed() >= before + 2 && is_master(&lab, INSTANCE) && is_master(&lab, "VI_2")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log(0)));
    assert!(has_addr(vip1) && has_addr(VIP3));
    // Dissolved, VI_2 removed: VI_1 resumes alone, VI_2 releases.
    lab.reload_ours(0, &ours(&params, 200, "0.5", &[vip1], Second::None))
        .unwrap();
    wait_until("VI_2 released", Duration::from_secs(5), || !has_addr(VIP3)).unwrap();
    wait_until("VI_1 resumed alone", Duration::from_secs(5), || {
        resumed() >= before + 3 && is_master(&lab, INSTANCE)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.log(0)));
    assert!(ping(vip1));

    // Through all of it: VI_1 never left MASTER nor said priority 0, keepalived never took
    // over, its address never went.
    let log = lab.log(0);
    let left: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("VRRP state change") && l.contains(INSTANCE) && l.contains("from=MASTER")
        })
        .collect();
    assert!(left.is_empty(), "VI_1 left MASTER: {left:?}\n{log}");
    let zero: Vec<_> = watch
        .adverts()
        .into_iter()
        .filter(|a| a.at > started && a.src == src && a.vrid == params.vrid && a.priority == 0)
        .collect();
    assert!(zero.is_empty(), "VI_1 sent priority 0: {zero:?}");
    assert_eq!(keepalived_masterships(), 0, "{}", lab.logs_for_error());
    assert!(!deleted(vip1), "{}", monitor.read_stdout());

    // 5. Below keepalived's priority: keepalived preempts, by the protocol.
    lab.reload_ours(0, &ours(&params, 50, "0.5", &[vip1], Second::None))
        .unwrap();
    lab.wait_holder(1, Duration::from_secs(10)).unwrap();
    wait_until("ours backup", Duration::from_secs(5), || {
        instance(&lab, INSTANCE).is_some_and(|(s, p, _)| s == "BACKUP" && p == 50)
    })
    .unwrap();
    assert_eq!(keepalived_masterships(), 1, "{}", lab.logs_for_error());
    wait_until(
        "the monitor to see VI_1's VIP go",
        Duration::from_secs(5),
        || deleted(vip1),
    )
    .unwrap();
}
