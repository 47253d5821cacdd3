//! VLAN tags a driver took off the frame, on exact bytes (issue 15, defect 4).
//!
//! `lb_native` asks the driver for the tag (the XDP RX-metadata kfunc), but BPF_PROG_TEST_RUN
//! cannot run a device-bound program. `lb_vlan_test` is the same code with the driver's
//! answer (return value, TPID, TCI) read from the `VLAN_TEST` map instead, so every answer a
//! driver can give is a case here: a frame whose 802.1Q tag was taken off is forwarded with
//! that tag put back (PCP and DEI too), exactly as a frame carrying its tag is; QinQ and
//! 802.1ad are passed; a tag the driver cannot tell is never forwarded; a passed frame is
//! left as it came (the stack still holds its tag).
use std::net::Ipv4Addr;

use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions},
};
use lb_common::reason::{self, *};
use lb_tests::{
    netns::require_root,
    packet::*,
    xdp::{addrs::*, rr_service, small_options, xdp_of, XdpHarness, LB_MAC},
};

/// The test entry point and its map (lb-ebpf's main.rs and maps.rs).
const PROGRAM: &str = "lb_vlan_test";
const VLAN_TEST: &str = "VLAN_TEST";

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ENODATA: i32 = 61;
const EOPNOTSUPP: i32 = 95;

/// Not a service: the stack's.
const OTHER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);

struct Vlan {
    h: XdpHarness,
}

impl Vlan {
    fn new() -> Option<Vlan> {
        if !require_root("xdp vlan fixtures") {
            return None;
        }
        let mut h = XdpHarness::new(small_options()).expect("load the XDP object");
        h.dp.update(&[rr_service(VIP4.into(), 80), rr_service(VIP6.into(), 80)])
            .expect("write the maps");
        xdp_of(&mut h.ebpf, PROGRAM)
            .expect("the object's test entry point")
            .load()
            .expect("load lb_vlan_test");
        Some(Vlan { h })
    }

    /// What the driver's VLAN-tag call answers for the next frames.
    fn answer(&mut self, ret: i32, proto: u16, tci: u16) {
        let v = u64::from(ret as u32) | u64::from(proto) << 32 | u64::from(tci) << 48;
        self.set(v);
    }

    /// The driver took no tag off (-ENODATA).
    fn no_tag(&mut self) {
        self.answer(-ENODATA, 0, 0);
    }

    fn set(&mut self, v: u64) {
        let map = self.h.ebpf.map_mut(VLAN_TEST).expect("VLAN_TEST map");
        let mut a: Array<_, u64> = Array::try_from(map).expect("VLAN_TEST is an array");
        a.set(0, v, 0).expect("write VLAN_TEST");
    }

    /// Runs `frame` through `program`; returns (verdict, output bytes).
    fn run(&mut self, program: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let r = xdp_of(&mut self.h.ebpf, program)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs `frame` through `program` and checks the verdict and the one reason it counted
    /// (with the bytes of the frame as it left or was passed). Returns the output bytes.
    fn check_in(&mut self, program: &str, name: &str, frame: &[u8], want: u32) -> Vec<u8> {
        let before = self.h.dp.writer().reason_counters().unwrap();
        let (verdict, out) = self.run(program, frame);
        let after = self.h.dp.writer().reason_counters().unwrap();
        let bumped: Vec<&str> = (0..reason::COUNT)
            .filter(|&r| after[r as usize].packets != before[r as usize].packets)
            .map(reason::name)
            .collect();
        assert_eq!(bumped, vec![reason::name(want)], "{name}: reason");
        assert_eq!(verdict, reason::verdict(want), "{name}: verdict");
        let len = if verdict == XDP_TX {
            out.len()
        } else {
            frame.len()
        };
        assert_eq!(
            after[want as usize].bytes - before[want as usize].bytes,
            len as u64,
            "{name}: reason bytes"
        );
        if verdict == XDP_PASS {
            assert_eq!(out, frame, "{name}: a passed frame is untouched");
        }
        out
    }

    fn check(&mut self, name: &str, frame: &[u8], want: u32) -> Vec<u8> {
        self.check_in(PROGRAM, name, frame, want)
    }

    /// A forwarded frame: `frame` with the MACs of direct routing, and `tag` (TPID, TCI)
    /// between them and the ethertype if given. Returns the backend it went to.
    fn check_sent(
        &mut self,
        program: &str,
        name: &str,
        frame: &[u8],
        want: u32,
        tag: Option<(u16, u16)>,
    ) -> usize {
        let out = self.check_in(program, name, frame, want);
        let i = B
            .iter()
            .position(|m| out.get(..6) == Some(&m[..]))
            .unwrap_or_else(|| panic!("{name}: sent to an unknown MAC: {out:02x?}"));
        let mut want_out = with_macs(frame, B[i], LB_MAC);
        if let Some((tpid, tci)) = tag {
            want_out = with_tag(&want_out, tpid, tci);
        }
        assert_eq!(out, want_out, "{name}: output bytes");
        i
    }
}

/// `frame` with a tag (TPID, TCI) inserted after its MACs.
fn with_tag(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid.to_be_bytes());
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn tcp4(dst: Ipv4Addr, sport: u16, flags: u8) -> Vec<u8> {
    let ip = Ipv4::new(CLIENT4, dst, 6);
    let seg = tcp(ip.addrs(), sport, 80, flags, b"");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IP, &ip.build(&seg))
}

fn tcp6(sport: u16) -> Vec<u8> {
    let ip = Ipv6::new(CLIENT6, VIP6, 6);
    let seg = tcp(ip.addrs(), sport, 80, TCP_SYN, b"");
    ether(LB_MAC, CLIENT_MAC, None, ETH_P_IPV6, &ip.build(&seg))
}

/// VLAN 10, priority 5, drop eligible: every TCI bit must come back as it was.
const TCI: u16 = 5 << 13 | 1 << 12 | 10;

#[test]
fn an_offloaded_tag_goes_back_into_the_forwarded_frame() {
    let Some(mut v) = Vlan::new() else {
        return;
    };
    let tag = Some((ETH_P_8021Q, TCI));
    v.answer(0, ETH_P_8021Q, TCI);
    let syn = tcp4(VIP4, 1000, TCP_SYN);
    let b = v.check_sent(PROGRAM, "tagged new flow", &syn, FWD_NEW_FLOW, tag);
    let ack = tcp4(VIP4, 1000, TCP_ACK);
    let again = v.check_sent(PROGRAM, "tagged established", &ack, FWD_ESTABLISHED, tag);
    assert_eq!(again, b, "the flow keeps its real server");
    v.check_sent(
        PROGRAM,
        "tagged new flow v6",
        &tcp6(1001),
        FWD_NEW_FLOW,
        tag,
    );
    // The same frames with the tag in them take the same path: the tag stays where it is.
    v.no_tag();
    let in_frame = with_tag(&ack, ETH_P_8021Q, TCI);
    let same = v.check_sent(
        PROGRAM,
        "tag in the frame",
        &in_frame,
        FWD_ESTABLISHED,
        None,
    );
    assert_eq!(
        same, b,
        "an offloaded tag is the same flow as one in the frame"
    );
    // No tag, none taken off: untagged in, untagged out.
    let plain = v.check_sent(PROGRAM, "untagged", &ack, FWD_ESTABLISHED, None);
    assert_eq!(plain, b);
}

#[test]
fn qinq_and_8021ad_are_passed() {
    let Some(mut v) = Vlan::new() else {
        return;
    };
    let syn = tcp4(VIP4, 2000, TCP_SYN);
    // The outer tag was taken off, the inner one is in the frame.
    v.answer(0, ETH_P_8021Q, 100);
    let inner = with_tag(&syn, ETH_P_8021Q, 10);
    v.check(
        "offloaded tag + 802.1Q in the frame",
        &inner,
        PASS_UNSUPPORTED,
    );
    let inner_ad = with_tag(&syn, ETH_P_8021AD, 10);
    v.check(
        "offloaded tag + 802.1ad in the frame",
        &inner_ad,
        PASS_UNSUPPORTED,
    );
    // An 802.1ad (service) tag taken off: QinQ whatever the frame holds.
    v.answer(0, ETH_P_8021AD, 100);
    v.check("offloaded 802.1ad", &syn, PASS_UNSUPPORTED);
    v.check("offloaded 802.1ad + 802.1Q", &inner, PASS_UNSUPPORTED);
    // A TPID that is neither is not guessed at.
    v.answer(0, 0x9100, 100);
    v.check("offloaded 0x9100", &syn, PASS_UNSUPPORTED);
    // Without an offloaded tag, QinQ in the frame is passed as before.
    v.no_tag();
    let qinq = with_tag(&inner, ETH_P_8021AD, 100);
    v.check("QinQ in the frame", &qinq, PASS_UNSUPPORTED);
}

#[test]
fn an_unknown_tag_is_never_forwarded() {
    let Some(mut v) = Vlan::new() else {
        return;
    };
    let syn = tcp4(VIP4, 3000, TCP_SYN);
    // A driver without the metadata, or any error but "no tag": the frame may have had a
    // tag, so it does not leave.
    for ret in [-EOPNOTSUPP, -libc::EINVAL, -libc::EIO, 1] {
        v.answer(ret, ETH_P_8021Q, 10);
        v.check(&format!("driver answered {ret}"), &syn, PASS_VLAN_UNKNOWN);
    }
    // Whether the flow is known or not.
    v.no_tag();
    v.check_sent(PROGRAM, "untagged new flow", &syn, FWD_NEW_FLOW, None);
    v.answer(-EOPNOTSUPP, 0, 0);
    let ack = tcp4(VIP4, 3000, TCP_ACK);
    v.check("known flow, tag unknown", &ack, PASS_VLAN_UNKNOWN);
}

#[test]
fn a_passed_or_dropped_frame_gets_no_tag() {
    let Some(mut v) = Vlan::new() else {
        return;
    };
    v.answer(0, ETH_P_8021Q, TCI);
    // Passed: the stack still holds the tag; the frame is left exactly as it came.
    let arp = ether([0xff; 6], CLIENT_MAC, None, ETH_P_ARP, &[0u8; 28]);
    v.check("ARP", &arp, PASS_NOT_IP);
    v.check("no service", &tcp4(OTHER4, 4000, TCP_SYN), PASS_NO_SERVICE);
    // Dropped: malformed is malformed, tagged or not.
    let mut short = tcp4(VIP4, 4001, TCP_SYN);
    short.truncate(14 + 10);
    v.check("truncated IPv4", &short, DROP_MALFORMED_IPV4);
}

#[test]
fn plain_lb_never_reads_the_test_answer() {
    let Some(mut v) = Vlan::new() else {
        return;
    };
    // `lb` (skb mode, test runs, devices that keep tags in the frame) knows of no offloaded
    // tag: an answer that would tag or refuse the frame changes nothing for it.
    v.answer(0, ETH_P_8021Q, TCI);
    let syn = tcp4(VIP4, 5000, TCP_SYN);
    v.check_sent("lb", "lb, untagged", &syn, FWD_NEW_FLOW, None);
    v.answer(-EOPNOTSUPP, 0, 0);
    let ack = tcp4(VIP4, 5000, TCP_ACK);
    v.check_sent("lb", "lb, unknown answer", &ack, FWD_ESTABLISHED, None);
}
