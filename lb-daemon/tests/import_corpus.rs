//! The keepalived importer against two corpora in `tests/keepalived/`:
//!
//! * `good/NAME.conf`, keepalived configurations written for these tests that together use
//!   every keyword lb-daemon supports (checked against [`keywords::SUPPORTED`]), each with
//!   `good/NAME.toml`, the lb-daemon configuration it means, written by hand. Importing
//!   `NAME.conf`, writing the TOML and loading it back with [`Config::load`] must give the same
//!   model as loading `NAME.toml`. What lb-daemon does not support must be listed exactly as
//!   the file's `# expect-unsupported: LINE:COLUMN WORD` lines say (none when there are none).
//! * `bad/NAME.conf`, one defect each: the import must fail with an error that starts with the
//!   file's path (or names the included file) and contains each `# expect:` text, which gives
//!   the line and column.
use std::{
    fs,
    path::{Path, PathBuf},
};

use lb_daemon::{
    config::Config,
    import::{self, keywords, parse::Stmt, Options},
};

/// Fewer files than this means a corpus went missing, not that everything passed.
const MIN_GOOD: usize = 10;
const MIN_BAD: usize = 30;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keepalived")
        .join(name)
}

/// The `.conf` files directly in a corpus directory, sorted.
fn cases(name: &str) -> Vec<PathBuf> {
    let d = dir(name);
    let mut files: Vec<PathBuf> = fs::read_dir(&d)
        .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    files
}

fn header_values(file: &Path, prefix: &str) -> Vec<String> {
    fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .lines()
        .take_while(|l| l.starts_with('#') || l.starts_with('!'))
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|s| s.trim().to_string())
        .collect()
}

/// A loaded configuration without what depends on where and how it was written: its file
/// name, and the line numbers of its scripts.
fn model(mut c: Config) -> Config {
    c.file = PathBuf::new();
    for s in &mut c.scripts {
        s.line = 0;
    }
    c.scripts
        .sort_by(|a, b| (&a.key, &a.program).cmp(&(&b.key, &b.program)));
    c
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lb-import-{tag}-{}", std::process::id()));
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn good_corpus_round_trips() {
    let files = cases("good");
    assert!(files.len() >= MIN_GOOD, "{} good cases", files.len());
    let out = scratch("good");
    let mut failures = Vec::new();
    for conf in &files {
        let expected_toml = conf.with_extension("toml");
        let result = (|| -> Result<(), String> {
            let import =
                import::import_file(conf, &Options::default()).map_err(|e| e.to_string())?;
            let want: Vec<String> = header_values(conf, "# expect-unsupported:");
            let got: Vec<String> = import
                .unsupported
                .iter()
                .map(|u| format!("{}:{}", u.location.line, u.location.column))
                .collect();
            let want_at: Vec<String> = want
                .iter()
                .map(|w| w.split_whitespace().next().unwrap_or("").to_string())
                .collect();
            if got != want_at {
                return Err(format!(
                    "unsupported at {got:?}, expected {want_at:?}:\n{}",
                    import
                        .unsupported
                        .iter()
                        .map(|u| format!("    {u}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
            for (w, u) in want.iter().zip(&import.unsupported) {
                let word = w.split_whitespace().nth(1).unwrap_or("");
                if !u.written.contains(word) {
                    return Err(format!("{u}: expected it to be about {word}"));
                }
            }
            // The round trip: write the TOML, read it back as `lb-daemon check` does.
            let written = out.join(conf.file_name().unwrap()).with_extension("toml");
            fs::write(&written, &import.toml).unwrap();
            let loaded = Config::load(&written).map_err(|e| format!("{e}\n{}", import.toml))?;
            let expected = Config::load(&expected_toml).map_err(|e| e.to_string())?;
            if model(loaded.clone()) != model(expected.clone()) {
                return Err(format!(
                    "the imported model differs from {}:\n--- imported TOML ---\n{}\n--- imported ---\n{:#?}\n--- expected ---\n{:#?}",
                    expected_toml.display(),
                    import.toml,
                    model(loaded),
                    model(expected)
                ));
            }
            // The importer's own check of its output is the same load.
            if model(import.config) != model(loaded) {
                return Err("the importer's model differs from the loaded TOML's".into());
            }
            // Deterministic: the same input gives the same text.
            let again =
                import::import_file(conf, &Options::default()).map_err(|e| e.to_string())?;
            if again.toml != import.toml {
                return Err("a second import gave different text".into());
            }
            Ok(())
        })();
        if let Err(e) = result {
            failures.push(format!("{}: {e}", conf.display()));
        }
    }
    fs::remove_dir_all(&out).ok();
    assert!(
        failures.is_empty(),
        "{} of {} good cases failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// Every (block, keyword) of the statements in `stmts`.
fn collect(stmts: &[Stmt], block: &str, out: &mut Vec<(String, String)>) {
    // Blocks whose contents are keywords; the others (virtual_ipaddress...) hold values.
    const KEYWORD_BLOCKS: [&str; 20] = [
        "global_defs",
        "vrrp_script",
        "vrrp_sync_group",
        "vrrp_instance",
        "authentication",
        "virtual_server",
        "real_server",
        "TCP_CHECK",
        "HTTP_GET",
        "MISC_CHECK",
        "SSL_GET",
        "DNS_CHECK",
        "UDP_CHECK",
        "PING_CHECK",
        "SMTP_CHECK",
        "FILE_CHECK",
        "SSL",
        "track_file",
        "vrrp_track_process",
        "url",
    ];
    for s in stmts {
        let kw = s.keyword().text.clone();
        out.push((block.to_string(), kw.clone()));
        if let Some(b) = &s.block {
            if KEYWORD_BLOCKS.contains(&kw.as_str()) {
                collect(&b.body, &kw, out);
            }
        }
    }
}

fn all_files(d: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else if p.extension().is_none_or(|x| x != "toml") {
            out.push(p);
        }
    }
}

#[test]
fn good_corpus_uses_every_supported_keyword() {
    let mut files = Vec::new();
    all_files(&dir("good"), &mut files);
    let mut used = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let tree = import::parse_text(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        // An included fragment (`rs.part`) is read inside a virtual_server.
        let block = if f.extension().is_some_and(|x| x == "part") {
            "virtual_server"
        } else {
            "top level"
        };
        collect(&tree.body, block, &mut used);
    }
    let mut missing = Vec::new();
    for (block, keywords) in keywords::SUPPORTED {
        for kw in *keywords {
            if !used.iter().any(|(b, k)| b == block && k == kw) {
                missing.push(format!("{block}: {kw}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "supported keywords the good corpus never uses:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn bad_corpus_fails_with_its_positions() {
    let files = cases("bad");
    assert!(files.len() >= MIN_BAD, "{} bad cases", files.len());
    let mut failures = Vec::new();
    for conf in &files {
        let want = header_values(conf, "# expect:");
        if want.is_empty() {
            failures.push(format!("{}: no `# expect:` line", conf.display()));
            continue;
        }
        let error = match import::import_file(conf, &Options::default()) {
            Ok(i) => {
                failures.push(format!(
                    "{}: imported, expected an error containing {want:?}:\n{}",
                    conf.display(),
                    i.toml
                ));
                continue;
            }
            Err(e) => e.to_string(),
        };
        // The error names a file of the corpus, a line and a column.
        let path = conf.display().to_string();
        let names_a_file = error.starts_with(&path)
            || want.iter().any(|w| {
                error.starts_with(
                    &dir("bad")
                        .join(w.split(':').next().unwrap())
                        .display()
                        .to_string(),
                )
            });
        if !names_a_file {
            failures.push(format!(
                "{}: the error does not start with the file's path\n    actual:   {error}",
                conf.display()
            ));
        }
        for w in &want {
            if !error.contains(w.as_str()) {
                failures.push(format!(
                    "{}:\n    expected: {w}\n    actual:   {error}",
                    conf.display()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad cases failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// `--interface` settles which interface XDP runs on when the VIPs are on several.
#[test]
fn interface_option_chooses_the_dataplane_interface() {
    let conf = dir("bad").join("38-vips-on-two-interfaces.conf");
    assert!(import::import_file(&conf, &Options::default()).is_err());
    let opts = Options {
        interface: Some("eth1".into()),
        ..Default::default()
    };
    let import = import::import_file(&conf, &opts).unwrap();
    assert_eq!(import.config.dataplane.unwrap().interface, "eth1");
    assert!(
        import.toml.contains("# given with --interface"),
        "{}",
        import.toml
    );
}

/// `virtual_server fwmark N`: with `--fwmark N=...` saying what the firewall marks, one
/// service of those addresses and ports (one persistence table, as the mark gave); without
/// it, listed as unsupported with what it needs. A group's `fwmark N` entry likewise.
#[test]
fn fwmark_services_become_groups() {
    let text = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n priority 100\n\
                virtual_ipaddress {\n  192.0.2.100\n }\n}\n\
                virtual_server fwmark 1 {\n lb_algo rr\n lb_kind DR\n persistence_timeout 900\n\
                real_server 198.51.100.11 {\n }\n}\n\
                virtual_server_group mixed {\n fwmark 2\n 192.0.2.100 8080\n}\n\
                virtual_server group mixed {\n lb_algo rr\n lb_kind DR\n protocol UDP\n\
                real_server 198.51.100.12 {\n }\n}\n";
    let file = Path::new("fw.conf");
    let opts = Options {
        fwmarks: import::parse_fwmarks(&[
            "1=192.0.2.100 80, 192.0.2.100 443".to_string(),
            "2=192.0.2.100 53".to_string(),
        ])
        .unwrap(),
        ..Default::default()
    };
    let import = import::import_str(file, text, &opts).unwrap();
    assert!(import.unsupported.is_empty(), "{:?}", import.unsupported);
    let [tcp, udp] = &import.config.virtual_servers[..] else {
        panic!("{:#?}", import.config.virtual_servers)
    };
    let addrs = |vs: &lb_daemon::config::VirtualServer| -> Vec<String> {
        vs.addresses().map(|(a, p)| format!("{a} {p}")).collect()
    };
    assert_eq!(addrs(tcp), ["192.0.2.100 80", "192.0.2.100 443"]);
    assert_eq!(
        tcp.proto,
        lb_daemon::model::Proto::Tcp,
        "an fwmark service: TCP"
    );
    assert_eq!(udp.proto, lb_daemon::model::Proto::Udp);
    assert_eq!(tcp.persistence_timeout, 900);
    assert_eq!(addrs(udp), ["192.0.2.100 53", "192.0.2.100 8080"]);
    // Without the marks' meaning: the service is listed with what it needs; the group
    // entry is an error that says the same.
    let e = import::import_str(file, text, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fw.conf:17:2: `virtual_server_group`: lb-daemon has no firewall marks"),
        "{e}"
    );
    let only_service = &text[..text.find("virtual_server_group").unwrap()];
    let listed = import::import_str(file, only_service, &Options::default()).unwrap();
    assert_eq!(listed.unsupported.len(), 1);
    assert!(
        listed.unsupported[0].reason.contains("--fwmark '1="),
        "{:?}",
        listed.unsupported
    );
    assert!(listed.config.virtual_servers.is_empty());
    // A bad --fwmark is refused before anything is read.
    for bad in ["1", "x=192.0.2.1 80", "1=192.0.2.1 http", "1=fwmark 2"] {
        assert!(import::parse_fwmarks(&[bad.to_string()]).is_err(), "{bad}");
    }
}
