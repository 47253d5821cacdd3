//! Health checking of real servers: keepalived's `TCP_CHECK`, `HTTP_GET`, `SSL_GET`,
//! `MISC_CHECK`, `DNS_CHECK`, `UDP_CHECK`, `PING_CHECK` and `SMTP_CHECK` (configured in
//! [`crate::config::check`]), the decision apart from the I/O:
//!
//! * [`probe`]: the I/O. One task per probe run, each bounded by its timeout, sending its
//!   [`ProbeResult`] to one place.
//! * [`state`] and [`engine`]: the decision, with no I/O and time passed in. [`state`] is
//!   keepalived's retry rule for one check; [`engine`] schedules every check (`delay_loop`,
//!   `delay_before_retry`, `warmup`), combines a server's checks (all must pass; a dynamic
//!   `MISC_CHECK` sets the weight) and says what changed.
//! * [`Checkers`]: the runtime. One task carries out the engine's outputs: starts probes,
//!   sends [`HealthEvent`]s, runs `notify_up`/`notify_down` (with [`run_command`], as the
//!   script user, with a timeout, never waited for).
//!
//! # What the consumer sees
//!
//! Every real server of the configuration is announced once with its initial state (up, or
//! down when `alpha`), when [`Checkers::start`] or [`Checkers::reload`] first sees it; after
//! that only confirmed changes are sent: up/down, and a new `misc_dynamic` weight while up.
//! Events carry the whole state, so applying them in order, after a [`Checkers::snapshot`] or
//! from the start, is always right. A real server without checks is always up (keepalived
//! without a checker); it is in the snapshot with no checks, and changes only when a reload
//! gives it some (or takes the failing ones away: then it is announced up).
//!
//! # Reload
//!
//! As keepalived's `migrate_checkers`: a check whose configuration (kind, target, timing,
//! script user) is unchanged keeps its state, its retry count and its timer; a removed one
//! stops (its probe is cancelled: a script is killed); a new one starts after its warmup.
//!
//! # Logs
//!
//! A change of a real server's state is always logged. A failing probe is logged at most once
//! per [`LOG_EVERY`] per check, with the number of failures not logged; so are failing hooks.
pub mod datagram;
pub mod engine;
pub mod http;
pub mod ping;
pub mod probe;
pub mod smtp;
pub mod state;
pub mod tls;
pub mod tunnel_wire;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::{
    sync::{mpsc, Notify},
    task::{AbortHandle, JoinHandle, JoinSet},
};
use tracing::{debug, info, warn};

use engine::{BackendKey, BackendSpec, CheckId, CheckSpec, Engine, Output};
pub use engine::{ProbeResult, Scope};
use probe::ProbeSpec;
use tls::TlsClient;

use crate::{
    config::{check::CheckKind, Config, RefKind},
    log_limit::{LogLimit, LOG_EVERY},
    script::{self, run_command, RunOutcome, ScriptUser, UserError, DEFAULT_HOOK_TIMEOUT},
};

pub use crate::model::ServiceKey;

/// A real server's state, announced (see the module documentation for when).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthEvent {
    pub service: ServiceKey,
    pub backend: SocketAddr,
    pub up: bool,
    /// The weight a `misc_dynamic` `MISC_CHECK` set (its exit status - 2); `None`: the
    /// configured weight.
    pub weight: Option<u32>,
}

/// How a real server is doing, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    /// All its checks pass.
    pub up: bool,
    /// Set by a `misc_dynamic` check; `None`: the configured weight.
    pub weight: Option<u32>,
    /// How long the most recent successful probe (of any of its checks) took.
    pub last_latency: Option<Duration>,
    /// Why the latest probe of a check failed, for the first check whose latest probe did.
    pub last_error: Option<String>,
    /// Each check, in configuration order (`TCP_CHECK`s, `HTTP_GET`s, `MISC_CHECK`s).
    pub checks: Vec<CheckHealth>,
    /// Failed probes so far (retries included).
    pub failures: u64,
}

impl BackendHealth {
    /// Every check has reported at least once (a server without checks counts as checked).
    /// Before that, `up` is only the initial assumption (up, or down under `alpha`): a
    /// status display can call it "unknown".
    pub fn checked(&self) -> bool {
        self.checks.iter().all(|c| c.probes > 0)
    }
}

/// One check of a real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckHealth {
    /// keepalived's block name: `TCP_CHECK`, `HTTP_GET`, `SSL_GET`, `DNS_CHECK`....
    pub kind: &'static str,
    pub up: bool,
    /// Probes run so far.
    pub probes: u64,
    /// Failed probes so far.
    pub failures: u64,
    /// How long its last successful probe took.
    pub last_latency: Option<Duration>,
    /// Why its latest probe failed; `None` when it passed.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("global_defs.script_user: {0}")]
    ScriptUser(#[source] UserError),
    #[error("real_server {backend} of {service}: MISC_CHECK user: {source}")]
    MiscUser {
        service: String,
        backend: SocketAddr,
        #[source]
        source: UserError,
    },
    /// keepalived's `enable_script_security`.
    #[error(
        "real_server {backend} of {service}: {what} {program}: refusing to run as root: {reason}"
    )]
    UnsafeScript {
        service: String,
        backend: SocketAddr,
        what: &'static str,
        program: String,
        reason: String,
    },
    #[error(
        "real_server {backend} of {service}: only one check can set its weight (a MISC_CHECK \
         with misc_dynamic, a FILE_CHECK with a weight)"
    )]
    ManyWeights {
        service: String,
        backend: SocketAddr,
    },
    /// An SSL_GET's `ca_file` that cannot be read or holds no usable certificate.
    #[error("{}:{line}: `real_server.SSL_GET.ca_file`: {reason}", file.display())]
    Tls {
        file: std::path::PathBuf,
        line: usize,
        reason: String,
    },
}

/// What [`Checkers::start`] would refuse in `config` (an unknown user, an unsafe script), for
/// `lb-daemon check`: the same code, without starting anything.
pub fn validate(config: &Config) -> Result<(), HealthError> {
    specs(config, Scope::All).map(|_| ())
}

/// The engine's view of `config`, and the user hooks run as. Resolves every user and, with
/// `enable_script_security` (on unless false), refuses scripts run as root that others could
/// replace.
/// The checks of the services in `scope`.
fn specs(config: &Config, scope: Scope<'_>) -> Result<(Vec<BackendSpec>, ScriptUser), HealthError> {
    let default_user = config.global_defs.script_user.as_deref();
    let check_safety = config.global_defs.enable_script_security != Some(false);
    let hook_user = ScriptUser::resolve(default_user).map_err(HealthError::ScriptUser)?;
    let mut out = Vec::new();
    // One TLS client per distinct SSL_GET setting: a CA file is read once, not once per
    // real server, and its certificates are held once.
    let mut tls_clients: HashMap<crate::config::check::Tls, TlsClient> = HashMap::new();
    for vs in &config.virtual_servers {
        let service = vs.key();
        if !scope.has(&service) {
            continue;
        }
        for rs in &vs.real_servers {
            let unsafe_script = |what, program: &str, user: &ScriptUser| {
                if !check_safety || !user.is_root() {
                    return Ok(());
                }
                script::check_safety(Path::new(program)).map_err(|reason| {
                    HealthError::UnsafeScript {
                        service: service.to_string(),
                        backend: rs.addr,
                        what,
                        program: program.to_string(),
                        reason,
                    }
                })
            };
            let mut checks = Vec::new();
            for c in &rs.checks.checks {
                let probe = match &c.kind {
                    CheckKind::Tcp(conn) => ProbeSpec::Tcp(*conn),
                    CheckKind::TcpTunnel(t) => ProbeSpec::TcpTunnel(*t),
                    CheckKind::Http(h) => match &h.tls {
                        None => ProbeSpec::Http(h.clone()),
                        Some(tls) => ProbeSpec::Ssl {
                            check: h.clone(),
                            client: match tls_clients.get(tls) {
                                Some(c) => c.clone(),
                                None => {
                                    let c = TlsClient::new(tls).map_err(|reason| {
                                        let at = tls.ca_file.as_ref().and_then(|ca| {
                                            config.scripts.iter().find(|r| {
                                                r.kind == RefKind::Read && r.program == ca.path
                                            })
                                        });
                                        HealthError::Tls {
                                            file: config.file.clone(),
                                            line: at.map_or(0, |r| r.line),
                                            reason,
                                        }
                                    })?;
                                    tls_clients.insert(tls.clone(), c.clone());
                                    c
                                }
                            },
                        },
                    },
                    CheckKind::Dns(d) => ProbeSpec::Dns(d.clone()),
                    CheckKind::Udp(u) => ProbeSpec::Udp(u.clone()),
                    CheckKind::Ping(p) => ProbeSpec::Ping(*p),
                    CheckKind::Smtp(m) => ProbeSpec::Smtp(m.clone()),
                    CheckKind::File(f) => {
                        // Config::parse has checked that the track_file exists.
                        let Some(tf) = config.track_files.iter().find(|t| t.name == f.track_file)
                        else {
                            continue;
                        };
                        // keepalived's `file_end_handler`: a FILE_CHECK weight of 0 is no
                        // weight (the track_file's, with its reverse); a weight given has
                        // its own reverse, false unless said.
                        let (weight, reverse) = match f.weight {
                            Some(w) if w != 0 => (w, f.reverse.unwrap_or(false)),
                            _ => (tf.weight, f.reverse.unwrap_or(tf.reverse)),
                        };
                        ProbeSpec::File(probe::FileProbe::new(
                            tf.name.clone(),
                            tf.path.clone(),
                            weight,
                            reverse,
                            rs.weight,
                        ))
                    }
                    CheckKind::Misc(m) => {
                        let user = ScriptUser::resolve(m.user.as_deref().or(default_user))
                            .map_err(|source| HealthError::MiscUser {
                                service: service.to_string(),
                                backend: rs.addr,
                                source,
                            })?;
                        if let Some(program) = m.command.first() {
                            unsafe_script("MISC_CHECK", program, &user)?;
                        }
                        ProbeSpec::Misc {
                            check: m.clone(),
                            user,
                        }
                    }
                };
                checks.push(CheckSpec {
                    probe,
                    timing: c.timing,
                });
            }
            // Each would set the weight on its own, and they would take turns.
            if checks.iter().filter(|c| engine::is_dynamic(c)).count() > 1 {
                return Err(HealthError::ManyWeights {
                    service: service.to_string(),
                    backend: rs.addr,
                });
            }
            let hook = |what, line: &Option<String>| -> Result<_, HealthError> {
                let words: Vec<String> = line
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if words.is_empty() {
                    return Ok(None);
                }
                unsafe_script(what, &words[0], &hook_user)?;
                Ok(Some(words))
            };
            let notify_up = hook("notify_up", &rs.checks.notify_up)?;
            let notify_down = hook("notify_down", &rs.checks.notify_down)?;
            out.push(BackendSpec {
                service,
                backend: rs.addr,
                checks,
                notify_up,
                notify_down,
            });
        }
    }
    Ok((out, hook_user))
}

struct Core {
    engine: Engine,
    /// Outputs of a reload, for the task to carry out.
    outbox: Vec<Output>,
    hook_user: ScriptUser,
}

struct Shared {
    core: Mutex<Core>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // Nothing panics while holding it; if something did, the state is still usable.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The health checks of a configuration, running. Dropping it stops every probe and hook.
pub struct Checkers {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Checkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkers").finish_non_exhaustive()
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// A reload's checks, resolved and checked, not yet running (see [`Checkers::prepare`]).
pub struct PreparedChecks {
    specs: Vec<BackendSpec>,
    hook_user: ScriptUser,
}

impl Checkers {
    /// Starts the checks of `config` (needs a Tokio runtime); events go to `tx`. Every
    /// script user is resolved and every script vetted first, so an error starts nothing.
    pub fn start(config: &Config, tx: mpsc::Sender<HealthEvent>) -> Result<Self, HealthError> {
        Self::start_seeded(config, tx, std::collections::HashSet::new())
    }

    /// [`Checkers::start`], the real servers of `down` starting down (see
    /// [`Engine::seed_down`]): what a previous run of the daemon left them.
    pub fn start_seeded(
        config: &Config,
        tx: mpsc::Sender<HealthEvent>,
        down: std::collections::HashSet<(ServiceKey, SocketAddr)>,
    ) -> Result<Self, HealthError> {
        let (specs, hook_user) = specs(config, Scope::All)?;
        let mut engine = Engine::new(seed());
        engine.seed_down(down);
        let outbox = engine.reconcile(specs, Instant::now());
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                engine,
                outbox,
                hook_user,
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(run(shared.clone(), tx));
        Ok(Checkers { shared, task })
    }

    /// Applies a new configuration (see the module documentation). On error nothing
    /// changes. When it returns, [`Checkers::snapshot`] already reflects it.
    /// Only the services in `scope` are looked at: the others' checks go on as they are.
    /// `health`, a [`Checkers::snapshot`], is brought up to date for them (without copying
    /// the others again: at 100,000 real servers a whole snapshot takes tens of ms).
    pub fn reload(
        &mut self,
        config: &Config,
        scope: Scope<'_>,
        health: &mut HashMap<(ServiceKey, SocketAddr), BackendHealth>,
    ) -> Result<(), HealthError> {
        let prepared = Checkers::prepare(config, scope)?;
        self.commit(prepared, scope, health);
        Ok(())
    }

    /// What [`Checkers::commit`] will run for `config` (every user resolved, every script
    /// checked), with nothing running changed.
    pub fn prepare(config: &Config, scope: Scope<'_>) -> Result<PreparedChecks, HealthError> {
        let (specs, hook_user) = specs(config, scope)?;
        Ok(PreparedChecks { specs, hook_user })
    }

    /// Puts [`Checkers::prepare`]d checks in place for the services in `scope` (the scope
    /// they were prepared for); nothing here can fail. `health` is brought up to date as
    /// by [`Checkers::reload`].
    pub fn commit(
        &mut self,
        prepared: PreparedChecks,
        scope: Scope<'_>,
        health: &mut HashMap<(ServiceKey, SocketAddr), BackendHealth>,
    ) {
        let PreparedChecks { specs, hook_user } = prepared;
        let mut core = self.shared.lock();
        let before = match scope {
            Scope::All => Vec::new(),
            Scope::Services(_) => core.engine.keys_in(scope).collect(),
        };
        let out = core.engine.reconcile_in(scope, specs, Instant::now());
        core.outbox.extend(out);
        core.hook_user = hook_user;
        match scope {
            Scope::All => *health = core.engine.snapshot(),
            Scope::Services(_) => {
                for key in before {
                    health.remove(&key);
                }
                health.extend(core.engine.snapshot_in(scope));
            }
        }
        drop(core);
        self.shared.wake.notify_one();
    }

    /// Every real server of the configuration, and how it is doing.
    pub fn snapshot(&self) -> HashMap<(ServiceKey, SocketAddr), BackendHealth> {
        self.shared.lock().engine.snapshot()
    }

    /// Brings `health`, a [`Checkers::snapshot`], up to date for the services in `scope`,
    /// whose real servers are the same (their verdicts moved).
    pub fn refresh(
        &self,
        health: &mut HashMap<(ServiceKey, SocketAddr), BackendHealth>,
        scope: Scope<'_>,
    ) {
        match scope {
            Scope::All => *health = self.snapshot(),
            Scope::Services(_) => health.extend(self.shared.lock().engine.snapshot_in(scope)),
        }
    }

    /// How each real server of `config` is doing, in the order of its services and their
    /// real servers (`None`: not checked by these checkers). What status shows: one walk
    /// of the checkers' table, where a snapshot then a lookup per real server cost 80 ms at
    /// 100,000 of them.
    pub fn in_order(&self, config: &Config) -> Vec<Option<BackendHealth>> {
        self.shared
            .lock()
            .engine
            .health_in_order(&config.virtual_servers)
    }
}

impl Drop for Checkers {
    fn drop(&mut self) {
        // Dropping the task drops its JoinSet, which aborts the probes and hooks; a
        // script's guard then kills its process group.
        self.task.abort();
    }
}

/// A finished probe.
struct Done {
    id: CheckId,
    key: BackendKey,
    kind: &'static str,
    result: ProbeResult,
}

/// Sends a probe's result; if the probe never produced one (it panicked, or was aborted),
/// a failure, so that its check is never left waiting for a result that cannot come. (The
/// engine ignores the result of an aborted probe: its check is gone.)
struct Report {
    done: mpsc::UnboundedSender<Done>,
    id: CheckId,
    key: BackendKey,
    kind: &'static str,
    start: Instant,
    sent: bool,
}

impl Report {
    fn send(&mut self, result: ProbeResult) {
        self.sent = true;
        let _ = self.done.send(Done {
            id: self.id,
            key: self.key,
            kind: self.kind,
            result,
        });
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.sent {
            let result = ProbeResult {
                latency: self.start.elapsed(),
                outcome: Err("the probe ended without a result".into()),
            };
            self.send(result);
        }
    }
}

async fn run(shared: Arc<Shared>, tx: mpsc::Sender<HealthEvent>) {
    // Unbounded, yet bounded: each check has at most one probe running.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut tasks = JoinSet::new();
    let mut probes: HashMap<CheckId, AbortHandle> = HashMap::new();
    let mut logs: HashMap<CheckId, LogLimit> = HashMap::new();
    let hook_log = Arc::new(Mutex::new(LogLimit::new(LOG_EVERY)));
    loop {
        let (outputs, deadline, hook_user) = {
            let mut core = shared.lock();
            let mut outputs = std::mem::take(&mut core.outbox);
            outputs.extend(core.engine.poll(Instant::now()));
            (outputs, core.engine.next_deadline(), core.hook_user.clone())
        };
        for output in outputs {
            match &output {
                Output::Event(e) => log_event(e),
                Output::Initial(e) => debug!(
                    service = %e.service.to_string(),
                    backend = %e.backend,
                    up = e.up,
                    "health checks of real server {} start", e.backend
                ),
                _ => {}
            }
            match output {
                Output::Probe { id, key, probe } => {
                    let mut report = Report {
                        done: done_tx.clone(),
                        id,
                        key,
                        kind: probe.name(),
                        start: Instant::now(),
                        sent: false,
                    };
                    let handle = tasks.spawn(async move {
                        let result = probe::run(&probe).await;
                        report.send(result);
                    });
                    probes.insert(id, handle);
                }
                Output::Cancel { id } => {
                    if let Some(handle) = probes.remove(&id) {
                        handle.abort();
                    }
                    logs.remove(&id);
                }
                Output::Event(event) | Output::Initial(event) => {
                    if tx.send(event).await.is_err() {
                        debug!("health events: nobody listens any more; stopping the checks");
                        return;
                    }
                }
                Output::Hook { argv, event } => {
                    let user = hook_user.clone();
                    let log = hook_log.clone();
                    tasks.spawn(async move {
                        let outcome = run_command(&argv, &user, DEFAULT_HOOK_TIMEOUT).await;
                        report_hook(&argv[0], &event, &outcome, &log);
                    });
                }
            }
        }
        while tasks.try_join_next().is_some() {}
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = shared.wake.notified() => {}
            Some(done) = done_rx.recv() => {
                // Not running any more: cancelled by a reload; the engine ignores it too.
                let cancelled = probes.remove(&done.id).is_none();
                if let (Err(e), false) = (&done.result.outcome, cancelled) {
                    let limit = logs.entry(done.id).or_insert_with(|| LogLimit::new(LOG_EVERY));
                    if let Some(suppressed) = limit.allow() {
                        warn!(
                            service = %done.key.0.to_string(),
                            backend = %done.key.1,
                            check = done.kind,
                            suppressed,
                            "{} of real server {} failed: {e}", done.kind, done.key.1
                        );
                    }
                }
                let mut core = shared.lock();
                let out = core.engine.record(done.id, done.result, Instant::now());
                core.outbox.extend(out);
            }
        }
    }
}

fn log_event(e: &HealthEvent) {
    let service = e.service.to_string();
    match (e.up, e.weight) {
        (true, None) => {
            info!(%service, backend = %e.backend, "real server {} of {service} is up", e.backend)
        }
        (true, Some(w)) => {
            info!(%service, backend = %e.backend, weight = w, "real server {} of {service} is up, weight {w}", e.backend)
        }
        (false, _) => {
            warn!(%service, backend = %e.backend, "real server {} of {service} is down", e.backend)
        }
    }
}

fn report_hook(program: &str, event: &HealthEvent, outcome: &RunOutcome, log: &Mutex<LogLimit>) {
    let what = if event.up { "notify_up" } else { "notify_down" };
    if outcome.success() {
        debug!("{what} {program} for {}: {outcome}", event.backend);
        return;
    }
    let allowed = log.lock().map(|mut l| l.allow()).unwrap_or(Some(0));
    match allowed {
        Some(suppressed) => warn!(
            suppressed,
            "{what} {program} for real server {} of {}: {outcome}",
            event.backend,
            event.service.to_string()
        ),
        None => debug!("{what} {program} for {}: {outcome}", event.backend),
    }
}

#[cfg(test)]
mod tests;
