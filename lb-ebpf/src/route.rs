//! The next hop towards a backend that is not on the load balancer's segment (TUN's and
//! NAT's real servers), and towards a NAT client: the kernel's FIB (`bpf_fib_lookup`) names
//! the next hop's MAC, the egress interface and the route's MTU. An answer is kept per CPU
//! for a second, a backend's by its id (`NEXT_HOPS`), a client's by its address
//! (`HOST_HOPS`), and asked again at once after any update (epoch).
use aya_ebpf::{
    helpers::{bpf_fib_lookup, bpf_get_smp_processor_id, bpf_redirect},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{reason::*, *};

use crate::{
    maps::{HostHop, NextHop, BACKENDS, FIB_SCRATCH, HOST_HOPS, NEIGH_WANTED, NEXT_HOPS, TX_PORTS},
    parse::ptr_at_mut,
    tunnel,
};

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// `BPF_FIB_LKUP_RET_NO_NEIGH`: a route, but no neighbour entry for its next hop.
const FIB_NO_NEIGH: i64 = 7;
/// `BPF_FIB_LKUP_RET_NOT_FWDED`: the destination is local (no forwarding to do).
const FIB_NOT_FWDED: i64 = 4;

/// `struct bpf_fib_lookup` (uapi/linux/bpf.h), its unions reduced to the members used:
/// `tot_len` comes back as the route's MTU on success (`mtu_result`).
#[repr(C)]
pub struct FibParams {
    pub family: u8,
    pub l4_protocol: u8,
    pub sport: u16,
    pub dport: u16,
    pub tot_len: u16,
    pub ifindex: u32,
    pub flowinfo: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub vlan: u32,
    pub smac: [u16; 3],
    pub dmac: [u16; 3],
}
const _: () = assert!(core::mem::size_of::<FibParams>() == 64);

/// The `NEXT_HOPS` slot that holds the route to `backend` for this CPU, asked of the FIB
/// when the slot does not hold it for this second and epoch; `Err(reason)` when there is no
/// usable route. The memo is checked here, an array read: the call that asks the FIB is
/// made once a second (or after an update) only.
#[inline(always)]
pub fn to_backend<const V4: bool>(ctx: &XdpContext, backend: u32, clk: Clock) -> Result<u32, u32> {
    // SAFETY: a helper without arguments or side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let slot = cpu
        .wrapping_mul(NEXT_HOP_SLOTS)
        .wrapping_add(backend & (NEXT_HOP_SLOTS - 1));
    let ingress = ctx.ingress_ifindex() as u32;
    let fresh = NEXT_HOPS.get(slot).is_some_and(|h| {
        h.ok == 1
            && h.checked == clk.now
            && h.epoch == clk.epoch
            && h.backend == backend
            && h.ingress == ingress
    });
    if !fresh {
        let r = if V4 {
            route4(ctx, backend, slot, clk.now, clk.epoch)
        } else {
            route6(ctx, backend, slot, clk.now, clk.epoch)
        };
        if r != 0 {
            return Err(r);
        }
    }
    Ok(slot)
}

/// [`next_hop`] for an IPv4 backend: 0 when `NEXT_HOPS` holds its route, else the reason.
#[inline(never)]
fn route4(ctx: &XdpContext, backend: u32, slot: u32, now: u32, epoch: u32) -> u32 {
    match next_hop::<true>(ctx, backend, slot, Clock { now, epoch }) {
        Ok(()) => 0,
        Err(r) => r,
    }
}

#[inline(never)]
fn route6(ctx: &XdpContext, backend: u32, slot: u32, now: u32, epoch: u32) -> u32 {
    match next_hop::<false>(ctx, backend, slot, Clock { now, epoch }) {
        Ok(()) => 0,
        Err(r) => r,
    }
}

/// Asks the FIB for the route to `backend` and keeps the answer in this CPU's memo, `slot`
/// (valid for this second and epoch). A failed answer is not kept: the next packet asks
/// again.
#[inline(always)]
fn next_hop<const V4: bool>(
    ctx: &XdpContext,
    backend: u32,
    slot: u32,
    clk: Clock,
) -> Result<(), u32> {
    let hop = NEXT_HOPS.get_ptr_mut(slot).ok_or(DROP_NO_ROUTE)?;
    // SAFETY: this CPU's slot; the program runs to its end on one CPU.
    unsafe { (*hop).ok = 0 };
    let b = BACKENDS.get(backend).ok_or(DROP_NO_ROUTE)?;
    let params = FIB_SCRATCH.get_ptr_mut(0).ok_or(DROP_NO_ROUTE)?;
    // The protocol matters only to policy routing by protocol: a tunnel's outer one, else
    // none (a NAT backend's route is its address's).
    let proto = if b.flags & BACKEND_F_TUN != 0 {
        tunnel::outer_proto::<V4>(b.tun_kind)
    } else {
        0
    };
    // SAFETY: this CPU's scratch slot (a map value: the 64 bytes stay off the stack).
    let p = unsafe { &mut *params };
    p.family = if V4 { AF_INET } else { AF_INET6 };
    p.l4_protocol = proto;
    p.sport = 0;
    p.dport = 0;
    // 0: no MTU check here (`wrap` checks each packet); the route's MTU comes back in it.
    p.tot_len = 0;
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    p.flowinfo = 0;
    p.src = b.tun_saddr;
    p.dst = b.daddr;
    p.vlan = 0;
    // SAFETY: `p` is a `struct bpf_fib_lookup` of the size given.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params.cast(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if r != 0 {
        return Err(if r == FIB_NO_NEIGH {
            DROP_NO_NEIGH
        } else {
            DROP_NO_ROUTE
        });
    }
    // SAFETY: as above.
    unsafe {
        (*hop).dmac = p.dmac;
        (*hop).smac = p.smac;
        (*hop).ifindex = p.ifindex;
        (*hop).mtu = p.tot_len as u32;
        (*hop).checked = clk.now;
        (*hop).epoch = clk.epoch;
        (*hop).backend = backend;
        (*hop).ingress = ingress;
        (*hop).ok = 1;
    }
    Ok(())
}

/// The `HOST_HOPS` slot that holds the route to NAT client `dst` (IPv4) for this CPU,
/// asked of the FIB (from `src`, the VIP) when the slot does not hold it for this second
/// and epoch: a direct-mapped memo keyed by the client's address, as `NEXT_HOPS` is by the
/// backend. Without it every reply asked the FIB, the biggest part of its cost.
#[inline(always)]
pub fn to_host4(ctx: &XdpContext, src: u32, dst: u32, clk: Clock) -> Result<u32, u32> {
    let (slot, fresh) = host_slot(ctx, dst, 0, 0, 0, clk);
    if !fresh {
        let r = host4(ctx, slot, src, dst, packed(clk));
        if r != 0 {
            return Err(r);
        }
    }
    Ok(slot)
}

/// [`to_host4`] for IPv6 (the addresses from a map value or the caller's frame).
#[inline(always)]
pub fn to_host6(ctx: &XdpContext, src: &[u32; 4], dst: &[u32; 4], clk: Clock) -> Result<u32, u32> {
    let (slot, fresh) = host_slot(ctx, dst[0], dst[1], dst[2], dst[3], clk);
    if !fresh {
        let r = host6(ctx, slot, src, dst, packed(clk));
        if r != 0 {
            return Err(r);
        }
    }
    Ok(slot)
}

/// This CPU's slot for the host `a..d` (IPv4: `a`, the rest 0), and whether it holds a
/// fresh answer for it.
#[inline(always)]
fn host_slot(ctx: &XdpContext, a: u32, b: u32, c: u32, d: u32, clk: Clock) -> (u32, bool) {
    // SAFETY: a helper without arguments or side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let h =
        (a ^ b.rotate_left(7) ^ c.rotate_left(14) ^ d.rotate_left(21)).wrapping_mul(0x9e37_79b1);
    let slot = cpu
        .wrapping_mul(NEXT_HOP_SLOTS)
        .wrapping_add((h ^ (h >> 16)) & (NEXT_HOP_SLOTS - 1));
    let ingress = ctx.ingress_ifindex() as u32;
    let fresh = HOST_HOPS.get(slot).is_some_and(|m| {
        m.ok == 1
            && m.checked == clk.now
            && m.epoch == clk.epoch
            && m.ingress == ingress
            && m.addr[0] == a
            && m.addr[1] == b
            && m.addr[2] == c
            && m.addr[3] == d
    });
    (slot, fresh)
}

/// The clock in one register: a BPF function takes at most five arguments.
#[inline(always)]
fn packed(clk: Clock) -> u64 {
    clk.now as u64 | (clk.epoch as u64) << 32
}

#[inline(always)]
fn unpacked(clk: u64) -> Clock {
    Clock {
        now: clk as u32,
        epoch: (clk >> 32) as u32,
    }
}

#[inline(never)]
fn host4(ctx: &XdpContext, slot: u32, src: u32, dst: u32, clk: u64) -> u32 {
    let Some(params) = FIB_SCRATCH.get_ptr_mut(0) else {
        return DROP_NO_ROUTE;
    };
    // SAFETY: this CPU's scratch slot.
    let p = unsafe { &mut *params };
    p.family = AF_INET;
    p.src = [src, 0, 0, 0];
    p.dst = [dst, 0, 0, 0];
    host(ctx, params, slot, unpacked(clk))
}

#[inline(never)]
fn host6(ctx: &XdpContext, slot: u32, src: &[u32; 4], dst: &[u32; 4], clk: u64) -> u32 {
    let Some(params) = FIB_SCRATCH.get_ptr_mut(0) else {
        return DROP_NO_ROUTE;
    };
    // SAFETY: this CPU's scratch slot.
    let p = unsafe { &mut *params };
    p.family = AF_INET6;
    p.src = *src;
    p.dst = *dst;
    host(ctx, params, slot, unpacked(clk))
}

/// Asks the FIB with `params` (family and addresses filled in) and keeps a successful
/// answer in `HOST_HOPS[slot]`: 0, else the reason. A failed answer is not kept. A local
/// destination is `PASS_NO_SERVICE`: the packet is this node's own (a health check's
/// answer from a real server's service port), no reply to translate.
#[inline(always)]
fn host(ctx: &XdpContext, params: *mut FibParams, slot: u32, clk: Clock) -> u32 {
    let Some(memo) = HOST_HOPS.get_ptr_mut(slot) else {
        return DROP_NO_ROUTE;
    };
    // SAFETY: this CPU's scratch slot and memo slot; the program runs to its end on one CPU.
    let (p, m) = unsafe { (&mut *params, &mut *memo) };
    m.ok = 0;
    // The host asked for, kept before the call: a successful lookup overwrites the
    // destination with the route's gateway.
    m.addr = p.dst;
    p.l4_protocol = 0;
    p.sport = 0;
    p.dport = 0;
    p.tot_len = 0;
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    p.flowinfo = 0;
    p.vlan = 0;
    // SAFETY: `p` is a `struct bpf_fib_lookup` of the size given.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params.cast(),
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match r {
        0 => {
            m.dmac = p.dmac;
            m.smac = p.smac;
            m.ifindex = p.ifindex;
            m.checked = clk.now;
            m.epoch = clk.epoch;
            m.ingress = ingress;
            m.ok = 1;
            0
        }
        FIB_NO_NEIGH => {
            // The FIB named the next hop and its interface: the daemon resolves it.
            let h = p.dst[0] ^ p.dst[3];
            if let Some(w) = NEIGH_WANTED.get_ptr_mut((h ^ (h >> 8)) & (NEIGH_WANTED_SLOTS - 1)) {
                // SAFETY: a slot of a shared array; a torn entry only makes the daemon ask
                // the kernel about a wrong address, which it validates and the kernel fails.
                unsafe {
                    (*w).addr = p.dst;
                    (*w).ifindex = p.ifindex;
                    (*w).family = p.family as u32;
                    (*w).seen = clk.now;
                }
            }
            DROP_NO_NEIGH
        }
        FIB_NOT_FWDED => PASS_NO_SERVICE,
        _ => DROP_NO_ROUTE,
    }
}

/// A `HOST_HOPS` slot's answer, for a caller that has just had [`to_host4`] or
/// [`to_host6`] succeed.
#[inline(always)]
pub fn host_hop(slot: u32) -> Result<&'static HostHop, u32> {
    HOST_HOPS.get(slot).ok_or(DROP_NO_ROUTE)
}

/// Puts the next hop's MACs on the frame and says how it leaves: 0 for XDP_TX (the route
/// leaves where the frame came in), `VIA_REDIRECT` for another interface (the redirect's
/// target is set here).
#[inline(always)]
pub fn out(ctx: &XdpContext, dmac: [u16; 3], smac: [u16; 3], ifindex: u32) -> Result<u32, u32> {
    let eth = ptr_at_mut::<[u16; 6]>(ctx, 0).ok_or(DROP_MALFORMED_ETH)?;
    // SAFETY: bounds checked by `ptr_at_mut`; the frame starts at an even address.
    unsafe { eth.write([dmac[0], dmac[1], dmac[2], smac[0], smac[1], smac[2]]) };
    if ifindex as usize == ctx.ingress_ifindex() {
        return Ok(0);
    }
    // Through the devmap when the daemon put the interface there (the kernel then sends
    // the frames of a poll in bulk); else, an interface the program does not run on (a
    // route the daemon did not foresee), by the plain redirect.
    if TX_PORTS.redirect(ifindex, 0).is_err() {
        // SAFETY: a helper on scalars; it records the target for the verdict.
        unsafe { bpf_redirect(ifindex, 0) };
    }
    Ok(VIA_REDIRECT)
}

/// The slot's answer, for a caller that has just had [`to_backend`] succeed.
#[inline(always)]
pub fn hop(slot: u32) -> Result<&'static NextHop, u32> {
    NEXT_HOPS.get(slot).ok_or(DROP_NO_ROUTE)
}
