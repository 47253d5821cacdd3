//! `lb-daemon run`: load and attach the XDP program, keep its maps equal to the
//! configuration and the neighbour table, reload on SIGHUP, detach on SIGTERM/SIGINT.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, DataplaneConfig},
    dataplane::{
        maps::BpfMaps,
        neigh::{MacResolver, MacResolverConfig, MacUpdate},
        plan::Limits,
        program::{self, LoadOptions},
        Dataplane,
    },
    vrrp::{
        fsm::Input,
        notify::Notifier,
        runtime::{self, Event, MemberSpec, UnitSpec},
        track::{self, TrackTasks, Tracking},
        vip::{AddressSocket, VirtualAddress},
    },
};

/// The MAC address and index of an interface, by ioctl (works in whatever network
/// namespace the daemon runs in, unlike a path under /sys).
pub fn interface_info(name: &str) -> Result<([u8; 6], u32)> {
    let ifindex = nix_ifindex(name)?;
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

fn nix_ifindex(name: &str) -> Result<u32> {
    if name.len() >= libc::IFNAMSIZ {
        anyhow::bail!("interface name {name:?} is too long");
    }
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {name:?}"));
    }
    Ok(idx)
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

/// The set of backend addresses to resolve, with the interface they are reached through.
fn wanted(config: &Config, ifindex: u32) -> HashMap<IpAddr, u32> {
    config
        .virtual_servers
        .iter()
        .flat_map(|vs| vs.real_servers.iter().map(|rs| (rs.addr.ip(), ifindex)))
        .collect()
}

/// The XDP side of a running daemon.
struct Dp {
    dp: Dataplane<BpfMaps>,
    /// Keeps the program (and its bpf_link) alive.
    _ebpf: aya::Ebpf,
    ifindex: u32,
    macs: HashMap<IpAddr, [u8; 6]>,
    wanted_tx: watch::Sender<HashMap<IpAddr, u32>>,
    resolver: tokio::task::JoinHandle<Result<(), crate::dataplane::neigh::NeighError>>,
}

impl Dp {
    async fn start(
        config: &Config,
        d: &DataplaneConfig,
    ) -> Result<(Self, mpsc::Receiver<MacUpdate>)> {
        let (iface_mac, ifindex) = interface_info(&d.interface)?;
        let opts = LoadOptions {
            limits: Limits::default(),
            max_flows: d.max_flows,
            iface_mac,
            ..LoadOptions::default()
        };
        let mut ebpf = program::load(&opts).context("loading the XDP program")?;
        spawn_bpf_logger(&mut ebpf);
        let maps = BpfMaps::new(&mut ebpf)?;
        let mode = program::attach(&mut ebpf, &d.interface, d.xdp_mode)?;
        info!(interface = %d.interface, mode, "XDP program attached");
        let (wanted_tx, wanted_rx) = watch::channel(wanted(config, ifindex));
        let (mac_tx, mac_rx) = mpsc::channel::<MacUpdate>(1024);
        let resolver = MacResolver::new(MacResolverConfig::default())?;
        let resolver = tokio::spawn(resolver.run(wanted_rx, mac_tx));
        let dp = Dataplane::new(maps, opts.limits);
        Ok((
            Self {
                dp,
                _ebpf: ebpf,
                ifindex,
                macs: HashMap::new(),
                wanted_tx,
                resolver,
            },
            mac_rx,
        ))
    }

    fn apply(&mut self, config: &Config, master_vips: &HashSet<IpAddr>) {
        let specs = config.service_specs(|ip| self.macs.get(&ip).copied(), master_vips);
        if let Err(e) = self.dp.update(&specs) {
            error!("updating the dataplane: {e}");
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
    let mut config = Config::load(&config_path)?;
    config.check_scripts()?;
    let (mut dp, mut mac_rx) = match &config.dataplane {
        Some(d) => {
            let (dp, rx) = Dp::start(&config, d).await?;
            (Some(dp), Some(rx))
        }
        None => (None, None),
    };
    let mut master_vips: HashSet<IpAddr> = HashSet::new();
    if let Some(dp) = dp.as_mut() {
        dp.apply(&config, &master_vips);
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
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    info!(
        services = config.virtual_servers.len(),
        vrrp_instances = config.vrrp_instances.len(),
        "running"
    );
    loop {
        tokio::select! {
            Some(up) = recv_opt(&mut mac_rx) => {
                let Some(dp) = dp.as_mut() else { continue };
                match up.mac {
                    Some(mac) => {
                        info!(backend = %up.addr, mac = %fmt_mac(&mac), "backend MAC resolved");
                        dp.macs.insert(up.addr, mac);
                    }
                    None => {
                        warn!(backend = %up.addr, "backend MAC unknown: no new flows to it");
                        dp.macs.remove(&up.addr);
                    }
                }
                dp.apply(&config, &master_vips);
            }
            Some(ev) = event_rx.recv() => match ev {
                Event::Role { instance, vips, master } => {
                    info!(%instance, master, "VRRP role: {}", if master { "serving" } else { "passing" });
                    for v in vips {
                        if master {
                            master_vips.insert(v);
                        } else {
                            master_vips.remove(&v);
                        }
                    }
                    if let Some(dp) = dp.as_mut() {
                        dp.apply(&config, &master_vips);
                    }
                }
                Event::State(ev) => notifier.notify(ev),
            },
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
                }
            }
            _ = hup.recv() => {
                // A bad file leaves the running configuration as it is.
                match Config::load(&config_path).and_then(|c| c.check_scripts().map(|()| c)) {
                    Ok(new) if new.dataplane != config.dataplane => {
                        error!("reload: the dataplane section changed; restart to apply it, nothing changed");
                    }
                    Ok(new) if new.vrrp_instances != config.vrrp_instances || new.sync_groups != config.sync_groups => {
                        // Restarting VRRP would release and retake the VIPs: a flap. Refused
                        // until instances can be reconfigured in place.
                        error!("reload: VRRP instances changed; restart to apply them, nothing changed");
                    }
                    Ok(new) => {
                        // Unchanged scripts keep their rise/fall state across the reload.
                        if let Err(e) = track_tasks.reload(&new) {
                            error!("reload refused, keeping the running configuration: {e}");
                            continue;
                        }
                        match Tracking::new(&new) {
                            Ok(mut t) => {
                                t.seed(&track_tasks.snapshot());
                                tracking = t;
                            }
                            Err(e) => {
                                error!("reload refused, keeping the running configuration: {e}");
                                continue;
                            }
                        }
                        config = new;
                        if let Some(dp) = dp.as_mut() {
                            let want = wanted(&config, dp.ifindex);
                            // The resolver says nothing about addresses it stops watching; a
                            // MAC kept for one could go stale unnoticed if it came back.
                            dp.macs.retain(|ip, _| want.contains_key(ip));
                            let _ = dp.wanted_tx.send(want);
                            dp.apply(&config, &master_vips);
                        }
                        info!(services = config.virtual_servers.len(), "configuration reloaded");
                    }
                    Err(e) => error!("reload refused, keeping the running configuration: {e}"),
                }
            }
            res = resolver_done(&mut dp) => {
                anyhow::bail!("the neighbour resolver stopped: {:?}", res);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
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
    info!("stopping: detaching the XDP program");
    drop(dp);
    Ok(())
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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
