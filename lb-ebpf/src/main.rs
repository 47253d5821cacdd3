//! The XDP direct-routing load balancer: what IPVS does in DR mode, at the driver.
//!
//! For a packet to a service of ours, on the node that is active for its VIP, it picks a
//! real server (or finds the one the flow already has), rewrites the destination MAC to the
//! real server's and the source MAC to our own, and sends the frame back out (XDP_TX). The
//! real server owns the VIP on `lo` and answers the client directly. Everything else goes to
//! the stack untouched. `docs/architecture.md` has the whole picture and the verdict table.
#![no_std]
#![no_main]
// For the empty `asm!` that hides a value from the optimiser (parse.rs). aya-ebpf uses the
// same feature; the build runs with the library sources, as on nightly.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// For 32-bit atomics (conns.rs): the BPF target's `core` declares atomic types of 64 bits
// only, and no compare-and-swap, though BPF v3 has both in 32 bits.
#![allow(internal_features)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

mod conns;
mod decap;
mod forward;
mod lb;
mod maps;
mod nat;
mod parse;
mod route;
mod stats;
mod sync;
mod tunnel;
mod vlan;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use lb_common::reason::{self, PASS_VLAN_UNKNOWN, XDP_TX};

// `#[xdp]` wraps each of these functions in its entry point. Inlined into it, or LLVM
// may keep it a BPF-to-BPF call once the body grows, costing every packet a call and the
// spills around it (established flows: about 15 ns).

/// Skb mode, and native mode on a device that delivers every VLAN tag in the frame.
#[xdp]
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
    run::<vlan::InFrame>(&ctx)
}

/// Native mode on a device that may take VLAN tags off frames: `lb`, plus the tag the driver
/// took off (`vlan.rs`). Loaded by the daemon bound to that device (lb-daemon's
/// dataplane/devbound.rs): the kfunc it calls exists only there.
#[xdp]
#[inline(always)]
pub fn lb_native(ctx: XdpContext) -> u32 {
    run::<vlan::Driver>(&ctx)
}

/// Not the balancer: a TUN real server's decapsulator (`decap.rs`), which the daemon's
/// `realserver start --tunnel` loads on the real server.
#[xdp]
#[inline(always)]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    decap::run(&ctx)
}

/// Tests only: `lb_native` with the driver's answer read from `VLAN_TEST`.
#[xdp]
#[inline(always)]
pub fn lb_vlan_test(ctx: XdpContext) -> u32 {
    run::<vlan::TestMap>(&ctx)
}

#[inline(always)]
fn run<O: vlan::Offload>(ctx: &XdpContext) -> u32 {
    let reason = decide::<O>(ctx);
    stats::count_reason(ctx, reason);
    reason::verdict(reason)
}

/// The reason for one frame. A tag the driver took off makes the frame a tagged one (as if
/// the tag were in it: forwarded with it), and goes back into the frame it sends.
#[inline(always)]
fn decide<O: vlan::Offload>(ctx: &XdpContext) -> u32 {
    let tag = match vlan::offloaded::<O>(ctx) {
        Ok(tag) => tag,
        Err(reason) => return reason,
    };
    let reason = match lb::process(ctx) {
        Ok(reason) | Err(reason) => reason,
    };
    if let Some(tci) = tag {
        // Only a frame that leaves: one passed to the stack still has its tag there.
        if reason::verdict(reason) == XDP_TX && !vlan::push(ctx, tci) {
            // Decided, counted as forwarded, its MACs rewritten, but it cannot leave on its
            // VLAN (no room for the tag: drivers always leave some). The stack gets it, and
            // drops it: it is addressed to the real server.
            return PASS_VLAN_UNKNOWN;
        }
    }
    reason
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
