//! Comment-preserving edits of `fly.toml`'s `[ferry.regions]`, for `ferry regions add`,
//! `ferry regions remove` and `ferry scale count`: each edit changes one region's table and
//! leaves every other byte (comments, blank lines, indentation, key order, quoting) as the
//! user wrote it. The edits are pure functions from text to text that refuse to return a
//! document that no longer parses; the only I/O is [`edit_file`], which reads the one file
//! and replaces it atomically. Policy is not decided here: whether the primary region may
//! be removed, or whether the ssh target needs hosts, is the callers' call.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use toml_edit::visit::Visit;
use toml_edit::visit_mut::VisitMut;
use toml_edit::{Array, DocumentMut, InlineTable, Item, RawString, Table, TableLike, Value};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("failed to read `{}`", .path.display())]
    Read { path: PathBuf, source: io::Error },

    #[error("failed to write `{}`", .path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error("`{}:{line}:{column}`: invalid TOML: {message}", .path.display())]
    Parse { path: PathBuf, line: usize, column: usize, message: String },

    #[error("no region `{region}` in `{}`", .path.display())]
    NoSuchRegion { path: PathBuf, region: String },

    #[error("region `{region}` is already in `{}`", .path.display())]
    AlreadyExists { path: PathBuf, region: String },

    #[error("cannot edit `{}`: {message}", .path.display())]
    Shape { path: PathBuf, message: String },
}

/// Adds region `name` as a `[ferry.regions.NAME]` table with `hosts` (left out when empty)
/// and `count`, right after the last region table; without one, after the `[ferry]`
/// tables, else at the end of the file. A missing `[ferry]` stays implicit. When
/// `[ferry.regions]` (or `ferry`) is an inline table, the region joins it inline.
pub fn add_region(path: &Path, text: &str, name: &str, hosts: &[String], count: u32) -> Result<String, EditError> {
    let mut doc = parse(path, text)?;
    if regions(path, &doc)?.is_some_and(|regions| regions.contains_key(name)) {
        return Err(EditError::AlreadyExists { path: path.to_path_buf(), region: name.to_string() });
    }
    insert_region(path, &mut doc, name, hosts, count)?;
    render(path, text, &doc)
}

/// Removes region `name`: its table, nested tables, header comment and the comment lines
/// directly above its header. Comments above those, after a blank line, stay where they were.
pub fn remove_region(path: &Path, text: &str, name: &str) -> Result<String, EditError> {
    let mut doc = parse(path, text)?;
    let missing = || EditError::NoSuchRegion { path: path.to_path_buf(), region: name.to_string() };
    let regions = regions_mut(path, &mut doc)?.ok_or_else(missing)?;
    if let Item::Value(Value::InlineTable(regions)) = regions {
        remove_inline(regions, name).ok_or_else(missing)?;
    } else {
        let regions = regions.as_table_like_mut().ok_or_else(missing)?;
        if let Item::Table(table) = regions.remove(name).ok_or_else(missing)? {
            keep_detached_comments(&mut doc, &table);
        }
    }
    render(path, text, &doc)
}

/// Sets `count` in `region`, or with `None` in every region under `[ferry.regions]`,
/// keeping the comment after the old number. A file without regions runs in one implicit
/// region (`implicit`: `primary_region`, else `local`); setting its count (by name or
/// with `None`) gives it a `[ferry.regions.IMPLICIT]` table of its own.
pub fn set_count(
    path: &Path,
    text: &str,
    region: Option<&str>,
    implicit: &str,
    count: u32,
) -> Result<String, EditError> {
    set_counts(path, text, region, implicit, &[(None, count)])
}

/// [`set_count`] for several process groups at once: `(None, n)` sets `count` (the
/// groups `counts` does not name), `(Some(group), n)` sets `counts.<group>`.
pub fn set_counts(
    path: &Path,
    text: &str,
    region: Option<&str>,
    implicit: &str,
    counts: &[(Option<String>, u32)],
) -> Result<String, EditError> {
    let mut doc = parse(path, text)?;
    let names: Vec<String> = regions(path, &doc)?
        .map(|regions| regions.iter().map(|(name, _)| name.to_string()).collect())
        .unwrap_or_default();
    let missing = |region: &str| EditError::NoSuchRegion { path: path.to_path_buf(), region: region.to_string() };
    let targets = if names.is_empty() {
        match region {
            Some(region) if region != implicit => return Err(missing(region)),
            _ => insert_region(path, &mut doc, implicit, &[], 1)?,
        }
        vec![implicit.to_string()]
    } else {
        match region {
            Some(region) if names.iter().any(|name| name == region) => vec![region.to_string()],
            Some(region) => return Err(missing(region)),
            None => names,
        }
    };
    let regions = regions_mut(path, &mut doc)?
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| shape(path, "`ferry.regions` is not a table"))?;
    for name in &targets {
        for (group, count) in counts {
            match group {
                None => set_region_count(path, regions, name, *count)?,
                Some(group) => set_group_count(path, regions, name, group, *count)?,
            }
        }
    }
    render(path, text, &doc)
}

/// Sets `counts.<group>` of region `name`, adding `counts = { ... }` when missing.
fn set_group_count(
    path: &Path,
    regions: &mut dyn TableLike,
    name: &str,
    group: &str,
    count: u32,
) -> Result<(), EditError> {
    let region = regions
        .get_mut(name)
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| shape(path, format!("`ferry.regions.{name}` is not a table")))?;
    if region.get("counts").is_none() {
        region.insert("counts", toml_edit::value(toml_edit::InlineTable::new()));
    }
    let counts = region
        .get_mut("counts")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| shape(path, format!("`ferry.regions.{name}.counts` is not a table")))?;
    match counts.get_mut(group) {
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = Value::from(i64::from(count));
            *old.decor_mut() = decor;
        }
        Some(_) => return Err(shape(path, format!("`ferry.regions.{name}.counts.{group}` is not a number"))),
        None => {
            counts.insert(group, toml_edit::value(i64::from(count)));
        }
    }
    Ok(())
}

/// Reads `path`, applies `edit` to its text and, when that changed anything, replaces the
/// file atomically: the new text goes to `PATH.tmp` beside it (with the file's
/// permissions, flushed to disk) and is renamed over it. A symlink is followed, so the
/// file it points to is the one replaced.
pub fn edit_file(path: &Path, edit: impl FnOnce(&str) -> Result<String, EditError>) -> Result<(), EditError> {
    let read = |source| EditError::Read { path: path.to_path_buf(), source };
    let text = fs::read_to_string(path).map_err(read)?;
    let edited = edit(&text)?;
    if edited == text {
        return Ok(());
    }
    let target = fs::canonicalize(path).map_err(read)?;
    let permissions = fs::metadata(&target).map_err(read)?.permissions();
    let mut tmp = target.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = replace(&target, &tmp, &edited, permissions);
    if written.is_err() {
        // Best effort: a leftover temporary file is harmless and overwritten next time.
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|source| EditError::Write { path: path.to_path_buf(), source })
}

fn replace(target: &Path, tmp: &Path, text: &str, permissions: fs::Permissions) -> io::Result<()> {
    let mut file = fs::File::create(tmp)?;
    // Before the contents, so a 0600 file is never readable by others, even briefly.
    file.set_permissions(permissions)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(tmp, target)
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>().map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        let (line, column) = location(text, offset);
        let message = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ");
        EditError::Parse { path: path.to_path_buf(), line, column, message }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn location(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The edited text, checked by the reader ferry loads it with: an edit of an unusual
/// shape must fail here rather than leave the user a file that no longer loads.
/// `toml_edit` writes every line break as `\n`; a file written with `\r\n` gets them back.
fn render(path: &Path, original: &str, doc: &DocumentMut) -> Result<String, EditError> {
    let mut text = doc.to_string();
    if original.contains("\r\n") && original.matches('\n').count() == original.matches("\r\n").count() {
        text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    }
    match toml::from_str::<toml::Value>(&text) {
        Ok(_) => Ok(text),
        Err(error) => Err(shape(path, format!("the edit would make invalid TOML: {}", error.message()))),
    }
}

fn shape(path: &Path, message: impl Into<String>) -> EditError {
    EditError::Shape { path: path.to_path_buf(), message: message.into() }
}

/// `ferry.regions` when the file has it.
fn regions<'d>(path: &Path, doc: &'d DocumentMut) -> Result<Option<&'d dyn TableLike>, EditError> {
    let Some(ferry) = doc.get("ferry") else { return Ok(None) };
    let ferry = ferry.as_table_like().ok_or_else(|| shape(path, "`ferry` is not a table"))?;
    let Some(regions) = ferry.get("regions") else { return Ok(None) };
    regions.as_table_like().map(Some).ok_or_else(|| shape(path, "`ferry.regions` is not a table"))
}

/// `ferry.regions` when the file has it, known to be a table (inline or not).
fn regions_mut<'d>(path: &Path, doc: &'d mut DocumentMut) -> Result<Option<&'d mut Item>, EditError> {
    let Some(ferry) = doc.get_mut("ferry") else { return Ok(None) };
    let ferry = ferry.as_table_like_mut().ok_or_else(|| shape(path, "`ferry` is not a table"))?;
    let Some(regions) = ferry.get_mut("regions") else { return Ok(None) };
    if regions.is_table_like() {
        Ok(Some(regions))
    } else {
        Err(shape(path, "`ferry.regions` is not a table"))
    }
}

/// Adds a region known to be absent, creating `ferry` and `ferry.regions` as implicit
/// tables (no header) when they are missing.
fn insert_region(
    path: &Path,
    doc: &mut DocumentMut,
    name: &str,
    hosts: &[String],
    count: u32,
) -> Result<(), EditError> {
    let position = make_room(doc);
    let indent = indent_like_regions(doc);
    let not_a_table = |key: &str| shape(path, format!("`{key}` is not a table"));
    let regions = match doc.entry("ferry").or_insert_with(implicit_table) {
        Item::Table(ferry) => ferry.entry("regions").or_insert_with(implicit_table),
        Item::Value(Value::InlineTable(ferry)) => {
            match ferry.get_mut("regions") {
                Some(Value::InlineTable(regions)) => insert_inline(regions, name, region_inline(hosts, count)),
                Some(_) => return Err(not_a_table("ferry.regions")),
                None => {
                    let mut regions = InlineTable::new();
                    regions.insert(name, region_inline(hosts, count));
                    insert_inline(ferry, "regions", regions.into());
                }
            }
            return Ok(());
        }
        _ => return Err(not_a_table("ferry")),
    };
    match regions {
        Item::Table(regions) => {
            let mut table = Table::new();
            if !hosts.is_empty() {
                table.insert("hosts", Item::Value(hosts_array(hosts).into()));
            }
            table.insert("count", toml_edit::value(i64::from(count)));
            for (mut key, _) in table.iter_mut() {
                key.leaf_decor_mut().set_prefix(indent.keys.as_str());
            }
            if !indent.header.is_empty() {
                table.decor_mut().set_prefix(format!("\n{}", indent.header));
            }
            table.set_position(position);
            regions.insert(name, Item::Table(table));
        }
        Item::Value(Value::InlineTable(regions)) => insert_inline(regions, name, region_inline(hosts, count)),
        _ => return Err(not_a_table("ferry.regions")),
    }
    Ok(())
}

fn implicit_table() -> Item {
    let mut table = Table::new();
    table.set_implicit(true);
    Item::Table(table)
}

fn hosts_array(hosts: &[String]) -> Array {
    hosts.iter().collect()
}

fn region_inline(hosts: &[String], count: u32) -> Value {
    let mut table = InlineTable::new();
    if !hosts.is_empty() {
        table.insert("hosts", hosts_array(hosts).into());
    }
    table.insert("count", i64::from(count).into());
    table.into()
}

/// Appends to an inline table the way a person would: the space before `}` stays before
/// `}` rather than ending up before the new comma.
fn insert_inline(table: &mut InlineTable, key: &str, value: Value) {
    let closing = table.iter_mut().last().map(|(_, last)| {
        let suffix = last.decor().suffix().cloned();
        last.decor_mut().set_suffix("");
        suffix
    });
    table.insert(key, value);
    if let (Some(Some(suffix)), Some(new)) = (closing, table.get_mut(key)) {
        new.decor_mut().set_suffix(suffix);
    }
}

/// Removes `key` from an inline table, leaving the space before `}` in place.
fn remove_inline(table: &mut InlineTable, key: &str) -> Option<Value> {
    let was_last = table.iter().last().is_some_and(|(last, _)| last == key);
    let removed = table.remove(key)?;
    if was_last {
        if let (Some(suffix), Some((_, last))) = (removed.decor().suffix(), table.iter_mut().last()) {
            last.decor_mut().set_suffix(suffix.clone());
        }
    }
    Some(removed)
}

/// Sets `count` in one existing region, keeping the old number's surrounding spaces and
/// comment; a region without `count` gets one as its last key, indented like the others.
fn set_region_count(path: &Path, regions: &mut dyn TableLike, name: &str, count: u32) -> Result<(), EditError> {
    let region = regions.get_mut(name).ok_or_else(|| shape(path, format!("no `ferry.regions.{name}`")))?;
    let header_table = matches!(region, Item::Table(table) if !table.is_dotted());
    let region =
        region.as_table_like_mut().ok_or_else(|| shape(path, format!("`ferry.regions.{name}` is not a table")))?;
    match region.get_mut("count") {
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            *old = Value::from(i64::from(count));
            *old.decor_mut() = decor;
        }
        Some(_) => return Err(shape(path, format!("`ferry.regions.{name}.count` is not a number"))),
        None => {
            let indent = if header_table { indent_of(region) } else { None };
            region.insert("count", toml_edit::value(i64::from(count)));
            if let (Some(indent), Some(mut key)) = (indent, region.key_mut("count")) {
                key.leaf_decor_mut().set_prefix(indent);
            }
        }
    }
    Ok(())
}

/// The indentation of a table's keys, when they share a line-start of only blanks.
fn indent_of(table: &dyn TableLike) -> Option<String> {
    table.iter().find_map(|(key, _)| blank_line_start(table.key(key)?.leaf_decor().prefix()?.as_str()?))
}

/// How a new region table is indented: its header and keys like the last region table's,
/// else its keys like `[ferry]`'s, else not at all.
#[derive(Default)]
struct Indent {
    header: String,
    keys: String,
}

fn indent_like_regions(doc: &DocumentMut) -> Indent {
    let Some(ferry) = doc.get("ferry").and_then(Item::as_table) else { return Indent::default() };
    let last_region = ferry.get("regions").and_then(Item::as_table).and_then(|regions| {
        regions
            .iter()
            .filter_map(|(_, region)| region.as_table())
            .filter(|t| t.position().is_some())
            .max_by_key(|t| t.position())
    });
    match last_region {
        Some(region) => Indent {
            header: region.decor().prefix().and_then(RawString::as_str).and_then(blank_line_start).unwrap_or_default(),
            keys: indent_of(region).unwrap_or_default(),
        },
        None => Indent { header: String::new(), keys: indent_of(ferry).unwrap_or_default() },
    }
}

/// The blanks that start the last line of `text`, when that is all it holds.
fn blank_line_start(text: &str) -> Option<String> {
    let line_start = text.rsplit('\n').next().unwrap_or(text);
    line_start.chars().all(|c| c == ' ' || c == '\t').then(|| line_start.to_string())
}

/// The document position a new region table takes so it is printed right after the last
/// region table (else the last `[ferry…]` table, else the last table), with every later
/// table moved down one place to make room.
fn make_room(doc: &mut DocumentMut) -> usize {
    let ferry = doc.get("ferry");
    let regions = ferry.and_then(Item::as_table_like).and_then(|ferry| ferry.get("regions"));
    let anchor = regions
        .and_then(last_position)
        .or_else(|| ferry.and_then(last_position))
        .or_else(|| last_position(doc.as_item()))
        .unwrap_or(0);
    ShiftAfter(anchor).visit_document_mut(doc);
    anchor + 1
}

fn last_position(item: &Item) -> Option<usize> {
    let mut positions = Positions(Vec::new());
    positions.visit_item(item);
    positions.0.into_iter().max()
}

/// Every table's document position; implicit and dotted tables have none.
struct Positions(Vec<usize>);

impl<'doc> Visit<'doc> for Positions {
    fn visit_table(&mut self, table: &'doc Table) {
        self.0.extend(table.position());
        toml_edit::visit::visit_table(self, table);
    }
}

struct ShiftAfter(usize);

impl VisitMut for ShiftAfter {
    fn visit_table_mut(&mut self, table: &mut Table) {
        if let Some(position) = table.position().filter(|&p| p > self.0) {
            table.set_position(position + 1);
        }
        toml_edit::visit_mut::visit_table_mut(self, table);
    }
}

/// A removed table's prefix holds the blank lines and comments above its header. Lines
/// directly above the header describe it and go with it; anything before the last blank
/// line (a commented-out block, a note about the next section) moves to whatever now
/// follows, so it stays where it was in the file.
fn keep_detached_comments(doc: &mut DocumentMut, removed: &Table) {
    let Some(prefix) = removed.decor().prefix().and_then(RawString::as_str) else { return };
    let lines: Vec<&str> = prefix.split_inclusive('\n').collect();
    // The last piece may be the header's indentation rather than a line.
    let Some(last_blank) = lines.iter().rposition(|line| line.ends_with('\n') && line.trim().is_empty()) else {
        return;
    };
    let kept = lines[..last_blank].concat();
    if kept.trim().is_empty() {
        return;
    }
    let mut removed_positions = Positions(Vec::new());
    removed_positions.visit_table(removed);
    let after = removed_positions.0.into_iter().max().unwrap_or(0);
    let mut all = Positions(Vec::new());
    all.visit_document(doc);
    if let Some(next) = all.0.into_iter().filter(|&p| p > after).min() {
        PrependAt { position: next, text: &kept }.visit_document_mut(doc);
    } else {
        let trailing = format!("{kept}{}", doc.trailing().as_str().unwrap_or_default());
        doc.set_trailing(trailing);
    }
}

struct PrependAt<'a> {
    position: usize,
    text: &'a str,
}

impl VisitMut for PrependAt<'_> {
    fn visit_table_mut(&mut self, table: &mut Table) {
        if table.position() == Some(self.position) {
            let prefix = table.decor().prefix().and_then(RawString::as_str).unwrap_or_default();
            let prefix = format!("{}{prefix}", self.text);
            table.decor_mut().set_prefix(prefix);
        }
        toml_edit::visit_mut::visit_table_mut(self, table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `fly.toml` as flyctl writes them and people then annotate.
    const FLY: &str = r#"# fly.toml app configuration file generated for hello on 2024-03-01T10:00:00Z
#
# See https://fly.io/docs/reference/configuration/ for information about how to use this file.
#

app = "hello"   # keep it short
primary_region = "syd"
kill_signal = "SIGTERM"

[build]

[env]
  # Phoenix wants to know where it lives
  PHX_HOST = "hello.example.com"
  PORT = "8080"   # matches internal_port

  # POOL_SIZE = "10"

[http_service]
  internal_port = 8080
  force_https = true

  [[http_service.checks]]
    grace_period = "10s"
    interval = "15s"
    method = "GET"
    path = "/health"
    timeout = "2s"

# [ferry.regions.ams]
# hosts = ["deploy@ams1"]
# count = 1

[ferry]
  target = "ssh"   # the fleet below
  keep_releases = 5

[ferry.build]
  command = "mix release --overwrite"
  path = "_build/prod/rel/hello"

# Sydney is the primary: the database lives there
[ferry.regions.syd]   # Sydney
  hosts = ["deploy@syd1", "deploy@syd2"]
  count = 2   # one per host

[ferry.regions.lax]
  hosts = ["deploy@lax1"]
  count = 1

# backups go to the release machine
[ferry.backup]
  before_migrate = true

[[vm]]
  memory = "1gb"
  cpu_kind = "shared"
  cpus = 1
"#;

    fn p() -> &'static Path {
        Path::new("fly.toml")
    }

    fn reparse(text: &str) -> toml::Value {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn region(text: &str, name: &str) -> toml::Value {
        reparse(text)["ferry"]["regions"].get(name).cloned().unwrap_or_else(|| panic!("no `{name}` in\n{text}"))
    }

    /// The lines of `text` outside the tables with these headers. A table's lines are its
    /// header, the comment lines directly above it and one blank line above those, and its
    /// body up to the next header, less the blank and comment lines that lead up to it.
    fn outside<'t>(text: &'t str, headers: &[&str]) -> Vec<&'t str> {
        let mut lines: Vec<&str> = text.lines().collect();
        for header in headers {
            let Some(mut start) = lines.iter().position(|l| l.trim_start().starts_with(header)) else { continue };
            let mut end = lines[start + 1..]
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            while end > start + 1 && (lines[end - 1].trim().is_empty() || lines[end - 1].trim().starts_with('#')) {
                end -= 1;
            }
            while start > 0 && lines[start - 1].trim().starts_with('#') {
                start -= 1;
            }
            if start > 0 && lines[start - 1].trim().is_empty() {
                start -= 1;
            }
            lines.drain(start..end);
        }
        lines
    }

    #[test]
    fn add_region_appends_a_table_after_the_last_region_and_keeps_every_other_line() {
        let out = add_region(p(), FLY, "ams", &["deploy@ams1".into(), "deploy@ams2".into()], 3).unwrap();
        assert_eq!(outside(&out, &["[ferry.regions.ams]"]), FLY.lines().collect::<Vec<_>>());
        assert!(
            out.contains(
                "  count = 1\n\n[ferry.regions.ams]\n  hosts = [\"deploy@ams1\", \"deploy@ams2\"]\n  count = 3\n\n\
                 # backups go to the release machine\n[ferry.backup]"
            ),
            "{out}"
        );
        let ams = region(&out, "ams");
        assert_eq!(ams["count"].as_integer(), Some(3));
        assert_eq!(ams["hosts"].as_array().map(Vec::len), Some(2));
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(2));
    }

    #[test]
    fn add_region_without_hosts_writes_only_count() {
        let out = add_region(p(), FLY, "ams", &[], 1).unwrap();
        assert!(out.contains("[ferry.regions.ams]\n  count = 1\n"), "{out}");
        assert!(region(&out, "ams").get("hosts").is_none());
    }

    #[test]
    fn add_region_to_a_file_without_ferry_adds_only_the_region_table_at_the_end() {
        let text = "app = \"hello\"  # mine\n\n[env]\n  A = \"1\"\n\n# the end\n";
        let out = add_region(p(), text, "lax", &[], 2).unwrap();
        assert_eq!(
            out,
            "app = \"hello\"  # mine\n\n[env]\n  A = \"1\"\n\n[ferry.regions.lax]\ncount = 2\n\n# the end\n"
        );
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(2));
    }

    #[test]
    fn add_region_to_a_file_with_only_top_level_keys() {
        let out = add_region(p(), "app = \"hello\"\n", "lax", &["deploy@lax1".into()], 1).unwrap();
        assert_eq!(out, "app = \"hello\"\n\n[ferry.regions.lax]\nhosts = [\"deploy@lax1\"]\ncount = 1\n");
    }

    #[test]
    fn add_region_without_regions_goes_after_the_ferry_tables() {
        let text = "app = \"hello\"\n\n[ferry]\n  target = \"ssh\"\n\n[ferry.build]\n  path = \"rel\"\n\n[deploy]\n  strategy = \"rolling\"\n";
        let out = add_region(p(), text, "syd", &["deploy@syd1".into()], 1).unwrap();
        assert_eq!(outside(&out, &["[ferry.regions.syd]"]), text.lines().collect::<Vec<_>>());
        assert!(
            out.contains(
                "  path = \"rel\"\n\n[ferry.regions.syd]\n  hosts = [\"deploy@syd1\"]\n  count = 1\n\n[deploy]"
            ),
            "{out}"
        );
        reparse(&out);
    }

    #[test]
    fn add_region_under_a_regions_header_with_inline_regions() {
        let text = "[ferry.regions]\nsyd = { count = 1 }  # inline\n\n[deploy]\nstrategy = \"rolling\"\n";
        let out = add_region(p(), text, "lax", &[], 2).unwrap();
        assert_eq!(outside(&out, &["[ferry.regions.lax]"]), text.lines().collect::<Vec<_>>());
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(2));
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(1));
    }

    #[test]
    fn add_region_indents_like_the_other_region_tables() {
        let text = "[ferry.regions]\n  [ferry.regions.syd]\n    count = 1\n\n[deploy]\n  strategy = \"rolling\"\n";
        let out = add_region(p(), text, "lax", &[], 2).unwrap();
        assert_eq!(
            out,
            "[ferry.regions]\n  [ferry.regions.syd]\n    count = 1\n\n  [ferry.regions.lax]\n    count = 2\n\n[deploy]\n  strategy = \"rolling\"\n"
        );
    }

    #[test]
    fn add_region_joins_an_inline_regions_table() {
        let text = "[ferry]\ntarget = \"ssh\"\nregions = { syd = { count = 1 } }  # all of them\n";
        let out = add_region(p(), text, "lax", &["deploy@lax1".into()], 2).unwrap();
        assert_eq!(
            out,
            "[ferry]\ntarget = \"ssh\"\nregions = { syd = { count = 1 }, lax = { hosts = [\"deploy@lax1\"], count = 2 } }  # all of them\n"
        );
        let out = add_region(p(), "ferry = { target = \"ssh\" }\n", "lax", &[], 1).unwrap();
        assert_eq!(out, "ferry = { target = \"ssh\", regions = { lax = { count = 1 } } }\n");
    }

    #[test]
    fn add_region_next_to_dotted_keys() {
        let text = "app = \"hello\"\nferry.regions.syd.count = 2  # two\n\n[env]\n  A = \"1\"\n";
        let out = add_region(p(), text, "lax", &[], 1).unwrap();
        assert_eq!(outside(&out, &["[ferry.regions.lax]"]), text.lines().collect::<Vec<_>>());
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(1));
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(2));
        let text = "app = \"hello\"\nferry.target = \"ssh\"\n\n[env]\n  A = \"1\"\n";
        let out = add_region(p(), text, "lax", &[], 1).unwrap();
        assert_eq!(out, format!("{text}\n[ferry.regions.lax]\ncount = 1\n"));
        assert_eq!(reparse(&out)["ferry"]["target"].as_str(), Some("ssh"));
        let text = "[ferry]\ntarget = \"ssh\"\nregions.syd.count = 2\n";
        let out = add_region(p(), text, "lax", &[], 1).unwrap();
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(1));
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(2));
    }

    #[test]
    fn adding_an_existing_region_is_an_error() {
        let error = add_region(p(), FLY, "syd", &[], 1).unwrap_err();
        assert!(matches!(&error, EditError::AlreadyExists { region, .. } if region == "syd"), "{error:?}");
        assert_eq!(error.to_string(), "region `syd` is already in `fly.toml`");
    }

    #[test]
    fn remove_region_takes_its_table_and_attached_comments_only() {
        let out = remove_region(p(), FLY, "syd").unwrap();
        assert_eq!(out.lines().collect::<Vec<_>>(), outside(FLY, &["[ferry.regions.syd]"]));
        assert!(!out.contains("Sydney"), "{out}");
        assert!(reparse(&out)["ferry"]["regions"].get("syd").is_none());
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(1));
    }

    #[test]
    fn remove_region_undoes_add_region() {
        let added = add_region(p(), FLY, "ams", &["deploy@ams1".into()], 1).unwrap();
        assert_eq!(remove_region(p(), &added, "ams").unwrap(), FLY);
        let bare = "app = \"hello\"\n# end\n";
        assert_eq!(remove_region(p(), &add_region(p(), bare, "lax", &[], 1).unwrap(), "lax").unwrap(), bare);
    }

    #[test]
    fn remove_region_keeps_a_commented_out_block_above_it() {
        let text = "[ferry.regions.syd]\ncount = 1\n\n# [ferry.regions.old]\n# count = 9\n\n# LA\n[ferry.regions.lax]\ncount = 1\n\n# deploy settings\n[deploy]\nstrategy = \"rolling\"\n";
        let out = remove_region(p(), text, "lax").unwrap();
        assert_eq!(
            out,
            "[ferry.regions.syd]\ncount = 1\n\n# [ferry.regions.old]\n# count = 9\n\n# deploy settings\n[deploy]\nstrategy = \"rolling\"\n"
        );
        let last = "[ferry.regions.syd]\ncount = 1\n\n# spare\n\n[ferry.regions.lax]\ncount = 1\n# tail\n";
        assert_eq!(remove_region(p(), last, "lax").unwrap(), "[ferry.regions.syd]\ncount = 1\n\n# spare\n# tail\n");
        let indented =
            "[ferry.regions]\n  [ferry.regions.syd]\n    count = 1\n\n  # LA\n  [ferry.regions.lax]\n    count = 1\n";
        assert_eq!(
            remove_region(p(), indented, "lax").unwrap(),
            "[ferry.regions]\n  [ferry.regions.syd]\n    count = 1\n"
        );
    }

    #[test]
    fn removing_the_last_region_leaves_no_regions() {
        let text = "app = \"hello\"\n\n[ferry]\n  target = \"ssh\"\n\n[ferry.regions.syd]\n  count = 2\n";
        let out = remove_region(p(), text, "syd").unwrap();
        assert_eq!(out, "app = \"hello\"\n\n[ferry]\n  target = \"ssh\"\n");
        assert!(reparse(&out)["ferry"].get("regions").is_none());
        let only = "app = \"hello\"\n\n[ferry.regions.syd]\ncount = 2\n";
        assert_eq!(remove_region(p(), only, "syd").unwrap(), "app = \"hello\"\n");
    }

    #[test]
    fn remove_region_from_inline_and_dotted_forms() {
        let inline = "[ferry]\nregions = { syd = { count = 1 }, lax = { count = 2 } }\n";
        let out = remove_region(p(), inline, "lax").unwrap();
        assert_eq!(out, "[ferry]\nregions = { syd = { count = 1 } }\n");
        let out = remove_region(p(), "ferry = { regions = { syd = { count = 1 }, lax = {} } }\n", "syd").unwrap();
        assert_eq!(out, "ferry = { regions = { lax = {} } }\n");
        let dotted = "app = \"x\"\nferry.regions.syd.count = 1\nferry.regions.lax.count = 2\n";
        let out = remove_region(p(), dotted, "syd").unwrap();
        assert_eq!(out, "app = \"x\"\nferry.regions.lax.count = 2\n");
    }

    #[test]
    fn removing_an_absent_region_is_an_error() {
        for text in [FLY, "app = \"hello\"\n"] {
            let error = remove_region(p(), text, "ams").unwrap_err();
            assert!(matches!(&error, EditError::NoSuchRegion { region, .. } if region == "ams"), "{error:?}");
            assert_eq!(error.to_string(), "no region `ams` in `fly.toml`");
        }
    }

    #[test]
    fn set_count_changes_one_number_and_keeps_its_comment() {
        let out = set_count(p(), FLY, Some("syd"), "syd", 3).unwrap();
        assert_eq!(out, FLY.replace("  count = 2   # one per host", "  count = 3   # one per host"));
        assert_eq!(outside(&out, &["[ferry.regions.syd]"]), outside(FLY, &["[ferry.regions.syd]"]));
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(3));
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(1));
    }

    #[test]
    fn set_count_without_a_region_sets_every_region() {
        let out = set_count(p(), FLY, None, "syd", 4).unwrap();
        let headers = ["[ferry.regions.syd]", "[ferry.regions.lax]"];
        assert_eq!(outside(&out, &headers), outside(FLY, &headers));
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(4));
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(4));
        assert!(out.contains("  count = 4   # one per host\n"), "{out}");
    }

    #[test]
    fn set_counts_writes_a_process_groups_count_beside_count() {
        let counts = [(Some("worker".to_string()), 2), (None, 3)];
        let out = set_counts(p(), FLY, Some("lax"), "syd", &counts).unwrap();
        assert_eq!(region(&out, "lax")["count"].as_integer(), Some(3));
        assert!(out.contains("counts = { worker = 2 }"), "{out}");
        assert_eq!(region(&out, "syd")["count"].as_integer(), Some(2), "another region is left alone");
        let again = set_counts(p(), &out, Some("lax"), "syd", &[(Some("worker".to_string()), 5)]).unwrap();
        assert!(again.contains("counts = { worker = 5 }"), "{again}");
    }

    #[test]
    fn set_count_adds_a_missing_count_indented_like_its_neighbours() {
        let text = "[ferry.regions.syd]\n  hosts = [\"deploy@syd1\"]\n\n[deploy]\n";
        let out = set_count(p(), text, Some("syd"), "syd", 2).unwrap();
        assert_eq!(out, "[ferry.regions.syd]\n  hosts = [\"deploy@syd1\"]\n  count = 2\n\n[deploy]\n");
    }

    #[test]
    fn set_count_gives_the_implicit_region_a_table() {
        let text = "app = \"hello\"\nprimary_region = \"ams\"\n\n[ferry]\n  target = \"local\"\n";
        for region in [None, Some("ams")] {
            let out = set_count(p(), text, region, "ams", 2).unwrap();
            assert_eq!(out, format!("{text}\n[ferry.regions.ams]\n  count = 2\n"));
            assert_eq!(region_count(&out, "ams"), 2);
        }
        let out = set_count(p(), "app = \"hello\"\n", None, "local", 3).unwrap();
        assert_eq!(out, "app = \"hello\"\n\n[ferry.regions.local]\ncount = 3\n");
        let error = set_count(p(), text, Some("lax"), "ams", 2).unwrap_err();
        assert!(matches!(&error, EditError::NoSuchRegion { region, .. } if region == "lax"), "{error:?}");
    }

    #[test]
    fn set_count_for_a_region_not_configured_is_an_error_even_if_it_is_the_implicit_one() {
        let error = set_count(p(), FLY, Some("ams"), "ams", 2).unwrap_err();
        assert!(matches!(&error, EditError::NoSuchRegion { region, .. } if region == "ams"), "{error:?}");
    }

    fn region_count(text: &str, name: &str) -> i64 {
        region(text, name)["count"].as_integer().unwrap_or_else(|| panic!("no count for `{name}` in\n{text}"))
    }

    #[test]
    fn set_count_with_dotted_keys() {
        let text = "app = \"x\"\nferry.regions.syd.count = 1 # one\nferry.regions.lax.hosts = [\"deploy@lax1\"]\n\n[env]\n  A = \"1\"\n";
        let out = set_count(p(), text, Some("syd"), "syd", 4).unwrap();
        assert_eq!(out, text.replace("syd.count = 1 # one", "syd.count = 4 # one"));
        let out = set_count(p(), text, None, "syd", 5).unwrap();
        assert_eq!(region_count(&out, "syd"), 5);
        assert_eq!(region_count(&out, "lax"), 5);
        assert!(out.starts_with("app = \"x\"\nferry.regions.syd.count = 5 # one\n"), "{out}");
        assert!(out.ends_with("\n\n[env]\n  A = \"1\"\n"), "{out}");
    }

    #[test]
    fn set_count_in_inline_regions() {
        let text = "[ferry]\nregions = { syd = { count = 1 }, lax = { hosts = [\"deploy@lax1\"] } }\n";
        let out = set_count(p(), text, None, "syd", 2).unwrap();
        assert_eq!(region_count(&out, "syd"), 2);
        assert_eq!(region_count(&out, "lax"), 2);
        assert!(
            out.starts_with("[ferry]\nregions = { syd = { count = 2 }, lax = { hosts = [\"deploy@lax1\"]"),
            "{out}"
        );
    }

    #[test]
    fn ferry_reads_the_edited_file() {
        let out = add_region(p(), FLY, "ams", &["deploy@ams1".into()], 3).unwrap();
        let out = set_count(p(), &out, Some("lax"), "syd", 2).unwrap();
        let out = remove_region(p(), &out, "syd").unwrap();
        let loaded =
            crate::config::parse(Path::new("/srv/hello/fly.toml"), &out).unwrap_or_else(|e| panic!("{e}\n{out}"));
        let regions = &loaded.config.ferry.regions;
        assert_eq!(regions.keys().collect::<Vec<_>>(), ["ams", "lax"]);
        assert_eq!(regions["ams"].hosts, ["deploy@ams1"]);
        assert_eq!(regions["ams"].count, 3);
        assert_eq!(regions["lax"].count, 2);
    }

    #[test]
    fn a_ferry_or_regions_that_is_not_a_table_is_a_shape_error() {
        for text in ["ferry = 1\n", "[ferry]\nregions = \"syd\"\n", "[[ferry.regions]]\ncount = 1\n"] {
            let error = add_region(p(), text, "lax", &[], 1).unwrap_err();
            assert!(matches!(error, EditError::Shape { .. }), "{text}: {error:?}");
        }
    }

    #[test]
    fn a_file_with_crlf_line_breaks_keeps_them() {
        let text = "app = \"x\"\r\n\r\n# c\r\n[ferry.regions.syd]\r\ncount = 1 # one\r\n";
        let added = add_region(p(), text, "lax", &[], 2).unwrap();
        assert_eq!(added, format!("{text}\r\n[ferry.regions.lax]\r\ncount = 2\r\n"));
        assert_eq!(remove_region(p(), &added, "lax").unwrap(), text);
        assert_eq!(set_count(p(), text, None, "syd", 3).unwrap(), text.replace("count = 1", "count = 3"));
    }

    #[test]
    fn invalid_toml_is_reported_with_its_location() {
        let error = set_count(p(), "app = \"x\"\n[ferry\n", None, "local", 1).unwrap_err();
        assert!(matches!(error, EditError::Parse { line: 2, .. }), "{error:?}");
        assert!(error.to_string().starts_with("`fly.toml:2:"), "{error}");
    }

    #[test]
    fn edits_of_every_corpus_file_keep_it_intact() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fly-toml");
        let listing =
            fs::read_dir(&corpus).unwrap_or_else(|e| panic!("the fly.toml corpus at {}: {e}", corpus.display()));
        let mut checked = 0;
        for entry in listing {
            let file = entry.unwrap().path();
            let text = fs::read_to_string(&file).unwrap();
            if text.parse::<DocumentMut>().is_err() || toml::from_str::<toml::Value>(&text).is_err() {
                continue;
            }
            let name = file.display();
            let has_regions = regions(p(), &parse(p(), &text).unwrap()).unwrap().is_some_and(|r| !r.is_empty());
            let added =
                add_region(p(), &text, "zz9", &["deploy@zz9".into()], 2).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(region_count(&added, "zz9"), 2, "{name}");
            assert_eq!(outside(&added, &["[ferry.regions.zz9]"]), text.lines().collect::<Vec<_>>(), "{name}");
            let removed = remove_region(p(), &added, "zz9").unwrap();
            // A last line without a newline gets one: the added table had to start on a line of its own.
            assert!(removed == text || removed == format!("{text}\n"), "{name}:\n{removed}");
            if !has_regions {
                let scaled = set_count(p(), &text, None, "zz9", 3).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(region_count(&scaled, "zz9"), 3, "{name}");
                assert_eq!(outside(&scaled, &["[ferry.regions.zz9]"]), text.lines().collect::<Vec<_>>(), "{name}");
            }
            checked += 1;
        }
        assert!(checked > 10, "only {checked} corpus files checked");
    }

    #[test]
    fn edit_file_replaces_the_file_and_keeps_its_permissions() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("fly.toml");
        fs::write(&path, FLY).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        }
        edit_file(&path, |text| add_region(&path, text, "ams", &[], 1)).unwrap();
        let written = fs::read_to_string(&path).unwrap();
        assert_eq!(region_count(&written, "ams"), 1);
        assert!(!dir.join("fly.toml.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        }
        let error = edit_file(&path, |text| add_region(&path, text, "ams", &[], 1)).unwrap_err();
        assert!(matches!(error, EditError::AlreadyExists { .. }), "{error:?}");
        assert_eq!(fs::read_to_string(&path).unwrap(), written, "a failed edit leaves the file alone");
        let error = edit_file(&dir.join("missing.toml"), |text| Ok(text.to_string())).unwrap_err();
        assert!(matches!(error, EditError::Read { .. }), "{error:?}");
    }

    #[cfg(unix)]
    #[test]
    fn edit_file_through_a_symlink_replaces_the_file_it_points_to() {
        let temp = tempfile::tempdir().unwrap();
        let real = temp.path().join("real.toml");
        let link = temp.path().join("fly.toml");
        fs::write(&real, "app = \"hello\"\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        edit_file(&link, |text| add_region(&link, text, "lax", &[], 1)).unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(region_count(&fs::read_to_string(&real).unwrap(), "lax"), 1);
    }
}
