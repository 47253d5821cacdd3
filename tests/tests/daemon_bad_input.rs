//! `lb-daemon run` given what a host does not have: it stops with one clear line naming the
//! missing piece, and leaves nothing behind (no XDP program, no address).
use std::time::Duration;

use lb_tests::{
    lab::{daemon_bin, with_control_socket},
    netns::{require_root, unique_prefix, Netns},
};

/// Starts the daemon in `ns` with `config`; returns its exit status and stderr.
fn run_to_exit(ns: &Netns, config: &str) -> (std::process::ExitStatus, String) {
    let path = ns.dir().join("lb.toml");
    std::fs::write(&path, with_control_socket(config, ns.dir())).unwrap();
    let bin = daemon_bin().unwrap();
    let daemon = ns
        .spawn(&[
            bin.to_str().unwrap(),
            "run",
            "--config",
            path.to_str().unwrap(),
        ])
        .unwrap();
    let status = daemon
        .wait_timeout(Duration::from_secs(15))
        .unwrap()
        .unwrap_or_else(|| panic!("still running:\n{}", daemon.read_stderr()));
    (status, daemon.read_stderr())
}

const SERVICE: &str = r#"
[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"
static = true

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80
"#;

#[test]
fn unknown_interfaces_stop_the_daemon_with_their_name() {
    if !require_root("daemon_bad_input") {
        return;
    }
    let ns = Netns::new(&format!("{}-x", unique_prefix("bi"))).unwrap();

    // The dataplane's interface.
    let config = format!("[dataplane]\ninterface = \"nosuch0\"\n{SERVICE}");
    let (status, stderr) = run_to_exit(&ns, &config);
    assert!(!status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last, "Error: no interface \"nosuch0\": No such device (os error 19)",
        "{stderr}"
    );

    // A VRRP instance's interface, with the dataplane on one that exists: the program it
    // attached first is gone with it, and no address was added.
    let config = format!(
        "[dataplane]\ninterface = \"lo\"\nxdp_mode = \"skb\"\n{SERVICE}\n\
         [[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"nosuch1\"\nvirtual_router_id = 1\n\
         priority = 100\nvirtual_ipaddress = [\"192.0.2.200\"]\n"
    )
    .replace("static = true\n", "");
    let config = config.replace("ip = \"192.0.2.100\"", "ip = \"192.0.2.200\"");
    let (status, stderr) = run_to_exit(&ns, &config);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("no interface \"nosuch1\""), "{stderr}");
    let lo = ns.ip(&["link", "show", "dev", "lo"]).unwrap();
    assert!(!lo.contains("xdp"), "an XDP program was left on lo: {lo}");
    let addrs = ns.ip(&["addr", "show"]).unwrap();
    assert!(!addrs.contains("192.0.2.200"), "{addrs}");
}
