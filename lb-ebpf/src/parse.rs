//! Bounded, verifier-friendly header parsing. Each function either returns what the next
//! step needs or the reason that decides the packet's fate (`Err(reason)`).
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{reason::*, *};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const IPV4_HLEN: usize = 20;
const IPV4_MAX_HLEN: usize = 60;
const IPV6_HLEN: usize = 40;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// Hop-by-hop, routing, fragment and destination options: one of each, plus a second
/// destination-options header (RFC 8200 §4.1 order). More than that is passed, not parsed.
const MAX_IPV6_EXT_HEADERS: usize = 5;

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, off: usize, malformed: u32) -> Result<T, u32> {
    let p = ptr_at::<T>(ctx, off).ok_or(malformed)?;
    // SAFETY: bounds checked above; packet data may be unaligned.
    Ok(unsafe { p.read_unaligned() })
}

/// `N` 16-bit words at `off`, after one bounds check.
///
/// Headers are read in 16-bit units because the BPF back end turns an unaligned read of
/// anything wider into single-byte loads. A frame starts at an even address (drivers put it
/// at XDP_PACKET_HEADROOM, generic XDP at the skb's even-aligned MAC header, test runs at
/// the headroom), and every header read here starts at an even offset (14 or 18, plus
/// multiples of 4 or 8), so these loads are aligned. A wider load could not be: the IP
/// header sits at offset 14.
#[inline(always)]
pub fn words<const N: usize>(
    ctx: &XdpContext,
    off: usize,
    malformed: u32,
) -> Result<[u16; N], u32> {
    let p = ptr_at::<[u16; N]>(ctx, off).ok_or(malformed)?;
    // SAFETY: bounds checked above; 2-byte aligned as explained above.
    Ok(unsafe { p.read() })
}

/// Where the IP header starts: after the Ethernet header and the one VLAN tag the parser
/// allows in the frame.
#[inline(always)]
pub fn l3_offset(ctx: &XdpContext) -> Result<usize, u32> {
    let t = words::<1>(ctx, 12, DROP_MALFORMED_ETH)?[0];
    Ok(if u16::from_be(t) == ETH_P_8021Q {
        18
    } else {
        14
    })
}

/// Two 16-bit words as the 32-bit value with the same bytes in memory.
#[inline(always)]
pub fn join(lo: u16, hi: u16) -> u32 {
    let [a, b] = lo.to_ne_bytes();
    let [c, d] = hi.to_ne_bytes();
    u32::from_ne_bytes([a, b, c, d])
}

/// The IPv4 header fields we use, from its first 20 bytes.
struct Ipv4Fields {
    vihl: u8,
    tot_len: u16,
    frag_off: u16,
    proto: u8,
    src: u32,
    dst: u32,
}

#[inline(always)]
fn ipv4_fields(ctx: &XdpContext, off: usize, malformed: u32) -> Result<Ipv4Fields, u32> {
    let h = words::<10>(ctx, off, malformed)?;
    Ok(Ipv4Fields {
        vihl: h[0].to_ne_bytes()[0],
        tot_len: u16::from_be(h[1]),
        frag_off: u16::from_be(h[3]),
        proto: h[4].to_ne_bytes()[1],
        src: join(h[6], h[7]),
        dst: join(h[8], h[9]),
    })
}

/// The unfolded ones'-complement sum of the `N` 16-bit words at `off`.
#[inline(always)]
pub fn sum_words<const N: usize>(ctx: &XdpContext, off: usize, malformed: u32) -> Result<u32, u32> {
    let mut sum = 0u32;
    for w in words::<N>(ctx, off, malformed)? {
        sum += w as u32;
    }
    Ok(sum)
}

/// The unfolded ones'-complement sum of the options of an IPv4 header of `ihl` bytes (20 to
/// 60): `ihl - 20` bytes after the fixed header.
///
/// Four bytes a step (IHL counts 32-bit words), under a constant bound: LLVM unrolls it, so
/// each step reads at a fixed distance from the header and the verifier sees ten plain
/// bounds checks, not a loop. All of it behind one branch: options are rare.
#[inline(always)]
fn ipv4_options_sum(ctx: &XdpContext, off: usize, ihl: usize) -> Result<u32, u32> {
    let mut sum = 0;
    let mut o = IPV4_HLEN;
    for _ in 0..(IPV4_MAX_HLEN - IPV4_HLEN) / 4 {
        if o >= ihl {
            break;
        }
        sum += sum_words::<2>(ctx, off + o, DROP_MALFORMED_IPV4)?;
        o += 4;
    }
    Ok(sum)
}

/// An Internet checksum over data that includes its checksum field is right when the
/// ones'-complement sum of its 16-bit words is all ones (RFC 1071). The words may be summed
/// in either byte order: end-around carry makes the sum byte-order independent.
///
/// One fold is enough here: an IPv4 header is at most 30 words, so `sum < 30 * 0x10000` and
/// the folded value is at most 0xffff + 29; of those, only 0xffff itself folds to 0xffff
/// (a second fold turns 0x10000..=0x1001c into 1..=29).
#[inline(always)]
fn checksum_ok(sum: u32) -> bool {
    (sum & 0xffff) + (sum >> 16) == 0xffff
}

/// The IPv6 header fields we use, from its 40 bytes.
struct Ipv6Fields {
    version: u8,
    payload_len: u16,
    next: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

#[inline(always)]
fn ipv6_fields(ctx: &XdpContext, off: usize, malformed: u32) -> Result<Ipv6Fields, u32> {
    let h = words::<20>(ctx, off, malformed)?;
    Ok(Ipv6Fields {
        version: h[0].to_ne_bytes()[0] >> 4,
        payload_len: u16::from_be(h[2]),
        next: h[3].to_ne_bytes()[0],
        src: [
            join(h[4], h[5]),
            join(h[6], h[7]),
            join(h[8], h[9]),
            join(h[10], h[11]),
        ],
        dst: [
            join(h[12], h[13]),
            join(h[14], h[15]),
            join(h[16], h[17]),
            join(h[18], h[19]),
        ],
    })
}

/// The frame's length, for the checks of the IP length fields against it.
///
/// Hidden from the optimiser: knowing `l3_end <= data_end - data`, LLVM would drop the later
/// packet-pointer bounds checks that `l3_end` checks imply, and the verifier, which tracks
/// packet ranges per pointer and not such relations, then refuses the loads they guarded.
/// The barrier is an empty `asm!`: no instruction.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    opaque(ctx.data_end() - ctx.data())
}

/// `x`, but the optimiser no longer knows what it is. The barrier is an empty `asm!`: no
/// instruction, and the verifier, which sees only the register, still knows the value.
#[inline(always)]
fn opaque(#[allow(unused_mut)] mut x: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    // SAFETY: an empty template: no instruction, no memory access.
    unsafe {
        core::arch::asm!("# {0}", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    x
}

/// What the layer-3 parse found.
pub struct L3 {
    pub family: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The upper-layer protocol after any IPv6 extension headers.
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the frame.
    pub l4_off: usize,
    /// Where the IP payload ends (the frame may carry Ethernet padding beyond it).
    pub l3_end: usize,
    /// A fragment: first, middle or last.
    pub fragment: bool,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// What the transport-layer parse found. Ports stay in network byte order, as in the keys.
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    /// A TCP segment that opens a connection: SYN without ACK, RST or FIN (what IPVS
    /// schedules without `sloppy_tcp`).
    pub syn: bool,
    /// A TCP reset: never opens a flow, sloppy or not (IPVS neither).
    pub rst: bool,
    /// The segment's event for the connection's state (`conn_state::EV_*`); `EV_IGNORE`
    /// for UDP.
    pub ev: u32,
}

/// Ethernet and at most one 802.1Q tag: returns (ethertype, offset of the L3 header).
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), u32> {
    let proto = u16::from_be(words::<1>(ctx, 12, DROP_MALFORMED_ETH)?[0]);
    if proto == ETH_P_8021Q {
        let inner = u16::from_be(words::<1>(ctx, ETH_HLEN + 2, DROP_MALFORMED_ETH)?[0]);
        if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
            return Err(PASS_UNSUPPORTED);
        }
        return Ok((inner, ETH_HLEN + VLAN_HLEN));
    }
    if proto == ETH_P_8021AD {
        return Err(PASS_UNSUPPORTED);
    }
    Ok((proto, ETH_HLEN))
}

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize) -> Result<L3, u32> {
    let mut sum = sum_words::<10>(ctx, off, DROP_MALFORMED_IPV4)?;
    let vihl = words::<1>(ctx, off, DROP_MALFORMED_IPV4)?[0].to_ne_bytes()[0];
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(DROP_MALFORMED_IPV4);
    }
    // The kernel's IP layer drops a header whose checksum is wrong before anything else
    // looks at it; here we come first, and a bad header must never be forwarded. Checked
    // for every IPv4 packet, not only those we forward: it costs a few additions
    // (established flows included), and the stack would drop the others. Before the total
    // length, as `ip_rcv_core` does.
    if ihl > IPV4_HLEN {
        sum += ipv4_options_sum(ctx, off, ihl)?;
    }
    if !checksum_ok(sum) {
        return Err(DROP_BAD_IPV4_CSUM);
    }
    // The fields are read again, not taken from the sum's loads (hence `opaque`): kept
    // from there, every header word stayed live across the checks, and in the BPF back
    // end's ten registers the spills cost more than a second read of a line in cache.
    let h = ipv4_fields(ctx, opaque(off), DROP_MALFORMED_IPV4)?;
    let tot_len = h.tot_len as usize;
    let frame = frame_len(ctx);
    if tot_len < ihl || off + tot_len > frame {
        return Err(DROP_MALFORMED_IPV4);
    }
    let frag = h.frag_off;
    // MF set or a non-zero offset.
    let fragment = frag & 0x3fff != 0;
    Ok(L3 {
        family: FAMILY_V4,
        src: [h.src, 0, 0, 0],
        dst: [h.dst, 0, 0, 0],
        proto: h.proto,
        l4_off: off + ihl,
        l3_end: off + tot_len,
        fragment,
    })
}

#[inline(always)]
pub fn ipv6(ctx: &XdpContext, off: usize) -> Result<L3, u32> {
    let h = ipv6_fields(ctx, off, DROP_MALFORMED_IPV6)?;
    if h.version != 6 {
        return Err(DROP_MALFORMED_IPV6);
    }
    let payload = h.payload_len as usize;
    if payload == 0 {
        // A jumbogram (RFC 2675) or an empty packet: nothing we balance.
        return Err(PASS_UNSUPPORTED);
    }
    let frame = frame_len(ctx);
    let l3_end = off + IPV6_HLEN + payload;
    if l3_end > frame {
        return Err(DROP_MALFORMED_IPV6);
    }
    let mut l3 = L3 {
        family: FAMILY_V6,
        src: h.src,
        dst: h.dst,
        proto: h.next,
        l4_off: off + IPV6_HLEN,
        l3_end,
        fragment: false,
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match l3.proto {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let ext = load::<[u8; 2]>(ctx, l3.l4_off, DROP_MALFORMED_IPV6)?;
                l3.proto = ext[0];
                l3.l4_off += (ext[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                // next header, reserved, offset (13 bits) | res (2) | M (1), identification
                let ext = load::<[u8; 4]>(ctx, l3.l4_off, DROP_MALFORMED_IPV6)?;
                let offlg = u16::from_be_bytes([ext[2], ext[3]]);
                l3.proto = ext[0];
                l3.l4_off += 8;
                if l3.l4_off > l3_end {
                    return Err(DROP_MALFORMED_IPV6);
                }
                // An atomic fragment (offset 0, M clear; RFC 6946) is a whole packet.
                l3.fragment = offlg & 0xfff9 != 0;
                // Every fragment of a datagram must follow one rule, and the only thing
                // past this header that every fragment carries is its next-header value
                // (RFC 8200 §4.5: the first header of the fragmentable part). So nothing
                // beyond it is parsed, not even in the first fragment: a fragmentable
                // part that starts with another extension header is passed below, all
                // fragments alike.
                if l3.fragment {
                    break;
                }
            }
            _ => break,
        }
        if l3.l4_off > l3_end {
            return Err(DROP_MALFORMED_IPV6);
        }
    }
    match l3.proto {
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT => {
            Err(PASS_UNSUPPORTED)
        }
        _ => Ok(l3),
    }
}

/// The ports of a TCP or UDP header, and how a TCP segment stands to a connection, after
/// checking that the header lies inside the IP payload: a TCP header's data offset at
/// least 5 words and not beyond the segment; a UDP header whole, its length not beyond the
/// payload.
#[inline(always)]
pub fn ports(ctx: &XdpContext, l3: &L3) -> Result<L4, u32> {
    if l3.proto == PROTO_TCP {
        let p = words::<2>(ctx, l3.l4_off, DROP_MALFORMED_L4)?;
        // Data offset (high nibble of the first byte) and flags (the second byte), RFC 9293
        // §3.1. The offset alone bounds the header: the fixed part is in it.
        let [doff, flags] = words::<1>(ctx, l3.l4_off + 12, DROP_MALFORMED_L4)?[0].to_ne_bytes();
        let hlen = (doff >> 4) as usize * 4;
        if hlen < TCP_HLEN || l3.l4_off + hlen > l3.l3_end {
            return Err(DROP_MALFORMED_L4);
        }
        return Ok(L4 {
            sport: p[0],
            dport: p[1],
            syn: flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN,
            rst: flags & TCP_RST != 0,
            ev: lb_common::conn_state::tcp_event(flags),
        });
    }
    if l3.l4_off + UDP_HLEN > l3.l3_end {
        return Err(DROP_MALFORMED_L4);
    }
    let p = words::<3>(ctx, l3.l4_off, DROP_MALFORMED_L4)?;
    // The UDP length may be shorter than the IP payload (the stack trims the rest) but not
    // longer, nor shorter than the header; IPv6 allows 0, "the whole payload" (RFC 2675,
    // and Linux takes it so for any IPv6 datagram).
    let ulen = u16::from_be(p[2]) as usize;
    if (ulen < UDP_HLEN && (l3.family == FAMILY_V4 || ulen != 0)) || l3.l4_off + ulen > l3.l3_end {
        return Err(DROP_MALFORMED_L4);
    }
    Ok(L4 {
        sport: p[0],
        dport: p[1],
        syn: false,
        rst: false,
        ev: lb_common::conn_state::EV_IGNORE,
    })
}

/// Type and code of an ICMP or ICMPv6 header, whose fixed part is 8 bytes.
#[inline(always)]
pub fn icmp_type_code(ctx: &XdpContext, l3: &L3) -> Result<(u8, u8), u32> {
    if l3.l4_off + 8 > l3.l3_end {
        return Err(DROP_MALFORMED_ICMP);
    }
    let t = load::<[u8; 2]>(ctx, l3.l4_off, DROP_MALFORMED_ICMP)?;
    Ok((t[0], t[1]))
}

/// The packet quoted by an ICMP error (RFC 792, RFC 4443 §2.4): the IP header of a packet we
/// (the VIP) sent, then at least the 8 bytes that hold the ports. Returns the quoted
/// (src, dst, proto, sport, dport).
#[inline(always)]
pub fn icmp_quoted(ctx: &XdpContext, l3: &L3) -> Result<([u32; 4], [u32; 4], u8, u16, u16), u32> {
    let inner = l3.l4_off + 8;
    if l3.family == FAMILY_V4 {
        let h = ipv4_fields(ctx, inner, DROP_MALFORMED_ICMP)?;
        let ihl = ((h.vihl & 0x0f) as usize) * 4;
        if h.vihl >> 4 != 4 || ihl < IPV4_HLEN {
            return Err(DROP_MALFORMED_ICMP);
        }
        if inner + ihl + 4 > l3.l3_end {
            return Err(DROP_MALFORMED_ICMP);
        }
        let p = words::<2>(ctx, inner + ihl, DROP_MALFORMED_ICMP)?;
        Ok(([h.src, 0, 0, 0], [h.dst, 0, 0, 0], h.proto, p[0], p[1]))
    } else {
        let h = ipv6_fields(ctx, inner, DROP_MALFORMED_ICMP)?;
        if h.version != 6 || inner + IPV6_HLEN + 4 > l3.l3_end {
            return Err(DROP_MALFORMED_ICMP);
        }
        let p = words::<2>(ctx, inner + IPV6_HLEN, DROP_MALFORMED_ICMP)?;
        Ok((h.src, h.dst, h.next, p[0], p[1]))
    }
}
