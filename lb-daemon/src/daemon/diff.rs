//! `lb-daemon diff --config NEW.toml`: what a reload of another file would change, said
//! line by line, changing nothing. The pure part: two configurations in, lines out; the
//! daemon adds whether the reload would be refused and how many map elements it would
//! write (the planner's dry run).
use std::{collections::BTreeMap, fmt::Debug, net::SocketAddr};

use crate::config::{Config, VirtualServer};

/// What differs from `old` to `new`: `global_defs` keys, VRRP instances and sync groups,
/// services and their real servers, `[dataplane]`, `[sync]` and `[announce]`. Empty:
/// nothing.
pub(super) fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    global_defs(old, new, &mut out);
    if old.dataplane != new.dataplane {
        out.push("[dataplane] changed".into());
    }
    if old.sync != new.sync {
        out.push("[sync] changed".into());
    }
    match (&old.announce, &new.announce) {
        (None, None) => {}
        (None, Some(_)) => out.push("[announce] added".into()),
        (Some(_), None) => out.push("[announce] removed: its routes are withdrawn".into()),
        (Some(a), Some(b)) => {
            for v in b.vips.iter().filter(|v| !a.vips.contains(v)) {
                out.push(format!("[announce] vip {v}: added"));
            }
            for v in a.vips.iter().filter(|v| !b.vips.contains(v)) {
                out.push(format!("[announce] vip {v}: removed (withdrawn)"));
            }
            if (a.table, &a.device) != (b.table, &b.device) {
                out.push("[announce] table or device changed".into());
            }
        }
    }
    instances(old, new, &mut out);
    let groups = |c: &Config| -> BTreeMap<String, Vec<String>> {
        c.sync_groups
            .iter()
            .map(|g| (g.name.clone(), g.members.clone()))
            .collect()
    };
    let (og, ng) = (groups(old), groups(new));
    for (name, members) in &ng {
        match og.get(name) {
            None => out.push(format!("vrrp_sync_group {name}: added {members:?}")),
            Some(m) if m != members => out.push(format!(
                "vrrp_sync_group {name}: members {m:?} -> {members:?}"
            )),
            Some(_) => {}
        }
    }
    for name in og.keys().filter(|n| !ng.contains_key(*n)) {
        out.push(format!("vrrp_sync_group {name}: removed"));
    }
    services(old, new, &mut out);
    out
}

fn changed<T: PartialEq + Debug>(out: &mut Vec<String>, what: &str, a: &T, b: &T) {
    if a != b {
        out.push(format!("{what}: {a:?} -> {b:?}"));
    }
}

fn global_defs(old: &Config, new: &Config, out: &mut Vec<String>) {
    let (a, b) = (&old.global_defs, &new.global_defs);
    let k = |key: &str| format!("global_defs.{key}");
    changed(out, &k("router_id"), &a.router_id, &b.router_id);
    changed(out, &k("vrrp_version"), &a.vrrp_version, &b.vrrp_version);
    changed(
        out,
        &k("enable_script_security"),
        &a.enable_script_security,
        &b.enable_script_security,
    );
    changed(out, &k("script_user"), &a.script_user, &b.script_user);
    changed(out, &k("notify_fifo"), &a.notify_fifo, &b.notify_fifo);
    changed(
        out,
        &k("notify_fifo_format"),
        &a.notify_fifo_format,
        &b.notify_fifo_format,
    );
    changed(
        out,
        &k("notify_fifo_script"),
        &a.notify_fifo_script.as_ref().map(|s| s.get_ref()),
        &b.notify_fifo_script.as_ref().map(|s| s.get_ref()),
    );
    changed(
        out,
        &k("control_socket"),
        &a.control_socket,
        &b.control_socket,
    );
    changed(
        out,
        &k("control_socket_group"),
        &a.control_socket_group.as_ref().map(|g| g.get_ref()),
        &b.control_socket_group.as_ref().map(|g| g.get_ref()),
    );
    changed(
        out,
        &k("metrics_address"),
        &a.metrics_address.as_ref().map(|m| *m.get_ref()),
        &b.metrics_address.as_ref().map(|m| *m.get_ref()),
    );
    changed(
        out,
        &k("metrics_bearer_token_file"),
        &a.metrics_bearer_token_file.as_ref().map(|m| m.get_ref()),
        &b.metrics_bearer_token_file.as_ref().map(|m| m.get_ref()),
    );
    changed(
        out,
        &k("metrics_per_backend"),
        &a.metrics_per_backend,
        &b.metrics_per_backend,
    );
    changed(out, &k("on_stop"), &a.on_stop, &b.on_stop);
    changed(out, &k("state_dir"), &a.state_dir, &b.state_dir);
    for (key, x, y) in [
        (
            "vrrp_startup_delay",
            &a.vrrp_startup_delay,
            &b.vrrp_startup_delay,
        ),
        (
            "vrrp_garp_interval",
            &a.vrrp_garp_interval,
            &b.vrrp_garp_interval,
        ),
        (
            "vrrp_gna_interval",
            &a.vrrp_gna_interval,
            &b.vrrp_gna_interval,
        ),
    ] {
        let value = |v: &Option<toml::Spanned<f64>>| v.as_ref().map(|s| *s.get_ref());
        changed(out, &k(key), &value(x), &value(y));
    }
}

fn instances(old: &Config, new: &Config, out: &mut Vec<String>) {
    for n in &new.vrrp_instances {
        let Some(o) = old.vrrp_instances.iter().find(|o| o.name == n.name) else {
            let vips: Vec<String> = n
                .virtual_ipaddress
                .iter()
                .map(|v| v.addr.to_string())
                .collect();
            out.push(format!(
                "vrrp_instance {}: added (virtual_router_id {}, priority {}, VIPs {})",
                n.name,
                n.vrid,
                n.priority,
                vips.join(" ")
            ));
            continue;
        };
        if o == n {
            continue;
        }
        let before = out.len();
        let i = |key: &str| format!("vrrp_instance {}: {key}", n.name);
        changed(out, &i("priority"), &o.priority, &n.priority);
        changed(
            out,
            &i("advert_int (centiseconds)"),
            &o.advert_int_cs,
            &n.advert_int_cs,
        );
        changed(out, &i("preempt"), &o.preempt, &n.preempt);
        changed(out, &i("preempt_delay"), &o.preempt_delay, &n.preempt_delay);
        changed(out, &i("interface"), &o.interface, &n.interface);
        changed(out, &i("virtual_router_id"), &o.vrid, &n.vrid);
        changed(out, &i("unicast_peer"), &o.unicast_peer, &n.unicast_peer);
        let addrs = |v: &crate::config::VrrpInstance| -> Vec<String> {
            v.virtual_ipaddress
                .iter()
                .map(|a| a.addr.to_string())
                .collect()
        };
        let (ov, nv) = (addrs(o), addrs(n));
        for a in nv.iter().filter(|a| !ov.contains(a)) {
            out.push(format!("vrrp_instance {}: VIP {a} added", n.name));
        }
        for a in ov.iter().filter(|a| !nv.contains(a)) {
            out.push(format!("vrrp_instance {}: VIP {a} removed", n.name));
        }
        if o.auth_pass != n.auth_pass {
            out.push(format!("vrrp_instance {}: authentication changed", n.name));
        }
        if out.len() == before {
            out.push(format!(
                "vrrp_instance {}: other settings (tracking, notify, timers)",
                n.name
            ));
        }
    }
    for o in &old.vrrp_instances {
        if !new.vrrp_instances.iter().any(|n| n.name == o.name) {
            out.push(format!("vrrp_instance {}: removed", o.name));
        }
    }
}

fn services(old: &Config, new: &Config, out: &mut Vec<String>) {
    let by_key = |c: &Config| -> BTreeMap<crate::model::ServiceKey, std::sync::Arc<VirtualServer>> {
        c.virtual_servers
            .iter()
            .map(|v| (v.key(), v.clone()))
            .collect()
    };
    let (o, n) = (by_key(old), by_key(new));
    for (key, nv) in &n {
        let Some(ov) = o.get(key) else {
            out.push(format!(
                "virtual_server {key}: added ({} real servers)",
                nv.real_servers.len()
            ));
            continue;
        };
        if std::sync::Arc::ptr_eq(ov, nv) || ov == nv {
            continue;
        }
        let before = out.len();
        let s = |what: &str| format!("virtual_server {key}: {what}");
        changed(out, &s("lb_algo"), &ov.sched, &nv.sched);
        changed(
            out,
            &s("persistence_timeout"),
            &ov.persistence_timeout,
            &nv.persistence_timeout,
        );
        changed(out, &s("quorum"), &ov.quorum, &nv.quorum);
        changed(out, &s("sorry_server"), &ov.sorry_server, &nv.sorry_server);
        let reals = |v: &VirtualServer| -> BTreeMap<SocketAddr, u32> {
            v.real_servers.iter().map(|r| (r.addr, r.weight)).collect()
        };
        let (or, nr) = (reals(ov), reals(nv));
        for (addr, w) in &nr {
            match or.get(addr) {
                None => out.push(format!(
                    "virtual_server {key}: real server {addr} added (weight {w})"
                )),
                Some(ow) if ow != w => out.push(format!(
                    "virtual_server {key}: real server {addr} weight {ow} -> {w}"
                )),
                Some(_) => {}
            }
        }
        for addr in or.keys().filter(|a| !nr.contains_key(*a)) {
            out.push(format!("virtual_server {key}: real server {addr} removed"));
        }
        if out.len() == before {
            out.push(format!(
                "virtual_server {key}: other settings (checks, timeouts, flags)"
            ));
        }
    }
    for key in o.keys().filter(|k| !n.contains_key(*k)) {
        out.push(format!("virtual_server {key}: removed"));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
[global_defs]
router_id = "lb1"

[dataplane]
interface = "eth0"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["192.0.2.100/24"]

[[virtual_server]]
ip = "192.0.2.100"
port = 80
protocol = "TCP"
lb_algo = "rr"
lb_kind = "DR"

  [[virtual_server.real_server]]
  ip = "192.0.2.11"
  port = 80

  [[virtual_server.real_server]]
  ip = "192.0.2.12"
  port = 80
"#;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("lb.toml"), text).unwrap()
    }

    #[test]
    fn the_same_file_differs_in_nothing() {
        assert!(describe(&parse(TEXT), &parse(TEXT)).is_empty());
    }

    #[test]
    fn announce_changes_are_said() {
        let service = |vip: &str| {
            format!(
                "\n[[virtual_server]]\nip = \"{vip}\"\nport = 80\nprotocol = \"TCP\"\nlb_kind = \"DR\"\nstatic = true\n"
            )
        };
        let with = |vips: &str| {
            parse(&format!(
                "{TEXT}\n[announce]\nvips = [{vips}]\n{}{}",
                service("203.0.113.10"),
                service("203.0.113.11")
            ))
        };
        let without = parse(&format!(
            "{TEXT}{}{}",
            service("203.0.113.10"),
            service("203.0.113.11")
        ));
        let one = with("\"203.0.113.10\"");
        let two = with("\"203.0.113.10\", \"203.0.113.11\"");
        assert_eq!(describe(&one, &two), ["[announce] vip 203.0.113.11: added"]);
        assert_eq!(
            describe(&two, &one),
            ["[announce] vip 203.0.113.11: removed (withdrawn)"]
        );
        assert!(describe(&without, &one).contains(&"[announce] added".to_string()));
        assert!(describe(&one, &without)
            .contains(&"[announce] removed: its routes are withdrawn".to_string()));
    }

    #[test]
    fn each_kind_of_change_is_said() {
        let new = TEXT
            .replace("router_id = \"lb1\"", "router_id = \"lb9\"")
            .replace("priority = 100", "priority = 150")
            .replace(
                "[\"192.0.2.100/24\"]",
                "[\"192.0.2.100/24\", \"192.0.2.101/24\"]",
            )
            .replace("lb_algo = \"rr\"", "lb_algo = \"wrr\"")
            .replace(
                "  ip = \"192.0.2.12\"\n  port = 80\n",
                "  ip = \"192.0.2.13\"\n  port = 80\n  weight = 3\n",
            )
            .replacen(
                "  ip = \"192.0.2.11\"\n  port = 80\n",
                "  ip = \"192.0.2.11\"\n  port = 80\n  weight = 2\n",
                1,
            )
            + "\n[[virtual_server]]\nip = \"192.0.2.100\"\nport = 443\nprotocol = \"TCP\"\nlb_algo = \"rr\"\nlb_kind = \"DR\"\n";
        let lines = describe(&parse(TEXT), &parse(&new));
        let want = [
            "global_defs.router_id: Some(\"lb1\") -> Some(\"lb9\")",
            "vrrp_instance VI_1: priority: 100 -> 150",
            "vrrp_instance VI_1: VIP 192.0.2.101 added",
            "virtual_server 192.0.2.100:80/TCP: lb_algo: Rr -> Wrr",
            "virtual_server 192.0.2.100:80/TCP: real server 192.0.2.11:80 weight 1 -> 2",
            "virtual_server 192.0.2.100:80/TCP: real server 192.0.2.13:80 added (weight 3)",
            "virtual_server 192.0.2.100:80/TCP: real server 192.0.2.12:80 removed",
            "virtual_server 192.0.2.100:443/TCP: added (0 real servers)",
        ];
        assert_eq!(lines, want);
        // And the other way round: what was added is removed.
        let back = describe(&parse(&new), &parse(TEXT));
        assert!(back.contains(&"virtual_server 192.0.2.100:443/TCP: removed".to_string()));
        assert!(back.contains(&"vrrp_instance VI_1: VIP 192.0.2.101 removed".to_string()));
    }
}
