//! The connection tables (`FLOWS4`, `FLOWS6`) and persistence templates (`PERSIST4`,
//! `PERSIST6`) from user space: how many flows each backend holds (IPVS's `ActiveConn`
//! column), and connection sync, which walks them for a peer and installs a peer's entries.
//!
//! The program writes these tables; the daemon reads them whole with `BPF_MAP_LOOKUP_BATCH`
//! and writes synced entries with `BPF_MAP_UPDATE_BATCH` (aya 0.14 has no batch calls): a
//! walk of a million entries is thousands of syscalls instead of two million
//! `get_next_key` + `lookup` pairs, and an install costs about 0.8 us per entry instead of
//! 2. A walk sees each entry present for its whole duration once; entries inserted or
//! evicted meanwhile may or may not be seen, which is what a count of a live table can mean
//! anyway.
use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::maps::{Map, MapData};
use lb_common::{
    names, FlowCache4, FlowCache6, FlowKey4, FlowKey6, FlowValue, PersistKey4, PersistKey6,
};

/// `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `bpf_map_update_elem` flags.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
/// Entries asked for per call; a hash bucket holding more than this answers ENOSPC, and the
/// call is retried with room for more.
const BATCH: usize = 4096;
const MAX_BATCH: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error("map {0} is missing from the program")]
    Missing(&'static str),
    #[error("map {0} is not a hash map")]
    Kind(&'static str),
    #[error("reading {map}: BPF_MAP_LOOKUP_BATCH: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("reading {map}: BPF_MAP_LOOKUP_ELEM: {source}")]
    Lookup {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("removing expired flows from {map}: BPF_MAP_DELETE_BATCH: {source}")]
    Delete {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing {map}: BPF_MAP_UPDATE_BATCH: {source}")]
    Update {
        map: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One of the tables connection sync reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Flows4,
    Flows6,
    Persist4,
    Persist6,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Flows4,
        Table::Flows6,
        Table::Persist4,
        Table::Persist6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Flows4 => names::FLOWS4,
            Table::Flows6 => names::FLOWS6,
            Table::Persist4 => names::PERSIST4,
            Table::Persist6 => names::PERSIST6,
        }
    }
}

/// The `NAT_REV4` key of flow `flow`'s replies from NAT real server `rs` (as the program's
/// `lb::nat_reverse` writes it): from the real server's address and port (port 0: the
/// flow's own destination port, which it keeps) to the client's.
pub fn reverse_key4(flow: &FlowKey4, rs: std::net::SocketAddr) -> FlowKey4 {
    let (addr, _) = super::addr_words(rs.ip());
    FlowKey4 {
        src: addr[0],
        dst: flow.src,
        sport: reply_port(flow.dport, rs),
        dport: flow.sport,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

/// The source port of NAT real server `rs`'s replies to a flow to `dport` (network byte
/// order, as the answer).
fn reply_port(dport: u16, rs: std::net::SocketAddr) -> u16 {
    match rs.port() {
        0 => dport,
        p => p.to_be(),
    }
}

/// [`reverse_key4`] for IPv6 (`NAT_REV6`).
pub fn reverse_key6(flow: &FlowKey6, rs: std::net::SocketAddr) -> FlowKey6 {
    let (addr, _) = super::addr_words(rs.ip());
    FlowKey6 {
        src: addr,
        dst: flow.src,
        sport: reply_port(flow.dport, rs),
        dport: flow.sport,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

/// What an install did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub written: usize,
    /// Left alone because the table had the key already (`keep_existing`).
    pub existed: usize,
}

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Flows held per (backend id, generation): only entries the program would still use,
/// not idle past their service's timeout.
pub type FlowCounts = HashMap<(u32, u32), u64>;

/// The connection tables, the persistence templates and the per-CPU flow caches.
pub struct FlowTables {
    v4: MapData,
    v6: MapData,
    persist4: MapData,
    persist6: MapData,
    cache4: MapData,
    cache6: MapData,
    /// `NAT_REV4`/`NAT_REV6`: a shared NAT real server's replies' keys -> their flows'.
    rev4: MapData,
    rev6: MapData,
    /// Entries asked for per call.
    batch: usize,
}

impl FlowTables {
    /// The tables of a program instance (`fds`, its maps).
    pub fn open(fds: &super::program::MapFds) -> Result<Self, FlowsError> {
        let open = |name: &'static str, array: bool| match fds.map(name) {
            Ok(Map::LruHashMap(m)) | Ok(Map::HashMap(m)) if !array => Ok(m),
            Ok(Map::Array(m)) if array => Ok(m),
            Ok(_) => Err(FlowsError::Kind(name)),
            Err(_) => Err(FlowsError::Missing(name)),
        };
        Ok(Self {
            v4: open(names::FLOWS4, false)?,
            v6: open(names::FLOWS6, false)?,
            persist4: open(names::PERSIST4, false)?,
            persist6: open(names::PERSIST6, false)?,
            cache4: open(names::FLOW_CACHE4, true)?,
            cache6: open(names::FLOW_CACHE6, true)?,
            rev4: open(names::NAT_REV4, false)?,
            rev6: open(names::NAT_REV6, false)?,
            batch: BATCH,
        })
    }

    /// The tables of a loaded program (tests).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, FlowsError> {
        let fds = super::program::MapFds::of(ebpf).map_err(|_| FlowsError::Missing("(any)"))?;
        Self::open(&fds)
    }

    fn map(&self, t: Table) -> &MapData {
        match t {
            Table::Flows4 => &self.v4,
            Table::Flows6 => &self.v6,
            Table::Persist4 => &self.persist4,
            Table::Persist6 => &self.persist6,
        }
    }

    /// Writes NAT reverse entries `replies[i] -> flows[i]` (`NAT_REV6` if `v6`, else
    /// `NAT_REV4`) for a peer's synced flows to a shared NAT real server, over what is
    /// there, as the program writes its own (the same reply's key names the same flow),
    /// in batches. `K` must be the family's flow key.
    pub fn install_reverse<K: Copy>(
        &self,
        v6: bool,
        replies: &[K],
        flows: &[K],
    ) -> Result<usize, FlowsError> {
        let (map, name) = if v6 {
            (&self.rev6, names::NAT_REV6)
        } else {
            (&self.rev4, names::NAT_REV4)
        };
        let fd = map.fd().as_fd();
        let total = replies.len().min(flows.len());
        let mut at = 0;
        while at < total {
            let n = (total - at).min(MAX_BATCH);
            // SAFETY: `K` is the map's key and value type (the caller's promise), and both
            // slices hold `n` entries from `at`.
            let (written, err) = unsafe {
                update_batch(
                    fd,
                    replies[at..].as_ptr().cast(),
                    flows[at..].as_ptr().cast(),
                    n,
                    BPF_ANY,
                )
            };
            at += written;
            if let Some(source) = err {
                return Err(FlowsError::Update { map: name, source });
            }
            if written == 0 {
                break;
            }
        }
        Ok(at)
    }

    /// Writes `keys[i] -> values[i]` into table `t` (a peer's synced entries), replacing
    /// what is there with one batch call per million entries, or with `keep_existing`
    /// leaving every key the table has alone (a node's own flows are never overwritten),
    /// one entry per call. `K` must be the table's key type
    /// (`FlowKey4`, `FlowKey6`, `PersistKey4`, `PersistKey6`).
    pub fn install<K: Copy>(
        &self,
        t: Table,
        keys: &[K],
        values: &[FlowValue],
        keep_existing: bool,
    ) -> Result<Installed, FlowsError> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let fd = self.map(t).fd().as_fd();
        let mut done = Installed::default();
        if keep_existing {
            // The batch call takes no BPF_NOEXIST (the kernel allows BPF_F_LOCK only), so a
            // master, which is rarely sent anything, writes one entry at a time.
            for (k, v) in keys.iter().zip(values) {
                // SAFETY: a key and a value of the table's types (see above).
                let err = unsafe {
                    update_elem(
                        fd,
                        (k as *const K).cast(),
                        (v as *const FlowValue).cast(),
                        BPF_NOEXIST,
                    )
                };
                match err {
                    None => done.written += 1,
                    Some(e) if e.raw_os_error() == Some(libc::EEXIST) => done.existed += 1,
                    Some(source) => {
                        return Err(FlowsError::Update {
                            map: t.name(),
                            source,
                        })
                    }
                }
            }
            return Ok(done);
        }
        // SAFETY: `K` is the table's key type (see above).
        done.written = unsafe { write_batches(fd, t, keys, values) }?;
        Ok(done)
    }

    /// Empties every CPU's flow cache. A node that stops serving a VIP clears them, so that
    /// no cached choice of before can outlive what the table says when it serves again
    /// (within one `CLOCK` second a cache hit is not checked against the table).
    pub fn clear_caches(&self) -> Result<(), FlowsError> {
        fn clear<V: Copy + Default>(map: &MapData, name: &'static str) -> Result<(), FlowsError> {
            let slots = map.info().map(|i| i.max_entries()).unwrap_or(0) as usize;
            let chunk = slots.min(BATCH);
            let values = vec![V::default(); chunk];
            let mut at = 0;
            while at < slots {
                let n = (slots - at).min(chunk);
                let keys: Vec<u32> = (at as u32..(at + n) as u32).collect();
                // SAFETY: an array of `V` indexed by u32, `n` keys and values.
                let (written, err) = unsafe {
                    update_batch(
                        map.fd().as_fd(),
                        keys.as_ptr().cast(),
                        values.as_ptr().cast(),
                        n,
                        BPF_ANY,
                    )
                };
                if let Some(source) = err {
                    return Err(FlowsError::Update { map: name, source });
                }
                at += written.max(1);
            }
            Ok(())
        }
        clear::<FlowCache4>(&self.cache4, names::FLOW_CACHE4)?;
        clear::<FlowCache6>(&self.cache6, names::FLOW_CACHE6)
    }

    /// A walk of table `t` in steps (see [`Cursor`]).
    pub fn cursor<K: Copy + Default>(&self, t: Table) -> Cursor<K> {
        Cursor::new(t, self.batch)
    }

    /// The next step of `c`'s walk: up to a batch of entries, none once the walk is over.
    pub fn step<'c, K: Copy + Default>(
        &self,
        c: &'c mut Cursor<K>,
    ) -> Result<(&'c [K], &'c [FlowValue]), FlowsError> {
        c.step(self.map(c.table).fd().as_fd())
    }

    /// Fewer entries per call than the default (tests walk small tables in many calls).
    pub fn with_batch_size(mut self, entries: usize) -> Self {
        self.batch = entries.clamp(1, MAX_BATCH);
        self
    }

    /// Every entry's value, both families.
    pub fn for_each(&self, mut f: impl FnMut(&FlowValue)) -> Result<usize, FlowsError> {
        let n4 = walk::<FlowKey4>(self.v4.fd().as_fd(), Table::Flows4, self.batch, &mut f)?;
        let n6 = walk::<FlowKey6>(self.v6.fd().as_fd(), Table::Flows6, self.batch, &mut f)?;
        Ok(n4 + n6)
    }

    /// How many flows each backend holds at `now` (the program's `CLOCK`), counting only
    /// entries not past their timeout: their state's (`timeouts`), or for an established
    /// connection or a UDP flow `idle_of(service)` seconds (0: no limit).
    pub fn counts(
        &self,
        now: u32,
        idle_of: impl Fn(u32) -> Option<u32>,
        timeouts: &[u32; lb_common::conn_state::COUNT as usize],
    ) -> Result<FlowCounts, FlowsError> {
        let mut counts = FlowCounts::new();
        self.for_each(|v| {
            if !super::expiry::expired(v, now, idle_of(v.service), timeouts) {
                *counts.entry((v.backend, v.generation)).or_default() += 1;
            }
        })?;
        Ok(counts)
    }
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Entries walked.
    pub walked: usize,
    /// Expired entries removed.
    pub removed: usize,
}

impl FlowTables {
    /// IPVS's connection timers, in batches: walks both connection tables, removes every
    /// entry `expired` says is past its timeout (each batch's right after it is read), and
    /// shows `live` every other one. An entry the program replaced between a batch's read
    /// and its removal (a client that reused the 5-tuple of an expired flow within that
    /// fraction of a millisecond) goes too; the per-CPU flow cache, which holds the new
    /// flow, writes it back at its next second when the client's packets stay on its CPU,
    /// and otherwise the next packet is scheduled again.
    pub fn sweep(
        &self,
        expired: impl Fn(&FlowValue) -> bool,
        mut live: impl FnMut(&FlowValue),
    ) -> Result<Swept, FlowsError> {
        fn one<K: Copy + Default>(
            tables: &FlowTables,
            t: Table,
            expired: &impl Fn(&FlowValue) -> bool,
            live: &mut impl FnMut(&FlowValue),
            out: &mut Swept,
        ) -> Result<(), FlowsError> {
            let fd = tables.map(t).fd().as_fd();
            let mut c = tables.cursor::<K>(t);
            let mut gone: Vec<K> = Vec::new();
            while !c.is_done() {
                let (keys, values) = c.step(fd)?;
                out.walked += keys.len();
                gone.clear();
                for (k, v) in keys.iter().zip(values) {
                    if expired(v) {
                        gone.push(*k);
                    } else {
                        live(v);
                    }
                }
                let (n, err) = delete_keys(fd, &gone);
                out.removed += n;
                if let Some(source) = err {
                    return Err(FlowsError::Delete {
                        map: t.name(),
                        source,
                    });
                }
            }
            Ok(())
        }
        let mut out = Swept::default();
        one::<FlowKey4>(self, Table::Flows4, &expired, &mut live, &mut out)?;
        one::<FlowKey6>(self, Table::Flows6, &expired, &mut live, &mut out)?;
        Ok(out)
    }

    /// The flow of (`proto`, `client`, `vip`) in its family's table, if there is one.
    pub fn flow(
        &self,
        proto: u8,
        client: std::net::SocketAddr,
        vip: std::net::SocketAddr,
    ) -> Result<Option<FlowValue>, FlowsError> {
        use std::net::IpAddr;
        let mut v = FlowValue::default();
        let found = match (client.ip(), vip.ip()) {
            (IpAddr::V4(c), IpAddr::V4(d)) => {
                let k = FlowKey4 {
                    src: lb_common::addr_v4(c.octets()),
                    dst: lb_common::addr_v4(d.octets()),
                    sport: client.port().to_be(),
                    dport: vip.port().to_be(),
                    proto,
                    _pad: [0; 3],
                };
                // SAFETY: FLOWS4's key and value types.
                unsafe {
                    lookup_elem(
                        self.v4.fd().as_fd(),
                        (&k as *const FlowKey4).cast(),
                        (&mut v as *mut FlowValue).cast(),
                    )
                }
            }
            (IpAddr::V6(c), IpAddr::V6(d)) => {
                let k = FlowKey6 {
                    src: lb_common::addr_v6(c.octets()),
                    dst: lb_common::addr_v6(d.octets()),
                    sport: client.port().to_be(),
                    dport: vip.port().to_be(),
                    proto,
                    _pad: [0; 3],
                };
                // SAFETY: FLOWS6's key and value types.
                unsafe {
                    lookup_elem(
                        self.v6.fd().as_fd(),
                        (&k as *const FlowKey6).cast(),
                        (&mut v as *mut FlowValue).cast(),
                    )
                }
            }
            _ => Ok(false),
        };
        match found {
            Ok(true) => Ok(Some(v)),
            Ok(false) => Ok(None),
            Err(source) => Err(FlowsError::Lookup {
                map: Table::Flows4.name(),
                source,
            }),
        }
    }

    /// The persistence template of (`client` masked, service `sid`), if there is one.
    pub fn template(
        &self,
        client: std::net::IpAddr,
        mask: &[u32; 4],
        sid: u32,
    ) -> Result<Option<FlowValue>, FlowsError> {
        use std::net::IpAddr;
        let mut v = FlowValue::default();
        let found = match client {
            IpAddr::V4(c) => {
                let k = PersistKey4 {
                    addr: lb_common::addr_v4(c.octets()) & mask[0],
                    service: sid,
                };
                // SAFETY: PERSIST4's key and value types.
                unsafe {
                    lookup_elem(
                        self.persist4.fd().as_fd(),
                        (&k as *const PersistKey4).cast(),
                        (&mut v as *mut FlowValue).cast(),
                    )
                }
            }
            IpAddr::V6(c) => {
                let a = lb_common::addr_v6(c.octets());
                let k = PersistKey6 {
                    addr: [
                        a[0] & mask[0],
                        a[1] & mask[1],
                        a[2] & mask[2],
                        a[3] & mask[3],
                    ],
                    service: sid,
                };
                // SAFETY: PERSIST6's key and value types.
                unsafe {
                    lookup_elem(
                        self.persist6.fd().as_fd(),
                        (&k as *const PersistKey6).cast(),
                        (&mut v as *mut FlowValue).cast(),
                    )
                }
            }
        };
        match found {
            Ok(true) => Ok(Some(v)),
            Ok(false) => Ok(None),
            Err(source) => Err(FlowsError::Lookup {
                map: Table::Persist4.name(),
                source,
            }),
        }
    }
}

/// One entry of a connection table, its key decoded: (protocol number, client, VIP and
/// port, value). The program keeps addresses as the packet has them and ports in network
/// order; a fragment's flow has ports 0.
pub type FlowEntry = (u8, std::net::SocketAddr, std::net::SocketAddr, FlowValue);

impl FlowTables {
    /// Every entry of both connection tables, walked a batch at a time, for `f`; stops
    /// early when `f` says so (returns false).
    pub fn entries(&self, mut f: impl FnMut(FlowEntry) -> bool) -> Result<(), FlowsError> {
        use std::net::{IpAddr, SocketAddr};
        let mut c4 = self.cursor::<FlowKey4>(Table::Flows4);
        while !c4.is_done() {
            let (keys, values) = self.step(&mut c4)?;
            for (k, v) in keys.iter().zip(values) {
                let client =
                    SocketAddr::new(IpAddr::from(k.src.to_ne_bytes()), u16::from_be(k.sport));
                let vip = SocketAddr::new(IpAddr::from(k.dst.to_ne_bytes()), u16::from_be(k.dport));
                if !f((k.proto, client, vip, *v)) {
                    return Ok(());
                }
            }
        }
        let v6 = |w: &[u32; 4]| {
            let mut o = [0u8; 16];
            for (i, w) in w.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::from(o)
        };
        let mut c6 = self.cursor::<FlowKey6>(Table::Flows6);
        while !c6.is_done() {
            let (keys, values) = self.step(&mut c6)?;
            for (k, v) in keys.iter().zip(values) {
                let client = SocketAddr::new(v6(&k.src), u16::from_be(k.sport));
                let vip = SocketAddr::new(v6(&k.dst), u16::from_be(k.dport));
                if !f((k.proto, client, vip, *v)) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// Copies every entry of table `t` from map `from` into map `to` (the same layout, another
/// size: a table a restart resizes). Returns how many it copied; a smaller `to` keeps what
/// its LRU keeps.
pub fn copy_table(from: BorrowedFd<'_>, to: BorrowedFd<'_>, t: Table) -> Result<usize, FlowsError> {
    fn copy<K: Copy + Default>(
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        t: Table,
    ) -> Result<usize, FlowsError> {
        let mut c = Cursor::<K>::new(t, BATCH);
        let mut total = 0;
        while !c.is_done() {
            let (keys, values) = c.step(from)?;
            // SAFETY: the cursor reads the table's own key type `K`.
            total += unsafe { write_batches(to, t, keys, values) }?;
        }
        Ok(total)
    }
    match t {
        Table::Flows4 => copy::<FlowKey4>(from, to, t),
        Table::Flows6 => copy::<FlowKey6>(from, to, t),
        Table::Persist4 => copy::<lb_common::PersistKey4>(from, to, t),
        Table::Persist6 => copy::<lb_common::PersistKey6>(from, to, t),
    }
}

/// The number of entries of table `t` in map `fd` last seen at or after `since` (`CLOCK`
/// seconds; 0: all of them), by a walk.
pub fn count_since(fd: BorrowedFd<'_>, t: Table, since: u32) -> Result<usize, FlowsError> {
    fn count<K: Copy + Default>(
        fd: BorrowedFd<'_>,
        t: Table,
        since: u32,
    ) -> Result<usize, FlowsError> {
        let mut c = Cursor::<K>::new(t, BATCH);
        let mut total = 0;
        while !c.is_done() {
            total += c
                .step(fd)?
                .1
                .iter()
                .filter(|v| v.last_seen >= since)
                .count();
        }
        Ok(total)
    }
    match t {
        Table::Flows4 => count::<FlowKey4>(fd, t, since),
        Table::Flows6 => count::<FlowKey6>(fd, t, since),
        Table::Persist4 => count::<lb_common::PersistKey4>(fd, t, since),
        Table::Persist6 => count::<lb_common::PersistKey6>(fd, t, since),
    }
}

/// Copies the entries of table `t` in `from` last seen at or after `since` (`CLOCK`
/// seconds), one entry per call (the batch call takes no `BPF_NOEXIST`): the flows a
/// running program added or touched while [`copy_table`] copied the rest. `overwrite`:
/// over what `to` holds (while nothing else writes it); else only where `to` holds
/// nothing, so that what the program now running on `to` wrote since stays.
pub fn copy_recent(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    t: Table,
    since: u32,
    overwrite: bool,
) -> Result<usize, FlowsError> {
    let flags = if overwrite { BPF_ANY } else { BPF_NOEXIST };
    fn copy<K: Copy + Default>(
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        t: Table,
        since: u32,
        flags: u64,
    ) -> Result<usize, FlowsError> {
        let mut c = Cursor::<K>::new(t, BATCH);
        let mut total = 0;
        while !c.is_done() {
            let (keys, values) = c.step(from)?;
            for (k, v) in keys
                .iter()
                .zip(values)
                .filter(|(_, v)| v.last_seen >= since)
            {
                // SAFETY: a key and a value of the table's types (the cursor read them).
                let err = unsafe {
                    update_elem(
                        to,
                        (k as *const K).cast(),
                        (v as *const FlowValue).cast(),
                        flags,
                    )
                };
                match err {
                    None => total += 1,
                    Some(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Some(source) => {
                        return Err(FlowsError::Update {
                            map: t.name(),
                            source,
                        })
                    }
                }
            }
        }
        Ok(total)
    }
    match t {
        Table::Flows4 => copy::<FlowKey4>(from, to, t, since, flags),
        Table::Flows6 => copy::<FlowKey6>(from, to, t, since, flags),
        Table::Persist4 => copy::<lb_common::PersistKey4>(from, to, t, since, flags),
        Table::Persist6 => copy::<lb_common::PersistKey6>(from, to, t, since, flags),
    }
}

/// Writes `keys[i] -> values[i]` into map `fd` (table `t`), `BPF_MAP_UPDATE_BATCH` calls of
/// at most [`MAX_BATCH`] entries; returns how many the kernel wrote.
///
/// # Safety
/// `K` is the map's key type.
unsafe fn write_batches<K>(
    fd: BorrowedFd<'_>,
    t: Table,
    keys: &[K],
    values: &[FlowValue],
) -> Result<usize, FlowsError> {
    let mut at = 0;
    while at < keys.len().min(values.len()) {
        let n = (keys.len() - at).min(MAX_BATCH);
        // SAFETY: `K` and `FlowValue` are the map's key and value types (the caller's
        // promise), and both slices hold `n` entries from `at`.
        let (written, err) = unsafe {
            update_batch(
                fd,
                keys[at..].as_ptr().cast(),
                values[at..].as_ptr().cast(),
                n,
                BPF_ANY,
            )
        };
        at += written;
        if let Some(source) = err {
            return Err(FlowsError::Update {
                map: t.name(),
                source,
            });
        }
        if written == 0 {
            break;
        }
    }
    Ok(at)
}

/// `BPF_MAP_LOOKUP_ELEM` of one entry: whether the key was there (its value written to
/// `value`).
///
/// # Safety
/// `key` and `value` point at a key and a value of the map's key and value sizes.
unsafe fn lookup_elem(fd: BorrowedFd<'_>, key: *const u8, value: *mut u8) -> io::Result<bool> {
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for this command (the caller's promise for the
    // pointers).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOENT) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// `BPF_MAP_UPDATE_ELEM` of one entry; its error.
///
/// # Safety
/// `key` and `value` point at a key and a value of the map's key and value sizes.
unsafe fn update_elem(
    fd: BorrowedFd<'_>,
    key: *const u8,
    value: *const u8,
    flags: u64,
) -> Option<io::Error> {
    /// `union bpf_attr`'s element member.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags,
    };
    // SAFETY: a valid bpf_attr prefix for this command (the caller's promise for the
    // pointers).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    (rc < 0).then(io::Error::last_os_error)
}

/// One `BPF_MAP_LOOKUP_BATCH` call (aya 0.14 has none): up to `count` entries of map `fd`
/// into `keys` and `values`, going on after position `in_batch` (none: from the start); the
/// position reached is written to `out_batch`. Returns how many entries it read, and the
/// kernel's error: ENOENT is the end of the map, with the entries before it read; ENOSPC,
/// a hash bucket holding more than `count`. The one raw batch read of the daemon: the flow
/// tables' walks, the counters of status and metrics, and the scale benchmark use it.
///
/// # Safety
/// `keys` and `values` have room for `count` keys and values of the map's sizes (a per-CPU
/// map's value: one per possible CPU, each rounded up to 8 bytes); `in_batch` and
/// `out_batch` point at 8 bytes (a hash map's or an array's position takes 4).
pub unsafe fn lookup_batch(
    fd: BorrowedFd<'_>,
    in_batch: Option<*const u8>,
    out_batch: *mut u8,
    keys: *mut u8,
    values: *mut u8,
    count: u32,
) -> (usize, Option<io::Error>) {
    let mut attr = BatchAttr {
        in_batch: in_batch.map_or(0, |p| p as u64),
        out_batch: out_batch as u64,
        keys: keys as u64,
        values: values as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command, its pointers the caller's
    // promise.
    let err = unsafe { batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    ((attr.count as usize).min(count as usize), err)
}

/// `BPF_MAP_DELETE_BATCH` of `keys`, in as many calls as it takes: the kernel stops at a key
/// that is not there (ENOENT: the LRU evicted it meanwhile), which is skipped. Returns how
/// many it removed, and the first other error.
fn delete_keys<K: Copy>(fd: BorrowedFd<'_>, keys: &[K]) -> (usize, Option<io::Error>) {
    let (mut at, mut removed) = (0, 0);
    while at < keys.len() {
        let rest = &keys[at..];
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at `rest.len()` keys of the map's key type `K` (the
        // caller's table).
        let err = unsafe { batch(BPF_MAP_DELETE_BATCH, &mut attr) };
        let n = (attr.count as usize).min(rest.len());
        removed += n;
        match err.as_ref().and_then(io::Error::raw_os_error) {
            None => break,
            Some(libc::ENOENT) => at += n + 1,
            Some(_) => return (removed, err),
        }
    }
    (removed, None)
}

/// `BPF_MAP_UPDATE_BATCH` of `n` entries; returns how many the kernel wrote, and its error.
///
/// # Safety
/// `keys` and `values` point at `n` keys and values of the map's key and value sizes.
unsafe fn update_batch(
    fd: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    n: usize,
    elem_flags: u64,
) -> (usize, Option<io::Error>) {
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: n as u32,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command, pointing at `n` entries
    // (the caller's promise).
    let err = unsafe { batch(BPF_MAP_UPDATE_BATCH, &mut attr) };
    ((attr.count as usize).min(n), err)
}

/// The `bpf(cmd, attr)` system call of a batch command; its error, if any. The kernel
/// writes in `attr.count` how many elements it did.
///
/// # Safety
/// `attr` is a valid bpf_attr prefix for `cmd`, its pointers valid for what it says.
unsafe fn batch(cmd: libc::c_long, attr: &mut BatchAttr) -> Option<io::Error> {
    // SAFETY: the caller's promise; `attr` is alive and writable across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    (rc < 0).then(io::Error::last_os_error)
}

/// A walk of one table, a batch of entries per step, so that a caller can spread a big
/// table over time (connection sync sends a whole table to a peer that asks).
pub struct Cursor<K> {
    table: Table,
    batch: usize,
    keys: Vec<K>,
    values: Vec<FlowValue>,
    /// The kernel's position in the table between calls (a bucket index for hash maps).
    token: u64,
    started: bool,
    done: bool,
}

impl<K: Copy + Default> Cursor<K> {
    fn new(table: Table, batch: usize) -> Self {
        Self {
            table,
            batch,
            keys: vec![K::default(); batch],
            values: vec![FlowValue::default(); batch],
            token: 0,
            started: false,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    pub fn table(&self) -> Table {
        self.table
    }

    fn step(&mut self, fd: BorrowedFd<'_>) -> Result<(&[K], &[FlowValue]), FlowsError> {
        loop {
            if self.done {
                return Ok((&[], &[]));
            }
            let token_in = self.token;
            let mut token_out = 0u64;
            // SAFETY: keys and values have room for `batch` entries of the map's key and
            // value sizes (`K` is the table's key type, FlowValue its value type), and the
            // tokens are 8 bytes.
            let (got, err) = unsafe {
                lookup_batch(
                    fd,
                    self.started
                        .then_some(std::ptr::addr_of!(token_in).cast::<u8>()),
                    std::ptr::addr_of_mut!(token_out).cast::<u8>(),
                    self.keys.as_mut_ptr().cast(),
                    self.values.as_mut_ptr().cast(),
                    self.batch as u32,
                )
            };
            match err.as_ref().and_then(io::Error::raw_os_error) {
                // One bucket holds more entries than fit: ask again with more room.
                Some(libc::ENOSPC) if self.batch < MAX_BATCH => {
                    self.batch *= 2;
                    self.keys.resize(self.batch, K::default());
                    self.values.resize(self.batch, FlowValue::default());
                    continue;
                }
                None | Some(libc::ENOENT) => {}
                Some(_) => {
                    return Err(FlowsError::Batch {
                        map: self.table.name(),
                        source: err.unwrap_or_else(io::Error::last_os_error),
                    })
                }
            }
            // ENOENT: the walk reached the end (with the last entries in this answer).
            self.done = err.is_some();
            self.token = token_out;
            self.started = true;
            return Ok((&self.keys[..got], &self.values[..got]));
        }
    }
}

/// One whole table, `batch` entries per call.
fn walk<K: Copy + Default>(
    fd: BorrowedFd<'_>,
    table: Table,
    batch: usize,
    f: &mut impl FnMut(&FlowValue),
) -> Result<usize, FlowsError> {
    let mut c = Cursor::<K>::new(table, batch);
    let mut total = 0;
    while !c.is_done() {
        let (_, values) = c.step(fd)?;
        values.iter().for_each(&mut *f);
        total += values.len();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reverse key comes from the real server's port, or from the flow's own when the
    /// real server has none (a group's NAT real server keeps each packet's port).
    #[test]
    fn reverse_keys_take_the_flow_s_port_for_a_real_server_without_one() {
        let flow = FlowKey4 {
            src: lb_common::addr_v4([203, 0, 113, 7]),
            dst: lb_common::addr_v4([192, 0, 2, 100]),
            sport: 40000u16.to_be(),
            dport: 443u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let rs = |p: u16| std::net::SocketAddr::from(([198, 51, 100, 11], p));
        let with = reverse_key4(&flow, rs(8443));
        assert_eq!(
            (
                with.src,
                with.dst,
                u16::from_be(with.sport),
                u16::from_be(with.dport)
            ),
            (
                lb_common::addr_v4([198, 51, 100, 11]),
                flow.src,
                8443,
                40000
            )
        );
        assert_eq!(u16::from_be(reverse_key4(&flow, rs(0)).sport), 443);
        let flow6 = FlowKey6 {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 17,
            _pad: [0; 3],
        };
        let rs6: std::net::SocketAddr = "[2001:db8::11]:0".parse().unwrap();
        let k = reverse_key6(&flow6, rs6);
        assert_eq!((u16::from_be(k.sport), k.dst, k.proto), (80, flow6.src, 17));
    }
}
