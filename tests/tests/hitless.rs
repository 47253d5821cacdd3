//! Hitless: the daemon's process lifetime is irrelevant to the traffic. The seed's LVS pair
//! (`lb_tests::e2e_lab`) with its dataplane pinned on a bpf filesystem that outlives the
//! daemons (as systemd's /sys/fs/bpf does on a host), under the lab's traffic: 200 new
//! connections a second and 100 long-lived keep-alive connections.
//!
//! 1. The master's daemon SIGKILLed, not restarted: its program keeps forwarding until the
//!    peer takes over; no request fails, no connection is reset.
//! 2. SIGKILL and a restart at once: the new run takes the maps over and resumes VRRP as
//!    master; the peer sees no transition, no request fails, the flow table keeps its
//!    flows, and a program is attached at every sample.
//! 3. `lb-daemon stop --keep` and a restart (an upgrade): the same; `stop --release` leaves
//!    nothing behind.
//!
//! One at a time (a lock): each is a timing measurement on a small machine.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use lb_tests::{
    e2e_lab::{status_json, HttpStream, LongLived, LvsLab, LvsParams, RoundReport, MARGIN},
    netns::{require_lab, unique_prefix},
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn pinned(sched: &str) -> LvsParams {
    LvsParams {
        pins: true,
        hash_port: sched == "mh",
        ..LvsParams::new(sched, "skb")
    }
}

fn started(tag: &str, params: LvsParams) -> LvsLab {
    let mut lab = LvsLab::new(&unique_prefix(tag), params).unwrap_or_else(|e| panic!("{e:#}"));
    lab.start_pair().unwrap_or_else(|e| panic!("{e:#}"));
    lab
}

/// VI_1's transitions on LB `i`.
fn transitions(lab: &LvsLab, i: usize) -> u64 {
    lb_tests::e2e_lab::vrrp_transitions(lab.lb(i)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The flows LB `i`'s table holds for the HTTP service.
fn flows(lab: &LvsLab, i: usize) -> u64 {
    let s = status_json(lab.lb(i)).unwrap_or_else(|e| panic!("{e:#}"));
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["port"] == 80)
        .map(|v| v["active_flows"].as_u64().unwrap_or(0))
        .sum()
}

/// Samples `ip link` of LB `i` until stopped: how many samples showed no XDP program.
struct AttachedWatch {
    stop: Arc<AtomicBool>,
    bare: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AttachedWatch {
    fn start(lab: &LvsLab, i: usize) -> Self {
        let ns = lab.lb(i).name().to_string();
        let (stop, bare, samples) = Default::default();
        let (s, b, n): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&stop), Arc::clone(&bare), Arc::clone(&samples));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["-n", &ns, "link", "show", "dev", "eth0"])
                    .output();
                if let Ok(out) = out {
                    if !String::from_utf8_lossy(&out.stdout).contains(" xdp") {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        AttachedWatch {
            stop,
            bare,
            samples,
            thread: Some(thread),
        }
    }

    /// (samples, samples without a program).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.samples.load(Ordering::Relaxed),
            self.bare.load(Ordering::Relaxed),
        )
    }
}

fn all_ok(r: &RoundReport, n: usize, when: &str) {
    assert_eq!(
        r,
        &RoundReport {
            ok: n,
            ..Default::default()
        },
        "long-lived connections {when}"
    );
}

/// The master's daemon is SIGKILLed and not restarted (1.): its pinned program keeps
/// forwarding (nothing is refused, as it was while the VIP stayed with no program behind
/// it), the peer takes over at its Master_Down_Interval, and connections carry on (mh with
/// hash_port: both LBs choose alike, so the peer finds each connection's real server).
#[test]
fn a_killed_master_keeps_forwarding_until_the_peer_takes_over() {
    if !require_lab("a_killed_master_keeps_forwarding_until_the_peer_takes_over") {
        return;
    }
    let _one = serial();
    let params = pinned("mh");
    let t = params.timers;
    let mut lab = started("hk", params);
    let mut conns = LongLived::open(lab.client(), lab.target(), 100).unwrap();
    all_ok(&conns.round(), 100, "before");
    let stream = HttpStream::steady(lab.client(), lab.target()).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let t0 = Instant::now();
    lab.kill_lb(1).unwrap();
    // Between the kill and the takeover only lb1's program serves.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lab.xdp_attached(1).is_some(),
        "lb1's program went with its daemon"
    );
    all_ok(&conns.round(), 100, "with lb1's daemon dead");
    let window = lab
        .wait_state(
            2,
            "MASTER",
            t.master_down(99) + MARGIN + Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_client_follows(2, Duration::from_secs(5)).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "SIGKILL of lb1's daemon: lb2 master after {window:?} (Master_Down_Interval {:?}); {} requests, failed {}",
        t.master_down(99),
        p.requests,
        p.failures_line()
    );
    assert_eq!(p.failed(), 0, "{}", p.failures_line());
    all_ok(&conns.round(), 100, "after lb2 took over");
}

/// SIGKILL, then a restart at once (2.): the new run adopts the pinned maps (the flow table
/// with them: rr connections keep their real servers, which a fresh table would not) and
/// resumes VRRP as master before the peer's Master_Down_Interval ends.
#[test]
fn a_master_restarted_at_once_takes_over_and_nothing_moves() {
    if !require_lab("a_master_restarted_at_once_takes_over_and_nothing_moves") {
        return;
    }
    let _one = serial();
    let params = pinned("rr");
    let t = params.timers;
    let mut lab = started("hr", params);
    let mut conns = LongLived::open(lab.client(), lab.target(), 100).unwrap();
    all_ok(&conns.round(), 100, "before");
    let stream = HttpStream::steady(lab.client(), lab.target()).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let peer_transitions = transitions(&lab, 2);
    let flows_before = flows(&lab, 1);
    let watch = AttachedWatch::start(&lab, 1);
    let t0 = Instant::now();
    lab.kill_lb(1).unwrap();
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    let back = t0.elapsed();
    lab.wait_state(1, "MASTER", Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    let (samples, bare) = watch.finish();
    let log = lab.logs();
    assert!(
        log.contains("took over the previous run's dataplane"),
        "{log}"
    );
    assert!(log.contains("resuming as master"), "{log}");
    // Twice the peer's Master_Down_Interval: it would have taken over by then.
    lb_tests::e2e_lab::holds_for("lb1 master, lb2 backup", t.master_down(99) * 2, || {
        lab.state(1).as_deref() == Some("MASTER") && lab.state(2).as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(transitions(&lab, 2), peer_transitions, "the peer moved");
    let flows_after = flows(&lab, 1);
    all_ok(&conns.round(), 100, "after the restart");
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "SIGKILL and restart of lb1: back in {back:?}; flows {flows_before} -> {flows_after}; \
         {samples} samples of lb1's link, {bare} without a program; {} requests, failed {}",
        p.requests,
        p.failures_line()
    );
    assert_eq!(p.failed(), 0, "{}", p.failures_line());
    assert!(
        flows_after >= flows_before,
        "{flows_before} -> {flows_after}"
    );
    assert_eq!(bare, 0, "{bare} of {samples} samples showed no program");
    assert!(samples > 10, "{samples} samples");
}

/// An upgrade (3.): `lb-daemon stop --keep`, then the next run; nothing moves, as after a
/// crash. Then `stop --release`: priority 0 (the peer takes over at once), the VIP gone, no
/// program, no pins.
#[test]
fn keep_stop_and_restart_then_a_release_stop() {
    if !require_lab("keep_stop_and_restart_then_a_release_stop") {
        return;
    }
    let _one = serial();
    let params = pinned("rr");
    let t = params.timers;
    let mut lab = started("hu", params);
    let mut conns = LongLived::open(lab.client(), lab.target(), 100).unwrap();
    let stream = HttpStream::steady(lab.client(), lab.target()).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let peer_transitions = transitions(&lab, 2);
    let watch = AttachedWatch::start(&lab, 1);
    let t0 = Instant::now();
    lab.stop_lb_with(1, Some("--keep")).unwrap();
    assert!(lab.has_vip(1), "a keep stop leaves the VIP");
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    lab.wait_state(1, "MASTER", Duration::from_secs(2)).unwrap();
    let (samples, bare) = watch.finish();
    lb_tests::e2e_lab::holds_for("lb1 master", t.master_down(99) * 2, || {
        lab.state(2).as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(transitions(&lab, 2), peer_transitions, "the peer moved");
    all_ok(&conns.round(), 100, "after the upgrade");
    let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
    eprintln!(
        "keep stop and restart of lb1: {samples} samples, {bare} without a program; {} requests, failed {}",
        p.requests,
        p.failures_line()
    );
    assert_eq!(p.failed(), 0, "{}", p.failures_line());
    assert_eq!(bare, 0);

    // Each LB pins under its own network namespace's directory.
    let links = |lab: &LvsLab| {
        let list = lab.pin_fs().unwrap().list("lb-daemon").unwrap();
        (
            list.lines().filter(|l| l.ends_with("/link")).count(),
            list.lines().filter(|l| l.ends_with("/FLOWS4")).count(),
        )
    };
    assert_eq!(links(&lab), (2, 2), "both LBs pinned");
    lab.stop_lb_with(1, Some("--release")).unwrap();
    assert!(!lab.has_vip(1), "a release stop removes the VIP");
    assert_eq!(
        lab.xdp_attached(1),
        None,
        "a release stop detaches the program"
    );
    assert_eq!(links(&lab), (1, 1), "lb1's pins are gone, lb2's stay");
    lab.wait_state(2, "MASTER", t.skew(99) + MARGIN)
        .unwrap_or_else(|e| panic!("{e:#}"));
    drop(stream);
}

/// The pin directory LB `i`'s running daemon reported (`pinned=Some("...")` in its log).
fn pin_dir_of(lab: &LvsLab, i: usize) -> String {
    let log = lab.lb_log(i);
    let line = log
        .lines()
        .find(|l| l.contains("XDP program attached"))
        .unwrap_or_else(|| panic!("no attach line:\n{log}"));
    let at = line.find("pinned=Some(\"").expect("pinned dataplane") + "pinned=Some(\"".len();
    line[at..].split('"').next().unwrap().to_string()
}

/// `cmd` in the mount namespace of the lab's bpf filesystem (where the pins are seen).
fn in_pin_fs(lab: &LvsLab, cmd: &[&str]) {
    let holder = lab.pin_fs().expect("pins").pid();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--mount=/proc/{holder}/ns/mnt"))
        .arg("--")
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Maps another build wrote: a flow table of another size is migrated (its entries copied:
/// rr connections keep their real servers), one of another layout is dropped alone, and a
/// layout version this build does not write drops everything; each says so in one line, and
/// the traffic keeps flowing throughout.
#[test]
fn another_layout_is_migrated_or_dropped_and_the_traffic_flows() {
    if !require_lab("another_layout_is_migrated_or_dropped_and_the_traffic_flows") {
        return;
    }
    let _one = serial();
    let params = pinned("rr");
    let mut lab = started("hl", params.clone());
    let mut conns = LongLived::open(lab.client(), lab.target(), 100).unwrap();
    let stream = HttpStream::steady(lab.client(), lab.target()).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();

    // max_flows doubled: both flow tables (and only they) are migrated.
    let t0 = Instant::now();
    lab.stop_lb_with(1, Some("--keep")).unwrap();
    let bigger = lb_tests::e2e_lab::lvs_toml(&lab.params().clone(), 1)
        .replace("max_flows = 65536", "max_flows = 131072");
    lab.set_config(1, &bigger).unwrap();
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    let log = lab.lb_log(1);
    let migrated: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("migrated the pinned map's entries"))
        .collect();
    eprintln!("max_flows 65536 -> 131072:\n  {}", migrated.join("\n  "));
    assert_eq!(migrated.len(), 2, "{log}");
    assert!(
        migrated
            .iter()
            .any(|l| l.contains("FLOWS4") && !l.contains("entries=0")),
        "{log}"
    );
    assert!(
        log.contains("took over the previous run's dataplane"),
        "{log}"
    );
    all_ok(&conns.round(), 100, "after the migration");
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t0, Instant::now());
    assert_eq!(p.failed(), 0, "{}", p.failures_line());

    // FLOWS6 pinned with another value size: dropped alone, the rest taken over.
    let dir = pin_dir_of(&lab, 1);
    lab.stop_lb_with(1, Some("--keep")).unwrap();
    in_pin_fs(&lab, &["rm", &format!("{dir}/FLOWS6")]);
    in_pin_fs(
        &lab,
        &[
            "bpftool",
            "map",
            "create",
            &format!("{dir}/FLOWS6"),
            "type",
            "lru_hash",
            "key",
            "40",
            "value",
            "24",
            "entries",
            "64",
            "name",
            "FLOWS6",
        ],
    );
    let t1 = Instant::now();
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    let log = lab.lb_log(1);
    let dropped = log
        .lines()
        .find(|l| l.contains("the pinned map is dropped"))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("FLOWS6 of another layout: {dropped}");
    assert!(
        dropped.contains("FLOWS6") && dropped.contains("value 24"),
        "{dropped}"
    );
    assert!(
        log.contains("took over the previous run's dataplane"),
        "{log}"
    );
    all_ok(&conns.round(), 100, "after FLOWS6 was dropped");
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t1, Instant::now());
    assert_eq!(p.failed(), 0, "{}", p.failures_line());

    // A layout version this build does not write: nothing is taken over, one line says why,
    // and new connections are served (established ones are scheduled again).
    let dir = pin_dir_of(&lab, 1);
    lab.stop_lb_with(1, Some("--keep")).unwrap();
    let mut update = vec!["bpftool", "map", "update", "pinned"];
    let meta = format!("{dir}/META");
    update.push(&meta);
    update.extend(["key", "0", "0", "0", "0", "value", "99"]);
    update.extend(std::iter::repeat_n("0", 15));
    in_pin_fs(&lab, &update);
    lab.start_lb(1).unwrap_or_else(|e| panic!("{e:#}"));
    let log = lab.lb_log(1);
    let line = log
        .lines()
        .find(|l| l.contains("is not taken over"))
        .unwrap_or_else(|| panic!("{log}"));
    eprintln!("layout version 99: {line}");
    assert!(line.contains("layout version 99"), "{line}");
    assert!(
        !log.contains("took over the previous run's dataplane"),
        "{log}"
    );
    let t2 = Instant::now();
    stream
        .wait_successes(t2, 200, Duration::from_secs(30))
        .unwrap();
    let p = stream.phase(t2 + Duration::from_secs(1), Instant::now());
    assert_eq!(p.failed(), 0, "{}", p.failures_line());
}

/// The tag of the XDP program attached to LB `i`'s eth0 (`bpftool net`, then `prog show`).
fn attached_tag(lab: &LvsLab, i: usize) -> String {
    let out = lab
        .lb(i)
        .exec(&["bpftool", "-j", "net", "show", "dev", "eth0"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v[0]["xdp"][0]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no XDP program on lb{i}: {out}"));
    let prog = lab
        .lb(i)
        .exec(&["bpftool", "-j", "prog", "show", "id", &id.to_string()])
        .unwrap();
    let p: serde_json::Value = serde_json::from_str(&prog).unwrap();
    p["tag"].as_str().unwrap().to_string()
}

/// An upgrade onto another build of the XDP program (`target/variant/lb-daemon`, whose
/// program differs in a constant): `stop --keep`, then the other binary. The link runs the
/// new program from then on (another tag), a program is attached at every sample, no
/// request fails and the peer sees no transition; and back again.
#[test]
fn an_upgrade_onto_another_build_of_the_program() {
    if !require_lab("an_upgrade_onto_another_build_of_the_program") {
        return;
    }
    let variant = lb_tests::lab::variant_daemon_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let _one = serial();
    let params = pinned("rr");
    let t = params.timers;
    let mut lab = started("hv", params);
    let mut conns = LongLived::open(lab.client(), lab.target(), 100).unwrap();
    let stream = HttpStream::steady(lab.client(), lab.target()).unwrap();
    stream
        .wait_successes(Instant::now(), 200, Duration::from_secs(30))
        .unwrap();
    let peer_transitions = transitions(&lab, 2);
    let before = attached_tag(&lab, 1);
    let ordinary = lb_tests::lab::daemon_bin().unwrap();
    let mut tags = vec![before.clone()];
    for bin in [&variant, &ordinary] {
        let watch = AttachedWatch::start(&lab, 1);
        let t0 = Instant::now();
        lab.stop_lb_with(1, Some("--keep")).unwrap();
        lab.start_lb_bin(1, bin).unwrap_or_else(|e| panic!("{e:#}"));
        lab.wait_state(1, "MASTER", Duration::from_secs(2)).unwrap();
        let (samples, bare) = watch.finish();
        tags.push(attached_tag(&lab, 1));
        let log = lab.lb_log(1);
        assert!(
            log.contains("took over the previous run's dataplane"),
            "{log}"
        );
        assert!(
            log.contains("the previous run's XDP link runs the new program"),
            "{log}"
        );
        all_ok(&conns.round(), 100, "after the upgrade");
        stream
            .wait_successes(Instant::now(), 100, Duration::from_secs(30))
            .unwrap();
        let p = stream.phase(t0 - Duration::from_millis(500), Instant::now());
        eprintln!(
            "{}: program {} -> {}; {samples} samples, {bare} without a program; {} requests, failed {}",
            bin.display(),
            tags[tags.len() - 2],
            tags[tags.len() - 1],
            p.requests,
            p.failures_line()
        );
        assert_eq!(bare, 0, "{bare} of {samples} samples showed no program");
        assert!(samples > 10, "{samples} samples");
        assert_eq!(p.failed(), 0, "{}", p.failures_line());
    }
    assert_ne!(tags[0], tags[1], "the other build's program runs");
    assert_eq!(tags[0], tags[2], "the ordinary build's program runs again");
    lb_tests::e2e_lab::holds_for("lb2 stays backup", t.master_down(99), || {
        lab.state(2).as_deref() == Some("BACKUP")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", lab.logs()));
    assert_eq!(transitions(&lab, 2), peer_transitions, "the peer moved");
}

/// The program's clock goes on across a restart from where it stood: a daemon dead for
/// longer than a service's idle timeout (3 s here) while its program kept forwarding
/// leaves flows that the next run neither finds idle nor reschedules (rr connections would
/// move to other real servers and be reset).
#[test]
fn flows_are_not_idle_after_a_long_gap_without_a_daemon() {
    if !require_lab("flows_are_not_idle_after_a_long_gap_without_a_daemon") {
        return;
    }
    let _one = serial();
    let lab = lb_tests::netns::DrLab::new(&unique_prefix("hc"), 3).expect("lab");
    lab.add_vip_to_lb().unwrap();
    let fs = lb_tests::netns::PinFs::new(&lab.lb().dir().join("bpffs")).unwrap();
    lab.lb().use_pin_fs(&fs);
    let config = lb_tests::lab::lab_config(&lab, "skb", "rr", &[1, 1, 1])
        .replace(
            "max_flows = 65536\n",
            &format!("max_flows = 65536\npin_root = \"{}\"\n", fs.dir().display()),
        )
        .replace("lb_kind = \"DR\"\n", "lb_kind = \"DR\"\nidle_timeout = 3\n");
    let (daemon, _) =
        lb_tests::lab::start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    let target = std::net::SocketAddr::from((lb_tests::netns::VIP_V4, 80));
    let mut conns = LongLived::open(lab.client(), target, 30).unwrap();
    assert_eq!(conns.by_backend().len(), 3, "{:?}", conns.by_backend());
    daemon.kill().unwrap();
    // Five seconds without a daemon, the connections busy meanwhile.
    let gap = Instant::now();
    while gap.elapsed() < Duration::from_secs(5) {
        all_ok(&conns.round(), 30, "with no daemon");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (daemon, _) =
        lb_tests::lab::start_daemon(&lab, &config, "skb").unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        daemon
            .read_stderr()
            .contains("took over the previous run's dataplane"),
        "{}",
        daemon.read_stderr()
    );
    all_ok(
        &conns.round(),
        30,
        "after a 5 s gap with a 3 s idle timeout",
    );
    drop(daemon);
    drop(fs);
}
