//! Everything between the daemon's view of services and the XDP program's maps.
//!
//! The flow is: a list of [`ServiceSpec`] (from the configuration, health checks, VRRP roles
//! and the neighbour table) -> [`plan::Desired`], the exact map contents, computed by a pure
//! function -> a diff against what is in the maps -> the writes, behind [`maps::MapWriter`]
//! (the kernel, or memory in unit tests).
pub mod adopt;
pub mod devbound;
pub mod expiry;
pub mod flows;
pub mod least;
pub mod maglev;
pub mod maps;
pub mod neigh;
pub mod pins;
pub mod plan;
pub mod program;
pub mod ring;

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
};

pub use plan::Dataplane;

use crate::model::{Proto, Scheduler, ServiceKey};

/// Seconds the program's clock is behind CLOCK_MONOTONIC (see [`program_seconds`]).
static CLOCK_LAG: AtomicU32 = AtomicU32::new(0);

/// The program's clock (`CLOCK`, whole seconds): what flows' `last_seen` and idle times are
/// measured on, and what connection sync computes ages with. CLOCK_MONOTONIC, less the time
/// no daemon ran the dataplane a start took over ([`continue_clock_from`]): the program's
/// clock stood still then (nothing wrote it), and a jump would make every flow look idle for
/// that long, which past a service's idle timeout would reschedule them all.
pub fn program_seconds() -> u32 {
    program_seconds_at(crate::os::monotonic().as_secs() as u32)
}

fn program_seconds_at(monotonic: u32) -> u32 {
    monotonic.wrapping_sub(CLOCK_LAG.load(Ordering::Relaxed))
}

/// Makes the program's clock go on from `last`, the value a previous run last wrote (a
/// value ahead of CLOCK_MONOTONIC, which no run of this boot wrote, changes nothing).
pub fn continue_clock_from(last: u32) {
    let now = crate::os::monotonic().as_secs() as u32;
    CLOCK_LAG.store(lag_for(now, last), Ordering::Relaxed);
}

fn lag_for(monotonic: u32, last: u32) -> u32 {
    monotonic.saturating_sub(last)
}

/// One virtual service as the dataplane needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub vip: IpAddr,
    /// 0: every port of the VIP (IPVS fwmark-like catch-all).
    pub port: u16,
    pub proto: Proto,
    pub sched: Scheduler,
    /// `sh`/`mh` hash the source port too.
    pub hash_port: bool,
    /// Seconds; 0 disables persistence.
    pub persistence_timeout: u32,
    /// Prefix length of the persistence granularity (IPVS `-M`): 32/128 = per client.
    pub persistence_prefix: u8,
    /// Seconds a flow may stay idle before it is forgotten; 0 = only the LRU forgets it.
    pub idle_timeout: u32,
    /// A TCP packet other than an opening SYN, of a flow the table does not know, is
    /// scheduled (IPVS `sloppy_tcp`); otherwise it goes to the stack.
    pub sloppy_tcp: bool,
    /// `mh`: the Maglev table size M, a prime (ignored by the other schedulers).
    pub mh_table_size: u32,
    /// This node is active (VRRP master) for the VIP.
    pub active: bool,
    pub backends: Vec<BackendSpec>,
    /// The other (VIP, port)s of the same protocol that lead to this one service, with its
    /// one ring, rr position, persistence and counters (keepalived's `virtual_server_group`).
    pub aliases: Vec<(IpAddr, u16)>,
}

impl ServiceSpec {
    /// Its VIP, port and protocol.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(self.vip, self.port, self.proto)
    }

    /// Every map key that leads to it: its own, then its aliases'.
    pub fn map_keys(&self) -> impl Iterator<Item = MapKey> + '_ {
        std::iter::once(MapKey::of(self)).chain(self.aliases.iter().map(|&(vip, port)| {
            let (addr, family) = addr_words(vip);
            MapKey {
                addr,
                port: port.to_be(),
                proto: self.proto.number(),
                family,
            }
        }))
    }

    /// The key the planner knows it by: the least of [`ServiceSpec::map_keys`], so that
    /// maps read back after a restart (which do not say which key was the configuration's
    /// first) name the same service.
    pub fn ident(&self) -> MapKey {
        self.map_keys().min().expect("a service has its own key")
    }
}

/// One real server of a service.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    /// 0 drains: existing flows stay, new ones go elsewhere.
    pub weight: u32,
    /// From the neighbour table; `None` (not resolved, or failed) means unusable. A TUN or
    /// NAT backend needs no MAC (its packets go to the next hop the kernel's FIB names): any
    /// `Some` marks it usable ([`TUNNEL_MAC`]).
    pub mac: Option<[u8; 6]>,
    /// keepalived's `uthreshold` and `lthreshold`.
    pub thresholds: Thresholds,
    /// How it is reached; a tunnel's source address filled in.
    pub forward: Forward,
}

/// The `mac` of a usable TUN or NAT backend: never written to a frame.
pub const TUNNEL_MAC: [u8; 6] = [0; 6];

pub use crate::model::{Forward, Thresholds, Tunnel};

/// Address words in the layout the program uses (an IPv4 address in word 0).
pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(a) => (
            [lb_common::addr_v4(a.octets()), 0, 0, 0],
            lb_common::FAMILY_V4,
        ),
        IpAddr::V6(a) => (lb_common::addr_v6(a.octets()), lb_common::FAMILY_V6),
    }
}

/// A service's key as the program's maps hold it (address words, port in network byte
/// order), ordered so that plans are deterministic. The kernel keeps one map per family;
/// [`maps::BpfMaps`] picks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

impl MapKey {
    pub fn of(spec: &ServiceSpec) -> Self {
        let (addr, family) = addr_words(spec.vip);
        MapKey {
            addr,
            port: spec.port.to_be(),
            proto: spec.proto.number(),
            family,
        }
    }
}

/// The mask words of a prefix length, for the program's `persist_mask`.
pub fn prefix_mask(family: u8, prefix: u8) -> [u32; 4] {
    let bits = if family == lb_common::FAMILY_V4 {
        32
    } else {
        128
    };
    let prefix = u32::from(prefix).min(bits);
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate().take(bits as usize / 8) {
        let start = i as u32 * 8;
        *b = match prefix.saturating_sub(start) {
            0 => 0,
            n if n >= 8 => 0xff,
            n => 0xffu8 << (8 - n),
        };
    }
    lb_common::addr_v6(bytes)
}

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn the_clock_goes_on_from_where_the_previous_run_left_it() {
        // The previous run last wrote 1000; this one starts at monotonic 1300.
        let lag = lag_for(1300, 1000);
        assert_eq!(lag, 300);
        assert_eq!(1300u32.wrapping_sub(lag), 1000, "no jump at the start");
        assert_eq!(1310u32.wrapping_sub(lag), 1010, "then it runs");
        // A value from no run of this boot (ahead of the clock) changes nothing.
        assert_eq!(lag_for(1300, 5000), 0);
    }
}
