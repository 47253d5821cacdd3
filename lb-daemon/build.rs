//! Embeds the eBPF objects so that a deployment is one binary: the XDP program and the
//! virtual MAC interfaces' filter, built side by side. `cargo xtask build-ebpf` (which
//! `cargo xtask test|bench|lab` run first) builds them; LB_EBPF_OBJECT points elsewhere (the
//! filter is then taken from the same directory unless LB_VMAC_OBJECT names it).
use std::path::{Path, PathBuf};

fn embed(var: &str, obj: &Path) {
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.is_file() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (or set LB_EBPF_OBJECT to a built object)",
            obj.display()
        );
    }
    let obj = obj
        .canonicalize()
        .expect("canonical path of an eBPF object");
    println!("cargo:rustc-env={var}={}", obj.display());
}

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=LB_VMAC_OBJECT");
    let obj = match std::env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/lb"),
    };
    embed("LB_EBPF_OBJECT", &obj);
    let vmac = match std::env::var_os("LB_VMAC_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => obj.with_file_name("vmac"),
    };
    embed("LB_VMAC_OBJECT", &vmac);
}
