//! The virtual MAC interfaces' egress filter (keepalived's `use_vmac`, IPv6): an MLD
//! message leaving a virtual MAC interface leaves through its parent instead, from the
//! parent's MAC.
//!
//! A backup keeps its virtual MAC interface up (it hears adverts there) and its kernel
//! reports, by MLD, the groups joined on it: the VRRP group, the solicited-node groups of
//! its addresses. Sent from the virtual MAC, those reports teach the switches that the
//! master's MAC is at the backup, and the VIPs' traffic goes there. Dropped, they would
//! leave an MLD-snooping switch without the memberships, and neighbour discovery for the
//! VIPs would stop reaching the master. Moved to the parent they keep both right, as
//! keepalived's nftables rule (`dup` to the parent, then drop) does; there is no sysctl
//! for MLD as there is for IGMP (`igmp_link_local_mcast_reports`).
//!
//! Its own object, not the XDP one: a VRRP-only node (the seed's nginx pair) loads this
//! and no dataplane maps.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::bpf_redirect,
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use lb_common::{vmac_stat, VmacParent};

/// A virtual MAC interface's ifindex -> its parent (written by the daemon when it makes
/// the interface). At most one per VRRP instance.
#[map]
static VMAC_PARENTS: HashMap<u32, VmacParent> = HashMap::with_max_entries(1024, 0);

#[map]
static VMAC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(vmac_stat::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ICMP: u8 = 58;
/// MLD's ICMPv6 types: query, v1 report, done (RFC 2710), v2 report (RFC 3810).
#[inline(always)]
fn is_mld(ty: u8) -> bool {
    matches!(ty, 130..=132 | 143)
}

/// Anything but MLD goes on as it came: TC_ACT_UNSPEC, TCX's "next", so that a program
/// attached after this one still runs.
#[classifier]
pub fn vmac_mld(ctx: TcContext) -> i32 {
    match mld_to_parent(&ctx) {
        Some(r) => r,
        None => TC_ACT_UNSPEC,
    }
}

/// `Some(verdict)` for an MLD message, `None` for anything else (it leaves as it came).
#[inline(always)]
fn mld_to_parent(ctx: &TcContext) -> Option<i32> {
    if u16::from_be(ctx.load::<u16>(12).ok()?) != ETH_P_IPV6 {
        return None;
    }
    let mut next = ctx.load::<u8>(ETH_HLEN + 6).ok()?;
    let mut off = ETH_HLEN + IPV6_HLEN;
    // MLD always comes behind a hop-by-hop header (its router alert, RFC 2710 §3); one
    // without is looked at all the same.
    if next == NEXTHDR_HOP {
        let [nh, len] = ctx.load::<[u8; 2]>(off).ok()?;
        next = nh;
        off += (usize::from(len) + 1) * 8;
    }
    if next != NEXTHDR_ICMP || !is_mld(ctx.load::<u8>(off).ok()?) {
        return None;
    }
    // SAFETY: the context's `__sk_buff`, valid while the program runs.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a map lookup; the value is copied out at once.
    let Some(parent) = (unsafe { VMAC_PARENTS.get(&ifindex) }).copied() else {
        count(vmac_stat::UNMOVED);
        return None;
    };
    if ctx.store(6, &parent.mac, 0).is_err() {
        count(vmac_stat::UNMOVED);
        return None;
    }
    count(vmac_stat::MOVED);
    // SAFETY: a helper call with plain values; it answers TC_ACT_REDIRECT (egress).
    Some(unsafe { bpf_redirect(parent.ifindex, 0) } as i32)
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = VMAC_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
