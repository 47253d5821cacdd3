//! A small builder of exact test frames: Ethernet (optionally one 802.1Q tag), IPv4 (with
//! options and fragmentation fields), IPv6 (with extension headers), TCP, UDP, ICMP and
//! ICMPv6, with correct lengths and checksums. Each method returns the bytes, so a test can
//! cut them anywhere to make a truncated frame.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    csum_fold(csum_add(0, data))
}

/// A layer-3 address pair, to compute pseudo-header checksums.
#[derive(Clone, Copy, Debug)]
pub enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Addrs {
    fn pseudo_sum(&self, proto: u8, len: usize) -> u32 {
        let mut s = match self {
            Addrs::V4(a, b) => csum_add(csum_add(0, &a.octets()), &b.octets()),
            Addrs::V6(a, b) => csum_add(csum_add(0, &a.octets()), &b.octets()),
        };
        s += u32::from(proto);
        s += len as u32 & 0xffff;
        s += (len as u32) >> 16;
        s
    }
}

/// TCP segment (20-byte header, given flags) with `payload`, checksummed for `addrs`.
pub fn tcp(addrs: Addrs, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_opts(addrs, sport, dport, flags, &[], payload)
}

/// TCP segment whose header carries `options` (padded by the caller to a multiple of 4, at
/// most 40 bytes; the data offset follows), checksummed for `addrs`.
pub fn tcp_opts(
    addrs: Addrs,
    sport: u16,
    dport: u16,
    flags: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert!(
        options.len().is_multiple_of(4) && options.len() <= 40,
        "bad TCP options length"
    );
    let mut t = Vec::with_capacity(20 + options.len() + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes()); // seq
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.push((((20 + options.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    tcp_fix_checksum(addrs, &mut t);
    t
}

/// Rewrites the checksum of TCP segment `t` for `addrs`, after a test changed its bytes.
pub fn tcp_fix_checksum(addrs: Addrs, t: &mut [u8]) {
    t[16..18].copy_from_slice(&[0, 0]);
    let c = csum_fold(csum_add(addrs.pseudo_sum(6, t.len()), t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
}

/// Rewrites the header checksum of the IPv4 header at `l3_off` in `frame` (over IHL words,
/// as far as the frame goes), after a test changed header bytes: so that a case tests the
/// field it changed, not the checksum.
pub fn ipv4_fix_checksum(frame: &mut [u8], l3_off: usize) {
    let ihl = usize::from(frame[l3_off] & 0x0f) * 4;
    let end = (l3_off + ihl.max(20)).min(frame.len());
    frame[l3_off + 10..l3_off + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[l3_off..end]);
    frame[l3_off + 10..l3_off + 12].copy_from_slice(&c.to_be_bytes());
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

/// UDP datagram with `payload`, checksummed for `addrs`.
pub fn udp(addrs: Addrs, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = Vec::with_capacity(len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut c = csum_fold(csum_add(addrs.pseudo_sum(17, len), &u));
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

/// ICMP message: type, code, 4 bytes of rest-of-header, body; checksummed.
pub fn icmp4(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = checksum(&m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// ICMPv6 message, checksummed with the pseudo-header of `addrs`.
pub fn icmp6(addrs: Addrs, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let c = csum_fold(csum_add(addrs.pseudo_sum(58, m.len()), &m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// IPv4 header fields a test may want to vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Raw flags + fragment offset field (host order): 0x2000 = MF, low 13 bits = offset/8.
    pub frag: u16,
    /// Options, padded by the caller to a multiple of 4.
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1234,
            frag: 0x4000,
            options: Vec::new(),
        }
    }

    pub fn addrs(&self) -> Addrs {
        Addrs::V4(self.src, self.dst)
    }

    /// Header and payload.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options.len();
        assert!(
            hlen.is_multiple_of(4) && hlen <= 60,
            "bad IPv4 options length"
        );
        let mut h = Vec::with_capacity(hlen + payload.len());
        h.push(0x40 | (hlen / 4) as u8);
        h.push(0);
        h.extend_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// IPv6 header with the given chain of extension headers, each `(type, bytes)` where the
/// bytes exclude the next-header field (the builder fills it in).
#[derive(Clone, Debug)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub proto: u8,
    pub hop_limit: u8,
    pub ext: Vec<(u8, Vec<u8>)>,
}

pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DSTOPTS: u8 = 60;

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            hop_limit: 64,
            ext: Vec::new(),
        }
    }

    pub fn addrs(&self) -> Addrs {
        Addrs::V6(self.src, self.dst)
    }

    /// An options header (hop-by-hop or destination) of 8 bytes: PadN.
    pub fn opts_ext() -> Vec<u8> {
        vec![0, 1, 4, 0, 0, 0, 0]
    }

    /// A routing header (type 0 style, 0 segments left) of 8 bytes.
    pub fn routing_ext() -> Vec<u8> {
        vec![0, 4, 0, 0, 0, 0, 0]
    }

    /// A fragment header: offset in 8-byte units, more-fragments flag, identification.
    pub fn fragment_ext(offset8: u16, more: bool, id: u32) -> Vec<u8> {
        let offlg = (offset8 << 3) | u16::from(more);
        let mut v = vec![0];
        v.extend_from_slice(&offlg.to_be_bytes());
        v.extend_from_slice(&id.to_be_bytes());
        v
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut exts = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map(|e| e.0).unwrap_or(self.proto);
            exts.push(next);
            exts.extend_from_slice(body);
        }
        let first = self.ext.first().map(|e| e.0).unwrap_or(self.proto);
        let mut h = Vec::with_capacity(40 + exts.len() + payload.len());
        h.extend_from_slice(&0x6000_0000u32.to_be_bytes());
        h.extend_from_slice(&((exts.len() + payload.len()) as u16).to_be_bytes());
        h.push(first);
        h.push(self.hop_limit);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&exts);
        h.extend_from_slice(payload);
        h
    }
}

/// Ethernet frame, with an optional 802.1Q tag (VLAN id).
pub fn ether(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(vid) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frame with its destination and source MACs replaced: what direct routing must emit.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header checksummed by hand in the usual textbook example (a UDP packet
    /// 192.168.0.1 -> 192.168.0.199, checksum 0xb861): the builder computes the same.
    #[test]
    fn ipv4_header_checksum_matches_a_known_header() {
        let mut ip = Ipv4::new(
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 199),
            17,
        );
        ip.id = 0;
        let p = ip.build(&[0; 0x73 - 20]);
        assert_eq!(
            &p[..20],
            &[
                0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
                0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7
            ]
        );
    }

    /// With options the checksum covers the whole header (IHL words), and a header checksums
    /// to zero over itself, options included.
    #[test]
    fn ipv4_checksum_covers_options() {
        let mut ip = Ipv4::new(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2), 6);
        for words in 0..=10 {
            ip.options = (0..words * 4).map(|i| i as u8 ^ 0x5a).collect();
            let mut p = ip.build(b"payload");
            let hlen = 20 + words * 4;
            assert_eq!(checksum(&p[..hlen]), 0, "ihl {}", hlen / 4);
            assert_ne!(checksum(&p[..20]), 0xffff);
            let before = p.clone();
            ipv4_fix_checksum(&mut p, 0);
            assert_eq!(p, before, "fixing a right checksum changes nothing");
        }
    }

    #[test]
    fn tcp_options_set_the_data_offset() {
        let a = Addrs::V4(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        let t = tcp_opts(a, 1, 2, TCP_SYN, &[2, 4, 5, 0xb4], b"x");
        assert_eq!(t[12] >> 4, 6);
        assert_eq!(t.len(), 25);
        assert_eq!(csum_fold(csum_add(a.pseudo_sum(6, t.len()), &t)), 0);
    }
}
