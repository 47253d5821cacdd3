//! From service specs to map contents, and from one set of map contents to the next with the
//! fewest writes, in an order the running program can never observe half-done.
//!
//! Ids are stable: a service keeps its id (and so its ring, rr position and counters) for as
//! long as its key exists, and a backend keeps its id for as long as it belongs to the
//! service, so established flows keep their backend across any update. A freed backend slot
//! gets a new generation when reused, so flows pinned to its previous occupant reschedule.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use lb_common::*;

use super::{
    maglev,
    maps::{MapWriteError, MapWriter},
    prefix_mask, ring, BackendSpec, Scheduler, ServiceKey, ServiceSpec,
};

/// Sizes fixed when the program was loaded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_services: u32,
    pub max_backends: u32,
    /// Ring slots per service; the Maglev M is the largest prime not above it.
    pub ring_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: DEFAULT_MAX_SERVICES,
            max_backends: DEFAULT_MAX_BACKENDS,
            ring_size: DEFAULT_RING_SIZE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("too many services: the program was loaded with room for {0}")]
    TooManyServices(u32),
    #[error("too many backends: the program was loaded with room for {0}")]
    TooManyBackends(u32),
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

/// The exact contents the maps should have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Service keys (each family's map) -> service id, with the fragments-only entries.
    pub services: BTreeMap<ServiceKey, ServiceRef>,
    /// Service id -> `SERVICE_INFO` value.
    pub infos: BTreeMap<u32, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Service id -> ring slots (backend ids).
    pub rings: BTreeMap<u32, Vec<u32>>,
}

/// Id allocation that survives updates.
#[derive(Clone, Debug, Default)]
struct Ids {
    services: HashMap<ServiceKey, u32>,
    backends: HashMap<(ServiceKey, SocketAddr), u32>,
    /// Generation of each backend slot ever used.
    generations: Vec<u32>,
}

impl Ids {
    fn service(&mut self, key: ServiceKey, limits: &Limits) -> Result<u32, PlanError> {
        if let Some(&id) = self.services.get(&key) {
            return Ok(id);
        }
        let id = (0..limits.max_services)
            .find(|id| !self.services.values().any(|v| v == id))
            .ok_or(PlanError::TooManyServices(limits.max_services))?;
        self.services.insert(key, id);
        Ok(id)
    }

    fn backend(
        &mut self,
        svc: ServiceKey,
        addr: SocketAddr,
        limits: &Limits,
    ) -> Result<u32, PlanError> {
        if let Some(&id) = self.backends.get(&(svc, addr)) {
            return Ok(id);
        }
        let used: std::collections::HashSet<u32> = self.backends.values().copied().collect();
        let id = (0..limits.max_backends)
            .find(|id| !used.contains(id))
            .ok_or(PlanError::TooManyBackends(limits.max_backends))?;
        if self.generations.len() <= id as usize {
            self.generations.resize(id as usize + 1, 0);
        }
        // A new occupant: flows of any earlier one must not follow it.
        self.generations[id as usize] = self.generations[id as usize].wrapping_add(1);
        self.backends.insert((svc, addr), id);
        Ok(id)
    }

    /// Forget ids not used by `keep_*`.
    fn retain(&mut self, services: &[ServiceKey], backends: &[(ServiceKey, SocketAddr)]) {
        self.services.retain(|k, _| services.contains(k));
        self.backends.retain(|k, _| backends.contains(k));
    }
}

/// The largest prime not above `n` (Maglev needs a prime table size).
fn prime_at_most(n: u32) -> u32 {
    (2..=n.max(2))
        .rev()
        .find(|&p| maglev::is_prime(p))
        .unwrap_or(2)
}

/// Backends that may take new flows: resolved MAC, positive weight.
fn schedulable(b: &BackendSpec) -> bool {
    b.mac.is_some() && b.weight > 0
}

/// The ring of one service, as indices into `backends`.
fn ring_of(spec: &ServiceSpec, limits: &Limits) -> Result<Vec<usize>, PlanError> {
    let live: Vec<usize> = (0..spec.backends.len())
        .filter(|&i| schedulable(&spec.backends[i]))
        .collect();
    let weights: Vec<u32> = live.iter().map(|&i| spec.backends[i].weight).collect();
    let ring: Vec<usize> = match spec.sched {
        Scheduler::Rr => ring::rr(&weights),
        Scheduler::Wrr => {
            ring::wrr(&weights, limits.ring_size as usize).map_err(|source| PlanError::Ring {
                vip: spec.vip,
                port: spec.port,
                source,
            })?
        }
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
                maglev::build(&input, prime_at_most(limits.ring_size)).map_err(|source| {
                    PlanError::Maglev {
                        vip: spec.vip,
                        port: spec.port,
                        source,
                    }
                })?;
            // Maglev orders backends canonically; map back to positions in `live`.
            let pos: HashMap<SocketAddr, usize> =
                input.iter().enumerate().map(|(i, b)| (b.addr, i)).collect();
            table.translate(|a| pos[a])
        }
    };
    Ok(ring.into_iter().map(|i| live[i]).collect())
}

/// The desired map contents for `specs`, allocating ids in `ids`.
fn desired(specs: &[ServiceSpec], ids: &mut Ids, limits: &Limits) -> Result<Desired, PlanError> {
    let mut out = Desired::default();
    let mut keep_services = Vec::new();
    let mut keep_backends = Vec::new();
    for spec in specs {
        let key = ServiceKey::of(spec);
        if keep_services.contains(&key) {
            return Err(PlanError::DuplicateService(format!(
                "{}:{}/{:?}",
                spec.vip, spec.port, spec.proto
            )));
        }
        keep_services.push(key);
        let id = ids.service(key, limits)?;
        let mut backend_ids = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            let bid = ids.backend(key, b.addr, limits)?;
            keep_backends.push((key, b.addr));
            backend_ids.push(bid);
            // A backend without a MAC cannot be sent to: absent, so its flows reschedule.
            let mut flags = 0;
            if b.mac.is_some() {
                flags |= BACKEND_F_PRESENT;
            }
            if b.weight == 0 {
                flags |= BACKEND_F_DRAINING;
            }
            out.backends.insert(
                bid,
                BackendValue {
                    mac: b.mac.unwrap_or_default(),
                    _pad: [0; 2],
                    flags,
                    generation: ids.generations[bid as usize],
                },
            );
        }
        let ring: Vec<u32> = ring_of(spec, limits)?
            .into_iter()
            .map(|i| backend_ids[i])
            .collect();
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
        out.infos.insert(
            id,
            ServiceValue {
                id,
                flags,
                sched: spec.sched.code(),
                ring_len: ring.len() as u32,
                idle_timeout_s: spec.idle_timeout,
                persist_timeout_s: spec.persistence_timeout,
                persist_mask: prefix_mask(key.family, spec.persistence_prefix),
            },
        );
        out.services.insert(key, ServiceRef { id, flags: 0 });
        out.rings.insert(id, ring);
    }
    // Fragments carry no port (after the first): each (VIP, protocol) without an all-ports
    // service routes them to its lowest-port service, through a port-0 entry marked
    // fragments-only. See docs/architecture.md, "Fragments".
    let mut frag: BTreeMap<([u32; 4], u8, u8), ServiceKey> = BTreeMap::new();
    for key in out.services.keys() {
        let group = (key.addr, key.proto, key.family);
        match frag.get(&group) {
            Some(best) if u16::from_be(best.port) <= u16::from_be(key.port) => {}
            _ => {
                frag.insert(group, *key);
            }
        }
    }
    for ((addr, proto, family), owner) in frag {
        if owner.port != 0 {
            let id = out.services[&owner].id;
            let frag_key = ServiceKey {
                addr,
                port: 0,
                proto,
                family,
            };
            out.services.insert(
                frag_key,
                ServiceRef {
                    id,
                    flags: SVC_REF_F_FRAG_ONLY,
                },
            );
        }
    }
    ids.retain(&keep_services, &keep_backends);
    Ok(out)
}

/// Writes `next` over `prev`: new and changed backends that may take new flows first; then
/// the `ring_len` of shrinking services, the changed ring slots, the full service state,
/// and the keys that lead to the services; then gone keys and service slots, backends that
/// stopped being usable (now named by no ring), and gone backends. At every step each ring
/// slot the program can reach names a usable backend, and each key names a service whose
/// state is written.
fn apply(
    prev: &Desired,
    next: &Desired,
    limits: &Limits,
    w: &mut dyn MapWriter,
) -> Result<(), PlanError> {
    // Backends that may take new flows first, so rings can name them. One that stops being
    // usable (drained, or absent) is written only after the rings no longer name it: until
    // then the program would find a ring slot naming a backend it must not use.
    let usable =
        |b: &BackendValue| b.flags & BACKEND_F_PRESENT != 0 && b.flags & BACKEND_F_DRAINING == 0;
    for (id, b) in &next.backends {
        if usable(b) && prev.backends.get(id) != Some(b) {
            w.update_backend(*id, b)?;
        }
    }
    for (id, info) in &next.infos {
        if let Some(old) = prev.infos.get(id) {
            if info.ring_len < old.ring_len {
                // Only flags both versions set: after a failed apply `old` may be a marker
                // whose flags are all ones, which must never switch a service on.
                let shorter = ServiceValue {
                    ring_len: info.ring_len,
                    flags: old.flags & info.flags,
                    ..*old
                };
                w.update_service_info(*id, &shorter)?;
            }
        }
    }
    for (id, ring) in &next.rings {
        let old = prev.rings.get(id).map(Vec::as_slice).unwrap_or(&[]);
        let base = id * limits.ring_size;
        for (i, &bid) in ring.iter().enumerate() {
            if old.get(i) != Some(&bid) {
                w.update_ring_slot(base + i as u32, bid)?;
            }
        }
    }
    for (id, info) in &next.infos {
        if prev.infos.get(id) != Some(info) {
            w.update_service_info(*id, info)?;
        }
    }
    for (key, r) in &next.services {
        if prev.services.get(key) != Some(r) {
            w.update_service(key, r)?;
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
    for id in prev.backends.keys() {
        if !next.backends.contains_key(id) {
            w.update_backend(*id, &BackendValue::default())?;
        }
    }
    Ok(())
}

/// After a failed `apply`, any entry of `attempted` may or may not be in the maps. Returns a
/// `prev` for the next `apply` that makes it rewrite every such entry (their values here
/// match nothing real) and delete every such key it no longer wants.
fn uncertain(current: &Desired, attempted: &Desired) -> Desired {
    let mut out = current.clone();
    for (key, r) in &attempted.services {
        out.services.insert(
            *key,
            ServiceRef {
                flags: u32::MAX,
                ..*r
            },
        );
    }
    for (id, info) in &attempted.infos {
        out.infos.insert(
            *id,
            ServiceValue {
                flags: u32::MAX,
                ..*info
            },
        );
    }
    for (id, b) in &attempted.backends {
        out.backends.insert(
            *id,
            BackendValue {
                flags: u32::MAX,
                ..*b
            },
        );
    }
    for id in attempted.rings.keys() {
        out.rings.insert(*id, Vec::new());
    }
    out
}

/// The control plane's handle on the program's maps.
pub struct Dataplane<W: MapWriter> {
    limits: Limits,
    ids: Ids,
    current: Desired,
    specs: Vec<ServiceSpec>,
    writer: W,
}

impl<W: MapWriter> Dataplane<W> {
    pub fn new(writer: W, limits: Limits) -> Self {
        Self {
            limits,
            ids: Ids::default(),
            current: Desired::default(),
            specs: Vec::new(),
            writer,
        }
    }

    /// Makes the maps hold exactly `specs`. On error nothing the program relies on is left
    /// half-written: the caller may retry with the same or other specs.
    pub fn update(&mut self, specs: &[ServiceSpec]) -> Result<(), PlanError> {
        // Plan on a copy: a spec that cannot be planned must not leak ids.
        let mut ids = self.ids.clone();
        let next = desired(specs, &mut ids, &self.limits)?;
        // From here the maps may hold the new ids, whatever `apply` returns.
        self.ids = ids;
        let result = apply(&self.current, &next, &self.limits, &mut self.writer);
        match result {
            Ok(()) => {
                self.current = next;
                self.specs = specs.to_vec();
            }
            Err(_) => self.current = uncertain(&self.current, &next),
        }
        result
    }

    pub fn specs(&self) -> &[ServiceSpec] {
        &self.specs
    }

    pub fn current(&self) -> &Desired {
        &self.current
    }

    /// The ids of a service and of its backends, in spec order (for counters and status).
    pub fn ids_of(&self, spec: &ServiceSpec) -> Option<(u32, Vec<u32>)> {
        let key = ServiceKey::of(spec);
        let sid = *self.ids.services.get(&key)?;
        let bids = spec
            .backends
            .iter()
            .map(|b| self.ids.backends.get(&(key, b.addr)).copied())
            .collect::<Option<Vec<u32>>>()?;
        Some((sid, bids))
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// The writer itself, bypassing the planner (tests use it to break the maps on purpose).
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::dataplane::{maps::MemMaps, Proto};

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
                    let idx = info.id * LIMITS.ring_size + slot;
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
        }
    }

    // A ring of 4099 slots: Maglev wants M well above 100 x N for its minimal disruption.
    const LIMITS: Limits = Limits {
        max_services: 8,
        max_backends: 32,
        ring_size: 4099,
    };

    impl MapWriter for Checked {
        fn update_service(&mut self, k: &ServiceKey, v: &ServiceRef) -> Result<(), MapWriteError> {
            self.0.update_service(k, v)?;
            self.check();
            Ok(())
        }
        fn delete_service(&mut self, k: &ServiceKey) -> Result<(), MapWriteError> {
            self.0.delete_service(k)?;
            self.check();
            Ok(())
        }
        fn update_service_info(&mut self, id: u32, v: &ServiceValue) -> Result<(), MapWriteError> {
            self.0.update_service_info(id, v)?;
            self.check();
            Ok(())
        }
        fn update_backend(&mut self, id: u32, v: &BackendValue) -> Result<(), MapWriteError> {
            self.0.update_backend(id, v)?;
            self.check();
            Ok(())
        }
        fn update_ring_slot(&mut self, i: u32, b: u32) -> Result<(), MapWriteError> {
            self.0.update_ring_slot(i, b)?;
            // Only this slot can have changed; a full check per slot would be quadratic.
            let (sid, slot) = (i / LIMITS.ring_size, i % LIMITS.ring_size);
            if let Some(info) = self.0.infos.get(&sid) {
                if info.flags & SVC_F_ACTIVE != 0 && slot < info.ring_len {
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
            active: true,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| BackendSpec {
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8)), port),
                    weight,
                    mac: Some([2, 0, 0, 0, 0, i as u8]),
                })
                .collect(),
        }
    }

    fn dp() -> Dataplane<Checked> {
        Dataplane::new(Checked::default(), LIMITS)
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
        let m = prime_at_most(LIMITS.ring_size) as usize;
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
            Err(PlanError::TooManyServices(8))
        ));
        let dup = vec![spec(80, Scheduler::Rr, &[1]), spec(80, Scheduler::Rr, &[1])];
        assert!(matches!(
            d.update(&dup),
            Err(PlanError::DuplicateService(_))
        ));
        let big = vec![spec(80, Scheduler::Rr, &[1; 33])];
        assert!(matches!(
            d.update(&big),
            Err(PlanError::TooManyBackends(32))
        ));
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
