//! Fuzz targets for every parser of outside input in lb-daemon (cargo-fuzz, libFuzzer):
//! `cargo xtask fuzz [TARGET] [--time S]` builds and runs them (see `checks.rs` for what each
//! target checks, `seeds.rs` for where its seed inputs come from).
use std::path::{Path, PathBuf};

pub mod checks;
pub mod seeds;

/// The repository the fuzz crate was built in.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Run once before fuzzing (libFuzzer calls it before it reads its dictionary and corpus):
/// with `LB_FUZZ_SEEDS=DIR`, writes `target`'s seeds into DIR, and with `LB_FUZZ_DICT=FILE`
/// its dictionary into FILE.
pub fn init(target: &str) {
    if let Some(dir) = std::env::var_os("LB_FUZZ_SEEDS") {
        if let Err(e) = seeds::write(target, Path::new(&dir), &root()) {
            eprintln!("lb-fuzz: cannot write the seeds of {target}: {e}");
        }
    }
    if let Some(file) = std::env::var_os("LB_FUZZ_DICT") {
        if let Err(e) = seeds::write_dict(target, Path::new(&file)) {
            eprintln!("lb-fuzz: cannot write the dictionary of {target}: {e}");
        }
    }
}
