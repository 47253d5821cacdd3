//! The shell of `[announce]`: a task that holds the TUN device and keeps a host route
//! through it in the announce table for each VIP [`super::plan`] wants, and nothing else
//! of ours there. It compares what the table holds with what is wanted at every change
//! and every [`RESYNC`], so a route someone deleted (or a device someone removed) comes
//! back by itself.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::VipPlan;
use crate::{
    config::{announce::ROUTE_PROTOCOL, AnnounceConfig},
    log_limit::LogLimit,
    netlink::{
        route::{self, HostRoute},
        RouteSocket,
    },
};

/// How often the table is compared with what is wanted when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(5);
/// How long a stop waits for the routes to be deleted.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// What `status` shows of `[announce]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnnounceStatus {
    pub device: String,
    pub table: u32,
    pub vips: Vec<VipStatus>,
    /// Route additions and deletions made.
    pub changes: u64,
    /// Netlink requests that failed (tried again at the next change or resync).
    pub errors: u64,
    pub last_error: Option<String>,
}

/// One VIP of [`AnnounceStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VipStatus {
    pub vip: Option<IpAddr>,
    /// Its route is in the table (the routing daemon announces it).
    pub announced: bool,
    /// It should be.
    pub wanted: bool,
    pub reason: String,
}

/// The running announcer; [`Announcer::stop`] ends it.
pub struct Announcer {
    cfg: AnnounceConfig,
    /// `None` until the first plan: nothing is announced (or withdrawn) before the daemon
    /// knows what it serves.
    want: watch::Sender<Option<Vec<VipPlan>>>,
    status: Arc<Mutex<AnnounceStatus>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Announcer {
    /// Opens the device (a persistent one of that name is taken over), brings it up, and starts the
    /// task; nothing is announced until [`Announcer::set`] says so. The device is the
    /// start's error: without it nothing could ever be announced.
    pub async fn start(cfg: &AnnounceConfig) -> Result<Self> {
        let device = Device::open(&cfg.device).await?;
        info!(device = %cfg.device, table = cfg.table, ifindex = device.ifindex, "announce: routes for the routing daemon");
        let (want, want_rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(AnnounceStatus {
            device: cfg.device.clone(),
            table: cfg.table,
            ..Default::default()
        }));
        let (stop, stop_rx) = oneshot::channel();
        let task = Task {
            cfg: cfg.clone(),
            device,
            sock: None,
            status: status.clone(),
            log: LogLimit::new(Duration::from_secs(10)),
        };
        let task = tokio::spawn(task.run(want_rx, stop_rx));
        Ok(Self {
            cfg: cfg.clone(),
            want,
            status,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The section it runs with.
    pub fn config(&self) -> &AnnounceConfig {
        &self.cfg
    }

    /// What should be announced now.
    pub fn set(&self, plan: Vec<VipPlan>) {
        self.want.send_if_modified(|w| {
            let changed = w.as_ref() != Some(&plan);
            *w = Some(plan);
            changed
        });
    }

    pub fn status(&self) -> AnnounceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Ends the task: the routes are deleted (the routing daemon withdraws them at once) and
    /// the device goes. Every stop withdraws, a `keep` stop too: routes left for a next run
    /// would go on drawing traffic if that run never came (a new binary or file that fails,
    /// a file without `[announce]`), with nothing to withdraw them, where VRRP's peer takes
    /// over from a silent master. The router's rehash moves the flows to the other nodes,
    /// which hold them through `[sync]`, and back when this node announces again.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            if tokio::time::timeout(STOP_WAIT, t).await.is_err() {
                warn!("announce: the routes were not all deleted in time; the device goes with the daemon");
            }
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Dropped without stop (a reload that ended it): the task deletes its routes.
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The TUN device and its index.
struct Device {
    /// Held, never read: the device (and every route through it) lives while it is open.
    _fd: OwnedFd,
    ifindex: u32,
    name: String,
}

impl Device {
    async fn open(name: &str) -> Result<Self> {
        let fd = crate::os::open_tun(name)
            .with_context(|| format!("announce.device {name}: opening the TUN device"))?;
        // A persistent device of that name (`ip tuntap add`, say) goes with this run now.
        crate::os::set_tun_persist(fd.as_fd(), false)
            .with_context(|| format!("announce.device {name}: clearing persist"))?;
        let ifindex = crate::os::ifindex(name)
            .with_context(|| format!("announce.device {name}: its index"))?;
        // IPv4 takes no route through a device that is down.
        crate::netlink::link::set_up(ifindex)
            .await
            .with_context(|| format!("announce.device {name}: bringing it up"))?;
        Ok(Self {
            _fd: fd,
            ifindex,
            name: name.to_string(),
        })
    }

    /// Whether the device is still the one this fd holds (someone may have deleted it).
    fn is_there(&self) -> bool {
        crate::os::ifindex(&self.name).ok() == Some(self.ifindex)
    }
}

struct Task {
    cfg: AnnounceConfig,
    device: Device,
    sock: Option<RouteSocket>,
    status: Arc<Mutex<AnnounceStatus>>,
    log: LogLimit,
}

impl Task {
    async fn run(
        mut self,
        mut want: watch::Receiver<Option<Vec<VipPlan>>>,
        mut stop: oneshot::Receiver<()>,
    ) {
        loop {
            let plan = want.borrow_and_update().clone();
            if let Some(plan) = plan {
                self.reconcile(&plan).await;
            }
            tokio::select! {
                r = want.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(RESYNC) => {}
                _ = &mut stop => break,
            }
        }
        // Deleted one by one before the device goes: each withdrawal reaches the routing
        // daemon as its own message at once, where the device's removal needs its scan. A
        // device someone deleted is not made again for it.
        if self.device.is_there() {
            self.reconcile(&[]).await;
        }
        info!(device = %self.device.name, "announce: routes withdrawn");
    }

    fn socket(&mut self) -> Result<&mut RouteSocket> {
        if self.sock.is_none() {
            self.sock = Some(RouteSocket::open()?);
        }
        Ok(self.sock.as_mut().expect("opened above"))
    }

    async fn reconcile(&mut self, plan: &[VipPlan]) {
        if let Err(e) = self.try_reconcile(plan).await {
            self.sock = None;
            let msg = format!("{e:#}");
            if self.log.allow().is_some() {
                warn!("announce: {msg}");
            }
            if let Ok(mut s) = self.status.lock() {
                s.errors += 1;
                s.last_error = Some(msg);
            }
        }
    }

    async fn try_reconcile(&mut self, plan: &[VipPlan]) -> Result<()> {
        if !self.device.is_there() {
            warn!(device = %self.device.name, "announce: the device is gone; making it again");
            self.device = Device::open(&self.cfg.device).await?;
        }
        let (table, ifindex) = (self.cfg.table, self.device.ifindex);
        let wanted: BTreeSet<IpAddr> = plan
            .iter()
            .filter(|p| p.wanted)
            .filter_map(|p| p.vip)
            .collect();
        let held = route::list(self.socket()?, table, ROUTE_PROTOCOL).await?;
        let mut changes = 0;
        // Ours but not wanted (or through another device: a previous device's).
        for r in held
            .iter()
            .filter(|r| r.ifindex != ifindex || !wanted.contains(&r.addr))
        {
            if route::delete(self.socket()?, r).await? {
                info!(vip = %r.addr, "announce: withdrawn");
                changes += 1;
            }
        }
        let have: BTreeSet<IpAddr> = held
            .iter()
            .filter(|r| r.ifindex == ifindex)
            .map(|r| r.addr)
            .collect();
        let mut failed = None;
        for &vip in wanted.difference(&have) {
            let r = HostRoute {
                addr: vip,
                ifindex,
                table,
                protocol: ROUTE_PROTOCOL,
            };
            match route::add(self.socket()?, &r).await {
                Ok(_) => {
                    info!(%vip, "announce: announced");
                    changes += 1;
                }
                // One VIP's failure (its family disabled on the device) leaves the others.
                Err(e) => failed = Some(anyhow::anyhow!("adding the route of {vip}: {e}")),
            }
        }
        let now = route::list(self.socket()?, table, ROUTE_PROTOCOL).await?;
        if let Ok(mut s) = self.status.lock() {
            s.changes += changes;
            s.vips = plan
                .iter()
                .map(|p| VipStatus {
                    vip: p.vip,
                    announced: now
                        .iter()
                        .any(|r| Some(r.addr) == p.vip && r.ifindex == ifindex),
                    wanted: p.wanted,
                    reason: p.reason.clone(),
                })
                .collect();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
