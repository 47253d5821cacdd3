//! A VRRP flood against a real `lb-daemon`: the `vrrp_flood_cpu` entry of `lb-bench daemon`,
//! and what `tests/tests/vrrp_flood.rs` checks of it (roles held, counts consistent, socket
//! drops visible in `lb-daemon status --json`).
//!
//! # Topology
//!
//! Two namespaces joined by one veth pair (no bridge: a bridge would spend the machine's
//! second core forwarding the flood):
//!
//! ```text
//!  {p}lb  eth0 192.0.2.2/24   lb-daemon run: VRRP only, VI_1 (v3, VRID 51, priority 150,
//!         │                   100 ms adverts, `state MASTER`), VIP 192.0.2.100; alone: MASTER
//!  {p}fl  eth0 192.0.2.1/24   the flooder: a raw protocol-112 socket sending to 224.0.0.18
//! ```
//!
//! # The flood
//!
//! Adverts the instance must discard: VRRPv3 for its own VRID 51, TTL 255, from a peer
//! address, built by the daemon's own codec and then given a wrong checksum. They pass the
//! cheap checks (TTL, own address, VRID) and are refused by the full parse, the costliest
//! path an invalid advert can take (`bad_checksum`, counted and logged at a limited rate).
//! A sender thread paces them at the target rate (batches of `sendmmsg`, topping up to
//! `rate x elapsed` every ~200 us).
//!
//! # `vrrp_flood_cpu`
//!
//! 100k adverts a second for 5 s. The daemon's VRRP thread (the thread named `vrrp`,
//! `vrrp::runtime::spawn`) is found in `/proc/<pid>/task/*/comm`, and its CPU time
//! (utime + stime of `/proc/<pid>/task/<tid>/stat`) read just before the flood starts and just
//! after it ends. **Value**: that CPU time over the flood's wall-clock time, in cores (1.0 =
//! one core busy all the time); target <= 0.5. The progress line also gives the rate
//! achieved, the instance's role before and after, its transitions during the flood, the
//! datagrams its interface received, the `bad_checksum` discards and the socket drops
//! (`socket_drops` of `lb-daemon status --json`).
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use lb_daemon::{
    model::VrrpVersion,
    os::set_option,
    vrrp::packet::{self, Addresses, AdverInt, Auth, IpPair, Repr},
};

use crate::{
    lab::{daemon_bin, with_control_socket},
    netns::{unique_prefix, wait_until, Netns, Proc},
    report::{Entry, Target},
};

fn progress(msg: &str) {
    eprintln!("lb-bench: {msg}");
}

/// The daemon's address, the flooder's, the VIP, the VRID and the instance's name.
pub const DAEMON_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const FLOODER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const VRID: u8 = 51;
pub const INSTANCE: &str = "VI_1";
/// The discard reason of the flood's adverts.
pub const FLOOD_REASON: &str = "bad_checksum";

/// The VRRP-only configuration of the daemon under the flood.
fn config() -> String {
    format!(
        "[global_defs]\nrouter_id = \"flood\"\n\n[[vrrp_instance]]\nname = \"{INSTANCE}\"\n\
         state = \"MASTER\"\ninterface = \"eth0\"\nvirtual_router_id = {VRID}\npriority = 150\n\
         advert_int = 0.1\nversion = 3\nvirtual_ipaddress = [\"{VIP}/24\"]\n"
    )
}

/// What `lb-daemon status --json` says of the instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceView {
    pub state: String,
    pub transitions: u64,
    pub discards: BTreeMap<String, u64>,
    pub socket_drops: u64,
}

impl InstanceView {
    /// The instance `name` of a status document.
    pub fn from_status(status: &serde_json::Value, name: &str) -> Result<Self> {
        let v = status["vrrp"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name))
            .with_context(|| format!("no VRRP instance {name} in the status: {status}"))?;
        let discards = v["discards"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            state: v["state"].as_str().unwrap_or_default().to_string(),
            transitions: v["transitions"].as_u64().unwrap_or(0),
            discards,
            socket_drops: v["socket_drops"].as_u64().with_context(|| {
                format!("no socket_drops for {name}: an lb-daemon built before it was added? {v}")
            })?,
        })
    }

    /// Discards under `reason`.
    pub fn discarded(&self, reason: &str) -> u64 {
        self.discards.get(reason).copied().unwrap_or(0)
    }
}

/// The daemon in its namespace and the flooder's namespace, joined by a veth pair. Drop stops
/// the daemon and deletes both namespaces.
pub struct FloodLab {
    /// First: dropped first, so the daemon stops before the link goes away.
    daemon_ns: Netns,
    peer: Netns,
    daemon: Proc,
    socket: PathBuf,
}

impl FloodLab {
    /// Sets up the namespaces and starts the daemon; returns once the instance is MASTER.
    pub fn new(tag: &str) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let daemon_ns = Netns::new(&format!("{prefix}lb"))?;
        let peer = Netns::new(&format!("{prefix}fl"))?;
        daemon_ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ])?;
        for (ns, addr) in [(&daemon_ns, DAEMON_V4), (&peer, FLOODER_V4)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
        }
        let path = daemon_ns.dir().join("lb.toml");
        std::fs::write(&path, with_control_socket(&config(), daemon_ns.dir()))?;
        let bin = daemon_bin()?;
        let daemon = daemon_ns.spawn(&[
            bin.to_str().context("path")?,
            "run",
            "--config",
            path.to_str().context("path")?,
        ])?;
        let socket = daemon_ns.dir().join("ctl.sock");
        let lab = Self {
            daemon_ns,
            peer,
            daemon,
            socket,
        };
        lab.wait_state("MASTER", Duration::from_secs(10))?;
        Ok(lab)
    }

    pub fn daemon(&self) -> &Proc {
        &self.daemon
    }

    pub fn daemon_ns(&self) -> &Netns {
        &self.daemon_ns
    }

    /// `lb-daemon status --json`, the command an operator runs.
    pub fn status(&self) -> Result<serde_json::Value> {
        let bin = daemon_bin()?;
        let out = std::process::Command::new(bin)
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .context("lb-daemon status --json")?;
        ensure!(
            out.status.success(),
            "lb-daemon status --json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).context("parsing lb-daemon status --json")
    }

    pub fn instance(&self) -> Result<InstanceView> {
        InstanceView::from_status(&self.status()?, INSTANCE)
    }

    /// Waits until the instance is in `state`.
    pub fn wait_state(&self, state: &str, timeout: Duration) -> Result<()> {
        let mut last = None;
        let mut exited = false;
        let r = wait_until(&format!("{INSTANCE} to be {state}"), timeout, || {
            exited = !self.daemon.is_running();
            let view = self.instance().ok();
            let done = exited || view.as_ref().is_some_and(|v| v.state == state);
            last = view;
            done
        });
        if exited {
            bail!("lb-daemon exited:\n{}", self.daemon.read_stderr());
        }
        r.with_context(|| format!("last: {last:?}\n{}", self.daemon.read_stderr()))
    }

    /// Waits until `pred` holds of the instance; returns the view that made it hold.
    pub fn wait_instance(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&InstanceView) -> bool,
    ) -> Result<InstanceView> {
        let mut last = None;
        let r = wait_until(what, timeout, || {
            last = self.instance().ok();
            last.as_ref().is_some_and(&mut pred)
        });
        r.with_context(|| format!("last: {last:?}\n{}", self.daemon.read_stderr()))?;
        last.context("no status")
    }

    pub fn peer(&self) -> &Netns {
        &self.peer
    }

    /// The flooder's socket, in the peer namespace, sending [`invalid_advert`]s.
    pub fn flooder(&self) -> Result<Flooder> {
        self.flooder_sending(invalid_advert()?)
    }

    /// The flooder's socket, sending `advert` (a VRRP message from [`FLOODER_V4`] to the
    /// group).
    pub fn flooder_sending(&self, advert: Vec<u8>) -> Result<Flooder> {
        let ifindex = self.peer.ifindex("eth0")?;
        let fd = self.peer.run_in(|| Flooder::socket(ifindex))??;
        Ok(Flooder { fd, advert })
    }

    /// The CPU time the daemon's VRRP thread has used so far.
    pub fn vrrp_thread_cpu(&self) -> Result<Duration> {
        let pid = self.daemon.pid();
        let tid = find_thread(pid, VRRP_THREAD)?;
        thread_cpu(pid, tid)
    }

    /// Packets the daemon's interface has received so far.
    pub fn rx_packets(&self) -> Result<u64> {
        rx_packets(&self.daemon_ns)
    }
}

/// Packets `eth0` of `ns` has received so far (`ip -s link`).
pub fn rx_packets(ns: &Netns) -> Result<u64> {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", "eth0"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -j -s link: {out}"))?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .with_context(|| format!("no rx packets in {out}"))
}

/// The name `vrrp::runtime::spawn` gives the VRRP thread.
pub const VRRP_THREAD: &str = "vrrp";

/// The thread of `pid` named `name` (its `comm`).
pub fn find_thread(pid: u32, name: &str) -> Result<u32> {
    let dir = format!("/proc/{pid}/task");
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let e = e?;
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            if let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) {
                return Ok(tid);
            }
        }
    }
    bail!("no thread named {name:?} in process {pid}")
}

/// utime + stime, in clock ticks, of a `/proc/<pid>/task/<tid>/stat` line. The name in
/// parentheses may hold spaces and parentheses itself: the fields are counted from the last
/// `)`.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (state); utime and stime are fields 14 and 15.
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU time thread `tid` of `pid` has used.
pub fn thread_cpu(pid: u32, tid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = stat_ticks(&stat).with_context(|| format!("no utime/stime in {path}: {stat}"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(hz > 0, "sysconf(_SC_CLK_TCK) = {hz}");
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// An advert for our VRID the instance must discard: a valid VRRPv3 advert from the flooder
/// to the group, its checksum then made wrong.
pub fn invalid_advert() -> Result<Vec<u8>> {
    let ip = IpPair::new(FLOODER_V4.into(), packet::MULTICAST_V4.into()).context("IP pair")?;
    let repr = Repr {
        version: VrrpVersion::V3,
        vrid: VRID,
        priority: 100,
        max_adver_int: AdverInt::from_centis(10),
        addresses: Addresses::V4(vec![VIP]),
        auth: Auth::None,
    };
    let mut bytes = repr.to_bytes(&ip).context("encoding the advert")?;
    let sum = packet::field::CHECKSUM;
    bytes[sum.start] ^= 0x55;
    bytes[sum.start + 1] ^= 0x55;
    // The instrument itself: the daemon's codec must refuse it for its checksum alone.
    match packet::parse(&bytes, &ip) {
        Err(e) if e.name() == FLOOD_REASON => Ok(bytes),
        other => bail!("the flood's advert parses as {other:?}, not as {FLOOD_REASON}"),
    }
}

/// A valid priority-0 advert for our VRID from the flooder: another router releasing, which
/// a master answers (RFC 9568 §6.4.3) at a bounded rate (issue 15, defect 6).
pub fn release_advert() -> Result<Vec<u8>> {
    let ip = IpPair::new(FLOODER_V4.into(), packet::MULTICAST_V4.into()).context("IP pair")?;
    let repr = Repr {
        version: VrrpVersion::V3,
        vrid: VRID,
        priority: 0,
        max_adver_int: AdverInt::from_centis(10),
        addresses: Addresses::V4(vec![VIP]),
        auth: Auth::None,
    };
    let bytes = repr.to_bytes(&ip).context("encoding the advert")?;
    let (parsed, _) = packet::parse(&bytes, &ip).context("the release advert must parse")?;
    ensure!(parsed.priority == 0, "{parsed:?}");
    Ok(bytes)
}

/// The daemon's advert interval ([`config`]).
pub const ADVERT_INT: Duration = Duration::from_millis(100);

/// A raw protocol-112 socket in the peer namespace, and the advert it floods.
pub struct Flooder {
    fd: OwnedFd,
    advert: Vec<u8>,
}

/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;

impl Flooder {
    /// Call in the peer namespace.
    fn socket(ifindex: u32) -> Result<OwnedFd> {
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                packet::IP_PROTO_VRRP.into(),
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(IPPROTO_VRRP)");
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ttl: libc::c_int = 255;
        let off: libc::c_int = 0;
        set_option(
            fd.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            &ttl,
            "IP_MULTICAST_TTL",
        )?;
        set_option(
            fd.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_LOOP,
            &off,
            "IP_MULTICAST_LOOP",
        )?;
        let mreqn = libc::ip_mreqn {
            imr_multiaddr: libc::in_addr { s_addr: 0 },
            imr_address: libc::in_addr { s_addr: 0 },
            imr_ifindex: ifindex as libc::c_int,
        };
        set_option(
            fd.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &mreqn,
            "IP_MULTICAST_IF",
        )?;
        Ok(fd)
    }

    /// Sends `n` (at most [`BATCH`]) copies of the advert to the group; returns how many went.
    fn send_batch(&self, n: usize) -> Result<usize> {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut dst: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        dst.sin_family = libc::AF_INET as libc::sa_family_t;
        dst.sin_addr.s_addr = u32::from_ne_bytes(packet::MULTICAST_V4.octets());
        let mut iov = libc::iovec {
            iov_base: self.advert.as_ptr() as *mut libc::c_void,
            iov_len: self.advert.len(),
        };
        // Every header points at the same destination and buffer, which outlive the call.
        let mut msgs: Vec<libc::mmsghdr> = (0..n.min(BATCH))
            .map(|_| {
                // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: `msgs` holds `len` initialised headers.
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("sendmmsg");
        }
        Ok(rc as usize)
    }

    /// Sends at `rate` datagrams a second until `stop` is set or `limit` has passed, adding
    /// each one sent to `sent`. Returns the wall-clock time it sent for.
    pub fn run(
        &self,
        rate: u64,
        limit: Duration,
        stop: &AtomicBool,
        sent: &AtomicU64,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut mine = 0u64;
        loop {
            let elapsed = start.elapsed();
            if stop.load(Ordering::Relaxed) || elapsed >= limit {
                return Ok(elapsed);
            }
            let due = (elapsed.as_secs_f64() * rate as f64) as u64;
            if mine < due {
                let n = self.send_batch((due - mine).min(BATCH as u64) as usize)?;
                mine += n as u64;
                sent.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                // Pacing, not waiting for a condition: the next batch is due in ~200 us.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// What a flood did and what the daemon made of it.
#[derive(Debug, Clone)]
pub struct FloodReport {
    pub rate_target: u64,
    pub sent: u64,
    pub seconds: f64,
    /// The VRRP thread's CPU time over the flood's wall-clock time, in cores.
    pub vrrp_cpu: f64,
    pub before: InstanceView,
    pub after: InstanceView,
    /// Packets the daemon's interface received during the flood.
    pub received: u64,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds
    }

    pub fn discarded(&self) -> u64 {
        self.after
            .discarded(FLOOD_REASON)
            .saturating_sub(self.before.discarded(FLOOD_REASON))
    }

    pub fn socket_drops(&self) -> u64 {
        self.after
            .socket_drops
            .saturating_sub(self.before.socket_drops)
    }

    pub fn transitions(&self) -> u64 {
        self.after
            .transitions
            .saturating_sub(self.before.transitions)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} adverts in {:.2} s ({:.0}/s, target {}/s); VRRP thread {:.3} cores; role {} -> {}, \
             {} transitions; interface received {}; discarded as {FLOOD_REASON} {}; socket drops {}",
            self.sent,
            self.seconds,
            self.rate(),
            self.rate_target,
            self.vrrp_cpu,
            self.before.state,
            self.after.state,
            self.transitions(),
            self.received,
            self.discarded(),
            self.socket_drops()
        )
    }

    /// What must hold whatever the timing: the instance stayed MASTER without a transition,
    /// it saw the flood, and the adverts it counted (discarded, or dropped by the kernel)
    /// are the ones its interface received (give or take [`RX_NOISE`]), which the flooder
    /// sent: none goes uncounted, none is counted twice.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.before.state == "MASTER" && self.after.state == "MASTER",
            "the role did not hold: {} -> {}",
            self.before.state,
            self.after.state
        );
        ensure!(
            self.transitions() == 0,
            "{} transitions during the flood",
            self.transitions()
        );
        ensure!(self.discarded() > 0, "no advert of the flood was discarded");
        let counted = self.discarded() + self.socket_drops();
        ensure!(
            counted <= self.received
                && self.received <= counted + RX_NOISE
                && self.received <= self.sent + RX_NOISE,
            "counted {counted} (discarded {} + dropped {}), received {}, sent {}",
            self.discarded(),
            self.socket_drops(),
            self.received,
            self.sent
        );
        Ok(())
    }
}

/// How long counts must stay put to be taken as final: several publication periods.
const SETTLED: Duration = Duration::from_millis(500);

/// Packets the daemon's interface may receive during a flood besides the flood's (the
/// peer's IPv6 neighbour discovery and MLD): a few.
const RX_NOISE: u64 = 50;

/// Floods the lab's daemon at `rate` for `duration`, measuring the VRRP thread's CPU time
/// over it; waits until the daemon has counted what it received before the last reading.
pub fn flood(lab: &FloodLab, rate: u64, duration: Duration) -> Result<FloodReport> {
    let flooder = lab.flooder()?;
    let before = lab.instance()?;
    ensure!(
        before.state == "MASTER",
        "{INSTANCE} is {} before the flood",
        before.state
    );
    let rx_before = lab.rx_packets()?;
    let (stop, sent) = (AtomicBool::new(false), AtomicU64::new(0));
    let cpu_before = lab.vrrp_thread_cpu()?;
    let t0 = Instant::now();
    let sent_for = flooder.run(rate, duration, &stop, &sent)?;
    let cpu_after = lab.vrrp_thread_cpu()?;
    let wall = t0.elapsed();
    let received = lab.rx_packets()?.saturating_sub(rx_before);
    // The daemon reads what is still queued, and publishes its counters, a moment later
    // (every 100 ms at most: `vrrp::runtime`'s PUBLISH_EVERY): wait until every flood
    // advert the interface took is accounted for, or for the counts to stay put for longer
    // than that (then `check` says what is missing).
    let base = (before.discarded(FLOOD_REASON), before.socket_drops);
    let counted = |v: &InstanceView| {
        v.discarded(FLOOD_REASON).saturating_sub(base.0) + v.socket_drops.saturating_sub(base.1)
    };
    let mut previous: Option<(u64, Instant)> = None;
    let after = lab
        .wait_instance(
            "the flood to be accounted for",
            Duration::from_secs(5),
            |v| {
                let n = counted(v);
                let settled = match previous {
                    Some((p, since)) if p == n => since.elapsed() >= SETTLED,
                    _ => {
                        previous = Some((n, Instant::now()));
                        false
                    }
                };
                n + RX_NOISE >= received || settled
            },
        )
        .or_else(|_| lab.instance())?;
    Ok(FloodReport {
        rate_target: rate,
        sent: sent.load(Ordering::Relaxed),
        seconds: sent_for.as_secs_f64(),
        vrrp_cpu: (cpu_after - cpu_before).as_secs_f64() / wall.as_secs_f64(),
        before,
        after,
        received,
    })
}

/// The flood of `vrrp_flood_cpu`.
pub const FLOOD_RATE: u64 = 100_000;
pub const FLOOD_TIME: Duration = Duration::from_secs(5);

/// `vrrp_flood_cpu`: the VRRP thread's CPU share under [`FLOOD_RATE`] invalid adverts a
/// second (see the module docs). An error when the flood could not run or the role did not
/// hold; a missed target is not one.
pub fn vrrp_flood_cpu() -> Result<Entry> {
    let name = "vrrp_flood_cpu";
    let lab = FloodLab::new("vfc")?;
    let r = flood(&lab, FLOOD_RATE, FLOOD_TIME)?;
    progress(&format!("{name}: {}", r.summary()));
    r.check()
        .with_context(|| format!("{name}: {}\n{}", r.summary(), lab.daemon().read_stderr()))?;
    Ok(Entry {
        name,
        value: r.vrrp_cpu,
        unit: "cores",
        baseline: None,
        target: Target::ValueAtMost(0.5),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_counts_from_the_last_parenthesis() {
        let line = "4242 (vrrp) S 1 4242 4242 0 -1 4194368 10 0 0 0 37 12 0 0 20 0 3 0 100 0 0";
        assert_eq!(stat_ticks(line), Some(49));
        let odd = "4242 (a) b) c) R 1 4242 4242 0 -1 4194368 10 0 0 0 5 6 0 0 20 0 3 0 100";
        assert_eq!(stat_ticks(odd), Some(11));
        assert_eq!(stat_ticks("4242 (vrrp) S 1 2"), None);
        assert_eq!(stat_ticks("no parenthesis"), None);
    }

    #[test]
    fn the_flood_adverts_are_what_they_claim() {
        let bytes = invalid_advert().unwrap();
        assert_eq!(bytes[1], VRID);
        assert_eq!(bytes[0] >> 4, 3);
        let release = release_advert().unwrap();
        assert_eq!((release[1], release[2]), (VRID, 0));
        assert!(config().contains("advert_int = 0.1\n"));
    }

    #[test]
    fn instance_view_reads_the_status_fields() {
        let status = serde_json::json!({"vrrp": [{"name": "VI_1", "state": "MASTER",
            "transitions": 1, "discards": {"bad_checksum": 5}, "socket_drops": 7}]});
        let v = InstanceView::from_status(&status, "VI_1").unwrap();
        assert_eq!(
            (v.state.as_str(), v.transitions, v.discarded("bad_checksum")),
            ("MASTER", 1, 5)
        );
        assert_eq!(v.socket_drops, 7);
        let old = serde_json::json!({"vrrp": [{"name": "VI_1", "state": "MASTER"}]});
        assert!(InstanceView::from_status(&old, "VI_1").is_err());
        assert!(InstanceView::from_status(&status, "VI_2").is_err());
    }

    fn report(sent: u64, received: u64, discarded: u64, drops: u64, after: &str) -> FloodReport {
        let view = |state: &str, d: u64, s: u64| InstanceView {
            state: state.into(),
            transitions: 1,
            discards: [(FLOOD_REASON.to_string(), d)].into_iter().collect(),
            socket_drops: s,
        };
        FloodReport {
            rate_target: 100,
            sent,
            seconds: 1.0,
            vrrp_cpu: 0.1,
            before: view("MASTER", 10, 1),
            after: view(after, 10 + discarded, 1 + drops),
            received,
        }
    }

    #[test]
    fn report_checks() {
        assert!(report(1000, 1000, 900, 100, "MASTER").check().is_ok());
        assert!(report(1000, 1000, 900, 100, "BACKUP").check().is_err());
        assert!(report(1000, 1000, 0, 100, "MASTER").check().is_err());
        assert!(report(1000, 800, 900, 100, "MASTER").check().is_err());
        assert!(report(1000, 2000, 900, 100, "MASTER").check().is_err());
        assert!(
            report(1000, 1000, 800, 100, "MASTER").check().is_err(),
            "uncounted"
        );
        assert!(
            report(1000, 1010, 900, 100, "MASTER").check().is_ok(),
            "noise"
        );
    }
}
