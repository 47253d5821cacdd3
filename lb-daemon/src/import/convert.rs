//! keepalived's statements to lb-daemon's TOML document.
//!
//! Each supported keyword becomes its TOML key (keepalived's names are lb-daemon's); what
//! lb-daemon does not support is recorded, with its position and why, and left in the output as
//! a comment. Three things need more than a rename, and each is commented where it is done:
//!
//! * **Inheritance.** keepalived's "the virtual server setting is the default for real
//!   servers, and the real server setting is the default for checkers" for `retry`,
//!   `delay_before_retry`, `warmup`, `connect_timeout`, `virtualhost`, `inhibit_on_failure` and
//!   `weight`: lb-daemon reads these per check (or per real server), so they are copied down to
//!   every check or real server that does not set its own. A sync group's unweighted
//!   `track_interface`/`track_script` are copied to its members (the group faults together
//!   either way).
//! * **Defaults.** Where keepalived's default differs from lb-daemon's, or lb-daemon has none,
//!   the output states keepalived's value with a comment saying so (see [`super`]).
//! * **Values lb-daemon cannot express** (a scheduler it does not have, NAT for a service of
//!   every port, shell quoting inside a command line) are errors at their position: dropping
//!   them would change what the configuration does.
//!
//! Ranges are left to `lb-daemon`'s own checks, which run on the output and whose errors are
//! reported at the keepalived position of the value (see `mod.rs`); here values are only
//! checked for their form (a number, an address) and their type's range.
use std::{collections::HashMap, net::IpAddr};

use super::{
    emit::{Child, Doc, Elem, Entry, Section, Table, Value},
    keywords::{self, Ctx},
    parse::{Block, Comment, File, Stmt, Word},
    source::{self, Files, Lookup, Sources, Span},
    Diag, Options,
};

/// keepalived's `IPVS_SVC_PERSISTENT_TIMEOUT`: `persistence_timeout` without a value, and the
/// timeout keepalived sets when `persistence_granularity` or port 0 needs persistence.
const DEFAULT_PERSISTENCE_TIMEOUT: i64 = 360;
/// keepalived's `VRRP_PRIO_DFL` and `VRRP_PRIO_OWNER`.
const DEFAULT_PRIORITY: i64 = 100;
const OWNER_PRIORITY: i64 = 255;
/// Where the importer says the sync key goes (keepalived has none).
pub(crate) const SYNC_KEY_PLACEHOLDER: &str = "/etc/lb-daemon/sync.key";
/// The most unsupported keywords listed: each costs a message and a comment in the output,
/// and a file with more is not a keepalived configuration lb-daemon can run.
pub(crate) const MAX_UNSUPPORTED: usize = 10_000;
/// The most errors reported: each costs a message, and a file that is not keepalived's can
/// have one a line.
pub(crate) const MAX_ERRORS: usize = 1000;
/// The most tracker entries that sync groups copy to their members in all (members times
/// trackers: a few text lines make a great many copies).
const MAX_TRACK_COPIES: usize = 100_000;

/// Something keepalived.conf says that lb-daemon does not support.
#[derive(Debug, Clone)]
pub(crate) struct Unsupported {
    pub span: Span,
    /// The block it is in: `vrrp_instance VI_1`.
    pub block: String,
    /// How it was written.
    pub written: String,
    pub reason: String,
}

pub(crate) struct Converted {
    pub doc: Doc,
    pub unsupported: Vec<Unsupported>,
    pub warnings: Vec<Diag>,
}

/// What an instance's defaults and the cross-block checks need to know of it.
struct Instance {
    table: Table,
    name: String,
    span: Span,
    state: Option<String>,
    priority: Option<i64>,
    interface: Option<String>,
    /// Each virtual address and its `dev`.
    vips: Vec<(IpAddr, Option<String>)>,
    /// `track_script` entries with an explicit `weight 0`.
    zero_weight_scripts: Vec<(String, Span)>,
}

struct Group {
    table: Table,
    members: Vec<String>,
    /// Unweighted `track_interface`/`track_script` entries, to copy to the members.
    tracks: Vec<(&'static str, Elem)>,
}

struct Server {
    table: Table,
    /// Its first VIP (a `group`'s, once [`Cx::finish`] has found the group).
    vip: IpAddr,
    /// `virtual_server group NAME`: the group, resolved at the end (it may come later).
    group: Option<(String, Span)>,
    /// A group's every address (filled at the end for `group NAME`): all held by VRRP
    /// instances, or none.
    addresses: Vec<IpAddr>,
    span: Span,
    /// It or one of its real servers is NAT'd: the program must see the replies.
    nat: bool,
}

/// keepalived's IPVS sync daemon: `lvs_sync_daemon` in global_defs, or an instance's
/// `lvs_sync_daemon_interface`; it becomes the `[sync]` section.
struct SyncDaemon {
    /// Where it was written, and how.
    span: Span,
    written: String,
    comments: Vec<String>,
    interface: (String, Span),
    /// The instance whose master sends (the block of `lvs_sync_daemon_interface`).
    instance: (String, Span),
    /// `id`, `maxlen`, `port`, `ttl` (TOML key, value, place).
    numbers: Vec<(&'static str, i64, Span)>,
    group: Option<(String, Span)>,
}

/// Settings a virtual or real server passes down (keepalived's inheritance).
#[derive(Default, Clone)]
struct Inherited {
    /// (TOML key, value, where it was set, which block set it).
    items: Vec<(&'static str, Value, Span, &'static str)>,
}

impl Inherited {
    fn get(&self, key: &str) -> Option<&(&'static str, Value, Span, &'static str)> {
        self.items.iter().find(|i| i.0 == key)
    }
}

struct Cx<'a> {
    sources: &'a Sources,
    /// Where scripts named without a path are looked for.
    files: &'a dyn Files,
    opts: &'a Options,
    unsupported: Vec<Unsupported>,
    warnings: Vec<Diag>,
    global: Option<Table>,
    script_security: bool,
    /// Any script or hook: keepalived's script defaults then matter.
    scripts_named: bool,
    /// global_defs' `vrrp_garp_master_*`: the instances' defaults.
    garp: Vec<(&'static str, Value, Span)>,
    /// global_defs' `vrrp_version`.
    vrrp_version: Option<i64>,
    scripts: Vec<(Table, String, i64)>,
    /// keepalived's `track_file` blocks.
    track_files: Vec<Table>,
    /// keepalived's `vrrp_track_process` blocks.
    track_processes: Vec<Table>,
    /// keepalived's `virtual_server_group` blocks: each entry's text (`fwmark N` too) and
    /// where it is.
    vs_groups: HashMap<String, Vec<(String, Span)>>,
    instances: Vec<Instance>,
    groups: Vec<Group>,
    servers: Vec<Server>,
    sync: Option<SyncDaemon>,
    /// Comments for the end of the output (what sat around unsupported top-level blocks).
    tail: Vec<String>,
    /// Where the unsupported keyword past [`MAX_UNSUPPORTED`] is.
    too_many_unsupported: Option<Span>,
    /// The errors so far: a statement with an error is left out and the next one read, so
    /// that one run reports them all.
    errors: Vec<Diag>,
    /// Where the error past [`MAX_ERRORS`] is.
    too_many_errors: Option<Span>,
    /// Tracker entries the sync groups so far copy to their members.
    track_copies: usize,
}

/// The converter, fed one top-level statement at a time ([`Converter::statement`]), so the
/// tree of the whole file never has to exist.
pub(crate) struct Converter<'a>(Cx<'a>);

impl<'a> Converter<'a> {
    pub(crate) fn new(sources: &'a Sources, files: &'a dyn Files, opts: &'a Options) -> Self {
        Converter(Cx {
            sources,
            files,
            opts,
            unsupported: Vec::new(),
            warnings: Vec::new(),
            global: None,
            script_security: false,
            scripts_named: false,
            garp: Vec::new(),
            vrrp_version: None,
            scripts: Vec::new(),
            track_files: Vec::new(),
            track_processes: Vec::new(),
            vs_groups: HashMap::new(),
            instances: Vec::new(),
            groups: Vec::new(),
            servers: Vec::new(),
            sync: None,
            tail: Vec::new(),
            too_many_unsupported: None,
            errors: Vec::new(),
            too_many_errors: None,
            track_copies: 0,
        })
    }

    /// Converts one top-level statement. Its errors are kept for [`Converter::finish`]; an
    /// `Err` is a limit reached, where reading stops.
    pub(crate) fn statement(&mut self, s: &Stmt) -> Result<(), Diag> {
        let r = self.0.top(s);
        self.0.recover(s, r);
        self.0.limit()
    }

    /// The document, once every statement is in; `tail` is the comment lines after the last.
    /// `Err`: every error found, in the order found.
    pub(crate) fn finish(mut self, tail: &[Comment]) -> Result<Converted, Vec<Diag>> {
        self.0.tail.extend(texts(tail));
        self.0.finish()
    }

    /// The errors found before reading stopped at `stop` (an error of the text, or a limit of
    /// [`Converter::statement`]), and `stop`.
    pub(crate) fn abort(self, stop: Diag) -> Vec<Diag> {
        let mut errors = self.0.errors;
        errors.push(stop);
        errors
    }
}

/// A whole tree at once.
#[allow(dead_code)]
pub(crate) fn convert(
    file: &File,
    sources: &Sources,
    files: &dyn Files,
    opts: &Options,
) -> Result<Converted, Vec<Diag>> {
    let mut c = Converter::new(sources, files, opts);
    for s in &file.body {
        if let Err(stop) = c.statement(s) {
            return Err(c.abort(stop));
        }
    }
    c.finish(&file.tail)
}

fn texts(c: &[Comment]) -> Vec<String> {
    c.iter().map(|c| c.text.clone()).collect()
}

/// A table for a block statement, carrying its comments.
fn block_table(s: &Stmt) -> Table {
    let mut tail = s.block.as_ref().map(|b| texts(&b.tail)).unwrap_or_default();
    tail.extend(s.closing.as_ref().map(|c| c.text.clone()));
    Table {
        comments: texts(&s.comments),
        trailing: s.trailing.as_ref().map(|c| c.text.clone()),
        span: Some(s.keyword().span),
        tail,
        ..Default::default()
    }
}

/// An entry made by the importer, with the comment that says why.
fn generated(key: &'static str, value: Value, span: Span, why: impl Into<String>) -> Entry {
    Entry {
        key,
        value,
        span: Some(span),
        comments: Vec::new(),
        trailing: Some(why.into()),
    }
}

/// The `reverse` or `noreverse` after a weight: whether it reverses, and where it is.
type ReverseWord = Option<(bool, Span)>;

/// keepalived's `weight N [reverse|noreverse]` (of a vrrp_script, a track_file, a
/// FILE_CHECK): the number's word, its value, and the reverse word if any.
fn weight_arg(s: &Stmt) -> Result<(&Word, i64, ReverseWord), Diag> {
    no_block(s)?;
    let (w, reverse) = match s.args() {
        [w] => (w, None),
        [w, r] if r.text == "noreverse" => (w, Some((false, r.span))),
        [w, r] if r.text == "reverse" => (w, Some((true, r.span))),
        [] => return Err(Diag::new(s.keyword().span, "`weight` needs a value")),
        [_, extra, ..] => return Err(Diag::new(extra.span, "expected `weight N [reverse]`")),
    };
    Ok((
        w,
        int(w, i64::from(i32::MIN), i64::from(i32::MAX))?,
        reverse,
    ))
}

fn no_block(s: &Stmt) -> Result<(), Diag> {
    match &s.block {
        Some(b) => Err(Diag::new(
            b.open,
            format!("`{}` takes no {{ }} block", s.keyword().text),
        )),
        None => Ok(()),
    }
}

fn block(s: &Stmt) -> Result<&Block, Diag> {
    s.block.as_deref().ok_or_else(|| {
        Diag::new(
            s.keyword().span,
            format!("`{}` needs a {{ }} block", s.keyword().text),
        )
    })
}

/// The one value of a keyword.
/// A forwarding method as keepalived's `lb_kind`/`lvs_method` writes it: `DR`, `NAT`, or
/// `TUN [type ipip|gue|gre] [port N] [nocsum]`, the options in any order.
struct Method {
    /// The tunnel's type and where the file says it (`None`: `DR` or `NAT`).
    tunnel: Option<(crate::model::TunnelKind, Option<Span>)>,
    port: Option<(u16, Span)>,
    nat: bool,
}

impl Method {
    /// Its name in the TOML (keepalived's).
    fn name(&self) -> &'static str {
        match (self.nat, &self.tunnel) {
            (true, _) => "NAT",
            (false, Some(_)) => "TUN",
            (false, None) => "DR",
        }
    }
}

fn method(st: &Stmt) -> Result<Method, Diag> {
    use crate::model::TunnelKind;
    let args = st.args();
    let w = &args[0];
    match w.text.as_str() {
        m @ ("DR" | "NAT") => {
            if let Some(extra) = args.get(1) {
                return Err(Diag::new(extra.span, format!("`{m}` takes no options")));
            }
            return Ok(Method {
                tunnel: None,
                port: None,
                nat: m == "NAT",
            });
        }
        "TUN" => {}
        _ => {
            return Err(Diag::new(
                w.span,
                format!(
                    "unknown forwarding method `{}` (keepalived has NAT, DR and TUN)",
                    w.text
                ),
            ))
        }
    }
    let mut kind = None;
    let mut port = None;
    let mut rest = args[1..].iter();
    while let Some(o) = rest.next() {
        match o.text.as_str() {
            "type" => {
                let v = rest
                    .next()
                    .ok_or_else(|| Diag::new(o.span, "`type` needs ipip, gue or gre"))?;
                let k: TunnelKind = v.text.parse().map_err(|e: String| Diag::new(v.span, e))?;
                kind = Some((k, Some(v.span)));
            }
            "port" => {
                let v = rest
                    .next()
                    .ok_or_else(|| Diag::new(o.span, "`port` needs a number"))?;
                let p = v
                    .text
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| Diag::new(v.span, "a port is 1..=65535"))?;
                port = Some((p, v.span));
            }
            // keepalived's default: no checksum in the tunnel header, what lb-daemon sends.
            "nocsum" => {}
            "csum" | "remcsum" => {
                return Err(Diag::new(
                    o.span,
                    format!(
                        "`{}` is not supported: lb-daemon sends tunnels without checksums \
                         (keepalived's `nocsum`, its default)",
                        o.text
                    ),
                ))
            }
            _ => {
                return Err(Diag::new(
                    o.span,
                    format!("unknown TUN option `{}` (type, port, nocsum)", o.text),
                ))
            }
        }
    }
    let kind = kind.unwrap_or((TunnelKind::Ipip, None));
    // keepalived's rule: "gue tunnels require port, otherwise cannot have port".
    match (kind.0, port) {
        (TunnelKind::Gue, None) => Err(Diag::new(w.span, "a gue tunnel needs `port N`")),
        (k, Some((_, span))) if k != TunnelKind::Gue => Err(Diag::new(
            span,
            format!("only a gue tunnel has a port, not {}", k.name()),
        )),
        _ => Ok(Method {
            tunnel: Some(kind),
            port,
            nat: false,
        }),
    }
}

fn one(s: &Stmt) -> Result<&Word, Diag> {
    no_block(s)?;
    match s.args() {
        [w] => Ok(w),
        [] => Err(Diag::new(
            s.keyword().span,
            format!("`{}` needs a value", s.keyword().text),
        )),
        [_, extra, ..] => Err(Diag::new(
            extra.span,
            format!(
                "`{}` takes one value: this is one too many",
                s.keyword().text
            ),
        )),
    }
}

fn no_args(s: &Stmt) -> Result<(), Diag> {
    no_block(s)?;
    match s.args().first() {
        Some(w) => Err(Diag::new(
            w.span,
            format!("`{}` takes no value", s.keyword().text),
        )),
        None => Ok(()),
    }
}

/// keepalived's `<BOOL>` after a keyword that alone means "on".
fn flag(s: &Stmt) -> Result<(bool, Span), Diag> {
    no_block(s)?;
    match s.args() {
        [] => Ok((true, s.keyword().span)),
        [w] => match w.text.as_str() {
            "on" | "true" | "yes" => Ok((true, w.span)),
            "off" | "false" | "no" => Ok((false, w.span)),
            _ => Err(Diag::new(
                w.span,
                format!("`{}`: expected on, off, true, false, yes or no", w.text),
            )),
        },
        [_, extra, ..] => Err(Diag::new(
            extra.span,
            format!(
                "`{}` takes at most one value: this is one too many",
                s.keyword().text
            ),
        )),
    }
}

fn int(w: &Word, min: i64, max: i64) -> Result<i64, Diag> {
    let t = w.text.strip_prefix('+').unwrap_or(&w.text);
    let digits = t.strip_prefix('-').unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Diag::new(w.span, format!("`{}` is not an integer", w.text)));
    }
    match t.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(Diag::new(
            w.span,
            format!("{} is out of range {min}..={max}", w.text),
        )),
    }
}

/// keepalived's `lvs_timeouts [tcp S] [tcpfin S] [udp S]` (at least one), as the TOML's
/// inline table.
fn lvs_timeouts(st: &Stmt) -> Result<Vec<(&'static str, Value)>, Diag> {
    no_block(st)?;
    let mut out: Vec<(&'static str, Value)> = Vec::new();
    let mut args = st.args().iter();
    while let Some(k) = args.next() {
        let name = match k.text.as_str() {
            "tcp" => "tcp",
            "tcpfin" => "tcpfin",
            "udp" => "udp",
            other => {
                return Err(Diag::new(
                    k.span,
                    format!("`lvs_timeouts`: {other}: expected tcp, tcpfin or udp"),
                ))
            }
        };
        let Some(v) = args.next() else {
            return Err(Diag::new(
                k.span,
                format!("`lvs_timeouts`: {name} needs seconds"),
            ));
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(Diag::new(
                k.span,
                format!("`lvs_timeouts`: {name} is given twice"),
            ));
        }
        // keepalived's range: 0 (IPVS's default kept: the key left out) to 31 days.
        let secs = int(v, 0, 31 * 86_400)?;
        if secs != 0 {
            out.push((name, Value::Int(secs)));
        }
    }
    if st.args().is_empty() {
        return Err(Diag::new(
            st.keyword().span,
            "`lvs_timeouts` needs at least one of tcp, tcpfin and udp",
        ));
    }
    Ok(out)
}

fn uint(w: &Word) -> Result<i64, Diag> {
    int(w, 0, i64::from(u32::MAX))
}

/// keepalived's `<TIMER>`: seconds, maybe with a fraction, as a TOML integer or float.
fn seconds(w: &Word) -> Result<Value, Diag> {
    let bad = || Diag::new(w.span, format!("`{}` is not a number of seconds", w.text));
    let t = w.text.as_str();
    let (int_part, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int_part)
        || !frac.is_none_or(digits)
        || (int_part.is_empty() && frac.is_none_or(str::is_empty))
    {
        return Err(bad());
    }
    let int_part = int_part.trim_start_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    match frac {
        Some(f) if !f.is_empty() => {
            // TOML's float syntax: digits on both sides of the point; keep the digits written.
            let text = format!("{int_part}.{f}");
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Value::Float(text)),
                _ => Err(bad()),
            }
        }
        _ => int_part
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| Diag::new(w.span, format!("{} is out of range", w.text))),
    }
}

fn ip(w: &Word) -> Result<IpAddr, Diag> {
    w.text
        .parse()
        .map_err(|_| Diag::new(w.span, format!("`{}` is not an IP address", w.text)))
}

fn port(w: &Word) -> Result<i64, Diag> {
    int(w, 0, 65535)
}

/// A command line lb-daemon can run as written: it splits command lines on whitespace, so
/// keepalived's quoting of arguments (`'a b'`) and escapes inside one have no equivalent.
fn command(words: &[Word]) -> Result<String, Diag> {
    for w in words {
        if let Some(i) = w.text.find(['\'', '"', '\\']) {
            return Err(Diag::new(
                w.span,
                format!(
                    "this command line has a `{}`: keepalived splits it with shell-like quoting, \
                     lb-daemon on whitespace only; use a wrapper script",
                    &w.text[i..i + 1]
                ),
            ));
        }
    }
    Ok(words
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .join(" "))
}

impl Cx<'_> {
    fn locate(&self, span: Span) -> String {
        self.sources.locate(span).to_string()
    }

    /// Keeps an error, up to [`MAX_ERRORS`].
    fn error(&mut self, d: Diag) {
        if self.errors.len() >= MAX_ERRORS {
            self.too_many_errors.get_or_insert(d.span);
        } else {
            self.errors.push(d);
        }
    }

    /// Keeps the error of statement `st`, if any, for the reading to go on with the next. Out
    /// of its line, a message must say which keyword it is about: it is named unless the
    /// message names it already.
    fn recover(&mut self, st: &Stmt, r: Result<(), Diag>) {
        if let Err(mut d) = r {
            let kw = &st.keyword().text;
            if !d.message.contains(kw.as_str()) {
                d.message = format!("`{kw}`: {}", d.message);
            }
            self.error(d);
        }
    }

    /// Where reading stops: past [`MAX_UNSUPPORTED`] or [`MAX_ERRORS`], each of which
    /// costs a message (and the first a comment in the output).
    fn limit(&self) -> Result<(), Diag> {
        if let Some(span) = self.too_many_errors {
            return Err(Diag::new(
                span,
                format!("more than {MAX_ERRORS} errors: the importer stops here"),
            ));
        }
        match self.too_many_unsupported {
            Some(span) => Err(Diag::new(
                span,
                format!(
                    "more than {MAX_UNSUPPORTED} keywords lb-daemon does not support: the \
                     importer stops here"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Whether block `b` has a statement for `key` (by its canonical name in `ctx`): when
    /// the key is missing all the same, that statement had an error, already reported.
    fn written(b: &Block, ctx: Ctx, key: &str) -> bool {
        b.body
            .iter()
            .any(|st| Self::canonical(ctx, st.keyword()) == key)
    }

    /// A script's command line ([`command`]) with its program where keepalived would find
    /// it: a program named without a `/` is looked up on [`Options::search_path`] as keepalived
    /// looks on its PATH, since lb-daemon runs programs by absolute path only. What is found
    /// is written, with a warning and a comment in `t`: it is where the program is on the
    /// machine the import runs on.
    fn command(&mut self, t: &mut Table, words: &[Word]) -> Result<String, Diag> {
        let line = command(words)?;
        let Some(first) = words.first() else {
            return Ok(line);
        };
        let Some(program) = line.split_whitespace().next().filter(|p| !p.contains('/')) else {
            return Ok(line);
        };
        let lookup = self
            .opts
            .search_path
            .as_deref()
            .map(|path| (path, source::find_program(self.files, path, program)));
        let found = match &lookup {
            Some((_, Lookup::Found(found))) => found.to_str(),
            _ => None,
        };
        let Some(found) = found else {
            let (looked, why) = match &lookup {
                None => (
                    "the importer was given no PATH to look in".to_string(),
                    String::new(),
                ),
                Some((path, l)) => (
                    format!(
                        "it is not on this machine's PATH ({})",
                        path.to_string_lossy()
                    ),
                    match l {
                        Lookup::NotExecutable(p) => format!(" ({} is not executable)", p.display()),
                        _ => String::new(),
                    },
                ),
            };
            return Err(Diag::new(
                first.span,
                format!(
                    "`{program}` has no `/`, so keepalived looks for it on its PATH, but \
                     {looked}{why}; lb-daemon runs scripts by absolute path only: write the \
                     absolute path of {program} in keepalived.conf"
                ),
            ));
        };
        let message = format!(
            "`{program}` has no `/`: keepalived looks for it on its PATH; the importer found \
             it at {found} on this machine's PATH and wrote that, so the machine lb-daemon \
             runs on must have it at {found}"
        );
        t.comment(format!(" {}: {message}", self.locate(first.span)));
        self.warnings.push(Diag::new(first.span, message));
        let start = line.len() - line.trim_start().len();
        Ok(format!(
            "{}{found}{}",
            &line[..start],
            &line[start + program.len()..]
        ))
    }

    /// `key = value` from statement `s`, refusing a key given twice.
    /// A block's own `weight N [reverse|noreverse]` (a vrrp_script's, a track_file's, a
    /// vrrp_track_process's): `weight`, and `reverse = true` when reversed (false is the
    /// default there). The weight, for the caller's checks.
    fn put_weight(&self, t: &mut Table, st: &Stmt) -> Result<i64, Diag> {
        let (w, v, reverse) = weight_arg(st)?;
        self.put(t, "weight", Value::Int(v), w.span, st)?;
        if let Some((true, span)) = reverse {
            self.put(t, "reverse", Value::Bool(true), span, st)?;
        }
        Ok(v)
    }

    fn put(
        &self,
        t: &mut Table,
        key: &'static str,
        value: Value,
        span: Span,
        s: &Stmt,
    ) -> Result<(), Diag> {
        if let Some(prev) = t.get(key) {
            let first = prev
                .span
                .map(|p| format!(" (first at {})", self.locate(p)))
                .unwrap_or_default();
            return Err(Diag::new(
                s.keyword().span,
                format!("`{}` is given twice in this block{first}", s.keyword().text),
            ));
        }
        let mut comments = texts(&s.comments);
        if let Some((_, why)) = keywords::alias(ctx_of(key), &s.keyword().text) {
            comments.push(format!(" keepalived.conf says {}, {why}", s.keyword().text));
        }
        t.push(Entry {
            key,
            value,
            span: Some(span),
            comments,
            trailing: s.trailing.as_ref().map(|c| c.text.clone()),
        });
        Ok(())
    }

    /// Records something unsupported, and leaves it in the output as a comment, after
    /// `comments` (those of a statement left out whole; a part of one has its statement's
    /// comments on the statement's entry already).
    fn unsupported(
        &mut self,
        t: Option<&mut Table>,
        block: &str,
        comments: Vec<String>,
        span: Span,
        written: String,
        reason: impl Into<String>,
    ) {
        if self.unsupported.len() >= MAX_UNSUPPORTED {
            self.too_many_unsupported.get_or_insert(span);
            return;
        }
        let reason = reason.into();
        let note = format!(" not imported ({}): {written}: {reason}", self.locate(span));
        let mut lines = comments;
        lines.push(note);
        match t {
            Some(t) => lines.into_iter().for_each(|l| t.comment(l)),
            None => self.tail.extend(lines),
        }
        self.unsupported.push(Unsupported {
            span,
            block: block.to_string(),
            written,
            reason,
        });
    }

    /// A keyword of `ctx` that is not supported, or not known at all.
    fn other(&mut self, t: &mut Table, ctx: Ctx, block: &str, s: &Stmt, keyword: &str) {
        let reason = keywords::unsupported(ctx, keyword).unwrap_or(
            "a keyword the importer does not know (keepalived skips unknown keywords with a warning)",
        );
        self.unsupported(
            Some(t),
            block,
            texts(&s.comments),
            s.keyword().span,
            s.written(),
            reason,
        );
    }

    /// The top-level `SSL` block. keepalived loads its `ca` into the SSL_GET context but
    /// never asks OpenSSL to verify against it, so a server it checks is up whatever its
    /// certificate: the `ca` is left out (with a warning) to keep that; `ca_file` on an
    /// SSL_GET is how lb-daemon verifies. A client certificate is not supported.
    fn ssl(&mut self, s: &Stmt) -> Result<(), Diag> {
        let b = block(s)?;
        for st in &b.body {
            let k = st.keyword();
            if k.text == "ca" {
                let message = "keepalived loads `SSL.ca` but never verifies certificates \
                               against it: left out (SSL_GET.ca_file verifies)";
                self.tail
                    .push(format!(" {}: {message}", self.locate(k.span)));
                self.warnings.push(Diag::new(k.span, message));
                continue;
            }
            let reason = keywords::unsupported(Ctx::Ssl, &k.text)
                .unwrap_or("a keyword the importer does not know in keepalived's SSL block");
            self.unsupported(
                None,
                "SSL",
                texts(&st.comments),
                k.span,
                st.written(),
                reason,
            );
        }
        Ok(())
    }

    /// A keyword's canonical name in `ctx`.
    fn canonical(ctx: Ctx, w: &Word) -> &str {
        match keywords::alias(ctx, &w.text) {
            Some((c, _)) => c,
            None => &w.text,
        }
    }

    fn top(&mut self, s: &Stmt) -> Result<(), Diag> {
        let kw = s.keyword();
        match Self::canonical(Ctx::Top, kw) {
            "global_defs" => self.global_defs(s),
            "vrrp_script" => self.vrrp_script(s),
            "track_file" => self.track_file(s),
            "vrrp_track_process" => self.track_process(s),
            "vrrp_instance" => self.vrrp_instance(s),
            "vrrp_sync_group" => self.sync_group(s),
            "virtual_server" => self.virtual_server(s),
            "virtual_server_group" => self.vs_group(s),
            "SSL" => self.ssl(s),
            other => match keywords::unsupported(Ctx::Top, other) {
                Some(reason) => {
                    let comments = texts(&s.comments);
                    self.unsupported(None, "top level", comments, kw.span, s.written(), reason);
                    Ok(())
                }
                None => Err(Diag::new(
                    kw.span,
                    format!(
                        "unknown block `{}`: keepalived's top-level blocks are global_defs, \
                         vrrp_script, vrrp_sync_group, vrrp_instance and virtual_server \
                         (and some that lb-daemon does not support)",
                        kw.text
                    ),
                )),
            },
        }
    }

    /// The name after a block keyword: `vrrp_instance VI_1 {`.
    fn block_name(s: &Stmt) -> Result<&Word, Diag> {
        match s.args() {
            [w] => Ok(w),
            [] => Err(Diag::new(
                s.keyword().span,
                format!("`{}` needs a name", s.keyword().text),
            )),
            [_, extra, ..] => Err(Diag::new(
                extra.span,
                format!(
                    "`{}` takes one name: this is one too many",
                    s.keyword().text
                ),
            )),
        }
    }

    fn global_defs(&mut self, s: &Stmt) -> Result<(), Diag> {
        let b = block(s)?;
        if let Some(w) = s.args().first() {
            return Err(Diag::new(w.span, "`global_defs` takes no name"));
        }
        // keepalived reads several global_defs blocks as one.
        let mut t = match self.global.take() {
            Some(mut t) => {
                let more = block_table(s);
                more.comments.into_iter().for_each(|c| t.comment(c));
                t.tail.extend(more.tail);
                t
            }
            None => block_table(s),
        };
        let block_label = "global_defs";
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match Self::canonical(Ctx::GlobalDefs, kw) {
                    "router_id" => {
                        let w = one(st)?;
                        self.put(&mut t, "router_id", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "disable_local_igmp" => {
                        no_block(st)?;
                        let message = "`disable_local_igmp` is what lb-daemon does by itself \
                                       while an IPv4 virtual MAC interface exists (and IPv6's \
                                       MLD reports leave from the parent): left out";
                        t.comment(format!(" {}: {message}", self.locate(kw.span)));
                        self.warnings.push(Diag::new(kw.span, message));
                    }
                    "vrrp_version" => {
                        let w = one(st)?;
                        let v = int(w, 2, 3)?;
                        self.vrrp_version = Some(v);
                        self.put(&mut t, "vrrp_version", Value::Int(v), w.span, st)?;
                    }
                    "enable_script_security" => {
                        let (on, span) = flag(st)?;
                        self.script_security = true;
                        self.put(&mut t, "enable_script_security", Value::Bool(on), span, st)?;
                    }
                    "script_user" => {
                        no_block(st)?;
                        let (user, rest) = match st.args() {
                            [u, rest @ ..] => (u, rest),
                            [] => {
                                return Err(Diag::new(kw.span, "`script_user` needs a user name"))
                            }
                        };
                        self.put(
                            &mut t,
                            "script_user",
                            Value::Str(user.text.clone()),
                            user.span,
                            st,
                        )?;
                        if let Some(g) = rest.first() {
                            self.unsupported(
                                Some(&mut t),
                                block_label,
                                Vec::new(),
                                g.span,
                                st.written(),
                                "a group for scripts: lb-daemon runs them with the user's own group",
                            );
                        }
                    }
                    k @ ("vrrp_garp_master_delay"
                    | "vrrp_garp_master_repeat"
                    | "vrrp_garp_master_refresh"
                    | "vrrp_garp_master_refresh_repeat"
                    | "vrrp_garp_lower_prio_repeat"
                    | "vrrp_garp_lower_prio_delay") => {
                        let w = one(st)?;
                        let v = uint(w)?;
                        let key = match k {
                            "vrrp_garp_master_delay" => "garp_master_delay",
                            "vrrp_garp_master_repeat" => "garp_master_repeat",
                            "vrrp_garp_master_refresh" => "garp_master_refresh",
                            "vrrp_garp_lower_prio_repeat" => "garp_lower_prio_repeat",
                            "vrrp_garp_lower_prio_delay" => "garp_lower_prio_delay",
                            _ => "garp_master_refresh_repeat",
                        };
                        if self.garp.iter().any(|g| g.0 == key) {
                            return Err(Diag::new(kw.span, format!("`{k}` is given twice")));
                        }
                        self.garp.push((key, Value::Int(v), w.span));
                        // Its effect is in each vrrp_instance (copied there); say so here.
                        texts(&st.comments).into_iter().for_each(|c| t.comment(c));
                        t.comment(format!(
                            " {k} {v}: copied to each vrrp_instance that sets no {key} of its own"
                        ));
                    }
                    // lb-daemon's FIFO carries the VRRP lines (keepalived's `notify_fifo`
                    // also the checkers'): both keywords are that FIFO, in keepalived's
                    // format so that its readers go on working.
                    k @ ("notify_fifo" | "vrrp_notify_fifo") => {
                        no_block(st)?;
                        let (path, owner) = match st.args() {
                            [p, rest @ ..] => (p, rest.first()),
                            [] => return Err(Diag::new(kw.span, format!("`{k}` needs a path"))),
                        };
                        if t.has("notify_fifo") {
                            return Err(Diag::new(
                                kw.span,
                                "lb-daemon writes one FIFO: give notify_fifo or vrrp_notify_fifo, not both",
                            ));
                        }
                        self.put(
                            &mut t,
                            "notify_fifo",
                            Value::Str(path.text.clone()),
                            path.span,
                            st,
                        )?;
                        t.push(generated(
                            "notify_fifo_format",
                            Value::Str("keepalived".into()),
                            kw.span,
                            " keepalived's lines (INSTANCE \"VI_1\" MASTER 100) for its readers",
                        ));
                        if let Some(o) = owner {
                            self.unsupported(
                                Some(&mut t),
                                block_label,
                                Vec::new(),
                                o.span,
                                st.written(),
                                "the FIFO's owner: lb-daemon makes it as the user it runs as",
                            );
                        }
                    }
                    k @ ("notify_fifo_script" | "vrrp_notify_fifo_script") => {
                        no_block(st)?;
                        let Some(first) = st.args().first() else {
                            return Err(Diag::new(kw.span, format!("`{k}` needs a command")));
                        };
                        if t.has("notify_fifo_script") {
                            return Err(Diag::new(
                                kw.span,
                                "lb-daemon starts one FIFO script: give notify_fifo_script or vrrp_notify_fifo_script, not both",
                            ));
                        }
                        // keepalived's `notify_fifo_script CMD [user [group]]`: a command with
                        // arguments is one quoted word.
                        let (words, user) = (&st.args()[..1], st.args().get(1));
                        let cmd = self.command(&mut t, words)?;
                        self.scripts_named = true;
                        self.put(
                            &mut t,
                            "notify_fifo_script",
                            Value::Str(cmd),
                            first.span,
                            st,
                        )?;
                        if let Some(u) = user {
                            self.unsupported(
                                Some(&mut t),
                                block_label,
                                Vec::new(),
                                u.span,
                                st.written(),
                                "a user for the FIFO script: lb-daemon runs it as global_defs.script_user",
                            );
                        }
                    }
                    k @ ("vrrp_startup_delay" | "vrrp_garp_interval" | "vrrp_gna_interval") => {
                        let w = one(st)?;
                        let key = match k {
                            "vrrp_startup_delay" => "vrrp_startup_delay",
                            "vrrp_garp_interval" => "vrrp_garp_interval",
                            _ => "vrrp_gna_interval",
                        };
                        self.put(&mut t, key, seconds(w)?, w.span, st)?;
                    }
                    "lvs_timeouts" => {
                        let v = lvs_timeouts(st)?;
                        if !v.is_empty() {
                            let span = st.keyword().span;
                            self.put(&mut t, "lvs_timeouts", Value::Inline(v), span, st)?;
                        }
                    }
                    "lvs_sync_daemon" => {
                        self.lvs_sync_daemon(st)?;
                        t.comment(format!(" {}: the [sync] section", st.written()));
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::GlobalDefs, block_label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        self.global = Some(t);
        Ok(())
    }

    /// keepalived's `track_file NAME { file PATH; weight N [reverse]; init_file [N] [overwrite] }`.
    fn track_file(&mut self, s: &Stmt) -> Result<(), Diag> {
        let name = Self::block_name(s)?;
        let b = block(s)?;
        let label = format!("track_file {}", name.text);
        let mut t = block_table(s);
        t.push(Entry {
            key: "name",
            value: Value::Str(name.text.clone()),
            span: Some(name.span),
            comments: Vec::new(),
            trailing: None,
        });
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match kw.text.as_str() {
                    "file" => {
                        let w = one(st)?;
                        if !w.text.starts_with('/') {
                            return Err(Diag::new(
                                w.span,
                                "lb-daemon reads a tracked file by absolute path: give one",
                            ));
                        }
                        self.put(&mut t, "file", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "weight" => {
                        self.put_weight(&mut t, st)?;
                    }
                    "init_file" => {
                        no_block(st)?;
                        // keepalived: `init_file [VALUE] [overwrite]`, VALUE 0 when absent.
                        let (value, overwrite) = match st.args() {
                            [] => (None, None),
                            [o] if o.text == "overwrite" => (None, Some(o)),
                            [v] => (Some(v), None),
                            [v, o] if o.text == "overwrite" => (Some(v), Some(o)),
                            [_, extra, ..] => {
                                return Err(Diag::new(
                                    extra.span,
                                    "expected `init_file [VALUE] [overwrite]`",
                                ))
                            }
                        };
                        let n = match value {
                            Some(v) => int(v, i64::from(i32::MIN), i64::from(i32::MAX))?,
                            None => 0,
                        };
                        let span = value.map_or(kw.span, |v| v.span);
                        self.put(&mut t, "init_file", Value::Int(n), span, st)?;
                        if let Some(o) = overwrite {
                            self.put(&mut t, "init_file_overwrite", Value::Bool(true), o.span, st)?;
                        }
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::TrackFile, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        if !t.has("file") {
            return Err(Diag::new(name.span, "a track_file needs a `file`"));
        }
        self.track_files.push(t);
        Ok(())
    }

    /// keepalived's `vrrp_track_process NAME { process NAME [PARAM...]; param_match
    /// [initial|partial]; weight N [reverse]; quorum N; quorum_max N; delay S; fork_delay S;
    /// terminate_delay S; full_command }`.
    fn track_process(&mut self, s: &Stmt) -> Result<(), Diag> {
        let name = Self::block_name(s)?;
        let b = block(s)?;
        let label = format!("vrrp_track_process {}", name.text);
        let mut t = block_table(s);
        t.push(Entry {
            key: "name",
            value: Value::Str(name.text.clone()),
            span: Some(name.span),
            comments: Vec::new(),
            trailing: None,
        });
        // keepalived reads these in order, each against the others so far (see below).
        let mut quorum: (u32, Option<(Span, &Stmt)>) = (1, None);
        let mut quorum_max: (u32, Option<(Span, &Stmt)>) = (u32::MAX, None);
        let mut fork_delay = None;
        let mut terminate_delay = None;
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match kw.text.as_str() {
                    "process" => {
                        no_block(st)?;
                        let words = st.args();
                        let Some(first) = words.first() else {
                            return Err(Diag::new(kw.span, "`process` needs a process name"));
                        };
                        // One plain word stays a string; with parameters (keepalived's quotes
                        // may have put spaces in one) an array keeps each word whole.
                        let value = match words {
                            [w] if !w.text.contains(char::is_whitespace) => {
                                Value::Str(w.text.clone())
                            }
                            _ => Value::Array(
                                words
                                    .iter()
                                    .map(|w| Self::elem(st, Value::Str(w.text.clone()), w.span))
                                    .map(|mut e| {
                                        e.comments.clear();
                                        e.trailing = None;
                                        e
                                    })
                                    .collect(),
                            ),
                        };
                        self.put(&mut t, "process", value, first.span, st)?;
                    }
                    "param_match" => {
                        no_block(st)?;
                        let (mode, span) = match st.args() {
                            // keepalived: alone, the parameters must be the same.
                            [] => ("exact", kw.span),
                            [w] if w.text == "initial" => ("initial", w.span),
                            [w] if w.text == "partial" => ("partial", w.span),
                            [w, ..] => {
                                return Err(Diag::new(
                                    w.span,
                                    "expected `param_match`, `param_match initial` or `param_match partial`",
                                ))
                            }
                        };
                        self.put(&mut t, "param_match", Value::Str(mode.into()), span, st)?;
                    }
                    "weight" => {
                        self.put_weight(&mut t, st)?;
                    }
                    // keepalived (`vrrp_tprocess_quorum*_handler`): a quorum above the
                    // quorum_max so far, or a quorum_max below the quorum so far (but 0 over
                    // a quorum of 1: none may run), is ignored with a warning; a quorum_max of
                    // 0 makes the quorum 0, a later non-zero one makes it 1 again.
                    "quorum" => {
                        let w = one(st)?;
                        let q = int(w, 1, 65_535)? as u32;
                        if q > quorum_max.0 {
                            self.warnings.push(Diag::new(
                                w.span,
                                format!("quorum {q} is above quorum_max {}: keepalived ignores it, and so does the import", quorum_max.0),
                            ));
                        } else {
                            quorum = (q, Some((w.span, st)));
                        }
                    }
                    "quorum_max" => {
                        let w = one(st)?;
                        let m = int(w, 0, 65_535)? as u32;
                        if m == 0 && quorum.0 <= 1 {
                            quorum = (0, None);
                            quorum_max = (0, Some((w.span, st)));
                        } else if m < quorum.0 {
                            self.warnings.push(Diag::new(
                                w.span,
                                format!("quorum_max {m} is below quorum {}: keepalived ignores it, and so does the import", quorum.0),
                            ));
                        } else {
                            if quorum.0 == 0 {
                                quorum = (1, None);
                            }
                            quorum_max = (m, Some((w.span, st)));
                        }
                    }
                    // The last of them sets each delay, as in keepalived.
                    key @ ("delay" | "fork_delay" | "terminate_delay") => {
                        let w = one(st)?;
                        let v = (seconds(w)?, w.span, st);
                        if key != "terminate_delay" {
                            fork_delay = Some(v.clone());
                        }
                        if key != "fork_delay" {
                            terminate_delay = Some(v);
                        }
                    }
                    "full_command" => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "full_command", Value::Bool(on), span, st)?;
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::TrackProcess, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        if let (q, Some((span, st))) = quorum {
            if q != 1 {
                self.put(&mut t, "quorum", Value::Int(q.into()), span, st)?;
            }
        }
        if let (m, Some((span, st))) = quorum_max {
            self.put(&mut t, "quorum_max", Value::Int(m.into()), span, st)?;
        }
        for (key, d) in [
            ("fork_delay", fork_delay),
            ("terminate_delay", terminate_delay),
        ] {
            if let Some((v, span, st)) = d {
                self.put(&mut t, key, v, span, st)?;
            }
        }
        if !t.has("process") {
            return Err(Diag::new(
                name.span,
                "a vrrp_track_process needs a `process`",
            ));
        }
        self.track_processes.push(t);
        Ok(())
    }

    fn vrrp_script(&mut self, s: &Stmt) -> Result<(), Diag> {
        let name = Self::block_name(s)?;
        let b = block(s)?;
        let label = format!("vrrp_script {}", name.text);
        let mut t = block_table(s);
        t.push(Entry {
            key: "name",
            value: Value::Str(name.text.clone()),
            span: Some(name.span),
            comments: Vec::new(),
            trailing: None,
        });
        let mut weight = 0;
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match Self::canonical(Ctx::VrrpScript, kw) {
                    "script" => {
                        no_block(st)?;
                        if st.args().is_empty() {
                            return Err(Diag::new(kw.span, "`script` needs a command"));
                        }
                        let cmd = self.command(&mut t, st.args())?;
                        self.scripts_named = true;
                        self.put(&mut t, "script", Value::Str(cmd), st.args()[0].span, st)?;
                    }
                    k @ ("interval" | "timeout") => {
                        let w = one(st)?;
                        let key = if k == "interval" {
                            "interval"
                        } else {
                            "timeout"
                        };
                        self.put(&mut t, key, seconds(w)?, w.span, st)?;
                    }
                    "weight" => {
                        weight = self.put_weight(&mut t, st)?;
                    }
                    k @ ("rise" | "fall") => {
                        let w = one(st)?;
                        let key = if k == "rise" { "rise" } else { "fall" };
                        self.put(&mut t, key, Value::Int(uint(w)?), w.span, st)?;
                    }
                    "user" => self.user(&mut t, &label, st)?,
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::VrrpScript, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        t.shrink();
        self.scripts.push((t, name.text.clone(), weight));
        Ok(())
    }

    /// `user USER [GROUP]` of a vrrp_script or MISC_CHECK.
    fn user(&mut self, t: &mut Table, label: &str, st: &Stmt) -> Result<(), Diag> {
        no_block(st)?;
        match st.args() {
            [] => Err(Diag::new(st.keyword().span, "`user` needs a user name")),
            [u, rest @ ..] => {
                self.put(t, "user", Value::Str(u.text.clone()), u.span, st)?;
                if let Some(g) = rest.first() {
                    self.unsupported(
                        Some(t),
                        label,
                        Vec::new(),
                        g.span,
                        st.written(),
                        "a group for the script: lb-daemon runs it with the user's own group",
                    );
                }
                Ok(())
            }
        }
    }

    /// A notify hook: `notify_master CMD [USER [GROUP]]`, where a quoted CMD has arguments.
    fn hook(
        &mut self,
        t: &mut Table,
        label: &str,
        key: &'static str,
        st: &Stmt,
    ) -> Result<(), Diag> {
        no_block(st)?;
        let Some(cmd) = st.args().first() else {
            return Err(Diag::new(
                st.keyword().span,
                format!("`{}` needs a command", st.keyword().text),
            ));
        };
        let line = self.command(t, std::slice::from_ref(cmd))?;
        self.scripts_named = true;
        self.put(t, key, Value::Str(line), cmd.span, st)?;
        if let Some(user) = st.args().get(1) {
            self.unsupported(
                Some(t),
                label,
                Vec::new(),
                user.span,
                st.written(),
                "a user for a hook: lb-daemon runs hooks as global_defs.script_user (root by default)",
            );
        }
        Ok(())
    }

    /// The lines of a value block (`virtual_ipaddress { ... }`): statements without blocks.
    fn lines(s: &Stmt) -> Result<&[Stmt], Diag> {
        let b = block(s)?;
        if !s.args().is_empty() {
            return Err(Diag::new(
                s.args()[0].span,
                format!("`{}` takes its values in the {{ }} block", s.keyword().text),
            ));
        }
        for l in &b.body {
            no_block(l)?;
        }
        Ok(&b.body)
    }

    fn elem(line: &Stmt, value: Value, span: Span) -> Elem {
        Elem {
            value,
            span: Some(span),
            comments: texts(&line.comments),
            trailing: line.trailing.as_ref().map(|c| c.text.clone()),
        }
    }

    /// Appends array elements to `key` (a value block may be given more than once, as in
    /// keepalived).
    fn append(t: &mut Table, key: &'static str, s: &Stmt, elems: Vec<Elem>) {
        let tail = s.block.as_ref().map(|b| texts(&b.tail)).unwrap_or_default();
        if let Some(Entry {
            value: Value::Array(existing),
            comments,
            ..
        }) = t.get_mut(key)
        {
            existing.extend(elems);
            comments.extend(texts(&s.comments));
            comments.extend(tail);
            return;
        }
        let mut comments = texts(&s.comments);
        comments.extend(tail);
        t.push(Entry {
            key,
            value: Value::Array(elems),
            span: Some(s.keyword().span),
            comments,
            trailing: s.trailing.as_ref().map(|c| c.text.clone()),
        });
    }

    fn tracks(s: &Stmt) -> Result<Vec<Track>, Diag> {
        Self::tracks_of(s, false)
    }

    /// `track_interface`/`track_script`/`track_file` lines: `NAME [weight W [reverse|noreverse]]`
    /// (a `reverse` or `noreverse` alone, keepalived's newer form, too).
    /// `keep_zero`: a `weight 0` is written (a tracked file's own weight is 1 by default).
    fn tracks_of(s: &Stmt, keep_zero: bool) -> Result<Vec<Track>, Diag> {
        let mut out = Vec::new();
        for line in Self::lines(s)? {
            let name = line.keyword();
            let usage = "expected `NAME [weight W] [reverse|noreverse]`";
            let (weight, rest) = match line.args() {
                [k, w, rest @ ..] if k.text == "weight" => (
                    Some((int(w, i64::from(i32::MIN), i64::from(i32::MAX))?, w.span)),
                    rest,
                ),
                rest => (None, rest),
            };
            let reverse = match rest {
                [] => None,
                [r] if r.text == "noreverse" => Some(false),
                [r] if r.text == "reverse" => Some(true),
                [extra, ..] => return Err(Diag::new(extra.span, usage)),
            };
            let mut fields = vec![("name", Value::Str(name.text.clone()))];
            if let Some((w, _)) = weight.filter(|(w, _)| *w != 0 || keep_zero) {
                fields.push(("weight", Value::Int(w)));
            }
            if let Some(r) = reverse {
                fields.push(("reverse", Value::Bool(r)));
            }
            let value = if fields.len() == 1 {
                Value::Str(name.text.clone())
            } else {
                Value::Inline(fields)
            };
            let span = weight.map_or(name.span, |(_, s)| s);
            out.push((Self::elem(line, value, span), weight));
        }
        Ok(out)
    }

    fn vrrp_instance(&mut self, s: &Stmt) -> Result<(), Diag> {
        let name = Self::block_name(s)?;
        let b = block(s)?;
        let label = format!("vrrp_instance {}", name.text);
        let mut t = block_table(s);
        t.push(Entry {
            key: "name",
            value: Value::Str(name.text.clone()),
            span: Some(name.span),
            comments: Vec::new(),
            trailing: None,
        });
        let mut inst = Instance {
            table: Table::default(),
            name: name.text.clone(),
            span: s.keyword().span,
            state: None,
            priority: None,
            interface: None,
            vips: Vec::new(),
            zero_weight_scripts: Vec::new(),
        };
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match Self::canonical(Ctx::Instance, kw) {
                    "state" => {
                        let w = one(st)?;
                        inst.state = Some(w.text.clone());
                        self.put(&mut t, "state", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "interface" => {
                        let w = one(st)?;
                        inst.interface = Some(w.text.clone());
                        self.put(&mut t, "interface", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "virtual_router_id" => {
                        let w = one(st)?;
                        self.put(
                            &mut t,
                            "virtual_router_id",
                            Value::Int(uint(w)?),
                            w.span,
                            st,
                        )?;
                    }
                    "priority" => {
                        let w = one(st)?;
                        let p = uint(w)?;
                        inst.priority = Some(p);
                        self.put(&mut t, "priority", Value::Int(p), w.span, st)?;
                    }
                    "advert_int" => {
                        let w = one(st)?;
                        self.put(&mut t, "advert_int", seconds(w)?, w.span, st)?;
                    }
                    "version" => {
                        let w = one(st)?;
                        self.put(&mut t, "version", Value::Int(int(w, 0, 255)?), w.span, st)?;
                    }
                    "nopreempt" => {
                        no_args(st)?;
                        self.put(&mut t, "nopreempt", Value::Bool(true), kw.span, st)?;
                    }
                    // keepalived's `use_vmac [NAME] [MAC]`: the MAC form (a hardware address
                    // of one's own choosing) is not implemented.
                    "use_vmac" => {
                        no_block(st)?;
                        match st.args() {
                            [] => self.put(&mut t, "use_vmac", Value::Bool(true), kw.span, st)?,
                            [n] if !n.text.contains(':') => {
                                self.put(&mut t, "use_vmac", Value::Str(n.text.clone()), n.span, st)?
                            }
                            [.., m] => {
                                return Err(Diag::new(
                                    m.span,
                                    "a virtual MAC other than the RFC's 00:00:5e:00:01:VRID is not implemented: leave it out",
                                ))
                            }
                        }
                    }
                    "vmac_xmit_base" => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "vmac_xmit_base", Value::Bool(on), span, st)?;
                    }
                    "preempt" => {
                        // keepalived's default, "for backwards compatibility".
                        no_args(st)?;
                        self.put(&mut t, "nopreempt", Value::Bool(false), kw.span, st)?;
                    }
                    "preempt_delay" => {
                        let w = one(st)?;
                        self.put(&mut t, "preempt_delay", seconds(w)?, w.span, st)?;
                    }
                    "authentication" => {
                        let child = self.authentication(st, &label)?;
                        if t.children.iter().any(|c| c.name == "authentication") {
                            return Err(Diag::new(kw.span, "`authentication` is given twice"));
                        }
                        t.children.push(Child {
                            name: "authentication",
                            array: false,
                            table: child,
                        });
                    }
                    "virtual_ipaddress" => {
                        let mut elems = Vec::new();
                        for line in Self::lines(st)? {
                            let (text, addr, dev) = self.vip(line, &label, &mut t)?;
                            inst.vips.push((addr, dev));
                            elems.push(Self::elem(line, Value::Str(text), line.keyword().span));
                        }
                        Self::append(&mut t, "virtual_ipaddress", st, elems);
                    }
                    "unicast_src_ip" => {
                        let w = one(st)?;
                        ip(w)?;
                        self.put(
                            &mut t,
                            "unicast_src_ip",
                            Value::Str(w.text.clone()),
                            w.span,
                            st,
                        )?;
                    }
                    "unicast_peer" => {
                        let mut elems = Vec::new();
                        for line in Self::lines(st)? {
                            let peer = line.keyword();
                            ip(peer)?;
                            let mut args = line.args().iter();
                            while let Some(opt) = args.next() {
                                match opt.text.as_str() {
                                    "min_ttl" | "max_ttl" => {
                                        let Some(v) = args.next() else {
                                            return Err(Diag::new(
                                                opt.span,
                                                format!("`{}` needs a value", opt.text),
                                            ));
                                        };
                                        int(v, 0, 255)?;
                                        self.unsupported(
                                            Some(&mut t),
                                            &label,
                                            Vec::new(),
                                            opt.span,
                                            format!("unicast_peer {} {} {}", peer.text, opt.text, v.text),
                                            "TTL limits on unicast peers are not implemented (adverts must have TTL 255)",
                                        );
                                    }
                                    _ => {
                                        return Err(Diag::new(
                                            opt.span,
                                            format!("unknown unicast_peer option `{}`", opt.text),
                                        ))
                                    }
                                }
                            }
                            elems.push(Self::elem(line, Value::Str(peer.text.clone()), peer.span));
                        }
                        Self::append(&mut t, "unicast_peer", st, elems);
                    }
                    "track_interface" => {
                        let elems = Self::tracks(st)?.into_iter().map(|(e, _)| e).collect();
                        Self::append(&mut t, "track_interface", st, elems);
                    }
                    "track_script" => {
                        let mut elems = Vec::new();
                        for (e, weight) in Self::tracks(st)? {
                            let name = match &e.value {
                                Value::Str(n) => Some(n.clone()),
                                Value::Inline(f) if !f.iter().any(|(k, _)| *k == "weight") => {
                                    f.iter().find_map(|(k, v)| match (k, v) {
                                        (&"name", Value::Str(n)) => Some(n.clone()),
                                        _ => None,
                                    })
                                }
                                _ => None,
                            };
                            if let (Some((0, span)), Some(n)) = (weight, name) {
                                inst.zero_weight_scripts.push((n, span));
                            }
                            elems.push(e);
                        }
                        Self::append(&mut t, "track_script", st, elems);
                    }
                    k @ ("track_file" | "track_process") => {
                        let key = if k == "track_file" {
                            "track_file"
                        } else {
                            "track_process"
                        };
                        // An entry's explicit weight 0 stands over the block's own.
                        let elems = Self::tracks_of(st, true)?
                            .into_iter()
                            .map(|(e, _)| e)
                            .collect();
                        Self::append(&mut t, key, st, elems);
                    }
                    k @ ("notify_master" | "notify_backup" | "notify_fault" | "notify_stop"
                    | "notify") => {
                        let key = match k {
                            "notify_master" => "notify_master",
                            "notify_backup" => "notify_backup",
                            "notify_fault" => "notify_fault",
                            "notify_stop" => "notify_stop",
                            _ => "notify",
                        };
                        self.hook(&mut t, &label, key, st)?;
                    }
                    k @ ("garp_master_delay"
                    | "garp_master_repeat"
                    | "garp_master_refresh"
                    | "garp_master_refresh_repeat"
                    | "garp_lower_prio_repeat"
                    | "garp_lower_prio_delay") => {
                        let w = one(st)?;
                        let key = match k {
                            "garp_master_delay" => "garp_master_delay",
                            "garp_master_repeat" => "garp_master_repeat",
                            "garp_master_refresh" => "garp_master_refresh",
                            "garp_lower_prio_repeat" => "garp_lower_prio_repeat",
                            "garp_lower_prio_delay" => "garp_lower_prio_delay",
                            _ => "garp_master_refresh_repeat",
                        };
                        self.put(&mut t, key, Value::Int(uint(w)?), w.span, st)?;
                    }
                    "lvs_sync_daemon_interface" => {
                        let w = one(st)?;
                        self.set_sync(SyncDaemon {
                            span: kw.span,
                            written: st.written(),
                            comments: texts(&st.comments),
                            interface: (w.text.clone(), w.span),
                            instance: (name.text.clone(), name.span),
                            numbers: Vec::new(),
                            group: None,
                        })?;
                        t.comment(format!(" {}: the [sync] section", st.written()));
                    }
                    "accept" => {
                        no_args(st)?;
                        texts(&st.comments).into_iter().for_each(|c| t.comment(c));
                        t.comment(
                            " accept: lb-daemon always accepts packets for the virtual addresses \
                             (keepalived's accept mode)",
                        );
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::Instance, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        if inst.interface.is_none() && !Self::written(b, Ctx::Instance, "interface") {
            self.error(Diag::new(
                inst.span,
                format!(
                    "vrrp_instance {} has no interface: lb-daemon needs one",
                    inst.name
                ),
            ));
        }
        if !t.has("virtual_ipaddress") && !Self::written(b, Ctx::Instance, "virtual_ipaddress") {
            self.error(Diag::new(
                inst.span,
                format!(
                    "vrrp_instance {} has no virtual_ipaddress: lb-daemon needs at least one",
                    inst.name
                ),
            ));
        }
        t.shrink();
        inst.table = t;
        self.instances.push(inst);
        Ok(())
    }

    fn set_sync(&mut self, d: SyncDaemon) -> Result<(), Diag> {
        if let Some(prev) = &self.sync {
            return Err(Diag::new(
                d.span,
                format!(
                    "a second IPVS sync daemon (the first at {}): lb-daemon syncs with one",
                    self.locate(prev.span)
                ),
            ));
        }
        self.sync = Some(d);
        Ok(())
    }

    /// `lvs_sync_daemon IFACE [INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group ADDR]`.
    fn lvs_sync_daemon(&mut self, st: &Stmt) -> Result<(), Diag> {
        no_block(st)?;
        let kw = st.keyword();
        let (iface, rest) = match st.args() {
            [i, rest @ ..] => (i, rest),
            [] => return Err(Diag::new(kw.span, "`lvs_sync_daemon` needs an interface")),
        };
        const OPTIONS: [&str; 5] = ["id", "maxlen", "port", "ttl", "group"];
        let (instance, mut rest) = match rest {
            [i, rest @ ..] if !OPTIONS.contains(&i.text.as_str()) => (i, rest),
            _ => {
                return Err(Diag::new(
                    kw.span,
                    "`lvs_sync_daemon` without a vrrp_instance: lb-daemon needs the instance \
                     whose master sends the flows",
                ))
            }
        };
        let mut numbers = Vec::new();
        let mut group = None;
        while let [opt, tail @ ..] = rest {
            let Some((value, tail)) = tail.split_first() else {
                return Err(Diag::new(opt.span, format!("`{}` needs a value", opt.text)));
            };
            let (key, min, max) = match opt.text.as_str() {
                "id" => ("sync_id", 0, 255),
                "maxlen" => ("max_message", 1, 65507),
                "port" => ("port", 1, 65535),
                "ttl" => ("ttl", 1, 255),
                "group" => {
                    ip(value)?;
                    group = Some((value.text.clone(), value.span));
                    rest = tail;
                    continue;
                }
                _ => {
                    return Err(Diag::new(
                        opt.span,
                        format!(
                            "unknown lvs_sync_daemon option `{}` (id, maxlen, port, ttl, group)",
                            opt.text
                        ),
                    ))
                }
            };
            if numbers.iter().any(|(k, _, _)| *k == key) {
                return Err(Diag::new(
                    opt.span,
                    format!("`{}` is given twice", opt.text),
                ));
            }
            numbers.push((key, int(value, min, max)?, value.span));
            rest = tail;
        }
        self.set_sync(SyncDaemon {
            span: kw.span,
            written: st.written(),
            comments: texts(&st.comments),
            interface: (iface.text.clone(), iface.span),
            instance: (instance.text.clone(), instance.span),
            numbers,
            group,
        })
    }

    /// The `[sync]` section of keepalived's sync daemon, with what keepalived has not: the
    /// shared key (a placeholder path to fill in) and, unless `group` says otherwise, IPVS's
    /// multicast group stated.
    fn sync_section(&self, d: &SyncDaemon) -> Result<Table, Diag> {
        if !self.instances.iter().any(|i| i.name == d.instance.0) {
            return Err(Diag::new(
                d.instance.1,
                format!(
                    "no vrrp_instance {}: its master sends the flows",
                    d.instance.0
                ),
            ));
        }
        let mut comments = d.comments.clone();
        comments.push(format!(
            " Connection sync, from keepalived's `{}` ({}).",
            d.written,
            self.locate(d.span)
        ));
        let mut t = Table {
            comments,
            span: Some(d.span),
            ..Default::default()
        };
        let entry = |key, value, span, trailing: Option<&str>| Entry {
            key,
            value,
            span: Some(span),
            comments: Vec::new(),
            trailing: trailing.map(str::to_string),
        };
        t.push(entry(
            "interface",
            Value::Str(d.interface.0.clone()),
            d.interface.1,
            None,
        ));
        t.push(entry(
            "vrrp_instance",
            Value::Str(d.instance.0.clone()),
            d.instance.1,
            None,
        ));
        for (key, v, span) in &d.numbers {
            t.push(entry(key, Value::Int(*v), *span, None));
        }
        match &d.group {
            Some((g, span)) => t.push(entry("multicast_group", Value::Str(g.clone()), *span, None)),
            None => t.push(generated(
                "multicast_group",
                Value::Str(crate::model::sync_wire::DEFAULT_GROUP.to_string()),
                d.span,
                " IPVS's default: its sync daemon sends to this group",
            )),
        }
        t.push(Entry {
            key: "key_file",
            value: Value::Str(SYNC_KEY_PLACEHOLDER.into()),
            span: Some(d.span),
            comments: vec![
                " keepalived's sync has no key; lb-daemon signs every message (HMAC-SHA256).".into(),
                " Create this file on both nodes, the same bytes, root-only, for example:".into(),
                "   head -c 32 /dev/urandom > /etc/lb-daemon/sync.key; chmod 600 /etc/lb-daemon/sync.key".into(),
                " and list the peer LB here (peers = [\"ADDR\"]) so that only it is accepted.".into(),
            ],
            trailing: None,
        });
        Ok(t)
    }

    fn authentication(&mut self, s: &Stmt, label: &str) -> Result<Table, Diag> {
        let b = block(s)?;
        if let Some(w) = s.args().first() {
            return Err(Diag::new(w.span, "`authentication` takes no value"));
        }
        let mut t = block_table(s);
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match kw.text.as_str() {
                    "auth_type" => {
                        let w = one(st)?;
                        self.put(&mut t, "auth_type", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "auth_pass" => {
                        let w = one(st)?;
                        self.put(&mut t, "auth_pass", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::Authentication, label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        Ok(t)
    }

    /// A `virtual_ipaddress` line: `ADDR[/PREFIX] [dev IFACE] [label LABEL] [OPTIONS]`, as
    /// lb-daemon's `ADDR[/PREFIX] [dev IFACE] [label LABEL]`; the options lb-daemon has not
    /// are listed.
    fn vip(
        &mut self,
        line: &Stmt,
        label: &str,
        t: &mut Table,
    ) -> Result<(String, IpAddr, Option<String>), Diag> {
        let first = line.keyword();
        let (addr_text, prefix) = match first.text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (first.text.as_str(), None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| Diag::new(first.span, format!("`{addr_text}` is not an IP address")))?;
        if let Some(p) = prefix {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let ok =
                p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u8>().is_ok_and(|n| n <= max);
            if !ok {
                return Err(Diag::new(
                    first.span,
                    format!("`/{p}` is not a prefix length 0..={max}"),
                ));
            }
        }
        let mut out = first.text.clone();
        let mut dev = None;
        let mut args = line.args().iter();
        while let Some(opt) = args.next() {
            let o = opt.text.as_str();
            match o {
                "dev" | "label" => {
                    let Some(v) = args.next() else {
                        return Err(Diag::new(opt.span, format!("`{o}` needs a value")));
                    };
                    if o == "dev" {
                        dev = Some(v.text.clone());
                    }
                    out.push_str(&format!(" {o} {}", v.text));
                }
                "brd" | "broadcast" | "scope" | "peer" | "preferred_lft" | "track_group" => {
                    let Some(v) = args.next() else {
                        return Err(Diag::new(opt.span, format!("`{o}` needs a value")));
                    };
                    self.unsupported(
                        Some(t),
                        label,
                        Vec::new(),
                        opt.span,
                        format!("virtual_ipaddress {} {o} {}", first.text, v.text),
                        "lb-daemon adds virtual addresses with the kernel's defaults, \
                         and only dev and label",
                    );
                }
                "home" | "-nodad" | "nodad" | "mngtmpaddr" | "noprefixroute" | "autojoin"
                | "no_track" | "use_vmac" => {
                    self.unsupported(
                        Some(t),
                        label,
                        Vec::new(),
                        opt.span,
                        format!("virtual_ipaddress {} {o}", first.text),
                        "lb-daemon adds virtual addresses with the kernel's defaults, \
                         and only dev and label",
                    );
                }
                _ => {
                    return Err(Diag::new(
                        opt.span,
                        format!("unknown virtual_ipaddress option `{o}`"),
                    ))
                }
            }
        }
        Ok((out, addr, dev))
    }

    fn sync_group(&mut self, s: &Stmt) -> Result<(), Diag> {
        let name = Self::block_name(s)?;
        let b = block(s)?;
        let label = format!("vrrp_sync_group {}", name.text);
        let mut t = block_table(s);
        t.push(Entry {
            key: "name",
            value: Value::Str(name.text.clone()),
            span: Some(name.span),
            comments: Vec::new(),
            trailing: None,
        });
        let mut members = Vec::new();
        let mut tracks = Vec::new();
        // The members straight in the block, the form keepalived's old failover case study
        // showed (keepalived issue 824): keepalived takes each line for an unknown keyword,
        // and then drops the group, as it has no members. Read as the `group { }` it stands
        // for, when there is none.
        let has_group = b.body.iter().any(|st| st.keyword().text == "group");
        let mut loose = Vec::new();
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let kw = st.keyword();
                match kw.text.as_str() {
                    "group" => {
                        // keepalived reads the block's words, whatever the lines.
                        let mut elems = Vec::new();
                        for line in Self::lines(st)? {
                            for (i, w) in line.words.iter().enumerate() {
                                members.push(w.text.clone());
                                let mut e = Self::elem(line, Value::Str(w.text.clone()), w.span);
                                if i > 0 {
                                    e.comments.clear();
                                    e.trailing = None;
                                }
                                elems.push(e);
                            }
                        }
                        Self::append(&mut t, "group", st, elems);
                    }
                    k @ ("notify_master" | "notify_backup" | "notify_fault" | "notify") => {
                        let key = match k {
                            "notify_master" => "notify_master",
                            "notify_backup" => "notify_backup",
                            "notify_fault" => "notify_fault",
                            _ => "notify",
                        };
                        self.hook(&mut t, &label, key, st)?;
                    }
                    k @ ("track_interface" | "track_script" | "track_file" | "track_process") => {
                        let key = match k {
                            "track_interface" => "track_interface",
                            "track_script" => "track_script",
                            "track_file" => "track_file",
                            _ => "track_process",
                        };
                        // A file's or process's own weight may be other than 0: an explicit
                        // 0 is written out.
                        let keep_zero = matches!(key, "track_file" | "track_process");
                        for (mut e, weight) in Self::tracks_of(st, keep_zero)? {
                            match weight {
                                // lb-daemon's members track without weights (keepalived's rule
                                // for a member's own trackers); a group's weight would be lost.
                                Some((w, span)) if w != 0 => self.unsupported(
                                    Some(&mut t),
                                    &label,
                                    Vec::new(),
                                    span,
                                    format!("{k} {{ ... weight {w} }}"),
                                    "weighted tracking by a sync group: lb-daemon's sync group members track without weights",
                                ),
                                _ => {
                                    e.trailing = Some(format!(" from {label}"));
                                    tracks.push((key, e));
                                }
                            }
                        }
                        texts(&st.comments).into_iter().for_each(|c| t.comment(c));
                        t.comment(format!(
                            " {k}: copied to each member instance (the group faults together either way)"
                        ));
                    }
                    other
                        if !has_group
                            && st.block.is_none()
                            && keywords::unsupported(Ctx::SyncGroup, other).is_none() =>
                    {
                        for (i, w) in st.words.iter().enumerate() {
                            members.push(w.text.clone());
                            let mut e = Self::elem(st, Value::Str(w.text.clone()), w.span);
                            if i > 0 {
                                e.comments.clear();
                                e.trailing = None;
                            }
                            loose.push(e);
                        }
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::SyncGroup, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        if let Some(span) = loose.first().and_then(|e| e.span) {
            // The message is repeated in the output's header: a long list is cut short.
            let mut names = members
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            if members.len() > 4 {
                names.push_str(" ...");
            }
            let message = format!(
                "the members are listed without `group {{ }}`: imported as `group {{ {} }}`, \
                 what the lines mean; keepalived takes them for unknown keywords and drops the \
                 group, so under keepalived these instances did not fail over together",
                names
            );
            t.comment(format!(" {}: {message}", self.locate(span)));
            self.warnings.push(Diag::new(span, message));
            t.push(Entry {
                key: "group",
                value: Value::Array(loose),
                span: Some(span),
                comments: Vec::new(),
                trailing: None,
            });
        }
        self.track_copies = self
            .track_copies
            .saturating_add(members.len().saturating_mul(tracks.len()));
        if self.track_copies > MAX_TRACK_COPIES {
            // Not kept: the copies are what would cost.
            self.error(Diag::new(
                name.span,
                format!(
                    "the sync groups copy more than {MAX_TRACK_COPIES} trackers to their \
                     members in all"
                ),
            ));
            return Ok(());
        }
        t.shrink();
        self.groups.push(Group {
            table: t,
            members,
            tracks,
        });
        Ok(())
    }

    /// keepalived's `virtual_server_group NAME { ADDRESS [PORT] ... fwmark N ... }`, kept
    /// for the `virtual_server group NAME`s, before or after it.
    fn vs_group(&mut self, s: &Stmt) -> Result<(), Diag> {
        let name = Self::block_name(s)?;
        let b = block(s)?;
        let mut entries = Vec::new();
        for line in &b.body {
            no_block(line)?;
            let text = line
                .words
                .iter()
                .map(|w| w.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            match line.words.as_slice() {
                [k, n] if k.text == "fwmark" => {
                    let mark = int(n, 0, i64::from(u32::MAX))? as u32;
                    let Some(list) = self.opts.fwmarks.get(&mark) else {
                        return Err(Diag::new(
                            k.span,
                            format!(
                                "lb-daemon has no firewall marks: it needs the addresses and ports \
                                 your firewall marks with {mark}, given as `--fwmark \
                                 '{mark}=192.0.2.10 80,192.0.2.10 443'`"
                            ),
                        ));
                    };
                    entries.extend(list.iter().map(|e| (e.clone(), k.span)));
                }
                // `fwmark N inet|inet6`: the family is the addresses'.
                [k, n, f] if k.text == "fwmark" && matches!(f.text.as_str(), "inet" | "inet6") => {
                    return Err(Diag::new(
                        n.span,
                        "write `fwmark N` (the family comes from the --fwmark addresses)",
                    ))
                }
                _ => {
                    crate::config::group::entry(&text)
                        .map_err(|m| Diag::new(line.keyword().span, m))?;
                    entries.push((text, line.keyword().span));
                }
            }
        }
        if entries.is_empty() {
            return Err(Diag::new(name.span, "an empty virtual_server_group"));
        }
        if self.vs_groups.insert(name.text.clone(), entries).is_some() {
            return Err(Diag::new(
                name.span,
                format!("virtual_server_group {} is defined twice", name.text),
            ));
        }
        Ok(())
    }

    /// The first address of a group's entries (each checked already).
    fn group_vip(list: &[(String, Span)]) -> Result<IpAddr, Diag> {
        let (text, span) = &list[0];
        crate::config::group::entry(text)
            .map_err(|m| Diag::new(*span, m))?
            .first()
            .map(|(a, _)| *a)
            .ok_or_else(|| Diag::new(*span, "an empty entry"))
    }

    /// Every address of a group's entries (each checked already).
    fn group_addresses(list: &[(String, Span)]) -> Result<Vec<IpAddr>, Diag> {
        let mut out = Vec::new();
        for (text, span) in list {
            for (a, _) in crate::config::group::entry(text).map_err(|m| Diag::new(*span, m))? {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        Ok(out)
    }

    /// The `virtual_server_group` key of a service.
    fn group_entry(list: &[(String, Span)], span: Span) -> Entry {
        Entry {
            key: "virtual_server_group",
            value: Value::Array(
                list.iter()
                    .map(|(text, span)| Elem {
                        value: Value::Str(text.clone()),
                        span: Some(*span),
                        comments: Vec::new(),
                        trailing: None,
                    })
                    .collect(),
            ),
            span: Some(span),
            comments: Vec::new(),
            trailing: None,
        }
    }

    fn virtual_server(&mut self, s: &Stmt) -> Result<(), Diag> {
        let kw = s.keyword();
        let b = block(s)?;
        // `group NAME` (resolved at the end) or `fwmark N` (from --fwmark): the service's
        // addresses are a virtual_server_group.
        let mut group = None;
        let mut entries: Option<Vec<(String, Span)>> = None;
        let (ip_word, port_word) = match s.args() {
            [k, name] if k.text == "group" => {
                group = Some((name.text.clone(), name.span));
                (name, None)
            }
            [k, n] if k.text == "fwmark" => {
                let mark = int(n, 0, i64::from(u32::MAX))? as u32;
                let Some(list) = self.opts.fwmarks.get(&mark) else {
                    // Listed (and left out with --allow-unsupported) with what it needs.
                    let reason = format!(
                        "lb-daemon has no firewall marks: give the addresses and ports your \
                         firewall marks with {mark} as `--fwmark '{mark}=192.0.2.10 80,192.0.2.10 443'` \
                         (keepalived's `virtual_server_group` entries); they become one service \
                         with one pool and one persistence table, as the mark made them"
                    );
                    let comments = texts(&s.comments);
                    self.unsupported(None, "top level", comments, k.span, s.written(), reason);
                    return Ok(());
                };
                entries = Some(list.iter().map(|e| (e.clone(), n.span)).collect());
                (n, None)
            }
            [k, ..] if k.text == "group" || k.text == "fwmark" => {
                return Err(Diag::new(
                    k.span,
                    format!("expected `virtual_server {} NAME`", k.text),
                ))
            }
            [ip] => (ip, None),
            [ip, port] => (ip, Some(port)),
            [] => {
                return Err(Diag::new(
                    kw.span,
                    "`virtual_server` needs an address and a port",
                ))
            }
            [_, _, extra, ..] => {
                return Err(Diag::new(extra.span, "expected `virtual_server IP [PORT]`"))
            }
        };
        let grouped = group.is_some() || entries.is_some();
        let mut t = block_table(s);
        let (vip, vport, label) = if grouped {
            let label = format!(
                "virtual_server {}",
                s.args()
                    .iter()
                    .map(|w| w.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            // Until the group is found: the first entry's address names the service.
            let vip = match &entries {
                Some(list) => Self::group_vip(list)?,
                None => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            };
            if let Some(list) = &entries {
                t.push(Self::group_entry(list, ip_word.span));
            }
            // A real server without a port: the port of the packet (DR and tunnels keep it,
            // and so does NAT in a group).
            (vip, 0, label)
        } else {
            let vip = ip(ip_word)?;
            let vport = match port_word {
                Some(p) => port(p)?,
                None => 0,
            };
            t.push(Entry {
                key: "ip",
                value: Value::Str(vip.to_string()),
                span: Some(ip_word.span),
                comments: Vec::new(),
                trailing: None,
            });
            t.push(Entry {
                key: "port",
                value: Value::Int(vport),
                span: Some(port_word.map_or(ip_word.span, |p| p.span)),
                comments: Vec::new(),
                trailing: port_word
                    .is_none()
                    .then(|| " no port: every port of the VIP, as in keepalived".to_string()),
            });
            (
                vip,
                vport,
                format!("virtual_server {} {}", ip_word.text, vport),
            )
        };
        let mut inherit = Inherited::default();
        let mut real_servers = Vec::new();
        // sh-port/mh-port: keepalived applies them only with their scheduler.
        let mut port_flags: Vec<(&Stmt, &'static str)> = Vec::new();
        let mut lb_algo: Option<String> = None;
        // The service's forwarding method, and `sorry_server_lvs_method`'s (checked against
        // it once the block is read: either may come first).
        let mut lb_kind: Option<&'static str> = None;
        let mut sorry_method: Option<(&'static str, Span)> = None;
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let k = st.keyword();
                match Self::canonical(Ctx::VirtualServer, k) {
                    "lb_algo" => {
                        let w = one(st)?;
                        if w.text.parse::<crate::model::Scheduler>().is_err() {
                            return Err(Diag::new(
                                w.span,
                                format!(
                                    "scheduler `{}` is not supported: lb-daemon has {}",
                                    w.text,
                                    crate::model::Scheduler::ALL.map(|(_, n)| n).join(", ")
                                ),
                            ));
                        }
                        lb_algo = Some(w.text.clone());
                        self.put(&mut t, "lb_algo", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "lb_kind" => {
                        no_block(st)?;
                        let Some(w) = st.args().first() else {
                            return Err(Diag::new(k.span, format!("`{}` needs a value", k.text)));
                        };
                        let m = method(st)?;
                        lb_kind = Some(m.name());
                        self.put_method(&mut t, "lb_kind", m, w.span, st)?;
                    }
                    "persistence_timeout" => {
                        no_block(st)?;
                        match st.args() {
                            [] => {
                                self.put(
                                    &mut t,
                                    "persistence_timeout",
                                    Value::Int(DEFAULT_PERSISTENCE_TIMEOUT),
                                    k.span,
                                    st,
                                )?;
                                if let Some(e) = t.get_mut("persistence_timeout") {
                                    e.trailing.get_or_insert_with(|| {
                                        " keepalived's value for persistence_timeout without one (6 minutes)".into()
                                    });
                                }
                            }
                            [w] => self.put(
                                &mut t,
                                "persistence_timeout",
                                Value::Int(uint(w)?),
                                w.span,
                                st,
                            )?,
                            [_, extra, ..] => {
                                return Err(Diag::new(
                                    extra.span,
                                    "`persistence_timeout` takes one value",
                                ))
                            }
                        }
                    }
                    "persistence_granularity" => {
                        let w = one(st)?;
                        // An IPv6 prefix length, or an IPv4 netmask.
                        let v = match w.text.parse::<i64>() {
                            Ok(n) => Value::Int(n),
                            Err(_) => Value::Str(w.text.clone()),
                        };
                        self.put(&mut t, "persistence_granularity", v, w.span, st)?;
                    }
                    "protocol" => {
                        let w = one(st)?;
                        let p = w.text.to_ascii_uppercase();
                        if p != "TCP" && p != "UDP" {
                            return Err(Diag::new(
                                w.span,
                                format!(
                                    "protocol `{}` is not supported: lb-daemon has TCP and UDP",
                                    w.text
                                ),
                            ));
                        }
                        self.put(&mut t, "protocol", Value::Str(p), w.span, st)?;
                    }
                    "delay_loop" => {
                        let w = one(st)?;
                        self.put(&mut t, "delay_loop", seconds(w)?, w.span, st)?;
                    }
                    "alpha" => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "alpha", Value::Bool(on), span, st)?;
                    }
                    key @ ("quorum" | "hysteresis") => {
                        let w = one(st)?;
                        let key = if key == "quorum" {
                            "quorum"
                        } else {
                            "hysteresis"
                        };
                        self.put(&mut t, key, Value::Int(uint(w)?), w.span, st)?;
                    }
                    "sorry_server" => {
                        no_block(st)?;
                        let (a, p) = match st.args() {
                            [a] => (a, None),
                            [a, p] => (a, Some(p)),
                            [] => return Err(Diag::new(k.span, "`sorry_server` needs an address")),
                            [_, _, extra, ..] => {
                                return Err(Diag::new(
                                    extra.span,
                                    "expected `sorry_server IP [PORT]`",
                                ))
                            }
                        };
                        let addr = ip(a)?;
                        // keepalived gives a sorry server without a port the service's.
                        let sport = match p {
                            Some(p) => port(p)?,
                            None => vport,
                        };
                        let v = Value::Inline(vec![
                            ("ip", Value::Str(addr.to_string())),
                            ("port", Value::Int(sport)),
                        ]);
                        self.put(&mut t, "sorry_server", v, a.span, st)?;
                    }
                    "nat_mask" => {
                        no_block(st)?;
                        let message = "`nat_mask` is obsolete (it meant something to the \
                                       Linux 2.2 IPVS only; keepalived ignores it): left out";
                        t.comment(format!(" {}: {message}", self.locate(k.span)));
                        self.warnings.push(Diag::new(k.span, message));
                    }
                    "sorry_server_lvs_method" => {
                        no_block(st)?;
                        let Some(w) = st.args().first() else {
                            return Err(Diag::new(k.span, format!("`{}` needs a value", k.text)));
                        };
                        let m = method(st)?;
                        if let Some(span) = m.port.map(|p| p.1).or(m.tunnel.and_then(|t| t.1)) {
                            return Err(Diag::new(
                                span,
                                "a sorry server takes the service's tunnel (or IPIP): its own \
                                 type and port are not supported",
                            ));
                        }
                        sorry_method = Some((m.name(), w.span));
                    }
                    "inhibit_on_failure" => {
                        let (on, span) = flag(st)?;
                        inherit.items.push((
                            "inhibit_on_failure",
                            Value::Bool(on),
                            span,
                            "virtual_server",
                        ));
                    }
                    key @ ("retry" | "delay_before_retry" | "warmup" | "connect_timeout"
                    | "virtualhost" | "weight") => {
                        let w = one(st)?;
                        let (key, v) = inherited_value(key, w)?;
                        if inherit.get(key).is_some() {
                            return Err(Diag::new(k.span, format!("`{}` is given twice", k.text)));
                        }
                        inherit.items.push((key, v, w.span, "virtual_server"));
                    }
                    "sh-port" => {
                        no_args(st)?;
                        port_flags.push((st, "sh"));
                    }
                    "mh-port" => {
                        no_args(st)?;
                        port_flags.push((st, "mh"));
                    }
                    "ip_family" => {
                        let w = one(st)?;
                        let v6 = match w.text.as_str() {
                            "inet" => false,
                            "inet6" => true,
                            _ => return Err(Diag::new(w.span, "expected inet or inet6")),
                        };
                        if !grouped && v6 != vip.is_ipv6() {
                            return Err(Diag::new(
                                w.span,
                                format!(
                                    "the virtual server's address {vip} is not of family {}",
                                    w.text
                                ),
                            ));
                        }
                    }
                    "real_server" => {
                        real_servers.push(self.real_server(st, &label, vport)?);
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::VirtualServer, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        for (st, sched) in port_flags {
            if lb_algo.as_deref() == Some(sched) {
                if !t.has("hash_port") {
                    self.put(
                        &mut t,
                        "hash_port",
                        Value::Bool(true),
                        st.keyword().span,
                        st,
                    )?;
                }
            } else {
                self.unsupported(
                    Some(&mut t),
                    &label,
                    texts(&st.comments),
                    st.keyword().span,
                    st.written(),
                    format!(
                        "keepalived ignores {}-port unless lb_algo is {sched}",
                        sched
                    ),
                );
            }
        }
        // No lb_algo: keepalived's default, wlc, is lb-daemon's too (the TOML leaves it out).
        if !t.has("lb_kind") && !Self::written(b, Ctx::VirtualServer, "lb_kind") {
            t.push(generated(
                "lb_kind",
                Value::Str("NAT".into()),
                kw.span,
                " keepalived's default without `lb_kind`",
            ));
        }
        // keepalived reaches the sorry server the service's way unless it says otherwise:
        // the TOML's `lvs_method` in the sorry server's table, where it differs.
        if let Some((m, _)) = sorry_method {
            if m != lb_kind.unwrap_or("NAT") {
                if let Some(Entry {
                    value: Value::Inline(items),
                    ..
                }) = t.get_mut("sorry_server")
                {
                    items.push(("lvs_method", Value::Str(m.into())));
                }
            }
        }
        // An IPVS fwmark service takes every protocol (keepalived ignores `protocol` there);
        // a group here is of one: TCP, what marked services carry (HTTP and HTTPS).
        if entries.is_some() {
            if t.has("protocol") {
                self.warnings.push(Diag::new(
                    kw.span,
                    "an fwmark service takes every protocol under IPVS (keepalived ignores \
                     `protocol` there); lb-daemon's service is of the one written",
                ));
            } else {
                t.push(generated(
                    "protocol",
                    Value::Str("TCP".into()),
                    kw.span,
                    " an fwmark service takes every protocol under IPVS; lb-daemon's group is of \
                     one: TCP here (copy the service with protocol = \"UDP\" for UDP)",
                ));
                self.warnings.push(Diag::new(
                    kw.span,
                    "an fwmark service takes every protocol under IPVS; imported as TCP (copy it \
                     with protocol UDP if the mark carries UDP)",
                ));
            }
        }
        if !t.has("protocol") {
            t.push(generated(
                "protocol",
                Value::Str("UDP".into()),
                kw.span,
                " keepalived's default without `protocol` (\"no protocol set - defaulting to UDP\")",
            ));
        }
        if !t.has("persistence_timeout") {
            if t.has("persistence_granularity") {
                t.push(generated(
                    "persistence_timeout",
                    Value::Int(DEFAULT_PERSISTENCE_TIMEOUT),
                    kw.span,
                    " keepalived makes a service with persistence_granularity persistent, 6 minutes",
                ));
            } else if vport == 0 && !grouped {
                t.push(generated(
                    "persistence_timeout",
                    Value::Int(DEFAULT_PERSISTENCE_TIMEOUT),
                    kw.span,
                    " keepalived makes a port-0 service persistent (\"zero port only valid for persistent services\")",
                ));
            }
        }
        Self::quorum_limits(&mut t, &real_servers, &inherit);
        let is_nat = |t: &Table, key: &str| matches!(t.get(key).map(|e| &e.value), Some(Value::Str(m)) if m == "NAT");
        let nat =
            is_nat(&t, "lb_kind") || real_servers.iter().any(|r| is_nat(&r.table, "lvs_method"));
        for mut rs in real_servers {
            Self::inherit_into_real_server(&mut rs, &inherit);
            t.children.push(Child {
                name: "real_server",
                array: true,
                table: rs.table,
            });
        }
        t.shrink();
        let addresses = match &entries {
            Some(list) => Self::group_addresses(list)?,
            None => Vec::new(),
        };
        self.servers.push(Server {
            table: t,
            vip,
            group,
            addresses,
            span: kw.span,
            nat,
        });
        Ok(())
    }

    /// keepalived's corrections of a quorum it can never reach, and of a hysteresis that would
    /// make the quorum 0 or less (`validate_check_config`), made explicit.
    fn quorum_limits(t: &mut Table, rss: &[RealServer], inherit: &Inherited) {
        let vs_weight = match inherit.get("weight") {
            Some((_, Value::Int(w), _, _)) => *w,
            _ => 1,
        };
        let total: i64 = rss
            .iter()
            .map(|rs| match rs.table.get("weight").map(|e| &e.value) {
                Some(Value::Int(w)) => *w,
                _ => vs_weight,
            })
            .sum();
        let quorum = match t.get("quorum").map(|e| &e.value) {
            Some(Value::Int(q)) => Some(*q),
            _ => None,
        };
        if let Some(q) = quorum {
            if total > 0 && q > total {
                if let Some(e) = t.get_mut("quorum") {
                    e.value = Value::Int(total);
                    e.trailing = Some(format!(
                        " keepalived.conf says {q}: keepalived lowers a quorum above the real servers' total weight to it"
                    ));
                }
            }
        }
        let effective_quorum = match t.get("quorum").map(|e| &e.value) {
            Some(Value::Int(q)) => *q,
            _ => 1,
        };
        if let Some(Value::Int(h)) = t.get("hysteresis").map(|e| e.value.clone()) {
            if effective_quorum >= 1 && h >= effective_quorum {
                if let Some(e) = t.get_mut("hysteresis") {
                    e.value = Value::Int(effective_quorum - 1);
                    e.trailing = Some(format!(
                        " keepalived.conf says {h}: keepalived lowers a hysteresis at or above the quorum to quorum - 1"
                    ));
                }
            }
        }
    }

    /// Writes a forwarding method as the TOML says it: `key` (`lb_kind`, or a real server's
    /// `lvs_method`) and the tunnel's type and port.
    fn put_method(
        &self,
        t: &mut Table,
        key: &'static str,
        m: Method,
        span: Span,
        st: &Stmt,
    ) -> Result<(), Diag> {
        self.put(t, key, Value::Str(m.name().into()), span, st)?;
        if let Some((kind, kspan)) = m.tunnel {
            // A real server's `lvs_method TUN` without a type means IPIP in keepalived
            // (each `lvs_method` starts from IPIP), where the TOML would take the
            // virtual_server's: the type is written out.
            if kind != crate::model::TunnelKind::Ipip || kspan.is_some() || key == "lvs_method" {
                let at = kspan.unwrap_or(span);
                self.put(t, "tunnel_type", Value::Str(kind.name().into()), at, st)?;
            }
            if let Some((port, pspan)) = m.port {
                self.put(t, "tunnel_port", Value::Int(i64::from(port)), pspan, st)?;
            }
        }
        Ok(())
    }

    fn real_server(&mut self, s: &Stmt, vs_label: &str, vport: i64) -> Result<RealServer, Diag> {
        let kw = s.keyword();
        let b = block(s)?;
        let (ip_word, port_word) = match s.args() {
            [ip] => (ip, None),
            [ip, port] => (ip, Some(port)),
            [] => return Err(Diag::new(kw.span, "`real_server` needs an address")),
            [_, _, extra, ..] => {
                return Err(Diag::new(extra.span, "expected `real_server IP [PORT]`"))
            }
        };
        let addr = ip(ip_word)?;
        let label = format!("{vs_label}, real_server {}", ip_word.text);
        let mut t = block_table(s);
        t.push(Entry {
            key: "ip",
            value: Value::Str(addr.to_string()),
            span: Some(ip_word.span),
            comments: Vec::new(),
            trailing: None,
        });
        match port_word {
            Some(p) => t.push(Entry {
                key: "port",
                value: Value::Int(port(p)?),
                span: Some(p.span),
                comments: Vec::new(),
                trailing: None,
            }),
            // keepalived gives a real server without a port the service's; a group's
            // service has none, and IPVS then keeps each packet's port.
            None => t.push(generated(
                "port",
                Value::Int(vport),
                ip_word.span,
                if vport == 0 {
                    " no port in keepalived.conf: each packet keeps its own, as under IPVS"
                } else {
                    " no port in keepalived.conf: the service's, as keepalived sets it"
                },
            )),
        }
        let mut inherit = Inherited::default();
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let k = st.keyword();
                match Self::canonical(Ctx::RealServer, k) {
                    "weight" => {
                        let w = one(st)?;
                        self.put(&mut t, "weight", Value::Int(uint(w)?), w.span, st)?;
                    }
                    key @ ("uthreshold" | "lthreshold") => {
                        let w = one(st)?;
                        let key = if key == "uthreshold" {
                            "uthreshold"
                        } else {
                            "lthreshold"
                        };
                        self.put(&mut t, key, Value::Int(uint(w)?), w.span, st)?;
                    }
                    "inhibit_on_failure" => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "inhibit_on_failure", Value::Bool(on), span, st)?;
                    }
                    key @ ("notify_up" | "notify_down") => {
                        let key = if key == "notify_up" {
                            "notify_up"
                        } else {
                            "notify_down"
                        };
                        self.hook(&mut t, &label, key, st)?;
                    }
                    "alpha" => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "alpha", Value::Bool(on), span, st)?;
                    }
                    "delay_loop" => {
                        let w = one(st)?;
                        self.put(&mut t, "delay_loop", seconds(w)?, w.span, st)?;
                    }
                    key @ ("retry" | "delay_before_retry" | "warmup" | "connect_timeout"
                    | "virtualhost") => {
                        let w = one(st)?;
                        let (key, v) = inherited_value(key, w)?;
                        if inherit.get(key).is_some() {
                            return Err(Diag::new(k.span, format!("`{}` is given twice", k.text)));
                        }
                        inherit.items.push((key, v, w.span, "real_server"));
                    }
                    "lvs_method" => {
                        no_block(st)?;
                        let Some(w) = st.args().first() else {
                            return Err(Diag::new(k.span, format!("`{}` needs a value", k.text)));
                        };
                        let m = method(st)?;
                        self.put_method(&mut t, "lvs_method", m, w.span, st)?;
                    }
                    "FILE_CHECK" => {
                        let check = self.file_check(st, &format!("{label}, FILE_CHECK"))?;
                        t.children.push(Child {
                            name: "FILE_CHECK",
                            array: true,
                            table: check,
                        });
                    }
                    kind @ ("TCP_CHECK" | "HTTP_GET" | "MISC_CHECK" | "SSL_GET" | "DNS_CHECK"
                    | "UDP_CHECK" | "PING_CHECK" | "SMTP_CHECK") => {
                        let (name, ctx): (&'static str, Ctx) = match kind {
                            "TCP_CHECK" => ("TCP_CHECK", Ctx::TcpCheck),
                            "HTTP_GET" => ("HTTP_GET", Ctx::HttpGet),
                            "SSL_GET" => ("SSL_GET", Ctx::SslGet),
                            "DNS_CHECK" => ("DNS_CHECK", Ctx::DnsCheck),
                            "UDP_CHECK" => ("UDP_CHECK", Ctx::UdpCheck),
                            "PING_CHECK" => ("PING_CHECK", Ctx::PingCheck),
                            "SMTP_CHECK" => ("SMTP_CHECK", Ctx::SmtpCheck),
                            _ => ("MISC_CHECK", Ctx::MiscCheck),
                        };
                        let check = self.check(st, ctx, &format!("{label}, {name}"))?;
                        t.children.push(Child {
                            name,
                            array: true,
                            table: check,
                        });
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::RealServer, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        Ok(RealServer { table: t, inherit })
    }

    /// keepalived's `FILE_CHECK { track_file NAME; weight N [reverse] }`.
    fn file_check(&mut self, s: &Stmt, label: &str) -> Result<Table, Diag> {
        let b = block(s)?;
        let mut t = block_table(s);
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let k = st.keyword();
                match k.text.as_str() {
                    "track_file" => {
                        let w = one(st)?;
                        self.put(&mut t, "track_file", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "weight" => {
                        let (w, v, reverse) = weight_arg(st)?;
                        self.put(&mut t, "weight", Value::Int(v), w.span, st)?;
                        if let Some((r, span)) = reverse {
                            self.put(&mut t, "reverse", Value::Bool(r), span, st)?;
                        }
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::FileCheck, label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        if !t.has("track_file") {
            return Err(Diag::new(
                s.keyword().span,
                "a FILE_CHECK needs a `track_file`",
            ));
        }
        Ok(t)
    }

    /// A checker block: TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK, DNS_CHECK, UDP_CHECK,
    /// PING_CHECK or SMTP_CHECK.
    fn check(&mut self, s: &Stmt, ctx: Ctx, label: &str) -> Result<Table, Diag> {
        let b = block(s)?;
        if let Some(w) = s.args().first() {
            return Err(Diag::new(
                w.span,
                format!("`{}` takes no value", s.keyword().text),
            ));
        }
        let connects = ctx != Ctx::MiscCheck;
        let http = matches!(ctx, Ctx::HttpGet | Ctx::SslGet);
        let mut t = block_table(s);
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let k = st.keyword();
                match Self::canonical(ctx, k) {
                    key @ ("connect_ip" | "bindto") if connects => {
                        let w = one(st)?;
                        ip(w)?;
                        let key = if key == "connect_ip" {
                            "connect_ip"
                        } else {
                            "bindto"
                        };
                        self.put(&mut t, key, Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "connect_port" if connects && ctx != Ctx::PingCheck => {
                        let w = one(st)?;
                        self.put(&mut t, "connect_port", Value::Int(port(w)?), w.span, st)?;
                    }
                    "connect_timeout" if connects => {
                        let w = one(st)?;
                        self.put(&mut t, "connect_timeout", seconds(w)?, w.span, st)?;
                    }
                    "retry" => {
                        let w = one(st)?;
                        self.put(&mut t, "retry", Value::Int(uint(w)?), w.span, st)?;
                    }
                    key @ ("delay_before_retry" | "warmup" | "delay_loop") => {
                        let w = one(st)?;
                        let key = match key {
                            "delay_before_retry" => "delay_before_retry",
                            "warmup" => "warmup",
                            _ => "delay_loop",
                        };
                        self.put(&mut t, key, seconds(w)?, w.span, st)?;
                    }
                    "alpha" => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "alpha", Value::Bool(on), span, st)?;
                    }
                    "url" if http => {
                        let url = self.url(st, label)?;
                        t.children.push(Child {
                            name: "url",
                            array: true,
                            table: url,
                        });
                    }
                    "virtualhost" if http => {
                        let w = one(st)?;
                        self.put(
                            &mut t,
                            "virtualhost",
                            Value::Str(w.text.clone()),
                            w.span,
                            st,
                        )?;
                    }
                    "http_protocol"
                        if http && st.args().len() == 1 && st.args()[0].text == "1.1" =>
                    {
                        no_block(st)?;
                        t.comment(" http_protocol 1.1: what lb-daemon sends");
                    }
                    "fast_recovery" if http && matches!(flag(st), Ok((true, _))) => {
                        t.comment(" fast_recovery: what lb-daemon always does");
                    }
                    "enable_sni" if ctx == Ctx::SslGet => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "enable_sni", Value::Bool(on), span, st)?;
                    }
                    "sni_name" if ctx == Ctx::SslGet => {
                        let w = one(st)?;
                        self.put(&mut t, "sni_name", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    // Checked (a type keepalived knows, a domain name) where the TOML is read.
                    key @ ("type" | "name") if ctx == Ctx::DnsCheck => {
                        let w = one(st)?;
                        let key = if key == "type" { "type" } else { "name" };
                        self.put(&mut t, key, Value::Str(w.text.clone()), w.span, st)?;
                    }
                    // keepalived's hex strings may be written in groups: kept as written.
                    "payload" if ctx == Ctx::UdpCheck => {
                        no_block(st)?;
                        let Some(first) = st.args().first() else {
                            return Err(Diag::new(k.span, "`payload` needs hex digits"));
                        };
                        let hex: Vec<&str> = st.args().iter().map(|w| w.text.as_str()).collect();
                        self.put(&mut t, "payload", Value::Str(hex.join(" ")), first.span, st)?;
                    }
                    "require_reply" if ctx == Ctx::UdpCheck => {
                        no_block(st)?;
                        let v = match st.args() {
                            [] => Value::Bool(true),
                            words => {
                                let hex: Vec<&str> =
                                    words.iter().map(|w| w.text.as_str()).collect();
                                Value::Str(hex.join(" "))
                            }
                        };
                        let span = st.args().first().map_or(k.span, |w| w.span);
                        self.put(&mut t, "require_reply", v, span, st)?;
                    }
                    key @ ("min_reply_length" | "max_reply_length") if ctx == Ctx::UdpCheck => {
                        let w = one(st)?;
                        let key = if key == "min_reply_length" {
                            "min_reply_length"
                        } else {
                            "max_reply_length"
                        };
                        self.put(&mut t, key, Value::Int(uint(w)?), w.span, st)?;
                    }
                    "helo_name" if ctx == Ctx::SmtpCheck => {
                        let w = one(st)?;
                        self.put(&mut t, "helo_name", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "misc_path" if ctx == Ctx::MiscCheck => {
                        no_block(st)?;
                        if st.args().is_empty() {
                            return Err(Diag::new(k.span, "`misc_path` needs a command"));
                        }
                        let cmd = self.command(&mut t, st.args())?;
                        self.scripts_named = true;
                        self.put(&mut t, "misc_path", Value::Str(cmd), st.args()[0].span, st)?;
                    }
                    "misc_timeout" if ctx == Ctx::MiscCheck => {
                        let w = one(st)?;
                        self.put(&mut t, "misc_timeout", seconds(w)?, w.span, st)?;
                    }
                    "misc_dynamic" if ctx == Ctx::MiscCheck => {
                        let (on, span) = flag(st)?;
                        self.put(&mut t, "misc_dynamic", Value::Bool(on), span, st)?;
                    }
                    "user" if ctx == Ctx::MiscCheck => self.user(&mut t, label, st)?,
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, ctx, label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        Ok(t)
    }

    fn url(&mut self, s: &Stmt, label: &str) -> Result<Table, Diag> {
        let b = block(s)?;
        if let Some(w) = s.args().first() {
            return Err(Diag::new(w.span, "`url` takes no value"));
        }
        let label = format!("{label}, url");
        let mut t = block_table(s);
        for st in &b.body {
            let r = (|| -> Result<(), Diag> {
                let k = st.keyword();
                match k.text.as_str() {
                    "path" => {
                        let w = one(st)?;
                        self.put(&mut t, "path", Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "status_code" => {
                        no_block(st)?;
                        let Some(first) = st.args().first() else {
                            return Err(Diag::new(k.span, "`status_code` needs a value"));
                        };
                        let codes: Vec<&str> = st.args().iter().map(|w| w.text.as_str()).collect();
                        self.put(
                            &mut t,
                            "status_code",
                            Value::Str(codes.join(" ")),
                            first.span,
                            st,
                        )?;
                    }
                    "virtualhost" => {
                        let w = one(st)?;
                        self.put(
                            &mut t,
                            "virtualhost",
                            Value::Str(w.text.clone()),
                            w.span,
                            st,
                        )?;
                    }
                    // Checked (32 hex digits, a pattern that compiles) where the TOML is read.
                    "digest" | "regex" => {
                        let w = one(st)?;
                        let key = if k.text == "digest" {
                            "digest"
                        } else {
                            "regex"
                        };
                        self.put(&mut t, key, Value::Str(w.text.clone()), w.span, st)?;
                    }
                    "regex_no_match" => {
                        no_args(st)?;
                        self.put(&mut t, "regex_no_match", Value::Bool(true), k.span, st)?;
                    }
                    other => {
                        let other = other.to_string();
                        self.other(&mut t, Ctx::Url, &label, st, &other);
                    }
                }
                Ok(())
            })();
            self.recover(st, r);
        }
        Ok(t)
    }

    /// keepalived's inheritance, made explicit in a real server and its checks: the check's
    /// own setting, else the real server's, else the virtual server's.
    fn inherit_into_real_server(rs: &mut RealServer, vs: &Inherited) {
        let pick = |key: &str| rs.inherit.get(key).or_else(|| vs.get(key)).cloned();
        for key in ["weight", "inhibit_on_failure"] {
            if let (false, Some((key, value, span, from))) = (rs.table.has(key), pick(key)) {
                rs.table.push(generated(
                    key,
                    value,
                    span,
                    format!(" the {from}'s (keepalived's inheritance)"),
                ));
            }
        }
        for child in &mut rs.table.children {
            let keys: &[&str] = match child.name {
                "HTTP_GET" | "SSL_GET" => &[
                    "retry",
                    "delay_before_retry",
                    "warmup",
                    "connect_timeout",
                    "virtualhost",
                ],
                // MISC_CHECK has no connection, so no connect_timeout.
                "MISC_CHECK" => &["retry", "delay_before_retry", "warmup"],
                // FILE_CHECK follows its file: no timing keys at all.
                "FILE_CHECK" => &[],
                _ => &["retry", "delay_before_retry", "warmup", "connect_timeout"],
            };
            for &key in keys {
                if let (false, Some((key, value, span, from))) = (child.table.has(key), pick(key)) {
                    child.table.push(generated(
                        key,
                        value,
                        span,
                        format!(" the {from}'s (keepalived's inheritance)"),
                    ));
                }
            }
        }
    }

    fn finish(mut self) -> Result<Converted, Vec<Diag>> {
        // A sync group's trackers, copied to its members.
        let copies: Vec<(String, &'static str, Elem)> = self
            .groups
            .iter()
            .flat_map(|g| {
                g.members.iter().flat_map(move |m| {
                    g.tracks
                        .iter()
                        .map(move |(k, e)| (m.clone(), *k, e.clone()))
                })
            })
            .collect();
        // Looked up by name, not scanned: members and instances may be many.
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (n, i) in self.instances.iter().enumerate() {
            by_name.entry(i.name.clone()).or_insert(n);
        }
        for (member, key, elem) in copies {
            let found = by_name.get(&member).copied();
            if let Some(inst) = found.and_then(|n| self.instances.get_mut(n)) {
                match inst.table.get_mut(key) {
                    Some(Entry {
                        value: Value::Array(a),
                        ..
                    }) => a.push(elem),
                    _ => {
                        let span = elem.span;
                        inst.table.push(Entry {
                            key,
                            value: Value::Array(vec![elem]),
                            span,
                            comments: Vec::new(),
                            trailing: None,
                        });
                    }
                }
            }
        }
        // The first non-zero weight of each script name.
        let mut script_weights: HashMap<String, i64> = HashMap::new();
        for (_, n, w) in &self.scripts {
            if *w != 0 {
                script_weights.entry(n.clone()).or_insert(*w);
            }
        }
        let mut errors = Vec::new();
        for inst in &mut self.instances {
            // `chk weight 0` overrides the script's weight in keepalived; lb-daemon reads a
            // track entry's 0 as "the script's weight".
            for (name, span) in &inst.zero_weight_scripts {
                if let Some(w) = script_weights.get(name) {
                    errors.push(Diag::new(
                        *span,
                        format!(
                            "weight 0 overrides vrrp_script {name}'s weight {w} here, which lb-daemon \
                             cannot express: give the script weight 0 or this entry its own weight"
                        ),
                    ));
                }
            }
            let t = &mut inst.table;
            if inst.priority.is_none() {
                let (p, why) = if inst.state.as_deref() == Some("MASTER") {
                    (
                        OWNER_PRIORITY,
                        " keepalived's default for state MASTER (the address owner)",
                    )
                } else {
                    (DEFAULT_PRIORITY, " keepalived's default")
                };
                t.push(generated("priority", Value::Int(p), inst.span, why));
                inst.priority = Some(p);
            }
            if inst.state.is_none() && inst.priority == Some(OWNER_PRIORITY) {
                t.push(generated(
                    "state",
                    Value::Str("MASTER".into()),
                    inst.span,
                    " keepalived starts an address owner (priority 255) as MASTER",
                ));
            }
            let v6 = inst.vips.first().is_some_and(|(a, _)| a.is_ipv6());
            if v6 && !t.has("version") && self.vrrp_version != Some(3) {
                t.push(generated(
                    "version",
                    Value::Int(3),
                    inst.span,
                    " keepalived always runs an IPv6 instance with VRRPv3",
                ));
            }
            // Only now is the version known: global_defs may come after the instance.
            let version = match t.get("version").map(|e| &e.value) {
                Some(Value::Int(v)) => *v,
                _ if v6 => 3,
                _ => self.vrrp_version.unwrap_or(2),
            };
            let auth = t.children.iter().position(|c| c.name == "authentication");
            if let (3, Some(i)) = (version, auth) {
                let auth = t.children.remove(i).table;
                let span = auth.span.unwrap_or(inst.span);
                let message =
                    "keepalived ignores authentication with VRRPv3, which has none (RFC 9568): left out";
                auth.comments.into_iter().for_each(|c| t.comment(c));
                t.comment(format!(
                    " {}: authentication {{ ... }}: {message}",
                    self.sources.locate(span)
                ));
                self.warnings.push(Diag::new(span, message));
            }
            for (key, value, span) in &self.garp {
                if !t.has(key) {
                    t.push(generated(
                        key,
                        value.clone(),
                        *span,
                        " from global_defs' vrrp_".to_string() + key,
                    ));
                }
            }
            // keepalived's lower-priority announcements default to global_defs' values
            // (vrrp_garp_lower_prio_*, else vrrp_garp_master_*, else 5), lb-daemon's to the
            // instance's garp_master_*: where an instance sets its own, the two differ.
            for (lower, master) in [
                ("garp_lower_prio_repeat", "garp_master_repeat"),
                ("garp_lower_prio_delay", "garp_master_delay"),
            ] {
                if t.has(lower) {
                    continue;
                }
                let Some(own) = t.get(master).map(|e| (e.value.clone(), e.span)) else {
                    continue;
                };
                let global = self.garp.iter().find(|g| g.0 == master);
                let keepalived = global.map_or(Value::Int(5), |g| g.1.clone());
                if own.0 != keepalived {
                    let span = own.1.or(global.map(|g| g.2)).unwrap_or(inst.span);
                    t.push(generated(
                        lower,
                        keepalived,
                        span,
                        " keepalived's: global_defs' value, not this instance's ".to_string()
                            + master,
                    ));
                }
            }
        }
        errors.into_iter().for_each(|d| self.error(d));
        // What follows looks across blocks: with a statement left out for its error (a VIP,
        // an instance), its findings would be that statement's error again.
        if !self.errors.is_empty() {
            if let Err(stop) = self.limit() {
                self.errors.push(stop);
            }
            return Err(self.errors);
        }
        // A VIP no instance holds is served whatever the VRRP state, as keepalived configures
        // IPVS services whatever the state.
        let mut interfaces: Vec<(String, String)> = Vec::new();
        let mut seen_interfaces: std::collections::HashSet<String> = Default::default();
        // The first instance (and its first entry) that holds each VIP, found once: a scan
        // per virtual server would be quadratic in the size of the file.
        for vs in &mut self.servers {
            let Some((name, span)) = vs.group.take() else {
                continue;
            };
            let Some(list) = self.vs_groups.get(&name) else {
                self.errors
                    .push(Diag::new(span, format!("no virtual_server_group {name}")));
                continue;
            };
            match Self::group_vip(list).and_then(|v| Ok((v, Self::group_addresses(list)?))) {
                Ok((vip, addresses)) => {
                    vs.vip = vip;
                    vs.addresses = addresses;
                }
                Err(d) => {
                    self.errors.push(d);
                    continue;
                }
            }
            let entry = Self::group_entry(list, span);
            vs.table.items.insert(0, super::emit::Item::Entry(entry));
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let mut owners: HashMap<IpAddr, (&Instance, &Option<String>)> = HashMap::new();
        for i in &self.instances {
            for (a, dev) in &i.vips {
                owners.entry(*a).or_insert((i, dev));
            }
        }
        for vs in &mut self.servers {
            // A group is held by VRRP as a whole, or not at all.
            let held: Vec<&IpAddr> = vs
                .addresses
                .iter()
                .filter(|a| owners.contains_key(a))
                .collect();
            if !held.is_empty() && held.len() != vs.addresses.len() {
                let free = vs.addresses.iter().find(|a| !owners.contains_key(a));
                self.errors.push(Diag::new(
                    vs.span,
                    format!(
                        "the group's {} is in a vrrp_instance and {} in none: keepalived \
                         serves the group's services on every node for the one and on the \
                         master for the other; lb-daemon serves one service on one node, so \
                         put every address of the group in the instances, or none",
                        held[0],
                        free.map_or_else(String::new, |a| a.to_string())
                    ),
                ));
                continue;
            }
            let owner = owners.get(&vs.vip).copied();
            match owner {
                Some((inst, dev)) => {
                    let iface = dev.clone().or_else(|| inst.interface.clone()).unwrap_or_default();
                    if seen_interfaces.insert(iface.clone()) {
                        interfaces.push((iface, inst.name.clone()));
                    }
                }
                None => vs.table.push(generated(
                    "static",
                    Value::Bool(true),
                    vs.span,
                    " no vrrp_instance holds this VIP: keepalived configures its service on every node, \
                     whatever the VRRP state",
                )),
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let dataplane = match self.servers.first() {
            None => None,
            Some(first) => {
                let span = first.span;
                let (iface, why) = match (&self.opts.interface, &interfaces[..]) {
                    (Some(i), _) => (i.clone(), " given with --interface".to_string()),
                    (None, [(i, inst)]) => (
                        i.clone(),
                        format!(
                            " Here: where vrrp_instance {inst} holds the VIPs (--interface chooses another)."
                        ),
                    ),
                    (None, []) => {
                        return Err(vec![Diag::new(
                            span,
                            "no vrrp_instance holds the virtual servers' VIPs, so the importer cannot \
                             tell which interface XDP should run on: give --interface",
                        )])
                    }
                    (None, several) => {
                        let names: Vec<&str> = several.iter().map(|(i, _)| i.as_str()).collect();
                        return Err(vec![Diag::new(
                            span,
                            format!(
                                "the virtual servers' VIPs are on {}: give --interface for the one \
                                 XDP should run on",
                                names.join(" and ")
                            ),
                        )]);
                    }
                };
                let mut t = Table {
                    comments: vec![
                        " Where the XDP program runs: keepalived has no such setting (IPVS works on".into(),
                        " every interface), so the importer chose it.".into(),
                    ],
                    span: Some(span),
                    ..Default::default()
                };
                // NAT: the real servers' replies come back through the node, on the other
                // instances' interfaces in keepalived's usual set-up (an inside VIP as their
                // gateway): the program must run there too.
                let mut inside: Vec<Elem> = Vec::new();
                if self.servers.iter().any(|s| s.nat) {
                    for i in &self.instances {
                        let Some(name) = &i.interface else { continue };
                        if *name != iface
                            && !inside.iter().any(|e| e.value == Value::Str(name.clone()))
                        {
                            inside.push(Elem {
                                value: Value::Str(name.clone()),
                                span: Some(i.span),
                                comments: Vec::new(),
                                trailing: None,
                            });
                        }
                    }
                }
                t.push(Entry {
                    key: "interface",
                    value: Value::Str(iface),
                    span: Some(span),
                    comments: vec![why],
                    trailing: None,
                });
                if !inside.is_empty() {
                    t.push(Entry {
                        key: "inside_interfaces",
                        value: Value::Array(inside),
                        span: Some(span),
                        comments: vec![
                            " NAT: the real servers' replies come back through the node, here on"
                                .into(),
                            " the other vrrp_instances' interfaces.".into(),
                        ],
                        trailing: None,
                    });
                }
                Some(t)
            }
        };
        let sync = match &self.sync {
            Some(d) => Some(self.sync_section(d).map_err(|e| vec![e])?),
            None => None,
        };
        let mut global = self.global.take();
        if self.scripts_named && !self.script_security {
            let t = global.get_or_insert_with(Table::default);
            let span = t.span.or_else(|| self.instances.first().map(|i| i.span));
            t.push(Entry {
                key: "enable_script_security",
                value: Value::Bool(false),
                span,
                comments: vec![
                    " keepalived's default: it runs scripts without enable_script_security's checks.".into(),
                    " lb-daemon's default is true (scripts and their directories root-owned and".into(),
                    " not writable by others): set it once `lb-daemon check` passes with it.".into(),
                ],
                trailing: None,
            });
            if !t.has("script_user") {
                t.comment(
                    " keepalived runs scripts as keepalived_script when that user exists, else as",
                );
                t.comment(" root; lb-daemon runs them as root unless script_user is set.");
            }
        }
        let mut doc = Doc {
            header: Vec::new(),
            sections: Vec::new(),
            tail: self.tail,
        };
        if let Some(t) = global.filter(|t| !t.is_empty()) {
            doc.sections.push(Section {
                name: "global_defs",
                array: false,
                table: t,
            });
        }
        if let Some(t) = dataplane {
            doc.sections.push(Section {
                name: "dataplane",
                array: false,
                table: t,
            });
        }
        if let Some(t) = sync {
            doc.sections.push(Section {
                name: "sync",
                array: false,
                table: t,
            });
        }
        let mut push_all = |name: &'static str, tables: Vec<Table>| {
            for t in tables {
                doc.sections.push(Section {
                    name,
                    array: true,
                    table: t,
                });
            }
        };
        push_all(
            "vrrp_script",
            self.scripts.into_iter().map(|s| s.0).collect(),
        );
        push_all("track_file", self.track_files);
        push_all("vrrp_track_process", self.track_processes);
        push_all(
            "vrrp_sync_group",
            self.groups.into_iter().map(|g| g.table).collect(),
        );
        push_all(
            "vrrp_instance",
            self.instances.into_iter().map(|i| i.table).collect(),
        );
        push_all(
            "virtual_server",
            self.servers.into_iter().map(|s| s.table).collect(),
        );
        Ok(Converted {
            doc,
            unsupported: self.unsupported,
            warnings: self.warnings,
        })
    }
}

struct RealServer {
    table: Table,
    inherit: Inherited,
}

/// A `track_interface`/`track_script` entry, and its weight as written (with its place).
type Track = (Elem, Option<(i64, Span)>);

/// The TOML form of a setting a virtual or real server passes down.
fn inherited_value(key: &str, w: &Word) -> Result<(&'static str, Value), Diag> {
    Ok(match key {
        "retry" => ("retry", Value::Int(uint(w)?)),
        "delay_before_retry" => ("delay_before_retry", seconds(w)?),
        "warmup" => ("warmup", seconds(w)?),
        "connect_timeout" => ("connect_timeout", seconds(w)?),
        "virtualhost" => ("virtualhost", Value::Str(w.text.clone())),
        _ => ("weight", Value::Int(uint(w)?)),
    })
}

/// The block a TOML key is read in, for alias notes: only the keys that have aliases matter.
fn ctx_of(key: &str) -> Ctx {
    match key {
        "router_id" => Ctx::GlobalDefs,
        "unicast_src_ip" => Ctx::Instance,
        "lb_algo" | "lb_kind" => Ctx::VirtualServer,
        // `nb_get_retry`: TCP_CHECK and HTTP_GET read it alike.
        "retry" => Ctx::TcpCheck,
        _ => Ctx::Top,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{import_str, import_with, Import, ImportError, MemFiles, Options};
    use super::*;

    fn import(text: &str) -> Import {
        import_str(Path::new("k.conf"), text, &Options::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The 1-based line of the first line of `text` that holds `what`.
    fn line_of(text: &str, what: &str) -> usize {
        text.lines().position(|l| l.contains(what)).unwrap() + 1
    }

    fn error(text: &str) -> String {
        match import_str(Path::new("k.conf"), text, &Options::default()) {
            Err(e @ ImportError::At { .. }) => e.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsupported_keywords_are_listed_up_to_a_limit() {
        let many = format!(
            "global_defs {{\n{}}}\n",
            "notification_email x\n".repeat(MAX_UNSUPPORTED + 1)
        );
        let e = error(&many);
        assert!(
            e.starts_with(&format!(
                "k.conf:{}:1: more than {MAX_UNSUPPORTED}",
                MAX_UNSUPPORTED + 2
            )),
            "{e}"
        );
    }

    #[test]
    fn sync_groups_copy_a_bounded_number_of_trackers() {
        let n = 400;
        let members: String = (0..n).map(|i| format!(" VI_{i}\n")).collect();
        let tracks: String = (0..n).map(|i| format!(" chk_{i}\n")).collect();
        let text = format!(
            "vrrp_sync_group G {{\n group {{\n{members} }}\n track_script {{\n{tracks} }}\n}}\n"
        );
        let e = error(&text);
        assert!(
            e.starts_with("k.conf:1:17: the sync groups copy more than"),
            "{e}"
        );
    }

    /// keepalived: "VRRP version 3 does not support authentication. Ignoring." The version is
    /// the instance's, else global_defs' (wherever it is in the file), and always 3 for IPv6.
    #[test]
    fn vrrp3_authentication_is_left_out_with_a_warning() {
        let instance = |vip: &str, version: &str| {
            format!(
                "vrrp_instance VI_1 {{\n interface eth0\n{version} virtual_router_id 1\n \
                 virtual_ipaddress {{\n  {vip}\n }}\n authentication {{\n  auth_type PASS\n  \
                 auth_pass secret\n }}\n}}\n"
            )
        };
        let global_v3 = "global_defs {\n vrrp_version 3\n}\n";
        for text in [
            instance("192.0.2.1", " version 3\n"),
            format!("{global_v3}{}", instance("192.0.2.1", "")),
            format!("{}{global_v3}", instance("192.0.2.1", "")),
            instance("2001:db8::1", ""),
        ] {
            let i = import(&text);
            assert_eq!(i.config.vrrp_instances[0].auth_pass, None, "{text}");
            let [w] = &i.warnings[..] else {
                panic!("{:?}", i.warnings)
            };
            assert_eq!(
                (w.location.line, w.location.column),
                (line_of(&text, "authentication"), 2)
            );
            assert!(
                w.message
                    .contains("keepalived ignores authentication with VRRPv3"),
                "{w}"
            );
            assert!(!i.toml.contains("secret"), "{}", i.toml);
            assert!(i.toml.contains(&w.to_string()), "{}", i.toml);
        }
        let v2 = import(&instance("192.0.2.1", ""));
        assert_eq!(
            v2.config.vrrp_instances[0].auth_pass.as_deref(),
            Some(&b"secret"[..])
        );
        assert!(v2.warnings.is_empty(), "{:?}", v2.warnings);
    }

    fn import_on_path(
        text: &str,
        fs: &mut MemFiles,
        search_path: Option<&str>,
    ) -> Result<Import, String> {
        fs.add("/k/k.conf", text);
        let opts = Options {
            search_path: search_path.map(Into::into),
            ..Default::default()
        };
        import_with(fs, Path::new("/k/k.conf"), &opts).map_err(|e| e.to_string())
    }

    /// keepalived looks a script named without a `/` up on its PATH; lb-daemon takes absolute
    /// paths only, so the importer looks on the PATH it is given and writes what it finds.
    #[test]
    fn scripts_without_a_slash_are_looked_up_on_the_path_given() {
        let text = "vrrp_script chk {\n script \"chk.sh --fast\"\n}\n\
                    vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n \
                    virtual_ipaddress {\n  192.0.2.1\n }\n track_script {\n  chk\n }\n \
                    notify_master \" master.sh up\"\n}\n\
                    virtual_server 192.0.2.1 80 {\n lb_algo rr\n lb_kind DR\n protocol TCP\n \
                    real_server 198.51.100.1 80 {\n  MISC_CHECK {\n   misc_path /usr/bin/probe.sh\n  }\n \
                    }\n real_server 198.51.100.2 80 {\n  MISC_CHECK {\n   misc_path \"probe.sh 198.51.100.2\"\n  \
                    }\n }\n}\n";
        let mut fs = MemFiles::new();
        fs.add_executable("/usr/local/bin/chk.sh")
            .add_executable("/usr/bin/chk.sh")
            .add_executable("/usr/bin/master.sh")
            .add_executable("/usr/bin/probe.sh");
        let i = import_on_path(text, &mut fs, Some("/usr/local/bin:/usr/bin")).unwrap();
        assert_eq!(
            i.config.vrrp_scripts[0].command,
            ["/usr/local/bin/chk.sh", "--fast"]
        );
        assert_eq!(
            i.config.vrrp_instances[0].notify.master.as_deref(),
            Some("/usr/bin/master.sh up")
        );
        let w: Vec<String> = i.warnings.iter().map(ToString::to_string).collect();
        let [chk, master, probe] = &w[..] else {
            panic!("{w:?}")
        };
        assert!(chk.starts_with("/k/k.conf:2:9: `chk.sh` "), "{chk}");
        assert!(
            master.starts_with("/k/k.conf:13:16: `master.sh` "),
            "{master}"
        );
        assert!(
            probe.starts_with(&format!(
                "/k/k.conf:{}:14: `probe.sh` ",
                line_of(text, "probe.sh 198")
            )),
            "{probe}"
        );
        assert!(
            chk.contains("found it at /usr/local/bin/chk.sh on this machine's PATH")
                && chk.contains("must have it at /usr/local/bin/chk.sh"),
            "{chk}"
        );
        // Written with the path found, and a comment that says so.
        assert!(
            i.toml.contains("script = \"/usr/local/bin/chk.sh --fast\""),
            "{}",
            i.toml
        );
        assert!(
            i.toml
                .contains("misc_path = \"/usr/bin/probe.sh 198.51.100.2\""),
            "{}",
            i.toml
        );
        assert!(i.toml.contains(&format!("# {chk}")), "{}", i.toml);

        // Not there, or not executable: an error that says what to write.
        let mut fs = MemFiles::new();
        fs.add("/usr/bin/chk.sh", "not executable");
        let e = import_on_path(text, &mut fs, Some("/usr/local/bin:/usr/bin")).unwrap_err();
        assert!(e.starts_with("/k/k.conf:2:9: `chk.sh` "), "{e}");
        assert!(e.contains("/usr/bin/chk.sh is not executable"), "{e}");
        assert!(
            e.contains("write the absolute path of chk.sh in keepalived.conf"),
            "{e}"
        );
        let e = import_on_path(text, &mut MemFiles::new(), None).unwrap_err();
        assert!(e.starts_with("/k/k.conf:2:9: `chk.sh` "), "{e}");
        assert!(e.contains("no PATH to look in"), "{e}");
    }

    /// The sync group form keepalived's old failover case study showed, members straight in
    /// the block, read as the `group { }` it stands for.
    #[test]
    fn sync_group_members_without_a_group_block() {
        let instances = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 1\n \
                         virtual_ipaddress {\n  192.0.2.1\n }\n}\n\
                         vrrp_instance VI_2 {\n interface eth1\n virtual_router_id 2\n \
                         virtual_ipaddress {\n  198.51.100.1\n }\n}\n\
                         vrrp_instance VI_3 {\n interface eth1\n virtual_router_id 3\n \
                         virtual_ipaddress {\n  198.51.100.2\n }\n}\n";
        let text = format!(
            "vrrp_sync_group G {{\n # inside\n VI_1\n VI_2 VI_3 # the others\n \
             notify_master /bin/true\n}}\n{instances}"
        );
        let i = import(&text);
        assert_eq!(i.config.sync_groups[0].members, ["VI_1", "VI_2", "VI_3"]);
        assert_eq!(
            i.config.sync_groups[0].notify.master.as_deref(),
            Some("/bin/true")
        );
        assert!(i.unsupported.is_empty(), "{:?}", i.unsupported);
        let [w] = &i.warnings[..] else {
            panic!("{:?}", i.warnings)
        };
        assert!(w.to_string().starts_with("k.conf:3:2: "), "{w}");
        assert!(w.message.contains("without `group { }`"), "{w}");
        assert!(i.toml.contains("# the others"), "{}", i.toml);

        // With a group block, keepalived's reading: a name beside it is an unknown keyword.
        let text = format!("vrrp_sync_group G {{\n group {{\n  VI_1\n }}\n VI_2\n}}\n{instances}");
        let i = import(&text);
        assert_eq!(i.config.sync_groups[0].members, ["VI_1"]);
        assert_eq!(i.unsupported.len(), 1, "{:?}", i.unsupported);
        assert_eq!(i.unsupported[0].written, "VI_2");
        assert!(i.warnings.is_empty(), "{:?}", i.warnings);
    }

    /// Every error of one run, one string each.
    fn errors(text: &str) -> Vec<String> {
        match import_str(Path::new("k.conf"), text, &Options::default()) {
            Err(ImportError::Several(all)) => all.iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
            Ok(i) => panic!("imported:\n{}", i.toml),
        }
    }

    fn assert_starts(got: &[String], want: &[&str]) {
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.starts_with(w), "{g}\nexpected: {w}");
        }
    }

    /// One run reports every error of the conversion, each at its place and naming its
    /// keyword. A statement with an error is left out, and what that leaves missing is not
    /// reported again.
    #[test]
    fn every_error_is_reported_once() {
        let text = "vrrp_instance VI_1 {\n interface eth0 eth1\n priority high\n \
                    virtual_router_id 1\n virtual_ipaddress {\n  192.0.2.1\n }\n}\n\
                    virtual_server 192.0.2.1 80 {\n lb_algo lblc\n lb_kind FULLNAT\n protocol TCP\n \
                    real_server 192.0.2 80 {\n }\n real_server 198.51.100.1 80 {\n  weight x\n }\n}\n\
                    vrrp_instance VI_2 {\n virtual_router_id 2\n}\n";
        assert_starts(
            &errors(text),
            &[
                "k.conf:2:17: `interface` takes one value",
                "k.conf:3:11: `priority`: `high` is not an integer",
                "k.conf:10:10: `lb_algo`: scheduler `lblc` is not supported",
                "k.conf:11:10: `lb_kind`: unknown forwarding method `FULLNAT`",
                "k.conf:13:14: `real_server`: `192.0.2` is not an IP address",
                "k.conf:16:10: `weight`: `x` is not an integer",
                "k.conf:19:1: vrrp_instance VI_2 has no interface",
                "k.conf:19:1: vrrp_instance VI_2 has no virtual_ipaddress",
            ],
        );
    }

    /// A syntax error stops the reading; what the conversion found before it is reported
    /// with it.
    #[test]
    fn errors_before_a_syntax_error_are_reported_with_it() {
        let text = "vrrp_instance VI_1 {\n interface eth0\n priority high\n \
                    virtual_router_id 1\n virtual_ipaddress {\n  192.0.2.1\n }\n}\n\
                    global_defs {\n}\n}\n";
        assert_starts(
            &errors(text),
            &[
                "k.conf:3:11: `priority`: `high` is not an integer",
                "k.conf:11:1: `}` with no `{`",
            ],
        );
    }

    #[test]
    fn errors_are_reported_up_to_a_limit() {
        let text = format!(
            "global_defs {{\n{}}}\n",
            "vrrp_version 4\n".repeat(MAX_ERRORS + 10)
        );
        let e = errors(&text);
        assert_eq!(e.len(), MAX_ERRORS + 1);
        assert!(
            e[0].starts_with("k.conf:2:14: `vrrp_version`: 4 is out of range"),
            "{}",
            e[0]
        );
        let last = &e[MAX_ERRORS];
        assert!(
            last.starts_with(&format!(
                "k.conf:{}:14: more than {MAX_ERRORS} errors",
                MAX_ERRORS + 2
            )),
            "{last}"
        );
    }
}
