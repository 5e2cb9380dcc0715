//! The parsed document as a small tree of values that remember their byte spans, and the
//! mapping from a span to `line:column`. Owns TOML syntax (through `toml_edit`, which keeps
//! spans) and locations; must not know what any key means. Fly accepts both `[x]` and
//! `[[x]]` for several sections, so tables and arrays of tables become one shape here.

use std::ops::Range;
use std::path::Path;

use super::error::{ConfigError, Warning};

pub(super) type Span = Range<usize>;

/// The file being read: its path for messages and its text for locations.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn parse(&self) -> Result<Table, ConfigError> {
        match toml_edit::ImDocument::parse(self.text) {
            Ok(document) => Ok(table(document.as_table(), 0..0)),
            Err(error) => {
                let offset = error.span().map_or(0, |span| span.start);
                let (line, column) = self.location(offset);
                let message =
                    error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ");
                Err(ConfigError::Syntax {
                    path: self.path.to_path_buf(),
                    line,
                    column,
                    message,
                    line_text: self.line_text(line),
                })
            }
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn location(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
    }

    pub fn line_text(&self, line: usize) -> String {
        self.text.lines().nth(line.saturating_sub(1)).unwrap_or_default().to_string()
    }

    pub fn invalid(&self, span: &Span, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.location(span.start);
        ConfigError::Invalid { path: self.path.to_path_buf(), line, column, message: message.into() }
    }

    pub fn warning(&self, span: &Span, message: impl Into<String>) -> Warning {
        let (line, column) = self.location(span.start);
        Warning { line, column, message: message.into(), deploy_only: false }
    }
}

#[derive(Debug)]
pub(super) struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug)]
pub(super) enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

/// Keys in document order, each with where it was written.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub entries: Vec<Entry>,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub key: String,
    pub key_span: Span,
    pub node: Node,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.key == key)
    }
}

impl Node {
    pub fn as_table(&self) -> Option<&Table> {
        match &self.value {
            Value::Table(table) => Some(table),
            _ => None,
        }
    }

    /// "a string", "an integer", ... for messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }
}

fn table(source: &dyn toml_edit::TableLike, span: Span) -> Table {
    let entries = source
        .iter()
        .filter_map(|(key, item)| {
            let key_span = source.key(key).and_then(toml_edit::Key::span).unwrap_or_else(|| span.clone());
            let node = item_node(item, &key_span)?;
            Some(Entry { key: key.to_string(), key_span, node })
        })
        .collect();
    Table { entries }
}

/// Implicit tables (`[a.b]` creating `a`, dotted keys) have no span of their own; they
/// take their key's.
fn item_node(item: &toml_edit::Item, fallback: &Span) -> Option<Node> {
    let span = item.span().unwrap_or_else(|| fallback.clone());
    let value = match item {
        toml_edit::Item::None => return None,
        toml_edit::Item::Value(value) => return Some(value_node(value, fallback)),
        toml_edit::Item::Table(t) => Value::Table(table(t, span.clone())),
        toml_edit::Item::ArrayOfTables(tables) => Value::Array(
            tables
                .iter()
                .map(|t| {
                    let span = t.span().unwrap_or_else(|| span.clone());
                    Node { value: Value::Table(table(t, span.clone())), span }
                })
                .collect(),
        ),
    };
    Some(Node { span, value })
}

fn value_node(value: &toml_edit::Value, fallback: &Span) -> Node {
    let span = value.span().unwrap_or_else(|| fallback.clone());
    let value = match value {
        toml_edit::Value::String(v) => Value::String(v.value().clone()),
        toml_edit::Value::Integer(v) => Value::Integer(*v.value()),
        toml_edit::Value::Float(v) => Value::Float(*v.value()),
        toml_edit::Value::Boolean(v) => Value::Boolean(*v.value()),
        toml_edit::Value::Datetime(v) => Value::Datetime(v.value().to_string()),
        toml_edit::Value::Array(array) => Value::Array(array.iter().map(|v| value_node(v, &span)).collect()),
        toml_edit::Value::InlineTable(t) => Value::Table(table(t, span.clone())),
    };
    Node { span, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Source<'_> {
        Source { path: Path::new("fly.toml"), text }
    }

    #[test]
    fn locations_are_one_based_and_count_characters() {
        let src = source("a = 1\nb = \"é\" x\n");
        assert_eq!(src.location(0), (1, 1));
        assert_eq!(src.location(6), (2, 1));
        // `x` follows a two-byte character.
        assert_eq!(src.location(src.text.find('x').unwrap()), (2, 9));
        assert_eq!(src.location(1_000), (3, 1));
    }

    #[test]
    fn keeps_spans_of_keys_and_values() {
        let text = "app = \"x\"\n[deploy]\n  strategy = \"rolling\"\n";
        let root = source(text).parse().unwrap();
        let deploy = root.get("deploy").unwrap();
        let strategy = deploy.node.as_table().unwrap().get("strategy").unwrap();
        assert_eq!(source(text).location(strategy.key_span.start), (3, 3));
        assert_eq!(source(text).location(strategy.node.span.start), (3, 14));
    }

    #[test]
    fn arrays_of_tables_and_inline_tables_become_tables() {
        let text = "[[services]]\n  internal_port = 1\n[[services]]\n  ports = [{ port = 80 }]\n";
        let root = source(text).parse().unwrap();
        let Value::Array(services) = &root.get("services").unwrap().node.value else { panic!("not an array") };
        assert_eq!(services.len(), 2);
        let Value::Array(ports) = &services[1].as_table().unwrap().get("ports").unwrap().node.value else {
            panic!("not an array")
        };
        assert!(ports[0].as_table().unwrap().get("port").is_some());
        assert_eq!(source(text).location(services[1].span.start), (3, 1));
    }

    #[test]
    fn syntax_errors_are_located() {
        let error = source("a = 1\nb = nope\n").parse().unwrap_err();
        let ConfigError::Syntax { line, column, line_text, .. } = error else { panic!("{error:?}") };
        assert_eq!((line, column, line_text.as_str()), (2, 5, "b = nope"));
    }
}
