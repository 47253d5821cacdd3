//! The receive checks of RFC 9568 §7.1 and RFC 3768 §7.1 that the codec does not do, as a
//! pure function from a received datagram to the FSM's view of it or a named discard reason.
use std::net::IpAddr;

use super::{
    fsm::{Advert, Centis},
    packet::{self, Auth, ChecksumForm, IpPair, Repr},
    socket::Received,
};
use crate::model::VrrpVersion;

/// What the checks need to know about the instance.
#[derive(Debug, Clone)]
pub struct RxConfig {
    pub version: VrrpVersion,
    pub vrid: u8,
    /// VRRPv2: the simple password, if configured.
    pub auth: Auth,
    /// VRRPv2: the configured Adver Int, in centiseconds (RFC 3768 §7.1 discards others).
    pub advert_int_cs: u16,
    /// Our own addresses on the interface: adverts from them are our own, looped back.
    pub own: Vec<IpAddr>,
    /// Unicast peers; when set, adverts from anyone else are refused.
    pub unicast_peers: Vec<IpAddr>,
    /// The configured virtual addresses, to notice (not discard) a differing list.
    pub vips: Vec<IpAddr>,
}

/// Why an advert was discarded. Every variant has a stable name for counters and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discard {
    BadIpFraming,
    BadTtl(u8),
    Parse(packet::ParseError),
    /// For another virtual router on the same interface: not ours to look at, not an error.
    OtherVrid(u8),
    WrongVersion(u8),
    AuthTypeMismatch,
    AuthMismatch,
    IntervalMismatch {
        got: u16,
        want: u16,
    },
    OwnAdvert,
    NotAPeer(IpAddr),
}

impl Discard {
    pub fn name(&self) -> &'static str {
        match self {
            Discard::BadIpFraming => "bad_ip_framing",
            Discard::BadTtl(_) => "bad_ttl",
            Discard::Parse(e) => e.name(),
            Discard::OtherVrid(_) => "other_vrid",
            Discard::WrongVersion(_) => "wrong_version",
            Discard::AuthTypeMismatch => "auth_type_mismatch",
            Discard::AuthMismatch => "auth_mismatch",
            Discard::IntervalMismatch { .. } => "interval_mismatch",
            Discard::OwnAdvert => "own_advert",
            Discard::NotAPeer(_) => "not_a_peer",
        }
    }

    /// Discards that say nothing is wrong: they are counted but not logged.
    pub fn is_expected(&self) -> bool {
        matches!(self, Discard::OtherVrid(_) | Discard::OwnAdvert)
    }
}

/// A checked advert: what the FSM takes, plus what is worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub advert: Advert,
    pub checksum: ChecksumForm,
    /// The sender's address list differs from ours (RFC 9568 §7.1: log, do not discard).
    pub addresses_differ: bool,
}

/// The checks, in the RFC's order where it gives one.
pub fn check(cfg: &RxConfig, rx: &Received, datagram: &[u8]) -> Result<Accepted, Discard> {
    // §7.1: "MUST verify that the IP TTL is 255": the proof that the sender is on the
    // link. Unicast peers are named instead, and may sit behind routers (cloud networks,
    // sites): keepalived checks the TTL only without `unicast_peer`, and so do we.
    if cfg.unicast_peers.is_empty() && rx.ttl != packet::REQUIRED_TTL {
        return Err(Discard::BadTtl(rx.ttl));
    }
    if cfg.own.contains(&rx.src) {
        return Err(Discard::OwnAdvert);
    }
    let payload = datagram
        .get(rx.payload.clone())
        .ok_or(Discard::BadIpFraming)?;
    // The VRID is read before the full parse: another router's adverts on the same LAN are
    // not errors, whatever their content.
    if let Some(&vrid) = payload.get(packet::field::VRID) {
        if payload.len() >= packet::HEADER_LEN && vrid != cfg.vrid {
            return Err(Discard::OtherVrid(vrid));
        }
    }
    let ip = IpPair::new(rx.src, rx.dst).ok_or(Discard::BadIpFraming)?;
    // Version, length, checksum, type, address count are the codec's checks.
    let (repr, checksum) = packet::parse(payload, &ip).map_err(Discard::Parse)?;
    if repr.version != cfg.version {
        return Err(Discard::WrongVersion(repr.version.number()));
    }
    if !cfg.unicast_peers.is_empty() && !cfg.unicast_peers.contains(&rx.src) {
        return Err(Discard::NotAPeer(rx.src));
    }
    if repr.version == VrrpVersion::V2 {
        // RFC 3768 §7.1: the authentication type must match, and for simple text the
        // password too.
        match (&cfg.auth, &repr.auth) {
            (Auth::None, Auth::None) => {}
            (Auth::Simple(want), Auth::Simple(got)) => {
                if want != got {
                    return Err(Discard::AuthMismatch);
                }
            }
            _ => return Err(Discard::AuthTypeMismatch),
        }
        // RFC 3768 §7.1: a different Adver Int is discarded.
        if repr.max_adver_int.centis() != cfg.advert_int_cs {
            return Err(Discard::IntervalMismatch {
                got: repr.max_adver_int.centis(),
                want: cfg.advert_int_cs,
            });
        }
    }
    let mut theirs: Vec<IpAddr> = repr.addresses.iter().collect();
    let mut ours = cfg.vips.clone();
    theirs.sort();
    ours.sort();
    Ok(Accepted {
        advert: Advert {
            sender: rx.src,
            priority: repr.priority,
            max_advert_interval: Centis(repr.max_adver_int.centis()),
        },
        checksum,
        addresses_differ: theirs != ours,
    })
}

/// The advert we send: our VIPs, priority and interval.
pub fn advert_repr(cfg: &RxConfig, priority: u8) -> Repr {
    let addresses = if cfg.vips.first().is_some_and(IpAddr::is_ipv6) {
        packet::Addresses::V6(
            cfg.vips
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                })
                .collect(),
        )
    } else {
        packet::Addresses::V4(
            cfg.vips
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
                .collect(),
        )
    };
    Repr {
        version: cfg.version,
        vrid: cfg.vrid,
        priority,
        max_adver_int: packet::AdverInt::from_centis(cfg.advert_int_cs),
        addresses,
        auth: if cfg.version == VrrpVersion::V2 {
            cfg.auth
        } else {
            Auth::None
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn cfg() -> RxConfig {
        RxConfig {
            version: VrrpVersion::V2,
            vrid: 51,
            auth: Auth::simple(b"secret12").unwrap(),
            advert_int_cs: 100,
            own: vec![IpAddr::from([192, 0, 2, 2])],
            unicast_peers: vec![],
            vips: vec![IpAddr::from([192, 0, 2, 100])],
        }
    }

    fn datagram(cfg: &RxConfig, priority: u8, src: Ipv4Addr) -> (Received, Vec<u8>) {
        let dst = packet::MULTICAST_V4;
        let ip = IpPair::new(src.into(), dst.into()).unwrap();
        let bytes = advert_repr(cfg, priority).to_bytes(&ip).unwrap();
        (
            Received {
                src: src.into(),
                dst: dst.into(),
                ttl: 255,
                payload: 0..bytes.len(),
                arrived: None,
            },
            bytes,
        )
    }

    #[test]
    fn accepts_a_peer_advert() {
        let c = cfg();
        let (rx, d) = datagram(&c, 150, Ipv4Addr::new(192, 0, 2, 1));
        let a = check(&c, &rx, &d).unwrap();
        assert_eq!(a.advert.priority, 150);
        assert_eq!(a.advert.max_advert_interval, Centis(100));
        assert!(!a.addresses_differ);
    }

    /// Unicast peers may be routers away: their TTL is not checked (keepalived's rule), but
    /// anyone else is still refused.
    #[test]
    fn unicast_peers_are_not_held_to_ttl_255() {
        let mut c = cfg();
        let peer = Ipv4Addr::new(198, 51, 100, 2);
        c.unicast_peers = vec![peer.into()];
        let (mut rx, d) = datagram(&c, 150, peer);
        rx.ttl = 250;
        assert_eq!(
            check(&c, &rx, &d).unwrap().advert.sender,
            IpAddr::from(peer)
        );
        let (mut rx, d) = datagram(&c, 150, Ipv4Addr::new(198, 51, 100, 3));
        rx.ttl = 250;
        assert_eq!(
            check(&c, &rx, &d),
            Err(Discard::NotAPeer([198, 51, 100, 3].into()))
        );
    }

    /// RFC 9568 §7.1 / RFC 3768 §7.1, one discard each.
    #[test]
    fn every_receive_check() {
        let c = cfg();
        let peer = Ipv4Addr::new(192, 0, 2, 1);
        let (mut rx, d) = datagram(&c, 150, peer);
        rx.ttl = 254;
        assert_eq!(check(&c, &rx, &d), Err(Discard::BadTtl(254)));
        let (rx, d) = datagram(&c, 150, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(check(&c, &rx, &d), Err(Discard::OwnAdvert));
        let mut other = cfg();
        other.vrid = 52;
        let (rx, d) = datagram(&other, 150, peer);
        assert_eq!(check(&c, &rx, &d), Err(Discard::OtherVrid(52)));
        let (rx, mut d) = datagram(&c, 150, peer);
        d[6] ^= 0xff;
        assert!(matches!(
            check(&c, &rx, &d),
            Err(Discard::Parse(packet::ParseError::BadChecksum { .. }))
        ));
        let mut pass = cfg();
        pass.auth = Auth::simple(b"other").unwrap();
        let (rx, d) = datagram(&pass, 150, peer);
        assert_eq!(check(&c, &rx, &d), Err(Discard::AuthMismatch));
        pass.auth = Auth::None;
        let (rx, d) = datagram(&pass, 150, peer);
        assert_eq!(check(&c, &rx, &d), Err(Discard::AuthTypeMismatch));
        let mut slow = cfg();
        slow.advert_int_cs = 200;
        let (rx, d) = datagram(&slow, 150, peer);
        assert_eq!(
            check(&c, &rx, &d),
            Err(Discard::IntervalMismatch {
                got: 200,
                want: 100
            })
        );
        let mut v3 = cfg();
        v3.version = VrrpVersion::V3;
        v3.auth = Auth::None;
        let (rx, d) = datagram(&v3, 150, peer);
        assert_eq!(check(&c, &rx, &d), Err(Discard::WrongVersion(3)));
        let mut uni = cfg();
        uni.unicast_peers = vec![IpAddr::from([192, 0, 2, 3])];
        let (rx, d) = datagram(&c, 150, peer);
        assert_eq!(check(&uni, &rx, &d), Err(Discard::NotAPeer(peer.into())));
        let mut more = cfg();
        more.vips.push(IpAddr::from([192, 0, 2, 101]));
        let (rx, d) = datagram(&more, 150, peer);
        assert!(
            check(&c, &rx, &d).unwrap().addresses_differ,
            "logged, not discarded"
        );
        let (mut rx, d) = datagram(&c, 150, peer);
        rx.payload = 0..d.len() + 1;
        assert_eq!(check(&c, &rx, &d), Err(Discard::BadIpFraming));
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let c = cfg();
        let (rx, d) = datagram(&c, 150, Ipv4Addr::new(192, 0, 2, 1));
        for cut in 0..d.len() {
            let r = Received {
                payload: 0..cut,
                ..rx.clone()
            };
            assert!(check(&c, &r, &d[..cut]).is_err());
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let r = Received {
                payload: 0..len,
                ..rx.clone()
            };
            let _ = check(&c, &r, &bytes);
        }
    }
}
