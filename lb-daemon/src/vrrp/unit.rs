//! The policy of a unit (a lone instance, or a sync group), without I/O: the state machine's
//! outputs and the current time in, an ordered list of [`Effect`]s out. It decides what the
//! I/O around it ([`super::runtime`]) only carries out: in which order a new master tells the
//! dataplane, adds its addresses, waits for the dataplane's acknowledgement and announces the
//! addresses; what waits until the announcement is out (logs, notify events); how often a
//! master announces its addresses again after lower-priority adverts; which lines are logged
//! at a limited rate; when the stats are published.
//!
//! Time is always passed in ([`Time`], the state machine's clock): nothing here reads a
//! clock, so every rule is a unit test with a virtual clock. A wait (for the dataplane's
//! acknowledgement) is an effect, [`Effect::AwaitAck`], whose outcome comes back as an input,
//! [`Unit::role_applied`]; the effects after it are held until then.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use super::{
    check::Discard,
    fsm::{self, Input, Output, State, SyncGroup, Time, Timer},
    notify::{self, NotifyState},
};
use crate::log_limit::LogLimit;

/// How long a new master waits for the dataplane before it announces its VIPs anyway:
/// clients moved by a gratuitous ARP before the services are active would meet the stack,
/// which refuses them; but the VRRP thread never waits long on the rest of the daemon.
pub const ROLE_ACK_WAIT: Duration = Duration::from_millis(5);

/// The least time between two re-announcements after lower-priority adverts.
const REANNOUNCE_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A line about one discard reason is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a counter may wait to be published. Publishing takes the stats lock, rebuilds
/// each member's entry (names, the discard map) and reads its socket's drop count (a system
/// call); done for every datagram, as it was, that was a large part of the thread's work
/// under a flood of adverts.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// When stats whose publication a reader's lock prevented are tried again.
const PUBLISH_RETRY: Duration = Duration::from_millis(1);

/// What the I/O must do, in this order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send an advert with this priority (to the group, or to each unicast peer).
    SendAdvert { member: usize, priority: u8 },
    /// Tell the daemon the member's role (`Event::Role`). The acknowledgement of a master
    /// role is what a later [`Effect::AwaitAck`] for the member waits for.
    Role { member: usize, master: bool },
    /// Add the member's virtual addresses (the ones actually added are logged by a later
    /// [`Log::VipsAdded`]).
    AddVips { member: usize },
    /// Remove the member's virtual addresses.
    RemoveVips { member: usize },
    /// Stop the member's announcement schedule (the task running its later bursts).
    StopGarp { member: usize },
    /// Start the member's announcement schedule (gratuitous ARP / unsolicited NA).
    Garp { member: usize, start: GarpStart },
    /// Wait for the dataplane to acknowledge the member's master role, at most `within`,
    /// then hand the outcome to [`Unit::role_applied`]: it returns the effects that follow.
    /// Always the last effect of a list.
    AwaitAck { member: usize, within: Duration },
    /// A state change for notify hooks and the event stream.
    Notify(notify::Event),
    /// A log line.
    Log(Log),
}

/// When an announcement schedule starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GarpStart {
    /// Becoming master: its first burst now, before anything else: until it is out,
    /// clients keep sending to the old master's MAC.
    Now,
    /// Still master after a lower-priority advert: keepalived's `garp_lower_prio_repeat` and
    /// `garp_lower_prio_delay`, now or after this pause.
    LowerPrio(Option<Duration>),
}

/// The log lines whose place in the order the unit decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Log {
    /// The virtual addresses the last [`Effect::AddVips`] of the member added, one line each.
    VipsAdded {
        member: usize,
    },
    StateChange {
        member: usize,
        from: State,
        to: State,
        priority: u8,
    },
    PriorityChanged {
        member: usize,
        from: u8,
        to: u8,
    },
    /// A new master announced its addresses; `services_active`: the dataplane acknowledged
    /// its role in time.
    Announced {
        member: usize,
        services_active: bool,
    },
    /// A lower-priority advert was heard: the addresses are announced again, now (`None`)
    /// or after a pause.
    Reannounce {
        member: usize,
        after: Option<Duration>,
    },
    /// An advert not used as is (rate-limited per reason: see [`DiscardCounters`]).
    NotUsed {
        member: usize,
        reason: &'static str,
        detail: String,
        total: u64,
    },
    /// The state machine refused an input.
    Refused(String),
}

/// What a master does about a lower-priority advert, given when it last announced (or will
/// announce) its addresses again for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reannounce {
    /// Announce now.
    Now,
    /// Announce once the pause since the last one is over.
    After(Duration),
    /// An announcement is already due later: nothing more.
    Pending,
}

pub(crate) fn reannounce_plan(last: Option<Time>, now: Time) -> Reannounce {
    match last {
        Some(at) if at > now => Reannounce::Pending,
        Some(at) => {
            let since = now.as_duration().saturating_sub(at.as_duration());
            if since < REANNOUNCE_MIN_INTERVAL {
                Reannounce::After(REANNOUNCE_MIN_INTERVAL - since)
            } else {
                Reannounce::Now
            }
        }
        None => Reannounce::Now,
    }
}

/// Whether to publish now: at the first chance (`published`: when it was last done), when a
/// headline changed, or when counters changed (`dirty`) and [`PUBLISH_EVERY`] has passed.
/// Otherwise, when to come back for the counters (`None`: nothing waits).
pub(crate) fn publish_plan(
    published: Option<Time>,
    headline_changed: bool,
    dirty: bool,
    now: Time,
) -> Result<(), Option<Time>> {
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

/// What [`Unit::publish_due`] says about the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Publish them now, then call [`Unit::published`] (or [`Unit::publish_blocked`]).
    Now,
    /// Counters wait: come back at this time.
    At(Time),
    /// Nothing to publish.
    Idle,
}

/// Discards counted by reason, each logged at most once every [`LOG_EVERY`].
#[derive(Debug, Default)]
pub struct DiscardCounters {
    pub counts: HashMap<&'static str, u64>,
    last_log: HashMap<&'static str, LogLimit<Time>>,
}

/// A line [`DiscardCounters`] wants logged: reason, detail, total.
type LogLine = (&'static str, String, u64);

impl DiscardCounters {
    fn count(&mut self, d: &Discard, now: Time) -> Option<LogLine> {
        let name = d.name();
        *self.counts.entry(name).or_default() += 1;
        if d.is_expected() {
            return None;
        }
        // The detail is formatted only for the line that is logged: under a flood, formatting
        // it for every discard was a visible share of the thread's time.
        self.log(name, now, || format!("{d:?}"))
    }

    fn count_named(&mut self, name: &'static str, detail: &str, now: Time) -> Option<LogLine> {
        *self.counts.entry(name).or_default() += 1;
        self.log(name, now, || detail.to_string())
    }

    fn log(
        &mut self,
        name: &'static str,
        now: Time,
        detail: impl FnOnce() -> String,
    ) -> Option<LogLine> {
        self.log_due(name, now).then(|| {
            let total = self.counts.get(name).copied().unwrap_or(0);
            (name, detail(), total)
        })
    }

    /// Whether a line about `name` may be logged now (then it must be).
    pub fn log_due(&mut self, name: &'static str, now: Time) -> bool {
        self.last_log
            .entry(name)
            .or_insert_with(|| LogLimit::new(LOG_EVERY))
            .allow_at(now)
            .is_some()
    }
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

/// One instance of a unit, as the policy needs it.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub name: String,
    pub fsm: fsm::Config,
    /// The daemon runs a dataplane: a new master waits for its acknowledgement (at most
    /// [`ROLE_ACK_WAIT`]) before announcing the VIPs. Without one there is nothing to wait
    /// for, and the role only informs (status): it waits with the logs.
    pub dataplane: bool,
}

struct Member {
    name: String,
    dataplane: bool,
    timer: Timer,
    holds_vips: bool,
    /// When the VIPs were last announced again after a lower-priority advert (or will be).
    reannounced: Option<Time>,
    transitions: u64,
    discards: DiscardCounters,
}

/// What published stats show of a member, and readers wait on (a test polling for MASTER, a
/// script for a transition): published as soon as it changes. Counters follow at most
/// [`PUBLISH_EVERY`] later.
pub type Headline = (State, u8, Option<IpAddr>, u64);

/// The effects of a step held until the new masters' announcements are out.
#[derive(Default)]
struct Held {
    /// Members that became master in this step, in order: each waits for its
    /// acknowledgement (with a dataplane), then announces its addresses.
    announce: VecDeque<usize>,
    /// What only informs (logs, notify events, a role without a dataplane): each is a
    /// wake-up of another thread, so it follows the announcements.
    later: Vec<Effect>,
}

/// A unit's state machine and the policy around it.
pub struct Unit {
    machine: Machine,
    members: Vec<Member>,
    group: Option<String>,
    last_group_state: Option<State>,
    /// Effects held until an acknowledgement (or its timeout) comes back.
    held: Option<Held>,
    /// When the stats were last published, and each member's [`Headline`] then.
    published: Option<(Time, Vec<Headline>)>,
    /// Something a counter shows may have changed since the last publication.
    dirty: bool,
}

impl Unit {
    /// A unit of `members`: a sync group if `group` is named and there are several.
    pub fn new(
        members: Vec<MemberConfig>,
        group: Option<String>,
    ) -> Result<Self, fsm::ConfigError> {
        let configs: Vec<fsm::Config> = members.iter().map(|m| m.fsm).collect();
        let machine = if group.is_some() && configs.len() > 1 {
            Machine::Group(SyncGroup::new(configs)?)
        } else {
            Machine::Single(fsm::Instance::new(configs[0])?)
        };
        Ok(Unit {
            machine,
            members: members
                .into_iter()
                .map(|m| Member {
                    name: m.name,
                    dataplane: m.dataplane,
                    timer: Timer::None,
                    holds_vips: false,
                    reannounced: None,
                    transitions: 0,
                    discards: DiscardCounters::default(),
                })
                .collect(),
            group,
            last_group_state: None,
            held: None,
            published: None,
            dirty: true,
        })
    }

    /// The index of the member named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// Member `member`'s state machine.
    pub fn instance(&self, member: usize) -> Option<&fsm::Instance> {
        self.machine.instance(member)
    }

    /// State changes of member `member` so far.
    pub fn transitions(&self, member: usize) -> u64 {
        self.members[member].transitions
    }

    /// Member `member`'s discards by reason.
    pub fn discard_counts(&self, member: usize) -> &HashMap<&'static str, u64> {
        &self.members[member].discards.counts
    }

    /// The earliest armed timer of the unit.
    pub fn deadline(&self) -> Option<Time> {
        self.members.iter().filter_map(|m| m.timer.deadline()).min()
    }

    /// Member `member`'s timer, if it is due at `now` (to be handed back as
    /// [`Input::TimerExpired`]).
    pub fn expired(&self, member: usize, now: Time) -> Option<Timer> {
        let timer = self.members[member].timer;
        timer.deadline().is_some_and(|d| d <= now).then_some(timer)
    }

    /// Gives `input` to member `member`'s state machine at `now`; returns what to do.
    pub fn handle(&mut self, member: usize, input: Input, now: Time) -> Vec<Effect> {
        self.handle_at(member, input, now, now)
    }

    /// As [`handle`](Self::handle), for an input that happened at `at` (an advert, at its
    /// arrival) but is handled at `now`.
    pub fn handle_at(&mut self, member: usize, input: Input, at: Time, now: Time) -> Vec<Effect> {
        debug_assert!(
            self.held.is_none(),
            "an input while waiting for an acknowledgement"
        );
        let out = self.machine.handle(member, input, at);
        self.apply(out, now)
    }

    /// A datagram was read (whether the checks keep it or not): counters may change.
    pub fn received(&mut self) {
        self.dirty = true;
    }

    /// A datagram of member `member` the checks discarded.
    pub fn discarded(&mut self, member: usize, d: &Discard, now: Time) -> Option<Effect> {
        let line = self.members[member].discards.count(d, now)?;
        Some(not_used(member, line))
    }

    /// An advert kept but worth a (rate-limited) line: RFC 9568 §7.1's "addresses differ".
    pub fn noted(&mut self, member: usize, name: &'static str, now: Time) -> Option<Effect> {
        let line = self.members[member]
            .discards
            .count_named(name, "the advert was kept", now)?;
        Some(not_used(member, line))
    }

    /// Whether a line about `name` (not a discard: socket drops) may be logged now for member
    /// `member`, at the rate of its discards (then it must be).
    pub fn log_due(&mut self, member: usize, name: &'static str, now: Time) -> bool {
        self.members[member].discards.log_due(name, now)
    }

    /// The state machine's outputs (`(member, output)`, in order) at `now`: what to do, in
    /// order. Ends with [`Effect::AwaitAck`] if a new master waits for the dataplane.
    pub fn apply(
        &mut self,
        outputs: Result<Vec<(usize, Output)>, fsm::FsmError>,
        now: Time,
    ) -> Vec<Effect> {
        self.dirty = true;
        let outputs = match outputs {
            Ok(o) => o,
            Err(e) => return vec![Effect::Log(Log::Refused(e.to_string()))],
        };
        let mut fx = Vec::new();
        let mut held = Held::default();
        for (i, out) in outputs {
            let m = &mut self.members[i];
            match out {
                Output::SendAdvert { priority } => fx.push(Effect::SendAdvert {
                    member: i,
                    priority,
                }),
                Output::BecomeMaster => {
                    m.holds_vips = true;
                    take_vips(i, m.dataplane, &mut fx, &mut held);
                }
                Output::Resumed => {
                    // A restarted master: its addresses are in place and the neighbours
                    // point here, so only the services are told (they were left serving).
                    let role = Effect::Role {
                        member: i,
                        master: true,
                    };
                    if m.dataplane {
                        fx.push(role);
                    } else {
                        held.later.push(role);
                    }
                    m.holds_vips = true;
                }
                Output::BecomeBackup | Output::BecomeFault | Output::Stopped => {
                    let stopped = matches!(out, Output::Stopped);
                    if stopped {
                        let stop = notify::Event::instance(m.name.clone(), NotifyState::Stop, 0);
                        fx.push(Effect::Notify(stop));
                    }
                    fx.push(Effect::StopGarp { member: i });
                    if m.holds_vips || stopped {
                        fx.push(Effect::RemoveVips { member: i });
                        m.holds_vips = false;
                    }
                    // Services stay active until the addresses are gone: a client that still
                    // sends here is better served by a real server than refused by the stack.
                    fx.push(Effect::Role {
                        member: i,
                        master: false,
                    });
                }
                Output::StateChanged { from, to, priority } => {
                    m.transitions += 1;
                    held.later.push(Effect::Log(Log::StateChange {
                        member: i,
                        from,
                        to,
                        priority,
                    }));
                    if let Some(state) = NotifyState::from_fsm(to) {
                        let ev = notify::Event::instance(m.name.clone(), state, priority);
                        held.later.push(Effect::Notify(ev));
                    }
                }
                Output::PriorityChanged { from, to } => {
                    held.later.push(Effect::Log(Log::PriorityChanged {
                        member: i,
                        from,
                        to,
                    }));
                }
                Output::Reannounce if m.holds_vips => {
                    // At most once a second: a peer (or anyone) flooding lower-priority
                    // adverts must not turn into a flood of gratuitous ARPs. But one heard
                    // within the second is not ignored: the peer that sent it may have been
                    // master for a moment and moved clients to itself with its own
                    // gratuitous ARP; they come back at the end of the second.
                    let (start, after) = match reannounce_plan(m.reannounced, now) {
                        Reannounce::Pending => continue,
                        Reannounce::Now => {
                            m.reannounced = Some(now);
                            (GarpStart::LowerPrio(None), None)
                        }
                        Reannounce::After(delay) => {
                            m.reannounced = Some(now + delay);
                            (GarpStart::LowerPrio(Some(delay)), Some(delay))
                        }
                    };
                    fx.push(Effect::Log(Log::Reannounce { member: i, after }));
                    fx.push(Effect::StopGarp { member: i });
                    fx.push(Effect::Garp { member: i, start });
                }
                Output::Reannounce => {}
                Output::AnswerRateLimited(kind) => {
                    let line = m.discards.count_named(
                        kind.rate_limited_name(),
                        "answered one of its kind less than an advert interval ago",
                        now,
                    );
                    fx.extend(line.map(|l| not_used(i, l)));
                }
                Output::SetTimer(t) => m.timer = t,
            }
        }
        self.held = Some(held);
        self.proceed(fx)
    }

    /// Whether member `member` holds its virtual addresses (a master, or resumed).
    pub fn holds_vips(&self, member: usize) -> bool {
        self.members[member].holds_vips
    }

    /// A reload changed the virtual addresses of member `member`: a master tells the
    /// dataplane the new set, adds the new addresses (the shell removed the ones that went)
    /// and, once the dataplane serves them, announces them, in the order a new master does;
    /// no state changes, no transition. A member without its addresses has nothing to do.
    pub fn vips_changed(&mut self, member: usize) -> Vec<Effect> {
        debug_assert!(
            self.held.is_none(),
            "an input while waiting for an acknowledgement"
        );
        let m = &self.members[member];
        if !m.holds_vips {
            return Vec::new();
        }
        let mut fx = Vec::new();
        let mut held = Held::default();
        take_vips(member, m.dataplane, &mut fx, &mut held);
        self.held = Some(held);
        self.dirty = true;
        self.proceed(fx)
    }

    /// The dataplane acknowledged member `member`'s master role (`served`), or
    /// [`Effect::AwaitAck`]'s wait ran out (`!served`): the effects that follow.
    pub fn role_applied(&mut self, member: usize, served: bool) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(held) = &mut self.held {
            if held.announce.front() == Some(&member) {
                held.announce.pop_front();
                self.announce(member, served, &mut fx);
            }
        }
        self.proceed(fx)
    }

    /// Announces the held masters' addresses up to the next acknowledgement to wait for, or
    /// all of them and then what was held.
    fn proceed(&mut self, mut fx: Vec<Effect>) -> Vec<Effect> {
        loop {
            let Some(held) = &mut self.held else {
                return fx;
            };
            match held.announce.front().copied() {
                Some(i) if self.members[i].dataplane => {
                    fx.push(Effect::AwaitAck {
                        member: i,
                        within: ROLE_ACK_WAIT,
                    });
                    return fx;
                }
                Some(i) => {
                    held.announce.pop_front();
                    self.announce(i, true, &mut fx);
                }
                None => {
                    fx.append(&mut held.later);
                    self.held = None;
                    self.group_changes(&mut fx);
                    return fx;
                }
            }
        }
    }

    /// The first burst of a new master, if it still is one: a later output of its step may
    /// have ended it.
    fn announce(&mut self, member: usize, served: bool, fx: &mut Vec<Effect>) {
        if self.members[member].holds_vips {
            fx.push(Effect::Garp {
                member,
                start: GarpStart::Now,
            });
            fx.push(Effect::Log(Log::Announced {
                member,
                services_active: served,
            }));
        }
    }

    /// A sync group changes state as a whole: its hooks are told once.
    fn group_changes(&mut self, fx: &mut Vec<Effect>) {
        if let (Some(group), Some(state)) = (&self.group, self.machine.group_state()) {
            if self.last_group_state != Some(state) {
                self.last_group_state = Some(state);
                if let Some(state) = NotifyState::from_fsm(state) {
                    fx.push(Effect::Notify(notify::Event::group(group.clone(), state)));
                }
            }
        }
    }

    fn headline(&self, i: usize) -> Option<Headline> {
        let inst = self.machine.instance(i)?;
        let master = inst.last_master().map(|(a, _)| a);
        Some((
            inst.state(),
            inst.effective_priority(),
            master,
            self.members[i].transitions,
        ))
    }

    fn headlines(&self) -> Vec<Headline> {
        (0..self.members.len())
            .filter_map(|i| self.headline(i))
            .collect()
    }

    /// Whether a headline differs from the published one (without building the list: this
    /// runs for every datagram).
    fn headline_changed(&self) -> bool {
        let Some((_, published)) = &self.published else {
            return true;
        };
        let mut now = (0..self.members.len()).filter_map(|i| self.headline(i));
        let same = published.iter().all(|h| now.next().as_ref() == Some(h)) && now.next().is_none();
        !same
    }

    /// Whether to publish the stats at `now` ([`publish_plan`]).
    pub fn publish_due(&self, now: Time) -> Publish {
        let changed = self.headline_changed();
        if !changed && !self.dirty {
            return Publish::Idle;
        }
        let published = self.published.as_ref().map(|(at, _)| *at);
        match publish_plan(published, changed, self.dirty, now) {
            Ok(()) => Publish::Now,
            Err(Some(at)) => Publish::At(at),
            Err(None) => Publish::Idle,
        }
    }

    /// The stats were published at `now`.
    pub fn published(&mut self, now: Time) {
        self.published = Some((now, self.headlines()));
        self.dirty = false;
    }

    /// A reader held the stats' lock at `now`: when to try again (soon, not at once: it is
    /// not ours to spin on).
    pub fn publish_blocked(&self, now: Time) -> Time {
        now + PUBLISH_RETRY
    }
}

/// How a master takes its addresses (a takeover, or new ones a reload gave it): the
/// services first (the main loop), the addresses meanwhile, and the announcement once the
/// services are active (after the adverts of this step have gone out). Without a
/// dataplane the role only informs (status), and waits with the logs.
fn take_vips(member: usize, dataplane: bool, fx: &mut Vec<Effect>, held: &mut Held) {
    let role = Effect::Role {
        member,
        master: true,
    };
    if dataplane {
        fx.push(role);
    } else {
        held.later.push(role);
    }
    fx.push(Effect::AddVips { member });
    held.later.push(Effect::Log(Log::VipsAdded { member }));
    fx.push(Effect::StopGarp { member });
    held.announce.push_back(member);
}

fn not_used(member: usize, (reason, detail, total): LogLine) -> Effect {
    Effect::Log(Log::NotUsed {
        member,
        reason,
        detail,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::VrrpVersion,
        vrrp::fsm::{Advert, Centis},
    };
    use std::net::Ipv4Addr;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// The virtual clock: `ms` milliseconds after the unit's epoch.
    fn t(ms: u64) -> Time {
        Time::from_millis(ms)
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn member(name: &str, last: u8, dataplane: bool) -> MemberConfig {
        MemberConfig {
            name: name.into(),
            fsm: fsm::Config::new(VrrpVersion::V3, addr(last), 100),
            dataplane,
        }
    }

    fn single(dataplane: bool) -> Unit {
        Unit::new(vec![member("VI_1", 1, dataplane)], None).unwrap()
    }

    fn advert(last: u8, priority: u8) -> Input {
        Input::Advert(Advert {
            sender: addr(last),
            priority,
            max_advert_interval: Centis(100),
        })
    }

    fn notify(name: &str, state: NotifyState, priority: u8) -> Effect {
        Effect::Notify(notify::Event::instance(name, state, priority))
    }

    fn log(line: Log) -> Effect {
        Effect::Log(line)
    }

    /// Starts member 0 and lets its Master_Down timer run out: the takeover's effects, at
    /// the time it happened.
    fn takeover(u: &mut Unit) -> (Vec<Effect>, Time) {
        u.handle(0, Input::Startup, t(0));
        let at = u.deadline().expect("a backup's Master_Down timer");
        let before = Time::from_duration(at.as_duration() - MS(1));
        assert_eq!(u.expired(0, before), None);
        let timer = u.expired(0, at).expect("due at its deadline");
        (u.handle(0, Input::TimerExpired(timer), at), at)
    }

    /// A master (with a dataplane) whose acknowledgement came, at the time it became one.
    fn master() -> (Unit, Time) {
        let mut u = single(true);
        let (_, at) = takeover(&mut u);
        u.role_applied(0, true);
        (u, at)
    }

    /// Starting as a backup: the role goes out (no address to remove: none is held), then the
    /// state change's log line and notify event.
    #[test]
    fn startup_as_backup() {
        let mut u = single(true);
        let fx = u.handle(0, Input::Startup, t(0));
        assert_eq!(
            fx,
            vec![
                Effect::StopGarp { member: 0 },
                Effect::Role {
                    member: 0,
                    master: false
                },
                log(Log::StateChange {
                    member: 0,
                    from: State::Initialize,
                    to: State::Backup,
                    priority: 100
                }),
                notify("VI_1", NotifyState::Backup, 100),
            ]
        );
        assert_eq!(u.transitions(0), 1);
    }

    /// A restarted master resumes: its advert, the role for the dataplane, and nothing to
    /// add, announce or wait for (the addresses are in place, the neighbours point here).
    #[test]
    fn a_resumed_master_adds_and_announces_nothing() {
        let mut u = single(true);
        let fx = u.handle(0, Input::Resume, t(0));
        assert_eq!(
            fx,
            vec![
                Effect::SendAdvert {
                    member: 0,
                    priority: 100
                },
                Effect::Role {
                    member: 0,
                    master: true
                },
                log(Log::StateChange {
                    member: 0,
                    from: State::Initialize,
                    to: State::Master,
                    priority: 100
                }),
                notify("VI_1", NotifyState::Master, 100),
            ]
        );
        // It holds the addresses: leaving Master removes them.
        let fx = u.handle(0, Input::Shutdown, t(10));
        assert!(fx.contains(&Effect::RemoveVips { member: 0 }), "{fx:?}");
    }

    /// A new master with a dataplane: its advert, the role for the dataplane, the addresses,
    /// then a wait for the acknowledgement before anything else. Once it is in, the first
    /// burst of gratuitous ARP, and only then what informs: logs and the notify event.
    #[test]
    fn a_new_master_announces_once_the_dataplane_has_the_role() {
        let mut u = single(true);
        let (fx, _) = takeover(&mut u);
        assert_eq!(
            fx,
            vec![
                Effect::SendAdvert {
                    member: 0,
                    priority: 100
                },
                Effect::Role {
                    member: 0,
                    master: true
                },
                Effect::AddVips { member: 0 },
                Effect::StopGarp { member: 0 },
                Effect::AwaitAck {
                    member: 0,
                    within: ROLE_ACK_WAIT
                },
            ]
        );
        assert_eq!(ROLE_ACK_WAIT, MS(5));
        assert_eq!(
            u.role_applied(0, true),
            vec![
                Effect::Garp {
                    member: 0,
                    start: GarpStart::Now
                },
                log(Log::Announced {
                    member: 0,
                    services_active: true
                }),
                log(Log::VipsAdded { member: 0 }),
                log(Log::StateChange {
                    member: 0,
                    from: State::Backup,
                    to: State::Master,
                    priority: 100
                }),
                notify("VI_1", NotifyState::Master, 100),
            ]
        );
        // Nothing is held any more.
        assert_eq!(u.role_applied(0, true), vec![]);
    }

    /// A reload's new settings for a master: a lower priority goes out in an advert at
    /// once, and no state changes (no transition, no notify event, no address moved).
    #[test]
    fn a_reconfigured_master_advertises_its_new_priority_and_stays_master() {
        let (mut u, at) = master();
        let transitions = u.transitions(0);
        let mut config = member("VI_1", 1, true).fsm;
        config.priority = 90;
        let now = at + MS(300);
        let fx = u.handle(0, Input::Reconfigure(config), now);
        assert_eq!(
            fx,
            vec![
                Effect::SendAdvert {
                    member: 0,
                    priority: 90
                },
                log(Log::PriorityChanged {
                    member: 0,
                    from: 100,
                    to: 90
                }),
            ]
        );
        assert_eq!(u.transitions(0), transitions);
        assert_eq!(u.instance(0).unwrap().state(), State::Master);
        // The next advert a full (new) interval later.
        assert_eq!(u.deadline(), Some(now + MS(1000)));

        // A shorter interval brings the next advert forward; the same priority sends none.
        config.advert_interval = Centis(20);
        let fx = u.handle(0, Input::Reconfigure(config), now + MS(10));
        assert_eq!(fx, vec![]);
        assert_eq!(u.deadline(), Some(now + MS(210)));

        // Identity cannot change: refused, nothing changed.
        let mut v6 = config;
        v6.primary_address = "2001:db8::1".parse().unwrap();
        let fx = u.handle(0, Input::Reconfigure(v6), now + MS(20));
        assert!(matches!(&fx[..], [Effect::Log(Log::Refused(_))]), "{fx:?}");
        assert_eq!(u.instance(0).unwrap().config().primary_address, addr(1));
    }

    /// A backup's new priority moves its Master_Down deadline by the change in skew, and it
    /// stays a backup: preemption follows the protocol (the next advert it hears, or the
    /// timer), never the reload itself.
    #[test]
    fn a_reconfigured_backup_stays_backup_with_its_new_skew() {
        let mut u = single(true);
        u.handle(0, Input::Startup, t(0));
        let before = u.deadline().unwrap();
        let mut config = member("VI_1", 1, true).fsm;
        config.priority = 200;
        let fx = u.handle(0, Input::Reconfigure(config), t(100));
        assert_eq!(
            fx,
            vec![log(Log::PriorityChanged {
                member: 0,
                from: 100,
                to: 200
            })]
        );
        // Skew: (256 - p) * 1 s / 256: 156/256 s before, 56/256 s after.
        let skew = |p: u64| Duration::from_micros((256 - p) * 1_000_000 / 256);
        assert_eq!(
            u.deadline(),
            Some(Time::from_duration(
                before.as_duration() - (skew(100) - skew(200))
            ))
        );
        assert_eq!(u.instance(0).unwrap().state(), State::Backup);
        assert_eq!(u.transitions(0), 1);
    }

    /// New virtual addresses for a master: the dataplane hears of the new set first, the
    /// addresses are added, and after the acknowledgement they are announced; a backup has
    /// nothing to do.
    #[test]
    fn new_addresses_of_a_master_are_served_then_added_then_announced() {
        let (mut u, _) = master();
        let transitions = u.transitions(0);
        assert!(u.holds_vips(0));
        assert_eq!(
            u.vips_changed(0),
            vec![
                Effect::Role {
                    member: 0,
                    master: true
                },
                Effect::AddVips { member: 0 },
                Effect::StopGarp { member: 0 },
                Effect::AwaitAck {
                    member: 0,
                    within: ROLE_ACK_WAIT
                },
            ]
        );
        assert_eq!(
            u.role_applied(0, true),
            vec![
                Effect::Garp {
                    member: 0,
                    start: GarpStart::Now
                },
                log(Log::Announced {
                    member: 0,
                    services_active: true
                }),
                log(Log::VipsAdded { member: 0 }),
            ]
        );
        assert_eq!(u.transitions(0), transitions);

        let mut b = single(true);
        b.handle(0, Input::Startup, t(0));
        assert_eq!(b.vips_changed(0), vec![]);
    }

    /// No acknowledgement within ROLE_ACK_WAIT: the addresses are announced anyway, and the
    /// log says the services may not be active yet.
    #[test]
    fn a_new_master_announces_anyway_when_the_ack_wait_runs_out() {
        let mut u = single(true);
        takeover(&mut u);
        let fx = u.role_applied(0, false);
        assert_eq!(
            fx[..2],
            [
                Effect::Garp {
                    member: 0,
                    start: GarpStart::Now
                },
                log(Log::Announced {
                    member: 0,
                    services_active: false
                }),
            ]
        );
        assert_eq!(fx.last(), Some(&notify("VI_1", NotifyState::Master, 100)));
    }

    /// Without a dataplane nothing is waited for, and the role only informs: it follows the
    /// first burst, with the logs.
    #[test]
    fn without_a_dataplane_the_role_waits_with_the_logs() {
        let mut u = single(false);
        let (fx, _) = takeover(&mut u);
        assert_eq!(
            fx,
            vec![
                Effect::SendAdvert {
                    member: 0,
                    priority: 100
                },
                Effect::AddVips { member: 0 },
                Effect::StopGarp { member: 0 },
                Effect::Garp {
                    member: 0,
                    start: GarpStart::Now
                },
                log(Log::Announced {
                    member: 0,
                    services_active: true
                }),
                Effect::Role {
                    member: 0,
                    master: true
                },
                log(Log::VipsAdded { member: 0 }),
                log(Log::StateChange {
                    member: 0,
                    from: State::Backup,
                    to: State::Master,
                    priority: 100
                }),
                notify("VI_1", NotifyState::Master, 100),
            ]
        );
    }

    /// A master that leaves in the same step (a later output ended it) still waits for the
    /// acknowledgement, but announces nothing.
    #[test]
    fn a_master_that_left_in_the_same_step_announces_nothing() {
        let mut u = single(true);
        let fx = u.apply(
            Ok(vec![(0, Output::BecomeMaster), (0, Output::BecomeBackup)]),
            t(0),
        );
        assert_eq!(
            fx,
            vec![
                Effect::Role {
                    member: 0,
                    master: true
                },
                Effect::AddVips { member: 0 },
                Effect::StopGarp { member: 0 },
                Effect::StopGarp { member: 0 },
                Effect::RemoveVips { member: 0 },
                Effect::Role {
                    member: 0,
                    master: false
                },
                Effect::AwaitAck {
                    member: 0,
                    within: ROLE_ACK_WAIT
                },
            ]
        );
        assert_eq!(
            u.role_applied(0, true),
            vec![log(Log::VipsAdded { member: 0 })]
        );
    }

    /// Leaving master: the announcements stop, the addresses go, and only then the role
    /// (services stay active until the addresses are gone); then the logs and notify.
    #[test]
    fn leaving_master_removes_the_addresses_before_the_role() {
        let (mut u, at) = master();
        let fx = u.handle(0, advert(2, 200), at + MS(10));
        assert_eq!(
            fx,
            vec![
                Effect::StopGarp { member: 0 },
                Effect::RemoveVips { member: 0 },
                Effect::Role {
                    member: 0,
                    master: false
                },
                log(Log::StateChange {
                    member: 0,
                    from: State::Master,
                    to: State::Backup,
                    priority: 100
                }),
                notify("VI_1", NotifyState::Backup, 100),
            ]
        );
    }

    /// Stopping: the release advert as the state machine orders it, and `notify_stop` before
    /// the announcements stop, the addresses go and the role is released; the addresses are
    /// removed whether or not they were held.
    #[test]
    fn stopping_tells_notify_first_and_removes_the_addresses() {
        let (mut u, at) = master();
        let fx = u.handle(0, Input::Shutdown, at + MS(10));
        let stop = fx
            .iter()
            .position(|e| *e == notify("VI_1", NotifyState::Stop, 0))
            .expect("notify_stop");
        assert!(fx.contains(&Effect::SendAdvert {
            member: 0,
            priority: 0
        }));
        assert_eq!(
            fx[stop..stop + 4],
            [
                notify("VI_1", NotifyState::Stop, 0),
                Effect::StopGarp { member: 0 },
                Effect::RemoveVips { member: 0 },
                Effect::Role {
                    member: 0,
                    master: false
                },
            ]
        );
        // A backup holds nothing, but a stop removes the addresses all the same.
        let mut u = single(true);
        u.handle(0, Input::Startup, t(0));
        let fx = u.handle(0, Input::Shutdown, t(10));
        assert!(fx.contains(&Effect::RemoveVips { member: 0 }));
    }

    /// Lower-priority adverts: the first one, and one after the pause, announce now; one
    /// within the pause announces at its end; more within it add nothing.
    #[test]
    fn lower_priority_adverts_are_answered_at_most_once_a_second() {
        let t0 = t(10_000);
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

    /// The same pacing through the unit, on a virtual clock: what a master does for each
    /// `Reannounce`, and nothing for one while it holds no addresses.
    #[test]
    fn reannouncements_are_paced_on_the_clock_passed_in() {
        let (mut u, at) = master();
        let reannounce = |u: &mut Unit, now: Time| u.apply(Ok(vec![(0, Output::Reannounce)]), now);
        let now = |after: Option<Duration>| {
            let start = GarpStart::LowerPrio(after);
            vec![
                log(Log::Reannounce { member: 0, after }),
                Effect::StopGarp { member: 0 },
                Effect::Garp { member: 0, start },
            ]
        };
        let t0 = at + MS(2_000);
        assert_eq!(reannounce(&mut u, t0), now(None));
        assert_eq!(reannounce(&mut u, t0 + MS(300)), now(Some(MS(700))));
        // One is due at t0 + 1 s: nothing more until then.
        assert_eq!(reannounce(&mut u, t0 + MS(400)), vec![]);
        assert_eq!(reannounce(&mut u, t0 + MS(999)), vec![]);
        // At t0 + 1 s the deferred one goes out: another waits a whole second.
        assert_eq!(reannounce(&mut u, t0 + MS(1_000)), now(Some(MS(1_000))));
        assert_eq!(reannounce(&mut u, t0 + MS(3_000)), now(None));

        // Not master: nothing.
        let mut u = single(true);
        u.handle(0, Input::Startup, t(0));
        assert_eq!(reannounce(&mut u, t(5_000)), vec![]);
    }

    /// A lower-priority advert heard by a master, through the state machine: its own advert
    /// at once (RFC 9568), then the addresses announced again.
    #[test]
    fn a_lower_priority_advert_makes_a_master_reannounce() {
        let (mut u, at) = master();
        let fx = u.handle(0, advert(2, 50), at + MS(2_000));
        assert_eq!(
            fx,
            vec![
                Effect::SendAdvert {
                    member: 0,
                    priority: 100
                },
                log(Log::Reannounce {
                    member: 0,
                    after: None
                }),
                Effect::StopGarp { member: 0 },
                Effect::Garp {
                    member: 0,
                    start: GarpStart::LowerPrio(None)
                },
            ]
        );
    }

    /// Rate-limited answers and discards are all counted, and logged at most once every
    /// LOG_EVERY per reason on the clock passed in; expected discards are never logged.
    #[test]
    fn discards_are_counted_and_logged_at_a_bounded_rate() {
        let mut u = single(true);
        let limited = |u: &mut Unit, now: Time| {
            u.apply(
                Ok(vec![(
                    0,
                    Output::AnswerRateLimited(fsm::Answer::LowerPriority),
                )]),
                now,
            )
        };
        let line = |total| {
            vec![log(Log::NotUsed {
                member: 0,
                reason: "lower_priority_rate_limited",
                detail: "answered one of its kind less than an advert interval ago".into(),
                total,
            })]
        };
        assert_eq!(limited(&mut u, t(1_000)), line(1));
        assert_eq!(limited(&mut u, t(2_000)), vec![]);
        assert_eq!(limited(&mut u, t(10_999)), vec![]);
        assert_eq!(limited(&mut u, t(11_000)), line(4));
        assert_eq!(u.discard_counts(0)["lower_priority_rate_limited"], 4);

        assert_eq!(u.discarded(0, &Discard::OwnAdvert, t(0)), None);
        assert_eq!(u.discarded(0, &Discard::OwnAdvert, t(1)), None);
        assert_eq!(u.discard_counts(0)["own_advert"], 2);
        let framing = Effect::Log(Log::NotUsed {
            member: 0,
            reason: "bad_ip_framing",
            detail: "BadIpFraming".into(),
            total: 1,
        });
        assert_eq!(u.discarded(0, &Discard::BadIpFraming, t(0)), Some(framing));
        assert_eq!(u.discarded(0, &Discard::BadIpFraming, t(9_999)), None);
        assert!(u.discarded(0, &Discard::BadIpFraming, t(10_000)).is_some());
        assert!(u.noted(0, "addresses_differ", t(0)).is_some());
        assert!(u.noted(0, "addresses_differ", t(5_000)).is_none());
        assert_eq!(u.discard_counts(0)["addresses_differ"], 2);
        // Socket drops share the rate under a name of their own.
        assert!(u.log_due(0, "socket_drops", t(0)));
        assert!(!u.log_due(0, "socket_drops", t(9_999)));
        assert!(u.log_due(0, "socket_drops", t(10_000)));
    }

    /// A sync group: every new master waits for its own acknowledgement in turn, and what
    /// informs (the members' logs and notify events, then the group's, once) follows the
    /// last announcement.
    #[test]
    fn a_sync_group_announces_each_member_then_tells_the_group_once() {
        let mut u = Unit::new(
            vec![member("VI_1", 1, true), member("VI_2", 3, true)],
            Some("G".into()),
        )
        .unwrap();
        u.handle(0, Input::Startup, t(0));
        let fx = u.handle(1, Input::Startup, t(0));
        let group = |state| Effect::Notify(notify::Event::group("G", state));
        assert_eq!(fx.last(), Some(&group(NotifyState::Backup)));
        assert_eq!(
            fx.iter()
                .filter(|e| **e == group(NotifyState::Backup))
                .count(),
            1
        );

        // The members' Master_Down timers run out (the group waits until both want master).
        let mut fx = Vec::new();
        while !matches!(fx.last(), Some(Effect::AwaitAck { .. })) {
            let at = u.deadline().expect("a timer");
            for i in 0..2 {
                if let Some(timer) = u.expired(i, at) {
                    fx = u.handle(i, Input::TimerExpired(timer), at);
                }
            }
        }
        let Some(Effect::AwaitAck { member: first, .. }) = fx.last().cloned() else {
            unreachable!()
        };
        assert!(!fx
            .iter()
            .any(|e| matches!(e, Effect::Notify(_) | Effect::Garp { .. })));
        for i in 0..2 {
            assert!(fx.contains(&Effect::Role {
                member: i,
                master: true
            }));
        }
        let fx = u.role_applied(first, true);
        let second = 1 - first;
        assert_eq!(
            fx,
            vec![
                Effect::Garp {
                    member: first,
                    start: GarpStart::Now
                },
                log(Log::Announced {
                    member: first,
                    services_active: true
                }),
                Effect::AwaitAck {
                    member: second,
                    within: ROLE_ACK_WAIT
                },
            ]
        );
        let fx = u.role_applied(second, false);
        assert_eq!(
            fx[..2],
            [
                Effect::Garp {
                    member: second,
                    start: GarpStart::Now
                },
                log(Log::Announced {
                    member: second,
                    services_active: false
                }),
            ]
        );
        assert_eq!(fx.last(), Some(&group(NotifyState::Master)));
        let masters = fx
            .iter()
            .filter(|e| matches!(e, Effect::Notify(n) if n.state == NotifyState::Master))
            .count();
        assert_eq!(masters, 3, "two members and the group: {fx:?}");
    }

    /// Stats go out at once the first time and when a headline changes; counters alone at
    /// most every PUBLISH_EVERY; nothing is scheduled when nothing changed.
    #[test]
    fn counters_are_published_at_a_bounded_rate() {
        let t0 = t(5_000);
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

    /// The same through the unit: a datagram (a counter) is published PUBLISH_EVERY after
    /// the last publication, a state change at once; a reader's lock puts it off by 1 ms.
    #[test]
    fn the_unit_paces_publication_on_the_clock_passed_in() {
        let mut u = single(true);
        assert_eq!(u.publish_due(t(0)), Publish::Now);
        u.published(t(0));
        assert_eq!(u.publish_due(t(1)), Publish::Idle);
        u.received();
        assert_eq!(u.publish_due(t(1)), Publish::At(t(100)));
        assert_eq!(u.publish_due(t(100)), Publish::Now);
        assert_eq!(u.publish_blocked(t(100)), t(101));
        u.published(t(100));
        u.handle(0, Input::Startup, t(150));
        assert_eq!(u.publish_due(t(150)), Publish::Now);
    }

    /// An input the state machine refuses is logged, and changes nothing else.
    #[test]
    fn a_refused_input_is_only_logged() {
        let mut u = single(true);
        u.handle(0, Input::Startup, t(0));
        let deadline = u.deadline();
        let fx = u.handle(0, Input::Startup, t(10));
        assert!(matches!(fx[..], [Effect::Log(Log::Refused(_))]), "{fx:?}");
        assert_eq!(u.deadline(), deadline);
    }
}
