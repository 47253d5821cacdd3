//! Runtime changes to real servers, what `ipvsadm -e` does: `lb-daemon real-server
//! drain|weight N|disable|enable|reset SERVICE REAL`. Each is an override on top of the file:
//! the file says what a real server is, an override what the operator made of it since, and
//! it stays until reset (a reload keeps it, a restart reads it back from the state file).
//!
//! - `weight N` serves the real server with weight N while it is up, whatever the file or a
//!   MISC_CHECK's dynamic weight says; `drain` is `weight 0`: no new flow, established
//!   flows go on (as for weight 0 in the file).
//! - `disable` takes it out as a failed check would (its established flows then follow the
//!   service's `expire_nodest_conn`); `enable` undoes `disable` and `drain` (a weight other
//!   than 0 stays).
//! - `reset` removes every override of the real server (`--all`: of every real server).
//!
//! The pure part ([`Overrides`]) is what the daemon keeps; [`load`] and [`save`] are its
//! state file, JSON written atomically (a temporary file, fsync, rename, fsync of the
//! directory), so that a crash leaves the old file or the new one, never half of one.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, RealServer, VirtualServer, MAX_WEIGHT},
    model::{RealServerAction as Action, ServiceKey},
};

/// The state file's name in `global_defs.state_dir`.
pub const FILE_NAME: &str = "overrides.json";

/// What the operator changed on one real server.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Serve with this weight while up (0: drained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Out, as if its checks failed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

impl Override {
    fn is_empty(&self) -> bool {
        self.weight.is_none() && !self.disabled
    }
}

/// What `action` makes of an override.
fn apply(action: Action, o: &mut Override) {
    match action {
        Action::Drain => o.weight = Some(0),
        Action::Weight(w) => o.weight = Some(w),
        Action::Disable => o.disabled = true,
        Action::Enable => {
            o.disabled = false;
            if o.weight == Some(0) {
                o.weight = None;
            }
        }
        Action::Reset => *o = Override::default(),
    }
}

/// Every override, by service and real server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    by: BTreeMap<ServiceKey, BTreeMap<SocketAddr, Override>>,
}

/// One line of the state file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    service: String,
    real_server: SocketAddr,
    #[serde(flatten)]
    with: Override,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    overrides: Vec<Entry>,
}

const STATE_VERSION: u32 = 1;

impl Overrides {
    pub fn get(&self, service: &ServiceKey, real: SocketAddr) -> Option<&Override> {
        self.by.get(service)?.get(&real)
    }

    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by.values().map(BTreeMap::len).sum()
    }

    /// A real server's verdict (up, dynamic weight; `None`: none yet) with its override:
    /// disabled is down; a weight replaces the file's and a dynamic one while up. `alpha`:
    /// the server counts as down until its first verdict (keepalived's `alpha`).
    pub fn verdict(
        &self,
        service: &ServiceKey,
        rs: &RealServer,
        verdict: Option<(bool, Option<u32>)>,
    ) -> Option<(bool, Option<u32>)> {
        let Some(o) = self.get(service, rs.addr) else {
            return verdict;
        };
        if o.disabled {
            return Some((false, None));
        }
        match o.weight {
            None => verdict,
            Some(w) => {
                let up = verdict.map_or(!rs.alpha(), |v| v.0);
                Some((up, up.then_some(w)))
            }
        }
    }

    /// Applies `action` to real server `real` of `vs`; what the server's override is now.
    pub fn set(&mut self, vs: &VirtualServer, real: SocketAddr, action: Action) -> Override {
        let key = vs.key();
        let per = self.by.entry(key).or_default();
        let o = per.entry(real).or_default();
        apply(action, o);
        let now = *o;
        if now.is_empty() {
            per.remove(&real);
            if per.is_empty() {
                self.by.remove(&key);
            }
        }
        now
    }

    /// Removes every override; how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        self.by.clear();
        n
    }

    /// Drops the overrides of what `config` no longer has, returning them (to be logged).
    pub fn retain_configured(&mut self, config: &Config) -> Vec<(ServiceKey, SocketAddr)> {
        let mut dropped = Vec::new();
        let services: BTreeMap<ServiceKey, &VirtualServer> = config
            .virtual_servers
            .iter()
            .map(|vs| (vs.key(), &**vs))
            .collect();
        self.by.retain(|key, per| {
            let vs = services.get(key);
            per.retain(|addr, _| {
                let kept = vs.is_some_and(|vs| vs.real_servers.iter().any(|rs| rs.addr == *addr));
                if !kept {
                    dropped.push((*key, *addr));
                }
                kept
            });
            !per.is_empty()
        });
        dropped
    }

    /// The state file's text.
    pub fn to_json(&self) -> String {
        let overrides = self
            .by
            .iter()
            .flat_map(|(key, per)| {
                per.iter().map(|(addr, o)| Entry {
                    service: key.to_string(),
                    real_server: *addr,
                    with: *o,
                })
            })
            .collect();
        let mut text = serde_json::to_string_pretty(&StateFile {
            version: STATE_VERSION,
            overrides,
        })
        .expect("overrides always encode");
        text.push('\n');
        text
    }

    /// The state file `text` read back (the services named as [`ServiceKey`]'s `Display`
    /// writes them); errors name the line.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: StateFile =
            serde_json::from_str(text).map_err(|e| format!("line {}: {e}", e.line()))?;
        if file.version != STATE_VERSION {
            return Err(format!(
                "version {} (this build reads version {STATE_VERSION})",
                file.version
            ));
        }
        let mut by: BTreeMap<ServiceKey, BTreeMap<SocketAddr, Override>> = BTreeMap::new();
        for (i, e) in file.overrides.into_iter().enumerate() {
            let at = format!("override {} ({} {})", i + 1, e.service, e.real_server);
            let key = crate::model::parse_service_key(&e.service)
                .map_err(|m| format!("{at}: service: {m}"))?;
            if e.with.weight.is_some_and(|w| w > MAX_WEIGHT) {
                return Err(format!("{at}: weight out of range 0..={MAX_WEIGHT}"));
            }
            if !e.with.is_empty()
                && by
                    .entry(key)
                    .or_default()
                    .insert(e.real_server, e.with)
                    .is_some()
            {
                return Err(format!("{at}: a second override of the same real server"));
            }
        }
        Ok(Overrides { by })
    }
}

/// The state file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The overrides `dir`'s state file holds (none when there is no file). A file that does not
/// read is an error naming it: starting without the operator's changes would undo them
/// silently.
pub fn load(dir: &Path) -> Result<Overrides> {
    let p = path(dir);
    match fs::read_to_string(&p) {
        Ok(text) => Overrides::from_json(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (the runtime overrides of `lb-daemon real-server`: fix the file, or \
                 remove it to start without them)",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Writes the state file atomically (no file at all when there is no override).
pub fn save(dir: &Path, overrides: &Overrides) -> Result<()> {
    let p = path(dir);
    if overrides.is_empty() {
        return match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        };
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(overrides.to_json().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &p)?;
        fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[dataplane]
interface = "eth0"

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
  weight = 3

  [[virtual_server.real_server]]
  ip = "192.0.2.12"
  port = 80
    [[virtual_server.real_server.TCP_CHECK]]
    alpha = true
"#;

    fn config() -> Config {
        Config::parse(Path::new("lb.toml"), TEXT).unwrap()
    }

    #[test]
    fn actions_make_and_undo_overrides() {
        let c = config();
        let vs = &c.virtual_servers[0];
        let rs = &vs.real_servers[0];
        let key = vs.key();
        let mut o = Overrides::default();
        let up = Some((true, None));
        assert_eq!(o.verdict(&key, rs, up), up);
        o.set(vs, rs.addr, Action::Drain);
        assert_eq!(o.verdict(&key, rs, up), Some((true, Some(0))));
        assert_eq!(rs.healthy_weight(o.verdict(&key, rs, up)), Some(0));
        // Down stays down, whatever the weight.
        assert_eq!(
            rs.healthy_weight(o.verdict(&key, rs, Some((false, None)))),
            None
        );
        o.set(vs, rs.addr, Action::Weight(7));
        // A dynamic weight gives way to the operator's.
        assert_eq!(
            rs.healthy_weight(o.verdict(&key, rs, Some((true, Some(2))))),
            Some(7)
        );
        o.set(vs, rs.addr, Action::Disable);
        assert_eq!(o.verdict(&key, rs, up), Some((false, None)));
        // Enable undoes disable and keeps a weight other than 0.
        assert_eq!(
            o.set(vs, rs.addr, Action::Enable),
            Override {
                weight: Some(7),
                disabled: false
            }
        );
        o.set(vs, rs.addr, Action::Drain);
        assert_eq!(o.set(vs, rs.addr, Action::Enable), Override::default());
        assert!(o.is_empty(), "an empty override is no override");
        o.set(vs, rs.addr, Action::Weight(2));
        assert_eq!(o.set(vs, rs.addr, Action::Reset), Override::default());
        assert!(o.is_empty());
    }

    /// A weight on a server with `alpha` and no verdict yet: still down until checked.
    #[test]
    fn alpha_holds_until_the_first_verdict() {
        let c = config();
        let vs = &c.virtual_servers[0];
        let rs = &vs.real_servers[1];
        let mut o = Overrides::default();
        o.set(vs, rs.addr, Action::Weight(5));
        assert_eq!(rs.healthy_weight(o.verdict(&vs.key(), rs, None)), None);
        assert_eq!(
            rs.healthy_weight(o.verdict(&vs.key(), rs, Some((true, None)))),
            Some(5)
        );
    }

    #[test]
    fn the_state_file_round_trips_and_refuses_what_it_cannot_read() {
        let c = config();
        let vs = &c.virtual_servers[0];
        let mut o = Overrides::default();
        o.set(vs, vs.real_servers[0].addr, Action::Drain);
        o.set(vs, vs.real_servers[1].addr, Action::Disable);
        let text = o.to_json();
        assert!(text.contains("\"192.0.2.100:80/TCP\""), "{text}");
        assert_eq!(Overrides::from_json(&text).unwrap(), o);
        for (bad, why) in [
            ("{", "line 1"),
            (r#"{"version":2,"overrides":[]}"#, "version 2"),
            (
                r#"{"version":1,"overrides":[{"service":"192.0.2.100:80/SCTP","real_server":"192.0.2.11:80","weight":1}]}"#,
                "SCTP",
            ),
            (
                r#"{"version":1,"overrides":[{"service":"192.0.2.100:80/TCP","real_server":"192.0.2.11:80","weight":70000}]}"#,
                "out of range",
            ),
            (
                r#"{"version":1,"overrides":[{"service":"192.0.2.100:80/TCP","real_server":"192.0.2.11:80","wieght":1}]}"#,
                "wieght",
            ),
            (
                r#"{"version":1,"overrides":[{"service":"192.0.2.100:80/TCP","real_server":"192.0.2.11:80","weight":1},{"service":"192.0.2.100:80/TCP","real_server":"192.0.2.11:80","weight":2}]}"#,
                "override 2 (192.0.2.100:80/TCP 192.0.2.11:80): a second override",
            ),
        ] {
            let e = Overrides::from_json(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_reload_drops_what_it_removed() {
        let c = config();
        let vs = &c.virtual_servers[0];
        let mut o = Overrides::default();
        o.set(vs, vs.real_servers[0].addr, Action::Drain);
        o.set(vs, vs.real_servers[1].addr, Action::Drain);
        let fewer = Config::parse(
            Path::new("lb.toml"),
            &TEXT.replace("ip = \"192.0.2.12\"", "ip = \"192.0.2.13\""),
        )
        .unwrap();
        assert_eq!(
            o.retain_configured(&fewer),
            [(vs.key(), vs.real_servers[1].addr)]
        );
        assert_eq!(o.len(), 1);
        assert!(o.retain_configured(&c).is_empty());
    }

    #[test]
    fn save_replaces_the_file_whole_and_an_empty_set_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("lb-overrides-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let c = config();
        let vs = &c.virtual_servers[0];
        let mut o = Overrides::default();
        assert_eq!(load(&dir).unwrap(), o, "no file: no overrides");
        o.set(vs, vs.real_servers[0].addr, Action::Weight(9));
        save(&dir, &o).unwrap();
        assert_eq!(load(&dir).unwrap(), o);
        assert!(!dir.join(format!(".{FILE_NAME}.tmp")).exists());
        fs::write(path(&dir), "{\"version\":1,").unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("overrides.json: line 1"), "{e}");
        o.clear();
        save(&dir, &o).unwrap();
        assert!(!path(&dir).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
