//! One transactional reload. Every part prepares from the new file (tracking, health checks,
//! the dataplane's plan) and nothing running changes until all of them succeeded; the maps,
//! the one part whose writes can fail after its checks, are written last and put back when
//! they fail. A refused reload leaves everything as it was: scripts keep their rise/fall
//! state, checks their timers, the maps their contents.
use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use tracing::{error, info};

use super::{check_scripts, Health, State};
use crate::{
    config::{Config, DataplaneConfig},
    health,
    model::{Limits, ServiceKey},
    vrrp::track::Tracking,
};

impl State {
    /// Re-reads the file and applies it as a diff. A file that does not load, or that
    /// changes what cannot change in place (the dataplane section, the VRRP instances:
    /// restarting VRRP would release and retake the VIPs, a flap), changes nothing.
    pub(super) async fn on_reload(&mut self) -> Result<(), String> {
        let started = Instant::now();
        // The cache is a memo of text to service: what it keeps is right whether or not
        // this reload goes through.
        let new = Config::load_cached(&self.path, &mut self.parsed).map_err(|e| e.to_string())?;
        check_scripts(&new).map_err(|e| e.to_string())?;
        let parsed = started.elapsed();
        restart_only(&self.config, &new)?;

        // Prepare: each part checks what it would run, starting nothing.
        let mut tracking = Tracking::new(&new).map_err(|e| e.to_string())?;
        let tracks = self.track_tasks.prepare(&new).map_err(|e| e.to_string())?;
        // The services this reload touches; a change of `global_defs` (the scripts' user,
        // script security) reaches every check.
        let changed = self.config.changed_services(&new);
        let scope = if new.global_defs == self.config.global_defs {
            health::Scope::Services(&changed)
        } else {
            health::Scope::All
        };
        let checks = health::Checkers::prepare(&new, scope).map_err(|e| e.to_string())?;

        // The maps: a configuration the dataplane cannot hold (too many services or
        // backends) is refused here, and what was written is put back.
        let planning = Instant::now();
        if let Some(dp) = self.dp.as_mut() {
            let reserve = dp.xdp.reserve;
            // A larger reserve grows the maps now; a smaller one gives nothing back (the
            // maps never shrink while running).
            if let Some(d) = &new.dataplane {
                dp.xdp.reserve = d.reserve;
            }
            if let Err(e) = dp.apply(&new, &self.master_vips, &self.health).await {
                dp.xdp.reserve = reserve;
                if let Err(back) = dp
                    .apply(&self.config, &self.master_vips, &self.health)
                    .await
                {
                    // The planner writes the whole plan again at the next apply.
                    error!("putting the running configuration back into the dataplane: {back:#}");
                }
                return Err(format!("the dataplane cannot take it: {e:#}"));
            }
        }
        let planned = planning.elapsed();

        // Commit: nothing from here on can fail.
        let addresses_moved = addresses(&self.config, &changed) != addresses(&new, &changed);
        let health_before = verdicts(&new, &changed, &self.health);
        // Unchanged scripts keep their rise/fall state, unchanged checkers their timers.
        self.track_tasks.commit(tracks);
        self.checkers.commit(checks, scope, &mut self.health);
        tracking.seed(&self.track_tasks.snapshot());
        if let Some(dp) = self.dp.as_ref() {
            tracking.seed(&dp.quorum_status(&new));
        }
        self.tracking = tracking;
        self.config = new;
        if let Some(dp) = self.dp.as_mut() {
            // A changed service's pool decides when its quorum is first told (all its MACs
            // known), even when the quorum itself did not move.
            dp.quorum.moved |= !changed.is_empty();
            // Rebuilt from every service only when some address came or went.
            if addresses_moved {
                dp.macs.retarget(&self.config);
            }
            // The changed services again, with their checkers' first view, if that differs
            // from what they were planned with (no verdict yet plans a new real server as
            // its checker starts it, so it rarely does).
            let again = match scope {
                health::Scope::All => {
                    dp.all_stale();
                    true
                }
                health::Scope::Services(s) => {
                    dp.stale(s.iter().copied());
                    health_before != verdicts(&self.config, s, &self.health)
                }
            };
            if again {
                if let Err(e) = dp
                    .apply(&self.config, &self.master_vips, &self.health)
                    .await
                {
                    error!("updating the dataplane: {e:#}");
                }
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        info!(
            services = self.config.virtual_servers.len(),
            parse_ms = ms(parsed),
            maps_ms = ms(planned),
            total_ms = ms(started.elapsed()),
            "configuration reloaded"
        );
        Ok(())
    }
}

/// What a reload cannot change in place: a restart applies it.
fn restart_only(running: &Config, new: &Config) -> Result<(), String> {
    if new.sync != running.sync {
        return Err("the [sync] section changed: restart to apply it".into());
    }
    // The reserve of room may change in place (the maps grow to it); nothing else may.
    let in_place = |d: &Option<DataplaneConfig>| {
        d.clone().map(|d| DataplaneConfig {
            reserve: Limits::default(),
            ..d
        })
    };
    if in_place(&new.dataplane) != in_place(&running.dataplane) {
        return Err("the [dataplane] section changed: restart to apply it".into());
    }
    if new.vrrp_instances != running.vrrp_instances || new.sync_groups != running.sync_groups {
        return Err("VRRP instances changed: restart to apply them".into());
    }
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
