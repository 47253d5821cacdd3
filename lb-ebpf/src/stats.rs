//! Per-CPU counters. No atomics: each CPU owns its slot, user space sums them.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};

use crate::maps::{BACKEND_STATS, LOG_STATE, REASON_STATS, SERVICE_STATS};

#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

#[inline(always)]
pub fn count_reason(ctx: &XdpContext, reason: u32) {
    if let Some(c) = REASON_STATS.get_ptr_mut(reason & !lb_common::reason::VIA_REDIRECT) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += frame_len(ctx);
        }
    }
}

#[inline(always)]
pub fn count_forward(ctx: &XdpContext, service: u32, backend: u32, new_flow: bool) {
    let len = frame_len(ctx);
    let new = new_flow as u64;
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            (*c).new_flows += new;
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            (*c).new_flows += new;
        }
    }
}

/// Nanoseconds between two log records of one CPU. The `upgrade-test` build differs here by
/// a nanosecond: another program (another tag) that behaves the same.
const LOG_INTERVAL_NS: u64 = if cfg!(feature = "upgrade-test") {
    1_000_000_001
} else {
    1_000_000_000
};

/// At most one log record per CPU per second: logs are for rare events, and an event that
/// repeats per packet must not turn into a record per packet.
#[inline(always)]
pub fn may_log() -> bool {
    let Some(last) = LOG_STATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        let now = bpf_ktime_get_ns();
        if now.wrapping_sub(*last) < LOG_INTERVAL_NS && *last != 0 {
            return false;
        }
        *last = now;
    }
    true
}
