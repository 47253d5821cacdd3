//! The `[announce]` section: VIPs routed to this node by a routing daemon (BIRD, FRR)
//! instead of held by VRRP. Several nodes announce the same VIPs and the upstream router
//! spreads the flows over them (ECMP): active-active, where a VRRP pair sends everything
//! through one node.
use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Ctx, VrrpInstance};

/// The kernel routing table the routes go in unless `table` says otherwise.
pub const DEFAULT_TABLE: u32 = 100;
/// The device they go through unless `device` says otherwise.
pub const DEFAULT_DEVICE: &str = "lbvip0";
/// The `rtm_protocol` that marks the routes as this daemon's (`ip route ... proto 250`):
/// unassigned in /etc/iproute2/rt_protos, so no other program's routes are taken for ours.
pub const ROUTE_PROTOCOL: u8 = 250;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnnounce {
    vips: Spanned<Vec<Spanned<String>>>,
    table: Option<Spanned<u32>>,
    device: Option<Spanned<String>>,
}

impl RawAnnounce {
    pub(super) fn span(&self) -> std::ops::Range<usize> {
        self.vips.span()
    }
}

/// A checked `[announce]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// The VIPs routed to this node; each is announced while every service on it has its
    /// quorum.
    pub vips: Vec<IpAddr>,
    /// The kernel table the routing daemon learns the routes from.
    pub table: u32,
    /// The TUN device the routes go through: made by the daemon, gone with it.
    pub device: String,
    /// The line of `vips`, for errors found once the services are read.
    pub line: usize,
}

impl AnnounceConfig {
    pub fn announces(&self, vip: IpAddr) -> bool {
        self.vips.contains(&vip)
    }
}

pub(super) fn announce(
    cx: &Ctx,
    a: &RawAnnounce,
    instances: &[VrrpInstance],
) -> Result<AnnounceConfig, ConfigError> {
    let mut vips: Vec<IpAddr> = Vec::new();
    if a.vips.get_ref().is_empty() {
        return Err(cx.invalid(
            a.vips.span(),
            "announce.vips",
            "empty: name the VIPs this node announces",
        ));
    }
    for v in a.vips.get_ref() {
        let ip: IpAddr = v.get_ref().parse().map_err(|_| {
            cx.invalid(
                v.span(),
                "announce.vips",
                format!("{:?} is not an IP address", v.get_ref()),
            )
        })?;
        let link_local = match ip {
            IpAddr::V4(a) => a.is_link_local() || a.is_broadcast(),
            IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || link_local {
            return Err(cx.invalid(v.span(), "announce.vips", format!("{ip} cannot be a VIP")));
        }
        if vips.contains(&ip) {
            return Err(cx.invalid(v.span(), "announce.vips", format!("{ip} is listed twice")));
        }
        if let Some(i) = instances
            .iter()
            .find(|i| i.virtual_ipaddress.iter().any(|a| a.addr == ip))
        {
            return Err(cx.invalid(
                v.span(),
                "announce.vips",
                format!(
                    "{ip} is in vrrp_instance {}'s virtual_ipaddress: a VIP is held by VRRP \
                     (one node) or routed to every node, not both",
                    i.name
                ),
            ));
        }
        vips.push(ip);
    }
    let table = match &a.table {
        None => DEFAULT_TABLE,
        Some(t) => match *t.get_ref() {
            // unspec, compat, default, main, local: the node's own routing would use the VIPs
            // (252 stands for a table past 255 in a route message).
            0 | 252..=255 => {
                return Err(cx.invalid(
                    t.span(),
                    "announce.table",
                    format!(
                        "{} is a table the kernel routes with or reserves (0, 252 compat, 253 \
                         default, 254 main, 255 local): take one of its own, such as 100",
                        t.get_ref()
                    ),
                ))
            }
            t => t,
        },
    };
    let device = match &a.device {
        None => DEFAULT_DEVICE.to_string(),
        Some(d) => {
            let n = d.get_ref();
            let ok = !n.is_empty()
                && n.len() < 16
                && n != "."
                && n != ".."
                // '%': TUNSETIFF takes "name%d" for a template and makes another name.
                && !n.contains(|c: char| {
                    c == '/' || c == ':' || c == '%' || c.is_whitespace() || c == '\0'
                });
            if !ok {
                return Err(cx.invalid(
                    d.span(),
                    "announce.device",
                    format!(
                        "{n:?} is not an interface name (1 to 15 characters, no '/', ':', '%' or space)"
                    ),
                ));
            }
            n.clone()
        }
    };
    Ok(AnnounceConfig {
        vips,
        table,
        device,
        line: cx.line_col(a.vips.span().start).0,
    })
}
