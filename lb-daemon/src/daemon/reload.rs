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

use super::{check_scripts, overrides::Overrides, Health, State};
use crate::vrrp::notify::Notifier;
use crate::{
    config::{Config, DataplaneConfig},
    health,
    model::ServiceKey,
    vrrp::track::Tracking,
};

impl State {
    /// Re-reads the file and applies it as a diff. A file that does not load, or that
    /// changes what cannot change in place (see [`restart_only`]), changes nothing. VRRP
    /// instances change in place, without an election ([`VrrpThread::reconfigure`]).
    ///
    /// [`VrrpThread::reconfigure`]: crate::vrrp::runtime::VrrpThread::reconfigure
    pub(super) async fn on_reload(&mut self) -> Result<(), String> {
        let r = self.reload().await;
        // The virtual MAC interfaces the configuration in force does not want (a reload
        // removed or renamed them, or a refused one made them) go.
        let wanted = self
            .config
            .vrrp_instances
            .iter()
            .filter_map(|i| i.use_vmac.clone())
            .collect();
        crate::vrrp::vmac::prune(&wanted).await;
        r
    }

    async fn reload(&mut self) -> Result<(), String> {
        let started = Instant::now();
        // The cache is a memo of text to service: what it keeps is right whether or not
        // this reload goes through.
        let new = Config::load_cached(&self.path, &mut self.parsed).map_err(|e| e.to_string())?;
        check_scripts(&new).map_err(|e| e.to_string())?;
        let parsed = started.elapsed();
        restart_only(&self.config, &new).map_err(|r| refusal(&self.path, r))?;
        // The metrics' token is read again, and a file that cannot be read refuses the
        // reload: the token in use stays.
        let metrics_token = new.metrics_token().map_err(|e| e.to_string())?;
        // Another metrics address: the new listener is bound now (an address in use
        // refuses the reload) and takes over at the commit; the old one stops with its
        // feed. (None: no listener any more.)
        let metrics_moved =
            new.global_defs.metrics_address != self.config.global_defs.metrics_address;
        let new_metrics = match (&new.global_defs.metrics_address, metrics_moved) {
            (Some(addr), true) => Some(Some(
                super::state::Metrics::start(*addr.get_ref(), metrics_token.clone())
                    .await
                    .map_err(|e| {
                        refusal(
                            &self.path,
                            (
                                "global_defs",
                                "metrics_address",
                                format!("global_defs.metrics_address: {e:#}"),
                            ),
                        )
                    })?,
            )),
            (None, true) => Some(None),
            (_, false) => None,
        };
        // `[sync]`: its key is read again (its file may have new contents), and the engine
        // starts again if anything changed, on the program's ring: what the ring fixes
        // (its size, the refresh interval) waits for a restart.
        let sync_key = new.sync_key().map_err(|e| e.to_string())?;
        // A new `[announce]`: its device is made now (a name another interface has refuses
        // the reload), and dropped with the reload if it fails; it announces nothing until
        // the commit's first plan.
        let new_announcer = match (&self.config.announce, &new.announce) {
            (None, Some(a)) => Some(
                crate::announce::routes::Announcer::start(a)
                    .await
                    .map_err(|e| refusal(&self.path, ("announce", "device", format!("{e:#}"))))?,
            ),
            _ => None,
        };
        if let Some(dp) = &self.dp {
            dp.xdp
                .sync_fits(new.sync.as_ref())
                .map_err(|(key, why)| refusal(&self.path, sync_refusal(key, why)))?;
        }
        let sync_changed = self
            .dp
            .as_ref()
            .is_some_and(|dp| new.sync != self.config.sync || sync_key != dp.xdp.sync_key);
        if let Some(dp) = &self.dp {
            dp.xdp
                .nat_fits(&new)
                .map_err(|why| refusal(&self.path, ("virtual_server", "lb_kind", why)))?;
        }
        // A smaller flow table must have room for the live flows: checked before anything
        // moves.
        if let (Some(dp), Some(d)) = (&self.dp, &new.dataplane) {
            dp.xdp.check_resize(d.max_flows).map_err(|e| {
                let why = format!("dataplane.max_flows: {e:#}");
                refusal(&self.path, ("dataplane", "max_flows", why))
            })?;
        }

        // Prepare: each part checks what it would run; nothing running changes, and what a
        // part prepared (a new interface poller) is dropped with a refusal.
        let mut tracking = Tracking::new(&new).map_err(|e| e.to_string())?;
        let tracks = self.track_tasks.prepare(&new).map_err(|e| e.to_string())?;
        // The services this reload touches; a change of `global_defs` (the scripts' user,
        // script security) reaches every check.
        let mut changed = self.config.changed_services(&new);
        // An SSL_GET's CA file is read when its check is built, a FILE_CHECK's track_file is
        // a block of its own: a service whose text is the same may have a rewritten CA file
        // (a rotation) or track_file, so those services are always reconciled. A check that
        // comes out the same stays as it is.
        changed.extend(
            new.virtual_servers
                .iter()
                .filter(|vs| vs.real_servers.iter().any(|rs| rs.checks.reads_files()))
                .map(|vs| vs.key()),
        );
        let scope = if new.global_defs == self.config.global_defs {
            health::Scope::Services(&changed)
        } else {
            health::Scope::All
        };
        let checks = health::Checkers::prepare(&new, scope).map_err(|e| e.to_string())?;
        // The VRRP units, resolved on this host (an interface that is not there refuses the
        // reload); the thread that runs them, if this is the first instance.
        let mut units = if new.vrrp_instances.is_empty() {
            Vec::new()
        } else {
            let running = self
                .vrrp
                .as_ref()
                .map(|v| v.member_specs())
                .unwrap_or_default();
            super::units::vrrp_units(&new, true, &running)
                .await
                .map_err(|e| format!("{e:#}"))?
        };
        // Only for a file that brings the first instance: a running configuration with
        // instances has its thread (a state without one, as in tests, gets none here).
        let first = self.config.vrrp_instances.is_empty() && !units.is_empty();
        let vrrp_thread = match (&self.vrrp, first) {
            (None, true) => Some(
                crate::vrrp::runtime::spawn(Vec::new(), self.vrrp_events.clone())
                    .map_err(|e| format!("starting the VRRP thread: {e}"))?,
            ),
            _ => None,
        };
        // `global_defs`' hook options (user, script security, FIFO, router_id): a new
        // notifier, which goes on with the old one's counts.
        let hook_options = |g: &crate::config::GlobalDefs| {
            (
                g.script_user.clone(),
                g.enable_script_security,
                g.notify_fifo.clone(),
                g.notify_fifo_format,
                g.notify_fifo_script.as_ref().map(|s| s.get_ref().clone()),
                g.router_id.clone(),
            )
        };
        // The instances' and groups' hooks.
        fn hooks(c: &Config) -> Vec<(&String, &crate::config::vrrp::Notify)> {
            let instances = c.vrrp_instances.iter().map(|i| (&i.name, &i.notify));
            let groups = c.sync_groups.iter().map(|g| (&g.name, &g.notify));
            instances.chain(groups).collect()
        }
        let notifier = if hook_options(&new.global_defs) != hook_options(&self.config.global_defs)
            || hooks(&new) != hooks(&self.config)
        {
            Some(Notifier::from_config_after(&new, &self.notifier).map_err(|e| e.to_string())?)
        } else {
            None
        };
        // The control socket's group: an unknown one refuses the reload.
        let group = if new.global_defs.control_socket_group
            != self.config.global_defs.control_socket_group
        {
            Some(super::control_group(&new).map_err(|e| format!("{e:#}"))?)
        } else {
            None
        };
        // A new state directory takes the overrides now (a directory that cannot be written
        // refuses the reload); the old file goes at the commit.
        let old_dir = self.config.global_defs.state_dir_path();
        let new_dir = new.global_defs.state_dir_path();
        if new_dir != old_dir {
            let mut kept = self.overrides.clone();
            kept.retain_configured(&new);
            super::overrides::save(&new_dir, &kept).map_err(|e| {
                format!("global_defs.state_dir: {e:#}: the runtime overrides could not move")
            })?;
        }
        // The socket's group and mode before the maps (whose failure puts them back), so
        // that nothing after them can fail.
        let old_group = self.control.as_ref().map(|c| *c.group.borrow());
        if let (Some(gid), Some(c)) = (group, &self.control) {
            if let Err(e) = crate::control::set_group(&c.path, gid) {
                if new_dir != old_dir {
                    let _ = super::overrides::save(&new_dir, &Default::default());
                }
                return Err(format!(
                    "global_defs.control_socket_group: {}: {e}",
                    c.path.display()
                ));
            }
        }
        let put_group_back = |control: &Option<super::state::ControlSocket>| {
            if let (Some(_), Some(c), Some(old)) = (group, control, old_group) {
                if let Err(e) = crate::control::set_group(&c.path, old) {
                    error!("putting the control socket's group back: {e}");
                }
            }
        };

        // The steps that can fail after their checks, in order; the first failure undoes
        // them all (each undo is harmless where its step did not run).
        let old_sync_key = self.dp.as_ref().and_then(|dp| dp.xdp.sync_key.clone());
        let old_reserve = self.dp.as_ref().map(|dp| dp.xdp.reserve);
        let mut failed: Option<String> = None;
        // The maps: a configuration the dataplane cannot hold (too many services or
        // backends) is refused here.
        let planning = Instant::now();
        if let Some(dp) = self.dp.as_mut() {
            // A larger reserve grows the maps now; a smaller one gives nothing back (the
            // maps never shrink while running).
            if let Some(d) = &new.dataplane {
                dp.xdp.reserve = d.reserve;
            }
            // Whether a service is served follows the announced VIPs, which its own text
            // does not say: every service is planned again when they change.
            if new.announce != self.config.announce {
                dp.all_stale();
            }
            if let Err(e) = dp
                .apply(&new, &self.master_vips, &self.health, &self.overrides)
                .await
            {
                failed = Some(format!("the dataplane cannot take it: {e:#}"));
            }
        }
        let planned = planning.elapsed();
        // Sync's engine, once the maps took the plan (a refused plan never stops it). It
        // goes on as sender or receiver as the running one did, unless it follows another
        // instance now.
        let same_instance = new.sync.as_ref().map(|s| &s.vrrp_instance)
            == self.config.sync.as_ref().map(|s| &s.vrrp_instance);
        let mut sync_restarted = false;
        let was_master = self
            .dp
            .as_ref()
            .and_then(|dp| dp.xdp.sync.as_ref())
            .map(|h| h.is_master());
        if let (None, true, Some(dp)) = (&failed, sync_changed, self.dp.as_mut()) {
            sync_restarted = true;
            let master = (!same_instance).then(|| sync_master(&new, &self.master_vips));
            match dp
                .xdp
                .restart_sync(new.sync.as_ref(), sync_key.as_deref(), master)
            {
                Ok(()) => {
                    info!(destinations = ?new.sync.as_ref().map(|s| s.destinations()), "connection sync follows the new [sync]")
                }
                Err(e) => failed = Some(format!("sync: {e:#}")),
            }
        }
        // The interface: the program moves there (the old interface's attachment goes).
        let mut moved_from: Option<crate::config::DataplaneConfig> = None;
        if let (None, Some(dp), Some(d)) = (&failed, self.dp.as_mut(), &new.dataplane) {
            if dp.xdp.interface() != d.interface {
                match dp.xdp.move_to(d).await {
                    Ok(()) => moved_from = self.config.dataplane.clone(),
                    Err(e) => {
                        let why = format!("dataplane.interface: {e:#}");
                        failed = Some(refusal(&self.path, ("dataplane", "interface", why)));
                    }
                }
            }
        }
        // The connection tables' size, last: once the new tables run, nothing is undone.
        if let (None, Some(dp), Some(d)) = (&failed, self.dp.as_mut(), &new.dataplane) {
            if dp.xdp.max_flows() != Some(d.max_flows) {
                if let Err(e) = dp.xdp.resize_flows(d.max_flows, new.sync.as_ref()).await {
                    let why = format!("dataplane.max_flows: {e:#}");
                    failed = Some(refusal(&self.path, ("dataplane", "max_flows", why)));
                }
            }
        }
        if let Some(e) = failed {
            if let Some(dp) = self.dp.as_mut() {
                if let Some(old) = &moved_from {
                    if let Err(back) = dp.xdp.move_to(old).await {
                        error!("moving the XDP program back to {}: {back:#}", old.interface);
                    }
                }
                // Sync first: the apply below gives it the running translation tables.
                if sync_restarted {
                    // As it was before this reload's restart.
                    let master = Some(
                        was_master.unwrap_or_else(|| sync_master(&self.config, &self.master_vips)),
                    );
                    if let Err(back) = dp.xdp.restart_sync(
                        self.config.sync.as_ref(),
                        old_sync_key.as_deref(),
                        master,
                    ) {
                        error!("starting the running connection sync again: {back:#}");
                    }
                }
                if let Some(r) = old_reserve {
                    dp.xdp.reserve = r;
                }
                if new.announce != self.config.announce {
                    dp.all_stale();
                }
                if let Err(back) = dp
                    .apply(
                        &self.config,
                        &self.master_vips,
                        &self.health,
                        &self.overrides,
                    )
                    .await
                {
                    // The planner writes the whole plan again at the next apply.
                    error!("putting the running configuration back into the dataplane: {back:#}");
                }
            }
            put_group_back(&self.control);
            if new_dir != old_dir {
                let _ = super::overrides::save(&new_dir, &Default::default());
            }
            return Err(e);
        }

        // Commit: nothing from here on can fail.
        if let Some(a) = new_announcer {
            self.announcer = Some(a);
        } else if new.announce.is_none() {
            if let Some(old) = self.announcer.take() {
                info!("announce: the section is gone: its routes are withdrawn");
                old.stop().await;
            }
        }
        let addresses_moved = addresses(&self.config, &changed) != addresses(&new, &changed);
        let health_before = verdicts(&new, &changed, &self.health, &self.overrides);
        if let Some(n) = notifier {
            // The old one runs what it has queued, as a stop gives it.
            let old = std::mem::replace(&mut self.notifier, n);
            // Its hooks run to their own timeout, as if nothing had changed.
            tokio::spawn(
                old.shutdown(crate::script::DEFAULT_HOOK_TIMEOUT + Duration::from_secs(1)),
            );
            info!(
                "notify hooks or options changed: hooks and the event stream follow the new file"
            );
        }
        if let (Some(gid), Some(c)) = (group, &self.control) {
            c.group.send_replace(gid);
            info!(group = ?gid, "control socket group changed");
        }
        if new_dir != old_dir {
            if let Err(e) = super::overrides::save(&old_dir, &Default::default()) {
                error!("removing the runtime overrides of the old state_dir: {e:#}");
            }
            info!(state_dir = %new_dir.display(), "runtime overrides moved");
        }
        if let Some(z) = self.zeroed.as_mut() {
            // A service or real server the reload removes counts from 0 if it comes back.
            z.retain_configured(&new);
        }
        // Unchanged scripts keep their rise/fall state, unchanged checkers their timers.
        self.track_tasks.commit(tracks);
        self.checkers.commit(checks, scope, &mut self.health);
        tracking.seed(&self.track_tasks.snapshot());
        if let Some(dp) = self.dp.as_ref() {
            tracking.seed(&dp.quorum.status(&new));
        }
        // Each unit with its tracking as it is now, after the instance's new settings.
        super::units::set_tracking(&mut units, &mut tracking);
        self.tracking = tracking;
        // An address no instance has any more is served by none.
        let vips: HashSet<IpAddr> = new
            .vrrp_instances
            .iter()
            .flat_map(|i| i.virtual_ipaddress.iter().map(|v| v.addr))
            .collect();
        self.master_vips.retain(|v| vips.contains(v));
        if let Some(t) = vrrp_thread {
            self.vrrp = Some(t);
        }
        if let Some(v) = self.vrrp.as_mut() {
            v.reconfigure(units);
        }
        if let Some(m) = new_metrics {
            if let Some(old) = &self.metrics {
                info!(addr = %old.addr, "the metrics stop listening here");
            }
            self.metrics = m;
        } else if let Some(m) = &self.metrics {
            m.set_token(metrics_token);
        }
        self.config = new;
        self.drop_stale_overrides();
        if let Some(dp) = self.dp.as_mut() {
            // A changed service's pool decides when its quorum is first told (all its MACs
            // known), even when the quorum itself did not move.
            dp.quorum.moved |= !changed.is_empty();
            // Rebuilt from every service only when some address came or went.
            if dp.macs.ifindex() != dp.xdp.ifindex {
                dp.macs.move_to(&self.config, dp.xdp.ifindex);
            } else if addresses_moved {
                dp.macs.retarget(&self.config);
            }
            // The interface's addresses: a TUN real server's default source.
            let sources_moved = dp.refresh_tunnel_sources(&self.config).await;
            // The changed services again, with their checkers' first view, if that differs
            // from what they were planned with (no verdict yet plans a new real server as
            // its checker starts it, so it rarely does).
            let again = sources_moved
                || match scope {
                    health::Scope::All => {
                        dp.all_stale();
                        true
                    }
                    health::Scope::Services(s) => {
                        dp.stale(s.iter().copied());
                        health_before != verdicts(&self.config, s, &self.health, &self.overrides)
                    }
                };
            if again {
                if let Err(e) = dp
                    .apply(
                        &self.config,
                        &self.master_vips,
                        &self.health,
                        &self.overrides,
                    )
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

impl State {
    /// `lb-daemon diff --config NEW`: what a reload of `new` would do, line by line, and
    /// nothing done: whether it would be refused (and why), what changes, and how many map
    /// elements the dataplane would write. A file that does not load is the error.
    pub(super) fn on_diff(&self, new: &std::path::Path) -> Result<String, String> {
        // A regular file of a configuration's size, never a device or a FIFO to hang on.
        let meta = std::fs::metadata(new).map_err(|e| format!("{}: {e}", new.display()))?;
        if !meta.is_file() || meta.len() > MAX_DIFF_FILE {
            return Err(format!(
                "{}: not a regular file of at most {MAX_DIFF_FILE} bytes",
                new.display()
            ));
        }
        let config = Config::load(new).map_err(|e| e.to_string())?;
        check_scripts(&config).map_err(|e| e.to_string())?;
        // What else a reload prepares and may refuse.
        config.metrics_token().map_err(|e| e.to_string())?;
        super::control_group(&config).map_err(|e| format!("{e:#}"))?;
        let mut lines = Vec::new();
        config.sync_key().map_err(|e| e.to_string())?;
        let fits = self.dp.as_ref().map_or(Ok(()), |dp| {
            dp.xdp
                .sync_fits(config.sync.as_ref())
                .map_err(|(key, why)| sync_refusal(key, why))
                .and_then(|()| {
                    dp.xdp
                        .nat_fits(&config)
                        .map_err(|why| ("virtual_server", "lb_kind", why))
                })
        });
        if let Err(r) = restart_only(&self.config, &config).and(fits) {
            lines.push(format!("a reload would be refused: {}", refusal(new, r)));
        }
        lines.extend(super::diff::describe(&self.config, &config));
        let mut overrides = self.overrides.clone();
        for (service, real) in overrides.retain_configured(&config) {
            lines.push(format!(
                "runtime override of {service} {real}: dropped (the real server goes)"
            ));
        }
        if let Some(dp) = &self.dp {
            let specs = dp.specs_for(&config, &self.master_vips, &self.health, &self.overrides);
            lines.push(match dp.xdp.dp.dry_run(&specs) {
                Ok(n) => format!("map writes: {n}"),
                Err(crate::dataplane::plan::PlanError::NoRoom { needs, .. }) => format!(
                    "map writes: the maps would grow (to hold {needs:?}) and take the whole plan"
                ),
                Err(e) => format!("the dataplane would refuse it: {e}"),
            });
        }
        if lines.iter().all(|l| l == "map writes: 0") {
            lines.insert(0, "no change".into());
        }
        let mut text = lines.join("\n");
        text.push('\n');
        Ok(text)
    }
}

/// The largest file `lb-daemon diff` reads (a configuration of 100,000 real servers is
/// some tens of MB).
const MAX_DIFF_FILE: u64 = 256 << 20;

/// What a reload cannot change in place (a restart applies it): the table and key of the
/// first such change (an empty key: the table as a whole), and why.
fn restart_only(
    running: &Config,
    new: &Config,
) -> Result<(), (&'static str, &'static str, String)> {
    // The reserve of room (the maps grow to it) and `max_flows` (the tables are moved into
    // new ones) change in place; what the attachment is made of does not.
    match (&running.dataplane, &new.dataplane) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err((
                "dataplane",
                "",
                "the [dataplane] section came or went: restart to start or stop the XDP side"
                    .into(),
            ))
        }
        (Some(a), Some(b)) => {
            // Every key, so that a new one is not accepted and ignored: `interface`,
            // `max_flows` and `reserve` apply in place (see `on_reload`), the others are
            // checked below.
            let DataplaneConfig {
                interface: _,
                inside_interfaces: _,
                xdp_mode: _,
                max_flows: _,
                keep_xdp_on_exit: _,
                pin_root: _,
                reserve: _,
            } = b;
            let why = |key: &str, what: &str| format!("dataplane.{key} changed: {what}");
            if a.xdp_mode != b.xdp_mode {
                return Err((
                    "dataplane",
                    "xdp_mode",
                    why(
                        "xdp_mode",
                        "another mode means detaching first: restart to apply it",
                    ),
                ));
            }
            if a.inside_interfaces != b.inside_interfaces {
                return Err((
                    "dataplane",
                    "inside_interfaces",
                    why(
                        "inside_interfaces",
                        "the program is attached there at start: restart to apply it",
                    ),
                ));
            }
            if a.keep_xdp_on_exit != b.keep_xdp_on_exit {
                return Err((
                    "dataplane",
                    "keep_xdp_on_exit",
                    why(
                        "keep_xdp_on_exit",
                        "it chose how the program was attached: restart to apply it",
                    ),
                ));
            }
            if a.pin_root != b.pin_root {
                return Err((
                    "dataplane",
                    "pin_root",
                    why(
                        "pin_root",
                        "the maps and the link are pinned there: restart to move them",
                    ),
                ));
            }
        }
    }
    // The device is held open and the routes are in the table: the VIPs change in place.
    if let (Some(a), Some(b)) = (&running.announce, &new.announce) {
        for (key, changed) in [
            ("table", a.table != b.table),
            ("device", a.device != b.device),
        ] {
            if changed {
                return Err((
                    "announce",
                    key,
                    format!(
                        "announce.{key} changed: the routes and their device are the running \
                         one's: restart to apply it"
                    ),
                ));
            }
        }
    }
    // This very reload's answer goes back over the socket; its group changes in place.
    if new.global_defs.control_socket_path() != running.global_defs.control_socket_path() {
        return Err((
            "global_defs",
            "control_socket",
            "global_defs.control_socket changed: the socket this reload answers on stays \
             until a restart"
                .into(),
        ));
    }
    Ok(())
}

/// [`Xdp::sync_fits`]'s answer as a refusal that names the key.
///
/// [`Xdp::sync_fits`]: super::xdp::Xdp::sync_fits
fn sync_refusal(key: &'static str, why: &str) -> (&'static str, &'static str, String) {
    let named = if key.is_empty() {
        format!("[sync]: {why}")
    } else {
        format!("sync.{key}: {why}")
    };
    ("sync", key, named)
}

/// Whether this node sends its flows under `config`'s `[sync]`: its instance holds its
/// VIPs here, or it has none (every node sends).
fn sync_master(config: &Config, master_vips: &HashSet<IpAddr>) -> bool {
    let Some(s) = &config.sync else { return false };
    let Some(name) = &s.vrrp_instance else {
        return true;
    };
    config
        .vrrp_instances
        .iter()
        .find(|i| i.name == *name)
        .is_some_and(|i| {
            i.virtual_ipaddress
                .iter()
                .any(|v| master_vips.contains(&v.addr))
        })
}

/// A refusal of [`restart_only`] as `file:line: why` (the line of the key in the new file,
/// where it can be found).
fn refusal(file: &std::path::Path, (table, key, why): (&str, &str, String)) -> String {
    let line = std::fs::read_to_string(file)
        .ok()
        .and_then(|text| crate::config::key_line(&text, table, key));
    match line {
        Some(l) => format!("{}:{l}: {why}", file.display()),
        None => format!("{}: {why}", file.display()),
    }
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
    overrides: &Overrides,
) -> Vec<Option<u32>> {
    config
        .virtual_servers
        .iter()
        .filter(|vs| services.contains(&vs.key()))
        .flat_map(|vs| {
            vs.real_servers
                .iter()
                .map(|rs| rs.healthy_weight(super::apply::verdict_of(health, overrides, vs, rs)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, time::Duration};

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        config::split,
        testutil::{eventually, privileged, TempDir},
        vrrp::{
            notify::Notifier,
            track::{Status, TrackKey, TrackTasks},
        },
    };

    /// A tracked script (each run takes a second, so a restarted one reads Unknown for that
    /// long) and a service whose real server has a MISC_CHECK.
    fn text(script: &str, interval: u32, misc_user: &str) -> String {
        format!(
            r#"
[global_defs]
enable_script_security = false

[dataplane]
interface = "lo"

[[vrrp_script]]
name = "chk"
script = "{script}"
interval = {interval}

[[vrrp_instance]]
name = "VI_1"
interface = "lo"
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["192.0.2.100"]
track_script = ["chk"]

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80
    [virtual_server.real_server.MISC_CHECK]
    misc_path = "{script}"
    user = "{misc_user}"
"#
        )
    }

    /// The state the main loop keeps, without the XDP side or a VRRP thread.
    fn state(path: std::path::PathBuf) -> State {
        let mut parsed = split::Cache::default();
        let config = Config::load_cached(&path, &mut parsed).unwrap();
        let (health_tx, health_rx) = mpsc::channel(256);
        std::mem::forget(health_rx);
        let checkers = health::Checkers::start(&config, health_tx).unwrap();
        let (track_tx, track_rx) = mpsc::channel(64);
        std::mem::forget(track_rx);
        let track_tasks = TrackTasks::start(&config, track_tx).unwrap();
        let mut tracking = Tracking::new(&config).unwrap();
        tracking.seed(&track_tasks.snapshot());
        State {
            path,
            parsed,
            health: checkers.snapshot(),
            checkers,
            track_tasks,
            tracking,
            notifier: Notifier::from_config(&config).unwrap(),
            config,
            dp: None,
            master_vips: HashSet::new(),
            announcer: None,
            vrrp: None,
            vrrp_events: mpsc::unbounded_channel().0,
            metrics: None,
            overrides: Default::default(),
            zeroed: None,
            control: None,
            walks: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// A reload that one part refuses changes nothing in any part: the tracked script
    /// (which the new file changes, and which the tracking part had already accepted) keeps
    /// its task and its rise/fall state, the checks keep theirs, the configuration stays.
    /// Before, tracking was reloaded first and "rolled back" by a second reload, which
    /// restarted the script from its init state.
    #[tokio::test]
    async fn a_refused_reload_changes_nothing() {
        if !privileged("a_refused_reload_changes_nothing") {
            return;
        }
        let dir = TempDir::new("reload-tx");
        let script = dir.script("ok.sh", "sleep 1; exit 0");
        let script = script.display().to_string();
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, text(&script, 5, "root")).unwrap();
        let mut s = state(path.clone());
        let chk = TrackKey::Script("chk".into());
        let up = |s: &State| s.track_tasks.snapshot().get(&chk) == Some(&Status::Up);
        assert!(
            eventually(Duration::from_secs(15), || up(&s)).await,
            "the tracked script never came up"
        );
        let config = s.config.clone();
        let health = s.health.clone();

        // The script's interval changes (tracking accepts that) and the check names a user
        // that does not exist (the health checks refuse it).
        std::fs::write(&path, text(&script, 6, "lb-no-such-user-xyzzy")).unwrap();
        let e = s.on_reload().await.unwrap_err();
        assert!(e.contains("lb-no-such-user-xyzzy"), "{e}");
        assert!(
            up(&s),
            "the tracked script was restarted by a refused reload"
        );
        assert_eq!(s.config, config);
        assert_eq!(s.health, health);
        assert_eq!(s.checkers.snapshot(), health);

        // The same change with a user that exists goes through, and restarts the script
        // (its definition changed): from its init state.
        std::fs::write(&path, text(&script, 6, "root")).unwrap();
        s.on_reload().await.unwrap();
        // This test runs in the host's namespace: no VRRP unit may start here.
        assert!(s.vrrp.is_none());
        assert!(!up(&s), "a changed script keeps running its old definition");
        assert!(eventually(Duration::from_secs(15), || up(&s)).await);
    }

    /// The metrics' token is read again at every reload; a file that cannot be read refuses
    /// the reload (file, line and key named) and the token in use stays; another address
    /// moves the listener, and one in use refuses the reload.
    #[tokio::test]
    async fn a_reload_reads_the_metrics_token_again_and_a_bad_file_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("reload-token");
        let token = dir.path().join("metrics.token");
        let write_token = |t: &[u8], mode: u32| {
            std::fs::write(&token, t).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let text = |addr: &str, with_token: bool| {
            let key = format!("metrics_bearer_token_file = \"{}\"\n", token.display());
            format!(
                "[global_defs]\nmetrics_address = \"{addr}\"\n{}",
                if with_token { key.as_str() } else { "" }
            )
        };
        let path = dir.path().join("lb.toml");
        write_token(b"first\n", 0o600);
        std::fs::write(&path, text("127.0.0.1:0", true)).unwrap();
        let mut s = state(path.clone());
        let first = s.config.metrics_token().unwrap();
        s.metrics = Some(
            super::super::state::Metrics::start("127.0.0.1:0".parse().unwrap(), first)
                .await
                .unwrap(),
        );
        let seen = s.metrics.as_ref().unwrap().token.subscribe();
        let accepts = |t: &[u8]| seen.borrow().as_ref().map(|token| token.accepts(t));
        assert_eq!(accepts(b"first"), Some(true));

        write_token(b"second\n", 0o600);
        s.on_reload().await.unwrap();
        assert_eq!(
            (accepts(b"second"), accepts(b"first")),
            (Some(true), Some(false))
        );

        // Files that cannot be read: refused, with the file, the line and the key; the
        // token and the configuration stay.
        let config = s.config.clone();
        let at = format!(
            "{}:3: `global_defs.metrics_bearer_token_file`: {}",
            path.display(),
            token.display()
        );
        for (content, mode, why) in [
            (&b""[..], 0o600, " is empty"),
            (
                b"third\n",
                0o644,
                " can be read or written by users other than its owner",
            ),
        ] {
            write_token(content, mode);
            let e = s.on_reload().await.unwrap_err();
            assert!(e.starts_with(&format!("{at}{why}")), "{e}");
            assert_eq!(accepts(b"second"), Some(true), "{e}");
            assert_eq!(s.config, config);
        }
        std::fs::remove_file(&token).unwrap();
        let e = s.on_reload().await.unwrap_err();
        assert!(e.starts_with(&format!("{at}: No such file")), "{e}");
        assert_eq!(accepts(b"second"), Some(true), "{e}");

        // Without the key, no token is asked.
        std::fs::write(&path, text("127.0.0.1:0", false)).unwrap();
        s.on_reload().await.unwrap();
        assert_eq!(accepts(b"second"), None);

        // Another address: the listener moves there, the old one stops.
        let old = s.metrics.as_ref().unwrap().addr;
        std::fs::write(&path, text("127.0.0.2:0", false)).unwrap();
        s.on_reload().await.unwrap();
        let new = s.metrics.as_ref().unwrap().addr;
        assert_eq!(new.ip().to_string(), "127.0.0.2");
        tokio::net::TcpStream::connect(new).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect(old)
                .is_err())
            .await,
            "the old listener still accepts"
        );
        // An address in use refuses the reload at its line; the listener stays.
        let busy = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let taken = busy.local_addr().unwrap();
        std::fs::write(&path, text(&taken.to_string(), false)).unwrap();
        let e = s.on_reload().await.unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}:2: global_defs.metrics_address:",
                path.display()
            )),
            "{e}"
        );
        assert_eq!(s.metrics.as_ref().unwrap().addr, new);
        // Without the key, no listener.
        std::fs::write(&path, "[global_defs]\n").unwrap();
        s.on_reload().await.unwrap();
        assert!(s.metrics.is_none());
        assert!(
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect(new)
                .is_err())
            .await
        );
    }

    /// `global_defs` keys apply in place or are refused with the file, the line and why:
    /// a new `notify_fifo` gets the next events (and the counts go on), an unknown
    /// control group refuses the reload and changes nothing, a new control socket path is
    /// refused at its line.
    #[tokio::test]
    async fn global_defs_apply_in_place_or_are_refused_at_their_line() {
        let dir = TempDir::new("reload-global");
        let path = dir.path().join("lb.toml");
        let fifo = dir.path().join("events");
        let text = |extra: &str| format!("[global_defs]\nrouter_id = \"a\"\n{extra}");
        std::fs::write(&path, text("")).unwrap();
        let mut s = state(path.clone());
        s.on_vrrp_state(crate::vrrp::notify::Event::instance(
            "VI_1",
            crate::vrrp::notify::NotifyState::Master,
            100,
        ));
        let before = s.notifier.counters().events;
        assert_eq!(before, 1);

        // The event stream, to a Unix datagram socket standing for a reader.
        let reader = std::os::unix::net::UnixDatagram::bind(&fifo).unwrap();
        reader.set_nonblocking(true).unwrap();
        std::fs::write(
            &path,
            text(&format!("notify_fifo = \"{}\"\n", fifo.display())),
        )
        .unwrap();
        s.on_reload().await.unwrap();
        s.on_vrrp_state(crate::vrrp::notify::Event::instance(
            "VI_1",
            crate::vrrp::notify::NotifyState::Master,
            100,
        ));
        // The notifier's worker runs on this test's runtime: wait without blocking it.
        let mut buf = [0u8; 4096];
        let mut got = String::new();
        assert!(
            eventually(Duration::from_secs(5), || {
                if let Ok(n) = reader.recv(&mut buf) {
                    got = String::from_utf8_lossy(&buf[..n]).into_owned();
                }
                !got.is_empty()
            })
            .await,
            "the new notify_fifo never got the event"
        );
        assert!(got.contains("VI_1"), "{got}");
        assert_eq!(s.notifier.counters().events, before + 1, "the counts go on");

        let config = s.config.clone();
        std::fs::write(
            &path,
            text("control_socket_group = \"lb-no-such-group-xyzzy\"\n"),
        )
        .unwrap();
        let e = s.on_reload().await.unwrap_err();
        assert!(
            e.contains("`global_defs.control_socket_group`")
                && e.contains("lb-no-such-group-xyzzy"),
            "{e}"
        );
        assert_eq!(s.config, config);

        std::fs::write(&path, text("\ncontrol_socket = \"/run/other.sock\"\n")).unwrap();
        let e = s.on_reload().await.unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}:4: global_defs.control_socket changed",
                path.display()
            )),
            "{e}"
        );
        assert_eq!(s.config, config);
    }
}
