//! The seed's two deployments end to end, in network namespaces, under live traffic: what
//! `cargo xtask lab` shows and what the `e2e_*` tests check.
//!
//! # "LVS + Nginx + Keepalived" ([`LvsLab`])
//!
//! ```text
//!  {p}c    eth0 192.0.2.1   client: a steady HTTP stream to the VIP (HttpStream)      ──┐
//!  {p}lb1  eth0 192.0.2.2   lb-daemon: XDP + VRRP MASTER, priority 100                ──┤
//!  {p}lb2  eth0 192.0.2.3   lb-daemon: XDP + VRRP BACKUP, priority 99                 ──┤ {p}br: br0
//!  {p}rs1  eth0 192.0.2.11  nginx :80 :443, `lb-daemon realserver start --vip VIP`   ──┤
//!  {p}rs2  eth0 192.0.2.12  ...                                                       ──┤
//!  {p}rs3  eth0 192.0.2.13  ...                                                       ──┘
//!                           VIP 192.0.2.100: on the master's eth0, on every real server's lo
//! ```
//!
//! Both LBs run `lb-daemon run` with the seed's keepalived.conf as TOML ([`lvs_toml`]): a
//! `vrrp_sync_group` with `VI_1` (VRRPv2, `auth_type PASS`, VRID 38), the VIP, and two
//! `virtual_server`s (80 and 443), DR, with a `TCP_CHECK` on each real server. Both attach
//! XDP to their own eth0; only the master's services are active (the backup's program
//! passes the VIP's traffic to its stack, which does not own the VIP and drops it), like
//! IPVS with `backup_only`. A request goes client -> master's XDP (destination MAC
//! rewritten) -> real server, and the reply straight back to the client.
//!
//! # "Nginx + Keepalived" ([`NginxHaLab`])
//!
//! ```text
//!  {p}c   eth0 192.0.2.1   client                                                  ──┐
//!  {p}n1  eth0 192.0.2.2   nginx + lb-daemon (VRRP only), BACKUP, nopreempt         ──┤ {p}br: br0
//!  {p}n2  eth0 192.0.2.3   nginx + lb-daemon (VRRP only), BACKUP, nopreempt         ──┘
//! ```
//!
//! The seed's configuration ([`nginx_ha_toml`]): VRID 77, priority 100 on both, `nopreempt`,
//! `auth_type PASS`, and `vrrp_script check_nginx` tracked by the instance. The check is the
//! seed's `check_nginx.sh` idea, "is an nginx process alive", for this node's nginx (by its
//! pid file: the namespaces share one process table, so `ps -C nginx` would count every
//! node's). The seed's script also restarts nginx through systemd and, as written, always
//! exits 0, so keepalived never moved the VIP with it; here a dead nginx fails the check, the
//! instance goes to FAULT and the VIP moves.
//!
//! # Timers
//!
//! [`Timers::lab`] scales the seed's timers down so a demo takes a minute, not ten:
//! `advert_int 1` (seed: 5), `delay_loop 1`, `connect_timeout 1`, `retry 1`,
//! `delay_before_retry 0.5` (seed: 6, 3, 3, 3), check interval 1 s (seed: 3).
//! [`Timers::seed`] is the seed's values.
//!
//! # Measuring ([`HttpStream`])
//!
//! Client threads (in the client's namespace) each open a new TCP connection to the VIP every
//! `period`, send `GET /` (HTTP/1.0) and read the reply: the body names the real server. Each
//! request is recorded with its start and end and its outcome (a backend, or refused, reset,
//! timed out...). [`PhaseReport`] summarises a time range: requests per backend, failures by
//! kind and when they started, and the **longest gap** between two consecutive successful
//! replies, which over a failover is its window as the client sees it.
//!
//! Safety: namespaces and addresses as in [`crate::netns`] (documentation ranges only, per-run
//! prefixes, nothing in the root namespace); teardown stops the daemons, undoes the real
//! servers' set-up (`lb-daemon realserver stop`), then deletes the namespaces.
use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File},
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    lab::{daemon_bin, pass_on_port, with_control_socket, NativePeer},
    netns::{fmt_mac, wait_until, Lan, Netns, PinFs, Proc, HOST_IF},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The second VIP of a NAT group (`LvsParams::nat_group`).
pub const VIP2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const HTTP: u16 = 80;
/// The seed's second virtual server (plain HTTP here: only the TCP path matters).
pub const HTTPS: u16 = 443;
/// The seed's three real servers.
pub const SERVERS: usize = 3;

/// LB or nginx node `i` (1 or 2): 192.0.2.(1+i).
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + i as u8)
}

/// Real server `i` (1-based): 192.0.2.(10+i).
pub fn rs_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// NAT (`LvsParams::nat`): the inside network's VIP, the real servers' gateway.
pub const INSIDE_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// NAT: the port the real servers listen on behind the service's port 80 (443: 8443).
pub const NAT_PORT: u16 = 8080;

/// NAT: LB `i`'s inside address, 198.51.100.(1+i).
pub fn inside_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 1 + i as u8)
}

/// NAT: real server `i` on the inside network, 198.51.100.(10+i).
pub fn nat_rs_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
}

/// The real server's port for service port `port` (NAT moves 80 to 8080, 443 to 8443).
fn rs_port(nat: bool, port: u16) -> u16 {
    match (nat, port) {
        (true, HTTP) => NAT_PORT,
        (true, _) => 8443,
        (false, p) => p,
    }
}

fn v6_inside(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

// ---------------------------------------------------------------------------------------------
// Cancellation and waiting
// ---------------------------------------------------------------------------------------------

/// Set by the lab binary on Ctrl-C: every [`wait`] of this module then fails at once, so the
/// run unwinds and its guards tear the lab down.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

fn cancelled() -> Result<()> {
    if CANCEL.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// [`wait_until`] that also gives up when [`CANCEL`] is set.
pub fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    wait_until(what, timeout, || CANCEL.load(Ordering::SeqCst) || f())?;
    cancelled()
}

/// `r`, with `logs()` appended to an error, unless the run was cancelled (then the error is
/// just "interrupted").
fn and_logs<T>(r: Result<T>, logs: impl FnOnce() -> String) -> Result<T> {
    match r {
        Err(e) if !CANCEL.load(Ordering::SeqCst) => Err(anyhow!("{e:#}\n{}", logs())),
        r => r,
    }
}

/// Checks that `f` holds for all of `window` (for what must not happen), polling.
pub fn holds_for(what: &str, window: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let end = Instant::now() + window;
    while Instant::now() < end {
        cancelled()?;
        ensure!(f(), "{what}: violated");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// VRRP and health-check timers of both scenarios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timers {
    /// VRRPv2 `advert_int`, whole seconds.
    pub advert_int: u32,
    /// `TCP_CHECK`: `delay_loop`, `connect_timeout`, `retry`, `delay_before_retry`.
    pub delay_loop: f64,
    pub connect_timeout: f64,
    pub retry: u32,
    pub delay_before_retry: f64,
    /// `vrrp_script check_nginx` interval.
    pub script_interval: f64,
}

impl Timers {
    /// The seed's timers scaled down (see the module doc).
    pub fn lab() -> Self {
        Timers {
            advert_int: 1,
            delay_loop: 1.0,
            connect_timeout: 1.0,
            retry: 1,
            delay_before_retry: 0.5,
            script_interval: 1.0,
        }
    }

    /// The seed's own: `advert_int 5`, `delay_loop 6`, `connect_timeout 3`,
    /// `nb_get_retry 3`, `delay_before_retry 3`, check interval 3.
    pub fn seed() -> Self {
        Timers {
            advert_int: 5,
            delay_loop: 6.0,
            connect_timeout: 3.0,
            retry: 3,
            delay_before_retry: 3.0,
            script_interval: 3.0,
        }
    }

    /// keepalived's worst case for noticing a real server that refuses connections:
    /// `delay_loop + retry * delay_before_retry` (as in `cargo xtask bench daemon`).
    pub fn detection_refused(&self) -> Duration {
        Duration::from_secs_f64(self.delay_loop + f64::from(self.retry) * self.delay_before_retry)
    }

    /// VRRPv2 Master_Down_Interval of a backup with `priority`: `3 * advert_int + (256 -
    /// priority) / 256` s.
    pub fn master_down(&self, priority: u8) -> Duration {
        Duration::from_secs(3 * u64::from(self.advert_int))
            + Duration::from_secs_f64(f64::from(256 - u32::from(priority)) / 256.0)
    }

    /// Skew_Time of a backup with `priority` (after a priority-0 advert).
    pub fn skew(&self, priority: u8) -> Duration {
        Duration::from_secs_f64(f64::from(256 - u32::from(priority)) / 256.0)
    }
}

/// The LVS scenario's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LvsParams {
    /// `rr`, `wrr` (weights 1, 2, 3), `sh` or `mh`.
    pub sched: String,
    /// `skb` or `native`.
    pub xdp_mode: String,
    /// The seed's `state MASTER` on lb1 with preemption; false: both `state BACKUP` with
    /// `nopreempt`.
    pub preempt: bool,
    /// `hash_port = true` (sh/mh only: IPVS's sh-port/mh-port).
    pub hash_port: bool,
    pub timers: Timers,
    /// Connection sync between the LBs (`[sync]`): none, unicast to the other LB, or IPVS's
    /// multicast group.
    pub sync: Option<SyncMode>,
    /// The LBs pin their dataplane on a bpf filesystem that outlives them (a [`PinFs`]), as
    /// on a host where systemd mounts /sys/fs/bpf: a killed daemon's program keeps
    /// forwarding, and the next run takes it over. Without it each daemon's pins live in its
    /// own mount namespace (`ip netns exec` gives it one) and die with it.
    pub pins: bool,
    /// Set by the lab when `pins`: `[dataplane] pin_root`.
    pub pin_root: Option<PathBuf>,
    /// keepalived's usual NAT deployment instead of the seed's DR one: the real servers on
    /// an inside network (198.51.100.0/24, nginx on 8080 and 8443 behind the services' 80
    /// and 443), their gateway the inside VIP of a second vrrp_instance (eth1), in one sync
    /// group with the outside one.
    pub nat: bool,
    /// With `nat`: one service for the VIP's ports 80 and 443 and [`VIP2`]'s port 80 (a
    /// `virtual_server_group`, persistent), its real servers without a port (each packet
    /// keeps its own: nginx listens on 80 and 443 too); VI_1 holds both VIPs.
    pub nat_group: bool,
}

/// How the LBs of the lab sync their flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Unicast,
    Multicast,
}

/// Stands for the sync key's path in a generated configuration (each LB has its own copy).
pub const SYNC_KEY_PLACEHOLDER: &str = "@SYNC_KEY@";

impl LvsParams {
    pub fn new(sched: &str, xdp_mode: &str) -> Self {
        LvsParams {
            sched: sched.into(),
            xdp_mode: xdp_mode.into(),
            preempt: true,
            hash_port: false,
            timers: Timers::lab(),
            sync: None,
            pins: false,
            pin_root: None,
            nat: false,
            nat_group: false,
        }
    }

    pub fn weights(&self) -> [u32; SERVERS] {
        if self.sched == "wrr" {
            [1, 2, 3]
        } else {
            [1, 1, 1]
        }
    }

    pub fn priority(&self, node: usize) -> u8 {
        if node == 1 {
            100
        } else {
            99
        }
    }
}

/// lb`node`'s TOML: the seed's "LVS + Nginx + Keepalived" keepalived.conf (the MASTER's, and
/// for lb2 the BACKUP's: `state BACKUP`, `priority 99`), with the lab's addresses and timers.
pub fn lvs_toml(p: &LvsParams, node: usize) -> String {
    let t = &p.timers;
    let priority = p.priority(node);
    let state = if node == 1 && p.preempt {
        "MASTER"
    } else {
        "BACKUP"
    };
    let nopreempt = if p.preempt { "" } else { "nopreempt = true\n" };
    let mut c = format!(
        r#"# The seed's "LVS + Nginx + Keepalived", node lb{node} (generated by the e2e lab).
[global_defs]
router_id = "LVS_{node}"

[dataplane]
interface = "{HOST_IF}"
xdp_mode = "{xdp}"
max_flows = 65536
{pin_root}{inside}
[[vrrp_sync_group]]
name = "VSG_1"
group = ["VI_1"{vi_2}]

[[vrrp_instance]]
name = "VI_1"
state = "{state}"
interface = "{HOST_IF}"
virtual_router_id = 38
priority = {priority}
advert_int = {adv}
{nopreempt}authentication = {{ auth_type = "PASS", auth_pass = "123456" }}
virtual_ipaddress = ["{VIP}"{vip2}]
{inside_instance}"#,
        vip2 = if p.nat_group {
            format!(", \"{VIP2}\"")
        } else {
            String::new()
        },
        inside = if p.nat {
            "inside_interfaces = [\"eth1\"]\n"
        } else {
            ""
        },
        vi_2 = if p.nat { ", \"VI_2\"" } else { "" },
        inside_instance = if p.nat {
            format!(
                "\n[[vrrp_instance]]\nname = \"VI_2\"\nstate = \"{state}\"\ninterface = \"eth1\"\n\
                 virtual_router_id = 39\npriority = {priority}\nadvert_int = {adv}\n{nopreempt}\
                 virtual_ipaddress = [\"{INSIDE_VIP}\"]\n",
                adv = t.advert_int
            )
        } else {
            String::new()
        },
        xdp = p.xdp_mode,
        adv = t.advert_int,
        pin_root = p
            .pin_root
            .as_ref()
            .map(|r| format!("pin_root = \"{}\"\n", r.display()))
            .unwrap_or_default(),
    );
    let hash_port = if p.hash_port && matches!(p.sched.as_str(), "sh" | "mh") {
        "hash_port = true\n"
    } else {
        ""
    };
    if let Some(mode) = p.sync {
        let peer = node_v4(3 - node);
        let group = match mode {
            SyncMode::Unicast => String::new(),
            SyncMode::Multicast => "multicast_group = \"224.0.0.81\"\n".into(),
        };
        c += &format!(
            "\n[sync]\ninterface = \"{HOST_IF}\"\nvrrp_instance = \"VI_1\"\npeers = [\"{peer}\"]\n\
             {group}key_file = \"{SYNC_KEY_PLACEHOLDER}\"\n"
        );
    }
    let kind = if p.nat { "NAT" } else { "DR" };
    if p.nat_group {
        c += &format!(
            "\n[[virtual_server]]\nvirtual_server_group = [\"{VIP} {HTTP}\", \"{VIP} {HTTPS}\", \
             \"{VIP2} {HTTP}\"]\nprotocol = \"TCP\"\nlb_algo = \"{}\"\nlb_kind = \"NAT\"\n\
             persistence_timeout = 300\ndelay_loop = {}\n{hash_port}",
            p.sched, t.delay_loop
        );
        for (i, w) in (1..=SERVERS).zip(p.weights()) {
            c += &format!(
                "\n  [[virtual_server.real_server]]\n  ip = \"{}\"\n  port = 0\n  weight = {w}\n  \
                 TCP_CHECK = {{ connect_port = {NAT_PORT}, connect_timeout = {}, retry = {}, \
                 delay_before_retry = {} }}\n",
                nat_rs_v4(i),
                t.connect_timeout,
                t.retry,
                t.delay_before_retry
            );
        }
        return c;
    }
    for port in [HTTP, HTTPS] {
        c += &format!(
            "\n[[virtual_server]]\nip = \"{VIP}\"\nport = {port}\nprotocol = \"TCP\"\n\
             lb_algo = \"{}\"\nlb_kind = \"{kind}\"\ndelay_loop = {}\n{hash_port}",
            p.sched, t.delay_loop
        );
        let rport = rs_port(p.nat, port);
        for (i, w) in (1..=SERVERS).zip(p.weights()) {
            c += &format!(
                "\n  [[virtual_server.real_server]]\n  ip = \"{}\"\n  port = {rport}\n  weight = {w}\n  \
                 TCP_CHECK = {{ connect_timeout = {}, retry = {}, delay_before_retry = {} }}\n",
                if p.nat { nat_rs_v4(i) } else { rs_v4(i) },
                t.connect_timeout,
                t.retry,
                t.delay_before_retry
            );
        }
    }
    c
}

/// Node `node`'s TOML for the seed's "Nginx + Keepalived": VRRP only (no `[dataplane]`).
pub fn nginx_ha_toml(t: &Timers, check_script: &Path) -> String {
    format!(
        r#"# The seed's "Nginx + Keepalived" (generated by the e2e lab).
[global_defs]
router_id = "NGINX_HA"

[[vrrp_script]]
name = "check_nginx"
script = "{script}"
interval = {interval}

[[vrrp_instance]]
name = "VI_1"
state = "BACKUP"
interface = "{HOST_IF}"
virtual_router_id = 77
priority = 100
advert_int = {adv}
nopreempt = true
authentication = {{ auth_type = "PASS", auth_pass = "123456" }}
virtual_ipaddress = ["{VIP}"]
track_script = ["check_nginx"]
"#,
        script = check_script.display(),
        interval = t.script_interval,
        adv = t.advert_int,
    )
}

/// The check script of an nginx node (see the module doc).
pub fn check_nginx_script(pid_file: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # check_nginx.sh: is this node's nginx alive? (The seed counts `ps -C nginx`; the lab's\n\
         # namespaces share one process table, so the node's own pid file is read instead.)\n\
         pid=$(cat {} 2>/dev/null) || exit 1\n\
         [ -n \"$pid\" ] && [ \"$(cat /proc/$pid/comm 2>/dev/null)\" = nginx ]\n",
        pid_file.display()
    )
}

/// nginx.conf of a real server or nginx node: answers `{body}\n` on `ports`, keeps idle
/// keep-alive connections for 10 minutes (the long-lived connections of the failover test).
pub fn nginx_conf(dir: &Path, body: &str, ports: &[u16]) -> String {
    let d = dir.display();
    let listen: String = ports
        .iter()
        .map(|p| format!("        listen {p} default_server;\n"))
        .collect();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
{listen}        location / {{
            default_type text/plain;
            return 200 "{body}\n";
        }}
    }}
}}
"#
    )
}

/// nginx in `ns` with the nginx.conf of its directory (written beforehand).
pub fn start_nginx(ns: &Netns) -> Result<Proc> {
    let dir = ns.dir().to_string_lossy().into_owned();
    ns.spawn(&[
        "nginx",
        "-p",
        &dir,
        "-e",
        &format!("{dir}/error.log"),
        "-c",
        &format!("{dir}/nginx.conf"),
    ])
}

/// Waits until `proc`, nginx in `ns`, answers `body` at `target` (an error if it exits).
pub fn wait_nginx(ns: &Netns, proc: &Proc, target: SocketAddr, body: &str) -> Result<()> {
    let mut exited = false;
    let r = wait(
        &format!("nginx in {} to answer", ns.name()),
        Duration::from_secs(10),
        || {
            exited = !proc.is_running();
            exited
                || ns
                    .run_in(|| http_get(target, Duration::from_secs(1)))
                    .is_ok_and(|r| r.as_deref() == Ok(body))
        },
    );
    let log = || fs::read_to_string(ns.dir().join("error.log")).unwrap_or_default();
    if exited {
        bail!(
            "nginx in {} exited: {}{}",
            ns.name(),
            proc.read_stderr(),
            log()
        );
    }
    and_logs(r, log)
}

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// RST to the SYN (ECONNREFUSED): nobody listens where the packet went.
    Refused,
    /// RST on an established connection (ECONNRESET).
    Reset,
    /// No answer in time.
    Timeout,
    /// EHOSTUNREACH/ENETUNREACH (ARP failed).
    Unreachable,
    /// The peer closed before a whole response.
    Closed,
    /// A response that is not a 200.
    Http(String),
    Other(String),
}

impl Failure {
    pub fn from_io(e: &io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Failure::Unreachable
            }
            _ => match e.raw_os_error() {
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => Failure::Unreachable,
                _ => Failure::Other(e.to_string()),
            },
        }
    }

    /// A short name for counts.
    pub fn kind(&self) -> &str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Closed => "closed",
            Failure::Http(_) => "http",
            Failure::Other(_) => "other",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Http(s) | Failure::Other(s) => write!(f, "{}: {s}", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

/// A request that closes its connection after the answer.
pub const REQUEST_CLOSE: &[u8] = b"GET / HTTP/1.0\r\nHost: lab\r\nUser-Agent: lb-e2e\r\n\r\n";
/// A request that keeps its connection open.
pub const REQUEST_KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: lab\r\nUser-Agent: lb-e2e\r\n\r\n";

/// Parses a whole HTTP response: the body (trimmed) of a 200, else the failure. `None` while
/// it is incomplete: headers not finished, or fewer body bytes than `Content-Length` (a
/// response without one ends with the connection, `at_eof`).
pub fn parse_response(buf: &[u8], at_eof: bool) -> Option<Result<String, Failure>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return at_eof.then(|| {
            Err(if buf.is_empty() {
                Failure::Closed
            } else {
                Failure::Http("truncated headers".into())
            })
        });
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default().to_string();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let body = match length {
        Some(n) if body.len() >= n => &body[..n],
        Some(_) if !at_eof => return None,
        Some(_) => return Some(Err(Failure::Closed)),
        None if !at_eof => return None,
        None => body,
    };
    if status.split_whitespace().nth(1) != Some("200") {
        return Some(Err(Failure::Http(status)));
    }
    Some(Ok(String::from_utf8_lossy(body).trim().to_string()))
}

fn read_response(s: &mut TcpStream, deadline: Instant) -> Result<String, Failure> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| Failure::from_io(&e))?;
        match s.read(&mut chunk) {
            Ok(0) => return parse_response(&buf, true).unwrap_or(Err(Failure::Closed)),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(r) = parse_response(&buf, false) {
                    return r;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::from_io(&e)),
        }
    }
}

/// Sends `request` on `s` and reads the whole response, all within `timeout`: the real
/// server's answer, or why there is none.
pub fn exchange(s: &mut TcpStream, request: &[u8], timeout: Duration) -> Result<String, Failure> {
    let deadline = Instant::now() + timeout;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| Failure::from_io(&e))?;
    s.write_all(request).map_err(|e| Failure::from_io(&e))?;
    read_response(s, deadline)
}

/// One HTTP/1.0 request on a new connection (from the calling thread's namespace).
pub fn http_get(target: SocketAddr, timeout: Duration) -> Result<String, Failure> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, timeout).map_err(|e| Failure::from_io(&e))?;
    exchange(
        &mut s,
        REQUEST_CLOSE,
        timeout.saturating_sub(started.elapsed()),
    )
}

/// Runs `f` on a new thread in `ns`'s network namespace (sockets it opens live there).
fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<Option<T>>> {
    let path = ns.path();
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let _ = tx.send(Err(io::Error::last_os_error()));
                return None;
            }
            drop(file);
            let _ = tx.send(Ok(()));
            Some(f())
        })?;
    rx.recv()
        .map_err(|_| anyhow!("thread {name} died"))?
        .with_context(|| format!("setns into {}", path.display()))?;
    Ok(handle)
}

// ---------------------------------------------------------------------------------------------
// The request stream
// ---------------------------------------------------------------------------------------------

/// One request of an [`HttpStream`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub start: Instant,
    pub end: Instant,
    /// The real server that answered, or why it failed.
    pub outcome: Result<String, Failure>,
}

/// A steady stream of HTTP requests from the client to a target, each on a new connection
/// (see the module doc). Stops on drop.
pub struct HttpStream {
    target: SocketAddr,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<Option<()>>>,
    pub period: Duration,
    pub workers: usize,
}

impl HttpStream {
    /// `workers` threads, each starting a request every `period` (absolute schedule, spread
    /// over the period), each request with `timeout` for connect + response.
    pub fn start(
        client: &Netns,
        target: SocketAddr,
        workers: usize,
        period: Duration,
        timeout: Duration,
    ) -> Result<HttpStream> {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for w in 0..workers {
            let (stop, samples) = (stop.clone(), samples.clone());
            let offset = period * w as u32 / workers as u32;
            threads.push(spawn_in(client, &format!("http-stream-{w}"), move || {
                let mut next = Instant::now() + offset;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let start = Instant::now();
                    let outcome = http_get(target, timeout);
                    let end = Instant::now();
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Sample {
                            start,
                            end,
                            outcome,
                        });
                    next += period;
                    if end > next + period * 10 {
                        // Far behind (a long timeout): no burst to catch up.
                        next = end;
                    }
                }
            })?);
        }
        Ok(HttpStream {
            target,
            stop,
            samples,
            threads,
            period,
            workers,
        })
    }

    /// The lab's usual stream: 2 workers, a request every 10 ms each (200/s), 1 s timeout.
    pub fn steady(client: &Netns, target: SocketAddr) -> Result<HttpStream> {
        Self::start(
            client,
            target,
            2,
            Duration::from_millis(10),
            Duration::from_secs(1),
        )
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Every request finished so far, in order of completion.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Successful requests that started after `t`.
    pub fn successes_after(&self, t: Instant) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.start > t && s.outcome.is_ok())
            .count()
    }

    /// Waits until `n` requests started after `t` have succeeded.
    pub fn wait_successes(&self, t: Instant, n: usize, timeout: Duration) -> Result<()> {
        wait(
            &format!("{n} successful requests to {}", self.target),
            timeout,
            || self.successes_after(t) >= n,
        )
    }

    /// The report of the requests that started in `from..to`.
    pub fn phase(&self, from: Instant, to: Instant) -> PhaseReport {
        PhaseReport::new(&self.samples(), from, to)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops the workers (each finishes its current request) and returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.halt();
        self.samples()
    }
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the requests that started in a time range did.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub from: Instant,
    pub to: Instant,
    pub requests: usize,
    pub ok: usize,
    /// Successful requests per real server.
    pub by_backend: BTreeMap<String, usize>,
    /// Failed requests per [`Failure::kind`].
    pub failures: BTreeMap<String, usize>,
    /// Start times of the failed requests, in order.
    pub failure_starts: Vec<Instant>,
    /// The longest interval between two consecutive successful replies (by the time each
    /// reply arrived), within the range.
    pub longest_gap: Duration,
    /// Where that gap started (the reply before it).
    pub gap_start: Option<Instant>,
}

impl PhaseReport {
    pub fn new(samples: &[Sample], from: Instant, to: Instant) -> Self {
        let mut in_range: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.start >= from && s.start < to)
            .collect();
        in_range.sort_by_key(|s| s.start);
        let mut by_backend = BTreeMap::new();
        let mut failures = BTreeMap::new();
        let mut failure_starts = Vec::new();
        let mut ok_ends = Vec::new();
        for s in &in_range {
            match &s.outcome {
                Ok(b) => {
                    *by_backend.entry(b.clone()).or_insert(0) += 1;
                    ok_ends.push(s.end);
                }
                Err(f) => {
                    *failures.entry(f.kind().to_string()).or_insert(0) += 1;
                    failure_starts.push(s.start);
                }
            }
        }
        ok_ends.sort();
        let (longest_gap, gap_start) = ok_ends
            .windows(2)
            .map(|w| (w[1] - w[0], Some(w[0])))
            .max_by_key(|(d, _)| *d)
            .unwrap_or((Duration::ZERO, None));
        PhaseReport {
            from,
            to,
            requests: in_range.len(),
            ok: ok_ends.len(),
            by_backend,
            failures,
            failure_starts,
            longest_gap,
            gap_start,
        }
    }

    pub fn failed(&self) -> usize {
        self.requests - self.ok
    }

    /// The last failed request's start, as an offset from `t`.
    pub fn last_failure_after(&self, t: Instant) -> Option<Duration> {
        self.failure_starts
            .last()
            .map(|f| f.saturating_duration_since(t))
    }

    /// The first failed request's start, as an offset from `t` (negative ones are zero).
    pub fn first_failure_after(&self, t: Instant) -> Option<Duration> {
        self.failure_starts
            .first()
            .map(|f| f.saturating_duration_since(t))
    }

    /// Failed requests that started later than `bound` after `t`.
    pub fn failures_later_than(&self, t: Instant, bound: Duration) -> usize {
        self.failure_starts
            .iter()
            .filter(|f| **f > t + bound)
            .count()
    }

    /// `rs1: 100  rs2: 98 ...`.
    pub fn backends_line(&self) -> String {
        if self.by_backend.is_empty() {
            return "none".into();
        }
        self.by_backend
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("  ")
    }

    /// `12 (refused 10, timeout 2)` or `0`.
    pub fn failures_line(&self) -> String {
        if self.failures.is_empty() {
            return "0".into();
        }
        format!(
            "{} ({})",
            self.failed(),
            self.failures
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Long-lived connections
// ---------------------------------------------------------------------------------------------

/// Keep-alive HTTP/1.1 connections opened from the client, each remembering which real
/// server answered its first request.
pub struct LongLived {
    conns: Vec<(TcpStream, String)>,
}

/// What the connections did on one round of requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    pub ok: usize,
    /// Answered by another real server than the first time (a new connection would have been
    /// needed: cannot happen on one TCP connection, so it would be a bug of this code).
    pub moved: usize,
    /// Resets (a real server that did not know the connection answered with RST).
    pub resets: usize,
    /// Other failures, by kind.
    pub failures: BTreeMap<String, usize>,
}

impl LongLived {
    /// Opens `n` connections to `target` from `client` and sends one request on each.
    pub fn open(client: &Netns, target: SocketAddr, n: usize) -> Result<LongLived> {
        Self::open_from(client, target, &vec![None; n])
    }

    /// [`LongLived::open`], one connection per entry of `sources`, each from that address
    /// (bound before the connect; `None`: the kernel's choice; an address may repeat).
    pub fn open_from(
        client: &Netns,
        target: SocketAddr,
        sources: &[Option<std::net::IpAddr>],
    ) -> Result<LongLived> {
        let sources = sources.to_vec();
        let streams = client.run_in(move || -> Result<Vec<TcpStream>> {
            sources
                .iter()
                .enumerate()
                .map(|(i, src)| {
                    connect_from(*src, target, Duration::from_secs(2))
                        .with_context(|| format!("connection {i} from {src:?} to {target}"))
                })
                .collect()
        })??;
        let mut conns = Vec::with_capacity(streams.len());
        for (i, mut s) in streams.into_iter().enumerate() {
            let backend =
                request_on(&mut s).map_err(|f| anyhow!("first request on connection {i}: {f}"))?;
            conns.push((s, backend));
        }
        Ok(LongLived { conns })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connections' own (client) addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.conns
            .iter()
            .filter_map(|(s, _)| s.local_addr().ok())
            .collect()
    }

    /// Connections per real server.
    pub fn by_backend(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (_, b) in &self.conns {
            *m.entry(b.clone()).or_insert(0) += 1;
        }
        m
    }

    /// One more request on every connection.
    pub fn round(&mut self) -> RoundReport {
        let mut r = RoundReport::default();
        for (s, backend) in &mut self.conns {
            match request_on(s) {
                Ok(b) if b == *backend => r.ok += 1,
                Ok(_) => r.moved += 1,
                Err(Failure::Reset) => r.resets += 1,
                Err(f) => *r.failures.entry(f.kind().to_string()).or_insert(0) += 1,
            }
        }
        r
    }
}

/// A TCP connection to `target` from `src` (bound before the connect; `None`: the kernel's
/// choice), from the calling thread's namespace.
pub fn connect_from(
    src: Option<std::net::IpAddr>,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let Some(src) = src else {
        return TcpStream::connect_timeout(&target, timeout);
    };
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    s.connect_timeout(&SockAddr::from(target), timeout)?;
    Ok(s.into())
}

fn request_on(s: &mut TcpStream) -> Result<String, Failure> {
    exchange(s, REQUEST_KEEP_ALIVE, Duration::from_secs(3))
}

// ---------------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------------

/// A node's `lb-daemon run`: its namespace, configuration and successive runs.
struct Daemon {
    cfg: PathBuf,
    proc: Option<Proc>,
    /// Log lines of the finished runs, in order.
    logs: Vec<PathBuf>,
}

impl Daemon {
    fn new(ns: &Netns, config: &str) -> Result<Daemon> {
        let cfg = ns.dir().join("lb.toml");
        let d = Daemon {
            cfg,
            proc: None,
            logs: Vec::new(),
        };
        d.write_config(ns, config)?;
        Ok(d)
    }

    /// Writes `config` as this daemon's file, with its control socket and, for a `[sync]`
    /// section, its copy of the lab's sync key (root-only, as the daemon wants it).
    fn write_config(&self, ns: &Netns, config: &str) -> Result<()> {
        let mut text = with_control_socket(config, ns.dir());
        if text.contains(SYNC_KEY_PLACEHOLDER) {
            use std::os::unix::fs::PermissionsExt;
            let key = ns.dir().join("sync.key");
            fs::write(&key, b"the lab's shared sync key, 32 b.")?;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
            text = text.replace(SYNC_KEY_PLACEHOLDER, &key.to_string_lossy());
        }
        fs::write(&self.cfg, text)?;
        Ok(())
    }

    fn socket(ns: &Netns) -> PathBuf {
        ns.dir().join("ctl.sock")
    }

    /// Starts a run and waits until `ready` holds for its log.
    fn start(&mut self, ns: &Netns, ready: impl Fn(&str) -> bool) -> Result<()> {
        self.start_bin(ns, &daemon_bin()?, ready)
    }

    /// [`Daemon::start`] of the binary `bin` (another build).
    fn start_bin(&mut self, ns: &Netns, bin: &Path, ready: impl Fn(&str) -> bool) -> Result<()> {
        ensure!(!self.is_running(), "{}: lb-daemon already runs", ns.name());
        let p = ns.spawn(&[
            bin.to_str().context("daemon path")?,
            "run",
            "--config",
            self.cfg.to_str().context("config path")?,
        ])?;
        self.logs
            .push(p.stderr_path().context("daemon log")?.to_path_buf());
        self.proc = Some(p.clone());
        let mut exited = false;
        let r = wait(
            &format!("lb-daemon in {} to start", ns.name()),
            Duration::from_secs(30),
            || {
                exited = !p.is_running();
                exited || ready(&p.read_stderr())
            },
        );
        if exited {
            bail!("lb-daemon in {} exited:\n{}", ns.name(), p.read_stderr());
        }
        and_logs(r, || p.read_stderr())
    }

    fn is_running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }

    fn kill(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            p.kill()?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            p.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Every run's log.
    fn log(&self) -> String {
        self.logs
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }
}

/// The clients of the flows in the table of the daemon whose control socket is `socket`
/// (`lb-daemon connections`), each flow once; none when it does not answer.
pub fn flow_clients_at(socket: &Path) -> Vec<SocketAddr> {
    let Ok(bin) = daemon_bin() else {
        return Vec::new();
    };
    let out = std::process::Command::new(bin)
        .args(["connections", "--json", "--limit", "100000", "--socket"])
        .arg(socket)
        .output();
    let Some(v) = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
    else {
        return Vec::new();
    };
    v["connections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["client"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `lb-daemon status --json` through the daemon's control socket in `ns`.
pub fn status_json(ns: &Netns) -> Result<serde_json::Value> {
    let out = std::process::Command::new(daemon_bin()?)
        .args(["status", "--json", "--socket"])
        .arg(Daemon::socket(ns))
        .output()?;
    ensure!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `lb-daemon status` (the ipvsadm-like table) of the daemon in `ns`.
pub fn status_text(ns: &Netns) -> Result<String> {
    let out = std::process::Command::new(daemon_bin()?)
        .args(["status", "--socket"])
        .arg(Daemon::socket(ns))
        .output()?;
    ensure!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// VI_1's state in `status --json`, if the daemon answers.
fn vrrp_state(ns: &Netns) -> Option<String> {
    let s = status_json(ns).ok()?;
    s["vrrp"].as_array()?.iter().find(|i| i["name"] == "VI_1")?["state"]
        .as_str()
        .map(str::to_string)
}

fn has_vip(ns: &Netns) -> bool {
    ns.ip(&["-4", "addr", "show", "dev", HOST_IF])
        .is_ok_and(|o| o.contains(&format!(" {VIP}/")))
}

/// A root-owned directory under /run for scripts (script security refuses /tmp), removed on
/// drop.
struct ScriptDir(PathBuf);

impl ScriptDir {
    fn new(prefix: &str) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!("/run/{prefix}scripts"));
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(ScriptDir(dir))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The LVS lab
// ---------------------------------------------------------------------------------------------

struct LbNode {
    ns: Netns,
    daemon: Daemon,
}

struct RealServer {
    ns: Netns,
    nginx: Option<Proc>,
    /// `lb-daemon realserver start` ran.
    set_up: bool,
}

/// The seed's LVS deployment (see the module doc). Drop stops the daemons, undoes the real
/// servers' set-up, then deletes every namespace.
pub struct LvsLab {
    prefix: String,
    params: LvsParams,
    // Field order is drop order (after Drop::drop): XDP helpers, hosts, the bridge last.
    native: Vec<NativePeer>,
    lbs: Vec<LbNode>,
    /// The LBs' bpf filesystem (`params.pins`): after them, so that their pins go last.
    pin_fs: Option<PinFs>,
    servers: Vec<RealServer>,
    client: Netns,
    lan: Lan,
    /// NAT: the inside network (the real servers', and the LBs' eth1).
    inside: Option<Lan>,
    /// What `realserver start` printed on rs1.
    pub realserver_output: String,
}

impl fmt::Debug for LvsLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LvsLab({}, {:?})", self.prefix, self.params)
    }
}

impl LvsLab {
    /// Builds the namespaces, sets the real servers up (`lb-daemon realserver start`) and
    /// starts their nginx; the LBs are not started (see [`LvsLab::start_pair`]).
    pub fn new(prefix: &str, params: LvsParams) -> Result<LvsLab> {
        ensure!(
            ["rr", "wrr", "sh", "mh"].contains(&params.sched.as_str()),
            "scheduler {}",
            params.sched
        );
        ensure!(
            ["skb", "native"].contains(&params.xdp_mode.as_str()),
            "XDP mode {}",
            params.xdp_mode
        );
        let lan = Lan::new(prefix)?;
        let client = lan.host("c", 1, CLIENT, v6(1))?;
        let mut params = params;
        let pin_fs = if params.pins {
            let fs = PinFs::new(&std::env::temp_dir().join(format!("lbtest-{prefix}bpffs")))?;
            params.pin_root = Some(fs.dir().to_path_buf());
            Some(fs)
        } else {
            None
        };
        let mut lab = LvsLab {
            prefix: prefix.to_string(),
            params: params.clone(),
            native: Vec::new(),
            lbs: Vec::new(),
            pin_fs,
            servers: Vec::new(),
            client,
            lan,
            inside: if params.nat {
                Some(Lan::new(&format!("{prefix}i"))?)
            } else {
                None
            },
            realserver_output: String::new(),
        };
        for i in 1..=2 {
            let ns = lab
                .lan
                .host(&format!("lb{i}"), 1 + i as u8, node_v4(i), v6(1 + i as u16))?;
            if let Some(inside) = &lab.inside {
                inside.join(
                    &ns,
                    &format!("lb{i}"),
                    "eth1",
                    1 + i as u8,
                    inside_v4(i),
                    v6_inside(1 + i as u16),
                )?;
                // NAT forwards: the program's FIB lookups need it, and so does the stack for
                // what the program passes it (a real server not resolved yet).
                ns.sysctls(&[
                    ("net.ipv4.conf.all.forwarding", "1"),
                    ("net.ipv6.conf.all.forwarding", "1"),
                ])?;
            }
            if let Some(fs) = &lab.pin_fs {
                ns.use_pin_fs(fs);
            }
            let daemon = Daemon::new(&ns, &lvs_toml(&params, i))?;
            lab.lbs.push(LbNode { ns, daemon });
        }
        let bin = daemon_bin()?;
        let bin = bin.to_str().context("daemon path")?;
        for i in 1..=SERVERS {
            let ns = match &lab.inside {
                // NAT: nothing to set up but the route (keepalived's deployment).
                Some(inside) => {
                    let ns = inside.host(
                        &format!("rs{i}"),
                        10 + i as u8,
                        nat_rs_v4(i),
                        v6_inside(0x10 + i as u16),
                    )?;
                    ns.ip(&["route", "add", "default", "via", &INSIDE_VIP.to_string()])?;
                    ns
                }
                None => {
                    let ns = lab.lan.host(
                        &format!("rs{i}"),
                        10 + i as u8,
                        rs_v4(i),
                        v6(0x10 + i as u16),
                    )?;
                    let out = ns.exec(&[bin, "realserver", "start", "--vip", &VIP.to_string()])?;
                    if i == 1 {
                        lab.realserver_output = out;
                    }
                    ns
                }
            };
            let mut ports = vec![rs_port(params.nat, HTTP), rs_port(params.nat, HTTPS)];
            if params.nat_group {
                ports.extend([HTTP, HTTPS]);
            }
            fs::write(
                ns.dir().join("nginx.conf"),
                nginx_conf(ns.dir(), &format!("rs{i}"), &ports),
            )?;
            let nginx = start_nginx(&ns)?;
            lab.servers.push(RealServer {
                ns,
                nginx: Some(nginx),
                set_up: !params.nat,
            });
        }
        for i in 1..=SERVERS {
            let s = &lab.servers[i - 1];
            wait_nginx(
                &s.ns,
                s.nginx.as_ref().expect("started"),
                lab.rs_addr(i),
                &format!("rs{i}"),
            )?;
        }
        if params.xdp_mode == "native" {
            for ns in lab.hosts() {
                ns.exec(&["ethtool", "-K", HOST_IF, "tx", "off"])?;
            }
            for i in 1..=2 {
                let peer = pass_on_port(lab.lan.bridge(), &format!("to-lb{i}"))?;
                lab.native.push(peer);
            }
        }
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn params(&self) -> &LvsParams {
        &self.params
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn bridge(&self) -> &Netns {
        self.lan.bridge()
    }

    /// LB `i` (1 or 2).
    pub fn lb(&self, i: usize) -> &Netns {
        &self.lbs[i - 1].ns
    }

    /// Real server `i` (1-based).
    pub fn rs(&self, i: usize) -> &Netns {
        &self.servers[i - 1].ns
    }

    /// LB `i`'s configuration file.
    pub fn lb_config(&self, i: usize) -> &Path {
        &self.lbs[i - 1].daemon.cfg
    }

    /// Client, LBs, real servers.
    pub fn hosts(&self) -> impl Iterator<Item = &Netns> {
        std::iter::once(&self.client)
            .chain(self.lbs.iter().map(|l| &l.ns))
            .chain(self.servers.iter().map(|s| &s.ns))
    }

    /// Every namespace, the bridge's last.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.hosts()
            .chain([self.lan.bridge()])
            .chain(self.inside.as_ref().map(Lan::bridge))
    }

    /// Real server `i`'s address and port behind the service's port 80.
    pub fn rs_addr(&self, i: usize) -> SocketAddr {
        if self.params.nat {
            SocketAddr::from((nat_rs_v4(i), NAT_PORT))
        } else {
            SocketAddr::from((rs_v4(i), HTTP))
        }
    }

    /// The VIP's port 80.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::from((VIP, HTTP))
    }

    /// Starts LB `i`'s daemon; returns once its program is attached, its real servers' MACs
    /// are known and VRRP has left Initialize.
    pub fn start_lb(&mut self, i: usize) -> Result<()> {
        self.start_lb_bin(i, &daemon_bin()?)
    }

    /// [`LvsLab::start_lb`] with the daemon binary `bin` (another build: an upgrade).
    pub fn start_lb_bin(&mut self, i: usize, bin: &Path) -> Result<()> {
        let mode = format!("mode=\"{}\"", self.params.xdp_mode);
        let nat = self.params.nat;
        let node = &mut self.lbs[i - 1];
        node.daemon.start_bin(&node.ns, bin, |log| {
            log.contains("XDP program attached")
                && log.contains(&mode)
                // NAT's real servers are reached through the FIB: no MAC to resolve, but the
                // program on the inside interface as well.
                && if nat {
                    log.contains("XDP program attached to an inside interface")
                } else {
                    log.matches("backend MAC resolved").count() >= SERVERS
                }
                && log.contains("VRRP state change")
        })
    }

    /// lb1, until it is master, then lb2, until it is backup.
    pub fn start_pair(&mut self) -> Result<()> {
        self.start_lb(1)?;
        let first = self.params.timers.master_down(100) + Duration::from_secs(5);
        self.wait_state(1, "MASTER", first)?;
        self.start_lb(2)?;
        self.wait_state(2, "BACKUP", Duration::from_secs(10))
            .map(drop)
    }

    pub fn lb_running(&self, i: usize) -> bool {
        self.lbs[i - 1].daemon.is_running()
    }

    /// VI_1's state on LB `i` (None when its daemon does not run or answer).
    pub fn state(&self, i: usize) -> Option<String> {
        self.lb_running(i).then(|| vrrp_state(self.lb(i))).flatten()
    }

    /// The running LB that says MASTER, if exactly one does.
    pub fn master(&self) -> Option<usize> {
        let m: Vec<usize> = (1..=2)
            .filter(|&i| self.state(i).as_deref() == Some("MASTER"))
            .collect();
        match m[..] {
            [i] => Some(i),
            _ => None,
        }
    }

    /// Waits until LB `i` reports `state`.
    pub fn wait_state(&self, i: usize, state: &str, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        let r = wait(&format!("lb{i} to be {state}"), timeout, || {
            self.state(i).as_deref() == Some(state)
        });
        and_logs(r, || self.logs())?;
        Ok(t.elapsed())
    }

    /// Whether LB `i`'s eth0 holds the VIP.
    pub fn has_vip(&self, i: usize) -> bool {
        has_vip(self.lb(i))
    }

    /// The log of LB `i`'s running daemon (empty when none runs).
    pub fn lb_log(&self, i: usize) -> String {
        self.lbs[i - 1]
            .daemon
            .proc
            .as_ref()
            .map(Proc::read_stderr)
            .unwrap_or_default()
    }

    /// The LBs' bpf filesystem, when `params.pins`.
    pub fn pin_fs(&self) -> Option<&PinFs> {
        self.pin_fs.as_ref()
    }

    /// `lb-daemon stop` of LB `i` (`--release`, `--keep`, or neither: as its `on_stop`
    /// says), and its exit.
    pub fn stop_lb_with(&mut self, i: usize, how: Option<&str>) -> Result<()> {
        let node = &mut self.lbs[i - 1];
        let mut cmd = std::process::Command::new(daemon_bin()?);
        cmd.arg("stop")
            .arg("--socket")
            .arg(Daemon::socket(&node.ns));
        if let Some(h) = how {
            cmd.arg(h);
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "lb-daemon stop: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if let Some(p) = node.daemon.proc.take() {
            let status = p
                .wait_timeout(Duration::from_secs(10))?
                .context("lb-daemon did not exit after `stop`")?;
            // A release that `stop` asked for ends with its own status (the systemd unit
            // does not start it again).
            let released = how == Some("--release") && status.code() == Some(10);
            ensure!(
                status.success() || released,
                "lb-daemon exit: {status}\n{}",
                p.read_stderr()
            );
        }
        Ok(())
    }

    /// The XDP attachment LB `i`'s eth0 shows (`ip link`), none without a program.
    pub fn xdp_attached(&self, i: usize) -> Option<String> {
        let out = self.lb(i).ip(&["link", "show", "dev", HOST_IF]).ok()?;
        out.split_whitespace()
            .find(|w| w.starts_with("xdp"))
            .map(str::to_string)
    }

    /// SIGKILL of LB `i`'s daemon (the VIP stays configured; its XDP program goes with it,
    /// unless `params.pins`).
    pub fn kill_lb(&mut self, i: usize) -> Result<()> {
        self.lbs[i - 1].daemon.kill()
    }

    /// SIGTERM of LB `i`'s daemon (priority-0 advert, VIP released).
    pub fn stop_lb(&mut self, i: usize) -> Result<()> {
        self.lbs[i - 1].daemon.stop()
    }

    /// The pid of LB `i`'s running daemon.
    pub fn lb_pid(&self, i: usize) -> Option<u32> {
        self.lbs[i - 1].daemon.proc.as_ref().map(Proc::pid)
    }

    /// Replaces LB `i`'s configuration file (as [`lvs_toml`] writes them); the next start or
    /// [`LvsLab::reload_lb`] reads it.
    pub fn set_config(&self, i: usize, config: &str) -> Result<()> {
        let node = &self.lbs[i - 1];
        node.daemon.write_config(&node.ns, config)
    }

    /// `lb-daemon reload` of LB `i`: fails unless the daemon accepted its file.
    pub fn reload_lb(&self, i: usize) -> Result<()> {
        let out = std::process::Command::new(daemon_bin()?)
            .args(["reload", "--socket"])
            .arg(Daemon::socket(self.lb(i)))
            .output()?;
        ensure!(
            out.status.success(),
            "lb{i} reload: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// The clients of the flows LB `i`'s table holds (a backup's: those connection sync
    /// installed), each flow once (the sync counters count writes, a flow's periodic
    /// refresh among them).
    pub fn flow_clients(&self, i: usize) -> Vec<SocketAddr> {
        flow_clients_at(&Daemon::socket(self.lb(i)))
    }

    /// LB `i`'s `sync` status (`null` without one, or when it does not answer).
    pub fn sync_status(&self, i: usize) -> serde_json::Value {
        status_json(self.lb(i))
            .map(|s| s["sync"].clone())
            .unwrap_or(serde_json::Value::Null)
    }

    /// LB `i`'s bridge port down (`up = false`) or up: its link cut or restored.
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

    /// Stops real server `i`'s nginx (SIGTERM).
    pub fn stop_nginx(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.servers[i - 1].nginx.take() {
            p.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Starts real server `i`'s nginx again and waits until it answers.
    pub fn start_nginx(&mut self, i: usize) -> Result<()> {
        let s = &mut self.servers[i - 1];
        ensure!(s.nginx.is_none(), "rs{i}'s nginx runs");
        let p = start_nginx(&s.ns)?;
        s.nginx = Some(p.clone());
        let target = self.rs_addr(i);
        let s = &self.servers[i - 1];
        wait_nginx(&s.ns, &p, target, &format!("rs{i}"))
    }

    /// Real server `i`'s health for port 80 as LB `lb` sees it (`up`, `down`, `unknown`).
    pub fn health(&self, lb: usize, i: usize) -> Option<String> {
        let s = status_json(self.lb(lb)).ok()?;
        let mut want = self.rs_addr(i);
        if self.params.nat_group {
            want.set_port(0);
        }
        let want = want.to_string();
        s["services"]
            .as_array()?
            .iter()
            .find(|svc| svc["port"] == HTTP)?["backends"]
            .as_array()?
            .iter()
            .find(|b| b["addr"] == want.as_str())?["health"]
            .as_str()
            .map(str::to_string)
    }

    /// Waits until LB `lb` says real server `i` is `health`.
    pub fn wait_health(&self, lb: usize, i: usize, health: &str, timeout: Duration) -> Result<()> {
        let r = wait(&format!("lb{lb} to see rs{i} {health}"), timeout, || {
            self.health(lb, i).as_deref() == Some(health)
        });
        and_logs(r, || self.logs())
    }

    /// Waits until the client's neighbour entry for the VIP is LB `i`'s MAC.
    pub fn wait_client_follows(&self, i: usize, timeout: Duration) -> Result<()> {
        let mac = self.lb(i).mac(HOST_IF)?;
        wait(
            &format!("the client to send the VIP's traffic to lb{i}"),
            timeout,
            || self.client.neigh_mac(&VIP.to_string()).ok().flatten() == Some(mac),
        )
    }

    /// Both daemons' logs, for error messages.
    pub fn logs(&self) -> String {
        self.lbs
            .iter()
            .enumerate()
            .map(|(i, l)| format!("---- lb{} log ----\n{}", i + 1, l.daemon.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A steady request stream from the client to the VIP.
    pub fn stream(&self) -> Result<HttpStream> {
        HttpStream::steady(&self.client, self.target())
    }

    /// Tears the lab down now (what drop does), reporting failures of the real servers'
    /// `realserver stop`.
    pub fn teardown(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        for l in &mut self.lbs {
            if let Err(e) = l.daemon.stop() {
                eprintln!("e2e_lab: stopping lb-daemon in {}: {e:#}", l.ns.name());
            }
        }
        let bin = daemon_bin()?.to_string_lossy().into_owned();
        let mut first_error = None;
        for s in &mut self.servers {
            if std::mem::take(&mut s.set_up) {
                if let Err(e) = s.ns.exec(&[bin.as_str(), "realserver", "stop"]) {
                    eprintln!("e2e_lab: {e:#}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for LvsLab {
    fn drop(&mut self) {
        let _ = self.undo();
    }
}

// ---------------------------------------------------------------------------------------------
// The nginx HA lab
// ---------------------------------------------------------------------------------------------

struct NginxNode {
    ns: Netns,
    nginx: Option<Proc>,
    daemon: Daemon,
}

/// The seed's "Nginx + Keepalived" deployment (see the module doc).
pub struct NginxHaLab {
    prefix: String,
    timers: Timers,
    nodes: Vec<NginxNode>,
    client: Netns,
    lan: Lan,
    _scripts: ScriptDir,
}

impl fmt::Debug for NginxHaLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NginxHaLab({})", self.prefix)
    }
}

impl NginxHaLab {
    /// Builds the namespaces and starts both nginx; the daemons are not started.
    pub fn new(prefix: &str, timers: Timers) -> Result<NginxHaLab> {
        let lan = Lan::new(prefix)?;
        let client = lan.host("c", 1, CLIENT, v6(1))?;
        let scripts = ScriptDir::new(prefix)?;
        let mut nodes = Vec::new();
        for i in 1..=2 {
            let ns = lan.host(&format!("n{i}"), 1 + i as u8, node_v4(i), v6(1 + i as u16))?;
            fs::write(
                ns.dir().join("nginx.conf"),
                nginx_conf(ns.dir(), &format!("n{i}"), &[HTTP]),
            )?;
            let script = scripts.write(
                &format!("check_nginx_n{i}.sh"),
                &check_nginx_script(&ns.dir().join("nginx.pid")),
            )?;
            let daemon = Daemon::new(&ns, &nginx_ha_toml(&timers, &script))?;
            let nginx = start_nginx(&ns)?;
            wait_nginx(
                &ns,
                &nginx,
                SocketAddr::from((node_v4(i), HTTP)),
                &format!("n{i}"),
            )?;
            nodes.push(NginxNode {
                ns,
                nginx: Some(nginx),
                daemon,
            });
        }
        Ok(NginxHaLab {
            prefix: prefix.to_string(),
            timers,
            nodes,
            client,
            lan,
            _scripts: scripts,
        })
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i - 1].ns
    }

    pub fn node_config(&self, i: usize) -> &Path {
        &self.nodes[i - 1].daemon.cfg
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        std::iter::once(&self.client)
            .chain(self.nodes.iter().map(|n| &n.ns))
            .chain([self.lan.bridge()])
    }

    pub fn target(&self) -> SocketAddr {
        SocketAddr::from((VIP, HTTP))
    }

    /// Starts node `i`'s daemon; returns once VRRP has left Initialize.
    pub fn start_daemon(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i - 1];
        n.daemon
            .start(&n.ns, |log| log.contains("VRRP state change"))
    }

    /// n1 until it is master, then n2 until it is backup.
    pub fn start_pair(&mut self) -> Result<()> {
        self.start_daemon(1)?;
        let first = self.timers.master_down(100) + Duration::from_secs(5);
        self.wait_state(1, "MASTER", first)?;
        self.start_daemon(2)?;
        self.wait_state(2, "BACKUP", Duration::from_secs(10))
            .map(drop)
    }

    pub fn state(&self, i: usize) -> Option<String> {
        self.nodes[i - 1]
            .daemon
            .is_running()
            .then(|| vrrp_state(self.node(i)))
            .flatten()
    }

    pub fn wait_state(&self, i: usize, state: &str, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        let r = wait(&format!("n{i} to be {state}"), timeout, || {
            self.state(i).as_deref() == Some(state)
        });
        and_logs(r, || self.logs())?;
        Ok(t.elapsed())
    }

    /// The running node whose eth0 holds the VIP, if exactly one does.
    pub fn holder(&self) -> Option<usize> {
        let h: Vec<usize> = (1..=2)
            .filter(|&i| self.nodes[i - 1].daemon.is_running() && has_vip(self.node(i)))
            .collect();
        match h[..] {
            [i] => Some(i),
            _ => None,
        }
    }

    pub fn stop_nginx(&mut self, i: usize) -> Result<()> {
        if let Some(p) = self.nodes[i - 1].nginx.take() {
            p.stop(Duration::from_secs(5))?;
        }
        Ok(())
    }

    pub fn start_nginx(&mut self, i: usize) -> Result<()> {
        let n = &mut self.nodes[i - 1];
        ensure!(n.nginx.is_none(), "n{i}'s nginx runs");
        let p = start_nginx(&n.ns)?;
        n.nginx = Some(p.clone());
        wait_nginx(
            &n.ns,
            &p,
            SocketAddr::from((node_v4(i), HTTP)),
            &format!("n{i}"),
        )
    }

    pub fn kill_daemon(&mut self, i: usize) -> Result<()> {
        self.nodes[i - 1].daemon.kill()
    }

    /// Node `i`'s bridge port down or up.
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        self.lan
            .bridge()
            .ip(&[
                "link",
                "set",
                &format!("to-n{i}"),
                if up { "up" } else { "down" },
            ])
            .map(drop)
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("---- n{} log ----\n{}", i + 1, n.daemon.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn stream(&self) -> Result<HttpStream> {
        HttpStream::steady(&self.client, self.target())
    }
}

impl Drop for NginxHaLab {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.daemon.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The demo
// ---------------------------------------------------------------------------------------------

/// What a demo measured, printed as its summary.
#[derive(Debug, Default)]
pub struct Summary {
    /// (what, value) lines.
    pub lines: Vec<(String, String)>,
    /// The steps that did not do what they should, with why.
    pub failed: Vec<String>,
}

impl Summary {
    pub fn add(&mut self, what: impl Into<String>, value: impl Into<String>) {
        self.lines.push((what.into(), value.into()));
    }

    /// Runs one step: prints its title, times it, records a failure under its name.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce(&mut Summary) -> Result<T>) -> Result<T> {
        println!("\n[{name}]");
        let t = Instant::now();
        let r = f(self);
        let took = t.elapsed();
        match &r {
            Ok(_) => println!("    ({:.1} s)", took.as_secs_f64()),
            Err(_) if CANCEL.load(Ordering::SeqCst) => {
                println!("    interrupted");
                self.failed.push(format!("{name}: interrupted"));
            }
            Err(e) => {
                println!("    FAILED after {:.1} s: {e:#}", took.as_secs_f64());
                // The first line names what went wrong; logs follow it in the step's output.
                let what = format!("{e:#}");
                let what = what.lines().next().unwrap_or_default();
                self.failed.push(format!("{name}: {what}"));
            }
        }
        r.with_context(|| format!("step {name:?}"))
    }

    pub fn print(&self, title: &str) {
        println!("\n== summary: {title} ==");
        let w = self.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.lines {
            println!("  {k:<w$}  {v}");
        }
        if self.failed.is_empty() {
            println!("  every step did what it should");
        } else {
            for f in &self.failed {
                println!("  FAILED {f}");
            }
        }
    }
}

/// Reply frames (tcpdump -e lines) by source MAC: (from a real server, from an LB).
fn reply_sources(lab: &LvsLab, lines: &[String]) -> Result<(usize, usize)> {
    let lbs = [lab.lb(1).mac(HOST_IF)?, lab.lb(2).mac(HOST_IF)?].map(|m| fmt_mac(&m));
    let servers = (1..=SERVERS)
        .map(|i| lab.rs(i).mac(HOST_IF).map(|m| fmt_mac(&m)))
        .collect::<Result<Vec<_>>>()?;
    let (mut direct, mut via_lb) = (0, 0);
    for l in lines {
        match l.split_whitespace().nth(1) {
            Some(src) if servers.iter().any(|m| m == src) => direct += 1,
            Some(src) if lbs.iter().any(|m| m == src) => via_lb += 1,
            _ => {}
        }
    }
    Ok((direct, via_lb))
}

fn shown(state: Option<String>) -> String {
    state.unwrap_or_else(|| "not answering".into())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// How many successful requests each traffic phase collects.
pub const PHASE_REQUESTS: usize = 300;
/// Allowance on top of each protocol bound, for a loaded 2-core machine.
pub const MARGIN: Duration = Duration::from_millis(1500);

/// The LVS demo: traffic and status, a real server stopped, the master killed, both restored.
/// `requests` successful requests per traffic phase. Every measurement goes into `summary`;
/// the first step that fails ends the run with an error naming it.
pub fn lvs_demo(params: &LvsParams, requests: usize, summary: &mut Summary) -> Result<()> {
    let t = params.timers;
    let mut lab = summary.step("lvs 0: build the lab", |s| {
        let t0 = Instant::now();
        let mut lab = LvsLab::new(&crate::netns::unique_prefix("lab"), params.clone())?;
        let names: Vec<&str> = lab.namespaces().map(Netns::name).collect();
        println!("    namespaces: {}", names.join(" "));
        println!(
            "    rs1..rs3: `lb-daemon realserver start --vip {VIP}`; on rs1 it said:\n{}",
            indent(&lab.realserver_output, 8)
        );
        println!(
            "    lb1: {}  lb2: {}",
            lab.lb_config(1).display(),
            lab.lb_config(2).display()
        );
        lab.start_pair()?;
        println!("    lb1 is MASTER, lb2 is BACKUP");
        s.add("lab up (namespaces, nginx, both LBs)", secs(t0.elapsed()));
        Ok(lab)
    })?;
    let stream = lab.stream()?;

    summary.step("lvs 1: traffic through the VIP, and status", |s| {
        // Who sends the replies: tcpdump -e at the client.
        let capture = lab.client().capture(HOST_IF, "tcp src port 80")?;
        let from = Instant::now();
        stream.wait_successes(from, requests, Duration::from_secs(30))?;
        let p = stream.phase(from, Instant::now());
        let lines = capture.stop()?;
        let (direct, via_lb) = reply_sources(&lab, &lines)?;
        let master = lab.master().context("no single master")?;
        println!(
            "    master: lb{master} (lb1 {}, lb2 {})",
            shown(lab.state(1)),
            shown(lab.state(2))
        );
        println!("    requests per real server: {}", p.backends_line());
        println!("    failed: {}", p.failures_line());
        println!(
            "    tcpdump at the client: {direct} reply frames straight from the real servers, \
             {via_lb} from an LB"
        );
        println!("    `lb-daemon status` on lb{master}:");
        println!("{}", indent(&status_text(lab.lb(master))?, 8));
        s.add("1. requests per real server", p.backends_line());
        let want = if matches!(params.sched.as_str(), "sh" | "mh") && !params.hash_port {
            1
        } else {
            SERVERS
        };
        ensure!(
            p.by_backend.len() == want,
            "{want} real server(s) should answer, got {}",
            p.backends_line()
        );
        ensure!(p.failed() == 0, "{} requests failed", p.failures_line());
        s.add(
            "1. reply frames from real servers / from an LB",
            format!("{direct} / {via_lb}"),
        );
        ensure!(master == 1, "lb{master} is master, lb1 should be");
        ensure!(
            via_lb == 0 && direct > 0,
            "replies must come straight from the real servers"
        );
        Ok(())
    })?;

    summary.step("lvs 2: stop rs2's nginx", |s| {
        let t0 = Instant::now();
        lab.stop_nginx(2)?;
        let bound = t.detection_refused();
        lab.wait_health(1, 2, "down", bound + MARGIN + Duration::from_secs(3))?;
        let detected = t0.elapsed();
        let after = Instant::now();
        stream.wait_successes(after, requests, Duration::from_secs(30))?;
        let all = stream.phase(t0, Instant::now());
        let tail = stream.phase(after, Instant::now());
        println!(
            "    lb1 marked rs2 down {} after the stop (keepalived's bound: {})",
            secs(detected),
            secs(bound)
        );
        println!(
            "    meanwhile {} requests failed; after: {} failed, per real server {}",
            all.failures_line(),
            tail.failures_line(),
            tail.backends_line()
        );
        s.add(
            "2. rs2 detected down after",
            format!("{} (bound {})", secs(detected), secs(bound)),
        );
        s.add(
            "2. requests failed before / after detection",
            format!("{} / {}", all.failed(), tail.failed()),
        );
        ensure!(
            all.failures_later_than(t0, bound + MARGIN) == 0,
            "requests failed later than the detection bound + {}: {}",
            secs(MARGIN),
            all.failures_line()
        );
        ensure!(!tail.by_backend.contains_key("rs2"), "rs2 still served");
        Ok(())
    })?;

    summary.step("lvs 3: kill the master (SIGKILL of lb1's lb-daemon)", |s| {
        let t0 = Instant::now();
        lab.kill_lb(1)?;
        let bound = t.master_down(99);
        let took = lab.wait_state(2, "MASTER", bound + MARGIN + Duration::from_secs(3))?;
        lab.wait_client_follows(2, Duration::from_secs(5))?;
        let after = Instant::now();
        stream.wait_successes(after, requests, Duration::from_secs(30))?;
        let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
        let tail = stream.phase(after, Instant::now());
        println!(
            "    lb2 MASTER {} after the kill (Master_Down_Interval {})",
            secs(took),
            secs(bound)
        );
        println!(
            "    failover window (longest gap between replies): {}; failed requests: {}",
            secs(p.longest_gap),
            p.failures_line()
        );
        println!("    after: per real server {}", tail.backends_line());
        s.add(
            "3. lb2 master after the kill",
            format!("{} (bound {})", secs(took), secs(bound)),
        );
        s.add("3. failover window", secs(p.longest_gap));
        s.add("3. requests failed during failover", p.failures_line());
        ensure!(
            p.failures_later_than(t0, bound + MARGIN) == 0,
            "requests failed later than Master_Down_Interval + {}",
            secs(MARGIN)
        );
        ensure!(tail.failed() == 0, "requests failed after the failover");
        Ok(())
    })?;

    summary.step("lvs 4: restore rs2 and lb1", |s| {
        let t0 = Instant::now();
        lab.start_nginx(2)?;
        lab.wait_health(
            2,
            2,
            "up",
            t.detection_refused() + MARGIN + Duration::from_secs(3),
        )?;
        let t1 = Instant::now();
        lab.start_lb(1)?;
        let (expect1, expect2) = if params.preempt {
            ("MASTER", "BACKUP")
        } else {
            ("BACKUP", "MASTER")
        };
        lab.wait_state(
            1,
            expect1,
            t.master_down(100) + MARGIN + Duration::from_secs(3),
        )?;
        lab.wait_state(2, expect2, Duration::from_secs(5))?;
        if params.preempt {
            lab.wait_client_follows(1, Duration::from_secs(5))?;
        } else {
            holds_for(
                "nopreempt: lb2 stays master",
                t.master_down(100) + Duration::from_secs(1),
                || lab.state(2).as_deref() == Some("MASTER"),
            )?;
        }
        let back = t1.elapsed();
        let after = Instant::now();
        stream.wait_successes(after, requests, Duration::from_secs(30))?;
        let p = stream.phase(t1, Instant::now());
        let tail = stream.phase(after, Instant::now());
        println!(
            "    rs2 up again; lb1 restarted: {} ({}), lb2 {}",
            expect1,
            if params.preempt {
                "preempted"
            } else {
                "nopreempt"
            },
            expect2
        );
        println!(
            "    during the return: longest gap {}, failed {}",
            secs(p.longest_gap),
            p.failures_line()
        );
        println!("    after: per real server {}", tail.backends_line());
        s.add(
            "4. lb1 back as",
            format!(
                "{expect1} after {} ({})",
                secs(back),
                if params.preempt {
                    "preempt"
                } else {
                    "nopreempt"
                }
            ),
        );
        s.add(
            "4. gap / failures while lb1 returned",
            format!("{} / {}", secs(p.longest_gap), p.failures_line()),
        );
        s.add("4. requests per real server", tail.backends_line());
        s.add("4. restore took", secs(t0.elapsed()));
        let want = if matches!(params.sched.as_str(), "sh" | "mh") && !params.hash_port {
            1
        } else {
            SERVERS
        };
        ensure!(
            tail.by_backend.len() == want,
            "per real server: {}",
            tail.backends_line()
        );
        ensure!(tail.failed() == 0, "requests failed after the return");
        ensure!(
            p.failures_later_than(t1, t.master_down(100) + MARGIN) == 0,
            "requests failed later than Master_Down_Interval + {} after lb1's restart: {}",
            secs(MARGIN),
            p.failures_line()
        );
        Ok(())
    })?;
    if params.pins {
        summary.step(
            "lvs 5: restart lb1 in place (an upgrade: stop --keep, start)",
            |s| {
                let peer = vrrp_transitions(lab.lb(2))?;
                let t0 = Instant::now();
                lab.stop_lb_with(1, Some("--keep"))?;
                lab.start_lb(1)?;
                let back = t0.elapsed();
                lab.wait_state(1, "MASTER", Duration::from_secs(2))?;
                // The peer would have taken over within its Master_Down_Interval.
                holds_for("lb2 stays backup", t.master_down(99) + MARGIN, || {
                    lab.state(2).as_deref() == Some("BACKUP")
                })?;
                let after = Instant::now();
                stream.wait_successes(after, requests, Duration::from_secs(30))?;
                let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
                let moved = vrrp_transitions(lab.lb(2))? - peer;
                let took_over = lab
                    .lb_log(1)
                    .lines()
                    .find(|l| l.contains("took over the previous run's dataplane"))
                    .map(str::to_string)
                    .unwrap_or_default();
                println!(
                    "    lb1 back in {}; lb2's VRRP transitions: {moved}; failed requests: {}",
                    secs(back),
                    p.failures_line()
                );
                println!("    {}", took_over.trim());
                s.add("5. lb1 restarted in place", secs(back));
                s.add(
                    "5. requests failed / lb2 transitions",
                    format!("{} / {moved}", p.failures_line()),
                );
                ensure!(p.failed() == 0, "requests failed: {}", p.failures_line());
                ensure!(moved == 0, "lb2 made {moved} VRRP transitions");
                Ok(())
            },
        )?;
    }
    drop(stream);
    summary.step("lvs 6: tear down", |_| lab.teardown())?;
    Ok(())
}

/// VI_1's transitions in `status --json` of the daemon in `ns`.
pub fn vrrp_transitions(ns: &Netns) -> Result<u64> {
    let s = status_json(ns)?;
    s["vrrp"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "VI_1"))
        .and_then(|v| v["transitions"].as_u64())
        .context("VI_1's transitions")
}

/// The nginx HA demo: traffic to the VIP, nginx stopped on the master (the VIP moves), nginx
/// back (nopreempt: the VIP stays).
pub fn nginx_demo(timers: Timers, requests: usize, summary: &mut Summary) -> Result<()> {
    let t = timers;
    let mut lab = summary.step("nginx 0: build the lab", |s| {
        let t0 = Instant::now();
        let mut lab = NginxHaLab::new(&crate::netns::unique_prefix("ha"), timers)?;
        let names: Vec<&str> = lab.namespaces().map(Netns::name).collect();
        println!("    namespaces: {}", names.join(" "));
        println!("    n1: {}", lab.node_config(1).display());
        lab.start_pair()?;
        println!("    n1 is MASTER (holds {VIP}), n2 is BACKUP");
        s.add("lab up (namespaces, nginx, both nodes)", secs(t0.elapsed()));
        Ok(lab)
    })?;
    let stream = lab.stream()?;
    summary.step("nginx 1: traffic to the VIP", |s| {
        let from = Instant::now();
        stream.wait_successes(from, requests, Duration::from_secs(30))?;
        let p = stream.phase(from, Instant::now());
        println!(
            "    answered by: {}; failed {}",
            p.backends_line(),
            p.failures_line()
        );
        s.add("1. answered by", p.backends_line());
        ensure!(p.by_backend.keys().eq(["n1"]), "only n1 should answer");
        ensure!(p.failed() == 0, "requests failed");
        Ok(())
    })?;
    summary.step("nginx 2: stop nginx on the master (n1)", |s| {
        let t0 = Instant::now();
        lab.stop_nginx(1)?;
        // The next check fails (one interval), FAULT sends priority 0, n2 takes over after
        // its skew time.
        let bound = Duration::from_secs_f64(t.script_interval) + t.skew(100);
        let took = lab.wait_state(2, "MASTER", bound + MARGIN + Duration::from_secs(3))?;
        let after = Instant::now();
        stream.wait_successes(after, requests, Duration::from_secs(30))?;
        let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
        let tail = stream.phase(after, Instant::now());
        println!(
            "    n1 {}, n2 MASTER {} after the stop (bound {})",
            shown(lab.state(1)),
            secs(took),
            secs(bound)
        );
        println!(
            "    window (longest gap): {}; failed {}; after: {}",
            secs(p.longest_gap),
            p.failures_line(),
            tail.backends_line()
        );
        s.add(
            "2. VIP on n2 after nginx stopped on n1",
            format!("{} (bound {})", secs(took), secs(bound)),
        );
        s.add(
            "2. window / failed",
            format!("{} / {}", secs(p.longest_gap), p.failures_line()),
        );
        ensure!(
            lab.state(1).as_deref() == Some("FAULT"),
            "n1 is {:?}",
            lab.state(1)
        );
        ensure!(
            p.failures_later_than(t0, bound + MARGIN) == 0,
            "failures after the bound"
        );
        ensure!(tail.by_backend.keys().eq(["n2"]), "only n2 should answer");
        Ok(())
    })?;
    summary.step(
        "nginx 3: nginx back on n1 (nopreempt: the VIP stays on n2)",
        |s| {
            let t0 = Instant::now();
            lab.start_nginx(1)?;
            lab.wait_state(
                1,
                "BACKUP",
                Duration::from_secs_f64(t.script_interval) + MARGIN + Duration::from_secs(3),
            )?;
            holds_for(
                "nopreempt: n2 keeps the VIP",
                t.master_down(100) + Duration::from_secs(1),
                || lab.holder() == Some(2),
            )?;
            let p = stream.phase(t0, Instant::now());
            println!(
                "    n1 BACKUP, n2 still MASTER; answered by {}; failed {}",
                p.backends_line(),
                p.failures_line()
            );
            s.add(
                "3. after nginx is back on n1",
                format!("n2 keeps the VIP; failed {}", p.failures_line()),
            );
            ensure!(p.failed() == 0, "requests failed");
            ensure!(p.by_backend.keys().eq(["n2"]), "only n2 should answer");
            Ok(())
        },
    )?;
    drop(stream);
    drop(lab);
    Ok(())
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.trim_end()
        .lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 4\r\n\r\nrs1\n";
        assert_eq!(parse_response(ok, false), Some(Ok("rs1".into())));
        assert_eq!(parse_response(&ok[..ok.len() - 2], false), None);
        assert_eq!(
            parse_response(&ok[..ok.len() - 2], true),
            Some(Err(Failure::Closed))
        );
        assert_eq!(parse_response(b"HTTP/1.1 200", false), None);
        assert_eq!(parse_response(b"", true), Some(Err(Failure::Closed)));
        let nolen = b"HTTP/1.0 200 OK\r\n\r\nn2\n";
        assert_eq!(parse_response(nolen, false), None);
        assert_eq!(parse_response(nolen, true), Some(Ok("n2".into())));
        let bad = b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_response(bad, false),
            Some(Err(Failure::Http("HTTP/1.1 503 Unavailable".into())))
        );
    }

    #[test]
    fn phase_report() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let s = |start: u64, end: u64, o: Result<&str, Failure>| Sample {
            start: ms(start),
            end: ms(end),
            outcome: o.map(str::to_string),
        };
        let samples = vec![
            s(0, 1, Ok("rs1")),
            s(10, 11, Ok("rs2")),
            s(20, 21, Err(Failure::Refused)),
            s(30, 530, Err(Failure::Timeout)),
            s(40, 41, Ok("rs1")),
            s(50, 51, Ok("rs3")),
            s(900, 901, Ok("rs1")),
        ];
        let p = PhaseReport::new(&samples, t, ms(100));
        assert_eq!((p.requests, p.ok, p.failed()), (6, 4, 2));
        assert_eq!(p.backends_line(), "rs1: 2  rs2: 1  rs3: 1");
        assert_eq!(p.failures_line(), "2 (refused 1, timeout 1)");
        assert_eq!(p.longest_gap, Duration::from_millis(30));
        assert_eq!(p.gap_start, Some(ms(11)));
        assert_eq!(p.first_failure_after(t), Some(Duration::from_millis(20)));
        assert_eq!(p.last_failure_after(t), Some(Duration::from_millis(30)));
        assert_eq!(p.failures_later_than(t, Duration::from_millis(25)), 1);
        let all = PhaseReport::new(&samples, t, ms(1000));
        assert_eq!(all.longest_gap, Duration::from_millis(850));
        let empty = PhaseReport::new(&samples, ms(2000), ms(3000));
        assert_eq!((empty.requests, empty.longest_gap), (0, Duration::ZERO));
        assert_eq!(empty.backends_line(), "none");
    }

    #[test]
    fn timers_and_configs() {
        let t = Timers::lab();
        assert_eq!(t.detection_refused(), Duration::from_millis(1500));
        assert_eq!(t.master_down(99), Duration::from_nanos(3_613_281_250));
        let seed = Timers::seed();
        assert_eq!(seed.detection_refused(), Duration::from_secs(15));
        assert_eq!(seed.master_down(99).as_secs(), 15);
        let p = LvsParams::new("rr", "skb");
        let c1 = lvs_toml(&p, 1);
        let c2 = lvs_toml(&p, 2);
        for want in [
            "state = \"MASTER\"",
            "priority = 100",
            "virtual_router_id = 38",
            "auth_pass = \"123456\"",
            "group = [\"VI_1\"]",
            "virtual_ipaddress = [\"192.0.2.100\"]",
            "port = 443",
            "TCP_CHECK = { connect_timeout = 1, retry = 1, delay_before_retry = 0.5 }",
        ] {
            assert!(c1.contains(want), "{want} in\n{c1}");
        }
        assert!(c2.contains("state = \"BACKUP\"") && c2.contains("priority = 99"));
        assert_eq!(c1.matches("[[virtual_server.real_server]]").count(), 6);
        let nopre = LvsParams {
            preempt: false,
            ..p.clone()
        };
        assert!(lvs_toml(&nopre, 1).contains("state = \"BACKUP\"\n"));
        assert!(lvs_toml(&nopre, 1).contains("nopreempt = true\n"));
        let mh = LvsParams {
            sched: "mh".into(),
            hash_port: true,
            ..p.clone()
        };
        assert!(lvs_toml(&mh, 2).contains("hash_port = true"));
        assert!(!lvs_toml(&p, 1).contains("hash_port"));
        let wrr = LvsParams::new("wrr", "skb");
        assert!(lvs_toml(&wrr, 1).contains("weight = 3"));
        let ha = nginx_ha_toml(&t, Path::new("/run/x/check.sh"));
        assert!(ha.contains("nopreempt = true") && ha.contains("track_script = [\"check_nginx\"]"));
        assert!(!ha.contains("[dataplane]"));
    }

    /// The generated configurations load with the daemon's own parser.
    #[test]
    fn configs_load() {
        let dir = std::env::temp_dir().join(format!("e2e-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for (name, text) in [
            ("lb1.toml", lvs_toml(&LvsParams::new("rr", "skb"), 1)),
            ("lb2.toml", lvs_toml(&LvsParams::new("wrr", "native"), 2)),
            (
                "mh.toml",
                lvs_toml(
                    &LvsParams {
                        hash_port: true,
                        preempt: false,
                        ..LvsParams::new("mh", "skb")
                    },
                    1,
                ),
            ),
            (
                "ha.toml",
                nginx_ha_toml(&Timers::seed(), Path::new("/run/x/check.sh")),
            ),
        ] {
            let p = dir.join(name);
            fs::write(&p, &text).unwrap();
            lb_daemon::config::Config::load(&p).unwrap_or_else(|e| panic!("{name}: {e:#}\n{text}"));
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
