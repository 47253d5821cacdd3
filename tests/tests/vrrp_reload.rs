//! VRRP changes applied by a reload, in place, with keepalived (2.2.7 from Debian) as the
//! peer that would notice an election, and `ip monitor address` on our node recording every
//! address the reloads add and remove.
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
//! 4. priority 150 -> 50, below keepalived's: keepalived preempts, by the protocol.
//!
//! Through 1-3: no state change in our log or status, keepalived never became master, and
//! the monitor never saw the first VIP deleted. Step 4 is the one transition each side
//! should make, and makes.
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

/// Our node's configuration: `priority`, `advert_int` (text), the VIPs of VI_1, and
/// optionally a second instance with VIP3.
fn ours(
    params: &VrrpParams,
    priority: u8,
    advert_int: &str,
    vips: &[String],
    second: bool,
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
    if second {
        c += &format!(
            "\n[[vrrp_instance]]\nname = \"VI_2\"\ninterface = \"{HOST_IF}\"\n\
             virtual_router_id = {}\npriority = 100\nadvert_int = 1\n\
             virtual_ipaddress = [\"{VIP3}/24\"]\n",
            params.vrid + 1
        );
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
    let (state, _, transitions) = instance(&lab, INSTANCE).unwrap();
    assert_eq!(state, "MASTER");
    let our_changes = lab.ours_transitions(0).len();
    let keepalived_masterships = || lab.keepalived_stats(1).unwrap().get("Became master");
    assert_eq!(keepalived_masterships(), 0, "{}", lab.logs_for_error());
    let monitored = |what: &str| monitor.read_stdout().lines().any(|l| l.contains(what));
    let has_addr = |a: &str| {
        lab.node(0)
            .ip(&["-o", "addr", "show", "dev", HOST_IF])
            .unwrap_or_default()
            .contains(&format!(" {a}/"))
    };

    // 1. A higher priority and a second VIP.
    let t = Instant::now();
    lab.reload_ours(
        0,
        &ours(&params, 200, "1", &[vip1.clone(), VIP2.into()], false),
    )
    .unwrap();
    watch
        .wait_for(
            "an advert with the new priority",
            t,
            Duration::from_secs(3),
            |a| a.src == src && a.priority == 200,
        )
        .unwrap();
    wait_until("the new VIP on node 0", Duration::from_secs(5), || {
        has_addr(VIP2)
    })
    .unwrap();
    wait_until("the monitor to see it", Duration::from_secs(5), || {
        monitored(VIP2)
    })
    .unwrap();
    let ping = |a: &str| {
        lab.client()
            .command(&["ping", "-c", "1", "-W", "1", a])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(ping(VIP2), "the new VIP does not answer");
    assert_eq!(
        instance(&lab, INSTANCE).unwrap(),
        ("MASTER".into(), 200, transitions)
    );

    // 2. The second VIP goes, the interval halves.
    let t = Instant::now();
    lab.reload_ours(
        0,
        &ours(&params, 200, "0.5", std::slice::from_ref(&vip1), false),
    )
    .unwrap();
    wait_until("the VIP removed", Duration::from_secs(5), || {
        !has_addr(VIP2)
    })
    .unwrap();
    wait_until("the monitor to see it go", Duration::from_secs(5), || {
        monitor
            .read_stdout()
            .lines()
            .any(|l| l.starts_with("Deleted") && l.contains(VIP2))
    })
    .unwrap();
    let a = watch
        .wait_for("two adverts 0.5 s apart", t, Duration::from_secs(3), |a| {
            a.src == src && a.interval_cs == 50
        })
        .unwrap();
    let next = watch
        .wait_for("the next one", a.at, Duration::from_secs(2), |b| {
            b.src == src
        })
        .unwrap();
    let gap = next.at - a.at;
    assert!(
        gap > Duration::from_millis(400) && gap < Duration::from_millis(700),
        "adverts {gap:?} apart"
    );

    // 3. A second instance: it starts, and with no peer becomes master; then it goes.
    lab.reload_ours(
        0,
        &ours(&params, 200, "0.5", std::slice::from_ref(&vip1), true),
    )
    .unwrap();
    wait_until("VI_2 master", Duration::from_secs(10), || {
        instance(&lab, "VI_2").is_some_and(|(s, _, _)| s == "MASTER") && has_addr(VIP3)
    })
    .unwrap();
    lab.reload_ours(
        0,
        &ours(&params, 200, "0.5", std::slice::from_ref(&vip1), false),
    )
    .unwrap();
    wait_until("VI_2 gone", Duration::from_secs(5), || {
        !has_addr(VIP3) && instance(&lab, "VI_2").is_none()
    })
    .unwrap();
    assert!(monitored(VIP3));

    // Through all of it: no state change of VI_1, no election.
    let log = lab.log(0);
    let vi1_changes = lab.ours_transitions(0).len() - our_changes;
    // VI_2's own: Initialize -> Backup -> Master, and its stop.
    let vi2_changes = log
        .lines()
        .filter(|l| l.contains("VRRP state change") && l.contains("VI_2"))
        .count();
    assert_eq!(vi1_changes - vi2_changes, 0, "VI_1 changed state:\n{log}");
    assert_eq!(
        instance(&lab, INSTANCE).unwrap(),
        ("MASTER".into(), 200, transitions)
    );
    assert_eq!(keepalived_masterships(), 0, "{}", lab.logs_for_error());
    let deleted_vip1 = monitor
        .read_stdout()
        .lines()
        .filter(|l| l.starts_with("Deleted") && l.contains(&format!(" {vip1}/")))
        .map(String::from)
        .collect::<Vec<_>>();
    assert!(deleted_vip1.is_empty(), "{deleted_vip1:?}");
    assert!(ping(&vip1));
    assert!(log.contains("VRRP settings reloaded in place"), "{log}");

    // 4. Below keepalived's priority: keepalived preempts, by the protocol.
    lab.reload_ours(
        0,
        &ours(&params, 50, "0.5", std::slice::from_ref(&vip1), false),
    )
    .unwrap();
    lab.wait_holder(1, Duration::from_secs(10)).unwrap();
    wait_until("ours backup", Duration::from_secs(5), || {
        instance(&lab, INSTANCE).is_some_and(|(s, p, _)| s == "BACKUP" && p == 50)
    })
    .unwrap();
    assert_eq!(keepalived_masterships(), 1, "{}", lab.logs_for_error());
    assert!(monitor
        .read_stdout()
        .lines()
        .any(|l| l.starts_with("Deleted") && l.contains(&format!(" {vip1}/"))));
}
