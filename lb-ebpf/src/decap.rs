//! The real server's side of TUN forwarding (`lb-daemon realserver start --tunnel`): takes
//! the outer header off a packet the load balancer wrapped (IPIP, GUE or GRE, IPv4 or IPv6)
//! when the packet inside is for one of the VIPs, and hands the inner packet to the stack,
//! which delivers it to the VIP on `lo` and answers the client directly.
//!
//! What the kernel's own tunnel devices (`tunl0`, `ip6tnl0`, `gre0`, `fou`) do for IPVS's
//! real servers, here without them: a kernel built without those drivers, or a host where
//! they would answer for every remote, serves too. Anything else passes untouched: an outer
//! packet with options or fragmented, a GRE header with flags, GUE with options or another
//! port, an inner packet not for a VIP (an open tunnel endpoint would relay for anyone).
use aya_ebpf::{
    helpers::bpf_xdp_adjust_head, macros::map, maps::HashMap, programs::XdpContext, Global,
};
use lb_common::{DecapKey, PROTO_GRE, PROTO_IPIP, PROTO_IPV6, PROTO_UDP};

use crate::parse::{join, ptr_at_mut, words, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6};

const XDP_PASS: u32 = 2;

/// The VIPs this real server takes tunnelled packets for (set by `realserver start`).
#[map]
pub static DECAP_VIPS: HashMap<DecapKey, u32> = HashMap::with_max_entries(64, 0);

/// GUE's UDP port, network byte order; 0: no GUE. Set at load time.
#[unsafe(no_mangle)]
pub static DECAP_GUE_PORT: Global<u16> = Global::new(0);

/// Always XDP_PASS: decapsulated or not, the stack gets the frame.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let _ = decap(ctx);
    XDP_PASS
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Option<()> {
    let t = u16::from_be(words::<1>(ctx, 12, 0).ok()?[0]);
    let (ethertype, l3_off) = if t == ETH_P_8021Q {
        (u16::from_be(words::<1>(ctx, 16, 0).ok()?[0]), 18)
    } else {
        (t, 14)
    };
    let hdr = match ethertype {
        ETH_P_IP => outer4(ctx, l3_off)?,
        ETH_P_IPV6 => outer6(ctx, l3_off)?,
        _ => return None,
    };
    // The Ethernet header (and tag) moves up to just before the inner packet, whose family
    // is the outer one's (checked): its ethertype stays right.
    if l3_off == 18 {
        let old = words::<9>(ctx, 0, 0).ok()?;
        let new = ptr_at_mut::<[u16; 9]>(ctx, hdr).ok_or(0).ok()?;
        // SAFETY: bounds checked; an even offset.
        unsafe { new.write(old) };
    } else {
        let old = words::<7>(ctx, 0, 0).ok()?;
        let new = ptr_at_mut::<[u16; 7]>(ctx, hdr).ok_or(0).ok()?;
        // SAFETY: as above.
        unsafe { new.write(old) };
    }
    // SAFETY: moves the frame's start past the outer headers, inside the frame.
    (unsafe { bpf_xdp_adjust_head(ctx.ctx, hdr as i32) } == 0).then_some(())
}

/// The bytes of outer headers before an IPv4 packet for a VIP, after the IPv4 header at
/// `off`.
#[inline(always)]
fn outer4(ctx: &XdpContext, off: usize) -> Option<usize> {
    let h = words::<10>(ctx, off, 0).ok()?;
    let [vihl, _] = h[0].to_ne_bytes();
    let frag = u16::from_be(h[3]);
    let [_, proto] = h[4].to_ne_bytes();
    // Options or a fragment: not something the load balancer sends.
    if vihl != 0x45 || frag & 0x3fff != 0 {
        return None;
    }
    let extra = tunnel_header(ctx, off + 20, proto, PROTO_IPIP, 0x0800)?;
    let inner = off + 20 + extra;
    let i = words::<10>(ctx, inner, 0).ok()?;
    if i[0].to_ne_bytes()[0] >> 4 != 4 {
        return None;
    }
    let key = DecapKey {
        addr: [join(i[8], i[9]), 0, 0, 0],
        family: 4,
    };
    // SAFETY: a read of a map value the daemon wrote once.
    unsafe { DECAP_VIPS.get(&key) }?;
    Some(20 + extra)
}

/// [`outer4`] for IPv6.
#[inline(always)]
fn outer6(ctx: &XdpContext, off: usize) -> Option<usize> {
    let h = words::<4>(ctx, off, 0).ok()?;
    let [proto, _] = h[3].to_ne_bytes();
    let extra = tunnel_header(ctx, off + 40, proto, PROTO_IPV6, 0x86dd)?;
    let inner = off + 40 + extra;
    let i = words::<20>(ctx, inner, 0).ok()?;
    if i[0].to_ne_bytes()[0] >> 4 != 6 {
        return None;
    }
    let key = DecapKey {
        addr: [
            join(i[12], i[13]),
            join(i[14], i[15]),
            join(i[16], i[17]),
            join(i[18], i[19]),
        ],
        family: 6,
    };
    // SAFETY: as above.
    unsafe { DECAP_VIPS.get(&key) }?;
    Some(40 + extra)
}

/// The tunnel header after the outer IP header at `off`, for an inner packet of protocol
/// `inner` (4 or 41) and ethertype `ethertype`: its length, or `None` if it is none of ours.
#[inline(always)]
fn tunnel_header(
    ctx: &XdpContext,
    off: usize,
    proto: u8,
    inner: u8,
    ethertype: u16,
) -> Option<usize> {
    match proto {
        p if p == inner => Some(0),
        PROTO_GRE => {
            // No checksum, key, sequence or routing; version 0.
            let g = words::<2>(ctx, off, 0).ok()?;
            (g[0] == 0 && u16::from_be(g[1]) == ethertype).then_some(4)
        }
        PROTO_UDP => {
            let port = DECAP_GUE_PORT.load();
            let u = words::<6>(ctx, off, 0).ok()?;
            // GUE version 0 without options (flags 0), for the inner protocol.
            let [b0, ctype] = u[4].to_ne_bytes();
            (port != 0 && u[1] == port && b0 == 0 && ctype == inner && u[5] == 0).then_some(12)
        }
        _ => None,
    }
}
