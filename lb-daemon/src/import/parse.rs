//! Tokens to a tree of statements, keepalived's way: a statement is the words of a line, and a
//! `{` after them (on that line or a later one) opens its block, which the matching `}` closes.
//! Comments stay attached to what they sit on: the lines of comments above a statement, the
//! comment at the end of its line (for a block, of its `{` or `}` line), and the comments
//! before a block's `}`.
//!
//! Nothing here knows a keyword: a statement's meaning is `convert`'s business, so this part
//! is pure and small, and every malformed input is a [`Diag`] with the position of the brace
//! or word at fault.
use super::{
    lexer::{Tok, Token},
    source::Span,
    Diag,
};

/// Blocks deeper than this are refused (keepalived's deepest is 4: `virtual_server`,
/// `real_server`, `HTTP_GET`, `url`), so that hostile input cannot exhaust the stack of
/// the recursive passes after this one.
pub const MAX_DEPTH: usize = 16;

/// The most words, braces and comments one top-level statement (its block included) may
/// hold. The tree of a statement is built before it is converted, at some 100 bytes a word
/// against the two bytes a word can take in the text; this bounds it (to some 25 MB) whatever
/// the text. Far above what keepalived configurations hold: a `virtual_server` with a
/// thousand real servers, each with a check, is some 20 000.
pub const MAX_STATEMENT_ELEMENTS: usize = 250_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub span: Span,
}

/// A comment, or consecutive comment lines (joined by `\n`: a run of comment lines costs
/// its text, not a structure per line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub text: String,
    pub span: Span,
}

// The rarely used parts are boxed: a statement per line of a large block adds up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    /// At least one: the keyword, then its arguments.
    pub words: Vec<Word>,
    pub block: Option<Box<Block>>,
    /// The comment lines just above it (one [`Comment`] for the run).
    pub comments: Vec<Comment>,
    /// The comment at the end of its line (of its `{` line for a block).
    pub trailing: Option<Box<Comment>>,
    /// The comment at the end of its block's `}` line.
    pub closing: Option<Box<Comment>>,
}

impl Stmt {
    pub fn keyword(&self) -> &Word {
        // `words` is never empty: the parser makes a statement only from a word.
        &self.words[0]
    }

    pub fn args(&self) -> &[Word] {
        self.words.get(1..).unwrap_or(&[])
    }

    /// How the statement was written, for messages: its words, and `{ ... }` for a block.
    pub fn written(&self) -> String {
        let mut s = String::new();
        for (i, w) in self.words.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&w.text);
            // Only the first 80 characters are shown.
            if s.len() > 4 * 80 {
                break;
            }
        }
        if s.chars().count() > 80 {
            s = s.chars().take(77).collect::<String>() + "...";
        }
        if self.block.is_some() {
            s.push_str(" { ... }");
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub open: Span,
    pub close: Span,
    pub body: Vec<Stmt>,
    /// Comment lines after the last statement, before the `}`.
    pub tail: Vec<Comment>,
}

/// A whole configuration (every included file spliced in).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct File {
    pub body: Vec<Stmt>,
    /// Comment lines after the last statement.
    pub tail: Vec<Comment>,
}

/// Where a comment that follows something on the same line goes.
enum Trail {
    /// Nothing before it on its line: it is a comment line.
    None,
    /// The statement being read.
    Current,
    /// The statement whose block was opened on this line.
    Opened,
    /// The statement whose block was closed on this line.
    Closed,
}

struct Frame {
    /// The statement whose block this is (`None` at the top level).
    header: Option<Stmt>,
    open: Option<Span>,
    body: Vec<Stmt>,
    /// Comment lines waiting for the next statement (at most one run).
    comments: Vec<Comment>,
}

impl Frame {
    fn new(header: Option<Stmt>, open: Option<Span>) -> Self {
        Frame {
            header,
            open,
            body: Vec::new(),
            comments: Vec::new(),
        }
    }
}

/// Adds a comment line to the run of comment lines before it, or starts one.
fn add_comment_line(run: &mut Vec<Comment>, c: Comment) {
    match run.last_mut() {
        Some(last) => {
            last.text.push('\n');
            last.text.push_str(&c.text);
            last.span.end = c.span.end;
        }
        None => run.push(c),
    }
}

/// Tokens in, top-level statements out, each as soon as nothing that follows can change
/// it: so a configuration is converted one top-level block at a time and never held as a
/// whole tree (see [`MAX_STATEMENT_ELEMENTS`] for the one that is).
pub struct Parser {
    stack: Vec<Frame>,
    /// The words of the statement on the current line (moved out when it ends).
    words: Vec<Word>,
    comments: Vec<Comment>,
    trailing: Option<Comment>,
    /// A statement ended by a newline, which a `{` on a later line may still open a block for.
    held: Option<Stmt>,
    trail: Trail,
    /// Words, braces and comments of the top-level statement being read (with the comment
    /// lines before it).
    elements: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub fn new() -> Self {
        Parser {
            stack: vec![Frame::new(None, None)],
            words: Vec::new(),
            comments: Vec::new(),
            trailing: None,
            held: None,
            trail: Trail::None,
            elements: 0,
        }
    }

    fn top(&mut self) -> &mut Frame {
        if self.stack.is_empty() {
            self.stack.push(Frame::new(None, None));
        }
        let last = self.stack.len() - 1;
        &mut self.stack[last]
    }

    fn take_statement(&mut self) -> Option<Stmt> {
        if self.words.is_empty() {
            return None;
        }
        Some(Stmt {
            // Collected anew, so the statement's list is exactly as long as its words.
            words: self.words.drain(..).collect(),
            block: None,
            comments: std::mem::take(&mut self.comments),
            trailing: self.trailing.take().map(Box::new),
            closing: None,
        })
    }

    fn flush_held(&mut self) {
        if let Some(h) = self.held.take() {
            self.top().body.push(h);
        }
    }

    fn flush_current(&mut self) {
        if let Some(s) = self.take_statement() {
            self.top().body.push(s);
        }
    }

    /// Reads one token; `out` gets each top-level statement once it is complete.
    pub fn push(
        &mut self,
        Token { tok, span }: Token,
        out: &mut dyn FnMut(Stmt) -> Result<(), Diag>,
    ) -> Result<(), Diag> {
        match tok {
            Tok::Word(text) => {
                self.flush_held();
                if self.words.is_empty() {
                    if self.stack.len() == 1 {
                        // A new top-level statement: a new count.
                        self.elements = 0;
                    }
                    self.comments = std::mem::take(&mut self.top().comments);
                }
                self.words.push(Word { text, span });
                self.trail = Trail::Current;
                self.elements += 1;
            }
            Tok::Newline => {
                if let Some(s) = self.take_statement() {
                    self.flush_held();
                    self.held = Some(s);
                }
                self.trail = Trail::None;
            }
            Tok::Comment(text) => {
                let c = Comment { text, span };
                match self.trail {
                    Trail::Current => self.trailing = Some(c),
                    Trail::Opened => {
                        if let Some(h) = self.top().header.as_mut() {
                            h.trailing.get_or_insert_with(|| Box::new(c));
                        }
                    }
                    Trail::Closed => {
                        if let Some(s) = self.top().body.last_mut() {
                            s.closing = Some(Box::new(c));
                        }
                    }
                    Trail::None => {
                        self.flush_held();
                        // A line added to a run costs its text, not a structure.
                        if !self.top().comments.is_empty() {
                            self.elements = self.elements.saturating_sub(1);
                        }
                        add_comment_line(&mut self.top().comments, c);
                    }
                }
                self.elements += 1;
            }
            Tok::Open => {
                let header = match self.take_statement() {
                    Some(s) => {
                        self.flush_held();
                        s
                    }
                    None => self.held.take().ok_or_else(|| {
                        Diag::new(span, "`{` with no keyword before it to open a block for")
                    })?,
                };
                if self.stack.len() > MAX_DEPTH {
                    return Err(Diag::new(
                        span,
                        format!("blocks are nested more than {MAX_DEPTH} deep"),
                    ));
                }
                self.stack.push(Frame::new(Some(header), Some(span)));
                self.trail = Trail::Opened;
                self.elements += 1;
            }
            Tok::Close => {
                self.flush_current();
                self.flush_held();
                if self.stack.len() < 2 {
                    return Err(Diag::new(span, "`}` with no `{` before it to close"));
                }
                let Some(mut frame) = self.stack.pop() else {
                    return Err(Diag::new(span, "`}` with no `{` before it to close"));
                };
                let (Some(mut header), Some(open)) = (frame.header, frame.open) else {
                    return Err(Diag::new(span, "`}` with no `{` before it to close"));
                };
                frame.body.shrink_to_fit();
                header.block = Some(Box::new(Block {
                    open,
                    close: span,
                    body: frame.body,
                    tail: frame.comments,
                }));
                self.top().body.push(header);
                self.trail = Trail::Closed;
            }
            Tok::Include { .. } => {
                return Err(Diag::new(
                    span,
                    "internal error: an include was not expanded",
                ));
            }
        }
        self.emit(out)?;
        if self.elements > MAX_STATEMENT_ELEMENTS {
            let what = match self.stack.get(1).and_then(|f| f.header.as_ref()) {
                Some(h) => format!("the `{}` block", h.written().trim_end_matches(" { ... }")),
                None => "one statement".to_string(),
            };
            return Err(Diag::new(
                span,
                format!(
                    "{what} holds more than {MAX_STATEMENT_ELEMENTS} words, braces and \
                     comments: far more than a keepalived configuration has, so the importer \
                     stops here"
                ),
            ));
        }
        Ok(())
    }

    /// Hands the finished top-level statements to `out`. The last one is kept while a
    /// comment on its `}` line may still come.
    fn emit(&mut self, out: &mut dyn FnMut(Stmt) -> Result<(), Diag>) -> Result<(), Diag> {
        if self.stack.len() != 1 {
            return Ok(());
        }
        let keep = usize::from(matches!(self.trail, Trail::Closed));
        let body = &mut self.stack[0].body;
        let ready: Vec<Stmt> = body.drain(..body.len().saturating_sub(keep)).collect();
        ready.into_iter().try_for_each(&mut *out)
    }

    /// The end of the input: the last statements go to `out`; returns the comment lines
    /// after the last statement.
    pub fn finish(
        mut self,
        out: &mut dyn FnMut(Stmt) -> Result<(), Diag>,
    ) -> Result<Vec<Comment>, Diag> {
        self.flush_current();
        self.flush_held();
        if self.stack.len() > 1 {
            let open = self.stack.last().and_then(|f| f.open);
            if let Some(open) = open {
                return Err(Diag::new(
                    open,
                    "this `{` is never closed (a `}` is missing at or after it)",
                ));
            }
        }
        self.trail = Trail::None;
        self.emit(out)?;
        let top = self.stack.pop().unwrap_or_else(|| Frame::new(None, None));
        Ok(top.comments)
    }
}

/// The tree of a whole token list (for tools and tests: the importer itself streams).
pub fn parse(tokens: Vec<Token>) -> Result<File, Diag> {
    let mut p = Parser::new();
    let mut body = Vec::new();
    let mut keep = |s: Stmt| {
        body.push(s);
        Ok(())
    };
    for t in tokens {
        p.push(t, &mut keep)?;
    }
    let tail = p.finish(&mut keep)?;
    Ok(File { body, tail })
}

#[cfg(test)]
mod tests {
    use super::super::{lexer::lex, source::FileId};
    use super::*;

    fn tree(text: &str) -> Result<File, Diag> {
        parse(lex(FileId(0), text)?)
    }

    fn shape(stmts: &[Stmt]) -> String {
        stmts
            .iter()
            .map(|s| {
                let words: Vec<&str> = s.words.iter().map(|w| w.text.as_str()).collect();
                match &s.block {
                    Some(b) => format!("{}{{{}}}", words.join(" "), shape(&b.body)),
                    None => words.join(" "),
                }
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    #[test]
    fn blocks_on_one_or_more_lines() {
        let f = tree("a b {\n c 1\n d { e }\n}\nf\n{\n g\n}\nh { i } j\n").unwrap();
        assert_eq!(shape(&f.body), "a b{c 1;d{e}};f{g};h{i};j");
    }

    #[test]
    fn comments_stay_where_they_sit() {
        let f = tree("# above\n! also\nvrrp_instance VI_1 { # on the brace line\n  # inside\n  state BACKUP # MASTER\n  # before the brace\n} # after\n# end\n").unwrap();
        let s = &f.body[0];
        let texts = |c: &[Comment]| c.iter().map(|c| c.text.clone()).collect::<Vec<_>>();
        // A run of comment lines is one comment.
        assert_eq!(texts(&s.comments), [" above\n also"]);
        assert_eq!(s.trailing.as_ref().unwrap().text, " on the brace line");
        assert_eq!(s.closing.as_ref().unwrap().text, " after");
        let b = s.block.as_ref().unwrap();
        assert_eq!(texts(&b.body[0].comments), [" inside"]);
        assert_eq!(b.body[0].trailing.as_ref().unwrap().text, " MASTER");
        assert_eq!(texts(&b.tail), [" before the brace"]);
        assert_eq!(texts(&f.tail), [" end"]);
    }

    #[test]
    fn unbalanced_braces_are_located() {
        let at = |text: &str| tree(text).unwrap_err().span.start;
        assert_eq!(at("a {\n b {\n }\n"), 2);
        assert_eq!(at("a { }\n}\n"), 6);
        assert_eq!(at("{\n"), 0);
        let deep = "a {".repeat(MAX_DEPTH + 1);
        assert!(tree(&deep).unwrap_err().message.contains("nested"));
    }

    /// Each top-level statement goes out once nothing after it can change it: after its
    /// line for a statement without a block that a later `{` could open, after the rest of
    /// its `}` line for a block.
    #[test]
    fn top_level_statements_go_out_when_complete() {
        let span = Span::new(FileId(0), 0, 0);
        let word = |w: &str| Tok::Word(w.to_string());
        let mut p = Parser::new();
        let mut out: Vec<String> = Vec::new();
        let feed = |p: &mut Parser, toks: Vec<Tok>, out: &mut Vec<String>| {
            for tok in toks {
                p.push(Token { tok, span }, &mut |s| {
                    out.push(s.written());
                    Ok(())
                })
                .unwrap();
            }
        };
        feed(
            &mut p,
            vec![
                word("a"),
                Tok::Open,
                Tok::Newline,
                word("b"),
                Tok::Newline,
                Tok::Close,
            ],
            &mut out,
        );
        assert!(out.is_empty(), "a comment on the `}}` line may still come");
        feed(
            &mut p,
            vec![Tok::Comment(" closing".into()), Tok::Newline],
            &mut out,
        );
        assert_eq!(out, ["a { ... }"]);
        feed(&mut p, vec![word("c"), Tok::Newline], &mut out);
        assert_eq!(
            out,
            ["a { ... }"],
            "a `{{` on the next line could open c's block"
        );
        feed(&mut p, vec![word("d"), Tok::Newline], &mut out);
        assert_eq!(out, ["a { ... }", "c"]);
        let tail = p
            .finish(&mut |s| {
                out.push(s.written());
                Ok(())
            })
            .unwrap();
        assert_eq!(out, ["a { ... }", "c", "d"]);
        assert!(tail.is_empty());
        let f = tree("a {\n} # after\n").unwrap();
        assert_eq!(f.body[0].closing.as_ref().unwrap().text, " after");
    }

    /// One top-level statement may hold only so much; the next starts a new count.
    #[test]
    fn a_statement_holds_a_bounded_number_of_elements() {
        let big = format!(
            "global_defs {{\n{}}}\n",
            "x\n".repeat(MAX_STATEMENT_ELEMENTS)
        );
        let e = tree(&big).unwrap_err();
        assert!(
            e.message
                .contains("the `global_defs` block holds more than"),
            "{}",
            e.message
        );
        let many = "x\n".repeat(MAX_STATEMENT_ELEMENTS + 10);
        assert_eq!(tree(&many).unwrap().body.len(), MAX_STATEMENT_ELEMENTS + 10);
        let comments = "# x\n".repeat(MAX_STATEMENT_ELEMENTS + 10);
        assert_eq!(tree(&comments).unwrap().tail.len(), 1);
    }
}
