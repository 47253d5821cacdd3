//! The importer's memory is a small multiple of what it reads, whatever the text: `lb-daemon
//! import-keepalived` on generated keepalived.conf files of 10 MB, each run in a child process
//! whose peak RSS wait4(2) reports (so the other tests of this binary cannot disturb it).
//!
//! The shapes are the costly ones: many small tokens (the 10 MB took 874 MB), one
//! block of them, comment lines, a list of addresses, and a realistic configuration of
//! virtual servers. The last is bounded by what loading the output costs (`Config::parse`,
//! whose TOML parser takes some 30 times the text it reads), not by the importer's own stages.
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const MB: usize = 1_000_000;
/// What the process costs before it reads anything, with room for the allocator's slack.
const BASE: u64 = 40 << 20;

/// xorshift64*: the same file every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Small tokens of keepalived's syntax, as a fuzzer would string them together.
const TOKENS: &[&str] = &[
    "a",
    "bb",
    "1",
    "x_y",
    "192.0.2.1",
    "\"q r\"",
    "-",
    "{",
    "}",
    "\n",
    "#c\n",
    "state",
    "MASTER",
    "weight",
    "10",
];

/// `head`, then lines from `line` until the file has `size` bytes, then `tail`.
fn generate(
    path: &Path,
    size: usize,
    head: &str,
    tail: &str,
    mut line: impl FnMut(usize) -> String,
) {
    let mut out = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut written = head.len();
    out.write_all(head.as_bytes()).unwrap();
    let mut i = 0;
    while written < size {
        let l = line(i);
        written += l.len();
        out.write_all(l.as_bytes()).unwrap();
        i += 1;
    }
    out.write_all(tail.as_bytes()).unwrap();
}

/// Runs the importer on `conf`; returns its peak RSS in bytes and whether it succeeded.
fn import_peak(conf: &Path, out: &Path) -> (u64, bool, String) {
    let err = out.with_extension("stderr");
    // Reaped by wait4 below: std's wait cannot report the child's resource usage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_lb-daemon"))
        .args(["import-keepalived", "--allow-unsupported"])
        .arg(conf)
        .arg("-o")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it in for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    // ru_maxrss is in kilobytes on Linux.
    (usage.ru_maxrss as u64 * 1024, ok, stderr)
}

struct Case {
    name: &'static str,
    /// The bound: `factor` times the input, plus [`BASE`].
    factor: u64,
    /// Whether the import succeeds (else it must fail with a clear error).
    imports: bool,
    /// A word the error must contain, when it fails.
    error: &'static str,
    make: fn(&Path),
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "tokens",
            factor: 3,
            imports: false,
            // The first misplaced brace or unknown block stops it, at its place.
            error: "keepalived.conf:1:",
            make: |p| {
                let mut rng = Rng(0x5eed_0001);
                generate(p, 10 * MB, "", "", |_| {
                    let mut l: Vec<&str> = (0..8).map(|_| rng.pick(TOKENS)).collect();
                    l.push("\n");
                    l.join(" ")
                })
            },
        },
        Case {
            name: "one block of tokens",
            factor: 3,
            imports: false,
            error: "holds more than",
            make: |p| {
                let mut rng = Rng(0x5eed_0002);
                let words: Vec<&str> = TOKENS[..8]
                    .iter()
                    .copied()
                    .filter(|t| !t.contains(['{', '}']))
                    .collect();
                generate(p, 10 * MB, "global_defs {\n", "}\n", |_| {
                    let l: Vec<&str> = (0..8).map(|_| rng.pick(&words)).collect();
                    format!(" {}\n", l.join(" "))
                })
            },
        },
        Case {
            name: "one word a line",
            factor: 3,
            imports: false,
            error: "holds more than",
            make: |p| generate(p, 10 * MB, "global_defs {\n", "}\n", |_| "a\n".to_string()),
        },
        Case {
            name: "comment lines",
            factor: 3,
            imports: true,
            error: "",
            make: |p| generate(p, 10 * MB, "", "", |i| format!("# {}\n", i % 10)),
        },
        Case {
            name: "addresses",
            factor: 3,
            imports: false,
            error: "holds more than",
            make: |p| {
                generate(
                    p,
                    10 * MB,
                    "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n virtual_ipaddress {\n",
                    " }\n}\n",
                    |i| format!("  192.0.2.{}\n", i % 250 + 1),
                )
            },
        },
        Case {
            name: "virtual servers",
            factor: 64,
            imports: true,
            error: "",
            make: |p| {
                let head = "vrrp_instance VI_1 {\n state MASTER\n interface eth0\n \
                            virtual_router_id 1\n priority 100\n virtual_ipaddress {\n  \
                            203.0.113.1\n  203.0.113.2\n }\n}\n";
                generate(p, 4 * MB, head, "", |i| {
                    let mut vs = format!(
                        "virtual_server 203.0.113.{} {} {{\n delay_loop 6\n lb_algo rr\n \
                         lb_kind DR\n protocol TCP\n",
                        i % 2 + 1,
                        i / 2 + 1
                    );
                    for r in 1..=4 {
                        vs.push_str(&format!(
                            " real_server 192.0.2.{r} {} {{\n  weight 1\n  TCP_CHECK {{\n   \
                             connect_timeout 3\n  }}\n }}\n",
                            i / 2 + 1
                        ));
                    }
                    vs.push_str("}\n");
                    vs
                })
            },
        },
    ]
}

#[test]
fn peak_memory_is_a_small_multiple_of_the_input() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("lb-import-memory-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for c in cases() {
        let conf = dir.join("keepalived.conf");
        (c.make)(&conf);
        let size = fs::metadata(&conf).unwrap().len();
        let (peak, ok, stderr) = import_peak(&conf, &dir.join("out.toml"));
        let bound = c.factor * size + BASE;
        println!(
            "{:<20} {:>5.1} MB in, peak {:>6.1} MB ({:.1}x), bound {:.0} MB",
            c.name,
            size as f64 / 1e6,
            peak as f64 / 1e6,
            peak as f64 / size as f64,
            bound as f64 / 1e6
        );
        if peak > bound {
            failures.push(format!("{}: peak {peak} > bound {bound}", c.name));
        }
        if ok != c.imports {
            failures.push(format!(
                "{}: imported {ok}, expected {}: {stderr}",
                c.name, c.imports
            ));
        }
        if !c.imports && !stderr.contains(c.error) {
            failures.push(format!(
                "{}: expected an error with {:?}: {stderr}",
                c.name, c.error
            ));
        }
    }
    fs::remove_dir_all(&dir).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The cap on what the importer reads: a larger file is refused at once, naming the file and
/// the limit, without being read whole.
#[test]
fn input_above_the_cap_is_refused_by_name() {
    let dir: PathBuf = std::env::temp_dir().join(format!("lb-import-cap-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("huge.conf");
    let cap = lb_daemon::import::MAX_INPUT_BYTES;
    generate(&conf, cap + 1, "", "", |_| "# padding\n".to_string());
    let (peak, ok, stderr) = import_peak(&conf, &dir.join("out.toml"));
    fs::remove_dir_all(&dir).unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("huge.conf") && stderr.contains(&format!("{} MiB", cap >> 20)),
        "{stderr}"
    );
    assert!(peak < (cap as u64) * 2 + BASE, "peak {peak}");
}
