//! `cargo xtask lab`: the demo. A client, one load balancer running `lb-daemon` with its XDP
//! program, and three nginx real servers (VIP on `lo`, arp_ignore/arp_announce as in the
//! seed's realserver script), all in network namespaces that are removed on exit or Ctrl-C.
//! It sends requests through the VIP and shows who answered and how the frames travelled.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use lb_tests::{
    lab::{counts, lab_config, prepare_native, start_daemon},
    netns::{fmt_mac, require_lab, unique_prefix, DrLab, VIP_V4, VIP_V6},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Args {
    sched: String,
    xdp_mode: String,
    requests: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sched: "rr".into(),
        xdp_mode: "skb".into(),
        requests: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--sched" => a.sched = value("--sched")?,
            "--xdp-mode" => a.xdp_mode = value("--xdp-mode")?,
            "--requests" => a.requests = value("--requests")?.parse().context("--requests")?,
            "-h" | "--help" => {
                println!(
                    "usage: lb-lab [--sched rr|wrr|sh|mh] [--xdp-mode skb|native] [--requests N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !["rr", "wrr", "sh", "mh"].contains(&a.sched.as_str()) {
        bail!("--sched must be rr, wrr, sh or mh");
    }
    if !["skb", "native"].contains(&a.xdp_mode.as_str()) {
        bail!("--xdp-mode must be skb or native");
    }
    Ok(a)
}

fn step(n: usize, what: &str) {
    println!("\n[{n}] {what}");
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !require_lab("lb-lab") {
        bail!("the lab needs root and its tools (`cargo xtask lab` installs them)");
    }
    // Ctrl-C: finish the current step, then drop the lab (which removes the namespaces).
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    step(1, "building the lab: client, lb, rs1..rs3 on a bridge");
    let lab = DrLab::new(&unique_prefix("lab"), 3)?;
    lab.add_vip_to_lb()?;
    let _native = if args.xdp_mode == "native" {
        Some(prepare_native(&lab)?)
    } else {
        None
    };
    let names: Vec<&str> = lab.namespaces().map(|n| n.name()).collect();
    println!("    namespaces: {}", names.join(" "));
    check_interrupt()?;

    let weights = if args.sched == "wrr" {
        [1, 2, 3]
    } else {
        [1, 1, 1]
    };
    step(
        2,
        &format!(
            "starting lb-daemon ({} over 3 real servers, XDP {} mode)",
            args.sched, args.xdp_mode
        ),
    );
    let (daemon, cfg) = start_daemon(
        &lab,
        &lab_config(&lab, &args.xdp_mode, &args.sched, &weights),
        &args.xdp_mode,
    )?;
    println!("    config: {}", cfg.display());
    check_interrupt()?;

    step(
        3,
        &format!(
            "{} requests to http://{VIP_V4}/ and to http://[{VIP_V6}]/, each a new connection",
            args.requests
        ),
    );
    let capture = lab.capture(lab.client(), "eth0", "tcp src port 80")?;
    let mut failed = Vec::new();
    for vip in [VIP_V4.to_string(), VIP_V6.to_string()] {
        let bodies = lab
            .curl_batch(&vip, args.requests)
            .with_context(|| format!("requests to {vip}"))?;
        let c = counts(&bodies);
        println!(
            "    {vip:<14} {}",
            c.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("  ")
        );
        // rr/wrr spread one client's connections; sh/mh hash its address, so one server
        // takes them all (that stickiness is the point of source hashing).
        let want = if matches!(args.sched.as_str(), "sh" | "mh") {
            1
        } else {
            3
        };
        if c.len() != want || bodies.len() != args.requests {
            failed.push(format!(
                "{vip}: expected {want} real server(s) to answer, got {c:?}"
            ));
        }
    }
    let lines = capture.stop()?;
    check_interrupt()?;

    step(4, "who sent the replies (tcpdump -e at the client)");
    let lb_mac = fmt_mac(&lab.lb_mac()?);
    let server_macs: Vec<String> = lab.server_macs()?.iter().map(fmt_mac).collect();
    let mut from_servers = 0;
    let mut via_lb = 0;
    for l in &lines {
        match l.split_whitespace().nth(1) {
            Some(src) if server_macs.iter().any(|m| m == src) => from_servers += 1,
            Some(src) if src == lb_mac => via_lb += 1,
            _ => {}
        }
    }
    println!("    {from_servers} reply frames straight from the real servers, {via_lb} through the LB ({lb_mac})");
    if via_lb > 0 || from_servers == 0 {
        failed.push("replies must come straight from the real servers".into());
    }

    daemon.signal(libc::SIGTERM)?;
    daemon.wait_timeout(std::time::Duration::from_secs(10))?;
    println!(
        "\nsummary: {} requests per VIP, {:.1} s in all; lab removed on exit",
        args.requests,
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("the lab did not behave:\n  {}", failed.join("\n  "));
    }
    println!("OK");
    Ok(())
}
