//! What can go wrong loading a `fly.toml`, and the warnings that do not stop it. Every
//! message carries the `file:line:column` a user needs to fix it; this file only
//! describes problems and never decides whether something is one.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read `{file}`", file = .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "`{file}:{line}:{column}`: invalid TOML: {message}\n  | {line_text}\n  | {caret}",
        file = .path.display(),
        caret = caret(.line_text, *.column)
    )]
    Syntax { path: PathBuf, line: usize, column: usize, message: String, line_text: String },

    #[error("`{file}:{line}:{column}`: {message}", file = .path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
}

/// A problem that does not stop ferry, such as an unknown key. Displayed as
/// `line:column: message`; callers prefix the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// Said at `config validate` and `deploy` only (a key ferry does not act on), not
    /// at every command.
    pub deploy_only: bool,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// A `^` under `column` (1-based, in characters) of `line`, keeping the line's tabs so
/// the caret lines up however the terminal renders them.
fn caret(line: &str, column: usize) -> String {
    let mut out: String =
        line.chars().take(column.saturating_sub(1)).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    out.push('^');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_error_shows_the_line_and_a_caret_under_the_column() {
        let error = ConfigError::Syntax {
            path: PathBuf::from("fly.toml"),
            line: 23,
            column: 11,
            message: "expected `.`, `=`".into(),
            line_text: "  ENV_TYPE: production".into(),
        };
        assert_eq!(
            error.to_string(),
            "`fly.toml:23:11`: invalid TOML: expected `.`, `=`\n  |   ENV_TYPE: production\n  |           ^"
        );
    }

    #[test]
    fn caret_keeps_tabs() {
        assert_eq!(caret("\tkey: 1", 5), "\t   ^");
    }

    #[test]
    fn invalid_and_warning_display_their_location() {
        let error =
            ConfigError::Invalid { path: PathBuf::from("app/fly.toml"), line: 3, column: 14, message: "bad".into() };
        assert_eq!(error.to_string(), "`app/fly.toml:3:14`: bad");
        let warning = Warning { line: 2, column: 1, message: "unknown key `foo`".into(), deploy_only: false };
        assert_eq!(warning.to_string(), "2:1: unknown key `foo`");
    }
}
