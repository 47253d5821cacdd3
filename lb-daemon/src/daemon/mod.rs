//! `lb-daemon run`: load and attach the XDP program, keep its maps equal to the
//! configuration and the neighbour table, reload on SIGHUP, detach on SIGTERM/SIGINT.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

mod preflight;
mod reconcile;

pub use preflight::{check_file, check_scripts};
pub use reconcile::{dataplane_limits, service_spec, service_specs};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, DataplaneConfig},
    control::{self, Request, Response},
    dataplane::{
        flows::FlowTables,
        maps::BpfMaps,
        neigh::{MacResolver, MacResolverConfig, MacUpdate},
        plan::PlanError,
        program::{self, LoadOptions},
        Dataplane,
    },
    health, metrics,
    model::{Limits, Mac, ServiceKey},
    status::{self, BackendStatus, ServiceStatus, Snapshot, VrrpStatus},
    vrrp::{
        fsm::Input,
        notify::Notifier,
        runtime::{self, Event, MemberSpec, UnitSpec},
        track::{self, TrackEvent, TrackKey, TrackTasks, Tracking},
        vip::{AddressSocket, VirtualAddress},
    },
};

/// The MAC address and index of an interface, by ioctl (works in whatever network
/// namespace the daemon runs in, unlike a path under /sys).
pub fn interface_info(name: &str) -> Result<([u8; 6], u32)> {
    let ifindex = crate::os::ifindex(name)?;
    // SAFETY: plain socket + ioctl with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for SIOCGIFHWADDR");
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            return Err(err).with_context(|| format!("SIOCGIFHWADDR {name}"));
        }
        let sa = req.ifr_ifru.ifru_hwaddr.sa_data;
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(sa.iter()) {
            *m = *b as u8;
        }
        Ok((mac, ifindex))
    }
}

/// Polls the aya-log ring buffer, so the program's rare-event records reach our logs.
fn spawn_bpf_logger(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!("the XDP program's log records will not be shown: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd for as long as it lives, and the
        // AsyncFd owns the logger.
        let registered =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => {
                warn!("cannot poll the XDP log ring: {}", e.into_parts().1);
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// How long a backend may stay without a MAC before the daemon says so.
const MAC_WARN_AFTER: Duration = Duration::from_secs(5);

/// The set of backend addresses to resolve, with the interface they are reached through.
fn wanted(config: &Config, ifindex: u32) -> HashMap<IpAddr, u32> {
    config
        .virtual_servers
        .iter()
        .flat_map(|vs| {
            let sorry = vs.sorry_server.map(|a| a.ip());
            vs.real_servers.iter().map(|rs| rs.addr.ip()).chain(sorry)
        })
        .map(|ip| (ip, ifindex))
        .collect()
}

/// A service's dataplane view and quorum, and the configuration they were computed from.
#[derive(Clone)]
struct DerivedService {
    vs: Arc<crate::config::VirtualServer>,
    quorum: bool,
    spec: crate::dataplane::ServiceSpec,
}

type Derived = HashMap<ServiceKey, DerivedService, foldhash::fast::RandomState>;

/// A real server's verdict (up, dynamic weight) by its checks; `None`: none yet.
type HealthOf<'a> = dyn Fn(&crate::config::VirtualServer, &crate::config::RealServer) -> Option<(bool, Option<u32>)>
    + 'a;

/// Each real server's health, as the checkers last reported it.
type Health = HashMap<(ServiceKey, std::net::SocketAddr), health::BackendHealth>;

/// The XDP side of a running daemon.
struct Dp {
    dp: Dataplane<BpfMaps>,
    /// The instance whose sized maps are in use (the first one, or the last grown).
    _ebpf: aya::Ebpf,
    /// The attached program; a grown instance's program replaces it.
    xdp: program::Attachment,
    /// The maps the running program uses, by name: what a grown instance shares.
    fds: program::MapFds,
    iface: String,
    iface_mac: [u8; 6],
    /// `[dataplane]`'s reserve: the least room the maps keep.
    reserve: Limits,
    /// The connection tables, read for the flows per backend (and shared with sync).
    flows: Arc<FlowTables>,
    /// Connection sync with the peer (`[sync]`).
    sync: Option<crate::sync::SyncHandle>,
    /// The last count of flows per backend id, and when it was taken: a walk of a big
    /// table takes a while, so the metrics' refresh reuses a recent one.
    flow_counts: Option<(Instant, HashMap<u32, u64>)>,
    ifindex: u32,
    macs: HashMap<IpAddr, [u8; 6]>,
    /// Each service's dataplane view and quorum (keepalived's `quorum`, with hysteresis),
    /// as last applied, with the configuration it came from: an apply computes again only
    /// the services whose configuration is another one (a reload's changes) or that are
    /// stale. At 10,000 services, computing all of them took tens of milliseconds.
    derived: Derived,
    /// The specs of the last apply, in its order (see [`Dp::apply_once`]).
    applied: Vec<crate::dataplane::ServiceSpec>,
    /// Every service is to be computed again (see [`Dp::all_stale`]).
    all_stale: bool,
    /// These services are to be computed again (see [`Dp::stale`]).
    stale: HashSet<ServiceKey>,
    /// A quorum changed, or MACs did, since [`Dp::quorum_events`] last looked.
    quorum_moved: bool,
    /// Whether the settling time of the first verdicts had passed when it last looked.
    was_settled: bool,
    /// The services whose quorum the log said was lost (and not yet regained).
    quorum_said_lost: HashSet<ServiceKey>,
    /// What `track_virtual_server` has been told, by service name.
    quorum_reported: HashMap<String, bool>,
    started: Instant,
    /// Backends without a MAC: since when, and whether that has been logged.
    unresolved: HashMap<IpAddr, (Instant, bool)>,
    wanted_tx: watch::Sender<HashMap<IpAddr, u32>>,
    resolver: tokio::task::JoinHandle<Result<(), crate::dataplane::neigh::NeighError>>,
}

impl Dp {
    /// Logs, once, each backend whose MAC the kernel has not resolved for
    /// [`MAC_WARN_AFTER`]: an address no host answers ARP or neighbour solicitation for (a
    /// typo, a server down, another segment) would otherwise be a silent hole in the pool.
    /// Such a backend gets no new flows (status: `mac` null, effective weight 0).
    fn warn_unresolved(&mut self, interface: &str, now: Instant) {
        let wanted = self.wanted_tx.borrow().clone();
        let macs = &self.macs;
        self.unresolved
            .retain(|ip, _| wanted.contains_key(ip) && !macs.contains_key(ip));
        for ip in wanted.keys().filter(|ip| !macs.contains_key(*ip)) {
            let (since, warned) = self.unresolved.entry(*ip).or_insert((now, false));
            if !*warned && now.duration_since(*since) >= MAC_WARN_AFTER {
                *warned = true;
                warn!(
                    backend = %ip,
                    interface,
                    "backend MAC not resolved after {}s: no host answers ARP/neighbour \
                     solicitation for it; it gets no new flows until one does",
                    MAC_WARN_AFTER.as_secs()
                );
            }
        }
    }

    async fn start(
        config: &Config,
        d: &DataplaneConfig,
    ) -> Result<(Self, mpsc::Receiver<MacUpdate>)> {
        let (iface_mac, ifindex) = interface_info(&d.interface)?;
        let limits = dataplane_limits(config).context("sizing the dataplane's maps")?;
        info!(%limits, "sizing the XDP program's maps");
        let opts = LoadOptions {
            limits,
            max_flows: d.max_flows,
            iface_mac,
            sync: config.sync.as_ref().map(|s| program::SyncLoad {
                ring_bytes: s.ring_size,
                refresh_shift: s.refresh_shift(),
            }),
            ..LoadOptions::default()
        };
        let sync_key = config.sync_key()?;
        let mut ebpf = program::load(&opts).context("loading the XDP program")?;
        // Before any map is taken out of `ebpf`: `lb_native` is loaded against them.
        let native = program::native_plan(&ebpf, &d.interface, ifindex, d.xdp_mode).await;
        let fds = program::MapFds::of(&ebpf)?;
        spawn_bpf_logger(&mut ebpf);
        let mut maps = BpfMaps::new(&mut ebpf)?;
        let flows = Arc::new(FlowTables::take(&mut ebpf)?);
        let sync = match (&config.sync, sync_key) {
            (Some(s), Some(key)) => {
                let parts = crate::sync::ProgramParts::take(&mut ebpf, flows.clone())?;
                Some(
                    crate::sync::SyncHandle::start(s, &key, parts)
                        .context("starting connection sync")?,
                )
            }
            _ => None,
        };
        // The clock before the first packet: a flow stamped 0 would look idle for years at
        // the first tick and be rescheduled.
        maps.set_clock(monotonic_seconds())?;
        let xdp = program::attach_xdp(
            &mut ebpf,
            native,
            &d.interface,
            ifindex,
            d.xdp_mode,
            d.keep_xdp_on_exit,
        )
        .await?;
        info!(interface = %d.interface, mode = xdp.mode.name(), program = xdp.program, keep_on_exit = d.keep_xdp_on_exit, "XDP program attached");
        let (wanted_tx, wanted_rx) = watch::channel(wanted(config, ifindex));
        let (mac_tx, mac_rx) = mpsc::channel::<MacUpdate>(1024);
        let resolver = MacResolver::new(MacResolverConfig::default())?;
        let resolver = tokio::spawn(resolver.run(wanted_rx, mac_tx));
        let dp = Dataplane::new(maps, opts.limits);
        Ok((
            Self {
                dp,
                _ebpf: ebpf,
                xdp,
                fds,
                iface: d.interface.clone(),
                iface_mac,
                reserve: d.reserve,
                flows,
                sync,
                flow_counts: None,
                ifindex,
                macs: HashMap::new(),
                unresolved: HashMap::new(),
                derived: Derived::default(),
                applied: Vec::new(),
                all_stale: true,
                stale: HashSet::new(),
                quorum_moved: false,
                was_settled: false,
                quorum_said_lost: HashSet::new(),
                quorum_reported: HashMap::new(),
                started: Instant::now(),
                wanted_tx,
                resolver,
            },
            mac_rx,
        ))
    }

    /// Flows per backend id (current generation only), counted at most `max_age` ago. A
    /// failed walk is logged and shows as no flows.
    fn active_flows(&mut self, max_age: Duration) -> HashMap<u32, u64> {
        if let Some((at, counts)) = &self.flow_counts {
            if at.elapsed() <= max_age {
                return counts.clone();
            }
        }
        let current = self.dp.current();
        let idle_of = |sid: u32| current.infos.get(&sid).map(|i| i.idle_timeout_s);
        let counts = match self.flows.counts(monotonic_seconds(), idle_of) {
            Ok(c) => c,
            Err(e) => {
                warn!("counting flows: {e}");
                Default::default()
            }
        };
        let mut per_backend = HashMap::new();
        for ((bid, generation), n) in counts {
            if current
                .backends
                .get(&bid)
                .is_some_and(|b| b.generation == generation)
            {
                *per_backend.entry(bid).or_default() += n;
            }
        }
        self.flow_counts = Some((Instant::now(), per_backend.clone()));
        per_backend
    }

    /// Moves the dataplane to maps of `to` (each size at least what it is): a new program
    /// instance over new sized maps, sharing the flow tables and everything else with the
    /// running one, filled with the whole plan, then put in the running program's place in
    /// one step. Flows, persistence and sync carry on; a failure leaves the running
    /// instance as it was.
    async fn grow(&mut self, to: Limits) -> Result<()> {
        let was = self.dp.limits();
        let limits = to.max(was);
        let started = Instant::now();
        let bound = (self.xdp.program == crate::dataplane::devbound::PROGRAM_NATIVE)
            .then_some((self.iface.as_str(), self.ifindex));
        let mut grown = program::grow(limits, self.iface_mac, &self.fds, self.xdp.program, bound)
            .context("loading a larger XDP program instance")?;
        let maps = self.dp.writer().regrown(&mut grown.ebpf, &grown.fds)?;
        let old = self
            .dp
            .replace_maps(maps, limits)
            .context("filling the larger maps")?;
        if let Err(e) = self.xdp.replace(grown.prog).await {
            self.dp.restore_maps(old, was);
            return Err(e).context("switching to the larger XDP program instance");
        }
        // Flow-cache slots were filled against the old maps; they hold the same now, but
        // nothing is assumed.
        self.dp.writer_mut().new_epoch()?;
        self._ebpf = grown.ebpf;
        self.fds = grown.fds;
        info!(from = %was, to = %limits, ms = started.elapsed().as_millis() as u64, "XDP maps grown");
        Ok(())
    }

    /// [`Dp::apply`], growing the maps when the plan needs more room (or `[dataplane]`'s
    /// reserve asks for it) and trying again.
    async fn apply(
        &mut self,
        config: &Config,
        master_vips: &HashSet<IpAddr>,
        health: &Health,
    ) -> Result<()> {
        if !self.dp.limits().covers(&self.reserve) {
            self.grow(self.reserve).await?;
        }
        match self.apply_once(config, master_vips, health) {
            Err(PlanError::NoRoom { needs, .. }) => {
                self.grow(Limits::with_headroom(needs).max(self.reserve))
                    .await?;
                Ok(self.apply_once(config, master_vips, health)?)
            }
            r => Ok(r?),
        }
    }

    fn apply_once(
        &mut self,
        config: &Config,
        master_vips: &HashSet<IpAddr>,
        health: &Health,
    ) -> Result<(), PlanError> {
        let health_of = |vs: &crate::config::VirtualServer, rs: &crate::config::RealServer| {
            health.get(&(vs.key(), rs.addr)).map(|h| (h.up, h.weight))
        };
        let all_stale = std::mem::take(&mut self.all_stale);
        let stale = std::mem::take(&mut self.stale);
        // The last apply's specs, where a kept service at the same place is already right
        // (cloning 10,000 specs of 10 real servers was a third of a reload's planning).
        let mut specs = std::mem::take(&mut self.applied);
        specs.truncate(config.virtual_servers.len());
        let put = |specs: &mut Vec<crate::dataplane::ServiceSpec>,
                   i: usize,
                   spec: &crate::dataplane::ServiceSpec| {
            match specs.get_mut(i) {
                Some(s) => s.clone_from(spec),
                None => specs.push(spec.clone()),
            }
        };
        // Which specs are the ones last applied (see `Dataplane::update_known`).
        let mut same = Vec::with_capacity(config.virtual_servers.len());
        // The services computed again, taken in once the maps have them.
        let mut fresh = Vec::new();
        let mut quorum_moved = false;
        for (i, vs) in config.virtual_servers.iter().enumerate() {
            let key = vs.key();
            let kept = self
                .derived
                .get(&key)
                .filter(|d| !all_stale && Arc::ptr_eq(&d.vs, vs) && !stale.contains(&key));
            same.push(kept.is_some());
            match kept {
                Some(d) => {
                    let here = specs.get(i).is_some_and(|s| s.key() == key);
                    if !here {
                        put(&mut specs, i, &d.spec);
                    }
                }
                None => {
                    let d = self.derive(vs, master_vips, &health_of);
                    quorum_moved |= self.derived.get(&key).map(|old| old.quorum) != Some(d.quorum);
                    put(&mut specs, i, &d.spec);
                    fresh.push((key, d));
                }
            }
        }
        let result = self.dp.update_known(&specs, &same);
        // Whatever the result: after a failure every service is computed again (below),
        // so nothing here is taken for right.
        self.applied = specs;
        if result.is_ok() {
            self.derived.extend(fresh);
            if self.derived.len() > config.virtual_servers.len() {
                // Services were removed.
                let now: HashSet<ServiceKey> =
                    config.virtual_servers.iter().map(|vs| vs.key()).collect();
                self.derived.retain(|k, _| now.contains(k));
                quorum_moved = true;
            }
            self.quorum_moved |= quorum_moved;
        } else {
            // Nothing was taken in: all of it is computed again next time.
            self.all_stale = true;
        }
        if let Some(s) = &self.sync {
            // Sync names flows by the ids the maps hold now.
            s.set_index(crate::sync::index_for(config, &self.dp));
        }
        result
    }

    /// A service's dataplane view (see [`service_specs`]) and its quorum, logging a
    /// quorum lost or regained.
    fn derive(
        &mut self,
        vs: &Arc<crate::config::VirtualServer>,
        master_vips: &HashSet<IpAddr>,
        health_of: &HealthOf,
    ) -> DerivedService {
        let key = vs.key();
        // The healthy weight: real servers that pass their checks and can be sent to.
        let healthy: u32 = vs
            .real_servers
            .iter()
            .filter(|rs| self.macs.contains_key(&rs.addr.ip()))
            .filter_map(|rs| rs.healthy_weight(health_of(vs, rs)))
            .sum();
        let had = self.derived.get(&key).map(|d| d.quorum);
        let has = vs.quorum_next(had.unwrap_or(true), healthy);
        // The first verdict (at start, before MACs resolve) is not news, nor is a pool
        // coming up as its MACs resolve: only a quorum said lost is said regained.
        if had.is_some_and(|had| had != has) {
            let news = if has {
                self.quorum_said_lost.remove(&key)
            } else {
                self.quorum_said_lost.insert(key)
            };
            if news {
                let what = if has { "regained" } else { "lost" };
                info!(vip = %vs.vip, port = vs.port, healthy, quorum = vs.quorum, "service quorum {what}");
            }
        }
        let spec = service_spec(
            vs,
            |ip| self.macs.get(&ip).copied(),
            master_vips,
            health_of,
            has,
        );
        DerivedService {
            vs: vs.clone(),
            quorum: has,
            spec,
        }
    }

    /// Every service is computed again at the next apply (VIPs changed hands, MACs moved).
    fn all_stale(&mut self) {
        self.all_stale = true;
        // Whether a service's MACs are all known decides when its quorum is first told.
        self.quorum_moved = true;
    }

    /// These services are computed again at the next apply (their health changed).
    fn stale(&mut self, services: impl IntoIterator<Item = ServiceKey>) {
        self.stale.extend(services);
    }

    /// The quorum changes `track_virtual_server` has not heard of yet (see
    /// [`quorum_changes`]).
    fn quorum_events(&mut self, config: &Config) -> Vec<TrackEvent> {
        let settled = self.started.elapsed() >= QUORUM_SETTLE;
        // A walk of every service after every event cost milliseconds at 10,000 of them:
        // only a quorum that moved, a MAC learned or the end of the settling time can
        // change what is reported.
        if !std::mem::take(&mut self.quorum_moved) && settled == self.was_settled {
            return Vec::new();
        }
        self.was_settled = settled;
        let (events, reported) = quorum_changes(
            config,
            |key| self.derived.get(key).map(|d| d.quorum),
            |ip| self.macs.contains_key(&ip),
            &self.quorum_reported,
            settled,
        );
        self.quorum_reported = reported;
        events
    }

    /// What the services' quorums are, as [`Tracking::seed`] takes it.
    /// Only the services `config`'s instances track: the others are not looked up.
    fn quorum_status(&self, config: &Config) -> HashMap<TrackKey, track::Status> {
        config
            .vrrp_instances
            .iter()
            .flat_map(|i| &i.track_virtual_server)
            .filter_map(|t| {
                let has = *self.quorum_reported.get(&t.name)?;
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

/// The quorum changes to report, and what will then have been reported (by service name),
/// from each service's current quorum and what was reported before. A service's first
/// verdict waits until its real servers' MACs are known, or until `settled`: before that, a
/// healthy pool looks empty and would fault its instance at every start.
fn quorum_changes(
    config: &Config,
    quorum: impl Fn(&ServiceKey) -> Option<bool>,
    has_mac: impl Fn(IpAddr) -> bool,
    before: &HashMap<String, bool>,
    settled: bool,
) -> (Vec<TrackEvent>, HashMap<String, bool>) {
    let mut events = Vec::new();
    let mut reported = HashMap::new();
    for vs in &config.virtual_servers {
        let name = vs.name();
        let Some(has) = quorum(&vs.key()) else {
            continue;
        };
        let was = before.get(&name).copied();
        let known = settled || vs.real_servers.iter().all(|rs| has_mac(rs.addr.ip()));
        if was.is_none() && !known {
            continue;
        }
        if was != Some(has) {
            events.push(TrackEvent {
                key: TrackKey::Service(name.clone()),
                up: has,
            });
        }
        reported.insert(name, has);
    }
    (events, reported)
}

/// How old a count of flows per backend may be: `lb-daemon status` wants it fresh, the
/// metrics (refreshed every second) take one from the last ten seconds, so that a big
/// connection table is not walked every second.
const STATUS_FLOW_COUNT_AGE: Duration = Duration::from_secs(1);
const METRICS_FLOW_COUNT_AGE: Duration = Duration::from_secs(10);

/// How long a service's quorum may stay unreported while some of its real servers' MACs
/// are still unknown (see [`Dp::quorum_events`]).
const QUORUM_SETTLE: Duration = Duration::from_secs(3);

/// Passes quorum changes to the VRRP instances that track them.
fn report_quorum(
    dp: Option<&mut Dp>,
    config: &Config,
    tracking: &mut Tracking,
    vrrp: Option<&runtime::VrrpThread>,
) {
    let Some(dp) = dp else { return };
    for ev in dp.quorum_events(config) {
        for (instance, input) in tracking.on_event(&ev) {
            info!(%instance, "{} {}: {input:?}", ev.key, if ev.up { "has its quorum" } else { "lost its quorum" });
            if let Some(v) = vrrp {
                v.send(
                    &instance,
                    runtime::Control::Track {
                        member: instance.clone(),
                        input,
                    },
                );
            }
        }
    }
}

/// Resolves each VRRP instance against the host: interface index, source address, own
/// addresses, virtual addresses; and groups instances into units (sync groups).
async fn vrrp_units(config: &Config, tracking: &mut Tracking) -> Result<Vec<UnitSpec>> {
    let mut addrs = AddressSocket::open()?;
    let mut members: HashMap<String, MemberSpec> = HashMap::new();
    let mut initial: HashMap<String, Vec<Input>> = HashMap::new();
    for (name, input) in tracking.inputs() {
        initial.entry(name).or_default().push(input);
    }
    for inst in &config.vrrp_instances {
        let (_, ifindex) = interface_info(&inst.interface)?;
        let vip_set: HashSet<IpAddr> = inst.virtual_ipaddress.iter().map(|v| v.addr).collect();
        let on_link: Vec<IpAddr> = addrs
            .list(Some(ifindex))
            .await?
            .into_iter()
            .map(|a| a.addr)
            .filter(|a| !vip_set.contains(a))
            .collect();
        let v6 = inst.family_v6();
        let primary = match inst.unicast_src_ip {
            Some(a) => a,
            None => on_link
                .iter()
                .copied()
                .find(|a| match a {
                    // RFC 9568 §5.1.2.1: IPv6 adverts come from the link-local address.
                    IpAddr::V6(a) => v6 && a.segments()[0] & 0xffc0 == 0xfe80,
                    IpAddr::V4(_) => !v6,
                })
                .with_context(|| {
                    format!(
                        "vrrp_instance {}: {} has no {} address to send adverts from",
                        inst.name,
                        inst.interface,
                        if v6 { "IPv6 link-local" } else { "IPv4" }
                    )
                })?,
        };
        let mut vips = Vec::new();
        for v in &inst.virtual_ipaddress {
            let ifindex = match &v.dev {
                Some(dev) => interface_info(dev)?.1,
                None => ifindex,
            };
            let mut va = VirtualAddress::new(v.addr, ifindex).with_prefix(v.prefix_len);
            if let Some(l) = &v.label {
                va = va.with_label(l.clone());
            }
            vips.push(va);
        }
        members.insert(
            inst.name.clone(),
            MemberSpec {
                config: inst.clone(),
                ifindex,
                primary,
                own: on_link,
                vips,
                initial: initial.remove(&inst.name).unwrap_or_default(),
                dataplane: config.dataplane.is_some(),
            },
        );
    }
    let mut units = Vec::new();
    for g in &config.sync_groups {
        let ms: Vec<MemberSpec> = g.members.iter().filter_map(|n| members.remove(n)).collect();
        units.push(UnitSpec {
            members: ms,
            group: Some(g.name.clone()),
        });
    }
    // Instances in no group, in configuration order.
    for inst in &config.vrrp_instances {
        if let Some(m) = members.remove(&inst.name) {
            units.push(UnitSpec {
                members: vec![m],
                group: None,
            });
        }
    }
    Ok(units)
}

pub async fn run(config_path: PathBuf) -> Result<()> {
    // What the last read parsed, by service block: a reload parses only what changed.
    let mut parsed = crate::config::split::Cache::default();
    let mut config = Config::load_cached(&config_path, &mut parsed)?;
    check_scripts(&config)?;
    let (mut dp, mut mac_rx) = match &config.dataplane {
        Some(d) => {
            let (dp, rx) = Dp::start(&config, d).await?;
            (Some(dp), Some(rx))
        }
        None => (None, None),
    };
    let mut master_vips: HashSet<IpAddr> = HashSet::new();
    // Health checks of the real servers; their first verdicts arrive as events.
    let (health_tx, mut health_rx) = mpsc::channel(256);
    let mut checkers = health::Checkers::start(&config, health_tx)?;
    let mut health: Health = checkers.snapshot();
    if let Some(dp) = dp.as_mut() {
        // A configuration the dataplane cannot hold is a start-up error.
        dp.apply(&config, &master_vips, &health)
            .await
            .context("writing the configuration into the dataplane")?;
    }

    // Unbounded: the VRRP thread must never wait for the main loop.
    let (event_tx, mut event_rx) = mpsc::unbounded_channel::<Event>();
    // Notify hooks and the JSON event stream; tracked scripts and interfaces.
    let notifier = Notifier::from_config(&config)?;
    let (track_tx, mut track_rx) = mpsc::channel(track::EVENT_QUEUE_LEN);
    let mut track_tasks = TrackTasks::start(&config, track_tx)?;
    let mut tracking = Tracking::new(&config)?;
    tracking.seed(&track_tasks.snapshot());
    let vrrp = if config.vrrp_instances.is_empty() {
        None
    } else {
        let units = vrrp_units(&config, &mut tracking).await?;
        Some(runtime::spawn(units, event_tx.clone())?)
    };

    // The program's clock: flow idle times and persistence templates are measured on it.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    // The control socket (status, reload) and the Prometheus endpoint.
    let ctl = control::Server::bind(&config.global_defs.control_socket_path()).await?;
    let (ctl_tx, mut ctl_rx) = mpsc::channel(control::CALL_QUEUE_LEN);
    tokio::spawn(ctl.serve(ctl_tx));
    let (snap_tx, snap_rx) = watch::channel(Arc::default());
    let metrics_on = config.global_defs.metrics_address.is_some();
    let mut metrics_due = Instant::now();
    if let Some(addr) = config
        .global_defs
        .metrics_address
        .as_ref()
        .map(|a| *a.get_ref())
    {
        let server = metrics::MetricsServer::bind(addr, false).await?;
        info!(%addr, "Prometheus metrics on /metrics");
        tokio::spawn(server.run(snap_rx));
    }
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Err(e) = crate::sdnotify::notify("READY=1") {
        warn!("telling systemd we are ready: {e}");
    }
    info!(
        services = config.virtual_servers.len(),
        vrrp_instances = config.vrrp_instances.len(),
        "running"
    );
    loop {
        tokio::select! {
            Some(up) = recv_opt(&mut mac_rx) => {
                let Some(dp) = dp.as_mut() else { continue };
                // Every update waiting is taken with this one: one plan for all of them.
                let mut up = Some(up);
                while let Some(u) = up.take().or_else(|| mac_rx.as_mut().and_then(|r| r.try_recv().ok())) {
                    match u.mac {
                        Some(mac) => {
                            info!(backend = %u.addr, mac = %Mac(mac), "backend MAC resolved");
                            dp.macs.insert(u.addr, mac);
                        }
                        None => {
                            warn!(backend = %u.addr, "backend MAC unknown: no new flows to it");
                            dp.macs.remove(&u.addr);
                            // Said once already: no second warning from the tick.
                            dp.unresolved.insert(u.addr, (Instant::now(), true));
                        }
                    }
                }
                // A MAC is in every service that has the address.
                dp.all_stale();
                if let Err(e) = dp.apply(&config, &master_vips, &health).await {
                    error!("updating the dataplane: {e:#}");
                }
            }
            Some(ev) = event_rx.recv() => match ev {
                Event::Role { instance, vips, master, applied } => {
                    info!(%instance, master, "VRRP role: {}", if master { "serving" } else { "passing" });
                    for v in vips {
                        if master {
                            master_vips.insert(v);
                        } else {
                            master_vips.remove(&v);
                        }
                    }
                    if let Some(dp) = dp.as_mut() {
                        dp.all_stale();
                        if let Err(e) = dp.apply(&config, &master_vips, &health).await {
                            error!("updating the dataplane: {e:#}");
                        }
                        // The sync instance's master sends its flows; a backup installs them.
                        if let (Some(s), Some(c)) = (&dp.sync, &config.sync) {
                            if c.vrrp_instance == instance {
                                s.set_master(master);
                            }
                        }
                    }
                    // The new master may announce its VIPs now.
                    applied.done();
                }
                Event::State(ev) => notifier.notify(ev),
            },
            Some(ev) = health_rx.recv() => {
                // Every event waiting is taken with this one: one plan for all of them (a
                // start with 100,000 real servers reports each once).
                let mut ev = Some(ev);
                let mut services = HashSet::new();
                while let Some(e) = ev.take().or_else(|| health_rx.try_recv().ok()) {
                    info!(service = %e.service, backend = %e.backend, up = e.up, weight = ?e.weight, "real server health");
                    services.insert(e.service);
                }
                let services: HashSet<_, foldhash::fast::RandomState> = services.into_iter().collect();
                checkers.refresh(&mut health, health::Scope::Services(&services));
                if let Some(dp) = dp.as_mut() {
                    dp.stale(services);
                    if let Err(e) = dp.apply(&config, &master_vips, &health).await {
                        error!("updating the dataplane: {e:#}");
                    }
                }
            }
            Some(ev) = track_rx.recv() => {
                if let Some(v) = &vrrp {
                    for (instance, input) in tracking.on_event(&ev) {
                        v.send(&instance, runtime::Control::Track { member: instance.clone(), input });
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(dp) = dp.as_mut() {
                    if let Err(e) = dp.dp.writer_mut().set_clock(monotonic_seconds()) {
                        error!("updating the XDP program's clock: {e}");
                    }
                    if let Some(d) = &config.dataplane {
                        dp.warn_unresolved(&d.interface, Instant::now());
                    }
                }
                // Every second, or less often when a refresh costs more than 2% of a core
                // (0.13 s at 100,000 real servers with per-backend metrics: every 7 s).
                if metrics_on && Instant::now() >= metrics_due {
                    let started = Instant::now();
                    let flows = dp.as_mut().map(|d| d.active_flows(METRICS_FLOW_COUNT_AGE)).unwrap_or_default();
                    // Without per-backend metrics the real servers are left out whole: no
                    // health to copy, no backend counters to read.
                    let per_backend = config.global_defs.metrics_per_backend.unwrap_or(true);
                    let health = if per_backend { checkers.in_order(&config) } else { Vec::new() };
                    let snap = snapshot(&config, dp.as_ref(), vrrp.as_ref(), &notifier, &health, &flows, per_backend);
                    snap_tx.send_replace(Arc::new(metrics::Exposition::new(snap, per_backend)));
                    metrics_due = started + started.elapsed() * 50;
                }
            }
            _ = hup.recv() => {
                if let Err(e) = reload(&config_path, &mut parsed, &mut config, &mut dp, &mut track_tasks, &mut tracking, &mut checkers, &mut health, &master_vips).await {
                    error!("reload refused, keeping the running configuration: {e}");
                }
            }
            Some(call) = ctl_rx.recv() => match call.request {
                Request::Status => {
                    // The checkers' current view: `health` moves only on up/down changes,
                    // while status also shows whether a check has run, its latency, its error.
                    let flows = dp.as_mut().map(|d| d.active_flows(STATUS_FLOW_COUNT_AGE)).unwrap_or_default();
                    let snap = snapshot(&config, dp.as_ref(), vrrp.as_ref(), &notifier, &checkers.in_order(&config), &flows, true);
                    call.reply(Response::status(snap));
                }
                Request::Reload => {
                    match reload(&config_path, &mut parsed, &mut config, &mut dp, &mut track_tasks, &mut tracking, &mut checkers, &mut health, &master_vips).await {
                        Ok(()) => call.reply(Response::ok()),
                        Err(e) => {
                            error!("reload refused, keeping the running configuration: {e}");
                            call.reply(Response::error(e));
                        }
                    }
                }
            },
            res = resolver_done(&mut dp) => {
                anyhow::bail!("the neighbour resolver stopped: {:?}", res);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        // Whatever the event, a service may have lost or regained its quorum (the tick
        // also ends the settling time of the first verdicts).
        report_quorum(dp.as_mut(), &config, &mut tracking, vrrp.as_ref());
    }
    let _ = crate::sdnotify::notify("STOPPING=1");
    if let Some(v) = vrrp {
        info!("stopping VRRP: priority-0 adverts, releasing the virtual addresses");
        tokio::task::spawn_blocking(move || v.shutdown(std::time::Duration::from_secs(3))).await?;
        // The STOP events the units sent on their way out.
        while let Ok(ev) = event_rx.try_recv() {
            if let Event::State(ev) = ev {
                notifier.notify(ev);
            }
        }
    }
    drop(track_tasks);
    // keepalived gives stop hooks a second.
    notifier.shutdown(std::time::Duration::from_secs(1)).await;
    match config.dataplane.as_ref().map(|d| d.keep_xdp_on_exit) {
        Some(true) => info!("stopping: leaving the XDP program attached (keep_xdp_on_exit)"),
        Some(false) => info!("stopping: detaching the XDP program"),
        None => {}
    }
    drop(dp);
    Ok(())
}

/// Re-reads the file and applies it as a diff. A file that does not load, or that changes
/// what cannot change in place (the dataplane section, the VRRP instances: restarting VRRP
/// would release and retake the VIPs, a flap), changes nothing.
// Each argument is a separate piece of the main loop's state that a reload may change; a
// struct bundling them would only exist for this call.
#[allow(clippy::too_many_arguments)]
async fn reload(
    path: &std::path::Path,
    parsed: &mut crate::config::split::Cache,
    config: &mut Config,
    dp: &mut Option<Dp>,
    track_tasks: &mut TrackTasks,
    tracking: &mut Tracking,
    checkers: &mut health::Checkers,
    health: &mut Health,
    master_vips: &HashSet<IpAddr>,
) -> Result<(), String> {
    let started = Instant::now();
    // The cache is a memo of text to service: what it keeps is right whether or not
    // this reload goes through.
    let new = Config::load_cached(path, parsed).map_err(|e| e.to_string())?;
    check_scripts(&new).map_err(|e| e.to_string())?;
    let parsed = started.elapsed();
    if new.sync != config.sync {
        return Err("the [sync] section changed: restart to apply it".into());
    }
    // The reserve of room may change in place (the maps grow to it); nothing else may.
    let in_place = |d: &Option<DataplaneConfig>| {
        d.clone().map(|d| DataplaneConfig {
            reserve: Limits::default(),
            ..d
        })
    };
    if in_place(&new.dataplane) != in_place(&config.dataplane) {
        return Err("the [dataplane] section changed: restart to apply it".into());
    }
    if new.vrrp_instances != config.vrrp_instances || new.sync_groups != config.sync_groups {
        return Err("VRRP instances changed: restart to apply them".into());
    }
    let mut t = Tracking::new(&new).map_err(|e| e.to_string())?;
    // The maps first: a configuration the dataplane cannot hold (too many services or
    // backends) is refused before anything else changes.
    let planning = Instant::now();
    if let Some(dp) = dp.as_mut() {
        // A larger reserve grows the maps now; a smaller one gives nothing back (the maps
        // never shrink while running).
        if let Some(d) = &new.dataplane {
            dp.reserve = d.reserve;
        }
        if let Err(e) = dp.apply(&new, master_vips, health).await {
            // Put back what may have been written.
            let _ = dp.apply(config, master_vips, health).await;
            return Err(format!("the dataplane cannot take it: {e:#}"));
        }
    }
    let planned = planning.elapsed();
    // Unchanged scripts keep their rise/fall state across the reload.
    if let Err(e) = track_tasks.reload(&new) {
        if let Some(dp) = dp.as_mut() {
            let _ = dp.apply(config, master_vips, health).await;
        }
        return Err(e.to_string());
    }
    // The services this reload touches; a change of `global_defs` (the scripts' user,
    // script security) reaches every check.
    let changed = config.changed_services(&new);
    let scope = if new.global_defs == config.global_defs {
        health::Scope::Services(&changed)
    } else {
        health::Scope::All
    };
    let addresses_moved = addresses(config, &changed) != addresses(&new, &changed);
    let health_before = &verdicts(&new, &changed, health);
    // Unchanged checkers keep their state and timers.
    if let Err(e) = checkers.reload(&new, scope, health) {
        let _ = track_tasks.reload(config);
        if let Some(dp) = dp.as_mut() {
            let _ = dp.apply(config, master_vips, health).await;
        }
        return Err(e.to_string());
    }
    t.seed(&track_tasks.snapshot());
    if let Some(dp) = dp.as_ref() {
        t.seed(&dp.quorum_status(&new));
    }
    *tracking = t;
    *config = new;
    if let Some(dp) = dp.as_mut() {
        // A changed service's pool decides when its quorum is first told (all its MACs
        // known), even when the quorum itself did not move.
        dp.quorum_moved |= !changed.is_empty();
        // Rebuilt from every service only when some address came or went.
        if addresses_moved {
            let want = wanted(config, dp.ifindex);
            // The resolver says nothing about addresses it stops watching; a MAC kept for
            // one could go stale unnoticed if it came back.
            dp.macs.retain(|ip, _| want.contains_key(ip));
            let _ = dp.wanted_tx.send(want);
        }
        // The changed services again, with their checkers' first view, if that differs
        // from what they were planned with (no verdict yet plans a new real server as its
        // checker starts it, so it rarely does).
        let again = match scope {
            health::Scope::All => {
                dp.all_stale();
                true
            }
            health::Scope::Services(s) => {
                dp.stale(s.iter().copied());
                *health_before != verdicts(config, s, health)
            }
        };
        if again {
            if let Err(e) = dp.apply(config, master_vips, health).await {
                error!("updating the dataplane: {e:#}");
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    info!(
        services = config.virtual_servers.len(),
        parse_ms = ms(parsed),
        maps_ms = ms(planned),
        total_ms = ms(started.elapsed()),
        "configuration reloaded"
    );
    Ok(())
}

/// The addresses (real servers', sorry servers') of `services`, by service.
fn addresses(
    config: &Config,
    services: &HashSet<ServiceKey, foldhash::fast::RandomState>,
) -> Vec<(ServiceKey, Vec<IpAddr>)> {
    let mut all: Vec<_> = config
        .virtual_servers
        .iter()
        .filter(|vs| services.contains(&vs.key()))
        .map(|vs| {
            let sorry = vs.sorry_server.map(|a| a.ip());
            let ips = vs.real_servers.iter().map(|rs| rs.addr.ip()).chain(sorry);
            (vs.key(), ips.collect())
        })
        .collect();
    all.sort();
    all
}

/// The weight each real server of `services` serves with by `health`, as the dataplane
/// plans it ([`crate::config::RealServer::healthy_weight`]).
fn verdicts(
    config: &Config,
    services: &HashSet<ServiceKey, foldhash::fast::RandomState>,
    health: &Health,
) -> Vec<Option<u32>> {
    config
        .virtual_servers
        .iter()
        .filter(|vs| services.contains(&vs.key()))
        .flat_map(|vs| {
            vs.real_servers.iter().map(|rs| {
                let verdict = health.get(&(vs.key(), rs.addr)).map(|h| (h.up, h.weight));
                rs.healthy_weight(verdict)
            })
        })
        .collect()
}

/// What `lb-daemon status` and the metrics show, from the maps, the VRRP thread's stats and
/// the configuration. Without `per_backend` each service's real servers are left out, and
/// their counters and health unread (the metrics of `metrics_per_backend = false`).
fn snapshot(
    config: &Config,
    dp: Option<&Dp>,
    vrrp: Option<&runtime::VrrpThread>,
    notifier: &Notifier,
    health: &[Option<health::BackendHealth>],
    flows: &HashMap<u32, u64>,
    per_backend: bool,
) -> Snapshot {
    use crate::model::Scheduler;
    let mut snap = Snapshot::new(config.global_defs.router_id.clone());
    if let Some(dp) = dp {
        let maps = dp.dp.writer();
        // All the counters in a few batched reads: a lookup per id cost 0.14 s of system
        // calls at 10,000 services of 10 real servers. Ids are dense from 0, so what the
        // plan uses is all there is to read.
        let used = dp.dp.needs();
        let service_counters = maps.all_service_counters(used.services).unwrap_or_default();
        let backend_counters = if per_backend {
            maps.all_backend_counters(used.backends).unwrap_or_default()
        } else {
            Vec::new()
        };
        let counters = |all: &[lb_common::TrafficCounters], id: u32| {
            all.get(id as usize).copied().unwrap_or_default()
        };
        // By id too: a hash lookup per backend adds up.
        let mut flows_by_id = vec![0u64; used.backends as usize];
        for (&bid, &n) in flows {
            if let Some(f) = flows_by_id.get_mut(bid as usize) {
                *f = n;
            }
        }
        let flows_of = |bid: &u32| flows_by_id.get(*bid as usize).copied().unwrap_or(0);
        snap.services.reserve(dp.dp.specs().len());
        // Where each service's real servers start in `health`.
        let mut first_rs = 0;
        for (spec, vs) in dp.dp.specs().iter().zip(&config.virtual_servers) {
            let health = health.get(first_rs..).unwrap_or_default();
            first_rs += vs.real_servers.len();
            let Some((sid, bids)) = dp.dp.ids_of(spec) else {
                continue;
            };
            let sc = counters(&service_counters, sid);
            let real_servers = if per_backend {
                &vs.real_servers[..]
            } else {
                &[]
            };
            let backends = spec
                .backends
                .iter()
                .zip(&bids)
                .zip(real_servers.iter().enumerate())
                .map(|((b, bid), (i, rs))| {
                    let bc = counters(&backend_counters, *bid);
                    let active_flows = flows_of(bid);
                    let h = health.get(i).and_then(Option::as_ref);
                    let verdict = match h {
                        Some(h) if !h.checked() => status::HEALTH_UNKNOWN,
                        Some(h) if h.up => status::HEALTH_UP,
                        Some(_) => status::HEALTH_DOWN,
                        None => status::HEALTH_UNKNOWN,
                    };
                    BackendStatus {
                        addr: b.addr,
                        weight: rs.weight,
                        // The planner leaves a backend without a MAC out of the ring.
                        effective_weight: if b.mac.is_some() { b.weight } else { 0 },
                        health: verdict.into(),
                        mac: b.mac.as_ref().map(status::mac_text),
                        packets: bc.packets,
                        bytes: bc.bytes,
                        new_flows: bc.new_flows,
                        active_flows,
                        checks_run: h.map_or(0, |h| h.checks.iter().map(|c| c.probes).sum()),
                        checks_failed: h.map_or(0, |h| h.failures),
                        check_latency_ms: h
                            .and_then(|h| h.last_latency)
                            .map(|d| d.as_secs_f64() * 1e3),
                        last_error: h.and_then(|h| h.last_error.clone()),
                    }
                })
                .collect();
            snap.services.push(ServiceStatus {
                vip: spec.vip,
                port: spec.port,
                protocol: spec.proto.name().into(),
                scheduler: match spec.sched {
                    Scheduler::Rr => "rr",
                    Scheduler::Wrr => "wrr",
                    Scheduler::Sh => "sh",
                    Scheduler::Mh => "mh",
                }
                .into(),
                active: spec.active,
                persistence_timeout: spec.persistence_timeout,
                packets: sc.packets,
                bytes: sc.bytes,
                new_flows: sc.new_flows,
                active_flows: bids.iter().map(flows_of).sum(),
                backends,
            });
        }
        if let Ok(r) = maps.reason_counters() {
            snap.reasons = status::reasons_from_counters(&r);
        }
        snap.sync = dp.sync.as_ref().map(|s| s.status());
    }
    if let Some(v) = vrrp {
        let stats = v.stats.lock().map(|m| m.clone()).unwrap_or_default();
        for inst in &config.vrrp_instances {
            let st = stats.get(&inst.name).cloned().unwrap_or_default();
            let version = inst.version.number();
            snap.vrrp.push(VrrpStatus::from_stats(
                &inst.name,
                &inst.interface,
                inst.vrid,
                version,
                &st,
            ));
        }
    }
    snap.notify = Some(notifier.counters().into());
    snap
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn resolver_done(
    dp: &mut Option<Dp>,
) -> Result<Result<(), crate::dataplane::neigh::NeighError>, tokio::task::JoinError> {
    match dp {
        Some(dp) => (&mut dp.resolver).await,
        None => std::future::pending().await,
    }
}

/// Seconds of CLOCK_MONOTONIC, the program's time base.
fn monotonic_seconds() -> u32 {
    crate::os::monotonic().as_secs() as u32
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
[dataplane]
interface = "eth0"

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true
quorum = 2

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80

  [[virtual_server.real_server]]
  ip = "192.0.2.12"
  port = 80
"#;

    #[test]
    fn quorum_changes_are_reported_once_settled() {
        let config = Config::parse(Path::new("t.toml"), TEXT).unwrap();
        let key = config.virtual_servers[0].key();
        let name = "192.0.2.100:80/TCP".to_string();
        let event = |up| TrackEvent {
            key: TrackKey::Service(name.clone()),
            up,
        };
        let lost = |k: &ServiceKey| (*k == key).then_some(false);
        let kept = |k: &ServiceKey| (*k == key).then_some(true);
        let one_mac = |ip: IpAddr| ip.to_string() == "192.0.2.11";
        // At start the pool looks empty while MACs resolve: not reported...
        let (events, reported) = quorum_changes(&config, lost, one_mac, &HashMap::new(), false);
        assert!(events.is_empty() && reported.is_empty());
        // ...until every MAC is known, or the settling time is over.
        let (events, reported) = quorum_changes(&config, kept, |_| true, &HashMap::new(), false);
        assert_eq!(events, [event(true)]);
        let (events, _) = quorum_changes(&config, lost, one_mac, &HashMap::new(), true);
        assert_eq!(events, [event(false)]);
        // Once reported, every change is news at once, and only a change.
        let (events, reported) = quorum_changes(&config, kept, one_mac, &reported, false);
        assert!(events.is_empty());
        let (events, reported) = quorum_changes(&config, lost, one_mac, &reported, false);
        assert_eq!(events, [event(false)]);
        let (events, _) = quorum_changes(&config, kept, one_mac, &reported, false);
        assert_eq!(events, [event(true)]);
    }
}
