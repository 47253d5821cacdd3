//! Connection-sync events: what the VRRP master's daemon sends to its peer so that a
//! failover keeps established flows whatever the scheduler (IPVS's sync daemon).
//!
//! Every flow the program creates, and every persistence template it writes, goes into the
//! `SYNC_EVENTS` ring whole; a flow whose `last_seen` enters a new refresh window
//! (`SYNC_REFRESH_SHIFT`) goes again, flagged as a refresh, so the peer's copy stays alive and
//! a lost message repairs itself. All of it only when `SYNC_ENABLED`: the flag is a load-time
//! constant, so with sync off the verifier drops these paths and a packet pays nothing.
use lb_common::{sync_stat, FlowKey4, FlowKey6, FlowValue, SyncEvent4, SyncEvent6};

use crate::maps::{SYNC_ENABLED, SYNC_EVENTS, SYNC_REFRESH_SHIFT, SYNC_STATS};

/// `bpf_ringbuf_submit` flag: no wakeup of the reader, which drains the ring on a timer (a
/// wakeup costs an irq_work per event).
const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
pub fn enabled() -> bool {
    SYNC_ENABLED.load() != 0
}

/// A flow stamped `old` and seen again at `now` has entered a new refresh window.
#[inline(always)]
pub fn refresh_due(old: u32, now: u32) -> bool {
    (old ^ now) >> SYNC_REFRESH_SHIFT.load() != 0
}

#[inline(always)]
fn lost() {
    if let Some(c) = SYNC_STATS.get_ptr_mut(sync_stat::LOST) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Out of line: the callers are on the packet path, and the event is rare there.
#[inline(never)]
pub fn event4(kind: u32, key: &[u32; 4], value: &FlowValue) {
    match SYNC_EVENTS.reserve::<SyncEvent4>(0) {
        Some(mut e) => {
            e.write(SyncEvent4 {
                kind,
                value: *value,
                key: *key,
            });
            e.submit(BPF_RB_NO_WAKEUP);
        }
        None => lost(),
    }
}

#[inline(never)]
pub fn event6(kind: u32, key: &[u32; 10], value: &FlowValue) {
    match SYNC_EVENTS.reserve::<SyncEvent6>(0) {
        Some(mut e) => {
            e.write(SyncEvent6 {
                kind,
                value: *value,
                key: *key,
            });
            e.submit(BPF_RB_NO_WAKEUP);
        }
        None => lost(),
    }
}

/// A flow key as the words of its event.
#[inline(always)]
pub fn words4(k: &FlowKey4) -> &[u32; 4] {
    // SAFETY: `FlowKey4` is repr(C), 16 bytes, 4-byte aligned, every bit pattern valid.
    unsafe { &*(k as *const FlowKey4 as *const [u32; 4]) }
}

#[inline(always)]
pub fn words6(k: &FlowKey6) -> &[u32; 10] {
    // SAFETY: as for `words4`: 40 bytes, 4-byte aligned.
    unsafe { &*(k as *const FlowKey6 as *const [u32; 10]) }
}
