//! The daemon's state, and one handler per kind of event. Each handler changes what its
//! event changed, marks the services it touched for the dataplane, and applies; what the
//! quorums then say goes to the VRRP instances that track them ([`State::after_event`]).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use super::{
    overrides::{self, Overrides},
    seed::{self, Seeds},
    snapshot::snapshot,
    units::{set_tracking, vrrp_units},
    xdp::Xdp,
    Dp, Health, Macs, METRICS_FLOW_COUNT_AGE, STATUS_FLOW_COUNT_AGE,
};
use crate::{
    config::{split, Config},
    dataplane::neigh::MacUpdate,
    health::{self, HealthEvent},
    metrics,
    model::{RealServerAction, ServiceKey},
    status::{Snapshot, Zeroed},
    vrrp::{
        notify::{self, Notifier},
        runtime::{self, Event, RoleAck},
        track::{self, TrackEvent, TrackTasks, Tracking},
    },
};

/// Where the running parts report to the main loop.
pub(super) struct Inbox {
    pub macs: Option<mpsc::Receiver<MacUpdate>>,
    pub health: mpsc::Receiver<HealthEvent>,
    pub vrrp: mpsc::UnboundedReceiver<Event>,
    pub track: mpsc::Receiver<TrackEvent>,
}

/// Everything the main loop keeps.
pub(super) struct State {
    pub path: std::path::PathBuf,
    /// What the last read parsed, by service block: a reload parses only what changed.
    pub parsed: split::Cache,
    pub config: Config,
    /// The XDP side; none on a VRRP-only node.
    pub dp: Option<Dp>,
    /// The VIPs of the instances that are master here.
    pub master_vips: HashSet<IpAddr>,
    /// `[announce]`'s routes for the routing daemon; none without the section.
    pub announcer: Option<crate::announce::routes::Announcer>,
    /// Each real server's health, as the checkers last reported it.
    pub health: Health,
    pub checkers: health::Checkers,
    pub track_tasks: TrackTasks,
    pub tracking: Tracking,
    pub vrrp: Option<runtime::VrrpThread>,
    /// Where VRRP units report: a reload that brings the first instance starts the thread.
    pub vrrp_events: mpsc::UnboundedSender<Event>,
    pub notifier: Notifier,
    /// The metrics server's feeds; none without `metrics_address`.
    pub metrics: Option<Metrics>,
    /// The operator's runtime changes to real servers (`lb-daemon real-server`), kept in
    /// `global_defs.state_dir`.
    pub overrides: Overrides,
    /// The counters as `lb-daemon zero` found them: status shows what came since.
    pub zeroed: Option<Zeroed>,
    /// The control socket, whose group a reload changes (none until `run` binds it).
    pub control: Option<ControlSocket>,
    /// One walk of the connection table at a time (`lb-daemon connections`, which the
    /// control group may send): however many ask, one core at most walks.
    pub walks: Arc<tokio::sync::Semaphore>,
}

/// What the main loop keeps of the control socket.
pub(super) struct ControlSocket {
    pub path: std::path::PathBuf,
    /// The group whose members may read (see `control::Options::group`).
    pub group: watch::Sender<Option<libc::gid_t>>,
}

/// What the main loop keeps of the metrics server: what it serves, and to whom.
pub(super) struct Metrics {
    /// What scrapes are served.
    pub exposition: watch::Sender<Arc<metrics::Exposition>>,
    /// When the exposition is next taken.
    pub due: Instant,
    /// The bearer token scrapes must carry, if any: a reload replaces it.
    pub token: watch::Sender<Option<metrics::BearerToken>>,
    /// Where it listens (the port the kernel chose for port 0).
    pub addr: std::net::SocketAddr,
}

impl Metrics {
    /// Binds `addr` and serves the metrics there, to requests with `token` if there is one.
    pub async fn start(addr: std::net::SocketAddr, token: Option<Vec<u8>>) -> Result<Self> {
        let server = metrics::MetricsServer::bind(addr).await?;
        let addr = server.local_addr();
        let (exposition, exposition_rx) = watch::channel(Arc::default());
        let bearer_token = token.is_some();
        let (token, token_rx) = watch::channel(token.as_deref().map(metrics::BearerToken::new));
        info!(%addr, bearer_token, "Prometheus metrics on /metrics");
        tokio::spawn(server.run(exposition_rx, token_rx));
        Ok(Self {
            exposition,
            due: Instant::now(),
            token,
            addr,
        })
    }

    /// Asks for `token` from now on (`None`: for no token); logs when whether one is asked
    /// changes.
    pub fn set_token(&self, token: Option<Vec<u8>>) {
        let asked = token.is_some();
        let was = self
            .token
            .send_replace(token.as_deref().map(metrics::BearerToken::new))
            .is_some();
        match (was, asked) {
            (false, true) => info!("the metrics now ask for a bearer token"),
            (true, false) => info!("the metrics no longer ask for a bearer token"),
            _ => {}
        }
    }
}

impl State {
    /// Loads the file and starts every part: the XDP program, health checks, tracking,
    /// notify, VRRP. The dataplane holds the configuration before VRRP can make this node
    /// master.
    pub(super) async fn start(path: std::path::PathBuf) -> Result<(State, Inbox)> {
        let mut parsed = split::Cache::default();
        let config = Config::load_cached(&path, &mut parsed)?;
        super::check_scripts(&config)?;
        let overrides = overrides::load(&config.global_defs.state_dir_path())?;
        // Before anything starts: `run` binds the control socket with it afterwards.
        super::control_group(&config)?;
        // Before anything starts: a token file that cannot be read is the file's error.
        let metrics_token = config.metrics_token()?;
        let mut seeds = Seeds::default();
        let (dp, macs_rx) = match &config.dataplane {
            Some(d) => {
                let xdp = Xdp::start(&config, d).await?;
                if xdp.adopted.is_some() {
                    seeds = seed::seeds(xdp.dp.specs(), &config);
                    info!(macs = seeds.macs.len(), down = seeds.down.len(), serving = ?seeds.master_vips, "until the resolver, the checks and VRRP speak, the previous run's MACs, verdicts and roles stand");
                }
                let (mut macs, rx) = Macs::start(&config, xdp.ifindex)?;
                macs.known.extend(std::mem::take(&mut seeds.macs));
                let mut dp = Dp::new(xdp, macs, Instant::now());
                let _ = dp.refresh_tunnel_sources(&config).await;
                (Some(dp), Some(rx))
            }
            None => (None, None),
        };
        // Health checks of the real servers; their first verdicts arrive as events.
        let (health_tx, health_rx) = mpsc::channel(256);
        let checkers =
            health::Checkers::start_seeded(&config, health_tx, std::mem::take(&mut seeds.down))?;
        let health = checkers.snapshot();
        // Unbounded: the VRRP thread must never wait for the main loop.
        let (event_tx, event_rx) = mpsc::unbounded_channel::<Event>();
        // Notify hooks and the JSON event stream; tracked scripts and interfaces.
        let notifier = Notifier::from_config(&config)?;
        let (track_tx, track_rx) = mpsc::channel(track::EVENT_QUEUE_LEN);
        // keepalived's init_file, at start only (a reload never rewrites a tracked file).
        track::init_track_files(&config.track_files);
        let track_tasks = TrackTasks::start(&config, track_tx)?;
        let mut tracking = Tracking::new(&config)?;
        tracking.seed(&track_tasks.snapshot());
        let mut state = State {
            path,
            parsed,
            config,
            dp,
            master_vips: seeds.master_vips,
            announcer: None,
            health,
            checkers,
            track_tasks,
            tracking,
            vrrp: None,
            vrrp_events: event_tx.clone(),
            notifier,
            metrics: None,
            overrides,
            zeroed: None,
            control: None,
            walks: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        if !state.overrides.is_empty() {
            info!(
                overrides = state.overrides.len(),
                "runtime changes to real servers (lb-daemon real-server) stand"
            );
        }
        state.drop_stale_overrides();
        if let Some(dp) = state.dp.as_mut() {
            // A configuration the dataplane cannot hold is a start-up error.
            dp.apply(
                &state.config,
                &state.master_vips,
                &state.health,
                &state.overrides,
            )
            .await
            .context("writing the configuration into the dataplane")?;
        }
        if let Some(a) = &state.config.announce {
            state.announcer = Some(crate::announce::routes::Announcer::start(a).await?);
        }
        if !state.config.vrrp_instances.is_empty() {
            // A master resumes only over a dataplane that still serves its VIPs: the one
            // taken over (or none at all, VRRP alone).
            let may_resume = state.dp.as_ref().is_none_or(|dp| dp.xdp.adopted.is_some());
            let mut units = vrrp_units(&state.config, may_resume, &Default::default()).await?;
            // vrrp_startup_delay holds the instances of the daemon's start only.
            for u in &mut units {
                u.startup_delay = state.config.global_defs.startup_delay();
            }
            set_tracking(&mut units, &mut state.tracking);
            state.vrrp = Some(runtime::spawn(units, event_tx.clone())?);
        }
        if let Some(addr) = state.config.global_defs.metrics_address.as_ref() {
            state.metrics = Some(Metrics::start(*addr.get_ref(), metrics_token).await?);
        }
        let inbox = Inbox {
            macs: macs_rx,
            health: health_rx,
            vrrp: event_rx,
            track: track_rx,
        };
        Ok((state, inbox))
    }

    /// Applies the state to the dataplane, logging a failure: the planner repairs what a
    /// failed write left at the next apply.
    async fn apply(&mut self) {
        if let Err(e) = self.try_apply().await {
            error!("updating the dataplane: {e:#}");
        }
    }

    /// [`State::apply`], its failure returned (the planner still repairs it at the next
    /// apply).
    async fn try_apply(&mut self) -> Result<()> {
        match self.dp.as_mut() {
            Some(dp) => {
                dp.apply(
                    &self.config,
                    &self.master_vips,
                    &self.health,
                    &self.overrides,
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// MACs the neighbour resolver learned or lost (every update waiting, in one plan).
    pub(super) async fn on_macs(&mut self, updates: impl IntoIterator<Item = MacUpdate>) {
        let Some(dp) = self.dp.as_mut() else { return };
        for u in updates {
            dp.macs.update(u);
        }
        // A MAC is in every service that has the address.
        dp.all_stale();
        self.apply().await;
    }

    /// An instance took or released its VIPs: their services are served or passed, and the
    /// new master may announce them once the maps say so (`applied`).
    pub(super) async fn on_role(
        &mut self,
        instance: String,
        vips: Vec<IpAddr>,
        master: bool,
        applied: RoleAck,
    ) {
        info!(%instance, master, "VRRP role: {}", if master { "serving" } else { "passing" });
        for v in vips {
            if master {
                self.master_vips.insert(v);
            } else {
                self.master_vips.remove(&v);
            }
        }
        if let Some(dp) = self.dp.as_mut() {
            dp.all_stale();
        }
        self.apply().await;
        if let (Some(dp), Some(c)) = (&self.dp, &self.config.sync) {
            // The sync instance's master sends its flows; a backup installs them.
            if let (Some(s), true) = (&dp.xdp.sync, c.vrrp_instance.as_ref() == Some(&instance)) {
                s.set_master(master);
            }
        }
        applied.done();
    }

    /// A VRRP state change, for notify hooks and the event stream.
    pub(super) fn on_vrrp_state(&self, ev: notify::Event) {
        self.notifier.notify(ev);
    }

    /// Real servers whose verdict changed (every event waiting, in one plan: a start with
    /// 100,000 real servers reports each once).
    pub(super) async fn on_health(&mut self, events: impl IntoIterator<Item = HealthEvent>) {
        let mut services = HashSet::new();
        for e in events {
            info!(service = %e.service, backend = %e.backend, up = e.up, weight = ?e.weight, "real server health");
            services.insert(e.service);
        }
        let services: HashSet<ServiceKey, foldhash::fast::RandomState> =
            services.into_iter().collect();
        self.checkers
            .refresh(&mut self.health, health::Scope::Services(&services));
        if let Some(dp) = self.dp.as_mut() {
            dp.stale(services);
        }
        self.apply().await;
    }

    /// A tracked script or interface changed: the instances that track it hear of it.
    pub(super) fn on_track(&mut self, ev: TrackEvent) {
        if let Some(v) = &self.vrrp {
            for (instance, input) in self.tracking.on_event(&ev) {
                v.track(instance, input);
            }
        }
    }

    /// Every 20 ms: the count-based schedulers' candidates, and the next hops NAT replies
    /// were dropped for.
    pub(super) fn on_rank(&mut self) {
        if let Some(dp) = &mut self.dp {
            dp.xdp.rank();
            dp.xdp.resolve_wanted();
        }
    }

    /// Every second: the program's clock, unresolved MACs, and the metrics (every second,
    /// or less often when a refresh costs more than 2% of a core: 0.13 s at 100,000 real
    /// servers with per-backend metrics makes it every 7 s).
    pub(super) fn on_tick(&mut self, now: Instant) {
        if let (Some(dp), Some(d)) = (self.dp.as_mut(), &self.config.dataplane) {
            dp.xdp.tick();
            dp.macs.warn_unresolved(&d.interface, now);
        }
        let due = matches!(&self.metrics, Some(m) if now >= m.due);
        if due {
            let started = Instant::now();
            // Without per-backend metrics the real servers are left out whole: no health
            // to copy, no backend counters to read.
            let per_backend = self.config.global_defs.metrics_per_backend.unwrap_or(true);
            let snap = self.snapshot(METRICS_FLOW_COUNT_AGE, per_backend);
            if let Some(m) = self.metrics.as_mut() {
                m.exposition
                    .send_replace(Arc::new(metrics::Exposition::new(snap, per_backend)));
                m.due = started + started.elapsed() * 50;
            }
        }
    }

    /// `lb-daemon status`: the checkers' current view (`health` moves only on up/down
    /// changes, while status also shows whether a check has run, its latency, its error).
    pub(super) fn on_status(&mut self) -> Snapshot {
        let mut s = self.snapshot(STATUS_FLOW_COUNT_AGE, true);
        if let Some(z) = &self.zeroed {
            z.subtract(&mut s);
        }
        s
    }

    /// `lb-daemon connections`: the connection table's live flows, filtered by service
    /// (`VIP:PORT[/PROTO]`), real server and client (`IP[:PORT]` each).
    pub(super) fn on_connections(
        &self,
        service: Option<&str>,
        real: Option<&str>,
        client: Option<&str>,
        limit: usize,
    ) -> Result<impl FnOnce() -> anyhow::Result<crate::status::Connections> + Send + 'static, String>
    {
        let Some(dp) = self.dp.as_ref() else {
            return Err("no dataplane here: this node runs VRRP only".into());
        };
        let service = service
            .map(|s| self.config.find_service(s).map(|vs| vs.key()))
            .transpose()?;
        let real = real.map(crate::model::parse_ip_port).transpose()?;
        let client = client.map(crate::model::parse_ip_port).transpose()?;
        let matches = |(ip, port): (std::net::IpAddr, Option<u16>), a: std::net::SocketAddr| {
            a.ip() == ip && port.is_none_or(|p| p == a.port())
        };
        Ok(dp.xdp.connections(
            service,
            move |c| {
                real.is_none_or(|r| matches(r, c.real_server))
                    && client.is_none_or(|r| matches(r, c.client))
            },
            limit,
        ))
    }

    /// `lb-daemon which CLIENT_IP:PORT SERVICE`.
    pub(super) fn on_which(
        &self,
        client: &str,
        service: &str,
    ) -> Result<crate::status::Which, String> {
        let Some(dp) = self.dp.as_ref() else {
            return Err("no dataplane here: this node runs VRRP only".into());
        };
        let key = self.config.find_service(service)?.key();
        let client: std::net::SocketAddr = client
            .parse()
            .map_err(|_| format!("{client:?} is not IP:PORT (an IPv6 address in brackets)"))?;
        if client.is_ipv4() != key.vip.is_ipv4() {
            return Err(format!("{client} and {key} are not of one family"));
        }
        if key.port == 0 {
            return Err(format!(
                "{key} serves every port of its VIP: which flow is meant needs its port \
                 (`lb-daemon connections --client {client}` lists them)"
            ));
        }
        dp.xdp.which(client, key)
    }

    /// `lb-daemon zero` (`ipvsadm -Z`): status counts from now on; the metrics do not.
    pub(super) fn on_zero(&mut self) -> String {
        let s = self.snapshot(STATUS_FLOW_COUNT_AGE, true);
        self.zeroed = Some(Zeroed::of(&s));
        info!("traffic counters zeroed for status");
        format!("zeroed the counters of {} services", s.services.len())
    }

    /// `lb-daemon real-server ACTION SERVICE REAL` (or `reset --all`): the override is
    /// written to the state file before it is applied, so that what the maps do is never
    /// something a restart would forget; a write that fails changes nothing.
    pub(super) async fn on_real_server(
        &mut self,
        service: Option<&str>,
        real: Option<&str>,
        action: RealServerAction,
        all: bool,
    ) -> Result<String, String> {
        if let RealServerAction::Weight(w) = action {
            if w > crate::config::MAX_WEIGHT {
                return Err(format!(
                    "weight {w} is out of range 0..={}",
                    crate::config::MAX_WEIGHT
                ));
            }
        }
        let mut next = self.overrides.clone();
        let (message, stale) = if all {
            let stale: Vec<ServiceKey> = self
                .config
                .virtual_servers
                .iter()
                .map(|v| v.key())
                .collect();
            (format!("{} overrides removed", next.clear()), stale)
        } else {
            let vs = self
                .config
                .find_service(service.unwrap_or_default())?
                .clone();
            let rs = vs.find_real(real.unwrap_or_default())?;
            let now = next.set(&vs, rs.addr, action);
            let what = match (now.disabled, now.weight) {
                (false, None) => "as the file says".to_string(),
                (true, _) => "disabled".to_string(),
                (false, Some(0)) => "drained".to_string(),
                (false, Some(w)) => format!("weight {w}"),
            };
            (format!("{} {}: {what}", vs.name(), rs.addr), vec![vs.key()])
        };
        let dir = self.config.global_defs.state_dir_path();
        overrides::save(&dir, &next).map_err(|e| format!("{e:#}: nothing changed"))?;
        self.overrides = next;
        info!(%message, "runtime change to real servers");
        if let Some(dp) = self.dp.as_mut() {
            dp.stale(stale);
        }
        // Saved and kept: the next apply writes it if this one cannot.
        self.try_apply().await.map_err(|e| {
            error!("updating the dataplane: {e:#}");
            format!("{message}: saved, but the dataplane has not taken it yet: {e:#}")
        })?;
        Ok(message)
    }

    /// Drops the overrides of real servers the configuration no longer has (after a start
    /// or a reload), with a line each, and saves what is left.
    pub(super) fn drop_stale_overrides(&mut self) {
        let dropped = self.overrides.retain_configured(&self.config);
        if dropped.is_empty() {
            return;
        }
        for (service, real) in &dropped {
            info!(%service, %real, "runtime override dropped: the configuration no longer has this real server");
        }
        if let Err(e) = overrides::save(&self.config.global_defs.state_dir_path(), &self.overrides)
        {
            error!("saving the runtime overrides: {e:#}");
        }
    }

    fn snapshot(&mut self, flow_age: std::time::Duration, per_backend: bool) -> Snapshot {
        let flows: HashMap<u32, u64> = self
            .dp
            .as_mut()
            .map(|d| d.xdp.active_flows(flow_age))
            .unwrap_or_default();
        let health = if per_backend {
            self.checkers.in_order(&self.config)
        } else {
            Vec::new()
        };
        let mut s = snapshot(
            &self.config,
            self.dp.as_ref(),
            self.vrrp.as_ref(),
            &self.notifier,
            &health,
            &flows,
            per_backend,
            &self.overrides,
        );
        s.announce = self.announcer.as_ref().map(|a| a.status());
        s
    }

    /// After any event: a service may have lost or regained its quorum (the tick also
    /// ends the settling time of the first verdicts); the instances tracking it hear of it.
    pub(super) fn after_event(&mut self, now: Instant) {
        let Some(dp) = self.dp.as_mut() else { return };
        if let (Some(a), Some(c)) = (&self.announcer, &self.config.announce) {
            a.set(crate::announce::plan(
                c,
                &self.config.virtual_servers,
                |vs| dp.may_announce(vs, now),
            ));
        }
        for ev in dp.quorum_events(&self.config, now) {
            for (instance, input) in self.tracking.on_event(&ev) {
                info!(%instance, "{} {}: {input:?}", ev.key, if ev.status == track::Status::Up { "has its quorum" } else { "lost its quorum" });
                if let Some(v) = &self.vrrp {
                    v.track(instance, input);
                }
            }
        }
    }
}
