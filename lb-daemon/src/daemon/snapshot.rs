//! What `lb-daemon status` and the metrics show: the services the maps hold (as the planner
//! last wrote them), each found in the configuration by its key and each backend by its
//! address, never by position, so a sorry server swapped in or a reload between two reads
//! cannot pair one service's counters with another's name.
use std::collections::HashMap;

use super::{overrides::Overrides, Dp};
use crate::{
    config::Config,
    health::BackendHealth,
    model::{Mac, ServiceKey},
    status::{self, BackendStatus, ServiceStatus, Snapshot, VrrpStatus},
    vrrp::{notify::Notifier, runtime},
};

/// The snapshot from the maps, the VRRP thread's stats and the configuration. `health` is
/// each real server's health in the configuration's order ([`crate::health::Checkers::in_order`]).
/// Without `per_backend` each service's real servers are left out, and their counters and
/// health unread (the metrics of `metrics_per_backend = false`).
#[allow(clippy::too_many_arguments)]
pub(super) fn snapshot(
    config: &Config,
    dp: Option<&Dp>,
    vrrp: Option<&runtime::VrrpThread>,
    notifier: &Notifier,
    health: &[Option<BackendHealth>],
    flows: &HashMap<u32, u64>,
    per_backend: bool,
    overrides: &Overrides,
) -> Snapshot {
    let mut snap = Snapshot::new(config.global_defs.router_id.clone());
    if let Some(dp) = dp {
        services(&mut snap, config, dp, health, flows, per_backend, overrides);
    }
    if let Some(v) = vrrp {
        let stats = v.stats.lock().map(|m| m.clone()).unwrap_or_default();
        for inst in &config.vrrp_instances {
            let st = stats.get(&inst.name).cloned().unwrap_or_default();
            snap.vrrp.push(VrrpStatus::from_stats(
                &inst.name,
                &inst.interface,
                inst.vrid,
                inst.version.number(),
                &st,
            ));
        }
    }
    snap.notify = Some(notifier.counters().into());
    snap.vmac_mld = crate::vrrp::vmac_mld::stats().map(|(moved, unmoved, unfiltered)| {
        crate::status::VmacMldStatus {
            moved,
            unmoved,
            unfiltered,
        }
    });
    snap
}

fn services(
    snap: &mut Snapshot,
    config: &Config,
    dp: &Dp,
    health: &[Option<BackendHealth>],
    flows: &HashMap<u32, u64>,
    per_backend: bool,
    overrides: &Overrides,
) {
    let planner = &dp.xdp.dp;
    let maps = planner.writer();
    // All the counters in a few batched reads: a lookup per id cost 0.14 s of system
    // calls at 10,000 services of 10 real servers. Ids are dense from 0, so what the
    // plan uses is all there is to read.
    let used = planner.needs();
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
    // Each configured service, with where its real servers' health starts in `health`.
    let mut first_rs = 0;
    let configured: HashMap<ServiceKey, (usize, usize), foldhash::fast::RandomState> = config
        .virtual_servers
        .iter()
        .enumerate()
        .map(|(i, vs)| {
            let at = first_rs;
            first_rs += vs.real_servers.len();
            (vs.key(), (i, at))
        })
        .collect();
    snap.services.reserve(planner.specs().len());
    for spec in planner.specs() {
        // A service the configuration no longer has (a refused reload whose rollback
        // failed): its counters have no name to go under.
        let Some(&(i, at)) = configured.get(&spec.key()) else {
            continue;
        };
        let vs = &config.virtual_servers[i];
        let Some((sid, bids)) = planner.ids_of(spec) else {
            continue;
        };
        let health = health
            .get(at..at + vs.real_servers.len())
            .unwrap_or_default();
        let sc = counters(&service_counters, sid);
        let backends = if per_backend {
            spec.backends
                .iter()
                .zip(&bids)
                .enumerate()
                .filter_map(|(j, (b, bid))| {
                    // The service's real servers come first, in order ([`service_spec`]);
                    // after them, the sorry server while the quorum is lost, which stands in
                    // with weight 1 and no checks. One that is also a real server of the
                    // service already has that server's row (and its counters).
                    let rs = match vs.real_servers.get(j) {
                        Some(rs) if rs.addr == b.addr => Some(j),
                        Some(_) => vs.real_servers.iter().position(|rs| rs.addr == b.addr),
                        None if vs.real_servers.iter().any(|rs| rs.addr == b.addr) => return None,
                        None => None,
                    };
                    let h = rs.and_then(|k| health.get(k)).and_then(Option::as_ref);
                    let weight = rs.map_or(1, |k| vs.real_servers[k].weight);
                    let mut row = backend(
                        b,
                        weight,
                        h,
                        counters(&backend_counters, *bid),
                        flows_of(bid),
                    );
                    (row.active_conns, row.inactive_conns) = maps.load(*bid);
                    if let Some(o) = rs.and_then(|_| overrides.get(&spec.key(), b.addr)) {
                        row.override_weight = o.weight;
                        row.disabled = o.disabled;
                    }
                    Some(row)
                })
                .collect()
        } else {
            Vec::new()
        };
        snap.services.push(ServiceStatus {
            vip: spec.vip,
            port: spec.port,
            protocol: spec.proto.name().into(),
            group: if spec.aliases.is_empty() {
                Vec::new()
            } else {
                std::iter::once((spec.vip, spec.port))
                    .chain(spec.aliases.iter().copied())
                    .map(|(a, p)| std::net::SocketAddr::new(a, p).to_string())
                    .collect()
            },
            scheduler: spec.sched.name().into(),
            active: spec.active,
            persistence_timeout: spec.persistence_timeout,
            packets: sc.packets,
            bytes: sc.bytes,
            new_flows: sc.new_flows,
            active_flows: bids.iter().map(flows_of).sum(),
            active_conns: bids.iter().map(|b| maps.load(*b).0).sum(),
            inactive_conns: bids.iter().map(|b| maps.load(*b).1).sum(),
            backends,
            rate: None,
        });
    }
    if let Ok(r) = maps.reason_counters() {
        snap.reasons = status::reasons_from_counters(&r);
    }
    snap.sync = dp.xdp.sync.as_ref().map(|s| s.status());
    let (embryonic, cap, _) = maps.guard();
    snap.syn_guard = Some(status::SynGuardStatus {
        embryonic: embryonic.max(0) as u64,
        cap: u64::from(cap),
        expired: dp.xdp.embryonic_expired,
        evicted: dp.xdp.embryonic_evicted,
    });
}

/// One backend's row: `weight` is the configured one, `h` its checks' view.
fn backend(
    b: &crate::dataplane::BackendSpec,
    weight: u32,
    h: Option<&BackendHealth>,
    bc: lb_common::TrafficCounters,
    active_flows: u64,
) -> BackendStatus {
    let verdict = match h {
        Some(h) if !h.checked() => status::HEALTH_UNKNOWN,
        Some(h) if h.up => status::HEALTH_UP,
        Some(_) => status::HEALTH_DOWN,
        None => status::HEALTH_UNKNOWN,
    };
    // The planner leaves a backend without a MAC out of the ring, and a TUN one without a
    // source address.
    let usable = b.mac.is_some() && b.forward.tunnel().is_none_or(|t| t.source.is_some());
    BackendStatus {
        addr: b.addr,
        weight,
        effective_weight: if usable { b.weight } else { 0 },
        health: verdict.into(),
        mac: b
            .mac
            .filter(|_| b.forward.is_dr())
            .map(|m| Mac(m).to_string()),
        tunnel: b.forward.tunnel().map(|t| {
            let port = match t.port {
                0 => String::new(),
                p => format!(" port {p}"),
            };
            let from = t.source.map_or_else(|| "?".to_string(), |a| a.to_string());
            format!("{}{port} from {from}", t.kind.name())
        }),
        packets: bc.packets,
        bytes: bc.bytes,
        new_flows: bc.new_flows,
        active_flows,
        active_conns: 0,
        inactive_conns: 0,
        checks_run: h.map_or(0, |h| h.checks.iter().map(|c| c.probes).sum()),
        checks_failed: h.map_or(0, |h| h.failures),
        check_latency_ms: h
            .and_then(|h| h.last_latency)
            .map(|d| d.as_secs_f64() * 1e3),
        last_error: h.and_then(|h| h.last_error.clone()),
        override_weight: None,
        disabled: false,
        rate: None,
    }
}
