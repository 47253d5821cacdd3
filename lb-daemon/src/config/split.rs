//! A configuration file cut at its `[[virtual_server]]` headers, so that a reload parses only
//! the services whose text changed.
//!
//! Parsing 10,000 services (9 MiB of TOML) takes the `toml` crate about half a second, and a
//! reload that changes one weight would pay it all again. Each `[[virtual_server]]` block
//! (its header, its keys, and the `[virtual_server.*]` / `[[virtual_server.*]]` tables under
//! it, up to the next other header) is a TOML document of its own with the same meaning: an
//! element of the `virtual_server` array whose content depends on nothing outside it. The
//! rest of the file, without those blocks, is another document, whose lines are mapped back
//! to the file's. [`Cache`] keeps each block's checked service by its text.
//!
//! The cut is only ever a shortcut: when the text holds anything that could make a line look
//! like a header without being one (multi-line strings), or a header this reader does not
//! understand (a quoted key), [`split`] gives up and the whole file is parsed as before; and
//! [`super::Config::parse_cached`] parses the whole file again for any error, so that errors
//! read exactly as they did. The `toml` crate has no incremental parser, hence this.

use std::{collections::HashMap, hash::BuildHasher, sync::Arc};

use super::{ScriptRef, VirtualServer};

/// The file, cut.
#[derive(Debug)]
pub(super) struct Split<'a> {
    /// The file without its blocks.
    pub rest: String,
    /// Where the rest's lines are in the file: (a line of the rest where a piece of the file
    /// starts, that line's place in the file), 0-based, in order.
    pub line_map: Vec<(usize, usize)>,
    pub blocks: Vec<Block<'a>>,
}

/// One `[[virtual_server]]` block.
#[derive(Debug)]
pub(super) struct Block<'a> {
    /// Its line in the file, 0-based.
    pub line: usize,
    pub text: &'a str,
}

/// What a table header line says, as far as cutting goes.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// Not a header (a key, a comment, a blank line, a value of a multi-line array).
    No,
    /// `[[virtual_server]]`: a service block starts.
    Service,
    /// `[virtual_server.x]` or `[[virtual_server.x]]`: a table of the service above.
    OfService,
    /// Any other header.
    Other,
    /// Starts like a header but is not one this reader understands.
    Unclear,
}

/// Reads a header line without allocating: a file of 10,000 services has 110,000 of them.
fn header(line: &str) -> Header {
    // The two headers of nearly every line that has one, as written by hand or by tools.
    match line
        .trim_end_matches(['\n', '\r'])
        .trim_start_matches([' ', '\t'])
    {
        "[[virtual_server]]" => return Header::Service,
        "[[virtual_server.real_server]]" => return Header::OfService,
        _ => {}
    }
    let t = line.trim_start_matches([' ', '\t']);
    if !t.starts_with('[') {
        return Header::No;
    }
    let array = t.starts_with("[[");
    let (open, close) = if array { (2, "]]") } else { (1, "]") };
    let Some(end) = t.find(']') else {
        return Header::Unclear;
    };
    if !t[end..].starts_with(close) {
        return Header::Unclear;
    }
    let after = t[end + close.len()..].trim_matches([' ', '\t', '\r', '\n']);
    if !(after.is_empty() || after.starts_with('#')) {
        return Header::Unclear;
    }
    let bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let mut path = t[open..end].split('.').map(|k| k.trim_matches([' ', '\t']));
    let first = path.next().unwrap_or_default();
    let mut more = false;
    for k in path {
        if !bare(k) {
            return Header::Unclear;
        }
        more = true;
    }
    match (bare(first), first == "virtual_server", more) {
        (false, ..) => Header::Unclear,
        (true, true, true) => Header::OfService,
        (true, true, false) if array => Header::Service,
        _ => Header::Other,
    }
}

/// Cuts `text` at its `[[virtual_server]]` headers; `None` when it cannot be cut safely.
pub(super) fn split<'a>(text: &'a str) -> Option<Split<'a>> {
    // A multi-line string may hold a line that looks like a header.
    let bytes = text.as_bytes();
    if memchr::memmem::find(bytes, b"\"\"\"").is_some()
        || memchr::memmem::find(bytes, b"'''").is_some()
    {
        return None;
    }
    let mut blocks = Vec::new();
    // The pieces of the rest: (start, end, line of the start).
    let mut pieces = Vec::new();
    // What is being read: a block or a piece of the rest, from (byte, line).
    let mut block: Option<(usize, usize)> = None;
    let mut piece: Option<(usize, usize)> = Some((0, 0));
    let mut at = 0;
    // Line by line, but only lines that open with a `[` need a look.
    let ends = memchr::memchr_iter(b'\n', bytes)
        .map(|i| i + 1)
        .chain((!text.ends_with('\n') && !text.is_empty()).then_some(text.len()));
    for (line, end) in ends.enumerate() {
        let first = bytes[at..end].iter().find(|b| !matches!(b, b' ' | b'\t'));
        if first == Some(&b'[') {
            let end_block = |block: &mut Option<(usize, usize)>, blocks: &mut Vec<Block<'a>>| {
                if let Some((start, first)) = block.take() {
                    blocks.push(Block {
                        line: first,
                        text: &text[start..at],
                    });
                }
            };
            match header(&text[at..end]) {
                Header::No => {}
                Header::Unclear => return None,
                Header::Service => {
                    if let Some((start, first)) = piece.take() {
                        pieces.push((start, at, first));
                    }
                    end_block(&mut block, &mut blocks);
                    block = Some((at, line));
                }
                // A table of the block's service.
                Header::OfService if block.is_some() => {}
                // Anything else ends the block (a `virtual_server` table outside a block
                // stays in the rest, where the caller sees it and parses the whole file).
                Header::OfService | Header::Other => {
                    if block.is_some() {
                        end_block(&mut block, &mut blocks);
                        piece = Some((at, line));
                    }
                }
            }
        }
        at = end;
    }
    if let Some((start, first)) = block {
        blocks.push(Block {
            line: first,
            text: &text[start..],
        });
    }
    if let Some((start, first)) = piece {
        pieces.push((start, text.len(), first));
    }
    let mut rest = String::new();
    let mut line_map = Vec::with_capacity(pieces.len());
    let mut rest_lines = 0;
    for (start, end, first) in pieces {
        let piece = &text[start..end];
        line_map.push((rest_lines, first));
        rest_lines += piece.bytes().filter(|&b| b == b'\n').count();
        rest.push_str(piece);
    }
    Some(Split {
        rest,
        line_map,
        blocks,
    })
}

/// A block's checked service, as the cache keeps it: positions are relative to the block's
/// first line, so a block that only moved is reused as it is.
#[derive(Debug, Clone)]
pub(super) struct Parsed {
    pub service: Arc<VirtualServer>,
    /// The line of its `ip` key, from the block's header.
    pub ip_line: usize,
    /// The scripts and hooks it names, lines from the block's header.
    pub scripts: Vec<ScriptRef>,
}

/// The services of the last file read, by their block's text (see the module docs). The
/// daemon keeps one across reloads; each read keeps only the blocks of the file it read.
///
/// Blocks are found by a hash of their text, computed once a read (then the text is
/// compared): keyed by the text itself, the 9 MiB of 10,000 services were hashed again at
/// each lookup and each insert.
#[derive(Debug, Default)]
pub struct Cache {
    /// Hashes block texts: one seed for the cache's life, so that kept hashes stay valid.
    hasher: foldhash::fast::RandomState,
    blocks: HashMap<u64, (Box<str>, Parsed), foldhash::fast::RandomState>,
}

/// A block as the cache keeps it: its text's hash, its text, its service.
pub(super) type Kept = (u64, Box<str>, Parsed);

impl Cache {
    /// The blocks of a read, replacing what was kept.
    pub(super) fn keep(&mut self, blocks: impl IntoIterator<Item = Kept>) {
        self.blocks.clear();
        self.add(blocks);
    }

    /// Adds the blocks of a read to what is kept (of two texts with one hash, the last).
    pub(super) fn add(&mut self, blocks: impl IntoIterator<Item = Kept>) {
        self.blocks
            .extend(blocks.into_iter().map(|(h, text, p)| (h, (text, p))));
    }

    /// Takes out the entry of `text`, whose hash is `hash`.
    fn take(&mut self, hash: u64, text: &str) -> Option<Kept> {
        match self.blocks.entry(hash) {
            std::collections::hash_map::Entry::Occupied(e) if &*e.get().0 == text => {
                let (text, p) = e.remove();
                Some((hash, text, p))
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Below this many blocks to parse, one thread does it (a reload's few changed services).
const PARALLEL_FROM: usize = 256;

/// Each block's service with its text as the cache's key: taken out of `cache` where its
/// text is there (the cache keeps the rest), else parsed by `parse`, on every core when
/// there are many (a start). On an error, the first in block order, `cache` is as it was.
pub(super) fn parse_blocks<E: Send>(
    blocks: &[Block<'_>],
    cache: &mut Cache,
    parse: impl Fn(&Block<'_>) -> Result<Parsed, E> + Sync,
) -> Result<Vec<Kept>, E> {
    let hashes: Vec<u64> = blocks
        .iter()
        .map(|b| cache.hasher.hash_one(b.text))
        .collect();
    let mut found: Vec<Option<Kept>> = blocks
        .iter()
        .zip(&hashes)
        .map(|(b, &h)| cache.take(h, b.text))
        .collect();
    let misses: Vec<usize> = (0..blocks.len()).filter(|&i| found[i].is_none()).collect();
    let fresh = crate::par::ranges(misses.len(), PARALLEL_FROM, |part| {
        misses[part]
            .iter()
            .map(|&i| (i, parse(&blocks[i])))
            .collect::<Vec<_>>()
    });
    let mut error = None;
    for (i, r) in fresh.into_iter().flatten() {
        match r {
            Ok(p) => found[i] = Some((hashes[i], Box::from(blocks[i].text), p)),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = error {
        cache.add(found.into_iter().flatten());
        return Err(e);
    }
    Ok(found.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read_as_toml_reads_them() {
        use Header::*;
        assert_eq!(header("[[virtual_server]]\n"), Service);
        assert_eq!(header("  [[ virtual_server ]]  # web\r\n"), Service);
        assert_eq!(header("\t[[virtual_server . real_server]]"), OfService);
        assert_eq!(header("[virtual_server.sorry_server]"), OfService);
        assert_eq!(header("[virtual_server]"), Other);
        assert_eq!(header("[[virtual_servers]]"), Other);
        assert_eq!(header("[dataplane]"), Other);
        assert_eq!(header("ip = \"192.0.2.1\""), No);
        assert_eq!(header("# [[virtual_server]]"), No);
        assert_eq!(header("[\"virtual_server\"]"), Unclear);
        assert_eq!(header("[virtual_server.\"x\"]"), Unclear);
        assert_eq!(header("[1, 2],"), Unclear);
        assert_eq!(header("[[virtual_server]"), Unclear);
        assert_eq!(header("[virtual_server]]"), Unclear);
        assert_eq!(header("[a.]"), Unclear);
    }

    #[test]
    fn blocks_run_to_the_next_other_header_and_keep_lines() {
        let text = "[global_defs]\nrouter_id = \"a\"\n\n[[virtual_server]]\nip = \"x\"\n  [[virtual_server.real_server]]\n  ip = \"y\"\n[[vrrp_instance]]\nname = \"v\"\n[[virtual_server]]\nip = \"z\"";
        let s = split(text).unwrap();
        assert_eq!(s.blocks.len(), 2);
        assert_eq!(s.blocks[0].line, 3);
        assert_eq!(
            s.blocks[0].text,
            "[[virtual_server]]\nip = \"x\"\n  [[virtual_server.real_server]]\n  ip = \"y\"\n"
        );
        assert_eq!(s.blocks[1].line, 9);
        assert_eq!(s.blocks[1].text, "[[virtual_server]]\nip = \"z\"");
        assert_eq!(
            s.rest,
            "[global_defs]\nrouter_id = \"a\"\n\n[[vrrp_instance]]\nname = \"v\"\n"
        );
        // The rest's line 3 (`[[vrrp_instance]]`) is the file's line 7.
        assert_eq!(s.line_map, [(0, 0), (3, 7)]);
    }

    #[test]
    fn what_could_hide_a_header_is_not_cut() {
        assert!(split("a = \"\"\"\n[[virtual_server]]\n\"\"\"\n").is_none());
        assert!(split("a = '''\n[x]\n'''\n").is_none());
        assert!(split("[\"quoted\"]\n").is_none());
        assert!(split("a = [\n  [1, 2],\n]\n").is_none());
    }
}
