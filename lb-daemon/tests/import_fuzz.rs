//! Hostile input never panics the importer: random bytes, random soups of keepalived's tokens,
//! and the corpus files with random edits all end in an import or an error with a position.
//!
//! A seeded xorshift generator rather than a fuzzing crate: reproducible without a new
//! dependency, and fast enough to run with every `cargo test` (a few seconds in all). A
//! failure prints the seed and the input.
use std::{
    fs,
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
};

use lb_daemon::import::{self, ImportError, Options};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Imports `text`; an error must say where (a file, a line and a column) or be the input's
/// own file being unreadable. Panics (with the input) if the importer panics.
fn survive(seed: u64, text: &str) {
    let name = Path::new("fuzz.conf");
    let result = catch_unwind(AssertUnwindSafe(|| {
        import::import_str(name, text, &Options::default())
    }));
    match result {
        Err(_) => panic!("seed {seed}: the importer panicked on {text:?}"),
        Ok(Ok(import)) => {
            // What it wrote loads (the importer checked it), and says what it left out.
            for u in &import.unsupported {
                assert!(u.location.line >= 1, "seed {seed}: {u}");
            }
        }
        Ok(Err(ImportError::Several(all))) => {
            assert!(all.len() >= 2, "seed {seed}: {all:?}");
            all.iter().for_each(|e| positioned(seed, text, e));
        }
        Ok(Err(e)) => positioned(seed, text, &e),
    }
}

fn positioned(seed: u64, text: &str, e: &ImportError) {
    match e {
        ImportError::At { line, column, .. } => {
            assert!(*line >= 1 && *column >= 1, "seed {seed}: {text:?}");
        }
        e => panic!("seed {seed}: an error without a position: {e}\n{text:?}"),
    }
}

#[rustfmt::skip]
const TOKENS: &[&str] = &[
    // Quotes mostly in pairs: a lone one ends the line's lexing, so it is rare here.
    "{", "}", "{", "}", "\n", "\n", "\n", " ", " ", "\t", "#", "!", "\"a b\"", "'c d'",
    "x\"y\"z", "\"\\x41\\n\"", "\\", "\\#",
    "global_defs", "vrrp_script", "vrrp_instance", "vrrp_sync_group", "virtual_server",
    "real_server", "TCP_CHECK", "HTTP_GET", "MISC_CHECK", "url", "authentication",
    "virtual_ipaddress", "unicast_peer", "track_interface", "track_script", "group",
    "state", "MASTER", "BACKUP", "interface", "eth0", "virtual_router_id", "priority",
    "advert_int", "version", "nopreempt", "preempt_delay", "auth_type", "PASS", "auth_pass",
    "weight", "reverse", "lb_algo", "rr", "sh", "wlc", "lb_kind", "DR", "NAT", "protocol", "TCP",
    "UDP", "persistence_timeout", "persistence_granularity", "sorry_server", "quorum",
    "hysteresis", "delay_loop", "retry", "nb_get_retry", "connect_timeout", "connect_port",
    "path", "status_code", "misc_path", "script", "interval", "include", "includea",
    "notify_master", "lvs_sync_daemon_inteface", "static_ipaddress", "fwmark", "sh-port",
    "dev", "label", "brd", "192.0.2.1", "192.0.2.1/24", "2001:db8::1", "1.1.1", "0", "1", "80",
    "255", "256", "-1", "0.5", "1e9", "99999999999999999999", "/bin/true", "/a b", "VI_1",
    "chk", "é", "\u{0}", "\u{7f}", "@main", "$X=1", "${_PWD}", "~SEQ(i,1,2)", "*", "?", "[",
];

fn soup(rng: &mut Rng) -> String {
    let n = rng.below(200);
    let mut s = String::new();
    for _ in 0..n {
        if rng.below(100) == 0 {
            s.push(*rng.pick(&['"', '\'']));
        }
        let t = rng.pick(TOKENS);
        s.push_str(t);
        if rng.below(3) > 0 {
            s.push(' ');
        }
    }
    s
}

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let n = rng.below(300);
    (0..n)
        .map(|_| {
            // Mostly printable, with braces, quotes and newlines common, and some raw bytes.
            match rng.below(10) {
                0 => b"{}\n\"'#!\\"[rng.below(8)],
                1 => (rng.next() & 0xff) as u8,
                _ => b' ' + (rng.below(95) as u8),
            }
        })
        .collect()
}

/// A corpus file with a few random edits: a deleted, duplicated or swapped line, a byte
/// changed, a token inserted. These get past the parser into every conversion.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(5) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(rng.below(lines.len()), l);
            }
            2 => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
            3 => {
                let t = rng.pick(TOKENS).to_string();
                let l = &mut lines[i];
                let at = (0..=l.len())
                    .filter(|k| l.is_char_boundary(*k))
                    .nth(rng.below(l.len() + 1))
                    .unwrap_or(0);
                l.insert_str(at, &t);
            }
            _ => {
                let words: Vec<&str> = lines[i].split_whitespace().collect();
                if !words.is_empty() {
                    let k = rng.below(words.len());
                    let mut w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                    w[k] = rng.pick(TOKENS).to_string();
                    lines[i] = w.join(" ");
                }
            }
        }
    }
    lines.join("\n")
}

#[test]
fn random_bytes_never_panic() {
    for seed in 1..=3000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let bytes = random_bytes(&mut rng);
        // Invalid UTF-8 goes through the file path (the importer reads bytes).
        let dir = std::env::temp_dir().join(format!("lb-import-fuzz-{}", std::process::id()));
        if seed == 1 {
            fs::create_dir_all(&dir).unwrap();
        }
        match String::from_utf8(bytes.clone()) {
            Ok(text) => survive(seed, &text),
            Err(_) => {
                let f = dir.join("bytes.conf");
                fs::write(&f, &bytes).unwrap();
                let r = catch_unwind(|| import::import_file(&f, &Options::default()));
                match r {
                    Err(_) => panic!("seed {seed}: panicked on bytes {bytes:?}"),
                    Ok(Err(ImportError::At { .. })) => {}
                    Ok(other) => panic!("seed {seed}: invalid UTF-8 gave {other:?}"),
                }
            }
        }
    }
}

#[test]
fn token_soups_never_panic() {
    for seed in 1..=5000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let text = soup(&mut rng);
        survive(seed, &text);
    }
}

#[test]
fn mutated_corpus_files_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keepalived");
    let mut texts = Vec::new();
    for sub in ["good", "seed", "bad"] {
        for e in fs::read_dir(root.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "conf") {
                texts.push(fs::read_to_string(&p).unwrap());
            }
        }
    }
    assert!(texts.len() > 20);
    for seed in 1..=4000u64 {
        let mut rng = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03) | 1);
        let base = rng.pick(&texts).clone();
        let text = mutate(&mut rng, &base);
        survive(seed, &text);
    }
}

#[test]
fn deep_nesting_and_long_lines_are_refused_or_read() {
    survive(0, &"a {".repeat(100_000));
    survive(0, &"}".repeat(100_000));
    survive(
        0,
        &format!("global_defs {{\n router_id {}\n}}\n", "x".repeat(1 << 20)),
    );
    survive(0, &"vrrp_instance VI_1 {\n".repeat(10_000));
    survive(0, &"\"".repeat(10_001));
}
