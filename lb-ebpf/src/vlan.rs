//! VLAN tags a driver took off the frame.
//!
//! A NIC with rx-vlan offload, and a veth passing on the tag its peer offloaded (a bridge
//! port does that), hand the 802.1Q tag to the stack beside the frame. The program then sees
//! an untagged frame; forwarded as it is, it would leave untagged, onto another VLAN. So the
//! native entry point asks the driver for the tag first (the XDP RX-metadata kfunc, Linux
//! 6.8+), treats the frame as if the tag were in it (forwarded with the tag, as a frame that
//! carries its tag is), and puts the tag back into the frame it sends. A frame passed to the
//! stack is left alone: the kernel still holds its tag. Where the tag cannot be read, the
//! frame is never forwarded.
//!
//! Each entry point says where the tag comes from ([`Offload`]): `lb` knows of none (skb
//! mode, where the kernel keeps the tag on the skb and puts it back on XDP_TX, and devices
//! that deliver every tag in the frame), `lb_native` asks the driver, `lb_vlan_test` reads a
//! made-up answer from a map (BPF_PROG_TEST_RUN cannot run a device-bound program).
use aya_ebpf::{bindings::xdp_md, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::reason::{PASS_UNSUPPORTED, PASS_VLAN_UNKNOWN};

use crate::{
    maps::VLAN_TEST,
    parse::{ptr_at, ptr_at_mut, ETH_P_8021AD, ETH_P_8021Q},
};

/// The driver took no tag off this frame (or keeps none for it).
const ENODATA: i32 = 61;

/// The helper number that stands for the kfunc `bpf_xdp_metadata_rx_vlan_tag`; the daemon
/// turns the call into the kfunc's when it loads `lb_native` (lb-daemon's
/// dataplane/devbound.rs, `VLAN_TAG_CALL`). bpf-linker cannot emit a kfunc call, and aya
/// 0.14 cannot link one; no kernel has a helper with this number, so a call left as it is
/// fails the load instead of running.
const VLAN_TAG_CALL: usize = 0x4c42_5654;

/// The driver's answer about a frame's tag, as the kfunc gives it: its return value, the
/// tag's protocol (TPID) in network byte order, the tag's TCI.
pub struct Answer {
    pub ret: i32,
    pub proto: u16,
    pub tci: u16,
}

impl Answer {
    /// No tag taken off.
    const NONE: Answer = Answer {
        ret: -ENODATA,
        proto: 0,
        tci: 0,
    };
}

/// Where an entry point learns of a tag the driver took off the frame.
pub trait Offload {
    fn answer(ctx: &XdpContext) -> Answer;
}

/// `lb`: every tag is in the frame (or, in skb mode, kept by the kernel).
pub struct InFrame;

impl Offload for InFrame {
    #[inline(always)]
    fn answer(_: &XdpContext) -> Answer {
        Answer::NONE
    }
}

/// `lb_native`: the driver's own answer. The one call of the kfunc; the program must be
/// loaded bound to the device for it to exist.
pub struct Driver;

impl Offload for Driver {
    #[inline(always)]
    fn answer(ctx: &XdpContext) -> Answer {
        let (mut proto, mut tci) = (0u16, 0u16);
        // SAFETY: the signature of `bpf_xdp_metadata_rx_vlan_tag(const struct xdp_md *,
        // __be16 *vlan_proto, u16 *vlan_tci)`, called as aya-ebpf calls helpers (a constant
        // address becomes `call imm`); the loader makes it the kfunc, whose arguments the
        // verifier checks against the kernel's BTF.
        let ret = unsafe {
            let f: unsafe extern "C" fn(*const xdp_md, *mut u16, *mut u16) -> i32 =
                core::mem::transmute(VLAN_TAG_CALL);
            f(ctx.ctx, &mut proto, &mut tci)
        };
        Answer { ret, proto, tci }
    }
}

/// `lb_vlan_test`: the answer slot 0 of `VLAN_TEST` holds (see there); none when unset.
pub struct TestMap;

impl Offload for TestMap {
    #[inline(always)]
    fn answer(_: &XdpContext) -> Answer {
        let v = VLAN_TEST.get(0).copied().unwrap_or(0);
        if v == 0 {
            return Answer::NONE;
        }
        Answer {
            ret: v as u32 as i32,
            proto: ((v >> 32) as u16).to_be(),
            tci: (v >> 48) as u16,
        }
    }
}

/// The TCI of the tag the driver took off the frame, if it took one; `Err` is the reason
/// not to go on: a tag that is not 802.1Q (802.1ad: QinQ) is not parsed, and a frame whose
/// tag the driver cannot tell is never forwarded.
#[inline(always)]
pub fn offloaded<O: Offload>(ctx: &XdpContext) -> Result<Option<u16>, u32> {
    let a = O::answer(ctx);
    if a.ret == -ENODATA {
        return Ok(None);
    }
    if a.ret != 0 {
        return Err(PASS_VLAN_UNKNOWN);
    }
    if a.proto != ETH_P_8021Q.to_be() {
        return Err(PASS_UNSUPPORTED);
    }
    // A second tag in the frame makes it QinQ, which the program does not parse.
    let inner = ptr_at::<u16>(ctx, 12).map(|p| {
        // SAFETY: bounds checked by `ptr_at`; 2-aligned (see `parse::words`).
        u16::from_be(unsafe { p.read() })
    });
    if inner == Some(ETH_P_8021Q) || inner == Some(ETH_P_8021AD) {
        return Err(PASS_UNSUPPORTED);
    }
    Ok(Some(a.tci))
}

/// Puts an 802.1Q tag with `tci` back between the MACs and the ethertype of a frame about to
/// be sent (XDP_TX sends the frame's bytes only). `false` when the driver left no room in
/// front of the frame, which it always does (XDP_PACKET_HEADROOM).
#[inline(always)]
pub fn push(ctx: &XdpContext, tci: u16) -> bool {
    // SAFETY: a helper on this program's own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -4) } != 0 {
        return false;
    }
    // The MACs now sit at 4..16; the ethertype stays at 16.
    let Some(p) = ptr_at_mut::<[u16; 8]>(ctx, 0) else {
        // Cannot be (the frame had its Ethernet header): the room goes back, so that no
        // frame leaves with four stray bytes in front.
        // SAFETY: as above.
        unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) };
        return false;
    };
    // SAFETY: `ptr_at_mut` checked the 16 bytes lie inside the frame, which starts at an even
    // address (see `parse::words`).
    unsafe {
        let w = p.read();
        p.write([
            w[2],
            w[3],
            w[4],
            w[5],
            w[6],
            w[7],
            ETH_P_8021Q.to_be(),
            tci.to_be(),
        ]);
    }
    true
}
