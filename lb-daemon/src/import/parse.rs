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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stmt {
    /// At least one: the keyword, then its arguments.
    pub words: Vec<Word>,
    pub block: Option<Block>,
    /// The comment lines just above it.
    pub comments: Vec<Comment>,
    /// The comment at the end of its line (of its `{` line for a block).
    pub trailing: Option<Comment>,
    /// The comment at the end of its block's `}` line.
    pub closing: Option<Comment>,
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
        let mut s = self
            .words
            .iter()
            .map(|w| w.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
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
    /// Comment lines waiting for the next statement.
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

struct Parser {
    stack: Vec<Frame>,
    /// The words of the statement on the current line.
    words: Vec<Word>,
    comments: Vec<Comment>,
    trailing: Option<Comment>,
    /// A statement ended by a newline, which a `{` on a later line may still open a block for.
    held: Option<Stmt>,
    trail: Trail,
}

impl Parser {
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
            words: std::mem::take(&mut self.words),
            block: None,
            comments: std::mem::take(&mut self.comments),
            trailing: self.trailing.take(),
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
}

pub fn parse(tokens: Vec<Token>) -> Result<File, Diag> {
    let mut p = Parser {
        stack: vec![Frame::new(None, None)],
        words: Vec::new(),
        comments: Vec::new(),
        trailing: None,
        held: None,
        trail: Trail::None,
    };
    for Token { tok, span } in tokens {
        match tok {
            Tok::Word(text) => {
                p.flush_held();
                if p.words.is_empty() {
                    p.comments = std::mem::take(&mut p.top().comments);
                }
                p.words.push(Word { text, span });
                p.trail = Trail::Current;
            }
            Tok::Newline => {
                if let Some(s) = p.take_statement() {
                    p.flush_held();
                    p.held = Some(s);
                }
                p.trail = Trail::None;
            }
            Tok::Comment(text) => {
                let c = Comment { text, span };
                match p.trail {
                    Trail::Current => p.trailing = Some(c),
                    Trail::Opened => {
                        if let Some(h) = p.top().header.as_mut() {
                            h.trailing.get_or_insert(c);
                        }
                    }
                    Trail::Closed => {
                        if let Some(s) = p.top().body.last_mut() {
                            s.closing = Some(c);
                        }
                    }
                    Trail::None => {
                        p.flush_held();
                        p.top().comments.push(c);
                    }
                }
            }
            Tok::Open => {
                let header = match p.take_statement() {
                    Some(s) => {
                        p.flush_held();
                        s
                    }
                    None => p.held.take().ok_or_else(|| {
                        Diag::new(span, "`{` with no keyword before it to open a block for")
                    })?,
                };
                if p.stack.len() > MAX_DEPTH {
                    return Err(Diag::new(
                        span,
                        format!("blocks are nested more than {MAX_DEPTH} deep"),
                    ));
                }
                p.stack.push(Frame::new(Some(header), Some(span)));
                p.trail = Trail::Opened;
            }
            Tok::Close => {
                p.flush_current();
                p.flush_held();
                if p.stack.len() < 2 {
                    return Err(Diag::new(span, "`}` with no `{` before it to close"));
                }
                let Some(frame) = p.stack.pop() else {
                    return Err(Diag::new(span, "`}` with no `{` before it to close"));
                };
                let (Some(mut header), Some(open)) = (frame.header, frame.open) else {
                    return Err(Diag::new(span, "`}` with no `{` before it to close"));
                };
                header.block = Some(Block {
                    open,
                    close: span,
                    body: frame.body,
                    tail: frame.comments,
                });
                p.top().body.push(header);
                p.trail = Trail::Closed;
            }
            Tok::Include { .. } => {
                return Err(Diag::new(
                    span,
                    "internal error: an include was not expanded",
                ));
            }
        }
    }
    p.flush_current();
    p.flush_held();
    if p.stack.len() > 1 {
        let open = p.stack.last().and_then(|f| f.open);
        if let Some(open) = open {
            return Err(Diag::new(
                open,
                "this `{` is never closed (a `}` is missing at or after it)",
            ));
        }
    }
    let top = p.stack.pop().unwrap_or_else(|| Frame::new(None, None));
    Ok(File {
        body: top.body,
        tail: top.comments,
    })
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
        assert_eq!(texts(&s.comments), [" above", " also"]);
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
}
