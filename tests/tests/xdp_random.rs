//! The XDP program on random frames (issue 15, "Fuzzing"): valid frames of every kind the
//! fixtures use (IPv4/IPv6, TCP/UDP, fragments, ICMP errors, 802.1Q, extension headers,
//! ARP, VRRP...), mutated (bytes, bits, length fields, truncation, extension), and purely
//! random ones, run through BPF_PROG_TEST_RUN on the real object with services configured.
//! On every run:
//!
//! - the verdict is XDP_TX, XDP_PASS or XDP_DROP, exactly one reason counter moved (by one
//!   packet and the frame's bytes), and the verdict is that reason's (`reason::verdict`);
//! - the frame comes back with its length; a passed or dropped one unchanged; a forwarded
//!   one unchanged from byte 12 on, to a configured real server's MAC from the interface's;
//! - a frame that `Model` (an independent reading of the headers, in this file) calls
//!   malformed is never forwarded, and one malformed in its Ethernet or IP header gets
//!   exactly the reason the documentation gives.
//!
//! The seed is fixed and printed; `LB_XDP_RANDOM_SEED=<n>` runs another one (a failure prints
//! the seed, the frame's number, kind and bytes). Coverage is checked too: every forwarding
//! reason and every malformed reason must come up, or the generator has gone blind.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Instant,
};

use lb_common::reason::{self, *};
use lb_daemon::{
    dataplane::{BackendSpec, ServiceSpec},
    model::{Forward, Proto, Scheduler},
};
use lb_tests::{
    netns::require_root,
    packet::*,
    xdp::{addrs::*, small_options, XdpHarness, LB_MAC},
};

/// The default seed (issue 15's).
const SEED: u64 = 0x0015_5eed_c0de_0015;
const FRAMES: usize = 80_000;

/// xorshift64* (Vigna): small, fast, and the same sequence on every machine for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0; the bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 11) as usize % n
    }
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

fn backend(i: usize, port: u16) -> BackendSpec {
    BackendSpec {
        thresholds: Default::default(),
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8)), port),
        weight: 1,
        mac: Some(B[i]),
        forward: Forward::Dr,
    }
}

fn service(vip: IpAddr, port: u16, proto: Proto, sched: Scheduler) -> ServiceSpec {
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
        backends: (0..3).map(|i| backend(i, port)).collect(),
    }
}

/// The fixtures' services, one of them without `sloppy_tcp`.
fn specs() -> Vec<ServiceSpec> {
    let mut strict = service(VIP4.into(), 443, Proto::Tcp, Scheduler::Rr);
    strict.sloppy_tcp = false;
    let mut backup = service(VIP4_BACKUP.into(), 80, Proto::Tcp, Scheduler::Rr);
    backup.active = false;
    let mut persist = service(VIP4_PERSIST.into(), 443, Proto::Tcp, Scheduler::Rr);
    persist.persistence_timeout = 300;
    persist.persistence_prefix = 24;
    vec![
        service(VIP4.into(), 80, Proto::Tcp, Scheduler::Rr),
        strict,
        service(VIP4.into(), 53, Proto::Udp, Scheduler::Sh),
        service(VIP6.into(), 80, Proto::Tcp, Scheduler::Mh),
        service(VIP6.into(), 53, Proto::Udp, Scheduler::Rr),
        service(VIP4_ALL_PORTS.into(), 0, Proto::Tcp, Scheduler::Wrr),
        backup,
        persist,
    ]
}

/// What the control plane does meanwhile, now and then: the services as configured; a real
/// server drained, another removed and a fourth added; every service on backup.
fn variant(i: usize) -> Vec<ServiceSpec> {
    let mut s = specs();
    match i % 3 {
        0 => {}
        1 => {
            for spec in &mut s {
                spec.backends[0].weight = 0;
                spec.backends.remove(1);
                spec.backends.push(backend(3, spec.port));
            }
        }
        _ => {
            for spec in &mut s {
                spec.active = false;
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// Valid frames of every kind
// ---------------------------------------------------------------------------------------

const FLAGS: [u8; 10] = [
    TCP_SYN,
    TCP_SYN,
    TCP_ACK,
    TCP_ACK,
    TCP_ACK | TCP_PSH,
    TCP_RST,
    TCP_RST | TCP_ACK,
    TCP_SYN | TCP_ACK,
    TCP_FIN | TCP_PSH | TCP_URG,
    TCP_SYN | TCP_FIN,
];

/// A source port from a small set, so that flows recur and established paths are taken.
fn sport(r: &mut Rng) -> u16 {
    1000 + r.below(48) as u16
}

fn tcp_flags(r: &mut Rng) -> u8 {
    if r.chance(1, 8) {
        r.byte()
    } else {
        r.pick(&FLAGS)
    }
}

/// TCP options: 0 to 40 bytes, NOPs or random.
fn tcp_options(r: &mut Rng) -> Vec<u8> {
    let n = if r.chance(1, 2) { 0 } else { r.below(11) * 4 };
    if r.chance(1, 2) {
        vec![1; n]
    } else {
        r.bytes(n)
    }
}

fn ipv4_options(r: &mut Rng) -> Vec<u8> {
    if r.chance(3, 4) {
        return Vec::new();
    }
    let n = (1 + r.below(10)) * 4;
    let mut o = if r.chance(1, 2) {
        vec![1; n]
    } else {
        r.bytes(n)
    };
    o[n - 1] = 0;
    o
}

fn vlan(r: &mut Rng) -> Option<u16> {
    r.chance(1, 5).then(|| r.below(4095) as u16)
}

fn payload(r: &mut Rng) -> Vec<u8> {
    let n = r.pick(&[0, 0, 1, 7, 16, 48]);
    r.bytes(n)
}

fn src4(r: &mut Rng) -> Ipv4Addr {
    if r.chance(3, 4) {
        CLIENT4
    } else {
        Ipv4Addr::new(203, 0, 113, r.below(8) as u8)
    }
}

fn frame4(r: &mut Rng, ip: &Ipv4, l4: &[u8]) -> Vec<u8> {
    ether(LB_MAC, CLIENT_MAC, vlan(r), ETH_P_IP, &ip.build(l4))
}

fn frame6(r: &mut Rng, ip: &Ipv6, l4: &[u8]) -> Vec<u8> {
    ether(LB_MAC, CLIENT_MAC, vlan(r), ETH_P_IPV6, &ip.build(l4))
}

fn tcp4_frame(r: &mut Rng) -> Vec<u8> {
    let dst = r.pick(&[
        VIP4,
        VIP4,
        VIP4,
        VIP4_ALL_PORTS,
        VIP4_BACKUP,
        VIP4_PERSIST,
        NODE4,
    ]);
    let dport = r.pick(&[80, 80, 443, 443, 53, 0, 8080]);
    let mut ip = Ipv4::new(src4(r), dst, 6);
    ip.options = ipv4_options(r);
    let seg = tcp_opts(
        ip.addrs(),
        sport(r),
        dport,
        tcp_flags(r),
        &tcp_options(r),
        &payload(r),
    );
    frame4(r, &ip, &seg)
}

fn udp4_frame(r: &mut Rng) -> Vec<u8> {
    let dst = r.pick(&[VIP4, VIP4, VIP4_ALL_PORTS, NODE4]);
    let dport = r.pick(&[53, 53, 53, 80, 5353]);
    let mut ip = Ipv4::new(src4(r), dst, 17);
    ip.options = ipv4_options(r);
    let d = udp(ip.addrs(), sport(r), dport, &payload(r));
    frame4(r, &ip, &d)
}

/// One fragment of `whole`, cut at 8-byte boundaries: the first, a middle one or the last,
/// with its offset (in 8-byte units) and whether more follow.
fn piece<'a>(r: &mut Rng, whole: &'a [u8]) -> (&'a [u8], u16, bool) {
    let cut = 8 * (1 + r.below((whole.len() - 1) / 8));
    let off = (cut / 8) as u16;
    match r.below(3) {
        0 => (&whole[..cut], 0, true),
        1 if cut + 8 < whole.len() => (&whole[cut..cut + 8], off, true),
        _ => (&whole[cut..], off, false),
    }
}

fn frag4_frame(r: &mut Rng) -> Vec<u8> {
    let proto = r.pick(&[17u8, 17, 6, 1]);
    let dst = r.pick(&[VIP4, VIP4, VIP4_ALL_PORTS, NODE4]);
    let mut ip = Ipv4::new(src4(r), dst, proto);
    ip.options = ipv4_options(r);
    let body = {
        let n = 24 + r.below(64);
        r.bytes(n)
    };
    let whole = match proto {
        17 => udp(ip.addrs(), sport(r), 53, &body),
        6 => tcp(ip.addrs(), sport(r), 80, TCP_ACK, &body),
        _ => icmp4(8, 0, [0, 1, 0, 1], &body),
    };
    let (bytes, off, more) = piece(r, &whole);
    ip.frag = off | if more { 0x2000 } else { 0 };
    frame4(r, &ip, bytes)
}

fn icmp4_frame(r: &mut Rng) -> Vec<u8> {
    let ip = Ipv4::new(ROUTER4, r.pick(&[VIP4, VIP4, NODE4]), 1);
    let msg = match r.below(3) {
        0 | 1 => {
            // A real server's reply (VIP:port -> client) that was too big.
            let reply = Ipv4::new(VIP4, CLIENT4, r.pick(&[6u8, 6, 17]));
            let l4 = tcp(
                reply.addrs(),
                r.pick(&[80, 443]),
                sport(r),
                TCP_ACK,
                &[0; 8],
            );
            let quoted = reply.build(&l4);
            let n = r.pick(&[28, 28, 24, 40, quoted.len()]);
            icmp4(3, 4, [0, 0, 5, 0xdc], &quoted[..n.min(quoted.len())])
        }
        _ => icmp4(
            r.pick(&[8, 0, 3, 11]),
            r.below(5) as u8,
            [0, 1, 0, 1],
            &payload(r),
        ),
    };
    frame4(r, &ip, &msg)
}

/// An IPv6 extension-header chain of 0 to 6 headers.
fn ext_chain(r: &mut Rng) -> Vec<(u8, Vec<u8>)> {
    let n = r.pick(&[0, 0, 0, 1, 2, 4, 6]);
    (0..n)
        .map(|_| match r.below(4) {
            0 => (IPV6_HOPOPTS, Ipv6::opts_ext()),
            1 => (IPV6_DSTOPTS, Ipv6::opts_ext()),
            2 => (IPV6_ROUTING, Ipv6::routing_ext()),
            _ => (IPV6_FRAGMENT, Ipv6::fragment_ext(0, false, r.next() as u32)),
        })
        .collect()
}

fn l4_6_frame(r: &mut Rng) -> Vec<u8> {
    let proto = r.pick(&[6u8, 6, 17]);
    let mut ip = Ipv6::new(CLIENT6, VIP6, proto);
    ip.ext = ext_chain(r);
    let l4 = if proto == 6 {
        tcp_opts(
            ip.addrs(),
            sport(r),
            r.pick(&[80, 80, 443]),
            tcp_flags(r),
            &tcp_options(r),
            &payload(r),
        )
    } else {
        udp(ip.addrs(), sport(r), r.pick(&[53, 53, 80]), &payload(r))
    };
    frame6(r, &ip, &l4)
}

fn frag6_frame(r: &mut Rng) -> Vec<u8> {
    let addrs = Ipv6::new(CLIENT6, VIP6, 17).addrs();
    let body = {
        let n = 24 + r.below(64);
        r.bytes(n)
    };
    // The fragment header's next header, and the fragmentable part.
    let (next, whole) = match r.below(5) {
        0 | 1 => (17u8, udp(addrs, sport(r), 53, &body)),
        2 => (6, tcp(addrs, sport(r), 80, TCP_ACK, &body)),
        3 => {
            let mut part = vec![r.pick(&[6u8, 17])];
            part.extend_from_slice(&Ipv6::opts_ext());
            part.extend_from_slice(&udp(addrs, sport(r), 53, &body));
            (IPV6_DSTOPTS, part)
        }
        _ => (58, icmp6(addrs, 128, 0, [0, 1, 0, 1], &body)),
    };
    let mut ip = Ipv6::new(CLIENT6, VIP6, next);
    if r.chance(1, 3) {
        ip.ext.push((IPV6_HOPOPTS, Ipv6::opts_ext()));
    }
    let (bytes, off, more) = piece(r, &whole);
    ip.ext
        .push((IPV6_FRAGMENT, Ipv6::fragment_ext(off, more, 0x77)));
    frame6(r, &ip, bytes)
}

fn icmp6_frame(r: &mut Rng) -> Vec<u8> {
    let ip = Ipv6::new(ROUTER6, VIP6, 58);
    let msg = match r.below(3) {
        0 | 1 => {
            let reply = Ipv6::new(VIP6, CLIENT6, 6);
            let quoted = reply.build(&tcp(reply.addrs(), 80, sport(r), TCP_ACK, &[0; 8]));
            let n = r.pick(&[48, 44, 40, quoted.len()]);
            icmp6(
                ip.addrs(),
                2,
                0,
                [0, 0, 5, 0],
                &quoted[..n.min(quoted.len())],
            )
        }
        _ => icmp6(
            ip.addrs(),
            r.pick(&[128, 129, 135, 1]),
            0,
            [0; 4],
            &payload(r),
        ),
    };
    frame6(r, &ip, &msg)
}

fn other_frame(r: &mut Rng) -> Vec<u8> {
    match r.below(4) {
        0 => ether([0xff; 6], CLIENT_MAC, vlan(r), ETH_P_ARP, &r.bytes(28)),
        1 => {
            let mut ip = Ipv4::new(NODE4, Ipv4Addr::new(224, 0, 0, 18), 112);
            ip.ttl = 255;
            let advert = [0x21, 7, 100, 1, 0, 1, 0, 0, 192, 0, 2, 100];
            frame4(r, &ip, &advert)
        }
        2 => {
            let ip = Ipv4::new(CLIENT4, VIP4, 47);
            frame4(r, &ip, &[0, 0, 8, 0])
        }
        _ => {
            // QinQ.
            let ip = Ipv4::new(CLIENT4, VIP4, 6);
            let mut f = ether(
                LB_MAC,
                CLIENT_MAC,
                Some(42),
                r.pick(&[0x8100, 0x88a8]),
                &[0, 7],
            );
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            f.extend_from_slice(&ip.build(&tcp(ip.addrs(), sport(r), 80, TCP_SYN, b"")));
            f
        }
    }
}

/// A generator of valid frames of one kind.
type Gen = fn(&mut Rng) -> Vec<u8>;

const KINDS: [(&str, Gen); 10] = [
    ("tcp4", tcp4_frame),
    ("tcp4", tcp4_frame),
    ("udp4", udp4_frame),
    ("frag4", frag4_frame),
    ("icmp4", icmp4_frame),
    ("l4_6", l4_6_frame),
    ("l4_6", l4_6_frame),
    ("frag6", frag6_frame),
    ("icmp6", icmp6_frame),
    ("other", other_frame),
];

// ---------------------------------------------------------------------------------------
// Mutations and random frames
// ---------------------------------------------------------------------------------------

/// The ethertype and L3 offset as the frame's first bytes say, with at most one 802.1Q tag.
fn l3_of(f: &[u8]) -> Option<(u16, usize)> {
    let t = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    if t == 0x8100 {
        Some((u16::from_be_bytes([*f.get(16)?, *f.get(17)?]), 18))
    } else {
        Some((t, 14))
    }
}

/// Makes the IPv4 header checksum right again (as far as the frame holds the header), so
/// that a mutation gets past it and reaches the later checks.
fn fix_checksum(f: &mut [u8]) {
    if let Some((ETH_P_IP, l3)) = l3_of(f) {
        if f.len() >= l3 + 20 {
            ipv4_fix_checksum(f, l3);
        }
    }
}

/// Offsets of the length-like fields of the frame: IPv4 version/IHL and total length,
/// IPv6 payload length, and the L4 length fields right after a plain IP header.
fn length_fields(f: &[u8]) -> Vec<(usize, bool)> {
    let mut v = Vec::new();
    let Some((t, l3)) = l3_of(f) else { return v };
    let mut l4 = None;
    if t == ETH_P_IP && f.len() > l3 {
        v.push((l3, false));
        v.push((l3 + 2, true));
        l4 = Some((l3 + usize::from(f[l3] & 0x0f) * 4, f.get(l3 + 9).copied()));
    } else if t == ETH_P_IPV6 {
        v.push((l3 + 4, true));
        v.push((l3 + 41, false)); // an extension header's length
        l4 = Some((l3 + 40, f.get(l3 + 6).copied()));
    }
    match l4 {
        Some((o, Some(6))) => v.push((o + 12, false)),
        Some((o, Some(17))) => v.push((o + 4, true)),
        _ => {}
    }
    v.retain(|&(o, wide)| o + 1 + usize::from(wide) <= f.len());
    v
}

fn mutate(r: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..1 + r.below(3) {
        // Most of the interest is in the headers.
        let span = if r.chance(3, 4) {
            f.len().min(110)
        } else {
            f.len()
        };
        match r.below(8) {
            0 => {
                let at = r.below(span);
                f[at] ^= 1 << r.below(8);
            }
            1 => {
                let at = r.below(span);
                f[at] = r.byte();
            }
            2 => {
                let len = 14 + r.below(f.len() - 13);
                f.truncate(len);
            }
            3 => {
                let extra = {
                    let n = 1 + r.below(40);
                    r.bytes(n)
                };
                f.extend_from_slice(&extra);
            }
            4..=6 => {
                let fields = length_fields(f);
                if fields.is_empty() {
                    continue;
                }
                let (at, wide) = fields[r.below(fields.len())];
                if wide {
                    let old = u16::from_be_bytes([f[at], f[at + 1]]);
                    let new = match r.below(3) {
                        0 => old.wrapping_add(r.below(9) as u16).wrapping_sub(4),
                        1 => r.next() as u16,
                        _ => r.pick(&[0, 1, 7, 8, 19, 20, 0xffff]),
                    };
                    f[at..at + 2].copy_from_slice(&new.to_be_bytes());
                } else {
                    // The high nibble (version, data offset) or the low one (IHL), or the
                    // whole byte (an extension header's length).
                    f[at] = match r.below(3) {
                        0 => (f[at] & 0x0f) | (r.byte() << 4),
                        1 => (f[at] & 0xf0) | (r.byte() & 0x0f),
                        _ => r.byte(),
                    };
                }
            }
            _ => {
                let at = 12 + r.below(span.saturating_sub(13).max(1));
                if at + 2 <= f.len() {
                    f[at..at + 2].copy_from_slice(&(r.next() as u16).to_be_bytes());
                }
            }
        }
    }
    if r.chance(2, 3) {
        fix_checksum(f);
    }
}

/// Random bytes; half of them dressed as IPv4 or IPv6 to a VIP, so that they go deep.
fn random_frame(r: &mut Rng) -> Vec<u8> {
    let mut f = {
        let n = 14 + r.below(150);
        r.bytes(n)
    };
    match r.below(4) {
        0 if f.len() >= 34 => {
            f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            f[14] = 0x45;
            f[23] = r.pick(&[6, 17, 1]);
            f[30..34].copy_from_slice(&VIP4.octets());
            if r.chance(1, 2) {
                let len = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&len.to_be_bytes());
            }
            f[20..22].copy_from_slice(&[0, 0]);
            if r.chance(3, 4) {
                fix_checksum(&mut f);
            }
        }
        1 if f.len() >= 54 => {
            f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            f[14] = 0x60;
            f[20] = r.pick(&[6, 17, 58, 44, 60, 0]);
            f[38..54].copy_from_slice(&VIP6.octets());
            if r.chance(1, 2) {
                let len = (f.len() - 54) as u16;
                f[18..20].copy_from_slice(&len.to_be_bytes());
            }
        }
        _ => {}
    }
    f
}

// ---------------------------------------------------------------------------------------
// The independent model: what may never be forwarded
// ---------------------------------------------------------------------------------------

/// What the headers say, read without the program's code: the reason the documentation
/// gives a frame that fails at its Ethernet or IP header (`Decided`), or whether anything
/// further in makes it malformed.
#[derive(Debug, PartialEq, Eq)]
enum Model {
    Decided(u32),
    Malformed(&'static str),
    Fine,
}

fn be16(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn model(f: &[u8]) -> Model {
    let (ethertype, l3) = match be16(f, 12) as u16 {
        0x8100 if f.len() < 18 => return Model::Decided(DROP_MALFORMED_ETH),
        0x8100 => match be16(f, 16) as u16 {
            0x8100 | 0x88a8 => return Model::Decided(PASS_UNSUPPORTED),
            t => (t, 18),
        },
        0x88a8 => return Model::Decided(PASS_UNSUPPORTED),
        t => (t, 14),
    };
    match ethertype {
        ETH_P_IP => model_v4(f, l3),
        ETH_P_IPV6 => model_v6(f, l3),
        _ => Model::Decided(PASS_NOT_IP),
    }
}

fn model_v4(f: &[u8], l3: usize) -> Model {
    let ip = &f[l3..];
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Model::Decided(DROP_MALFORMED_IPV4);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl > ip.len() {
        return Model::Decided(DROP_MALFORMED_IPV4);
    }
    // The checksum before the total length, as the kernel's `ip_rcv_core` checks them.
    if checksum(&ip[..ihl]) != 0 {
        return Model::Decided(DROP_BAD_IPV4_CSUM);
    }
    let tot = be16(ip, 2);
    if tot < ihl || tot > ip.len() {
        return Model::Decided(DROP_MALFORMED_IPV4);
    }
    let frag = be16(ip, 6);
    if frag & 0x3fff != 0 {
        // A fragment's transport header can only be judged after reassembly.
        return Model::Fine;
    }
    model_l4(ip[9], &ip[ihl..tot], false)
}

fn model_v6(f: &[u8], l3: usize) -> Model {
    let ip = &f[l3..];
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Model::Decided(DROP_MALFORMED_IPV6);
    }
    let plen = be16(ip, 4);
    if plen == 0 {
        return Model::Decided(PASS_UNSUPPORTED);
    }
    if 40 + plen > ip.len() {
        return Model::Decided(DROP_MALFORMED_IPV6);
    }
    let payload = &ip[40..40 + plen];
    let mut next = ip[6];
    let mut at = 0;
    loop {
        match next {
            0 | 43 | 60 => {
                if at + 2 > payload.len() {
                    return Model::Malformed("ipv6 extension header cut");
                }
                let len = (usize::from(payload[at + 1]) + 1) * 8;
                if at + len > payload.len() {
                    return Model::Malformed("ipv6 extension header beyond the payload");
                }
                next = payload[at];
                at += len;
            }
            44 => {
                if at + 8 > payload.len() {
                    return Model::Malformed("ipv6 fragment header beyond the payload");
                }
                let offlg = be16(payload, at + 2);
                next = payload[at];
                at += 8;
                if offlg & 0xfff9 != 0 {
                    return Model::Fine;
                }
            }
            p => return model_l4(p, &payload[at..], true),
        }
    }
}

fn model_l4(proto: u8, seg: &[u8], v6: bool) -> Model {
    match proto {
        6 => {
            if seg.len() < 20 {
                return Model::Malformed("tcp header cut");
            }
            let hlen = usize::from(seg[12] >> 4) * 4;
            if hlen < 20 {
                return Model::Malformed("tcp data offset below 5");
            }
            if hlen > seg.len() {
                return Model::Malformed("tcp data offset past the segment");
            }
            Model::Fine
        }
        17 => {
            if seg.len() < 8 {
                return Model::Malformed("udp header cut");
            }
            let ulen = be16(seg, 4);
            if ulen > seg.len() || (ulen < 8 && !(v6 && ulen == 0)) {
                return Model::Malformed("udp length");
            }
            Model::Fine
        }
        1 | 58 if (proto == 58) == v6 => {
            if seg.len() < 8 {
                return Model::Malformed("icmp header cut");
            }
            let ptb = if v6 {
                seg[0] == 2
            } else {
                seg[0] == 3 && seg[1] == 4
            };
            if !ptb {
                return Model::Fine;
            }
            // The quoted packet must hold its IP header and the ports.
            let q = &seg[8..];
            let ok = if v6 {
                q.len() >= 44 && q[0] >> 4 == 6
            } else {
                q.len() >= 20
                    && q[0] >> 4 == 4
                    && q[0] & 0x0f >= 5
                    && usize::from(q[0] & 0x0f) * 4 + 4 <= q.len()
            };
            if ok {
                Model::Fine
            } else {
                Model::Malformed("icmp quoted packet cut or inconsistent")
            }
        }
        _ => Model::Fine,
    }
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn random_and_mutated_frames_keep_the_invariants() {
    if !require_root("xdp random frames") {
        return;
    }
    let seed = match std::env::var("LB_XDP_RANDOM_SEED") {
        Ok(s) => {
            let s = s.trim();
            s.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|| s.parse())
                .expect("LB_XDP_RANDOM_SEED: a number")
        }
        Err(_) => SEED,
    };
    println!(
        "xdp_random: seed {seed:#x} (LB_XDP_RANDOM_SEED={seed:#x} runs it again), {FRAMES} frames"
    );
    let mut r = Rng::new(seed);
    let mut h = XdpHarness::new(small_options()).expect("load the XDP object");
    h.dp.update(&specs()).expect("write the maps");
    let mut clock = 1000;
    h.set_clock(clock).unwrap();

    let started = Instant::now();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut malformed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut before = h.dp.writer().reason_counters().unwrap();
    for n in 0..FRAMES {
        // Now and then the control plane changes something, and time passes.
        if n % 2000 == 1999 {
            h.dp.update(&variant(r.below(3))).unwrap();
            before = h.dp.writer().reason_counters().unwrap();
        }
        if n % 1500 == 1499 {
            clock += r.pick(&[1, 10, 400, 1000]);
            h.set_clock(clock).unwrap();
        }
        let (kind, frame) = match r.below(20) {
            0..=3 => {
                let (name, gen) = KINDS[r.below(KINDS.len())];
                (name, gen(&mut r))
            }
            4..=16 => {
                let (name, gen) = KINDS[r.below(KINDS.len())];
                let mut f = gen(&mut r);
                mutate(&mut r, &mut f);
                (name, f)
            }
            _ => ("random", random_frame(&mut r)),
        };
        let what = || format!("seed {seed:#x}, frame {n} ({kind}): {}", hex(&frame));

        let out = h
            .run(&frame)
            .unwrap_or_else(|e| panic!("{}: {e:#}", what()));
        let after = h.dp.writer().reason_counters().unwrap();
        let moved: Vec<u32> = (0..reason::COUNT)
            .filter(|&i| after[i as usize] != before[i as usize])
            .collect();
        assert_eq!(moved.len(), 1, "{}: reasons counted {moved:?}", what());
        let why = moved[0];
        let (a, b) = (after[why as usize], before[why as usize]);
        assert_eq!(a.packets - b.packets, 1, "{}: packets", what());
        assert_eq!(a.bytes - b.bytes, frame.len() as u64, "{}: bytes", what());
        before = after;
        assert!(
            [XDP_TX, XDP_PASS, XDP_DROP].contains(&out.verdict),
            "{}: verdict {}",
            what(),
            out.verdict
        );
        assert_eq!(
            out.verdict,
            reason::verdict(why),
            "{}: verdict of {}",
            what(),
            reason::name(why)
        );
        assert_eq!(out.data.len(), frame.len(), "{}: length out", what());
        if out.verdict == XDP_TX {
            assert_eq!(
                out.data[12..],
                frame[12..],
                "{}: bytes past the MACs",
                what()
            );
            assert!(
                B.contains(&out.data[..6].try_into().unwrap()),
                "{}: destination {:02x?} is no real server's",
                what(),
                &out.data[..6]
            );
            assert_eq!(out.data[6..12], LB_MAC, "{}: source MAC", what());
        } else {
            assert_eq!(
                out.data,
                frame,
                "{}: a frame not forwarded is untouched",
                what()
            );
        }
        match model(&frame) {
            Model::Decided(want) => {
                assert_eq!(reason::name(why), reason::name(want), "{}: reason", what())
            }
            Model::Malformed(m) => {
                assert_ne!(
                    out.verdict,
                    XDP_TX,
                    "{}: forwarded ({}) though {m}",
                    what(),
                    reason::name(why)
                );
                *malformed.entry(m).or_default() += 1;
            }
            Model::Fine => {}
        }
        *reasons.entry(reason::name(why)).or_default() += 1;
    }
    let took = started.elapsed();
    println!("xdp_random: {FRAMES} frames in {took:.1?}");
    for (name, count) in &reasons {
        println!("  {name:<24} {count}");
    }
    println!("  malformed past the IP header (model), never forwarded:");
    for (name, count) in &malformed {
        println!("    {name:<44} {count}");
    }
    // The generator must reach every path worth checking: each forwarding reason, each
    // malformed one, and the TCP rules.
    for want in [
        FWD_ESTABLISHED,
        FWD_NEW_FLOW,
        FWD_FRAGMENT,
        FWD_ICMP,
        FWD_NEW_FLOW_MIDSTREAM,
        PASS_NOT_SYN,
        PASS_UNSUPPORTED,
        PASS_NO_SERVICE,
        DROP_MALFORMED_ETH,
        DROP_MALFORMED_IPV4,
        DROP_MALFORMED_IPV6,
        DROP_MALFORMED_L4,
        DROP_MALFORMED_ICMP,
        DROP_BAD_IPV4_CSUM,
    ] {
        assert!(
            reasons.get(reason::name(want)).copied().unwrap_or(0) >= 5,
            "seed {seed:#x}: the frames reached {} fewer than 5 times: {reasons:?}",
            reason::name(want)
        );
    }
    for m in [
        "tcp data offset below 5",
        "tcp data offset past the segment",
        "udp length",
    ] {
        assert!(
            malformed.get(m).copied().unwrap_or(0) >= 5,
            "seed {seed:#x}: fewer than 5 frames with {m}: {malformed:?}"
        );
    }
}
