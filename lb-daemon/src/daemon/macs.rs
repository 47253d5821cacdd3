//! The real servers' MAC addresses: what the neighbour resolver watches, what it last
//! said, and which addresses nobody has answered for.
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    dataplane::neigh::{MacResolver, MacResolverConfig, MacUpdate},
    model::Mac,
    netlink::neigh::NeighError,
};

/// How long a backend may stay without a MAC before the daemon says so.
const MAC_WARN_AFTER: Duration = Duration::from_secs(5);

/// After the dataplane moved to another interface, how long a MAC known on the old one
/// stands while the resolver, which withdraws every address it watched on the old
/// interface, resolves it on the new one: a backend without a MAC takes no flows, and
/// its established ones would go to the stack.
const MOVE_GRACE: Duration = Duration::from_secs(10);

pub(super) struct Macs {
    /// Every resolved address.
    pub known: HashMap<IpAddr, [u8; 6]>,
    /// Backends without a MAC: since when, and whether that has been logged.
    unresolved: HashMap<IpAddr, (Instant, bool)>,
    /// The interface the real servers are reached through.
    ifindex: u32,
    wanted_tx: watch::Sender<HashMap<IpAddr, u32>>,
    resolver: JoinHandle<Result<(), NeighError>>,
    /// Until when a withdrawal of a MAC known before a move is ignored ([`MOVE_GRACE`]),
    /// and the addresses resolved since the move: the others' MACs go when it ends.
    moved_until: Option<Instant>,
    confirmed: std::collections::HashSet<IpAddr>,
    /// For those withdrawals: they go the way the resolver's updates do.
    updates: mpsc::Sender<MacUpdate>,
}

impl Macs {
    /// Starts resolving `config`'s real servers on `ifindex`; updates arrive on the receiver.
    pub(super) fn start(
        config: &Config,
        ifindex: u32,
    ) -> Result<(Self, mpsc::Receiver<MacUpdate>)> {
        let (wanted_tx, wanted_rx) = watch::channel(wanted(config, ifindex));
        let (mac_tx, mac_rx) = mpsc::channel::<MacUpdate>(1024);
        let resolver = MacResolver::new(MacResolverConfig::default())?;
        let mac_tx_for_moves = mac_tx.clone();
        let resolver = tokio::spawn(resolver.run(wanted_rx, mac_tx));
        Ok((
            Macs {
                known: HashMap::new(),
                unresolved: HashMap::new(),
                ifindex,
                wanted_tx,
                resolver,
                moved_until: None,
                confirmed: Default::default(),
                updates: mac_tx_for_moves,
            },
            mac_rx,
        ))
    }

    /// Takes in what the resolver said about one address.
    pub(super) fn update(&mut self, u: MacUpdate) {
        match u.mac {
            Some(mac) => {
                info!(backend = %u.addr, mac = %Mac(mac), "backend MAC resolved");
                self.known.insert(u.addr, mac);
                if self.moved_until.is_some() {
                    self.confirmed.insert(u.addr);
                }
            }
            None if self.known.contains_key(&u.addr)
                && self.moved_until.is_some_and(|t| Instant::now() < t) =>
            {
                debug!(backend = %u.addr, "backend MAC withdrawn by the move: kept until resolved on the new interface");
            }
            None => {
                warn!(backend = %u.addr, "backend MAC unknown: no new flows to it");
                self.known.remove(&u.addr);
                // Said once already: no second warning from the tick.
                self.unresolved.insert(u.addr, (Instant::now(), true));
            }
        }
    }

    /// Resolves on interface `ifindex` from now on (the dataplane moved). The MACs known
    /// stay until the resolver reports the new interface's: on the same segment they are
    /// the same, and a real server without a MAC would take no flows meanwhile.
    pub(super) fn move_to(&mut self, config: &Config, ifindex: u32) {
        self.ifindex = ifindex;
        self.moved_until = Some(Instant::now() + MOVE_GRACE);
        self.confirmed.clear();
        self.retarget(config);
    }

    /// The interface it resolves on.
    pub(super) fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Watches the addresses of `config` from now on.
    pub(super) fn retarget(&mut self, config: &Config) {
        let want = wanted(config, self.ifindex);
        // The resolver says nothing about addresses it stops watching; a MAC kept for one
        // could go stale unnoticed if it came back.
        self.known.retain(|ip, _| want.contains_key(ip));
        let _ = self.wanted_tx.send(want);
    }

    /// Logs, once, each backend whose MAC the kernel has not resolved for
    /// [`MAC_WARN_AFTER`]: an address no host answers ARP or neighbour solicitation for (a
    /// typo, a server down, another segment) would otherwise be a silent hole in the pool.
    /// Such a backend gets no new flows (status: `mac` null, effective weight 0).
    pub(super) fn warn_unresolved(&mut self, interface: &str, now: Instant) {
        // A move's grace is over: MACs not resolved on the new interface are withdrawn
        // (through the main loop, which plans them out).
        if self.moved_until.is_some_and(|t| now >= t) {
            self.moved_until = None;
            for addr in self.known.keys().filter(|a| !self.confirmed.contains(a)) {
                let _ = self.updates.try_send(MacUpdate {
                    addr: *addr,
                    mac: None,
                });
            }
            self.confirmed.clear();
        }
        let wanted = self.wanted_tx.borrow().clone();
        let known = &self.known;
        self.unresolved
            .retain(|ip, _| wanted.contains_key(ip) && !known.contains_key(ip));
        for ip in wanted.keys().filter(|ip| !known.contains_key(*ip)) {
            let (since, warned) = self.unresolved.entry(*ip).or_insert((now, false));
            if !*warned && now.duration_since(*since) >= MAC_WARN_AFTER {
                *warned = true;
                warn!(
                    backend = %ip,
                    interface,
                    "backend MAC not resolved after {}s: no host answers ARP/neighbour \
                     solicitation for it; it gets no new flows until one does",
                    MAC_WARN_AFTER.as_secs()
                );
            }
        }
    }

    /// Resolves when the resolver task ends (it never should).
    pub(super) async fn resolver_done(
        &mut self,
    ) -> Result<Result<(), NeighError>, tokio::task::JoinError> {
        (&mut self.resolver).await
    }
}

/// The set of backend addresses to resolve, with the interface they are reached through.
fn wanted(config: &Config, ifindex: u32) -> HashMap<IpAddr, u32> {
    config
        .virtual_servers
        .iter()
        .flat_map(|vs| {
            let sorry = vs
                .sorry_server
                .filter(|_| vs.sorry_forward.is_dr())
                .map(|a| a.ip());
            // A TUN or NAT real server needs no MAC: its next hop is the FIB's.
            vs.real_servers
                .iter()
                .filter(|rs| rs.forward.is_dr())
                .map(|rs| rs.addr.ip())
                .chain(sorry)
        })
        .map(|ip| (ip, ifindex))
        .collect()
}
