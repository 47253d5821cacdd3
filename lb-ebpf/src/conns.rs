//! Connection states and the backends' connection counts: what IPVS keeps per connection
//! (its state, hence its timeout) and per real server (ActiveConn, InActConn), and the
//! SYN-flood guard that counts embryonic flows.
//!
//! Counts are shared by every CPU and changed with atomic adds: a count-based scheduler on
//! one CPU must see the connection another CPU just opened (IPVS's counters are atomics
//! too). The program sees creations and state changes; expiries and LRU evictions it never
//! sees, so the daemon's sweep removes expired flows and corrects the counts (see
//! `docs/architecture.md`, "Connection states and counts").
use core::intrinsics::{self, AtomicOrdering::Relaxed};

use lb_common::{conn_state::*, BackendLoad, ServiceValue, SynGuard, LOAD_F_OVERLOAD};

use crate::maps::{BACKEND_LOAD, SYN_GUARD, TIMEOUTS};

/// Adds `delta` to an `i32` the program shares with other CPUs and the daemon.
#[inline(always)]
fn add(field: *mut i32, delta: i32) {
    // SAFETY: `field` points into a map value, which lives as long as the map; the add is
    // one atomic instruction (BPF_ATOMIC | BPF_ADD), as the daemon's corrections are.
    unsafe { intrinsics::atomic_xadd::<i32, i32, { Relaxed }>(field, delta) };
}

/// A flow of `backend` in `state` came (`delta` 1) or went (-1).
#[inline(always)]
pub fn count(backend: u32, state: u32, delta: i32) {
    if !is_counted(state) {
        return;
    }
    if let Some(l) = BACKEND_LOAD.get_ptr_mut(backend) {
        // SAFETY: a map value pointer; only its address is taken here.
        let field = unsafe {
            if is_active(state) {
                &raw mut (*l).active
            } else {
                &raw mut (*l).inactive
            }
        };
        add(field, delta);
    }
    if state == SYN_RECV {
        embryonic(delta);
    }
}

/// A flow of `backend` moved from `old` to `new`.
#[inline(never)]
pub fn moved(backend: u32, old: u32, new: u32) {
    if is_active(old) != is_active(new) || is_counted(old) != is_counted(new) {
        count(backend, old, -1);
        count(backend, new, 1);
    } else if old == SYN_RECV {
        embryonic(-1);
    } else if new == SYN_RECV {
        embryonic(1);
    }
}

#[inline(always)]
fn embryonic(delta: i32) {
    if let Some(g) = SYN_GUARD.get_ptr_mut(0) {
        // SAFETY: as in `count`.
        add(unsafe { &raw mut (*g).embryonic }, delta);
    }
}

/// Sets the state of a flow the table holds from `old` to `new`, unless another CPU moved
/// it first (then that CPU counted the move, and this one leaves it).
#[inline(always)]
pub fn set_state(state: *mut u32, backend: u32, old: u32, new: u32) -> bool {
    // SAFETY: a field of a map value, as in `add`; BPF_CMPXCHG (the program is built for
    // BPF v3).
    let (_, swapped) =
        unsafe { intrinsics::atomic_cxchg::<u32, { Relaxed }, { Relaxed }>(state, old, new) };
    if swapped {
        moved(backend, old, new);
    }
    swapped
}

/// How long a flow in `state` may stay idle: the service's idle timeout for an established
/// connection, a UDP flow or a fragments flow, else the state's (`TIMEOUTS`). 0: forever.
#[inline(always)]
pub fn timeout(svc: &ServiceValue, state: u32) -> u32 {
    if state == ESTABLISHED || state == UDP || state == NONE {
        svc.idle_timeout_s
    } else {
        TIMEOUTS.get(state).copied().unwrap_or(0)
    }
}

/// The guard, when the table holds its share of embryonic flows: the SYN is forwarded
/// without an entry.
#[inline(always)]
pub fn flooded() -> Option<*mut SynGuard> {
    let g = SYN_GUARD.get_ptr_mut(0)?;
    // SAFETY: a map value; plain reads of fields other CPUs change atomically (a torn or
    // stale value only moves the moment the guard engages by one SYN).
    let (n, cap) = unsafe { ((*g).embryonic, (*g).cap) };
    (cap != 0 && n >= cap as i32).then_some(g)
}

/// Unknown flows' ACKs are scheduled by the flood hash until `now`.
#[inline(always)]
pub fn in_flood_window(now: u32) -> bool {
    SYN_GUARD
        .get(0)
        .is_some_and(|g| g.flood_until != 0 && now.wrapping_sub(g.flood_until) as i32 <= 0)
}

/// A SYN went out untracked at `now`: its ACK, up to a SYN_RECV timeout later, must be
/// scheduled by the same hash.
#[inline(never)]
pub fn extend_flood_window(g: *mut SynGuard, now: u32) {
    let until = now.wrapping_add(TIMEOUTS.get(SYN_RECV).copied().unwrap_or(60).max(1));
    // SAFETY: as in `flooded`; written at most once a second per CPU.
    unsafe {
        if (*g).flood_until != until {
            (*g).flood_until = until;
        }
    }
}

/// IPVS's overload flag (`IP_VS_DEST_F_OVERLOAD`), judged when a scheduler looks at the
/// backend: set at `u_threshold` connections, cleared below `l_threshold` (or three
/// quarters of `u_threshold`).
#[inline(always)]
pub fn overloaded(l: *mut BackendLoad, u: u32, lower: u32, total: u64) -> bool {
    if u == 0 {
        return false;
    }
    // SAFETY: a map value, as in `add`; a plain read of a word others change atomically.
    let flags = unsafe { &raw mut (*l).flags };
    if unsafe { flags.read_volatile() } & LOAD_F_OVERLOAD != 0 {
        let clear = if lower != 0 {
            total < lower as u64
        } else {
            total * 4 < u as u64 * 3
        };
        if !clear {
            return true;
        }
        // SAFETY: as above.
        unsafe { intrinsics::atomic_and::<u32, u32, { Relaxed }>(flags, !LOAD_F_OVERLOAD) };
        false
    } else if total >= u as u64 {
        // SAFETY: as above.
        unsafe { intrinsics::atomic_or::<u32, u32, { Relaxed }>(flags, LOAD_F_OVERLOAD) };
        true
    } else {
        false
    }
}

/// A count read as the scheduler uses it: never below 0 (see `BackendLoad`).
#[inline(always)]
pub fn load_of(l: *const BackendLoad) -> (u64, u64) {
    // SAFETY: a map value; plain reads of counts other CPUs change atomically.
    let (a, i) = unsafe { ((*l).active, (*l).inactive) };
    (a.max(0) as u64, i.max(0) as u64)
}
