//! `lb-daemon run`: load and attach the XDP program, keep its maps equal to the
//! configuration, the health verdicts, the VRRP roles and the neighbour table; reload on
//! SIGHUP or `lb-daemon reload`; stop on SIGTERM/SIGINT (detaching the program, unless
//! `keep_xdp_on_exit` leaves it forwarding).
//!
//! - [`state`]: the one state, and one handler per kind of event;
//! - [`reload`]: the transactional reload;
//! - [`reconcile`]: the pure part: configuration, health, MACs, quorums and roles in,
//!   service specs, map sizes and tracking events out;
//! - [`apply`], [`xdp`], [`macs`], [`quorum`]: the dataplane's side of the state;
//! - [`snapshot`]: status and metrics; [`units`]: VRRP instances resolved on this host;
//! - [`preflight`]: what start-up and `lb-daemon check` refuse beyond the file.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

mod apply;
mod diff;
mod macs;
mod overrides;
mod preflight;
mod quorum;
mod reconcile;
mod reload;
mod seed;
mod snapshot;
mod state;
mod units;
mod xdp;

pub use preflight::{check_file, check_scripts, summary};
pub use reconcile::{dataplane_limits, service_spec, service_specs};

use anyhow::Result;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use apply::Dp;
use macs::Macs;
use state::State;

use crate::{
    config::OnStop,
    control::{self, Request, Response},
    health,
    model::ServiceKey,
    vrrp::runtime::Event,
};

/// Each real server's health, as the checkers last reported it.
type Health = HashMap<(ServiceKey, std::net::SocketAddr), health::BackendHealth>;

/// How old a count of flows per backend may be: `lb-daemon status` wants it fresh, the
/// metrics (refreshed every second) take one from the last ten seconds, so that a big
/// connection table is not walked every second.
const STATUS_FLOW_COUNT_AGE: Duration = Duration::from_secs(1);
const METRICS_FLOW_COUNT_AGE: Duration = Duration::from_secs(10);

pub async fn run(config_path: std::path::PathBuf) -> Result<()> {
    let (mut state, mut inbox) = State::start(config_path).await?;
    // The program's clock: flow idle times and persistence templates are measured on it.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The count-based schedulers' candidates (lc, wlc...): ranked again on the counts now.
    let mut rank = tokio::time::interval(Duration::from_millis(20));
    rank.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The control socket (status, reload, changes); the Prometheus endpoint is the state's.
    let (group_tx, group) = watch::channel(control_group(&state.config)?);
    let ctl_path = state.config.global_defs.control_socket_path();
    let ctl = control::Server::bind_with(
        &ctl_path,
        control::Options {
            group,
            ..control::Options::default()
        },
    )
    .await?;
    state.control = Some(state::ControlSocket {
        path: ctl_path,
        group: group_tx,
    });
    let (ctl_tx, mut ctl_rx) = mpsc::channel(control::CALL_QUEUE_LEN);
    tokio::spawn(ctl.serve(ctl_tx));
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Err(e) = crate::sdnotify::notify("READY=1") {
        warn!("telling systemd we are ready: {e}");
    }
    info!(
        services = state.config.virtual_servers.len(),
        vrrp_instances = state.config.vrrp_instances.len(),
        "running"
    );
    loop {
        tokio::select! {
            Some(up) = recv_opt(&mut inbox.macs) => {
                // Every update waiting is taken with this one: one plan for all of them.
                let more = std::iter::from_fn(|| inbox.macs.as_mut().and_then(|r| r.try_recv().ok()));
                state.on_macs(std::iter::once(up).chain(more)).await;
            }
            Some(ev) = inbox.vrrp.recv() => match ev {
                Event::Role { instance, vips, master, applied } => {
                    state.on_role(instance, vips, master, applied).await;
                }
                Event::State(ev) => state.on_vrrp_state(ev),
            },
            Some(ev) = inbox.health.recv() => {
                let more = std::iter::from_fn(|| inbox.health.try_recv().ok());
                state.on_health(std::iter::once(ev).chain(more)).await;
            }
            Some(ev) = inbox.track.recv() => state.on_track(ev),
            _ = tick.tick() => state.on_tick(Instant::now()),
            _ = rank.tick() => state.on_rank(),
            _ = hup.recv() => {
                if let Err(e) = state.on_reload().await {
                    error!("reload refused, keeping the running configuration: {e}");
                }
            }
            Some(call) = ctl_rx.recv() => match call.request {
                Request::Stop { release } => {
                    call.reply(Response::ok());
                    let release = release.unwrap_or(on_stop(&state) == OnStop::Release);
                    RELEASED_ON_REQUEST.store(release, std::sync::atomic::Ordering::Relaxed);
                    return stop(state, inbox, release).await;
                }
                Request::Status => call.reply(Response::status(state.on_status())),
                Request::Zero => call.reply(Response::done(state.on_zero())),
                Request::Diff { ref config } => {
                    let r = state.on_diff(std::path::Path::new(config));
                    call.reply(match r {
                        Ok(text) => Response::done(text),
                        Err(e) => Response::error(e),
                    });
                }
                Request::Which { ref client, ref service } => {
                    let r = state.on_which(client, service);
                    call.reply(match r {
                        Ok(w) => Response::which(w),
                        Err(e) => Response::error(e),
                    });
                }
                Request::Connections { ref service, ref real, ref client, limit } => {
                    match state.on_connections(service.as_deref(), real.as_deref(), client.as_deref(), limit) {
                        Err(e) => call.reply(Response::error(e)),
                        // The walk runs off the main loop, one at a time; the call is answered from it.
                        Ok(walk) => {
                            let walks = state.walks.clone();
                            tokio::spawn(async move {
                                let _one = walks.acquire_owned().await;
                                let r = tokio::task::spawn_blocking(walk).await;
                                call.reply(match r {
                                    Ok(Ok(c)) => Response::connections(c),
                                    Ok(Err(e)) => Response::error(format!("reading the connection table: {e:#}")),
                                    Err(e) => Response::error(format!("reading the connection table: {e}")),
                                });
                            });
                        }
                    }
                }
                Request::RealServer { ref service, ref real, action, all } => {
                    let r = state
                        .on_real_server(service.as_deref(), real.as_deref(), action, all)
                        .await;
                    call.reply(match r {
                        Ok(m) => Response::done(m),
                        Err(e) => Response::error(e),
                    });
                }
                Request::Reload => match state.on_reload().await {
                    Ok(()) => call.reply(Response::ok()),
                    Err(e) => {
                        error!("reload refused, keeping the running configuration: {e}");
                        call.reply(Response::error(e));
                    }
                },
            },
            res = resolver_done(&mut state.dp) => {
                anyhow::bail!("the neighbour resolver stopped: {:?}", res);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        state.after_event(Instant::now());
    }
    let release = on_stop(&state) == OnStop::Release;
    stop(state, inbox, release).await
}

/// What SIGTERM means, as the configuration now says (a reload may have changed it).
fn on_stop(state: &State) -> OnStop {
    state.config.global_defs.on_stop.unwrap_or_default()
}

/// `global_defs.control_socket_group`'s id; an unknown group is an error naming the file,
/// the line and the key (the lookup is the host's, so `check` and start-up make it).
pub(crate) fn control_group(config: &crate::config::Config) -> Result<Option<libc::gid_t>> {
    let Some(name) = &config.global_defs.control_socket_group else {
        return Ok(None);
    };
    let name = name.get_ref();
    let at = || {
        let line = std::fs::read_to_string(&config.file)
            .ok()
            .and_then(|t| crate::config::key_line(&t, "global_defs", "control_socket_group"));
        match line {
            Some(l) => format!("{}:{l}", config.file.display()),
            None => config.file.display().to_string(),
        }
    };
    match crate::os::group_id(name) {
        Ok(Some(gid)) => Ok(Some(gid)),
        Ok(None) => anyhow::bail!(
            "{}: `global_defs.control_socket_group`: no group {name:?} on this host",
            at()
        ),
        Err(e) => anyhow::bail!(
            "{}: `global_defs.control_socket_group`: looking up {name:?}: {e}",
            at()
        ),
    }
}

/// The exit status of a daemon that `lb-daemon stop` told to release: the systemd unit does
/// not start it again (`RestartPreventExitStatus=`), where it does after anything else.
pub const EXIT_RELEASED: u8 = 10;

static RELEASED_ON_REQUEST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the run ended with a release that `lb-daemon stop` asked for (see
/// [`EXIT_RELEASED`]).
pub fn released_on_request() -> bool {
    RELEASED_ON_REQUEST.load(std::sync::atomic::Ordering::Relaxed)
}

/// Stops. A `release` stop goes in order: VRRP first (priority-0 adverts, the VIPs
/// released), then tracking and the notify hooks (keepalived gives stop hooks a second), the
/// XDP program last (detached and unpinned, unless `keep_xdp_on_exit`). A `keep` stop
/// (keepalived's `--dont-release-vrrp`) leaves the VIPs, the program and its pinned maps as
/// they are, for the next run to take over.
async fn stop(state: State, mut inbox: state::Inbox, release: bool) -> Result<()> {
    let State {
        config,
        dp,
        vrrp,
        track_tasks,
        notifier,
        announcer,
        ..
    } = state;
    let _ = crate::sdnotify::notify("STOPPING=1");
    // First: the router moves the flows to the other nodes while this one still forwards.
    // A `keep` stop withdraws too (see `Announcer::stop`).
    if let Some(a) = announcer {
        a.stop().await;
    }
    if let Some(v) = vrrp {
        if release {
            info!("stopping VRRP: priority-0 adverts, releasing the virtual addresses");
        } else {
            info!("stopping VRRP, keeping the virtual addresses for the next run");
        }
        tokio::task::spawn_blocking(move || v.shutdown(release, std::time::Duration::from_secs(3)))
            .await?;
        // The addresses are released: the virtual MAC interfaces go too (a `keep` stop
        // leaves them with the addresses, for the next run).
        if release {
            crate::vrrp::vmac::release_all().await;
        }
        // The STOP events the units sent on their way out.
        while let Ok(ev) = inbox.vrrp.try_recv() {
            if let Event::State(ev) = ev {
                notifier.notify(ev);
            }
        }
    }
    drop(track_tasks);
    // keepalived gives stop hooks a second.
    notifier.shutdown(std::time::Duration::from_secs(1)).await;
    let Some(dp) = dp else { return Ok(()) };
    let keep_xdp = config
        .dataplane
        .as_ref()
        .is_some_and(|d| d.keep_xdp_on_exit);
    if !release {
        info!("stopping: the XDP program keeps forwarding with the pinned maps");
    } else if keep_xdp {
        info!("stopping: leaving the XDP program attached (keep_xdp_on_exit)");
    } else {
        info!("stopping: detaching the XDP program and removing its pins");
        dp.xdp.release().await;
    }
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
) -> Result<Result<(), crate::netlink::neigh::NeighError>, tokio::task::JoinError> {
    match dp {
        Some(dp) => dp.macs.resolver_done().await,
        None => std::future::pending().await,
    }
}
