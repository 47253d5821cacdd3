//! The VRRP half of the configuration: keepalived's `vrrp_script`, `vrrp_instance` and
//! `vrrp_sync_group` blocks, with the same key names.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx};
use crate::model::VrrpVersion;

/// keepalived's `garp_master_delay` default, seconds.
pub const DEFAULT_GARP_MASTER_DELAY: u32 = 5;
/// keepalived's `garp_master_repeat` default.
pub const DEFAULT_GARP_MASTER_REPEAT: u32 = 5;

fn zero() -> Spanned<i32> {
    Spanned::new(0..0, 0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScript {
    name: Spanned<String>,
    script: Spanned<String>,
    /// Seconds between runs (keepalived's default: 1).
    interval: Option<Spanned<f64>>,
    /// Seconds a run may take before it counts as a failure (default: the interval).
    timeout: Option<Spanned<f64>>,
    /// Priority change while failing; 0 (the default) means the instance goes to Fault.
    #[serde(default = "zero")]
    weight: Spanned<i32>,
    /// Successes in a row before a failed script counts as OK again.
    rise: Option<Spanned<u32>>,
    /// Failures in a row before an OK script counts as failed.
    fall: Option<Spanned<u32>>,
    /// Run as this user (default: `global_defs.script_user`, else root).
    user: Option<String>,
    /// keepalived's `weight N reverse`: the priority moves the other way.
    #[serde(default)]
    reverse: bool,
}

/// keepalived's `track_file` block: a file holding a number that moves the priority of the
/// instances that track it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrackFile {
    name: Spanned<String>,
    file: Spanned<String>,
    /// The number times this is added to the priority (keepalived's default: 1); 0: the
    /// instance faults while the number is not 0.
    weight: Option<Spanned<i64>>,
    #[serde(default)]
    reverse: bool,
    /// keepalived's `init_file VALUE`: the file is written with this number at start when
    /// it does not exist (or always, with `init_file_overwrite`).
    init_file: Option<Spanned<i64>>,
    #[serde(default)]
    init_file_overwrite: bool,
}

/// keepalived's `vrrp_track_process` block: how many processes of a name run, and what that
/// does to the instances that track it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrackProcess {
    name: Spanned<String>,
    /// The process name, or `[name, param, ...]` (keepalived's `process NAME PARAM...`; an
    /// array keeps spaces inside a parameter, as keepalived's quotes do).
    process: Spanned<toml::Value>,
    /// `exact`, `partial` or `initial`; given parameters without it mean `exact`.
    param_match: Option<Spanned<String>>,
    /// Match `process` against the program as started (the command line's first word)
    /// rather than the kernel's process name.
    #[serde(default)]
    full_command: bool,
    /// Priority change while below quorum; 0 (keepalived's default) means Fault.
    #[serde(default = "zero")]
    weight: Spanned<i32>,
    #[serde(default)]
    reverse: bool,
    /// Processes needed (default 1) and allowed (default unbounded).
    quorum: Option<Spanned<u32>>,
    quorum_max: Option<Spanned<u32>>,
    /// Seconds: `fork_delay` and `terminate_delay` at once.
    delay: Option<Spanned<f64>>,
    /// Seconds a change caused by a process starting (a gained quorum, or one lost above
    /// `quorum_max`) must last before it counts.
    fork_delay: Option<Spanned<f64>>,
    /// Seconds a change caused by a process stopping must last before it counts.
    terminate_delay: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    auth_type: Spanned<String>,
    auth_pass: Spanned<String>,
}

/// A tracked interface or script: a bare name, or `{ name = "...", weight = N }`. Read as a
/// plain value (serde's untagged enums lose the spans that errors need).
type RawTrack = Spanned<toml::Value>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    name: Spanned<String>,
    /// `MASTER` or `BACKUP`: a start-up hint.
    #[serde(default)]
    state: Option<Spanned<String>>,
    interface: Spanned<String>,
    virtual_router_id: Spanned<u32>,
    priority: Spanned<u32>,
    /// Seconds; v3 takes hundredths (0.01 to 40.95).
    advert_int: Option<Spanned<f64>>,
    /// 2 or 3; default `global_defs.vrrp_version`, else 2 (keepalived's).
    version: Option<Spanned<u8>>,
    #[serde(default)]
    nopreempt: bool,
    /// Seconds.
    preempt_delay: Option<Spanned<f64>>,
    authentication: Option<RawAuth>,
    virtual_ipaddress: Spanned<Vec<Spanned<String>>>,
    unicast_src_ip: Option<Spanned<String>>,
    #[serde(default)]
    unicast_peer: Vec<Spanned<String>>,
    #[serde(default)]
    track_interface: Vec<RawTrack>,
    #[serde(default)]
    track_script: Vec<RawTrack>,
    #[serde(default)]
    track_file: Vec<RawTrack>,
    #[serde(default)]
    track_process: Vec<RawTrack>,
    /// Services whose quorum the instance tracks: `"VIP:PORT"` or `"VIP:PORT/TCP"`.
    #[serde(default)]
    pub(super) track_virtual_server: Vec<RawTrack>,
    notify_master: Option<Spanned<String>>,
    notify_backup: Option<Spanned<String>>,
    notify_fault: Option<Spanned<String>>,
    notify_stop: Option<Spanned<String>>,
    notify: Option<Spanned<String>>,
    garp_master_delay: Option<u32>,
    garp_master_repeat: Option<Spanned<u32>>,
    garp_master_refresh: Option<u32>,
    garp_master_refresh_repeat: Option<Spanned<u32>>,
    /// keepalived's: a master that hears a lower-priority advert announces its VIPs again,
    /// this many frames per VIP (default `garp_master_repeat`), and a second time after
    /// `garp_lower_prio_delay` seconds (default `garp_master_delay`).
    garp_lower_prio_repeat: Option<Spanned<u32>>,
    garp_lower_prio_delay: Option<u32>,
    /// keepalived's `use_vmac [NAME]`: `true` (the interface `vrrp.VRID`) or its name.
    use_vmac: Option<Spanned<toml::Value>>,
    /// keepalived's `vmac_xmit_base`: adverts leave from `interface`, not the virtual MAC.
    #[serde(default)]
    vmac_xmit_base: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSyncGroup {
    name: Spanned<String>,
    group: Vec<Spanned<String>>,
    notify_master: Option<Spanned<String>>,
    notify_backup: Option<Spanned<String>>,
    notify_fault: Option<Spanned<String>>,
    notify: Option<Spanned<String>>,
}

/// A checked `vrrp_script`.
#[derive(Debug, Clone, PartialEq)]
pub struct VrrpScript {
    pub name: String,
    /// The command line, split on whitespace; the first word is the program.
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: i32,
    pub rise: u32,
    pub fall: u32,
    pub user: Option<String>,
    pub reverse: bool,
}

/// A checked `track_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackFile {
    pub name: String,
    pub path: std::path::PathBuf,
    pub weight: i32,
    pub reverse: bool,
    /// Written at start when the file is missing (or always, `overwrite`).
    pub init: Option<(i64, bool)>,
}

/// How a `vrrp_track_process`'s parameters are compared with a process's (after the
/// program, which is always compared whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamMatch {
    /// The same parameters, no more (none configured: the process has none).
    Exact,
    /// The configured parameters come first; more may follow.
    Partial,
    /// As `Partial`, and the last configured parameter need only begin the process's.
    Initial,
}

/// A checked `vrrp_track_process`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackProcess {
    pub name: String,
    /// The kernel's process name (`comm`, at most 15 bytes), or with `full_command` the
    /// program as started (the command line's first word).
    pub process: String,
    pub params: Vec<String>,
    /// `None`: parameters are not looked at.
    pub param_match: Option<ParamMatch>,
    pub full_command: bool,
    pub weight: i32,
    pub reverse: bool,
    /// Up while `quorum <= count <= quorum_max`.
    pub quorum: u32,
    pub quorum_max: u32,
    pub fork_delay: Duration,
    pub terminate_delay: Duration,
}

/// The kernel keeps a process name in 16 bytes with its NUL (`TASK_COMM_LEN`).
pub const COMM_MAX: usize = 15;
/// The longest command line (program and parameters) a `vrrp_track_process` may match.
pub const CMDLINE_MAX: usize = 4096;

/// A virtual address as keepalived writes it: `ADDR[/PREFIX] [dev IFACE] [label LABEL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualIp {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// The instance's interface when absent.
    pub dev: Option<String>,
    pub label: Option<String>,
}

/// A tracked interface, script or file and what its failure does: `None` = the tracked
/// thing's own weight (a script's, a file's), else Fault; `Some(w)` = priority + w.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub name: String,
    pub weight: Option<i32>,
    /// keepalived's `reverse` (`None`: the tracked thing's own).
    pub reverse: Option<bool>,
}

/// Notify hooks, each a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notify {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    pub stop: Option<String>,
    /// Called with keepalived's arguments: `INSTANCE|GROUP <name> <STATE> <priority>`.
    pub generic: Option<String>,
}

/// A checked `vrrp_instance`.
#[derive(Debug, Clone, PartialEq)]
pub struct VrrpInstance {
    pub name: String,
    pub start_master: bool,
    pub interface: String,
    pub vrid: u8,
    pub priority: u8,
    /// Centiseconds.
    pub advert_int_cs: u16,
    pub version: VrrpVersion,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// VRRPv2 simple password (at most 8 bytes).
    pub auth_pass: Option<Vec<u8>>,
    pub virtual_ipaddress: Vec<VirtualIp>,
    pub unicast_src_ip: Option<IpAddr>,
    pub unicast_peer: Vec<IpAddr>,
    pub track_interface: Vec<Tracked>,
    pub track_script: Vec<Tracked>,
    pub track_file: Vec<Tracked>,
    pub track_process: Vec<Tracked>,
    /// Services whose quorum the instance tracks (this project's addition: keepalived needs
    /// a `quorum_down` script for it). Names are canonical, [`super::VirtualServer::name`].
    pub track_virtual_server: Vec<Tracked>,
    pub notify: Notify,
    pub garp_master_delay: Duration,
    pub garp_master_repeat: u32,
    pub garp_master_refresh: Duration,
    pub garp_master_refresh_repeat: u32,
    /// After a lower-priority advert: frames per VIP, and the pause before the second burst.
    pub garp_lower_prio_repeat: u32,
    pub garp_lower_prio_delay: Duration,
    /// Between two frames of a burst: `global_defs.vrrp_garp_interval` for an IPv4
    /// instance, `vrrp_gna_interval` for an IPv6 one (0: back to back).
    pub garp_interval: Duration,
    /// keepalived's `use_vmac`: the name of the virtual MAC interface (see
    /// [`crate::vrrp::vmac`]) the VIPs live on.
    pub use_vmac: Option<String>,
    /// Adverts leave from `interface` rather than the virtual MAC interface (keepalived's
    /// `vmac_xmit_base`; on whenever there are unicast peers, as keepalived sets it).
    pub vmac_xmit_base: bool,
}

impl VrrpInstance {
    pub fn family_v6(&self) -> bool {
        self.virtual_ipaddress
            .first()
            .is_some_and(|v| v.addr.is_ipv6())
    }
}

/// A checked `vrrp_sync_group`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncGroup {
    pub name: String,
    pub members: Vec<String>,
    pub notify: Notify,
}

fn seconds(
    cx: &Ctx,
    v: &Spanned<f64>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Duration, ConfigError> {
    let s = *v.get_ref();
    if !(min..=max).contains(&s) {
        return Err(cx.invalid(
            v.span(),
            key,
            format!("{s} is out of range {min}..={max} seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn command(cx: &Ctx, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    cx.command(v.get_ref(), v.span(), key)
}

fn opt_command(
    cx: &Ctx,
    v: &Option<Spanned<String>>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    v.as_ref().map(|v| command(cx, v, key)).transpose()
}

pub(super) fn script(cx: &Ctx, raw: &RawScript) -> Result<VrrpScript, ConfigError> {
    let interval = match &raw.interval {
        Some(i) => seconds(cx, i, "vrrp_script.interval", 0.01, 86_400.0)?,
        None => Duration::from_secs(1),
    };
    let timeout = match &raw.timeout {
        Some(t) => seconds(cx, t, "vrrp_script.timeout", 0.01, 86_400.0)?,
        None => interval,
    };
    let count = |v: &Option<Spanned<u32>>, key: &str| -> Result<u32, ConfigError> {
        match v {
            None => Ok(1),
            Some(n) if (1..=1000).contains(n.get_ref()) => Ok(*n.get_ref()),
            Some(n) => Err(cx.invalid(n.span(), key, "must be 1..=1000")),
        }
    };
    let weight = *raw.weight.get_ref();
    if !(-254..=254).contains(&weight) {
        return Err(cx.invalid(
            raw.weight.span(),
            "vrrp_script.weight",
            "must be -254..=254",
        ));
    }
    let line = command(cx, &raw.script, "vrrp_script.script")?;
    Ok(VrrpScript {
        name: raw.name.get_ref().clone(),
        command: line.split_whitespace().map(str::to_string).collect(),
        interval,
        timeout,
        weight,
        rise: count(&raw.rise, "vrrp_script.rise")?,
        fall: count(&raw.fall, "vrrp_script.fall")?,
        user: raw.user.clone(),
        reverse: raw.reverse,
    })
}

/// `ADDR[/PREFIX] [dev IFACE] [label LABEL]`.
fn virtual_ip(cx: &Ctx, v: &Spanned<String>) -> Result<VirtualIp, ConfigError> {
    let key = "vrrp_instance.virtual_ipaddress";
    let bad = |m: String| cx.invalid(v.span(), key, m);
    let mut words = v.get_ref().split_whitespace();
    let first = words.next().ok_or_else(|| bad("empty address".into()))?;
    let (addr, prefix) = match first.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (first, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| bad(format!("prefix {p:?} is not 0..={max}")))?,
    };
    let mut out = VirtualIp {
        addr,
        prefix_len,
        dev: None,
        label: None,
    };
    while let Some(word) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| bad(format!("{word:?} needs a value")))?;
        match word {
            "dev" => out.dev = Some(value.to_string()),
            "label" => out.label = Some(value.to_string()),
            other => {
                return Err(bad(format!(
                    "unknown option {other:?} (expected dev or label)"
                )))
            }
        }
    }
    Ok(out)
}

fn track(cx: &Ctx, t: &RawTrack, key: &str) -> Result<Tracked, ConfigError> {
    let bad = |m: &str| cx.invalid(t.span(), key, m.to_string());
    let mut reverse = None;
    // A weight given, even 0, stands over the tracked thing's own (keepalived's
    // `track_file { f weight 0 }` faults on a non-zero number whatever the file's weight).
    let (name, weight) = match t.get_ref() {
        toml::Value::String(name) => (name.clone(), None),
        toml::Value::Table(table) => {
            if let Some(k) = table
                .keys()
                .find(|k| !["name", "weight", "reverse"].contains(&k.as_str()))
            {
                return Err(bad(&format!(
                    "unknown key {k:?} (expected name, weight, reverse)"
                )));
            }
            if let Some(r) = table.get("reverse") {
                reverse = Some(
                    r.as_bool()
                        .ok_or_else(|| bad("reverse must be true or false"))?,
                );
            }
            let name = table
                .get("name")
                .and_then(toml::Value::as_str)
                .ok_or_else(|| bad("needs a name"))?;
            let weight = match table.get("weight") {
                None => None,
                Some(w) => Some(
                    w.as_integer()
                        .filter(|w| (-254..=254).contains(w))
                        .ok_or_else(|| bad("weight must be an integer -254..=254"))?
                        as i32,
                ),
            };
            (name.to_string(), weight)
        }
        _ => return Err(bad("a name, or a table with name and weight")),
    };
    Ok(Tracked {
        name,
        weight,
        reverse,
    })
}

impl RawTrackFile {
    pub(super) fn file_span(&self) -> std::ops::Range<usize> {
        self.file.span()
    }
}

pub(super) fn track_file(cx: &Ctx, raw: &RawTrackFile) -> Result<TrackFile, ConfigError> {
    let path = raw.file.get_ref();
    if !path.starts_with('/') {
        return Err(cx.invalid(
            raw.file.span(),
            "track_file.file",
            "must be an absolute path",
        ));
    }
    let weight = match &raw.weight {
        None => 1,
        Some(w) if (-254..=254).contains(w.get_ref()) => *w.get_ref() as i32,
        Some(w) => return Err(cx.invalid(w.span(), "track_file.weight", "must be -254..=254")),
    };
    let init = match &raw.init_file {
        None if raw.init_file_overwrite => {
            return Err(cx.invalid(
                raw.name.span(),
                "track_file.init_file_overwrite",
                "needs init_file, the number to write",
            ))
        }
        None => None,
        Some(v) if i32::try_from(*v.get_ref()).is_ok() => {
            Some((*v.get_ref(), raw.init_file_overwrite))
        }
        Some(v) => {
            return Err(cx.invalid(
                v.span(),
                "track_file.init_file",
                "must fit in 32 bits, as keepalived reads it",
            ))
        }
    };
    Ok(TrackFile {
        name: raw.name.get_ref().clone(),
        path: path.into(),
        weight,
        reverse: raw.reverse,
        init,
    })
}

pub(super) fn track_process(cx: &Ctx, raw: &RawTrackProcess) -> Result<TrackProcess, ConfigError> {
    let k = |name: &str| format!("vrrp_track_process.{name}");
    let bad_process = |m: &str| cx.invalid(raw.process.span(), &k("process"), m.to_string());
    let mut words: Vec<String> = match raw.process.get_ref() {
        toml::Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        toml::Value::Array(a) => a
            .iter()
            .map(|w| w.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad_process("an array of strings: the program, then its parameters"))?,
        _ => {
            return Err(bad_process(
                "a name, or an array: the program, then its parameters",
            ))
        }
    };
    if words.is_empty() || words[0].is_empty() {
        return Err(bad_process("needs a process name"));
    }
    // A NUL separates the words of a command line: one inside a word could never match.
    if words.iter().any(|w| w.contains('\0')) {
        return Err(bad_process("a NUL byte cannot be part of a command line"));
    }
    let process = words.remove(0);
    // What a pass reads of each command line is this long: bounded.
    let line_len = process.len() + words.iter().map(|w| w.len() + 1).sum::<usize>() + 2;
    if line_len > CMDLINE_MAX {
        return Err(bad_process(&format!(
            "the program and its parameters are {line_len} bytes: at most {CMDLINE_MAX}"
        )));
    }
    let param_match = match &raw.param_match {
        None if words.is_empty() => None,
        // keepalived: parameters alone are matched exactly.
        None => Some(ParamMatch::Exact),
        Some(m) => Some(match m.get_ref().as_str() {
            "exact" => ParamMatch::Exact,
            "partial" => ParamMatch::Partial,
            "initial" => ParamMatch::Initial,
            other => {
                return Err(cx.invalid(
                    m.span(),
                    &k("param_match"),
                    format!("{other:?}: expected exact, partial or initial"),
                ))
            }
        }),
    };
    // Parameters live in the command line, so matching them matches the program there too.
    let full_command = raw.full_command || param_match.is_some();
    if !full_command && process.len() > COMM_MAX {
        // keepalived takes it and never matches: the kernel cuts process names at 15 bytes.
        return Err(bad_process(&format!(
            "{process:?} is longer than a process name can be ({COMM_MAX} bytes): \
             give its first {COMM_MAX} bytes, or set full_command to match the program path"
        )));
    }
    let weight = *raw.weight.get_ref();
    if !(-254..=254).contains(&weight) {
        return Err(cx.invalid(raw.weight.span(), &k("weight"), "must be -254..=254"));
    }
    let quorum_max = match &raw.quorum_max {
        None => u32::MAX,
        Some(q) if *q.get_ref() <= 65_535 => *q.get_ref(),
        Some(q) => return Err(cx.invalid(q.span(), &k("quorum_max"), "must be 0..=65535")),
    };
    let quorum = match &raw.quorum {
        // keepalived: `quorum_max 0` is "up while none runs" (with a quorum of 0 or 1).
        None if quorum_max == 0 => 0,
        None => 1,
        Some(q) if *q.get_ref() <= 1 && quorum_max == 0 => 0,
        Some(q) if !(1..=65_535).contains(q.get_ref()) => {
            return Err(cx.invalid(q.span(), &k("quorum"), "must be 1..=65535"))
        }
        Some(q) if *q.get_ref() > quorum_max => {
            return Err(cx.invalid(
                q.span(),
                &k("quorum"),
                format!("{} is above quorum_max {quorum_max}", q.get_ref()),
            ))
        }
        Some(q) => *q.get_ref(),
    };
    let delay = |v: &Option<Spanned<f64>>, key: &str| -> Result<Option<Duration>, ConfigError> {
        v.as_ref()
            .map(|d| seconds(cx, d, &k(key), 0.0, 3600.0))
            .transpose()
    };
    let both = delay(&raw.delay, "delay")?;
    Ok(TrackProcess {
        name: raw.name.get_ref().clone(),
        process,
        params: words,
        param_match,
        full_command,
        weight,
        reverse: raw.reverse,
        quorum,
        quorum_max,
        fork_delay: delay(&raw.fork_delay, "fork_delay")?
            .or(both)
            .unwrap_or_default(),
        terminate_delay: delay(&raw.terminate_delay, "terminate_delay")?
            .or(both)
            .unwrap_or_default(),
    })
}

fn tracks(cx: &Ctx, raw: &[RawTrack], key: &str) -> Result<Vec<Tracked>, ConfigError> {
    raw.iter().map(|t| track(cx, t, key)).collect()
}

fn notify(
    cx: &Ctx,
    m: &Option<Spanned<String>>,
    b: &Option<Spanned<String>>,
    f: &Option<Spanned<String>>,
    s: Option<&Spanned<String>>,
    g: &Option<Spanned<String>>,
    block: &str,
) -> Result<Notify, ConfigError> {
    Ok(Notify {
        master: opt_command(cx, m, &format!("{block}.notify_master"))?,
        backup: opt_command(cx, b, &format!("{block}.notify_backup"))?,
        fault: opt_command(cx, f, &format!("{block}.notify_fault"))?,
        stop: s
            .map(|s| command(cx, s, &format!("{block}.notify_stop")))
            .transpose()?,
        generic: opt_command(cx, g, &format!("{block}.notify"))?,
    })
}

/// What `global_defs` sets for every instance.
pub(super) struct InstanceDefaults {
    pub version: u8,
    /// `vrrp_garp_interval`, `vrrp_gna_interval`.
    pub garp_interval: Duration,
    pub gna_interval: Duration,
}

pub(super) fn instance(
    cx: &Ctx,
    raw: &RawInstance,
    defaults: &InstanceDefaults,
) -> Result<VrrpInstance, ConfigError> {
    let default_version = defaults.version;
    let k = |name: &str| format!("vrrp_instance.{name}");
    let version = match &raw.version {
        None => default_version,
        Some(v) => *v.get_ref(),
    };
    let version = match version {
        2 => VrrpVersion::V2,
        3 => VrrpVersion::V3,
        other => {
            let span = raw.version.as_ref().map_or(raw.name.span(), |v| v.span());
            return Err(cx.invalid(span, &k("version"), format!("{other}: expected 2 or 3")));
        }
    };
    let start_master = match &raw.state {
        None => false,
        Some(s) => match s.get_ref().as_str() {
            "MASTER" => true,
            "BACKUP" => false,
            other => {
                return Err(cx.invalid(
                    s.span(),
                    &k("state"),
                    format!("{other:?}: expected MASTER or BACKUP"),
                ))
            }
        },
    };
    let vrid = *raw.virtual_router_id.get_ref();
    if !(1..=255).contains(&vrid) {
        return Err(cx.invalid(
            raw.virtual_router_id.span(),
            &k("virtual_router_id"),
            "must be 1..=255",
        ));
    }
    let priority = *raw.priority.get_ref();
    if !(1..=255).contains(&priority) {
        return Err(cx.invalid(
            raw.priority.span(),
            &k("priority"),
            "must be 1..=254, or 255 for the address owner",
        ));
    }
    let advert_int_cs = match (&raw.advert_int, version) {
        (None, _) => 100,
        (Some(a), VrrpVersion::V2) => {
            let s = *a.get_ref();
            if s.fract() != 0.0 || !(1.0..=255.0).contains(&s) {
                return Err(cx.invalid(
                    a.span(),
                    &k("advert_int"),
                    "VRRPv2 takes whole seconds 1..=255",
                ));
            }
            (s as u16) * 100
        }
        (Some(a), VrrpVersion::V3) => {
            let cs = (*a.get_ref() * 100.0).round();
            if !(1.0..=4095.0).contains(&cs) || (cs - *a.get_ref() * 100.0).abs() > 1e-6 {
                return Err(cx.invalid(
                    a.span(),
                    &k("advert_int"),
                    "VRRPv3 takes 0.01..=40.95 seconds in hundredths",
                ));
            }
            cs as u16
        }
    };
    let preempt_delay = match &raw.preempt_delay {
        None => Duration::ZERO,
        Some(d) => seconds(cx, d, &k("preempt_delay"), 0.0, 1000.0)?,
    };
    if raw.nopreempt && start_master {
        let span = raw.state.as_ref().map_or(raw.name.span(), |s| s.span());
        return Err(cx.invalid(
            span,
            &k("nopreempt"),
            "nopreempt needs state BACKUP (keepalived ignores it with MASTER)",
        ));
    }
    // What the state machine refuses (`fsm::Config::validate`), refused here at its line:
    // a reload must never accept what the VRRP thread then cannot run.
    if raw.nopreempt && priority == 255 {
        return Err(cx.invalid(
            raw.priority.span(),
            &k("priority"),
            "the address owner (255) always preempts: it cannot have nopreempt",
        ));
    }
    if let (Some(d), false) = (&raw.preempt_delay, preempt_delay.is_zero()) {
        if raw.nopreempt {
            return Err(cx.invalid(
                d.span(),
                &k("preempt_delay"),
                "preempt_delay has no effect with nopreempt",
            ));
        }
        if start_master {
            return Err(cx.invalid(
                d.span(),
                &k("preempt_delay"),
                "preempt_delay needs state BACKUP (keepalived clears it with MASTER)",
            ));
        }
    }
    let auth_pass = match (&raw.authentication, version) {
        (None, _) => None,
        (Some(a), VrrpVersion::V3) => {
            return Err(cx.invalid(
                a.auth_type.span(),
                &k("authentication"),
                "VRRPv3 has no authentication (RFC 9568)",
            ))
        }
        (Some(a), VrrpVersion::V2) => {
            if a.auth_type.get_ref() != "PASS" {
                return Err(cx.invalid(
                    a.auth_type.span(),
                    &k("authentication.auth_type"),
                    "only PASS is supported (AH is not)",
                ));
            }
            let pass = a.auth_pass.get_ref().as_bytes();
            if pass.is_empty() || pass.len() > 8 {
                return Err(cx.invalid(
                    a.auth_pass.span(),
                    &k("authentication.auth_pass"),
                    "1 to 8 characters (keepalived would truncate)",
                ));
            }
            Some(pass.to_vec())
        }
    };
    let mut virtual_ipaddress = Vec::new();
    for v in raw.virtual_ipaddress.get_ref() {
        virtual_ipaddress.push(virtual_ip(cx, v)?);
    }
    if virtual_ipaddress.is_empty() {
        return Err(cx.invalid(
            raw.virtual_ipaddress.span(),
            &k("virtual_ipaddress"),
            "at least one address",
        ));
    }
    let v6 = virtual_ipaddress[0].addr.is_ipv6();
    if let Some(bad) = raw
        .virtual_ipaddress
        .get_ref()
        .iter()
        .zip(&virtual_ipaddress)
        .find(|(_, v)| v.addr.is_ipv6() != v6)
    {
        return Err(cx.invalid(
            bad.0.span(),
            &k("virtual_ipaddress"),
            "one address family per instance",
        ));
    }
    if v6 && version == VrrpVersion::V2 {
        return Err(cx.invalid(
            raw.virtual_ipaddress.span(),
            &k("virtual_ipaddress"),
            "IPv6 needs VRRP version 3",
        ));
    }
    let addr = |s: &Spanned<String>, key: &str| -> Result<IpAddr, ConfigError> {
        let a: IpAddr = s.get_ref().parse().map_err(|_| {
            cx.invalid(
                s.span(),
                key,
                format!("{:?} is not an IP address", s.get_ref()),
            )
        })?;
        if a.is_ipv6() != v6 {
            return Err(cx.invalid(s.span(), key, "not the family of the virtual addresses"));
        }
        Ok(a)
    };
    let unicast_src_ip = raw
        .unicast_src_ip
        .as_ref()
        .map(|s| addr(s, &k("unicast_src_ip")))
        .transpose()?;
    let unicast_peer = raw
        .unicast_peer
        .iter()
        .map(|s| addr(s, &k("unicast_peer")))
        .collect::<Result<Vec<_>, _>>()?;
    let repeat = |v: &Option<Spanned<u32>>, key: &str, default: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if (1..=255).contains(n.get_ref()) => Ok(*n.get_ref()),
            Some(n) => Err(cx.invalid(n.span(), key, "must be 1..=255")),
        }
    };
    let use_vmac = match &raw.use_vmac {
        None => None,
        Some(v) => {
            let bad = |m: String| cx.invalid(v.span(), &k("use_vmac"), m);
            let name = match v.get_ref() {
                toml::Value::Boolean(false) => None,
                toml::Value::Boolean(true) => Some(format!("vrrp.{vrid}")),
                toml::Value::String(n) => Some(n.clone()),
                _ => return Err(bad("true, or the interface's name".into())),
            };
            if let Some(n) = &name {
                // `%` is the kernel's name template, `all` and `default` name every
                // interface's settings in /proc/sys.
                if n.is_empty()
                    || n.len() >= 16
                    || n.contains(['/', ':', '%', '\0'])
                    || n.contains(char::is_whitespace)
                    || [".", "..", "all", "default"].contains(&n.as_str())
                {
                    return Err(bad(format!(
                        "{n:?} is not an interface name (at most 15 bytes, no '/', ':', '%' or space, not all or default)"
                    )));
                }
                if n == raw.interface.get_ref() {
                    return Err(bad(format!("{n:?} is the instance's interface")));
                }
            }
            name
        }
    };
    Ok(VrrpInstance {
        name: raw.name.get_ref().clone(),
        use_vmac,
        // keepalived: "unicast with use_vmac requires vmac_xmit_base - setting".
        vmac_xmit_base: raw.vmac_xmit_base || !unicast_peer.is_empty(),
        start_master,
        interface: raw.interface.get_ref().clone(),
        vrid: vrid as u8,
        priority: priority as u8,
        advert_int_cs,
        version,
        preempt: !raw.nopreempt,
        preempt_delay,
        auth_pass,
        virtual_ipaddress,
        unicast_src_ip,
        unicast_peer,
        track_interface: tracks(cx, &raw.track_interface, &k("track_interface"))?,
        track_script: tracks(cx, &raw.track_script, &k("track_script"))?,
        track_file: tracks(cx, &raw.track_file, &k("track_file"))?,
        track_process: tracks(cx, &raw.track_process, &k("track_process"))?,
        // Resolved against the virtual servers by `Config::parse`.
        track_virtual_server: tracks(cx, &raw.track_virtual_server, &k("track_virtual_server"))?,
        notify: notify(
            cx,
            &raw.notify_master,
            &raw.notify_backup,
            &raw.notify_fault,
            raw.notify_stop.as_ref(),
            &raw.notify,
            "vrrp_instance",
        )?,
        garp_master_delay: Duration::from_secs(
            raw.garp_master_delay
                .unwrap_or(DEFAULT_GARP_MASTER_DELAY)
                .into(),
        ),
        garp_master_repeat: repeat(
            &raw.garp_master_repeat,
            &k("garp_master_repeat"),
            DEFAULT_GARP_MASTER_REPEAT,
        )?,
        garp_master_refresh: Duration::from_secs(raw.garp_master_refresh.unwrap_or(0).into()),
        garp_master_refresh_repeat: repeat(
            &raw.garp_master_refresh_repeat,
            &k("garp_master_refresh_repeat"),
            1,
        )?,
        // 0 is keepalived's way to send nothing after a lower-priority advert.
        garp_lower_prio_repeat: match &raw.garp_lower_prio_repeat {
            Some(n) if *n.get_ref() == 0 => 0,
            v => repeat(
                v,
                &k("garp_lower_prio_repeat"),
                repeat(
                    &raw.garp_master_repeat,
                    &k("garp_master_repeat"),
                    DEFAULT_GARP_MASTER_REPEAT,
                )?,
            )?,
        },
        garp_lower_prio_delay: Duration::from_secs(
            raw.garp_lower_prio_delay
                .or(raw.garp_master_delay)
                .unwrap_or(DEFAULT_GARP_MASTER_DELAY)
                .into(),
        ),
        garp_interval: if v6 {
            defaults.gna_interval
        } else {
            defaults.garp_interval
        },
    })
}

pub(super) fn sync_group(cx: &Ctx, raw: &RawSyncGroup) -> Result<SyncGroup, ConfigError> {
    Ok(SyncGroup {
        name: raw.name.get_ref().clone(),
        members: raw.group.iter().map(|m| m.get_ref().clone()).collect(),
        notify: notify(
            cx,
            &raw.notify_master,
            &raw.notify_backup,
            &raw.notify_fault,
            None,
            &raw.notify,
            "vrrp_sync_group",
        )?,
    })
}

/// Checks across blocks: unique names, VRID unique per interface and family, tracked
/// scripts and sync-group members that exist, an instance in at most one group.
pub(super) fn cross_check(
    cx: &Ctx,
    scripts: &[RawScript],
    files: &[RawTrackFile],
    processes: &[RawTrackProcess],
    instances: &[RawInstance],
    checked: &[VrrpInstance],
    groups: &[RawSyncGroup],
) -> Result<(), ConfigError> {
    let mut file_names = HashSet::new();
    for f in files {
        if !file_names.insert(f.name.get_ref().as_str()) {
            return Err(cx.invalid(
                f.name.span(),
                "track_file.name",
                format!("{:?} is defined twice", f.name.get_ref()),
            ));
        }
    }
    let mut process_names = HashSet::new();
    for p in processes {
        if !process_names.insert(p.name.get_ref().as_str()) {
            return Err(cx.invalid(
                p.name.span(),
                "vrrp_track_process.name",
                format!("{:?} is defined twice", p.name.get_ref()),
            ));
        }
    }
    let mut names = HashSet::new();
    for s in scripts {
        if !names.insert(s.name.get_ref().as_str()) {
            return Err(cx.invalid(
                s.name.span(),
                "vrrp_script.name",
                format!("{:?} is defined twice", s.name.get_ref()),
            ));
        }
    }
    let mut inst_names = HashSet::new();
    let mut vmacs: HashMap<String, &str> = HashMap::new();
    let mut vrids: HashMap<(String, bool, u8), &str> = HashMap::new();
    for (raw, c) in instances.iter().zip(checked) {
        if !inst_names.insert(c.name.as_str()) {
            return Err(cx.invalid(
                raw.name.span(),
                "vrrp_instance.name",
                format!("{:?} is defined twice", c.name),
            ));
        }
        if let Some(other) = vrids.insert((c.interface.clone(), c.family_v6(), c.vrid), &c.name) {
            return Err(cx.invalid(
                raw.virtual_router_id.span(),
                "vrrp_instance.virtual_router_id",
                format!(
                    "{} is already used on {} by instance {other:?}",
                    c.vrid, c.interface
                ),
            ));
        }
        for (t, raw_t) in c.track_script.iter().zip(&raw.track_script) {
            if !names.contains(t.name.as_str()) {
                return Err(cx.invalid(
                    raw_t.span(),
                    "vrrp_instance.track_script",
                    format!("no vrrp_script {:?}", t.name),
                ));
            }
        }
        for (t, raw_t) in c.track_file.iter().zip(&raw.track_file) {
            if !file_names.contains(t.name.as_str()) {
                return Err(cx.invalid(
                    raw_t.span(),
                    "vrrp_instance.track_file",
                    format!("no track_file {:?}", t.name),
                ));
            }
        }
        if let Some(v) = &c.use_vmac {
            if let Some(other) = vmacs.insert(v.clone(), c.name.as_str()) {
                return Err(cx.invalid(
                    raw.use_vmac.as_ref().map_or(raw.name.span(), |u| u.span()),
                    "vrrp_instance.use_vmac",
                    format!("{v:?} is already instance {other:?}'s virtual MAC interface"),
                ));
            }
        }
        for (t, raw_t) in c.track_process.iter().zip(&raw.track_process) {
            if !process_names.contains(t.name.as_str()) {
                return Err(cx.invalid(
                    raw_t.span(),
                    "vrrp_instance.track_process",
                    format!("no vrrp_track_process {:?}", t.name),
                ));
            }
        }
    }
    let mut grouped = HashSet::new();
    let mut group_names = HashSet::new();
    for g in groups {
        if !group_names.insert(g.name.get_ref().as_str()) {
            return Err(cx.invalid(
                g.name.span(),
                "vrrp_sync_group.name",
                format!("{:?} is defined twice", g.name.get_ref()),
            ));
        }
        for m in &g.group {
            if !inst_names.contains(m.get_ref().as_str()) {
                return Err(cx.invalid(
                    m.span(),
                    "vrrp_sync_group.group",
                    format!("no vrrp_instance {:?}", m.get_ref()),
                ));
            }
            if !grouped.insert(m.get_ref().as_str()) {
                return Err(cx.invalid(
                    m.span(),
                    "vrrp_sync_group.group",
                    format!("{:?} is already in a sync group", m.get_ref()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// The seed's "Nginx + Keepalived" instance, in TOML.
    const SEED: &str = r#"[global_defs]
router_id = "NGINX_HA"

[dataplane]
interface = "eth0"

[[vrrp_script]]
name = "check_nginx"
script = "/etc/keepalived/check_nginx.sh"
interval = 3

[[vrrp_instance]]
name = "VI_1"
state = "BACKUP"
interface = "eth0"
virtual_router_id = 77
priority = 100
advert_int = 1
nopreempt = true
authentication = { auth_type = "PASS", auth_pass = "123456" }
virtual_ipaddress = ["192.0.2.100"]
track_script = ["check_nginx"]
notify_master = "/etc/keepalived/clean_arp.sh"

[[vrrp_sync_group]]
name = "VSG_1"
group = ["VI_1"]

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("lb.toml"), text)
    }

    #[test]
    fn garp_timers_and_their_defaults() {
        let text = "[global_defs]\nvrrp_garp_interval = 0.05\nvrrp_gna_interval = 0.2\n\
                    vrrp_startup_delay = 2.5\n\n\
                    [[vrrp_instance]]\nname = \"V4\"\ninterface = \"eth0\"\nvirtual_router_id = 1\n\
                    priority = 100\ngarp_master_repeat = 3\ngarp_master_delay = 7\n\
                    virtual_ipaddress = [\"192.0.2.100\"]\n\n\
                    [[vrrp_instance]]\nname = \"V6\"\ninterface = \"eth0\"\nvirtual_router_id = 2\n\
                    priority = 100\nversion = 3\ngarp_lower_prio_repeat = 9\ngarp_lower_prio_delay = 0\n\
                    virtual_ipaddress = [\"2001:db8::100/64\"]\n";
        let c = parse(text).unwrap();
        let (v4, v6) = (&c.vrrp_instances[0], &c.vrrp_instances[1]);
        // The lower-priority announcements default to the instance's garp_master_*.
        assert_eq!(
            (v4.garp_lower_prio_repeat, v4.garp_lower_prio_delay),
            (3, Duration::from_secs(7))
        );
        assert_eq!(
            (v6.garp_lower_prio_repeat, v6.garp_lower_prio_delay),
            (9, Duration::ZERO)
        );
        // ARP pacing for IPv4, NA pacing for IPv6.
        assert_eq!(v4.garp_interval, Duration::from_millis(50));
        assert_eq!(v6.garp_interval, Duration::from_millis(200));
        assert_eq!(c.global_defs.startup_delay(), Duration::from_millis(2500));
        for (bad, key) in [
            ("vrrp_garp_interval = 11", "global_defs.vrrp_garp_interval"),
            ("vrrp_gna_interval = -1", "global_defs.vrrp_gna_interval"),
            (
                "vrrp_startup_delay = 4000",
                "global_defs.vrrp_startup_delay",
            ),
        ] {
            let e = parse(&format!("[global_defs]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("lb.toml:2: `{key}`")), "{e}");
        }
        // 0: no burst after a lower-priority advert (keepalived's).
        let c = parse(&text.replace("garp_lower_prio_repeat = 9", "garp_lower_prio_repeat = 0"))
            .unwrap();
        assert_eq!(c.vrrp_instances[1].garp_lower_prio_repeat, 0);
        let e = parse(&text.replace("garp_lower_prio_repeat = 9", "garp_lower_prio_repeat = 256"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`vrrp_instance.garp_lower_prio_repeat`: must be 1..=255"),
            "{e}"
        );
    }

    #[test]
    fn seed_instance() {
        let c = parse(SEED).unwrap();
        let i = &c.vrrp_instances[0];
        assert_eq!((i.vrid, i.priority, i.advert_int_cs), (77, 100, 100));
        assert_eq!(i.version, VrrpVersion::V2);
        assert!(!i.preempt && !i.start_master);
        assert_eq!(i.auth_pass.as_deref(), Some(&b"123456"[..]));
        assert_eq!(
            i.virtual_ipaddress[0],
            VirtualIp {
                addr: "192.0.2.100".parse().unwrap(),
                prefix_len: 32,
                dev: None,
                label: None
            }
        );
        assert_eq!(
            i.track_script,
            vec![Tracked {
                name: "check_nginx".into(),
                weight: None,
                reverse: None
            }]
        );
        assert_eq!(
            i.notify.master.as_deref(),
            Some("/etc/keepalived/clean_arp.sh")
        );
        assert_eq!(
            (i.garp_master_delay, i.garp_master_repeat),
            (Duration::from_secs(5), 5)
        );
        let s = &c.vrrp_scripts[0];
        assert_eq!(
            (s.interval, s.timeout, s.weight, s.rise, s.fall),
            (Duration::from_secs(3), Duration::from_secs(3), 0, 1, 1)
        );
        assert_eq!(c.sync_groups[0].members, vec!["VI_1".to_string()]);
    }

    /// keepalived's `use_vmac [NAME]` and `vmac_xmit_base`.
    #[test]
    fn use_vmac_names_its_interface() {
        let with = |extra: &str| {
            SEED.replace(
                "nopreempt = true\n",
                &format!("nopreempt = true\n{extra}\n"),
            )
        };
        let c = parse(&with("use_vmac = true")).unwrap();
        let i = &c.vrrp_instances[0];
        assert_eq!(
            (i.use_vmac.as_deref(), i.vmac_xmit_base),
            (Some("vrrp.77"), false)
        );
        let c = parse(&with("use_vmac = \"vip0\"\nvmac_xmit_base = true")).unwrap();
        let i = &c.vrrp_instances[0];
        assert_eq!(
            (i.use_vmac.as_deref(), i.vmac_xmit_base),
            (Some("vip0"), true)
        );
        assert_eq!(
            parse(&with("use_vmac = false")).unwrap().vrrp_instances[0].use_vmac,
            None
        );
        // keepalived: "unicast with use_vmac requires vmac_xmit_base - setting".
        let c = parse(&with("use_vmac = true\nunicast_peer = [\"192.0.2.3\"]")).unwrap();
        assert!(c.vrrp_instances[0].vmac_xmit_base);
        for (extra, want) in [
            (
                "use_vmac = \"a-name-of-16-byte\"",
                "is not an interface name",
            ),
            ("use_vmac = \"eth0\"", "is the instance's interface"),
            ("use_vmac = 3", "true, or the interface's name"),
        ] {
            let e = parse(&with(extra)).unwrap_err().to_string();
            assert!(
                e.contains("`vrrp_instance.use_vmac`") && e.contains(want),
                "{e}"
            );
        }
        // IPv6 too (the virtual MAC 00:00:5e:00:02:VRID).
        let v6 = with("use_vmac = true")
            .replace("advert_int = 1\n", "version = 3\n")
            .replace(
                "authentication = { auth_type = \"PASS\", auth_pass = \"123456\" }\n",
                "",
            )
            .replace("\"192.0.2.100\"]", "\"2001:db8::100\"]")
            .replace("ip = \"192.0.2.100\"", "ip = \"2001:db8::100\"");
        let c = parse(&v6).unwrap();
        assert_eq!(c.vrrp_instances[0].use_vmac.as_deref(), Some("vrrp.77"));
        // Two instances, one interface name.
        let two = with("use_vmac = \"vip0\"")
            + "\n[[vrrp_instance]]\nname = \"VI_2\"\ninterface = \"eth0\"\nvirtual_router_id = 78\n\
               priority = 100\nuse_vmac = \"vip0\"\nvirtual_ipaddress = [\"192.0.2.101\"]\n";
        let e = parse(&two).unwrap_err().to_string();
        assert!(
            e.contains("already instance \"VI_1\"'s virtual MAC interface"),
            "{e}"
        );
    }

    /// The seed's nginx tracked without a script: keepalived's `vrrp_track_process`.
    #[test]
    fn track_process_blocks() {
        let with = |block: &str, entry: &str| {
            SEED.replace(
                "track_script = [\"check_nginx\"]",
                &format!("track_script = [\"check_nginx\"]\ntrack_process = [{entry}]"),
            ) + "\n[[vrrp_track_process]]\nname = \"nginx\"\n"
                + block
        };
        let c = parse(&with("process = \"nginx\"\ndelay = 2\n", "\"nginx\"")).unwrap();
        let p = &c.track_processes[0];
        assert_eq!(
            (
                p.process.as_str(),
                p.params.len(),
                p.param_match,
                p.full_command
            ),
            ("nginx", 0, None, false)
        );
        // keepalived's defaults: weight 0 (Fault), quorum 1, no maximum; delay sets both.
        assert_eq!((p.weight, p.quorum, p.quorum_max), (0, 1, u32::MAX));
        assert_eq!(
            (p.fork_delay, p.terminate_delay),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        assert_eq!(c.vrrp_instances[0].track_process[0].name, "nginx");
        // Parameters alone: exact, on the command line; an array keeps a space in one.
        let c = parse(&with(
            "process = [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]\n",
            "{ name = \"nginx\", weight = -20, reverse = true }",
        ))
        .unwrap();
        let p = &c.track_processes[0];
        assert_eq!(p.params, vec!["-g".to_string(), "daemon off;".into()]);
        assert_eq!(
            (p.param_match, p.full_command),
            (Some(ParamMatch::Exact), true)
        );
        let t = &c.vrrp_instances[0].track_process[0];
        assert_eq!((t.weight, t.reverse), (Some(-20), Some(true)));
        let c = parse(&with(
            "process = \"app -c\"\nparam_match = \"initial\"\n",
            "\"nginx\"",
        ))
        .unwrap();
        assert_eq!(c.track_processes[0].param_match, Some(ParamMatch::Initial));
        // quorum_max 0: up while none runs.
        let c = parse(&with(
            "process = \"nginx\"\nquorum = 1\nquorum_max = 0\n",
            "\"nginx\"",
        ))
        .unwrap();
        assert_eq!(
            (c.track_processes[0].quorum, c.track_processes[0].quorum_max),
            (0, 0)
        );
        for (block, entry, want) in [
            (
                "process = \"a-name-of-16-byte\"\n",
                "\"nginx\"",
                "lb.toml:39: `vrrp_track_process.process`: \"a-name-of-16-byte\" is longer",
            ),
            (
                "process = \"nginx\"\nquorum = 3\nquorum_max = 2\n",
                "\"nginx\"",
                "lb.toml:40: `vrrp_track_process.quorum`: 3 is above quorum_max 2",
            ),
            (
                "process = \"nginx\"\nparam_match = \"regex\"\n",
                "\"nginx\"",
                "lb.toml:40: `vrrp_track_process.param_match`: \"regex\": expected",
            ),
            (
                "process = []\n",
                "\"nginx\"",
                "lb.toml:39: `vrrp_track_process.process`: needs",
            ),
            (
                "process = \"nginx\"\n",
                "\"apache\"",
                "lb.toml:23: `vrrp_instance.track_process`: no vrrp_track_process \"apache\"",
            ),
            (
                "process = \"nginx\"\nweight = 255\n",
                "\"nginx\"",
                "lb.toml:40: `vrrp_track_process.weight`",
            ),
        ] {
            let e = parse(&with(block, entry)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}\nwant {want}");
        }
        // Full command: a path longer than a process name is fine.
        let c = parse(&with(
            "process = \"/usr/local/sbin/haproxy\"\nfull_command = true\n",
            "\"nginx\"",
        ))
        .unwrap();
        assert!(c.track_processes[0].full_command);
    }

    #[test]
    fn virtual_ipaddress_forms() {
        let text = SEED.replace(
            r#"virtual_ipaddress = ["192.0.2.100"]"#,
            r#"virtual_ipaddress = ["192.0.2.100/24 dev eth1 label eth1:vip", "192.0.2.101"]"#,
        );
        let c = parse(&text).unwrap();
        let v = &c.vrrp_instances[0].virtual_ipaddress[0];
        assert_eq!(
            (v.prefix_len, v.dev.as_deref(), v.label.as_deref()),
            (24, Some("eth1"), Some("eth1:vip"))
        );
    }

    #[test]
    fn v3_intervals_and_ipv6() {
        let text = SEED
            .replace("advert_int = 1\n", "advert_int = 0.01\nversion = 3\n")
            .replace(
                "authentication = { auth_type = \"PASS\", auth_pass = \"123456\" }\n",
                "",
            )
            .replace(
                r#"virtual_ipaddress = ["192.0.2.100"]"#,
                r#"virtual_ipaddress = ["2001:db8::100"]"#,
            )
            .replace(r#"ip = "192.0.2.100""#, r#"ip = "2001:db8::100""#);
        let c = parse(&text).unwrap();
        assert_eq!(c.vrrp_instances[0].advert_int_cs, 1);
        assert!(c.vrrp_instances[0].family_v6());
    }

    /// Each bad value names the file, its line and the key.
    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "virtual_router_id = 77",
                "virtual_router_id = 0",
                "lb.toml:16: `vrrp_instance.virtual_router_id`",
            ),
            (
                "priority = 100",
                "priority = 256",
                "lb.toml:17: `vrrp_instance.priority`",
            ),
            (
                "advert_int = 1\n",
                "advert_int = 1.5\n",
                "lb.toml:18: `vrrp_instance.advert_int`",
            ),
            (
                "state = \"BACKUP\"",
                "state = \"MASTER\"",
                "lb.toml:14: `vrrp_instance.nopreempt`",
            ),
            (
                "state = \"BACKUP\"",
                "state = \"ACTIVE\"",
                "lb.toml:14: `vrrp_instance.state`",
            ),
            (
                "auth_pass = \"123456\"",
                "auth_pass = \"123456789\"",
                "lb.toml:20: `vrrp_instance.authentication.auth_pass`",
            ),
            (
                "auth_type = \"PASS\"",
                "auth_type = \"AH\"",
                "lb.toml:20: `vrrp_instance.authentication.auth_type`",
            ),
            (
                r#"["192.0.2.100"]"#,
                r#"["192.0.2.100/33"]"#,
                "lb.toml:21: `vrrp_instance.virtual_ipaddress`",
            ),
            (
                r#"["192.0.2.100"]"#,
                r#"["192.0.2.100", "2001:db8::1"]"#,
                "lb.toml:21: `vrrp_instance.virtual_ipaddress`",
            ),
            (
                r#"track_script = ["check_nginx"]"#,
                r#"track_script = ["check_nginz"]"#,
                "lb.toml:22: `vrrp_instance.track_script`",
            ),
            (
                r#"group = ["VI_1"]"#,
                r#"group = ["VI_2"]"#,
                "lb.toml:27: `vrrp_sync_group.group`",
            ),
            (
                "notify_master = \"/etc",
                "notify_master = \"etc",
                "lb.toml:23: `vrrp_instance.notify_master`",
            ),
            (
                "interval = 3",
                "interval = 0",
                "lb.toml:10: `vrrp_script.interval`",
            ),
        ];
        for (from, to, want) in cases {
            assert!(SEED.contains(from), "{from}");
            let e = parse(&SEED.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{to}: {e}");
        }
        // A VIP no instance owns needs static = true.
        let e = parse(&SEED.replace(
            r#"ip = "192.0.2.100"
port"#,
            r#"ip = "192.0.2.200"
port"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("lb.toml:30: `virtual_server.ip`"), "{e}");
    }

    #[test]
    fn vrid_unique_per_interface_and_family() {
        let second = r#"
[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 77
priority = 50
virtual_ipaddress = ["192.0.2.101"]
"#;
        let e = parse(&format!("{SEED}{second}")).unwrap_err().to_string();
        assert!(
            e.contains("`vrrp_instance.virtual_router_id`") && e.contains("VI_1"),
            "{e}"
        );
        // The same VRID on another interface, or for IPv6, is fine.
        parse(&format!(
            "{SEED}{}",
            second.replace("interface = \"eth0\"", "interface = \"eth1\"")
        ))
        .unwrap();
        let v6 = second
            .replace("192.0.2.101", "2001:db8::101")
            .replace("priority = 50", "priority = 50\nversion = 3");
        parse(&format!("{SEED}{v6}")).unwrap();
    }
}
