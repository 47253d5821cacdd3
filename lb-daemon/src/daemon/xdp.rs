//! The XDP side of a running daemon: the loaded program and its attachment, the maps the
//! plan is written to (grown in place when a configuration needs more room), the connection
//! tables, and connection sync.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use super::reconcile::dataplane_limits;
use crate::{
    config::{Config, DataplaneConfig},
    dataplane::{
        flows::FlowTables,
        maps::BpfMaps,
        program::{self, LoadOptions},
        Dataplane,
    },
    model::Limits,
};

pub(super) struct Xdp {
    pub dp: Dataplane<BpfMaps>,
    /// The instance whose sized maps are in use (the first one, or the last grown).
    _ebpf: aya::Ebpf,
    /// The attached program; a grown instance's program replaces it.
    attachment: program::Attachment,
    /// The maps the running program uses, by name: what a grown instance shares.
    fds: program::MapFds,
    iface: String,
    iface_mac: [u8; 6],
    pub ifindex: u32,
    /// `[dataplane]`'s reserve: the least room the maps keep.
    pub reserve: Limits,
    /// The connection tables, read for the flows per backend (and shared with sync).
    flows: Arc<FlowTables>,
    /// Connection sync with the peer (`[sync]`).
    pub sync: Option<crate::sync::SyncHandle>,
    /// The last count of flows per backend id, and when it was taken: a walk of a big
    /// table takes a while, so the metrics' refresh reuses a recent one.
    flow_counts: Option<(Instant, HashMap<u32, u64>)>,
}

impl Xdp {
    /// Loads the program with maps sized for `config`, starts sync, and attaches it.
    pub(super) async fn start(config: &Config, d: &DataplaneConfig) -> Result<Self> {
        let (iface_mac, ifindex) = interface_info(&d.interface).await?;
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
        let attachment = program::attach_xdp(
            &mut ebpf,
            native,
            &d.interface,
            ifindex,
            d.xdp_mode,
            d.keep_xdp_on_exit,
        )
        .await?;
        info!(interface = %d.interface, mode = attachment.mode.name(), program = attachment.program, keep_on_exit = d.keep_xdp_on_exit, "XDP program attached");
        Ok(Xdp {
            dp: Dataplane::new(maps, opts.limits),
            _ebpf: ebpf,
            attachment,
            fds,
            iface: d.interface.clone(),
            iface_mac,
            ifindex,
            reserve: d.reserve,
            flows,
            sync,
            flow_counts: None,
        })
    }

    /// Writes the program's clock (seconds of CLOCK_MONOTONIC).
    pub(super) fn tick(&mut self) {
        if let Err(e) = self.dp.writer_mut().set_clock(monotonic_seconds()) {
            tracing::error!("updating the XDP program's clock: {e}");
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
    pub(super) async fn grow(&mut self, to: Limits) -> Result<()> {
        let was = self.dp.limits();
        let limits = to.max(was);
        let started = Instant::now();
        let bound = (self.attachment.program == crate::dataplane::devbound::PROGRAM_NATIVE)
            .then_some((self.iface.as_str(), self.ifindex));
        let mut grown = program::grow(
            limits,
            self.iface_mac,
            &self.fds,
            self.attachment.program,
            bound,
        )
        .context("loading a larger XDP program instance")?;
        let maps = self.dp.writer().regrown(&mut grown.ebpf, &grown.fds)?;
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
        info!(from = %was, to = %limits, ms = started.elapsed().as_millis() as u64, "XDP maps grown");
        Ok(())
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

/// Seconds of CLOCK_MONOTONIC, the program's time base.
fn monotonic_seconds() -> u32 {
    crate::os::monotonic().as_secs() as u32
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
