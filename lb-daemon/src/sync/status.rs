//! What connection sync reports for `lb-daemon status` and the metrics.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// Connection sync (`[sync]`): what this node sends as master and receives as backup.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct SyncStatus {
    pub interface: String,
    /// The vrrp_instance whose master sends; empty when every node sends (`[announce]`).
    pub vrrp_instance: String,
    pub sync_id: u8,
    /// `sending` while this node is master of the instance, else `receiving`; `active` when
    /// every node sends and installs (`[announce]`).
    pub role: String,
    /// This run's boot id (a peer's replay window starts again when it changes).
    pub boot_id: u32,
    /// The peers heard from.
    pub peers: Vec<SyncPeerStatus>,
    /// The longest lag among the peers that acknowledged recently (master).
    pub lag_ms: Option<f64>,
    /// DATA messages, entries and UDP payload bytes sent.
    pub sent_messages: u64,
    pub sent_entries: u64,
    pub sent_bytes: u64,
    /// DATA messages and entries accepted, and entries written into the flow tables.
    pub received_messages: u64,
    pub received_entries: u64,
    pub installed_entries: u64,
    /// Messages a peer's sequence skipped (lost on the way).
    pub lost_messages: u64,
    /// Whole-table syncs sent to a peer that asked (master), or received (backup).
    pub full_syncs_sent: u64,
    pub full_syncs_received: u64,
    /// Entries, events and datagrams dropped, by reason: `ring_lost` (the XDP program's
    /// event ring was full), `not_synced`, `stale_backend`, `unknown_service`,
    /// `unknown_backend`, `not_peer`, `bad_hmac`, `sync_id`, `truncated`, `replay_*`, ...
    pub dropped: BTreeMap<String, u64>,
}

/// A peer of connection sync.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct SyncPeerStatus {
    pub addr: Option<IpAddr>,
    /// Milliseconds since its last message.
    pub last_heard_ms: u64,
    pub boot_id: u32,
    /// From its acknowledgements: sending a message to its being installed there and
    /// acknowledged (a round trip).
    pub lag_ms: Option<f64>,
    /// It asked for the whole table (it started, or has not had it yet).
    pub wants_full: bool,
}
