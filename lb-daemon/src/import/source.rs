//! Where the importer's text comes from: the files it read (the configuration and everything
//! it includes), positions in them, and the little file-system access `include` and the
//! search for scripts named without a path need. That access is a trait, so the whole
//! importer runs on files held in memory in the tests.
use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    io,
    path::{Component, Path, PathBuf},
};

/// One of the files read, by its order of reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub(crate) u32);

/// A byte range of one file. Offsets are `u32`: the loader refuses more than
/// [`super::MAX_INPUT_BYTES`] of input, and a span is made for every word, so its size counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        let at = |o: usize| u32::try_from(o).unwrap_or(u32::MAX);
        Span {
            file,
            start: at(start),
            end: at(end),
        }
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// A position as people read it: 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

struct SourceFile {
    path: PathBuf,
    text: String,
    /// Byte offset of the start of every [`LINE_STEP`]th line (line 1, 1 + LINE_STEP, ...):
    /// a full index would cost 8 bytes a line, more than the text of a file of short lines.
    checkpoints: Vec<u32>,
}

/// Lines between two entries of [`SourceFile::checkpoints`].
const LINE_STEP: usize = 64;

/// Every file the importer read.
#[derive(Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: PathBuf, text: String) -> FileId {
        let checkpoints = std::iter::once(0)
            .chain(
                text.match_indices('\n')
                    .map(|(i, _)| i + 1)
                    .skip(LINE_STEP - 1)
                    .step_by(LINE_STEP),
            )
            .map(|o| u32::try_from(o).unwrap_or(u32::MAX))
            .collect();
        // At most MAX_FILES files are ever added (the loader's limit), so this fits.
        let id = FileId(u32::try_from(self.files.len()).unwrap_or(u32::MAX));
        self.files.push(SourceFile {
            path,
            text,
            checkpoints,
        });
        id
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn path(&self, id: FileId) -> &Path {
        self.files
            .get(id.0 as usize)
            .map_or(Path::new("?"), |f| f.path.as_path())
    }

    /// A file's whole text.
    pub fn text(&self, id: FileId) -> &str {
        self.files
            .get(id.0 as usize)
            .map_or("", |f| f.text.as_str())
    }

    /// The text a span covers ("" for a span that is not in a file read).
    pub fn slice(&self, span: Span) -> &str {
        self.files
            .get(span.file.0 as usize)
            .and_then(|f| f.text.get(span.range()))
            .unwrap_or("")
    }

    /// The line and column of a span's start.
    pub fn locate(&self, span: Span) -> Location {
        let Some(f) = self.files.get(span.file.0 as usize) else {
            return Location {
                file: PathBuf::from("?"),
                line: 0,
                column: 0,
            };
        };
        let offset = (span.start as usize).min(f.text.len());
        let k = f
            .checkpoints
            .partition_point(|&s| s as usize <= offset)
            .max(1)
            - 1;
        let from = f.checkpoints.get(k).map_or(0, |&s| s as usize);
        let before = f.text.as_bytes().get(from..offset).unwrap_or_default();
        let newlines = before.iter().filter(|&&b| b == b'\n').count();
        let line = k * LINE_STEP + newlines + 1;
        let start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(from, |i| from + i + 1);
        let column = match f.text.get(start..offset) {
            Some(s) => s.chars().count() + 1,
            // Not on a character boundary (never for spans the lexer makes): count bytes.
            None => offset - start + 1,
        };
        Location {
            file: f.path.clone(),
            line,
            column,
        }
    }
}

/// What `include` needs of a file system.
pub trait Files {
    /// The file's bytes, but at most `limit + 1` of them: a caller that gets more than `limit`
    /// knows the file is too large without having read all of it.
    fn read(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>>;
    /// The entries of a directory: name, and whether it is a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, bool)>>;
    fn is_dir(&self, path: &Path) -> bool;
    fn exists(&self, path: &Path) -> bool;
    /// A file (symlinks followed) that can be run: what [`find_program`] looks for.
    fn is_executable(&self, path: &Path) -> bool;
}

/// The real file system.
pub struct RealFiles;

impl Files for RealFiles {
    fn read(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        if path.is_dir() {
            return Err(io::Error::other("is a directory"));
        }
        let file = std::fs::File::open(path)?;
        let size = file.metadata().map_or(0, |m| m.len());
        let cap = usize::try_from(size).unwrap_or(usize::MAX).min(limit) + 1;
        let mut out = Vec::with_capacity(cap);
        file.take(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut out)?;
        Ok(out)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, bool)>> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::read_dir(dir)?
            .map(|e| {
                let e = e?;
                // Follow symlinks, as glob(3) does: a link to a directory is a directory.
                let is_dir = e.path().is_dir();
                Ok((e.file_name(), is_dir))
            })
            .collect()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_executable(&self, path: &Path) -> bool {
        // The rule `lb-daemon check` applies, so that what is found here passes it.
        crate::script::check_runnable(path).is_ok()
    }
}

/// Files held in memory (for tests): paths to contents; directories are implied by the paths.
#[derive(Debug, Default, Clone)]
pub struct MemFiles {
    files: BTreeMap<PathBuf, Vec<u8>>,
    executable: std::collections::BTreeSet<PathBuf>,
}

impl MemFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.files.insert(normalize(&path.into()), contents.into());
        self
    }

    /// Adds a file that [`Files::is_executable`] says can be run.
    pub fn add_executable(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        let path = normalize(&path.into());
        self.executable.insert(path.clone());
        self.add(path, "#!/bin/sh\n")
    }
}

impl Files for MemFiles {
    fn read(&self, path: &Path, limit: usize) -> io::Result<Vec<u8>> {
        let path = normalize(path);
        if let Some(c) = self.files.get(&path) {
            return Ok(c[..c.len().min(limit.saturating_add(1))].to_vec());
        }
        if self.is_dir(&path) {
            return Err(io::Error::other("is a directory"));
        }
        Err(io::Error::from(io::ErrorKind::NotFound))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, bool)>> {
        let dir = normalize(dir);
        let mut out: BTreeMap<OsString, bool> = BTreeMap::new();
        for path in self.files.keys() {
            let Ok(rest) = path.strip_prefix(&dir) else {
                continue;
            };
            let mut parts = rest.components();
            if let Some(Component::Normal(first)) = parts.next() {
                let is_dir = parts.next().is_some();
                let e = out.entry(first.to_os_string()).or_insert(is_dir);
                *e |= is_dir;
            }
        }
        if out.is_empty() && !self.is_dir(&dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(out.into_iter().collect())
    }

    fn is_dir(&self, path: &Path) -> bool {
        let path = normalize(path);
        self.files
            .keys()
            .any(|p| p != &path && p.starts_with(&path))
    }

    fn exists(&self, path: &Path) -> bool {
        let path = normalize(path);
        self.files.contains_key(&path) || self.is_dir(&path)
    }

    fn is_executable(&self, path: &Path) -> bool {
        self.executable.contains(&normalize(path))
    }
}

/// Where keepalived's search of its PATH finds a program named without a `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(PathBuf),
    /// A file of that name, but none that can be run (keepalived: "Permissions failure for
    /// script ... in path").
    NotExecutable(PathBuf),
    NotFound,
}

/// keepalived's search for a script named without a `/` (its `find_path`, execvp's rule):
/// the first directory of `search_path` (a PATH, `:`-separated) that holds `name` as a file
/// that can be run.
pub fn find_program(files: &dyn Files, search_path: &OsStr, name: &str) -> Lookup {
    let mut not_executable = None;
    // An empty or relative entry is relative to keepalived's working directory (`/` once it
    // runs as a daemon), which the importer's is not: such entries are not searched. The
    // output is TOML, which holds UTF-8 only.
    let dirs = std::env::split_paths(search_path)
        .filter(|d| d.is_absolute())
        .filter(|d| d.to_str().is_some());
    for dir in dirs {
        let candidate = dir.join(name);
        if files.is_executable(&candidate) {
            return Lookup::Found(normalize(&candidate));
        }
        if not_executable.is_none() && files.exists(&candidate) && !files.is_dir(&candidate) {
            not_executable = Some(normalize(&candidate));
        }
    }
    not_executable.map_or(Lookup::NotFound, Lookup::NotExecutable)
}

/// `a/./b/../c` as `a/c`, without asking the file system (so without following symlinks; an
/// include path through a symlinked directory and `..` may resolve differently from glob(3),
/// which is rare enough in keepalived configurations to accept).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Whether a pattern has glob(3) wildcards.
pub fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The most alternatives one brace expression may expand to.
const MAX_BRACE_EXPANSIONS: usize = 256;

/// csh-style brace expansion, as glob(3) does with GLOB_BRACE: `a{b,c{d,e}}f` gives `abf`,
/// `acdf`, `acef`. A brace without its pair is literal. `Err` past [`MAX_BRACE_EXPANSIONS`].
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut todo = vec![pattern.to_string()];
    while let Some(p) = todo.pop() {
        match first_brace_group(&p) {
            None => done.push(p),
            Some((open, close)) => {
                let (head, inner, tail) = (&p[..open], &p[open + 1..close], &p[close + 1..]);
                for alt in split_top_level_commas(inner) {
                    todo.push(format!("{head}{alt}{tail}"));
                    if todo.len() + done.len() > MAX_BRACE_EXPANSIONS {
                        return Err(format!(
                            "expands to more than {MAX_BRACE_EXPANSIONS} file names"
                        ));
                    }
                }
            }
        }
    }
    // `todo` is a stack: restore the written order.
    done.reverse();
    Ok(done)
}

/// Byte offsets of the first `{` that has a matching `}`, and of that `}`.
fn first_brace_group(p: &str) -> Option<(usize, usize)> {
    let bytes = p.as_bytes();
    for (open, &b) in bytes.iter().enumerate() {
        if b != b'{' {
            continue;
        }
        let mut depth = 0usize;
        for (i, &c) in bytes.iter().enumerate().skip(open) {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((open, i));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn split_top_level_commas(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The most paths one pattern may match.
const MAX_MATCHES: usize = 1000;

/// glob(3) for one pattern (no braces): the matching paths, sorted per directory level, as glob
/// sorts them. Wildcards match within one path component; a leading `.` must be matched
/// explicitly. Directories are left out (keepalived skips them).
pub fn glob(files: &dyn Files, pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let mut current = vec![PathBuf::new()];
    let components: Vec<Component> = pattern.components().collect();
    for (i, c) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let name = match c {
            Component::Normal(n) => n,
            other => {
                for p in &mut current {
                    p.push(other.as_os_str());
                }
                continue;
            }
        };
        let Some(name) = name.to_str().filter(|n| has_wildcards(n)) else {
            for p in &mut current {
                p.push(name);
            }
            continue;
        };
        let mut next = Vec::new();
        for dir in &current {
            // A directory that cannot be read matches nothing, as in glob(3).
            let Ok(mut entries) = files.list(dir) else {
                continue;
            };
            entries.sort();
            for (entry, is_dir) in entries {
                let Some(entry) = entry.to_str() else {
                    return Err(format!(
                        "{}: a file name that is not UTF-8 matches",
                        dir.display()
                    ));
                };
                if entry.starts_with('.') && !name.starts_with('.') {
                    continue;
                }
                if (last || is_dir) && fnmatch(name, entry) {
                    next.push(dir.join(entry));
                    if next.len() > MAX_MATCHES {
                        return Err(format!("matches more than {MAX_MATCHES} files"));
                    }
                }
            }
        }
        current = next;
    }
    Ok(current
        .into_iter()
        .filter(|p| files.exists(p) && !files.is_dir(p))
        .collect())
}

/// fnmatch(3) without flags: `*`, `?`, `[...]` (`!` or `^` negates, `a-z` ranges) and `\`
/// quoting the next character.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, name index it took up to).
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match class(&p[pi..], n[ni]) {
                Some((true, len)) => Some(len),
                Some((false, _)) => None,
                // No closing `]`: a literal `[`.
                None => (n[ni] == '[').then_some(1),
            },
            Some('\\') if pi + 1 < p.len() => (p[pi + 1] == n[ni]).then_some(2),
            Some(&c) => (c == n[ni]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at the start of `p` against `c`: (matches, length of the class), or `None`
/// when it has no closing `]`.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&h| h != ']') {
            let hi = p[i + 2];
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= lo == c;
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_forms() {
        assert!(fnmatch("*.conf", "a.conf"));
        assert!(!fnmatch("*.conf", "a.conf.bak"));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(!fnmatch("[!a-c]x", "bx"));
        assert!(fnmatch("[]]", "]"));
        assert!(fnmatch("[", "["));
        assert!(fnmatch("\\*", "*"));
        assert!(!fnmatch("\\*", "a"));
        assert!(fnmatch("*a*b*", "xxaxxbxx"));
        assert!(!fnmatch("*a*b", "xxaxxbxx"));
        assert!(fnmatch("**", ""));
    }

    #[test]
    fn braces() {
        assert_eq!(
            expand_braces("a{b,c{d,e}}f").unwrap(),
            ["abf", "acdf", "acef"]
        );
        assert_eq!(expand_braces("a{b").unwrap(), ["a{b"]);
        assert_eq!(expand_braces("{}").unwrap(), [""]);
        let many = "{a,b,c,d}".repeat(5);
        assert!(expand_braces(&many).is_err());
    }

    #[test]
    fn glob_in_memory() {
        let mut fs = MemFiles::new();
        fs.add("/etc/k/conf.d/b.conf", "")
            .add("/etc/k/conf.d/a.conf", "")
            .add("/etc/k/conf.d/.hidden.conf", "")
            .add("/etc/k/conf.d/sub/c.conf", "")
            .add("/etc/k/other.txt", "");
        assert_eq!(
            glob(&fs, Path::new("/etc/k/conf.d/*.conf")).unwrap(),
            [
                PathBuf::from("/etc/k/conf.d/a.conf"),
                PathBuf::from("/etc/k/conf.d/b.conf")
            ]
        );
        assert_eq!(
            glob(&fs, Path::new("/etc/k/*/*/c.conf")).unwrap(),
            [PathBuf::from("/etc/k/conf.d/sub/c.conf")]
        );
        assert!(glob(&fs, Path::new("/etc/k/conf.d/*"))
            .unwrap()
            .iter()
            .all(|p| !p.ends_with("sub")));
        assert!(glob(&fs, Path::new("/nowhere/*")).unwrap().is_empty());
    }

    #[test]
    fn locate_counts_characters() {
        let mut s = Sources::default();
        let id = s.add("f".into(), "ab\n é x\n".into());
        let x = s.slice(Span::new(id, 0, 2));
        assert_eq!(x, "ab");
        let at = "ab\n é ".len();
        assert_eq!(s.locate(Span::new(id, at, at + 1)).to_string(), "f:2:4");
        assert_eq!(s.locate(Span::new(id, 999, 999)).line, 3);
        assert_eq!(s.locate(Span::new(FileId(7), 0, 0)).line, 0);
    }

    /// The sparse line index gives what counting every line from the start gives.
    #[test]
    fn locate_agrees_with_counting() {
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&"é".repeat(i % 7));
            text.push_str(if i % 3 == 0 { "\n" } else { "x\n" });
        }
        let mut s = Sources::default();
        let id = s.add("f".into(), text.clone());
        for offset in (0..text.len()).filter(|o| text.is_char_boundary(*o)) {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = text[start..offset].chars().count() + 1;
            let got = s.locate(Span::new(id, offset, offset));
            assert_eq!((got.line, got.column), (line, column), "offset {offset}");
        }
    }

    #[test]
    fn programs_are_found_as_keepalived_searches_its_path() {
        let mut fs = MemFiles::new();
        fs.add_executable("/usr/local/bin/both.sh")
            .add_executable("/usr/bin/both.sh")
            .add("/usr/local/bin/later.sh", "not executable")
            .add_executable("/usr/bin/later.sh")
            .add("/usr/bin/plain.sh", "not executable")
            .add_executable("/usr/bin/sub/x.sh")
            .add_executable("bin/relative.sh");
        let path = OsStr::new("/usr/local/bin::bin:/usr/bin/:/usr/sbin");
        let find = |name| find_program(&fs, path, name);
        // The first directory that has it, in PATH's order.
        assert_eq!(
            find("both.sh"),
            Lookup::Found("/usr/local/bin/both.sh".into())
        );
        // A file that cannot be run is passed over.
        assert_eq!(find("later.sh"), Lookup::Found("/usr/bin/later.sh".into()));
        assert_eq!(
            find("plain.sh"),
            Lookup::NotExecutable("/usr/bin/plain.sh".into())
        );
        // A directory is not a program.
        assert_eq!(find("sub"), Lookup::NotFound);
        // Empty and relative entries name the importer's working directory, not keepalived's.
        assert_eq!(find("relative.sh"), Lookup::NotFound);
        assert_eq!(find("missing.sh"), Lookup::NotFound);
        assert_eq!(
            find_program(&fs, OsStr::new(""), "both.sh"),
            Lookup::NotFound
        );
    }
}
