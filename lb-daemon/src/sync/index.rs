//! Naming flows across nodes. Service and backend ids (and generations) are each daemon's
//! own (`dataplane::plan`), so the wire names a service by (protocol, VIP, port) and a
//! backend by its address, as IPVS's sync does; the [`Index`] translates both ways. It is
//! rebuilt after every dataplane update, so it never names an id the maps no longer use.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use super::codec::WireRef;
use crate::dataplane::{maps::MapWriter, Dataplane};

/// One backend of a synced service, as the sender names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SendRef {
    service: u32,
    generation: u32,
    wire: WireRef,
}

/// The translation tables of one dataplane state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// Backend id -> its service, generation and wire name (synced services only). A backend
    /// id belongs to one service (ids are per (service, real server)), so the backend id
    /// alone identifies the reference.
    send: HashMap<u32, SendRef>,
    /// (protocol, VIP, port) -> service id, synced services only.
    services: HashMap<(u8, IpAddr, u16), u32>,
    /// (service id, real server) -> (backend id, generation).
    backends: HashMap<(u32, SocketAddr), (u32, u32)>,
    /// Service id -> (idle timeout, persistence timeout), seconds (0: none).
    timeouts: HashMap<u32, (u32, u32)>,
    /// NAT real servers two service keys share (two services, or a group's entries), by
    /// backend id: a synced flow to one needs its reverse entry too (its replies are told
    /// apart by it).
    nat_shared: HashMap<u32, SocketAddr>,
}

impl Index {
    /// The index of `dp`'s current state; `synced` says which services are synced (those on
    /// the sync instance's VIPs).
    pub fn build<W: MapWriter>(
        dp: &Dataplane<W>,
        synced: impl Fn(&crate::dataplane::ServiceSpec) -> bool,
    ) -> Self {
        let mut ix = Index::default();
        let current = dp.current();
        for spec in dp.specs().iter().filter(|s| synced(s)) {
            let Some((sid, bids)) = dp.ids_of(spec) else {
                continue;
            };
            // A group's every key: a peer that lists the group in another order names the
            // service by another of them.
            ix.services
                .insert((spec.proto.number(), spec.vip, spec.port), sid);
            for &(vip, port) in &spec.aliases {
                ix.services.insert((spec.proto.number(), vip, port), sid);
            }
            ix.timeouts
                .insert(sid, (spec.idle_timeout, spec.persistence_timeout));
            for (b, bid) in spec.backends.iter().zip(bids) {
                let Some(generation) = current.backends.get(&bid).map(|v| v.generation) else {
                    continue;
                };
                ix.send.insert(
                    bid,
                    SendRef {
                        service: sid,
                        generation,
                        wire: WireRef {
                            proto: spec.proto.number(),
                            vip: spec.vip,
                            vport: spec.port,
                            rip: b.addr.ip(),
                            rport: b.addr.port(),
                        },
                    },
                );
                ix.backends.insert((sid, b.addr), (bid, generation));
                if b.forward == crate::model::Forward::Nat
                    && dp.nat_shared(spec.proto.number(), b.addr)
                {
                    ix.nat_shared.insert(bid, b.addr);
                }
            }
        }
        ix
    }

    /// The wire name of a flow's (service, backend, generation), if the service is synced
    /// and the backend is still the one the flow was created for.
    pub fn wire_ref(&self, service: u32, backend: u32, generation: u32) -> Option<&WireRef> {
        self.send
            .get(&backend)
            .filter(|r| r.service == service && r.generation == generation)
            .map(|r| &r.wire)
    }

    /// This node's service id for a wire reference's service, if it is synced here.
    pub fn service(&self, r: &WireRef) -> Option<u32> {
        self.service_at(r.proto, r.vip, r.vport)
    }

    /// This node's synced service at (protocol, VIP, port), a group's other addresses
    /// included.
    pub fn service_at(&self, proto: u8, vip: IpAddr, port: u16) -> Option<u32> {
        self.services.get(&(proto, vip, port)).copied()
    }

    /// This node's (backend id, current generation) for a wire reference's real server of
    /// service `sid`.
    pub fn backend(&self, sid: u32, r: &WireRef) -> Option<(u32, u32)> {
        self.backends
            .get(&(sid, SocketAddr::new(r.rip, r.rport)))
            .copied()
    }

    /// Whether a service id is synced here.
    /// The address and port of backend `bid` when it is a NAT real server two service keys
    /// share (port 0: a group's real server that keeps each packet's port).
    pub fn nat_shared(&self, bid: u32) -> Option<SocketAddr> {
        self.nat_shared.get(&bid).copied()
    }

    pub fn is_synced(&self, sid: u32) -> bool {
        self.timeouts.contains_key(&sid)
    }

    /// Whether an entry of service `sid` last seen `age` seconds ago is still alive (a flow
    /// by its idle timeout, a template by its persistence timeout; 0 never expires).
    pub fn alive(&self, sid: u32, age: u32, template: bool) -> bool {
        match self.timeouts.get(&sid) {
            None => false,
            Some(&(idle, persist)) => {
                let limit = if template { persist } else { idle };
                limit == 0 || age <= limit
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        dataplane::{maps::MemMaps, BackendSpec, ServiceSpec},
        model::{Limits, Proto, Scheduler},
    };

    fn spec(vip: u8, port: u16, n: u8) -> ServiceSpec {
        ServiceSpec {
            vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, vip)),
            port,
            proto: Proto::Tcp,
            sched: Scheduler::Rr,
            hash_port: false,
            sloppy_tcp: true,
            mh_table_size: lb_common::DEFAULT_MH_TABLE_SIZE,
            persistence_timeout: 0,
            persistence_prefix: 32,
            idle_timeout: 900,
            active: true,
            aliases: Vec::new(),
            backends: (0..n)
                .map(|i| BackendSpec {
                    thresholds: Default::default(),
                    addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i)), port),
                    weight: 1,
                    mac: Some([2, 0, 0, 0, 0, i]),
                    forward: crate::model::Forward::Dr,
                })
                .collect(),
        }
    }

    /// A NAT real server two services send to on the same port is shared: a synced flow to
    /// it needs its reverse entry. One that only one service sends to is not.
    #[test]
    fn shared_nat_real_servers_are_named() {
        let nat = |mut s: ServiceSpec, port: u16| {
            for b in &mut s.backends {
                b.forward = crate::model::Forward::Nat;
                b.addr.set_port(port);
            }
            s
        };
        // 192.0.2.11:8080 behind both 100:80 and 100:443; 192.0.2.12:9000 behind 200:80.
        let specs = [
            nat(spec(100, 80, 1), 8080),
            nat(spec(100, 443, 1), 8080),
            nat(spec(200, 80, 2), 9000),
        ];
        let mut dp = Dataplane::new(MemMaps::default(), Limits::default());
        dp.update(&specs).unwrap();
        let ix = Index::build(&dp, |_| true);
        for s in &specs {
            let (_, bids) = dp.ids_of(s).unwrap();
            for (b, bid) in s.backends.iter().zip(bids) {
                let shared = b.addr.port() == 8080;
                assert_eq!(ix.nat_shared(bid), shared.then_some(b.addr), "{}", b.addr);
            }
        }
    }

    /// Two nodes whose ids differ (the second added its services in another order) agree
    /// on the wire names, and translate each other's flows to their own ids.
    #[test]
    fn two_nodes_translate_each_others_ids() {
        let mut a = Dataplane::new(MemMaps::default(), Limits::default());
        let mut b = Dataplane::new(MemMaps::default(), Limits::default());
        a.update(&[spec(100, 80, 3), spec(100, 443, 3), spec(200, 80, 1)])
            .unwrap();
        b.update(&[spec(100, 443, 3)]).unwrap();
        b.update(&[spec(100, 443, 3), spec(100, 80, 3), spec(200, 80, 1)])
            .unwrap();
        let synced = |s: &ServiceSpec| s.vip == IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));
        let (ia, ib) = (Index::build(&a, synced), Index::build(&b, synced));
        let (sa, ba) = a.ids_of(&spec(100, 80, 3)).unwrap();
        let (sb, bb) = b.ids_of(&spec(100, 80, 3)).unwrap();
        assert_ne!(sa, sb, "the test wants different ids on the two nodes");
        for (bid_a, bid_b) in ba.iter().zip(&bb) {
            let gen_a = a.current().backends[bid_a].generation;
            let r = *ia.wire_ref(sa, *bid_a, gen_a).unwrap();
            assert_eq!(ib.service(&r), Some(sb));
            let gen_b = b.current().backends[bid_b].generation;
            assert_eq!(ib.backend(sb, &r), Some((*bid_b, gen_b)));
            // A stale generation or another service's id names nothing.
            assert!(ia.wire_ref(sa, *bid_a, gen_a + 1).is_none());
            assert!(ia.wire_ref(sa + 1, *bid_a, gen_a).is_none());
        }
        // The service that is not synced is in neither direction.
        let (s200, b200) = a.ids_of(&spec(200, 80, 1)).unwrap();
        let g = a.current().backends[&b200[0]].generation;
        assert!(ia.wire_ref(s200, b200[0], g).is_none());
        assert!(!ia.is_synced(s200) && ia.is_synced(sa));
    }
}
