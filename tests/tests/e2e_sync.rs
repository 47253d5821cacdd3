//! Connection sync (`[sync]`, IPVS's sync daemon) end to end: the seed's LVS lab
//! (`lb_tests::e2e_lab`) with `rr`, which without sync sends an established connection to
//! whatever real server comes next after a failover (a reset).
//!
//! 1. 200 keep-alive connections through lb1 (master); lb1 SIGKILLed; lb2 takes over and
//!    every connection keeps working on its real server: zero resets (unicast sync).
//! 2. The same with the backend set changed before the failover (rs3 drained on both LBs,
//!    and lb2 restarted with its real servers in the other order, so that its ids differ
//!    from lb1's and it must get the whole table from lb1 again), over IPVS's multicast
//!    group.
//! 3. Sync reloaded in place on both LBs before the failover (unicast to IPVS's multicast
//!    group, and a new key in the key files): lb2's new engine gets lb1's whole table again,
//!    and the failover still resets nothing. A `ring_size` change is refused at its line.
//! 4. The soak (`lb_tests::sync_bench`): new flows at 50,000 a second into lb1's program
//!    for `LB_SYNC_SOAK_SECS` (15 s here; 60 s in `cargo xtask bench sync`); lb2's table
//!    follows within the documented lag, and neither daemon's memory or descriptors grow.
//!
//! The tests run one at a time (a lock): each measures timing on a small machine.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lb_tests::{
    e2e_lab::{lvs_toml, wait, LongLived, LvsLab, LvsParams, SyncMode, MARGIN},
    netns::{require_lab, unique_prefix},
    sync_bench,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const CONNECTIONS: usize = 200;

/// `lvs_toml`'s text with each service's real servers in the other order.
fn reversed_servers(text: &str) -> String {
    let mut parts = text.split("\n[[virtual_server]]");
    let mut out = parts.next().unwrap_or_default().to_string();
    for vs in parts {
        let mut blocks: Vec<&str> = vs.split("\n  [[virtual_server.real_server]]").collect();
        let head = blocks.remove(0);
        blocks.reverse();
        out += "\n[[virtual_server]]";
        out += head;
        for b in blocks {
            out += "\n  [[virtual_server.real_server]]";
            // The last block of the file has no blank line after it; keep the shape.
            out += b.trim_end_matches('\n');
            out += "\n";
        }
    }
    out
}

/// `lvs_toml`'s text with rs3 (192.0.2.13) drained: weight 0, its flows stay.
fn drained_rs3(text: &str) -> String {
    text.split("\n  [[virtual_server.real_server]]")
        .map(|b| {
            if b.contains("ip = \"192.0.2.13\"") {
                b.replace("weight = 1", "weight = 0")
            } else {
                b.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n  [[virtual_server.real_server]]")
}

/// lb2's sync counter `key` (0 when it does not answer).
fn lb2_counter(lab: &LvsLab, key: &str) -> u64 {
    lab.sync_status(2)[key].as_u64().unwrap_or(0)
}

/// What happens between opening the connections and the failover.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    Nothing,
    /// rs3 drained on both, lb2 restarted with its real servers reversed.
    ChangeBackends,
    /// `[sync]` reloaded on both: multicast instead of unicast, a new key.
    ReloadSync,
}

/// Connections opened after lb1's one-sided reload (`Before::ReloadSync`).
const LATE: usize = 50;

fn failover(tag: &str, mode: SyncMode, before: Before) {
    let change_backends = before == Before::ChangeBackends;
    let mut late: Option<LongLived> = None;
    let params = LvsParams {
        sync: Some(mode),
        ..LvsParams::new("rr", "skb")
    };
    let t = params.timers;
    let mut lab =
        LvsLab::new(&unique_prefix(tag), params.clone()).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    let mut conns = LongLived::open(lab.client(), lab.target(), CONNECTIONS).unwrap();
    let spread = conns.by_backend();
    eprintln!("{CONNECTIONS} connections through lb1: {spread:?}");
    assert_eq!(spread.len(), 3, "{spread:?}");
    let r = conns.round();
    assert_eq!(
        (r.ok, r.resets),
        (CONNECTIONS, 0),
        "before the failover: {r:?}"
    );

    if change_backends {
        let drained1 = drained_rs3(&lvs_toml(&params, 1));
        lab.set_config(1, &drained1).unwrap();
        lab.reload_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
        let t0 = Instant::now();
        lab.stop_lb(2).unwrap();
        let changed2 = reversed_servers(&drained_rs3(&lvs_toml(&params, 2)));
        assert_ne!(changed2, lvs_toml(&params, 2));
        lab.set_config(2, &changed2).unwrap();
        lab.start_lb(2).unwrap_or_else(|e| panic!("{e:#}"));
        lab.wait_state(2, "BACKUP", Duration::from_secs(10))
            .unwrap();
        wait(
            "lb2 to get lb1's whole table again",
            Duration::from_secs(15),
            || lb2_counter(&lab, "full_syncs_received") >= 1,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        eprintln!(
            "lb2 restarted with rs3 drained and its real servers reversed: whole table in {:?}",
            t0.elapsed()
        );
        let r = conns.round();
        assert_eq!(
            (r.ok, r.resets),
            (CONNECTIONS, 0),
            "rs3 drained: its connections stay: {r:?}"
        );
    }
    if before == Before::ReloadSync {
        wait(
            "lb2 to hold every connection's flow before the reload",
            Duration::from_secs(15),
            || lb2_counter(&lab, "installed_entries") >= CONNECTIONS as u64,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        // What the program fixes at load is refused, at its line.
        let with_ring =
            lvs_toml(&params, 1).replace("\n[sync]\n", "\n[sync]\nring_size = 1048576\n");
        lab.set_config(1, &with_ring).unwrap();
        let e = lab.reload_lb(1).unwrap_err().to_string();
        assert!(e.contains(": sync.ring_size: the event ring"), "{e}");
        let params = LvsParams {
            sync: Some(SyncMode::Multicast),
            ..params.clone()
        };
        for i in [1, 2] {
            let text = lvs_toml(&params, i);
            assert!(text.contains("multicast_group"), "{text}");
            lab.set_config(i, &text).unwrap();
            // A new key on both (each LB has its copy, which set_config wrote).
            let key = lab.lb(i).dir().join("sync.key");
            std::fs::write(&key, b"a new shared key for both, 32 b.").unwrap();
            lab.reload_lb(i).unwrap_or_else(|e| panic!("{e:#}"));
            // The log is written by a thread of its own: it may follow the answer.
            wait("the new [sync] in the log", Duration::from_secs(5), || {
                lab.lb_log(i)
                    .contains("connection sync follows the new [sync]")
            })
            .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.lb_log(i)));
        }
        wait(
            "lb2's new engine to get lb1's whole table",
            Duration::from_secs(15),
            || lb2_counter(&lab, "full_syncs_received") >= 1,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        wait(
            "lb2 to hold every connection's flow again",
            Duration::from_secs(15),
            || lb2_counter(&lab, "installed_entries") >= CONNECTIONS as u64,
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
        // One side alone: lb1's tables resized, its engine started again over them with
        // a new boot id; lb2, which keeps its engine, goes on taking lb1's new flows.
        let installed = lb2_counter(&lab, "installed_entries");
        let resized = lvs_toml(&params, 1).replacen("max_flows = 65536", "max_flows = 131072", 1);
        assert_ne!(resized, lvs_toml(&params, 1));
        lab.set_config(1, &resized).unwrap();
        let key = lab.lb(1).dir().join("sync.key");
        std::fs::write(&key, b"a new shared key for both, 32 b.").unwrap();
        lab.reload_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
        wait("the resize in the log", Duration::from_secs(5), || {
            lab.lb_log(1).contains("connection tables resized")
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.lb_log(1)));
        late = Some(LongLived::open(lab.client(), lab.target(), LATE).unwrap());
        wait(
            "lb2 to take lb1's flows after lb1's engine started again",
            Duration::from_secs(15),
            || lb2_counter(&lab, "installed_entries") >= installed + LATE as u64,
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e:#}\nlb1 sync: {}\nlb2 sync: {}\n{}",
                lab.sync_status(1),
                lab.sync_status(2),
                lab.logs()
            )
        });
    }
    wait(
        "lb2 to hold every connection's flow",
        Duration::from_secs(15),
        || lb2_counter(&lab, "installed_entries") >= CONNECTIONS as u64,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\nlb1 sync: {}\nlb2 sync: {}\n{}",
            lab.sync_status(1),
            lab.sync_status(2),
            lab.logs()
        )
    });
    eprintln!("lb1 sync: {}", lab.sync_status(1));
    eprintln!("lb2 sync: {}", lab.sync_status(2));

    let t0 = Instant::now();
    lab.kill_lb(1).unwrap();
    lab.wait_state(
        2,
        "MASTER",
        t.master_down(99) + MARGIN + Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_client_follows(2, Duration::from_secs(5)).unwrap();
    let r = conns.round();
    eprintln!("after lb1's SIGKILL ({:?}): {r:?}", t0.elapsed());
    eprintln!("lb2 sync: {}", lab.sync_status(2));
    assert_eq!(
        r,
        lb_tests::e2e_lab::RoundReport {
            ok: CONNECTIONS,
            ..Default::default()
        },
        "every connection on its real server after the failover\n{}",
        lab.logs()
    );
    if let Some(mut late) = late {
        let r = late.round();
        assert_eq!(
            (r.ok, r.resets),
            (LATE, 0),
            "the connections opened after lb1's one-sided reload\n{}",
            lab.logs()
        );
    }
    // And new connections go on through lb2.
    let more = LongLived::open(lab.client(), lab.target(), 10).unwrap();
    assert_eq!(more.len(), 10);
    let status = lab.sync_status(2);
    assert_eq!(status["role"], "sending", "{status}");
}

#[test]
fn rr_connections_survive_a_master_kill_with_sync() {
    if !require_lab("rr_connections_survive_a_master_kill_with_sync") {
        return;
    }
    let _one = serial();
    failover("sy1", SyncMode::Unicast, Before::Nothing);
}

#[test]
fn rr_connections_survive_after_the_backend_set_changed() {
    if !require_lab("rr_connections_survive_after_the_backend_set_changed") {
        return;
    }
    let _one = serial();
    failover("sy2", SyncMode::Multicast, Before::ChangeBackends);
}

#[test]
fn rr_connections_survive_after_sync_was_reloaded() {
    if !require_lab("rr_connections_survive_after_sync_was_reloaded") {
        return;
    }
    let _one = serial();
    failover("sy3", SyncMode::Unicast, Before::ReloadSync);
}

#[test]
fn sync_soak_new_flows_at_50k_per_second() {
    if !require_lab("sync_soak_new_flows_at_50k_per_second") {
        return;
    }
    let _one = serial();
    let secs = sync_bench::soak_seconds(15);
    let r = sync_bench::soak(
        &unique_prefix("syk"),
        sync_bench::SOAK_RATE,
        Duration::from_secs(secs),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{r}");
    r.check().unwrap_or_else(|e| panic!("{e:#}\n{r}"));
}
