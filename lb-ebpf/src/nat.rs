//! NAT forwarding (IPVS's masquerading, keepalived's `lb_kind NAT`): a client's packet to
//! the VIP gets the real server's address and port as its destination; the real server's
//! reply, which comes back through this node (its gateway), gets the VIP and the service's
//! port back as its source. Checksums are updated in place (RFC 1624), never recomputed;
//! the next hop each way comes from the kernel's FIB (`route.rs`).
//!
//! A reply's new source is its real server's service's VIP and port: `NAT_SOURCES4`/
//! `NAT_SOURCES6`, which the daemon writes per real server, say them, with no reverse
//! entry (the flow table still says whether the reply's connection is live,
//! `lb::nat_live`). Only a real server's port that two service keys reach (two services',
//! or two entries of a `virtual_server_group`) needs its flows told apart:
//! `NAT_REV4`/`NAT_REV6` key them by their replies and give each flow's key back
//! (`lb::nat_reply`). A group's real server without a port keeps each packet's, and has
//! an entry per port it answers from. What the program cannot rewrite is dropped and counted
//! (`drop_nat_unsupported`): a fragment (its later pieces carry no port) and an IPv6 packet
//! with extension headers before TCP or UDP.
//!
//! A client's packet whose next hop (to the real server) has no neighbour entry is no drop
//! here, unlike TUN's: rewritten, it is no longer for the VIP, so the stack can forward it,
//! resolving the neighbour on the way (`pass_nat_to_stack`). A reply's cannot go that way:
//! rewritten, its source is the VIP, which the stack of the node holding it drops as a
//! martian; it is dropped and counted (`drop_no_neigh`), as TUN's. A reply whose TTL runs
//! out goes to the stack as it came, which answers its sender. A packet from a real
//! server's service port to this node itself (a health check's answer) is no reply: it
//! passes untouched.
use aya_ebpf::{helpers::bpf_csum_diff, programs::XdpContext};
use lb_common::{csum, reason::*, *};

use crate::{
    maps::BACKENDS,
    parse::{join, l3_offset, ptr_at_mut, words},
    route,
};

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Set in what the out-of-line steps return when the frame did not go, with the reason.
const FAILED: u32 = 1 << 31;

#[inline(always)]
fn result(r: u32) -> Result<u32, u32> {
    if r & FAILED != 0 {
        Err(r & !FAILED)
    } else {
        Ok(r)
    }
}

/// Sends the frame, a client's packet of a flow of NAT backend `backend`, to it: `Ok(0)` by
/// XDP_TX, `Ok(VIA_REDIRECT)` through another interface, `Err(reason)` when it does not
/// go that way. `ICMP`: the frame is an ICMP error from the client's side about the flow
/// (its quoted packet a reply the client got from the VIP), sent to the real server as
/// IPVS's `ip_vs_nat_icmp` sends it: `Ok(FWD_ICMP | via)`.
#[inline(always)]
pub fn send<const V4: bool, const ICMP: bool>(
    ctx: &XdpContext,
    backend: u32,
    clk: Clock,
) -> Result<u32, u32> {
    let slot = match route::to_backend::<V4>(ctx, backend, clk) {
        Ok(slot) => slot,
        Err(DROP_NO_NEIGH) => u32::MAX,
        Err(r) => return Err(r),
    };
    result(if V4 {
        in4::<ICMP>(ctx, backend, slot)
    } else {
        in6::<ICMP>(ctx, backend, slot)
    })
}

// Out of line, as TUN's steps (see `tunnel::send`): inlined into every path that forwards,
// they would take the verifier past its limits.
#[inline(never)]
fn in4<const ICMP: bool>(ctx: &XdpContext, backend: u32, slot: u32) -> u32 {
    match inbound::<true, ICMP>(ctx, backend, slot) {
        Ok(v) => v,
        Err(r) => r | FAILED,
    }
}

#[inline(never)]
fn in6<const ICMP: bool>(ctx: &XdpContext, backend: u32, slot: u32) -> u32 {
    match inbound::<false, ICMP>(ctx, backend, slot) {
        Ok(v) => v,
        Err(r) => r | FAILED,
    }
}

/// `slot`: the backend's `NEXT_HOPS` slot, `u32::MAX` when its next hop has no neighbour
/// entry (the rewritten packet then goes to the stack).
#[inline(always)]
fn inbound<const V4: bool, const ICMP: bool>(
    ctx: &XdpContext,
    backend: u32,
    slot: u32,
) -> Result<u32, u32> {
    let b = BACKENDS.get(backend).ok_or(DROP_NO_ROUTE)?;
    let l3_off = l3_offset(ctx)?;
    if ICMP {
        icmp_rewrite::<V4, false>(ctx, l3_off, &b.daddr, b.nat_port)?;
    } else {
        let (l4_off, tcp) = transport::<V4>(ctx, l3_off)?;
        let port = if b.nat_port != 0 {
            b.nat_port
        } else {
            words::<1>(ctx, l4_off + 2, DROP_MALFORMED_L4)?[0]
        };
        rewrite::<V4, true>(ctx, l3_off, l4_off, tcp, &b.daddr, port)?;
    }
    if slot == u32::MAX {
        return Err(PASS_NAT_TO_STACK);
    }
    let hop = route::hop(slot)?;
    let via = route::out(ctx, hop.dmac, hop.smac, hop.ifindex)?;
    Ok(if ICMP { FWD_ICMP | via } else { via })
}

/// A real server's reply in a NAT flow: its source becomes `vip`, `vport` (as they lie in
/// the packet), its TTL one less, and it goes towards the client (its destination,
/// `client`). `Ok(FWD_NAT_REPLY | via)`, or the reason it does not go that way. `ICMP`: the
/// frame is an ICMP error from the real servers' side (the real server, or a router on
/// its way) about the flow (its quoted packet the client's, translated here), sent to the
/// client as from the VIP: the outer source, the quoted destination and its port become
/// the VIP's (`Ok(FWD_ICMP | via)`).
///
/// The route is asked first, from here (each step called from the main frame: nested, the
/// frames would pass the 512 bytes of stack a program may use); without one the packet is
/// left as it came.
#[inline(always)]
pub fn reply4<const ICMP: bool>(
    ctx: &XdpContext,
    vip: u32,
    vport: u16,
    client: u32,
    clk: Clock,
) -> Result<u32, u32> {
    let slot = route::to_host4(ctx, vip, client, clk)?;
    result(out4::<ICMP>(ctx, vip, vport, slot))
}

#[inline(always)]
pub fn reply6<const ICMP: bool>(
    ctx: &XdpContext,
    vip: &[u32; 4],
    vport: u16,
    client: &[u32; 4],
    clk: Clock,
) -> Result<u32, u32> {
    let slot = route::to_host6(ctx, vip, client, clk)?;
    result(out6::<ICMP>(ctx, vip, vport, slot))
}

#[inline(never)]
fn out4<const ICMP: bool>(ctx: &XdpContext, vip: u32, vport: u16, slot: u32) -> u32 {
    let vip = [vip, 0, 0, 0];
    match outbound::<true, ICMP>(ctx, &vip, vport, slot) {
        Ok(v) => v,
        Err(r) => r | FAILED,
    }
}

#[inline(never)]
fn out6<const ICMP: bool>(ctx: &XdpContext, vip: &[u32; 4], vport: u16, slot: u32) -> u32 {
    match outbound::<false, ICMP>(ctx, vip, vport, slot) {
        Ok(v) => v,
        Err(r) => r | FAILED,
    }
}

/// `slot`: the client's `HOST_HOPS` slot.
#[inline(always)]
fn outbound<const V4: bool, const ICMP: bool>(
    ctx: &XdpContext,
    vip: &[u32; 4],
    vport: u16,
    slot: u32,
) -> Result<u32, u32> {
    let l3_off = l3_offset(ctx)?;
    if ICMP {
        icmp_rewrite::<V4, true>(ctx, l3_off, vip, vport)?;
    } else {
        let (l4_off, tcp) = transport::<V4>(ctx, l3_off)?;
        // One whose TTL runs out goes to the stack as it came, which answers its sender.
        if !hop_limit::<V4>(ctx, l3_off)? {
            return Err(PASS_NAT_TO_STACK);
        }
        rewrite::<V4, false>(ctx, l3_off, l4_off, tcp, vip, vport)?;
    }
    let hop = route::host_hop(slot)?;
    let via = route::out(ctx, hop.dmac, hop.smac, hop.ifindex)?;
    Ok(if ICMP { FWD_ICMP } else { FWD_NAT_REPLY } | via)
}

/// Takes one off the TTL (hop limit), as a router does: false, and nothing changed, when it
/// would reach 0 (the stack answers with "time exceeded").
#[inline(always)]
fn hop_limit<const V4: bool>(ctx: &XdpContext, l3_off: usize) -> Result<bool, u32> {
    if V4 {
        let h = ptr_at_mut::<[u16; 10]>(ctx, l3_off).ok_or(DROP_MALFORMED_IPV4)?;
        // SAFETY: bounds checked by `ptr_at_mut`; an even offset.
        unsafe {
            let h = &mut *h;
            let [ttl, proto] = h[4].to_ne_bytes();
            if ttl <= 1 {
                return Ok(false);
            }
            let new = u16::from_ne_bytes([ttl - 1, proto]);
            h[5] = csum::replace16(h[5], h[4], new);
            h[4] = new;
        }
    } else {
        let h = ptr_at_mut::<[u16; 4]>(ctx, l3_off).ok_or(DROP_MALFORMED_IPV6)?;
        // SAFETY: as above.
        unsafe {
            let h = &mut *h;
            let [next, hops] = h[3].to_ne_bytes();
            if hops <= 1 {
                return Ok(false);
            }
            h[3] = u16::from_ne_bytes([next, hops - 1]);
        }
    }
    Ok(true)
}

/// Where TCP or UDP starts, and whether it is TCP; `DROP_NAT_UNSUPPORTED` for a fragment,
/// or an IPv6 packet whose TCP or UDP header does not follow the fixed header at once.
#[inline(always)]
fn transport<const V4: bool>(ctx: &XdpContext, l3_off: usize) -> Result<(usize, bool), u32> {
    if V4 {
        let h = words::<5>(ctx, l3_off, DROP_MALFORMED_IPV4)?;
        let [vihl, _] = h[0].to_ne_bytes();
        if u16::from_be(h[3]) & 0x3fff != 0 {
            return Err(DROP_NAT_UNSUPPORTED);
        }
        let proto = h[4].to_ne_bytes()[1];
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Err(DROP_NAT_UNSUPPORTED);
        }
        let ihl = (vihl & 0xf) as usize * 4;
        if ihl < IPV4_HLEN {
            return Err(DROP_MALFORMED_IPV4);
        }
        Ok((l3_off + ihl, proto == PROTO_TCP))
    } else {
        let h = words::<4>(ctx, l3_off, DROP_MALFORMED_IPV6)?;
        let next = h[3].to_ne_bytes()[0];
        if next != PROTO_TCP && next != PROTO_UDP {
            return Err(DROP_NAT_UNSUPPORTED);
        }
        Ok((l3_off + IPV6_HLEN, next == PROTO_TCP))
    }
}

/// Rewrites the destination (`DST`) or source address to `addr` and the same side's port to
/// `port` (both as they lie in the packet), updating the IPv4 header's checksum and TCP's or
/// UDP's (an IPv4 UDP checksum of 0, "none", stays 0; a computed 0 is sent as 0xffff).
#[inline(always)]
fn rewrite<const V4: bool, const DST: bool>(
    ctx: &XdpContext,
    l3_off: usize,
    l4_off: usize,
    tcp: bool,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), u32> {
    // The IP header's bounds first: checked after TCP's, whose offset lies past it, the
    // compiler drops this check as implied, and the verifier, which does not follow that
    // reasoning, refuses the access.
    let (h4, h6) = if V4 {
        let h = ptr_at_mut::<[u16; 10]>(ctx, l3_off).ok_or(DROP_MALFORMED_IPV4)?;
        (h, core::ptr::null_mut())
    } else {
        let h = ptr_at_mut::<[u16; 20]>(ctx, l3_off).ok_or(DROP_MALFORMED_IPV6)?;
        (core::ptr::null_mut(), h)
    };
    // The ports and the checksum through one pointer, checked once for all of them (TCP's
    // checksum is word 8, UDP's word 3): two pointers, and the compiler again drops the
    // check of the one whose bounds the other's imply.
    let (l4, ci) = if tcp {
        let p = ptr_at_mut::<[u16; 9]>(ctx, l4_off).ok_or(DROP_MALFORMED_L4)?;
        (p.cast::<u16>(), 8)
    } else {
        let p = ptr_at_mut::<[u16; 4]>(ctx, l4_off).ok_or(DROP_MALFORMED_L4)?;
        (p.cast::<u16>(), 3)
    };
    // SAFETY: within the words checked; TCP and UDP headers start at an even offset (the
    // IP header's length is a multiple of 4), so the fields are 2-aligned.
    let (c, pt) = unsafe { (l4.add(ci), l4.add(if DST { 1 } else { 0 })) };
    // SAFETY: as above.
    let mut check = unsafe { c.read() };
    let none = !tcp && V4 && check == 0;
    if V4 {
        let i = if DST { 8 } else { 6 };
        // SAFETY: as above; `h4` was checked for 20 bytes.
        unsafe {
            let h = &mut *h4;
            let old = join(h[i], h[i + 1]);
            let [lo, hi] = split(addr[0]);
            h[5] = csum::replace32(h[5], old, addr[0]);
            h[i] = lo;
            h[i + 1] = hi;
            check = csum::replace32(check, old, addr[0]);
        }
    } else {
        let base = if DST { 12 } else { 4 };
        // SAFETY: as above; `h6` was checked for 40 bytes, the address is its 16 bytes at
        // `base` words.
        unsafe {
            let old = (h6 as *mut u16).add(base);
            // RFC 1624 over the whole address by the kernel's `bpf_csum_diff`: word by
            // word, the four updates held more registers than the function has.
            check = csum16_diff(old, addr, check)?;
            for w in 0..4 {
                let [lo, hi] = split(addr[w]);
                old.add(2 * w).write(lo);
                old.add(2 * w + 1).write(hi);
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        check = csum::replace16(check, pt.read(), port);
        pt.write(port);
        if !none {
            c.write(if !tcp && check == 0 { 0xffff } else { check });
        }
    }
    Ok(())
}

/// Rewrites an ICMP error about a NAT flow: `OUT` (towards the client) the outer source,
/// the quoted destination and its port, and the TTL (hop limit) one less; else the outer
/// destination, the quoted source and its port. Only the common shape is taken: no IPv4
/// options, outside or quoted, and the quoted TCP or UDP header right after the quoted
/// IP header; the rest passes to the stack untouched (`pass_icmp`). The whole of it lies
/// at fixed offsets from the IP header, checked once through one pointer (separate checks
/// of nested regions are dropped by the compiler as implied, which the verifier refuses).
///
/// Checksums, in place: the IPv4 header's and the quoted header's for their addresses; the
/// ICMP checksum, which covers the quoted header, changes only by the port (the quoted
/// address's change and its header checksum's cancel out); ICMPv6's covers the outer
/// addresses too (the pseudo-header). The quoted TCP or UDP checksum is left as it came,
/// as IPVS leaves it (the quote is usually cut short of the segment it sums).
#[inline(always)]
fn icmp_rewrite<const V4: bool, const OUT: bool>(
    ctx: &XdpContext,
    l3_off: usize,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), u32> {
    if V4 {
        // Outer header words 0..10, ICMP 10..14 (checksum 11), quoted header 14..24
        // (checksum 19, source 20..22, destination 22..24), quoted ports 24 and 25.
        let p = ptr_at_mut::<[u16; 26]>(ctx, l3_off).ok_or(DROP_MALFORMED_ICMP)?;
        // SAFETY: bounds checked by `ptr_at_mut`; the IP header starts at an even offset.
        let h = unsafe { &mut *p };
        if h[0].to_ne_bytes()[0] != 0x45 || h[14].to_ne_bytes()[0] != 0x45 {
            return Err(PASS_ICMP);
        }
        if OUT {
            let [ttl, proto] = h[4].to_ne_bytes();
            if ttl <= 1 {
                return Err(PASS_NAT_TO_STACK);
            }
            let new = u16::from_ne_bytes([ttl - 1, proto]);
            h[5] = csum::replace16(h[5], h[4], new);
            h[4] = new;
        }
        let (o, q, pi) = if OUT { (6, 22, 25) } else { (8, 20, 24) };
        let [lo, hi] = split(addr[0]);
        let old = join(h[o], h[o + 1]);
        h[5] = csum::replace32(h[5], old, addr[0]);
        h[o] = lo;
        h[o + 1] = hi;
        let old = join(h[q], h[q + 1]);
        h[19] = csum::replace32(h[19], old, addr[0]);
        h[q] = lo;
        h[q + 1] = hi;
        if port != 0 {
            h[11] = csum::replace16(h[11], h[pi], port);
            h[pi] = port;
        }
    } else {
        // Outer header words 0..20 (hop limit in 3, source 4..12, destination 12..20),
        // ICMPv6 20..24 (checksum 21), quoted header 24..44 (source 28..36, destination
        // 36..44), quoted ports 44 and 45.
        let p = ptr_at_mut::<[u16; 46]>(ctx, l3_off).ok_or(DROP_MALFORMED_ICMP)?;
        // SAFETY: as above.
        let h = unsafe { &mut *p };
        // ICMPv6 right after the fixed header (no extension headers, which would move
        // everything), and TCP or UDP right after the quoted one.
        let quoted_next = h[27].to_ne_bytes()[0];
        if h[3].to_ne_bytes()[0] != 58
            || h[24].to_ne_bytes()[0] >> 4 != 6
            || (quoted_next != PROTO_TCP && quoted_next != PROTO_UDP)
        {
            return Err(PASS_ICMP);
        }
        if OUT {
            let [next, hops] = h[3].to_ne_bytes();
            if hops <= 1 {
                return Err(PASS_NAT_TO_STACK);
            }
            h[3] = u16::from_ne_bytes([next, hops - 1]);
        }
        let (o, q, pi) = if OUT { (4, 36, 45) } else { (12, 28, 44) };
        let base = h.as_mut_ptr();
        // SAFETY: as above; each address is 16 bytes within the 92 checked, read before
        // `h` is used again.
        let check = unsafe {
            let check = csum16_diff(base.add(o), addr, h[21])?;
            csum16_diff(base.add(q), addr, check)?
        };
        for w in 0..4 {
            let [lo, hi] = split(addr[w]);
            h[o + 2 * w] = lo;
            h[o + 2 * w + 1] = hi;
            h[q + 2 * w] = lo;
            h[q + 2 * w + 1] = hi;
        }
        h[21] = check;
        if port != 0 {
            h[21] = csum::replace16(h[21], h[pi], port);
            h[pi] = port;
        }
    }
    Ok(())
}

/// `check` updated for the 16 bytes at `old` becoming `new` (RFC 1624, by the kernel's
/// `bpf_csum_diff`: the sum of `new` less that of `old`, on top of `~check`).
///
/// # Safety
/// `old` must point to 16 readable bytes of the packet.
#[inline(always)]
unsafe fn csum16_diff(old: *mut u16, new: &[u32; 4], check: u16) -> Result<u16, u32> {
    // SAFETY: the caller's.
    let sum = unsafe {
        bpf_csum_diff(
            old.cast(),
            16,
            new.as_ptr() as *mut u32,
            16,
            (!check) as u32,
        )
    };
    // Never, with these sizes; counted as the IPv6 packet's fault should a kernel say so.
    if sum < 0 {
        return Err(DROP_MALFORMED_IPV6);
    }
    let sum = sum as u64 as u32;
    let folded = (sum & 0xffff) + (sum >> 16);
    Ok(!(((folded & 0xffff) + (folded >> 16)) as u16))
}

/// A 32-bit value as its two 16-bit halves in memory order.
#[inline(always)]
fn split(x: u32) -> [u16; 2] {
    let [a, b, c, d] = x.to_ne_bytes();
    [u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d])]
}
