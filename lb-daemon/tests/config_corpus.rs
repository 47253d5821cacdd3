//! A corpus of bad configuration files (`tests/bad-configs/*.toml`), one defect each, with the
//! error each must produce.
//!
//! Each file starts with one or more `# expect: <text>` lines; every such text must appear in
//! the error that `lb-daemon check` would print for the file: [`Config::load`], then
//! [`Config::check_scripts`], exactly as `main.rs`'s `check` subcommand does (neither touches
//! the system). The error must also name the file.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use lb_daemon::config::Config;

/// Fewer files than this means the corpus went missing, not that everything passed.
const MIN_CASES: usize = 25;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-configs")
}

/// The corpus files, sorted by name.
fn corpus() -> Vec<PathBuf> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The `# expect:` texts of a file's leading comment block.
fn expectations(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What `lb-daemon check` does with a file, minus the printing.
fn check(file: &Path) -> anyhow::Result<Config> {
    lb_daemon::daemon::check_file(file)
}

#[test]
fn every_bad_config_fails_with_its_message() {
    let files = corpus();
    assert!(
        files.len() >= MIN_CASES,
        "{}: {} cases, expected at least {MIN_CASES}",
        corpus_dir().display(),
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let want = expectations(file);
        if want.is_empty() {
            failures.push(format!(
                "{}: no `# expect:` line at the top",
                file.display()
            ));
            continue;
        }
        let error = match check(file) {
            Ok(_) => {
                failures.push(format!(
                    "{}: accepted, expected an error containing {want:?}",
                    file.display()
                ));
                continue;
            }
            Err(e) => e.to_string(),
        };
        let path = file.display().to_string();
        if !error.starts_with(&path) {
            failures.push(format!(
                "{}: the error does not start with the file's path\n    actual:   {error}",
                file.display()
            ));
        }
        for w in &want {
            if !error.contains(w.as_str()) {
                failures.push(format!(
                    "{}:\n    expected: {w}\n    actual:   {error}",
                    file.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// A script that exists but that a user other than root could change is refused, as
/// keepalived's `enable_script_security` does. Created here, not in the corpus: it has to
/// exist with the right mode.
#[test]
fn unsafe_script_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("lb-corpus-unsafe-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("check.sh");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.join("lb.toml");
    let text = format!(
        r#"[[vrrp_script]]
name = "chk"
script = "{} --quick"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["192.0.2.10"]
track_script = ["chk"]
"#,
        script.display()
    );
    fs::write(&config, &text).unwrap();
    let loaded = Config::load(&config).expect("the file itself is fine");
    let error = lb_daemon::daemon::check_scripts(&loaded)
        .expect_err("a world-writable script must be refused")
        .to_string();
    let head = format!(
        "{}:3: `vrrp_script.script`: {}",
        config.display(),
        script.display()
    );
    // As root the file's mode is what is wrong; as another user, already its owner.
    let why = if unsafe { libc::geteuid() } == 0 {
        "is writable by users other than root (mode 777)"
    } else {
        "not root"
    };
    let ok = error.starts_with(&head) && error.contains(why);
    // The same file with enable_script_security = false is accepted.
    fs::write(
        &config,
        format!("[global_defs]\nenable_script_security = false\n\n{text}"),
    )
    .unwrap();
    let off = check(&config);
    fs::remove_dir_all(&dir).unwrap();
    assert!(ok, "expected {head:?} ... {why:?}, got: {error}");
    off.expect("enable_script_security = false skips the check");
}

/// The binary's `check` subcommand: non-zero with the message on stderr for bad files, zero
/// for the commented example (which names no scripts, so it passes without root).
#[test]
fn check_subcommand_exit_status_and_stderr() {
    let bin = env!("CARGO_BIN_EXE_lb-daemon");
    for name in [
        "17-priority-zero.toml",
        "40-missing-script.toml",
        "35-vip-owned-by-no-instance.toml",
    ] {
        let file = corpus_dir().join(name);
        let want = expectations(&file);
        assert!(!want.is_empty(), "{}: no `# expect:` line", file.display());
        let out = Command::new(bin)
            .args(["check", "--config"])
            .arg(&file)
            .env("RUST_LOG", "error")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{}: exit {}, stdout: {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&file.display().to_string()),
            "{}: stderr does not name the file: {stderr}",
            file.display()
        );
        for w in &want {
            assert!(
                stderr.contains(w.as_str()),
                "{}:\n    expected on stderr: {w}\n    stderr: {stderr}",
                file.display()
            );
        }
    }
    // A file that is not there: one clear line naming it, no backtrace even when the
    // environment asks Rust for them, and no cause repeated.
    let missing = corpus_dir().join("no-such-file.toml");
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&missing)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        format!(
            "Error: {}: cannot read: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lvs-dr.toml");
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: exit {}, stderr: {}",
        example.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK (1 VRRP instance, 2 virtual servers, 6 real servers)"),
        "{stdout}"
    );
    // A VRRP-only file: its instances are what it holds, not "0 virtual servers" alone.
    let dir = std::env::temp_dir().join(format!("lb-corpus-vrrp-only-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let vrrp_only = dir.join("lb.toml");
    let instance = |name: &str, vrid: u8| {
        format!(
            "[[vrrp_instance]]\nname = \"{name}\"\ninterface = \"eth0\"\nvirtual_router_id = {vrid}\n\
             priority = 100\nvirtual_ipaddress = [\"192.0.2.{vrid}\"]\n\n"
        )
    };
    fs::write(
        &vrrp_only,
        format!("{}{}", instance("VI_1", 51), instance("VI_2", 52)),
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&vrrp_only)
        .output()
        .unwrap();
    fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "exit {}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}: OK (2 VRRP instances, 0 virtual servers, 0 real servers)\n",
            vrrp_only.display()
        )
    );
}
