//! The virtual MAC interfaces' egress filter for IPv6 (the `vmac` eBPF object, see its
//! module doc): each IPv6 virtual MAC interface gets it before it comes up, so that its MLD
//! messages leave through the parent from the parent's MAC, never from the virtual MAC of
//! a backup. Loaded once, when the first such interface is made; attached by TCX, so it
//! goes with the process (a `keep` stop or a crash leaves the interface without it until
//! the next run, which attaches it again when it takes the interface over).
use std::{collections::BTreeMap, sync::Mutex};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap as BpfHashMap, PerCpuArray},
    programs::{tc::SchedClassifierLinkId, SchedClassifier, TcAttachType},
    Ebpf,
};
use lb_common::{names, vmac_stat, VmacParent};

/// The filter object, built by `cargo xtask build-ebpf` beside the XDP one.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_VMAC_OBJECT"));
pub const PROGRAM: &str = "vmac_mld";

struct Filter {
    ebpf: Ebpf,
    /// Interface name -> (ifindex, link).
    links: BTreeMap<String, (u32, SchedClassifierLinkId)>,
}

static FILTER: Mutex<Option<Filter>> = Mutex::new(None);

fn load() -> Result<Filter> {
    let mut ebpf = Ebpf::load(OBJECT).context("loading the virtual MAC filter")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM)
        .context("the virtual MAC filter object has no program")?
        .try_into()?;
    prog.load().context("loading the virtual MAC filter")?;
    Ok(Filter {
        ebpf,
        links: BTreeMap::new(),
    })
}

/// Puts the filter on virtual MAC interface `name` (`ifindex`), its MLD messages moved to
/// `parent` (ifindex, MAC). Again on an interface that has it from this run: only its
/// parent is written again.
pub fn attach(name: &str, ifindex: u32, parent: (u32, [u8; 6])) -> Result<()> {
    let mut guard = FILTER.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(load()?);
    }
    let Some(f) = guard.as_mut() else {
        unreachable!("loaded above")
    };
    let value = VmacParent {
        ifindex: parent.0,
        mac: parent.1,
        _pad: [0; 2],
    };
    let mut parents: BpfHashMap<_, u32, VmacParent> = BpfHashMap::try_from(
        f.ebpf
            .map_mut(names::VMAC_PARENTS)
            .ok_or_else(|| anyhow!("the virtual MAC filter has no {}", names::VMAC_PARENTS))?,
    )?;
    parents
        .insert(ifindex, value, 0)
        .with_context(|| format!("{name}: writing its parent for the MLD filter"))?;
    if f.links.get(name).is_some_and(|(i, _)| *i == ifindex) {
        return Ok(());
    }
    let prog: &mut SchedClassifier = f
        .ebpf
        .program_mut(PROGRAM)
        .context("the virtual MAC filter object has no program")?
        .try_into()?;
    // An interface of that name from before (deleted since): its link went with it.
    if let Some((_, old)) = f.links.remove(name) {
        let _ = prog.detach(old);
    }
    let link = prog
        .attach(name, TcAttachType::Egress)
        .with_context(|| format!("{name}: attaching the MLD filter on its egress"))?;
    f.links.insert(name.to_string(), (ifindex, link));
    Ok(())
}

/// Takes the filter off `name` before it is deleted (a no-op for one without it).
pub fn detach(name: &str) {
    let mut guard = FILTER.lock().unwrap_or_else(|p| p.into_inner());
    let Some(f) = guard.as_mut() else {
        return;
    };
    let Some((ifindex, link)) = f.links.remove(name) else {
        return;
    };
    if let Some(m) = f.ebpf.map_mut(names::VMAC_PARENTS) {
        if let Ok(mut parents) = BpfHashMap::<_, u32, VmacParent>::try_from(m) {
            let _ = parents.remove(&ifindex);
        }
    }
    if let Some(prog) = f.ebpf.program_mut(PROGRAM) {
        if let Ok(prog) = <&mut SchedClassifier>::try_from(prog) {
            let _ = prog.detach(link);
        }
    }
}

/// The filter's counters, summed over the CPUs: MLD messages moved to a parent, and those
/// of an interface it had no parent for. `None` before it is loaded.
pub fn stats() -> Option<(u64, u64)> {
    let guard = FILTER.lock().unwrap_or_else(|p| p.into_inner());
    let f = guard.as_ref()?;
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(f.ebpf.map(names::VMAC_STATS)?).ok()?;
    let sum = |slot: u32| -> u64 { stats.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0) };
    Some((sum(vmac_stat::MOVED), sum(vmac_stat::UNMAPPED)))
}
