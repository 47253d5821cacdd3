//! The writes the control plane makes to the program's maps, behind a trait so that the
//! planning logic runs against memory in unit tests and against the kernel in the daemon.
use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray},
    sys::SyscallError,
    Pod,
};
use lb_common::{
    names, reason, BackendKey, BackendValue, Clock, Meta, NatSource, ReasonCounters, ServiceKey4,
    ServiceKey6, ServiceRef, ServiceValue, TrafficCounters, FAMILY_V4,
};

use super::{
    program::{MapFds, OpenError},
    MapKey,
};

#[derive(Debug, thiserror::Error)]
pub enum MapWriteError {
    #[error("map {map}: {op} failed: {source}")]
    Kernel {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map} is missing from the program")]
    Missing { map: &'static str },
    #[error("map {map}: mapping it into memory failed: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("map {map}: slot {index} is past its {len} slots")]
    OutOfRange {
        map: &'static str,
        index: u32,
        len: u32,
    },
}

/// What the planner writes. Each call is one element update, atomic for the program.
pub trait MapWriter {
    fn update_service(&mut self, key: &MapKey, value: &ServiceRef) -> Result<(), MapWriteError>;
    fn delete_service(&mut self, key: &MapKey) -> Result<(), MapWriteError>;
    /// `SERVICE_INFO[id] = value` (all zeroes for a service that is gone).
    fn update_service_info(&mut self, id: u32, value: &ServiceValue) -> Result<(), MapWriteError>;
    fn update_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapWriteError>;
    /// `BACKEND_KEYS[id] = key` (all zeroes for an id that is free).
    fn update_backend_key(&mut self, id: u32, key: &BackendKey) -> Result<(), MapWriteError>;
    /// `RINGS[index] = backend`.
    fn update_ring_slot(&mut self, index: u32, backend: u32) -> Result<(), MapWriteError>;
    /// The end of an update (whether it succeeded or not): the maps take what it wrote.
    fn settle(&mut self) -> Result<(), MapWriteError> {
        Ok(())
    }
    /// `NAT_ON`'s bits: `NAT_ON_ANY` while some backend is reached by NAT (the program then
    /// looks up replies), `NAT_ON_SHARED` while some NAT real server is shared.
    fn set_nat(&mut self, _bits: u32) -> Result<(), MapWriteError> {
        Ok(())
    }
    /// `NAT_SOURCES4`/`NAT_SOURCES6[key] = value`: a NAT real server's (address, port,
    /// protocol) and its replies' source.
    fn update_nat_source(
        &mut self,
        _key: &MapKey,
        _value: &NatSource,
    ) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_nat_source(&mut self, _key: &MapKey) -> Result<(), MapWriteError> {
        Ok(())
    }
}

/// No maps: planning alone (what a configuration needs, [`super::plan::needs`]).
#[derive(Default, Debug)]
pub struct NullMaps;

impl MapWriter for NullMaps {
    fn update_service(&mut self, _: &MapKey, _: &ServiceRef) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn delete_service(&mut self, _: &MapKey) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn update_service_info(&mut self, _: u32, _: &ServiceValue) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn update_backend(&mut self, _: u32, _: &BackendValue) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn update_backend_key(&mut self, _: u32, _: &BackendKey) -> Result<(), MapWriteError> {
        Ok(())
    }
    fn update_ring_slot(&mut self, _: u32, _: u32) -> Result<(), MapWriteError> {
        Ok(())
    }
}

/// The maps in memory, for tests of the planner.
#[derive(Clone, Default, Debug)]
pub struct MemMaps {
    pub services: HashMap<MapKey, ServiceRef>,
    pub infos: HashMap<u32, ServiceValue>,
    pub backends: HashMap<u32, BackendValue>,
    pub keys: HashMap<u32, BackendKey>,
    pub rings: HashMap<u32, u32>,
    /// `NAT_ON`.
    pub nat: u32,
    /// `NAT_SOURCES4`/`NAT_SOURCES6`.
    pub nat_sources: HashMap<MapKey, NatSource>,
    /// Number of element writes, to check that a diff writes only what changed.
    pub writes: usize,
}

impl MapWriter for MemMaps {
    fn update_service(&mut self, key: &MapKey, value: &ServiceRef) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.services.insert(*key, *value);
        Ok(())
    }
    fn delete_service(&mut self, key: &MapKey) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.services.remove(key);
        Ok(())
    }
    fn update_service_info(&mut self, id: u32, value: &ServiceValue) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.infos.insert(id, *value);
        Ok(())
    }
    fn update_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.backends.insert(id, *value);
        Ok(())
    }
    fn update_backend_key(&mut self, id: u32, key: &BackendKey) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.keys.insert(id, *key);
        Ok(())
    }
    fn update_ring_slot(&mut self, index: u32, backend: u32) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.rings.insert(index, backend);
        Ok(())
    }
    fn set_nat(&mut self, bits: u32) -> Result<(), MapWriteError> {
        if self.nat != bits {
            self.writes += 1;
            self.nat = bits;
        }
        Ok(())
    }
    fn update_nat_source(&mut self, key: &MapKey, value: &NatSource) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.nat_sources.insert(*key, *value);
        Ok(())
    }
    fn delete_nat_source(&mut self, key: &MapKey) -> Result<(), MapWriteError> {
        self.writes += 1;
        self.nat_sources.remove(key);
        Ok(())
    }
}

/// Element writes made through [`BpfMaps`] in this process.
static MAP_WRITES: AtomicU64 = AtomicU64::new(0);

/// Element writes this process has made to the program's maps through [`BpfMaps`]: every
/// update or delete of a service key, a service's state, a ring slot or a backend, counted
/// when it is sent to the kernel (a failed one too: it may have changed something). The
/// clock is not counted, nor anything the program writes itself (flows, persistence
/// templates, counters).
///
/// The planner writes only what differs ([`super::plan`]), so this moves only when what
/// the program must do changes: a reload of an unchanged configuration leaves it where it
/// was. The daemon has one set of maps, so the process-wide count is the daemon's; status
/// and metrics show it ([`crate::status::Snapshot::map_writes`]).
pub fn map_writes() -> u64 {
    MAP_WRITES.load(Ordering::Relaxed)
}

fn count_write() {
    MAP_WRITES.fetch_add(1, Ordering::Relaxed);
}

/// The program's maps in the kernel.
pub struct BpfMaps {
    services4: BpfHashMap<MapData, ServiceKey4, ServiceRef>,
    services6: BpfHashMap<MapData, ServiceKey6, ServiceRef>,
    infos: Array<MapData, ServiceValue>,
    backends: Array<MapData, BackendValue>,
    rings: RingMap,
    /// Daemon only: which real server each backend id stands for.
    keys: Array<MapData, BackendKey>,
    /// Daemon only: the layout version and what a restart takes over.
    meta: Array<MapData, Meta>,
    clock: Array<MapData, Clock>,
    /// What `clock` holds: both fields are written together, and only from here.
    clock_now: Clock,
    /// `NAT_ON`, and what this writer last wrote there (`None`: nothing yet, so the first
    /// update writes it: a map of a fresh instance starts at 0 whatever the plan adopted).
    nat_on: Array<MapData, u32>,
    nat_written: Option<u32>,
    nat_sources4: BpfHashMap<MapData, ServiceKey4, NatSource>,
    nat_sources6: BpfHashMap<MapData, ServiceKey6, NatSource>,
    /// A service's state or a backend was written since the epoch last moved: it moves at
    /// the end of the update ([`MapWriter::settle`]), once, not after every write (a
    /// start writes 100,000 backends).
    epoch_stale: bool,
    reason_stats: PerCpuArray<MapData, ReasonCounters>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    /// `BACKEND_LOAD`: the connection counts (`BackendLoad`: active, inactive, flags).
    load: MappedArray,
    /// `SYN_GUARD`'s one element (`SynGuard`: embryonic, cap, flood_until).
    guard: MappedArray,
    timeouts: Array<MapData, u32>,
    /// `CANDIDATES`: per service, the two backends a count-based scheduler chooses between.
    candidates: MappedArray,
    /// `NEIGH_WANTED`: next hops towards NAT clients that had no neighbour entry.
    neigh_wanted: MappedArray,
    /// What `TIMEOUTS` holds (written only from here).
    timeouts_now: [u32; lb_common::conn_state::COUNT as usize],
    /// The generation this writer last wrote to each backend slot.
    generations: Vec<Option<u32>>,
}

/// Words of `BackendLoad` and `SynGuard` (lb-common's layouts).
const LOAD_ACTIVE: usize = 0;
const LOAD_INACTIVE: usize = 1;
const LOAD_FLAGS: usize = 2;
const GUARD_EMBRYONIC: usize = 0;
const GUARD_CAP: usize = 1;
const GUARD_FLOOD_UNTIL: usize = 2;
const _: () = assert!(std::mem::offset_of!(lb_common::BackendLoad, inactive) == 4 * LOAD_INACTIVE);
const _: () = assert!(std::mem::offset_of!(lb_common::SynGuard, cap) == 4 * GUARD_CAP);
const _: () =
    assert!(std::mem::offset_of!(lb_common::SynGuard, flood_until) == 4 * GUARD_FLOOD_UNTIL);

fn key4(k: &MapKey) -> ServiceKey4 {
    ServiceKey4 {
        addr: k.addr[0],
        port: k.port,
        proto: k.proto,
        _pad: 0,
    }
}

fn key6(k: &MapKey) -> ServiceKey6 {
    ServiceKey6 {
        addr: k.addr,
        port: k.port,
        proto: k.proto,
        _pad: 0,
    }
}

/// Map `name` of `fds`, as the typed map `T`.
fn open<T>(fds: &MapFds, name: &'static str) -> Result<T, MapWriteError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = fds.map(name).map_err(|e| match e {
        OpenError::Missing => MapWriteError::Missing { map: name },
        OpenError::Kernel(source) => MapWriteError::Kernel {
            map: name,
            op: "open",
            source,
        },
    })?;
    T::try_from(map).map_err(|source| MapWriteError::Kernel {
        map: name,
        op: "open",
        source,
    })
}

/// An array the program declares `BPF_F_MMAPABLE`, mapped into the daemon's memory: its
/// 32-bit words are read and written as atomics, concurrently with the program.
///
/// `RINGS` is written so: a slot is one 32-bit store, where the bpf() call would cost a
/// system call a slot, seconds for a hundred Maglev tables of 65537 slots. `BACKEND_LOAD`
/// and `SYN_GUARD` are corrected so: the program adds to their counts on every CPU, and
/// only an atomic add of the daemon's correction keeps what it added meanwhile (an element
/// update would overwrite it).
struct MappedArray {
    /// Keeps the map (and so the mapping's pages) alive.
    _map: MapData,
    mmap: memmap2::MmapMut,
    len: u32,
    /// 32-bit words from one element to the next: the kernel lays array elements
    /// `round_up(value_size, 8)` bytes apart.
    stride: usize,
}

impl MappedArray {
    fn open(fds: &MapFds, name: &'static str, value_size: usize) -> Result<Self, MapWriteError> {
        let fd = fds
            .dup(name)
            .map_err(|_| MapWriteError::Missing { map: name })?;
        let data = MapData::from_fd(fd).map_err(kernel(name, "open"))?;
        let len = data.info().map_err(kernel(name, "read"))?.max_entries();
        let stride = value_size.next_multiple_of(8) / 4;
        let bytes = (len as usize * stride * 4).next_multiple_of(page_size());
        // SAFETY: the kernel maps the array's own pages; they live as long as the map, which
        // `_map` keeps. Words are only ever accessed as `AtomicU32` (`word`), so the
        // program's concurrent accesses race with nothing Rust assumes exclusive.
        let mmap = unsafe {
            memmap2::MmapOptions::new()
                .len(bytes)
                .map_mut(data.fd().as_fd().as_raw_fd())
        }
        .map_err(|e| MapWriteError::Mmap {
            map: name,
            source: e,
        })?;
        Ok(Self {
            _map: data,
            mmap,
            len,
            stride,
        })
    }

    /// Word `word` of element `index`.
    fn word(&self, index: u32, word: usize) -> Option<&AtomicU32> {
        if word >= self.stride {
            return None;
        }
        // SAFETY: the mapping is page-aligned and holds `len` elements of `stride` words
        // (see `open`); AtomicU32 has u32's layout.
        let words = unsafe {
            std::slice::from_raw_parts(
                self.mmap.as_ptr().cast::<AtomicU32>(),
                self.len as usize * self.stride,
            )
        };
        words.get(index as usize * self.stride + word)
    }
}

/// `RINGS`: a slot is the first 32-bit word of its element.
struct RingMap(MappedArray);

impl RingMap {
    fn open(fds: &MapFds) -> Result<Self, MapWriteError> {
        Ok(Self(MappedArray::open(fds, names::RINGS, 4)?))
    }

    fn slot(&self, index: u32) -> Option<&AtomicU32> {
        self.0.word(index, 0)
    }

    fn len(&self) -> u32 {
        self.0.len
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

fn kernel(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> MapWriteError {
    move |source| MapWriteError::Kernel { map, op, source }
}

impl BpfMaps {
    /// The maps of a loaded program (tests): the daemon's own maps are made beside them.
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Self, MapWriteError> {
        let mut fds = MapFds::of(ebpf).map_err(|_| MapWriteError::Missing { map: "(any)" })?;
        fds.add_daemon_maps()
            .map_err(kernel(names::BACKEND_KEYS, "create"))?;
        Self::open(&fds)
    }

    /// The maps a program instance runs over (`fds`: the object's maps and the daemon's
    /// own, [`MapFds::add_daemon_maps`]), fresh or adopted from a previous run.
    pub fn open(fds: &MapFds) -> Result<Self, MapWriteError> {
        let clock: Array<MapData, Clock> = open(fds, names::CLOCK)?;
        let clock_now = clock.get(&0, 0).map_err(kernel(names::CLOCK, "read"))?;
        Ok(Self {
            services4: open(fds, names::SERVICES4)?,
            services6: open(fds, names::SERVICES6)?,
            infos: open(fds, names::SERVICE_INFO)?,
            backends: open(fds, names::BACKENDS)?,
            rings: RingMap::open(fds)?,
            keys: open(fds, names::BACKEND_KEYS)?,
            meta: open(fds, names::META)?,
            clock,
            clock_now,
            nat_on: open(fds, names::NAT_ON)?,
            nat_written: None,
            nat_sources4: open(fds, names::NAT_SOURCES4)?,
            nat_sources6: open(fds, names::NAT_SOURCES6)?,
            epoch_stale: false,
            reason_stats: open(fds, names::REASON_STATS)?,
            service_stats: open(fds, names::SERVICE_STATS)?,
            backend_stats: open(fds, names::BACKEND_STATS)?,
            load: MappedArray::open(
                fds,
                names::BACKEND_LOAD,
                std::mem::size_of::<lb_common::BackendLoad>(),
            )?,
            guard: MappedArray::open(
                fds,
                names::SYN_GUARD,
                std::mem::size_of::<lb_common::SynGuard>(),
            )?,
            timeouts: open(fds, names::TIMEOUTS)?,
            candidates: MappedArray::open(fds, names::CANDIDATES, 8)?,
            neigh_wanted: MappedArray::open(
                fds,
                names::NEIGH_WANTED,
                std::mem::size_of::<lb_common::NeighWant>(),
            )?,
            timeouts_now: [0; lb_common::conn_state::COUNT as usize],
            generations: Vec::new(),
        })
    }

    /// The generations the maps hold, read back at a take-over: a backend the previous run
    /// wrote keeps its connection counts at its next write.
    pub fn remember_generations(&mut self, backends: &[BackendValue]) {
        self.generations = backends
            .iter()
            .map(|b| {
                (b.flags & lb_common::BACKEND_F_PRESENT != 0 || b.generation != 0)
                    .then_some(b.generation)
            })
            .collect();
    }

    /// The connection states' timeouts as last written.
    pub fn timeouts(&self) -> &[u32; lb_common::conn_state::COUNT as usize] {
        &self.timeouts_now
    }

    /// Offers service `sid`'s two candidates (backend id + 1; 0: none), each word written
    /// only when it changes.
    pub fn set_candidates(&self, sid: u32, pair: [u32; 2]) {
        for (w, v) in pair.into_iter().enumerate() {
            if let Some(a) = self.candidates.word(sid, w) {
                if a.load(Ordering::Relaxed) != v {
                    a.store(v, Ordering::Relaxed);
                }
            }
        }
    }

    /// The candidates offered for service `sid` (tests).
    pub fn candidates(&self, sid: u32) -> [u32; 2] {
        let read = |w| {
            self.candidates
                .word(sid, w)
                .map_or(0, |a| a.load(Ordering::Relaxed))
        };
        [read(0), read(1)]
    }

    /// Backend `id`'s overload flag (`LOAD_F_OVERLOAD`).
    pub fn overload_flag(&self, id: u32) -> bool {
        self.load
            .word(id, LOAD_FLAGS)
            .is_some_and(|a| a.load(Ordering::Relaxed) & lb_common::LOAD_F_OVERLOAD != 0)
    }

    pub fn set_overload_flag(&self, id: u32, on: bool) {
        if let Some(a) = self.load.word(id, LOAD_FLAGS) {
            if on {
                a.fetch_or(lb_common::LOAD_F_OVERLOAD, Ordering::Relaxed);
            } else {
                a.fetch_and(!lb_common::LOAD_F_OVERLOAD, Ordering::Relaxed);
            }
        }
    }

    /// The connection states' timeouts (`lb_common::conn_state`), seconds.
    pub fn set_timeouts(
        &mut self,
        t: &[u32; lb_common::conn_state::COUNT as usize],
    ) -> Result<(), MapWriteError> {
        for (state, &secs) in t.iter().enumerate() {
            let state = state as u32;
            if self.timeouts.get(&state, 0).ok() != Some(secs) {
                self.timeouts
                    .set(state, secs, 0)
                    .map_err(kernel(names::TIMEOUTS, "update"))?;
            }
        }
        self.timeouts_now = *t;
        Ok(())
    }

    /// The most flows the table may hold in SYN_RECV (0: no limit).
    pub fn set_syn_cap(&self, cap: u32) {
        if let Some(w) = self.guard.word(0, GUARD_CAP) {
            w.store(cap, Ordering::Relaxed);
        }
    }

    /// Backend slots of `BACKEND_LOAD`.
    pub fn load_len(&self) -> u32 {
        self.load.len
    }

    /// Backend `id`'s connections now: (active, inactive), never below 0.
    pub fn load(&self, id: u32) -> (u64, u64) {
        let read = |w| {
            self.load
                .word(id, w)
                .map_or(0, |a| (a.load(Ordering::Relaxed) as i32).max(0) as u64)
        };
        (read(LOAD_ACTIVE), read(LOAD_INACTIVE))
    }

    /// The raw counts (active, inactive) of every backend slot, for a correction.
    pub fn load_snapshot(&self) -> Vec<(i32, i32)> {
        (0..self.load.len)
            .map(|id| {
                let read = |w| {
                    self.load
                        .word(id, w)
                        .map_or(0, |a| a.load(Ordering::Relaxed) as i32)
                };
                (read(LOAD_ACTIVE), read(LOAD_INACTIVE))
            })
            .collect()
    }

    /// Adds `delta` (active, inactive) to backend `id`'s counts, atomically: what the
    /// program adds meanwhile stays.
    pub fn correct_load(&self, id: u32, delta: (i32, i32)) {
        for (w, d) in [(LOAD_ACTIVE, delta.0), (LOAD_INACTIVE, delta.1)] {
            if d != 0 {
                if let Some(a) = self.load.word(id, w) {
                    a.fetch_add(d as u32, Ordering::Relaxed);
                }
            }
        }
    }

    /// Zeroes backend `id`'s counts (a slot given to another backend).
    pub fn clear_load(&self, id: u32) {
        for w in [LOAD_ACTIVE, LOAD_INACTIVE, LOAD_FLAGS] {
            if let Some(a) = self.load.word(id, w) {
                a.store(0, Ordering::Relaxed);
            }
        }
    }

    /// The SYN-flood guard: (flows in SYN_RECV, the cap, flood window end).
    pub fn guard(&self) -> (i32, u32, u32) {
        let read = |w| {
            self.guard
                .word(0, w)
                .map_or(0, |a| a.load(Ordering::Relaxed))
        };
        (
            read(GUARD_EMBRYONIC) as i32,
            read(GUARD_CAP),
            read(GUARD_FLOOD_UNTIL),
        )
    }

    /// Adds `delta` to the count of flows in SYN_RECV, atomically.
    pub fn correct_embryonic(&self, delta: i32) {
        if delta != 0 {
            if let Some(a) = self.guard.word(0, GUARD_EMBRYONIC) {
                a.fetch_add(delta as u32, Ordering::Relaxed);
            }
        }
    }

    /// The daemon's record beside the maps (all zeroes in maps nobody wrote it to).
    pub fn meta(&self) -> Result<Meta, MapWriteError> {
        self.meta.get(&0, 0).map_err(kernel(names::META, "read"))
    }

    pub fn set_meta(&mut self, meta: &Meta) -> Result<(), MapWriteError> {
        self.meta
            .set(0, meta, 0)
            .map_err(kernel(names::META, "update"))
    }

    /// Everything the planner wrote, read back: what a restarted daemon adopts
    /// ([`super::adopt`]). Arrays are read in batches, so this costs milliseconds at
    /// 100,000 backends.
    pub fn read_back(&self) -> Result<super::adopt::Found, MapWriteError> {
        let mut found = super::adopt::Found::default();
        for entry in self.services4.iter() {
            let (k, v) = entry.map_err(kernel(names::SERVICES4, "read"))?;
            found.services.push((
                MapKey {
                    addr: [k.addr, 0, 0, 0],
                    port: k.port,
                    proto: k.proto,
                    family: FAMILY_V4,
                },
                v,
            ));
        }
        for entry in self.services6.iter() {
            let (k, v) = entry.map_err(kernel(names::SERVICES6, "read"))?;
            found.services.push((
                MapKey {
                    addr: k.addr,
                    port: k.port,
                    proto: k.proto,
                    family: lb_common::FAMILY_V6,
                },
                v,
            ));
        }
        found.infos = read_array(&self.infos, names::SERVICE_INFO)?;
        found.backends = read_array(&self.backends, names::BACKENDS)?;
        found.keys = read_array(&self.keys, names::BACKEND_KEYS)?;
        let mut rings = Vec::with_capacity(self.rings.len() as usize);
        for i in 0..self.rings.len() {
            rings.push(self.rings.slot(i).map_or(0, |s| s.load(Ordering::Relaxed)));
        }
        found.rings = rings;
        for entry in self.nat_sources4.iter() {
            let (k, v) = entry.map_err(kernel(names::NAT_SOURCES4, "read"))?;
            let key = MapKey {
                addr: [k.addr, 0, 0, 0],
                port: k.port,
                proto: k.proto,
                family: FAMILY_V4,
            };
            found.nat.push((key, v));
        }
        for entry in self.nat_sources6.iter() {
            let (k, v) = entry.map_err(kernel(names::NAT_SOURCES6, "read"))?;
            let key = MapKey {
                addr: k.addr,
                port: k.port,
                proto: k.proto,
                family: lb_common::FAMILY_V6,
            };
            found.nat.push((key, v));
        }
        Ok(found)
    }

    /// The next hops the program found without a neighbour entry since the last call (each
    /// slot's drop, once), as (interface index, address): what the daemon asks the kernel to
    /// resolve. A slot read while the program rewrites it is skipped (its `seen` moved) and
    /// read at the next call.
    pub fn wanted_neighbours(&self) -> Vec<(u32, std::net::IpAddr)> {
        // Words of `NeighWant`.
        const IFINDEX: usize = 4;
        const FAMILY: usize = 5;
        const SEEN: usize = 6;
        const ASKED: usize = 7;
        let w = &self.neigh_wanted;
        let mut out = Vec::new();
        for i in 0..w.len {
            let word = |n: usize| w.word(i, n).map_or(0, |a| a.load(Ordering::Acquire));
            let seen = word(SEEN);
            if seen == 0 || seen == word(ASKED) {
                continue;
            }
            let addr = [word(0), word(1), word(2), word(3)];
            let (ifindex, family) = (word(IFINDEX), word(FAMILY));
            if word(SEEN) != seen {
                continue;
            }
            if let Some(a) = w.word(i, ASKED) {
                a.store(seen, Ordering::Release);
            }
            // The program's own record, yet checked: a torn or stray slot is dropped.
            let ip = match family {
                2 => std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(addr[0]))),
                10 => {
                    let mut b = [0u8; 16];
                    for (chunk, word) in b.chunks_exact_mut(4).zip(addr) {
                        chunk.copy_from_slice(&word.to_ne_bytes());
                    }
                    std::net::IpAddr::V6(std::net::Ipv6Addr::from(b))
                }
                _ => continue,
            };
            if ifindex == 0 || ip.is_unspecified() || ip.is_multicast() {
                continue;
            }
            out.push((ifindex, ip));
        }
        out
    }

    /// The maps of a grown instance ([`super::program::grow`]): `fds`, its own sized maps
    /// and those it shares with this one (the clock, the reason counters, the daemon's
    /// record). Counters of services and backends are copied over, so that they carry on.
    pub fn regrown(&self, fds: &MapFds) -> Result<Self, MapWriteError> {
        let mut new = Self::open(fds)?;
        new.clock_now = self.clock_now;
        new.timeouts_now = self.timeouts_now;
        new.nat_written = self.nat_written;
        new.generations = self.generations.clone();
        for (from, to, name) in [
            (
                &self.service_stats,
                &mut new.service_stats,
                names::SERVICE_STATS,
            ),
            (
                &self.backend_stats,
                &mut new.backend_stats,
                names::BACKEND_STATS,
            ),
        ] {
            for id in 0..from.len().min(to.len()) {
                let v = from.get(&id, 0).map_err(kernel(name, "read"))?;
                if v.iter().any(|c| *c != TrafficCounters::default()) {
                    to.set(id, v, 0).map_err(kernel(name, "update"))?;
                }
            }
        }
        // The connection counts carry on too (what the program adds to the old ones until
        // the switch, the next sweep puts right).
        for (id, (a, i)) in self.load_snapshot().into_iter().enumerate() {
            new.correct_load(id as u32, (a, i));
            new.set_overload_flag(id as u32, self.overload_flag(id as u32));
        }
        Ok(new)
    }

    /// Tells the program the maps it runs over changed (a grown instance took over): every
    /// flow-cache slot is checked again.
    pub fn new_epoch(&mut self) -> Result<(), MapWriteError> {
        self.bump_epoch()
    }

    /// The seconds the clock holds (the last written; a previous run's, when taken over).
    pub fn clock_seconds(&self) -> u32 {
        self.clock_now.now
    }

    /// Sets the program's clock (seconds): flow idle times and persistence are measured on
    /// it. The daemon writes CLOCK_MONOTONIC seconds every second; tests move it by hand.
    pub fn set_clock(&mut self, seconds: u32) -> Result<(), MapWriteError> {
        self.write_clock(Clock {
            now: seconds,
            ..self.clock_now
        })
    }

    /// Tells the program that a service's state or a backend changed: flow-cache slots
    /// filled before are checked again before their next use (`lb_common::FlowCache4`).
    /// Called after the change, so that a slot filled under the new epoch saw it.
    fn bump_epoch(&mut self) -> Result<(), MapWriteError> {
        self.write_clock(Clock {
            epoch: self.clock_now.epoch.wrapping_add(1),
            ..self.clock_now
        })
    }

    fn write_clock(&mut self, clock: Clock) -> Result<(), MapWriteError> {
        self.clock
            .set(0, clock, 0)
            .map_err(kernel(names::CLOCK, "update"))?;
        self.clock_now = clock;
        Ok(())
    }

    /// Packets and bytes per reason, summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<ReasonCounters>, MapWriteError> {
        (0..reason::COUNT)
            .map(|r| {
                let per_cpu = self
                    .reason_stats
                    .get(&r, 0)
                    .map_err(kernel(names::REASON_STATS, "read"))?;
                Ok(per_cpu
                    .iter()
                    .fold(ReasonCounters::default(), |a, c| ReasonCounters {
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                    }))
            })
            .collect()
    }

    fn traffic(
        map: &PerCpuArray<MapData, TrafficCounters>,
        name: &'static str,
        id: u32,
    ) -> Result<TrafficCounters, MapWriteError> {
        let per_cpu = map.get(&id, 0).map_err(kernel(name, "read"))?;
        Ok(per_cpu
            .iter()
            .fold(TrafficCounters::default(), |a, c| TrafficCounters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                new_flows: a.new_flows + c.new_flows,
            }))
    }

    /// Forwarded packets, bytes and new flows of one service, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> Result<TrafficCounters, MapWriteError> {
        Self::traffic(&self.service_stats, names::SERVICE_STATS, id)
    }

    /// Forwarded packets, bytes and new flows of one backend, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> Result<TrafficCounters, MapWriteError> {
        Self::traffic(&self.backend_stats, names::BACKEND_STATS, id)
    }

    /// [`BpfMaps::service_counters`] of services `0..n` (indexed by id; fewer when the map
    /// is smaller), in a few system calls ([`per_cpu_sums_on_every_core`]).
    pub fn all_service_counters(&self, n: u32) -> Result<Vec<TrafficCounters>, MapWriteError> {
        per_cpu_sums_on_every_core(&self.service_stats, names::SERVICE_STATS, n, add_traffic)
    }

    /// [`BpfMaps::backend_counters`] of backends `0..n` (indexed by id; fewer when the map
    /// is smaller), in a few system calls ([`per_cpu_sums_on_every_core`]).
    pub fn all_backend_counters(&self, n: u32) -> Result<Vec<TrafficCounters>, MapWriteError> {
        per_cpu_sums_on_every_core(&self.backend_stats, names::BACKEND_STATS, n, add_traffic)
    }
}

/// Every element of an array, in `BPF_MAP_LOOKUP_BATCH` calls (aya 0.14 has none): the
/// values of a plain array come `value_size` apart, in index order.
fn read_array<V: Pod + Default>(
    map: &Array<MapData, V>,
    name: &'static str,
) -> Result<Vec<V>, MapWriteError> {
    let batch_error = |io_error| {
        kernel(name, "read")(aya::maps::MapError::SyscallError(SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        }))
    };
    let n = map.len() as usize;
    let fd = IterableMap::map(map).fd().as_fd();
    let mut out: Vec<V> = Vec::with_capacity(n);
    let mut keys = vec![0u32; COUNTER_BATCH.min(n.max(1))];
    let mut values = vec![V::default(); keys.len()];
    let mut last = 0u64;
    while out.len() < n {
        let want = (n - out.len()).min(keys.len());
        let position = std::ptr::addr_of_mut!(last).cast::<u8>();
        // SAFETY: buffers of `want` keys and values of the map's sizes (a u32 key, a `V`
        // value), and `last`, a u64 (an array's position takes 4 bytes), all alive across
        // the call.
        let (got, err) = unsafe {
            super::flows::lookup_batch(
                fd,
                (!out.is_empty()).then_some(position.cast_const()),
                position,
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                want as u32,
            )
        };
        out.extend_from_slice(&values[..got]);
        match err {
            None if got > 0 => {}
            None => break,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(batch_error(e)),
        }
    }
    Ok(out)
}

fn add_traffic(a: &mut TrafficCounters, c: &TrafficCounters) {
    a.packets += c.packets;
    a.bytes += c.bytes;
    a.new_flows += c.new_flows;
}

/// Elements of a per-CPU array read per `BPF_MAP_LOOKUP_BATCH` call: bounds the buffer to
/// this many x possible CPUs x the value size (1.5 MiB of `TrafficCounters` with 64 CPUs).
const COUNTER_BATCH: usize = 1024;

/// From this many elements on, [`per_cpu_sums_on_every_core`] splits the read.
const PARALLEL_FROM: usize = 16 * COUNTER_BATCH;

/// [`per_cpu_sums`] of `0..n`, in as many ranges as there are cores, read side by side: the
/// kernel's copy is most of the cost (30 ms for 110,000 elements on 2 CPUs, nearly all of
/// it in `bpf_map_lookup_batch`), and ranges of an array are independent.
fn per_cpu_sums_on_every_core<V: Pod + Default + Send + Sync>(
    map: &PerCpuArray<MapData, V>,
    name: &'static str,
    n: u32,
    add: impl Fn(&mut V, &V) + Sync,
) -> Result<Vec<V>, MapWriteError> {
    let n = n.min(map.len());
    let mut all = Vec::with_capacity(n as usize);
    for part in crate::par::ranges(n as usize, PARALLEL_FROM, |r| {
        per_cpu_sums(map, name, r.start as u32..r.end as u32, &add)
    }) {
        all.extend(part?);
    }
    Ok(all)
}

/// Elements `range` of a per-CPU array, each summed over CPUs with `add`.
///
/// One `BPF_MAP_LOOKUP_BATCH` call (Linux 5.6) per [`COUNTER_BATCH`] elements: a status of
/// 10,000 services with 100,000 backends was 110,000 single lookups (a system call and two
/// allocations each in aya, 0.1 s and more), and the metrics take one every second. aya 0.14
/// has no batch calls, hence the raw bpf(); the values come in the same layout as a single
/// per-CPU lookup's, one after the other.
fn per_cpu_sums<V: Pod + Default>(
    map: &PerCpuArray<MapData, V>,
    name: &'static str,
    range: std::ops::Range<u32>,
    add: impl Fn(&mut V, &V),
) -> Result<Vec<V>, MapWriteError> {
    // The kernel lays each CPU's value 8 bytes aligned (`round_up(value_size, 8)`): the
    // buffer is a plain array of `V` only when that adds nothing.
    const { assert!(std::mem::size_of::<V>().is_multiple_of(8)) };
    let batch_error = |io_error| {
        kernel(name, "read")(aya::maps::MapError::SyscallError(SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        }))
    };
    let range = range.start..range.end.min(map.len());
    let n = range.len();
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| batch_error(e))?;
    let fd = IterableMap::map(map).fd().as_fd();
    let mut keys = vec![0u32; COUNTER_BATCH.min(n)];
    let mut values = vec![V::default(); keys.len() * cpus];
    let mut out = Vec::with_capacity(n);
    // The kernel goes on after the key in `last` (an array's position is its index, in 4
    // of these 8 bytes): a range from `start` goes on after `start - 1`.
    let mut last = u64::from(range.start.saturating_sub(1));
    while out.len() < n {
        let want = (n - out.len()).min(COUNTER_BATCH);
        // The kernel reads where to go on from before it writes where it stopped.
        let position = std::ptr::addr_of_mut!(last).cast::<u8>();
        // SAFETY: buffers of `want` keys and `want` x `cpus` values (V is 8-byte sized, see
        // above), and `last`, a u64 (an array's position takes 4 bytes), all alive across
        // the call.
        let (got, err) = unsafe {
            super::flows::lookup_batch(
                fd,
                (!out.is_empty() || range.start > 0).then_some(position.cast_const()),
                position,
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                want as u32,
            )
        };
        for per_cpu in values[..got * cpus].chunks_exact(cpus) {
            let mut sum = V::default();
            per_cpu.iter().for_each(|c| add(&mut sum, c));
            out.push(sum);
        }
        match err {
            None if got > 0 => {}
            // ENOENT: past the array's last element.
            None => break,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(batch_error(e)),
        }
    }
    Ok(out)
}

impl MapWriter for BpfMaps {
    fn update_service(&mut self, key: &MapKey, value: &ServiceRef) -> Result<(), MapWriteError> {
        count_write();
        // The program's service memo (SVC_MEMO4/6) holds lookups until the epoch changes.
        self.epoch_stale = true;
        if key.family == FAMILY_V4 {
            self.services4
                .insert(key4(key), value, 0)
                .map_err(kernel(names::SERVICES4, "update"))
        } else {
            self.services6
                .insert(key6(key), value, 0)
                .map_err(kernel(names::SERVICES6, "update"))
        }
    }
    fn delete_service(&mut self, key: &MapKey) -> Result<(), MapWriteError> {
        count_write();
        self.epoch_stale = true;
        if key.family == FAMILY_V4 {
            self.services4
                .remove(&key4(key))
                .map_err(kernel(names::SERVICES4, "delete"))
        } else {
            self.services6
                .remove(&key6(key))
                .map_err(kernel(names::SERVICES6, "delete"))
        }
    }
    fn update_service_info(&mut self, id: u32, value: &ServiceValue) -> Result<(), MapWriteError> {
        count_write();
        // Ring slots are stored through the mapping: every one stored so far must be seen
        // by a program that sees this service state.
        std::sync::atomic::fence(Ordering::SeqCst);
        let written = self
            .infos
            .set(id, value, 0)
            .map_err(kernel(names::SERVICE_INFO, "update"));
        // Even after a failed write: it may have changed something.
        self.epoch_stale = true;
        written
    }
    fn update_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapWriteError> {
        count_write();
        // A slot given to another backend starts with no connections and not overloaded:
        // the previous occupant's flows are no longer this one's (they reschedule). What
        // this writer wrote is remembered rather than read back (a system call a backend
        // at start); a slot it never wrote (taken over) is cleared too, and the first sweep,
        // at the first tick, counts it again.
        let written = self
            .backends
            .set(id, value, 0)
            .map_err(kernel(names::BACKENDS, "update"));
        self.epoch_stale = true;
        written?;
        let i = id as usize;
        if self.generations.len() <= i {
            self.generations.resize(i + 1, None);
        }
        if self.generations[i] != Some(value.generation) {
            self.clear_load(id);
            self.generations[i] = Some(value.generation);
        }
        Ok(())
    }
    fn update_backend_key(&mut self, id: u32, key: &BackendKey) -> Result<(), MapWriteError> {
        count_write();
        self.keys
            .set(id, key, 0)
            .map_err(kernel(names::BACKEND_KEYS, "update"))
    }
    fn set_nat(&mut self, bits: u32) -> Result<(), MapWriteError> {
        if self.nat_written != Some(bits) {
            count_write();
            self.nat_on
                .set(0, bits, 0)
                .map_err(kernel(names::NAT_ON, "update"))?;
            self.nat_written = Some(bits);
        }
        Ok(())
    }
    fn update_nat_source(&mut self, key: &MapKey, value: &NatSource) -> Result<(), MapWriteError> {
        count_write();
        if key.family == FAMILY_V4 {
            self.nat_sources4
                .insert(key4(key), value, 0)
                .map_err(kernel(names::NAT_SOURCES4, "update"))
        } else {
            self.nat_sources6
                .insert(key6(key), value, 0)
                .map_err(kernel(names::NAT_SOURCES6, "update"))
        }
    }
    fn delete_nat_source(&mut self, key: &MapKey) -> Result<(), MapWriteError> {
        count_write();
        let r = if key.family == FAMILY_V4 {
            self.nat_sources4.remove(&key4(key))
        } else {
            self.nat_sources6.remove(&key6(key))
        };
        let name = if key.family == FAMILY_V4 {
            names::NAT_SOURCES4
        } else {
            names::NAT_SOURCES6
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(kernel(name, "delete")(e)),
        }
    }
    fn settle(&mut self) -> Result<(), MapWriteError> {
        // Cleared only once the bump is written: a failed one is tried again next time (a
        // service memo or flow-cache slot must never outlive what it was filled from).
        if self.epoch_stale {
            self.bump_epoch()?;
            self.epoch_stale = false;
        }
        Ok(())
    }
    fn update_ring_slot(&mut self, index: u32, backend: u32) -> Result<(), MapWriteError> {
        count_write();
        let slot = self.rings.slot(index).ok_or(MapWriteError::OutOfRange {
            map: names::RINGS,
            index,
            len: self.rings.len(),
        })?;
        slot.store(backend, Ordering::Relaxed);
        Ok(())
    }
}
