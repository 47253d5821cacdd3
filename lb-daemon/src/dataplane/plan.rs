//! From service specs to map contents, and from one set of map contents to the next with the
//! fewest writes, in an order the running program can never observe half-done.
//!
//! Ids are stable: a service keeps its id (and so its ring, rr position and counters) for as
//! long as its key exists, and a backend keeps its id for as long as it belongs to the
//! service, so established flows keep their backend across any update. A freed backend slot
//! gets a new generation when reused, so flows pinned to its previous occupant reschedule.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::*;

use crate::model::Limits;

use super::{
    maglev,
    maps::{MapWriteError, MapWriter},
    prefix_mask, ring, BackendSpec, MapKey, Scheduler, ServiceSpec,
};

/// The longest `wrr` ring: longer weight sequences are scaled down (see [`ring::wrr`]).
pub const WRR_MAX_RING: usize = 1 << 16;

/// How long a ring region a service left stays unused: a packet that read the service's
/// old offset just before the switch may still read the old region, and must find the old
/// ring there, not another service's. XDP runs for microseconds; this is ample.
pub const REGION_QUARANTINE: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The maps are too small for the plan: the daemon loads larger ones and plans again.
    #[error("the maps hold {have}; this needs {needs}")]
    NoRoom { needs: Limits, have: Limits },
    #[error(
        "needs {needs} {what}: no node holds more than {ceiling}{}",
        if *what == "ring slots" { " (lower mh_table_size, or split the services across nodes)" } else { " (split the services across nodes)" }
    )]
    BeyondCeiling {
        what: &'static str,
        needs: u32,
        ceiling: u32,
    },
    #[error("service {vip}:{port}: {source}")]
    Maglev {
        vip: std::net::IpAddr,
        port: u16,
        #[source]
        source: maglev::MaglevError,
    },
    #[error("service {vip}:{port}: {source}")]
    Ring {
        vip: std::net::IpAddr,
        port: u16,
        #[source]
        source: ring::RingError,
    },
    #[error("service {0} is listed twice")]
    DuplicateService(String),
    #[error(transparent)]
    Map(#[from] MapWriteError),
}

/// A service's ring: its region of `RINGS` and the backend ids in it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ring {
    /// The region: `off..off + cap`; the ring fills its start.
    pub off: u32,
    pub cap: u32,
    /// Shared with the previous plan when the service's ring did not change, so an update
    /// that changes one service neither rebuilds nor compares the others' rings.
    pub slots: Arc<[u32]>,
}

/// The exact contents the maps should have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Service keys (each family's map) -> service id, with the fragments-only entries.
    pub services: BTreeMap<MapKey, ServiceRef>,
    /// Service id -> `SERVICE_INFO` value.
    pub infos: BTreeMap<u32, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Backend id -> the service and address it stands for (`BACKEND_KEYS`, which the
    /// program never reads: what a restarted daemon adopts the ids by).
    pub keys: BTreeMap<u32, BackendKey>,
    /// Service id -> its ring.
    pub rings: BTreeMap<u32, Ring>,
}

/// Id allocation that survives updates: the lowest free id first, so ids stay dense and
/// the maps' sizes follow what is configured, not what ever was.
#[derive(Clone, Debug, Default)]
pub(super) struct Ids {
    /// Generation of each backend slot ever used.
    pub(super) generations: Vec<u32>,
    pub(super) free_services: BTreeSet<u32>,
    pub(super) next_service: u32,
    pub(super) free_backends: BTreeSet<u32>,
    pub(super) next_backend: u32,
}

impl Ids {
    fn service(&mut self) -> u32 {
        self.free_services.pop_first().unwrap_or_else(|| {
            self.next_service += 1;
            self.next_service - 1
        })
    }

    fn backend(&mut self) -> u32 {
        let id = self.free_backends.pop_first().unwrap_or_else(|| {
            self.next_backend += 1;
            self.next_backend - 1
        });
        if self.generations.len() <= id as usize {
            self.generations.resize(id as usize + 1, 0);
        }
        // A new occupant: flows of any earlier one must not follow it.
        self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
        id
    }

    fn free(&mut self, services: &[u32], backends: &[u32]) {
        self.free_services.extend(services);
        self.free_backends.extend(backends);
        // Free ids at the top give their room back.
        while self.next_service > 0 && self.free_services.remove(&(self.next_service - 1)) {
            self.next_service -= 1;
        }
        while self.next_backend > 0 && self.free_backends.remove(&(self.next_backend - 1)) {
            self.next_backend -= 1;
        }
    }
}

/// The regions of `RINGS`: first fit among the free ones, else past the highest.
#[derive(Clone, Debug, Default)]
pub(super) struct Regions {
    /// Free regions below `top`, offset -> length, adjacent ones merged.
    pub(super) free: BTreeMap<u32, u32>,
    /// Everything from here up is free.
    pub(super) top: u32,
    /// Regions left by services, free once [`REGION_QUARANTINE`] has passed.
    quarantined: Vec<(Instant, u32, u32)>,
}

impl Regions {
    fn alloc(&mut self, len: u32) -> u32 {
        if len == 0 {
            return 0;
        }
        let fit = self
            .free
            .iter()
            .find(|(_, &l)| l >= len)
            .map(|(&o, &l)| (o, l));
        if let Some((off, have)) = fit {
            self.free.remove(&off);
            if have > len {
                self.free.insert(off + len, have - len);
            }
            return off;
        }
        let off = self.top;
        self.top = self.top.saturating_add(len);
        off
    }

    fn release(&mut self, off: u32, len: u32, now: Instant) {
        if len > 0 {
            self.quarantined.push((now, off, len));
        }
    }

    /// Frees the regions whose quarantine is over.
    fn settle(&mut self, now: Instant) {
        let (done, wait): (Vec<_>, Vec<_>) = self
            .quarantined
            .drain(..)
            .partition(|(at, _, _)| now.saturating_duration_since(*at) >= REGION_QUARANTINE);
        self.quarantined = wait;
        for (_, off, len) in done {
            self.free_region(off, len);
        }
    }

    fn free_region(&mut self, mut off: u32, mut len: u32) {
        if let Some((&p, &pl)) = self.free.range(..off).next_back() {
            if p + pl == off {
                self.free.remove(&p);
                off = p;
                len += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            len += nl;
        }
        if off + len == self.top {
            self.top = off;
        } else {
            self.free.insert(off, len);
        }
    }
}

/// The region a ring of `len` slots gets: rr and wrr rings round up to a power of two, so
/// that a server more or less rarely moves the ring; sh and mh rings have a fixed length.
pub(super) fn region_len(sched: Scheduler, len: u32) -> u32 {
    match sched {
        Scheduler::Sh | Scheduler::Mh => len,
        // rr, wrr and the count-based ones (whose ring is every live backend once).
        _ => len.checked_next_power_of_two().unwrap_or(len),
    }
}

/// Whether a ring of `len` slots stays in a region of `cap`: it fits, and the region is not
/// far larger than it needs (an emptied ring keeps its region: its servers come back).
fn region_keeps(sched: Scheduler, cap: u32, len: u32) -> bool {
    cap >= len && (len == 0 || cap <= region_len(sched, len).saturating_mul(4))
}

/// Backends that may take new flows: resolved MAC (a TUN one: a source address of its
/// family), positive weight. What the backend's `BACKEND_F_PRESENT` says too: a ring slot
/// never names a backend the program would refuse.
fn schedulable(b: &BackendSpec) -> bool {
    usable(b) && b.weight > 0
}

fn usable(b: &BackendSpec) -> bool {
    b.mac.is_some()
        && b.forward
            .tunnel()
            .is_none_or(|t| t.source.is_some_and(|s| s.is_ipv4() == b.addr.is_ipv4()))
}

/// What a service's ring is computed from: equal inputs, equal ring.
fn same_ring_inputs(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.sched == b.sched
        && a.mh_table_size == b.mh_table_size
        && a.backends.len() == b.backends.len()
        && a.backends.iter().zip(&b.backends).all(|(x, y)| {
            x.addr == y.addr && x.weight == y.weight && schedulable(x) == schedulable(y)
        })
}

/// The ring of one service, as indices into `spec.backends`.
fn ring_of(spec: &ServiceSpec) -> Result<Vec<usize>, PlanError> {
    let live: Vec<usize> = (0..spec.backends.len())
        .filter(|&i| schedulable(&spec.backends[i]))
        .collect();
    let weights: Vec<u32> = live.iter().map(|&i| spec.backends[i].weight).collect();
    let ring: Vec<usize> = match spec.sched {
        // The count-based schedulers choose between ranked candidates (`CANDIDATES`); their
        // ring, every live backend once, is what an unranked service and the SYN-flood
        // hash take.
        Scheduler::Rr
        | Scheduler::Lc
        | Scheduler::Wlc
        | Scheduler::Sed
        | Scheduler::Nq
        | Scheduler::Fo
        | Scheduler::Ovf => ring::rr(&weights),
        Scheduler::Wrr => ring::wrr(&weights, WRR_MAX_RING).map_err(|source| PlanError::Ring {
            vip: spec.vip,
            port: spec.port,
            source,
        })?,
        Scheduler::Sh => ring::sh(&weights),
        Scheduler::Mh => {
            let input: Vec<maglev::MaglevBackend> = live
                .iter()
                .map(|&i| maglev::MaglevBackend {
                    addr: spec.backends[i].addr,
                    weight: spec.backends[i].weight,
                })
                .collect();
            let table =
                maglev::build(&input, spec.mh_table_size).map_err(|source| PlanError::Maglev {
                    vip: spec.vip,
                    port: spec.port,
                    source,
                })?;
            // Maglev orders backends canonically; map back to positions in `live`.
            let pos: HashMap<SocketAddr, usize> =
                input.iter().enumerate().map(|(i, b)| (b.addr, i)).collect();
            table.translate(|a| pos[a])
        }
    };
    Ok(ring.into_iter().map(|i| live[i]).collect())
}

/// The rings of `specs[i]` for every `i` of `todo`, built on every core when there is
/// enough to build (a start with a hundred Maglev tables); in `todo`'s order.
fn rings_of(specs: &[ServiceSpec], todo: &[usize]) -> Vec<Result<Vec<usize>, PlanError>> {
    // Slots to fill, roughly: what makes threads worth starting.
    let work: usize = todo
        .iter()
        .map(|&i| match specs[i].sched {
            Scheduler::Mh => specs[i].mh_table_size as usize,
            _ => specs[i].backends.len() * 4,
        })
        .sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || work < 200_000 {
        return todo.iter().map(|&i| ring_of(&specs[i])).collect();
    }
    let chunk = todo.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = todo
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || part.iter().map(|&i| ring_of(&specs[i])).collect::<Vec<_>>())
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("a ring builder panicked"))
            .collect()
    })
}

/// What planning keeps between updates, planned on a copy so a plan that fails leaks
/// nothing.
#[derive(Clone, Debug, Default)]
pub(super) struct Alloc {
    pub(super) ids: Ids,
    pub(super) regions: Regions,
}

impl Alloc {
    /// The sizes the maps need for what is allocated now (regions in quarantine included).
    fn extent(&self) -> Limits {
        Limits {
            services: self.ids.next_service,
            backends: self.ids.next_backend,
            ring_slots: self.regions.top,
        }
    }
}

/// One service as planned: what it was planned from and the ids it holds. Its entries are
/// in [`Dataplane::current`].
#[derive(Clone, Debug)]
pub(super) struct Planned {
    pub(super) spec: ServiceSpec,
    pub(super) id: u32,
    /// The backend id of each of `spec.backends`, in order.
    pub(super) bids: Vec<u32>,
    /// A failed write left its entries unknown (or the service was adopted from maps a
    /// previous run wrote): planned again at the next update.
    pub(super) dirty: bool,
}

impl Planned {
    fn bid_of(&self, addr: SocketAddr) -> Option<u32> {
        let i = self.spec.backends.iter().position(|b| b.addr == addr)?;
        Some(self.bids[i])
    }
}

/// Fragments carry no port (after the first): each (VIP, protocol) without an all-ports
/// service routes them to its lowest-port service, through a port-0 entry marked
/// fragments-only. See docs/architecture.md, "Fragments".
pub(super) type Group = ([u32; 4], u8, u8);

pub(super) fn group_of(key: &MapKey) -> Group {
    (key.addr, key.proto, key.family)
}

/// The port-0 entry of a group whose services are `ports` (host-order port -> id), if any.
pub(super) fn frag_entry(
    group: Group,
    ports: Option<&BTreeMap<u16, u32>>,
) -> Option<(MapKey, ServiceRef)> {
    let (&port, &id) = ports?.iter().next()?;
    (port != 0).then_some((
        MapKey {
            addr: group.0,
            port: 0,
            proto: group.1,
            family: group.2,
        },
        ServiceRef {
            id,
            flags: SVC_REF_F_FRAG_ONLY,
        },
    ))
}

/// An update's changes: the entries of the services it touches as they are (`prev`) and as
/// they will be (`next`); [`apply`] writes the difference.
#[derive(Default)]
struct Delta {
    prev: Desired,
    next: Desired,
    /// Services planned again (or new), and services gone.
    planned: Vec<(MapKey, Planned)>,
    gone: Vec<MapKey>,
    /// Services planned again under another key (a group whose least key changed): their
    /// old keys leave the plan, their ids and entries stay.
    renamed: Vec<MapKey>,
    /// Service groups (for fragments) whose services change.
    groups: BTreeMap<Group, BTreeMap<u16, u32>>,
}

/// The entries of service `p` in `current` (every key that leads to it).
fn entries_of(current: &Desired, p: &Planned, into: &mut Desired) {
    for key in p.spec.map_keys() {
        if let Some(r) = current.services.get(&key) {
            into.services.insert(key, *r);
        }
    }
    if let Some(i) = current.infos.get(&p.id) {
        into.infos.insert(p.id, *i);
    }
    if let Some(r) = current.rings.get(&p.id) {
        into.rings.insert(p.id, r.clone());
    }
    for bid in &p.bids {
        if let Some(b) = current.backends.get(bid) {
            into.backends.insert(*bid, *b);
        }
        if let Some(k) = current.keys.get(bid) {
            into.keys.insert(*bid, *k);
        }
    }
}

/// The specs to plan, and which of them are as last planned (see
/// [`Dataplane::update_known`]; empty: none known).
struct Wanted<'a> {
    specs: &'a [ServiceSpec],
    same: &'a [bool],
}

/// Plans the wanted specs against what is planned: only the services whose spec changed
/// (or whose entries a failed write left unknown), the new ones and the gone ones,
/// allocating in `alloc`.
fn plan(
    Wanted { specs, same }: Wanted<'_>,
    current: &Desired,
    planned: &HashMap<MapKey, Planned>,
    groups: &HashMap<Group, BTreeMap<u16, u32>>,
    stray: &Desired,
    alloc: &mut Alloc,
    now: Instant,
) -> Result<Delta, PlanError> {
    let mut d = Delta::default();
    // A group's service is known by its least key: one whose least key changed (an address
    // added below it, or its least one dropped) is found by any key it still has, so that
    // it keeps its id, backends and persistence. Built only when groups exist.
    let by_any_key: HashMap<MapKey, MapKey> =
        if planned.values().any(|p| !p.spec.aliases.is_empty())
            || specs.iter().any(|s| !s.aliases.is_empty())
        {
            planned
                .iter()
                .flat_map(|(ident, p)| p.spec.map_keys().map(move |k| (k, *ident)))
                .collect()
        } else {
            HashMap::new()
        };
    let mut claimed: HashSet<MapKey> = HashSet::new();
    let mut seen: HashSet<MapKey> = HashSet::with_capacity(specs.len());
    // Every key of every service: one key leads to one service.
    let mut keys: HashSet<MapKey> = HashSet::with_capacity(specs.len());
    // (index in specs, key, old plan) of every service to plan.
    let mut todo: Vec<(usize, MapKey, Option<&Planned>)> = Vec::new();
    for spec in specs {
        seen.insert(spec.ident());
        let own = std::iter::once((spec.vip, spec.port)).chain(spec.aliases.iter().copied());
        for (k, (vip, port)) in spec.map_keys().zip(own) {
            if !keys.insert(k) {
                return Err(PlanError::DuplicateService(format!(
                    "{vip}:{port}/{:?}",
                    spec.proto
                )));
            }
        }
    }
    for (i, spec) in specs.iter().enumerate() {
        let key = spec.ident();
        match planned.get(&key) {
            Some(p) if !p.dirty && (same.get(i) == Some(&true) || p.spec == *spec) => {}
            Some(p) => todo.push((i, key, Some(p))),
            None => {
                // An old service that no spec keeps under its own key, and that shares a
                // key with this one.
                let renamed = spec
                    .map_keys()
                    .filter_map(|k| by_any_key.get(&k))
                    .find(|old| !seen.contains(*old) && !claimed.contains(*old))
                    .copied();
                if let Some(old) = renamed {
                    claimed.insert(old);
                    d.renamed.push(old);
                }
                todo.push((i, key, renamed.and_then(|old| planned.get(&old))));
            }
        }
    }
    let mut freed_services = Vec::new();
    let mut freed_backends = Vec::new();
    if seen.len() < planned.len() || todo.iter().any(|(_, _, old)| old.is_none()) {
        for (key, p) in planned {
            if !seen.contains(key) && !claimed.contains(key) {
                d.gone.push(*key);
                entries_of(current, p, &mut d.prev);
                freed_services.push(p.id);
                freed_backends.extend(&p.bids);
                if let Some(r) = current.rings.get(&p.id) {
                    alloc.regions.release(r.off, r.cap, now);
                }
            }
        }
    }
    // Rings to build: those whose inputs changed.
    let build: Vec<usize> = todo
        .iter()
        .filter(|(i, _, old)| {
            !old.is_some_and(|p| {
                !p.dirty
                    && current.rings.contains_key(&p.id)
                    && same_ring_inputs(&p.spec, &specs[*i])
            })
        })
        .map(|(i, _, _)| *i)
        .collect();
    // Maglev tables that cannot fit any node are refused before they are built (17 of the
    // largest M would take a gigabyte): their slots alone are a lower bound of the need.
    let mh_slots: u64 = build
        .iter()
        .map(|&i| &specs[i])
        .filter(|s| s.sched == Scheduler::Mh && s.backends.iter().any(schedulable))
        .map(|s| u64::from(s.mh_table_size))
        .sum();
    let at_least = u64::from(alloc.regions.top) + mh_slots;
    if at_least > u64::from(Limits::CEILING.ring_slots) {
        return Err(PlanError::BeyondCeiling {
            what: "ring slots",
            needs: u32::try_from(at_least).unwrap_or(u32::MAX),
            ceiling: Limits::CEILING.ring_slots,
        });
    }
    let mut built = build
        .iter()
        .copied()
        .zip(rings_of(specs, &build))
        .peekable();
    for &(i, key, old) in &todo {
        let spec = &specs[i];
        if let Some(p) = old {
            entries_of(current, p, &mut d.prev);
        }
        let id = old.map_or_else(|| alloc.ids.service(), |p| p.id);
        let bids: Vec<u32> = spec
            .backends
            .iter()
            .map(|b| {
                old.and_then(|p| p.bid_of(b.addr))
                    .unwrap_or_else(|| alloc.ids.backend())
            })
            .collect();
        if let Some(p) = old {
            let kept: HashSet<u32> = bids.iter().copied().collect();
            freed_backends.extend(p.bids.iter().filter(|b| !kept.contains(b)));
        }
        for (b, &bid) in spec.backends.iter().zip(&bids) {
            let (addr, family) = super::addr_words(b.addr.ip());
            d.next.keys.insert(
                bid,
                BackendKey {
                    service: id,
                    addr,
                    port: b.addr.port(),
                    family,
                    _pad: 0,
                },
            );
            // A backend without a MAC cannot be sent to: absent, so its flows reschedule.
            // Nor can a TUN backend without a source address of its family.
            let mut flags = 0;
            let mut value = BackendValue {
                mac: b.mac.unwrap_or_default(),
                // The configuration caps weights at IPVS's 65535.
                weight: b.weight.min(u32::from(u16::MAX)) as u16,
                generation: alloc.ids.generations[bid as usize],
                u_threshold: b.thresholds.upper,
                l_threshold: b.thresholds.lower,
                ..BackendValue::default()
            };
            match &b.forward {
                super::Forward::Dr => {}
                super::Forward::Tun(t) => {
                    flags |= BACKEND_F_TUN;
                    value.mac = [0; 6];
                    value.daddr = addr;
                    value.tun_kind = t.kind.code();
                    value.tun_ttl = t.ttl;
                    value.tun_port = t.port.to_be();
                    if let Some(s) = t.source {
                        value.tun_saddr = super::addr_words(s).0;
                    }
                }
                super::Forward::Nat => {
                    flags |= BACKEND_F_NAT;
                    value.mac = [0; 6];
                    value.daddr = addr;
                    value.nat_port = b.addr.port().to_be();
                }
            }
            if usable(b) {
                flags |= BACKEND_F_PRESENT;
            }
            if b.weight == 0 {
                flags |= BACKEND_F_DRAINING;
            }
            value.flags = flags;
            d.next.backends.insert(bid, value);
        }
        let old_ring = old.and_then(|p| current.rings.get(&p.id));
        let ring = match built.next_if(|(j, _)| *j == i) {
            Some((_, slots)) => {
                let slots: Arc<[u32]> = slots?.into_iter().map(|j| bids[j]).collect();
                let len = slots.len() as u32;
                match old_ring {
                    Some(r) if region_keeps(spec.sched, r.cap, len) => Ring {
                        off: r.off,
                        cap: r.cap,
                        slots,
                    },
                    _ => {
                        if let Some(r) = old_ring {
                            alloc.regions.release(r.off, r.cap, now);
                        }
                        let cap = region_len(spec.sched, len);
                        Ring {
                            off: alloc.regions.alloc(cap),
                            cap,
                            slots,
                        }
                    }
                }
            }
            None => old_ring
                .cloned()
                .expect("an unchanged ring was planned before"),
        };
        let mut flags = 0;
        if spec.active {
            flags |= SVC_F_ACTIVE;
        }
        if spec.hash_port {
            flags |= SVC_F_HASH_PORT;
        }
        if spec.sloppy_tcp {
            flags |= SVC_F_SLOPPY_TCP;
        }
        d.next.infos.insert(
            id,
            ServiceValue {
                id,
                flags,
                sched: spec.sched.code(),
                ring_len: ring.slots.len() as u32,
                ring_off: ring.off,
                _pad: 0,
                idle_timeout_s: spec.idle_timeout,
                persist_timeout_s: spec.persistence_timeout,
                persist_mask: prefix_mask(key.family, spec.persistence_prefix),
            },
        );
        for k in spec.map_keys() {
            d.next.services.insert(k, ServiceRef { id, flags: 0 });
        }
        d.next.rings.insert(id, ring);
        d.planned.push((
            key,
            Planned {
                spec: spec.clone(),
                id,
                bids,
                dirty: false,
            },
        ));
    }
    // The fragments-only entries of the groups whose keys come, go or change service (a
    // group's aliases), keys as they were and as they will be.
    let mut old_keys: HashMap<MapKey, u32> = HashMap::new();
    for k in d.gone.iter().chain(&d.renamed) {
        if let Some(p) = planned.get(k) {
            old_keys.extend(p.spec.map_keys().map(|m| (m, p.id)));
        }
    }
    for (k, _) in &d.planned {
        if let Some(p) = planned.get(k) {
            old_keys.extend(p.spec.map_keys().map(|m| (m, p.id)));
        }
    }
    let new_keys: HashMap<MapKey, u32> = d
        .planned
        .iter()
        .flat_map(|(_, p)| p.spec.map_keys().map(move |k| (k, p.id)))
        .collect();
    let mut touched: BTreeSet<Group> = BTreeSet::new();
    for (key, _) in &d.planned {
        if !planned.contains_key(key) {
            touched.insert(group_of(key));
        }
    }
    for (k, id) in &new_keys {
        if old_keys.get(k) != Some(id) {
            touched.insert(group_of(k));
        }
    }
    for (k, id) in &old_keys {
        if new_keys.get(k) != Some(id) {
            touched.insert(group_of(k));
        }
    }
    for key in stray.services.keys() {
        touched.insert(group_of(key));
    }
    for g in touched {
        let mut ports = groups.get(&g).cloned().unwrap_or_default();
        // The group's fragments-only key as the maps hold it (none when they do not: a
        // crash, or adopted maps, may have left it out; the update writes it then).
        if let Some((k, _)) = frag_entry(g, Some(&ports)) {
            if let Some(v) = current.services.get(&k) {
                d.prev.services.insert(k, *v);
            }
        }
        for key in old_keys.keys().filter(|k| group_of(k) == g) {
            ports.remove(&u16::from_be(key.port));
        }
        for (key, id) in new_keys.iter().filter(|(k, _)| group_of(k) == g) {
            ports.insert(u16::from_be(key.port), *id);
        }
        if let Some((k, r)) = frag_entry(g, Some(&ports)) {
            d.next.services.insert(k, r);
        }
        d.groups.insert(g, ports);
    }
    // Freed only now: an id or a slot freed by this update is not reused by it (a key of
    // the gone service would lead to the newcomer's state until it is deleted).
    alloc.ids.free(&freed_services, &freed_backends);
    Ok(d)
}

/// Writes `next` over `prev`: new and changed backends that may take new flows first; then
/// the `ring_len` of shrinking and moving rings, the changed ring slots (a moved ring whole,
/// in its new region), the offsets of moved rings, the full service state, and the keys
/// that lead to the services; then gone keys and service slots, backends that stopped
/// being usable (now named by no ring), and gone backends. At every step each ring slot
/// the program can reach names a usable backend, each key names a service whose state is
/// written, and each write of a service's state changes its ring's offset or its length,
/// never both (a reader that raced the write and saw half of it still pairs an offset with
/// a length of the same ring).
fn apply(prev: &Desired, next: &Desired, w: &mut dyn MapWriter) -> Result<(), PlanError> {
    // Backends that may take new flows first, so rings can name them. One that stops being
    // usable (drained, or absent) is written only after the rings no longer name it: until
    // then the program would find a ring slot naming a backend it must not use.
    let usable =
        |b: &BackendValue| b.flags & BACKEND_F_PRESENT != 0 && b.flags & BACKEND_F_DRAINING == 0;
    // Which real server an id stands for, before anything names the id: a daemon that
    // restarts from these maps must never find a backend it cannot name. A new occupant's
    // generation comes first, with nothing usable yet (no ring names the id): a daemon
    // restarted after the key must find the new generation with it, never the one the
    // previous occupant's flows carry.
    for (id, k) in &next.keys {
        if prev.keys.get(id) != Some(k) {
            if let Some(b) = next.backends.get(id) {
                if prev.backends.get(id).map(|p| p.generation) != Some(b.generation) {
                    w.update_backend(
                        *id,
                        &BackendValue {
                            generation: b.generation,
                            ..BackendValue::default()
                        },
                    )?;
                }
            }
            w.update_backend_key(*id, k)?;
        }
    }
    for (id, b) in &next.backends {
        if usable(b) && prev.backends.get(id) != Some(b) {
            w.update_backend(*id, b)?;
        }
    }
    // A ring shrinking, or moving, first: its length at most the smaller of the two, on
    // the old region. Only flags both versions set: after a failed apply `old` may be a
    // marker whose flags are all ones, which must never switch a service on.
    let mut shortened: BTreeMap<u32, ServiceValue> = BTreeMap::new();
    for (id, info) in &next.infos {
        if let Some(old) = prev.infos.get(id) {
            let moves = old.ring_off != info.ring_off;
            if info.ring_len < old.ring_len || (moves && old.ring_len > 0) {
                let shorter = ServiceValue {
                    ring_len: info.ring_len.min(old.ring_len),
                    flags: old.flags & info.flags,
                    ..*old
                };
                w.update_service_info(*id, &shorter)?;
                shortened.insert(*id, shorter);
            } else if moves {
                shortened.insert(*id, *old);
            }
        }
    }
    for (id, ring) in &next.rings {
        let prev_ring = prev.rings.get(id).filter(|o| o.off == ring.off);
        if prev_ring.is_some_and(|o| Arc::ptr_eq(&o.slots, &ring.slots)) {
            continue;
        }
        let old = prev_ring.map(|o| &o.slots[..]).unwrap_or(&[]);
        for (i, &bid) in ring.slots.iter().enumerate() {
            if old.get(i) != Some(&bid) {
                w.update_ring_slot(ring.off + i as u32, bid)?;
            }
        }
    }
    // Moved rings: the offset alone, with the length still at most the old ring's.
    for (id, v) in &shortened {
        let info = &next.infos[id];
        if v.ring_off != info.ring_off {
            w.update_service_info(
                *id,
                &ServiceValue {
                    ring_off: info.ring_off,
                    ..*v
                },
            )?;
        }
    }
    for (id, info) in &next.infos {
        if prev.infos.get(id) != Some(info) {
            w.update_service_info(*id, info)?;
        }
    }
    // The keys of whole packets before the fragments-only ones (which sort first): a
    // fragments-only key names its service by id, and a daemon restarted between two of
    // these writes must find that id named by the service's own key (dataplane/adopt.rs).
    for frag_only in [false, true] {
        for (key, r) in &next.services {
            if (r.flags & SVC_REF_F_FRAG_ONLY != 0) == frag_only
                && prev.services.get(key) != Some(r)
            {
                w.update_service(key, r)?;
            }
        }
    }
    for key in prev.services.keys() {
        if !next.services.contains_key(key) {
            w.delete_service(key)?;
        }
    }
    for id in prev.infos.keys() {
        if !next.infos.contains_key(id) {
            w.update_service_info(*id, &ServiceValue::default())?;
        }
    }
    for (id, b) in &next.backends {
        if !usable(b) && prev.backends.get(id) != Some(b) {
            w.update_backend(*id, b)?;
        }
    }
    // A cleared slot keeps its generation: the next occupant takes the one after it, also
    // when a restarted daemon hands the slot out (flows of this one must not follow it).
    for (id, b) in &prev.backends {
        if !next.backends.contains_key(id) {
            w.update_backend(
                *id,
                &BackendValue {
                    generation: b.generation,
                    ..BackendValue::default()
                },
            )?;
        }
    }
    for id in prev.keys.keys() {
        if !next.keys.contains_key(id) {
            w.update_backend_key(*id, &BackendKey::default())?;
        }
    }
    Ok(())
}

/// What `NAT_SOURCES4`/`NAT_SOURCES6` must hold for the maps `current` would hold once
/// `delta` is applied: one entry per NAT real server (address, port, protocol), with the VIP
/// and port of its service key; shared when two keys (two services', or a group's) send to
/// it. A group's real server without a port keeps each packet's: an entry per port of the
/// group. Every NAT backend counts, draining ones too (their flows' replies still come). A
/// scan of the backends, not of the change: the entries depend on which services share a
/// real server.
///
/// A shared entry still names one service, the one a reply without a reverse entry is
/// taken for: the one `held` (what the maps hold) named, when it is still among them. So
/// the flows a real server had before a second service started sharing it, which have no
/// reverse entries, keep their replies translated as their own service's.
fn nat_sources(
    current: &Desired,
    delta: &Delta,
    held: &BTreeMap<MapKey, NatSource>,
) -> BTreeMap<MapKey, NatSource> {
    let (prev, next) = (&delta.prev, &delta.next);
    let services = current
        .services
        .iter()
        .filter(|(k, _)| !prev.services.contains_key(k))
        .chain(&next.services);
    // A group's service has several keys: a reply's source is the one its flow went to.
    let mut keys_of: HashMap<u32, Vec<MapKey>> = HashMap::new();
    for (k, r) in services.filter(|(_, r)| r.flags & SVC_REF_F_FRAG_ONLY == 0) {
        keys_of.entry(r.id).or_default().push(*k);
    }
    let backends = current
        .backends
        .iter()
        .filter(|(id, _)| !prev.backends.contains_key(id))
        .chain(&next.backends)
        .filter(|(_, b)| b.flags & BACKEND_F_NAT != 0);
    let mut out = BTreeMap::new();
    for (id, b) in backends {
        let Some(k) = next.keys.get(id).or_else(|| current.keys.get(id)) else {
            continue;
        };
        for vip in keys_of.get(&k.service).into_iter().flatten() {
            let value = NatSource {
                vip: vip.addr,
                vport: vip.port,
                shared: 0,
                _pad: 0,
            };
            let source = nat_source_key(b, vip);
            let was = held.get(&source).map(|p| (p.vip, p.vport));
            out.entry(source)
                .and_modify(|v: &mut NatSource| {
                    if (v.vip, v.vport) != (value.vip, value.vport) {
                        v.shared = 1;
                        if was == Some((value.vip, value.vport)) {
                            (v.vip, v.vport) = (value.vip, value.vport);
                        }
                    }
                })
                .or_insert(value);
        }
    }
    out
}

/// Where NAT backend `b`'s replies to flows of service key `vip` come from: its address,
/// and its port, or without one (a group's real server of several ports) the key's.
fn nat_source_key(b: &BackendValue, vip: &MapKey) -> MapKey {
    MapKey {
        addr: b.daddr,
        port: if b.nat_port != 0 {
            b.nat_port
        } else {
            vip.port
        },
        proto: vip.proto,
        family: vip.family,
    }
}

/// `NAT_ON`'s bits for the sources `nat`.
fn nat_bits(nat: &BTreeMap<MapKey, NatSource>) -> u32 {
    match (nat.is_empty(), nat.values().any(|s| s.shared != 0)) {
        (true, _) => 0,
        (false, false) => NAT_ON_ANY,
        (false, true) => NAT_ON_ANY | NAT_ON_SHARED,
    }
}

/// After a failed `apply`, any entry of `attempted` may or may not be in the maps: the
/// values that stand for them match nothing real, so the next `apply` rewrites every such
/// entry (and deletes every such key it no longer wants).
fn mark_uncertain(current: &mut Desired, attempted: &Desired) {
    for (key, r) in &attempted.services {
        current.services.insert(
            *key,
            ServiceRef {
                flags: u32::MAX,
                ..*r
            },
        );
    }
    for (id, info) in &attempted.infos {
        current.infos.insert(
            *id,
            ServiceValue {
                flags: u32::MAX,
                ..*info
            },
        );
    }
    for (id, b) in &attempted.backends {
        current.backends.insert(
            *id,
            BackendValue {
                flags: u32::MAX,
                ..*b
            },
        );
    }
    for (id, k) in &attempted.keys {
        // A padding byte no real key has.
        current.keys.insert(
            *id,
            BackendKey {
                _pad: u8::MAX,
                ..*k
            },
        );
    }
    for (id, r) in &attempted.rings {
        // No slot known: every slot is written again.
        current.rings.insert(
            *id,
            Ring {
                slots: Arc::from([]),
                ..r.clone()
            },
        );
    }
}

/// The control plane's handle on the program's maps.
pub struct Dataplane<W: MapWriter> {
    pub(super) limits: Limits,
    pub(super) alloc: Alloc,
    /// What the maps hold.
    pub(super) current: Desired,
    pub(super) specs: Vec<ServiceSpec>,
    pub(super) planned: HashMap<MapKey, Planned>,
    /// The services of each (VIP, protocol, family), host-order port -> id: where its
    /// fragments go.
    pub(super) groups: HashMap<Group, BTreeMap<u16, u32>>,
    /// Entries a failed write may have left in the maps (markers that match nothing): the
    /// next update writes or removes each of them, whichever service they belonged to.
    pub(super) stray: Desired,
    /// What `NAT_SOURCES4`/`NAT_SOURCES6` hold (as this plan wrote them).
    pub(super) nat: BTreeMap<MapKey, NatSource>,
    pub(super) writer: W,
}

impl<W: MapWriter> Dataplane<W> {
    pub fn new(writer: W, limits: Limits) -> Self {
        Self {
            limits,
            alloc: Alloc::default(),
            current: Desired::default(),
            specs: Vec::new(),
            planned: HashMap::new(),
            groups: HashMap::new(),
            stray: Desired::default(),
            nat: BTreeMap::new(),
            writer,
        }
    }

    /// Makes the maps hold exactly `specs`. On error nothing the program relies on is left
    /// half-written: the caller may retry with the same or other specs. [`PlanError::NoRoom`]
    /// writes nothing: the caller loads larger maps ([`Dataplane::replace_maps`]) and
    /// updates again. The cost follows the change: services whose spec is the same are
    /// compared, nothing more.
    pub fn update(&mut self, specs: &[ServiceSpec]) -> Result<(), PlanError> {
        self.update_at(specs, &[], Instant::now())
    }

    /// [`Dataplane::update`], told that `specs[i]` is the spec of the last successful
    /// update where `same[i]` is true (the caller computed it from the same inputs): those
    /// are not compared again. At 10,000 services of 10 real servers the comparisons were
    /// most of a one-change reload's planning.
    pub fn update_known(&mut self, specs: &[ServiceSpec], same: &[bool]) -> Result<(), PlanError> {
        self.update_at(specs, same, Instant::now())
    }

    /// [`Dataplane::update_known`] at `now` (when rings that moved may have their regions
    /// reused).
    pub fn update_at(
        &mut self,
        specs: &[ServiceSpec],
        same: &[bool],
        now: Instant,
    ) -> Result<(), PlanError> {
        // Plan on a copy: a spec that cannot be planned must not leak ids or regions.
        let mut alloc = self.alloc.clone();
        alloc.regions.settle(now);
        let mut delta = plan(
            Wanted { specs, same },
            &self.current,
            &self.planned,
            &self.groups,
            &self.stray,
            &mut alloc,
            now,
        )?;
        let mut needs = alloc.extent();
        // The service-key maps hold twice `services` keys: a group's aliases need room too
        // (the keys after this update: those kept, and the delta's new ones).
        let kept = self
            .current
            .services
            .keys()
            .filter(|k| !delta.prev.services.contains_key(k))
            .count();
        let keys = u32::try_from(kept + delta.next.services.len()).unwrap_or(u32::MAX);
        needs.services = needs.services.max(keys.div_ceil(2));
        // The NAT sources' maps are sized with the backends, and a group's real server
        // without a port has one entry per port: the entries before and after this update
        // are there together while it runs.
        let nat_entries = {
            let nat = nat_sources(&self.current, &delta, &self.nat);
            nat.len() + self.nat.keys().filter(|k| !nat.contains_key(k)).count()
        };
        needs.backends = needs
            .backends
            .max(u32::try_from(nat_entries).unwrap_or(u32::MAX));
        if let Some((what, needs, ceiling)) = needs.beyond_ceiling() {
            return Err(PlanError::BeyondCeiling {
                what,
                needs,
                ceiling,
            });
        }
        if !self.limits.covers(&needs) {
            return Err(PlanError::NoRoom {
                needs,
                have: self.limits,
            });
        }
        let stray = std::mem::take(&mut self.stray);
        for (k, v) in stray.services {
            delta.prev.services.entry(k).or_insert(v);
        }
        for (k, v) in stray.infos {
            delta.prev.infos.entry(k).or_insert(v);
        }
        for (k, v) in stray.backends {
            delta.prev.backends.entry(k).or_insert(v);
        }
        for (k, v) in stray.keys {
            delta.prev.keys.entry(k).or_insert(v);
        }
        for (k, v) in stray.rings {
            delta.prev.rings.entry(k).or_insert(v);
        }
        // From here the maps may hold the new ids, whatever `apply` returns.
        self.alloc = alloc;
        // A NAT real server's replies are translated from its first flow on: its entry, and
        // NAT_ON, before the backend is written; entries no backend needs go after.
        let nat = nat_sources(&self.current, &delta, &self.nat);
        // A flow cached before the update is checked again after it (the epoch moves once,
        // at the end, even after a failure).
        let result = self
            .write_nat(&nat, false)
            .and_then(|()| apply(&delta.prev, &delta.next, &mut self.writer))
            .and_then(|()| self.write_nat(&nat, true))
            .and(self.writer.settle().map_err(PlanError::from));
        // What the maps hold now: the delta's entries replace the old ones...
        let Delta {
            prev,
            next,
            planned,
            gone,
            renamed,
            groups,
        } = delta;
        for k in prev.services.keys() {
            self.current.services.remove(k);
        }
        for id in prev.infos.keys() {
            self.current.infos.remove(id);
            self.current.rings.remove(id);
        }
        for id in prev.backends.keys() {
            self.current.backends.remove(id);
        }
        for id in prev.keys.keys() {
            self.current.keys.remove(id);
        }
        match &result {
            Ok(()) => {
                self.current.services.extend(next.services);
                self.current.infos.extend(next.infos);
                self.current.backends.extend(next.backends);
                self.current.keys.extend(next.keys);
                self.current.rings.extend(next.rings);
            }
            // ...or, after a failure, markers of both that match nothing.
            Err(_) => {
                mark_uncertain(&mut self.current, &prev);
                mark_uncertain(&mut self.current, &next);
                mark_uncertain(&mut self.stray, &prev);
                mark_uncertain(&mut self.stray, &next);
            }
        }
        for key in gone.into_iter().chain(renamed) {
            self.planned.remove(&key);
        }
        for (key, mut p) in planned {
            p.dirty = result.is_err();
            self.planned.insert(key, p);
        }
        for (g, ports) in groups {
            if ports.is_empty() {
                self.groups.remove(&g);
            } else {
                self.groups.insert(g, ports);
            }
        }
        if result.is_ok() {
            if self.specs.len() == specs.len() {
                // Same services in the same order (the usual case): a spec known the same
                // is left as it is, the others copied in place.
                for ((mine, new), same) in self
                    .specs
                    .iter_mut()
                    .zip(specs)
                    .zip(same.iter().copied().chain(std::iter::repeat(false)))
                {
                    if !(same && mine.ident() == new.ident()) {
                        mine.clone_from(new);
                    }
                }
            } else {
                specs.clone_into(&mut self.specs);
            }
        }
        result
    }

    /// How many map elements an update to `specs` would write, without writing anything
    /// (`lb-daemon diff`): the same plan and the same writes as [`Dataplane::update`], into
    /// a writer that only counts. [`PlanError::NoRoom`]: the maps would grow first, and the
    /// whole plan be written into the new ones.
    pub fn dry_run(&self, specs: &[ServiceSpec]) -> Result<usize, PlanError> {
        let now = Instant::now();
        let mut alloc = self.alloc.clone();
        alloc.regions.settle(now);
        let delta = plan(
            Wanted { specs, same: &[] },
            &self.current,
            &self.planned,
            &self.groups,
            &self.stray,
            &mut alloc,
            now,
        )?;
        let needs = alloc.extent();
        if !self.limits.covers(&needs) {
            return Err(PlanError::NoRoom {
                needs,
                have: self.limits,
            });
        }
        let mut counter = super::maps::MemMaps::default();
        apply(&delta.prev, &delta.next, &mut counter)?;
        Ok(counter.writes)
    }

    /// Whether NAT real server `rs` (its address and port, for protocol `proto`) is one two
    /// service keys share: its flows' replies are then told apart by reverse entries.
    /// Port 0 (a group's real server that keeps each packet's port): whether it is on any
    /// port, a reverse entry where none is needed being harmless.
    pub fn nat_shared(&self, proto: u8, rs: SocketAddr) -> bool {
        let (addr, family) = super::addr_words(rs.ip());
        let key = MapKey {
            addr,
            port: rs.port().to_be(),
            proto,
            family,
        };
        if rs.port() != 0 {
            return self.nat.get(&key).is_some_and(|s| s.shared != 0);
        }
        // The keys are ordered by address first: that address's entries, every port.
        let first = MapKey {
            port: 0,
            proto: 0,
            family: 0,
            ..key
        };
        let last = MapKey {
            port: u16::MAX,
            proto: u8::MAX,
            family: u8::MAX,
            ..key
        };
        self.nat
            .range(first..=last)
            .any(|(k, s)| (k.proto, k.family) == (proto, family) && s.shared != 0)
    }

    /// Writes what `NAT_SOURCES4`/`NAT_SOURCES6` and `NAT_ON` must hold for the maps as they
    /// are (adopted ones: those two are the program instance's own, empty in a new one):
    /// called before a new instance is attached, so that the NAT real servers' replies are
    /// translated from its first packet, not from the daemon's first update.
    pub fn write_nat_sources(&mut self) -> Result<(), PlanError> {
        let nat = nat_sources(&self.current, &Delta::default(), &self.nat);
        self.write_nat(&nat, false)
    }

    /// Writes `nat` into `NAT_SOURCES4`/`NAT_SOURCES6` and `NAT_ON`: the new and changed
    /// entries (and NAT_ON turned on), or, `after`, the entries that are gone (and NAT_ON
    /// turned off when none is left). What is written is remembered as written even if a
    /// later write fails: the next update writes the difference again.
    fn write_nat(
        &mut self,
        nat: &BTreeMap<MapKey, NatSource>,
        after: bool,
    ) -> Result<(), PlanError> {
        if !after {
            // While the update runs, the backends of the old plan and of the new one may
            // both take flows: an entry that changes stands for both, shared (each new flow
            // writes its reverse entry) and still naming the service it named (whose flows
            // from before have none). The entries as planned follow the update.
            let during: Vec<(MapKey, NatSource)> = nat
                .iter()
                .map(|(k, v)| match self.nat.get(k) {
                    Some(old) if old != v => (*k, NatSource { shared: 1, ..*old }),
                    _ => (*k, *v),
                })
                .collect();
            let shared = if during.iter().any(|(_, v)| v.shared != 0) {
                NAT_ON_SHARED
            } else {
                0
            };
            // The bits of both, and of the entries between: a flow's reverse entry is
            // written from before the first shared entry to after the last one.
            let on = nat_bits(nat) | nat_bits(&self.nat) | shared;
            if !nat.is_empty() || !self.nat.is_empty() {
                self.writer.set_nat(on)?;
            }
            for (k, v) in during {
                self.write_nat_source(k, v)?;
            }
            return Ok(());
        }
        for (k, v) in nat {
            self.write_nat_source(*k, *v)?;
        }
        let gone: Vec<MapKey> = self
            .nat
            .keys()
            .filter(|k| !nat.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            if let Err(e) = self.writer.delete_nat_source(&k) {
                self.nat_uncertain(k, None);
                return Err(e.into());
            }
            self.nat.remove(&k);
        }
        self.writer.set_nat(nat_bits(nat))?;
        Ok(())
    }

    /// Writes NAT source `k` = `v` unless the maps hold it already. A failed write may or
    /// may not have landed: the record then matches nothing (see [`Self::nat_uncertain`]).
    fn write_nat_source(&mut self, k: MapKey, v: NatSource) -> Result<(), PlanError> {
        if self.nat.get(&k) == Some(&v) {
            return Ok(());
        }
        if let Err(e) = self.writer.update_nat_source(&k, &v) {
            self.nat_uncertain(k, Some(v));
            return Err(e.into());
        }
        self.nat.insert(k, v);
        Ok(())
    }

    /// After a failed write of NAT source `k` (to `tried`, or a delete): its record keeps
    /// the service it named before (else the one tried) but matches no plan (`shared` of
    /// a value never written), so the next update writes it again, first as changing
    /// (shared, that service), as `mark_uncertain` does for the other maps.
    fn nat_uncertain(&mut self, k: MapKey, tried: Option<NatSource>) {
        if let Some(base) = self.nat.get(&k).copied().or(tried) {
            self.nat.insert(
                k,
                NatSource {
                    shared: u8::MAX,
                    ..base
                },
            );
        }
    }

    /// Moves everything to new maps of `limits` (which must hold what is planned now):
    /// writes the current plan whole into `writer`, then hands it the job; returns the old
    /// writer. On error the old maps stay in use.
    pub fn replace_maps(&mut self, mut writer: W, limits: Limits) -> Result<W, PlanError> {
        let needs = self.alloc.extent();
        if !limits.covers(&needs) {
            return Err(PlanError::NoRoom {
                needs,
                have: limits,
            });
        }
        writer.set_nat(nat_bits(&self.nat))?;
        for (k, v) in &self.nat {
            writer.update_nat_source(k, v)?;
        }
        apply(&Desired::default(), &self.current, &mut writer)?;
        // The generations of free slots, which the plan does not hold.
        for (id, &generation) in self.alloc.ids.generations.iter().enumerate() {
            let id = id as u32;
            if generation != 0 && !self.current.backends.contains_key(&id) {
                writer.update_backend(
                    id,
                    &BackendValue {
                        generation,
                        ..BackendValue::default()
                    },
                )?;
            }
        }
        writer.settle()?;
        self.limits = limits;
        Ok(std::mem::replace(&mut self.writer, writer))
    }

    /// Puts back the maps [`Dataplane::replace_maps`] replaced (they still hold the plan:
    /// nothing is written), when the new ones could not be put to use.
    pub fn restore_maps(&mut self, writer: W, limits: Limits) {
        self.writer = writer;
        self.limits = limits;
    }

    pub fn specs(&self) -> &[ServiceSpec] {
        &self.specs
    }

    pub fn current(&self) -> &Desired {
        &self.current
    }

    /// The ids of a service and of its backends, in spec order (for counters and status).
    pub fn ids_of(&self, spec: &ServiceSpec) -> Option<(u32, Vec<u32>)> {
        let p = self.planned.get(&spec.ident())?;
        let bids = if p.spec.backends.len() == spec.backends.len()
            && p.spec
                .backends
                .iter()
                .zip(&spec.backends)
                .all(|(a, b)| a.addr == b.addr)
        {
            p.bids.clone()
        } else {
            spec.backends
                .iter()
                .map(|b| p.bid_of(b.addr))
                .collect::<Option<Vec<u32>>>()?
        };
        Some((p.id, bids))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What the maps must hold for the current plan.
    pub fn needs(&self) -> Limits {
        let mut l = self.alloc.extent();
        // The service-key maps are sized at twice `services` (a key and a fragments-only
        // key per service): a group's aliases need room of their own.
        let keys = u32::try_from(self.current.services.len()).unwrap_or(u32::MAX);
        l.services = l.services.max(keys.div_ceil(2));
        // And the NAT sources' maps, sized with the backends, may hold more (a group's real
        // server without a port has an entry per port).
        l.backends = l
            .backends
            .max(u32::try_from(self.nat.len()).unwrap_or(u32::MAX));
        l
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// The writer itself, bypassing the planner (tests use it to break the maps on purpose).
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }
}

/// The sizes the maps need for `specs`, planned in memory with every real server up and
/// resolved (the most the rings can take): what `lb-daemon check` reports and the daemon
/// loads its maps with (plus headroom). Errors are those [`Dataplane::update`] would give.
pub fn needs(specs: &[ServiceSpec]) -> Result<Limits, PlanError> {
    let mut d = Dataplane::new(super::maps::NullMaps, Limits::CEILING);
    let full: Vec<ServiceSpec> = specs
        .iter()
        .map(|s| ServiceSpec {
            backends: s
                .backends
                .iter()
                .map(|b| BackendSpec {
                    thresholds: Default::default(),
                    mac: Some(b.mac.unwrap_or([2, 0, 0, 0, 0, 1])),
                    ..b.clone()
                })
                .collect(),
            ..s.clone()
        })
        .collect();
    d.update(&full)?;
    Ok(d.needs())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::dataplane::{maps::MemMaps, Proto};
    use crate::model::Forward;

    /// MemMaps that checks, after every single write, what the program relies on: each slot
    /// below a service's `ring_len` names a present backend.
    #[derive(Default)]
    struct Checked(MemMaps);

    impl Checked {
        fn check(&self) {
            for info in self
                .0
                .infos
                .values()
                .filter(|i| i.flags & SVC_F_ACTIVE != 0)
            {
                for slot in 0..info.ring_len {
                    let idx = info.ring_off + slot;
                    let bid = self.0.rings.get(&idx).unwrap_or_else(|| {
                        panic!(
                            "service {}: slot {slot} below ring_len {} unwritten",
                            info.id, info.ring_len
                        )
                    });
                    let b = self.0.backends.get(bid).copied().unwrap_or_default();
                    assert!(
                        b.flags & BACKEND_F_PRESENT != 0 && b.flags & BACKEND_F_DRAINING == 0,
                        "service {}: slot {slot} -> unusable backend {bid} ({:#x})",
                        info.id,
                        b.flags
                    );
                    // A daemon restarted now could name the backend (adopt.rs).
                    let k = self.0.keys.get(bid).copied().unwrap_or_default();
                    assert!(
                        k.family != 0 && k.service == info.id,
                        "service {}: slot {slot} -> backend {bid} without its key ({k:?})",
                        info.id
                    );
                }
            }
            for (key, r) in &self.0.services {
                let info = self.0.infos.get(&r.id).copied();
                assert!(
                    info.is_some_and(|i| i.id == r.id && i != ServiceValue::default()),
                    "{key:?} names service {} whose state is not written",
                    r.id
                );
            }
            // A NAT real server that a ring can send new flows to has its entry, shared
            // whenever flows of two service keys can reach it (two services', or a group's
            // two keys': each new flow must then write its reverse entry), at every moment
            // of an update.
            let mut senders: BTreeMap<MapKey, BTreeSet<(u32, MapKey)>> = BTreeMap::new();
            for (key, r) in self
                .0
                .services
                .iter()
                .filter(|(_, r)| r.flags & SVC_REF_F_FRAG_ONLY == 0)
            {
                let Some(info) = self
                    .0
                    .infos
                    .get(&r.id)
                    .filter(|i| i.flags & SVC_F_ACTIVE != 0)
                else {
                    continue;
                };
                for slot in 0..info.ring_len {
                    let Some(b) = self
                        .0
                        .rings
                        .get(&(info.ring_off + slot))
                        .and_then(|bid| self.0.backends.get(bid))
                    else {
                        continue;
                    };
                    if b.flags & BACKEND_F_NAT != 0 {
                        let source = super::nat_source_key(b, key);
                        senders.entry(source).or_default().insert((r.id, *key));
                    }
                }
            }
            for (source, services) in senders {
                let Some(entry) = self.0.nat_sources.get(&source) else {
                    panic!("NAT real server {source:?} without its entry");
                };
                // Two services, or two keys of a group's: told apart per flow.
                assert!(
                    services.len() < 2 || entry.shared != 0,
                    "NAT real server {source:?} of services {services:?} not shared"
                );
                // One key's alone: its replies are that key's.
                if let (1, Some((_, svc))) = (services.len(), services.first()) {
                    assert!(
                        entry.shared != 0 || (entry.vip, entry.vport) == (svc.addr, svc.port),
                        "NAT real server {source:?} of service {svc:?} names another: {entry:?}"
                    );
                }
            }
        }
    }

    const LIMITS: Limits = Limits {
        services: 8,
        backends: 32,
        ring_slots: 8 * 4099,
    };
    // Maglev wants M well above 100 x N for its minimal disruption.
    const M: u32 = 4099;

    impl MapWriter for Checked {
        fn update_service(&mut self, k: &MapKey, v: &ServiceRef) -> Result<(), MapWriteError> {
            self.0.update_service(k, v)?;
            self.check();
            Ok(())
        }
        fn delete_service(&mut self, k: &MapKey) -> Result<(), MapWriteError> {
            self.0.delete_service(k)?;
            self.check();
            Ok(())
        }
        fn update_service_info(&mut self, id: u32, v: &ServiceValue) -> Result<(), MapWriteError> {
            // A reader racing the write may see half of it: it must not pair one ring's
            // offset with another's length. (A service that is gone is zeroed after its
            // keys are deleted, and only a key leads to its ring.)
            if let Some(old) = self.0.infos.get(&id) {
                if *v != ServiceValue::default() && old.ring_len > 0 {
                    assert!(
                        old.ring_off == v.ring_off || old.ring_len == v.ring_len,
                        "service {id}: offset {} -> {} and length {} -> {} in one write",
                        old.ring_off,
                        v.ring_off,
                        old.ring_len,
                        v.ring_len
                    );
                }
            }
            self.0.update_service_info(id, v)?;
            self.check();
            Ok(())
        }
        fn update_backend(&mut self, id: u32, v: &BackendValue) -> Result<(), MapWriteError> {
            // A NAT backend's replies are translated only while the program looks them up.
            assert!(
                v.flags & BACKEND_F_NAT == 0 || self.0.nat & NAT_ON_ANY != 0,
                "backend {id}: NAT's before NAT_ON"
            );
            self.0.update_backend(id, v)?;
            self.check();
            Ok(())
        }
        fn update_backend_key(&mut self, id: u32, k: &BackendKey) -> Result<(), MapWriteError> {
            self.0.update_backend_key(id, k)?;
            self.check();
            Ok(())
        }
        fn set_nat(&mut self, bits: u32) -> Result<(), MapWriteError> {
            assert!(
                bits & NAT_ON_ANY != 0
                    || !self
                        .0
                        .backends
                        .values()
                        .any(|b| b.flags & BACKEND_F_NAT != 0),
                "NAT_ON off while a NAT backend is in the maps"
            );
            self.0.set_nat(bits)
        }
        fn update_nat_source(&mut self, k: &MapKey, v: &NatSource) -> Result<(), MapWriteError> {
            self.0.update_nat_source(k, v)?;
            self.check();
            Ok(())
        }
        fn delete_nat_source(&mut self, k: &MapKey) -> Result<(), MapWriteError> {
            self.0.delete_nat_source(k)?;
            self.check();
            Ok(())
        }
        fn update_ring_slot(&mut self, i: u32, b: u32) -> Result<(), MapWriteError> {
            self.0.update_ring_slot(i, b)?;
            // Only this slot can have changed; a full check per slot would be quadratic.
            for info in self.0.infos.values() {
                if info.flags & SVC_F_ACTIVE != 0
                    && (info.ring_off..info.ring_off + info.ring_len).contains(&i)
                {
                    let b = self.0.backends.get(&b).copied().unwrap_or_default();
                    assert!(
                        b.flags & BACKEND_F_PRESENT != 0 && b.flags & BACKEND_F_DRAINING == 0,
                        "live slot {i} -> unusable backend"
                    );
                }
            }
            Ok(())
        }
    }

    fn spec(port: u16, sched: Scheduler, weights: &[u32]) -> ServiceSpec {
        ServiceSpec {
            vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
            port,
            proto: Proto::Tcp,
            sched,
            hash_port: false,
            sloppy_tcp: true,
            persistence_timeout: 0,
            persistence_prefix: 32,
            idle_timeout: 900,
            mh_table_size: M,
            active: true,
            aliases: Vec::new(),
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| BackendSpec {
                    thresholds: Default::default(),
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8)), port),
                    weight,
                    mac: Some([2, 0, 0, 0, 0, i as u8]),
                    forward: Forward::Dr,
                })
                .collect(),
        }
    }

    fn dp() -> Dataplane<Checked> {
        Dataplane::new(Checked::default(), LIMITS)
    }

    /// Specs said to be as last applied are taken at their word (not compared), the others
    /// are planned as by `update`: the maps end as a plain update leaves them.
    #[test]
    fn known_specs_are_not_compared_again() {
        let specs = vec![
            spec(80, Scheduler::Rr, &[1, 1, 1]),
            spec(443, Scheduler::Wrr, &[2, 1]),
            spec(8080, Scheduler::Mh, &[1, 1]),
        ];
        let mut changed = specs.clone();
        changed[1].backends[0].weight = 3;
        let mut plain = dp();
        plain.update(&specs).unwrap();
        plain.update(&changed).unwrap();
        let mut known = dp();
        known.update(&specs).unwrap();
        known.update_known(&changed, &[true, false, true]).unwrap();
        assert_eq!(known.current(), plain.current());
        // Misused (a changed spec said the same), the change is not seen: the hint is
        // trusted, which is what makes it cheap.
        let mut misled = dp();
        misled.update(&specs).unwrap();
        let writes = misled.writer().0.writes;
        misled.update_known(&changed, &[true, true, true]).unwrap();
        assert_eq!(misled.writer().0.writes, writes);
    }

    /// A NAT backend: its address and port (another than the service's) in its value, no MAC;
    /// `NAT_ON` while one is in the maps (the checked writer asserts the order), off once
    /// the last is gone.
    #[test]
    fn a_nat_backend_has_its_address_and_port_and_turns_nat_on() {
        let mut s = spec(80, Scheduler::Rr, &[1, 1]);
        s.backends[0].forward = Forward::Nat;
        s.backends[0].addr.set_port(8080);
        s.backends[0].mac = Some(crate::dataplane::TUNNEL_MAC);
        let mut d = dp();
        d.update(std::slice::from_ref(&s)).unwrap();
        assert_eq!(d.writer().0.nat, NAT_ON_ANY, "nothing shared");
        let (_, bids) = d.ids_of(&s).unwrap();
        let b0 = d.current().backends[&bids[0]];
        assert_eq!(
            b0.flags & (BACKEND_F_PRESENT | BACKEND_F_NAT | BACKEND_F_TUN),
            BACKEND_F_PRESENT | BACKEND_F_NAT
        );
        let std::net::IpAddr::V4(a) = s.backends[0].addr.ip() else {
            unreachable!()
        };
        assert_eq!(b0.daddr[0], lb_common::addr_v4(a.octets()));
        assert_eq!(u16::from_be(b0.nat_port), 8080);
        assert_eq!(b0.mac, [0; 6]);
        assert_eq!(d.current().backends[&bids[1]].flags & BACKEND_F_NAT, 0);
        // Its replies' source: the VIP and the service's port, for (address, 8080, TCP).
        let source = MapKey {
            addr: b0.daddr,
            port: 8080u16.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_V4,
        };
        let vip = MapKey::of(&s);
        let want = NatSource {
            vip: vip.addr,
            vport: vip.port,
            shared: 0,
            _pad: 0,
        };
        assert_eq!(d.writer().0.nat_sources.len(), 1);
        assert_eq!(d.writer().0.nat_sources[&source], want);
        // A second service sending to the same real server and port: shared, its replies
        // told apart by their flows. A change to it alone leaves the first's entry.
        let mut other = spec(81, Scheduler::Rr, &[1]);
        other.backends[0] = s.backends[0].clone();
        d.update(&[s.clone(), other.clone()]).unwrap();
        assert_eq!(d.writer().0.nat_sources[&source].shared, 1);
        // Still the first service's: a reply without a reverse entry (a flow from before)
        // is taken for it.
        assert_eq!(
            (
                d.writer().0.nat_sources[&source].vip,
                d.writer().0.nat_sources[&source].vport
            ),
            (want.vip, want.vport)
        );
        assert_eq!(d.writer().0.nat, NAT_ON_ANY | NAT_ON_SHARED);
        other.backends[0].weight = 5;
        d.update(&[s.clone(), other.clone()]).unwrap();
        assert_eq!(d.writer().0.nat_sources[&source].shared, 1);
        assert_eq!(d.writer().0.nat, NAT_ON_ANY | NAT_ON_SHARED);
        // The second one reached by direct routing: no longer shared; NAT stays on although
        // the change (the update's delta) holds no NAT backend.
        other.backends[0].forward = Forward::Dr;
        d.update(&[s.clone(), other.clone()]).unwrap();
        assert_eq!(d.writer().0.nat_sources[&source], want);
        assert_eq!(d.writer().0.nat, NAT_ON_ANY);
        // Direct routing for both: off, no entry left.
        s.backends[0].forward = Forward::Dr;
        d.update(&[s, other]).unwrap();
        assert_eq!(d.writer().0.nat, 0);
        assert!(d.writer().0.nat_sources.is_empty());
    }

    /// A group's NAT real server: one source per port it answers from. With a port of its
    /// own, every key's flows reach that one (shared: told apart per flow); without one,
    /// each key's port is its own, shared only where two keys have the same port. An alias
    /// added or dropped by a reload moves the entries with it.
    #[test]
    fn a_group_s_nat_real_server_has_a_source_per_port() {
        let mut s = spec(80, Scheduler::Rr, &[1]);
        let vip2 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 101));
        s.aliases = vec![(s.vip, 443), (vip2, 80)];
        s.backends[0].forward = Forward::Nat;
        s.backends[0].mac = Some(crate::dataplane::TUNNEL_MAC);
        let rs = s.backends[0].addr;
        let (addr, family) = crate::dataplane::addr_words(rs.ip());
        let key = |port: u16| MapKey {
            addr,
            port: port.to_be(),
            proto: lb_common::PROTO_TCP,
            family,
        };
        let named = |d: &Dataplane<Checked>, port: u16| {
            let v = d.writer().0.nat_sources[&key(port)];
            let (vip, _) = crate::dataplane::addr_words(s.vip);
            assert_eq!(v.vip, vip, "{v:?}");
            (u16::from_be(v.vport), v.shared)
        };
        let mut d = dp();
        s.backends[0].addr.set_port(8080);
        d.update(std::slice::from_ref(&s)).unwrap();
        assert_eq!(d.writer().0.nat_sources.len(), 1);
        let shared = d.writer().0.nat_sources[&key(8080)].shared;
        assert_eq!(shared, 1, "three keys reach port 8080");
        assert_eq!(d.writer().0.nat, NAT_ON_ANY | NAT_ON_SHARED);
        assert!(d.nat_shared(lb_common::PROTO_TCP, s.backends[0].addr));
        // Port 0: each packet keeps its port. Port 80 answers for two keys, 443 for one.
        s.backends[0].addr.set_port(0);
        d.update(std::slice::from_ref(&s)).unwrap();
        assert_eq!(d.writer().0.nat_sources.len(), 2, "8080's entry is gone");
        assert_eq!(named(&d, 80).1, 1);
        assert_eq!(named(&d, 443), (443, 0));
        assert!(d.nat_shared(lb_common::PROTO_TCP, s.backends[0].addr));
        // The second VIP dropped: port 80 is one key's again, named by it.
        s.aliases.pop();
        d.update(std::slice::from_ref(&s)).unwrap();
        assert_eq!(named(&d, 80), (80, 0));
        assert_eq!(named(&d, 443), (443, 0));
        assert_eq!(d.writer().0.nat, NAT_ON_ANY);
        assert!(!d.nat_shared(lb_common::PROTO_TCP, s.backends[0].addr));
        // The entries count against the backends' room: twelve real servers on three
        // ports want 36 entries where the maps hold 32.
        let mut big = spec(80, Scheduler::Rr, &[1; 12]);
        big.aliases = vec![(big.vip, 443), (big.vip, 8443)];
        for b in &mut big.backends {
            b.forward = Forward::Nat;
            b.mac = Some(crate::dataplane::TUNNEL_MAC);
            b.addr.set_port(0);
        }
        assert_eq!(needs(std::slice::from_ref(&big)).unwrap().backends, 36);
        let e = d.update(std::slice::from_ref(&big)).unwrap_err();
        assert!(matches!(e, PlanError::NoRoom { .. }), "{e}");
        assert_eq!(d.writer().0.nat_sources.len(), 2, "nothing written");
    }

    /// A TUN backend: its tunnel in its value; without a source address of its family it is
    /// absent and out of the ring (the checked writer asserts every ring slot is usable).
    #[test]
    fn a_tun_backend_without_a_source_is_out_of_the_ring() {
        use crate::model::{Tunnel, TunnelKind};
        let mut s = spec(80, Scheduler::Rr, &[1, 1]);
        let tunnel = Tunnel {
            kind: TunnelKind::Gre,
            port: 0,
            ttl: 64,
            source: Some("192.0.2.2".parse().unwrap()),
        };
        s.backends[0].forward = Forward::Tun(tunnel);
        s.backends[1].forward = Forward::Tun(Tunnel {
            source: None,
            ..tunnel
        });
        let mut d = dp();
        d.update(std::slice::from_ref(&s)).unwrap();
        let (id, bids) = d.ids_of(&s).unwrap();
        let cur = d.current();
        let b0 = cur.backends[&bids[0]];
        assert_eq!(
            b0.flags & (BACKEND_F_PRESENT | BACKEND_F_TUN),
            BACKEND_F_PRESENT | BACKEND_F_TUN
        );
        assert_eq!((b0.tun_kind, b0.tun_ttl), (TUN_GRE, 64));
        assert_eq!(b0.tun_saddr[0], lb_common::addr_v4([192, 0, 2, 2]));
        assert_eq!(cur.backends[&bids[1]].flags & BACKEND_F_PRESENT, 0);
        assert_eq!(cur.infos[&id].ring_len, 1, "only the one with a source");
    }

    /// `dry_run` counts what `update` then writes, and writes nothing itself.
    #[test]
    fn a_dry_run_counts_the_writes_of_the_update() {
        let mut d = dp();
        let mut specs = vec![
            spec(80, Scheduler::Rr, &[1, 1, 1]),
            spec(443, Scheduler::Mh, &[1, 1]),
        ];
        d.update(&specs).unwrap();
        assert_eq!(d.dry_run(&specs).unwrap(), 0);
        specs[0].backends[1].weight = 0;
        specs.push(spec(8080, Scheduler::Wrr, &[2, 1]));
        let before = d.writer().0.writes;
        let counted = d.dry_run(&specs).unwrap();
        assert_eq!(d.writer().0.writes, before, "a dry run wrote");
        d.update(&specs).unwrap();
        assert_eq!(d.writer().0.writes - before, counted);
        assert!(counted > 0);
    }

    #[test]
    fn ids_are_stable_and_unchanged_updates_write_nothing() {
        let mut d = dp();
        let mut specs = vec![
            spec(80, Scheduler::Rr, &[1, 1, 1]),
            spec(443, Scheduler::Mh, &[1, 1]),
        ];
        d.update(&specs).unwrap();
        let ids = d.ids_of(&specs[0]).unwrap();
        let writes = d.writer().0.writes;
        d.update(&specs).unwrap();
        assert_eq!(d.writer().0.writes, writes, "same specs, no writes");
        // Adding a service and a backend keeps every existing id.
        specs.insert(0, spec(8080, Scheduler::Wrr, &[2, 1]));
        specs[1]
            .backends
            .push(spec(80, Scheduler::Rr, &[1, 1, 1, 1]).backends[3].clone());
        d.update(&specs).unwrap();
        let (sid, bids) = d.ids_of(&specs[1]).unwrap();
        assert_eq!(sid, ids.0);
        assert_eq!(bids[..3], ids.1[..]);
    }

    #[test]
    fn weight_change_rewrites_only_what_changed() {
        let mut d = dp();
        let mut specs = vec![spec(80, Scheduler::Mh, &[1, 1, 1, 1])];
        d.update(&specs).unwrap();
        let before = d.writer().0.writes;
        specs[0].backends[3].weight = 0;
        d.update(&specs).unwrap();
        let writes = d.writer().0.writes - before;
        // Maglev moves about a quarter of the slots; the service and one backend change.
        let m = M as usize;
        assert!(writes < m / 4 + m / 50 + 3, "{writes} writes for M = {m}");
        let (_, bids) = d.ids_of(&specs[0]).unwrap();
        let b3 = d.writer().0.backends[&bids[3]];
        assert_eq!(
            b3.flags,
            BACKEND_F_PRESENT | BACKEND_F_DRAINING,
            "drained, not removed"
        );
    }

    #[test]
    fn removed_backend_slot_is_reused_with_a_new_generation() {
        let mut d = dp();
        let mut specs = vec![spec(80, Scheduler::Rr, &[1, 1, 1])];
        d.update(&specs).unwrap();
        let (_, bids) = d.ids_of(&specs[0]).unwrap();
        let old = d.writer().0.backends[&bids[1]];
        specs[0].backends.remove(1);
        d.update(&specs).unwrap();
        assert_eq!(
            d.writer().0.backends[&bids[1]].flags,
            0,
            "removed backend cleared"
        );
        let mut newcomer = spec(80, Scheduler::Rr, &[1; 6]).backends[5].clone();
        newcomer.mac = Some([2, 0, 0, 0, 0, 0x55]);
        specs[0].backends.push(newcomer);
        d.update(&specs).unwrap();
        let (_, now) = d.ids_of(&specs[0]).unwrap();
        assert_eq!(now[2], bids[1], "the free slot is reused");
        assert_ne!(d.writer().0.backends[&now[2]].generation, old.generation);
    }

    #[test]
    fn fragments_only_entry_points_at_the_lowest_port_service() {
        let mut d = dp();
        let specs = vec![
            spec(443, Scheduler::Rr, &[1]),
            spec(80, Scheduler::Rr, &[1, 1]),
        ];
        d.update(&specs).unwrap();
        let maps = &d.writer().0;
        let frag = maps
            .services
            .iter()
            .find(|(k, _)| k.port == 0)
            .expect("port-0 entry");
        let (sid80, _) = d.ids_of(&specs[1]).unwrap();
        assert_eq!(frag.1.id, sid80);
        assert!(frag.1.flags & SVC_REF_F_FRAG_ONLY != 0);
        // A real all-ports service needs no extra entry.
        let mut all = spec(0, Scheduler::Rr, &[1]);
        all.proto = Proto::Tcp;
        let mut d = dp();
        d.update(&[all, spec(80, Scheduler::Rr, &[1])]).unwrap();
        let ports0: Vec<_> = d
            .writer()
            .0
            .services
            .iter()
            .filter(|(k, _)| k.port == 0)
            .collect();
        assert_eq!(ports0.len(), 1);
        assert_eq!(ports0[0].1.flags & SVC_REF_F_FRAG_ONLY, 0);
    }

    /// The fragments-only entry follows the services of its VIP as they come and go.
    #[test]
    fn fragments_only_entry_follows_services_coming_and_going() {
        let mut d = dp();
        let frag = |d: &Dataplane<Checked>| {
            let f: Vec<ServiceRef> = d
                .writer()
                .0
                .services
                .iter()
                .filter(|(k, _)| k.port == 0)
                .map(|(_, r)| *r)
                .collect();
            assert!(f.len() <= 1);
            f.first().map(|r| r.id)
        };
        let s80 = spec(80, Scheduler::Rr, &[1]);
        let s443 = spec(443, Scheduler::Rr, &[1]);
        let s25 = spec(25, Scheduler::Rr, &[1]);
        d.update(&[s443.clone(), s80.clone()]).unwrap();
        assert_eq!(frag(&d), Some(d.ids_of(&s80).unwrap().0));
        d.update(&[s443.clone(), s80.clone(), s25.clone()]).unwrap();
        assert_eq!(frag(&d), Some(d.ids_of(&s25).unwrap().0));
        d.update(std::slice::from_ref(&s443)).unwrap();
        assert_eq!(frag(&d), Some(d.ids_of(&s443).unwrap().0));
        d.update(&[]).unwrap();
        assert_eq!(frag(&d), None);
        assert!(d.writer().0.services.is_empty());
    }

    #[test]
    fn unresolved_mac_and_zero_weight_leave_the_ring() {
        let mut d = dp();
        let mut specs = vec![spec(80, Scheduler::Rr, &[1, 0, 1])];
        specs[0].backends[2].mac = None;
        d.update(&specs).unwrap();
        let svc = d.writer().0.infos.values().next().copied().unwrap();
        assert_eq!(svc.ring_len, 1);
        // Shrinking to nothing and growing back keep the invariant at every write.
        specs[0].backends[0].weight = 0;
        d.update(&specs).unwrap();
        specs[0].backends[0].weight = 1;
        specs[0].backends[1].weight = 1;
        specs[0].backends[2].mac = Some([2, 0, 0, 0, 0, 9]);
        d.update(&specs).unwrap();
        let svc = d.writer().0.infos.values().next().copied().unwrap();
        assert_eq!(svc.ring_len, 3);
    }

    /// A ring member that becomes unusable (MAC lost, health down, drained) leaves the ring
    /// before its backend slot says so: the checked writer fails otherwise.
    #[test]
    fn a_ring_member_turning_unusable_leaves_the_ring_first() {
        for sched in [Scheduler::Rr, Scheduler::Mh] {
            let mut d = dp();
            let mut specs = vec![spec(80, sched, &[1, 1, 1])];
            d.update(&specs).unwrap();
            specs[0].backends[1].mac = None;
            d.update(&specs).unwrap();
            specs[0].backends[1].mac = Some([2, 0, 0, 0, 0, 1]);
            d.update(&specs).unwrap();
            specs[0].backends[2].weight = 0;
            d.update(&specs).unwrap();
        }
    }

    #[test]
    fn limits_and_duplicates_are_errors_not_truncation() {
        let mut d = dp();
        let many: Vec<ServiceSpec> = (1..=9).map(|p| spec(p, Scheduler::Rr, &[1])).collect();
        assert!(matches!(
            d.update(&many),
            Err(PlanError::NoRoom {
                needs: Limits { services: 9, .. },
                ..
            })
        ));
        let dup = vec![spec(80, Scheduler::Rr, &[1]), spec(80, Scheduler::Rr, &[1])];
        assert!(matches!(
            d.update(&dup),
            Err(PlanError::DuplicateService(_))
        ));
        let big = vec![spec(80, Scheduler::Rr, &[1; 33])];
        assert!(matches!(
            d.update(&big),
            Err(PlanError::NoRoom {
                needs: Limits { backends: 33, .. },
                ..
            })
        ));
    }

    /// Rings take what their scheduler needs: an rr ring of 10 servers 16 slots, sh 256,
    /// mh its M; one that outgrows its region moves (every step checked), and the region it
    /// left is reused only after the quarantine.
    #[test]
    fn rings_get_regions_of_their_own_size_and_move_when_they_outgrow_them() {
        let mut d = Dataplane::new(
            Checked::default(),
            Limits {
                backends: 256,
                ..LIMITS
            },
        );
        let t0 = Instant::now();
        let mut specs = vec![
            spec(80, Scheduler::Rr, &[1; 10]),
            spec(81, Scheduler::Sh, &[1, 1]),
            spec(82, Scheduler::Mh, &[1, 1]),
        ];
        d.update_at(&specs, &[], t0).unwrap();
        let ring = |d: &Dataplane<Checked>, s: &ServiceSpec| {
            let (sid, _) = d.ids_of(s).unwrap();
            d.current().rings[&sid].clone()
        };
        assert_eq!(
            ring(&d, &specs[0]).cap,
            16,
            "rr: 10 slots in a region of 16"
        );
        assert_eq!(ring(&d, &specs[1]).cap, 256);
        assert_eq!(ring(&d, &specs[2]).cap, M);
        assert_eq!(d.needs().ring_slots, 16 + 256 + M);
        // 20 servers: 32 slots, a new region past the others.
        let old = ring(&d, &specs[0]);
        specs[0] = spec(80, Scheduler::Rr, &[1; 20]);
        d.update_at(&specs, &[], t0).unwrap();
        let moved = ring(&d, &specs[0]);
        assert_eq!((moved.cap, moved.slots.len()), (32, 20));
        assert_ne!(moved.off, old.off);
        // A new service within the quarantine does not get the old region...
        specs.push(spec(83, Scheduler::Rr, &[1; 9]));
        d.update_at(&specs, &[], t0 + REGION_QUARANTINE / 2)
            .unwrap();
        assert_ne!(ring(&d, &specs[3]).off, old.off);
        // ...one after it does.
        specs.push(spec(84, Scheduler::Rr, &[1; 9]));
        d.update_at(&specs, &[], t0 + REGION_QUARANTINE).unwrap();
        assert_eq!(ring(&d, &specs[4]).off, old.off);
        // Shrinking to nothing keeps the region; a ring far smaller than its region moves.
        for b in &mut specs[0].backends {
            b.weight = 0;
        }
        d.update_at(&specs, &[], t0 + REGION_QUARANTINE).unwrap();
        assert_eq!(ring(&d, &specs[0]).off, moved.off);
        specs[0] = spec(80, Scheduler::Rr, &[1; 2]);
        d.update_at(&specs, &[], t0 + REGION_QUARANTINE).unwrap();
        assert_eq!(ring(&d, &specs[0]).cap, 2);
    }

    /// An update that changes one service writes only that service's entries, and builds
    /// only its ring.
    #[test]
    fn one_change_writes_one_service() {
        let limits = Limits {
            services: 256,
            backends: 4096,
            ring_slots: 1 << 20,
        };
        let mut d = Dataplane::new(Checked::default(), limits);
        let mut specs: Vec<ServiceSpec> = (1..=100)
            .map(|p| {
                spec(
                    p,
                    [Scheduler::Rr, Scheduler::Wrr, Scheduler::Mh][p as usize % 3],
                    &[1; 10],
                )
            })
            .collect();
        d.update(&specs).unwrap();
        let rings: Vec<Arc<[u32]>> = specs
            .iter()
            .map(|s| d.current().rings[&d.ids_of(s).unwrap().0].slots.clone())
            .collect();
        let before = d.writer().0.writes;
        // Port 1, wrr: weights (3, 1, ...) make a ring of 12.
        assert_eq!(specs[0].sched, Scheduler::Wrr);
        specs[0].backends[0].weight = 3;
        d.update(&specs).unwrap();
        let writes = d.writer().0.writes - before;
        assert!(writes <= 12 + 3, "{writes} writes for one wrr ring");
        for (i, s) in specs.iter().enumerate() {
            let now = &d.current().rings[&d.ids_of(s).unwrap().0].slots;
            assert_eq!(Arc::ptr_eq(now, &rings[i]), i != 0, "service {i}'s ring");
        }
    }

    /// Maps too small: nothing is written, the caller loads larger maps, moves the plan into
    /// them, and plans again; ids and rings stay where they were.
    #[test]
    fn no_room_then_larger_maps() {
        let mut d = dp();
        let mut specs: Vec<ServiceSpec> =
            (1..=8).map(|p| spec(p, Scheduler::Rr, &[1, 1])).collect();
        d.update(&specs).unwrap();
        let ids: Vec<_> = specs.iter().map(|s| d.ids_of(s).unwrap()).collect();
        specs.push(spec(9, Scheduler::Rr, &[1, 1]));
        let before = d.writer().0.writes;
        let Err(PlanError::NoRoom { needs, have }) = d.update(&specs) else {
            panic!("a ninth service fits 8 slots");
        };
        assert_eq!((needs.services, have), (9, LIMITS));
        assert_eq!(
            d.writer().0.writes,
            before,
            "a plan that does not fit writes nothing"
        );
        let bigger = Limits::with_headroom(needs);
        let old = d.replace_maps(Checked::default(), bigger).unwrap();
        assert_eq!(old.0.writes, before);
        assert_eq!(
            d.writer().0.infos.len(),
            8,
            "the plan moved into the new maps"
        );
        d.update(&specs).unwrap();
        for (s, id) in specs.iter().zip(&ids) {
            assert_eq!(d.ids_of(s).as_ref(), Some(id));
        }
        assert_eq!(d.writer().0.infos.len(), 9);
    }

    #[test]
    fn needs_counts_every_server_up_and_headroom_has_floors() {
        let mut specs = vec![
            spec(80, Scheduler::Rr, &[1, 0, 1]),
            spec(81, Scheduler::Mh, &[1]),
        ];
        specs[0].backends[0].mac = None;
        let n = needs(&specs).unwrap();
        // rr: two servers with a weight (one without a MAC counts: it may resolve).
        assert_eq!(
            n,
            Limits {
                services: 2,
                backends: 4,
                ring_slots: 2 + M
            }
        );
        assert_eq!(Limits::with_headroom(n), Limits::default());
        let big = Limits {
            services: 10_000,
            backends: 100_000,
            ring_slots: 1 << 24,
        };
        assert_eq!(
            Limits::with_headroom(big),
            Limits {
                services: 15_000,
                backends: 150_000,
                ring_slots: 3 << 23
            }
        );
        assert_eq!(Limits::with_headroom(Limits::CEILING), Limits::CEILING);
    }

    /// A write that fails halfway leaves entries the planner cannot know; the next update
    /// (of the same or other specs) makes the maps exactly what a fresh plan writes, stray
    /// entries of services that went away included.
    #[test]
    fn a_failed_write_is_repaired_by_the_next_update() {
        struct Flaky {
            maps: Checked,
            fail_at: usize,
            /// Calls so far (a call that changes nothing counts: it may fail too).
            calls: usize,
        }
        impl Flaky {
            fn tick(&mut self) -> Result<(), MapWriteError> {
                self.calls += 1;
                if self.calls == self.fail_at {
                    self.fail_at = 0;
                    return Err(MapWriteError::Missing { map: "test" });
                }
                Ok(())
            }
        }
        impl MapWriter for Flaky {
            fn update_service(&mut self, k: &MapKey, v: &ServiceRef) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.update_service(k, v)
            }
            fn delete_service(&mut self, k: &MapKey) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.delete_service(k)
            }
            fn update_service_info(
                &mut self,
                id: u32,
                v: &ServiceValue,
            ) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.update_service_info(id, v)
            }
            fn update_backend(&mut self, id: u32, v: &BackendValue) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.update_backend(id, v)
            }
            fn update_backend_key(&mut self, id: u32, k: &BackendKey) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.update_backend_key(id, k)
            }
            fn update_ring_slot(&mut self, i: u32, b: u32) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.update_ring_slot(i, b)
            }
            fn set_nat(&mut self, bits: u32) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.set_nat(bits)
            }
            fn update_nat_source(
                &mut self,
                k: &MapKey,
                v: &NatSource,
            ) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.update_nat_source(k, v)
            }
            fn delete_nat_source(&mut self, k: &MapKey) -> Result<(), MapWriteError> {
                self.tick()?;
                self.maps.delete_nat_source(k)
            }
        }
        // NAT: a real server two services share, then one of them moved to another real
        // server and the other's weight changed; a write failing anywhere. The checked
        // writer asserts at every write that a real server two live rings send to is
        // shared; the next update leaves the sources as a fresh plan writes them.
        let nat = |mut s: ServiceSpec, ports: &[u16]| {
            for (b, p) in s.backends.iter_mut().zip(ports) {
                b.forward = Forward::Nat;
                b.addr.set_port(*p);
                b.mac = Some(crate::dataplane::TUNNEL_MAC);
            }
            s
        };
        let shared = vec![
            nat(spec(80, Scheduler::Rr, &[1, 1]), &[8080, 8081]),
            nat(spec(81, Scheduler::Rr, &[1]), &[8080]),
        ];
        let mut moved = shared.clone();
        moved[1].backends[0].addr.set_port(9090);
        moved[0].backends[1].weight = 3;
        // And a real server that moves from one service to another in one update.
        let alone = vec![nat(spec(80, Scheduler::Rr, &[1]), &[8080])];
        let taken = vec![nat(spec(81, Scheduler::Rr, &[1]), &[8080])];
        for (fail_at, shared, moved) in (1..30)
            .map(|f| (f, &shared, &moved))
            .chain((1..12).map(|f| (f, &alone, &taken)))
        {
            let mut d = Dataplane::new(
                Flaky {
                    maps: Checked::default(),
                    fail_at: usize::MAX,
                    calls: 0,
                },
                LIMITS,
            );
            d.update(shared).unwrap();
            d.writer_mut().fail_at = d.writer().calls + fail_at;
            let _ = d.update(moved);
            d.writer_mut().fail_at = usize::MAX;
            d.update(moved).unwrap();
            let mut fresh = dp();
            fresh.update(moved).unwrap();
            assert_eq!(
                d.writer().maps.0.nat_sources,
                fresh.writer().0.nat_sources,
                "failing at write {fail_at}"
            );
            assert_eq!(d.writer().maps.0.nat, fresh.writer().0.nat);
        }
        let first = vec![
            spec(80, Scheduler::Rr, &[1, 1, 1]),
            spec(443, Scheduler::Wrr, &[2, 1]),
            spec(8080, Scheduler::Sh, &[1, 1]),
        ];
        let mut second = vec![
            spec(80, Scheduler::Rr, &[1, 0, 1, 1]),
            spec(9000, Scheduler::Mh, &[1, 1]),
        ];
        second[0].backends[2].mac = None;
        for fail_at in 1..40 {
            let mut d = Dataplane::new(
                Flaky {
                    maps: Checked::default(),
                    fail_at: usize::MAX,
                    calls: 0,
                },
                LIMITS,
            );
            d.update(&first).unwrap();
            d.writer_mut().fail_at = d.writer().calls + fail_at;
            let failed = d.update(&second).is_err();
            d.update(&second).unwrap();
            // What a fresh plan of `second` writes, by key and by service.
            let mut fresh = dp();
            fresh.update(&second).unwrap();
            let (got, want) = (&d.writer().maps.0, &fresh.writer().0);
            let by_key = |m: &MemMaps| -> BTreeMap<MapKey, (ServiceValue, Vec<(u32, u32)>)> {
                m.services
                    .iter()
                    .filter(|(k, _)| k.port != 0)
                    .map(|(k, r)| {
                        let info = m.infos[&r.id];
                        let ring = (0..info.ring_len)
                            .map(|i| {
                                let b = m.rings[&(info.ring_off + i)];
                                (m.backends[&b].flags, u32::from(m.backends[&b].mac[5]))
                            })
                            .collect();
                        (
                            *k,
                            (
                                ServiceValue {
                                    id: 0,
                                    ring_off: 0,
                                    ..info
                                },
                                ring,
                            ),
                        )
                    })
                    .collect()
            };
            assert_eq!(
                by_key(got),
                by_key(want),
                "failing at write {fail_at} ({failed})"
            );
            assert_eq!(
                got.services.len(),
                want.services.len(),
                "keys, failing at write {fail_at}"
            );
            let live = |m: &MemMaps| {
                m.infos
                    .values()
                    .filter(|i| **i != ServiceValue::default())
                    .count()
            };
            assert_eq!(
                live(got),
                live(want),
                "service slots, failing at write {fail_at}"
            );
            let present = |m: &MemMaps| m.backends.values().filter(|b| b.flags != 0).count();
            assert_eq!(
                present(got),
                present(want),
                "backend slots, failing at write {fail_at}"
            );
        }
    }

    #[test]
    fn prefix_masks() {
        use crate::dataplane::prefix_mask;
        assert_eq!(prefix_mask(FAMILY_V4, 24)[0], addr_v4([255, 255, 255, 0]));
        assert_eq!(prefix_mask(FAMILY_V4, 32)[0], addr_v4([255; 4]));
        assert_eq!(prefix_mask(FAMILY_V4, 0), [0; 4]);
        let mut v6 = [0u8; 16];
        v6[..6].copy_from_slice(&[0xff; 6]);
        v6[6] = 0x80;
        assert_eq!(prefix_mask(FAMILY_V6, 49), addr_v6(v6));
    }
}
