//! The I/O around the state machine: one *unit* (a lone instance, or a sync group) per task,
//! its sockets, its timers, its virtual addresses and gratuitous ARP/NA. The units run on a
//! thread of their own (see [`spawn`]), so nothing the rest of the daemon does (a reload, a
//! slow health check or script, a busy dataplane update) can delay an advert: keepalived's
//! "thread timer expired" false failover cannot happen here.
//!
//! The unit talks to the rest of the daemon by messages only: [`Event`]s out (roles for the
//! dataplane, state changes for notify hooks) on an unbounded channel, so the VRRP thread
//! never waits for the main loop; [`Control`]s in (tracking, shutdown).
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant as StdInstant},
};

use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use super::notify::{self, NotifyState};
use super::{
    check::{self, advert_repr, Discard, RxConfig},
    fsm::{self, Centis, Input, Output, StartState, State, SyncGroup, Time, Timer},
    garp::{self, AnnounceOptions, GarpConfig, GarpSchedule, GarpSender},
    packet::{self, Auth, IpPair, Version},
    socket::{DropCounter, VrrpSocket},
    vip::{AddressSocket, VirtualAddress},
};
use crate::{config::VrrpInstance, model::VrrpVersion};

/// One instance of a unit, as configured and resolved on this host.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub config: VrrpInstance,
    pub ifindex: u32,
    /// Where adverts come from: `unicast_src_ip`, else the interface's first IPv4 address,
    /// or its IPv6 link-local address.
    pub primary: IpAddr,
    /// The interface's own addresses (our adverts, looped back, come from one of them).
    pub own: Vec<IpAddr>,
    /// (address, ifindex, prefix, label) of each virtual address.
    pub vips: Vec<VirtualAddress>,
    /// Tracking already known at start-up (`TrackWeight`, `SetFault`), fed before `Startup`.
    pub initial: Vec<Input>,
    /// The daemon runs a dataplane: on becoming master, wait for it to serve the services
    /// before announcing the VIPs ([`RoleAck`]). Without one (VRRP only) there is nothing
    /// to wait for. (`[dataplane]` cannot change by reload.)
    pub dataplane: bool,
}

/// A lone instance, or the members of a `vrrp_sync_group`.
#[derive(Debug, Clone)]
pub struct UnitSpec {
    pub members: Vec<MemberSpec>,
    /// The sync group's name, if this unit is one.
    pub group: Option<String>,
}

/// What a unit tells the rest of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The instance now holds (`master`) or has released its virtual addresses: the
    /// dataplane serves or passes their services.
    Role {
        instance: String,
        vips: Vec<IpAddr>,
        master: bool,
        /// Told once the dataplane serves (or passes) the services: a new master announces
        /// its VIPs (gratuitous ARP / NA) only then, or at most [`ROLE_ACK_WAIT`] later.
        applied: RoleAck,
    },
    /// A state change, for notify hooks and the event stream.
    State(notify::Event),
}

/// The main loop's answer to [`Event::Role`]. Equal to any other: it carries no state
/// worth comparing.
#[derive(Debug, Clone, Default)]
pub struct RoleAck(std::sync::Arc<tokio::sync::Notify>);

impl RoleAck {
    /// The dataplane has taken the role change.
    pub fn done(&self) {
        self.0.notify_one();
    }

    async fn wait(&self) {
        self.0.notified().await
    }
}

impl PartialEq for RoleAck {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// How long a new master waits for the dataplane before it announces its VIPs anyway:
/// clients moved by a gratuitous ARP before the services are active would meet the stack,
/// which refuses them; but the VRRP thread never waits long on the rest of the daemon.
pub const ROLE_ACK_WAIT: Duration = Duration::from_millis(5);

/// At most this many datagrams are read off one socket before a timer expiry is handled: a
/// flood cannot hold the timer back for long.
const MAX_DRAIN: usize = 256;

/// What a master does about a lower-priority advert, given when it last announced (or will
/// announce) its addresses again for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reannounce {
    /// Announce now.
    Now,
    /// Announce once the pause since the last one is over.
    After(Duration),
    /// An announcement is already due later: nothing more.
    Pending,
}

fn reannounce_plan(last: Option<StdInstant>, now: StdInstant) -> Reannounce {
    match last {
        Some(at) if at > now => Reannounce::Pending,
        Some(at) if now.duration_since(at) < REANNOUNCE_MIN_INTERVAL => {
            Reannounce::After(REANNOUNCE_MIN_INTERVAL - now.duration_since(at))
        }
        _ => Reannounce::Now,
    }
}

/// The least time between two re-announcements after lower-priority adverts.
const REANNOUNCE_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the rest of the daemon tells a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// A tracking input (`TrackWeight` or `SetFault`) for the named member.
    Track { member: String, input: Input },
    /// Send priority 0, release the addresses, stop.
    Shutdown,
}

/// The state machine of a unit: one instance, or a sync group of several.
enum Machine {
    Single(fsm::Instance),
    Group(SyncGroup),
}

impl Machine {
    fn handle(
        &mut self,
        member: usize,
        input: Input,
        now: Time,
    ) -> Result<Vec<(usize, Output)>, fsm::FsmError> {
        match self {
            Machine::Single(i) => Ok(i.handle(input, now)?.into_iter().map(|o| (0, o)).collect()),
            Machine::Group(g) => g.handle(member, input, now),
        }
    }

    fn instance(&self, member: usize) -> Option<&fsm::Instance> {
        match self {
            Machine::Single(i) => (member == 0).then_some(i),
            Machine::Group(g) => g.member(member),
        }
    }

    fn group_state(&self) -> Option<State> {
        match self {
            Machine::Single(_) => None,
            Machine::Group(g) => g.state(),
        }
    }
}

/// Discards counted by reason, each logged at most once every [`LOG_EVERY`].
#[derive(Debug, Default)]
pub struct DiscardCounters {
    pub counts: HashMap<&'static str, u64>,
    last_log: HashMap<&'static str, StdInstant>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl DiscardCounters {
    fn count(&mut self, instance: &str, d: &Discard) {
        let name = d.name();
        *self.counts.entry(name).or_default() += 1;
        if d.is_expected() {
            return;
        }
        // The detail is formatted only for the line that is logged: under a flood, formatting
        // it for every discard was a visible share of the thread's time.
        self.log(instance, name, || format!("{d:?}"));
    }

    /// Something worth a (rate-limited) line that is not a discard.
    fn note(&mut self, instance: &str, name: &'static str) {
        self.count_named(instance, name, "the advert was kept");
    }

    /// An advert the state machine discarded instead of answering it at once
    /// ([`Output::AnswerRateLimited`]).
    fn rate_limited(&mut self, instance: &str, kind: fsm::Answer) {
        self.count_named(
            instance,
            kind.rate_limited_name(),
            "answered one of its kind less than an advert interval ago",
        );
    }

    fn count_named(&mut self, instance: &str, name: &'static str, detail: &str) {
        *self.counts.entry(name).or_default() += 1;
        self.log(instance, name, || detail.to_string());
    }

    fn log(&mut self, instance: &str, name: &'static str, detail: impl FnOnce() -> String) {
        if self.log_due(name) {
            let total = self.counts.get(name).copied().unwrap_or(0);
            let detail = detail();
            warn!(
                instance,
                reason = name,
                detail,
                total,
                "VRRP advert not used as is"
            );
        }
    }

    /// Whether a line about `name` may be logged now (then it must be).
    fn log_due(&mut self, name: &'static str) -> bool {
        let now = StdInstant::now();
        let due = self
            .last_log
            .get(name)
            .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
        if due {
            self.last_log.insert(name, now);
        }
        due
    }
}

/// The key under which socket drops share [`DiscardCounters`]' log rate (they are not a
/// discard reason: the adverts were never read, so nothing is known of them).
const SOCKET_DROPS_LOG: &str = "socket_drops";

struct Member {
    spec: MemberSpec,
    rx: RxConfig,
    socket: std::sync::Arc<VrrpSocket>,
    /// Where adverts go: the group, or each unicast peer.
    destinations: Vec<IpAddr>,
    timer: Timer,
    /// The first burst's socket, opened at start-up so that a takeover does not open one
    /// (socket, bind, and a reactor turn before it is known writable) between its advert and
    /// its gratuitous ARP. `None` if opening failed: tried again at the next announcement.
    announcer: Option<GarpSender>,
    /// The rest of the schedule (second burst, refreshes), on a socket of its own.
    garp: Option<JoinHandle<()>>,
    discards: DiscardCounters,
    /// Adverts the kernel dropped because the socket's receive queue was full.
    socket_drops: DropCounter,
    holds_vips: bool,
    /// When the VIPs were last announced again after a lower-priority advert.
    reannounced: Option<StdInstant>,
    transitions: u64,
}

fn fsm_config(m: &MemberSpec) -> fsm::Config {
    let c = &m.config;
    fsm::Config {
        version: match c.version {
            VrrpVersion::V2 => fsm::Version::V2,
            VrrpVersion::V3 => fsm::Version::V3,
        },
        primary_address: m.primary,
        priority: c.priority,
        advert_interval: Centis(c.advert_int_cs),
        preempt: c.preempt,
        preempt_delay: c.preempt_delay,
        start_state: if c.start_master {
            StartState::Master
        } else {
            StartState::Backup
        },
    }
}

fn rx_config(m: &MemberSpec) -> RxConfig {
    let c = &m.config;
    RxConfig {
        version: match c.version {
            VrrpVersion::V2 => Version::V2,
            VrrpVersion::V3 => Version::V3,
        },
        vrid: c.vrid,
        auth: c
            .auth_pass
            .as_deref()
            .and_then(Auth::simple)
            .unwrap_or(Auth::None),
        advert_int_cs: c.advert_int_cs,
        own: m.own.clone(),
        unicast_peers: c.unicast_peer.clone(),
        vips: m.vips.iter().map(|v| v.addr).collect(),
    }
}

/// Builds a unit's machine from its members' configurations.
fn machine(spec: &UnitSpec) -> anyhow::Result<Machine> {
    let configs: Vec<fsm::Config> = spec.members.iter().map(fsm_config).collect();
    Ok(if spec.group.is_some() && configs.len() > 1 {
        Machine::Group(SyncGroup::new(configs)?)
    } else {
        Machine::Single(fsm::Instance::new(configs[0])?)
    })
}

/// Runs one unit until [`Control::Shutdown`] (or until the control channel closes).
pub async fn run_unit(
    spec: UnitSpec,
    events: mpsc::UnboundedSender<Event>,
    mut control: mpsc::Receiver<Control>,
    stats: SharedStats,
) -> anyhow::Result<()> {
    let clock = ProtocolClock::new()?;
    let now = || clock.now();
    let mut machine = machine(&spec)?;
    let mut addrs = AddressSocket::open()?;
    let (dgram_tx, mut dgram_rx) = mpsc::channel::<(
        usize,
        Vec<u8>,
        Result<super::socket::Received, super::socket::RawError>,
    )>(256);
    let mut members = Vec::new();
    let mut readers = Vec::new();
    for (i, m) in spec.members.iter().enumerate() {
        let c = &m.config;
        let multicast = c.unicast_peer.is_empty();
        let socket = std::sync::Arc::new(VrrpSocket::open(
            &c.interface,
            m.ifindex,
            m.primary.is_ipv6(),
            multicast,
        )?);
        let destinations = if multicast {
            vec![if m.primary.is_ipv6() {
                packet::MULTICAST_V6.into()
            } else {
                packet::MULTICAST_V4.into()
            }]
        } else {
            c.unicast_peer.clone()
        };
        // A reader per socket: the unit's loop then waits on one channel, whatever the number
        // of members.
        let (reader_socket, tx) = (socket.clone(), dgram_tx.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match reader_socket.recv(&mut buf).await {
                    Ok(r) => {
                        // Only the bytes the checks read (a datagram with bad IP framing
                        // needs none): under a flood, a copy of the whole buffer for each
                        // datagram was a good share of the thread's work.
                        let len = r.as_ref().map_or(0, |r| r.payload.end.min(buf.len()));
                        if tx.send((i, buf[..len].to_vec(), r)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!("VRRP socket receive: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
        members.push(Member {
            rx: rx_config(m),
            spec: m.clone(),
            socket,
            destinations,
            timer: Timer::None,
            announcer: open_announcer(m),
            garp: None,
            discards: DiscardCounters::default(),
            socket_drops: DropCounter::default(),
            holds_vips: false,
            reannounced: None,
            transitions: 0,
        });
    }

    // A crashed earlier run may have left our addresses configured: remove them before we
    // advertise, so that the network never sees two holders.
    let all_vips: Vec<VirtualAddress> = spec
        .members
        .iter()
        .flat_map(|m| m.vips.iter().cloned())
        .collect();
    for gone in addrs.remove_leftovers(&all_vips).await? {
        warn!(address = %gone.addr, "removed a virtual address left behind by an earlier run");
    }

    // For reading queued datagrams straight off the sockets (the timer branch below).
    let mut drain_buf = vec![0u8; 2048];
    let mut unit = Unit {
        members,
        events,
        group: spec.group.clone(),
        last_group_state: None,
        published: None,
        dirty: true,
    };
    for (i, m) in spec.members.iter().enumerate() {
        // A fault known before start-up makes the instance start in Fault.
        for input in &m.initial {
            let out = machine.handle(i, *input, now());
            unit.apply(&mut machine, &mut addrs, out).await;
        }
        let out = machine.handle(i, Input::Startup, now());
        unit.apply(&mut machine, &mut addrs, out).await;
    }
    loop {
        let publish_at = unit.publish_if_due(&machine, &stats);
        let deadline = unit.members.iter().filter_map(|m| m.timer.deadline()).min();
        // A timer that cannot be armed ends the loop, but never skips the shutdown below:
        // a master must not keep its addresses without advertising.
        if let Err(e) = clock.arm(deadline) {
            tracing::error!("VRRP timer: {e}; shutting the unit down");
            break;
        }
        tokio::select! {
            biased;
            ctl = control.recv() => match ctl {
                Some(Control::Shutdown) | None => break,
                Some(Control::Track { member, input }) => {
                    if let Some(i) = unit.index(&member) {
                        let out = machine.handle(i, input, now());
                        unit.apply(&mut machine, &mut addrs, out).await;
                    }
                }
            },
            r = clock.wait() => {
                if let Err(e) = r {
                    tracing::error!("VRRP timer: {e}; shutting the unit down");
                    break;
                }
                // Adverts that arrived before the deadline restart the timer, even when this
                // thread gets to them only now (it was not scheduled for a while): read what
                // the kernel has queued first, each at its arrival time, so that a stalled
                // backup does not take over from a master that kept advertising
                // (keepalived's "thread timer expired" false failover).
                while let Ok((i, buf, raw)) = dgram_rx.try_recv() {
                    unit.receive(&mut machine, &mut addrs, &clock, i, &buf, raw).await;
                }
                for i in 0..unit.members.len() {
                    let socket = unit.members[i].socket.clone();
                    for _ in 0..MAX_DRAIN {
                        match socket.try_recv(&mut drain_buf) {
                            Ok(raw) => {
                                unit.receive(&mut machine, &mut addrs, &clock, i, &drain_buf, raw)
                                    .await
                            }
                            Err(_) => break,
                        }
                    }
                }
                let t = now();
                for i in 0..unit.members.len() {
                    let timer = unit.members[i].timer;
                    if timer.deadline().is_some_and(|d| d <= t) {
                        let out = machine.handle(i, Input::TimerExpired(timer), t);
                        unit.apply(&mut machine, &mut addrs, out).await;
                    }
                }
            }
            Some((i, buf, raw)) = dgram_rx.recv() => {
                unit.receive(&mut machine, &mut addrs, &clock, i, &buf, raw).await;
            }
            // Counters that changed since the last publication, when nothing else would
            // come round to publishing them.
            () = tokio::time::sleep_until(publish_at.unwrap_or_else(tokio::time::Instant::now)),
                if publish_at.is_some() => {}
        }
    }
    for i in 0..unit.members.len() {
        let out = machine.handle(i, Input::Shutdown, now());
        unit.apply(&mut machine, &mut addrs, out).await;
    }
    for r in readers {
        r.abort();
    }
    Ok(())
}

/// The protocol timer of a unit: a timerfd on CLOCK_MONOTONIC, armed at absolute deadlines.
/// tokio's timers have a millisecond granularity and round up, so every advert and every
/// Master_Down expiry came a millisecond or two late (10% fewer adverts at 10 ms intervals,
/// and a takeover 1 ms after keepalived's); a timerfd fires within microseconds.
struct ProtocolClock {
    fd: AsyncFd<std::os::fd::OwnedFd>,
    /// CLOCK_MONOTONIC at `Time::ZERO`.
    epoch: Duration,
    /// What is armed, to skip redundant syscalls (a Mutex only so that the unit's future is
    /// Send; it is never contended).
    armed: std::sync::Mutex<Option<Time>>,
    /// The latest time handed to the state machine, in ns since the epoch: times never go
    /// back ([`ProtocolClock::arrival`] may name an instant before the last input's).
    latest: std::sync::atomic::AtomicU64,
    /// CLOCK_MONOTONIC and CLOCK_REALTIME - CLOCK_MONOTONIC (ns) at the last arrival: a
    /// change beyond slewing means the real-time clock was stepped (see [`stamp_usable`]).
    /// A Mutex only so that the unit's future is Send; never contended.
    clocks: std::sync::Mutex<Option<(Duration, i128)>>,
}

/// Whether receive stamps can be trusted now: the real-time clock, which stamps them, was
/// not stepped since the last look (`prev`: monotonic time and real-time offset then).
/// NTP slews by at most 500 ppm; a step moves the offset at once. A stamp taken before a
/// step and read after it would date the advert wrongly (by the step: a forward step of
/// 100 ms would make a fresh advert look 100 ms old, and a backup at 10 ms intervals take
/// over from a live master).
fn stamp_usable(prev: Option<(Duration, i128)>, mono_now: Duration, offset_now: i128) -> bool {
    let Some((mono_then, offset_then)) = prev else {
        return true;
    };
    let elapsed = mono_now.saturating_sub(mono_then).as_nanos() as i128;
    let allowed = 1_000_000 + elapsed / 2000;
    (offset_now - offset_then).abs() <= allowed
}

/// A receive timestamp further back than this is not believed: CLOCK_REALTIME, which the
/// kernel stamps datagrams with, was stepped in between (the advert is then taken as
/// arriving when it is read, as without a timestamp).
const MAX_ARRIVAL_AGE: Duration = Duration::from_secs(1);

/// CLOCK_REALTIME, the clock of SO_TIMESTAMPNS.
fn realtime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_REALTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The protocol time at which a datagram stamped `arrived` (CLOCK_REALTIME) came in, given
/// the protocol time `now` and CLOCK_REALTIME `real_now`, read together: `now` minus the
/// datagram's age, or `now` when there is no stamp or it is not believable (from the future,
/// or older than [`MAX_ARRIVAL_AGE`]), never before `floor`.
fn arrival_time(now: Time, real_now: Duration, arrived: Option<Duration>, floor: Time) -> Time {
    let age = arrived
        .and_then(|a| real_now.checked_sub(a))
        .filter(|age| *age <= MAX_ARRIVAL_AGE)
        .unwrap_or(Duration::ZERO);
    let at = Time::from_duration(now.as_duration().saturating_sub(age));
    at.max(floor)
}

/// CLOCK_MONOTONIC, the clock of every protocol timer and of the XDP program's `CLOCK`.
pub(crate) fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl ProtocolClock {
    fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain timerfd_create(2).
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own; the AsyncFd keeps it for its whole life.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self {
            fd,
            epoch: monotonic(),
            armed: std::sync::Mutex::new(None),
            latest: std::sync::atomic::AtomicU64::new(0),
            clocks: std::sync::Mutex::new(None),
        })
    }

    fn now(&self) -> Time {
        let t = Time::from_duration(monotonic().saturating_sub(self.epoch));
        self.note(t);
        t
    }

    fn note(&self, t: Time) {
        let ns = u64::try_from(t.as_duration().as_nanos()).unwrap_or(u64::MAX);
        self.latest
            .fetch_max(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// When an advert that the kernel stamped `arrived` came in, as protocol time: RFC 9568
    /// restarts the Master_Down timer when an advert is received, and this thread may read
    /// it a while later (a wake-up from idle takes tens to hundreds of microseconds here,
    /// and more on a loaded host). keepalived restarts it when it reads the advert.
    fn arrival(&self, arrived: Option<Duration>) -> Time {
        let floor = Time::from_duration(Duration::from_nanos(
            self.latest.load(std::sync::atomic::Ordering::Relaxed),
        ));
        let (mono, real_now) = (monotonic(), realtime());
        let now = Time::from_duration(mono.saturating_sub(self.epoch));
        let offset = real_now.as_nanos() as i128 - mono.as_nanos() as i128;
        let usable = {
            let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
            let usable = stamp_usable(*clocks, mono, offset);
            *clocks = Some((mono, offset));
            usable
        };
        let at = arrival_time(now, real_now, arrived.filter(|_| usable), floor);
        self.note(at);
        at
    }

    /// Arms the timer at `deadline` (absolute), or disarms it.
    fn arm(&self, deadline: Option<Time>) -> std::io::Result<()> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        if *armed == deadline {
            return Ok(());
        }
        let at = deadline.map_or(Duration::ZERO, |d| self.epoch + d.as_duration());
        // A zero it_value disarms; a deadline of exactly the epoch cannot occur (it would be
        // in the past), so 1 ns stands for it.
        let at = if deadline.is_some() && at.is_zero() {
            Duration::from_nanos(1)
        } else {
            at
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: at.as_secs() as _,
                tv_nsec: at.subsec_nanos() as _,
            },
        };
        use std::os::fd::AsRawFd;
        // SAFETY: valid itimerspec; no old value wanted.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *armed = deadline;
        Ok(())
    }

    /// Waits until the armed deadline passes (forever when disarmed).
    async fn wait(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = 0u64;
            // SAFETY: reads 8 bytes into a u64.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    (&mut expirations as *mut u64).cast(),
                    8,
                )
            };
            if n == 8 {
                // Fired: the caller re-arms from the machine's new timers.
                *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}

/// What status and metrics show of an instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceStats {
    pub state: String,
    pub priority: u8,
    pub effective_priority: u8,
    /// The master we last heard, or ourselves.
    pub master: Option<IpAddr>,
    pub transitions: u64,
    pub discards: std::collections::BTreeMap<String, u64>,
    /// Adverts the kernel dropped before the instance could read them: its socket's receive
    /// queue was full (one socket per instance, see [`super::socket`]).
    pub socket_drops: u64,
}

/// Instance name -> stats, written by the VRRP thread, read by status and metrics.
pub type SharedStats = std::sync::Arc<std::sync::Mutex<HashMap<String, InstanceStats>>>;

struct Unit {
    members: Vec<Member>,
    events: mpsc::UnboundedSender<Event>,
    group: Option<String>,
    last_group_state: Option<State>,
    /// When the stats were last published, and each member's [`Headline`] then.
    published: Option<(StdInstant, Vec<Headline>)>,
    /// Something a counter shows may have changed since the last publication.
    dirty: bool,
}

/// What readers of the stats wait on (a test polling for MASTER, a script for a transition):
/// published as soon as it changes. Counters follow at most [`PUBLISH_EVERY`] later.
type Headline = (State, u8, Option<IpAddr>, u64);

/// How long a counter may wait to be published. Publishing takes the stats lock, rebuilds
/// each member's entry (names, the discard map) and reads its socket's drop count (a system
/// call); done for every datagram, as it was, that was a large part of the thread's work
/// under a flood of adverts.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Whether to publish now: at the first chance (`published`: when it was last done), when a
/// headline changed, or when counters changed (`dirty`) and [`PUBLISH_EVERY`] has passed.
/// Otherwise, when to come back for the counters (`None`: nothing waits).
fn publish_plan(
    published: Option<StdInstant>,
    headline_changed: bool,
    dirty: bool,
    now: StdInstant,
) -> Result<(), Option<StdInstant>> {
    let Some(at) = published else {
        return Ok(());
    };
    if headline_changed {
        return Ok(());
    }
    if !dirty {
        return Err(None);
    }
    let due = at + PUBLISH_EVERY;
    if now >= due {
        Ok(())
    } else {
        Err(Some(due))
    }
}

impl Unit {
    /// Reads each member's socket drop count, logging (at a limited rate) when it grew.
    fn read_socket_drops(&mut self) {
        for m in &mut self.members {
            match m.socket.drops() {
                Ok(now) => {
                    let added = m.socket_drops.update(now);
                    if added > 0 && m.discards.log_due(SOCKET_DROPS_LOG) {
                        warn!(
                            instance = %m.spec.config.name,
                            added,
                            total = m.socket_drops.total(),
                            "the kernel dropped VRRP datagrams: the socket's receive queue was full"
                        );
                    }
                }
                Err(e) => {
                    if m.discards.log_due(SOCKET_DROPS_LOG) {
                        warn!(instance = %m.spec.config.name, "reading the VRRP socket's drop count: {e}");
                    }
                }
            }
        }
    }

    fn headline(&self, machine: &Machine, i: usize) -> Option<Headline> {
        let inst = machine.instance(i)?;
        let master = inst.last_master().map(|(a, _)| a);
        Some((
            inst.state(),
            inst.effective_priority(),
            master,
            self.members[i].transitions,
        ))
    }

    fn headlines(&self, machine: &Machine) -> Vec<Headline> {
        (0..self.members.len())
            .filter_map(|i| self.headline(machine, i))
            .collect()
    }

    /// Whether a headline differs from the published one (without building the list: this
    /// runs for every datagram).
    fn headline_changed(&self, machine: &Machine) -> bool {
        let Some((_, published)) = &self.published else {
            return true;
        };
        let mut now = (0..self.members.len()).filter_map(|i| self.headline(machine, i));
        let same = published.iter().all(|h| now.next().as_ref() == Some(h)) && now.next().is_none();
        !same
    }

    /// Publishes the stats if [`publish_plan`] says so; returns when to come back if
    /// counters are left to publish.
    fn publish_if_due(
        &mut self,
        machine: &Machine,
        stats: &SharedStats,
    ) -> Option<tokio::time::Instant> {
        let changed = self.headline_changed(machine);
        if !changed && !self.dirty {
            return None;
        }
        let now = StdInstant::now();
        let published = self.published.as_ref().map(|(at, _)| *at);
        match publish_plan(published, changed, self.dirty, now) {
            Err(later) => later.map(Into::into),
            Ok(()) => {
                if self.publish(machine, stats) {
                    self.published = Some((now, self.headlines(machine)));
                    self.dirty = false;
                    None
                } else {
                    // A reader holds the lock: soon again, not at once (it is not ours to
                    // spin on).
                    Some((now + Duration::from_millis(1)).into())
                }
            }
        }
    }

    /// Publishes the members' stats. `try_lock`: if a reader holds the lock, this round is
    /// skipped (false) rather than the VRRP thread made to wait.
    fn publish(&mut self, machine: &Machine, stats: &SharedStats) -> bool {
        self.read_socket_drops();
        let Ok(mut map) = stats.try_lock() else {
            return false;
        };
        for (i, m) in self.members.iter().enumerate() {
            let Some(inst) = machine.instance(i) else {
                continue;
            };
            let master = if inst.state() == State::Master {
                Some(m.spec.primary)
            } else {
                inst.last_master().map(|(a, _)| a)
            };
            map.insert(
                m.spec.config.name.clone(),
                InstanceStats {
                    state: inst.state().to_string(),
                    priority: m.spec.config.priority,
                    effective_priority: inst.effective_priority(),
                    master,
                    transitions: m.transitions,
                    discards: m
                        .discards
                        .counts
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                    socket_drops: m.socket_drops.total(),
                },
            );
        }
        true
    }

    /// One datagram of member `i`: checked, then (an advert) handed to the state machine at
    /// its arrival time.
    async fn receive(
        &mut self,
        machine: &mut Machine,
        addrs: &mut AddressSocket,
        clock: &ProtocolClock,
        i: usize,
        buf: &[u8],
        raw: Result<super::socket::Received, super::socket::RawError>,
    ) {
        self.dirty = true;
        let arrived = raw.as_ref().ok().and_then(|r| r.arrived);
        let m = &mut self.members[i];
        let accepted = match raw {
            Err(_) => Err(Discard::BadIpFraming),
            Ok(rx) => check::check(&m.rx, &rx, buf),
        };
        match accepted {
            Err(d) => m.discards.count(&m.spec.config.name, &d),
            Ok(a) => {
                if a.addresses_differ {
                    // RFC 9568 §7.1: log it, keep the advert.
                    m.discards.note(&m.spec.config.name, "addresses_differ");
                }
                let at = clock.arrival(arrived);
                let out = machine.handle(i, Input::Advert(a.advert), at);
                self.apply(machine, addrs, out).await;
            }
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.spec.config.name == name)
    }

    async fn apply(
        &mut self,
        machine: &mut Machine,
        addrs: &mut AddressSocket,
        outputs: Result<Vec<(usize, Output)>, fsm::FsmError>,
    ) {
        self.dirty = true;
        let outputs = match outputs {
            Ok(o) => o,
            Err(e) => {
                debug!("VRRP input refused by the state machine: {e}");
                return;
            }
        };
        let mut announce = Vec::new();
        // What only informs (logs, notify events) waits until the new master's gratuitous
        // ARPs are out: each is a wake-up of another thread.
        let mut later = Vec::new();
        for (i, out) in outputs {
            let m = &mut self.members[i];
            let name = m.spec.config.name.clone();
            match out {
                Output::SendAdvert { priority } => {
                    let repr = advert_repr(&m.rx, priority);
                    for dst in &m.destinations {
                        let Some(ip) = IpPair::new(m.spec.primary, *dst) else {
                            continue;
                        };
                        match repr.to_bytes(&ip) {
                            Ok(bytes) => {
                                if let Err(e) = m.socket.send(&bytes, m.spec.primary, *dst) {
                                    warn!(instance = %name, "sending an advert to {dst}: {e}");
                                }
                            }
                            Err(e) => warn!(instance = %name, "encoding an advert: {e}"),
                        }
                    }
                }
                Output::BecomeMaster => {
                    // The services first (the main loop), the addresses meanwhile, and the
                    // announcement once the services are active (below, after the adverts
                    // of this step have gone out). Without a dataplane the role only
                    // informs (status), and waits with the logs.
                    let applied = RoleAck::default();
                    let role = Event::Role {
                        instance: name.clone(),
                        vips: m.spec.vips.iter().map(|v| v.addr).collect(),
                        master: true,
                        applied: applied.clone(),
                    };
                    if m.spec.dataplane {
                        let _ = self.events.send(role);
                    } else {
                        later.push((i, Later::Event(role)));
                    }
                    for v in &m.spec.vips {
                        match addrs.add(v).await {
                            Ok(true) => later.push((i, Later::Added(v.clone()))),
                            Ok(false) => {}
                            Err(e) => {
                                warn!(instance = %name, address = %v.addr, "adding the virtual address: {e}")
                            }
                        }
                    }
                    m.holds_vips = true;
                    if let Some(g) = m.garp.take() {
                        g.abort();
                    }
                    announce.push((i, applied));
                }
                Output::BecomeBackup | Output::BecomeFault | Output::Stopped => {
                    if matches!(out, Output::Stopped) {
                        let stop = notify::Event::instance(name.clone(), NotifyState::Stop, 0);
                        let _ = self.events.send(Event::State(stop));
                    }
                    if let Some(g) = m.garp.take() {
                        g.abort();
                    }
                    if m.holds_vips || matches!(out, Output::Stopped) {
                        for v in &m.spec.vips {
                            if let Err(e) = addrs.delete(v).await {
                                warn!(instance = %name, address = %v.addr, "removing the virtual address: {e}");
                            }
                        }
                        m.holds_vips = false;
                    }
                    // Services stay active until the addresses are gone: a client that still
                    // sends here is better served by a real server than refused by the stack.
                    let vips = m.spec.vips.iter().map(|v| v.addr).collect();
                    let _ = self.events.send(Event::Role {
                        instance: name,
                        vips,
                        master: false,
                        applied: RoleAck::default(),
                    });
                }
                Output::StateChanged { .. } | Output::PriorityChanged { .. } => {
                    later.push((i, Later::Output(out)));
                }
                Output::Reannounce if m.holds_vips => {
                    // At most once a second: a peer (or anyone) flooding lower-priority
                    // adverts must not turn into a flood of gratuitous ARPs. But one heard
                    // within the second is not ignored: the peer that sent it may have been
                    // master for a moment and moved clients to itself with its own
                    // gratuitous ARP; they come back at the end of the second.
                    let now = StdInstant::now();
                    match reannounce_plan(m.reannounced, now) {
                        Reannounce::Pending => {}
                        Reannounce::Now => {
                            m.reannounced = Some(now);
                            info!(instance = %name, "lower-priority advert heard: announcing the virtual addresses again");
                            if let Some(g) = m.garp.take() {
                                g.abort();
                            }
                            m.garp = start_garp(m).await;
                        }
                        Reannounce::After(delay) => {
                            m.reannounced = Some(now + delay);
                            info!(instance = %name, ?delay, "lower-priority advert heard: announcing the virtual addresses again after a pause");
                            if let Some(g) = m.garp.take() {
                                g.abort();
                            }
                            m.garp = Some(deferred_garp(&m.spec, delay));
                        }
                    }
                }
                Output::Reannounce => {}
                Output::AnswerRateLimited(kind) => m.discards.rate_limited(&name, kind),
                Output::SetTimer(t) => m.timer = t,
            }
        }
        for (i, applied) in announce {
            let served = !self.members[i].spec.dataplane
                || tokio::time::timeout(ROLE_ACK_WAIT, applied.wait())
                    .await
                    .is_ok();
            let m = &mut self.members[i];
            // Still master: a later output of this step may have ended it.
            if m.holds_vips {
                m.garp = start_garp(m).await;
                info!(
                    instance = %m.spec.config.name,
                    services_active = served,
                    "announced the virtual addresses"
                );
            }
        }
        for (i, l) in later {
            let m = &mut self.members[i];
            let name = m.spec.config.name.clone();
            match l {
                Later::Added(vip) => info!(instance = %name, %vip, "virtual address added"),
                Later::Event(e) => {
                    let _ = self.events.send(e);
                }
                Later::Output(Output::StateChanged { from, to, priority }) => {
                    m.transitions += 1;
                    info!(instance = %name, %from, %to, priority, "VRRP state change");
                    if let Some(state) = NotifyState::from_fsm(to) {
                        let ev = notify::Event::instance(name, state, priority);
                        let _ = self.events.send(Event::State(ev));
                    }
                }
                Later::Output(Output::PriorityChanged { from, to }) => {
                    info!(instance = %name, from, to, "effective priority changed");
                }
                Later::Output(_) => {}
            }
        }
        // A sync group changes state as a whole: tell its hooks once.
        if let (Some(group), Some(state)) = (&self.group, machine.group_state()) {
            if self.last_group_state != Some(state) {
                self.last_group_state = Some(state);
                if let Some(state) = NotifyState::from_fsm(state) {
                    let ev = notify::Event::group(group.clone(), state);
                    let _ = self.events.send(Event::State(ev));
                }
            }
        }
    }
}

/// What [`Unit::apply`] does once the gratuitous ARPs are out.
enum Later {
    /// A virtual address was added: the log line.
    Added(VirtualAddress),
    /// An event for the main loop.
    Event(Event),
    /// `StateChanged` (log, transition count, notify event) or `PriorityChanged` (log).
    Output(Output),
}

/// keepalived's `garp_master_*` schedule of a member.
fn garp_config(m: &MemberSpec) -> GarpConfig {
    let c = &m.config;
    GarpConfig {
        master_delay: c.garp_master_delay,
        master_repeat: c.garp_master_repeat,
        master_refresh: c.garp_master_refresh,
        master_refresh_repeat: c.garp_master_refresh_repeat,
        interval: Duration::ZERO,
    }
}

/// The whole announcement schedule of a member, starting `delay` from now, as a task (on a
/// socket of its own: nothing here is urgent).
fn deferred_garp(m: &MemberSpec, delay: Duration) -> JoinHandle<()> {
    let (config, ifindex, name) = (garp_config(m), m.ifindex, m.config.name.clone());
    let vips: Vec<IpAddr> = m.vips.iter().map(|v| v.addr).collect();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        match GarpSender::open(ifindex, AnnounceOptions::default()) {
            Ok(mut sender) => {
                let mut schedule = GarpSchedule::new(&config, vips, StdInstant::now());
                garp::run_schedule(&mut sender, &mut schedule).await
            }
            Err(e) => warn!(instance = %name, "cannot send gratuitous ARP/NA: {e}"),
        }
    })
}

/// The socket of a member's first bursts; `None` (with a warning) if it cannot be opened.
fn open_announcer(m: &MemberSpec) -> Option<GarpSender> {
    GarpSender::open(m.ifindex, AnnounceOptions::default())
        .map_err(|e| warn!(instance = %m.config.name, "cannot send gratuitous ARP/NA: {e}"))
        .ok()
}

/// keepalived's gratuitous ARP / unsolicited NA after becoming master: the first burst now,
/// the rest as a task.
async fn start_garp(m: &mut Member) -> Option<JoinHandle<()>> {
    let spec = &m.spec;
    let c = &spec.config;
    let config = garp_config(spec);
    if m.announcer.is_none() {
        m.announcer = open_announcer(spec);
    }
    let vips: Vec<IpAddr> = spec.vips.iter().map(|v| v.addr).collect();
    let mut schedule = GarpSchedule::new(&config, vips, StdInstant::now());
    // The first burst goes out now, before this unit does anything else: until it does,
    // clients keep sending to the old master's MAC.
    let due = schedule.poll(StdInstant::now());
    let sender = m.announcer.as_mut()?;
    if let Err(e) = sender.announce(&due.announce).await {
        warn!(instance = %c.name, "gratuitous ARP / unsolicited NA failed: {e}");
        // A socket that failed (the interface went away and came back...) is not reused.
        m.announcer = None;
    }
    let (ifindex, name) = (spec.ifindex, c.name.clone());
    Some(tokio::spawn(async move {
        match GarpSender::open(ifindex, AnnounceOptions::default()) {
            Ok(mut sender) => garp::run_schedule(&mut sender, &mut schedule).await,
            Err(e) => warn!(instance = %name, "cannot send gratuitous ARP/NA: {e}"),
        }
    }))
}

/// A handle on the VRRP thread.
pub struct VrrpThread {
    pub controls: Vec<(Vec<String>, mpsc::Sender<Control>)>,
    pub stats: SharedStats,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VrrpThread {
    /// Sends `c` to the unit holding `member` (or to every unit for `Shutdown`).
    pub fn send(&self, member: &str, c: Control) {
        for (names, tx) in &self.controls {
            if names.iter().any(|n| n == member) {
                // Tracking inputs are rare; a full queue means the VRRP thread is stuck, and
                // saying so beats waiting on it from the main loop.
                if let Err(e) = tx.try_send(c.clone()) {
                    tracing::error!(member, "VRRP control message dropped: {e}");
                }
            }
        }
    }

    /// Shuts every unit down (priority-0 adverts, addresses released) and waits for the
    /// thread, at most `timeout`.
    pub fn shutdown(mut self, timeout: Duration) {
        for (_, tx) in &self.controls {
            // Called from a blocking context: wait for room rather than drop the shutdown.
            let _ = tx.blocking_send(Control::Shutdown);
        }
        if let Some(t) = self.thread.take() {
            let deadline = StdInstant::now() + timeout;
            while !t.is_finished() && StdInstant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                warn!("VRRP thread did not stop in {timeout:?}");
            }
        }
    }
}

/// Starts every unit on a dedicated thread with its own single-threaded runtime.
pub fn spawn(
    units: Vec<UnitSpec>,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<VrrpThread> {
    let stats = SharedStats::default();
    let mut controls = Vec::new();
    let mut receivers = Vec::new();
    for u in &units {
        let (tx, rx) = mpsc::channel(64);
        controls.push((
            u.members.iter().map(|m| m.config.name.clone()).collect(),
            tx,
        ));
        receivers.push(rx);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("vrrp".into())
        .spawn(move || {
            rt.block_on(async move {
                let tasks: Vec<_> = units
                    .into_iter()
                    .zip(receivers)
                    .map(|(u, rx)| {
                        let ev = events.clone();
                        let st = thread_stats.clone();
                        tokio::spawn(async move {
                            let names: Vec<String> =
                                u.members.iter().map(|m| m.config.name.clone()).collect();
                            if let Err(e) = run_unit(u, ev, rx, st).await {
                                tracing::error!(instances = ?names, "VRRP stopped: {e:#}");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    let _ = t.await;
                }
            })
        })?;
    Ok(VrrpThread {
        controls,
        stats,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// An advert stamped 3 ms before it is read counts from its arrival; a missing stamp,
    /// one from the future and one older than a second (the real-time clock was stepped)
    /// count from the read; and an arrival never goes back before the last input's time.
    #[test]
    fn adverts_count_from_their_arrival() {
        let now = Time::from_millis(10_000);
        let real = Duration::from_secs(1_800_000_000);
        let t = |arrived, floor| arrival_time(now, real, arrived, floor);
        assert_eq!(t(Some(real - MS(3)), Time::ZERO), Time::from_millis(9_997));
        assert_eq!(t(None, Time::ZERO), now);
        assert_eq!(t(Some(real + MS(5)), Time::ZERO), now);
        assert_eq!(t(Some(real - MS(1_001)), Time::ZERO), now);
        assert_eq!(
            t(Some(real - MS(1_000)), Time::ZERO),
            Time::from_millis(9_000)
        );
        assert_eq!(
            t(Some(real - MS(3)), Time::from_millis(9_999)),
            Time::from_millis(9_999)
        );
        // A stamp older than the protocol epoch itself.
        let early = arrival_time(Time::from_millis(2), real, Some(real - MS(500)), Time::ZERO);
        assert_eq!(early, Time::ZERO);
    }

    /// Lower-priority adverts: the first one, and one after the pause, announce now; one
    /// within the pause announces at its end; more within it add nothing.
    #[test]
    fn lower_priority_adverts_are_answered_at_most_once_a_second() {
        let t0 = StdInstant::now();
        assert_eq!(reannounce_plan(None, t0), Reannounce::Now);
        assert_eq!(
            reannounce_plan(Some(t0), t0 + MS(300)),
            Reannounce::After(MS(700))
        );
        assert_eq!(
            reannounce_plan(Some(t0 + MS(1_000)), t0 + MS(400)),
            Reannounce::Pending
        );
        assert_eq!(reannounce_plan(Some(t0), t0 + MS(1_000)), Reannounce::Now);
    }

    /// Stats go out at once the first time and when a headline changes; counters alone at
    /// most every PUBLISH_EVERY; nothing is scheduled when nothing changed.
    #[test]
    fn counters_are_published_at_a_bounded_rate() {
        let t0 = StdInstant::now();
        assert_eq!(publish_plan(None, false, false, t0), Ok(()));
        let last = Some(t0);
        assert_eq!(publish_plan(last, true, false, t0 + MS(1)), Ok(()));
        assert_eq!(publish_plan(last, false, false, t0 + MS(1)), Err(None));
        assert_eq!(
            publish_plan(last, false, true, t0 + MS(1)),
            Err(Some(t0 + PUBLISH_EVERY))
        );
        assert_eq!(publish_plan(last, false, true, t0 + PUBLISH_EVERY), Ok(()));
    }

    /// Stamps are trusted while the real-time clock only slews (500 ppm at most, plus 1 ms
    /// of reading jitter), not across a step of either sign.
    #[test]
    fn a_stepped_clock_voids_stamps() {
        let ms = |n: i128| n * 1_000_000;
        let at = |secs| Duration::from_secs(secs);
        let offset = ms(1_000_000);
        assert!(stamp_usable(None, at(10), offset));
        assert!(stamp_usable(Some((at(10), offset)), at(11), offset + ms(1)));
        // 255 s (v2's longest interval) of the fastest slew.
        assert!(stamp_usable(
            Some((at(10), offset)),
            at(265),
            offset + ms(127)
        ));
        assert!(!stamp_usable(
            Some((at(10), offset)),
            at(11),
            offset + ms(100)
        ));
        assert!(!stamp_usable(
            Some((at(10), offset)),
            at(11),
            offset - ms(100)
        ));
        assert!(!stamp_usable(
            Some((at(10), offset)),
            at(10),
            offset + ms(2)
        ));
    }
}
