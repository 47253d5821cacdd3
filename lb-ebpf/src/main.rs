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

mod forward;
mod lb;
mod maps;
mod parse;
mod stats;
mod sync;

use aya_ebpf::{macros::xdp, programs::XdpContext};

// `#[xdp]` wraps this function in the program's entry point. Inlined into it, or LLVM
// may keep it a BPF-to-BPF call once the body grows, costing every packet a call and the
// spills around it (established flows: about 15 ns).
#[xdp]
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
    let reason = match lb::process(&ctx) {
        Ok(reason) | Err(reason) => reason,
    };
    stats::count_reason(&ctx, reason);
    lb_common::reason::verdict(reason)
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
