//! What a notify hook and the event stream hear: whose state changed, to what, at which
//! priority; and the JSON line the stream carries.
use std::{fmt, time::SystemTime};

use serde::Serialize;

use crate::vrrp::fsm::State;

/// Whose state changed: the first argument keepalived passes to `notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Instance,
    Group,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Instance => "INSTANCE",
            Kind::Group => "GROUP",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states keepalived notifies (it never notifies INIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyState {
    Master,
    Backup,
    Fault,
    /// The daemon is stopping (`Output::Stopped`); `notify_stop` runs.
    Stop,
}

impl NotifyState {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyState::Master => "MASTER",
            NotifyState::Backup => "BACKUP",
            NotifyState::Fault => "FAULT",
            NotifyState::Stop => "STOP",
        }
    }

    /// The notify state for an FSM state; `None` for Initialize.
    pub fn from_fsm(state: State) -> Option<Self> {
        match state {
            State::Initialize => None,
            State::Backup => Some(NotifyState::Backup),
            State::Master => Some(NotifyState::Master),
            State::Fault => Some(NotifyState::Fault),
        }
    }
}

impl fmt::Display for NotifyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub name: String,
    pub state: NotifyState,
    /// The instance's effective priority; 0 for a group (keepalived).
    pub priority: u8,
}

impl Event {
    pub fn instance(name: impl Into<String>, state: NotifyState, priority: u8) -> Self {
        Event {
            kind: Kind::Instance,
            name: name.into(),
            state,
            priority,
        }
    }

    pub fn group(name: impl Into<String>, state: NotifyState) -> Self {
        Event {
            kind: Kind::Group,
            name: name.into(),
            state,
            priority: 0,
        }
    }
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    time: f64,
    kind: &'static str,
    name: &'a str,
    state: &'static str,
    priority: u8,
    router_id: &'a str,
}

/// One event as keepalived writes it to its `notify_fifo` (`vrrp_notify.c`,
/// `notify_fifo`): `INSTANCE "VI_1" MASTER 100`, newline included. keepalived quotes the
/// name without escaping; a name here has no quote or newline (the configuration allows
/// neither in instance and group names), so the line cannot be broken.
pub fn event_keepalived(event: &Event) -> String {
    format!(
        "{} \"{}\" {} {}\n",
        event.kind, event.name, event.state, event.priority
    )
}

/// One event as a JSON line, newline included.
pub fn event_json(event: &Event, time: SystemTime, router_id: &str) -> String {
    let time = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line = serde_json::to_string(&JsonEvent {
        time,
        kind: event.kind.as_str(),
        name: &event.name,
        state: event.state.as_str(),
        priority: event.priority,
        router_id,
    })
    // Serializing a struct of strings and numbers cannot fail; a NaN time would be null.
    .unwrap_or_default();
    line.push('\n');
    line
}
