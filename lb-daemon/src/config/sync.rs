//! The `[sync]` section: connection sync between the LB pair (IPVS's sync daemon,
//! keepalived's `lvs_sync_daemon`), or, under `[announce]` and without a `vrrp_instance`,
//! between every node that announces the same VIPs.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use serde::Deserialize;
use toml::Spanned;

use super::{AnnounceConfig, ConfigError, Ctx, VirtualServer, VrrpInstance};
use crate::model::sync_wire;

/// The default refresh interval, seconds: a flow with traffic is sent again at most this
/// often.
pub const DEFAULT_REFRESH_INTERVAL: u32 = 8;
/// The default bound on sync traffic, bytes per second (100 Mbit/s).
pub const DEFAULT_MAX_RATE: u64 = 12_500_000;
/// The default size of the XDP program's event ring, bytes.
pub const DEFAULT_RING_SIZE: u32 = 4 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    interface: Spanned<String>,
    vrrp_instance: Option<Spanned<String>>,
    sync_id: Option<Spanned<u32>>,
    #[serde(default)]
    peers: Vec<Spanned<String>>,
    multicast_group: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    ttl: Option<Spanned<u32>>,
    key_file: Spanned<String>,
    max_rate: Option<Spanned<u64>>,
    max_message: Option<Spanned<u32>>,
    refresh_interval: Option<Spanned<u32>>,
    ring_size: Option<Spanned<u32>>,
}

impl RawSync {
    pub(super) fn interface_span(&self) -> std::ops::Range<usize> {
        self.interface.span()
    }
}

/// A checked `[sync]` section.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Where sync messages are sent and received (IPVS's sync interface).
    pub interface: String,
    /// The instance whose master sends: services on its VIPs are synced. `None`: every node
    /// sends and installs (active-active): the services on `[announce]`'s VIPs are synced.
    pub vrrp_instance: Option<String>,
    /// IPVS's syncid: messages with another are dropped. Default: the instance's VRID (0
    /// without one).
    pub sync_id: u8,
    /// Unicast: where messages go, and the only sources accepted. With a multicast group:
    /// the only sources accepted (any source with the key, when empty).
    pub peers: Vec<IpAddr>,
    /// Send to this IPv4 group instead of to each peer (IPVS's 224.0.0.81).
    pub multicast_group: Option<Ipv4Addr>,
    pub port: u16,
    /// IP TTL (multicast) of the messages.
    pub ttl: u8,
    /// The shared key, read at start (root-only, at least 16 bytes).
    pub key_file: PathBuf,
    /// The line of `key_file`, for errors about the file.
    pub key_line: usize,
    /// Bytes per second of sync messages at most.
    pub max_rate: u64,
    /// Bytes of UDP payload per message at most (keepalived's `maxlen`).
    pub max_message: usize,
    /// A flow with traffic is sent again when it enters a new window of this many seconds
    /// (a power of two).
    pub refresh_interval: u32,
    /// Bytes of the XDP program's event ring (a power of two, at least 4096).
    pub ring_size: u32,
}

/// Every setting, but not where `key_file` was written: a reload of the same settings on
/// other lines is the same section.
impl PartialEq for SyncConfig {
    fn eq(&self, o: &Self) -> bool {
        let SyncConfig {
            interface,
            vrrp_instance,
            sync_id,
            peers,
            multicast_group,
            port,
            ttl,
            key_file,
            key_line: _,
            max_rate,
            max_message,
            refresh_interval,
            ring_size,
        } = self;
        (
            interface,
            vrrp_instance,
            sync_id,
            peers,
            multicast_group,
            port,
            ttl,
            key_file,
            max_rate,
            max_message,
            refresh_interval,
            ring_size,
        ) == (
            &o.interface,
            &o.vrrp_instance,
            &o.sync_id,
            &o.peers,
            &o.multicast_group,
            &o.port,
            &o.ttl,
            &o.key_file,
            &o.max_rate,
            &o.max_message,
            &o.refresh_interval,
            &o.ring_size,
        )
    }
}

impl Eq for SyncConfig {}

impl SyncConfig {
    /// The program's refresh shift: `refresh_interval` is 2^shift seconds.
    pub fn refresh_shift(&self) -> u32 {
        self.refresh_interval.trailing_zeros()
    }

    /// Where messages go: the group, or every peer.
    pub fn destinations(&self) -> Vec<std::net::SocketAddr> {
        match self.multicast_group {
            Some(g) => vec![(g, self.port).into()],
            None => self.peers.iter().map(|p| (*p, self.port).into()).collect(),
        }
    }
}

/// Which services are synced.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    /// Those on the sync instance's VIPs.
    Instance(&'a VrrpInstance),
    /// Those on the announced VIPs (every node sends).
    Announced(&'a AnnounceConfig),
}

impl Scope<'_> {
    /// Whether `vs` is synced: its VIP is one of the sync instance's, or announced.
    pub fn synced(&self, vs: &VirtualServer) -> bool {
        match self {
            Scope::Instance(inst) => {
                !vs.is_static && inst.virtual_ipaddress.iter().any(|v| v.addr == vs.vip)
            }
            Scope::Announced(a) => vs.addresses().any(|(ip, _)| a.announces(ip)),
        }
    }
}

/// What `c`'s services `config`'s `[sync]` covers; `None` without a `[sync]` (or with an
/// instance that is not there, which the checks refuse).
pub fn scope(config: &super::Config) -> Option<Scope<'_>> {
    let s = config.sync.as_ref()?;
    match &s.vrrp_instance {
        Some(name) => config
            .vrrp_instances
            .iter()
            .find(|i| i.name == *name)
            .map(Scope::Instance),
        None => config.announce.as_ref().map(Scope::Announced),
    }
}

pub(super) fn sync(
    cx: &Ctx,
    s: &RawSync,
    instances: &[VrrpInstance],
    announce: Option<&AnnounceConfig>,
    services: &[std::sync::Arc<VirtualServer>],
    lvs: &crate::model::LvsTimeouts,
) -> Result<SyncConfig, ConfigError> {
    let key = |k: &str| format!("sync.{k}");
    if s.interface.get_ref().is_empty() {
        return Err(cx.invalid(s.interface.span(), &key("interface"), "empty"));
    }
    let scope = match (&s.vrrp_instance, announce) {
        (Some(name), Some(_)) => {
            return Err(cx.invalid(
                name.span(),
                &key("vrrp_instance"),
                "with [announce], [sync] is every node's: it syncs the announced VIPs' flows \
                 among all peers, and cannot follow a VRRP instance too: leave vrrp_instance out",
            ))
        }
        (Some(name), None) => Scope::Instance(
            instances
                .iter()
                .find(|i| i.name == *name.get_ref())
                .ok_or_else(|| {
                    cx.invalid(
                        name.span(),
                        &key("vrrp_instance"),
                        format!(
                            "no vrrp_instance {:?}: its master sends the flows",
                            name.get_ref()
                        ),
                    )
                })?,
        ),
        (None, Some(a)) => Scope::Announced(a),
        (None, None) => {
            return Err(cx.invalid(
                s.interface.span(),
                "sync",
                "needs a vrrp_instance (whose master sends the flows), or an [announce] \
                 section (every node sends)",
            ))
        }
    };
    let scope_span = s
        .vrrp_instance
        .as_ref()
        .map_or(s.interface.span(), Spanned::span);
    let sync_id = match &s.sync_id {
        None => match scope {
            Scope::Instance(inst) => inst.vrid,
            Scope::Announced(_) => 0,
        },
        Some(id) => u8::try_from(*id.get_ref())
            .map_err(|_| cx.invalid(id.span(), &key("sync_id"), "out of range 0..=255"))?,
    };
    let mut peers: Vec<IpAddr> = Vec::new();
    for p in &s.peers {
        let a: IpAddr = p.get_ref().parse().map_err(|_| {
            cx.invalid(
                p.span(),
                &key("peers"),
                format!("{:?} is not an IP address", p.get_ref()),
            )
        })?;
        if peers.contains(&a) {
            return Err(cx.invalid(p.span(), &key("peers"), format!("{a} is listed twice")));
        }
        peers.push(a);
    }
    let multicast_group = match &s.multicast_group {
        None => None,
        Some(g) => match g.get_ref().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if a.is_multicast() => Some(a),
            _ => {
                return Err(cx.invalid(
                    g.span(),
                    &key("multicast_group"),
                    format!("{:?} is not an IPv4 multicast address", g.get_ref()),
                ))
            }
        },
    };
    if multicast_group.is_none() && peers.is_empty() {
        return Err(cx.invalid(
            s.interface.span(),
            "sync",
            "needs peers (where to send, and whom to accept) or a multicast_group",
        ));
    }
    if peers.iter().any(IpAddr::is_ipv6) && peers.iter().any(IpAddr::is_ipv4) {
        return Err(cx.invalid(
            s.peers[0].span(),
            &key("peers"),
            "all IPv4 or all IPv6: one socket sends to them",
        ));
    }
    if multicast_group.is_some() && peers.iter().any(IpAddr::is_ipv6) {
        return Err(cx.invalid(
            s.peers[0].span(),
            &key("peers"),
            "a multicast group is IPv4: its peers must be IPv4 too",
        ));
    }
    let port = match &s.port {
        None => sync_wire::DEFAULT_PORT,
        Some(p) if *p.get_ref() == 0 => {
            return Err(cx.invalid(p.span(), &key("port"), "must be at least 1"))
        }
        Some(p) => *p.get_ref(),
    };
    let ttl = match &s.ttl {
        None => 1,
        Some(t) => match u8::try_from(*t.get_ref()) {
            Ok(t) if t >= 1 => t,
            _ => return Err(cx.invalid(t.span(), &key("ttl"), "out of range 1..=255")),
        },
    };
    let key_file = PathBuf::from(s.key_file.get_ref());
    if !key_file.is_absolute() {
        return Err(cx.invalid(
            s.key_file.span(),
            &key("key_file"),
            "must be an absolute path",
        ));
    }
    let max_message = match &s.max_message {
        None => sync_wire::DEFAULT_MAX_MESSAGE,
        Some(m) => {
            let v = *m.get_ref() as usize;
            if !(sync_wire::MIN_MESSAGE..=sync_wire::MAX_MESSAGE).contains(&v) {
                return Err(cx.invalid(
                    m.span(),
                    &key("max_message"),
                    format!(
                        "out of range {}..={} bytes",
                        sync_wire::MIN_MESSAGE,
                        sync_wire::MAX_MESSAGE
                    ),
                ));
            }
            v
        }
    };
    let max_rate = match &s.max_rate {
        None => DEFAULT_MAX_RATE,
        Some(r) if (*r.get_ref() as usize) < max_message * 10 => {
            return Err(cx.invalid(
                r.span(),
                &key("max_rate"),
                format!(
                    "at least ten messages a second: {} bytes per second",
                    max_message * 10
                ),
            ))
        }
        Some(r) => *r.get_ref(),
    };
    let refresh_interval = match &s.refresh_interval {
        None => DEFAULT_REFRESH_INTERVAL,
        Some(r) => {
            let v = *r.get_ref();
            if !v.is_power_of_two() || v > 1024 {
                return Err(cx.invalid(
                    r.span(),
                    &key("refresh_interval"),
                    "must be a power of two of seconds, at most 1024",
                ));
            }
            v
        }
    };
    // A synced flow idle for less than its timeout must stay on the backup: its refreshes
    // come at most a refresh interval (plus the lag) apart.
    for vs in services.iter().filter(|vs| scope.synced(vs)) {
        let idle = vs.idle_timeout(lvs);
        if idle != 0 && idle < 2 * refresh_interval {
            let span = s
                .refresh_interval
                .as_ref()
                .map_or(scope_span.clone(), Spanned::span);
            return Err(cx.invalid(
                span,
                &key("refresh_interval"),
                format!(
                    "{} s is more than half the idle_timeout of {} ({} s): its flows would expire \
                     on the peers between two refreshes",
                    refresh_interval,
                    vs.name(),
                    idle
                ),
            ));
        }
    }
    let ring_size = match &s.ring_size {
        None => DEFAULT_RING_SIZE,
        Some(r) => {
            let v = *r.get_ref();
            if !v.is_power_of_two() || !(4096..=1 << 30).contains(&v) {
                return Err(cx.invalid(
                    r.span(),
                    &key("ring_size"),
                    "must be a power of two of bytes, 4096 to 1073741824",
                ));
            }
            v
        }
    };
    Ok(SyncConfig {
        interface: s.interface.get_ref().clone(),
        vrrp_instance: match scope {
            Scope::Instance(inst) => Some(inst.name.clone()),
            Scope::Announced(_) => None,
        },
        sync_id,
        peers,
        multicast_group,
        port,
        ttl,
        key_file,
        key_line: cx.line_col(s.key_file.span().start).0,
        max_rate,
        max_message,
        refresh_interval,
        ring_size,
    })
}

/// Reads the shared key: the file must be a regular file that only its owner (root, or the
/// user the daemon runs as) can read or write, of at least [`sync_wire::MIN_KEY_LEN`] bytes (a
/// final newline is not part of the key).
pub fn read_key(c: &SyncConfig) -> Result<Vec<u8>, String> {
    let p = &c.key_file;
    let mut key = super::read_owner_only(p)?;
    if key.last() == Some(&b'\n') {
        key.pop();
    }
    if key.len() < sync_wire::MIN_KEY_LEN {
        return Err(format!(
            "{}: the key has {} bytes, fewer than {}",
            p.display(),
            key.len(),
            sync_wire::MIN_KEY_LEN
        ));
    }
    Ok(key)
}
