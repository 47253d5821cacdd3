//! keepalived's hooks: the specific one for the new state, then the generic `notify` with
//! its four arguments.
use super::event::{Event, NotifyState};
use crate::config::vrrp::Notify;

/// An instance's or group's hooks, each split into words.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub master: Option<Vec<String>>,
    pub backup: Option<Vec<String>>,
    pub fault: Option<Vec<String>>,
    pub stop: Option<Vec<String>>,
    pub generic: Option<Vec<String>>,
}

fn words(line: &Option<String>) -> Option<Vec<String>> {
    line.as_deref()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
}

impl Hooks {
    pub fn from_config(notify: &Notify) -> Self {
        Hooks {
            master: words(&notify.master),
            backup: words(&notify.backup),
            fault: words(&notify.fault),
            stop: words(&notify.stop),
            generic: words(&notify.generic),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// `(hook name, words)` of every configured hook.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        [
            ("notify_master", &self.master),
            ("notify_backup", &self.backup),
            ("notify_fault", &self.fault),
            ("notify_stop", &self.stop),
            ("notify", &self.generic),
        ]
        .into_iter()
        .filter_map(|(name, words)| words.as_ref().map(|w| (name, w)))
    }

    pub fn specific(&self, state: NotifyState) -> Option<&[String]> {
        match state {
            NotifyState::Master => self.master.as_deref(),
            NotifyState::Backup => self.backup.as_deref(),
            NotifyState::Fault => self.fault.as_deref(),
            NotifyState::Stop => self.stop.as_deref(),
        }
    }

    /// The command lines to run for `event`, in keepalived's order: the specific hook as
    /// configured, then the generic one with its four arguments.
    pub fn commands(&self, event: &Event) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        if let Some(specific) = self.specific(event.state) {
            out.push(specific.to_vec());
        }
        if let Some(generic) = &self.generic {
            out.push(generic_argv(generic, event));
        }
        out
    }
}

/// `<command words...> INSTANCE|GROUP <name> <STATE> <priority>` (keepalived.conf(5),
/// `notify`; keepalived's `notify_script_exec`).
pub fn generic_argv(command: &[String], event: &Event) -> Vec<String> {
    let mut argv = command.to_vec();
    argv.extend([
        event.kind.as_str().to_string(),
        event.name.clone(),
        event.state.as_str().to_string(),
        event.priority.to_string(),
    ]);
    argv
}
