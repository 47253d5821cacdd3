//! Embeds the XDP object so that a deployment is one binary. `cargo xtask build-ebpf` (which
//! `cargo xtask test|bench|lab` run first) builds it; LB_EBPF_OBJECT points elsewhere.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let obj = match std::env::var_os("LB_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/lb"),
    };
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.is_file() {
        panic!(
            "the XDP object {} is missing: run `cargo xtask build-ebpf` first \
             (or set LB_EBPF_OBJECT to a built object)",
            obj.display()
        );
    }
    let obj = obj
        .canonicalize()
        .expect("canonical path of the XDP object");
    println!("cargo:rustc-env=LB_EBPF_OBJECT={}", obj.display());
}
