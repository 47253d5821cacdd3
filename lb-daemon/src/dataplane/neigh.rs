//! Backend MAC addresses from the kernel neighbour table, over rtnetlink.
//!
//! In direct-routing mode the XDP program forwards a client packet to a backend by
//! rewriting only the Ethernet destination MAC (the IP header still carries the VIP).
//! It therefore needs, for every backend IP, the backend's current MAC. Rather than
//! speaking ARP/NDP ourselves we let the kernel do it and read its neighbour table:
//! the kernel already implements retransmission, NUD state tracking, gratuitous ARP
//! and unsolicited NA handling, and the operator can inspect everything with
//! `ip neigh`.
//!
//! The messages and their socket are on the ground floor ([`crate::netlink::neigh`]); here
//! is **[`MacResolver`]**, the daemon-facing task. It keeps the MACs of a wanted set of
//!    backends current and reports changes as [`MacUpdate`]s over an `mpsc` channel.
//!    Its decisions live in the pure [`MacTable`], which is unit-tested separately.
//!
//! # How resolution is triggered
//!
//! An `RTM_NEWNEIGH` request with `NTF_USE` in `ndm_flags` makes `neigh_add()`
//! (net/core/neighbour.c) create the entry if needed (`NLM_F_CREATE`) and call
//! `neigh_event_send()`, exactly what the stack does when it has a packet to send:
//! a `NONE`/`FAILED` entry goes to `INCOMPLETE` and is probed with broadcast ARP /
//! multicast NS, a `STALE` entry goes to `DELAY` → `PROBE` and is re-verified with
//! unicast probes, and `REACHABLE` entries are left alone. With `NTF_USE`,
//! `__neigh_update()` ignores `ndm_state` (it only sets `new = old & ~NUD_PERMANENT`),
//! so we send `NUD_NONE`; the only other use of `ndm_state` there is the
//! "exempt from GC" decision on creation, which must stay off.
//!
//! # Why periodic refreshes
//!
//! Frames forwarded by XDP never pass through the neighbour subsystem, so nothing
//! confirms or refreshes the entry: it decays from `REACHABLE` to `STALE` and stays
//! there, and a backend whose MAC changed (NIC swap, VM re-created with the same IP,
//! failover) would go unnoticed forever. The resolver therefore re-sends `NTF_USE`
//! every [`MacResolverConfig::refresh_interval`], which moves a `STALE` entry through
//! `DELAY`/`PROBE`: either the backend answers a unicast probe (entry `REACHABLE`
//! again) or the entry goes `FAILED`, we report "no MAC" and re-resolve from scratch
//! with broadcast probes, learning the new MAC.
//!
//! # `NUD_PERMANENT` entries are never touched
//!
//! For `NTF_USE` requests `__neigh_update()` executes `new = old & ~NUD_PERMANENT`
//! (6.18 source; the line came with the `NTF_MANAGED` rework): sending one for a static
//! entry configured with `ip neigh add ... nud permanent` turns it into a dynamic one
//! and starts probing. Verified on 6.18: the entry went from `PERMANENT` with its MAC
//! to `INCOMPLETE` without one. The resolver therefore never requests resolution for an
//! entry the kernel reports as `PERMANENT` or `NOARP`, and it only sends requests once
//! it has dumped the table and knows the current state.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, trace, warn};

use crate::model::Mac;
use crate::netlink::{neigh::*, NetlinkError};

// ---------------------------------------------------------------------------------
// Resolver
// ---------------------------------------------------------------------------------

/// A change of a wanted backend's usable MAC, as decided by [`usable_mac`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacUpdate {
    /// Backend address.
    pub addr: IpAddr,
    /// New MAC, or `None` when the kernel no longer has a usable one (resolution
    /// failed, entry deleted, or still unresolved after the ifindex changed).
    pub mac: Option<[u8; 6]>,
}

/// Timing of [`MacResolver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacResolverConfig {
    /// How often a resolved backend is re-verified (`NTF_USE` on the entry). XDP
    /// traffic never refreshes kernel entries, so this bounds how long a changed
    /// backend MAC can go unnoticed (plus the kernel's DELAY/PROBE time, ~8 s with
    /// default sysctls).
    pub refresh_interval: Duration,
    /// First retry delay for a backend without a usable MAC; doubled after every
    /// unsuccessful attempt up to `max_retry_interval`. A dead backend thus costs a
    /// few ARP/NS broadcasts every `max_retry_interval`, not a flood.
    pub retry_interval: Duration,
    /// Upper bound of the retry back-off.
    pub max_retry_interval: Duration,
    /// Time limit for one netlink request (dump or resolution request).
    pub request_timeout: Duration,
}

impl Default for MacResolverConfig {
    fn default() -> Self {
        MacResolverConfig {
            refresh_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Per-backend state of [`MacTable`].
#[derive(Debug, Clone)]
struct Tracked {
    ifindex: u32,
    /// Last kernel state; `None` = no entry in the kernel table (or not known yet).
    state: Option<u16>,
    /// Last MAC reported to the consumer.
    mac: Option<[u8; 6]>,
    /// When to send the next resolution request.
    next_request: Instant,
    /// Consecutive requests that did not yield a usable MAC (drives the back-off).
    attempts: u32,
}

impl Tracked {
    fn new(ifindex: u32, now: Instant) -> Self {
        Tracked {
            ifindex,
            state: None,
            mac: None,
            next_request: now,
            attempts: 0,
        }
    }
}

/// The decision logic of [`MacResolver`], free of I/O and clocks (the caller passes
/// `now`), so it can be tested exhaustively.
///
/// It tracks the wanted backends (address → ifindex), folds kernel neighbour events
/// into per-backend state, says which changes must be reported, and schedules
/// resolution requests.
#[derive(Debug, Clone)]
pub struct MacTable {
    config: MacResolverConfig,
    entries: HashMap<IpAddr, Tracked>,
}

impl MacTable {
    /// An empty table.
    pub fn new(config: MacResolverConfig) -> Self {
        MacTable {
            config,
            entries: HashMap::new(),
        }
    }

    /// The usable MAC last reported for `addr`.
    pub fn mac(&self, addr: &IpAddr) -> Option<[u8; 6]> {
        self.entries.get(addr).and_then(|t| t.mac)
    }

    /// All wanted backends that currently have a usable MAC.
    pub fn macs(&self) -> HashMap<IpAddr, [u8; 6]> {
        self.entries
            .iter()
            .filter_map(|(addr, t)| t.mac.map(|mac| (*addr, mac)))
            .collect()
    }

    /// Replace the wanted set (backend address → ifindex it is reached through).
    ///
    /// Returns the updates to report and whether new addresses were added (their
    /// kernel state is unknown until the next dump, and no resolution request may be
    /// sent before it: see the module docs on `PERMANENT` entries). Removed backends
    /// are dropped silently: the consumer removed them itself. A backend whose ifindex
    /// changed starts over and reports `None` if it had a MAC.
    pub fn set_wanted(
        &mut self,
        wanted: &HashMap<IpAddr, u32>,
        now: Instant,
    ) -> (Vec<MacUpdate>, bool) {
        self.entries.retain(|addr, _| wanted.contains_key(addr));
        let mut updates = Vec::new();
        let mut added = false;
        for (&addr, &ifindex) in wanted {
            match self.entries.get_mut(&addr) {
                Some(t) if t.ifindex == ifindex => {}
                Some(t) => {
                    if t.mac.is_some() {
                        updates.push(MacUpdate { addr, mac: None });
                    }
                    *t = Tracked::new(ifindex, now);
                    added = true;
                }
                None => {
                    self.entries.insert(addr, Tracked::new(ifindex, now));
                    added = true;
                }
            }
        }
        updates.sort_by_key(|u| u.addr);
        (updates, added)
    }

    /// Fold one kernel event into the table; returns the update to report, if the
    /// usable MAC of a wanted backend changed. Events for other addresses, or for the
    /// wanted address on another interface, are ignored.
    pub fn apply(&mut self, ev: &NeighEvent, now: Instant) -> Option<MacUpdate> {
        let retry_interval = self.config.retry_interval;
        let refresh_interval = self.config.refresh_interval;
        let max_retry = self.config.max_retry_interval;
        let t = self.entries.get_mut(&ev.addr)?;
        if t.ifindex != ev.ifindex {
            return None;
        }
        t.state = (!ev.deleted).then_some(ev.state);
        let mac = usable_mac(ev);
        match (t.mac, mac) {
            (None, Some(_)) => {
                // Resolved: next check after a full refresh period.
                t.attempts = 0;
                t.next_request = now + refresh_interval;
            }
            (_, None) => {
                // Failed or gone: retry soon (unless a retry is already due sooner).
                let retry = now + backoff(retry_interval, max_retry, t.attempts);
                t.next_request = t.next_request.min(retry);
            }
            (Some(_), Some(_)) => {}
        }
        if t.mac == mac {
            return None;
        }
        t.mac = mac;
        Some(MacUpdate { addr: ev.addr, mac })
    }

    /// Replace the table's view with a complete dump: apply every entry, and treat
    /// wanted backends absent from the dump as deleted (their deletion event may have
    /// been lost together with the events that made us re-dump).
    pub fn apply_dump(&mut self, dump: &[NeighEvent], now: Instant) -> Vec<MacUpdate> {
        let mut updates = Vec::new();
        let mut seen = HashSet::new();
        for ev in dump {
            if self
                .entries
                .get(&ev.addr)
                .is_some_and(|t| t.ifindex == ev.ifindex)
            {
                seen.insert(ev.addr);
            }
            updates.extend(self.apply(ev, now));
        }
        let mut missing: Vec<(IpAddr, u32)> = self
            .entries
            .iter()
            .filter(|(addr, _)| !seen.contains(*addr))
            .map(|(addr, t)| (*addr, t.ifindex))
            .collect();
        missing.sort();
        for (addr, ifindex) in missing {
            let gone = NeighEvent {
                ifindex,
                addr,
                mac: None,
                state: NUD_NONE,
                deleted: true,
            };
            updates.extend(self.apply(&gone, now));
        }
        updates
    }

    /// The `(ifindex, addr)` pairs due for a resolution request at `now`, sorted, and
    /// reschedule them: resolved ones after `refresh_interval`, unresolved ones with
    /// exponential back-off. `PERMANENT` and `NOARP` entries are never requested
    /// (`NTF_USE` would strip `PERMANENT`, and `NOARP` needs no resolution); they are
    /// looked at again after `refresh_interval`.
    pub fn due_requests(&mut self, now: Instant) -> Vec<(u32, IpAddr)> {
        let config = &self.config;
        let mut due = Vec::new();
        for (addr, t) in &mut self.entries {
            if t.next_request > now {
                continue;
            }
            if t.state
                .is_some_and(|s| s & (NUD_PERMANENT | NUD_NOARP) != 0)
            {
                t.next_request = now + config.refresh_interval;
                continue;
            }
            due.push((t.ifindex, *addr));
            if t.mac.is_some() {
                t.next_request = now + config.refresh_interval;
            } else {
                t.next_request =
                    now + backoff(config.retry_interval, config.max_retry_interval, t.attempts);
                t.attempts = t.attempts.saturating_add(1);
            }
        }
        due.sort();
        due
    }

    /// When [`due_requests`](Self::due_requests) next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.values().map(|t| t.next_request).min()
    }
}

/// `base * 2^attempts`, capped at `max` (and at least `base`).
fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max.max(base))
}

/// Keeps the MACs of the wanted backends current and reports changes.
///
/// ```ignore
/// let (wanted_tx, wanted_rx) = watch::channel(HashMap::from([(backend_ip, ifindex)]));
/// let (updates_tx, mut updates_rx) = mpsc::channel(256);
/// let resolver = MacResolver::new(MacResolverConfig::default())?;
/// tokio::spawn(resolver.run(wanted_rx, updates_tx));
/// while let Some(MacUpdate { addr, mac }) = updates_rx.recv().await {
///     // write / delete the backend's MAC in the XDP map
/// }
/// ```
///
/// Protocol: subscribe to neighbour events first, then dump (so no change can fall
/// between the dump and the subscription), then send `NTF_USE` requests for the
/// wanted backends as scheduled by [`MacTable`]. Lost events (`ENOBUFS`) and
/// additions to the wanted set trigger a re-dump.
#[derive(Debug)]
pub struct MacResolver {
    events: NeighSocket,
    control: NeighSocket,
    table: MacTable,
    config: MacResolverConfig,
}

impl MacResolver {
    /// Open the event and request sockets, in the network namespace of the calling
    /// thread.
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O and time enabled.
    pub fn new(config: MacResolverConfig) -> Result<Self, NeighError> {
        // Subscribe before the first dump, so every change after the dump's snapshot
        // also shows up as an event.
        let events = NeighSocket::subscribe()?;
        let control = NeighSocket::open()?;
        Ok(MacResolver {
            events,
            control,
            table: MacTable::new(config.clone()),
            config,
        })
    }

    /// Run until the `wanted` sender or the `updates` receiver is dropped (returns
    /// `Ok`), or the event socket fails (returns the error).
    ///
    /// `wanted` maps each backend address to the ifindex of the interface it is
    /// reached through. Every wanted backend that gains, changes or loses a usable MAC
    /// produces one [`MacUpdate`]; initially each resolved backend reports its MAC
    /// once. Backends removed from `wanted` produce no update. If the consumer is slow,
    /// sending blocks and kernel events queue up; an overflow is handled by re-dumping.
    pub async fn run(
        mut self,
        mut wanted: watch::Receiver<HashMap<IpAddr, u32>>,
        updates: mpsc::Sender<MacUpdate>,
    ) -> Result<(), NeighError> {
        let initial = wanted.borrow_and_update().clone();
        self.table.set_wanted(&initial, Instant::now());
        // Until the first successful dump we do not know which entries are PERMANENT.
        let mut resync_at = Some(Instant::now());

        loop {
            let mut pending = Vec::new();

            if resync_at.is_some_and(|at| at <= Instant::now()) {
                match self.resync().await {
                    Ok(ups) => {
                        pending.extend(ups);
                        resync_at = None;
                    }
                    Err(e) => {
                        warn!(error = %e, "neighbour table dump failed; retrying");
                        resync_at = Some(Instant::now() + self.config.retry_interval);
                    }
                }
            }
            if resync_at.is_none() {
                for (ifindex, addr) in self.table.due_requests(Instant::now()) {
                    self.request(ifindex, addr).await;
                }
            }
            if !send_all(&updates, std::mem::take(&mut pending)).await {
                return Ok(());
            }

            // While a re-dump is pending no requests are sent, so only its time counts
            // (an overdue request deadline would otherwise make this loop spin).
            let deadline = resync_at.or_else(|| self.table.next_deadline());
            let sleep = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };

            tokio::select! {
                res = self.events.next_events() => match res {
                    Ok(events) => {
                        let now = Instant::now();
                        for ev in &events {
                            trace!(?ev, "neighbour event");
                            pending.extend(self.table.apply(ev, now));
                        }
                    }
                    Err(e) if e.needs_resync() => {
                        warn!(error = %e, "neighbour events lost; re-dumping the table");
                        resync_at = Some(Instant::now());
                    }
                    Err(e) => return Err(e),
                },
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let set = wanted.borrow_and_update().clone();
                    let (ups, added) = self.table.set_wanted(&set, Instant::now());
                    pending.extend(ups);
                    if added {
                        resync_at = Some(Instant::now());
                    }
                }
                () = updates.closed() => return Ok(()),
                () = sleep => {}
            }

            if !send_all(&updates, pending).await {
                return Ok(());
            }
        }
    }

    /// Dump the kernel table and fold it into [`MacTable`].
    async fn resync(&mut self) -> Result<Vec<MacUpdate>, NeighError> {
        let dump = tokio::time::timeout(self.config.request_timeout, self.control.dump())
            .await
            .map_err(|_| {
                NetlinkError::io(
                    "dump",
                    io::Error::new(io::ErrorKind::TimedOut, "no reply from the kernel"),
                )
            })??;
        debug!(entries = dump.len(), "neighbour table dumped");
        Ok(self.table.apply_dump(&dump, Instant::now()))
    }

    /// Send one resolution request; failures are logged, the retry schedule in
    /// [`MacTable`] takes care of trying again.
    async fn request(&mut self, ifindex: u32, addr: IpAddr) {
        let res = tokio::time::timeout(
            self.config.request_timeout,
            self.control.request_resolution(ifindex, addr),
        )
        .await;
        match res {
            Ok(Ok(())) => trace!(%addr, ifindex, "neighbour resolution requested"),
            Ok(Err(e)) => warn!(%addr, ifindex, error = %e, "neighbour resolution request failed"),
            Err(_) => warn!(%addr, ifindex, "neighbour resolution request timed out"),
        }
    }
}

/// Send all updates; `false` when the receiver is gone.
async fn send_all(updates: &mpsc::Sender<MacUpdate>, pending: Vec<MacUpdate>) -> bool {
    for update in pending {
        match &update.mac {
            Some(mac) => debug!(addr = %update.addr, mac = %Mac(*mac), "backend MAC resolved"),
            None => debug!(addr = %update.addr, "backend MAC unavailable"),
        }
        if updates.send(update).await.is_err() {
            return false;
        }
    }
    true
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_wire::{attr, msg, XorShift};
    use crate::netlink::*;
    use netlink_packet_core::NLA_TYPE_MASK;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

    fn v6() -> Ipv6Addr {
        "2001:db8::10".parse().unwrap()
    }

    fn ndmsg(family: u8, ifindex: u32, state: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![family, 0, 0, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        p.extend_from_slice(&state.to_ne_bytes());
        p.push(flags);
        p.push(1); // ndm_type RTN_UNICAST
        p
    }

    /// A kernel-like RTM_NEWNEIGH for 192.0.2.10: NDA_DST, NDA_LLADDR, NDA_PROBES,
    /// NDA_CACHEINFO (16 bytes), as __neigh_fill_info() emits them.
    fn newneigh_v4(state: u16, mac: Option<[u8; 6]>) -> Vec<u8> {
        let mut p = ndmsg(AF_INET, 7, state, 0);
        p.extend(attr(NDA_DST, &V4.octets()));
        if let Some(mac) = mac {
            p.extend(attr(NDA_LLADDR, &mac));
        }
        p.extend(attr(4, &0u32.to_ne_bytes())); // NDA_PROBES
        p.extend(attr(3, &[0u8; 16])); // NDA_CACHEINFO
        msg(RTM_NEWNEIGH, NLM_F_MULTI_FOR_TESTS, 5, &p)
    }

    const NLM_F_MULTI_FOR_TESTS: u16 = 0x02;

    fn delneigh_v6() -> Vec<u8> {
        let mut p = ndmsg(AF_INET6, 9, NUD_FAILED, 0);
        p.extend(attr(NDA_DST, &v6().octets()));
        msg(RTM_DELNEIGH, 0, 0, &p)
    }

    fn done(seq: u32, error: i32) -> Vec<u8> {
        msg(NLMSG_DONE, NLM_F_MULTI_FOR_TESTS, seq, &error.to_ne_bytes())
    }

    fn error_msg(seq: u32, error: i32, flags: u16, tlvs: &[u8]) -> Vec<u8> {
        let mut p = error.to_ne_bytes().to_vec();
        // Echoed request header (capped).
        p.extend_from_slice(&36u32.to_ne_bytes());
        p.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
        p.extend_from_slice(&0x505u16.to_ne_bytes());
        p.extend_from_slice(&seq.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend_from_slice(tlvs);
        msg(NLMSG_ERROR, flags, seq, &p)
    }

    fn ev(state: u16, mac: Option<[u8; 6]>) -> NeighEvent {
        NeighEvent {
            ifindex: 7,
            addr: IpAddr::V4(V4),
            mac,
            state,
            deleted: false,
        }
    }

    // ----- constants ------------------------------------------------------------

    /// The generic netlink constants are checked in `crate::netlink`'s tests.
    #[test]
    fn constants_match_libc() {
        assert_eq!(RTM_NEWNEIGH, libc::RTM_NEWNEIGH);
        assert_eq!(RTM_DELNEIGH, libc::RTM_DELNEIGH);
        assert_eq!(RTM_GETNEIGH, libc::RTM_GETNEIGH);
        assert_eq!(RTNLGRP_NEIGH as libc::c_uint, libc::RTNLGRP_NEIGH);
        assert_eq!(NDA_DST, libc::NDA_DST);
        assert_eq!(NDA_LLADDR, libc::NDA_LLADDR);
        assert_eq!(NTF_USE, libc::NTF_USE);
        assert_eq!(NTF_PROXY, libc::NTF_PROXY);
        for (ours, theirs) in [
            (NUD_NONE, libc::NUD_NONE),
            (NUD_INCOMPLETE, libc::NUD_INCOMPLETE),
            (NUD_REACHABLE, libc::NUD_REACHABLE),
            (NUD_STALE, libc::NUD_STALE),
            (NUD_DELAY, libc::NUD_DELAY),
            (NUD_PROBE, libc::NUD_PROBE),
            (NUD_FAILED, libc::NUD_FAILED),
            (NUD_NOARP, libc::NUD_NOARP),
            (NUD_PERMANENT, libc::NUD_PERMANENT),
        ] {
            assert_eq!(ours, theirs);
        }
    }

    // ----- encoding -------------------------------------------------------------

    #[test]
    fn dump_request_bytes() {
        let got = encode_dump_request(0x0102_0304, AF_UNSPEC);
        let mut want = Vec::new();
        want.extend_from_slice(&28u32.to_ne_bytes()); // nlmsg_len
        want.extend_from_slice(&30u16.to_ne_bytes()); // RTM_GETNEIGH
        want.extend_from_slice(&0x0301u16.to_ne_bytes()); // REQUEST | DUMP
        want.extend_from_slice(&0x0102_0304u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        want.extend_from_slice(&[0; 12]); // ndmsg, all zero
        assert_eq!(got, want);

        let v6_only = encode_dump_request(1, AF_INET6);
        assert_eq!(v6_only.get(16), Some(&10));
    }

    #[test]
    fn resolve_request_bytes_v4() {
        let got = encode_resolve_request(7, 3, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        let mut want = Vec::new();
        want.extend_from_slice(&36u32.to_ne_bytes());
        want.extend_from_slice(&28u16.to_ne_bytes()); // RTM_NEWNEIGH
        want.extend_from_slice(&0x0505u16.to_ne_bytes()); // REQUEST|ACK|REPLACE|CREATE
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        // ndmsg: AF_INET, pads, ifindex 3, NUD_NONE, NTF_USE, RTN_UNSPEC
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(&3u32.to_ne_bytes());
        want.extend_from_slice(&0u16.to_ne_bytes());
        want.extend_from_slice(&[1, 0]);
        // NDA_DST
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[192, 0, 2, 2]);
        assert_eq!(got, want);
    }

    #[test]
    fn resolve_request_bytes_v6() {
        let addr: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let got = encode_resolve_request(9, 4, IpAddr::V6(addr));
        assert_eq!(got.len(), 16 + 12 + 20);
        assert_eq!(got.get(..4), Some(&48u32.to_ne_bytes()[..]));
        assert_eq!(got.get(16), Some(&10)); // AF_INET6
        assert_eq!(got.get(26), Some(&NTF_USE));
        assert_eq!(got.get(28..30), Some(&20u16.to_ne_bytes()[..]));
        assert_eq!(got.get(30..32), Some(&NDA_DST.to_ne_bytes()[..]));
        assert_eq!(got.get(32..48), Some(&addr.octets()[..]));
    }

    #[test]
    fn encoded_requests_frame_correctly() {
        // Our own parser must frame our own requests (types are not neighbour
        // replies, so they come back as Ignored/Neigh without errors).
        let mut buf = encode_dump_request(1, AF_UNSPEC);
        buf.extend(encode_resolve_request(2, 1, IpAddr::V6(v6())));
        let items: Vec<_> = parse_messages(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].0.sequence_number, 1);
        let (_, NlMessage::Neigh(ev)) = &items[1] else {
            panic!("expected neighbour message");
        };
        assert_eq!(ev.addr, IpAddr::V6(v6()));
        assert_eq!(ev.state, NUD_NONE);
    }

    // ----- decoding -------------------------------------------------------------

    fn sample_dump() -> Vec<u8> {
        let mut buf = newneigh_v4(NUD_REACHABLE, Some(MAC_A));
        // A bridge FDB entry (AF_BRIDGE = 7) and a proxy entry: both skipped.
        let mut fdb = ndmsg(7, 7, NUD_PERMANENT, 0);
        fdb.extend(attr(NDA_LLADDR, &MAC_B));
        buf.extend(msg(RTM_NEWNEIGH, NLM_F_MULTI_FOR_TESTS, 5, &fdb));
        let mut proxy = ndmsg(AF_INET, 7, NUD_NONE, NTF_PROXY);
        proxy.extend(attr(NDA_DST, &[192, 0, 2, 99]));
        buf.extend(msg(RTM_NEWNEIGH, NLM_F_MULTI_FOR_TESTS, 5, &proxy));
        // A non-neighbour message type (RTM_NEWLINK) and a NOOP.
        buf.extend(msg(16, NLM_F_MULTI_FOR_TESTS, 5, &[0; 16]));
        buf.extend(msg(NLMSG_NOOP, 0, 5, &[]));
        buf.extend(delneigh_v6());
        buf.extend(done(5, 0));
        buf
    }

    #[test]
    fn parses_multipart_buffer() {
        let batch = parse_neigh_messages(&sample_dump()).unwrap();
        assert!(batch.done);
        assert!(!batch.acked);
        assert!(!batch.interrupted);
        assert_eq!(
            batch.events,
            vec![
                ev(NUD_REACHABLE, Some(MAC_A)),
                NeighEvent {
                    ifindex: 9,
                    addr: IpAddr::V6(v6()),
                    mac: None,
                    state: NUD_FAILED,
                    deleted: true,
                },
            ]
        );
        let kinds: Vec<_> = parse_messages(&sample_dump())
            .map(|r| r.unwrap().1)
            .map(|m| match m {
                NlMessage::Neigh(_) => "neigh",
                NlMessage::Ignored { .. } => "ignored",
                NlMessage::Noop => "noop",
                NlMessage::Done => "done",
                NlMessage::Ack => "ack",
                NlMessage::Error { .. } => "error",
            })
            .collect();
        assert_eq!(
            kinds,
            ["neigh", "ignored", "ignored", "ignored", "noop", "neigh", "done"]
        );
    }

    #[test]
    fn skips_unknown_attributes_and_masks_flag_bits() {
        let mut p = ndmsg(AF_INET, 7, NUD_STALE, 0);
        p.extend(attr(0x7fff & NLA_TYPE_MASK, &[1, 2, 3])); // unknown, odd length
                                                            // NDA_DST with NLA_F_NET_BYTEORDER set must still be recognised.
        p.extend(attr(NDA_DST | 0x4000, &V4.octets()));
        p.extend(attr(NDA_LLADDR, &MAC_B));
        p.extend(attr(200, &[])); // unknown, empty
        let batch = parse_neigh_messages(&msg(RTM_NEWNEIGH, 0, 0, &p)).unwrap();
        assert_eq!(batch.events, vec![ev(NUD_STALE, Some(MAC_B))]);
    }

    #[test]
    fn non_ethernet_lladdr_is_not_a_mac() {
        for len in [0usize, 4, 20] {
            let mut p = ndmsg(AF_INET, 7, NUD_NOARP, 0);
            p.extend(attr(NDA_DST, &V4.octets()));
            p.extend(attr(NDA_LLADDR, &vec![0xab; len]));
            let batch = parse_neigh_messages(&msg(RTM_NEWNEIGH, 0, 0, &p)).unwrap();
            assert_eq!(batch.events[0].mac, None, "lladdr len {len}");
        }
    }

    #[test]
    fn last_message_without_padding() {
        // nlmsg_len 16 + 12 + 8 + 10 = 46: not a multiple of 4, and the buffer ends
        // right there.
        let mut p = ndmsg(AF_INET, 7, NUD_REACHABLE, 0);
        p.extend(attr(NDA_DST, &V4.octets()));
        p.extend_from_slice(&10u16.to_ne_bytes());
        p.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
        p.extend_from_slice(&MAC_A);
        let mut m = msg(RTM_NEWNEIGH, 0, 0, &p);
        m.truncate(46);
        let batch = parse_neigh_messages(&m).unwrap();
        assert_eq!(batch.events, vec![ev(NUD_REACHABLE, Some(MAC_A))]);
    }

    #[test]
    fn ack_and_kernel_errors() {
        let batch = parse_neigh_messages(&error_msg(3, 0, 0, &[])).unwrap();
        assert!(batch.acked);

        let err = parse_neigh_messages(&error_msg(3, -libc::ENODEV, 0, &[])).unwrap_err();
        assert!(matches!(
            err,
            NeighError::Netlink(NetlinkError::Kernel {
                errno: libc::ENODEV,
                message: None
            })
        ));
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert!(!err.needs_resync());

        // Extended ACK with a capped echo: message in NLMSGERR_ATTR_MSG.
        let mut tlvs = attr(NLMSGERR_ATTR_MSG, b"Device not specified\0");
        tlvs.extend(attr(2, &0u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        let m = error_msg(3, -libc::EINVAL, NLM_F_CAPPED | NLM_F_ACK_TLVS, &tlvs);
        let err = parse_neigh_messages(&m).unwrap_err();
        let NeighError::Netlink(NetlinkError::Kernel { errno, message }) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*errno, libc::EINVAL);
        assert_eq!(message.as_deref(), Some("Device not specified"));
        assert!(err.to_string().contains("Device not specified"), "{err}");

        // Uncapped echo: TLVs follow the full echoed request (nlmsg_len 36).
        let mut p = (-libc::EINVAL).to_ne_bytes().to_vec();
        p.extend(encode_resolve_request(3, 0, IpAddr::V4(V4)));
        p.extend(attr(NLMSGERR_ATTR_MSG, b"Device not specified\0"));
        let err = parse_neigh_messages(&msg(NLMSG_ERROR, NLM_F_ACK_TLVS, 3, &p)).unwrap_err();
        assert!(err.to_string().contains("Device not specified"), "{err}");

        // Garbage TLVs only lose the message, not the error.
        let m = error_msg(3, -libc::EPERM, NLM_F_CAPPED | NLM_F_ACK_TLVS, &[0xff; 7]);
        assert!(matches!(
            parse_neigh_messages(&m),
            Err(NeighError::Netlink(NetlinkError::Kernel {
                errno: libc::EPERM,
                message: None
            }))
        ));
    }

    #[test]
    fn helpers_look_through_the_netlink_error() {
        let lost = NeighError::from(NetlinkError::EventsLost);
        assert!(lost.needs_resync());
        assert_eq!(lost.errno(), None);
        assert_eq!(lost.to_string(), NetlinkError::EventsLost.to_string());
        let too_large = NetlinkError::DatagramTooLarge {
            len: 70_000,
            cap: 65_536,
        };
        assert!(NeighError::from(too_large).needs_resync());
        let malformed = NetlinkError::Malformed {
            what: "attribute",
            source: "2 stray bytes".into(),
        };
        assert!(NeighError::from(malformed).needs_resync());
        assert!(NeighError::MissingDestination { ifindex: 7 }.needs_resync());
        assert_eq!(NeighError::MissingDestination { ifindex: 7 }.errno(), None);

        let failed = NetlinkError::io("recvfrom", io::Error::from_raw_os_error(libc::EBADF));
        let failed = NeighError::from(failed);
        assert!(!failed.needs_resync());
        assert_eq!(failed.errno(), Some(libc::EBADF));
        assert!(!NeighError::from(NetlinkError::Misuse("test")).needs_resync());
    }

    #[test]
    fn done_carries_dump_error() {
        let err = parse_neigh_messages(&done(5, -libc::EMSGSIZE)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EMSGSIZE));
        // An empty NLMSG_DONE payload means success.
        let batch = parse_neigh_messages(&msg(NLMSG_DONE, 0, 5, &[])).unwrap();
        assert!(batch.done);
    }

    #[test]
    fn dump_intr_flag_is_reported() {
        let mut p = ndmsg(AF_INET, 7, NUD_REACHABLE, 0);
        p.extend(attr(NDA_DST, &V4.octets()));
        let m = msg(RTM_NEWNEIGH, NLM_F_DUMP_INTR | NLM_F_MULTI_FOR_TESTS, 5, &p);
        assert!(parse_neigh_messages(&m).unwrap().interrupted);
    }

    #[test]
    fn overrun_is_an_error() {
        assert!(matches!(
            parse_neigh_messages(&msg(NLMSG_OVERRUN, 0, 0, &[])),
            Err(NeighError::Netlink(NetlinkError::Overrun))
        ));
    }

    #[test]
    fn malformed_messages_give_typed_errors() {
        let good = newneigh_v4(NUD_REACHABLE, Some(MAC_A));

        // Header shorter than 16 bytes.
        assert!(matches!(
            parse_neigh_messages(&good[..10]),
            Err(NeighError::Netlink(NetlinkError::Malformed {
                what: "nlmsghdr",
                ..
            }))
        ));
        // nlmsg_len below the header size (would loop forever if accepted).
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            parse_neigh_messages(&bad),
            Err(NeighError::Netlink(NetlinkError::Malformed {
                what: "nlmsghdr",
                ..
            }))
        ));
        // nlmsg_len beyond the buffer.
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            parse_neigh_messages(&bad),
            Err(NeighError::Netlink(NetlinkError::Malformed {
                what: "nlmsghdr",
                ..
            }))
        ));
        // ndmsg cut short.
        assert!(matches!(
            parse_neigh_messages(&msg(RTM_NEWNEIGH, 0, 0, &[2, 0, 0, 0, 1])),
            Err(NeighError::Netlink(NetlinkError::Malformed {
                what: "ndmsg",
                ..
            }))
        ));
        // nlmsgerr cut short.
        assert!(matches!(
            parse_neigh_messages(&msg(NLMSG_ERROR, 0, 0, &[0xff; 8])),
            Err(NeighError::Netlink(NetlinkError::Malformed {
                what: "nlmsgerr",
                ..
            }))
        ));
        // Attribute length < 4 and > remaining.
        for bad_len in [2u16, 200] {
            let mut p = ndmsg(AF_INET, 7, NUD_REACHABLE, 0);
            p.extend_from_slice(&bad_len.to_ne_bytes());
            p.extend_from_slice(&NDA_DST.to_ne_bytes());
            p.extend_from_slice(&V4.octets());
            assert!(
                matches!(
                    parse_neigh_messages(&msg(RTM_NEWNEIGH, 0, 0, &p)),
                    Err(NeighError::Netlink(NetlinkError::Malformed {
                        what: "attribute",
                        ..
                    }))
                ),
                "nla_len {bad_len}"
            );
        }
        // Stray bytes after the attributes.
        let mut p = ndmsg(AF_INET, 7, NUD_REACHABLE, 0);
        p.extend(attr(NDA_DST, &V4.octets()));
        p.extend_from_slice(&[1, 2]);
        let mut m = msg(RTM_NEWNEIGH, 0, 0, &p);
        m.truncate(16 + p.len());
        m[..4].copy_from_slice(&((16 + p.len()) as u32).to_ne_bytes());
        assert!(matches!(
            parse_neigh_messages(&m),
            Err(NeighError::Netlink(NetlinkError::Malformed {
                what: "attribute",
                ..
            }))
        ));
        // NDA_DST of the wrong size for the family.
        let mut p = ndmsg(AF_INET6, 7, NUD_REACHABLE, 0);
        p.extend(attr(NDA_DST, &V4.octets()));
        assert!(matches!(
            parse_neigh_messages(&msg(RTM_NEWNEIGH, 0, 0, &p)),
            Err(NeighError::BadAddressLength { family: 10, len: 4 })
        ));
        // No NDA_DST at all.
        let mut p = ndmsg(AF_INET, 7, NUD_REACHABLE, 0);
        p.extend(attr(NDA_LLADDR, &MAC_A));
        assert!(matches!(
            parse_neigh_messages(&msg(RTM_NEWNEIGH, 0, 0, &p)),
            Err(NeighError::MissingDestination { ifindex: 7 })
        ));
    }

    #[test]
    fn payload_error_does_not_stop_framing() {
        // A bad message followed by a good one: the iterator reports both.
        let mut buf = msg(RTM_NEWNEIGH, 0, 0, &[1, 2, 3]);
        buf.extend(newneigh_v4(NUD_REACHABLE, Some(MAC_A)));
        let items: Vec<_> = parse_messages(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_err());
        assert!(items[1].is_ok());
    }

    /// Parse with every API; the only requirement is not to panic (and to terminate).
    fn parse_all_ways(buf: &[u8]) {
        let _ = parse_neigh_messages(buf);
        let n = parse_messages(buf).count();
        assert!(n <= buf.len() / NLMSG_HDRLEN + 1);
        for (_, msg) in parse_messages(buf).flatten() {
            if let NlMessage::Neigh(ev) = msg {
                let _ = usable_mac(&ev);
            }
        }
    }

    #[test]
    fn every_prefix_parses_or_fails_cleanly() {
        let buf = sample_dump();
        // Offsets where a message ends: exactly those prefixes are complete.
        let mut boundaries = vec![0];
        let mut rest = &buf[..];
        while let Ok((_, _, next)) = split_message(rest) {
            boundaries.push(buf.len() - next.len());
            rest = next;
            if rest.is_empty() {
                break;
            }
        }
        assert_eq!(*boundaries.last().unwrap(), buf.len());
        for len in 0..=buf.len() {
            let prefix = &buf[..len];
            parse_all_ways(prefix);
            let res = parse_neigh_messages(prefix);
            assert_eq!(
                res.is_ok(),
                boundaries.contains(&len),
                "prefix {len}: {res:?}"
            );
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        // Pure noise, short and long.
        for _ in 0..20_000 {
            let len = rng.below(300);
            let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            parse_all_ways(&buf);
        }
        // Noise with a plausible header, so the payload decoders get exercised.
        for _ in 0..20_000 {
            let len = 16 + rng.below(200);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            buf[..4].copy_from_slice(&(len as u32).to_ne_bytes());
            let msg_type = [NLMSG_ERROR, NLMSG_DONE, RTM_NEWNEIGH, RTM_DELNEIGH][rng.below(4)];
            buf[4..6].copy_from_slice(&msg_type.to_ne_bytes());
            if buf.len() > 16 {
                buf[16] = [AF_INET, AF_INET6][rng.below(2)];
            }
            parse_all_ways(&buf);
        }
        // Bit flips and byte overwrites of a valid buffer.
        let valid = sample_dump();
        for _ in 0..20_000 {
            let mut buf = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(buf.len());
                if rng.below(2) == 0 {
                    buf[i] ^= 1 << rng.below(8);
                } else {
                    buf[i] = rng.next() as u8;
                }
            }
            parse_all_ways(&buf);
        }
    }

    // ----- usable_mac -------------------------------------------------------------

    #[test]
    fn usable_mac_by_state() {
        for state in [
            NUD_REACHABLE,
            NUD_STALE,
            NUD_DELAY,
            NUD_PROBE,
            NUD_PERMANENT,
            NUD_NOARP,
        ] {
            assert_eq!(
                usable_mac(&ev(state, Some(MAC_A))),
                Some(MAC_A),
                "{state:#x}"
            );
        }
        for state in [
            NUD_NONE,
            NUD_INCOMPLETE,
            NUD_FAILED,
            NUD_REACHABLE | NUD_FAILED,
            0x100,
        ] {
            assert_eq!(usable_mac(&ev(state, Some(MAC_A))), None, "{state:#x}");
        }
        assert_eq!(usable_mac(&ev(NUD_REACHABLE, None)), None);
        assert_eq!(usable_mac(&ev(NUD_REACHABLE, Some([0; 6]))), None);
        assert_eq!(usable_mac(&ev(NUD_NOARP, Some([0xff; 6]))), None);
        assert_eq!(
            usable_mac(&ev(NUD_NOARP, Some([0x01, 0x00, 0x5e, 0, 0, 1]))),
            None
        );
        let mut deleted = ev(NUD_REACHABLE, Some(MAC_A));
        deleted.deleted = true;
        assert_eq!(usable_mac(&deleted), None);
    }

    // ----- MacTable -------------------------------------------------------------

    fn config() -> MacResolverConfig {
        MacResolverConfig {
            refresh_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
            max_retry_interval: Duration::from_secs(4),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn table_with(addrs: &[(IpAddr, u32)], now: Instant) -> MacTable {
        let mut table = MacTable::new(config());
        let (updates, added) = table.set_wanted(&addrs.iter().copied().collect(), now);
        assert!(updates.is_empty());
        assert_eq!(added, !addrs.is_empty());
        table
    }

    #[test]
    fn table_reports_only_changes() {
        let t0 = Instant::now();
        let a = IpAddr::V4(V4);
        let mut table = table_with(&[(a, 7)], t0);

        // INCOMPLETE: still nothing usable, nothing to report.
        assert_eq!(table.apply(&ev(NUD_INCOMPLETE, None), t0), None);
        // Resolved.
        let up = table.apply(&ev(NUD_REACHABLE, Some(MAC_A)), t0);
        assert_eq!(
            up,
            Some(MacUpdate {
                addr: a,
                mac: Some(MAC_A)
            })
        );
        assert_eq!(table.mac(&a), Some(MAC_A));
        // STALE/DELAY/PROBE with the same MAC: no change.
        for state in [NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_REACHABLE] {
            assert_eq!(table.apply(&ev(state, Some(MAC_A)), t0), None);
        }
        // MAC changed (e.g. gratuitous ARP).
        let up = table.apply(&ev(NUD_STALE, Some(MAC_B)), t0);
        assert_eq!(
            up,
            Some(MacUpdate {
                addr: a,
                mac: Some(MAC_B)
            })
        );
        // Failed.
        let up = table.apply(&ev(NUD_FAILED, None), t0);
        assert_eq!(up, Some(MacUpdate { addr: a, mac: None }));
        assert_eq!(table.apply(&ev(NUD_INCOMPLETE, None), t0), None);
        // Deleted after being resolved again.
        table.apply(&ev(NUD_REACHABLE, Some(MAC_A)), t0);
        let mut del = ev(NUD_REACHABLE, Some(MAC_A));
        del.deleted = true;
        assert_eq!(
            table.apply(&del, t0),
            Some(MacUpdate { addr: a, mac: None })
        );
        assert!(table.macs().is_empty());
    }

    #[test]
    fn table_ignores_other_addresses_and_interfaces() {
        let t0 = Instant::now();
        let a = IpAddr::V4(V4);
        let mut table = table_with(&[(a, 7)], t0);
        let mut other_if = ev(NUD_REACHABLE, Some(MAC_A));
        other_if.ifindex = 8;
        assert_eq!(table.apply(&other_if, t0), None);
        let mut other_addr = ev(NUD_REACHABLE, Some(MAC_A));
        other_addr.addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(table.apply(&other_addr, t0), None);
        assert!(table.macs().is_empty());
    }

    #[test]
    fn table_schedules_requests() {
        let t0 = Instant::now();
        let a = IpAddr::V4(V4);
        let b = IpAddr::V6(v6());
        let mut table = table_with(&[(a, 7), (b, 9)], t0);

        // New entries are due immediately, sorted.
        assert_eq!(table.due_requests(t0), vec![(7, a), (9, b)]);
        assert_eq!(table.due_requests(t0), vec![]);
        // Unresolved: exponential back-off 1 s, 2 s, 4 s, capped at 4 s.
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(table.due_requests(t1), vec![(7, a), (9, b)]);
        assert_eq!(table.next_deadline(), Some(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(table.due_requests(t2).len(), 2);
        assert_eq!(table.next_deadline(), Some(t2 + Duration::from_secs(4)));
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(table.due_requests(t3).len(), 2);
        assert_eq!(table.next_deadline(), Some(t3 + Duration::from_secs(4)));

        // `a` resolves: next request a full refresh period later; `b` keeps retrying.
        table.apply(&ev(NUD_REACHABLE, Some(MAC_A)), t3);
        let t4 = t3 + Duration::from_secs(4);
        assert_eq!(table.due_requests(t4), vec![(9, b)]);
        assert_eq!(
            table.due_requests(t3 + Duration::from_secs(29)),
            vec![(9, b)]
        );
        assert_eq!(
            table.due_requests(t3 + Duration::from_secs(30)),
            vec![(7, a)]
        );

        // `a` fails: retried after the first back-off step, not after 30 s.
        let t5 = t3 + Duration::from_secs(31);
        table.apply(&ev(NUD_FAILED, None), t5);
        let due = table.due_requests(t5 + Duration::from_secs(1));
        assert!(due.contains(&(7, a)), "{due:?}");
    }

    #[test]
    fn table_never_requests_permanent_or_noarp() {
        let t0 = Instant::now();
        let a = IpAddr::V4(V4);
        for state in [NUD_PERMANENT, NUD_NOARP] {
            let mut table = table_with(&[(a, 7)], t0);
            let up = table.apply(&ev(state, Some(MAC_A)), t0);
            assert_eq!(
                up,
                Some(MacUpdate {
                    addr: a,
                    mac: Some(MAC_A)
                })
            );
            for secs in [0, 30, 60, 3600] {
                assert_eq!(table.due_requests(t0 + Duration::from_secs(secs)), vec![]);
            }
            // Once the static entry is deleted, normal resolution takes over.
            let mut del = ev(state, None);
            del.deleted = true;
            let t1 = t0 + Duration::from_secs(3600);
            assert_eq!(
                table.apply(&del, t1),
                Some(MacUpdate { addr: a, mac: None })
            );
            assert_eq!(
                table.due_requests(t1 + Duration::from_secs(1)),
                vec![(7, a)]
            );
        }
    }

    #[test]
    fn table_dump_replaces_view() {
        let t0 = Instant::now();
        let a = IpAddr::V4(V4);
        let b = IpAddr::V6(v6());
        let mut table = table_with(&[(a, 7), (b, 9)], t0);
        let b_ev = NeighEvent {
            ifindex: 9,
            addr: b,
            mac: Some(MAC_B),
            state: NUD_STALE,
            deleted: false,
        };
        let ups = table.apply_dump(&[ev(NUD_REACHABLE, Some(MAC_A)), b_ev], t0);
        assert_eq!(
            ups,
            vec![
                MacUpdate {
                    addr: a,
                    mac: Some(MAC_A)
                },
                MacUpdate {
                    addr: b,
                    mac: Some(MAC_B)
                },
            ]
        );
        // Re-dump after lost events: `a` vanished, `b` unchanged.
        let ups = table.apply_dump(&[b_ev], t0);
        assert_eq!(ups, vec![MacUpdate { addr: a, mac: None }]);
        // An entry for `a` on the wrong interface does not count as present.
        let mut wrong_if = ev(NUD_REACHABLE, Some(MAC_A));
        wrong_if.ifindex = 3;
        assert_eq!(table.apply_dump(&[wrong_if, b_ev], t0), vec![]);
        assert_eq!(table.macs(), HashMap::from([(b, MAC_B)]));
    }

    #[test]
    fn table_wanted_set_changes() {
        let t0 = Instant::now();
        let a = IpAddr::V4(V4);
        let b = IpAddr::V6(v6());
        let mut table = table_with(&[(a, 7)], t0);
        table.apply(&ev(NUD_REACHABLE, Some(MAC_A)), t0);

        // Same set again: nothing new.
        let (ups, added) = table.set_wanted(&HashMap::from([(a, 7)]), t0);
        assert!(ups.is_empty() && !added);
        // Add `b`: needs a dump before requests.
        let (ups, added) = table.set_wanted(&HashMap::from([(a, 7), (b, 9)]), t0);
        assert!(ups.is_empty() && added);
        // `a` moves to another interface: its MAC is withdrawn and it starts over.
        let (ups, added) = table.set_wanted(&HashMap::from([(a, 8), (b, 9)]), t0);
        assert_eq!(ups, vec![MacUpdate { addr: a, mac: None }]);
        assert!(added);
        assert_eq!(table.due_requests(t0), vec![(8, a), (9, b)]);
        // Removing is silent and stops requests.
        let (ups, added) = table.set_wanted(&HashMap::from([(b, 9)]), t0);
        assert!(ups.is_empty() && !added);
        assert_eq!(
            table.due_requests(t0 + Duration::from_secs(3600)),
            vec![(9, b)]
        );
    }

    #[test]
    fn backoff_saturates() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), s(10), 0), s(1));
        assert_eq!(backoff(s(1), s(10), 3), s(8));
        assert_eq!(backoff(s(1), s(10), 4), s(10));
        assert_eq!(backoff(s(1), s(10), u32::MAX), s(10));
        // A max below the base never shortens the base.
        assert_eq!(backoff(s(5), s(1), 0), s(5));
    }

    // ----- socket misuse (no privileges needed) ---------------------------------

    #[tokio::test]
    async fn socket_kinds_are_enforced() {
        let mut control = NeighSocket::open().expect("open NETLINK_ROUTE socket");
        assert!(matches!(
            control.next_events().await,
            Err(NeighError::Netlink(NetlinkError::Misuse(_)))
        ));
        let mut events = NeighSocket::subscribe().expect("subscribe");
        assert!(matches!(
            events.dump().await,
            Err(NeighError::Netlink(NetlinkError::Misuse(_)))
        ));
        assert!(matches!(
            events
                .request_resolution(1, IpAddr::V4(Ipv4Addr::LOCALHOST))
                .await,
            Err(NeighError::Netlink(NetlinkError::Misuse(_)))
        ));
    }

    #[tokio::test]
    async fn dump_works_unprivileged() {
        // Reading the neighbour table needs no privileges; whatever it contains
        // must parse.
        let mut control = NeighSocket::open().expect("open NETLINK_ROUTE socket");
        let first = control.dump().await.expect("dump");
        let second = control
            .dump()
            .await
            .expect("second dump on the same socket");
        // Entries can come and go between dumps; just make sure both worked.
        let _ = (first, second);
        // ifindex 0 is rejected by the kernel with a typed error and the socket
        // stays usable afterwards.
        let err = control
            .request_resolution(0, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .await
            .unwrap_err();
        assert!(
            matches!(err, NeighError::Netlink(NetlinkError::Kernel { .. }))
                || err.errno() == Some(libc::EPERM),
            "{err}"
        );
        control.dump().await.expect("dump after an error");
    }

    #[tokio::test]
    async fn abandoned_request_does_not_poison_the_socket() {
        let mut control = NeighSocket::open().expect("open NETLINK_ROUTE socket");
        // The first poll sends the request and then waits for readiness, so a zero
        // timeout drops the dump half-way; its replies (and the kernel's dump state)
        // are left behind on the socket.
        let abandoned = tokio::time::timeout(Duration::ZERO, control.dump()).await;
        if abandoned.is_err() {
            assert!(control.sock.in_flight());
        }
        // A new dump on the same NeighSocket must neither see the stale replies nor
        // fail with EBUSY ("dump already running").
        control.dump().await.expect("dump after an abandoned dump");
        assert!(!control.sock.in_flight());
    }
}

/// Root-only tests in throw-away network namespaces (`ip netns`), connected by a
/// veth pair and using only documentation prefixes (192.0.2.0/24, 2001:db8::/32).
/// Nothing is configured in the namespace the test runs in.
#[cfg(test)]
mod netns_tests {
    use super::*;
    use crate::netlink::test_netns::{
        ifindex, in_netns_async, ip, link_mac, privileged, sysctl, Netns,
    };
    use std::os::fd::AsRawFd;
    use std::process::Command;

    const IFACE_A: &str = "lbn0";
    const IFACE_B: &str = "lbn1";
    const A_V4: &str = "192.0.2.1";
    const B_V4: &str = "192.0.2.2";
    const A_V6: &str = "2001:db8::1";
    const B_V6: &str = "2001:db8::2";
    /// An address with a static (PERMANENT) entry in namespace A; no host has it.
    const STATIC_V4: &str = "192.0.2.77";
    const STATIC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x02, 0x77];
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Two namespaces joined by a veth pair: A (`lbn0`: .1 / ::1), B (`lbn1`: .2 / ::2).
    fn setup(tag: &str) -> (Netns, Netns) {
        let a = Netns::create(&format!("neigh{tag}a"));
        let b = Netns::create(&format!("neigh{tag}b"));
        ip(&[
            "-n", &a.0, "link", "add", IFACE_A, "type", "veth", "peer", "name", IFACE_B, "netns",
            &b.0,
        ]);
        for (ns, iface, v4, v6) in [(&a, IFACE_A, A_V4, A_V6), (&b, IFACE_B, B_V4, B_V6)] {
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                iface,
            ]);
            // nodad: the address is usable at once (DAD would delay ND by ~1 s).
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                iface,
                "nodad",
            ]);
            ip(&["-n", &ns.0, "link", "set", iface, "up"]);
        }
        (a, b)
    }

    /// Receive updates until `done(current MACs)` holds; panics at the deadline.
    async fn wait_for(
        rx: &mut mpsc::Receiver<MacUpdate>,
        macs: &mut HashMap<IpAddr, Option<[u8; 6]>>,
        what: &str,
        done: impl Fn(&HashMap<IpAddr, Option<[u8; 6]>>) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(macs) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(update)) => {
                    eprintln!(
                        "update: {} -> {}",
                        update.addr,
                        update.mac.map_or("none".into(), |m| Mac(m).to_string())
                    );
                    macs.insert(update.addr, update.mac);
                }
                Ok(None) => panic!("resolver stopped while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; have {macs:?}"),
            }
        }
    }

    fn test_config() -> MacResolverConfig {
        MacResolverConfig {
            refresh_interval: Duration::from_millis(500),
            retry_interval: Duration::from_millis(200),
            max_retry_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
        }
    }

    /// Resolve the peer's IPv4 and IPv6 addresses through MacResolver, and check that
    /// a PERMANENT entry is reported but never converted by refresh requests.
    #[tokio::test]
    async fn resolves_peer_mac_in_netns() {
        if !privileged("neigh::resolves_peer_mac_in_netns") {
            return;
        }
        let (a, b) = setup("r");
        let peer_mac = link_mac(&b.0, IFACE_B);
        ip(&[
            "-n",
            &a.0,
            "neigh",
            "add",
            STATIC_V4,
            "lladdr",
            &Mac(STATIC_MAC).to_string(),
            "dev",
            IFACE_A,
            "nud",
            "permanent",
        ]);

        let ns_a = a.0.clone();
        in_netns_async(&a.0, move || async move {
            let idx = ifindex(IFACE_A);
            let b_v4: IpAddr = B_V4.parse().unwrap();
            let b_v6: IpAddr = B_V6.parse().unwrap();
            let st_v4: IpAddr = STATIC_V4.parse().unwrap();

            // The low-level API first: request, then see the entry in a dump.
            let mut sock = NeighSocket::open().expect("open");
            sock.request_resolution(idx, b_v4).await.expect("request");
            let err = sock
                .request_resolution(999_999, b_v4)
                .await
                .expect_err("unknown ifindex");
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");

            let (wanted_tx, wanted_rx) = watch::channel(HashMap::from([(b_v4, idx), (st_v4, idx)]));
            let (tx, mut rx) = mpsc::channel(64);
            let resolver = MacResolver::new(test_config()).expect("resolver");
            let task = tokio::spawn(resolver.run(wanted_rx, tx));

            let mut macs = HashMap::new();
            wait_for(&mut rx, &mut macs, "IPv4 + static", |m| {
                m.get(&b_v4) == Some(&Some(peer_mac)) && m.get(&st_v4) == Some(&Some(STATIC_MAC))
            })
            .await;

            // Adding a backend later triggers a re-dump and its resolution.
            wanted_tx.send_modify(|w| {
                w.insert(b_v6, idx);
            });
            wait_for(&mut rx, &mut macs, "IPv6", |m| {
                m.get(&b_v6) == Some(&Some(peer_mac))
            })
            .await;

            // The dump agrees.
            let dump = sock.dump().await.expect("dump");
            for addr in [b_v4, b_v6] {
                let entry = dump
                    .iter()
                    .find(|e| e.addr == addr && e.ifindex == idx)
                    .unwrap_or_else(|| panic!("{addr} not in dump {dump:?}"));
                assert_eq!(usable_mac(entry), Some(peer_mac), "{entry:?}");
            }

            // Let several refresh periods pass (refresh 500 ms), polling the static
            // entry: it must stay PERMANENT (NTF_USE would have stripped the flag).
            let until = tokio::time::Instant::now() + Duration::from_millis(2500);
            while tokio::time::Instant::now() < until {
                let dump = sock.dump().await.expect("dump");
                let entry = dump.iter().find(|e| e.addr == st_v4).expect("static entry");
                assert_eq!(entry.state, NUD_PERMANENT, "{entry:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let shown = ip(&["-n", &ns_a, "neigh", "show", STATIC_V4, "dev", IFACE_A]);
            assert!(shown.contains("PERMANENT"), "{shown}");

            // Dropping the wanted sender stops the resolver cleanly.
            drop(wanted_tx);
            let res = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("resolver did not stop")
                .expect("resolver panicked");
            res.expect("resolver returned an error");
        })
        .await;
        drop(b);
    }

    /// Overflowing the event socket's queue yields `EventsLost`, and the socket keeps
    /// working afterwards.
    #[tokio::test]
    async fn event_overflow_is_reported() {
        if !privileged("neigh::event_overflow_is_reported") {
            return;
        }
        let (a, _b) = setup("e");
        let ns_a = a.0.clone();
        in_netns_async(&a.0, move || async move {
            let mut events = NeighSocket::subscribe().expect("subscribe");
            // Shrink the queue to the minimum (SOCK_MIN_RCVBUF) so a burst overflows it.
            // SAFETY: the socket stays open for the call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(events.sock.as_raw_fd()) };
            crate::os::set_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &1i32, "SO_RCVBUF")
                .unwrap();
            let batch: String = (0..64)
                .map(|i| {
                    format!(
                        "neigh add 192.0.2.{} lladdr 02:00:00:00:01:{i:02x} dev {IFACE_A} nud permanent\n",
                        100 + i
                    )
                })
                .collect();
            let mut child = Command::new("ip")
                .args(["-n", &ns_a, "-batch", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("spawn ip -batch");
            {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("stdin");
                stdin.write_all(batch.as_bytes()).expect("write batch");
            }
            assert!(child.wait().expect("ip -batch").success());

            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                match tokio::time::timeout_at(deadline, events.next_events()).await {
                    Ok(Err(NeighError::Netlink(NetlinkError::EventsLost))) => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => panic!("unexpected error {e}"),
                    Err(_) => panic!("no ENOBUFS after a burst of 64 events"),
                }
            }

            // Still usable: a new entry shows up as an event.
            ip(&[
                "-n", &ns_a, "neigh", "add", "192.0.2.250", "lladdr", "02:00:00:00:02:50",
                "dev", IFACE_A, "nud", "permanent",
            ]);
            let want: IpAddr = "192.0.2.250".parse().unwrap();
            loop {
                match tokio::time::timeout_at(deadline, events.next_events()).await {
                    Ok(Ok(evs)) if evs.iter().any(|e| e.addr == want) => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => panic!("unexpected error {e}"),
                    Err(_) => panic!("no event for {want} after the overflow"),
                }
            }
        })
        .await;
    }

    /// The backend's MAC changes silently (no gratuitous ARP): only the periodic
    /// refresh can notice. Timers in namespace A are shortened so the kernel's
    /// REACHABLE → STALE → DELAY → PROBE → FAILED cycle takes seconds, not minutes.
    #[tokio::test]
    async fn notices_silent_mac_change() {
        if !privileged("neigh::notices_silent_mac_change") {
            return;
        }
        let (a, b) = setup("c");
        let old_mac = link_mac(&b.0, IFACE_B);
        let new_mac = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x02];
        assert_ne!(old_mac, new_mac);
        for setting in [
            format!("net.ipv4.neigh.{IFACE_A}.base_reachable_time_ms=500"),
            format!("net.ipv4.neigh.{IFACE_A}.delay_first_probe_time=1"),
            format!("net.ipv4.neigh.{IFACE_A}.retrans_time_ms=200"),
        ] {
            sysctl(&a.0, &setting);
        }

        let ns_b = b.0.clone();
        in_netns_async(&a.0, move || async move {
            let idx = ifindex(IFACE_A);
            let b_v4: IpAddr = B_V4.parse().unwrap();
            let (_wanted_tx, wanted_rx) = watch::channel(HashMap::from([(b_v4, idx)]));
            let (tx, mut rx) = mpsc::channel(64);
            let resolver = MacResolver::new(test_config()).expect("resolver");
            let task = tokio::spawn(resolver.run(wanted_rx, tx));

            let mut macs = HashMap::new();
            wait_for(&mut rx, &mut macs, "initial MAC", |m| {
                m.get(&b_v4) == Some(&Some(old_mac))
            })
            .await;

            let mac_text = Mac(new_mac).to_string();
            ip(&["-n", &ns_b, "link", "set", IFACE_B, "address", &mac_text]);
            wait_for(&mut rx, &mut macs, "changed MAC", |m| {
                m.get(&b_v4) == Some(&Some(new_mac))
            })
            .await;
            task.abort();
        })
        .await;
    }
}
