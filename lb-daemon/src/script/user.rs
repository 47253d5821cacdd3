//! Who scripts run as: `global_defs.script_user`, a script's own `user`, or root.
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("script user {user:?} does not exist")]
    Unknown { user: String },
    #[error("looking up script user {user:?}: {source}")]
    Lookup {
        user: String,
        #[source]
        source: io::Error,
    },
}

/// Who scripts run as. An unknown name is an error at start-up ([`ScriptUser::lookup`]),
/// never a silent fallback to root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptUser {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl ScriptUser {
    pub fn root() -> Self {
        ScriptUser {
            name: "root".into(),
            uid: 0,
            gid: 0,
        }
    }

    /// The daemon's own effective user: scripts then run without a uid/gid change (tests, or a
    /// daemon that already runs unprivileged).
    pub fn current() -> Self {
        // SAFETY: geteuid and getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        ScriptUser {
            name: format!("uid {uid}"),
            uid,
            gid,
        }
    }

    /// Resolves `name` with getpwnam_r (so NSS sources count, as for keepalived). The group is
    /// the user's primary group; supplementary groups are dropped when the uid changes (std's
    /// `Command::uid` calls `setgroups(0, NULL)`).
    pub fn lookup(name: &str) -> Result<Self, UserError> {
        match crate::os::user_ids(name) {
            Ok(Some((uid, gid))) => Ok(ScriptUser {
                name: name.to_string(),
                uid,
                gid,
            }),
            Ok(None) => Err(UserError::Unknown {
                user: name.to_string(),
            }),
            Err(source) => Err(UserError::Lookup {
                user: name.to_string(),
                source,
            }),
        }
    }

    /// `name`, or root when there is none.
    pub fn resolve(name: Option<&str>) -> Result<Self, UserError> {
        name.map_or_else(|| Ok(ScriptUser::root()), ScriptUser::lookup)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn uid(&self) -> libc::uid_t {
        self.uid
    }
    pub fn gid(&self) -> libc::gid_t {
        self.gid
    }
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert!(matches!(
            ScriptUser::lookup("lb-no-such-user-xyzzy"),
            Err(UserError::Unknown { .. })
        ));
        assert!(matches!(
            ScriptUser::lookup("bad\0name"),
            Err(UserError::Unknown { .. })
        ));
        let root = ScriptUser::lookup("root").unwrap();
        assert_eq!((root.uid(), root.gid()), (0, 0));
        assert_eq!(ScriptUser::resolve(None).unwrap(), ScriptUser::root());
    }
}
