//! TUN forwarding (IPVS's `lb_kind TUN`): the client's packet goes whole inside an outer IP
//! header to the real server, which may sit behind routers. The next hop's MAC, the egress
//! interface and the path's MTU come from the kernel's FIB (`bpf_fib_lookup`), remembered
//! per backend and CPU for a second (`NEXT_HOPS`). A packet that would not fit once wrapped
//! is answered with ICMP "fragmentation needed" / ICMPv6 "packet too big", as IPVS does.
//!
//! The outer header takes the inner packet's family (IPv4 in IPv4, IPv6 in IPv6): the
//! daemon refuses a TUN real server of another family than its virtual server.
use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{reason::*, *};

use crate::{
    maps::{NextHop, BACKENDS},
    parse::{frame_len, join, l3_offset, ptr_at_mut, words},
    route,
};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const ICMP_HLEN: usize = 8;
/// What an ICMP error quotes of the packet it answers: IPv4, the header and 8 bytes (RFC
/// 792; the header is 20 bytes, options are rare and then cut short); IPv6, the header and
/// 8 bytes too: the ports, all the client's stack needs to find the connection (RFC 4443
/// asks for as much as fits in 1280 bytes; a fixed length keeps the checksum a fixed sum).
const QUOTE4: usize = IPV4_HLEN + 8;
const QUOTE6: usize = IPV6_HLEN + 8;
/// TTL (hop limit) of the ICMP errors sent back, as Linux's default.
const ICMP_TTL: u8 = 64;

/// What the wrapped packet's headers take from the inner one.
struct Inner {
    /// The IP packet's length (header included).
    len: u32,
    /// IPv4: the TOS byte; IPv6: the first word (version, traffic class, flow label), raw.
    lead: u32,
    /// IPv4: the identification, raw.
    id: u16,
    df: bool,
    /// An ICMP/ICMPv6 packet: never answered with an ICMP error.
    icmp: bool,
}

/// Sends the frame, which holds a packet of a flow of TUN backend `backend`, to it: wrapped,
/// its MACs the next hop's. `Ok(0)` when it leaves by XDP_TX, `Ok(VIA_REDIRECT)` through
/// another interface; `Err(reason)` when it does not go (answered with an ICMP error, or
/// dropped and counted). `hash`: the flow's, for GUE's UDP source port (ECMP entropy).
///
/// Three steps out of line, each called from here: inlined into each of the program's
/// paths that forward, they took the verifier past its million instructions, and nested
/// in one another their frames passed the 512 bytes of stack a program may use.
#[inline(always)]
pub fn send<const V4: bool>(
    ctx: &XdpContext,
    backend: u32,
    hash: u32,
    clk: Clock,
) -> Result<u32, u32> {
    let slot = route::to_backend::<V4>(ctx, backend, clk)?;
    let w = if V4 {
        wrap4(ctx, backend, slot, hash)
    } else {
        wrap6(ctx, backend, slot, hash)
    };
    if w & TOO_BIG != 0 {
        let room = w & 0xffff;
        return Err(if V4 {
            too_big4(ctx, room)
        } else {
            too_big6(ctx, room)
        });
    }
    if w & FAILED != 0 {
        return Err(w & !FAILED);
    }
    Ok(w)
}

/// Set in what [`wrap4`]/[`wrap6`] return when the frame did not go: with the reason, or
/// with [`TOO_BIG`] and the MTU left inside the tunnel in the low 16 bits.
const FAILED: u32 = 1 << 31;
const TOO_BIG: u32 = 1 << 30;

#[inline(never)]
fn wrap4(ctx: &XdpContext, backend: u32, slot: u32, hash: u32) -> u32 {
    match wrap::<true>(ctx, backend, slot, hash) {
        Ok(v) => v,
        Err(r) => r | FAILED,
    }
}

#[inline(never)]
fn wrap6(ctx: &XdpContext, backend: u32, slot: u32, hash: u32) -> u32 {
    match wrap::<false>(ctx, backend, slot, hash) {
        Ok(v) => v,
        Err(r) => r | FAILED,
    }
}

/// The outer IP protocol of tunnel `kind` (the FIB is asked for it).
#[inline(always)]
pub fn outer_proto<const V4: bool>(kind: u8) -> u8 {
    kind_of::<V4>(kind).0
}

/// The outer protocol and the bytes after the outer IP header, per kind.
#[inline(always)]
fn kind_of<const V4: bool>(kind: u8) -> (u8, usize) {
    match kind {
        TUN_GUE => (PROTO_UDP, TUN_GUE_HLEN),
        TUN_GRE => (PROTO_GRE, TUN_GRE_HLEN),
        _ if V4 => (PROTO_IPIP, 0),
        _ => (PROTO_IPV6, 0),
    }
}

/// Wraps the frame for the backend along the route `NEXT_HOPS` holds (filled by [`route4`]
/// or [`route6`] just before): `Ok` with the verdict's flag, `Err` with `TOO_BIG | mtu`
/// when the packet would not fit (the caller answers it), or a reason.
#[inline(always)]
fn wrap<const V4: bool>(ctx: &XdpContext, backend: u32, slot: u32, hash: u32) -> Result<u32, u32> {
    let b = BACKENDS.get(backend).ok_or(DROP_NO_ROUTE)?;
    let hop: &NextHop = route::hop(slot)?;
    let (proto, extra) = kind_of::<V4>(b.tun_kind);
    let outer = if V4 { IPV4_HLEN } else { IPV6_HLEN };
    let overhead = outer + extra;
    let l3_off = l3_offset(ctx)?;
    let inner = inner::<V4>(ctx, l3_off)?;
    // 0: a kernel that says no MTU (before 5.12, `mtu_result`): no check.
    let mtu = hop.mtu;
    if mtu != 0 && inner.len + overhead as u32 > mtu {
        // IPv4 without DF: IPVS would fragment the outer packet; XDP cannot.
        if inner.icmp || (V4 && !inner.df) {
            return Err(DROP_TOO_BIG);
        }
        // Below the family's least MTU (IPv4 68, IPv6 1280) a host ignores the MTU it is
        // told, and sends the same size again: nothing to answer with.
        let room = mtu.saturating_sub(overhead as u32);
        if room < if V4 { 68 } else { 1280 } {
            return Err(DROP_TOO_BIG);
        }
        return Err(TOO_BIG | (room & 0xffff));
    }
    // SAFETY: the helper moves the frame's start; every packet pointer is derived afresh
    // below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return Err(DROP_NO_ROUTE);
    }
    // Ethernet: the next hop's MAC, the egress interface's; the VLAN tag and ethertype as
    // they were (3 words from the old header: for an untagged frame the last two are the
    // start of the outer IP header, written next).
    let tail = words::<3>(ctx, overhead + 12, DROP_NO_ROUTE)?;
    let eth = ptr_at_mut::<[u16; 9]>(ctx, 0).ok_or(DROP_NO_ROUTE)?;
    // SAFETY: bounds checked by `ptr_at_mut`; the frame starts at an even address. Written
    // field by field, so that no copy of the header is built on the stack.
    unsafe {
        let e = &mut *eth;
        e[0] = hop.dmac[0];
        e[1] = hop.dmac[1];
        e[2] = hop.dmac[2];
        e[3] = hop.smac[0];
        e[4] = hop.smac[1];
        e[5] = hop.smac[2];
        e[6] = tail[0];
        e[7] = tail[1];
        e[8] = tail[2];
    }
    let total = inner.len + overhead as u32;
    if V4 {
        let p = ptr_at_mut::<[u16; 10]>(ctx, l3_off).ok_or(DROP_NO_ROUTE)?;
        // SAFETY: as above.
        unsafe {
            write_ipv4(
                &mut *p,
                inner.lead as u8,
                total as u16,
                inner.id,
                inner.df,
                u16::from_ne_bytes([b.tun_ttl, proto]),
                b.tun_saddr[0],
                b.daddr[0],
            )
        };
    } else {
        let p = ptr_at_mut::<[u16; 20]>(ctx, l3_off).ok_or(DROP_NO_ROUTE)?;
        // SAFETY: as above.
        unsafe {
            let h = &mut *p;
            let [l0, l1] = split(inner.lead);
            h[0] = l0;
            h[1] = l1;
            h[2] = ((total as usize - IPV6_HLEN) as u16).to_be();
            h[3] = u16::from_ne_bytes([proto, b.tun_ttl]);
            for i in 0..4 {
                let [x, y] = split(b.tun_saddr[i]);
                h[4 + 2 * i] = x;
                h[5 + 2 * i] = y;
                let [x, y] = split(b.daddr[i]);
                h[12 + 2 * i] = x;
                h[13 + 2 * i] = y;
            }
        }
    }
    let inner_proto = if V4 { PROTO_IPIP } else { PROTO_IPV6 };
    match b.tun_kind {
        TUN_GUE => {
            let sport = (0xc000 | (hash & 0x3fff)) as u16;
            let ulen = (inner.len + TUN_GUE_HLEN as u32) as u16;
            let p = ptr_at_mut::<[u16; 6]>(ctx, l3_off + outer).ok_or(DROP_NO_ROUTE)?;
            // UDP (checksum 0, as IPVS sends it by default and Linux's GUE receiver takes
            // it over IPv6 too), then GUE: version 0, no options, the inner protocol.
            // SAFETY: as above.
            unsafe {
                let h = &mut *p;
                h[0] = sport.to_be();
                h[1] = b.tun_port;
                h[2] = ulen.to_be();
                h[3] = 0;
                h[4] = u16::from_ne_bytes([0, inner_proto]);
                h[5] = 0;
            }
        }
        TUN_GRE => {
            let ethertype: u16 = if V4 { 0x0800 } else { 0x86dd };
            let p = ptr_at_mut::<[u16; 2]>(ctx, l3_off + outer).ok_or(DROP_NO_ROUTE)?;
            // SAFETY: as above.
            unsafe {
                (*p)[0] = 0;
                (*p)[1] = ethertype.to_be();
            }
        }
        _ => {}
    }
    let ifindex = hop.ifindex;
    if ifindex as usize == ctx.ingress_ifindex() {
        return Ok(0);
    }
    // SAFETY: a helper on scalars; it records the target for the verdict.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(VIA_REDIRECT)
}

/// The inner packet's fields the outer header copies (the parser has checked them).
#[inline(always)]
fn inner<const V4: bool>(ctx: &XdpContext, l3_off: usize) -> Result<Inner, u32> {
    if V4 {
        let h = words::<5>(ctx, l3_off, DROP_MALFORMED_IPV4)?;
        Ok(Inner {
            len: u16::from_be(h[1]) as u32,
            lead: h[0].to_ne_bytes()[1] as u32,
            id: h[2],
            df: u16::from_be(h[3]) & 0x4000 != 0,
            icmp: h[4].to_ne_bytes()[1] == PROTO_ICMP,
        })
    } else {
        let h = words::<4>(ctx, l3_off, DROP_MALFORMED_IPV6)?;
        Ok(Inner {
            len: IPV6_HLEN as u32 + u16::from_be(h[2]) as u32,
            lead: join(h[0], h[1]),
            id: 0,
            df: true,
            icmp: h[3].to_ne_bytes()[0] == PROTO_ICMPV6,
        })
    }
}

/// A 32-bit value as its two 16-bit halves in memory order.
#[inline(always)]
fn split(x: u32) -> [u16; 2] {
    let [a, b, c, d] = x.to_ne_bytes();
    [u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d])]
}

/// Folds an unfolded ones'-complement sum and complements it: the checksum field's value,
/// in the byte order the words were summed in.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Writes an IPv4 header without options into `h`, its checksum computed. Addresses and
/// `id` raw (network byte order in memory); `ttl_proto` the word that holds both.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_ipv4(
    h: &mut [u16; 10],
    tos: u8,
    tot_len: u16,
    id: u16,
    df: bool,
    ttl_proto: u16,
    src: u32,
    dst: u32,
) {
    let [s0, s1] = split(src);
    let [d0, d1] = split(dst);
    let w0 = u16::from_ne_bytes([0x45, tos]);
    let len = tot_len.to_be();
    let frag = if df { 0x4000u16.to_be() } else { 0 };
    let sum = w0 as u32
        + len as u32
        + id as u32
        + frag as u32
        + ttl_proto as u32
        + s0 as u32
        + s1 as u32
        + d0 as u32
        + d1 as u32;
    h[0] = w0;
    h[1] = len;
    h[2] = id;
    h[3] = frag;
    h[4] = ttl_proto;
    h[5] = fold(sum);
    h[6] = s0;
    h[7] = s1;
    h[8] = d0;
    h[9] = d1;
}

/// Turns the frame, an IPv4 packet too big for the tunnel with DF set, into ICMP
/// "fragmentation needed" (type 3, code 4) from its destination (the VIP) to its source,
/// with next-hop MTU `mtu`, quoting its first `QUOTE4` bytes, sent back where it came from
/// (the MACs swapped, a VLAN tag kept). IPVS answers the same way (`icmp_send` from the
/// tunnel's transmit). The answer is smaller than the packet: no amplification.
#[inline(never)]
fn too_big4(ctx: &XdpContext, mtu: u32) -> u32 {
    match icmp4(ctx, mtu) {
        Ok(()) => TX_TOO_BIG,
        Err(r) => r,
    }
}

#[inline(always)]
fn icmp4(ctx: &XdpContext, mtu: u32) -> Result<(), u32> {
    let l3_off = icmp_reply(ctx, IPV4_HLEN + ICMP_HLEN, QUOTE4)?;
    // The quoted header, where the frame's IP header now lies.
    let q = l3_off + IPV4_HLEN + ICMP_HLEN;
    let addrs = words::<4>(ctx, q + 12, DROP_TOO_BIG)?;
    let quoted = sum_in_place::<QUOTE4>(ctx, q)?;
    let mtu = (mtu as u16).to_be();
    let type_code = u16::from_ne_bytes([3, 4]);
    let csum = fold(quoted + type_code as u32 + mtu as u32);
    let p = ptr_at_mut::<[u16; 14]>(ctx, l3_off).ok_or(DROP_TOO_BIG)?;
    // SAFETY: bounds checked by `ptr_at_mut`; an even offset.
    unsafe {
        let h = &mut *p;
        let ip = &mut *(h.as_mut_ptr() as *mut [u16; 10]);
        write_ipv4(
            ip,
            0xc0,
            (IPV4_HLEN + ICMP_HLEN + QUOTE4) as u16,
            0,
            false,
            u16::from_ne_bytes([ICMP_TTL, PROTO_ICMP]),
            join(addrs[2], addrs[3]),
            join(addrs[0], addrs[1]),
        );
        h[10] = type_code;
        h[11] = csum;
        h[12] = 0;
        h[13] = mtu;
    }
    Ok(())
}

/// `too_big4` for IPv6: ICMPv6 "packet too big" (type 2) with MTU `mtu`.
#[inline(never)]
fn too_big6(ctx: &XdpContext, mtu: u32) -> u32 {
    match icmp6(ctx, mtu) {
        Ok(()) => TX_TOO_BIG,
        Err(r) => r,
    }
}

#[inline(always)]
fn icmp6(ctx: &XdpContext, mtu: u32) -> Result<(), u32> {
    let l3_off = icmp_reply(ctx, IPV6_HLEN + ICMP_HLEN, QUOTE6)?;
    let q = l3_off + IPV6_HLEN + ICMP_HLEN;
    // The quote covers the quoted packet's addresses: both are summed in it already, and
    // the pseudo-header's are the same two (their sum is the same either way round).
    let quoted = sum_in_place::<QUOTE6>(ctx, q)?;
    let addrs = sum_in_place::<32>(ctx, q + 8)?;
    let len = (ICMP_HLEN + QUOTE6) as u16;
    let [m0, m1] = split(mtu.to_be());
    let type_code = u16::from_ne_bytes([2, 0]);
    let csum = fold(
        quoted
            + addrs
            + len.to_be() as u32
            + (PROTO_ICMPV6 as u16).to_be() as u32
            + type_code as u32
            + m0 as u32
            + m1 as u32,
    );
    let src = ptr_at_mut::<[u16; 16]>(ctx, q + 8).ok_or(DROP_TOO_BIG)?;
    let p = ptr_at_mut::<[u16; 24]>(ctx, l3_off).ok_or(DROP_TOO_BIG)?;
    // SAFETY: bounds checked by `ptr_at_mut`; even offsets. The answer's addresses are the
    // quoted packet's, crossed: copied word by word from the quote, which lies after them.
    unsafe {
        let h = &mut *p;
        let s = &*src;
        h[0] = 6u16 << 4;
        h[1] = 0;
        h[2] = len.to_be();
        h[3] = u16::from_ne_bytes([PROTO_ICMPV6, ICMP_TTL]);
        for i in 0..8 {
            // The quoted destination (after its source) becomes the source.
            h[4 + i] = s[8 + i];
            h[12 + i] = s[i];
        }
        h[20] = type_code;
        h[21] = csum;
        h[22] = m0;
        h[23] = m1;
    }
    Ok(())
}

/// The ones'-complement sum (unfolded, 32 bits) of the `N` bytes at `off` (a multiple of
/// 4), by the kernel's `bpf_csum_diff`: summed here, the words took more registers and
/// stack than the program has.
#[inline(always)]
fn sum_in_place<const N: usize>(ctx: &XdpContext, off: usize) -> Result<u32, u32> {
    let p = ptr_at_mut::<[u8; N]>(ctx, off).ok_or(DROP_TOO_BIG)?;
    // SAFETY: `N` bytes of the frame, checked; nothing is written.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p.cast(), N as u32, 0) };
    if r < 0 {
        return Err(DROP_TOO_BIG);
    }
    // The helper's sum is of 32-bit words: folded to 16 bits it is the sum of the 16-bit
    // ones (end-around carry makes the two the same).
    let r = r as u64 as u32;
    Ok((r & 0xffff) + (r >> 16))
}

/// Makes room for an ICMP error of `hlen` bytes (IP and ICMP headers) before the frame's IP
/// packet, cuts the packet to its first `quote` bytes, and writes the Ethernet header back
/// to where the frame came from. Returns where the answer's IP header goes; the packet's
/// now lies `hlen` bytes after it.
#[inline(always)]
fn icmp_reply(ctx: &XdpContext, hlen: usize, quote: usize) -> Result<usize, u32> {
    let l3_off = l3_offset(ctx)?;
    // SAFETY: as in `wrap`: pointers are derived afresh after each helper.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hlen as i32)) } != 0 {
        return Err(DROP_TOO_BIG);
    }
    let len = frame_len(ctx);
    let want = l3_off + hlen + quote;
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want as i32 - len as i32) } != 0 {
        return Err(DROP_TOO_BIG);
    }
    // The frame's Ethernet header is now at `hlen`: its source becomes the destination.
    let old = ptr_at_mut::<[u16; 9]>(ctx, hlen).ok_or(DROP_TOO_BIG)?;
    let eth = ptr_at_mut::<[u16; 9]>(ctx, 0).ok_or(DROP_TOO_BIG)?;
    // SAFETY: bounds checked by `ptr_at_mut`; even offsets; the two do not overlap.
    unsafe {
        let (o, e) = (&*old, &mut *eth);
        e[0] = o[3];
        e[1] = o[4];
        e[2] = o[5];
        e[3] = o[0];
        e[4] = o[1];
        e[5] = o[2];
        e[6] = o[6];
        e[7] = o[7];
        e[8] = o[8];
    }
    Ok(l3_off)
}
