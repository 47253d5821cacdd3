//! Every check of every real server, scheduled and decided without I/O: time comes in as an
//! argument, probes go out as [`Output::Probe`] and their results come back through
//! [`Engine::record`]. The runtime ([`super::Checkers`]) only carries these out, so
//! everything here runs in unit tests on a virtual clock.
//!
//! A real server is up while all its checks are up ([`CheckState`] decides each), which is
//! keepalived's rule (`update_svr_checker_state`: the server is alive when its list of failed
//! checkers is empty). A `MISC_CHECK` with `misc_dynamic` also sets its weight.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    probe::ProbeSpec,
    state::{CheckState, Next},
    BackendHealth, CheckHealth, HealthEvent, ServiceKey,
};
use crate::config::check::{MiscCheck, Timing};

/// A real server of a service.
pub type BackendKey = (ServiceKey, SocketAddr);

/// A check, unique for the life of an [`Engine`] (never reused).
pub type CheckId = u64;

/// One check as the engine runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub probe: ProbeSpec,
    pub timing: Timing,
}

/// A real server and its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    pub service: ServiceKey,
    pub backend: SocketAddr,
    pub checks: Vec<CheckSpec>,
    pub notify_up: Option<Vec<String>>,
    pub notify_down: Option<Vec<String>>,
}

/// How a probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub latency: Duration,
    /// `Ok(Some(w))`: up with weight `w` (`misc_dynamic`); `Err`: why it failed.
    pub outcome: Result<Option<u32>, String>,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Start a probe and hand its result to [`Engine::record`].
    Probe {
        id: CheckId,
        key: BackendKey,
        probe: ProbeSpec,
    },
    /// The check is gone: stop its probe if one runs, forget it.
    Cancel { id: CheckId },
    /// A real server's state changed.
    Event(HealthEvent),
    /// A real server seen for the first time, and its initial state.
    Initial(HealthEvent),
    /// Run `notify_up`/`notify_down`.
    Hook {
        argv: Vec<String>,
        event: HealthEvent,
    },
}

struct Backend {
    notify_up: Option<Vec<String>>,
    notify_down: Option<Vec<String>>,
    checks: Vec<CheckId>,
    /// The last weight a dynamic MISC_CHECK set.
    weight: Option<u32>,
    /// What was last announced.
    announced: (bool, Option<u32>),
    failures: u64,
}

struct Slot {
    key: BackendKey,
    spec: CheckSpec,
    state: CheckState,
    /// When the next run starts; `None` while one runs.
    due: Option<Instant>,
    probes: u64,
    failures: u64,
    /// How long the last successful probe took, and when it ended.
    last_latency: Option<Duration>,
    last_ok: Option<Instant>,
    last_error: Option<String>,
}

/// All checks of a configuration and their state.
pub struct Engine {
    rng: u64,
    next_id: CheckId,
    backends: BTreeMap<BackendKey, Backend>,
    checks: BTreeMap<CheckId, Slot>,
    /// Real servers whose first checks start from "down", as under `alpha`: the ones a
    /// previous run of the daemon had found down (see [`Engine::seed_down`]).
    initially_down: std::collections::HashSet<BackendKey>,
}

/// Whether a check sets its real server's weight (a MISC_CHECK with `misc_dynamic`, a
/// weighted FILE_CHECK).
pub(super) fn is_dynamic(spec: &CheckSpec) -> bool {
    match &spec.probe {
        ProbeSpec::Misc {
            check: MiscCheck { dynamic, .. },
            ..
        } => *dynamic,
        ProbeSpec::File(f) => f.weight != 0,
        _ => false,
    }
}

impl Engine {
    /// `seed` drives the warmup delays.
    pub fn new(seed: u64) -> Self {
        Engine {
            rng: seed,
            next_id: 0,
            backends: BTreeMap::new(),
            checks: BTreeMap::new(),
            initially_down: Default::default(),
        }
    }

    /// The real servers a previous run of the daemon left down: their checks start as
    /// under `alpha` (down until the first success), so that a restart neither sends new
    /// flows to a server known dead nor waits for `retry` failures to find it so again.
    /// Only checks added by the next [`Engine::reconcile`] are affected.
    pub fn seed_down(&mut self, keys: impl IntoIterator<Item = BackendKey>) {
        self.initially_down = keys.into_iter().collect();
    }

    /// splitmix64: a uniform fraction in [0, 1).
    fn fraction(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn add_check(&mut self, key: BackendKey, spec: CheckSpec, now: Instant) -> CheckId {
        let id = self.next_id;
        self.next_id += 1;
        // keepalived's `register_checkers_thread`: "wait for a random timeout to begin
        // checker thread. It helps avoiding multiple simultaneous checks to the same RS."
        let warmup = spec.timing.warmup.mul_f64(self.fraction());
        self.checks.insert(
            id,
            Slot {
                key,
                state: CheckState::new(
                    spec.timing.alpha || self.initially_down.contains(&key),
                    spec.timing.retry,
                ),
                spec,
                due: Some(now + warmup),
                probes: 0,
                failures: 0,
                last_latency: None,
                last_ok: None,
                last_error: None,
            },
        );
        id
    }

    fn remove_check(&mut self, id: CheckId, out: &mut Vec<Output>) {
        if self.checks.remove(&id).is_some() {
            out.push(Output::Cancel { id });
        }
    }

    /// The state a real server is in now: up when all its checks are.
    fn current(&self, b: &Backend) -> (bool, Option<u32>) {
        let up = b
            .checks
            .iter()
            .all(|id| self.checks.get(id).is_none_or(|s| s.state.is_up()));
        (up, b.weight)
    }

    /// Announces `key`'s state if it changed: always when up/down changes, and a weight
    /// change while up. Hooks run on up/down changes.
    fn announce(&mut self, key: &BackendKey, out: &mut Vec<Output>) {
        let Some(b) = self.backends.get(key) else {
            return;
        };
        let (up, weight) = self.current(b);
        let (was_up, was_weight) = b.announced;
        if up == was_up && (!up || weight == was_weight) {
            return;
        }
        let event = HealthEvent {
            service: key.0,
            backend: key.1,
            up,
            weight,
        };
        out.push(Output::Event(event.clone()));
        let hook = if up { &b.notify_up } else { &b.notify_down };
        if up != was_up {
            if let Some(argv) = hook {
                out.push(Output::Hook {
                    argv: argv.clone(),
                    event,
                });
            }
        }
        if let Some(b) = self.backends.get_mut(key) {
            b.announced = (up, weight);
        }
    }

    /// Makes the checks those of `wanted`. A check whose specification is unchanged keeps
    /// its state and its timer; removed ones are cancelled; new ones start after their
    /// warmup. A real server seen for the first time is announced with its initial state (up,
    /// or down under `alpha`), without hooks; one whose state changes because checks came or
    /// went is announced like any change. Real servers listed twice count once (the first).
    pub fn reconcile(
        &mut self,
        wanted: impl IntoIterator<Item = BackendSpec>,
        now: Instant,
    ) -> Vec<Output> {
        self.reconcile_in(Scope::All, wanted, now)
    }

    /// [`Engine::reconcile`] of the services in `scope` only: `wanted` holds theirs, and
    /// the other services' real servers are left as they are (a reload that changed a few
    /// services of thousands).
    pub fn reconcile_in(
        &mut self,
        scope: Scope<'_>,
        wanted: impl IntoIterator<Item = BackendSpec>,
        now: Instant,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let mut specs: BTreeMap<BackendKey, BackendSpec> = BTreeMap::new();
        for spec in wanted {
            if scope.has(&spec.service) {
                specs.entry((spec.service, spec.backend)).or_insert(spec);
            }
        }
        let gone: Vec<BackendKey> = self
            .keys_in(scope)
            .filter(|k| !specs.contains_key(k))
            .collect();
        for key in gone {
            if let Some(b) = self.backends.remove(&key) {
                for id in b.checks {
                    self.remove_check(id, &mut out);
                }
            }
        }
        for (key, spec) in specs {
            let dynamic = spec.checks.iter().any(is_dynamic);
            let Some(b) = self.backends.get_mut(&key) else {
                let checks = spec
                    .checks
                    .into_iter()
                    .map(|c| self.add_check(key, c, now))
                    .collect();
                let mut b = Backend {
                    notify_up: spec.notify_up,
                    notify_down: spec.notify_down,
                    checks,
                    weight: None,
                    announced: (true, None),
                    failures: 0,
                };
                b.announced = self.current(&b);
                // A server without checks is up from the start and stays so: nothing to
                // announce (a node with 100,000 such servers would otherwise send as many
                // events at every start).
                if !b.checks.is_empty() {
                    out.push(Output::Initial(HealthEvent {
                        service: key.0,
                        backend: key.1,
                        up: b.announced.0,
                        weight: None,
                    }));
                }
                self.backends.insert(key, b);
                continue;
            };
            b.notify_up = spec.notify_up;
            b.notify_down = spec.notify_down;
            if !dynamic {
                b.weight = None;
            }
            let mut old = std::mem::take(&mut b.checks);
            let mut kept = Vec::new();
            for c in spec.checks {
                let same = old
                    .iter()
                    .position(|id| self.checks.get(id).is_some_and(|s| s.spec == c));
                match same {
                    Some(i) => kept.push(old.remove(i)),
                    None => kept.push(self.add_check(key, c, now)),
                }
            }
            for id in old {
                self.remove_check(id, &mut out);
            }
            if let Some(b) = self.backends.get_mut(&key) {
                b.checks = kept;
            }
            self.announce(&key, &mut out);
        }
        // A seed is for the first reconcile only: a check a later reload adds starts as its
        // own `alpha` says.
        self.initially_down.clear();
        out
    }

    /// Starts every check that is due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        for (id, slot) in &mut self.checks {
            if slot.due.is_some_and(|due| due <= now) {
                slot.due = None;
                out.push(Output::Probe {
                    id: *id,
                    key: slot.key,
                    probe: slot.spec.probe.clone(),
                });
            }
        }
        out
    }

    /// When [`Engine::poll`] next has something to start.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.checks.values().filter_map(|s| s.due).min()
    }

    /// A probe of check `id` ended at `now`. Results of checks that are gone, or that were
    /// not running, are ignored.
    pub fn record(&mut self, id: CheckId, result: ProbeResult, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(slot) = self.checks.get_mut(&id) else {
            return out;
        };
        if slot.due.is_some() {
            return out;
        }
        slot.probes += 1;
        let (ok, weight) = match result.outcome {
            Ok(w) => {
                slot.last_error = None;
                slot.last_latency = Some(result.latency);
                slot.last_ok = Some(now);
                (true, w)
            }
            Err(e) => {
                slot.last_error = Some(e);
                slot.failures += 1;
                (false, None)
            }
        };
        let step = slot.state.record(ok);
        slot.due = Some(
            now + match step.next {
                Next::Loop => slot.spec.timing.delay_loop,
                Next::Retry => slot.spec.timing.delay_before_retry,
            },
        );
        let key = slot.key;
        if let Some(b) = self.backends.get_mut(&key) {
            if !ok {
                b.failures += 1;
            }
            if weight.is_some() {
                b.weight = weight;
            }
        }
        self.announce(&key, &mut out);
        out
    }

    /// Every real server, and how it is doing.
    pub fn snapshot(&self) -> HashMap<BackendKey, BackendHealth> {
        self.backends
            .iter()
            .map(|(key, b)| (*key, self.health_of(b)))
            .collect()
    }

    /// The real servers of the services in `scope`, and how they are doing.
    pub fn snapshot_in(&self, scope: Scope<'_>) -> Vec<(BackendKey, BackendHealth)> {
        self.keys_in(scope)
            .filter_map(|k| Some((k, self.health_of(self.backends.get(&k)?))))
            .collect()
    }

    /// How each real server of `services` is doing, in their order (services, then real
    /// servers; `None`: not known here). One walk of the table in key order, the services
    /// visited sorted: a range lookup per service cost 20 ms at 10,000 services.
    pub fn health_in_order(
        &self,
        services: &[std::sync::Arc<crate::config::VirtualServer>],
    ) -> Vec<Option<BackendHealth>> {
        let key = |i: usize| {
            let vs = &services[i];
            vs.key()
        };
        let mut first = Vec::with_capacity(services.len());
        let mut total = 0;
        for vs in services {
            first.push(total);
            total += vs.real_servers.len();
        }
        let mut sorted: Vec<usize> = (0..services.len()).collect();
        sorted.sort_unstable_by_key(|&i| key(i));
        let mut out = vec![None; total];
        let mut table = self.backends.iter().peekable();
        // One service's entries, by address.
        let mut mine: Vec<(SocketAddr, &Backend)> = Vec::new();
        for i in sorted {
            let service = key(i);
            while table.next_if(|(k, _)| k.0 < service).is_some() {}
            mine.clear();
            while let Some((k, b)) = table.next_if(|(k, _)| k.0 == service) {
                mine.push((k.1, b));
            }
            for (j, rs) in services[i].real_servers.iter().enumerate() {
                if let Ok(at) = mine.binary_search_by_key(&rs.addr, |(a, _)| *a) {
                    out[first[i] + j] = Some(self.health_of(mine[at].1));
                }
            }
        }
        out
    }

    /// The real servers of the services in `scope`, in order.
    pub fn keys_in<'a>(&'a self, scope: Scope<'a>) -> Box<dyn Iterator<Item = BackendKey> + 'a> {
        match scope {
            Scope::All => Box::new(self.backends.keys().copied()),
            Scope::Services(services) => Box::new(services.iter().flat_map(move |svc| {
                // The least address there is: keys of one service are together.
                let least = SocketAddr::from(([0, 0, 0, 0], 0));
                self.backends
                    .range((*svc, least)..)
                    .map(|(k, _)| *k)
                    .take_while(move |k| k.0 == *svc)
            })),
        }
    }

    fn health_of(&self, b: &Backend) -> BackendHealth {
        let slots: Vec<&Slot> = b
            .checks
            .iter()
            .filter_map(|id| self.checks.get(id))
            .collect();
        let (up, weight) = self.current(b);
        let checks: Vec<CheckHealth> = slots
            .iter()
            .map(|s| CheckHealth {
                kind: s.spec.probe.name(),
                up: s.state.is_up(),
                probes: s.probes,
                failures: s.failures,
                last_latency: s.last_latency,
                last_error: s.last_error.clone(),
            })
            .collect();
        let last_latency = slots
            .iter()
            .filter(|s| s.last_ok.is_some())
            .max_by_key(|s| s.last_ok)
            .and_then(|s| s.last_latency);
        BackendHealth {
            up,
            weight,
            last_latency,
            last_error: checks.iter().find_map(|c| c.last_error.clone()),
            checks,
            failures: b.failures,
        }
    }
}

/// Which services a reconcile or a snapshot covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    All,
    Services(&'a HashSet<ServiceKey, foldhash::fast::RandomState>),
}

impl Scope<'_> {
    pub fn has(&self, service: &ServiceKey) -> bool {
        match self {
            Scope::All => true,
            Scope::Services(s) => s.contains(service),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::{config::check::Connect, model::Proto, script::ScriptUser};

    const SVC: ServiceKey = ServiceKey {
        vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
        port: 80,
        proto: Proto::Tcp,
    };

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn timing(delay_loop: f64, retry: u32, delay_before_retry: f64) -> Timing {
        Timing {
            delay_loop: s(delay_loop),
            retry,
            delay_before_retry: s(delay_before_retry),
            warmup: Duration::ZERO,
            alpha: false,
        }
    }

    /// A TCP check told apart by its port.
    fn tcp(port: u16, timing: Timing) -> CheckSpec {
        CheckSpec {
            probe: ProbeSpec::Tcp(Connect {
                dest: SocketAddr::new([192, 0, 2, 11].into(), port),
                bindto: None,
                timeout: s(1.0),
            }),
            timing,
        }
    }

    fn misc(dynamic: bool, timing: Timing) -> CheckSpec {
        CheckSpec {
            probe: ProbeSpec::Misc {
                check: MiscCheck {
                    command: vec!["/bin/check".into()],
                    timeout: s(1.0),
                    dynamic,
                    user: None,
                },
                user: ScriptUser::root(),
            },
            timing,
        }
    }

    fn backend(last: u8, checks: Vec<CheckSpec>) -> BackendSpec {
        BackendSpec {
            service: SVC,
            backend: SocketAddr::new([192, 0, 2, last].into(), 80),
            checks,
            notify_up: Some(vec!["/up".into()]),
            notify_down: Some(vec!["/down".into()]),
        }
    }

    fn port_of(p: &ProbeSpec) -> u16 {
        p.port()
    }

    /// What a probe answers: by check port (0 for MISC) and virtual time in seconds.
    type Backends = dyn FnMut(u16, f64) -> Result<Option<u32>, String>;

    /// The engine on a virtual clock; probes take `latency` and answer from `answer`.
    struct Sim {
        engine: Engine,
        t0: Instant,
        now: Instant,
        latency: Duration,
        /// Running probes: (ends at, id, port).
        running: Vec<(Instant, CheckId, u16)>,
        /// (time, port) of every probe started.
        started: Vec<(f64, u16)>,
        /// (time, event) of every announcement.
        events: Vec<(f64, HealthEvent)>,
        hooks: Vec<(f64, String)>,
        cancelled: Vec<CheckId>,
    }

    impl Sim {
        fn new(backends: Vec<BackendSpec>) -> Self {
            Self::new_with(backends, |_| {})
        }

        /// A simulation whose engine `prepare` sets up before the first reconcile.
        fn new_with(backends: Vec<BackendSpec>, prepare: impl FnOnce(&mut Engine)) -> Self {
            let t0 = Instant::now();
            let mut engine = Engine::new(7);
            prepare(&mut engine);
            let mut sim = Sim {
                engine,
                t0,
                now: t0,
                latency: Duration::ZERO,
                running: Vec::new(),
                started: Vec::new(),
                events: Vec::new(),
                hooks: Vec::new(),
                cancelled: Vec::new(),
            };
            let out = sim.engine.reconcile(backends, t0);
            sim.apply(out);
            sim
        }

        fn secs(&self, t: Instant) -> f64 {
            (t - self.t0).as_secs_f64()
        }

        fn apply(&mut self, out: Vec<Output>) {
            let now = self.secs(self.now);
            for o in out {
                match o {
                    Output::Probe { id, probe, .. } => {
                        let port = port_of(&probe);
                        self.started.push((now, port));
                        self.running.push((self.now + self.latency, id, port));
                    }
                    Output::Cancel { id } => {
                        self.cancelled.push(id);
                        self.running.retain(|r| r.1 != id);
                    }
                    Output::Event(e) | Output::Initial(e) => self.events.push((now, e)),
                    Output::Hook { argv, .. } => self.hooks.push((now, argv[0].clone())),
                }
            }
        }

        fn reload(&mut self, backends: Vec<BackendSpec>) {
            let out = self.engine.reconcile(backends, self.now);
            self.apply(out);
        }

        /// Runs until `until` seconds.
        fn run(&mut self, until: f64, answer: &mut Backends) {
            let end = self.t0 + s(until);
            loop {
                let next_probe = self.engine.next_deadline();
                let next_done = self.running.iter().map(|r| r.0).min();
                let Some(next) = [next_probe, next_done].into_iter().flatten().min() else {
                    break;
                };
                if next > end {
                    break;
                }
                self.now = next;
                // Finish probes first, then start due ones.
                let done: Vec<_> = self
                    .running
                    .iter()
                    .filter(|r| r.0 <= next)
                    .copied()
                    .collect();
                self.running.retain(|r| r.0 > next);
                for (_, id, port) in done {
                    let outcome = answer(port, self.secs(next));
                    let out = self.engine.record(
                        id,
                        ProbeResult {
                            latency: self.latency,
                            outcome,
                        },
                        next,
                    );
                    self.apply(out);
                }
                let out = self.engine.poll(next);
                self.apply(out);
            }
            self.now = end;
        }

        fn ups(&self) -> Vec<(f64, bool)> {
            self.events.iter().map(|(t, e)| (*t, e.up)).collect()
        }

        fn probe_times(&self, port: u16) -> Vec<f64> {
            self.started
                .iter()
                .filter(|(_, p)| *p == port)
                .map(|(t, _)| *t)
                .collect()
        }
    }

    fn ok(_: u16, _: f64) -> Result<Option<u32>, String> {
        Ok(None)
    }

    fn fail() -> Result<Option<u32>, String> {
        Err("refused".into())
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn starts_up_and_checks_every_delay_loop() {
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, timing(10.0, 1, 1.0))])]);
        assert_eq!(sim.ups(), [(0.0, true)], "the initial state is announced");
        assert!(sim.hooks.is_empty(), "no hook for the initial state");
        sim.run(35.0, &mut ok);
        assert!(close(&sim.probe_times(80), &[0.0, 10.0, 20.0, 30.0]));
        assert_eq!(sim.ups(), [(0.0, true)], "no change, no event");
    }

    #[test]
    fn retry_and_delay_before_retry() {
        // retry 2, 1 s apart: failing from t=25, the check at 30 fails, then 31 and 32
        // fail as well: down at 32, and the next check a delay_loop later.
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, timing(10.0, 2, 1.0))])]);
        let mut answer = |_: u16, t: f64| if t < 25.0 { Ok(None) } else { fail() };
        sim.run(50.0, &mut answer);
        assert!(
            close(
                &sim.probe_times(80),
                &[0.0, 10.0, 20.0, 30.0, 31.0, 32.0, 42.0, 43.0, 44.0]
            ),
            "{:?}",
            sim.probe_times(80)
        );
        assert_eq!(sim.ups(), [(0.0, true), (32.0, false)]);
        assert_eq!(sim.hooks, [(32.0, "/down".to_string())]);
        let snap = sim.engine.snapshot();
        let h = &snap[&(SVC, "192.0.2.11:80".parse().unwrap())];
        assert!(!h.up);
        assert_eq!(h.failures, 6);
        assert_eq!(h.last_error.as_deref(), Some("refused"));
        assert_eq!(h.checks[0].probes, 9);
    }

    #[test]
    fn a_success_during_the_retries_keeps_it_up() {
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, timing(10.0, 2, 1.0))])]);
        // Fails at 10 and 11, answers at 12.
        let mut answer = |_: u16, t: f64| {
            if (9.0..11.5).contains(&t) {
                fail()
            } else {
                Ok(None)
            }
        };
        sim.run(40.0, &mut answer);
        assert_eq!(sim.ups(), [(0.0, true)]);
        assert!(close(
            &sim.probe_times(80),
            &[0.0, 10.0, 11.0, 12.0, 22.0, 32.0]
        ));
    }

    #[test]
    fn comes_back_after_one_success_and_runs_hooks() {
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, timing(10.0, 0, 1.0))])]);
        let mut answer = |_: u16, t: f64| {
            if (5.0..25.0).contains(&t) {
                fail()
            } else {
                Ok(None)
            }
        };
        sim.run(40.0, &mut answer);
        assert_eq!(sim.ups(), [(0.0, true), (10.0, false), (30.0, true)]);
        assert_eq!(
            sim.hooks,
            [(10.0, "/down".to_string()), (30.0, "/up".to_string())]
        );
    }

    #[test]
    fn first_failure_takes_it_down_at_once() {
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, timing(10.0, 3, 1.0))])]);
        sim.run(5.0, &mut |_, _| fail());
        assert_eq!(sim.ups(), [(0.0, true), (0.0, false)]);
    }

    #[test]
    fn a_server_seeded_down_starts_down_until_the_first_success() {
        let mut sim = Sim::new_with(
            vec![backend(11, vec![tcp(80, timing(10.0, 1, 1.0))])],
            |e| e.seed_down([(SVC, "192.0.2.11:80".parse().unwrap())]),
        );
        assert_eq!(sim.ups(), [(0.0, false)]);
        let mut answer = |_: u16, _: f64| Ok(None);
        sim.run(5.0, &mut answer);
        assert_eq!(
            sim.ups(),
            [(0.0, false), (0.0, true)],
            "up at its first success"
        );
        assert!(sim.engine.initially_down.is_empty(), "a seed is used once");
    }

    #[test]
    fn alpha_starts_down_until_the_first_success() {
        let t = Timing {
            alpha: true,
            ..timing(10.0, 1, 1.0)
        };
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, t)])]);
        assert_eq!(sim.ups(), [(0.0, false)]);
        let snap = sim.engine.snapshot();
        assert!(!snap[&(SVC, "192.0.2.11:80".parse().unwrap())].up);
        // Fails at first (no change, no event), then answers from t=15.
        let mut answer = |_: u16, t: f64| if t < 15.0 { fail() } else { Ok(None) };
        sim.run(30.0, &mut answer);
        assert_eq!(sim.ups(), [(0.0, false), (21.0, true)]);
        assert_eq!(sim.hooks, [(21.0, "/up".to_string())]);
        // The first failure uses up the retries (keepalived's start-up `retry_it = retry`);
        // the next one, while down, is retried (keepalived's TCP_CHECK rule).
        assert!(
            close(&sim.probe_times(80), &[0.0, 10.0, 11.0, 21.0]),
            "{:?}",
            sim.probe_times(80)
        );
    }

    #[test]
    fn warmup_spreads_the_first_checks() {
        let t = Timing {
            warmup: s(10.0),
            ..timing(10.0, 1, 1.0)
        };
        let backends: Vec<BackendSpec> = (1..=50).map(|i| backend(i, vec![tcp(80, t)])).collect();
        let mut sim = Sim::new(backends);
        sim.run(9.999, &mut ok);
        let first = sim.probe_times(80);
        assert!(first.len() <= 50);
        assert!(first.iter().all(|t| (0.0..10.0).contains(t)), "{first:?}");
        // Spread out, not all at once.
        let distinct: std::collections::BTreeSet<u64> =
            first.iter().map(|t| (*t * 1000.0) as u64).collect();
        assert!(distinct.len() > 40, "{first:?}");
        assert!(first.iter().any(|t| *t < 5.0) && first.iter().any(|t| *t >= 5.0));
        // Every one ran by the end of the warmup.
        sim.run(10.0, &mut ok);
        assert!(sim
            .engine
            .snapshot()
            .values()
            .all(|h| h.checks[0].probes >= 1));
    }

    #[test]
    fn every_check_must_pass() {
        let mut sim = Sim::new(vec![backend(
            11,
            vec![tcp(80, timing(10.0, 0, 1.0)), tcp(81, timing(10.0, 0, 1.0))],
        )]);
        // 81 fails from 5 to 25, 80 fails from 15 to 35.
        let mut answer = |port: u16, t: f64| {
            let bad = match port {
                81 => (5.0..25.0).contains(&t),
                _ => (15.0..35.0).contains(&t),
            };
            if bad {
                fail()
            } else {
                Ok(None)
            }
        };
        sim.run(50.0, &mut answer);
        // Down at 10 (81), stays down while either fails, up at 40 once both pass.
        assert_eq!(sim.ups(), [(0.0, true), (10.0, false), (40.0, true)]);
        let snap = sim.engine.snapshot();
        let h = &snap[&(SVC, "192.0.2.11:80".parse().unwrap())];
        assert_eq!(h.checks.len(), 2);
        assert!(h.checks.iter().all(|c| c.up && c.kind == "TCP_CHECK"));
    }

    #[test]
    fn misc_dynamic_weight() {
        let mut sim = Sim::new(vec![backend(11, vec![misc(true, timing(10.0, 0, 1.0))])]);
        // exit 12 -> weight 10; exit 0 -> unchanged; 22 -> 20; then 1 (fail); then 0.
        let mut answer = |_: u16, t: f64| match t as u32 {
            0 => Ok(Some(10)),
            10 => Ok(None),
            20 => Ok(Some(20)),
            30 => fail(),
            _ => Ok(None),
        };
        sim.run(45.0, &mut answer);
        let got: Vec<(f64, bool, Option<u32>)> = sim
            .events
            .iter()
            .map(|(t, e)| (*t, e.up, e.weight))
            .collect();
        assert_eq!(
            got,
            [
                (0.0, true, None),
                (0.0, true, Some(10)),
                (20.0, true, Some(20)),
                (30.0, false, Some(20)),
                (40.0, true, Some(20)),
            ]
        );
        // Only up/down changes run hooks.
        assert_eq!(
            sim.hooks,
            [(30.0, "/down".to_string()), (40.0, "/up".to_string())]
        );
        assert_eq!(
            sim.engine.snapshot()[&(SVC, "192.0.2.11:80".parse().unwrap())].weight,
            Some(20)
        );
    }

    #[test]
    fn weight_set_while_down_is_announced_when_up() {
        // Two checks: the TCP one fails, the dynamic MISC one sets a weight meanwhile.
        let mut sim = Sim::new(vec![backend(
            11,
            vec![
                tcp(80, timing(10.0, 0, 1.0)),
                misc(true, timing(10.0, 0, 1.0)),
            ],
        )]);
        let mut answer = |port: u16, t: f64| match (port, t < 15.0) {
            (80, true) => fail(),
            (0, _) if t > 5.0 => Ok(Some(7)),
            _ => Ok(None),
        };
        sim.run(25.0, &mut answer);
        let got: Vec<(f64, bool, Option<u32>)> = sim
            .events
            .iter()
            .map(|(t, e)| (*t, e.up, e.weight))
            .collect();
        assert_eq!(
            got,
            [(0.0, true, None), (0.0, false, None), (20.0, true, Some(7))]
        );
    }

    #[test]
    fn reload_keeps_unchanged_checks_and_their_timers() {
        let a = backend(11, vec![tcp(80, timing(10.0, 0, 1.0))]);
        let mut sim = Sim::new(vec![a.clone()]);
        let mut answer = |_: u16, t: f64| if t < 25.0 { fail() } else { Ok(None) };
        sim.run(5.0, &mut answer);
        assert_eq!(sim.ups(), [(0.0, true), (0.0, false)]);
        // Same configuration at t=5: still down, no event, next check still at 10.
        sim.reload(vec![a.clone()]);
        assert_eq!(sim.events.len(), 2);
        assert_eq!(
            sim.engine.next_deadline(),
            Some(sim.t0 + s(10.0)),
            "the timer survived"
        );
        sim.run(15.0, &mut answer);
        assert!(close(&sim.probe_times(80), &[0.0, 10.0]));
        // A new backend is announced (up), the old one keeps its state.
        let b = backend(12, vec![tcp(90, timing(10.0, 0, 1.0))]);
        sim.reload(vec![a.clone(), b.clone()]);
        let last = sim.events.last().unwrap().1.clone();
        assert_eq!((last.backend.port(), last.up), (80, true));
        assert_eq!(last.backend.ip(), IpAddr::from([192, 0, 2, 12]));
        let snap = sim.engine.snapshot();
        assert!(!snap[&(SVC, "192.0.2.11:80".parse().unwrap())].up);
        assert!(snap[&(SVC, "192.0.2.12:80".parse().unwrap())].up);
        // A changed check restarts from its initial state: up again (non-alpha), announced,
        // with the hook.
        let a2 = backend(11, vec![tcp(80, timing(5.0, 0, 1.0))]);
        sim.reload(vec![a2, b]);
        let (t, e) = sim.events.last().unwrap().clone();
        assert_eq!(
            (t, e.backend.ip(), e.up),
            (15.0, IpAddr::from([192, 0, 2, 11]), true)
        );
        assert_eq!(sim.hooks.last().unwrap().1, "/up");
    }

    #[test]
    fn reload_removes_and_cancels() {
        let a = backend(11, vec![tcp(80, timing(10.0, 0, 1.0))]);
        let b = backend(
            12,
            vec![tcp(81, timing(10.0, 0, 1.0)), tcp(82, timing(10.0, 0, 1.0))],
        );
        let mut sim = Sim::new(vec![a.clone(), b.clone()]);
        sim.latency = s(2.0);
        sim.run(1.0, &mut ok);
        // All three probes run (they take 2 s). Remove backend a and one check of b.
        assert_eq!(sim.running.len(), 3);
        let b2 = BackendSpec {
            checks: vec![b.checks[0].clone()],
            ..b.clone()
        };
        sim.reload(vec![b2.clone()]);
        assert_eq!(sim.cancelled.len(), 2);
        assert_eq!(sim.running.len(), 1);
        assert!(!sim.engine.snapshot().contains_key(&(SVC, a.backend)));
        // A result of a cancelled check that arrives anyway is ignored.
        let out = sim.engine.record(
            sim.cancelled[0],
            ProbeResult {
                latency: s(2.0),
                outcome: fail(),
            },
            sim.now,
        );
        assert!(out.is_empty());
        // Removing the check that fails brings the server back up.
        let mut sim = Sim::new(vec![b.clone()]);
        sim.run(1.0, &mut |port, _| {
            if port == 82 {
                fail()
            } else {
                Ok(None)
            }
        });
        assert!(!sim.ups().last().unwrap().1);
        sim.reload(vec![b2]);
        assert!(sim.ups().last().unwrap().1);
        assert_eq!(sim.hooks.last().unwrap().1, "/up");
        // And with no checks at all it is simply up.
        let b3 = BackendSpec {
            checks: vec![],
            ..b.clone()
        };
        sim.reload(vec![b3]);
        assert!(sim.engine.snapshot()[&(SVC, b.backend)].up);
        assert_eq!(sim.engine.next_deadline(), None);
    }

    #[test]
    fn reload_adding_an_alpha_check_takes_the_server_down() {
        let a = backend(11, vec![tcp(80, timing(10.0, 0, 1.0))]);
        let mut sim = Sim::new(vec![a.clone()]);
        sim.run(1.0, &mut ok);
        let alpha = Timing {
            alpha: true,
            ..timing(10.0, 0, 1.0)
        };
        let mut a2 = a.clone();
        a2.checks.push(tcp(81, alpha));
        sim.reload(vec![a2]);
        assert_eq!(sim.ups(), [(0.0, true), (1.0, false)]);
        sim.run(2.0, &mut ok);
        assert_eq!(sim.ups(), [(0.0, true), (1.0, false), (1.0, true)]);
    }

    #[test]
    fn dropping_the_dynamic_check_drops_its_weight() {
        let a = backend(11, vec![misc(true, timing(10.0, 0, 1.0))]);
        let mut sim = Sim::new(vec![a.clone()]);
        sim.run(1.0, &mut |_, _| Ok(Some(3)));
        assert_eq!(sim.events.last().unwrap().1.weight, Some(3));
        sim.reload(vec![backend(11, vec![misc(false, timing(10.0, 0, 1.0))])]);
        let e = &sim.events.last().unwrap().1;
        assert_eq!((e.up, e.weight), (true, None));
    }

    #[test]
    fn latency_of_the_last_success_and_the_last_error() {
        let mut sim = Sim::new(vec![backend(
            11,
            vec![tcp(80, timing(10.0, 0, 1.0)), tcp(81, timing(10.0, 0, 1.0))],
        )]);
        let key = (SVC, "192.0.2.11:80".parse().unwrap());
        assert!(!sim.engine.snapshot()[&key].checked());
        sim.latency = s(0.25);
        sim.run(1.0, &mut ok);
        let h = &sim.engine.snapshot()[&key];
        assert!(h.checked() && h.up);
        assert_eq!(h.last_latency, Some(s(0.25)));
        assert_eq!(h.last_error, None);
        sim.latency = s(0.5);
        sim.run(11.0, &mut |port, _| {
            if port == 81 {
                fail()
            } else {
                Ok(None)
            }
        });
        let h = &sim.engine.snapshot()[&key];
        assert!(!h.up);
        assert_eq!(
            h.last_latency,
            Some(s(0.5)),
            "port 80's, the latest success"
        );
        assert_eq!(
            h.checks[1].last_latency,
            Some(s(0.25)),
            "port 81's last success"
        );
        assert_eq!(h.last_error.as_deref(), Some("refused"));
        assert_eq!(h.checks[0].last_error, None);
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut sim = Sim::new(vec![backend(11, vec![tcp(80, timing(10.0, 0, 1.0))])]);
        // Check 0 is not running before the first poll... it is due at 0 but not started.
        let out = sim.engine.record(
            0,
            ProbeResult {
                latency: Duration::ZERO,
                outcome: fail(),
            },
            sim.now,
        );
        assert!(out.is_empty());
        assert!(sim
            .engine
            .record(
                99,
                ProbeResult {
                    latency: Duration::ZERO,
                    outcome: fail()
                },
                sim.now
            )
            .is_empty());
    }

    #[test]
    fn duplicate_backends_count_once() {
        let a = backend(11, vec![tcp(80, timing(10.0, 0, 1.0))]);
        let sim = Sim::new(vec![a.clone(), a]);
        assert_eq!(sim.events.len(), 1);
        assert_eq!(sim.engine.checks.len(), 1);
    }

    /// A reconcile scoped to some services changes only theirs: another service's checks
    /// keep their ids and state, and are neither cancelled nor announced; the scoped ones
    /// are added and removed as `wanted` says, and the scoped snapshot shows just them.
    #[test]
    fn a_scoped_reconcile_leaves_other_services_alone() {
        const OTHER: ServiceKey = ServiceKey {
            vip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 101)),
            port: 80,
            proto: Proto::Tcp,
        };
        let t = timing(1.0, 1, 1.0);
        let other = |last: u8| BackendSpec {
            service: OTHER,
            ..backend(last, vec![tcp(81, t)])
        };
        let mut sim = Sim::new(vec![
            backend(1, vec![tcp(80, t)]),
            backend(2, vec![tcp(80, t)]),
            other(1),
        ]);
        let ids = |e: &Engine, key: ServiceKey| -> Vec<CheckId> {
            e.checks
                .iter()
                .filter(|(_, s)| s.key.0 == key)
                .map(|(id, _)| *id)
                .collect()
        };
        let other_ids = ids(&sim.engine, OTHER);
        let svc_ids = ids(&sim.engine, SVC);
        sim.events.clear();
        // SVC loses .2 and gains .3; OTHER is out of scope, and its listing in `wanted` (a
        // real server more) is not looked at.
        let scope: HashSet<ServiceKey, foldhash::fast::RandomState> = [SVC].into_iter().collect();
        let out = sim.engine.reconcile_in(
            Scope::Services(&scope),
            vec![
                backend(1, vec![tcp(80, t)]),
                backend(3, vec![tcp(80, t)]),
                other(9),
            ],
            sim.now,
        );
        sim.apply(out);
        assert_eq!(ids(&sim.engine, OTHER), other_ids);
        let now_svc = ids(&sim.engine, SVC);
        assert_eq!(now_svc.len(), 2);
        assert_eq!(now_svc[0], svc_ids[0], ".1 keeps its check");
        assert_eq!(sim.cancelled, [svc_ids[1]], "only .2's check is cancelled");
        // Only the new real server's first state is told.
        let told: Vec<SocketAddr> = sim.events.iter().map(|(_, e)| e.backend).collect();
        assert_eq!(told, [SocketAddr::new([192, 0, 2, 3].into(), 80)]);
        let addrs = |v: Vec<(BackendKey, BackendHealth)>| -> Vec<(ServiceKey, u8)> {
            v.into_iter()
                .map(|((svc, a), _)| match a.ip() {
                    IpAddr::V4(ip) => (svc, ip.octets()[3]),
                    IpAddr::V6(_) => unreachable!(),
                })
                .collect()
        };
        assert_eq!(
            addrs(sim.engine.snapshot_in(Scope::Services(&scope))),
            [(SVC, 1), (SVC, 3)]
        );
        assert_eq!(sim.engine.snapshot().len(), 3);
        // In a configuration's order, which need not be the table's: OTHER (.101) before
        // SVC (.100), real servers in any order, one the checkers do not know (.7).
        let vs = |vip: &str, rs: &[u8]| {
            let mut t = format!(
                "[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\n\
                 lb_algo = \"rr\"\nlb_kind = \"DR\"\nstatic = true\n"
            );
            for last in rs {
                t += &format!(
                    "[[virtual_server.real_server]]\nip = \"192.0.2.{last}\"\nport = 80\n"
                );
            }
            t
        };
        let text = format!(
            "[dataplane]\ninterface = \"eth0\"\n{}{}",
            vs("192.0.2.101", &[1]),
            vs("192.0.2.100", &[3, 7, 1])
        );
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let snap = sim.engine.snapshot();
        let at = |svc: ServiceKey, last: u8| {
            snap.get(&(svc, SocketAddr::new([192, 0, 2, last].into(), 80)))
                .cloned()
        };
        assert!(at(OTHER, 1).is_some() && at(SVC, 3).is_some() && at(SVC, 1).is_some());
        assert_eq!(
            sim.engine.health_in_order(&config.virtual_servers),
            [at(OTHER, 1), at(SVC, 3), None, at(SVC, 1)]
        );
    }
}
