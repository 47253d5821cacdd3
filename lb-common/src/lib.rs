//! What the XDP program and the daemon must agree on: map keys and values, flag bits,
//! counter slots and load-time constants.
//!
//! Every type is `#[repr(C)]`, holds only integers and byte arrays (never a Rust `enum`,
//! `bool` or `Option`, which would be undefined behaviour when laid over bytes the other
//! side wrote), has explicit padding, and a size assertion.
//!
//! Addresses are stored in network byte order, exactly as loaded from the packet: a `u32`
//! for IPv4, four `u32` words for IPv6. Keyed maps exist once per family, so an IPv4 flow
//! key is 16 bytes rather than 40: less to hash, compare and keep in cache.
#![no_std]

/// Address family tags (user space and the parser; keys are per-family maps).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_GRE: u8 = 47;
pub const PROTO_VRRP: u8 = 112;

/// Default size of the flow table (LRU), overridable at load time.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Service slots the program's maps are compiled with; the loader sizes them from the
/// configuration (service ids are `0..services`).
pub const DEFAULT_MAX_SERVICES: u32 = 64;
/// Backend slots the program's maps are compiled with (backend ids are `0..backends`).
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// `RINGS` slots the program's maps are compiled with: every service's ring lies in this
/// one array, at the service's `ring_off`.
pub const DEFAULT_RING_SLOTS: u32 = 1 << 16;
/// The default Maglev table size M of an `mh` service (a prime; IPVS's `mh` uses 65537 too).
pub const DEFAULT_MH_TABLE_SIZE: u32 = 65537;
/// Default per-CPU flow cache slots, per family (see `FlowCache4`).
pub const DEFAULT_FLOW_CACHE: u32 = 8192;
/// Slots of each CPU's next-hop memos (`NEXT_HOPS`, `HOST_HOPS`), a power of two: TUN and
/// NAT backends whose ids share a slot, and NAT clients whose addresses do, ask the FIB in
/// turn.
pub const NEXT_HOP_SLOTS: u32 = 4096;
/// Default size of the persistence-template table (LRU).
pub const DEFAULT_MAX_PERSIST: u32 = 1 << 16;
/// Size in bytes of the connection-sync event ring (`SYNC_EVENTS`) while sync is off: the
/// smallest a ring can be (one page); the loader sets the real size when sync is on.
pub const DEFAULT_SYNC_RING_BYTES: u32 = 4096;

/// Names of the maps and globals, shared so that a rename breaks the build, not the load.
pub mod names {
    pub const PROGRAM: &str = "lb";
    pub const SERVICES4: &str = "SERVICES4";
    pub const SERVICES6: &str = "SERVICES6";
    pub const SERVICE_INFO: &str = "SERVICE_INFO";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RINGS: &str = "RINGS";
    pub const FLOWS4: &str = "FLOWS4";
    pub const FLOWS6: &str = "FLOWS6";
    pub const PERSIST4: &str = "PERSIST4";
    pub const PERSIST6: &str = "PERSIST6";
    pub const RR_STATE: &str = "RR_STATE";
    pub const FLOW_CACHE4: &str = "FLOW_CACHE4";
    pub const FLOW_CACHE6: &str = "FLOW_CACHE6";
    pub const CLOCK: &str = "CLOCK";
    pub const REASON_STATS: &str = "REASON_STATS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Ring buffer of connection-sync events (`SyncEvent4`/`SyncEvent6`).
    pub const SYNC_EVENTS: &str = "SYNC_EVENTS";
    /// Per-CPU counters of the sync events (`sync_stat`).
    pub const SYNC_STATS: &str = "SYNC_STATS";
    /// Global: the MAC address of the interface the program is attached to.
    pub const GLOBAL_IFACE_MAC: &str = "IFACE_MAC";
    /// Global: the slots of each flow cache (a power of two).
    pub const GLOBAL_FLOW_CACHE_SIZE: &str = "FLOW_CACHE_SIZE";
    /// Global: non-zero makes the program write connection-sync events.
    pub const GLOBAL_SYNC_ENABLED: &str = "SYNC_ENABLED";
    /// Global: a refresh event is written when a flow's `last_seen >> SHIFT` changes.
    pub const GLOBAL_SYNC_REFRESH_SHIFT: &str = "SYNC_REFRESH_SHIFT";
    /// Backend id -> its connection counts (`BackendLoad`), kept by the program and
    /// corrected by the daemon's sweep; what the count-based schedulers read.
    pub const BACKEND_LOAD: &str = "BACKEND_LOAD";
    /// Connection state -> timeout in seconds (`conn_state`), written by the daemon.
    pub const TIMEOUTS: &str = "TIMEOUTS";
    /// Slot 0: the SYN-flood guard (`SynGuard`).
    pub const SYN_GUARD: &str = "SYN_GUARD";
    /// Service id -> the two backends a count-based scheduler chooses between.
    pub const CANDIDATES: &str = "CANDIDATES";
    /// Backend id -> this CPU's memo of the FIB's answer for a tunnel or NAT backend
    /// (program private; sized with the CPUs).
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// This CPU's memo of the FIB's answer for a NAT client, direct mapped by its address
    /// (program private; sized with the CPUs, as `NEXT_HOPS`).
    pub const HOST_HOPS: &str = "HOST_HOPS";
    /// Next hops towards NAT clients that had no neighbour entry (`NeighWant`), direct
    /// mapped by address; mappable: the daemon polls it and asks the kernel to resolve them.
    pub const NEIGH_WANTED: &str = "NEIGH_WANTED";
    /// The interfaces the program runs on, by ifindex (a `DEVMAP_HASH`): frames for
    /// another of them go out by `bpf_redirect_map`, which the kernel sends in bulk. Written
    /// by the daemon before the program is attached; shared by the instances.
    pub const TX_PORTS: &str = "TX_PORTS";
    /// NAT: a real server's (address, port, protocol) as a `ServiceKey4`/`ServiceKey6` ->
    /// the VIP and port its replies come from (`NatSource`). Written by the daemon, one
    /// entry per NAT real server and port it answers from: a reply needs no per-flow state
    /// unless two service keys reach it (`NatSource::shared`).
    /// The virtual MAC program's (`vmac` object, not the XDP one): a virtual MAC
    /// interface's ifindex -> its parent (`VmacParent`), where its MLD messages leave.
    pub const VMAC_PARENTS: &str = "VMAC_PARENTS";
    /// The virtual MAC program's counters (`vmac_stat`), per CPU.
    pub const VMAC_STATS: &str = "VMAC_STATS";
    pub const NAT_SOURCES4: &str = "NAT_SOURCES4";
    pub const NAT_SOURCES6: &str = "NAT_SOURCES6";
    /// NAT, for a shared real server only: a reply's flow key (real server to client) ->
    /// the flow's key (client to VIP). LRU, sized with the flow table.
    pub const NAT_REV4: &str = "NAT_REV4";
    pub const NAT_REV6: &str = "NAT_REV6";
    /// Slot 0: `NAT_ON_ANY` while some backend is reached by NAT (a packet of no known flow
    /// is then looked up as a reply before the service lookup; without NAT nothing pays for
    /// that lookup), with `NAT_ON_SHARED` while some NAT real server is shared (a new flow
    /// then looks up whether its real server is one; without, none pays for that). Written
    /// by the daemon at every update, shared by the instances.
    pub const NAT_ON: &str = "NAT_ON";
    /// Daemon only (the program never reads it): backend id -> `BackendKey`, what a
    /// restarted daemon adopts the backend ids by.
    pub const BACKEND_KEYS: &str = "BACKEND_KEYS";
    /// Daemon only: slot 0 holds the pinned state's `Meta`.
    pub const META: &str = "META";
    /// A real server's decapsulator (`realserver start --tunnel`): the entry point, the
    /// VIPs it takes tunnelled packets for (`DecapKey`), and its GUE port (a global).
    pub const DECAP_PROGRAM: &str = "lb_decap";
    pub const DECAP_VIPS: &str = "DECAP_VIPS";
    pub const GLOBAL_DECAP_GUE_PORT: &str = "DECAP_GUE_PORT";
}

/// The version of the maps' layout that a daemon pins (`Meta::layout`): raised whenever a
/// map's key, value or meaning changes, so that a daemon never adopts maps it would read
/// wrongly. A map whose type, key or value size differs from the object's is never adopted
/// whatever the version says.
pub const LAYOUT_VERSION: u32 = 3;

/// Slot 0 of the daemon-only `META` array, pinned beside the maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// `LAYOUT_VERSION` of the daemon that wrote the maps.
    pub layout: u32,
    /// The last connection-sync boot id this dataplane's daemon used: a restart takes a
    /// larger one, so that the peer never mistakes its new sequence numbers for old ones.
    pub sync_boot: u32,
    /// Starts of daemons that adopted these maps (0 for the first).
    pub adoptions: u64,
}
const _: () = assert!(core::mem::size_of::<Meta>() == 16);

/// Value of the daemon-only `BACKEND_KEYS` array, indexed by backend id: which service's
/// real server the id stands for. `family` 0: the id is free.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendKey {
    pub service: u32,
    /// The address in the program's words (`FAMILY_V4`: word 0).
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<BackendKey>() == 24);

/// Key of `DECAP_VIPS`: a VIP a real server takes tunnelled packets for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecapKey {
    /// The address in the program's words (`family` 4: word 0, the others 0).
    pub addr: [u32; 4],
    /// 4 or 6.
    pub family: u32,
}
const _: () = assert!(core::mem::size_of::<DecapKey>() == 20);

/// Key of `SERVICES4`: (VIP, port, protocol). Port 0 means every port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey4 {
    pub addr: u32,
    /// Network byte order, as loaded from the packet.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey4>() == 8);

/// Key of `SERVICES6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 20);

/// This port-0 entry exists only to route fragments of the VIP (see `docs/architecture.md`,
/// "Fragments"); whole packets never match it.
pub const SVC_REF_F_FRAG_ONLY: u32 = 1 << 0;

/// Value of `SERVICES4`/`SERVICES6`: which service a key belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceRef {
    /// Index into `SERVICE_INFO`.
    pub id: u32,
    /// `SVC_REF_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceRef>() == 8);

/// The node is active (VRRP master) for this service's VIP: forward. Clear: pass to the
/// stack, like IPVS `backup_only`.
pub const SVC_F_ACTIVE: u32 = 1 << 0;
/// `sh` and `mh` hash the source port as well as the source address (IPVS `sh-port`/`mh-port`).
pub const SVC_F_HASH_PORT: u32 = 1 << 2;
/// A TCP packet other than an opening SYN of a flow the table does not know is scheduled
/// as a new flow (IPVS's `sloppy_tcp`; what lets connections survive a failover without
/// sync), a RST excepted. Clear: it goes to the stack, as IPVS does by default.
pub const SVC_F_SLOPPY_TCP: u32 = 1 << 3;

/// Scheduler codes. The kernel needs only the way a ring slot is chosen: rr and wrr step a
/// per-CPU counter, sh and mh hash the source. The ring contents make the difference.
pub const SCHED_RR: u32 = 0;
pub const SCHED_WRR: u32 = 1;
pub const SCHED_SH: u32 = 2;
pub const SCHED_MH: u32 = 3;
/// The count-based schedulers: each new flow compares the connection counts
/// (`BackendLoad`) of the two backends the daemon ranked least loaded (`CANDIDATES`); their
/// ring holds every live backend once (what an unranked service and the flood hash use).
pub const SCHED_LC: u32 = 4;
pub const SCHED_WLC: u32 = 5;
pub const SCHED_SED: u32 = 6;
pub const SCHED_NQ: u32 = 7;
pub const SCHED_FO: u32 = 8;
pub const SCHED_OVF: u32 = 9;

/// The connection counts of one backend, `BACKEND_LOAD[id]`, as `ipvsadm -Ln` shows them:
/// the program adds and moves them as it creates flows and sees their state change; the
/// daemon's sweep removes what expired or was evicted. Signed: a count the two race on can
/// be one off for a moment, never read below 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendLoad {
    /// ActiveConn: TCP connections in ESTABLISHED.
    pub active: i32,
    /// InActConn: every other state, UDP flows included.
    pub inactive: i32,
    /// `LOAD_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<BackendLoad>() == 16);

/// Slot 0 of `SYN_GUARD`: how many flows wait for the client's ACK (SYN_RECV), and how many
/// may. A SYN that finds the table at its share of embryonic flows is forwarded without an
/// entry, by a hash of the client's address and port (its network, in a persistent service),
/// and the client's ACK is scheduled by the same hash (see `docs/architecture.md`, "SYN
/// floods").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynGuard {
    /// Flows in SYN_RECV (the program counts; the daemon's sweep corrects).
    pub embryonic: i32,
    /// The most flows in SYN_RECV the table may hold (written by the daemon).
    pub cap: u32,
    /// `CLOCK` seconds until which unknown flows' ACKs are scheduled by the flood hash: a
    /// SYN_RECV timeout past the last SYN forwarded without an entry.
    pub flood_until: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SynGuard>() == 16);

/// `NAT_ON`'s bits.
pub const NAT_ON_ANY: u32 = 1;
pub const NAT_ON_SHARED: u32 = 2;

/// The most interfaces `TX_PORTS` holds.
pub const TX_PORTS_MAX: u32 = 64;

/// Slots of `NEIGH_WANTED` (a power of two).
pub const NEIGH_WANTED_SLOTS: u32 = 64;

/// A `NEIGH_WANTED` slot: a next hop the FIB named for a NAT reply, which had no neighbour
/// entry. The program drops such a reply (translated, the stack would take it for a martian;
/// untranslated, it would show the client the real server); the daemon asks the kernel to
/// resolve the next hop (`NTF_USE`), so that the client's retransmission gets through. An
/// outside router's entry is otherwise made only by the node's own traffic: after a
/// failover the new master may have none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighWant {
    /// The next hop (IPv4: word 0).
    pub addr: [u32; 4],
    pub ifindex: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// `CLOCK` second of the last drop, written last by the program (0: never).
    pub seen: u32,
    /// The daemon's: the `seen` it last asked for.
    pub asked: u32,
}
const _: () = assert!(core::mem::size_of::<NeighWant>() == 32);

/// Connection states, IPVS's TCP numbering (`IP_VS_TCP_S_*`), and one for UDP. The program
/// follows IPVS's input-only table, the one IPVS uses for direct routing, where only the
/// client's packets pass the balancer.
pub mod conn_state {
    /// Not a connection: a persistence template, a fragments flow.
    pub const NONE: u32 = 0;
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT: u32 = 4;
    pub const TIME_WAIT: u32 = 5;
    pub const CLOSE: u32 = 6;
    pub const CLOSE_WAIT: u32 = 7;
    pub const LAST_ACK: u32 = 8;
    pub const LISTEN: u32 = 9;
    pub const SYNACK: u32 = 10;
    /// A UDP flow (IPVS's `UDP_S_NORMAL`).
    pub const UDP: u32 = 11;
    pub const COUNT: u32 = 12;

    /// TCP events, as IPVS's `tcp_state_idx` orders them: a RST wins, then SYN, FIN, ACK.
    pub const EV_SYN: u32 = 0;
    pub const EV_FIN: u32 = 1;
    pub const EV_ACK: u32 = 2;
    pub const EV_RST: u32 = 3;
    /// A TCP segment with none of those flags: IPVS moves the connection to CLOSE.
    pub const EV_NONE: u32 = 4;
    /// Not a TCP segment whose flags the program read (a UDP datagram, a fragment): no move.
    pub const EV_IGNORE: u32 = 5;

    /// The event of a TCP segment's flags byte.
    pub const fn tcp_event(flags: u8) -> u32 {
        if flags & 0x04 != 0 {
            EV_RST
        } else if flags & 0x02 != 0 {
            EV_SYN
        } else if flags & 0x01 != 0 {
            EV_FIN
        } else if flags & 0x10 != 0 {
            EV_ACK
        } else {
            EV_NONE
        }
    }

    // IPVS's input-only rows (net/netfilter/ipvs/ip_vs_proto_tcp.c), one 4-bit next state per
    // current state, state `s` at bits 4s..4s+4:
    //          sNO  sES  sSS  sSR  sFW  sTW  sCL  sCW  sLA  sLI  sSA
    // syn      sSR  sES  sES  sSR  sSR  sSR  sSR  sSR  sSR  sSR  sSR
    // fin      sCL  sFW  sSS  sTW  sFW  sTW  sCL  sCW  sLA  sLI  sTW
    // ack      sES  sES  sSS  sES  sFW  sTW  sCL  sCW  sCL  sLI  sES
    // rst      sCL  sCL  sCL  sSR  sCL  sCL  sCL  sCL  sLA  sLI  sCL
    const fn row(next: [u32; 11]) -> u64 {
        let mut r = 0u64;
        let mut s = 0;
        while s < 11 {
            r |= (next[s] as u64) << (4 * s);
            s += 1;
        }
        r
    }
    const NO: u32 = NONE;
    const ES: u32 = ESTABLISHED;
    const SS: u32 = SYN_SENT;
    const SR: u32 = SYN_RECV;
    const FW: u32 = FIN_WAIT;
    const TW: u32 = TIME_WAIT;
    const CL: u32 = CLOSE;
    const CW: u32 = CLOSE_WAIT;
    const LA: u32 = LAST_ACK;
    const LI: u32 = LISTEN;
    const _SA: u32 = SYNACK;
    pub const ROW_SYN: u64 = row([SR, ES, ES, SR, SR, SR, SR, SR, SR, SR, SR]);
    pub const ROW_FIN: u64 = row([CL, FW, SS, TW, FW, TW, CL, CW, LA, LI, TW]);
    pub const ROW_ACK: u64 = row([ES, ES, SS, ES, FW, TW, CL, CW, CL, LI, ES]);
    pub const ROW_RST: u64 = row([CL, CL, CL, SR, CL, CL, CL, CL, LA, LI, CL]);
    const _: () = assert!(NO == 0);

    /// The state a TCP connection in `state` moves to on `event`. UDP flows and
    /// `EV_IGNORE` stay where they are; a segment without any of the four flags closes the
    /// connection, as in IPVS (`tcp_state_idx` < 0 leaves `new_state` at CLOSE).
    #[inline(always)]
    pub const fn tcp_next(state: u32, event: u32) -> u32 {
        if state > SYNACK {
            return state;
        }
        let row = match event {
            EV_SYN => ROW_SYN,
            EV_FIN => ROW_FIN,
            EV_ACK => ROW_ACK,
            EV_RST => ROW_RST,
            EV_NONE => return CLOSE,
            _ => return state,
        };
        ((row >> (4 * state)) & 0xf) as u32
    }

    /// IPVS's ActiveConn: an established TCP connection.
    #[inline(always)]
    pub const fn is_active(state: u32) -> bool {
        state == ESTABLISHED
    }

    /// Counted at all (ActiveConn or InActConn): every state but `NONE`.
    #[inline(always)]
    pub const fn is_counted(state: u32) -> bool {
        state != NONE && state < COUNT
    }

    /// IPVS's defaults (`tcp_timeouts`, `udp_timeouts`), seconds; `NONE` (a fragments flow)
    /// takes its service's idle timeout, as ESTABLISHED and UDP may.
    pub const DEFAULT_TIMEOUTS: [u32; COUNT as usize] =
        [2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 300];

    pub const fn name(state: u32) -> &'static str {
        match state {
            NONE => "NONE",
            ESTABLISHED => "ESTABLISHED",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            FIN_WAIT => "FIN_WAIT",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            LISTEN => "LISTEN",
            SYNACK => "SYNACK",
            UDP => "UDP",
            _ => "unknown",
        }
    }
}

/// Value of the `SERVICE_INFO` array, indexed by service id. A slot whose service is gone
/// is zeroed (not active).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Its own id: the index into `RR_STATE`, `SERVICE_STATS`, persistence keys.
    pub id: u32,
    /// `SVC_F_*` bits.
    pub flags: u32,
    /// `SCHED_*`.
    pub sched: u32,
    /// Slots of this service's ring in use, from `ring_off` on; 0 means no live backend.
    /// `sh` and `mh` hash modulo it, rr and wrr step through it.
    pub ring_len: u32,
    /// Where the service's ring starts in `RINGS`. The daemon moves a ring by writing the
    /// new region whole, then changing `ring_len` and `ring_off` in separate writes, so a
    /// reader never pairs one ring's offset with another's length.
    pub ring_off: u32,
    pub _pad: u32,
    /// A flow idle this long (in `CLOCK` seconds) is forgotten and its next packet scheduled
    /// again (IPVS's per-protocol connection timeouts). 0 disables.
    pub idle_timeout_s: u32,
    /// IPVS `-p`: a client (masked by `persist_mask`) sticks to its backend for this long
    /// after its last new connection. 0 disables persistence.
    pub persist_timeout_s: u32,
    /// IPVS `-M`: the granularity of persistence, applied to the source address.
    pub persist_mask: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 48);

/// The backend is overloaded (IPVS's `IP_VS_DEST_F_OVERLOAD`): its connections reached its
/// `u_threshold` and have not yet fallen below its `l_threshold`. Kept in
/// `BackendLoad::flags` by the program.
pub const LOAD_F_OVERLOAD: u32 = 1 << 0;

/// The backend slot holds a backend.
pub const BACKEND_F_PRESENT: u32 = 1 << 0;
/// Weight 0: existing flows stay, no new ones (not even persistent clients).
pub const BACKEND_F_DRAINING: u32 = 1 << 1;
/// Reached through a tunnel (IPVS's TUN: `BackendValue::tun_*`), not by its MAC.
pub const BACKEND_F_TUN: u32 = 1 << 2;
/// Reached by NAT (IPVS's masquerading): the packet's destination becomes
/// `BackendValue::daddr` and `nat_port`, its replies' source the VIP and port again.
pub const BACKEND_F_NAT: u32 = 1 << 3;

/// `BackendValue::tun_kind`: how a TUN backend's packets are wrapped. IPIP means IPv4 in
/// IPv4 or IPv6 in IPv6 (protocol 4 or 41), as IPVS's `ipip` does for either family.
pub const TUN_IPIP: u8 = 0;
/// GUE (RFC draft-ietf-intarea-gue, variant 0, no options): UDP to `tun_port`, a 4-byte
/// header naming the inner protocol. What IPVS's `gue` writes, UDP checksum 0.
pub const TUN_GUE: u8 = 1;
/// GRE (RFC 2784): a 4-byte header, no key, no checksum, no sequence; IPVS's `gre`.
pub const TUN_GRE: u8 = 2;
/// Outer header bytes of each kind after the outer IP header (UDP 8 + GUE 4; GRE 4).
pub const TUN_GUE_HLEN: usize = 12;
pub const TUN_GRE_HLEN: usize = 4;

/// Value of the `BACKENDS` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendValue {
    pub mac: [u8; 6],
    /// The configured weight (IPVS's range, 0..=65535): what `wlc`, `sed`, `nq`, `fo` and
    /// `ovf` weigh the connection counts with.
    pub weight: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Bumped each time the slot is given to another backend, so that flows pinned to the
    /// previous occupant are rescheduled rather than silently moved.
    pub generation: u32,
    /// keepalived's `uthreshold` (IPVS `-x`): at this many connections the backend takes no
    /// new one until they fall below `l_threshold`. 0: no limit.
    pub u_threshold: u32,
    /// keepalived's `lthreshold` (IPVS `-y`); 0: three quarters of `u_threshold`.
    pub l_threshold: u32,
    /// With `BACKEND_F_TUN` or `BACKEND_F_NAT`: the real server's address, in the family of
    /// the service (no mixed families): TUN's outer destination, NAT's new destination.
    pub daddr: [u32; 4],
    /// With `BACKEND_F_TUN`: the outer header's source (an address of this node).
    pub tun_saddr: [u32; 4],
    /// `TUN_*`.
    pub tun_kind: u8,
    /// The outer TTL (hop limit).
    pub tun_ttl: u8,
    /// `TUN_GUE`: the UDP destination port, network byte order.
    pub tun_port: u16,
    /// With `BACKEND_F_NAT`: the real server's port, network byte order (0: each packet's
    /// own, a `virtual_server_group`'s real server written without a port).
    pub nat_port: u16,
    pub _pad: u16,
}
// One cache line: what a packet reads of its backend (flags, generation, MAC) stays in one.
const _: () = assert!(core::mem::size_of::<BackendValue>() == 64);
// The program copies `mac` in 16-bit words.
const _: () = assert!(core::mem::offset_of!(BackendValue, mac) % 2 == 0);

/// Value of `VMAC_PARENTS`: the interface a virtual MAC interface's MLD messages leave
/// through instead, and its MAC (their new source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VmacParent {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<VmacParent>() == 12);

/// Slots of `VMAC_STATS`.
pub mod vmac_stat {
    /// MLD messages moved to the parent interface.
    pub const MOVED: u32 = 0;
    /// MLD messages left as they were: of an interface without a `VMAC_PARENTS` entry, or
    /// whose source could not be rewritten.
    pub const UNMOVED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Value of `NAT_SOURCES4`/`NAT_SOURCES6`: what a NAT real server's replies are rewritten
/// to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatSource {
    /// The VIP (word 0 for IPv4) and the port of the service key the replies come from,
    /// network byte order.
    pub vip: [u32; 4],
    pub vport: u16,
    /// 1: more than one service key (two services, or two entries of a group) sends to
    /// this real server's address and port, so its replies are told apart by their flow
    /// (`NAT_REV4`/`NAT_REV6`, written per flow).
    pub shared: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<NatSource>() == 20);

/// Key of `FLOWS4`. Fragments use ports 0 (see "Fragments").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);

/// Key of `FLOWS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey6 {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);

/// Value of `FLOWS4`/`FLOWS6`, and of `PERSIST4`/`PERSIST6` (a persistence template is a
/// flow from one client network to one service).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend: u32,
    pub generation: u32,
    /// The service the flow belongs to: lets a known flow skip the service lookup.
    pub service: u32,
    /// `CLOCK` (seconds) of the last packet; rewritten only when the second changes, so a
    /// busy flow does not dirty its cache line on every packet.
    pub last_seen: u32,
    /// The connection's state (`conn_state`): its timeout, and whether it counts as an
    /// active or an inactive connection of its backend. 0 in a persistence template.
    pub state: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 20);

/// Value of `CLOCK`'s one element: what the program reads once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Clock {
    /// Seconds of CLOCK_MONOTONIC (less the time no daemon ran: the clock goes on across a
    /// restart from where it stood), written by the daemon every second: flow idle times and
    /// persistence are measured on it.
    pub now: u32,
    /// Bumped by the daemon at the end of every update that wrote `SERVICE_INFO` or
    /// `BACKENDS` (once an update, not once a write: a start writes 100,000 backends). A
    /// flow-cache slot filled under the current epoch saw the service and backend as the
    /// last update left them; while an update is being written, a cached flow may still go
    /// by the state before it, as a packet racing any one write would.
    pub epoch: u32,
}
const _: () = assert!(core::mem::size_of::<Clock>() == 8);

/// A slot of `FLOW_CACHE4`, a per-CPU direct-mapped cache in front of `FLOWS4`.
///
/// A hit under the current `Clock::epoch` whose flow was seen this second goes out at once
/// with the cached MAC: nothing it was checked against (service active, backend present,
/// same generation, its MAC) has been written since, and a flow seen this second is not
/// idle. Any other hit is validated like a table entry. The LRU stays the source of truth
/// and gets the flow's timestamp once a second.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCache4 {
    pub key: FlowKey4,
    pub value: FlowValue,
    /// `Clock::epoch` when the slot was filled.
    pub epoch: u32,
    /// The backend's MAC when the slot was filled (at an even offset: the program copies it
    /// in 16-bit words).
    pub mac: [u8; 6],
    /// How the backend is reached: its `BACKEND_F_TUN` or `BACKEND_F_NAT` bit (`mac` then
    /// unused), or 0 (direct routing, by `mac`).
    pub via: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowCache4>() == 48);
const _: () = assert!(core::mem::offset_of!(FlowCache4, mac) % 2 == 0);

/// A slot of `FLOW_CACHE6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowCache6 {
    pub key: FlowKey6,
    pub value: FlowValue,
    pub epoch: u32,
    pub mac: [u8; 6],
    pub via: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowCache6>() == 72);
const _: () = assert!(core::mem::offset_of!(FlowCache6, mac) % 2 == 0);

/// Key of `PERSIST4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey4 {
    /// Source address AND `persist_mask`.
    pub addr: u32,
    pub service: u32,
}
const _: () = assert!(core::mem::size_of::<PersistKey4>() == 8);

/// Key of `PERSIST6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey6 {
    pub addr: [u32; 4],
    pub service: u32,
}
const _: () = assert!(core::mem::size_of::<PersistKey6>() == 20);

/// Kinds of connection-sync event (`SyncEvent4::kind`), with [`SYNC_EV_F_REFRESH`] or'd in
/// for a refresh: a flow the program created, or a persistence template it wrote.
pub const SYNC_EV_FLOW: u32 = 1;
pub const SYNC_EV_PERSIST: u32 = 2;
/// The event refreshes an entry (its `last_seen` moved to another refresh window, or the
/// LRU had dropped it) rather than creating it. The entry is sent whole either way.
pub const SYNC_EV_F_REFRESH: u32 = 1 << 8;
/// Mask of the kind proper.
pub const SYNC_EV_KIND_MASK: u32 = 0xff;

/// A connection-sync event for IPv4, written to `SYNC_EVENTS` when the program creates or
/// refreshes a flow or a persistence template of a service (when `SYNC_ENABLED`). The
/// daemon of the VRRP master sends it to its peer (see `docs/architecture.md`, "Connection
/// sync").
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncEvent4 {
    /// `SYNC_EV_*`, maybe with `SYNC_EV_F_REFRESH`.
    pub kind: u32,
    pub value: FlowValue,
    /// A flow: the `FlowKey4` as four words. A template: word 0 is the masked client
    /// address (the service is `value.service`), the others are 0.
    pub key: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<SyncEvent4>() == 40);

/// A connection-sync event for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncEvent6 {
    pub kind: u32,
    pub value: FlowValue,
    /// A flow: the `FlowKey6` as ten words. A template: words 0..4 are the masked client
    /// address, the others are 0.
    pub key: [u32; 10],
}
const _: () = assert!(core::mem::size_of::<SyncEvent6>() == 64);

/// Slots of `SYNC_STATS` (per CPU, u64).
pub mod sync_stat {
    /// Events the ring had no room for (the daemon did not drain it fast enough).
    pub const LOST: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// Per-CPU traffic counters of one service or one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);

/// Per-CPU counters of one reason (see [`reason`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReasonCounters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<ReasonCounters>() == 16);

/// Why the program returned what it returned: the index into `REASON_STATS`. Each reason
/// has exactly one verdict, given by [`reason::verdict`].
pub mod reason {
    /// XDP verdicts, as in `enum xdp_action`.
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;

    /// TX: packet of a known flow.
    pub const FWD_ESTABLISHED: u32 = 0;
    /// TX: first packet of a flow, a backend was chosen.
    pub const FWD_NEW_FLOW: u32 = 1;
    /// TX: an IP fragment (first, middle or last).
    pub const FWD_FRAGMENT: u32 = 2;
    /// TX: ICMP "fragmentation needed" / ICMPv6 "packet too big" about a known flow.
    pub const FWD_ICMP: u32 = 3;
    /// PASS: not IPv4 or IPv6 (ARP, LLDP, ...).
    pub const PASS_NOT_IP: u32 = 4;
    /// PASS: no service for this destination (the node's own traffic, among others).
    pub const PASS_NO_SERVICE: u32 = 5;
    /// PASS: the service exists but this node is not active for its VIP (VRRP backup).
    pub const PASS_INACTIVE: u32 = 6;
    /// PASS: VRRP.
    pub const PASS_VRRP: u32 = 7;
    /// PASS: ICMP or ICMPv6 other than the forwarded errors (echo, neighbour discovery...).
    pub const PASS_ICMP: u32 = 8;
    /// PASS: an ICMP error about a flow this node does not know.
    pub const PASS_ICMP_NO_FLOW: u32 = 9;
    /// PASS: neither TCP, UDP nor ICMP.
    pub const PASS_OTHER_PROTO: u32 = 10;
    /// PASS: valid but beyond what the program parses (a second VLAN tag, more IPv6
    /// extension headers than it walks, a jumbogram, every fragment of an IPv6 datagram
    /// whose fragmentable part starts with an extension header).
    pub const PASS_UNSUPPORTED: u32 = 11;
    /// PASS: the service has no live backend (the stack answers, like IPVS with an empty
    /// service).
    pub const PASS_NO_BACKEND: u32 = 12;
    /// DROP: frame shorter than its Ethernet or VLAN header.
    pub const DROP_MALFORMED_ETH: u32 = 13;
    /// DROP: IPv4 header truncated, IHL < 5, total length beyond the frame or below IHL.
    pub const DROP_MALFORMED_IPV4: u32 = 14;
    /// DROP: IPv6 header or extension header truncated, payload length beyond the frame.
    pub const DROP_MALFORMED_IPV6: u32 = 15;
    /// DROP: TCP or UDP header truncated, a TCP data offset below 5 words or past the
    /// segment, a UDP length below 8 (IPv4; IPv6 allows 0) or past the payload (checked
    /// before the service lookup: the stack would drop such a packet too).
    pub const DROP_MALFORMED_L4: u32 = 16;
    /// DROP: ICMP header truncated, or a frag-needed/packet-too-big error whose quoted
    /// packet is truncated or inconsistent (checked before the flow lookup: the stack would
    /// drop such a packet too).
    pub const DROP_MALFORMED_ICMP: u32 = 17;
    /// PASS: the maps are inconsistent (a ring slot names an empty backend slot); the
    /// program logs it, the daemon repairs it.
    pub const PASS_MAP_ERROR: u32 = 18;
    /// TX: a TCP packet other than an opening SYN, of a flow the table did not know, was
    /// scheduled as a new flow (the service has `sloppy_tcp`: a connection that a failover
    /// or an expiry left without its entry).
    pub const FWD_NEW_FLOW_MIDSTREAM: u32 = 19;
    /// PASS: a TCP packet other than an opening SYN, of a flow the table does not know, in
    /// a service without `sloppy_tcp` (IPVS schedules only on SYN; the stack answers it),
    /// and a RST of such a flow in any service (IPVS never schedules one).
    pub const PASS_NOT_SYN: u32 = 20;
    /// DROP: an IPv4 header whose checksum is wrong (the stack would drop it before IPVS
    /// saw it; XDP sees it first).
    pub const DROP_BAD_IPV4_CSUM: u32 = 21;
    /// PASS: native mode (`lb_native`): the driver could not say whether it took a VLAN tag
    /// off the frame (its RX metadata call failed), or the tag it took off could not be put
    /// back into the frame to be sent. A frame whose VLAN is unknown is never forwarded; the
    /// stack, which holds any such tag, gets it.
    pub const PASS_VLAN_UNKNOWN: u32 = 22;
    /// TX: an opening SYN that found the table at its share of embryonic flows
    /// (`SynGuard::cap`): forwarded by a hash of the client's address and port, no entry
    /// written (a SYN flood cannot push established flows out of the table).
    pub const FWD_SYN_UNTRACKED: u32 = 23;
    /// TX: a packet for a TUN backend that would not fit the path once wrapped, with DF
    /// set (IPv4) or IPv6: answered in its place with ICMP "fragmentation needed" (ICMPv6
    /// "packet too big") from the VIP, quoting it, with the MTU left inside the tunnel.
    pub const TX_TOO_BIG: u32 = 24;
    /// DROP: the same without DF (IPv4: IPVS would fragment the outer packet, which XDP
    /// cannot), or an ICMP error that itself would not fit (never answered with one).
    pub const DROP_TOO_BIG: u32 = 25;
    /// DROP: a TUN backend's next hop has no neighbour entry (the kernel's FIB says
    /// NO_NEIGH; the FIB lookup resolves nothing, the node's own traffic to the real servers,
    /// its health checks, does). Passed to the stack, the packet would reach the VIP this
    /// node owns, which answers a SYN with a reset.
    pub const DROP_NO_NEIGH: u32 = 26;
    /// DROP: the FIB has no usable route to a TUN backend (unreachable, blackhole,
    /// forwarding disabled on the interface), or the frame had no room for the header.
    pub const DROP_NO_ROUTE: u32 = 27;
    /// TX: a real server's reply in a NAT flow, its source rewritten to the VIP and port,
    /// sent towards the client.
    pub const FWD_NAT_REPLY: u32 = 28;
    /// DROP: a packet of a NAT flow the program cannot rewrite (a fragment, whose later
    /// pieces carry no port; an IPv6 packet with extension headers before TCP or UDP).
    pub const DROP_NAT_UNSUPPORTED: u32 = 29;
    /// PASS: a NAT client's packet rewritten for the stack to forward, its next hop having
    /// no neighbour entry yet (the stack resolves it), or a reply whose TTL runs out, as it
    /// came (the stack answers "time exceeded").
    pub const PASS_NAT_TO_STACK: u32 = 30;

    pub const COUNT: u32 = 31;

    /// Or'd into a forwarding reason by the program when the frame leaves through another
    /// interface than it came in on (a TUN backend whose route says so): the verdict is
    /// then XDP_REDIRECT. Never stored: the counters take the reason without it.
    pub const VIA_REDIRECT: u32 = 1 << 8;
    pub const XDP_REDIRECT: u32 = 4;

    /// The verdict that goes with a reason.
    pub const fn verdict(reason: u32) -> u32 {
        if reason & VIA_REDIRECT != 0 {
            return XDP_REDIRECT;
        }
        match reason {
            FWD_ESTABLISHED
            | FWD_NEW_FLOW
            | FWD_FRAGMENT
            | FWD_ICMP
            | FWD_NEW_FLOW_MIDSTREAM
            | FWD_SYN_UNTRACKED
            | TX_TOO_BIG
            | FWD_NAT_REPLY => XDP_TX,
            DROP_MALFORMED_ETH | DROP_MALFORMED_IPV4 | DROP_MALFORMED_IPV6 | DROP_MALFORMED_L4
            | DROP_MALFORMED_ICMP | DROP_BAD_IPV4_CSUM | DROP_TOO_BIG | DROP_NO_NEIGH
            | DROP_NO_ROUTE | DROP_NAT_UNSUPPORTED => XDP_DROP,
            _ => XDP_PASS,
        }
    }

    /// A stable name for metrics and status output.
    pub const fn name(reason: u32) -> &'static str {
        match reason {
            FWD_ESTABLISHED => "fwd_established",
            FWD_NEW_FLOW => "fwd_new_flow",
            FWD_FRAGMENT => "fwd_fragment",
            FWD_ICMP => "fwd_icmp",
            PASS_NOT_IP => "pass_not_ip",
            PASS_NO_SERVICE => "pass_no_service",
            PASS_INACTIVE => "pass_inactive",
            PASS_VRRP => "pass_vrrp",
            PASS_ICMP => "pass_icmp",
            PASS_ICMP_NO_FLOW => "pass_icmp_no_flow",
            PASS_OTHER_PROTO => "pass_other_proto",
            PASS_UNSUPPORTED => "pass_unsupported",
            PASS_NO_BACKEND => "pass_no_backend",
            DROP_MALFORMED_ETH => "drop_malformed_eth",
            DROP_MALFORMED_IPV4 => "drop_malformed_ipv4",
            DROP_MALFORMED_IPV6 => "drop_malformed_ipv6",
            DROP_MALFORMED_L4 => "drop_malformed_l4",
            DROP_MALFORMED_ICMP => "drop_malformed_icmp",
            PASS_MAP_ERROR => "pass_map_error",
            FWD_NEW_FLOW_MIDSTREAM => "fwd_new_flow_midstream",
            PASS_NOT_SYN => "pass_not_syn",
            DROP_BAD_IPV4_CSUM => "drop_bad_ipv4_csum",
            PASS_VLAN_UNKNOWN => "pass_vlan_unknown",
            FWD_SYN_UNTRACKED => "fwd_syn_untracked",
            TX_TOO_BIG => "tx_too_big",
            DROP_TOO_BIG => "drop_too_big",
            DROP_NO_NEIGH => "drop_no_neigh",
            DROP_NO_ROUTE => "drop_no_route",
            FWD_NAT_REPLY => "fwd_nat_reply",
            DROP_NAT_UNSUPPORTED => "drop_nat_unsupported",
            PASS_NAT_TO_STACK => "pass_nat_to_stack",
            _ => "unknown",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), made of integers and byte arrays only, with explicit
    // padding, so every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey4 {}
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for ServiceRef {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for PersistKey4 {}
    unsafe impl aya::Pod for Clock {}
    unsafe impl aya::Pod for FlowCache4 {}
    unsafe impl aya::Pod for FlowCache6 {}
    unsafe impl aya::Pod for PersistKey6 {}
    unsafe impl aya::Pod for TrafficCounters {}
    unsafe impl aya::Pod for ReasonCounters {}
    unsafe impl aya::Pod for SyncEvent4 {}
    unsafe impl aya::Pod for SyncEvent6 {}
    unsafe impl aya::Pod for BackendLoad {}
    unsafe impl aya::Pod for SynGuard {}
    unsafe impl aya::Pod for DecapKey {}
    unsafe impl aya::Pod for NatSource {}
    unsafe impl aya::Pod for VmacParent {}
}

/// An IPv4 address as the kernel side stores it (network byte order in memory).
pub const fn addr_v4(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// An IPv6 address as the kernel side stores it (network byte order in memory).
pub const fn addr_v6(o: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The sh/mh hash of a source address (as [`addr_v4`]/[`addr_v6`] store it: an IPv4
/// address has words 1..3 zero) and port (the packet's bytes as the program loads them,
/// 0 unless the service hashes ports): the ring slot a new flow takes is this modulo the
/// ring's length. It must be cheap and well mixed, and the same on every node: murmur3's
/// finaliser over the address words. Here because user space asks it too (`lb-daemon
/// which`).
#[inline(always)]
pub fn source_hash(src: &[u32; 4], port: u32) -> u32 {
    let mut h = src[0] ^ src[1].rotate_left(7) ^ src[2].rotate_left(14) ^ src[3].rotate_left(21);
    h ^= port.wrapping_mul(0x9e37_79b1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Incremental updates of an Internet checksum (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`)
/// when a NAT rewrites an address or a port. Words are taken as they lie in memory (the
/// ones'-complement sum is the same in either byte order, RFC 1071 §2(B)), so the program
/// passes the raw fields.
pub mod csum {
    #[inline(always)]
    fn fold(mut sum: u32) -> u16 {
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// `check` after a 16-bit field changed from `old` to `new`.
    #[inline(always)]
    pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
        !fold((!check) as u32 + (!old) as u32 + new as u32)
    }

    /// `check` after a 32-bit field (an IPv4 address, an IPv6 address word) changed.
    #[inline(always)]
    pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
        let [a, b, c, d] = old.to_ne_bytes();
        let [e, f, g, h] = new.to_ne_bytes();
        let sum = (!check) as u32
            + (!u16::from_ne_bytes([a, b])) as u32
            + (!u16::from_ne_bytes([c, d])) as u32
            + u16::from_ne_bytes([e, f]) as u32
            + u16::from_ne_bytes([g, h]) as u32;
        !fold(sum)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The checksum of `words` from scratch (RFC 1071).
        fn full(words: &[u16]) -> u16 {
            !fold(words.iter().map(|w| *w as u32).sum())
        }

        #[test]
        fn incremental_equals_recomputed() {
            // An IPv4 header (RFC 1071's example bytes aside, a real one: 192.0.2.1 ->
            // 192.0.2.100, TCP, TTL 64), its checksum field zeroed in `words`.
            let mut words = [
                0x4500u16.to_be(),
                0x003cu16.to_be(),
                0x1c46u16.to_be(),
                0x4000u16.to_be(),
                0x4006u16.to_be(),
                0,
                0xc000u16.to_be(),
                0x0201u16.to_be(),
                0xc000u16.to_be(),
                0x0264u16.to_be(),
            ];
            let check = full(&words);
            // The destination becomes 203.0.113.11.
            let old = u32::from_ne_bytes([192, 0, 2, 100]);
            let new = u32::from_ne_bytes([203, 0, 113, 11]);
            let updated = replace32(check, old, new);
            let [a, b, c, d] = new.to_ne_bytes();
            words[8] = u16::from_ne_bytes([a, b]);
            words[9] = u16::from_ne_bytes([c, d]);
            assert_eq!(updated, full(&words));
            // A port, in a TCP-like checksum over arbitrary words.
            let mut seg = [0x1234u16, 0x0050u16.to_be(), 0xffff, 0, 0x8001];
            let check = full(&seg);
            let updated = replace16(check, seg[1], 0x1f90u16.to_be());
            seg[1] = 0x1f90u16.to_be();
            assert_eq!(updated, full(&seg));
            // Changing a field to itself changes nothing (but -0 and +0: RFC 1624's point).
            for c in [0x0001u16, 0x1234, 0xfffe] {
                assert_eq!(replace16(c, 0x5555, 0x5555), c);
            }
        }

        #[test]
        fn every_single_word_change_matches_a_recomputation() {
            // Exhaustive over the changed word's values for a few headers: the update never
            // disagrees with a recomputation (the one representation RFC 1624 fixes).
            for base in [
                [0u16, 0, 0],
                [0xffff, 0xffff, 0xffff],
                [0x1234, 0xabcd, 0x0f0f],
            ] {
                let check = full(&base);
                for new in 0..=u16::MAX {
                    let mut w = base;
                    w[1] = new;
                    let got = replace16(check, base[1], new);
                    let want = full(&w);
                    // 0x0000 and 0xffff are the same number in ones' complement.
                    assert!(
                        got == want || (got == 0xffff && want == 0) || (got == 0 && want == 0xffff),
                        "{base:?} -> {new:#x}: {got:#x} vs {want:#x}"
                    );
                }
            }
        }
    }
}
