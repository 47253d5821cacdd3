//! Loading the embedded XDP object with its sizes, and attaching it.
use aya::{
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    names, DEFAULT_FLOW_CACHE, DEFAULT_MAX_FLOWS, DEFAULT_MAX_PERSIST, DEFAULT_SYNC_RING_BYTES,
};

use super::{plan::Limits, xdp_link::Mode};

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
    #[error("attaching XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
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

/// Attaches the loaded program to `iface`; returns the mode it runs in. The attachment is a
/// bpf_link owned by this process: it goes away when the process does, even on SIGKILL.
pub fn attach(ebpf: &mut Ebpf, iface: &str, mode: AttachMode) -> Result<&'static str, LoadError> {
    let prog = xdp(ebpf)?;
    let mut last = None;
    for &m in mode.modes() {
        let flags = if m == Mode::Native {
            XdpMode::Driver
        } else {
            XdpMode::Skb
        };
        match prog.attach(iface, flags) {
            Ok(_) => return Ok(m.name()),
            Err(source) => {
                let e = LoadError::Attach {
                    iface: iface.to_string(),
                    mode: m.name(),
                    source,
                };
                tracing::warn!("{e}");
                last = Some(e);
            }
        }
    }
    // `modes()` is never empty: there is always a last error.
    Err(last.unwrap_or(LoadError::NoProgram(names::PROGRAM)))
}
