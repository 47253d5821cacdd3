//! Who scripts run as: `global_defs.script_user`, a script's own `user`, or root.
use std::{ffi::CString, io};

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
        let unknown = || UserError::Unknown {
            user: name.to_string(),
        };
        let cname = CString::new(name).map_err(|_| unknown())?;
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: passwd is plain old data; all-zero is a valid (empty) value.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call; buf outlives the use of pwd's
            // string fields (we only read the numeric ones).
            let rc = unsafe {
                libc::getpwnam_r(
                    cname.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            match rc {
                libc::ERANGE if buf.len() < 1 << 20 => {
                    let len = buf.len() * 2;
                    buf.resize(len, 0);
                }
                // getpwnam_r(3): "0 or ENOENT or ESRCH or EBADF or EPERM or ..." mean "not
                // found" depending on the libc and NSS module.
                0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM if result.is_null() => {
                    return Err(unknown())
                }
                0 => {
                    return Ok(ScriptUser {
                        name: name.to_string(),
                        uid: pwd.pw_uid,
                        gid: pwd.pw_gid,
                    })
                }
                rc => {
                    return Err(UserError::Lookup {
                        user: name.to_string(),
                        source: io::Error::from_raw_os_error(rc),
                    })
                }
            }
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
