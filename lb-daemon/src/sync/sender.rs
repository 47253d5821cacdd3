//! The master's side: the program's events (or a walk of its tables) to tagged DATA
//! messages, queued and sent within a rate.
//!
//! Loss behaviour, by design bounded and counted, never blocking the packet path:
//! * The queue holds at most `queue_limit` messages. While it is full the engine stops
//!   draining the event ring; the ring then fills and the XDP program drops the events it
//!   has no room for (`ring_lost`, counted per CPU in `SYNC_STATS`).
//! * Messages leave at most at `max_rate` bytes per second (a token bucket with a burst of
//!   50 ms); a socket that refuses one (its buffer full) keeps it queued for the next try.
//! * An event whose service is not synced, or whose backend is not the one it names any
//!   more (a reload moved it), is skipped and counted (`not_synced`, `stale_backend`).
//!
//! A lost entry heals itself while its flow has traffic: the program sends a flow again
//! at most once per refresh interval. A flow lost and idle meanwhile is rescheduled after a
//! failover, as without sync.
use std::{collections::VecDeque, net::IpAddr, time::Instant};

use lb_common::{
    FlowKey4, FlowKey6, SyncEvent4, SyncEvent6, SYNC_EV_FLOW, SYNC_EV_F_REFRESH, SYNC_EV_KIND_MASK,
    SYNC_EV_PERSIST,
};

use super::{
    codec::{self, DataBuilder, Header, Key, Push, WireEntry, WireRef},
    index::Index,
};

/// One event from the program's ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    V4(SyncEvent4),
    V6(SyncEvent6),
}

/// The event in a ring record, by its size (the program writes one of the two types).
pub fn parse_event(b: &[u8]) -> Option<Event> {
    // SAFETY: both types are repr(C) integers only (every bit pattern valid), and the
    // length is checked; `read_unaligned` copies whatever the alignment.
    unsafe {
        match b.len() {
            n if n == std::mem::size_of::<SyncEvent4>() => Some(Event::V4(
                std::ptr::read_unaligned(b.as_ptr().cast::<SyncEvent4>()),
            )),
            n if n == std::mem::size_of::<SyncEvent6>() => Some(Event::V6(
                std::ptr::read_unaligned(b.as_ptr().cast::<SyncEvent6>()),
            )),
            _ => None,
        }
    }
}

fn v4(word: u32) -> IpAddr {
    IpAddr::from(word.to_ne_bytes())
}

fn v6(words: &[u32]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().take(4).enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    IpAddr::from(o)
}

/// Seconds since `last_seen` at `now` (the program's clock), as the wire's u16; a stamp
/// from the future (the clock is written once a second) is age 0.
pub fn age(now: u32, last_seen: u32) -> u16 {
    let a = now.wrapping_sub(last_seen);
    if a > u32::MAX / 2 {
        0
    } else {
        a.min(u32::from(u16::MAX)) as u16
    }
}

/// What an event says, as the wire names it: (backend id = the reference's number, the
/// reference, the entry). `None`: not synced, or not the backend it was made for.
pub fn translate(ev: &Event, ix: &Index, now_s: u32) -> Result<(u32, WireRef, WireEntry), Skip> {
    let (kind, value) = match ev {
        Event::V4(e) => (e.kind, e.value),
        Event::V6(e) => (e.kind, e.value),
    };
    let wire_kind = match kind & SYNC_EV_KIND_MASK {
        SYNC_EV_FLOW => codec::ENTRY_FLOW,
        SYNC_EV_PERSIST => codec::ENTRY_TEMPLATE,
        _ => return Err(Skip::Malformed),
    };
    let r = ix
        .wire_ref(value.service, value.backend, value.generation)
        .ok_or(if ix.is_synced(value.service) {
            Skip::StaleBackend
        } else {
            Skip::NotSynced
        })?;
    let template = wire_kind == codec::ENTRY_TEMPLATE;
    let (caddr, cport, dport, dst) = match ev {
        Event::V4(e) if template => (v4(e.key[0]), 0, 0, None),
        Event::V4(e) => {
            // SAFETY: the key of a flow event is a FlowKey4 as words (lb-common).
            let k: FlowKey4 = unsafe { std::mem::transmute(e.key) };
            let dport = u16::from_be(k.dport);
            (v4(k.src), u16::from_be(k.sport), dport, Some(v4(k.dst)))
        }
        Event::V6(e) if template => (v6(&e.key[..4]), 0, 0, None),
        Event::V6(e) => {
            // SAFETY: as above, a FlowKey6.
            let k: FlowKey6 = unsafe { std::mem::transmute(e.key) };
            let dport = u16::from_be(k.dport);
            (v6(&k.src), u16::from_be(k.sport), dport, Some(v6(&k.dst)))
        }
    };
    // A flow to another address of a virtual_server_group: named by that address (and its
    // port, or 0 for every port), which the peer's index knows as the same service.
    let mut r = *r;
    if let Some(dst) = dst.filter(|d| *d != r.vip) {
        r.vport = if ix.service_at(r.proto, dst, dport) == Some(value.service) {
            dport
        } else if ix.service_at(r.proto, dst, 0) == Some(value.service) {
            0
        } else {
            return Err(Skip::NotSynced);
        };
        r.vip = dst;
    }
    Ok((
        value.backend,
        r,
        WireEntry {
            kind: wire_kind,
            refresh: kind & SYNC_EV_F_REFRESH != 0,
            age_s: age(now_s, value.last_seen),
            cport,
            dport,
            caddr,
        },
    ))
}

/// Why an event was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    NotSynced,
    StaleBackend,
    Malformed,
}

impl Skip {
    pub fn name(self) -> &'static str {
        match self {
            Skip::NotSynced => "not_synced",
            Skip::StaleBackend => "stale_backend",
            Skip::Malformed => "malformed_event",
        }
    }
}

/// Bytes per second, with a burst.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// Takes `n` bytes' worth if there are; a message larger than the burst passes once the
    /// bucket is full.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        let n = (n as f64).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// Counters of the sending side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub events: u64,
    pub entries: u64,
    pub messages: u64,
    /// UDP payload bytes.
    pub bytes: u64,
    pub not_synced: u64,
    pub stale_backend: u64,
    pub malformed_event: u64,
    pub send_errors: u64,
    pub full_syncs: u64,
}

/// Batches entries into messages and queues them.
#[derive(Debug)]
pub struct Sender {
    sync_id: u8,
    boot_id: u32,
    seq: u32,
    key: Key,
    builder: DataBuilder,
    queue: VecDeque<Vec<u8>>,
    queue_limit: usize,
    bucket: TokenBucket,
    /// Flags for the next message sealed ([`codec::F_FULL_DONE`]).
    next_flags: u8,
    pub stats: SenderStats,
}

/// Settings of a [`Sender`].
#[derive(Clone, Copy, Debug)]
pub struct SenderConfig {
    pub sync_id: u8,
    pub boot_id: u32,
    pub max_message: usize,
    pub max_rate: u64,
    pub queue_limit: usize,
}

impl Sender {
    pub fn new(c: SenderConfig, key: Key, now: Instant) -> Self {
        let message = (c.max_message + codec::WIRE_OVERHEAD_V6) as u64;
        let burst = (c.max_rate / 20).max(2 * message);
        Self {
            sync_id: c.sync_id,
            boot_id: c.boot_id,
            seq: 0,
            key,
            builder: DataBuilder::new(c.max_message),
            queue: VecDeque::new(),
            queue_limit: c.queue_limit.max(1),
            bucket: TokenBucket::new(c.max_rate, burst, now),
            next_flags: 0,
            stats: SenderStats::default(),
        }
    }

    /// Room for more messages (else the caller stops draining the ring).
    pub fn has_room(&self) -> bool {
        self.queue.len() < self.queue_limit
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn header(&mut self, now_ms: u32) -> Header {
        self.seq = self.seq.wrapping_add(1);
        Header {
            msg_type: codec::TYPE_DATA,
            flags: std::mem::take(&mut self.next_flags),
            sync_id: self.sync_id,
            boot_id: self.boot_id,
            seq: self.seq,
            send_ms: now_ms,
        }
    }

    fn seal(&mut self, now_ms: u32) {
        let h = self.header(now_ms);
        let msg = self.builder.seal(&h, &self.key);
        self.queue.push_back(msg);
    }

    /// One event from the ring.
    pub fn push_event(&mut self, ev: &Event, ix: &Index, now_s: u32, now_ms: u32) {
        self.stats.events += 1;
        match translate(ev, ix, now_s) {
            Ok((id, r, e)) => self.push(id, &r, &e, now_ms),
            Err(Skip::NotSynced) => self.stats.not_synced += 1,
            Err(Skip::StaleBackend) => self.stats.stale_backend += 1,
            Err(Skip::Malformed) => self.stats.malformed_event += 1,
        }
    }

    /// One entry (an event's, or one of a table walk); `id` numbers `r` (its backend id).
    pub fn push(&mut self, id: u32, r: &WireRef, e: &WireEntry, now_ms: u32) {
        match self.builder.push(id, r, e) {
            Push::Added => {}
            Push::Full => {
                self.seal(now_ms);
                if self.builder.push(id, r, e) != Push::Added {
                    self.stats.malformed_event += 1;
                    return;
                }
            }
            Push::Invalid => {
                self.stats.malformed_event += 1;
                return;
            }
        }
        self.stats.entries += 1;
    }

    /// Seals the message being built, if it holds anything (or carries a flag).
    pub fn flush(&mut self, now_ms: u32) {
        if !self.builder.is_empty() || self.next_flags != 0 {
            self.seal(now_ms);
        }
    }

    /// The end of a whole-table sync: the next message says so (an empty one if need be).
    pub fn full_done(&mut self, now_ms: u32) {
        self.next_flags |= codec::F_FULL_DONE;
        self.flush(now_ms);
        self.stats.full_syncs += 1;
    }

    /// The next message the rate allows, if any.
    pub fn pop(&mut self, now: Instant) -> Option<Vec<u8>> {
        let len = self.queue.front()?.len();
        if !self.bucket.take(len + codec::WIRE_OVERHEAD_V4, now) {
            return None;
        }
        self.queue.pop_front()
    }

    /// A message the socket did not take: first in line again.
    pub fn unpop(&mut self, msg: Vec<u8>) {
        self.queue.push_front(msg);
    }

    /// Counts a message as sent.
    pub fn sent(&mut self, msg: &[u8]) {
        self.stats.messages += 1;
        self.stats.bytes += msg.len() as u64;
    }

    /// Drops what is queued or being built (the node stopped being master).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.builder.clear();
        self.next_flags = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_common::{addr_v4, FlowValue};

    use super::*;
    use crate::{
        dataplane::{maps::MemMaps, BackendSpec, Dataplane, ServiceSpec},
        model::{Limits, Proto, Scheduler},
        sync::codec::{decode, Body},
    };

    fn key() -> Key {
        Key::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn dp() -> (Dataplane<MemMaps>, ServiceSpec) {
        let spec = ServiceSpec {
            vip: "192.0.2.100".parse().unwrap(),
            port: 80,
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
            backends: (0..3)
                .map(|i| BackendSpec {
                    thresholds: Default::default(),
                    addr: format!("192.0.2.{}:80", 11 + i).parse().unwrap(),
                    weight: 1,
                    mac: Some([2, 0, 0, 0, 0, i]),
                    forward: crate::model::Forward::Dr,
                })
                .collect(),
        };
        let mut d = Dataplane::new(MemMaps::default(), Limits::default());
        d.update(std::slice::from_ref(&spec)).unwrap();
        (d, spec)
    }

    fn flow_event(sid: u32, bid: u32, generation: u32, sport: u16, last_seen: u32) -> Event {
        let k = FlowKey4 {
            src: addr_v4([198, 51, 100, 7]),
            dst: addr_v4([192, 0, 2, 100]),
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        // SAFETY: a FlowKey4 is four words.
        let key: [u32; 4] = unsafe { std::mem::transmute(k) };
        Event::V4(SyncEvent4 {
            kind: SYNC_EV_FLOW,
            value: FlowValue {
                backend: bid,
                generation,
                service: sid,
                last_seen,
                state: lb_common::conn_state::ESTABLISHED,
            },
            key,
        })
    }

    /// A flow to another VIP of a virtual_server_group is named by that VIP on the wire
    /// (its peer installs it for that address), in its own reference.
    #[test]
    fn a_group_flow_is_named_by_its_own_vip() {
        let (_, mut spec) = dp();
        spec.aliases = vec![
            ("192.0.2.101".parse().unwrap(), 80),
            ("192.0.2.102".parse().unwrap(), 0),
        ];
        let mut d = Dataplane::new(MemMaps::default(), Limits::default());
        d.update(std::slice::from_ref(&spec)).unwrap();
        let ix = Index::build(&d, |_| true);
        let (sid, bids) = d.ids_of(&spec).unwrap();
        let g = d.current().backends[&bids[0]].generation;
        let to = |last: u8, dport: u16| {
            let Event::V4(mut e) = flow_event(sid, bids[0], g, 40000, 1000) else {
                unreachable!()
            };
            // SAFETY: a flow event's key is a FlowKey4 as four words.
            let mut k = unsafe { std::mem::transmute::<[u32; 4], FlowKey4>(e.key) };
            k.dst = addr_v4([192, 0, 2, last]);
            k.dport = dport.to_be();
            // SAFETY: a FlowKey4 is four words.
            e.key = unsafe { std::mem::transmute::<FlowKey4, [u32; 4]>(k) };
            Event::V4(e)
        };
        let named =
            |ev: &Event| translate(ev, &ix, 1002).map(|(_, r, _)| (r.vip.to_string(), r.vport));
        assert_eq!(named(&to(100, 80)), Ok(("192.0.2.100".into(), 80)));
        assert_eq!(named(&to(101, 80)), Ok(("192.0.2.101".into(), 80)));
        assert_eq!(
            named(&to(102, 8443)),
            Ok(("192.0.2.102".into(), 0)),
            "every port"
        );
        assert_eq!(named(&to(103, 80)), Err(Skip::NotSynced), "not the group's");
        // Each names the service on the receiving side, and two VIPs of one backend are
        // two references in one message.
        for ev in [to(100, 80), to(101, 80)] {
            let (_, r, _) = translate(&ev, &ix, 1002).unwrap();
            assert_eq!(ix.service(&r), Some(sid));
        }
        let mut b = codec::DataBuilder::new(codec::DEFAULT_MAX_MESSAGE);
        for ev in [to(100, 80), to(101, 80), to(101, 80)] {
            let (id, r, e) = translate(&ev, &ix, 1002).unwrap();
            assert_eq!(b.push(id, &r, &e), codec::Push::Added);
        }
        let h = codec::Header {
            msg_type: 0,
            flags: 0,
            sync_id: 7,
            boot_id: 1,
            seq: 1,
            send_ms: 0,
        };
        let m = decode(&b.seal(&h, &key()), &key(), 7).unwrap();
        let Body::Data(data) = m.body else { panic!() };
        let vips: Vec<String> = data.refs.iter().map(|r| r.vip.to_string()).collect();
        assert_eq!(vips, ["192.0.2.100", "192.0.2.101"]);
        assert_eq!(data.entries.len(), 3);
    }

    #[test]
    fn events_become_messages_and_unknown_ones_are_counted() {
        let (d, spec) = dp();
        let ix = Index::build(&d, |_| true);
        let (sid, bids) = d.ids_of(&spec).unwrap();
        let g = d.current().backends[&bids[1]].generation;
        let now = Instant::now();
        let mut s = Sender::new(
            SenderConfig {
                sync_id: 7,
                boot_id: 99,
                max_message: codec::DEFAULT_MAX_MESSAGE,
                max_rate: 1 << 30,
                queue_limit: 16,
            },
            key(),
            now,
        );
        s.push_event(&flow_event(sid, bids[1], g, 40000, 1000), &ix, 1002, 5);
        s.push_event(&flow_event(sid, bids[1], g + 1, 40001, 1000), &ix, 1002, 5);
        s.push_event(&flow_event(sid + 1, 77, 1, 40002, 1000), &ix, 1002, 5);
        assert_eq!((s.stats.stale_backend, s.stats.not_synced), (1, 1));
        assert!(s.pop(now).is_none(), "nothing sealed yet");
        s.flush(5);
        let msg = s.pop(now).unwrap();
        let m = decode(&msg, &key(), 7).unwrap();
        assert_eq!(
            (m.header.boot_id, m.header.seq, m.header.send_ms),
            (99, 1, 5)
        );
        let Body::Data(data) = m.body else { panic!() };
        assert_eq!(data.refs[0].rip, "192.0.2.12".parse::<IpAddr>().unwrap());
        let (_, e) = data.entries[0];
        assert_eq!((e.cport, e.dport, e.age_s), (40000, 80, 2));
        assert_eq!(e.caddr, "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn many_events_fill_messages_and_the_queue_bounds_them() {
        let (d, spec) = dp();
        let ix = Index::build(&d, |_| true);
        let (sid, bids) = d.ids_of(&spec).unwrap();
        let now = Instant::now();
        let mut s = Sender::new(
            SenderConfig {
                sync_id: 7,
                boot_id: 1,
                max_message: codec::DEFAULT_MAX_MESSAGE,
                max_rate: 20_000,
                queue_limit: 4,
            },
            key(),
            now,
        );
        let mut n = 0;
        while s.has_room() {
            let b = bids[n % 3];
            let g = d.current().backends[&b].generation;
            s.push_event(&flow_event(sid, b, g, n as u16, 0), &ix, 0, 0);
            n += 1;
        }
        assert_eq!(n, 4 * 116 + 1, "four full messages, then the queue is full");
        assert_eq!(s.queued(), 4);
        // 20 kB/s with a burst of two messages: two go at once, the third ~75 ms later.
        assert!(s.pop(now).is_some() && s.pop(now).is_some());
        assert!(s.pop(now).is_none());
        assert!(s.pop(now + Duration::from_millis(80)).is_some());
        assert_eq!(age(5, 10), 0, "a stamp from the future");
        assert_eq!(age(100_000, 1), u16::MAX);
    }
}
