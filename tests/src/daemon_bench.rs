//! `lb-bench daemon`: the control plane's reaction times, measured on the real `lb-daemon`
//! binary running in a namespace lab ([`crate::netns::DrLab`]).
//!
//! | entry                          | what it measures                                              | target       |
//! |--------------------------------|---------------------------------------------------------------|--------------|
//! | `verdict_to_map_ms`            | health verdict -> the XDP program stops choosing that backend, N = 100 real servers, `mh`; median of 20 | value <= 5 ms |
//! | `runtime_drain_to_map_ms`      | `lb-daemon real-server drain` sent -> the program stops choosing that backend (the state file written and synced on the way), same lab; median of 20 | value <= 5 ms |
//! | `detect_refused_vs_formula`    | backend refuses connections (RST): failure -> verdict, against keepalived's bound | ratio <= 1.0 |
//! | `detect_blackhole_vs_formula`  | backend silently drops (blackhole route): the same            | ratio <= 1.0 |
//! | `reload_identical_transitions` | VRRP transitions + map writes over 100 reloads of an unchanged file | value == 0 |
//! | `reload_vrrp_change_transitions` | VRRP state changes on either node of a pair of ours over 10 reloads of both, each adding or removing a VIP and raising both priorities (the master stays the higher) | value == 0 |
//! | `check_blip_resets`            | keep-alive requests reset by a 4 s check outage of a serving real server (`crate::blip_bench`); baseline: `expire_nodest_conn = true` | value == 0 |
//! | `vrrp_flood_cpu`               | the VRRP thread's CPU under 100k invalid adverts a second for 5 s (`crate::vrrp_flood`), in cores | value <= 0.5 |
//! | `ecmp_node_loss_resets`        | active-active nodes behind ECMP (`crate::ecmp_lab`): resets among 100 long-lived connections over the three nodes when one node's lb-daemon and BIRD are SIGKILLed | value == 0 |
//! | `ecmp_node_loss_new_conn_ms`   | the same run: from the kill until new connections from all 64 client addresses succeed again; baseline: the router's kernel route without the node (its netlink event), same run | value <= 1000 ms |
//!
//! `LB_BENCH_DAEMON_ONLY=text` runs only the entries whose name contains `text`.
//!
//! # `verdict_to_map_ms`: end to end, through the running daemon
//!
//! One virtual server, `lb_algo = "mh"` (Maglev, M = 65537), 100 real servers: rs1 of the lab
//! (nginx, with a `TCP_CHECK` every 100 ms, `retry = 0`) and 99 stand-ins whose MACs are
//! permanent neighbour entries in the LB's namespace (no checks: always up). The daemon runs
//! as in production (`lb-daemon run`, XDP attached in skb mode).
//!
//! The bench takes a descriptor of the daemon's own program (its id from `ip -j link`,
//! then `BPF_PROG_GET_FD_BY_ID`) and runs it with `BPF_PROG_TEST_RUN` on SYNs from clients
//! whose Maglev slot names rs1 (found by sending one SYN from each address of the three
//! IPv4 documentation /24s and keeping those forwarded to rs1's MAC). Every probe is a new
//! flow (each client's source port only ever moves up), so it is scheduled through the ring,
//! never through the flow table.
//!
//! A repetition: a prober thread runs rounds (every victim client once, then ~50 us of sleep)
//! and records each probe's wall-clock time and whether it went to rs1; the main thread
//! SIGKILLs rs1's nginx. The start is the timestamp of the daemon's own decision: the health
//! task's log line `real server 192.0.2.11:80 of ... is down`, written when the check's
//! result made the verdict, before the event even reaches the main loop (so the figure
//! includes that hop, the main loop's `dp.apply`: `Config::service_specs`, the Maglev
//! build, the diff and its map writes). The end is the first probe after the last one that
//! still went to rs1. Both clocks are CLOCK_REALTIME of the same machine (the log's
//! timestamps have microseconds). rs1's nginx is then started again, and the next repetition
//! waits until the program sends the victim clients to rs1 again. Value: the median of 20.
//!
//! # `detect_*_vs_formula`: against keepalived's formula
//!
//! keepalived 2.x `check_tcp.c`, `tcp_epilog`: after a check's result, the next one runs
//! `delay_loop` later if it succeeded or the failure counted (`retry_it >= retry`), else
//! `delay_before_retry` later (`++retry_it`); a connection attempt fails at once on an RST
//! and after `connect_timeout` (`co->connection_to`) when nothing answers. An up server goes
//! down at the `retry + 1`-th consecutive failure. So the worst case, a failure that starts
//! just after a successful check, is detected after:
//!
//! * refused (RST): `delay_loop + retry x delay_before_retry` (each failed connect takes a
//!   round trip, nothing next to these delays);
//! * blackhole (no answer): `delay_loop + (retry + 1) x connect_timeout + retry x delay_before_retry`.
//!
//! The same `TCP_CHECK` parameters for both: `delay_loop = 1`, `connect_timeout = 0.5`,
//! `retry = 2`, `delay_before_retry = 0.25`, `warmup = 0`, so the formulas give 1.5 s and
//! 3.0 s. The failure: SIGKILL of rs1's nginx (its kernel then answers SYNs with RST), or
//! `ip route add blackhole 192.0.2.2/32` in rs1's namespace (its SYN-ACKs to the LB vanish);
//! its instant is taken just *before* the kill or the `ip` command starts (so the figure can
//! only come out long, never short). The end: the timestamp of the daemon's decision line (as
//! above). After each trial the failure is undone and the bench waits for the server to be
//! up again; that line's timestamp is the instant of a successful check, from which the next
//! checks follow every `delay_loop`.
//!
//! Each entry runs 5 trials with the failure placed at phases spread over the check cycle:
//! 30 ms, 265 ms, 500 ms, 735 ms and 970 ms after a successful check. The first is the worst
//! case the formula describes (a failure right after a check; 30 ms keeps it clear of the
//! check itself and of the timers' drift), the others show the rest of the cycle. **Value:
//! the longest (max) of the trials**, because the formula is a worst-case bound: the claim is
//! that no failure takes longer to detect than keepalived's bound, and the max is the trial
//! that tests it (the median, printed on stderr, would only say where the average phase falls).
//! Baseline: the formula; ratio = value / formula.
//!
//! A trial comes out at `formula - phase` plus the daemon's own costs: the probes' round
//! trips, timer lateness and the decision's logging, measured here at about 4 ms (refused,
//! 3 probes) and 9 ms (blackhole, 3 timeouts and 2 retries). So a failure within that much
//! of a check would land a few ms over the formula, 1.003-1.005 x; keepalived's own timers
//! and probes add the same kind of time to its bound, which counts none of them.
//!
//! # `reload_identical_transitions`
//!
//! Two real servers with `TCP_CHECK`s, a non-static virtual server on a VIP owned by a VRRP
//! instance (`state = "MASTER"`, priority 150, VRRPv3 at 100 ms, alone on its segment). Once
//! it is master, the service is active and both servers are up, the bench sends 100 reloads
//! of the unchanged file over the control socket (`lb-daemon reload`'s request), waits 1 s
//! (10 advert intervals, over 3 Master_Down_Intervals: the time a spurious transition or a
//! late map update would need to show) and compares `lb-daemon status --json` before and
//! after: the VRRP instances' `transitions`, plus `map_writes` (every element write the daemon
//! made to the program's maps: services, service state, ring slots, backends; the program
//! alone writes flows, and only on traffic, of which there is none). Value: transitions + map
//! writes; it must be 0. A last reload with one weight changed checks that the counter does
//! see a change (an error otherwise).
//!
//! # `ecmp_node_loss_*`: a node lost behind ECMP
//!
//! One run of [`crate::ecmp_lab::EcmpLab`] (the lab of tests/tests/ecmp_namespace.rs): a
//! router with BIRD (dist/bird/router.conf: BGP, BFD 3 x 100 ms, `merge paths`), three
//! lb-daemon nodes that announce the VIP through their own BIRD (`[announce]`, `mh`,
//! `[sync]` to each other), three nginx DR real servers, a client with 64 addresses. The
//! shared sequence, [`crate::ecmp_lab::EcmpLab::node_loss`]: 100 keep-alive connections from
//! the client addresses in turn (the router's hash puts some through every node; checked),
//! every node holding every connection's flow; SIGKILL of lb2's daemon, then of its BIRD
//! (the kernel closes its BGP session); at once, rounds of one new connection from each of
//! the 64 addresses (250 ms timeout each) until three rounds in a row all succeed, while
//! another thread watches the router's routes (`ip monitor route` in its namespace); then
//! one request on each long-lived connection.
//!
//! * `ecmp_node_loss_resets`: the long-lived connections reset on that last request (the
//!   other outcomes, answered by another real server or timed out, are printed on stderr).
//!   Target 0. No baseline.
//! * `ecmp_node_loss_new_conn_ms`: from the instant before the kill to the start of the
//!   first of those three rounds (so a round that began before the route changed and failed
//!   after its timeout counts whole). Target: the issue's bound, 1000 ms
//!   ([`crate::ecmp_lab::RECOVERY_BOUND`]: BFD's 3 x 100 ms plus BGP and the kernel; a BIRD
//!   that dies closes its session, so BFD's detection is the slow case, not this one).
//!   Baseline: from the same instant to the router's kernel installing its route without
//!   the node (the netlink event as `ip monitor` reports it), in the same run: the routing
//!   part of the figure, which the clients' rounds follow (ratio >= 1, but for the few ms
//!   between a round's start and its SYNs, should the route change in them). What is
//!   above 1 is mostly the kill itself: the first round starts once both processes are
//!   reaped (tens of ms for the daemon; printed on stderr), and a round that began before
//!   the route changed counts whole.
//!
//! Without root, bird2 or a daemon that takes `[announce]`, both entries are skipped with a
//! `SKIP` line on stderr (an error under `LB_REQUIRE_PRIVILEGED=1`, as for the namespace
//! tests).
use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, ensure, Context, Result};
use lb_common::reason::XDP_TX;
use lb_daemon::model::RealServerAction;

use crate::{
    lab::{daemon_bin, restart_nginx, start_daemon_resolving, with_control_socket},
    netns::{server_v4, unique_prefix, wait_until, DrLab, Netns, Proc, HTTP_PORT, VIP_V4},
    packet::{ether, tcp, Ipv4, ETH_P_IP, TCP_SYN},
    report::{median, Entry, Target},
};

fn progress(msg: &str) {
    eprintln!("lb-bench: {msg}");
}

fn fmt_ms(v: &[f64]) -> String {
    v.iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// -------------------------------------------------------------------------------------------
// Time: the daemon's log timestamps and ours, in microseconds since the Unix epoch
// -------------------------------------------------------------------------------------------

/// CLOCK_REALTIME in microseconds since the Unix epoch: the clock of the daemon's log.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The timestamp that starts a line of the daemon's log (tracing-subscriber's default
/// format, `2025-01-02T03:04:05.123456Z`), in microseconds since the Unix epoch.
pub fn log_time_us(line: &str) -> Option<i64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let mi: i64 = t.next()?.parse().ok()?;
    let sec = t.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: i64 = s.parse().ok()?;
    // The fraction to microseconds, whatever its number of digits.
    let mut us: i64 = 0;
    for c in frac.chars().chain(std::iter::repeat('0')).take(6) {
        us = us * 10 + i64::from(c.to_digit(10)?);
    }
    let days = days_from_civil(y, mo, day);
    Some(((days * 86_400 + h * 3_600 + mi * 60 + s) * 1_000_000) + us)
}

/// The daemon's log lines that contain `needle`.
fn log_lines(daemon: &Proc, needle: &str) -> Vec<String> {
    daemon
        .read_stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// The timestamp of the `n`-th (0-based) log line containing `needle`.
fn nth_log_time(daemon: &Proc, needle: &str, n: usize) -> Result<i64> {
    let lines = log_lines(daemon, needle);
    let line = lines
        .get(n)
        .with_context(|| format!("no log line {n} with {needle:?}"))?;
    log_time_us(line).with_context(|| format!("no timestamp in the log line {line:?}"))
}

/// Waits until the log has more than `before` lines containing `needle`; returns the
/// timestamp of the first new one.
fn wait_log(daemon: &Proc, needle: &str, before: usize, timeout: Duration) -> Result<i64> {
    let mut exited = false;
    let r = wait_until(&format!("the daemon to log {needle:?}"), timeout, || {
        exited = !daemon.is_running();
        exited || log_lines(daemon, needle).len() > before
    });
    if exited {
        bail!("lb-daemon exited:\n{}", daemon.read_stderr());
    }
    r?;
    nth_log_time(daemon, needle, before)
}

/// The health task's decision lines for a real server (`health::log_event`): logged when a
/// check's result changes the server's state, before the event goes to the main loop.
fn decision_needles(backend: &str, service: &str) -> (String, String) {
    (
        format!("real server {backend} of {service} is down"),
        format!("real server {backend} of {service} is up"),
    )
}

// -------------------------------------------------------------------------------------------
// The daemon in the lab
// -------------------------------------------------------------------------------------------

fn global_and_dataplane(router_id: &str) -> String {
    format!(
        "[global_defs]\nrouter_id = \"{router_id}\"\n\n[dataplane]\ninterface = \"eth0\"\n\
         xdp_mode = \"skb\"\nmax_flows = 65536\n"
    )
}

// -------------------------------------------------------------------------------------------
// The daemon's XDP program, run with BPF_PROG_TEST_RUN
// -------------------------------------------------------------------------------------------

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN (`test`), up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// A program someone else loaded (the daemon), by its kernel id.
pub struct ProgFd(OwnedFd);

impl ProgFd {
    pub fn by_id(id: u32) -> Result<Self> {
        let attr = GetFdByIdAttr {
            prog_id: id,
            next_id: 0,
            open_flags: 0,
        };
        // SAFETY: bpf(2) with an attribute of the size we pass; it only reads it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_FD_BY_ID,
                &attr as *const GetFdByIdAttr,
                std::mem::size_of::<GetFdByIdAttr>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"));
        }
        // SAFETY: a new descriptor the kernel just gave us.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// The XDP program attached to `ifname` in `ns` (`ip -j link`).
    pub fn attached_to(ns: &Netns, ifname: &str) -> Result<Self> {
        let id = crate::xdp::attached_prog_id(ns, ifname)?
            .with_context(|| format!("no XDP program on {ifname} in {}", ns.name()))?;
        Self::by_id(id)
    }

    /// One run of `frame`; returns the verdict and the frame as the program left it.
    pub fn run(&self, frame: &[u8], out: &mut [u8]) -> Result<(u32, usize)> {
        test_run_once(self.0.as_fd(), frame, out)
    }
}

/// One BPF_PROG_TEST_RUN of `frame` on the program `prog`; returns the verdict and the
/// frame as the program left it.
pub fn test_run_once(prog: BorrowedFd<'_>, frame: &[u8], out: &mut [u8]) -> Result<(u32, usize)> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: bpf(2) with buffers that live across the call and sizes that match them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    Ok((attr.retval, attr.data_size_out as usize))
}

// -------------------------------------------------------------------------------------------
// verdict_to_map_ms
// -------------------------------------------------------------------------------------------

const VERDICT_BACKENDS: usize = 100;
const VERDICT_REPS: usize = 20;
/// Rounds in a row with no probe at the victim that end a repetition.
const CLEAN_ROUNDS: usize = 100;
const CLIENT_MAC: [u8; 6] = [0x02, 0xdb, 0x00, 0x00, 0x00, 0xc1];

/// The stand-in real servers: 192.0.2.101.. with MACs 02:db:01:00:00:NN.
fn stand_in(i: usize) -> (Ipv4Addr, String) {
    (
        Ipv4Addr::new(192, 0, 2, 101 + i as u8),
        format!("02:db:01:00:00:{:02x}", i + 1),
    )
}

/// SYNs to the VIP from chosen clients, each on a port it never used before.
struct Prober<'a> {
    prog: &'a ProgFd,
    lb_mac: [u8; 6],
    victim_mac: [u8; 6],
    clients: Vec<Ipv4Addr>,
    next_port: Vec<u16>,
    out: Vec<u8>,
}

impl Prober<'_> {
    /// Where a new flow from `client` goes: the destination MAC the program wrote.
    fn send(&mut self, client: Ipv4Addr, port: u16) -> Result<[u8; 6]> {
        let ip = Ipv4::new(client, VIP_V4, 6);
        let seg = tcp(ip.addrs(), port, HTTP_PORT, TCP_SYN, b"");
        let frame = ether(self.lb_mac, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg));
        let (verdict, len) = self.prog.run(&frame, &mut self.out)?;
        ensure!(
            verdict == XDP_TX && len >= 6,
            "a SYN from {client}:{port} was not forwarded (verdict {verdict})"
        );
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.out[..6]);
        Ok(mac)
    }

    /// A new flow from client `i`: true when it went to the victim.
    fn probe(&mut self, i: usize) -> Result<bool> {
        let port = self.next_port[i];
        ensure!(
            port < u16::MAX,
            "client {} used every source port",
            self.clients[i]
        );
        self.next_port[i] += 1;
        Ok(self.send(self.clients[i], port)? == self.victim_mac)
    }

    /// One probe per client; true when every one went to the victim.
    fn all_hit(&mut self) -> Result<bool> {
        let mut all = true;
        for i in 0..self.clients.len() {
            all &= self.probe(i)?;
        }
        Ok(all)
    }

    /// Rounds until `w.stop`: each probe's time and whether it hit.
    fn watch(&mut self, w: &Watch) -> Result<Vec<(i64, bool)>> {
        let mut records = Vec::new();
        while !w.stop.load(Ordering::Relaxed) {
            let mut any = false;
            for i in 0..self.clients.len() {
                let t = now_us();
                let hit = self.probe(i)?;
                records.push((t, hit));
                any |= hit;
            }
            if any {
                w.clean.store(0, Ordering::Relaxed);
            } else {
                w.clean.fetch_add(1, Ordering::Relaxed);
            }
            w.rounds.fetch_add(1, Ordering::Relaxed);
            ensure!(records.len() < 4_000_000, "the prober ran for too long");
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(records)
    }
}

/// What the prober thread and the main thread share during a repetition.
#[derive(Default)]
struct Watch {
    stop: AtomicBool,
    /// Rounds so far.
    rounds: AtomicUsize,
    /// Rounds in a row without a probe at the victim.
    clean: AtomicUsize,
}

/// From the decision at `t0` to the first probe after the last one that hit, in ms.
fn stop_time(records: &[(i64, bool)], t0: i64) -> Result<f64> {
    ensure!(
        records.first().is_some_and(|r| r.1),
        "the victim was not chosen when the repetition started"
    );
    let last = records
        .iter()
        .rposition(|r| r.1)
        .context("no probe hit the victim")?;
    let (t_stop, _) = records
        .get(last + 1)
        .context("the probes stopped before the victim left the ring")?;
    Ok((t_stop - t0) as f64 / 1e3)
}

/// What takes rs1 out of the ring in [`to_map`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// nginx killed: the checks' verdict (`verdict_to_map_ms`).
    Verdict,
    /// `lb-daemon real-server drain` (`runtime_drain_to_map_ms`): from the command's
    /// request on the control socket, through the state file written and synced, to the
    /// program's last new flow to rs1.
    Drain,
}

/// From rs1 taken out to the program's last new flow to it, probed on the attached program.
fn to_map(out: Out) -> Result<Entry> {
    let name = match out {
        Out::Verdict => "verdict_to_map_ms",
        Out::Drain => "runtime_drain_to_map_ms",
    };
    let lab = DrLab::new(&unique_prefix("bv"), 1)?;
    // The stand-ins: permanent neighbour entries, which the daemon's resolver reads and
    // never touches.
    let batch: String = (0..VERDICT_BACKENDS - 1)
        .map(|i| {
            let (ip, mac) = stand_in(i);
            format!("neigh replace {ip} lladdr {mac} dev eth0 nud permanent\n")
        })
        .collect();
    let batch_file = lab.lb().dir().join("neigh.batch");
    std::fs::write(&batch_file, batch)?;
    lab.lb()
        .ip(&["-batch", batch_file.to_str().context("path")?])?;

    let victim = server_v4(1);
    let service = format!("{VIP_V4}:{HTTP_PORT}/TCP");
    let mut config = global_and_dataplane("verdict");
    config += &format!(
        "\n[[virtual_server]]\nip = \"{VIP_V4}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
         lb_algo = \"mh\"\nlb_kind = \"DR\"\nstatic = true\n\n\
         [[virtual_server.real_server]]\nip = \"{victim}\"\nport = {HTTP_PORT}\nweight = 1\n\
         TCP_CHECK = {{ delay_loop = 0.1, connect_timeout = 0.1, retry = 0, delay_before_retry = 0.1, warmup = 0 }}\n"
    );
    for i in 0..VERDICT_BACKENDS - 1 {
        let (ip, _) = stand_in(i);
        config += &format!(
            "\n[[virtual_server.real_server]]\nip = \"{ip}\"\nport = {HTTP_PORT}\nweight = 1\n"
        );
    }
    let (daemon, _) = start_daemon_resolving(&lab, &config, "skb", VERDICT_BACKENDS)?;
    let prog = ProgFd::attached_to(lab.lb(), "eth0")?;
    let socket = lab.lb().dir().join("ctl.sock");
    let runtime = |action| lb_daemon::control::Request::RealServer {
        service: Some(service.clone()),
        real: Some(victim.to_string()),
        action,
        all: false,
    };

    // The clients whose Maglev slot names rs1: one SYN from every address of the three
    // IPv4 documentation /24s.
    let mut prober = Prober {
        prog: &prog,
        lb_mac: lab.lb_mac()?,
        victim_mac: lab.server_macs()?[0],
        clients: Vec::new(),
        next_port: Vec::new(),
        out: vec![0u8; 512],
    };
    let mut backends = std::collections::HashSet::new();
    for net in [[192, 0, 2], [198, 51, 100], [203, 0, 113]] {
        for host in 0..=255u8 {
            let client = Ipv4Addr::new(net[0], net[1], net[2], host);
            let mac = prober.send(client, 1024)?;
            backends.insert(mac);
            if mac == prober.victim_mac {
                prober.clients.push(client);
                prober.next_port.push(1025);
            }
        }
    }
    ensure!(
        backends.len() >= VERDICT_BACKENDS / 2 && !prober.clients.is_empty(),
        "{name}: 768 clients went to {} backends, {} of them to rs1",
        backends.len(),
        prober.clients.len()
    );
    progress(&format!(
        "{name}: {} real servers under mh, {} of 768 clients map to rs1; {VERDICT_REPS} repetitions",
        VERDICT_BACKENDS,
        prober.clients.len()
    ));

    let (down, up) = decision_needles(&format!("{victim}:{HTTP_PORT}"), &service);
    let main_loop = format!("backend={victim}:{HTTP_PORT} up=false");
    let mut nginx = lab.nginx(1).clone();
    let mut values = Vec::with_capacity(VERDICT_REPS);
    for rep in 0..VERDICT_REPS {
        let downs = log_lines(&daemon, &down).len();
        let mains = log_lines(&daemon, &main_loop).len();
        let w = Watch::default();
        let (t0, records) = std::thread::scope(|s| -> Result<(i64, Vec<(i64, bool)>)> {
            let watcher = s.spawn(|| prober.watch(&w));
            let measured = (|| -> Result<i64> {
                // The prober sees rs1 chosen before it fails.
                wait_until("the first probes", Duration::from_secs(5), || {
                    w.rounds.load(Ordering::Relaxed) >= 2 || watcher.is_finished()
                })?;
                let t0 = match out {
                    Out::Verdict => {
                        nginx.signal(libc::SIGKILL)?;
                        wait_log(&daemon, &down, downs, Duration::from_secs(5))?
                    }
                    Out::Drain => {
                        let t0 = now_us();
                        lb_daemon::control::cli_change(&socket, runtime(RealServerAction::Drain))
                            .context("drain")?;
                        t0
                    }
                };
                wait_until(
                    "the program to stop choosing rs1",
                    Duration::from_secs(5),
                    || w.clean.load(Ordering::Relaxed) >= CLEAN_ROUNDS || watcher.is_finished(),
                )?;
                Ok(t0)
            })();
            w.stop.store(true, Ordering::Relaxed);
            let records = watcher
                .join()
                .map_err(|_| anyhow::anyhow!("the prober panicked"))??;
            Ok((measured?, records))
        })?;
        let ms = stop_time(&records, t0).with_context(|| format!("{name}, repetition {rep}"))?;
        if out == Out::Verdict {
            let main_ms = nth_log_time(&daemon, &main_loop, mains)
                .map(|t| format!("{:.3}", (t - t0) as f64 / 1e3))
                .unwrap_or_else(|_| "?".into());
            progress(&format!(
                "{name} {}/{VERDICT_REPS}: {ms:.3} ms from the verdict to the last new flow to rs1 \
                 (the main loop had it after {main_ms} ms; {} probes)",
                rep + 1,
                records.len()
            ));
        } else {
            progress(&format!(
                "{name} {}/{VERDICT_REPS}: {ms:.3} ms from the drain request to the last new flow \
                 to rs1 ({} probes)",
                rep + 1,
                records.len()
            ));
        }
        values.push(ms);

        // rs1 back, and chosen again, before the next repetition.
        match out {
            Out::Verdict => {
                let ups = log_lines(&daemon, &up).len();
                nginx
                    .wait_timeout(Duration::from_secs(5))?
                    .context("nginx did not die")?;
                nginx = restart_nginx(&lab, 1)?;
                wait_log(&daemon, &up, ups, Duration::from_secs(5))?;
            }
            Out::Drain => {
                lb_daemon::control::cli_change(&socket, runtime(RealServerAction::Reset))
                    .context("reset")?;
            }
        }
        let mut err = None;
        wait_until(
            "the program to choose rs1 again",
            Duration::from_secs(5),
            || match prober.all_hit() {
                Ok(all) => all,
                Err(e) => {
                    err = Some(e);
                    true
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
    }
    progress(&format!("{name}: [{}] ms", fmt_ms(&values)));
    drop(prog);
    drop(daemon);
    Ok(Entry {
        name,
        value: median(&values),
        unit: "ms",
        baseline: None,
        target: Target::ValueAtMost(5.0),
    })
}

// -------------------------------------------------------------------------------------------
// detect_*_vs_formula
// -------------------------------------------------------------------------------------------

/// The `TCP_CHECK` timing of both detection entries, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CheckTiming {
    pub delay_loop: f64,
    pub connect_timeout: f64,
    pub retry: u32,
    pub delay_before_retry: f64,
}

pub const DETECT_TIMING: CheckTiming = CheckTiming {
    delay_loop: 1.0,
    connect_timeout: 0.5,
    retry: 2,
    delay_before_retry: 0.25,
};

/// How the backend fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// nginx killed: the kernel answers SYNs with RST.
    Refused,
    /// A blackhole route to the LB in the server's namespace: no answer at all.
    Blackhole,
}

impl CheckTiming {
    /// keepalived's worst-case detection time for `failure`, in seconds (module docs).
    pub fn formula(&self, failure: Failure) -> f64 {
        let retry = f64::from(self.retry);
        match failure {
            Failure::Refused => self.delay_loop + retry * self.delay_before_retry,
            Failure::Blackhole => {
                self.delay_loop
                    + (retry + 1.0) * self.connect_timeout
                    + retry * self.delay_before_retry
            }
        }
    }

    fn toml(&self) -> String {
        format!(
            "TCP_CHECK = {{ delay_loop = {}, connect_timeout = {}, retry = {}, delay_before_retry = {}, warmup = 0 }}",
            self.delay_loop, self.connect_timeout, self.retry, self.delay_before_retry
        )
    }
}

const DETECT_TRIALS: usize = 5;
/// The first and last phases' distance from a check.
const PHASE_MARGIN: f64 = 0.03;

/// Trial `i`'s failure, in seconds after a successful check.
fn phase(t: &CheckTiming, i: usize) -> f64 {
    PHASE_MARGIN + i as f64 * (t.delay_loop - 2.0 * PHASE_MARGIN) / (DETECT_TRIALS - 1) as f64
}

struct DetectLab {
    lab: DrLab,
    daemon: Proc,
    nginx: Proc,
    down: String,
    up: String,
    /// When the server was last seen up by a check (its "is up" line).
    last_up: i64,
}

/// rs1 has the LB's address behind a blackhole route.
const BLACKHOLE: [&str; 4] = ["route", "add", "blackhole", "192.0.2.2/32"];

impl DetectLab {
    fn new(t: &CheckTiming) -> Result<Self> {
        let lab = DrLab::new(&unique_prefix("bd"), 1)?;
        let rs = server_v4(1);
        let config = global_and_dataplane("detect")
            + &format!(
                "\n[[virtual_server]]\nip = \"{VIP_V4}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
                 lb_algo = \"rr\"\nlb_kind = \"DR\"\nstatic = true\n\n\
                 [[virtual_server.real_server]]\nip = \"{rs}\"\nport = {HTTP_PORT}\nweight = 1\n{}\n",
                t.toml()
            );
        let (daemon, _) = start_daemon_resolving(&lab, &config, "skb", 1)?;
        let (down, up) = decision_needles(
            &format!("{rs}:{HTTP_PORT}"),
            &format!("{VIP_V4}:{HTTP_PORT}/TCP"),
        );
        let nginx = lab.nginx(1).clone();
        let mut d = DetectLab {
            lab,
            daemon,
            nginx,
            down,
            up,
            last_up: 0,
        };
        // A first failure and recovery, unmeasured: the recovery's check is the phase
        // reference of the first trial.
        let downs = log_lines(&d.daemon, &d.down).len();
        d.fail(Failure::Refused)?;
        wait_log(
            &d.daemon,
            &d.down,
            downs,
            Duration::from_secs_f64(t.formula(Failure::Refused) + 5.0),
        )?;
        d.restore(Failure::Refused, t)?;
        Ok(d)
    }

    fn fail(&mut self, f: Failure) -> Result<()> {
        match f {
            Failure::Refused => self.nginx.signal(libc::SIGKILL),
            Failure::Blackhole => self.lab.server(1).ip(&BLACKHOLE).map(drop),
        }
    }

    /// Undoes the failure and waits until a check sees the server up.
    fn restore(&mut self, f: Failure, t: &CheckTiming) -> Result<()> {
        let ups = log_lines(&self.daemon, &self.up).len();
        match f {
            Failure::Refused => {
                self.nginx
                    .wait_timeout(Duration::from_secs(5))?
                    .context("nginx did not die")?;
                self.nginx = restart_nginx(&self.lab, 1)?;
            }
            Failure::Blackhole => {
                let mut del = BLACKHOLE;
                del[1] = "del";
                self.lab.server(1).ip(&del)?;
            }
        }
        self.last_up = wait_log(
            &self.daemon,
            &self.up,
            ups,
            Duration::from_secs_f64(t.delay_loop + t.connect_timeout + 5.0),
        )?;
        Ok(())
    }

    /// One trial: the failure `phase` seconds after a check; the time to the verdict, ms.
    fn trial(&mut self, f: Failure, t: &CheckTiming, phase: f64) -> Result<f64> {
        // The checks follow the last successful one every delay_loop: aim at the first
        // cycle that is still ahead of us.
        let loop_us = (t.delay_loop * 1e6) as i64;
        let mut at = self.last_up + (phase * 1e6) as i64;
        while at < now_us() + 10_000 {
            at += loop_us;
        }
        std::thread::sleep(Duration::from_micros((at - now_us()).max(0) as u64));
        let downs = log_lines(&self.daemon, &self.down).len();
        let t_fail = now_us();
        self.fail(f)?;
        let t_down = wait_log(
            &self.daemon,
            &self.down,
            downs,
            Duration::from_secs_f64(t.formula(f) + 5.0),
        )?;
        self.restore(f, t)?;
        Ok((t_down - t_fail) as f64 / 1e3)
    }
}

fn detect(d: &mut DetectLab, f: Failure, t: &CheckTiming) -> Result<Entry> {
    let name = match f {
        Failure::Refused => "detect_refused_vs_formula",
        Failure::Blackhole => "detect_blackhole_vs_formula",
    };
    let formula_ms = t.formula(f) * 1e3;
    progress(&format!(
        "{name}: {DETECT_TRIALS} trials, keepalived's bound {formula_ms:.0} ms"
    ));
    let mut values = Vec::with_capacity(DETECT_TRIALS);
    for i in 0..DETECT_TRIALS {
        let p = phase(t, i);
        let ms = d
            .trial(f, t, p)
            .with_context(|| format!("{name}, trial {}", i + 1))?;
        progress(&format!(
            "{name} {}/{DETECT_TRIALS}: failure {:.0} ms after a check, detected in {ms:.1} ms \
             (ratio {:.3})",
            i + 1,
            p * 1e3,
            ms / formula_ms
        ));
        values.push(ms);
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    progress(&format!(
        "{name}: [{}] ms, median {:.1} ms, max {max:.1} ms",
        fmt_ms(&values),
        median(&values)
    ));
    Ok(Entry {
        name,
        value: max,
        unit: "ms",
        baseline: Some(formula_ms),
        target: Target::RatioAtMost(1.0),
    })
}

// -------------------------------------------------------------------------------------------
// reload_identical_transitions
// -------------------------------------------------------------------------------------------

const RELOADS: usize = 100;

/// `lb-daemon status --json` of the daemon behind `socket`.
fn status(socket: &Path) -> Result<serde_json::Value> {
    let out = lb_daemon::control::cli_status(socket, Some(lb_daemon::control::Json::Compact))
        .context("status")?;
    serde_json::from_str(&out).context("parsing the status")
}

fn transitions(s: &serde_json::Value) -> u64 {
    s["vrrp"]
        .as_array()
        .map(|v| v.iter().filter_map(|i| i["transitions"].as_u64()).sum())
        .unwrap_or(0)
}

fn map_writes(s: &serde_json::Value) -> Result<u64> {
    s["map_writes"]
        .as_u64()
        .context("the status has no map_writes: an lb-daemon built before it was added?")
}

fn reload_identical() -> Result<Entry> {
    let name = "reload_identical_transitions";
    let lab = DrLab::new(&unique_prefix("br"), 2)?;
    let check = "TCP_CHECK = { delay_loop = 0.5, connect_timeout = 0.3, retry = 1, delay_before_retry = 0.2, warmup = 0 }";
    let mut config = global_and_dataplane("reload");
    config += &format!(
        "\n[[virtual_server]]\nip = \"{VIP_V4}\"\nport = {HTTP_PORT}\nprotocol = \"TCP\"\n\
         lb_algo = \"mh\"\nlb_kind = \"DR\"\n"
    );
    for i in 1..=2 {
        config += &format!(
            "\n[[virtual_server.real_server]]\nip = \"{}\"\nport = {HTTP_PORT}\nweight = 1\n{check}\n",
            server_v4(i)
        );
    }
    config += &format!(
        "\n[[vrrp_instance]]\nname = \"VI_1\"\nstate = \"MASTER\"\ninterface = \"eth0\"\n\
         virtual_router_id = 51\npriority = 150\nadvert_int = 0.1\nversion = 3\n\
         virtual_ipaddress = [\"{VIP_V4}/24\"]\n"
    );
    let (daemon, _) = start_daemon_resolving(&lab, &config, "skb", 2)?;
    let socket = lab.lb().dir().join("ctl.sock");
    let mut last = None;
    let steady = wait_until(
        "master, the service active and both servers up",
        Duration::from_secs(15),
        || {
            let Ok(s) = status(&socket) else {
                return false;
            };
            let ok = s["vrrp"][0]["state"] == "MASTER"
                && s["services"][0]["active"] == true
                && s["services"][0]["backends"]
                    .as_array()
                    .is_some_and(|b| b.len() == 2 && b.iter().all(|b| b["health"] == "up"));
            last = Some(s);
            ok
        },
    );
    steady.with_context(|| format!("last status: {last:?}\n{}", daemon.read_stderr()))?;
    let before = status(&socket)?;
    let writes_before = map_writes(&before)?;
    ensure!(
        writes_before > 0,
        "{name}: the daemon reports no map writes, although it filled the maps"
    );
    let reloaded = daemon
        .read_stderr()
        .matches("configuration reloaded")
        .count();
    let roles = daemon.read_stderr().matches("VRRP role").count();
    for i in 0..RELOADS {
        lb_daemon::control::cli_reload(&socket)
            .with_context(|| format!("{name}: reload {}", i + 1))?;
    }
    // The observation window after the last reload (not a measurement): 10 advert
    // intervals, over three Master_Down_Intervals.
    std::thread::sleep(Duration::from_secs(1));
    let after = status(&socket)?;
    let log = daemon.read_stderr();
    let accepted = log.matches("configuration reloaded").count() - reloaded;
    ensure!(
        accepted == RELOADS,
        "{name}: {accepted} of {RELOADS} reloads logged as done"
    );
    let t = transitions(&after).saturating_sub(transitions(&before));
    let w = map_writes(&after)?.saturating_sub(writes_before);
    // The instrument itself: a reload that does change something shows up in the counter.
    let changed = config.replacen("weight = 1\n", "weight = 2\n", 1);
    let dir = lab.lb().dir();
    std::fs::write(dir.join("lb.toml"), with_control_socket(&changed, dir))?;
    lb_daemon::control::cli_reload(&socket).context("the reload with a new weight")?;
    let control = map_writes(&status(&socket)?)?.saturating_sub(map_writes(&after)?);
    ensure!(
        control > 0,
        "{name}: a reload with a new weight wrote nothing to the maps: the counter is blind"
    );
    progress(&format!(
        "{name}: {RELOADS} reloads: {t} VRRP transitions, {w} map writes, {} role events \
         (state {}); then one reload with a new weight: {control} map writes",
        log.matches("VRRP role").count() - roles,
        after["vrrp"][0]["state"]
    ));
    Ok(Entry {
        name,
        value: (t + w) as f64,
        unit: "changes",
        baseline: None,
        target: Target::ValueEquals(0.0),
    })
}

/// `reload_vrrp_change_transitions`: a pair of our daemons (VRRPv3, 1 s, priorities 150 and
/// 100); ten rounds, each reloading both nodes with both priorities one higher and, in turn,
/// a second VIP added or removed; each round waits until the master's adverts carry its new
/// priority and the VIP is on it (or gone). Counted: state changes in both nodes' logs and
/// status; and the VIP must never have left node 0 nor reached node 1.
fn reload_vrrp_change() -> Result<Entry> {
    use crate::vrrp_lab::{Peer, VrrpLab, VrrpParams};
    const ROUNDS: u8 = 10;
    let name = "reload_vrrp_change_transitions";
    let params = VrrpParams {
        master_hint: false,
        ..VrrpParams::v3(100)
    };
    let mut lab = VrrpLab::new(&unique_prefix("rv"), &params, [Peer::Ours, Peer::Ours])?;
    let watch = lab.advert_watch()?;
    let src = lab.advert_source(0)?;
    lab.start_both()?;
    lab.wait_holder(0, Duration::from_secs(10))?;
    let vip2: std::net::IpAddr = "192.0.2.101".parse()?;
    let transitions = |lab: &VrrpLab, i: usize| -> Result<u64> {
        let s = lab.status_ours(i)?;
        s["vrrp"][0]["transitions"]
            .as_u64()
            .context("no transitions in the status")
    };
    // Every address change on node 0: the first VIP must never go, even for a moment.
    let monitor = lab.node(0).spawn(&["ip", "-o", "monitor", "address"])?;
    let before = [transitions(&lab, 0)?, transitions(&lab, 1)?];
    let logged = [lab.ours_transitions(0).len(), lab.ours_transitions(1).len()];
    let has = |i: usize, a: std::net::IpAddr| {
        lab.node(i)
            .ip(&["-o", "addr", "show"])
            .unwrap_or_default()
            .contains(&format!(" {a}/"))
    };
    let started = std::time::Instant::now();
    for round in 1..=ROUNDS {
        let more: &[std::net::IpAddr] = if round % 2 == 1 { &[vip2] } else { &[] };
        let t = std::time::Instant::now();
        for i in [1, 0] {
            lab.reload_ours(
                i,
                &params.ours_toml_with(i, params.priorities[i] + round, more),
            )?;
        }
        let priority = params.priorities[0] + round;
        watch.wait_for(
            "the master's advert with its new priority",
            t,
            Duration::from_secs(3),
            |a| a.src == src && a.priority == priority,
        )?;
        wait_until(
            "the second VIP added or removed",
            Duration::from_secs(5),
            || has(0, vip2) != more.is_empty(),
        )?;
        ensure!(
            has(0, params.vip) && !has(1, params.vip) && !has(1, vip2),
            "round {round}: the VIPs moved"
        );
    }
    // A change that went wrong shows later too (a backup that stopped hearing the master
    // takes over after its Master_Down_Interval): watch that long, by the master's adverts.
    let settle = std::time::Instant::now();
    let mut at = settle;
    while at.duration_since(settle) < params.master_down_interval(1) {
        at = watch
            .wait_for(
                "the master's next advert",
                at,
                Duration::from_secs(3),
                |a| a.src == src,
            )?
            .at;
    }
    ensure!(
        has(0, params.vip) && !has(1, params.vip),
        "the VIP moved after the reloads"
    );
    let gone = format!(" {}/", params.vip);
    let flaps = monitor
        .read_stdout()
        .lines()
        .filter(|l| l.starts_with("Deleted") && l.contains(&gone))
        .count();
    ensure!(flaps == 0, "node 0's VIP was deleted {flaps} times");
    let after = [transitions(&lab, 0)?, transitions(&lab, 1)?];
    let status_changes = (after[0] - before[0]) + (after[1] - before[1]);
    let log_changes =
        (lab.ours_transitions(0).len() - logged[0]) + (lab.ours_transitions(1).len() - logged[1]);
    progress(&format!(
        "{name}: {ROUNDS} rounds of two reloads in {:.1} s: {status_changes} state changes \
         in the status, {log_changes} in the logs",
        started.elapsed().as_secs_f64()
    ));
    Ok(Entry {
        name,
        value: status_changes.max(log_changes as u64) as f64,
        unit: "transitions",
        baseline: None,
        target: Target::ValueEquals(0.0),
    })
}

// -------------------------------------------------------------------------------------------
// ecmp_node_loss_*
// -------------------------------------------------------------------------------------------

const ECMP_ENTRIES: [&str; 2] = ["ecmp_node_loss_resets", "ecmp_node_loss_new_conn_ms"];
/// The node killed (the tests' victim too).
const ECMP_VICTIM: usize = 2;

/// Both `ecmp_node_loss_*` entries, from one run of the ECMP lab.
fn ecmp_node_loss() -> Result<(Entry, Entry)> {
    use crate::ecmp_lab::{per_node, Death, EcmpLab, LONG_LIVED, RECOVERY_BOUND};
    let mut lab = EcmpLab::new(&unique_prefix("bec")).context("the ECMP lab")?;
    lab.start_all()?;
    let (spread, loss) = lab.node_loss(ECMP_VICTIM, Death::Killed)?;
    progress(&format!(
        "ecmp_node_loss: {LONG_LIVED} long-lived connections through {}; {loss}; the \
         connections after: {:?}",
        per_node(&spread.through),
        loss.after
    ));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    drop(spread);
    drop(lab);
    Ok((
        Entry {
            name: ECMP_ENTRIES[0],
            value: loss.after.resets as f64,
            unit: "resets",
            baseline: None,
            target: Target::ValueEquals(0.0),
        },
        Entry {
            name: ECMP_ENTRIES[1],
            value: ms(loss.recovery.after),
            unit: "ms",
            baseline: Some(ms(loss.route_out)),
            target: Target::ValueAtMost(ms(RECOVERY_BOUND)),
        },
    ))
}

/// Entries that cannot run here: a `SKIP` line naming them, as the namespace tests print
/// one, or an error under `LB_REQUIRE_PRIVILEGED=1`.
fn skip(names: &[&str], why: &str) -> Result<()> {
    use crate::netns::PRIVILEGED_ENV;
    let names = names.join(", ");
    if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
        bail!("{names}: {why}, and {PRIVILEGED_ENV}=1 forbids skipping");
    }
    eprintln!("SKIP {names}: {why}; set {PRIVILEGED_ENV}=1 to make this a failure");
    Ok(())
}

// -------------------------------------------------------------------------------------------
// The benchmark
// -------------------------------------------------------------------------------------------

/// Runs every entry, handing each to `emit` as it completes (the caller checked that we are
/// root). An error means the benchmark could not run; a missed target is not one.
pub fn run(emit: &mut dyn FnMut(Entry)) -> Result<()> {
    daemon_bin()?;
    for tool in ["ip", "nginx", "curl"] {
        if crate::vrrp_lab::find_program(tool).is_none() {
            bail!("daemon needs {tool} (scripts/setup.sh test installs it)");
        }
    }
    // LB_BENCH_DAEMON_ONLY=substring runs only the matching entries (when looking into one).
    let only = std::env::var("LB_BENCH_DAEMON_ONLY").unwrap_or_default();
    let wanted = |name: &str| name.contains(&only);
    if wanted("verdict_to_map_ms") {
        emit(to_map(Out::Verdict)?);
    }
    if wanted("runtime_drain_to_map_ms") {
        emit(to_map(Out::Drain)?);
    }
    if wanted("detect_refused_vs_formula") || wanted("detect_blackhole_vs_formula") {
        let t = DETECT_TIMING;
        let mut d = DetectLab::new(&t)?;
        if wanted("detect_refused_vs_formula") {
            emit(detect(&mut d, Failure::Refused, &t)?);
        }
        if wanted("detect_blackhole_vs_formula") {
            emit(detect(&mut d, Failure::Blackhole, &t)?);
        }
    }
    if wanted("reload_identical_transitions") {
        emit(reload_identical()?);
    }
    if wanted("reload_vrrp_change_transitions") {
        emit(reload_vrrp_change()?);
    }
    if wanted("check_blip_resets") {
        emit(crate::blip_bench::check_blip_resets()?);
    }
    if wanted("vrrp_flood_cpu") {
        emit(crate::vrrp_flood::vrrp_flood_cpu()?);
    }
    if wanted("crash_failed_requests") {
        emit(crate::hitless_bench::crash_failed_requests()?);
    }
    if wanted("restart_failed_requests") || wanted("restart_to_adopted_ms") {
        let (failed, adopted) = crate::hitless_bench::restart()?;
        emit(failed);
        emit(adopted);
    }
    if ECMP_ENTRIES.iter().any(|n| wanted(n)) {
        match crate::ecmp_lab::unavailable()? {
            None => {
                let (resets, new_conn) = ecmp_node_loss()?;
                emit(resets);
                emit(new_conn);
            }
            Some(why) => skip(&ECMP_ENTRIES, &why)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps() {
        let line = "2025-11-25T10:23:00.123456Z  WARN lb_daemon::health: real server x is down";
        let want = 1_764_066_180_123_456i64;
        assert_eq!(log_time_us(line), Some(want));
        assert_eq!(log_time_us("1970-01-01T00:00:01.5Z x"), Some(1_500_000));
        assert_eq!(
            log_time_us("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        assert_eq!(log_time_us("not a time"), None);
        let now = now_us();
        let d = tracing_like(now);
        assert_eq!(log_time_us(&d), Some(now));
    }

    /// `now` in the log's format, from the same algorithm run backwards.
    fn tracing_like(us: i64) -> String {
        let secs = us.div_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // civil_from_days
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z INFO x",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            us.rem_euclid(1_000_000)
        )
    }

    #[test]
    fn formulas_and_phases() {
        let t = DETECT_TIMING;
        assert!((t.formula(Failure::Refused) - 1.5).abs() < 1e-9);
        assert!((t.formula(Failure::Blackhole) - 3.0).abs() < 1e-9);
        let phases: Vec<f64> = (0..DETECT_TRIALS).map(|i| phase(&t, i)).collect();
        assert!((phases[0] - 0.03).abs() < 1e-9);
        assert!((phases[DETECT_TRIALS - 1] - 0.97).abs() < 1e-9);
    }

    #[test]
    fn stop_time_is_the_first_probe_after_the_last_hit() {
        let r = [
            (100, true),
            (110, true),
            (120, false),
            (130, true),
            (140, false),
        ];
        assert_eq!(stop_time(&r, 100).unwrap(), 0.04);
        assert!(stop_time(&[(1, false)], 0).is_err());
        assert!(stop_time(&[(1, true)], 0).is_err());
    }
}
