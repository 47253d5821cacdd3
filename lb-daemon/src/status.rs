//! What the daemon shows of itself: one data model, [`Snapshot`], and its renderings.
//!
//! * JSON (serde): the control socket's `{"cmd":"status"}` answer and `lb-daemon status --json`.
//! * [`render_table`]: a table in the spirit of `ipvsadm -Ln --stats` (and `--rate`, with
//!   [`rates`] computed from two snapshots), followed by the VRRP instances.
//! * [`render_prometheus`]: the Prometheus text exposition format 0.0.4, served on `/metrics`
//!   by [`crate::metrics`].
//!
//! # The JSON interface
//!
//! Field names are an interface: scripts parse them. Fields are only ever added, never renamed
//! or removed, and every field added later has a default, so what an older daemon wrote still
//! parses. An example (one service, one backend, one VRRP instance, one XDP reason):
//!
//! ```json
//! {"time":1700000000.5,"router_id":"lb1",
//!  "services":[{"vip":"192.0.2.100","port":80,"protocol":"TCP","scheduler":"rr","active":true,
//!    "persistence_timeout":0,"packets":340,"bytes":45678,"new_flows":12,
//!    "backends":[{"addr":"192.0.2.11:80","weight":1,"effective_weight":1,"health":"up",
//!      "mac":"02:00:00:00:00:0b","packets":200,"bytes":30000,"new_flows":7,
//!      "check_latency_ms":1.5,"last_error":null}]}],
//!  "vrrp":[{"name":"VI_1","interface":"eth0","vrid":51,"version":3,"state":"MASTER",
//!    "priority":150,"effective_priority":150,"master":"192.0.2.2","transitions":3,
//!    "discards":{"bad_ttl":2},"socket_drops":0}],
//!  "reasons":[{"name":"fwd_established","verdict":"tx","packets":300,"bytes":40000}],
//!  "notify":null,"map_writes":131079}
//! ```
//!
//! Counters (`packets`, `bytes`, `new_flows`, `transitions`, `discards`, `socket_drops`) only
//! grow while the
//! daemon runs; they start again from zero when it restarts (or, for a backend or service,
//! when it is removed and added back), which [`rates`] copes with.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

// Connection sync reports its own state; the snapshot carries it as it is.
pub use crate::sync::{SyncPeerStatus, SyncStatus};
// So does `[announce]`.
pub use crate::announce::routes::{AnnounceStatus, VipStatus};

/// `health` of a backend whose checks pass (or that has no check).
pub const HEALTH_UP: &str = "up";
/// `health` of a backend whose checks fail.
pub const HEALTH_DOWN: &str = "down";
/// `health` of a backend not checked yet.
pub const HEALTH_UNKNOWN: &str = "unknown";

/// The VRRP states, in the words keepalived gives notify scripts (`vrrp::fsm::State`'s
/// `Display`); `lb_vrrp_state` has one sample per state.
pub const VRRP_STATES: [&str; 4] = ["INIT", "BACKUP", "MASTER", "FAULT"];

/// Everything `lb-daemon status` shows, at one instant.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Snapshot {
    /// When it was taken: seconds since the Unix epoch (with a fraction).
    pub time: f64,
    /// `global_defs.router_id`, if configured.
    pub router_id: Option<String>,
    /// The virtual servers, in configuration order.
    pub services: Vec<ServiceStatus>,
    /// The VRRP instances, in configuration order.
    pub vrrp: Vec<VrrpStatus>,
    /// What the XDP program did with every packet it saw, per reason (empty without a
    /// dataplane).
    pub reasons: Vec<ReasonStatus>,
    /// What happened to notify events and hooks (the daemon always fills it; `null` only in
    /// a snapshot made without one).
    pub notify: Option<NotifyStatus>,
    /// Element writes the daemon made to the XDP program's maps since it started (service
    /// keys, service state, ring slots, backends; not the clock, and nothing the program
    /// writes itself): [`crate::dataplane::maps::map_writes`]. The planner writes only what
    /// changes, so a reload of an unchanged file, or anything else that changes nothing the
    /// program does, leaves it where it was.
    pub map_writes: u64,
    /// Connection sync with the peer LB (`null` without a `[sync]` section).
    pub sync: Option<SyncStatus>,
    /// The flow table's SYN-flood guard (`null` without a dataplane).
    #[serde(default)]
    pub syn_guard: Option<SynGuardStatus>,
    /// The IPv6 virtual MAC interfaces' MLD filter (`null` until one is made).
    #[serde(default)]
    pub vmac_mld: Option<VmacMldStatus>,
    /// `[announce]`: the VIPs' routes for the routing daemon (`null` without the section).
    #[serde(default)]
    pub announce: Option<AnnounceStatus>,
}

/// MLD messages of IPv6 virtual MAC interfaces (`use_vmac`), sent through their parent
/// interface from its MAC instead of from the virtual MAC (`vrrp::vmac_mld`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct VmacMldStatus {
    pub moved: u64,
    /// Left as they were (no parent known for the interface, or the rewrite failed): none
    /// expected.
    pub unmoved: u64,
    /// IPv6 virtual MAC interfaces the filter could not be put on (the log says why).
    pub unfiltered: u64,
}

/// Flows waiting for the client's ACK, and what became of them (see `docs/architecture.md`,
/// "SYN floods"). SYNs forwarded without an entry are the reason `fwd_syn_untracked`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SynGuardStatus {
    /// Flows in SYN_RECV now.
    pub embryonic: u64,
    /// The most the table may hold (a quarter of `max_flows`).
    pub cap: u64,
    /// SYN_RECV flows the sweep removed at their timeout (never acknowledged), since start.
    pub expired: u64,
    /// SYN_RECV flows gone without the program or the sweep seeing them go: the table's LRU
    /// evicted them (since start).
    pub evicted: u64,
}

/// One virtual server (an IPVS service).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServiceStatus {
    pub vip: IpAddr,
    /// 0: every port of the VIP.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// A `virtual_server_group`'s every `VIP:PORT` (the first is `vip` and `port`); empty
    /// for a service of one address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group: Vec<String>,
    /// `lb_algo`: `rr`, `wrr`, `sh` or `mh`.
    #[serde(default)]
    pub scheduler: String,
    /// This node serves it: the VRRP master for its VIP, or a VIP no VRRP instance holds.
    #[serde(default)]
    pub active: bool,
    /// Seconds; 0: no persistence.
    #[serde(default)]
    pub persistence_timeout: u32,
    /// Packets forwarded (inbound only: direct routing never sees the replies).
    #[serde(default)]
    pub packets: u64,
    /// Bytes forwarded (the IP packets, without the Ethernet header).
    #[serde(default)]
    pub bytes: u64,
    /// Flows (connections) scheduled: ipvsadm's "Conns".
    #[serde(default)]
    pub new_flows: u64,
    /// Flows in the connection table now, not past their timeouts (ipvsadm's ActiveConn +
    /// InActConn, fragments flows included).
    #[serde(default)]
    pub active_flows: u64,
    /// ipvsadm's ActiveConn: established TCP connections (the sum of its real servers').
    #[serde(default)]
    pub active_conns: u64,
    /// ipvsadm's InActConn: every other connection state, UDP flows included.
    #[serde(default)]
    pub inactive_conns: u64,
    /// The real servers, in configuration order.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
    /// Per-second rates (`lb-daemon status --json --rate` only: the client measures them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

/// One real server of a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    /// The configured weight.
    #[serde(default)]
    pub weight: u32,
    /// The weight new flows are scheduled with: 0 when the backend is down, not resolved
    /// (no MAC) or drained.
    #[serde(default)]
    pub effective_weight: u32,
    /// [`HEALTH_UP`], [`HEALTH_DOWN`] or [`HEALTH_UNKNOWN`] (borrowed in the daemon: as
    /// many allocations as real servers per status otherwise).
    #[serde(default)]
    pub health: std::borrow::Cow<'static, str>,
    /// Its MAC address (`aa:bb:cc:dd:ee:ff`), once the neighbour table resolved it.
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub packets: u64,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub new_flows: u64,
    /// Its flows in the connection table now (see [`ServiceStatus::active_flows`]).
    #[serde(default)]
    pub active_flows: u64,
    /// ipvsadm's ActiveConn and InActConn (see [`ServiceStatus::active_conns`]): what the
    /// count-based schedulers weigh.
    #[serde(default)]
    pub active_conns: u64,
    #[serde(default)]
    pub inactive_conns: u64,
    /// Health-check probes run so far, and how many failed (retries included).
    #[serde(default)]
    pub checks_run: u64,
    #[serde(default)]
    pub checks_failed: u64,
    /// How long the last successful health check took.
    #[serde(default)]
    pub check_latency_ms: Option<f64>,
    /// Why the last health check failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// A runtime override (`lb-daemon real-server weight|drain`): the weight it serves with
    /// while up, instead of the file's (0: drained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_weight: Option<u32>,
    /// Disabled at runtime (`lb-daemon real-server disable`): out as if its checks failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// Per-second rates (`lb-daemon status --json --rate` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// TUN forwarding: the tunnel it is reached by (`ipip`, `gue port 6080`, `gre`) and the
    /// outer source (`from 192.0.2.2`; `from ?` while the interface has none); absent for
    /// direct routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<String>,
}

/// One VRRP instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct VrrpStatus {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    /// 2 or 3.
    pub version: u8,
    /// One of [`VRRP_STATES`].
    pub state: String,
    /// The configured priority.
    pub priority: u8,
    /// With the tracking weights applied: what the adverts carry.
    pub effective_priority: u8,
    /// The master last heard from, or this node's own address when it is master.
    pub master: Option<IpAddr>,
    /// State changes since start.
    pub transitions: u64,
    /// Adverts discarded, per reason (`bad_ttl`, `auth_mismatch`, ...; and
    /// `priority_zero_rate_limited`, `lower_priority_rate_limited`: adverts a master would
    /// have answered at once had it not just answered one, see `vrrp::fsm::Answer`).
    pub discards: BTreeMap<String, u64>,
    /// Datagrams the kernel dropped before the instance could read them: the receive queue
    /// of its socket was full (a flood, or the VRRP thread starved of CPU). The instance has
    /// a socket of its own, which gets a copy of every VRRP datagram on its interface, so
    /// these may carry any VRID.
    pub socket_drops: u64,
}

/// Packets the XDP program handled for one reason (`lb_common::reason`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ReasonStatus {
    /// `lb_common::reason::name`: `fwd_new_flow`, `pass_no_service`, ...
    pub name: String,
    /// `tx`, `pass` or `drop`.
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Notify events and hooks so far (`vrrp::notify::NotifyCounters`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct NotifyStatus {
    pub events: u64,
    /// Dropped because the queue to the notify worker was full.
    pub queue_dropped: u64,
    /// Lines written to the `notify_fifo`/socket.
    pub sink_written: u64,
    /// Not written to the FIFO/socket: nobody reading, or its buffer full.
    pub sink_dropped: u64,
    pub hooks_started: u64,
    /// Exited non-zero, killed by a signal, or could not be started.
    pub hooks_failed: u64,
    pub hooks_timed_out: u64,
}

impl From<crate::vrrp::notify::NotifyCounters> for NotifyStatus {
    fn from(c: crate::vrrp::notify::NotifyCounters) -> Self {
        Self {
            events: c.events,
            queue_dropped: c.queue_dropped,
            sink_written: c.sink_written,
            sink_dropped: c.sink_dropped,
            hooks_started: c.hooks_started,
            hooks_failed: c.hooks_failed,
            hooks_timed_out: c.hooks_timed_out,
        }
    }
}

/// Now, in seconds since the Unix epoch: [`Snapshot::time`].
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Snapshot {
    /// An empty snapshot taken now, with this process's dataplane map writes so far.
    pub fn new(router_id: Option<String>) -> Self {
        Self {
            time: unix_now(),
            router_id,
            map_writes: crate::dataplane::maps::map_writes(),
            ..Self::default()
        }
    }
}

/// [`ReasonStatus::verdict`] of an XDP action (`lb_common::reason::XDP_*`).
pub fn verdict_name(action: u32) -> &'static str {
    match action {
        lb_common::reason::XDP_TX => "tx",
        lb_common::reason::XDP_PASS => "pass",
        lb_common::reason::XDP_DROP => "drop",
        lb_common::reason::XDP_REDIRECT => "redirect",
        _ => "unknown",
    }
}

/// The reasons of the program's `REASON_STATS` map, summed over CPUs and indexed by
/// `lb_common::reason` (as `BpfMaps::reason_counters` returns them).
pub fn reasons_from_counters(counters: &[lb_common::ReasonCounters]) -> Vec<ReasonStatus> {
    counters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let r = i as u32;
            ReasonStatus {
                name: lb_common::reason::name(r).to_string(),
                verdict: verdict_name(lb_common::reason::verdict(r)).to_string(),
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect()
}

impl VrrpStatus {
    /// From what the VRRP thread publishes (`VrrpThread::stats`) and the instance's
    /// configuration.
    pub fn from_stats(
        name: &str,
        interface: &str,
        vrid: u8,
        version: u8,
        stats: &crate::vrrp::runtime::InstanceStats,
    ) -> Self {
        Self {
            name: name.to_string(),
            interface: interface.to_string(),
            vrid,
            version,
            state: stats.state.clone(),
            priority: stats.priority,
            effective_priority: stats.effective_priority,
            master: stats.master,
            transitions: stats.transitions,
            discards: stats.discards.clone(),
            socket_drops: stats.socket_drops,
        }
    }
}

/// What identifies a service across snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
}

impl ServiceStatus {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            vip: self.vip,
            port: self.port,
            protocol: self.protocol.clone(),
        }
    }
}

/// Per-second rates, as `ipvsadm -Ln --rate` shows them (its OutPPS/OutBPS are always 0 in
/// direct routing, so they are left out).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    /// New flows (connections) per second.
    pub cps: f64,
    /// Packets per second.
    pub in_pps: f64,
    /// Bytes per second.
    pub in_bps: f64,
}

/// The rates between two snapshots. A service or backend missing from either snapshot, or
/// with a counter that went backwards (the daemon restarted, or it was removed and added
/// back), has no rate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// Seconds between the two snapshots.
    pub interval: f64,
    pub services: BTreeMap<ServiceKey, Rate>,
    pub backends: BTreeMap<(ServiceKey, SocketAddr), Rate>,
}

impl Rates {
    pub fn service(&self, s: &ServiceStatus) -> Option<Rate> {
        self.services.get(&s.key()).copied()
    }

    pub fn backend(&self, s: &ServiceStatus, b: &BackendStatus) -> Option<Rate> {
        self.backends.get(&(s.key(), b.addr)).copied()
    }
}

fn rate(prev: [u64; 3], now: [u64; 3], interval: f64) -> Option<Rate> {
    if prev.iter().zip(&now).any(|(p, n)| n < p) {
        return None;
    }
    let per_second = |i: usize| (now[i] - prev[i]) as f64 / interval;
    Some(Rate {
        cps: per_second(0),
        in_pps: per_second(1),
        in_bps: per_second(2),
    })
}

/// One flow of the connection table, as `ipvsadm -Lnc` shows one (direct routing sees the
/// client's packets only, so there is no TCP state: the idle time says how alive it is).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub client: SocketAddr,
    /// The VIP and port the client reached (port 0: a fragment's flow, balanced by address).
    pub virtual_server: SocketAddr,
    pub real_server: SocketAddr,
    /// Seconds since its last packet.
    pub idle_s: u32,
}

/// `lb-daemon connections`: the flows that match, at most `limit` of them, and how many
/// matched in all.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    pub total: u64,
    pub limit: usize,
    pub connections: Vec<ConnectionStatus>,
}

/// The table of `lb-daemon connections` (`ipvsadm -Lnc`'s columns, idle time for expire).
pub fn render_connections(c: &Connections) -> String {
    let mut lines = vec![Line::Cells(
        ["Pro", "Idle", "Source", "Virtual", "Destination"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    )];
    for f in &c.connections {
        lines.push(Line::Cells(vec![
            f.protocol.clone(),
            format!("{}s", f.idle_s),
            f.client.to_string(),
            f.virtual_server.to_string(),
            f.real_server.to_string(),
        ]));
    }
    let mut out = String::new();
    align(&lines, &[false, true, false, false, false], &mut out);
    if c.total > c.connections.len() as u64 {
        let _ = writeln!(
            out,
            "{} of {} connections shown (--limit)",
            c.connections.len(),
            c.total
        );
    } else {
        let _ = writeln!(out, "{} connections", c.total);
    }
    out
}

/// `lb-daemon which CLIENT SERVICE`: the real server a client's flow goes to, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Which {
    /// The real server (none: no single one can be said, or none takes the flow).
    pub real_server: Option<SocketAddr>,
    /// `table` (the flow exists), `persistence` (the client's template), `scheduler` (a
    /// new flow now), or `none`.
    pub by: String,
    /// rr and wrr take turns per CPU, so a new flow goes to one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<SocketAddr>,
    /// What else there is to know (the flow's idle time, why none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Which {
    /// One line for people.
    pub fn line(&self) -> String {
        let mut out = match (&self.real_server, self.candidates.is_empty()) {
            (Some(r), _) => format!("{r} ({})", self.by),
            (None, false) => format!(
                "one of {} ({})",
                self.candidates
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.by
            ),
            (None, true) => format!("no real server ({})", self.by),
        };
        if let Some(n) = &self.note {
            let _ = write!(out, ": {n}");
        }
        out.push('\n');
        out
    }
}

/// The traffic counters as `lb-daemon zero` found them (`ipvsadm -Z`): status shows what
/// came since. The maps are not written (the program counts on, and the Prometheus
/// counters, read from the same maps, must never go back); the counts are subtracted
/// instead. A counter below its baseline was made anew since (a service removed and added
/// back), and shows as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Zeroed {
    services: BTreeMap<ServiceKey, [u64; 3]>,
    backends: BTreeMap<(ServiceKey, SocketAddr), [u64; 3]>,
    reasons: BTreeMap<String, [u64; 2]>,
}

impl Zeroed {
    /// The baseline of `s` (a snapshot with its backends).
    pub fn of(s: &Snapshot) -> Self {
        let mut z = Zeroed::default();
        for svc in &s.services {
            let key = svc.key();
            for b in &svc.backends {
                z.backends
                    .insert((key.clone(), b.addr), [b.new_flows, b.packets, b.bytes]);
            }
            z.services
                .insert(key, [svc.new_flows, svc.packets, svc.bytes]);
        }
        for r in &s.reasons {
            z.reasons.insert(r.name.clone(), [r.packets, r.bytes]);
        }
        z
    }

    /// Forgets the baselines of services and real servers `config` no longer has: one that
    /// comes back later counts from its own start.
    pub fn retain_configured(&mut self, config: &crate::config::Config) {
        let mut have: std::collections::BTreeSet<(ServiceKey, Option<SocketAddr>)> =
            Default::default();
        for vs in &config.virtual_servers {
            let key = ServiceKey {
                vip: vs.vip,
                port: vs.port,
                protocol: vs.proto.name().to_string(),
            };
            for rs in &vs.real_servers {
                have.insert((key.clone(), Some(rs.addr)));
            }
            if let Some(sorry) = vs.sorry_server {
                have.insert((key.clone(), Some(sorry)));
            }
            have.insert((key, None));
        }
        self.services
            .retain(|k, _| have.contains(&(k.clone(), None)));
        self.backends
            .retain(|(k, a), _| have.contains(&(k.clone(), Some(*a))));
    }

    /// `s`'s counters since the baseline.
    pub fn subtract(&self, s: &mut Snapshot) {
        fn since(now: &mut u64, base: u64) {
            if *now >= base {
                *now -= base;
            }
        }
        fn since3(now: [&mut u64; 3], base: &[u64; 3]) {
            for (n, b) in now.into_iter().zip(base) {
                since(n, *b);
            }
        }
        for svc in &mut s.services {
            let key = svc.key();
            if let Some(b) = self.services.get(&key) {
                since3([&mut svc.new_flows, &mut svc.packets, &mut svc.bytes], b);
            }
            for be in &mut svc.backends {
                if let Some(b) = self.backends.get(&(key.clone(), be.addr)) {
                    since3([&mut be.new_flows, &mut be.packets, &mut be.bytes], b);
                }
            }
        }
        for r in &mut s.reasons {
            if let Some([p, b]) = self.reasons.get(&r.name) {
                since(&mut r.packets, *p);
                since(&mut r.bytes, *b);
            }
        }
    }
}

/// `now` with its rates from `prev` in each service's and backend's `rate`.
pub fn with_rates(prev: &Snapshot, mut now: Snapshot) -> Snapshot {
    let r = rates(prev, &now);
    for svc in &mut now.services {
        svc.rate = r.service(svc);
        let key = svc.key();
        for b in &mut svc.backends {
            b.rate = r.backends.get(&(key.clone(), b.addr)).copied();
        }
    }
    now
}

/// Per-second rates of services and backends from `prev` to `now` (pure). Nothing when
/// `now` is not later than `prev`.
pub fn rates(prev: &Snapshot, now: &Snapshot) -> Rates {
    let interval = now.time - prev.time;
    let mut out = Rates {
        interval,
        ..Rates::default()
    };
    if !(interval.is_finite() && interval > 0.0) {
        return out;
    }
    let mut before: BTreeMap<ServiceKey, &ServiceStatus> = BTreeMap::new();
    for s in &prev.services {
        before.entry(s.key()).or_insert(s);
    }
    for s in &now.services {
        let key = s.key();
        let Some(p) = before.get(&key) else {
            continue;
        };
        if let Some(r) = rate(
            [p.new_flows, p.packets, p.bytes],
            [s.new_flows, s.packets, s.bytes],
            interval,
        ) {
            out.services.entry(key.clone()).or_insert(r);
        }
        for b in &s.backends {
            let Some(pb) = p.backends.iter().find(|pb| pb.addr == b.addr) else {
                continue;
            };
            if let Some(r) = rate(
                [pb.new_flows, pb.packets, pb.bytes],
                [b.new_flows, b.packets, b.bytes],
                interval,
            ) {
                out.backends.entry((key.clone(), b.addr)).or_insert(r);
            }
        }
    }
    out
}

/// A block of lines whose cells are aligned in columns; free lines are left as they are.
enum Line {
    Free(String),
    Cells(Vec<String>),
}

fn align(lines: &[Line], right: &[bool], out: &mut String) {
    let mut widths: Vec<usize> = Vec::new();
    for l in lines {
        if let Line::Cells(cells) = l {
            for (i, c) in cells.iter().enumerate() {
                let w = c.chars().count();
                if i >= widths.len() {
                    widths.push(w);
                } else {
                    widths[i] = widths[i].max(w);
                }
            }
        }
    }
    for l in lines {
        let mut line = String::new();
        match l {
            Line::Free(s) => line.push_str(s),
            Line::Cells(cells) => {
                for (i, w) in widths.iter().enumerate() {
                    let c = cells.get(i).map(String::as_str).unwrap_or("");
                    if i > 0 {
                        line.push_str("  ");
                    }
                    if right.get(i).copied().unwrap_or(false) {
                        let _ = write!(line, "{c:>w$}");
                    } else {
                        let _ = write!(line, "{c:<w$}");
                    }
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn fmt_rate(r: Option<Rate>) -> [String; 3] {
    match r {
        Some(r) => [r.cps, r.in_pps, r.in_bps].map(|v| format!("{v:.0}")),
        None => ["-", "-", "-"].map(String::from),
    }
}

/// The status as a table, in the spirit of `ipvsadm -Ln --stats` (with `rates`, of
/// `ipvsadm -Ln --rate` too):
///
/// ```text
/// lb-daemon  router_id lb1
/// Prot LocalAddress:Port Scheduler Flags
///   -> RemoteAddress:Port  Forward  Weight  Health  ActiveConn  InActConn  Conns  InPkts  InBytes
/// TCP  192.0.2.100:80 rr                                   3     12     340    45678
///   -> 192.0.2.11:80       Route    1       up          2      7     200    30000
/// ```
///
/// A service this node does not serve (VRRP backup) is marked `(backup)`. Flows counts the
/// flows in the connection table now (ipvsadm's ActiveConn and InActConn together), Conns
/// the new flows so far, InPkts/InBytes what was forwarded. Weight is the effective weight, followed by the
/// configured one in parentheses when they differ (`0 (100)`). A backend that is not up has
/// its last check error on the line below. Then the VRRP instances and the XDP program's
/// reasons that counted packets.
pub fn render_table(s: &Snapshot, rates: Option<&Rates>) -> String {
    let mut out = String::from("lb-daemon");
    if let Some(id) = &s.router_id {
        let _ = write!(out, "  router_id {id}");
    }
    if let Some(r) = rates {
        let _ = write!(out, "  rates per second over {:.1} s", r.interval);
    }
    out.push('\n');

    let mut lines = vec![
        Line::Free("Prot LocalAddress:Port Scheduler Flags".to_string()),
        Line::Cells(
            [
                "  -> RemoteAddress:Port",
                "Forward",
                "Weight",
                "Health",
                "ActiveConn",
                "InActConn",
                "Conns",
                "InPkts",
                "InBytes",
            ]
            .iter()
            .chain(if rates.is_some() {
                ["CPS", "InPPS", "InBPS"].iter()
            } else {
                [].iter()
            })
            .map(|c| c.to_string())
            .collect(),
        ),
    ];
    let right = [
        false, false, false, false, true, true, true, true, true, true, true, true,
    ];
    for svc in &s.services {
        let mut desc = format!("{:<5}{}", svc.protocol, SocketAddr::new(svc.vip, svc.port));
        if !svc.scheduler.is_empty() {
            let _ = write!(desc, " {}", svc.scheduler);
        }
        if svc.persistence_timeout > 0 {
            let _ = write!(desc, " persistent {}", svc.persistence_timeout);
        }
        if !svc.active {
            desc.push_str(" (backup)");
        }
        let mut cells = vec![
            desc,
            String::new(),
            String::new(),
            String::new(),
            svc.active_conns.to_string(),
            svc.inactive_conns.to_string(),
            svc.new_flows.to_string(),
            svc.packets.to_string(),
            svc.bytes.to_string(),
        ];
        if let Some(r) = rates {
            cells.extend(fmt_rate(r.service(svc)));
        }
        lines.push(Line::Cells(cells));
        for b in &svc.backends {
            let mut weight = if b.weight == b.effective_weight {
                b.weight.to_string()
            } else {
                format!("{} ({})", b.effective_weight, b.weight)
            };
            // Runtime overrides are marked: the file does not say them.
            match b.override_weight {
                Some(0) => weight.push_str(" drained"),
                Some(w) => {
                    let _ = write!(weight, " set {w}");
                }
                None => {}
            }
            let health = if b.disabled {
                format!("{} disabled", b.health)
            } else {
                b.health.to_string()
            };
            let mut cells = vec![
                format!("  -> {}", b.addr),
                "Route".to_string(),
                weight,
                health,
                b.active_conns.to_string(),
                b.inactive_conns.to_string(),
                b.new_flows.to_string(),
                b.packets.to_string(),
                b.bytes.to_string(),
            ];
            if let Some(r) = rates {
                cells.extend(fmt_rate(r.backend(svc, b)));
            }
            lines.push(Line::Cells(cells));
            if let (Some(e), false) = (&b.last_error, b.health == HEALTH_UP) {
                lines.push(Line::Free(format!("       last error: {}", one_line(e))));
            }
        }
    }
    align(&lines, &right, &mut out);

    if !s.vrrp.is_empty() {
        out.push_str("\nVRRP instances\n");
        let lines: Vec<Line> = s
            .vrrp
            .iter()
            .map(|v| {
                let discards: Vec<String> = v
                    .discards
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                Line::Cells(vec![
                    v.name.clone(),
                    v.interface.clone(),
                    format!("vrid {}", v.vrid),
                    format!("v{}", v.version),
                    v.state.clone(),
                    format!("prio {} (eff {})", v.priority, v.effective_priority),
                    match v.master {
                        Some(m) => format!("master {m}"),
                        None => "master -".to_string(),
                    },
                    format!("transitions {}", v.transitions),
                    format!("socket drops {}", v.socket_drops),
                    if discards.is_empty() {
                        "discards: none".to_string()
                    } else {
                        format!("discards: {}", discards.join(" "))
                    },
                ])
            })
            .collect();
        align(&lines, &[], &mut out);
    }

    if let Some(y) = &s.sync {
        render_sync(y, &mut out);
    }

    if let Some(a) = &s.announce {
        render_announce(a, &mut out);
    }

    if let Some(g) = &s.syn_guard {
        let _ = writeln!(
            out,
            "\nSYN guard  {} of {} flows waiting for their ACK; expired {}, evicted {}",
            g.embryonic, g.cap, g.expired, g.evicted
        );
    }

    if let Some(m) = &s.vmac_mld {
        let _ = writeln!(
            out,
            "\nVirtual MAC MLD  {} messages sent from the parent interfaces, {} left as they \
             were, {} interfaces unfiltered",
            m.moved, m.unmoved, m.unfiltered
        );
    }

    if !s.reasons.is_empty() {
        out.push_str("\nXDP\n");
        let mut lines = vec![Line::Cells(
            ["Reason", "Verdict", "Packets", "Bytes"]
                .map(String::from)
                .to_vec(),
        )];
        lines.extend(s.reasons.iter().filter(|r| r.packets > 0).map(|r| {
            Line::Cells(vec![
                r.name.clone(),
                r.verdict.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ])
        }));
        align(&lines, &[false, false, true, true], &mut out);
    }
    out
}

/// The `Announce` part of the table: each VIP, whether its route is there, and why.
fn render_announce(a: &AnnounceStatus, out: &mut String) {
    let _ = writeln!(
        out,
        "\nAnnounce  device {} table {}  {} changes, {} errors",
        a.device, a.table, a.changes, a.errors
    );
    let lines: Vec<Line> = a
        .vips
        .iter()
        .map(|v| {
            Line::Cells(vec![
                format!(
                    "  {}",
                    v.vip.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
                ),
                match (v.announced, v.wanted) {
                    (true, true) => "announced",
                    (false, false) => "withdrawn",
                    (false, true) => "announcing",
                    (true, false) => "withdrawing",
                }
                .to_string(),
                v.reason.clone(),
            ])
        })
        .collect();
    align(&lines, &[], out);
    if let Some(e) = &a.last_error {
        let _ = writeln!(out, "  last error: {e}");
    }
}

/// The `Connection sync` part of the table.
fn render_sync(y: &SyncStatus, out: &mut String) {
    let _ = writeln!(
        out,
        "\nConnection sync  {} {} sync_id {}  {}{}",
        y.interface,
        if y.vrrp_instance.is_empty() {
            "every peer".to_string()
        } else {
            format!("vrrp_instance {}", y.vrrp_instance)
        },
        y.sync_id,
        y.role,
        y.lag_ms
            .map(|l| format!("  lag {l:.1} ms"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  sent {} messages, {} entries, {} bytes; received {} messages, {} entries, {} installed; \
         lost {} messages; full syncs sent {}, received {}",
        y.sent_messages,
        y.sent_entries,
        y.sent_bytes,
        y.received_messages,
        y.received_entries,
        y.installed_entries,
        y.lost_messages,
        y.full_syncs_sent,
        y.full_syncs_received
    );
    let lines: Vec<Line> = y
        .peers
        .iter()
        .map(|p| {
            Line::Cells(vec![
                format!(
                    "  peer {}",
                    p.addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
                ),
                format!("heard {} ms ago", p.last_heard_ms),
                match p.lag_ms {
                    Some(l) => format!("lag {l:.1} ms"),
                    None => "lag -".into(),
                },
                if p.wants_full {
                    "wants the whole table".into()
                } else {
                    String::new()
                },
            ])
        })
        .collect();
    align(&lines, &[], out);
    let dropped: Vec<String> = y
        .dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "  dropped: {}",
        if dropped.is_empty() {
            "none".to_string()
        } else {
            dropped.join(" ")
        }
    );
}

/// A message on one line (a check's stderr may hold several).
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A label value, escaped as the text format wants: `\` `"` and newline.
fn escape_label(v: &str, out: &mut String) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value: Go's float syntax (`+Inf`, `-Inf`, `NaN`).
struct PromFloat(f64);

impl std::fmt::Display for PromFloat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{v}")
        }
    }
}

/// The labels of a sample, `k="v",...` escaped: made once for a service or backend and used
/// for each of its families (a node with 100,000 backends has a million backend samples).
fn prom_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label(v, &mut out);
        out.push('"');
    }
    out
}

struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels = prom_labels(labels);
        self.sample_with(name, &labels, value);
    }

    /// A sample whose labels [`prom_labels`] made.
    fn sample_with(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            self.out.push_str(labels);
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// How [`render_prometheus_with`] renders a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromOptions {
    /// The `lb_backend_*` families, a series per real server of every service
    /// (`global_defs.metrics_per_backend`, on by default). Without them a scrape grows with
    /// the services alone: 100,000 real servers are a million samples, about 100 MB.
    pub per_backend: bool,
}

impl Default for PromOptions {
    fn default() -> Self {
        Self { per_backend: true }
    }
}

/// A backend family's sample value.
enum Num {
    Int(u64),
    Float(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(v) => write!(f, "{v}"),
            Num::Float(v) => PromFloat(*v).fmt(f),
        }
    }
}

/// The snapshot in the Prometheus text exposition format, version 0.0.4 (serve it with
/// `Content-Type: text/plain; version=0.0.4`).
///
/// | metric | labels | |
/// | --- | --- | --- |
/// | `lb_service_{packets,bytes,new_flows}_total` | vip, port, protocol | counters |
/// | `lb_service_active` | vip, port, protocol | 1: this node serves it |
/// | `lb_service_active_flows` | vip, port, protocol | flows in the connection table |
/// | `lb_service_{active,inactive}_connections` | vip, port, protocol | ipvsadm's ActiveConn, InActConn |
/// | `lb_backend_{packets,bytes,new_flows}_total` | vip, port, protocol, backend | counters |
/// | `lb_backend_up` | same | 1: health `up`; 0: `down` or `unknown` |
/// | `lb_backend_weight`, `lb_backend_effective_weight` | same | configured, scheduled |
/// | `lb_backend_check_latency_seconds` | same | only once a check succeeded |
/// | `lb_backend_active_flows` | same | flows in the connection table |
/// | `lb_backend_{active,inactive}_connections` | same | ipvsadm's ActiveConn, InActConn |
/// | `lb_backend_checks_total`, `lb_backend_checks_failed_total` | same | probes run, failed |
/// | `lb_vrrp_state` | instance, state | 1 for the current state, 0 for the others |
/// | `lb_vrrp_priority`, `lb_vrrp_effective_priority` | instance | |
/// | `lb_vrrp_transitions_total` | instance | |
/// | `lb_vrrp_discards_total` | instance, reason | |
/// | `lb_vrrp_socket_drops_total` | instance | dropped by the kernel: socket queue full |
/// | `lb_xdp_{packets,bytes}_total` | reason, verdict | |
/// | `lb_dataplane_map_writes_total` | | element writes to the program's maps |
/// | `lb_embryonic_flows`, `lb_embryonic_flows_cap` | | flows waiting for their ACK, and the most the table holds |
/// | `lb_embryonic_{expired,evicted}_total` | | such flows gone at their timeout, evicted by the LRU |
/// | `lb_notify_*` | | notify events and hooks |
/// | `lb_sync_sending` | | 1: this node sends its flows (master of the sync instance) |
/// | `lb_sync_{messages,entries,bytes}_total` | direction | sent, received (entries: installed too) |
/// | `lb_sync_lost_messages_total` | | messages a peer's sequence skipped |
/// | `lb_sync_full_syncs_total` | direction | whole-table syncs sent, received |
/// | `lb_sync_dropped_total` | reason | entries, events and datagrams dropped |
/// | `lb_sync_peer_lag_seconds`, `lb_sync_peer_last_heard_seconds` | peer | |
/// | `lb_announce_vip` | vip | 1: its route is in the announce table (`[announce]`) |
/// | `lb_announce_errors_total` | | route changes that failed (tried again) |
///
/// Every family, the `lb_backend_*` ones included: [`render_prometheus_with`] can leave those
/// out.
pub fn render_prometheus(s: &Snapshot) -> String {
    render_prometheus_with(s, PromOptions::default())
}

/// [`render_prometheus`], without the `lb_backend_*` families unless `options.per_backend`.
pub fn render_prometheus_with(s: &Snapshot, options: PromOptions) -> String {
    let mut p = Prom { out: String::new() };
    let svc_labels: Vec<String> = s
        .services
        .iter()
        .map(|svc| {
            prom_labels(&[
                ("vip", &svc.vip.to_string()),
                ("port", &svc.port.to_string()),
                ("protocol", &svc.protocol),
            ])
        })
        .collect();

    type ServiceValue = fn(&ServiceStatus) -> u64;
    let service_counters: [(&str, &str, ServiceValue); 3] = [
        (
            "lb_service_packets_total",
            "Packets forwarded to the service's backends.",
            |s| s.packets,
        ),
        (
            "lb_service_bytes_total",
            "Bytes (IP packets) forwarded to the service's backends.",
            |s| s.bytes,
        ),
        (
            "lb_service_new_flows_total",
            "Flows (connections) scheduled to a backend of the service.",
            |s| s.new_flows,
        ),
    ];
    for (name, help, value) in service_counters {
        p.family(name, "counter", help);
        for (svc, labels) in s.services.iter().zip(&svc_labels) {
            p.sample_with(name, labels, value(svc));
        }
    }
    p.family(
        "lb_service_active",
        "gauge",
        "1 if this node serves the service (VRRP master for its VIP, or no VRRP), 0 if not.",
    );
    for (svc, labels) in s.services.iter().zip(&svc_labels) {
        p.sample_with("lb_service_active", labels, u8::from(svc.active));
    }
    p.family(
        "lb_service_active_flows",
        "gauge",
        "Flows of the service in the connection table, not idle past its timeout.",
    );
    for (svc, labels) in s.services.iter().zip(&svc_labels) {
        p.sample_with("lb_service_active_flows", labels, svc.active_flows);
    }
    p.family(
        "lb_service_active_connections",
        "gauge",
        "Established TCP connections of the service (ipvsadm's ActiveConn).",
    );
    for (svc, labels) in s.services.iter().zip(&svc_labels) {
        p.sample_with("lb_service_active_connections", labels, svc.active_conns);
    }
    p.family(
        "lb_service_inactive_connections",
        "gauge",
        "Connections of the service in any other state, UDP flows included (ipvsadm's InActConn).",
    );
    for (svc, labels) in s.services.iter().zip(&svc_labels) {
        p.sample_with(
            "lb_service_inactive_connections",
            labels,
            svc.inactive_conns,
        );
    }
    if options.per_backend {
        render_backends_prometheus(s, &svc_labels, &mut p);
    }

    p.family(
        "lb_vrrp_state",
        "gauge",
        "1 for the VRRP instance's current state, 0 for the others.",
    );
    for v in &s.vrrp {
        for state in VRRP_STATES {
            p.sample(
                "lb_vrrp_state",
                &[("instance", &v.name), ("state", state)],
                u8::from(v.state == state),
            );
        }
        if !VRRP_STATES.contains(&v.state.as_str()) {
            p.sample(
                "lb_vrrp_state",
                &[("instance", &v.name), ("state", &v.state)],
                1,
            );
        }
    }
    type VrrpValue = fn(&VrrpStatus) -> u64;
    let vrrp_families: [(&str, &str, &str, VrrpValue); 3] = [
        (
            "lb_vrrp_priority",
            "gauge",
            "The VRRP instance's configured priority.",
            |v| v.priority.into(),
        ),
        (
            "lb_vrrp_effective_priority",
            "gauge",
            "The VRRP instance's priority with tracking weights applied (what its adverts carry).",
            |v| v.effective_priority.into(),
        ),
        (
            "lb_vrrp_transitions_total",
            "counter",
            "State changes of the VRRP instance.",
            |v| v.transitions,
        ),
    ];
    for (name, kind, help, value) in vrrp_families {
        p.family(name, kind, help);
        for v in &s.vrrp {
            p.sample(name, &[("instance", &v.name)], value(v));
        }
    }
    p.family(
        "lb_vrrp_discards_total",
        "counter",
        "VRRP adverts discarded by the instance, per reason.",
    );
    for v in &s.vrrp {
        for (reason, n) in &v.discards {
            p.sample(
                "lb_vrrp_discards_total",
                &[("instance", &v.name), ("reason", reason)],
                n,
            );
        }
    }
    p.family(
        "lb_vrrp_socket_drops_total",
        "counter",
        "VRRP datagrams the kernel dropped before the instance read them (its socket's receive queue was full).",
    );
    for v in &s.vrrp {
        p.sample(
            "lb_vrrp_socket_drops_total",
            &[("instance", &v.name)],
            v.socket_drops,
        );
    }

    type ReasonValue = fn(&ReasonStatus) -> u64;
    let xdp_families: [(&str, &str, ReasonValue); 2] = [
        (
            "lb_xdp_packets_total",
            "Packets the XDP program handled, per reason and verdict.",
            |r| r.packets,
        ),
        (
            "lb_xdp_bytes_total",
            "Bytes the XDP program handled, per reason and verdict.",
            |r| r.bytes,
        ),
    ];
    for (name, help, value) in xdp_families {
        p.family(name, "counter", help);
        for r in &s.reasons {
            p.sample(
                name,
                &[("reason", &r.name), ("verdict", &r.verdict)],
                value(r),
            );
        }
    }

    p.family(
        "lb_dataplane_map_writes_total",
        "counter",
        "Element writes the daemon made to the XDP program's maps (services, rings, backends).",
    );
    p.sample("lb_dataplane_map_writes_total", &[], s.map_writes);

    if let Some(m) = &s.vmac_mld {
        p.family(
            "lb_vrrp_vmac_mld_total",
            "counter",
            "MLD messages of IPv6 virtual MAC interfaces: sent from the parent's MAC (moved), \
             or left as they were (unmoved).",
        );
        p.sample("lb_vrrp_vmac_mld_total", &[("result", "moved")], m.moved);
        p.sample(
            "lb_vrrp_vmac_mld_total",
            &[("result", "unmoved")],
            m.unmoved,
        );
        p.family(
            "lb_vrrp_vmac_mld_unfiltered",
            "gauge",
            "IPv6 virtual MAC interfaces the MLD filter could not be put on.",
        );
        p.sample("lb_vrrp_vmac_mld_unfiltered", &[], m.unfiltered);
    }

    if let Some(a) = &s.announce {
        p.family(
            "lb_announce_vip",
            "gauge",
            "1 while the VIP's route is in the announce table (the routing daemon announces it).",
        );
        for v in &a.vips {
            if let Some(vip) = v.vip {
                p.sample(
                    "lb_announce_vip",
                    &[("vip", &vip.to_string())],
                    u8::from(v.announced),
                );
            }
        }
        p.family(
            "lb_announce_errors_total",
            "counter",
            "Route changes for the routing daemon that failed (tried again).",
        );
        p.sample("lb_announce_errors_total", &[], a.errors);
    }

    if let Some(g) = &s.syn_guard {
        for (name, kind, help, v) in [
            (
                "lb_embryonic_flows",
                "gauge",
                "Flows waiting for the client's ACK (SYN_RECV) in the flow table.",
                g.embryonic,
            ),
            (
                "lb_embryonic_flows_cap",
                "gauge",
                "The most flows in SYN_RECV the table holds; past it SYNs go out untracked.",
                g.cap,
            ),
            (
                "lb_embryonic_expired_total",
                "counter",
                "SYN_RECV flows removed at their timeout, never acknowledged.",
                g.expired,
            ),
            (
                "lb_embryonic_evicted_total",
                "counter",
                "SYN_RECV flows the flow table's LRU evicted.",
                g.evicted,
            ),
        ] {
            p.family(name, kind, help);
            p.sample(name, &[], v);
        }
    }
    if let Some(y) = &s.sync {
        render_sync_prometheus(y, &mut p);
    }

    if let Some(n) = &s.notify {
        p.family(
            "lb_notify_events_total",
            "counter",
            "VRRP state events for notify hooks and the notify FIFO.",
        );
        p.sample("lb_notify_events_total", &[], n.events);
        p.family(
            "lb_notify_dropped_total",
            "counter",
            "Notify events dropped: the worker's queue was full, or the FIFO unread.",
        );
        p.sample(
            "lb_notify_dropped_total",
            &[("where", "queue")],
            n.queue_dropped,
        );
        p.sample(
            "lb_notify_dropped_total",
            &[("where", "sink")],
            n.sink_dropped,
        );
        p.family(
            "lb_notify_hooks_total",
            "counter",
            "Notify hooks started, and how many of them failed or timed out.",
        );
        p.sample(
            "lb_notify_hooks_total",
            &[("result", "started")],
            n.hooks_started,
        );
        p.sample(
            "lb_notify_hooks_total",
            &[("result", "failed")],
            n.hooks_failed,
        );
        p.sample(
            "lb_notify_hooks_total",
            &[("result", "timed_out")],
            n.hooks_timed_out,
        );
    }
    p.out
}

/// The `lb_backend_*` families; `svc_labels` are the services' labels, in order.
fn render_backends_prometheus(s: &Snapshot, svc_labels: &[String], p: &mut Prom) {
    type BackendValue = fn(&BackendStatus) -> Option<Num>;
    let backend_families: [(&str, &str, &str, BackendValue); 12] = [
        (
            "lb_backend_packets_total",
            "counter",
            "Packets forwarded to the backend.",
            |b| Some(Num::Int(b.packets)),
        ),
        (
            "lb_backend_bytes_total",
            "counter",
            "Bytes (IP packets) forwarded to the backend.",
            |b| Some(Num::Int(b.bytes)),
        ),
        (
            "lb_backend_new_flows_total",
            "counter",
            "Flows (connections) scheduled to the backend.",
            |b| Some(Num::Int(b.new_flows)),
        ),
        (
            "lb_backend_up",
            "gauge",
            "1 if the backend's health checks pass, 0 if they fail or have not run yet.",
            |b| Some(Num::Int(u64::from(b.health == HEALTH_UP))),
        ),
        (
            "lb_backend_weight",
            "gauge",
            "The backend's configured weight.",
            |b| Some(Num::Int(b.weight.into())),
        ),
        (
            "lb_backend_effective_weight",
            "gauge",
            "The weight new flows are scheduled with (0: down, unresolved or drained).",
            |b| Some(Num::Int(b.effective_weight.into())),
        ),
        (
            "lb_backend_active_flows",
            "gauge",
            "Flows to the backend in the connection table, not idle past the service's timeout.",
            |b| Some(Num::Int(b.active_flows)),
        ),
        (
            "lb_backend_active_connections",
            "gauge",
            "Established TCP connections to the backend (ipvsadm's ActiveConn).",
            |b| Some(Num::Int(b.active_conns)),
        ),
        (
            "lb_backend_inactive_connections",
            "gauge",
            "Connections to the backend in any other state, UDP flows included (ipvsadm's InActConn).",
            |b| Some(Num::Int(b.inactive_conns)),
        ),
        (
            "lb_backend_checks_total",
            "counter",
            "Health-check probes run against the backend (retries included).",
            |b| Some(Num::Int(b.checks_run)),
        ),
        (
            "lb_backend_checks_failed_total",
            "counter",
            "Health-check probes against the backend that failed (retries included).",
            |b| Some(Num::Int(b.checks_failed)),
        ),
        (
            "lb_backend_check_latency_seconds",
            "gauge",
            "How long the backend's last successful health check took.",
            |b| b.check_latency_ms.map(|ms| Num::Float(ms / 1000.0)),
        ),
    ];
    let labels: Vec<String> = s
        .services
        .iter()
        .zip(svc_labels)
        .flat_map(|(svc, svc_labels)| {
            svc.backends.iter().map(move |b| {
                let mut labels = svc_labels.clone();
                labels.push(',');
                labels.push_str(&prom_labels(&[("backend", &b.addr.to_string())]));
                labels
            })
        })
        .collect();
    for (name, kind, help, value) in backend_families {
        p.family(name, kind, help);
        let backends = s.services.iter().flat_map(|svc| &svc.backends);
        for (b, labels) in backends.zip(&labels) {
            if let Some(v) = value(b) {
                p.sample_with(name, labels, v);
            }
        }
    }
}

fn render_sync_prometheus(y: &SyncStatus, p: &mut Prom) {
    p.family(
        "lb_sync_sending",
        "gauge",
        "1 while this node is master of the sync instance and sends its flows.",
    );
    p.sample("lb_sync_sending", &[], u8::from(y.role == "sending"));
    // (family, help, samples by direction; an empty direction is no sample)
    type Family<'a> = (&'a str, &'a str, [(&'a str, u64); 3]);
    let families: [Family; 3] = [
        (
            "lb_sync_messages_total",
            "Connection sync DATA messages sent and accepted.",
            [
                ("sent", y.sent_messages),
                ("received", y.received_messages),
                ("", 0),
            ],
        ),
        (
            "lb_sync_entries_total",
            "Flow and template entries sent, received, and installed into the tables.",
            [
                ("sent", y.sent_entries),
                ("received", y.received_entries),
                ("installed", y.installed_entries),
            ],
        ),
        (
            "lb_sync_full_syncs_total",
            "Whole-table syncs sent to a peer that asked, and received.",
            [
                ("sent", y.full_syncs_sent),
                ("received", y.full_syncs_received),
                ("", 0),
            ],
        ),
    ];
    for (name, help, samples) in families {
        p.family(name, "counter", help);
        for (dir, v) in samples.iter().filter(|(d, _)| !d.is_empty()) {
            p.sample(name, &[("direction", dir)], v);
        }
    }
    p.family(
        "lb_sync_bytes_total",
        "counter",
        "UDP payload bytes of the connection sync messages sent.",
    );
    p.sample(
        "lb_sync_bytes_total",
        &[("direction", "sent")],
        y.sent_bytes,
    );
    p.family(
        "lb_sync_lost_messages_total",
        "counter",
        "Connection sync messages a peer's sequence skipped.",
    );
    p.sample("lb_sync_lost_messages_total", &[], y.lost_messages);
    p.family(
        "lb_sync_dropped_total",
        "counter",
        "Connection sync entries, events and datagrams dropped, by reason.",
    );
    for (reason, n) in &y.dropped {
        p.sample("lb_sync_dropped_total", &[("reason", reason)], n);
    }
    p.family(
        "lb_sync_peer_last_heard_seconds",
        "gauge",
        "Seconds since the peer's last connection sync message.",
    );
    for peer in &y.peers {
        let addr = peer.addr.map(|a| a.to_string()).unwrap_or_default();
        p.sample(
            "lb_sync_peer_last_heard_seconds",
            &[("peer", &addr)],
            PromFloat(peer.last_heard_ms as f64 / 1e3),
        );
    }
    p.family(
        "lb_sync_peer_lag_seconds",
        "gauge",
        "Round trip from sending a sync message to the peer having installed it.",
    );
    for peer in &y.peers {
        if let Some(l) = peer.lag_ms {
            let addr = peer.addr.map(|a| a.to_string()).unwrap_or_default();
            p.sample(
                "lb_sync_peer_lag_seconds",
                &[("peer", &addr)],
                PromFloat(l / 1e3),
            );
        }
    }
}

/// Helpers shared by the tests of `status`, `control` and `metrics`.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    /// The inodes of this process's open sockets, from the `socket:[N]` links in
    /// /proc/self/fd.
    fn own_socket_inodes() -> Vec<u64> {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
    }

    fn count_own(inodes: impl IntoIterator<Item = u64>) -> usize {
        let theirs: std::collections::HashSet<u64> = inodes.into_iter().collect();
        own_socket_inodes()
            .iter()
            .filter(|i| theirs.contains(i))
            .count()
    }

    /// File descriptors of this process that are the server side of the Unix socket at
    /// `path`: its listener and the connections it accepted (which carry its path in
    /// /proc/net/unix; clients' ends do not). Exact whatever other tests do meanwhile.
    pub fn unix_server_fds(path: &Path) -> usize {
        let path = path.to_str().expect("a UTF-8 path");
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        count_own(table.lines().skip(1).filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(7) == Some(&path)).then(|| f.get(6)?.parse::<u64>().ok())?
        }))
    }

    /// File descriptors of this process that are TCP sockets with local port `port`: a
    /// server's listener and the connections it accepted.
    pub fn tcp_server_fds(port: u16) -> usize {
        let mut inodes: Vec<u64> = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let table = std::fs::read_to_string(table).unwrap_or_default();
            inodes.extend(table.lines().skip(1).filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                (local_port == port).then(|| f.get(9)?.parse::<u64>().ok())?
            }));
        }
        count_own(inodes)
    }

    /// Waits until `f()` is true, at most 10 s; panics naming `what` otherwise.
    pub async fn eventually(what: &str, f: impl FnMut() -> bool) {
        let within = std::time::Duration::from_secs(10);
        assert!(
            crate::testutil::eventually(within, f).await,
            "never: {what}"
        );
    }

    pub(crate) use crate::testutil::TempDir;

    /// A snapshot with a bit of everything: IPv4 and IPv6, a backup service, a backend
    /// down, two VRRP instances, XDP reasons.
    pub fn sample() -> super::Snapshot {
        use super::*;
        Snapshot {
            time: 1_700_000_000.0,
            router_id: Some("lb1".into()),
            services: vec![
                ServiceStatus {
                    vip: "192.0.2.100".parse().unwrap(),
                    port: 80,
                    protocol: "TCP".into(),
                    group: Vec::new(),
                    scheduler: "rr".into(),
                    active: true,
                    persistence_timeout: 0,
                    packets: 340,
                    bytes: 45678,
                    new_flows: 12,
                    active_flows: 3,

                    active_conns: 2,

                    inactive_conns: 1,
                    rate: None,
                    backends: vec![
                        BackendStatus {
                            addr: "192.0.2.11:80".parse().unwrap(),
                            weight: 1,
                            effective_weight: 1,
                            health: HEALTH_UP.into(),
                            mac: Some("02:00:00:00:00:0b".into()),
                            packets: 200,
                            bytes: 30000,
                            new_flows: 7,
                            active_flows: 2,

                            active_conns: 2,

                            inactive_conns: 0,
                            checks_run: 40,
                            checks_failed: 0,
                            check_latency_ms: Some(1.5),
                            last_error: None,
                            override_weight: None,
                            disabled: false,
                            rate: None,
                            tunnel: None,
                        },
                        BackendStatus {
                            addr: "192.0.2.12:80".parse().unwrap(),
                            weight: 1,
                            effective_weight: 0,
                            health: HEALTH_DOWN.into(),
                            mac: None,
                            packets: 140,
                            bytes: 15678,
                            new_flows: 5,
                            active_flows: 1,

                            active_conns: 0,

                            inactive_conns: 1,
                            checks_run: 41,
                            checks_failed: 6,
                            check_latency_ms: None,
                            last_error: Some("connect: Connection refused".into()),
                            override_weight: Some(0),
                            disabled: false,
                            rate: None,
                            tunnel: None,
                        },
                    ],
                },
                ServiceStatus {
                    vip: "2001:db8::100".parse().unwrap(),
                    port: 53,
                    protocol: "UDP".into(),
                    group: Vec::new(),
                    scheduler: "sh".into(),
                    active: false,
                    persistence_timeout: 300,
                    packets: 0,
                    bytes: 0,
                    new_flows: 0,
                    active_flows: 0,

                    active_conns: 0,

                    inactive_conns: 0,
                    rate: None,
                    backends: vec![BackendStatus {
                        addr: "[2001:db8::11]:53".parse().unwrap(),
                        weight: 100,
                        effective_weight: 100,
                        health: HEALTH_UNKNOWN.into(),
                        mac: None,
                        packets: 0,
                        bytes: 0,
                        new_flows: 0,
                        active_flows: 0,

                        active_conns: 0,

                        inactive_conns: 0,
                        checks_run: 0,
                        checks_failed: 0,
                        check_latency_ms: None,
                        last_error: None,
                        override_weight: None,
                        disabled: false,
                        rate: None,
                        tunnel: Some("ipip from 2001:db8::2".into()),
                    }],
                },
            ],
            vrrp: vec![
                VrrpStatus {
                    name: "VI_1".into(),
                    interface: "eth0".into(),
                    vrid: 51,
                    version: 3,
                    state: "MASTER".into(),
                    priority: 150,
                    effective_priority: 150,
                    master: Some("192.0.2.2".parse().unwrap()),
                    transitions: 3,
                    discards: [("auth_mismatch".to_string(), 0), ("bad_ttl".to_string(), 2)]
                        .into_iter()
                        .collect(),
                    socket_drops: 7,
                },
                VrrpStatus {
                    name: "VI_6".into(),
                    interface: "eth0".into(),
                    vrid: 52,
                    version: 3,
                    state: "BACKUP".into(),
                    priority: 100,
                    effective_priority: 90,
                    master: Some("fe80::1".parse().unwrap()),
                    transitions: 1,
                    discards: BTreeMap::new(),
                    socket_drops: 0,
                },
            ],
            reasons: vec![
                ReasonStatus {
                    name: "fwd_established".into(),
                    verdict: "tx".into(),
                    packets: 300,
                    bytes: 40000,
                },
                ReasonStatus {
                    name: "fwd_new_flow".into(),
                    verdict: "tx".into(),
                    packets: 40,
                    bytes: 5678,
                },
                ReasonStatus {
                    name: "pass_no_service".into(),
                    verdict: "pass".into(),
                    packets: 0,
                    bytes: 0,
                },
                ReasonStatus {
                    name: "drop_malformed_eth".into(),
                    verdict: "drop".into(),
                    packets: 2,
                    bytes: 120,
                },
            ],
            notify: None,
            map_writes: 1234,
            sync: None,
            syn_guard: None,
            vmac_mld: None,
            announce: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::sample, *};

    #[test]
    fn table_golden() {
        let want = "\
lb-daemon  router_id lb1
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port                             Forward  Weight         Health   ActiveConn  InActConn  Conns  InPkts  InBytes
TCP  192.0.2.100:80 rr                                                                        2          1     12     340    45678
  -> 192.0.2.11:80                                  Route    1              up                2          0      7     200    30000
  -> 192.0.2.12:80                                  Route    0 (1) drained  down              0          1      5     140    15678
       last error: connect: Connection refused
UDP  [2001:db8::100]:53 sh persistent 300 (backup)                                            0          0      0       0        0
  -> [2001:db8::11]:53                              Route    100            unknown           0          0      0       0        0

VRRP instances
VI_1  eth0  vrid 51  v3  MASTER  prio 150 (eff 150)  master 192.0.2.2  transitions 3  socket drops 7  discards: bad_ttl=2
VI_6  eth0  vrid 52  v3  BACKUP  prio 100 (eff 90)   master fe80::1    transitions 1  socket drops 0  discards: none

XDP
Reason              Verdict  Packets  Bytes
fwd_established     tx           300  40000
fwd_new_flow        tx            40   5678
drop_malformed_eth  drop           2    120
";
        let got = render_table(&sample(), None);
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn table_with_rates_golden() {
        let prev = sample();
        let mut now = sample();
        now.time += 2.0;
        now.router_id = None;
        now.vrrp.clear();
        now.reasons.clear();
        let s = &mut now.services[0];
        s.packets += 200;
        s.bytes += 30000;
        s.new_flows += 4;
        s.backends[0].packets += 200;
        s.backends[0].bytes += 30000;
        s.backends[0].new_flows += 4;
        // Removed and added back: counting from zero again.
        s.backends[1].packets = 0;
        s.backends[1].bytes = 0;
        s.backends[1].new_flows = 0;
        s.backends[1].last_error = Some("line one\nline two\n".into());
        let r = rates(&prev, &now);
        let want = "\
lb-daemon  rates per second over 2.0 s
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port                             Forward  Weight         Health   ActiveConn  InActConn  Conns  InPkts  InBytes  CPS  InPPS  InBPS
TCP  192.0.2.100:80 rr                                                                        2          1     16     540    75678    2    100  15000
  -> 192.0.2.11:80                                  Route    1              up                2          0     11     400    60000    2    100  15000
  -> 192.0.2.12:80                                  Route    0 (1) drained  down              0          1      0       0        0    -      -      -
       last error: line one / line two
UDP  [2001:db8::100]:53 sh persistent 300 (backup)                                            0          0      0       0        0    0      0      0
  -> [2001:db8::11]:53                              Route    100            unknown           0          0      0       0        0    0      0      0
";
        let got = render_table(&now, Some(&r));
        assert_eq!(got, want, "\n{got}");
    }

    /// The SYN guard in the table and in the metrics.
    #[test]
    fn syn_guard_in_table_and_metrics() {
        let mut s = sample();
        s.syn_guard = Some(SynGuardStatus {
            embryonic: 3,
            cap: 100,
            expired: 4,
            evicted: 5,
        });
        let table = render_table(&s, None);
        assert!(
            table.contains(
                "\nSYN guard  3 of 100 flows waiting for their ACK; expired 4, evicted 5\n"
            ),
            "{table}"
        );
        let prom = render_prometheus(&s);
        for line in [
            "lb_embryonic_flows 3",
            "lb_embryonic_flows_cap 100",
            "lb_embryonic_expired_total 4",
            "lb_embryonic_evicted_total 5",
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} in\n{prom}");
        }
    }

    #[test]
    fn vmac_mld_in_table_and_metrics() {
        let mut s = sample();
        s.vmac_mld = Some(VmacMldStatus {
            moved: 7,
            unmoved: 1,
            unfiltered: 2,
        });
        let table = render_table(&s, None);
        assert!(
            table.contains(
                "\nVirtual MAC MLD  7 messages sent from the parent interfaces, 1 left as they \
                 were, 2 interfaces unfiltered\n"
            ),
            "{table}"
        );
        let prom = render_prometheus(&s);
        for line in [
            "lb_vrrp_vmac_mld_total{result=\"moved\"} 7",
            "lb_vrrp_vmac_mld_total{result=\"unmoved\"} 1",
            "lb_vrrp_vmac_mld_unfiltered 2",
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} in\n{prom}");
        }
    }

    #[test]
    fn announce_in_table_and_metrics() {
        let mut s = sample();
        s.announce = Some(AnnounceStatus {
            device: "lbvip0".into(),
            table: 100,
            vips: vec![
                VipStatus {
                    vip: Some("203.0.113.10".parse().unwrap()),
                    announced: true,
                    wanted: true,
                    reason: "every service has its quorum".into(),
                },
                VipStatus {
                    vip: Some("2001:db8::10".parse().unwrap()),
                    announced: false,
                    wanted: false,
                    reason: "[2001:db8::10]:80/tcp lost its quorum".into(),
                },
            ],
            changes: 3,
            errors: 1,
            last_error: Some("adding the route of 2001:db8::10: nope".into()),
        });
        let table = render_table(&s, None);
        for line in [
            "Announce  device lbvip0 table 100  3 changes, 1 errors",
            "  203.0.113.10  announced  every service has its quorum",
            "  2001:db8::10  withdrawn  [2001:db8::10]:80/tcp lost its quorum",
            "  last error: adding the route of 2001:db8::10: nope",
        ] {
            assert!(
                table.lines().any(|l| l.trim_end() == line),
                "{line} in\n{table}"
            );
        }
        let prom = render_prometheus(&s);
        for line in [
            "lb_announce_vip{vip=\"203.0.113.10\"} 1",
            "lb_announce_vip{vip=\"2001:db8::10\"} 0",
            "lb_announce_errors_total 1",
        ] {
            assert!(prom.lines().any(|l| l == line), "{line} in\n{prom}");
        }
    }

    #[test]
    fn table_of_an_empty_snapshot() {
        assert_eq!(
            render_table(&Snapshot::default(), None),
            "lb-daemon\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port  Forward  Weight  Health  ActiveConn  InActConn  Conns  InPkts  InBytes\n"
        );
    }

    #[test]
    fn rates_per_second() {
        let prev = sample();
        let mut now = sample();
        now.time += 0.5;
        now.services[0].packets += 50;
        now.services[0].bytes += 5000;
        now.services[0].new_flows += 1;
        now.services[0].backends[0].packets += 50;
        let r = rates(&prev, &now);
        assert_eq!(r.interval, 0.5);
        let key = now.services[0].key();
        assert_eq!(
            r.services[&key],
            Rate {
                cps: 2.0,
                in_pps: 100.0,
                in_bps: 10000.0
            }
        );
        assert_eq!(
            r.backend(&now.services[0], &now.services[0].backends[0]),
            Some(Rate {
                cps: 0.0,
                in_pps: 100.0,
                in_bps: 0.0
            })
        );
        assert_eq!(r.services.len(), 2);
        assert_eq!(r.backends.len(), 3);
    }

    /// `status --json --rate`: each service and real server carries its rate.
    #[test]
    fn json_rates() {
        let prev = sample();
        let mut now = sample();
        now.time += 0.5;
        now.services[0].backends[0].packets += 50;
        now.services[0].packets += 50;
        let now = with_rates(&prev, now);
        assert_eq!(now.services[0].rate.map(|r| r.in_pps), Some(100.0));
        assert_eq!(
            now.services[0].backends[0].rate.map(|r| r.in_pps),
            Some(100.0)
        );
        assert_eq!(
            now.services[0].backends[1].rate.map(|r| r.in_pps),
            Some(0.0)
        );
        let json = serde_json::to_string(&now).unwrap();
        assert!(
            json.contains(r#""rate":{"cps":0.0,"in_pps":100.0,"in_bps":0.0}"#),
            "{json}"
        );
        // Without --rate nothing of it is in the JSON.
        assert!(!serde_json::to_string(&sample()).unwrap().contains("rate"));
    }

    /// `lb-daemon zero`: status counts from the baseline; a counter that went below it was
    /// made anew and counts from its own start.
    #[test]
    fn zeroed_counters() {
        let z = Zeroed::of(&sample());
        let mut now = sample();
        now.services[0].packets += 7;
        now.services[0].backends[0].bytes += 70;
        now.services[1].backends[0].packets = 3;
        now.reasons[0].packets += 1;
        z.subtract(&mut now);
        assert_eq!(
            (
                now.services[0].packets,
                now.services[0].bytes,
                now.services[0].new_flows
            ),
            (7, 0, 0)
        );
        assert_eq!(now.services[0].backends[0].bytes, 70);
        assert_eq!(now.services[0].backends[1].packets, 0);
        assert_eq!(now.services[1].backends[0].packets, 3);
        assert_eq!((now.reasons[0].packets, now.reasons[0].bytes), (1, 0));
        // What status does not count (flows in the table, health) is left alone.
        assert_eq!(
            now.services[0].active_flows,
            sample().services[0].active_flows
        );
        let mut restarted = sample();
        restarted.services[0].packets = 5;
        z.subtract(&mut restarted);
        assert_eq!(restarted.services[0].packets, 5);
    }

    #[test]
    fn rates_after_a_restart_or_a_change() {
        let prev = sample();
        // Restart: every counter went back to zero, a rate would be negative.
        let mut now = sample();
        now.time += 1.0;
        now.services[0].packets = 1;
        now.services[0].backends[0].bytes = 1;
        let r = rates(&prev, &now);
        assert_eq!(r.service(&now.services[0]), None);
        assert_eq!(
            r.backend(&now.services[0], &now.services[0].backends[0]),
            None
        );
        // The other backend still has its rate.
        assert!(r
            .backend(&now.services[0], &now.services[0].backends[1])
            .is_some());
        // A new service or backend: nothing to compare with.
        let mut now = sample();
        now.time += 1.0;
        now.services[0].port = 8080;
        now.services[1].backends[0].addr = "[2001:db8::12]:53".parse().unwrap();
        let r = rates(&prev, &now);
        assert_eq!(r.service(&now.services[0]), None);
        assert_eq!(
            r.backend(&now.services[1], &now.services[1].backends[0]),
            None
        );
        assert!(r.service(&now.services[1]).is_some());
        // Time going backwards, or standing still: no rates at all.
        for dt in [0.0, -1.0, f64::NAN] {
            let mut now = sample();
            now.time += dt;
            let r = rates(&prev, &now);
            assert!(r.services.is_empty() && r.backends.is_empty(), "{dt}");
        }
    }

    #[test]
    fn prometheus_golden() {
        let mut s = sample();
        s.notify = Some(NotifyStatus {
            events: 4,
            queue_dropped: 0,
            sink_written: 4,
            sink_dropped: 1,
            hooks_started: 4,
            hooks_failed: 1,
            hooks_timed_out: 0,
        });
        s.reasons.truncate(2);
        let want = r#"# HELP lb_service_packets_total Packets forwarded to the service's backends.
# TYPE lb_service_packets_total counter
lb_service_packets_total{vip="192.0.2.100",port="80",protocol="TCP"} 340
lb_service_packets_total{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_service_bytes_total Bytes (IP packets) forwarded to the service's backends.
# TYPE lb_service_bytes_total counter
lb_service_bytes_total{vip="192.0.2.100",port="80",protocol="TCP"} 45678
lb_service_bytes_total{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_service_new_flows_total Flows (connections) scheduled to a backend of the service.
# TYPE lb_service_new_flows_total counter
lb_service_new_flows_total{vip="192.0.2.100",port="80",protocol="TCP"} 12
lb_service_new_flows_total{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_service_active 1 if this node serves the service (VRRP master for its VIP, or no VRRP), 0 if not.
# TYPE lb_service_active gauge
lb_service_active{vip="192.0.2.100",port="80",protocol="TCP"} 1
lb_service_active{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_service_active_flows Flows of the service in the connection table, not idle past its timeout.
# TYPE lb_service_active_flows gauge
lb_service_active_flows{vip="192.0.2.100",port="80",protocol="TCP"} 3
lb_service_active_flows{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_service_active_connections Established TCP connections of the service (ipvsadm's ActiveConn).
# TYPE lb_service_active_connections gauge
lb_service_active_connections{vip="192.0.2.100",port="80",protocol="TCP"} 2
lb_service_active_connections{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_service_inactive_connections Connections of the service in any other state, UDP flows included (ipvsadm's InActConn).
# TYPE lb_service_inactive_connections gauge
lb_service_inactive_connections{vip="192.0.2.100",port="80",protocol="TCP"} 1
lb_service_inactive_connections{vip="2001:db8::100",port="53",protocol="UDP"} 0
# HELP lb_backend_packets_total Packets forwarded to the backend.
# TYPE lb_backend_packets_total counter
lb_backend_packets_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 200
lb_backend_packets_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 140
lb_backend_packets_total{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_bytes_total Bytes (IP packets) forwarded to the backend.
# TYPE lb_backend_bytes_total counter
lb_backend_bytes_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 30000
lb_backend_bytes_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 15678
lb_backend_bytes_total{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_new_flows_total Flows (connections) scheduled to the backend.
# TYPE lb_backend_new_flows_total counter
lb_backend_new_flows_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 7
lb_backend_new_flows_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 5
lb_backend_new_flows_total{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_up 1 if the backend's health checks pass, 0 if they fail or have not run yet.
# TYPE lb_backend_up gauge
lb_backend_up{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 1
lb_backend_up{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 0
lb_backend_up{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_weight The backend's configured weight.
# TYPE lb_backend_weight gauge
lb_backend_weight{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 1
lb_backend_weight{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 1
lb_backend_weight{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 100
# HELP lb_backend_effective_weight The weight new flows are scheduled with (0: down, unresolved or drained).
# TYPE lb_backend_effective_weight gauge
lb_backend_effective_weight{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 1
lb_backend_effective_weight{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 0
lb_backend_effective_weight{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 100
# HELP lb_backend_active_flows Flows to the backend in the connection table, not idle past the service's timeout.
# TYPE lb_backend_active_flows gauge
lb_backend_active_flows{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 2
lb_backend_active_flows{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 1
lb_backend_active_flows{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_active_connections Established TCP connections to the backend (ipvsadm's ActiveConn).
# TYPE lb_backend_active_connections gauge
lb_backend_active_connections{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 2
lb_backend_active_connections{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 0
lb_backend_active_connections{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_inactive_connections Connections to the backend in any other state, UDP flows included (ipvsadm's InActConn).
# TYPE lb_backend_inactive_connections gauge
lb_backend_inactive_connections{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 0
lb_backend_inactive_connections{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 1
lb_backend_inactive_connections{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_checks_total Health-check probes run against the backend (retries included).
# TYPE lb_backend_checks_total counter
lb_backend_checks_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 40
lb_backend_checks_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 41
lb_backend_checks_total{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_checks_failed_total Health-check probes against the backend that failed (retries included).
# TYPE lb_backend_checks_failed_total counter
lb_backend_checks_failed_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 0
lb_backend_checks_failed_total{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.12:80"} 6
lb_backend_checks_failed_total{vip="2001:db8::100",port="53",protocol="UDP",backend="[2001:db8::11]:53"} 0
# HELP lb_backend_check_latency_seconds How long the backend's last successful health check took.
# TYPE lb_backend_check_latency_seconds gauge
lb_backend_check_latency_seconds{vip="192.0.2.100",port="80",protocol="TCP",backend="192.0.2.11:80"} 0.0015
# HELP lb_vrrp_state 1 for the VRRP instance's current state, 0 for the others.
# TYPE lb_vrrp_state gauge
lb_vrrp_state{instance="VI_1",state="INIT"} 0
lb_vrrp_state{instance="VI_1",state="BACKUP"} 0
lb_vrrp_state{instance="VI_1",state="MASTER"} 1
lb_vrrp_state{instance="VI_1",state="FAULT"} 0
lb_vrrp_state{instance="VI_6",state="INIT"} 0
lb_vrrp_state{instance="VI_6",state="BACKUP"} 1
lb_vrrp_state{instance="VI_6",state="MASTER"} 0
lb_vrrp_state{instance="VI_6",state="FAULT"} 0
# HELP lb_vrrp_priority The VRRP instance's configured priority.
# TYPE lb_vrrp_priority gauge
lb_vrrp_priority{instance="VI_1"} 150
lb_vrrp_priority{instance="VI_6"} 100
# HELP lb_vrrp_effective_priority The VRRP instance's priority with tracking weights applied (what its adverts carry).
# TYPE lb_vrrp_effective_priority gauge
lb_vrrp_effective_priority{instance="VI_1"} 150
lb_vrrp_effective_priority{instance="VI_6"} 90
# HELP lb_vrrp_transitions_total State changes of the VRRP instance.
# TYPE lb_vrrp_transitions_total counter
lb_vrrp_transitions_total{instance="VI_1"} 3
lb_vrrp_transitions_total{instance="VI_6"} 1
# HELP lb_vrrp_discards_total VRRP adverts discarded by the instance, per reason.
# TYPE lb_vrrp_discards_total counter
lb_vrrp_discards_total{instance="VI_1",reason="auth_mismatch"} 0
lb_vrrp_discards_total{instance="VI_1",reason="bad_ttl"} 2
# HELP lb_vrrp_socket_drops_total VRRP datagrams the kernel dropped before the instance read them (its socket's receive queue was full).
# TYPE lb_vrrp_socket_drops_total counter
lb_vrrp_socket_drops_total{instance="VI_1"} 7
lb_vrrp_socket_drops_total{instance="VI_6"} 0
# HELP lb_xdp_packets_total Packets the XDP program handled, per reason and verdict.
# TYPE lb_xdp_packets_total counter
lb_xdp_packets_total{reason="fwd_established",verdict="tx"} 300
lb_xdp_packets_total{reason="fwd_new_flow",verdict="tx"} 40
# HELP lb_xdp_bytes_total Bytes the XDP program handled, per reason and verdict.
# TYPE lb_xdp_bytes_total counter
lb_xdp_bytes_total{reason="fwd_established",verdict="tx"} 40000
lb_xdp_bytes_total{reason="fwd_new_flow",verdict="tx"} 5678
# HELP lb_dataplane_map_writes_total Element writes the daemon made to the XDP program's maps (services, rings, backends).
# TYPE lb_dataplane_map_writes_total counter
lb_dataplane_map_writes_total 1234
# HELP lb_notify_events_total VRRP state events for notify hooks and the notify FIFO.
# TYPE lb_notify_events_total counter
lb_notify_events_total 4
# HELP lb_notify_dropped_total Notify events dropped: the worker's queue was full, or the FIFO unread.
# TYPE lb_notify_dropped_total counter
lb_notify_dropped_total{where="queue"} 0
lb_notify_dropped_total{where="sink"} 1
# HELP lb_notify_hooks_total Notify hooks started, and how many of them failed or timed out.
# TYPE lb_notify_hooks_total counter
lb_notify_hooks_total{result="started"} 4
lb_notify_hooks_total{result="failed"} 1
lb_notify_hooks_total{result="timed_out"} 0
"#;
        let got = render_prometheus(&s);
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got, want);
    }

    #[test]
    fn prometheus_without_backends() {
        let mut s = sample();
        s.notify = Some(NotifyStatus::default());
        s.sync = Some(sync_sample());
        let all = render_prometheus(&s);
        assert_eq!(
            render_prometheus_with(&s, PromOptions { per_backend: true }),
            all
        );
        let off = render_prometheus_with(&s, PromOptions { per_backend: false });
        // Exactly the per-backend families' lines fewer, everything else as it was.
        let want: String = all
            .lines()
            .filter(|l| !l.contains("lb_backend_"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(off, want);
        assert!(all.contains("lb_backend_packets_total{"));
        assert!(off.contains(
            "lb_service_packets_total{vip=\"192.0.2.100\",port=\"80\",protocol=\"TCP\"} 340\n"
        ));
        assert!(off.contains("lb_xdp_packets_total{"));
        assert!(off.contains("lb_vrrp_state{"));
        assert!(off.contains("lb_sync_sending 1\n"));
        assert!(off.contains("lb_notify_events_total 0\n"));
        for line in off.lines() {
            parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
    }

    /// One line of the text format: a `# HELP`/`# TYPE` comment, or `name{labels} value`.
    /// Returns the label values (unescaped) of a sample.
    fn parse_line(line: &str) -> Result<Vec<(String, String)>, String> {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let kind = words.next().unwrap_or("");
            let name = words.next().ok_or("comment without a metric name")?;
            check_name(name)?;
            let text = words.next().ok_or("comment without text")?;
            match kind {
                "HELP" => Ok(vec![]),
                "TYPE"
                    if ["counter", "gauge", "histogram", "summary", "untyped"].contains(&text) =>
                {
                    Ok(vec![])
                }
                _ => Err(format!("bad comment {kind} {text}")),
            }
        } else {
            let end = line
                .find(['{', ' '])
                .ok_or("no value after the metric name")?;
            check_name(&line[..end])?;
            let mut rest = &line[end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                let mut chars = r.char_indices().peekable();
                loop {
                    // name
                    let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
                    let mut eq = None;
                    for (i, c) in chars.by_ref() {
                        if c == '=' {
                            eq = Some(i);
                            break;
                        }
                    }
                    let eq = eq.ok_or("label without =")?;
                    let name = &r[start..eq];
                    check_name(name)?;
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value not quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or("unterminated label value")?.1 {
                            '"' => break,
                            '\n' => return Err("raw newline".into()),
                            '\\' => match chars.next().ok_or("dangling backslash")?.1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                c => return Err(format!("bad escape \\{c}")),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.push((name.to_string(), value));
                    match chars.next().ok_or("unterminated labels")? {
                        (_, ',') => continue,
                        (i, '}') => {
                            rest = &r[i + 1..];
                            break;
                        }
                        (_, c) => return Err(format!("unexpected {c:?} after a label")),
                    }
                }
            }
            let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
            match value {
                "+Inf" | "-Inf" | "NaN" => {}
                v => {
                    v.parse::<f64>()
                        .map_err(|e| format!("bad value {v:?}: {e}"))?;
                }
            }
            Ok(labels)
        }
    }

    fn check_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            });
        if ok {
            Ok(())
        } else {
            Err(format!("bad name {name:?}"))
        }
    }

    fn sync_sample() -> SyncStatus {
        SyncStatus {
            interface: "eth0".into(),
            vrrp_instance: "VI_1".into(),
            sync_id: 38,
            role: "sending".into(),
            boot_id: 1_700_000_000,
            peers: vec![SyncPeerStatus {
                addr: Some("192.0.2.3".parse().unwrap()),
                last_heard_ms: 420,
                boot_id: 1_700_000_100,
                lag_ms: Some(1.5),
                wants_full: false,
            }],
            lag_ms: Some(1.5),
            sent_messages: 10,
            sent_entries: 1000,
            sent_bytes: 12000,
            received_messages: 0,
            received_entries: 0,
            installed_entries: 0,
            lost_messages: 0,
            full_syncs_sent: 1,
            full_syncs_received: 0,
            dropped: [("bad_hmac".to_string(), 3), ("ring_lost".to_string(), 0)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn sync_status_in_the_table_and_the_metrics() {
        let mut s = sample();
        s.sync = Some(sync_sample());
        let table = render_table(&s, None);
        let want = [
            "",
            "Connection sync  eth0 vrrp_instance VI_1 sync_id 38  sending  lag 1.5 ms",
            "  sent 10 messages, 1000 entries, 12000 bytes; received 0 messages, 0 entries, \
             0 installed; lost 0 messages; full syncs sent 1, received 0",
            "  peer 192.0.2.3  heard 420 ms ago  lag 1.5 ms",
            "  dropped: bad_hmac=3",
            "",
        ]
        .join("\n");
        assert!(table.contains(&want), "{table}");
        let text = render_prometheus(&s);
        for line in [
            "lb_sync_sending 1\n",
            "lb_sync_entries_total{direction=\"installed\"} 0\n",
            "lb_sync_bytes_total{direction=\"sent\"} 12000\n",
            "lb_sync_dropped_total{reason=\"bad_hmac\"} 3\n",
            "lb_sync_peer_lag_seconds{peer=\"192.0.2.3\"} 0.0015\n",
            "lb_sync_peer_last_heard_seconds{peer=\"192.0.2.3\"} 0.42\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["sync"]["peers"][0]["lag_ms"], 1.5);
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back.sync, s.sync);
    }

    #[test]
    fn prometheus_every_line_parses_and_labels_are_escaped() {
        let mut s = sample();
        let nasty = "we\"ird\\na\nme";
        s.vrrp[0].name = nasty.into();
        s.vrrp[1].state = "STOP".into();
        s.services[0].backends[0].check_latency_ms = Some(f64::INFINITY);
        s.services[0].protocol = "T{C}P, x=\"1\"".into();
        s.notify = Some(NotifyStatus::default());
        s.sync = Some(sync_sample());
        let text = render_prometheus(&s);
        assert!(text.ends_with('\n'));
        let mut seen_nasty = false;
        let mut families = std::collections::HashSet::new();
        for line in text.lines() {
            let labels = parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            seen_nasty |= labels.iter().any(|(k, v)| k == "instance" && v == nasty);
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(families.insert(name.to_string()), "{name} typed twice");
            }
        }
        assert!(seen_nasty);
        assert!(text.contains("lb_vrrp_state{instance=\"VI_6\",state=\"STOP\"} 1\n"));
        assert!(text.contains("} +Inf\n"));
        // No family is left out for an empty snapshot either.
        for line in render_prometheus(&Snapshot::default()).lines() {
            parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
    }

    #[test]
    fn json_field_names_are_stable() {
        let s = sample();
        let v = serde_json::to_value(&s).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k.join(",")
        };
        assert_eq!(
            keys(&v),
            "announce,map_writes,notify,reasons,router_id,services,syn_guard,sync,time,vmac_mld,vrrp"
        );
        assert_eq!(
            keys(&v["services"][0]),
            "active,active_conns,active_flows,backends,bytes,inactive_conns,new_flows,packets,persistence_timeout,port,protocol,scheduler,vip"
        );
        assert_eq!(
            keys(&v["services"][0]["backends"][0]),
            "active_conns,active_flows,addr,bytes,check_latency_ms,checks_failed,checks_run,effective_weight,health,inactive_conns,last_error,mac,new_flows,packets,weight"
        );
        assert_eq!(
            keys(&v["vrrp"][0]),
            "discards,effective_priority,interface,master,name,priority,socket_drops,state,transitions,version,vrid"
        );
        assert_eq!(keys(&v["reasons"][0]), "bytes,name,packets,verdict");
        assert_eq!(v["services"][0]["vip"], "192.0.2.100");
        assert_eq!(v["services"][1]["backends"][0]["addr"], "[2001:db8::11]:53");
        let back: Snapshot = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        // What a future daemon adds is ignored; what an older one left out has a default.
        let old: Snapshot = serde_json::from_str(
            r#"{"time":1.0,"services":[{"vip":"192.0.2.1","port":80,"protocol":"TCP",
                "backends":[{"addr":"192.0.2.2:80"}],"future":1}],"future":[]}"#,
        )
        .unwrap();
        assert_eq!(old.services[0].backends[0].weight, 0);
        assert_eq!(old.vrrp, vec![]);
        assert_eq!(old.map_writes, 0);
    }

    #[test]
    fn reasons_from_the_program_counters() {
        let mut c = vec![lb_common::ReasonCounters::default(); lb_common::reason::COUNT as usize];
        c[lb_common::reason::DROP_MALFORMED_ETH as usize].packets = 3;
        let r = reasons_from_counters(&c);
        assert_eq!(r.len(), lb_common::reason::COUNT as usize);
        assert_eq!(r[0].name, "fwd_established");
        assert_eq!(r[0].verdict, "tx");
        let d = &r[lb_common::reason::DROP_MALFORMED_ETH as usize];
        assert_eq!(
            (d.name.as_str(), d.verdict.as_str(), d.packets),
            ("drop_malformed_eth", "drop", 3)
        );
        assert_eq!(r[lb_common::reason::PASS_VRRP as usize].verdict, "pass");
    }
}
