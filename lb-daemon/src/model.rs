//! The ground floor's model: the few values every part of the daemon names the same way
//! (a service's key, its protocol and scheduler, a VRRP version, a MAC address, an XDP
//! mode). Nothing here depends on anything else of the daemon, so the configuration, the
//! protocol cores and the I/O shells can all share them without reaching each other.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

/// Layer-4 protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// As keepalived and ipvsadm write it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => lb_common::PROTO_TCP,
            Proto::Udp => lb_common::PROTO_UDP,
        }
    }

    /// IPVS's idle timeouts (`ipvsadm --set`): 900 s for established TCP, 300 s for UDP.
    pub fn default_idle_timeout(self) -> u32 {
        match self {
            Proto::Tcp => 900,
            Proto::Udp => 300,
        }
    }
}

/// IPVS scheduler names (`lb_algo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Round robin, per flow.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Source hashing.
    Sh,
    /// Maglev hashing.
    Mh,
    /// Least connections.
    Lc,
    /// Weighted least connections: keepalived's default.
    Wlc,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Weighted failover.
    Fo,
    /// Weighted overflow.
    Ovf,
}

impl Scheduler {
    /// Every scheduler, with its keepalived name.
    pub const ALL: [(Scheduler, &'static str); 10] = [
        (Scheduler::Rr, "rr"),
        (Scheduler::Wrr, "wrr"),
        (Scheduler::Sh, "sh"),
        (Scheduler::Mh, "mh"),
        (Scheduler::Lc, "lc"),
        (Scheduler::Wlc, "wlc"),
        (Scheduler::Sed, "sed"),
        (Scheduler::Nq, "nq"),
        (Scheduler::Fo, "fo"),
        (Scheduler::Ovf, "ovf"),
    ];

    /// The program's code for it (`SERVICE_INFO.sched`).
    pub fn code(self) -> u32 {
        match self {
            Scheduler::Rr => lb_common::SCHED_RR,
            Scheduler::Wrr => lb_common::SCHED_WRR,
            Scheduler::Sh => lb_common::SCHED_SH,
            Scheduler::Mh => lb_common::SCHED_MH,
            Scheduler::Lc => lb_common::SCHED_LC,
            Scheduler::Wlc => lb_common::SCHED_WLC,
            Scheduler::Sed => lb_common::SCHED_SED,
            Scheduler::Nq => lb_common::SCHED_NQ,
            Scheduler::Fo => lb_common::SCHED_FO,
            Scheduler::Ovf => lb_common::SCHED_OVF,
        }
    }

    /// The scheduler of a program code.
    pub fn of_code(code: u32) -> Option<Scheduler> {
        Self::ALL.iter().map(|(s, _)| *s).find(|s| s.code() == code)
    }

    /// keepalived's (and ipvsadm's) name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("?", |(_, n)| n)
    }

    /// Chooses by connection counts (its ring holds every live backend once).
    pub fn counts(self) -> bool {
        matches!(
            self,
            Scheduler::Lc
                | Scheduler::Wlc
                | Scheduler::Sed
                | Scheduler::Nq
                | Scheduler::Fo
                | Scheduler::Ovf
        )
    }
}

impl std::str::FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .find(|(_, n)| *n == s)
            .map(|(sched, _)| *sched)
            .ok_or_else(|| {
                format!(
                    "unknown scheduler {s:?} (expected one of {})",
                    Self::ALL.map(|(_, n)| n).join(", ")
                )
            })
    }
}

/// keepalived's `uthreshold`/`lthreshold` (IPVS `-x`/`-y`): at `upper` connections (active
/// and inactive) a real server takes no new one until they fall below `lower` (0: three
/// quarters of `upper`). 0 and 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub upper: u32,
    pub lower: u32,
}

/// How a TUN real server's packets are wrapped: keepalived's `lvs_method TUN type ...`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// IPv4 in IPv4 (protocol 4), IPv6 in IPv6 (41): keepalived's and IPVS's default.
    #[default]
    Ipip,
    /// GUE over UDP to a port (keepalived's `type gue port N`).
    Gue,
    /// GRE (keepalived's `type gre`).
    Gre,
}

impl TunnelKind {
    pub const ALL: [TunnelKind; 3] = [TunnelKind::Ipip, TunnelKind::Gue, TunnelKind::Gre];

    /// keepalived's name, and the TOML's.
    pub fn name(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipip",
            TunnelKind::Gue => "gue",
            TunnelKind::Gre => "gre",
        }
    }

    /// The kind of a program's code (`lb_common::TUN_*`).
    pub fn of_code(code: u8) -> Option<Self> {
        TunnelKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// The program's code (`lb_common::TUN_*`).
    pub fn code(self) -> u8 {
        match self {
            TunnelKind::Ipip => lb_common::TUN_IPIP,
            TunnelKind::Gue => lb_common::TUN_GUE,
            TunnelKind::Gre => lb_common::TUN_GRE,
        }
    }
}

impl std::str::FromStr for TunnelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TunnelKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?}: expected ipip, gue or gre"))
    }
}

/// How a real server is reached: IPVS's forwarding method, keepalived's `lb_kind` /
/// `lvs_method`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Forward {
    /// Direct routing: the frame as it came, its MACs rewritten (`DR`).
    #[default]
    Dr,
    /// Inside a tunnel (`TUN`).
    Tun(Tunnel),
    /// NAT (`NAT`, IPVS's masquerading): the destination rewritten to the real server's
    /// address and port, its replies' source back to the VIP's.
    Nat,
}

impl Forward {
    /// The tunnel of a TUN real server.
    pub fn tunnel(&self) -> Option<Tunnel> {
        match self {
            Forward::Tun(t) => Some(*t),
            _ => None,
        }
    }

    /// Direct routing: the only method that needs the real server's MAC.
    pub fn is_dr(&self) -> bool {
        matches!(self, Forward::Dr)
    }
}

/// The outer TTL (hop limit) of tunnelled packets by default.
pub const DEFAULT_TUNNEL_TTL: u8 = 64;

/// IPVS's TUN forwarding of one real server: the packet, whole, inside an outer header from
/// `source` (`None`: the interface's primary address of the family) to the real server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub kind: TunnelKind,
    /// GUE's UDP destination port (0 for the others).
    pub port: u16,
    pub ttl: u8,
    pub source: Option<std::net::IpAddr>,
}

/// keepalived's `lvs_timeouts` (`ipvsadm --set tcp tcpfin udp`): the idle timeouts of an
/// established TCP connection, of one the client closed (FIN_WAIT) and of a UDP flow, in
/// seconds; `None` keeps IPVS's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LvsTimeouts {
    pub tcp: Option<u32>,
    pub tcpfin: Option<u32>,
    pub udp: Option<u32>,
}

impl LvsTimeouts {
    /// The timeout of every connection state (`lb_common::conn_state`), as the program
    /// reads them.
    pub fn per_state(&self) -> [u32; lb_common::conn_state::COUNT as usize] {
        use lb_common::conn_state::{DEFAULT_TIMEOUTS, ESTABLISHED, FIN_WAIT, UDP};
        let mut t = DEFAULT_TIMEOUTS;
        for (state, v) in [
            (ESTABLISHED, self.tcp),
            (FIN_WAIT, self.tcpfin),
            (UDP, self.udp),
        ] {
            if let Some(v) = v {
                t[state as usize] = v;
            }
        }
        t
    }
}

/// A virtual service as IPVS keys it: VIP, port, protocol. Health, status, sync, tracking
/// and the daemon's state all find a service by this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl ServiceKey {
    pub fn new(vip: IpAddr, port: u16, proto: Proto) -> Self {
        ServiceKey { vip, port, proto }
    }
}

/// How logs, status and `track_virtual_server` name a service: `VIP:PORT/TCP`, with an IPv6
/// VIP in brackets.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            SocketAddr::new(self.vip, self.port),
            self.proto.name()
        )
    }
}

/// A service as an operator names it: `VIP:PORT`, then `/TCP` or `/UDP` (either case)
/// or nothing (`None`: the caller decides, as `track_virtual_server` and `lb-daemon
/// real-server` do when only one protocol has that VIP and port). An IPv6 VIP in brackets.
pub fn parse_service_name(name: &str) -> Result<(SocketAddr, Option<Proto>), String> {
    let (addr, proto) = match name.rsplit_once('/') {
        Some((a, p)) => match p.to_ascii_uppercase().as_str() {
            "TCP" => (a, Some(Proto::Tcp)),
            "UDP" => (a, Some(Proto::Udp)),
            _ => return Err(format!("{name:?}: the protocol must be TCP or UDP")),
        },
        None => (name, None),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("{name:?} is not VIP:PORT (an IPv6 VIP in brackets)"))?;
    Ok((addr, proto))
}

/// `IP` or `IP:PORT` (an IPv6 address with a port in brackets), as an operator names a real
/// server or a client.
pub fn parse_ip_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    s.trim_matches(['[', ']'])
        .parse()
        .map(|ip| (ip, None))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT"))
}

/// A [`ServiceKey`] as its `Display` writes it (`VIP:PORT/PROTO`, the protocol required).
pub fn parse_service_key(name: &str) -> Result<ServiceKey, String> {
    match parse_service_name(name)? {
        (addr, Some(proto)) => Ok(ServiceKey::new(addr.ip(), addr.port(), proto)),
        (_, None) => Err(format!("{name:?}: add /TCP or /UDP")),
    }
}

/// A runtime change to a real server (`lb-daemon real-server`), what `ipvsadm -e` does:
/// see the daemon's `overrides` module for what each means.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RealServerAction {
    Drain,
    Weight(u32),
    Disable,
    Enable,
    Reset,
}

/// The VRRP version of an instance: it decides the packet format (RFC 3768 against RFC
/// 9568) and the timer formulas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VrrpVersion {
    /// RFC 3768: IPv4 only, 8-bit interval in seconds, authentication; Skew_Time is
    /// `(256 - Priority) / 256` s and the advert interval is always the configured one.
    V2,
    /// RFC 9568: IPv4 and IPv6, 12-bit interval in centiseconds, no authentication;
    /// Skew_Time scales with Master_Adver_Interval, which backups learn from adverts.
    V3,
}

impl VrrpVersion {
    /// The version field of the header.
    pub const fn number(self) -> u8 {
        match self {
            VrrpVersion::V2 => 2,
            VrrpVersion::V3 => 3,
        }
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

/// `aa:bb:cc:dd:ee:ff`, as `ip link` writes it; in one write, without the formatting
/// machinery per byte (a status of 100,000 backends writes as many: 20 ms that way).
impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[3 * i] = HEX[usize::from(b >> 4)];
            out[3 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        // Hex digits and colons only.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl From<[u8; 6]> for Mac {
    fn from(b: [u8; 6]) -> Self {
        Mac(b)
    }
}

/// `[dataplane] xdp_mode`: where the program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver.
    Native,
    /// Generic XDP, after the kernel built an skb.
    Skb,
    /// Native, with a fallback to skb.
    Auto,
}

impl std::str::FromStr for XdpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Self::Native),
            "skb" => Ok(Self::Skb),
            "auto" => Ok(Self::Auto),
            o => Err(format!(
                "unknown XDP mode {o:?} (expected native, skb or auto)"
            )),
        }
    }
}

/// The sizes of the maps the program was loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Service slots: `SERVICE_INFO`, `RR_STATE` and `SERVICE_STATS` hold this many, the
    /// key maps twice as many (each service's key and at most one fragments-only key).
    pub services: u32,
    /// Backend slots: `BACKENDS`, `BACKEND_STATS`.
    pub backends: u32,
    /// `RINGS` slots, shared by every service's ring.
    pub ring_slots: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            services: lb_common::DEFAULT_MAX_SERVICES,
            backends: lb_common::DEFAULT_MAX_BACKENDS,
            ring_slots: lb_common::DEFAULT_RING_SLOTS,
        }
    }
}

impl Limits {
    /// The most this daemon will load: far beyond any configuration seen in practice, and
    /// low enough that every map fits memory (`RINGS` at the ceiling is 1 GiB; the per-CPU
    /// counters of the service and backend slots cost 24 bytes a slot a CPU).
    pub const CEILING: Limits = Limits {
        services: 1 << 18,
        backends: 1 << 21,
        ring_slots: 1 << 28,
    };

    /// Whether maps of these sizes hold everything `needs` uses.
    pub fn covers(&self, needs: &Limits) -> bool {
        self.services >= needs.services
            && self.backends >= needs.backends
            && self.ring_slots >= needs.ring_slots
    }

    /// Each size the larger of the two.
    pub fn max(self, o: Limits) -> Limits {
        Limits {
            services: self.services.max(o.services),
            backends: self.backends.max(o.backends),
            ring_slots: self.ring_slots.max(o.ring_slots),
        }
    }

    /// Room for `needs` and half as much again, never less than the compiled-in sizes, never
    /// more than [`Limits::CEILING`]: a configuration that grows a few services at a time
    /// replaces the maps only once in a while.
    pub fn with_headroom(needs: Limits) -> Limits {
        let grow = |n: u32, min: u32, max: u32| n.saturating_add(n / 2).max(min).min(max);
        let d = Limits::default();
        let c = Limits::CEILING;
        Limits {
            services: grow(needs.services, d.services, c.services),
            backends: grow(needs.backends, d.backends, c.backends),
            ring_slots: grow(needs.ring_slots, d.ring_slots, c.ring_slots),
        }
    }

    /// The first size above the ceiling, as (what, size, ceiling).
    pub fn beyond_ceiling(&self) -> Option<(&'static str, u32, u32)> {
        let c = Limits::CEILING;
        [
            ("services", self.services, c.services),
            ("real servers", self.backends, c.backends),
            ("ring slots", self.ring_slots, c.ring_slots),
        ]
        .into_iter()
        .find(|(_, n, max)| n > max)
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} services, {} real servers, {} ring slots",
            self.services, self.backends, self.ring_slots
        )
    }
}

/// Deterministic primality test by trial division (at most ~22k divisions for a `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime > 3 is 6k ± 1.
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// Connection sync's limits, as the `[sync]` keys are checked against them
/// (`sync/codec.rs` asserts they agree with its layout).
pub mod sync_wire {
    use std::net::Ipv4Addr;

    /// IPVS's sync port and multicast group (`ip_vs_sync.c`: `IP_VS_SYNC_PORT`, `IP_VS_SYNC_GROUP`).
    pub const DEFAULT_PORT: u16 = 8848;
    pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 81);
    /// The UDP payload of a 1500-byte IPv4 packet.
    pub const DEFAULT_MAX_MESSAGE: usize = 1472;
    /// The smallest message size that always holds one IPv6 entry with its reference (header,
    /// reference, entry, tag).
    pub const MIN_MESSAGE: usize = 20 + 38 + 24 + 16;
    /// The largest: a UDP payload.
    pub const MAX_MESSAGE: usize = 65507;
    /// Keys shorter than this are refused (HMAC-SHA256 wants at least 32; 16 is a floor).
    pub const MIN_KEY_LEN: usize = 16;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_keepalived_and_ip_write_them() {
        let v4 = ServiceKey::new("192.0.2.10".parse().unwrap(), 80, Proto::Tcp);
        assert_eq!(v4.to_string(), "192.0.2.10:80/TCP");
        let v6 = ServiceKey::new("2001:db8::1".parse().unwrap(), 53, Proto::Udp);
        assert_eq!(v6.to_string(), "[2001:db8::1]:53/UDP");
        assert_eq!(
            Mac([0x02, 0, 0xab, 0xcd, 0xef, 0x01]).to_string(),
            "02:00:ab:cd:ef:01"
        );
        for mac in [[0; 6], [0xff; 6], [0xa0, 0x1f, 0x9e, 0x5, 0x50, 0xc]] {
            let [a, b, c, d, e, g] = mac;
            let slow = format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}");
            assert_eq!(Mac(mac).to_string(), slow);
        }
        assert_eq!("wrr".parse::<Scheduler>(), Ok(Scheduler::Wrr));
        for (sched, name) in Scheduler::ALL {
            assert_eq!(name.parse::<Scheduler>(), Ok(sched));
            assert_eq!(sched.name(), name);
            assert_eq!(Scheduler::of_code(sched.code()), Some(sched));
        }
        assert!("lblc"
            .parse::<Scheduler>()
            .unwrap_err()
            .contains("\"lblc\""));
        assert_eq!("auto".parse::<XdpMode>(), Ok(XdpMode::Auto));
        assert!("drv".parse::<XdpMode>().is_err());
    }
}
