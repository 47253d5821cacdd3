//! The dataplane a daemon leaves behind: its maps and its bpf_link pinned on a bpf
//! filesystem, under `<root>/lb-daemon/<netns>/<interface>/`, so that the program keeps
//! forwarding when the daemon dies and the next run takes over from it.
//!
//! The network namespace's id keeps the daemons of different namespaces apart (each may
//! have an `eth0`; a bpf filesystem is shared by every namespace that sees the mount), and
//! the interface keeps two daemons of one namespace apart.
//!
//! [`judge`] (pure) decides what a starting daemon does with each pinned map: adopt it,
//! migrate it (same layout, another size: entries copied into a new map), or start it
//! afresh, saying why.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use lb_common::{names, LAYOUT_VERSION};

use super::devbound;

/// The maps that say which service and real server each id stands for, and what the
/// program does with them: adopted together or not at all (flows name backends by id, so
/// the tables go with them).
pub const PLANNER: [&str; 6] = [
    names::SERVICES4,
    names::SERVICES6,
    names::SERVICE_INFO,
    names::BACKENDS,
    names::BACKEND_KEYS,
    names::RINGS,
];

/// The connection tables and persistence templates: adopted, or migrated into maps of the
/// configured size.
pub const TABLES: [&str; 4] = [
    names::FLOWS4,
    names::FLOWS6,
    names::PERSIST4,
    names::PERSIST6,
];

/// Positions, counters and the program's clock (its last value: where the next run's clock
/// goes on from): adopted when they fit, else started afresh.
pub const COUNTERS: [&str; 6] = [
    names::CLOCK,
    names::RR_STATE,
    names::SERVICE_STATS,
    names::BACKEND_STATS,
    names::REASON_STATS,
    names::SYNC_STATS,
];

/// NAT's maps: the reverse tables (a shared NAT real server's replies, per flow), adopted
/// when their size is the configured one, else started afresh (the replies of that
/// server's flows then go untranslated until they end; other NAT servers need no
/// entries); the real servers' sources (`NAT_SOURCES4`/`6`, sized with the backends),
/// adopted so that a shared real server names the service it named (the daemon writes
/// them whole before the program runs either way).
pub const REVERSE: [&str; 4] = [
    names::NAT_REV4,
    names::NAT_REV6,
    names::NAT_SOURCES4,
    names::NAT_SOURCES6,
];

/// Every map that is pinned (with `META`). The flow caches, the sync event ring, the log ring
/// and the global data are the instance's own: nothing in them outlives it usefully, and
/// bpffs refuses the '.' of the global data's names.
pub fn pinned() -> impl Iterator<Item = &'static str> {
    PLANNER
        .into_iter()
        .chain(TABLES)
        .chain(COUNTERS)
        .chain(REVERSE)
        .chain([names::META])
}

/// A map's kind, sizes and flags, as the kernel reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub kind: u32,
    pub key: u32,
    pub value: u32,
    pub entries: u32,
    pub flags: u32,
}

impl Shape {
    /// The same kind, key, value and flags: entries can be read as they are.
    pub fn same_layout(&self, o: &Shape) -> bool {
        self.kind == o.kind && self.key == o.key && self.value == o.value && self.flags == o.flags
    }

    fn differs(&self, o: &Shape) -> String {
        format!(
            "type {} key {} value {} flags {:#x}, this daemon's: type {} key {} value {} flags {:#x}",
            self.kind, self.key, self.value, self.flags, o.kind, o.key, o.value, o.flags
        )
    }
}

/// What a starting daemon does with one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    Adopt,
    /// The same layout in another size: a new map, the entries copied.
    Migrate {
        from: u32,
        to: u32,
    },
    /// A new, empty map: why the pinned one is not used (none: nothing was pinned).
    Fresh(Option<String>),
}

/// [`judge`]'s answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    pub takes: BTreeMap<&'static str, Take>,
    /// Why the previous run's services and real servers are not taken over, if they are not
    /// (and everything else with them).
    pub dropped: Option<String>,
}

impl Judgement {
    pub fn adopts(&self, name: &str) -> bool {
        self.takes.get(name) == Some(&Take::Adopt)
    }
}

/// Decides, for each pinned map (`pinned`, with `layout` from the pinned `META`), what a
/// daemon that expects `expected` (its object's maps at the sizes it would make them; the
/// planner's and counters' sizes are the pinned ones' when adopted) does with it.
pub fn judge(
    pinned: &HashMap<String, Shape>,
    expected: &HashMap<&'static str, Shape>,
    layout: Option<u32>,
) -> Judgement {
    let mut takes: BTreeMap<&'static str, Take> = BTreeMap::new();
    let all_fresh = |why: String| {
        let takes = self::pinned()
            .map(|n| (n, Take::Fresh(pinned.contains_key(n).then(|| why.clone()))))
            .collect();
        Judgement {
            takes,
            dropped: Some(why),
        }
    };
    if pinned.is_empty() {
        return Judgement {
            takes: self::pinned().map(|n| (n, Take::Fresh(None))).collect(),
            dropped: None,
        };
    }
    match layout {
        None => return all_fresh("the pinned maps have no record of their layout".into()),
        Some(v) if v != LAYOUT_VERSION => {
            return all_fresh(format!(
                "the pinned maps have layout version {v}; this daemon writes version \
                 {LAYOUT_VERSION}"
            ))
        }
        Some(_) => {}
    }
    for name in PLANNER {
        let (Some(have), Some(want)) = (pinned.get(name), expected.get(name)) else {
            return all_fresh(format!("{name} is not pinned"));
        };
        if !have.same_layout(want) {
            return all_fresh(format!("{name} has {}", have.differs(want)));
        }
        takes.insert(name, Take::Adopt);
    }
    let size = |n: &str| pinned.get(n).map_or(0, |s| s.entries);
    let services = size(names::SERVICE_INFO);
    let backends = size(names::BACKENDS);
    for (name, entries) in [
        (names::SERVICES4, services * 2),
        (names::SERVICES6, services * 2),
        (names::RINGS, size(names::RINGS)),
        (names::BACKEND_KEYS, backends),
    ] {
        if size(name) != entries {
            return all_fresh(format!(
                "{name} has {} entries where {entries} go with the other maps",
                size(name)
            ));
        }
    }
    takes.insert(names::META, Take::Adopt);
    for name in TABLES {
        let take = match (pinned.get(name), expected.get(name)) {
            (Some(have), Some(want)) if have.same_layout(want) => {
                if have.entries == want.entries {
                    Take::Adopt
                } else {
                    Take::Migrate {
                        from: have.entries,
                        to: want.entries,
                    }
                }
            }
            (Some(have), Some(want)) => {
                Take::Fresh(Some(format!("{name} has {}", have.differs(want))))
            }
            (Some(_), None) => Take::Fresh(Some(format!("this daemon has no {name}"))),
            (None, _) => Take::Fresh(None),
        };
        takes.insert(name, take);
    }
    for name in COUNTERS.into_iter().chain(REVERSE) {
        let entries = match name {
            names::RR_STATE | names::SERVICE_STATS => Some(services),
            names::BACKEND_STATS | names::NAT_SOURCES4 | names::NAT_SOURCES6 => Some(backends),
            _ => expected.get(name).map(|s| s.entries),
        };
        let take = match (pinned.get(name), expected.get(name)) {
            (Some(have), Some(want)) if have.same_layout(want) && Some(have.entries) == entries => {
                Take::Adopt
            }
            (Some(have), Some(want)) => Take::Fresh(Some(format!(
                "{name} has {} and {} entries",
                have.differs(want),
                have.entries
            ))),
            (Some(_), None) => Take::Fresh(Some(format!("this daemon has no {name}"))),
            (None, _) => Take::Fresh(None),
        };
        takes.insert(name, take);
    }
    Judgement {
        takes,
        dropped: None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a bpf filesystem, and mounting one there failed: {1}")]
    NotBpffs(PathBuf, io::Error),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One dataplane's pins.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

impl Pins {
    /// The pins of the dataplane on `interface` in this network namespace, under `root`: a
    /// bpf filesystem, mounted there if it is not one yet (as systemd and iproute2 do at
    /// /sys/fs/bpf).
    pub fn open(root: &Path, interface: &str) -> Result<Pins, PinError> {
        let netns = crate::os::netns_id().map_err(io_at(Path::new("/proc/thread-self/ns/net")))?;
        std::fs::create_dir_all(root).map_err(io_at(root))?;
        if !crate::os::is_bpffs(root).map_err(io_at(root))? {
            crate::os::mount_bpffs(root).map_err(|e| PinError::NotBpffs(root.to_path_buf(), e))?;
            tracing::info!(root = %root.display(), "mounted a bpf filesystem for the pinned dataplane");
            if matches!(crate::os::in_init_mount_namespace(), Ok(false)) {
                tracing::warn!(root = %root.display(), "this process has a mount namespace of its own: the pinned dataplane dies with it (set [dataplane] pin_root to a bpf filesystem mounted outside)");
            }
        }
        let dir = pin_dir(root, &netns, interface);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(Pins { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every map pinned here, with its shape.
    pub fn maps(&self) -> Result<HashMap<String, (Shape, OwnedFd)>, PinError> {
        let mut out = HashMap::new();
        for name in pinned() {
            let path = self.path(name);
            let fd = match devbound::obj_get(&path) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_at(&path)(e)),
            };
            let shape = shape_of(fd.as_fd()).map_err(io_at(&path))?;
            out.insert(name.to_string(), (shape, fd));
        }
        Ok(out)
    }

    /// Pins map `name` (in place of what is pinned under that name, in one step: a
    /// crash leaves the old pin or the new one).
    pub fn pin_map(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), PinError> {
        let path = self.path(name);
        // `~`: no escaped interface name (`file_name_part`) has one, so no pin's temporary
        // name is another pin's.
        let next = self.path(&format!("{name}~next"));
        let _ = std::fs::remove_file(&next);
        devbound::obj_pin(fd, &next).map_err(io_at(&next))?;
        std::fs::rename(&next, &path).map_err(io_at(&path))
    }

    /// Whether map `name` is pinned and is the map `fd` is.
    pub fn holds(&self, name: &str, fd: BorrowedFd<'_>) -> bool {
        let Ok(pinned) = devbound::obj_get(&self.path(name)) else {
            return false;
        };
        matches!((map_id(pinned.as_fd()), map_id(fd)), (Ok(a), Ok(b)) if a == b)
    }

    /// The pinned bpf_link, if any.
    pub fn link(&self) -> Option<OwnedFd> {
        devbound::obj_get(&self.path("link")).ok()
    }

    pub fn pin_link(&self, link: BorrowedFd<'_>) -> Result<(), PinError> {
        self.pin_map("link", link)
    }

    /// The pinned bpf_link of the program on the inside interface `iface` (`[dataplane]
    /// inside_interfaces`), kept with the dataplane's: one dataplane, several attachments.
    pub fn inside_link(&self, iface: &str) -> Option<OwnedFd> {
        devbound::obj_get(&self.path(&inside_link_name(iface))).ok()
    }

    pub fn pin_inside_link(&self, iface: &str, link: BorrowedFd<'_>) -> Result<(), PinError> {
        self.pin_map(&inside_link_name(iface), link)
    }

    /// The inside links pinned here whose interface `keep` does not name (a previous run's,
    /// for interfaces no longer configured), by pin name, each with its link.
    pub fn stray_inside_links(&self, keep: &[String]) -> Vec<(String, OwnedFd)> {
        let wanted: Vec<String> = keep.iter().map(|i| inside_link_name(i)).collect();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("link@") && !n.ends_with("~next") && !wanted.contains(n))
            .filter_map(|n| Some((n.clone(), devbound::obj_get(&self.path(&n)).ok()?)))
            .collect()
    }

    /// Removes the pin `name` (a [`Pins::stray_inside_links`] one).
    pub fn unpin(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    pub fn unpin_link(&self) {
        let _ = std::fs::remove_file(self.path("link"));
    }

    /// Removes every pin and the directory (a `release` stop): the maps go once nothing
    /// else holds them.
    pub fn remove(&self) -> Result<(), PinError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&self.dir)(e)),
        }
    }
}

/// The kernel's id of the map `fd` is.
fn map_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(info_of(fd)?.id())
}

fn info_of(fd: BorrowedFd<'_>) -> io::Result<aya::maps::MapInfo> {
    let data = aya::maps::MapData::from_fd(fd.try_clone_to_owned()?)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    data.info()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The shape of the map `fd` is.
pub fn shape_of(fd: BorrowedFd<'_>) -> io::Result<Shape> {
    let info = info_of(fd)?;
    let kind = info
        .map_type()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Shape {
        kind: kind as u32,
        key: info.key_size(),
        value: info.value_size(),
        entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// The directory of the dataplane on `interface` in network namespace `netns` (see
/// [`crate::os::netns_id`]).
/// The pin of the link on inside interface `iface` (escaped: bpffs refuses a '.', which a
/// VLAN device's name has).
fn inside_link_name(iface: &str) -> String {
    format!("link@{}", crate::os::file_name_part(iface))
}

pub fn pin_dir(root: &Path, netns: &str, interface: &str) -> PathBuf {
    root.join("lb-daemon")
        .join(crate::os::file_name_part(netns))
        .join(crate::os::file_name_part(interface))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_per_namespace_and_interface() {
        let root = Path::new("/sys/fs/bpf");
        assert_eq!(
            pin_dir(root, "4097", "eth0"),
            Path::new("/sys/fs/bpf/lb-daemon/4097/eth0")
        );
        assert_ne!(pin_dir(root, "4097", "eth0"), pin_dir(root, "4098", "eth0"));
        assert_eq!(
            pin_dir(root, "4097", "eth0.100"),
            Path::new("/sys/fs/bpf/lb-daemon/4097/eth0%2e100")
        );
        // Escaping never makes two names one.
        let escape = crate::os::file_name_part;
        assert_ne!(escape("a.b"), escape("a%2eb"));
        assert!(!escape("x/../y").contains('/') && !escape("x/../y").contains('.'));
    }

    const HASH: u32 = 1;
    const ARRAY: u32 = 2;
    const PERCPU_ARRAY: u32 = 6;
    const LRU: u32 = 9;

    fn shape(kind: u32, key: u32, value: u32, entries: u32) -> Shape {
        Shape {
            kind,
            key,
            value,
            entries,
            flags: 0,
        }
    }

    /// What a daemon of this version pins for 10 services, 40 backends, 1000 ring slots and
    /// `flows` flow entries.
    fn maps(flows: u32) -> HashMap<&'static str, Shape> {
        HashMap::from([
            (names::SERVICES4, shape(HASH, 8, 8, 20)),
            (names::SERVICES6, shape(HASH, 20, 8, 20)),
            (names::SERVICE_INFO, shape(ARRAY, 4, 48, 10)),
            (names::BACKENDS, shape(ARRAY, 4, 16, 40)),
            (names::BACKEND_KEYS, shape(ARRAY, 4, 24, 40)),
            (
                names::RINGS,
                Shape {
                    flags: 1024,
                    ..shape(ARRAY, 4, 4, 1000)
                },
            ),
            (names::META, shape(ARRAY, 4, 16, 1)),
            (names::FLOWS4, shape(LRU, 16, 16, flows)),
            (names::FLOWS6, shape(LRU, 40, 16, flows)),
            (names::PERSIST4, shape(LRU, 20, 16, 100)),
            (names::PERSIST6, shape(LRU, 36, 16, 100)),
            (names::RR_STATE, shape(PERCPU_ARRAY, 4, 4, 10)),
            (names::SERVICE_STATS, shape(PERCPU_ARRAY, 4, 24, 10)),
            (names::BACKEND_STATS, shape(PERCPU_ARRAY, 4, 24, 40)),
            (names::REASON_STATS, shape(PERCPU_ARRAY, 4, 16, 30)),
            (names::SYNC_STATS, shape(PERCPU_ARRAY, 4, 8, 4)),
            (names::CLOCK, shape(ARRAY, 4, 8, 1)),
            (names::NAT_REV4, shape(LRU, 16, 16, flows)),
            (names::NAT_REV6, shape(LRU, 40, 40, flows)),
            (names::NAT_SOURCES4, shape(HASH, 8, 20, 40)),
            (names::NAT_SOURCES6, shape(HASH, 20, 20, 40)),
        ])
    }

    #[test]
    fn nat_reverse_tables_are_adopted_at_their_size_or_made_anew() {
        // A previous version pinned none: everything else is adopted.
        let mut pinned = maps(1000);
        pinned.remove(names::NAT_REV4);
        pinned.remove(names::NAT_REV6);
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert_eq!(j.dropped, None);
        assert_eq!(j.takes[names::NAT_REV4], Take::Fresh(None));
        assert!(j.adopts(names::FLOWS4) && j.adopts(names::BACKENDS));
        // Another size (NAT came or went, or max_flows changed): made anew, said why.
        let mut pinned = maps(1000);
        pinned.insert(names::NAT_REV6, shape(LRU, 40, 40, 1));
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert!(matches!(&j.takes[names::NAT_REV6], Take::Fresh(Some(_))));
        assert!(j.adopts(names::NAT_REV4) && j.adopts(names::FLOWS6));
    }

    fn pinned_of(m: &HashMap<&'static str, Shape>) -> HashMap<String, Shape> {
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn the_same_layout_is_adopted_whole() {
        let j = judge(&pinned_of(&maps(1000)), &maps(1000), Some(LAYOUT_VERSION));
        assert_eq!(j.dropped, None);
        for name in pinned() {
            assert!(j.adopts(name), "{name}: {:?}", j.takes.get(name));
        }
    }

    #[test]
    fn nothing_pinned_is_a_fresh_start_without_a_reason() {
        let j = judge(&HashMap::new(), &maps(1000), None);
        assert_eq!(j.dropped, None);
        assert!(j.takes.values().all(|t| *t == Take::Fresh(None)));
    }

    #[test]
    fn a_resized_flow_table_is_migrated() {
        let j = judge(&pinned_of(&maps(1000)), &maps(4000), Some(LAYOUT_VERSION));
        assert_eq!(j.dropped, None);
        assert_eq!(
            j.takes[names::FLOWS4],
            Take::Migrate {
                from: 1000,
                to: 4000
            }
        );
        assert!(j.adopts(names::PERSIST4) && j.adopts(names::BACKENDS));
    }

    #[test]
    fn a_flow_table_of_another_layout_is_dropped_alone() {
        let mut pinned = maps(1000);
        pinned.insert(names::FLOWS6, shape(LRU, 40, 24, 1000));
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert_eq!(j.dropped, None);
        let Take::Fresh(Some(why)) = &j.takes[names::FLOWS6] else {
            panic!("{:?}", j.takes[names::FLOWS6])
        };
        assert!(
            why.contains("value 24") && why.contains("value 16"),
            "{why}"
        );
        assert!(j.adopts(names::FLOWS4));
    }

    #[test]
    fn another_layout_version_or_planner_map_drops_everything() {
        let j = judge(
            &pinned_of(&maps(1000)),
            &maps(1000),
            Some(LAYOUT_VERSION + 1),
        );
        let why = j.dropped.expect("dropped");
        assert!(why.contains("layout version"), "{why}");
        assert!(j.takes.values().all(|t| matches!(t, Take::Fresh(Some(_)))));

        let j = judge(&pinned_of(&maps(1000)), &maps(1000), None);
        assert!(j.dropped.is_some());

        let mut pinned = maps(1000);
        pinned.insert(names::BACKENDS, shape(ARRAY, 4, 20, 40));
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert!(!j.adopts(names::FLOWS4), "flows name backends by id");
        assert!(j.dropped.unwrap().contains("BACKENDS"));

        let mut pinned = maps(1000);
        pinned.insert(names::BACKEND_KEYS, shape(ARRAY, 4, 24, 39));
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert!(j.dropped.unwrap().contains("BACKEND_KEYS"));

        let mut pinned = maps(1000);
        pinned.remove(names::RINGS);
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert!(j.dropped.unwrap().contains("RINGS is not pinned"));
    }

    #[test]
    fn counters_that_do_not_fit_start_afresh() {
        let mut pinned = maps(1000);
        pinned.insert(names::SERVICE_STATS, shape(PERCPU_ARRAY, 4, 24, 9));
        let j = judge(&pinned_of(&pinned), &maps(1000), Some(LAYOUT_VERSION));
        assert_eq!(j.dropped, None);
        assert!(matches!(
            j.takes[names::SERVICE_STATS],
            Take::Fresh(Some(_))
        ));
        assert!(j.adopts(names::BACKEND_STATS));
    }
}
