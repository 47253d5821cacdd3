//! Trivial XDP programs the tests and benchmarks need beside the load balancer: a baseline
//! to measure against, and the helpers native XDP on veth wants on the peer side.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The benchmark baseline: swap the MACs and send the frame back (the least any XDP
/// forwarder does).
#[xdp]
pub fn macswap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let eth = start as *mut [[u8; 6]; 2];
    // SAFETY: the 12 bytes were checked to lie inside the frame.
    unsafe {
        let [dst, src] = eth.read();
        eth.write([src, dst]);
    }
    xdp_action::XDP_TX
}

/// On the bridge-side peer of a veth that runs native XDP: frames sent with XDP_TX arrive
/// through the peer's XDP path only when it has a program (see shared/LAB.md).
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
