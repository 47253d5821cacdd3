//! Project chores that do not belong in build scripts: building the XDP object, the test
//! run, fuzzing, benchmarks and the lab.
mod ebpf;
mod fuzz;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lb project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the XDP object (installs the eBPF toolchain first if it is missing and we are root).
    BuildEbpf,
    /// Install what the tests need, build everything and run every test.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks: `dataplane` (XDP per-packet cost), `vrrp` (failover against keepalived),
    /// `daemon` (health verdict to the maps, detection against keepalived's formula, reloads,
    /// a node lost behind ECMP),
    /// `sync` (connection sync: lag, sender throughput, bytes per flow) or `scale` (start-up,
    /// a one-weight reload and status with 10,000 services; LB_BENCH_SCALE_SERVICES=N).
    Bench {
        /// Which benchmark.
        which: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fuzz the parsers of outside input (cargo-fuzz, libFuzzer, the nightly toolchain): one
    /// target, or each in turn. Fails, naming the input, if one finds a crash.
    Fuzz {
        /// One target (a file of fuzz/fuzz_targets/); all of them without it.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 20)]
        time: u32,
    },
    /// The demo, in namespaces: the seed's two deployments (a VRRP pair of lb-daemons in DR
    /// mode in front of three nginx real servers, then the nginx HA pair), failovers included;
    /// `--scenario ecmp`: three active-active lb-daemons announcing the VIP over BGP (BIRD)
    /// to an ECMP router, one of them killed and restarted.
    Lab {
        /// Extra arguments for the lab binary (see `--help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// The whole set-up a fresh machine needs for the tests, the lab and the benchmarks.
fn setup(what: &str) -> Result<()> {
    if unsafe { libc_geteuid() } != 0 {
        eprintln!(
            "xtask: not root, skipping `scripts/setup.sh {what}`; install its packages by hand"
        );
        return Ok(());
    }
    run(Command::new("bash")
        .arg(root().join("scripts/setup.sh"))
        .arg(what))
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The namespace tests and the lab run the real `lb-daemon` binary.
fn build_daemon() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "lb-daemon", "--bins"]))
}

/// What the tests, the benchmarks and the lab all need: the packages, the XDP object, and
/// the daemon's binary.
fn prepare() -> Result<()> {
    setup("test")?;
    ebpf::build()?;
    build_daemon()
}

/// The upgrade test's other build: `target/variant/lb-daemon`, a daemon that embeds the
/// `upgrade-test` object. Built through the same target directory (only lb-daemon is
/// compiled again), copied aside, then the ordinary daemon is built again.
fn build_variant_daemon() -> Result<()> {
    let obj = ebpf::build_variant()?;
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "lb-daemon",
            "--bin",
            "lb-daemon",
        ])
        .env("LB_EBPF_OBJECT", &obj))?;
    let dir = root().join("target/variant");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        root().join("target/release/lb-daemon"),
        dir.join("lb-daemon"),
    )
    .context("copying the variant daemon")?;
    build_daemon()
}

/// `cargo run` of one of the `lb-tests` binaries (`lb-bench`, `lb-lab`); arguments follow.
fn tests_bin(bin: &str) -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        bin,
        "--",
    ]);
    c
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf => {
            let obj = ebpf::build()?;
            println!("{}", obj.display());
        }
        Cmd::Test { args } => {
            prepare()?;
            build_variant_daemon()?;
            // Privileged tests (namespaces, XDP) fail instead of skipping under CI.
            let mut c = cargo();
            c.args(["test", "--workspace", "--release"]).args(&args);
            if std::env::var_os("CI").is_some() {
                c.env("LB_REQUIRE_PRIVILEGED", "1");
            }
            run(&mut c)?;
        }
        Cmd::Bench { which, json } => {
            prepare()?;
            let mut args = vec![which];
            if json {
                args.push("--json".into());
            }
            run(tests_bin("lb-bench").args(&args))?;
        }
        Cmd::Fuzz { target, time } => fuzz::fuzz(target, time)?,
        Cmd::Lab { args } => {
            prepare()?;
            run(tests_bin("lb-lab").args(&args))?;
        }
    }
    Ok(())
}
