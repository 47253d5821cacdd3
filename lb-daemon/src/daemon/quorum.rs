//! keepalived's `quorum` as the rest of the daemon hears of it: the log's "quorum lost" and
//! "regained" (once each way), and the tracking events `track_virtual_server` instances
//! take, once a service's first verdict can be trusted.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tracing::info;

use super::reconcile::quorum_changes;
use crate::{
    config::{Config, VirtualServer},
    model::ServiceKey,
    vrrp::track::{self, TrackEvent, TrackKey},
};

/// How long a service's quorum may stay unreported while some of its real servers' MACs
/// are still unknown (see [`Quorum::events`]).
const QUORUM_SETTLE: Duration = Duration::from_secs(3);

pub(super) struct Quorum {
    /// A quorum changed, or MACs did, since [`Quorum::events`] last looked.
    pub moved: bool,
    /// Whether the settling time of the first verdicts had passed when it last looked.
    was_settled: bool,
    /// The services whose quorum the log said was lost (and not yet regained).
    said_lost: HashSet<ServiceKey>,
    /// What `track_virtual_server` has been told, by service name.
    reported: HashMap<String, bool>,
    started: Instant,
}

impl Quorum {
    pub(super) fn new(now: Instant) -> Self {
        Quorum {
            moved: false,
            was_settled: false,
            said_lost: HashSet::new(),
            reported: HashMap::new(),
            started: now,
        }
    }

    /// Whether the settling time of the first verdicts has passed at `now`.
    pub(super) fn settled(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= QUORUM_SETTLE
    }

    /// Logs a quorum lost or regained. The first verdict (at start, before MACs resolve) is
    /// not news, nor is a pool coming up as its MACs resolve: only a quorum said lost is
    /// said regained.
    pub(super) fn log(&mut self, vs: &VirtualServer, had: Option<bool>, has: bool, healthy: u32) {
        if had.is_none_or(|had| had == has) {
            return;
        }
        let key = vs.key();
        let news = if has {
            self.said_lost.remove(&key)
        } else {
            self.said_lost.insert(key)
        };
        if news {
            let what = if has { "regained" } else { "lost" };
            info!(service = %key, healthy, quorum = vs.quorum, "service quorum {what}");
        }
    }

    /// The quorum changes `track_virtual_server` has not heard of yet (see
    /// [`quorum_changes`]), from each service's quorum (`quorum_of`) and whether a real
    /// server's MAC is known.
    pub(super) fn events(
        &mut self,
        config: &Config,
        quorum_of: impl Fn(&ServiceKey) -> Option<bool>,
        has_mac: impl Fn(std::net::IpAddr) -> bool,
        now: Instant,
    ) -> Vec<TrackEvent> {
        let settled = now.duration_since(self.started) >= QUORUM_SETTLE;
        // A walk of every service after every event cost milliseconds at 10,000 of them:
        // only a quorum that moved, a MAC learned or the end of the settling time can
        // change what is reported.
        if !std::mem::take(&mut self.moved) && settled == self.was_settled {
            return Vec::new();
        }
        self.was_settled = settled;
        let (events, reported) =
            quorum_changes(config, quorum_of, has_mac, &self.reported, settled);
        self.reported = reported;
        events
    }

    /// What the services' quorums are, as [`track::Tracking::seed`] takes it. Only the
    /// services `config`'s instances track: the others are not looked up.
    pub(super) fn status(&self, config: &Config) -> HashMap<TrackKey, track::Status> {
        config
            .vrrp_instances
            .iter()
            .flat_map(|i| &i.track_virtual_server)
            .filter_map(|t| {
                let has = *self.reported.get(&t.name)?;
                let status = if has {
                    track::Status::Up
                } else {
                    track::Status::Down
                };
                Some((TrackKey::Service(t.name.clone()), status))
            })
            .collect()
    }
}
