//! Comment-preserving edits of fly.toml's `[ferry.regions]` for `ferry regions` and
//! `ferry scale`: every byte outside the edited table stays as the user wrote it.
//! Pure text-to-text functions plus one atomic file write; policy (such as refusing to
//! remove the primary region) belongs to the callers.

use std::path::{Path, PathBuf};

use toml_edit::{value, Array, DocumentMut, Item, Table};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("failed to read `{path}`")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to write `{path}`")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no region `{region}` in `{path}`")]
    NoSuchRegion { path: PathBuf, region: String },
    #[error("region `{region}` is already in `{path}`")]
    AlreadyExists { path: PathBuf, region: String },
    #[error("cannot edit `{path}`: {message}")]
    Shape { path: PathBuf, message: String },
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>().map_err(|e| EditError::Parse { path: path.to_path_buf(), message: e.to_string() })
}

fn shape(path: &Path, message: &str) -> EditError {
    EditError::Shape { path: path.to_path_buf(), message: message.to_string() }
}

/// `[ferry.regions]` as a table, created (implicitly, without a header) when absent.
fn regions_mut<'a>(path: &Path, doc: &'a mut DocumentMut) -> Result<&'a mut Table, EditError> {
    let ferry = doc
        .entry("ferry")
        .or_insert_with(implicit_table)
        .as_table_like_mut()
        .ok_or_else(|| shape(path, "`ferry` is not a table"))?;
    let regions = ferry.entry("regions").or_insert(implicit_table());
    if let Some(inline) = regions.as_inline_table() {
        *regions = Item::Table(inline.clone().into_table());
    }
    regions.as_table_mut().ok_or_else(|| shape(path, "`ferry.regions` is not a table"))
}

fn implicit_table() -> Item {
    let mut table = Table::new();
    table.set_implicit(true);
    Item::Table(table)
}

fn regions(doc: &DocumentMut) -> Option<&dyn toml_edit::TableLike> {
    doc.get("ferry")?.as_table_like()?.get("regions")?.as_table_like()
}

/// Appends `[ferry.regions.NAME]` with `hosts` (when any) and `count`.
pub fn add_region(path: &Path, text: &str, name: &str, hosts: &[String], count: u32) -> Result<String, EditError> {
    let mut doc = parse(path, text)?;
    if regions(&doc).is_some_and(|r| r.contains_key(name)) {
        return Err(EditError::AlreadyExists { path: path.to_path_buf(), region: name.to_string() });
    }
    let regions = regions_mut(path, &mut doc)?;
    let mut table = Table::new();
    if !hosts.is_empty() {
        table.insert("hosts", value(hosts.iter().collect::<Array>()));
    }
    table.insert("count", value(i64::from(count)));
    regions.insert(name, Item::Table(table));
    Ok(doc.to_string())
}

/// Removes `[ferry.regions.NAME]`.
pub fn remove_region(path: &Path, text: &str, name: &str) -> Result<String, EditError> {
    let mut doc = parse(path, text)?;
    let missing = || EditError::NoSuchRegion { path: path.to_path_buf(), region: name.to_string() };
    let regions = doc
        .get_mut("ferry")
        .and_then(Item::as_table_like_mut)
        .and_then(|f| f.get_mut("regions"))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(missing)?;
    regions.remove(name).ok_or_else(missing)?;
    Ok(doc.to_string())
}

/// Sets `count` in one region, or in every region. A file without `[ferry.regions]`
/// runs in one implicit region (`implicit`); it gets a table of its own.
pub fn set_count(
    path: &Path,
    text: &str,
    region: Option<&str>,
    implicit: &str,
    count: u32,
) -> Result<String, EditError> {
    let mut doc = parse(path, text)?;
    let names: Vec<String> = match (region, regions(&doc)) {
        (Some(r), Some(existing)) if existing.contains_key(r) => vec![r.to_string()],
        (Some(r), _) if r != implicit => {
            return Err(EditError::NoSuchRegion { path: path.to_path_buf(), region: r.to_string() })
        }
        (None, Some(existing)) if !existing.is_empty() => existing.iter().map(|(k, _)| k.to_string()).collect(),
        _ => vec![implicit.to_string()],
    };
    let regions = regions_mut(path, &mut doc)?;
    for name in names {
        let entry = regions.entry(&name).or_insert_with(|| Item::Table(Table::new()));
        let table =
            entry.as_table_like_mut().ok_or_else(|| shape(path, &format!("`ferry.regions.{name}` is not a table")))?;
        match table.get_mut("count") {
            Some(item) if item.is_value() => {
                // Keep the comment and spacing around the old number.
                let decor = item.as_value().map(|v| v.decor().clone());
                *item = value(i64::from(count));
                if let (Some(decor), Some(v)) = (decor, item.as_value_mut()) {
                    *v.decor_mut() = decor;
                }
            }
            _ => {
                table.insert("count", value(i64::from(count)));
            }
        }
    }
    Ok(doc.to_string())
}

/// Reads `path`, applies `f`, and writes the result atomically (beside it, then
/// renamed), keeping the file's permissions.
pub fn edit_file(path: &Path, f: impl FnOnce(&str) -> Result<String, EditError>) -> Result<(), EditError> {
    let text = std::fs::read_to_string(path).map_err(|source| EditError::Read { path: path.to_path_buf(), source })?;
    let edited = f(&text)?;
    let tmp = path.with_extension("toml.ferry-tmp");
    let write = |source| EditError::Write { path: path.to_path_buf(), source };
    std::fs::write(&tmp, edited).map_err(write)?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLY: &str = r#"# top comment
app = "hello"   # the app
primary_region = "syd"

[env]
  # keep me
  A = "1"

# [ferry.regions.old]
# count = 9

[ferry]
  target = "ssh"

[ferry.regions.syd]   # Sydney
  hosts = ["deploy@syd1"]
  count = 2   # two of them

# after regions
[deploy]
  strategy = "rolling"
"#;

    fn p() -> &'static Path {
        Path::new("fly.toml")
    }

    fn reparse(text: &str) -> toml::Value {
        toml::from_str(text).unwrap()
    }

    /// Lines of `before` all appear, in order, in `after`.
    fn kept(before: &str, after: &str) {
        let mut rest = after.lines();
        for line in before.lines() {
            assert!(rest.any(|l| l == line), "line {line:?} lost in:\n{after}");
        }
    }

    #[test]
    fn add_region_keeps_everything_else() {
        let out = add_region(p(), FLY, "lax", &["deploy@lax1".into()], 1).unwrap();
        kept(FLY, &out);
        let v = reparse(&out);
        assert_eq!(v["ferry"]["regions"]["lax"]["count"].as_integer(), Some(1));
        assert_eq!(v["ferry"]["regions"]["lax"]["hosts"][0].as_str(), Some("deploy@lax1"));
        assert!(out.contains("[ferry.regions.lax]"));
    }

    #[test]
    fn add_region_to_a_file_without_ferry() {
        let out = add_region(p(), "app = \"x\"\n# end\n", "lax", &[], 2).unwrap();
        kept("app = \"x\"\n# end\n", &out);
        assert_eq!(reparse(&out)["ferry"]["regions"]["lax"]["count"].as_integer(), Some(2));
        assert!(!out.contains("[ferry]\n"), "no empty parent header: {out}");
    }

    #[test]
    fn duplicate_and_absent_regions_are_errors() {
        assert!(matches!(add_region(p(), FLY, "syd", &[], 1), Err(EditError::AlreadyExists { .. })));
        assert!(matches!(remove_region(p(), FLY, "lax"), Err(EditError::NoSuchRegion { .. })));
    }

    #[test]
    fn remove_region_takes_only_that_table() {
        let added = add_region(p(), FLY, "lax", &[], 1).unwrap();
        let out = remove_region(p(), &added, "lax").unwrap();
        assert_eq!(out, FLY);
        let out = remove_region(p(), FLY, "syd").unwrap();
        assert!(!out.contains("[ferry.regions.syd]"));
        assert!(out.contains("# after regions") && out.contains("# keep me"));
    }

    #[test]
    fn set_count_in_one_or_all_regions_keeps_comments() {
        let two = add_region(p(), FLY, "lax", &[], 1).unwrap();
        let out = set_count(p(), &two, Some("syd"), "syd", 3).unwrap();
        assert!(out.contains("count = 3   # two of them"), "{out}");
        assert_eq!(reparse(&out)["ferry"]["regions"]["lax"]["count"].as_integer(), Some(1));
        let all = set_count(p(), &two, None, "syd", 5).unwrap();
        let v = reparse(&all);
        assert_eq!(v["ferry"]["regions"]["syd"]["count"].as_integer(), Some(5));
        assert_eq!(v["ferry"]["regions"]["lax"]["count"].as_integer(), Some(5));
    }

    #[test]
    fn set_count_creates_the_implicit_region() {
        let out = set_count(p(), "app = \"x\"\nprimary_region = \"ams\"\n", None, "ams", 2).unwrap();
        assert_eq!(reparse(&out)["ferry"]["regions"]["ams"]["count"].as_integer(), Some(2));
        assert!(matches!(set_count(p(), "app = \"x\"\n", Some("lax"), "ams", 2), Err(EditError::NoSuchRegion { .. })));
    }

    #[test]
    fn set_count_with_dotted_keys() {
        let text = "app = \"x\"\nferry.regions.syd.count = 1 # one\n";
        let out = set_count(p(), text, Some("syd"), "syd", 4).unwrap();
        assert_eq!(reparse(&out)["ferry"]["regions"]["syd"]["count"].as_integer(), Some(4));
        assert!(out.starts_with("app = \"x\"\n"));
    }
}
