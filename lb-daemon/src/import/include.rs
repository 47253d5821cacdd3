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
use std::path::{Path, PathBuf};

use super::{
    lexer::{lex, Tok, Token},
    source::{self, Files, Sources, Span},
    Diag, ImportError,
};

/// Limits that keep a hostile include tree finite.
const MAX_FILES: usize = 1000;
const MAX_DEPTH: usize = 16;
const MAX_FILE_BYTES: usize = 16 << 20;
const MAX_TOTAL_BYTES: usize = 64 << 20;

struct Loader<'a> {
    files: &'a dyn Files,
    sources: &'a mut Sources,
    total_bytes: usize,
    /// The files being read, outermost first, to refuse include loops.
    chain: Vec<PathBuf>,
}

/// The tokens of `root` with every include expanded. A failure is an [`ImportError`]: a
/// position in a file already read, or `root` that cannot be read.
pub(crate) fn load(
    files: &dyn Files,
    root: &Path,
    sources: &mut Sources,
) -> Result<Vec<Token>, ImportError> {
    let mut l = Loader {
        files,
        sources,
        total_bytes: 0,
        chain: Vec::new(),
    };
    let mut out = Vec::new();
    match l.file(root, None, &mut out) {
        Ok(()) => Ok(out),
        Err(Failure::Root(e)) => Err(e),
        Err(Failure::At(d)) => Err(ImportError::at(l.sources, d)),
    }
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
    /// Reads `path` (included at `from`, `None` for the top file) into `out`.
    fn file(
        &mut self,
        path: &Path,
        from: Option<Span>,
        out: &mut Vec<Token>,
    ) -> Result<(), Failure> {
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
        let bytes = self.files.read(path).map_err(|e| match from {
            Some(_) => fail(format!("cannot read {}: {e}", path.display())),
            None => fail(format!("cannot read: {e}")),
        })?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(fail(format!(
                "{} is larger than {} MiB",
                path.display(),
                MAX_FILE_BYTES >> 20
            )));
        }
        self.total_bytes += bytes.len();
        if self.total_bytes > MAX_TOTAL_BYTES {
            return Err(fail(format!(
                "the included files are larger than {} MiB in all",
                MAX_TOTAL_BYTES >> 20
            )));
        }
        let (text, bad_utf8) = match String::from_utf8(bytes) {
            Ok(t) => (t, None),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(at))
            }
        };
        let id = self.sources.add(path.to_path_buf(), text);
        if let Some(at) = bad_utf8 {
            // The lossy text has the same bytes up to the first invalid one.
            return Err(Diag::new(Span::new(id, at, at), "not valid UTF-8").into());
        }
        let tokens = lex(id, self.sources.text(id))?;
        self.chain.push(key);
        for t in tokens {
            match t.tok {
                Tok::Include { directive, pattern } => {
                    self.include(path, &directive, &pattern, t.span, out)?;
                }
                _ => out.push(t),
            }
        }
        self.chain.pop();
        Ok(())
    }

    fn include(
        &mut self,
        from_file: &Path,
        directive: &str,
        pattern: &str,
        at: Span,
        out: &mut Vec<Token>,
    ) -> Result<(), Failure> {
        let base = from_file.parent().unwrap_or(Path::new(""));
        let alternatives = source::expand_braces(pattern)
            .map_err(|m| Diag::new(at, format!("`{directive} {pattern}`: {m}")))?;
        let must_match = matches!(directive, "includew" | "includea");
        let each_brace_must_match = directive == "includeb";
        let mut matched_any = false;
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
            matched_any |= !matches.is_empty();
            for m in matches {
                self.file(&m, Some(at), out)?;
            }
        }
        if !matched_any && must_match {
            return Err(Diag::new(at, format!("`{directive} {pattern}`: nothing matches")).into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::source::MemFiles;
    use super::*;

    fn words(fs: &MemFiles, root: &str) -> Result<Vec<String>, String> {
        let mut sources = Sources::default();
        load(fs, Path::new(root), &mut sources)
            .map(|t| {
                t.into_iter()
                    .filter_map(|t| match t.tok {
                        Tok::Word(w) => Some(w),
                        _ => None,
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
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
}
