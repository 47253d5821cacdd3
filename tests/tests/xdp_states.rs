//! Connection states, their timeouts, the backends' connection counts, the count-based
//! schedulers and the SYN-flood guard, on the real XDP object through BPF_PROG_TEST_RUN:
//! every transition of IPVS's input-only TCP table the program can meet, each state's
//! timeout, IPv4 and IPv6, under rr and wlc.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{
    conn_state::{self, *},
    reason::{self, *},
    FlowValue,
};
use lb_daemon::{
    dataplane::{flows::FlowTables, BackendSpec, ServiceSpec},
    model::{Forward, LvsTimeouts, Proto, Scheduler},
};
use lb_tests::{
    netns::require_root,
    packet::{
        ether, tcp, udp, Ipv4, Ipv6, ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    xdp::{
        addrs::{B, CLIENT4, CLIENT6, CLIENT_MAC, VIP4, VIP6},
        pin_cpu0, small_options, XdpHarness, LB_MAC,
    },
};

/// The clock the cases start at.
const T0: u32 = 10_000;

#[derive(Clone, Copy, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn vip(self) -> IpAddr {
        match self {
            Family::V4 => VIP4.into(),
            Family::V6 => VIP6.into(),
        }
    }

    fn client(self, n: u16) -> IpAddr {
        match self {
            Family::V4 => {
                let [a, b, c, _] = CLIENT4.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, (n % 250 + 1) as u8))
            }
            Family::V6 => {
                let s = CLIENT6.segments();
                IpAddr::V6(Ipv6Addr::new(
                    s[0],
                    s[1],
                    s[2],
                    s[3],
                    0,
                    0,
                    n >> 8,
                    n & 0xff,
                ))
            }
        }
    }

    fn backend(self, i: usize) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i as u8)),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11 + i as u16)),
        }
    }
}

fn service(f: Family, proto: Proto, sched: Scheduler, weights: &[u32]) -> ServiceSpec {
    let port = if proto == Proto::Udp { 53 } else { 80 };
    ServiceSpec {
        vip: f.vip(),
        port,
        proto,
        sched,
        hash_port: false,
        sloppy_tcp: true,
        mh_table_size: lb_tests::xdp::MH_TABLE_SIZE,
        persistence_timeout: 0,
        persistence_prefix: if matches!(f, Family::V4) { 32 } else { 128 },
        idle_timeout: proto.default_idle_timeout(),
        active: true,
        aliases: Vec::new(),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| BackendSpec {
                addr: SocketAddr::new(f.backend(i), port),
                weight,
                mac: Some(B[i]),
                thresholds: Default::default(),
                forward: Forward::Dr,
            })
            .collect(),
    }
}

fn frame(f: Family, client: IpAddr, sport: u16, proto: Proto, flags: u8) -> Vec<u8> {
    let dport = if proto == Proto::Udp { 53 } else { 80 };
    match (f, client) {
        (Family::V4, IpAddr::V4(c)) => {
            let ip = Ipv4::new(c, VIP4, proto.number());
            let l4 = match proto {
                Proto::Tcp => tcp(ip.addrs(), sport, dport, flags, b""),
                Proto::Udp => udp(ip.addrs(), sport, dport, b"q"),
            };
            ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&l4))
        }
        (Family::V6, IpAddr::V6(c)) => {
            let ip = Ipv6::new(c, VIP6, proto.number());
            let l4 = match proto {
                Proto::Tcp => tcp(ip.addrs(), sport, dport, flags, b""),
                Proto::Udp => udp(ip.addrs(), sport, dport, b"q"),
            };
            ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&l4))
        }
        _ => unreachable!("the client is of the family"),
    }
}

struct Case {
    h: XdpHarness,
    flows: FlowTables,
    f: Family,
    spec: ServiceSpec,
}

impl Case {
    fn new(f: Family, spec: ServiceSpec) -> Option<Case> {
        if !require_root("xdp state fixtures") {
            return None;
        }
        pin_cpu0();
        let mut h = XdpHarness::new(small_options()).expect("load the XDP object");
        h.dp.update(std::slice::from_ref(&spec))
            .expect("write the maps");
        h.set_clock(T0).unwrap();
        let flows = FlowTables::take(&mut h.ebpf).expect("the flow tables");
        Some(Case { h, flows, f, spec })
    }

    /// Runs one frame, checks the reason it was counted under and the exact bytes sent;
    /// returns the backend index it went to. The count-based schedulers are ranked first,
    /// as the daemon does every 20 ms.
    fn send(&mut self, what: &str, frame: &[u8], want: u32) -> Option<usize> {
        self.h.dp.rank();
        let before = self.h.dp.writer().reason_counters().unwrap();
        let out = self.h.run(frame).unwrap();
        let after = self.h.dp.writer().reason_counters().unwrap();
        let bumped: Vec<&str> = (0..reason::COUNT)
            .filter(|&r| after[r as usize].packets != before[r as usize].packets)
            .map(reason::name)
            .collect();
        assert_eq!(bumped, [reason::name(want)], "{:?} {what}: reason", self.f);
        assert_eq!(out.verdict, reason::verdict(want), "{:?} {what}", self.f);
        if out.verdict != reason::XDP_TX {
            return None;
        }
        let i = B
            .iter()
            .position(|m| out.data[..6] == m[..])
            .expect("a backend's MAC");
        let mut want_bytes = frame.to_vec();
        want_bytes[..6].copy_from_slice(&B[i]);
        want_bytes[6..12].copy_from_slice(&LB_MAC);
        assert_eq!(
            out.data, want_bytes,
            "{:?} {what}: only the MACs change",
            self.f
        );
        Some(i)
    }

    fn tcp(&mut self, what: &str, client: u16, flags: u8, want: u32) -> Option<usize> {
        let frame = frame(
            self.f,
            self.f.client(client),
            1000 + client,
            Proto::Tcp,
            flags,
        );
        self.send(what, &frame, want)
    }

    fn flow(&self, client: u16, proto: Proto) -> Option<FlowValue> {
        let port = if proto == Proto::Udp { 53 } else { 80 };
        self.flows
            .flow(
                proto.number(),
                SocketAddr::new(self.f.client(client), 1000 + client),
                SocketAddr::new(self.f.vip(), port),
            )
            .unwrap()
    }

    fn state(&self, client: u16) -> u32 {
        self.flow(client, Proto::Tcp).map_or(u32::MAX, |v| v.state)
    }

    /// (active, inactive) of backend index `i`.
    fn load(&self, i: usize) -> (u64, u64) {
        let (_, bids) = self.h.dp.ids_of(&self.spec).unwrap();
        self.h.dp.writer().load(bids[i])
    }

    fn embryonic(&self) -> i32 {
        self.h.dp.writer().guard().0
    }

    fn clock(&mut self, t: u32) {
        self.h.set_clock(t).unwrap();
    }
}

/// Every transition of IPVS's input-only table a client's packets can drive, with the
/// backend's ActiveConn/InActConn and the embryonic count after each.
#[test]
fn tcp_states_follow_ipvs_input_only_table() {
    for f in [Family::V4, Family::V6] {
        for sched in [Scheduler::Rr, Scheduler::Wlc] {
            let Some(mut c) = Case::new(f, service(f, Proto::Tcp, sched, &[1, 1, 1])) else {
                return;
            };
            let ctx = format!("{f:?} {sched:?}");
            // SYN: SYN_RECV, inactive, embryonic.
            let b = c.tcp("syn", 1, TCP_SYN, FWD_NEW_FLOW).unwrap();
            assert_eq!(c.state(1), SYN_RECV, "{ctx}");
            assert_eq!(c.load(b), (0, 1), "{ctx}");
            assert_eq!(c.embryonic(), 1, "{ctx}");
            // A retransmitted SYN: the same backend, nothing counted twice.
            assert_eq!(c.tcp("syn again", 1, TCP_SYN, FWD_ESTABLISHED), Some(b));
            assert_eq!(
                (c.state(1), c.load(b), c.embryonic()),
                (SYN_RECV, (0, 1), 1)
            );
            // The client's ACK: ESTABLISHED, active.
            assert_eq!(c.tcp("ack", 1, TCP_ACK, FWD_ESTABLISHED), Some(b));
            assert_eq!(
                (c.state(1), c.load(b), c.embryonic()),
                (ESTABLISHED, (1, 0), 0)
            );
            assert_eq!(c.tcp("data", 1, TCP_ACK, FWD_ESTABLISHED), Some(b));
            assert_eq!(c.state(1), ESTABLISHED, "{ctx}");
            // The client closes: FIN_WAIT (input-only: the server's FIN is never seen).
            assert_eq!(c.tcp("fin", 1, TCP_FIN | TCP_ACK, FWD_ESTABLISHED), Some(b));
            assert_eq!((c.state(1), c.load(b)), (FIN_WAIT, (0, 1)), "{ctx}");
            assert_eq!(c.tcp("last ack", 1, TCP_ACK, FWD_ESTABLISHED), Some(b));
            assert_eq!(c.state(1), FIN_WAIT, "{ctx}");
            // A SYN reusing the port in FIN_WAIT keeps the backend (IPVS's conn_reuse_mode
            // 1): SYN_RECV again.
            assert_eq!(
                c.tcp("reuse in fin_wait", 1, TCP_SYN, FWD_ESTABLISHED),
                Some(b)
            );
            assert_eq!(
                (c.state(1), c.load(b), c.embryonic()),
                (SYN_RECV, (0, 1), 1)
            );
            // A RST in SYN_RECV leaves it there (input-only table).
            assert_eq!(
                c.tcp("rst in syn_recv", 1, TCP_RST, FWD_ESTABLISHED),
                Some(b)
            );
            assert_eq!(c.state(1), SYN_RECV, "{ctx}");
            assert_eq!(c.tcp("ack", 1, TCP_ACK, FWD_ESTABLISHED), Some(b));
            assert_eq!((c.state(1), c.load(b)), (ESTABLISHED, (1, 0)), "{ctx}");
            // A RST closes: CLOSE, inactive.
            assert_eq!(c.tcp("rst", 1, TCP_RST | TCP_ACK, FWD_ESTABLISHED), Some(b));
            assert_eq!((c.state(1), c.load(b)), (CLOSE, (0, 1)), "{ctx}");
            // A segment without any of the four flags closes too (IPVS).
            assert_eq!(c.tcp("no flags", 1, 0, FWD_ESTABLISHED), Some(b));
            assert_eq!(c.state(1), CLOSE, "{ctx}");
            // A SYN on a closed connection is a new one, scheduled afresh: the old entry's
            // count goes, the new one's comes.
            let n = c.tcp("syn after close", 1, TCP_SYN, FWD_NEW_FLOW).unwrap();
            assert_eq!(c.state(1), SYN_RECV, "{ctx}");
            let total: (u64, u64) = (0..3).fold((0, 0), |acc, i| {
                let l = c.load(i);
                (acc.0 + l.0, acc.1 + l.1)
            });
            assert_eq!(total, (0, 1), "{ctx}: one connection, inactive");
            assert_eq!(c.load(n), (0, 1), "{ctx}");
            // FIN on SYN_RECV: TIME_WAIT; a SYN then reschedules too.
            c.tcp("fin in syn_recv", 1, TCP_FIN | TCP_ACK, FWD_ESTABLISHED);
            assert_eq!((c.state(1), c.embryonic()), (TIME_WAIT, 0), "{ctx}");
            c.tcp("syn after time_wait", 1, TCP_SYN, FWD_NEW_FLOW);
            assert_eq!(c.state(1), SYN_RECV, "{ctx}");
            // Sloppy TCP: an ACK of an unknown connection opens it ESTABLISHED, a FIN CLOSE.
            let m = c
                .tcp("midstream ack", 2, TCP_ACK, FWD_NEW_FLOW_MIDSTREAM)
                .unwrap();
            assert_eq!(c.state(2), ESTABLISHED, "{ctx}");
            assert_eq!(c.load(m).0, 1, "{ctx}");
            c.tcp(
                "midstream fin",
                3,
                TCP_FIN | TCP_ACK,
                FWD_NEW_FLOW_MIDSTREAM,
            );
            assert_eq!(c.state(3), CLOSE, "{ctx}");
            // A RST of an unknown connection opens nothing.
            c.tcp("midstream rst", 4, TCP_RST, PASS_NOT_SYN);
            assert_eq!(c.state(4), u32::MAX, "{ctx}");
        }
    }
}

/// UDP flows are inactive connections in state UDP.
#[test]
fn udp_flows_count_as_inactive() {
    for f in [Family::V4, Family::V6] {
        let Some(mut c) = Case::new(f, service(f, Proto::Udp, Scheduler::Wlc, &[1, 1])) else {
            return;
        };
        let frame = frame(f, f.client(1), 1001, Proto::Udp, 0);
        let b = c.send("datagram", &frame, FWD_NEW_FLOW).unwrap();
        assert_eq!(c.flow(1, Proto::Udp).unwrap().state, conn_state::UDP);
        assert_eq!(c.load(b), (0, 1));
        assert_eq!(c.send("again", &frame, FWD_ESTABLISHED), Some(b));
        assert_eq!(c.load(b), (0, 1));
    }
}

/// (client, what brings it to the state, the state, its timeout, a packet that leaves it
/// there, the reason that packet gets once expired).
type TimeoutCase = (u16, &'static [u8], u32, u32, u8, u32);

/// Each state's timeout, exactly: a packet at `timeout` seconds of idleness still finds
/// the flow, one a second later starts a new one; `lvs_timeouts` moves them; and the sweep
/// removes what expired and puts the counts right.
#[test]
fn each_state_expires_at_its_timeout() {
    for f in [Family::V4, Family::V6] {
        for sched in [Scheduler::Rr, Scheduler::Wlc] {
            let Some(mut c) = Case::new(f, service(f, Proto::Tcp, sched, &[1, 1, 1])) else {
                return;
            };
            let ctx = format!("{f:?} {sched:?}");
            // (client, what brings it to the state, the state, its timeout, a packet that
            // leaves it there, the reason that packet gets once expired)
            let cases: [TimeoutCase; 4] = [
                (
                    10,
                    &[TCP_SYN, TCP_ACK],
                    ESTABLISHED,
                    900,
                    TCP_ACK,
                    FWD_NEW_FLOW_MIDSTREAM,
                ),
                (11, &[TCP_SYN], SYN_RECV, 60, TCP_SYN, FWD_NEW_FLOW),
                (
                    12,
                    &[TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK],
                    FIN_WAIT,
                    120,
                    TCP_ACK,
                    FWD_NEW_FLOW_MIDSTREAM,
                ),
                (
                    13,
                    &[TCP_SYN, TCP_ACK, TCP_RST],
                    CLOSE,
                    10,
                    TCP_ACK,
                    FWD_NEW_FLOW_MIDSTREAM,
                ),
            ];
            let mut t = T0;
            for (client, steps, state, timeout, keep, expired) in cases {
                t += 10_000;
                c.clock(t);
                for (k, &flags) in steps.iter().enumerate() {
                    let want = if k == 0 {
                        FWD_NEW_FLOW
                    } else {
                        FWD_ESTABLISHED
                    };
                    c.tcp("set-up", client, flags, want);
                }
                assert_eq!(c.state(client), state, "{ctx}");
                c.clock(t + timeout);
                c.tcp("at its timeout", client, keep, FWD_ESTABLISHED);
                assert_eq!(c.state(client), state, "{ctx} {}", conn_state::name(state));
                c.clock(t + 2 * timeout + 1);
                c.tcp("past its timeout", client, keep, expired);
            }
            // lvs_timeouts' tcpfin: FIN_WAIT now lasts 30 s.
            let lvs = LvsTimeouts {
                tcpfin: Some(30),
                ..LvsTimeouts::default()
            };
            c.h.dp.writer_mut().set_timeouts(&lvs.per_state()).unwrap();
            t += 10_000;
            c.clock(t);
            for (k, flags) in [TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK]
                .into_iter()
                .enumerate()
            {
                c.tcp(
                    "set-up",
                    20,
                    flags,
                    if k == 0 {
                        FWD_NEW_FLOW
                    } else {
                        FWD_ESTABLISHED
                    },
                );
            }
            c.clock(t + 31);
            c.tcp("fin_wait past 30 s", 20, TCP_ACK, FWD_NEW_FLOW_MIDSTREAM);

            // The sweep: flows past their timeouts go, the counts follow the table. Three
            // connections: one established, one closed, one waiting for its ACK.
            let Some(mut c) = Case::new(f, service(f, Proto::Tcp, sched, &[1])) else {
                return;
            };
            c.tcp("syn", 30, TCP_SYN, FWD_NEW_FLOW);
            c.tcp("ack", 30, TCP_ACK, FWD_ESTABLISHED);
            c.tcp("syn", 31, TCP_SYN, FWD_NEW_FLOW);
            c.tcp("ack", 31, TCP_ACK, FWD_ESTABLISHED);
            c.tcp("rst", 31, TCP_RST, FWD_ESTABLISHED);
            c.tcp("syn", 32, TCP_SYN, FWD_NEW_FLOW);
            assert_eq!((c.load(0), c.embryonic()), ((1, 2), 1), "{ctx}");
            c.clock(T0 + 11);
            let swept = c.h.dp.sweep(&c.flows).unwrap();
            assert_eq!(
                swept.swept.removed, 1,
                "{ctx}: the closed one, past its 10 s"
            );
            assert_eq!(c.state(31), u32::MAX, "{ctx}");
            assert_eq!((c.load(0), c.embryonic()), ((1, 1), 1), "{ctx}");
            c.clock(T0 + 61);
            let r = c.h.dp.sweep(&c.flows).unwrap();
            assert_eq!(
                (r.swept.removed, r.embryonic_expired, r.embryonic_lost),
                (1, 1, 0),
                "{ctx}: SYN_RECV's 60 s, never acknowledged"
            );
            assert_eq!((c.load(0), c.embryonic()), ((1, 0), 0), "{ctx}");
            // An embryonic flow the program counted but the table lost (an eviction) is
            // found gone, and the count put right.
            c.h.dp.writer().correct_embryonic(1);
            let r = c.h.dp.sweep(&c.flows).unwrap();
            assert_eq!((r.embryonic_lost, c.embryonic()), (1, 0), "{ctx}");
            // A count the program could not see go (an eviction) is put right.
            c.h.dp
                .writer()
                .correct_load(c.h.dp.ids_of(&c.spec).unwrap().1[0], (5, 7));
            c.h.dp.sweep(&c.flows).unwrap();
            assert_eq!(c.load(0), (1, 0), "{ctx}");
        }
    }
}

/// wlc, as IPVS: a server holding 50 established connections gets none of the next 30
/// while two others hold none; with weights 1:3 and equal established load, connections
/// (completed handshakes) bring the load to 1:3.
#[test]
fn wlc_takes_the_least_loaded_and_follows_weights() {
    for f in [Family::V4, Family::V6] {
        let Some(mut c) = Case::new(f, service(f, Proto::Tcp, Scheduler::Wlc, &[1, 1, 1])) else {
            return;
        };
        let (_, bids) = c.h.dp.ids_of(&c.spec).unwrap();
        // 50 established connections on the first server (what 50 long-lived clients left).
        c.h.dp.writer().correct_load(bids[0], (50, 0));
        let mut got = [0; 3];
        for n in 0..30 {
            let b = c.tcp("new", 100 + n, TCP_SYN, FWD_NEW_FLOW).unwrap();
            c.tcp("ack", 100 + n, TCP_ACK, FWD_ESTABLISHED);
            got[b] += 1;
        }
        assert_eq!(
            got,
            [0, 15, 15],
            "{f:?}: the idle servers take them, in turn"
        );

        let Some(mut c) = Case::new(f, service(f, Proto::Tcp, Scheduler::Wlc, &[1, 3])) else {
            return;
        };
        let (_, bids) = c.h.dp.ids_of(&c.spec).unwrap();
        c.h.dp.writer().correct_load(bids[0], (10, 0));
        c.h.dp.writer().correct_load(bids[1], (10, 0));
        for n in 0..40 {
            c.tcp("new", 200 + n, TCP_SYN, FWD_NEW_FLOW);
            c.tcp("ack", 200 + n, TCP_ACK, FWD_ESTABLISHED);
        }
        let (a0, a1) = (c.load(0).0, c.load(1).0);
        assert_eq!(a0 + a1, 60, "{f:?}");
        assert!(
            (14..=16).contains(&a0) && (44..=46).contains(&a1),
            "{f:?}: {a0}:{a1}"
        );
    }
}

/// A SYN flood: past the embryonic share, SYNs go out untracked (by a hash of their source
/// that their ACK finds again, sloppy or not), and established flows stay on their servers.
#[test]
fn a_syn_flood_never_pushes_established_flows_out() {
    for f in [Family::V4, Family::V6] {
        for sched in [Scheduler::Rr, Scheduler::Wlc] {
            let mut spec = service(f, Proto::Tcp, sched, &[1, 1, 1]);
            spec.sloppy_tcp = false;
            let Some(mut c) = Case::new(f, spec) else {
                return;
            };
            let ctx = format!("{f:?} {sched:?}");
            c.h.dp.writer().set_syn_cap(8);
            let mut established = Vec::new();
            for n in 0..5 {
                let b = c.tcp("syn", n, TCP_SYN, FWD_NEW_FLOW).unwrap();
                c.tcp("ack", n, TCP_ACK, FWD_ESTABLISHED);
                established.push((n, b));
            }
            // Spoofed SYNs: 8 fill the share, the rest are untracked.
            for n in 0..200u16 {
                let want = if n < 8 {
                    FWD_NEW_FLOW
                } else {
                    FWD_SYN_UNTRACKED
                };
                c.tcp("flood", 1000 + n, TCP_SYN, want);
            }
            assert_eq!(c.embryonic(), 8, "{ctx}");
            for &(n, b) in &established {
                assert_eq!(
                    c.tcp("established", n, TCP_ACK, FWD_ESTABLISHED),
                    Some(b),
                    "{ctx}"
                );
            }
            // A real client during the flood: its SYN untracked, its ACK scheduled by the
            // same hash (even without sloppy_tcp), then established.
            let b = c
                .tcp("client's syn", 3000, TCP_SYN, FWD_SYN_UNTRACKED)
                .unwrap();
            assert_eq!(c.state(3000), u32::MAX, "{ctx}: no entry");
            assert_eq!(
                c.tcp("client's ack", 3000, TCP_ACK, FWD_NEW_FLOW_MIDSTREAM),
                Some(b),
                "{ctx}"
            );
            assert_eq!(c.state(3000), ESTABLISHED, "{ctx}");
            assert_eq!(
                c.tcp("client's data", 3000, TCP_ACK, FWD_ESTABLISHED),
                Some(b)
            );
            // After the flood window (a SYN_RECV timeout), an unknown ACK is the stack's
            // again (this service is not sloppy).
            c.clock(T0 + 62);
            c.tcp("late ack", 3001, TCP_ACK, PASS_NOT_SYN);
        }
    }
}

/// `uthreshold`/`lthreshold`, IPVS's overload flag: at the upper threshold a server takes
/// no new connection, below the lower one (three quarters of the upper by default) again.
#[test]
fn an_overloaded_server_takes_nothing_until_below_its_lower_threshold() {
    for f in [Family::V4, Family::V6] {
        let mut spec = service(f, Proto::Tcp, Scheduler::Wlc, &[10, 1]);
        spec.backends[0].thresholds = lb_daemon::model::Thresholds { upper: 4, lower: 0 };
        let Some(mut c) = Case::new(f, spec) else {
            return;
        };
        let (_, bids) = c.h.dp.ids_of(&c.spec).unwrap();
        // The other holds 10 established connections: the first takes the new ones until
        // it holds 4.
        c.h.dp.writer().correct_load(bids[1], (10, 0));
        for n in 0..4 {
            assert_eq!(
                c.tcp("below the threshold", n, TCP_SYN, FWD_NEW_FLOW),
                Some(0)
            );
        }
        for n in 4..8 {
            assert_eq!(
                c.tcp("overloaded", n, TCP_SYN, FWD_NEW_FLOW),
                Some(1),
                "{f:?}"
            );
        }
        // Down to 3 (not below three quarters of 4): still overloaded.
        c.h.dp.writer().correct_load(bids[0], (0, -1));
        assert_eq!(c.tcp("3 of 4", 8, TCP_SYN, FWD_NEW_FLOW), Some(1), "{f:?}");
        // Down to 2: it takes connections again.
        c.h.dp.writer().correct_load(bids[0], (0, -1));
        assert_eq!(c.tcp("2 of 4", 9, TCP_SYN, FWD_NEW_FLOW), Some(0), "{f:?}");
    }
}

/// During a flood, a SYN whose flow the table holds (a retransmission) keeps its entry's
/// backend; a persistent service's untracked SYNs of one client all reach one backend.
#[test]
fn a_flood_keeps_existing_entries_and_persistence() {
    for f in [Family::V4, Family::V6] {
        let Some(mut c) = Case::new(f, service(f, Proto::Tcp, Scheduler::Rr, &[1, 1, 1])) else {
            return;
        };
        c.h.dp.writer().set_syn_cap(1);
        let b = c.tcp("syn", 1, TCP_SYN, FWD_NEW_FLOW).unwrap();
        for _ in 0..3 {
            assert_eq!(
                c.tcp("retransmission", 1, TCP_SYN, FWD_ESTABLISHED),
                Some(b)
            );
        }
        c.tcp("flooded", 2, TCP_SYN, FWD_SYN_UNTRACKED);
        assert_eq!(c.embryonic(), 1, "{f:?}");

        let mut spec = service(f, Proto::Tcp, Scheduler::Rr, &[1, 1, 1]);
        spec.persistence_timeout = 300;
        spec.persistence_prefix = if matches!(f, Family::V4) { 24 } else { 64 };
        let Some(mut c) = Case::new(f, spec) else {
            return;
        };
        c.h.dp.writer().set_syn_cap(1);
        c.tcp("fills the share", 100, TCP_SYN, FWD_NEW_FLOW);
        // One client (one address), six connections at once: one backend.
        let client = f.client(7);
        let mut seen = Vec::new();
        for port in 5000..5006 {
            let syn = frame(f, client, port, Proto::Tcp, TCP_SYN);
            seen.push(c.send("parallel syn", &syn, FWD_SYN_UNTRACKED).unwrap());
        }
        for port in 5000..5006 {
            let ack = frame(f, client, port, Proto::Tcp, TCP_ACK);
            seen.push(c.send("its ack", &ack, FWD_NEW_FLOW_MIDSTREAM).unwrap());
        }
        assert!(seen.iter().all(|&s| s == seen[0]), "{f:?}: {seen:?}");
    }
}
