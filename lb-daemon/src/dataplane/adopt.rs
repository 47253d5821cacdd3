//! Taking over the maps a previous run of the daemon wrote (pure: what the maps hold in,
//! a planner out).
//!
//! A restarted daemon finds the program's maps pinned ([`super::pins`]) and must go on
//! from them: the same service ids (their rings, rr positions, counters, persistence
//! templates) and the same backend ids and generations (every flow names its backend by
//! both). Ids are not a function of the configuration (they depend on the order of past
//! reloads), so they are read back: the service keys name the service ids, `BACKEND_KEYS`
//! names the service and address of every backend id (the daemon writes it before
//! anything names the id, and clears it last), and `BACKENDS` keeps the generation of every
//! slot, free ones included.
//!
//! Each adopted service is planned again at the first update (it is marked dirty, since
//! its weights are not in the maps); its ids are found by address, its ring rebuilt and
//! compared slot by slot, so an unchanged configuration writes nothing.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use lb_common::{
    BackendKey, BackendValue, ServiceRef, ServiceValue, BACKEND_F_DRAINING, BACKEND_F_PRESENT,
    DEFAULT_MH_TABLE_SIZE, FAMILY_V4, FAMILY_V6, SVC_F_ACTIVE, SVC_F_HASH_PORT, SVC_F_SLOPPY_TCP,
    SVC_REF_F_FRAG_ONLY,
};

use super::{
    maps::{MapWriter, MemMaps},
    plan::{group_of, Alloc, Dataplane, Planned, Ring},
    BackendSpec, MapKey, ServiceSpec,
};
use crate::model::{Limits, Proto, Scheduler};

/// What the maps hold, read back (`BpfMaps::read_back`, or [`MemMaps::found`] in tests).
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Every key of `SERVICES4` and `SERVICES6`.
    pub services: Vec<(MapKey, ServiceRef)>,
    /// `SERVICE_INFO`, by id.
    pub infos: Vec<ServiceValue>,
    /// `BACKENDS`, by id.
    pub backends: Vec<BackendValue>,
    /// `BACKEND_KEYS`, by id.
    pub keys: Vec<BackendKey>,
    /// `RINGS`, every slot.
    pub rings: Vec<u32>,
    /// `NAT_SOURCES4` and `NAT_SOURCES6`: which service a shared real server's entry names
    /// (a reply without a reverse entry is taken for it) goes on from them.
    pub nat: Vec<(MapKey, lb_common::NatSource)>,
}

impl Found {
    /// The sizes of the maps it was read from.
    pub fn limits(&self) -> Limits {
        Limits {
            services: self.infos.len() as u32,
            backends: self.backends.len() as u32,
            ring_slots: self.rings.len() as u32,
        }
    }
}

/// Maps that contradict themselves: never adopted (the daemon starts from empty maps).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the pinned maps contradict themselves: {0}")]
pub struct Corrupt(pub String);

/// How much was taken over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub services: usize,
    pub backends: usize,
    /// Entries no live service owns (a write a crash cut short): the first update
    /// clears them.
    pub stray: usize,
}

fn ip_of(addr: &[u32; 4], family: u8) -> Option<IpAddr> {
    let bytes = |w: &[u32]| -> Vec<u8> { w.iter().flat_map(|x| x.to_ne_bytes()).collect() };
    match family {
        FAMILY_V4 => {
            let b = bytes(&addr[..1]);
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        }
        FAMILY_V6 => {
            let b: [u8; 16] = bytes(addr).try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

fn scheduler(code: u32) -> Option<Scheduler> {
    Scheduler::of_code(code)
}

fn proto(number: u8) -> Option<Proto> {
    [Proto::Tcp, Proto::Udp]
        .into_iter()
        .find(|p| p.number() == number)
}

/// The prefix length of a persistence mask (leading one bits).
fn prefix_of(mask: &[u32; 4], family: u8) -> u8 {
    let words = if family == FAMILY_V4 { 1 } else { 4 };
    let mut n = 0u32;
    for w in &mask[..words] {
        // The words hold the mask's bytes in order.
        let ones = u32::from_be_bytes(w.to_ne_bytes()).leading_ones();
        n += ones;
        if ones < 32 {
            break;
        }
    }
    n as u8
}

impl<W: MapWriter> Dataplane<W> {
    /// A planner that goes on from the maps `writer` holds (read back as `found`, their
    /// sizes `found.limits()`). Writes nothing. The specs it reports until the first update
    /// are read from the maps: weights 1 for a usable backend, 0 for a draining one; MACs,
    /// active flags, timeouts and schedulers as written.
    pub fn adopt(writer: W, found: &Found) -> Result<(Self, Adopted), Corrupt> {
        let limits = found.limits();
        let mut dp = Dataplane::new(writer, limits);
        let mut summary = Adopted::default();
        // Live services: the ones a whole-packet key names; several keys name a group's
        // service (the least is the one the planner knows it by, `ServiceSpec::ident`).
        let mut live: BTreeMap<u32, Vec<MapKey>> = BTreeMap::new();
        for (key, r) in &found.services {
            if r.flags & SVC_REF_F_FRAG_ONLY != 0 {
                continue;
            }
            if r.id >= limits.services {
                return Err(Corrupt(format!(
                    "a service key names id {} of {}",
                    r.id, limits.services
                )));
            }
            live.entry(r.id).or_default().push(*key);
        }
        for (key, r) in &found.services {
            if r.flags & SVC_REF_F_FRAG_ONLY != 0 && !live.contains_key(&r.id) {
                // Written before a service a crash kept from being keyed (or left when one
                // went): the first update writes or removes it.
                dp.stray.services.insert(*key, *r);
                summary.stray += 1;
                continue;
            }
            dp.current.services.insert(*key, *r);
        }
        // Live backends: the ones whose key names a live service.
        let mut of_service: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (bid, k) in found.keys.iter().enumerate() {
            let bid = bid as u32;
            if k.family == 0 {
                continue;
            }
            if live.contains_key(&k.service) && bid < limits.backends {
                of_service.entry(k.service).or_default().push(bid);
            } else {
                // Written before a service that a crash kept from being keyed.
                dp.stray.keys.insert(bid, *k);
                if let Some(b) = found.backends.get(bid as usize) {
                    dp.stray.backends.insert(bid, *b);
                }
                summary.stray += 1;
            }
        }
        for (id, info) in found.infos.iter().enumerate() {
            let id = id as u32;
            if !live.contains_key(&id) && *info != ServiceValue::default() {
                dp.stray.infos.insert(id, *info);
                summary.stray += 1;
            }
        }
        let mut used_regions: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        let mut specs = Vec::with_capacity(live.len());
        for (&id, keys) in &mut live {
            keys.sort();
            let key = &keys[0];
            if let Some(k) = keys[1..]
                .iter()
                .find(|k| (k.proto, k.family) != (key.proto, key.family))
            {
                return Err(Corrupt(format!(
                    "service {id} has keys of protocol {} family {} and of protocol {} family {}",
                    key.proto, key.family, k.proto, k.family
                )));
            }
            let mut aliases = Vec::with_capacity(keys.len() - 1);
            for k in &keys[1..] {
                let ip = ip_of(&k.addr, k.family)
                    .ok_or_else(|| Corrupt(format!("service {id} has family {}", k.family)))?;
                aliases.push((ip, u16::from_be(k.port)));
            }
            let info = found.infos.get(id as usize).copied().unwrap_or_default();
            let sched = scheduler(info.sched).ok_or_else(|| {
                Corrupt(format!("service {id} has scheduler code {}", info.sched))
            })?;
            let vip = ip_of(&key.addr, key.family)
                .ok_or_else(|| Corrupt(format!("service {id} has family {}", key.family)))?;
            let proto = proto(key.proto)
                .ok_or_else(|| Corrupt(format!("service {id} has protocol {}", key.proto)))?;
            let bids = of_service.remove(&id).unwrap_or_default();
            let mut backends = Vec::with_capacity(bids.len());
            for &bid in &bids {
                let k = found.keys[bid as usize];
                let ip = ip_of(&k.addr, k.family)
                    .ok_or_else(|| Corrupt(format!("backend {bid} has family {}", k.family)))?;
                let b = found
                    .backends
                    .get(bid as usize)
                    .copied()
                    .unwrap_or_default();
                let present = b.flags & BACKEND_F_PRESENT != 0;
                // A TUN backend's value says its tunnel; a TUN or NAT backend's MAC field
                // means nothing.
                let tunnel = (b.flags & lb_common::BACKEND_F_TUN != 0)
                    .then(|| {
                        Some(crate::model::Tunnel {
                            kind: crate::model::TunnelKind::of_code(b.tun_kind)?,
                            port: u16::from_be(b.tun_port),
                            ttl: b.tun_ttl,
                            source: ip_of(&b.tun_saddr, k.family),
                        })
                    })
                    .flatten();
                let forward = match tunnel {
                    Some(t) => super::Forward::Tun(t),
                    None if b.flags & lb_common::BACKEND_F_NAT != 0 => super::Forward::Nat,
                    None => super::Forward::Dr,
                };
                backends.push(BackendSpec {
                    thresholds: super::Thresholds {
                        upper: b.u_threshold,
                        lower: b.l_threshold,
                    },
                    addr: SocketAddr::new(ip, k.port),
                    weight: u32::from(b.flags & BACKEND_F_DRAINING == 0 && present),
                    mac: present.then_some(if forward.is_dr() {
                        b.mac
                    } else {
                        super::TUNNEL_MAC
                    }),
                    forward,
                });
                dp.current.backends.insert(bid, b);
                dp.current.keys.insert(bid, k);
            }
            // The ring: every slot in use must name one of the service's backends.
            let (off, len) = (info.ring_off, info.ring_len);
            let end = u64::from(off) + u64::from(len);
            if end > found.rings.len() as u64 {
                return Err(Corrupt(format!(
                    "service {id}'s ring {off}+{len} is past {} slots",
                    found.rings.len()
                )));
            }
            let slots: Arc<[u32]> = found.rings[off as usize..end as usize].into();
            let own: HashSet<u32> = bids.iter().copied().collect();
            if let Some(bad) = slots.iter().find(|b| !own.contains(b)) {
                return Err(Corrupt(format!(
                    "service {id}'s ring names backend {bad}, not one of its own"
                )));
            }
            if len > 0 {
                used_regions.insert(off, (len, id));
            }
            // The region is taken to be what the ring fills: whatever lay past it is given
            // back (its true size is not in the maps, and a smaller one is always safe).
            dp.current.rings.insert(
                id,
                Ring {
                    off,
                    cap: len,
                    slots,
                },
            );
            dp.current.infos.insert(id, info);
            let spec = ServiceSpec {
                vip,
                port: u16::from_be(key.port),
                proto,
                sched,
                hash_port: info.flags & SVC_F_HASH_PORT != 0,
                persistence_timeout: info.persist_timeout_s,
                persistence_prefix: prefix_of(&info.persist_mask, key.family),
                idle_timeout: info.idle_timeout_s,
                sloppy_tcp: info.flags & SVC_F_SLOPPY_TCP != 0,
                mh_table_size: if sched == Scheduler::Mh && len > 0 {
                    len
                } else {
                    DEFAULT_MH_TABLE_SIZE
                },
                active: info.flags & SVC_F_ACTIVE != 0,
                aliases,
                backends,
            };
            for k in keys.iter() {
                dp.groups
                    .entry(group_of(k))
                    .or_default()
                    .insert(u16::from_be(k.port), id);
            }
            summary.services += 1;
            summary.backends += bids.len();
            specs.push(spec.clone());
            dp.planned.insert(
                *key,
                Planned {
                    spec,
                    id,
                    bids,
                    dirty: true,
                },
            );
        }
        // Each group's fragments-only key as the services found call for it: one missing or
        // naming another service (a crash between two writes) is rewritten by the first
        // update, which a stray marker makes look at the group.
        let expected: BTreeMap<MapKey, ServiceRef> = dp
            .groups
            .iter()
            .filter_map(|(g, ports)| super::plan::frag_entry(*g, Some(ports)))
            .collect();
        let unexpected: Vec<MapKey> = dp
            .current
            .services
            .iter()
            .filter(|(k, r)| r.flags & SVC_REF_F_FRAG_ONLY != 0 && expected.get(k) != Some(r))
            .map(|(k, _)| *k)
            .collect();
        for k in unexpected {
            if let Some(r) = dp.current.services.remove(&k) {
                dp.stray.services.insert(k, r);
                summary.stray += 1;
            }
        }
        for (k, r) in &expected {
            if !dp.current.services.contains_key(k) && !dp.stray.services.contains_key(k) {
                // Missing: a marker no real key has, so that the group is written.
                dp.stray.services.insert(
                    *k,
                    ServiceRef {
                        id: r.id,
                        flags: u32::MAX,
                    },
                );
                summary.stray += 1;
            }
        }
        // Regions: in use as found, the gaps free.
        let mut regions = super::plan::Regions::default();
        let mut at = 0u32;
        for (&off, &(len, id)) in &used_regions {
            if off < at {
                return Err(Corrupt(format!(
                    "service {id}'s ring at {off} overlaps another ending at {at}"
                )));
            }
            if off > at {
                regions.free.insert(at, off - at);
            }
            at = off + len;
        }
        regions.top = at;
        // Ids: the live ones taken, the gaps free, every slot's generation kept.
        let mut alloc = Alloc {
            regions,
            ..Alloc::default()
        };
        let ids = &mut alloc.ids;
        ids.next_service = live.keys().next_back().map_or(0, |&m| m + 1);
        ids.free_services = (0..ids.next_service)
            .filter(|i| !live.contains_key(i))
            .collect();
        let live_backends: BTreeSet<u32> = dp.current.keys.keys().copied().collect();
        ids.next_backend = live_backends.iter().next_back().map_or(0, |&m| m + 1);
        ids.free_backends = (0..ids.next_backend)
            .filter(|i| !live_backends.contains(i))
            .collect();
        ids.generations = found.backends.iter().map(|b| b.generation).collect();
        while ids.generations.last() == Some(&0) {
            ids.generations.pop();
        }
        if ids.generations.len() < ids.next_backend as usize {
            ids.generations.resize(ids.next_backend as usize, 0);
        }
        dp.alloc = alloc;
        dp.specs = specs;
        dp.nat = found.nat.iter().copied().collect();
        Ok((dp, summary))
    }
}

impl MemMaps {
    /// What these maps hold, as maps of `limits` would be read back.
    pub fn found(&self, limits: Limits) -> Found {
        let mut infos = vec![ServiceValue::default(); limits.services as usize];
        for (id, v) in &self.infos {
            infos[*id as usize] = *v;
        }
        let mut backends = vec![BackendValue::default(); limits.backends as usize];
        for (id, v) in &self.backends {
            backends[*id as usize] = *v;
        }
        let mut keys = vec![BackendKey::default(); limits.backends as usize];
        for (id, k) in &self.keys {
            keys[*id as usize] = *k;
        }
        let mut rings = vec![0; limits.ring_slots as usize];
        for (i, b) in &self.rings {
            rings[*i as usize] = *b;
        }
        Found {
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            infos,
            backends,
            keys,
            rings,
            nat: self.nat_sources.iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dataplane::{maps::MapWriteError, plan::Dataplane},
        model::Forward,
    };

    fn spec(vip: &str, port: u16, sched: Scheduler, backends: &[(&str, u32)]) -> ServiceSpec {
        ServiceSpec {
            vip: vip.parse().unwrap(),
            port,
            proto: Proto::Tcp,
            sched,
            hash_port: false,
            persistence_timeout: 0,
            persistence_prefix: if vip.contains(':') { 128 } else { 32 },
            idle_timeout: 900,
            sloppy_tcp: false,
            mh_table_size: 251,
            active: true,
            aliases: Vec::new(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, (a, w))| BackendSpec {
                    thresholds: Default::default(),
                    addr: a.parse().unwrap(),
                    weight: *w,
                    mac: Some([2, 0, 0, 0, 0, i as u8 + 1]),
                    forward: Forward::Dr,
                })
                .collect(),
        }
    }

    fn limits() -> Limits {
        Limits {
            services: 16,
            backends: 64,
            ring_slots: 4096,
        }
    }

    /// A history of reloads (so ids are not what a fresh plan would give), then the
    /// configuration it ended with.
    fn history() -> (Dataplane<MemMaps>, Vec<ServiceSpec>) {
        let mut dp = Dataplane::new(MemMaps::default(), limits());
        let a = spec(
            "192.0.2.10",
            80,
            Scheduler::Wrr,
            &[("198.51.100.1:80", 1), ("198.51.100.2:80", 3)],
        );
        let b = spec(
            "192.0.2.11",
            443,
            Scheduler::Mh,
            &[("198.51.100.3:443", 1), ("198.51.100.4:443", 1)],
        );
        let c = spec(
            "2001:db8::10",
            80,
            Scheduler::Rr,
            &[("[2001:db8::1]:80", 1), ("[2001:db8::2]:80", 0)],
        );
        dp.update(&[a.clone(), b.clone()]).unwrap();
        // The first service goes and comes back: its ids move, a slot's generation rises.
        dp.update(std::slice::from_ref(&b)).unwrap();
        dp.update_at(
            &[b.clone(), c.clone(), a.clone()],
            &[],
            std::time::Instant::now() + std::time::Duration::from_secs(1),
        )
        .unwrap();
        let mut a2 = a.clone();
        a2.backends.remove(0);
        dp.update(&[b.clone(), c.clone(), a2.clone()]).unwrap();
        (dp, vec![b, c, a2])
    }

    #[test]
    fn an_unchanged_configuration_writes_nothing_after_adoption() {
        let (dp, specs) = history();
        let found = dp.writer().found(limits());
        let before = dp.writer().writes;
        let mut mem = dp.writer().clone();
        mem.writes = 0;
        let (mut adopted, summary) = Dataplane::adopt(mem, &found).unwrap();
        assert_eq!(summary.services, 3);
        assert_eq!(summary.backends, 5);
        assert_eq!(summary.stray, 0);
        assert!(before > 0);
        adopted.update(&specs).unwrap();
        assert_eq!(adopted.writer().writes, 0, "nothing differs");
        // The same ids, the same generations: established flows keep their backend.
        for s in &specs {
            assert_eq!(adopted.ids_of(s), dp.ids_of(s), "{}", s.vip);
        }
        assert_eq!(adopted.current().backends, dp.current().backends);
        assert_eq!(adopted.current().infos, dp.current().infos);
    }

    /// keepalived's virtual_server_group: several (VIP, port)s lead to one service id (one
    /// ring, one persistence table); its keys come and go with the group, and maps read
    /// back name the same service whatever order the configuration lists them in.
    #[test]
    fn a_group_is_one_service_under_several_keys() {
        let mut web = spec(
            "192.0.2.20",
            443,
            Scheduler::Rr,
            &[("198.51.100.1:80", 1), ("198.51.100.2:80", 1)],
        );
        web.persistence_timeout = 300;
        web.aliases = vec![
            ("192.0.2.20".parse().unwrap(), 80),
            ("192.0.2.21".parse().unwrap(), 80),
        ];
        let other = spec(
            "192.0.2.21",
            8080,
            Scheduler::Rr,
            &[("198.51.100.3:8080", 1)],
        );
        let mut dp = Dataplane::new(MemMaps::default(), limits());
        dp.update(&[web.clone(), other.clone()]).unwrap();
        let (id, _) = dp.ids_of(&web).unwrap();
        let whole: Vec<(MapKey, ServiceRef)> = dp
            .writer()
            .services
            .iter()
            .filter(|(_, r)| r.flags & SVC_REF_F_FRAG_ONLY == 0)
            .map(|(k, r)| (*k, *r))
            .collect();
        assert_eq!(whole.len(), 4, "three keys of the group, one of the other");
        for k in web.map_keys() {
            assert_eq!(dp.writer().services[&k].id, id, "{k:?}");
        }
        // Fragments of 192.0.2.20 go to its lowest port (80, the group), of 192.0.2.21 to
        // port 80 too (the group's alias), not to the other service's 8080.
        for k in web.map_keys().filter(|k| k.port != 443u16.to_be()) {
            let frag = MapKey { port: 0, ..k };
            assert_eq!(
                dp.writer().services[&frag],
                ServiceRef {
                    id,
                    flags: SVC_REF_F_FRAG_ONLY
                }
            );
        }
        // A key listed in two services is refused before anything is written.
        let mut clash = other.clone();
        clash.aliases = vec![("192.0.2.20".parse().unwrap(), 80)];
        let writes = dp.writer().writes;
        assert!(dp.update(&[web.clone(), clash]).is_err());
        assert_eq!(dp.writer().writes, writes);
        // Read back and adopted: the same service, its aliases found, nothing rewritten,
        // even with the group listed in another order.
        let found = dp.writer().found(limits());
        let mut mem = dp.writer().clone();
        mem.writes = 0;
        let (mut adopted, summary) = Dataplane::adopt(mem, &found).unwrap();
        assert_eq!((summary.services, summary.stray), (2, 0));
        let mut reordered = web.clone();
        reordered.aliases.reverse();
        std::mem::swap(&mut reordered.port, &mut reordered.aliases[1].1);
        assert_eq!(reordered.ident(), web.ident());
        adopted.update(&[reordered.clone(), other.clone()]).unwrap();
        assert_eq!(adopted.writer().writes, 0, "nothing differs");
        assert_eq!(adopted.ids_of(&reordered).unwrap().0, id);
        // An alias dropped: its key goes (and 192.0.2.21's fragments go to 8080 now).
        let mut fewer = web.clone();
        fewer.aliases.pop();
        adopted.update(&[fewer.clone(), other.clone()]).unwrap();
        let k21: MapKey = web.map_keys().last().unwrap();
        assert!(!adopted.writer().services.contains_key(&k21));
        let frag21 = MapKey { port: 0, ..k21 };
        assert_eq!(
            adopted.writer().services[&frag21].id,
            adopted.ids_of(&other).unwrap().0
        );
        assert_eq!(adopted.ids_of(&fewer).unwrap().0, id, "the same service");
        // An address added below its least key: the service is known by another key now,
        // and is still the same (id, backends, so flows and persistence go on).
        let bids = adopted.ids_of(&fewer).unwrap().1;
        let mut lower = fewer.clone();
        lower.aliases.push(("192.0.2.19".parse().unwrap(), 80));
        assert_ne!(lower.ident(), fewer.ident(), "the least key moved");
        let writes = adopted.writer().writes;
        adopted.update(&[lower.clone(), other.clone()]).unwrap();
        assert_eq!(adopted.ids_of(&lower).unwrap(), (id, bids.clone()));
        assert_eq!(
            adopted.writer().writes - writes,
            2,
            "the new key and its fragments-only key, nothing else"
        );
        // Its least key dropped again: the same.
        adopted.update(&[fewer.clone(), other.clone()]).unwrap();
        assert_eq!(adopted.ids_of(&fewer).unwrap(), (id, bids));
        assert!(!adopted
            .writer()
            .services
            .keys()
            .any(|k| k.addr == lower.map_keys().last().unwrap().addr));
        // A key moving from one service to another in one update: its fragments follow.
        let mut moved_web = fewer.clone();
        moved_web.aliases.clear();
        let mut moved_other = other.clone();
        moved_other.aliases = vec![("192.0.2.20".parse().unwrap(), 80)];
        adopted
            .update(&[moved_web.clone(), moved_other.clone()])
            .unwrap();
        let other_id = adopted.ids_of(&moved_other).unwrap().0;
        let k80 = MapKey {
            port: 80u16.to_be(),
            ..moved_web.ident()
        };
        assert_eq!(adopted.writer().services[&k80].id, other_id);
        assert_eq!(
            adopted.writer().services[&MapKey { port: 0, ..k80 }],
            ServiceRef {
                id: other_id,
                flags: SVC_REF_F_FRAG_ONLY
            },
            "192.0.2.20's fragments go to its port-80 service, the other one now"
        );
    }

    #[test]
    fn tun_and_nat_backends_are_adopted_with_their_forwarding() {
        use crate::model::{Tunnel, TunnelKind};
        let mut s = spec(
            "192.0.2.100",
            80,
            Scheduler::Rr,
            &[("203.0.113.11:80", 1), ("198.51.100.11:8080", 1)],
        );
        s.backends[0].mac = Some(super::super::TUNNEL_MAC);
        s.backends[0].forward = Forward::Tun(Tunnel {
            kind: TunnelKind::Gue,
            port: 6080,
            ttl: 32,
            source: Some("192.0.2.2".parse().unwrap()),
        });
        s.backends[1].mac = Some(super::super::TUNNEL_MAC);
        s.backends[1].forward = Forward::Nat;
        let mut dp = Dataplane::new(MemMaps::default(), limits());
        dp.update(std::slice::from_ref(&s)).unwrap();
        let want = dp.writer().nat_sources.clone();
        assert_eq!(want.len(), 1);
        // NAT_SOURCES taken over (pinned): the entries go on as they were; NAT_ON, the
        // instance's own, is written before the program runs.
        let mut mem = dp.writer().clone();
        mem.nat = 0;
        mem.writes = 0;
        let found = mem.found(limits());
        let (mut kept, _) = Dataplane::adopt(mem, &found).unwrap();
        kept.write_nat_sources().unwrap();
        assert_eq!(kept.writer().writes, 1, "NAT_ON alone");
        assert_eq!(kept.writer().nat_sources, want);
        // NAT_SOURCES made anew (another size): a new instance has it empty.
        let mut mem = dp.writer().clone();
        mem.nat_sources.clear();
        mem.nat = 0;
        mem.writes = 0;
        let found = mem.found(limits());
        let (mut adopted, _) = Dataplane::adopt(mem, &found).unwrap();
        assert_eq!(adopted.writer().writes, 0, "adopting writes nothing");
        assert_eq!(
            adopted.specs()[0].backends,
            s.backends,
            "the tunnel and the NAT read back"
        );
        // Written before the new instance is attached: NAT_ON and the one source.
        adopted.write_nat_sources().unwrap();
        assert_eq!(adopted.writer().writes, 2);
        assert_eq!(adopted.writer().nat, lb_common::NAT_ON_ANY);
        assert_eq!(adopted.writer().nat_sources, want);
        adopted.update(&[s]).unwrap();
        assert_eq!(adopted.writer().writes, 2, "nothing differs after that");
    }

    #[test]
    fn a_slot_freed_before_the_restart_gets_a_new_generation() {
        let (dp, mut specs) = history();
        let found = dp.writer().found(limits());
        let (mut adopted, _) = Dataplane::adopt(dp.writer().clone(), &found).unwrap();
        // A new real server takes the lowest free slot: the one the removed server left.
        let freed = found
            .keys
            .iter()
            .enumerate()
            .position(|(i, k)| k.family == 0 && found.backends[i].generation > 0)
            .expect("a freed slot keeps its generation") as u32;
        let old_generation = found.backends[freed as usize].generation;
        specs[2].backends.push(BackendSpec {
            thresholds: Default::default(),
            addr: "198.51.100.9:80".parse().unwrap(),
            weight: 1,
            mac: Some([2, 0, 0, 0, 0, 9]),
            forward: Forward::Dr,
        });
        adopted.update(&specs).unwrap();
        let (_, bids) = adopted.ids_of(&specs[2]).unwrap();
        assert!(bids.contains(&freed));
        assert_eq!(
            adopted.current().backends[&freed].generation,
            old_generation + 1
        );
    }

    #[test]
    fn the_adopted_view_says_what_the_maps_say() {
        let (dp, specs) = history();
        let found = dp.writer().found(limits());
        let (adopted, _) = Dataplane::adopt(MemMaps::default(), &found).unwrap();
        let v6 = adopted
            .specs()
            .iter()
            .find(|s| s.vip.is_ipv6())
            .expect("the IPv6 service");
        assert_eq!(v6.sched, Scheduler::Rr);
        assert_eq!(v6.persistence_prefix, 128);
        assert!(v6.active);
        // The drained server: weight 0, MAC kept.
        let drained = v6.backends.iter().find(|b| b.weight == 0).unwrap();
        assert_eq!(drained.addr, specs[1].backends[1].addr);
        assert!(drained.mac.is_some());
        let mh = adopted
            .specs()
            .iter()
            .find(|s| s.sched == Scheduler::Mh)
            .unwrap();
        assert_eq!(mh.mh_table_size, 251);
    }

    #[test]
    fn entries_a_crash_left_unowned_are_cleared_by_the_first_update() {
        let (dp, specs) = history();
        let mut found = dp.writer().found(limits());
        // A service was being added: its state and a backend written, its key not yet.
        found.infos[9] = ServiceValue {
            id: 9,
            ring_len: 0,
            ..ServiceValue::default()
        };
        found.keys[40] = BackendKey {
            service: 9,
            addr: [1, 0, 0, 0],
            port: 80,
            family: FAMILY_V4,
            _pad: 0,
        };
        found.backends[40] = BackendValue {
            flags: BACKEND_F_PRESENT,
            generation: 1,
            ..BackendValue::default()
        };
        let (mut adopted, summary) = Dataplane::adopt(MemMaps::default(), &found).unwrap();
        assert_eq!(summary.stray, 2);
        assert_eq!(adopted.stray.keys.len(), 1);
        adopted.update(&specs).unwrap();
        let w = adopted.writer();
        assert_eq!(w.keys[&40], BackendKey::default());
        assert_eq!(w.backends[&40].flags, 0);
        assert_eq!(w.backends[&40].generation, 1, "its generation stays");
        assert_eq!(w.infos[&9], ServiceValue::default());
    }

    #[test]
    fn contradictions_are_refused() {
        let (dp, _) = history();
        let good = dp.writer().found(limits());
        let mut ring_names_a_stranger = good.clone();
        let (id, info) = good
            .infos
            .iter()
            .enumerate()
            .find(|(_, i)| i.ring_len > 0)
            .unwrap();
        ring_names_a_stranger.rings[info.ring_off as usize] = 63;
        let e = Dataplane::adopt(MemMaps::default(), &ring_names_a_stranger)
            .err()
            .unwrap();
        assert!(e.0.contains(&format!("service {id}'s ring")), "{e}");

        let mut past_the_end = good.clone();
        past_the_end.infos[id].ring_off = 4096;
        assert!(Dataplane::adopt(MemMaps::default(), &past_the_end).is_err());

        let mut twice = good.clone();
        let (k, r) = *twice
            .services
            .iter()
            .find(|(_, r)| r.flags & SVC_REF_F_FRAG_ONLY == 0)
            .unwrap();
        // Two keys of one id are a group's service; of two protocols, a contradiction.
        let mut other = k;
        other.port = 9999u16.to_be();
        other.proto = lb_common::PROTO_UDP;
        twice.services.push((other, r));
        let e = Dataplane::adopt(MemMaps::default(), &twice).err().unwrap();
        assert!(e.0.contains("has keys of protocol"), "{e}");

        let mut bad_sched = good.clone();
        bad_sched.infos[r.id as usize].sched = 77;
        assert!(Dataplane::adopt(MemMaps::default(), &bad_sched).is_err());

        // Empty maps: nothing to adopt, nothing wrong.
        let (empty, s) = Dataplane::adopt(MemMaps::default(), &Found::default()).unwrap();
        assert_eq!(s, Adopted::default());
        assert!(empty.specs().is_empty());
    }

    /// One write, replayed onto maps in memory.
    type Write = Box<dyn Fn(&mut MemMaps)>;

    /// Every write of an update, recorded, so that a crash after any of them can be replayed.
    #[derive(Default)]
    struct Recorder(Vec<Write>);

    impl MapWriter for Recorder {
        fn update_service(&mut self, k: &MapKey, v: &ServiceRef) -> Result<(), MapWriteError> {
            let (k, v) = (*k, *v);
            self.0
                .push(Box::new(move |m| drop(m.update_service(&k, &v))));
            Ok(())
        }
        fn delete_service(&mut self, k: &MapKey) -> Result<(), MapWriteError> {
            let k = *k;
            self.0.push(Box::new(move |m| drop(m.delete_service(&k))));
            Ok(())
        }
        fn update_service_info(&mut self, id: u32, v: &ServiceValue) -> Result<(), MapWriteError> {
            let v = *v;
            self.0
                .push(Box::new(move |m| drop(m.update_service_info(id, &v))));
            Ok(())
        }
        fn update_backend(&mut self, id: u32, v: &BackendValue) -> Result<(), MapWriteError> {
            let v = *v;
            self.0
                .push(Box::new(move |m| drop(m.update_backend(id, &v))));
            Ok(())
        }
        fn update_backend_key(&mut self, id: u32, k: &BackendKey) -> Result<(), MapWriteError> {
            let k = *k;
            self.0
                .push(Box::new(move |m| drop(m.update_backend_key(id, &k))));
            Ok(())
        }
        fn update_ring_slot(&mut self, i: u32, b: u32) -> Result<(), MapWriteError> {
            self.0
                .push(Box::new(move |m| drop(m.update_ring_slot(i, b))));
            Ok(())
        }
    }

    /// What the program and a restarted daemon can see of maps, by name rather than by id
    /// (a restarted daemon may hand out other ids, and other generations, than one that did
    /// not crash): each key's service and its state, each ring as real servers, each real
    /// server's MAC and flags.
    fn visible(m: &MemMaps) -> impl PartialEq + std::fmt::Debug {
        let name: BTreeMap<u32, MapKey> = m
            .services
            .iter()
            .filter(|(_, r)| r.flags & SVC_REF_F_FRAG_ONLY == 0)
            .map(|(k, r)| (r.id, *k))
            .collect();
        let server = |bid: &u32| {
            m.keys
                .get(bid)
                .filter(|k| k.family != 0)
                .map(|k| (name.get(&k.service).copied(), k.addr, k.port))
        };
        let services: BTreeMap<MapKey, (u32, Option<MapKey>)> = m
            .services
            .iter()
            .map(|(k, r)| (*k, (r.flags, name.get(&r.id).copied())))
            .collect();
        let infos: BTreeMap<MapKey, (ServiceValue, Vec<_>)> = name
            .iter()
            .map(|(id, key)| {
                let v = m.infos.get(id).copied().unwrap_or_default();
                let ring = (v.ring_off..v.ring_off + v.ring_len)
                    .map(|i| m.rings.get(&i).and_then(server))
                    .collect();
                (
                    *key,
                    (
                        ServiceValue {
                            id: 0,
                            ring_off: 0,
                            ..v
                        },
                        ring,
                    ),
                )
            })
            .collect();
        let mut backends: Vec<_> = m
            .keys
            .keys()
            .filter_map(|id| {
                let b = m.backends.get(id).copied().unwrap_or_default();
                server(id).map(|s| (s, b.mac, b.flags))
            })
            .collect();
        backends.sort();
        (services, infos, backends)
    }

    /// A crash after any write of an update (new services, a new VIP whose fragments-only
    /// key sorts first, a real server without a MAC yet, one gone, a service gone) leaves
    /// maps a restarted daemon adopts; updating them to the same specs gives what a daemon
    /// that never crashed wrote, and no flow of a slot's previous occupant can follow the
    /// next one.
    #[test]
    fn a_crash_after_any_write_leaves_maps_that_are_adopted_and_repaired() {
        let (dp, mut target) = history();
        let base = dp.writer().clone();
        let base_found = base.found(limits());
        target.remove(0);
        target[0].backends.push(BackendSpec {
            thresholds: Default::default(),
            addr: "[2001:db8::3]:80".parse().unwrap(),
            weight: 1,
            mac: None,
            forward: Forward::Dr,
        });
        target.push(spec(
            "192.0.2.12",
            8080,
            Scheduler::Sh,
            &[("198.51.100.7:8080", 1), ("198.51.100.8:8080", 2)],
        ));
        target.push(spec(
            "192.0.2.12",
            8443,
            Scheduler::Rr,
            &[("198.51.100.9:8443", 1)],
        ));
        // The clean run: the writes it makes, and the maps it ends with.
        let (mut rec, _) = Dataplane::adopt(Recorder::default(), &base_found).unwrap();
        rec.update(&target).unwrap();
        let ops = std::mem::take(&mut rec.writer_mut().0);
        let mut clean = base.clone();
        ops.iter().for_each(|op| op(&mut clean));
        assert!(ops.len() > 20, "{} writes", ops.len());
        for k in 0..=ops.len() {
            let mut crashed = base.clone();
            ops[..k].iter().for_each(|op| op(&mut crashed));
            let found = crashed.found(limits());
            let (mut again, _) = Dataplane::adopt(crashed, &found)
                .unwrap_or_else(|e| panic!("after {k} of {} writes: {e}", ops.len()));
            again.update(&target).unwrap();
            assert_eq!(
                visible(again.writer()),
                visible(&clean),
                "after {k} of {} writes",
                ops.len()
            );
            // A slot given to another real server has a newer generation than the previous
            // occupant's: none of its flows follows the newcomer.
            let w = again.writer();
            for (id, key) in w.keys.iter().filter(|(_, key)| key.family != 0) {
                if base.keys.get(id) != Some(key) {
                    let was = base.backends.get(id).map_or(0, |b| b.generation);
                    assert!(
                        w.backends[id].generation > was,
                        "after {k} writes: slot {id} reused with generation {} (was {was})",
                        w.backends[id].generation
                    );
                }
            }
        }
    }

    #[test]
    fn prefix_lengths_read_back() {
        for (family, p) in [
            (FAMILY_V4, 32),
            (FAMILY_V4, 24),
            (FAMILY_V4, 0),
            (FAMILY_V6, 128),
            (FAMILY_V6, 64),
            (FAMILY_V6, 48),
        ] {
            let m = super::super::prefix_mask(family, p);
            assert_eq!(prefix_of(&m, family), p, "{family} /{p}");
        }
    }

    #[test]
    fn addresses_read_back() {
        for ip in ["192.0.2.7", "2001:db8::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (w, f) = super::super::addr_words(ip);
            assert_eq!(ip_of(&w, f), Some(ip));
        }
        assert_eq!(ip_of(&[0; 4], 0), None);
    }
}
