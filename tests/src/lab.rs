//! The pieces the DR namespace test and the `lb-lab` demo share: a config for the lab's
//! topology, the daemon started inside the LB namespace, and per-backend counting.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    netns::{wait_until, DrLab, Netns, Proc},
    xdp::{load_testprog, xdp_of},
};

/// The `lb-daemon` binary: `$LB_DAEMON_BIN`, else beside (or one level above) the running
/// executable, where `cargo build --release -p lb-daemon` puts it.
pub fn daemon_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_DAEMON_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("own path")?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("lb-daemon"))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "lb-daemon not found at {candidates:?}: build it with `cargo build --release -p lb-daemon` \
             (`cargo xtask test` and `cargo xtask lab` do)"
        )
    })
}

/// The upgrade test's other build of the daemon (`LB_VARIANT_DAEMON_BIN`, else
/// `target/variant/lb-daemon` beside `target/release/`): its XDP program differs from the
/// ordinary one in a constant only (`cargo xtask test` builds it).
pub fn variant_daemon_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LB_VARIANT_DAEMON_BIN") {
        return Ok(p.into());
    }
    let main = daemon_bin()?;
    let p = main
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("variant/lb-daemon"))
        .context("target directory")?;
    ensure!(
        p.is_file(),
        "{} is missing: `cargo xtask test` builds it",
        p.display()
    );
    Ok(p)
}

/// `config` with the daemon's control socket in `dir`: every daemon of a test needs its own
/// (namespaces share the file system, and the default is /run/lb-daemon.sock).
pub fn with_control_socket(config: &str, dir: &std::path::Path) -> String {
    // The state directory too: runtime overrides stay the test's own, never the host's
    // /var/lib/lb-daemon.
    let line = format!(
        "control_socket = \"{}\"\nstate_dir = \"{}\"\n",
        dir.join("ctl.sock").display(),
        dir.join("state").display()
    );
    match config.find("[global_defs]\n") {
        Some(i) => {
            let at = i + "[global_defs]\n".len();
            format!("{}{line}{}", &config[..at], &config[at..])
        }
        None => format!("[global_defs]\n{line}\n{config}"),
    }
}

/// The lab's services: port 80 on the v4 and v6 VIPs, one real server per lab server.
pub fn lab_config(lab: &DrLab, xdp_mode: &str, lb_algo: &str, weights: &[u32]) -> String {
    let mut c = format!(
        "[global_defs]\nrouter_id = \"{}\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"{xdp_mode}\"\nmax_flows = 65536\n",
        lab.prefix()
    );
    let n = lab.servers().len();
    for (vip, servers) in [
        (
            crate::netns::VIP_V4.to_string(),
            (1..=n)
                .map(|i| crate::netns::server_v4(i).to_string())
                .collect::<Vec<_>>(),
        ),
        (
            crate::netns::VIP_V6.to_string(),
            (1..=n)
                .map(|i| crate::netns::server_v6(i).to_string())
                .collect(),
        ),
    ] {
        c += &format!(
            "\n[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\nlb_algo = \"{lb_algo}\"\nlb_kind = \"DR\"\n# No VRRP instance owns the VIP yet: this node always serves it.\nstatic = true\n"
        );
        for (s, w) in servers.iter().zip(weights) {
            c += &format!(
                "  [[virtual_server.real_server]]\n  ip = \"{s}\"\n  port = 80\n  weight = {w}\n"
            );
        }
    }
    c
}

/// Keeps the bridge-side XDP program of native mode alive.
pub struct NativePeer {
    _ebpf: aya::Ebpf,
    _link: aya::programs::xdp::XdpLinkId,
}

/// What native XDP on veth needs: an XDP program on the bridge-side peer
/// of the LB's veth, and TX checksum offload off on the senders.
pub fn prepare_native(lab: &DrLab) -> Result<NativePeer> {
    lab.set_tx_offload_off()?;
    pass_on_port(lab.bridge(), "to-lb")
}

/// A trivial XDP_PASS program (native mode) on `port` of the bridge namespace `bridge`: what
/// native XDP_TX on a load balancer's veth needs on the veth's bridge-side peer.
/// Detached when the returned value is dropped.
pub fn pass_on_port(bridge: &Netns, port: &str) -> Result<NativePeer> {
    let ifindex = bridge.ifindex(port)?;
    bridge.run_in(move || -> Result<NativePeer> {
        let mut ebpf = load_testprog("pass")?;
        let link = xdp_of(&mut ebpf, "pass")?
            .attach_to_if_index(ifindex, aya::programs::XdpMode::Driver)?;
        Ok(NativePeer {
            _ebpf: ebpf,
            _link: link,
        })
    })?
}

/// Starts `lb-daemon run` in the LB namespace with `config`, and waits until the program is
/// attached in `xdp_mode` and every backend's MAC is resolved.
pub fn start_daemon(lab: &DrLab, config: &str, xdp_mode: &str) -> Result<(Proc, PathBuf)> {
    start_daemon_resolving(lab, config, xdp_mode, 2 * lab.servers().len())
}

/// [`start_daemon`] for a configuration whose real servers are not the lab's two per
/// server (v4 and v6): waits for `macs` resolved MACs.
pub fn start_daemon_resolving(
    lab: &DrLab,
    config: &str,
    xdp_mode: &str,
    macs: usize,
) -> Result<(Proc, PathBuf)> {
    start_daemon_in(lab.lb(), config, xdp_mode, macs)
}

/// [`start_daemon_resolving`] in namespace `lb`, of any topology.
pub fn start_daemon_in(
    lb: &crate::netns::Netns,
    config: &str,
    xdp_mode: &str,
    macs: usize,
) -> Result<(Proc, PathBuf)> {
    let cfg = lb.dir().join("lb.toml");
    std::fs::write(&cfg, with_control_socket(config, lb.dir()))?;
    let bin = daemon_bin()?;
    let daemon = lb.spawn(&[
        bin.to_str().context("path")?,
        "run",
        "--config",
        cfg.to_str().context("path")?,
    ])?;
    let attached = format!("mode=\"{xdp_mode}\"");
    let mut exited = false;
    let ready = wait_until(
        &format!("lb-daemon to attach and resolve {macs} backend MACs"),
        Duration::from_secs(30),
        || {
            exited = !daemon.is_running();
            let log = daemon.read_stderr();
            exited
                || (log.contains(&attached) && log.matches("backend MAC resolved").count() >= macs)
        },
    );
    if exited {
        bail!("lb-daemon exited:\n{}", daemon.read_stderr());
    }
    ready.with_context(|| daemon.read_stderr())?;
    Ok((daemon, cfg))
}

/// Rewrites the config and reloads it with SIGHUP; waits until the daemon says so.
pub fn reload(daemon: &Proc, cfg: &std::path::Path, config: &str) -> Result<()> {
    let before = daemon
        .read_stderr()
        .matches("configuration reloaded")
        .count();
    let dir = cfg.parent().context("config directory")?;
    std::fs::write(cfg, with_control_socket(config, dir))?;
    daemon.signal(libc::SIGHUP)?;
    wait_until("the reload", Duration::from_secs(10), || {
        daemon
            .read_stderr()
            .matches("configuration reloaded")
            .count()
            > before
    })
}

/// Starts real server `i`'s nginx again, with the lab's own command line (after a test
/// killed it to make the server fail its health checks).
pub fn restart_nginx(lab: &DrLab, i: usize) -> Result<Proc> {
    crate::netns::spawn_nginx(lab.server(i), &format!("rs{i}"))
}

/// How many replies each server gave (the servers answer with their name).
pub fn counts(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b.trim().to_string()).or_insert(0) += 1;
    }
    m
}

/// `lb-daemon status --json` of the daemon in `lab`'s LB namespace (its control socket).
pub fn status_json(lab: &DrLab) -> serde_json::Value {
    status_json_in(lab.lb())
}

/// [`status_json`] of the daemon in namespace `lb`.
pub fn status_json_in(lb: &crate::netns::Netns) -> serde_json::Value {
    let out = std::process::Command::new(daemon_bin().unwrap())
        .args(["status", "--json", "--socket"])
        .arg(lb.dir().join("ctl.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
