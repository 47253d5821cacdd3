//! Seed inputs of the fuzz targets, in each target's input layout (see `checks.rs`): the
//! golden vectors of the codecs' unit tests, the test corpora of the repository, and messages
//! made with the daemon's own encoders. Generated rather than committed, so they follow the
//! corpora and the encoders; `cargo xtask fuzz` writes them into `fuzz/corpus/<target>/`.
use std::{
    io,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use lb_daemon::{
    import::keywords,
    netlink,
    netlink::neigh::{self, NeighEvent, NUD_REACHABLE, NUD_STALE},
    sync::codec::{self, Ack, DataBuilder, Header, Key, WireEntry, WireRef},
};

use netlink_packet_core::{
    DefaultNla, DoneMessage, Emitable, ErrorMessage, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    AddressFamily, RouteNetlinkMessage,
};

use super::checks::{encode_neigh, SYNC_ID, SYNC_KEY};

// Copied from the tests of lb-daemon/src/vrrp/packet.rs (which say how each was made): three
// written by hand, five captured from keepalived 2.2.7. The IPv4 and IPv6 captures include
// the IP header.
const HAND_V2: &str = "21 07 64 02 01 03 85 65  c0 00 02 0a  c0 00 02 0b  70 77 00 00 00 00 00 00";
const HAND_V3_V4: &str = "31 c8 ff 01 00 32 02 36  c6 33 64 07";
const HAND_V3_V6: &str = "31 01 00 02 0f ff 94 91
    fe 80 00 00 00 00 00 00 00 00 00 00 00 00 00 01
    20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01";
const KA_V2: &str = "45c0 0028 0001 0000 ff70 1891 c000 0201
                     e000 0012 2133 9601 0101 17e7 c000 0264
                     7365 6372 6574 3132";
const KA_V3_V4: &str = "45c0 0020 0001 0000 ff70 1899 c000 0201
                        e000 0012 3133 9601 0064 d371 c000 0264";
const KA_V3_V6: &str = "6c0e 3eb9 0018 70ff fe80 0000 0000 0000
                        ec02 84ff fe7c e349 ff02 0000 0000 0000
                        0000 0000 0000 0012 3133 9601 0064 b8c6
                        2001 0db8 0000 0000 0000 0000 0000 0100";
const KA_V3_V4_TWO: &str = "45c0 0024 0003 0000 ff70 1893 c000 0201
                            e000 0012 3133 9602 0064 1107 c000 0264
                            c000 0265";
const KA_V3_V4_TWO_PRIO0: &str = "45c0 0024 0004 0000 ff70 1892 c000 0201
                                  e000 0012 3133 0002 0064 a707 c000 0264
                                  c000 0265";

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|p| {
            let v = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            v(p[0]) << 4 | v(p.get(1).copied().unwrap_or(b'0'))
        })
        .collect()
}

fn with(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(rest);
    v
}

/// The seeds of `target`; `root` is the repository (for the corpora).
pub fn seeds(target: &str, root: &Path) -> Vec<Vec<u8>> {
    match target {
        "vrrp_packet" => vrrp_packet(),
        "vrrp_check" => vrrp_check(),
        "sync_codec" => sync_messages()
            .into_iter()
            .flat_map(|m| [with(&[0], &m), with(&[1], &m)])
            .collect(),
        "sync_receiver" => sync_receiver(),
        "config" => files(root, &["examples", "lb-daemon/tests/bad-configs"], "toml")
            .into_iter()
            .chain(files(
                root,
                &[
                    "lb-daemon/tests/keepalived/good",
                    "lb-daemon/tests/keepalived/seed",
                ],
                "toml",
            ))
            .collect(),
        "import" => files(root, &["lb-daemon/tests/keepalived"], "")
            .into_iter()
            .map(|f| with(&[0], &f))
            .collect(),
        "http_reply" => http_reply(),
        "control_request" => [
            &b"\0{\"cmd\":\"status\"}\n"[..],
            b"\0{\"cmd\":\"reload\"}\r\n{\"cmd\":\"status\"}\n",
            b"\0  \n{\"cmd\":\"stop\"}\n{\"cmd\":7}\nnot json\n",
            b"\x10{\"cmd\":\"status\",\"extra\":[1,2,{}]}\n",
            b"\x08{\"cmd\":\"status\"}\n",
            b"\0{\"cmd\":\"st\\u0061tus\"}\n{\"cmd\":\"status\"",
        ]
        .iter()
        .map(|s| s.to_vec())
        .collect(),
        "netlink" => netlink(),
        _ => Vec::new(),
    }
}

/// Writes the seeds of `target` into `dir` (named by content, so a second run adds nothing);
/// returns how many were new.
pub fn write(target: &str, dir: &Path, root: &Path) -> io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut new = 0;
    for s in seeds(target, root) {
        let path = dir.join(format!("seed-{:016x}", fnv(&s)));
        if !path.exists() {
            std::fs::write(&path, &s)?;
            new += 1;
        }
    }
    Ok(new)
}

/// libFuzzer dictionary words: for the text formats keepalived's keywords (which are also
/// lb-daemon's TOML keys) and the syntax around them, for the others their magic numbers and
/// header words.
pub fn dict(target: &str) -> Vec<Vec<u8>> {
    let keywords = || {
        keywords::SUPPORTED
            .iter()
            .flat_map(|(block, kws)| std::iter::once(*block).chain(kws.iter().copied()))
    };
    let extra: &[&[u8]] = match target {
        "import" => &[
            b"{",
            b"}",
            b"\n",
            b"include ",
            b"MASTER",
            b"BACKUP",
            b"PASS",
            b"DR",
            b"rr",
            b"wrr",
            b"mh",
            b"TCP",
            b"UDP",
            b"192.0.2.1",
            b"2001:db8::1",
            b"/24",
            b"dev eth0",
            b" weight ",
            b"#",
            b"!",
        ],
        "config" => &[
            b"[global_defs]",
            b"[dataplane]",
            b"[sync]",
            b"[[vrrp_instance]]",
            b"[[vrrp_script]]",
            b"[[vrrp_sync_group]]",
            b"[[virtual_server]]",
            b"[[virtual_server.real_server]]",
            b"[virtual_server.real_server.TCP_CHECK]",
            b" = ",
            b"\"",
            b"[",
            b"]",
            b"true",
            b"false",
            b"\"192.0.2.1\"",
            b"\"2001:db8::1\"",
            b"\"MASTER\"",
            b"\"rr\"",
            b"\"mh\"",
            b"\"DR\"",
            b"\"TCP\"",
            b"\"eth0\"",
        ],
        "http_reply" => &[
            b"HTTP/1.1 ",
            b"HTTP/1.0 ",
            b"200 OK",
            b"\r\n",
            b"\r\n\r\n",
            b"Content-Length: ",
            b"Transfer-Encoding: ",
            b"chunked",
            b"0\r\n\r\n",
            b";ext=1",
            b"Connection: close",
        ],
        "control_request" => &[
            b"{\"cmd\":",
            b"\"status\"",
            b"\"reload\"",
            b"}",
            b"\n",
            b"\r\n",
            b"\\u00",
        ],
        "vrrp_packet" | "vrrp_check" => &[
            b"\x21",
            b"\x31",
            b"\x45\xc0",
            b"\xe0\x00\x00\x12",
            b"\xff\x70",
        ],
        "sync_codec" | "sync_receiver" => &[b"LS\x11", b"LS\x12", b"\x26", b"\x80", b"\x01\x06"],
        "netlink" => &[
            b"\x1c\x00",
            b"\x1d\x00",
            b"\x02\x00",
            b"\x03\x00",
            b"\x14\x00",
            b"\x10\x00",
        ],
        _ => &[],
    };
    let mut words: Vec<Vec<u8>> = match target {
        "import" | "config" => keywords().map(|k| k.as_bytes().to_vec()).collect(),
        _ => Vec::new(),
    };
    words.extend(extra.iter().map(|w| w.to_vec()));
    words.sort();
    words.dedup();
    words
}

/// Writes [`dict`] as a libFuzzer dictionary file.
pub fn write_dict(target: &str, path: &Path) -> io::Result<()> {
    let mut out = String::new();
    for w in dict(target) {
        out.push('"');
        for &b in &w {
            match b {
                b'"' | b'\\' => out.push_str(&format!("\\x{b:02x}")),
                0x20..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\x{b:02x}")),
            }
        }
        out.push_str("\"\n");
    }
    std::fs::write(path, out)
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The files under `dirs` of `root` (recursively) whose name ends in `ext` (any for "").
fn files(root: &Path, dirs: &[&str], ext: &str) -> Vec<Vec<u8>> {
    fn walk(d: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, ext, out);
            } else if ext.is_empty() || p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    for d in dirs {
        walk(&root.join(d), ext, &mut paths);
    }
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// `[address pair] message`, for the golden vectors and with their checksums to be fixed.
fn vrrp_packet() -> Vec<Vec<u8>> {
    let v4 = |h: &str| hex(h)[20..].to_vec();
    let v6 = |h: &str| hex(h)[40..].to_vec();
    let golden = [
        (0, hex(HAND_V2)),
        (0, hex(HAND_V3_V4)),
        (1, hex(HAND_V3_V6)),
        (2, v4(KA_V2)),
        (2, v4(KA_V3_V4)),
        (3, v6(KA_V3_V6)),
        (2, v4(KA_V3_V4_TWO)),
        (2, v4(KA_V3_V4_TWO_PRIO0)),
    ];
    golden
        .iter()
        .flat_map(|(pair, m)| {
            [
                with(&[*pair], m),
                with(&[*pair | 4], m),
                with(&[*pair | 12], m),
            ]
        })
        .collect()
}

/// The keepalived captures with a receiver configured as their peer (see `checks::vrrp_check`
/// for the layout).
fn vrrp_check() -> Vec<Vec<u8>> {
    let cfg = |options: u8, password: &[u8; 8], priority: u8| {
        let mut v = vec![options, 51, 0, 100];
        v.extend_from_slice(password);
        v.push(priority);
        v
    };
    let v6 = hex(KA_V3_V6);
    let mut v6_input = cfg(0b11, &[0; 8], 100);
    v6_input.push(v6[7]);
    v6_input.extend_from_slice(&v6[8..24]);
    v6_input.extend_from_slice(&v6[40..]);
    vec![
        with(&cfg(0b100, b"secret12", 100), &hex(KA_V2)),
        with(&cfg(0b1_0100, b"secret12", 200), &hex(KA_V2)),
        with(&cfg(0b10, &[0; 8], 100), &hex(KA_V3_V4)),
        with(&cfg(0b10, &[0; 8], 0), &hex(KA_V3_V4_TWO)),
        with(&cfg(0b10_0010, &[0; 8], 254), &hex(KA_V3_V4_TWO_PRIO0)),
        with(&cfg(0b1010, &[0; 8], 100), &hex(KA_V3_V4)),
        v6_input,
    ]
}

/// The codec's golden messages (its unit tests' key, sync id and contents) and an IPv6 one.
pub fn sync_messages() -> Vec<Vec<u8>> {
    let key = Key::new(SYNC_KEY).expect("a long key");
    let header = Header {
        msg_type: codec::TYPE_DATA,
        flags: 0,
        sync_id: SYNC_ID,
        boot_id: 0x0102_0304,
        seq: 7,
        send_ms: 0x0a0b_0c0d,
    };
    let ref4 = |rs: u8| WireRef {
        proto: 6,
        vip: "192.0.2.100".parse().expect("an address"),
        vport: 80,
        rip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, rs)),
        rport: 80,
    };
    let flow4 = |last: u8, cport: u16| WireEntry {
        kind: codec::ENTRY_FLOW,
        refresh: false,
        age_s: 3,
        cport,
        dport: 80,
        caddr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)),
    };
    let mut b = DataBuilder::new(codec::DEFAULT_MAX_MESSAGE);
    b.push(11, &ref4(11), &flow4(7, 40000));
    b.push(
        11,
        &ref4(11),
        &WireEntry {
            refresh: true,
            ..flow4(8, 40001)
        },
    );
    b.push(
        12,
        &ref4(12),
        &WireEntry {
            kind: codec::ENTRY_TEMPLATE,
            refresh: false,
            age_s: 0,
            cport: 0,
            dport: 0,
            caddr: "198.51.100.0".parse().expect("an address"),
        },
    );
    let data = b.seal(&header, &key);
    let ack = codec::encode_ack(
        &Header {
            msg_type: codec::TYPE_ACK,
            flags: codec::F_REQUEST_FULL,
            boot_id: 0x1111_2222,
            seq: 1,
            ..header
        },
        &Ack {
            acked_boot: 0x0102_0304,
            acked_seq: 7,
            echo_ms: 0x0a0b_0c0d,
            held_ms: 250,
        },
        &key,
    );
    let r6 = WireRef {
        proto: 17,
        vip: "2001:db8::100".parse().expect("an address"),
        vport: 0,
        rip: "2001:db8::11".parse().expect("an address"),
        rport: 0,
    };
    let e6 = WireEntry {
        kind: codec::ENTRY_FLOW,
        refresh: false,
        age_s: 65535,
        cport: 5353,
        dport: 53,
        caddr: "2001:db8:1::7".parse().expect("an address"),
    };
    let mut b = DataBuilder::new(codec::DEFAULT_MAX_MESSAGE);
    b.push(1, &r6, &e6);
    b.push(2, &ref4(11), &flow4(1, 1));
    let mixed = b.seal(&header, &key);
    vec![data, ack, mixed]
}

/// Runs of datagrams: `[only peers]` then records `[options] [length] bytes`.
fn sync_receiver() -> Vec<Vec<u8>> {
    let msgs = sync_messages();
    let record = |options: u8, bytes: &[u8]| {
        let mut v = vec![options, bytes.len().min(255) as u8];
        v.extend_from_slice(&bytes[..bytes.len().min(255)]);
        v
    };
    // Made-up entries for the example's services: [flags, boot, seq] then 8 bytes each.
    let synth = |boot: u8, seq: u8| {
        let mut v = vec![0, boot, seq];
        for i in 0..6u8 {
            v.extend_from_slice(&[i, i & 1, 0, 3, 0x9c, 0x40 + i, 7 + i, 80]);
        }
        v
    };
    let mut out = Vec::new();
    for only_peers in [0u8, 16] {
        let mut run = vec![only_peers];
        for m in &msgs {
            run.extend(record(0, m));
        }
        run.extend(record(8, &synth(1, 1)));
        run.extend(record(8, &synth(1, 3)));
        run.extend(record(9, &synth(1, 2)));
        run.extend(record(8, &synth(2, 1)));
        run.extend(record(2, &msgs[0]));
        run.extend(record(3, &msgs[1]));
        run.extend(record(4, &msgs[2]));
        out.push(run);
    }
    out
}

/// `[cut] reply`: the replies of the HTTP parser's unit tests.
fn http_reply() -> Vec<Vec<u8>> {
    let replies: [&[u8]; 14] = [
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 404 Not Found\r\nServer: x\r\nContent-Length:0\r\n\r\n",
        b"HTTP/1.1 200 OK\n\n",
        b"HTTP/1.1 503 Service\tUnavailable \xc3\xa9\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
          5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n3\r\nOK-\r\n3\r\nGOO\r\n1\nD\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 599 x\r\nX-Empty:\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
    ];
    replies
        .iter()
        .flat_map(|r| [with(&[255], r), with(&[128], r), with(&[30], r)])
        .collect()
}

/// `[ifindex] buffer` of what the kernel sends: neighbour dumps and events, ACKs and errors,
/// addresses, and a link with an XDP program.
fn netlink() -> Vec<Vec<u8>> {
    let ev = |addr: &str, mac: Option<[u8; 6]>, state: u16, deleted: bool| NeighEvent {
        ifindex: 3,
        addr: addr.parse().expect("an address"),
        mac,
        state,
        deleted,
    };
    let mut dump = Vec::new();
    for e in [
        ev(
            "192.0.2.11",
            Some([2, 0, 0, 0, 0, 11]),
            NUD_REACHABLE,
            false,
        ),
        ev("192.0.2.12", Some([2, 0, 0, 0, 0, 12]), NUD_STALE, false),
        ev("192.0.2.13", None, neigh::NUD_FAILED, false),
        ev(
            "2001:db8::11",
            Some([2, 0, 0, 0, 0, 0x11]),
            NUD_REACHABLE,
            false,
        ),
        ev("192.0.2.12", None, NUD_REACHABLE, true),
        ev("192.0.2.14", Some([0xff; 6]), neigh::NUD_NOARP, false),
    ] {
        dump.extend(encode_neigh(&e));
    }
    let control = |payload: NetlinkPayload<RouteNetlinkMessage>, flags: u16| {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = 9;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    };
    let mut done = DoneMessage::default();
    done.code = 0;
    dump.extend(control(NetlinkPayload::Done(done), 0));
    // An error with its request echoed, capped, and an extended-ACK message.
    let mut err = ErrorMessage::default();
    err.code = std::num::NonZeroI32::new(-19);
    err.header =
        neigh::encode_resolve_request(9, 3, "192.0.2.11".parse().expect("ip"))[..16].to_vec();
    let msg = [DefaultNla::new(
        netlink::NLMSGERR_ATTR_MSG,
        b"Device not found\0".to_vec(),
    )];
    let at = err.header.len();
    err.header.resize(at + msg.as_slice().buffer_len(), 0);
    msg.as_slice().emit(&mut err.header[at..]);
    let error = control(
        NetlinkPayload::Error(err),
        netlink::NLM_F_CAPPED | netlink::NLM_F_ACK_TLVS,
    );
    let mut ack = ErrorMessage::default();
    ack.header = vec![0; 16];
    let ack = control(NetlinkPayload::Error(ack), 0);
    // RTM_NEWADDR (20): ifaddrmsg, IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_FLAGS.
    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = 24;
    addr.header.flags = AddressHeaderFlags::from_bits_retain(0x80);
    addr.header.index = 3;
    let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));
    addr.attributes = vec![
        AddressAttribute::Address(a),
        AddressAttribute::Local(a),
        AddressAttribute::Label("eth0".into()),
        AddressAttribute::Flags(AddressFlags::from_bits_retain(0x80)),
    ];
    let addr = netlink::encode(RouteNetlinkMessage::NewAddress(addr), 0, 0);
    // RTM_NEWLINK (16): ifinfomsg of ifindex 3, IFLA_XDP { ATTACHED = 1, PROG_ID = 42 }.
    let xdp = [LinkXdp::Attached(XdpAttached::Driver), LinkXdp::ProgId(42)];
    let mut nested = vec![0; xdp.as_slice().buffer_len()];
    xdp.as_slice().emit(&mut nested);
    let mut link = LinkMessage::default();
    link.header.index = 3;
    link.attributes
        .push(LinkAttribute::Other(DefaultNla::new(43 | 0x8000, nested)));
    let link = netlink::encode(RouteNetlinkMessage::NewLink(link), 0, 0);
    // RTM_NEWROUTE (24) as the kernel answers a dump: `[announce]`'s host route in table 100
    // (the first byte picks the table), IPv4 and IPv6; the request's type is 24 too.
    let route = |addr: &str| {
        netlink::route::encode_add(
            0,
            &netlink::route::HostRoute {
                addr: addr.parse().expect("an address"),
                ifindex: 4,
                table: 100,
                protocol: 250,
            },
        )
    };
    vec![
        with(&[3], &dump),
        with(&[3], &error),
        with(&[3], &ack),
        with(&[3], &addr),
        with(&[3], &link),
        with(&[100], &route("203.0.113.10")),
        with(&[100], &route("2001:db8::10")),
        with(&[3], &neigh::encode_dump_request(1, netlink::AF_UNSPEC)),
    ]
}
