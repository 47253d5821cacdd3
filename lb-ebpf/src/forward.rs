//! Direct routing: the frame goes to the real server unchanged above layer 2.
use aya_ebpf::programs::XdpContext;
use lb_common::reason;

use crate::{maps::IFACE_MAC, parse::ptr_at_mut};

/// Destination MAC = the backend's, source MAC = our interface's. L3 and L4 bytes are not
/// touched, so no checksum changes.
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, backend_mac: &[u8; 6]) -> Result<(), u32> {
    // The bounds check is repeated here because the verifier tracks packet ranges per
    // pointer, and this pointer is a fresh one.
    let eth = ptr_at_mut::<[[u8; 6]; 2]>(ctx, 0).ok_or(reason::DROP_MALFORMED_ETH)?;
    // SAFETY: `ptr_at_mut` checked the 12 bytes lie inside the frame; [u8; 6] has
    // alignment 1, so the write is aligned whatever the frame's address.
    unsafe { eth.write([*backend_mac, IFACE_MAC.load()]) };
    Ok(())
}
