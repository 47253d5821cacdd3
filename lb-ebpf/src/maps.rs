//! Every map of the program, and the globals the loader sets. Sizes here are defaults: the
//! daemon sets the real ones at load time (`EbpfLoader::map_max_entries`).
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use lb_common::*;

/// The MAC address of the interface the program is attached to: the source of every frame
/// it sends, in the 16-bit words the program copies (the bytes are the address's, in order).
/// Set at load time.
#[unsafe(no_mangle)]
pub static IFACE_MAC: Global<[u16; 3]> = Global::new([0; 3]);

/// Slots of each flow cache, a power of two. Set at load time.
#[unsafe(no_mangle)]
pub static FLOW_CACHE_SIZE: Global<u32> = Global::new(DEFAULT_FLOW_CACHE);

/// Non-zero: write a connection-sync event for every flow and persistence template created
/// or refreshed (`sync.rs`). Set at load time; while it is 0 the verifier removes the
/// emitting code, so a node without sync pays nothing for it.
#[unsafe(no_mangle)]
pub static SYNC_ENABLED: Global<u32> = Global::new(0);

/// A flow's refresh event is written when `last_seen >> SYNC_REFRESH_SHIFT` changes: at most
/// once per 2^shift seconds per flow. Set at load time.
#[unsafe(no_mangle)]
pub static SYNC_REFRESH_SHIFT: Global<u32> = Global::new(3);

/// (VIP, port, protocol) -> service id, per family. Written by the daemon only.
#[map]
pub static SERVICES4: HashMap<ServiceKey4, ServiceRef> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);
#[map]
pub static SERVICES6: HashMap<ServiceKey6, ServiceRef> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES * 2, 0);

/// Service id -> flags, scheduler, ring length, timeouts. An array, so a known flow reaches
/// its service's state without a hash lookup.
#[map]
pub static SERVICE_INFO: Array<ServiceValue> = Array::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Backend id -> MAC, state and generation. Written by the daemon only.
#[map]
pub static BACKENDS: Array<BackendValue> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// `ring_off` + slot -> backend id: every service's scheduler table (rr list, wrr sequence,
/// sh buckets or Maglev table), computed in user space, each in its own region of one
/// array: a ring costs what its scheduler needs (an rr ring of 10 servers, 10 slots), and
/// reaching it costs the same array lookup as a fixed stride did. Mappable: the daemon
/// writes slots as memory, where a system call a slot would make a start with a hundred
/// Maglev tables take seconds.
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(DEFAULT_RING_SLOTS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// 5-tuple -> backend: the connection table, per family.
#[map]
pub static FLOWS4: LruHashMap<FlowKey4, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map]
pub static FLOWS6: LruHashMap<FlowKey6, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// NAT: a real server's (address, port, protocol) -> the VIP and port its replies come
/// from, per family. Written by the daemon only; sized with the backends.
#[map]
pub static NAT_SOURCES4: HashMap<ServiceKey4, NatSource> =
    HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);
#[map]
pub static NAT_SOURCES6: HashMap<ServiceKey6, NatSource> =
    HashMap::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// NAT, a real server two service keys share: a reply's 5-tuple (real server to client) -> its
/// flow's key (client to VIP), per family; written with the flow, sized with the flow
/// table (`nat.rs`).
#[map]
pub static NAT_REV4: LruHashMap<FlowKey4, FlowKey4> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map]
pub static NAT_REV6: LruHashMap<FlowKey6, FlowKey6> =
    LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Slot 0: non-zero while some backend is NAT's: the program then looks up replies.
#[map]
pub static NAT_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU direct-mapped caches in front of `FLOWS4`/`FLOWS6`: a known flow's packets
/// usually hit here, an array read, instead of paying a hash-table lookup (which cost about
/// a third of an established packet's time). One plain array holding `FLOW_CACHE_SIZE`
/// slots per possible CPU, CPU `c`'s from `c * FLOW_CACHE_SIZE` on: a per-CPU array would
/// cost a second cache miss per new flow, on the pointer to the slot's per-CPU copy.
#[map]
pub static FLOW_CACHE4: Array<FlowCache4> = Array::with_max_entries(DEFAULT_FLOW_CACHE, 0);
#[map]
pub static FLOW_CACHE6: Array<FlowCache6> = Array::with_max_entries(DEFAULT_FLOW_CACHE, 0);

/// This CPU's memo of the service lookup: (VIP, port, protocol) -> service id, direct
/// mapped, valid under the `Clock::epoch` it was filled in (the daemon bumps the epoch after
/// every update that writes `SERVICES4`/`SERVICES6`). A hit is an inlined array read where
/// the hash lookup is a helper call: about a fifth of a new flow's own cost. Program-private:
/// never pinned or written by the daemon; a grown or resized instance shares it (the epoch
/// bump at the switch voids it), a restarted one starts with an empty one.
#[map]
pub static SVC_MEMO4: PerCpuArray<SvcMemo4> = PerCpuArray::with_max_entries(SVC_MEMO_SLOTS, 0);
#[map]
pub static SVC_MEMO6: PerCpuArray<SvcMemo6> = PerCpuArray::with_max_entries(SVC_MEMO_SLOTS, 0);

/// Slots of each service memo, per CPU; a power of two.
pub const SVC_MEMO_SLOTS: u32 = 256;

/// A `SVC_MEMO4` slot. `port_proto`: the port (network byte order) | protocol << 16; never 0
/// for a filled slot (the protocol is TCP or UDP), so a zeroed slot matches nothing.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SvcMemo4 {
    pub addr: u32,
    pub port_proto: u32,
    pub id: u32,
    pub epoch: u32,
}

/// A `SVC_MEMO6` slot, as `SvcMemo4`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SvcMemo6 {
    pub addr: [u32; 4],
    pub port_proto: u32,
    pub id: u32,
    pub epoch: u32,
    pub _pad: u32,
}

/// (client network, service) -> backend: IPVS persistence templates, per family.
#[map]
pub static PERSIST4: LruHashMap<PersistKey4, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_PERSIST, 0);
#[map]
pub static PERSIST6: LruHashMap<PersistKey6, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_PERSIST, 0);

/// Slot 0: seconds of CLOCK_MONOTONIC, written by the daemon every second, and the epoch of
/// the service and backend state (`Clock`). Reading the seconds is a memory load, where
/// `bpf_ktime_get_ns` is a helper call that dominated the cost of an established flow;
/// timeouts are whole seconds anyway.
#[map]
pub static CLOCK: Array<Clock> = Array::with_max_entries(1, 0);

/// Service id -> the rr/wrr position of this CPU. Per CPU, so choosing never races.
#[map]
pub static RR_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Reason -> packets and bytes.
#[map]
pub static REASON_STATS: PerCpuArray<ReasonCounters> =
    PerCpuArray::with_max_entries(reason::COUNT, 0);

/// Service id -> forwarded packets, bytes, new flows.
#[map]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Backend id -> forwarded packets, bytes, new flows.
#[map]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// Backend id -> its connection counts (`BackendLoad`): atomic adds by the program on every
/// CPU, corrections by the daemon's sweep through a shared mapping (hence mappable).
#[map]
pub static BACKEND_LOAD: Array<BackendLoad> =
    Array::with_max_entries(DEFAULT_MAX_BACKENDS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Service id -> the two backends the daemon ranked least loaded for a count-based
/// scheduler, as slots of the service's ring + 1 (0: none), refreshed every 20 ms; the
/// program chooses between them on their counts now. Mappable: the daemon writes them as
/// memory.
#[map]
pub static CANDIDATES: Array<[u32; 2]> =
    Array::with_max_entries(DEFAULT_MAX_SERVICES, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Each CPU's memo of the FIB's answers for TUN and NAT backends (`NextHop`): the next hop's MAC,
/// the egress interface and its MTU, asked again once a second and after every update
/// (epoch). Direct mapped, `NEXT_HOP_SLOTS` slots per CPU, CPU `c`'s from
/// `c * NEXT_HOP_SLOTS` on, a slot holding the backend it answers for: one plain array (a
/// per-CPU array cost a helper call a lookup, the established packet's biggest cost after
/// wrapping) whose size follows the CPUs, not the real servers. Program-private; the
/// loader sizes it.
#[map]
pub static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(NEXT_HOP_SLOTS, 0);

/// Slot 0: this CPU's `bpf_fib_lookup` argument: 64 bytes the program's stack, at its
/// 512-byte limit, has no room for.
#[map]
pub static FIB_SCRATCH: PerCpuArray<crate::route::FibParams> = PerCpuArray::with_max_entries(1, 0);

/// A `NEXT_HOPS` slot: what `bpf_fib_lookup` said about the route to a tunnel backend.
/// Valid while `ok` is 1, `checked` is the `CLOCK` second and `epoch` the `Clock::epoch`:
/// a neighbour's new MAC or a route's new MTU is seen within a second, a backend's new
/// address at once.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The next hop's MAC and the egress interface's, as the program copies them.
    pub dmac: [u16; 3],
    pub smac: [u16; 3],
    pub ifindex: u32,
    /// The route's MTU: the largest outer packet.
    pub mtu: u32,
    pub checked: u32,
    pub epoch: u32,
    pub ok: u32,
    /// The backend the slot answers for, and the interface the frame came in on (the FIB
    /// was asked as for a packet arriving there).
    pub backend: u32,
    pub ingress: u32,
    pub _pad: u32,
}

/// Each CPU's memo of the FIB's answers for NAT clients (`HostHop`), as `NEXT_HOPS` is for
/// backends: direct mapped by the client's address, `NEXT_HOP_SLOTS` slots per CPU, each
/// holding the address it answers for, valid for its second and epoch. Program-private; the
/// loader sizes it.
#[map]
pub static HOST_HOPS: Array<HostHop> = Array::with_max_entries(NEXT_HOP_SLOTS, 0);

/// The interfaces the program runs on, by ifindex: the redirect's targets (`route::out`).
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(TX_PORTS_MAX, 0);

/// Next hops without a neighbour entry, for the daemon to resolve (`NeighWant`).
#[map]
pub static NEIGH_WANTED: Array<NeighWant> =
    Array::with_max_entries(NEIGH_WANTED_SLOTS, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// A `HOST_HOPS` slot: the route to one client.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HostHop {
    pub addr: [u32; 4],
    pub dmac: [u16; 3],
    pub smac: [u16; 3],
    pub ifindex: u32,
    pub checked: u32,
    pub epoch: u32,
    pub ingress: u32,
    pub ok: u32,
}

/// Connection state -> its timeout in seconds (`conn_state`; ESTABLISHED, UDP and NONE take
/// the service's `idle_timeout_s` instead). Written by the daemon (`lvs_timeouts`).
#[map]
pub static TIMEOUTS: Array<u32> = Array::with_max_entries(conn_state::COUNT, 0);

/// Slot 0: the SYN-flood guard (`SynGuard`), shared by every CPU; mappable for the daemon's
/// corrections, which must not overwrite the program's concurrent counts.
#[map]
pub static SYN_GUARD: Array<SynGuard> =
    Array::with_max_entries(1, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Connection-sync events (`SyncEvent4`/`SyncEvent6`) for the daemon, which drains it on a
/// timer (events are submitted without a wakeup). Sized at load time.
#[map]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_SYNC_RING_BYTES, 0);

/// `sync_stat` slot -> count: events lost to a full ring.
#[map]
pub static SYNC_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(sync_stat::COUNT, 0);

/// Slot 0: when this CPU last logged, so that rare-event logs stay rare under a flood.
#[map]
pub static LOG_STATE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Tests only (`lb_vlan_test`, which BPF_PROG_TEST_RUN can run where it cannot run the
/// device-bound `lb_native`): slot 0 holds the answer the driver's VLAN-tag call would give,
/// as `ret as u32 | proto << 32 | tci << 48` (`proto` in host byte order); 0, the initial
/// value, is "no tag taken off". No other entry point reads it.
#[map]
pub static VLAN_TEST: Array<u64> = Array::with_max_entries(1, 0);
