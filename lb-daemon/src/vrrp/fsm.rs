//! The VRRP state machine, without I/O: RFC 9568 (VRRPv3, which obsoletes RFC 5798) and
//! RFC 3768 (VRRPv2), section 6.4 of each, plus the keepalived extensions this daemon replaces
//! (the Fault state, tracking weights, `preempt_delay`, the `state MASTER` start-up hint and
//! `vrrp_sync_group`).
//!
//! # Shape
//!
//! [`Instance::handle`]`(input, now)` is the whole protocol for one virtual router, in the
//! rustybgp style: no socket, no clock, no task. The runtime feeds it [`Input`]s (start/stop,
//! received adverts, timer expiries, tracking changes) and carries out the returned
//! [`Output`]s in order. An input that cannot happen in the current state is a typed
//! [`FsmError`], never a panic. [`SyncGroup`] is the same shape over several instances.
//!
//! RFC 9568 renamed Master to "Active"; this module keeps keepalived's names (Master, and the
//! `MASTER`/`BACKUP`/`FAULT` strings its notify scripts receive).
//!
//! # Time
//!
//! `now` is a [`Time`]: a [`Duration`] since an epoch the runtime chooses (for instance the
//! `tokio::time::Instant` at which the daemon started); the tests drive a virtual clock. Timer
//! deadlines are absolute [`Time`]s, so the runtime sleeps until `epoch + deadline`.
//! Intervals on the wire are centiseconds ([`Centis`]). Skew_Time is computed in microseconds
//! rather than truncated to whole centiseconds as the RFC's integer formula would be (keepalived
//! does the same), so two backups whose priorities differ by one never time out together.
//!
//! # Timers
//!
//! An instance has exactly one protocol timer, by construction: [`Timer`] is
//! `None | Adver(at) | MasterDown(at)` and is derived from the internal state (a master owns the
//! Adver timer, a backup the Master_Down timer, Initialize and Fault none). Whenever it changes,
//! the outputs end with [`Output::SetTimer`] carrying the new value, which *replaces* whatever
//! the runtime had armed; `SetTimer(Timer::None)` cancels. When the timer fires, the runtime
//! passes the same value back in [`Input::TimerExpired`]. The FSM compares it with the timer it
//! holds and ignores anything else, so an expiry that raced with a re-arm is harmless and the
//! runtime needs no generation numbers. An expiry delivered before its deadline is answered with
//! `SetTimer` of the same value, so the runtime arms it again.
//!
//! # Receiving
//!
//! [`Advert`] is an advertisement as the FSM needs it: sender address, priority and the Max
//! Advertise Interval. The receiver checks everything else before calling
//! [`Instance::handle`] (RFC 9568 §7.1 / RFC 3768 §7.1: TTL 255, version, VRID, checksum,
//! a non-zero v3 interval). For VRRPv2 it also discards an advert whose Adver Int differs from
//! the locally configured one (RFC 3768 §7.1); the FSM ignores the interval of a v2 advert.
//! The receiver should not loop our own adverts back: one from our own primary address is
//! refused with [`FsmError::OwnAdvert`] because a master answers lower-priority adverts
//! immediately, and a looped-back advert would make it answer itself.
//!
//! # Semantics chosen where the RFCs leave room (keepalived is the reference)
//!
//! * **Lower-priority advert at a master** (RFC 9568 §6.4.3, new relative to RFC 5798): the
//!   master discards it and sends an advert at once, leaving its Adver timer as it was, and
//!   announces its VIPs again ([`Output::Reannounce`], keepalived's `garp_lower_prio_repeat`).
//!   This is also done for VRRPv2, as keepalived does: it ends a dual-master period after a
//!   partition heals within one advert interval, and brings back the clients that followed
//!   the other master meanwhile.
//! * **Answers at a bounded rate**: the two rules above send an advert at once for each advert
//!   received, so a flood of priority-0 or lower-priority adverts would draw as many adverts
//!   from the master (10k priority-0 adverts in a second drew 4,540). The first of each kind
//!   is answered as the RFC says; another of the same kind within one Advertisement_Interval
//!   of that answer is discarded and reported ([`Output::AnswerRateLimited`]), leaving the
//!   Adver timer as it is. See [`ANSWER_MIN_INTERVAL_ADVERTS`] for why that bound.
//! * **Equal priority**: a backup accepts an advert of equal priority (RFC: "greater than or
//!   equal"); between two masters the higher primary address wins (RFC 9568 §6.4.3). Two address
//!   owners also fall back to the address comparison (keepalived instead lowers its own priority
//!   to 254).
//! * **Priority and tracking**: the configured priority is 1..=255. The effective priority is
//!   `priority + sum of tracking weights` ([`Input::TrackWeight`]) clamped to 1..=254, and an
//!   address owner (255) is never changed by tracking, as in keepalived's
//!   `vrrp_set_effective_priority` and keepalived.conf(5) ("if an instance has priority 255
//!   configured, the priority cannot be reduced by track_scripts ... and likewise track_scripts
//!   cannot increase the priority to 255"). A master does not advertise a changed priority
//!   early: its next periodic advert carries it (keepalived). A backup moves its Master_Down
//!   deadline by the change in Skew_Time (keepalived).
//! * **Fault** ([`Input::SetFault`]; keepalived: a tracked interface down, or a failing tracked
//!   script with weight 0): the instance holds no VIP, sends nothing and ignores adverts. A master
//!   going to Fault first sends a priority-0 advert so a backup takes over after Skew_Time
//!   (keepalived `vrrp_state_leave_master`). Leaving Fault goes to Backup with a full
//!   Master_Down_Interval, or straight to Master for an address owner. A fault reported before
//!   [`Input::Startup`] makes the instance start in Fault.
//! * **`state MASTER` hint** ([`StartState::Master`]): keepalived's start-up behaviour. A
//!   non-owner starts in Backup with a Master_Down timer of one advert interval plus the minimum
//!   skew (`(1/256)` of the interval in v3, `1/256` s in v2) instead of
//!   `3 * interval + Skew_Time`; if no advert of higher or equal priority arrives by then it
//!   becomes master, sending adverts. A lower-priority advert does not hold it back (it needs
//!   preemption). keepalived clears `nopreempt` and `preempt_delay` given with `state MASTER`,
//!   with a warning; [`Config::validate`] rejects these combinations instead. An address owner
//!   becomes master at once whatever the hint (RFC 9568 §6.4.1).
//! * **`preempt_delay`** (keepalived's, checked against `vrrp_state_backup`): it only delays a
//!   preemption, never a takeover from a dead master. A backup that accepts a lower-priority
//!   advert starts the delay if it is not running; while it runs, lower-priority adverts are
//!   still accepted (they keep resetting Master_Down); once it has run out they are discarded,
//!   so the backup becomes master one Master_Down_Interval after the last accepted advert: about
//!   `preempt_delay + Master_Down_Interval` after it first heard the lower master. An advert of
//!   higher or equal priority stops the delay; entering Backup resets it. There is no separate
//!   timer: the deadline is compared when an advert arrives, as in keepalived, which keeps the
//!   one-timer invariant. Range 0..=1000 s; incompatible with `nopreempt` and `state MASTER`.
//! * **`nopreempt`** (`preempt: false`): a backup accepts every advert, whatever its priority,
//!   and so only takes over when the master stops or releases.
//! * **Shutdown** ([`Input::Shutdown`]): a master sends a priority-0 advert; every state reports
//!   [`Output::Stopped`] (remove the VIPs, run `notify_stop`) and returns to Initialize.
//!
//! # Sync groups
//!
//! [`SyncGroup`] follows keepalived's `vrrp_sync_group` (keepalived.conf(5) and `vrrp_sync.c`):
//!
//! * a member in Fault puts every member in Fault; the group leaves Fault when no member has a
//!   fault of its own left;
//! * a member that leaves Master for Backup (it heard a better master) takes every other master
//!   member to Backup with it;
//! * a member never becomes master on its own: when its Master_Down timer fires (or, for an
//!   owner, at start-up) it waits in Backup, with no timer, until every member either is master
//!   or waits the same way; then they all become master together ("prefer backup state to avoid
//!   thrashing"). A waiting member that accepts an advert stops waiting;
//! * tracking weights are refused on members: keepalived ignores them because a group whose
//!   members have different winners would re-elect forever.
//!
//! # Wiring (for the runtime)
//!
//! * Apply outputs in order. [`Output::SendAdvert`] comes before [`Output::BecomeMaster`] so the
//!   old master drops the VIPs before our gratuitous ARPs/NAs go out (keepalived's order).
//! * Keep one pending timer per instance (the runtime arms one timerfd per unit, at the
//!   earliest of its instances'); on [`Output::SetTimer`] replace it. When it fires,
//!   compute `now` from the same epoch and call `handle(Input::TimerExpired(timer), now)`.
//! * Adverts carry the configured `advert_interval` as Max Advertise Interval (v3) or Adver Int
//!   in seconds (v2), and the priority from [`Output::SendAdvert`].
//! * Tracking: sum the weights of the tracked objects that are up (keepalived's sign rules) and
//!   send [`Input::TrackWeight`] when the sum changes; a weight-0 tracked object that fails is
//!   [`Input::SetFault`]`(true)` (OR them together first: the FSM holds one fault flag).

use std::fmt;
use std::net::IpAddr;
use std::ops::Add;
use std::time::Duration;

use crate::model::VrrpVersion;

/// The priority of the address owner (RFC 9568 §5.2.4): it becomes master at once on start-up.
pub const PRIORITY_OWNER: u8 = 255;
/// The priority a master sends when it gives the role up (RFC 9568 §5.2.4).
pub const PRIORITY_RELEASE: u8 = 0;
/// keepalived's upper bound for `preempt_delay`.
pub const MAX_PREEMPT_DELAY: Duration = Duration::from_secs(1000);
/// The largest VRRPv3 Max Advertise Interval: a 12-bit field in centiseconds (RFC 9568 §5.2.7).
pub const MAX_V3_INTERVAL: Centis = Centis(4095);

/// The least time between two immediate answers of a master to adverts of one kind (priority
/// 0, or a lower priority), in Advertisement_Intervals: one.
///
/// Why one interval: the immediate answer exists so that the routers that just heard a
/// release (their Master_Down timer set to Skew_Time) or a second, lower master hear us
/// before our next periodic advert. A router sends a release once when it stops, and a master
/// one advert per interval, so every legitimate case is served by the first answer of an
/// interval. Anything more within the interval is a flood or a loop: answering it would only
/// multiply it onto the LAN, and, for a priority-0 flood, could not keep the backups quiet
/// anyway (each forged release sets them to Skew_Time again). With this bound a master sends
/// at most two adverts per interval (its periodic one and one answer), whatever the flood's
/// rate; the rest are discarded and reported ([`Output::AnswerRateLimited`]).
pub const ANSWER_MIN_INTERVAL_ADVERTS: u32 = 1;

/// A point in time: the [`Duration`] since an epoch the runtime chooses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(Duration::ZERO);

    pub const fn from_duration(since_epoch: Duration) -> Self {
        Time(since_epoch)
    }

    pub const fn from_millis(ms: u64) -> Self {
        Time(Duration::from_millis(ms))
    }

    pub const fn from_micros(us: u64) -> Self {
        Time(Duration::from_micros(us))
    }

    /// The time since the epoch.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    fn saturating_sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }
}

/// An interval in centiseconds, the unit of VRRPv3's Max Advertise Interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centis(pub u16);

impl Centis {
    /// Whole seconds, the unit of VRRPv2's Adver Int.
    pub const fn from_secs(secs: u8) -> Self {
        Centis(secs as u16 * 100)
    }

    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0 as u64 * 10)
    }

    const fn as_micros(self) -> u64 {
        self.0 as u64 * 10_000
    }
}

/// keepalived's `state MASTER|BACKUP`: a start-up hint, not a state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StartState {
    /// Start as the RFC says: Backup, with a full Master_Down_Interval.
    #[default]
    Backup,
    /// Take over after about one advert interval unless a higher or equal priority is heard.
    Master,
}

/// The protocol state. Initialize, Backup and Master are RFC 9568's (Master is its "Active");
/// Fault is keepalived's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words keepalived passes to notify scripts.
        f.write_str(match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        })
    }
}

/// The one protocol timer of an instance, with its absolute deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Nothing armed (Initialize, Fault, or a sync-group member waiting for the group).
    #[default]
    None,
    /// A master's Adver_Timer: send the next advert at this time.
    Adver(Time),
    /// A backup's Master_Down_Timer: become master at this time.
    MasterDown(Time),
}

impl Timer {
    pub fn deadline(self) -> Option<Time> {
        match self {
            Timer::None => None,
            Timer::Adver(at) | Timer::MasterDown(at) => Some(at),
        }
    }
}

/// A received advertisement, as the FSM needs it; the receiver has already validated the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Advert {
    /// The sender's primary address (the IP source address), compared on equal priority.
    pub sender: IpAddr,
    /// 0 means the master is giving the role up.
    pub priority: u8,
    /// The v3 Max Advertise Interval. For v2 put the Adver Int (seconds) here; it is ignored.
    pub max_advert_interval: Centis,
}

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    /// RFC 9568 §6.4.1: leave Initialize.
    Startup,
    /// Leave Initialize for Master at once: the daemon was master a moment ago (a `keep`
    /// stop, or a crash restarted at once) and its addresses are still in place, so an
    /// advert now keeps the peers' Master_Down timers from expiring and nothing moves (no
    /// gratuitous ARP: the neighbours still point here). Not part of the RFC: what
    /// keepalived's `--dont-release-vrrp` leaves undone.
    Resume,
    /// Stop: a master releases with a priority-0 advert; every state returns to Initialize.
    Shutdown,
    /// An advert for this virtual router, validated by the receiver.
    Advert(Advert),
    /// The timer the FSM last asked for fired; pass back the exact [`Timer`] value.
    TimerExpired(Timer),
    /// The instance's own fault condition (tracked interface down, weight-0 script failing).
    SetFault(bool),
    /// The sum of the weights of its tracked objects; replaces the previous sum.
    TrackWeight(i32),
    /// Sent by [`SyncGroup`]: another member is in Fault (or no longer is).
    SyncFault(bool),
    /// Sent by [`SyncGroup`]: another member left Master for Backup; follow it.
    SyncBackup,
    /// Sent by [`SyncGroup`]: every member wants to be master; become master now.
    SyncMaster,
    /// A reload changed the instance's settings (priority, advert interval, preemption,
    /// primary address): they apply from now, in the state the instance is in. The version
    /// and the address family are the virtual router's identity and cannot change.
    Reconfigure(Config),
}

impl Input {
    pub fn kind(&self) -> InputKind {
        match self {
            Input::Startup => InputKind::Startup,
            Input::Resume => InputKind::Resume,
            Input::Shutdown => InputKind::Shutdown,
            Input::Advert(_) => InputKind::Advert,
            Input::TimerExpired(_) => InputKind::TimerExpired,
            Input::SetFault(_) => InputKind::SetFault,
            Input::TrackWeight(_) => InputKind::TrackWeight,
            Input::SyncFault(_) => InputKind::SyncFault,
            Input::SyncBackup => InputKind::SyncBackup,
            Input::SyncMaster => InputKind::SyncMaster,
            Input::Reconfigure(_) => InputKind::Reconfigure,
        }
    }
}

/// The name of an [`Input`], for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputKind {
    Startup,
    Resume,
    Shutdown,
    Advert,
    TimerExpired,
    SetFault,
    TrackWeight,
    SyncFault,
    SyncBackup,
    SyncMaster,
    Reconfigure,
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Output {
    /// Multicast (or unicast to the peers) an advert with this priority and the configured
    /// interval.
    SendAdvert { priority: u8 },
    /// Add the VIPs, then send gratuitous ARPs / unsolicited NAs.
    BecomeMaster,
    /// Master again after a restart ([`Input::Resume`]): the VIPs are in place and the
    /// neighbours point here; nothing to add or announce.
    Resumed,
    /// Make sure the VIPs are absent.
    BecomeBackup,
    /// Make sure the VIPs are absent.
    BecomeFault,
    /// Stopped (back in Initialize): make sure the VIPs are absent.
    Stopped,
    /// Still master after a lower-priority advert: announce the VIPs again (gratuitous ARP /
    /// unsolicited NA), as keepalived does (`garp_lower_prio_repeat`). Clients that followed
    /// the other router while the two could not hear each other come back at once instead
    /// of when their neighbour entry expires.
    Reannounce,
    /// A master discarded an advert it would have answered at once, because it answered one
    /// of the same kind less than [`ANSWER_MIN_INTERVAL_ADVERTS`] intervals ago: count it.
    /// Nothing else changed (the Adver timer keeps its deadline).
    AnswerRateLimited(Answer),
    /// For notify scripts and logs; `priority` is the effective priority.
    StateChanged {
        from: State,
        to: State,
        priority: u8,
    },
    /// The effective priority changed (keepalived's `notify_priority_changes`).
    PriorityChanged { from: u8, to: u8 },
    /// Replace the armed timer with this one (`Timer::None`: cancel it).
    SetTimer(Timer),
}

/// The kinds of advert a master answers at once (RFC 9568 §6.4.3), each at a bounded rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Priority 0: another router released.
    PriorityZero,
    /// A lower priority (or an equal one from a lower address): a second master.
    LowerPriority,
}

impl Answer {
    /// The discard reason under which the runtime counts a rate-limited one.
    pub fn rate_limited_name(self) -> &'static str {
        match self {
            Answer::PriorityZero => "priority_zero_rate_limited",
            Answer::LowerPriority => "lower_priority_rate_limited",
        }
    }
}

/// One VRRP instance's protocol settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Config {
    pub version: VrrpVersion,
    /// The primary address of the interface: the advert source, compared on equal priority.
    pub primary_address: IpAddr,
    /// 1..=254, or 255 for the address owner.
    pub priority: u8,
    /// Advertisement_Interval: v3 1..=4095 cs, v2 whole seconds 1..=255.
    pub advert_interval: Centis,
    /// Preempt_Mode; `false` is keepalived's `nopreempt`.
    pub preempt: bool,
    /// keepalived's `preempt_delay`; zero disables it.
    pub preempt_delay: Duration,
    /// keepalived's `state MASTER|BACKUP`.
    pub start_state: StartState,
}

impl Config {
    /// keepalived's defaults: 1 s adverts, preempt, no preempt delay, `state BACKUP`.
    pub fn new(version: VrrpVersion, primary_address: IpAddr, priority: u8) -> Self {
        Config {
            version,
            primary_address,
            priority,
            advert_interval: Centis(100),
            preempt: true,
            preempt_delay: Duration::ZERO,
            start_state: StartState::Backup,
        }
    }

    pub fn is_owner(&self) -> bool {
        self.priority == PRIORITY_OWNER
    }

    /// Refuses what keepalived would warn about and silently change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.priority == PRIORITY_RELEASE {
            return Err(ConfigError::PriorityZero);
        }
        let centis = self.advert_interval.0;
        match self.version {
            VrrpVersion::V3 => {
                if !(1..=MAX_V3_INTERVAL.0).contains(&centis) {
                    return Err(ConfigError::V3IntervalOutOfRange { centis });
                }
            }
            VrrpVersion::V2 => {
                if centis == 0 || !centis.is_multiple_of(100) || centis > 25_500 {
                    return Err(ConfigError::V2IntervalInvalid { centis });
                }
                if self.primary_address.is_ipv6() {
                    return Err(ConfigError::V2NeedsIpv4 {
                        address: self.primary_address,
                    });
                }
            }
        }
        if self.is_owner() && !self.preempt {
            return Err(ConfigError::NopreemptOnOwner);
        }
        if self.start_state == StartState::Master && !self.preempt {
            return Err(ConfigError::NopreemptWithStateMaster);
        }
        if !self.preempt_delay.is_zero() {
            if self.preempt_delay > MAX_PREEMPT_DELAY {
                return Err(ConfigError::PreemptDelayTooLong {
                    delay: self.preempt_delay,
                });
            }
            if !self.preempt {
                return Err(ConfigError::PreemptDelayWithNopreempt);
            }
            if self.start_state == StartState::Master {
                return Err(ConfigError::PreemptDelayWithStateMaster);
            }
        }
        Ok(())
    }
}

/// A configuration the FSM refuses to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("priority 0 is reserved for a master's release advert; configure 1..=255")]
    PriorityZero,
    #[error("VRRPv3 advert interval {centis} cs is outside 1..=4095 cs")]
    V3IntervalOutOfRange { centis: u16 },
    #[error("VRRPv2 advert interval {centis} cs is not a whole number of seconds in 1..=255")]
    V2IntervalInvalid { centis: u16 },
    #[error("VRRPv2 is IPv4 only, but the primary address {address} is IPv6")]
    V2NeedsIpv4 { address: IpAddr },
    #[error("an address owner (priority 255) always preempts; nopreempt is not allowed")]
    NopreemptOnOwner,
    #[error("nopreempt needs `state BACKUP` (keepalived would clear nopreempt)")]
    NopreemptWithStateMaster,
    #[error("preempt_delay {delay:?} is over the maximum of 1000 s")]
    PreemptDelayTooLong { delay: Duration },
    #[error("preempt_delay has no effect with nopreempt")]
    PreemptDelayWithNopreempt,
    #[error("preempt_delay needs `state BACKUP` (keepalived would clear preempt_delay)")]
    PreemptDelayWithStateMaster,
    #[error("a sync group needs at least 2 members, got {members}")]
    SyncGroupTooSmall { members: usize },
}

/// An input the FSM cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsmError {
    #[error("input {input} is not valid in state {state}")]
    InvalidInput { state: State, input: InputKind },
    #[error(
        "advert from our own primary address {address}: the receiver must drop our own adverts"
    )]
    OwnAdvert { address: IpAddr },
    #[error("advert from {sender}, which is not of the family of our primary address {own}")]
    AddressFamily { sender: IpAddr, own: IpAddr },
    #[error("VRRPv3 advert from {sender} with a zero Max Advertise Interval (RFC 9568 §7.1)")]
    ZeroAdvertInterval { sender: IpAddr },
    #[error("sync group has no member {member} (it has {members})")]
    UnknownMember { member: usize, members: usize },
    #[error("input {input} is the sync group's own and cannot be given to it")]
    ReservedSyncInput { input: InputKind },
    #[error("sync group member {member} was given tracking weight {weight}; keepalived ignores weights in sync groups")]
    WeightedTrackingInSyncGroup { member: usize, weight: i32 },
    #[error("the new settings are refused: {0}")]
    Config(ConfigError),
    #[error("a reload cannot change an instance's version or address family: it is another virtual router")]
    Identity,
}

/// The state with the timer it owns, so that exactly one timer exists by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Initialize,
    /// `None`: a sync-group member whose Master_Down timer fired, waiting for the group.
    Backup {
        down_at: Option<Time>,
    },
    Master {
        adver_at: Time,
    },
    Fault,
}

/// One VRRP instance (one virtual router on one interface and address family).
#[derive(Debug, Clone)]
pub struct Instance {
    config: Config,
    phase: Phase,
    effective_priority: u8,
    track_weight: i32,
    own_fault: bool,
    group_fault: bool,
    sync_member: bool,
    master_adver_interval: Centis,
    /// keepalived's `preempt_time`: while `now` is before it, lower-priority adverts are accepted.
    preempt_until: Option<Time>,
    /// The sender and priority of the last advert accepted as a backup (for status output).
    master: Option<(IpAddr, u8)>,
    /// When this master last answered a priority-0 advert at once, and a lower-priority one
    /// (see [`ANSWER_MIN_INTERVAL_ADVERTS`]).
    answered_release: Option<Time>,
    answered_lower: Option<Time>,
}

impl Instance {
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Instance {
            effective_priority: config.priority,
            master_adver_interval: config.advert_interval,
            config,
            phase: Phase::Initialize,
            track_weight: 0,
            own_fault: false,
            group_fault: false,
            sync_member: false,
            preempt_until: None,
            master: None,
            answered_release: None,
            answered_lower: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::Initialize => State::Initialize,
            Phase::Backup { .. } => State::Backup,
            Phase::Master { .. } => State::Master,
            Phase::Fault => State::Fault,
        }
    }

    /// The one armed timer.
    pub fn timer(&self) -> Timer {
        match self.phase {
            Phase::Backup { down_at: Some(at) } => Timer::MasterDown(at),
            Phase::Master { adver_at } => Timer::Adver(adver_at),
            Phase::Initialize | Phase::Backup { down_at: None } | Phase::Fault => Timer::None,
        }
    }

    pub fn effective_priority(&self) -> u8 {
        self.effective_priority
    }

    /// v3: learned from the master's adverts; v2: always the configured interval.
    pub fn master_adver_interval(&self) -> Centis {
        self.master_adver_interval
    }

    /// v3: `(256 - Priority) * Master_Adver_Interval / 256`; v2: `(256 - Priority) / 256` s.
    pub fn skew_time(&self) -> Duration {
        self.skew_for(256 - u64::from(self.effective_priority))
    }

    /// `3 * Master_Adver_Interval + Skew_Time`.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval.as_duration() * 3 + self.skew_time()
    }

    /// Whether the instance is in Fault or would be on start-up (own or sync-group fault).
    pub fn is_faulted(&self) -> bool {
        self.own_fault || self.group_fault
    }

    /// A sync-group member whose Master_Down timer fired and which waits for the group.
    pub fn wants_master(&self) -> bool {
        self.phase == Phase::Backup { down_at: None }
    }

    /// Until when lower-priority adverts are still accepted (`preempt_delay` running).
    pub fn preempt_deadline(&self) -> Option<Time> {
        self.preempt_until
    }

    /// The sender and priority of the last advert accepted as a backup.
    pub fn last_master(&self) -> Option<(IpAddr, u8)> {
        self.master
    }

    /// Processes one input at time `now` and returns what the runtime must do, in order.
    /// On error nothing has changed.
    pub fn handle(&mut self, input: Input, now: Time) -> Result<Vec<Output>, FsmError> {
        let timer_before = self.timer();
        let mut out = Vec::new();
        let mut rearm = false;
        match input {
            Input::Startup => self.on_startup(now, &mut out)?,
            Input::Resume => self.on_resume(now, &mut out)?,
            Input::Shutdown => self.on_shutdown(&mut out),
            Input::Advert(advert) => self.on_advert(advert, now, &mut out)?,
            Input::TimerExpired(timer) => rearm = self.on_timer(timer, now, &mut out),
            Input::SetFault(fault) => {
                self.own_fault = fault;
                self.on_fault_change(now, &mut out);
            }
            Input::TrackWeight(weight) => self.on_track_weight(weight, now, &mut out),
            Input::SyncFault(fault) => {
                self.group_fault = fault;
                self.on_fault_change(now, &mut out);
            }
            Input::SyncBackup => self.on_sync_backup(now, &mut out),
            Input::SyncMaster => self.on_sync_master(now, &mut out)?,
            Input::Reconfigure(config) => self.on_reconfigure(config, now, &mut out)?,
        }
        let timer_after = self.timer();
        if timer_after != timer_before || rearm {
            out.push(Output::SetTimer(timer_after));
        }
        Ok(out)
    }

    fn skew_for(&self, weight: u64) -> Duration {
        match self.config.version {
            VrrpVersion::V3 => {
                Duration::from_micros(weight * self.master_adver_interval.as_micros() / 256)
            }
            VrrpVersion::V2 => Duration::from_micros(weight * 1_000_000 / 256),
        }
    }

    fn invalid(&self, input: InputKind) -> FsmError {
        FsmError::InvalidInput {
            state: self.state(),
            input,
        }
    }

    fn push_change(&self, from: State, out: &mut Vec<Output>) {
        out.push(Output::StateChanged {
            from,
            to: self.state(),
            priority: self.effective_priority,
        });
    }

    /// RFC 9568 §6.4.1 / RFC 3768 §6.4.1.
    fn on_startup(&mut self, now: Time, out: &mut Vec<Output>) -> Result<(), FsmError> {
        if self.phase != Phase::Initialize {
            return Err(self.invalid(InputKind::Startup));
        }
        self.master_adver_interval = self.config.advert_interval;
        if self.is_faulted() {
            self.enter_fault(out);
        } else if self.config.is_owner() {
            self.master_or_wait(now, out);
        } else {
            let down = match self.config.start_state {
                StartState::Backup => self.master_down_interval(),
                // keepalived's `state MASTER`: one interval plus the minimum skew.
                StartState::Master => self.master_adver_interval.as_duration() + self.skew_for(1),
            };
            self.enter_backup(now + down, out);
        }
        Ok(())
    }

    fn on_resume(&mut self, now: Time, out: &mut Vec<Output>) -> Result<(), FsmError> {
        if self.phase != Phase::Initialize {
            return Err(self.invalid(InputKind::Resume));
        }
        if self.is_faulted() {
            // A fault known at start: as a start-up, which goes to Fault.
            return self.on_startup(now, out);
        }
        self.master_adver_interval = self.config.advert_interval;
        self.become_master(now, Output::Resumed, out);
        Ok(())
    }

    /// RFC 9568 §6.4.2 and §6.4.3, "If a Shutdown event is received".
    fn on_shutdown(&mut self, out: &mut Vec<Output>) {
        let from = self.state();
        if from == State::Initialize {
            return;
        }
        if from == State::Master {
            out.push(Output::SendAdvert {
                priority: PRIORITY_RELEASE,
            });
        }
        self.phase = Phase::Initialize;
        self.preempt_until = None;
        self.master_adver_interval = self.config.advert_interval;
        out.push(Output::Stopped);
        self.push_change(from, out);
    }

    fn on_advert(
        &mut self,
        advert: Advert,
        now: Time,
        out: &mut Vec<Output>,
    ) -> Result<(), FsmError> {
        let own = self.config.primary_address;
        if advert.sender.is_ipv4() != own.is_ipv4() {
            return Err(FsmError::AddressFamily {
                sender: advert.sender,
                own,
            });
        }
        if advert.sender == own {
            return Err(FsmError::OwnAdvert { address: own });
        }
        if self.config.version == VrrpVersion::V3 && advert.max_advert_interval.0 == 0 {
            return Err(FsmError::ZeroAdvertInterval {
                sender: advert.sender,
            });
        }
        match self.phase {
            Phase::Initialize | Phase::Fault => {
                tracing::trace!(state = %self.state(), sender = %advert.sender, "advert ignored");
            }
            Phase::Backup { down_at } => self.backup_rx(advert, down_at, now),
            Phase::Master { .. } => self.master_rx(advert, now, out),
        }
        Ok(())
    }

    /// RFC 9568 §6.4.2 / RFC 3768 §6.4.2, "If an ADVERTISEMENT is received", with keepalived's
    /// preempt_delay.
    fn backup_rx(&mut self, advert: Advert, down_at: Option<Time>, now: Time) {
        if advert.priority == PRIORITY_RELEASE {
            // "Set the Master_Down_Timer to Skew_Time". A member waiting for its sync group is
            // already past its timer and keeps waiting.
            if down_at.is_some() {
                self.phase = Phase::Backup {
                    down_at: Some(now + self.skew_time()),
                };
            }
            return;
        }
        let local = self.effective_priority;
        let delay = self.config.preempt_delay;
        let delaying = !delay.is_zero() && self.preempt_until.is_none_or(|until| now < until);
        if !self.config.preempt || advert.priority >= local || delaying {
            if self.config.version == VrrpVersion::V3 {
                self.master_adver_interval = advert.max_advert_interval;
            }
            self.master = Some((advert.sender, advert.priority));
            if !delay.is_zero() {
                if advert.priority >= local {
                    self.preempt_until = None;
                } else if self.preempt_until.is_none() {
                    self.preempt_until = Some(now + delay);
                }
            }
            self.phase = Phase::Backup {
                down_at: Some(now + self.master_down_interval()),
            };
        } else {
            // Preempt_Mode and a lower priority: discard, and let Master_Down run out.
            tracing::trace!(sender = %advert.sender, priority = advert.priority, local, "lower-priority advert discarded");
        }
    }

    /// RFC 9568 §6.4.3 / RFC 3768 §6.4.3, "If an ADVERTISEMENT is received".
    fn master_rx(&mut self, advert: Advert, now: Time, out: &mut Vec<Output>) {
        let local = self.effective_priority;
        if advert.priority == PRIORITY_RELEASE {
            if !self.answer_due(Answer::PriorityZero, now) {
                out.push(Output::AnswerRateLimited(Answer::PriorityZero));
                return;
            }
            // "Send an ADVERTISEMENT; Reset the Adver_Timer to Advertisement_Interval".
            out.push(Output::SendAdvert { priority: local });
            self.phase = Phase::Master {
                adver_at: now + self.config.advert_interval.as_duration(),
            };
        } else if advert.priority > local
            || (advert.priority == local && advert.sender > self.config.primary_address)
        {
            // IpAddr's order within a family is the unsigned network-byte-order comparison.
            self.master_adver_interval = match self.config.version {
                VrrpVersion::V3 => advert.max_advert_interval,
                VrrpVersion::V2 => self.config.advert_interval,
            };
            self.master = Some((advert.sender, advert.priority));
            let down = self.master_down_interval();
            self.enter_backup(now + down, out);
        } else {
            // RFC 9568: "Discard the ADVERTISEMENT; Send an ADVERTISEMENT immediately to assert
            // the Active state". The Adver timer keeps its phase (keepalived).
            if self.answer_due(Answer::LowerPriority, now) {
                out.push(Output::SendAdvert { priority: local });
            } else {
                out.push(Output::AnswerRateLimited(Answer::LowerPriority));
            }
            // The runtime limits re-announcements itself (and defers, rather than drops, one
            // that comes too soon), so it still hears of every lower master.
            out.push(Output::Reannounce);
        }
    }

    /// Whether a master answers an advert of kind `kind` at `now`; if so, records the answer.
    fn answer_due(&mut self, kind: Answer, now: Time) -> bool {
        let pause = self.config.advert_interval.as_duration() * ANSWER_MIN_INTERVAL_ADVERTS;
        let last = match kind {
            Answer::PriorityZero => &mut self.answered_release,
            Answer::LowerPriority => &mut self.answered_lower,
        };
        // `now` before the last answer cannot come from the runtime (its times never go
        // back); it is treated as within the pause.
        let due = last.is_none_or(|at| now >= at + pause);
        if due {
            *last = Some(now);
        }
        due
    }

    /// Returns whether the unchanged timer must be armed again (an early expiry).
    fn on_timer(&mut self, timer: Timer, now: Time, out: &mut Vec<Output>) -> bool {
        let Some(deadline) = timer.deadline() else {
            return false;
        };
        if timer != self.timer() {
            tracing::trace!(?timer, armed = ?self.timer(), "stale timer expiry ignored");
            return false;
        }
        if now < deadline {
            return true;
        }
        match self.phase {
            // RFC 9568 §6.4.3: "If the Adver_Timer fires, then: Send an ADVERTISEMENT; Reset the
            // Adver_Timer to Advertisement_Interval".
            Phase::Master { .. } => {
                out.push(Output::SendAdvert {
                    priority: self.effective_priority,
                });
                // One interval after the deadline that fired, not after `now`: a runtime that
                // wakes a little late must not stretch every interval (at 10 ms adverts, 1 ms
                // of lateness each time is 10% fewer adverts). More than an interval behind,
                // start again from now rather than send a burst.
                let interval = self.config.advert_interval.as_duration();
                let next = deadline + interval;
                self.phase = Phase::Master {
                    adver_at: if next > now { next } else { now + interval },
                };
            }
            // RFC 9568 §6.4.2: "If the Master_Down_Timer fires".
            Phase::Backup { .. } => self.master_or_wait(now, out),
            Phase::Initialize | Phase::Fault => {}
        }
        false
    }

    fn on_fault_change(&mut self, now: Time, out: &mut Vec<Output>) {
        match (self.is_faulted(), self.phase) {
            // Recorded; Startup acts on it.
            (_, Phase::Initialize) | (true, Phase::Fault) => {}
            (true, _) => self.enter_fault(out),
            (false, Phase::Fault) => {
                self.master_adver_interval = self.config.advert_interval;
                if self.config.is_owner() {
                    self.master_or_wait(now, out);
                } else {
                    let down = self.master_down_interval();
                    self.enter_backup(now + down, out);
                }
            }
            (false, _) => {}
        }
    }

    fn on_track_weight(&mut self, weight: i32, now: Time, out: &mut Vec<Output>) {
        self.track_weight = weight;
        self.update_priority(now, out);
    }

    /// The configured priority plus the tracking weight (an owner's stays 255); a backup's
    /// Master_Down deadline moves with the change in Skew_Time.
    fn update_priority(&mut self, now: Time, out: &mut Vec<Output>) -> bool {
        let new = if self.config.is_owner() {
            PRIORITY_OWNER
        } else {
            let total = i64::from(self.config.priority) + i64::from(self.track_weight);
            total.clamp(1, i64::from(PRIORITY_OWNER) - 1) as u8
        };
        let old = self.effective_priority;
        if new == old {
            return false;
        }
        let old_skew = self.skew_time();
        self.effective_priority = new;
        out.push(Output::PriorityChanged { from: old, to: new });
        if let Phase::Backup { down_at: Some(at) } = self.phase {
            // Master_Down_Interval changed by the change in Skew_Time; move the deadline with it.
            let new_skew = self.skew_time();
            let at = if new_skew >= old_skew {
                at + (new_skew - old_skew)
            } else {
                at.saturating_sub(old_skew - new_skew).max(now)
            };
            self.phase = Phase::Backup { down_at: Some(at) };
        }
        true
    }

    /// New settings, in place: no state changes here. A master advertises its new priority
    /// at once (a backup that should now preempt learns it within one interval, not at the
    /// next scheduled advert) and its next advert follows the new interval; a backup's
    /// Master_Down deadline follows its new skew, and a v3 backup keeps the interval it
    /// learned from the master (RFC 9568 §6.4.2). Not part of the RFC, which has no
    /// reconfiguration: what keepalived does on reload for an instance it keeps.
    fn on_reconfigure(
        &mut self,
        config: Config,
        now: Time,
        out: &mut Vec<Output>,
    ) -> Result<(), FsmError> {
        config.validate().map_err(FsmError::Config)?;
        if config.version != self.config.version
            || config.primary_address.is_ipv6() != self.config.primary_address.is_ipv6()
        {
            return Err(FsmError::Identity);
        }
        self.config = config;
        if !config.preempt {
            self.preempt_until = None;
        }
        let changed = self.update_priority(now, out);
        match self.phase {
            Phase::Master { adver_at } => {
                self.master_adver_interval = config.advert_interval;
                let next = now + config.advert_interval.as_duration();
                if changed {
                    out.push(Output::SendAdvert {
                        priority: self.effective_priority,
                    });
                    self.phase = Phase::Master { adver_at: next };
                } else if next < adver_at {
                    self.phase = Phase::Master { adver_at: next };
                }
            }
            // A v3 backup that heard a master goes on with the interval it learned.
            Phase::Backup { .. } if config.version == VrrpVersion::V3 && self.master.is_some() => {}
            Phase::Backup { .. } | Phase::Fault | Phase::Initialize => {
                self.master_adver_interval = config.advert_interval;
            }
        }
        Ok(())
    }

    fn on_sync_backup(&mut self, now: Time, out: &mut Vec<Output>) {
        if let Phase::Master { .. } = self.phase {
            // The group knows nothing of the other master's interval: use ours.
            self.master_adver_interval = self.config.advert_interval;
            let down = self.master_down_interval();
            self.enter_backup(now + down, out);
        }
    }

    fn on_sync_master(&mut self, now: Time, out: &mut Vec<Output>) -> Result<(), FsmError> {
        match self.phase {
            Phase::Backup { .. } => self.enter_master(now, out),
            Phase::Master { .. } => {}
            Phase::Initialize | Phase::Fault => return Err(self.invalid(InputKind::SyncMaster)),
        }
        Ok(())
    }

    /// Become master, or, in a sync group, wait in Backup for the others.
    fn master_or_wait(&mut self, now: Time, out: &mut Vec<Output>) {
        if !self.sync_member {
            self.enter_master(now, out);
            return;
        }
        if self.state() != State::Backup {
            let from = self.state();
            self.preempt_until = None;
            self.phase = Phase::Backup { down_at: None };
            out.push(Output::BecomeBackup);
            self.push_change(from, out);
        } else {
            self.phase = Phase::Backup { down_at: None };
        }
    }

    /// RFC 9568 §6.4.1 (owner) and §6.4.2 (Master_Down_Timer fires): send an advert, take the
    /// addresses, arm the Adver timer.
    fn enter_master(&mut self, now: Time, out: &mut Vec<Output>) {
        self.become_master(now, Output::BecomeMaster, out);
    }

    /// Master from now: an advert, then `how` (take the addresses, or, resumed, keep them).
    fn become_master(&mut self, now: Time, how: Output, out: &mut Vec<Output>) {
        let from = self.state();
        self.phase = Phase::Master {
            adver_at: now + self.config.advert_interval.as_duration(),
        };
        self.preempt_until = None;
        out.push(Output::SendAdvert {
            priority: self.effective_priority,
        });
        out.push(how);
        self.push_change(from, out);
    }

    fn enter_backup(&mut self, down_at: Time, out: &mut Vec<Output>) {
        let from = self.state();
        self.phase = Phase::Backup {
            down_at: Some(down_at),
        };
        self.preempt_until = None;
        out.push(Output::BecomeBackup);
        self.push_change(from, out);
    }

    fn enter_fault(&mut self, out: &mut Vec<Output>) {
        let from = self.state();
        if from == State::Master {
            // keepalived: a master going to Fault releases, so a backup takes over in Skew_Time.
            out.push(Output::SendAdvert {
                priority: PRIORITY_RELEASE,
            });
        }
        self.phase = Phase::Fault;
        self.preempt_until = None;
        out.push(Output::BecomeFault);
        self.push_change(from, out);
    }
}

/// keepalived's `vrrp_sync_group`: instances that change state together (see the module docs).
/// Outputs are tagged with the index of the member they belong to.
#[derive(Debug, Clone)]
pub struct SyncGroup {
    members: Vec<Instance>,
}

impl SyncGroup {
    pub fn new(configs: Vec<Config>) -> Result<Self, ConfigError> {
        if configs.len() < 2 {
            return Err(ConfigError::SyncGroupTooSmall {
                members: configs.len(),
            });
        }
        let members = configs
            .into_iter()
            .map(|config| {
                let mut instance = Instance::new(config)?;
                instance.sync_member = true;
                Ok(instance)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        Ok(SyncGroup { members })
    }

    pub fn members(&self) -> &[Instance] {
        &self.members
    }

    pub fn member(&self, index: usize) -> Option<&Instance> {
        self.members.get(index)
    }

    /// The state every member is in, if they agree.
    pub fn state(&self) -> Option<State> {
        let first = self.members.first()?.state();
        self.members
            .iter()
            .all(|m| m.state() == first)
            .then_some(first)
    }

    /// Gives `input` to member `member`, then brings the others along.
    pub fn handle(
        &mut self,
        member: usize,
        input: Input,
        now: Time,
    ) -> Result<Vec<(usize, Output)>, FsmError> {
        let members = self.members.len();
        if member >= members {
            return Err(FsmError::UnknownMember { member, members });
        }
        match input {
            Input::SyncFault(_) | Input::SyncBackup | Input::SyncMaster => {
                return Err(FsmError::ReservedSyncInput {
                    input: input.kind(),
                });
            }
            Input::TrackWeight(weight) if weight != 0 => {
                return Err(FsmError::WeightedTrackingInSyncGroup { member, weight });
            }
            _ => {}
        }
        let before: Vec<State> = self.members.iter().map(Instance::state).collect();
        let mut out = Vec::new();
        self.feed(member, input, now, &mut out)?;
        self.reconcile(&before, now, &mut out)?;
        Ok(out)
    }

    fn feed(
        &mut self,
        member: usize,
        input: Input,
        now: Time,
        out: &mut Vec<(usize, Output)>,
    ) -> Result<(), FsmError> {
        let outputs = self.members[member].handle(input, now)?;
        out.extend(outputs.into_iter().map(|o| (member, o)));
        Ok(())
    }

    fn reconcile(
        &mut self,
        before: &[State],
        now: Time,
        out: &mut Vec<(usize, Output)>,
    ) -> Result<(), FsmError> {
        // One member's fault is every member's (keepalived `vrrp_sync_fault`), until none is left.
        let any_fault = self.members.iter().any(|m| m.own_fault);
        for i in 0..self.members.len() {
            if self.members[i].group_fault != any_fault {
                self.feed(i, Input::SyncFault(any_fault), now, out)?;
            }
        }
        // A member that lost mastership takes the others to Backup (`vrrp_sync_backup`).
        let demoted = before
            .iter()
            .zip(&self.members)
            .any(|(was, m)| *was == State::Master && m.state() == State::Backup);
        if demoted {
            for i in 0..self.members.len() {
                if self.members[i].state() == State::Master {
                    self.feed(i, Input::SyncBackup, now, out)?;
                }
            }
        }
        // Master only when every member is master or wants to be (`vrrp_sync_can_goto_master`).
        let all_ready = self
            .members
            .iter()
            .all(|m| m.state() == State::Master || m.wants_master());
        if all_ready {
            for i in 0..self.members.len() {
                if self.members[i].wants_master() {
                    self.feed(i, Input::SyncMaster, now, out)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SECOND: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn v6(last: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last))
    }

    /// A v3 instance at 192.0.2.10 with 1 s adverts.
    fn cfg(priority: u8) -> Config {
        Config::new(VrrpVersion::V3, v4(10), priority)
    }

    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    #[test]
    fn resume_is_master_at_once_with_an_advert_and_nothing_to_announce() {
        let mut i = Instance::new(cfg(100)).unwrap();
        let out = i.handle(Input::Resume, t(5)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 100 },
                Output::Resumed,
                Output::StateChanged {
                    from: State::Initialize,
                    to: State::Master,
                    priority: 100
                },
                Output::SetTimer(Timer::Adver(t(1005))),
            ]
        );
        assert_eq!(i.state(), State::Master);
        // Only from Initialize.
        assert!(i.handle(Input::Resume, t(6)).is_err());
        // A higher-priority peer still wins: the resumed master steps down as any would.
        let out = i.handle(advert(20, 200), t(10)).unwrap();
        assert!(out.contains(&Output::BecomeBackup), "{out:?}");
    }

    #[test]
    fn resume_with_a_fault_is_a_start_in_fault() {
        let mut i = Instance::new(cfg(100)).unwrap();
        i.handle(Input::SetFault(true), t(0)).unwrap();
        i.handle(Input::Resume, t(1)).unwrap();
        assert_eq!(i.state(), State::Fault);
    }

    #[test]
    fn a_sync_group_resumes_whole() {
        let mut g = SyncGroup::new(vec![cfg(100), cfg(100)]).unwrap();
        let mut outs = Vec::new();
        for m in 0..2 {
            outs.extend(g.handle(m, Input::Resume, t(1)).unwrap());
        }
        assert!(g.members().iter().all(|m| m.state() == State::Master));
        assert!(
            outs.iter().all(|(_, o)| *o != Output::BecomeMaster),
            "{outs:?}"
        );
        assert_eq!(
            outs.iter().filter(|(_, o)| *o == Output::Resumed).count(),
            2
        );
    }

    fn advert(last: u8, priority: u8) -> Input {
        Input::Advert(Advert {
            sender: v4(last),
            priority,
            max_advert_interval: Centis(100),
        })
    }

    fn started(config: Config, now: Time) -> Instance {
        let mut i = Instance::new(config).unwrap();
        i.handle(Input::Startup, now).unwrap();
        i
    }

    /// A master since `now`, by way of Backup and an expired Master_Down timer.
    fn master(config: Config, now: Time) -> Instance {
        let mut i = started(config, Time::ZERO);
        let timer = i.timer();
        let at = timer.deadline().unwrap();
        assert!(at <= now, "master() needs now >= {at:?}");
        i.handle(Input::TimerExpired(timer), now).unwrap();
        assert_eq!(i.state(), State::Master);
        i
    }

    fn fire(i: &mut Instance) -> Vec<Output> {
        let timer = i.timer();
        i.handle(Input::TimerExpired(timer), timer.deadline().unwrap())
            .unwrap()
    }

    // ---- RFC 9568 / RFC 3768 §6.4.1 Initialize ----

    /// RFC 9568 §6.4.1: "If the Priority = 255 ... Send an ADVERTISEMENT ... Set the Adver_Timer
    /// to Advertisement_Interval ... Transition to the {Active} state".
    #[test]
    fn rfc9568_6_4_1_owner_becomes_master_at_once() {
        let mut i = Instance::new(cfg(255)).unwrap();
        let out = i.handle(Input::Startup, t(5)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 255 },
                Output::BecomeMaster,
                Output::StateChanged {
                    from: State::Initialize,
                    to: State::Master,
                    priority: 255
                },
                Output::SetTimer(Timer::Adver(t(1005))),
            ]
        );
    }

    /// RFC 9568 §6.4.1: otherwise "Set Master_Adver_Interval to Advertisement_Interval; Set the
    /// Master_Down_Timer to Master_Down_Interval; Transition to the {Backup} state".
    #[test]
    fn rfc9568_6_4_1_non_owner_starts_backup_with_master_down_interval() {
        let mut i = Instance::new(cfg(100)).unwrap();
        let out = i.handle(Input::Startup, Time::ZERO).unwrap();
        // Skew = (256 - 100) * 100 cs / 256 = 60.9375 cs; 3 * 1 s + skew.
        let mdi = Duration::from_micros(3_609_375);
        assert_eq!(i.skew_time(), Duration::from_micros(609_375));
        assert_eq!(i.master_down_interval(), mdi);
        assert_eq!(
            out,
            vec![
                Output::BecomeBackup,
                Output::StateChanged {
                    from: State::Initialize,
                    to: State::Backup,
                    priority: 100
                },
                Output::SetTimer(Timer::MasterDown(Time::ZERO + mdi)),
            ]
        );
    }

    /// RFC 9568 §6.1 (Skew_Time, Master_Down_Interval) against RFC 3768 §6.1: v3 scales the
    /// skew with the interval, v2 does not.
    #[test]
    fn rfc9568_6_1_and_rfc3768_6_1_timer_formulas() {
        let mut c = cfg(200);
        c.advert_interval = Centis(50);
        let i = started(c, Time::ZERO);
        // (256 - 200) * 50 cs / 256 = 10.9375 cs.
        assert_eq!(i.skew_time(), Duration::from_micros(109_375));
        assert_eq!(
            i.master_down_interval(),
            Duration::from_micros(1_500_000 + 109_375)
        );

        let mut c = Config::new(VrrpVersion::V2, v4(10), 200);
        c.advert_interval = Centis::from_secs(2);
        let i = started(c, Time::ZERO);
        // (256 - 200) / 256 s, whatever the interval.
        assert_eq!(i.skew_time(), Duration::from_micros(218_750));
        assert_eq!(
            i.master_down_interval(),
            Duration::from_micros(6_000_000 + 218_750)
        );
        // keepalived, measured in a namespace lab: advert_int 1, backup priority 100, takeover
        // 3.61 s after the last advert.
        let i = started(Config::new(VrrpVersion::V2, v4(10), 100), Time::ZERO);
        assert_eq!(i.master_down_interval(), Duration::from_micros(3_609_375));
    }

    /// keepalived `state MASTER`: one interval plus the minimum skew, then master unless a
    /// higher or equal priority was heard.
    #[test]
    fn keepalived_state_master_hint_takes_over_after_one_interval() {
        let mut c = cfg(100);
        c.start_state = StartState::Master;
        let mut i = started(c, Time::ZERO);
        // 1 s + 100 cs / 256.
        assert_eq!(
            i.timer(),
            Timer::MasterDown(Time::ZERO + Duration::from_micros(1_003_906))
        );
        // A lower priority does not hold it back.
        i.handle(advert(1, 50), t(500)).unwrap();
        let out = fire(&mut i);
        assert!(out.contains(&Output::BecomeMaster));

        // A higher priority does: the full Master_Down_Interval from then on.
        let mut c = cfg(100);
        c.start_state = StartState::Master;
        let mut i = started(c, Time::ZERO);
        i.handle(advert(1, 150), t(500)).unwrap();
        assert_eq!(
            i.timer(),
            Timer::MasterDown(t(500) + Duration::from_micros(3_609_375))
        );

        // An owner ignores the hint: master at once.
        let mut c = cfg(255);
        c.start_state = StartState::Master;
        assert_eq!(started(c, Time::ZERO).state(), State::Master);
    }

    // ---- §6.4.2 Backup ----

    /// RFC 9568 §6.4.2: "If the Master_Down_Timer fires, then: Send an ADVERTISEMENT ... Set the
    /// Adver_Timer to Advertisement_Interval ... Transition to the {Active} state".
    #[test]
    fn rfc9568_6_4_2_master_down_expiry_becomes_master() {
        let mut i = started(cfg(100), Time::ZERO);
        let timer = i.timer();
        let at = timer.deadline().unwrap();
        let out = i.handle(Input::TimerExpired(timer), at).unwrap();
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 100 },
                Output::BecomeMaster,
                Output::StateChanged {
                    from: State::Backup,
                    to: State::Master,
                    priority: 100
                },
                Output::SetTimer(Timer::Adver(at + SECOND)),
            ]
        );
    }

    /// RFC 9568 §6.4.2: a higher-priority advert resets Master_Down_Timer to
    /// Master_Down_Interval.
    #[test]
    fn rfc9568_6_4_2_backup_accepts_higher_priority() {
        let mut i = started(cfg(100), Time::ZERO);
        let out = i.handle(advert(1, 200), t(2000)).unwrap();
        let mdi = i.master_down_interval();
        assert_eq!(
            out,
            vec![Output::SetTimer(Timer::MasterDown(t(2000) + mdi))]
        );
        assert_eq!(i.last_master(), Some((v4(1), 200)));
        assert_eq!(i.state(), State::Backup);
    }

    /// RFC 9568 §6.4.2: "greater than or equal to the local Priority": an equal priority is
    /// accepted whatever the sender's address (the address tie-break is between masters).
    #[test]
    fn rfc9568_6_4_2_backup_accepts_equal_priority_from_any_address() {
        for sender in [1, 200] {
            let mut i = started(cfg(100), Time::ZERO);
            i.handle(advert(sender, 100), t(3000)).unwrap();
            assert_eq!(
                i.timer(),
                Timer::MasterDown(t(3000) + i.master_down_interval())
            );
        }
    }

    /// RFC 9568 §6.4.2: "else // preempt was true and priority was less than the local priority:
    /// Discard the ADVERTISEMENT"; the Master_Down timer then takes over.
    #[test]
    fn rfc9568_6_4_2_preempting_backup_discards_lower_priority() {
        let mut i = started(cfg(100), Time::ZERO);
        let armed = i.timer();
        let out = i.handle(advert(1, 50), t(1000)).unwrap();
        assert!(out.is_empty());
        assert_eq!(i.timer(), armed);
        assert!(fire(&mut i).contains(&Output::BecomeMaster));
    }

    /// RFC 9568 §6.4.2: "If Preempt_Mode is False ... Reset the Master_Down_Timer": nopreempt
    /// keeps a lower-priority master in place.
    #[test]
    fn rfc9568_6_4_2_nopreempt_backup_accepts_lower_priority() {
        let mut c = cfg(200);
        c.preempt = false;
        let mut i = started(c, Time::ZERO);
        for k in 1..20 {
            i.handle(advert(1, 50), t(1000 * k)).unwrap();
            assert_eq!(i.state(), State::Backup);
            assert_eq!(
                i.timer(),
                Timer::MasterDown(t(1000 * k) + i.master_down_interval())
            );
        }
    }

    /// RFC 9568 §6.4.2: "If the Priority in the ADVERTISEMENT is zero, then: Set the
    /// Master_Down_Timer to Skew_Time", with or without preemption.
    #[test]
    fn rfc9568_6_4_2_backup_priority_zero_sets_skew_time() {
        for preempt in [true, false] {
            let mut c = cfg(100);
            c.preempt = preempt;
            let mut i = started(c, Time::ZERO);
            i.handle(advert(1, 200), t(1000)).unwrap();
            let out = i.handle(advert(1, 0), t(1500)).unwrap();
            let at = t(1500) + Duration::from_micros(609_375);
            assert_eq!(out, vec![Output::SetTimer(Timer::MasterDown(at))]);
        }
    }

    /// RFC 9568 §6.4.2: "Set Master_Adver_Interval to Max Advertise Interval contained in the
    /// ADVERTISEMENT; Recompute the Skew_Time; Recompute the Master_Down_Interval".
    #[test]
    fn rfc9568_6_4_2_v3_backup_learns_master_adver_interval() {
        let mut i = started(cfg(100), Time::ZERO);
        let out = i
            .handle(
                Input::Advert(Advert {
                    sender: v4(1),
                    priority: 200,
                    max_advert_interval: Centis(50),
                }),
                t(1000),
            )
            .unwrap();
        assert_eq!(i.master_adver_interval(), Centis(50));
        // 3 * 0.5 s + 156 * 50 cs / 256.
        let mdi = Duration::from_micros(1_500_000 + 304_687);
        assert_eq!(i.master_down_interval(), mdi);
        assert_eq!(
            out,
            vec![Output::SetTimer(Timer::MasterDown(t(1000) + mdi))]
        );
    }

    /// RFC 3768 §6.4.2: v2 resets Master_Down_Timer with the configured interval; the receiver
    /// has discarded adverts whose Adver Int differs (RFC 3768 §7.1).
    #[test]
    fn rfc3768_6_4_2_v2_backup_keeps_configured_interval() {
        let mut i = started(Config::new(VrrpVersion::V2, v4(10), 100), Time::ZERO);
        i.handle(
            Input::Advert(Advert {
                sender: v4(1),
                priority: 200,
                max_advert_interval: Centis(300),
            }),
            t(1000),
        )
        .unwrap();
        assert_eq!(i.master_adver_interval(), Centis(100));
        assert_eq!(
            i.timer(),
            Timer::MasterDown(t(1000) + Duration::from_micros(3_609_375))
        );
    }

    /// RFC 9568 §6.4.2: "If a Shutdown event is received, then: Cancel the Master_Down_Timer;
    /// Transition to the {Initialize} state".
    #[test]
    fn rfc9568_6_4_2_backup_shutdown_cancels_master_down() {
        let mut i = started(cfg(100), Time::ZERO);
        let out = i.handle(Input::Shutdown, t(10)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::Stopped,
                Output::StateChanged {
                    from: State::Backup,
                    to: State::Initialize,
                    priority: 100
                },
                Output::SetTimer(Timer::None),
            ]
        );
        // Stopping again is a no-op, and the instance can start again.
        assert!(i.handle(Input::Shutdown, t(11)).unwrap().is_empty());
        i.handle(Input::Startup, t(12)).unwrap();
        assert_eq!(i.state(), State::Backup);
    }

    /// keepalived `preempt_delay` (vrrp_state_backup): lower-priority adverts are accepted until
    /// the delay that the first of them started has run out, then discarded; takeover follows one
    /// Master_Down_Interval after the last accepted one.
    #[test]
    fn keepalived_preempt_delay_holds_then_preempts() {
        let mut c = cfg(200);
        c.preempt_delay = Duration::from_secs(5);
        let mut i = started(c, Time::ZERO);
        let mdi = i.master_down_interval();
        // First lower advert at 1 s starts the delay (until 6 s); accepted until then.
        for k in 1..=5 {
            i.handle(advert(1, 100), t(1000 * k)).unwrap();
            assert_eq!(i.preempt_deadline(), Some(t(6000)));
            assert_eq!(i.timer(), Timer::MasterDown(t(1000 * k) + mdi));
        }
        // At 6 s the delay is over: discarded, the timer still counts from 5 s.
        i.handle(advert(1, 100), t(6000)).unwrap();
        assert_eq!(i.timer(), Timer::MasterDown(t(5000) + mdi));
        let out = fire(&mut i);
        assert!(out.contains(&Output::BecomeMaster));
        assert_eq!(i.preempt_deadline(), None);

        // A higher (or equal) priority advert stops the delay; the next lower one restarts it.
        let mut c = cfg(200);
        c.preempt_delay = Duration::from_secs(5);
        let mut i = started(c, Time::ZERO);
        i.handle(advert(1, 100), t(1000)).unwrap();
        i.handle(advert(2, 250), t(2000)).unwrap();
        assert_eq!(i.preempt_deadline(), None);
        i.handle(advert(1, 100), t(3000)).unwrap();
        assert_eq!(i.preempt_deadline(), Some(t(8000)));

        // It never delays a takeover from a dead master: no advert, Master_Down fires.
        let mut c = cfg(200);
        c.preempt_delay = Duration::from_secs(5);
        let mut i = started(c, Time::ZERO);
        assert!(fire(&mut i).contains(&Output::BecomeMaster));
    }

    // ---- §6.4.3 Master ----

    /// RFC 9568 §6.4.3: "If the Adver_Timer fires, then: Send an ADVERTISEMENT; Reset the
    /// Adver_Timer to Advertisement_Interval".
    #[test]
    fn rfc9568_6_4_3_adver_timer_sends_and_rearms() {
        let mut i = master(cfg(100), t(4000));
        let out = fire(&mut i);
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 100 },
                Output::SetTimer(Timer::Adver(t(6000))),
            ]
        );
    }

    /// A late wake-up does not stretch the advert interval: the next deadline is one
    /// interval after the one that fired; more than an interval late, one after now.
    #[test]
    fn late_adver_expiry_keeps_the_phase() {
        let mut i = master(cfg(100), t(4000));
        let armed = i.timer();
        let Timer::Adver(at) = armed else {
            panic!("{armed:?}")
        };
        let out = i
            .handle(Input::TimerExpired(armed), at + Duration::from_millis(3))
            .unwrap();
        assert_eq!(
            out.last(),
            Some(&Output::SetTimer(Timer::Adver(at + Duration::from_secs(1))))
        );
        let armed = i.timer();
        let late = at + Duration::from_millis(2500);
        let out = i.handle(Input::TimerExpired(armed), late).unwrap();
        assert_eq!(
            out.last(),
            Some(&Output::SetTimer(Timer::Adver(
                late + Duration::from_secs(1)
            )))
        );
    }

    /// RFC 9568 §6.4.3: "If the Priority in the ADVERTISEMENT is zero, then: Send an
    /// ADVERTISEMENT; Reset the Adver_Timer to Advertisement_Interval".
    #[test]
    fn rfc9568_6_4_3_master_answers_priority_zero() {
        let mut i = master(cfg(100), t(4000));
        let out = i.handle(advert(1, 0), t(4300)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 100 },
                Output::SetTimer(Timer::Adver(t(5300))),
            ]
        );
        assert_eq!(i.state(), State::Master);
    }

    /// RFC 9568 §6.4.3 (new in RFC 9568): a lower priority is discarded and answered at once
    /// with an advert; the master stays master and its Adver timer keeps its phase.
    #[test]
    fn rfc9568_6_4_3_master_asserts_against_lower_priority() {
        let mut i = master(cfg(100), t(4000));
        let out = i.handle(advert(1, 99), t(4300)).unwrap();
        let assert = vec![Output::SendAdvert { priority: 100 }, Output::Reannounce];
        assert_eq!(out, assert);
        assert_eq!(i.state(), State::Master);
        assert_eq!(i.timer(), Timer::Adver(t(5000)));
        // Equal priority from a lower address is "lower" too (one interval later: answers
        // come at most once an interval).
        let out = i.handle(advert(9, 100), t(5300)).unwrap();
        assert_eq!(out[0], Output::SendAdvert { priority: 100 });
        assert!(out.contains(&Output::Reannounce), "{out:?}");
    }

    /// What a master did with a flood: the times of every advert it sent (answers and
    /// periodic ones), and how many adverts of the flood it answered or rate-limited.
    #[derive(Debug, Default)]
    struct Flooded {
        sent: Vec<Time>,
        answered: usize,
        limited: usize,
    }

    /// Feeds `adverts` (time, input) to a master in time order, firing its timer whenever
    /// it falls due first: a virtual clock.
    fn flood(i: &mut Instance, adverts: impl Iterator<Item = (Time, Input)>) -> Flooded {
        let mut f = Flooded::default();
        for (at, input) in adverts {
            while let Some(due) = i.timer().deadline().filter(|d| *d <= at) {
                for o in i.handle(Input::TimerExpired(i.timer()), due).unwrap() {
                    if let Output::SendAdvert { .. } = o {
                        f.sent.push(due);
                    }
                }
            }
            for o in i.handle(input, at).unwrap() {
                match o {
                    Output::SendAdvert { .. } => {
                        f.sent.push(at);
                        f.answered += 1;
                    }
                    Output::AnswerRateLimited(_) => f.limited += 1,
                    _ => {}
                }
            }
        }
        f
    }

    /// Defect: 10k priority-0 adverts in one second drew 4,540 adverts from the master. The
    /// first is answered at once as RFC 9568 §6.4.3 says (advert, Adver timer restarted); the
    /// others within the interval are counted as rate-limited and change nothing, so the
    /// master sends at most one answer and one periodic advert per interval.
    #[test]
    fn rfc9568_6_4_3_priority_zero_flood_is_answered_at_a_bounded_rate() {
        // 1 s adverts: 10k releases in [4.3 s, 5.3 s), one every 100 us.
        let mut i = master(cfg(100), t(4000));
        let first = i.handle(advert(1, 0), t(4300)).unwrap();
        assert_eq!(
            first,
            vec![
                Output::SendAdvert { priority: 100 },
                Output::SetTimer(Timer::Adver(t(5300))),
            ],
            "the first release is answered at once"
        );
        let burst =
            (1..10_000u64).map(|k| (t(4300) + Duration::from_micros(100 * k), advert(1, 0)));
        let f = flood(&mut i, burst);
        assert_eq!((f.sent.len(), f.limited), (0, 9_999), "{f:?}");
        assert_eq!(i.state(), State::Master);
        assert_eq!(
            i.timer(),
            Timer::Adver(t(5300)),
            "the timer was not pushed back"
        );
        // One interval after the answer, a release is answered again.
        let out = i.handle(advert(1, 0), t(5300)).unwrap();
        assert_eq!(out[0], Output::SendAdvert { priority: 100 });

        // 10 ms adverts (the lab's timers): the same burst spans 100 intervals; the master
        // keeps advertising and sends at most two adverts per interval.
        let mut fast = cfg(100);
        fast.advert_interval = Centis(1);
        let mut i = master(fast, t(4000));
        // Before the master's first periodic advert (at 4.01 s).
        let start = t(4005);
        let burst = (0..10_000u64).map(|k| (start + Duration::from_micros(100 * k), advert(1, 0)));
        let f = flood(&mut i, burst);
        assert_eq!(
            f.sent.first(),
            Some(&start),
            "the first release is answered at once"
        );
        assert_eq!(f.answered + f.limited, 10_000);
        assert!(
            (100..=200).contains(&f.sent.len()) && f.answered <= 100,
            "{} adverts in the second of the burst, {} of them answers",
            f.sent.len(),
            f.answered
        );
        for w in 0..100u64 {
            let from = start + Duration::from_millis(10 * w);
            let to = from + Duration::from_millis(10);
            let n = f.sent.iter().filter(|at| **at >= from && **at < to).count();
            assert!(n <= 2, "{n} adverts in the interval from {from:?}");
        }
        assert_eq!(i.state(), State::Master);
    }

    /// The same bound for lower-priority adverts (RFC 9568's assertion against a second
    /// master): the first is answered at once, the rest of the interval only counted; each
    /// still asks the runtime to re-announce (it limits that itself), and the Adver timer
    /// keeps its phase.
    #[test]
    fn lower_priority_flood_is_answered_at_a_bounded_rate() {
        let mut i = master(cfg(100), t(4000));
        let first = i.handle(advert(1, 99), t(4300)).unwrap();
        assert_eq!(
            first,
            vec![Output::SendAdvert { priority: 100 }, Output::Reannounce]
        );
        let limited = i.handle(advert(1, 99), t(4301)).unwrap();
        assert_eq!(
            limited,
            vec![
                Output::AnswerRateLimited(Answer::LowerPriority),
                Output::Reannounce
            ]
        );
        let burst =
            (2..10_000u64).map(|k| (t(4300) + Duration::from_micros(100 * k), advert(1, 99)));
        let f = flood(&mut i, burst);
        // The periodic advert at 5 s falls inside the burst; nothing else is sent.
        assert_eq!(f.sent, vec![t(5000)]);
        assert_eq!((f.answered, f.limited), (0, 9_998));
        assert_eq!(i.state(), State::Master);
        // A release within the same interval is a different kind: answered at once.
        let out = i.handle(advert(1, 0), t(5200)).unwrap();
        assert_eq!(out[0], Output::SendAdvert { priority: 100 });
        assert_eq!(
            Answer::PriorityZero.rate_limited_name(),
            "priority_zero_rate_limited"
        );
    }

    /// RFC 9568 §6.4.3: a higher priority: "Cancel Adver_Timer; Set Master_Adver_Interval to
    /// Max Advertise Interval contained in the ADVERTISEMENT; Recompute ...; Set
    /// Master_Down_Timer to Master_Down_Interval; Transition to the {Backup} state".
    #[test]
    fn rfc9568_6_4_3_master_yields_to_higher_priority() {
        let mut i = master(cfg(100), t(4000));
        let out = i
            .handle(
                Input::Advert(Advert {
                    sender: v4(1),
                    priority: 101,
                    max_advert_interval: Centis(200),
                }),
                t(4500),
            )
            .unwrap();
        // 3 * 2 s + 156 * 200 cs / 256.
        let mdi = Duration::from_micros(6_000_000 + 1_218_750);
        assert_eq!(
            out,
            vec![
                Output::BecomeBackup,
                Output::StateChanged {
                    from: State::Master,
                    to: State::Backup,
                    priority: 100
                },
                Output::SetTimer(Timer::MasterDown(t(4500) + mdi)),
            ]
        );
    }

    /// RFC 9568 §6.4.3: equal priority, "the primary IPvX address of the sender is greater than
    /// the local primary IPvX address" (unsigned, network byte order): the sender wins.
    #[test]
    fn rfc9568_6_4_3_equal_priority_tie_break_on_address() {
        // We are 192.0.2.10.
        let mut i = master(cfg(100), t(4000));
        i.handle(advert(11, 100), t(4100)).unwrap();
        assert_eq!(i.state(), State::Backup);

        let mut i = master(cfg(100), t(4000));
        let out = i.handle(advert(9, 100), t(4100)).unwrap();
        assert_eq!(i.state(), State::Master);
        assert_eq!(
            out,
            vec![Output::SendAdvert { priority: 100 }, Output::Reannounce]
        );

        // IPv6: 2001:db8::a against ::b and ::9.
        let c = Config::new(VrrpVersion::V3, v6(0xa), 100);
        let mut i = master(c, t(4000));
        let adv = |last| {
            Input::Advert(Advert {
                sender: v6(last),
                priority: 100,
                max_advert_interval: Centis(100),
            })
        };
        i.handle(adv(0x9), t(4100)).unwrap();
        assert_eq!(i.state(), State::Master);
        i.handle(adv(0xb), t(4200)).unwrap();
        assert_eq!(i.state(), State::Backup);
    }

    /// RFC 9568 §6.4.3: "If a Shutdown event is received, then: Cancel the Adver_Timer; Send an
    /// ADVERTISEMENT with Priority = 0; Transition to the {Initialize} state".
    #[test]
    fn rfc9568_6_4_3_master_shutdown_sends_priority_zero() {
        let mut i = master(cfg(100), t(4000));
        let out = i.handle(Input::Shutdown, t(4200)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 0 },
                Output::Stopped,
                Output::StateChanged {
                    from: State::Master,
                    to: State::Initialize,
                    priority: 100
                },
                Output::SetTimer(Timer::None),
            ]
        );
    }

    /// RFC 3768 §6.4.3 (v2): a master yields with the configured interval.
    #[test]
    fn rfc3768_6_4_3_v2_master_yields_with_configured_interval() {
        let mut i = master(Config::new(VrrpVersion::V2, v4(10), 100), t(4000));
        i.handle(
            Input::Advert(Advert {
                sender: v4(1),
                priority: 200,
                max_advert_interval: Centis(500),
            }),
            t(4100),
        )
        .unwrap();
        assert_eq!(i.master_adver_interval(), Centis(100));
        assert_eq!(
            i.timer(),
            Timer::MasterDown(t(4100) + Duration::from_micros(3_609_375))
        );
    }

    // ---- keepalived Fault ----

    #[test]
    fn keepalived_fault_from_master_releases_and_recovers_to_backup() {
        let mut i = master(cfg(100), t(4000));
        let out = i.handle(Input::SetFault(true), t(5000)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::SendAdvert { priority: 0 },
                Output::BecomeFault,
                Output::StateChanged {
                    from: State::Master,
                    to: State::Fault,
                    priority: 100
                },
                Output::SetTimer(Timer::None),
            ]
        );
        // Silent in Fault: adverts and stale timers do nothing.
        assert!(i.handle(advert(1, 0), t(5100)).unwrap().is_empty());
        assert!(i.handle(advert(1, 50), t(5200)).unwrap().is_empty());
        assert!(i
            .handle(Input::TimerExpired(Timer::Adver(t(6000))), t(6000))
            .unwrap()
            .is_empty());
        let out = i.handle(Input::SetFault(false), t(7000)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::BecomeBackup,
                Output::StateChanged {
                    from: State::Fault,
                    to: State::Backup,
                    priority: 100
                },
                Output::SetTimer(Timer::MasterDown(t(7000) + i.master_down_interval())),
            ]
        );
    }

    #[test]
    fn keepalived_fault_from_backup_and_owner_recovery_to_master() {
        let mut i = started(cfg(100), Time::ZERO);
        let out = i.handle(Input::SetFault(true), t(10)).unwrap();
        assert_eq!(out[0], Output::BecomeFault);
        assert_eq!(*out.last().unwrap(), Output::SetTimer(Timer::None));

        let mut i = started(cfg(255), Time::ZERO);
        i.handle(Input::SetFault(true), t(10)).unwrap();
        let out = i.handle(Input::SetFault(false), t(20)).unwrap();
        assert_eq!(out[0], Output::SendAdvert { priority: 255 });
        assert_eq!(i.state(), State::Master);
    }

    #[test]
    fn keepalived_fault_before_startup_starts_in_fault() {
        let mut i = Instance::new(cfg(255)).unwrap();
        assert!(i.handle(Input::SetFault(true), t(0)).unwrap().is_empty());
        let out = i.handle(Input::Startup, t(1)).unwrap();
        assert_eq!(
            out,
            vec![
                Output::BecomeFault,
                Output::StateChanged {
                    from: State::Initialize,
                    to: State::Fault,
                    priority: 255
                },
            ]
        );
    }

    // ---- keepalived tracking ----

    /// keepalived `vrrp_set_effective_priority`: base + weights clamped to 1..=254; an owner is
    /// never changed.
    #[test]
    fn keepalived_tracking_clamps_and_spares_the_owner() {
        let mut i = started(cfg(100), Time::ZERO);
        let out = i.handle(Input::TrackWeight(-30), t(1)).unwrap();
        assert_eq!(out[0], Output::PriorityChanged { from: 100, to: 70 });
        i.handle(Input::TrackWeight(-500), t(2)).unwrap();
        assert_eq!(i.effective_priority(), 1);
        i.handle(Input::TrackWeight(500), t(3)).unwrap();
        assert_eq!(i.effective_priority(), 254);
        assert!(i.handle(Input::TrackWeight(400), t(4)).unwrap().is_empty());

        let mut i = started(cfg(255), Time::ZERO);
        assert!(i.handle(Input::TrackWeight(-100), t(1)).unwrap().is_empty());
        assert_eq!(i.effective_priority(), 255);
        assert_eq!(fire(&mut i)[0], Output::SendAdvert { priority: 255 });
    }

    /// keepalived: a backup's Master_Down deadline moves by the change in Skew_Time.
    #[test]
    fn keepalived_tracking_moves_master_down_by_skew_difference() {
        let mut i = started(cfg(100), Time::ZERO);
        i.handle(advert(1, 200), t(1000)).unwrap();
        let before = i.timer().deadline().unwrap();
        // 100 -> 164: skew from 156/256 s to 92/256 s, 250 ms earlier.
        let out = i.handle(Input::TrackWeight(64), t(1100)).unwrap();
        let after = before.saturating_sub(Duration::from_millis(250));
        assert_eq!(
            out,
            vec![
                Output::PriorityChanged { from: 100, to: 164 },
                Output::SetTimer(Timer::MasterDown(after)),
            ]
        );
    }

    /// A master whose tracked priority drops below a backup's: the master's next adverts carry
    /// the lower priority, the backup discards them and preempts one Master_Down_Interval after
    /// the last advert it accepted; the old master yields to its advert (RFC 9568 §6.4.2,
    /// §6.4.3).
    #[test]
    fn tracking_drop_lets_the_backup_preempt() {
        let mut a = master(Config::new(VrrpVersion::V3, v4(1), 150), t(4000));
        let mut b = started(Config::new(VrrpVersion::V3, v4(2), 120), Time::ZERO);
        let adv = |from: &Instance, out: &[Output]| -> Vec<Input> {
            out.iter()
                .filter_map(|o| match o {
                    Output::SendAdvert { priority } => Some(Input::Advert(Advert {
                        sender: from.config().primary_address,
                        priority: *priority,
                        max_advert_interval: from.config().advert_interval,
                    })),
                    _ => None,
                })
                .collect()
        };
        // One normal advert from A at 5 s.
        let out = fire(&mut a);
        for input in adv(&a, &out) {
            b.handle(input, t(5000)).unwrap();
        }
        let accepted_at = t(5000);
        // Tracking drops A to 100, below B: no early advert.
        assert_eq!(
            a.handle(Input::TrackWeight(-50), t(5500)).unwrap(),
            vec![Output::PriorityChanged { from: 150, to: 100 }]
        );
        // A's next adverts carry 100 and B discards them.
        for _ in 0..3 {
            let now = a.timer().deadline().unwrap();
            let out = fire(&mut a);
            assert_eq!(out[0], Output::SendAdvert { priority: 100 });
            for input in adv(&a, &out) {
                assert!(b.handle(input, now).unwrap().is_empty());
            }
        }
        // B's timer still counts from the last advert it accepted.
        assert_eq!(
            b.timer(),
            Timer::MasterDown(accepted_at + b.master_down_interval())
        );
        let now = b.timer().deadline().unwrap();
        let out = fire(&mut b);
        assert!(out.contains(&Output::BecomeMaster));
        for input in adv(&b, &out) {
            a.handle(input, now).unwrap();
        }
        assert_eq!(a.state(), State::Backup);
    }

    // ---- timers and errors ----

    /// A stale expiry (a timer that was replaced, or of the wrong kind) changes nothing; an early
    /// one re-arms the same timer.
    #[test]
    fn stale_and_early_timer_expiries() {
        let mut i = master(cfg(100), t(4000));
        let old = i.timer();
        fire(&mut i);
        let current = i.timer();
        assert_ne!(old, current);
        // The old Adver expiry arriving late.
        assert!(i
            .handle(Input::TimerExpired(old), t(5001))
            .unwrap()
            .is_empty());
        // A Master_Down expiry while master.
        assert!(i
            .handle(Input::TimerExpired(Timer::MasterDown(t(5000))), t(5002))
            .unwrap()
            .is_empty());
        assert!(i
            .handle(Input::TimerExpired(Timer::None), t(5003))
            .unwrap()
            .is_empty());
        assert_eq!(i.timer(), current);
        // Early: armed again, nothing sent.
        assert_eq!(
            i.handle(Input::TimerExpired(current), t(5500)).unwrap(),
            vec![Output::SetTimer(current)]
        );
        assert_eq!(i.state(), State::Master);

        // A backup's Master_Down reset by an advert: the old deadline is stale.
        let mut b = started(cfg(100), Time::ZERO);
        let old = b.timer();
        b.handle(advert(1, 200), t(1000)).unwrap();
        assert!(b
            .handle(Input::TimerExpired(old), old.deadline().unwrap())
            .unwrap()
            .is_empty());
        assert_eq!(b.state(), State::Backup);
    }

    #[test]
    fn impossible_inputs_are_typed_errors() {
        let mut i = started(cfg(100), Time::ZERO);
        assert_eq!(
            i.handle(Input::Startup, t(1)),
            Err(FsmError::InvalidInput {
                state: State::Backup,
                input: InputKind::Startup
            })
        );
        assert_eq!(
            i.handle(advert(10, 100), t(1)),
            Err(FsmError::OwnAdvert { address: v4(10) })
        );
        assert!(matches!(
            i.handle(
                Input::Advert(Advert {
                    sender: v6(1),
                    priority: 100,
                    max_advert_interval: Centis(100)
                }),
                t(1)
            ),
            Err(FsmError::AddressFamily { .. })
        ));
        assert!(matches!(
            i.handle(
                Input::Advert(Advert {
                    sender: v4(1),
                    priority: 100,
                    max_advert_interval: Centis(0)
                }),
                t(1)
            ),
            Err(FsmError::ZeroAdvertInterval { .. })
        ));
        i.handle(Input::SetFault(true), t(2)).unwrap();
        assert_eq!(
            i.handle(Input::SyncMaster, t(3)),
            Err(FsmError::InvalidInput {
                state: State::Fault,
                input: InputKind::SyncMaster
            })
        );
        // Errors change nothing.
        assert_eq!(i.state(), State::Fault);
    }

    #[test]
    fn config_validation() {
        let err = |f: fn(&mut Config)| {
            let mut c = cfg(100);
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(err(|c| c.priority = 0), ConfigError::PriorityZero);
        assert_eq!(
            err(|c| c.advert_interval = Centis(0)),
            ConfigError::V3IntervalOutOfRange { centis: 0 }
        );
        assert_eq!(
            err(|c| c.advert_interval = Centis(4096)),
            ConfigError::V3IntervalOutOfRange { centis: 4096 }
        );
        assert_eq!(
            err(|c| {
                c.version = VrrpVersion::V2;
                c.advert_interval = Centis(150);
            }),
            ConfigError::V2IntervalInvalid { centis: 150 }
        );
        assert_eq!(
            err(|c| {
                c.version = VrrpVersion::V2;
                c.primary_address = v6(1);
            }),
            ConfigError::V2NeedsIpv4 { address: v6(1) }
        );
        assert_eq!(
            err(|c| {
                c.priority = 255;
                c.preempt = false;
            }),
            ConfigError::NopreemptOnOwner
        );
        assert_eq!(
            err(|c| {
                c.start_state = StartState::Master;
                c.preempt = false;
            }),
            ConfigError::NopreemptWithStateMaster
        );
        assert_eq!(
            err(|c| {
                c.preempt_delay = SECOND;
                c.preempt = false;
            }),
            ConfigError::PreemptDelayWithNopreempt
        );
        assert_eq!(
            err(|c| {
                c.preempt_delay = SECOND;
                c.start_state = StartState::Master;
            }),
            ConfigError::PreemptDelayWithStateMaster
        );
        assert!(matches!(
            err(|c| c.preempt_delay = Duration::from_secs(1001)),
            ConfigError::PreemptDelayTooLong { .. }
        ));
        assert_eq!(
            SyncGroup::new(vec![cfg(100)]).unwrap_err(),
            ConfigError::SyncGroupTooSmall { members: 1 }
        );
        let mut v2 = Config::new(VrrpVersion::V2, v4(1), 100);
        v2.advert_interval = Centis::from_secs(255);
        assert!(v2.validate().is_ok());
    }

    // ---- keepalived sync groups ----

    fn group(priority: u8) -> SyncGroup {
        SyncGroup::new(vec![cfg(priority), cfg(priority)]).unwrap()
    }

    fn start_group(g: &mut SyncGroup, now: Time) {
        for m in 0..2 {
            g.handle(m, Input::Startup, now).unwrap();
        }
    }

    fn fire_member(g: &mut SyncGroup, m: usize) -> Vec<(usize, Output)> {
        let timer = g.member(m).unwrap().timer();
        g.handle(m, Input::TimerExpired(timer), timer.deadline().unwrap())
            .unwrap()
    }

    #[test]
    fn sync_group_master_only_when_every_member_wants_it() {
        let mut g = group(100);
        start_group(&mut g, Time::ZERO);
        let out = fire_member(&mut g, 0);
        assert_eq!(out, vec![(0, Output::SetTimer(Timer::None))]);
        assert!(g.member(0).unwrap().wants_master());
        assert_eq!(g.state(), Some(State::Backup));
        // The waiting member hears a master: it stops waiting.
        g.handle(0, advert(1, 200), t(4000)).unwrap();
        assert!(!g.member(0).unwrap().wants_master());
        fire_member(&mut g, 0);
        let out = fire_member(&mut g, 1);
        assert!(out.contains(&(0, Output::BecomeMaster)));
        assert!(out.contains(&(1, Output::BecomeMaster)));
        assert_eq!(g.state(), Some(State::Master));
    }

    #[test]
    fn sync_group_owner_waits_for_the_group_at_startup() {
        let mut g = SyncGroup::new(vec![cfg(255), cfg(100)]).unwrap();
        g.handle(0, Input::Startup, Time::ZERO).unwrap();
        assert!(g.member(0).unwrap().wants_master());
        g.handle(1, Input::Startup, Time::ZERO).unwrap();
        assert_eq!(g.state(), Some(State::Backup));
        let out = fire_member(&mut g, 1);
        assert!(out.contains(&(0, Output::SendAdvert { priority: 255 })));
        assert_eq!(g.state(), Some(State::Master));
    }

    #[test]
    fn sync_group_one_backup_takes_all_to_backup() {
        let mut g = group(100);
        start_group(&mut g, Time::ZERO);
        fire_member(&mut g, 0);
        fire_member(&mut g, 1);
        assert_eq!(g.state(), Some(State::Master));
        let out = g.handle(1, advert(1, 200), t(5000)).unwrap();
        assert!(out.contains(&(0, Output::BecomeBackup)));
        assert!(out.contains(&(1, Output::BecomeBackup)));
        assert_eq!(g.state(), Some(State::Backup));
    }

    #[test]
    fn sync_group_one_fault_faults_all_until_none_is_left() {
        let mut g = group(100);
        start_group(&mut g, Time::ZERO);
        fire_member(&mut g, 0);
        fire_member(&mut g, 1);
        let out = g.handle(0, Input::SetFault(true), t(5000)).unwrap();
        assert!(out.contains(&(0, Output::SendAdvert { priority: 0 })));
        assert!(out.contains(&(1, Output::SendAdvert { priority: 0 })));
        assert_eq!(g.state(), Some(State::Fault));
        g.handle(1, Input::SetFault(true), t(5100)).unwrap();
        g.handle(0, Input::SetFault(false), t(5200)).unwrap();
        assert_eq!(g.state(), Some(State::Fault));
        let out = g.handle(1, Input::SetFault(false), t(5300)).unwrap();
        assert!(out.contains(&(0, Output::BecomeBackup)));
        assert!(out.contains(&(1, Output::BecomeBackup)));
        assert_eq!(g.state(), Some(State::Backup));
    }

    #[test]
    fn sync_group_refuses_its_own_inputs_and_weights() {
        let mut g = group(100);
        assert_eq!(
            g.handle(0, Input::SyncMaster, t(0)),
            Err(FsmError::ReservedSyncInput {
                input: InputKind::SyncMaster
            })
        );
        assert_eq!(
            g.handle(1, Input::TrackWeight(-10), t(0)),
            Err(FsmError::WeightedTrackingInSyncGroup {
                member: 1,
                weight: -10
            })
        );
        assert_eq!(
            g.handle(2, Input::Startup, t(0)),
            Err(FsmError::UnknownMember {
                member: 2,
                members: 2
            })
        );
    }

    // ---- a simulated LAN with a virtual clock ----

    /// splitmix64: a fixed-seed generator, so every run sees the same schedules.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5851_F42D_4C95_7F2D)
        }

        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }

        /// `n` distinct priorities in `lo..=hi`.
        fn distinct(&mut self, n: usize, lo: u8, hi: u8) -> Vec<u8> {
            let mut out: Vec<u8> = Vec::new();
            while out.len() < n {
                let p = lo + self.below(u64::from(hi - lo) + 1) as u8;
                if !out.contains(&p) {
                    out.push(p);
                }
            }
            out
        }
    }

    enum Node {
        Single(Instance),
        Group(SyncGroup),
    }

    impl Node {
        fn handle(
            &mut self,
            member: usize,
            input: Input,
            now: Time,
        ) -> Result<Vec<(usize, Output)>, FsmError> {
            match self {
                Node::Single(i) => Ok(i
                    .handle(input, now)?
                    .into_iter()
                    .map(|o| (member, o))
                    .collect()),
                Node::Group(g) => g.handle(member, input, now),
            }
        }

        fn instances(&self) -> &[Instance] {
            match self {
                Node::Single(i) => std::slice::from_ref(i),
                Node::Group(g) => g.members(),
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Start(usize),
        Deliver {
            to: usize,
            member: usize,
            advert: Advert,
        },
        Fire {
            router: usize,
            member: usize,
            timer: Timer,
        },
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Transition {
        at: Time,
        router: usize,
        member: usize,
        from: State,
        to: State,
    }

    struct Router {
        node: Node,
        alive: bool,
        side: u8,
    }

    /// Routers on one LAN: member `m` of every router is one virtual router (one VRID). Every
    /// advert reaches every other router on the same side of a partition after 200-500 us,
    /// unless lost. A dead router neither sends nor receives. Every timer the FSMs ask for is
    /// delivered, superseded or not, so stale expiries are exercised all the time.
    struct Lan {
        now: Time,
        routers: Vec<Router>,
        events: BTreeMap<(Time, u64), Event>,
        seq: u64,
        rng: Rng,
        loss_percent: u64,
        transitions: Vec<Transition>,
        /// (when, router, member, priority)
        sent: Vec<(Time, usize, usize, u8)>,
        stale: usize,
    }

    impl Lan {
        fn new(nodes: Vec<Node>, seed: u64) -> Self {
            Lan {
                now: Time::ZERO,
                routers: nodes
                    .into_iter()
                    .map(|node| Router {
                        node,
                        alive: true,
                        side: 0,
                    })
                    .collect(),
                events: BTreeMap::new(),
                seq: 0,
                rng: Rng::new(seed ^ 0xA5A5),
                loss_percent: 0,
                transitions: Vec::new(),
                sent: Vec::new(),
                stale: 0,
            }
        }

        fn schedule(&mut self, at: Time, event: Event) {
            self.seq += 1;
            self.events.insert((at, self.seq), event);
        }

        fn start_at(&mut self, router: usize, at: Time) {
            self.schedule(at, Event::Start(router));
        }

        fn run_until(&mut self, until: Time) {
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 > until {
                    break;
                }
                let ((at, _), event) = entry.remove_entry();
                self.now = at;
                self.dispatch(event);
            }
            self.now = until;
        }

        fn dispatch(&mut self, event: Event) {
            match event {
                Event::Start(r) => {
                    for m in 0..self.routers[r].node.instances().len() {
                        self.input(r, m, Input::Startup);
                    }
                }
                Event::Deliver { to, member, advert } => {
                    self.input(to, member, Input::Advert(advert))
                }
                Event::Fire {
                    router,
                    member,
                    timer,
                } => {
                    if !self.routers[router].alive {
                        return;
                    }
                    let armed = self.instance(router, member).timer();
                    let out = self.raw_input(router, member, Input::TimerExpired(timer));
                    if armed != timer {
                        assert!(out.is_empty(), "stale expiry {timer:?} produced {out:?}");
                        self.stale += 1;
                    }
                    self.apply(router, out);
                }
            }
        }

        fn input(&mut self, router: usize, member: usize, input: Input) {
            if !self.routers[router].alive {
                return;
            }
            let out = self.raw_input(router, member, input);
            self.apply(router, out);
        }

        fn raw_input(
            &mut self,
            router: usize,
            member: usize,
            input: Input,
        ) -> Vec<(usize, Output)> {
            let now = self.now;
            self.routers[router]
                .node
                .handle(member, input, now)
                .unwrap_or_else(|e| panic!("router {router} member {member} at {now:?}: {e}"))
        }

        fn apply(&mut self, router: usize, outputs: Vec<(usize, Output)>) {
            for (member, output) in outputs {
                match output {
                    Output::SendAdvert { priority } => {
                        self.sent.push((self.now, router, member, priority));
                        let config = *self.instance(router, member).config();
                        let advert = Advert {
                            sender: config.primary_address,
                            priority,
                            max_advert_interval: config.advert_interval,
                        };
                        for to in 0..self.routers.len() {
                            if to == router || self.routers[to].side != self.routers[router].side {
                                continue;
                            }
                            if self.loss_percent > 0 && self.rng.percent(self.loss_percent) {
                                continue;
                            }
                            let latency = Duration::from_micros(200 + self.rng.below(300));
                            self.schedule(
                                self.now + latency,
                                Event::Deliver { to, member, advert },
                            );
                        }
                    }
                    Output::SetTimer(timer) => {
                        if let Some(at) = timer.deadline() {
                            self.schedule(
                                at,
                                Event::Fire {
                                    router,
                                    member,
                                    timer,
                                },
                            );
                        }
                    }
                    Output::StateChanged { from, to, .. } => self.transitions.push(Transition {
                        at: self.now,
                        router,
                        member,
                        from,
                        to,
                    }),
                    _ => {}
                }
            }
        }

        fn instance(&self, router: usize, member: usize) -> &Instance {
            &self.routers[router].node.instances()[member]
        }

        /// Live routers whose member `member` is master.
        fn masters(&self, member: usize) -> Vec<usize> {
            (0..self.routers.len())
                .filter(|&r| {
                    self.routers[r].alive && self.instance(r, member).state() == State::Master
                })
                .collect()
        }

        /// Stops without a word (SIGKILL, cable cut).
        fn kill(&mut self, router: usize) {
            self.routers[router].alive = false;
        }

        /// Graceful stop: every member gets Shutdown now.
        fn shutdown(&mut self, router: usize) {
            for m in 0..self.routers[router].node.instances().len() {
                self.input(router, m, Input::Shutdown);
            }
            self.routers[router].alive = false;
        }

        fn last_sent_by(&self, router: usize, member: usize) -> Time {
            self.sent
                .iter()
                .filter(|s| s.1 == router && s.2 == member)
                .map(|s| s.0)
                .max()
                .expect("router never sent")
        }

        fn transitions_after(&self, after: Time) -> impl Iterator<Item = &Transition> {
            self.transitions.iter().filter(move |tr| tr.at > after)
        }
    }

    const EPSILON: Duration = Duration::from_millis(1);

    fn pick_timing(rng: &mut Rng) -> (VrrpVersion, Centis) {
        match rng.below(4) {
            0 => (VrrpVersion::V2, Centis(100)),
            1 => (VrrpVersion::V3, Centis(100)),
            2 => (VrrpVersion::V3, Centis(10)),
            _ => (VrrpVersion::V3, Centis(37)),
        }
    }

    /// One v3 or v2 config per priority, all on IPv4 or (v3, by chance) all on IPv6.
    fn configs(
        seed: u64,
        version: VrrpVersion,
        interval: Centis,
        priorities: &[u8],
    ) -> Vec<Config> {
        let use_v6 = version == VrrpVersion::V3 && Rng::new(seed ^ 0x77).percent(50);
        priorities
            .iter()
            .enumerate()
            .map(|(r, &p)| {
                let addr = if use_v6 {
                    v6(r as u16 + 1)
                } else {
                    v4(r as u8 + 1)
                };
                let mut c = Config::new(version, addr, p);
                c.advert_interval = interval;
                c
            })
            .collect()
    }

    fn lan_of(configs: Vec<Config>, seed: u64) -> Lan {
        let nodes = configs
            .into_iter()
            .map(|c| Node::Single(Instance::new(c).unwrap()))
            .collect();
        Lan::new(nodes, seed)
    }

    fn single_lan(seed: u64, version: VrrpVersion, interval: Centis, priorities: &[u8]) -> Lan {
        lan_of(configs(seed, version, interval, priorities), seed)
    }

    /// Starts every router within `window` and runs until the LAN has settled.
    fn converge(lan: &mut Lan, rng: &mut Rng, window: Duration, interval: Centis) -> Time {
        let mut last = Time::ZERO;
        for r in 0..lan.routers.len() {
            let at = Time::from_micros(rng.below(window.as_micros() as u64 + 1));
            lan.start_at(r, at);
            last = last.max(at);
        }
        let settled = last + interval.as_duration() * 10 + SECOND;
        lan.run_until(settled);
        settled
    }

    fn max_index(priorities: &[u8], among: impl Iterator<Item = usize>) -> usize {
        among.max_by_key(|&r| priorities[r]).unwrap()
    }

    /// From any start order, exactly one master, of the highest priority, and it stays so.
    #[test]
    fn lan_one_master_after_convergence_from_any_start_order() {
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let n = 2 + rng.below(4) as usize;
            let (version, interval) = pick_timing(&mut rng);
            let use_v6 = version == VrrpVersion::V3 && rng.percent(50);
            let mut priorities = Vec::new();
            let mut nodes = Vec::new();
            for r in 0..n {
                // Ties sometimes, and now and then an address owner.
                let p = match rng.below(10) {
                    0..=2 => 100,
                    3 if r == 0 => 255,
                    _ => 1 + rng.below(254) as u8,
                };
                let addr = if use_v6 {
                    v6(r as u16 + 1)
                } else {
                    v4(r as u8 + 1)
                };
                let mut c = Config::new(version, addr, p);
                c.advert_interval = interval;
                if rng.percent(20) {
                    c.start_state = StartState::Master;
                }
                priorities.push(p);
                nodes.push(Node::Single(Instance::new(c).unwrap()));
            }
            let mut lan = Lan::new(nodes, seed);
            let settled = converge(&mut lan, &mut rng, Duration::from_secs(5), interval);
            let masters = lan.masters(0);
            assert_eq!(masters.len(), 1, "seed {seed}: masters {masters:?}");
            let top = *priorities.iter().max().unwrap();
            assert_eq!(priorities[masters[0]], top, "seed {seed}: {priorities:?}");
            for r in (0..n).filter(|&r| r != masters[0]) {
                assert_eq!(lan.instance(r, 0).state(), State::Backup, "seed {seed}");
            }
            lan.run_until(settled + interval.as_duration() * 5);
            assert_eq!(lan.transitions_after(settled).count(), 0, "seed {seed}");
        }
    }

    /// A master that stops silently is replaced by the highest-priority backup exactly one
    /// Master_Down_Interval after its last advert (plus delivery latency).
    #[test]
    fn lan_silent_master_death_takeover_within_master_down_interval() {
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let n = 2 + rng.below(4) as usize;
            let (version, interval) = pick_timing(&mut rng);
            let priorities = rng.distinct(n, 1, 254);
            let mut lan = single_lan(seed, version, interval, &priorities);
            let settled = converge(&mut lan, &mut rng, Duration::from_secs(2), interval);
            let old = lan.masters(0)[0];
            assert_eq!(old, max_index(&priorities, 0..n), "seed {seed}");

            let kill_at = settled + Duration::from_micros(rng.below(interval.as_micros()));
            lan.run_until(kill_at);
            lan.kill(old);
            let last = lan.last_sent_by(old, 0);
            let heir = max_index(&priorities, (0..n).filter(|&r| r != old));
            let mdi = lan.instance(heir, 0).master_down_interval();
            lan.run_until(kill_at + mdi + interval.as_duration() * 10);

            let first = lan
                .transitions_after(kill_at)
                .find(|tr| tr.to == State::Master)
                .copied()
                .unwrap_or_else(|| panic!("seed {seed}: no takeover"));
            assert_eq!(first.router, heir, "seed {seed}");
            assert!(
                first.at >= last + mdi,
                "seed {seed}: {first:?} before {:?}",
                last + mdi
            );
            assert!(
                first.at <= last + mdi + EPSILON,
                "seed {seed}: {first:?}, last {last:?}, mdi {mdi:?}"
            );
            assert_eq!(lan.masters(0), vec![heir], "seed {seed}");
        }
    }

    /// A master that shuts down sends priority 0; the best backup takes over after its
    /// Skew_Time (keepalived measured 0.63 s for priority 100, 1 s adverts).
    #[test]
    fn lan_graceful_shutdown_takeover_within_skew_time() {
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let n = 2 + rng.below(4) as usize;
            let (version, interval) = pick_timing(&mut rng);
            let priorities = rng.distinct(n, 1, 254);
            let mut lan = single_lan(seed, version, interval, &priorities);
            let settled = converge(&mut lan, &mut rng, Duration::from_secs(2), interval);
            let old = lan.masters(0)[0];

            let stop_at = settled + Duration::from_micros(rng.below(interval.as_micros()));
            lan.run_until(stop_at);
            lan.shutdown(old);
            assert_eq!(lan.sent.last().map(|s| s.3), Some(0), "seed {seed}");
            let heir = max_index(&priorities, (0..n).filter(|&r| r != old));
            let skew = lan.instance(heir, 0).skew_time();
            lan.run_until(stop_at + interval.as_duration() * 10);

            let first = lan
                .transitions_after(stop_at)
                .find(|tr| tr.to == State::Master)
                .copied()
                .unwrap_or_else(|| panic!("seed {seed}: no takeover"));
            assert_eq!(first.router, heir, "seed {seed}");
            assert!(first.at >= stop_at + skew, "seed {seed}");
            assert!(
                first.at <= stop_at + skew + EPSILON,
                "seed {seed}: {first:?} skew {skew:?}"
            );
            assert_eq!(lan.masters(0), vec![heir], "seed {seed}");
        }
    }

    /// A higher-priority router joining takes over with preempt (one Master_Down_Interval after
    /// it starts) and never with nopreempt.
    #[test]
    fn lan_joining_higher_priority_preempts_or_not() {
        for seed in 0..200 {
            for preempt in [true, false] {
                let mut rng = Rng::new(seed);
                let n = 2 + rng.below(4) as usize;
                let (version, interval) = pick_timing(&mut rng);
                let mut priorities = rng.distinct(n - 1, 1, 199);
                priorities.push(200 + rng.below(55) as u8);
                let newcomer = n - 1;
                let mut cs = configs(seed, version, interval, &priorities);
                cs[newcomer].preempt = preempt;
                let mut lan = lan_of(cs, seed);
                // Everyone but the newcomer first.
                let mut last = Time::ZERO;
                for r in 0..newcomer {
                    let at = Time::from_micros(rng.below(2_000_000));
                    lan.start_at(r, at);
                    last = last.max(at);
                }
                let join_at = last + interval.as_duration() * 10 + SECOND;
                lan.run_until(join_at);
                let old = lan.masters(0);
                assert_eq!(
                    old,
                    vec![max_index(&priorities, 0..newcomer)],
                    "seed {seed}"
                );
                lan.start_at(newcomer, join_at);
                lan.run_until(join_at + interval.as_duration() * 10 + SECOND);

                let joined = lan.instance(newcomer, 0);
                if preempt {
                    let mdi = joined.master_down_interval();
                    let took = lan
                        .transitions_after(join_at)
                        .find(|tr| tr.to == State::Master)
                        .copied()
                        .unwrap();
                    assert_eq!(took.router, newcomer, "seed {seed}");
                    assert!(took.at <= join_at + mdi + EPSILON, "seed {seed}");
                    assert_eq!(lan.masters(0), vec![newcomer], "seed {seed}");
                } else {
                    assert!(
                        lan.transitions_after(join_at)
                            .all(|tr| tr.to != State::Master),
                        "seed {seed}"
                    );
                    assert_eq!(lan.masters(0), old, "seed {seed}");
                    assert_eq!(joined.state(), State::Backup);
                }
            }
        }
    }

    /// keepalived's preempt_delay on the LAN: the newcomer takes over no earlier than the delay
    /// and no later than delay + Master_Down_Interval + one interval.
    #[test]
    fn lan_preempt_delay_postpones_takeover() {
        for seed in 0..50 {
            let mut rng = Rng::new(seed);
            let interval = Centis(100);
            let delay = Duration::from_secs(1 + rng.below(10));
            let mut cs = configs(seed, VrrpVersion::V3, interval, &[100, 150]);
            cs[1].preempt_delay = delay;
            let mut lan = lan_of(cs, seed);
            lan.start_at(0, Time::ZERO);
            let join_at = t(10_000) + Duration::from_micros(rng.below(1_000_000));
            lan.start_at(1, join_at);
            lan.run_until(join_at + delay + Duration::from_secs(10));
            let mdi = lan.instance(1, 0).master_down_interval();
            let took = lan
                .transitions
                .iter()
                .find(|tr| tr.router == 1 && tr.to == State::Master)
                .copied()
                .unwrap();
            assert!(took.at >= join_at + delay, "seed {seed}: {took:?}");
            assert!(
                took.at <= join_at + delay + mdi + interval.as_duration() + EPSILON,
                "seed {seed}: {took:?}"
            );
            assert_eq!(lan.masters(0), vec![1]);
        }
    }

    /// After a partition each side elects a master; after the heal one master is left within
    /// one advert interval (the lower master yields to the first advert it hears, the higher
    /// answers a lower advert at once).
    #[test]
    fn lan_partition_then_heal() {
        for seed in 0..300 {
            let mut rng = Rng::new(seed);
            let n = 2 + rng.below(4) as usize;
            let (version, interval) = pick_timing(&mut rng);
            let priorities = rng.distinct(n, 1, 254);
            let mut lan = single_lan(seed, version, interval, &priorities);
            let settled = converge(&mut lan, &mut rng, Duration::from_secs(2), interval);

            // Two non-empty sides.
            let mut sides: Vec<u8> = (0..n).map(|_| rng.below(2) as u8).collect();
            sides[0] = 0;
            sides[1] = 1;
            for (r, side) in sides.iter().enumerate() {
                lan.routers[r].side = *side;
            }
            let split_until = settled + interval.as_duration() * 10 + SECOND;
            lan.run_until(split_until);
            for side in [0, 1] {
                let members = (0..n).filter(|&r| sides[r] == side);
                let best = max_index(&priorities, members.clone());
                let masters: Vec<usize> = lan
                    .masters(0)
                    .into_iter()
                    .filter(|&r| sides[r] == side)
                    .collect();
                assert_eq!(masters, vec![best], "seed {seed} side {side}");
            }

            let heal_at = split_until + Duration::from_micros(rng.below(interval.as_micros()));
            lan.run_until(heal_at);
            for r in 0..n {
                lan.routers[r].side = 0;
            }
            lan.run_until(heal_at + interval.as_duration() + 2 * EPSILON);
            let best = max_index(&priorities, 0..n);
            assert_eq!(lan.masters(0), vec![best], "seed {seed}");
            let calm = lan.now;
            lan.run_until(calm + interval.as_duration() * 10);
            assert_eq!(lan.masters(0), vec![best], "seed {seed}");
        }
    }

    /// Under heavy loss there may be several masters for a while; once the loss stops, the best
    /// router is the only master within Master_Down_Interval plus one interval.
    #[test]
    fn lan_loss_then_recovery() {
        for seed in 0..100 {
            let mut rng = Rng::new(seed);
            let n = 2 + rng.below(4) as usize;
            let (version, interval) = pick_timing(&mut rng);
            let priorities = rng.distinct(n, 1, 254);
            let mut lan = single_lan(seed, version, interval, &priorities);
            lan.loss_percent = 40;
            for r in 0..n {
                let at = Time::from_micros(rng.below(1_000_000));
                lan.start_at(r, at);
            }
            let clean_at = Time::ZERO + interval.as_duration() * 60 + SECOND;
            lan.run_until(clean_at);
            lan.loss_percent = 0;
            let worst_mdi = (0..n)
                .map(|r| lan.instance(r, 0).config().advert_interval.as_duration() * 4)
                .max()
                .unwrap();
            lan.run_until(clean_at + worst_mdi + interval.as_duration() + EPSILON);
            assert_eq!(
                lan.masters(0),
                vec![max_index(&priorities, 0..n)],
                "seed {seed}"
            );
        }
    }

    /// Two routers, each a sync group of two instances (two VRIDs). Router X (priority 200)
    /// should hold both, router Y (100) back both up. A fault on one of X's members moves both
    /// VRIDs to Y at the same instant; when it clears X preempts both back together; when X dies
    /// Y takes both together.
    #[test]
    fn lan_sync_group_members_switch_together() {
        for seed in 0..100 {
            let mut rng = Rng::new(seed);
            let (version, interval) = pick_timing(&mut rng);
            let mk = |addr, priority| {
                let mut c = Config::new(version, addr, priority);
                c.advert_interval = interval;
                c
            };
            let (x, y) = (0, 1);
            let nodes = vec![
                Node::Group(SyncGroup::new(vec![mk(v4(1), 200), mk(v4(1), 200)]).unwrap()),
                Node::Group(SyncGroup::new(vec![mk(v4(2), 100), mk(v4(2), 100)]).unwrap()),
            ];
            let mut lan = Lan::new(nodes, seed);
            let settled = converge(&mut lan, &mut rng, Duration::from_secs(3), interval);
            for m in 0..2 {
                assert_eq!(lan.masters(m), vec![x], "seed {seed} member {m}");
            }

            let together = |lan: &Lan, router: usize, after: Time, to: State| -> Time {
                let times: Vec<Time> = (0..2)
                    .map(|m| {
                        lan.transitions_after(after)
                            .find(|tr| tr.router == router && tr.member == m && tr.to == to)
                            .map(|tr| tr.at)
                            .unwrap_or_else(|| panic!("seed {seed}: member {m} never {to}"))
                    })
                    .collect();
                assert_eq!(times[0], times[1], "seed {seed}: members of {router} apart");
                times[0]
            };

            // A fault on X's member 1: both of X's go to Fault and Y takes both after its skew.
            let fault_at = settled + Duration::from_micros(rng.below(interval.as_micros()));
            lan.run_until(fault_at);
            lan.input(x, 1, Input::SetFault(true));
            let skew = lan.instance(y, 0).skew_time();
            lan.run_until(fault_at + interval.as_duration() * 5);
            assert_eq!(
                together(&lan, x, fault_at.saturating_sub(MS), State::Fault),
                fault_at
            );
            let took = together(&lan, y, fault_at, State::Master);
            assert!(took <= fault_at + skew + EPSILON, "seed {seed}");

            // The fault clears: X waits a Master_Down_Interval, then preempts both together.
            let clear_at = lan.now;
            lan.input(x, 1, Input::SetFault(false));
            let mdi = lan.instance(x, 0).master_down_interval();
            lan.run_until(clear_at + interval.as_duration() * 10 + SECOND);
            let back = together(&lan, x, clear_at, State::Master);
            assert!(back <= clear_at + mdi + EPSILON, "seed {seed}");
            let yielded = together(&lan, y, clear_at, State::Backup);
            assert!(yielded <= back + EPSILON, "seed {seed}");

            // X dies: Y takes both together one Master_Down_Interval after X's last adverts.
            let kill_at = lan.now;
            lan.kill(x);
            let last = lan.last_sent_by(x, 0).max(lan.last_sent_by(x, 1));
            let mdi = lan.instance(y, 0).master_down_interval();
            lan.run_until(kill_at + interval.as_duration() * 10 + SECOND);
            let took = together(&lan, y, kill_at, State::Master);
            assert!(took <= last + mdi + EPSILON, "seed {seed}");
            for m in 0..2 {
                assert_eq!(lan.masters(m), vec![y], "seed {seed}");
            }
        }
    }

    #[test]
    fn lan_exercises_stale_expiries() {
        let mut rng = Rng::new(7);
        let mut lan = single_lan(7, VrrpVersion::V3, Centis(100), &[100, 150, 200]);
        converge(&mut lan, &mut rng, Duration::from_secs(2), Centis(100));
        // Every accepted advert replaced a Master_Down timer whose expiry is still delivered.
        assert!(lan.stale > 10, "only {} stale expiries", lan.stale);
    }
}
