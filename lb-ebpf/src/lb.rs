//! The connection table, service lookup, persistence and the choice of a backend.
//!
//! A packet of a known flow takes the short path: this CPU's flow cache (else one
//! flow-table lookup), then arrays only (its service's state, its backend). Everything else takes the long path: the service
//! lookup by (VIP, port, protocol), then the scheduler. Each path is written once, generic
//! over the address family, whose maps have keys of their own size.
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    maps::{Array, HashMap, LruHashMap},
    programs::XdpContext,
};
use aya_log_ebpf::warn;
use lb_common::{
    conn_state::{tcp_next, CLOSE, EV_IGNORE, EV_SYN, NONE, SYN_RECV, TIME_WAIT, UDP},
    reason::*,
    *,
};

use crate::{
    conns,
    forward::{backend_mac, mac_words, rewrite_macs, MacWords},
    maps::*,
    nat,
    parse::{self, ETH_P_IP, ETH_P_IPV6, L3},
    stats::{count_forward, may_log},
    sync, tunnel,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// `bpf_map_update_elem` flags, and its answer when BPF_NOEXIST finds the key.
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// The per-family maps and keys.
trait Family {
    const V4: bool;
    type Flow: 'static;
    type Svc: 'static;
    type Persist: 'static;
    fn flows() -> &'static LruHashMap<Self::Flow, FlowValue>;
    fn services() -> &'static HashMap<Self::Svc, ServiceRef>;
    fn persist() -> &'static LruHashMap<Self::Persist, FlowValue>;
    fn flow(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> Self::Flow;
    fn svc(dst: &[u32; 4], port: u16, proto: u8) -> Self::Svc;
    fn persist_key(src: &[u32; 4], mask: &[u32; 4], service: u32) -> Self::Persist;
    /// NAT: a real server's (address, port, protocol) -> its replies' source
    /// (`NAT_SOURCES4`/`NAT_SOURCES6`).
    fn nat_sources() -> &'static HashMap<Self::Svc, NatSource>;
    /// NAT, a shared real server: a reply's key -> its flow's key (`NAT_REV4`/`NAT_REV6`).
    fn nat_rev() -> &'static LruHashMap<Self::Flow, Self::Flow>;
    /// The key of the replies of flow `key` from a NAT real server at `daddr`, `port` (0:
    /// the flow's own destination port).
    fn reverse(key: &Self::Flow, daddr: &[u32; 4], port: u16) -> Self::Flow;
    /// The port a NAT real server reached at `port` (0: the flow's own destination port)
    /// answers flow `key` from.
    fn reply_port(key: &Self::Flow, port: u16) -> u16;
    /// The key of the flow a reply (`reply`: from the real server to the client) is of,
    /// its VIP and port being `vip`, `vport`.
    fn forward(reply: &Self::Flow, vip: &[u32; 4], vport: u16) -> Self::Flow;
    /// Whether `reply` comes from `addr` and `port` (as they lie in the packet; 0: any).
    fn comes_from(reply: &Self::Flow, addr: &[u32; 4], port: u16) -> bool;
    /// `nat_reply` for a reply of flow `fwd` (a `NAT_REV4`/`NAT_REV6` value): from its
    /// VIP and port, to its client.
    fn nat_reply_of<const ICMP: bool>(
        ctx: &XdpContext,
        fwd: &Self::Flow,
        clk: Clock,
    ) -> Result<u32, u32>;
    /// `nat::reply4`/`nat::reply6` (`ICMP`: of an ICMP error about the flow).
    fn nat_reply<const ICMP: bool>(
        ctx: &XdpContext,
        vip: &[u32; 4],
        vport: u16,
        client: &[u32; 4],
        clk: Clock,
    ) -> Result<u32, u32>;
    type Cache: 'static;
    fn cache() -> &'static Array<Self::Cache>;
    /// The slot's key, flow, epoch, MAC and how the backend is reached (`FlowCache4::via`).
    fn cache_parts(c: &mut Self::Cache) -> (&Self::Flow, &mut FlowValue, u32, MacWords, u32);
    fn cache_fill(
        c: &mut Self::Cache,
        key: &Self::Flow,
        value: &FlowValue,
        epoch: u32,
        b: &BackendValue,
    );
    /// The flow's cache slot, before masking: cheap and well mixed.
    fn slot(key: &Self::Flow) -> u32;
    /// Key equality, written out so that it never becomes a call to `bcmp`.
    fn same(a: &Self::Flow, b: &Self::Flow) -> bool;
    /// Connection-sync events (only called when `sync::enabled()`).
    fn sync_flow(kind: u32, key: &Self::Flow, value: &FlowValue);
    fn sync_persist(kind: u32, key: &Self::Persist, value: &FlowValue);
}

/// Multiplicative mixing (Knuth), then the high half folded down: the low bits, which the
/// cache mask keeps, depend on every input bit.
#[inline(always)]
fn mix(x: u32) -> u32 {
    let h = x.wrapping_mul(0x9e37_79b1);
    h ^ (h >> 16)
}

/// The ports of a flow key as the word that holds them (BPF is little-endian: `sport` at the
/// lower address). Flow keys are built from whole words because a `_pad: [0; 3]` field
/// initialiser compiles to a call to a byte-wise `memset`, whose byte stores then stall the
/// hash's word loads: together a fifth of a new flow's time.
#[inline(always)]
fn ports_word(sport: u16, dport: u16) -> u32 {
    sport as u32 | (dport as u32) << 16
}

struct V4;
struct V6;

impl Family for V4 {
    const V4: bool = true;
    type Flow = FlowKey4;
    type Svc = ServiceKey4;
    type Persist = PersistKey4;
    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey4, FlowValue> {
        &FLOWS4
    }
    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey4, ServiceRef> {
        &SERVICES4
    }
    #[inline(always)]
    fn persist() -> &'static LruHashMap<PersistKey4, FlowValue> {
        &PERSIST4
    }
    #[inline(always)]
    fn flow(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> FlowKey4 {
        let words = [src[0], dst[0], ports_word(sport, dport), proto as u32];
        // SAFETY: `FlowKey4` is `repr(C)`, 16 bytes, every bit pattern valid; see
        // `ports_word` for why it is built from words.
        unsafe { core::mem::transmute::<[u32; 4], FlowKey4>(words) }
    }
    #[inline(always)]
    fn svc(dst: &[u32; 4], port: u16, proto: u8) -> ServiceKey4 {
        ServiceKey4 {
            addr: dst[0],
            port,
            proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn persist_key(src: &[u32; 4], mask: &[u32; 4], service: u32) -> PersistKey4 {
        PersistKey4 {
            addr: src[0] & mask[0],
            service,
        }
    }
    #[inline(always)]
    fn nat_sources() -> &'static HashMap<ServiceKey4, NatSource> {
        &NAT_SOURCES4
    }
    #[inline(always)]
    fn nat_rev() -> &'static LruHashMap<FlowKey4, FlowKey4> {
        &NAT_REV4
    }
    #[inline(always)]
    fn forward(reply: &FlowKey4, vip: &[u32; 4], vport: u16) -> FlowKey4 {
        Self::flow(&[reply.dst, 0, 0, 0], vip, reply.dport, vport, reply.proto)
    }
    #[inline(always)]
    fn comes_from(reply: &FlowKey4, addr: &[u32; 4], port: u16) -> bool {
        reply.src == addr[0] && (port == 0 || reply.sport == port)
    }
    #[inline(always)]
    fn reply_port(key: &FlowKey4, port: u16) -> u16 {
        if port != 0 {
            port
        } else {
            key.dport
        }
    }
    #[inline(always)]
    fn reverse(key: &FlowKey4, daddr: &[u32; 4], port: u16) -> FlowKey4 {
        let sport = Self::reply_port(key, port);
        let words = [
            daddr[0],
            key.src,
            ports_word(sport, key.sport),
            key.proto as u32,
        ];
        // SAFETY: as in `flow`.
        unsafe { core::mem::transmute::<[u32; 4], FlowKey4>(words) }
    }
    #[inline(always)]
    fn nat_reply_of<const ICMP: bool>(
        ctx: &XdpContext,
        fwd: &FlowKey4,
        clk: Clock,
    ) -> Result<u32, u32> {
        nat::reply4::<ICMP>(ctx, fwd.dst, fwd.dport, fwd.src, clk)
    }
    #[inline(always)]
    fn nat_reply<const ICMP: bool>(
        ctx: &XdpContext,
        vip: &[u32; 4],
        vport: u16,
        client: &[u32; 4],
        clk: Clock,
    ) -> Result<u32, u32> {
        nat::reply4::<ICMP>(ctx, vip[0], vport, client[0], clk)
    }
    type Cache = FlowCache4;
    #[inline(always)]
    fn cache() -> &'static Array<FlowCache4> {
        &FLOW_CACHE4
    }
    #[inline(always)]
    fn cache_parts(c: &mut FlowCache4) -> (&FlowKey4, &mut FlowValue, u32, MacWords, u32) {
        // SAFETY: `FlowCache4` is 4-aligned and `mac` is at an even offset (lb-common).
        let mac = unsafe { mac_words(&c.mac) };
        (&c.key, &mut c.value, c.epoch, mac, c.via as u32)
    }
    #[inline(always)]
    fn cache_fill(
        c: &mut FlowCache4,
        key: &FlowKey4,
        value: &FlowValue,
        epoch: u32,
        b: &BackendValue,
    ) {
        c.key = *key;
        c.value = *value;
        c.epoch = epoch;
        c.mac = b.mac;
        c.via = via(b) as u8;
    }
    #[inline(always)]
    fn slot(k: &FlowKey4) -> u32 {
        mix(k.src ^ k.dst.rotate_left(11) ^ ports_word(k.sport, k.dport) ^ k.proto as u32)
    }
    #[inline(always)]
    fn same(a: &FlowKey4, b: &FlowKey4) -> bool {
        a.src == b.src
            && a.dst == b.dst
            && a.sport == b.sport
            && a.dport == b.dport
            && a.proto == b.proto
    }
    #[inline(always)]
    fn sync_flow(kind: u32, key: &FlowKey4, value: &FlowValue) {
        sync::event4(kind, sync::words4(key), value)
    }
    #[inline(always)]
    fn sync_persist(kind: u32, key: &PersistKey4, value: &FlowValue) {
        sync::event4(kind, &[key.addr, 0, 0, 0], value)
    }
}

impl Family for V6 {
    const V4: bool = false;
    type Flow = FlowKey6;
    type Svc = ServiceKey6;
    type Persist = PersistKey6;
    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey6, FlowValue> {
        &FLOWS6
    }
    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey6, ServiceRef> {
        &SERVICES6
    }
    #[inline(always)]
    fn persist() -> &'static LruHashMap<PersistKey6, FlowValue> {
        &PERSIST6
    }
    #[inline(always)]
    fn flow(src: &[u32; 4], dst: &[u32; 4], sport: u16, dport: u16, proto: u8) -> FlowKey6 {
        let words = [
            src[0],
            src[1],
            src[2],
            src[3],
            dst[0],
            dst[1],
            dst[2],
            dst[3],
            ports_word(sport, dport),
            proto as u32,
        ];
        // SAFETY: as for `FlowKey4`: `repr(C)`, 40 bytes, every bit pattern valid.
        unsafe { core::mem::transmute::<[u32; 10], FlowKey6>(words) }
    }
    #[inline(always)]
    fn svc(dst: &[u32; 4], port: u16, proto: u8) -> ServiceKey6 {
        ServiceKey6 {
            addr: *dst,
            port,
            proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn persist_key(src: &[u32; 4], mask: &[u32; 4], service: u32) -> PersistKey6 {
        PersistKey6 {
            addr: [
                src[0] & mask[0],
                src[1] & mask[1],
                src[2] & mask[2],
                src[3] & mask[3],
            ],
            service,
        }
    }
    #[inline(always)]
    fn nat_sources() -> &'static HashMap<ServiceKey6, NatSource> {
        &NAT_SOURCES6
    }
    #[inline(always)]
    fn nat_rev() -> &'static LruHashMap<FlowKey6, FlowKey6> {
        &NAT_REV6
    }
    #[inline(always)]
    fn forward(reply: &FlowKey6, vip: &[u32; 4], vport: u16) -> FlowKey6 {
        Self::flow(&reply.dst, vip, reply.dport, vport, reply.proto)
    }
    #[inline(always)]
    fn comes_from(reply: &FlowKey6, addr: &[u32; 4], port: u16) -> bool {
        reply.src == *addr && (port == 0 || reply.sport == port)
    }
    #[inline(always)]
    fn reply_port(key: &FlowKey6, port: u16) -> u16 {
        if port != 0 {
            port
        } else {
            key.dport
        }
    }
    #[inline(always)]
    fn reverse(key: &FlowKey6, daddr: &[u32; 4], port: u16) -> FlowKey6 {
        let sport = Self::reply_port(key, port);
        let s = &key.src;
        let words = [
            daddr[0],
            daddr[1],
            daddr[2],
            daddr[3],
            s[0],
            s[1],
            s[2],
            s[3],
            ports_word(sport, key.sport),
            key.proto as u32,
        ];
        // SAFETY: as in `flow`.
        unsafe { core::mem::transmute::<[u32; 10], FlowKey6>(words) }
    }
    #[inline(always)]
    fn nat_reply_of<const ICMP: bool>(
        ctx: &XdpContext,
        fwd: &FlowKey6,
        clk: Clock,
    ) -> Result<u32, u32> {
        nat::reply6::<ICMP>(ctx, &fwd.dst, fwd.dport, &fwd.src, clk)
    }
    #[inline(always)]
    fn nat_reply<const ICMP: bool>(
        ctx: &XdpContext,
        vip: &[u32; 4],
        vport: u16,
        client: &[u32; 4],
        clk: Clock,
    ) -> Result<u32, u32> {
        nat::reply6::<ICMP>(ctx, vip, vport, client, clk)
    }
    type Cache = FlowCache6;
    #[inline(always)]
    fn cache() -> &'static Array<FlowCache6> {
        &FLOW_CACHE6
    }
    #[inline(always)]
    fn cache_parts(c: &mut FlowCache6) -> (&FlowKey6, &mut FlowValue, u32, MacWords, u32) {
        // SAFETY: `FlowCache6` is 4-aligned and `mac` is at an even offset (lb-common).
        let mac = unsafe { mac_words(&c.mac) };
        (&c.key, &mut c.value, c.epoch, mac, c.via as u32)
    }
    #[inline(always)]
    fn cache_fill(
        c: &mut FlowCache6,
        key: &FlowKey6,
        value: &FlowValue,
        epoch: u32,
        b: &BackendValue,
    ) {
        c.key = *key;
        c.value = *value;
        c.epoch = epoch;
        c.mac = b.mac;
        c.via = via(b) as u8;
    }
    #[inline(always)]
    fn slot(k: &FlowKey6) -> u32 {
        let s = k.src[0] ^ k.src[1] ^ k.src[2] ^ k.src[3];
        let d = k.dst[0] ^ k.dst[1] ^ k.dst[2] ^ k.dst[3];
        mix(s ^ d.rotate_left(11) ^ ports_word(k.sport, k.dport) ^ k.proto as u32)
    }
    #[inline(always)]
    fn same(a: &FlowKey6, b: &FlowKey6) -> bool {
        a.src[0] == b.src[0]
            && a.src[1] == b.src[1]
            && a.src[2] == b.src[2]
            && a.src[3] == b.src[3]
            && a.dst[0] == b.dst[0]
            && a.dst[1] == b.dst[1]
            && a.dst[2] == b.dst[2]
            && a.dst[3] == b.dst[3]
            && a.sport == b.sport
            && a.dport == b.dport
            && a.proto == b.proto
    }
    #[inline(always)]
    fn sync_flow(kind: u32, key: &FlowKey6, value: &FlowValue) {
        sync::event6(kind, sync::words6(key), value)
    }
    #[inline(always)]
    fn sync_persist(kind: u32, key: &PersistKey6, value: &FlowValue) {
        let a = key.addr;
        sync::event6(kind, &[a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0], value)
    }
}

/// The whole decision for one frame. `Ok` and `Err` both carry the reason; `Err` is what
/// `?` uses to say "decided early".
#[inline(always)]
pub fn process(ctx: &XdpContext) -> Result<u32, u32> {
    let (ethertype, l3_off) = parse::ethernet(ctx)?;
    // Each family runs to its verdict on its own: had both parses joined before the
    // protocol dispatch, every header word of both would be live at the join (IPv6's eight
    // address words among them), and the IPv4 path would pay for their spills.
    match ethertype {
        ETH_P_IP => transport::<V4>(ctx, &parse::ipv4(ctx, l3_off)?),
        ETH_P_IPV6 => transport::<V6>(ctx, &parse::ipv6(ctx, l3_off)?),
        _ => Err(PASS_NOT_IP),
    }
}

#[inline(always)]
fn transport<F: Family>(ctx: &XdpContext, l3: &L3) -> Result<u32, u32> {
    match l3.proto {
        PROTO_TCP | PROTO_UDP => l4::<F>(ctx, l3),
        PROTO_ICMP if F::V4 => icmp::<F>(ctx, l3),
        PROTO_ICMPV6 if !F::V4 => icmp::<F>(ctx, l3),
        PROTO_VRRP => Err(PASS_VRRP),
        _ => Err(PASS_OTHER_PROTO),
    }
}

#[inline(always)]
fn clock() -> Clock {
    CLOCK.get(0).copied().unwrap_or_default()
}

/// How backend `b` is reached: its `BACKEND_F_TUN` or `BACKEND_F_NAT` bit, 0 for direct
/// routing.
#[inline(always)]
fn via(b: &BackendValue) -> u32 {
    b.flags & (BACKEND_F_TUN | BACKEND_F_NAT)
}

/// A backend that may keep its flows: present, same occupant as when the flow was created.
#[inline(always)]
fn live_backend(id: u32, generation: u32) -> Option<&'static BackendValue> {
    let b = BACKENDS.get(id)?;
    (b.flags & BACKEND_F_PRESENT != 0 && b.generation == generation).then_some(b)
}

/// TCP and UDP, whole packets and fragments.
#[inline(always)]
fn l4<F: Family>(ctx: &XdpContext, l3: &L3) -> Result<u32, u32> {
    let clk = clock();
    if l3.fragment {
        // Every fragment of a datagram, the first included, is balanced by (client, VIP,
        // protocol) with ports 0: later fragments carry no ports, and all of them must
        // reach the backend that reassembles the datagram.
        let key = F::flow(&l3.src, &l3.dst, 0, 0, l3.proto);
        let slot = cache_index::<F>(&key);
        if let Some(r) = established::<F>(ctx, &key, slot, clk, FWD_FRAGMENT, EV_IGNORE, None) {
            return r;
        }
        let svc = F::services()
            .get_ptr(F::svc(&l3.dst, 0, l3.proto))
            .ok_or(PASS_NO_SERVICE)?;
        // SAFETY: the daemon replaces values whole (map update), never in place.
        let id = unsafe { (*svc).id };
        // A fragments flow is no connection: it has no state and is not counted.
        return new_flow::<F>(
            ctx,
            id,
            &key,
            slot,
            l3,
            0,
            clk,
            FWD_FRAGMENT,
            Opening::Any,
            NONE,
        );
    }
    let l4 = parse::ports(ctx, l3)?;
    let key = F::flow(&l3.src, &l3.dst, l4.sport, l4.dport, l3.proto);
    let slot = cache_index::<F>(&key);
    if l4.syn {
        // A connection's opening SYN is almost always a new flow: schedule first, and let
        // the insert, which walks the flow's bucket anyway, say whether the flow exists
        // (see `new_flow`). That skips a cache probe and a table lookup, both cache misses.
        let id = service::<F>(l3, l4.dport, clk.epoch)?;
        return new_flow::<F>(
            ctx,
            id,
            &key,
            slot,
            l3,
            l4.sport,
            clk,
            FWD_NEW_FLOW,
            Opening::Syn,
            SYN_RECV,
        );
    }
    // Possibly a NAT real server's reply (see `established`).
    let reply = Some((l3, l4.sport));
    if let Some(r) = established::<F>(ctx, &key, slot, clk, FWD_ESTABLISHED, l4.ev, reply) {
        return r;
    }
    let id = service::<F>(l3, l4.dport, clk.epoch)?;
    let (reason, opening, state) = if l3.proto != PROTO_TCP {
        (FWD_NEW_FLOW, Opening::Any, UDP)
    } else if l4.rst {
        (FWD_NEW_FLOW_MIDSTREAM, Opening::Never, NONE)
    } else {
        // IPVS's sloppy TCP: the state a connection without an entry moves to (an ACK:
        // ESTABLISHED, a FIN: CLOSE).
        (
            FWD_NEW_FLOW_MIDSTREAM,
            Opening::Midstream,
            tcp_next(NONE, l4.ev),
        )
    };
    new_flow::<F>(
        ctx, id, &key, slot, l3, l4.sport, clk, reason, opening, state,
    )
}

/// A NAT real server's reply: the packet comes from a real server's address and port (its
/// entry in `NAT_SOURCES4`/`NAT_SOURCES6` says the VIP and port to put back), or, from a
/// real server two service keys share (two services, or a group's entries), its flow's
/// reverse entry says which key's it is.
#[inline(always)]
fn nat_reply<F: Family>(
    ctx: &XdpContext,
    l3: &L3,
    key: &F::Flow,
    sport: u16,
    clk: Clock,
) -> Option<Result<u32, u32>> {
    let src = F::nat_sources().get_ptr(F::svc(&l3.src, sport, l3.proto))?;
    // SAFETY: the daemon replaces values whole (map update), never in place.
    let src = unsafe { &*src };
    // Shared, the flow's reverse entry says whose; a flow without one (from before the
    // real server was shared) is the service's the entry still names. Either way only a
    // live flow's reply is translated: one of no flow goes to the stack, as in IPVS.
    match F::nat_rev().get_ptr(key).filter(|_| src.shared != 0) {
        Some(fwd) => {
            // SAFETY: LRU values stay valid while the program runs (RCU).
            let fwd = unsafe { &*fwd };
            nat_live::<F>(fwd, key, packed(clk)).then(|| F::nat_reply_of::<false>(ctx, fwd, clk))
        }
        // While a SYN flood lasts, a SYN the guard forwarded without a flow gets its
        // answer translated all the same (its client's ACK is scheduled by the same hash):
        // new connections go on during a flood, as before replies were checked.
        None => (nat_live_of::<F>(key, &src.vip, src.vport, packed(clk))
            || (src.shared == 0 && conns::in_flood_window(clk.now)))
        .then(|| F::nat_reply::<false>(ctx, &src.vip, src.vport, &l3.dst, clk)),
    }
}

/// Whether `fwd` is a live flow (not idle past its timeout) whose backend is the NAT real
/// server reply `reply` comes from; its last-seen second refreshed, as IPVS refreshes a
/// connection from both directions (a stream only the server sends on stays alive). Out
/// of line: its frame holds no key of the main frame's.
#[inline(never)]
fn nat_live<F: Family>(fwd: &F::Flow, reply: &F::Flow, clk: u64) -> bool {
    live_nat_flow::<F>(fwd, reply, clk)
}

/// `clk`: the clock packed in one register (`now | epoch << 32`).
#[inline(always)]
fn live_nat_flow<F: Family>(fwd: &F::Flow, reply: &F::Flow, clk: u64) -> bool {
    let (now, epoch) = (clk as u32, (clk >> 32) as u32);
    // The client's packets saw the flow this second, on this CPU (the flow cache): live,
    // no table lookup. A reply comes as often as the client's packets: this is the
    // common case where both directions share a CPU. IPv4 only: comparing IPv6 keys here
    // takes more stack than the main frame leaves.
    if let Some(c) = cache_slot::<F>(cache_index::<F>(fwd)).filter(|_| F::V4) {
        // SAFETY: a slot of this CPU's region, as in `established`.
        let (ckey, cval, cepoch, _, cvia) = F::cache_parts(unsafe { &mut *c });
        if F::same(ckey, fwd) && cepoch == epoch && cval.last_seen == now {
            return cvia & BACKEND_F_NAT != 0
                && live_backend(cval.backend, cval.generation)
                    .is_some_and(|b| F::comes_from(reply, &b.daddr, b.nat_port));
        }
    }
    let Some(e) = F::flows().get_ptr_mut(fwd) else {
        return false;
    };
    // SAFETY: as in `established`.
    let e = unsafe { &mut *e };
    let ok = usable(e, now).is_some_and(|b| {
        b.flags & BACKEND_F_NAT != 0 && F::comes_from(reply, &b.daddr, b.nat_port)
    });
    // Refreshed, but never across a sync refresh window: the client's next packet crosses
    // it and sends the flow's refresh to the peer (`established`), which a reply cannot
    // from here (the event's call would nest a third frame).
    if ok && e.last_seen != now && !(sync::enabled() && sync::refresh_due(e.last_seen, now)) {
        e.last_seen = now;
    }
    ok
}

/// [`nat_live`] for the flow of `reply` to `vip`, `vport`: its key made here, in this
/// frame, not the main one (and no call deeper: the main frame leaves room for one).
#[inline(never)]
fn nat_live_of<F: Family>(reply: &F::Flow, vip: &[u32; 4], vport: u16, clk: u64) -> bool {
    let fwd = F::forward(reply, vip, vport);
    live_nat_flow::<F>(&fwd, reply, clk)
}

/// The clock in one register: a BPF function takes at most five arguments.
#[inline(always)]
fn packed(clk: Clock) -> u64 {
    clk.now as u64 | (clk.epoch as u64) << 32
}

/// How the packet that misses the flow table may open a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// UDP, fragments: any packet.
    Any,
    /// A TCP opening SYN, inserted without a lookup first (see `new_flow`).
    Syn,
    /// Any other TCP segment but a reset (a connection that a failover, an expiry or a
    /// restart left without its entry): only in a service with `SVC_F_SLOPPY_TCP`, as IPVS
    /// with `sloppy_tcp`, or while SYNs go out untracked (the ACK of such a SYN, scheduled
    /// by the same hash); else the stack gets it.
    Midstream,
    /// A TCP reset: never. It would open a flow only to close it, and IPVS never schedules
    /// one either, sloppy or not: the stack gets it (and drops it, knowing no such
    /// connection).
    Never,
}

/// The index of the flow's slot in this CPU's region of the cache. Computed once per
/// packet and passed down as a number: a slot pointer kept that long ends up moved by a
/// byte-wise copy, after which the verifier no longer knows it as a map value.
#[inline(always)]
fn cache_index<F: Family>(key: &F::Flow) -> u32 {
    let size = FLOW_CACHE_SIZE.load();
    // SAFETY: a helper without arguments or side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu.wrapping_mul(size) | (F::slot(key) & size.wrapping_sub(1))
}

/// The slot at `index`, if the cache has one (a CPU beyond the map's size, which the loader
/// makes impossible, simply runs uncached).
#[inline(always)]
fn cache_slot<F: Family>(index: u32) -> Option<*mut F::Cache> {
    F::cache().get_ptr_mut(index)
}

/// The backend a known flow may still use: its service active, not idle past the service's
/// timeout, its backend present with the same generation.
#[inline(always)]
fn usable(e: &FlowValue, now: u32) -> Option<&'static BackendValue> {
    let svc = SERVICE_INFO.get(e.service)?;
    if svc.flags & SVC_F_ACTIVE == 0 {
        return None;
    }
    let timeout = conns::timeout(svc, e.state);
    if timeout != 0 && now.wrapping_sub(e.last_seen) > timeout {
        return None;
    }
    live_backend(e.backend, e.generation)
}

#[inline(always)]
fn send_established<F: Family>(
    ctx: &XdpContext,
    key: &F::Flow,
    b: &BackendValue,
    e: &FlowValue,
    clk: Clock,
    reason: u32,
) -> Result<u32, u32> {
    send_to::<F>(ctx, key, backend_mac(b), via(b), e, false, clk, reason)
}

/// Sends the frame to flow `e`'s backend: by its MAC (direct routing), wrapped for its
/// tunnel, or rewritten for NAT (`how`: `via`'s bit); counts it for the flow's service and
/// backend. The reason comes back with `VIA_REDIRECT` when the route to a TUN or NAT backend
/// leaves through another interface; a packet that cannot go that way comes back as the
/// reason it did not (`tunnel::send`, `nat::send`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send_to<F: Family>(
    ctx: &XdpContext,
    key: &F::Flow,
    mac: MacWords,
    how: u32,
    e: &FlowValue,
    new_flow: bool,
    clk: Clock,
    reason: u32,
) -> Result<u32, u32> {
    let via = if how == 0 {
        rewrite_macs(ctx, mac)?;
        0
    } else if how & BACKEND_F_TUN != 0 {
        if F::V4 {
            tunnel::send::<true>(ctx, e.backend, F::slot(key), clk)?
        } else {
            tunnel::send::<false>(ctx, e.backend, F::slot(key), clk)?
        }
    } else if F::V4 {
        nat::send::<true, false>(ctx, e.backend, clk)?
    } else {
        nat::send::<false, false>(ctx, e.backend, clk)?
    };
    count_forward(ctx, e.service, e.backend, new_flow);
    Ok(reason | via)
}

/// The short path: a known flow of an active service, not idle too long, whose backend is
/// still there. First this CPU's cache, then the flow table (which refills the cache).
/// `None` sends the packet down the long path, which also decides every reason for not
/// forwarding. `ev` moves the connection's state (`conn_state::tcp_next`).
///
/// `reply` (the packet's L3 and source port): a real server's reply in a NAT flow is looked
/// for between the cache and the table. A reply misses both, and the table's miss (a bucket
/// of a million-entry table, a cache miss) cost it as much as all the rest; a client's
/// packet pays the small lookup only when the cache misses, and only while some backend is
/// NAT's. (Not a closure: the compiler kept it out of line, and its frame on top of the
/// main one passed the 512 bytes of stack.)
#[inline(always)]
fn established<F: Family>(
    ctx: &XdpContext,
    key: &F::Flow,
    slot: u32,
    clk: Clock,
    reason: u32,
    ev: u32,
    reply: Option<(&L3, u16)>,
) -> Option<Result<u32, u32>> {
    let now = clk.now;
    let cache = cache_slot::<F>(slot);
    if let Some(c) = cache {
        // SAFETY: a slot of this CPU's region: only this CPU touches it, and the program
        // runs to its end on one CPU (XDP runs with migration disabled).
        let (ckey, cval, cepoch, cmac, cvia) = F::cache_parts(unsafe { &mut *c });
        if F::same(ckey, key) && cepoch == clk.epoch {
            // Seen this second, under the epoch the slot was filled in, and no state change:
            // neither idle nor changed since it was checked (see `FlowCache4`). No service
            // or backend read.
            let moves = tcp_next(cval.state, ev) != cval.state;
            if cval.last_seen == now && !moves {
                return Some(send_to::<F>(ctx, key, cmac, cvia, cval, false, clk, reason));
            }
            // Once a second, and at a state change, the flow is checked again, and the
            // table hears from the cache (out of line: the hot path stays short).
            if let Some(b) = usable(cval, now) {
                if write_through::<F>(key, cval, now, ev) {
                    return Some(send_established::<F>(ctx, key, b, cval, clk, reason));
                }
            }
        }
    }
    if let Some((l3, sport)) = reply {
        if NAT_ON.get(0).is_some_and(|on| *on != 0) {
            if let Some(r) = nat_reply::<F>(ctx, l3, key, sport, clk) {
                return Some(r);
            }
        }
    }
    let entry = F::flows().get_ptr_mut(key)?;
    // SAFETY: LRU values stay valid while the program runs (RCU); a concurrent update of the
    // same flow from another CPU can at worst mix two choices for one packet, both live.
    let e = unsafe { &mut *entry };
    let b = usable(e, now)?;
    if e.last_seen != now {
        let old = e.last_seen;
        e.last_seen = now;
        if sync::enabled() && sync::refresh_due(old, now) {
            F::sync_flow(SYNC_EV_FLOW | SYNC_EV_F_REFRESH, key, e);
        }
    }
    let state = e.state;
    let next = tcp_next(state, ev);
    if next != state {
        conns::set_state(&raw mut e.state, e.backend, state, next);
    }
    if let Some(c) = cache {
        // SAFETY: per-CPU slot, as above.
        F::cache_fill(unsafe { &mut *c }, key, e, clk.epoch, b);
    }
    Some(send_established::<F>(ctx, key, b, e, clk, reason))
}

/// The table (the source of truth, and what other CPUs see) learns that a cached flow is
/// alive, and its state change; if it evicted the flow, it gets it back. Returns false when
/// another CPU gave the flow a different backend meanwhile: the caller then takes the
/// table's word, which refills this cache.
#[inline(never)]
fn write_through<F: Family>(key: &F::Flow, cval: &mut FlowValue, now: u32, ev: u32) -> bool {
    match F::flows().get_ptr_mut(key) {
        // SAFETY: as in `established`.
        Some(e) => unsafe {
            if (*e).backend != cval.backend || (*e).generation != cval.generation {
                return false;
            }
            let old = (*e).last_seen;
            if old != now {
                (*e).last_seen = now;
                if sync::enabled() && sync::refresh_due(old, now) {
                    F::sync_flow(SYNC_EV_FLOW | SYNC_EV_F_REFRESH, key, &*e);
                }
            }
            let state = (*e).state;
            let next = tcp_next(state, ev);
            if next != state {
                conns::set_state(&raw mut (*e).state, (*e).backend, state, next);
            }
            cval.state = (*e).state;
        },
        None => {
            let next = tcp_next(cval.state, ev);
            let value = FlowValue {
                last_seen: now,
                state: next,
                ..*cval
            };
            if F::flows().insert(key, &value, 0).is_ok() {
                // Still counted in its old state (only the sweep sees an eviction).
                if next != cval.state {
                    conns::moved(cval.backend, cval.state, next);
                }
                if sync::enabled() {
                    F::sync_flow(SYNC_EV_FLOW | SYNC_EV_F_REFRESH, key, &value);
                }
            }
            cval.state = next;
        }
    }
    cval.last_seen = now;
    true
}

/// The service of a whole packet: this CPU's memo of [`service_lookup`] when it holds the
/// answer under the current epoch, else the lookup, whose answer it keeps. Only answers are
/// kept (a packet for no service looks up every time).
#[inline(always)]
fn service<F: Family>(l3: &L3, port: u16, epoch: u32) -> Result<u32, u32> {
    let pp = port as u32 | (l3.proto as u32) << 16;
    let d = &l3.dst;
    if F::V4 {
        let Some(m) = SVC_MEMO4.get_ptr_mut(mix(d[0] ^ pp) & (SVC_MEMO_SLOTS - 1)) else {
            return service_lookup::<F>(l3, port);
        };
        // SAFETY: this CPU's slot; the program runs to its end on one CPU.
        let m = unsafe { &mut *m };
        if m.addr == d[0] && m.port_proto == pp && m.epoch == epoch {
            return Ok(m.id);
        }
        let id = service_lookup::<F>(l3, port)?;
        *m = SvcMemo4 {
            addr: d[0],
            port_proto: pp,
            id,
            epoch,
        };
        Ok(id)
    } else {
        let slot = mix(d[0] ^ d[1] ^ d[2] ^ d[3] ^ pp) & (SVC_MEMO_SLOTS - 1);
        let Some(m) = SVC_MEMO6.get_ptr_mut(slot) else {
            return service_lookup::<F>(l3, port);
        };
        // SAFETY: as above.
        let m = unsafe { &mut *m };
        if m.addr[0] == d[0]
            && m.addr[1] == d[1]
            && m.addr[2] == d[2]
            && m.addr[3] == d[3]
            && m.port_proto == pp
            && m.epoch == epoch
        {
            return Ok(m.id);
        }
        let id = service_lookup::<F>(l3, port)?;
        *m = SvcMemo6 {
            addr: *d,
            port_proto: pp,
            id,
            epoch,
            _pad: 0,
        };
        Ok(id)
    }
}

/// The service for (VIP, port, protocol), else the VIP's all-ports service. A whole packet
/// never takes a fragments-only entry, whichever lookup finds it (a packet to port 0 finds
/// it at the first).
#[inline(always)]
fn service_lookup<F: Family>(l3: &L3, port: u16) -> Result<u32, u32> {
    let whole_packet = |svc: F::Svc| {
        let r = F::services().get_ptr(svc)?;
        // SAFETY: the daemon replaces values whole, never in place.
        let r = unsafe { &*r };
        (r.flags & SVC_REF_F_FRAG_ONLY == 0).then_some(r.id)
    };
    whole_packet(F::svc(&l3.dst, port, l3.proto))
        .or_else(|| whole_packet(F::svc(&l3.dst, 0, l3.proto)))
        .ok_or(PASS_NO_SERVICE)
}

/// The long path for a packet of service `id`: choose a backend, remember the flow (in
/// `state`, counted for its backend), send.
///
/// `Opening::Syn`: the packet opens a TCP connection, and no lookup has been made. The flow
/// is then inserted only if absent; one that exists (a retransmitted SYN, a client reusing
/// the port of a live connection) keeps its backend, as the lookup would have given it: the
/// rr step taken for it is handed back and no persistence template is written for it.
/// A SYN that finds the table at its share of embryonic flows (`conns::flooded`) writes no
/// entry and is scheduled by a hash of the client's address and port (its network, in a
/// persistent service), which its ACK will find again.
/// A TCP segment that is no opening SYN is judged here, after the service's own verdicts
/// (inactive), because whether it may open a flow is the service's choice.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn new_flow<F: Family>(
    ctx: &XdpContext,
    id: u32,
    key: &F::Flow,
    slot: u32,
    l3: &L3,
    sport: u16,
    clk: Clock,
    reason: u32,
    opening: Opening,
    state: u32,
) -> Result<u32, u32> {
    let now = clk.now;
    let svc = SERVICE_INFO.get(id).ok_or(PASS_NO_SERVICE)?;
    if svc.flags & SVC_F_ACTIVE == 0 {
        return Err(PASS_INACTIVE);
    }
    let mut hashed = false;
    match opening {
        Opening::Never => return Err(PASS_NOT_SYN),
        Opening::Midstream => {
            if conns::in_flood_window(now) {
                hashed = true;
            } else if svc.flags & SVC_F_SLOPPY_TCP == 0 {
                return Err(PASS_NOT_SYN);
            }
        }
        _ => {}
    }
    let syn = opening == Opening::Syn;
    // Past the embryonic share a SYN writes no entry, unless its flow has one (a
    // retransmission, a port reused in TIME_WAIT): that one is dealt with as always, since
    // the client's ACK will find it, and replacing it does not grow the table.
    let guard = if syn {
        conns::flooded().filter(|_| copy_of::<F>(key).is_none())
    } else {
        None
    };
    hashed |= guard.is_some();
    let mut fresh = false;
    let (backend, b) = schedule::<F>(ctx, svc, l3, sport, now, hashed, &mut fresh)?;
    let value = FlowValue {
        backend,
        generation: b.generation,
        service: id,
        last_seen: now,
        state,
    };
    let how = via(b);
    if let Some(g) = guard {
        conns::extend_flood_window(g, now);
        return send_to::<F>(
            ctx,
            key,
            backend_mac(b),
            how,
            &value,
            true,
            clk,
            FWD_SYN_UNTRACKED,
        );
    }
    let flags = if syn { BPF_NOEXIST } else { BPF_ANY };
    match F::flows().insert(key, &value, flags) {
        Ok(()) => {
            conns::count(backend, state, 1);
            if how == BACKEND_F_NAT {
                nat_reverse::<F>(key, b, l3.proto);
            }
            if sync::enabled() {
                F::sync_flow(SYNC_EV_FLOW, key, &value);
            }
        }
        Err(e) if syn && e == -EEXIST => {
            // A retransmitted SYN, or a client reusing the port of an old connection: it
            // keeps the flow's backend (its state moves as IPVS's table says), unless that
            // backend now drains (weight 0, or down while its established flows stay): a
            // SYN is a connection being opened, and a draining backend takes none. A
            // connection in TIME_WAIT or CLOSE is over: the SYN is a new one, scheduled
            // afresh (IPVS's `conn_reuse_mode`). Without this, a client that reuses a port
            // would be sent to a dead server until the old flow's idle timeout.
            let old = copy_of::<F>(key);
            let reuse = old.is_some_and(|o| {
                o.state != TIME_WAIT && o.state != CLOSE && !backend_drains(o.backend)
            });
            if reuse {
                if let Some(r) =
                    established::<F>(ctx, key, slot, clk, FWD_ESTABLISHED, EV_SYN, None)
                {
                    if fresh && (svc.sched == SCHED_RR || svc.sched == SCHED_WRR) {
                        unstep_rr(svc.id);
                    }
                    return r;
                }
            }
            // The entry is stale (its backend gone or draining, idle too long, or the
            // connection over): the new choice replaces it.
            if F::flows().insert(key, &value, BPF_ANY).is_ok() {
                if let Some(o) = old {
                    if live_backend(o.backend, o.generation).is_some() {
                        conns::count(o.backend, o.state, -1);
                    }
                }
                conns::count(backend, state, 1);
                if how == BACKEND_F_NAT {
                    nat_reverse::<F>(key, b, l3.proto);
                }
                if sync::enabled() {
                    F::sync_flow(SYNC_EV_FLOW, key, &value);
                }
            }
        }
        Err(_) => {
            if may_log() {
                warn!(ctx, "flow table insert failed for service {}", id);
            }
        }
    }
    if fresh && svc.persist_timeout_s != 0 {
        // The client had no live template: this choice becomes it.
        let pkey = F::persist_key(&l3.src, &svc.persist_mask, svc.id);
        let template = FlowValue {
            state: NONE,
            ..value
        };
        if F::persist().insert(&pkey, &template, 0).is_ok() && sync::enabled() {
            F::sync_persist(SYNC_EV_PERSIST, &pkey, &template);
        }
    }
    if let Some(c) = cache_slot::<F>(slot) {
        // SAFETY: this CPU's slot, as in `established`.
        F::cache_fill(unsafe { &mut *c }, key, &value, clk.epoch, b);
    }
    send_to::<F>(ctx, key, backend_mac(b), how, &value, true, clk, reason)
}

/// For a NAT backend two service keys share (`NatSource::shared`), remembers that the replies
/// of flow `key` belong to it: its reverse entry. Any other needs none, its replies' source
/// is the backend's own (`NAT_SOURCES4`/`NAT_SOURCES6`). A failed insert leaves the replies
/// to the stack, as for a flow the table could not keep. A SYN the flood guard forwards
/// untracked gets no entry either: the reverse table would then fill with a flood's. Out
/// of line: the reverse key (40 bytes for IPv6) would sit in the main frame, which has no
/// room left for the steps it calls.
#[inline(never)]
fn nat_reverse<F: Family>(key: &F::Flow, b: &BackendValue, proto: u8) {
    if NAT_ON.get(0).is_none_or(|on| *on & NAT_ON_SHARED == 0) {
        return;
    }
    // A group's real server without a port of its own answers from each flow's.
    let shared = F::nat_sources()
        .get_ptr(F::svc(&b.daddr, F::reply_port(key, b.nat_port), proto))
        // SAFETY: as in `nat_reply`.
        .is_some_and(|s| unsafe { (*s).shared != 0 });
    if shared {
        let _ = F::nat_rev().insert(&F::reverse(key, &b.daddr, b.nat_port), key, 0);
    }
}

/// The table's flow for `key`, copied.
#[inline(always)]
fn copy_of<F: Family>(key: &F::Flow) -> Option<FlowValue> {
    let e = F::flows().get_ptr(key)?;
    // SAFETY: as in `established`.
    Some(unsafe { *e })
}

/// Whether `backend` takes no new connection.
#[inline(always)]
fn backend_drains(backend: u32) -> bool {
    BACKENDS
        .get(backend)
        .is_some_and(|b| b.flags & BACKEND_F_DRAINING != 0)
}

/// Takes back the rr/wrr step `schedule` made for a flow that turned out to exist.
#[inline(always)]
fn unstep_rr(service: u32) {
    if let Some(pos) = RR_STATE.get_ptr_mut(service) {
        // SAFETY: this CPU's slot, as in `schedule`.
        unsafe { *pos = (*pos).wrapping_sub(1) };
    }
}

/// Pick a backend for a new flow: the client's persistence template if it has a live one,
/// else the scheduler's choice, which sets `fresh` (the caller then writes the template
/// and, for rr/wrr, may hand the step back). `hashed`: the flow gets no entry now (or got
/// none at its SYN), so any scheduler but sh and mh (which hash anyway) chooses by a hash
/// of the client's address and port, the one choice its next packet can make again. An
/// out-parameter rather than a richer return value: a struct holding the backend's pointer
/// gets spilled in a way the verifier refuses.
#[inline(always)]
fn schedule<F: Family>(
    ctx: &XdpContext,
    svc: &ServiceValue,
    l3: &L3,
    sport: u16,
    now: u32,
    hashed: bool,
    fresh: &mut bool,
) -> Result<(u32, &'static BackendValue), u32> {
    if svc.ring_len == 0 {
        return Err(PASS_NO_BACKEND);
    }
    if svc.persist_timeout_s != 0 {
        let pkey = F::persist_key(&l3.src, &svc.persist_mask, svc.id);
        if let Some(t) = F::persist().get_ptr_mut(&pkey) {
            // SAFETY: as for flows.
            let t = unsafe { &mut *t };
            if now.wrapping_sub(t.last_seen) <= svc.persist_timeout_s {
                if let Some(b) = live_backend(t.backend, t.generation) {
                    // A draining backend takes no new connection, persistent or not.
                    if b.flags & BACKEND_F_DRAINING == 0 {
                        let old = t.last_seen;
                        t.last_seen = now;
                        if sync::enabled() && sync::refresh_due(old, now) {
                            F::sync_persist(SYNC_EV_PERSIST | SYNC_EV_F_REFRESH, &pkey, t);
                        }
                        return Ok((t.backend, b));
                    }
                }
            }
        }
    }

    let slot = match svc.sched {
        SCHED_SH | SCHED_MH => {
            let port = if svc.flags & SVC_F_HASH_PORT != 0 {
                sport as u32
            } else {
                0
            };
            lb_common::source_hash(&l3.src, port) % svc.ring_len
        }
        // A persistent service hashes the client's network, as its template would key it:
        // every connection the client opens during the flood then reaches one backend,
        // which its template names once one is written.
        _ if hashed && svc.persist_timeout_s != 0 => {
            let m = &svc.persist_mask;
            let net = [
                l3.src[0] & m[0],
                l3.src[1] & m[1],
                l3.src[2] & m[2],
                l3.src[3] & m[3],
            ];
            lb_common::source_hash(&net, 0) % svc.ring_len
        }
        _ if hashed => lb_common::source_hash(&l3.src, sport as u32) % svc.ring_len,
        SCHED_RR | SCHED_WRR => {
            let Some(pos) = RR_STATE.get_ptr_mut(svc.id) else {
                return Err(ring_error(ctx, svc.id, svc.ring_len));
            };
            // SAFETY: per-CPU slot: no other CPU reads or writes it, so there is no
            // read-modify-write race to lose a step to.
            unsafe {
                let p = *pos % svc.ring_len;
                *pos = p + 1;
                p
            }
        }
        _ => {
            let id = least(svc);
            if id != NO_CANDIDATE {
                if let Some(b) = BACKENDS.get(id) {
                    *fresh = true;
                    return Ok((id, b));
                }
            }
            // No candidate qualifies (every one overloaded, or none ranked yet: the daemon
            // ranks within milliseconds of a start): the ring's next backend, as rr.
            let Some(pos) = RR_STATE.get_ptr_mut(svc.id) else {
                return Err(ring_error(ctx, svc.id, svc.ring_len));
            };
            // SAFETY: per-CPU slot, as above.
            unsafe {
                let p = *pos % svc.ring_len;
                *pos = p + 1;
                p
            }
        }
    };
    // A slot past the array (a corrupt `ring_off`) finds nothing: the lookup bounds it.
    let Some(&id) = RINGS.get(svc.ring_off.wrapping_add(slot)) else {
        return Err(map_error(ctx, svc.id, slot));
    };
    let Some(b) = BACKENDS.get(id) else {
        return Err(map_error(ctx, svc.id, slot));
    };
    if b.flags & BACKEND_F_PRESENT == 0 || b.flags & BACKEND_F_DRAINING != 0 {
        return Err(map_error(ctx, svc.id, slot));
    }
    *fresh = true;
    Ok((id, b))
}

const NO_CANDIDATE: u32 = u32::MAX;

/// The count-based schedulers (`lc`, `wlc`, `sed`, `nq`, `fo`, `ovf`), IPVS's formulas
/// between the two backends the daemon ranked best for the service (`CANDIDATES`, at most
/// 20 ms old), on their counts now: every new flow counts at once, so a burst alternates
/// between the two as IPVS's scan would between the least loaded, and the daemon's next
/// ranking brings in any other that became lighter. IPVS scans every real server for each
/// connection; comparing two keeps a new flow's cost flat, and the verifier's work too (a
/// scan of 16 in the program took it past its million instructions).
///
/// Every scheduler is one comparison, `overhead / weight` least (lc: weight 1; fo and ovf:
/// overhead 1, so the heaviest wins), ties to the first. `NO_CANDIDATE` when neither
/// qualifies.
#[inline(never)]
fn least(svc: &ServiceValue) -> u32 {
    let Some(c) = CANDIDATES.get(svc.id) else {
        return NO_CANDIDATE;
    };
    // Written by the daemon as slots of the service's ring + 1 (0: none): a pair the daemon
    // wrote for the service that had this id before can only name this service's backends.
    let (c0, c1) = (ring_slot(svc, c[0]), ring_slot(svc, c[1]));
    let (oh0, w0) = score(c0, svc.sched);
    let (oh1, w1) = score(c1, svc.sched);
    // The first wins unless the second is strictly lighter: oh1 / w1 < oh0 / w0.
    if w1 != 0 && (w0 == 0 || oh0 * w1 > oh1 * w0) {
        c1
    } else if w0 != 0 {
        c0
    } else {
        NO_CANDIDATE
    }
}

/// The backend at ring slot `w - 1` of `svc` (`NO_CANDIDATE` for 0 or past the ring).
#[inline(always)]
fn ring_slot(svc: &ServiceValue, w: u32) -> u32 {
    let s = w.wrapping_sub(1);
    if s >= svc.ring_len {
        return NO_CANDIDATE;
    }
    RINGS
        .get(svc.ring_off.wrapping_add(s))
        .copied()
        .unwrap_or(NO_CANDIDATE)
}

/// A backend's (overhead, weight) under `sched`; weight 0 when it takes nothing (absent,
/// draining, weight 0, overloaded, or for `ovf` more active connections than its weight).
#[inline(always)]
fn score(id: u32, sched: u32) -> (u64, u64) {
    let Some(b) = BACKENDS.get(id) else {
        return (1, 0);
    };
    let Some(l) = BACKEND_LOAD.get_ptr_mut(id) else {
        return (1, 0);
    };
    let (a, ina) = conns::load_of(l);
    let weight = b.weight as u64;
    if b.flags & (BACKEND_F_PRESENT | BACKEND_F_DRAINING) != BACKEND_F_PRESENT
        || weight == 0
        || (sched == SCHED_OVF && a > weight)
        || conns::overloaded(l, b.u_threshold, b.l_threshold, a + ina)
    {
        return (1, 0);
    }
    match sched {
        SCHED_LC => ((a << 8) + ina, 1),
        SCHED_WLC => ((a << 8) + ina, weight),
        // nq: a backend without active connections is taken at once.
        SCHED_NQ if a == 0 => (0, weight),
        SCHED_SED | SCHED_NQ => (a + 1, weight),
        _ => (1, weight),
    }
}

/// A service id past `RR_STATE`: the maps are not the size the daemon planned for.
#[inline(never)]
fn ring_error(ctx: &XdpContext, service: u32, ring_len: u32) -> u32 {
    if may_log() {
        warn!(
            ctx,
            "service {} (ring length {}) has no rr position", service, ring_len
        );
    }
    PASS_MAP_ERROR
}

/// A ring slot naming no usable backend: user space wrote the maps in the wrong order.
#[inline(never)]
fn map_error(ctx: &XdpContext, service: u32, slot: u32) -> u32 {
    if may_log() {
        warn!(
            ctx,
            "service {}: ring slot {} names no usable backend", service, slot
        );
    }
    PASS_MAP_ERROR
}

/// ICMP: "fragmentation needed" and "packet too big" about a flow we balance go to that
/// flow's backend, whose path MTU it concerns. With NAT, every error IPVS translates
/// (destination unreachable, time exceeded; ICMPv6's parameter problem too) about a NAT
/// flow is translated, both ways (`nat::send`, `nat::reply4` with `ICMP`). Everything else
/// (echo, neighbour discovery, other errors) goes to the stack.
#[inline(always)]
fn icmp<F: Family>(ctx: &XdpContext, l3: &L3) -> Result<u32, u32> {
    if l3.fragment {
        return Err(PASS_ICMP);
    }
    let (ty, code) = parse::icmp_type_code(ctx, l3)?;
    let (ptb, error) = if l3.family == FAMILY_V4 {
        (
            ty == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED,
            ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED,
        )
    } else {
        (ty == ICMPV6_PKT_TOOBIG, (1..=4).contains(&ty))
    };
    let nat = error && NAT_ON.get(0).is_some_and(|on| *on != 0);
    if !ptb && !nat {
        return Err(PASS_ICMP);
    }
    // A quote too short to read is malformed for "fragmentation needed" (about our
    // traffic), any other error's the stack's as before NAT looked at it.
    let (src, dst, proto, sport, dport) =
        parse::icmp_quoted(ctx, l3).map_err(|e| if ptb { e } else { PASS_ICMP })?;
    // The quoted packet is one the VIP sent (a real server's reply): from VIP:port to the
    // client; its flow is the reverse. Or, NAT, one the client sent that was translated
    // here, which an ICMP error from the real servers' side quotes: its key is then the
    // reverse entry's of its real server's replies.
    if src != l3.dst || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(PASS_ICMP_NO_FLOW);
    }
    let key = F::flow(&dst, &src, dport, sport, proto);
    let Some(entry) = F::flows().get_ptr(&key) else {
        if nat {
            return nat_icmp_reply::<F>(ctx, &key, &dst, dport, proto, &l3.dst);
        }
        return Err(PASS_ICMP_NO_FLOW);
    };
    // SAFETY: as in `established`.
    let e = unsafe { &*entry };
    let svc = SERVICE_INFO.get(e.service).ok_or(PASS_ICMP_NO_FLOW)?;
    if svc.flags & SVC_F_ACTIVE == 0 {
        return Err(PASS_INACTIVE);
    }
    let b = live_backend(e.backend, e.generation).ok_or(PASS_ICMP_NO_FLOW)?;
    if b.flags & BACKEND_F_NAT != 0 {
        return if F::V4 {
            nat::send::<true, true>(ctx, e.backend, clock())
        } else {
            nat::send::<false, true>(ctx, e.backend, clock())
        };
    }
    if !ptb {
        return Err(PASS_ICMP);
    }
    send_established::<F>(ctx, &key, b, e, clock(), FWD_ICMP)
}

/// An ICMP error from the real servers' side about a NAT flow: its quoted packet (from
/// the client to real server `rs`, `rport`) names the real server, whose `NAT_SOURCES`
/// entry names the VIP and port (or, shared, whose flow's reverse entry does, under `key`:
/// the quoted packet's reverse, the key of its replies).
#[inline(always)]
fn nat_icmp_reply<F: Family>(
    ctx: &XdpContext,
    key: &F::Flow,
    rs: &[u32; 4],
    rport: u16,
    proto: u8,
    client: &[u32; 4],
) -> Result<u32, u32> {
    let src = F::nat_sources()
        .get_ptr(F::svc(rs, rport, proto))
        .ok_or(PASS_ICMP_NO_FLOW)?;
    // SAFETY: as in `nat_reply`.
    let src = unsafe { &*src };
    let clk = clock();
    match F::nat_rev().get_ptr(key).filter(|_| src.shared != 0) {
        Some(fwd) => {
            // SAFETY: as in `nat_reply`.
            let fwd = unsafe { &*fwd };
            if !nat_live::<F>(fwd, key, packed(clk)) {
                return Err(PASS_ICMP_NO_FLOW);
            }
            F::nat_reply_of::<true>(ctx, fwd, clk)
        }
        None => {
            if !nat_live_of::<F>(key, &src.vip, src.vport, packed(clk)) {
                return Err(PASS_ICMP_NO_FLOW);
            }
            F::nat_reply::<true>(ctx, &src.vip, src.vport, client, clk)
        }
    }
}
