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
//! it never answers for a VIP with its own MAC, and `arp_announce = 2`, so that it never
//! asks with a VIP as its sender either. One found in place (a previous run's, or
//! keepalived's) is taken over when it is what would be made. A stop that releases the
//! addresses deletes the interfaces this run made or took over (and restores the settings
//! it changed), and so does a reload that no longer wants one, or that was refused after
//! making one: left up, it would take the peers' adverts (sent from the virtual MAC) away
//! from the instance's socket. A `keep` stop leaves them for the next run.
//!
//! For an IPv6 instance the MAC is 00:00:5e:00:02:VRID, the interface makes no link-local
//! address of its own (`addr_gen_mode = 1`: one made from the shared MAC would be every
//! node's), and it gets the interface's link-local address, the source of the adverts, as
//! keepalived gives it (unless the adverts leave from the interface, `vmac_xmit_base`).
//! Its MLD messages leave through the parent, from the parent's MAC (`vmac_mld`): IPv6 has
//! no sysctl that keeps a backup's reports off the virtual MAC, as IPv4 has for IGMP.
use std::{collections::BTreeMap, sync::Mutex};

use anyhow::{bail, Context, Result};
use tracing::{info, warn};

use crate::netlink::link;

/// The virtual MAC of IPv4 virtual router `vrid` (RFC 5798 §7.3).
pub fn mac_v4(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// The virtual MAC of IPv6 virtual router `vrid` (RFC 5798 §7.3).
pub fn mac_v6(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x02, vrid]
}

/// What the virtual MAC interface of one instance is made for.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub name: &'a str,
    /// The instance's interface: name, index.
    pub parent: (&'a str, u32),
    pub vrid: u8,
    /// An IPv6 instance: the link-local address the adverts come from, to be put on the
    /// virtual MAC interface (`None`: they leave from the interface, `vmac_xmit_base`).
    pub v6: Option<Option<std::net::Ipv6Addr>>,
}

/// The interfaces this run made or took over, by name: what a releasing stop deletes.
static OURS: Mutex<BTreeMap<String, ()>> = Mutex::new(BTreeMap::new());

/// Whether the kernel sends IGMP reports for 224.0.0.x groups: a backup joins the VRRP group
/// on its virtual MAC interface, and its reports, sent from the virtual MAC, would teach the
/// switches that the MAC is at the backup (keepalived's `disable_local_igmp`; its nftables
/// filter does the same). Off while an IPv4 virtual MAC interface exists.
const IGMP_LINK_LOCAL: &str = "/proc/sys/net/ipv4/igmp_link_local_mcast_reports";

/// The value [`IGMP_LINK_LOCAL`] had before this run turned it off.
static IGMP_REPORTS: Mutex<Option<i64>> = Mutex::new(None);

/// The parents' settings this run changed, with their values before: restored at the stop
/// (keepalived restores them when its last virtual MAC interface goes).
static PARENTS: Mutex<Vec<(String, &'static str, i64)>> = Mutex::new(Vec::new());

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
pub async fn ensure(w: Wanted<'_>) -> Result<u32> {
    let (name, vrid) = (w.name, w.vrid);
    let mac = if w.v6.is_some() {
        mac_v6(vrid)
    } else {
        mac_v4(vrid)
    };
    let (parent_name, parent_ifindex) = w.parent;
    let ifindex = match crate::os::ifindex(name) {
        Ok(i) => {
            let k = link::kind(i)
                .await
                .with_context(|| format!("reading interface {name}"))?
                .with_context(|| format!("interface {name} went away"))?;
            let ours = OURS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name);
            let fits = k.kind == "macvlan"
                && k.private
                && k.parent == Some(parent_ifindex)
                && k.address == mac;
            if !fits && ours {
                // One this run made for another interface or VRID (a reload changed them):
                // made again, as keepalived does.
                link::delete(i)
                    .await
                    .with_context(|| format!("deleting {name} to make it again"))?;
                super::vmac_mld::detach(name);
                // Not ours any more: should another interface take the name meanwhile, the
                // next look refuses it rather than deleting again.
                OURS.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                return Box::pin(ensure(w)).await;
            }
            if !fits {
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
    match w.v6 {
        None => ipv4_settings(name, parent_name)?,
        Some(_) => {
            // No link-local address made from the shared MAC (every node would have it).
            write_v6(name, "disable_ipv6", 0)?;
            write_v6(name, "addr_gen_mode", 1)?;
            // Its MLD messages leave through the parent, before it is up and sends any.
            let parent_mac = link::kind(parent_ifindex)
                .await
                .with_context(|| format!("reading interface {parent_name}"))?
                .with_context(|| format!("interface {parent_name} went away"))?
                .address;
            let parent_mac: [u8; 6] = parent_mac.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!("{parent_name} has no Ethernet address: {parent_mac:02x?}")
            })?;
            // No router solicitations either: sent from the virtual MAC as well.
            write_v6(name, "accept_ra", 0)?;
            super::vmac_mld::attach(name, ifindex, (parent_ifindex, parent_mac));
        }
    }
    link::set_up(ifindex)
        .await
        .with_context(|| format!("bringing {name} up"))?;
    if let Some(Some(ll)) = w.v6 {
        let a = crate::netlink::addr::VirtualAddress::new(std::net::IpAddr::V6(ll), ifindex)
            .with_prefix(64);
        crate::netlink::addr::AddressSocket::open()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .add(&a)
            .await
            .map_err(|e| anyhow::anyhow!("adding {ll} to {name}: {e}"))?;
    }
    Ok(ifindex)
}

fn write_v6(iface: &str, key: &str, value: i64) -> Result<()> {
    let p = format!("/proc/sys/net/ipv6/conf/{iface}/{key}");
    std::fs::write(&p, format!("{value}\n")).with_context(|| format!("write {value} to {p}"))
}

/// An IPv4 instance's settings (keepalived's `set_interface_parameters`).
fn ipv4_settings(name: &str, parent_name: &str) -> Result<()> {
    let now: i64 = std::fs::read_to_string(IGMP_LINK_LOCAL)
        .with_context(|| format!("read {IGMP_LINK_LOCAL}"))?
        .trim()
        .parse()
        .with_context(|| format!("{IGMP_LINK_LOCAL}: not a number"))?;
    if now != 0 {
        std::fs::write(IGMP_LINK_LOCAL, "0\n")
            .with_context(|| format!("write 0 to {IGMP_LINK_LOCAL}"))?;
        IGMP_REPORTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(now);
        info!("{IGMP_LINK_LOCAL} = 0: a backup's reports would come from the virtual MAC");
    }
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
    // And `arp_announce = 2`: an answer to a client leaves by the parent's route with the
    // VIP as its source, and the parent's ARP request for the client would carry the VIP
    // with the parent's MAC: the client would move the VIP to this node's own MAC, which
    // the next failover does not move back (the keepalived namespace test caught it).
    for (key, value) in [("arp_ignore", 1), ("arp_filter", 1), ("arp_announce", 2)] {
        let before = read_conf(parent_name, key)?;
        if before < value {
            write_conf(parent_name, key, value)?;
            PARENTS.lock().unwrap_or_else(|p| p.into_inner()).push((
                parent_name.to_string(),
                key,
                before,
            ));
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
    Ok(())
}

/// Deletes every virtual MAC interface this run made or took over (a stop that releases
/// the addresses).
pub async fn release_all() {
    prune(&std::collections::BTreeSet::new()).await;
    let parents = std::mem::take(&mut *PARENTS.lock().unwrap_or_else(|p| p.into_inner()));
    for (parent, key, before) in parents.into_iter().rev() {
        if let Err(e) = write_conf(&parent, key, before) {
            warn!("restoring {parent}'s {key}: {e:#}");
        }
    }
    let old = IGMP_REPORTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(v) = old {
        if let Err(e) = std::fs::write(IGMP_LINK_LOCAL, format!("{v}\n")) {
            warn!("restoring {IGMP_LINK_LOCAL}: {e}");
        }
    }
}

/// Deletes the virtual MAC interfaces this run made or took over that no instance of the
/// configuration in force wants (a reload removed or renamed them, or a refused reload
/// made them): left up, one would take the peers' adverts (sent from the virtual MAC)
/// away from the instance's socket.
pub async fn prune(wanted: &std::collections::BTreeSet<String>) {
    let names: Vec<String> = {
        let mut ours = OURS.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = ours
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for n in &gone {
            ours.remove(n);
        }
        gone
    };
    for name in names {
        let Ok(i) = crate::os::ifindex(&name) else {
            super::vmac_mld::detach(&name);
            continue;
        };
        match link::delete(i).await {
            Ok(()) => {
                info!("{name}: deleted");
                // Its filter went with it; what the loader kept of it goes now.
                super::vmac_mld::detach(&name);
            }
            // Still there (and still up): its filter stays.
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
