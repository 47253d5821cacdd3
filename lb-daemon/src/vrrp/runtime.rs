//! The I/O around the state machine: one *unit* (a lone instance, or a sync group) per task,
//! its sockets, its timers, its virtual addresses and gratuitous ARP/NA. What to do, in which
//! order and when is decided by the unit's policy ([`super::unit`], pure, time passed in);
//! this shell reads the clocks, sockets and channels, feeds the policy, and carries out its
//! [`Effect`]s in order. The units run on a thread of their own (see [`spawn`]), so nothing
//! the rest of the daemon does (a reload, a slow health check or script, a busy dataplane
//! update) can delay an advert: keepalived's "thread timer expired" false failover cannot
//! happen here.
//!
//! The unit talks to the rest of the daemon by messages only: [`Event`]s out (roles for the
//! dataplane, state changes for notify hooks) on an unbounded channel, so the VRRP thread
//! never waits for the main loop; [`Control`]s in (tracking, shutdown).
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    path::Path,
    time::{Duration, Instant as StdInstant},
};

use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use super::notify;
use super::{
    check::{self, advert_repr, Discard, RxConfig},
    fsm::{self, Centis, Input, StartState, State, Time},
    garp::{self, AnnounceOptions, GarpConfig, GarpSchedule, GarpSender},
    packet::{self, Auth, IpPair},
    record::{self, Record},
    socket::{DropCounter, VrrpSocket},
    unit::{Effect, GarpStart, Log, MemberConfig, Publish, Unit},
};
use crate::{
    config::VrrpInstance,
    netlink::addr::{AddressSocket, VirtualAddress},
};

/// One instance of a unit, as configured and resolved on this host.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberSpec {
    pub config: VrrpInstance,
    /// Where the virtual addresses live and gratuitous ARPs leave from: the instance's
    /// interface, or its virtual MAC interface (`use_vmac`).
    pub ifindex: u32,
    /// The interface adverts are sent and received on (name, index): `ifindex`'s, or the
    /// instance's interface with `vmac_xmit_base`.
    pub advert: (String, u32),
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
    /// A master of the previous run may resume (see `record`): the dataplane was taken
    /// over, so its services still serve the VIPs, or there is none.
    pub may_resume: bool,
}

/// A lone instance, or the members of a `vrrp_sync_group`.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSpec {
    pub members: Vec<MemberSpec>,
    /// The sync group's name, if this unit is one.
    pub group: Option<String>,
    /// keepalived's `vrrp_startup_delay`: the members stay in Initialize this long before
    /// they start (set for the units of the daemon's start, zero for a reload's). A unit
    /// that resumes as master does not wait: it holds its addresses and must advertise.
    pub startup_delay: Duration,
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

pub use super::unit::ROLE_ACK_WAIT;

/// At most this many datagrams are read off one socket before a timer expiry is handled: a
/// flood cannot hold the timer back for long.
const MAX_DRAIN: usize = 256;

/// What the rest of the daemon tells a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// A tracking input (`TrackWeight` or `SetFault`) for the named member.
    Track { member: String, input: Input },
    /// Send priority 0, release the addresses, stop.
    Shutdown,
    /// Stop as the state is, the addresses kept (a `keep` stop, keepalived's
    /// `--dont-release-vrrp`): the next run resumes from them.
    Leave,
    /// A reload's new settings for the same members (same names, interfaces, virtual
    /// router ids, versions and families, in the unit's order): applied in place, in the
    /// state each member is in (see [`Input::Reconfigure`]); addresses that went are
    /// removed and new ones added and announced by a master. The members' `initial` inputs
    /// are their tracking now. [`Done`] is dropped once it is all done.
    Reconfigure(Box<UnitSpec>, Done),
    /// Stop as [`Control::Leave`] does, for a unit that starts again right away and
    /// resumes (its membership changed): members the reload removed first send priority 0
    /// and release their addresses (by index), and the other members' addresses that the
    /// new unit does not have are released.
    Hand {
        release_members: Vec<usize>,
        release_vips: Vec<VirtualAddress>,
    },
    /// After a reload has settled in every unit: a master adds any of its addresses that is
    /// missing (another unit may have removed one that moved to it) and announces what it
    /// added, and tells the dataplane its addresses again.
    Reassert,
}

/// Dropped by a unit once it has carried out a [`Control::Reconfigure`] (or with the
/// message, if it never arrives): the reload waits for every unit's before it settles.
#[derive(Debug, Clone)]
pub struct Done(#[allow(dead_code)] mpsc::UnboundedSender<()>);

impl PartialEq for Done {
    fn eq(&self, _: &Self) -> bool {
        true
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
    /// The first burst's socket, opened at start-up so that a takeover does not open one
    /// (socket, bind, and a reactor turn before it is known writable) between its advert and
    /// its gratuitous ARP. `None` if opening failed: tried again at the next announcement.
    announcer: Option<GarpSender>,
    /// The rest of the schedule (second burst, refreshes), on a socket of its own.
    garp: Option<JoinHandle<()>>,
    /// Adverts the kernel dropped because the socket's receive queue was full.
    socket_drops: DropCounter,
    /// The acknowledgement of the master role last told, until [`Effect::AwaitAck`] waits
    /// for it.
    ack: Option<RoleAck>,
    /// The virtual addresses the last [`Effect::AddVips`] added, until [`Log::VipsAdded`].
    added: Vec<VirtualAddress>,
    /// The task reading the socket into the unit's channel.
    reader: JoinHandle<()>,
}

/// What a socket's reader hands the unit: the member, the bytes, what the socket said.
type Datagram = (
    usize,
    Vec<u8>,
    Result<super::socket::Received, super::socket::RawError>,
);

/// Member `i`'s socket (joined to the group without unicast peers), where its adverts go,
/// and a reader for it: the unit's loop then waits on one channel, whatever the number of
/// members.
fn open_socket(
    i: usize,
    m: &MemberSpec,
    tx: &mpsc::Sender<Datagram>,
) -> anyhow::Result<(std::sync::Arc<VrrpSocket>, Vec<IpAddr>, JoinHandle<()>)> {
    let c = &m.config;
    let multicast = c.unicast_peer.is_empty();
    let socket = std::sync::Arc::new(VrrpSocket::open(
        &m.advert.0,
        m.advert.1,
        m.primary.is_ipv6(),
        multicast,
    )?);
    let (reader_socket, tx) = (socket.clone(), tx.clone());
    let reader = tokio::spawn(async move {
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
    });
    Ok((socket, destinations(m), reader))
}

/// Where a member's adverts go: the group, or each unicast peer.
fn destinations(m: &MemberSpec) -> Vec<IpAddr> {
    if m.config.unicast_peer.is_empty() {
        vec![if m.primary.is_ipv6() {
            packet::MULTICAST_V6.into()
        } else {
            packet::MULTICAST_V4.into()
        }]
    } else {
        m.config.unicast_peer.clone()
    }
}

/// Whether the state machine takes `m`'s settings (what the configuration's own checks
/// do not cover is refused here, before anything runs).
pub fn check(m: &MemberSpec) -> Result<(), fsm::ConfigError> {
    fsm_config(m).validate()
}

/// A member's spec without its tracking inputs: what a reload compares.
fn untracked(m: &MemberSpec) -> MemberSpec {
    MemberSpec {
        initial: Vec::new(),
        ..m.clone()
    }
}

/// Whether `new` is the same virtual router as `old`, so that a reload may apply it in
/// place: the same instance on the same interface, with the same virtual router id,
/// version and address family.
pub fn same_router(old: &MemberSpec, new: &MemberSpec) -> bool {
    let (a, b) = (&old.config, &new.config);
    a.name == b.name
        && a.interface == b.interface
        && old.ifindex == new.ifindex
        && old.advert == new.advert
        && a.vrid == b.vrid
        && a.version == b.version
        && old.primary.is_ipv6() == new.primary.is_ipv6()
        && old.dataplane == new.dataplane
}

fn fsm_config(m: &MemberSpec) -> fsm::Config {
    let c = &m.config;
    fsm::Config {
        version: c.version,
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
        version: c.version,
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

/// Builds a unit's policy and state machine from its members' configurations.
fn unit(spec: &UnitSpec) -> anyhow::Result<Unit> {
    let members = spec
        .members
        .iter()
        .map(|m| MemberConfig {
            name: m.config.name.clone(),
            fsm: fsm_config(m),
            dataplane: m.dataplane,
        })
        .collect();
    Ok(Unit::new(members, spec.group.clone())?)
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
    let mut unit = unit(&spec)?;
    let mut addrs = AddressSocket::open()?;
    let (dgram_tx, mut dgram_rx) = mpsc::channel::<Datagram>(256);
    let mut members = Vec::new();
    for (i, m) in spec.members.iter().enumerate() {
        let (socket, destinations, reader) = open_socket(i, m, &dgram_tx)?;
        members.push(Member {
            rx: rx_config(m),
            spec: m.clone(),
            socket,
            destinations,
            announcer: open_announcer(m),
            garp: None,
            socket_drops: DropCounter::default(),
            ack: None,
            added: Vec::new(),
            reader,
        });
    }

    // What the previous run left: a unit whose members were all master a moment ago, with
    // their addresses still in place, resumes as master (see `record`).
    let netns = crate::os::netns_id().unwrap_or_else(|_| "0".into());
    let records: Vec<Record> = spec
        .members
        .iter()
        .map(|m| Record::new(Path::new(record::DEFAULT_DIR), &netns, &m.config.name))
        .collect();
    let all_vips: Vec<VirtualAddress> = spec
        .members
        .iter()
        .flat_map(|m| m.vips.iter().cloned())
        .collect();
    let resume = resumable_unit(&spec, &records, &mut addrs, &all_vips).await;
    if !resume {
        // A crashed earlier run may have left our addresses configured: remove them before
        // we advertise, so that the network never sees two holders.
        for gone in addrs.remove_leftovers(&all_vips).await? {
            warn!(address = %gone.addr, "removed a virtual address left behind by an earlier run");
        }
    }

    // For reading queued datagrams straight off the sockets (the timer branch below).
    let mut drain_buf = vec![0u8; 2048];
    let mut shell = Shell {
        members,
        events,
        addrs,
        records,
        dgram_tx,
    };
    for (i, m) in spec.members.iter().enumerate() {
        // A fault known before start-up makes the instance start in Fault.
        for input in &m.initial {
            let fx = unit.handle(i, *input, now());
            shell.execute(&mut unit, fx).await;
        }
        let start = if resume {
            info!(instance = %m.config.name, "resuming as master: the previous run was master a moment ago and its addresses are in place");
            Input::Resume
        } else {
            Input::Startup
        };
        if start == Input::Startup && !spec.startup_delay.is_zero() {
            continue;
        }
        let fx = unit.handle(i, start, now());
        shell.execute(&mut unit, fx).await;
    }
    // vrrp_startup_delay: the members start when it is over (the timer branch below).
    let mut start_at = None;
    if !resume && !spec.startup_delay.is_zero() {
        info!(delay = ?spec.startup_delay, "VRRP instances wait in INIT before they start (vrrp_startup_delay)");
        start_at = Some(now() + spec.startup_delay);
    }
    let mut leave = false;
    loop {
        let publish_at = shell.publish_if_due(&mut unit, &clock, &stats);
        let deadline = match (unit.deadline(), start_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
                Some(Control::Leave) => {
                    leave = true;
                    break;
                }
                Some(Control::Track { member, input }) => {
                    if let Some(i) = unit.index(&member) {
                        let fx = unit.handle(i, input, now());
                        shell.execute(&mut unit, fx).await;
                    }
                }
                Some(Control::Reconfigure(spec, done)) => {
                    shell.reconfigure(&mut unit, *spec, &clock).await;
                    drop(done);
                }
                Some(Control::Hand { release_members, release_vips }) => {
                    shell.hand(&unit, &release_members, &release_vips).await;
                    leave = true;
                    break;
                }
                Some(Control::Reassert) => shell.reassert(&mut unit).await,
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
                    shell.receive(&mut unit, &clock, i, &buf, raw).await;
                }
                for i in 0..shell.members.len() {
                    let socket = shell.members[i].socket.clone();
                    for _ in 0..MAX_DRAIN {
                        match socket.try_recv(&mut drain_buf) {
                            Ok(raw) => shell.receive(&mut unit, &clock, i, &drain_buf, raw).await,
                            Err(_) => break,
                        }
                    }
                }
                let t = now();
                for i in 0..shell.members.len() {
                    if let Some(timer) = unit.expired(i, t) {
                        let fx = unit.handle(i, Input::TimerExpired(timer), t);
                        shell.execute(&mut unit, fx).await;
                    }
                }
                if start_at.is_some_and(|s| s <= t) {
                    start_at = None;
                    info!("vrrp_startup_delay over: the VRRP instances start");
                    for i in 0..shell.members.len() {
                        let fx = unit.handle(i, Input::Startup, t);
                        shell.execute(&mut unit, fx).await;
                    }
                }
            }
            Some((i, buf, raw)) = dgram_rx.recv() => {
                shell.receive(&mut unit, &clock, i, &buf, raw).await;
            }
            // Counters that changed since the last publication, when nothing else would
            // come round to publishing them.
            () = tokio::time::sleep_until(publish_at.unwrap_or_else(tokio::time::Instant::now)),
                if publish_at.is_some() => {}
        }
    }
    if !leave {
        for i in 0..shell.members.len() {
            let fx = unit.handle(i, Input::Shutdown, now());
            shell.execute(&mut unit, fx).await;
        }
    }
    for m in &shell.members {
        m.reader.abort();
    }
    // A removed instance leaves the status; one whose unit is replaced is published again
    // by the new unit, which starts after this one has ended.
    if let Ok(mut map) = stats.lock() {
        for m in &shell.members {
            map.remove(&m.spec.config.name);
        }
    }
    Ok(())
}

/// Whether every member of the unit was master a moment ago (its record, see
/// [`record::resumable`]) and every virtual address of the unit is still in place: then the
/// unit resumes as master instead of starting over.
async fn resumable_unit(
    spec: &UnitSpec,
    records: &[Record],
    addrs: &mut AddressSocket,
    vips: &[VirtualAddress],
) -> bool {
    let now = std::time::SystemTime::now();
    let fresh = spec.members.iter().zip(records).all(|(m, r)| {
        if !m.may_resume {
            return false;
        }
        let interval = Duration::from_millis(u64::from(m.config.advert_int_cs) * 10);
        r.read()
            .is_some_and(|(master, at)| record::resumable(master, at, now, interval))
    });
    if !fresh {
        return false;
    }
    match addrs.list(None).await {
        Ok(present) => vips
            .iter()
            .all(|v| present.iter().any(|a| a.is_address_of(v))),
        Err(e) => {
            warn!("listing addresses to resume VRRP: {e}; starting over");
            false
        }
    }
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
            epoch: crate::os::monotonic(),
            armed: std::sync::Mutex::new(None),
            latest: std::sync::atomic::AtomicU64::new(0),
            clocks: std::sync::Mutex::new(None),
        })
    }

    fn now(&self) -> Time {
        let t = Time::from_duration(crate::os::monotonic().saturating_sub(self.epoch));
        self.note(t);
        t
    }

    /// The protocol time now, without making it the floor of later arrivals (for the
    /// policy's pacing, not for the state machine).
    fn current(&self) -> Time {
        Time::from_duration(crate::os::monotonic().saturating_sub(self.epoch))
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
    ///
    /// Returns that time and the protocol time of the read.
    fn arrival(&self, arrived: Option<Duration>) -> (Time, Time) {
        let floor = Time::from_duration(Duration::from_nanos(
            self.latest.load(std::sync::atomic::Ordering::Relaxed),
        ));
        let (mono, real_now) = (crate::os::monotonic(), realtime());
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
        (at, now)
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

/// The I/O of a unit: its members' sockets and announcement tasks, the address socket, the
/// channel to the rest of the daemon. It carries out the [`Effect`]s of the unit's policy
/// ([`Unit`]), in order.
struct Shell {
    members: Vec<Member>,
    events: mpsc::UnboundedSender<Event>,
    addrs: AddressSocket,
    /// Each member's record for the next run (role, and the time of its last advert).
    records: Vec<Record>,
    /// For the reader of a socket opened again (a member that gains or loses its unicast
    /// peers changes between the group and unicast).
    dgram_tx: mpsc::Sender<Datagram>,
}

impl Shell {
    /// [`Control::Reconfigure`]: each member's new settings in place. Every member's
    /// addresses that went are removed before any member's new ones are added: an address
    /// that moves from one member to another must end up on the interface.
    async fn reconfigure(&mut self, unit: &mut Unit, spec: UnitSpec, clock: &ProtocolClock) {
        let mut gone_of = Vec::new();
        for (i, new) in spec.members.into_iter().enumerate() {
            let Some(m) = self.members.get_mut(i) else {
                break;
            };
            let config = fsm_config(&new);
            if !same_router(&m.spec, &new) || config.validate().is_err() {
                // The reload checked both; never half-applied.
                warn!(instance = %new.config.name, "new VRRP settings not applicable in place: left as they were");
                continue;
            }
            // Whether the member held its addresses before its new tracking could fault it.
            let held = unit.holds_vips(i);
            let old = std::mem::replace(&mut m.spec, new);
            if old.config.unicast_peer.is_empty() != m.spec.config.unicast_peer.is_empty() {
                // Between the group and unicast: the socket's membership changes.
                match open_socket(i, &m.spec, &self.dgram_tx) {
                    Ok((socket, _, reader)) => {
                        m.reader.abort();
                        m.socket = socket;
                        m.reader = reader;
                    }
                    Err(e) => {
                        tracing::error!(instance = %m.spec.config.name, "opening the VRRP socket for the new peers: {e:#}; the old socket stays")
                    }
                }
            }
            m.rx = rx_config(&m.spec);
            m.destinations = destinations(&m.spec);
            let inputs = m.spec.initial.clone();
            let gone: Vec<VirtualAddress> = old
                .vips
                .iter()
                .filter(|v| !m.spec.vips.contains(v))
                .cloned()
                .collect();
            if untracked(&old) != untracked(&m.spec) {
                info!(instance = %m.spec.config.name, "VRRP settings reloaded in place");
            }
            let vips_changed = old.vips != m.spec.vips;
            let fx = unit.handle(i, Input::Reconfigure(config), clock.now());
            self.execute(unit, fx).await;
            for input in inputs {
                let fx = unit.handle(i, input, clock.now());
                self.execute(unit, fx).await;
            }
            gone_of.push((i, held, gone, vips_changed));
        }
        for (i, held, gone, _) in &gone_of {
            if !held || gone.is_empty() {
                continue;
            }
            let name = self.members[*i].spec.config.name.clone();
            for v in gone {
                match self.addrs.delete(v).await {
                    Ok(_) => info!(instance = %name, address = %v.addr, "virtual address removed"),
                    Err(e) => {
                        warn!(instance = %name, address = %v.addr, "removing the virtual address: {e}")
                    }
                }
            }
            // The dataplane stops serving them (unless another master here takes them).
            let _ = self.events.send(Event::Role {
                instance: name,
                vips: gone.iter().map(|v| v.addr).collect(),
                master: false,
                applied: RoleAck::default(),
            });
        }
        for (i, _, _, vips_changed) in gone_of {
            if vips_changed && unit.holds_vips(i) {
                let fx = unit.vips_changed(i);
                self.execute(unit, fx).await;
            }
        }
    }

    /// [`Control::Hand`]: released members send priority 0 and give their addresses up,
    /// and the addresses the next unit does not take go; the rest stays for it.
    async fn hand(&mut self, unit: &Unit, members: &[usize], vips: &[VirtualAddress]) {
        for &i in members {
            if i >= self.members.len() || !unit.holds_vips(i) {
                continue;
            }
            self.carry_out(Effect::SendAdvert {
                member: i,
                priority: 0,
            })
            .await;
            self.carry_out(Effect::RemoveVips { member: i }).await;
            self.carry_out(Effect::Role {
                member: i,
                master: false,
            })
            .await;
            info!(instance = %self.members[i].spec.config.name, "VRRP instance removed: released");
        }
        for v in vips {
            if let Err(e) = self.addrs.delete(v).await {
                warn!(address = %v.addr, "removing the virtual address: {e}");
            }
        }
    }

    /// [`Control::Reassert`]: each master's addresses are all in place, and the dataplane
    /// serves them.
    async fn reassert(&mut self, unit: &mut Unit) {
        for i in 0..self.members.len() {
            if !unit.holds_vips(i) {
                continue;
            }
            // One dump per interface, not per address (a unit may have hundreds).
            let mut present = HashMap::new();
            let mut missing = false;
            for v in &self.members[i].spec.vips {
                if let std::collections::hash_map::Entry::Vacant(e) = present.entry(v.ifindex) {
                    e.insert(self.addrs.list(Some(v.ifindex)).await.unwrap_or_default());
                }
                missing |= !present[&v.ifindex].iter().any(|a| a.is_address_of(v));
            }
            if missing {
                warn!(instance = %self.members[i].spec.config.name, "a virtual address went during the reload: adding and announcing it again");
                let fx = unit.vips_changed(i);
                self.execute(unit, fx).await;
            } else {
                let m = &self.members[i];
                let _ = self.events.send(Event::Role {
                    instance: m.spec.config.name.clone(),
                    vips: m.spec.vips.iter().map(|v| v.addr).collect(),
                    master: true,
                    applied: RoleAck::default(),
                });
            }
        }
    }

    /// Reads each member's socket drop count, logging (at a limited rate) when it grew.
    fn read_socket_drops(&mut self, unit: &mut Unit, now: Time) {
        for (i, m) in self.members.iter_mut().enumerate() {
            match m.socket.drops() {
                Ok(drops) => {
                    let added = m.socket_drops.update(drops);
                    if added > 0 && unit.log_due(i, SOCKET_DROPS_LOG, now) {
                        warn!(
                            instance = %m.spec.config.name,
                            added,
                            total = m.socket_drops.total(),
                            "the kernel dropped VRRP datagrams: the socket's receive queue was full"
                        );
                    }
                }
                Err(e) => {
                    if unit.log_due(i, SOCKET_DROPS_LOG, now) {
                        warn!(instance = %m.spec.config.name, "reading the VRRP socket's drop count: {e}");
                    }
                }
            }
        }
    }

    /// Publishes the stats if the unit says so; returns when to come back if counters are
    /// left to publish.
    fn publish_if_due(
        &mut self,
        unit: &mut Unit,
        clock: &ProtocolClock,
        stats: &SharedStats,
    ) -> Option<tokio::time::Instant> {
        let now = clock.current();
        let at = match unit.publish_due(now) {
            Publish::Idle => return None,
            Publish::At(at) => at,
            Publish::Now => {
                if self.publish(unit, stats, now) {
                    unit.published(now);
                    return None;
                }
                unit.publish_blocked(now)
            }
        };
        let wait = at.as_duration().saturating_sub(now.as_duration());
        Some(tokio::time::Instant::now() + wait)
    }

    /// Publishes the members' stats. `try_lock`: if a reader holds the lock, this round is
    /// skipped (false) rather than the VRRP thread made to wait.
    fn publish(&mut self, unit: &mut Unit, stats: &SharedStats, now: Time) -> bool {
        self.read_socket_drops(unit, now);
        let Ok(mut map) = stats.try_lock() else {
            return false;
        };
        for (i, m) in self.members.iter().enumerate() {
            let Some(inst) = unit.instance(i) else {
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
                    transitions: unit.transitions(i),
                    discards: unit
                        .discard_counts(i)
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
        unit: &mut Unit,
        clock: &ProtocolClock,
        i: usize,
        buf: &[u8],
        raw: Result<super::socket::Received, super::socket::RawError>,
    ) {
        unit.received();
        let arrived = raw.as_ref().ok().and_then(|r| r.arrived);
        let m = &self.members[i];
        let accepted = match raw {
            Err(_) => Err(Discard::BadIpFraming),
            Ok(rx) => check::check(&m.rx, &rx, buf),
        };
        match accepted {
            Err(d) => {
                if let Some(line) = unit.discarded(i, &d, clock.current()) {
                    self.execute(unit, vec![line]).await;
                }
            }
            Ok(a) => {
                if a.addresses_differ {
                    // RFC 9568 §7.1: log it, keep the advert.
                    if let Some(line) = unit.noted(i, "addresses_differ", clock.current()) {
                        self.execute(unit, vec![line]).await;
                    }
                }
                let (at, now) = clock.arrival(arrived);
                let fx = unit.handle_at(i, Input::Advert(a.advert), at, now);
                self.execute(unit, fx).await;
            }
        }
    }

    /// Carries out `effects` in order. A wait for the dataplane's acknowledgement
    /// ([`Effect::AwaitAck`]) is done here, and its outcome handed back to the unit, whose
    /// answer is carried out in turn.
    async fn execute(&mut self, unit: &mut Unit, effects: Vec<Effect>) {
        let mut queue = VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::AwaitAck { member, within } => {
                    let served = match self.members[member].ack.take() {
                        Some(ack) => tokio::time::timeout(within, ack.wait()).await.is_ok(),
                        None => false,
                    };
                    queue.extend(unit.role_applied(member, served));
                }
                effect => self.carry_out(effect).await,
            }
        }
    }

    async fn carry_out(&mut self, effect: Effect) {
        match effect {
            Effect::SendAdvert { member, priority } => {
                let m = &self.members[member];
                let name = &m.spec.config.name;
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
                if priority > 0 {
                    if let Err(e) = self.records[member].advertised() {
                        debug!(instance = %name, "touching the VRRP record: {e}");
                    }
                }
            }
            Effect::Role { member, master } => {
                if let Err(e) = self.records[member].set(master) {
                    warn!(instance = %self.members[member].spec.config.name, record = %self.records[member].path().display(), "recording the VRRP role for the next run: {e}");
                }
                let m = &mut self.members[member];
                let applied = RoleAck::default();
                if master {
                    m.ack = Some(applied.clone());
                }
                let _ = self.events.send(Event::Role {
                    instance: m.spec.config.name.clone(),
                    vips: m.spec.vips.iter().map(|v| v.addr).collect(),
                    master,
                    applied,
                });
            }
            Effect::AddVips { member } => {
                let m = &mut self.members[member];
                for v in &m.spec.vips {
                    match self.addrs.add(v).await {
                        Ok(true) => m.added.push(v.clone()),
                        Ok(false) => {}
                        Err(e) => {
                            warn!(instance = %m.spec.config.name, address = %v.addr, "adding the virtual address: {e}")
                        }
                    }
                }
            }
            Effect::RemoveVips { member } => {
                let m = &self.members[member];
                for v in &m.spec.vips {
                    if let Err(e) = self.addrs.delete(v).await {
                        warn!(instance = %m.spec.config.name, address = %v.addr, "removing the virtual address: {e}");
                    }
                }
            }
            Effect::StopGarp { member } => {
                if let Some(g) = self.members[member].garp.take() {
                    g.abort();
                }
            }
            Effect::Garp { member, start } => {
                let m = &mut self.members[member];
                m.garp = match start {
                    GarpStart::Now => start_garp(m, false).await,
                    GarpStart::LowerPrio(None) => start_garp(m, true).await,
                    GarpStart::LowerPrio(Some(delay)) => Some(deferred_garp(&m.spec, delay)),
                };
            }
            Effect::AwaitAck { .. } => unreachable!("waited for in execute"),
            Effect::Notify(ev) => {
                let _ = self.events.send(Event::State(ev));
            }
            Effect::Log(line) => self.log(line),
        }
    }

    fn log(&mut self, line: Log) {
        let name = |member: usize| self.members[member].spec.config.name.as_str();
        match line {
            Log::VipsAdded { member } => {
                let m = &mut self.members[member];
                for vip in m.added.drain(..) {
                    info!(instance = %m.spec.config.name, %vip, "virtual address added");
                }
            }
            Log::StateChange {
                member,
                from,
                to,
                priority,
            } => info!(instance = %name(member), %from, %to, priority, "VRRP state change"),
            Log::PriorityChanged { member, from, to } => {
                info!(instance = %name(member), from, to, "effective priority changed")
            }
            Log::Announced {
                member,
                services_active,
            } => info!(
                instance = %name(member),
                services_active,
                "announced the virtual addresses"
            ),
            Log::Reannounce {
                member,
                after: None,
            } => {
                info!(instance = %name(member), "lower-priority advert heard: announcing the virtual addresses again")
            }
            Log::Reannounce {
                member,
                after: Some(delay),
            } => {
                info!(instance = %name(member), ?delay, "lower-priority advert heard: announcing the virtual addresses again after a pause")
            }
            Log::NotUsed {
                member,
                reason,
                detail,
                total,
            } => warn!(
                instance = name(member),
                reason, detail, total, "VRRP advert not used as is"
            ),
            Log::Refused(e) => debug!("VRRP input refused by the state machine: {e}"),
        }
    }
}

/// keepalived's `garp_master_*` schedule of a member; after a lower-priority advert
/// (`lower_prio`), its two bursts are `garp_lower_prio_repeat` frames, `garp_lower_prio_delay`
/// apart, and the refreshes go on as before.
fn garp_config(m: &MemberSpec, lower_prio: bool) -> GarpConfig {
    let c = &m.config;
    let (master_delay, master_repeat) = if lower_prio {
        (c.garp_lower_prio_delay, c.garp_lower_prio_repeat)
    } else {
        (c.garp_master_delay, c.garp_master_repeat)
    };
    GarpConfig {
        master_delay,
        master_repeat,
        master_refresh: c.garp_master_refresh,
        master_refresh_repeat: c.garp_master_refresh_repeat,
        interval: c.garp_interval,
    }
}

/// The lower-priority announcement schedule of a member, starting `delay` from now, as a
/// task (on a socket of its own: nothing here is urgent).
fn deferred_garp(m: &MemberSpec, delay: Duration) -> JoinHandle<()> {
    let (config, ifindex, name) = (garp_config(m, true), m.ifindex, m.config.name.clone());
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

/// keepalived's gratuitous ARP / unsolicited NA after becoming master (or, `lower_prio`,
/// after a lower-priority advert): the first burst now, the rest as a task.
async fn start_garp(m: &mut Member, lower_prio: bool) -> Option<JoinHandle<()>> {
    let spec = &m.spec;
    let c = &spec.config;
    let config = garp_config(spec, lower_prio);
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

/// A running unit, as the main loop knows it.
struct Running {
    spec: UnitSpec,
    tx: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

impl Running {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.spec.members.iter().map(|m| m.config.name.as_str())
    }
}

/// What a reload does to a running unit ([`plan_units`]).
#[derive(Debug, Clone, PartialEq)]
pub enum UnitStep {
    /// Nothing changed but perhaps its tracking (which it is fed again).
    Keep,
    /// The same members, the same virtual routers: new settings in place (the new unit's
    /// index; its members in the running unit's order).
    Reconfigure(usize),
    /// Its members go on in one new unit, every one of which was master here with every
    /// address it will have: it hands over ([`Control::Hand`]) and the new unit resumes.
    Hand {
        release_members: Vec<usize>,
        release_vips: Vec<VirtualAddress>,
    },
    /// Its members go on elsewhere, but not so that the new unit can resume (a backup, a
    /// new member, a new address, a split): it stops and releases, and the new units
    /// start with an election.
    Shutdown,
    /// None of its members is configured any more: it stops and releases its addresses.
    Remove,
}

/// For each running unit, what a reload to `new` does to it; and the new units that start
/// (once every unit that stops has stopped). Units are matched by their group and their
/// members' names; `masters` are the instances that are master here now. Tracking inputs
/// are not compared (every unit is fed its tracking again).
pub fn plan_units(
    old: &[UnitSpec],
    new: &[UnitSpec],
    masters: &std::collections::HashSet<String>,
) -> (Vec<UnitStep>, Vec<usize>) {
    use std::collections::BTreeSet;
    let names = |u: &UnitSpec| -> BTreeSet<String> {
        u.members.iter().map(|m| m.config.name.clone()).collect()
    };
    let member =
        |u: &UnitSpec, name: &str| u.members.iter().find(|m| m.config.name == name).cloned();
    let mut matched = vec![false; new.len()];
    let mut steps: Vec<Option<UnitStep>> = old
        .iter()
        .map(|o| {
            let j = new.iter().enumerate().position(|(j, n)| {
                !matched[j]
                    && n.group == o.group
                    && names(n) == names(o)
                    && o.members
                        .iter()
                        .all(|a| member(n, &a.config.name).is_some_and(|b| same_router(a, &b)))
            })?;
            matched[j] = true;
            let same = o.members.iter().all(|a| {
                member(&new[j], &a.config.name).is_some_and(|b| untracked(a) == untracked(&b))
            });
            Some(if same {
                UnitStep::Keep
            } else {
                UnitStep::Reconfigure(j)
            })
        })
        .collect();
    let start: Vec<usize> = (0..new.len()).filter(|j| !matched[*j]).collect();
    // The new units each unmatched running unit's members go on in.
    let targets: Vec<BTreeSet<usize>> = old
        .iter()
        .zip(&steps)
        .map(|(o, step)| match step {
            Some(_) => BTreeSet::new(),
            None => start
                .iter()
                .copied()
                .filter(|&j| !names(&new[j]).is_disjoint(&names(o)))
                .collect(),
        })
        .collect();
    for &j in &start {
        let u = &new[j];
        let sources: Vec<usize> = (0..old.len())
            .filter(|&i| steps[i].is_none() && targets[i].contains(&j))
            .collect();
        let held: Vec<VirtualAddress> = sources
            .iter()
            .flat_map(|&i| old[i].members.iter())
            .filter(|m| names(u).contains(&m.config.name))
            .flat_map(|m| m.vips.iter().cloned())
            .collect();
        let resumes = !sources.is_empty()
            && sources.iter().all(|&i| targets[i].len() == 1)
            && u.members.iter().all(|m| {
                masters.contains(&m.config.name)
                    && sources.iter().any(|&i| {
                        member(&old[i], &m.config.name).is_some_and(|o| same_router(&o, m))
                    })
            })
            && u.members
                .iter()
                .flat_map(|m| m.vips.iter())
                .all(|v| held.contains(v));
        if !resumes {
            continue;
        }
        let kept: Vec<&VirtualAddress> = u.members.iter().flat_map(|m| m.vips.iter()).collect();
        for &i in &sources {
            let o = &old[i];
            let release_members = (0..o.members.len())
                .filter(|&k| !names(u).contains(&o.members[k].config.name))
                .collect::<Vec<_>>();
            let release_vips = o
                .members
                .iter()
                .enumerate()
                .filter(|(k, _)| !release_members.contains(k))
                .flat_map(|(_, m)| m.vips.iter())
                .filter(|v| !kept.contains(v))
                .cloned()
                .collect();
            steps[i] = Some(UnitStep::Hand {
                release_members,
                release_vips,
            });
        }
    }
    let steps = steps
        .into_iter()
        .zip(&targets)
        .map(|(step, t)| {
            step.unwrap_or(if t.is_empty() {
                UnitStep::Remove
            } else {
                UnitStep::Shutdown
            })
        })
        .collect();
    (steps, start)
}

/// A handle on the VRRP thread.
pub struct VrrpThread {
    units: Vec<Running>,
    pub stats: SharedStats,
    /// The thread's runtime: units a reload adds start on it.
    handle: tokio::runtime::Handle,
    events: mpsc::UnboundedSender<Event>,
    /// True once the last reload has settled: its stopping units stopped, every
    /// reconfigured unit done. The next reload's new units, and a shutdown, wait for it.
    settled: tokio::sync::watch::Receiver<bool>,
    /// Ends the thread once every unit has stopped.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VrrpThread {
    /// Sends `c` to the unit holding `member`.
    pub fn send(&self, member: &str, c: Control) {
        for u in &self.units {
            if u.names().any(|n| n == member) {
                // Tracking inputs are rare; a full queue means the VRRP thread is stuck, and
                // saying so beats waiting on it from the main loop.
                if let Err(e) = u.tx.try_send(c.clone()) {
                    tracing::error!(member, "VRRP control message dropped: {e}");
                }
            }
        }
    }

    /// A tracking input for `member` (a script, an interface or a service's quorum moved).
    pub fn track(&self, member: String, input: Input) {
        self.send(
            &member,
            Control::Track {
                member: member.clone(),
                input,
            },
        );
    }

    /// The running members' resolved specs, by name: a reload reuses those of unchanged
    /// instances rather than resolve them again (an interface gone since is no reason to
    /// refuse a reload that does not touch it).
    pub fn member_specs(&self) -> HashMap<String, MemberSpec> {
        self.units
            .iter()
            .flat_map(|u| u.spec.members.iter())
            .map(|m| (m.config.name.clone(), m.clone()))
            .collect()
    }

    /// The units of a reloaded configuration, each resolved on this host with its tracking
    /// now in `initial` ([`plan_units`]): what can change in place does
    /// ([`Control::Reconfigure`]: no state change, no election); units whose members are
    /// gone stop and release their addresses; units whose membership or virtual router
    /// changed stop and start again, resuming as masters when every member was master
    /// with every address it keeps ([`Control::Hand`]), else with an election; new units
    /// start. Once all of it is done, every master makes sure its addresses are in place
    /// ([`Control::Reassert`]).
    pub fn reconfigure(&mut self, new: Vec<UnitSpec>) {
        // A unit whose task ended (it failed) starts again as a new one.
        self.units.retain(|u| {
            let alive = !u.task.is_finished();
            if !alive {
                warn!(instances = ?u.names().collect::<Vec<_>>(), "a stopped VRRP unit starts again");
            }
            alive
        });
        let old: Vec<UnitSpec> = self.units.iter().map(|u| u.spec.clone()).collect();
        let masters: std::collections::HashSet<String> = self
            .stats
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| s.state == "MASTER")
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        let (steps, start) = plan_units(&old, &new, &masters);
        // Nothing to reassert after a reload that left every unit as it was.
        let changed = !start.is_empty() || steps.iter().any(|s| *s != UnitStep::Keep);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let mut stopping = Vec::new();
        let mut kept = Vec::new();
        for (u, step) in std::mem::take(&mut self.units).into_iter().zip(steps) {
            let names: Vec<String> = u.names().map(String::from).collect();
            match step {
                UnitStep::Keep => {
                    // Fed its tracking again: a change the main loop has not handed on yet
                    // is then not lost with the old tracking's record of what was sent.
                    let members = new
                        .iter()
                        .flat_map(|n| n.members.iter())
                        .filter(|n| names.contains(&n.config.name));
                    for n in members {
                        for input in &n.initial {
                            let c = Control::Track {
                                member: n.config.name.clone(),
                                input: *input,
                            };
                            if let Err(e) = u.tx.try_send(c) {
                                tracing::error!(instances = ?names, "VRRP tracking input dropped: {e}");
                            }
                        }
                    }
                    kept.push(u);
                }
                UnitStep::Reconfigure(j) => {
                    // The new settings in the running unit's order of members.
                    let mut spec = new[j].clone();
                    spec.members = u
                        .spec
                        .members
                        .iter()
                        .filter_map(|m| {
                            new[j]
                                .members
                                .iter()
                                .find(|n| n.config.name == m.config.name)
                                .cloned()
                        })
                        .collect();
                    let c = Control::Reconfigure(Box::new(spec.clone()), Done(done_tx.clone()));
                    match u.tx.try_send(c) {
                        Ok(()) => kept.push(Running { spec, ..u }),
                        Err(e) => {
                            // Kept as it runs: the next reload tries again.
                            tracing::error!(instances = ?names, "VRRP reconfiguration dropped: {e}");
                            kept.push(u);
                        }
                    }
                }
                UnitStep::Hand {
                    release_members,
                    release_vips,
                } => {
                    info!(instances = ?names, "VRRP unit changed (sync group membership): the new unit resumes as master");
                    let _ = u.tx.try_send(Control::Hand {
                        release_members,
                        release_vips,
                    });
                    stopping.push(u.task);
                }
                UnitStep::Shutdown => {
                    warn!(instances = ?names, "VRRP unit changed (sync group membership, interface, id, version or family), and not all of it was master with its addresses: it stops, and the new unit starts with an election");
                    let _ = u.tx.try_send(Control::Shutdown);
                    stopping.push(u.task);
                }
                UnitStep::Remove => {
                    info!(instances = ?names, "VRRP instances removed: releasing their addresses");
                    let _ = u.tx.try_send(Control::Shutdown);
                    stopping.push(u.task);
                }
            }
        }
        drop(done_tx);
        self.units = kept;
        // Settled when the previous reload has, every stopping unit has stopped and every
        // reconfigured unit is done; then the masters reassert their addresses.
        let reassert: Vec<mpsc::Sender<Control>> = if changed {
            self.units.iter().map(|u| u.tx.clone()).collect()
        } else {
            Vec::new()
        };
        let mut previous = self.settled.clone();
        let (settled_tx, settled_rx) = tokio::sync::watch::channel(false);
        self.handle.spawn(async move {
            let _ = previous.wait_for(|s| *s).await;
            for t in stopping {
                let _ = t.await;
            }
            while done_rx.recv().await.is_some() {}
            let _ = settled_tx.send(true);
            for tx in reassert {
                let _ = tx.try_send(Control::Reassert);
            }
        });
        self.settled = settled_rx.clone();
        for j in start {
            let mut spec = new[j].clone();
            for m in &mut spec.members {
                m.may_resume = true;
            }
            let mut settled = settled_rx.clone();
            let running = self.start(spec, async move {
                let _ = settled.wait_for(|s| *s).await;
            });
            self.units.push(running);
        }
    }

    /// Starts a unit on the thread's runtime once `after` is done.
    fn start(
        &self,
        spec: UnitSpec,
        after: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Running {
        let (tx, rx) = mpsc::channel(64);
        let (u, ev, st) = (spec.clone(), self.events.clone(), self.stats.clone());
        let task = self.handle.spawn(async move {
            after.await;
            let names: Vec<String> = u.members.iter().map(|m| m.config.name.clone()).collect();
            if let Err(e) = run_unit(u, ev, rx, st).await {
                tracing::error!(instances = ?names, "VRRP stopped: {e:#}");
            }
        });
        Running { spec, tx, task }
    }

    /// Shuts every unit down (`release`: priority-0 adverts, addresses released; else
    /// left as they are) and waits for the thread, at most `timeout`.
    pub fn shutdown(mut self, release: bool, timeout: Duration) {
        let how = if release {
            Control::Shutdown
        } else {
            Control::Leave
        };
        self.finish(Some(how), timeout);
    }

    /// [`VrrpThread::shutdown`]'s work; without units' senders left, `Drop` has nothing
    /// to do.
    fn finish(&mut self, how: Option<Control>, timeout: Duration) {
        let deadline = StdInstant::now() + timeout;
        // A reload's stopping units first: what they release must not follow ours.
        while !*self.settled.borrow() && StdInstant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        match how {
            Some(how) => {
                for u in &self.units {
                    // Called from a blocking context: wait for room rather than drop it.
                    let _ = u.tx.blocking_send(how.clone());
                }
            }
            // Closed channels: each unit stops as on `Shutdown`.
            None => {
                let (placeholder, _) = mpsc::channel(1);
                for u in &mut self.units {
                    u.tx = placeholder.clone();
                }
            }
        }
        while !self.units.iter().all(|u| u.task.is_finished()) && StdInstant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.units.clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
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

impl Drop for VrrpThread {
    /// Dropped without [`VrrpThread::shutdown`] (an error on the way out): the units still
    /// release their addresses with priority-0 adverts before the thread's runtime goes.
    fn drop(&mut self) {
        if self.thread.is_some() {
            // No blocking send here (this may run on a runtime's thread): the units see
            // their channels close.
            self.finish(None, Duration::from_secs(2));
        }
    }
}

/// Starts every unit on a dedicated thread with its own single-threaded runtime.
pub fn spawn(
    units: Vec<UnitSpec>,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<VrrpThread> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = rt.handle().clone();
    let thread = std::thread::Builder::new()
        .name("vrrp".into())
        .spawn(move || {
            // The units run while this waits; they are started and stopped from the main
            // loop through `handle`.
            rt.block_on(async move {
                let _ = stopped.await;
            })
        })?;
    let mut vrrp = VrrpThread {
        units: Vec::new(),
        stats: SharedStats::default(),
        handle,
        events,
        settled: tokio::sync::watch::channel(true).1,
        stop: Some(stop),
        thread: Some(thread),
    };
    for u in units {
        let running = vrrp.start(u, std::future::ready(()));
        vrrp.units.push(running);
    }
    Ok(vrrp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn member(name: &str, vrid: u8, priority: u8) -> MemberSpec {
        let text = format!(
            "[[vrrp_instance]]\nname = \"{name}\"\ninterface = \"eth0\"\n\
             virtual_router_id = {vrid}\npriority = {priority}\n\
             virtual_ipaddress = [\"192.0.2.{vrid}\"]\n"
        );
        let config = crate::config::Config::parse(Path::new("t.toml"), &text)
            .unwrap()
            .vrrp_instances
            .remove(0);
        MemberSpec {
            config,
            ifindex: 2,
            advert: ("eth0".into(), 2),
            primary: "192.0.2.200".parse().unwrap(),
            own: Vec::new(),
            vips: Vec::new(),
            initial: Vec::new(),
            dataplane: false,
            may_resume: false,
        }
    }

    fn lone(m: MemberSpec) -> UnitSpec {
        UnitSpec {
            members: vec![m],
            group: None,
            startup_delay: Duration::ZERO,
        }
    }

    fn group(name: &str, members: Vec<MemberSpec>) -> UnitSpec {
        UnitSpec {
            members,
            group: Some(name.into()),
            startup_delay: Duration::ZERO,
        }
    }

    fn with_vip(mut m: MemberSpec, last: u8) -> MemberSpec {
        m.vips.push(VirtualAddress::new(
            std::net::Ipv4Addr::new(192, 0, 2, last).into(),
            2,
        ));
        m
    }

    fn masters(names: &[&str]) -> std::collections::HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// A reload keeps what did not change, reconfigures the same virtual routers in place,
    /// hands a unit over to the one its masters go on in, shuts down what cannot resume,
    /// removes what went, starts what came.
    #[test]
    fn a_reload_changes_each_unit_as_little_as_it_can() {
        let old = vec![
            lone(member("A", 1, 100)),
            lone(member("B", 2, 100)),
            lone(with_vip(member("C", 3, 100), 30)),
            lone(with_vip(member("D", 4, 100), 40)),
            lone(member("E", 5, 100)),
        ];
        let new = vec![
            // E unchanged (listed first: order does not matter), A with a new priority, B on
            // another virtual router id, C and D now a sync group, F new.
            lone(member("E", 5, 100)),
            lone(member("A", 1, 150)),
            lone(member("B", 9, 100)),
            group(
                "G",
                vec![
                    with_vip(member("C", 3, 100), 30),
                    with_vip(member("D", 4, 100), 40),
                ],
            ),
            lone(member("F", 6, 100)),
        ];
        let hand = || UnitStep::Hand {
            release_members: vec![],
            release_vips: vec![],
        };
        let (steps, start) = plan_units(&old, &new, &masters(&["A", "B", "C", "D", "E"]));
        assert_eq!(
            steps,
            [
                UnitStep::Reconfigure(1),
                UnitStep::Shutdown,
                hand(),
                hand(),
                UnitStep::Keep,
            ]
        );
        assert_eq!(start, [2, 3, 4]);

        // D a backup: the group cannot resume, both stop.
        let (steps, _) = plan_units(&old, &new, &masters(&["A", "C"]));
        assert_eq!(steps[2..4], [UnitStep::Shutdown, UnitStep::Shutdown]);

        // An address the group gains: it cannot resume either.
        let mut gains = new.clone();
        gains[3].members[0] = with_vip(gains[3].members[0].clone(), 31);
        let (steps, _) = plan_units(&old, &gains, &masters(&["C", "D"]));
        assert_eq!(steps[2..4], [UnitStep::Shutdown, UnitStep::Shutdown]);

        // The group dissolved, D removed and C losing an address: C resumes alone, D
        // releases, and so does C's lost address.
        let old_group = vec![group(
            "G",
            vec![
                with_vip(with_vip(member("C", 3, 100), 30), 31),
                with_vip(member("D", 4, 100), 40),
            ],
        )];
        let (steps, start) = plan_units(
            &old_group,
            &[lone(with_vip(member("C", 3, 100), 30))],
            &masters(&["C", "D"]),
        );
        assert_eq!(
            steps,
            [UnitStep::Hand {
                release_members: vec![1],
                release_vips: vec![old_group[0].members[0].vips[1].clone()],
            }]
        );
        assert_eq!(start, [0]);

        // The group's members listed in another order: nothing changes.
        let mut swapped = old_group.clone();
        swapped[0].members.reverse();
        let (steps, start) = plan_units(&old_group, &swapped, &masters(&[]));
        assert_eq!((steps, start), (vec![UnitStep::Keep], vec![]));

        // Everything gone.
        let (steps, start) = plan_units(&old, &[], &masters(&[]));
        assert!(steps.iter().all(|s| *s == UnitStep::Remove), "{steps:?}");
        assert!(start.is_empty());
    }

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
