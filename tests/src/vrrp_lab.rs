//! A VRRP pair on a LAN, for interop tests against keepalived and for failover benchmarks.
//!
//! ```text
//!  {p}c   eth0 192.0.2.1  2001:db8::1   the client: probes the VIP, watches the adverts ──┐
//!  {p}n1  eth0 192.0.2.2  2001:db8::2   node 0: our daemon or keepalived                 ──┤ {p}br: br0,
//!  {p}n2  eth0 192.0.2.3  2001:db8::3   node 1: our daemon or keepalived                 ──┘ ports to-c, to-n1, to-n2
//! ```
//!
//! Both nodes get their configuration from one [`VrrpParams`]: the same version, VRID,
//! interval, authentication, VIP and preemption, with `priorities[i]` for node `i`, written
//! either as our TOML ([`VrrpParams::ours_toml`]) or as keepalived.conf
//! ([`VrrpParams::keepalived_conf`]). So a pair of ours, a pair of keepalived and a mixed
//! pair run exactly the same protocol configuration.
//!
//! # Processes
//!
//! * Our daemon: `lb-daemon run --config FILE` ([`crate::lab::daemon_bin`]), stderr to a log.
//! * keepalived (2.2.7 from Debian): `keepalived -n -l -D -P -G -f CONF -p PID -r VRRPPID`
//!   (foreground, log to the console, VRRP only, no syslog) in a process group of its own,
//!   with `TMPDIR` set to a per-node directory so that its `SIGUSR2` statistics dump
//!   (`$TMPDIR/keepalived.stats`) does not collide with other runs. keepalived is a parent and
//!   a VRRP child: killing only the child is no failure (the parent respawns it), so a hard
//!   failure SIGKILLs the whole process group ([`VrrpLab::kill`]). The pid files get a new name
//!   per run: a SIGKILLed run leaves its pid files behind.
//!
//! Stopping: [`VrrpLab::stop`] / [`VrrpLab::terminate`] send SIGTERM (priority-0 advert, VIP
//! released); [`VrrpLab::kill`] is SIGKILL (ours) or SIGKILL of the process group (keepalived):
//! the VIP stays configured on the dead node's interface until a new run removes it, and the
//! node's kernel keeps answering for it. [`VrrpLab::crash`] is a dead machine: SIGKILL and, in
//! the same instant, the node's bridge port set down over a netlink socket opened beforehand
//! (tens of microseconds), so the dead node neither advertises nor answers. [`VrrpLab::revive`]
//! sets the port up again.
//!
//! Every run's log is kept: [`VrrpLab::log`] is all runs of a node, in order, and
//! [`VrrpLab::rejections`] the lines in it that say an advert was refused.
//!
//! # Failover measurement ([`Prober`])
//!
//! A thread in the client namespace sends an ICMP echo request (raw socket, IPv4 or IPv6) to
//! the VIP every `interval` (1 ms) on an absolute schedule, and a second thread stamps every
//! echo reply with `Instant::now()` as it is received. The failover time is the **longest
//! interval between two consecutive replies** ([`ProbeReport::longest_gap`]): it runs from the
//! last reply of the old master to the first reply of the new one, so it includes the
//! backup's detection (Master_Down_Interval for a dead master, Skew_Time after a priority-0
//! advert), its taking the VIP, and the gratuitous ARP / unsolicited NA that moves the client
//! to the new MAC. Its resolution is the probe interval (1 ms). Both threads run SCHED_FIFO
//! (as root) so that other load does not delay the probes or the stamps. What is left is the
//! machine's own noise: with a stable master, on a 2-core VM, 99% of the
//! intervals are under 1.1-1.4 ms, 99.9% under 1.5-6 ms, and the longest in 4 s is 3-9 ms,
//! for our pair and keepalived's alike. A failover gap is therefore exact to about 1 ms, and a
//! rare noise spike can add a few ms to one trial (benchmarks take medians). Echo replies are
//! not rate-limited by the kernel (`icmp_ratemask` covers errors only).
//!
//! [`AdvertWatch`] records every VRRP advert seen on the client's interface (a packet socket)
//! with its arrival time, sender, priority and interval: it lets a trial kill the master right
//! after one of its adverts (so that the Master_Down timer of the backup has a known start) and
//! gives the protocol-level takeover time (first advert of the new master minus last advert of
//! the old one).
use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File},
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU16, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    lab::daemon_bin,
    netns::{wait_until, Lan, Netns, Proc, HOST_IF, PRIVILEGED_ENV},
};

/// The virtual router's name in both configurations.
pub const INSTANCE: &str = "VI_1";
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

/// Node `i`'s own addresses: 192.0.2.(2+i), 2001:db8::(2+i).
pub fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 2 + i as u8)
}

pub fn node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2 + i as u16)
}

/// The lines our daemon logs for a refused advert (expected ones, own adverts and other
/// VRIDs, are not logged).
pub const OURS_REJECTION: &str = "VRRP advert not used as is";

/// What keepalived 2.2.7 logs when it refuses an advert (`vrrp_check_packet` and friends, from
/// the strings of the Debian binary). Checked by a test with a wrong password.
pub const KEEPALIVED_REJECTIONS: &[&str] = &[
    "invalid TTL/HL",
    "wrong version",
    " auth, expecting ",
    "received an invalid passwd",
    "invalid IPSEC",
    "AH header",
    "advertisement interval mismatch",
    "Invalid packet type",
    "unexpected ip number count",
    "ip_tot_len mismatch",
    "Invalid VRRPv2 checksum",
    "Invalid VRRPv3 checksum",
    "not present in MASTER advert",
    "not a unicast peer",
    "vrrp packet too",
    "icast packet but received",
    "bogus",
];

/// Words that, in a keepalived line that is none of the above, still mean trouble.
const KEEPALIVED_SUSPECT_WORDS: &[&str] = &[
    "invalid", "bad ", "ttl", "checksum", "auth", "mismatch", "wrong", "error",
];

// ---------------------------------------------------------------------------------------------
// Gates
// ---------------------------------------------------------------------------------------------

fn skip_or_panic(test: &str, reason: &str) -> bool {
    if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
        panic!("{test}: {reason}, and {PRIVILEGED_ENV}=1 forbids skipping");
    }
    eprintln!("SKIP {test}: {reason}; set {PRIVILEGED_ENV}=1 to make this a failure");
    false
}

/// Absolute path of a program from PATH or the sbin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// True when keepalived, ping and ip are installed. Otherwise prints a `SKIP` line (or
/// panics under `LB_REQUIRE_PRIVILEGED=1`).
pub fn require_keepalived(test: &str) -> bool {
    let missing: Vec<&str> = ["keepalived", "ping", "ip"]
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_panic(
        test,
        &format!(
            "needs {} (apt-get install keepalived iputils-ping iproute2, or scripts/setup.sh)",
            missing.join(", ")
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Which VRRP implementation runs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Ours,
    Keepalived,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Ours => "ours",
            Peer::Keepalived => "keepalived",
        })
    }
}

/// The one description both nodes' configurations are generated from.
#[derive(Debug, Clone, PartialEq)]
pub struct VrrpParams {
    /// 2 or 3.
    pub version: u8,
    pub vrid: u8,
    /// Node 0's and node 1's priority.
    pub priorities: [u8; 2],
    /// Advert interval in centiseconds (v2: whole seconds only).
    pub advert_int_cs: u16,
    /// VRRPv2 simple password (`auth_type PASS`); ignored for v3.
    pub auth_pass: Option<String>,
    /// IPv4 or IPv6 (v3 only); its prefix on the interface is /24 or /64.
    pub vip: IpAddr,
    pub preempt: bool,
    /// `state MASTER` on the node with the higher priority (the seed's configuration), `state
    /// BACKUP` on the other. Without it both start as BACKUP. keepalived does not allow it
    /// with `nopreempt`.
    pub master_hint: bool,
    /// Each node writes its state changes to a FIFO in keepalived's format (ours:
    /// `notify_fifo_format = "keepalived"`), read by a `notify_fifo_script` that appends
    /// every line to [`FIFO_LOG`] in the node's directory.
    pub fifo: bool,
    /// keepalived's `use_vmac` on both nodes: the VIP lives on `vrrp.VRID`, a macvlan with
    /// the virtual MAC.
    pub use_vmac: bool,
    /// With `use_vmac`: `vmac_xmit_base` on both nodes (adverts leave from the interface).
    pub vmac_xmit_base: bool,
}

/// Where a node's FIFO reader appends the lines it read (see [`VrrpParams::fifo`]).
pub const FIFO_LOG: &str = "fifo.log";

impl VrrpParams {
    /// The seed's VRRPv2 pair: VRID 51, priorities 150/100, `advert_int 1`, `auth_type PASS`
    /// with `auth_pass 123456`, VIP 192.0.2.100/24, preemption, `state MASTER` on the higher.
    pub fn v2_seed() -> Self {
        VrrpParams {
            version: 2,
            vrid: 51,
            priorities: [150, 100],
            advert_int_cs: 100,
            auth_pass: Some("123456".into()),
            vip: VIP_V4.into(),
            preempt: true,
            master_hint: true,
            fifo: false,
            use_vmac: false,
            vmac_xmit_base: false,
        }
    }

    /// VRRPv3 over IPv4 with the same VRID, priorities and VIP, the given interval.
    pub fn v3(advert_int_cs: u16) -> Self {
        VrrpParams {
            version: 3,
            advert_int_cs,
            auth_pass: None,
            ..Self::v2_seed()
        }
    }

    /// VRRPv3 over IPv6 (VIP 2001:db8::100/64).
    pub fn v3_ipv6(advert_int_cs: u16) -> Self {
        VrrpParams {
            vip: VIP_V6.into(),
            ..Self::v3(advert_int_cs)
        }
    }

    pub fn vip_prefix(&self) -> u8 {
        if self.vip.is_ipv4() {
            24
        } else {
            64
        }
    }

    pub fn advert_int(&self) -> Duration {
        Duration::from_millis(u64::from(self.advert_int_cs) * 10)
    }

    /// Skew_Time of node `i`: `(256 - priority) / 256` of the interval (v3), of a second (v2).
    pub fn skew(&self, i: usize) -> Duration {
        let unit = if self.version == 3 {
            self.advert_int()
        } else {
            Duration::from_secs(1)
        };
        unit * (256 - u32::from(self.priorities[i])) / 256
    }

    /// Master_Down_Interval of node `i`: `3 * interval + Skew_Time`.
    pub fn master_down_interval(&self, i: usize) -> Duration {
        self.advert_int() * 3 + self.skew(i)
    }

    /// The node with the higher priority (node 0 on a tie).
    pub fn preferred(&self) -> usize {
        usize::from(self.priorities[1] > self.priorities[0])
    }

    fn advert_int_text(&self) -> String {
        if self.advert_int_cs.is_multiple_of(100) {
            (self.advert_int_cs / 100).to_string()
        } else {
            format!(
                "{}.{:02}",
                self.advert_int_cs / 100,
                self.advert_int_cs % 100
            )
        }
    }

    fn state(&self, i: usize) -> &'static str {
        if self.master_hint && self.preferred() == i {
            "MASTER"
        } else {
            "BACKUP"
        }
    }

    fn check(&self) -> Result<()> {
        ensure!(matches!(self.version, 2 | 3), "version {}", self.version);
        ensure!(
            self.version == 3 || self.advert_int_cs.is_multiple_of(100),
            "VRRPv2 intervals are whole seconds"
        );
        ensure!(
            self.version == 3 || self.vip.is_ipv4(),
            "VRRPv2 is IPv4 only"
        );
        ensure!(
            self.preempt || !self.master_hint,
            "keepalived clears nopreempt with state MASTER"
        );
        Ok(())
    }

    /// Our daemon's configuration for node `i`.
    pub fn ours_toml(&self, i: usize) -> String {
        self.ours_toml_with(i, self.priorities[i], &[])
    }

    /// [`VrrpParams::ours_toml`] with another priority and more VIPs (for reloads).
    pub fn ours_toml_with(&self, i: usize, priority: u8, more_vips: &[IpAddr]) -> String {
        let mut c = self.ours_head(i, priority);
        if self.use_vmac {
            c += "use_vmac = true\n";
        }
        if self.vmac_xmit_base {
            c += "vmac_xmit_base = true\n";
        }
        let vips: Vec<String> = std::iter::once(&self.vip)
            .chain(more_vips)
            .map(|v| format!("\"{v}/{}\"", self.vip_prefix()))
            .collect();
        c += &format!("virtual_ipaddress = [{}]\n", vips.join(", "));
        c
    }

    /// The interface the VIP lives on: `vrrp.VRID` with [`VrrpParams::use_vmac`].
    pub fn vip_interface(&self) -> String {
        if self.use_vmac {
            format!("vrrp.{}", self.vrid)
        } else {
            HOST_IF.to_string()
        }
    }

    fn ours_head(&self, i: usize, priority: u8) -> String {
        let mut c = format!(
            "[global_defs]\nrouter_id = \"node{i}\"\nvrrp_version = {}\n\n[[vrrp_instance]]\n\
             name = \"{INSTANCE}\"\nstate = \"{}\"\ninterface = \"{HOST_IF}\"\n\
             virtual_router_id = {}\npriority = {}\nadvert_int = {}\n",
            self.version,
            self.state(i),
            self.vrid,
            priority,
            self.advert_int_text()
        );
        if !self.preempt {
            c += "nopreempt = true\n";
        }
        if let (2, Some(pass)) = (self.version, &self.auth_pass) {
            c += &format!("authentication = {{ auth_type = \"PASS\", auth_pass = \"{pass}\" }}\n");
        }
        c
    }

    /// keepalived.conf for node `i`.
    pub fn keepalived_conf(&self, i: usize) -> String {
        let mut c = format!(
            "global_defs {{\n    router_id node{i}\n    vrrp_version {}\n}}\n\n\
             vrrp_instance {INSTANCE} {{\n    state {}\n    interface {HOST_IF}\n    \
             virtual_router_id {}\n    priority {}\n    advert_int {}\n",
            self.version,
            self.state(i),
            self.vrid,
            self.priorities[i],
            self.advert_int_text()
        );
        if !self.preempt {
            c += "    nopreempt\n";
        }
        if self.use_vmac {
            c += "    use_vmac\n";
        }
        if self.vmac_xmit_base {
            c += "    vmac_xmit_base\n";
        }
        if let (2, Some(pass)) = (self.version, &self.auth_pass) {
            c += &format!(
                "    authentication {{\n        auth_type PASS\n        auth_pass {pass}\n    }}\n"
            );
        }
        c += &format!(
            "    virtual_ipaddress {{\n        {}/{}\n    }}\n}}\n",
            self.vip,
            self.vip_prefix()
        );
        c
    }
}

// ---------------------------------------------------------------------------------------------
// keepalived statistics
// ---------------------------------------------------------------------------------------------

/// keepalived's `SIGUSR2` dump (`keepalived.stats`) for one instance, as `section/key -> n`
/// (`Advertisements/Received`, `Packet Errors/TTL`, `Authentication Errors/Failure`,
/// `Became master`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepalivedStats(pub BTreeMap<String, u64>);

impl KeepalivedStats {
    /// Parses the block of `instance` in a stats dump.
    pub fn parse(text: &str, instance: &str) -> Result<Self> {
        let mut map = BTreeMap::new();
        let mut inside = false;
        let mut section = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("VRRP Instance:") {
                inside = name.trim() == instance;
                continue;
            }
            if !inside || line.trim().is_empty() {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                section = key.to_string();
                continue;
            }
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            let path = if indent > 2 && !section.is_empty() {
                format!("{section}/{key}")
            } else {
                key.to_string()
            };
            map.insert(path, n);
        }
        ensure!(
            !map.is_empty(),
            "no statistics for {instance} in the dump:\n{text}"
        );
        Ok(KeepalivedStats(map))
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    /// `Advertisements/Received`.
    pub fn received(&self) -> u64 {
        self.get("Advertisements/Received")
    }

    /// The non-zero receive error counters (`Packet Errors/*`, `Authentication Errors/*`).
    pub fn errors(&self) -> Vec<(String, u64)> {
        self.0
            .iter()
            .filter(|(k, v)| {
                **v > 0
                    && (k.starts_with("Packet Errors/") || k.starts_with("Authentication Errors/"))
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

enum Running {
    Ours(Proc),
    Keepalived {
        parent: Proc,
        /// The VRRP child, from its pid file; in the parent's process group.
        child: u32,
    },
}

struct Node {
    ns: Netns,
    peer: Peer,
    params: VrrpParams,
    index: usize,
    running: Option<Running>,
    /// One log per run, in order.
    logs: Vec<PathBuf>,
    runs: u32,
    /// The node's bridge port (`to-n1`, `to-n2`) in the bridge namespace.
    port_ifindex: u32,
}

/// `/proc/PID/stat` fields 3 (state) and 5 (pgrp), if the process exists.
fn proc_state_pgrp(pid: u32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, pgrp))
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// True while `pid` is a live (not zombie) keepalived in process group `pgrp`.
fn keepalived_alive_in(pid: u32, pgrp: u32) -> bool {
    matches!(proc_state_pgrp(pid), Some((s, g)) if s != 'Z' && g == pgrp as i32)
        && comm(pid) == "keepalived"
}

/// A node's FIFO path and the reader script keepalived's `notify_fifo_script` and ours are
/// given: it appends each line it reads to [`FIFO_LOG`].
fn fifo_reader(dir: &std::path::Path) -> Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let fifo = dir.join("events.fifo");
    let reader = dir.join("fifo-reader.sh");
    let log = dir.join(FIFO_LOG);
    fs::write(
        &reader,
        format!(
            "#!/bin/sh\nwhile read -r line; do echo \"$line\" >> {}; done < \"$1\"\n",
            log.display()
        ),
    )?;
    fs::set_permissions(&reader, fs::Permissions::from_mode(0o755))?;
    Ok((
        fifo.to_str().context("path")?.to_string(),
        reader.to_str().context("path")?.to_string(),
    ))
}

impl Node {
    fn is_running(&self) -> bool {
        match &self.running {
            None => false,
            Some(Running::Ours(p)) => p.is_running(),
            Some(Running::Keepalived { parent, .. }) => parent.is_running(),
        }
    }

    fn start(&mut self) -> Result<()> {
        ensure!(!self.is_running(), "node {} already runs", self.index);
        self.running = None;
        self.runs += 1;
        let run = self.runs;
        let dir = self.ns.dir().to_path_buf();
        match self.peer {
            Peer::Ours => {
                let cfg = dir.join(format!("ours-{run}.toml"));
                let mut text = self.params.ours_toml(self.index);
                if self.params.fifo {
                    let (fifo, reader) = fifo_reader(&dir)?;
                    text = text.replacen(
                        "[global_defs]\n",
                        &format!(
                            "[global_defs]\nnotify_fifo = \"{fifo}\"\n\
                             notify_fifo_format = \"keepalived\"\n\
                             notify_fifo_script = \"{reader}\"\nenable_script_security = false\n"
                        ),
                        1,
                    );
                }
                fs::write(&cfg, crate::lab::with_control_socket(&text, &dir))?;
                let bin = daemon_bin()?;
                let p = self.ns.spawn(&[
                    bin.to_str().context("daemon path")?,
                    "run",
                    "--config",
                    cfg.to_str().context("config path")?,
                ])?;
                self.logs
                    .push(p.stderr_path().context("daemon stderr")?.to_path_buf());
                self.running = Some(Running::Ours(p.clone()));
                let mut exited = false;
                let ready = wait_until(
                    &format!("our daemon on node {} to start", self.index),
                    Duration::from_secs(10),
                    || {
                        exited = !p.is_running();
                        exited || p.read_stderr().contains("VRRP state change")
                    },
                );
                if exited {
                    bail!("our daemon exited at once:\n{}", p.read_stderr());
                }
                ready.with_context(|| p.read_stderr())?;
            }
            Peer::Keepalived => {
                let cfg = dir.join(format!("keepalived-{run}.conf"));
                let mut text = self.params.keepalived_conf(self.index);
                if self.params.fifo {
                    let (fifo, reader) = fifo_reader(&dir)?;
                    text = text.replacen(
                        "global_defs {\n",
                        &format!(
                            "global_defs {{\n    notify_fifo {fifo}\n    notify_fifo_script {reader}\n"
                        ),
                        1,
                    );
                }
                fs::write(&cfg, text)?;
                let pid = dir.join(format!("keepalived-{run}.pid"));
                let vrrp_pid = dir.join(format!("keepalived-{run}-vrrp.pid"));
                let tmp = dir.join("tmp");
                fs::create_dir_all(&tmp)?;
                let log = dir.join(format!("keepalived-{run}.log"));
                let out = File::create(&log)?;
                let path = |p: &PathBuf| p.to_str().map(str::to_string).context("path");
                let mut cmd = self.ns.command(&[
                    "keepalived".to_string(),
                    "-n".into(),
                    "-l".into(),
                    "-D".into(),
                    "-P".into(),
                    "-G".into(),
                    "-f".into(),
                    path(&cfg)?,
                    "-p".into(),
                    path(&pid)?,
                    "-r".into(),
                    path(&vrrp_pid)?,
                ]);
                cmd.env("TMPDIR", &tmp)
                    .stdin(Stdio::null())
                    .stdout(out.try_clone()?)
                    .stderr(out)
                    // Its own process group (pgid = its pid): a hard failure kills the group,
                    // and nothing else is in it.
                    .process_group(0);
                let parent = self.ns.spawn_command(cmd)?;
                self.logs.push(log.clone());
                let mut child = None;
                let mut exited = false;
                let ready = wait_until(
                    &format!("keepalived on node {} to start", self.index),
                    Duration::from_secs(10),
                    || {
                        exited = !parent.is_running();
                        if child.is_none() {
                            child = fs::read_to_string(&vrrp_pid)
                                .ok()
                                .and_then(|s| s.trim().parse::<u32>().ok());
                        }
                        exited
                            || (child.is_some()
                                && fs::read_to_string(&log)
                                    .unwrap_or_default()
                                    .contains(&format!("({INSTANCE}) Entering")))
                    },
                );
                let text = || fs::read_to_string(&log).unwrap_or_default();
                if exited {
                    bail!("keepalived exited at once:\n{}", text());
                }
                ready.with_context(text)?;
                let child = child.context("no VRRP child pid")?;
                // The child must share the parent's group, or killing the group would not be a
                // hard failure of both.
                let (_, pgrp) = proc_state_pgrp(child).context("VRRP child gone")?;
                if pgrp != parent.pid() as i32 {
                    let _ = parent.kill();
                    bail!(
                        "keepalived's VRRP child {child} is in group {pgrp}, not {}",
                        parent.pid()
                    );
                }
                self.running = Some(Running::Keepalived { parent, child });
            }
        }
        Ok(())
    }

    /// SIGTERM; does not wait.
    fn terminate(&self) -> Result<()> {
        match &self.running {
            Some(Running::Ours(p)) => p.signal(libc::SIGTERM),
            Some(Running::Keepalived { parent, .. }) => parent.signal(libc::SIGTERM),
            None => Ok(()),
        }
    }

    /// Waits for the run to end after [`Node::terminate`]; SIGKILL after `grace`.
    fn wait_stopped(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        let status = match &self.running {
            None => return Ok(None),
            Some(Running::Ours(p)) => match p.wait_timeout(grace)? {
                Some(s) => s,
                None => {
                    eprintln!("vrrp_lab: node {} ignored SIGTERM", self.index);
                    p.kill()?
                }
            },
            Some(Running::Keepalived { parent, child }) => {
                let st = match parent.wait_timeout(grace)? {
                    Some(s) => s,
                    None => {
                        eprintln!(
                            "vrrp_lab: keepalived on node {} ignored SIGTERM",
                            self.index
                        );
                        self.kill_group()?;
                        parent.kill()?
                    }
                };
                let (child, pgrp) = (*child, parent.pid());
                // The parent waits for its child, but be sure.
                let _ = wait_until("keepalived's VRRP child to exit", grace, || {
                    !keepalived_alive_in(child, pgrp)
                });
                st
            }
        };
        self.running = None;
        Ok(Some(status))
    }

    /// SIGKILL to keepalived's whole process group (parent and VRRP child at once).
    fn kill_group(&self) -> Result<()> {
        if let Some(Running::Keepalived { parent, child }) = &self.running {
            // The parent is our unreaped child, so its pid (= the group id) is not reused.
            // If it is already gone, the child (if alive) still holds the group.
            let pgid = parent.pid();
            if parent.is_running() || keepalived_alive_in(*child, pgid) {
                // SAFETY: kill(2) on a process group we created and whose leader we hold.
                if unsafe { libc::kill(-(pgid as libc::pid_t), libc::SIGKILL) } != 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(e).context("killpg");
                    }
                }
            }
        }
        Ok(())
    }

    /// SIGKILL (ours), SIGKILL of the process group (keepalived); waits for the end.
    fn kill(&mut self) -> Result<()> {
        match &self.running {
            None => {}
            Some(Running::Ours(p)) => {
                p.kill()?;
            }
            Some(Running::Keepalived { parent, child }) => {
                self.kill_group()?;
                parent.kill()?;
                let (child, pgrp) = (*child, parent.pid());
                wait_until(
                    "keepalived's VRRP child to die",
                    Duration::from_secs(5),
                    || !keepalived_alive_in(child, pgrp),
                )?;
            }
        }
        self.running = None;
        Ok(())
    }

    fn log(&self) -> String {
        self.logs
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    fn has_vip(&self) -> bool {
        let fam = if self.params.vip.is_ipv4() {
            "-4"
        } else {
            "-6"
        };
        let want = format!(" {}/", self.params.vip);
        self.ns
            .ip(&[fam, "addr", "show", "dev", &self.params.vip_interface()])
            .is_ok_and(|o| o.contains(&want))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.terminate();
            if let Err(e) = self.wait_stopped(Duration::from_secs(3)) {
                eprintln!("vrrp_lab: stopping node {}: {e:#}", self.index);
            }
        } else if let Some(Running::Keepalived { .. }) = &self.running {
            // The parent is gone; make sure its child is too.
            let _ = self.kill_group();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Link switch (netlink)
// ---------------------------------------------------------------------------------------------

/// A NETLINK_ROUTE socket in the bridge namespace that sets ports up or down in one syscall
/// (an `ip link set` would cost a fork and exec, milliseconds, between the kill and the cut).
struct LinkSwitch {
    fd: OwnedFd,
    seq: u32,
}

impl LinkSwitch {
    fn open(ns: &Netns) -> Result<Self> {
        let fd = ns.run_in(|| {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })??;
        set_rcv_timeout(&fd, Duration::from_secs(2))?;
        Ok(LinkSwitch { fd, seq: 0 })
    }

    fn set(&mut self, ifindex: u32, up: bool) -> Result<()> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(32);
        msg.extend_from_slice(&32u32.to_ne_bytes());
        msg.extend_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct ifinfomsg
        msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        let flags = if up { libc::IFF_UP as u32 } else { 0 };
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes());
        // SAFETY: a zeroed sockaddr_nl with the family set is the kernel as destination.
        let mut dst: libc::sockaddr_nl = unsafe { zeroed() };
        dst.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&dst as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("netlink send");
        }
        let mut buf = [0u8; 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("netlink ack");
            }
            let b = &buf[..n as usize];
            ensure!(b.len() >= 20, "short netlink answer");
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
            if ty != libc::NLMSG_ERROR as u16 || seq != self.seq {
                continue;
            }
            let err = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
            if err != 0 {
                return Err(io::Error::from_raw_os_error(-err))
                    .with_context(|| format!("setting link {ifindex} up={up}"));
            }
            return Ok(());
        }
    }
}

fn set_rcv_timeout(fd: &OwnedFd, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a timeval of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// A client and two VRRP nodes on a bridge (see the module doc). Drop stops both nodes
/// (SIGTERM, then SIGKILL of what is left), then deletes the namespaces.
pub struct VrrpLab {
    prefix: String,
    // Field order is drop order: nodes and client first, the bridge last.
    nodes: [Node; 2],
    client: Netns,
    lan: Lan,
    links: Mutex<LinkSwitch>,
}

impl fmt::Debug for VrrpLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VrrpLab({}, {} + {})",
            self.prefix, self.nodes[0].peer, self.nodes[1].peer
        )
    }
}

impl VrrpLab {
    /// Builds the LAN (nothing runs yet): `prefix` from [`crate::netns::unique_prefix`],
    /// `peers[i]` runs on node `i`.
    pub fn new(prefix: &str, params: &VrrpParams, peers: [Peer; 2]) -> Result<Self> {
        params.check()?;
        let lan = Lan::new(prefix)?;
        let client = lan.host("c", 1, CLIENT_V4, CLIENT_V6)?;
        let mut nodes = Vec::new();
        for (i, peer) in peers.into_iter().enumerate() {
            let suffix = format!("n{}", i + 1);
            let ns = lan.host(&suffix, 2 + i as u8, node_v4(i), node_v6(i))?;
            let port_ifindex = lan.bridge().ifindex(&format!("to-{suffix}"))?;
            nodes.push(Node {
                ns,
                peer,
                params: params.clone(),
                index: i,
                running: None,
                logs: Vec::new(),
                runs: 0,
                port_ifindex,
            });
        }
        let links = Mutex::new(LinkSwitch::open(lan.bridge())?);
        let [n0, n1]: [Node; 2] = nodes.try_into().map_err(|_| anyhow!("two nodes"))?;
        Ok(VrrpLab {
            prefix: prefix.to_string(),
            nodes: [n0, n1],
            client,
            lan,
            links,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn bridge(&self) -> &Netns {
        self.lan.bridge()
    }

    /// Node `i`'s namespace.
    pub fn node(&self, i: usize) -> &Netns {
        &self.nodes[i].ns
    }

    pub fn peer(&self, i: usize) -> Peer {
        self.nodes[i].peer
    }

    pub fn params(&self, i: usize) -> &VrrpParams {
        &self.nodes[i].params
    }

    /// Changes node `i`'s parameters for its next start: only for tests that mean a mismatch
    /// (a wrong password...); everything else keeps the one shared [`VrrpParams`].
    pub fn params_mut(&mut self, i: usize) -> &mut VrrpParams {
        &mut self.nodes[i].params
    }

    /// Where node `i`'s adverts come from: its IPv4 address, or for IPv6 its link-local one.
    pub fn advert_source(&self, i: usize) -> Result<IpAddr> {
        if self.nodes[i].params.vip.is_ipv4() {
            return Ok(node_v4(i).into());
        }
        let out = self.nodes[i]
            .ns
            .ip(&["-6", "-o", "addr", "show", "dev", HOST_IF, "scope", "link"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
            .map(IpAddr::from)
            .with_context(|| format!("no link-local address on node {i}: {out}"))
    }

    /// Starts node `i` and waits until it runs (our daemon logged its first state change;
    /// keepalived wrote its VRRP child's pid file and entered a state).
    pub fn start(&mut self, i: usize) -> Result<()> {
        self.nodes[i].start()
    }

    /// Writes `toml` (our TOML, with the node's control socket added) over the file node
    /// `i`'s running daemon was started with, and has it reload: the daemon's answer, or
    /// its refusal as the error.
    pub fn reload_ours(&self, i: usize, toml: &str) -> Result<String> {
        let node = &self.nodes[i];
        ensure!(
            matches!(node.running, Some(Running::Ours(_))),
            "node {i} runs no daemon of ours"
        );
        let dir = node.ns.dir();
        let cfg = dir.join(format!("ours-{}.toml", node.runs));
        fs::write(&cfg, crate::lab::with_control_socket(toml, dir))?;
        let out = std::process::Command::new(daemon_bin()?)
            .args(["reload", "--socket"])
            .arg(dir.join("ctl.sock"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "node {i} reload refused: {}",
            text.trim()
        );
        Ok(text)
    }

    /// Node `i`'s `lb-daemon status --json` (our daemon).
    pub fn status_ours(&self, i: usize) -> Result<serde_json::Value> {
        let out = std::process::Command::new(daemon_bin()?)
            .args(["status", "--json", "--socket"])
            .arg(self.nodes[i].ns.dir().join("ctl.sock"))
            .output()?;
        ensure!(
            out.status.success(),
            "node {i} status: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    pub fn start_both(&mut self) -> Result<()> {
        self.start(0)?;
        self.start(1)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// SIGTERM (a graceful stop: priority-0 advert, VIP released) without waiting; returns the
    /// instant just before the signal (the node may have answered it before `kill(2)` returns).
    pub fn terminate(&self, i: usize) -> Result<Instant> {
        let t = Instant::now();
        self.nodes[i].terminate()?;
        Ok(t)
    }

    /// Waits for node `i` to exit after [`VrrpLab::terminate`] (SIGKILL after 5 s).
    pub fn wait_stopped(&mut self, i: usize) -> Result<Option<ExitStatus>> {
        self.nodes[i].wait_stopped(Duration::from_secs(5))
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&mut self, i: usize) -> Result<Option<ExitStatus>> {
        self.terminate(i)?;
        self.wait_stopped(i)
    }

    /// Hard failure of the process: SIGKILL of our daemon, or of keepalived's whole process
    /// group. Returns the instant just before the signal. The VIP stays on the node.
    pub fn kill(&mut self, i: usize) -> Result<Instant> {
        let t = Instant::now();
        self.nodes[i].kill()?;
        Ok(t)
    }

    /// A dead machine: the node's bridge port down (it neither advertises nor answers from
    /// then on), then SIGKILL as [`VrrpLab::kill`]. Returns the instant before the port went
    /// down. The port goes first because it is what the network sees. Killed first, the
    /// daemons do not die alike (keepalived's process group is two or three processes, ours
    /// one), and the node answers probes until its port is down: with the kill first, the
    /// last reply before the failover gap came 0.3 to 0.4 ms later after the old master's
    /// last advert on keepalived's pair than on ours (medians over 15 trials), a head start
    /// the benchmark credited to keepalived.
    pub fn crash(&mut self, i: usize) -> Result<Instant> {
        let t = Instant::now();
        self.set_link(i, false)?;
        match &self.nodes[i].running {
            Some(Running::Ours(p)) => p.signal(libc::SIGKILL)?,
            Some(Running::Keepalived { .. }) => self.nodes[i].kill_group()?,
            None => {}
        }
        self.nodes[i].kill()?;
        Ok(t)
    }

    /// Node `i`'s bridge port up or down.
    pub fn set_link(&self, i: usize, up: bool) -> Result<()> {
        self.links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(self.nodes[i].port_ifindex, up)
    }

    /// Sets the port of a [`VrrpLab::crash`]ed node up again (the node is not restarted).
    pub fn revive(&self, i: usize) -> Result<()> {
        self.set_link(i, true)
    }

    /// Whether the VIP is configured on node `i`'s interface (whether or not it runs).
    pub fn has_vip(&self, i: usize) -> bool {
        self.nodes[i].has_vip()
    }

    /// The node that holds the VIP among the running ones, if exactly one does. (A killed
    /// node keeps the address configured; it is not counted.)
    pub fn holder(&self) -> Option<usize> {
        let holders: Vec<usize> = (0..2)
            .filter(|&i| self.nodes[i].is_running() && self.has_vip(i))
            .collect();
        match holders[..] {
            [i] => Some(i),
            _ => None,
        }
    }

    /// Waits until node `i` holds the VIP and the other running node does not; returns how
    /// long it took. The error carries both logs.
    pub fn wait_holder(&self, i: usize, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        wait_until(
            &format!("node {i} ({}) to hold the VIP alone", self.nodes[i].peer),
            timeout,
            || self.holder() == Some(i),
        )
        .with_context(|| self.logs_for_error())?;
        Ok(t.elapsed())
    }

    /// The MAC address the client's neighbour table holds for the VIP.
    pub fn client_vip_mac(&self) -> Option<[u8; 6]> {
        self.client
            .neigh_mac(&self.nodes[0].params.vip.to_string())
            .ok()
            .flatten()
    }

    /// Waits until the client's neighbour entry for the VIP is node `i`'s MAC, pinging the VIP
    /// once per try (a ping refreshes or creates the entry).
    pub fn wait_client_follows(&self, i: usize, timeout: Duration) -> Result<()> {
        // The interface that answers for the VIP: the virtual MAC's with use_vmac.
        let mac = self.nodes[i]
            .ns
            .mac(&self.nodes[i].params.vip_interface())?;
        let vip = self.nodes[0].params.vip.to_string();
        wait_until(
            &format!("the client's neighbour entry for the VIP to be node {i}'s MAC"),
            timeout,
            || {
                self.client_vip_mac() == Some(mac) || {
                    let _ = self.client.exec(&["ping", "-c", "1", "-W", "1", &vip]);
                    self.client_vip_mac() == Some(mac)
                }
            },
        )
        .with_context(|| self.logs_for_error())
    }

    /// Every run's log of node `i`, in order.
    pub fn log(&self, i: usize) -> String {
        self.nodes[i].log()
    }

    /// The lines of node `i`'s logs that say an advert was refused: our daemon's
    /// [`OURS_REJECTION`] lines; keepalived's [`KEEPALIVED_REJECTIONS`], and any other line
    /// with a word of trouble in it (invalid, bad, ttl, checksum, auth, mismatch, wrong,
    /// error), except its command-line echo.
    pub fn rejections(&self, i: usize) -> Vec<String> {
        let log = self.log(i);
        match self.nodes[i].peer {
            Peer::Ours => log
                .lines()
                .filter(|l| l.contains(OURS_REJECTION))
                .map(str::to_string)
                .collect(),
            Peer::Keepalived => keepalived_rejections(&log),
        }
    }

    /// Our daemon's state changes on node `i`, as `(from, to)`, over all runs.
    pub fn ours_transitions(&self, i: usize) -> Vec<(String, String)> {
        let field = |l: &str, k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
                .unwrap_or_default()
        };
        self.log(i)
            .lines()
            .filter(|l| l.contains("VRRP state change"))
            .map(|l| (field(l, "from="), field(l, "to=")))
            .collect()
    }

    /// keepalived's statistics on node `i` (it must be running keepalived): `SIGUSR2` to the
    /// parent, which has the VRRP child write `$TMPDIR/keepalived.stats`.
    pub fn keepalived_stats(&self, i: usize) -> Result<KeepalivedStats> {
        let node = &self.nodes[i];
        let Some(Running::Keepalived { parent, .. }) = &node.running else {
            bail!("node {i} runs no keepalived");
        };
        let file = node.ns.dir().join("tmp").join("keepalived.stats");
        let _ = fs::remove_file(&file);
        parent.signal(libc::SIGUSR2)?;
        let mut text = String::new();
        wait_until("keepalived.stats", Duration::from_secs(5), || {
            text = fs::read_to_string(&file).unwrap_or_default();
            // Written in one go at the end of the dump; the last section is "Priority Zero".
            text.contains("Priority Zero")
                && text.trim_end().ends_with(|c: char| c.is_ascii_digit())
        })?;
        // Let a dump in progress finish.
        std::thread::sleep(Duration::from_millis(20));
        let text = fs::read_to_string(&file)?;
        KeepalivedStats::parse(&text, INSTANCE)
    }

    /// Both logs, for error messages.
    pub fn logs_for_error(&self) -> String {
        (0..2)
            .map(|i| {
                format!(
                    "---- node {i} ({}) log ----\n{}",
                    self.nodes[i].peer,
                    self.log(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A 1 ms (or `interval`) echo stream from the client to the VIP.
    pub fn prober(&self, interval: Duration) -> Result<Prober> {
        Prober::start(&self.client, self.nodes[0].params.vip, interval)
    }

    /// Records the VRRP adverts the client sees.
    pub fn advert_watch(&self) -> Result<AdvertWatch> {
        AdvertWatch::start(&self.client, HOST_IF)
    }
}

/// keepalived lines that say an advert was refused (see [`VrrpLab::rejections`]).
pub fn keepalived_rejections(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            if l.contains("Command line:") || l.contains("              '") {
                return false;
            }
            if KEEPALIVED_REJECTIONS.iter().any(|p| l.contains(p)) {
                return true;
            }
            // The text after keepalived's timestamp ("Wed Nov 25 08:14:43 2026: ").
            let msg = l.split_once(": ").map_or(*l, |(_, m)| m).to_lowercase();
            KEEPALIVED_SUSPECT_WORDS.iter().any(|w| msg.contains(w))
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------------------------

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn connect(fd: &OwnedFd, ip: IpAddr) -> io::Result<()> {
    // SAFETY: zeroed sockaddr structures filled in below, passed with their own sizes.
    let r = unsafe {
        match ip {
            IpAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                libc::connect(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
            IpAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_addr.s6_addr = a.octets();
                libc::connect(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in6).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        }
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the calling thread SCHED_FIFO (priority 10) when allowed, so that other load on the
/// machine does not delay the probes or their time stamps; silently keeps the normal policy
/// otherwise.
fn realtime_thread() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread (tid 0) with a valid parameter.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

// ---------------------------------------------------------------------------------------------
// Prober
// ---------------------------------------------------------------------------------------------

static PROBE_ID: AtomicU16 = AtomicU16::new(0);

#[derive(Default)]
struct ProbeLog {
    sent: u64,
    /// Receive time of every echo reply, in order.
    replies: Vec<Instant>,
    /// Replies for a sequence number already answered.
    duplicates: u64,
    seen: Vec<bool>,
}

/// An ICMP echo stream from the client to the VIP (see the module doc).
pub struct Prober {
    target: IpAddr,
    interval: Duration,
    started: Instant,
    stop: Arc<AtomicBool>,
    /// Where the sender's grid restarts ([`Prober::align`]).
    realign: Arc<Mutex<Option<Instant>>>,
    log: Arc<Mutex<ProbeLog>>,
    threads: Vec<JoinHandle<()>>,
}

/// An interval between two consecutive echo replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub from: Instant,
    pub to: Instant,
}

impl Gap {
    pub fn len(&self) -> Duration {
        self.to - self.from
    }
}

/// What a [`Prober`] saw.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub target: IpAddr,
    pub interval: Duration,
    pub started: Instant,
    pub stopped: Instant,
    pub sent: u64,
    pub replies: Vec<Instant>,
    pub duplicates: u64,
}

impl ProbeReport {
    /// Echo requests that got no reply.
    pub fn lost(&self) -> u64 {
        self.sent
            .saturating_sub(self.replies.len() as u64 - self.duplicates)
    }

    /// The longest interval between two consecutive replies: the failover time.
    pub fn longest_gap(&self) -> Option<Gap> {
        self.replies
            .windows(2)
            .map(|w| Gap {
                from: w[0],
                to: w[1],
            })
            .max_by_key(Gap::len)
    }

    /// The interval between the last reply at or before `t` and the first one after it.
    pub fn gap_around(&self, t: Instant) -> Option<Gap> {
        let after = self.replies.partition_point(|r| *r <= t);
        Some(Gap {
            from: *self.replies.get(after.checked_sub(1)?)?,
            to: *self.replies.get(after)?,
        })
    }

    /// Replies received after `t`.
    pub fn replies_after(&self, t: Instant) -> usize {
        self.replies.len() - self.replies.partition_point(|r| *r <= t)
    }
}

impl Prober {
    /// Starts the sender and receiver threads; the raw socket is made in `client`'s namespace.
    pub fn start(client: &Netns, target: IpAddr, interval: Duration) -> Result<Prober> {
        let fd = client.run_in(move || match target {
            IpAddr::V4(_) => socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
            IpAddr::V6(_) => socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6),
        })??;
        // Only the target's packets reach the socket.
        connect(&fd, target).context("connect the probe socket")?;
        set_rcv_timeout(&fd, Duration::from_millis(20))?;
        let fd = Arc::new(fd);
        let id = (std::process::id() as u16) ^ PROBE_ID.fetch_add(0x1111, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let realign = Arc::new(Mutex::new(None::<Instant>));
        let started = Instant::now();
        let v6 = target.is_ipv6();
        let sender = {
            let (fd, stop, log) = (fd.clone(), stop.clone(), log.clone());
            let realign = realign.clone();
            std::thread::Builder::new()
                .name("vrrp-probe-tx".into())
                .spawn(move || {
                    realtime_thread();
                    let mut seq: u32 = 0;
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
                        pkt.extend_from_slice(&id.to_be_bytes());
                        pkt.extend_from_slice(&(seq as u16).to_be_bytes());
                        pkt.extend_from_slice(&seq.to_be_bytes());
                        pkt.extend_from_slice(b"vrrp-lab");
                        if !v6 {
                            let c = inet_checksum(&pkt);
                            pkt[2..4].copy_from_slice(&c.to_be_bytes());
                        }
                        // The slot exists before the send: over veth the reply can be
                        // delivered (and read by the receiver) before send() returns.
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .seen
                            .push(false);
                        // SAFETY: pkt is valid for its length; the socket is connected.
                        let n = unsafe {
                            libc::send(fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0)
                        };
                        if n >= 0 {
                            log.lock().unwrap_or_else(|e| e.into_inner()).sent += 1;
                        }
                        seq += 1;
                        next += interval;
                        if let Some(at) = realign.lock().unwrap_or_else(|e| e.into_inner()).take() {
                            next = at;
                        }
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else if now - next > interval * 10 {
                            // Far behind (a stall): do not send a burst to catch up.
                            next = now;
                        }
                    }
                })?
        };
        let receiver = {
            let (fd, stop, log) = (fd.clone(), stop.clone(), log.clone());
            std::thread::Builder::new()
                .name("vrrp-probe-rx".into())
                .spawn(move || {
                    realtime_thread();
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        // SAFETY: buf is valid for its length.
                        let n = unsafe {
                            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                        };
                        let at = Instant::now();
                        if n <= 0 {
                            continue;
                        }
                        let b = &buf[..n as usize];
                        // IPv4 raw sockets deliver the IP header, IPv6 ones do not.
                        let icmp = if v6 {
                            b
                        } else {
                            let ihl = usize::from(b[0] & 0x0f) * 4;
                            match b.get(ihl..) {
                                Some(p) => p,
                                None => continue,
                            }
                        };
                        let reply_type = if v6 { 129 } else { 0 };
                        if icmp.len() < 12
                            || icmp[0] != reply_type
                            || u16::from_be_bytes([icmp[4], icmp[5]]) != id
                        {
                            continue;
                        }
                        let seq = u32::from_be_bytes([icmp[8], icmp[9], icmp[10], icmp[11]]);
                        let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                        match l.seen.get_mut(seq as usize) {
                            Some(s) if *s => l.duplicates += 1,
                            Some(s) => *s = true,
                            None => continue,
                        }
                        l.replies.push(at);
                    }
                })?
        };
        Ok(Prober {
            target,
            interval,
            started,
            stop,
            realign,
            log,
            threads: vec![sender, receiver],
        })
    }

    /// Restarts the probe grid at `first` (then every interval from there). It takes effect
    /// at the sender's next wake-up, within one interval: `first` must lie further ahead.
    pub fn align(&self, first: Instant) {
        *self.realign.lock().unwrap_or_else(|e| e.into_inner()) = Some(first);
    }

    /// Replies so far.
    pub fn replies(&self) -> usize {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replies
            .len()
    }

    /// Replies received after `t`.
    pub fn replies_after(&self, t: Instant) -> usize {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.replies.len() - l.replies.partition_point(|r| *r <= t)
    }

    /// Waits until `n` replies have come after `t`.
    pub fn wait_replies_after(&self, t: Instant, n: usize, timeout: Duration) -> Result<()> {
        wait_until(
            &format!("{n} echo replies from {}", self.target),
            timeout,
            || self.replies_after(t) >= n,
        )
    }

    /// Stops the threads and returns what they saw.
    pub fn stop(mut self) -> ProbeReport {
        self.halt();
        let l = std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()));
        ProbeReport {
            target: self.target,
            interval: self.interval,
            started: self.started,
            stopped: Instant::now(),
            sent: l.sent,
            replies: l.replies,
            duplicates: l.duplicates,
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------------------------
// Advert watch
// ---------------------------------------------------------------------------------------------

/// One VRRP advert as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub at: Instant,
    pub src: IpAddr,
    pub ttl: u8,
    /// The IPv4 TOS byte or the IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    pub version: u8,
    pub vrid: u8,
    pub priority: u8,
    /// Centiseconds (v2: the Adver Int in seconds times 100).
    pub interval_cs: u16,
}

/// Parses an IPv4 or IPv6 packet carrying VRRP (protocol 112).
pub fn parse_advert(at: Instant, ip: &[u8]) -> Option<Advert> {
    let (src, ttl, tos, vrrp): (IpAddr, u8, u8, &[u8]) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if *ip.get(9)? != 112 {
                return None;
            }
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            (src.into(), ip[8], ip[1], ip.get(ihl..)?)
        }
        6 => {
            if *ip.get(6)? != 112 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            // Version (4 bits), traffic class (8), flow label (20).
            let tclass = (ip[0] << 4) | (ip[1] >> 4);
            (src.into(), ip[7], tclass, ip.get(40..)?)
        }
        _ => return None,
    };
    let v = vrrp.get(..8)?;
    let version = v[0] >> 4;
    let interval_cs = match version {
        2 => u16::from(v[5]) * 100,
        _ => u16::from_be_bytes([v[4] & 0x0f, v[5]]),
    };
    Some(Advert {
        at,
        src,
        ttl,
        tos,
        version,
        vrid: v[1],
        priority: v[2],
        interval_cs,
    })
}

struct WatchShared {
    adverts: Mutex<Vec<Advert>>,
    /// Gratuitous ARPs: (arrival, sender IPv4 address).
    garps: Mutex<Vec<(Instant, IpAddr)>>,
    arrived: Condvar,
}

/// The sender address of a gratuitous ARP (sender and target address equal), or `None`.
fn parse_garp(arp: &[u8]) -> Option<IpAddr> {
    // htype 1, ptype IPv4, hlen 6, plen 4; sender IP at 14, target IP at 24.
    if arp.get(..6)? != [0, 1, 8, 0, 6, 4] {
        return None;
    }
    let spa: [u8; 4] = arp.get(14..18)?.try_into().ok()?;
    let tpa: [u8; 4] = arp.get(24..28)?.try_into().ok()?;
    (spa == tpa).then(|| IpAddr::from(spa))
}

/// Records every VRRP advert arriving on the client's interface (a packet socket: no
/// multicast membership needed), with its arrival time.
pub struct AdvertWatch {
    shared: Arc<WatchShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdvertWatch {
    pub fn start(ns: &Netns, ifname: &str) -> Result<Self> {
        let ifindex = ns.ifindex(ifname)?;
        let fd = ns.run_in(move || -> io::Result<OwnedFd> {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto))?;
            // SAFETY: a zeroed sockaddr_ll filled in, passed with its size.
            let r = unsafe {
                let mut sll: libc::sockaddr_ll = zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex as i32;
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(fd)
        })??;
        set_rcv_timeout(&fd, Duration::from_millis(20))?;
        let shared = Arc::new(WatchShared {
            adverts: Mutex::new(Vec::new()),
            garps: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vrrp-watch".into())
                .spawn(move || {
                    realtime_thread();
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        // SAFETY: zeroed sockaddr_ll and buffer, valid for their sizes.
                        let (n, sll) = unsafe {
                            let mut sll: libc::sockaddr_ll = zeroed();
                            let mut len = size_of::<libc::sockaddr_ll>() as u32;
                            let n = libc::recvfrom(
                                fd.as_raw_fd(),
                                buf.as_mut_ptr().cast(),
                                buf.len(),
                                0,
                                (&mut sll as *mut libc::sockaddr_ll).cast(),
                                &mut len,
                            );
                            (n, sll)
                        };
                        let at = Instant::now();
                        if n <= 0 || sll.sll_pkttype == libc::PACKET_OUTGOING {
                            continue;
                        }
                        let frame = &buf[..n as usize];
                        if sll.sll_protocol == (libc::ETH_P_ARP as u16).to_be() {
                            if let Some(ip) = parse_garp(frame) {
                                shared
                                    .garps
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push((at, ip));
                            }
                            continue;
                        }
                        if let Some(a) = parse_advert(at, frame) {
                            shared
                                .adverts
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(a);
                            shared.arrived.notify_all();
                        }
                    }
                })?
        };
        Ok(AdvertWatch {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Every advert so far.
    pub fn adverts(&self) -> Vec<Advert> {
        self.shared
            .adverts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the first advert after `after` that satisfies `pred`.
    pub fn wait_for(
        &self,
        what: &str,
        after: Instant,
        timeout: Duration,
        pred: impl Fn(&Advert) -> bool,
    ) -> Result<Advert> {
        let deadline = Instant::now() + timeout;
        let mut adverts = self
            .shared
            .adverts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(a) = adverts.iter().find(|a| a.at > after && pred(a)) {
                return Ok(a.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out after {timeout:?} waiting for an advert: {what}");
            }
            adverts = self
                .shared
                .arrived
                .wait_timeout(adverts, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The last advert from `src` at or before `t`.
    pub fn last_from_before(&self, src: IpAddr, t: Instant) -> Option<Advert> {
        self.adverts()
            .into_iter()
            .rev()
            .find(|a| a.src == src && a.at <= t)
    }

    /// The first gratuitous ARP for `ip` after `t`.
    pub fn first_garp_after(&self, ip: IpAddr, t: Instant) -> Option<Instant> {
        self.shared
            .garps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(at, a)| *a == ip && *at > t)
            .map(|(at, _)| *at)
    }

    /// The first advert from `src` after `t` with a non-zero priority.
    pub fn first_from_after(&self, src: IpAddr, t: Instant) -> Option<Advert> {
        self.adverts()
            .into_iter()
            .find(|a| a.src == src && a.at > t && a.priority > 0)
    }
}

impl Drop for AdvertWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_from_one_struct() {
        let p = VrrpParams::v2_seed();
        let ours = p.ours_toml(0);
        assert!(ours.contains("state = \"MASTER\""), "{ours}");
        assert!(ours.contains("priority = 150"), "{ours}");
        assert!(ours.contains("advert_int = 1\n"), "{ours}");
        assert!(ours.contains("auth_pass = \"123456\""), "{ours}");
        assert!(
            ours.contains("virtual_ipaddress = [\"192.0.2.100/24\"]"),
            "{ours}"
        );
        let ka = p.keepalived_conf(1);
        assert!(ka.contains("state BACKUP"), "{ka}");
        assert!(ka.contains("priority 100"), "{ka}");
        assert!(ka.contains("auth_pass 123456"), "{ka}");
        assert!(ka.contains("vrrp_version 2"), "{ka}");
        let v3 = VrrpParams::v3(1);
        assert!(v3.ours_toml(1).contains("advert_int = 0.01\n"));
        assert!(v3.keepalived_conf(0).contains("advert_int 0.01\n"));
        assert!(!v3.keepalived_conf(0).contains("auth"));
        assert_eq!(v3.master_down_interval(1), Duration::from_nanos(36_093_750));
        assert_eq!(p.master_down_interval(1), Duration::from_micros(3_609_375));
        assert_eq!(v3.skew(1), Duration::from_nanos(6_093_750));
        let v6 = VrrpParams::v3_ipv6(10);
        assert!(v6.ours_toml(0).contains("\"2001:db8::100/64\""));
        assert!(v6.keepalived_conf(0).contains("2001:db8::100/64"));
        assert!(v6.check().is_ok());
        assert!(VrrpParams {
            version: 2,
            ..VrrpParams::v3(10)
        }
        .check()
        .is_err());
    }

    #[test]
    fn keepalived_stats_dump() {
        let dump = "VRRP Instance: VI_1\n  Advertisements:\n    Received: 7\n    Sent: 2\n  \
                    Became master: 1\n  Released master: 0\n  Packet Errors:\n    Length: 0\n    \
                    TTL: 0\n  Authentication Errors:\n    Invalid Type: 0\n    Failure: 4\n  \
                    Priority Zero:\n    Received: 0\n    Sent: 0\n";
        let s = KeepalivedStats::parse(dump, INSTANCE).unwrap();
        assert_eq!(s.received(), 7);
        assert_eq!(s.get("Became master"), 1);
        assert_eq!(s.get("Priority Zero/Sent"), 0);
        assert_eq!(
            s.errors(),
            vec![("Authentication Errors/Failure".to_string(), 4)]
        );
        assert!(KeepalivedStats::parse(dump, "VI_2").is_err());
    }

    #[test]
    fn keepalived_rejection_lines() {
        let log =
            "Wed Nov 25 08:14:43 2026: Command line: 'keepalived' '-n' '-f' '/tmp/bad.conf'\n\
                   Wed Nov 25 08:14:43 2026: (VI_1) Entering BACKUP STATE (init)\n\
                   Wed Nov 25 08:14:46 2026: (VI_1) received an invalid passwd!\n\
                   Wed Nov 25 08:14:46 2026: (VI_1) Invalid VRRPv3 checksum\n\
                   Wed Nov 25 08:14:46 2026: (VI_1) Receive advertisement timeout\n";
        let r = keepalived_rejections(log);
        assert_eq!(r.len(), 2, "{r:?}");
    }

    #[test]
    fn advert_parsing() {
        // VRRPv3 over IPv4 from 192.0.2.2, TOS CS6: VRID 51, priority 150, 10 cs.
        let mut p = vec![
            0x45, 0xc0, 0, 32, 0, 0, 0, 0, 255, 112, 0, 0, 192, 0, 2, 2, 224, 0, 0, 18,
        ];
        let vrrp = [0x31, 51, 150, 1, 0, 10, 0, 0, 192, 0, 2, 100];
        p.extend_from_slice(&vrrp);
        let a = parse_advert(Instant::now(), &p).unwrap();
        assert_eq!(a.src, IpAddr::from([192, 0, 2, 2]));
        assert_eq!(
            (a.version, a.vrid, a.priority, a.interval_cs, a.ttl, a.tos),
            (3, 51, 150, 10, 255, 0xc0)
        );
        p[9] = 1;
        assert!(parse_advert(Instant::now(), &p).is_none());
        // Over IPv6 from 2001:db8::2, traffic class 0xc0 and a flow label (which must not
        // leak into it): 6c 0a bc de.
        let mut p = vec![0x6c, 0x0a, 0xbc, 0xde, 0, 12, 112, 255];
        p.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"ff02::12".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&vrrp);
        let a = parse_advert(Instant::now(), &p).unwrap();
        assert_eq!(a.src, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!((a.vrid, a.ttl, a.tos), (51, 255, 0xc0));
        p[0] = 0x60;
        assert_eq!(parse_advert(Instant::now(), &p).unwrap().tos, 0x00);
    }
}
