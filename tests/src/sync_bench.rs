//! Connection sync under load: the soak test (`tests/e2e_sync.rs`) and `cargo xtask bench
//! sync`.
//!
//! **The soak** ([`soak`]): the seed's LVS lab with `[sync]` (two real `lb-daemon`s in
//! namespaces, unicast sync on eth0). New flows are made in lb1's attached program at
//! [`SOAK_RATE`] a second by running it from this process on TCP SYNs
//! (`BPF_PROG_TEST_RUN` on the program's fd, found through lb1's descriptors: the flows land
//! in lb1's own maps and its ring, exactly as from the wire, with no network load). Every
//! [`PROBE_EVERY`]th flow is a probe: a thread looks it up in lb2's `FLOWS4` every
//! millisecond until it is there, and checks that lb2's entry names the real server lb1
//! chose. The lag of a probe is creation on lb1 to entry in lb2's table. Memory (VmRSS) and
//! descriptors of both daemons are sampled after a warm-up and at the end.
//!
//! **The benchmark** ([`run`]), JSON lines as the others:
//!
//! | entry | value | target |
//! |---|---|---|
//! | `sync_lag_p99_ms` | the soak's probe lag, p99, at 50,000 flows/s | value <= 50 |
//! | `sync_flows_per_sec` | the sender on one pinned core: events drained from the ring, encoded, tagged and sent over UDP, best of 3 runs of 300,000 | value >= 200,000 |
//! | `sync_bytes_per_flow` | the soak's bytes on the wire (UDP payload + Ethernet, IPv4, UDP headers) per IPv4 flow sent | value <= 48 |
//!
//! The soak lasts `LB_SYNC_SOAK_SECS` seconds: 60 by default in the benchmark, 15 in the
//! test (its CI cost).
use std::{
    collections::VecDeque,
    fmt,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{addr_v4, names, BackendValue, FlowKey4, FlowValue};

use crate::{
    e2e_lab::{LvsLab, LvsParams, SyncMode, VIP},
    packet::{ether, tcp, Ipv4, ETH_P_IP, TCP_ACK},
    report::{Entry, Target},
};

/// New flows per second of the soak.
pub const SOAK_RATE: u64 = 50_000;
/// One flow in this many is a probe.
pub const PROBE_EVERY: u64 = 100;
/// The documented lag bound: creation on the master to entry in the backup's table, p99.
pub const LAG_P99_BOUND_MS: f64 = 50.0;
/// A probe not in the backup's table after this long is missing.
const PROBE_GIVE_UP: Duration = Duration::from_secs(3);
/// Growth of a daemon's resident memory the soak tolerates (allocator noise).
const RSS_SLACK_KB: u64 = 8 * 1024;

/// The soak's duration: `LB_SYNC_SOAK_SECS`, else `default`.
pub fn soak_seconds(default: u64) -> u64 {
    std::env::var("LB_SYNC_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

/// The map `name` that process `pid` holds.
fn map_of(pid: u32, name: &str) -> Result<MapData> {
    for id in crate::xdp::held_ids(pid, "map_id:") {
        if let Ok(info) = aya::maps::MapInfo::from_id(id) {
            if info.name_as_str() == Some(name) {
                return Ok(MapData::from_id(id)?);
            }
        }
    }
    bail!("process {pid} holds no map {name}")
}

/// The load balancer program process `pid` holds, as a descriptor to run it with.
fn program_of(pid: u32) -> Result<aya::programs::ProgramFd> {
    let ids = crate::xdp::held_ids(pid, "prog_id:");
    for p in aya::programs::loaded_programs().flatten() {
        if ids.contains(&p.id()) && p.name_as_str() == Some(names::PROGRAM) {
            return Ok(p.fd()?);
        }
    }
    bail!("process {pid} holds no program {}", names::PROGRAM)
}

/// Flow `i` of the soak: a client of 203.0.113.0/24 and a port, none used twice.
fn flow(i: u64) -> (Ipv4Addr, u16) {
    const PORTS: u64 = 65536 - 1024;
    let host = 1 + (i / PORTS) % 254;
    (
        Ipv4Addr::new(203, 0, 113, host as u8),
        1024 + (i % PORTS) as u16,
    )
}

/// The first packet of flow (`src`, `sport`) as lb1 sees it: an ACK, which sloppy TCP opens
/// ESTABLISHED, as a completed handshake leaves a flow. (Tens of thousands of SYNs a second
/// that no ACK follows are a SYN flood: past a quarter of the table the program stops
/// writing entries for them, and so stops syncing them.)
fn first_packet(src: Ipv4Addr, sport: u16) -> Vec<u8> {
    let ip = Ipv4::new(src, VIP, 6);
    let seg = tcp(ip.addrs(), sport, 80, TCP_ACK, b"");
    ether(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 0xc1],
        None,
        ETH_P_IP,
        &ip.build(&seg),
    )
}

fn key(src: Ipv4Addr, sport: u16) -> FlowKey4 {
    FlowKey4 {
        src: addr_v4(src.octets()),
        dst: addr_v4(VIP.octets()),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    }
}

/// VmRSS in kB and open descriptors of a process.
fn resources(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// What the soak measured.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub seconds: f64,
    pub target_rate: u64,
    pub flows: u64,
    pub probes: u64,
    /// Lags of the probes found, ms, sorted.
    pub lags_ms: Vec<f64>,
    pub missing: u64,
    /// Probes whose backup entry names another real server than the master's choice.
    pub wrong_backend: u64,
    /// (VmRSS kB, descriptors) of lb1 and lb2 after the warm-up and at the end.
    pub lb1: [(u64, usize); 2],
    pub lb2: [(u64, usize); 2],
    /// lb1's and lb2's `sync` status at the end.
    pub sender: serde_json::Value,
    pub receiver: serde_json::Value,
}

impl SoakReport {
    pub fn rate(&self) -> f64 {
        self.flows as f64 / self.seconds
    }

    pub fn lag_percentile(&self, p: f64) -> f64 {
        if self.lags_ms.is_empty() {
            return f64::INFINITY;
        }
        let i = ((self.lags_ms.len() as f64 * p).ceil() as usize).clamp(1, self.lags_ms.len());
        self.lags_ms[i - 1]
    }

    /// Bytes on the wire per flow sent: UDP payload plus the Ethernet, IPv4 and UDP
    /// headers of each message.
    pub fn bytes_per_flow(&self) -> f64 {
        let n = |k: &str| self.sender[k].as_u64().unwrap_or(0) as f64;
        let overhead = lb_daemon::sync::codec::WIRE_OVERHEAD_V4 as f64;
        (n("sent_bytes") + overhead * n("sent_messages")) / n("sent_entries").max(1.0)
    }

    fn dropped(v: &serde_json::Value, k: &str) -> u64 {
        v["dropped"][k].as_u64().unwrap_or(0)
    }

    /// The soak's pass conditions.
    pub fn check(&self) -> Result<()> {
        ensure!(
            self.rate() >= 0.9 * self.target_rate as f64,
            "only {:.0} new flows a second made",
            self.rate()
        );
        ensure!(
            self.missing == 0,
            "{} probes never reached lb2's table",
            self.missing
        );
        ensure!(
            self.wrong_backend == 0,
            "{} probes on another real server",
            self.wrong_backend
        );
        let p99 = self.lag_percentile(0.99);
        ensure!(
            p99 <= LAG_P99_BOUND_MS,
            "lag p99 {p99:.1} ms > {LAG_P99_BOUND_MS} ms"
        );
        for (what, v) in [("lb1", &self.sender), ("lb2", &self.receiver)] {
            for k in ["ring_lost", "bad_hmac", "install_errors", "send_errors"] {
                ensure!(
                    Self::dropped(v, k) == 0,
                    "{what}: {k} {}",
                    Self::dropped(v, k)
                );
            }
        }
        for (what, [before, after]) in [("lb1", self.lb1), ("lb2", self.lb2)] {
            ensure!(
                after.0 <= before.0 + RSS_SLACK_KB,
                "{what}'s memory grew from {} to {} kB",
                before.0,
                after.0
            );
            ensure!(
                after.1 <= before.1,
                "{what}'s descriptors grew from {} to {}",
                before.1,
                after.1
            );
        }
        Ok(())
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sync soak: {} flows in {:.1} s ({:.0}/s, target {}), {} probes: lag p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms; missing {}, on another real server {}",
            self.flows,
            self.seconds,
            self.rate(),
            self.target_rate,
            self.probes,
            self.lag_percentile(0.5),
            self.lag_percentile(0.99),
            self.lags_ms.last().copied().unwrap_or(f64::NAN),
            self.missing,
            self.wrong_backend
        )?;
        writeln!(
            f,
            "  bytes per flow on the wire {:.2}; lb1 VmRSS {} -> {} kB, fds {} -> {}; lb2 VmRSS {} -> {} kB, fds {} -> {}",
            self.bytes_per_flow(),
            self.lb1[0].0,
            self.lb1[1].0,
            self.lb1[0].1,
            self.lb1[1].1,
            self.lb2[0].0,
            self.lb2[1].0,
            self.lb2[0].1,
            self.lb2[1].1
        )?;
        writeln!(f, "  lb1 sync: {}", self.sender)?;
        write!(f, "  lb2 sync: {}", self.receiver)
    }
}

/// A probe: flow key, when it was made, the real server's MAC the master chose.
type Probe = (FlowKey4, Instant, [u8; 6]);

/// The soak (see the module doc).
pub fn soak(prefix: &str, rate: u64, duration: Duration) -> Result<SoakReport> {
    let params = LvsParams {
        sync: Some(SyncMode::Unicast),
        ..LvsParams::new("rr", "skb")
    };
    let mut lab = LvsLab::new(prefix, params)?;
    lab.start_pair()?;
    crate::e2e_lab::wait(
        "lb2 to have had lb1's whole table",
        Duration::from_secs(15),
        || {
            lab.sync_status(2)["full_syncs_received"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
    )?;
    let (pid1, pid2) = (
        lab.lb_pid(1).context("lb1 runs")?,
        lab.lb_pid(2).context("lb2 runs")?,
    );
    let prog = program_of(pid1)?;
    let flows2: BpfHashMap<MapData, FlowKey4, FlowValue> =
        BpfHashMap::try_from(aya::maps::Map::LruHashMap(map_of(pid2, names::FLOWS4)?))?;
    let backends2: Array<MapData, BackendValue> =
        Array::try_from(aya::maps::Map::Array(map_of(pid2, names::BACKENDS)?))?;

    let pending: Arc<Mutex<VecDeque<Probe>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (pending, done) = (pending.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut lags, mut missing, mut wrong) = (Vec::new(), 0u64, 0u64);
            let mut mine: Vec<Probe> = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                mine.extend(pending.lock().unwrap().drain(..));
                let now = Instant::now();
                mine.retain(|(k, t, mac)| match flows2.get(k, 0) {
                    Ok(v) => {
                        lags.push(now.duration_since(*t).as_secs_f64() * 1e3);
                        if backends2.get(&v.backend, 0).ok().map(|b| b.mac) != Some(*mac) {
                            wrong += 1;
                        }
                        false
                    }
                    Err(_) if now.duration_since(*t) > PROBE_GIVE_UP => {
                        missing += 1;
                        false
                    }
                    Err(_) => true,
                });
                if finished && mine.is_empty() && pending.lock().unwrap().is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (lags, missing, wrong)
        })
    };

    let mut report = SoakReport {
        target_rate: rate,
        ..SoakReport::default()
    };
    let warmup = (duration / 4).min(Duration::from_secs(5));
    let start = Instant::now();
    let mut out = vec![0u8; 256];
    let mut i = 0u64;
    let mut sampled = false;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while i < due {
            let (src, sport) = flow(i);
            let (verdict, n) = crate::daemon_bench::test_run_once(
                prog.as_fd(),
                &first_packet(src, sport),
                &mut out,
            )?;
            ensure!(
                verdict == lb_common::reason::XDP_TX && n >= 6,
                "lb1's program did not forward flow {i} (verdict {verdict})"
            );
            if i.is_multiple_of(PROBE_EVERY) {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&out[..6]);
                pending
                    .lock()
                    .unwrap()
                    .push_back((key(src, sport), Instant::now(), mac));
                report.probes += 1;
            }
            i += 1;
        }
        if !sampled && start.elapsed() >= warmup {
            report.lb1[0] = resources(pid1);
            report.lb2[0] = resources(pid2);
            sampled = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.flows = i;
    done.store(true, Ordering::SeqCst);
    let (mut lags, missing, wrong) = prober
        .join()
        .map_err(|_| anyhow::anyhow!("the prober panicked"))?;
    lags.sort_by(f64::total_cmp);
    report.lags_ms = lags;
    report.missing = missing;
    report.wrong_backend = wrong;
    // The last status (published once a second) and the resources after the last flows.
    std::thread::sleep(Duration::from_millis(1500));
    report.lb1[1] = resources(pid1);
    report.lb2[1] = resources(pid2);
    report.sender = lab.sync_status(1);
    report.receiver = lab.sync_status(2);
    lab.teardown()?;
    Ok(report)
}

/// The sender on one core: `n` events in lb's ring (made beforehand), then timed: drained,
/// translated, encoded and tagged into messages, sent over UDP on loopback in a namespace of
/// its own. Returns flows per second and bytes on the wire per flow.
fn sender_run(n: u64) -> Result<(f64, f64)> {
    use lb_daemon::{
        dataplane::program::{LoadOptions, SyncLoad},
        sync::{
            codec::{Key, WIRE_OVERHEAD_V4},
            index::Index,
            sender::{parse_event, Sender, SenderConfig},
        },
    };
    let ns = crate::netns::Netns::new(&format!("{}sb", crate::netns::unique_prefix("bnch")))?;
    ns.run_in(move || -> Result<(f64, f64)> {
        crate::xdp::pin_to_last_cpu()?;
        let opts = LoadOptions {
            max_flows: 1 << 20,
            sync: Some(SyncLoad {
                ring_bytes: 32 << 20,
                refresh_shift: 3,
            }),
            ..crate::xdp::small_options()
        };
        let mut h = crate::xdp::XdpHarness::new(opts)?;
        h.dp.update(&[crate::xdp::rr_service(VIP.into(), 80)])?;
        let mut ring = aya::maps::RingBuf::try_from(
            h.ebpf
                .take_map(names::SYNC_EVENTS)
                .context("no sync ring")?,
        )?;
        let ix = Index::build(&h.dp, |_| true);
        let sink = UdpSocket::bind("127.0.0.1:0")?;
        let to: SocketAddr = sink.local_addr()?;
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let key = Key::new(&[7u8; 32]).context("key")?;
        let mut best = 0f64;
        let mut bytes_per_flow = 0f64;
        for round in 0..3u64 {
            for i in 0..n {
                let (src, sport) = flow(round * n + i);
                let out = h.run(&first_packet(src, sport))?;
                ensure!(
                    out.verdict == lb_common::reason::XDP_TX,
                    "verdict {}",
                    out.verdict
                );
            }
            let t = Instant::now();
            let mut sender = Sender::new(
                SenderConfig {
                    sync_id: 1,
                    boot_id: 1,
                    max_message: lb_daemon::sync::codec::DEFAULT_MAX_MESSAGE,
                    max_rate: u64::MAX / 4,
                    queue_limit: usize::MAX,
                },
                key.clone(),
                t,
            );
            let (mut events, mut wire) = (0u64, 0u64);
            let mut flush_at = 0u64;
            while let Some(item) = ring.next() {
                let ev = parse_event(&item).context("an event")?;
                drop(item);
                sender.push_event(&ev, &ix, 0, 0);
                events += 1;
                // As the engine does: what is queued goes out after each batch.
                if events - flush_at >= 4096 {
                    flush_at = events;
                    while let Some(m) = sender.pop(Instant::now()) {
                        let _ = socket.send_to(&m, to);
                        wire += (m.len() + WIRE_OVERHEAD_V4) as u64;
                    }
                }
            }
            sender.flush(0);
            while let Some(m) = sender.pop(Instant::now()) {
                let _ = socket.send_to(&m, to);
                wire += (m.len() + WIRE_OVERHEAD_V4) as u64;
            }
            let secs = t.elapsed().as_secs_f64();
            ensure!(events == n, "{events} events of {n} in the ring");
            ensure!(
                sender.stats.entries == n,
                "{} of {n} flows encoded",
                sender.stats.entries
            );
            best = best.max(n as f64 / secs);
            bytes_per_flow = wire as f64 / n as f64;
        }
        drop(sink);
        Ok((best, bytes_per_flow))
    })?
}

/// `cargo xtask bench sync`.
pub fn run(add: &mut dyn FnMut(Entry)) -> Result<()> {
    eprintln!("lb-bench: the sender on one core, 3 x 300,000 flows");
    let (rate, best_bytes) = sender_run(300_000)?;
    eprintln!(
        "lb-bench: sender {rate:.0} flows/s, {best_bytes:.2} bytes per flow in full messages"
    );
    add(Entry {
        name: "sync_flows_per_sec",
        value: rate,
        unit: "flows/s",
        baseline: None,
        target: Target::ValueAtLeast(200_000.0),
    });
    let secs = soak_seconds(60);
    eprintln!(
        "lb-bench: the soak, {SOAK_RATE} new flows/s for {secs} s through a VRRP pair with sync"
    );
    let r = soak(
        &format!("{}sk", crate::netns::unique_prefix("bnch")),
        SOAK_RATE,
        Duration::from_secs(secs),
    )?;
    eprintln!("{r}");
    if let Err(e) = r.check() {
        eprintln!("lb-bench: the soak's checks failed: {e:#}");
    }
    add(Entry {
        name: "sync_lag_p99_ms",
        value: r.lag_percentile(0.99),
        unit: "ms",
        baseline: None,
        target: Target::ValueAtMost(LAG_P99_BOUND_MS),
    });
    add(Entry {
        name: "sync_bytes_per_flow",
        value: r.bytes_per_flow(),
        unit: "B",
        baseline: None,
        target: Target::ValueAtMost(48.0),
    });
    Ok(())
}
