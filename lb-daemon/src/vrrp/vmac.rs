//! keepalived's `use_vmac`: the instance's virtual addresses live on a macvlan of the
//! interface whose hardware address is the VRRP virtual MAC (RFC 5798 §7.3,
//! 00:00:5e:00:01:VRID), so a failover moves no client's ARP entry: the new master answers
//! with the same MAC. Adverts leave from it too (the switches learn where the MAC is), or
//! from the interface itself with `vmac_xmit_base`.
//!
//! The interface is made as keepalived makes it: a private macvlan (two macvlans of one
//! parent do not talk to each other), up whatever the VRRP state (a backup hears adverts on
//! it), with `arp_ignore = 1` (it answers ARP only for its own addresses, the VIPs),
//! `accept_local = 1` and `rp_filter = 0` (it has no address of its own to pass a
//! reverse-path check with); the parent gets `arp_ignore = 1` and `arp_filter = 1`, so that
//! it never answers for a VIP with its own MAC. One found in place (a previous run's, or
//! keepalived's) is taken over when it is what would be made. A stop that releases the
//! addresses deletes the interfaces this run made or took over; a `keep` stop leaves them
//! for the next run. IPv4 only for now.
use std::{collections::BTreeMap, sync::Mutex};

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use crate::netlink::link;

/// The virtual MAC of IPv4 virtual router `vrid` (RFC 5798 §7.3).
pub fn mac_v4(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// The interfaces this run made or took over, by name: what a releasing stop deletes.
static OURS: Mutex<BTreeMap<String, ()>> = Mutex::new(BTreeMap::new());

/// `/proc/sys/net/ipv4/conf/IFACE/KEY` (an interface name may hold dots: no sysctl-style
/// key here).
fn conf_path(iface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/{key}")
}

fn read_conf(iface: &str, key: &str) -> Result<i64> {
    let p = conf_path(iface, key);
    std::fs::read_to_string(&p)
        .with_context(|| format!("read {p}"))?
        .trim()
        .parse()
        .with_context(|| format!("{p}: not a number"))
}

fn write_conf(iface: &str, key: &str, value: i64) -> Result<()> {
    let p = conf_path(iface, key);
    std::fs::write(&p, format!("{value}\n")).with_context(|| format!("write {value} to {p}"))
}

/// The virtual MAC interface `name` of virtual router `vrid` on `parent`, made (or taken
/// over) and set up; its index. Another interface of that name (not a private macvlan on
/// `parent` with the virtual MAC) is an error: nothing of someone else's is changed.
pub async fn ensure(name: &str, parent: (&str, u32), vrid: u8) -> Result<u32> {
    let mac = mac_v4(vrid);
    let (parent_name, parent_ifindex) = parent;
    let ifindex = match crate::os::ifindex(name) {
        Ok(i) => {
            let k = link::kind(i)
                .await
                .with_context(|| format!("reading interface {name}"))?
                .with_context(|| format!("interface {name} went away"))?;
            if k.kind != "macvlan"
                || !k.private
                || k.parent != Some(parent_ifindex)
                || k.address != mac
            {
                bail!(
                    "interface {name} exists and is not the VRRP virtual MAC interface this \
                     instance needs (a private macvlan on {parent_name} with {}): rename it, or \
                     give use_vmac another name",
                    crate::model::Mac(mac)
                );
            }
            info!("{name}: taking over the virtual MAC interface in place");
            i
        }
        Err(_) => {
            link::create_macvlan(name, parent_ifindex, mac)
                .await
                .with_context(|| format!("creating {name}, a macvlan on {parent_name}"))?;
            info!(
                "{name}: made, a private macvlan on {parent_name} with {}",
                crate::model::Mac(mac)
            );
            crate::os::ifindex(name).with_context(|| format!("{name} after creating it"))?
        }
    };
    OURS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), ());
    for (key, value) in [("arp_ignore", 1), ("accept_local", 1), ("rp_filter", 0)] {
        write_conf(name, key, value)?;
    }
    // No IPv6 on an IPv4 instance's virtual MAC interface (keepalived's): its link-local
    // address's neighbour discovery and MLD reports would leave a backup with the virtual
    // MAC as their source, and the switches would send the VIP's traffic to the backup.
    let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if std::path::Path::new(&v6).exists() {
        std::fs::write(&v6, "1\n").with_context(|| format!("write 1 to {v6}"))?;
    }
    link::set_up(ifindex)
        .await
        .with_context(|| format!("bringing {name} up"))?;
    for (key, value) in [("arp_ignore", 1), ("arp_filter", 1)] {
        if read_conf(parent_name, key)? < value {
            write_conf(parent_name, key, value)?;
            info!("{parent_name}: {key} = {value}, so that it never answers for a VIP of {name}");
        }
    }
    // The kernel checks a datagram's source against max(all, interface): with `all` strict,
    // the adverts arriving on the virtual MAC interface (which has no address) fail it.
    if read_conf("all", "rp_filter").unwrap_or(0) == 1 {
        warn!(
            "net.ipv4.conf.all.rp_filter is 1 (strict): adverts received on {name} fail the \
             reverse-path check; set it to 0 or 2 (loose)"
        );
    }
    Ok(ifindex)
}

/// Deletes every virtual MAC interface this run made or took over (a stop that releases
/// the addresses).
pub async fn release_all() {
    let names: Vec<String> = std::mem::take(&mut *OURS.lock().unwrap_or_else(|p| p.into_inner()))
        .into_keys()
        .collect();
    for name in names {
        let Ok(i) = crate::os::ifindex(&name) else {
            continue;
        };
        match link::delete(i).await {
            Ok(()) => info!("{name}: deleted"),
            Err(e) => warn!("{name}: deleting it: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_macs_and_sysctl_paths() {
        assert_eq!(mac_v4(51), [0, 0, 0x5e, 0, 1, 51]);
        assert_eq!(
            conf_path("vrrp.51", "arp_ignore"),
            "/proc/sys/net/ipv4/conf/vrrp.51/arp_ignore"
        );
    }
}
