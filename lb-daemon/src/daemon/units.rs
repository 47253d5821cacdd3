//! The VRRP instances of a configuration, resolved against this host and grouped into the
//! units the VRRP thread runs (a lone instance, or a sync group).
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use anyhow::{Context, Result};

use crate::{
    config::Config,
    netlink::addr::{AddressSocket, VirtualAddress},
    vrrp::{
        runtime::{MemberSpec, UnitSpec},
        track::Tracking,
    },
};

/// Each member's tracking as it is now ([`Tracking::state_inputs`]), fed to a new unit
/// before it starts and to a reconfigured one after its new settings.
pub(super) fn set_tracking(units: &mut [UnitSpec], tracking: &mut Tracking) {
    for m in units.iter_mut().flat_map(|u| u.members.iter_mut()) {
        m.initial = tracking.state_inputs(&m.config.name);
    }
}

/// Resolves each VRRP instance against the host: interface index, source address, own
/// addresses, virtual addresses; and groups instances into units (sync groups). Their
/// tracking is [`set_tracking`]'s. An instance whose configuration is that of a running
/// member in `running` keeps that member's resolution (a reload that does not touch an
/// instance does not depend on its interface). Each instance's settings are checked as
/// the VRRP state machine will take them.
pub(super) async fn vrrp_units(
    config: &Config,
    may_resume: bool,
    running: &HashMap<String, MemberSpec>,
) -> Result<Vec<UnitSpec>> {
    let mut addrs = AddressSocket::open()?;
    let mut members: HashMap<String, MemberSpec> = HashMap::new();
    for inst in &config.vrrp_instances {
        // (A virtual MAC interface that went away, deleted by hand, is made again.)
        let vmac_in_place = |m: &MemberSpec| {
            inst.use_vmac
                .as_ref()
                .is_none_or(|n| crate::os::ifindex(n).ok() == Some(m.ifindex))
        };
        if let Some(m) = running
            .get(&inst.name)
            .filter(|m| m.config == *inst && vmac_in_place(m))
        {
            let mut m = m.clone();
            m.initial.clear();
            members.insert(inst.name.clone(), m);
            continue;
        }
        let ifindex = crate::os::ifindex(&inst.interface)?;
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
        // keepalived's use_vmac: the VIPs (and gratuitous ARPs, and adverts unless
        // vmac_xmit_base) on the virtual MAC interface; the source address stays the
        // interface's.
        let (vip_ifindex, advert) = match &inst.use_vmac {
            None => (ifindex, (inst.interface.clone(), ifindex)),
            Some(name) => {
                let link_local = match primary {
                    IpAddr::V6(a) if !inst.vmac_xmit_base => Some(a),
                    _ => None,
                };
                let v = crate::vrrp::vmac::ensure(crate::vrrp::vmac::Wanted {
                    name,
                    parent: (&inst.interface, ifindex),
                    vrid: inst.vrid,
                    v6: v6.then_some(link_local),
                })
                .await
                .with_context(|| format!("vrrp_instance {}: use_vmac", inst.name))?;
                let advert = if inst.vmac_xmit_base {
                    (inst.interface.clone(), ifindex)
                } else {
                    (name.clone(), v)
                };
                (v, advert)
            }
        };
        let mut vips = Vec::new();
        for v in &inst.virtual_ipaddress {
            let ifindex = match &v.dev {
                Some(dev) => crate::os::ifindex(dev)?,
                None => vip_ifindex,
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
                ifindex: vip_ifindex,
                advert,
                primary,
                own: on_link,
                vips,
                initial: Vec::new(),
                dataplane: config.dataplane.is_some(),
                may_resume,
            },
        );
    }
    for m in members.values() {
        crate::vrrp::runtime::check(m)
            .with_context(|| format!("vrrp_instance {}", m.config.name))?;
    }
    let mut units = Vec::new();
    for g in &config.sync_groups {
        let ms: Vec<MemberSpec> = g.members.iter().filter_map(|n| members.remove(n)).collect();
        units.push(UnitSpec {
            members: ms,
            group: Some(g.name.clone()),
            startup_delay: std::time::Duration::ZERO,
        });
    }
    // Instances in no group, in configuration order.
    for inst in &config.vrrp_instances {
        if let Some(m) = members.remove(&inst.name) {
            units.push(UnitSpec {
                members: vec![m],
                group: None,
                startup_delay: std::time::Duration::ZERO,
            });
        }
    }
    Ok(units)
}
