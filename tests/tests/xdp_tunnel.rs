//! TUN forwarding on the real XDP object through BPF_PROG_TEST_RUN, byte for byte: IPIP,
//! GUE and GRE, IPv4 and IPv6, the next hop from the kernel's FIB (a router's MAC), the
//! path's MTU (ICMP "fragmentation needed" / "packet too big" back to the client, or a
//! counted drop without DF), a next hop without a neighbour entry, no route, and a route
//! through another interface (XDP_REDIRECT).
//!
//! The FIB is a network namespace's own: each test builds one (a veth towards a "router"
//! whose neighbour entry is permanent, so its MAC is known; routes with a small MTU, without
//! a neighbour, unreachable) and runs the program as if the frames arrived on its interface.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::reason::{self, *};
use lb_daemon::{
    dataplane::{BackendSpec, ServiceSpec, TUNNEL_MAC},
    model::{Forward, Proto, Scheduler, Tunnel, TunnelKind},
};
use lb_tests::{
    netns::{require_root, unique_prefix, Netns},
    packet::{
        ether, icmp4, icmp6, ipv4_fix_checksum, tcp, Ipv4, Ipv6, ETH_P_IP, ETH_P_IPV6, TCP_ACK,
        TCP_SYN,
    },
    xdp::{small_options, RunOutput, XdpHarness, LB_MAC, MH_TABLE_SIZE},
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
/// The router's MAC (a permanent neighbour entry), and the host's behind the second
/// interface.
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const NODE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const GUE_PORT: u16 = 6080;

/// The namespace whose FIB the program asks, and the interfaces' indexes and MACs.
struct Fib {
    ns: Netns,
    lb0: u32,
    lb0_mac: [u8; 6],
    lb1_mac: [u8; 6],
}

impl Fib {
    fn new() -> Fib {
        let ns = Netns::new(&format!("{}lb", unique_prefix("tun"))).expect("namespace");
        let ip = |args: &[&str]| {
            ns.ip(args)
                .unwrap_or_else(|e| panic!("ip {}: {e:#}", args.join(" ")))
        };
        ip(&["link", "add", "lb0", "type", "veth", "peer", "name", "rt0"]);
        ip(&["link", "add", "lb1", "type", "veth", "peer", "name", "rt1"]);
        for dev in ["lb0", "rt0", "lb1", "rt1"] {
            ip(&["link", "set", dev, "up"]);
        }
        ns.sysctls(&[
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ])
        .expect("forwarding on (bpf_fib_lookup refuses otherwise)");
        ip(&["addr", "add", "192.0.2.2/24", "dev", "lb0"]);
        ip(&["addr", "add", "2001:db8::2/64", "dev", "lb0", "nodad"]);
        ip(&["addr", "add", "198.51.100.129/25", "dev", "lb1"]);
        let router = "02:00:00:00:00:aa";
        ip(&[
            "neigh",
            "add",
            "192.0.2.1",
            "lladdr",
            router,
            "dev",
            "lb0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "neigh",
            "add",
            "2001:db8::1",
            "lladdr",
            router,
            "dev",
            "lb0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "neigh",
            "add",
            "198.51.100.130",
            "lladdr",
            "02:00:00:00:00:bb",
            "dev",
            "lb1",
            "nud",
            "permanent",
        ]);
        ip(&["route", "add", "203.0.113.0/25", "via", "192.0.2.1"]);
        ip(&[
            "route",
            "add",
            "203.0.113.128/25",
            "via",
            "192.0.2.1",
            "mtu",
            "lock",
            "1400",
        ]);
        ip(&["route", "add", "2001:db8:3::/64", "via", "2001:db8::1"]);
        ip(&[
            "route",
            "add",
            "2001:db8:4::/64",
            "via",
            "2001:db8::1",
            "mtu",
            "lock",
            "1400",
        ]);
        // Too small for IPv6 once wrapped: 1300 less 40 is below 1280.
        ip(&[
            "route",
            "add",
            "2001:db8:5::/64",
            "via",
            "2001:db8::1",
            "mtu",
            "lock",
            "1300",
        ]);
        // A gateway nobody resolved, and no route at all.
        ip(&["route", "add", "203.0.113.200/32", "via", "192.0.2.9"]);
        ip(&["route", "add", "unreachable", "203.0.113.201/32"]);
        let lb0 = ns.ifindex("lb0").unwrap();
        let lb0_mac = ns.mac("lb0").unwrap();
        let lb1_mac = ns.mac("lb1").unwrap();
        Fib {
            ns,
            lb0,
            lb0_mac,
            lb1_mac,
        }
    }
}

fn tunnel(kind: TunnelKind, v4: bool) -> Tunnel {
    Tunnel {
        kind,
        port: if kind == TunnelKind::Gue { GUE_PORT } else { 0 },
        ttl: 64,
        source: Some(if v4 { NODE4.into() } else { NODE6.into() }),
    }
}

/// A one-server rr service at `vip`:80 whose real server `rs` is reached by `t` (DR without).
fn service(vip: IpAddr, rs: IpAddr, t: Option<Tunnel>) -> ServiceSpec {
    ServiceSpec {
        vip,
        port: 80,
        proto: Proto::Tcp,
        sched: Scheduler::Rr,
        hash_port: false,
        sloppy_tcp: true,
        mh_table_size: MH_TABLE_SIZE,
        persistence_timeout: 0,
        persistence_prefix: if vip.is_ipv4() { 32 } else { 128 },
        idle_timeout: 900,
        active: true,
        aliases: Vec::new(),
        backends: vec![BackendSpec {
            addr: SocketAddr::new(rs, 80),
            weight: 1,
            mac: Some(if t.is_some() {
                TUNNEL_MAC
            } else {
                [2, 0, 0, 0, 0, 0xb1]
            }),
            thresholds: Default::default(),
            forward: t.map_or(Forward::Dr, Forward::Tun),
        }],
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
}

fn rs4(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, a + b))
}

fn rs6(net: u16, last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, last))
}

/// A TCP packet from the client to `vip`:80, `payload` bytes of data; DF set (IPv4).
fn packet(vip: IpAddr, sport: u16, flags: u8, payload: usize, df: bool) -> Vec<u8> {
    let data = vec![0x5a; payload];
    match vip {
        IpAddr::V4(vip) => {
            let mut ip = Ipv4::new(CLIENT4, vip, 6);
            if !df {
                ip.frag = 0;
            }
            ip.build(&tcp(ip.addrs(), sport, 80, flags, &data))
        }
        IpAddr::V6(vip) => {
            let ip = Ipv6::new(CLIENT6, vip, 6);
            ip.build(&tcp(ip.addrs(), sport, 80, flags, &data))
        }
    }
}

fn frame(l3: &[u8]) -> Vec<u8> {
    let ty = if l3[0] >> 4 == 4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    ether(LB_MAC, CLIENT_MAC, None, ty, l3)
}

/// What the program must send for `inner` through `t` to `rs`: the outer header and the
/// tunnel's, then `inner` unchanged. GUE's source port is the flow's hash: taken from
/// `out` once checked to lie in 49152..=65535.
fn wrapped(
    inner: &[u8],
    rs: IpAddr,
    t: TunnelKind,
    dmac: [u8; 6],
    smac: [u8; 6],
    out: &[u8],
) -> Vec<u8> {
    let v4 = rs.is_ipv4();
    let inner_proto = if v4 { 4 } else { 41 };
    let (proto, mut body) = match t {
        TunnelKind::Ipip => (inner_proto, Vec::new()),
        TunnelKind::Gre => (
            47,
            vec![
                0,
                0,
                if v4 { 0x08 } else { 0x86 },
                if v4 { 0 } else { 0xdd },
            ],
        ),
        TunnelKind::Gue => {
            let at = 14 + if v4 { 20 } else { 40 };
            let sport = u16::from_be_bytes([out[at], out[at + 1]]);
            assert!(sport >= 0xc000, "GUE source port {sport} below 49152");
            let mut u = sport.to_be_bytes().to_vec();
            u.extend_from_slice(&GUE_PORT.to_be_bytes());
            u.extend_from_slice(&((8 + 4 + inner.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0, 0, inner_proto, 0, 0]);
            (17, u)
        }
    };
    body.extend_from_slice(inner);
    let l3 = match rs {
        IpAddr::V4(rs) => {
            let mut ip = Ipv4::new(NODE4, rs, proto);
            // Identification and DF copied from the inner header.
            ip.id = u16::from_be_bytes([inner[4], inner[5]]);
            ip.frag = u16::from_be_bytes([inner[6], inner[7]]) & 0x4000;
            ip.build(&body)
        }
        IpAddr::V6(rs) => Ipv6::new(NODE6, rs, proto).build(&body),
    };
    let ty = if v4 { ETH_P_IP } else { ETH_P_IPV6 };
    ether(dmac, smac, None, ty, &l3)
}

fn run(h: &mut XdpHarness, fib: &Fib, frame: &[u8]) -> (RunOutput, Vec<&'static str>) {
    let before = h.dp.writer().reason_counters().unwrap();
    let out = h.run_on(frame, fib.lb0, 1).expect("test run");
    let after = h.dp.writer().reason_counters().unwrap();
    let bumped = (0..reason::COUNT)
        .filter(|&r| after[r as usize].packets != before[r as usize].packets)
        .map(reason::name)
        .collect();
    (out, bumped)
}

fn harness(fib: &Fib, specs: &[ServiceSpec]) -> XdpHarness {
    let _ = fib;
    let mut h = XdpHarness::new(small_options()).expect("load the XDP object");
    h.dp.update(specs).expect("write the maps");
    h.set_clock(1000).unwrap();
    h
}

#[test]
fn ipip_gue_and_gre_wrap_v4_and_v6_exactly() {
    if !require_root("ipip_gue_and_gre_wrap_v4_and_v6_exactly") {
        return;
    }
    let fib = Fib::new();
    let kinds = [TunnelKind::Ipip, TunnelKind::Gue, TunnelKind::Gre];
    let mut specs = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        specs.push(service(
            v4(100 + i as u8),
            rs4(11, i as u8),
            Some(tunnel(*k, true)),
        ));
        specs.push(service(
            v6(0x100 + i as u16),
            rs6(3, 0x11 + i as u16),
            Some(tunnel(*k, false)),
        ));
    }
    fib.ns
        .run_in(|| {
            let mut h = harness(&fib, &specs);
            for spec in &specs {
                let rs = spec.backends[0].addr.ip();
                let kind = spec.backends[0].forward.tunnel().unwrap().kind;
                // The opening SYN (a new flow), then the ACK (the flow cache's short path);
                // a connection the table does not know (sloppy TCP), then its next segment.
                for (sport, flags, want) in [
                    (40000, TCP_SYN, "fwd_new_flow"),
                    (40000, TCP_ACK, "fwd_established"),
                    (40001, TCP_ACK, "fwd_new_flow_midstream"),
                    (40001, TCP_ACK, "fwd_established"),
                ] {
                    let inner = packet(spec.vip, sport, flags, 10, true);
                    let (out, bumped) = run(&mut h, &fib, &frame(&inner));
                    assert_eq!(out.verdict, XDP_TX, "{kind:?} to {rs}: {bumped:?}");
                    assert_eq!(bumped, [want], "{kind:?} to {rs}");
                    let expect = wrapped(&inner, rs, kind, ROUTER_MAC, fib.lb0_mac, &out.data);
                    assert_eq!(out.data, expect, "{kind:?} to {rs}: the wrapped frame");
                }
            }
        })
        .unwrap();
}

#[test]
fn a_vlan_tag_and_a_direct_routing_neighbour_stay_as_they_were() {
    if !require_root("a_vlan_tag_and_a_direct_routing_neighbour_stay_as_they_were") {
        return;
    }
    let fib = Fib::new();
    let mut mixed = service(v4(110), rs4(11, 0), Some(tunnel(TunnelKind::Ipip, true)));
    mixed.backends.push(BackendSpec {
        addr: SocketAddr::new(v4(12), 80),
        weight: 1,
        mac: Some([2, 0, 0, 0, 0, 0xb2]),
        thresholds: Default::default(),
        forward: Forward::Dr,
    });
    fib.ns
        .run_in(|| {
            let mut h = harness(&fib, std::slice::from_ref(&mixed));
            // rr: the first flow to the TUN server, the second to the DR one.
            let inner = packet(mixed.vip, 40001, TCP_SYN, 0, true);
            let tagged = ether(LB_MAC, CLIENT_MAC, Some(7), ETH_P_IP, &inner);
            let (out, _) = run(&mut h, &fib, &tagged);
            assert_eq!(out.verdict, XDP_TX);
            let mut expect = wrapped(
                &inner,
                rs4(11, 0),
                TunnelKind::Ipip,
                ROUTER_MAC,
                fib.lb0_mac,
                &out.data,
            );
            expect.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
            assert_eq!(
                out.data, expect,
                "the tag between the MACs and the outer header"
            );
            let inner = packet(mixed.vip, 40002, TCP_SYN, 0, true);
            let (out, _) = run(&mut h, &fib, &frame(&inner));
            assert_eq!(out.verdict, XDP_TX);
            assert_eq!(
                out.data,
                ether([2, 0, 0, 0, 0, 0xb2], LB_MAC, None, ETH_P_IP, &inner),
                "direct routing: only the MACs change"
            );
        })
        .unwrap();
}

#[test]
fn too_big_for_the_path_is_answered_with_icmp_from_the_vip() {
    if !require_root("too_big_for_the_path_is_answered_with_icmp_from_the_vip") {
        return;
    }
    let fib = Fib::new();
    let specs = [
        // The routes to 203.0.113.128/25 and 2001:db8:4::/64 have MTU 1400, to
        // 2001:db8:5::/64 1300.
        service(v4(120), rs4(140, 0), Some(tunnel(TunnelKind::Ipip, true))),
        service(v4(121), rs4(141, 0), Some(tunnel(TunnelKind::Gue, true))),
        service(
            v6(0x120),
            rs6(4, 0x11),
            Some(tunnel(TunnelKind::Ipip, false)),
        ),
        service(
            v6(0x121),
            rs6(5, 0x11),
            Some(tunnel(TunnelKind::Ipip, false)),
        ),
    ];
    fib.ns
        .run_in(|| {
            let mut h = harness(&fib, &specs);
            // IPv4, DF: 1400 bytes + 20 do not fit 1400: "fragmentation needed", MTU 1380.
            let inner = packet(specs[0].vip, 40010, TCP_ACK, 1360, true);
            assert_eq!(inner.len(), 1400);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_TX, vec!["tx_too_big"]));
            let IpAddr::V4(vip) = specs[0].vip else {
                unreachable!()
            };
            let mut ip = Ipv4::new(vip, CLIENT4, 1);
            ip.id = 0;
            ip.frag = 0;
            let mut l3 = ip.build(&icmp4(3, 4, [0, 0, 0x05, 0x64], &inner[..28]));
            l3[1] = 0xc0;
            let mut expect = ether(CLIENT_MAC, LB_MAC, None, ETH_P_IP, &l3);
            ipv4_fix_checksum(&mut expect, 14);
            assert_eq!(
                out.data, expect,
                "ICMP 3/4 from the VIP, MTU 1380, quoting 28 bytes"
            );
            // Its size fits: the same flow's packet of 1380 goes through.
            let inner = packet(specs[0].vip, 40010, TCP_ACK, 1340, true);
            let (out, _) = run(&mut h, &fib, &frame(&inner));
            assert_eq!(out.verdict, XDP_TX);
            assert_eq!(out.data.len(), 14 + 20 + 1380);
            // GUE takes 32 bytes: 1369 does not fit, the MTU said is 1368.
            let inner = packet(specs[1].vip, 40011, TCP_ACK, 1329, true);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_TX, vec!["tx_too_big"]));
            assert_eq!(&out.data[14 + 20 + 6..14 + 20 + 8], &1368u16.to_be_bytes());
            // Without DF it cannot be answered (the client does not ask for it) nor
            // fragmented: counted and dropped.
            let inner = packet(specs[0].vip, 40012, TCP_ACK, 1360, false);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_DROP, vec!["drop_too_big"]));
            // IPv6: 1400 + 40 do not fit 1400: "packet too big", MTU 1360, from the VIP.
            let inner = packet(specs[2].vip, 40013, TCP_ACK, 1340, true);
            assert_eq!(inner.len(), 1400);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_TX, vec!["tx_too_big"]));
            let IpAddr::V6(vip6) = specs[2].vip else {
                unreachable!()
            };
            let ip = Ipv6::new(vip6, CLIENT6, 58);
            let l3 = ip.build(&icmp6(
                ip.addrs(),
                2,
                0,
                1360u32.to_be_bytes(),
                &inner[..48],
            ));
            assert_eq!(
                out.data,
                ether(CLIENT_MAC, LB_MAC, None, ETH_P_IPV6, &l3),
                "ICMPv6 packet too big from the VIP, MTU 1360, quoting 48 bytes"
            );
            // A path whose MTU less the tunnel is below IPv6's 1280: a client told so would
            // send 1280 bytes again. Dropped and counted, unanswered.
            let inner = packet(specs[3].vip, 40014, TCP_ACK, 1240, true);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_DROP, vec!["drop_too_big"]));
        })
        .unwrap();
}

#[test]
fn no_neighbour_no_route_and_another_interface() {
    if !require_root("no_neighbour_no_route_and_another_interface") {
        return;
    }
    let fib = Fib::new();
    let specs = [
        service(v4(130), rs4(200, 0), Some(tunnel(TunnelKind::Ipip, true))),
        service(v4(131), rs4(201, 0), Some(tunnel(TunnelKind::Ipip, true))),
        service(
            v4(132),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 130)),
            Some(tunnel(TunnelKind::Gre, true)),
        ),
    ];
    fib.ns
        .run_in(|| {
            let mut h = harness(&fib, &specs);
            let inner = packet(specs[0].vip, 40020, TCP_SYN, 0, true);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_DROP, vec!["drop_no_neigh"]));
            let inner = packet(specs[1].vip, 40021, TCP_SYN, 0, true);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_DROP, vec!["drop_no_route"]));
            // 198.51.100.130 is on lb1: the frame leaves there (XDP_REDIRECT), wrapped, from
            // lb1's MAC.
            let inner = packet(specs[2].vip, 40022, TCP_SYN, 0, true);
            let (out, bumped) = run(&mut h, &fib, &frame(&inner));
            assert_eq!((out.verdict, bumped), (XDP_REDIRECT, vec!["fwd_new_flow"]));
            let expect = wrapped(
                &inner,
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 130)),
                TunnelKind::Gre,
                OTHER_MAC,
                fib.lb1_mac,
                &out.data,
            );
            assert_eq!(out.data, expect);
        })
        .unwrap();
}
