//! `lb-daemon run`: load and attach the XDP program, keep its maps equal to the
//! configuration and the neighbour table, reload on SIGHUP, detach on SIGTERM/SIGINT.
use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    dataplane::{
        maps::BpfMaps,
        neigh::{MacResolver, MacResolverConfig, MacUpdate},
        plan::Limits,
        program::{self, LoadOptions},
        Dataplane,
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

pub async fn run(config_path: PathBuf) -> Result<()> {
    let mut config = Config::load(&config_path)?;
    let (iface_mac, ifindex) = interface_info(&config.interface)?;
    let opts = LoadOptions {
        limits: Limits::default(),
        max_flows: config.max_flows,
        iface_mac,
        ..LoadOptions::default()
    };
    let mut ebpf = program::load(&opts).context("loading the XDP program")?;
    spawn_bpf_logger(&mut ebpf);
    let maps = BpfMaps::new(&mut ebpf)?;
    let mode = program::attach(&mut ebpf, &config.interface, config.xdp_mode)?;
    info!(interface = %config.interface, mode, "XDP program attached");
    let mut dp = Dataplane::new(maps, opts.limits);

    let mut macs: HashMap<IpAddr, [u8; 6]> = HashMap::new();
    let (wanted_tx, wanted_rx) = watch::channel(wanted(&config, ifindex));
    let (mac_tx, mut mac_rx) = mpsc::channel::<MacUpdate>(1024);
    let resolver = MacResolver::new(MacResolverConfig::default())?;
    let mut resolver_task = tokio::spawn(resolver.run(wanted_rx, mac_tx));

    let apply = |dp: &mut Dataplane<BpfMaps>, config: &Config, macs: &HashMap<IpAddr, [u8; 6]>| {
        if let Err(e) = dp.update(&config.service_specs(|ip| macs.get(&ip).copied())) {
            error!("updating the dataplane: {e}");
        }
    };
    apply(&mut dp, &config, &macs);

    // The program's clock: flow idle times and persistence templates are measured on it.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    info!(services = config.virtual_servers.len(), "running");
    loop {
        tokio::select! {
            Some(up) = mac_rx.recv() => {
                match up.mac {
                    Some(mac) => {
                        info!(backend = %up.addr, mac = %fmt_mac(&mac), "backend MAC resolved");
                        macs.insert(up.addr, mac);
                    }
                    None => {
                        warn!(backend = %up.addr, "backend MAC unknown: no new flows to it");
                        macs.remove(&up.addr);
                    }
                }
                apply(&mut dp, &config, &macs);
            }
            _ = tick.tick() => {
                if let Err(e) = dp.writer_mut().set_clock(monotonic_seconds()) {
                    error!("updating the XDP program's clock: {e}");
                }
            }
            _ = hup.recv() => {
                // A bad file leaves the running configuration as it is.
                match Config::load(&config_path) {
                    Ok(new) if new.interface != config.interface || new.xdp_mode != config.xdp_mode
                        || new.max_flows != config.max_flows => {
                        error!("reload: the dataplane section changed; restart to apply it, nothing changed");
                    }
                    Ok(new) => {
                        config = new;
                        let want = wanted(&config, ifindex);
                        // The resolver says nothing about addresses it stops watching; a
                        // MAC kept for one could go stale unnoticed if it came back.
                        macs.retain(|ip, _| want.contains_key(ip));
                        let _ = wanted_tx.send(want);
                        apply(&mut dp, &config, &macs);
                        info!(services = config.virtual_servers.len(), "configuration reloaded");
                    }
                    Err(e) => error!("reload refused, keeping the running configuration: {e}"),
                }
            }
            res = &mut resolver_task => {
                anyhow::bail!("the neighbour resolver stopped: {:?}", res);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping: detaching the XDP program");
    drop(ebpf);
    Ok(())
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
