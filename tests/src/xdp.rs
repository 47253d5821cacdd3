//! Runs the real XDP object through BPF_PROG_TEST_RUN, with its maps filled by the daemon's
//! own planner, so fixtures check the program and the control plane's view of it together.
use std::time::Duration;

use anyhow::{Context, Result};
use aya::{
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use lb_daemon::{
    dataplane::{
        maps::BpfMaps,
        program::{self, LoadOptions},
        BackendSpec, Dataplane, ServiceSpec,
    },
    model::{Forward, Limits, Proto, Scheduler},
};

/// The MAC the harness gives the load balancer's interface.
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// The addresses of the packet fixtures (`xdp_fixtures`, `xdp_random`, `xdp_vlan`): bytes in
/// test frames, never on an interface.
pub mod addrs {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
    /// The real servers' MACs, in backend order (192.0.2.11, .12...).
    pub const B: [[u8; 6]; 4] = [
        [0x02, 0, 0, 0, 0, 0xb1],
        [0x02, 0, 0, 0, 0, 0xb2],
        [0x02, 0, 0, 0, 0, 0xb3],
        [0x02, 0, 0, 0, 0, 0xb4],
    ];
    pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    pub const VIP4_ALL_PORTS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
    pub const VIP4_BACKUP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 102);
    pub const VIP4_PERSIST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 103);
    /// The node's own address.
    pub const NODE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
    pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
}

/// The Maglev table size of the fixtures' `mh` services: small, so tables build fast.
pub const MH_TABLE_SIZE: u32 = 257;

/// Small sizes: the fixtures need a handful of entries, and a 1M-entry LRU takes a while
/// to allocate for every test.
pub fn small_options() -> LoadOptions {
    LoadOptions {
        limits: Limits {
            services: 8,
            backends: 64,
            ring_slots: 4096,
        },
        max_flows: 4096,
        max_persist: 1024,
        nat_flows: 4096,
        flow_cache: 256,
        iface_mac: LB_MAC,
        sync: None,
    }
}

pub struct XdpHarness {
    pub ebpf: Ebpf,
    pub dp: Dataplane<BpfMaps>,
}

/// What one run returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub verdict: u32,
    pub data: Vec<u8>,
    pub duration: Duration,
}

impl XdpHarness {
    pub fn new(opts: LoadOptions) -> Result<Self> {
        let mut ebpf = program::load(&opts).context("loading the XDP object")?;
        let mut maps = BpfMaps::new(&mut ebpf)?;
        // As the daemon starts: IPVS's default timeouts, a quarter of the table for flows
        // waiting for their ACK.
        maps.set_timeouts(&lb_daemon::model::LvsTimeouts::default().per_state())?;
        maps.set_syn_cap((opts.max_flows / 4).max(1));
        Ok(Self {
            ebpf,
            dp: Dataplane::new(maps, opts.limits),
        })
    }

    /// Puts `ifindexes` into `TX_PORTS`, as the daemon does with the interfaces the program
    /// runs on: a redirect to one of them goes through the devmap.
    pub fn set_tx_ports(&mut self, ifindexes: &[u32]) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(lb_common::names::TX_PORTS)
            .context("no TX_PORTS")?;
        let mut ports = aya::maps::DevMapHash::try_from(map)?;
        for &i in ifindexes {
            ports.insert(i, i, None, 0)?;
        }
        Ok(())
    }

    /// Sets the program's clock (seconds), as the daemon does every second.
    pub fn set_clock(&mut self, seconds: u32) -> Result<()> {
        Ok(self.dp.writer_mut().set_clock(seconds)?)
    }

    /// One run of `frame`, `repeat` times (the duration is the kernel's per-run average).
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<RunOutput> {
        self.test_run(frame, None, repeat)
    }

    /// BPF_PROG_TEST_RUN of `frame`, with the context `ctx` (a `struct xdp_md`) if given.
    fn test_run(&mut self, frame: &[u8], ctx: Option<&[u8]>, repeat: u32) -> Result<RunOutput> {
        let mut out = vec![0u8; frame.len() + 256];
        let prog = program::xdp(&mut self.ebpf)?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ctx,
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput {
            verdict: r.return_value,
            data: out,
            duration: r.duration,
        })
    }

    pub fn run(&mut self, frame: &[u8]) -> Result<RunOutput> {
        self.run_repeat(frame, 1)
    }

    /// One run of `frame` as if it arrived on interface `ifindex` of the calling thread's
    /// network namespace: what the program's FIB lookups (TUN) see. `repeat` as in
    /// [`Self::run_repeat`].
    pub fn run_on(&mut self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<RunOutput> {
        // `struct xdp_md`: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end the frame's length, the rest 0.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.test_run(frame, Some(&ctx), repeat)
    }
}

/// The trivial programs: `macswap` (the benchmark baseline), `pass` and `drop`.
pub static TESTPROGS: &[u8] = aya::include_bytes_aligned!(env!("LB_TESTPROGS_OBJECT"));

/// Loads one of the trivial programs; the returned `Ebpf` owns it.
pub fn load_testprog(name: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(TESTPROGS).context("loading the test programs")?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no test program {name}"))?
        .try_into()?;
    prog.load()?;
    Ok(ebpf)
}

/// The XDP program `name` of `ebpf`.
pub fn xdp_of<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Xdp> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// An rr service of three real servers (192.0.2.11..13, MACs 02:00:00:00:00:b1..b3), as the
/// benchmarks use.
pub fn rr_service(vip: std::net::IpAddr, port: u16) -> ServiceSpec {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    ServiceSpec {
        vip,
        port,
        proto: Proto::Tcp,
        sched: Scheduler::Rr,
        hash_port: false,
        sloppy_tcp: true,
        mh_table_size: MH_TABLE_SIZE,
        persistence_timeout: 0,
        persistence_prefix: 32,
        idle_timeout: Proto::Tcp.default_idle_timeout(),
        active: true,
        aliases: Vec::new(),
        backends: (0..3u8)
            .map(|i| BackendSpec {
                thresholds: Default::default(),
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11 + i)), port),
                weight: 1,
                mac: Some(addrs::B[i as usize]),
                forward: Forward::Dr,
            })
            .collect(),
    }
}

/// Pins the calling thread (and the threads it spawns later, which inherit the mask) to the
/// last CPU it may run on: BPF_PROG_TEST_RUN runs on the caller's CPU, and migrations between
/// runs would add cold caches to the figures. The last CPU is the one least likely to take
/// the boot-time interrupt load of CPU 0. Returns the CPU.
pub fn pin_to_last_cpu() -> Result<usize> {
    // SAFETY: plain syscalls on a zeroed, then filled, cpu set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
        }
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
            .context("empty CPU affinity mask")?;
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
        Ok(cpu)
    }
}

/// The id of the XDP program attached to `ifname` in `ns` (`ip -j link`), if any: how the
/// benchmarks find the running daemon's program.
pub fn attached_prog_id(ns: &crate::netns::Netns, ifname: &str) -> Result<Option<u32>> {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("ip -j link: {out}"))?;
    let xdp = &v[0]["xdp"];
    Ok(xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
        .map(|id| id as u32))
}

/// Kernel object ids process `pid` holds descriptors of (`prog_id:` or `map_id:` in its
/// fdinfo), sorted: a program or a map found before it is attached, without running a
/// process.
pub fn held_ids(pid: u32, field: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for e in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            for l in text.lines() {
                if let Some(v) = l.strip_prefix(field) {
                    if let Ok(id) = v.trim().parse() {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Pins the calling thread to CPU 0: rr state is per CPU, and BPF_PROG_TEST_RUN runs on the
/// caller's CPU, so this makes the rr order of a fixture exact.
pub fn pin_cpu0() {
    // SAFETY: plain syscall on a zeroed, then filled, cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}
