//! The virtual MAC interfaces' egress filter for IPv6 (the `vmac` eBPF object, see its
//! module doc): each IPv6 virtual MAC interface gets it before it comes up, so that its MLD
//! messages leave through the parent from the parent's MAC, never from the virtual MAC of
//! a backup. Loaded once, when the first such interface is made. Attached by TCX where the
//! kernel has it (6.6 and later), so it goes with the process: a `keep` stop or a crash
//! leaves the interface without it until the next run, which attaches it again when it
//! takes the interface over. An older kernel gets a classic TC filter (on a clsact qdisc),
//! which stays after the process. A kernel that takes neither leaves the interface without
//! it: a warning, and `status` counts the interface as unfiltered; the instance runs all the
//! same, as keepalived's does without nftables.
use std::{collections::BTreeMap, sync::Mutex};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap as BpfHashMap, PerCpuArray},
    programs::{tc, tc::SchedClassifierLinkId, SchedClassifier, TcAttachType},
    Ebpf,
};
use lb_common::{names, vmac_stat, VmacParent};
use tracing::warn;

/// The filter object, built by `cargo xtask build-ebpf` beside the XDP one.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_VMAC_OBJECT"));
pub const PROGRAM: &str = "vmac_mld";

struct Filter {
    ebpf: Ebpf,
    /// Interface name -> (ifindex, link).
    links: BTreeMap<String, (u32, SchedClassifierLinkId)>,
}

struct State {
    filter: Option<Filter>,
    /// The IPv6 virtual MAC interfaces the filter could not be put on.
    unfiltered: std::collections::BTreeSet<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    filter: None,
    unfiltered: std::collections::BTreeSet::new(),
});

fn load() -> Result<Filter> {
    let mut f = Filter {
        ebpf: Ebpf::load(OBJECT).context("loading the virtual MAC filter")?,
        links: BTreeMap::new(),
    };
    program(&mut f)?
        .load()
        .context("loading the virtual MAC filter")?;
    Ok(f)
}

fn parents(f: &mut Filter) -> Result<BpfHashMap<&mut aya::maps::MapData, u32, VmacParent>> {
    Ok(BpfHashMap::try_from(
        f.ebpf
            .map_mut(names::VMAC_PARENTS)
            .ok_or_else(|| anyhow!("the virtual MAC filter has no {}", names::VMAC_PARENTS))?,
    )?)
}

fn program(f: &mut Filter) -> Result<&mut SchedClassifier> {
    Ok(f.ebpf
        .program_mut(PROGRAM)
        .context("the virtual MAC filter object has no program")?
        .try_into()?)
}

/// Puts the filter on virtual MAC interface `name` (`ifindex`), its MLD messages moved to
/// `parent` (ifindex, MAC). Again on an interface that has it from this run: only its
/// parent is written again. A failure is a warning (see the module doc), not an error.
pub fn attach(name: &str, ifindex: u32, parent: (u32, [u8; 6])) {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let r = (|| -> Result<()> {
        let f = match &mut st.filter {
            Some(f) => f,
            none => none.insert(load()?),
        };
        attach_in(f, name, ifindex, parent)
    })();
    match r {
        Ok(()) => {
            st.unfiltered.remove(name);
        }
        Err(e) => {
            warn!(
                "{name}: no MLD filter ({e:#}): as a backup, its MLD reports leave from the \
                 virtual MAC, and switches may send the VIPs' traffic here"
            );
            st.unfiltered.insert(name.to_string());
        }
    }
}

fn attach_in(f: &mut Filter, name: &str, ifindex: u32, parent: (u32, [u8; 6])) -> Result<()> {
    let value = VmacParent {
        ifindex: parent.0,
        mac: parent.1,
        _pad: [0; 2],
    };
    parents(f)?
        .insert(ifindex, value, 0)
        .with_context(|| format!("{name}: writing its parent"))?;
    if f.links.get(name).is_some_and(|(i, _)| *i == ifindex) {
        return Ok(());
    }
    // An interface of that name from before (deleted since): its link went with it.
    if let Some((old_ifindex, old)) = f.links.remove(name) {
        let _ = program(f)?.detach(old);
        let _ = parents(f)?.remove(&old_ifindex);
    }
    let prog = program(f)?;
    let link = match prog.attach(name, TcAttachType::Egress) {
        Ok(l) => l,
        // A kernel without TCX: the classic filter wants a clsact qdisc (one there
        // already is as good).
        Err(first) => {
            let _ = tc::qdisc_add_clsact(name);
            prog.attach(name, TcAttachType::Egress)
                .map_err(|e| anyhow!("{first}; then on a clsact qdisc: {e}"))?
        }
    };
    f.links.insert(name.to_string(), (ifindex, link));
    Ok(())
}

/// Takes the filter off `name` once it is deleted (its link first, then its parent).
pub fn detach(name: &str) {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    st.unfiltered.remove(name);
    let Some(f) = st.filter.as_mut() else {
        return;
    };
    let Some((ifindex, link)) = f.links.remove(name) else {
        return;
    };
    if let Ok(prog) = program(f) {
        let _ = prog.detach(link);
    }
    if let Ok(mut p) = parents(f) {
        let _ = p.remove(&ifindex);
    }
}

/// The filter's counters, summed over the CPUs: MLD messages moved to a parent, and those
/// left as they were; and how many IPv6 virtual MAC interfaces have no filter. `None`
/// before the first IPv6 virtual MAC interface.
pub fn stats() -> Option<(u64, u64, u64)> {
    let st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let unfiltered = st.unfiltered.len() as u64;
    let Some(f) = st.filter.as_ref() else {
        return (unfiltered > 0).then_some((0, 0, unfiltered));
    };
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(f.ebpf.map(names::VMAC_STATS)?).ok()?;
    let sum = |slot: u32| -> u64 { stats.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    Some((sum(vmac_stat::MOVED), sum(vmac_stat::UNMOVED), unfiltered))
}
