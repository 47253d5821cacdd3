//! Loading the embedded XDP object with its sizes, and attaching it.
//!
//! The object has two entry points over one code and one set of maps: `lb`, which aya loads,
//! and `lb_native`, which also reads the VLAN tag a driver took off the frame and is loaded
//! bound to the interface ([`devbound`]). Skb mode runs `lb` (the kernel keeps an offloaded
//! tag on the skb and puts it back on XDP_TX); native mode runs `lb_native` where the driver
//! can say what it took off, `lb` where the device never delivers a tag beside the frame,
//! and nothing elsewhere ([`native_plan`]).
use std::os::fd::{AsFd, OwnedFd};

use aya::{
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    names, DEFAULT_FLOW_CACHE, DEFAULT_MAX_FLOWS, DEFAULT_MAX_PERSIST, DEFAULT_SYNC_RING_BYTES,
};

use super::devbound;
use super::{
    plan::Limits,
    xdp_link::{self, Mode},
};
use crate::netlink::NetlinkError;

/// The XDP object, built by `cargo xtask build-ebpf` and embedded at compile time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT"));

/// What is fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub limits: Limits,
    /// Flow table entries (LRU).
    pub max_flows: u32,
    /// Persistence templates (LRU).
    pub max_persist: u32,
    /// Slots of each per-CPU flow cache; a power of two.
    pub flow_cache: u32,
    /// The MAC of the interface the program will run on: the source of forwarded frames.
    pub iface_mac: [u8; 6],
    /// Connection sync: `None` leaves it off (the program then writes no events at all).
    pub sync: Option<SyncLoad>,
}

/// What the program needs for connection sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncLoad {
    /// Size of the event ring in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// A flow is refreshed (sent again) when `last_seen >> refresh_shift` changes: at most
    /// once per 2^shift seconds of its traffic.
    pub refresh_shift: u32,
}

impl Default for SyncLoad {
    fn default() -> Self {
        Self {
            ring_bytes: 4 << 20,
            refresh_shift: 3,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_flows: DEFAULT_MAX_FLOWS,
            max_persist: DEFAULT_MAX_PERSIST,
            flow_cache: DEFAULT_FLOW_CACHE,
            iface_mac: [0; 6],
            sync: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the XDP object has no program {0:?}")]
    NoProgram(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("flow cache size {0} is not a power of two, or too large for this many CPUs")]
    FlowCacheSize(u32),
    #[error("counting the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("ring size {ring_size} x {max_services} services does not fit a BPF array")]
    RingTooLarge { ring_size: u32, max_services: u32 },
    #[error("the sync event ring of {0} bytes is not a power of two of at least a page")]
    SyncRingSize(u32),
}

/// Loads the program into the kernel (not attached yet).
pub fn load(opts: &LoadOptions) -> Result<Ebpf, LoadError> {
    let l = opts.limits;
    if !opts.flow_cache.is_power_of_two() {
        return Err(LoadError::FlowCacheSize(opts.flow_cache));
    }
    let rings = l
        .ring_size
        .checked_mul(l.max_services)
        .ok_or(LoadError::RingTooLarge {
            ring_size: l.ring_size,
            max_services: l.max_services,
        })?;
    // The flow caches hold one region per possible CPU (see the program's maps.rs).
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))? as u32;
    let cache_slots = opts
        .flow_cache
        .checked_mul(cpus)
        .ok_or(LoadError::FlowCacheSize(opts.flow_cache))?;
    let (sync_on, sync) = match opts.sync {
        Some(s) => (1u32, s),
        None => (
            0,
            SyncLoad {
                ring_bytes: DEFAULT_SYNC_RING_BYTES,
                ..SyncLoad::default()
            },
        ),
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u32;
    if !sync.ring_bytes.is_power_of_two() || sync.ring_bytes < page || sync.refresh_shift > 31 {
        return Err(LoadError::SyncRingSize(sync.ring_bytes));
    }
    let mut ebpf = EbpfLoader::new()
        .override_global(names::GLOBAL_IFACE_MAC, &opts.iface_mac, true)
        .override_global(names::GLOBAL_RING_SIZE, &l.ring_size, true)
        .override_global(names::GLOBAL_FLOW_CACHE_SIZE, &opts.flow_cache, true)
        .override_global(names::GLOBAL_SYNC_ENABLED, &sync_on, true)
        .override_global(names::GLOBAL_SYNC_REFRESH_SHIFT, &sync.refresh_shift, true)
        .map_max_entries(names::SYNC_EVENTS, sync.ring_bytes)
        .map_max_entries(names::FLOW_CACHE4, cache_slots)
        .map_max_entries(names::FLOW_CACHE6, cache_slots)
        // Each family gets the full size: a deployment may be all IPv4 or all IPv6.
        .map_max_entries(names::FLOWS4, opts.max_flows)
        .map_max_entries(names::FLOWS6, opts.max_flows)
        .map_max_entries(names::PERSIST4, opts.max_persist)
        .map_max_entries(names::PERSIST6, opts.max_persist)
        // Each service's own key, plus at most one fragments-only port-0 entry per
        // (VIP, protocol), which is at most one per service.
        .map_max_entries(names::SERVICES4, l.max_services * 2)
        .map_max_entries(names::SERVICES6, l.max_services * 2)
        .map_max_entries(names::SERVICE_INFO, l.max_services)
        .map_max_entries(names::RINGS, rings)
        .map_max_entries(names::RR_STATE, l.max_services)
        .map_max_entries(names::SERVICE_STATS, l.max_services)
        .map_max_entries(names::BACKENDS, l.max_backends)
        .map_max_entries(names::BACKEND_STATS, l.max_backends)
        .load(OBJECT)?;
    xdp(&mut ebpf)?
        .load()
        .map_err(|source| LoadError::Program {
            name: names::PROGRAM,
            source,
        })?;
    Ok(ebpf)
}

/// The program, loaded or not.
pub fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let prog = ebpf
        .program_mut(names::PROGRAM)
        .ok_or(LoadError::NoProgram(names::PROGRAM))?;
    prog.try_into().map_err(|source| LoadError::Program {
        name: names::PROGRAM,
        source,
    })
}

/// How to attach: the driver's native XDP, the generic (skb) path, or native with a fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
    Auto,
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Self::Native),
            "skb" => Ok(Self::Skb),
            "auto" => Ok(Self::Auto),
            o => Err(format!(
                "unknown XDP mode {o:?} (expected native, skb or auto)"
            )),
        }
    }
}

impl AttachMode {
    /// The modes to try, in order: `auto` is native with a fallback to skb.
    pub fn modes(self) -> &'static [Mode] {
        match self {
            AttachMode::Native => &[Mode::Native],
            AttachMode::Skb => &[Mode::Skb],
            AttachMode::Auto => &[Mode::Native, Mode::Skb],
        }
    }
}

/// What native mode will run on the interface: decided, and `lb_native` loaded, right after
/// [`load`], while aya still holds every map the two entry points share.
#[derive(Debug)]
pub enum NativePlan {
    /// Skb mode only: nothing was asked.
    Unused,
    /// `lb_native`, bound to the interface: it reads the tags the driver took off.
    DevBound(OwnedFd),
    /// The plain `lb`: the device delivers every tag in the frame.
    Plain,
    /// Native mode would forward tagged frames untagged, or that could not be ruled out: why.
    Refused(String),
}

/// Decides what native mode runs on `iface` (see [`devbound::choose`]) and loads `lb_native`
/// if that is it. Never an error: what stands in native mode's way is [`NativePlan::Refused`],
/// which [`attach_xdp`] reports (and `auto` then takes skb mode).
pub async fn native_plan(ebpf: &Ebpf, iface: &str, ifindex: u32, mode: AttachMode) -> NativePlan {
    if !mode.modes().contains(&Mode::Native) {
        return NativePlan::Unused;
    }
    let cannot_tell = |e: &dyn std::fmt::Display| {
        format!("cannot tell whether {iface} delivers VLAN tags outside the frame: {e}")
    };
    let ports = match xdp_link::ports(ifindex).await {
        Ok(p) => p,
        Err(e) => return NativePlan::Refused(cannot_tell(&e)),
    };
    let facts = match devbound::tag_facts(iface, ifindex, &ports) {
        Ok(f) => f,
        Err(e) => return NativePlan::Refused(cannot_tell(&e)),
    };
    match devbound::choose(iface, &facts) {
        devbound::Choice::Plain => NativePlan::Plain,
        devbound::Choice::Refuse(why) => NativePlan::Refused(why),
        devbound::Choice::DevBound => match devbound::load_native(OBJECT, ebpf, iface, ifindex) {
            Ok(fd) => NativePlan::DevBound(fd),
            Err(e) => NativePlan::Refused(format!(
                "{iface} may deliver VLAN tags outside the frame, and the program that reads \
                 them did not load: {e}"
            )),
        },
    }
}

/// The program attached to the interface. Dropping it ends a bpf_link attachment of
/// `lb_native` (aya keeps `lb`'s in the `Ebpf`); a netlink one (`keep_xdp_on_exit`) outlives
/// it.
#[derive(Debug)]
pub struct Attachment {
    pub mode: Mode,
    /// `lb` or `lb_native`.
    pub program: &'static str,
    _prog: Option<OwnedFd>,
    _link: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("reading the XDP program of {iface}: {source}")]
    Query {
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{iface} already runs XDP program {name:?} (id {id}): detach it first")]
    Foreign {
        iface: String,
        name: String,
        id: u32,
    },
    #[error("taking the previous XDP program off {iface}: {source}")]
    Clear {
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("attaching XDP to {iface}: {}", .errors.join("; "))]
    Failed { iface: String, errors: Vec<String> },
    #[error(transparent)]
    Program(#[from] LoadError),
}

/// The names our programs have in the kernel: what a previous run may have left attached.
const OUR_PROGRAMS: [&str; 2] = [names::PROGRAM, devbound::PROGRAM_NATIVE];

/// Attaches the program to `iface` in the first of `mode`'s modes that works: native runs
/// what `native` says, skb runs `lb`.
///
/// A program a previous run left attached (`keep_xdp_on_exit`) is ours to replace; any other
/// program is refused, never replaced. With `keep_on_exit` the attachment is the interface's
/// own (netlink), which outlives the daemon, and it replaces a previous run's program in one
/// step when the mode is the same; without it, a bpf_link, which the kernel drops with the
/// daemon.
pub async fn attach_xdp(
    ebpf: &mut Ebpf,
    native: NativePlan,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
    keep_on_exit: bool,
) -> Result<Attachment, AttachError> {
    let current = xdp_link::attached(ifindex)
        .await
        .map_err(|source| AttachError::Query {
            iface: iface.to_string(),
            source,
        })?;
    if let Some(cur) = current {
        let name = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == cur.prog_id)
            .and_then(|p| p.name_as_str().map(str::to_string))
            .unwrap_or_default();
        if !OUR_PROGRAMS.contains(&name.as_str()) || cur.mode == Mode::Other {
            return Err(AttachError::Foreign {
                iface: iface.to_string(),
                name,
                id: cur.prog_id,
            });
        }
        tracing::info!(
            interface = iface,
            id = cur.prog_id,
            mode = cur.mode.name(),
            "replacing the XDP program a previous run left attached"
        );
    }
    let clear = |m: Mode| async move {
        xdp_link::clear(ifindex, m)
            .await
            .map_err(|source| AttachError::Clear {
                iface: iface.to_string(),
                source,
            })
    };
    if !keep_on_exit {
        if let Some(cur) = current {
            clear(cur.mode).await?;
        }
    }
    let mut native = Some(native);
    let mut errors = Vec::new();
    for &m in mode.modes() {
        let plan = if m == Mode::Native {
            native.take()
        } else {
            None
        };
        // The program for this mode: `lb_native` (ours to keep open), or aya's `lb`.
        let (program, own) = match plan {
            Some(NativePlan::DevBound(fd)) => (devbound::PROGRAM_NATIVE, Some(fd)),
            Some(NativePlan::Refused(why)) => {
                tracing::warn!(interface = iface, "native XDP refused: {why}");
                errors.push(format!("native mode refused: {why}"));
                continue;
            }
            Some(NativePlan::Plain | NativePlan::Unused) | None => (names::PROGRAM, None),
        };
        // The bpf_link, if the attachment is one we must keep open.
        let attached: Result<Option<OwnedFd>, String> = if keep_on_exit {
            // A program in the other mode would stay beside ours: take it away first.
            if let Some(cur) = current.filter(|c| c.mode != m) {
                clear(cur.mode).await?;
            }
            let set = match &own {
                Some(fd) => xdp_link::set(ifindex, fd.as_fd(), m).await,
                None => {
                    let fd = xdp(ebpf)?.fd().map_err(|source| LoadError::Program {
                        name: names::PROGRAM,
                        source,
                    })?;
                    let fd = fd.try_clone().map_err(|e| AttachError::Failed {
                        iface: iface.to_string(),
                        errors: vec![format!("duplicating the program's descriptor: {e}")],
                    })?;
                    xdp_link::set(ifindex, fd.as_fd(), m).await
                }
            };
            set.map(|()| None).map_err(|e| e.to_string())
        } else {
            match &own {
                Some(fd) => xdp_link::link_create(fd.as_fd(), ifindex, m)
                    .map(Some)
                    .map_err(|e| format!("bpf_link_create: {e}")),
                None => {
                    let flags = if m == Mode::Native {
                        XdpMode::Driver
                    } else {
                        XdpMode::Skb
                    };
                    xdp(ebpf)?
                        .attach_to_if_index(ifindex, flags)
                        .map(|_| None)
                        .map_err(|e| e.to_string())
                }
            }
        };
        match attached {
            Ok(link) => {
                return Ok(Attachment {
                    mode: m,
                    program,
                    _prog: own,
                    _link: link,
                })
            }
            Err(e) => {
                tracing::warn!(
                    interface = iface,
                    mode = m.name(),
                    program,
                    "attaching XDP: {e}"
                );
                errors.push(format!("{} mode: {e}", m.name()));
            }
        }
    }
    Err(AttachError::Failed {
        iface: iface.to_string(),
        errors,
    })
}
