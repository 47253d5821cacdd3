//! The dataplane's view of the daemon's state, kept written: each service's spec and quorum
//! are computed again only when something they depend on moved (a reload's changes, a
//! health verdict, a MAC, a VRRP role), and only changed map entries are written.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Instant,
};

use anyhow::Result;

use super::{
    macs::Macs,
    overrides::Overrides,
    quorum::Quorum,
    reconcile::{service_spec, HealthOf},
    xdp::Xdp,
    Health,
};
use crate::{
    config::{Config, RealServer, VirtualServer},
    dataplane::{plan::PlanError, ServiceSpec},
    model::{Forward, Limits, ServiceKey},
    vrrp::track::TrackEvent,
};

/// A real server's verdict as the dataplane plans it (up, dynamic weight; `None`: none
/// yet): its checks' (`health`), with the operator's runtime override on top.
pub(super) fn verdict_of(
    health: &Health,
    overrides: &Overrides,
    vs: &VirtualServer,
    rs: &RealServer,
) -> Option<(bool, Option<u32>)> {
    let key = vs.key();
    let checked = health.get(&(key, rs.addr)).map(|h| (h.up, h.weight));
    overrides.verdict(&key, rs, checked)
}

/// [`Dp::plan_service`]'s result: the quorum it had and has, the healthy weight, the spec.
struct PlannedService {
    had: Option<bool>,
    has: bool,
    healthy: u32,
    spec: ServiceSpec,
}

/// A service's dataplane view and quorum, and the configuration they were computed from.
#[derive(Clone)]
struct DerivedService {
    vs: Arc<VirtualServer>,
    quorum: bool,
    spec: ServiceSpec,
}

type Derived = HashMap<ServiceKey, DerivedService, foldhash::fast::RandomState>;

/// The XDP side of a running daemon and what it serves from.
pub(super) struct Dp {
    pub xdp: Xdp,
    pub macs: Macs,
    pub quorum: Quorum,
    /// Each service's dataplane view and quorum (keepalived's `quorum`, with hysteresis),
    /// as last applied, with the configuration it came from: an apply computes again only
    /// the services whose configuration is another one (a reload's changes) or that are
    /// stale. At 10,000 services, computing all of them took tens of milliseconds.
    derived: Derived,
    /// The specs of the last apply, in its order (see [`Dp::apply_once`]).
    applied: Vec<ServiceSpec>,
    /// Every service is to be computed again (see [`Dp::all_stale`]).
    all_stale: bool,
    /// These services are to be computed again (see [`Dp::stale`]).
    stale: HashSet<ServiceKey>,
    /// `lvs_timeouts` as the program has them (none before the first apply): a change
    /// rewrites `TIMEOUTS` and computes every service again (their idle timeouts follow).
    lvs: Option<crate::model::LvsTimeouts>,
    /// The interface's primary IPv4 and IPv6 addresses: the outer source of a TUN real
    /// server's packets where its virtual_server names no `tunnel_source`.
    tunnel_sources: [Option<IpAddr>; 2],
}

impl Dp {
    pub(super) fn new(xdp: Xdp, macs: Macs, now: Instant) -> Self {
        Dp {
            xdp,
            macs,
            quorum: Quorum::new(now),
            derived: Derived::default(),
            applied: Vec::new(),
            all_stale: true,
            stale: HashSet::new(),
            lvs: None,
            tunnel_sources: [None; 2],
        }
    }

    /// Reads the interface's primary addresses again (at start, at a reload, after a move):
    /// what a TUN real server's outer header comes from by default. A change computes every
    /// service again (and says so).
    pub(super) async fn refresh_tunnel_sources(&mut self, config: &Config) -> bool {
        // The program's FIB lookups refuse an interface that does not forward: every
        // tunnelled or NAT packet would be dropped (`drop_no_route`). Said at start and at
        // each reload; the operator decides (the daemon changes no sysctl of the node's own).
        if let Some(d) = &config.dataplane {
            for (v4, family) in [(true, "ipv4"), (false, "ipv6")] {
                let wanted = config
                    .virtual_servers
                    .iter()
                    .any(|vs| vs.vip.is_ipv4() == v4 && vs.forwards().any(|f| !f.is_dr()));
                for iface in std::iter::once(&d.interface).chain(&d.inside_interfaces) {
                    let key = format!("/proc/sys/net/{family}/conf/{iface}/forwarding");
                    let on = std::fs::read_to_string(&key).is_ok_and(|v| v.trim() != "0");
                    if wanted && !on {
                        tracing::warn!(
                            "TUN and NAT real servers of {family} need forwarding on {iface} \
                             ({key} = 1): the program's FIB lookups refuse it otherwise, and \
                             their packets are dropped (drop_no_route)",
                        );
                    }
                }
            }
        }
        if !config
            .virtual_servers
            .iter()
            .any(|vs| vs.forwards().any(|f| f.tunnel().is_some()))
        {
            return false;
        }
        let listed = match crate::netlink::addr::AddressSocket::open() {
            Ok(mut sock) => sock.list(Some(self.xdp.ifindex)).await,
            Err(e) => Err(e),
        };
        let addrs = match listed {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("reading the interface's addresses for the tunnels' source: {e}");
                return false;
            }
        };
        let vips: HashSet<IpAddr> = config
            .virtual_servers
            .iter()
            .flat_map(|vs| vs.addresses().map(|(vip, _)| vip))
            .chain(
                config
                    .vrrp_instances
                    .iter()
                    .flat_map(|i| i.virtual_ipaddress.iter().map(|v| v.addr)),
            )
            .collect();
        let sources = primary_addresses(&addrs, &vips);
        if sources != self.tunnel_sources {
            tracing::info!(v4 = ?sources[0], v6 = ?sources[1], "tunnels' source addresses");
            self.tunnel_sources = sources;
            self.all_stale = true;
            return true;
        }
        false
    }

    /// [`Dp::apply`], growing the maps when the plan needs more room (or `[dataplane]`'s
    /// reserve asks for it) and trying again.
    pub(super) async fn apply(
        &mut self,
        config: &Config,
        master_vips: &HashSet<IpAddr>,
        health: &Health,
        overrides: &Overrides,
    ) -> Result<()> {
        if !self.xdp.dp.limits().covers(&self.xdp.reserve) {
            let reserve = self.xdp.reserve;
            self.xdp.grow(reserve).await?;
        }
        match self.apply_once(config, master_vips, health, overrides) {
            Err(PlanError::NoRoom { needs, .. }) => {
                let to = Limits::with_headroom(needs).max(self.xdp.reserve);
                self.xdp.grow(to).await?;
                Ok(self.apply_once(config, master_vips, health, overrides)?)
            }
            r => Ok(r?),
        }
    }

    fn apply_once(
        &mut self,
        config: &Config,
        master_vips: &HashSet<IpAddr>,
        health: &Health,
        overrides: &Overrides,
    ) -> Result<(), PlanError> {
        let health_of = |vs: &VirtualServer, rs: &RealServer| verdict_of(health, overrides, vs, rs);
        let serving = serving(config, master_vips);
        let master_vips = &*serving;
        let lvs = config.global_defs.lvs_timeouts();
        if self.lvs != Some(lvs) {
            if let Err(e) = self.xdp.dp.writer_mut().set_timeouts(&lvs.per_state()) {
                tracing::error!("writing the connection timeouts: {e}");
            } else {
                self.lvs = Some(lvs);
            }
            self.all_stale = true;
        }
        let all_stale = std::mem::take(&mut self.all_stale);
        let stale = std::mem::take(&mut self.stale);
        // The last apply's specs, where a kept service at the same place is already right
        // (cloning 10,000 specs of 10 real servers was a third of a reload's planning).
        let mut specs = std::mem::take(&mut self.applied);
        specs.truncate(config.virtual_servers.len());
        let put = |specs: &mut Vec<crate::dataplane::ServiceSpec>,
                   i: usize,
                   spec: &crate::dataplane::ServiceSpec| {
            match specs.get_mut(i) {
                Some(s) => s.clone_from(spec),
                None => specs.push(spec.clone()),
            }
        };
        // Which specs are the ones last applied (see `Dataplane::update_known`).
        let mut same = Vec::with_capacity(config.virtual_servers.len());
        // The services computed again, taken in once the maps have them.
        let mut fresh = Vec::new();
        let mut quorum_moved = false;
        for (i, vs) in config.virtual_servers.iter().enumerate() {
            let key = vs.key();
            let kept = self
                .derived
                .get(&key)
                .filter(|d| !all_stale && Arc::ptr_eq(&d.vs, vs) && !stale.contains(&key));
            same.push(kept.is_some());
            match kept {
                Some(d) => {
                    let here = specs.get(i).is_some_and(|s| s.key() == key);
                    if !here {
                        put(&mut specs, i, &d.spec);
                    }
                }
                None => {
                    let d = self.derive(vs, master_vips, &health_of);
                    quorum_moved |= self.derived.get(&key).map(|old| old.quorum) != Some(d.quorum);
                    put(&mut specs, i, &d.spec);
                    fresh.push((key, d));
                }
            }
        }
        let result = self.xdp.dp.update_known(&specs, &same);
        if result.is_ok() {
            // New and changed count-based services get their candidates now, not at the
            // next round.
            self.xdp.rank();
        }
        // Whatever the result: after a failure every service is computed again (below),
        // so nothing here is taken for right.
        self.applied = specs;
        if result.is_ok() {
            self.derived.extend(fresh);
            if self.derived.len() > config.virtual_servers.len() {
                // Services were removed.
                let now: HashSet<ServiceKey> =
                    config.virtual_servers.iter().map(|vs| vs.key()).collect();
                self.derived.retain(|k, _| now.contains(k));
                quorum_moved = true;
            }
            self.quorum.moved |= quorum_moved;
        } else {
            // Nothing was taken in: all of it is computed again next time.
            self.all_stale = true;
        }
        if let Some(s) = &self.xdp.sync {
            // Sync names flows by the ids the maps hold now.
            s.set_index(crate::sync::index_for(config, &self.xdp.dp));
        }
        result
    }

    /// A service's dataplane view (see [`service_specs`]) and its quorum, logging a
    /// quorum lost or regained.
    fn derive(
        &mut self,
        vs: &Arc<VirtualServer>,
        master_vips: &HashSet<IpAddr>,
        health_of: &HealthOf,
    ) -> DerivedService {
        let planned = self.plan_service(vs, master_vips, health_of);
        self.quorum
            .log(vs, planned.had, planned.has, planned.healthy);
        DerivedService {
            vs: vs.clone(),
            quorum: planned.has,
            spec: planned.spec,
        }
    }

    /// A service's quorum (keepalived's, with hysteresis, from what it had) and its spec, as
    /// the state stands; nothing moved or logged.
    fn plan_service(
        &self,
        vs: &VirtualServer,
        master_vips: &HashSet<IpAddr>,
        health_of: &HealthOf,
    ) -> PlannedService {
        // The healthy weight: real servers that pass their checks and can be sent to.
        let healthy: u32 = vs
            .real_servers
            .iter()
            .filter(|rs| match &rs.forward {
                Forward::Tun(t) => {
                    t.source.is_some()
                        || self.tunnel_sources[usize::from(rs.addr.is_ipv6())].is_some()
                }
                Forward::Nat => true,
                Forward::Dr => self.macs.known.contains_key(&rs.addr.ip()),
            })
            .filter_map(|rs| rs.healthy_weight(health_of(vs, rs)))
            .fold(0u32, u32::saturating_add);
        let had = self.derived.get(&vs.key()).map(|d| d.quorum);
        let has = vs.quorum_next(had.unwrap_or(true), healthy);
        let mut spec = service_spec(
            vs,
            &self.lvs.unwrap_or_default(),
            |ip| self.macs.known.get(&ip).copied(),
            master_vips,
            health_of,
            has,
        );
        // A TUN real server without its virtual_server's `tunnel_source` sends from the
        // interface's primary address; none known, the plan leaves it unusable.
        for b in &mut spec.backends {
            if let crate::model::Forward::Tun(t) = &mut b.forward {
                if t.source.is_none() {
                    t.source = self.tunnel_sources[usize::from(b.addr.is_ipv6())];
                }
                // Still none: unusable, out of the ring (its flows reschedule).
                if t.source.is_none() {
                    b.mac = None;
                }
            }
        }
        PlannedService {
            had,
            has,
            healthy,
            spec,
        }
    }

    /// What [`Dp::apply`] would plan for `config` now, changing nothing (no quorum is
    /// moved or logged): `lb-daemon diff`'s specs.
    pub(super) fn specs_for(
        &self,
        config: &Config,
        master_vips: &HashSet<IpAddr>,
        health: &Health,
        overrides: &Overrides,
    ) -> Vec<ServiceSpec> {
        let health_of = |vs: &VirtualServer, rs: &RealServer| verdict_of(health, overrides, vs, rs);
        let serving = serving(config, master_vips);
        let master_vips = &*serving;
        config
            .virtual_servers
            .iter()
            .map(|vs| self.plan_service(vs, master_vips, &health_of).spec)
            .collect()
    }

    /// Every service is computed again at the next apply (VIPs changed hands, MACs moved).
    pub(super) fn all_stale(&mut self) {
        self.all_stale = true;
        // Whether a service's MACs are all known decides when its quorum is first told.
        self.quorum.moved = true;
    }

    /// These services are computed again at the next apply (their health changed).
    pub(super) fn stale(&mut self, services: impl IntoIterator<Item = ServiceKey>) {
        self.stale.extend(services);
    }

    /// Whether `vs` may draw traffic here (`[announce]`): its quorum as last planned, once
    /// that can be trusted: every DR real server's MAC known, or the settling time of the
    /// first verdicts passed (a MAC that never comes: a host that is down). `None`: not yet
    /// (or not planned yet). A node that announced at its first MAC would draw flows the
    /// router moves to it before it can send them where they belong.
    pub(super) fn may_announce(&self, vs: &VirtualServer, now: Instant) -> Option<bool> {
        let quorum = self.derived.get(&vs.key())?.quorum;
        if !quorum {
            return Some(false);
        }
        let macs = vs
            .real_servers
            .iter()
            .filter(|rs| rs.forward.is_dr())
            .all(|rs| self.macs.known.contains_key(&rs.addr.ip()));
        (macs || self.quorum.settled(now)).then_some(true)
    }

    /// The quorum changes `track_virtual_server` has not heard of yet.
    pub(super) fn quorum_events(&mut self, config: &Config, now: Instant) -> Vec<TrackEvent> {
        let derived = &self.derived;
        let known = &self.macs.known;
        self.quorum.events(
            config,
            |key| derived.get(key).map(|d| d.quorum),
            |ip| known.contains_key(&ip),
            now,
        )
    }
}

/// The VIPs whose services this node serves: its master instances' (`master_vips`) and,
/// under `[announce]`, the announced ones, which every node serves whether its route is
/// announced or not (a flow the router still sends here, or one a peer synced, keeps going).
fn serving<'a>(
    config: &Config,
    master_vips: &'a HashSet<IpAddr>,
) -> std::borrow::Cow<'a, HashSet<IpAddr>> {
    match &config.announce {
        None => std::borrow::Cow::Borrowed(master_vips),
        Some(a) => {
            let mut all = master_vips.clone();
            all.extend(a.vips.iter().copied());
            std::borrow::Cow::Owned(all)
        }
    }
}

/// The interface's primary IPv4 and IPv6 addresses among `addrs`: the first of each family
/// of global scope that is no VIP, no secondary (IPv4) and usable (IPv6: not tentative).
fn primary_addresses(
    addrs: &[crate::netlink::addr::InterfaceAddress],
    vips: &HashSet<IpAddr>,
) -> [Option<IpAddr>; 2] {
    use crate::netlink::addr::{IFA_F_SECONDARY, RT_SCOPE_UNIVERSE};
    let pick = |v4: bool| {
        addrs
            .iter()
            .filter(|a| a.addr.is_ipv4() == v4 && a.scope == RT_SCOPE_UNIVERSE && !a.deleted)
            .filter(|a| !vips.contains(&a.addr) && !a.is_tentative())
            .filter(|a| !v4 || a.flags & IFA_F_SECONDARY == 0)
            .map(|a| a.addr)
            .next()
    };
    [pick(true), pick(false)]
}

#[cfg(test)]
mod tunnel_source_tests {
    use super::*;
    use crate::netlink::addr::{
        InterfaceAddress, IFA_F_SECONDARY, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE,
    };

    fn a(addr: &str, flags: u32, scope: u8) -> InterfaceAddress {
        InterfaceAddress {
            ifindex: 2,
            addr: addr.parse().unwrap(),
            prefix_len: 24,
            label: None,
            flags,
            scope,
            deleted: false,
        }
    }

    #[test]
    fn the_first_global_address_of_each_family_that_is_no_vip() {
        let vips: HashSet<IpAddr> = ["192.0.2.100".parse().unwrap()].into();
        let addrs = [
            a("fe80::1", 0, RT_SCOPE_LINK),
            a("192.0.2.100", 0, RT_SCOPE_UNIVERSE),
            a("192.0.2.7", IFA_F_SECONDARY, RT_SCOPE_UNIVERSE),
            a("192.0.2.2", 0, RT_SCOPE_UNIVERSE),
            a("2001:db8::2", 0, RT_SCOPE_UNIVERSE),
        ];
        assert_eq!(
            primary_addresses(&addrs, &vips),
            [
                Some("192.0.2.2".parse().unwrap()),
                Some("2001:db8::2".parse().unwrap())
            ]
        );
        assert_eq!(primary_addresses(&addrs[..2], &vips), [None, None]);
    }
}
