//! VLAN tags that reach the load balancer beside the frame, not in it (issue 15, defect 4),
//! with `lb-daemon` in native and in skb mode.
//!
//! A NIC with rx-vlan offload hands the tag over as metadata; so does a Linux bridge, which
//! is how this test gets one (this kernel has no VLAN-filtering bridge and no 8021q, and
//! needs neither): the client sends a frame with its 802.1Q tag in it, the bridge port that
//! receives it moves the tag into the skb's metadata (`skb_vlan_untag`), and the LB's port,
//! a veth with tx-vlan offload, hands it to the LB's veth that way. What leaves the LB is
//! captured on that port (frames from the LB's MAC: what the bridge receives from it).
//!
//! Native mode used to forward such a frame untagged, onto the untagged network; it must
//! leave with `vlan 10` (the daemon runs `lb_native`, which reads the tag and puts it back),
//! and a QinQ frame must be passed. In skb mode the kernel keeps the tag on the skb and puts
//! it back on XDP_TX, so the frame leaves tagged too; there the program cannot see an
//! offloaded outer tag, so a QinQ frame is forwarded on its inner tag, with both tags kept
//! (the documented limit).
use std::{
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use lb_daemon::dataplane::devbound;
use lb_tests::{
    e2e_lab::status_json,
    lab::{daemon_bin, pass_on_port, start_daemon_resolving, with_control_socket, NativePeer},
    netns::{
        fmt_mac, require_lab, require_root, require_tools, unique_prefix, wait_until, Capture,
        DrLab, Netns, CLIENT_V4, HOST_IF, PRIVILEGED_ENV, VIP_V4,
    },
    packet::{ether, udp, Ipv4, ETH_P_IP},
};

const PORT: u16 = 9999;
const VLAN: u16 = 10;
const OUTER_VLAN: u16 = 100;

/// Native mode needs the kernel's VLAN-tag kfunc (Linux 6.8+); without it the daemon
/// refuses native mode on a veth, rightly.
fn require_vlan_kfunc(test: &str) -> bool {
    match devbound::vlan_tag_kfunc() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
                panic!("{test}: {e}, and {PRIVILEGED_ENV}=1 forbids skipping");
            }
            eprintln!("SKIP {test}: {e}; set {PRIVILEGED_ENV}=1 to make this a failure");
            false
        }
    }
}

fn server() -> String {
    lb_tests::netns::server_v4(1).to_string()
}

fn config(mode: &str, server: &str) -> String {
    format!(
        r#"[global_defs]
router_id = "vlan"

[dataplane]
interface = "eth0"
xdp_mode = "{mode}"
max_flows = 4096

[[virtual_server]]
ip = "{VIP_V4}"
port = {PORT}
protocol = "UDP"
lb_algo = "rr"
lb_kind = "DR"
static = true

  [[virtual_server.real_server]]
  ip = "{server}"
  port = {PORT}
  weight = 1
"#
    )
}

/// Sends `frame` as it is (tags and all) out of `eth0` of `ns`, through a raw packet socket.
fn send_frame(ns: &Netns, frame: &[u8]) -> Result<()> {
    let ifindex = ns.ifindex(HOST_IF)?;
    let frame = frame.to_vec();
    ns.run_in(move || -> Result<()> {
        // A socket of protocol 0 receives nothing: it only sends.
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below address eth0.
        let mut to: libc::sockaddr_ll = unsafe { zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        // The frame's own (outer) ethertype, in network order, as the field wants it.
        to.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
        // SAFETY: sendto with a buffer and an address of the sizes passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n != frame.len() as isize {
            return Err(std::io::Error::last_os_error()).context("sendto(AF_PACKET)");
        }
        Ok(())
    })?
}

/// `frame` with a tag (TPID, TCI) inserted after its MACs.
fn with_tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

/// A UDP datagram from the client to the VIP, untagged, from source port `sport`.
fn datagram(lab: &DrLab, sport: u16) -> Result<Vec<u8>> {
    let ip = Ipv4::new(CLIENT_V4, VIP_V4, 17);
    let d = udp(ip.addrs(), sport, PORT, b"vlan test");
    Ok(ether(
        lab.lb_mac()?,
        lab.client_mac()?,
        None,
        ETH_P_IP,
        &ip.build(&d),
    ))
}

/// How tcpdump names the client's datagram from `sport`.
fn marker(sport: u16) -> String {
    format!("{CLIENT_V4}.{sport} > {VIP_V4}.{PORT}")
}

/// Sends `frame` (again every half second) until the LB forwards it, within 10 s; returns
/// tcpdump's line for it.
fn forwarded(lab: &DrLab, cap: &Capture, frame: &[u8], sport: u16) -> Result<String> {
    let m = marker(sport);
    for _ in 0..20 {
        send_frame(lab.client(), frame)?;
        if let Ok(lines) = cap.wait_for(&m, Duration::from_millis(500), |l| {
            l.iter().any(|l| l.contains(&m))
        }) {
            return Ok(lines
                .into_iter()
                .find(|l| l.contains(&m))
                .unwrap_or_default());
        }
    }
    bail!(
        "the LB never forwarded the datagram from port {sport}; captured:\n{}",
        cap.lines().join("\n")
    )
}

/// Packets the program counted for `reason` (`lb-daemon status --json`).
fn reason_packets(lab: &DrLab, reason: &str) -> u64 {
    let status = status_json(lab.lb()).expect("lb-daemon status");
    status["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == reason))
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

/// The lab (one real server) for `mode`, and a capture of what leaves the LB; `None` when
/// the test is skipped.
fn lab(test: &str, mode: &str) -> Option<(DrLab, Option<NativePeer>, Capture)> {
    if !require_lab(test) || (mode == "native" && !require_vlan_kfunc(test)) {
        return None;
    }
    let lab = DrLab::new(&unique_prefix("vl"), 1).expect("lab");
    // br_netfilter (loaded on some hosts) must not take these frames through the IP layer. Without the
    // module the keys do not exist, and there is nothing to turn off.
    let _ = lab.bridge().sysctls(&[
        ("net.bridge.bridge-nf-call-iptables", "0"),
        ("net.bridge.bridge-nf-call-ip6tables", "0"),
        ("net.bridge.bridge-nf-call-arptables", "0"),
    ]);
    // Native XDP_TX on a veth needs an XDP program on its peer.
    let peer = (mode == "native").then(|| pass_on_port(lab.bridge(), "to-lb").expect("peer"));
    let lb_mac = fmt_mac(&lab.lb_mac().unwrap());
    let cap = lab
        .bridge()
        .capture("to-lb", &format!("ether src {lb_mac}"))
        .unwrap();
    Some((lab, peer, cap))
}

/// Sends a datagram of VLAN 10 from `sport` and checks it reaches the real server with its
/// tag; returns tcpdump's line.
fn tag_kept(lab: &DrLab, cap: &Capture, what: &str, sport: u16) -> String {
    let lb_mac = fmt_mac(&lab.lb_mac().unwrap());
    let rs_mac = fmt_mac(&lab.server_macs().unwrap()[0]);
    let tagged = with_tag(&datagram(lab, sport).unwrap(), 0x8100, VLAN);
    let line = forwarded(lab, cap, &tagged, sport).unwrap_or_else(|e| panic!("{e:#}"));
    println!("{what}, VLAN {VLAN}: {line}");
    assert!(
        line.contains(&format!("{lb_mac} > {rs_mac}")),
        "{what}: not to the real server: {line}"
    );
    assert!(
        line.contains(&format!("vlan {VLAN},")) && line.contains("802.1Q (0x8100)"),
        "{what}: a frame of VLAN {VLAN} left the LB without its tag: {line}"
    );
    line
}

fn vlan_through_a_bridge(mode: &str) {
    let Some((lab, _peer, cap)) = lab(&format!("vlan_through_a_bridge_{mode}"), mode) else {
        return;
    };
    let (daemon, _) = start_daemon_resolving(&lab, &config(mode, &server()), mode, 1)
        .unwrap_or_else(|e| panic!("{e:#}"));

    // One tag, taken off on the way: forwarded to the real server with it.
    tag_kept(&lab, &cap, mode, 41000);

    // No tag: it stays untagged.
    let plain = datagram(&lab, 41001).unwrap();
    let line = forwarded(&lab, &cap, &plain, 41001).unwrap_or_else(|e| panic!("{e:#}"));
    println!("{mode}, untagged: {line}");
    assert!(
        !line.contains("vlan") && line.contains("ethertype IPv4"),
        "{mode}: an untagged frame left tagged: {line}"
    );

    // QinQ: 802.1ad 100 outside (taken off on the way), 802.1Q 10 inside.
    let qinq = with_tag(
        &with_tag(&datagram(&lab, 41002).unwrap(), 0x8100, VLAN),
        0x88a8,
        OUTER_VLAN,
    );
    if mode == "native" {
        let before = reason_packets(&lab, "pass_unsupported");
        let mut sent = 0;
        wait_until(
            "the QinQ frame counted as pass_unsupported",
            Duration::from_secs(10),
            || {
                if sent % 25 == 0 {
                    send_frame(lab.client(), &qinq).unwrap();
                }
                sent += 1;
                reason_packets(&lab, "pass_unsupported") > before
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}; captured:\n{}", cap.lines().join("\n")));
        // What the LB sends, it sends in order: once a datagram sent after the QinQ frame
        // is out, the QinQ frame would be too.
        let after = with_tag(&datagram(&lab, 41003).unwrap(), 0x8100, VLAN);
        forwarded(&lab, &cap, &after, 41003).unwrap_or_else(|e| panic!("{e:#}"));
        let leaked: Vec<String> = cap
            .lines()
            .into_iter()
            .filter(|l| l.contains(&marker(41002)))
            .collect();
        assert!(leaked.is_empty(), "{mode}: QinQ forwarded: {leaked:?}");
        println!("{mode}, QinQ: passed (pass_unsupported), nothing left the LB");
    } else {
        let line = forwarded(&lab, &cap, &qinq, 41002).unwrap_or_else(|e| panic!("{e:#}"));
        println!("{mode}, QinQ: {line}");
        assert!(
            line.contains(&format!("vlan {OUTER_VLAN},"))
                && line.contains(&format!("vlan {VLAN},")),
            "{mode}: a QinQ frame lost a tag: {line}"
        );
    }
    let program = if mode == "native" { "lb_native" } else { "lb" };
    assert!(
        daemon
            .read_stderr()
            .contains(&format!("program=\"{program}\"")),
        "{mode} mode must run {program}:\n{}",
        daemon.read_stderr()
    );
    assert_eq!(
        reason_packets(&lab, "pass_vlan_unknown"),
        0,
        "{mode}: every tag was readable"
    );
    cap.stop().unwrap();
}

#[test]
fn vlan_through_a_bridge_native() {
    vlan_through_a_bridge("native");
}

#[test]
fn vlan_through_a_bridge_skb() {
    vlan_through_a_bridge("skb");
}

/// `keep_xdp_on_exit` in native mode: `lb_native`, which the daemon loads itself (not aya),
/// stays attached through the interface's netlink attachment and keeps tags while no
/// daemon runs; the next run replaces it in one step, and a run without the option
/// detaches on stop.
#[test]
fn native_keep_xdp_on_exit_keeps_tags_without_the_daemon() {
    let mode = "native";
    let Some((lab, _peer, cap)) = lab(
        "native_keep_xdp_on_exit_keeps_tags_without_the_daemon",
        mode,
    ) else {
        return;
    };
    let plain = config(mode, &server());
    let keep = plain.replace("[dataplane]\n", "[dataplane]\nkeep_xdp_on_exit = true\n");
    let attached = || {
        let link = lab.lb().ip(&["link", "show", "dev", "eth0"]).unwrap();
        (link.contains("prog/xdp") && !link.contains("xdpgeneric")).then_some(link)
    };
    let stop = |daemon: &lb_tests::netns::Proc| {
        daemon.signal(libc::SIGTERM).unwrap();
        let status = daemon
            .wait_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("daemon exits");
        assert!(status.success(), "{}", daemon.read_stderr());
    };

    let (daemon, _) =
        start_daemon_resolving(&lab, &keep, mode, 1).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(daemon.read_stderr().contains("program=\"lb_native\""));
    tag_kept(&lab, &cap, "first run", 42000);
    stop(&daemon);
    assert!(daemon
        .read_stderr()
        .contains("leaving the XDP program attached"));
    let link = attached().expect("lb_native stays attached in native mode");
    println!(
        "daemon stopped: {}",
        link.lines().last().unwrap_or_default().trim()
    );
    // No daemon: the program alone still forwards, tags and all.
    tag_kept(&lab, &cap, "daemon stopped", 42001);

    // The next run, without the option, takes the program over, and detaches on stop.
    let (daemon, _) =
        start_daemon_resolving(&lab, &plain, mode, 1).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        daemon
            .read_stderr()
            .contains("replacing the XDP program a previous run left attached"),
        "{}",
        daemon.read_stderr()
    );
    tag_kept(&lab, &cap, "second run", 42002);
    stop(&daemon);
    assert_eq!(attached(), None, "nothing left attached");
    cap.stop().unwrap();
}

/// What the daemon learns of real devices (ethtool, netdev netlink) and what native mode
/// then runs: a veth offloads tags and gives them back (`lb_native`); a tap never takes a
/// tag off (`lb`).
#[test]
fn native_mode_choice_on_veth_and_tap() {
    let test = "native_mode_choice_on_veth_and_tap";
    if !require_root(test) || !require_tools(test, &["ip", "ethtool"]) || !require_vlan_kfunc(test)
    {
        return;
    }
    let ns = Netns::new(&format!("{}n", unique_prefix("vc"))).expect("namespace");
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        .unwrap();
    ns.ip(&["tuntap", "add", "mode", "tap", "name", "tap0"])
        .unwrap();
    let facts = |dev: &str| {
        let ifindex = ns.ifindex(dev).unwrap();
        let dev = dev.to_string();
        ns.run_in(move || devbound::tag_facts(&dev, ifindex, &[]))
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let veth = facts("v0");
    assert_eq!(
        veth,
        devbound::TagFacts {
            rx_metadata_vlan: true,
            device: devbound::DeviceTags {
                ctag_rx: true,
                stag_rx: true,
                veth: true
            },
            ports: Vec::new(),
        }
    );
    assert_eq!(devbound::choose("v0", &veth), devbound::Choice::DevBound);
    // Its own rx offloads off, a veth still passes on what its peer offloaded.
    ns.exec(&[
        "ethtool",
        "-K",
        "v0",
        "rxvlan",
        "off",
        "rx-vlan-stag-hw-parse",
        "off",
    ])
    .unwrap();
    let veth = facts("v0");
    let d = veth.device;
    assert!(!d.ctag_rx && !d.stag_rx && d.veth, "{veth:?}");
    let without_metadata = devbound::TagFacts {
        rx_metadata_vlan: false,
        ..veth
    };
    assert!(matches!(
        devbound::choose("v0", &without_metadata),
        devbound::Choice::Refuse(_)
    ));
    let tap = facts("tap0");
    assert_eq!(tap, devbound::TagFacts::default(), "tap0");
    assert_eq!(devbound::choose("tap0", &tap), devbound::Choice::Plain);
}

/// Where native mode cannot keep every tag, `auto` takes skb mode and says why, and
/// `native` does not start. A Linux bridge makes the case here (as a bond whose ports strip
/// tags would; this kernel has no bonding): its ports are veths, which pass on offloaded
/// tags, and nothing gives those back to a program on the bridge.
#[test]
fn auto_takes_skb_mode_where_native_would_lose_tags() {
    let test = "auto_takes_skb_mode_where_native_would_lose_tags";
    if !require_lab(test) {
        return;
    }
    let lab = DrLab::new(&unique_prefix("vb"), 1).expect("lab");
    let br = lab.bridge();
    br.ip(&["addr", "add", "192.0.2.250/24", "dev", "br0"])
        .unwrap();
    let bin = daemon_bin().unwrap();
    let run = |mode: &str| {
        let cfg = br.dir().join(format!("{mode}.toml"));
        let config = config(mode, &server()).replace("interface = \"eth0\"", "interface = \"br0\"");
        std::fs::write(&cfg, with_control_socket(&config, br.dir())).unwrap();
        br.spawn(&[
            bin.to_str().unwrap(),
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .unwrap()
    };
    let refused = "native XDP refused: br0 may deliver VLAN tags outside the frame";

    let daemon = run("auto");
    wait_until("lb-daemon to attach", Duration::from_secs(30), || {
        !daemon.is_running() || daemon.read_stderr().contains("XDP program attached")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.read_stderr()));
    let log = daemon.read_stderr();
    println!(
        "{}",
        log.lines()
            .find(|l| l.contains(refused))
            .unwrap_or_default()
    );
    assert!(log.contains(refused), "{log}");
    assert!(log.contains("(ports to-"), "the bridge's ports: {log}");
    assert!(
        log.contains("mode=\"skb\""),
        "auto must take skb mode: {log}"
    );
    daemon.signal(libc::SIGTERM).unwrap();
    daemon.wait_timeout(Duration::from_secs(10)).unwrap();

    let daemon = run("native");
    let status = daemon
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("native mode must not start");
    let log = daemon.read_stderr();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("native mode refused: br0 may deliver VLAN tags"),
        "{log}"
    );
    assert!(!log.contains("XDP program attached"), "{log}");
}
