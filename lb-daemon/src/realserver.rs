//! `lb-daemon realserver start|stop|status --vip ADDR`: a host set up as a real server for
//! direct routing, what the seed's `/etc/init.d/ipvsadm` script does with `ifconfig`, `route`
//! and `echo > /proc/sys/...`, done here over rtnetlink and `/proc/sys`:
//!
//! * `start`: every VIP on `lo` as a host address (`/32`, `/128`; IPv4 ones with the seed's
//!   label `lo:0`), and, when an IPv4 VIP is given, `arp_ignore = 1` and `arp_announce = 2` on
//!   `lo` and `all`, so the host accepts packets for the VIP but never answers ARP for it (only
//!   the load balancer does) nor uses it as the source of its own ARP requests. The seed's
//!   `route add -host $VIP dev lo:0` is not needed: the kernel adds the local route with the
//!   address. IPv6 needs no sysctl: neighbour discovery answers only for addresses of the
//!   interface a solicitation arrives on, and the VIP is on `lo`.
//! * `stop`: undoes exactly what `start` did, and nothing else: it removes the addresses
//!   `start` added (not ones that were there already), and puts each sysctl back to the value
//!   it had before `start`, unless someone changed it since (then it is left, with a warning).
//!   The seed's `stop` writes 0 whatever was there before.
//!
//! Both are idempotent: a second `start` changes nothing (it repairs what was undone by hand),
//! and `stop` without a recorded `start` changes nothing.
//!
//! # TUN (`--tunnel ipip|gue|gre --interface IF`)
//!
//! For a load balancer that wraps packets (keepalived's `lb_kind TUN`), `start` also puts
//! the project's XDP decapsulator on `IF` (the object's `lb_decap` entry point, attached
//! through the interface's netlink attachment so that it stays after the command exits): it
//! takes the outer header off each IPIP, GUE (`--port`) or GRE packet whose inner packet is
//! for one of the VIPs and hands that to the stack, which delivers it to the VIP on `lo`.
//! IPVS's real servers use the kernel's tunnel devices instead (`tunl0`, `ip6tnl0`, `gre0`,
//! `ip fou add port N gue`, with `rp_filter` 0 on the device); the decapsulator needs none of
//! them (kernels built without them serve too) and no `rp_filter` change: the inner packet
//! arrives on `IF`, the interface the client is routed through. `stop` takes it off, if the
//! program attached there is still the one `start` attached.
//!
//! # State
//!
//! What `start` found and changed is recorded in a JSON file,
//! `/run/lb-daemon/realserver-<netns cookie>.json` (`--state-dir` chooses another directory).
//! The name carries the network namespace's cookie (`SO_NETNS_COOKIE`: unique for the boot,
//! never reused), because sysctls and addresses are per network namespace while `/run` is
//! shared by all of them, and a stale file from a deleted namespace must never be mistaken for
//! this one's. `/run` is a tmpfs emptied at boot, when the addresses and sysctls are gone too.
//! The file is written before anything is changed, so a `start` interrupted half-way is
//! still undone by `stop`.
//!
//! The planning ([`plan_start`], [`plan_stop`]) is pure and unit-tested; [`cli`] reads the
//! system, plans, records and applies.
use std::{
    collections::BTreeMap,
    fmt, fs,
    net::IpAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::netlink::addr::{host_prefix, AddressSocket, VirtualAddress};

/// Where the state files go by default.
pub const DEFAULT_STATE_DIR: &str = "/run/lb-daemon";
/// The loopback interface the VIPs go on.
pub const LOOPBACK: &str = "lo";
/// The label IPv4 VIPs get (the seed's `ifconfig lo:0`).
pub const LABEL: &str = "lo:0";
/// The sysctls of the seed's script, and the values `start` sets.
pub const ARP_SYSCTLS: [(&str, &str); 4] = [
    ("net.ipv4.conf.lo.arp_ignore", "1"),
    ("net.ipv4.conf.lo.arp_announce", "2"),
    ("net.ipv4.conf.all.arp_ignore", "1"),
    ("net.ipv4.conf.all.arp_announce", "2"),
];
/// Version of the state file's format.
pub const STATE_VERSION: u32 = 1;

/// The subcommands (`lb-daemon realserver ...`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Put the VIPs on lo and set arp_ignore=1, arp_announce=2 on lo and all (idempotent).
    Start(StartArgs),
    /// Undo what start did: remove the addresses it added, restore the sysctls it changed.
    Stop(StopArgs),
    /// What start recorded, and the current addresses and sysctls.
    Status(StatusArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// A VIP of the load balancer (repeat for several; IPv4 or IPv6).
    #[arg(long = "vip", required = true)]
    pub vips: Vec<IpAddr>,
    /// Where the state file goes.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The load balancer forwards by TUN of this type (ipip, gue or gre): take its outer
    /// headers off packets for the VIPs arriving on `--interface`.
    #[arg(long, requires = "interface")]
    pub tunnel: Option<crate::model::TunnelKind>,
    /// GUE's UDP port (with `--tunnel gue`).
    #[arg(long, requires = "tunnel")]
    pub port: Option<u16>,
    /// The interface the tunnelled packets arrive on (with `--tunnel`).
    #[arg(long, requires = "tunnel")]
    pub interface: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StopArgs {
    /// Only these VIPs (default: every VIP start recorded). The sysctls are restored with
    /// the last IPv4 VIP.
    #[arg(long = "vip")]
    pub vips: Vec<IpAddr>,
    /// Where the state file is.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Where the state file is.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// State and plans (pure)
// ---------------------------------------------------------------------------------------------

/// What `start` recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub vips: Vec<VipRecord>,
    pub sysctls: Vec<SysctlRecord>,
    /// The decapsulator `start --tunnel` attached (absent in files of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decap: Option<DecapRecord>,
}

/// The XDP decapsulator `start --tunnel` attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecapRecord {
    pub interface: String,
    pub ifindex: u32,
    /// The attached program's id: `stop` takes off only this one.
    pub prog_id: u32,
    /// "native" or "skb".
    pub mode: String,
    /// "ipip", "gue" or "gre", and GUE's port.
    pub tunnel: String,
    pub port: u16,
}

/// A VIP `start` was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipRecord {
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// `start` added it (false: it was on lo already, and `stop` leaves it).
    pub added: bool,
}

/// A sysctl `start` manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysctlRecord {
    /// Dotted name, `net.ipv4.conf.lo.arp_ignore`.
    pub key: String,
    /// Its value before the first `start`.
    pub previous: String,
    /// The value `start` sets.
    pub set: String,
}

/// One change to the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddAddress {
        addr: IpAddr,
        prefix_len: u8,
    },
    DeleteAddress {
        addr: IpAddr,
        prefix_len: u8,
    },
    WriteSysctl {
        key: String,
        from: String,
        to: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::AddAddress { addr, prefix_len } => {
                write!(f, "add {addr}/{prefix_len} to {LOOPBACK}")
            }
            Change::DeleteAddress { addr, prefix_len } => {
                write!(f, "remove {addr}/{prefix_len} from {LOOPBACK}")
            }
            Change::WriteSysctl { key, from, to } => write!(f, "{key}: {from} -> {to}"),
        }
    }
}

/// What the system looks like now: the addresses on lo and the managed sysctls' values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// (address, prefix length) of every address on lo.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Current value of each of [`ARP_SYSCTLS`] (trimmed).
    pub sysctls: BTreeMap<String, String>,
}

impl Observed {
    fn has(&self, addr: IpAddr) -> bool {
        self.addresses.iter().any(|(a, _)| *a == addr)
    }

    fn sysctl(&self, key: &str) -> Result<&str> {
        self.sysctls
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{key} could not be read"))
    }
}

/// `start`: the state to record and the changes to make. `previous` is the recorded state, if
/// any: its VIPs are kept, and its sysctl values from before the first `start` too.
pub fn plan_start(
    previous: Option<&State>,
    vips: &[IpAddr],
    now: &Observed,
) -> Result<(State, Vec<Change>)> {
    if vips.is_empty() {
        bail!("no VIP given (--vip ADDR)");
    }
    for vip in vips {
        if vip.is_unspecified() || vip.is_multicast() || vip.is_loopback() {
            bail!("{vip} cannot be a VIP");
        }
    }
    let mut state = previous.cloned().unwrap_or_default();
    state.version = STATE_VERSION;
    let mut changes = Vec::new();
    for &addr in vips {
        let present = now.has(addr);
        match state.vips.iter_mut().find(|r| r.addr == addr) {
            Some(r) => {
                if !present {
                    // Removed by hand since: put it back, and it is ours from now on.
                    r.added = true;
                    changes.push(Change::AddAddress {
                        addr,
                        prefix_len: r.prefix_len,
                    });
                }
            }
            None => {
                let prefix_len = host_prefix(addr);
                state.vips.push(VipRecord {
                    addr,
                    prefix_len,
                    added: !present,
                });
                if !present {
                    changes.push(Change::AddAddress { addr, prefix_len });
                }
            }
        }
    }
    if state.vips.iter().any(|r| r.addr.is_ipv4()) {
        for (key, value) in ARP_SYSCTLS {
            let current = now.sysctl(key)?;
            if !state.sysctls.iter().any(|s| s.key == key) {
                state.sysctls.push(SysctlRecord {
                    key: key.to_string(),
                    previous: current.to_string(),
                    set: value.to_string(),
                });
            }
            if current != value {
                changes.push(Change::WriteSysctl {
                    key: key.to_string(),
                    from: current.to_string(),
                    to: value.to_string(),
                });
            }
        }
    }
    Ok((state, changes))
}

/// What `stop` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPlan {
    /// What remains recorded (`None`: nothing, the state file goes).
    pub state: Option<State>,
    pub changes: Vec<Change>,
    /// What is left alone, and why.
    pub notes: Vec<String>,
}

/// `stop`: undo what `state` records for `vips` (all of them when empty). The sysctls are
/// restored when no IPv4 VIP remains, each only if it still has the value `start` set.
pub fn plan_stop(state: &State, vips: &[IpAddr], now: &Observed) -> Result<StopPlan> {
    let mut notes = Vec::new();
    let mut changes = Vec::new();
    let mut remaining = state.clone();
    for vip in vips {
        if !state.vips.iter().any(|r| r.addr == *vip) {
            notes.push(format!(
                "{vip}: not set up by `realserver start`, left alone"
            ));
        }
    }
    remaining.vips.retain(|r| {
        let selected = vips.is_empty() || vips.contains(&r.addr);
        if !selected {
            return true;
        }
        if !r.added {
            notes.push(format!(
                "{}/{}: was on {LOOPBACK} before start, left there",
                r.addr, r.prefix_len
            ));
        } else if now.has(r.addr) {
            changes.push(Change::DeleteAddress {
                addr: r.addr,
                prefix_len: r.prefix_len,
            });
        } else {
            notes.push(format!("{}: already gone from {LOOPBACK}", r.addr));
        }
        false
    });
    if !remaining.vips.iter().any(|r| r.addr.is_ipv4()) {
        for s in &remaining.sysctls {
            let current = now.sysctl(&s.key)?;
            if current != s.set {
                notes.push(format!(
                    "{}: is {current}, not the {} start set; left at {current}",
                    s.key, s.set
                ));
            } else if s.previous != s.set {
                changes.push(Change::WriteSysctl {
                    key: s.key.clone(),
                    from: current.to_string(),
                    to: s.previous.clone(),
                });
            }
        }
        remaining.sysctls.clear();
    }
    let state = (!remaining.vips.is_empty() || !remaining.sysctls.is_empty()).then_some(remaining);
    Ok(StopPlan {
        state,
        changes,
        notes,
    })
}

/// `/proc/sys/net/ipv4/conf/lo/arp_ignore` for `net.ipv4.conf.lo.arp_ignore`. (Interface
/// names with dots are not used here.)
pub fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// The state file of the calling thread's network namespace in `dir`.
pub fn state_file(dir: &Path, netns_id: &str) -> PathBuf {
    dir.join(format!("realserver-{netns_id}.json"))
}

/// Parses a state file; an unknown version is an error (nothing is undone by guesswork).
pub fn parse_state(text: &str) -> Result<State> {
    let state: State = serde_json::from_str(text).context("not a realserver state file")?;
    if state.version != STATE_VERSION {
        bail!(
            "state file version {} (this lb-daemon knows {STATE_VERSION})",
            state.version
        );
    }
    Ok(state)
}

// ---------------------------------------------------------------------------------------------
// The system
// ---------------------------------------------------------------------------------------------

/// `IFF_UP` of `name`.
fn interface_is_up(name: &str) -> Result<bool> {
    let sock = crate::os::ioctl_socket().context("socket")?;
    let flags = crate::os::interface_flags(sock.as_fd(), name)
        .with_context(|| format!("flags of {name}"))?
        .with_context(|| format!("no interface {name}"))?;
    Ok(flags & libc::IFF_UP != 0)
}

fn read_sysctl(key: &str) -> Result<String> {
    let p = sysctl_path(key);
    Ok(fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

fn write_sysctl(key: &str, value: &str) -> Result<()> {
    let p = sysctl_path(key);
    fs::write(&p, format!("{value}\n")).with_context(|| format!("write {value} to {}", p.display()))
}

async fn observe(sock: &mut AddressSocket, lo: u32) -> Result<Observed> {
    let addresses = sock
        .list(Some(lo))
        .await
        .context("listing lo's addresses")?
        .into_iter()
        .map(|a| (a.addr, a.prefix_len))
        .collect();
    let mut sysctls = BTreeMap::new();
    for (key, _) in ARP_SYSCTLS {
        // IPv4 may be missing (a kernel without it); only an IPv4 VIP needs these.
        if let Ok(v) = read_sysctl(key) {
            sysctls.insert(key.to_string(), v);
        }
    }
    Ok(Observed { addresses, sysctls })
}

async fn apply(sock: &mut AddressSocket, lo: u32, changes: &[Change]) -> Result<()> {
    for c in changes {
        match c {
            Change::AddAddress { addr, prefix_len } => {
                let mut vip = VirtualAddress::new(*addr, lo).with_prefix(*prefix_len);
                if addr.is_ipv4() {
                    vip = vip.with_label(LABEL);
                }
                sock.add(&vip).await.with_context(|| c.to_string())?;
            }
            Change::DeleteAddress { addr, prefix_len } => {
                let vip = VirtualAddress::new(*addr, lo).with_prefix(*prefix_len);
                sock.delete(&vip).await.with_context(|| c.to_string())?;
            }
            Change::WriteSysctl { key, to, .. } => write_sysctl(key, to)?,
        }
        println!("realserver: {c}");
    }
    Ok(())
}

fn load_state(path: &Path) -> Result<Option<State>> {
    match fs::read_to_string(path) {
        Ok(text) => parse_state(&text)
            .map(Some)
            .with_context(|| path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Writes `state` to `path` atomically (a temporary file renamed over it).
fn save_state(path: &Path, state: &State) -> Result<()> {
    let dir = path.parent().context("state file directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(state)? + "\n";
    fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// Runs a subcommand.
pub fn cli(action: Action) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?
        .block_on(run(action))
}

async fn run(action: Action) -> Result<()> {
    let lo = crate::os::ifindex(LOOPBACK)?;
    let mut sock = AddressSocket::open().context("rtnetlink socket")?;
    let id = crate::os::netns_id().context("naming this network namespace")?;
    match action {
        Action::Start(a) => {
            if !interface_is_up(LOOPBACK)? {
                bail!("{LOOPBACK} is down: bring it up first (ip link set {LOOPBACK} up)");
            }
            let path = state_file(&a.state_dir, &id);
            let previous = load_state(&path)?;
            let now = observe(&mut sock, lo).await?;
            let (state, changes) = plan_start(previous.as_ref(), &a.vips, &now)?;
            // Recorded first: a start that fails half-way is still undone by stop.
            save_state(&path, &state)?;
            apply(&mut sock, lo, &changes).await?;
            let mut state = state;
            if let Some(kind) = a.tunnel {
                let record = attach_decap(&a, kind, &state, previous.as_ref()).await?;
                println!(
                    "realserver: {} decapsulator on {} ({} mode, program {})",
                    record.tunnel, record.interface, record.mode, record.prog_id
                );
                state.decap = Some(record);
                save_state(&path, &state)?;
            } else if changes.is_empty() {
                println!("realserver: already set up, nothing changed");
            }
            println!("realserver: state in {}", path.display());
        }
        Action::Stop(a) => {
            let path = state_file(&a.state_dir, &id);
            let Some(state) = load_state(&path)? else {
                println!(
                    "realserver: nothing to undo (no {}: start was not run in this network \
                     namespace since boot)",
                    path.display()
                );
                return Ok(());
            };
            let now = observe(&mut sock, lo).await?;
            let plan = plan_stop(&state, &a.vips, &now)?;
            for n in &plan.notes {
                println!("realserver: {n}");
            }
            apply(&mut sock, lo, &plan.changes).await?;
            let mut plan = plan;
            // The decapsulator goes with the last VIP.
            if let Some(d) = &state.decap {
                let last = plan.state.as_ref().is_none_or(|s| s.vips.is_empty());
                if last {
                    println!("realserver: {}", detach_decap(d).await?);
                    if let Some(s) = plan.state.as_mut() {
                        s.decap = None;
                    }
                }
            }
            match &plan.state {
                Some(s) => save_state(&path, s)?,
                None => match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
                },
            }
            if plan.changes.is_empty() {
                println!("realserver: nothing changed");
            }
        }
        Action::Status(a) => {
            let path = state_file(&a.state_dir, &id);
            let state = load_state(&path)?;
            let now = observe(&mut sock, lo).await?;
            print!("{}", status_text(&path, state.as_ref(), &now));
        }
    }
    Ok(())
}

/// Loads the decapsulator for the VIPs `state` records and attaches it to `--interface`
/// (native mode, else skb), replacing the one a previous `start` attached there; refuses to
/// replace another program.
async fn attach_decap(
    a: &StartArgs,
    kind: crate::model::TunnelKind,
    state: &State,
    previous: Option<&State>,
) -> Result<DecapRecord> {
    use crate::{dataplane::program, model::TunnelKind, netlink::link};
    let interface = a
        .interface
        .as_deref()
        .context("--tunnel needs --interface")?;
    let port = match (kind, a.port) {
        (TunnelKind::Gue, Some(p)) if p != 0 => p,
        (TunnelKind::Gue, _) => {
            bail!("--tunnel gue needs --port (the load balancer's tunnel_port)")
        }
        (_, Some(_)) => bail!("--port is GUE's; a {} tunnel has none", kind.name()),
        (_, None) => 0,
    };
    let ifindex = crate::os::ifindex(interface)?;
    // One decapsulator at a time: the one a previous start put on another interface comes
    // off (if it is still there), or stop would never find it.
    if let Some(old) = previous
        .and_then(|p| p.decap.as_ref())
        .filter(|d| d.ifindex != ifindex)
    {
        println!("realserver: {}", detach_decap(old).await?);
    }
    let ours = previous
        .and_then(|p| p.decap.as_ref())
        .filter(|d| d.ifindex == ifindex)
        .map(|d| d.prog_id);
    let attached = link::attached(ifindex).await?;
    if let Some(at) = &attached {
        if Some(at.prog_id) != ours {
            bail!(
                "{interface} already has an XDP program (id {}) that start did not attach: \
                 not replacing it",
                at.prog_id
            );
        }
    }
    let vips: Vec<IpAddr> = state.vips.iter().map(|r| r.addr).collect();
    let ebpf = program::load_decap(port, &vips)?;
    let fd = program::decap_fd(&ebpf)?;
    let mut last = None;
    for mode in [link::Mode::Native, link::Mode::Skb] {
        // A program of ours in the other mode comes off first: an interface takes one.
        if let Some(at) = attached.as_ref().filter(|at| at.mode != mode) {
            link::clear(ifindex, at.mode).await?;
        }
        match link::set(ifindex, fd, mode).await {
            Ok(()) => {
                let id = link::attached(ifindex)
                    .await?
                    .map(|at| at.prog_id)
                    .context("the decapsulator is not attached after all")?;
                return Ok(DecapRecord {
                    interface: interface.to_string(),
                    ifindex,
                    prog_id: id,
                    mode: mode.name().to_string(),
                    tunnel: kind.name().to_string(),
                    port,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(
        || anyhow::anyhow!("attaching the decapsulator"),
        |e| anyhow::Error::new(e).context(format!("attaching the decapsulator to {interface}")),
    ))
}

/// Takes off the decapsulator `d` records, if it is still the program attached there.
async fn detach_decap(d: &DecapRecord) -> Result<String> {
    use crate::netlink::link;
    match link::attached(d.ifindex).await? {
        Some(at) if at.prog_id == d.prog_id => {
            link::clear(d.ifindex, at.mode).await?;
            Ok(format!("decapsulator taken off {}", d.interface))
        }
        Some(at) => Ok(format!(
            "{}: another XDP program (id {}) replaced the decapsulator, left alone",
            d.interface, at.prog_id
        )),
        None => Ok(format!("{}: the decapsulator was already off", d.interface)),
    }
}

/// `realserver status`'s text.
pub fn status_text(path: &Path, state: Option<&State>, now: &Observed) -> String {
    let mut out = String::new();
    let Some(state) = state else {
        out += &format!("not set up (no {})\n", path.display());
        return out;
    };
    out += &format!("state: {}\n", path.display());
    for r in &state.vips {
        out += &format!(
            "  {}/{} on {LOOPBACK}: {}, {}\n",
            r.addr,
            r.prefix_len,
            if now.has(r.addr) {
                "present"
            } else {
                "MISSING"
            },
            if r.added {
                "added by start"
            } else {
                "was there before start"
            }
        );
    }
    if let Some(d) = &state.decap {
        out += &format!(
            "  {} decapsulator{} on {} ({} mode, program {})\n",
            d.tunnel,
            if d.port != 0 {
                format!(" (UDP port {})", d.port)
            } else {
                String::new()
            },
            d.interface,
            d.mode,
            d.prog_id
        );
    }
    for s in &state.sysctls {
        let current = now.sysctls.get(&s.key).map_or("?", String::as_str);
        out += &format!(
            "  {} = {current}{} (was {})\n",
            s.key,
            if current == s.set { "" } else { " (CHANGED)" },
            s.previous
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> IpAddr {
        "192.0.2.100".parse().unwrap()
    }

    fn v6() -> IpAddr {
        "2001:db8::100".parse().unwrap()
    }

    fn observed(addresses: &[(IpAddr, u8)], values: [&str; 4]) -> Observed {
        Observed {
            addresses: addresses.to_vec(),
            sysctls: ARP_SYSCTLS
                .iter()
                .zip(values)
                .map(|((k, _), v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn lo_v4() -> (IpAddr, u8) {
        ("127.0.0.1".parse().unwrap(), 8)
    }

    #[test]
    fn start_from_scratch_is_the_seed_script() {
        let now = observed(&[lo_v4()], ["0", "0", "0", "0"]);
        let (state, changes) = plan_start(None, &[v4()], &now).unwrap();
        assert_eq!(
            changes,
            vec![
                Change::AddAddress {
                    addr: v4(),
                    prefix_len: 32
                },
                Change::WriteSysctl {
                    key: "net.ipv4.conf.lo.arp_ignore".into(),
                    from: "0".into(),
                    to: "1".into()
                },
                Change::WriteSysctl {
                    key: "net.ipv4.conf.lo.arp_announce".into(),
                    from: "0".into(),
                    to: "2".into()
                },
                Change::WriteSysctl {
                    key: "net.ipv4.conf.all.arp_ignore".into(),
                    from: "0".into(),
                    to: "1".into()
                },
                Change::WriteSysctl {
                    key: "net.ipv4.conf.all.arp_announce".into(),
                    from: "0".into(),
                    to: "2".into()
                },
            ]
        );
        assert_eq!(state.version, STATE_VERSION);
        assert_eq!(
            state.vips,
            vec![VipRecord {
                addr: v4(),
                prefix_len: 32,
                added: true
            }]
        );
        assert!(state.sysctls.iter().all(|s| s.previous == "0"));
    }

    #[test]
    fn second_start_changes_nothing_and_keeps_the_first_values() {
        let before = observed(&[lo_v4()], ["0", "1", "0", "0"]);
        let (state, _) = plan_start(None, &[v4()], &before).unwrap();
        let after = observed(&[lo_v4(), (v4(), 32)], ["1", "2", "1", "2"]);
        let (again, changes) = plan_start(Some(&state), &[v4()], &after).unwrap();
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(again, state);
        // The recorded values are those from before the first start.
        assert_eq!(state.sysctls[1].previous, "1");
        // Undone by hand in between: a start repairs it, the record stays.
        let undone = observed(&[lo_v4()], ["0", "2", "1", "2"]);
        let (again, changes) = plan_start(Some(&state), &[v4()], &undone).unwrap();
        assert_eq!(again, state);
        assert_eq!(changes.len(), 2, "{changes:?}");
    }

    #[test]
    fn an_address_that_was_there_is_not_ours() {
        let now = observed(&[(v4(), 32)], ["1", "2", "1", "2"]);
        let (state, changes) = plan_start(None, &[v4()], &now).unwrap();
        assert!(changes.is_empty());
        assert!(!state.vips[0].added);
        let plan = plan_stop(&state, &[], &now).unwrap();
        assert!(plan.changes.is_empty(), "{plan:?}");
        assert_eq!(plan.state, None);
        assert!(plan.notes[0].contains("before start"), "{plan:?}");
    }

    #[test]
    fn stop_restores_the_previous_values() {
        let before = observed(&[lo_v4()], ["0", "1", "2", "0"]);
        let (state, _) = plan_start(None, &[v4()], &before).unwrap();
        let after = observed(&[lo_v4(), (v4(), 32)], ["1", "2", "1", "2"]);
        let plan = plan_stop(&state, &[], &after).unwrap();
        assert_eq!(plan.state, None);
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
        let to: Vec<(String, String)> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::WriteSysctl { key, to, .. } => Some((key.clone(), to.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            to,
            vec![
                ("net.ipv4.conf.lo.arp_ignore".to_string(), "0".to_string()),
                ("net.ipv4.conf.lo.arp_announce".to_string(), "1".to_string()),
                ("net.ipv4.conf.all.arp_ignore".to_string(), "2".to_string()),
                (
                    "net.ipv4.conf.all.arp_announce".to_string(),
                    "0".to_string()
                ),
            ]
        );
        assert_eq!(
            plan.changes[0],
            Change::DeleteAddress {
                addr: v4(),
                prefix_len: 32
            }
        );
    }

    #[test]
    fn stop_leaves_what_was_changed_since() {
        let (state, _) = plan_start(None, &[v4()], &observed(&[], ["0"; 4])).unwrap();
        // Someone set lo's arp_ignore to 8 after start, and removed the address.
        let now = observed(&[], ["8", "2", "1", "2"]);
        let plan = plan_stop(&state, &[], &now).unwrap();
        assert_eq!(plan.changes.len(), 3, "{plan:?}");
        assert!(plan.changes.iter().all(
            |c| !matches!(c, Change::WriteSysctl { key, .. } if key.contains("lo.arp_ignore"))
        ));
        assert!(
            plan.notes.iter().any(|n| n.contains("left at 8")),
            "{plan:?}"
        );
        assert!(
            plan.notes.iter().any(|n| n.contains("already gone")),
            "{plan:?}"
        );
    }

    #[test]
    fn ipv6_needs_no_sysctl_and_stop_per_vip() {
        let now = observed(&[lo_v4()], ["0"; 4]);
        let (state, changes) = plan_start(None, &[v6()], &now).unwrap();
        assert_eq!(
            changes,
            vec![Change::AddAddress {
                addr: v6(),
                prefix_len: 128
            }]
        );
        assert!(state.sysctls.is_empty());
        // Both: stopping the IPv6 VIP keeps the sysctls for the IPv4 one.
        let (state, _) = plan_start(Some(&state), &[v4()], &now).unwrap();
        assert_eq!(state.vips.len(), 2);
        let on = observed(&[lo_v4(), (v4(), 32), (v6(), 128)], ["1", "2", "1", "2"]);
        let plan = plan_stop(&state, &[v6()], &on).unwrap();
        assert_eq!(
            plan.changes,
            vec![Change::DeleteAddress {
                addr: v6(),
                prefix_len: 128
            }]
        );
        let rest = plan.state.unwrap();
        assert_eq!(rest.vips.len(), 1);
        assert_eq!(rest.sysctls.len(), 4);
        let plan = plan_stop(&rest, &[v4()], &on).unwrap();
        assert_eq!(plan.state, None);
        assert_eq!(plan.changes.len(), 5);
    }

    #[test]
    fn bad_input() {
        let now = observed(&[], ["0"; 4]);
        assert!(plan_start(None, &[], &now).is_err());
        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.18", "::1"] {
            assert!(
                plan_start(None, &[bad.parse().unwrap()], &now).is_err(),
                "{bad}"
            );
        }
        // Unknown VIP on stop: a note, nothing changed.
        let (state, _) = plan_start(None, &[v4()], &now).unwrap();
        let plan = plan_stop(&state, &[v6()], &now).unwrap();
        assert!(plan.changes.is_empty());
        assert_eq!(plan.state, Some(state));
        assert!(plan.notes[0].contains("not set up"));
        // Unreadable sysctl with an IPv4 VIP.
        let blind = Observed::default();
        assert!(plan_start(None, &[v4()], &blind).is_err());
    }

    #[test]
    fn state_file_round_trip_and_names() {
        let (state, _) = plan_start(None, &[v4(), v6()], &observed(&[], ["0"; 4])).unwrap();
        let text = serde_json::to_string_pretty(&state).unwrap();
        assert_eq!(parse_state(&text).unwrap(), state);
        assert!(parse_state("{}").is_err());
        assert!(parse_state(&text.replace("\"version\": 1", "\"version\": 9")).is_err());
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.arp_announce"),
            Path::new("/proc/sys/net/ipv4/conf/all/arp_announce")
        );
        assert_eq!(
            state_file(Path::new("/run/lb-daemon"), "4096"),
            Path::new("/run/lb-daemon/realserver-4096.json")
        );
        let s = status_text(
            Path::new("/x.json"),
            Some(&state),
            &observed(&[(v4(), 32)], ["1", "2", "1", "0"]),
        );
        assert!(s.contains("192.0.2.100/32 on lo: present"), "{s}");
        assert!(s.contains("2001:db8::100/128 on lo: MISSING"), "{s}");
        assert!(s.contains("all.arp_announce = 0 (CHANGED)"), "{s}");
    }
}
