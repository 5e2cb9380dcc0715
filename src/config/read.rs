//! Typed reads of tree nodes with Fly's leniency (numbers written as strings, integers
//! for durations) and located errors when a value cannot mean what its key needs. Also
//! collects warnings. Owns no key names: callers pass the dotted path for messages.

use std::time::Duration;

use super::duration::parse_duration;
use super::error::{ConfigError, Warning};
use super::tree::{Entry, Node, Source, Span, Table, Value};

/// What a bare number means for a duration key.
#[derive(Clone, Copy)]
pub(super) enum Unit {
    Millis,
    Secs,
}

pub(super) struct Reader<'a> {
    pub src: Source<'a>,
    warnings: Vec<Warning>,
}

/// `prefix.key`, or `key` at the top level.
pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl<'a> Reader<'a> {
    pub fn new(src: Source<'a>) -> Self {
        Self { src, warnings: Vec::new() }
    }

    pub fn invalid(&self, span: &Span, message: impl Into<String>) -> ConfigError {
        self.src.invalid(span, message)
    }

    pub fn warn(&mut self, span: &Span, message: impl Into<String>) {
        let warning = self.src.warning(span, message);
        self.warnings.push(warning);
    }

    /// A warning said only at `config validate` and `deploy`.
    pub fn warn_at_deploy(&mut self, span: &Span, message: impl Into<String>) {
        let mut warning = self.src.warning(span, message);
        warning.deploy_only = true;
        self.warnings.push(warning);
    }

    /// Warnings in file order.
    pub fn into_warnings(mut self) -> Vec<Warning> {
        self.warnings.sort_by_key(|w| (w.line, w.column));
        self.warnings
    }

    fn wrong_type(&self, node: &Node, path: &str, expected: &str) -> ConfigError {
        self.invalid(&node.span, format!("`{path}` must be {expected}, not {}", node.kind()))
    }

    pub fn table<'n>(&self, node: &'n Node, path: &str) -> Result<&'n Table, ConfigError> {
        node.as_table().ok_or_else(|| self.wrong_type(node, path, "a table"))
    }

    /// A table, or every table of an array of tables: Fly reads `[mounts]` and
    /// `[[mounts]]`, `[[services]]` and a lone `[services.ports]`, alike.
    pub fn tables<'n>(&self, node: &'n Node, path: &str) -> Result<Vec<(&'n Span, &'n Table)>, ConfigError> {
        match &node.value {
            Value::Table(table) => Ok(vec![(&node.span, table)]),
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    item.as_table().map(|t| (&item.span, t)).ok_or_else(|| self.wrong_type(item, path, "a table"))
                })
                .collect(),
            _ => Err(self.wrong_type(node, path, "a table or an array of tables")),
        }
    }

    pub fn string<'n>(&self, node: &'n Node, path: &str) -> Result<&'n str, ConfigError> {
        match &node.value {
            Value::String(s) => Ok(s),
            _ => Err(self.wrong_type(node, path, "a string")),
        }
    }

    /// `table.key` as a string; absent or empty is `None`, as Fly treats them alike.
    pub fn opt_string(&self, table: &Table, prefix: &str, key: &str) -> Result<Option<String>, ConfigError> {
        let Some(entry) = table.get(key) else { return Ok(None) };
        let value = self.string(&entry.node, &join(prefix, key))?.trim();
        Ok((!value.is_empty()).then(|| value.to_string()))
    }

    pub fn boolean(&self, node: &Node, path: &str) -> Result<bool, ConfigError> {
        match node.value {
            Value::Boolean(b) => Ok(b),
            _ => Err(self.wrong_type(node, path, "`true` or `false`")),
        }
    }

    /// A whole number of at least `min`.
    pub fn count<T: TryFrom<i64>>(&self, node: &Node, path: &str, min: i64) -> Result<T, ConfigError> {
        let Value::Integer(n) = node.value else { return Err(self.wrong_type(node, path, "a whole number")) };
        if n < min {
            return Err(self.invalid(&node.span, format!("`{path}` must be at least {min}, not `{n}`")));
        }
        T::try_from(n).map_err(|_| self.invalid(&node.span, format!("`{path}` is too large: `{n}`")))
    }

    /// A port number, written as an integer or (legacy) a string of digits.
    pub fn port(&self, node: &Node, path: &str) -> Result<u16, ConfigError> {
        let number = match &node.value {
            Value::Integer(n) => *n,
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| self.invalid(&node.span, format!("`{path}` must be a port number, not `{s}`")))?,
            _ => return Err(self.wrong_type(node, path, "a port number")),
        };
        u16::try_from(number)
            .map_err(|_| self.invalid(&node.span, format!("`{path}` `{number}` is not a port (0 to 65535)")))
    }

    pub fn strings(&self, node: &Node, path: &str) -> Result<Vec<String>, ConfigError> {
        let Value::Array(items) = &node.value else { return Err(self.wrong_type(node, path, "an array of strings")) };
        items.iter().map(|item| self.string(item, path).map(str::to_string)).collect()
    }

    /// A duration string, or a bare number of `unit`s. An empty string is `None` (unset),
    /// as Fly treats it.
    pub fn duration(&self, node: &Node, path: &str, unit: Unit) -> Result<Option<Duration>, ConfigError> {
        let seconds = match (&node.value, unit) {
            (Value::String(s), _) if s.trim().is_empty() => return Ok(None),
            (Value::String(s), _) => {
                return parse_duration(s).map(Some).map_err(|e| self.invalid(&node.span, format!("`{path}`: {e}")));
            }
            #[allow(clippy::cast_precision_loss)] // durations in configs are far below 2^52
            (Value::Integer(n), _) => *n as f64,
            (Value::Float(f), _) => *f,
            _ => return Err(self.wrong_type(node, path, "a duration such as \"10s\"")),
        };
        let seconds = match unit {
            Unit::Millis => seconds / 1_000.0,
            Unit::Secs => seconds,
        };
        Duration::try_from_secs_f64(seconds)
            .map(Some)
            .map_err(|_| self.invalid(&node.span, format!("`{path}` must be a positive duration")))
    }

    /// The entry's value rendered as an environment variable value: strings as they are,
    /// numbers and booleans as Fly renders them.
    pub fn scalar_text(&self, entry: &Entry, path: &str) -> Result<String, ConfigError> {
        let node = &entry.node;
        Ok(match &node.value {
            Value::String(s) | Value::Datetime(s) => s.clone(),
            Value::Integer(n) => n.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => b.to_string(),
            Value::Array(_) | Value::Table(_) => {
                return Err(self.wrong_type(node, path, "a string, number or boolean"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn with_value(toml: &str, test: impl FnOnce(&Reader<'_>, &Node)) {
        let src = Source { path: Path::new("fly.toml"), text: toml };
        let root = src.parse().unwrap();
        test(&Reader::new(src), &root.get("v").unwrap().node);
    }

    fn message(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { message, .. } => message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn integer_durations_take_the_unit_of_their_key() {
        with_value("v = 10000", |r, n| {
            assert_eq!(r.duration(n, "v", Unit::Millis).unwrap(), Some(Duration::from_secs(10)));
            assert_eq!(r.duration(n, "v", Unit::Secs).unwrap(), Some(Duration::from_secs(10_000)));
        });
        with_value("v = 1.5", |r, n| {
            assert_eq!(r.duration(n, "v", Unit::Secs).unwrap(), Some(Duration::from_millis(1_500)));
        });
        with_value("v = ''", |r, n| assert_eq!(r.duration(n, "v", Unit::Secs).unwrap(), None));
        with_value("v = -1", |r, n| {
            assert_eq!(message(r.duration(n, "v", Unit::Secs).unwrap_err()), "`v` must be a positive duration");
        });
        with_value("v = 'abc'", |r, n| {
            assert!(message(r.duration(n, "v", Unit::Secs).unwrap_err()).starts_with("`v`: invalid duration `abc`"));
        });
    }

    #[test]
    fn ports_may_be_strings_but_must_fit() {
        with_value("v = '443'", |r, n| assert_eq!(r.port(n, "v").unwrap(), 443));
        with_value("v = 70000", |r, n| {
            assert_eq!(message(r.port(n, "v").unwrap_err()), "`v` `70000` is not a port (0 to 65535)");
        });
        with_value("v = 'http'", |r, n| {
            assert_eq!(message(r.port(n, "v").unwrap_err()), "`v` must be a port number, not `http`");
        });
    }

    #[test]
    fn wrong_types_name_what_was_found() {
        with_value("v = [1]", |r, n| {
            assert_eq!(message(r.string(n, "a.v").unwrap_err()), "`a.v` must be a string, not an array");
        });
        with_value("v = 1", |r, n| {
            assert_eq!(message(r.count::<u32>(n, "v", 2).unwrap_err()), "`v` must be at least 2, not `1`");
        });
    }
}
