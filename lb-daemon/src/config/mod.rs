//! The daemon's TOML configuration. Keys keep keepalived's names (`virtual_server`,
//! `real_server`, `lb_algo`, `lb_kind`, `persistence_timeout`...), so a keepalived.conf maps
//! onto it line by line. Unknown keys are errors, and every error names the file, the line
//! and the key.
use std::{
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

pub mod announce;
pub mod check;
pub mod group;
pub mod split;
pub mod sync;
pub mod vrrp;

pub use announce::AnnounceConfig;
pub use sync::SyncConfig;
pub use vrrp::{SyncGroup, VrrpInstance, VrrpScript};

// The configuration is a leaf: it reads and checks the file by its own rules, and uses
// nothing of the daemon but the ground floor's model.
use crate::model::{
    is_prime, Forward, Limits, LvsTimeouts, Proto, Scheduler, ServiceKey, Thresholds, Tunnel,
    TunnelKind, XdpMode, DEFAULT_TUNNEL_TTL,
};

/// The control socket of `lb-daemon status` and `reload` when `global_defs.control_socket`
/// is not set.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lb-daemon.sock";
/// Where the dataplane is pinned unless `[dataplane] pin_root` says otherwise: where
/// systemd and iproute2 mount the bpf filesystem.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf";

/// Where the daemon keeps what must survive a restart when `global_defs.state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb-daemon";
/// IPVS's weight range (`ipvsadm -w`: 0..=65535).
pub const MAX_WEIGHT: u32 = 65535;
/// The largest Maglev table an `mh` service may ask for (64 MiB of ring).
pub const MAX_MH_TABLE_SIZE: u32 = 1 << 24;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, or a value of the wrong type (serde's message names no key, so `key`
    /// is read back from the text around the error).
    #[error("{file}:{line}:{column}: {}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    global_defs: GlobalDefs,
    dataplane: Option<RawDataplane>,
    #[serde(default)]
    vrrp_script: Vec<vrrp::RawScript>,
    #[serde(default)]
    track_file: Vec<vrrp::RawTrackFile>,
    #[serde(default)]
    vrrp_track_process: Vec<vrrp::RawTrackProcess>,
    #[serde(default)]
    vrrp_instance: Vec<vrrp::RawInstance>,
    #[serde(default)]
    vrrp_sync_group: Vec<vrrp::RawSyncGroup>,
    /// `None`: no `virtual_server` key at all (which the rest of a cut file must have).
    virtual_server: Option<Vec<RawVirtualServer>>,
    sync: Option<sync::RawSync>,
    announce: Option<announce::RawAnnounce>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlobalDefs {
    /// keepalived's `router_id`: names this node in logs.
    pub router_id: Option<String>,
    /// Default VRRP version of the instances: 2 (keepalived's default) or 3.
    pub vrrp_version: Option<u8>,
    /// keepalived's `enable_script_security`, on unless set to false here: scripts that a
    /// user other than root could change are refused.
    pub enable_script_security: Option<bool>,
    /// The user scripts run as unless a script names its own.
    pub script_user: Option<String>,
    /// State changes as JSON lines, to this FIFO or Unix socket path.
    pub notify_fifo: Option<PathBuf>,
    /// The lines' format: `json` (the default) or `keepalived` (keepalived's own text lines,
    /// `INSTANCE "VI_1" MASTER 100`, for the FIFO readers written for it; the FIFO is then
    /// made when it does not exist, as keepalived makes it).
    pub notify_fifo_format: Option<FifoFormat>,
    /// keepalived's `notify_fifo_script`: a program started with the daemon (and again when a
    /// reload changes it), the FIFO's path as its last argument, to read the events; run as
    /// `script_user`, killed when the daemon stops.
    pub notify_fifo_script: Option<Spanned<String>>,
    /// The control socket of `lb-daemon status` and `reload` (default /run/lb-daemon.sock).
    pub control_socket: Option<PathBuf>,
    /// Where Prometheus metrics are served (any address; none by default).
    pub metrics_address: Option<Spanned<std::net::SocketAddr>>,
    /// A file holding the bearer token every scrape must present (`Authorization: Bearer
    /// <token>`), read at start and at every reload; without it the metrics are served to
    /// anyone who can reach `metrics_address`. See [`Config::metrics_token`].
    pub metrics_bearer_token_file: Option<Spanned<String>>,
    /// Metrics per real server (on by default); false keeps only the per-service ones, so a
    /// scrape of a node with many thousands of real servers stays small.
    pub metrics_per_backend: Option<bool>,
    /// What SIGTERM (and `lb-daemon stop` without `--keep`/`--release`) means: `release`
    /// (the default, as keepalived: priority-0 adverts, the VIPs removed, the program
    /// detached, its pins removed) or `keep` (keepalived's `--dont-release-vrrp`, and the
    /// dataplane left forwarding: what a restart or an upgrade takes over).
    pub on_stop: Option<OnStop>,
    /// What must outlive a run, kept across restarts: the runtime overrides of `lb-daemon
    /// real-server` (default /var/lib/lb-daemon).
    pub state_dir: Option<Spanned<PathBuf>>,
    /// The members of this group may use the control socket's read-only commands (status,
    /// connections, which); changes stay root's. Without it the socket is root's alone.
    pub control_socket_group: Option<Spanned<String>>,
    /// keepalived's `lvs_timeouts` (`ipvsadm --set`): `{ tcp = S, tcpfin = S, udp = S }`,
    /// the idle timeouts of established TCP connections, of closing ones (FIN_WAIT) and of
    /// UDP flows; each absent one keeps IPVS's default (900, 120, 300). A service's own
    /// `idle_timeout` wins over `tcp`/`udp`.
    pub lvs_timeouts: Option<Spanned<RawLvsTimeouts>>,
    /// keepalived's `vrrp_startup_delay`: seconds the VRRP instances wait in INIT when the
    /// daemon starts (not at a reload), for the network to settle after a boot. A master
    /// that resumes (the previous run's addresses still in place) does not wait.
    pub vrrp_startup_delay: Option<Spanned<f64>>,
    /// keepalived's `vrrp_garp_interval` and `vrrp_gna_interval`: seconds between two
    /// gratuitous ARPs (unsolicited NAs) of a burst, for switches that police them.
    pub vrrp_garp_interval: Option<Spanned<f64>>,
    pub vrrp_gna_interval: Option<Spanned<f64>>,
}

/// See [`GlobalDefs::notify_fifo_format`].
#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FifoFormat {
    #[default]
    Json,
    Keepalived,
}

/// See [`GlobalDefs::lvs_timeouts`].
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLvsTimeouts {
    pub tcp: Option<Spanned<u32>>,
    pub tcpfin: Option<Spanned<u32>>,
    pub udp: Option<Spanned<u32>>,
}

/// See [`GlobalDefs::on_stop`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    Keep,
    #[default]
    Release,
}

impl GlobalDefs {
    /// `vrrp_startup_delay`, checked by [`Config::parse`].
    pub fn startup_delay(&self) -> Duration {
        self.vrrp_startup_delay
            .as_ref()
            .map_or(Duration::ZERO, |s| Duration::from_secs_f64(*s.get_ref()))
    }

    /// `lvs_timeouts`, checked at parse (each at least 1 s).
    pub fn lvs_timeouts(&self) -> LvsTimeouts {
        self.lvs_timeouts
            .as_ref()
            .map(|t| {
                let t = t.get_ref();
                let v = |s: &Option<Spanned<u32>>| s.as_ref().map(|s| *s.get_ref());
                LvsTimeouts {
                    tcp: v(&t.tcp),
                    tcpfin: v(&t.tcpfin),
                    udp: v(&t.udp),
                }
            })
            .unwrap_or_default()
    }

    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }

    pub fn state_dir_path(&self) -> PathBuf {
        self.state_dir
            .as_ref()
            .map(|d| d.get_ref().clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    interface: String,
    /// Where the program runs as well: the interfaces towards NAT real servers, whose
    /// replies it translates (IPVS sees every interface; XDP only those it is attached to).
    #[serde(default)]
    inside_interfaces: Vec<Spanned<String>>,
    xdp_mode: Option<Spanned<String>>,
    max_flows: Option<Spanned<u32>>,
    #[serde(default)]
    keep_xdp_on_exit: bool,
    /// The bpf filesystem the maps and the link are pinned on (mounted there if it is not
    /// one yet).
    pin_root: Option<Spanned<String>>,
    /// Room for at least this many services, real servers and ring slots: the maps follow
    /// the configuration anyway; these reserve room for growth, so that a reload within
    /// them never replaces the maps.
    max_services: Option<Spanned<u32>>,
    max_real_servers: Option<Spanned<u32>>,
    ring_slots: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVirtualServer {
    /// The VIP and port, or `virtual_server_group`.
    ip: Option<Spanned<String>>,
    port: Option<u16>,
    /// keepalived's `virtual_server_group`: the service's (VIP, port)s, one service with
    /// one pool, scheduler and persistence table (see [`group`]).
    virtual_server_group: Option<Spanned<Vec<Spanned<String>>>>,
    protocol: Spanned<String>,
    /// keepalived's default: wlc.
    lb_algo: Option<Spanned<String>>,
    /// "DR", "TUN" or "NAT" (keepalived's `lb_kind`, or its synonym `lvs_method`).
    #[serde(alias = "lvs_method")]
    lb_kind: Spanned<String>,
    /// TUN: "ipip" (the default), "gue" (with `tunnel_port`) or "gre"; keepalived's
    /// `lvs_method TUN type ...`. Each real server may say otherwise.
    tunnel_type: Option<Spanned<String>>,
    /// TUN with GUE: the real servers' UDP port (keepalived's `port N`).
    tunnel_port: Option<Spanned<u16>>,
    /// TUN: the outer TTL (hop limit), 64 by default.
    tunnel_ttl: Option<Spanned<u8>>,
    /// TUN: the outer source address (default: the interface's primary address of the
    /// VIP's family).
    tunnel_source: Option<Spanned<String>>,
    #[serde(default)]
    persistence_timeout: u32,
    /// IPVS `-M`: a netmask (`255.255.255.0`) or a prefix length (`24`).
    persistence_granularity: Option<Spanned<toml::Value>>,
    /// `sh`/`mh` hash the source port too (IPVS `sh-port`/`mh-port`).
    #[serde(default)]
    hash_port: bool,
    /// Seconds an idle flow is remembered; IPVS's protocol defaults when absent.
    idle_timeout: Option<u32>,
    /// The VIP is not owned by a vrrp_instance: this node always serves it.
    #[serde(default, rename = "static")]
    is_static: bool,
    /// IPVS's `sloppy_tcp`, per service: a TCP packet other than an opening SYN, of a flow
    /// the table does not know, is scheduled (on by default: connections then survive a
    /// failover or an expiry without sync). false: only a SYN opens a flow, as in IPVS.
    sloppy_tcp: Option<bool>,
    /// IPVS's `expire_nodest_conn`, per service: the flows of a real server that fails its
    /// checks (or of every real server while a sorry_server stands in) are rescheduled.
    /// Off by default: they keep going to it, so a false verdict resets nothing.
    #[serde(default)]
    expire_nodest_conn: bool,
    /// `mh`: the Maglev table size M, a prime (default 65537, IPVS's).
    mh_table_size: Option<Spanned<u32>>,
    #[serde(default)]
    real_server: Vec<RawRealServer>,
    /// Seconds between checks of each real server (keepalived's default: 60).
    delay_loop: Option<Spanned<f64>>,
    /// A real server starts down until its first successful check.
    #[serde(default)]
    alpha: bool,
    /// keepalived's `quorum`: the healthy weight the service needs (default 1).
    quorum: Option<Spanned<u32>>,
    /// keepalived's `hysteresis`: weight units of slack around the quorum (default 0).
    #[serde(default)]
    hysteresis: u32,
    /// keepalived's `sorry_server`: the only backend while the quorum is lost.
    sorry_server: Option<RawSorryServer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSorryServer {
    ip: Spanned<String>,
    port: u16,
    /// keepalived's `sorry_server_lvs_method`: "DR", "TUN" (the service's tunnel, IPIP
    /// where the service has none) or "NAT"; default: the service's `lb_kind`.
    lvs_method: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealServer {
    ip: Spanned<String>,
    port: Spanned<u16>,
    #[serde(default = "one")]
    weight: Spanned<u32>,
    /// keepalived's `uthreshold`: the most connections (active and inactive) it takes.
    uthreshold: Option<Spanned<u32>>,
    /// keepalived's `lthreshold`: below this many it takes new ones again (default three
    /// quarters of `uthreshold`).
    lthreshold: Option<Spanned<u32>>,
    /// keepalived's per-real-server `lvs_method`: "DR", "TUN" or "NAT" (default: the
    /// virtual_server's `lb_kind`).
    lvs_method: Option<Spanned<String>>,
    /// TUN: this real server's tunnel type and GUE port (default: the virtual_server's).
    tunnel_type: Option<Spanned<String>>,
    tunnel_port: Option<Spanned<u16>>,
    // Health checks, keepalived's blocks and keys in TOML form; `config/check/` reads them.
    #[serde(rename = "TCP_CHECK")]
    tcp_check: Option<check::RawTcpCheck>,
    #[serde(rename = "HTTP_GET")]
    http_get: Option<check::RawHttpGet>,
    #[serde(rename = "MISC_CHECK")]
    misc_check: Option<check::RawMiscCheck>,
    #[serde(rename = "SSL_GET")]
    ssl_get: Option<check::RawHttpGet>,
    #[serde(rename = "DNS_CHECK")]
    dns_check: Option<check::RawDnsCheck>,
    #[serde(rename = "UDP_CHECK")]
    udp_check: Option<check::RawUdpCheck>,
    #[serde(rename = "PING_CHECK")]
    ping_check: Option<check::RawPingCheck>,
    #[serde(rename = "SMTP_CHECK")]
    smtp_check: Option<check::RawSmtpCheck>,
    #[serde(rename = "FILE_CHECK")]
    file_check: Option<check::RawFileCheck>,
    /// Weight 0 instead of removal when the checks fail.
    #[serde(default)]
    inhibit_on_failure: bool,
    notify_up: Option<Spanned<String>>,
    notify_down: Option<Spanned<String>>,
    /// Overrides the virtual_server's `delay_loop`.
    delay_loop: Option<Spanned<f64>>,
    /// Overrides the virtual_server's `alpha`.
    alpha: Option<bool>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// The `[dataplane]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    pub interface: String,
    /// The other interfaces the program runs on (NAT's inside networks): same mode, same
    /// maps, the same program (a packet for a VIP arriving there is balanced as on the
    /// main interface; what the inside should carry are the NAT real servers' replies).
    pub inside_interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub max_flows: u32,
    /// Leave the program forwarding when the daemon stops (a restart or an upgrade),
    /// instead of detaching it.
    pub keep_xdp_on_exit: bool,
    /// The bpf filesystem the dataplane is pinned on (`/sys/fs/bpf` by default).
    pub pin_root: PathBuf,
    /// The least room the maps get (`max_services`, `max_real_servers`, `ring_slots`; 0
    /// where not set): the daemon's map sizes are at least these.
    pub reserve: Limits,
}

/// A file a secret is read from, and the line that names it (for the errors about the
/// file, which come when it is read: at start, at `check`, at every reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub path: PathBuf,
    pub line: usize,
}

/// The key of [`GlobalDefs::metrics_bearer_token_file`], as its errors name it.
const METRICS_TOKEN_KEY: &str = "global_defs.metrics_bearer_token_file";

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub global_defs: GlobalDefs,
    /// `global_defs.metrics_bearer_token_file`, checked (an absolute path, with a
    /// `metrics_address`); read by [`Config::metrics_token`].
    pub metrics_token_file: Option<SecretFile>,
    /// Where and how XDP runs; absent for a VRRP-only node (keepalived + nginx).
    pub dataplane: Option<DataplaneConfig>,
    pub vrrp_scripts: Vec<VrrpScript>,
    /// keepalived's `track_file` blocks, for the instances' `track_file` and FILE_CHECK.
    pub track_files: Vec<vrrp::TrackFile>,
    /// keepalived's `vrrp_track_process` blocks.
    pub track_processes: Vec<vrrp::TrackProcess>,
    /// Every script and hook program, and every other file read, with its line.
    pub scripts: Vec<ScriptRef>,
    pub vrrp_instances: Vec<VrrpInstance>,
    pub sync_groups: Vec<SyncGroup>,
    /// Shared with the parse cache ([`split::Cache`]): a reload that leaves a service's
    /// text alone hands over the same one, which says it is unchanged.
    pub virtual_servers: Vec<Arc<VirtualServer>>,
    /// Connection sync with the peer LB (or every peer, under `[announce]`); absent: none.
    pub sync: Option<SyncConfig>,
    /// VIPs routed to this node by a routing daemon; absent: every VIP is VRRP's or static.
    pub announce: Option<AnnounceConfig>,
}

impl Config {
    /// Whether some real server (or sorry server) is reached by NAT: the program then needs
    /// its reverse tables, and the inside interfaces their replies.
    pub fn has_nat(&self) -> bool {
        self.virtual_servers
            .iter()
            .any(|vs| vs.forwards().any(|f| f == Forward::Nat))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServer {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub sched: Scheduler,
    pub persistence_timeout: u32,
    pub persistence_prefix: u8,
    pub hash_port: bool,
    /// Its own `idle_timeout`; none: `lvs_timeouts`' or IPVS's ([`Self::idle_timeout`]).
    pub idle_timeout: Option<u32>,
    pub is_static: bool,
    /// IPVS `sloppy_tcp` (see the TOML key).
    pub sloppy_tcp: bool,
    /// IPVS `expire_nodest_conn` (see the TOML key).
    pub expire_nodest_conn: bool,
    /// `mh`: the Maglev table size M (a prime).
    pub mh_table_size: u32,
    pub real_servers: Vec<RealServer>,
    pub quorum: u32,
    pub hysteresis: u32,
    pub sorry_server: Option<SocketAddr>,
    /// How the sorry server is reached: the service's `lb_kind`, as in keepalived (a TUN
    /// service's tunnel; a NAT service's sorry server may listen on another port).
    pub sorry_forward: Forward,
    /// Its other (VIP, port)s: the rest of its `virtual_server_group` (the first is `vip`
    /// and `port`, which name it).
    pub aliases: Vec<(IpAddr, u16)>,
}

impl VirtualServer {
    /// Every (VIP, port) that leads to it.
    pub fn addresses(&self) -> impl Iterator<Item = (IpAddr, u16)> + '_ {
        std::iter::once((self.vip, self.port)).chain(self.aliases.iter().copied())
    }

    /// Seconds an established connection (a UDP flow) may stay idle: its own
    /// `idle_timeout`, else `lvs_timeouts`' `tcp` (`udp`), else IPVS's default.
    pub fn idle_timeout(&self, lvs: &LvsTimeouts) -> u32 {
        self.idle_timeout.unwrap_or_else(|| {
            match self.proto {
                Proto::Tcp => lvs.tcp,
                Proto::Udp => lvs.udp,
            }
            .unwrap_or_else(|| self.proto.default_idle_timeout())
        })
    }

    /// How its real servers and its sorry server are reached.
    pub fn forwards(&self) -> impl Iterator<Item = Forward> + '_ {
        self.real_servers
            .iter()
            .map(|rs| rs.forward)
            .chain(self.sorry_server.map(|_| self.sorry_forward))
    }

    /// How logs, status and `track_virtual_server` name the service: `VIP:PORT/TCP`, with
    /// an IPv6 VIP in brackets.
    pub fn name(&self) -> String {
        self.key().to_string()
    }

    /// Its VIP, port and protocol: how the rest of the daemon finds it.
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(self.vip, self.port, self.proto)
    }

    /// keepalived's quorum with hysteresis: a service that has its quorum keeps it while the
    /// healthy weight stays at or above `quorum - hysteresis`; one that lost it regains it at
    /// `quorum + hysteresis`.
    pub fn quorum_next(&self, had_quorum: bool, healthy_weight: u32) -> bool {
        if had_quorum {
            healthy_weight >= self.quorum.saturating_sub(self.hysteresis)
        } else {
            healthy_weight >= self.quorum.saturating_add(self.hysteresis)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RealServer {
    pub addr: SocketAddr,
    pub weight: u32,
    /// How it is reached: direct routing, a tunnel (keepalived's `lvs_method TUN`; its
    /// `source` stays `None` when the file names none: the daemon takes the interface's) or
    /// NAT (its port may differ from the service's).
    pub forward: Forward,
    /// `uthreshold`/`lthreshold` (count-based schedulers only).
    pub thresholds: Thresholds,
    /// Its health checks; none means always healthy (keepalived without a checker).
    pub checks: check::Checks,
}

impl RealServer {
    /// keepalived's `alpha` on one of its checks: down until its first verdict.
    pub fn alpha(&self) -> bool {
        self.checks.checks.iter().any(|c| c.timing.alpha)
    }

    /// The weight it serves with given its checks' verdict (up, dynamic weight), or `None`
    /// while it fails them. No verdict yet counts as up, unless a check is `alpha` (down
    /// until its first success): a server a reload just added has no verdict until its
    /// checker has started, and must not take flows meanwhile.
    pub fn healthy_weight(&self, verdict: Option<(bool, Option<u32>)>) -> Option<u32> {
        match verdict.unwrap_or((!self.alpha(), None)) {
            (true, dynamic) => Some(dynamic.unwrap_or(self.weight)),
            (false, _) => None,
        }
    }
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    /// Where `text`'s lines are in the file: (a line of `text`, its line in the file),
    /// 0-based, in order; the lines after one follow it. A service block starts inside the
    /// file, the rest of a cut file ([`split`]) has holes.
    line_map: Vec<(usize, usize)>,
    /// Where each line starts: a position's line is a binary search away. Scanning the
    /// text from its start for each position made a file of many scripts quadratic (40k
    /// `vrrp_script` blocks took 44 s to check).
    line_starts: Vec<usize>,
    /// Every script and hook the file names, for [`Config::check_scripts`].
    scripts: std::cell::RefCell<Vec<ScriptRef>>,
}

/// A script or hook named in the file: where, and what it runs; or another file the
/// daemon reads when it starts its parts (an SSL_GET's `ca_file`), so that their errors name
/// the line. A service block's lines are relative to the block until the file is assembled,
/// which is why they are kept here and not in the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRef {
    pub line: usize,
    pub key: String,
    pub program: PathBuf,
    pub kind: RefKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// A program run as a script or hook: checked by `check_scripts`.
    Program,
    /// A file read, not run.
    Read,
    /// Not a file: the name of a `track_file` a FILE_CHECK uses (`program` holds it).
    TrackFileName,
}

impl Ctx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // The last line start at or before `offset` (the first is 0, so there is one).
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let at = line.saturating_sub(1);
        let i = self.line_map.partition_point(|&(from, _)| from <= at);
        let (from, to) = self
            .line_map
            .get(i.wrapping_sub(1))
            .copied()
            .unwrap_or((0, 0));
        (to + (at - from) + 1, offset - start + 1)
    }

    /// A script or hook command line: an absolute program (and its arguments), registered
    /// for [`Config::check_scripts`].
    fn command(&self, s: &str, span: Range<usize>, key: &str) -> Result<String, ConfigError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(self.invalid(span, key, "empty command"));
        }
        if !s.starts_with('/') {
            return Err(self.invalid(span, key, "scripts are given by absolute path"));
        }
        let program = s.split_whitespace().next().unwrap_or(s);
        self.scripts.borrow_mut().push(ScriptRef {
            line: self.line_col(span.start).0,
            key: key.to_string(),
            program: PathBuf::from(program),
            kind: RefKind::Program,
        });
        Ok(s.to_string())
    }

    /// A `track_file` named by a FILE_CHECK, checked against the `track_file` blocks once
    /// the file is assembled.
    fn track_file_named(&self, name: &str, span: Range<usize>, key: &str) {
        self.scripts.borrow_mut().push(ScriptRef {
            line: self.line_col(span.start).0,
            key: key.to_string(),
            program: PathBuf::from(name),
            kind: RefKind::TrackFileName,
        });
    }

    /// A file the daemon reads (not a program), registered for the line of its errors.
    fn file_read(&self, path: &str, span: Range<usize>, key: &str) {
        self.scripts.borrow_mut().push(ScriptRef {
            line: self.line_col(span.start).0,
            key: key.to_string(),
            program: PathBuf::from(path),
            kind: RefKind::Read,
        });
    }

    fn invalid(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        self.invalid_at(self.line_col(span.start).0, key, message)
    }

    fn invalid_at(&self, line: usize, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// A checked service and the line of its `ip` key, for the checks across services.
struct Service {
    vs: Arc<VirtualServer>,
    ip_line: usize,
}

/// A service block's document (see [`split`]): exactly one element.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    virtual_server: Vec<RawVirtualServer>,
}

impl<'a> Ctx<'a> {
    /// The context of `text`, whose lines are in `file` where `line_map` says (see
    /// [`Ctx::line_map`]).
    fn new(file: &'a Path, text: &'a str, line_map: Vec<(usize, usize)>) -> Self {
        Ctx {
            file,
            text,
            line_map,
            line_starts: std::iter::once(0)
                .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1))
                .collect(),
            scripts: Default::default(),
        }
    }

    fn toml<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| self.line_col(s.start));
            ConfigError::Parse {
                file: self.file.to_path_buf(),
                line,
                column,
                key: e.span().and_then(|s| key_at(self.text, s.start)),
                message: e.message().to_string(),
            }
        })
    }
}

impl Config {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_cached(file, &mut split::Cache::default())
    }

    /// [`Config::load`], parsing again only the services whose text is not in `cache`
    /// (what the daemon read last), and leaving in it what this read.
    pub fn load_cached(file: &Path, cache: &mut split::Cache) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse_cached(file, &text, cache)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_cached(file, text, &mut split::Cache::default())
    }

    /// [`Config::parse`], by service blocks (see [`split`]). Any error, or a file that
    /// cannot be cut, is left to the whole-file parse, whose errors are the reference; a
    /// failed parse leaves `cache` as it was.
    pub fn parse_cached(
        file: &Path,
        text: &str,
        cache: &mut split::Cache,
    ) -> Result<Self, ConfigError> {
        match split::split(text).and_then(|s| Self::parse_split(file, &s, cache)) {
            Some(c) => Ok(c),
            None => Self::parse_whole(file, text),
        }
    }

    /// The whole file as one TOML document: the reference [`Config::parse_cached`] agrees
    /// with (its errors are this one's), kept public for the fuzzer's comparison.
    pub fn parse_whole(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let cx = Ctx::new(file, text, vec![(0, 0)]);
        let mut raw: RawConfig = cx.toml()?;
        let services = raw.virtual_server.take().unwrap_or_default();
        let first = services
            .first()
            .map(|vs| cx.line_col(vs.name_span().start).0);
        Self::assemble(&cx, raw, first, || {
            services
                .iter()
                .map(|vs| {
                    Ok(Service {
                        vs: Arc::new(virtual_server(&cx, vs)?),
                        ip_line: cx.line_col(vs.name_span().start).0,
                    })
                })
                .collect()
        })
    }

    /// The rest of the file as one document, each service block as its own; blocks in
    /// `cache` are not parsed again. `None` on any error, or where the cut does not hold
    /// (a `virtual_server` key outside the blocks).
    fn parse_split(file: &Path, s: &split::Split, cache: &mut split::Cache) -> Option<Self> {
        let cx = Ctx::new(file, &s.rest, s.line_map.clone());
        let raw: RawConfig = cx.toml().ok()?;
        // Even `virtual_server = []`: beside the blocks' headers it is a TOML error.
        if raw.virtual_server.is_some() {
            return None;
        }
        let mut kept = Vec::new();
        let assembled = Self::assemble(&cx, raw, s.blocks.first().map(|b| b.line + 1), || {
            kept = split::parse_blocks(&s.blocks, cache, |b| parse_block(file, b))?;
            let mut services = Vec::with_capacity(kept.len());
            let mut scripts = cx.scripts.borrow_mut();
            for (b, (_, _, p)) in s.blocks.iter().zip(&kept) {
                services.push(Service {
                    vs: p.service.clone(),
                    ip_line: p.ip_line + b.line,
                });
                scripts.extend(p.scripts.iter().map(|r| ScriptRef {
                    line: r.line + b.line,
                    ..r.clone()
                }));
            }
            Ok(services)
        });
        match assembled {
            // The cache holds this file's blocks, and only them.
            Ok(config) => {
                cache.keep(kept);
                Some(config)
            }
            // Nothing lost: what was there before and the blocks read.
            Err(_) => {
                cache.add(kept);
                None
            }
        }
    }

    /// The configuration from its parsed parts; `services` is called where the services'
    /// own checks come in the order of checks.
    fn assemble(
        cx: &Ctx,
        raw: RawConfig,
        first_service_line: Option<usize>,
        services: impl FnOnce() -> Result<Vec<Service>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        let dataplane = raw
            .dataplane
            .as_ref()
            .map(|d| dataplane(cx, d))
            .transpose()?;
        if let (None, Some(line)) = (&dataplane, first_service_line) {
            return Err(cx.invalid_at(line, "virtual_server", "needs a [dataplane] section"));
        }
        let default_version = raw.global_defs.vrrp_version.unwrap_or(2);
        // Seconds, 0 up to a bound: keepalived warns from 1 s (intervals) and 60 s (the
        // start-up delay) on; beyond these they are mistakes.
        let secs =
            |v: &Option<Spanned<f64>>, key: &str, max: f64| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(Duration::ZERO),
                    Some(s) if (0.0..=max).contains(s.get_ref()) => {
                        Ok(Duration::from_secs_f64(*s.get_ref()))
                    }
                    Some(s) => Err(cx.invalid(
                        s.span(),
                        &format!("global_defs.{key}"),
                        format!("{} is out of range 0..={max} seconds", s.get_ref()),
                    )),
                }
            };
        let instance_defaults = vrrp::InstanceDefaults {
            version: default_version,
            garp_interval: secs(
                &raw.global_defs.vrrp_garp_interval,
                "vrrp_garp_interval",
                10.0,
            )?,
            gna_interval: secs(
                &raw.global_defs.vrrp_gna_interval,
                "vrrp_gna_interval",
                10.0,
            )?,
        };
        secs(
            &raw.global_defs.vrrp_startup_delay,
            "vrrp_startup_delay",
            3600.0,
        )?;
        let vrrp_scripts = raw
            .vrrp_script
            .iter()
            .map(|s| vrrp::script(cx, s))
            .collect::<Result<Vec<_>, _>>()?;
        let vrrp_instances: Vec<vrrp::VrrpInstance> = raw
            .vrrp_instance
            .iter()
            .map(|i| vrrp::instance(cx, i, &instance_defaults))
            .collect::<Result<Vec<_>, _>>()?;
        let sync_groups = raw
            .vrrp_sync_group
            .iter()
            .map(|g| vrrp::sync_group(cx, g))
            .collect::<Result<Vec<_>, _>>()?;
        let track_files = raw
            .track_file
            .iter()
            .map(|f| {
                let checked = vrrp::track_file(cx, f)?;
                cx.file_read(
                    &checked.path.to_string_lossy(),
                    f.file_span(),
                    "track_file.file",
                );
                Ok(checked)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let track_processes = raw
            .vrrp_track_process
            .iter()
            .map(|p| vrrp::track_process(cx, p))
            .collect::<Result<Vec<_>, _>>()?;
        vrrp::cross_check(
            cx,
            &raw.vrrp_script,
            &raw.track_file,
            &raw.vrrp_track_process,
            &raw.vrrp_instance,
            &vrrp_instances,
            &raw.vrrp_sync_group,
        )?;
        if let Some(d) = &raw.global_defs.state_dir {
            // Relative, it would depend on the directory `check` and `run` start in.
            if !d.get_ref().is_absolute() {
                return Err(cx.invalid(
                    d.span(),
                    "global_defs.state_dir",
                    "must be an absolute path",
                ));
            }
        }
        if let Some(t) = &raw.global_defs.lvs_timeouts {
            let v = t.get_ref();
            for (name, secs) in [("tcp", &v.tcp), ("tcpfin", &v.tcpfin), ("udp", &v.udp)] {
                if let Some(s) = secs.as_ref().filter(|s| *s.get_ref() == 0) {
                    return Err(cx.invalid(
                        s.span(),
                        &format!("global_defs.lvs_timeouts.{name}"),
                        "0: a timeout is at least 1 second (leave it out for IPVS's default)",
                    ));
                }
            }
        }
        if let Some(s) = &raw.global_defs.notify_fifo_script {
            let key = "global_defs.notify_fifo_script";
            cx.command(s.get_ref(), s.span(), key)?;
            if raw.global_defs.notify_fifo.is_none() {
                return Err(cx.invalid(
                    s.span(),
                    key,
                    "needs global_defs.notify_fifo: the FIFO it reads",
                ));
            }
        }
        if let Some(g) = &raw.global_defs.control_socket_group {
            if g.get_ref().is_empty() || g.get_ref().contains(['\0', ':', '\n']) {
                return Err(cx.invalid(
                    g.span(),
                    "global_defs.control_socket_group",
                    format!("{:?} is not a group name", g.get_ref()),
                ));
            }
        }
        let metrics_token_file = match &raw.global_defs.metrics_bearer_token_file {
            None => None,
            Some(f) if raw.global_defs.metrics_address.is_none() => {
                return Err(cx.invalid(
                    f.span(),
                    METRICS_TOKEN_KEY,
                    "needs global_defs.metrics_address: without it nothing serves the metrics",
                ))
            }
            Some(f) if !Path::new(f.get_ref()).is_absolute() => {
                return Err(cx.invalid(f.span(), METRICS_TOKEN_KEY, "must be an absolute path"))
            }
            Some(f) => Some(SecretFile {
                path: PathBuf::from(f.get_ref()),
                line: cx.line_col(f.span().start).0,
            }),
        };
        let services = services()?;
        // A FILE_CHECK's track_file, now that every block is read.
        for r in cx.scripts.borrow().iter() {
            if r.kind == RefKind::TrackFileName
                && !track_files
                    .iter()
                    .any(|f| f.name.as_str() == r.program.as_os_str())
            {
                return Err(cx.invalid_at(
                    r.line,
                    &r.key,
                    format!("no track_file {:?}", r.program.display().to_string()),
                ));
            }
        }
        let announce = match &raw.announce {
            None => None,
            Some(a) if dataplane.is_none() => {
                return Err(cx.invalid(
                    a.span(),
                    "announce",
                    "needs a [dataplane] section: the XDP program serves what is announced",
                ))
            }
            Some(a) => Some(announce::announce(cx, a, &vrrp_instances)?),
        };
        let mut keys = std::collections::HashSet::with_capacity(services.len());
        // Every VIP some instance owns, and what moves it: the instance, or its sync group
        // (whose members move together).
        let mover_of = |inst: &str| {
            sync_groups
                .iter()
                .find(|g| g.members.iter().any(|m| m == inst))
                .map_or_else(
                    || format!("vrrp_instance {inst}"),
                    |g| format!("vrrp_sync_group {}", g.name),
                )
        };
        let owned_vips: std::collections::HashMap<IpAddr, String> = vrrp_instances
            .iter()
            .flat_map(|i| {
                i.virtual_ipaddress
                    .iter()
                    .map(|v| (v.addr, mover_of(&i.name)))
            })
            .collect();
        let mut virtual_servers = Vec::with_capacity(services.len());
        for Service { vs, ip_line } in services {
            let key_name = if vs.aliases.is_empty() {
                "virtual_server.ip"
            } else {
                "virtual_server.virtual_server_group"
            };
            for (vip, port) in vs.addresses() {
                if !keys.insert(ServiceKey::new(vip, port, vs.proto)) {
                    return Err(cx.invalid_at(
                        ip_line,
                        key_name,
                        format!("{} is defined twice", ServiceKey::new(vip, port, vs.proto)),
                    ));
                }
            }
            if !vs.is_static {
                // The service is served where its first VIP is held: every VIP of a group
                // must move with it.
                let mut movers = std::collections::BTreeSet::new();
                for (vip, _) in vs.addresses() {
                    if announce.as_ref().is_some_and(|a| a.announces(vip)) {
                        movers.insert("[announce]");
                        continue;
                    }
                    let Some(m) = owned_vips.get(&vip) else {
                        return Err(cx.invalid_at(
                            ip_line,
                            key_name,
                            format!(
                                "{vip} is in no vrrp_instance's virtual_ipaddress: add it to one, or to announce.vips, or set static = true"
                            ),
                        ));
                    };
                    movers.insert(m.as_str());
                }
                if movers.len() > 1 {
                    return Err(cx.invalid_at(
                        ip_line,
                        key_name,
                        format!(
                            "its addresses are held by {}: one service is served on one node, so its addresses must move together (one vrrp_instance, or one vrrp_sync_group)",
                            movers.into_iter().collect::<Vec<_>>().join(" and ")
                        ),
                    ));
                }
            }
            virtual_servers.push(vs);
        }
        let mut vrrp_instances = vrrp_instances;
        for (inst, raw_inst) in vrrp_instances.iter_mut().zip(&raw.vrrp_instance) {
            for (t, raw_t) in inst
                .track_virtual_server
                .iter_mut()
                .zip(&raw_inst.track_virtual_server)
            {
                t.name = tracked_service(&virtual_servers, &t.name).map_err(|m| {
                    cx.invalid(raw_t.span(), "vrrp_instance.track_virtual_server", m)
                })?;
            }
        }
        if let Some(a) = &announce {
            // A route attracts traffic: a VIP without a service would draw it to nothing.
            if let Some(v) = a.vips.iter().find(|v| {
                !virtual_servers
                    .iter()
                    .any(|vs| vs.addresses().any(|(ip, _)| ip == **v))
            }) {
                return Err(cx.invalid_at(
                    a.line,
                    "announce.vips",
                    format!("{v} has no virtual_server: nothing would serve what its route draws"),
                ));
            }
        }
        let sync = match &raw.sync {
            None => None,
            Some(s) if dataplane.is_none() => {
                return Err(cx.invalid(
                    s.interface_span(),
                    "sync",
                    "needs a [dataplane] section: it syncs the XDP program's flows",
                ))
            }
            Some(s) => Some(sync::sync(
                cx,
                s,
                &vrrp_instances,
                announce.as_ref(),
                &virtual_servers,
                &raw.global_defs.lvs_timeouts(),
            )?),
        };
        Ok(Config {
            file: cx.file.to_path_buf(),
            global_defs: raw.global_defs,
            metrics_token_file,
            dataplane,
            vrrp_scripts,
            track_files,
            track_processes,
            scripts: cx.scripts.take(),
            vrrp_instances,
            sync_groups,
            virtual_servers,
            sync,
            announce,
        })
    }

    /// The services `new` adds, removes, or reads from other text than `self` (by their
    /// VIP, port and protocol): a service the parse cache handed over unchanged is the
    /// same one ([`Config::load_cached`]). Two reads without the cache share nothing, so
    /// every service counts as changed, which is never wrong.
    pub fn changed_services(
        &self,
        new: &Config,
    ) -> std::collections::HashSet<ServiceKey, foldhash::fast::RandomState> {
        let key = |vs: &VirtualServer| vs.key();
        // The same services in the same order (a reload that changed values): side by side,
        // without a lookup.
        if self.virtual_servers.len() == new.virtual_servers.len()
            && self
                .virtual_servers
                .iter()
                .zip(&new.virtual_servers)
                .all(|(a, b)| key(a) == key(b))
        {
            return self
                .virtual_servers
                .iter()
                .zip(&new.virtual_servers)
                .filter(|(a, b)| !Arc::ptr_eq(a, b))
                .map(|(_, b)| key(b))
                .collect();
        }
        let before: std::collections::HashMap<_, _, foldhash::fast::RandomState> = self
            .virtual_servers
            .iter()
            .map(|vs| (key(vs), vs))
            .collect();
        let mut changed = std::collections::HashSet::default();
        // How many of `self`'s services `new` still has.
        let mut still = 0;
        for vs in &new.virtual_servers {
            let old = before.get(&key(vs));
            still += usize::from(old.is_some());
            if !old.is_some_and(|old| Arc::ptr_eq(old, vs)) {
                changed.insert(key(vs));
            }
        }
        if still < before.len() {
            let after: std::collections::HashSet<_, foldhash::fast::RandomState> =
                new.virtual_servers.iter().map(|vs| key(vs)).collect();
            changed.extend(before.into_keys().filter(|k| !after.contains(k)));
        }
        changed
    }

    /// The `[sync]` section's key, read from its `key_file` (see [`sync::read_key`]); `None`
    /// without a `[sync]` section.
    pub fn sync_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(s) = &self.sync else {
            return Ok(None);
        };
        sync::read_key(s)
            .map(Some)
            .map_err(|message| ConfigError::Invalid {
                file: self.file.clone(),
                line: s.key_line,
                key: "sync.key_file".into(),
                message,
            })
    }

    /// The bearer token the metrics ask for, read from `global_defs.metrics_bearer_token_file`
    /// (see [`read_token`]); `None` without the key. Read at start, by `check`, and at every
    /// reload: a file that cannot be read refuses the reload, and the token stays.
    pub fn metrics_token(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(f) = &self.metrics_token_file else {
            return Ok(None);
        };
        read_token(&f.path)
            .map(Some)
            .map_err(|message| ConfigError::Invalid {
                file: self.file.clone(),
                line: f.line,
                key: METRICS_TOKEN_KEY.into(),
                message,
            })
    }
}

/// Reads a secret: the file must be a regular file that only its owner (root, or the user
/// the daemon runs as) can read or write.
fn read_owner_only(p: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    if !m.is_file() {
        return Err(format!("{} is not a regular file", p.display()));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if m.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}, not by uid {euid} that runs the daemon",
            p.display(),
            m.uid()
        ));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read or written by users other than its owner (mode {:o}): chmod 600 it",
            p.display(),
            m.mode() & 0o7777
        ));
    }
    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Reads a bearer token (see [`read_owner_only`]): the file's text without the white space
/// around it (as Prometheus reads its `bearer_token_file`), not empty, and only of the
/// characters an `Authorization` header carries as they are (visible ASCII, no space).
fn read_token(p: &Path) -> Result<Vec<u8>, String> {
    let bytes = read_owner_only(p)?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(format!("{} is empty: it holds the token", p.display()));
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token has a space, a control character or a non-ASCII byte, which an \
             Authorization header cannot carry",
            p.display()
        ));
    }
    Ok(token.to_vec())
}

fn dataplane(cx: &Ctx, d: &RawDataplane) -> Result<DataplaneConfig, ConfigError> {
    let xdp_mode = match &d.xdp_mode {
        None => XdpMode::Auto,
        Some(m) => m
            .get_ref()
            .parse()
            .map_err(|e: String| cx.invalid(m.span(), "dataplane.xdp_mode", e))?,
    };
    let max_flows = match &d.max_flows {
        None => lb_common::DEFAULT_MAX_FLOWS,
        Some(n) if *n.get_ref() == 0 => {
            return Err(cx.invalid(n.span(), "dataplane.max_flows", "must be at least 1"))
        }
        Some(n) => *n.get_ref(),
    };
    let ceiling = Limits::CEILING;
    let room = |v: &Option<Spanned<u32>>, key: &str, max: u32| match v {
        None => Ok(0),
        Some(n) if *n.get_ref() > max => Err(cx.invalid(
            n.span(),
            key,
            format!("{} is above the most a node holds, {max}", n.get_ref()),
        )),
        Some(n) => Ok(*n.get_ref()),
    };
    let mut inside_interfaces: Vec<String> = Vec::new();
    for i in &d.inside_interfaces {
        let name = i.get_ref();
        let why = if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            Some(format!("{name:?} is not an interface name"))
        } else if *name == d.interface {
            Some(format!("{name} is `dataplane.interface` already"))
        } else if inside_interfaces.contains(name) {
            Some(format!("{name} is listed twice"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(cx.invalid(i.span(), "dataplane.inside_interfaces", why));
        }
        inside_interfaces.push(name.clone());
    }
    Ok(DataplaneConfig {
        interface: d.interface.clone(),
        inside_interfaces,
        xdp_mode,
        max_flows,
        keep_xdp_on_exit: d.keep_xdp_on_exit,
        pin_root: match &d.pin_root {
            None => PathBuf::from(DEFAULT_PIN_ROOT),
            Some(p) if p.get_ref().starts_with('/') && !p.get_ref().contains('\0') => {
                PathBuf::from(p.get_ref())
            }
            Some(p) => {
                return Err(cx.invalid(p.span(), "dataplane.pin_root", "must be an absolute path"))
            }
        },
        reserve: Limits {
            services: room(&d.max_services, "dataplane.max_services", ceiling.services)?,
            backends: room(
                &d.max_real_servers,
                "dataplane.max_real_servers",
                ceiling.backends,
            )?,
            ring_slots: room(&d.ring_slots, "dataplane.ring_slots", ceiling.ring_slots)?,
        },
    })
}

/// The dotted key whose key or value is at `offset`: the table header above it, then the
/// key on its line (the last `key =` before `offset`, or the key that starts there). `None`
/// on a line that holds no key (a table header, say).
fn key_at(text: &str, offset: usize) -> Option<String> {
    // `get`: an offset inside a character gives no key rather than a panic.
    let offset = offset.min(text.len());
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let end = text
        .get(offset..)?
        .find('\n')
        .map_or(text.len(), |i| offset + i);
    let line = text.get(start..end)?;
    if line.trim_start().starts_with('[') {
        return None;
    }
    let at = offset - start;
    let name = match line.get(..at)?.rfind('=') {
        // The value of `key = ...`: the key is the word before that `=`, after any `{` or `,`
        // of an inline table.
        Some(eq) => {
            let before = &line[..eq];
            let from = before.rfind(['{', ',']).map_or(0, |i| i + 1);
            before[from..].trim()
        }
        // The key itself (an unknown one, say).
        None => line.get(at..)?.split('=').next().unwrap_or_default().trim(),
    };
    let name = name.trim_matches('"');
    if name.is_empty() {
        return None;
    }
    let table = text.get(..start)?.lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(['[', ']']).trim().to_string())
    });
    Some(match table {
        Some(t) => format!("{t}.{name}"),
        None => name.to_string(),
    })
}

/// The 1-based line of `key` in `[table]` of a TOML file's `text` (the first `key =`
/// after the table's header and before the next header), or of the header itself when
/// `key` is empty, or of the first `[[table]]` header: for errors about what the model
/// keeps no position of (a reload's refusals).
pub fn key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(['[', ']']).trim();
            inside = name == table;
            if inside && key.is_empty() {
                return Some(i + 1);
            }
            continue;
        }
        if inside {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

#[cfg(test)]
#[test]
fn key_lines() {
    let text = "[global_defs]\nrouter_id = \"a\"\ncontrol_socket = \"/x\"\n\n[[vrrp_instance]]\nname = \"VI\"\n[sync]\npeers = []\n";
    assert_eq!(key_line(text, "global_defs", "control_socket"), Some(3));
    assert_eq!(key_line(text, "global_defs", "name"), None);
    assert_eq!(key_line(text, "vrrp_instance", ""), Some(5));
    assert_eq!(key_line(text, "sync", ""), Some(7));
    assert_eq!(key_line(text, "dataplane", ""), None);
}

/// The virtual server a `track_virtual_server` entry names (`VIP:PORT`, optionally
/// `/TCP` or `/UDP`, which may be left out when only one protocol has that VIP and port), by
/// its canonical name.
fn tracked_service(services: &[Arc<VirtualServer>], name: &str) -> Result<String, String> {
    find_service(services, name).map(|vs| vs.name())
}

/// The virtual server `name` names (see [`crate::model::parse_service_name`]): any of a
/// `virtual_server_group`'s addresses names the group's service.
fn find_service<'a>(
    services: &'a [Arc<VirtualServer>],
    name: &str,
) -> Result<&'a Arc<VirtualServer>, String> {
    let (addr, proto) = crate::model::parse_service_name(name)?;
    let found: Vec<&Arc<VirtualServer>> = services
        .iter()
        .filter(|vs| {
            vs.addresses()
                .any(|(vip, port)| vip == addr.ip() && port == addr.port())
        })
        .filter(|vs| proto.is_none_or(|p| vs.proto == p))
        .collect();
    match found[..] {
        [vs] => Ok(vs),
        [] => Err(format!("no virtual_server {name:?}")),
        _ => Err(format!(
            "{name:?} names a TCP and a UDP service: add /TCP or /UDP"
        )),
    }
}

impl Config {
    /// The virtual server an operator names `VIP:PORT[/PROTO]`.
    pub fn find_service(&self, name: &str) -> Result<&Arc<VirtualServer>, String> {
        find_service(&self.virtual_servers, name)
    }
}

impl VirtualServer {
    /// The real server an operator names `IP` or `IP:PORT` (the port may be left out when
    /// the service has one real server at that address; an IPv6 address with a port in
    /// brackets).
    pub fn find_real(&self, name: &str) -> Result<&RealServer, String> {
        let (ip, port) = crate::model::parse_ip_port(name)?;
        let found: Vec<&RealServer> = self
            .real_servers
            .iter()
            .filter(|rs| rs.addr.ip() == ip && port.is_none_or(|p| rs.addr.port() == p))
            .collect();
        match found[..] {
            [rs] => Ok(rs),
            [] => Err(format!("{} has no real server {name:?}", self.name())),
            _ => Err(format!(
                "{} has real servers {} at {ip}: add the port",
                self.name(),
                found
                    .iter()
                    .map(|rs| rs.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

fn ip(cx: &Ctx, s: &Spanned<String>, key: &str) -> Result<IpAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        cx.invalid(
            s.span(),
            key,
            format!("{:?} is not an IP address", s.get_ref()),
        )
    })
}

/// One service block (see [`split`]) parsed and checked on its own, positions relative to
/// its first line.
fn parse_block(file: &Path, b: &split::Block) -> Result<split::Parsed, ConfigError> {
    let cx = Ctx::new(file, b.text, vec![(0, 0)]);
    let raw: RawBlock = cx.toml()?;
    let [vs] = &raw.virtual_server[..] else {
        return Err(cx.invalid(0..0, "virtual_server", "not one service"));
    };
    let service = Arc::new(virtual_server(&cx, vs)?);
    Ok(split::Parsed {
        service,
        ip_line: cx.line_col(vs.name_span().start).0,
        scripts: cx.scripts.take(),
    })
}

/// A real server's `uthreshold`/`lthreshold`: only where connections are counted, the lower
/// one below the upper one.
fn thresholds(cx: &Ctx, sched: Scheduler, rs: &RawRealServer) -> Result<Thresholds, ConfigError> {
    let upper = rs.uthreshold.as_ref();
    let lower = rs.lthreshold.as_ref();
    if let Some(t) = upper.or(lower) {
        if !sched.counts() {
            let key = if upper.is_some() {
                "real_server.uthreshold"
            } else {
                "real_server.lthreshold"
            };
            return Err(cx.invalid(
                t.span(),
                key,
                format!(
                    "lb_algo {:?} does not count connections: thresholds need lc, wlc, sed, \
                     nq, fo or ovf",
                    sched.name()
                ),
            ));
        }
    }
    let t = Thresholds {
        upper: upper.map_or(0, |u| *u.get_ref()),
        lower: lower.map_or(0, |l| *l.get_ref()),
    };
    if let Some(l) = lower {
        if t.upper == 0 || t.lower >= t.upper {
            return Err(cx.invalid(
                l.span(),
                "real_server.lthreshold",
                format!(
                    "{} needs a larger uthreshold (it is where a server takes connections again)",
                    t.lower
                ),
            ));
        }
    }
    Ok(t)
}

impl RawVirtualServer {
    /// Where the service is named: its `ip`, else its `virtual_server_group`.
    fn name_span(&self) -> std::ops::Range<usize> {
        match (&self.ip, &self.virtual_server_group) {
            (Some(ip), _) => ip.span(),
            (None, Some(g)) => g.span(),
            (None, None) => self.protocol.span(),
        }
    }
}

/// A service's (VIP, port)s: its `ip` and `port`, or its `virtual_server_group`'s entries
/// (the first names it), one address family, each once.
fn service_addresses(cx: &Ctx, vs: &RawVirtualServer) -> Result<Vec<(IpAddr, u16)>, ConfigError> {
    let group_key = "virtual_server.virtual_server_group";
    match (&vs.ip, vs.port, &vs.virtual_server_group) {
        (Some(i), Some(port), None) => Ok(vec![(ip(cx, i, "virtual_server.ip")?, port)]),
        (None, None, Some(g)) => {
            let mut out: Vec<(IpAddr, u16)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for e in g.get_ref() {
                let bad = |m: String| cx.invalid(e.span(), group_key, m);
                for key in group::entry(e.get_ref()).map_err(bad)? {
                    if !seen.insert(key) {
                        return Err(bad(format!("{} {} is listed twice", key.0, key.1)));
                    }
                    if key.0.is_ipv4() != out.first().map_or(key.0, |f| f.0).is_ipv4() {
                        return Err(bad("one address family per service".into()));
                    }
                    out.push(key);
                }
                if out.len() > group::MAX_GROUP_KEYS {
                    return Err(bad(format!(
                        "the group holds more than {} keys",
                        group::MAX_GROUP_KEYS
                    )));
                }
            }
            if out.is_empty() {
                return Err(cx.invalid(g.span(), group_key, "needs at least one entry"));
            }
            Ok(out)
        }
        (_, _, Some(_)) => Err(cx.invalid(
            vs.name_span(),
            group_key,
            "names the service's addresses: leave ip and port out",
        )),
        (None, _, None) => Err(cx.invalid(
            vs.protocol.span(),
            "virtual_server.ip",
            "missing: give ip and port, or virtual_server_group",
        )),
        (Some(i), None, None) => Err(cx.invalid(
            i.span(),
            "virtual_server.port",
            "missing (0 for every port)",
        )),
    }
}

fn virtual_server(cx: &Ctx, vs: &RawVirtualServer) -> Result<VirtualServer, ConfigError> {
    let mut addresses = service_addresses(cx, vs)?;
    let (vip, vport) = addresses.remove(0);
    let aliases = addresses;
    // The ports a real server may be written with under DR and tunnels (which cannot
    // change ports): the group's.
    let ports: std::collections::BTreeSet<u16> = std::iter::once(vport)
        .chain(aliases.iter().map(|a| a.1))
        .collect();
    let proto = match vs.protocol.get_ref().to_ascii_uppercase().as_str() {
        "TCP" => Proto::Tcp,
        "UDP" => Proto::Udp,
        other => {
            return Err(cx.invalid(
                vs.protocol.span(),
                "virtual_server.protocol",
                format!("{other:?}: expected TCP or UDP"),
            ))
        }
    };
    // keepalived's default scheduler (IPVS_DEF_SCHED).
    let sched = match &vs.lb_algo {
        None => Scheduler::Wlc,
        Some(a) => a
            .get_ref()
            .parse()
            .map_err(|e: String| cx.invalid(a.span(), "virtual_server.lb_algo", e))?,
    };
    let vs_method = forwarding(cx, &vs.lb_kind, "virtual_server.lb_kind")?;
    // A NAT reply's source port is the service's: a service of every port (or a group
    // with such an entry) has none.
    let all_ports_nat = |span: std::ops::Range<usize>, key: &str| {
        cx.invalid(
            span,
            key,
            "a service of every port (port 0) cannot be NAT: its replies' port would be \
             unknown (use DR or TUN, or one service per port)",
        )
    };
    let every_port = ports.contains(&0);
    if vs_method == Method::Nat && every_port {
        return Err(all_ports_nat(vs.lb_kind.span(), "virtual_server.lb_kind"));
    }
    // A NAT real server written without a port: the service's, or in a group 0, each
    // packet keeping its own (the same for a group of one port, and a real server's
    // address then stays the same whatever entries a reload adds).
    let nat_default_port = if aliases.is_empty() { vport } else { 0 };
    let vs_tunnel = vs_tunnel(cx, vs, vip, vs_method)?;
    let bits = if vip.is_ipv4() { 32 } else { 128 };
    let persistence_prefix = match &vs.persistence_granularity {
        None => bits,
        Some(g) => granularity(g.get_ref(), vip.is_ipv4()).ok_or_else(|| {
            cx.invalid(
                g.span(),
                "virtual_server.persistence_granularity",
                format!("expected a netmask or a prefix length of at most {bits}"),
            )
        })?,
    };
    let mh_table_size = match &vs.mh_table_size {
        None => lb_common::DEFAULT_MH_TABLE_SIZE,
        Some(m) if sched != Scheduler::Mh => {
            return Err(cx.invalid(
                m.span(),
                "virtual_server.mh_table_size",
                "only a service with lb_algo = \"mh\" has a Maglev table",
            ))
        }
        Some(m) => {
            let m_v = *m.get_ref();
            if m_v > MAX_MH_TABLE_SIZE || !is_prime(m_v) {
                return Err(cx.invalid(
                    m.span(),
                    "virtual_server.mh_table_size",
                    format!("{m_v} is not a prime of at most {MAX_MH_TABLE_SIZE}"),
                ));
            }
            if (m_v as usize) < vs.real_server.len() + usize::from(vs.sorry_server.is_some()) {
                return Err(cx.invalid(
                    m.span(),
                    "virtual_server.mh_table_size",
                    format!(
                        "{m_v} is smaller than the number of real servers: each needs a slot \
                         (M should be at least 100 times their number)"
                    ),
                ));
            }
            m_v
        }
    };
    // keepalived's: the sorry server is reached the service's way unless it says otherwise.
    let sorry_method = match vs.sorry_server.as_ref().and_then(|s| s.lvs_method.as_ref()) {
        None => vs_method,
        Some(m) => forwarding(cx, m, "virtual_server.sorry_server.lvs_method")?,
    };
    if sorry_method == Method::Nat && every_port {
        let span = vs
            .sorry_server
            .as_ref()
            .map_or(vs.lb_kind.span(), |s| s.ip.span());
        return Err(all_ports_nat(
            span,
            "virtual_server.sorry_server.lvs_method",
        ));
    }
    let mut real_servers = Vec::new();
    for rs in &vs.real_server {
        let addr = ip(cx, &rs.ip, "real_server.ip")?;
        let forward = rs_forward(cx, rs, vs_method, vs_tunnel)?;
        if forward == Forward::Nat && every_port {
            let span = rs.lvs_method.as_ref().map_or(rs.ip.span(), |m| m.span());
            return Err(all_ports_nat(span, "real_server.lvs_method"));
        }
        if addr.is_ipv4() != vip.is_ipv4() {
            return Err(cx.invalid(
                rs.ip.span(),
                "real_server.ip",
                match forward {
                    Forward::Tun(_) => {
                        "a TUN real server must be in the VIP's address family (the outer \
                         header takes the inner packet's)"
                    }
                    Forward::Nat => {
                        "a NAT real server must be in the VIP's address family (no translation \
                         between IPv4 and IPv6)"
                    }
                    Forward::Dr => {
                        "direct routing needs the real server in the VIP's address family"
                    }
                },
            ));
        }
        let weight = *rs.weight.get_ref();
        if weight > MAX_WEIGHT {
            return Err(cx.invalid(
                rs.weight.span(),
                "real_server.weight",
                format!("{weight} is out of range 0..={MAX_WEIGHT}"),
            ));
        }
        // Direct routing rewrites MACs only: the real server gets the packet on the
        // service's port whatever this says (IPVS ignores it silently; we do not). NAT
        // rewrites the port: 0 means the service's, as in ipvsadm; in a group of several
        // ports, each packet's own (as IPVS does for a fwmark service's port-0 real server).
        let mut port = *rs.port.get_ref();
        if forward == Forward::Nat && port == 0 {
            port = nat_default_port;
        }
        if forward != Forward::Nat && !ports.contains(&0) && port != 0 && !ports.contains(&port) {
            return Err(cx.invalid(
                rs.port.span(),
                "real_server.port",
                format!(
                    "{} differs from the service's port {}: direct routing and tunnels cannot \
                     change ports (NAT can; TCP_CHECK.connect_port checks another port)",
                    port, vport
                ),
            ));
        }
        let addr = SocketAddr::new(addr, port);
        // Port 0 of a DR or TUN real server is the service's: the same real server as one
        // written with that port. A group's NAT real server without a port takes every
        // port of the group: it is any of them.
        let effective = |r: SocketAddr, f: Forward| -> Vec<u16> {
            match (r.port(), f) {
                (0, Forward::Nat) => ports.iter().copied().collect(),
                (0, _) => vec![vport],
                (p, _) => vec![p],
            }
        };
        let mine = effective(addr, forward);
        if real_servers.iter().any(|r: &RealServer| {
            r.addr.ip() == addr.ip()
                && effective(r.addr, r.forward)
                    .iter()
                    .any(|p| mine.contains(p))
        }) {
            return Err(cx.invalid(
                rs.ip.span(),
                "real_server.ip",
                format!("{addr} is listed twice"),
            ));
        }
        let checks = check::checks(cx, vs, rs, addr, vip, forward.tunnel())?;
        let thresholds = thresholds(cx, sched, rs)?;
        real_servers.push(RealServer {
            addr,
            weight,
            forward,
            thresholds,
            checks,
        });
    }
    Ok(VirtualServer {
        vip,
        port: vport,
        aliases,
        proto,
        sched,
        persistence_timeout: vs.persistence_timeout,
        persistence_prefix,
        hash_port: vs.hash_port,
        idle_timeout: vs.idle_timeout,
        is_static: vs.is_static,
        sloppy_tcp: vs.sloppy_tcp.unwrap_or(true),
        expire_nodest_conn: vs.expire_nodest_conn,
        mh_table_size,
        real_servers,
        quorum: match &vs.quorum {
            None => 1,
            Some(q) if *q.get_ref() == 0 => {
                return Err(cx.invalid(q.span(), "virtual_server.quorum", "must be at least 1"))
            }
            Some(q) => *q.get_ref(),
        },
        hysteresis: vs.hysteresis,
        sorry_server: match &vs.sorry_server {
            None => None,
            Some(s) => {
                let a = ip(cx, &s.ip, "virtual_server.sorry_server.ip")?;
                if a.is_ipv4() != vip.is_ipv4() {
                    return Err(cx.invalid(
                        s.ip.span(),
                        "virtual_server.sorry_server.ip",
                        "the sorry server must be in the VIP's address family",
                    ));
                }
                let port = match (sorry_method, s.port) {
                    (Method::Nat, 0) => nat_default_port,
                    (Method::Nat, p) => p,
                    // As for a real server: DR and tunnels cannot change ports.
                    (_, p) if !ports.contains(&0) && p != 0 && !ports.contains(&p) => {
                        return Err(cx.invalid(
                            s.ip.span(),
                            "virtual_server.sorry_server.port",
                            format!(
                                "{p} differs from the service's port {}: direct routing and \
                                 tunnels cannot change ports (NAT can)",
                                vport
                            ),
                        ))
                    }
                    (_, p) => p,
                };
                Some(SocketAddr::new(a, port))
            }
        },
        sorry_forward: match sorry_method {
            Method::Tun => Forward::Tun(vs_tunnel.unwrap_or(Tunnel {
                kind: TunnelKind::Ipip,
                port: 0,
                ttl: DEFAULT_TUNNEL_TTL,
                source: None,
            })),
            Method::Nat => Forward::Nat,
            Method::Dr => Forward::Dr,
        },
    })
}

/// keepalived's forwarding methods, as `lb_kind` / `lvs_method` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Dr,
    Tun,
    Nat,
}

/// `lb_kind` / `lvs_method`.
fn forwarding(cx: &Ctx, kind: &Spanned<String>, key: &str) -> Result<Method, ConfigError> {
    match kind.get_ref().to_ascii_uppercase().as_str() {
        "DR" => Ok(Method::Dr),
        "TUN" => Ok(Method::Tun),
        "NAT" => Ok(Method::Nat),
        other => Err(cx.invalid(
            kind.span(),
            key,
            format!(
                "{other:?}: expected DR (direct routing), TUN (IPIP, GUE or GRE tunnels) or NAT"
            ),
        )),
    }
}

/// A tunnel type and its GUE port, keepalived's rule: `gue` needs a port, the others have
/// none.
fn tunnel_kind(
    cx: &Ctx,
    ty: Option<&Spanned<String>>,
    port: Option<&Spanned<u16>>,
    prefix: &str,
) -> Result<(TunnelKind, u16), ConfigError> {
    let kind = match ty {
        None => TunnelKind::Ipip,
        Some(t) => t
            .get_ref()
            .parse()
            .map_err(|e: String| cx.invalid(t.span(), &format!("{prefix}.tunnel_type"), e))?,
    };
    match (kind, port) {
        (TunnelKind::Gue, Some(p)) if *p.get_ref() != 0 => Ok((kind, *p.get_ref())),
        (TunnelKind::Gue, Some(p)) => Err(cx.invalid(
            p.span(),
            &format!("{prefix}.tunnel_port"),
            "must be 1..=65535",
        )),
        (TunnelKind::Gue, None) => Err(cx.invalid(
            ty.map(|t| t.span()).unwrap_or(0..0),
            &format!("{prefix}.tunnel_type"),
            "a gue tunnel needs `tunnel_port` (the real servers' GUE port)",
        )),
        (_, Some(p)) => Err(cx.invalid(
            p.span(),
            &format!("{prefix}.tunnel_port"),
            format!("only a gue tunnel has a port, not {}", kind.name()),
        )),
        (_, None) => Ok((kind, 0)),
    }
}

/// The virtual_server's tunnel: what its TUN real servers use unless they say otherwise.
/// Its keys are refused on a DR service, where they would mean nothing.
fn vs_tunnel(
    cx: &Ctx,
    vs: &RawVirtualServer,
    vip: IpAddr,
    method: Method,
) -> Result<Option<Tunnel>, ConfigError> {
    if method != Method::Tun {
        let stray = [
            vs.tunnel_type.as_ref().map(|t| (t.span(), "tunnel_type")),
            vs.tunnel_port.as_ref().map(|t| (t.span(), "tunnel_port")),
            vs.tunnel_ttl.as_ref().map(|t| (t.span(), "tunnel_ttl")),
            vs.tunnel_source
                .as_ref()
                .map(|t| (t.span(), "tunnel_source")),
        ];
        if let Some((span, key)) = stray.into_iter().flatten().next() {
            return Err(cx.invalid(
                span,
                &format!("virtual_server.{key}"),
                "only a virtual_server with lb_kind = \"TUN\" has a tunnel",
            ));
        }
        return Ok(None);
    }
    let (kind, port) = tunnel_kind(
        cx,
        vs.tunnel_type.as_ref(),
        vs.tunnel_port.as_ref(),
        "virtual_server",
    )?;
    let ttl = match &vs.tunnel_ttl {
        None => DEFAULT_TUNNEL_TTL,
        Some(t) if *t.get_ref() == 0 => {
            return Err(cx.invalid(t.span(), "virtual_server.tunnel_ttl", "must be 1..=255"))
        }
        Some(t) => *t.get_ref(),
    };
    let source = match &vs.tunnel_source {
        None => None,
        Some(s) => {
            let a = ip(cx, s, "virtual_server.tunnel_source")?;
            if a.is_ipv4() != vip.is_ipv4() {
                return Err(cx.invalid(
                    s.span(),
                    "virtual_server.tunnel_source",
                    "must be in the VIP's address family",
                ));
            }
            Some(a)
        }
    };
    Ok(Some(Tunnel {
        kind,
        port,
        ttl,
        source,
    }))
}

/// How a real server is reached: its own `lvs_method`, tunnel type and port over the
/// virtual_server's.
fn rs_forward(
    cx: &Ctx,
    rs: &RawRealServer,
    vs_method: Method,
    vs_tunnel: Option<Tunnel>,
) -> Result<Forward, ConfigError> {
    let method = match &rs.lvs_method {
        None => vs_method,
        Some(m) => forwarding(cx, m, "real_server.lvs_method")?,
    };
    if method != Method::Tun {
        if let Some((span, key)) = [
            rs.tunnel_type.as_ref().map(|t| (t.span(), "tunnel_type")),
            rs.tunnel_port.as_ref().map(|t| (t.span(), "tunnel_port")),
        ]
        .into_iter()
        .flatten()
        .next()
        {
            return Err(cx.invalid(
                span,
                &format!("real_server.{key}"),
                "only a TUN real server has a tunnel",
            ));
        }
        return Ok(if method == Method::Nat {
            Forward::Nat
        } else {
            Forward::Dr
        });
    }
    let base = vs_tunnel.unwrap_or(Tunnel {
        kind: TunnelKind::Ipip,
        port: 0,
        ttl: DEFAULT_TUNNEL_TTL,
        source: None,
    });
    if rs.tunnel_type.is_none() && rs.tunnel_port.is_none() {
        return Ok(Forward::Tun(base));
    }
    // Its own type; without one, the virtual_server's, with this port.
    let (kind, port) = match (&rs.tunnel_type, &rs.tunnel_port) {
        (None, Some(p)) if base.kind == TunnelKind::Gue => {
            if *p.get_ref() == 0 {
                return Err(cx.invalid(p.span(), "real_server.tunnel_port", "must be 1..=65535"));
            }
            (TunnelKind::Gue, *p.get_ref())
        }
        (None, Some(p)) => {
            return Err(cx.invalid(
                p.span(),
                "real_server.tunnel_port",
                format!("only a gue tunnel has a port, not {}", base.kind.name()),
            ))
        }
        (ty, p) => tunnel_kind(cx, ty.as_ref(), p.as_ref(), "real_server")?,
    };
    Ok(Forward::Tun(Tunnel { kind, port, ..base }))
}

/// A netmask ("255.255.255.0", "ffff:ffff::") or a prefix length (24), as a prefix length.
fn granularity(v: &toml::Value, v4: bool) -> Option<u8> {
    let bits: u32 = if v4 { 32 } else { 128 };
    match v {
        toml::Value::Integer(n) if (0..=i64::from(bits)).contains(n) => Some(*n as u8),
        toml::Value::String(s) => {
            let mask: IpAddr = s.parse().ok()?;
            let (value, width) = match mask {
                IpAddr::V4(m) if v4 => (u128::from(u32::from(m)) << 96, 32),
                IpAddr::V6(m) if !v4 => (u128::from(m), 128),
                _ => return None,
            };
            let ones = value.leading_ones();
            // Contiguous masks only: IPVS applies the mask bitwise, but a hole in a mask
            // is almost always a typo.
            (value.checked_shl(ones).unwrap_or(0) == 0 && ones <= width).then_some(ones as u8)
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small valid file: one static service of two real servers.
    pub(crate) const GOOD: &str = r#"
[global_defs]
router_id = "LVS_1"

[dataplane]
interface = "eth0"
xdp_mode = "skb"

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80
  weight = 1

  [[virtual_server.real_server]]
  ip = "192.0.2.12"
  port = 80
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("lb.toml"), text)
    }

    #[test]
    fn parses_the_seed_shape() {
        let c = parse(GOOD).unwrap();
        let d = c.dataplane.as_ref().unwrap();
        assert_eq!(d.interface, "eth0");
        assert_eq!(d.xdp_mode, XdpMode::Skb);
        assert_eq!(d.max_flows, lb_common::DEFAULT_MAX_FLOWS);
        let vs = &c.virtual_servers[0];
        assert_eq!(vs.sched, Scheduler::Rr);
        assert_eq!(vs.idle_timeout, None);
        assert_eq!(vs.idle_timeout(&Default::default()), 900);
        assert_eq!(vs.persistence_prefix, 32);
        assert_eq!(vs.real_servers[1].weight, 1, "keepalived's default weight");
        assert!(vs.is_static);
        assert_eq!(vs.real_servers.len(), 2);
    }

    /// keepalived's virtual_server_group: one service under several (VIP, port)s, its
    /// addresses moving together.
    #[test]
    fn virtual_server_group_is_one_service() {
        let group = GOOD.replace(
            "ip = \"192.0.2.100\"\nport = 80\n",
            "virtual_server_group = [\"192.0.2.100 80\", \"192.0.2.100 443\", \"192.0.2.101-102 80\"]\n",
        );
        let c = parse(&group).unwrap();
        let vs = &c.virtual_servers[0];
        assert_eq!((vs.vip.to_string(), vs.port), ("192.0.2.100".into(), 80));
        assert_eq!(vs.name(), "192.0.2.100:80/TCP", "named by its first entry");
        let addrs: Vec<String> = vs.addresses().map(|(a, p)| format!("{a}:{p}")).collect();
        assert_eq!(
            addrs,
            [
                "192.0.2.100:80",
                "192.0.2.100:443",
                "192.0.2.101:80",
                "192.0.2.102:80"
            ]
        );
        // A real server on another of the group's ports is fine under DR; not elsewhere.
        assert!(parse(&group.replacen("  port = 80\n", "  port = 443\n", 1)).is_ok());
        let vrrp = "[[vrrp_instance]]\nname = \"A\"\ninterface = \"eth0\"\nvirtual_router_id = 1\n\
                    priority = 100\nvirtual_ipaddress = [\"192.0.2.100\", \"192.0.2.101\"]\n\n\
                    [[vrrp_instance]]\nname = \"B\"\ninterface = \"eth0\"\nvirtual_router_id = 2\n\
                    priority = 100\nvirtual_ipaddress = [\"192.0.2.102\"]\n";
        let held = format!("{vrrp}\n{}", group.replace("static = true\n", ""));
        for (text, want) in [
            (
                group.replacen("  port = 80\n", "  port = 8080\n", 1),
                "lb.toml:18: `real_server.port`: 8080 differs",
            ),
            (
                group.replace("virtual_server_group", "ip = \"192.0.2.100\"\nvirtual_server_group"),
                "lb.toml:10: `virtual_server.virtual_server_group`: names the service's addresses",
            ),
            (
                group.replace("\"192.0.2.100 443\"", "\"fwmark 1\""),
                "lb.toml:10: `virtual_server.virtual_server_group`: lb-daemon has no firewall-mark",
            ),
            (
                group.replace("\"192.0.2.100 443\"", "\"192.0.2.101 80\""),
                "lb.toml:10: `virtual_server.virtual_server_group`: 192.0.2.101 80 is listed twice",
            ),
            (
                format!(
                    "{group}\n[[virtual_server]]\nip = \"192.0.2.102\"\nport = 80\nprotocol = \"TCP\"\n\
                     lb_kind = \"DR\"\nstatic = true\n"
                ),
                "lb.toml:26: `virtual_server.ip`: 192.0.2.102:80/TCP is defined twice",
            ),
            (
                held.clone(),
                "its addresses are held by vrrp_instance A and vrrp_instance B",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nwant {want}");
        }
        // Any of the group's addresses names the service (`real-server` commands,
        // track_virtual_server), by its first.
        assert_eq!(
            c.find_service("192.0.2.101:80").map(|vs| vs.name()),
            Ok("192.0.2.100:80/TCP".to_string())
        );
        // In one sync group, the instances move together: accepted.
        let synced = held.replace(
            "[[vrrp_instance]]\nname = \"A\"",
            "[[vrrp_sync_group]]\nname = \"G\"\ngroup = [\"A\", \"B\"]\n\n[[vrrp_instance]]\nname = \"A\"",
        );
        parse(&synced).unwrap();
    }

    /// NAT in a group: a real server written with its port takes every key's packets on
    /// it; without one, on the group's single port, else on each packet's own.
    #[test]
    fn nat_in_a_group() {
        let group = |entries: &str| {
            GOOD.replace(
                "ip = \"192.0.2.100\"\nport = 80\n",
                &format!("virtual_server_group = [{entries}]\n"),
            )
            .replace("lb_kind = \"DR\"", "lb_kind = \"NAT\"")
            .replacen("  port = 80\n", "  port = 8080\n", 1)
            .replacen("  port = 80\n", "  port = 0\n", 1)
        };
        let ports = |text: &str| -> Vec<u16> {
            let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
            c.virtual_servers[0]
                .real_servers
                .iter()
                .map(|r| r.addr.port())
                .collect()
        };
        assert_eq!(
            ports(&group("\"192.0.2.100 80\", \"192.0.2.101 80\"")),
            [8080, 0]
        );
        assert_eq!(
            ports(&group("\"192.0.2.100 80\", \"192.0.2.100 443\"")),
            [8080, 0]
        );
        // Without a port it is on every port of the group: with one on 443 it is listed
        // twice.
        let twice = group("\"192.0.2.100 80\", \"192.0.2.100 443\"").replacen(
            "  ip = \"192.0.2.11\"\n  port = 8080\n",
            "  ip = \"192.0.2.12\"\n  port = 443\n",
            1,
        );
        let e = parse(&twice).unwrap_err().to_string();
        assert!(e.contains("192.0.2.12:0 is listed twice"), "{e}");
        // Per real server too, and the sorry server.
        let mixed = group("\"192.0.2.100 80\", \"192.0.2.100 443\"")
            .replace("lb_kind = \"NAT\"", "lb_kind = \"DR\"")
            .replacen("  port = 0\n", "  port = 0\n  lvs_method = \"NAT\"\n", 1)
            .replacen("  port = 8080\n", "  port = 80\n", 1)
            .replace(
                "static = true\n",
                "static = true\nsorry_server = { ip = \"192.0.2.20\", port = 0, lvs_method = \"NAT\" }\n",
            );
        let c = parse(&mixed).unwrap_or_else(|e| panic!("{e}"));
        let vs = &c.virtual_servers[0];
        assert_eq!(vs.real_servers[1].addr.port(), 0);
        assert_eq!(vs.sorry_server.unwrap().port(), 0);
        // An entry of every port leaves a reply's port unknown.
        let e = parse(&group("\"192.0.2.100 80\", \"192.0.2.101 0\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`virtual_server.lb_kind`: a service of every port"),
            "{e}"
        );
    }

    #[test]
    fn tun_per_virtual_and_real_server() {
        let text = GOOD
            .replace(
                "lb_kind = \"DR\"",
                "lvs_method = \"TUN\"\ntunnel_type = \"gue\"\ntunnel_port = 6080\ntunnel_ttl = 32\ntunnel_source = \"192.0.2.2\"",
            )
            .replace(
                "  ip = \"192.0.2.12\"\n  port = 80\n",
                "  ip = \"192.0.2.12\"\n  port = 80\n  tunnel_type = \"gre\"\n\n  [[virtual_server.real_server]]\n  ip = \"192.0.2.13\"\n  port = 80\n  lvs_method = \"DR\"\n",
            );
        let c = parse(&text).unwrap();
        let rs = &c.virtual_servers[0].real_servers;
        let gue = Tunnel {
            kind: TunnelKind::Gue,
            port: 6080,
            ttl: 32,
            source: Some("192.0.2.2".parse().unwrap()),
        };
        assert_eq!(rs[0].forward, Forward::Tun(gue));
        assert_eq!(
            rs[1].forward,
            Forward::Tun(Tunnel {
                kind: TunnelKind::Gre,
                port: 0,
                ..gue
            }),
            "its own type, the rest the virtual_server's"
        );
        assert_eq!(rs[2].forward, Forward::Dr, "lvs_method DR");
        // A DR service's real server may still go through a tunnel, an IPIP one by default.
        let text = GOOD.replace(
            "  ip = \"192.0.2.12\"\n  port = 80\n",
            "  ip = \"192.0.2.12\"\n  port = 80\n  lvs_method = \"TUN\"\n",
        );
        let c = parse(&text).unwrap();
        let rs = &c.virtual_servers[0].real_servers;
        assert_eq!(rs[0].forward, Forward::Dr);
        assert_eq!(
            rs[1].forward,
            Forward::Tun(Tunnel {
                kind: TunnelKind::Ipip,
                port: 0,
                ttl: DEFAULT_TUNNEL_TTL,
                source: None
            })
        );
    }

    #[test]
    fn nat_per_virtual_and_real_server() {
        // keepalived's usual NAT service: real servers on 8080 behind port 80, one on the
        // service's port by `port = 0`, a sorry server that is NAT'd as well.
        let text = GOOD
            .replace(
                "lb_kind = \"DR\"",
                "lb_kind = \"NAT\"\nsorry_server = { ip = \"192.0.2.50\", port = 8081 }",
            )
            .replace(
                "ip = \"192.0.2.11\"\n  port = 80",
                "ip = \"192.0.2.11\"\n  port = 8080",
            )
            .replace(
                "ip = \"192.0.2.12\"\n  port = 80",
                "ip = \"192.0.2.12\"\n  port = 0",
            )
            .replace(
                "xdp_mode = \"skb\"",
                "xdp_mode = \"skb\"\ninside_interfaces = [\"eth1\"]",
            );
        let c = parse(&text).unwrap();
        assert_eq!(c.dataplane.as_ref().unwrap().inside_interfaces, ["eth1"]);
        let vs = &c.virtual_servers[0];
        assert_eq!(vs.real_servers[0].forward, Forward::Nat);
        assert_eq!(vs.real_servers[0].addr, "192.0.2.11:8080".parse().unwrap());
        assert_eq!(
            vs.real_servers[1].addr,
            "192.0.2.12:80".parse().unwrap(),
            "port 0: the service's"
        );
        assert_eq!(vs.sorry_server, Some("192.0.2.50:8081".parse().unwrap()));
        assert_eq!(vs.sorry_forward, Forward::Nat);
        // One real server NAT'd in a DR service; the others keep the service's port.
        let text = GOOD.replace(
            "  ip = \"192.0.2.12\"\n  port = 80\n",
            "  ip = \"192.0.2.12\"\n  port = 8080\n  lvs_method = \"NAT\"\n",
        );
        let c = parse(&text).unwrap();
        let rs = &c.virtual_servers[0].real_servers;
        assert_eq!((rs[0].forward, rs[1].forward), (Forward::Dr, Forward::Nat));
        assert_eq!(c.virtual_servers[0].sorry_forward, Forward::Dr);
        // Refused: NAT for a service of every port, at the key that asks for it, and a
        // DR real server on another port.
        for (from, to, want) in [
            (
                "port = 80\nprotocol",
                "port = 0\nprotocol",
                "lb.toml:14: `virtual_server.lb_kind`: a service of every port",
            ),
            (
                "ip = \"192.0.2.11\"\n  port = 80",
                "ip = \"192.0.2.11\"\n  port = 8080",
                "lb.toml:19: `real_server.port`: 8080 differs",
            ),
            (
                "xdp_mode = \"skb\"",
                "xdp_mode = \"skb\"\ninside_interfaces = [\"eth0\"]",
                "lb.toml:8: `dataplane.inside_interfaces`: eth0 is `dataplane.interface`",
            ),
            (
                "xdp_mode = \"skb\"",
                "xdp_mode = \"skb\"\ninside_interfaces = [\"eth1\", \"eth1\"]",
                "lb.toml:8: `dataplane.inside_interfaces`: eth1 is listed twice",
            ),
        ] {
            let nat = GOOD.replace("lb_kind = \"DR\"", "lb_kind = \"NAT\"");
            let text = if to.starts_with("port = 0") {
                nat.replace(from, to)
            } else {
                GOOD.replace(from, to)
            };
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let text = GOOD
            .replace("port = 80\nprotocol", "port = 0\nprotocol")
            .replace(
                "  ip = \"192.0.2.12\"\n  port = 80\n",
                "  ip = \"192.0.2.12\"\n  port = 0\n  lvs_method = \"NAT\"\n",
            )
            .replace("port = 80\n  weight", "port = 0\n  weight");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("lb.toml:25: `real_server.lvs_method`: a service of every port"),
            "{e}"
        );
        // The sorry server its own way (keepalived's sorry_server_lvs_method): DR in a NAT
        // service, NAT (port 0: the service's) or an IPIP tunnel in a DR one.
        for (service, sorry, port, want) in [
            ("NAT", "DR", 80, Forward::Dr),
            ("DR", "NAT", 0, Forward::Nat),
            (
                "DR",
                "TUN",
                80,
                Forward::Tun(Tunnel {
                    kind: TunnelKind::Ipip,
                    port: 0,
                    ttl: DEFAULT_TUNNEL_TTL,
                    source: None,
                }),
            ),
        ] {
            let text = GOOD.replace(
                "lb_kind = \"DR\"",
                &format!(
                    "lb_kind = \"{service}\"\nsorry_server = {{ ip = \"192.0.2.50\", port = {port}, \
                     lvs_method = \"{sorry}\" }}"
                ),
            );
            let vs = &parse(&text).unwrap().virtual_servers[0];
            assert_eq!(
                vs.sorry_forward, want,
                "{service} service, {sorry} sorry server"
            );
            let port = if port == 0 { 80 } else { port };
            assert_eq!(vs.sorry_server.unwrap().port(), port);
        }
        // Port 0 of a DR real server is the service's: the same real server as a NAT one
        // on that port.
        let text = GOOD.replace(
            "  ip = \"192.0.2.12\"\n  port = 80\n",
            "  ip = \"192.0.2.11\"\n  port = 0\n  lvs_method = \"NAT\"\n",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("`real_server.ip`: 192.0.2.11:80 is listed twice"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("lb_kind = \"DR\"", "lb_kind = \"DR\"\ndelay_lop = 6");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("lb.toml:15:"), "{e}");
        assert!(e.contains("delay_lop"), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let cases = [
            (
                "weight = 1",
                "weight = 70000",
                "lb.toml:20: `real_server.weight`",
            ),
            (
                "lb_algo = \"rr\"",
                "lb_algo = \"lblc\"",
                "lb.toml:13: `virtual_server.lb_algo`",
            ),
            (
                "weight = 1",
                "weight = 1\nuthreshold = 10",
                "lb.toml:21: `real_server.uthreshold`: lb_algo \"rr\" does not count connections",
            ),
            (
                "lb_kind = \"DR\"",
                "lb_kind = \"FULLNAT\"",
                "lb.toml:14: `virtual_server.lb_kind`",
            ),
            (
                "ip = \"192.0.2.11\"",
                "ip = \"192.0.2\"",
                "lb.toml:18: `real_server.ip`",
            ),
            (
                "ip = \"192.0.2.11\"",
                "ip = \"2001:db8::4\"",
                "lb.toml:18: `real_server.ip`",
            ),
            (
                "xdp_mode = \"skb\"",
                "xdp_mode = \"fast\"",
                "lb.toml:7: `dataplane.xdp_mode`",
            ),
            (
                "protocol = \"TCP\"",
                "protocol = \"SCTP\"",
                "lb.toml:12: `virtual_server.protocol`",
            ),
            (
                "lb_algo = \"rr\"",
                "lb_algo = \"rr\"\nmh_table_size = 65537",
                "lb.toml:14: `virtual_server.mh_table_size`: only a service with lb_algo",
            ),
            (
                "lb_algo = \"rr\"",
                "lb_algo = \"mh\"\nmh_table_size = 65536",
                "lb.toml:14: `virtual_server.mh_table_size`: 65536 is not a prime",
            ),
            (
                "lb_algo = \"rr\"",
                "lb_algo = \"mh\"\nmh_table_size = 16777259",
                "lb.toml:14: `virtual_server.mh_table_size`: 16777259 is not a prime of at most",
            ),
            (
                "lb_algo = \"rr\"",
                "lb_algo = \"mh\"\nmh_table_size = 1",
                "lb.toml:14: `virtual_server.mh_table_size`",
            ),
            (
                "xdp_mode = \"skb\"",
                "xdp_mode = \"skb\"\nmax_services = 1000000",
                "lb.toml:8: `dataplane.max_services`: 1000000 is above the most a node holds, 262144",
            ),
            (
                "xdp_mode = \"skb\"",
                "xdp_mode = \"skb\"\nring_slots = 4294967295",
                "lb.toml:8: `dataplane.ring_slots`",
            ),
        ];
        for (from, to, want) in cases {
            let e = parse(&GOOD.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{to}: {e}");
        }
    }

    /// keepalived's default scheduler, thresholds and `lvs_timeouts`.
    #[test]
    fn wlc_by_default_thresholds_and_lvs_timeouts() {
        let text = GOOD.replacen("lb_algo = \"rr\"\n", "", 1);
        let c = parse(&text).unwrap();
        assert_eq!(c.virtual_servers[0].sched, Scheduler::Wlc);
        let text = GOOD.replacen(
            "weight = 1",
            "weight = 1\nuthreshold = 100\nlthreshold = 60",
            1,
        );
        let text = text.replacen("lb_algo = \"rr\"", "lb_algo = \"wlc\"", 1);
        let c = parse(&text).unwrap();
        assert_eq!(
            c.virtual_servers[0].real_servers[0].thresholds,
            Thresholds {
                upper: 100,
                lower: 60
            }
        );
        let bad = text.replacen("lthreshold = 60", "lthreshold = 100", 1);
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("lb.toml:22: `real_server.lthreshold`: 100 needs a larger uthreshold"),
            "{e}"
        );
        let text = GOOD.replacen(
            "router_id = \"LVS_1\"",
            "router_id = \"LVS_1\"\nlvs_timeouts = { tcp = 7200, tcpfin = 30 }",
            1,
        );
        let c = parse(&text).unwrap();
        let lvs = c.global_defs.lvs_timeouts();
        assert_eq!(c.virtual_servers[0].idle_timeout(&lvs), 7200);
        let t = lvs.per_state();
        assert_eq!(t[lb_common::conn_state::FIN_WAIT as usize], 30);
        assert_eq!(t[lb_common::conn_state::UDP as usize], 300);
        assert_eq!(t[lb_common::conn_state::CLOSE as usize], 10);
        let bad = text.replacen("tcpfin = 30", "tcpfin = 0", 1);
        let e = parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("lb.toml:4: `global_defs.lvs_timeouts.tcpfin`: 0: a timeout"),
            "{e}"
        );
    }

    /// `GOOD` with a VRRP instance owning the VIP, tracking `track`; a UDP service on the
    /// same VIP and port when `udp_too`.
    fn tracking_config(track: &str, udp_too: bool) -> String {
        let mut text = format!(
            "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\n\
             priority = 100\nvirtual_ipaddress = [\"192.0.2.100/24\"]\ntrack_virtual_server = [{track}]\n{}",
            GOOD.replace("static = true\n", "")
        );
        if udp_too {
            text += "\n[[virtual_server]]\nip = \"192.0.2.100\"\nport = 80\nprotocol = \"UDP\"\n\
                     lb_algo = \"rr\"\nlb_kind = \"DR\"\n";
        }
        text
    }

    #[test]
    fn key_at_reads_the_key_back_and_never_panics() {
        let text = "[global_defs]\nrouter_id = \"é\"\n[dataplane]\nTCP = { retry = \"x\" }\n";
        assert_eq!(
            key_at(text, text.find("\"é").unwrap()).as_deref(),
            Some("global_defs.router_id")
        );
        assert_eq!(
            key_at(text, text.find("\"x").unwrap()).as_deref(),
            Some("dataplane.retry")
        );
        assert_eq!(key_at(text, 0), None);
        for offset in 0..=text.len() + 1 {
            let _ = key_at(text, offset);
        }
    }

    #[test]
    fn track_virtual_server_names_a_service() {
        let tracked = |track: &str, udp_too: bool| {
            parse(&tracking_config(track, udp_too))
                .map(|c| c.vrrp_instances[0].track_virtual_server.clone())
        };
        let t = tracked(r#""192.0.2.100:80""#, false).unwrap();
        assert_eq!(t[0].name, "192.0.2.100:80/TCP");
        assert_eq!(t[0].weight, None);
        let t = tracked(r#"{ name = "192.0.2.100:80/udp", weight = -30 }"#, true).unwrap();
        assert_eq!(t[0].name, "192.0.2.100:80/UDP");
        assert_eq!(t[0].weight, Some(-30));
        for (track, udp_too, want) in [
            (r#""192.0.2.100:80""#, true, "names a TCP and a UDP service"),
            (
                r#""192.0.2.100:81""#,
                false,
                "no virtual_server \"192.0.2.100:81\"",
            ),
            (r#""192.0.2.100""#, false, "is not VIP:PORT"),
            (r#""192.0.2.100:80/SCTP""#, false, "must be TCP or UDP"),
        ] {
            let e = tracked(track, udp_too).unwrap_err().to_string();
            assert!(
                e.starts_with("lb.toml:7: `vrrp_instance.track_virtual_server`")
                    && e.contains(want),
                "{track}: {e}"
            );
        }
    }

    #[test]
    fn persistence_granularity_forms() {
        assert_eq!(
            granularity(&toml::Value::String("255.255.255.0".into()), true),
            Some(24)
        );
        assert_eq!(granularity(&toml::Value::Integer(16), true), Some(16));
        assert_eq!(
            granularity(&toml::Value::String("ffff:ffff:ffff::".into()), false),
            Some(48)
        );
        assert_eq!(
            granularity(&toml::Value::String("255.0.255.0".into()), true),
            None
        );
        assert_eq!(granularity(&toml::Value::Integer(33), true), None);
        assert_eq!(
            granularity(&toml::Value::String("255.255.0.0".into()), false),
            None
        );
    }

    /// The same file read whole and by service blocks gives the same configuration
    /// (scripts' lines included), and the blocks are cut where the file allows it.
    #[test]
    fn block_parse_agrees_with_whole_parse() {
        let service = |vip: &str, extra: &str| {
            format!(
                "[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\nlb_algo = \"wrr\"\n\
                 lb_kind = \"DR\"\nstatic = true\n{extra}\n  [[ virtual_server.real_server ]] # a\n  \
                 ip = \"192.0.2.11\"\n  port = 80\n  weight = 2\n  notify_up = \"/bin/true up\"\n\n  \
                 [[virtual_server.real_server]]\n  ip = \"192.0.2.12\"\n  port = 80\n  \
                 [virtual_server.real_server.TCP_CHECK]\n  connect_timeout = 2\n"
            )
        };
        let head = "# lb\n[global_defs]\nrouter_id = \"a\"\n\n[dataplane]\ninterface = \"eth0\"\n";
        let vrrp =
            "[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\n\
                    priority = 100\nvirtual_ipaddress = [\"192.0.2.200/24\"]\n";
        let cut =
            [
                format!(
                    "{head}{}{}",
                    service("192.0.2.100", ""),
                    service("192.0.2.101", "")
                ),
                // Other tables between and after the services (a script: its line is kept), a
                // last line without a newline.
                format!(
                "{head}{}{vrrp}{}[[vrrp_script]]\nname = \"chk\"\nscript = \"/bin/true chk\"\n{}",
                service("192.0.2.100", "sorry_server = { ip = \"192.0.2.9\", port = 80 }"),
                service("192.0.2.101", "quorum = 2"),
                service("192.0.2.102", "").trim_end()
            ),
                format!(
                    "{}{head}{}",
                    service("192.0.2.100", ""),
                    service("192.0.2.200", "static = false").replace("static = true\n", "")
                ),
                GOOD.to_string(),
            ];
        let whole_only = [
            // A multi-line string, a quoted header, a service array written inline.
            format!("{head}{}a = \"\"\"\n\"\"\"\n", service("192.0.2.100", "")),
            format!("{head}[\"virtual_server\"]\n"),
            format!("{head}virtual_server = []\n"),
            // An empty array beside blocks: an error of the whole file, which the rest of
            // the file alone would not see.
            format!("virtual_server = []\n{head}{}", service("192.0.2.100", "")),
            format!(
                "\"virtual_server\" = []\n{head}{}",
                service("192.0.2.100", "")
            ),
        ];
        let file = Path::new("lb.toml");
        for text in cut.iter().chain(&whole_only) {
            let mut cache = split::Cache::default();
            let whole = Config::parse_whole(file, text);
            let blocks = Config::parse_cached(file, text, &mut cache);
            match (&whole, &blocks) {
                (Ok(w), Ok(b)) => assert_eq!(w, b, "{text}"),
                (Err(w), Err(b)) => assert_eq!(w.to_string(), b.to_string()),
                _ => panic!("{text}:\n{whole:?}\n{blocks:?}"),
            }
            // A file read whole leaves nothing in the cache.
            if whole.is_ok() {
                assert_eq!(!cache.is_empty(), cut.contains(text), "{text}");
            }
        }
        for ok in [0, 1, 3] {
            assert!(parse(&cut[ok]).is_ok(), "{}", cut[ok]);
        }
        let scripts = parse(&cut[1]).unwrap().scripts;
        assert_eq!(scripts[0].key, "vrrp_script.script", "{scripts:?}");
        let scripts = parse(&cut[0]).unwrap().scripts;
        assert_eq!(scripts.len(), 2);
        assert_eq!(scripts[1].line, cut[0].lines().count() - 6, "{scripts:?}");
    }

    /// A second read with the first one's cache hands over the services whose text did not
    /// change (moved or not), parses the one that did, and a bad file leaves the cache as it
    /// was, with the error the whole parse gives.
    #[test]
    fn a_cached_read_parses_only_what_changed() {
        let service = |n: u32, weight: u32| {
            format!(
                "[[virtual_server]]\nip = \"192.0.2.{n}\"\nport = 80\nprotocol = \"TCP\"\n\
                 lb_algo = \"wrr\"\nlb_kind = \"DR\"\nstatic = true\n  [[virtual_server.real_server]]\n  \
                 ip = \"198.51.100.{n}\"\n  port = 80\n  weight = {weight}\n  \
                 notify_down = \"/bin/true {n}\"\n"
            )
        };
        let file = |weights: [u32; 3], top: &str| {
            format!(
                "[dataplane]\ninterface = \"eth0\"\n{top}{}{}{}",
                service(1, weights[0]),
                service(2, weights[1]),
                service(3, weights[2])
            )
        };
        let path = Path::new("lb.toml");
        let mut cache = split::Cache::default();
        let first = Config::parse_cached(path, &file([1, 1, 1], ""), &mut cache).unwrap();
        assert_eq!(cache.len(), 3);
        // Service 2's weight changes and two lines come in above the services.
        let text = file([1, 5, 1], "# moved\n\n");
        let second = Config::parse_cached(path, &text, &mut cache).unwrap();
        let same: Vec<bool> = first
            .virtual_servers
            .iter()
            .zip(&second.virtual_servers)
            .map(|(a, b)| Arc::ptr_eq(a, b))
            .collect();
        assert_eq!(same, [true, false, true]);
        let key = |c: &Config, i: usize| {
            let vs = &c.virtual_servers[i];
            vs.key()
        };
        let changed = |a: &Config, b: &Config| {
            let mut v: Vec<_> = a.changed_services(b).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(changed(&first, &second), [key(&first, 1)]);
        assert_eq!(changed(&first, &first), []);
        // Without the cache nothing is shared: all of them.
        assert_eq!(
            changed(&first, &Config::parse(path, &text).unwrap()).len(),
            3
        );
        assert_eq!(second.virtual_servers[1].real_servers[0].weight, 5);
        assert_eq!(second, Config::parse_whole(path, &text).unwrap());
        // A bad weight in service 3: the whole parse's error, and the cache keeps its blocks.
        let bad = file([1, 5, 70000], "# moved\n\n");
        let e = Config::parse_cached(path, &bad, &mut cache).unwrap_err();
        assert_eq!(
            e.to_string(),
            Config::parse_whole(path, &bad).unwrap_err().to_string()
        );
        assert!(e.to_string().starts_with("lb.toml:39:"), "{e}");
        // Service 2 removed, service 4 added.
        let fewer = text.replace(&service(2, 5), &service(4, 1));
        let fourth = Config::parse_cached(path, &fewer, &mut split::Cache::default()).unwrap();
        let mut cache_copy = split::Cache::default();
        Config::parse_cached(path, &text, &mut cache_copy).unwrap();
        let from = Config::parse_cached(path, &text, &mut cache_copy).unwrap();
        let to = Config::parse_cached(path, &fewer, &mut cache_copy).unwrap();
        assert_eq!(changed(&from, &to), [key(&from, 1), key(&fourth, 1)]);
        let third = Config::parse_cached(path, &text, &mut cache).unwrap();
        assert!(third
            .virtual_servers
            .iter()
            .zip(&second.virtual_servers)
            .all(|(a, b)| Arc::ptr_eq(a, b)));
    }

    /// The metrics listen on any address; the token file is checked where it is named, and
    /// read (where every error names the file, the line and the key) only by
    /// [`Config::metrics_token`], at start, `check` and reload.
    #[test]
    fn metrics_listen_anywhere_behind_a_token_file() {
        use std::os::unix::fs::PermissionsExt;
        for addr in [
            "192.0.2.2:9100",
            "[2001:db8::1]:9100",
            "0.0.0.0:9100",
            "[::]:9100",
        ] {
            let c = parse(&format!("[global_defs]\nmetrics_address = \"{addr}\"\n"))
                .unwrap_or_else(|e| panic!("{addr}: {e}"));
            assert_eq!(
                c.global_defs.metrics_address.as_ref().map(|a| *a.get_ref()),
                Some(addr.parse().unwrap())
            );
            assert_eq!(c.metrics_token_file, None);
            assert_eq!(c.metrics_token().unwrap(), None);
        }

        let with = |file: &str| {
            format!(
                "[global_defs]\nrouter_id = \"a\"\nmetrics_address = \"192.0.2.2:9100\"\n\
                 metrics_bearer_token_file = \"{file}\"\n"
            )
        };
        let err = |text: &str| parse(text).unwrap_err().to_string();
        assert_eq!(
            err(&with("metrics.token")),
            "lb.toml:4: `global_defs.metrics_bearer_token_file`: must be an absolute path"
        );
        assert_eq!(
            err("[global_defs]\nmetrics_bearer_token_file = \"/etc/lb-daemon/metrics.token\"\n"),
            "lb.toml:2: `global_defs.metrics_bearer_token_file`: needs global_defs.metrics_address: \
             without it nothing serves the metrics"
        );

        let dir = crate::testutil::TempDir::new("metrics-token");
        let token = dir.path().join("metrics.token");
        let read = |text: &str| {
            let c = parse(text).unwrap();
            assert_eq!(
                c.metrics_token_file,
                Some(SecretFile {
                    path: token.clone(),
                    line: 4
                })
            );
            c.metrics_token().map_err(|e| e.to_string())
        };
        let text = with(token.to_str().unwrap());
        let at = format!(
            "lb.toml:4: `global_defs.metrics_bearer_token_file`: {}",
            token.display()
        );
        let write = |content: &[u8], mode: u32| {
            std::fs::write(&token, content).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        assert_eq!(
            read(&text).unwrap_err(),
            format!("{at}: No such file or directory (os error 2)")
        );
        write(b"", 0o600);
        assert_eq!(
            read(&text).unwrap_err(),
            format!("{at} is empty: it holds the token")
        );
        write(b" \n\t\n", 0o600);
        assert_eq!(
            read(&text).unwrap_err(),
            format!("{at} is empty: it holds the token")
        );
        for bad in [&b"two words"[..], b"ctl\x01", "n\u{f6}n-ascii".as_bytes()] {
            write(bad, 0o600);
            let e = read(&text).unwrap_err();
            assert!(
                e.starts_with(&at) && e.ends_with("which an Authorization header cannot carry"),
                "{bad:?}: {e}"
            );
        }
        write(b"s3cret\n", 0o644);
        assert_eq!(
            read(&text).unwrap_err(),
            format!(
                "{at} can be read or written by users other than its owner (mode 644): chmod 600 it"
            )
        );
        // What Prometheus reads from its own file: the text without the white space around.
        write(b"  s3cret-Tok_en.~+/=\r\n", 0o600);
        assert_eq!(read(&text).unwrap(), Some(b"s3cret-Tok_en.~+/=".to_vec()));
        std::fs::remove_file(&token).unwrap();
        std::fs::create_dir(&token).unwrap();
        assert_eq!(
            read(&text).unwrap_err(),
            format!("{at} is not a regular file")
        );

        // After the service blocks, which the file is cut at: still its own line.
        let late = |file: &str| {
            format!(
                "{}\n{}",
                GOOD.replacen("[global_defs]\nrouter_id = \"LVS_1\"\n", "", 1),
                with(file)
            )
        };
        let line = |text: &str| {
            1 + text
                .lines()
                .position(|l| l.starts_with("metrics_bearer_token_file"))
                .unwrap()
        };
        let relative = late("metrics.token");
        assert!(line(&relative) > 20, "{relative}");
        assert_eq!(
            err(&relative),
            format!(
                "lb.toml:{}: `global_defs.metrics_bearer_token_file`: must be an absolute path",
                line(&relative)
            )
        );
        let missing = late("/nonexistent/metrics.token");
        let e = parse(&missing)
            .unwrap()
            .metrics_token()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "lb.toml:{}: `global_defs.metrics_bearer_token_file`: /nonexistent/metrics.token: \
                 No such file or directory (os error 2)",
                line(&missing)
            )
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The commented examples in `examples/` load and mean what their comments say.
    #[test]
    fn examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let lvs = Config::load(&dir.join("lvs-dr.toml")).unwrap();
        assert_eq!(lvs.virtual_servers.len(), 2);
        assert!(lvs
            .virtual_servers
            .iter()
            .all(|v| v.real_servers.len() == 3 && !v.is_static));
        assert_eq!(lvs.vrrp_instances[0].advert_int_cs, 500);
        assert_eq!(lvs.sync_groups[0].members, vec!["VI_1".to_string()]);
        // The seed's TCP_CHECK on every real server: delay_loop 6, connect_timeout 3,
        // nb_get_retry 3, delay_before_retry 3.
        for rs in lvs.virtual_servers.iter().flat_map(|v| &v.real_servers) {
            let [check] = &rs.checks.checks[..] else {
                panic!("{}: one TCP_CHECK expected", rs.addr)
            };
            let check::CheckKind::Tcp(c) = &check.kind else {
                panic!("{check:?}")
            };
            assert_eq!(c.timeout, std::time::Duration::from_secs(3));
            assert_eq!(c.dest, rs.addr);
            let t = check.timing;
            assert_eq!(t.delay_loop, std::time::Duration::from_secs(6));
            assert_eq!(t.retry, 3);
            assert_eq!(t.delay_before_retry, std::time::Duration::from_secs(3));
        }
        let nginx = Config::load(&dir.join("nginx-ha.toml")).unwrap();
        assert!(nginx.dataplane.is_none() && nginx.virtual_servers.is_empty());
        assert!(!nginx.vrrp_instances[0].preempt);
        assert_eq!(
            nginx.vrrp_scripts[0].interval,
            std::time::Duration::from_secs(3)
        );
    }
}
