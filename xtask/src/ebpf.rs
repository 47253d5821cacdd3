//! Building the XDP object. `bpfel-unknown-none` has no prebuilt `core`, so the build needs
//! a compiler with the library sources (`-Z build-std=core`) and `bpf-linker`.
//!
//! Preference order: a rustup nightly that has `rust-src`; else Debian's `rustc-web` with
//! `rust-web-src` (rustc 1.96, unlocked for `-Z` with RUSTC_BOOTSTRAP).
//! When neither is there and we are root, `scripts/setup.sh build` installs the Debian one.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{root, run, setup};

const TARGET: &str = "bpfel-unknown-none";

enum Toolchain {
    RustupNightly,
    Debian,
}

fn nightly_has_rust_src() -> bool {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let sysroot = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        }
        _ => false,
    }
}

fn debian_toolchain() -> bool {
    Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir()
}

fn bpf_linker() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home.map(|h| h.join(".cargo/bin")));
    candidates
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

fn detect() -> Result<(Toolchain, PathBuf)> {
    let tc = if nightly_has_rust_src() {
        Some(Toolchain::RustupNightly)
    } else if debian_toolchain() {
        Some(Toolchain::Debian)
    } else {
        None
    };
    match (tc, bpf_linker()) {
        (Some(tc), Some(linker)) => Ok((tc, linker)),
        (tc, linker) => {
            let mut missing = Vec::new();
            if tc.is_none() {
                missing.push(
                    "a Rust compiler with the core library sources: Debian's rustc-web, \
                     rust-web-src and cargo-web (apt-get install rustc-web rust-web-src cargo-web), \
                     or `rustup component add rust-src --toolchain nightly`",
                );
            }
            if linker.is_none() {
                missing.push(
                    "bpf-linker: `apt-get install llvm-22-dev` then `LLVM_PREFIX=/usr/lib/llvm-22 \
                     cargo install bpf-linker@0.13.0 --no-default-features --features llvm-22`",
                );
            }
            bail!(
                "cannot build the eBPF object, missing:\n  - {}\n(`sudo bash scripts/setup.sh build` installs both)",
                missing.join("\n  - ")
            )
        }
    }
}

/// Builds the object and returns its path.
pub fn build() -> Result<PathBuf> {
    build_in("target/ebpf", &[])
}

/// Builds the `upgrade-test` variant of the object (see lb-ebpf's Cargo.toml) and returns its
/// path.
pub fn build_variant() -> Result<PathBuf> {
    build_in("target/ebpf-variant", &["--features", "upgrade-test"])
}

fn build_in(dir: &str, extra: &[&str]) -> Result<PathBuf> {
    let (tc, linker) = match detect() {
        Ok(found) => found,
        Err(e) => {
            eprintln!("xtask: {e:#}\nxtask: trying to install it");
            setup("build")?;
            detect()?
        }
    };
    let root = root();
    let target_dir = root.join(dir);
    let mut cmd = match tc {
        Toolchain::RustupNightly => {
            let mut c = Command::new("cargo");
            c.arg("+nightly");
            c
        }
        Toolchain::Debian => {
            let mut c = Command::new("/usr/bin/cargo");
            c.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
            c
        }
    };
    // We run under rustup's cargo: its variables would pick the wrong compiler.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    let mut path =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect::<Vec<_>>();
    if let Some(dir) = linker.parent() {
        path.insert(0, dir.to_path_buf());
    }
    cmd.env("PATH", std::env::join_paths(path)?)
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(root.join("lb-ebpf"))
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .args(extra);
    run(&mut cmd).context("building lb-ebpf")?;
    let obj = target_dir.join(TARGET).join("release/lb");
    if !obj.is_file() {
        bail!("the eBPF build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}
