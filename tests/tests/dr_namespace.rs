//! Direct routing end to end, in namespaces, with real peers: a client, `lb-daemon` with its
//! XDP program on the LB's veth, and three nginx real servers that hold the VIP on `lo`
//! (the seed's arp_ignore/arp_announce set-up). Runs in skb and in native XDP mode.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use lb_tests::{
    netns::{fmt_mac, require_lab, unique_prefix, wait_until, DrLab, Proc},
    xdp::{load_testprog, xdp_of},
};

/// The daemon binary, built by `cargo xtask test` next to the test binaries' directory.
fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LB_DAEMON_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<this test> -> target/<profile>/lb-daemon
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("lb-daemon");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release -p lb-daemon` (cargo xtask test does)",
        bin.display()
    );
    bin
}

fn config(mode: &str, weights: [u32; 3]) -> String {
    let mut c = format!(
        "[global_defs]\nrouter_id = \"dr-test\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"{mode}\"\nmax_flows = 65536\n"
    );
    let (algo, _) = if weights == [1, 1, 1] {
        ("rr", 0)
    } else {
        ("wrr", 0)
    };
    for (vip, servers) in [
        ("192.0.2.100", ["192.0.2.11", "192.0.2.12", "192.0.2.13"]),
        (
            "2001:db8::100",
            ["2001:db8::11", "2001:db8::12", "2001:db8::13"],
        ),
    ] {
        c += &format!(
            "\n[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\nlb_algo = \"{algo}\"\nlb_kind = \"DR\"\nstatic = true\n"
        );
        for (s, w) in servers.iter().zip(weights) {
            c += &format!(
                "  [[virtual_server.real_server]]\n  ip = \"{s}\"\n  port = 80\n  weight = {w}\n"
            );
        }
    }
    c
}

fn counts(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b.trim().to_string()).or_insert(0) += 1;
    }
    m
}

/// Each backend's count is its weight's share of `n`, give or take one per CPU: the rr
/// position is per CPU, and the veth may hand flows to either CPU.
fn assert_shares(what: &str, got: &BTreeMap<String, usize>, weights: [u32; 3], n: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    let total: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let name = format!("rs{}", i + 1);
        let want = n * *w as usize / total as usize;
        let have = got.get(&name).copied().unwrap_or(0);
        assert!(
            have.abs_diff(want) <= cpus,
            "{what}: {name} served {have}, its share is {want} (counts {got:?})"
        );
    }
}

fn dr_end_to_end(mode: &str) {
    let test = format!("dr_end_to_end_{mode}");
    if !require_lab(&test) {
        return;
    }
    let lab = DrLab::new(&unique_prefix("dr"), 3).expect("lab");
    // What VRRP will do: the master holds the VIP, so it answers ARP/ND for it.
    lab.add_vip_to_lb().unwrap();

    // Native XDP on veth (shared/LAB.md): the bridge-side peer needs an XDP program, and
    // the senders' checksum offload must be off.
    let _peer_prog = (mode == "native").then(|| {
        lab.set_tx_offload_off().unwrap();
        let ifindex = lab.lb_peer_ifindex().unwrap();
        lab.bridge()
            .run_in(move || {
                let mut ebpf = load_testprog("pass").unwrap();
                let link = xdp_of(&mut ebpf, "pass")
                    .unwrap()
                    .attach_to_if_index(ifindex, aya::programs::XdpMode::Driver)
                    .unwrap();
                (ebpf, link)
            })
            .unwrap()
    });

    let cfg = lab.lb().dir().join("lb.toml");
    std::fs::write(&cfg, config(mode, [1, 1, 1])).unwrap();
    let bin = daemon_bin();
    let daemon: Proc = lab
        .lb()
        .spawn(&[
            bin.to_str().unwrap(),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .unwrap();
    let attached = format!("mode=\"{mode}\"");
    wait_until(
        "the daemon attaches and resolves the 6 backends",
        Duration::from_secs(20),
        || {
            let log = daemon.read_stderr();
            assert!(daemon.is_running(), "lb-daemon exited:\n{log}");
            log.contains(&attached) && log.matches("backend MAC resolved").count() >= 6
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));

    // Replies must come straight from the real servers: capture them at the client.
    let capture = lab
        .capture(lab.client(), "eth0", "tcp src port 80")
        .unwrap();
    let bodies = lab
        .curl_batch("192.0.2.100", 300)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    assert_eq!(bodies.len(), 300);
    assert_shares("rr over IPv4", &counts(&bodies), [1, 1, 1], 300);
    let bodies6 = lab.curl_batch("2001:db8::100", 60).unwrap();
    assert_shares("rr over IPv6", &counts(&bodies6), [1, 1, 1], 60);
    let lines = capture.stop().unwrap();

    let lb_mac = fmt_mac(&lab.lb_mac().unwrap());
    let server_macs: Vec<String> = lab.server_macs().unwrap().iter().map(fmt_mac).collect();
    let replies: Vec<&String> = lines.iter().filter(|l| l.contains(" > ")).collect();
    assert!(
        replies.len() >= 360,
        "captured {} reply frames",
        replies.len()
    );
    for l in &replies {
        let src = l.split_whitespace().nth(1).unwrap_or("");
        assert!(
            server_macs.iter().any(|m| m == src),
            "reply not from a real server: {l}"
        );
        assert_ne!(src, lb_mac, "reply through the LB: {l}");
    }

    // wrr after a SIGHUP reload: shares follow weights 1:2:3.
    std::fs::write(&cfg, config(mode, [1, 2, 3])).unwrap();
    daemon.signal(libc::SIGHUP).unwrap();
    wait_until("the reload", Duration::from_secs(10), || {
        daemon.read_stderr().contains("configuration reloaded")
    })
    .unwrap();
    let bodies = lab.curl_batch("192.0.2.100", 300).unwrap();
    assert_shares("wrr 1:2:3 over IPv4", &counts(&bodies), [1, 2, 3], 300);

    // SIGTERM detaches the program: the LB's own stack answers for the VIP again.
    daemon.signal(libc::SIGTERM).unwrap();
    let status = daemon
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("daemon exits");
    assert!(
        status.success(),
        "lb-daemon exit: {status}\n{}",
        daemon.read_stderr()
    );
    let out = lab.lb().ip(&["link", "show", "dev", "eth0"]).unwrap();
    assert!(!out.contains("xdp"), "XDP still attached after exit: {out}");
}

#[test]
fn dr_end_to_end_skb() {
    dr_end_to_end("skb");
}

#[test]
fn dr_end_to_end_native() {
    dr_end_to_end("native");
}
