//! The TOML the importer writes, and where each of its lines came from.
//!
//! A small document model rather than `toml`'s serializer, because the output must carry
//! comments (the user's, and the importer's own about defaults and unsupported keywords), and
//! because each line must map back to the keepalived text it was made from: `lb-daemon`'s own
//! checks run on the TOML, and an error they find is reported at the keepalived line and
//! column (see `mod.rs`). So every value is on its own line, arrays one element per line, and
//! tables with several keys are `[table]` sections rather than inline tables.
use super::source::Span;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    /// A decimal number as written (`0.5`), already in TOML's syntax.
    Float(String),
    Bool(bool),
    Array(Vec<Elem>),
    /// A one-line table: `{ name = "eth1", weight = -20 }`.
    Inline(Vec<(&'static str, Value)>),
}

/// An array element, on its own line.
#[derive(Debug, Clone, PartialEq)]
pub struct Elem {
    pub value: Value,
    pub span: Option<Span>,
    /// Comment lines above it, inside the array.
    pub comments: Vec<String>,
    pub trailing: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: &'static str,
    pub value: Value,
    /// The keepalived text it came from (its value, else its keyword).
    pub span: Option<Span>,
    /// Comment lines above it.
    pub comments: Vec<String>,
    pub trailing: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Entry(Entry),
    Comment(String),
}

/// A table and its sub-tables.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// Comment lines above its header.
    pub comments: Vec<String>,
    /// The comment at the end of its header line.
    pub trailing: Option<String>,
    /// The keepalived block it came from.
    pub span: Option<Span>,
    pub items: Vec<Item>,
    pub children: Vec<Child>,
    /// Comment lines after everything else.
    pub tail: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    pub name: &'static str,
    /// `[[a.b]]` (one of several) rather than `[a.b]`.
    pub array: bool,
    pub table: Table,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.items.iter().find_map(|i| match i {
            Item::Entry(e) if e.key == key => Some(e),
            _ => None,
        })
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        self.items.iter_mut().find_map(|i| match i {
            Item::Entry(e) if e.key == key => Some(e),
            _ => None,
        })
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Adds an entry; the caller has made sure the key is not there yet.
    pub fn push(&mut self, entry: Entry) {
        self.items.push(Item::Entry(entry));
    }

    pub fn comment(&mut self, text: impl Into<String>) {
        self.items.push(Item::Comment(text.into()));
    }

    /// Gives back what its lists reserved beyond their length: a configuration of many small
    /// blocks is many small tables, and an empty-handed list reserves room for four.
    pub fn shrink(&mut self) {
        self.comments.shrink_to_fit();
        self.items.shrink_to_fit();
        self.tail.shrink_to_fit();
        self.children.shrink_to_fit();
        for c in &mut self.children {
            c.table.shrink();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
            && self.children.is_empty()
            && self.comments.is_empty()
            && self.tail.is_empty()
            && self.trailing.is_none()
    }
}

/// A top-level section: `[global_defs]`, `[[vrrp_instance]]`...
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub name: &'static str,
    pub array: bool,
    pub table: Table,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Doc {
    /// Comment lines at the top.
    pub header: Vec<String>,
    pub sections: Vec<Section>,
    /// Comment lines at the end.
    pub tail: Vec<String>,
}

/// For each line of the output, the keepalived text it came from, kept as runs of lines with
/// the same origin (a block's comment lines are one run, so they cost nothing per line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineMap {
    /// (first line index of the run, its origin), by line index.
    runs: Vec<(u32, Option<Span>)>,
    lines: u32,
}

impl LineMap {
    fn push(&mut self, span: Option<Span>) {
        if self.runs.last().is_none_or(|r| r.1 != span) {
            self.runs.push((self.lines, span));
        }
        self.lines = self.lines.saturating_add(1);
    }

    /// The origin of line index `i` (0 = line 1); `None` past the end.
    pub fn get(&self, i: usize) -> Option<Option<Span>> {
        let i = u32::try_from(i).ok().filter(|&i| i < self.lines)?;
        let run = self.runs.partition_point(|r| r.0 <= i).checked_sub(1)?;
        self.runs.get(run).map(|r| r.1)
    }

    /// The number of lines.
    pub fn len(&self) -> usize {
        self.lines as usize
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }
}

/// The TOML text, and for each of its lines the keepalived text it came from.
pub fn render(doc: &Doc) -> (String, LineMap) {
    let mut w = Writer::default();
    for c in &doc.header {
        w.comment(0, c, None);
    }
    for s in &doc.sections {
        w.blank();
        w.table(s.name, s.array, &s.table, 0);
    }
    if !doc.tail.is_empty() {
        w.blank();
    }
    for c in &doc.tail {
        w.comment(0, c, None);
    }
    (w.text, w.spans)
}

#[derive(Default)]
struct Writer {
    text: String,
    spans: LineMap,
}

impl Writer {
    fn line(&mut self, s: &str, span: Option<Span>) {
        self.text.push_str(s);
        self.text.push('\n');
        self.spans.push(span);
    }

    fn blank(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with("\n\n") {
            self.line("", None);
        }
    }

    fn comment(&mut self, indent: usize, text: &str, span: Option<Span>) {
        // One output line per line of text: a comment never runs into the TOML.
        for l in text.split('\n') {
            let l = sanitize_comment(l);
            let sep = if l.is_empty() || l.starts_with([' ', '\t']) {
                ""
            } else {
                " "
            };
            self.line(&format!("{:indent$}#{sep}{l}", ""), span);
        }
    }

    fn table(&mut self, path: &str, array: bool, t: &Table, depth: usize) {
        let indent = depth * 2;
        for c in &t.comments {
            self.comment(indent, c, t.span);
        }
        let header = if array {
            format!("{:indent$}[[{path}]]", "")
        } else {
            format!("{:indent$}[{path}]", "")
        };
        self.line(&with_trailing(header, &t.trailing), t.span);
        for item in &t.items {
            match item {
                Item::Comment(c) => self.comment(indent, c, t.span),
                Item::Entry(e) => self.entry(indent, e),
            }
        }
        for c in &t.children {
            self.blank();
            self.table(&format!("{path}.{}", c.name), c.array, &c.table, depth + 1);
        }
        for c in &t.tail {
            self.comment(indent, c, t.span);
        }
    }

    fn entry(&mut self, indent: usize, e: &Entry) {
        for c in &e.comments {
            self.comment(indent, c, e.span);
        }
        match &e.value {
            Value::Array(elems) if !elems.is_empty() => {
                self.line(
                    &with_trailing(format!("{:indent$}{} = [", "", e.key), &e.trailing),
                    e.span,
                );
                for el in elems {
                    for c in &el.comments {
                        self.comment(indent + 2, c, el.span.or(e.span));
                    }
                    let text = format!("{:w$}{},", "", inline(&el.value), w = indent + 2);
                    self.line(&with_trailing(text, &el.trailing), el.span.or(e.span));
                }
                self.line(&format!("{:indent$}]", ""), e.span);
            }
            v => {
                let text = format!("{:indent$}{} = {}", "", e.key, inline(v));
                self.line(&with_trailing(text, &e.trailing), e.span);
            }
        }
    }
}

fn with_trailing(mut line: String, trailing: &Option<String>) -> String {
    if let Some(t) = trailing {
        let t = sanitize_comment(t);
        let sep = if t.starts_with([' ', '\t']) { "" } else { " " };
        line.push_str(&format!(" #{sep}{t}"));
    }
    line
}

/// TOML comments may hold any character but the control characters other than tab.
fn sanitize_comment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c.is_control() && c != '\t') || c == '\u{7f}' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

fn inline(v: &Value) -> String {
    match v {
        Value::Str(s) => quote(s),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Array(elems) => {
            let inner: Vec<String> = elems.iter().map(|e| inline(&e.value)).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Inline(kv) => {
            let inner: Vec<String> = kv
                .iter()
                .map(|(k, v)| format!("{k} = {}", inline(v)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
    }
}

/// A TOML basic string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::super::source::FileId;
    use super::*;

    fn span(n: usize) -> Option<Span> {
        Some(Span::new(FileId(0), n, n))
    }

    #[test]
    fn renders_comments_and_maps_lines() {
        let mut t = Table {
            comments: vec!["above".into()],
            trailing: Some(" on the header".into()),
            span: span(1),
            ..Default::default()
        };
        t.push(Entry {
            key: "name",
            value: Value::Str("VI_\"1\"\n".into()),
            span: span(2),
            comments: vec![],
            trailing: Some("MASTER".into()),
        });
        t.push(Entry {
            key: "virtual_ipaddress",
            value: Value::Array(vec![Elem {
                value: Value::Str("192.0.2.1".into()),
                span: span(3),
                comments: vec![],
                trailing: None,
            }]),
            span: span(4),
            comments: vec!["two\nlines\u{1}".into()],
            trailing: None,
        });
        let doc = Doc {
            header: vec!["head".into()],
            sections: vec![Section {
                name: "vrrp_instance",
                array: true,
                table: t,
            }],
            tail: vec![],
        };
        let (text, spans) = render(&doc);
        assert_eq!(
            text,
            "# head\n\n# above\n[[vrrp_instance]] # on the header\nname = \"VI_\\\"1\\\"\\n\" # MASTER\n\
             # two\n# lines\u{fffd}\nvirtual_ipaddress = [\n  \"192.0.2.1\",\n]\n"
        );
        assert_eq!(spans.len(), text.lines().count());
        assert_eq!(spans.get(3), Some(span(1)));
        assert_eq!(spans.get(8), Some(span(3)));
        assert_eq!(spans.get(0), Some(None));
        assert_eq!(spans.get(99), None);
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["vrrp_instance"][0]["name"].as_str(),
            Some("VI_\"1\"\n")
        );
    }
}
