//! What a VRRP instance leaves for the next run of the daemon: whether it was master, and,
//! as the record's modification time, when it last advertised as one. A run that starts
//! while that is fresh (a `keep` stop, or a crash restarted at once) resumes as master
//! ([`super::fsm::Input::Resume`]) before the peers' Master_Down timers expire, so nothing
//! moves; otherwise it starts over as the RFC says.
//!
//! One small file per instance under /run (a tmpfs: nothing survives a reboot, which
//! is right), named by the network namespace's id, since /run is shared by every namespace.
//! The state is written on each role change (atomically, by rename); an advert only
//! touches the file's time, one system call.
use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

/// Where the records live unless told otherwise.
pub const DEFAULT_DIR: &str = "/run/lb-daemon";

/// How long after its last advert a master may resume: the peers' Master_Down timers run
/// 3 x Master_Adver_Interval + skew (a few ms for a high-priority peer) from that advert,
/// and the resumed master's advert must reach them first; half an interval is kept for that.
pub fn resume_window(advert_interval: Duration) -> Duration {
    advert_interval * 5 / 2
}

/// Whether an instance whose record says `master` and was last touched at `last` may
/// resume at `now` (pure).
pub fn resumable(
    master: bool,
    last: SystemTime,
    now: SystemTime,
    advert_interval: Duration,
) -> bool {
    master
        && now
            .duration_since(last)
            .is_ok_and(|age| age < resume_window(advert_interval))
}

/// One instance's record.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    /// Open while the record says master: what each advert touches.
    file: Option<File>,
}

impl Record {
    /// The record of `instance` in network namespace `netns`, under `dir`.
    pub fn new(dir: &Path, netns: &str, instance: &str) -> Record {
        Record {
            path: dir.join(format!(
                "vrrp-{netns}-{}.state",
                crate::os::file_name_part(instance)
            )),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the previous run left: master or not, and when it last advertised (none when
    /// there is no record, or one this daemon did not write).
    pub fn read(&self) -> Option<(bool, SystemTime)> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let master = match text.trim() {
            "master" => true,
            "backup" => false,
            _ => return None,
        };
        let at = std::fs::metadata(&self.path).ok()?.modified().ok()?;
        Some((master, at))
    }

    /// Records the role (master: touched by every advert from now on).
    pub fn set(&mut self, master: bool) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, if master { "master\n" } else { "backup\n" })?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = if master {
            Some(File::options().write(true).open(&self.path)?)
        } else {
            None
        };
        Ok(())
    }

    /// A master advertised now.
    pub fn advertised(&self) -> io::Result<()> {
        match &self.file {
            Some(f) => f.set_modified(SystemTime::now()),
            None => Ok(()),
        }
    }

    /// No record (a `release` stop: the next run starts over).
    pub fn remove(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_master_resumes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let adv = Duration::from_secs(1);
        assert!(resumable(true, t0, t0 + Duration::from_millis(2400), adv));
        assert!(
            !resumable(true, t0, t0 + Duration::from_millis(2500), adv),
            "too close to the peers' Master_Down_Interval"
        );
        assert!(!resumable(false, t0, t0, adv), "a backup starts over");
        // A record from the future (the clock was stepped back): start over.
        assert!(!resumable(true, t0 + Duration::from_secs(5), t0, adv));
        let fast = Duration::from_millis(100);
        assert!(!resumable(true, t0, t0 + Duration::from_millis(250), fast));
    }

    #[test]
    fn a_record_says_what_was_set_and_when_it_last_advertised() {
        let dir = std::env::temp_dir().join(format!("lb-vrrp-record-{}", std::process::id()));
        let mut r = Record::new(&dir, "4097", "VI_1/../x");
        assert!(r.path().starts_with(&dir));
        assert!(!r
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains('/'));
        assert_eq!(r.read(), None);
        r.set(true).unwrap();
        let (master, at) = r.read().unwrap();
        assert!(master);
        std::thread::sleep(Duration::from_millis(20));
        r.advertised().unwrap();
        let (_, later) = r.read().unwrap();
        assert!(later > at, "an advert moves the time");
        r.set(false).unwrap();
        assert_eq!(r.read().map(|(m, _)| m), Some(false));
        r.advertised().unwrap();
        r.remove();
        assert_eq!(r.read(), None);
        std::fs::write(r.path(), "garbage").unwrap();
        assert_eq!(r.read(), None, "not ours: no resume");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
