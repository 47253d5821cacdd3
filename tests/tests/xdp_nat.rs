//! NAT forwarding on the real XDP object through BPF_PROG_TEST_RUN, byte for byte: a
//! client's packet to the VIP leaves towards the real server with its destination address
//! and port rewritten, a real server's reply leaves towards the client from the VIP and
//! the service's port with its TTL one less; IPv4 and IPv6, TCP and UDP (an IPv4 UDP
//! checksum of 0 stays 0). The expected frames are built afresh by the test's packet
//! builder, which computes every checksum whole: the program's in-place updates must come
//! out the same. Then what the program does not rewrite itself: a fragment and an IPv6
//! packet with extension headers (dropped, counted), a real server without a neighbour
//! entry (to the stack, rewritten), a client without one (dropped, counted: rewritten, the
//! reply's source would be the VIP, a martian to the stack), a reply whose TTL runs out (to
//! the stack as it came), the answer to this node's own connection and a packet from
//! another port of a real server (untouched); a real server two services share, whose
//! replies are told apart by their flows; and a `virtual_server_group`'s real server
//! without a port, which keeps each packet's and answers from the key its flow went to.
//!
//! The FIB is a network namespace's own: the outside interface `lb0` (the clients behind a
//! router), the inside one `lb1` (the real servers, on its subnet), permanent neighbour
//! entries for the router and the real servers.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::reason::{self, *};
use lb_common::{FlowKey4, FlowKey6};
use lb_daemon::{
    dataplane::{
        flows::{reverse_key4, reverse_key6},
        BackendSpec, ServiceSpec, TUNNEL_MAC,
    },
    model::{Forward, Proto, Scheduler},
};
use lb_tests::{
    netns::{require_root, unique_prefix, Netns},
    packet::{
        ether, icmp4, icmp6, tcp, udp, Addrs, Ipv4, Ipv6, ETH_P_IP, ETH_P_IPV6, IPV6_DSTOPTS,
        IPV6_HOPOPTS, TCP_ACK, TCP_SYN,
    },
    xdp::{small_options, RunOutput, XdpHarness, MH_TABLE_SIZE},
};

const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const RS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb1];
const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
/// A real server with a neighbour entry, and one without.
const RS4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const RS6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x11);
const RS4_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
/// The service's port and the real servers'.
const VPORT: u16 = 80;
const RPORT: u16 = 8080;

/// The namespace whose FIB the program asks.
struct Fib {
    ns: Netns,
    lb0: u32,
    lb1: u32,
    lb0_mac: [u8; 6],
    lb1_mac: [u8; 6],
}

impl Fib {
    fn new() -> Fib {
        let ns = Netns::new(&format!("{}lb", unique_prefix("nat"))).expect("namespace");
        let ip = |args: &[&str]| {
            ns.ip(args)
                .unwrap_or_else(|e| panic!("ip {}: {e:#}", args.join(" ")))
        };
        ip(&["link", "add", "lb0", "type", "veth", "peer", "name", "rt0"]);
        ip(&["link", "add", "lb1", "type", "veth", "peer", "name", "rs0"]);
        for dev in ["lb0", "rt0", "lb1", "rs0"] {
            ip(&["link", "set", dev, "up"]);
        }
        ns.sysctls(&[
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ])
        .expect("forwarding on (bpf_fib_lookup refuses otherwise)");
        ip(&["addr", "add", "192.0.2.2/24", "dev", "lb0"]);
        ip(&["addr", "add", "2001:db8::2/64", "dev", "lb0", "nodad"]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", "lb1"]);
        ip(&["addr", "add", "2001:db8:10::1/64", "dev", "lb1", "nodad"]);
        for (addr, mac, dev) in [
            ("192.0.2.1", "02:00:00:00:00:aa", "lb0"),
            ("2001:db8::1", "02:00:00:00:00:aa", "lb0"),
            ("198.51.100.11", "02:00:00:00:00:b1", "lb1"),
            ("2001:db8:10::11", "02:00:00:00:00:b1", "lb1"),
        ] {
            ip(&[
                "neigh",
                "add",
                addr,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        ip(&["route", "add", "203.0.113.0/25", "via", "192.0.2.1"]);
        // Clients behind a gateway nobody resolved.
        ip(&["route", "add", "203.0.113.128/25", "via", "192.0.2.9"]);
        ip(&["route", "add", "2001:db8:1::/64", "via", "2001:db8::1"]);
        Fib {
            lb0: ns.ifindex("lb0").unwrap(),
            lb1: ns.ifindex("lb1").unwrap(),
            lb0_mac: ns.mac("lb0").unwrap(),
            lb1_mac: ns.mac("lb1").unwrap(),
            ns,
        }
    }
}

/// A one-server rr NAT service at `vip`:80, its real server at `rs`:8080.
fn service(vip: IpAddr, proto: Proto, rs: IpAddr) -> ServiceSpec {
    ServiceSpec {
        vip,
        port: VPORT,
        proto,
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
            addr: SocketAddr::new(rs, RPORT),
            weight: 1,
            mac: Some(TUNNEL_MAC),
            thresholds: Default::default(),
            forward: Forward::Nat,
        }],
    }
}

/// An IPv4 or IPv6 packet from `src`:`sport` to `dst`:`dport` (TCP with `flags`, or UDP
/// when `flags` is `None`), TTL `ttl`, 10 bytes of data, every checksum computed whole.
fn packet(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: Option<u8>, ttl: u8) -> Vec<u8> {
    let data = [0x5a; 10];
    let l4 = |addrs: Addrs| match flags {
        Some(f) => tcp(addrs, sport, dport, f, &data),
        None => udp(addrs, sport, dport, &data),
    };
    let proto = if flags.is_some() { 6 } else { 17 };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4::new(s, d, proto);
            ip.ttl = ttl;
            ip.build(&l4(ip.addrs()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6::new(s, d, proto);
            ip.hop_limit = ttl;
            ip.build(&l4(ip.addrs()))
        }
        _ => unreachable!(),
    }
}

fn ethertype(l3: &[u8]) -> u16 {
    if l3[0] >> 4 == 4 {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    }
}

fn run(h: &mut XdpHarness, ifindex: u32, frame: &[u8]) -> (RunOutput, Vec<&'static str>) {
    let before = h.dp.writer().reason_counters().unwrap();
    let out = h.run_on(frame, ifindex, 1).expect("test run");
    let after = h.dp.writer().reason_counters().unwrap();
    let bumped = (0..reason::COUNT)
        .filter(|&r| after[r as usize].packets != before[r as usize].packets)
        .map(reason::name)
        .collect();
    (out, bumped)
}

fn harness(specs: &[ServiceSpec]) -> XdpHarness {
    let mut h = XdpHarness::new(small_options()).expect("load the XDP object");
    h.dp.update(specs).expect("write the maps");
    h.set_clock(1000).unwrap();
    h
}

#[test]
fn nat_rewrites_both_directions_exactly() {
    if !require_root("nat_rewrites_both_directions_exactly") {
        return;
    }
    let fib = Fib::new();
    let cases: [(IpAddr, IpAddr, IpAddr, Proto); 4] = [
        (VIP4.into(), RS4.into(), CLIENT4.into(), Proto::Tcp),
        (VIP6.into(), RS6.into(), CLIENT6.into(), Proto::Tcp),
        (VIP4.into(), RS4.into(), CLIENT4.into(), Proto::Udp),
        (VIP6.into(), RS6.into(), CLIENT6.into(), Proto::Udp),
    ];
    let specs: Vec<ServiceSpec> = cases
        .iter()
        .map(|(vip, rs, _, proto)| service(*vip, *proto, *rs))
        .collect();
    fib.ns
        .run_in(|| {
            let mut h = harness(&specs);
            h.set_tx_ports(&[fib.lb0, fib.lb1]).unwrap();
            for (vip, rs, client, proto) in cases {
                let what = format!("{proto:?} {vip} -> {rs}");
                let tcp = proto == Proto::Tcp;
                // The opening packet (a new flow), then the next (the flow cache's path).
                for (flags, want) in [(TCP_SYN, "fwd_new_flow"), (TCP_ACK, "fwd_established")] {
                    let flags = tcp.then_some(flags);
                    let inbound = packet(client, vip, 40000, VPORT, flags, 64);
                    let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ethertype(&inbound), &inbound);
                    let (out, bumped) = run(&mut h, fib.lb0, &frame);
                    assert_eq!(
                        (out.verdict, bumped),
                        (XDP_REDIRECT, vec![want]),
                        "{what}: in by lb0, out by lb1"
                    );
                    // Destination and port rewritten, the TTL as it was: IPVS forwards the
                    // client's packets from its local input, without a router's decrement.
                    let l3 = packet(client, rs, 40000, RPORT, flags, 64);
                    assert_eq!(
                        out.data,
                        ether(RS_MAC, fib.lb1_mac, None, ethertype(&l3), &l3),
                        "{what}: the client's packet for the real server"
                    );
                }
                // The reply: from the real server's port, in by lb1; out by lb0 to the
                // router, from the VIP and the service's port, TTL one less.
                let flags = tcp.then_some(TCP_SYN | TCP_ACK);
                let reply = packet(rs, client, RPORT, 40000, flags, 64);
                let frame = ether(fib.lb1_mac, RS_MAC, None, ethertype(&reply), &reply);
                let (out, bumped) = run(&mut h, fib.lb1, &frame);
                assert_eq!(
                    (out.verdict, bumped),
                    (XDP_REDIRECT, vec!["fwd_nat_reply"]),
                    "{what}: the reply"
                );
                let l3 = packet(vip, client, VPORT, 40000, flags, 63);
                assert_eq!(
                    out.data,
                    ether(ROUTER_MAC, fib.lb0_mac, None, ethertype(&l3), &l3),
                    "{what}: the reply for the client"
                );
                // Of no flow (another client port), and from another port of the real
                // server's: the stack's, untouched.
                let unknown = packet(rs, client, RPORT, 40998, flags, 64);
                let frame = ether(fib.lb1_mac, RS_MAC, None, ethertype(&unknown), &unknown);
                let (out, bumped) = run(&mut h, fib.lb1, &frame);
                assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_no_service"]));
                assert_eq!(out.data, frame, "{what}: no flow, untouched");
                let stray = packet(rs, client, 22, 40999, flags, 64);
                let frame = ether(fib.lb1_mac, RS_MAC, None, ethertype(&stray), &stray);
                let (out, bumped) = run(&mut h, fib.lb1, &frame);
                assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_no_service"]));
                assert_eq!(out.data, frame, "{what}: untouched");
            }
            // An IPv4 UDP checksum of 0 ("none") stays 0 both ways.
            let mut inbound = packet(CLIENT4.into(), VIP4.into(), 41000, VPORT, None, 64);
            inbound[26..28].copy_from_slice(&[0, 0]);
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &inbound);
            let (out, _) = run(&mut h, fib.lb0, &frame);
            assert_eq!(out.verdict, XDP_REDIRECT);
            let mut l3 = packet(CLIENT4.into(), RS4.into(), 41000, RPORT, None, 64);
            l3[26..28].copy_from_slice(&[0, 0]);
            assert_eq!(out.data, ether(RS_MAC, fib.lb1_mac, None, ETH_P_IP, &l3));
            let mut reply = packet(RS4.into(), CLIENT4.into(), RPORT, 41000, None, 64);
            reply[26..28].copy_from_slice(&[0, 0]);
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &reply);
            let (out, _) = run(&mut h, fib.lb1, &frame);
            assert_eq!(out.verdict, XDP_REDIRECT);
            let mut l3 = packet(VIP4.into(), CLIENT4.into(), VPORT, 41000, None, 63);
            l3[26..28].copy_from_slice(&[0, 0]);
            assert_eq!(
                out.data,
                ether(ROUTER_MAC, fib.lb0_mac, None, ETH_P_IP, &l3)
            );
        })
        .unwrap();
}

#[test]
fn what_nat_leaves_to_the_stack_or_drops() {
    if !require_root("what_nat_leaves_to_the_stack_or_drops") {
        return;
    }
    let fib = Fib::new();
    let unresolved_vip = Ipv4Addr::new(192, 0, 2, 101);
    let specs = [
        service(VIP4.into(), Proto::Tcp, RS4.into()),
        service(VIP6.into(), Proto::Tcp, RS6.into()),
        service(unresolved_vip.into(), Proto::Tcp, RS4_UNRESOLVED.into()),
    ];
    fib.ns
        .run_in(|| {
            let mut h = harness(&specs);
            h.set_tx_ports(&[fib.lb0, fib.lb1]).unwrap();
            // A fragment: its later pieces carry no port to rewrite.
            let mut ip = Ipv4::new(CLIENT4, VIP4, 6);
            ip.frag = 0x2000;
            let frag = ip.build(&tcp(ip.addrs(), 40100, VPORT, TCP_SYN, &[0; 16]));
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &frag);
            let (out, bumped) = run(&mut h, fib.lb0, &frame);
            assert_eq!(
                (out.verdict, bumped),
                (XDP_DROP, vec!["drop_nat_unsupported"])
            );
            // IPv6 with a destination-options header before TCP.
            let mut ip = Ipv6::new(CLIENT6, VIP6, 6);
            ip.ext = vec![(IPV6_DSTOPTS, Ipv6::opts_ext())];
            let ext = ip.build(&tcp(ip.addrs(), 40101, VPORT, TCP_SYN, &[]));
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IPV6, &ext);
            let (out, bumped) = run(&mut h, fib.lb0, &frame);
            assert_eq!(
                (out.verdict, bumped),
                (XDP_DROP, vec!["drop_nat_unsupported"])
            );
            // A real server without a neighbour entry: the packet, rewritten, goes to the
            // stack, which forwards it and resolves the neighbour; its MACs as they came.
            let inbound = packet(
                CLIENT4.into(),
                unresolved_vip.into(),
                40102,
                VPORT,
                Some(TCP_SYN),
                64,
            );
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &inbound);
            let (out, bumped) = run(&mut h, fib.lb0, &frame);
            assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_nat_to_stack"]));
            let l3 = packet(
                CLIENT4.into(),
                RS4_UNRESOLVED.into(),
                40102,
                RPORT,
                Some(TCP_SYN),
                64,
            );
            assert_eq!(
                out.data,
                ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &l3)
            );
            // A reply whose TTL runs out: to the stack as it came, which answers it.
            let inbound = packet(CLIENT4.into(), VIP4.into(), 40103, VPORT, Some(TCP_SYN), 64);
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &inbound);
            assert_eq!(run(&mut h, fib.lb0, &frame).0.verdict, XDP_REDIRECT);
            let reply = packet(
                RS4.into(),
                CLIENT4.into(),
                RPORT,
                40103,
                Some(TCP_SYN | TCP_ACK),
                1,
            );
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &reply);
            let (out, bumped) = run(&mut h, fib.lb1, &frame);
            assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_nat_to_stack"]));
            assert_eq!(out.data, frame);
            // The real server answering this node's own connection to its service port (a
            // health check): no reply to translate, the stack's as it came.
            let own = packet(
                RS4.into(),
                Ipv4Addr::new(198, 51, 100, 1).into(),
                RPORT,
                50000,
                Some(TCP_SYN | TCP_ACK),
                64,
            );
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &own);
            let (out, bumped) = run(&mut h, fib.lb1, &frame);
            assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_no_service"]));
            assert_eq!(out.data, frame);
            // A client behind a gateway without a neighbour entry: its reply is dropped and
            // counted (rewritten, its source the VIP, the stack would drop it as a martian).
            let far = Ipv4Addr::new(203, 0, 113, 200);
            let inbound = packet(far.into(), VIP4.into(), 40104, VPORT, Some(TCP_SYN), 64);
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &inbound);
            assert_eq!(run(&mut h, fib.lb0, &frame).0.verdict, XDP_REDIRECT);
            let reply = packet(
                RS4.into(),
                far.into(),
                RPORT,
                40104,
                Some(TCP_SYN | TCP_ACK),
                64,
            );
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &reply);
            assert!(h.dp.writer().wanted_neighbours().is_empty());
            let (out, bumped) = run(&mut h, fib.lb1, &frame);
            assert_eq!((out.verdict, bumped), (XDP_DROP, vec!["drop_no_neigh"]));
            // Its next hop, the gateway, for the daemon to resolve: once.
            let gateway = Ipv4Addr::new(192, 0, 2, 9);
            assert_eq!(
                h.dp.writer().wanted_neighbours(),
                vec![(fib.lb0, gateway.into())]
            );
            assert!(h.dp.writer().wanted_neighbours().is_empty());
        })
        .unwrap();
}

/// An ICMP error whose quoted packet is `quoted` (its IP header and the first 8 bytes of
/// TCP: the ports, not the TCP checksum, which the translation leaves as it came), from
/// `src` to `dst` with TTL (hop limit) `ttl`.
fn icmp_error(src: IpAddr, dst: IpAddr, ty: u8, code: u8, quoted: &[u8], ttl: u8) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = Ipv4::new(s, d, 1);
            ip.ttl = ttl;
            ip.build(&icmp4(ty, code, [0, 0, 5, 0xdc], &quoted[..28]))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = Ipv6::new(s, d, 58);
            ip.hop_limit = ttl;
            ip.build(&icmp6(ip.addrs(), ty, code, [0, 0, 5, 0], &quoted[..48]))
        }
        _ => unreachable!(),
    }
}

/// VIP, real server, client, a router on the client's side and one on the real servers',
/// and the ICMP types and codes each side sends.
type IcmpCase = (
    IpAddr,
    IpAddr,
    IpAddr,
    IpAddr,
    IpAddr,
    [(u8, u8); 2],
    [(u8, u8); 2],
);

/// ICMP errors about NAT flows, translated both ways as IPVS does, byte for byte (every
/// checksum of the expected frames computed whole by the test's builder): from the
/// client's side (fragmentation needed, port unreachable) to the real server, about the
/// reply the client got from the VIP; from the real servers' side (the real server's port
/// unreachable, an inside router's time exceeded) to the client, from the VIP, about the
/// client's packet as it was before translation.
#[test]
fn icmp_errors_about_nat_flows_are_translated_both_ways() {
    if !require_root("icmp_errors_about_nat_flows_are_translated_both_ways") {
        return;
    }
    let fib = Fib::new();
    let specs = [
        service(VIP4.into(), Proto::Tcp, RS4.into()),
        service(VIP6.into(), Proto::Tcp, RS6.into()),
    ];
    let inside_router4: IpAddr = Ipv4Addr::new(198, 51, 100, 99).into();
    let inside_router6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 0x10, 0, 0, 0, 0, 0x99).into();
    let outside_router4: IpAddr = Ipv4Addr::new(203, 0, 113, 1).into();
    let outside_router6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).into();
    let cases: [IcmpCase; 2] = [
        (
            VIP4.into(),
            RS4.into(),
            CLIENT4.into(),
            outside_router4,
            inside_router4,
            [(3, 4), (3, 3)],
            [(3, 3), (11, 0)],
        ),
        (
            VIP6.into(),
            RS6.into(),
            CLIENT6.into(),
            outside_router6,
            inside_router6,
            [(2, 0), (1, 4)],
            [(1, 4), (3, 0)],
        ),
    ];
    fib.ns
        .run_in(|| {
            let mut h = harness(&specs);
            h.set_tx_ports(&[fib.lb0, fib.lb1]).unwrap();
            for (vip, rs, client, outside, inside, from_client, from_rs) in cases {
                let inbound = packet(client, vip, 40200, VPORT, Some(TCP_SYN), 64);
                let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ethertype(&inbound), &inbound);
                assert_eq!(run(&mut h, fib.lb0, &frame).0.verdict, XDP_REDIRECT);
                // The client's side: about the reply it got (VIP:80 -> client), to the real
                // server as about its own reply (rs:8080 -> client); the TTL as it came.
                let reply = packet(vip, client, VPORT, 40200, Some(TCP_ACK), 64);
                let reply_rs = packet(rs, client, RPORT, 40200, Some(TCP_ACK), 64);
                for (from, (ty, code)) in [outside, client].into_iter().zip(from_client) {
                    let what = format!("{vip}: type {ty} code {code} from {from}");
                    let err = icmp_error(from, vip, ty, code, &reply, 64);
                    let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ethertype(&err), &err);
                    let (out, bumped) = run(&mut h, fib.lb0, &frame);
                    assert_eq!(
                        (out.verdict, bumped),
                        (XDP_REDIRECT, vec!["fwd_icmp"]),
                        "{what}"
                    );
                    let want = icmp_error(from, rs, ty, code, &reply_rs, 64);
                    assert_eq!(
                        out.data,
                        ether(RS_MAC, fib.lb1_mac, None, ethertype(&want), &want),
                        "{what}: for the real server"
                    );
                }
                // The real servers' side: about the client's packet as translated
                // (client -> rs:8080), to the client from the VIP as about the packet it
                // sent (client -> VIP:80); the TTL one less.
                let sent = packet(client, rs, 40200, RPORT, Some(TCP_SYN), 64);
                let sent_vip = packet(client, vip, 40200, VPORT, Some(TCP_SYN), 64);
                for (from, (ty, code)) in [rs, inside].into_iter().zip(from_rs) {
                    let what = format!("{vip}: type {ty} code {code} from {from}");
                    let err = icmp_error(from, client, ty, code, &sent, 64);
                    let frame = ether(fib.lb1_mac, RS_MAC, None, ethertype(&err), &err);
                    let (out, bumped) = run(&mut h, fib.lb1, &frame);
                    assert_eq!(
                        (out.verdict, bumped),
                        (XDP_REDIRECT, vec!["fwd_icmp"]),
                        "{what}"
                    );
                    let want = icmp_error(vip, client, ty, code, &sent_vip, 63);
                    assert_eq!(
                        out.data,
                        ether(ROUTER_MAC, fib.lb0_mac, None, ethertype(&want), &want),
                        "{what}: for the client"
                    );
                }
                // Shapes the translation does not take, to the stack untouched: a quote cut
                // short of its ports, and (IPv6) an extension header before the ICMPv6 one.
                let short = match icmp_error(rs, client, from_rs[0].0, from_rs[0].1, &sent, 64) {
                    mut v if rs.is_ipv4() => {
                        v.truncate(20 + 8 + 22);
                        v[2..4].copy_from_slice(&50u16.to_be_bytes());
                        lb_tests::packet::ipv4_fix_checksum(&mut v, 0);
                        v
                    }
                    mut v => {
                        v.truncate(40 + 8 + 42);
                        v[4..6].copy_from_slice(&50u16.to_be_bytes());
                        v
                    }
                };
                let frame = ether(fib.lb1_mac, RS_MAC, None, ethertype(&short), &short);
                let (out, bumped) = run(&mut h, fib.lb1, &frame);
                assert_eq!(
                    (out.verdict, bumped),
                    (XDP_PASS, vec!["pass_icmp"]),
                    "{vip}: short"
                );
                assert_eq!(out.data, frame);
                if let (IpAddr::V6(s), IpAddr::V6(d)) = (rs, client) {
                    let mut ip = Ipv6::new(s, d, 58);
                    ip.ext = vec![(IPV6_HOPOPTS, Ipv6::opts_ext())];
                    let msg = icmp6(ip.addrs(), 1, 4, [0; 4], &sent[..48]);
                    let ext = ip.build(&msg);
                    let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IPV6, &ext);
                    let (out, bumped) = run(&mut h, fib.lb1, &frame);
                    assert_eq!(
                        (out.verdict, bumped),
                        (XDP_PASS, vec!["pass_icmp"]),
                        "hop-by-hop"
                    );
                    assert_eq!(out.data, frame);
                }
                // About a packet of no NAT flow or real server: the stack's, untouched.
                let other = packet(client, rs, 40201, 22, Some(TCP_SYN), 64);
                let err = icmp_error(rs, client, from_rs[0].0, from_rs[0].1, &other, 64);
                let frame = ether(fib.lb1_mac, RS_MAC, None, ethertype(&err), &err);
                let (out, bumped) = run(&mut h, fib.lb1, &frame);
                assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_icmp_no_flow"]));
                assert_eq!(out.data, frame);
            }
        })
        .unwrap();
}

/// Two services sending to one real server and port: a reply's source cannot be told from
/// the real server alone, so each flow's reverse entry says which service's it is.
#[test]
fn a_real_server_two_services_share_is_told_apart_by_flow() {
    if !require_root("a_real_server_two_services_share_is_told_apart_by_flow") {
        return;
    }
    let fib = Fib::new();
    let vip_b = Ipv4Addr::new(192, 0, 2, 102);
    let mut b = service(vip_b.into(), Proto::Tcp, RS4.into());
    b.port = 443;
    let specs = [service(VIP4.into(), Proto::Tcp, RS4.into()), b];
    fib.ns
        .run_in(|| {
            // A flow from before the second service shares the real server: no reverse
            // entry; its replies stay the first service's.
            let mut h = harness(&specs[..1]);
            h.set_tx_ports(&[fib.lb0, fib.lb1]).unwrap();
            let early = packet(CLIENT4.into(), VIP4.into(), 40199, VPORT, Some(TCP_SYN), 64);
            let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &early);
            assert_eq!(run(&mut h, fib.lb0, &frame).0.verdict, XDP_REDIRECT);
            h.dp.update(&specs).expect("the second service");
            let flags = Some(TCP_SYN | TCP_ACK);
            let reply = packet(RS4.into(), CLIENT4.into(), RPORT, 40199, flags, 64);
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &reply);
            let (out, bumped) = run(&mut h, fib.lb1, &frame);
            assert_eq!((out.verdict, bumped), (XDP_REDIRECT, vec!["fwd_nat_reply"]));
            let l3 = packet(VIP4.into(), CLIENT4.into(), VPORT, 40199, flags, 63);
            assert_eq!(
                out.data,
                ether(ROUTER_MAC, fib.lb0_mac, None, ETH_P_IP, &l3),
                "the earlier flow's reply from the first service's VIP"
            );
            for (vip, vport, cport) in [(VIP4, VPORT, 40200), (vip_b, 443, 40201)] {
                let inbound = packet(CLIENT4.into(), vip.into(), cport, vport, Some(TCP_SYN), 64);
                let frame = ether(fib.lb0_mac, ROUTER_MAC, None, ETH_P_IP, &inbound);
                let (out, bumped) = run(&mut h, fib.lb0, &frame);
                assert_eq!((out.verdict, bumped), (XDP_REDIRECT, vec!["fwd_new_flow"]));
                let l3 = packet(CLIENT4.into(), RS4.into(), cport, RPORT, Some(TCP_SYN), 64);
                assert_eq!(out.data, ether(RS_MAC, fib.lb1_mac, None, ETH_P_IP, &l3));
            }
            for (vip, vport, cport) in [(VIP4, VPORT, 40200), (vip_b, 443, 40201)] {
                let flags = Some(TCP_SYN | TCP_ACK);
                let reply = packet(RS4.into(), CLIENT4.into(), RPORT, cport, flags, 64);
                let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &reply);
                let (out, bumped) = run(&mut h, fib.lb1, &frame);
                assert_eq!(
                    (out.verdict, bumped),
                    (XDP_REDIRECT, vec!["fwd_nat_reply"]),
                    "the reply to port {cport}"
                );
                let l3 = packet(vip.into(), CLIENT4.into(), vport, cport, flags, 63);
                assert_eq!(
                    out.data,
                    ether(ROUTER_MAC, fib.lb0_mac, None, ETH_P_IP, &l3),
                    "the reply to port {cport} comes from {vip}:{vport}"
                );
            }
            // A reply of no flow of either: neither service's, the stack's (as in IPVS).
            let reply = packet(RS4.into(), CLIENT4.into(), RPORT, 40202, Some(TCP_ACK), 64);
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &reply);
            let (out, bumped) = run(&mut h, fib.lb1, &frame);
            assert_eq!((out.verdict, bumped), (XDP_PASS, vec!["pass_no_service"]));
            assert_eq!(out.data, frame);
            // An ICMP error from the real server about the second flow's packet: from
            // the second VIP and port, by the flow's reverse entry.
            let sent = packet(CLIENT4.into(), RS4.into(), 40201, RPORT, Some(TCP_SYN), 64);
            let err = icmp_error(RS4.into(), CLIENT4.into(), 3, 3, &sent, 64);
            let frame = ether(fib.lb1_mac, RS_MAC, None, ETH_P_IP, &err);
            let (out, bumped) = run(&mut h, fib.lb1, &frame);
            assert_eq!((out.verdict, bumped), (XDP_REDIRECT, vec!["fwd_icmp"]));
            let sent_vip = packet(CLIENT4.into(), vip_b.into(), 40201, 443, Some(TCP_SYN), 64);
            let want = icmp_error(vip_b.into(), CLIENT4.into(), 3, 3, &sent_vip, 63);
            assert_eq!(
                out.data,
                ether(ROUTER_MAC, fib.lb0_mac, None, ETH_P_IP, &want)
            );
            // The reverse entries the program wrote are where connection sync writes a
            // peer's (`flows::reverse_key4`): the receiver's keys are the program's.
            let rev: aya::maps::HashMap<_, FlowKey4, FlowKey4> =
                aya::maps::HashMap::try_from(h.ebpf.map("NAT_REV4").unwrap()).unwrap();
            for (vip, vport, cport) in [(VIP4, VPORT, 40200u16), (vip_b, 443, 40201)] {
                let flow = FlowKey4 {
                    src: lb_common::addr_v4(CLIENT4.octets()),
                    dst: lb_common::addr_v4(vip.octets()),
                    sport: cport.to_be(),
                    dport: vport.to_be(),
                    proto: 6,
                    _pad: [0; 3],
                };
                let key = reverse_key4(&flow, SocketAddr::new(RS4.into(), RPORT));
                assert_eq!(rev.get(&key, 0).ok(), Some(flow), "{vip}:{vport}");
            }
        })
        .unwrap();
}

/// A `virtual_server_group` under NAT: keys VIP:80, VIP:443 and a second VIP's port 80, one
/// real server without a port of its own (it keeps each packet's). Its port 80 answers for
/// two keys, told apart by each flow's reverse entry; its port 443 for one, which needs
/// none. IPv4 and IPv6.
#[test]
fn a_group_s_real_server_answers_from_the_key_each_flow_went_to() {
    if !require_root("a_group_s_real_server_answers_from_the_key_each_flow_went_to") {
        return;
    }
    let fib = Fib::new();
    let vip4_b = Ipv4Addr::new(192, 0, 2, 102);
    let vip6_b = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x102);
    let group = |vip: IpAddr, vip_b: IpAddr, rs: IpAddr| {
        let mut s = service(vip, Proto::Tcp, rs);
        s.aliases = vec![(vip, 443), (vip_b, VPORT)];
        s.backends[0].addr.set_port(0);
        s
    };
    let specs = [
        group(VIP4.into(), vip4_b.into(), RS4.into()),
        group(VIP6.into(), vip6_b.into(), RS6.into()),
    ];
    fib.ns
        .run_in(|| {
            let mut h = harness(&specs);
            h.set_tx_ports(&[fib.lb0, fib.lb1]).unwrap();
            let families: [(IpAddr, IpAddr, IpAddr, IpAddr, u16); 2] = [
                (
                    VIP4.into(),
                    vip4_b.into(),
                    RS4.into(),
                    CLIENT4.into(),
                    ETH_P_IP,
                ),
                (
                    VIP6.into(),
                    vip6_b.into(),
                    RS6.into(),
                    CLIENT6.into(),
                    ETH_P_IPV6,
                ),
            ];
            for (vip, vip_b, rs, client, et) in families {
                let flows = [
                    (vip, VPORT, 40300),
                    (vip, 443, 40301),
                    (vip_b, VPORT, 40302),
                ];
                for (to, vport, cport) in flows {
                    let inbound = packet(client, to, cport, vport, Some(TCP_SYN), 64);
                    let frame = ether(fib.lb0_mac, ROUTER_MAC, None, et, &inbound);
                    let (out, bumped) = run(&mut h, fib.lb0, &frame);
                    assert_eq!((out.verdict, bumped), (XDP_REDIRECT, vec!["fwd_new_flow"]));
                    let l3 = packet(client, rs, cport, vport, Some(TCP_SYN), 64);
                    assert_eq!(
                        out.data,
                        ether(RS_MAC, fib.lb1_mac, None, et, &l3),
                        "{to}:{vport} reaches {rs} on the same port"
                    );
                }
                for (to, vport, cport) in flows {
                    let flags = Some(TCP_SYN | TCP_ACK);
                    let reply = packet(rs, client, vport, cport, flags, 64);
                    let frame = ether(fib.lb1_mac, RS_MAC, None, et, &reply);
                    let (out, bumped) = run(&mut h, fib.lb1, &frame);
                    assert_eq!(
                        (out.verdict, bumped),
                        (XDP_REDIRECT, vec!["fwd_nat_reply"]),
                        "the reply to {cport}"
                    );
                    let l3 = packet(to, client, vport, cport, flags, 63);
                    assert_eq!(
                        out.data,
                        ether(ROUTER_MAC, fib.lb0_mac, None, et, &l3),
                        "the reply to {cport} comes from {to}:{vport}"
                    );
                }
                // Port 80's flows have reverse entries where sync writes a peer's (port 0:
                // the flow's own); port 443's, which one key alone reaches, none.
                let rs0 = SocketAddr::new(rs, 0);
                for (to, vport, cport) in flows {
                    let want = vport == VPORT;
                    let found = match (client, to) {
                        (IpAddr::V4(c), IpAddr::V4(v)) => {
                            let rev: aya::maps::HashMap<_, FlowKey4, FlowKey4> =
                                aya::maps::HashMap::try_from(h.ebpf.map("NAT_REV4").unwrap())
                                    .unwrap();
                            let flow = FlowKey4 {
                                src: lb_common::addr_v4(c.octets()),
                                dst: lb_common::addr_v4(v.octets()),
                                sport: cport.to_be(),
                                dport: vport.to_be(),
                                proto: 6,
                                _pad: [0; 3],
                            };
                            rev.get(&reverse_key4(&flow, rs0), 0)
                                .ok()
                                .map(|f| f == flow)
                        }
                        (IpAddr::V6(c), IpAddr::V6(v)) => {
                            let rev: aya::maps::HashMap<_, FlowKey6, FlowKey6> =
                                aya::maps::HashMap::try_from(h.ebpf.map("NAT_REV6").unwrap())
                                    .unwrap();
                            let flow = FlowKey6 {
                                src: lb_common::addr_v6(c.octets()),
                                dst: lb_common::addr_v6(v.octets()),
                                sport: cport.to_be(),
                                dport: vport.to_be(),
                                proto: 6,
                                _pad: [0; 3],
                            };
                            rev.get(&reverse_key6(&flow, rs0), 0)
                                .ok()
                                .map(|f| f == flow)
                        }
                        _ => unreachable!(),
                    };
                    assert_eq!(found, want.then_some(true), "{to}:{vport} from {cport}");
                }
            }
        })
        .unwrap();
}
