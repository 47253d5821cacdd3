//! Gratuitous ARP and unsolicited neighbour advertisements: telling the LAN that a
//! VIP now lives at our MAC, after this router became VRRP master.
//!
//! Three parts:
//!
//! 1. **Frame builders** (pure, golden-byte tests): [`gratuitous_arp`] and
//!    [`unsolicited_na`] build complete Ethernet frames.
//! 2. **[`GarpSchedule`]** (pure, tested with a virtual clock): keepalived's
//!    `garp_master_delay` / `garp_master_repeat` / `garp_master_refresh` /
//!    `garp_master_refresh_repeat` / `garp_interval` as a state machine that, given
//!    `now`, says which VIPs to announce and when to wake up next.
//! 3. **[`GarpSender`]** (an `AF_PACKET` socket bound to the interface) and
//!    [`run_schedule`], the async task that drives one schedule with it.
//!
//! # Frame forms (checked against keepalived 2.2.7 on the wire)
//!
//! Captured from keepalived 2.2.7 (Debian 12) in a namespace, and used as golden
//! vectors in the tests below:
//!
//! - **ARP**: an ARP *request* to `ff:ff:ff:ff:ff:ff`, sender IP = target IP = VIP,
//!   sender MAC = our MAC, **target MAC `ff:ff:ff:ff:ff:ff`**, 42 bytes (no padding
//!   to 60: NICs pad, veth does not and nobody minds). RFC 5227 §3 describes the
//!   same "ARP Announcement" but says the target hardware address SHOULD be zero, and
//!   Linux's own announcements (`arp_send(..., NULL target_hw)`) use zeros. Receivers
//!   ignore the field in requests (Linux only looks at it for gratuitous *replies*,
//!   `arp_is_garp()`). We send keepalived's form by default, so a network that
//!   works with keepalived today sees identical frames; [`ArpTargetMac::Zero`] gives
//!   the RFC 5227 form.
//! - **NA** (RFC 4861 §7.2.6): to `33:33:00:00:00:01` / `ff02::1`, hop limit 255,
//!   ICMPv6 type 136, Override set, Solicited clear, target = VIP, option Target
//!   Link-Layer Address = our MAC, 86 bytes. keepalived sets the Router flag when
//!   IPv6 forwarding is on for the interface; we take it as a parameter (default
//!   clear: a direct-routing load balancer is not the hosts' router).
//!   **IPv6 source**: keepalived 2.2.7 uses the **VIP itself**, not the link-local
//!   address (its `vrrp_ndisc.c` copies the VIP into `saddr`, and the capture
//!   confirms it); so does the kernel's own `ndisc_send_unsol_na()`. Both are
//!   addresses assigned to the interface, as RFC 4861 §4.4 requires, and receivers do
//!   not check which. We default to the VIP ([`NaSource::Target`]): it needs no
//!   lookup and works before the link-local address has finished DAD;
//!   [`NaSource::LinkLocal`] uses the interface's link-local address instead and
//!   falls back to the VIP when there is none.
//!
//! # Why `AF_PACKET` for both
//!
//! One `SOCK_RAW` packet socket per interface sends complete frames for both ARP and
//! NA, so what goes on the wire is exactly what the golden tests check, including the
//! IPv6 source, hop limit and checksum; an ICMPv6 raw socket would need the source
//! address to be bound and the kernel to fill in parts of the frame. The socket is
//! created with protocol 0, so it receives nothing (no queue to drain); the protocol
//! of each frame is given per `sendto()`.
//!
//! # What receivers do with them (Linux)
//!
//! A gratuitous ARP updates an *existing* neighbour entry to our MAC (`arp_process()`
//! overrides even within `locktime` for gratuitous ARP); it only creates one when
//! `net.ipv4.conf.*.arp_accept` allows. An unsolicited NA with Override updates an
//! existing entry; creating one needs `accept_untracked_na`. Switches learn our MAC
//! from the Ethernet source either way.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tracing::{debug, trace, warn};

use crate::model::Mac;
use crate::netlink::addr::{AddressSocket, InterfaceAddress, RT_SCOPE_LINK};

// ---------------------------------------------------------------------------------
// Wire constants
// ---------------------------------------------------------------------------------

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Length of a gratuitous ARP frame: Ethernet 14 + ARP 28.
pub const GARP_FRAME_LEN: usize = 42;
/// Length of an unsolicited NA frame: Ethernet 14 + IPv6 40 + NA 24 + TLLA option 8.
pub const NA_FRAME_LEN: usize = 86;

const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// RFC 2464 §7: `33:33` followed by the low 32 bits of `ff02::1`.
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const IPPROTO_ICMPV6: u8 = 58;
/// RFC 4861 §7.1.2: receivers drop ND messages with any other hop limit.
const ND_HOP_LIMIT: u8 = 255;
const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// NA flags, first byte of the reserved word (RFC 4861 §4.4).
const NA_FLAG_ROUTER: u8 = 0x80;
const NA_FLAG_OVERRIDE: u8 = 0x20;
/// ICMPv6 message length of an NA with one TLLA option: 24 + 8.
const NA_ICMP_LEN: u16 = 32;

/// Upper bound on frames per VIP in one burst; larger configured values are
/// clamped (see [`GarpConfig::validate`]).
pub const MAX_REPEAT: u32 = 100;

// ---------------------------------------------------------------------------------
// Frame builders
// ---------------------------------------------------------------------------------

/// Target hardware address of a gratuitous ARP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArpTargetMac {
    /// `ff:ff:ff:ff:ff:ff`, what keepalived sends.
    #[default]
    Broadcast,
    /// `00:00:00:00:00:00`, RFC 5227 §2.1.1/§3 and the Linux kernel's own form.
    Zero,
}

/// IPv6 source address of an unsolicited NA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NaSource {
    /// The VIP itself (keepalived, and the kernel's `ndisc_send_unsol_na()`).
    #[default]
    Target,
    /// The interface's link-local address; the VIP if it has none that is usable.
    LinkLocal,
}

/// ```text
///  Ethernet: dst ff:ff:ff:ff:ff:ff | src MAC | type 0x0806
///  ARP:  0                   1                   2                   3
///        0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
///       +-------------------------------+-------------------------------+
///       |       HTYPE = 1 (Ethernet)    |        PTYPE = 0x0800         |
///       +---------------+---------------+-------------------------------+
///       |   HLEN = 6    |   PLEN = 4    |        OPER = 1 (request)     |
///       +---------------+---------------+-------------------------------+
///       |          SHA = our MAC (6)    |          SPA = VIP (4)        |
///       |          THA (6)              |          TPA = VIP (4)        |
///       +-------------------------------+-------------------------------+
/// ```
/// A gratuitous ARP request announcing `vip` at `mac` (42 bytes).
pub fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr, target_mac: ArpTargetMac) -> Vec<u8> {
    let tha = match target_mac {
        ArpTargetMac::Broadcast => BROADCAST_MAC,
        ArpTargetMac::Zero => [0; 6],
    };
    let mut f = Vec::with_capacity(GARP_FRAME_LEN);
    f.extend_from_slice(&BROADCAST_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.push(6);
    f.push(4);
    f.extend_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f.extend_from_slice(&mac);
    f.extend_from_slice(&vip.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&vip.octets());
    f
}

/// ```text
///  Ethernet: dst 33:33:00:00:00:01 | src MAC | type 0x86dd
///  IPv6: version 6, payload length 32, next header 58, hop limit 255,
///        src `source`, dst ff02::1
///  ICMPv6 (RFC 4861 §4.4):
///   0                   1                   2                   3
///   0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
///  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///  |     Type=136  |     Code=0    |          Checksum             |
///  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///  |R|S|O|                     Reserved                            |
///  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///  |                    Target Address = VIP (16)                  |
///  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
///  |   Type=2      |   Length=1    |  Target link-layer address    |
///  +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ = our MAC (6)                 |
/// ```
/// An unsolicited NA (S clear, O set, R = `router`) announcing `vip` at `mac`, sent
/// from `source` to all nodes (86 bytes).
pub fn unsolicited_na(mac: [u8; 6], source: Ipv6Addr, vip: Ipv6Addr, router: bool) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(usize::from(NA_ICMP_LEN));
    icmp.push(ICMPV6_NEIGHBOR_ADVERT);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, filled in below
    let flags = NA_FLAG_OVERRIDE | if router { NA_FLAG_ROUTER } else { 0 };
    icmp.extend_from_slice(&[flags, 0, 0, 0]);
    icmp.extend_from_slice(&vip.octets());
    icmp.push(ND_OPT_TARGET_LL_ADDR);
    icmp.push(1); // option length in units of 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(&source, &ALL_NODES, &icmp);
    if let Some(field) = icmp.get_mut(2..4) {
        field.copy_from_slice(&checksum.to_be_bytes());
    }

    let mut f = Vec::with_capacity(NA_FRAME_LEN);
    f.extend_from_slice(&ALL_NODES_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    f.extend_from_slice(&NA_ICMP_LEN.to_be_bytes());
    f.push(IPPROTO_ICMPV6);
    f.push(ND_HOP_LIMIT);
    f.extend_from_slice(&source.octets());
    f.extend_from_slice(&ALL_NODES.octets());
    f.extend_from_slice(&icmp);
    f
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of `message` (whose checksum field must be
/// zero) over the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = pair.first().copied().unwrap_or(0);
            let lo = pair.get(1).copied().unwrap_or(0);
            sum += u64::from(u16::from_be_bytes([hi, lo]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&len.to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(message);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A usable link-local address of `ifindex` among `addrs`: IPv6, `fe80::/10`, link
/// scope, duplicate address detection finished.
pub fn pick_link_local(addrs: &[InterfaceAddress], ifindex: u32) -> Option<Ipv6Addr> {
    addrs.iter().find_map(|a| match a.addr {
        IpAddr::V6(v6)
            if a.ifindex == ifindex
                && !a.deleted
                && a.scope == RT_SCOPE_LINK
                && v6.segments().first().is_some_and(|s| s & 0xffc0 == 0xfe80)
                && !a.is_tentative() =>
        {
            Some(v6)
        }
        _ => None,
    })
}

// ---------------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------------

/// keepalived's GARP timing (`vrrp_instance` keywords, or the global `vrrp_garp_*`
/// defaults). The defaults are keepalived's, as documented in keepalived.conf(5) and
/// observed on the wire with keepalived 2.2.7: 5 frames per VIP at once on becoming
/// master, 5 more 5 s later, no periodic refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpConfig {
    /// `garp_master_delay`: the second burst comes this long after becoming master;
    /// zero: no second burst. Default 5 s.
    pub master_delay: Duration,
    /// `garp_master_repeat`: frames per VIP in each of the two bursts. Default 5.
    pub master_repeat: u32,
    /// `garp_master_refresh`: while master, another burst every this long; zero: off
    /// (the default). keepalived checks it on every advert, so its refresh can be up
    /// to one advert interval late; ours is on time.
    pub master_refresh: Duration,
    /// `garp_master_refresh_repeat`: frames per VIP in each refresh burst. Default 1.
    pub master_refresh_repeat: u32,
    /// `garp_interval` / `gna_interval`: the least time between consecutive frames (of
    /// any VIP) within a burst; zero (the default) sends a burst back to back. keepalived
    /// keeps this per interface across instances and separately for ARP and NA; here
    /// it applies within one schedule to both.
    pub interval: Duration,
}

impl Default for GarpConfig {
    fn default() -> Self {
        GarpConfig {
            master_delay: Duration::from_secs(5),
            master_repeat: 5,
            master_refresh: Duration::ZERO,
            master_refresh_repeat: 1,
            interval: Duration::ZERO,
        }
    }
}

impl GarpConfig {
    /// keepalived's `vrrp_min_garp`: one frame per VIP, no second burst.
    pub fn min_garp() -> Self {
        GarpConfig {
            master_delay: Duration::ZERO,
            master_repeat: 1,
            ..GarpConfig::default()
        }
    }

    /// Reject values the schedule would otherwise clamp.
    pub fn validate(&self) -> Result<(), GarpError> {
        if self.master_repeat > MAX_REPEAT || self.master_refresh_repeat > MAX_REPEAT {
            return Err(GarpError::Config("repeat counts are limited to 100"));
        }
        let day = Duration::from_secs(86_400);
        if self.master_delay > day || self.master_refresh > day || self.interval > day {
            return Err(GarpError::Config("delays are limited to one day"));
        }
        Ok(())
    }
}

/// One burst: `rounds` announcements of every VIP, frame `k` at
/// `start + k * interval` (VIP `k % n`: round by round, like keepalived's
/// `vrrp_send_link_update()`), and never less than `interval` after the frame before:
/// keepalived's `vrrp_garp_interval` is the least time between two frames, so a late
/// wake-up delays the rest of the burst instead of sending what is due back to back.
#[derive(Debug, Clone)]
struct Burst {
    start: Instant,
    frames: u64,
    sent: u64,
    /// When the last frame went (with a non-zero interval).
    last: Option<Instant>,
}

impl Burst {
    fn new(start: Instant, rounds: u32, vips: usize) -> Self {
        Burst {
            start,
            frames: u64::from(rounds.min(MAX_REPEAT)).saturating_mul(vips as u64),
            sent: 0,
            last: None,
        }
    }

    /// When frame `k` is due; `None` if that is beyond what `Instant` can represent.
    fn frame_time(&self, interval: Duration, k: u64) -> Option<Instant> {
        let k = u32::try_from(k).ok()?;
        self.start.checked_add(interval.checked_mul(k)?)
    }

    fn next_time(&self, interval: Duration) -> Option<Instant> {
        let planned = (self.sent < self.frames)
            .then(|| self.frame_time(interval, self.sent))
            .flatten()?;
        match self.last {
            Some(last) if !interval.is_zero() => Some(planned.max(last.checked_add(interval)?)),
            _ => Some(planned),
        }
    }

    fn finished(&self, interval: Duration) -> bool {
        self.next_time(interval).is_none()
    }

    /// Move every frame due at `now` to `out`.
    fn take_due(
        &mut self,
        now: Instant,
        interval: Duration,
        vips: &[IpAddr],
        out: &mut Vec<IpAddr>,
    ) {
        while let Some(at) = self.next_time(interval) {
            if at > now {
                break;
            }
            let index = usize::try_from(self.sent % vips.len().max(1) as u64).unwrap_or(0);
            out.extend(vips.get(index).copied());
            self.sent += 1;
            self.last = Some(now);
        }
    }
}

#[derive(Debug, Clone)]
struct Refresh {
    period: Duration,
    rounds: u32,
    burst: Burst,
}

/// What [`GarpSchedule::poll`] says to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarpDue {
    /// Announce these VIPs now, one frame each, in this order (a VIP appears several
    /// times when several rounds are due at once).
    pub announce: Vec<IpAddr>,
    /// Poll again at this time; `None`: the schedule is finished.
    pub next_wake: Option<Instant>,
}

/// When to announce which VIP, as a pure state machine: no clock, no I/O.
///
/// On becoming master at `t0`: a burst of `master_repeat` rounds at `t0`, another at
/// `t0 + master_delay` (if non-zero), and, if `master_refresh` is non-zero, a burst
/// of `master_refresh_repeat` rounds at `t0 + k * master_refresh` for k = 1, 2, ...
/// A round announces every VIP once. Refresh bursts missed entirely (the task did not
/// run for a while) collapse into one instead of being sent back to back.
///
/// Leaving master means dropping the schedule (and the task running it). Extra
/// bursts, such as keepalived's `garp_lower_prio_repeat` after a lower-priority
/// advert, are added with [`add_burst`](Self::add_burst).
#[derive(Debug, Clone)]
pub struct GarpSchedule {
    vips: Vec<IpAddr>,
    interval: Duration,
    bursts: Vec<Burst>,
    refresh: Option<Refresh>,
}

impl GarpSchedule {
    /// The schedule for `vips` after becoming master at `became_master`.
    pub fn new(config: &GarpConfig, vips: Vec<IpAddr>, became_master: Instant) -> Self {
        let mut schedule = GarpSchedule {
            vips,
            interval: config.interval,
            bursts: Vec::new(),
            refresh: None,
        };
        schedule.add_burst(became_master, config.master_repeat);
        if !config.master_delay.is_zero() {
            if let Some(second) = became_master.checked_add(config.master_delay) {
                schedule.add_burst(second, config.master_repeat);
            }
        }
        if !config.master_refresh.is_zero() && config.master_refresh_repeat > 0 {
            if let Some(first) = became_master.checked_add(config.master_refresh) {
                schedule.refresh = Some(Refresh {
                    period: config.master_refresh,
                    rounds: config.master_refresh_repeat,
                    burst: Burst::new(first, config.master_refresh_repeat, schedule.vips.len()),
                });
            }
        }
        schedule
    }

    /// Add a burst of `rounds` rounds starting at `start`.
    pub fn add_burst(&mut self, start: Instant, rounds: u32) {
        let burst = Burst::new(start, rounds, self.vips.len());
        if !burst.finished(self.interval) {
            self.bursts.push(burst);
        }
    }

    /// The VIPs this schedule announces.
    pub fn vips(&self) -> &[IpAddr] {
        &self.vips
    }

    /// Everything due at `now`, and when to poll next.
    pub fn poll(&mut self, now: Instant) -> GarpDue {
        let interval = self.interval;
        let mut announce = Vec::new();
        for burst in &mut self.bursts {
            burst.take_due(now, interval, &self.vips, &mut announce);
        }
        self.bursts.retain(|b| !b.finished(interval));

        if let Some(refresh) = &mut self.refresh {
            loop {
                refresh
                    .burst
                    .take_due(now, interval, &self.vips, &mut announce);
                if !refresh.burst.finished(interval) {
                    break;
                }
                match next_refresh_start(refresh.burst.start, refresh.period, now) {
                    Some(start) => {
                        refresh.burst = Burst::new(start, refresh.rounds, self.vips.len());
                    }
                    None => {
                        self.refresh = None;
                        break;
                    }
                }
                if refresh.burst.finished(interval) {
                    self.refresh = None;
                    break;
                }
            }
        }
        GarpDue {
            announce,
            next_wake: self.next_wake(),
        }
    }

    /// When the next frame is due; `None`: nothing left to send.
    pub fn next_wake(&self) -> Option<Instant> {
        let interval = self.interval;
        self.bursts
            .iter()
            .chain(self.refresh.as_ref().map(|r| &r.burst))
            .filter_map(|b| b.next_time(interval))
            .min()
    }

    /// Nothing left to send (no refresh configured and all bursts sent).
    pub fn is_finished(&self) -> bool {
        self.next_wake().is_none()
    }
}

/// The start of the refresh burst after the one that started at `prev`: one period
/// later, or, if that is already past by more than a period, the latest start not
/// after `now` (missed bursts are skipped, not caught up).
fn next_refresh_start(prev: Instant, period: Duration, now: Instant) -> Option<Instant> {
    let next = prev.checked_add(period)?;
    if next > now {
        return Some(next);
    }
    let period_ns = period.as_nanos().max(1);
    let missed = now.duration_since(next).as_nanos() / period_ns;
    let skip_ns = missed.checked_mul(period_ns)?;
    let skip = Duration::new(
        u64::try_from(skip_ns / 1_000_000_000).ok()?,
        u32::try_from(skip_ns % 1_000_000_000).ok()?,
    );
    next.checked_add(skip)
}

// ---------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GarpError {
    /// A system call on the packet socket failed.
    #[error("AF_PACKET {op} on ifindex {ifindex} failed: {source}")]
    Io {
        /// The failing operation.
        op: &'static str,
        /// Interface of the socket.
        ifindex: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The interface is not Ethernet-like (loopback, tunnel, InfiniBand, ...).
    #[error(
        "interface {ifindex} is not Ethernet (hardware type {hatype}, address length {halen})"
    )]
    NotEthernet {
        /// Interface of the socket.
        ifindex: u32,
        /// `ARPHRD_*` type.
        hatype: u16,
        /// Hardware address length.
        halen: u8,
    },
    /// The interface MAC cannot be announced (all-zero or multicast).
    #[error("interface {ifindex} has no unicast MAC to announce ({mac})")]
    BadMac {
        /// Interface of the socket.
        ifindex: u32,
        /// The MAC, formatted.
        mac: String,
    },
    /// Invalid [`GarpConfig`].
    #[error("invalid GARP configuration: {0}")]
    Config(&'static str),
}

impl GarpError {
    /// The OS error number, for [`GarpError::Io`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            GarpError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// How [`GarpSender`] builds its frames. The default is keepalived's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnnounceOptions {
    /// Target hardware address of the ARP request.
    pub arp_target_mac: ArpTargetMac,
    /// IPv6 source of the NA.
    pub na_source: NaSource,
    /// Set the NA's Router flag (keepalived: when IPv6 forwarding is on).
    pub na_router: bool,
}

/// An `AF_PACKET` socket bound to one interface, sending gratuitous ARPs and
/// unsolicited NAs from the interface's current MAC (read at every
/// [`announce`](Self::announce), so a MAC change is picked up).
#[derive(Debug)]
pub struct GarpSender {
    fd: AsyncFd<OwnedFd>,
    ifindex: u32,
    options: AnnounceOptions,
    /// Opened on first use, for [`NaSource::LinkLocal`].
    addresses: Option<AddressSocket>,
}

impl GarpSender {
    /// Open the socket on `ifindex` (needs `CAP_NET_RAW`), in the network namespace
    /// of the calling thread.
    ///
    /// # Panics
    /// Must be called within a Tokio runtime with I/O enabled.
    pub fn open(ifindex: u32, options: AnnounceOptions) -> Result<Self, GarpError> {
        let io_err = |op| GarpError::Io {
            op,
            ifindex,
            source: io::Error::last_os_error(),
        };
        // Protocol 0: this socket receives nothing; each frame's protocol is given
        // to sendto(). Close-on-exec (socket2's default) and non-blocking.
        let fd = socket2::Socket::new(
            socket2::Domain::PACKET,
            socket2::Type::RAW.nonblocking(),
            None,
        )
        .map(OwnedFd::from)
        .map_err(|source| GarpError::Io {
            op: "socket",
            ifindex,
            source,
        })?;
        let mut addr = sockaddr_ll(ifindex, 0, [0; 6]);
        addr.sll_halen = 0;
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches. Binding ties
        // the socket to the interface, so getsockname() reports its MAC.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err("bind"));
        }
        // SAFETY: as in RouteSocket: an OwnedFd returns itself from as_raw_fd() and
        // is closed only together with the AsyncFd.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| GarpError::Io {
            op: "register with tokio",
            ifindex,
            source: e.into_parts().1,
        })?;
        let sender = GarpSender {
            fd,
            ifindex,
            options,
            addresses: None,
        };
        sender.mac()?;
        Ok(sender)
    }

    /// The interface this sender is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's current MAC address.
    pub fn mac(&self) -> Result<[u8; 6], GarpError> {
        let ifindex = self.ifindex;
        let mut addr = sockaddr_ll(0, 0, [0; 6]);
        let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `addr`/`len` describe a writable sockaddr_ll. For interfaces with
        // hardware addresses longer than 8 bytes the kernel truncates the copy to `len`.
        let rc = unsafe {
            libc::getsockname(
                self.fd.get_ref().as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(GarpError::Io {
                op: "getsockname",
                ifindex,
                source: io::Error::last_os_error(),
            });
        }
        let hatype = addr.sll_hatype;
        let halen = addr.sll_halen;
        if hatype == 0 && halen == 0 {
            // packet_getname() reports nothing once the device is unregistered.
            return Err(GarpError::Io {
                op: "getsockname",
                ifindex,
                source: io::Error::from_raw_os_error(libc::ENODEV),
            });
        }
        let mac: [u8; 6] = match addr.sll_addr.first_chunk::<6>() {
            Some(mac) if hatype == ARPHRD_ETHER && halen == 6 => *mac,
            _ => {
                return Err(GarpError::NotEthernet {
                    ifindex,
                    hatype,
                    halen,
                })
            }
        };
        if mac == [0; 6] || mac.first().is_some_and(|b| b & 1 != 0) {
            return Err(GarpError::BadMac {
                ifindex,
                mac: Mac(mac).to_string(),
            });
        }
        Ok(mac)
    }

    /// Send one frame per entry of `vips`: a gratuitous ARP for IPv4, an unsolicited
    /// NA for IPv6. All are attempted; the first error is returned.
    pub async fn announce(&mut self, vips: &[IpAddr]) -> Result<(), GarpError> {
        let mac = self.mac()?;
        let link_local =
            if self.options.na_source == NaSource::LinkLocal && vips.iter().any(IpAddr::is_ipv6) {
                self.link_local().await
            } else {
                None
            };
        let mut first_error = None;
        for vip in vips {
            let (frame, proto, dst) = match *vip {
                IpAddr::V4(v4) => (
                    gratuitous_arp(mac, v4, self.options.arp_target_mac),
                    ETH_P_ARP,
                    BROADCAST_MAC,
                ),
                IpAddr::V6(v6) => (
                    unsolicited_na(mac, link_local.unwrap_or(v6), v6, self.options.na_router),
                    ETH_P_IPV6,
                    ALL_NODES_MAC,
                ),
            };
            match self.send(&frame, proto, dst).await {
                Ok(()) => trace!(%vip, ifindex = self.ifindex, "announced"),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The interface's link-local address, if it has a usable one.
    async fn link_local(&mut self) -> Option<Ipv6Addr> {
        if self.addresses.is_none() {
            match AddressSocket::open() {
                Ok(sock) => self.addresses = Some(sock),
                Err(e) => {
                    debug!(error = %e, "cannot open netlink socket; NA source is the VIP");
                    return None;
                }
            }
        }
        let sock = self.addresses.as_mut()?;
        match sock.list(Some(self.ifindex)).await {
            Ok(addrs) => {
                let found = pick_link_local(&addrs, self.ifindex);
                if found.is_none() {
                    debug!(
                        ifindex = self.ifindex,
                        "no usable link-local address; NA source is the VIP"
                    );
                }
                found
            }
            Err(e) => {
                debug!(error = %e, "address dump failed; NA source is the VIP");
                None
            }
        }
    }

    async fn send(&self, frame: &[u8], proto: u16, dst: [u8; 6]) -> Result<(), GarpError> {
        let addr = sockaddr_ll(self.ifindex, proto, dst);
        let io_err = |source| GarpError::Io {
            op: "sendto",
            ifindex: self.ifindex,
            source,
        };
        loop {
            let mut guard = self.fd.writable().await.map_err(io_err)?;
            match guard.try_io(|fd| send_frame(fd.get_ref().as_raw_fd(), frame, &addr)) {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(io_err(e)),
                Ok(Ok(sent)) if sent != frame.len() => {
                    return Err(io_err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short packet send",
                    )));
                }
                Ok(Ok(_)) => return Ok(()),
            }
        }
    }
}

fn sockaddr_ll(ifindex: u32, proto: u16, dst: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = proto.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
    addr.sll_halen = 6;
    if let Some(head) = addr.sll_addr.first_chunk_mut::<6>() {
        *head = dst;
    }
    addr
}

fn send_frame(fd: RawFd, frame: &[u8], addr: &libc::sockaddr_ll) -> io::Result<usize> {
    // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` matches the length.
    let rc = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT,
            (addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    usize::try_from(rc).map_err(|_| io::Error::last_os_error())
}

/// Drive `schedule` with `sender` until it is finished (never, if a refresh is
/// configured). Send failures are logged, at most once per burst, and do not stop
/// the schedule. Cancel by dropping the future (e.g. abort the task on leaving
/// master).
pub async fn run_schedule(sender: &mut GarpSender, schedule: &mut GarpSchedule) {
    loop {
        let due = schedule.poll(Instant::now());
        if !due.announce.is_empty() {
            debug!(
                ifindex = sender.ifindex(),
                frames = due.announce.len(),
                "sending gratuitous ARP / unsolicited NA"
            );
            if let Err(e) = sender.announce(&due.announce).await {
                warn!(error = %e, "gratuitous ARP / unsolicited NA failed");
            }
        }
        match due.next_wake {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => return,
        }
    }
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// The MAC of the keepalived 2.2.7 run the golden frames were captured from.
    const KA_MAC: [u8; 6] = [0x1a, 0x32, 0x73, 0x94, 0x2a, 0x03];

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// keepalived 2.2.7, `virtual_ipaddress { 192.0.2.100/24 dev ka0 }`, captured
    /// with tcpdump on the peer of ka0.
    #[test]
    fn garp_matches_keepalived_capture() {
        let captured = hex("ffff ffff ffff 1a32 7394 2a03 0806 0001
             0800 0604 0001 1a32 7394 2a03 c000 0264
             ffff ffff ffff c000 0264");
        let got = gratuitous_arp(
            KA_MAC,
            Ipv4Addr::new(192, 0, 2, 100),
            ArpTargetMac::Broadcast,
        );
        assert_eq!(got, captured);
        assert_eq!(got.len(), GARP_FRAME_LEN);
    }

    #[test]
    fn garp_rfc5227_form() {
        let got = gratuitous_arp(KA_MAC, Ipv4Addr::new(203, 0, 113, 9), ArpTargetMac::Zero);
        let want = hex("ffff ffff ffff 1a32 7394 2a03 0806 0001
             0800 0604 0001 1a32 7394 2a03 cb00 7109
             0000 0000 0000 cb00 7109");
        assert_eq!(got, want);
    }

    /// keepalived 2.2.7, `virtual_ipaddress { 2001:db8::100/64 dev ka0 }` (IPv6
    /// forwarding off, so R clear): source = the VIP, checksum 0x4164.
    #[test]
    fn na_matches_keepalived_capture() {
        let captured = hex("3333 0000 0001 1a32 7394 2a03 86dd 6000
             0000 0020 3aff 2001 0db8 0000 0000 0000
             0000 0000 0100 ff02 0000 0000 0000 0000
             0000 0000 0001 8800 4164 2000 0000 2001
             0db8 0000 0000 0000 0000 0000 0100 0201
             1a32 7394 2a03");
        let vip = v6("2001:db8::100");
        let got = unsolicited_na(KA_MAC, vip, vip, false);
        assert_eq!(got, captured);
        assert_eq!(got.len(), NA_FRAME_LEN);
    }

    #[test]
    fn na_from_link_local_with_router_flag() {
        let src = v6("fe80::1832:73ff:fe94:2a03");
        let vip = v6("2001:db8::100");
        let got = unsolicited_na(KA_MAC, src, vip, true);
        assert_eq!(got.get(22..38), Some(&src.octets()[..]));
        assert_eq!(got.get(58), Some(&0xa0)); // R | O
                                              // A receiver's check: the checksum over the pseudo-header sums to 0xffff,
                                              // i.e. recomputing it with the field in place gives zero.
        let icmp = &got[54..];
        assert_eq!(icmpv6_checksum(&src, &ALL_NODES, icmp), 0);
        // And it differs from the VIP-sourced frame only in source and checksum.
        let other = unsolicited_na(KA_MAC, vip, vip, true);
        let diff: Vec<usize> = (0..NA_FRAME_LEN).filter(|&i| got[i] != other[i]).collect();
        assert!(
            diff.iter()
                .all(|&i| (22..38).contains(&i) || (56..58).contains(&i)),
            "{diff:?}"
        );
    }

    #[test]
    fn checksum_odd_length_and_folding() {
        // RFC 1071-style check: appending the checksum makes the sum verify.
        let src = v6("2001:db8::1");
        let dst = v6("2001:db8::2");
        let msg = [0x80, 0, 0, 0, 0xff, 0xff, 0xff];
        let c = icmpv6_checksum(&src, &dst, &msg);
        let mut with = msg.to_vec();
        with[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(icmpv6_checksum(&src, &dst, &with), 0);
    }

    fn entry(addr: &str, scope: u8, flags: u32, ifindex: u32) -> InterfaceAddress {
        InterfaceAddress {
            ifindex,
            addr: addr.parse().unwrap(),
            prefix_len: 64,
            label: None,
            flags,
            scope,
            deleted: false,
        }
    }

    #[test]
    fn link_local_choice() {
        use crate::netlink::addr::{IFA_F_DADFAILED, IFA_F_TENTATIVE};
        let addrs = [
            entry("192.0.2.1", 0, 0, 3),
            entry("fe80::9", RT_SCOPE_LINK, 0, 4), // other interface
            entry("2001:db8::1", 0, 0, 3),
            entry("fe80::1", RT_SCOPE_LINK, IFA_F_TENTATIVE, 3),
            entry("fe80::2", RT_SCOPE_LINK, IFA_F_DADFAILED, 3),
            entry("fe80::3", RT_SCOPE_LINK, 0x80, 3),
        ];
        assert_eq!(pick_link_local(&addrs, 3), Some(v6("fe80::3")));
        assert_eq!(pick_link_local(&addrs[..5], 3), None);
        assert_eq!(pick_link_local(&addrs, 4), Some(v6("fe80::9")));
    }

    // ----- schedule -------------------------------------------------------------

    fn vips() -> Vec<IpAddr> {
        vec![
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
            IpAddr::V6(v6("2001:db8::100")),
        ]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Poll at every wake-up until `until`; returns (offset from t0, frames) per wake.
    fn simulate(s: &mut GarpSchedule, t0: Instant, until: Instant) -> Vec<(Duration, usize)> {
        let mut out = Vec::new();
        let mut now = t0;
        loop {
            let due = s.poll(now);
            if !due.announce.is_empty() {
                out.push((now - t0, due.announce.len()));
            }
            match due.next_wake {
                Some(at) if at <= until => {
                    assert!(at > now, "wake-up {at:?} not after {now:?}");
                    now = at;
                }
                _ => return out,
            }
        }
    }

    #[test]
    fn keepalived_defaults() {
        let c = GarpConfig::default();
        assert_eq!(c.master_delay, Duration::from_secs(5));
        assert_eq!((c.master_repeat, c.master_refresh_repeat), (5, 1));
        assert!(c.master_refresh.is_zero() && c.interval.is_zero());
        c.validate().unwrap();

        let t0 = Instant::now();
        let mut s = GarpSchedule::new(&c, vips(), t0);
        let first = s.poll(t0);
        // Five rounds, round by round: v4, v6, v4, v6, ...
        assert_eq!(first.announce.len(), 10);
        assert_eq!(first.announce[..2], vips()[..]);
        assert_eq!(first.announce[2..4], vips()[..]);
        assert_eq!(first.next_wake, Some(t0 + Duration::from_secs(5)));
        // Nothing early.
        assert!(s.poll(t0 + ms(4999)).announce.is_empty());
        let second = s.poll(t0 + Duration::from_secs(5));
        assert_eq!(second.announce.len(), 10);
        assert_eq!(second.next_wake, None);
        assert!(s.is_finished());
    }

    #[test]
    fn min_garp_and_no_second_burst() {
        let t0 = Instant::now();
        let mut s = GarpSchedule::new(&GarpConfig::min_garp(), vips(), t0);
        assert_eq!(
            s.poll(t0),
            GarpDue {
                announce: vips(),
                next_wake: None
            }
        );
        // Zero repeat: nothing at all.
        let c = GarpConfig {
            master_repeat: 0,
            ..GarpConfig::default()
        };
        let mut s = GarpSchedule::new(&c, vips(), t0);
        assert!(s.is_finished());
        assert!(s.poll(t0).announce.is_empty());
        // No VIPs: nothing either.
        assert!(GarpSchedule::new(&GarpConfig::default(), vec![], t0).is_finished());
    }

    #[test]
    fn interval_spaces_every_frame() {
        let t0 = Instant::now();
        let c = GarpConfig {
            master_delay: ms(1000),
            master_repeat: 2,
            interval: ms(10),
            ..GarpConfig::default()
        };
        let mut s = GarpSchedule::new(&c, vips(), t0);
        let got = simulate(&mut s, t0, t0 + ms(5000));
        assert_eq!(
            got,
            vec![
                (ms(0), 1),
                (ms(10), 1),
                (ms(20), 1),
                (ms(30), 1),
                (ms(1000), 1),
                (ms(1010), 1),
                (ms(1020), 1),
                (ms(1030), 1),
            ]
        );
        assert!(s.is_finished());

        // Woken late: one frame now, the next an interval later (the interval is the
        // least time between two), the burst's end as late.
        let mut s = GarpSchedule::new(&c, vips(), t0);
        let due = s.poll(t0 + ms(25));
        assert_eq!(due.announce, vips()[..1].to_vec());
        assert_eq!(due.next_wake, Some(t0 + ms(35)));
        let due = s.poll(t0 + ms(35));
        assert_eq!(due.announce, vips()[1..2].to_vec());
        assert_eq!(due.next_wake, Some(t0 + ms(45)));
    }

    #[test]
    fn refresh_runs_forever_on_time() {
        let t0 = Instant::now();
        let c = GarpConfig {
            master_delay: Duration::from_secs(5),
            master_repeat: 1,
            master_refresh: Duration::from_secs(60),
            master_refresh_repeat: 2,
            interval: Duration::ZERO,
        };
        let mut s = GarpSchedule::new(&c, vips(), t0);
        let s_ = Duration::from_secs;
        let got = simulate(&mut s, t0, t0 + s_(200));
        assert_eq!(
            got,
            vec![
                (s_(0), 2),
                (s_(5), 2),
                (s_(60), 4),
                (s_(120), 4),
                (s_(180), 4)
            ]
        );
        assert_eq!(s.next_wake(), Some(t0 + s_(240)));
        assert!(!s.is_finished());
    }

    #[test]
    fn refresh_skips_missed_bursts() {
        let t0 = Instant::now();
        let c = GarpConfig {
            master_delay: Duration::ZERO,
            master_repeat: 1,
            master_refresh: Duration::from_secs(10),
            master_refresh_repeat: 1,
            interval: Duration::ZERO,
        };
        let mut s = GarpSchedule::new(&c, vips(), t0);
        assert_eq!(s.poll(t0).announce.len(), 2);
        // Asleep for 95 s: bursts at 10..=90 s are due; one is sent (plus the one
        // that was pending), not nine.
        let due = s.poll(t0 + Duration::from_secs(95));
        assert_eq!(due.announce.len(), 4);
        assert_eq!(due.next_wake, Some(t0 + Duration::from_secs(100)));
        // A tiny period over a long sleep does not loop for ages.
        let c = GarpConfig {
            master_refresh: Duration::from_nanos(1),
            ..c
        };
        let mut s = GarpSchedule::new(&c, vips(), t0);
        let due = s.poll(t0 + Duration::from_secs(86_400 * 365));
        assert!(due.announce.len() <= 6, "{}", due.announce.len());
        assert!(due.next_wake.is_some());
    }

    #[test]
    fn extra_bursts_and_limits() {
        let t0 = Instant::now();
        let mut s = GarpSchedule::new(&GarpConfig::min_garp(), vips(), t0);
        assert_eq!(s.poll(t0).announce.len(), 2);
        assert!(s.is_finished());
        // keepalived's garp_lower_prio_repeat: burst now and after the delay.
        let t1 = t0 + ms(700);
        s.add_burst(t1, 2);
        s.add_burst(t1 + Duration::from_secs(5), 2);
        assert_eq!(s.poll(t1).announce.len(), 4);
        assert_eq!(s.next_wake(), Some(t1 + Duration::from_secs(5)));

        // Huge values neither panic nor flood.
        let c = GarpConfig {
            master_delay: Duration::MAX,
            master_repeat: u32::MAX,
            master_refresh: Duration::MAX,
            master_refresh_repeat: u32::MAX,
            interval: Duration::MAX,
        };
        assert!(c.validate().is_err());
        let mut s = GarpSchedule::new(&c, vips(), t0);
        let due = s.poll(t0 + Duration::from_secs(1));
        assert_eq!(due.announce, vips()[..1].to_vec());
        assert_eq!(due.next_wake, None);
        let c = GarpConfig {
            master_repeat: 1000,
            ..GarpConfig::default()
        };
        assert!(matches!(c.validate(), Err(GarpError::Config(_))));
        let mut s = GarpSchedule::new(&c, vips(), t0);
        assert_eq!(s.poll(t0).announce.len(), 2 * MAX_REPEAT as usize);
    }
}

/// Root-only test: two namespaces joined by a veth pair. Namespace B holds stale
/// neighbour entries for the VIPs pointing at a bogus MAC; after A announces, B's
/// entries must point at A's MAC, and tcpdump in B must have seen the bursts.
#[cfg(test)]
mod netns_tests {
    use super::*;
    use crate::netlink::addr::VirtualAddress;
    use crate::netlink::test_netns::{
        have_tool, ifindex, in_netns, ip, link_mac, privileged, sysctl, Netns,
    };
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    const IF_A: &str = "ga0";
    const IF_B: &str = "gb0";
    const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
    const BOGUS_MAC: &str = "02:00:00:00:00:99";

    /// tcpdump started by this test; stopped (SIGINT to its own PID) on drop, and
    /// its capture file removed.
    struct Capture {
        child: Option<Child>,
        file: PathBuf,
    }

    impl Capture {
        fn start(ns: &str, iface: &str) -> Self {
            let file = std::env::temp_dir().join(format!("{ns}.pcap"));
            let _ = std::fs::remove_file(&file);
            let child = Command::new("ip")
                // --immediate-mode: otherwise frames wait in the kernel's TPACKET_V3
                // block (up to 1 s) and are lost when tcpdump is stopped.
                .args(["netns", "exec", ns, "tcpdump", "--immediate-mode"])
                .args(["-i", iface, "-n", "-U", "-w"])
                .arg(&file)
                .arg("arp or icmp6")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start tcpdump");
            let capture = Capture {
                child: Some(child),
                file,
            };
            // The file appears (with its 24-byte header) once the capture is live.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::metadata(&capture.file).map_or(0, |m| m.len()) < 24 {
                assert!(Instant::now() < deadline, "tcpdump did not start");
                std::thread::sleep(ms(20));
            }
            capture
        }

        /// Stop tcpdump and return the captured frames with their timestamps.
        fn stop(mut self) -> Vec<(Duration, Vec<u8>)> {
            self.interrupt();
            parse_pcap(&std::fs::read(&self.file).expect("read capture"))
        }

        fn interrupt(&mut self) {
            if let Some(mut child) = self.child.take() {
                // `ip netns exec` execs tcpdump, so this is tcpdump's own PID.
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: signalling a child we spawned and have not reaped.
                    unsafe { libc::kill(pid, libc::SIGINT) };
                }
                let _ = child.wait();
            }
        }
    }

    impl Drop for Capture {
        fn drop(&mut self) {
            self.interrupt();
            let _ = std::fs::remove_file(&self.file);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Classic pcap (as `tcpdump -w` writes it): (timestamp, frame) per record.
    fn parse_pcap(data: &[u8]) -> Vec<(Duration, Vec<u8>)> {
        let u32_at = |i: usize| u32::from_ne_bytes(data[i..i + 4].try_into().unwrap());
        let nanos = match u32_at(0) {
            0xa1b2_c3d4 => false,
            0xa1b2_3c4d => true,
            magic => panic!("unexpected pcap magic {magic:#x}"),
        };
        let mut frames = Vec::new();
        let mut i = 24;
        while i + 16 <= data.len() {
            let (sec, frac, len) = (u32_at(i), u32_at(i + 4), u32_at(i + 8) as usize);
            let ts = Duration::from_secs(sec.into())
                + if nanos {
                    Duration::from_nanos(frac.into())
                } else {
                    Duration::from_micros(frac.into())
                };
            let Some(frame) = data.get(i + 16..i + 16 + len) else {
                break;
            };
            frames.push((ts, frame.to_vec()));
            i += 16 + len;
        }
        frames
    }

    fn is_garp_for(f: &[u8], vip: Ipv4Addr) -> bool {
        f.get(12..14) == Some(&[0x08, 0x06]) && f.get(28..32) == Some(&vip.octets())
    }

    fn is_na_for(f: &[u8], vip: Ipv6Addr) -> bool {
        f.get(12..14) == Some(&[0x86, 0xdd])
            && f.get(20) == Some(&58)
            && f.get(54) == Some(&136)
            && f.get(62..78) == Some(&vip.octets())
    }

    /// `ip neigh show ADDR dev IF` in B, checked for `mac`.
    fn neigh_has(ns: &str, addr: &str, mac: &str) -> bool {
        ip(&["-n", ns, "neigh", "show", addr, "dev", IF_B]).contains(mac)
    }

    fn make_stale(ns: &str) {
        for addr in ["192.0.2.100", "2001:db8::100"] {
            ip(&[
                "-n", ns, "neigh", "replace", addr, "lladdr", BOGUS_MAC, "dev", IF_B, "nud",
                "stale",
            ]);
            assert!(neigh_has(ns, addr, BOGUS_MAC));
        }
    }

    /// Group frames into bursts separated by more than `gap`.
    fn bursts(frames: &[(Duration, Vec<u8>)], gap: Duration) -> Vec<Vec<&[u8]>> {
        let mut out: Vec<Vec<&[u8]>> = Vec::new();
        let mut last = None;
        for (ts, f) in frames {
            if last.is_none_or(|l: Duration| ts.saturating_sub(l) > gap) {
                out.push(Vec::new());
            }
            if let Some(b) = out.last_mut() {
                b.push(f);
            }
            last = Some(*ts);
        }
        out
    }

    #[test]
    fn announcements_update_stale_neighbours_in_netns() {
        if !privileged("garp::announcements_update_stale_neighbours_in_netns")
            || !have_tool("tcpdump", "garp netns test")
        {
            return;
        }
        let a = Netns::create("garpa");
        let b = Netns::create("garpb");
        ip(&[
            "-n", &a.0, "link", "add", IF_A, "type", "veth", "peer", "name", IF_B, "netns", &b.0,
        ]);
        // A's link-local address must be usable at once for the LinkLocal case.
        sysctl(&a.0, &format!("net.ipv6.conf.{IF_A}.accept_dad=0"));
        for (ns, iface, v4, v6) in [
            (&a, IF_A, "192.0.2.1/24", "2001:db8::1/64"),
            (&b, IF_B, "192.0.2.2/24", "2001:db8::2/64"),
        ] {
            ip(&["-n", &ns.0, "addr", "add", v4, "dev", iface]);
            ip(&["-n", &ns.0, "addr", "add", v6, "dev", iface, "nodad"]);
            ip(&["-n", &ns.0, "link", "set", iface, "up"]);
        }
        // IPv6 on a link becomes ready (link-local address, the ff00::/8 route that
        // incoming ff02::1 traffic needs) only once the kernel has seen the carrier
        // come up, up to a second after `link set up`.
        for (ns, iface) in [(&a, IF_A), (&b, IF_B)] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ip(&[
                "-n", &ns.0, "-6", "route", "show", "table", "local", "dev", iface,
            ])
            .contains("ff00::/8")
            {
                assert!(
                    Instant::now() < deadline,
                    "IPv6 on {iface} never became ready"
                );
                std::thread::sleep(ms(50));
            }
        }
        let mac = link_mac(&a.0, IF_A);
        let mac_text = Mac(mac).to_string();
        make_stale(&b.0);
        let capture = Capture::start(&b.0, IF_B);

        // 1. keepalived's default frame forms, two bursts of 3 rounds 400 ms apart.
        let config = GarpConfig {
            master_delay: ms(400),
            master_repeat: 3,
            ..GarpConfig::default()
        };
        let elapsed = in_netns(&a.0, move || async move {
            let idx = ifindex(IF_A);
            let mut addrs = AddressSocket::open().expect("netlink");
            for vip in [
                VirtualAddress::new(IpAddr::V4(VIP4), idx).with_prefix(24),
                VirtualAddress::new(IpAddr::V6(VIP6), idx).with_prefix(64),
            ] {
                addrs.add(&vip).await.expect("add VIP");
            }
            let mut sender = GarpSender::open(idx, AnnounceOptions::default()).expect("open");
            assert_eq!(sender.mac().unwrap(), mac);
            let start = Instant::now();
            let mut schedule =
                GarpSchedule::new(&config, vec![IpAddr::V4(VIP4), IpAddr::V6(VIP6)], start);
            tokio::time::timeout(
                Duration::from_secs(10),
                run_schedule(&mut sender, &mut schedule),
            )
            .await
            .expect("schedule did not finish");
            start.elapsed()
        });
        assert!(elapsed >= ms(400), "{elapsed:?}");
        for addr in ["192.0.2.100", "2001:db8::100"] {
            assert!(
                neigh_has(&b.0, addr, &mac_text),
                "{addr}: {}",
                ip(&["-n", &b.0, "neigh", "show", addr])
            );
        }

        // 2. The alternative forms: RFC 5227 zero target MAC, NA from the link-local.
        // (After a pause, so these frames form a burst of their own in the capture.)
        std::thread::sleep(ms(300));
        make_stale(&b.0);
        let link_local = in_netns(&a.0, move || async move {
            let idx = ifindex(IF_A);
            let options = AnnounceOptions {
                arp_target_mac: ArpTargetMac::Zero,
                na_source: NaSource::LinkLocal,
                na_router: false,
            };
            let mut sender = GarpSender::open(idx, options).expect("open");
            sender
                .announce(&[IpAddr::V4(VIP4), IpAddr::V6(VIP6)])
                .await
                .expect("announce");
            let addrs = AddressSocket::open()
                .unwrap()
                .list(Some(idx))
                .await
                .unwrap();
            pick_link_local(&addrs, idx).expect("A has a link-local address")
        });
        for addr in ["192.0.2.100", "2001:db8::100"] {
            assert!(
                neigh_has(&b.0, addr, &mac_text),
                "{addr} after the second round"
            );
        }

        // What B saw on the wire.
        std::thread::sleep(ms(100));
        let frames: Vec<_> = capture
            .stop()
            .into_iter()
            .filter(|(_, f)| is_garp_for(f, VIP4) || is_na_for(f, VIP6))
            .collect();
        assert_eq!(frames.len(), 6 + 6 + 2, "{} frames", frames.len());
        let groups = bursts(&frames, ms(150));
        assert_eq!(
            groups.len(),
            3,
            "bursts: {:?}",
            groups.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let garp = gratuitous_arp(mac, VIP4, ArpTargetMac::Broadcast);
        let na = unsolicited_na(mac, VIP6, VIP6, false);
        for burst in &groups[..2] {
            assert_eq!(burst.iter().filter(|f| **f == &garp[..]).count(), 3);
            assert_eq!(burst.iter().filter(|f| **f == &na[..]).count(), 3);
            assert_eq!(burst.len(), 6);
        }
        let (t_first, t_second) = (frames[0].0, frames[6].0);
        assert!(t_second - t_first >= ms(390), "{:?}", t_second - t_first);
        let last = &groups[2];
        assert_eq!(last.len(), 2);
        assert!(last.contains(&&gratuitous_arp(mac, VIP4, ArpTargetMac::Zero)[..]));
        assert!(last.contains(&&unsolicited_na(mac, link_local, VIP6, false)[..]));
    }

    #[test]
    fn loopback_is_not_ethernet() {
        if !privileged("garp::loopback_is_not_ethernet") {
            return;
        }
        let ns = Netns::create("garplo");
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        in_netns(&ns.0, || async {
            let err = GarpSender::open(ifindex("lo"), AnnounceOptions::default()).unwrap_err();
            assert!(
                matches!(err, GarpError::NotEthernet { hatype: 772, .. }),
                "{err}"
            );
            let err = GarpSender::open(999_999, AnnounceOptions::default()).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
        });
    }
}
