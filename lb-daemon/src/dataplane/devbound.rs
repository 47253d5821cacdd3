//! Native XDP that sees the VLAN tags a driver took off the frame.
//!
//! A NIC with rx-vlan offload hands a frame's 802.1Q tag to the stack beside the frame, not
//! in it, and so does a veth whose peer offloaded it (a Linux bridge port does that). Native
//! XDP gets the bare frame: forwarded with XDP_TX, it would leave untagged, onto another
//! VLAN. Since Linux 6.8 an XDP program can read that tag with the RX-metadata kfunc
//! `bpf_xdp_metadata_rx_vlan_tag`, but only a program bound to the device when it is loaded
//! (`BPF_F_XDP_DEV_BOUND_ONLY` and `prog_ifindex`), and aya 0.14 can neither bind a program
//! to a device nor link a kfunc call (aya-rs/aya#1650). So the object's `lb_native` entry
//! point is loaded here: parsed again with aya-obj, relocated against the maps aya created
//! for `lb` (the two share every map), its kfunc call resolved against the kernel's BTF, and
//! loaded with one `BPF_PROG_LOAD`. The same loader ([`load_relocated`]) loads a grown
//! instance of either entry point over maps it shares with the running one
//! (`program::grow`).
//!
//! The kfunc call. bpf-linker 0.13 cannot emit one: an `extern` function becomes a call to
//! an undefined symbol, which aya refuses, failing the whole object, `lb` included. The
//! program calls a helper number no kernel has instead ([`VLAN_TAG_CALL`], in `lb_native`
//! only, which aya never loads), so aya loads the object as it is, and this loader turns
//! that call into the kfunc call libbpf makes of an `__ksym` extern: `src_reg`
//! BPF_PSEUDO_KFUNC_CALL, `imm` the function's id in the kernel's BTF.
//!
//! Whether to use it is decided per interface ([`choose`]): the driver must implement the
//! vlan-tag RX metadata (netdev netlink family, `xdp-rx-metadata-features`). Loading alone is
//! no test: it succeeds for any driver, and the kfunc of one without it fails on every frame.
//! Without it, native mode is safe only on a device that never hands a tag over outside the
//! frame: none of its rx-vlan offloads on, not a veth, and, for a bond, the same of every
//! port (the ports' drivers take the tags off; nothing gives them back to the bond's
//! program).
use std::{
    collections::HashSet,
    ffi::{CStr, CString},
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya::maps::{Map, MapData};
use aya_obj::{
    btf::BtfKind,
    generated::{
        bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type, BPF_F_XDP_DEV_BOUND_ONLY,
        BPF_PSEUDO_KFUNC_CALL,
    },
};

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable};
use netlink_packet_generic::{
    constants::CTRL_ATTR_FAMILY_ID,
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlFamily, GenlHeader, GenlMessage,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use crate::netlink::{
    attributes, encode, link::Mode, messages, parse_control, recv_datagram, Control, NetlinkError,
    NLM_F_ACK, NLM_F_REQUEST,
};

/// The entry point that reads offloaded tags: `lb` plus the kfunc (lb-ebpf's main.rs).
pub const PROGRAM_NATIVE: &str = "lb_native";
/// The kfunc that returns the tag a driver took off the frame (Linux 6.8+).
pub const KFUNC_VLAN_TAG: &str = "bpf_xdp_metadata_rx_vlan_tag";
/// The helper number `lb_native` calls in place of [`KFUNC_VLAN_TAG`] (lb-ebpf's vlan.rs),
/// for this loader to resolve. No kernel has a helper anywhere near it (they end near 212
/// and no new ones are added), so a call left unresolved fails the load, never runs.
pub const VLAN_TAG_CALL: i32 = 0x4c42_5654;

/// `BPF_JMP | BPF_CALL`.
const BPF_CALL_INSN: u8 = 0x85;
/// Bytes of verifier log kept when a load fails; the kernel keeps the tail, which names the
/// failure.
const VERIFIER_LOG_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DevBoundError {
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {0}")]
    KernelBtf(#[source] aya::BtfError),
    #[error("the kernel has no {KFUNC_VLAN_TAG} (Linux 6.8 and later have it)")]
    NoKfunc,
    #[error("parsing the XDP object: {0}")]
    Parse(#[source] aya_obj::ParseError),
    #[error("relocating {PROGRAM_NATIVE}: {0}")]
    Relocate(#[source] aya_obj::relocation::EbpfRelocationError),
    #[error("the XDP object has no program {0}")]
    NoProgram(String),
    #[error(
        "{PROGRAM_NATIVE} has no VLAN-tag call to resolve: the XDP object does not match this \
         daemon"
    )]
    NoCallSite,
    #[error("map {0} of the XDP object is not loaded (or was taken before the program was)")]
    MapMissing(String),
    #[error("loading {program} ({iface}): {source}{}", verifier_tail(.log))]
    Load {
        program: &'static str,
        iface: String,
        #[source]
        source: io::Error,
        log: String,
    },
}

/// The last lines of a verifier log, which say why it refused the program.
fn verifier_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(8)..];
    format!("; verifier: {}", tail.join(" / "))
}

// ---------------------------------------------------------------------------------------------
// What the interface does with tags, and what native mode may do about it
// ---------------------------------------------------------------------------------------------

/// What one device does with the VLAN tags it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceTags {
    /// `rx-vlan-hw-parse` is on: 802.1Q tags may come beside the frame.
    pub ctag_rx: bool,
    /// `rx-vlan-stag-hw-parse` is on: 802.1ad tags may come beside the frame.
    pub stag_rx: bool,
    /// A veth: it hands over whatever tag its peer offloaded (a bridge port, a container's
    /// stack), whatever its own features say.
    pub veth: bool,
}

impl DeviceTags {
    /// Why tags may come beside the frame; none when every tag stays in it.
    fn outside(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if self.ctag_rx {
            why.push("rx-vlan-hw-parse on");
        }
        if self.stag_rx {
            why.push("rx-vlan-stag-hw-parse on");
        }
        if self.veth {
            why.push("a veth, which passes on the tags its peer offloaded");
        }
        why
    }
}

/// What an interface does with VLAN tags, as far as native XDP is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagFacts {
    /// The driver gives an offloaded tag back to XDP (`xdp-rx-metadata-features` has
    /// `vlan-tag`).
    pub rx_metadata_vlan: bool,
    pub device: DeviceTags,
    /// A bond's ports, by name: their drivers receive its frames, and take the tags off.
    pub ports: Vec<(String, DeviceTags)>,
}

/// Native mode on one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// `lb_native`, bound to the device: it reads the tags the driver took off.
    DevBound,
    /// The plain `lb`: every tag this device delivers is in the frame.
    Plain,
    /// A tag may come beside the frame and the program could not read it: native XDP would
    /// forward such frames untagged. Why, for the log.
    Refuse(String),
}

/// Whether native mode can keep every frame's VLAN.
pub fn choose(iface: &str, f: &TagFacts) -> Choice {
    let mut why: Vec<String> = Vec::new();
    if !f.rx_metadata_vlan && !f.device.outside().is_empty() {
        why.push(f.device.outside().join(", "));
    }
    // A port's driver takes the tag off before the bond sees the frame, and nothing gives
    // it back to a program bound to the bond. Ports alike are named together.
    let mut groups: Vec<(Vec<&'static str>, Vec<&str>)> = Vec::new();
    for (port, tags) in &f.ports {
        let reasons = tags.outside();
        if reasons.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(r, _)| *r == reasons) {
            Some((_, ports)) => ports.push(port),
            None => groups.push((reasons, vec![port])),
        }
    }
    for (reasons, ports) in groups {
        let noun = if ports.len() == 1 { "port" } else { "ports" };
        why.push(format!(
            "{noun} {}: {}",
            ports.join(", "),
            reasons.join(", ")
        ));
    }
    if why.is_empty() {
        return if f.rx_metadata_vlan {
            Choice::DevBound
        } else {
            Choice::Plain
        };
    }
    let veth = f.device.veth || f.ports.iter().any(|(_, t)| t.veth);
    let fix = if veth {
        "turn off tx-vlan offload on the veth's peer (ethtool -K PEER txvlan off \
         tx-vlan-stag-hw-insert off)"
    } else {
        "turn the offload off (ethtool -K DEV rxvlan off rx-vlan-stag-hw-parse off, on the \
         interface and each port)"
    };
    Choice::Refuse(format!(
        "{iface} may deliver VLAN tags outside the frame ({}), and XDP cannot read them there \
         (that takes vlan-tag RX metadata from the interface's own driver, Linux 6.8+): \
         native XDP would forward tagged frames untagged. Use skb mode, or {fix}",
        why.join("; ")
    ))
}

/// Reads [`TagFacts`] of `iface` (and of its `ports`, for a bond) from the kernel.
pub fn tag_facts(iface: &str, ifindex: u32, ports: &[String]) -> io::Result<TagFacts> {
    let rx_metadata_vlan = match xdp_rx_metadata_features(ifindex) {
        Ok(Some(f)) => f & NETDEV_XDP_RX_METADATA_VLAN_TAG != 0,
        // No netdev family (before 6.3): no RX metadata at all.
        Ok(None) => false,
        Err(e) => return Err(io::Error::other(format!("netdev netlink: {e}"))),
    };
    Ok(TagFacts {
        rx_metadata_vlan,
        device: device_tags(iface)?,
        ports: ports
            .iter()
            .map(|p| Ok((p.clone(), device_tags(p)?)))
            .collect::<io::Result<_>>()?,
    })
}

/// What `dev` does with the tags it receives (ethtool).
pub fn device_tags(dev: &str) -> io::Result<DeviceTags> {
    let (ctag_rx, stag_rx) = vlan_rx_offload(dev)?;
    Ok(DeviceTags {
        ctag_rx,
        stag_rx,
        veth: driver(dev)?.as_deref() == Some("veth"),
    })
}

// ---------------------------------------------------------------------------------------------
// Loading `lb_native`
// ---------------------------------------------------------------------------------------------

/// The BTF id of [`KFUNC_VLAN_TAG`] in the running kernel.
pub fn vlan_tag_kfunc() -> Result<u32, DevBoundError> {
    let btf = aya::Btf::from_sys_fs().map_err(DevBoundError::KernelBtf)?;
    btf.id_by_type_name_kind(KFUNC_VLAN_TAG, BtfKind::Func)
        .map_err(|_| DevBoundError::NoKfunc)
}

/// Loads entry point `program` of `object`, relocated against the maps `fd_of` names:
/// `lb_native` (its VLAN-tag call resolved to the kfunc) bound to the device `bound` names,
/// or `lb`, unbound. What lets a program run over maps it shares with another instance
/// (`program::grow`), which aya's loader cannot do.
pub fn load_relocated(
    object: &[u8],
    program: &'static str,
    fd_of: &dyn Fn(&str) -> Option<RawFd>,
    bound: Option<(&str, u32)>,
) -> Result<OwnedFd, DevBoundError> {
    let kfunc = match program {
        PROGRAM_NATIVE => Some(vlan_tag_kfunc()?),
        _ => None,
    };
    let (insns, license) = relocated_instructions(object, program, fd_of, kfunc)?;
    let ifindex = bound.map(|(_, i)| i);
    prog_load(program, &insns, &license, ifindex, None).or_else(|source| {
        // Again with a log, only to say why: most loads succeed, and a log costs time.
        let mut log = vec![0u8; VERIFIER_LOG_BYTES];
        match prog_load(program, &insns, &license, ifindex, Some(&mut log)) {
            Ok(fd) => Ok(fd),
            Err(_) => Err(DevBoundError::Load {
                program,
                iface: bound.map_or_else(|| "no device".to_string(), |(n, _)| n.to_string()),
                source,
                log: String::from_utf8_lossy(log.split(|&b| b == 0).next().unwrap_or_default())
                    .into_owned(),
            }),
        }
    })
}

/// `program`'s instructions, relocated against the maps `fd_of` names, its VLAN-tag call
/// resolved to the kfunc `kfunc` (when given); and the object's licence.
fn relocated_instructions(
    object: &[u8],
    program: &str,
    fd_of: &dyn Fn(&str) -> Option<RawFd>,
    kfunc: Option<u32>,
) -> Result<(Vec<bpf_insn>, CString), DevBoundError> {
    let mut obj = aya_obj::Object::parse(object).map_err(DevBoundError::Parse)?;
    // Out of the object, as aya does: relocation borrows them while it changes the object.
    let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
    let mut fds: Vec<RawFd> = Vec::with_capacity(maps.len());
    for (name, _) in &maps {
        fds.push(fd_of(name).ok_or_else(|| DevBoundError::MapMissing(name.clone()))?);
    }
    let text: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        maps.iter()
            .zip(&fds)
            .map(|((name, map), fd)| (name.as_str(), *fd, map)),
        &text,
    )
    .map_err(DevBoundError::Relocate)?;
    obj.relocate_calls(&text).map_err(DevBoundError::Relocate)?;
    let prog = obj
        .programs
        .get(program)
        .ok_or(DevBoundError::NoProgram(program.to_string()))?;
    let mut insns = obj
        .functions
        .get(&prog.function_key())
        .ok_or(DevBoundError::NoProgram(program.to_string()))?
        .instructions
        .clone();
    if let Some(kfunc) = kfunc {
        if resolve_vlan_tag_call(&mut insns, kfunc) == 0 {
            return Err(DevBoundError::NoCallSite);
        }
    }
    Ok((insns, obj.license))
}

/// Turns every call of helper [`VLAN_TAG_CALL`] into a call of the kernel function with BTF
/// id `kfunc`; returns how many it turned.
pub fn resolve_vlan_tag_call(insns: &mut [bpf_insn], kfunc: u32) -> usize {
    let mut n = 0;
    for ins in insns
        .iter_mut()
        .filter(|i| i.code == BPF_CALL_INSN && i.src_reg() == 0 && i.imm == VLAN_TAG_CALL)
    {
        ins.set_src_reg(BPF_PSEUDO_KFUNC_CALL as u8);
        // BTF ids fit an i32 (the kernel's are u32 below 2^31); `off` 0 names vmlinux.
        ins.imm = kfunc as i32;
        n += 1;
    }
    n
}

/// Every variant of aya's `Map` is a `MapData`; aya 0.14 has no accessor for it.
pub(crate) fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    }
}

/// One `BPF_PROG_LOAD` of XDP program `name`, bound to `ifindex` if given, without BTF (the
/// verifier needs none for this program: no global functions, no CO-RE).
fn prog_load(
    name: &str,
    insns: &[bpf_insn],
    license: &CStr,
    ifindex: Option<u32>,
    log: Option<&mut [u8]>,
) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is the kernel's "nothing set".
    let mut attr: bpf_attr = unsafe { zeroed() };
    // SAFETY: writing plain integers into the BPF_PROG_LOAD member of a zeroed union.
    let a = unsafe { &mut attr.__bindgen_anon_3 };
    a.prog_type = bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
    a.expected_attach_type = bpf_attach_type::BPF_XDP as u32;
    a.insns = insns.as_ptr() as u64;
    a.insn_cnt =
        u32::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    a.license = license.as_ptr() as u64;
    if let Some(ifindex) = ifindex {
        a.prog_flags = BPF_F_XDP_DEV_BOUND_ONLY;
        a.prog_ifindex = ifindex;
    }
    // The kernel keeps 15 bytes of a name and a NUL.
    for (d, s) in a.prog_name.iter_mut().take(15).zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    if let Some(log) = log {
        a.log_level = 1;
        a.log_buf = log.as_mut_ptr() as u64;
        a.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// The `bpf(2)` system call for a command that returns 0 on success.
pub(crate) fn bpf_ok(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    // SAFETY: as in `bpf`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `bpf(2)` system call for a command that returns a new file descriptor.
pub(crate) fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised bpf_attr of the size passed; the pointers in it
    // (instructions, licence, log) outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------------------------------------
// ethtool: rx-vlan offload and the driver
// ---------------------------------------------------------------------------------------------

// include/uapi/linux/ethtool.h
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
/// `struct ethtool_drvinfo`: cmd, then `driver[32]` and more we do not read.
const DRVINFO_LEN: usize = 196;
/// More feature bits than any kernel has (about 70): a larger count is not believed.
const MAX_FEATURES: usize = 4096;

/// The feature behind `rx-vlan-hw-parse` (NETIF_F_HW_VLAN_CTAG_RX) and
/// `rx-vlan-stag-hw-parse` (NETIF_F_HW_VLAN_STAG_RX).
const CTAG_RX: &str = "rx-vlan-hw-parse";
const STAG_RX: &str = "rx-vlan-stag-hw-parse";

/// A socket for `SIOCETHTOOL`, in the caller's network namespace.
fn ethtool_socket() -> io::Result<OwnedFd> {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).map(OwnedFd::from)
}

/// One `SIOCETHTOOL` request on `iface`; `data` starts with the command word and is as long
/// as the command's structure.
fn ethtool(sock: &OwnedFd, iface: &str, data: &mut [u8]) -> io::Result<()> {
    if iface.len() >= libc::IFNAMSIZ || iface.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {iface:?}"),
        ));
    }
    // SAFETY: a zeroed ifreq is valid; the name is copied in NUL-terminated (checked above).
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = data.as_mut_ptr().cast();
    // SAFETY: `req` points at `data`, which is as long as the command's structure (callers
    // size it from the kernel's own counts).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(*b.get(off..)?.first_chunk::<4>()?))
}

/// Whether `rx-vlan-hw-parse` and `rx-vlan-stag-hw-parse` are active on `iface`.
pub fn vlan_rx_offload(iface: &str) -> io::Result<(bool, bool)> {
    let sock = ethtool_socket()?;
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("ethtool {what} on {iface}: {e}"))
    };
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set asked.
    let mut info = [0u8; 20];
    info[..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
    info[8..16].copy_from_slice(&(1u64 << ETH_SS_FEATURES).to_ne_bytes());
    ethtool(&sock, iface, &mut info).map_err(|e| ctx("GSSET_INFO", e))?;
    let n = u32_at(&info, 16).unwrap_or(0) as usize;
    if n == 0 || n > MAX_FEATURES {
        return Err(io::Error::other(format!(
            "ethtool on {iface}: {n} feature names"
        )));
    }
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut names = vec![0u8; 12 + n * ETH_GSTRING_LEN];
    names[..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    names[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
    names[8..12].copy_from_slice(&(n as u32).to_ne_bytes());
    ethtool(&sock, iface, &mut names).map_err(|e| ctx("GSTRINGS", e))?;
    // struct ethtool_gfeatures: cmd, size, then size blocks of {available, requested, active,
    // never_changed}.
    let blocks = n.div_ceil(32);
    let mut features = vec![0u8; 8 + blocks * 16];
    features[..4].copy_from_slice(&ETHTOOL_GFEATURES.to_ne_bytes());
    features[4..8].copy_from_slice(&(blocks as u32).to_ne_bytes());
    ethtool(&sock, iface, &mut features).map_err(|e| ctx("GFEATURES", e))?;
    let names = names.get(12..).unwrap_or_default();
    let blocks = features.get(8..).unwrap_or_default();
    Ok((
        feature_active(names, blocks, CTAG_RX),
        feature_active(names, blocks, STAG_RX),
    ))
}

/// Whether feature `name` is active, given the feature names (`ETH_GSTRING_LEN` bytes each,
/// NUL-padded) and the `GFEATURES` blocks (16 bytes each, `active` the third word). A name
/// the kernel does not have is not active.
pub fn feature_active(names: &[u8], blocks: &[u8], name: &str) -> bool {
    let Some(bit) = names
        .chunks_exact(ETH_GSTRING_LEN)
        .position(|s| s.split(|&b| b == 0).next() == Some(name.as_bytes()))
    else {
        return false;
    };
    u32_at(blocks, (bit / 32) * 16 + 8).is_some_and(|active| active & (1 << (bit % 32)) != 0)
}

/// The driver of `iface` (`veth`, `ice`...); `None` when the device reports none.
pub fn driver(iface: &str) -> io::Result<Option<String>> {
    let sock = ethtool_socket()?;
    let mut info = [0u8; DRVINFO_LEN];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    match ethtool(&sock, iface, &mut info) {
        Ok(()) => Ok(crate::netlink::attr_string(&info[4..36])),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("ethtool GDRVINFO on {iface}: {e}"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Generic netlink: the netdev family's `xdp-rx-metadata-features`
// ---------------------------------------------------------------------------------------------

// include/uapi/linux/netdev.h
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: u16 = 5;
pub const NETDEV_XDP_RX_METADATA_VLAN_TAG: u64 = 1 << 2;
/// The kernel answers a local request at once; this only bounds a broken kernel.
const GENL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Receive buffer: a `dev-get` or `getfamily` reply is a few hundred bytes.
const GENL_BUF_LEN: usize = 32 << 10;

/// The attributes of the netdev family that the daemon reads or sends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NetdevAttr {
    Ifindex(u32),
    /// `NETDEV_XDP_RX_METADATA_*` bits.
    XdpRxMetadataFeatures(u64),
    Other(DefaultNla),
}

impl Nla for NetdevAttr {
    fn value_len(&self) -> usize {
        match self {
            NetdevAttr::Ifindex(_) => 4,
            NetdevAttr::XdpRxMetadataFeatures(_) => 8,
            NetdevAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            NetdevAttr::Ifindex(_) => NETDEV_A_DEV_IFINDEX,
            NetdevAttr::XdpRxMetadataFeatures(_) => NETDEV_A_DEV_XDP_RX_METADATA_FEATURES,
            NetdevAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            NetdevAttr::Ifindex(i) => buffer.copy_from_slice(&i.to_ne_bytes()),
            NetdevAttr::XdpRxMetadataFeatures(f) => buffer.copy_from_slice(&f.to_ne_bytes()),
            NetdevAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for NetdevAttr {
    fn parse(nla: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            NETDEV_A_DEV_IFINDEX => NetdevAttr::Ifindex(netlink_packet_core::parse_u32(v)?),
            // A u64 by the family's spec; a shorter value is taken as its low bytes.
            NETDEV_A_DEV_XDP_RX_METADATA_FEATURES => {
                let mut b = [0u8; 8];
                let v = v.get(..8).unwrap_or(v);
                b[..v.len()].copy_from_slice(v);
                NetdevAttr::XdpRxMetadataFeatures(u64::from_ne_bytes(b))
            }
            _ => NetdevAttr::Other(DefaultNla::parse(nla)?),
        })
    }
}

/// A message of the netdev generic-netlink family (`netdev`), which no rust-netlink crate
/// covers: this is the small family payload `netlink-packet-generic` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Netdev {
    cmd: u8,
    attrs: Vec<NetdevAttr>,
}

impl GenlFamily for Netdev {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Netdev {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

/// A blocking generic-netlink socket (`netlink-sys`) for one request at a time. Only the
/// kernel's messages (port 0) that answer the request (its sequence number) are read.
struct Genl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Genl {
    fn open() -> Result<Self, NetlinkError> {
        let mut socket = Socket::new(NETLINK_GENERIC)
            .map_err(|e| NetlinkError::io("socket(NETLINK_GENERIC)", e))?;
        socket
            .bind_auto()
            .map_err(|e| NetlinkError::io("bind", e))?;
        // netlink-sys has no setter for a receive timeout; socket2 sets it on any socket.
        socket2::SockRef::from(&socket)
            .set_read_timeout(Some(GENL_TIMEOUT))
            .map_err(|e| NetlinkError::io("setsockopt(SO_RCVTIMEO)", e))?;
        Ok(Genl {
            socket,
            seq: 0,
            buf: vec![0; GENL_BUF_LEN],
        })
    }

    /// Sends `request`; returns the attributes of its reply (after the `genlmsghdr`).
    fn call<F>(&mut self, request: GenlMessage<F>) -> Result<Vec<u8>, NetlinkError>
    where
        F: GenlFamily + Emitable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = encode(request, NLM_F_REQUEST | NLM_F_ACK, seq);
        let sent = self
            .socket
            .send_to(&msg, &SocketAddr::new(0, 0), 0)
            .map_err(|e| NetlinkError::io("sendto", e))?;
        if sent != msg.len() {
            return Err(NetlinkError::io(
                "sendto",
                io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            ));
        }
        let mut reply = None;
        loop {
            let (n, from) = match recv_datagram(self.socket.as_raw_fd(), &mut self.buf, false) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::io("recvfrom", e)),
            };
            if n > self.buf.len() {
                return Err(NetlinkError::DatagramTooLarge {
                    len: n,
                    cap: self.buf.len(),
                });
            }
            if from != 0 {
                continue;
            }
            for item in messages(&self.buf[..n]) {
                let (header, payload) = item?;
                if header.sequence_number != seq {
                    continue;
                }
                match parse_control(&header, payload)? {
                    Some(Control::Ack | Control::Done) => {
                        return reply.ok_or(NetlinkError::Malformed {
                            what: "generic netlink reply",
                            source: "acknowledged without a reply".into(),
                        });
                    }
                    Some(Control::Error { errno, message }) => {
                        return Err(NetlinkError::Kernel { errno, message })
                    }
                    Some(Control::Noop) => {}
                    None => {
                        let genl = GenlHeader::parse(payload)
                            .map_err(NetlinkError::malformed("genlmsghdr"))?;
                        let attrs = payload.get(genl.buffer_len()..).unwrap_or_default();
                        reply = Some(attrs.to_vec());
                    }
                }
            }
        }
    }

    /// The id of generic-netlink family `name`; `None` when the kernel has no such family.
    fn family(&mut self, name: &str) -> Result<Option<u16>, NetlinkError> {
        let request = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
        });
        match self.call(request) {
            Ok(reply) => Ok(family_id(&reply)?),
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `CTRL_ATTR_FAMILY_ID` of a `CTRL_CMD_GETFAMILY` reply's attributes. Only that attribute
/// is decoded: the reply's ops and multicast groups are not needed.
fn family_id(attrs: &[u8]) -> Result<Option<u16>, NetlinkError> {
    for a in attributes(attrs) {
        let a = a?;
        if a.kind() != CTRL_ATTR_FAMILY_ID {
            continue;
        }
        if let Ok(GenlCtrlAttrs::FamilyId(id)) = GenlCtrlAttrs::parse(&a) {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// `NETDEV_A_DEV_XDP_RX_METADATA_FEATURES` of a `NETDEV_CMD_DEV_GET` reply's attributes (0
/// when absent: a kernel that knows no RX metadata).
pub fn rx_metadata_features(attrs: &[u8]) -> Result<u64, NetlinkError> {
    for a in attributes(attrs) {
        if let Ok(NetdevAttr::XdpRxMetadataFeatures(f)) = NetdevAttr::parse(&a?) {
            return Ok(f);
        }
    }
    Ok(0)
}

/// The `xdp-rx-metadata-features` of interface `ifindex`; `None` when the kernel has no
/// netdev family (before 6.3).
pub fn xdp_rx_metadata_features(ifindex: u32) -> Result<Option<u64>, NetlinkError> {
    let mut genl = Genl::open()?;
    let Some(family) = genl.family(Netdev::family_name())? else {
        return Ok(None);
    };
    let mut request = GenlMessage::from_payload(Netdev {
        cmd: NETDEV_CMD_DEV_GET,
        attrs: vec![NetdevAttr::Ifindex(ifindex)],
    });
    request.set_resolved_family_id(family);
    let reply = genl.call(request)?;
    rx_metadata_features(&reply).map(Some)
}

/// A bpf_link giving `ifindex` the program `prog` in `mode`, as aya's `Xdp::attach` makes for
/// the programs it loaded: the attachment lasts as long as the returned descriptor (the
/// kernel drops it with the daemon, even on SIGKILL). For `lb_native`, which aya did not load.
pub fn link_create(prog: BorrowedFd<'_>, ifindex: u32, mode: Mode) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_attr is the kernel's "nothing set".
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the BPF_LINK_CREATE member of a zeroed union.
    let l = unsafe { &mut attr.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.__bindgen_anon_2.target_ifindex = ifindex;
    l.attach_type = bpf_attach_type::BPF_XDP as u32;
    l.flags = mode.flags();
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Makes bpf_link `link` run `prog` in place of `old` (`BPF_LINK_UPDATE` with
/// `BPF_F_REPLACE`: it fails, rather than replacing another, if the link runs something
/// else), or in place of whatever it runs (`old` none: a link a previous run pinned, whose
/// program this one never held).
pub fn link_update(
    link: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    old: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    // SAFETY: an all-zero bpf_attr is the kernel's "nothing set".
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the BPF_LINK_UPDATE member of a zeroed union.
    let u = unsafe { &mut attr.link_update };
    u.link_fd = link.as_raw_fd() as u32;
    u.__bindgen_anon_1.new_prog_fd = prog.as_raw_fd() as u32;
    if let Some(old) = old {
        u.flags = BPF_F_REPLACE;
        u.__bindgen_anon_2.old_prog_fd = old.as_raw_fd() as u32;
    }
    bpf_ok(bpf_cmd::BPF_LINK_UPDATE, &mut attr)
}

/// `BPF_OBJ_PIN`: `fd` (a map or a link) stays in the kernel as long as `path`, a new name
/// on a bpf filesystem, exists. aya pins the maps and links it made; this pins ours.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let path = path_c(path)?;
    // SAFETY: an all-zero bpf_attr is the kernel's "nothing set".
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing plain integers into the BPF_OBJ_* member of a zeroed union; the
    // path outlives the call.
    let o = unsafe { &mut attr.__bindgen_anon_4 };
    o.bpf_fd = fd.as_raw_fd() as u32;
    o.pathname = path.as_ptr() as u64;
    bpf_ok(bpf_cmd::BPF_OBJ_PIN, &mut attr)
}

/// `BPF_OBJ_GET`: a new descriptor of what `path` pins.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    let path = path_c(path)?;
    // SAFETY: as in `obj_pin`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: as in `obj_pin`.
    let o = unsafe { &mut attr.__bindgen_anon_4 };
    o.pathname = path.as_ptr() as u64;
    bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)
}

fn path_c(path: &std::path::Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// `BPF_LINK_DETACH`: ends the link's attachment, whoever else holds the link (its pin).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: an all-zero bpf_attr is the kernel's "nothing set".
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_detach.link_fd = link.as_raw_fd() as u32;
    bpf_ok(bpf_cmd::BPF_LINK_DETACH, &mut attr)
}

/// `BPF_F_REPLACE`, include/uapi/linux/bpf.h.
const BPF_F_REPLACE: u32 = 1 << 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::test_wire::attr;

    fn tags(ctag_rx: bool, stag_rx: bool, veth: bool) -> DeviceTags {
        DeviceTags {
            ctag_rx,
            stag_rx,
            veth,
        }
    }

    fn facts(rx_metadata_vlan: bool, device: DeviceTags) -> TagFacts {
        TagFacts {
            rx_metadata_vlan,
            device,
            ports: Vec::new(),
        }
    }

    #[test]
    fn native_mode_only_where_no_tag_can_be_lost() {
        // The driver gives tags back: the dev-bound program, whatever the offloads.
        let all = tags(true, true, true);
        assert_eq!(choose("eth0", &facts(true, all)), Choice::DevBound);
        assert_eq!(
            choose("eth0", &facts(true, DeviceTags::default())),
            Choice::DevBound
        );
        // No offload at all (virtio-net, tun): every tag is in the frame.
        assert_eq!(
            choose("eth0", &facts(false, DeviceTags::default())),
            Choice::Plain
        );
        // A tag may come beside the frame and cannot be read: refused, saying why and what
        // to do.
        for (t, why) in [
            (tags(true, false, false), "(rx-vlan-hw-parse on)"),
            (tags(false, true, false), "(rx-vlan-stag-hw-parse on)"),
            (
                tags(false, false, true),
                "(a veth, which passes on the tags its peer offloaded)",
            ),
            (
                tags(true, true, false),
                "(rx-vlan-hw-parse on, rx-vlan-stag-hw-parse on)",
            ),
        ] {
            let Choice::Refuse(r) = choose("eth0", &facts(false, t)) else {
                panic!("{t:?} must be refused");
            };
            assert!(
                r.starts_with("eth0 may deliver VLAN tags outside the frame"),
                "{r}"
            );
            assert!(r.contains(why), "{r}");
            assert!(r.contains("Use skb mode"), "{r}");
        }
    }

    #[test]
    fn a_bond_is_judged_by_its_ports() {
        let bond = |ports: Vec<(String, DeviceTags)>| TagFacts {
            rx_metadata_vlan: false,
            device: DeviceTags::default(),
            ports,
        };
        let quiet = ("eth1".to_string(), DeviceTags::default());
        assert_eq!(choose("bond0", &bond(vec![quiet.clone()])), Choice::Plain);
        let stripping = ("eth2".to_string(), tags(true, false, false));
        let Choice::Refuse(r) = choose("bond0", &bond(vec![quiet, stripping.clone()])) else {
            panic!("a port that strips tags must refuse native mode");
        };
        assert!(r.contains("(port eth2: rx-vlan-hw-parse on)"), "{r}");
        assert!(!r.contains("eth1"), "{r}");
        // Ports alike are named together; the bond's own offload comes first.
        let mut f = bond(vec![
            stripping.clone(),
            ("eth3".to_string(), tags(false, true, false)),
            ("eth4".to_string(), tags(true, false, false)),
        ]);
        f.device = tags(true, false, false);
        let Choice::Refuse(r) = choose("bond0", &f) else {
            panic!("must be refused");
        };
        assert!(
            r.contains(
                "(rx-vlan-hw-parse on; ports eth2, eth4: rx-vlan-hw-parse on; port eth3: \
                 rx-vlan-stag-hw-parse on)"
            ),
            "{r}"
        );
        // Metadata on the bond itself would not bring back what a port took off.
        let mut f = bond(vec![stripping]);
        f.rx_metadata_vlan = true;
        assert!(matches!(choose("bond0", &f), Choice::Refuse(_)));
    }

    fn call(imm: i32, src: u8) -> bpf_insn {
        // SAFETY: bpf_insn is plain integers.
        let mut i: bpf_insn = unsafe { zeroed() };
        i.code = BPF_CALL_INSN;
        i.set_src_reg(src);
        i.imm = imm;
        i
    }

    #[test]
    fn only_the_placeholder_call_becomes_the_kfunc() {
        let mut insns = [
            call(1, 0),             // bpf_map_lookup_elem
            call(VLAN_TAG_CALL, 0), // the placeholder
            call(VLAN_TAG_CALL, 1), // a BPF-to-BPF call that happens to jump that far
            call(5, 0),
        ];
        let mut lddw: bpf_insn = unsafe { zeroed() };
        lddw.code = 0x18;
        lddw.imm = VLAN_TAG_CALL;
        assert_eq!(resolve_vlan_tag_call(&mut insns, 65610), 1);
        assert_eq!((insns[1].src_reg(), insns[1].imm), (2, 65610));
        assert_eq!((insns[0].src_reg(), insns[0].imm), (0, 1));
        assert_eq!((insns[2].src_reg(), insns[2].imm), (1, VLAN_TAG_CALL));
        assert_eq!((insns[3].src_reg(), insns[3].imm), (0, 5));
        let mut other = [lddw];
        assert_eq!(resolve_vlan_tag_call(&mut other, 65610), 0);
    }

    fn gstring(name: &str) -> Vec<u8> {
        let mut s = name.as_bytes().to_vec();
        s.resize(ETH_GSTRING_LEN, 0);
        s
    }

    #[test]
    fn features_by_name() {
        // 40 names: the two VLAN ones at bits 3 and 33 (the second block).
        let mut names = Vec::new();
        for i in 0..40 {
            names.extend(gstring(match i {
                3 => CTAG_RX,
                33 => STAG_RX,
                _ => "tx-checksum-ipv4",
            }));
        }
        let block = |active: u32| {
            [1u32, 2, active, 0]
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect::<Vec<u8>>()
        };
        let both = [block(1 << 3), block(1 << 1)].concat();
        assert!(feature_active(&names, &both, CTAG_RX));
        assert!(feature_active(&names, &both, STAG_RX));
        let none = [block(!(1 << 3)), block(!(1 << 1))].concat();
        assert!(!feature_active(&names, &none, CTAG_RX));
        assert!(!feature_active(&names, &none, STAG_RX));
        // A prefix is not the name; an unknown name is off; blocks cut short are off.
        assert!(!feature_active(&names, &both, "rx-vlan"));
        assert!(!feature_active(&names, &both, "rx-vlan-filter"));
        assert!(!feature_active(&names, &both[..16], STAG_RX));
        assert!(!feature_active(&names[..10], &both, CTAG_RX));
    }

    #[test]
    fn netdev_reply_attributes() {
        let mut attrs = Vec::new();
        attrs.extend(attr(NETDEV_A_DEV_IFINDEX, &7u32.to_ne_bytes()));
        attrs.extend(attr(3, &0x7fu64.to_ne_bytes()));
        attrs.extend(attr(
            NETDEV_A_DEV_XDP_RX_METADATA_FEATURES,
            &7u64.to_ne_bytes(),
        ));
        let f = rx_metadata_features(&attrs).unwrap();
        assert_eq!(f, 7);
        assert_ne!(f & NETDEV_XDP_RX_METADATA_VLAN_TAG, 0);
        // A kernel before vlan-tag (6.3..6.7) reports timestamp and hash only.
        let old = attr(NETDEV_A_DEV_XDP_RX_METADATA_FEATURES, &3u64.to_ne_bytes());
        assert_eq!(
            rx_metadata_features(&old).unwrap() & NETDEV_XDP_RX_METADATA_VLAN_TAG,
            0
        );
        assert_eq!(rx_metadata_features(&[]).unwrap(), 0);
        // Hostile: a truncated attribute is an error, not a panic.
        assert!(rx_metadata_features(&attrs[..attrs.len() - 3]).is_err());
        let fam = attr(CTRL_ATTR_FAMILY_ID, &0x22u16.to_ne_bytes());
        assert_eq!(family_id(&fam).unwrap(), Some(0x22));
        assert_eq!(family_id(&[]).unwrap(), None);
    }

    #[test]
    fn verifier_tail_keeps_the_end() {
        let log: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let t = verifier_tail(&log);
        assert!(t.ends_with("line 19"), "{t}");
        assert!(!t.contains("line 11"), "{t}");
        assert_eq!(verifier_tail("\n\n"), "");
    }
}

/// Root-only test in a throw-away network namespace: the netdev family asked over
/// `netlink-packet-generic` about a veth. Nothing is configured outside the namespace.
#[cfg(test)]
mod netns_tests {
    use super::*;
    use crate::netlink::test_netns::{ifindex, in_netns, ip, privileged, Netns};

    #[test]
    fn netdev_family_answers_in_netns() {
        if !privileged("devbound::netdev_family_answers_in_netns") {
            return;
        }
        let ns = Netns::create("devb");
        ip(&[
            "-n", &ns.0, "link", "add", "ldb0", "type", "veth", "peer", "name", "ldb1",
        ]);
        in_netns(&ns.0, || async {
            let idx = ifindex("ldb0");
            // The netdev family exists since 6.3: found, and it answers for the veth.
            let features = xdp_rx_metadata_features(idx).expect("netdev dev-get");
            assert!(features.is_some(), "no netdev family on this kernel");
            // An unknown interface is a typed kernel error, not a panic or a 0.
            let err = xdp_rx_metadata_features(999_999).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
            // An unknown family is None.
            let mut genl = Genl::open().expect("open");
            assert_eq!(genl.family("no-such-family").expect("getfamily"), None);
            assert!(genl.family("nlctrl").expect("getfamily").is_some());
        });
    }
}
