//! What start-up refuses beyond the file's own rules, and `lb-daemon check`: the
//! configuration checks itself (`config/`); here every other part checks what it would
//! refuse to start with (unknown users, unsafe scripts, an unreadable sync key or metrics
//! token, maps no node holds), by the same code the daemon starts with, starting nothing and
//! touching nothing.
use std::path::Path;

use crate::{
    config::{Config, ConfigError, RefKind},
    health, script,
    vrrp::{notify::NotifyOptions, track},
};

/// `lb-daemon check`: the file as [`Config::load`] reads it, its scripts as
/// [`check_scripts`] sees them, then what start-up would refuse beyond the file.
pub fn check_file(file: &Path) -> anyhow::Result<Config> {
    let c = Config::load(file)?;
    check_scripts(&c)?;
    let named = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", file.display());
    health::validate(&c).map_err(|e| match e {
        // It names the file and the line already.
        health::HealthError::Tls { .. } => anyhow::anyhow!("{e}"),
        e => named(&e),
    })?;
    track::validate(&c).map_err(|e| named(&e))?;
    NotifyOptions::from_global(&c.global_defs).map_err(|e| named(&e))?;
    c.sync_key()?;
    c.metrics_token()?;
    super::reconcile::dataplane_limits(&c).map_err(|e| named(&e))?;
    super::control_group(&c)?;
    super::overrides::load(&c.global_defs.state_dir_path())?;
    Ok(c)
}

/// What `lb-daemon check` says of a file it accepts: what it holds, VRRP instances first (a
/// VRRP-only node has no virtual server, and "0 virtual servers" alone reads as nothing).
pub fn summary(c: &Config) -> String {
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{}, {}, {}",
        count(c.vrrp_instances.len(), "VRRP instance", "VRRP instances"),
        count(c.virtual_servers.len(), "virtual server", "virtual servers"),
        count(
            c.virtual_servers.iter().map(|v| v.real_servers.len()).sum(),
            "real server",
            "real servers"
        ),
    )
}

/// keepalived's `enable_script_security` (on unless `global_defs` turns it off): every
/// script and hook exists, is executable, and neither it nor a directory above it can be
/// changed by a user other than root. An error names the file, the line and the key.
pub fn check_scripts(config: &Config) -> Result<(), ConfigError> {
    let safety = config.global_defs.enable_script_security != Some(false);
    for s in config.scripts.iter().filter(|s| s.kind == RefKind::Program) {
        // Without script security a script still has to be there to run.
        let checked = if safety {
            script::check_safety(&s.program)
        } else {
            script::check_runnable(&s.program)
        };
        checked.map_err(|message| ConfigError::Invalid {
            file: config.file.clone(),
            line: s.line,
            key: s.key.clone(),
            message,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn check_scripts_names_file_line_and_key() {
        let text = r#"
[[vrrp_script]]
name = "chk"
script = "/nonexistent/check.sh --fast"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 1
priority = 100
virtual_ipaddress = ["192.0.2.100"]
track_script = ["chk"]
notify = "/bin/true"
"#;
        let c = Config::parse(Path::new("lb.toml"), text).unwrap();
        assert_eq!(c.scripts.len(), 2);
        let e = check_scripts(&c).unwrap_err().to_string();
        assert!(
            e.starts_with("lb.toml:4: `vrrp_script.script`: /nonexistent/check.sh"),
            "{e}"
        );
        // Without script security ownership is not checked, but a missing script still is.
        let off = text.replacen("\n", "\n[global_defs]\nenable_script_security = false\n", 1);
        let e = check_scripts(&Config::parse(Path::new("lb.toml"), &off).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/check.sh: No such file"), "{e}");
        let present = off.replace("/nonexistent/check.sh", "/bin/true");
        check_scripts(&Config::parse(Path::new("lb.toml"), &present).unwrap()).unwrap();
    }

    #[test]
    fn summary_counts_vrrp_instances_services_and_real_servers() {
        let instance = |name: &str, vrid: u8| {
            format!(
                "[[vrrp_instance]]\nname = \"{name}\"\ninterface = \"eth0\"\n\
                 virtual_router_id = {vrid}\npriority = 100\nvirtual_ipaddress = [\"192.0.2.{vrid}\"]\n\n"
            )
        };
        // VRRP only: the instances are what the file holds.
        let vrrp_only = format!("{}{}", instance("VI_1", 1), instance("VI_2", 2));
        let c = Config::parse(Path::new("lb.toml"), &vrrp_only).unwrap();
        assert_eq!(
            summary(&c),
            "2 VRRP instances, 0 virtual servers, 0 real servers"
        );
        let service = |port: u16, servers: &[u8]| {
            let mut s = format!(
                "[[virtual_server]]\nip = \"192.0.2.1\"\nport = {port}\nprotocol = \"TCP\"\n\
                 lb_algo = \"rr\"\nlb_kind = \"DR\"\n"
            );
            for last in servers {
                s += &format!(
                    "[[virtual_server.real_server]]\nip = \"192.0.2.{last}\"\nport = {port}\n"
                );
            }
            s
        };
        let one = format!(
            "[dataplane]\ninterface = \"eth0\"\n\n{}{}",
            instance("VI_1", 1),
            service(80, &[11])
        );
        let c = Config::parse(Path::new("lb.toml"), &one).unwrap();
        assert_eq!(
            summary(&c),
            "1 VRRP instance, 1 virtual server, 1 real server"
        );
        let more = format!("{one}{}", service(443, &[11, 12, 13]));
        let c = Config::parse(Path::new("lb.toml"), &more).unwrap();
        assert_eq!(
            summary(&c),
            "1 VRRP instance, 2 virtual servers, 4 real servers"
        );
    }
}
