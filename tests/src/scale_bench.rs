//! `lb-bench scale`: the control plane with thousands of virtual servers, measured on the real
//! `lb-daemon run` binary in a namespace lab of its own (issue 16).
//!
//! | entry                  | what it measures                                                  | target          |
//! |------------------------|-------------------------------------------------------------------|-----------------|
//! | `start_10k_services_s` | exec of `lb-daemon run` to every service's map entries written, 10,000 services x 10 real servers (rr, wrr, sh, and 100 `mh` at M = 65537) | value <= 5 s |
//! | `reload_one_change_ms` | SIGHUP with one real server's weight changed in one `wrr` service, to that service's new `ring_len` in the map; median of 10 | value <= 20 ms |
//! | `status_10k_ms`        | wall time of `lb-daemon status --json` against that daemon; median of 5 | value <= 200 ms |
//!
//! Printed beside them, with no target: where the start-up went (from the daemon's log
//! timestamps), the daemon's resident memory after the start (VmRSS, and its peak VmHWM), the
//! memory the kernel charges for the program's maps (the `memlock` of every map the daemon
//! holds), and the map writes one weight change costs (`map_writes` from the status).
//!
//! `LB_BENCH_SCALE_SERVICES=N` sets the number of services (default 10,000; at least 3);
//! `LB_BENCH_SCALE_ONLY=text` reports only the entries whose name contains `text` (the daemon
//! is started in any case: the other entries run against it). The entry names keep "10k"
//! whatever N is; the first line on stderr says which N was run. `LB_BENCH_SCALE_LOG=path`
//! keeps the daemon's log (its namespace's directory is removed at the end).
//!
//! # The lab
//!
//! Two namespaces joined by one veth pair, nothing else: the LB (`eth0`, 198.51.100.1/24,
//! the daemon's XDP program attached in skb mode) and a "pool" namespace whose `eth0` holds
//! up to 200 addresses, 198.51.100.10 and up. Every address answers ARP, so the daemon learns
//! each real server's MAC through the kernel exactly as in production (all of them the pool's
//! one MAC); nothing is faked. There is no traffic: the entries time the control plane.
//!
//! # The configuration
//!
//! N virtual servers, `static = true` (no VRRP: every service is active as soon as it is
//! written), no health checks (every real server is up), 100 ports on each VIP (203.0.113.x,
//! then 192.0.2.x), each with 10 real servers on the service's port. One service in 100 is
//! `mh` (at least one; default M = 65537), the others cycle through `rr`, `wrr` and `sh`. A
//! service's real servers are a window of 10 consecutive pool addresses; services share
//! addresses with different ports, as keepalived pools do. `wrr` services weigh their servers
//! 1, 2, 3, 1, 2, 3, ...; one `wrr` service near the middle of the file (the reload's target)
//! weighs all of them 1. The file (9.5 MB for 10,000 services) is generated in one string (25 ms)
//! before the clock starts.
//!
//! # `start_10k_services_s`: what "every map written" means
//!
//! The clock starts just before `ip netns exec` execs the daemon. The bench finds the daemon's
//! program as soon as the daemon holds it (a `prog_id` in its `/proc/PID/fdinfo`, named `lb`),
//! opens its maps by id (the program's map ids) and polls, every 2 ms, until for each
//! configured service:
//!
//! * its key is in `SERVICES4`, and its `SERVICE_INFO` entry is active, has the service's
//!   scheduler and exactly the `ring_len` the service must end with once all 10 real servers
//!   have a MAC: rr 10, wrr `sum(w) / gcd(w)` (one IPVS cycle), sh 256 (IPVS's buckets), mh M;
//! * its ring (`RINGS` from the entry's `ring_off`, `ring_len` slots, read in one
//!   BPF_MAP_LOOKUP_BATCH call) names 10 distinct backends. sh and mh rings have their full
//!   length from the first real server with a MAC on, so the length alone would not say that
//!   all 10 are in; a ring only ever names backends the daemon can send to (MAC known);
//!
//! and until that program is the one attached to `eth0` (`ip -j link`: a daemon may fill the
//! maps before it attaches). The poll walks the services in file order and stops at the first
//! one not written yet, so a round costs a few lookups, not 20,000, and sleeps at least as long
//! as it worked, so the bench never takes more than half a core from the daemon (reading a
//! Maglev table round after round would). The value is the instant of the round that found
//! the last service written: late by at most one round (2 ms, or one Maglev table's read).
//!
//! After the clock stops, the bench checks, untimed, every service once more, that every
//! backend a ring names is present in `BACKENDS` with a MAC, and (from `lb-daemon status
//! --json`) that every one of the N x 10 backends has a MAC. Then it waits until the daemon is
//! idle (under 5 ms of CPU in 250 ms, all threads): the start may leave work queued that does
//! not change the maps (the health side announces every real server once, each announcement
//! an update of the dataplane), and the next entries must not wait behind it. That settling
//! time is printed, not part of the value. A daemon still busy after 120 s + 10 ms x N gets a
//! WARNING line (with how far its announcements got), and the next entries run anyway: their
//! figures then include waiting behind that work, as an operator's first reload would.
//!
//! Timeline (stderr): the daemon's log timestamps of "sizing the XDP program's maps" (the file
//! is parsed by then), "XDP program attached", "running", the first and the last "backend MAC
//! resolved" (one per pool address), against the exec instant and the bench's "all written"
//! instant (both clocks CLOCK_REALTIME).
//!
//! # `reload_one_change_ms`
//!
//! In the running daemon: the file is rewritten (untimed) with the target service's first
//! real server at weight 3 (ring 10 -> 12), then SIGHUP; the clock runs from just before the
//! signal until a tight loop reading that service's one `SERVICE_INFO` entry sees the new
//! `ring_len`. Then the bench waits for the daemon's "configuration reloaded" line before the
//! next repetition, which writes the weight back (12 -> 10). Value: the median of 10. The
//! figure includes the daemon reading and parsing the whole file (N services), planning and
//! diffing, which is what an operator's reload costs; the `map_writes` counter of the status
//! before and after says how many map elements the reloads wrote.
//!
//! # `status_10k_ms`
//!
//! `lb-daemon status --json --socket ...` run as a process (from the bench's namespace: the
//! control socket is a path, namespaces do not matter to it), stdout read to the end; wall time
//! from spawn to exit, median of 5. The last output is parsed and must list N services.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError};
use lb_common::{
    addr_v4, names, BackendValue, ServiceKey4, ServiceRef, ServiceValue, BACKEND_F_PRESENT,
    DEFAULT_MH_TABLE_SIZE, PROTO_TCP, SCHED_MH, SCHED_RR, SCHED_SH, SCHED_WRR, SVC_F_ACTIVE,
};
use lb_daemon::dataplane::{plan::WRR_MAX_RING, ring};

use crate::{
    daemon_bench::log_time_us,
    lab::{daemon_bin, with_control_socket},
    netns::{unique_prefix, wait_until, Netns, Proc},
    report::{median, Entry, Target},
};

/// `LB_BENCH_SCALE_SERVICES`: how many virtual servers.
pub const SERVICES_ENV: &str = "LB_BENCH_SCALE_SERVICES";
/// `LB_BENCH_SCALE_ONLY`: report only the entries whose name contains this.
pub const ONLY_ENV: &str = "LB_BENCH_SCALE_ONLY";
/// `LB_BENCH_SCALE_LOG=path`: where to keep the daemon's log (the lab's directory goes).
pub const LOG_ENV: &str = "LB_BENCH_SCALE_LOG";
const DEFAULT_SERVICES: usize = 10_000;
/// Real servers of every service.
const REAL_SERVERS: usize = 10;
/// Most addresses in the pool namespace (198.51.100.10 and up).
const POOL_MAX: usize = 200;
const POOL_FIRST_HOST: u8 = 10;
const LB_ADDR: &str = "198.51.100.1/24";
/// Ports per VIP, from `FIRST_PORT`.
const PORTS_PER_VIP: usize = 100;
const FIRST_PORT: u16 = 1000;
/// One service in this many is `mh`.
const MH_EVERY: usize = 100;
/// The reload target's first real server goes from weight 1 to this.
const CHANGED_WEIGHT: u32 = 3;
const RELOAD_REPS: usize = 10;
const STATUS_REPS: usize = 5;
/// The start entry's polling interval (a few lookups each).
const MAPS_POLL: Duration = Duration::from_millis(2);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the reload's tight loop looks at the daemon's log and process.
const RELOAD_LOOK: Duration = Duration::from_millis(20);
/// The daemon counts as idle after using less than this much CPU in one window.
const IDLE_CPU: Duration = Duration::from_millis(5);
const IDLE_WINDOW: Duration = Duration::from_millis(250);

fn progress(msg: &str) {
    eprintln!("lb-bench: {msg}");
}

/// CLOCK_REALTIME in microseconds since the Unix epoch: the clock of the daemon's log.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

// -------------------------------------------------------------------------------------------
// The configuration
// -------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sched {
    Rr,
    Wrr,
    Sh,
    Mh,
}

impl Sched {
    fn name(self) -> &'static str {
        match self {
            Sched::Rr => "rr",
            Sched::Wrr => "wrr",
            Sched::Sh => "sh",
            Sched::Mh => "mh",
        }
    }

    fn code(self) -> u32 {
        match self {
            Sched::Rr => SCHED_RR,
            Sched::Wrr => SCHED_WRR,
            Sched::Sh => SCHED_SH,
            Sched::Mh => SCHED_MH,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Service {
    vip: Ipv4Addr,
    port: u16,
    sched: Sched,
    /// (address, weight) of each real server, on the service's port.
    servers: Vec<(Ipv4Addr, u32)>,
}

impl Service {
    /// The `ring_len` the service ends with once every real server has a MAC: rr takes each
    /// server once, wrr one IPVS cycle (`sum(w) / gcd(w)`, see `dataplane::ring::wrr`), sh
    /// IPVS's buckets and mh a Maglev table of M slots.
    fn ring_len(&self) -> u32 {
        let weights = self.servers.iter().map(|s| s.1).filter(|&w| w > 0);
        if weights.clone().next().is_none() {
            return 0;
        }
        match self.sched {
            Sched::Rr => weights.count() as u32,
            Sched::Wrr => {
                let w: Vec<u32> = weights.collect();
                ring::wrr(&w, WRR_MAX_RING).map_or(0, |r| r.len() as u32)
            }
            Sched::Sh => ring::SH_TAB_SIZE as u32,
            Sched::Mh => DEFAULT_MH_TABLE_SIZE,
        }
    }

    fn key(&self) -> ServiceKey4 {
        ServiceKey4 {
            addr: addr_v4(self.vip.octets()),
            port: self.port.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        }
    }
}

/// VIP `i`: 203.0.113.1..254, then 192.0.2.1..254.
fn vip(i: usize) -> Result<Ipv4Addr> {
    let (net, host) = (i / 254, 1 + i % 254);
    Ok(match net {
        0 => Ipv4Addr::new(203, 0, 113, host as u8),
        1 => Ipv4Addr::new(192, 0, 2, host as u8),
        _ => bail!(
            "at most {} services ({} ports on 508 VIPs)",
            2 * 254 * PORTS_PER_VIP,
            PORTS_PER_VIP
        ),
    })
}

/// The services of the bench (module docs) and the index of the reload's target.
struct Plan {
    services: Vec<Service>,
    pool: Vec<Ipv4Addr>,
    target: usize,
}

impl Plan {
    fn new(n: usize) -> Result<Plan> {
        ensure!(
            n >= 3,
            "{SERVICES_ENV}={n}: at least 3 services (rr, wrr and sh)"
        );
        let mh = (n / MH_EVERY).max(1);
        let stride = n / mh;
        let is_mh = |i: usize| i % stride == stride - 1 && i / stride < mh;
        let scheds: Vec<Sched> = {
            let mut c = 0;
            (0..n)
                .map(|i| {
                    if is_mh(i) {
                        return Sched::Mh;
                    }
                    c += 1;
                    [Sched::Rr, Sched::Wrr, Sched::Sh][(c - 1) % 3]
                })
                .collect()
        };
        let rr_wrr = scheds
            .iter()
            .filter(|s| matches!(s, Sched::Rr | Sched::Wrr))
            .count();
        // Windows starting at 0, 1, 2... of the rr/wrr services cover the whole pool.
        let pool_len = (rr_wrr + REAL_SERVERS - 1).clamp(REAL_SERVERS, POOL_MAX);
        let pool: Vec<Ipv4Addr> = (0..pool_len)
            .map(|i| Ipv4Addr::new(198, 51, 100, POOL_FIRST_HOST + i as u8))
            .collect();
        let target = (n / 2..n)
            .chain((0..n / 2).rev())
            .find(|&i| scheds[i] == Sched::Wrr)
            .context("no wrr service")?;
        let (mut rw, mut other) = (0usize, 0usize);
        let mut services = Vec::with_capacity(n);
        for (i, &sched) in scheds.iter().enumerate() {
            let start = if matches!(sched, Sched::Rr | Sched::Wrr) {
                rw += 1;
                rw - 1
            } else {
                other += 1;
                other - 1
            };
            let servers = (0..REAL_SERVERS)
                .map(|k| {
                    let w = match sched {
                        Sched::Wrr if i != target => 1 + (k % 3) as u32,
                        _ => 1,
                    };
                    (pool[(start + k) % pool_len], w)
                })
                .collect();
            services.push(Service {
                vip: vip(i / PORTS_PER_VIP)?,
                port: FIRST_PORT + (i % PORTS_PER_VIP) as u16,
                sched,
                servers,
            });
        }
        let plan = Plan {
            services,
            pool,
            target,
        };
        // The start entry's reasoning (module docs) needs every address in an rr/wrr ring.
        for a in &plan.pool {
            ensure!(
                plan.services
                    .iter()
                    .filter(|s| matches!(s.sched, Sched::Rr | Sched::Wrr))
                    .any(|s| s.servers.iter().any(|r| r.0 == *a)),
                "pool address {a} is in no rr/wrr service"
            );
        }
        Ok(plan)
    }

    fn count(&self, sched: Sched) -> usize {
        self.services.iter().filter(|s| s.sched == sched).count()
    }

    /// The target service with its first real server at `weight`.
    fn with_target_weight(&self, weight: u32) -> Vec<Service> {
        let mut s = self.services.clone();
        s[self.target].servers[0].1 = weight;
        s
    }
}

/// The daemon's configuration file for `services` (control socket in `dir`).
fn config_toml(services: &[Service], dir: &Path) -> String {
    let head = "[global_defs]\nrouter_id = \"scale\"\n\n[dataplane]\ninterface = \"eth0\"\n\
                xdp_mode = \"skb\"\nmax_flows = 65536\n";
    // About 950 bytes a service: one allocation, no reformatting of the whole.
    let mut c = String::with_capacity(head.len() + services.len() * (200 + REAL_SERVERS * 80));
    c += &with_control_socket(head, dir);
    for s in services {
        let _ = write!(
            c,
            "\n[[virtual_server]]\nip = \"{}\"\nport = {}\nprotocol = \"TCP\"\nlb_algo = \"{}\"\n\
             lb_kind = \"DR\"\nstatic = true\n",
            s.vip,
            s.port,
            s.sched.name()
        );
        for (ip, w) in &s.servers {
            let _ = write!(
                c,
                "  [[virtual_server.real_server]]\n  ip = \"{ip}\"\n  port = {}\n  weight = {w}\n",
                s.port
            );
        }
    }
    c
}

// -------------------------------------------------------------------------------------------
// The lab
// -------------------------------------------------------------------------------------------

/// The LB namespace and the pool namespace, one veth pair between them.
struct ScaleLab {
    // Field order is drop order: the daemon's namespace first.
    lb: Netns,
    _pool: Netns,
}

impl ScaleLab {
    fn new(pool: &[Ipv4Addr]) -> Result<ScaleLab> {
        let prefix = unique_prefix("bs");
        let lb = Netns::new(&format!("{prefix}lb"))?;
        let pool_ns = Netns::new(&format!("{prefix}pool"))?;
        lb.ip(&[
            "link",
            "add",
            "name",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pool_ns.name(),
        ])?;
        lb.ip(&["addr", "add", LB_ADDR, "dev", "eth0"])?;
        let batch: String = pool
            .iter()
            .map(|a| format!("addr add {a}/24 dev eth0\n"))
            .collect();
        let file = pool_ns.dir().join("addrs.batch");
        std::fs::write(&file, batch).with_context(|| format!("write {}", file.display()))?;
        pool_ns.ip(&["-batch", file.to_str().context("path")?])?;
        lb.ip(&["link", "set", "dev", "eth0", "up"])?;
        pool_ns.ip(&["link", "set", "dev", "eth0", "up"])?;
        for ns in [&lb, &pool_ns] {
            wait_until(
                &format!("eth0 up in {}", ns.name()),
                Duration::from_secs(10),
                || ns.link_is_up("eth0"),
            )?;
        }
        Ok(ScaleLab { lb, _pool: pool_ns })
    }

    fn config_path(&self) -> PathBuf {
        self.lb.dir().join("lb.toml")
    }

    fn socket(&self) -> PathBuf {
        self.lb.dir().join("ctl.sock")
    }
}

// -------------------------------------------------------------------------------------------
// The daemon's maps, by id
// -------------------------------------------------------------------------------------------

/// The newest program named [`names::PROGRAM`] that process `pid` holds a descriptor of:
/// found before it is attached.
fn held_program(pid: u32) -> Option<u32> {
    let ids = crate::xdp::held_ids(pid, "prog_id:");
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| ids.contains(&p.id()) && p.name_as_str() == Some(names::PROGRAM))
        .map(|p| p.id())
        .max()
}

/// Elements `first..first + len` of the array map `map` (values of type `V`), with
/// BPF_MAP_LOOKUP_BATCH: one system call for a whole ring rather than one per slot (a Maglev
/// table has 65,537).
fn read_array<V: Copy + Default>(
    map: &MapData,
    first: u32,
    len: u32,
    out: &mut Vec<V>,
) -> Result<()> {
    out.clear();
    out.resize(len as usize, V::default());
    let mut keys = vec![0u32; len as usize];
    // The batch position of an array is the last key read: the next call starts after it.
    let mut token = u64::from(first.wrapping_sub(1));
    let mut done = 0usize;
    while done < len as usize {
        let position = std::ptr::addr_of_mut!(token).cast::<u8>();
        // SAFETY: buffers of `len - done` keys and values (`V` is the map's value type; a
        // batch read packs values at their own size) that outlive the call, and an 8-byte
        // position (an array's takes 4, little-endian here).
        let (got, err) = unsafe {
            lb_daemon::dataplane::flows::lookup_batch(
                map.fd().as_fd(),
                (done > 0 || first > 0).then_some(position.cast_const()),
                position,
                keys[done..].as_mut_ptr().cast(),
                out[done..].as_mut_ptr().cast(),
                len - done as u32,
            )
        };
        // ENOENT: the end of the array, with what was read before it.
        if let Some(e) = err.filter(|e| e.raw_os_error() != Some(libc::ENOENT)) {
            return Err(e).context("BPF_MAP_LOOKUP_BATCH");
        }
        ensure!(
            got > 0,
            "elements {first}..{} are beyond the end of the map",
            first + len
        );
        done += got;
    }
    Ok(())
}

/// The daemon program's maps that say whether a service is written.
struct Maps {
    prog_id: u32,
    services: BpfHashMap<MapData, ServiceKey4, ServiceRef>,
    infos: Array<MapData, ServiceValue>,
    rings: MapData,
    backends: MapData,
}

impl Maps {
    fn open(prog_id: u32) -> Result<Maps> {
        let prog = aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == prog_id)
            .with_context(|| format!("program {prog_id} is not loaded"))?;
        let ids = prog
            .map_ids()?
            .context("the kernel does not list a program's maps")?;
        let find = |name: &str| -> Result<MapData> {
            for &id in &ids {
                if aya::maps::MapInfo::from_id(id)?.name_as_str() == Some(name) {
                    return Ok(MapData::from_id(id)?);
                }
            }
            bail!("program {prog_id} has no map {name}")
        };
        Ok(Maps {
            prog_id,
            services: BpfHashMap::try_from(Map::HashMap(find(names::SERVICES4)?))?,
            infos: Array::try_from(Map::Array(find(names::SERVICE_INFO)?))?,
            rings: find(names::RINGS)?,
            backends: find(names::BACKENDS)?,
        })
    }

    /// The service's id, if its key is in `SERVICES4`.
    fn id(&self, s: &Service) -> Result<Option<u32>> {
        match self.services.get(&s.key(), 0) {
            Ok(r) => Ok(Some(r.id)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("SERVICES4 lookup"),
        }
    }

    fn info(&self, id: u32) -> Result<ServiceValue> {
        self.infos
            .get(&id, 0)
            .with_context(|| format!("SERVICE_INFO[{id}]"))
    }

    /// The backend ids in the service's ring, into `ring`; false when the service is not
    /// written as it must end (module docs): key, state, ring length, and a ring that names
    /// every one of its real servers.
    fn written(&self, s: &Service, ring: &mut Vec<u32>) -> Result<bool> {
        ring.clear();
        let Some(id) = self.id(s)? else {
            return Ok(false);
        };
        let v = self.info(id)?;
        if v.flags & SVC_F_ACTIVE == 0 || v.sched != s.sched.code() || v.ring_len != s.ring_len() {
            return Ok(false);
        }
        read_array(&self.rings, v.ring_off, v.ring_len, ring)?;
        let mut distinct: Vec<u32> = Vec::with_capacity(REAL_SERVERS);
        for &b in ring.iter() {
            if !distinct.contains(&b) {
                distinct.push(b);
                if distinct.len() > REAL_SERVERS {
                    break;
                }
            }
        }
        let live = s.servers.iter().filter(|r| r.1 > 0).count();
        Ok(distinct.len() == live)
    }

    /// Untimed, after the start: every service written, and every backend its ring names
    /// present with a MAC in `BACKENDS`.
    fn verify(&self, services: &[Service]) -> Result<()> {
        let max = self.backends.info()?.max_entries();
        let mut backends: Vec<BackendValue> = Vec::new();
        read_array(&self.backends, 0, max, &mut backends)?;
        let mut ring = Vec::new();
        for s in services {
            ensure!(
                self.written(s, &mut ring)?,
                "{}:{} ({}) is no longer written as configured",
                s.vip,
                s.port,
                s.sched.name()
            );
            for &b in &ring {
                let v = backends
                    .get(b as usize)
                    .with_context(|| format!("backend id {b} beyond BACKENDS"))?;
                ensure!(
                    v.flags & BACKEND_F_PRESENT != 0 && v.mac != [0; 6],
                    "{}:{}: the ring names backend {b}, which is not present with a MAC: {v:?}",
                    s.vip,
                    s.port
                );
            }
        }
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// Process figures
// -------------------------------------------------------------------------------------------

/// A `kB` field of /proc/PID/status.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Bytes the kernel charges for the maps process `pid` holds (`memlock` of each distinct map
/// in its fdinfo).
fn maps_memlock(pid: u32) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                total += bytes;
            }
        }
    }
    total
}

/// CPU time process `pid` has used so far, all its threads, in ns (`/proc/PID/task/*/schedstat`,
/// nanoseconds where `/proc/PID/stat` counts 10 ms ticks).
fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let text = std::fs::read_to_string(e?.path().join("schedstat")).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// How the wait for the daemon to go idle ended.
enum Settled {
    /// Idle after this long.
    Idle(Duration),
    /// Still busy at the deadline: its share of a core over the last window.
    Busy(f64),
}

/// Waits until the daemon used less than [`IDLE_CPU`] of CPU time over one [`IDLE_WINDOW`]:
/// the work the start queued (announcements of every real server, neighbour replies) is
/// done, so a measurement that follows does not wait behind it.
fn wait_idle(daemon: &Proc, timeout: Duration) -> Result<Settled> {
    let t0 = Instant::now();
    let mut last = (cpu_ns(daemon.pid())?, Instant::now());
    loop {
        std::thread::sleep(IDLE_WINDOW);
        if !daemon.is_running() {
            return Err(exited(daemon));
        }
        let now = (cpu_ns(daemon.pid())?, Instant::now());
        let used = Duration::from_nanos(now.0.saturating_sub(last.0));
        if used < IDLE_CPU {
            return Ok(Settled::Idle(t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            let window = now.1.duration_since(last.1).as_secs_f64();
            return Ok(Settled::Busy(used.as_secs_f64() / window));
        }
        last = now;
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// -------------------------------------------------------------------------------------------
// start_10k_services_s
// -------------------------------------------------------------------------------------------

/// The running daemon and what the start found.
struct Running {
    daemon: Proc,
    maps: Maps,
    /// Seconds from exec to every service written.
    start_s: f64,
}

/// The daemon's log from an instant on: a reload's lines without reading (at 10,000 services,
/// megabytes of) what came before.
struct LogFrom {
    path: PathBuf,
    offset: u64,
}

impl LogFrom {
    fn now(daemon: &Proc) -> Result<LogFrom> {
        let path = daemon
            .stderr_path()
            .context("the daemon's log")?
            .to_path_buf();
        let offset = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        Ok(LogFrom { path, offset })
    }

    /// What the daemon logged since [`LogFrom::now`].
    fn text(&self) -> Result<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("open {}", self.path.display()))?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The last `n` lines of the daemon's log.
fn log_tail(daemon: &Proc, n: usize) -> String {
    let log = daemon.read_stderr();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn exited(daemon: &Proc) -> anyhow::Error {
    anyhow::anyhow!("lb-daemon exited:\n{}", log_tail(daemon, 20))
}

/// The first service (from `from`) not written yet, or `services.len()`.
fn first_unwritten(
    maps: &Maps,
    services: &[Service],
    from: usize,
    ring: &mut Vec<u32>,
) -> Result<usize> {
    let mut i = from;
    while i < services.len() && maps.written(&services[i], ring)? {
        i += 1;
    }
    Ok(i)
}

fn start(lab: &ScaleLab, plan: &Plan) -> Result<Running> {
    let n = plan.services.len();
    let cfg = lab.config_path();
    std::fs::write(&cfg, config_toml(&plan.services, lab.lb.dir()))
        .with_context(|| format!("write {}", cfg.display()))?;
    let bin = daemon_bin()?;
    let timeout = Duration::from_secs(30) + Duration::from_millis(30) * n as u32;

    let exec_us = now_us();
    let t0 = Instant::now();
    let daemon = lab.lb.spawn(&[
        bin.to_str().context("path")?,
        "run",
        "--config",
        cfg.to_str().context("path")?,
    ])?;
    let mut maps: Option<Maps> = None;
    let mut next = 0;
    let mut ring = Vec::new();
    let (start_s, done_us) = loop {
        if !daemon.is_running() {
            return Err(exited(&daemon));
        }
        if t0.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?}: {next} of {n} services written (next: {:?})\n{}",
                plan.services.get(next),
                log_tail(&daemon, 20)
            );
        }
        let Some(m) = maps.as_ref() else {
            match held_program(daemon.pid()) {
                Some(id) => maps = Some(Maps::open(id)?),
                None => std::thread::sleep(MAPS_POLL),
            }
            continue;
        };
        let round = Instant::now();
        next = first_unwritten(m, &plan.services, next, &mut ring)?;
        if next < n {
            // At most half of one core, even while a Maglev table is read round after round.
            std::thread::sleep(MAPS_POLL.max(round.elapsed()));
            continue;
        }
        let (elapsed, at) = (t0.elapsed().as_secs_f64(), now_us());
        // Served only once attached: a daemon may fill the maps first.
        match crate::xdp::attached_prog_id(&lab.lb, "eth0")? {
            Some(id) if id == m.prog_id => {}
            Some(id) => {
                progress(&format!(
                    "program {id} attached, not {} whose maps were read: reading its maps",
                    m.prog_id
                ));
                maps = Some(Maps::open(id)?);
                next = 0;
                continue;
            }
            None => {
                std::thread::sleep(MAPS_POLL);
                continue;
            }
        }
        break (elapsed, at);
    };
    let maps = maps.context("maps")?;
    // Untimed: every service once more, with the backends its ring names.
    let mut verified = maps.verify(&plan.services);
    let t = Instant::now();
    while let Err(e) = &verified {
        if t.elapsed() > Duration::from_secs(5) {
            bail!("after the start: {e:#}");
        }
        std::thread::sleep(Duration::from_millis(50));
        verified = maps.verify(&plan.services);
    }
    timeline(&daemon, plan, exec_us, done_us);
    Ok(Running {
        daemon,
        maps,
        start_s,
    })
}

/// Where the start went, from the daemon's log (module docs).
fn timeline(daemon: &Proc, plan: &Plan, exec_us: i64, done_us: i64) {
    let log = daemon.read_stderr();
    let at = |needle: &str, last: bool| -> Option<i64> {
        let mut lines = log.lines().filter(|l| l.contains(needle));
        let line = if last {
            lines.next_back()
        } else {
            lines.next()
        }?;
        log_time_us(line)
    };
    let ms = |t: Option<i64>| {
        t.map(|t| format!("{:.0} ms", (t - exec_us) as f64 / 1e3))
            .unwrap_or_else(|| "?".into())
    };
    let macs = log.matches("backend MAC resolved").count();
    progress(&format!(
        "start timeline (from exec): maps sized {}, program attached {}, running {}, \
         first MAC {}, last MAC {} ({macs} of {} addresses), every service written {}",
        ms(at("sizing the XDP program's maps", false)),
        ms(at("XDP program attached", false)),
        ms(at("daemon: running", false)),
        ms(at("backend MAC resolved", false)),
        ms(at("backend MAC resolved", true)),
        plan.pool.len(),
        ms(Some(done_us)),
    ));
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .take(5)
        .collect();
    if !errors.is_empty() {
        progress(&format!(
            "the daemon warned during the start:\n{}",
            errors.join("\n")
        ));
    }
}

// -------------------------------------------------------------------------------------------
// Status
// -------------------------------------------------------------------------------------------

fn status_json(socket: &Path) -> Result<serde_json::Value> {
    let out = lb_daemon::control::cli_status(socket, Some(lb_daemon::control::Json::Compact))
        .context("status")?;
    serde_json::from_str(&out).context("parsing the status")
}

/// The status lists every service, and every backend has a MAC.
fn check_status(s: &serde_json::Value, plan: &Plan) -> Result<()> {
    let services = s["services"]
        .as_array()
        .context("no services in the status")?;
    ensure!(
        services.len() == plan.services.len(),
        "the status lists {} services, not {}",
        services.len(),
        plan.services.len()
    );
    let backends: Vec<&serde_json::Value> = services
        .iter()
        .flat_map(|s| s["backends"].as_array().into_iter().flatten())
        .collect();
    let without_mac = backends.iter().filter(|b| b["mac"].is_null()).count();
    ensure!(
        backends.len() == plan.services.len() * REAL_SERVERS && without_mac == 0,
        "the status lists {} backends, {without_mac} of them without a MAC",
        backends.len()
    );
    Ok(())
}

fn map_writes(s: &serde_json::Value) -> Result<u64> {
    s["map_writes"]
        .as_u64()
        .context("the status has no map_writes")
}

fn status_entry(lab: &ScaleLab, plan: &Plan) -> Result<Entry> {
    let name = "status_10k_ms";
    let bin = daemon_bin()?;
    let socket = lab.socket();
    let mut ms = Vec::with_capacity(STATUS_REPS);
    let mut last = Vec::new();
    for _ in 0..STATUS_REPS {
        let t = Instant::now();
        let out = Command::new(&bin)
            .args(["status", "--json", "--socket"])
            .arg(&socket)
            .stdin(Stdio::null())
            .output()
            .context("running lb-daemon status")?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        ensure!(
            out.status.success(),
            "lb-daemon status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        last = out.stdout;
    }
    let s: serde_json::Value = serde_json::from_slice(&last).context("parsing the status")?;
    check_status(&s, plan)?;
    progress(&format!(
        "{name}: [{}] ms, {} KiB of JSON",
        ms.iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" "),
        last.len() / 1024
    ));
    Ok(Entry {
        name,
        value: median(&ms),
        unit: "ms",
        baseline: None,
        target: Target::ValueAtMost(200.0),
    })
}

// -------------------------------------------------------------------------------------------
// reload_one_change_ms
// -------------------------------------------------------------------------------------------

fn reload_entry(lab: &ScaleLab, plan: &Plan, run: &Running) -> Result<Entry> {
    let name = "reload_one_change_ms";
    let target = &plan.services[plan.target];
    let cfg = lab.config_path();
    let dir = lab.lb.dir();
    // [back to the original, changed]: repetition i writes configs[(i + 1) % 2].
    let variants = [
        plan.services.clone(),
        plan.with_target_weight(CHANGED_WEIGHT),
    ];
    let configs = variants.each_ref().map(|v| config_toml(v, dir));
    let lens = variants.each_ref().map(|v| v[plan.target].ring_len());
    ensure!(lens[0] != lens[1], "the change does not change the ring");
    let id = run
        .maps
        .id(target)?
        .context("the reload's target service is not in SERVICES4")?;
    ensure!(
        run.maps.info(id)?.ring_len == lens[0],
        "the target's ring is not as configured before the reloads"
    );
    progress(&format!(
        "{name}: {}:{} (wrr, id {id}), ring {} <-> {}, {RELOAD_REPS} reloads of {} KiB",
        target.vip,
        target.port,
        lens[0],
        lens[1],
        configs[1].len() / 1024
    ));
    let writes_before = map_writes(&status_json(&lab.socket())?)?;
    let daemon = &run.daemon;
    let mut ms = Vec::with_capacity(RELOAD_REPS);
    for rep in 0..RELOAD_REPS {
        let v = (rep + 1) % 2;
        std::fs::write(&cfg, &configs[v]).with_context(|| format!("write {}", cfg.display()))?;
        let log = LogFrom::now(daemon)?;
        let t0 = Instant::now();
        daemon.signal(libc::SIGHUP)?;
        let mut looked = Instant::now();
        let elapsed = loop {
            if run.maps.info(id)?.ring_len == lens[v] {
                break t0.elapsed();
            }
            // Now and then, whether the reload failed (rarely enough not to slow the loop).
            if looked.elapsed() >= RELOAD_LOOK {
                looked = Instant::now();
                if log.text()?.contains("reload refused") {
                    bail!("{name}: the daemon refused the reload:\n{}", log.text()?);
                }
                if !daemon.is_running() {
                    return Err(exited(daemon));
                }
                if t0.elapsed() > RELOAD_TIMEOUT {
                    let now = crate::xdp::attached_prog_id(&lab.lb, "eth0")?;
                    bail!(
                        "{name}: ring_len still {} after {RELOAD_TIMEOUT:?} (program attached: \
                         {now:?}, read: {})",
                        run.maps.info(id)?.ring_len,
                        run.maps.prog_id
                    );
                }
            }
        };
        ms.push(elapsed.as_secs_f64() * 1e3);
        wait_until("the daemon to log the reload", RELOAD_TIMEOUT, || {
            log.text()
                .is_ok_and(|t| t.contains("configuration reloaded"))
                || !daemon.is_running()
        })?;
        if !daemon.is_running() {
            return Err(exited(daemon));
        }
    }
    let writes = map_writes(&status_json(&lab.socket())?)?.saturating_sub(writes_before);
    progress(&format!(
        "{name}: [{}] ms; {:.1} map writes per reload",
        ms.iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        writes as f64 / RELOAD_REPS as f64
    ));
    Ok(Entry {
        name,
        value: median(&ms),
        unit: "ms",
        baseline: None,
        target: Target::ValueAtMost(20.0),
    })
}

// -------------------------------------------------------------------------------------------
// The benchmark
// -------------------------------------------------------------------------------------------

fn services_from_env() -> Result<usize> {
    match std::env::var(SERVICES_ENV) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{SERVICES_ENV}={v:?} is not a number")),
        Err(_) => Ok(DEFAULT_SERVICES),
    }
}

/// Runs every entry, handing each to `emit` as it completes (the caller checked that we are
/// root). An error means the benchmark could not run; a missed target is not one.
pub fn run(emit: &mut dyn FnMut(Entry)) -> Result<()> {
    daemon_bin()?;
    if crate::vrrp_lab::find_program("ip").is_none() {
        bail!("scale needs ip (iproute2)");
    }
    let n = services_from_env()?;
    let only = std::env::var(ONLY_ENV).unwrap_or_default();
    let wanted = |name: &str| name.contains(&only);
    // The daemon's entries; the others (lb-bench's) need no daemon.
    if ![
        "start_10k_services_s",
        "reload_one_change_ms",
        "status_10k_ms",
    ]
    .iter()
    .any(|e| wanted(e))
    {
        return Ok(());
    }

    let t = Instant::now();
    let plan = Plan::new(n)?;
    let bytes = config_toml(&plan.services, Path::new("/x")).len();
    progress(&format!(
        "N = {n} services ({SERVICES_ENV}): {} rr, {} wrr, {} sh, {} mh, {REAL_SERVERS} real \
         servers each, on {} pool addresses; config {:.1} MiB, generated in {:.0} ms",
        plan.count(Sched::Rr),
        plan.count(Sched::Wrr),
        plan.count(Sched::Sh),
        plan.count(Sched::Mh),
        plan.pool.len(),
        mib(bytes as u64),
        t.elapsed().as_secs_f64() * 1e3
    ));
    let lab = ScaleLab::new(&plan.pool)?;
    let running = start(&lab, &plan)?;
    let result = measure(&lab, &plan, &running, emit, &wanted);
    if let Some(path) = std::env::var_os(LOG_ENV) {
        std::fs::write(&path, running.daemon.read_stderr())
            .with_context(|| format!("{LOG_ENV}: write {}", Path::new(&path).display()))?;
        progress(&format!(
            "the daemon's log is in {}",
            Path::new(&path).display()
        ));
    }
    drop(running);
    drop(lab);
    result
}

/// Everything after the start, against the running daemon.
fn measure(
    lab: &ScaleLab,
    plan: &Plan,
    running: &Running,
    emit: &mut dyn FnMut(Entry),
    wanted: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let n = plan.services.len();
    let pid = running.daemon.pid();
    progress(&format!(
        "started in {:.3} s; daemon VmRSS {:.1} MiB (peak VmHWM {:.1} MiB), its maps' memlock \
         {:.1} MiB",
        running.start_s,
        status_kb(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
        status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        mib(maps_memlock(pid))
    ));
    if wanted("start_10k_services_s") {
        emit(Entry {
            name: "start_10k_services_s",
            value: running.start_s,
            unit: "s",
            baseline: None,
            target: Target::ValueAtMost(5.0),
        });
    }
    let settle_timeout = Duration::from_secs(120) + Duration::from_millis(10) * n as u32;
    let announced = || {
        running
            .daemon
            .read_stderr()
            .matches("real server health")
            .count()
    };
    match wait_idle(&running.daemon, settle_timeout)? {
        Settled::Idle(d) => progress(&format!(
            "the daemon went idle {:.3} s after every service was written ({:.0} ms of CPU \
             since exec; {} \"real server health\" lines in its log)",
            d.as_secs_f64(),
            cpu_ns(pid)? as f64 / 1e6,
            announced()
        )),
        Settled::Busy(share) => progress(&format!(
            "WARNING: the daemon is still busy {settle_timeout:?} after every service was \
             written ({:.0}% of a core; {} of {} \"real server health\" lines in its log): \
             the figures below include waiting behind that work. Its log ends with:\n{}",
            share * 100.0,
            announced(),
            n * REAL_SERVERS,
            log_tail(&running.daemon, 3)
        )),
    }
    // Untimed: the daemon's own view agrees (every backend has a MAC).
    check_status(&status_json(&lab.socket())?, plan)?;
    if wanted("reload_one_change_ms") {
        emit(reload_entry(lab, plan, running)?);
    }
    if wanted("status_10k_ms") {
        emit(status_entry(lab, plan)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_mixes_schedulers_and_covers_the_pool() {
        let p = Plan::new(10_000).unwrap();
        assert_eq!(p.count(Sched::Mh), 100);
        assert_eq!(p.services.len(), 10_000);
        assert_eq!(p.pool.len(), POOL_MAX);
        for s in [Sched::Rr, Sched::Wrr, Sched::Sh] {
            assert!(p.count(s) > 3000, "{s:?}: {}", p.count(s));
        }
        let small = Plan::new(50).unwrap();
        assert_eq!(small.count(Sched::Mh), 1);
        assert_eq!(small.services[small.target].sched, Sched::Wrr);
        // Distinct keys, distinct real servers within a service.
        let keys: std::collections::HashSet<_> = p.services.iter().map(|s| s.key()).collect();
        assert_eq!(keys.len(), p.services.len());
        for s in &p.services {
            let rs: std::collections::HashSet<_> = s.servers.iter().map(|r| r.0).collect();
            assert_eq!(rs.len(), REAL_SERVERS);
        }
        assert!(Plan::new(2).is_err());
        assert!(Plan::new(2 * 254 * PORTS_PER_VIP + 1).is_err());
    }

    #[test]
    fn expected_ring_lengths() {
        let p = Plan::new(50).unwrap();
        let of = |sched| {
            p.services
                .iter()
                .find(|s| s.sched == sched)
                .unwrap()
                .ring_len()
        };
        assert_eq!(of(Sched::Rr), 10);
        // 1, 2, 3, 1, 2, 3, 1, 2, 3, 1
        assert_eq!(of(Sched::Wrr), 19);
        assert_eq!(of(Sched::Sh), 256);
        assert_eq!(of(Sched::Mh), 65537);
        assert_eq!(p.services[p.target].ring_len(), 10);
        assert_eq!(
            p.with_target_weight(CHANGED_WEIGHT)[p.target].ring_len(),
            12
        );
    }

    #[test]
    fn config_parses() {
        let p = Plan::new(50).unwrap();
        let text = config_toml(&p.services, Path::new("/tmp/x"));
        let c = lb_daemon::config::Config::parse(Path::new("lb.toml"), &text).unwrap();
        assert_eq!(c.virtual_servers.len(), 50);
        assert!(c
            .virtual_servers
            .iter()
            .all(|v| v.real_servers.len() == REAL_SERVERS));
    }
}
