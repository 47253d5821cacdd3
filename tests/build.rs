//! Embeds the trivial XDP programs (baseline, pass, drop) that `cargo xtask build-ebpf`
//! builds beside the load balancer.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LB_TESTPROGS_OBJECT");
    let obj = match std::env::var_os("LB_TESTPROGS_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/testprogs"),
    };
    println!("cargo:rerun-if-changed={}", obj.display());
    if !obj.is_file() {
        panic!(
            "the XDP object {} is missing: run `cargo xtask build-ebpf` first",
            obj.display()
        );
    }
    let obj = obj
        .canonicalize()
        .expect("canonical path of the test programs");
    println!("cargo:rustc-env=LB_TESTPROGS_OBJECT={}", obj.display());
}
