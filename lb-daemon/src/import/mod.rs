//! `lb-daemon import-keepalived`: a keepalived.conf (and what it includes) to lb-daemon's TOML.
//!
//! The stages, each its own module and each pure but the first:
//!
//! 1. `include`: read the file and everything it includes (globs, braces, relative to the
//!    including file), then stream its tokens in reading order (`lexer`: keepalived's comments,
//!    quotes and braces).
//! 2. `parse`: the tokens to a tree of statements and blocks, comments attached, handed on one
//!    top-level statement at a time.
//! 3. `convert`: each statement's tree into a TOML document (`emit`'s model), with keepalived's
//!    aliases (`keywords`), inheritance and defaults made explicit, and a list of what
//!    lb-daemon does not support.
//! 4. `emit`: the document to text, remembering which keepalived text each line came from.
//! 5. [`Config::parse`] on that text: the output is checked by the same code as `lb-daemon
//!    check`, and an error it finds is reported at the keepalived file, line and column of the
//!    value it is about, so ranges and cross-references are checked in one place only.
//!
//! # What is not supported
//!
//! Every keyword lb-daemon does not support is listed with its file, line and column
//! ([`Import::unsupported`]); the command refuses to write anything unless
//! `--allow-unsupported` is given, and even then the list is printed and written into the output
//! as comments. A *value* lb-daemon cannot express (a scheduler it does not have, NAT, `reverse`
//! tracking) is an error instead, since leaving it out would change what the rest means.
//!
//! # Errors
//!
//! One run reports every error the conversion finds ([`ImportError::Several`]), each at its
//! file, line and column and naming its keyword: a statement with an error is left out and
//! the next one read, and what its absence would make wrong later (an instance without the
//! `interface` that had the error, the VIPs no instance seems to hold) is not reported
//! again. Two kinds stop at their first error: the text's own (a quote or a brace that does
//! not close, an include that cannot be read), after which nothing is read reliably, and
//! those of the check of the output (step 5), which runs only on a conversion without
//! errors and stops at its first.
//!
//! # Imported, but not as written
//!
//! A few things are carried over other than as written, each with a [`Warning`] (printed,
//! and written into the output as comments) that says how; none stops the import:
//!
//! * `authentication` in a VRRPv3 instance (keepalived: "VRRP version 3 does not support
//!   authentication. Ignoring."): left out.
//! * A script, hook or `misc_path` whose program has no `/`: keepalived looks for it on its
//!   PATH; the importer looks on the PATH it is given ([`Options::search_path`]: the command
//!   gives its own) and writes the absolute path it finds, which the machine lb-daemon runs
//!   on must have too. Not found, it is an error: lb-daemon takes absolute paths only.
//! * A `vrrp_sync_group` with its members straight in the block, without `group { }` (the
//!   form keepalived's old failover case study showed): read as the `group { }` it stands
//!   for. keepalived itself takes those lines for unknown keywords and drops the group, so
//!   the warning says that the instances now fail over together.
//!
//! # keepalived's defaults that the output states
//!
//! | where | keepalived | written as |
//! |---|---|---|
//! | `vrrp_instance` without `priority` | 100, or 255 with `state MASTER` | `priority = 100` / `255` |
//! | `vrrp_instance` without `state`, priority 255 | starts as MASTER | `state = "MASTER"` |
//! | IPv6 `vrrp_instance` without `version` | always VRRPv3 | `version = 3` |
//! | `global_defs` `vrrp_garp_master_*` | the instances' default | copied to each instance |
//! | any script or hook, no `enable_script_security` | no script checks | `enable_script_security = false` |
//! | `virtual_server` without `protocol` | UDP | `protocol = "UDP"` |
//! | `persistence_timeout` without a value; `persistence_granularity` or port 0 without it | 360 s | `persistence_timeout = 360` |
//! | VIP held by no `vrrp_instance` | the service runs on every node | `static = true` |
//! | real or sorry server without a port | the service's port (in a group, each packet's) | `port = N` (0 in a group) |
//! | vs/rs `retry`, `delay_before_retry`, `warmup`, `connect_timeout`, `virtualhost`, `inhibit_on_failure`, `weight` | defaults for the real servers and their checks | copied down |
//! | `quorum` above the total weight; `hysteresis` ≥ `quorum` | lowered to the total; to `quorum - 1` | the lowered value |
//!
//! # Memory
//!
//! Nothing holds the whole token stream or the whole statement tree: a top-level statement's
//! tree lives until it is converted (and may hold at most [`parse::MAX_STATEMENT_ELEMENTS`]
//! words), so the importer's own memory is the text it read (at most [`MAX_INPUT_BYTES`]) and
//! the document it writes. Loading the output (step 5) costs what [`Config::parse`] costs.
//!
//! Where keepalived's default is one lb-daemon cannot have (no `lb_kind`: NAT), the import
//! fails with the position of the `virtual_server`. No `lb_algo` is keepalived's wlc, which
//! is lb-daemon's default too.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use crate::config::{Config, ConfigError};

mod convert;
pub mod emit;
mod include;
pub mod keywords;
pub mod lexer;
pub mod parse;
pub mod source;

pub use source::{Files, Location, MemFiles, RealFiles};
use source::{Sources, Span};

/// The most the importer reads, the configuration and what it includes together. keepalived
/// configurations are far smaller, and the importer's memory is a small multiple of what it
/// reads (the `import_memory` test holds it to that).
pub const MAX_INPUT_BYTES: usize = 16 << 20;

/// A message about a place in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diag {
    pub span: Span,
    pub message: String,
}

impl Diag {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Diag {
            span,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The top file could not be read.
    #[error("{}: {message}", file.display())]
    Read { file: PathBuf, message: String },
    /// Bad input, at its place.
    #[error("{}:{line}:{column}: {message}", file.display())]
    At {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Bad input at several places: every error of one run, in the order found.
    #[error("{}", lines(.0))]
    Several(Vec<ImportError>),
    /// The output refused by a check that names no position the importer knows (a bug).
    #[error("the imported configuration does not load: {0}")]
    Output(String),
}

fn lines(errors: &[ImportError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl ImportError {
    /// One error, or [`ImportError::Several`].
    pub(crate) fn all(sources: &Sources, mut errors: Vec<Diag>) -> Self {
        match errors.len() {
            1 => Self::at(sources, errors.remove(0)),
            _ => ImportError::Several(errors.into_iter().map(|d| Self::at(sources, d)).collect()),
        }
    }

    pub(crate) fn at(sources: &Sources, d: Diag) -> Self {
        let Location { file, line, column } = sources.locate(d.span);
        ImportError::At {
            file,
            line,
            column,
            message: d.message,
        }
    }
}

/// A keyword (or a part of one) that lb-daemon does not support.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedItem {
    pub location: Location,
    /// The block it is in: `vrrp_instance VI_1`.
    pub block: String,
    /// How it was written.
    pub written: String,
    pub reason: String,
}

/// Something keepalived accepts and the importer carries over, but not as written: what it
/// ignores, or what it would have resolved on the machine it runs on. Printed, and written
/// into the output as comments; it does not stop the import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::fmt::Display for UnsupportedItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: `{}`: {}",
            self.location, self.block, self.written, self.reason
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `[dataplane]` interface; by default the one where the virtual servers' VIPs are.
    pub interface: Option<String>,
    /// The output's name, for the messages of the check of the output.
    pub output_name: Option<PathBuf>,
    /// Where to look for a script named without a `/`, as keepalived looks on its PATH:
    /// the importing machine's PATH (the command passes it). `None`: nowhere, so such a
    /// script is an error.
    pub search_path: Option<OsString>,
    /// What keepalived's `fwmark N` services and group entries stand for: the addresses
    /// and ports the firewall marks with N (`virtual_server_group` entries), by mark.
    pub fwmarks: std::collections::BTreeMap<u32, Vec<String>>,
}

/// A successful import.
#[derive(Debug)]
pub struct Import {
    /// The TOML, with the unsupported keywords as comments.
    pub toml: String,
    pub unsupported: Vec<UnsupportedItem>,
    pub warnings: Vec<Warning>,
    /// The output, loaded.
    pub config: Config,
}

/// Imports `path` from the file system.
pub fn import_file(path: &Path, opts: &Options) -> Result<Import, ImportError> {
    import_with(&RealFiles, path, opts)
}

/// Imports keepalived text held in memory, as the file `name` (an `include` in it finds no
/// file, and fails with its position): for tests and fuzzing.
pub fn import_str(name: &Path, text: &str, opts: &Options) -> Result<Import, ImportError> {
    let mut files = MemFiles::new();
    files.add(name, text.as_bytes().to_vec());
    import_with(&files, name, opts)
}

pub fn import_with(files: &dyn Files, path: &Path, opts: &Options) -> Result<Import, ImportError> {
    let mut sources = Sources::default();
    let plan = include::load(files, path, &mut sources)?;
    let (toml, lines, unsupported, warnings) = {
        // Parsed and converted one top-level statement at a time; the document is dropped
        // once rendered, before the output is loaded.
        let mut converter = convert::Converter::new(&sources, files, opts);
        let converted = match include::stream(&plan, &sources, &mut |s| converter.statement(&s)) {
            Ok(tail) => converter.finish(&tail),
            Err(stop) => Err(converter.abort(stop)),
        }
        .map_err(|errors| ImportError::all(&sources, errors))?;
        let mut doc = converted.doc;
        let unsupported: Vec<UnsupportedItem> = converted
            .unsupported
            .iter()
            .map(|u| UnsupportedItem {
                location: sources.locate(u.span),
                block: u.block.clone(),
                written: u.written.clone(),
                reason: u.reason.clone(),
            })
            .collect();
        let warnings: Vec<Warning> = converted
            .warnings
            .into_iter()
            .map(|d| Warning {
                location: sources.locate(d.span),
                message: d.message,
            })
            .collect();
        doc.header = header(path, &unsupported, &warnings);
        let (toml, lines) = emit::render(&doc);
        (toml, lines, unsupported, warnings)
    };
    let name = opts
        .output_name
        .clone()
        .unwrap_or_else(|| PathBuf::from("<imported>"));
    let config =
        Config::parse(&name, &toml).map_err(|e| config_error(e, &lines, &sources, &toml))?;
    Ok(Import {
        toml,
        unsupported,
        warnings,
        config,
    })
}

/// The statement tree of one text, without reading anything: `include` lines stay statements
/// (`include PATTERN`). For tools and tests that look at keepalived text itself.
pub fn parse_text(text: &str) -> Result<parse::File, String> {
    let mut sources = Sources::default();
    let id = sources.add(PathBuf::from("<text>"), text.to_string());
    let mut p = parse::Parser::new();
    let mut body = Vec::new();
    let mut keep = |s: parse::Stmt| {
        body.push(s);
        Ok(())
    };
    let read = lexer::lex_each(id, sources.text(id), &mut |t| match t.tok {
        lexer::Tok::Include { directive, pattern } => {
            for word in [directive, pattern] {
                p.push(
                    lexer::Token {
                        tok: lexer::Tok::Word(word),
                        span: t.span,
                    },
                    &mut keep,
                )?;
            }
            Ok(())
        }
        _ => p.push(t, &mut keep),
    })
    .and_then(|()| p.finish(&mut keep));
    match read {
        Ok(tail) => Ok(parse::File { body, tail }),
        Err(d) => Err(ImportError::at(&sources, d).to_string()),
    }
}

fn header(path: &Path, unsupported: &[UnsupportedItem], warnings: &[Warning]) -> Vec<String> {
    let mut h = vec![
        format!(
            " Imported from {} by `lb-daemon import-keepalived`.",
            path.display()
        ),
        " The comments on lines the importer added say why: keepalived's defaults and".into(),
        " inheritance, written out where lb-daemon's differ.".into(),
    ];
    if !unsupported.is_empty() {
        h.push(String::new());
        h.push(format!(
            " Not imported: {} keyword(s) lb-daemon does not support:",
            unsupported.len()
        ));
        h.extend(unsupported.iter().map(|u| format!("   {u}")));
    }
    if !warnings.is_empty() {
        h.push(String::new());
        h.push(format!(
            " Imported, but not as written: {} warning(s):",
            warnings.len()
        ));
        h.extend(warnings.iter().map(|w| format!("   {w}")));
    }
    h
}

/// An error of [`Config::parse`] on the output, at the keepalived text of its line.
fn config_error(
    e: ConfigError,
    lines: &emit::LineMap,
    sources: &Sources,
    toml: &str,
) -> ImportError {
    let (line, message) = match &e {
        ConfigError::Invalid {
            line, key, message, ..
        } => (*line, format!("`{key}`: {message}")),
        ConfigError::Parse {
            line, key, message, ..
        } => (
            *line,
            match key {
                Some(k) => format!("`{k}`: {message}"),
                None => message.clone(),
            },
        ),
        ConfigError::Read { .. } => return ImportError::Output(e.to_string()),
    };
    match line.checked_sub(1).and_then(|i| lines.get(i)).flatten() {
        Some(span) => ImportError::at(sources, Diag::new(span, message)),
        None => {
            let text = line
                .checked_sub(1)
                .and_then(|i| toml.lines().nth(i))
                .unwrap_or("");
            ImportError::Output(format!("line {line} ({text:?}): {message}"))
        }
    }
}

/// `--fwmark N=ENTRY,ENTRY...`: each entry a `virtual_server_group` entry (checked here).
pub fn parse_fwmarks(
    args: &[String],
) -> anyhow::Result<std::collections::BTreeMap<u32, Vec<String>>> {
    let mut out = std::collections::BTreeMap::new();
    for a in args {
        let (n, entries) = a
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--fwmark {a:?}: expected N=ADDRESS [PORT],..."))?;
        let n: u32 = n
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--fwmark {a:?}: {n:?} is not a mark (0..=4294967295)"))?;
        let list: Vec<String> = entries
            .split(',')
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for e in &list {
            crate::config::group::entry(e)
                .map_err(|m| anyhow::anyhow!("--fwmark {a:?}: {e:?}: {m}"))?;
        }
        if out.insert(n, list).is_some() {
            anyhow::bail!("--fwmark {n} is given twice");
        }
    }
    Ok(out)
}

/// The command: import `file`, print what is unsupported, write the TOML to `output` (or
/// stdout). Refuses to write anything while something is unsupported, unless
/// `allow_unsupported`.
pub fn cli(
    file: &Path,
    output: Option<&Path>,
    allow_unsupported: bool,
    interface: Option<String>,
    fwmark: &[String],
) -> anyhow::Result<()> {
    let fwmarks = parse_fwmarks(fwmark)?;
    if let Some(out) = output {
        let same = match (file.canonicalize(), out.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            anyhow::bail!("{}: the output would overwrite the input", out.display());
        }
    }
    let opts = Options {
        interface,
        output_name: output.map(Path::to_path_buf),
        // Without PATH, keepalived searches glibc's confstr(_CS_PATH).
        search_path: Some(std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into())),
        fwmarks,
    };
    let import = match import_file(file, &opts) {
        Err(ImportError::Several(all)) => {
            for e in &all {
                eprintln!("error: {e}");
            }
            anyhow::bail!("{} errors above; nothing was written", all.len());
        }
        r => r?,
    };
    for w in &import.warnings {
        eprintln!("warning: {w}");
    }
    for u in &import.unsupported {
        eprintln!("unsupported: {u}");
    }
    if !import.unsupported.is_empty() && !allow_unsupported {
        anyhow::bail!(
            "{} keyword(s) above are not supported by lb-daemon; nothing was written. Change \
             them, or give --allow-unsupported to import without them (they are then kept in \
             the output as comments)",
            import.unsupported.len()
        );
    }
    match output {
        Some(out) => {
            std::fs::write(out, &import.toml)
                .map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", out.display()))?;
            let c = &import.config;
            eprintln!(
                "{}: written ({} vrrp_instance, {} virtual_server, {} real_server); \
                 check it with `lb-daemon check --config {}`",
                out.display(),
                c.vrrp_instances.len(),
                c.virtual_servers.len(),
                c.virtual_servers
                    .iter()
                    .map(|v| v.real_servers.len())
                    .sum::<usize>(),
                out.display()
            );
        }
        None => print!("{}", import.toml),
    }
    Ok(())
}
