//! Service lookup, the connection table, persistence and the choice of a backend.
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{reason::*, *};

use crate::{
    forward::rewrite_macs,
    maps::{BACKENDS, FLOWS, PERSIST, RINGS, RING_SIZE, RR_STATE, SERVICES},
    parse::{self, L3, ETH_P_IP, ETH_P_IPV6},
    stats::{count_forward, may_log},
};

const NS_PER_S: u64 = 1_000_000_000;
/// A flow's `last_seen_ns` is rewritten only when it is older than this, so that a busy
/// flow does not write its cache line on every packet. Idle timeouts are seconds, so a
/// second of slack is invisible.
const REFRESH_NS: u64 = NS_PER_S;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PKT_TOOBIG: u8 = 2;

/// The whole decision for one frame. `Ok` and `Err` both carry the reason; `Err` is what
/// `?` uses to say "decided early".
#[inline(always)]
pub fn process(ctx: &XdpContext) -> Result<u32, u32> {
    let (ethertype, l3_off) = parse::ethernet(ctx)?;
    let l3 = match ethertype {
        ETH_P_IP => parse::ipv4(ctx, l3_off)?,
        ETH_P_IPV6 => parse::ipv6(ctx, l3_off)?,
        _ => return Err(PASS_NOT_IP),
    };
    match l3.proto {
        PROTO_TCP | PROTO_UDP => {}
        PROTO_ICMP if l3.family == FAMILY_V4 => return icmp(ctx, &l3),
        PROTO_ICMPV6 if l3.family == FAMILY_V6 => return icmp(ctx, &l3),
        PROTO_VRRP => return Err(PASS_VRRP),
        _ => return Err(PASS_OTHER_PROTO),
    }
    let mut flow = FlowKey {
        src: l3.src,
        dst: l3.dst,
        sport: 0,
        dport: 0,
        proto: l3.proto,
        family: l3.family,
        _pad: [0; 2],
    };
    if l3.fragment {
        // Every fragment of a datagram, the first included, is balanced by (client, VIP,
        // protocol) with ports 0: later fragments carry no ports, and all of them must
        // reach the backend that reassembles the datagram.
        let svc = fragment_service(&l3)?;
        return balance(ctx, svc, &flow, FWD_FRAGMENT, FWD_FRAGMENT);
    }
    let (sport, dport) = parse::ports(ctx, &l3)?;
    flow.sport = sport;
    flow.dport = dport;
    let svc = service(&l3, dport)?;
    balance(ctx, svc, &flow, FWD_ESTABLISHED, FWD_NEW_FLOW)
}

/// The service for (VIP, port, protocol), else the VIP's all-ports service.
#[inline(always)]
fn service(l3: &L3, port: u16) -> Result<&'static ServiceValue, u32> {
    let mut key = ServiceKey {
        addr: l3.dst,
        port,
        proto: l3.proto,
        family: l3.family,
    };
    // SAFETY: the daemon replaces values whole (map update), never in place.
    if let Some(svc) = unsafe { SERVICES.get(&key) } {
        return Ok(svc);
    }
    key.port = 0;
    match unsafe { SERVICES.get(&key) } {
        Some(svc) if svc.flags & SVC_F_FRAG_ONLY == 0 => Ok(svc),
        _ => Err(PASS_NO_SERVICE),
    }
}

/// The service that receives the VIP's fragments: its port-0 entry, either a real all-ports
/// service or one the daemon added only for fragments.
#[inline(always)]
fn fragment_service(l3: &L3) -> Result<&'static ServiceValue, u32> {
    let key = ServiceKey {
        addr: l3.dst,
        port: 0,
        proto: l3.proto,
        family: l3.family,
    };
    // SAFETY: as in `service`.
    unsafe { SERVICES.get(&key) }.ok_or(PASS_NO_SERVICE)
}

/// A backend that may keep its flows: present, same occupant as when the flow was created.
#[inline(always)]
fn live_backend(id: u32, generation: u32) -> Option<&'static BackendValue> {
    let b = BACKENDS.get(id)?;
    (b.flags & BACKEND_F_PRESENT != 0 && b.generation == generation).then_some(b)
}

/// Forward along the flow's backend, or choose one for a new (or expired, or orphaned) flow.
#[inline(always)]
fn balance(
    ctx: &XdpContext,
    svc: &ServiceValue,
    flow: &FlowKey,
    established: u32,
    new: u32,
) -> Result<u32, u32> {
    if svc.flags & SVC_F_ACTIVE == 0 {
        return Err(PASS_INACTIVE);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = FLOWS.get_ptr_mut(flow) {
        // SAFETY: LRU values stay valid while the program runs (RCU); a concurrent update of
        // the same flow from another CPU can at worst make us read a mix of two choices for
        // one packet, both of them live backends.
        let e = unsafe { &mut *entry };
        let age = now.wrapping_sub(e.last_seen_ns);
        let idle = svc.idle_timeout_s as u64 * NS_PER_S;
        if idle == 0 || age <= idle {
            if let Some(b) = live_backend(e.backend, e.generation) {
                if age > REFRESH_NS {
                    e.last_seen_ns = now;
                }
                rewrite_macs(ctx, &b.mac)?;
                count_forward(ctx, svc.id, e.backend, false);
                return Ok(established);
            }
        }
    }
    let (id, b) = schedule(ctx, svc, flow, now)?;
    let value = FlowValue {
        backend: id,
        generation: b.generation,
        last_seen_ns: now,
    };
    if FLOWS.insert(flow, &value, 0).is_err() && may_log() {
        warn!(ctx, "flow table insert failed for service {}", svc.id);
    }
    rewrite_macs(ctx, &b.mac)?;
    count_forward(ctx, svc.id, id, true);
    Ok(new)
}

/// Pick a backend for a new flow: the client's persistence template if it has a live one,
/// else the scheduler's ring slot.
#[inline(always)]
fn schedule(
    ctx: &XdpContext,
    svc: &ServiceValue,
    flow: &FlowKey,
    now: u64,
) -> Result<(u32, &'static BackendValue), u32> {
    if svc.ring_len == 0 {
        return Err(PASS_NO_BACKEND);
    }
    let persist = svc.persist_timeout_s != 0;
    let pkey = PersistKey {
        addr: [
            flow.src[0] & svc.persist_mask[0],
            flow.src[1] & svc.persist_mask[1],
            flow.src[2] & svc.persist_mask[2],
            flow.src[3] & svc.persist_mask[3],
        ],
        service: svc.id,
    };
    if persist {
        if let Some(t) = PERSIST.get_ptr_mut(&pkey) {
            // SAFETY: as for flows.
            let t = unsafe { &mut *t };
            if now.wrapping_sub(t.last_seen_ns) <= svc.persist_timeout_s as u64 * NS_PER_S {
                if let Some(b) = live_backend(t.backend, t.generation) {
                    // A draining backend takes no new connection, persistent or not.
                    if b.flags & BACKEND_F_DRAINING == 0 {
                        t.last_seen_ns = now;
                        return Ok((t.backend, b));
                    }
                }
            }
        }
    }

    let ring_size = RING_SIZE.load();
    if svc.ring_len > ring_size {
        return Err(map_error(ctx, svc.id, svc.ring_len));
    }
    let slot = match svc.sched {
        SCHED_SH | SCHED_MH => {
            let port = if svc.flags & SVC_F_HASH_PORT != 0 {
                flow.sport as u32
            } else {
                0
            };
            source_hash(&flow.src, port) % svc.ring_len
        }
        _ => {
            let Some(pos) = RR_STATE.get_ptr_mut(svc.id) else {
                return Err(map_error(ctx, svc.id, svc.ring_len));
            };
            // SAFETY: per-CPU slot: no other CPU reads or writes it, so there is no
            // read-modify-write race to lose a step to.
            unsafe {
                let p = *pos % svc.ring_len;
                *pos = p + 1;
                p
            }
        }
    };
    let Some(&id) = RINGS.get(svc.id * ring_size + slot) else {
        return Err(map_error(ctx, svc.id, slot));
    };
    let Some(b) = BACKENDS.get(id) else {
        return Err(map_error(ctx, svc.id, slot));
    };
    if b.flags & BACKEND_F_PRESENT == 0 || b.flags & BACKEND_F_DRAINING != 0 {
        return Err(map_error(ctx, svc.id, slot));
    }
    if persist {
        let t = FlowValue {
            backend: id,
            generation: b.generation,
            last_seen_ns: now,
        };
        let _ = PERSIST.insert(&pkey, &t, 0);
    }
    Ok((id, b))
}

#[inline(never)]
fn map_error(ctx: &XdpContext, service: u32, slot: u32) -> u32 {
    if may_log() {
        warn!(ctx, "service {}: ring slot {} names no usable backend", service, slot);
    }
    PASS_MAP_ERROR
}

/// The sh/mh hash of a source address (and port). Only this program computes it, so it
/// needs to be cheap and well mixed, and the same on every node: murmur3's finaliser over
/// the address words.
#[inline(always)]
fn source_hash(src: &[u32; 4], port: u32) -> u32 {
    let mut h = src[0] ^ src[1].rotate_left(7) ^ src[2].rotate_left(14) ^ src[3].rotate_left(21);
    h ^= port.wrapping_mul(0x9e37_79b1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// ICMP: "fragmentation needed" and "packet too big" about a flow we balance go to that
/// flow's backend, whose path MTU it concerns. Everything else (echo, neighbour discovery,
/// other errors) goes to the stack.
#[inline(always)]
fn icmp(ctx: &XdpContext, l3: &L3) -> Result<u32, u32> {
    if l3.fragment {
        return Err(PASS_ICMP);
    }
    let (ty, code) = parse::icmp_type_code(ctx, l3)?;
    let ptb = if l3.family == FAMILY_V4 {
        ty == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED
    } else {
        ty == ICMPV6_PKT_TOOBIG
    };
    if !ptb {
        return Err(PASS_ICMP);
    }
    let (src, dst, proto, sport, dport) = parse::icmp_quoted(ctx, l3)?;
    // The quoted packet is one the VIP sent (a real server's reply): from VIP:port to the
    // client. Its flow is the reverse.
    if src != l3.dst || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(PASS_ICMP_NO_FLOW);
    }
    let flow = FlowKey {
        src: dst,
        dst: src,
        sport: dport,
        dport: sport,
        proto,
        family: l3.family,
        _pad: [0; 2],
    };
    let quoted = L3 {
        family: l3.family,
        src: dst,
        dst: src,
        proto,
        l4_off: 0,
        l3_end: 0,
        fragment: false,
        later_fragment: false,
    };
    let svc = service(&quoted, sport).map_err(|_| PASS_ICMP_NO_FLOW)?;
    if svc.flags & SVC_F_ACTIVE == 0 {
        return Err(PASS_INACTIVE);
    }
    let Some(entry) = FLOWS.get_ptr(&flow) else {
        return Err(PASS_ICMP_NO_FLOW);
    };
    // SAFETY: as in `balance`.
    let e = unsafe { &*entry };
    let b = live_backend(e.backend, e.generation).ok_or(PASS_ICMP_NO_FLOW)?;
    rewrite_macs(ctx, &b.mac)?;
    count_forward(ctx, svc.id, e.backend, false);
    Ok(FWD_ICMP)
}
