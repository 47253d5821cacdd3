//! The virtual MAC interfaces' MLD filter (`lb-ebpf/src/bin/vmac.rs`, keepalived's
//! `use_vmac` for IPv6) on the real object through BPF_PROG_TEST_RUN, byte for byte: an MLD
//! message (v2 and v1 reports, done, behind the hop-by-hop header MLD always has, or
//! without one, behind one of 8 or 16 bytes) of an interface with a parent leaves
//! redirected, its source MAC the
//! parent's and nothing else changed; anything else (neighbour discovery, IPv4, a frame cut
//! short, a hop-by-hop header that runs past the frame, an interface with no parent)
//! leaves as it came. The counters say which.
use aya::{
    maps::{HashMap as BpfHashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use lb_common::{names, vmac_stat, VmacParent};
use lb_daemon::vrrp::vmac_mld::{OBJECT, PROGRAM};
use lb_tests::netns::{require_root, unique_prefix, Netns};

/// TCX's "next": what the filter answers for a frame it leaves alone.
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_REDIRECT: i32 = 7;
const VMAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x02, 0x33];
const PARENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const PARENT_IFINDEX: u32 = 7;

/// An IPv6 frame from the virtual MAC to `dst`'s multicast MAC: next header `next`, then
/// `payload` (a hop-by-hop header and what follows, or the ICMPv6 message).
fn frame(dst_group_low: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x33, 0x33, 0, 0, 0, dst_group_low];
    f.extend(VMAC);
    f.extend([0x86, 0xdd]);
    f.extend([0x60, 0, 0, 0]);
    f.extend((payload.len() as u16).to_be_bytes());
    f.extend([next, 1]);
    // fe80::1 -> ff02::<dst_group_low>
    let mut src = [0u8; 16];
    src[0] = 0xfe;
    src[1] = 0x80;
    src[15] = 1;
    let mut dst = [0u8; 16];
    dst[0] = 0xff;
    dst[1] = 0x02;
    dst[15] = dst_group_low;
    f.extend(src);
    f.extend(dst);
    f.extend(payload);
    f
}

/// A hop-by-hop header with the router alert (MLD's), then ICMPv6 type `ty` (a body of
/// `body` bytes, a report's records or the group).
fn mld(ty: u8, body: usize) -> Vec<u8> {
    let mut p = vec![58, 0, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00];
    p.extend([ty, 0, 0x12, 0x34]);
    p.extend(std::iter::repeat_n(0xab, body));
    p
}

/// [`mld`] behind a hop-by-hop header of 16 bytes (length 1: the router alert, then 10
/// bytes of padding).
fn mld_long_hbh(ty: u8, body: usize) -> Vec<u8> {
    let mut p = vec![58, 1, 0x05, 0x02, 0x00, 0x00, 0x01, 0x08];
    p.extend([0; 8]);
    p.extend([ty, 0, 0x12, 0x34]);
    p.extend(std::iter::repeat_n(0xab, body));
    p
}

struct Filter {
    ebpf: Ebpf,
}

impl Filter {
    fn new(with_parent: u32) -> Filter {
        let mut ebpf = Ebpf::load(OBJECT).expect("load the filter object");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .expect("the program")
            .try_into()
            .unwrap();
        prog.load().expect("verifier");
        let mut parents: BpfHashMap<_, u32, VmacParent> =
            BpfHashMap::try_from(ebpf.map_mut(names::VMAC_PARENTS).unwrap()).unwrap();
        parents
            .insert(
                with_parent,
                VmacParent {
                    ifindex: PARENT_IFINDEX,
                    mac: PARENT_MAC,
                    _pad: [0; 2],
                },
                0,
            )
            .unwrap();
        Filter { ebpf }
    }

    /// The verdict and the frame as it leaves, run on interface `ifindex`.
    fn run(&mut self, frame: &[u8], ifindex: u32) -> (i32, Vec<u8>) {
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(PROGRAM).unwrap().try_into().unwrap();
        // `struct __sk_buff` up to `ifindex` (offset 40): the kernel runs the program on
        // that interface's behalf.
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 64];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value as i32, out)
    }

    fn stat(&self, slot: u32) -> u64 {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::VMAC_STATS).unwrap()).unwrap();
        stats.get(&slot, 0).unwrap().iter().sum()
    }
}

#[test]
fn mld_messages_leave_from_the_parent_and_nothing_else_changes() {
    if !require_root("mld_messages_leave_from_the_parent_and_nothing_else_changes") {
        return;
    }
    let ns = Netns::new(&format!("{}vm", unique_prefix("vmf"))).expect("namespace");
    // Two interfaces to run on (this kernel has no dummy driver: a veth pair).
    ns.ip(&["link", "add", "vm0", "type", "veth", "peer", "name", "vm1"])
        .unwrap();
    let (vm0, vm1) = (ns.ifindex("vm0").unwrap(), ns.ifindex("vm1").unwrap());
    ns.run_in(|| {
        let mut f = Filter::new(vm0);
        let moved = |input: &[u8]| {
            let mut want = input.to_vec();
            want[6..12].copy_from_slice(&PARENT_MAC);
            (TC_ACT_REDIRECT, want)
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // MLDv2 report to ff02::16, one record of 20 bytes.
            ("v2 report", frame(0x16, 0, &mld(143, 4 + 20))),
            ("v1 report", frame(0x12, 0, &mld(131, 20))),
            ("done", frame(0x02, 0, &mld(132, 20))),
            ("query", frame(0x01, 0, &mld(130, 20))),
            // No hop-by-hop header (not what a kernel sends, moved all the same).
            (
                "report without hop-by-hop",
                frame(0x16, 58, &mld(143, 24)[8..]),
            ),
            (
                "report behind a 16-byte hop-by-hop",
                frame(0x16, 0, &mld_long_hbh(143, 24)),
            ),
        ];
        for (what, input) in &cases {
            assert_eq!(f.run(input, vm0), moved(input), "{what}");
        }
        assert_eq!(f.stat(vmac_stat::MOVED), cases.len() as u64);

        let mut cut = frame(0x16, 0, &mld(143, 24));
        cut.truncate(14 + 40 + 8);
        let mut long_hbh = frame(0x16, 0, &mld(143, 24));
        long_hbh[14 + 40 + 1] = 200;
        let mut ipv4 = frame(0x16, 0, &mld(143, 24));
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        // Where a one-word hop-by-hop header would end lies an MLD type; the real next
        // header, 16 bytes on, is a neighbour advertisement.
        let mut na_long_hbh = mld_long_hbh(136, 24);
        na_long_hbh[8] = 143;
        let untouched: Vec<(&str, Vec<u8>)> = vec![
            (
                "neighbour advertisement behind 16 bytes",
                frame(0x16, 0, &na_long_hbh),
            ),
            // A neighbour advertisement: ICMPv6 136, no hop-by-hop header.
            (
                "neighbour advertisement",
                frame(0x01, 58, &[136, 0, 0, 0, 0, 0, 0, 0]),
            ),
            ("IPv4", ipv4),
            ("cut inside the ICMPv6 header", cut),
            ("hop-by-hop header past the frame", long_hbh),
            (
                "cut after the IPv6 header",
                frame(0x16, 0, &mld(143, 24))[..54].to_vec(),
            ),
        ];
        for (what, input) in &untouched {
            assert_eq!(f.run(input, vm0), (TC_ACT_UNSPEC, input.clone()), "{what}");
        }
        assert_eq!(f.stat(vmac_stat::MOVED), cases.len() as u64);
        assert_eq!(f.stat(vmac_stat::UNMOVED), 0);
        // An interface with no parent: as it came, counted.
        let report = frame(0x16, 0, &mld(143, 24));
        assert_eq!(f.run(&report, vm1), (TC_ACT_UNSPEC, report.clone()));
        assert_eq!(f.stat(vmac_stat::UNMOVED), 1);
    })
    .unwrap();
}
