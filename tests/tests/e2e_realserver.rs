//! `lb-daemon realserver start|stop|status` in network namespaces: what the seed's
//! `/etc/init.d/ipvsadm` script does (VIP on lo, arp_ignore=1, arp_announce=2 on lo and all),
//! idempotent, and undone exactly by `stop`.
use std::{net::Ipv4Addr, path::PathBuf};

use lb_tests::{
    lab::daemon_bin,
    netns::{require_lab, unique_prefix, wait_until, Lan, Netns, HOST_IF},
};

const VIP: &str = "192.0.2.100";

/// A state directory under /run for this test, removed on drop.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn realserver(ns: &Netns, args: &[&str]) -> String {
    let bin = daemon_bin().unwrap();
    let mut a = vec![bin.to_str().unwrap(), "realserver"];
    a.extend_from_slice(args);
    ns.exec(&a).unwrap_or_else(|e| panic!("{e:#}"))
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.exec(&["sysctl", "-n", key]).unwrap().trim().to_string()
}

const KEYS: [&str; 4] = [
    "net.ipv4.conf.lo.arp_ignore",
    "net.ipv4.conf.lo.arp_announce",
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
];

fn lo_has(ns: &Netns, addr: &str) -> bool {
    ns.ip(&["addr", "show", "dev", "lo"])
        .unwrap()
        .contains(&format!(" {addr}/"))
}

fn state_files(dir: &StateDir) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn realserver_start_is_the_seed_script_idempotent_and_undone_by_stop() {
    if !require_lab("realserver_start_is_the_seed_script_idempotent_and_undone_by_stop") {
        return;
    }
    let prefix = unique_prefix("rsv");
    let lan = Lan::new(&prefix).unwrap();
    let client = lan
        .host(
            "c",
            1,
            Ipv4Addr::new(192, 0, 2, 1),
            "2001:db8::1".parse().unwrap(),
        )
        .unwrap();
    let rs = lan
        .host(
            "rs",
            11,
            Ipv4Addr::new(192, 0, 2, 11),
            "2001:db8::11".parse().unwrap(),
        )
        .unwrap();
    let other = lan
        .host(
            "rs2",
            12,
            Ipv4Addr::new(192, 0, 2, 12),
            "2001:db8::12".parse().unwrap(),
        )
        .unwrap();
    let dir = StateDir(PathBuf::from(format!("/run/{prefix}state")));
    let state_dir = dir.0.to_str().unwrap().to_string();
    // A value that is not the default, to see that stop restores what was there.
    rs.sysctl("net.ipv4.conf.all.arp_announce", "1").unwrap();
    // An address the administrator put on lo before: start must not take it over.
    rs.ip(&["addr", "add", "198.51.100.7/32", "dev", "lo"])
        .unwrap();

    let out = realserver(
        &rs,
        &[
            "start",
            "--vip",
            VIP,
            "--vip",
            "2001:db8::100",
            "--vip",
            "198.51.100.7",
            "--state-dir",
            &state_dir,
        ],
    );
    eprintln!("start:\n{out}");
    assert!(out.contains("add 192.0.2.100/32 to lo"), "{out}");
    assert!(out.contains("add 2001:db8::100/128 to lo"), "{out}");
    assert!(!out.contains("198.51.100.7"), "{out}");
    let lo = rs.ip(&["addr", "show", "dev", "lo"]).unwrap();
    assert!(lo.contains("inet 192.0.2.100/32 scope global lo:0"), "{lo}");
    assert!(lo.contains("inet6 2001:db8::100/128"), "{lo}");
    let want = ["1", "2", "1", "2"];
    for (k, v) in KEYS.iter().zip(want) {
        assert_eq!(sysctl(&rs, k), v, "{k}");
    }
    let files = state_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let recorded = std::fs::read_to_string(&files[0]).unwrap();

    // Idempotent: nothing changes, the record (the values from before) stays.
    let again = realserver(&rs, &["start", "--vip", VIP, "--state-dir", &state_dir]);
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), recorded);
    let status = realserver(&rs, &["status", "--state-dir", &state_dir]);
    assert!(
        status.contains("192.0.2.100/32 on lo: present, added by start"),
        "{status}"
    );
    assert!(
        status.contains("198.51.100.7/32 on lo: present, was there before start"),
        "{status}"
    );
    assert!(
        status.contains("net.ipv4.conf.all.arp_announce = 2 (was 1)"),
        "{status}"
    );

    // What it is for: the real server accepts the VIP's packets but never answers ARP for it.
    let _ = client.exec(&["ping", "-c", "1", "-W", "1", VIP]);
    assert_eq!(
        client.neigh_mac(VIP).unwrap(),
        None,
        "the real server answered ARP for the VIP"
    );
    let rs_mac = rs.mac(HOST_IF).unwrap();
    let mac = lb_tests::netns::fmt_mac(&rs_mac);
    client
        .ip(&[
            "neigh",
            "replace",
            VIP,
            "lladdr",
            &mac,
            "dev",
            HOST_IF,
            "nud",
            "permanent",
        ])
        .unwrap();
    wait_until(
        "an echo reply from the VIP on the real server",
        std::time::Duration::from_secs(5),
        || client.exec(&["ping", "-c", "1", "-W", "1", VIP]).is_ok(),
    )
    .unwrap();

    // Another namespace gets a state file of its own.
    realserver(&other, &["start", "--vip", VIP, "--state-dir", &state_dir]);
    assert_eq!(state_files(&dir).len(), 2);
    assert!(lo_has(&other, VIP));

    // stop: exactly what start did is undone.
    let out = realserver(&rs, &["stop", "--state-dir", &state_dir]);
    eprintln!("stop:\n{out}");
    assert!(!lo_has(&rs, VIP));
    assert!(!lo_has(&rs, "2001:db8::100"));
    assert!(lo_has(&rs, "198.51.100.7"), "not start's to remove");
    for (k, v) in KEYS.iter().zip(["0", "0", "0", "1"]) {
        assert_eq!(sysctl(&rs, k), v, "{k} restored");
    }
    assert_eq!(state_files(&dir).len(), 1, "rs's state file removed");
    let out = realserver(&rs, &["stop", "--state-dir", &state_dir]);
    assert!(out.contains("nothing to undo"), "{out}");
    // The other namespace is untouched by rs's stop.
    assert!(lo_has(&other, VIP));
    assert_eq!(sysctl(&other, "net.ipv4.conf.all.arp_ignore"), "1");
    realserver(&other, &["stop", "--state-dir", &state_dir]);
    assert!(!lo_has(&other, VIP));
    assert!(state_files(&dir).is_empty());
    drop(lan);
}
