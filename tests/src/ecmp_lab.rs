//! Active-active load balancers behind ECMP (`[announce]`), in network namespaces: three
//! lb-daemon nodes route the VIP to themselves, BIRD on each announces it over BGP, and the
//! router's BIRD merges the paths into one multipath route, over which the router's kernel
//! spreads the clients' flows.
//!
//! ```text
//!  {p}c    eth0 198.51.100.2 ..= .65/24 (64 client addresses) ──── eth1 198.51.100.1 ─┐
//!                                                                                      │
//!  {p}r    eth0 192.0.2.1   router: BIRD AS 65000 (dist/bird/router.conf), forwarding ─┤
//!  {p}lb1  eth0 192.0.2.11  lb-daemon [announce] + [sync] to lb2, lb3; BIRD AS 65001   ─┤
//!  {p}lb2  eth0 192.0.2.12  ... (dist/bird/lb-node.conf, the node's address put in)    ─┤ {p}br: br0
//!  {p}lb3  eth0 192.0.2.13  ...                                                        ─┤
//!  {p}rs1  eth0 192.0.2.21  nginx :80 answering `rs1`, VIP 203.0.113.10/32 on lo       ─┤
//!  {p}rs2  eth0 192.0.2.22  ...                                                        ─┤
//!  {p}rs3  eth0 192.0.2.23  ...                                                        ─┘
//! ```
//!
//! A request: client -> router (one next hop of `203.0.113.10 proto bird`, chosen by a hash
//! of addresses and ports, `fib_multipath_hash_policy = 1`) -> that node's XDP program
//! (destination MAC rewritten, direct routing) -> a real server, which answers the client
//! straight through the router with the VIP as source.
//!
//! Each node's daemon ([`lb_toml`]) schedules with Maglev (`mh`), so every node picks the
//! same real server for a client, and syncs its flows to the other two (`[sync]` without a
//! `vrrp_instance`). Its health checks are `HTTP_GET`s of `/health/lbN` (a path of its own),
//! which the real servers serve from a file each per node: [`EcmpLab::set_checks`] removes
//! one node's files, and that node alone loses its quorum.
//!
//! Before the daemon, the lab simulates it ([`EcmpLab::simulate_announce`]): a TUN device
//! held by a descriptor of this process (so that closing it does to the device what the
//! daemon's death does), and the route the daemon keeps through it.
//!
//! The issue's measurement is [`EcmpLab::node_loss`]: [`EcmpLab::open_spread`] (100
//! keep-alive connections over every node, each node holding every flow), then
//! [`EcmpLab::fail_node`] (a node killed, cut off or its daemon alone killed; the time until
//! the router's route leaves it out and until new connections from every client address
//! succeed; what the long-lived connections do after). `lb-lab --scenario ecmp`
//! ([`ecmp_demo`]) and `lb-bench daemon` (`ecmp_node_loss_*`) run it.
//!
//! Safety: as in [`crate::netns`]: documentation ranges only (192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24, 2001:db8::/32), per-run namespace prefixes, nothing in the root
//! namespace; teardown stops only the processes started here (daemons, BIRD, nginx) and
//! deletes only the namespaces created here; every wait has a deadline.
use std::{
    collections::BTreeMap,
    fmt, fs, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    e2e_lab::{
        self, exchange, nginx_conf, status_json, wait, Failure, LongLived, RoundReport, Summary,
        Timers, CANCEL, REQUEST_CLOSE, SYNC_KEY_PLACEHOLDER,
    },
    lab::{daemon_bin, with_control_socket},
    netns::{require_root, require_tools, skip_or_panic, unique_prefix, Lan, Netns, Proc, HOST_IF},
    vrrp_lab::find_program,
};

// ---------------------------------------------------------------------------------------------
// Addresses and bounds
// ---------------------------------------------------------------------------------------------

/// The announced VIP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const HTTP: u16 = 80;
/// The router on the LAN (the nodes' BGP neighbour, the real servers' gateway).
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The router on the clients' side (their gateway).
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The router's interface towards the client.
pub const ROUTER_CLIENT_IF: &str = "eth1";
pub const LBS: usize = 3;
pub const SERVERS: usize = 3;
/// Addresses on the client's interface: enough that the router's hash spreads them over
/// every node.
pub const CLIENT_ADDRS: usize = 64;

/// `[announce]`'s defaults, written out in [`lb_toml`] (and `kernel table 100` in
/// dist/bird/lb-node.conf).
pub const ANNOUNCE_TABLE: u32 = 100;
pub const ANNOUNCE_DEVICE: &str = "lbvip0";
/// The `proto` of the daemon's routes.
pub const ANNOUNCE_PROTO: u8 = 250;

/// The shipped BIRD configurations: the lab runs them as they are, but for the `log` line
/// and (a node's) address.
pub const ROUTER_BIRD_CONF: &str = include_str!("../../dist/bird/router.conf");
pub const LB_BIRD_CONF: &str = include_str!("../../dist/bird/lb-node.conf");

/// How the router hashes a flow onto a next hop: its 5-tuple (addresses, protocol, ports).
///
/// dist/bird/router.conf asks for `fib_multipath_hash_policy = 1`, which on a router hashes
/// the 5-tuple, or takes the layer-4 hash the NIC computed (RSS) over the same fields. In
/// this lab the packets reach the router over a veth, which keeps the hash the sending
/// socket put on them (`skb->hash`, from `sk_txhash`: random per connection, and drawn
/// again at each retransmission timeout), and policy 1 takes that: the router's choice
/// would not be a function of the 5-tuple (`ip route get` disagreed with the nodes'
/// counters), and a retransmission could move a flow to another node. Policy 3 with these
/// fields hashes the 5-tuple from the packet itself, always: what a router does with
/// policy 1 and packets from a NIC, and what [`EcmpLab::router_next_hop_for`] computes.
pub const ROUTER_HASH: &[(&str, &str)] = &[
    ("net.ipv4.fib_multipath_hash_policy", "3"),
    // Source and destination address, protocol, source and destination port.
    ("net.ipv4.fib_multipath_hash_fields", "0x0037"),
];

/// BFD's detection time in those files: 3 x 100 ms.
pub const BFD_DETECTION: Duration = Duration::from_millis(300);
/// What the issue promises: within 1 s of a node's death, new connections from every client
/// go through the nodes that remain.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(1);
/// Allowance on top of [`RECOVERY_BOUND`] and [`BFD_DETECTION`]. The path measured is
/// short (a FIN or BFD, BIRD, one kernel route: tens of ms here); what the margin covers is
/// the probes' granularity (a round of connections that began before the change fails after
/// its [`PROBE_TIMEOUT`]) and scheduling on a loaded 2-core runner where three daemons,
/// four BIRDs and three nginx share the cores. It stays well under the BGP hold time (3 s),
/// so a BFD that does not work (the router waiting for the hold timer) fails the bound.
pub const CI_MARGIN: Duration = Duration::from_millis(500);
/// Timeout of one probe connection while waiting for the service to recover.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Node `i` (1-based): 192.0.2.(10+i).
pub fn lb_v4(i: usize) -> Ipv4Addr {
    assert!((1..=LBS).contains(&i), "node {i}");
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// Real server `i` (1-based): 192.0.2.(20+i).
pub fn rs_v4(i: usize) -> Ipv4Addr {
    assert!((1..=SERVERS).contains(&i), "real server {i}");
    Ipv4Addr::new(192, 0, 2, 20 + i as u8)
}

/// The client's addresses: 198.51.100.2 ..= 198.51.100.65.
pub fn client_addrs() -> Vec<Ipv4Addr> {
    (0..CLIENT_ADDRS)
        .map(|k| Ipv4Addr::new(198, 51, 100, 2 + k as u8))
        .collect()
}

/// The node that a next hop is, if it is one.
pub fn node_of(hop: Ipv4Addr) -> Option<usize> {
    (1..=LBS).find(|&i| lb_v4(i) == hop)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// The VIP's port 80.
pub fn target() -> SocketAddr {
    SocketAddr::from((VIP, HTTP))
}

/// The path node `lb`'s health checks fetch.
pub fn health_path(lb: usize) -> String {
    format!("/health/lb{lb}")
}

// ---------------------------------------------------------------------------------------------
// Gates
// ---------------------------------------------------------------------------------------------

/// Programs the lab runs.
pub const ECMP_TOOLS: &[&str] = &["ip", "sysctl", "nginx", "bird", "birdc"];

/// Root and [`ECMP_TOOLS`] (bird2 for `bird` and `birdc`).
pub fn require_ecmp_lab(test: &str) -> bool {
    require_root(test) && require_tools(test, ECMP_TOOLS)
}

/// [`require_ecmp_lab`], and a daemon that takes `[announce]`: `lb-daemon check` of node 1's
/// configuration. A daemon from before `[announce]` (it refuses the section as an unknown
/// field) is a skip, with the reason printed (a failure under `LB_REQUIRE_PRIVILEGED=1`);
/// any other refusal of the lab's configuration is a failure.
pub fn require_announce(test: &str) -> bool {
    if !require_ecmp_lab(test) {
        return false;
    }
    // Asked once per process: the tests run on threads of one process, and each asking in
    // the same directory removed it under another's check.
    static ANSWER: std::sync::OnceLock<Result<Option<String>, String>> = std::sync::OnceLock::new();
    match ANSWER.get_or_init(|| announce_refused().map_err(|e| format!("{e:#}"))) {
        Ok(None) => true,
        Ok(Some(why)) => skip_or_panic(test, why),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Why the daemon refuses `[announce]`, if it does (see [`require_announce`]).
fn announce_refused() -> Result<Option<String>> {
    let bin = daemon_bin()?;
    let dir = std::env::temp_dir().join(format!("lbtest-ecmp-check-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let r = (|| -> Result<Option<String>> {
        let cfg = dir.join("lb.toml");
        fs::write(
            &cfg,
            with_sync_key(&lb_toml(1, &Timers::lab(), "skb"), &dir)?,
        )?;
        let out = std::process::Command::new(&bin)
            .arg("check")
            .arg("--config")
            .arg(&cfg)
            .output()
            .with_context(|| format!("running {} check", bin.display()))?;
        if out.status.success() {
            return Ok(None);
        }
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("unknown field `announce`") {
            return Ok(Some(format!(
                "{} predates [announce] (`lb-daemon check` says: {err})",
                bin.display()
            )));
        }
        bail!(
            "`lb-daemon check` refuses the lab's configuration: {err}\n{}",
            fs::read_to_string(&cfg).unwrap_or_default()
        )
    })();
    let _ = fs::remove_dir_all(&dir);
    r
}

/// Why the lab cannot run here, if it cannot, without printing or panicking (for the lab
/// binary and the benchmark, which report it their own way): not root, a program of
/// [`ECMP_TOOLS`] missing, or a daemon from before `[announce]`. An error when the daemon is
/// not built or refuses the lab's configuration for another reason.
pub fn unavailable() -> Result<Option<String>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Ok(Some(format!("needs root (euid is {euid})")));
    }
    let missing: Vec<&str> = ECMP_TOOLS
        .iter()
        .copied()
        .filter(|t| find_program(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Ok(Some(format!(
            "needs {} (apt-get install iproute2 procps nginx-light bird2)",
            missing.join(", ")
        )));
    }
    announce_refused()
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `text` with its `log syslog all;` line sending to stderr instead (the lab keeps each
/// BIRD's stderr in a file).
fn log_to_stderr(text: &str) -> Result<String> {
    const LINE: &str = "\nlog syslog all;\n";
    ensure!(
        text.contains(LINE),
        "the BIRD configuration has no `log syslog all;` line"
    );
    Ok(text.replacen(LINE, "\nlog stderr all;\n", 1))
}

/// The router's BIRD configuration: dist/bird/router.conf.
pub fn router_bird_conf() -> Result<String> {
    log_to_stderr(ROUTER_BIRD_CONF)
}

/// Node `i`'s BIRD configuration: dist/bird/lb-node.conf (written for lb1, 192.0.2.11)
/// with node `i`'s address as `router id` and session source.
pub fn lb_bird_conf(i: usize) -> Result<String> {
    let text = log_to_stderr(LB_BIRD_CONF)?;
    let example = lb_v4(1);
    let mut out = text;
    for (from, to) in [
        (
            format!("router id {example};"),
            format!("router id {};", lb_v4(i)),
        ),
        (
            format!("local {example} as"),
            format!("local {} as", lb_v4(i)),
        ),
    ] {
        ensure!(
            out.matches(&from).count() == 1,
            "dist/bird/lb-node.conf should say `{from}` once"
        );
        out = out.replacen(&from, &to, 1);
    }
    Ok(out)
}

/// Node `i`'s lb-daemon TOML: the VIP announced, one DR service over the three real servers
/// scheduled with Maglev, `HTTP_GET` checks of [`health_path`]`(i)`, and connection sync
/// with the other two nodes.
pub fn lb_toml(i: usize, t: &Timers, xdp_mode: &str) -> String {
    let peers = (1..=LBS)
        .filter(|&j| j != i)
        .map(|j| format!("\"{}\"", lb_v4(j)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut c = format!(
        r#"# ECMP lab, node lb{i} (generated by tests/src/ecmp_lab.rs).
[global_defs]
router_id = "ECMP_LB{i}"

[dataplane]
interface = "{HOST_IF}"
xdp_mode = "{xdp_mode}"
max_flows = 65536

[announce]
vips = ["{VIP}"]
table = {ANNOUNCE_TABLE}
device = "{ANNOUNCE_DEVICE}"

# Every node sends its flows to the others and installs theirs.
[sync]
interface = "{HOST_IF}"
peers = [{peers}]
key_file = "{SYNC_KEY_PLACEHOLDER}"

[[virtual_server]]
ip = "{VIP}"
port = {HTTP}
protocol = "TCP"
# Maglev: every node picks the same real server for a client.
lb_algo = "mh"
lb_kind = "DR"
delay_loop = {delay_loop}
"#,
        delay_loop = t.delay_loop,
    );
    for s in 1..=SERVERS {
        c += &format!(
            "\n  [[virtual_server.real_server]]\n  ip = \"{}\"\n  port = {HTTP}\n  weight = 1\n  \
             HTTP_GET = {{ connect_timeout = {}, retry = {}, delay_before_retry = {}, \
             url = [{{ path = \"{}\" }}] }}\n",
            rs_v4(s),
            t.connect_timeout,
            t.retry,
            t.delay_before_retry,
            health_path(i)
        );
    }
    c
}

/// `config` with its sync key placeholder replaced by a key file written in `dir`
/// (root-only, as the daemon wants it; the same key on every node).
fn with_sync_key(config: &str, dir: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("sync.key");
    fs::write(&key, b"the lab's shared sync key, 32 b.")?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    Ok(config.replace(SYNC_KEY_PLACEHOLDER, &key.to_string_lossy()))
}

/// A real server's nginx.conf: e2e_lab's (`/` answers `body`, long keep-alive), and
/// `/health/` served from files under `dir`.
pub fn rs_nginx_conf(dir: &std::path::Path, body: &str) -> Result<String> {
    let base = nginx_conf(dir, body, &[HTTP]);
    let anchor = "        location / {";
    ensure!(base.contains(anchor), "e2e_lab's nginx.conf changed shape");
    Ok(base.replacen(
        anchor,
        &format!(
            "        location /health/ {{\n            root {};\n        }}\n{anchor}",
            dir.display()
        ),
        1,
    ))
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

/// The next hops of `ip -j route show` output (one route, multipath or not), sorted.
pub fn parse_next_hops(json: &str) -> Result<Vec<Ipv4Addr>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(json).context("ip -j route")?;
    let mut hops = Vec::new();
    for route in v.as_array().context("ip -j route: not a list")? {
        let gateways: Vec<&serde_json::Value> = match route["nexthops"].as_array() {
            Some(nh) => nh.iter().map(|h| &h["gateway"]).collect(),
            None => vec![&route["gateway"]],
        };
        for g in gateways {
            if let Some(g) = g.as_str() {
                hops.push(g.parse().with_context(|| format!("next hop {g:?}"))?);
            }
        }
    }
    hops.sort();
    Ok(hops)
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// A TCP connection from `src` (bound before the connect) to `target`, from the calling
/// thread's namespace.
pub fn connect_from(src: Ipv4Addr, target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    e2e_lab::connect_from(Some(src.into()), target, timeout)
}

/// One HTTP/1.0 request from `src` on a new connection; the real server's name, or why it
/// failed. Also the connection's local address when it was made (for the router's choice).
pub fn http_get_from(
    src: Ipv4Addr,
    target: SocketAddr,
    timeout: Duration,
) -> (Option<SocketAddr>, Result<String, Failure>) {
    let mut s = match connect_from(src, target, timeout) {
        Ok(s) => s,
        Err(e) => return (None, Err(Failure::from_io(&e))),
    };
    let local = s.local_addr().ok();
    (local, exchange(&mut s, REQUEST_CLOSE, timeout))
}

/// One probe of [`EcmpLab::probe_every_address`].
#[derive(Debug, Clone)]
pub struct Probe {
    pub src: Ipv4Addr,
    /// The connection's own address and port (None when it was not made).
    pub local: Option<SocketAddr>,
    pub outcome: Result<String, Failure>,
}

/// Keep-alive connections from chosen client addresses, each remembering the real server
/// of its first request.
pub type SourcedConns = LongLived;

/// [`SourcedConns`]: one connection per entry of `sources` (an address may repeat), from
/// `client`, with a first request on each.
pub fn open_sourced(
    client: &Netns,
    target: SocketAddr,
    sources: &[Ipv4Addr],
) -> Result<SourcedConns> {
    let sources: Vec<Option<std::net::IpAddr>> =
        sources.iter().map(|a| Some((*a).into())).collect();
    LongLived::open_from(client, target, &sources)
}

/// How long the service took to serve every client address again (see
/// [`EcmpLab::wait_every_address_served`]).
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// From the event to the start of the first round of the final run of rounds in which
    /// every address was served.
    pub after: Duration,
    /// Rounds made, and requests that failed in them, by kind.
    pub rounds: usize,
    pub failures: BTreeMap<String, usize>,
}

impl Recovery {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "every address served {:.3} s after ({} rounds of {CLIENT_ADDRS}, {} failed{})",
            self.after.as_secs_f64(),
            self.rounds,
            self.failed(),
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(": {:?}", self.failures)
            }
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// A node: its namespace, BIRD and lb-daemon.
struct Node {
    /// The simulated announcement's TUN device ([`EcmpLab::simulate_announce`]); first, so
    /// that it closes before the namespace goes.
    sim_tun: Option<OwnedFd>,
    ns: Netns,
    bird: Option<Proc>,
    daemon: Option<Proc>,
    cfg: PathBuf,
    /// stderr of every run, daemon and BIRD, in order.
    logs: Vec<(String, PathBuf)>,
}

/// The ECMP topology (see the module doc). Drop stops every process started here (the
/// nodes' daemons first) and deletes the namespaces.
pub struct EcmpLab {
    prefix: String,
    timers: Timers,
    xdp_mode: String,
    // Field order is drop order: the nodes (their daemons withdraw), the real servers, the
    // router, the client, the bridge last.
    lbs: Vec<Node>,
    servers: Vec<Netns>,
    router: Netns,
    router_bird: Proc,
    client: Netns,
    lan: Lan,
}

impl fmt::Debug for EcmpLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcmpLab({})", self.prefix)
    }
}

fn bird_socket(ns: &Netns) -> PathBuf {
    ns.dir().join("bird.ctl")
}

/// `birdc -s SOCKET args...` of the BIRD in `ns`.
pub fn birdc(ns: &Netns, args: &[&str]) -> Result<String> {
    let sock = bird_socket(ns);
    let mut cmd = vec!["birdc", "-s", sock.to_str().context("socket path")?];
    cmd.extend_from_slice(args);
    let out = ns.exec(&cmd)?;
    ensure!(
        !out.contains("Unable to connect"),
        "birdc in {}: {}",
        ns.name(),
        out.trim()
    );
    Ok(out)
}

/// Starts BIRD in `ns` with `conf`; returns once it answers on its control socket.
fn start_bird(ns: &Netns, conf: &str) -> Result<Proc> {
    let conf_path = ns.dir().join("bird.conf");
    fs::write(&conf_path, conf)?;
    let sock = bird_socket(ns);
    let pid = ns.dir().join("bird.pid");
    let p = ns.spawn(&[
        "bird",
        "-f",
        "-c",
        conf_path.to_str().context("path")?,
        "-s",
        sock.to_str().context("path")?,
        "-P",
        pid.to_str().context("path")?,
    ])?;
    let mut exited = false;
    let r = wait(
        &format!("BIRD in {} to answer", ns.name()),
        Duration::from_secs(10),
        || {
            exited = !p.is_running();
            exited
                || birdc(ns, &["show", "status"])
                    .is_ok_and(|o| o.contains("Daemon is up and running"))
        },
    );
    if exited {
        bail!("BIRD in {} exited: {}", ns.name(), p.read_stderr());
    }
    r.with_context(|| p.read_stderr())?;
    Ok(p)
}

/// Starts nginx in a real server's namespace (its nginx.conf is written) and waits until it
/// answers `body` at `addr`.
fn start_nginx(ns: &Netns, addr: Ipv4Addr, body: &str) -> Result<Proc> {
    let p = e2e_lab::start_nginx(ns)?;
    e2e_lab::wait_nginx(ns, &p, SocketAddr::from((addr, HTTP)), body)?;
    Ok(p)
}

impl EcmpLab {
    /// Builds the namespaces, starts the real servers' nginx, the router's BIRD and every
    /// node's BIRD, and waits until the three BGP sessions are up. No daemon runs.
    pub fn new(prefix: &str) -> Result<EcmpLab> {
        Self::with_params(prefix, Timers::lab(), "skb")
    }

    /// [`EcmpLab::new`] with the checks' timers and the XDP mode of the nodes' daemons.
    pub fn with_params(prefix: &str, timers: Timers, xdp_mode: &str) -> Result<EcmpLab> {
        let lan = Lan::new(prefix)?;
        let router = lan.host("r", 1, ROUTER, v6(1))?;
        let client = Netns::new(&format!("{prefix}c"))?;
        router.ip(&[
            "link",
            "add",
            ROUTER_CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            HOST_IF,
            "netns",
            client.name(),
        ])?;
        router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_CLIENT_SIDE}/24"),
            "dev",
            ROUTER_CLIENT_IF,
        ])?;
        router.ip(&["link", "set", ROUTER_CLIENT_IF, "up"])?;
        // Forwarding with a flow hash over addresses and ports ([`ROUTER_HASH`]); no
        // reverse-path filter: the real servers' replies come from the VIP (see
        // dist/bird/router.conf).
        router.sysctls(ROUTER_HASH)?;
        router.sysctls(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.eth0.rp_filter", "0"),
            ("net.ipv4.conf.eth1.rp_filter", "0"),
        ])?;
        let mut batch: String = client_addrs()
            .iter()
            .map(|a| format!("addr add {a}/24 dev {HOST_IF}\n"))
            .collect();
        batch += &format!("link set {HOST_IF} up\nroute add default via {ROUTER_CLIENT_SIDE}\n");
        let batch_file = client.dir().join("addresses.batch");
        fs::write(&batch_file, batch)?;
        client.ip(&["-batch", batch_file.to_str().context("path")?])?;
        let router_bird = start_bird(&router, &router_bird_conf()?)?;

        let mut servers = Vec::new();
        for i in 1..=SERVERS {
            let ns = lan.host(
                &format!("rs{i}"),
                20 + i as u8,
                rs_v4(i),
                v6(0x20 + i as u16),
            )?;
            // A direct-routing real server: the VIP on lo, never answered for in ARP.
            ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"])?;
            ns.sysctls(&[
                ("net.ipv4.conf.lo.arp_ignore", "1"),
                ("net.ipv4.conf.lo.arp_announce", "2"),
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
            ])?;
            ns.ip(&["route", "add", "default", "via", &ROUTER.to_string()])?;
            fs::create_dir_all(ns.dir().join("health"))?;
            for lb in 1..=LBS {
                fs::write(ns.dir().join(format!("health/lb{lb}")), "ok\n")?;
            }
            fs::write(
                ns.dir().join("nginx.conf"),
                rs_nginx_conf(ns.dir(), &format!("rs{i}"))?,
            )?;
            start_nginx(&ns, rs_v4(i), &format!("rs{i}"))?;
            servers.push(ns);
        }

        let mut lab = EcmpLab {
            prefix: prefix.to_string(),
            timers,
            xdp_mode: xdp_mode.to_string(),
            lbs: Vec::new(),
            servers,
            router,
            router_bird,
            client,
            lan,
        };
        for i in 1..=LBS {
            let ns = lab.lan.host(
                &format!("lb{i}"),
                10 + i as u8,
                lb_v4(i),
                v6(0x10 + i as u16),
            )?;
            // Nothing the XDP program passes is routed on (see dist/bird/lb-node.conf).
            ns.sysctls(&[
                ("net.ipv4.ip_forward", "0"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.conf.eth0.rp_filter", "0"),
            ])?;
            let cfg = ns.dir().join("lb.toml");
            let text = with_control_socket(&lb_toml(i, &lab.timers, &lab.xdp_mode), ns.dir());
            fs::write(&cfg, with_sync_key(&text, ns.dir())?)?;
            lab.lbs.push(Node {
                sim_tun: None,
                ns,
                bird: None,
                daemon: None,
                cfg,
                logs: Vec::new(),
            });
        }
        for i in 1..=LBS {
            lab.start_bird(i)?;
        }
        lab.wait_sessions(&[1, 2, 3], Duration::from_secs(30))?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    pub fn bridge(&self) -> &Netns {
        self.lan.bridge()
    }

    /// Node `i` (1-based).
    pub fn lb(&self, i: usize) -> &Netns {
        &self.lbs[i - 1].ns
    }

    /// Real server `i` (1-based).
    pub fn rs(&self, i: usize) -> &Netns {
        &self.servers[i - 1]
    }

    /// Node `i`'s lb-daemon configuration file.
    pub fn lb_config(&self, i: usize) -> &std::path::Path {
        &self.lbs[i - 1].cfg
    }

    /// Every namespace, the bridge's last.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.lbs.iter().map(|n| &n.ns).chain(&self.servers).chain([
            &self.router,
            &self.client,
            self.lan.bridge(),
        ])
    }

    // ---- BIRD -------------------------------------------------------------------------------

    /// Starts node `i`'s BIRD (dist/bird/lb-node.conf with its address).
    pub fn start_bird(&mut self, i: usize) -> Result<()> {
        let conf = lb_bird_conf(i)?;
        let node = &mut self.lbs[i - 1];
        ensure!(
            !node.bird.as_ref().is_some_and(Proc::is_running),
            "lb{i}'s BIRD runs"
        );
        let p = start_bird(&node.ns, &conf)?;
        node.logs.push((
            format!("lb{i} BIRD"),
            p.stderr_path().context("log")?.to_path_buf(),
        ));
        node.bird = Some(p);
        Ok(())
    }

    /// SIGKILL of node `i`'s BIRD (its BGP session closes: the kernel sends a FIN; BFD stops).
    pub fn kill_bird(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.lbs[i - 1].bird.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// `birdc` of the router's BIRD.
    pub fn router_birdc(&self, args: &[&str]) -> Result<String> {
        birdc(&self.router, args)
    }

    /// The state of the router's BGP session with node `i` (`Established`, `Active`, ...).
    pub fn session(&self, i: usize) -> Option<String> {
        let out = self.router_birdc(&["show", "protocols"]).ok()?;
        let name = format!("lb{i}");
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&name.as_str()) && w.get(1) == Some(&"BGP"))
            .and_then(|w| w.get(5).map(|s| s.to_string()))
    }

    /// Waits until the router's sessions with `nodes` are established.
    pub fn wait_sessions(&self, nodes: &[usize], timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        let r = wait("the BGP sessions to be established", timeout, || {
            nodes
                .iter()
                .all(|&i| self.session(i).as_deref() == Some("Established"))
        });
        r.with_context(|| {
            format!(
                "router: {}\n{}",
                self.router_birdc(&["show", "protocols"])
                    .unwrap_or_default(),
                self.logs()
            )
        })?;
        Ok(t.elapsed())
    }

    // ---- The router's route -------------------------------------------------------------------

    /// The next hops of the router's route to the VIP (sorted; empty without a route, or
    /// when `ip` fails).
    pub fn router_next_hops(&self) -> Vec<Ipv4Addr> {
        self.router
            .ip(&["-j", "route", "show", &VIP.to_string()])
            .ok()
            .and_then(|o| parse_next_hops(&o).ok())
            .unwrap_or_default()
    }

    /// The nodes the router's route to the VIP goes through.
    pub fn router_nodes(&self) -> Vec<usize> {
        self.router_next_hops()
            .into_iter()
            .filter_map(node_of)
            .collect()
    }

    /// Waits until the router's route goes through exactly `nodes` (none: no route); how
    /// long it took.
    pub fn wait_next_hops(&self, nodes: &[usize], timeout: Duration) -> Result<Duration> {
        let mut want: Vec<Ipv4Addr> = nodes.iter().map(|&i| lb_v4(i)).collect();
        want.sort();
        let t = Instant::now();
        let r = wait(
            &format!("the router's route to {VIP} via {want:?}"),
            timeout,
            || self.router_next_hops() == want,
        );
        r.with_context(|| {
            format!(
                "next hops now: {:?}\nrouter's BIRD: {}\n{}",
                self.router_next_hops(),
                self.router_birdc(&["show", "route", "all"])
                    .unwrap_or_default(),
                self.logs()
            )
        })?;
        Ok(t.elapsed())
    }

    /// The next hop the router picks for a TCP connection from `src`:`sport` to the VIP's
    /// port 80, coming from the client (`ip route get ... iif`): the one its packets take,
    /// the router hashing their 5-tuple ([`ROUTER_HASH`]).
    pub fn router_next_hop_for(&self, src: Ipv4Addr, sport: u16) -> Result<Ipv4Addr> {
        let out = self.router.ip(&[
            "-j",
            "route",
            "get",
            &VIP.to_string(),
            "from",
            &src.to_string(),
            "iif",
            ROUTER_CLIENT_IF,
            "ipproto",
            "tcp",
            "sport",
            &sport.to_string(),
            "dport",
            &HTTP.to_string(),
        ])?;
        parse_next_hops(&out)?
            .first()
            .copied()
            .with_context(|| format!("no next hop in {out}"))
    }

    // ---- The daemon's route, simulated ------------------------------------------------------

    /// What lb-daemon does on node `i` while the VIP's services have quorum: a TUN device
    /// (held by a descriptor of this process, not persistent) and `VIP/32 dev lbvip0 table
    /// 100 proto 250`.
    pub fn simulate_announce(&mut self, i: usize) -> Result<()> {
        let node = &mut self.lbs[i - 1];
        ensure!(node.sim_tun.is_none(), "lb{i} simulates already");
        let fd = node
            .ns
            .run_in(|| lb_daemon::os::open_tun(ANNOUNCE_DEVICE))?
            .with_context(|| format!("a TUN device in {}", node.ns.name()))?;
        node.sim_tun = Some(fd);
        node.ns.ip(&["link", "set", ANNOUNCE_DEVICE, "up"])?;
        self.simulate_route(i, true)
    }

    /// The route alone: added again, or deleted (what the daemon does on quorum loss).
    pub fn simulate_route(&self, i: usize, add: bool) -> Result<()> {
        self.lb(i)
            .ip(&[
                "route",
                if add { "add" } else { "del" },
                &format!("{VIP}/32"),
                "dev",
                ANNOUNCE_DEVICE,
                "table",
                &ANNOUNCE_TABLE.to_string(),
                "proto",
                &ANNOUNCE_PROTO.to_string(),
            ])
            .map(drop)
    }

    /// What the daemon's death does on node `i`: the TUN device's last descriptor closes,
    /// the kernel removes the device and its route.
    pub fn simulate_death(&mut self, i: usize) -> Result<()> {
        let node = &mut self.lbs[i - 1];
        ensure!(node.sim_tun.take().is_some(), "lb{i} simulates nothing");
        Ok(())
    }

    // ---- Links ------------------------------------------------------------------------------

    /// Node `i`'s bridge port down (`up = false`: the node is cut off without anything
    /// closing, as at a power loss) or up.
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        self.bridge()
            .ip(&[
                "link",
                "set",
                &format!("to-lb{i}"),
                if up { "up" } else { "down" },
            ])
            .map(drop)
    }

    // ---- lb-daemon ------------------------------------------------------------------------

    /// Starts node `i`'s lb-daemon (and its BIRD if it does not run); returns once the
    /// program is attached, the real servers' MACs are resolved and the router's route goes
    /// through the node (the checks passed, the daemon routed the VIP, BIRD announced it).
    pub fn start_lb(&mut self, i: usize) -> Result<()> {
        if !self.lbs[i - 1].bird.as_ref().is_some_and(Proc::is_running) {
            self.start_bird(i)?;
            self.wait_sessions(&[i], Duration::from_secs(30))?;
        }
        let bin = daemon_bin()?;
        let node = &mut self.lbs[i - 1];
        ensure!(
            !node.daemon.as_ref().is_some_and(Proc::is_running),
            "lb{i}'s lb-daemon runs"
        );
        let p = node.ns.spawn(&[
            bin.to_str().context("daemon path")?,
            "run",
            "--config",
            node.cfg.to_str().context("config path")?,
        ])?;
        node.logs.push((
            format!("lb{i} lb-daemon"),
            p.stderr_path().context("log")?.to_path_buf(),
        ));
        node.daemon = Some(p.clone());
        let mode = format!("mode=\"{}\"", self.xdp_mode);
        let mut exited = false;
        let r = wait(
            &format!("lb-daemon in lb{i} to attach and resolve the real servers"),
            Duration::from_secs(30),
            || {
                exited = !p.is_running();
                let log = p.read_stderr();
                exited
                    || (log.contains("XDP program attached")
                        && log.contains(&mode)
                        && log.matches("backend MAC resolved").count() >= SERVERS)
            },
        );
        if exited {
            bail!("lb-daemon in lb{i} exited:\n{}", p.read_stderr());
        }
        r.with_context(|| p.read_stderr())?;
        let r = wait(
            &format!("the router's route to go through lb{i}"),
            Duration::from_secs(30),
            || self.router_nodes().contains(&i),
        );
        r.with_context(|| {
            format!(
                "lb{i}'s status: {}\n{}",
                self.lb_status(i)
                    .map(|s| s["announce"].to_string())
                    .unwrap_or_else(|e| format!("{e:#}")),
                self.logs()
            )
        })
    }

    /// [`EcmpLab::start_lb`] of every node, then waits for the route through all three.
    pub fn start_all(&mut self) -> Result<()> {
        for i in 1..=LBS {
            self.start_lb(i)?;
        }
        self.wait_next_hops(&[1, 2, 3], Duration::from_secs(10))
            .map(drop)
    }

    /// Node `i`'s death: SIGKILL of its lb-daemon and of its BIRD.
    pub fn kill_lb(&mut self, i: usize) -> Result<()> {
        self.kill_daemon(i)?;
        self.kill_bird(i)
    }

    /// SIGKILL of node `i`'s lb-daemon alone (a crash): its TUN device vanishes, and the
    /// route through it; BIRD runs on.
    pub fn kill_daemon(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.lbs[i - 1].daemon.take() {
            p.kill()?;
        }
        Ok(())
    }

    /// SIGTERM of node `i`'s lb-daemon (it withdraws its routes as it stops); BIRD runs on.
    pub fn stop_lb(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.lbs[i - 1].daemon.take() {
            p.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    pub fn lb_running(&self, i: usize) -> bool {
        self.lbs[i - 1]
            .daemon
            .as_ref()
            .is_some_and(Proc::is_running)
    }

    /// `lb-daemon status --json` of node `i`.
    pub fn lb_status(&self, i: usize) -> Result<serde_json::Value> {
        status_json(self.lb(i))
    }

    /// The VIP's entry of `announce.vips` in node `i`'s status.
    pub fn announce_status(&self, i: usize) -> Option<serde_json::Value> {
        let s = self.lb_status(i).ok()?;
        s["announce"]["vips"]
            .as_array()?
            .iter()
            .find(|v| v["vip"] == VIP.to_string().as_str())
            .cloned()
    }

    /// Whether node `i` says it announces the VIP (None when it does not answer).
    pub fn announced(&self, i: usize) -> Option<bool> {
        self.announce_status(i)?["announced"].as_bool()
    }

    /// The VIP's port-80 service in node `i`'s status.
    pub fn service_status(&self, i: usize) -> Result<serde_json::Value> {
        let s = self.lb_status(i)?;
        s["services"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|svc| svc["vip"] == VIP.to_string().as_str() && svc["port"] == HTTP)
            })
            .cloned()
            .with_context(|| format!("no service {VIP}:{HTTP} in lb{i}'s status: {s}"))
    }

    /// Flows node `i`'s program scheduled (`new_flows` of the VIP's service).
    pub fn new_flows(&self, i: usize) -> Result<u64> {
        let svc = self.service_status(i)?;
        svc["new_flows"]
            .as_u64()
            .with_context(|| format!("new_flows in {svc}"))
    }

    /// The clients of the flows node `i`'s table holds (its own and those sync installed).
    pub fn flow_clients(&self, i: usize) -> Vec<SocketAddr> {
        e2e_lab::flow_clients_at(&self.lb(i).dir().join("ctl.sock"))
    }

    /// Makes node `i`'s health checks pass (`true`) or fail on every real server: its
    /// `/health/lbI` file on each, present or not. The other nodes' checks are not touched.
    pub fn set_checks(&self, i: usize, pass: bool) -> Result<()> {
        for rs in &self.servers {
            let f = rs.dir().join(format!("health/lb{i}"));
            if pass {
                fs::write(&f, "ok\n")?;
            } else if f.exists() {
                fs::remove_file(&f)?;
            }
        }
        Ok(())
    }

    /// Every node's daemon and BIRD log, and the router's BIRD log, for error messages.
    pub fn logs(&self) -> String {
        let mut out = format!("---- router BIRD ----\n{}", self.router_bird.read_stderr());
        for n in &self.lbs {
            for (what, path) in &n.logs {
                out += &format!(
                    "\n---- {what} ----\n{}",
                    fs::read_to_string(path).unwrap_or_default()
                );
            }
        }
        out
    }

    // ---- Clients ---------------------------------------------------------------------------

    /// One request from each client address at once, each on a new connection with
    /// `timeout` for the whole exchange.
    pub fn probe_every_address(&self, timeout: Duration) -> Result<Vec<Probe>> {
        let target = target();
        self.client.run_in(move || {
            // Threads started here are in the client's namespace too.
            std::thread::scope(|s| {
                let handles: Vec<_> = client_addrs()
                    .into_iter()
                    .map(|src| {
                        s.spawn(move || {
                            let (local, outcome) = http_get_from(src, target, timeout);
                            Probe {
                                src,
                                local,
                                outcome,
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("probe thread"))
                    .collect()
            })
        })
    }

    /// Rounds of [`EcmpLab::probe_every_address`] (each connection with [`PROBE_TIMEOUT`])
    /// until `streak` rounds in a row serve every address; the time is measured from `since`
    /// to the first of those rounds.
    pub fn wait_every_address_served(
        &self,
        since: Instant,
        streak: usize,
        timeout: Duration,
    ) -> Result<Recovery> {
        let mut rec = Recovery::default();
        let mut run = 0;
        let mut run_start = since;
        loop {
            ensure!(
                !CANCEL.load(std::sync::atomic::Ordering::SeqCst),
                "interrupted"
            );
            let start = Instant::now();
            let probes = self.probe_every_address(PROBE_TIMEOUT)?;
            rec.rounds += 1;
            let failed: Vec<&Probe> = probes.iter().filter(|p| p.outcome.is_err()).collect();
            for p in &failed {
                if let Err(f) = &p.outcome {
                    *rec.failures.entry(f.kind().to_string()).or_insert(0) += 1;
                }
            }
            if failed.is_empty() {
                if run == 0 {
                    run_start = start;
                }
                run += 1;
                if run >= streak {
                    rec.after = run_start.saturating_duration_since(since);
                    return Ok(rec);
                }
            } else {
                run = 0;
            }
            if since.elapsed() > timeout {
                bail!(
                    "not every client address served within {timeout:?}: {} failed in the \
                     last round, e.g. {:?}\nnext hops: {:?}",
                    failed.len(),
                    failed.first(),
                    self.router_next_hops()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A node lost under long-lived connections (the test, `lb-lab --scenario ecmp`, the bench)
// ---------------------------------------------------------------------------------------------

/// Long-lived connections held while a node fails (the issue's figure).
pub const LONG_LIVED: usize = 100;
/// Rounds in a row that must serve every client address for the service to count as
/// recovered ([`EcmpLab::wait_every_address_served`]).
pub const RECOVERY_STREAK: usize = 3;
/// How long [`EcmpLab::fail_node`] waits for the route and for the clients, at most.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(10);
/// How long [`EcmpLab::open_spread`] waits for every node to hold every connection's flow.
pub const SYNC_WAIT: Duration = Duration::from_secs(15);

/// How a node fails in [`EcmpLab::fail_node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// SIGKILL of its lb-daemon and its BIRD: the kernel closes the BGP session.
    Killed,
    /// SIGKILL of its lb-daemon alone: its TUN device vanishes with the route, BIRD withdraws.
    DaemonKilled,
    /// Its link cut: nothing closes, BFD notices. Until then the bridge floods the frames
    /// for its MAC (the port is down, the MAC gone from the bridge's table) and the other
    /// nodes' programs, which do not look at the destination MAC, serve them: new
    /// connections may not fail at all. A switch floods the same way.
    CutOff,
}

/// Per node (lb1, lb2, lb3).
pub type PerNode = Vec<u64>;

/// Keep-alive connections over every node, each node holding every connection's flow
/// ([`EcmpLab::open_spread`]).
pub struct Spread {
    pub conns: SourcedConns,
    /// The new flows each node scheduled for them.
    pub flows: PerNode,
    /// The connections the router sends through each node (its hash of each 5-tuple).
    pub through: PerNode,
}

/// What a node's failure did ([`EcmpLab::fail_node`]).
#[derive(Debug, Clone)]
pub struct NodeLoss {
    pub victim: usize,
    pub how: Death,
    /// What the failure itself took (SIGKILL and reaping of the processes, or the link set
    /// down): the clients' first round starts only after it.
    pub failing: Duration,
    /// From the failure to the router's kernel installing its route without the node (the
    /// netlink event, read at once by `ip monitor`).
    pub route_out: Duration,
    /// From the failure to new connections from every client address served again.
    pub recovery: Recovery,
    /// One more request on each long-lived connection, after.
    pub after: RoundReport,
}

impl fmt::Display for NodeLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lb{} {:?} (in {:.3} s): out of the router's route after {:.3} s; {}",
            self.victim,
            self.how,
            self.failing.as_secs_f64(),
            self.route_out.as_secs_f64(),
            self.recovery
        )
    }
}

/// Rounds of one new connection from every client address ([`EcmpLab::traffic_share`]).
#[derive(Debug, Clone, Default)]
pub struct Share {
    pub requests: usize,
    /// Failed requests, by kind.
    pub failures: BTreeMap<String, usize>,
    /// Answered requests, by real server.
    pub by_backend: BTreeMap<String, usize>,
    /// The new flows each node scheduled.
    pub flows: PerNode,
    /// The connections the router's hash sent to each node.
    pub routed: PerNode,
}

impl Share {
    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }
}

/// `lb1 N, lb2 N, lb3 N`.
pub fn per_node(v: &[u64]) -> String {
    v.iter()
        .enumerate()
        .map(|(i, n)| format!("lb{} {n}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ip -o monitor route` in the router's namespace, each line with the instant this process
/// read it: when the router's kernel installed a route, to a few hundred microseconds,
/// without polling `ip route` (each poll a process, tens of ms apart). Killed on drop.
struct RouteMonitor {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A route the monitor's start adds and deletes, to know that it listens.
const MONITOR_PROBE: &str = "203.0.113.254/32";

impl RouteMonitor {
    /// Starts the monitor in `ns` and returns once it sees route changes there.
    fn start(ns: &Netns) -> Result<Self> {
        use std::io::BufRead;
        let ip = find_program("ip").context("ip not found")?;
        let mut child = std::process::Command::new(ip)
            .args(["-n", ns.name(), "-o", "monitor", "route"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting `ip monitor route`")?;
        let stdout = child.stdout.take().context("ip monitor's stdout")?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((at, line));
                }
            })
        };
        let m = RouteMonitor {
            child,
            lines,
            reader: Some(reader),
        };
        let probe = MONITOR_PROBE.trim_end_matches("/32");
        let mut seen = false;
        for _ in 0..50 {
            ns.ip(&["route", "add", "blackhole", MONITOR_PROBE])?;
            ns.ip(&["route", "del", "blackhole", MONITOR_PROBE])?;
            if wait("ip monitor to listen", Duration::from_millis(100), || {
                m.snapshot().iter().any(|(_, l)| l.contains(probe))
            })
            .is_ok()
            {
                seen = true;
                break;
            }
            ensure!(
                !CANCEL.load(std::sync::atomic::Ordering::SeqCst),
                "interrupted"
            );
        }
        ensure!(seen, "`ip monitor route` in {} saw nothing", ns.name());
        Ok(m)
    }

    fn snapshot(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until `deadline` for the first route to the VIP installed after `since` that
    /// does not go through node `victim`; its instant.
    fn wait_without(&self, victim: usize, since: Instant, deadline: Instant) -> Result<Instant> {
        let via = format!("via {} ", lb_v4(victim));
        loop {
            let found = self
                .snapshot()
                .into_iter()
                .find(|(at, l)| *at >= since && route_line_without(l, &via));
            if let Some((at, _)) = found {
                return Ok(at);
            }
            ensure!(
                !CANCEL.load(std::sync::atomic::Ordering::SeqCst),
                "interrupted"
            );
            if Instant::now() > deadline {
                let seen: Vec<String> = self.snapshot().into_iter().map(|(_, l)| l).collect();
                bail!(
                    "the router installed no route to {VIP} without lb{victim}; ip monitor \
                     saw:\n{}",
                    seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether a line of `ip -o monitor route` installs a route to the VIP (not `Deleted`) that
/// has no next hop `via` (`"via 192.0.2.12 "`).
fn route_line_without(line: &str, via: &str) -> bool {
    let l = line.trim_start_matches("[ROUTE]").trim_start();
    l.starts_with(&format!("{VIP} ")) && !format!("{l} ").contains(via)
}

impl Drop for RouteMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl EcmpLab {
    /// `r`, with every log appended to an error (unless the run was cancelled).
    fn with_logs<T>(&self, r: Result<T>) -> Result<T> {
        match r {
            Err(e) if !CANCEL.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(anyhow!("{e:#}\n{}", self.logs()))
            }
            r => r,
        }
    }

    /// `new_flows` of every node.
    pub fn all_new_flows(&self) -> Result<PerNode> {
        (1..=LBS).map(|i| self.new_flows(i)).collect()
    }

    /// The node the router sends a connection from `local` through.
    fn node_for(&self, local: SocketAddr) -> Result<usize> {
        let SocketAddr::V4(a) = local else {
            bail!("{local} is no IPv4 address");
        };
        let hop = self.router_next_hop_for(*a.ip(), a.port())?;
        node_of(hop).with_context(|| format!("the router sends {local} to {hop}, no node"))
    }

    /// The router's route to the VIP as `ip route show 203.0.113.10` prints it.
    pub fn router_route(&self) -> Result<String> {
        self.router.ip(&["route", "show", &VIP.to_string()])
    }

    /// `rounds` rounds of one request from each client address, each on a new connection
    /// (3 s each): what every node scheduled, where the router sent them, who answered.
    pub fn traffic_share(&self, rounds: usize) -> Result<Share> {
        let before = self.all_new_flows()?;
        let mut share = Share {
            routed: vec![0; LBS],
            ..Share::default()
        };
        for _ in 0..rounds {
            for p in self.probe_every_address(Duration::from_secs(3))? {
                share.requests += 1;
                match &p.outcome {
                    Ok(b) => *share.by_backend.entry(b.clone()).or_insert(0) += 1,
                    Err(f) => *share.failures.entry(f.kind().to_string()).or_insert(0) += 1,
                }
                if let Some(local) = p.local {
                    share.routed[self.node_for(local)? - 1] += 1;
                }
            }
        }
        let after = self.all_new_flows()?;
        share.flows = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        Ok(share)
    }

    /// `n` keep-alive connections from the client addresses in turn, a first request on each;
    /// then checks what a node's failure needs: each node scheduled exactly the connections
    /// the router sends it (the flows sync installs are no new flows), every node has some,
    /// a second request on each succeeds, and every node holds every connection's flow (its
    /// own, the others' through sync).
    pub fn open_spread(&self, n: usize) -> Result<Spread> {
        let before = self.all_new_flows()?;
        let sources: Vec<Ipv4Addr> = client_addrs().into_iter().cycle().take(n).collect();
        let mut conns = self.with_logs(open_sourced(&self.client, target(), &sources))?;
        let after = self.all_new_flows()?;
        let flows: PerNode = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut through = vec![0u64; LBS];
        for local in conns.local_addrs() {
            through[self.node_for(local)? - 1] += 1;
        }
        ensure!(
            flows == through,
            "new flows per node {flows:?}, but the router sends {through:?} through them"
        );
        ensure!(
            through.iter().all(|&k| k > 0),
            "a node has none of the {n} connections: {through:?}"
        );
        let r = conns.round();
        ensure!(
            (r.ok, r.resets) == (n, 0),
            "a second request on each of the {n} connections: {r:?}"
        );
        let clients: std::collections::BTreeSet<SocketAddr> =
            conns.local_addrs().into_iter().collect();
        for i in 1..=LBS {
            let r = wait(
                &format!("lb{i} to hold every connection's flow"),
                SYNC_WAIT,
                || {
                    let held: std::collections::BTreeSet<_> =
                        self.flow_clients(i).into_iter().collect();
                    clients.is_subset(&held)
                },
            );
            self.with_logs(r.map_err(|e| {
                anyhow!(
                    "{e:#}\nsync: {}",
                    self.lb_status(i)
                        .map(|s| s["sync"].to_string())
                        .unwrap_or_default()
                )
            }))?;
        }
        Ok(Spread {
            conns,
            flows,
            through,
        })
    }

    /// Node `victim` fails `how`; then, at once, waits for the router's route without it (the
    /// instant its kernel installed it, from `ip monitor route`) and for
    /// [`RECOVERY_STREAK`] rounds in a row that serve every client address (both timed from
    /// the instant before the failure, [`RECOVERY_WAIT`] at most), and sends one more
    /// request on each of `conns`. An error when the route or the clients do not recover in
    /// time; what the connections did is the caller's to judge.
    pub fn fail_node(
        &mut self,
        conns: &mut SourcedConns,
        victim: usize,
        how: Death,
    ) -> Result<NodeLoss> {
        ensure!((1..=LBS).contains(&victim), "no node lb{victim}");
        let want: Vec<usize> = (1..=LBS).filter(|&i| i != victim).collect();
        let monitor = RouteMonitor::start(&self.router)?;
        let t0 = Instant::now();
        match how {
            Death::Killed => self.kill_lb(victim),
            Death::DaemonKilled => self.kill_daemon(victim),
            Death::CutOff => self.set_link(victim, false),
        }?;
        let failing = t0.elapsed();
        let lab = &*self;
        let (route, recovery) = std::thread::scope(|s| {
            let route = s.spawn(|| -> Result<Duration> {
                let at = monitor.wait_without(victim, t0, t0 + RECOVERY_WAIT)?;
                // And the route as a later look shows it: exactly the others.
                lab.wait_next_hops(&want, RECOVERY_WAIT)?;
                Ok(at.saturating_duration_since(t0))
            });
            let recovery = lab.wait_every_address_served(t0, RECOVERY_STREAK, RECOVERY_WAIT);
            (route.join(), recovery)
        });
        let route_out = route.map_err(|_| anyhow!("the route's waiting thread panicked"))??;
        drop(monitor);
        let recovery = self.with_logs(recovery)?;
        Ok(NodeLoss {
            victim,
            how,
            failing,
            route_out,
            recovery,
            after: conns.round(),
        })
    }

    /// [`EcmpLab::open_spread`] of [`LONG_LIVED`] connections, then [`EcmpLab::fail_node`]:
    /// the issue's measurement, on a lab whose three nodes run.
    pub fn node_loss(&mut self, victim: usize, how: Death) -> Result<(Spread, NodeLoss)> {
        let mut spread = self.open_spread(LONG_LIVED)?;
        let loss = self.fail_node(&mut spread.conns, victim, how)?;
        Ok((spread, loss))
    }

    /// Node `i` back after [`Death::Killed`] or [`Death::DaemonKilled`]: its BIRD (if it
    /// does not run) and its lb-daemon started, and the router's route through every node
    /// again; how long that took.
    pub fn restart_node(&mut self, i: usize) -> Result<Duration> {
        let t0 = Instant::now();
        self.start_lb(i)?;
        let all: Vec<usize> = (1..=LBS).collect();
        self.wait_next_hops(&all, Duration::from_secs(10))?;
        Ok(t0.elapsed())
    }
}

// ---------------------------------------------------------------------------------------------
// The demo: `lb-lab --scenario ecmp`
// ---------------------------------------------------------------------------------------------

/// The node the demo kills.
pub const DEMO_VICTIM: usize = 2;
/// Rounds of one new connection from each client address in the demo's traffic step.
pub const DEMO_ROUNDS: usize = 3;

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.trim_end()
        .lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn by_backend_line(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn round_line(r: &RoundReport) -> String {
    format!(
        "{} answered by their real server, {} by another, {} reset, other failures {:?}",
        r.ok, r.moved, r.resets, r.failures
    )
}

/// The ECMP demo: three active-active nodes behind the router's multipath route, traffic
/// from 64 client addresses, one node SIGKILLed (daemon and BIRD) under [`LONG_LIVED`]
/// connections, then restarted. Every measurement goes into `summary`; the first step that
/// fails ends the run with an error naming it.
pub fn ecmp_demo(xdp_mode: &str, summary: &mut Summary) -> Result<()> {
    let v = DEMO_VICTIM;
    let bound = RECOVERY_BOUND + CI_MARGIN;
    let mut lab = summary.step("ecmp 0: build the lab", |s| {
        let t0 = Instant::now();
        let lab = EcmpLab::with_params(&unique_prefix("lbe"), Timers::lab(), xdp_mode)?;
        let names: Vec<&str> = lab.namespaces().map(Netns::name).collect();
        println!("    namespaces: {}", names.join(" "));
        println!(
            "    router {ROUTER}: BIRD AS 65000 (dist/bird/router.conf), ECMP hash over the \
             5-tuple; lb1..lb3 {}..{}: BIRD AS 65001 (dist/bird/lb-node.conf); \
             {CLIENT_ADDRS} client addresses",
            lb_v4(1),
            lb_v4(LBS)
        );
        println!("    the router's three BGP sessions (BFD 3 x 100 ms) are established");
        println!("    lb1: {}", lab.lb_config(1).display());
        s.add("lab up (namespaces, nginx, four BIRDs)", secs(t0.elapsed()));
        Ok(lab)
    })?;

    summary.step(
        "ecmp 1: start lb-daemon on lb1, lb2 and lb3 ([announce])",
        |s| {
            let t0 = Instant::now();
            lab.start_all()?;
            let took = t0.elapsed();
            for i in 1..=LBS {
                ensure!(
                    lab.announced(i) == Some(true),
                    "lb{i} does not say it announces {VIP}: {:?}",
                    lab.announce_status(i)
                );
            }
            println!(
                "    every daemon attached, its checks passed, {VIP} routed to {ANNOUNCE_DEVICE} \
                 (table {ANNOUNCE_TABLE}) and announced: {}",
                secs(took)
            );
            println!("    router# ip route show {VIP}");
            println!("{}", indent(&lab.router_route()?, 8));
            s.add("1. route through lb1, lb2, lb3 after", secs(took));
            Ok(())
        },
    )?;

    summary.step(
        &format!("ecmp 2: traffic from the {CLIENT_ADDRS} client addresses"),
        |s| {
            let share = lab.traffic_share(DEMO_ROUNDS)?;
            println!(
                "    {} requests ({DEMO_ROUNDS} rounds of a new connection from each address): \
                 {} failed {:?}",
                share.requests,
                share.failed(),
                share.failures
            );
            println!("    new flows per node: {}", per_node(&share.flows));
            println!(
                "    sent there by the router's hash: {}",
                per_node(&share.routed)
            );
            println!(
                "    requests per real server: {}",
                by_backend_line(&share.by_backend)
            );
            s.add("2. new flows per node", per_node(&share.flows));
            s.add("2. requests failed", share.failed().to_string());
            ensure!(share.failed() == 0, "requests failed: {:?}", share.failures);
            ensure!(
                share.flows.iter().all(|&n| n > 0),
                "a node scheduled none: {}",
                per_node(&share.flows)
            );
            ensure!(
                share.flows == share.routed,
                "the nodes scheduled {:?}, the router sent them {:?}",
                share.flows,
                share.routed
            );
            Ok(())
        },
    )?;

    let mut spread = summary.step(
        &format!("ecmp 3: open {LONG_LIVED} long-lived connections"),
        |s| {
            let spread = lab.open_spread(LONG_LIVED)?;
            println!(
                "    through each node (the router's hash): {}; new flows per node: {}",
                per_node(&spread.through),
                per_node(&spread.flows)
            );
            println!(
                "    by real server: {}",
                by_backend_line(&spread.conns.by_backend())
            );
            println!(
                "    every node holds all {LONG_LIVED} flows (its own, and the others' through \
                 [sync])"
            );
            s.add(
                format!("3. {LONG_LIVED} long-lived connections through"),
                per_node(&spread.through),
            );
            Ok(spread)
        },
    )?;

    summary.step(
        &format!("ecmp 4: SIGKILL lb{v} (its lb-daemon and its BIRD)"),
        |s| {
            let loss = lab.fail_node(&mut spread.conns, v, Death::Killed)?;
            println!("    router# ip route show {VIP}");
            println!("{}", indent(&lab.router_route()?, 8));
            println!(
                "    lb{v} out of the router's route {} after the kill (the kill itself, SIGKILL \
                 and reaping of both processes, took {})",
                secs(loss.route_out),
                secs(loss.failing)
            );
            println!(
                "    new connections from every address succeed again {} after the kill \
                 (bound {} + margin {}; {} rounds of {CLIENT_ADDRS}, {} connections failed \
                 meanwhile {:?})",
                secs(loss.recovery.after),
                secs(RECOVERY_BOUND),
                secs(CI_MARGIN),
                loss.recovery.rounds,
                loss.recovery.failed(),
                loss.recovery.failures
            );
            println!(
                "    the {LONG_LIVED} long-lived connections: {}",
                round_line(&loss.after)
            );
            s.add(
                format!("4. lb{v} out of the route after"),
                secs(loss.route_out),
            );
            s.add(
                "4. new connections from every address after",
                format!(
                    "{} (bound {})",
                    secs(loss.recovery.after),
                    secs(RECOVERY_BOUND)
                ),
            );
            s.add(
                format!("4. long-lived connections reset (of {LONG_LIVED})"),
                loss.after.resets.to_string(),
            );
            ensure!(
                loss.after.resets == 0,
                "{} of the {LONG_LIVED} long-lived connections were reset",
                loss.after.resets
            );
            ensure!(
                loss.after
                    == RoundReport {
                        ok: LONG_LIVED,
                        ..Default::default()
                    },
                "the long-lived connections: {}",
                round_line(&loss.after)
            );
            ensure!(
                loss.route_out <= bound,
                "lb{v} left the route after {} (bound {} + margin {})",
                secs(loss.route_out),
                secs(RECOVERY_BOUND),
                secs(CI_MARGIN)
            );
            ensure!(
                loss.recovery.after <= bound,
                "new connections from every address took {} (bound {} + margin {})",
                secs(loss.recovery.after),
                secs(RECOVERY_BOUND),
                secs(CI_MARGIN)
            );
            Ok(())
        },
    )?;

    summary.step(
        &format!("ecmp 5: restart lb{v} (its BIRD, then its lb-daemon)"),
        |s| {
            let back = lab.restart_node(v)?;
            println!("    router# ip route show {VIP}");
            println!("{}", indent(&lab.router_route()?, 8));
            println!(
                "    lb{v} back in the router's route {} after the restart began (BIRD, its BGP \
                 session, the daemon, its checks)",
                secs(back)
            );
            let r = spread.conns.round();
            println!(
                "    the {LONG_LIVED} long-lived connections: {}",
                round_line(&r)
            );
            let share = lab.traffic_share(1)?;
            println!(
                "    {} new connections, {} failed; new flows per node: {}",
                share.requests,
                share.failed(),
                per_node(&share.flows)
            );
            s.add(format!("5. lb{v} back in the route after"), secs(back));
            s.add(
                format!("5. long-lived connections reset as lb{v} returned"),
                r.resets.to_string(),
            );
            s.add("5. new flows per node after", per_node(&share.flows));
            ensure!(
                r == RoundReport {
                    ok: LONG_LIVED,
                    ..Default::default()
                },
                "the long-lived connections as lb{v} returned: {}",
                round_line(&r)
            );
            ensure!(share.failed() == 0, "requests failed: {:?}", share.failures);
            ensure!(
                share.flows[v - 1] > 0,
                "lb{v} scheduled none: {}",
                per_node(&share.flows)
            );
            Ok(())
        },
    )?;
    drop(spread);
    drop(lab);
    Ok(())
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        // The daemons first (each withdraws as it stops), while BIRD and the router still
        // run; then the fields drop, each namespace stopping what runs in it.
        for n in &mut self.lbs {
            if let Some(p) = n.daemon.take() {
                if let Err(e) = p.stop(Duration::from_secs(5)) {
                    eprintln!("ecmp_lab: stopping lb-daemon in {}: {e:#}", n.ns.name());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_of_ip_json() {
        let multi = r#"[{"dst":"203.0.113.10","protocol":"bird","metric":32,"flags":[],
            "nexthops":[{"gateway":"192.0.2.13","dev":"eth0","weight":1,"flags":[]},
                        {"gateway":"192.0.2.11","dev":"eth0","weight":1,"flags":[]}]}]"#;
        assert_eq!(parse_next_hops(multi).unwrap(), [lb_v4(1), lb_v4(3)]);
        let single = r#"[{"dst":"203.0.113.10","gateway":"192.0.2.12","dev":"eth0",
            "protocol":"bird","metric":32,"flags":[]}]"#;
        assert_eq!(parse_next_hops(single).unwrap(), [lb_v4(2)]);
        assert!(parse_next_hops("[]").unwrap().is_empty());
        assert!(parse_next_hops("").unwrap().is_empty());
        assert!(parse_next_hops("[{\"gateway\":\"x\"}]").is_err());
    }

    #[test]
    fn bird_configurations_are_the_shipped_ones() {
        let r = router_bird_conf().unwrap();
        assert!(r.contains("\nlog stderr all;\n") && !r.contains("\nlog syslog all;\n"));
        assert_eq!(
            r.replace("\nlog stderr all;\n", "\nlog syslog all;\n"),
            ROUTER_BIRD_CONF
        );
        for i in 1..=LBS {
            assert!(
                r.contains(&format!("neighbor {} as 65001;", lb_v4(i))),
                "{r}"
            );
        }
        let lb2 = lb_bird_conf(2).unwrap();
        assert!(lb2.contains("router id 192.0.2.12;"), "{lb2}");
        assert!(lb2.contains("local 192.0.2.12 as 65001;"), "{lb2}");
        assert!(lb2.contains("neighbor 192.0.2.1 as 65000;"), "{lb2}");
        assert!(
            lb2.contains(&format!("kernel table {ANNOUNCE_TABLE};")),
            "{lb2}"
        );
        assert!(!lb2.contains("router id 192.0.2.11;"));
        assert_eq!(
            lb_bird_conf(1).unwrap(),
            log_to_stderr(LB_BIRD_CONF).unwrap()
        );
    }

    #[test]
    fn node_configuration() {
        let c = lb_toml(2, &Timers::lab(), "skb");
        for want in [
            "[announce]\nvips = [\"203.0.113.10\"]\ntable = 100\ndevice = \"lbvip0\"\n",
            "peers = [\"192.0.2.11\", \"192.0.2.13\"]",
            "lb_algo = \"mh\"",
            "url = [{ path = \"/health/lb2\" }]",
            SYNC_KEY_PLACEHOLDER,
        ] {
            assert!(c.contains(want), "{want} in\n{c}");
        }
        assert!(!c.contains("vrrp_instance") && !c.contains("static"), "{c}");
        assert_eq!(c.matches("[[virtual_server.real_server]]").count(), SERVERS);
        let n = rs_nginx_conf(std::path::Path::new("/x/rs1"), "rs1").unwrap();
        assert!(
            n.contains("location /health/ {\n            root /x/rs1;"),
            "{n}"
        );
        assert!(n.contains("return 200 \"rs1\\n\";"), "{n}");
    }

    /// The nodes' configurations load with the daemon's own parser.
    #[test]
    fn node_configurations_load() {
        let dir = std::env::temp_dir().join(format!("ecmp-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for i in 1..=LBS {
            let p = dir.join(format!("lb{i}.toml"));
            let text = with_sync_key(&lb_toml(i, &Timers::lab(), "skb"), &dir).unwrap();
            fs::write(&p, &text).unwrap();
            lb_daemon::config::Config::load(&p).unwrap_or_else(|e| panic!("lb{i}: {e:#}\n{text}"));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn monitor_lines() {
        let via2 = "via 192.0.2.12 ";
        let multi3 = "203.0.113.10 proto bird metric 32 \\\tnexthop via 192.0.2.11 dev eth0 \
                      weight 1 \\\tnexthop via 192.0.2.12 dev eth0 weight 1 \\\tnexthop via \
                      192.0.2.13 dev eth0 weight 1 ";
        let multi2 = multi3.replace("nexthop via 192.0.2.12 dev eth0 weight 1 \\\t", "");
        assert!(!route_line_without(multi3, via2));
        assert!(route_line_without(&multi2, via2), "{multi2}");
        assert!(route_line_without(
            "203.0.113.10 via 192.0.2.11 dev eth0 proto bird metric 32",
            via2
        ));
        assert!(!route_line_without(
            "203.0.113.10 via 192.0.2.12 dev eth0 proto bird metric 32",
            via2
        ));
        assert!(!route_line_without(&format!("Deleted {multi2}"), via2));
        assert!(!route_line_without(
            "203.0.113.254 via 192.0.2.11 dev eth0",
            via2
        ));
        assert!(route_line_without(&format!("[ROUTE]{multi2}"), via2));
        assert_eq!(per_node(&[3, 0, 7]), "lb1 3, lb2 0, lb3 7");
    }

    #[test]
    fn addresses() {
        let c = client_addrs();
        assert_eq!(c.len(), CLIENT_ADDRS);
        assert_eq!(c[0], Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(c[63], Ipv4Addr::new(198, 51, 100, 65));
        assert_eq!(node_of(Ipv4Addr::new(192, 0, 2, 12)), Some(2));
        assert_eq!(node_of(ROUTER), None);
    }
}
