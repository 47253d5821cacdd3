//! The XDP program on exact bytes: every case is a frame in, a verdict, the exact frame out
//! and the reason counter it must bump, run through BPF_PROG_TEST_RUN on the real object with
//! maps written by the daemon's planner.
//!
//! Frames shorter than an Ethernet header cannot be tested this way: the kernel refuses
//! BPF_PROG_TEST_RUN input below ETH_HLEN (14 bytes) before the program runs.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lb_common::conn_state;
use lb_common::reason::{self, *};
use lb_daemon::{
    dataplane::{BackendSpec, ServiceSpec},
    model::{Forward, Proto, Scheduler},
};
use lb_tests::{
    netns::require_root,
    packet::*,
    xdp::{addrs::*, pin_cpu0, small_options, RunOutput, XdpHarness, LB_MAC},
};

const VIP4_SH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 104);
const VIP4_MH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 105);

fn backend(i: usize, port: u16, weight: u32) -> BackendSpec {
    BackendSpec {
        thresholds: Default::default(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8)), port),
        weight,
        mac: Some(B[i]),
        forward: Forward::Dr,
    }
}

fn service(vip: IpAddr, port: u16, proto: Proto, sched: Scheduler, n: usize) -> ServiceSpec {
    ServiceSpec {
        vip,
        port,
        proto,
        sched,
        hash_port: false,
        sloppy_tcp: true,
        mh_table_size: lb_tests::xdp::MH_TABLE_SIZE,
        persistence_timeout: 0,
        persistence_prefix: 32,
        idle_timeout: proto.default_idle_timeout(),
        active: true,
        aliases: Vec::new(),
        backends: (0..n).map(|i| backend(i, port, 1)).collect(),
    }
}

/// The services every case runs against.
fn specs() -> Vec<ServiceSpec> {
    let mut backup = service(VIP4_BACKUP.into(), 80, Proto::Tcp, Scheduler::Rr, 3);
    backup.active = false;
    let mut persist = service(VIP4_PERSIST.into(), 443, Proto::Tcp, Scheduler::Rr, 3);
    persist.persistence_timeout = 300;
    persist.persistence_prefix = 24;
    vec![
        service(VIP4.into(), 80, Proto::Tcp, Scheduler::Rr, 3),
        service(VIP4.into(), 443, Proto::Tcp, Scheduler::Rr, 3),
        service(VIP4.into(), 53, Proto::Udp, Scheduler::Rr, 3),
        service(VIP6.into(), 80, Proto::Tcp, Scheduler::Rr, 3),
        service(VIP6.into(), 53, Proto::Udp, Scheduler::Rr, 3),
        service(VIP4_ALL_PORTS.into(), 0, Proto::Tcp, Scheduler::Wrr, 3),
        backup,
        persist,
    ]
}

fn harness(specs: &[ServiceSpec]) -> Option<XdpHarness> {
    if !require_root("xdp fixtures") {
        return None;
    }
    pin_cpu0();
    let mut h = XdpHarness::new(small_options()).expect("load the XDP object");
    h.dp.update(specs).expect("write the maps");
    Some(h)
}

fn tcp4_to(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let ip = Ipv4::new(CLIENT4, dst, 6);
    let seg = tcp(ip.addrs(), sport, dport, flags, b"");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg))
}

fn tcp4_from(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let ip = Ipv4::new(src, VIP4_PERSIST, 6);
    let seg = tcp(ip.addrs(), sport, dport, TCP_SYN, b"");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg))
}

fn tcp4(sport: u16) -> Vec<u8> {
    tcp4_to(VIP4, sport, 80, TCP_SYN)
}

fn udp4(sport: u16) -> Vec<u8> {
    let ip = Ipv4::new(CLIENT4, VIP4, 17);
    let d = udp(ip.addrs(), sport, 53, b"query");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&d))
}

fn tcp6_with(ext: Vec<(u8, Vec<u8>)>, sport: u16) -> Vec<u8> {
    let mut ip = Ipv6::new(CLIENT6, VIP6, 6);
    ip.ext = ext;
    let seg = tcp(ip.addrs(), sport, 80, TCP_SYN, b"");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&seg))
}

fn tcp6(sport: u16) -> Vec<u8> {
    tcp6_with(Vec::new(), sport)
}

fn udp6(sport: u16) -> Vec<u8> {
    let ip = Ipv6::new(CLIENT6, VIP6, 17);
    let d = udp(ip.addrs(), sport, 53, b"query");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&d))
}

/// Runs `frame` and checks the verdict, the reason counter it bumped, and the exact bytes.
/// Returns the index of the backend the frame was sent to, if any.
fn check(h: &mut XdpHarness, name: &str, frame: &[u8], want_reason: u32) -> Option<usize> {
    let before = h.dp.writer().reason_counters().unwrap();
    let RunOutput { verdict, data, .. } = h.run(frame).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let after = h.dp.writer().reason_counters().unwrap();
    let bumped: Vec<&str> = (0..reason::COUNT)
        .filter(|&r| after[r as usize].packets != before[r as usize].packets)
        .map(reason::name)
        .collect();
    assert_eq!(bumped, vec![reason::name(want_reason)], "{name}: reason");
    assert_eq!(
        after[want_reason as usize].bytes - before[want_reason as usize].bytes,
        frame.len() as u64,
        "{name}: reason bytes"
    );
    assert_eq!(verdict, reason::verdict(want_reason), "{name}: verdict");
    if verdict == XDP_TX {
        let i = B
            .iter()
            .position(|m| data[..6] == m[..])
            .unwrap_or_else(|| panic!("{name}: sent to unknown MAC {:02x?}", &data[..6]));
        assert_eq!(data, with_macs(frame, B[i], LB_MAC), "{name}: output bytes");
        Some(i)
    } else {
        if verdict == XDP_PASS {
            assert_eq!(data, frame, "{name}: a passed frame is untouched");
        }
        None
    }
}

#[test]
fn forwards_new_and_established_flows_v4_v6_tcp_udp() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    // rr, per flow: new flows take b1, b2, b3, b1...; a flow's later packets stay put.
    for (sport, want) in [(1000, 0), (1001, 1), (1002, 2), (1003, 0)] {
        let got = check(&mut h, "tcp4 new", &tcp4(sport), FWD_NEW_FLOW);
        assert_eq!(got, Some(want), "rr order");
    }
    for sport in [1000, 1001, 1002, 1003] {
        let again = tcp4_to(VIP4, sport, 80, TCP_ACK);
        let got = check(&mut h, "tcp4 established", &again, FWD_ESTABLISHED);
        assert_eq!(got, Some([0, 1, 2, 0][(sport - 1000) as usize]));
    }
    let u = check(&mut h, "udp4 new", &udp4(5353), FWD_NEW_FLOW);
    assert_eq!(
        check(&mut h, "udp4 established", &udp4(5353), FWD_ESTABLISHED),
        u
    );
    let t6 = check(&mut h, "tcp6 new", &tcp6(2000), FWD_NEW_FLOW);
    assert_eq!(
        check(&mut h, "tcp6 established", &tcp6(2000), FWD_ESTABLISHED),
        t6
    );
    let u6 = check(&mut h, "udp6 new", &udp6(2001), FWD_NEW_FLOW);
    assert_eq!(
        check(&mut h, "udp6 established", &udp6(2001), FWD_ESTABLISHED),
        u6
    );
    // Port 0: every port of the VIP.
    for port in [22, 8080, 65535] {
        check(
            &mut h,
            "all-ports service",
            &tcp4_to(VIP4_ALL_PORTS, 3000, port, TCP_SYN),
            FWD_NEW_FLOW,
        );
    }
}

/// An opening SYN is inserted without a lookup first (`lb.rs`, `new_flow`): one that finds
/// its flow already there (a retransmission, a reused port) must still keep the flow's
/// backend, count as established, and hand back the rr step it took.
#[test]
fn retransmitted_syn_keeps_its_backend_and_the_rr_order() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    assert_eq!(check(&mut h, "syn", &tcp4(1500), FWD_NEW_FLOW), Some(0));
    for _ in 0..3 {
        let again = check(&mut h, "syn retransmitted", &tcp4(1500), FWD_ESTABLISHED);
        assert_eq!(again, Some(0));
    }
    assert_eq!(
        check(
            &mut h,
            "next flow, rr not skipped",
            &tcp4(1501),
            FWD_NEW_FLOW
        ),
        Some(1)
    );
    // SYN+ACK and RST+SYN are no opening SYNs: a flow's ordinary packets, looked up first.
    for flags in [TCP_SYN | TCP_ACK, TCP_SYN | TCP_RST] {
        let f = tcp4_to(VIP4, 1500, 80, flags);
        assert_eq!(
            check(&mut h, "syn with ack/rst", &f, FWD_ESTABLISHED),
            Some(0)
        );
    }
    // A first packet that is no SYN (a flow from before a failover) is a new flow too,
    // with `sloppy_tcp` (every service of `specs()`), counted apart.
    let ack = tcp4_to(VIP4, 1502, 80, TCP_ACK);
    assert_eq!(
        check(
            &mut h,
            "ack of an unknown flow",
            &ack,
            FWD_NEW_FLOW_MIDSTREAM
        ),
        Some(2)
    );
    assert_eq!(
        check(&mut h, "its syn later", &tcp4(1502), FWD_ESTABLISHED),
        Some(2)
    );
    // IPv6 takes the same path.
    let first = check(&mut h, "syn6", &tcp6(2500), FWD_NEW_FLOW);
    assert_eq!(
        check(&mut h, "syn6 again", &tcp6(2500), FWD_ESTABLISHED),
        first
    );
    let next = check(&mut h, "next syn6", &tcp6(2501), FWD_NEW_FLOW);
    assert_eq!(
        next.map(|i| (i + 2) % 3),
        first,
        "rr order after a retransmitted syn6"
    );
}

#[test]
fn vlan_ip_options_and_ipv6_extension_headers() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let ip = Ipv4::new(CLIENT4, VIP4, 6);
    let seg = tcp(ip.addrs(), 4000, 80, TCP_SYN, b"");
    let tagged = ether(LB_MAC, CLIENT_MAC, Some(42), ETH_P_IP, &ip.build(&seg));
    check(&mut h, "802.1Q tagged", &tagged, FWD_NEW_FLOW);

    for words in 1..=10 {
        let mut ip = Ipv4::new(CLIENT4, VIP4, 6);
        // NOP options up to IHL 15, ending with EOL.
        ip.options = vec![1; words * 4];
        *ip.options.last_mut().unwrap() = 0;
        let seg = tcp(ip.addrs(), 4100 + words as u16, 80, TCP_SYN, b"");
        let f = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg));
        check(
            &mut h,
            &format!("ipv4 options ihl={}", 5 + words),
            &f,
            FWD_NEW_FLOW,
        );
    }

    let chains: Vec<Vec<(u8, Vec<u8>)>> = vec![
        vec![(IPV6_HOPOPTS, Ipv6::opts_ext())],
        vec![
            (IPV6_HOPOPTS, Ipv6::opts_ext()),
            (IPV6_ROUTING, Ipv6::routing_ext()),
        ],
        vec![
            (IPV6_HOPOPTS, Ipv6::opts_ext()),
            (IPV6_DSTOPTS, Ipv6::opts_ext()),
            (IPV6_ROUTING, Ipv6::routing_ext()),
            (IPV6_DSTOPTS, Ipv6::opts_ext()),
        ],
        // An atomic fragment (offset 0, no more fragments) is a whole packet (RFC 6946).
        vec![(IPV6_FRAGMENT, Ipv6::fragment_ext(0, false, 7))],
    ];
    for (i, chain) in chains.into_iter().enumerate() {
        check(
            &mut h,
            &format!("ipv6 ext chain {i}"),
            &tcp6_with(chain, 4200 + i as u16),
            FWD_NEW_FLOW,
        );
    }
    // Six extension headers is more than the program walks: passed, not guessed at.
    let long = vec![(IPV6_DSTOPTS, Ipv6::opts_ext()); 6];
    check(
        &mut h,
        "ipv6 too many ext headers",
        &tcp6_with(long, 4300),
        PASS_UNSUPPORTED,
    );
    // Two VLAN tags (QinQ) are not parsed.
    let mut qinq = ether(LB_MAC, CLIENT_MAC, Some(42), 0x8100, &[0x00, 0x07]);
    qinq.extend_from_slice(&ETH_P_IP.to_be_bytes());
    qinq.extend_from_slice(&ip.build(&seg));
    check(&mut h, "QinQ", &qinq, PASS_UNSUPPORTED);
}

#[test]
fn non_service_traffic_passes_untouched() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let arp = ether([0xff; 6], CLIENT_MAC, None, ETH_P_ARP, &[0u8; 28]);
    check(&mut h, "ARP", &arp, PASS_NOT_IP);

    let mut vrrp_ip = Ipv4::new(NODE4, Ipv4Addr::new(224, 0, 0, 18), 112);
    vrrp_ip.ttl = 255;
    let vrrp = ether(
        [1, 0, 0x5e, 0, 0, 18],
        CLIENT_MAC,
        None,
        ETH_P_IP,
        &vrrp_ip.build(&[0x21, 7, 100, 1, 0, 1, 0, 0, 192, 0, 2, 100]),
    );
    check(&mut h, "VRRP", &vrrp, PASS_VRRP);

    let ns_ip = Ipv6::new(CLIENT6, "ff02::1:ff00:100".parse().unwrap(), 58);
    let mut body = VIP6.octets().to_vec();
    body.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 0xc1]);
    let ns = icmp6(ns_ip.addrs(), 135, 0, [0; 4], &body);
    let ns_frame = ether(
        [0x33, 0x33, 0xff, 0, 1, 0],
        CLIENT_MAC,
        None,
        ETH_P_IPV6,
        &ns_ip.build(&ns),
    );
    check(
        &mut h,
        "ICMPv6 neighbour solicitation",
        &ns_frame,
        PASS_ICMP,
    );

    let echo_ip = Ipv4::new(CLIENT4, VIP4, 1);
    let echo = ether(
        LB_MAC,
        CLIENT_MAC,
        None,
        ETH_P_IP,
        &echo_ip.build(&icmp4(8, 0, [0, 1, 0, 1], b"ping")),
    );
    check(&mut h, "echo request to the VIP", &echo, PASS_ICMP);
    let echo6_ip = Ipv6::new(CLIENT6, VIP6, 58);
    let echo6 = ether(
        LB_MAC,
        CLIENT_MAC,
        None,
        ETH_P_IPV6,
        &echo6_ip.build(&icmp6(echo6_ip.addrs(), 128, 0, [0, 1, 0, 1], b"ping")),
    );
    check(&mut h, "ICMPv6 echo request to the VIP", &echo6, PASS_ICMP);

    check(
        &mut h,
        "the node's own address",
        &tcp4_to(NODE4, 5000, 22, TCP_SYN),
        PASS_NO_SERVICE,
    );
    check(
        &mut h,
        "VIP, port without a service",
        &tcp4_to(VIP4, 5000, 81, TCP_SYN),
        PASS_NO_SERVICE,
    );
    // Port 0 is where the fragments-only entry of the VIP's lowest-port service sits:
    // a whole packet must not take it.
    check(
        &mut h,
        "VIP, whole packet to port 0",
        &tcp4_to(VIP4, 5000, 0, TCP_SYN),
        PASS_NO_SERVICE,
    );
    let gre_ip = Ipv4::new(CLIENT4, VIP4, 47);
    let gre = ether(
        LB_MAC,
        CLIENT_MAC,
        None,
        ETH_P_IP,
        &gre_ip.build(&[0, 0, 8, 0]),
    );
    check(&mut h, "GRE to the VIP", &gre, PASS_OTHER_PROTO);
}

#[test]
fn backup_node_passes_and_takes_over_without_losing_flows() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    check(
        &mut h,
        "service of a backup node",
        &tcp4_to(VIP4_BACKUP, 6000, 80, TCP_SYN),
        PASS_INACTIVE,
    );
    let b = check(&mut h, "tcp4 before", &tcp4(6001), FWD_NEW_FLOW);
    // What the daemon does on a VRRP role change: the same specs with the active flag flipped.
    let set_active = |h: &mut XdpHarness, active: bool| {
        let mut specs = h.dp.specs().to_vec();
        for s in specs.iter_mut().filter(|s| s.vip == IpAddr::from(VIP4)) {
            s.active = active;
        }
        h.dp.update(&specs).unwrap();
    };
    set_active(&mut h, false);
    check(&mut h, "tcp4 while backup", &tcp4(6001), PASS_INACTIVE);
    set_active(&mut h, true);
    assert_eq!(
        check(&mut h, "tcp4 master again", &tcp4(6001), FWD_ESTABLISHED),
        b
    );
}

#[test]
fn weight_zero_drains_and_removed_backend_reschedules() {
    let mut specs = specs();
    let Some(mut h) = harness(&specs) else { return };
    // Flows on b1, b2, b3.
    for sport in 7000..7006 {
        check(&mut h, "spread", &tcp4(sport), FWD_NEW_FLOW);
    }
    // Drain b1: its flows stay, new flows avoid it.
    specs[0].backends[0].weight = 0;
    h.dp.update(&specs).unwrap();
    let ack = |sport| tcp4_to(VIP4, sport, 80, TCP_ACK);
    assert_eq!(
        check(&mut h, "drained keeps flow", &ack(7000), FWD_ESTABLISHED),
        Some(0)
    );
    for sport in 7100..7110 {
        assert_ne!(
            check(&mut h, "no new flow to drained", &tcp4(sport), FWD_NEW_FLOW),
            Some(0)
        );
    }
    // A SYN on a drained backend's flow (a client reusing the port) opens a connection: it
    // goes to a backend that takes new ones, and the flow follows it.
    let b1_flow = 7003;
    assert_eq!(
        check(&mut h, "drained keeps flow", &ack(b1_flow), FWD_ESTABLISHED),
        Some(0)
    );
    let reopened = check(
        &mut h,
        "SYN reusing a drained flow",
        &tcp4(b1_flow),
        FWD_NEW_FLOW,
    );
    assert!(matches!(reopened, Some(1 | 2)), "{reopened:?}");
    assert_eq!(
        check(&mut h, "the reopened flow", &ack(b1_flow), FWD_ESTABLISHED),
        reopened
    );
    // Remove b2: its flow (sport 7001) is rescheduled, to a live backend.
    specs[0].backends.remove(1);
    h.dp.update(&specs).unwrap();
    let moved = check(&mut h, "removed backend's flow", &tcp4(7001), FWD_NEW_FLOW);
    assert_eq!(moved, Some(2), "only b3 takes new flows");
    // Add a backend and change weights: established flows keep their backend.
    specs[0].backends.push(backend(3, 80, 5));
    specs[0].backends[1].weight = 3;
    h.dp.update(&specs).unwrap();
    assert_eq!(
        check(&mut h, "after add", &ack(7000), FWD_ESTABLISHED),
        Some(0)
    );
    assert_eq!(
        check(&mut h, "after add", &ack(7002), FWD_ESTABLISHED),
        Some(2)
    );
    assert_eq!(
        check(&mut h, "after add", &ack(7001), FWD_ESTABLISHED),
        Some(2)
    );
    // A backend whose MAC is unknown is absent: its flows reschedule.
    specs[0].backends[1].mac = None;
    h.dp.update(&specs).unwrap();
    assert_eq!(
        check(&mut h, "unresolved backend", &tcp4(7002), FWD_NEW_FLOW),
        Some(3)
    );
    // No live backend at all: the stack gets it.
    for b in &mut specs[0].backends {
        b.weight = 0;
    }
    h.dp.update(&specs).unwrap();
    check(&mut h, "no live backend", &tcp4(7200), PASS_NO_BACKEND);
}

#[test]
fn idle_udp_flow_expires() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    h.set_clock(1000).unwrap();
    let first = check(&mut h, "udp new", &udp4(8000), FWD_NEW_FLOW).unwrap();
    // Within the UDP timeout (300 s) the flow stays; its last-seen time moves on.
    h.set_clock(1290).unwrap();
    assert_eq!(
        check(&mut h, "udp established", &udp4(8000), FWD_ESTABLISHED),
        Some(first)
    );
    h.set_clock(1580).unwrap();
    assert_eq!(
        check(
            &mut h,
            "udp still established",
            &udp4(8000),
            FWD_ESTABLISHED
        ),
        Some(first)
    );
    // Idle past the timeout: forgotten, rescheduled by rr.
    h.set_clock(1881).unwrap();
    let second = check(&mut h, "udp after idle timeout", &udp4(8000), FWD_NEW_FLOW).unwrap();
    assert_eq!(second, (first + 1) % 3, "rescheduled by rr");
    assert_eq!(
        check(
            &mut h,
            "udp established again",
            &udp4(8000),
            FWD_ESTABLISHED
        ),
        Some(second)
    );
    // An established TCP connection has its own, longer timeout (900 s): the same idle
    // time keeps it.
    let t = check(&mut h, "tcp new", &tcp4(8001), FWD_NEW_FLOW);
    let ack = tcp4_to(VIP4, 8001, 80, TCP_ACK);
    check(&mut h, "tcp handshake", &ack, FWD_ESTABLISHED);
    h.set_clock(1881 + 301).unwrap();
    assert_eq!(check(&mut h, "tcp idle 301 s", &ack, FWD_ESTABLISHED), t);
}

#[test]
fn persistence_sticks_a_client_network_to_one_backend() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let a = check(
        &mut h,
        "first connection",
        &tcp4_from(CLIENT4, 9000, 443),
        FWD_NEW_FLOW,
    );
    for sport in 9001..9005 {
        assert_eq!(
            check(
                &mut h,
                "same client",
                &tcp4_from(CLIENT4, sport, 443),
                FWD_NEW_FLOW
            ),
            a
        );
    }
    // Same /24: same backend; another /24: rr goes on.
    assert_eq!(
        check(
            &mut h,
            "same /24",
            &tcp4_from(Ipv4Addr::new(198, 51, 100, 200), 9100, 443),
            FWD_NEW_FLOW
        ),
        a
    );
    let other = check(
        &mut h,
        "other /24",
        &tcp4_from(Ipv4Addr::new(203, 0, 113, 9), 9200, 443),
        FWD_NEW_FLOW,
    );
    assert_ne!(other, a);
    // The template expires persistence_timeout (300 s) after its last use.
    h.set_clock(301).unwrap();
    let later = check(
        &mut h,
        "after the template expired",
        &tcp4_from(CLIENT4, 9300, 443),
        FWD_NEW_FLOW,
    );
    assert_ne!(
        later, a,
        "rr moved on, and the expired template no longer holds"
    );
}

#[test]
fn source_hash_and_maglev_follow_the_source() {
    let specs = vec![
        service(VIP4_SH.into(), 80, Proto::Tcp, Scheduler::Sh, 3),
        service(VIP4_MH.into(), 80, Proto::Tcp, Scheduler::Mh, 3),
    ];
    let Some(mut h) = harness(&specs) else { return };
    for vip in [VIP4_SH, VIP4_MH] {
        let mut seen = std::collections::HashSet::new();
        for client in 1..=40u8 {
            let src = Ipv4Addr::new(203, 0, 113, client);
            let mk = |sport: u16| {
                let ip = Ipv4::new(src, vip, 6);
                let seg = tcp(ip.addrs(), sport, 80, TCP_SYN, b"");
                ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg))
            };
            let a = check(&mut h, "hash", &mk(100), FWD_NEW_FLOW);
            assert_eq!(
                check(&mut h, "same source, other port", &mk(200), FWD_NEW_FLOW),
                a
            );
            seen.insert(a);
        }
        assert_eq!(seen.len(), 3, "40 sources spread over the 3 backends");
    }
}

#[test]
fn fragments_of_a_datagram_reach_one_backend() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    // IPv4: first (MF, offset 0, carries the UDP header), middle, last.
    let payload = vec![0xabu8; 64];
    let mut ip = Ipv4::new(CLIENT4, VIP4, 17);
    let whole = udp(ip.addrs(), 5300, 53, &payload);
    let mut got = Vec::new();
    for (frag, part) in [
        (0x2000u16, &whole[..40]),
        (0x2005, &whole[40..56]),
        (0x0007, &whole[56..]),
    ] {
        ip.frag = frag;
        let f = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(part));
        got.push(check(
            &mut h,
            &format!("ipv4 fragment {frag:#x}"),
            &f,
            FWD_FRAGMENT,
        ));
    }
    assert!(
        got.iter().all(|g| *g == got[0]),
        "all v4 fragments to one backend: {got:?}"
    );
    // The same datagram again after other flows moved the rr position: same backend.
    check(&mut h, "other flow", &udp4(5400), FWD_NEW_FLOW);
    ip.frag = 0x0007;
    let last = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&whole[56..]));
    assert_eq!(
        check(&mut h, "ipv4 last fragment again", &last, FWD_FRAGMENT),
        got[0]
    );

    // IPv6: the fragment header, first / middle / last.
    let mut ip6 = Ipv6::new(CLIENT6, VIP6, 17);
    let whole6 = udp(ip6.addrs(), 5300, 53, &payload);
    let mut got6 = Vec::new();
    for (off, more, part) in [
        (0u16, true, &whole6[..40]),
        (5, true, &whole6[40..56]),
        (7, false, &whole6[56..]),
    ] {
        ip6.ext = vec![(IPV6_FRAGMENT, Ipv6::fragment_ext(off, more, 0x77))];
        let f = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip6.build(part));
        got6.push(check(
            &mut h,
            &format!("ipv6 fragment off={off}"),
            &f,
            FWD_FRAGMENT,
        ));
    }
    assert!(
        got6.iter().all(|g| *g == got6[0]),
        "all v6 fragments to one backend: {got6:?}"
    );
    // A VIP/protocol without any service: its fragments go to the stack, counted.
    let mut other = Ipv4::new(CLIENT4, VIP4_SH, 17);
    other.frag = 0x2000;
    let f = ether(
        LB_MAC,
        CLIENT_MAC,
        None,
        ETH_P_IP,
        &other.build(&whole[..40]),
    );
    check(&mut h, "fragment, no service", &f, PASS_NO_SERVICE);
}

#[test]
fn icmp_packet_too_big_follows_its_flow() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let b = check(&mut h, "flow", &tcp4(40000), FWD_NEW_FLOW);
    // The real server's reply (VIP:80 -> client:40000) was too big for a router.
    let reply = Ipv4::new(VIP4, CLIENT4, 6);
    let quoted = reply.build(&tcp(reply.addrs(), 80, 40000, TCP_ACK, &[0; 8]));
    let ptb_ip = Ipv4::new(ROUTER4, VIP4, 1);
    let ptb = |quoted: &[u8]| {
        ether(
            LB_MAC,
            CLIENT_MAC,
            None,
            ETH_P_IP,
            &ptb_ip.build(&icmp4(3, 4, [0, 0, 5, 0xdc], quoted)),
        )
    };
    assert_eq!(
        check(
            &mut h,
            "frag needed, known flow",
            &ptb(&quoted[..28]),
            FWD_ICMP
        ),
        b
    );
    let unknown = reply.build(&tcp(reply.addrs(), 80, 40001, TCP_ACK, &[]));
    check(
        &mut h,
        "frag needed, unknown flow",
        &ptb(&unknown[..28]),
        PASS_ICMP_NO_FLOW,
    );
    check(
        &mut h,
        "frag needed, quoted ports cut",
        &ptb(&quoted[..22]),
        DROP_MALFORMED_ICMP,
    );

    let b6 = check(&mut h, "flow6", &tcp6(40000), FWD_NEW_FLOW);
    let reply6 = Ipv6::new(VIP6, CLIENT6, 6);
    let quoted6 = reply6.build(&tcp(reply6.addrs(), 80, 40000, TCP_ACK, &[0; 8]));
    let ptb6_ip = Ipv6::new(ROUTER6, VIP6, 58);
    let msg = icmp6(ptb6_ip.addrs(), 2, 0, [0, 0, 5, 0x00], &quoted6);
    let f = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ptb6_ip.build(&msg));
    assert_eq!(
        check(&mut h, "packet too big, known flow", &f, FWD_ICMP),
        b6
    );
}

#[test]
fn malformed_frames_are_dropped_and_counted_never_forwarded() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    // Every truncation point of a tagged IPv4 TCP frame and an IPv6 TCP frame with an
    // extension header: each cut lands in exactly one documented malformed reason.
    let ip = Ipv4::new(CLIENT4, VIP4, 6);
    let tagged = ether(
        LB_MAC,
        CLIENT_MAC,
        Some(7),
        ETH_P_IP,
        &ip.build(&tcp(ip.addrs(), 1, 80, TCP_SYN, b"")),
    );
    for len in 14..tagged.len() {
        let want = if len < 18 {
            DROP_MALFORMED_ETH
        } else {
            DROP_MALFORMED_IPV4
        };
        check(
            &mut h,
            &format!("tagged ipv4 cut at {len}"),
            &tagged[..len],
            want,
        );
    }
    let v6 = tcp6_with(vec![(IPV6_HOPOPTS, Ipv6::opts_ext())], 1);
    for len in 14..v6.len() {
        let want = if len < 14 {
            DROP_MALFORMED_ETH
        } else {
            DROP_MALFORMED_IPV6
        };
        check(&mut h, &format!("ipv6 cut at {len}"), &v6[..len], want);
    }
    // Headers that are whole but lie (each with its checksum made right again, so that
    // the case tests the field it changed).
    let good = tcp4(1);
    let lie = |at: usize, bytes: &[u8]| {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        ipv4_fix_checksum(&mut f, 14);
        f
    };
    check(&mut h, "IHL 4", &lie(14, &[0x44]), DROP_MALFORMED_IPV4);
    check(
        &mut h,
        "total length beyond the frame",
        &lie(16, &1500u16.to_be_bytes()),
        DROP_MALFORMED_IPV4,
    );
    check(
        &mut h,
        "total length below IHL",
        &lie(16, &19u16.to_be_bytes()),
        DROP_MALFORMED_IPV4,
    );
    check(
        &mut h,
        "version 6 in an IPv4 ethertype",
        &lie(14, &[0x65]),
        DROP_MALFORMED_IPV4,
    );
    // IP says the TCP header is 12 bytes: truncated L4 within a consistent IP packet.
    let l4 = Ipv4::new(CLIENT4, VIP4, 6)
        .build(&tcp(Ipv4::new(CLIENT4, VIP4, 6).addrs(), 1, 80, TCP_SYN, b"")[..12]);
    check(
        &mut h,
        "TCP header cut",
        &ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &l4),
        DROP_MALFORMED_L4,
    );
    let u = Ipv4::new(CLIENT4, VIP4, 17).build(&[0, 53, 0, 53]);
    check(
        &mut h,
        "UDP header cut",
        &ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &u),
        DROP_MALFORMED_L4,
    );
    let mut plen = tcp6(1);
    plen[18..20].copy_from_slice(&1000u16.to_be_bytes());
    check(
        &mut h,
        "IPv6 payload length beyond the frame",
        &plen,
        DROP_MALFORMED_IPV6,
    );
    // An extension header whose length runs past the payload.
    let mut ext = tcp6_with(vec![(IPV6_DSTOPTS, Ipv6::opts_ext())], 1);
    ext[14 + 40 + 1] = 200;
    check(
        &mut h,
        "IPv6 ext header beyond the payload",
        &ext,
        DROP_MALFORMED_IPV6,
    );
    // Ethernet padding after a short IP packet is fine.
    let mut padded = tcp4(2);
    padded.extend_from_slice(&[0; 6]);
    check(&mut h, "ethernet padding", &padded, FWD_NEW_FLOW);
}

/// An IPv4 TCP frame from the client to `dst`:80 (`sport`, `flags`) whose segment is
/// `options` and `payload` after the fixed header, with the data offset then set to `doff`
/// words (the segment's checksum made right again).
fn tcp4_doff(
    dst: Ipv4Addr,
    sport: u16,
    flags: u8,
    options: &[u8],
    payload: &[u8],
    doff: u8,
) -> Vec<u8> {
    let ip = Ipv4::new(CLIENT4, dst, 6);
    let mut seg = tcp_opts(ip.addrs(), sport, 80, flags, options, payload);
    seg[12] = doff << 4;
    tcp_fix_checksum(ip.addrs(), &mut seg);
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg))
}

fn tcp6_doff(sport: u16, flags: u8, options: &[u8], payload: &[u8], doff: u8) -> Vec<u8> {
    let ip = Ipv6::new(CLIENT6, VIP6, 6);
    let mut seg = tcp_opts(ip.addrs(), sport, 80, flags, options, payload);
    seg[12] = doff << 4;
    tcp_fix_checksum(ip.addrs(), &mut seg);
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&seg))
}

/// Whether FLOWS4 holds the flow CLIENT4:sport -> dst:dport (TCP).
fn flow4_exists(h: &XdpHarness, dst: Ipv4Addr, sport: u16, dport: u16) -> bool {
    let flows: aya::maps::HashMap<_, lb_common::FlowKey4, lb_common::FlowValue> =
        aya::maps::HashMap::try_from(h.ebpf.map(lb_common::names::FLOWS4).unwrap()).unwrap();
    let key = lb_common::FlowKey4 {
        src: lb_common::addr_v4(CLIENT4.octets()),
        dst: lb_common::addr_v4(dst.octets()),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    match flows.get(&key, 0) {
        Ok(_) => true,
        Err(aya::maps::MapError::KeyNotFound) => false,
        Err(e) => panic!("FLOWS4 lookup: {e}"),
    }
}

/// Defect 2 of issue 15: a TCP data offset below 5 words, or one that runs past the segment,
/// was forwarded (as a new flow and as an established one). Both are malformed, wherever
/// the flow stands; an offset that ends exactly at the segment's end is fine.
#[test]
fn tcp_data_offset_below_5_or_past_the_segment_is_dropped() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let mss = [2, 4, 5, 0xb4];
    for (name, frame) in [
        ("doff 4", tcp4_doff(VIP4, 100, TCP_SYN, &[], b"", 4)),
        ("doff 0", tcp4_doff(VIP4, 101, TCP_SYN, &[], b"", 0)),
        (
            "doff 4 with payload",
            tcp4_doff(VIP4, 102, TCP_SYN, &[], b"data", 4),
        ),
        (
            "doff 6, 20-byte segment",
            tcp4_doff(VIP4, 103, TCP_SYN, &[], b"", 6),
        ),
        (
            "doff 15, 24-byte segment",
            tcp4_doff(VIP4, 104, TCP_SYN, &mss, b"", 15),
        ),
        (
            "doff 7, mss + 3 bytes",
            tcp4_doff(VIP4, 105, TCP_SYN, &mss, b"abc", 7),
        ),
        (
            "all-ports service, doff 4",
            tcp4_doff(VIP4_ALL_PORTS, 106, TCP_SYN, &[], b"", 4),
        ),
    ] {
        check(
            &mut h,
            &format!("new flow, {name}"),
            &frame,
            DROP_MALFORMED_L4,
        );
    }
    // The header's claimed end lies in the frame (Ethernet padding) but past the IP packet.
    let mut padded = tcp4_doff(VIP4, 107, TCP_SYN, &[], b"", 6);
    padded.extend_from_slice(&[0; 8]);
    check(
        &mut h,
        "doff 6 into the ethernet padding",
        &padded,
        DROP_MALFORMED_L4,
    );
    // Tagged.
    let ip = Ipv4::new(CLIENT4, VIP4, 6);
    let mut seg = tcp(ip.addrs(), 108, 80, TCP_SYN, b"");
    seg[12] = 4 << 4;
    let tagged = ether(LB_MAC, CLIENT_MAC, Some(42), ETH_P_IP, &ip.build(&seg));
    check(&mut h, "802.1Q, doff 4", &tagged, DROP_MALFORMED_L4);
    // None of them created a flow: the same ports open one now.
    for sport in 100..=108 {
        assert!(!flow4_exists(&h, VIP4, sport, 80), "sport {sport}");
    }

    // Right offsets: options, options filling the whole 60 bytes, and a header that ends
    // exactly where the segment does.
    let b = check(
        &mut h,
        "doff 6 (mss)",
        &tcp4_doff(VIP4, 110, TCP_SYN, &mss, b"x", 6),
        FWD_NEW_FLOW,
    );
    check(
        &mut h,
        "doff 15 (40 option bytes)",
        &tcp4_doff(VIP4, 111, TCP_SYN, &[1; 40], b"", 15),
        FWD_NEW_FLOW,
    );
    check(
        &mut h,
        "doff 5, no payload",
        &tcp4_doff(VIP4, 112, TCP_SYN, &[], b"", 5),
        FWD_NEW_FLOW,
    );

    // An established flow: its own packets with a bad offset are dropped, from the flow
    // cache and from the table alike, and the flow goes on.
    for _ in 0..2 {
        check(
            &mut h,
            "established",
            &tcp4_doff(VIP4, 110, TCP_ACK, &[], b"data", 5),
            FWD_ESTABLISHED,
        );
        check(
            &mut h,
            "established, doff 4",
            &tcp4_doff(VIP4, 110, TCP_ACK, &[], b"data", 4),
            DROP_MALFORMED_L4,
        );
        check(
            &mut h,
            "established, doff past",
            &tcp4_doff(VIP4, 110, TCP_ACK, &[], b"data", 7),
            DROP_MALFORMED_L4,
        );
        check(
            &mut h,
            "established, doff 1",
            &tcp4_doff(VIP4, 110, TCP_ACK | TCP_RST, &[], b"", 1),
            DROP_MALFORMED_L4,
        );
    }
    assert_eq!(
        check(
            &mut h,
            "established after",
            &tcp4_doff(VIP4, 110, TCP_ACK, &[], b"", 5),
            FWD_ESTABLISHED
        ),
        b
    );

    // IPv6 takes the same checks.
    check(
        &mut h,
        "tcp6 doff 4",
        &tcp6_doff(200, TCP_SYN, &[], b"", 4),
        DROP_MALFORMED_L4,
    );
    check(
        &mut h,
        "tcp6 doff past",
        &tcp6_doff(201, TCP_SYN, &mss, b"", 8),
        DROP_MALFORMED_L4,
    );
    let b6 = check(
        &mut h,
        "tcp6 doff 6",
        &tcp6_doff(202, TCP_SYN, &mss, b"", 6),
        FWD_NEW_FLOW,
    );
    check(
        &mut h,
        "tcp6 established, doff 3",
        &tcp6_doff(202, TCP_ACK, &[], b"", 3),
        DROP_MALFORMED_L4,
    );
    assert_eq!(
        check(
            &mut h,
            "tcp6 established",
            &tcp6_doff(202, TCP_ACK, &[], b"", 5),
            FWD_ESTABLISHED
        ),
        b6
    );
}

/// Defect 2 of issue 15: an IPv4 header whose checksum is wrong was forwarded. The kernel's IP
/// layer would have dropped it before IPVS saw it; the program sees it first. The checksum
/// covers the whole header, options included; every path that forwards (new flows,
/// established flows, fragments, ICMP errors) is behind it.
#[test]
fn bad_ipv4_header_checksum_is_dropped_options_included() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let corrupt = |mut f: Vec<u8>, at: usize| {
        f[at] ^= 0x01;
        f
    };
    // The checksum field itself, a field the program uses (TTL is one it does not), and a
    // checksum left at zero.
    check(
        &mut h,
        "checksum field",
        &corrupt(tcp4(300), 14 + 11),
        DROP_BAD_IPV4_CSUM,
    );
    check(
        &mut h,
        "ttl changed",
        &corrupt(tcp4(301), 14 + 8),
        DROP_BAD_IPV4_CSUM,
    );
    check(
        &mut h,
        "identification changed",
        &corrupt(tcp4(302), 14 + 5),
        DROP_BAD_IPV4_CSUM,
    );
    let mut zero = tcp4(303);
    zero[24..26].copy_from_slice(&[0, 0]);
    check(&mut h, "checksum 0", &zero, DROP_BAD_IPV4_CSUM);
    check(
        &mut h,
        "udp",
        &corrupt(udp4(304), 14 + 11),
        DROP_BAD_IPV4_CSUM,
    );
    let ip = Ipv4::new(CLIENT4, VIP4, 6);
    let tagged = ether(
        LB_MAC,
        CLIENT_MAC,
        Some(42),
        ETH_P_IP,
        &ip.build(&tcp(ip.addrs(), 305, 80, TCP_SYN, b"")),
    );
    check(
        &mut h,
        "802.1Q",
        &corrupt(tagged, 18 + 11),
        DROP_BAD_IPV4_CSUM,
    );
    for sport in 300..=305 {
        assert!(!flow4_exists(&h, VIP4, sport, 80), "sport {sport}");
    }

    // Options: a wrong byte in any option word of any header length is caught; the same
    // headers with their right checksum are forwarded.
    for words in 1..=10usize {
        let mut ip = Ipv4::new(CLIENT4, VIP4, 6);
        ip.options = (0..words * 4)
            .map(|i| if i + 1 == words * 4 { 0 } else { 1 })
            .collect();
        let sport = 310 + words as u16;
        let good = ether(
            LB_MAC,
            CLIENT_MAC,
            None,
            ETH_P_IP,
            &ip.build(&tcp(ip.addrs(), sport, 80, TCP_SYN, b"")),
        );
        for w in 0..words {
            let at = 14 + 20 + w * 4 + 2;
            check(
                &mut h,
                &format!("ihl {} option word {w}", 5 + words),
                &corrupt(good.clone(), at),
                DROP_BAD_IPV4_CSUM,
            );
        }
        check(
            &mut h,
            &format!("ihl {} right", 5 + words),
            &good,
            FWD_NEW_FLOW,
        );
        check(
            &mut h,
            &format!("ihl {} again", 5 + words),
            &good,
            FWD_ESTABLISHED,
        );
    }

    // An established flow (cache hit and table hit), then its bad packets.
    let b = check(&mut h, "flow", &tcp4(330), FWD_NEW_FLOW);
    let ack = tcp4_to(VIP4, 330, 80, TCP_ACK);
    for _ in 0..2 {
        assert_eq!(check(&mut h, "established", &ack, FWD_ESTABLISHED), b);
        check(
            &mut h,
            "established, bad checksum",
            &corrupt(ack.clone(), 14 + 10),
            DROP_BAD_IPV4_CSUM,
        );
    }

    // Fragments, first and later.
    let mut ip = Ipv4::new(CLIENT4, VIP4, 17);
    let whole = udp(ip.addrs(), 5300, 53, &[0xab; 64]);
    ip.frag = 0x2000;
    let first = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&whole[..40]));
    ip.frag = 0x0005;
    let last = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&whole[40..]));
    check(
        &mut h,
        "first fragment, bad checksum",
        &corrupt(first.clone(), 14 + 10),
        DROP_BAD_IPV4_CSUM,
    );
    check(
        &mut h,
        "last fragment, bad checksum",
        &corrupt(last.clone(), 14 + 10),
        DROP_BAD_IPV4_CSUM,
    );
    let f = check(&mut h, "first fragment", &first, FWD_FRAGMENT);
    check(
        &mut h,
        "last fragment, bad checksum again",
        &corrupt(last.clone(), 14 + 10),
        DROP_BAD_IPV4_CSUM,
    );
    assert_eq!(check(&mut h, "last fragment", &last, FWD_FRAGMENT), f);

    // An ICMP "fragmentation needed" about a known flow.
    let reply = Ipv4::new(VIP4, CLIENT4, 6);
    let quoted = reply.build(&tcp(reply.addrs(), 80, 330, TCP_ACK, &[0; 8]));
    let ptb_ip = Ipv4::new(ROUTER4, VIP4, 1);
    let ptb = ether(
        LB_MAC,
        CLIENT_MAC,
        None,
        ETH_P_IP,
        &ptb_ip.build(&icmp4(3, 4, [0, 0, 5, 0xdc], &quoted[..28])),
    );
    check(
        &mut h,
        "frag needed, bad checksum",
        &corrupt(ptb.clone(), 14 + 10),
        DROP_BAD_IPV4_CSUM,
    );
    assert_eq!(check(&mut h, "frag needed", &ptb, FWD_ICMP), b);

    // What is not ours to forward is dropped as well: the stack would drop it, and it is
    // cheaper here (documented with the reason).
    check(
        &mut h,
        "the node's own address, bad checksum",
        &corrupt(tcp4_to(NODE4, 5000, 22, TCP_SYN), 14 + 10),
        DROP_BAD_IPV4_CSUM,
    );
}

/// The UDP length may be shorter than the IP payload (the stack trims the rest), not longer,
/// nor shorter than its own header (IPv6: 0 means the whole payload).
#[test]
fn udp_length_beyond_the_payload_is_dropped() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let udp4_len = |sport: u16, ulen: u16| {
        let ip = Ipv4::new(CLIENT4, VIP4, 17);
        let mut d = udp(ip.addrs(), sport, 53, b"query");
        d[4..6].copy_from_slice(&ulen.to_be_bytes());
        ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&d))
    };
    let udp6_len = |sport: u16, ulen: u16| {
        let ip = Ipv6::new(CLIENT6, VIP6, 17);
        let mut d = udp(ip.addrs(), sport, 53, b"query");
        d[4..6].copy_from_slice(&ulen.to_be_bytes());
        ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&d))
    };
    // 13 = 8 + "query".
    check(
        &mut h,
        "udp4 length 14",
        &udp4_len(400, 14),
        DROP_MALFORMED_L4,
    );
    check(
        &mut h,
        "udp4 length 0xffff",
        &udp4_len(401, 0xffff),
        DROP_MALFORMED_L4,
    );
    check(
        &mut h,
        "udp4 length 7",
        &udp4_len(402, 7),
        DROP_MALFORMED_L4,
    );
    check(
        &mut h,
        "udp4 length 0",
        &udp4_len(403, 0),
        DROP_MALFORMED_L4,
    );
    check(&mut h, "udp4 length 13", &udp4_len(404, 13), FWD_NEW_FLOW);
    check(
        &mut h,
        "udp4 length 8 (shorter than the payload)",
        &udp4_len(405, 8),
        FWD_NEW_FLOW,
    );
    check(
        &mut h,
        "udp6 length 14",
        &udp6_len(406, 14),
        DROP_MALFORMED_L4,
    );
    check(
        &mut h,
        "udp6 length 7",
        &udp6_len(407, 7),
        DROP_MALFORMED_L4,
    );
    check(
        &mut h,
        "udp6 length 0 (the whole payload)",
        &udp6_len(408, 0),
        FWD_NEW_FLOW,
    );
    check(&mut h, "udp6 length 13", &udp6_len(409, 13), FWD_NEW_FLOW);
}

/// Defect 3 of issue 15: with a Destination Options header at the start of the fragmentable
/// part, the first fragment was forwarded (the program walked on to TCP) and the later ones
/// passed (their fragment header names DSTOPTS), so no one could reassemble the datagram.
/// Every fragment carries the fragment header's next header, and only it decides: TCP or
/// UDP is balanced; anything else is passed, every fragment alike.
#[test]
fn ipv6_fragments_of_one_datagram_follow_one_rule() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let fragments =
        |proto: u8, ext_before: Vec<(u8, Vec<u8>)>, part: &[u8], id: u32| -> Vec<Vec<u8>> {
            let mut ip = Ipv6::new(CLIENT6, VIP6, proto);
            [
                (0u16, true, &part[..48]),
                (6, true, &part[48..72]),
                (9, false, &part[72..]),
            ]
            .into_iter()
            .map(|(off, more, bytes)| {
                ip.ext = ext_before.clone();
                ip.ext
                    .push((IPV6_FRAGMENT, Ipv6::fragment_ext(off, more, id)));
                ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(bytes))
            })
            .collect()
        };
    let addrs = Ipv6::new(CLIENT6, VIP6, 6).addrs();
    // The fragmentable part: DSTOPTS (next header TCP or UDP, PadN), then the segment.
    for (proto, l4) in [
        (6u8, tcp(addrs, 4400, 80, TCP_ACK, &[0x5a; 64])),
        (17, udp(addrs, 4401, 53, &[0x5a; 64])),
    ] {
        let mut part = vec![proto];
        part.extend_from_slice(&Ipv6::opts_ext());
        part.extend_from_slice(&l4);
        for (i, f) in fragments(IPV6_DSTOPTS, vec![], &part, 0x99 + u32::from(proto))
            .iter()
            .enumerate()
        {
            check(
                &mut h,
                &format!("proto {proto}: dstopts first in the fragmentable part, fragment {i}"),
                f,
                PASS_UNSUPPORTED,
            );
        }
    }
    // A hop-by-hop header before the fragment header is in the unfragmentable part: the
    // fragments are UDP, balanced to one backend.
    let whole = udp(addrs, 4402, 53, &[0x5a; 80]);
    let got: Vec<_> = fragments(17, vec![(IPV6_HOPOPTS, Ipv6::opts_ext())], &whole, 0x200)
        .iter()
        .enumerate()
        .map(|(i, f)| {
            check(
                &mut h,
                &format!("hop-by-hop, then fragment {i}"),
                f,
                FWD_FRAGMENT,
            )
        })
        .collect();
    assert!(got.iter().all(|g| *g == got[0]), "{got:?}");
    // ICMPv6 fragments all go to the stack, under one reason.
    let icmp = icmp6(addrs, 128, 0, [0, 1, 0, 1], &[0; 80]);
    for (i, f) in fragments(58, vec![], &icmp, 0x300).iter().enumerate() {
        check(&mut h, &format!("icmpv6 fragment {i}"), f, PASS_ICMP);
    }
    // A fragment header cut by the payload length (its last bytes in the Ethernet padding).
    let mut ip = Ipv6::new(CLIENT6, VIP6, 17);
    ip.ext = vec![(IPV6_FRAGMENT, Ipv6::fragment_ext(5, false, 0x400))];
    let mut cut = ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&[0; 16]));
    cut[18..20].copy_from_slice(&4u16.to_be_bytes());
    check(
        &mut h,
        "fragment header beyond the payload",
        &cut,
        DROP_MALFORMED_IPV6,
    );
}

/// Defect 7 of issue 15: a TCP packet that is no opening SYN, of a flow the table does not
/// know, opens a flow only in a service with `sloppy_tcp` (counted apart: mid-stream
/// scheduling is what lets connections survive a failover); without it the stack gets it,
/// as with IPVS. A reset never opens a flow. Neither costs an rr step.
#[test]
fn non_syn_packets_of_unknown_flows_follow_sloppy_tcp() {
    let mut specs = specs();
    // VIP4:80, VIP4:53 (UDP: no such thing as sloppy), VIP6:80, the backup VIP: strict.
    for i in [0, 2, 3, 6] {
        specs[i].sloppy_tcp = false;
    }
    let Some(mut h) = harness(&specs) else { return };
    let xmas = TCP_FIN | TCP_PSH | TCP_URG;

    // Strict: VIP4:80.
    assert_eq!(
        check(
            &mut h,
            "strict: syn",
            &tcp4_to(VIP4, 500, 80, TCP_SYN),
            FWD_NEW_FLOW
        ),
        Some(0)
    );
    for (name, flags) in [
        ("ack", TCP_ACK),
        ("xmas", xmas),
        ("syn+fin", TCP_SYN | TCP_FIN),
        ("no flags", 0),
        ("rst", TCP_RST),
        ("rst+ack", TCP_RST | TCP_ACK),
    ] {
        for _ in 0..2 {
            check(
                &mut h,
                &format!("strict: {name} of an unknown flow"),
                &tcp4_to(VIP4, 501, 80, flags),
                PASS_NOT_SYN,
            );
        }
        assert!(
            !flow4_exists(&h, VIP4, 501, 80),
            "strict: {name} created no flow"
        );
    }
    // No rr step was taken: the next SYN takes b2. And the flow opens with its SYN (a fresh
    // insert, not a flow found there).
    assert_eq!(
        check(
            &mut h,
            "strict: its syn",
            &tcp4_to(VIP4, 501, 80, TCP_SYN),
            FWD_NEW_FLOW
        ),
        Some(1)
    );
    assert_eq!(
        check(
            &mut h,
            "strict: then its ack",
            &tcp4_to(VIP4, 501, 80, TCP_ACK),
            FWD_ESTABLISHED
        ),
        Some(1)
    );
    assert_eq!(
        check(
            &mut h,
            "strict: a known flow's rst",
            &tcp4_to(VIP4, 500, 80, TCP_RST),
            FWD_ESTABLISHED
        ),
        Some(0)
    );
    check(
        &mut h,
        "strict: ack6 of an unknown flow",
        &tcp6_doff(502, TCP_ACK, &[], b"", 5),
        PASS_NOT_SYN,
    );
    check(
        &mut h,
        "strict: syn6",
        &tcp6_doff(502, TCP_SYN, &[], b"", 5),
        FWD_NEW_FLOW,
    );
    check(
        &mut h,
        "strict: udp opens as ever",
        &udp4(503),
        FWD_NEW_FLOW,
    );
    // The service's own verdicts come first: a backup node passes as inactive.
    check(
        &mut h,
        "strict, backup: ack",
        &tcp4_to(VIP4_BACKUP, 504, 80, TCP_ACK),
        PASS_INACTIVE,
    );
    // A flow whose backend was removed: its next ACK is not rescheduled mid-stream.
    let mut gone = specs.clone();
    gone[0].backends.remove(0);
    h.dp.update(&gone).unwrap();
    check(
        &mut h,
        "strict: ack of a removed backend's flow",
        &tcp4_to(VIP4, 500, 80, TCP_ACK),
        PASS_NOT_SYN,
    );
    let moved = check(
        &mut h,
        "strict: its new syn",
        &tcp4_to(VIP4, 500, 80, TCP_SYN),
        FWD_NEW_FLOW,
    );
    assert_ne!(moved, Some(0));

    // Sloppy: VIP4:443 (rr from b1).
    assert_eq!(
        check(
            &mut h,
            "sloppy: ack of an unknown flow",
            &tcp4_to(VIP4, 600, 443, TCP_ACK),
            FWD_NEW_FLOW_MIDSTREAM
        ),
        Some(0)
    );
    assert!(
        flow4_exists(&h, VIP4, 600, 443),
        "sloppy: the ack created a flow"
    );
    assert_eq!(
        check(
            &mut h,
            "sloppy: its next ack",
            &tcp4_to(VIP4, 600, 443, TCP_ACK),
            FWD_ESTABLISHED
        ),
        Some(0)
    );
    assert_eq!(
        check(
            &mut h,
            "sloppy: xmas",
            &tcp4_to(VIP4, 601, 443, xmas),
            FWD_NEW_FLOW_MIDSTREAM
        ),
        Some(1)
    );
    assert_eq!(
        check(
            &mut h,
            "sloppy: xmas again",
            &tcp4_to(VIP4, 601, 443, xmas),
            FWD_ESTABLISHED
        ),
        Some(1)
    );
    assert_eq!(
        check(
            &mut h,
            "sloppy: syn+fin",
            &tcp4_to(VIP4, 602, 443, TCP_SYN | TCP_FIN),
            FWD_NEW_FLOW_MIDSTREAM
        ),
        Some(2)
    );
    for flags in [TCP_RST, TCP_RST | TCP_ACK, TCP_RST | TCP_SYN] {
        check(
            &mut h,
            "sloppy: rst of an unknown flow",
            &tcp4_to(VIP4, 603, 443, flags),
            PASS_NOT_SYN,
        );
        assert!(
            !flow4_exists(&h, VIP4, 603, 443),
            "sloppy: a reset created no flow"
        );
    }
    // No rr step for the resets either: b1 is next.
    assert_eq!(
        check(
            &mut h,
            "sloppy: syn",
            &tcp4_to(VIP4, 603, 443, TCP_SYN),
            FWD_NEW_FLOW
        ),
        Some(0)
    );
    assert_eq!(
        check(
            &mut h,
            "sloppy: a known flow's rst",
            &tcp4_to(VIP4, 600, 443, TCP_RST),
            FWD_ESTABLISHED
        ),
        Some(0)
    );
}

/// Collects the program's aya-log records.
#[derive(Clone, Default)]
struct Records(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Records {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn map_inconsistency_is_passed_and_logged_at_a_limited_rate() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let records = Records::default();
    let mut logger = aya_log::EbpfLogger::init_with_logger(&mut h.ebpf, records.clone()).unwrap();
    // Point the first service's ring (3 slots) at an empty backend slot, behind the
    // planner's back: the program must not forward to it, and must say so, once.
    let spec = specs()[0].clone();
    let (sid, _) = h.dp.ids_of(&spec).unwrap();
    let off = h.dp.current().infos[&sid].ring_off;
    use lb_daemon::dataplane::maps::MapWriter;
    for slot in 0..3 {
        h.dp.writer_mut().update_ring_slot(off + slot, 63).unwrap();
    }
    for sport in 0..5 {
        check(
            &mut h,
            "ring slot names an empty backend",
            &tcp4(10_000 + sport),
            PASS_MAP_ERROR,
        );
    }
    logger.flush();
    let got = records.0.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "one record for five bad packets within a second: {got:?}"
    );
    assert!(got[0].contains("names no usable backend"), "{got:?}");
}

/// The per-CPU flow cache's slot for an IPv4 flow to VIP4:80 from CLIENT4, as lb.rs computes
/// it (`V4::slot` then the mask): the test needs colliding flows.
fn cache_slot_v4(sport: u16, size: u32) -> u32 {
    let src = u32::from_ne_bytes(CLIENT4.octets());
    let dst = u32::from_ne_bytes(VIP4.octets());
    let ports = (u32::from(sport.to_be()) << 16) | u32::from(80u16.to_be());
    let h = (src ^ dst.rotate_left(11) ^ ports ^ 6).wrapping_mul(0x9e37_79b1);
    (h ^ (h >> 16)) & (size - 1)
}

#[test]
fn flow_cache_collisions_and_write_through() {
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let size = small_options().flow_cache;
    // More flows than cache slots: collisions evict each other, every flow keeps its
    // backend all the same (the table behind the cache is the truth).
    let flows: Vec<u16> = (20_000..20_000 + 2 * size as u16).collect();
    let first: Vec<Option<usize>> = flows
        .iter()
        .map(|&p| check(&mut h, "new", &tcp4(p), FWD_NEW_FLOW))
        .collect();
    for (p, b) in flows.iter().zip(&first) {
        assert_eq!(check(&mut h, "again", &tcp4(*p), FWD_ESTABLISHED), *b);
    }
    // Write-through: a flow seen (from the cache) at t=1290 tells the table, so after a
    // colliding flow evicts it from the cache, the table still knows it was alive.
    h.set_clock(1000).unwrap();
    let a = 30_000u16;
    let slot = cache_slot_v4(a, size);
    let b = (30_001..40_000)
        .find(|&p| cache_slot_v4(p, size) == slot)
        .expect("a colliding port");
    let ba = check(&mut h, "flow A", &tcp4(a), FWD_NEW_FLOW);
    let ack_a = tcp4_to(VIP4, a, 80, TCP_ACK);
    check(&mut h, "flow A's handshake", &ack_a, FWD_ESTABLISHED);
    h.set_clock(1290).unwrap();
    assert_eq!(
        check(&mut h, "flow A from the cache", &ack_a, FWD_ESTABLISHED),
        ba
    );
    check(
        &mut h,
        "flow B takes A's cache slot",
        &tcp4(b),
        FWD_NEW_FLOW,
    );
    // TCP's idle timeout is 900 s: 1290 + 800 is fresh only if the table got 1290.
    h.set_clock(2090).unwrap();
    assert_eq!(
        check(&mut h, "flow A from the table", &ack_a, FWD_ESTABLISHED),
        ba
    );
}

/// The connection tables as `lb-daemon status` reads them (`BPF_MAP_LOOKUP_BATCH` over the
/// real maps): flows per backend and generation, only those not idle past their service's
/// timeout; a walk that needs more than one batch sees every entry once.
#[test]
fn flow_tables_count_live_flows_per_backend() {
    use lb_daemon::dataplane::flows::FlowTables;
    let Some(mut h) = harness(&specs()) else {
        return;
    };
    let tables = FlowTables::take(&mut h.ebpf).expect("the flow tables");
    h.set_clock(1000).unwrap();
    // rr over three backends: 2, 2 and 1 TCP flows; one UDP flow; one IPv6 flow.
    let mut want = [0u64; 3];
    for sport in 9000..9005 {
        want[check(&mut h, "tcp", &tcp4(sport), FWD_NEW_FLOW).unwrap()] += 1;
        let ack = tcp4_to(VIP4, sport, 80, TCP_ACK);
        check(&mut h, "tcp handshake", &ack, FWD_ESTABLISHED);
    }
    let udp = check(&mut h, "udp", &udp4(9100), FWD_NEW_FLOW).unwrap();
    // A connection waiting for its ACK: SYN_RECV, 60 s.
    let v6 = check(&mut h, "tcp6", &tcp6(9200), FWD_NEW_FLOW).unwrap();
    let current = h.dp.current().clone();
    let idle_of = |sid: u32| current.infos.get(&sid).map(|i| i.idle_timeout_s);
    let timeouts = lb_daemon::model::LvsTimeouts::default().per_state();
    let per_mac = |counts: &lb_daemon::dataplane::flows::FlowCounts| {
        let mut per = [0u64; 4];
        for ((bid, generation), n) in counts {
            let b = current.backends[bid];
            assert_eq!(b.generation, *generation);
            per[B.iter().position(|m| *m == b.mac).unwrap()] += n;
        }
        per
    };
    let mut expect = [want[0], want[1], want[2], 0];
    expect[udp] += 1;
    expect[v6] += 1;
    let counts = |now| tables.counts(now, idle_of, &timeouts).unwrap();
    assert_eq!(per_mac(&counts(1000)), expect);
    // 61 s on, the connection still waiting for its ACK no longer counts.
    expect[v6] -= 1;
    assert_eq!(per_mac(&counts(1061)), expect);
    // 301 s on, the UDP flow (300 s timeout) no longer counts; the established TCP ones
    // (900 s) do.
    expect[udp] -= 1;
    assert_eq!(per_mac(&counts(1301)), expect);
    assert_eq!(per_mac(&counts(2000)), [0; 4]);
    // A walk in many calls (64 entries each here) sees every entry once. (ACKs: sloppy TCP
    // opens them established, where SYNs past the table's embryonic share would go out
    // untracked.)
    for i in 0..3000u16 {
        h.run(&tcp4_to(VIP4, 20000 + i, 80, TCP_ACK)).unwrap();
    }
    let tables = tables.with_batch_size(64);
    let mut seen = 0;
    tables.for_each(|_| seen += 1).unwrap();
    assert_eq!(seen, 7 + 3000);
}

/// The events of the connection-sync ring, as bytes, oldest first.
fn sync_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(item.to_vec());
    }
    out
}

fn sync_ring(h: &mut XdpHarness) -> aya::maps::RingBuf<aya::maps::MapData> {
    let map = h
        .ebpf
        .take_map(lb_common::names::SYNC_EVENTS)
        .expect("the program has a sync ring");
    aya::maps::RingBuf::try_from(map).expect("a ring buffer")
}

/// `SyncEvent4` as the program writes it (little-endian words: the kind, the `FlowValue`
/// (backend, generation, service, last seen, state), the key as in `FLOWS4`).
fn event4(kind: u32, value: [u32; 5], key: [u8; 16]) -> Vec<u8> {
    let mut b: Vec<u8> = std::iter::once(kind)
        .chain(value)
        .flat_map(u32::to_le_bytes)
        .collect();
    b.extend_from_slice(&key);
    b
}

fn flow_key4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&src.octets());
    k[4..8].copy_from_slice(&dst.octets());
    k[8..10].copy_from_slice(&sport.to_be_bytes());
    k[10..12].copy_from_slice(&dport.to_be_bytes());
    k[12] = proto;
    k
}

/// Connection sync (`lb-ebpf/src/sync.rs`): a new flow writes one event with its exact
/// entry; its packets write nothing until its last-seen second enters a new refresh window
/// (2^3 s here), then one refresh; a persistence template is an event of its own; and with
/// sync off the ring stays empty.
#[test]
fn sync_events_for_new_flows_refreshes_and_templates() {
    if !require_root("xdp fixtures") {
        return;
    }
    pin_cpu0();
    let opts = lb_daemon::dataplane::program::LoadOptions {
        sync: Some(lb_daemon::dataplane::program::SyncLoad {
            ring_bytes: 1 << 16,
            refresh_shift: 3,
        }),
        ..small_options()
    };
    let mut h = XdpHarness::new(opts).expect("load the XDP object");
    let specs = specs();
    h.dp.update(&specs).expect("write the maps");
    let mut ring = sync_ring(&mut h);
    h.set_clock(1000).unwrap();

    let i = check(&mut h, "new flow", &tcp4(40000), FWD_NEW_FLOW).unwrap();
    let (sid, bids) = h.dp.ids_of(&specs[0]).unwrap();
    let gen = h.dp.current().backends[&bids[i]].generation;
    let key = flow_key4(CLIENT4, VIP4, 40000, 80, 6);
    assert_eq!(
        sync_events(&mut ring),
        [event4(
            lb_common::SYNC_EV_FLOW,
            [bids[i], gen, sid, 1000, conn_state::SYN_RECV],
            key
        )],
        "one event, the flow's entry"
    );
    let ack = tcp4_to(VIP4, 40000, 80, TCP_ACK);
    check(&mut h, "established", &ack, FWD_ESTABLISHED);
    h.set_clock(1007).unwrap();
    check(&mut h, "established, same window", &ack, FWD_ESTABLISHED);
    assert!(
        sync_events(&mut ring).is_empty(),
        "no refresh within a window"
    );
    h.set_clock(1008).unwrap();
    check(&mut h, "established, next window", &ack, FWD_ESTABLISHED);
    check(
        &mut h,
        "established, next window again",
        &ack,
        FWD_ESTABLISHED,
    );
    assert_eq!(
        sync_events(&mut ring),
        [event4(
            lb_common::SYNC_EV_FLOW | lb_common::SYNC_EV_F_REFRESH,
            [bids[i], gen, sid, 1008, conn_state::ESTABLISHED],
            key
        )],
        "one refresh per window"
    );

    // A persistent service: the flow, then its client's template (the /24, the service).
    let j = check(
        &mut h,
        "persistent",
        &tcp4_from(CLIENT4, 9000, 443),
        FWD_NEW_FLOW,
    )
    .unwrap();
    let (psid, pbids) = h.dp.ids_of(&specs[7]).unwrap();
    let pgen = h.dp.current().backends[&pbids[j]].generation;
    let value = [pbids[j], pgen, psid, 1008, conn_state::SYN_RECV];
    let template = [pbids[j], pgen, psid, 1008, conn_state::NONE];
    let mut net = [0u8; 16];
    net[..4].copy_from_slice(&[198, 51, 100, 0]);
    assert_eq!(
        sync_events(&mut ring),
        [
            event4(
                lb_common::SYNC_EV_FLOW,
                value,
                flow_key4(CLIENT4, VIP4_PERSIST, 9000, 443, 6)
            ),
            event4(lb_common::SYNC_EV_PERSIST, template, net),
        ]
    );
    // The template used again in a later window: the new flow, and the template refreshed.
    h.set_clock(1016).unwrap();
    check(
        &mut h,
        "persistent again",
        &tcp4_from(CLIENT4, 9001, 443),
        FWD_NEW_FLOW,
    );
    let value = [pbids[j], pgen, psid, 1016, conn_state::SYN_RECV];
    let template = [pbids[j], pgen, psid, 1016, conn_state::NONE];
    assert_eq!(
        sync_events(&mut ring),
        [
            event4(
                lb_common::SYNC_EV_PERSIST | lb_common::SYNC_EV_F_REFRESH,
                template,
                net
            ),
            event4(
                lb_common::SYNC_EV_FLOW,
                value,
                flow_key4(CLIENT4, VIP4_PERSIST, 9001, 443, 6)
            ),
        ]
    );

    // Sync off (the daemon's default): the same traffic leaves the ring empty.
    let Some(mut off) = harness(&specs) else {
        return;
    };
    let mut ring = sync_ring(&mut off);
    off.set_clock(1000).unwrap();
    check(&mut off, "new flow, sync off", &tcp4(40000), FWD_NEW_FLOW);
    check(&mut off, "handshake, sync off", &ack, FWD_ESTABLISHED);
    off.set_clock(1100).unwrap();
    check(&mut off, "established, sync off", &ack, FWD_ESTABLISHED);
    check(
        &mut off,
        "persistent, sync off",
        &tcp4_from(CLIENT4, 9000, 443),
        FWD_NEW_FLOW,
    );
    assert!(sync_events(&mut ring).is_empty());
}

/// A ring with no room: the program forwards as ever and counts each event it drops.
#[test]
fn a_full_sync_ring_drops_and_counts_events() {
    if !require_root("xdp fixtures") {
        return;
    }
    pin_cpu0();
    let opts = lb_daemon::dataplane::program::LoadOptions {
        sync: Some(lb_daemon::dataplane::program::SyncLoad {
            ring_bytes: 4096,
            refresh_shift: 3,
        }),
        ..small_options()
    };
    let mut h = XdpHarness::new(opts).expect("load the XDP object");
    h.dp.update(&specs()).expect("write the maps");
    let mut ring = sync_ring(&mut h);
    for sport in 0..100 {
        check(&mut h, "new flow", &tcp4(20000 + sport), FWD_NEW_FLOW);
    }
    let kept = sync_events(&mut ring).len() as u64;
    let stats: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(h.ebpf.map(lb_common::names::SYNC_STATS).unwrap())
            .unwrap();
    let lost: u64 = stats
        .get(&lb_common::sync_stat::LOST, 0)
        .unwrap()
        .iter()
        .sum();
    // A 36-byte event takes 48 bytes of the ring (8 of header, rounded to 8).
    assert_eq!(kept, 4096 / 48, "what fits");
    assert_eq!(kept + lost, 100, "every other event is counted as lost");
}

/// Connection sync end to end through the real program on both sides, without a network: a
/// flow the master's program creates goes through its event ring, the sender, the wire
/// codec and the backup's receiver into the backup's table. The backup's ids differ (it
/// added its services in another order), and its rr would pick another backend for a new
/// flow. While backup it passes the flow's packets; once its service is active it forwards
/// them to the master's backend at once, as an established flow. An entry for a backend the
/// backup has removed is rescheduled, and a master never lets a synced entry overwrite its
/// own flow.
#[test]
fn synced_flows_reach_the_backup_table_and_survive_the_takeover() {
    use std::time::Instant;

    use lb_daemon::{
        dataplane::flows::FlowTables,
        sync::{
            codec::Key,
            index::Index,
            receiver::{Receiver, ReceiverConfig},
            sender::{parse_event, Sender, SenderConfig},
        },
    };
    if !require_root("xdp fixtures") {
        return;
    }
    pin_cpu0();
    let key = Key::new(b"a shared key of thirty-two bytes").unwrap();
    let sync = lb_daemon::dataplane::program::LoadOptions {
        sync: Some(lb_daemon::dataplane::program::SyncLoad {
            ring_bytes: 1 << 16,
            refresh_shift: 3,
        }),
        ..small_options()
    };
    // The master: the usual services, active.
    let mut a = XdpHarness::new(sync).expect("load the XDP object");
    let specs = specs();
    a.dp.update(&specs).unwrap();
    let mut ring = sync_ring(&mut a);
    a.set_clock(5000).unwrap();
    // The backup: the same services, the other way round, inactive.
    let mut b = XdpHarness::new(small_options()).expect("load the XDP object");
    let backup: Vec<ServiceSpec> = specs
        .iter()
        .rev()
        .map(|s| ServiceSpec {
            active: false,
            aliases: Vec::new(),
            ..s.clone()
        })
        .collect();
    b.dp.update(&backup).unwrap();
    b.set_clock(70).unwrap();
    let tables = FlowTables::take(&mut b.ebpf).unwrap();
    assert_ne!(
        a.dp.ids_of(&specs[0]).unwrap().0,
        b.dp.ids_of(&backup[7]).unwrap().0,
        "the nodes' ids differ"
    );

    // Three flows on the master: rr sends them to b1, b2, b3.
    let sent: Vec<usize> = (0..3)
        .map(|i| check(&mut a, "master: new flow", &tcp4(41000 + i), FWD_NEW_FLOW).unwrap())
        .collect();
    assert_eq!(sent, [0, 1, 2]);
    let now = Instant::now();
    let mut sender = Sender::new(
        SenderConfig {
            sync_id: 38,
            boot_id: 1,
            max_message: 1472,
            max_rate: 1 << 30,
            queue_limit: 8,
        },
        key.clone(),
        now,
    );
    let ia = Index::build(&a.dp, |_| true);
    let first = sync_events(&mut ring);
    for ev in &first {
        sender.push_event(&parse_event(ev).unwrap(), &ia, 5003, 10);
    }
    sender.flush(10);
    let msg = sender.pop(now).unwrap();
    assert_eq!(
        msg.len(),
        20 + 3 * 14 + 3 * 12 + 16,
        "three references, three entries"
    );

    let mut receiver = Receiver::new(
        ReceiverConfig {
            sync_id: 38,
            peers: vec![],
            own: vec![],
            boot_id: 2,
        },
        key,
    );
    let ib = Index::build(&b.dp, |_| true);
    let from: IpAddr = "192.0.2.2".parse().unwrap();
    receiver.on_datagram(from, &msg, &ib, 70, 11, now);
    receiver.install(&tables, false).unwrap();
    assert_eq!(receiver.stats.installed, 3);
    // A replay of the same message is refused.
    receiver.on_datagram(from, &msg, &ib, 70, 12, now);
    assert_eq!(receiver.stats.dropped.get("replay_duplicate"), Some(&1));

    // Backup: passed, never forwarded.
    for i in 0..3 {
        let ack = tcp4_to(VIP4, 41000 + i, 80, TCP_ACK);
        check(&mut b, "backup: synced flow", &ack, PASS_INACTIVE);
    }
    // Takeover: b1 removed meanwhile (its flow reschedules), the others go where the
    // master sent them, as established flows.
    let mut active: Vec<ServiceSpec> = backup
        .iter()
        .map(|s| ServiceSpec {
            active: true,
            aliases: Vec::new(),
            ..s.clone()
        })
        .collect();
    active[7].backends.remove(0);
    b.dp.update(&active).unwrap();
    for (i, &backend) in sent.iter().enumerate().skip(1) {
        let ack = tcp4_to(VIP4, 41000 + i as u16, 80, TCP_ACK);
        let got = check(&mut b, "new master: synced flow", &ack, FWD_ESTABLISHED);
        assert_eq!(got, Some(backend), "the master's backend");
    }
    let ack = tcp4_to(VIP4, 41000, 80, TCP_ACK);
    let got = check(
        &mut b,
        "new master: flow of a removed backend",
        &ack,
        FWD_NEW_FLOW_MIDSTREAM,
    );
    assert_ne!(got, Some(0));

    // A master keeps its own flows: the same entries again change nothing.
    let mut sender2 = Sender::new(
        SenderConfig {
            sync_id: 38,
            boot_id: 3,
            max_message: 1472,
            max_rate: 1 << 30,
            queue_limit: 8,
        },
        Key::new(b"a shared key of thirty-two bytes").unwrap(),
        now,
    );
    let before = receiver.stats.installed;
    // Two more: rr sends them to b1 (which the backup removed) and b2.
    check(&mut a, "master: another flow", &tcp4(41003), FWD_NEW_FLOW);
    check(&mut a, "master: another flow", &tcp4(41004), FWD_NEW_FLOW);
    // The three flows it has (its own now) and the two it has not.
    for ev in first.iter().chain(&sync_events(&mut ring)) {
        sender2.push_event(&parse_event(ev).unwrap(), &ia, 5003, 20);
    }
    sender2.flush(20);
    let msg = sender2.pop(now).unwrap();
    let ib = Index::build(&b.dp, |_| true);
    receiver.on_datagram(from, &msg, &ib, 70, 21, now);
    receiver.install(&tables, true).unwrap();
    assert_eq!(receiver.stats.installed, before + 1, "41004");
    assert_eq!(receiver.stats.kept_own, 2, "41001 and 41002");
    assert_eq!(
        receiver.stats.dropped.get("unknown_backend"),
        Some(&2),
        "41000 and 41003 name b1, which is gone"
    );
    let again = tcp4_to(VIP4, 41001, 80, TCP_ACK);
    assert_eq!(
        check(&mut b, "own flow kept", &again, FWD_ESTABLISHED),
        Some(sent[1])
    );
}
