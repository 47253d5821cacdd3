//! Reading a configuration and what it includes into one stream of tokens, as keepalived reads
//! them: an `include` line is replaced by the files its pattern matches (in glob(3)'s sorted
//! order), a relative pattern is relative to the directory of the file that includes it, and
//! braces and wildcards expand as with `glob(GLOB_BRACE)`.
//!
//! Where keepalived is lenient the importer is not, so that nothing is dropped unseen: a file
//! named without wildcards must exist (keepalived's plain `include` skips it with a log line),
//! and an unreadable match is an error. A wildcard that matches nothing is fine for `include`,
//! `includer`, `includem` and `includeb` (the reason such patterns exist), and an error for
//! `includew` and `includea`, as keepalived's `include_check wildcard_match` makes it.
//!
//! Reading happens in two passes so that nothing holds the whole token stream: [`load`] reads
//! every file (checking its syntax, and finding its includes), then [`stream`] lexes them again
//! in reading order straight into the parser, whose top-level statements go to the converter
//! one at a time. Errors of the first pass (a file that cannot be read, bad quoting) therefore
//! come before those of the parser and the converter, as they did when the tokens were read
//! in full first.
use std::path::{Path, PathBuf};

use super::{
    lexer::{lex_each, Tok},
    parse::{Comment, Parser, Stmt},
    source::{self, FileId, Files, Sources, Span},
    Diag, ImportError, MAX_INPUT_BYTES,
};

/// Limits that keep a hostile include tree finite (the bytes: [`MAX_INPUT_BYTES`]).
const MAX_FILES: usize = 1000;
const MAX_DEPTH: usize = 16;

/// What [`load`] found: for each file read (by [`FileId`]), for each of its include lines in
/// order, the files that line read, in order.
pub(crate) struct Plan {
    root: FileId,
    includes: Vec<Vec<Vec<FileId>>>,
}

struct Loader<'a> {
    files: &'a dyn Files,
    sources: &'a mut Sources,
    total_bytes: usize,
    /// The files being read, outermost first, to refuse include loops.
    chain: Vec<PathBuf>,
    includes: Vec<Vec<Vec<FileId>>>,
}

/// Reads `root` and everything it includes into `sources`. A failure is an [`ImportError`]: a
/// position in a file already read, or `root` that cannot be read.
pub(crate) fn load(
    files: &dyn Files,
    root: &Path,
    sources: &mut Sources,
) -> Result<Plan, ImportError> {
    let mut l = Loader {
        files,
        sources,
        total_bytes: 0,
        chain: Vec::new(),
        includes: Vec::new(),
    };
    match l.file(root, None) {
        Ok(root) => Ok(Plan {
            root,
            includes: l.includes,
        }),
        Err(Failure::Root(e)) => Err(e),
        Err(Failure::At(d)) => Err(ImportError::at(l.sources, d)),
    }
}

/// The tokens of what [`load`] read, in reading order, through `parser`: each top-level
/// statement goes to `out` as soon as it is complete. Returns the comment lines after the last
/// statement.
pub(crate) fn stream(
    plan: &Plan,
    sources: &Sources,
    out: &mut dyn FnMut(Stmt) -> Result<(), Diag>,
) -> Result<Vec<Comment>, Diag> {
    let mut parser = Parser::new();
    stream_file(plan, sources, plan.root, &mut parser, out)?;
    parser.finish(out)
}

fn stream_file(
    plan: &Plan,
    sources: &Sources,
    id: FileId,
    parser: &mut Parser,
    out: &mut dyn FnMut(Stmt) -> Result<(), Diag>,
) -> Result<(), Diag> {
    let mut includes = plan.includes.get(id.0 as usize).into_iter().flatten();
    lex_each(id, sources.text(id), &mut |t| match t.tok {
        Tok::Include { .. } => includes
            .next()
            .into_iter()
            .flatten()
            .try_for_each(|&inc| stream_file(plan, sources, inc, parser, out)),
        _ => parser.push(t, out),
    })
}

enum Failure {
    /// The top file could not be read.
    Root(ImportError),
    At(Diag),
}

impl From<Diag> for Failure {
    fn from(d: Diag) -> Self {
        Failure::At(d)
    }
}

impl Loader<'_> {
    /// Reads `path` (included at `from`, `None` for the top file) and what it includes.
    fn file(&mut self, path: &Path, from: Option<Span>) -> Result<FileId, Failure> {
        let fail = |message: String| -> Failure {
            match from {
                Some(at) => Failure::At(Diag::new(at, message)),
                None => Failure::Root(ImportError::Read {
                    file: path.to_path_buf(),
                    message,
                }),
            }
        };
        if self.sources.len() >= MAX_FILES {
            return Err(fail(format!("more than {MAX_FILES} files are included")));
        }
        if self.chain.len() >= MAX_DEPTH {
            return Err(fail(format!(
                "includes are nested more than {MAX_DEPTH} deep"
            )));
        }
        let key = source::normalize(path);
        if let Some(first) = self.chain.iter().position(|p| *p == key) {
            let cycle: Vec<String> = self.chain[first..]
                .iter()
                .chain(std::iter::once(&key))
                .map(|p| p.display().to_string())
                .collect();
            return Err(fail(format!("include loop: {}", cycle.join(" includes "))));
        }
        let room = MAX_INPUT_BYTES - self.total_bytes;
        let bytes = self.files.read(path, room).map_err(|e| match from {
            Some(_) => fail(format!("cannot read {}: {e}", path.display())),
            None => fail(format!("cannot read: {e}")),
        })?;
        if bytes.len() > room {
            let mib = MAX_INPUT_BYTES >> 20;
            return Err(fail(if self.total_bytes == 0 {
                format!(
                    "{} is larger than {mib} MiB, the most the importer reads (keepalived \
                     configurations are far smaller)",
                    path.display()
                )
            } else {
                format!(
                    "with {}, the configuration and what it includes are larger than {mib} MiB \
                     in all, the most the importer reads",
                    path.display()
                )
            }));
        }
        self.total_bytes += bytes.len();
        let (text, bad_utf8) = match String::from_utf8(bytes) {
            Ok(t) => (t, None),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(at))
            }
        };
        let id = self.sources.add(path.to_path_buf(), text);
        self.includes.push(Vec::new());
        if let Some(at) = bad_utf8 {
            // The lossy text has the same bytes up to the first invalid one.
            return Err(Diag::new(Span::new(id, at, at), "not valid UTF-8").into());
        }
        // The whole file is lexed (and its errors found) before any include is read.
        let mut lines = Vec::new();
        lex_each(id, self.sources.text(id), &mut |t| {
            if let Tok::Include { directive, pattern } = t.tok {
                lines.push((directive, pattern, t.span));
            }
            Ok(())
        })?;
        self.chain.push(key);
        let mut read = Vec::with_capacity(lines.len());
        for (directive, pattern, at) in lines {
            read.push(self.include(path, &directive, &pattern, at)?);
        }
        self.chain.pop();
        if let Some(slot) = self.includes.get_mut(id.0 as usize) {
            *slot = read;
        }
        Ok(id)
    }

    /// The files one include line reads.
    fn include(
        &mut self,
        from_file: &Path,
        directive: &str,
        pattern: &str,
        at: Span,
    ) -> Result<Vec<FileId>, Failure> {
        let base = from_file.parent().unwrap_or(Path::new(""));
        let alternatives = source::expand_braces(pattern)
            .map_err(|m| Diag::new(at, format!("`{directive} {pattern}`: {m}")))?;
        let must_match = matches!(directive, "includew" | "includea");
        let each_brace_must_match = directive == "includeb";
        let mut read = Vec::new();
        for alt in alternatives {
            let full = source::normalize(&base.join(&alt));
            let matches = if source::has_wildcards(&alt) {
                source::glob(self.files, &full)
                    .map_err(|m| Diag::new(at, format!("`{directive} {pattern}`: {m}")))?
            } else {
                // Named exactly: it must be there (see the module comment).
                vec![full.clone()]
            };
            if matches.is_empty() && each_brace_must_match {
                return Err(Diag::new(
                    at,
                    format!(
                        "`{directive} {pattern}`: nothing matches {}",
                        full.display()
                    ),
                )
                .into());
            }
            for m in matches {
                read.push(self.file(&m, Some(at))?);
            }
        }
        if read.is_empty() && must_match {
            return Err(Diag::new(at, format!("`{directive} {pattern}`: nothing matches")).into());
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::super::source::MemFiles;
    use super::*;

    fn words(fs: &MemFiles, root: &str) -> Result<Vec<String>, String> {
        let mut sources = Sources::default();
        let plan = load(fs, Path::new(root), &mut sources).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        stream(&plan, &sources, &mut |s| {
            out.extend(s.words.into_iter().map(|w| w.text));
            Ok(())
        })
        .map_err(|d| ImportError::at(&sources, d).to_string())?;
        Ok(out)
    }

    #[test]
    fn includes_relative_globbed_and_braced() {
        let mut fs = MemFiles::new();
        fs.add(
            "/etc/k/keepalived.conf",
            "a\ninclude conf.d/*.conf\nb\ninclude /etc/k/{x,y}.inc\n",
        )
        .add("/etc/k/conf.d/2.conf", "two\n")
        .add("/etc/k/conf.d/1.conf", "one\ninclude ../sub/*.conf\n")
        .add("/etc/k/sub/s.conf", "s")
        .add("/etc/k/x.inc", "x\n")
        .add("/etc/k/y.inc", "y\n");
        assert_eq!(
            words(&fs, "/etc/k/keepalived.conf").unwrap(),
            ["a", "one", "s", "two", "b", "x", "y"]
        );
    }

    #[test]
    fn include_failures_name_the_include_line() {
        let mut fs = MemFiles::new();
        fs.add("/k/a.conf", "x\n  include missing.conf\n")
            .add("/k/loop.conf", "include loop2.conf\n")
            .add("/k/loop2.conf", "include loop.conf\n")
            .add("/k/w.conf", "include none/*.conf\nincludew none/*.conf\n")
            .add("/k/bad.conf", b"ok\nbad \xff\n".to_vec());
        let e = words(&fs, "/k/a.conf").unwrap_err();
        assert!(
            e.starts_with("/k/a.conf:2:11: cannot read /k/missing.conf"),
            "{e}"
        );
        let e = words(&fs, "/k/loop.conf").unwrap_err();
        assert!(
            e.contains("include loop: /k/loop.conf includes /k/loop2.conf includes /k/loop.conf"),
            "{e}"
        );
        let e = words(&fs, "/k/w.conf").unwrap_err();
        assert!(
            e.starts_with("/k/w.conf:2:10: `includew none/*.conf`: nothing matches"),
            "{e}"
        );
        let e = words(&fs, "/k/bad.conf").unwrap_err();
        assert!(e.starts_with("/k/bad.conf:2:5: not valid UTF-8"), "{e}");
        let e = words(&fs, "/k/nothing.conf").unwrap_err();
        assert!(e.starts_with("/k/nothing.conf: cannot read"), "{e}");
    }

    #[test]
    fn input_is_capped_in_all_and_named() {
        let half = MAX_INPUT_BYTES / 2 + 1;
        let mut fs = MemFiles::new();
        fs.add("/k/a.conf", "include b.conf\ninclude c.conf\n")
            .add("/k/b.conf", vec![b'#'; half])
            .add("/k/c.conf", vec![b'#'; half])
            .add("/k/big.conf", vec![b'#'; MAX_INPUT_BYTES + 1]);
        let e = words(&fs, "/k/a.conf").unwrap_err();
        assert!(
            e.starts_with("/k/a.conf:2:9: with /k/c.conf, the configuration and what it includes are larger than 16 MiB"),
            "{e}"
        );
        let e = words(&fs, "/k/big.conf").unwrap_err();
        assert!(
            e.starts_with("/k/big.conf: /k/big.conf is larger than 16 MiB"),
            "{e}"
        );
    }

    /// Statements reach the converter one by one, before the rest of the text is parsed:
    /// a statement that fails stops the reading there.
    #[test]
    fn statements_stream_in_reading_order() {
        let mut fs = MemFiles::new();
        fs.add("/k/a.conf", "one { x }\ninclude b.conf\nthree\n} # stray\n")
            .add("/k/b.conf", "two\n");
        let mut sources = Sources::default();
        let plan = load(&fs, Path::new("/k/a.conf"), &mut sources).unwrap();
        let mut seen = Vec::new();
        let err = stream(&plan, &sources, &mut |s| {
            seen.push(s.keyword().text.clone());
            Ok(())
        })
        .unwrap_err();
        // `three` waits for its next line (a `{` there would open its block), which fails.
        assert_eq!(seen, ["one", "two"]);
        assert!(err.message.contains("`}` with no `{`"), "{}", err.message);
        let mut seen = 0;
        let err = stream(&plan, &sources, &mut |_| {
            seen += 1;
            Err(Diag::new(Span::new(plan.root, 0, 0), "stop"))
        })
        .unwrap_err();
        assert_eq!((seen, err.message.as_str()), (1, "stop"));
    }
}
