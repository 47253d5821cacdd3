//! Loading the embedded XDP object with its sizes, and attaching it.
//!
//! The object has two entry points over one code and one set of maps: `lb`, which aya loads,
//! and `lb_native`, which also reads the VLAN tag a driver took off the frame and is loaded
//! bound to the interface ([`devbound`]). Skb mode runs `lb` (the kernel keeps an offloaded
//! tag on the skb and puts it back on XDP_TX); native mode runs `lb_native` where the driver
//! can say what it took off, `lb` where the device never delivers a tag beside the frame,
//! and nothing elsewhere ([`native_plan`]).
use std::{
    collections::HashMap,
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use aya::{
    programs::{ProgramError, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{
    names, DEFAULT_FLOW_CACHE, DEFAULT_MAX_FLOWS, DEFAULT_MAX_PERSIST, DEFAULT_SYNC_RING_BYTES,
};

use super::devbound;
use super::devbound::{link_create, link_update};
use super::pins::Shape;
use crate::{
    model::{Limits, XdpMode},
    netlink::{self, link::Mode, NetlinkError},
};

/// The XDP object, built by `cargo xtask build-ebpf` and embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));

/// What is fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub limits: Limits,
    /// Flow table entries (LRU).
    pub max_flows: u32,
    /// Persistence templates (LRU).
    pub max_persist: u32,
    /// Entries of each NAT reverse table (`NAT_REV4`/`NAT_REV6`, LRU): a NAT flow's
    /// replies find it there. 0 (no NAT service) makes them as small as a map can be: an
    /// LRU table's entries are allocated whole at load time.
    pub nat_flows: u32,
    /// Slots of each per-CPU flow cache; a power of two.
    pub flow_cache: u32,
    /// The MAC of the interface the program will run on: the source of forwarded frames.
    pub iface_mac: [u8; 6],
    /// Connection sync: `None` leaves it off (the program then writes no events at all).
    pub sync: Option<SyncLoad>,
}

/// What the program needs for connection sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncLoad {
    /// Size of the event ring in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// A flow is refreshed (sent again) when `last_seen >> refresh_shift` changes: at most
    /// once per 2^shift seconds of its traffic.
    pub refresh_shift: u32,
}

impl Default for SyncLoad {
    fn default() -> Self {
        Self {
            ring_bytes: 4 << 20,
            refresh_shift: 3,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_flows: DEFAULT_MAX_FLOWS,
            max_persist: DEFAULT_MAX_PERSIST,
            nat_flows: 0,
            flow_cache: DEFAULT_FLOW_CACHE,
            iface_mac: [0; 6],
            sync: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no program {0:?}")]
    NoProgram(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("flow cache size {0} is not a power of two, or too large for this many CPUs")]
    FlowCacheSize(u32),
    #[error("counting the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("maps of {0} are beyond what a node holds")]
    TooLarge(Limits),
    #[error("the sync event ring of {0} bytes is not a power of two of at least a page")]
    SyncRingSize(u32),
    #[error("duplicating the descriptor of map {0}: {1}")]
    Dup(String, #[source] io::Error),
    #[error(transparent)]
    Relocated(#[from] devbound::DevBoundError),
    #[error("making the daemon's own maps: {0}")]
    Daemon(String),
    #[error("writing the decapsulator's VIPs: {0}")]
    DecapVips(String),
}

/// Loads the program into the kernel (not attached yet).
pub fn load(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    let mut ebpf = create(opts)?;
    xdp(&mut ebpf)?
        .load()
        .map_err(|source| LoadError::Program {
            name: names::PROGRAM,
            source,
        })?;
    Ok(ebpf)
}

/// The maps whose sizes follow the configuration ([`Limits`]). A larger program instance
/// gets new ones ([`grow`]) and shares every other map with the one it replaces: the flow
/// and persistence tables above all, so that no flow is lost to the growth.
pub const SIZED_MAPS: [&str; 12] = [
    names::SERVICES4,
    names::SERVICES6,
    names::SERVICE_INFO,
    names::BACKENDS,
    names::RINGS,
    names::RR_STATE,
    names::SERVICE_STATS,
    names::BACKEND_STATS,
    names::BACKEND_LOAD,
    names::CANDIDATES,
    names::NAT_SOURCES4,
    names::NAT_SOURCES6,
];

/// A descriptor of each map of a program instance, by the object's names (its global data
/// sections included): what another instance is relocated against.
#[derive(Debug, Default)]
pub struct MapFds(HashMap<String, OwnedFd>);

/// Why [`MapFds::map`] found no map.
#[derive(Debug)]
pub enum OpenError {
    Missing,
    Kernel(aya::maps::MapError),
}

impl MapFds {
    /// Every map `ebpf` holds now: called before any is taken out.
    pub fn of(ebpf: &Ebpf) -> Result<Self, LoadError> {
        let mut out = HashMap::new();
        for (name, map) in ebpf.maps() {
            let fd = devbound::map_data(map)
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| LoadError::Dup(name.to_string(), e))?;
            out.insert(name.to_string(), fd);
        }
        Ok(Self(out))
    }

    pub fn raw(&self, name: &str) -> Option<RawFd> {
        self.0.get(name).map(|fd| fd.as_raw_fd())
    }

    /// Map `name` is `fd` from now on (an adopted or a migrated map).
    pub fn insert(&mut self, name: &str, fd: OwnedFd) {
        self.0.insert(name.to_string(), fd);
    }

    pub fn get(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.0.get(name).map(|fd| fd.as_fd())
    }

    /// Map `name`, of the kind the kernel says it is: what aya's typed maps are made from.
    pub fn map(&self, name: &str) -> Result<aya::maps::Map, OpenError> {
        use aya::maps::{Map, MapType};
        let fd = self.dup(name).map_err(|_| OpenError::Missing)?;
        let data = aya::maps::MapData::from_fd(fd).map_err(OpenError::Kernel)?;
        let kind = data
            .info()
            .and_then(|i| i.map_type())
            .map_err(OpenError::Kernel)?;
        Ok(match kind {
            MapType::Array => Map::Array(data),
            MapType::PerCpuArray => Map::PerCpuArray(data),
            MapType::Hash => Map::HashMap(data),
            MapType::LruHash => Map::LruHashMap(data),
            MapType::RingBuf => Map::RingBuf(data),
            MapType::DevMapHash => Map::DevMapHash(data),
            _ => return Err(OpenError::Missing),
        })
    }

    /// Makes the maps the program never reads, which only the daemon writes: `BACKEND_KEYS`
    /// (as many as `BACKENDS` has slots) and `META`, where they are not there yet.
    pub fn add_daemon_maps(&mut self) -> Result<(), aya::maps::MapError> {
        if !self.0.contains_key(names::BACKEND_KEYS) {
            let backends = match self.map(names::BACKENDS) {
                Ok(m) => devbound::map_data(&m).info()?.max_entries(),
                Err(OpenError::Kernel(e)) => return Err(e),
                Err(OpenError::Missing) => lb_common::DEFAULT_MAX_BACKENDS,
            };
            self.insert(names::BACKEND_KEYS, backend_keys(backends)?);
        }
        if !self.0.contains_key(names::META) {
            let meta = daemon_array(names::META, size_of::<lb_common::Meta>(), 1)?;
            self.insert(names::META, meta);
        }
        Ok(())
    }

    /// A new descriptor of map `name`.
    pub fn dup(&self, name: &str) -> Result<OwnedFd, LoadError> {
        let fd = self
            .0
            .get(name)
            .ok_or_else(|| devbound::DevBoundError::MapMissing(name.to_string()))?;
        fd.try_clone()
            .map_err(|e| LoadError::Dup(name.to_string(), e))
    }
}

/// The maps a daemon of this build pins, as it would make them with `opts` (the planner's
/// and counters' sizes as `opts.limits` says): what [`super::pins::judge`] compares the
/// pinned ones with.
pub fn expected_shapes(opts: &LoadOptions) -> Result<HashMap<&'static str, Shape>, LoadError> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|e| LoadError::Relocated(devbound::DevBoundError::Parse(e)))?;
    let l = opts.limits;
    let mut out = HashMap::new();
    for name in super::pins::pinned() {
        let entries = match name {
            names::SERVICES4 | names::SERVICES6 => l.services * 2,
            names::SERVICE_INFO | names::RR_STATE | names::SERVICE_STATS => l.services,
            names::BACKENDS
            | names::BACKEND_STATS
            | names::BACKEND_KEYS
            | names::NAT_SOURCES4
            | names::NAT_SOURCES6 => l.backends,
            names::RINGS => l.ring_slots,
            names::FLOWS4 | names::FLOWS6 => opts.max_flows,
            names::PERSIST4 | names::PERSIST6 => opts.max_persist,
            names::NAT_REV4 | names::NAT_REV6 => opts.nat_flows.max(1),
            _ => 0,
        };
        let shape = match name {
            names::BACKEND_KEYS => Shape {
                kind: ARRAY,
                key: 4,
                value: size_of::<lb_common::BackendKey>() as u32,
                entries,
                flags: 0,
            },
            names::META => Shape {
                kind: ARRAY,
                key: 4,
                value: size_of::<lb_common::Meta>() as u32,
                entries: 1,
                flags: 0,
            },
            _ => {
                let Some(m) = object.maps.get(name) else {
                    return Err(devbound::DevBoundError::MapMissing(name.to_string()).into());
                };
                Shape {
                    kind: m.map_type(),
                    key: m.key_size(),
                    value: m.value_size(),
                    entries: if entries == 0 {
                        m.max_entries()
                    } else {
                        entries
                    },
                    flags: m.map_flags(),
                }
            }
        };
        out.insert(name, shape);
    }
    Ok(out)
}

/// `BPF_MAP_TYPE_ARRAY`.
const ARRAY: u32 = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32;

/// A `BACKEND_KEYS` of `n` slots.
pub fn backend_keys(n: u32) -> Result<OwnedFd, aya::maps::MapError> {
    daemon_array(names::BACKEND_KEYS, size_of::<lb_common::BackendKey>(), n)
}

/// An array map of the daemon's own (the program never reads it), named `name`.
fn daemon_array(name: &str, value: usize, n: u32) -> Result<OwnedFd, aya::maps::MapError> {
    let def = aya_obj::Map::new_from_params(
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        value as u32,
        n.max(1),
        0,
    );
    let data = aya::maps::MapData::create(def, name, None)?;
    data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
        aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error,
        })
    })
}

/// A program instance over maps of its own and maps it takes over.
pub struct Instance {
    /// Holds the maps made for it (take them through `fds`), and the log ring.
    pub ebpf: Ebpf,
    /// `lb`, relocated against `fds`; not attached.
    pub prog: OwnedFd,
    /// Every map it runs over, the daemon's own included.
    pub fds: MapFds,
}

/// Loads `lb` over the maps of `adopted` (a previous run's, from their pins) and new maps
/// of `opts` for every other map. Maps that are adopted are made at their smallest (aya
/// makes every map of the object) and dropped at once: a flow table of a million entries
/// is allocated whole.
pub fn instance(opts: &LoadOptions, adopted: MapFds) -> Result<Instance, LoadError> {
    let mut ebpf = create_with(opts, &|name| adopted.0.contains_key(name))?;
    let mut fds = MapFds::of(&ebpf)?;
    for (name, fd) in adopted.0 {
        drop(ebpf.take_map(&name));
        fds.insert(&name, fd);
    }
    fds.add_daemon_maps()
        .map_err(|e| LoadError::Daemon(e.to_string()))?;
    let prog = devbound::load_relocated(OBJECT, names::PROGRAM, &|n| fds.raw(n), None)?;
    Ok(Instance { ebpf, prog, fds })
}

/// A program instance with room for more: its own [`SIZED_MAPS`], every other map shared.
pub struct Grown {
    /// Holds the new sized maps (take them out with [`super::maps::BpfMaps::regrown`]), and
    /// unused small copies of the shared ones.
    pub ebpf: Ebpf,
    /// The program, relocated against `fds`; not attached.
    pub prog: OwnedFd,
    /// The maps it runs over: the next growth is relocated against these.
    pub fds: MapFds,
}

/// Loads `program` (`lb`, or `lb_native` bound to the device `bound` names) over new
/// [`SIZED_MAPS`] of `limits` and the maps of `shared` for everything else (flows,
/// persistence, flow caches, clock, counters of reasons, sync events, the global data).
/// Nothing is attached or written: the caller fills the new maps, then switches.
pub fn grow(
    limits: Limits,
    iface_mac: [u8; 6],
    shared: &MapFds,
    program: &'static str,
    bound: Option<(&str, u32)>,
) -> Result<Grown, LoadError> {
    // Only the fresh maps take their sizes from the options: `over_shared` makes the
    // shared ones at their smallest, and the global data is the running program's.
    let opts = LoadOptions {
        limits,
        iface_mac,
        ..LoadOptions::default()
    };
    let fresh = |name: &str| SIZED_MAPS.contains(&name) || name == names::BACKEND_KEYS;
    over_shared(&opts, shared, &fresh, program, bound)
}

/// Loads `program` as [`grow`] does, over new connection tables (`FLOWS4`, `FLOWS6`) of
/// `max_flows` entries and the maps of `shared` for everything else (the sized maps at
/// `limits`, the persistence tables, the caches...): the caller copies the flows over
/// ([`super::flows::copy_table`]), then switches.
pub fn resize_flows(
    limits: Limits,
    max_flows: u32,
    iface_mac: [u8; 6],
    shared: &MapFds,
    program: &'static str,
    bound: Option<(&str, u32)>,
) -> Result<Grown, LoadError> {
    let opts = LoadOptions {
        limits,
        max_flows,
        iface_mac,
        ..LoadOptions::default()
    };
    let fresh = |name: &str| name == names::FLOWS4 || name == names::FLOWS6;
    over_shared(&opts, shared, &fresh, program, bound)
}

/// The map of the program's global data (`IFACE_MAC`, `FLOW_CACHE_SIZE`, `SYNC_*`).
pub const GLOBAL_DATA: &str = ".rodata";

/// Loads `lb` over every map of `shared` but the global data, made anew with `opts`' values:
/// the instance for another interface (`opts.iface_mac` is its MAC; the flow cache and sync
/// settings must be the running instance's, which the shared maps were sized for). The
/// caller attaches it there ([`attach_xdp`], with a [`native_plan`] for that interface).
pub fn for_interface(opts: &LoadOptions, shared: &MapFds) -> Result<Grown, LoadError> {
    // Shared, the old global data would carry the old interface's MAC unnoticed.
    if !shared.0.contains_key(GLOBAL_DATA) {
        return Err(LoadError::Daemon(format!(
            "the running program has no map {GLOBAL_DATA} to make anew"
        )));
    }
    over_shared(
        opts,
        shared,
        &|name| name == GLOBAL_DATA,
        names::PROGRAM,
        None,
    )
}

/// `program` over the maps of `opts` that `fresh` names and `shared`'s others; every map
/// that is not fresh is made at its smallest and dropped (aya makes every map of the
/// object).
fn over_shared(
    opts: &LoadOptions,
    shared: &MapFds,
    fresh: &dyn Fn(&str) -> bool,
    program: &'static str,
    bound: Option<(&str, u32)>,
) -> Result<Grown, LoadError> {
    let ebpf = create_with(opts, &|name| !fresh(name))?;
    let mut fds = HashMap::new();
    for (name, fd) in &shared.0 {
        if name == names::BACKEND_KEYS && fresh(name) {
            // Sized like BACKENDS, and the daemon's own: made here.
            let keys =
                backend_keys(opts.limits.backends).map_err(|e| LoadError::Daemon(e.to_string()))?;
            fds.insert(name.clone(), keys);
            continue;
        }
        let fd = if fresh(name) {
            let map = ebpf
                .map(name)
                .ok_or_else(|| devbound::DevBoundError::MapMissing(name.clone()))?;
            devbound::map_data(map).fd().as_fd().try_clone_to_owned()
        } else {
            fd.try_clone()
        };
        fds.insert(
            name.clone(),
            fd.map_err(|e| LoadError::Dup(name.clone(), e))?,
        );
    }
    let fds = MapFds(fds);
    let prog = devbound::load_relocated(OBJECT, program, &|n| fds.raw(n), bound)?;
    Ok(Grown { ebpf, prog, fds })
}

/// Creates the object's maps with their sizes; loads no program.
fn create(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    create_with(opts, &|_| false)
}

/// [`create`], with the maps `small` names made as small as they can be (they are not
/// going to be used).
fn create_with(opts: &LoadOptions, small: &dyn Fn(&str) -> bool) -> Result<Ebpf, LoadError> {
    let size = |name: &str, n: u32| if small(name) { 1 } else { n };
    let l = opts.limits;
    if !opts.flow_cache.is_power_of_two() {
        return Err(LoadError::FlowCacheSize(opts.flow_cache));
    }
    if l.beyond_ceiling().is_some() || l.services == 0 || l.backends == 0 || l.ring_slots == 0 {
        return Err(LoadError::TooLarge(l));
    }
    // The flow caches hold one region per possible CPU (see the program's maps.rs).
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))? as u32;
    let cache_slots = opts
        .flow_cache
        .checked_mul(cpus)
        .ok_or(LoadError::FlowCacheSize(opts.flow_cache))?;
    let (sync_on, sync) = match opts.sync {
        Some(s) => (1u32, s),
        None => (
            0,
            SyncLoad {
                ring_bytes: DEFAULT_SYNC_RING_BYTES,
                ..SyncLoad::default()
            },
        ),
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    if !sync.ring_bytes.is_power_of_two() || sync.ring_bytes < page || sync.refresh_shift > 31 {
        return Err(LoadError::SyncRingSize(sync.ring_bytes));
    }
    let ebpf = EbpfLoader::new()
        .override_global(names::GLOBAL_IFACE_MAC, &opts.iface_mac, true)
        .override_global(names::GLOBAL_FLOW_CACHE_SIZE, &opts.flow_cache, true)
        .override_global(names::GLOBAL_SYNC_ENABLED, &sync_on, true)
        .override_global(names::GLOBAL_SYNC_REFRESH_SHIFT, &sync.refresh_shift, true)
        .map_max_entries(names::SYNC_EVENTS, sync.ring_bytes)
        .map_max_entries(names::FLOW_CACHE4, size(names::FLOW_CACHE4, cache_slots))
        .map_max_entries(names::FLOW_CACHE6, size(names::FLOW_CACHE6, cache_slots))
        // Each family gets the full size: a deployment may be all IPv4 or all IPv6.
        .map_max_entries(names::FLOWS4, size(names::FLOWS4, opts.max_flows))
        .map_max_entries(names::FLOWS6, size(names::FLOWS6, opts.max_flows))
        .map_max_entries(names::PERSIST4, size(names::PERSIST4, opts.max_persist))
        .map_max_entries(names::PERSIST6, size(names::PERSIST6, opts.max_persist))
        .map_max_entries(
            names::NAT_REV4,
            size(names::NAT_REV4, opts.nat_flows.max(1)),
        )
        .map_max_entries(
            names::NAT_REV6,
            size(names::NAT_REV6, opts.nat_flows.max(1)),
        )
        // Each service's own key, plus at most one fragments-only port-0 entry per
        // (VIP, protocol), which is at most one per service.
        .map_max_entries(names::SERVICES4, size(names::SERVICES4, l.services * 2))
        .map_max_entries(names::SERVICES6, size(names::SERVICES6, l.services * 2))
        .map_max_entries(names::SERVICE_INFO, size(names::SERVICE_INFO, l.services))
        .map_max_entries(names::RINGS, size(names::RINGS, l.ring_slots))
        .map_max_entries(names::RR_STATE, size(names::RR_STATE, l.services))
        .map_max_entries(names::SERVICE_STATS, size(names::SERVICE_STATS, l.services))
        .map_max_entries(names::BACKENDS, size(names::BACKENDS, l.backends))
        .map_max_entries(names::BACKEND_STATS, size(names::BACKEND_STATS, l.backends))
        .map_max_entries(names::BACKEND_LOAD, size(names::BACKEND_LOAD, l.backends))
        .map_max_entries(names::NAT_SOURCES4, size(names::NAT_SOURCES4, l.backends))
        .map_max_entries(names::NAT_SOURCES6, size(names::NAT_SOURCES6, l.backends))
        .map_max_entries(names::CANDIDATES, size(names::CANDIDATES, l.services))
        .map_max_entries(
            names::NEXT_HOPS,
            size(
                names::NEXT_HOPS,
                lb_common::NEXT_HOP_SLOTS.saturating_mul(cpus),
            ),
        )
        .map_max_entries(
            names::HOST_HOPS,
            size(
                names::HOST_HOPS,
                lb_common::NEXT_HOP_SLOTS.saturating_mul(cpus),
            ),
        )
        .load(OBJECT)?;
    Ok(ebpf)
}

/// The real server's decapsulator (`realserver start --tunnel`), loaded, its `DECAP_VIPS`
/// holding `vips` and its GUE port `gue_port` (0: none). The object's balancer maps are
/// made as small as they can be: the decapsulator uses none of them.
pub fn load_decap(gue_port: u16, vips: &[std::net::IpAddr]) -> Result<Ebpf, LoadError> {
    let port = gue_port.to_be();
    let mut loader = EbpfLoader::new();
    loader.override_global(names::GLOBAL_DECAP_GUE_PORT, &port, true);
    for name in SIZED_MAPS.iter().chain(&[
        names::FLOWS4,
        names::FLOWS6,
        names::PERSIST4,
        names::PERSIST6,
        names::NAT_REV4,
        names::NAT_REV6,
        names::FLOW_CACHE4,
        names::FLOW_CACHE6,
        names::NEXT_HOPS,
        names::HOST_HOPS,
    ]) {
        loader.map_max_entries(name, 1);
    }
    let mut ebpf = loader.load(OBJECT)?;
    let program: &mut Xdp = ebpf
        .program_mut(names::DECAP_PROGRAM)
        .ok_or(LoadError::NoProgram(names::DECAP_PROGRAM))?
        .try_into()
        .map_err(|source| LoadError::Program {
            name: names::DECAP_PROGRAM,
            source,
        })?;
    program.load().map_err(|source| LoadError::Program {
        name: names::DECAP_PROGRAM,
        source,
    })?;
    let map = ebpf
        .map_mut(names::DECAP_VIPS)
        .ok_or(LoadError::NoProgram(names::DECAP_VIPS))?;
    let mut map: aya::maps::HashMap<_, lb_common::DecapKey, u32> =
        aya::maps::HashMap::try_from(map).map_err(|e| LoadError::DecapVips(e.to_string()))?;
    for vip in vips {
        let (addr, family) = super::addr_words(*vip);
        let key = lb_common::DecapKey {
            addr,
            family: u32::from(family),
        };
        map.insert(key, 1, 0)
            .map_err(|e| LoadError::DecapVips(e.to_string()))?;
    }
    Ok(ebpf)
}

/// The decapsulator's program of an object [`load_decap`] loaded.
pub fn decap_fd(ebpf: &Ebpf) -> Result<BorrowedFd<'_>, LoadError> {
    let program: &Xdp = ebpf
        .program(names::DECAP_PROGRAM)
        .ok_or(LoadError::NoProgram(names::DECAP_PROGRAM))?
        .try_into()
        .map_err(|source| LoadError::Program {
            name: names::DECAP_PROGRAM,
            source,
        })?;
    program
        .fd()
        .map(|fd| fd.as_fd())
        .map_err(|source| LoadError::Program {
            name: names::DECAP_PROGRAM,
            source,
        })
}

/// The program, loaded or not.
pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let prog = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(LoadError::NoProgram(names::PROGRAM))?;
    prog.try_into().map_err(|source| LoadError::Program {
        name: names::PROGRAM,
        source,
    })
}

/// The modes `xdp_mode` tries, in order: `auto` is native with a fallback to skb.
pub fn modes(mode: XdpMode) -> &'static [Mode] {
    match mode {
        XdpMode::Native => &[Mode::Native],
        XdpMode::Skb => &[Mode::Skb],
        XdpMode::Auto => &[Mode::Native, Mode::Skb],
    }
}

/// What native mode will run on the interface: decided, and `lb_native` loaded, right after
/// [`load`], while aya still holds every map the two entry points share.
#[derive(Debug)]
pub enum NativePlan {
    /// Skb mode only: nothing was asked.
    Unused,
    /// `lb_native`, bound to the interface: it reads the tags the driver took off.
    DevBound(OwnedFd),
    /// The plain `lb`: the device delivers every tag in the frame.
    Plain,
    /// Native mode would forward tagged frames untagged, or that could not be ruled out: why.
    Refused(String),
}

/// Decides what native mode runs on `iface` (see [`devbound::choose`]) and loads `lb_native`
/// if that is it. Never an error: what stands in native mode's way is [`NativePlan::Refused`],
/// which [`attach_xdp`] reports (and `auto` then takes skb mode).
pub async fn native_plan(fds: &MapFds, iface: &str, ifindex: u32, mode: XdpMode) -> NativePlan {
    if !modes(mode).contains(&Mode::Native) {
        return NativePlan::Unused;
    }
    let cannot_tell = |e: &dyn std::fmt::Display| {
        format!("cannot tell whether {iface} delivers VLAN tags outside the frame: {e}")
    };
    let ports = match netlink::link::ports(ifindex).await {
        Ok(p) => p,
        Err(e) => return NativePlan::Refused(cannot_tell(&e)),
    };
    let facts = match devbound::tag_facts(iface, ifindex, &ports) {
        Ok(f) => f,
        Err(e) => return NativePlan::Refused(cannot_tell(&e)),
    };
    match devbound::choose(iface, &facts) {
        devbound::Choice::Plain => NativePlan::Plain,
        devbound::Choice::Refuse(why) => NativePlan::Refused(why),
        devbound::Choice::DevBound => match devbound::load_relocated(
            OBJECT,
            devbound::PROGRAM_NATIVE,
            &|n| fds.raw(n),
            Some((iface, ifindex)),
        ) {
            Ok(fd) => NativePlan::DevBound(fd),
            Err(e) => NativePlan::Refused(format!(
                "{iface} may deliver VLAN tags outside the frame, and the program that reads \
                 them did not load: {e}"
            )),
        },
    }
}

/// The program attached to the interface. Dropping it ends a bpf_link attachment unless the
/// link is pinned; a netlink one outlives it.
#[derive(Debug)]
pub struct Attachment {
    pub mode: Mode,
    /// `lb` or `lb_native`.
    pub program: &'static str,
    ifindex: u32,
    prog: OwnedFd,
    /// The bpf_link; none for a netlink attachment.
    link: Option<OwnedFd>,
    /// A previous run's attachment, now running this program.
    pub taken_over: bool,
}

impl Attachment {
    /// The bpf_link (none for a netlink attachment): what the caller pins.
    pub fn link(&self) -> Option<BorrowedFd<'_>> {
        self.link.as_ref().map(|l| l.as_fd())
    }

    /// Takes the program off the interface (a `release` stop): the link's attachment ends
    /// with the link (the caller removes its pin), a netlink one is cleared.
    pub async fn detach(self) -> Result<(), NetlinkError> {
        match self.link {
            Some(link) => {
                // BPF_LINK_DETACH ends the attachment even while a pin still holds the
                // link; dropping our descriptor is not enough then.
                let _ = devbound::link_detach(link.as_fd());
                Ok(())
            }
            None => netlink::link::clear(self.ifindex, self.mode).await,
        }
    }

    /// Puts `prog` (the same entry point, over other maps) in the attached program's place,
    /// in one step: the kernel swaps the program a bpf_link or the interface runs, so every
    /// frame meets one program or the other, never none.
    pub async fn replace(&mut self, prog: OwnedFd) -> Result<(), AttachError> {
        let failed = |e: String| AttachError::Failed {
            iface: format!("interface {}", self.ifindex),
            errors: vec![e],
        };
        match &self.link {
            Some(link) => link_update(link.as_fd(), prog.as_fd(), Some(self.prog.as_fd()))
                .map_err(|e| failed(format!("bpf_link_update: {e}")))?,
            None => netlink::link::set(self.ifindex, prog.as_fd(), self.mode)
                .await
                .map_err(|e| failed(e.to_string()))?,
        }
        self.prog = prog;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("reading the XDP program of {iface}: {source}")]
    Query {
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{iface} already runs XDP program {name:?} (id {id}): detach it first")]
    Foreign {
        iface: String,
        name: String,
        id: u32,
    },
    #[error("taking the previous XDP program off {iface}: {source} (on EBUSY: a bpf_link this daemon holds no pin of runs it; was pin_root changed?)")]
    Clear {
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("attaching XDP to {iface}: {}", .errors.join("; "))]
    Failed { iface: String, errors: Vec<String> },
    #[error(transparent)]
    Program(#[from] LoadError),
}

/// The names our programs have in the kernel: what a previous run may have left attached.
const OUR_PROGRAMS: [&str; 2] = [names::PROGRAM, devbound::PROGRAM_NATIVE];

/// Attaches the program to `iface` in the first of `mode`'s modes that works: native runs
/// what `native` says, skb runs `lb` (the plain entry point, loaded).
///
/// The attachment is a bpf_link, which lasts as long as a descriptor of it or a pin does
/// (the caller pins it: the dataplane then outlives the daemon), or with `netlink`
/// (`keep_xdp_on_exit`) the interface's own, which outlives the daemon even where nothing
/// can be pinned (but its maps cannot be taken over then). Taking over from a previous
/// run never leaves the interface without a program: its pinned link (`pinned`) is made to
/// run the new program (`BPF_LINK_UPDATE`); a program a previous run left attached through
/// netlink (`keep_xdp_on_exit` before links were pinned) is replaced through netlink in one
/// step, and stays a netlink attachment. Only a mode change detaches first. Any other
/// program on the interface is refused, never replaced.
pub async fn attach_xdp(
    lb: &OwnedFd,
    native: NativePlan,
    iface: &str,
    ifindex: u32,
    mode: XdpMode,
    mut pinned: Option<OwnedFd>,
    netlink: bool,
) -> Result<Attachment, AttachError> {
    let current = netlink::link::attached(ifindex)
        .await
        .map_err(|source| AttachError::Query {
            iface: iface.to_string(),
            source,
        })?;
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|e| AttachError::Failed {
            iface: iface.to_string(),
            errors: vec![format!("duplicating the program's descriptor: {e}")],
        })
    };
    // The program for mode `m` (a descriptor of our own: a grown instance replaces it), or
    // why there is none.
    let program_for = |m: Mode| -> Result<Result<(&'static str, OwnedFd), String>, AttachError> {
        Ok(match (m, &native) {
            (Mode::Native, NativePlan::DevBound(fd)) => Ok((devbound::PROGRAM_NATIVE, dup(fd)?)),
            (Mode::Native, NativePlan::Refused(why)) => Err(why.clone()),
            _ => Ok((names::PROGRAM, dup(lb)?)),
        })
    };
    if let Some(cur) = current {
        let name = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == cur.prog_id)
            .and_then(|p| p.name_as_str().map(str::to_string))
            .unwrap_or_default();
        if !OUR_PROGRAMS.contains(&name.as_str()) || cur.mode == Mode::Other {
            return Err(AttachError::Foreign {
                iface: iface.to_string(),
                name,
                id: cur.prog_id,
            });
        }
        if modes(mode).contains(&cur.mode) {
            match program_for(cur.mode)? {
                Ok((program, own)) => {
                    // A previous run's link: it runs the new program from now on.
                    if let Some(link) = pinned.take() {
                        match link_update(link.as_fd(), own.as_fd(), None) {
                            Ok(()) => {
                                tracing::info!(
                                    interface = iface,
                                    id = cur.prog_id,
                                    mode = cur.mode.name(),
                                    program,
                                    "the previous run's XDP link runs the new program"
                                );
                                return Ok(Attachment {
                                    mode: cur.mode,
                                    program,
                                    ifindex,
                                    prog: own,
                                    link: Some(link),
                                    taken_over: true,
                                });
                            }
                            Err(e) => {
                                tracing::warn!(interface = iface, "the previous run's XDP link cannot be updated ({e}): attaching anew");
                                pinned = Some(link);
                            }
                        }
                    } else {
                        // Attached through netlink: replaced through netlink, in one step.
                        netlink::link::set(ifindex, own.as_fd(), cur.mode)
                            .await
                            .map_err(|e| AttachError::Failed {
                                iface: iface.to_string(),
                                errors: vec![format!("replacing the previous run's program: {e}")],
                            })?;
                        tracing::info!(
                            interface = iface,
                            id = cur.prog_id,
                            mode = cur.mode.name(),
                            program,
                            "replacing the XDP program a previous run left attached"
                        );
                        return Ok(Attachment {
                            mode: cur.mode,
                            program,
                            ifindex,
                            prog: own,
                            link: None,
                            taken_over: true,
                        });
                    }
                }
                Err(why) => tracing::warn!(interface = iface, "native XDP refused: {why}"),
            }
        }
        tracing::warn!(
            interface = iface,
            id = cur.prog_id,
            mode = cur.mode.name(),
            "detaching the XDP program a previous run left attached: xdp_mode {mode:?} does not run it"
        );
        // Through its link when one is pinned: netlink cannot take a link's program off
        // (EBUSY). A link pinned elsewhere (another pin_root) is refused the same way.
        let via_link = pinned
            .take()
            .is_some_and(|link| devbound::link_detach(link.as_fd()).is_ok());
        if !via_link {
            netlink::link::clear(ifindex, cur.mode)
                .await
                .map_err(|source| AttachError::Clear {
                    iface: iface.to_string(),
                    source,
                })?;
        }
    }
    let mut errors = Vec::new();
    for &m in modes(mode) {
        let (program, own) = match program_for(m)? {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(interface = iface, "native XDP refused: {why}");
                errors.push(format!("native mode refused: {why}"));
                continue;
            }
        };
        let attached = if netlink {
            netlink::link::set(ifindex, own.as_fd(), m)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string())
        } else {
            link_create(own.as_fd(), ifindex, m)
                .map(Some)
                .map_err(|e| format!("bpf_link_create: {e}"))
        };
        match attached {
            Ok(link) => {
                return Ok(Attachment {
                    mode: m,
                    program,
                    ifindex,
                    prog: own,
                    link,
                    taken_over: false,
                })
            }
            Err(e) => {
                tracing::warn!(
                    interface = iface,
                    mode = m.name(),
                    program,
                    "attaching XDP: {e}"
                );
                errors.push(format!("{} mode: {e}", m.name()));
            }
        }
    }
    Err(AttachError::Failed {
        iface: iface.to_string(),
        errors,
    })
}
