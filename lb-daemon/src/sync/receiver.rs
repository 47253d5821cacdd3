//! The receiving side: every datagram is hostile until proven otherwise. In order: the
//! source must be a configured peer, the codec checks size, magic, version, sync id and the
//! HMAC tag, then the replay window (the sender's boot_id and seq); only then are entries
//! translated to this node's ids and installed. Each rejection is counted by reason; none
//! is logged per datagram (the engine logs a summary at a limited rate).
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Instant,
};

use lb_common::{addr_v4, addr_v6, FlowKey4, FlowKey6, FlowValue, PersistKey4, PersistKey6};

use super::{
    codec::{self, Ack, Body, Data, Header, Key},
    index::Index,
};
use crate::dataplane::flows::{FlowTables, FlowsError, Table};

/// Sequence numbers remembered behind the newest, per sender.
const WINDOW: u32 = 64;
/// Peers remembered at most (only authenticated ones ever get here).
const MAX_PEERS: usize = 64;

/// Why a well-tagged message was refused by the replay window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// From a run of the sender older than the one already heard.
    StaleBoot,
    /// Further behind the newest than the window.
    Old,
    Duplicate,
}

/// What the window made of an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Newer than any before; `gap` messages between were not seen (yet).
    InOrder { gap: u32 },
    /// Within the window, not seen before: one of an earlier gap.
    Late,
}

/// A sender's (boot_id, seq) replay window, IPsec-style.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    boot: u32,
    top: u32,
    /// Bit i: seq `top - i` was seen.
    seen: u64,
}

impl ReplayWindow {
    pub fn new(boot: u32, seq: u32) -> Self {
        Self {
            boot,
            top: seq,
            seen: 1,
        }
    }

    pub fn check(&mut self, boot: u32, seq: u32) -> Result<Accepted, Replay> {
        if boot > self.boot {
            *self = Self::new(boot, seq);
            return Ok(Accepted::InOrder { gap: 0 });
        }
        if boot < self.boot {
            return Err(Replay::StaleBoot);
        }
        let ahead = seq.wrapping_sub(self.top) as i32;
        if ahead > 0 {
            let d = ahead as u32;
            self.seen = if d >= WINDOW { 1 } else { self.seen << d | 1 };
            self.top = seq;
            return Ok(Accepted::InOrder { gap: d - 1 });
        }
        let behind = (-(ahead as i64)) as u32;
        if behind >= WINDOW {
            return Err(Replay::Old);
        }
        if self.seen & 1 << behind != 0 {
            return Err(Replay::Duplicate);
        }
        self.seen |= 1 << behind;
        Ok(Accepted::Late)
    }
}

/// What the receiver knows of a peer.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// One window per message type: a node numbers its DATA and its ACKs apart.
    pub data_window: Option<ReplayWindow>,
    pub ack_window: Option<ReplayWindow>,
    pub last_heard: Instant,
    /// Its run.
    pub boot_id: u32,
    /// From its ACKs (this node is master): the round trip from sending a message to the
    /// peer having installed it, and the last message it installed.
    pub lag_ms: Option<f64>,
    pub acked_seq: Option<u32>,
    /// From its ACKs: it wants the whole table.
    pub wants_full: bool,
}

/// Counters of the receiving side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// DATA messages accepted.
    pub messages: u64,
    pub acks: u64,
    pub entries: u64,
    pub installed: u64,
    /// Not installed: the node's own flow had the key (it is master).
    pub kept_own: u64,
    /// Messages a sender's seq skipped (lost, or not yet arrived).
    pub lost: u64,
    pub full_syncs: u64,
    /// Datagrams or entries refused, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
}

impl ReceiverStats {
    fn drop(&mut self, why: &'static str) {
        *self.dropped.entry(why).or_default() += 1;
    }
}

/// What a datagram was.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Data { entries: usize },
    Ack { from: IpAddr, request_full: bool },
    Dropped(&'static str),
}

/// Entries waiting to be installed, per table.
#[derive(Default, Debug)]
struct Pending {
    flows4: (Vec<FlowKey4>, Vec<FlowValue>),
    flows6: (Vec<FlowKey6>, Vec<FlowValue>),
    persist4: (Vec<PersistKey4>, Vec<FlowValue>),
    persist6: (Vec<PersistKey6>, Vec<FlowValue>),
    /// NAT reverse entries (a reply's key -> its flow's key) of flows to a shared NAT real
    /// server: as the program writes them (`lb::nat_reverse`).
    rev4: (Vec<FlowKey4>, Vec<FlowKey4>),
    rev6: (Vec<FlowKey6>, Vec<FlowKey6>),
}

impl Pending {
    fn len(&self) -> usize {
        self.flows4.0.len() + self.flows6.0.len() + self.persist4.0.len() + self.persist6.0.len()
    }
}

/// The last DATA message installed, for the next ACK.
#[derive(Clone, Copy, Debug)]
struct LastData {
    boot: u32,
    seq: u32,
    send_ms: u32,
    at: Instant,
}

/// Settings of a [`Receiver`].
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub sync_id: u8,
    /// Only these sources (none: any source with the key).
    pub peers: Vec<IpAddr>,
    /// This node's own addresses: its own multicast comes back to it on some set-ups.
    pub own: Vec<IpAddr>,
    /// This node's run, for the ACKs it sends.
    pub boot_id: u32,
}

pub struct Receiver {
    cfg: ReceiverConfig,
    key: Key,
    ack_seq: u32,
    pub peers: HashMap<IpAddr, Peer>,
    pending: Pending,
    last: Option<LastData>,
    /// A whole-table sync has arrived since start.
    full_synced: bool,
    /// Entries refused as naming a service or backend this node does not have, since the
    /// last whole-table sync completed.
    unknown_since_full: u64,
    /// The last whole-table sync had such entries: this node's index may not have been
    /// complete yet (the sync starts before the dataplane has its services and backends),
    /// so the next index change asks for the whole table again ([`Receiver::index_changed`]).
    full_incomplete: bool,
    /// The index changed after entries of the whole table now arriving were refused: ask
    /// for it again once it is in.
    stale_drops: bool,
    /// The daemon has given the engine an index: before, a whole table would be refused
    /// entirely, so it is not asked for.
    index_ready: bool,
    pub stats: ReceiverStats,
}

fn ip4(a: &IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => addr_v4(a.octets()),
        IpAddr::V6(_) => 0,
    }
}

fn ip6(a: &IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V6(a) => addr_v6(a.octets()),
        IpAddr::V4(_) => [0; 4],
    }
}

impl Receiver {
    pub fn new(cfg: ReceiverConfig, key: Key) -> Self {
        Self {
            cfg,
            key,
            ack_seq: 0,
            peers: HashMap::new(),
            pending: Pending::default(),
            last: None,
            full_synced: false,
            unknown_since_full: 0,
            full_incomplete: false,
            stale_drops: false,
            index_ready: false,
            stats: ReceiverStats::default(),
        }
    }

    pub fn full_synced(&self) -> bool {
        self.full_synced
    }

    /// The last message of a whole-table sync was taken.
    fn full_done(&mut self) {
        self.stats.full_syncs += 1;
        // Entries refused by an index that has changed since: the new one may name them.
        self.full_synced = !self.stale_drops;
        self.full_incomplete = !self.stale_drops && self.unknown_since_full > 0;
        self.stale_drops = false;
        self.unknown_since_full = 0;
    }

    /// The daemon gave the engine a new index (its dataplane changed). If the last whole
    /// table, or the one arriving, had entries the old index could not name, ask for it
    /// again: once per index change, so a peer whose configuration really differs does not
    /// cause a loop.
    pub fn index_changed(&mut self) {
        self.index_ready = true;
        if self.full_incomplete {
            self.full_incomplete = false;
            self.full_synced = false;
        } else if self.unknown_since_full > 0 {
            self.stale_drops = true;
        }
    }

    /// Entries waiting for [`Receiver::install`].
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// One datagram from `from`. DATA entries are translated to this node's ids with `ix`
    /// and their age turned into `now_s` (the program's clock) minus the age; they wait for
    /// [`Receiver::install`]. `now_ms` is the engine's millisecond clock (the one its
    /// messages' `send_ms` come from).
    pub fn on_datagram(
        &mut self,
        from: IpAddr,
        buf: &[u8],
        ix: &Index,
        now_s: u32,
        now_ms: u32,
        now: Instant,
    ) -> Incoming {
        let why = self.accept(from, buf, ix, now_s, now_ms, now);
        if let Incoming::Dropped(w) = why {
            self.stats.drop(w);
        }
        why
    }

    fn accept(
        &mut self,
        from: IpAddr,
        buf: &[u8],
        ix: &Index,
        now_s: u32,
        now_ms: u32,
        now: Instant,
    ) -> Incoming {
        if self.cfg.own.contains(&from) {
            return Incoming::Dropped("own");
        }
        if !self.cfg.peers.is_empty() && !self.cfg.peers.contains(&from) {
            return Incoming::Dropped("not_peer");
        }
        let msg = match codec::decode(buf, &self.key, self.cfg.sync_id) {
            Ok(m) => m,
            Err(e) => return Incoming::Dropped(e.name()),
        };
        let h = msg.header;
        if !self.peers.contains_key(&from) && self.peers.len() >= MAX_PEERS {
            // Forget the one heard from longest ago.
            if let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.last_heard)
                .map(|(a, _)| *a)
            {
                self.peers.remove(&oldest);
            }
        }
        let peer = self.peers.entry(from).or_insert_with(|| Peer {
            data_window: None,
            ack_window: None,
            last_heard: now,
            boot_id: h.boot_id,
            lag_ms: None,
            acked_seq: None,
            wants_full: false,
        });
        let window = if h.msg_type == codec::TYPE_ACK {
            &mut peer.ack_window
        } else {
            &mut peer.data_window
        };
        let window =
            window.get_or_insert_with(|| ReplayWindow::new(h.boot_id, h.seq.wrapping_sub(1)));
        match window.check(h.boot_id, h.seq) {
            Ok(Accepted::InOrder { gap }) => self.stats.lost += u64::from(gap),
            Ok(Accepted::Late) => self.stats.lost = self.stats.lost.saturating_sub(1),
            Err(Replay::StaleBoot) => return Incoming::Dropped("stale_boot"),
            Err(Replay::Old) => return Incoming::Dropped("replay_old"),
            Err(Replay::Duplicate) => return Incoming::Dropped("replay_duplicate"),
        }
        peer.last_heard = now;
        peer.boot_id = h.boot_id;
        match msg.body {
            Body::Data(d) => {
                self.stats.messages += 1;
                let n = d.entries.len();
                self.translate(&d, ix, now_s);
                self.last = Some(LastData {
                    boot: h.boot_id,
                    seq: h.seq,
                    send_ms: h.send_ms,
                    at: now,
                });
                if h.flags & codec::F_FULL_DONE != 0 {
                    self.full_done();
                }
                Incoming::Data { entries: n }
            }
            Body::Ack(a) => {
                self.stats.acks += 1;
                let peer = self.peers.get_mut(&from).expect("inserted above");
                peer.wants_full = h.flags & codec::F_REQUEST_FULL != 0;
                peer.acked_seq = Some(a.acked_seq);
                peer.lag_ms = lag_ms(&a, now_ms, self.cfg.boot_id).or(peer.lag_ms);
                Incoming::Ack {
                    from,
                    request_full: peer.wants_full,
                }
            }
        }
    }

    fn translate(&mut self, d: &Data, ix: &Index, now_s: u32) {
        for (idx, e) in &d.entries {
            self.stats.entries += 1;
            // The codec guarantees the index and the families.
            let Some(r) = d.refs.get(usize::from(*idx)) else {
                self.stats.drop("bad_ref");
                continue;
            };
            let Some(sid) = ix.service(r) else {
                self.stats.drop("unknown_service");
                self.unknown_since_full += 1;
                continue;
            };
            let Some((bid, generation)) = ix.backend(sid, r) else {
                self.stats.drop("unknown_backend");
                self.unknown_since_full += 1;
                continue;
            };
            let value = FlowValue {
                backend: bid,
                generation,
                service: sid,
                last_seen: now_s.wrapping_sub(u32::from(e.age_s)),
                state: synced_state(e.kind, r.proto),
            };
            let p = &mut self.pending;
            let shared = ix.nat_shared(bid).filter(|_| e.kind == codec::ENTRY_FLOW);
            match (e.kind, r.vip) {
                (codec::ENTRY_FLOW, IpAddr::V4(_)) => {
                    let key = FlowKey4 {
                        src: ip4(&e.caddr),
                        dst: ip4(&r.vip),
                        sport: e.cport.to_be(),
                        dport: e.dport.to_be(),
                        proto: r.proto,
                        _pad: [0; 3],
                    };
                    if let Some(rs) = shared {
                        p.rev4
                            .0
                            .push(crate::dataplane::flows::reverse_key4(&key, rs));
                        p.rev4.1.push(key);
                    }
                    p.flows4.0.push(key);
                    p.flows4.1.push(value);
                }
                (codec::ENTRY_FLOW, IpAddr::V6(_)) => {
                    let key = FlowKey6 {
                        src: ip6(&e.caddr),
                        dst: ip6(&r.vip),
                        sport: e.cport.to_be(),
                        dport: e.dport.to_be(),
                        proto: r.proto,
                        _pad: [0; 3],
                    };
                    if let Some(rs) = shared {
                        p.rev6
                            .0
                            .push(crate::dataplane::flows::reverse_key6(&key, rs));
                        p.rev6.1.push(key);
                    }
                    p.flows6.0.push(key);
                    p.flows6.1.push(value);
                }
                (_, IpAddr::V4(_)) => {
                    p.persist4.0.push(PersistKey4 {
                        addr: ip4(&e.caddr),
                        service: sid,
                    });
                    p.persist4.1.push(value);
                }
                (_, IpAddr::V6(_)) => {
                    p.persist6.0.push(PersistKey6 {
                        addr: ip6(&e.caddr),
                        service: sid,
                    });
                    p.persist6.1.push(value);
                }
            }
        }
    }

    /// Writes the pending entries: over whatever is there while this node is backup; while
    /// it is master (a split brain, or the last messages of a failover), never over its
    /// own flows.
    pub fn install(&mut self, t: &FlowTables, master: bool) -> Result<(), FlowsError> {
        let p = std::mem::take(&mut self.pending);
        let mut done = Vec::new();
        if !p.flows4.0.is_empty() {
            done.push(t.install(Table::Flows4, &p.flows4.0, &p.flows4.1, master));
        }
        if !p.flows6.0.is_empty() {
            done.push(t.install(Table::Flows6, &p.flows6.0, &p.flows6.1, master));
        }
        if !p.persist4.0.is_empty() {
            done.push(t.install(Table::Persist4, &p.persist4.0, &p.persist4.1, master));
        }
        if !p.persist6.0.is_empty() {
            done.push(t.install(Table::Persist6, &p.persist6.0, &p.persist6.1, master));
        }
        let reverse = [
            t.install_reverse(false, &p.rev4.0, &p.rev4.1),
            t.install_reverse(true, &p.rev6.0, &p.rev6.1),
        ];
        for d in done {
            let d = d?;
            self.stats.installed += d.written as u64;
            self.stats.kept_own += d.existed as u64;
        }
        for r in reverse {
            r?;
        }
        Ok(())
    }

    /// The ACK a backup sends its master every second: what it installed last, and whether
    /// it still wants the whole table.
    pub fn ack(&mut self, now: Instant, now_ms: u32) -> Vec<u8> {
        self.ack_seq = self.ack_seq.wrapping_add(1);
        let h = Header {
            msg_type: codec::TYPE_ACK,
            flags: if self.full_synced || !self.index_ready {
                0
            } else {
                codec::F_REQUEST_FULL
            },
            sync_id: self.cfg.sync_id,
            boot_id: self.cfg.boot_id,
            seq: self.ack_seq,
            send_ms: now_ms,
        };
        let a = match self.last {
            Some(l) => Ack {
                acked_boot: l.boot,
                acked_seq: l.seq,
                echo_ms: l.send_ms,
                held_ms: now.saturating_duration_since(l.at).as_millis() as u32,
            },
            None => Ack::default(),
        };
        codec::encode_ack(&h, &a, &self.key)
    }
}

/// The round trip an ACK measures, for the sender whose run is `boot`: from sending the
/// acknowledged message to the peer having installed it, plus the ACK's own trip.
pub fn lag_ms(a: &Ack, now_ms: u32, boot: u32) -> Option<f64> {
    if a.acked_boot != boot || a.acked_boot == 0 {
        return None;
    }
    let rtt = now_ms.wrapping_sub(a.echo_ms).wrapping_sub(a.held_ms) as i32;
    (rtt >= 0).then_some(f64::from(rtt))
}

/// The state a synced entry is installed in. The wire carries no state (IPVS's sync
/// does; ours may later): a flow the master synced is a live connection, established for
/// TCP, and counted so on this node as on the master; a template is no connection.
fn synced_state(kind: u8, proto: u8) -> u32 {
    use lb_common::conn_state::{ESTABLISHED, NONE, UDP};
    match (kind, proto) {
        (codec::ENTRY_FLOW, lb_common::PROTO_TCP) => ESTABLISHED,
        (codec::ENTRY_FLOW, _) => UDP,
        _ => NONE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver() -> Receiver {
        Receiver::new(
            ReceiverConfig {
                sync_id: 1,
                peers: vec![],
                own: vec![],
                boot_id: 7,
            },
            Key::new(&[0x42; 32]).unwrap(),
        )
    }

    fn asks_full(r: &mut Receiver) -> bool {
        let ack = r.ack(Instant::now(), 0);
        // The header's flags byte: after the magic (2 bytes) and version/type (1).
        ack[3] & codec::F_REQUEST_FULL != 0
    }

    /// A whole table taken while the index could not name all of it (the daemon had not
    /// configured its dataplane yet) is asked for again at the next index change, once; a
    /// complete one is not.
    #[test]
    fn an_incomplete_whole_table_is_asked_again_once_the_index_changes() {
        let mut r = receiver();
        assert!(!asks_full(&mut r), "not before the daemon gave an index");
        r.index_changed();
        assert!(asks_full(&mut r));
        r.unknown_since_full = 120;
        r.full_done();
        assert!(!asks_full(&mut r));
        r.index_changed();
        assert!(asks_full(&mut r), "asked again after the index changed");
        r.full_done();
        assert!(!asks_full(&mut r));
        r.index_changed();
        assert!(!asks_full(&mut r), "a complete table is not asked again");
        assert_eq!(r.stats.full_syncs, 2);

        // The index changes while a whole table is arriving, after some of it was refused
        // (seen in the namespace test: the table's first message came 12 ms before the
        // daemon's first index): asked again as soon as that table is in.
        let mut r = receiver();
        r.index_changed();
        r.unknown_since_full = 70;
        r.index_changed();
        r.unknown_since_full += 130;
        r.full_done();
        assert!(asks_full(&mut r), "asked again at once");
        r.full_done();
        assert!(!asks_full(&mut r));
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::new(10, 5);
        assert_eq!(w.check(10, 6), Ok(Accepted::InOrder { gap: 0 }));
        assert_eq!(w.check(10, 6), Err(Replay::Duplicate));
        assert_eq!(w.check(10, 9), Ok(Accepted::InOrder { gap: 2 }));
        assert_eq!(w.check(10, 8), Ok(Accepted::Late));
        assert_eq!(w.check(10, 8), Err(Replay::Duplicate));
        assert_eq!(w.check(10, 5), Err(Replay::Duplicate));
        assert_eq!(w.check(10, 200), Ok(Accepted::InOrder { gap: 190 }));
        assert_eq!(w.check(10, 9), Err(Replay::Old));
        assert_eq!(w.check(9, 1000), Err(Replay::StaleBoot));
        // A new run of the sender starts a new window.
        assert_eq!(w.check(11, 1), Ok(Accepted::InOrder { gap: 0 }));
        assert_eq!(w.check(10, 201), Err(Replay::StaleBoot));
        // seq wraps.
        let mut w = ReplayWindow::new(1, u32::MAX);
        assert_eq!(w.check(1, 0), Ok(Accepted::InOrder { gap: 0 }));
        assert_eq!(w.check(1, u32::MAX), Err(Replay::Duplicate));
    }
}
