//! The XDP side of a running daemon: the loaded program and its attachment, the maps the
//! plan is written to (grown in place when a configuration needs more room), the connection
//! tables, and connection sync.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use lb_common::{names, Meta, LAYOUT_VERSION};

use super::reconcile::dataplane_limits;
use crate::{
    config::{Config, DataplaneConfig},
    dataplane::{
        adopt::Adopted,
        flows::{copy_recent, copy_table, count_since, FlowTables, Table},
        maps::BpfMaps,
        pins::{self, Pins, Take},
        program::{self, LoadOptions},
        Dataplane,
    },
    model::{Limits, Scheduler, ServiceKey},
    status::{ConnectionStatus, Connections, Which},
};

pub(super) struct Xdp {
    pub dp: Dataplane<BpfMaps>,
    /// The instance whose sized maps are in use (the first one, or the last grown).
    _ebpf: aya::Ebpf,
    /// The attached program; a grown instance's program replaces it.
    attachment: program::Attachment,
    /// The maps the running program uses, by name: what a grown instance shares.
    fds: program::MapFds,
    /// Where the maps and the link are pinned, so that the dataplane outlives the daemon;
    /// none when no bpf filesystem could be had (then it dies with the daemon).
    pins: Option<Pins>,
    iface: String,
    iface_mac: [u8; 6],
    pub ifindex: u32,
    /// `[dataplane]`'s reserve: the least room the maps keep.
    pub reserve: Limits,
    /// The connection tables, read for the flows per backend (and shared with sync).
    flows: Arc<FlowTables>,
    /// Connection sync with the peer (`[sync]`).
    pub sync: Option<crate::sync::SyncHandle>,
    /// What the program was loaded with for sync (its event ring and refresh interval):
    /// fixed for its life, so a `[sync]` that needs other values waits for a restart.
    pub sync_load: Option<program::SyncLoad>,
    /// The key the running sync engine uses (a reload that changes the file's contents
    /// starts the engine again with the new one).
    pub sync_key: Option<Vec<u8>>,
    /// This run's boot id, which sync tells its peers.
    sync_boot: u32,
    /// The last count of flows per backend id, and when it was taken: a walk of a big
    /// table takes a while, so the metrics' refresh reuses a recent one.
    flow_counts: Option<(Instant, HashMap<u32, u64>)>,
    /// What was taken over from a previous run (none: a fresh start).
    pub adopted: Option<Adopted>,
    /// The attachment a move left on the previous interface, and when: it goes on serving
    /// what still arrives there for [`RETIRE_AFTER`] (the VIP's traffic moves after the
    /// reload), then it is detached.
    retired: Option<(program::Attachment, String, Instant)>,
    /// The sweep's pacing (see [`Xdp::sweep`]).
    sweep: Sweep,
    /// The ranking's (see [`Xdp::rank`]).
    rank: Sweep,
    /// SYN_RECV flows the sweeps removed at their timeout, and found evicted, since start.
    pub embryonic_expired: u64,
    pub embryonic_evicted: u64,
    /// Held while this daemon runs the dataplane (see [`dataplane_lock`]).
    _lock: std::fs::File,
    /// The program on `[dataplane] inside_interfaces`.
    inside: Vec<Inside>,
    /// Resolving the NAT clients' next hops: one line a minute.
    neigh_log: crate::log_limit::LogLimit,
}

/// The program on an inside interface (NAT's real servers' side): an instance of its own
/// (that interface's MAC in its global data) over every map of the main one, made anew
/// whenever the main one is (the maps grown or the tables resized).
struct Inside {
    iface: String,
    ifindex: u32,
    mac: [u8; 6],
    attachment: program::Attachment,
    _ebpf: aya::Ebpf,
}

/// When the sweep (the ranking) last ran and what it cost.
#[derive(Debug, Default)]
struct Sweep {
    last: Option<Instant>,
    took: Duration,
}

/// The share of the flow table flows waiting for the client's ACK may take: a quarter. A
/// SYN flood then fills at most that share (the rest goes out untracked, by hash), and the
/// established flows in the other three quarters are never evicted for it.
fn syn_cap(max_flows: u32) -> u32 {
    (max_flows / 4).max(1)
}

/// At most this share of a core for the sweep: a table that takes 20 ms to walk is swept
/// every second, one that takes 200 ms every 10 s.
const SWEEP_SHARE: u32 = 50;

/// The pinned maps a start takes over, and their planner (see [`Xdp::start`]).
struct TakeOver {
    judgement: pins::Judgement,
    /// The pinned maps, by name, with their shapes.
    pinned: HashMap<String, (pins::Shape, OwnedFd)>,
}

impl Xdp {
    /// Loads the program with maps sized for `config`, or takes over the maps a previous
    /// run pinned, starts sync, and attaches it (or makes the previous run's attachment run
    /// it): the interface never runs without a program.
    pub(super) async fn start(config: &Config, d: &DataplaneConfig) -> Result<Self> {
        let started = Instant::now();
        let (iface_mac, ifindex) = interface_info(&d.interface).await?;
        // The inside interfaces looked up before anything is attached: a typo stops the
        // start here, not with the main program already running.
        let mut ports = vec![ifindex];
        for iface in &d.inside_interfaces {
            let (_, i) = interface_info(iface)
                .await
                .with_context(|| format!("dataplane.inside_interfaces: {iface}"))?;
            ports.push(i);
        }
        let limits = dataplane_limits(config).context("sizing the dataplane's maps")?;
        // The NAT reverse tables, as large as the connection tables where a service is
        // NAT'd (only a real server two service keys share fills them); one entry otherwise.
        let nat = config.has_nat();
        let mut opts = LoadOptions {
            limits,
            max_flows: d.max_flows,
            nat_flows: if nat { d.max_flows } else { 0 },
            iface_mac,
            sync: config.sync.as_ref().map(|s| program::SyncLoad {
                ring_bytes: s.ring_size,
                refresh_shift: s.refresh_shift(),
            }),
            ..LoadOptions::default()
        };
        let sync_key = config.sync_key()?;
        // One daemon per dataplane: a second one would take the first one's maps and link
        // over while it still writes them.
        let lock = dataplane_lock(&d.interface)?;
        let pins = match Pins::open(&d.pin_root, &d.interface) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!("the dataplane will not outlive this daemon (nothing can be pinned): {e}");
                None
            }
        };
        let mut take = match &pins {
            Some(p) => look_at_pins(p, &opts)?,
            None => None,
        };
        let judged = started.elapsed();
        // Loaded over the adopted maps; again over fresh ones if what they hold is not
        // consistent.
        // Over the adopted maps; again over fresh ones if they cannot be loaded over, read
        // back or adopted: the start goes on, and says why.
        let (inst, mut dp, adopted, loaded, adopted_at) = loop {
            let adopting = take.as_ref().is_some_and(|t| t.judgement.dropped.is_none());
            if adopting {
                // The sized maps are the pinned ones: the first apply grows them if the
                // configuration needs more.
                let t = take.as_ref().expect("adopting");
                opts.limits = pinned_limits(t);
            } else {
                opts.limits = limits;
            }
            info!(limits = %opts.limits, adopting, "sizing the XDP program's maps");
            let mut adopt = program::MapFds::default();
            if let Some(t) = take.as_ref().filter(|_| adopting) {
                for (name, (_, fd)) in &t.pinned {
                    if t.judgement.adopts(name) {
                        adopt.insert(name, fd.try_clone().context("duplicating a pinned map")?);
                    }
                }
            }
            if !adopting {
                let inst = program::instance(&opts, adopt).context("loading the XDP program")?;
                let maps = BpfMaps::open(&inst.fds)?;
                let dp = Dataplane::new(maps, opts.limits);
                let at = started.elapsed();
                break (inst, dp, None, at, at);
            }
            let adopted = (|| -> Result<_> {
                let inst = program::instance(&opts, adopt)
                    .context("loading the XDP program over the pinned maps")?;
                let loaded = started.elapsed();
                if let Some(t) = &take {
                    migrate(t, &inst.fds);
                }
                let mut maps = BpfMaps::open(&inst.fds)?;
                let found = maps.read_back().context("reading the pinned maps back")?;
                maps.remember_generations(&found.backends);
                let (mut dp, summary) = Dataplane::adopt(maps, &found)?;
                dp.write_nat_sources()
                    .context("writing the NAT real servers' sources")?;
                Ok((inst, dp, summary, loaded))
            })();
            match adopted {
                Ok((inst, dp, summary, loaded)) => {
                    break (inst, dp, Some(summary), loaded, started.elapsed())
                }
                Err(e) => {
                    warn!("the previous run's dataplane is not taken over: {e:#}; established connections are scheduled again");
                    take = None;
                }
            }
        };
        let native = program::native_plan(&inst.fds, &d.interface, ifindex, d.xdp_mode).await;
        let program::Instance {
            mut ebpf,
            prog,
            fds,
        } = inst;
        spawn_bpf_logger(&mut ebpf);
        let flows = Arc::new(FlowTables::open(&fds)?);
        // The redirect's targets, before the first packet.
        set_tx_ports(&fds, &ports)?;
        let mut meta = dp.writer().meta()?;
        let boot = crate::sync::boot_id(meta.sync_boot);
        let sync = match (&config.sync, &sync_key) {
            (Some(s), Some(key)) => {
                let parts = crate::sync::ProgramParts::open(&fds, flows.clone(), boot)?;
                meta.sync_boot = boot;
                Some(
                    crate::sync::SyncHandle::start(s, key, parts)
                        .context("starting connection sync")?,
                )
            }
            _ => None,
        };
        if adopted.is_some() {
            meta.adoptions += 1;
        }
        meta.layout = LAYOUT_VERSION;
        dp.writer_mut().set_meta(&meta)?;
        // The clock before the first packet: a flow stamped 0 would look idle for years at
        // the first tick and be rescheduled. Taken over, it goes on from the previous run's.
        if adopted.is_some() {
            crate::dataplane::continue_clock_from(dp.writer().clock_seconds());
        }
        dp.writer_mut().set_clock(monotonic_seconds())?;
        // The connection timeouts and the SYN guard's share, before the first packet.
        dp.writer_mut()
            .set_timeouts(&config.global_defs.lvs_timeouts().per_state())?;
        dp.writer().set_syn_cap(syn_cap(d.max_flows));
        let attachment = program::attach_xdp(
            &prog,
            native,
            &d.interface,
            ifindex,
            d.xdp_mode,
            pins.as_ref().and_then(Pins::link),
            d.keep_xdp_on_exit,
        )
        .await?;
        // Pinned once the program runs over them: until then the pins still name the maps
        // the previous run's program uses.
        if let Some(p) = &pins {
            pin_maps(p, &fds);
            if let Some(link) = attachment.link() {
                if let Err(e) = p.pin_link(link) {
                    warn!("the XDP program will not outlive this daemon: pinning its link: {e}");
                }
            }
        }
        if let Some(a) = &adopted {
            let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
            let done = started.elapsed();
            info!(
                services = a.services,
                real_servers = a.backends,
                stray = a.stray,
                judge_ms = %ms(judged),
                load_ms = %ms(loaded.saturating_sub(judged)),
                adopt_ms = %ms(adopted_at.saturating_sub(loaded)),
                attach_ms = %ms(done.saturating_sub(adopted_at)),
                total_ms = %ms(done),
                "took over the previous run's dataplane"
            );
        }
        info!(interface = %d.interface, mode = attachment.mode.name(), program = attachment.program, taken_over = attachment.taken_over, pinned = ?pins.as_ref().map(|p| p.dir().display().to_string()), "XDP program attached");
        // A previous run's inside attachments on interfaces no longer listed: taken off,
        // or they would go on translating with maps nothing writes any more.
        if let Some(p) = &pins {
            for (name, link) in p.stray_inside_links(&d.inside_interfaces) {
                let _ = crate::dataplane::devbound::link_detach(link.as_fd());
                p.unpin(&name);
                info!(pin = %name, "detached a previous run's XDP program from an interface no longer in inside_interfaces");
            }
        }
        let mut inside = Vec::new();
        for iface in &d.inside_interfaces {
            let at = attach_inside(
                iface,
                d,
                opts.limits.max(dp.limits()),
                opts.sync,
                &fds,
                pins.as_ref(),
            )
            .await
            .with_context(|| format!("attaching XDP to the inside interface {iface}"))?;
            inside.push(at);
        }
        Ok(Xdp {
            dp,
            _ebpf: ebpf,
            attachment,
            fds,
            pins,
            iface: d.interface.clone(),
            iface_mac,
            ifindex,
            reserve: d.reserve,
            flows,
            sync,
            sync_load: opts.sync,
            sync_key,
            sync_boot: boot,
            flow_counts: None,
            adopted,
            retired: None,
            sweep: Sweep::default(),
            rank: Sweep::default(),
            embryonic_expired: 0,
            embryonic_evicted: 0,
            _lock: lock,
            inside,
            neigh_log: crate::log_limit::LogLimit::new(crate::log_limit::LOG_EVERY),
        })
    }

    /// Asks the kernel to resolve the next hops the program dropped NAT replies for (no
    /// neighbour entry: `NEIGH_WANTED`), so that the clients' retransmissions get through:
    /// after a failover the new master may know no outside router or client yet. Polled
    /// every 20 ms (a read of 64 mapped slots); the requests go out off the main loop.
    pub(super) fn resolve_wanted(&mut self) {
        let wanted = self.dp.writer().wanted_neighbours();
        if wanted.is_empty() {
            return;
        }
        if let Some(held) = self.neigh_log.allow() {
            info!(next_hops = ?wanted, held_back = held, "resolving the next hops of NAT replies dropped without a neighbour entry");
        }
        tokio::spawn(async move {
            let mut sock = match crate::netlink::neigh::NeighSocket::open() {
                Ok(s) => s,
                Err(e) => {
                    warn!("opening a neighbour socket for NAT's next hops: {e}");
                    return;
                }
            };
            for (ifindex, addr) in wanted {
                if let Err(e) = sock.request_resolution(ifindex, addr).await {
                    tracing::debug!(%addr, ifindex, "resolving a NAT reply's next hop: {e}");
                }
            }
        });
    }

    /// Pins the inside interfaces' links with the dataplane's (a move's or a rename's new
    /// pins: the old ones go with their directory).
    fn pin_inside_links(&self, p: &Pins) {
        for i in &self.inside {
            if let Some(link) = i.attachment.link() {
                if let Err(e) = p.pin_inside_link(&i.iface, link) {
                    warn!(interface = %i.iface, "the XDP program will not outlive this daemon there: pinning its link: {e}");
                }
            }
        }
    }

    /// The inside interfaces' programs made anew over `fds` (a grown or resized instance's
    /// maps, with `limits`), loaded but not yet put in place: made before the main program
    /// switches, so that a failure leaves everything as it was.
    async fn prepare_inside(
        &self,
        fds: &program::MapFds,
        limits: Limits,
    ) -> Result<Vec<(OwnedFd, aya::Ebpf)>> {
        let mut out = Vec::with_capacity(self.inside.len());
        for i in &self.inside {
            let opts = LoadOptions {
                limits,
                iface_mac: i.mac,
                sync: self.sync_load,
                ..LoadOptions::default()
            };
            let inst = program::for_interface(&opts, fds)
                .with_context(|| format!("loading the XDP program for {}", i.iface))?;
            let prog = if i.attachment.program == crate::dataplane::devbound::PROGRAM_NATIVE {
                match program::native_plan(
                    &inst.fds,
                    &i.iface,
                    i.ifindex,
                    crate::model::XdpMode::Native,
                )
                .await
                {
                    program::NativePlan::DevBound(fd) => fd,
                    other => anyhow::bail!(
                        "loading the device-bound XDP program for {}: {other:?}",
                        i.iface
                    ),
                }
            } else {
                inst.prog
            };
            out.push((prog, inst.ebpf));
        }
        Ok(out)
    }

    /// Puts [`Xdp::prepare_inside`]'s programs in place, each in one step. A switch that
    /// fails (netlink refusing a program it took before) leaves that interface on maps the
    /// main program no longer writes: said loudly, the others switched all the same.
    async fn switch_inside(&mut self, prepared: Vec<(OwnedFd, aya::Ebpf)>) {
        for (i, (prog, ebpf)) in self.inside.iter_mut().zip(prepared) {
            match i.attachment.replace(prog).await {
                Ok(()) => i._ebpf = ebpf,
                Err(e) => tracing::error!(
                    interface = %i.iface,
                    "the inside interface's XDP program still runs over the previous maps (NAT replies there may go untranslated until a restart): {e}"
                ),
            }
        }
    }

    /// Takes the program off the interface and removes the pins (a `release` stop): the
    /// maps go with the last descriptor.
    pub(super) async fn release(self) {
        let Xdp {
            attachment,
            pins,
            retired,
            inside,
            ..
        } = self;
        for i in inside {
            if let Err(e) = i.attachment.detach().await {
                warn!(interface = %i.iface, "detaching the XDP program: {e}");
            }
        }
        if let Some((old, iface, _)) = retired {
            if let Err(e) = old.detach().await {
                warn!(interface = %iface, "detaching the XDP program from the old interface: {e}");
            }
        }
        if let Err(e) = attachment.detach().await {
            warn!("detaching the XDP program: {e}");
        }
        if let Some(p) = pins {
            if let Err(e) = p.remove() {
                warn!("removing the pinned dataplane: {e}");
            }
        }
    }

    /// Writes the program's clock (seconds of CLOCK_MONOTONIC); detaches a move's old
    /// attachment once it has served its time.
    pub(super) fn tick(&mut self) {
        if let Err(e) = self.dp.writer_mut().set_clock(monotonic_seconds()) {
            tracing::error!("updating the XDP program's clock: {e}");
        }
        let due = self.sweep.last.is_none_or(|at| {
            at.elapsed() >= (self.sweep.took * SWEEP_SHARE).max(Duration::from_secs(1))
        });
        if due {
            self.sweep();
        }
        if self
            .retired
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() >= RETIRE_AFTER)
        {
            if let Some((old, iface, _)) = self.retired.take() {
                tokio::spawn(async move {
                    match old.detach().await {
                        Ok(()) => {
                            info!(interface = %iface, "XDP program detached from the previous interface")
                        }
                        Err(e) => {
                            warn!(interface = %iface, "detaching the XDP program from the previous interface: {e}")
                        }
                    }
                });
            }
        }
    }

    /// The sweep (`Dataplane::sweep`): expired flows removed, the connection counts put
    /// right. Paced by [`SWEEP_SHARE`].
    pub(super) fn sweep(&mut self) {
        let started = Instant::now();
        match self.dp.sweep(&self.flows) {
            Ok(r) => {
                self.embryonic_expired += r.embryonic_expired;
                self.embryonic_evicted += r.embryonic_lost;
                if r.swept.removed > 0 {
                    tracing::debug!(
                        walked = r.swept.walked,
                        removed = r.swept.removed,
                        "flows swept"
                    );
                }
            }
            Err(e) => warn!("sweeping the flow tables: {e}"),
        }
        self.sweep.took = started.elapsed();
        self.sweep.last = Some(Instant::now());
    }

    /// The count-based schedulers' candidates, ranked again: every 20 ms, or less often
    /// when a round costs more than 2% of a core (many thousands of real servers).
    pub(super) fn rank(&mut self) {
        let due = self
            .rank
            .last
            .is_none_or(|at| at.elapsed() >= self.rank.took * SWEEP_SHARE);
        if due {
            let started = Instant::now();
            self.dp.rank();
            self.rank.took = started.elapsed();
            self.rank.last = Some(Instant::now());
        }
    }

    /// Flows per backend id (current generation only), counted at most `max_age` ago. A
    /// failed walk is logged and shows as no flows.
    pub(super) fn active_flows(&mut self, max_age: Duration) -> HashMap<u32, u64> {
        if let Some((at, counts)) = &self.flow_counts {
            if at.elapsed() <= max_age {
                return counts.clone();
            }
        }
        let current = self.dp.current();
        let idle_of = |sid: u32| current.infos.get(&sid).map(|i| i.idle_timeout_s);
        let timeouts = *self.dp.writer().timeouts();
        let counts = match self.flows.counts(monotonic_seconds(), idle_of, &timeouts) {
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

    /// The flows of the connection tables that `keep` keeps, live ones only (their service
    /// and backend still the ones they were made with, not idle past the service's
    /// timeout), the first `limit` of them, and how many matched: a walk to run off the
    /// main loop (a table of millions of flows takes a while), over what the maps name now.
    pub(super) fn connections(
        &self,
        service: Option<ServiceKey>,
        keep: impl Fn(&ConnectionStatus) -> bool + Send + 'static,
        limit: usize,
    ) -> impl FnOnce() -> Result<Connections> + Send + 'static {
        let current = self.dp.current();
        // Service id -> (protocol name, idle timeout); backend id -> (generation, address).
        let mut services = HashMap::new();
        let mut backends = HashMap::new();
        for spec in self.dp.specs() {
            let Some((sid, bids)) = self.dp.ids_of(spec) else {
                continue;
            };
            // By the flow's service id: a fragment's flow (port 0) is its service's, and an
            // all-ports service's flows are its own, not another service's on the VIP.
            if service.is_some_and(|k| k != spec.key()) {
                continue;
            }
            services.insert(sid, (spec.proto.name(), spec.idle_timeout));
            for (b, bid) in spec.backends.iter().zip(bids) {
                if let Some(v) = current.backends.get(&bid) {
                    backends.insert(bid, (v.generation, b.addr));
                }
            }
        }
        let now = monotonic_seconds();
        let flows = Arc::clone(&self.flows);
        move || {
            let mut out = Connections {
                limit,
                ..Connections::default()
            };
            flows.entries(|(_, client, vip, v)| {
                let Some(&(protocol, idle)) = services.get(&v.service) else {
                    return true;
                };
                let Some(&(_, real)) = backends.get(&v.backend).filter(|(g, _)| *g == v.generation)
                else {
                    return true;
                };
                let idle_s = now.saturating_sub(v.last_seen);
                if idle != 0 && idle_s > idle {
                    return true;
                }
                let c = ConnectionStatus {
                    protocol: protocol.to_string(),
                    client,
                    virtual_server: vip,
                    real_server: real,
                    idle_s,
                };
                if keep(&c) {
                    out.total += 1;
                    if out.connections.len() < limit {
                        out.connections.push(c);
                    }
                }
                true
            })?;
            out.connections
                .sort_by_key(|c| (c.virtual_server, c.client));
            Ok(out)
        }
    }

    /// Which real server serves `client`'s flow to service `key`: the flow's own, if the
    /// table has it live; else what a new flow would get now, as the program chooses
    /// (`lb-ebpf`'s `schedule`): the client's persistence template, else the ring slot of
    /// the source hash (sh, mh) or the rotation (rr, wrr: per CPU, so one of the ring's).
    pub(super) fn which(&self, client: SocketAddr, key: ServiceKey) -> Result<Which, String> {
        let spec = self
            .dp
            .specs()
            .iter()
            .find(|s| s.key() == key)
            .ok_or_else(|| format!("{key} is not in the dataplane"))?;
        let (sid, bids) = self
            .dp
            .ids_of(spec)
            .ok_or_else(|| format!("{key} is not in the dataplane"))?;
        let current = self.dp.current();
        let addr_of = |bid: u32| {
            bids.iter()
                .position(|b| *b == bid)
                .map(|i| spec.backends[i].addr)
        };
        let live = |v: &lb_common::FlowValue| {
            current
                .backends
                .get(&v.backend)
                .is_some_and(|b| b.generation == v.generation)
        };
        let now = monotonic_seconds();
        let vip = SocketAddr::new(spec.vip, spec.port);
        let flow = self
            .flows
            .flow(spec.proto.number(), client, vip)
            .map_err(|e| e.to_string())?;
        if let Some(v) = flow.filter(|v| v.service == sid && live(v)) {
            let idle = now.saturating_sub(v.last_seen);
            if spec.idle_timeout == 0 || idle <= spec.idle_timeout {
                return Ok(Which {
                    real_server: addr_of(v.backend),
                    by: "table".into(),
                    note: Some(format!("idle {idle} s")),
                    ..Which::default()
                });
            }
        }
        if !spec.active {
            return Ok(Which {
                by: "none".into(),
                note: Some(
                    "this node does not serve the service (its VIP's instance is not master here)"
                        .into(),
                ),
                ..Which::default()
            });
        }
        let drains = |bid: u32| {
            current
                .backends
                .get(&bid)
                .is_none_or(|b| b.flags & lb_common::BACKEND_F_DRAINING != 0)
        };
        if spec.persistence_timeout != 0 {
            let mask = current
                .infos
                .get(&sid)
                .map(|i| i.persist_mask)
                .unwrap_or([u32::MAX; 4]);
            let t = self
                .flows
                .template(client.ip(), &mask, sid)
                .map_err(|e| e.to_string())?;
            if let Some(t) = t.filter(|t| {
                live(t)
                    && !drains(t.backend)
                    && now.saturating_sub(t.last_seen) <= spec.persistence_timeout
            }) {
                return Ok(Which {
                    real_server: addr_of(t.backend),
                    by: "persistence".into(),
                    ..Which::default()
                });
            }
        }
        let slots = current
            .rings
            .get(&sid)
            .map(|r| r.slots.clone())
            .unwrap_or_default();
        if slots.is_empty() {
            return Ok(Which {
                by: "none".into(),
                note: Some("no real server takes new connections".into()),
                ..Which::default()
            });
        }
        match spec.sched {
            Scheduler::Sh | Scheduler::Mh => {
                let src = match client.ip() {
                    std::net::IpAddr::V4(a) => [lb_common::addr_v4(a.octets()), 0, 0, 0],
                    std::net::IpAddr::V6(a) => lb_common::addr_v6(a.octets()),
                };
                // The program hashes the port as the packet has it (network order).
                let port = if spec.hash_port {
                    u32::from(client.port().to_be())
                } else {
                    0
                };
                let slot = lb_common::source_hash(&src, port) % slots.len() as u32;
                Ok(Which {
                    real_server: addr_of(slots[slot as usize]),
                    by: "scheduler".into(),
                    ..Which::default()
                })
            }
            _ => {
                let mut candidates: Vec<SocketAddr> = Vec::new();
                for &bid in slots.iter() {
                    if let Some(a) = addr_of(bid).filter(|a| !candidates.contains(a)) {
                        candidates.push(a);
                    }
                }
                Ok(Which {
                    by: "scheduler".into(),
                    candidates,
                    note: Some(
                        if spec.sched.counts() {
                            "the least loaded takes it, by the connection counts at that moment"
                        } else {
                            "rr and wrr take turns on each CPU"
                        }
                        .into(),
                    ),
                    ..Which::default()
                })
            }
        }
    }

    /// Whether the program can run connection sync as `c` says without being loaded again:
    /// its event ring and refresh interval are fixed at load. `Err`: the key that differs
    /// (an empty one: the section as a whole) and why.
    pub(super) fn sync_fits(
        &self,
        c: Option<&crate::config::SyncConfig>,
    ) -> Result<(), (&'static str, &'static str)> {
        let Some(c) = c else { return Ok(()) };
        match self.sync_load {
            None => Err((
                "",
                "the XDP program was loaded without connection sync (no event ring): \
                 restart to add [sync]",
            )),
            Some(l) if l.ring_bytes != c.ring_size => Err((
                "ring_size",
                "the event ring is sized when the XDP program is loaded: restart to apply it",
            )),
            Some(l) if l.refresh_shift != c.refresh_shift() => Err((
                "refresh_interval",
                "the refresh interval is the XDP program's, set when it is loaded: restart \
                 to apply it",
            )),
            Some(_) => Ok(()),
        }
    }

    /// Connection sync as `c` says, with `key`: the running engine stops (its socket and
    /// the event ring are free then) and a new one starts on the same ring and flow tables,
    /// told whether this node sends (`master`; `None`: as the running one does) and going
    /// on with the running one's translation tables. `None`: sync stops. The program must
    /// fit ([`Xdp::sync_fits`]). The new engine has a new boot id (kept in `META` for the
    /// next run), so that its peer's replay window starts again with its first message
    /// rather than drop it as old; a backup then asks for the master's whole table. The
    /// flows stay in the tables; the new engine's counters start from 0.
    pub(super) fn restart_sync(
        &mut self,
        c: Option<&crate::config::SyncConfig>,
        key: Option<&[u8]>,
        master: Option<bool>,
    ) -> Result<()> {
        let old = self.sync.take();
        let master = master.unwrap_or_else(|| old.as_ref().is_some_and(|h| h.is_master()));
        let index = old.as_ref().map(|h| h.index());
        drop(old);
        self.sync_key = None;
        let (Some(c), Some(key)) = (c, key) else {
            info!("connection sync stopped");
            return Ok(());
        };
        let boot = crate::sync::boot_id(self.sync_boot);
        let mut meta = self.dp.writer().meta()?;
        meta.sync_boot = boot;
        self.dp.writer_mut().set_meta(&meta)?;
        self.sync_boot = boot;
        let parts = crate::sync::ProgramParts::open(&self.fds, self.flows.clone(), boot)?;
        let h =
            crate::sync::SyncHandle::start(c, key, parts).context("starting connection sync")?;
        h.set_master(master);
        if let Some(ix) = index {
            h.set_index(ix);
        }
        self.sync = Some(h);
        self.sync_key = Some(key.to_vec());
        Ok(())
    }

    /// The connection tables' size (`[dataplane] max_flows`), now: a new program instance
    /// over new tables of `max_flows` entries (every other map shared), the flows copied
    /// into them, the instance put in the running one's place in one step, and then the
    /// flows the running program added or touched during the copy copied as well (without
    /// overwriting what the new one wrote since). Tables smaller than their flows keep the
    /// most recent ones the kernel's LRU lets in. A failure before the switch leaves the
    /// running instance as it was; sync goes on over the new tables.
    pub(super) async fn resize_flows(
        &mut self,
        max_flows: u32,
        sync: Option<&crate::config::SyncConfig>,
    ) -> Result<()> {
        let started = Instant::now();
        let bound = (self.attachment.program == crate::dataplane::devbound::PROGRAM_NATIVE)
            .then_some((self.iface.as_str(), self.ifindex));
        let resized = program::resize_flows(
            self.dp.limits(),
            max_flows,
            self.iface_mac,
            &self.fds,
            self.attachment.program,
            bound,
        )
        .context("loading an XDP program instance with the new connection tables")?;
        let inside = self.prepare_inside(&resized.fds, self.dp.limits()).await?;
        let tables = [Table::Flows4, Table::Flows6];
        fn fd(fds: &program::MapFds, t: Table) -> Result<BorrowedFd<'_>> {
            fds.get(t.name())
                .with_context(|| format!("no map {}", t.name()))
        }
        self.check_resize(max_flows)?;
        let shrink = self.max_flows().is_some_and(|n| max_flows < n);
        let new_tables = FlowTables::open(&resized.fds)?;
        let since = self.dp.writer().clock_seconds();
        let live = self.live_since();
        let mut copied = 0;
        for t in tables {
            let (from, to) = (fd(&self.fds, t)?, fd(&resized.fds, t)?);
            // A smaller table takes the live flows only: the idle ones would take room
            // the LRU then makes by evicting whatever it likes.
            copied += if shrink {
                copy_recent(from, to, t, live, true)
            } else {
                copy_table(from, to, t)
            }
            .with_context(|| format!("copying {} into the new table", t.name()))?;
        }
        // What the old program changed during the copy, overwritten (only it writes yet).
        for t in tables {
            let (from, to) = (fd(&self.fds, t)?, fd(&resized.fds, t)?);
            copy_recent(from, to, t, since, true)
                .with_context(|| format!("copying {}'s recent flows", t.name()))?;
        }
        let since = self.dp.writer().clock_seconds();
        self.attachment
            .replace(resized.prog)
            .await
            .context("switching to the XDP program instance with the new tables")?;
        let old_fds = std::mem::replace(&mut self.fds, resized.fds);
        // Nothing below can fail: the new tables run.
        let mut late = 0;
        for t in tables {
            let (Ok(from), Ok(to)) = (fd(&old_fds, t), fd(&self.fds, t)) else {
                continue;
            };
            match copy_recent(from, to, t, since, false) {
                Ok(n) => late += n,
                Err(e) => warn!(
                    table = t.name(),
                    "copying the flows added during the resize: {e}; they are scheduled again"
                ),
            }
        }
        // The inside interfaces follow once the new tables hold every flow (they see only
        // NAT replies, which need no table, and whatever else the stack should have).
        self.switch_inside(inside).await;
        self._ebpf = resized.ebpf;
        if let Some(p) = &self.pins {
            pin_maps(p, &self.fds);
        }
        self.flows = Arc::new(new_tables);
        self.flow_counts = None;
        self.dp.writer().set_syn_cap(syn_cap(max_flows));
        // Sync reads and writes the tables: a new engine over the new ones.
        if self.sync.is_some() {
            let key = self.sync_key.clone();
            if let Err(e) = self.restart_sync(sync, key.as_deref(), None) {
                tracing::error!(
                    "connection sync stopped: it could not start again over the new tables: {e:#}"
                );
            }
        }
        info!(
            max_flows,
            copied,
            late,
            ms = started.elapsed().as_millis() as u64,
            "connection tables resized"
        );
        Ok(())
    }

    /// The dataplane on another interface, now: a program instance with that interface's
    /// MAC over every map of the running one (services, flows, persistence, sync's ring:
    /// nothing is lost), attached there while the old one still runs, its maps and link
    /// pinned under the new interface's name, then the old attachment and pins removed. A
    /// failure before the new attachment runs leaves everything as it was. The caller
    /// points the neighbour resolver at the new interface.
    pub(super) async fn move_to(&mut self, d: &DataplaneConfig) -> Result<()> {
        let started = Instant::now();
        let (iface_mac, ifindex) = interface_info(&d.interface).await?;
        let lock = dataplane_lock(&d.interface)?;
        if ifindex == self.ifindex {
            // The same device under another name (a rename): only the pins move.
            self.repin(d);
            let from = std::mem::replace(&mut self.iface, d.interface.clone());
            self._lock = lock;
            info!(from = %from, to = %d.interface, "the XDP program's interface was renamed");
            return Ok(());
        }
        // Back to where a move left its attachment: that one goes first.
        if let Some((old, iface, _)) = self.retired.take() {
            if let Err(e) = old.detach().await {
                warn!(interface = %iface, "detaching the XDP program from the previous interface: {e}");
            }
        }
        let opts = LoadOptions {
            limits: self.dp.limits(),
            iface_mac,
            sync: self.sync_load,
            ..LoadOptions::default()
        };
        let moved = program::for_interface(&opts, &self.fds)
            .context("loading the XDP program for the new interface")?;
        set_tx_ports(&moved.fds, &[ifindex])?;
        let native = program::native_plan(&moved.fds, &d.interface, ifindex, d.xdp_mode).await;
        let attachment = program::attach_xdp(
            &moved.prog,
            native,
            &d.interface,
            ifindex,
            d.xdp_mode,
            None,
            d.keep_xdp_on_exit,
        )
        .await?;
        // Pinned under the new name before the old pins go: the dataplane outlives the
        // daemon at every moment.
        let pins = match Pins::open(&d.pin_root, &d.interface) {
            Ok(p) => {
                pin_maps(&p, &moved.fds);
                if let Some(link) = attachment.link() {
                    if let Err(e) = p.pin_link(link) {
                        warn!(
                            "the XDP program will not outlive this daemon: pinning its link: {e}"
                        );
                    }
                }
                self.pin_inside_links(&p);
                Some(p)
            }
            Err(e) => {
                warn!("the dataplane will not outlive this daemon (nothing can be pinned): {e}");
                None
            }
        };
        let old_attachment = std::mem::replace(&mut self.attachment, attachment);
        if let Some(p) = std::mem::replace(&mut self.pins, pins) {
            if let Err(e) = p.remove() {
                warn!("removing the old interface's pins: {e}");
            }
        }
        let from = std::mem::replace(&mut self.iface, d.interface.clone());
        // Serving what still arrives there while the traffic moves; not pinned any more,
        // so it does not outlive the daemon.
        self.retired = Some((old_attachment, from.clone(), Instant::now()));
        self._ebpf = moved.ebpf;
        self.fds = moved.fds;
        self.iface_mac = iface_mac;
        self.ifindex = ifindex;
        self._lock = lock;
        info!(
            from = %from,
            to = %d.interface,
            mode = self.attachment.mode.name(),
            ms = started.elapsed().as_millis() as u64,
            "XDP program moved to another interface"
        );
        Ok(())
    }

    /// The maps and the link pinned under `d.interface`'s name, the old name's pins
    /// removed.
    fn repin(&mut self, d: &DataplaneConfig) {
        match Pins::open(&d.pin_root, &d.interface) {
            Ok(p) => {
                pin_maps(&p, &self.fds);
                if let Some(link) = self.attachment.link() {
                    if let Err(e) = p.pin_link(link) {
                        warn!(
                            "the XDP program will not outlive this daemon: pinning its link: {e}"
                        );
                    }
                }
                self.pin_inside_links(&p);
                if let Some(old) = self.pins.replace(p) {
                    if let Err(e) = old.remove() {
                        warn!("removing the old name's pins: {e}");
                    }
                }
            }
            Err(e) => {
                warn!("the dataplane will not outlive this daemon (nothing can be pinned): {e}")
            }
        }
    }

    /// The interface the program runs on.
    pub(super) fn interface(&self) -> &str {
        &self.iface
    }

    /// Whether the tables can be resized to `max_flows` now: a smaller table must have room
    /// for twice the live flows (the kernel's LRU evicts before it is full: each CPU keeps
    /// free entries of its own). Checked before a reload changes anything.
    pub(super) fn check_resize(&self, max_flows: u32) -> Result<()> {
        if self.max_flows().is_none_or(|n| max_flows >= n) {
            return Ok(());
        }
        let since = self.live_since();
        for t in [Table::Flows4, Table::Flows6] {
            let fd = self
                .fds
                .get(t.name())
                .with_context(|| format!("no map {}", t.name()))?;
            let live = count_since(fd, t, since)?;
            if live.saturating_mul(2) > max_flows as usize {
                anyhow::bail!(
                    "{} holds {live} live flows: a smaller table needs room for twice as many",
                    t.name()
                );
            }
        }
        Ok(())
    }

    /// The `CLOCK` second from which a flow is live: within the longest idle timeout of
    /// any service.
    fn live_since(&self) -> u32 {
        let idle = self
            .dp
            .current()
            .infos
            .values()
            .map(|i| i.idle_timeout_s)
            .max()
            .unwrap_or(0);
        self.dp.writer().clock_seconds().saturating_sub(idle)
    }

    /// Whether `config`'s NAT services fit the running program: the NAT reverse tables are
    /// made at start, as large as the flow table when a service is NAT'd and of one entry
    /// otherwise, so the first NAT service waits for a restart (checked before a reload
    /// changes anything).
    pub(super) fn nat_fits(&self, config: &Config) -> Result<(), String> {
        let nat = config.has_nat();
        let room = match self.fds.map(names::NAT_REV4) {
            Ok(aya::maps::Map::LruHashMap(m)) => m.info().ok().map(|i| i.max_entries()),
            _ => None,
        };
        if nat && room.is_some_and(|n| n <= 1) {
            return Err(
                "the first NAT service needs a restart: the running program was \
                        started without NAT, and its NAT reverse tables have no room"
                    .into(),
            );
        }
        Ok(())
    }

    /// The connection tables' size now.
    pub(super) fn max_flows(&self) -> Option<u32> {
        let f = self.fds.map(names::FLOWS4).ok()?;
        match f {
            aya::maps::Map::LruHashMap(m) | aya::maps::Map::HashMap(m) => {
                m.info().ok().map(|i| i.max_entries())
            }
            _ => None,
        }
    }

    /// Moves the dataplane to maps of `to` (each size at least what it is): a new program
    /// instance over new sized maps, sharing the flow tables and everything else with the
    /// running one, filled with the whole plan, then put in the running program's place in
    /// one step. Flows, persistence and sync carry on; a failure leaves the running
    /// instance as it was.
    pub(super) async fn grow(&mut self, to: Limits) -> Result<()> {
        let was = self.dp.limits();
        let limits = to.max(was);
        let started = Instant::now();
        let bound = (self.attachment.program == crate::dataplane::devbound::PROGRAM_NATIVE)
            .then_some((self.iface.as_str(), self.ifindex));
        let grown = program::grow(
            limits,
            self.iface_mac,
            &self.fds,
            self.attachment.program,
            bound,
        )
        .context("loading a larger XDP program instance")?;
        let inside = self.prepare_inside(&grown.fds, limits).await?;
        let maps = self.dp.writer().regrown(&grown.fds)?;
        let old = self
            .dp
            .replace_maps(maps, limits)
            .context("filling the larger maps")?;
        if let Err(e) = self.attachment.replace(grown.prog).await {
            self.dp.restore_maps(old, was);
            return Err(e).context("switching to the larger XDP program instance");
        }
        // Flow-cache slots were filled against the old maps; they hold the same now, but
        // nothing is assumed.
        self.dp.writer_mut().new_epoch()?;
        self._ebpf = grown.ebpf;
        self.fds = grown.fds;
        self.switch_inside(inside).await;
        if let Some(p) = &self.pins {
            pin_maps(p, &self.fds);
        }
        info!(from = %was, to = %limits, ms = started.elapsed().as_millis() as u64, "XDP maps grown");
        Ok(())
    }
}

/// Puts the interfaces `ifindexes` into `TX_PORTS`, the devmap the program redirects
/// through (a frame for another interface it runs on goes out in the kernel's bulk).
fn set_tx_ports(fds: &program::MapFds, ifindexes: &[u32]) -> Result<()> {
    let map = fds
        .map(names::TX_PORTS)
        .map_err(|e| anyhow::anyhow!("opening {}: {e:?}", names::TX_PORTS))?;
    let mut ports = aya::maps::DevMapHash::try_from(map)
        .with_context(|| format!("opening {}", names::TX_PORTS))?;
    for &i in ifindexes {
        ports
            .insert(i, i, None, 0)
            .with_context(|| format!("{}: interface {i}", names::TX_PORTS))?;
    }
    Ok(())
}

/// Attaches the program to the inside interface `iface`: an instance over `fds` (the main
/// one's maps) with that interface's MAC, in `d`'s mode, taking over the link a previous
/// run pinned for it, and pins its own link with the dataplane's.
async fn attach_inside(
    iface: &str,
    d: &DataplaneConfig,
    limits: Limits,
    sync: Option<program::SyncLoad>,
    fds: &program::MapFds,
    pins: Option<&Pins>,
) -> Result<Inside> {
    let (mac, ifindex) = interface_info(iface).await?;
    let opts = LoadOptions {
        limits,
        iface_mac: mac,
        sync,
        ..LoadOptions::default()
    };
    let inst = program::for_interface(&opts, fds).context("loading the XDP program")?;
    let native = program::native_plan(&inst.fds, iface, ifindex, d.xdp_mode).await;
    let attachment = program::attach_xdp(
        &inst.prog,
        native,
        iface,
        ifindex,
        d.xdp_mode,
        pins.and_then(|p| p.inside_link(iface)),
        d.keep_xdp_on_exit,
    )
    .await?;
    if let (Some(p), Some(link)) = (pins, attachment.link()) {
        if let Err(e) = p.pin_inside_link(iface, link) {
            warn!(
                interface = iface,
                "the XDP program will not outlive this daemon there: pinning its link: {e}"
            );
        }
    }
    info!(
        interface = iface,
        mode = attachment.mode.name(),
        program = attachment.program,
        taken_over = attachment.taken_over,
        "XDP program attached to an inside interface"
    );
    Ok(Inside {
        iface: iface.to_string(),
        ifindex,
        mac,
        attachment,
        _ebpf: inst.ebpf,
    })
}

/// How long a move's old attachment goes on serving what arrives on the previous
/// interface: time to move the VIP's traffic after the reload.
pub(super) const RETIRE_AFTER: Duration = Duration::from_secs(60);

/// The lock of the dataplane on `interface` in this network namespace: a second daemon on
/// it is refused, naming the holder.
fn dataplane_lock(interface: &str) -> Result<std::fs::File> {
    let netns = crate::os::netns_id().context("naming this network namespace")?;
    let path = std::path::Path::new(crate::vrrp::record::DEFAULT_DIR).join(format!(
        "dataplane-{netns}-{}.lock",
        crate::os::file_name_part(interface)
    ));
    crate::os::lock_exclusive(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            anyhow::anyhow!(
                "another lb-daemon runs the dataplane on {interface} in this network namespace \
                 (it holds {})",
                path.display()
            )
        } else {
            anyhow::anyhow!("{}: {e}", path.display())
        }
    })
}

/// What a previous run left pinned, and what this run does with each map (logged).
fn look_at_pins(p: &Pins, opts: &LoadOptions) -> Result<Option<TakeOver>> {
    let found = p.maps()?;
    if found.is_empty() {
        return Ok(None);
    }
    let shapes: HashMap<String, pins::Shape> =
        found.iter().map(|(n, (s, _))| (n.clone(), *s)).collect();
    let meta = found.get(names::META).and_then(|(_, fd)| {
        let data = aya::maps::MapData::from_fd(fd.try_clone().ok()?).ok()?;
        let meta: aya::maps::Array<_, Meta> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).ok()?;
        meta.get(&0, 0).ok()
    });
    let judgement = pins::judge(
        &shapes,
        &program::expected_shapes(opts)?,
        meta.map(|m| m.layout),
    );
    match &judgement.dropped {
        Some(why) => {
            warn!(pins = %p.dir().display(), "the previous run's dataplane is not taken over: {why}; established connections are scheduled again")
        }
        None => {
            for (name, t) in &judgement.takes {
                match t {
                    Take::Adopt => {}
                    Take::Migrate { from, to } => info!(
                        map = name,
                        from, to, "the pinned map is migrated to the configured size"
                    ),
                    Take::Fresh(Some(why)) => warn!(map = name, "the pinned map is dropped: {why}"),
                    Take::Fresh(None) => {}
                }
            }
        }
    }
    Ok(Some(TakeOver {
        judgement,
        pinned: found,
    }))
}

/// The sizes of the pinned planner maps.
fn pinned_limits(t: &TakeOver) -> Limits {
    let entries = |name: &str| t.pinned.get(name).map_or(0, |(s, _)| s.entries);
    Limits {
        services: entries(names::SERVICE_INFO),
        backends: entries(names::BACKENDS),
        ring_slots: entries(names::RINGS),
    }
}

/// Copies the entries of every pinned table [`pins::judge`] resized into the new map.
fn migrate(t: &TakeOver, fds: &program::MapFds) {
    for table in Table::ALL {
        let name = table.name();
        if !matches!(t.judgement.takes.get(name), Some(Take::Migrate { .. })) {
            continue;
        }
        let (Some((_, from)), Some(to)) = (t.pinned.get(name), fds.get(name)) else {
            continue;
        };
        match copy_table(from.as_fd(), to, table) {
            Ok(n) => info!(map = name, entries = n, "migrated the pinned map's entries"),
            Err(e) => warn!(
                map = name,
                "migrating the pinned map: {e}; its entries are dropped"
            ),
        }
    }
}

/// Pins every map of the running instance that is not pinned already (a fresh start, a
/// migrated or a grown map), each in one step. A failure is logged: the dataplane then
/// does not fully outlive the daemon.
fn pin_maps(p: &Pins, fds: &program::MapFds) {
    for name in pins::pinned() {
        let Some(fd) = fds.get(name) else { continue };
        if p.holds(name, fd) {
            continue;
        }
        if let Err(e) = p.pin_map(name, fd) {
            warn!("pinning map {name}: {e}; the dataplane will not fully outlive this daemon");
        }
    }
}

/// The MAC address and index of an interface, from a link dump over rtnetlink (in whatever
/// network namespace the daemon runs in, unlike a path under /sys).
pub(super) async fn interface_info(name: &str) -> Result<([u8; 6], u32)> {
    let ifindex = crate::os::ifindex(name)?;
    let address = crate::netlink::link::address(ifindex)
        .await
        .with_context(|| format!("reading the hardware address of {name}"))?
        .with_context(|| format!("interface {name} (index {ifindex}) went away"))?;
    // What SIOCGIFHWADDR gave before: the first six bytes, zero-filled (zeros for an
    // interface without a hardware address).
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(&address) {
        *m = *b;
    }
    Ok((mac, ifindex))
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

/// The program's time base ([`crate::dataplane::program_seconds`]).
fn monotonic_seconds() -> u32 {
    crate::dataplane::program_seconds()
}

/// Root-only test in a throw-away network namespace; nothing is configured outside it.
#[cfg(test)]
mod netns_tests {
    use super::interface_info;
    use crate::netlink::test_netns::{in_netns, ip, privileged, Netns};

    #[test]
    fn interface_info_in_netns() {
        if !privileged("daemon::xdp::interface_info_in_netns") {
            return;
        }
        let ns = Netns::create("ifinfo");
        ip(&[
            "-n",
            &ns.0,
            "link",
            "add",
            "lif0",
            "address",
            "02:00:5e:00:53:0a",
            "type",
            "veth",
            "peer",
            "name",
            "lif1",
            "address",
            "02:00:5e:00:53:0b",
        ]);
        in_netns(&ns.0, || async {
            assert_eq!(interface_info("lo").await.expect("lo"), ([0; 6], 1));
            let (mac, index) = interface_info("lif0").await.expect("lif0");
            assert_eq!(mac, [0x02, 0, 0x5e, 0, 0x53, 0x0a]);
            assert_eq!(index, crate::os::ifindex("lif0").unwrap());
            let (mac, _) = interface_info("lif1").await.expect("lif1");
            assert_eq!(mac, [0x02, 0, 0x5e, 0, 0x53, 0x0b]);
            let e = interface_info("lif9").await.unwrap_err();
            assert!(format!("{e:#}").contains("lif9"), "{e:#}");
        });
    }
}
