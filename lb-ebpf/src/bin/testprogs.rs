//! Trivial XDP programs the tests and benchmarks need beside the load balancer: a baseline
//! to measure against, and the helpers native XDP on veth wants on the peer side.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};
use lb_common::{FlowValue, DEFAULT_MAX_FLOWS};

/// The benchmark baseline: swap the MACs and send the frame back (the least any XDP
/// forwarder does).
#[xdp]
pub fn macswap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 bytes were checked to lie inside the frame.
    unsafe { swap_macs(start) };
    xdp_action::XDP_TX
}

/// Swaps the destination and source MACs of the frame at `start`.
///
/// # Safety
/// The frame's first 12 bytes must lie inside the packet.
#[inline(always)]
unsafe fn swap_macs(start: usize) {
    let eth = start as *mut [[u8; 6]; 2];
    let [dst, src] = eth.read();
    eth.write([src, dst]);
}

/// The flow table of [`lru_insert`]: the load balancer's `FLOWS4` (same key and value sizes,
/// same default size, no flags).
#[map]
static LRU_FLOWS: LruHashMap<[u32; 4], FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// The benchmark's floor for a new flow: MAC swap plus what any connection table costs a
/// new flow, the kernel's LRU insert of its 5-tuple (BPF_NOEXIST, as the load balancer
/// inserts a SYN's flow). No parsing beyond fixed offsets: an untagged IPv4 frame with a
/// 20-byte header, as the benchmark sends.
#[xdp]
pub fn lru_insert(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 38 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 38 bytes were checked to lie inside the frame.
    let key = unsafe {
        let w = |off: usize| ((start + off) as *const u32).read_unaligned();
        [w(26), w(30), w(34), 6]
    };
    let value = FlowValue {
        backend: 1,
        generation: 1,
        service: 0,
        last_seen: 0,
        state: 0,
    };
    if LRU_FLOWS.insert(&key, &value, 1).is_err() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 38 bytes checked above include the MACs.
    unsafe { swap_macs(start) };
    xdp_action::XDP_TX
}

/// On the bridge-side peer of a veth that runs native XDP: frames sent with XDP_TX arrive
/// through the peer's XDP path only when it has a program.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The sink of the live-frames benchmark.
#[xdp]
pub fn drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
