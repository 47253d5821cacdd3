//! The daemon's batched reads of the per-CPU service and backend counters
//! (`BpfMaps::all_service_counters`, `all_backend_counters`), against the real program's maps
//! at the size issue 16 asks for (10,000 services x 10 real servers, maps with the daemon's
//! headroom): the same sums as one lookup per id (the reads are split between cores from
//! 16,384 elements on), and what each way costs (printed).
//!
//! Needs root (it loads the program); skips with a printed reason otherwise, fails under
//! `LB_REQUIRE_PRIVILEGED=1`.
use std::{os::fd::OwnedFd, time::Instant};

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{names, TrafficCounters};
use lb_daemon::{
    dataplane::{
        maps::BpfMaps,
        program::{self, LoadOptions, MapFds},
    },
    model::Limits,
};
use lb_tests::{netns::require_root, xdp::LB_MAC};

const SERVICES: u32 = 10_000;
const BACKENDS: u32 = 100_000;

fn writable(fd: OwnedFd) -> PerCpuArray<MapData, TrafficCounters> {
    let data = MapData::from_fd(fd).expect("reopening the counters");
    PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array")
}

/// A different value on every CPU, so that a sum that skips or repeats a CPU, or mixes up
/// two ids, shows.
fn per_cpu(id: u32, cpus: usize) -> Vec<TrafficCounters> {
    (0..cpus as u64)
        .map(|c| TrafficCounters {
            packets: u64::from(id) * 1000 + c + 1,
            bytes: u64::from(id) * 7 + (c << 40),
            new_flows: c * 3 + 1,
        })
        .collect()
}

fn sum(v: &[TrafficCounters]) -> TrafficCounters {
    v.iter()
        .fold(TrafficCounters::default(), |a, c| TrafficCounters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
        })
}

#[test]
fn batched_counter_reads_equal_single_lookups() {
    if !require_root("batched counter reads") {
        return;
    }
    let limits = Limits::with_headroom(Limits {
        services: SERVICES,
        backends: BACKENDS,
        ring_slots: 4096,
    });
    let opts = LoadOptions {
        limits,
        max_flows: 4096,
        max_persist: 1024,
        nat_flows: 0,
        flow_cache: 256,
        iface_mac: LB_MAC,
        sync: None,
    };
    let mut ebpf = program::load(&opts).expect("loading the XDP object");
    let fds = MapFds::of(&ebpf).expect("map descriptors");
    let maps = BpfMaps::new(&mut ebpf).expect("the maps");
    let cpus = aya::util::nr_cpus().expect("possible CPUs");

    // Ids at the batch edges, the first and last of what is read and of the map, and a
    // spread in between; every other id stays zero.
    let mut written = Vec::new();
    for (name, len) in [
        (names::SERVICE_STATS, limits.services),
        (names::BACKEND_STATS, limits.backends),
    ] {
        let mut map = writable(fds.dup(name).expect("dup"));
        let mut ids: Vec<u32> = vec![0, 1, 1023, 1024, 1025, 2047, 2048, SERVICES - 1, len - 1];
        ids.extend((0..len).step_by(997));
        // Where a read split between cores meets (two or four of them), for the reads of
        // `SERVICES * 10` and of the whole map.
        for n in [SERVICES * 10, len] {
            for at in [n / 4, n / 2, 3 * n / 4, n.div_ceil(2), n.div_ceil(4)] {
                ids.extend(
                    [at.saturating_sub(1), at, at + 1]
                        .into_iter()
                        .filter(|&id| id < len),
                );
            }
        }
        for &id in &ids {
            let v = PerCpuValues::try_from(per_cpu(id, cpus)).expect("one value per CPU");
            map.set(id, v, 0).expect("writing a counter");
        }
        written.push(ids);
    }
    let expect = |ids: &[u32], n: u32| -> Vec<TrafficCounters> {
        (0..n)
            .map(|id| {
                if ids.contains(&id) {
                    sum(&per_cpu(id, cpus))
                } else {
                    TrafficCounters::default()
                }
            })
            .collect()
    };

    let t = Instant::now();
    let single_s: Vec<TrafficCounters> = (0..SERVICES)
        .map(|id| maps.service_counters(id).expect("service lookup"))
        .collect();
    let single_b: Vec<TrafficCounters> = (0..SERVICES * 10)
        .map(|id| maps.backend_counters(id).expect("backend lookup"))
        .collect();
    let single = t.elapsed();

    let t = Instant::now();
    let batch_s = maps
        .all_service_counters(SERVICES)
        .expect("batched services");
    let batch_b = maps
        .all_backend_counters(SERVICES * 10)
        .expect("batched backends");
    let batched = t.elapsed();

    assert_eq!(batch_s, single_s);
    assert_eq!(batch_b, single_b);
    assert_eq!(batch_s, expect(&written[0], SERVICES));
    assert_eq!(batch_b, expect(&written[1], SERVICES * 10));
    eprintln!(
        "counters of {SERVICES} services and {} backends ({cpus} CPUs): one lookup per id \
         {:.1} ms, batched {:.1} ms",
        SERVICES * 10,
        single.as_secs_f64() * 1e3,
        batched.as_secs_f64() * 1e3
    );

    // The whole map, the map's last element included; nothing asked, nothing read; more
    // than the map holds is the whole map.
    let whole = maps
        .all_backend_counters(limits.backends)
        .expect("whole map");
    assert_eq!(whole, expect(&written[1], limits.backends));
    assert_eq!(
        maps.all_service_counters(u32::MAX).expect("past the end"),
        expect(&written[0], limits.services)
    );
    assert!(maps.all_service_counters(0).expect("none").is_empty());
    assert_eq!(
        maps.all_service_counters(1025).expect("a batch and one"),
        expect(&written[0], 1025)
    );
}
