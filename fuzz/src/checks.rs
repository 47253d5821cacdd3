//! What each fuzz target checks, one function per target over the raw fuzz input.
//!
//! Each runs a parser of outside input and asserts the parser's own promises, not just that
//! nothing panics: a codec's output parses back to what it came from, a receiver accepts only
//! what its rules let through, an incremental reader agrees with a reading of the whole. The
//! file is shared: the fuzz targets (`fuzz/fuzz_targets/`) call it, and lb-daemon's
//! `tests/fuzz_regressions.rs` includes it to replay the seeds and `fuzz/regressions/` with
//! every `cargo test`, without the nightly toolchain.
//!
//! The first input bytes often pick options (an address pair, whether to fix a checksum):
//! checksums and HMAC tags would otherwise stop a mutated input at the first check, and the
//! checks behind them would never be reached.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::OnceLock,
    time::{Duration, Instant},
};

use hmac::{Hmac, KeyInit, Mac};
use lb_daemon::{
    config::{Config, ConfigError},
    control, daemon,
    dataplane::{
        maps::MemMaps,
        neigh::{MacResolverConfig, MacTable, MacUpdate},
        Dataplane, ServiceSpec,
    },
    health::http::{self, Framing},
    import::{self, ImportError},
    model::{Limits, VrrpVersion},
    netlink::{
        self,
        neigh::{self, NeighEvent},
        Control,
    },
    sync::{
        codec::{self, Body, DataBuilder, DecodeError, Header, Key, Push, WireEntry, WireRef},
        index::Index,
        receiver::{Incoming, Receiver, ReceiverConfig},
    },
    vrrp::{
        check::{self, Discard, RxConfig},
        packet::{
            self, Auth, ChecksumForm, Family, IpPair, Packet, ParseError, Repr, V3Ipv4Checksum,
        },
        socket::{self, Received},
    },
};
use netlink_packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    AddressFamily, RouteNetlinkMessage,
};
use sha2::Sha256;

/// A fuzz target's name and its check.
pub struct Target {
    pub name: &'static str,
    pub check: fn(&[u8]),
}

/// Every target, by the name of its file in `fuzz/fuzz_targets/`.
pub const TARGETS: &[Target] = &[
    Target {
        name: "vrrp_packet",
        check: vrrp_packet,
    },
    Target {
        name: "vrrp_check",
        check: vrrp_check,
    },
    Target {
        name: "sync_codec",
        check: sync_codec,
    },
    Target {
        name: "sync_receiver",
        check: sync_receiver,
    },
    Target {
        name: "config",
        check: config,
    },
    Target {
        name: "import",
        check: import,
    },
    Target {
        name: "http_reply",
        check: http_reply,
    },
    Target {
        name: "control_request",
        check: control_request,
    },
    Target {
        name: "netlink",
        check: netlink,
    },
];

/// Bytes taken from the front of the input; zeroes once it runs out, so every input is a
/// valid choice of options.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// VRRP
// ---------------------------------------------------------------------------------------------

/// The address pairs of the codec's golden vectors: hand-made ones (index 0, 1) and those of
/// the keepalived captures (2, 3).
pub fn vrrp_pairs() -> [IpPair; 4] {
    [
        IpPair::V4 {
            src: Ipv4Addr::new(192, 0, 2, 3),
            dst: packet::MULTICAST_V4,
        },
        IpPair::V6 {
            src: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2),
            dst: packet::MULTICAST_V6,
        },
        IpPair::V4 {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: packet::MULTICAST_V4,
        },
        IpPair::V6 {
            src: Ipv6Addr::new(0xfe80, 0, 0, 0, 0xec02, 0x84ff, 0xfe7c, 0xe349),
            dst: packet::MULTICAST_V6,
        },
    ]
}

fn other(f: Family) -> Family {
    match f {
        Family::Ipv4 => Family::Ipv6,
        Family::Ipv6 => Family::Ipv4,
    }
}

/// VRRP advertisements (v2/v3, IPv4/IPv6): `[options] message`. Options: bits 0-1 the address
/// pair, bit 2 fix the checksum first, bit 3 in the RFC 9568 form.
pub fn vrrp_packet(data: &[u8]) {
    let mut input = Input(data);
    let options = input.byte();
    let ip = vrrp_pairs()[usize::from(options & 3)];
    let mut msg = input.rest().to_vec();
    if options & 4 != 0 {
        let form = if options & 8 != 0 {
            V3Ipv4Checksum::MessageOnly
        } else {
            V3Ipv4Checksum::PseudoHeader
        };
        if let Ok(mut p) = Packet::new_checked(&mut msg[..], ip.family()) {
            p.fill_checksum(&ip, form);
        }
    }
    let got = packet::parse(&msg, &ip);
    // However the view was made, the IP pair decides.
    let unchecked = Repr::parse(&Packet::new_unchecked(&msg[..], ip.family()), &ip);
    assert_eq!(got, unchecked, "parse of an unchecked view differs");
    let wrong = Repr::parse(&Packet::new_unchecked(&msg[..], other(ip.family())), &ip);
    assert_eq!(
        got, wrong,
        "parse follows the view's family, not the IP pair's"
    );
    let (repr, form) = match got {
        Ok(parsed) => parsed,
        Err(e) => {
            assert!(ParseError::NAMES.contains(&e.name()), "{e:?} has no name");
            return;
        }
    };
    // The length check is exact: the message is as long as its representation.
    assert_eq!(repr.buffer_len(), msg.len());
    let v3_ipv4 = match form {
        ChecksumForm::MessageOnly => V3Ipv4Checksum::MessageOnly,
        _ => V3Ipv4Checksum::PseudoHeader,
    };
    let mut out = vec![0u8; repr.buffer_len()];
    repr.emit_with(
        &mut Packet::new_unchecked(&mut out[..], ip.family()),
        &ip,
        v3_ipv4,
    )
    .expect("a parsed advertisement emits");
    assert_eq!(
        packet::parse(&out, &ip),
        Ok((repr.clone(), form)),
        "emit then parse"
    );
    // The same bytes but for what a receiver ignores: the v3 Reserve nibble and the
    // authentication data of a v2 advert without authentication (and then the checksum).
    let mut normal = msg.clone();
    match repr.version {
        VrrpVersion::V3 => normal[4] &= 0x0f,
        VrrpVersion::V2 if repr.auth == Auth::None => {
            let at = normal.len() - packet::AUTH_DATA_LEN;
            normal[at..].fill(0);
        }
        VrrpVersion::V2 => {}
    }
    if normal == msg {
        assert_eq!(out, msg, "emit gives other bytes");
    } else {
        normal[packet::field::CHECKSUM].copy_from_slice(&out[packet::field::CHECKSUM]);
        assert_eq!(out, normal, "emit gives other bytes");
    }
}

/// The receive checks (RFC 9568 / RFC 3768 §7.1) of a datagram as the raw socket hands it
/// over: `[options] [vrid] [interval: u16] [password: 8] [priority]` then for IPv4 the
/// datagram with its IP header, for IPv6 `[hop limit] [source: 16]` and the VRRP message.
/// Options: bit 0 IPv6, bit 1 VRRPv3, bit 2 a password, bit 3 the source is one of ours,
/// bit 4 unicast peers, bit 5 fix the checksum.
pub fn vrrp_check(data: &[u8]) {
    let mut input = Input(data);
    let options = input.byte();
    let v6 = options & 1 != 0;
    let version = if options & 2 != 0 || v6 {
        VrrpVersion::V3
    } else {
        VrrpVersion::V2
    };
    let vrid = input.byte();
    let advert_int_cs = input.u16();
    let password: [u8; 8] = input.array();
    let priority = input.byte();
    let (own, peer, vips): (IpAddr, IpAddr, Vec<IpAddr>) = if v6 {
        (
            "fe80::1".parse().unwrap(),
            "fe80::2".parse().unwrap(),
            vec!["2001:db8::100".parse().unwrap()],
        )
    } else {
        (
            "192.0.2.2".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
            vec!["192.0.2.100".parse().unwrap()],
        )
    };
    let cfg = RxConfig {
        version,
        vrid,
        auth: if options & 4 != 0 && version == VrrpVersion::V2 {
            Auth::Simple(password)
        } else {
            Auth::None
        },
        advert_int_cs,
        own: vec![own],
        unicast_peers: if options & 16 != 0 {
            vec![peer]
        } else {
            vec![]
        },
        vips,
    };
    let (rx, mut datagram) = if v6 {
        let ttl = input.byte();
        let src = Ipv6Addr::from(input.array::<16>());
        let src = if options & 8 != 0 { own } else { src.into() };
        let payload = input.rest().to_vec();
        let rx = Received {
            src,
            dst: packet::MULTICAST_V6.into(),
            ttl,
            payload: 0..payload.len(),
            arrived: None,
        };
        (rx, payload)
    } else {
        let mut d = input.rest().to_vec();
        if options & 8 != 0 && d.len() >= 20 {
            d[12..16].copy_from_slice(&[192, 0, 2, 2]);
        }
        match socket::parse_ipv4(&d) {
            Ok(rx) => {
                assert!(rx.payload.start >= 20 && rx.payload.end <= d.len());
                (rx, d)
            }
            Err(_) => {
                // The only reasons: too short for a header, or one that contradicts itself.
                let ihl = usize::from(d.first().map_or(0, |b| b & 0x0f)) * 4;
                let total = d
                    .get(2..4)
                    .map_or(0, |t| usize::from(u16::from_be_bytes([t[0], t[1]])));
                assert!(d.len() < 20 || d[0] >> 4 != 4 || ihl < 20 || ihl > d.len() || total < ihl);
                return;
            }
        }
    };
    let ip = IpPair::new(rx.src, rx.dst);
    if options & 32 != 0 {
        if let (Some(ip), Some(payload)) = (ip, datagram.get_mut(rx.payload.clone())) {
            if let Ok(mut p) = Packet::new_checked(payload, ip.family()) {
                p.fill_checksum(&ip, V3Ipv4Checksum::PseudoHeader);
            }
        }
    }
    let payload = datagram.get(rx.payload.clone());
    match check::check(&cfg, &rx, &datagram) {
        Ok(acc) => {
            // Unicast peers may be routers away (keepalived checks the TTL only without
            // them); without peers, only TTL 255 is accepted.
            assert!(!cfg.unicast_peers.is_empty() || rx.ttl == packet::REQUIRED_TTL);
            assert!(!cfg.own.contains(&rx.src), "our own advert accepted");
            assert!(cfg.unicast_peers.is_empty() || cfg.unicast_peers.contains(&rx.src));
            let (ip, payload) = (
                ip.expect("families agree"),
                payload.expect("in the datagram"),
            );
            let (repr, form) = packet::parse(payload, &ip).expect("an accepted advert parses");
            assert_eq!(form, acc.checksum);
            assert_eq!((repr.vrid, repr.version), (cfg.vrid, cfg.version));
            assert_eq!(acc.advert.sender, rx.src);
            assert_eq!(acc.advert.priority, repr.priority);
            assert_eq!(
                acc.advert.max_advert_interval.0,
                repr.max_adver_int.centis()
            );
            if repr.version == VrrpVersion::V2 {
                assert_eq!(repr.auth, cfg.auth);
                assert_eq!(repr.max_adver_int.centis(), cfg.advert_int_cs);
            }
            let mut theirs: Vec<IpAddr> = repr.addresses.iter().collect();
            theirs.sort();
            assert_eq!(acc.addresses_differ, theirs != cfg.vips);
        }
        Err(d) => {
            assert!(!d.name().is_empty());
            if let (Discard::Parse(e), Some(ip), Some(payload)) = (&d, ip, payload) {
                assert_eq!(packet::parse(payload, &ip), Err(*e));
            }
        }
    }
    // What we send is what a peer configured alike accepts.
    let ours = check::advert_repr(&cfg, priority);
    let (src, dst) = (peer, cfg.vips[0]);
    let Some(ip) = IpPair::new(src, dst) else {
        return;
    };
    let Ok(msg) = ours.to_bytes(&ip) else {
        return;
    };
    let mut peer_cfg = cfg.clone();
    peer_cfg.unicast_peers.clear();
    let rx = Received {
        src,
        dst,
        ttl: packet::REQUIRED_TTL,
        payload: 0..msg.len(),
        arrived: None,
    };
    let acc = check::check(&peer_cfg, &rx, &msg).expect("our advert is accepted by our peer");
    assert!(!acc.addresses_differ);
    assert_eq!(acc.advert.priority, priority);
}

// ---------------------------------------------------------------------------------------------
// Connection sync
// ---------------------------------------------------------------------------------------------

/// The key and sync id of the codec's golden vectors.
pub const SYNC_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
pub const SYNC_ID: u8 = 38;

/// `msg` as a peer with the key would send it: magic, version and sync id set, tag
/// recomputed over the rest.
fn retag(msg: &mut Vec<u8>) {
    if msg.len() < codec::TAG_LEN {
        return;
    }
    msg.truncate(msg.len() - codec::TAG_LEN);
    if msg.len() >= 5 {
        msg[0..2].copy_from_slice(&codec::MAGIC.to_be_bytes());
        msg[2] = msg[2] & 0x0f | codec::VERSION << 4;
        msg[4] = SYNC_ID;
    }
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SYNC_KEY).expect("any key length");
    mac.update(msg);
    let tag = mac.finalize().into_bytes();
    msg.extend_from_slice(&tag[..codec::TAG_LEN]);
}

/// The entries of a DATA body with their references resolved.
fn resolved(d: &codec::Data) -> Vec<(WireRef, WireEntry)> {
    d.entries
        .iter()
        .map(|(i, e)| (d.refs[usize::from(*i)], *e))
        .collect()
}

/// One sync datagram: `[options] datagram`; option bit 0: re-tag it.
pub fn sync_codec(data: &[u8]) {
    let mut input = Input(data);
    let options = input.byte();
    let mut m = input.rest().to_vec();
    if options & 1 != 0 {
        retag(&mut m);
    }
    let key = Key::new(SYNC_KEY).expect("a long key");
    let msg = match codec::decode(&m, &key, SYNC_ID) {
        Ok(msg) => msg,
        Err(e) => {
            assert!(!e.name().is_empty());
            return;
        }
    };
    let stranger = Key::new(b"another key of 32 bytes, or so!!").expect("a long key");
    assert_eq!(codec::decode(&m, &stranger, SYNC_ID), Err(DecodeError::Tag));
    assert_eq!(
        codec::decode(&m, &key, SYNC_ID.wrapping_add(1)),
        Err(DecodeError::SyncId(SYNC_ID))
    );
    match &msg.body {
        Body::Ack(a) => assert_eq!(codec::encode_ack(&msg.header, a, &key), m, "ACK re-encodes"),
        Body::Data(d) => {
            if m.len() > codec::MAX_MESSAGE {
                return;
            }
            let mut b = DataBuilder::new(codec::MAX_MESSAGE);
            for (i, e) in &d.entries {
                let r = &d.refs[usize::from(*i)];
                assert_eq!(b.push(u32::from(*i), r, e), Push::Added, "{r:?} {e:?}");
            }
            let again = b.seal(&msg.header, &key);
            let back = codec::decode(&again, &key, SYNC_ID).expect("a re-encoded message decodes");
            assert_eq!(back.header, msg.header);
            let Body::Data(d2) = &back.body else {
                panic!("DATA came back as {back:?}");
            };
            assert_eq!(resolved(d), resolved(d2));
            // Every reference used, in the order of first use: the very same bytes.
            let mut order: Vec<u8> = Vec::new();
            for (i, _) in &d.entries {
                if !order.contains(i) {
                    order.push(*i);
                }
            }
            if order.len() == d.refs.len()
                && order.iter().enumerate().all(|(n, i)| *i as usize == n)
            {
                assert_eq!(again, m, "DATA re-encodes to its bytes");
            }
        }
    }
}

/// The services of `examples/lvs-dr.toml`, as a receiver's index knows them, and the wire
/// references of their real servers (so that fuzzed entries can name them).
fn sync_index() -> &'static (Index, Vec<WireRef>) {
    static INDEX: OnceLock<(Index, Vec<WireRef>)> = OnceLock::new();
    INDEX.get_or_init(|| {
        let text = include_str!("../../examples/lvs-dr.toml");
        let config = Config::parse(Path::new("lvs-dr.toml"), text).expect("the example loads");
        let specs = all_up(&config);
        let mut dp = Dataplane::new(MemMaps::default(), Limits::default());
        dp.update(&specs).expect("the example plans");
        let refs = specs
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| WireRef {
                    proto: s.proto.number(),
                    vip: s.vip,
                    vport: s.port,
                    rip: b.addr.ip(),
                    rport: b.addr.port(),
                })
            })
            .collect();
        (Index::build(&dp, |_| true), refs)
    })
}

/// Every service active and every real server up, with a MAC.
fn all_up(config: &Config) -> Vec<ServiceSpec> {
    let vips: HashSet<IpAddr> = config.virtual_servers.iter().map(|v| v.vip).collect();
    daemon::service_specs(config, |ip| Some(mac_of(ip)), &vips, |_, _| None, |_| true)
}

fn mac_of(ip: IpAddr) -> [u8; 6] {
    let o = match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    [2, 0, 0, 0, 0, o]
}

/// A run of datagrams into one receiver: records `[options] [length] bytes`. Options: bits
/// 0-1 the source (two peers, one of our addresses, a stranger), bit 2 re-tag, bit 3 make a
/// DATA message of entries the bytes describe (`[boot] [seq] [count]` then 8 bytes an
/// entry), bit 4 only the peers may send.
pub fn sync_receiver(data: &[u8]) {
    let (ix, refs) = sync_index();
    let sources: [IpAddr; 4] = [
        "192.0.2.3".parse().unwrap(),
        "192.0.2.4".parse().unwrap(),
        "192.0.2.2".parse().unwrap(),
        "203.0.113.9".parse().unwrap(),
    ];
    let mut input = Input(data);
    let only_peers = input.byte() & 16 != 0;
    let cfg = ReceiverConfig {
        sync_id: SYNC_ID,
        peers: if only_peers {
            sources[..2].to_vec()
        } else {
            vec![]
        },
        own: vec![sources[2]],
        boot_id: 7,
    };
    let key = Key::new(SYNC_KEY).expect("a long key");
    let mut r = Receiver::new(cfg.clone(), key.clone());
    r.index_changed();
    let start = Instant::now();
    let (mut datagrams, mut data_entries, mut data_msgs, mut acks) = (0u64, 0u64, 0u64, 0u64);
    let mut replays = 0u64;
    let mut step = 0u32;
    while !input.0.is_empty() {
        let options = input.byte();
        let len = usize::from(input.byte());
        let bytes = input.take(len);
        let from = sources[usize::from(options & 3)];
        let mut m = if options & 8 != 0 {
            synth_data(bytes, refs, &key)
        } else {
            bytes.to_vec()
        };
        if options & 4 != 0 {
            retag(&mut m);
        }
        step += 1;
        let now = start + Duration::from_millis(u64::from(step) * 10);
        let got = r.on_datagram(from, &m, ix, 1000 + step, step * 10, now);
        datagrams += 1;
        match got {
            Incoming::Data { entries } => {
                data_msgs += 1;
                data_entries += entries as u64;
            }
            Incoming::Ack { from: f, .. } => {
                acks += 1;
                assert_eq!(f, from);
            }
            Incoming::Dropped(_) => continue,
        }
        assert!(!cfg.own.contains(&from), "accepted from our own address");
        assert!(cfg.peers.is_empty() || cfg.peers.contains(&from));
        // The replay window: the same datagram again is a duplicate.
        let again = r.on_datagram(from, &m, ix, 1000 + step, step * 10, now);
        assert_eq!(again, Incoming::Dropped("replay_duplicate"));
        replays += 1;
    }
    let s = &r.stats;
    assert_eq!((s.messages, s.acks), (data_msgs, acks));
    assert_eq!(s.entries, data_entries);
    // Entries refused after a message was accepted ("bad_ref" is the codec's, for a whole
    // message: the codec never lets an entry name a reference that is not there).
    let entry_drops: u64 = ["unknown_service", "unknown_backend"]
        .iter()
        .map(|w| s.dropped.get(w).copied().unwrap_or(0))
        .sum();
    let all_drops: u64 = s.dropped.values().sum();
    assert_eq!(
        data_msgs + acks + (all_drops - entry_drops),
        datagrams + replays,
        "{s:?}"
    );
    assert_eq!(r.pending() as u64, data_entries - entry_drops);
    assert!(r.peers.len() <= 64);
    // The ACK this receiver sends decodes at its master.
    let ack = r.ack(start, 5);
    let m = codec::decode(&ack, &key, SYNC_ID).expect("our ACK decodes");
    assert_eq!(m.header.boot_id, cfg.boot_id);
    assert!(matches!(m.body, Body::Ack(_)));
}

/// A DATA message from `[boot] [seq] [count]` and 8 bytes per entry: `[ref] [kind]
/// [age: u16] [cport: u16] [client low byte] [dport low byte]`.
fn synth_data(bytes: &[u8], refs: &[WireRef], key: &Key) -> Vec<u8> {
    let mut input = Input(bytes);
    let header = Header {
        msg_type: codec::TYPE_DATA,
        flags: input.byte() & codec::F_FULL_DONE,
        sync_id: SYNC_ID,
        boot_id: u32::from(input.byte()),
        seq: u32::from(input.byte()),
        send_ms: 0,
    };
    let mut b = DataBuilder::new(codec::DEFAULT_MAX_MESSAGE);
    while input.0.len() >= 8 {
        let r = refs[usize::from(input.byte()) % refs.len().max(1)];
        let kind = input.byte();
        let age_s = input.u16();
        let cport = input.u16();
        let low = input.byte();
        let caddr = match r.vip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 51, 100, low)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, low.into())),
        };
        let e = WireEntry {
            kind: if kind & 1 != 0 {
                codec::ENTRY_TEMPLATE
            } else {
                codec::ENTRY_FLOW
            },
            refresh: kind & 2 != 0,
            age_s,
            cport,
            dport: u16::from(input.byte()),
            caddr,
        };
        let id = refs.iter().position(|x| *x == r).unwrap_or(0) as u32;
        if b.push(id, &r, &e) != Push::Added {
            break;
        }
    }
    b.seal(&header, key)
}

// ---------------------------------------------------------------------------------------------
// Configuration and import
// ---------------------------------------------------------------------------------------------

/// The TOML configuration: [`Config::parse`], then what the daemon does with an accepted one:
/// its service specs planned into (in-memory) maps, twice.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.toml");
    // Read by service blocks (the daemon's way), it is what the whole file says: the same
    // configuration or the same error; read again from the cache, the same once more.
    let mut cache = lb_daemon::config::split::Cache::default();
    let cut = Config::parse_cached(file, text, &mut cache);
    match (&cut, Config::parse_whole(file, text)) {
        (Ok(c), Ok(w)) => {
            assert_eq!(c, &w, "the blocks and the whole file disagree");
            let again = Config::parse_cached(file, text, &mut cache).expect("a cached read failed");
            assert_eq!(c, &again, "a cached read differs");
        }
        (Err(c), Err(w)) => assert_eq!(c.to_string(), w.to_string()),
        (c, w) => panic!("the blocks say {c:?}, the whole file {w:?}"),
    }
    match cut {
        Ok(c) => plan(&c),
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with("fuzz.toml"),
                "the error names no file: {shown}"
            );
            let lines = text.lines().count() + 1;
            match e {
                ConfigError::Parse { line, .. } | ConfigError::Invalid { line, .. } => {
                    assert!(line <= lines, "line {line} of {lines}: {shown}")
                }
                ConfigError::Read { .. } => panic!("parse read a file: {shown}"),
            }
        }
    }
}

/// An accepted configuration's services planned into maps; the same again writes nothing
/// (a reload of an unchanged configuration changes nothing).
fn plan(c: &Config) {
    let mut specs = all_up(c);
    assert_eq!(specs.len(), c.virtual_servers.len());
    // Small Maglev tables keep an input cheap; the planner's logic is the same.
    for s in &mut specs {
        s.mh_table_size = s.mh_table_size.min(1031);
    }
    let mut dp = Dataplane::new(MemMaps::default(), Limits::CEILING);
    if dp.update(&specs).is_ok() {
        let writes = dp.writer().writes;
        dp.update(&specs).expect("the same specs plan again");
        assert_eq!(
            dp.writer().writes,
            writes,
            "an unchanged plan wrote to the maps"
        );
    }
    // Everything down, no quorum anywhere: a plan still, or a clear error.
    let vips: HashSet<IpAddr> = HashSet::new();
    let down = daemon::service_specs(c, |_| None, &vips, |_, _| Some((false, None)), |_| false);
    let _ = dp.update(&down);
}

/// An error of the importer on `text`, read as the file `file`: it says where in the text.
fn in_text(file: &Path, text: &str, e: &ImportError) {
    match e {
        ImportError::At {
            file: f,
            line,
            column,
            ..
        } => {
            // Nothing else can be read: every error is in the text itself.
            assert_eq!(f, file);
            assert!(*line >= 1 && *column >= 1);
            assert!(*line <= text.split('\n').count(), "line {line}");
        }
        e => panic!("an error without a position in the text: {e}"),
    }
}

/// `lb-daemon import-keepalived` on keepalived text: `[options] text`; option bit 0 gives
/// `--interface eth1`.
pub fn import(data: &[u8]) {
    let mut input = Input(data);
    let options = input.byte();
    let Ok(text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let opts = import::Options {
        interface: (options & 1 != 0).then(|| "eth1".to_string()),
        output_name: None,
        // No file system to look in: a script without a `/` is an error at its position.
        search_path: None,
        // Mark 1 stands for two ports of one address (the fwmark paths are reached).
        fwmarks: (options & 2 != 0)
            .then(|| {
                (
                    1,
                    vec!["192.0.2.10 80".to_string(), "192.0.2.10 443".to_string()],
                )
            })
            .into_iter()
            .collect(),
    };
    let file = Path::new("fuzz.conf");
    match import::import_str(file, text, &opts) {
        Ok(imported) => {
            for u in &imported.unsupported {
                assert!(u.location.line >= 1 && u.location.column >= 1, "{u}");
            }
            // What import-keepalived writes is what `lb-daemon check` reads.
            if let Err(e) = Config::parse(Path::new("out.toml"), &imported.toml) {
                panic!("the imported TOML does not load: {e}\n{}", imported.toml);
            }
        }
        Err(ImportError::Several(all)) => {
            assert!(all.len() >= 2, "{all:?}");
            all.iter().for_each(|e| in_text(file, text, e));
        }
        Err(e) => in_text(file, text, &e),
    }
    // The statement tree of the text, with includes as statements, reads it too.
    let _ = import::parse_text(text);
}

// ---------------------------------------------------------------------------------------------
// HTTP_GET replies
// ---------------------------------------------------------------------------------------------

/// An HTTP check's reply: `[cut] bytes`. The probe reads a reply as it arrives, so what it
/// makes of the first `cut` bytes must agree with what it makes of them all.
pub fn http_reply(data: &[u8]) {
    let mut input = Input(data);
    let cut = input.byte();
    let raw = input.rest();
    let k = usize::from(cut) * raw.len() / 255;
    let full = http::parse_head(raw);
    let part = http::parse_head(&raw[..k]);
    match (&part, &full) {
        // The message quotes what was read, so it may differ.
        (Err(_), Err(_)) => {}
        (Err(a), Ok(_)) => panic!("an error in the first {k} bytes went away with more: {a}"),
        (Ok(Some(h)), _) => assert_eq!(&full, &Ok(Some(*h)), "more bytes changed the head"),
        (Ok(None), Ok(Some(h))) => assert!(h.len > k),
        (Ok(None), _) => {}
    }
    if let Ok(Some(h)) = full {
        assert!(
            h.len <= raw.len() && (100..=599).contains(&h.status),
            "{h:?}"
        );
        assert_eq!(
            http::parse_head(&raw[..h.len]),
            Ok(Some(h)),
            "the head alone"
        );
        let body = &raw[h.len..];
        for eof in [false, true] {
            match http::decode_body(body, h.framing, eof) {
                Ok((b, complete)) => match h.framing {
                    Framing::Length(n) => {
                        assert_eq!(b, &body[..n.min(body.len())]);
                        assert_eq!(complete, body.len() >= n);
                    }
                    Framing::Close => assert_eq!((&b[..], complete), (body, eof)),
                    Framing::Chunked => assert!(b.len() <= body.len()),
                },
                Err(_) => assert_eq!(h.framing, Framing::Chunked),
            }
        }
    }
    // The chunked decoder on its own, read in two steps.
    let whole = http::decode_body(raw, Framing::Chunked, false);
    let first = http::decode_body(&raw[..k], Framing::Chunked, false);
    match (&first, &whole) {
        (Ok((b, true)), _) => assert_eq!(&whole, &Ok((b.clone(), true))),
        (Ok((b, false)), Ok((w, _))) => assert!(w.starts_with(b), "the body went back"),
        (Ok(_), Err(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Err(a), Ok(_)) => panic!("a chunk error in the first {k} bytes went away: {a}"),
    }
    if let Ok((b, _)) = &whole {
        assert!(b.len() <= raw.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Control socket
// ---------------------------------------------------------------------------------------------

/// The control socket's requests: `[max line length] bytes` read as the server reads a
/// client, line by line, each line answered.
pub fn control_request(data: &[u8]) {
    let mut input = Input(data);
    // Small limits too, so that the too-long path is reached.
    let max = match input.byte() {
        0 => control::MAX_LINE,
        n => usize::from(n),
    };
    let bytes = input.rest();
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let lines = RT.with(|rt| {
        rt.block_on(async {
            let mut reader = tokio::io::BufReader::new(bytes);
            let mut lines = Vec::new();
            let mut buf = Vec::new();
            loop {
                match control::read_line(&mut reader, &mut buf, max).await {
                    Ok(Some(())) => lines.push(Ok(buf.clone())),
                    Ok(None) => break,
                    Err(why) => {
                        lines.push(Err(why));
                        break;
                    }
                }
            }
            lines
        })
    });
    // What the lines should be: split at `\n`, a `\r` before it dropped.
    let mut rest = bytes;
    for got in &lines {
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) if n <= max => {
                let mut want = &rest[..n];
                want = want.strip_suffix(b"\r").unwrap_or(want);
                assert_eq!(got.as_deref(), Ok(want));
                rest = &rest[n + 1..];
            }
            _ if rest.len() > max => {
                assert!(matches!(got, Err(Some(_))), "{got:?}");
                return;
            }
            _ => {
                // Closed in the middle of a line: closed without an answer.
                assert_eq!(got, &Err(None));
                return;
            }
        }
        let Ok(line) = got else { unreachable!() };
        if !line.iter().all(u8::is_ascii_whitespace) {
            request(line);
        }
    }
    assert!(rest.is_empty(), "{} bytes not read", rest.len());
}

/// One request line and the answer it gets (other than the daemon's own).
fn request(line: &[u8]) {
    let got = control::parse_request(line);
    // An object the protocol's type reads is that request (serde's derive also reads
    // `["status"]`, which the daemon rightly refuses).
    let object = serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object());
    if let (true, Ok(strict)) = (object, serde_json::from_slice::<control::Request>(line)) {
        assert_eq!(got, Ok(strict), "a request the protocol's type reads");
    }
    let answer = match &got {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_slice(line).expect("accepted JSON");
            let name = serde_json::to_value(r).expect("a request serializes");
            assert_eq!(v.get("cmd"), name.get("cmd"));
            control::Response::ok()
        }
        Err(why) => {
            // A client cannot make the daemon write much back.
            assert!(why.len() <= 1024, "{} bytes of error", why.len());
            control::Response::error(why.clone())
        }
    };
    let encoded = serde_json::to_vec(&answer).expect("a response serializes");
    assert!(!encoded.contains(&b'\n'), "an answer is one line");
    let back: control::Response = serde_json::from_slice(&encoded).expect("it reads back");
    assert_eq!(back, answer);
}

// ---------------------------------------------------------------------------------------------
// Netlink
// ---------------------------------------------------------------------------------------------

/// A netlink receive buffer, through every decoder the daemon has: `[ifindex] buffer`.
/// Neighbour events are then folded into the MAC table the resolver keeps.
pub fn netlink(data: &[u8]) {
    let mut input = Input(data);
    let ifindex = u32::from(input.byte());
    let buf = input.rest();
    let mut consumed = 0usize;
    for m in netlink::messages(buf) {
        let Ok((h, payload)) = m else {
            break;
        };
        assert_eq!(payload.len() + 16, h.length as usize);
        let at = payload.as_ptr() as usize - buf.as_ptr() as usize;
        assert_eq!(at, consumed + 16, "messages are consecutive");
        consumed = (at + payload.len()).next_multiple_of(4).min(buf.len());
        if let Ok(Some(Control::Error { errno, message })) = netlink::parse_control(&h, payload) {
            assert!(errno > 0, "an error with errno {errno}");
            assert!(message.is_none_or(|m| !m.is_empty()));
        }
        for a in netlink::attributes(payload) {
            let Ok(a) = a else {
                break;
            };
            let v = a.value();
            let off = v.as_ptr() as usize - payload.as_ptr() as usize;
            assert!(off + v.len() <= payload.len());
        }
        if let Ok(Some(a)) = lb_daemon::netlink::addr::parse_address_message(&h, payload) {
            let max = if a.addr.is_ipv4() { 32 } else { 128 };
            assert!(a.prefix_len <= max);
        }
        let _ = netlink::link::decode_link(h.message_type, payload, ifindex);
        // `[announce]`'s routes: one decoded re-encodes to a request that decodes the same.
        let table = u32::from(input_table(ifindex));
        if let Ok(Some(r)) = netlink::route::decode(&h, payload, table, 250) {
            assert_eq!(r.table, table);
            let again = netlink::route::encode_add(1, &r);
            let (mut h2, p2, _) = netlink::split_message(&again).expect("a request frames");
            h2.message_type = h.message_type;
            assert_eq!(
                netlink::route::decode(&h2, p2, table, 250).expect("re-encoded"),
                Some(r),
                "a host route re-encodes"
            );
        }
    }
    let _ = lb_daemon::netlink::addr::parse_address_messages(buf);
    let per_message: Vec<_> = neigh::parse_messages(buf).collect();
    let Ok(batch) = neigh::parse_neigh_messages(buf) else {
        return;
    };
    let events: Vec<NeighEvent> = per_message
        .iter()
        .filter_map(|m| match m {
            Ok((_, neigh::NlMessage::Neigh(ev))) => Some(*ev),
            _ => None,
        })
        .collect();
    assert_eq!(batch.events, events);
    for ev in &batch.events {
        let again = neigh::parse_neigh_messages(&encode_neigh(ev)).expect("re-encoded");
        assert_eq!(again.events, [*ev], "a neighbour event re-encodes");
    }
    mac_table(&batch.events);
}

/// The table a route must be in: small ones mostly, and once in a while one past a byte.
fn input_table(ifindex: u32) -> u16 {
    match ifindex {
        0 => 300,
        n => n as u16,
    }
}

/// `ev` as the kernel would send it.
pub fn encode_neigh(ev: &NeighEvent) -> Vec<u8> {
    let mut m = NeighbourMessage::default();
    m.header.family = if ev.addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = ev.ifindex;
    m.header.state = NeighbourState::from(ev.state);
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            ev.addr,
        )));
    if let Some(mac) = ev.mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    let msg = if ev.deleted {
        RouteNetlinkMessage::DelNeighbour(m)
    } else {
        RouteNetlinkMessage::NewNeighbour(m)
    };
    netlink::encode(msg, 0, 0)
}

/// The resolver's table, fed the events: a wanted backend's MAC is what its latest event
/// says, and only a usable (unicast, non-zero) one.
fn mac_table(events: &[NeighEvent]) {
    let now = Instant::now();
    let wanted: HashMap<IpAddr, u32> = events.iter().map(|e| (e.addr, e.ifindex)).collect();
    let mut t = MacTable::new(MacResolverConfig::default());
    t.set_wanted(&wanted, now);
    for ev in events {
        let update = t.apply(ev, now);
        if wanted.get(&ev.addr) == Some(&ev.ifindex) {
            let want = neigh::usable_mac(ev);
            assert_eq!(t.mac(&ev.addr), want);
            if let Some(u) = update {
                assert_eq!(
                    u,
                    MacUpdate {
                        addr: ev.addr,
                        mac: want
                    }
                );
            }
        } else {
            assert_eq!(update, None);
        }
    }
    for mac in t.macs().values() {
        assert!(*mac != [0; 6] && mac[0] & 1 == 0, "{mac:02x?}");
    }
    let _ = t.due_requests(now + Duration::from_secs(60));
    // A dump without some wanted entries: those are gone.
    let dump = &events[..events.len() / 2];
    t.apply_dump(dump, now);
    let listed: HashSet<(IpAddr, u32)> = dump.iter().map(|e| (e.addr, e.ifindex)).collect();
    for (addr, ifindex) in &wanted {
        if !listed.contains(&(*addr, *ifindex)) {
            assert_eq!(t.mac(addr), None, "{addr} is not in the dump");
        }
    }
}
