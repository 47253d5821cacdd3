//! keepalived's configuration syntax, line by line, as its `lib/parser.c` reads it:
//!
//! * `#` and `!` start a comment anywhere on a line, except inside double quotes; `\#` and `\!`
//!   outside quotes are the characters themselves (`decomment()`).
//! * `{` and `}` are tokens of their own wherever they are (`group{` is `group` and `{`), except
//!   inside quotes: `read_line()` splits a line at them.
//! * A word may be made of quoted and unquoted parts, `"` or `'` quotes, which are removed:
//!   `a"b c"d` is the one word `ab cd`. Inside quotes, `\a \b \E \f \n \r \t \v`, `\nnn`
//!   (octal), `\xXX`, `\cC` and `\C` are escapes (`alloc_strvec_quoted_escaped()`).
//! * A line whose first word is `include` (or `includer`, `includem`, `includew`, `includeb`,
//!   `includea`) names files to read in its place; the loader resolves it.
//!
//! keepalived's conditional lines (`@id ...`), parameter definitions (`$NAME=...`), its
//! predefined parameters (`${_PWD}` and the like) and `~SEQ`/`~LST` lines depend on the node
//! and time keepalived runs on; the importer refuses them with their position rather than
//! guess.
use std::{iter::Peekable, str::CharIndices};

use super::{source::FileId, source::Span, Diag};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    Open,
    Close,
    /// The text after `#` or `!`, to the end of the line.
    Comment(String),
    Newline,
    /// `include PATTERN` (or a variant, `directive`).
    Include {
        directive: String,
        pattern: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub span: Span,
}

pub const INCLUDE_DIRECTIVES: [&str; 6] = [
    "include", "includer", "includem", "includew", "includeb", "includea",
];

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

/// The tokens of one file.
pub fn lex(file: FileId, text: &str) -> Result<Vec<Token>, Diag> {
    let mut out = Vec::new();
    lex_each(file, text, &mut |t| {
        out.push(t);
        Ok(())
    })?;
    Ok(out)
}

/// The tokens of one file, handed to `sink` one at a time as they are read, so that no
/// list of them all is ever held (a token is several times the size of its text). An error
/// of `sink` ends the reading and is returned.
pub fn lex_each(
    file: FileId,
    text: &str,
    sink: &mut dyn FnMut(Token) -> Result<(), Diag>,
) -> Result<(), Diag> {
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        lex_line(file, body, line_start, sink)?;
        let eol = line_start + body.len();
        sink(Token {
            tok: Tok::Newline,
            span: Span::new(file, eol, eol),
        })?;
        line_start += line.len();
    }
    Ok(())
}

/// Where the comment of a line starts (the byte offset of its `#` or `!`), and the offsets of
/// `\#`/`\!` escapes outside quotes (their backslash), as keepalived's `decomment()` finds them:
/// only double quotes protect a comment character.
fn comment_start(line: &str) -> (Option<usize>, Vec<usize>) {
    let mut in_quote = false;
    let mut escapes = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => in_quote = !in_quote,
            '\\' => {
                if let Some(&(_, next)) = chars.peek() {
                    if !in_quote && (next == '#' || next == '!') {
                        escapes.push(i);
                    }
                    chars.next();
                }
            }
            '#' | '!' if !in_quote => return (Some(i), escapes),
            _ => {}
        }
    }
    (None, escapes)
}

fn lex_line(
    file: FileId,
    line: &str,
    base: usize,
    out: &mut dyn FnMut(Token) -> Result<(), Diag>,
) -> Result<(), Diag> {
    let span = |a: usize, b: usize| Span::new(file, base + a, base + b);
    let (comment, escapes) = comment_start(line);
    let code = &line[..comment.unwrap_or(line.len())];
    let first = code.find(|c: char| !is_blank(c));
    if let Some(f) = first {
        let rest = &code[f..];
        let refuse = |message: &str| Diag::new(span(f, f + 1), message);
        if rest.starts_with('@') {
            return Err(refuse(
                "conditional configuration (`@config_id ...`) is not supported by the importer: \
                 keep the lines meant for this node and remove the `@` prefixes",
            ));
        }
        if rest.starts_with('~') {
            return Err(refuse(
                "`~SEQ`/`~LST` lines are not supported by the importer: expand them first",
            ));
        }
        if is_definition(rest) {
            return Err(refuse(
                "parameter definitions (`$NAME=...`) are not supported by the importer: \
                 substitute them first",
            ));
        }
        if let Some(d) = INCLUDE_DIRECTIVES.iter().find(|d| {
            rest.strip_prefix(**d)
                .is_some_and(|r| r.is_empty() || r.starts_with(is_blank))
        }) {
            let arg_at = f + d.len();
            let arg = code[arg_at..].trim_matches(is_blank);
            let arg_start = arg_at + code[arg_at..].find(arg).unwrap_or(0);
            let quote = arg.chars().next().filter(|c| *c == '"' || *c == '\'');
            let pattern = match quote {
                Some(q) => arg[1..].strip_suffix(q).ok_or_else(|| {
                    Diag::new(span(arg_start, arg_start + 1), "unterminated quoted string")
                })?,
                None => arg,
            };
            if pattern.is_empty() || (quote.is_none() && pattern.contains(is_blank)) {
                return Err(Diag::new(
                    span(f, f + d.len()),
                    format!("`{d}` takes one file name or pattern"),
                ));
            }
            out(Token {
                tok: Tok::Include {
                    directive: d.to_string(),
                    pattern: pattern.to_string(),
                },
                span: span(arg_start, arg_start + arg.len()),
            })?;
            return push_comment(line, comment, &span, out);
        }
    }
    // keepalived substitutes its predefined parameters (`$_PWD`, `${_INSTANCE}`...) in the
    // whole line, quotes included, before it splits braces.
    if let Some(at) = predefined_parameter(code) {
        return Err(Diag::new(
            span(at, at + 1),
            "keepalived's predefined parameters (`${_PWD}`, `${_INSTANCE}`...) are not \
             supported by the importer: substitute them first",
        ));
    }
    words(code, &escapes, &span, out)?;
    push_comment(line, comment, &span, out)
}

fn push_comment(
    line: &str,
    comment: Option<usize>,
    span: &dyn Fn(usize, usize) -> Span,
    out: &mut dyn FnMut(Token) -> Result<(), Diag>,
) -> Result<(), Diag> {
    match comment {
        // Skip the one-byte `#` or `!`.
        Some(c) => out(Token {
            tok: Tok::Comment(line[c + 1..].trim_end_matches(is_blank).to_string()),
            span: span(c, line.len()),
        }),
        None => Ok(()),
    }
}

/// keepalived's predefined parameters (parser.c's `set_std_definitions()` and later
/// additions); any other `$NAME` is left as written when nothing defines it.
const PREDEFINED: [&str; 6] = ["_PWD", "_INSTANCE", "_RANDOM", "_ENV", "_HASH", "_BANG"];

/// Where the first use of a predefined parameter is: `$_PWD` (followed by a character that
/// cannot continue a name) or `${_PWD...}`.
fn predefined_parameter(code: &str) -> Option<usize> {
    code.match_indices('$').map(|(i, _)| i).find(|&i| {
        let after = &code[i + 1..];
        let (name, braced) = match after.strip_prefix('{') {
            Some(b) => (b, true),
            None => (after, false),
        };
        PREDEFINED.iter().any(|p| {
            name.strip_prefix(p).is_some_and(|rest| {
                let next = rest.chars().next();
                if braced {
                    matches!(next, Some('}') | Some(' ') | Some('\t'))
                } else {
                    !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                }
            })
        })
    })
}

/// `$NAME=` or `$NAME =` at the start of a line (keepalived's `check_definition()`).
fn is_definition(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('$') else {
        return false;
    };
    let name_len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let name = &rest[..name_len];
    let starts_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts_ok
        && rest[name_len..]
            .trim_start_matches([' ', '\t'])
            .starts_with('=')
}

/// The words and braces of a line's code part.
fn words(
    code: &str,
    escapes: &[usize],
    span: &dyn Fn(usize, usize) -> Span,
    out: &mut dyn FnMut(Token) -> Result<(), Diag>,
) -> Result<(), Diag> {
    let mut chars = code.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if is_blank(c) {
            chars.next();
            continue;
        }
        if c == '{' || c == '}' {
            chars.next();
            out(Token {
                tok: if c == '{' { Tok::Open } else { Tok::Close },
                span: span(start, start + 1),
            })?;
            continue;
        }
        let mut word = String::new();
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if is_blank(c) || c == '{' || c == '}' {
                break;
            }
            chars.next();
            end = i + c.len_utf8();
            match c {
                '"' | '\'' => {
                    let quote = c;
                    loop {
                        let Some((j, q)) = chars.next() else {
                            return Err(Diag::new(span(i, i + 1), "unterminated quoted string"));
                        };
                        end = j + q.len_utf8();
                        if q == quote {
                            break;
                        }
                        if q == '\\' {
                            let Some((k, e)) = chars.next() else {
                                return Err(Diag::new(
                                    span(i, i + 1),
                                    "unterminated quoted string",
                                ));
                            };
                            end = k + e.len_utf8();
                            unescape(e, &mut chars, &mut word, &mut end);
                        } else {
                            word.push(q);
                        }
                    }
                }
                '\\' if escapes.contains(&i) => {
                    // `\#` or `\!`: the character itself (the comment scan guarantees it).
                    if let Some((k, e)) = chars.next() {
                        end = k + e.len_utf8();
                        word.push(e);
                    }
                }
                other => word.push(other),
            }
        }
        out(Token {
            tok: Tok::Word(word),
            span: span(start, end),
        })?;
    }
    Ok(())
}

/// The escape `\e` inside quotes (the backslash already read), as keepalived decodes it. `end`
/// follows the last character used.
fn unescape(e: char, chars: &mut Peekable<CharIndices>, word: &mut String, end: &mut usize) {
    // keepalived keeps the value in a C `char`: the low byte.
    let byte = |v: u32| char::from((v & 0xff) as u8);
    // Up to `max` more digits of `radix` after `first`.
    let mut digits = |first: u32, max: usize, radix: u32, chars: &mut Peekable<CharIndices>| {
        let mut v = first;
        for _ in 0..max {
            match chars
                .peek()
                .and_then(|&(k, d)| Some((k, d.to_digit(radix)?)))
            {
                Some((k, d)) => {
                    v = v * radix + d;
                    *end = k + 1;
                    chars.next();
                }
                None => break,
            }
        }
        v
    };
    match e {
        'a' => word.push('\x07'),
        'b' => word.push('\x08'),
        'E' => word.push('\x1b'),
        'f' => word.push('\x0c'),
        'n' => word.push('\n'),
        'r' => word.push('\r'),
        't' => word.push('\t'),
        'v' => word.push('\x0b'),
        // Two hex digits make the byte `\xXX` is documented as.
        'x' if chars.peek().is_some_and(|&(_, d)| d.is_ascii_hexdigit()) => {
            let v = digits(0, 2, 16, chars);
            word.push(byte(v));
        }
        'c' if chars.peek().is_some() => {
            if let Some((k, c)) = chars.next() {
                *end = k + c.len_utf8();
                word.push(byte(u32::from(c) & 0x1f));
            }
        }
        '0'..='7' => {
            let v = digits(u32::from(e) - u32::from('0'), 2, 8, chars);
            word.push(byte(v));
        }
        other => word.push(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Result<Vec<Tok>, String> {
        lex(FileId(0), text)
            .map(|t| t.into_iter().map(|t| t.tok).collect())
            .map_err(|d| d.message)
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.to_string())
    }

    #[test]
    fn words_braces_comments() {
        assert_eq!(
            toks("group{ VI_1 }  # x\n").unwrap(),
            [
                w("group"),
                Tok::Open,
                w("VI_1"),
                Tok::Close,
                Tok::Comment(" x".into()),
                Tok::Newline
            ]
        );
        assert_eq!(
            toks("state BACKUP ! MASTER").unwrap(),
            [
                w("state"),
                w("BACKUP"),
                Tok::Comment(" MASTER".into()),
                Tok::Newline
            ]
        );
        assert_eq!(
            toks("auth_pass ab\\#c \"d#e\"").unwrap(),
            [w("auth_pass"), w("ab#c"), w("d#e"), Tok::Newline]
        );
    }

    #[test]
    fn quotes_concatenate_and_escape() {
        assert_eq!(
            toks(r#"script a"b c"'d e' "\x41\t\101\q""#).unwrap(),
            [w("script"), w("ab cd e"), w("A\tAq"), Tok::Newline]
        );
        assert!(toks("script \"abc").unwrap_err().contains("unterminated"));
        // A `#` inside single quotes starts a comment, as in keepalived: the quote is then open.
        assert!(toks("script 'a#b'").unwrap_err().contains("unterminated"));
    }

    #[test]
    fn include_lines() {
        assert_eq!(
            toks("include /etc/{a,b}/*.conf # x").unwrap(),
            [
                Tok::Include {
                    directive: "include".into(),
                    pattern: "/etc/{a,b}/*.conf".into()
                },
                Tok::Comment(" x".into()),
                Tok::Newline
            ]
        );
        assert_eq!(
            toks("includea \"/a b/*.conf\"").unwrap()[0],
            Tok::Include {
                directive: "includea".into(),
                pattern: "/a b/*.conf".into()
            }
        );
        assert!(toks("include a b").is_err());
        // `include` must be followed by a name to be a directive.
        assert_eq!(toks("includes x").unwrap()[0], w("includes"));
    }

    #[test]
    fn refused_forms() {
        for text in [
            "@main router_id a",
            "$X=1",
            "$X = 1",
            "~SEQ(i,1,3) x",
            "script ${_PWD}/a.sh",
        ] {
            assert!(toks(text).is_err(), "{text}");
        }
        // A `$` that keepalived leaves alone.
        assert_eq!(toks("script $HOME").unwrap()[1], w("$HOME"));
        assert_eq!(toks("auth_pass a$_PWDx").unwrap()[1], w("a$_PWDx"));
        for text in ["script $_PWD/x", "script ${_RANDOM 1 9}", "x \"${_HASH}\""] {
            assert!(toks(text).is_err(), "{text}");
        }
    }
}
