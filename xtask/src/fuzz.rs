//! `cargo xtask fuzz [TARGET] [--time S]`: builds every fuzz target (`fuzz/`, cargo-fuzz with
//! the rustup nightly toolchain and libFuzzer) in one `cargo fuzz build`, then runs one target
//! or each of them for S seconds, starting from its seeds (written by the target itself, see
//! `fuzz/src/seeds.rs`), what earlier runs found (`fuzz/corpus/`, not committed) and the
//! committed crashes of the past (`fuzz/regressions/<target>/`). Fails if any target finds a
//! crash, a hang or runaway memory, and names the file that reproduces it.
use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{root, run, setup};

/// libFuzzer's limits: a unit slower than this is a hang, more memory than this a leak or a
/// blow-up (hostile input must neither hang nor exhaust the daemon).
const TIMEOUT_S: u32 = 10;
const RSS_LIMIT_MB: u32 = 2048;

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// The targets: the files of `fuzz/fuzz_targets/`.
fn targets() -> Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut out: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    out.sort();
    Ok(out)
}

fn nightly() -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly"]);
    // We run under rustup's stable cargo: its variables would pick the wrong compiler.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c.current_dir(root());
    c
}

/// What is missing to build the targets, if anything.
fn missing() -> Vec<&'static str> {
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut out = Vec::new();
    if !ok(nightly().args(["rustc", "--version"])) {
        out.push("the rustup nightly toolchain (`rustup toolchain install nightly`)");
    }
    if !ok(nightly().args(["cargo", "fuzz", "--version"])) {
        out.push("cargo-fuzz (`cargo install cargo-fuzz --locked`)");
    }
    if !ok(Command::new("c++").arg("--version")) {
        out.push("a C++ compiler for libFuzzer (`apt-get install g++`)");
    }
    out
}

pub fn fuzz(target: Option<String>, secs: u32) -> Result<()> {
    let all = targets()?;
    let chosen = match target {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; there are: {}", all.join(", ")),
        None => all,
    };
    if !missing().is_empty() {
        setup("fuzz")?;
        let still = missing();
        if !still.is_empty() {
            bail!(
                "cannot build the fuzz targets, missing:\n  - {}\n(`sudo bash scripts/setup.sh fuzz` installs them)",
                still.join("\n  - ")
            );
        }
    }
    // lb-daemon embeds the XDP object (its build script wants it), even where no target
    // runs it.
    crate::ebpf::build()?;
    // One build for all: they share everything but their few lines. No sanitizer: the
    // parsers are safe Rust, and without one a target runs several times faster; overflow
    // checks and debug assertions are on (fuzz/Cargo.toml).
    run(nightly().args(["cargo", "fuzz", "build", "--sanitizer", "none"]))
        .context("building the fuzz targets")?;

    let bin_dir = fuzz_dir().join("target/x86_64-unknown-linux-gnu/release");
    // Two targets at a time on two cores or more: each is one process on one core.
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let mut queue: VecDeque<String> = chosen.into();
    let mut running: Vec<(String, Child, PathBuf)> = Vec::new();
    let mut failed: Vec<(String, Vec<PathBuf>, PathBuf)> = Vec::new();
    println!("fuzzing {} target(s), {secs} s each", queue.len());
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < parallel {
            let Some(t) = queue.pop_front() else {
                break;
            };
            let (child, log) = start(&bin_dir, &t, secs)?;
            running.push((t, child, log));
        }
        // Wait for the oldest; the others run meanwhile.
        let (t, mut child, log) = running.remove(0);
        let status = child.wait().with_context(|| format!("waiting for {t}"))?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let summary = text
            .lines()
            .rev()
            .find(|l| l.starts_with("Done ") || l.starts_with("stat::number_of_executed_units"))
            .unwrap_or("");
        if status.success() {
            println!("  {t:<16} ok   {summary}");
        } else {
            let crashes = written_units(&text);
            println!("  {t:<16} FAILED ({status})");
            for c in &crashes {
                println!("    reproduces: {}", c.display());
            }
            failed.push((t, crashes, log));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut msg = String::new();
    for (t, crashes, log) in &failed {
        msg.push_str(&format!("\n  {t} (log: {})", log.display()));
        for c in crashes {
            msg.push_str(&format!(
                "\n    crash file: {}\n    replay: {} {}",
                c.display(),
                bin_dir.join(t).display(),
                c.display()
            ));
        }
    }
    bail!(
        "{} fuzz target(s) failed:{msg}\nFix the parser, then keep the input as a regression: \
         copy the file into fuzz/regressions/<target>/ (lb-daemon's tests/fuzz_regressions.rs \
         replays them with every `cargo test`).",
        failed.len()
    )
}

/// Starts one target in the background; its output goes to a log file.
fn start(bin_dir: &Path, target: &str, secs: u32) -> Result<(Child, PathBuf)> {
    let dir = fuzz_dir();
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(target);
    let regressions = dir.join("regressions").join(target);
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = artifacts.join("fuzz.log");
    let dict = artifacts.join("dict");
    let mut c = Command::new(bin_dir.join(target));
    c.env("LB_FUZZ_SEEDS", &corpus)
        .env("LB_FUZZ_DICT", &dict)
        .current_dir(&dir)
        .arg(&corpus);
    if regressions.is_dir() {
        c.arg(&regressions);
    }
    c.arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    // The target writes its dictionary at start-up, before libFuzzer reads it.
    c.arg(format!("-dict={}", dict.display()));
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    c.stdout(out.try_clone()?).stderr(out);
    let child = c
        .spawn()
        .with_context(|| format!("starting {}", bin_dir.join(target).display()))?;
    Ok((child, log))
}

/// The inputs libFuzzer saved because they failed ("Test unit written to PATH").
fn written_units(log: &str) -> Vec<PathBuf> {
    log.lines()
        .filter_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
        .map(PathBuf::from)
        .collect()
}
