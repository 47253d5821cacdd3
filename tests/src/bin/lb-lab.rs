//! `cargo xtask lab`: the seed's two deployments, end to end, in network namespaces, under a
//! steady stream of HTTP requests (see `lb_tests::e2e_lab`).
//!
//! 1. "LVS + Nginx + Keepalived": a client, two LBs (lb1 MASTER priority 100, lb2 BACKUP 99)
//!    each running `lb-daemon` with XDP, three nginx real servers set up with
//!    `lb-daemon realserver start`. Traffic and status; a real server stopped; the master
//!    killed; both restored.
//! 2. "Nginx + Keepalived": two nginx nodes sharing the VIP (`nopreempt`, `vrrp_script
//!    check_nginx`). nginx stopped on the master moves the VIP; back, it does not take it back.
//!
//! `--scenario ecmp` (not part of `both`): active-active nodes behind ECMP (issue 24, see
//! `lb_tests::ecmp_lab`). A router running BIRD, three lb-daemon nodes each announcing the VIP
//! through its own BIRD (`[announce]`), three nginx DR real servers, a client with 64
//! addresses. The router's route; each node's share of the traffic; 100 long-lived
//! connections; one node SIGKILLed (daemon and BIRD): the route after, the time until new
//! connections from every address succeed, the long-lived connections' resets (none); the
//! node restarted and back in the route.
//!
//! Prints what it measured; exits 0 only when every step did what it should, otherwise non-zero
//! naming the step. Everything is removed on exit or Ctrl-C.
use std::{process::ExitCode, sync::atomic::Ordering, time::Instant};

use anyhow::{bail, Context, Result};
use lb_tests::{
    e2e_lab::{lvs_demo, nginx_demo, LvsParams, Summary, Timers, CANCEL, PHASE_REQUESTS},
    ecmp_lab::{ecmp_demo, unavailable},
    netns::require_lab,
};

extern "C" fn on_signal(_: libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

const USAGE: &str = "usage: lb-lab [--scenario lvs|nginx|both|ecmp] [--sched rr|wrr|sh|mh] \
[--xdp-mode skb|native] [--nopreempt] [--hash-port] [--seed-timers] [--requests N]

  --scenario     which of the seed's deployments (default: both), or ecmp: three
                 active-active lb-daemon nodes announcing the VIP over BGP (BIRD) to a router
                 that spreads the flows over them, one of them killed and restarted (XDP in
                 skb mode; the other options are for lvs and nginx)
  --sched        the LVS scenario's lb_algo (default rr; wrr uses weights 1, 2, 3)
  --xdp-mode     skb (default) or native (driver mode on the LBs' veths)
  --nopreempt    both LBs `state BACKUP` + `nopreempt` (default: the seed's MASTER/BACKUP)
  --hash-port    sh/mh hash the source port too (IPVS sh-port/mh-port)
  --seed-timers  the seed's timers (advert_int 5, delay_loop 6, connect_timeout 3, retry 3,
                 delay_before_retry 3, check interval 3) instead of the lab's (1, 1, 1, 1, 0.5, 1)
  --requests N   successful requests per traffic phase (default 300)";

struct Args {
    scenario: String,
    params: LvsParams,
    requests: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        scenario: "both".into(),
        // The dataplane pinned on a bpf filesystem that outlives the daemons, as systemd's
        // /sys/fs/bpf does: a killed master's program keeps forwarding.
        params: LvsParams {
            pins: true,
            ..LvsParams::new("rr", "skb")
        },
        requests: PHASE_REQUESTS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--scenario" => a.scenario = value("--scenario")?,
            "--sched" => a.params.sched = value("--sched")?,
            "--xdp-mode" => a.params.xdp_mode = value("--xdp-mode")?,
            "--nopreempt" => a.params.preempt = false,
            "--hash-port" => a.params.hash_port = true,
            "--seed-timers" => a.params.timers = Timers::seed(),
            "--requests" => a.requests = value("--requests")?.parse().context("--requests")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !["lvs", "nginx", "both", "ecmp"].contains(&a.scenario.as_str()) {
        bail!("--scenario must be lvs, nginx, both or ecmp");
    }
    if !["rr", "wrr", "sh", "mh"].contains(&a.params.sched.as_str()) {
        bail!("--sched must be rr, wrr, sh or mh");
    }
    if !["skb", "native"].contains(&a.params.xdp_mode.as_str()) {
        bail!("--xdp-mode must be skb or native");
    }
    // The ECMP lab does not prepare its veths for native XDP (a pass program on each node's
    // bridge port, TX checksum offload off, as the LVS lab does): every request would time
    // out.
    if a.scenario == "ecmp" && a.params.xdp_mode != "skb" {
        bail!("--scenario ecmp runs in skb mode only");
    }
    if a.requests == 0 {
        bail!("--requests must be at least 1");
    }
    Ok(a)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let ecmp = args.scenario == "ecmp";
    if ecmp {
        if let Some(why) = unavailable()? {
            bail!("--scenario ecmp cannot run here: {why}");
        }
    } else if !require_lab("lb-lab") {
        bail!("the lab needs root and its tools (`cargo xtask lab` installs them)");
    }
    // Ctrl-C / SIGTERM: every wait gives up, the run unwinds, the guards remove the lab.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    if ecmp {
        let title = "ECMP: three active-active lb-daemons behind a BGP router (BIRD, BFD)";
        println!("==== {title} ====");
        let mut s = Summary::default();
        let r = ecmp_demo(&args.params.xdp_mode, &mut s);
        s.print(title);
        if let Err(e) = r {
            if s.failed.is_empty() {
                failed.push(format!("ECMP: {e:#}"));
            }
            failed.extend(s.failed.iter().map(|f| format!("ECMP, step {f}")));
        }
    }
    if !ecmp && args.scenario != "nginx" {
        let p = &args.params;
        let title = format!(
            "LVS + Nginx + Keepalived ({}{}, XDP {}, {}, {} timers)",
            p.sched,
            if p.hash_port { " hash_port" } else { "" },
            p.xdp_mode,
            if p.preempt { "preempt" } else { "nopreempt" },
            if p.timers == Timers::seed() {
                "seed"
            } else {
                "lab"
            }
        );
        println!("==== {title} ====");
        let mut s = Summary::default();
        let r = lvs_demo(p, args.requests, &mut s);
        s.print(&title);
        if let Err(e) = r {
            if s.failed.is_empty() {
                failed.push(format!("LVS: {e:#}"));
            }
            failed.extend(s.failed.iter().map(|f| format!("LVS, step {f}")));
        }
    }
    if !ecmp && args.scenario != "lvs" && !CANCEL.load(Ordering::SeqCst) {
        let title = "Nginx + Keepalived (nopreempt, vrrp_script check_nginx)";
        println!("\n==== {title} ====");
        let mut s = Summary::default();
        let r = nginx_demo(args.params.timers, args.requests, &mut s);
        s.print(title);
        if let Err(e) = r {
            if s.failed.is_empty() {
                failed.push(format!("Nginx HA: {e:#}"));
            }
            failed.extend(s.failed.iter().map(|f| format!("Nginx HA, step {f}")));
        }
    }
    println!(
        "\n{:.1} s in all; every namespace removed",
        started.elapsed().as_secs_f64()
    );
    if CANCEL.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    println!("OK");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-lab: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
