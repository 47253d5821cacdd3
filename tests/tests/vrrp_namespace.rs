//! VRRP between two of our daemons on a bridge, with a client, in namespaces: election by
//! priority, hard failure (SIGKILL), graceful stop (SIGTERM, priority 0), the leftover VIP of
//! a crashed run, and the client's neighbour entry following the master.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use lb_tests::{
    lab::daemon_bin,
    netns::{require_root, unique_prefix, wait_until, Lan, Netns, Proc},
};

const VIP: &str = "192.0.2.100";

struct Pair {
    lan: Lan,
    client: Netns,
    nodes: Vec<Netns>,
}

fn pair(tag: &str) -> Pair {
    let lan = Lan::new(&unique_prefix(tag)).unwrap();
    let client = lan.host("c", 1, Ipv4Addr::new(192, 0, 2, 1), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)).unwrap();
    let nodes = (1..=2u8)
        .map(|i| lan.host(&format!("n{i}"), 1 + i, Ipv4Addr::new(192, 0, 2, 1 + i), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + u16::from(i))).unwrap())
        .collect();
    Pair { lan, client, nodes }
}

fn config(name: &str, priority: u8, advert_int: &str, extra: &str) -> String {
    format!(
        r#"[global_defs]
router_id = "{name}"
vrrp_version = 3

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = {priority}
advert_int = {advert_int}
virtual_ipaddress = ["{VIP}/24"]
{extra}
"#
    )
}

fn start(node: &Netns, config: &str) -> Proc {
    let path = node.dir().join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let bin = daemon_bin().unwrap();
    node.spawn(&[bin.to_str().unwrap(), "run", "--config", path.to_str().unwrap()]).unwrap()
}

fn has_vip(node: &Netns) -> bool {
    node.ip(&["-4", "addr", "show", "dev", "eth0"]).is_ok_and(|o| o.contains(&format!("{VIP}/")))
}

fn wait_master(p: &Pair, i: usize, within: Duration, daemons: &[&Proc]) -> Duration {
    let t = Instant::now();
    let other = 1 - i;
    wait_until(&format!("n{} to hold the VIP alone", i + 1), within, || {
        has_vip(&p.nodes[i]) && !has_vip(&p.nodes[other])
    })
    .unwrap_or_else(|e| {
        let logs: Vec<String> = daemons.iter().map(|d| d.read_stderr()).collect();
        panic!("{e:#}\n{}", logs.join("\n----\n"))
    });
    t.elapsed()
}

/// The client's neighbour entry for the VIP points at node `i` (after a ping refreshes it).
fn client_follows(p: &Pair, i: usize) {
    let mac = p.nodes[i].mac("eth0").unwrap();
    wait_until("the client's neighbour entry to follow the master", Duration::from_secs(5), || {
        let _ = p.client.exec(&["ping", "-c", "1", "-W", "1", VIP]);
        p.client.neigh_mac(VIP).ok().flatten() == Some(mac)
    })
    .unwrap();
}

#[test]
fn election_hard_failure_leftover_vip_and_graceful_stop() {
    if !require_root("vrrp election") {
        return;
    }
    let p = pair("vr");
    // v3, 100 ms adverts: Master_Down_Interval of the backup (priority 100) is
    // 3 x 100 ms + (256 - 100) / 256 x 100 ms = 361 ms; its skew is 61 ms.
    let c1 = config("n1", 150, "0.1", "");
    let c2 = config("n2", 100, "0.1", "");
    let d1 = start(&p.nodes[0], &c1);
    let d2 = start(&p.nodes[1], &c2);
    wait_master(&p, 0, Duration::from_secs(5), &[&d1, &d2]);
    client_follows(&p, 0);

    // Hard failure: the backup takes over within Master_Down_Interval (plus a margin for
    // process start-up of nothing: it is already running) and the client follows it.
    d1.kill().unwrap();
    let t = Instant::now();
    wait_until("n2 to take the VIP", Duration::from_secs(3), || has_vip(&p.nodes[1])).unwrap();
    let took = t.elapsed();
    eprintln!("hard failure: n2 holds the VIP {took:?} after the SIGKILL");
    assert!(took < Duration::from_millis(361 + 250), "takeover after {took:?}");
    client_follows(&p, 1);

    // The killed daemon left its VIP configured; a new run removes it before advertising,
    // then preempts (150 > 100).
    assert!(has_vip(&p.nodes[0]), "a SIGKILLed run leaves its address behind");
    let d1 = start(&p.nodes[0], &c1);
    wait_master(&p, 0, Duration::from_secs(5), &[&d1, &d2]);
    assert!(d1.read_stderr().contains("left behind by an earlier run"), "{}", d1.read_stderr());
    client_follows(&p, 0);

    // Graceful stop: a priority-0 advert, the backup takes over after its skew time.
    d1.signal(libc::SIGTERM).unwrap();
    let t = Instant::now();
    wait_until("n2 to take the VIP after SIGTERM", Duration::from_secs(3), || has_vip(&p.nodes[1])).unwrap();
    let took = t.elapsed();
    eprintln!("graceful stop: n2 holds the VIP {took:?} after the SIGTERM");
    assert!(took < Duration::from_millis(61 + 250), "graceful takeover after {took:?}");
    let st = d1.wait_timeout(Duration::from_secs(5)).unwrap().expect("exits");
    assert!(st.success(), "{}", d1.read_stderr());
    assert!(!has_vip(&p.nodes[0]), "a stopped daemon releases its VIP");
    drop(p.lan);
}
