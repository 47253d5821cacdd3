//! The fuzz targets' checks (`fuzz/src/checks.rs`) with every `cargo test`, on the stable
//! toolchain: each target's seeds (the codecs' golden vectors, the test corpora), then every
//! input a fuzzer once crashed on (`fuzz/regressions/<target>/`), so a fixed crash stays fixed.
//! `cargo xtask fuzz` runs the same checks under libFuzzer.
use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/checks.rs"]
mod checks;
#[path = "../../fuzz/src/seeds.rs"]
mod seeds;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-daemon is in the repository")
        .to_path_buf()
}

#[test]
fn every_target_has_seeds_that_pass_its_checks() {
    for t in checks::TARGETS {
        let seeds = seeds::seeds(t.name, &root());
        assert!(!seeds.is_empty(), "{} has no seeds", t.name);
        for s in &seeds {
            (t.check)(s);
        }
        assert!(
            !seeds::dict(t.name).is_empty(),
            "{} has no dictionary",
            t.name
        );
    }
}

#[test]
fn every_target_file_is_a_check() {
    let dir = root().join("fuzz/fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    files.sort();
    let mut names: Vec<&str> = checks::TARGETS.iter().map(|t| t.name).collect();
    names.sort();
    assert_eq!(files, names);
}

#[test]
fn past_crashes_pass_the_checks() {
    let dir = root().join("fuzz/regressions");
    let Ok(targets) = std::fs::read_dir(&dir) else {
        return;
    };
    for t in targets {
        let t = t.unwrap().path();
        let name = t.file_name().unwrap().to_str().unwrap().to_string();
        let check = checks::TARGETS
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{}: no such fuzz target", t.display()))
            .check;
        for f in std::fs::read_dir(&t).unwrap() {
            let f = f.unwrap().path();
            let input = std::fs::read(&f).unwrap();
            eprintln!("replaying {}", f.display());
            check(&input);
        }
    }
}

#[test]
fn seeds_and_dictionaries_are_written_once() {
    let dir = std::env::temp_dir().join(format!("lb-fuzz-seeds-{}", std::process::id()));
    for t in checks::TARGETS {
        let corpus = dir.join(t.name);
        let first = seeds::write(t.name, &corpus, &root()).unwrap();
        assert!(first > 0, "{}", t.name);
        assert_eq!(
            seeds::write(t.name, &corpus, &root()).unwrap(),
            0,
            "{}",
            t.name
        );
        let dict = dir.join(format!("{}.dict", t.name));
        seeds::write_dict(t.name, &dict).unwrap();
        let text = std::fs::read_to_string(&dict).unwrap();
        // libFuzzer's format: one quoted word a line, nothing unescaped that it would misread.
        assert!(text
            .lines()
            .all(|l| l.len() > 2 && l.starts_with('"') && l.ends_with('"')));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
