//! The bytes of a `TCP_CHECK` with `via_tunnel` ([`crate::config::check::TunnelTcp`]), with
//! no I/O: the SYN the probe sends to the VIP inside the tunnel, the RST that ends the
//! half-open connection, the tunnel header in front of them, the filter the packet socket
//! reading the answer runs in the kernel, and the reading of that answer.
//!
//! The answer does not come back through the tunnel: the real server sends its SYN-ACK from
//! the VIP straight to the probe's source, as it answers clients. On the VRRP master that
//! source-is-a-local-address packet is a martian the kernel drops before any socket sees it,
//! so the probe reads it from a packet socket, which sees frames before the IP layer judges
//! them. Everything read there is hostile: only a well-formed TCP segment from the VIP's port
//! to the probe's port that acknowledges the SYN counts.
use std::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::model::TunnelKind;

/// One probe's addresses and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// This host's address: the inner source, where the SYN-ACK comes back to.
    pub src: IpAddr,
    /// A port reserved for the probe (bound by a TCP socket while it runs).
    pub sport: u16,
    pub vip: IpAddr,
    pub vport: u16,
    /// The SYN's sequence number, random.
    pub isn: u32,
}

/// What the VIP said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// SYN-ACK: something listens on the VIP's port.
    Accepted,
    /// RST: the VIP is there, its port is closed.
    Refused,
}

/// The inner packets' TTL: they are delivered on the real server, after the tunnel.
const INNER_TTL: u8 = 64;
/// The SYN's window: it never carries data.
const WINDOW: u16 = 1024;

impl Probe {
    fn builder(&self) -> Option<etherparse::PacketBuilderStep<etherparse::IpHeaders>> {
        match (self.src, self.vip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Some(PacketBuilder::ipv4(s.octets(), d.octets(), INNER_TTL))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                Some(PacketBuilder::ipv6(s.octets(), d.octets(), INNER_TTL))
            }
            _ => None,
        }
    }

    fn segment(&self, seq: u32, rst: bool) -> Vec<u8> {
        let Some(ip) = self.builder() else {
            // Config keeps a TUN real server in its VIP's family; a mixed pair has no packet.
            return Vec::new();
        };
        let tcp = ip.tcp(self.sport, self.vport, seq, if rst { 0 } else { WINDOW });
        let tcp = if rst { tcp.rst() } else { tcp.syn() };
        let mut out = Vec::with_capacity(tcp.size(0));
        // Writing into a Vec fails only if a length overflows its field: not for 40-60 bytes.
        let _ = tcp.write(&mut out, &[]);
        out
    }

    /// The SYN: IPv4 or IPv6 from `src` to `vip`, TCP from `sport` to `vport`.
    pub fn syn(&self) -> Vec<u8> {
        self.segment(self.isn, false)
    }

    /// The RST that closes the real server's half-open connection after its SYN-ACK (RFC 9293
    /// §3.10.7.3: the reset's sequence number is the acknowledgment it carried).
    pub fn rst(&self) -> Vec<u8> {
        self.segment(self.isn.wrapping_add(1), true)
    }

    /// `packet` (from its IP header) read as the answer to this probe's SYN, or `None` when it
    /// is not one (anything else the packet socket passed, truncated or malformed bytes).
    pub fn answer(&self, packet: &[u8]) -> Option<Answer> {
        let p = SlicedPacket::from_ip(packet).ok()?;
        let (from, to): (IpAddr, IpAddr) = match p.net? {
            NetSlice::Ipv4(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Ipv6(ip) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            NetSlice::Arp(_) => return None,
        };
        let TransportSlice::Tcp(tcp) = p.transport? else {
            return None;
        };
        let ours = from == self.vip
            && to == self.src
            && tcp.source_port() == self.vport
            && tcp.destination_port() == self.sport
            && tcp.ack()
            && tcp.acknowledgment_number() == self.isn.wrapping_add(1);
        match (ours, tcp.syn(), tcp.rst()) {
            (true, true, false) => Some(Answer::Accepted),
            (true, false, true) => Some(Answer::Refused),
            _ => None,
        }
    }
}

/// How the wrapped packet leaves: a raw IP socket of this protocol (the kernel writes the
/// outer IPv4 or IPv6 header), or for GUE a UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Raw(i32),
    Udp(u16),
}

/// The outer protocol of `kind` for an inner packet of `vip`'s family, as the dataplane
/// writes it (`lb-ebpf/src/tunnel.rs`).
pub fn carrier(kind: TunnelKind, port: u16, v6: bool) -> Carrier {
    match kind {
        TunnelKind::Ipip if v6 => Carrier::Raw(libc::IPPROTO_IPV6),
        TunnelKind::Ipip => Carrier::Raw(libc::IPPROTO_IPIP),
        TunnelKind::Gre => Carrier::Raw(libc::IPPROTO_GRE),
        TunnelKind::Gue => Carrier::Udp(port),
    }
}

/// What follows the outer IP (or, for GUE, UDP) header: the tunnel's own header, then
/// `inner`. GRE: 4 bytes without flags, the inner EtherType. GUE: version 0 without options,
/// the inner IP protocol. IPIP: nothing.
pub fn wrap(kind: TunnelKind, v6: bool, inner: &[u8]) -> Vec<u8> {
    let header: &[u8] = match (kind, v6) {
        (TunnelKind::Ipip, _) => &[],
        (TunnelKind::Gre, false) => &[0, 0, 0x08, 0x00],
        (TunnelKind::Gre, true) => &[0, 0, 0x86, 0xdd],
        (TunnelKind::Gue, false) => &[0, libc::IPPROTO_IPIP as u8, 0, 0],
        (TunnelKind::Gue, true) => &[0, libc::IPPROTO_IPV6 as u8, 0, 0],
    };
    [header, inner].concat()
}

/// One classic BPF instruction: code, jump if true, jump if false, operand (`struct
/// sock_filter`).
pub type Insn = (u16, u8, u8, u32);

// The classic BPF opcodes the filter uses (linux/filter.h).
const LD_B_ABS: u16 = 0x30;
const LD_H_ABS: u16 = 0x28;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// The most of a packet the filter keeps: enough for any IP and TCP header.
pub const SNAP: u32 = 256;

/// The kernel-side filter of the packet socket that reads the answer (offsets from the IP
/// header, as a `SOCK_DGRAM` packet socket sees them): TCP from `vport` to `sport`, so the
/// probe is not woken by, and never copies, the host's other traffic. Hand-written: no crate
/// compiles classic BPF, and this is eight instructions. [`Probe::answer`] checks everything
/// again; an IPv6 answer with extension headers is not expected (a SYN-ACK has none).
pub fn reply_filter(v6: bool, vport: u16, sport: u16) -> Vec<Insn> {
    if v6 {
        vec![
            (LD_B_ABS, 0, 0, 6), // next header
            (JEQ_K, 0, 5, libc::IPPROTO_TCP as u32),
            (LD_H_ABS, 0, 0, 40), // TCP source port
            (JEQ_K, 0, 3, vport.into()),
            (LD_H_ABS, 0, 0, 42), // TCP destination port
            (JEQ_K, 0, 1, sport.into()),
            (RET_K, 0, 0, SNAP),
            (RET_K, 0, 0, 0),
        ]
    } else {
        vec![
            (LD_B_ABS, 0, 0, 9), // protocol
            (JEQ_K, 0, 6, libc::IPPROTO_TCP as u32),
            (LDX_B_MSH, 0, 0, 0), // X = the IPv4 header's length
            (LD_H_IND, 0, 0, 0),  // TCP source port
            (JEQ_K, 0, 3, vport.into()),
            (LD_H_IND, 0, 0, 2), // TCP destination port
            (JEQ_K, 0, 1, sport.into()),
            (RET_K, 0, 0, SNAP),
            (RET_K, 0, 0, 0),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn probe4() -> Probe {
        Probe {
            src: Ipv4Addr::new(192, 0, 2, 2).into(),
            sport: 40000,
            vip: Ipv4Addr::new(192, 0, 2, 100).into(),
            vport: 80,
            isn: 0x1234_5678,
        }
    }

    fn probe6() -> Probe {
        Probe {
            src: "2001:db8::2".parse::<Ipv6Addr>().unwrap().into(),
            vip: "2001:db8::100".parse::<Ipv6Addr>().unwrap().into(),
            ..probe4()
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Golden bytes; tcpdump -vv read them from a raw-IP pcap file and found every checksum
    /// correct (IPv4 header and TCP), so they are not only the crate's word for itself.
    #[test]
    fn syn_and_rst_bytes() {
        assert_eq!(
            hex(&probe4().syn()),
            concat!(
                "45000028000040004006",
                "b669",
                "c0000202c0000264", // IPv4, DF, TTL 64, TCP
                "9c400050123456780000000050020400",
                "223f",
                "0000" // SYN, window 1024
            )
        );
        assert_eq!(
            hex(&probe4().rst()),
            concat!(
                "45000028000040004006",
                "b669",
                "c0000202c0000264",
                "9c400050123456790000000050040000",
                "263c",
                "0000" // RST, seq + 1
            )
        );
        assert_eq!(
            hex(&probe6().syn()),
            concat!(
                "6000000000140640", // IPv6, TCP, hop limit 64
                "20010db8000000000000000000000002",
                "20010db8000000000000000000000100",
                "9c400050123456780000000050020400",
                "4a32",
                "0000"
            )
        );
    }

    /// A reply built as the real server's kernel would: from the VIP's port to ours.
    fn reply(p: &Probe, syn: bool, rst: bool, ack: u32) -> Vec<u8> {
        let ip = match (p.vip, p.src) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 63),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 63),
            _ => unreachable!(),
        };
        let tcp = ip.tcp(p.vport, p.sport, 999, 65535).ack(ack);
        let tcp = match (syn, rst) {
            (true, _) => tcp.syn(),
            (_, true) => tcp.rst(),
            _ => tcp,
        };
        let mut out = Vec::new();
        tcp.write(&mut out, &[]).unwrap();
        out
    }

    #[test]
    fn answers() {
        for p in [probe4(), probe6()] {
            let ack = p.isn + 1;
            assert_eq!(
                p.answer(&reply(&p, true, false, ack)),
                Some(Answer::Accepted)
            );
            assert_eq!(
                p.answer(&reply(&p, false, true, ack)),
                Some(Answer::Refused)
            );
            // Not ours: another acknowledgment, a plain ACK, another port or address.
            assert_eq!(p.answer(&reply(&p, true, false, ack + 1)), None);
            assert_eq!(p.answer(&reply(&p, false, false, ack)), None);
            let other_port = Probe { sport: 40001, ..p };
            assert_eq!(other_port.answer(&reply(&p, true, false, ack)), None);
            let other_vip = Probe { vip: p.src, ..p };
            assert_eq!(other_vip.answer(&reply(&p, true, false, ack)), None);
            // Our own SYN (a packet socket sees outgoing frames too).
            assert_eq!(p.answer(&p.syn()), None);
            // Truncated, empty, garbage: nothing, never a panic.
            let good = reply(&p, true, false, ack);
            for n in 0..good.len() {
                assert_eq!(p.answer(&good[..n]), None, "{n} bytes");
            }
            assert_eq!(p.answer(&[0xff; 64]), None);
        }
        // The sequence number wraps.
        let p = Probe {
            isn: u32::MAX,
            ..probe4()
        };
        assert_eq!(p.answer(&reply(&p, true, false, 0)), Some(Answer::Accepted));
    }

    #[test]
    fn wrapping() {
        let inner = [0x45, 1, 2];
        assert_eq!(wrap(TunnelKind::Ipip, false, &inner), inner);
        assert_eq!(
            wrap(TunnelKind::Gre, false, &inner),
            [0, 0, 8, 0, 0x45, 1, 2]
        );
        assert_eq!(
            wrap(TunnelKind::Gre, true, &inner),
            [0, 0, 0x86, 0xdd, 0x45, 1, 2]
        );
        assert_eq!(
            wrap(TunnelKind::Gue, false, &inner),
            [0, 4, 0, 0, 0x45, 1, 2]
        );
        assert_eq!(
            wrap(TunnelKind::Gue, true, &inner),
            [0, 41, 0, 0, 0x45, 1, 2]
        );
        assert_eq!(carrier(TunnelKind::Ipip, 0, false), Carrier::Raw(4));
        assert_eq!(carrier(TunnelKind::Ipip, 0, true), Carrier::Raw(41));
        assert_eq!(carrier(TunnelKind::Gre, 0, true), Carrier::Raw(47));
        assert_eq!(carrier(TunnelKind::Gue, 6080, false), Carrier::Udp(6080));
    }

    /// The filter's instructions, run as the kernel's classic BPF interpreter runs them
    /// (`bpf_convert_filter`'s semantics for the opcodes used): what it returns for `pkt`.
    fn run(filter: &[Insn], pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let byte = |i: usize| pkt.get(i).map(|b| *b as u32);
        let half = |i: usize| Some((byte(i)? << 8) | byte(i + 1)?);
        loop {
            let (code, jt, jf, k) = filter[pc];
            pc += 1;
            // An out-of-bounds load ends the program with 0, as in the kernel.
            match code {
                LD_B_ABS => match byte(k as usize) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_H_ABS => match half(k as usize) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LD_H_IND => match half((x + k) as usize) {
                    Some(v) => a = v,
                    None => return 0,
                },
                LDX_B_MSH => match byte(k as usize) {
                    Some(v) => x = 4 * (v & 0xf),
                    None => return 0,
                },
                JEQ_K => pc += if a == k { jt } else { jf } as usize,
                RET_K => return k,
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn filter_passes_only_the_probes_port_pair() {
        for p in [probe4(), probe6()] {
            let v6 = p.vip.is_ipv6();
            let f = reply_filter(v6, p.vport, p.sport);
            let good = reply(&p, true, false, p.isn + 1);
            assert_eq!(run(&f, &good), SNAP);
            // Another source port, another destination port, our own SYN (ports reversed).
            assert_eq!(
                run(&f, &reply(&Probe { vport: 81, ..p }, true, false, 0)),
                0
            );
            assert_eq!(run(&f, &reply(&Probe { sport: 1, ..p }, true, false, 0)), 0);
            assert_eq!(run(&f, &p.syn()), 0);
            // Not TCP: the same ports in UDP.
            let mut udp = Vec::new();
            match (p.vip, p.src) {
                (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 9)
                    .udp(p.vport, p.sport)
                    .write(&mut udp, &[])
                    .unwrap(),
                (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 9)
                    .udp(p.vport, p.sport)
                    .write(&mut udp, &[])
                    .unwrap(),
                _ => unreachable!(),
            }
            assert_eq!(run(&f, &udp), 0);
            // Truncated before the ports.
            assert_eq!(run(&f, &good[..if v6 { 41 } else { 21 }]), 0);
        }
        // IPv4 options move the TCP header: the filter follows the header length.
        let p = probe4();
        let mut opts = reply(&p, true, false, p.isn + 1);
        opts[0] = 0x46;
        opts.splice(20..20, [1, 1, 1, 0]); // NOP NOP NOP EOL
        assert_eq!(run(&reply_filter(false, p.vport, p.sport), &opts), SNAP);
    }
}
