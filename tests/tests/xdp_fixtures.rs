//! The XDP program on exact bytes: every case is a frame in, a verdict, the exact frame out
//! and the reason counter it must bump, run through BPF_PROG_TEST_RUN on the real object with
//! maps written by the daemon's planner.
//!
//! Frames shorter than an Ethernet header cannot be tested this way: the kernel refuses
//! BPF_PROG_TEST_RUN input below ETH_HLEN (14 bytes) before the program runs.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::reason::{self, *};
use lb_daemon::dataplane::{BackendSpec, Proto, Scheduler, ServiceSpec};
use lb_tests::{
    netns::require_root,
    packet::*,
    xdp::{small_options, RunOutput, XdpHarness, LB_MAC},
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
const B: [[u8; 6]; 4] = [
    [0x02, 0, 0, 0, 0, 0xb1],
    [0x02, 0, 0, 0, 0, 0xb2],
    [0x02, 0, 0, 0, 0, 0xb3],
    [0x02, 0, 0, 0, 0, 0xb4],
];
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP4_ALL_PORTS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
const VIP4_BACKUP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);
const VIP4_PERSIST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 103);
const VIP4_SH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 104);
const VIP4_MH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 105);
const NODE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);

fn backend(i: usize, port: u16, weight: u32) -> BackendSpec {
    BackendSpec {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8)), port),
        weight,
        mac: Some(B[i]),
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
        persistence_timeout: 0,
        persistence_prefix: 32,
        idle_timeout: lb_daemon::dataplane::default_idle_timeout(proto),
        active: true,
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

/// Pins the calling thread to CPU 0: rr state is per CPU, and BPF_PROG_TEST_RUN runs on the
/// caller's CPU, so this makes the rr order of a test exact.
fn pin_cpu0() {
    // SAFETY: plain syscall on a zeroed, then filled, cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
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
    // A first packet that is no SYN (a flow from before a failover) is a new flow too.
    let ack = tcp4_to(VIP4, 1502, 80, TCP_ACK);
    assert_eq!(
        check(&mut h, "ack of an unknown flow", &ack, FWD_NEW_FLOW),
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
    assert_eq!(
        check(&mut h, "drained keeps flow", &tcp4(7000), FWD_ESTABLISHED),
        Some(0)
    );
    for sport in 7100..7110 {
        assert_ne!(
            check(&mut h, "no new flow to drained", &tcp4(sport), FWD_NEW_FLOW),
            Some(0)
        );
    }
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
        check(&mut h, "after add", &tcp4(7000), FWD_ESTABLISHED),
        Some(0)
    );
    assert_eq!(
        check(&mut h, "after add", &tcp4(7002), FWD_ESTABLISHED),
        Some(2)
    );
    assert_eq!(
        check(&mut h, "after add", &tcp4(7001), FWD_ESTABLISHED),
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
    // TCP has its own, longer timeout (900 s): the same idle time keeps a TCP flow.
    let t = check(&mut h, "tcp new", &tcp4(8001), FWD_NEW_FLOW);
    h.set_clock(1881 + 301).unwrap();
    assert_eq!(
        check(&mut h, "tcp idle 301 s", &tcp4(8001), FWD_ESTABLISHED),
        t
    );
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
    // Headers that are whole but lie.
    let good = tcp4(1);
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    check(&mut h, "IHL 4", &ihl4, DROP_MALFORMED_IPV4);
    let mut long = good.clone();
    long[16..18].copy_from_slice(&1500u16.to_be_bytes());
    check(
        &mut h,
        "total length beyond the frame",
        &long,
        DROP_MALFORMED_IPV4,
    );
    let mut short = good.clone();
    short[16..18].copy_from_slice(&19u16.to_be_bytes());
    check(
        &mut h,
        "total length below IHL",
        &short,
        DROP_MALFORMED_IPV4,
    );
    let mut ver = good.clone();
    ver[14] = 0x65;
    check(
        &mut h,
        "version 6 in an IPv4 ethertype",
        &ver,
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
    let ring_size = h.dp.limits().ring_size;
    use lb_daemon::dataplane::maps::MapWriter;
    for slot in 0..3 {
        h.dp.writer_mut()
            .update_ring_slot(sid * ring_size + slot, 63)
            .unwrap();
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
    h.set_clock(1290).unwrap();
    assert_eq!(
        check(&mut h, "flow A from the cache", &tcp4(a), FWD_ESTABLISHED),
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
        check(&mut h, "flow A from the table", &tcp4(a), FWD_ESTABLISHED),
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
    }
    let udp = check(&mut h, "udp", &udp4(9100), FWD_NEW_FLOW).unwrap();
    let v6 = check(&mut h, "tcp6", &tcp6(9200), FWD_NEW_FLOW).unwrap();
    let current = h.dp.current().clone();
    let idle_of = |sid: u32| current.infos.get(&sid).map(|i| i.idle_timeout_s);
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
    assert_eq!(per_mac(&tables.counts(1000, idle_of).unwrap()), expect);
    // 301 s on, the UDP flow (300 s timeout) no longer counts; the TCP ones (900 s) do.
    expect[udp] -= 1;
    assert_eq!(per_mac(&tables.counts(1301, idle_of).unwrap()), expect);
    assert_eq!(per_mac(&tables.counts(2000, idle_of).unwrap()), [0; 4]);
    // A walk in many calls (64 entries each here) sees every entry once.
    for i in 0..1500u16 {
        h.run(&tcp4(20000 + i)).unwrap();
        h.run(&tcp6(20000 + i)).unwrap();
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

/// `SyncEvent4` as the program writes it (little-endian words, the key as in `FLOWS4`).
fn event4(kind: u32, value: [u32; 4], key: [u8; 16]) -> Vec<u8> {
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
            [bids[i], gen, sid, 1000],
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
            [bids[i], gen, sid, 1008],
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
    let value = [pbids[j], pgen, psid, 1008];
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
            event4(lb_common::SYNC_EV_PERSIST, value, net),
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
    let value = [pbids[j], pgen, psid, 1016];
    assert_eq!(
        sync_events(&mut ring),
        [
            event4(
                lb_common::SYNC_EV_PERSIST | lb_common::SYNC_EV_F_REFRESH,
                value,
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
        FWD_NEW_FLOW,
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
