//! Direct routing: the frame goes to the real server unchanged above layer 2.
use aya_ebpf::programs::XdpContext;
use lb_common::{reason, BackendValue};

use crate::{maps::IFACE_MAC, parse::ptr_at_mut};

/// A MAC address as the three 16-bit words the program copies it in: byte-wise, the BPF back
/// end would spend twelve loads and twelve stores on the two addresses of every frame.
pub type MacWords = [u16; 3];

/// A MAC field of a map value, as words.
///
/// # Safety
/// `mac` must be 2-aligned: a field at an even offset of a struct aligned to 4 or more
/// (lb-common asserts the offset of every such field).
#[inline(always)]
pub unsafe fn mac_words(mac: *const [u8; 6]) -> MacWords {
    // SAFETY: aligned by the caller's contract; six bytes either way.
    unsafe { mac.cast::<MacWords>().read() }
}

/// A backend's MAC as words.
#[inline(always)]
pub fn backend_mac(b: &BackendValue) -> MacWords {
    // SAFETY: `BackendValue` is 4-aligned and `mac` is at an even offset (lb-common).
    unsafe { mac_words(&b.mac) }
}

/// Destination MAC = the backend's, source MAC = our interface's. L3 and L4 bytes are not
/// touched, so no checksum changes.
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, backend_mac: MacWords) -> Result<(), u32> {
    // The bounds check is repeated here because the verifier tracks packet ranges per
    // pointer, and this pointer is a fresh one.
    let eth = ptr_at_mut::<[u16; 6]>(ctx, 0).ok_or(reason::DROP_MALFORMED_ETH)?;
    let [d0, d1, d2] = backend_mac;
    let [s0, s1, s2] = IFACE_MAC.load();
    // SAFETY: `ptr_at_mut` checked the 12 bytes lie inside the frame, which starts at an
    // even address (see `parse::words`).
    unsafe { eth.write([d0, d1, d2, s0, s1, s2]) };
    Ok(())
}
