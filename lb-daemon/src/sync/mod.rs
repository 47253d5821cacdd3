//! Connection sync between the LB pair: what IPVS's sync daemon does (keepalived's
//! `lvs_sync_daemon`), for the XDP program's flow table, whatever the scheduler.
//!
//! * The XDP program writes an event to a ring buffer for every flow and persistence
//!   template it creates, and again (a refresh) when a flow's last packet enters a new
//!   refresh window (`lb-ebpf/src/sync.rs`).
//! * The engine (a thread of its own, so nothing in the main loop delays it) drains the ring
//!   every [`DRAIN_INTERVAL`]. While this node is master of the sync instance, it turns the
//!   events into tagged messages ([`codec`]), naming services and real servers by address
//!   ([`index`]), and sends them within a rate ([`sender`]); otherwise it drops them.
//! * It receives whatever comes to the sync socket ([`socket`]), authenticates it and installs
//!   the entries into its own tables with one batch call ([`receiver`]). A backup's services
//!   are inactive, so its program never forwards with them; after a failover they are the
//!   new master's flows at once, and one whose backend this node sees as dead is rescheduled
//!   by the program's usual check.
//! * A backup acknowledges once a second (the master measures the lag from it) and asks for
//!   the whole table until it has had it: the master then walks its tables into the
//!   messages, within the same rate (a backup that starts after the master, or an old master
//!   that returns, learns the flows it missed).
//!
//! * Active-active (`[announce]`, no `vrrp_instance`): every node is both. It sends its
//!   flows to every peer, acknowledges and asks for the whole table like a backup, and
//!   installs its peers' entries over its own (a flow the router moves to this node keeps
//!   the real server the first node chose, and that node's refreshes keep it alive here).
//!
//! `docs/architecture.md`, "Connection sync", has the wire format and the loss behaviour.
pub mod codec;
pub mod index;
pub mod receiver;
pub mod sender;
pub mod socket;
mod status;

pub use status::{SyncPeerStatus, SyncStatus};

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use lb_common::{sync_stat, FlowKey4, FlowKey6, FlowValue, PersistKey4, PersistKey6};
use tracing::{info, warn};

use self::{
    codec::{Key, WireEntry},
    index::Index,
    receiver::{Incoming, Receiver, ReceiverConfig},
    sender::{Sender, SenderConfig},
    socket::SyncSocket,
};
use crate::{
    config::SyncConfig,
    dataplane::flows::{Cursor, FlowTables, Table},
    log_limit::LogLimit,
};

/// How often the ring is drained: the largest share of the lag (events are submitted without
/// a wakeup, so the ring is never polled for readiness).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(5);
/// How often a backup acknowledges, and the status is published.
pub const ACK_INTERVAL: Duration = Duration::from_secs(1);
/// Messages the sender may hold before the engine stops draining the ring.
pub const QUEUE_LIMIT: usize = 4096;
/// A peer that asked for the whole table gets it again at most this often.
const FULL_SYNC_AGAIN: Duration = Duration::from_secs(10);
/// A whole-table walk goes on only while fewer messages than this are queued: live events
/// come first.
const BULK_QUEUE_LOW: usize = 64;
/// Datagrams read per turn of the loop (then the ring gets its turn).
const RECV_PER_TURN: usize = 512;
/// Pending entries that make the receiver install before reading more.
const INSTALL_BATCH: usize = 8192;
/// A peer not heard from for this long is left out of the status.
const PEER_FORGET: Duration = Duration::from_secs(600);

/// The program's `CLOCK` (seconds): what flows' `last_seen` is measured on.
pub fn now_s() -> u32 {
    crate::dataplane::program_seconds()
}

/// Milliseconds of CLOCK_MONOTONIC, wrapping: `send_ms` and its echo.
pub fn now_ms() -> u32 {
    crate::os::monotonic().as_millis() as u32
}

/// This run's boot id: the Unix time at start, so that a restarted sender has a larger one
/// (a peer's replay window then starts again); past `last` (the previous run's, kept beside
/// the pinned maps), since a restart within the same second would repeat it.
pub fn boot_id(last: u32) -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
        .max(1)
        .max(last.saturating_add(1))
}

/// What the main loop and the engine share.
struct Shared {
    master: AtomicBool,
    /// Active-active: always sending, never only a backup.
    active: bool,
    stop: AtomicBool,
    index: Mutex<Arc<Index>>,
    /// Bumped at each change of `index`.
    index_gen: std::sync::atomic::AtomicU64,
    status: Mutex<SyncStatus>,
}

/// The running engine; dropping it stops the thread.
pub struct SyncHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the engine takes from the loaded program.
pub struct ProgramParts {
    pub ring: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub tables: Arc<FlowTables>,
    /// This run's boot id ([`boot_id`]).
    pub boot: u32,
}

impl ProgramParts {
    /// The event ring and its counters of a program instance (`fds`, its maps).
    pub fn open(
        fds: &crate::dataplane::program::MapFds,
        tables: Arc<FlowTables>,
        boot: u32,
    ) -> anyhow::Result<Self> {
        let open = |name: &'static str| {
            fds.map(name)
                .map_err(|e| anyhow::anyhow!("the XDP program has no map {name}: {e:?}"))
        };
        Ok(Self {
            ring: RingBuf::try_from(open(lb_common::names::SYNC_EVENTS)?)?,
            stats: PerCpuArray::try_from(open(lb_common::names::SYNC_STATS)?)?,
            tables,
            boot,
        })
    }
}

impl SyncHandle {
    /// Opens the socket and starts the engine (as backup: [`SyncHandle::set_master`] tells
    /// it otherwise).
    pub fn start(c: &SyncConfig, key: &[u8], parts: ProgramParts) -> io::Result<Self> {
        let key = Key::new(key).ok_or_else(|| io::Error::other("sync key too short"))?;
        let socket = SyncSocket::open(c)?;
        let active = c.vrrp_instance.is_none();
        let shared = Arc::new(Shared {
            master: AtomicBool::new(active),
            active,
            stop: AtomicBool::new(false),
            index: Mutex::new(Arc::new(Index::default())),
            index_gen: std::sync::atomic::AtomicU64::new(0),
            status: Mutex::new(SyncStatus::default()),
        });
        let engine = Engine::new(c, key, socket, parts);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("lb-sync".into())
            .spawn(move || engine.run(&s))?;
        info!(interface = %c.interface, port = c.port, sync_id = c.sync_id, destinations = ?c.destinations(), "connection sync started");
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// This node became master (sends its flows) or stopped being master (installs the
    /// peer's; its flow caches are cleared).
    pub fn set_master(&self, master: bool) {
        self.shared
            .master
            .store(master || self.shared.active, Ordering::SeqCst);
    }

    /// The translation tables the engine uses now (a new engine goes on with them).
    pub fn index(&self) -> Index {
        self.shared
            .index
            .lock()
            .map(|g| (**g).clone())
            .unwrap_or_default()
    }

    /// Whether this node sends (its sync instance is master).
    pub fn is_master(&self) -> bool {
        self.shared.master.load(Ordering::SeqCst)
    }

    /// The translation tables after a dataplane update.
    pub fn set_index(&self, ix: Index) {
        if let Ok(mut g) = self.shared.index.lock() {
            if **g != ix {
                *g = Arc::new(ix);
                self.shared.index_gen.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The status the engine last published (once a second, and at each role change), with
    /// the role as it is now.
    pub fn status(&self) -> SyncStatus {
        let mut s = self
            .shared
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        s.role = role(
            self.shared.active,
            self.shared.master.load(Ordering::SeqCst),
        )
        .into();
        s
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The role status shows: `active` (active-active: sends and installs), `sending`
/// (master), `receiving` (backup).
fn role(active: bool, master: bool) -> &'static str {
    match (active, master) {
        (true, _) => "active",
        (false, true) => "sending",
        (false, false) => "receiving",
    }
}

/// A walk of the four tables for a peer that asked for all of them.
struct Bulk {
    next: usize,
    f4: Option<Cursor<FlowKey4>>,
    f6: Option<Cursor<FlowKey6>>,
    p4: Option<Cursor<PersistKey4>>,
    p6: Option<Cursor<PersistKey6>>,
}

impl Bulk {
    fn new() -> Self {
        Self {
            next: 0,
            f4: None,
            f6: None,
            p4: None,
            p6: None,
        }
    }
}

/// One walked entry as the wire names it.
fn walked_entry(
    table: Table,
    key: &[u32],
    v: &FlowValue,
    ix: &Index,
    now_s: u32,
) -> Option<(u32, codec::WireRef, WireEntry)> {
    let template = matches!(table, Table::Persist4 | Table::Persist6);
    let age = now_s.wrapping_sub(v.last_seen);
    if !ix.alive(v.service, age, template) {
        return None;
    }
    ix.wire_ref(v.service, v.backend, v.generation)?;
    let mut words = [0u32; 10];
    words[..key.len()].copy_from_slice(key);
    let ev = match table {
        Table::Flows4 | Table::Persist4 => sender::Event::V4(lb_common::SyncEvent4 {
            kind: if template {
                lb_common::SYNC_EV_PERSIST
            } else {
                lb_common::SYNC_EV_FLOW
            },
            value: *v,
            key: [words[0], words[1], words[2], words[3]],
        }),
        Table::Flows6 | Table::Persist6 => sender::Event::V6(lb_common::SyncEvent6 {
            kind: if template {
                lb_common::SYNC_EV_PERSIST
            } else {
                lb_common::SYNC_EV_FLOW
            },
            value: *v,
            key: words,
        }),
    };
    // The reference translate gives: a group's flow is named by its own VIP.
    let (id, r, e) = sender::translate(&ev, ix, now_s).ok()?;
    Some((id, r, e))
}

/// Key types as words (the event layout).
trait Words: Copy + Default {
    fn words(&self) -> Vec<u32>;
}

impl Words for FlowKey4 {
    fn words(&self) -> Vec<u32> {
        // SAFETY: repr(C), four words.
        let w: [u32; 4] = unsafe { std::mem::transmute(*self) };
        w.to_vec()
    }
}
impl Words for FlowKey6 {
    fn words(&self) -> Vec<u32> {
        // SAFETY: repr(C), ten words.
        let w: [u32; 10] = unsafe { std::mem::transmute(*self) };
        w.to_vec()
    }
}
impl Words for PersistKey4 {
    fn words(&self) -> Vec<u32> {
        vec![self.addr]
    }
}
impl Words for PersistKey6 {
    fn words(&self) -> Vec<u32> {
        self.addr.to_vec()
    }
}

/// Counters that only the engine's loop keeps.
#[derive(Default)]
struct EngineStats {
    drained_as_backup: u64,
    recv_errors: u64,
    install_errors: u64,
    ring_malformed: u64,
}

struct Engine {
    cfg: SyncConfig,
    boot_id: u32,
    socket: SyncSocket,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    tables: Arc<FlowTables>,
    sender: Sender,
    receiver: Receiver,
    bulk: Option<Bulk>,
    /// When each peer (and which run of it) last got the whole table.
    full_sent: BTreeMap<IpAddr, (u32, Instant)>,
    stats: EngineStats,
    /// Rejections are logged at a limited rate; how many there were at the last line.
    rejections_log: (LogLimit, u64),
}

impl Engine {
    fn new(c: &SyncConfig, key: Key, socket: SyncSocket, parts: ProgramParts) -> Self {
        let boot_id = parts.boot;
        let now = Instant::now();
        let sender = Sender::new(
            SenderConfig {
                sync_id: c.sync_id,
                boot_id,
                max_message: c.max_message,
                max_rate: c.max_rate,
                queue_limit: QUEUE_LIMIT,
            },
            key.clone(),
            now,
        );
        let receiver = Receiver::new(
            ReceiverConfig {
                sync_id: c.sync_id,
                peers: c.peers.clone(),
                own: socket::own_addresses(),
                boot_id,
            },
            key,
        );
        Self {
            cfg: c.clone(),
            boot_id,
            socket,
            ring: parts.ring,
            lost: parts.stats,
            tables: parts.tables,
            sender,
            receiver,
            bulk: None,
            full_sent: BTreeMap::new(),
            stats: EngineStats::default(),
            rejections_log: (quiet_for_a_while(now), 0),
        }
    }

    fn run(mut self, shared: &Shared) {
        let mut buf = vec![0u8; 65536];
        let mut was_master = false;
        let mut next_drain = Instant::now();
        let mut next_tick = Instant::now();
        let mut index_gen = 0;
        while !shared.stop.load(Ordering::SeqCst) {
            let gen = shared.index_gen.load(Ordering::SeqCst);
            if gen != index_gen {
                index_gen = gen;
                self.receiver.index_changed();
            }
            let master = shared.master.load(Ordering::SeqCst);
            if master != was_master {
                self.role_changed(master);
                was_master = master;
                self.publish(shared, master);
            }
            let ix = shared.index.lock().map(|g| g.clone()).unwrap_or_default();
            self.receive(&mut buf, &ix, master, shared.active);
            let now = Instant::now();
            if now >= next_drain {
                self.drain(&ix, master);
                if master {
                    self.bulk_step(&ix);
                }
                self.sender.flush(now_ms());
                next_drain = now + DRAIN_INTERVAL;
            }
            self.send();
            if now >= next_tick {
                if !master || shared.active {
                    let ack = self.receiver.ack(now, now_ms());
                    self.send_now(&ack);
                }
                self.publish(shared, master);
                next_tick = now + ACK_INTERVAL;
            }
            let until = next_drain
                .min(next_tick)
                .saturating_duration_since(Instant::now());
            let wait = if self.sender.queued() > 0 {
                until.min(Duration::from_millis(1))
            } else {
                until
            };
            self.socket.wait_readable(wait);
        }
    }

    fn role_changed(&mut self, master: bool) {
        if master {
            info!("connection sync: master, sending this node's flows");
        } else {
            info!("connection sync: not master, installing the peer's flows");
            self.sender.clear();
            self.bulk = None;
            // Within one CLOCK second a cache hit is not checked against the table: a
            // cached choice of before must not outlive what the peer tells the table.
            if let Err(e) = self.tables.clear_caches() {
                warn!("connection sync: clearing the flow caches: {e}");
            }
        }
    }

    fn receive(&mut self, buf: &mut [u8], ix: &Index, master: bool, active: bool) {
        // A master keeps its own flows over what a peer sends (a split brain, the last
        // messages of a failover); an active-active node takes its peers' (see the module's
        // comment).
        let keep_own = master && !active;
        let now = Instant::now();
        let (s, ms) = (now_s(), now_ms());
        for _ in 0..RECV_PER_TURN {
            match self.socket.socket.recv_from(buf) {
                Ok((n, from)) => {
                    let got = self
                        .receiver
                        .on_datagram(from.ip(), &buf[..n], ix, s, ms, now);
                    if let Incoming::Ack {
                        from,
                        request_full: true,
                    } = got
                    {
                        self.full_sync_asked(from, master, now);
                    }
                    if self.receiver.pending() >= INSTALL_BATCH {
                        self.install(keep_own);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.stats.recv_errors += 1;
                    break;
                }
            }
        }
        self.install(keep_own);
        self.log_rejections(now);
    }

    fn install(&mut self, keep_own: bool) {
        if self.receiver.pending() == 0 {
            return;
        }
        if let Err(e) = self.receiver.install(&self.tables, keep_own) {
            self.stats.install_errors += 1;
            warn!("connection sync: installing the peer's flows: {e}");
        }
    }

    /// Rejected datagrams, logged at most once every ten seconds (a flood stays one line).
    fn log_rejections(&mut self, now: Instant) {
        let total: u64 = self
            .receiver
            .stats
            .dropped
            .iter()
            .filter(|(k, _)| !k.starts_with("unknown_"))
            .map(|(_, v)| v)
            .sum();
        let (limit, logged) = &mut self.rejections_log;
        if total > *logged && limit.allow_at(now).is_some() {
            warn!(dropped = ?self.receiver.stats.dropped, "connection sync: datagrams refused");
            *logged = total;
        }
    }

    fn full_sync_asked(&mut self, from: IpAddr, master: bool, now: Instant) {
        if !master || self.bulk.is_some() {
            return;
        }
        // A peer that restarted gets it at once; one that asks again (its end marker was
        // lost) after a while.
        let boot = self.receiver.peers.get(&from).map_or(0, |p| p.boot_id);
        if self
            .full_sent
            .get(&from)
            .is_some_and(|(b, t)| *b == boot && now.duration_since(*t) < FULL_SYNC_AGAIN)
        {
            return;
        }
        info!(peer = %from, "connection sync: the peer asks for the whole table");
        self.full_sent.insert(from, (boot, now));
        self.bulk = Some(Bulk::new());
    }

    /// The events of the ring: sent while master, dropped otherwise (a backup's program
    /// makes flows only for services it serves, which are not synced).
    fn drain(&mut self, ix: &Index, master: bool) {
        let (s, ms) = (now_s(), now_ms());
        while self.sender.has_room() {
            let Some(item) = self.ring.next() else { break };
            match sender::parse_event(&item) {
                Some(ev) if master => self.sender.push_event(&ev, ix, s, ms),
                Some(_) => self.stats.drained_as_backup += 1,
                None => self.stats.ring_malformed += 1,
            }
        }
    }

    /// A step of the whole-table walk, if one is on and the queue has room.
    fn bulk_step(&mut self, ix: &Index) {
        if self.sender.queued() >= BULK_QUEUE_LOW {
            return;
        }
        let Some(mut bulk) = self.bulk.take() else {
            return;
        };
        let (s, ms) = (now_s(), now_ms());
        let done = match Table::ALL.get(bulk.next).copied() {
            None => true,
            Some(t) => {
                let finished = match t {
                    Table::Flows4 => self.walk(&mut bulk.f4, t, ix, s, ms),
                    Table::Flows6 => self.walk(&mut bulk.f6, t, ix, s, ms),
                    Table::Persist4 => self.walk(&mut bulk.p4, t, ix, s, ms),
                    Table::Persist6 => self.walk(&mut bulk.p6, t, ix, s, ms),
                };
                if finished {
                    bulk.next += 1;
                }
                false
            }
        };
        if done {
            self.sender.full_done(ms);
            info!("connection sync: whole table sent");
        } else {
            self.bulk = Some(bulk);
        }
    }

    /// One batch of table `t`; true when the table is done (or cannot be read).
    fn walk<K: Words>(
        &mut self,
        c: &mut Option<Cursor<K>>,
        t: Table,
        ix: &Index,
        s: u32,
        ms: u32,
    ) -> bool {
        let cursor = c.get_or_insert_with(|| self.tables.cursor::<K>(t));
        let entries: Vec<(u32, codec::WireRef, WireEntry)> = match self.tables.step(cursor) {
            Ok((keys, values)) => keys
                .iter()
                .zip(values)
                .filter_map(|(k, v)| walked_entry(t, &k.words(), v, ix, s))
                .collect(),
            Err(e) => {
                warn!("connection sync: reading {} for the peer: {e}", t.name());
                return true;
            }
        };
        for (id, r, e) in &entries {
            self.sender.push(*id, r, e, ms);
        }
        cursor.is_done()
    }

    fn send_now(&mut self, msg: &[u8]) {
        for d in &self.socket.destinations {
            if self.socket.socket.send_to(msg, d).is_err() {
                self.sender.stats.send_errors += 1;
            }
        }
    }

    /// What the rate allows of the queue.
    fn send(&mut self) {
        let now = Instant::now();
        while let Some(msg) = self.sender.pop(now) {
            let mut again = false;
            for d in &self.socket.destinations {
                match self.socket.socket.send_to(&msg, d) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => again = true,
                    Err(_) => self.sender.stats.send_errors += 1,
                }
            }
            if again {
                // The socket buffer is full: the message waits for the next turn (sent
                // again to every destination: a duplicate is refused by the window).
                self.sender.unpop(msg);
                return;
            }
            self.sender.sent(&msg);
        }
    }

    fn ring_lost(&self) -> u64 {
        self.lost
            .get(&sync_stat::LOST, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    fn publish(&self, shared: &Shared, master: bool) {
        let now = Instant::now();
        let s = &self.sender.stats;
        let r = &self.receiver.stats;
        let mut dropped: BTreeMap<String, u64> =
            r.dropped.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        for (k, v) in [
            ("ring_lost", self.ring_lost()),
            ("not_synced", s.not_synced),
            ("stale_backend", s.stale_backend),
            (
                "malformed_event",
                s.malformed_event + self.stats.ring_malformed,
            ),
            ("send_errors", s.send_errors),
            ("recv_errors", self.stats.recv_errors),
            ("install_errors", self.stats.install_errors),
        ] {
            if v > 0 {
                *dropped.entry(k.to_string()).or_default() += v;
            }
        }
        let peers: Vec<SyncPeerStatus> = self
            .receiver
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_heard) < PEER_FORGET)
            .map(|(a, p)| SyncPeerStatus {
                addr: Some(*a),
                last_heard_ms: now.duration_since(p.last_heard).as_millis() as u64,
                boot_id: p.boot_id,
                lag_ms: p.lag_ms,
                wants_full: p.wants_full,
            })
            .collect();
        let lag_ms = peers
            .iter()
            .filter(|p| p.last_heard_ms < 5_000)
            .filter_map(|p| p.lag_ms)
            .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));
        let status = SyncStatus {
            interface: self.cfg.interface.clone(),
            vrrp_instance: self.cfg.vrrp_instance.clone().unwrap_or_default(),
            sync_id: self.cfg.sync_id,
            role: role(shared.active, master).into(),
            boot_id: self.boot_id,
            peers,
            lag_ms: if master { lag_ms } else { None },
            sent_messages: s.messages,
            sent_entries: s.entries,
            sent_bytes: s.bytes,
            received_messages: r.messages,
            received_entries: r.entries,
            installed_entries: r.installed,
            lost_messages: r.lost,
            full_syncs_sent: s.full_syncs,
            full_syncs_received: r.full_syncs,
            dropped,
        };
        if let Ok(mut g) = shared.status.lock() {
            *g = status;
        }
    }
}

/// The index of `dp`'s state for `config`'s `[sync]`: the services on the sync instance's
/// VIPs (not `static` ones, which both nodes serve with flows of their own), or on the
/// announced VIPs.
pub fn index_for<W: crate::dataplane::maps::MapWriter>(
    config: &crate::config::Config,
    dp: &crate::dataplane::Dataplane<W>,
) -> Index {
    let Some(scope) = crate::config::sync::scope(config) else {
        return Index::default();
    };
    let synced: std::collections::HashSet<crate::model::ServiceKey> = config
        .virtual_servers
        .iter()
        .filter(|vs| scope.synced(vs))
        .map(|vs| vs.key())
        .collect();
    Index::build(dp, |s| synced.contains(&s.key()))
}

/// The limit of the "datagrams refused" line: at most one every ten seconds, and none in
/// the first ten (replays and strangers are common while both nodes come up).
fn quiet_for_a_while(now: Instant) -> LogLimit {
    let mut limit = LogLimit::new(Duration::from_secs(10));
    limit.allow_at(now);
    limit
}
