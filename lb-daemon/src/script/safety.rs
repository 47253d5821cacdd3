//! keepalived's `enable_script_security`: what the daemon runs as root must not be
//! replaceable by anyone else.
use std::path::{Path, PathBuf};

/// A script that can run at all: an executable file.
pub fn check_runnable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not executable", path.display()));
    }
    Ok(())
}

/// keepalived's `enable_script_security`: a script, or a directory above it, that someone other
/// than root can write to could be replaced by that someone and then run as root.
pub fn check_safety(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    check_runnable(path)?;
    let mut p: PathBuf = path.to_path_buf();
    loop {
        let m = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root",
                p.display(),
                m.uid()
            ));
        }
        // Group- or world-writable; a sticky directory (like /tmp) still lets others replace
        // their own files in it, so it is refused too.
        if m.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by users other than root (mode {:o})",
                p.display(),
                m.mode() & 0o7777
            ));
        }
        if !p.pop() || p.as_os_str().is_empty() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_safety() {
        let dir = std::env::temp_dir().join(format!("lbscript{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.join("check.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // /tmp itself is world-writable (sticky): refused, as keepalived does.
        let e = check_safety(&script).unwrap_err();
        assert!(e.contains("writable by users other than root"), "{e}");
        if unsafe { libc::geteuid() } == 0 {
            assert!(check_safety(Path::new("/bin/true")).is_ok());
        }
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_safety(&script)
            .unwrap_err()
            .contains("not executable"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
