//! The connection tables (`FLOWS4`, `FLOWS6`) read from user space: how many flows each
//! backend holds, IPVS's `ActiveConn` column.
//!
//! The program writes these tables; the daemon only reads them, whole, with
//! `BPF_MAP_LOOKUP_BATCH` (aya 0.14 has no batch calls): a walk of a million entries is
//! thousands of syscalls instead of two million `get_next_key` + `lookup` pairs. A walk sees
//! each entry present for its whole duration once; entries inserted or evicted meanwhile may
//! or may not be seen, which is what a count of a live table can mean anyway.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::{Map, MapData};
use lb_common::{names, FlowKey4, FlowKey6, FlowValue};

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a hash bucket holding more than this answers ENOSPC, and the
/// call is retried with room for more.
const BATCH: usize = 4096;
const MAX_BATCH: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("map {0} is missing from the program")]
    Missing(&'static str),
    #[error("map {0} is not a hash map")]
    Kind(&'static str),
    #[error("reading {map}: BPF_MAP_LOOKUP_BATCH: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Flows held per (backend id, generation): only entries the program would still use,
/// not idle past their service's timeout.
pub type FlowCounts = HashMap<(u32, u32), u64>;

/// Read access to both connection tables.
pub struct FlowTables {
    v4: MapData,
    v6: MapData,
    /// Entries asked for per call.
    batch: usize,
}

impl FlowTables {
    /// Takes the two tables out of the loaded program (the program keeps using them).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, FlowsError> {
        let mut take = |name: &'static str| match ebpf.take_map(name) {
            Some(Map::LruHashMap(m)) | Some(Map::HashMap(m)) => Ok(m),
            Some(_) => Err(FlowsError::Kind(name)),
            None => Err(FlowsError::Missing(name)),
        };
        Ok(Self {
            v4: take(names::FLOWS4)?,
            v6: take(names::FLOWS6)?,
            batch: BATCH,
        })
    }

    /// Fewer entries per call than the default (tests walk small tables in many calls).
    pub fn with_batch_size(mut self, entries: usize) -> Self {
        self.batch = entries.clamp(1, MAX_BATCH);
        self
    }

    /// Every entry's value, both families.
    pub fn for_each(&self, mut f: impl FnMut(&FlowValue)) -> Result<usize, FlowsError> {
        let n4 = walk::<FlowKey4>(self.v4.fd().as_fd(), names::FLOWS4, self.batch, &mut f)?;
        let n6 = walk::<FlowKey6>(self.v6.fd().as_fd(), names::FLOWS6, self.batch, &mut f)?;
        Ok(n4 + n6)
    }

    /// How many flows each backend holds at `now` (the program's `CLOCK`), counting only
    /// entries not idle past `idle_of(service)` seconds (0: no limit).
    pub fn counts(
        &self,
        now: u32,
        idle_of: impl Fn(u32) -> Option<u32>,
    ) -> Result<FlowCounts, FlowsError> {
        let mut counts = FlowCounts::new();
        self.for_each(|v| {
            if live(v, now, &idle_of) {
                *counts.entry((v.backend, v.generation)).or_default() += 1;
            }
        })?;
        Ok(counts)
    }
}

/// The program's own test (`usable` in lb-ebpf's lb.rs): the service exists, and the flow
/// has not been idle for longer than the service's timeout.
fn live(v: &FlowValue, now: u32, idle_of: &impl Fn(u32) -> Option<u32>) -> bool {
    match idle_of(v.service) {
        None => false,
        Some(0) => true,
        Some(idle) => now.wrapping_sub(v.last_seen) <= idle,
    }
}

/// One whole table, `batch` entries per call.
fn walk<K: Copy + Default>(
    fd: BorrowedFd<'_>,
    map: &'static str,
    mut batch: usize,
    f: &mut impl FnMut(&FlowValue),
) -> Result<usize, FlowsError> {
    let mut keys = vec![K::default(); batch];
    let mut values = vec![FlowValue::default(); batch];
    // The kernel's position in the table between calls (a bucket index for hash maps).
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; keys and values have
        // room for `count` entries of the map's key and value sizes (FlowKey4/6 and
        // FlowValue are the program's own types), and the tokens are 8 bytes, more than the
        // 4 a hash map's position takes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // One bucket holds more entries than fit: ask again with more room.
            Some(libc::ENOSPC) if batch < MAX_BATCH => {
                batch *= 2;
                keys.resize(batch, K::default());
                values.resize(batch, FlowValue::default());
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => {
                return Err(FlowsError::Batch {
                    map,
                    source: err.unwrap_or_else(io::Error::last_os_error),
                })
            }
        }
        let got = (attr.count as usize).min(batch);
        values[..got].iter().for_each(&mut *f);
        total += got;
        if err.is_some() {
            // ENOENT: the walk reached the end (with the last entries in this answer).
            return Ok(total);
        }
        token_in = token_out;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_entries_count() {
        let v = |service, last_seen| FlowValue {
            backend: 1,
            generation: 2,
            service,
            last_seen,
        };
        let idle = |s| match s {
            0 => Some(300),
            1 => Some(0),
            _ => None,
        };
        assert!(live(&v(0, 1000), 1300, &idle));
        assert!(!live(&v(0, 1000), 1301, &idle), "idle past the timeout");
        assert!(live(&v(1, 0), u32::MAX, &idle), "no timeout");
        assert!(!live(&v(7, 1000), 1000, &idle), "no such service");
        // The clock wraps like the program's.
        assert!(live(&v(0, u32::MAX - 10), 5, &idle));
    }
}
